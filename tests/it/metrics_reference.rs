//! Every metrics row against a reference: the metric definitions of `docs/data.md` written as one plain SQL
//! query over all of `price_points` (Postgres' own `numeric` arithmetic, window functions, no incremental
//! bookkeeping). The function computes the metrics itself, a series at a time and incrementally from the windows
//! it stores; after a full run and after incremental ones over daily points, backfills, repricings and a prune,
//! every row must read the same.
//! The full run goes through a function with one database connection (a cursor reads the windows), the
//! first incremental one through a function with two (a reader on the second connection streams them), and the
//! runs after it through a function with three (two writers share the chunks); all write in chunks of under a
//! hundred series, so every run copies and applies many chunks.

use serde_json::{json, Value};

use crate::analytics::functions_with_v4_history;
use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use integration_tests::{FixtureServer, TestStack};

/// The definitions, over every series: the latest day and price; the change against the latest point at least
/// N and at most 2N days before the latest day, and its percentage of that point (2 places); the 7- and 30-day
/// averages (4 places); the sample standard deviation of the log returns between consecutive points of the
/// last 61 days whose return ends in the last 30; the 30-day high, low and count; the high and count of the 30
/// days before the latest day; all points.
const REFERENCE: &str = r#"
CREATE TEMP TABLE reference AS
WITH series AS (
    SELECT p.*, max(p.day) OVER s AS latest_day, count(*) OVER s AS points
    FROM price_points p
    WINDOW s AS (PARTITION BY p.scryfall_id, p.source, p.price_type, p.finish, p.currency)
),
recent AS (
    SELECT s.*, lag(s.price) OVER (PARTITION BY s.scryfall_id, s.source, s.price_type, s.finish, s.currency
                                   ORDER BY s.day) AS previous
    FROM series s
    WHERE s.day > s.latest_day - 61
),
picked AS (
    SELECT scryfall_id, source, price_type, finish, currency, latest_day, points,
        max(price) FILTER (WHERE day = latest_day) AS latest_price,
        (array_agg(price ORDER BY day DESC) FILTER (WHERE day BETWEEN latest_day - 2 AND latest_day - 1))[1] AS r1,
        (array_agg(price ORDER BY day DESC) FILTER (WHERE day BETWEEN latest_day - 14 AND latest_day - 7))[1] AS r7,
        (array_agg(price ORDER BY day DESC) FILTER (WHERE day BETWEEN latest_day - 60 AND latest_day - 30))[1] AS r30,
        round(avg(price) FILTER (WHERE day > latest_day - 7), 4) AS ma_7d,
        round(avg(price) FILTER (WHERE day > latest_day - 30), 4) AS ma_30d,
        stddev_samp(ln(price::float8 / previous::float8))
            FILTER (WHERE day > latest_day - 30 AND previous > 0 AND price > 0) AS volatility_30d,
        max(price) FILTER (WHERE day > latest_day - 30) AS high_30d,
        min(price) FILTER (WHERE day > latest_day - 30) AS low_30d,
        count(*) FILTER (WHERE day > latest_day - 30) AS points_30d,
        max(price) FILTER (WHERE day BETWEEN latest_day - 30 AND latest_day - 1) AS prior_high_30d,
        count(*) FILTER (WHERE day BETWEEN latest_day - 30 AND latest_day - 1) AS prior_points_30d
    FROM recent
    GROUP BY scryfall_id, source, price_type, finish, currency, latest_day, points
)
SELECT scryfall_id, source, price_type, finish, currency, latest_day, latest_price,
    latest_price - r1 AS change_1d, round((latest_price - r1) / NULLIF(r1, 0) * 100, 2) AS change_1d_pct,
    latest_price - r7 AS change_7d, round((latest_price - r7) / NULLIF(r7, 0) * 100, 2) AS change_7d_pct,
    latest_price - r30 AS change_30d, round((latest_price - r30) / NULLIF(r30, 0) * 100, 2) AS change_30d_pct,
    ma_7d, ma_30d, volatility_30d, high_30d, low_30d, points_30d, points, prior_high_30d, prior_points_30d
FROM picked
"#;

