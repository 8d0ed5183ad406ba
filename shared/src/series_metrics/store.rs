//! Reading series' windows from Postgres and writing their metrics back, a chunk at a time.
//!
//! The task says which series to compute (a query that ends in a CTE `latest`); the windows are read with
//! [`WINDOWS`], computed with [`super::compute`] and written with `COPY`, each row with its window for the next
//! run ([`super::window`]): new series' rows straight into the table, recomputed ones into a temporary table
//! that each chunk's [`APPLY`] applies. When the pool can lend a second connection, reading, computing and
//! writing overlap: a reader on that connection, in a transaction that imports the writing transaction's
//! snapshot (so it sees exactly what a cursor in the writer would), streams the windows, each chunk is computed
//! on a blocking thread, and the writer writes the previous chunk. With a third connection, and rows to update,
//! a second writer in the same snapshot takes every chunk the first is not free for. Otherwise a cursor in the
//! writing transaction reads one chunk at a time.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::TaskError;
use crate::pg_copy::BinaryRows;
use crate::pg_numeric::PgDecimal;
use crate::pg_tid::PgTid;

use super::{window, Window};

/// From `latest` (the series to compute, with their latest day and the base of their point count), each
/// series' key and its window: the window stored with its metrics row as of `base_day` (`stored_window`, see
/// [`super::window`]) with the points of `base_day` and after (`new_days`, `new_prices`) when `latest` has
/// them; otherwise its last 61 days of points (`days`, `prices`, in index order), read only for those series.
/// The prices are read with their scale ([`PgDecimal`]): `0.00` must stay `0.00` in the metrics.
pub const WINDOWS: &str = r#"
SELECT l.scryfall_id, l.source, l.price_type, l.finish, l.currency, l.latest_day, l.base_day, l.base_points,
    l.row_tid, l.stored_window, l.new_days, l.new_prices, w.days, w.prices
FROM latest l
CROSS JOIN LATERAL (
    SELECT array_agg(p.day) AS days, array_agg(p.price) AS prices
    FROM (
        SELECT p.day, p.price FROM price_points p
        WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
            = (l.scryfall_id, l.source, l.price_type, l.finish, l.currency)
          AND p.day > l.latest_day - 61 AND l.stored_window IS NULL
        ORDER BY p.day
    ) p
) w"#;

/// The columns a chunk's `COPY` rows carry, in the order [`Chunk::push`] writes them (`computed_at` takes its
/// default).
macro_rules! metrics_columns {
    () => {
        "scryfall_id, source, price_type, finish, currency, latest_day, latest_price, change_1d, change_1d_pct, \
         change_7d, change_7d_pct, change_30d, change_30d_pct, ma_7d, ma_30d, volatility_30d, high_30d, low_30d, \
         points_30d, points, prior_high_30d, prior_points_30d, window_points"
    };
}

/// The series without a metrics row get theirs straight from `COPY`. A row that appeared since the read (only
/// another run could add one, and runs hold a lease) fails the copy on its key: the run fails, and its points
/// stay after the watermark for the next run.
const COPY_NEW: &str = concat!(
    "COPY price_metrics (",
    metrics_columns!(),
    ") FROM STDIN (FORMAT binary)"
);

/// The recomputed metrics of series that have a row are copied into a temporary table of the writing
/// transaction a chunk at a time, each with the place its row had in the run's snapshot (`row_tid`, read with
/// the window), and each chunk is applied by [`APPLY`] before the next one is copied, while the reader reads the
/// next chunks. One `UPDATE` of the whole run at the end hashed every row, after the last chunk was read: on the
/// v4 history it took 1.09 s after a 0.77 s read, where the chunks' updates took 0.89 s in all and overlap the
/// read.
const STAGE: &str = "CREATE TEMP TABLE price_metrics_recomputed (LIKE price_metrics INCLUDING DEFAULTS, row_tid tid) \
                     ON COMMIT DROP";

/// Empties the temporary table for the next chunk (a new file, so no dead rows are stepped over, and the
/// planner sizes the next [`APPLY`] to the chunk).
const UNSTAGE: &str = "TRUNCATE price_metrics_recomputed";

const COPY_RECOMPUTED: &str = concat!(
    "COPY price_metrics_recomputed (",
    metrics_columns!(),
    ", row_tid) FROM STDIN (FORMAT binary)"
);

