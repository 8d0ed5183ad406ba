//! `compute_price_metrics`: per printing and price series (source, retail|buylist, finish, currency), the
//! latest price and day, changes over 1, 7 and 30 days (absolute and percent), 7- and 30-day moving averages,
//! 30-day volatility (standard deviation of log returns), 30-day high and low, and point counts.
//!
//! Over only the series that received points since the last run (incremental; `full` recomputes every series):
//! Postgres selects the series and hands over each one's last 61 days of points as two arrays, through a
//! cursor; the metrics are computed here ([`crate::series_metrics`], exact decimal arithmetic) and written back
//! a chunk at a time, touching only the rows whose values changed. Computing them in SQL cost 35-90 us per
//! series in the aggregate executor, several times the cost of reading the window (`docs/benchmarks.md`).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

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

/// From `latest` (the series to compute, with their latest day and the base of their point count), each
/// series' key and the days and prices of its window: its last 61 days, in index order. Prices go as text: the
/// binary encoding drops a zero's places, and `0.00` must stay `0.00` in the metrics.
const WINDOWS: &str = r#"
SELECT l.scryfall_id, l.source, l.price_type, l.finish, l.currency, l.latest_day, l.base_day, l.base_points,
    w.days, w.prices
FROM latest l
CROSS JOIN LATERAL (
    SELECT array_agg(p.day) AS days, array_agg(p.price::text) AS prices
    FROM (
        SELECT p.day, p.price FROM price_points p
        WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
            = (l.scryfall_id, l.source, l.price_type, l.finish, l.currency)
          AND p.day > l.latest_day - 61
        ORDER BY p.day
    ) p
) w"#;

/// Writes a chunk of computed metrics (one array per column): updates the rows whose values changed, inserts
/// the series without a row, and returns how many rows it wrote. A plain `UPDATE` leaves unchanged rows
/// untouched, where an upsert's `DO UPDATE ... WHERE` would still lock (and so write) each of them.
const WRITE: &str = r#"
WITH computed AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[]::numeric[],
        $8::text[]::numeric[], $9::text[]::numeric[], $10::text[]::numeric[], $11::text[]::numeric[], $12::text[]::numeric[], $13::text[]::numeric[],
        $14::text[]::numeric[], $15::text[]::numeric[], $16::float8[], $17::text[]::numeric[], $18::text[]::numeric[], $19::int[], $20::int[],
        $21::text[]::numeric[], $22::int[])
        AS c(scryfall_id, source, price_type, finish, currency, latest_day, latest_price, change_1d, change_1d_pct,
             change_7d, change_7d_pct, change_30d, change_30d_pct, ma_7d, ma_30d, volatility_30d, high_30d,
             low_30d, points_30d, points, prior_high_30d, prior_points_30d)
),
updated AS (
    UPDATE price_metrics m SET
        latest_day = c.latest_day, latest_price = c.latest_price,
        change_1d = c.change_1d, change_1d_pct = c.change_1d_pct,
        change_7d = c.change_7d, change_7d_pct = c.change_7d_pct,
        change_30d = c.change_30d, change_30d_pct = c.change_30d_pct,
        ma_7d = c.ma_7d, ma_30d = c.ma_30d, volatility_30d = c.volatility_30d,
        high_30d = c.high_30d, low_30d = c.low_30d, points_30d = c.points_30d, points = c.points,
        prior_high_30d = c.prior_high_30d, prior_points_30d = c.prior_points_30d, computed_at = now()
    FROM computed c
    WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
        = (c.scryfall_id, c.source, c.price_type, c.finish, c.currency)
      AND (m.latest_day, m.latest_price, m.change_1d, m.change_7d, m.change_30d, m.ma_7d, m.ma_30d,
           m.volatility_30d, m.high_30d, m.low_30d, m.points_30d, m.points, m.prior_high_30d, m.prior_points_30d)
          IS DISTINCT FROM
          (c.latest_day, c.latest_price, c.change_1d, c.change_7d, c.change_30d, c.ma_7d, c.ma_30d,
           c.volatility_30d, c.high_30d, c.low_30d, c.points_30d, c.points, c.prior_high_30d, c.prior_points_30d)
    RETURNING 1
),
inserted AS (
    INSERT INTO price_metrics (scryfall_id, source, price_type, finish, currency, latest_day, latest_price,
        change_1d, change_1d_pct, change_7d, change_7d_pct, change_30d, change_30d_pct, ma_7d, ma_30d,
        volatility_30d, high_30d, low_30d, points_30d, points, prior_high_30d, prior_points_30d)
    SELECT c.* FROM computed c
    WHERE NOT EXISTS (
        SELECT 1 FROM price_metrics m
        WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
            = (c.scryfall_id, c.source, c.price_type, c.finish, c.currency))
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)
"#;

