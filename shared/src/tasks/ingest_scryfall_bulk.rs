//! `ingest_scryfall_bulk`: Scryfall's bulk card file (printings and today's prices) into the catalog.
//!
//! Reads the bulk-data index, picks the requested file, and streams it (hundreds of MB in production) from
//! the download through a streaming JSON parser into Postgres in batches: the file and the cards are never
//! held whole. Each batch (printings, prices, and the run's cursor) is one transaction, so a run stopped by a
//! deadline or a broken download resumes exactly after the last applied batch. A version already ingested
//! is skipped; malformed card objects are counted, logged with their id and skipped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::catalog::{
    upsert_price_columns, upsert_printings, BatchCounts, Ending, NextWork, IngestOutcome, IngestionRun, PriceColumns,
    RunStart,
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

const BULK_TYPES: [&str; 4] = ["default_cards", "all_cards", "oracle_cards", "unique_artwork"];

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
        Err(garde::Error::new(format!("must be one of {}", BULK_TYPES.join(", "))))
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
    /// Time spent writing to Postgres (the rest is download and parsing, which overlap with it).
    pub db_ms: u64,
    /// The follow-up message's envelope id, when the run continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl TaskReport for IngestReport {
    fn counts(&self) -> Counts {
        Counts::new(self.cards, self.malformed)
    }

    fn skipped(&self) -> Option<String> {
        (self.outcome == IngestOutcome::Unchanged).then(|| {
            format!("{} version {} was already ingested", self.source, self.file_version.to_rfc3339())
        })
    }
}

/// One batch of card objects, parsed into catalog rows.
struct ParsedBatch {
    items: u64,
    printings: Vec<crate::catalog::PrintingRow>,
    prices: PriceColumns,
    malformed: u64,
}

fn parse_batch(batch: Vec<json_stream::Item>, day: chrono::NaiveDate) -> ParsedBatch {
    let mut parsed = ParsedBatch {
        items: batch.len() as u64,
        printings: Vec::with_capacity(batch.len()),
        prices: PriceColumns::default(),
        malformed: 0,
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
                let id = serde_json::from_str::<CardId>(item.raw.get()).ok().and_then(|c| c.id);
                tracing::warn!(card_id = id.as_deref().unwrap_or("(none)"), error = %e, "skipping a malformed card object");
            }
        }
    }
    parsed.prices = PriceColumns::new(&prices);
    parsed
}

impl Task for IngestScryfallBulk {
    const NAME: &'static str = "ingest_scryfall_bulk";
    const QUEUE: Queue = Queue::Ingestion;
    const RETRY: RetryPolicy = RetryPolicy::new(4, Duration::from_secs(30), Duration::from_secs(900));
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
        let item = index.data.into_iter().find(|i| i.kind == args.bulk_type).ok_or_else(|| {
            TaskError::permanent(class::UPSTREAM, format!("the bulk-data index lists no `{}` file", args.bulk_type))
        })?;
        let source = format!("scryfall:{}", args.bulk_type);
        let (run, start) =
            IngestionRun::begin(ctx.db(), &source, item.updated_at, &item.download_uri, args.force).await?;
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
        let (mut batches, reader_done) = json_stream::spawn(reader, Shape::Array, cursor, args.batch_size as usize);
        let mut progress = ctx.progress("bytes", total_bytes);
        let reserve = ctx.settings().ingest_reserve;
        let mut stopped = false;

        // Two stages: the next batch's card objects are parsed on a blocking thread while the previous batch
        // is written, so parsing and Postgres overlap.
        let mut parsing: Option<tokio::task::JoinHandle<ParsedBatch>> = None;
        loop {
            let next = batches.recv().await;
            let ready = match parsing.take() {
                Some(handle) => Some(handle.await.map_err(|e| {
                    TaskError::permanent(class::TASK_FAILED, format!("parsing a batch of card objects failed: {e}"))
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
            let db_started = std::time::Instant::now();
            let mut tx = ctx.db().begin().await?;
            // The batch and the cursor commit together, so a commit lost in a crash loses both and the resumed
            // run applies the batch again: safe to let Postgres acknowledge before the WAL flush.
            sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
            let printings_changed = upsert_printings(&mut tx, &parsed.printings).await?;
            let prices_changed = upsert_price_columns(&mut tx, &parsed.prices).await?;
            let counts = BatchCounts {
                items: parsed.items,
                printings: printings_changed,
                prices: prices_changed,
                malformed: parsed.malformed,
            };
            report.cursor = run.advance(&mut tx, counts).await?;
            tx.commit().await?;
            report.db_ms += db_started.elapsed().as_millis() as u64;
            report.cards += counts.items;
            report.printings_changed += printings_changed;
            report.prices_changed += prices_changed;
            report.malformed += parsed.malformed;
            progress.update(bytes_read.load(Ordering::Relaxed));
            if ctx.remaining() < reserve {
                // A batch still being parsed is not applied: the cursor says where the follow-up resumes.
                stopped = true;
                break;
            }
        }
        drop(batches);
        let end = reader_done.await.unwrap_or_else(|e| StreamEnd::Corrupt(format!("reader thread failed: {e}")));
        let kwargs = json!({"bulk_type": args.bulk_type, "batch_size": args.batch_size});
        let follow_up = (Self::NAME, Self::QUEUE, kwargs.as_object().cloned().unwrap_or_default());
        let then = Some(("compute_price_metrics", Queue::Analytics));
        match run.conclude(ctx.db(), &ctx, end, report.cursor, stopped, NextWork { resume: follow_up, then }).await? {
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
