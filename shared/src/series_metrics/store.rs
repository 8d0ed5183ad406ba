//! Reading series' windows from Postgres and writing their metrics back, a chunk at a time.
//!
//! The task says which series to compute (a query that ends in a CTE `latest`); the windows are read with
//! [`WINDOWS`], computed with [`super::compute`] and written with [`WRITE`]. When the pool can lend a second
//! connection, reading, computing and writing overlap: a reader on that connection, in a transaction that
//! imports the writing transaction's snapshot (so it sees exactly what a cursor in the writer would), streams
//! the windows while the writer writes the previous chunk. Otherwise a cursor in the writing transaction reads
//! one chunk at a time.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::TaskError;

/// From `latest` (the series to compute, with their latest day and the base of their point count), each
/// series' key and the days and prices of its window: its last 61 days, in index order. Each price comes with
/// its scale: the binary decoding drops a zero's places, and `0.00` must stay `0.00` in the metrics.
pub const WINDOWS: &str = r#"
SELECT l.scryfall_id, l.source, l.price_type, l.finish, l.currency, l.latest_day, l.base_day, l.base_points,
    l.has_row, w.days, w.prices, w.scales
FROM latest l
CROSS JOIN LATERAL (
    SELECT array_agg(p.day) AS days, array_agg(p.price) AS prices, array_agg(scale(p.price)) AS scales
    FROM (
        SELECT p.day, p.price FROM price_points p
        WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
            = (l.scryfall_id, l.source, l.price_type, l.finish, l.currency)
          AND p.day > l.latest_day - 61
        ORDER BY p.day
    ) p
) w"#;

/// Writes a chunk of computed metrics (one array per column, and whether each series had a row when its window
/// was read): updates the rows whose values changed, inserts the series without a row, and returns how many
/// rows it wrote. A plain `UPDATE` leaves unchanged rows untouched, where an upsert's `DO UPDATE ... WHERE`
/// would still lock (and so write) each of them. A row that appeared since the read (only another run could
/// add one, and runs hold a lease) fails the insert on its key: the run fails, and its points stay after the
/// watermark for the next run.
pub const WRITE: &str = r#"
WITH computed AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[]::numeric[],
        $8::text[]::numeric[], $9::text[]::numeric[], $10::text[]::numeric[], $11::text[]::numeric[], $12::text[]::numeric[], $13::text[]::numeric[],
        $14::text[]::numeric[], $15::text[]::numeric[], $16::float8[], $17::text[]::numeric[], $18::text[]::numeric[], $19::int[], $20::int[],
        $21::text[]::numeric[], $22::int[], $23::bool[])
        AS c(scryfall_id, source, price_type, finish, currency, latest_day, latest_price, change_1d, change_1d_pct,
             change_7d, change_7d_pct, change_30d, change_30d_pct, ma_7d, ma_30d, volatility_30d, high_30d,
             low_30d, points_30d, points, prior_high_30d, prior_points_30d, has_row)
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
    WHERE c.has_row
      AND (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
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
    SELECT c.scryfall_id, c.source, c.price_type, c.finish, c.currency, c.latest_day, c.latest_price,
        c.change_1d, c.change_1d_pct, c.change_7d, c.change_7d_pct, c.change_30d, c.change_30d_pct, c.ma_7d,
        c.ma_30d, c.volatility_30d, c.high_30d, c.low_30d, c.points_30d, c.points, c.prior_high_30d,
        c.prior_points_30d
    FROM computed c
    WHERE NOT c.has_row
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)
"#;

/// The writing transaction's plan for [`WRITE`]: each chunk's rows are found by the metrics table's primary key
/// (a nested loop of index probes, in key order). Left to itself the planner hashes the whole metrics table for
/// every chunk, which on 60,000 series made an incremental run's writes three times the cost of rewriting every
/// row once. Applied after the reader's plan is made, and only to the writer's transaction.
const WRITER_SETTINGS: &str = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// How many series are read, computed and written at a time: memory stays bounded at any catalog size.
const CHUNK: usize = 2000;

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
    has_row: bool,
    days: Option<Vec<NaiveDate>>,
    prices: Option<Vec<Decimal>>,
    scales: Option<Vec<i32>>,
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
    has_row: Vec<bool>,
}

