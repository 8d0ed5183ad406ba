//! The `ingestion_runs` bookkeeping: one row per upstream file version, with the cursor a batch moves in its own
//! transaction, so a run stopped by a deadline or a broken download resumes exactly after its last batch.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::context::Enqueue;
use crate::envelope::Envelope;
use crate::error::{class, TaskError};
use crate::json_stream::StreamEnd;
use crate::queue::Queue;

/// How an ingestion run ended, as its report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestOutcome {
    /// The whole file is in.
    Completed,
    /// Stopped before the deadline; a follow-up message continues from the cursor.
    Continued,
    /// The version was already ingested.
    Unchanged,
}

/// Where an ingestion of one upstream file version stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStart {
    /// This version was already ingested successfully.
    Unchanged { finished_at: Option<DateTime<Utc>> },
    /// Start (cursor 0) or resume after `cursor` items.
    Proceed { cursor: u64, resumed: bool },
}

/// The bookkeeping row of one ingestion (`ingestion_runs`).
#[derive(Debug, Clone)]
pub struct IngestionRun {
    pub source: String,
    pub file_version: DateTime<Utc>,
}

/// How a run that was not an error ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// Continues in the follow-up message with this envelope id.
    Continued(String),
}

/// Counts applied together with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub items: u64,
    pub printings: u64,
    pub prices: u64,
    pub malformed: u64,
}

