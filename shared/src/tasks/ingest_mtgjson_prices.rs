//! `ingest_mtgjson_prices`: MTGJSON's price files into the catalog's price points, keyed to printings through
//! MTGJSON's Scryfall ids, buylist apart from retail.
//!
//! Files: `all_prices_today` (daily), `all_prices` (90 days, for a backfill), `all_identifiers` (teaches
//! printings their MTGJSON uuid, which the price files are keyed by), and `v4_history` (the old weekly
//! history, which carries Scryfall ids itself and adds the printings it names). Each is streamed entry by
//! entry; the file's `meta` date is its version, checked before any entry is read, so an unchanged file
//! costs only its first bytes. Batches and the run's cursor commit together, as for Scryfall.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::io::{StreamReader, SyncIoBridge};
use uuid::Uuid;

use crate::catalog::{
    insert_missing_printings, upsert_prices, BatchCounts, Ending, IngestOutcome, IngestionRun,
    NextWork, RunStart,
};
use crate::context::TaskContext;
use crate::error::{class, TaskError};
use crate::json_stream::{self, CountingReader, Item, StreamEnd};
use crate::mtgjson::{IdentifiedCard, Meta, PriceFormats, V4Card};
use crate::queue::Queue;
use crate::registry::{OnDuplicate, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct IngestMtgjsonPrices;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtgjsonFile {
    AllPricesToday,
    AllPrices,
    AllIdentifiers,
    V4History,
}

impl MtgjsonFile {
    fn as_str(self) -> &'static str {
        match self {
            MtgjsonFile::AllPricesToday => "all_prices_today",
            MtgjsonFile::AllPrices => "all_prices",
            MtgjsonFile::AllIdentifiers => "all_identifiers",
            MtgjsonFile::V4History => "v4_history",
        }
    }

    /// Where MTGJSON publishes it, under the base URL. The v4 history is no longer published: it needs a path.
    fn default_path(self) -> Option<&'static str> {
        match self {
            MtgjsonFile::AllPricesToday => Some("AllPricesToday.json"),
            MtgjsonFile::AllPrices => Some("AllPrices.json"),
            MtgjsonFile::AllIdentifiers => Some("AllIdentifiers.json"),
            MtgjsonFile::V4History => None,
        }
    }
}

fn default_file() -> MtgjsonFile {
    MtgjsonFile::AllPricesToday
}