/// The rows where the function's metrics and the reference differ: a row on one side only, a decimal whose
/// text differs (value or places), a count, or a volatility further apart than float rounding.
const DIFFERENCES: &str = r#"
SELECT coalesce(r.scryfall_id, m.scryfall_id)::text || ' ' || coalesce(r.source, m.source) || '/'
       || coalesce(r.price_type, m.price_type) || '/' || coalesce(r.finish, m.finish) || '/'
       || coalesce(r.currency, m.currency) || ': reference ' || coalesce(row_to_json(r)::text, 'none')
       || ', function ' || coalesce(row_to_json(m)::text, 'none')
FROM reference r
FULL JOIN (SELECT scryfall_id, source, price_type, finish, currency, latest_day, latest_price, change_1d,
                  change_1d_pct, change_7d, change_7d_pct, change_30d, change_30d_pct, ma_7d, ma_30d,
                  volatility_30d, high_30d, low_30d, points_30d, points, prior_high_30d, prior_points_30d
           FROM price_metrics WHERE $1 OR window_points IS NOT NULL) m
    USING (scryfall_id, source, price_type, finish, currency)
WHERE r.scryfall_id IS NULL OR m.scryfall_id IS NULL
   OR (r.latest_day, r.latest_price::text, r.change_1d::text, r.change_1d_pct::text, r.change_7d::text,
       r.change_7d_pct::text, r.change_30d::text, r.change_30d_pct::text, r.ma_7d::text, r.ma_30d::text,
       r.high_30d::text, r.low_30d::text, r.points_30d, r.points, r.prior_high_30d::text, r.prior_points_30d)
      IS DISTINCT FROM
      (m.latest_day, m.latest_price::text, m.change_1d::text, m.change_1d_pct::text, m.change_7d::text,
       m.change_7d_pct::text, m.change_30d::text, m.change_30d_pct::text, m.ma_7d::text, m.ma_30d::text,
       m.high_30d::text, m.low_30d::text, m.points_30d, m.points, m.prior_high_30d::text, m.prior_points_30d)
   OR (r.volatility_30d IS NULL) <> (m.volatility_30d IS NULL)
   OR abs(r.volatility_30d - m.volatility_30d) > 1e-12 * greatest(1, abs(r.volatility_30d))
LIMIT 5
"#;

/// A metrics run's report.
async fn run(function: &LocalFunction, kwargs: Value) -> Value {
    invoke(function, "compute_price_metrics", kwargs).await
}

/// Invokes `task` directly and returns its report.
async fn invoke(function: &LocalFunction, task: &str, kwargs: Value) -> Value {
    match function
        .invoke(json!({"task": task, "kwargs": kwargs}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Response(report)) => report,
        other => panic!("{task}: {other:?}"),
    }
}

/// The rows that differ from the reference, recomputed from the points as they are now.
async fn differences(stack: &TestStack) -> (i64, Vec<String>) {
    compared(stack, true).await
}