impl Columns {
    /// Computes one series' metrics into the chunk; false when its window holds nothing to compute.
    fn push(&mut self, mut w: SeriesWindow) -> Result<bool, TaskError> {
        let key = || {
            format!(
                "{} {}/{}/{}/{}",
                w.scryfall_id, w.source, w.price_type, w.finish, w.currency
            )
        };
        let mut days = w.days.take().unwrap_or_default();
        let mut prices = w.prices.take().unwrap_or_default();
        for (price, scale) in prices.iter_mut().zip(w.scales.iter().flatten()) {
            price.rescale(u32::try_from(*scale).unwrap_or(0));
        }
        if !days.is_sorted() {
            let mut points: Vec<_> = days.into_iter().zip(prices).collect();
            points.sort_by_key(|&(day, _)| day);
            (days, prices) = points.into_iter().unzip();
        }
        let metrics = super::compute(w.latest_day, &days, &prices).map_err(|_| {
            TaskError::permanent(
                "metrics_overflow",
                format!("series {}: a metric is out of decimal range", key()),
            )
        })?;
        let Some(m) = metrics else {
            return Ok(false);
        };
        let after_base = days.iter().filter(|&&day| day > w.base_day).count() as i64;
        let points = i32::try_from(w.base_points + after_base).map_err(|_| {
            TaskError::permanent(
                "metrics_overflow",
                format!("series {}: more points than a metrics row holds", key()),
            )
        })?;
        self.scryfall_id.push(w.scryfall_id);
        self.source.push(w.source);
        self.price_type.push(w.price_type);
        self.finish.push(w.finish);
        self.currency.push(w.currency);
        self.latest_day.push(m.latest_day);
        self.latest_price.push(m.latest_price.to_string());
        self.change_1d.push(m.change_1d.map(|d| d.to_string()));
        self.change_1d_pct
            .push(m.change_1d_pct.map(|d| d.to_string()));
        self.change_7d.push(m.change_7d.map(|d| d.to_string()));
        self.change_7d_pct
            .push(m.change_7d_pct.map(|d| d.to_string()));
        self.change_30d.push(m.change_30d.map(|d| d.to_string()));
        self.change_30d_pct
            .push(m.change_30d_pct.map(|d| d.to_string()));
        self.ma_7d.push(m.ma_7d.map(|d| d.to_string()));
        self.ma_30d.push(m.ma_30d.map(|d| d.to_string()));
        self.volatility_30d.push(m.volatility_30d);
        self.high_30d.push(m.high_30d.to_string());
        self.low_30d.push(m.low_30d.to_string());
        self.points_30d.push(m.points_30d);
        self.points.push(points);
        self.prior_high_30d
            .push(m.prior_high_30d.map(|d| d.to_string()));
        self.prior_points_30d.push(m.prior_points_30d);
        self.has_row.push(w.has_row);
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
            .bind(self.has_row)
            .fetch_one(&mut **tx)
            .await?;
        Ok(changed as u64)
    }
}

impl Columns {
    fn len(&self) -> usize {
        self.scryfall_id.len()
    }
}