/// The work an ingestion run leads to.
pub struct NextWork<'a> {
    /// This task, its queue and its arguments: sent again, with a continuation id, to resume from the cursor
    /// when the run stops for the deadline.
    pub resume: (&'a str, Queue, serde_json::Map<String, serde_json::Value>),
    /// The task, and its queue, sent once the whole file is applied.
    pub then: Option<(&'a str, Queue)>,
}

impl IngestionRun {
    /// Registers the run. A succeeded version is `Unchanged` unless `force`; a version left running or failed
    /// resumes from its cursor (single-instance leases make sure no one else is at it); older versions still
    /// marked running are superseded.
    pub async fn begin(
        pool: &PgPool,
        source: &str,
        file_version: DateTime<Utc>,
        file_uri: &str,
        force: bool,
    ) -> Result<(IngestionRun, RunStart), TaskError> {
        let run = IngestionRun {
            source: source.to_owned(),
            file_version,
        };
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE ingestion_runs SET status = 'failed', error = 'superseded by a newer file', updated_at = now() \
             WHERE source = $1 AND file_version < $2 AND status = 'running'",
        )
        .bind(source)
        .bind(file_version)
        .execute(&mut *tx)
        .await?;
        let existing: Option<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT status, cursor, finished_at FROM ingestion_runs WHERE source = $1 AND file_version = $2 FOR UPDATE",
        )
        .bind(source)
        .bind(file_version)
        .fetch_optional(&mut *tx)
        .await?;
        let start = match existing {
            Some((status, _, finished_at)) if status == "succeeded" && !force => {
                RunStart::Unchanged { finished_at }
            }
            Some((status, cursor, _)) if status != "succeeded" => {
                sqlx::query(
                    "UPDATE ingestion_runs SET status = 'running', error = NULL, updated_at = now() \
                     WHERE source = $1 AND file_version = $2",
                )
                .bind(source)
                .bind(file_version)
                .execute(&mut *tx)
                .await?;
                RunStart::Proceed {
                    cursor: cursor as u64,
                    resumed: cursor > 0,
                }
            }
            _ => {
                sqlx::query(
                    "INSERT INTO ingestion_runs (source, file_version, file_uri, status) VALUES ($1, $2, $3, 'running') \
                     ON CONFLICT (source, file_version) DO UPDATE SET status = 'running', cursor = 0, items_seen = 0, \
                         printings_upserted = 0, prices_written = 0, malformed = 0, error = NULL, started_at = now(), \
                         updated_at = now(), finished_at = NULL, file_uri = EXCLUDED.file_uri",
                )
                .bind(source)
                .bind(file_version)
                .bind(file_uri)
                .execute(&mut *tx)
                .await?;
                RunStart::Proceed {
                    cursor: 0,
                    resumed: false,
                }
            }
        };
        tx.commit().await?;
        Ok((run, start))
    }

    /// Moves the cursor past a batch, in the batch's own transaction: a batch is applied exactly when the
    /// cursor says so, which is what makes a resumed run free of gaps and duplicates.
    pub async fn advance(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        counts: BatchCounts,
    ) -> Result<u64, TaskError> {
        let cursor: i64 = sqlx::query_scalar(
            "UPDATE ingestion_runs SET cursor = cursor + $3, items_seen = items_seen + $3, \
                 printings_upserted = printings_upserted + $4, prices_written = prices_written + $5, \
                 malformed = malformed + $6, updated_at = now() \
             WHERE source = $1 AND file_version = $2 RETURNING cursor",
        )
        .bind(&self.source)
        .bind(self.file_version)
        .bind(counts.items as i64)
        .bind(counts.printings as i64)
        .bind(counts.prices as i64)
        .bind(counts.malformed as i64)
        .fetch_one(&mut **tx)
        .await?;
        Ok(cursor as u64)
    }

    pub async fn succeed(&self, pool: &PgPool) -> Result<(), TaskError> {
        sqlx::query(
            "UPDATE ingestion_runs SET status = 'succeeded', finished_at = now(), updated_at = now() \
             WHERE source = $1 AND file_version = $2",
        )
        .bind(&self.source)
        .bind(self.file_version)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Settles the run once its stream has ended: succeeded when every item of the file was applied; continued
    /// in a follow-up message (`task` with `kwargs` on `queue`, delivered two seconds later so this run's lease
    /// is released first) when it stopped for the deadline; failed, retryably, when the download was truncated
    /// or corrupt, keeping the cursor so that the retry resumes after the applied batches.
    pub async fn conclude(
        &self,
        db: &PgPool,
        out: &dyn Enqueue,
        end: StreamEnd,
        cursor: u64,
        stopped_for_deadline: bool,
        next: NextWork<'_>,
    ) -> Result<Ending, TaskError> {
        let NextWork {
            resume: (task, queue, kwargs),
            then,
        } = next;
        let source = &self.source;
        match end {
            StreamEnd::Complete(total) if cursor >= total => {
                if let Some((next, next_queue)) = then {
                    // One follow-up per ingestion run (a version's run and its continuations share a start; a
                    // forced rerun starts anew): its id makes a repeated one a duplicate delivery.
                    let started: DateTime<Utc> = sqlx::query_scalar(
                        "SELECT started_at FROM ingestion_runs WHERE source = $1 AND file_version = $2",
                    )
                    .bind(source)
                    .bind(self.file_version)
                    .fetch_one(db)
                    .await?;
                    let id = format!(
                        "after:{source}:{}:{}",
                        self.file_version.timestamp(),
                        started.timestamp_micros()
                    );
                    let envelope = Envelope::new(next, serde_json::Map::new()).with_id(&id);
                    out.enqueue(next_queue, &envelope, 0).await?;
                    tracing::info!(source = %source, task = next, id = %id, "enqueued the follow-up analytics");
                }
                self.succeed(db).await?;
                tracing::info!(source = %source, items = total, "ingestion complete");
                Ok(Ending::Completed)
            }
            StreamEnd::Complete(_) | StreamEnd::Stopped if stopped_for_deadline => {
                let id = format!(
                    "continue:{source}:{}:{cursor}",
                    self.file_version.timestamp()
                );
                let envelope = Envelope::new(task, kwargs).with_id(&id);
                // Two seconds later, so this run has released its lease when the follow-up arrives.
                out.enqueue(queue, &envelope, 2).await?;
                tracing::info!(source = %source, cursor, continuation = %id, "deadline near: continuing in a follow-up message");
                Ok(Ending::Continued(id))
            }
            StreamEnd::Complete(total) => Err(TaskError::retryable(
                class::CORRUPT_DOWNLOAD,
                format!(
                    "{source}: the reader finished {total} items but only {cursor} were applied"
                ),
            )),
            StreamEnd::Stopped => Err(TaskError::retryable(
                class::CORRUPT_DOWNLOAD,
                format!("{source}: reading stopped early"),
            )),
            StreamEnd::TooLarge(detail) => {
                // The same file refuses the same way every time: retrying would only repeat the download.
                let message = format!(
                    "{source} version {}: refused after item {cursor}: {detail} (DD_DOWNLOAD_MAX_BYTES, \
                     DD_DOWNLOAD_MAX_ITEM_BYTES)",
                    self.file_version.to_rfc3339()
                );
                self.fail(db, &message).await?;
                Err(TaskError::permanent(class::DOWNLOAD_TOO_LARGE, message))
            }
            StreamEnd::Corrupt(detail) => {
                let message = format!(
                    "{source} version {}: the download is truncated or corrupt after item {cursor}: {detail}",
                    self.file_version.to_rfc3339()
                );
                self.fail(db, &message).await?;
                Err(TaskError::retryable(class::CORRUPT_DOWNLOAD, message))
            }
        }
    }

    /// Records why the run stopped; its cursor stays, so the next run resumes after the applied batches.
    pub async fn fail(&self, pool: &PgPool, error: &str) -> Result<(), TaskError> {
        sqlx::query(
            "UPDATE ingestion_runs SET status = 'failed', error = $3, updated_at = now() \
             WHERE source = $1 AND file_version = $2",
        )
        .bind(&self.source)
        .bind(self.file_version)
        .bind(error)
        .execute(pool)
        .await?;
        Ok(())
    }
}