/// The same, among the series whose metrics row keeps its stored window (all of them when `all`).
async fn compared(stack: &TestStack, all: bool) -> (i64, Vec<String>) {
    let mut conn = stack.pool.acquire().await.unwrap();
    sqlx::query("DROP TABLE IF EXISTS reference")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(REFERENCE).execute(&mut *conn).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM reference")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    if !all {
        sqlx::query(
            "DELETE FROM reference r USING price_metrics m \
             WHERE (m.scryfall_id, m.source, m.price_type, m.finish, m.currency) \
                 = (r.scryfall_id, r.source, r.price_type, r.finish, r.currency) AND m.window_points IS NULL",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let differ = sqlx::query_scalar(DIFFERENCES)
        .bind(all)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::query("DROP TABLE reference")
        .execute(&mut *conn)
        .await
        .unwrap();
    // A backend reports its table counts at most once a second while it lives; the scans made here are
    // reported now, so that a count of the functions' scans taken next does not take them for the functions'.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    (rows, differ)
}

/// A stack with the bundled v4 history ingested by the real ingestion function, the server that holds it, and
/// the analytics function.
async fn stack_with_v4_history() -> (TestStack, FixtureServer, LocalFunction) {
    let stack = TestStack::start().await.unwrap();
    let (server, ingestion, analytics) = functions_with_v4_history(&stack).await;
    let ingested = invoke(
        &ingestion,
        "ingest_mtgjson_prices",
        json!({"file": "v4_history", "path": "v4.json"}),
    )
    .await;
    assert_eq!(ingested["status"], "succeeded", "{ingested}");
    (stack, server, analytics)
}

#[tokio::test]
async fn every_metrics_row_matches_the_sql_definitions_after_full_and_incremental_runs() {
    let (stack, _server, _) = stack_with_v4_history().await;

    let one_connection = stack
        .function(
            Queue::Analytics,
            &[
                ("DD_DB_MAX_CONNECTIONS", "1"),
                ("DD_METRICS_CHUNK_SERIES", "97"),
            ],
        )
        .await
        .unwrap();
    let full = run(&one_connection, json!({"full": true})).await;
    assert_eq!(full["status"], "succeeded", "{full}");
    let (rows, differ) = differences(&stack).await;
    assert!(rows > 500, "the weekly history has {rows} series");
    assert_eq!(full["detail"]["series"], rows, "{full}");
    assert!(differ.is_empty(), "after the full run: {differ:#?}");

    // Then a month of daily points for a third of the series (1-day changes, daily averages and returns;
    // prices moving up to 10 % a day, some to zero and back), a point backfilled inside the window of every
    // seventh (not the daily case: recounted), and the latest day repriced on every eleventh.
    let changes = [
        "WITH s AS (SELECT scryfall_id, source, price_type, finish, currency, max(day) AS latest, \
                (array_agg(price ORDER BY day DESC))[1] AS price, \
                row_number() OVER (ORDER BY scryfall_id, source, price_type, finish, currency) AS n \
             FROM price_points GROUP BY 1, 2, 3, 4, 5) \
         INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT scryfall_id, source, price_type, finish, currency, latest + d, \
             CASE WHEN (n + d) % 17 = 0 THEN 0.00 \
                  ELSE round(price * (1 + ((abs(hashint8(n * 100 + d)) % 21) - 10) / 100.0 * d / 10), 2) END \
         FROM s, generate_series(1, 35) d WHERE n % 3 = 0",
        "WITH s AS (SELECT scryfall_id, source, price_type, finish, currency, max(day) AS latest, \
                row_number() OVER (ORDER BY scryfall_id, source, price_type, finish, currency) AS n \
             FROM price_points GROUP BY 1, 2, 3, 4, 5) \
         INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT scryfall_id, source, price_type, finish, currency, latest - 3, 1.23 + n % 5 \
         FROM s WHERE n % 7 = 0 ON CONFLICT DO NOTHING",
        "WITH s AS (SELECT scryfall_id, source, price_type, finish, currency, max(day) AS latest, \
                row_number() OVER (ORDER BY scryfall_id, source, price_type, finish, currency) AS n \
             FROM price_points GROUP BY 1, 2, 3, 4, 5) \
         UPDATE price_points p SET price = p.price + 0.05, recorded_at = now() FROM s \
         WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency, p.day) \
             = (s.scryfall_id, s.source, s.price_type, s.finish, s.currency, s.latest) AND s.n % 11 = 0",
    ];
    let before: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    for change in changes {
        sqlx::query(change).execute(&stack.pool).await.unwrap();
    }
    let touched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT scryfall_id, source, price_type, finish, currency \
         FROM price_points WHERE recorded_at >= $1) s",
    )
    .bind(before)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    let analytics = stack
        .function(Queue::Analytics, &[("DD_METRICS_CHUNK_SERIES", "89")])
        .await
        .unwrap();
    let incremental = run(&analytics, json!({})).await;
    assert_eq!(incremental["status"], "succeeded", "{incremental}");
    assert_eq!(incremental["detail"]["full"], false, "{incremental}");
    assert_eq!(incremental["detail"]["series"], touched, "{incremental}");
    let (rows_after, differ) = differences(&stack).await;
    assert_eq!(rows_after, rows);
    assert!(differ.is_empty(), "after the incremental run: {differ:#?}");
    let with_1d_change: i64 =
        sqlx::query_scalar("SELECT count(*) FROM price_metrics WHERE change_1d IS NOT NULL")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert!(
        with_1d_change > 100,
        "{with_1d_change} series have a 1-day change"
    );

    // The next day's run builds every third series' window from the window the last run stored and the new
    // point (the latest day repriced on every fifth of those).
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM price_metrics WHERE window_points IS NOT NULL")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(stored, rows, "every row keeps its window");
    let analytics = with_two_writers(&stack).await;
    next_day(&stack, 3).await;
    sqlx::query(
        "UPDATE price_points p SET price = p.price * 2, recorded_at = now() FROM price_metrics m \
         WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency, p.day) \
             = (m.scryfall_id, m.source, m.price_type, m.finish, m.currency, m.latest_day) \
           AND abs(hashtext(m.scryfall_id::text || m.source || m.finish)) % 5 = 0",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    let next = run(&analytics, json!({})).await;
    assert_eq!(next["status"], "succeeded", "{next}");
    let (_, differ) = differences(&stack).await;
    assert!(differ.is_empty(), "after the next day: {differ:#?}");

    // A prune rolls the history up to one point a week (the fixture's days are years old). Its deletion takes
    // the deleted points off each row's count and drops the stored windows that held a deleted day: every row
    // that keeps its window still matches the reference, and the runs after it read what is left.
    let default = stack.function(Queue::Default, &[]).await.unwrap();
    let pruned = invoke(&default, "prune_price_history", json!({"keep_days": 61})).await;
    assert_eq!(pruned["status"], "succeeded", "{pruned}");
    assert!(
        pruned["detail"]["deleted"].as_u64().unwrap() > 1000,
        "{pruned}"
    );
    let dropped: i64 =
        sqlx::query_scalar("SELECT count(*) FROM price_metrics WHERE window_points IS NULL")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert!(dropped > 100, "{dropped} windows held a pruned day");
    let (_, differ) = compared(&stack, false).await;
    assert!(
        differ.is_empty(),
        "rows that kept their window: {differ:#?}"
    );
    // With no new point at all, the next run recomputes exactly the series whose window the prune reached,
    // from the points that are left.
    let after_prune = run(&analytics, json!({})).await;
    assert_eq!(after_prune["status"], "succeeded", "{after_prune}");
    assert_eq!(after_prune["detail"]["series"], dropped, "{after_prune}");
    let (_, differ) = differences(&stack).await;
    assert!(differ.is_empty(), "the run after the prune: {differ:#?}");
    for every in [1, 3] {
        next_day(&stack, every).await;
        let started = database_clock(&stack).await;
        let after_prune = run(&analytics, json!({})).await;
        assert_eq!(after_prune["status"], "succeeded", "{after_prune}");
        let (_, differ) = differences(&stack).await;
        assert!(
            differ.is_empty(),
            "a day for every {every} series after the prune: {differ:#?}"
        );
        if every == 1 {
            assert_eq!(
                writing_transactions(&stack, started).await,
                2,
                "the chunks of a day for every series are written by two transactions"
            );
        }
    }
}

