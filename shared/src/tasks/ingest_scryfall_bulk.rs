//! `ingest_scryfall_bulk`: Scryfall's bulk card file (printings and today's prices) into the catalog.
//!
//! Reads the bulk-data index, picks the requested file, and streams it (hundreds of MB in production) from
//! the download through a streaming JSON parser into Postgres in batches: the file and the cards are never
//! held whole. Each batch (printings, prices, and the run's cursor) is one transaction, so a run stopped by a
//! deadline or a broken download resumes exactly after the last applied batch. A version already ingested
//! is skipped; malformed card objects (a NUL in a string among them: Postgres text cannot hold one, see
//! [`crate::pg_text`]) are counted, logged with their id, named in the report and skipped.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::io::{StreamReader, SyncIoBridge};
use uuid::Uuid;

use crate::catalog::{
    upsert_price_columns, upsert_printings, BatchCounts, Ending, IngestOutcome, IngestionRun,
    NextWork, PriceColumns, RunStart,
};
use crate::context::TaskContext;
use crate::error::{class, TaskError};
use crate::json_stream::{self, CountingReader, Shape, StreamEnd};
use crate::queue::Queue;
use crate::registry::{OnDuplicate, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;
use crate::scryfall::{BulkIndex, Card, CardId};

pub struct IngestScryfallBulk;

const BULK_TYPES: [&str; 4] = [
    "default_cards",
    "all_cards",
    "oracle_cards",
    "unique_artwork",
];

fn default_bulk_type() -> String {
    "default_cards".to_owned()
}

fn default_batch_size() -> u32 {
    1000
}

fn known_bulk_type(value: &str, _: &()) -> garde::Result {
    if BULK_TYPES.contains(&value) {
        Ok(())
    } else {
        Err(garde::Error::new(format!(
            "must be one of {}",
            BULK_TYPES.join(", ")
        )))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct IngestScryfallArgs {
    /// Which bulk file (`type` in the index).
    #[serde(default = "default_bulk_type")]
    #[garde(custom(known_bulk_type))]
    pub bulk_type: String,
    /// Ingest even if this version was already ingested.
    #[serde(default)]
    #[garde(skip)]
    pub force: bool,
    /// Cards per transaction.
    #[serde(default = "default_batch_size")]
    #[garde(range(min = 10, max = 5000))]
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    pub source: String,
    pub file_version: DateTime<Utc>,
    pub file_uri: String,
    pub outcome: IngestOutcome,
    /// Items of the file this run started after (non-zero when resuming).
    pub resumed_from: u64,
    /// Items of the file applied so far, this run and earlier ones.
    pub cursor: u64,
    /// Card objects read by this run.
    pub cards: u64,
    pub printings_changed: u64,
    pub prices_changed: u64,
    pub malformed: u64,
    /// The ids of the first malformed card objects this run skipped, in file order (at most
    /// [`MALFORMED_IDS_KEPT`]; `(none)` for one without a string id). Each is logged with its error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub malformed_ids: Vec<String>,
    /// Time the batches' transactions took, summed over the connections writing them (the rest is download
    /// and parsing, which overlap with it; two batches in flight at once count twice).
    pub db_ms: u64,
    /// The follow-up message's envelope id, when the run continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl IngestReport {
    fn add(&mut self, written: &WrittenBatch) {
        self.cursor = written.cursor;
        self.db_ms += written.elapsed.as_millis() as u64;
        self.cards += written.counts.items;
        self.printings_changed += written.counts.printings;
        self.prices_changed += written.counts.prices;
        self.malformed += written.counts.malformed;
        let room = MALFORMED_IDS_KEPT.saturating_sub(self.malformed_ids.len());
        self.malformed_ids
            .extend(written.malformed_ids.iter().take(room).cloned());
    }
}

/// How many malformed card ids a report names.
pub const MALFORMED_IDS_KEPT: usize = 10;

/// A malformed object's id as a report can keep it (`jsonb` refuses NUL as well): at most 64 characters.
fn reported_id(id: Option<&str>) -> String {
    match id {
        None => "(none)".to_owned(),
        Some(id) => id
            .chars()
            .take(64)
            .map(|c| if c == '\0' { '\u{fffd}' } else { c })
            .collect(),
    }
}

impl TaskReport for IngestReport {
    fn counts(&self) -> Counts {
        Counts::new(self.cards, self.malformed)
    }

    fn skipped(&self) -> Option<String> {
        (self.outcome == IngestOutcome::Unchanged).then(|| {
            format!(
                "{} version {} was already ingested",
                self.source,
                self.file_version.to_rfc3339()
            )
        })
    }
}

/// One batch of card objects, parsed into catalog rows.
struct ParsedBatch {
    items: u64,
    printings: Vec<crate::catalog::PrintingRow>,
    prices: PriceColumns,
    malformed: u64,
    malformed_ids: Vec<String>,
}

fn parse_batch(batch: Vec<json_stream::Item>, day: chrono::NaiveDate) -> ParsedBatch {
    let mut parsed = ParsedBatch {
        items: batch.len() as u64,
        printings: Vec::with_capacity(batch.len()),
        prices: PriceColumns::default(),
        malformed: 0,
        malformed_ids: Vec::new(),
    };
    let mut prices = Vec::with_capacity(batch.len() * 5);
    for item in &batch {
        match serde_json::from_str::<Card>(item.raw.get()) {
            Ok(card) => {
                parsed.printings.push(card.printing());
                card.price_rows(day, &mut prices);
            }
            Err(e) => {
                parsed.malformed += 1;
                let id = serde_json::from_str::<CardId>(item.raw.get())
                    .ok()
                    .and_then(|c| c.id);
                let id = reported_id(id.as_deref());
                tracing::warn!(card_id = %id, error = %e, "skipping a malformed card object");
                if parsed.malformed_ids.len() < MALFORMED_IDS_KEPT {
                    parsed.malformed_ids.push(id);
                }
            }
        }
    }
    parsed.prices = PriceColumns::new(&prices);
    parsed
}

/// A batch applied: its counts, the cursor after it, and how long its transaction took.
struct WrittenBatch {
    counts: BatchCounts,
    malformed_ids: Vec<String>,
    cursor: u64,
    elapsed: Duration,
}

/// Writes parsed batches, each in its own transaction with the run's cursor, up to two at a time when the pool
/// can lend two connections: one backend inserts batch N+1's rows while the other finishes batch N. They still
/// commit in file order, which the cursor relies on: a batch moves the cursor only after the batch before it
/// has committed, and not at all when that one failed.
///
/// Batch N+1 waits for batch N's commit, so it must never hold a row N waits for: a batch that shares a
/// printing with the one before it (an id repeated across the boundary) starts only once that one has
/// committed. Locks taken by other writers are bounded by `lock_timeout`, which ends a wait in a retryable
/// error rather than a hang.
struct BatchWrites {
    pool: sqlx::PgPool,
    run: IngestionRun,
    depth: usize,
    in_flight: VecDeque<tokio::task::JoinHandle<Result<WrittenBatch, TaskError>>>,
    /// Fires when the newest batch in flight has committed (dropped unsent when it failed).
    last_commit: Option<oneshot::Receiver<()>>,
    /// Whether printings are still copied before they are upserted ([`upsert_printings`]).
    copy_printings: Arc<AtomicBool>,
    /// The printings of the newest batch in flight.
    last_ids: HashSet<Uuid>,
}

impl BatchWrites {
    fn new(pool: &sqlx::PgPool, run: &IngestionRun) -> BatchWrites {
        let depth = if pool.options().get_max_connections() >= 2 {
            2
        } else {
            1
        };
        BatchWrites {
            pool: pool.clone(),
            run: run.clone(),
            depth,
            in_flight: VecDeque::new(),
            last_commit: None,
            copy_printings: Arc::new(AtomicBool::new(true)),
            last_ids: HashSet::new(),
        }
    }

    /// Waits for the oldest write when `next` may not start yet: as many are in flight as may be, or `next`
    /// shares a printing with the newest one. `None` once it may start.
    async fn make_room(&mut self, next: &ParsedBatch) -> Result<Option<WrittenBatch>, TaskError> {
        let shares = || {
            next.printings
                .iter()
                .any(|p| self.last_ids.contains(&p.scryfall_id))
        };
        if self.in_flight.is_empty() || (self.in_flight.len() < self.depth && !shares()) {
            return Ok(None);
        }
        self.next_done().await
    }

    /// The oldest write's result, `None` when none is in flight. An error aborts the writes after it.
    async fn next_done(&mut self) -> Result<Option<WrittenBatch>, TaskError> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let done = handle
            .await
            .map_err(|e| {
                TaskError::permanent(class::TASK_FAILED, format!("writing a batch failed: {e}"))
            })
            .and_then(|written| written);
        if done.is_err() {
            self.in_flight.drain(..).for_each(|later| later.abort());
        }
        done.map(Some)
    }

    fn start(&mut self, batch: ParsedBatch) {
        self.last_ids = batch.printings.iter().map(|p| p.scryfall_id).collect();
        let (committed, commit_seen) = oneshot::channel();
        let after = self.last_commit.replace(commit_seen);
        let (pool, run, copy_printings) = (
            self.pool.clone(),
            self.run.clone(),
            self.copy_printings.clone(),
        );
        self.in_flight.push_back(tokio::spawn(write_batch(
            pool,
            run,
            batch,
            copy_printings,
            after,
            committed,
        )));
    }
}

async fn write_batch(
    pool: sqlx::PgPool,
    run: IngestionRun,
    batch: ParsedBatch,
    copy_printings: Arc<AtomicBool>,
    after: Option<oneshot::Receiver<()>>,
    committed: oneshot::Sender<()>,
) -> Result<WrittenBatch, TaskError> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    // The batch and the cursor commit together, so a commit lost in a crash loses both and the resumed run
    // applies the batch again: safe to let Postgres acknowledge before the WAL flush.
    sqlx::raw_sql("SET LOCAL synchronous_commit = off; SET LOCAL lock_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    let printings = upsert_printings(&mut tx, &batch.printings, &copy_printings).await?;
    let prices = upsert_price_columns(&mut tx, &batch.prices).await?;
    if let Some(previous) = after {
        // Dropping `tx` rolls this batch back: the cursor must not pass a batch that was never applied.
        previous.await.map_err(|_| {
            TaskError::retryable(
                class::TASK_FAILED,
                "not applied: the batch before it failed".to_owned(),
            )
        })?;
    }
    let counts = BatchCounts {
        items: batch.items,
        printings,
        prices,
        malformed: batch.malformed,
    };
    let cursor = run.advance(&mut tx, counts).await?;
    tx.commit().await?;
    let _ = committed.send(());
    Ok(WrittenBatch {
        counts,
        malformed_ids: batch.malformed_ids,
        cursor,
        elapsed: started.elapsed(),
    })
}

impl Task for IngestScryfallBulk {
    const NAME: &'static str = "ingest_scryfall_bulk";
    const QUEUE: Queue = Queue::Ingestion;
    const RETRY: RetryPolicy =
        RetryPolicy::new(4, Duration::from_secs(30), Duration::from_secs(900));
    /// One ingestion per bulk type at a time; a second one waits (a continuation must never be dropped).
    const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
        keys: &["bulk_type"],
        on_duplicate: OnDuplicate::Defer(Duration::from_secs(60)),
    });
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "default-cards",
        expression: "cron(20 0/6 * * ? *)",
        kwargs: r#"{"bulk_type": "default_cards"}"#,
        enabled: true,
        why: "Scryfall refreshes its bulk files once a day at a time that drifts; four checks a day pick a new file \
              up within six hours, and a check that finds the same version costs one small index request.",
    }];
    type Args = IngestScryfallArgs;
    type Report = IngestReport;

    async fn run(args: IngestScryfallArgs, ctx: TaskContext) -> Result<IngestReport, TaskError> {
        let upstream = &ctx.upstreams().scryfall;
        let index: BulkIndex = upstream.get_json("bulk-data").await?;
        let item = index
            .data
            .into_iter()
            .find(|i| i.kind == args.bulk_type)
            .ok_or_else(|| {
                TaskError::permanent(
                    class::UPSTREAM,
                    format!("the bulk-data index lists no `{}` file", args.bulk_type),
                )
            })?;
        // Checked before the run is recorded: a link off Scryfall's hosts is neither fetched nor started.
        upstream.url(&item.download_uri)?;
        let source = format!("scryfall:{}", args.bulk_type);
        let (run, start) = IngestionRun::begin(
            ctx.db(),
            &source,
            item.updated_at,
            &item.download_uri,
            args.force,
        )
        .await?;
        let mut report = IngestReport {
            source: source.clone(),
            file_version: item.updated_at,
            file_uri: item.download_uri.clone(),
            outcome: IngestOutcome::Completed,
            resumed_from: 0,
            cursor: 0,
            cards: 0,
            printings_changed: 0,
            prices_changed: 0,
            malformed: 0,
            malformed_ids: Vec::new(),
            db_ms: 0,
            continuation: None,
        };
        let cursor = match start {
            RunStart::Unchanged { .. } => {
                report.outcome = IngestOutcome::Unchanged;
                return Ok(report);
            }
            RunStart::Proceed { cursor, resumed } => {
                if resumed {
                    tracing::info!(source = %source, cursor, "resuming an unfinished ingestion");
                }
                cursor
            }
        };
        report.resumed_from = cursor;
        report.cursor = cursor;
        // Prices are as of the file's date.
        let day = item.updated_at.date_naive();

        let response = upstream.get(&item.download_uri).await?;
        let total_bytes = response.content_length().or(item.size_hint()).unwrap_or(0);
        let body = StreamReader::new(response.bytes_stream().map_err(std::io::Error::other));
        let (reader, bytes_read) = CountingReader::new(SyncIoBridge::new(body));
        let (mut batches, reader_done) = json_stream::spawn(
            reader,
            Shape::Array,
            cursor,
            args.batch_size as usize,
            ctx.settings().download_limits,
        );
        let mut progress = ctx.progress("bytes", total_bytes);
        let mut stopped = false;

        // Three stages: the next batch's card objects are parsed on a blocking thread while earlier batches are
        // written, and with two connections batch N+1's rows go in while batch N finishes and commits
        // (`BatchWrites`), so parsing and two Postgres backends overlap.
        let mut writes = BatchWrites::new(ctx.db(), &run);
        let mut started = 0u64;
        let mut parsing: Option<tokio::task::JoinHandle<ParsedBatch>> = None;
        loop {
            let next = batches.recv().await;
            let ready = match parsing.take() {
                Some(handle) => Some(handle.await.map_err(|e| {
                    TaskError::permanent(
                        class::TASK_FAILED,
                        format!("parsing a batch of card objects failed: {e}"),
                    )
                })?),
                None => None,
            };
            if let Some(batch) = next {
                parsing = Some(tokio::task::spawn_blocking(move || parse_batch(batch, day)));
            }
            let Some(parsed) = ready else {
                if parsing.is_none() {
                    break;
                }
                continue;
            };
            while let Some(written) = writes.make_room(&parsed).await? {
                report.add(&written);
                progress.update(bytes_read.load(Ordering::Relaxed));
            }
            // A batch starts only while the reserve remains, after the first: every invocation makes progress.
            if started > 0 && ctx.near_deadline() {
                // Neither this batch nor one still being parsed is applied: the cursor says where the
                // follow-up resumes.
                stopped = true;
                break;
            }
            writes.start(parsed);
            started += 1;
        }
        while let Some(written) = writes.next_done().await? {
            report.add(&written);
            progress.update(bytes_read.load(Ordering::Relaxed));
        }
        drop(batches);
        let end = reader_done
            .await
            .unwrap_or_else(|e| StreamEnd::Corrupt(format!("reader thread failed: {e}")));
        let kwargs = json!({"bulk_type": args.bulk_type, "batch_size": args.batch_size});
        let follow_up = (
            Self::NAME,
            Self::QUEUE,
            kwargs.as_object().cloned().unwrap_or_default(),
        );
        let then = Some(("compute_price_metrics", Queue::Analytics));
        match run
            .conclude(
                ctx.db(),
                &ctx,
                end,
                report.cursor,
                stopped,
                NextWork {
                    resume: follow_up,
                    then,
                },
            )
            .await?
        {
            Ending::Completed => {}
            Ending::Continued(id) => {
                report.outcome = IngestOutcome::Continued;
                report.continuation = Some(id);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;

    #[test]
    fn arguments() {
        let spec = TaskSpec::of::<IngestScryfallBulk>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"bulk_type": "all_cards", "force": true, "batch_size": 100})).is_ok());
        assert!(check(json!({"bulk_type": "rulings"})).is_err());
        assert!(check(json!({"batch_size": 5})).is_err());
        assert!(check(json!({"url": "http://elsewhere"})).is_err());
    }
}