/// Updates the rows whose values or window changed (a window can change without a metric: a repriced point
/// that no metric reads). A plain `UPDATE` leaves unchanged rows untouched, where an upsert's
/// `DO UPDATE ... WHERE` would still lock (and so write) each of them.
///
/// Each row is found at the place the run's snapshot saw it (a TID scan), not by a probe of the five-column
/// primary key: on the v4 history the chunks' probes cost 0.97-1.20 s against 0.77-0.91 s by place, and the
/// rewrite of every row alone 0.86 s ([`crate::pg_tid`] says why a place read in the run's snapshot is safe
/// under `REPEATABLE READ`). The key is compared as well, so that a place can never update another series.
const APPLY: &str = r#"
UPDATE price_metrics m SET
    latest_day = c.latest_day, latest_price = c.latest_price,
    change_1d = c.change_1d, change_1d_pct = c.change_1d_pct,
    change_7d = c.change_7d, change_7d_pct = c.change_7d_pct,
    change_30d = c.change_30d, change_30d_pct = c.change_30d_pct,
    ma_7d = c.ma_7d, ma_30d = c.ma_30d, volatility_30d = c.volatility_30d,
    high_30d = c.high_30d, low_30d = c.low_30d, points_30d = c.points_30d, points = c.points,
    prior_high_30d = c.prior_high_30d, prior_points_30d = c.prior_points_30d, window_points = c.window_points,
    computed_at = now()
FROM price_metrics_recomputed c
WHERE m.ctid = c.row_tid
  AND (m.scryfall_id, m.source, m.price_type, m.finish, m.currency)
    = (c.scryfall_id, c.source, c.price_type, c.finish, c.currency)
  AND (m.latest_day, m.latest_price, m.change_1d, m.change_7d, m.change_30d, m.ma_7d, m.ma_30d,
       m.volatility_30d, m.high_30d, m.low_30d, m.points_30d, m.points, m.prior_high_30d, m.prior_points_30d,
       m.window_points)
      IS DISTINCT FROM
      (c.latest_day, c.latest_price, c.change_1d, c.change_7d, c.change_30d, c.ma_7d, c.ma_30d,
       c.volatility_30d, c.high_30d, c.low_30d, c.points_30d, c.points, c.prior_high_30d, c.prior_points_30d,
       c.window_points)"#;

/// One series of the windows' cursor: its key, latest day, the base of its point count, and its window.
#[derive(sqlx::FromRow)]
struct SeriesWindow {
    scryfall_id: Uuid,
    source: String,
    price_type: String,
    finish: String,
    currency: String,
    latest_day: NaiveDate,
    /// The series' point count up to `base_day`: the points after it are counted from its window.
    base_day: NaiveDate,
    base_points: i64,
    /// Where the series' metrics row is in the run's snapshot; `None` when it has no row yet.
    row_tid: Option<PgTid>,
    stored_window: Option<Vec<u8>>,
    new_days: Option<Vec<NaiveDate>>,
    new_prices: Option<Vec<PgDecimal>>,
    days: Option<Vec<NaiveDate>>,
    prices: Option<Vec<PgDecimal>>,
}

/// A chunk of computed metrics as binary `COPY` rows: those of series without a metrics row, and the others.
#[derive(Default)]
struct Chunk {
    new: BinaryRows,
    recomputed: BinaryRows,
}