/// The analytics function with three connections (a reader and two writers), writing 89 series at a time.
async fn with_two_writers(stack: &TestStack) -> LocalFunction {
    stack
        .function(
            Queue::Analytics,
            &[
                ("DD_DB_MAX_CONNECTIONS", "3"),
                ("DD_METRICS_CHUNK_SERIES", "89"),
            ],
        )
        .await
        .unwrap()
}

/// The database's clock now.
async fn database_clock(stack: &TestStack) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

/// How many transactions wrote the metrics rows computed after `since`: Postgres' own record of each row's
/// writer (`xmin`).
async fn writing_transactions(stack: &TestStack, since: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM price_metrics WHERE computed_at > $1",
    )
    .bind(since)
    .fetch_one(&stack.pool)
    .await
    .unwrap()
}

/// One more day for every `every`-th series, a few percent from its latest price.
async fn next_day(stack: &TestStack, every: i64) {
    sqlx::query(
        "WITH s AS (SELECT scryfall_id, source, price_type, finish, currency, latest_day, latest_price, \
                row_number() OVER (ORDER BY scryfall_id, source, price_type, finish, currency) AS n \
             FROM price_metrics) \
         INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT scryfall_id, source, price_type, finish, currency, latest_day + 1, \
             round(latest_price * (0.97 + (abs(hashint8(n)) % 7) / 100.0), 2) \
         FROM s WHERE n % $1 = 0",
    )
    .bind(every)
    .execute(&stack.pool)
    .await
    .unwrap();
}

