//! What the analytics tasks share: their transaction's settings, and the watermark that lets each run look
//! only at what changed since the previous one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::context::Enqueue;
use crate::envelope::Envelope;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::{Idempotency, OnDuplicate, SingleInstance};
use crate::retry::RetryPolicy;

/// What every analytics transaction sets for itself: room for a full run's aggregates in memory, no JIT, and
/// index probes priced as reads from memory or SSD.
/// - Postgres compiles a plan's expressions with LLVM once its estimated cost passes `jit_above_cost`, which
///   these set-based statements' estimates do: on the v4 history the compilation took 0.46 s of a 1.4 s read of
///   the metrics windows, all of it before the first row, in statements that run for a second or two.
/// - The default `random_page_cost` (4) prices each primary-key probe as a disk seek. An `UPDATE` applying the
///   4,914 recomputed rows of a day that touched 5 % of 100,000 series then hashed every metrics row (331 ms)
///   where probing their keys took 65 ms; with 1.1 the planner probes for a few series and still hashes for
///   most of them.
pub const SESSION: &str =
    "SET LOCAL work_mem = '64MB'; SET LOCAL jit = off; SET LOCAL random_page_cost = 1.1";

/// Begins an analytics step's transaction, with [`SESSION`].
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, TaskError> {
    begin_with(pool, "BEGIN").await
}

/// Begins an analytics step's transaction in one snapshot (`REPEATABLE READ`), with [`SESSION`]: for a step
/// that updates rows found by the place it read them at ([`crate::pg_tid`]). A row another transaction changed
/// since the snapshot fails the step with a serialization failure, which is retried, rather than being missed
/// or overwritten with values computed from its old version.
pub async fn begin_in_one_snapshot(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, TaskError> {
    begin_with(pool, "BEGIN ISOLATION LEVEL REPEATABLE READ").await
}

async fn begin_with(
    pool: &PgPool,
    statement: &'static str,
) -> Result<Transaction<'static, Postgres>, TaskError> {
    let mut tx = pool.begin_with(statement).await?;
    sqlx::raw_sql(SESSION).execute(&mut *tx).await?;
    Ok(tx)
}

/// How every analytics step retries.
pub const RETRY: RetryPolicy =
    RetryPolicy::new(3, Duration::from_secs(10), Duration::from_secs(300));

/// One run of a step at a time: two would read and move the same watermark. A second one is skipped.
pub const ONE_AT_A_TIME: Option<SingleInstance> = Some(SingleInstance {
    keys: &[],
    on_duplicate: OnDuplicate::Skip,
});

/// Chained runs carry an id derived from the run that asked for them: a repeat is answered from the first.
pub const ONCE_PER_ID: Option<Idempotency> = Some(Idempotency {
    keep: Duration::from_secs(7 * 24 * 60 * 60),
});

/// Enqueues the next step of the chain, once per run of this one (id `<prefix>:<run_key>`, the key of the
/// run asking).
pub async fn follow_up(
    out: &dyn Enqueue,
    run_key: &str,
    task: &str,
    prefix: &str,
) -> Result<(), TaskError> {
    let envelope =
        Envelope::new(task, serde_json::Map::new()).with_id(format!("{prefix}:{run_key}"));
    out.enqueue(Queue::Analytics, &envelope, 0).await
}

/// How far back the next run looks when this run cannot see every open transaction (a session of another role
/// hides its transaction start unless this role has `pg_read_all_stats`): a batch committing this late is still
/// seen (looking at something twice changes nothing).
pub const OVERLAP: chrono::Duration = chrono::Duration::minutes(5);

/// This run's start on the database clock, held back to the start of the oldest other open transaction of
/// this database, less a microsecond (runs read what was recorded strictly after it). A row's `recorded_at` is
/// its writing transaction's start, and a transaction still open now may commit after this run has read: the
/// next run must look from before it. With no transaction open elsewhere, the next run looks from here, so
/// what this run saw is not read again.
const LOW_WATER: &str = "
SELECT CASE WHEN bool_or(a.query = '<insufficient privilege>') THEN now() - make_interval(secs => $1)
            ELSE least(now(), min(a.xact_start)) - interval '1 microsecond' END
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()";

/// Where one analytics step has read to, read and moved inside the step's own transaction.
#[derive(Debug, Clone, Copy)]
pub struct Watermark {
    name: &'static str,
    /// Where the next run reads from: this run's start, or the start of an older transaction still open.
    started: DateTime<Utc>,
    /// Changes after this instant are new; `None` when the step has never run.
    pub since: Option<DateTime<Utc>>,
}

impl Watermark {
    pub async fn read(
        tx: &mut Transaction<'_, Postgres>,
        name: &'static str,
    ) -> Result<Watermark, TaskError> {
        let started: DateTime<Utc> = sqlx::query_scalar(LOW_WATER)
            .bind(OVERLAP.num_seconds() as f64)
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
            since: previous,
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
