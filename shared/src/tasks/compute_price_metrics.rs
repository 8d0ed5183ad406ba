//! `compute_price_metrics`: per printing and price series (source, retail|buylist, finish, currency), the
//! latest price and day, changes over 1, 7 and 30 days (absolute and percent), 7- and 30-day moving averages,
//! 30-day volatility (standard deviation of log returns), 30-day high and low, and point counts.
//!
//! One set-based statement with window functions, over only the series that received points since the last
//! run (incremental; `full` recomputes every series), written with an upsert that only touches metrics whose
//! values changed. Money stays `numeric`.


use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analytics::{self, Watermark};
use crate::context::TaskContext;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::{Idempotency, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

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

/// Every series' latest day and point count, for a full run. `latest` gives each series to compute its latest
/// day and a count of its points up to `base_day`; the points after `base_day` are counted while its window is
/// read (see `COMPUTE`).
const FULL: &str = r#"
WITH latest AS (
    SELECT scryfall_id, source, price_type, finish, currency, max(day) AS latest_day,
        max(day) AS base_day, count(*) AS base_points
    FROM price_points
    GROUP BY 1, 2, 3, 4, 5
)"#;

/// The latest day and point count of the series with points recorded after `$1`. A series that only received
/// its previous latest day again (a new price) or days after it (the daily case) keeps its previous count as
/// the base, and the points after its previous latest day are counted in its window, which holds them all when
/// they lie within 60 days of it; its latest day is the newest of them. Any other series is recounted and its
/// latest day looked up. (A latest point is never deleted: pruning keeps each week's last point.)
const INCREMENTAL: &str = r#"
WITH touched AS (
    SELECT scryfall_id, source, price_type, finish, currency, min(day) AS first_new_day, max(day) AS last_new_day
    FROM price_points
    WHERE recorded_at > $1
    GROUP BY 1, 2, 3, 4, 5
),
latest AS MATERIALIZED (
    SELECT t.scryfall_id, t.source, t.price_type, t.finish, t.currency, c.latest_day, c.base_day, c.base_points
    FROM touched t
    LEFT JOIN price_metrics m ON (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
                               = (t.scryfall_id, t.source, t.price_type, t.finish, t.currency)
    CROSS JOIN LATERAL (
        SELECT t.last_new_day AS latest_day, m.latest_day AS base_day, m.points::bigint AS base_points
        WHERE t.first_new_day >= m.latest_day AND t.last_new_day - m.latest_day <= 60
        UNION ALL
        SELECT r.latest_day, r.latest_day, r.points
        FROM (
            SELECT max(p.day) AS latest_day, count(*) AS points FROM price_points p
            WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
                = (t.scryfall_id, t.source, t.price_type, t.finish, t.currency)
        ) r
        WHERE NOT coalesce(t.first_new_day >= m.latest_day AND t.last_new_day - m.latest_day <= 60, false)
    ) c
)"#;

/// From `latest` (the series to compute, with their latest day and point count), the metrics, written with
/// an upsert that only touches rows whose values changed; returns how many series were computed and how many
/// rows changed.
const COMPUTE: &str = r#",
metrics AS (
    -- Per series, its last 61 days (enough for every metric: 30-day changes look back up to 60 days), read in
    -- index order, so neither the window nor the aggregates need a sort.
    SELECT l.scryfall_id, l.source, l.price_type, l.finish, l.currency, l.latest_day,
        l.base_points + x.points_after_base AS points, x.*
    FROM latest l
    CROSS JOIN LATERAL (
        SELECT (array_agg(w.price ORDER BY w.day DESC))[1] AS latest_price,
            (array_agg(w.price ORDER BY w.day DESC) FILTER (WHERE w.day <= l.latest_day - 1 AND w.day >= l.latest_day - 2))[1] AS ref_1d,
            (array_agg(w.price ORDER BY w.day DESC) FILTER (WHERE w.day <= l.latest_day - 7 AND w.day >= l.latest_day - 14))[1] AS ref_7d,
            (array_agg(w.price ORDER BY w.day DESC) FILTER (WHERE w.day <= l.latest_day - 30 AND w.day >= l.latest_day - 60))[1] AS ref_30d,
            avg(w.price) FILTER (WHERE w.day > l.latest_day - 7) AS ma_7d,
            avg(w.price) FILTER (WHERE w.day > l.latest_day - 30) AS ma_30d,
            stddev_samp(ln(w.price::float8 / w.previous_price::float8))
                FILTER (WHERE w.day > l.latest_day - 30 AND w.previous_price > 0 AND w.price > 0) AS volatility_30d,
            max(w.price) FILTER (WHERE w.day > l.latest_day - 30) AS high_30d,
            min(w.price) FILTER (WHERE w.day > l.latest_day - 30) AS low_30d,
            count(*) FILTER (WHERE w.day > l.latest_day - 30) AS points_30d,
            max(w.price) FILTER (WHERE w.day >= l.latest_day - 30 AND w.day < l.latest_day) AS prior_high_30d,
            count(*) FILTER (WHERE w.day >= l.latest_day - 30 AND w.day < l.latest_day) AS prior_points_30d,
            count(*) FILTER (WHERE w.day > l.base_day) AS points_after_base
        FROM (
            SELECT p.day, p.price, lag(p.price) OVER (ORDER BY p.day) AS previous_price
            FROM price_points p
            WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
                = (l.scryfall_id, l.source, l.price_type, l.finish, l.currency)
              AND p.day > l.latest_day - 61
        ) w
    ) x
),
written AS (
INSERT INTO price_metrics (scryfall_id, source, price_type, finish, currency, latest_day, latest_price,
    change_1d, change_1d_pct, change_7d, change_7d_pct, change_30d, change_30d_pct, ma_7d, ma_30d,
    volatility_30d, high_30d, low_30d, points_30d, points, prior_high_30d, prior_points_30d)
SELECT m.scryfall_id, m.source, m.price_type, m.finish, m.currency, m.latest_day, m.latest_price,
    m.latest_price - m.ref_1d, round((m.latest_price - m.ref_1d) / NULLIF(m.ref_1d, 0) * 100, 2),
    m.latest_price - m.ref_7d, round((m.latest_price - m.ref_7d) / NULLIF(m.ref_7d, 0) * 100, 2),
    m.latest_price - m.ref_30d, round((m.latest_price - m.ref_30d) / NULLIF(m.ref_30d, 0) * 100, 2),
    round(m.ma_7d, 4), round(m.ma_30d, 4), m.volatility_30d, m.high_30d, m.low_30d, m.points_30d, m.points,
    m.prior_high_30d, m.prior_points_30d
FROM metrics m
ON CONFLICT (scryfall_id, source, price_type, finish, currency) DO UPDATE SET
    latest_day = EXCLUDED.latest_day, latest_price = EXCLUDED.latest_price,
    change_1d = EXCLUDED.change_1d, change_1d_pct = EXCLUDED.change_1d_pct,
    change_7d = EXCLUDED.change_7d, change_7d_pct = EXCLUDED.change_7d_pct,
    change_30d = EXCLUDED.change_30d, change_30d_pct = EXCLUDED.change_30d_pct,
    ma_7d = EXCLUDED.ma_7d, ma_30d = EXCLUDED.ma_30d, volatility_30d = EXCLUDED.volatility_30d,
    high_30d = EXCLUDED.high_30d, low_30d = EXCLUDED.low_30d, points_30d = EXCLUDED.points_30d,
    points = EXCLUDED.points, prior_high_30d = EXCLUDED.prior_high_30d,
    prior_points_30d = EXCLUDED.prior_points_30d, computed_at = now()
WHERE (price_metrics.latest_day, price_metrics.latest_price, price_metrics.change_1d, price_metrics.change_7d,
       price_metrics.change_30d, price_metrics.ma_7d, price_metrics.ma_30d, price_metrics.volatility_30d,
       price_metrics.high_30d, price_metrics.low_30d, price_metrics.points_30d, price_metrics.points,
       price_metrics.prior_high_30d, price_metrics.prior_points_30d)
  IS DISTINCT FROM
      (EXCLUDED.latest_day, EXCLUDED.latest_price, EXCLUDED.change_1d, EXCLUDED.change_7d, EXCLUDED.change_30d,
       EXCLUDED.ma_7d, EXCLUDED.ma_30d, EXCLUDED.volatility_30d, EXCLUDED.high_30d, EXCLUDED.low_30d,
       EXCLUDED.points_30d, EXCLUDED.points, EXCLUDED.prior_high_30d, EXCLUDED.prior_points_30d)
RETURNING 1
)
SELECT (SELECT count(*) FROM metrics) AS series, (SELECT count(*) FROM written) AS changed
"#;

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

    async fn run(args: ComputePriceMetricsArgs, ctx: TaskContext) -> Result<PriceMetricsReport, TaskError> {
        let mut tx = ctx.db().begin().await?;
        // A full run's aggregate over every series stays in memory (for this transaction only).
        sqlx::query("SET LOCAL work_mem = '64MB'").execute(&mut *tx).await?;
        let mark = Watermark::read(&mut tx, WATERMARK).await?;
        let full = args.full || mark.since.is_none();
        let (series, changed): (i64, i64) = match mark.since {
            Some(since) if !full => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{INCREMENTAL}{COMPUTE}")))
                    .bind(since)
                    .fetch_one(&mut *tx)
                    .await?
            }
            _ => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{FULL}{COMPUTE}")))
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let changed = changed as u64;
        mark.advance(&mut tx).await?;
        tx.commit().await?;
        if changed > 0 {
            // New metrics call for a signal pass, once per metrics run.
            analytics::follow_up(&ctx, &ctx.run_key, "detect_price_signals", "signals").await?;
        }
        Ok(PriceMetricsReport {
            full,
            since: if full { None } else { mark.since },
            series: series as u64,
            changed,
        })
    }
}