fn default_batch_size() -> u32 {
    500
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct IngestMtgjsonArgs {
    #[serde(default = "default_file")]
    #[garde(skip)]
    pub file: MtgjsonFile,
    /// Path under DD_MTGJSON_BASE_URL (required for `v4_history`); an absolute URL or a `..` is refused.
    #[serde(default)]
    #[garde(length(min = 1, max = 1000))]
    pub path: Option<String>,
    #[serde(default)]
    #[garde(skip)]
    pub force: bool,
    /// Entries (cards) per transaction.
    #[serde(default = "default_batch_size")]
    #[garde(range(min = 10, max = 5000))]
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MtgjsonReport {
    pub source: String,
    pub file_version: DateTime<Utc>,
    pub file_uri: String,
    pub outcome: IngestOutcome,
    pub resumed_from: u64,
    pub cursor: u64,
    /// Entries (cards) read by this run.
    pub entries: u64,
    /// Entries whose uuid no printing is known by (run `all_identifiers` first).
    pub unmatched: u64,
    pub printings_added: u64,
    pub printings_matched: u64,
    pub prices_changed: u64,
    pub malformed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl TaskReport for MtgjsonReport {
    fn counts(&self) -> Counts {
        Counts::new(self.entries, self.malformed)
    }

    fn skipped(&self) -> Option<String> {
        (self.outcome == IngestOutcome::Unchanged).then(|| {
            format!(
                "{} version {} was already ingested",
                self.source,
                self.file_version.date_naive()
            )
        })
    }
}

impl Task for IngestMtgjsonPrices {
    const NAME: &'static str = "ingest_mtgjson_prices";
    const QUEUE: Queue = Queue::Ingestion;
    const RETRY: RetryPolicy =
        RetryPolicy::new(4, Duration::from_secs(30), Duration::from_secs(900));
    const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
        keys: &["file"],
        on_duplicate: OnDuplicate::Defer(Duration::from_secs(60)),
    });
    const SCHEDULES: &'static [Schedule] = &[
        Schedule {
            name: "today",
            expression: "cron(40 0/6 * * ? *)",
            kwargs: r#"{"file": "all_prices_today"}"#,
            enabled: true,
            why: "MTGJSON rebuilds AllPricesToday once a day; four checks a day find the new build within six \
                  hours, and an unchanged build is recognised from the first bytes of the file.",
        },
        Schedule {
            name: "identifiers",
            expression: "cron(10 1 * * ? *)",
            kwargs: r#"{"file": "all_identifiers"}"#,
            enabled: true,
            why: "New printings get MTGJSON uuids when MTGJSON rebuilds; a daily pass (before the price checks of \
                  the morning) keeps price entries matched to printings.",
        },
    ];
    type Args = IngestMtgjsonArgs;
    type Report = MtgjsonReport;

    /// A `path` stays under the base URL: whoever can send to the queue must not make the function fetch
    /// from elsewhere (inside the VPC included) and store what it gets as prices.
    fn validate(args: &IngestMtgjsonArgs) -> Result<(), String> {
        match args
            .path
            .as_deref()
            .and_then(crate::upstream::relative_path_problem)
        {
            Some(problem) => Err(format!("`path`: {problem}")),
            None => Ok(()),
        }
    }

    async fn run(args: IngestMtgjsonArgs, ctx: TaskContext) -> Result<MtgjsonReport, TaskError> {
        let path = args
            .path
            .clone()
            .or_else(|| args.file.default_path().map(str::to_owned))
            .ok_or_else(|| {
                TaskError::permanent(
                    class::INVALID_KWARGS,
                    format!(
                        "task `{}`: `{}` needs a `path`",
                        Self::NAME,
                        args.file.as_str()
                    ),
                )
            })?;
        let upstream = &ctx.upstreams().mtgjson;
        let url = upstream.url(&path)?.to_string();
        let source = format!("mtgjson:{}", args.file.as_str());

        let response = upstream.get(&path).await?;
        let total_bytes = response.content_length().unwrap_or(0);
        let body = StreamReader::new(response.bytes_stream().map_err(std::io::Error::other));
        let (reader, bytes_read) = CountingReader::new(SyncIoBridge::new(body));
        let (handshake, mut batches, reader_done) = json_stream::spawn_with_meta(
            reader,
            args.batch_size as usize,
            ctx.settings().download_limits,
        );

        // The version comes from `meta`, before any entry is read.
        let meta = handshake.meta.await.ok().flatten();
        let version = meta
            .as_ref()
            .and_then(|m| serde_json::from_str::<Meta>(m.get()).ok())
            .and_then(|m| m.version_date())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| Utc.from_utc_datetime(&t));
        let Some(version) = version else {
            drop(handshake.skip);
            let end = reader_done.await;
            return Err(TaskError::retryable(
                class::CORRUPT_DOWNLOAD,
                format!("{source}: {url} has no `meta` with a date before its data ({end:?})"),
            ));
        };
        let (run, start) =
            IngestionRun::begin(ctx.db(), &source, version, &url, args.force).await?;
        let mut report = MtgjsonReport {
            source: source.clone(),
            file_version: version,
            file_uri: url.clone(),
            outcome: IngestOutcome::Completed,
            resumed_from: 0,
            cursor: 0,
            entries: 0,
            unmatched: 0,
            printings_added: 0,
            printings_matched: 0,
            prices_changed: 0,
            malformed: 0,
            continuation: None,
        };
        let cursor = match start {
            RunStart::Unchanged { .. } => {
                drop(handshake.skip);
                let _ = reader_done.await;
                report.outcome = IngestOutcome::Unchanged;
                return Ok(report);
            }
            RunStart::Proceed { cursor, .. } => cursor,
        };
        report.resumed_from = cursor;
        report.cursor = cursor;
        if handshake.skip.send(cursor).is_err() {
            return Err(TaskError::retryable(
                class::CORRUPT_DOWNLOAD,
                format!("{source}: the reader stopped early"),
            ));
        }

        let mut progress = ctx.progress("bytes", total_bytes);
        let mut stopped = false;
        while let Some(batch) = batches.recv().await {
            let counts = apply_batch(&ctx, &run, args.file, &batch, &mut report).await?;
            report.entries += counts.items;
            report.prices_changed += counts.prices;
            report.malformed += counts.malformed;
            progress.update(bytes_read.load(Ordering::Relaxed));
            if ctx.near_deadline() {
                stopped = true;
                break;
            }
        }
        drop(batches);
        let end = reader_done
            .await
            .unwrap_or_else(|e| StreamEnd::Corrupt(format!("reader thread failed: {e}")));
        let kwargs = json!({"file": args.file, "path": args.path, "batch_size": args.batch_size});
        let follow_up = (
            Self::NAME,
            Self::QUEUE,
            kwargs.as_object().cloned().unwrap_or_default(),
        );
        // New prices call for new metrics; identifiers do not.
        let then = (args.file != MtgjsonFile::AllIdentifiers)
            .then_some(("compute_price_metrics", Queue::Analytics));
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

/// Applies one batch of entries with the cursor, in one transaction.
async fn apply_batch(
    ctx: &TaskContext,
    run: &IngestionRun,
    file: MtgjsonFile,
    batch: &[Item],
    report: &mut MtgjsonReport,
) -> Result<BatchCounts, TaskError> {
    let mut malformed = 0;
    let mut uuids = Vec::with_capacity(batch.len());
    for item in batch {
        match item.key.as_deref().map(str::parse::<Uuid>) {
            Some(Ok(u)) => uuids.push(Some(u)),
            _ => uuids.push(None),
        }
    }
    let mut tx = ctx.db().begin().await?;
    let mut prices = Vec::new();
    match file {
        MtgjsonFile::V4History => {
            let mut printings = Vec::with_capacity(batch.len());
            for (item, uuid) in batch.iter().zip(&uuids) {
                match (uuid, serde_json::from_str::<V4Card>(item.raw.get())) {
                    (Some(uuid), Ok(card)) => {
                        card.price_rows(&mut prices);
                        printings.push((card.printing(), *uuid));
                    }
                    (_, result) => {
                        malformed += 1;
                        tracing::warn!(uuid = item.key.as_deref().unwrap_or("(none)"), error = ?result.err(), "skipping a malformed MTGJSON v4 entry");
                    }
                }
            }
            report.printings_added += insert_missing_printings(&mut tx, &printings).await?;
        }
        MtgjsonFile::AllIdentifiers => {
            let mut pairs = Vec::new();
            for (item, uuid) in batch.iter().zip(&uuids) {
                match (uuid, serde_json::from_str::<IdentifiedCard>(item.raw.get())) {
                    (Some(uuid), Ok(card)) => {
                        if let Some(scryfall_id) = card.identifiers.scryfall_id {
                            pairs.push((scryfall_id, *uuid));
                        }
                    }
                    _ => malformed += 1,
                }
            }
            let matched = sqlx::query(
                "UPDATE printings p SET mtgjson_uuid = u.mtgjson_uuid \
                 FROM UNNEST($1::uuid[], $2::uuid[]) AS u(scryfall_id, mtgjson_uuid) \
                 WHERE p.scryfall_id = u.scryfall_id AND p.mtgjson_uuid IS DISTINCT FROM u.mtgjson_uuid \
                   AND NOT EXISTS (SELECT 1 FROM printings q WHERE q.mtgjson_uuid = u.mtgjson_uuid)",
            )
            .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            report.printings_matched += matched;
        }
        MtgjsonFile::AllPrices | MtgjsonFile::AllPricesToday => {
            let known: Vec<Uuid> = uuids.iter().flatten().copied().collect();
            let map: HashMap<Uuid, Uuid> = sqlx::query_as::<_, (Uuid, Uuid)>(
                "SELECT mtgjson_uuid, scryfall_id FROM printings WHERE mtgjson_uuid = ANY($1)",
            )
            .bind(&known)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            for (item, uuid) in batch.iter().zip(&uuids) {
                let Some(uuid) = uuid else {
                    malformed += 1;
                    continue;
                };
                let Some(scryfall_id) = map.get(uuid) else {
                    report.unmatched += 1;
                    continue;
                };
                match serde_json::from_str::<PriceFormats>(item.raw.get()) {
                    Ok(formats) => {
                        formats.price_rows(*scryfall_id, &mut prices);
                    }
                    Err(e) => {
                        malformed += 1;
                        tracing::warn!(uuid = %uuid, error = %e, "skipping a malformed MTGJSON price entry");
                    }
                }
            }
        }
    }
    let prices_changed = upsert_prices(&mut tx, &prices).await?;
    let counts = BatchCounts {
        items: batch.len() as u64,
        printings: 0,
        prices: prices_changed,
        malformed,
    };
    report.cursor = run.advance(&mut tx, counts).await?;
    tx.commit().await?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;

    #[test]
    fn arguments() {
        let spec = TaskSpec::of::<IngestMtgjsonPrices>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"file": "all_prices", "force": true})).is_ok());
        assert!(check(json!({"file": "v4_history", "path": "history/v4.json"})).is_ok());
        assert!(check(json!({"file": "all_printings"})).is_err());
        assert!(check(json!({"path": ""})).is_err());
        for outside in [
            "http://127.0.0.1:9/AllPrices.json",
            "https://example.com/AllPrices.json",
            "//example.com/AllPrices.json",
            "../../secrets",
            "history/%2E%2e/../x.json",
            "history\\..\\x.json",
        ] {
            let err = check(json!({"file": "v4_history", "path": outside})).unwrap_err();
            assert_eq!(err.class(), class::INVALID_KWARGS, "{outside}");
            assert!(err.message().contains("`path`: "), "{outside}: {err}");
        }
        assert!(check(json!({"batch_size": 1})).is_err());
    }
}