/// How many series are read, computed and written at a time: memory stays bounded at any catalog size.
const CHUNK: usize = 5000;

/// One series of the windows' cursor: its key, latest day, the base of its point count, and its window.
#[derive(sqlx::FromRow)]
struct SeriesWindow {
    scryfall_id: Uuid,
    source: String,
    price_type: String,
    finish: String,
    currency: String,
    latest_day: NaiveDate,
    base_day: NaiveDate,
    base_points: i64,
    days: Option<Vec<NaiveDate>>,
    prices: Option<Vec<String>>,
}

/// A chunk of computed metrics, a column each, as `WRITE` binds them. Decimals go as text: the binary encoding
/// drops a zero's places (`0.00` would be stored as `0`).
#[derive(Default)]
struct Columns {
    scryfall_id: Vec<Uuid>,
    source: Vec<String>,
    price_type: Vec<String>,
    finish: Vec<String>,
    currency: Vec<String>,
    latest_day: Vec<NaiveDate>,
    latest_price: Vec<String>,
    change_1d: Vec<Option<String>>,
    change_1d_pct: Vec<Option<String>>,
    change_7d: Vec<Option<String>>,
    change_7d_pct: Vec<Option<String>>,
    change_30d: Vec<Option<String>>,
    change_30d_pct: Vec<Option<String>>,
    ma_7d: Vec<Option<String>>,
    ma_30d: Vec<Option<String>>,
    volatility_30d: Vec<Option<f64>>,
    high_30d: Vec<String>,
    low_30d: Vec<String>,
    points_30d: Vec<i32>,
    points: Vec<i32>,
    prior_high_30d: Vec<Option<String>>,
    prior_points_30d: Vec<i32>,
}

impl Columns {
    /// Computes one series' metrics into the chunk; false when its window holds nothing to compute.
    fn push(&mut self, w: SeriesWindow) -> Result<bool, TaskError> {
        let key = || format!("{} {}/{}/{}/{}", w.scryfall_id, w.source, w.price_type, w.finish, w.currency);
        let mut days = w.days.clone().unwrap_or_default();
        let mut prices = w
            .prices
            .iter()
            .flatten()
            .map(|p| Decimal::from_str_exact(p))
            .collect::<Result<Vec<Decimal>, _>>()
            .map_err(|e| {
                TaskError::permanent("metrics_overflow", format!("series {}: a price is out of decimal range: {e}", key()))
            })?;
        if !days.is_sorted() {
            let mut points: Vec<_> = days.into_iter().zip(prices).collect();
            points.sort_by_key(|&(day, _)| day);
            (days, prices) = points.into_iter().unzip();
        }
        let metrics = series_metrics::compute(w.latest_day, &days, &prices).map_err(|_| {
            TaskError::permanent("metrics_overflow", format!("series {}: a metric is out of decimal range", key()))
        })?;
        let Some(m) = metrics else {
            return Ok(false);
        };
        let after_base = days.iter().filter(|&&day| day > w.base_day).count() as i64;
        let points = i32::try_from(w.base_points + after_base).map_err(|_| {
            TaskError::permanent("metrics_overflow", format!("series {}: more points than a metrics row holds", key()))
        })?;
        self.scryfall_id.push(w.scryfall_id);
        self.source.push(w.source);
        self.price_type.push(w.price_type);
        self.finish.push(w.finish);
        self.currency.push(w.currency);
        self.latest_day.push(m.latest_day);
        self.latest_price.push(m.latest_price.to_string());
        self.change_1d.push(m.change_1d.map(|d| d.to_string()));
        self.change_1d_pct.push(m.change_1d_pct.map(|d| d.to_string()));
        self.change_7d.push(m.change_7d.map(|d| d.to_string()));
        self.change_7d_pct.push(m.change_7d_pct.map(|d| d.to_string()));
        self.change_30d.push(m.change_30d.map(|d| d.to_string()));
        self.change_30d_pct.push(m.change_30d_pct.map(|d| d.to_string()));
        self.ma_7d.push(m.ma_7d.map(|d| d.to_string()));
        self.ma_30d.push(m.ma_30d.map(|d| d.to_string()));
        self.volatility_30d.push(m.volatility_30d);
        self.high_30d.push(m.high_30d.to_string());
        self.low_30d.push(m.low_30d.to_string());
        self.points_30d.push(m.points_30d);
        self.points.push(points);
        self.prior_high_30d.push(m.prior_high_30d.map(|d| d.to_string()));
        self.prior_points_30d.push(m.prior_points_30d);
        Ok(true)
    }