impl Chunk {
    /// Computes one series' metrics into the chunk; false when its window holds nothing to compute.
    fn push(&mut self, mut w: SeriesWindow) -> Result<bool, TaskError> {
        let key = || {
            format!(
                "{} {}/{}/{}/{}",
                w.scryfall_id, w.source, w.price_type, w.finish, w.currency
            )
        };
        // One window, however its points were gathered: the stored one with the new points laid over it, or
        // the points read; either way it ends on the series' latest day and holds only that window's points.
        let window = match w.stored_window.take() {
            Some(stored) => {
                let (mut days, mut prices) =
                    window::decode(w.base_day, &stored).map_err(|window::Corrupt(why)| {
                        TaskError::permanent(
                            "metrics_window_corrupt",
                            format!(
                                "series {}: its stored window cannot be read ({why}); a full run \
                                 (kwargs {{\"full\": true}}) rewrites every window from the points",
                                key()
                            ),
                        )
                    })?;
                let new_days = w.new_days.take().unwrap_or_default();
                let new_prices = w.new_prices.take().unwrap_or_default();
                let new_points = new_days
                    .into_iter()
                    .zip(new_prices.into_iter().map(|p| p.0));
                window::lay_over(&mut days, &mut prices, new_points);
                Window::ending(w.latest_day, days, prices)
            }
            None => {
                let days = w.days.take().unwrap_or_default();
                let prices = w.prices.take().unwrap_or_default();
                Window::ending(
                    w.latest_day,
                    days,
                    prices.into_iter().map(|p| p.0).collect(),
                )
            }
        };
        let metrics = super::compute(&window).map_err(|_| {
            TaskError::permanent(
                "metrics_overflow",
                format!("series {}: a metric is out of decimal range", key()),
            )
        })?;
        let Some(m) = metrics else {
            return Ok(false);
        };
        // `latest` hands over a window from a stored one only when every new point lies in it.
        let after_base = window
            .days()
            .iter()
            .filter(|&&day| day > w.base_day)
            .count() as i64;
        let points = i32::try_from(w.base_points + after_base).map_err(|_| {
            TaskError::permanent(
                "metrics_overflow",
                format!("series {}: more points than a metrics row holds", key()),
            )
        })?;
        // Decimals keep their scale (`0.00` stays `0.00`).
        let out = if w.row_tid.is_some() {
            &mut self.recomputed
        } else {
            &mut self.new
        };
        out.field(w.scryfall_id)
            .field(&w.source)
            .field(&w.price_type)
            .field(&w.finish)
            .field(&w.currency)
            .field(m.latest_day)
            .field(m.latest_price)
            .optional(m.change_1d)
            .optional(m.change_1d_pct)
            .optional(m.change_7d)
            .optional(m.change_7d_pct)
            .optional(m.change_30d)
            .optional(m.change_30d_pct)
            .optional(m.ma_7d)
            .optional(m.ma_30d)
            .optional(m.volatility_30d)
            .field(m.high_30d)
            .field(m.low_30d)
            .field(m.points_30d)
            .field(points)
            .optional(m.prior_high_30d)
            .field(m.prior_points_30d)
            .field(window::encode(&window).as_slice());
        if let Some(tid) = w.row_tid {
            out.field(tid);
        }
        out.end_row();
        Ok(true)
    }

    /// Computes a batch of windows into a chunk; returns it with how many series had metrics.
    fn compute(windows: Vec<SeriesWindow>) -> Result<(u64, Chunk), TaskError> {
        let (mut series, mut chunk) = (0u64, Chunk::default());
        for window in windows {
            series += u64::from(chunk.push(window)?);
        }
        Ok((series, chunk))
    }
}

/// A chunk being computed on a blocking thread.
type Computing = tokio::task::JoinHandle<Result<(u64, Chunk), TaskError>>;

/// Writes the chunks of one run in the writing transaction: the new rows by `COPY`, the recomputed ones through
/// the temporary table.
#[derive(Default)]
struct Writer {
    /// Rows inserted or changed.
    changed: u64,
    staged: bool,
}

impl Writer {
    async fn write(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        chunk: Chunk,
    ) -> Result<(), TaskError> {
        if chunk.new.rows() > 0 {
            self.changed += chunk.new.send(tx, COPY_NEW).await?;
        }
        if chunk.recomputed.rows() > 0 {
            let stage = if self.staged { UNSTAGE } else { STAGE };
            sqlx::query(stage).execute(&mut **tx).await?;
            self.staged = true;
            chunk.recomputed.send(tx, COPY_RECOMPUTED).await?;
            self.changed += sqlx::query(APPLY).execute(&mut **tx).await?.rows_affected();
        }
        Ok(())
    }

    /// Drops the temporary table; returns how many rows were inserted or changed.
    async fn finish(self, tx: &mut Transaction<'_, Postgres>) -> Result<u64, TaskError> {
        if self.staged {
            sqlx::query("DROP TABLE price_metrics_recomputed")
                .execute(&mut **tx)
                .await?;
        }
        Ok(self.changed)
    }
}

/// Computes and writes the metrics of the series that `latest` (SQL ending in a CTE `latest`, with `$1` the
/// watermark when given) selects, `chunk` series at a time; returns how many series were computed and how many
/// rows changed.
pub async fn compute_and_write(
    pool: &PgPool,
    tx: &mut Transaction<'_, Postgres>,
    latest: &str,
    since: Option<DateTime<Utc>>,
    chunk: usize,
) -> Result<(u64, u64), TaskError> {
    let windows = format!("{latest}{WINDOWS}");
    let chunk = chunk.max(1);
    let empty = is_empty(tx).await?;
    // A second writer only where there are rows to update: into an empty table both would `COPY` new rows, and
    // on the v4 history a full run took 2.24-2.71 s with two against 2.07-2.36 s with one. Both connections are
    // taken at once, as either may have to be opened.
    let (reader, helper) = tokio::join!(spare_connection(pool, 2), async {
        if empty {
            None
        } else {
            spare_connection(pool, 3).await
        }
    });
    match reader {
        Some(reader) => pipelined(tx, reader, helper, &windows, since, chunk, empty).await,
        None => through_a_cursor(tx, &windows, since, chunk, empty).await,
    }
}

