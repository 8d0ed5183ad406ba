//! What the analytics tasks share: the watermark that lets each run look only at what changed since the
//! previous one.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::error::TaskError;

/// Work recorded this long before the previous run's start is looked at again, so a batch whose transaction
/// committed late is never missed (looking at something twice changes nothing).
pub const OVERLAP: chrono::Duration = chrono::Duration::minutes(5);

/// Where one analytics step has read to, read and moved inside the step's own transaction.
#[derive(Debug, Clone, Copy)]
pub struct Watermark {
    name: &'static str,
    /// The database clock at the start of this run: the next run reads from here.
    started: DateTime<Utc>,
    /// Changes after this instant are new; `None` when the step has never run.
    pub since: Option<DateTime<Utc>>,
}

impl Watermark {
    pub async fn read(
        tx: &mut Transaction<'_, Postgres>,
        name: &'static str,
    ) -> Result<Watermark, TaskError> {
        let started: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut **tx)
            .await?;
        let previous: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT high_water FROM analytics_watermarks WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(Watermark {
            name,
            started,
            since: previous.map(|t| t - OVERLAP),
        })
    }

    /// Records this run's start as the next run's starting point (commits with the step's work).
    pub async fn advance(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), TaskError> {
        sqlx::query(
            "INSERT INTO analytics_watermarks (name, high_water) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET high_water = EXCLUDED.high_water, updated_at = now()",
        )
        .bind(self.name)
        .bind(self.started)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