    /// Writes the chunk; returns how many rows changed.
    async fn write(self, tx: &mut Transaction<'_, Postgres>) -> Result<u64, TaskError> {
        if self.scryfall_id.is_empty() {
            return Ok(0);
        }
        let (changed,): (i64,) = sqlx::query_as(WRITE)
            .bind(self.scryfall_id)
            .bind(self.source)
            .bind(self.price_type)
            .bind(self.finish)
            .bind(self.currency)
            .bind(self.latest_day)
            .bind(self.latest_price)
            .bind(self.change_1d)
            .bind(self.change_1d_pct)
            .bind(self.change_7d)
            .bind(self.change_7d_pct)
            .bind(self.change_30d)
            .bind(self.change_30d_pct)
            .bind(self.ma_7d)
            .bind(self.ma_30d)
            .bind(self.volatility_30d)
            .bind(self.high_30d)
            .bind(self.low_30d)
            .bind(self.points_30d)
            .bind(self.points)
            .bind(self.prior_high_30d)
            .bind(self.prior_points_30d)
            .fetch_one(&mut **tx)
            .await?;
        Ok(changed as u64)
    }
}

/// Reads the windows of the series `latest` selects through a cursor, a chunk at a time, computes their
/// metrics and writes each chunk; returns how many series were computed and how many rows changed.
async fn compute_and_write(
    tx: &mut Transaction<'_, Postgres>,
    latest: &str,
    since: Option<DateTime<Utc>>,
) -> Result<(u64, u64), TaskError> {
    let declare = format!("DECLARE series_windows NO SCROLL CURSOR FOR {latest}{WINDOWS}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(declare));
    if let Some(since) = since {
        query = query.bind(since);
    }
    query.execute(&mut **tx).await?;
    let fetch = format!("FETCH {CHUNK} FROM series_windows");
    let (mut series, mut changed) = (0u64, 0u64);
    loop {
        let windows: Vec<SeriesWindow> =
            sqlx::query_as(sqlx::AssertSqlSafe(fetch.as_str())).fetch_all(&mut **tx).await?;
        let last = windows.len() < CHUNK;
        let mut chunk = Columns::default();
        for window in windows {
            series += u64::from(chunk.push(window)?);
        }
        changed += chunk.write(tx).await?;
        if last {
            break;
        }
    }
    sqlx::query("CLOSE series_windows").execute(&mut **tx).await?;
    Ok((series, changed))
}

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
        let (series, changed) = match mark.since {
            Some(since) if !full => compute_and_write(&mut tx, INCREMENTAL, Some(since)).await?,
            _ => compute_and_write(&mut tx, FULL, None).await?,
        };
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