/// One more connection, if the pool holds at least `needed` and can lend one soon: with one connection the
/// cursor does the reading, with two one transaction does the writing.
async fn spare_connection(pool: &PgPool, needed: u32) -> Option<PoolConnection<Postgres>> {
    if pool.options().get_max_connections() < needed {
        return None;
    }
    tokio::time::timeout(Duration::from_secs(2), pool.acquire())
        .await
        .ok()?
        .ok()
}

/// The computed chunks, taken by whichever writer is free first.
type Queue = tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Computing>>;

/// Writes the chunks it takes from `queue` until the reader is done; returns how many series they held.
async fn drain(
    tx: &mut Transaction<'_, Postgres>,
    writer: &mut Writer,
    queue: &Queue,
) -> Result<u64, TaskError> {
    let mut series = 0u64;
    loop {
        let next = queue.lock().await.recv().await;
        let Some(computing) = next else {
            return Ok(series);
        };
        let (computed, chunk) = computing.await.map_err(|e| {
            TaskError::permanent(
                crate::error::class::TASK_FAILED,
                format!("computing a chunk of series metrics failed: {e}"),
            )
        })??;
        series += computed;
        writer.write(tx, chunk).await?;
    }
}

/// The reader streams the windows on its own connection, in the writer's snapshot, and hands over computed
/// chunks (at most two waiting) while the writer writes.
///
/// The reader is a task of its own, so that decoding a chunk's rows runs beside the writer's statements on
/// another thread: polled in the writer's task, it held up the next chunk's `COPY` while it decoded.
///
/// With a `helper` connection, a second writer in the same snapshot takes whichever chunk is ready when it is
/// free, so that the writing, which is what a run waits for, runs on two backends. Its transaction commits
/// once every chunk is read and written, just before the run's own (which moves the watermark). Should the
/// run's commit then fail, the helper's series keep metrics that are right for the points they were read from,
/// and the retry, which reads from the old watermark, computes the same rows again (`tests/it/metrics_reference.rs`).
async fn pipelined(
    tx: &mut Transaction<'_, Postgres>,
    reader: PoolConnection<Postgres>,
    mut helper: Option<PoolConnection<Postgres>>,
    windows: &str,
    since: Option<DateTime<Utc>>,
    chunk: usize,
    empty: bool,
) -> Result<(u64, u64), TaskError> {
    let (snapshot,): (String,) = sqlx::query_as("SELECT pg_export_snapshot()")
        .fetch_one(&mut **tx)
        .await?;
    let mut htx = match helper.as_mut() {
        Some(conn) => {
            Some(in_snapshot(conn, &snapshot, "BEGIN ISOLATION LEVEL REPEATABLE READ").await?)
        }
        None => None,
    };
    let (computing_out, computing_in) = tokio::sync::mpsc::channel::<Computing>(2);
    let queue = Queue::new(computing_in);
    let reading = tokio::spawn(read_windows(
        reader,
        snapshot,
        windows.to_owned(),
        since,
        chunk,
        empty,
        computing_out,
    ));
    let (mut writer, mut helper_writer) = (Writer::default(), Writer::default());
    let drained = match htx.as_mut() {
        None => drain(tx, &mut writer, &queue).await,
        Some(htx) => tokio::try_join!(
            drain(tx, &mut writer, &queue),
            drain(htx, &mut helper_writer, &queue)
        )
        .map(|(series, helper_series)| series + helper_series),
    };
    if drained.is_err() {
        // The reader may be waiting on Postgres rather than on the writers: it is not needed any more.
        reading.abort();
    }
    let read = reading.await;
    let series = drained?;
    // The writers ran out of chunks: the reader finished, or it failed, which fails the run (and rolls the
    // helper back with it).
    read.map_err(|e| {
        TaskError::permanent(
            crate::error::class::TASK_FAILED,
            format!("reading the series' windows failed: {e}"),
        )
    })??;
    let mut changed = writer.finish(tx).await?;
    if let Some(mut htx) = htx {
        changed += helper_writer.finish(&mut htx).await?;
        htx.commit().await?;
    }
    Ok((series, changed))
}

