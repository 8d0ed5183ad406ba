//! `compute_price_metrics`: per printing and price series (source, retail|buylist, finish, currency), the
//! latest price and day, changes over 1, 7 and 30 days (absolute and percent), 7- and 30-day moving averages,
//! 30-day volatility (standard deviation of log returns), 30-day high and low, and point counts.
//!
//! Over only the series whose points changed since the last run (incremental; `full` recomputes every series):
//! those with points recorded since, and those whose stored window a deletion or a move dropped (the triggers of
//! the migration `price_metrics_follow_every_change`). Postgres selects the series and hands over each one's
//! window: in the daily case the window stored with its metrics row ([`crate::series_metrics::window`]) and its
//! new points, otherwise its last 61 days of points as two arrays. The metrics are computed here ([`crate::series_metrics`], exact decimal arithmetic) and copied
//! back with each series' window a chunk at a time while the next chunk is read; one `UPDATE` at the end
//! touches only the rows whose values or window changed ([`crate::series_metrics::store`]).
//! Computing them in SQL cost 35-90 us per series in the aggregate executor, several times the cost of reading
//! the window (`docs/benchmarks.md`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analytics::{self, Watermark};
use crate::context::TaskContext;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::{Idempotency, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;
use crate::series_metrics;

pub struct ComputePriceMetrics;

const WATERMARK: &str = "compute_price_metrics";

#[derive(Debug, Clone, Default, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct ComputePriceMetricsArgs {
    /// Recompute every series, not only those with new points.
    #[serde(default)]
    #[garde(skip)]
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceMetricsReport {
    pub full: bool,
    /// Points recorded after this instant were looked for (absent on a full or first run).
    pub since: Option<DateTime<Utc>>,
    /// Series with new points, recomputed.
    pub series: u64,
    /// Metrics rows inserted or changed.
    pub changed: u64,
}

impl TaskReport for PriceMetricsReport {
    fn counts(&self) -> Counts {
        Counts::new(self.series, 0)
    }
}

/// Every series with its latest day and point count, for a full run, from `price_series` (kept exact by the
/// points' own statements, see its migration): grouping 36.5 million points by series took a third of a full
/// run's read. `latest` gives each series to compute its latest day, its point count as the base (no point lies
/// after `base_day`, see `series_metrics::store`) and whether it has a metrics row.
const FULL: &str = r#"
WITH latest AS (
    SELECT s.scryfall_id, s.source, s.price_type, s.finish, s.currency, s.latest_day,
        s.latest_day AS base_day, s.points AS base_points, m.ctid AS row_tid,
        NULL::bytea AS stored_window, NULL::date[] AS new_days, NULL::numeric[] AS new_prices
    FROM price_series s
    LEFT JOIN price_metrics m ON (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
                               = (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)
)"#;

/// The series to recompute: those with points recorded after `$1` (new days, late or corrected old days), and
/// those whose stored window a change other than new points dropped (a deletion, a prune, a move: the
/// triggers of `price_points`, see the migration `price_metrics_follow_every_change`).
///
/// A series whose row keeps its window and whose new points all lie on or after the row's latest day and
/// within 60 days of it (the daily case) keeps the row's count as the base, and the points after the row's
/// latest day are counted in its window; its latest day is the newest of them, and its window is the stored one
/// with the new points laid over it (gathered in the one pass over the new points), so none of its points are
/// read. The row's count is exact for that: a deletion either takes counted points off it or drops the window.
/// Any other series takes its count and latest day from `price_series` and has its window read from the points.
///
/// The new points are grouped by series first and then joined to their metrics rows, which the reader plans
/// without hash joins ([`crate::series_metrics::store`]): sorted by series, the groups meet the metrics rows
/// in key order, so the first series stream out once the new points are sorted. Joined before grouping, or
/// through a hash, no series came out before every new point was joined and grouped: on the v4 history the
/// first came after 160-210 ms rather than 40-75 ms, and the whole read took longer (`psql`, three runs each).
/// The daily case does not probe `price_series`: with that probe for every series, the incremental run after
/// a day for every v4 series took 2.11 s in one bench run, against 1.47-1.98 s over two runs without it.
const INCREMENTAL: &str = r#"
WITH grouped AS (
    SELECT p.scryfall_id, p.source, p.price_type, p.finish, p.currency,
        min(p.day) AS first_new_day, max(p.day) AS last_new_day,
        array_agg(p.day) AS new_days, array_agg(p.price) AS new_prices
    FROM price_points p
    WHERE p.recorded_at > $1
    GROUP BY p.scryfall_id, p.source, p.price_type, p.finish, p.currency
),
touched AS (
    SELECT g.*, m.ctid AS row_tid, m.latest_day AS row_day, m.points AS row_points, m.window_points
    FROM grouped g
    LEFT JOIN price_metrics m ON (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
                               = (g.scryfall_id, g.source, g.price_type, g.finish, g.currency)
    UNION ALL
    SELECT m.scryfall_id, m.source, m.price_type, m.finish, m.currency, NULL::date, NULL::date, NULL::date[],
        NULL::numeric[], m.ctid, m.latest_day, m.points, NULL::bytea
    FROM price_metrics m
    WHERE m.window_points IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM price_points p
          WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
              = (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
            AND p.recorded_at > $1)
),
latest AS MATERIALIZED (
    SELECT t.scryfall_id, t.source, t.price_type, t.finish, t.currency, c.latest_day, c.base_day, c.base_points,
        t.row_tid, c.stored_window, c.new_days, c.new_prices
    FROM touched t
    CROSS JOIN LATERAL (
        SELECT t.last_new_day AS latest_day, t.row_day AS base_day, t.row_points::bigint AS base_points,
            t.window_points AS stored_window, t.new_days, t.new_prices
        WHERE t.window_points IS NOT NULL AND t.first_new_day >= t.row_day AND t.last_new_day - t.row_day <= 60
        UNION ALL
        SELECT s.latest_day, s.latest_day, s.points, NULL::bytea, NULL::date[], NULL::numeric[]
        FROM price_series s
        WHERE (s.scryfall_id, s.source, s.price_type, s.finish, s.currency)
            = (t.scryfall_id, t.source, t.price_type, t.finish, t.currency)
          AND NOT coalesce(t.window_points IS NOT NULL AND t.first_new_day >= t.row_day
                           AND t.last_new_day - t.row_day <= 60, false)
    ) c
)"#;

impl Task for ComputePriceMetrics {
    const NAME: &'static str = "compute_price_metrics";
    const QUEUE: Queue = Queue::Analytics;
    const RETRY: RetryPolicy = analytics::RETRY;
    const SINGLE_INSTANCE: Option<SingleInstance> = analytics::ONE_AT_A_TIME;
    /// Ingestions enqueue one run per ingestion run (`after:<source>:<version>:<run start>`): a repeat is answered from
    /// the first run's report.
    const IDEMPOTENCY: Option<Idempotency> = analytics::ONCE_PER_ID;
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "incremental",
        expression: "cron(50 0/4 * * ? *)",
        kwargs: "{}",
        enabled: true,
        why: "Catches points that arrived outside an ingestion's own follow-up (backfills, manual runs) every \
              four hours, like the old beat's four-hourly analytics; a run with nothing new costs one index scan.",
    }];
    type Args = ComputePriceMetricsArgs;
    type Report = PriceMetricsReport;

    async fn run(
        args: ComputePriceMetricsArgs,
        ctx: TaskContext,
    ) -> Result<PriceMetricsReport, TaskError> {
        let mut tx = analytics::begin_in_one_snapshot(ctx.db()).await?;
        let mark = Watermark::read(&mut tx, WATERMARK).await?;
        let full = args.full || mark.since.is_none();
        let (latest, since) = match mark.since {
            Some(since) if !full => (INCREMENTAL, Some(since)),
            _ => (FULL, None),
        };
        let chunk = ctx.settings().metrics_chunk;
        let (series, changed) =
            series_metrics::store::compute_and_write(ctx.db(), &mut tx, latest, since, chunk)
                .await?;
        mark.advance(&mut tx).await?;
        tx.commit().await?;
        if changed > 0 {
            // New metrics call for a signal pass, once per metrics run.
            analytics::follow_up(&ctx, &ctx.run_key, "detect_price_signals", "signals").await?;
        }
        Ok(PriceMetricsReport {
            full,
            since: if full { None } else { mark.since },
            series,
            changed,
        })
    }
}