/// Computes and writes the metrics of the series that `latest` (SQL ending in a CTE `latest`, with `$1` the
/// watermark when given) selects; returns how many series were computed and how many rows changed. A separate
/// reader applies `reader_settings` (`SET LOCAL` statements) to its own transaction first.
pub async fn compute_and_write(
    pool: &PgPool,
    tx: &mut Transaction<'_, Postgres>,
    latest: &str,
    since: Option<DateTime<Utc>>,
    reader_settings: &[&'static str],
) -> Result<(u64, u64), TaskError> {
    let windows = format!("{latest}{WINDOWS}");
    match reader_connection(pool).await {
        Some(reader) => pipelined(tx, reader, &windows, since, reader_settings).await,
        None => through_a_cursor(tx, &windows, since).await,
    }
}

/// A second connection for the reader, if the pool has one to lend soon: with one connection, or all the
/// others busy, the cursor does the reading.
async fn reader_connection(pool: &PgPool) -> Option<PoolConnection<Postgres>> {
    if pool.options().get_max_connections() < 2 {
        return None;
    }
    tokio::time::timeout(Duration::from_secs(2), pool.acquire())
        .await
        .ok()?
        .ok()
}

/// The reader streams the windows on its own connection, in the writer's snapshot, and hands over computed
/// chunks (at most two waiting) while the writer writes.
async fn pipelined(
    tx: &mut Transaction<'_, Postgres>,
    mut reader: PoolConnection<Postgres>,
    windows: &str,
    since: Option<DateTime<Utc>>,
    reader_settings: &[&'static str],
) -> Result<(u64, u64), TaskError> {
    let (snapshot,): (String,) = sqlx::query_as("SELECT pg_export_snapshot()")
        .fetch_one(&mut **tx)
        .await?;
    let mut rtx = reader
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET TRANSACTION SNAPSHOT '{snapshot}'"
    )))
    .execute(&mut *rtx)
    .await?;
    sqlx::raw_sql(crate::analytics::SESSION)
        .execute(&mut *rtx)
        .await?;
    for setting in reader_settings {
        sqlx::query(*setting).execute(&mut *rtx).await?;
    }
    sqlx::raw_sql(WRITER_SETTINGS).execute(&mut **tx).await?;
    let (chunks_out, mut chunks_in) = tokio::sync::mpsc::channel::<Columns>(2);
    let read = async {
        let chunks_out = chunks_out;
        let mut query = sqlx::query_as::<_, SeriesWindow>(sqlx::AssertSqlSafe(windows));
        if let Some(since) = since {
            query = query.bind(since);
        }
        let mut rows = query.fetch(&mut *rtx);
        let (mut series, mut chunk) = (0u64, Columns::default());
        while let Some(window) = rows.try_next().await? {
            series += u64::from(chunk.push(window)?);
            if chunk.len() == CHUNK && chunks_out.send(std::mem::take(&mut chunk)).await.is_err() {
                // The writer stopped on an error, which it reports.
                return Ok(series);
            }
        }
        if chunk.len() > 0 {
            let _ = chunks_out.send(chunk).await;
        }
        Ok::<u64, TaskError>(series)
    };
    let write = async {
        let mut changed = 0u64;
        while let Some(chunk) = chunks_in.recv().await {
            changed += chunk.write(tx).await?;
        }
        Ok::<u64, TaskError>(changed)
    };
    let (series, changed) = tokio::try_join!(read, write)?;
    rtx.rollback().await?;
    Ok((series, changed))
}

/// A cursor in the writing transaction, read a chunk at a time.
async fn through_a_cursor(
    tx: &mut Transaction<'_, Postgres>,
    windows: &str,
    since: Option<DateTime<Utc>>,
) -> Result<(u64, u64), TaskError> {
    let declare = format!("DECLARE series_windows NO SCROLL CURSOR FOR {windows}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(declare));
    if let Some(since) = since {
        query = query.bind(since);
    }
    query.execute(&mut **tx).await?;
    sqlx::raw_sql(WRITER_SETTINGS).execute(&mut **tx).await?;
    let fetch = format!("FETCH {CHUNK} FROM series_windows");
    let (mut series, mut changed) = (0u64, 0u64);
    loop {
        let windows: Vec<SeriesWindow> = sqlx::query_as(sqlx::AssertSqlSafe(fetch.as_str()))
            .fetch_all(&mut **tx)
            .await?;
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
    sqlx::query("CLOSE series_windows")
        .execute(&mut **tx)
        .await?;
    Ok((series, changed))
}