/// Begins a transaction on `conn` (`begin`: its isolation level and access) in the exported `snapshot`, with the
/// analytics session settings.
async fn in_snapshot<'c>(
    conn: &'c mut PoolConnection<Postgres>,
    snapshot: &str,
    begin: &'static str,
) -> Result<Transaction<'c, Postgres>, TaskError> {
    let mut tx = conn.begin_with(begin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET TRANSACTION SNAPSHOT '{snapshot}'"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(crate::analytics::SESSION)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Streams the windows in the writing transaction's snapshot on the reader's connection, and starts computing
/// each chunk on a blocking thread as soon as it is read.
async fn read_windows(
    mut reader: PoolConnection<Postgres>,
    snapshot: String,
    windows: String,
    since: Option<DateTime<Utc>>,
    chunk: usize,
    empty: bool,
    computing_out: tokio::sync::mpsc::Sender<Computing>,
) -> Result<(), TaskError> {
    let mut rtx = in_snapshot(
        &mut reader,
        &snapshot,
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await?;
    // The writer waits for the first chunk, and a hash join returns nothing before it has taken in its whole
    // inner side: planned without one, the series are matched with their metrics rows in key order and stream
    // out from the start (see `compute_price_metrics`' `INCREMENTAL`).
    sqlx::query("SET LOCAL enable_hashjoin = off")
        .execute(&mut *rtx)
        .await?;
    if empty {
        plan_for_a_table_being_filled(&mut rtx).await?;
    }
    {
        let mut query = sqlx::query_as::<_, SeriesWindow>(sqlx::AssertSqlSafe(windows.as_str()));
        if let Some(since) = since {
            query = query.bind(since);
        }
        let mut rows = query.fetch(&mut *rtx);
        let mut batch = Vec::with_capacity(chunk);
        loop {
            let next = rows.try_next().await?;
            let end = next.is_none();
            batch.extend(next);
            if batch.len() == chunk || (end && !batch.is_empty()) {
                let windows = std::mem::replace(&mut batch, Vec::with_capacity(chunk));
                // Computed on a blocking thread while this task reads the next chunk and the writer copies the
                // previous one.
                let computing = tokio::task::spawn_blocking(move || Chunk::compute(windows));
                if computing_out.send(computing).await.is_err() {
                    // The writer stopped on an error, which it reports.
                    break;
                }
            }
            if end {
                break;
            }
        }
    }
    rtx.rollback().await?;
    Ok(())
}

/// Keeps the windows' plan from scanning `price_metrics` once per series when the table is empty in the run's
/// snapshot (emptied to be computed afresh, say, and analysed since). The planner takes it for a table without
/// pages and scans it for every series it joins, but this run's writer fills it while the windows are read:
/// each scan then steps over every row written so far (invisible to the snapshot, still read), and the read
/// grows with the square of the series. A full run of the generated 100,000 series read for more than eight
/// minutes instead of about 12 s. Without sequential scans the series meet the metrics rows by primary key, and
/// the new points are found by their arrival index.
async fn plan_for_a_table_being_filled(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<(), TaskError> {
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether `price_metrics` has no row in the run's snapshot.
async fn is_empty(tx: &mut Transaction<'_, Postgres>) -> Result<bool, TaskError> {
    Ok(
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT FROM price_metrics)")
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// A cursor in the writing transaction, read a chunk at a time.
async fn through_a_cursor(
    tx: &mut Transaction<'_, Postgres>,
    windows: &str,
    since: Option<DateTime<Utc>>,
    chunk: usize,
    empty: bool,
) -> Result<(u64, u64), TaskError> {
    let declare = format!("DECLARE series_windows NO SCROLL CURSOR FOR {windows}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(declare));
    if let Some(since) = since {
        query = query.bind(since);
    }
    if empty {
        plan_for_a_table_being_filled(tx).await?;
    }
    query.execute(&mut **tx).await?;
    // The cursor's plan is made; the writer's own statements plan as usual.
    sqlx::query("SET LOCAL enable_seqscan TO DEFAULT")
        .execute(&mut **tx)
        .await?;
    let fetch = format!("FETCH {chunk} FROM series_windows");
    let (mut series, mut writer) = (0u64, Writer::default());
    loop {
        let windows: Vec<SeriesWindow> = sqlx::query_as(sqlx::AssertSqlSafe(fetch.as_str()))
            .fetch_all(&mut **tx)
            .await?;
        let last = windows.len() < chunk;
        let (computed, chunk) = Chunk::compute(windows)?;
        series += computed;
        writer.write(tx, chunk).await?;
        if last {
            break;
        }
    }
    sqlx::query("CLOSE series_windows")
        .execute(&mut **tx)
        .await?;
    Ok((series, writer.finish(tx).await?))
}