/// Prices and metrics are read as binary `numeric` ([`dualcaster::pg_numeric::PgDecimal`]): every value, with
/// every number of places up to 12, from 12 digits before the point to 12 after, signed, zeros and trailing
/// zeros included, must read as Postgres itself prints it.
#[tokio::test]
async fn binary_numerics_read_as_postgres_prints_them() {
    use dualcaster::pg_numeric::PgDecimal;
    let stack = TestStack::start().await.unwrap();
    let values: Vec<(Vec<PgDecimal>, Vec<String>)> = sqlx::query_as(
        "WITH v AS ( \
             SELECT round((hashint8(i) % 1000000000000)::numeric / 10::numeric ^ (i % 25), i % 13) \
                 * CASE WHEN i % 3 = 0 THEN -1 ELSE 1 END AS n \
             FROM generate_series(1, 5000) i \
             UNION ALL SELECT x::numeric FROM unnest(ARRAY['0', '0.00', '-0.000', '10000', '10000.0000', \
                 '0.0001', '99999999.99999999', '123456789012345678901234567.8']) x \
         ) \
         SELECT array_agg(n), array_agg(n::text) FROM v",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let (binary, text) = &values[0];
    assert_eq!(binary.len(), 5008);
    let zero_places = binary
        .iter()
        .filter(|d| d.0.is_zero() && d.0.scale() > 0)
        .count();
    assert!(zero_places >= 2, "zeros with places: {zero_places}");
    for (read, printed) in binary.iter().zip(text) {
        assert_eq!(read.0.to_string(), *printed);
    }
}

/// The metrics run finds each row it rewrites at the place its snapshot read it ([`dualcaster::pg_tid`]), in a
/// `REPEATABLE READ` transaction. Postgres is the oracle for both premises: every place reads as Postgres prints
/// it, and a row changed by another transaction after the snapshot fails the update with a serialization
/// failure (retried as transient) where `READ COMMITTED` would miss it without a word.
#[tokio::test]
async fn a_row_changed_since_the_snapshot_fails_an_update_by_place_instead_of_being_missed() {
    use dualcaster::error::{ErrorKind, TaskError};
    use dualcaster::pg_tid::PgTid;
    let stack = TestStack::start().await.unwrap();
    let pool = &stack.pool;
    sqlx::raw_sql(
        "CREATE TABLE places (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO places SELECT i, 0 FROM generate_series(1, 3000) i; \
         UPDATE places SET v = 1 WHERE id % 7 = 0",
    )
    .execute(pool)
    .await
    .unwrap();
    let places: Vec<(PgTid, String)> = sqlx::query_as("SELECT ctid, ctid::text FROM places")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(places.len(), 3000);
    assert!(places.iter().any(|(tid, _)| tid.block > 0));
    for (tid, printed) in &places {
        assert_eq!(format!("({},{})", tid.block, tid.offset), *printed);
    }

    for (isolation, begin) in [
        ("REPEATABLE READ", "BEGIN ISOLATION LEVEL REPEATABLE READ"),
        ("READ COMMITTED", "BEGIN ISOLATION LEVEL READ COMMITTED"),
    ] {
        let mut run = pool.begin_with(begin).await.unwrap();
        let place: String = sqlx::query_scalar("SELECT ctid::text FROM places WHERE id = 42")
            .fetch_one(&mut *run)
            .await
            .unwrap();
        sqlx::query("UPDATE places SET v = v + 10 WHERE id = 42")
            .execute(pool)
            .await
            .unwrap();
        let update = sqlx::query("UPDATE places SET v = -1 WHERE ctid = $1::tid AND id = 42")
            .bind(&place)
            .execute(&mut *run)
            .await;
        match isolation {
            "REPEATABLE READ" => {
                let err = update.expect_err("an update of a row changed since the snapshot");
                let code = err
                    .as_database_error()
                    .and_then(|e| e.code())
                    .map(|c| c.into_owned());
                assert_eq!(code.as_deref(), Some("40001"), "{err}");
                assert_eq!(TaskError::from(err).kind(), ErrorKind::Retryable);
            }
            _ => assert_eq!(update.unwrap().rows_affected(), 0),
        }
        run.rollback().await.unwrap();
    }
    let v: i32 = sqlx::query_scalar("SELECT v FROM places WHERE id = 42")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(v, 21, "both concurrent updates stand and neither run wrote");
    stack.cleanup().await;
}

/// Sequential scans of `price_metrics` counted by Postgres, once the functions' connections have closed (a
/// backend reports its counts when it ends).
async fn metrics_seq_scans(stack: &TestStack) -> i64 {
    for _ in 0..100 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        )
        .bind(dualcaster::db::APPLICATION_NAME)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'price_metrics'")
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

/// An operator empties `price_metrics` to compute it afresh, and it is analysed while empty. The planner then
/// takes it for a table without pages and puts a sequential scan of it inside the join with every series, while
/// the run's writer fills it: the read grows with the square of the series. Refilled by a full run through
/// each reader (the cursor of a one-connection function, then the pipelined reader), the table is scanned a
/// handful of times, not once per series (Postgres' own count is the oracle), and every row matches the SQL
/// definitions. A handful: the run's check for an empty table scans it, and so do the signal and recommendation
/// passes the run enqueues, of which a varying number has run when the function is let go (1 to 5 scans in
/// all); the defect made 539, one per series.
#[tokio::test]
async fn an_emptied_and_analysed_metrics_table_is_refilled_without_a_scan_of_it_per_series() {
    let (stack, _server, analytics) = stack_with_v4_history().await;
    let first = run(&analytics, json!({"full": true})).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    drop(analytics);
    let series = first["detail"]["series"].as_i64().unwrap();
    assert!(series > 500, "the weekly history has {series} series");

    for (reader, env) in [
        ("the cursor", &[("DD_DB_MAX_CONNECTIONS", "1")][..]),
        ("the pipelined reader", &[][..]),
    ] {
        sqlx::query("TRUNCATE price_metrics")
            .execute(&stack.pool)
            .await
            .unwrap();
        sqlx::query("ANALYZE price_metrics")
            .execute(&stack.pool)
            .await
            .unwrap();
        let before = metrics_seq_scans(&stack).await;
        let function = stack.function(Queue::Analytics, env).await.unwrap();
        let again = run(&function, json!({"full": true})).await;
        assert_eq!(again["status"], "succeeded", "{reader}: {again}");
        assert_eq!(again["detail"]["series"], series, "{reader}: {again}");
        drop(function);
        let scans = metrics_seq_scans(&stack).await - before;
        assert!(
            scans <= 10,
            "{reader}: {scans} sequential scans of price_metrics to refill {series} series"
        );
        let (rows, differ) = differences(&stack).await;
        assert_eq!(rows, series, "{reader}");
        assert!(differ.is_empty(), "{reader}: {differ:#?}");
    }
}

/// With two writers, the second writer's transaction commits just before the run's own, which moves the
/// watermark. When the run's commit then fails, the second writer's rows stay (computed from the points they
/// were read from) and the watermark does not move: the retry reads the same points again, and every row ends
/// as the reference has it.
#[tokio::test]
async fn a_run_whose_commit_fails_after_its_second_writer_committed_is_made_whole_by_the_retry() {
    let (stack, _server, analytics) = stack_with_v4_history().await;
    let first = run(&analytics, json!({"full": true})).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    drop(analytics);
    let series = first["detail"]["series"].as_i64().unwrap();
    next_day(&stack, 1).await;
    // The run's commit is refused at its very end, by a deferred trigger on the watermark it moves.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_metrics_watermark() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'the metrics run''s commit is refused'; END $$; \
         CREATE CONSTRAINT TRIGGER refuse_metrics_watermark AFTER INSERT OR UPDATE ON analytics_watermarks \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = 'compute_price_metrics') \
         EXECUTE FUNCTION refuse_metrics_watermark()",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    let watermark = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT high_water FROM analytics_watermarks WHERE name = 'compute_price_metrics'",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap()
    };
    let watermark_before = watermark().await;
    let two_writers = with_two_writers(&stack).await;
    let started = database_clock(&stack).await;
    match two_writers
        .invoke(json!({"task": "compute_price_metrics", "kwargs": {}}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Error { error_message, .. }) => {
            assert!(
                error_message.contains("commit is refused"),
                "{error_message}"
            )
        }
        other => panic!("the refused commit: {other:?}"),
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM price_metrics WHERE computed_at > $1")
        .bind(started)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert!(
        kept > 0 && kept < series,
        "{kept} of {series} rows are the second writer's"
    );
    assert_eq!(writing_transactions(&stack, started).await, 1);
    assert_eq!(watermark().await, watermark_before);

    sqlx::raw_sql(
        "DROP TRIGGER refuse_metrics_watermark ON analytics_watermarks; \
         DROP FUNCTION refuse_metrics_watermark()",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    let retried = run(&two_writers, json!({})).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(retried["detail"]["series"], series, "{retried}");
    assert!(watermark().await > watermark_before);
    let (rows, differ) = differences(&stack).await;
    assert_eq!(rows, series);
    assert!(differ.is_empty(), "after the retry: {differ:#?}");
    stack.cleanup().await;
}
