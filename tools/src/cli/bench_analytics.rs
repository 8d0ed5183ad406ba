//! `dualcaster bench-analytics`: the analytics tasks (metrics, then signals) of the real analytics function over
//! the real MTGJSON v4 history and over a generated daily history, each timed as a full run and as an
//! incremental run after one new day of points, side by side in the same run with one sequential scan of the
//! points table (the floor).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use sqlx::PgPool;

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use dualcaster_tools::local::stub::{Content, StubUpstream};
use dualcaster_tools::local::{function_binary, local_aws_defaults};

use crate::bench::fresh_database;

struct Row {
    dataset: String,
    points: i64,
    series: i64,
    scan: f64,
    full: (f64, f64),
    incremental: (f64, f64),
    new_points: i64,
    changed: u64,
    /// Rewriting every metrics row once, in a transaction rolled back: what any run that changes every
    /// series pays at least.
    rewrite: f64,
}

fn function_env(url: &str, extra: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let mut env = local_aws_defaults();
    env.insert("DATABASE_URL".into(), url.to_owned());
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    env.insert("RUST_LOG".into(), "warn".into());
    env.insert("DD_INGEST_RESERVE_MS".into(), "0".into());
    for (k, v) in std::env::vars().filter(|(k, _)| {
        k.starts_with("DD_QUEUE_URL_") || k.starts_with("DD_DLQ_URL_") || k == "DD_LEASE_TABLE"
    }) {
        env.insert(k, v);
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

/// Invokes `task` and returns its report and wall time in seconds.
async fn timed(function: &LocalFunction, task: &str, kwargs: Value) -> Result<(Value, f64)> {
    let started = Instant::now();
    match function
        .invoke(json!({"task": task, "kwargs": kwargs}))
        .await?
    {
        Invoked::Outcome(InvokeOutcome::Response(r)) if r["status"] == "succeeded" => {
            Ok((r, started.elapsed().as_secs_f64()))
        }
        other => bail!("{task} failed: {other:?}"),
    }
}

/// One sequential read of every price point (the best of two, so both it and the tasks run on a warm cache).
async fn seq_scan(pool: &PgPool) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..2 {
        let mut conn = pool.acquire().await?;
        sqlx::query("SET enable_indexscan = off")
            .execute(&mut *conn)
            .await?;
        sqlx::query("SET enable_indexonlyscan = off")
            .execute(&mut *conn)
            .await?;
        sqlx::query("SET enable_bitmapscan = off")
            .execute(&mut *conn)
            .await?;
        let started = Instant::now();
        let _: Option<rust_decimal::Decimal> =
            sqlx::query_scalar("SELECT sum(price) FROM price_points")
                .fetch_one(&mut *conn)
                .await?;
        best = best.min(started.elapsed().as_secs_f64());
        conn.close().await?;
    }
    Ok(best)
}

/// Full metrics + signals, then one new day for every series and the incremental metrics + signals.
async fn measure(pool: &PgPool, url: &str, dataset: String) -> Result<Row> {
    sqlx::query("VACUUM ANALYZE price_points")
        .execute(pool)
        .await?;
    let (points, series): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (scryfall_id, source, price_type, finish, currency)) FROM price_points",
    )
    .fetch_one(pool)
    .await?;
    let analytics = LocalFunction::start(
        "bench-analytics",
        &function_binary(Queue::Analytics)?,
        function_env(url, &[]),
        Duration::from_secs(900),
        Some(".local/bench/analytics.log".into()),
    )
    .await?;
    let scan = seq_scan(pool).await?;
    let (_, full_metrics) =
        timed(&analytics, "compute_price_metrics", json!({"full": true})).await?;
    let (_, full_signals) =
        timed(&analytics, "detect_price_signals", json!({"full": true})).await?;
    // As if the full runs were yesterday's: the next runs look only at what arrived since.
    for statement in [
        "UPDATE analytics_watermarks SET high_water = high_water - interval '1 day'",
        "UPDATE price_metrics SET computed_at = computed_at - interval '1 day'",
        "UPDATE price_signals SET detected_at = detected_at - interval '1 day'",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    // One new day: every series gets a point the day after its latest, within 10% of its latest price.
    let new_points = sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT scryfall_id, source, price_type, finish, currency, latest_day + 1, \
                round(latest_price * (0.9 + (abs(hashtext(scryfall_id::text)) % 201) / 1000.0), 2) \
         FROM price_metrics",
    )
    .execute(pool)
    .await?
    .rows_affected() as i64;
    sqlx::query("ANALYZE price_points").execute(pool).await?;
    let (report, incremental_metrics) =
        timed(&analytics, "compute_price_metrics", json!({})).await?;
    let (_, incremental_signals) = timed(&analytics, "detect_price_signals", json!({})).await?;
    let mut tx = pool.begin().await?;
    let started = Instant::now();
    sqlx::query("UPDATE price_metrics SET computed_at = now()")
        .execute(&mut *tx)
        .await?;
    let rewrite = started.elapsed().as_secs_f64();
    tx.rollback().await?;
    Ok(Row {
        rewrite,
        dataset,
        points,
        series,
        scan,
        full: (full_metrics, full_signals),
        incremental: (incremental_metrics, incremental_signals),
        new_points,
        changed: report["detail"]["changed"].as_u64().unwrap_or(0),
    })
}

/// The real v4 weekly history, ingested by the real ingestion function.
async fn real_history(admin_url: &str, history: &Path) -> Result<Row> {
    let (pool, url) = fresh_database(admin_url, "dd_bench_analytics").await?;
    let stub = StubUpstream::start().await?;
    stub.publish_file("history.json", Content::File(history.to_owned()));
    let base = format!("{}/files", stub.base_url);
    let ingestion = LocalFunction::start(
        "bench-ingestion",
        &function_binary(Queue::Ingestion)?,
        function_env(&url, &[("DD_MTGJSON_BASE_URL", base.as_str())]),
        Duration::from_secs(900),
        Some(".local/bench/ingestion.log".into()),
    )
    .await?;
    let (_, secs) = timed(
        &ingestion,
        "ingest_mtgjson_prices",
        json!({"file": "v4_history", "path": "history.json"}),
    )
    .await?;
    eprintln!("ingested {} in {secs:.1} s", history.display());
    drop(ingestion);
    // Recorded before yesterday's runs, as a day-old catalog would be.
    sqlx::query("UPDATE price_points SET recorded_at = recorded_at - interval '2 days'")
        .execute(&pool)
        .await?;
    let row = measure(&pool, &url, "MTGJSON v4 history (weekly)".into()).await?;
    pool.close().await;
    Ok(row)
}

/// `printings` x `days` of daily retail prices: a slow cycle and day-to-day noise around a per-card base.
async fn generated_history(admin_url: &str, printings: i64, days: i64) -> Result<Row> {
    let (pool, url) = fresh_database(admin_url, "dd_bench_analytics").await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity) \
         SELECT md5('bench' || i)::uuid, 'Bench card ' || i, 'bch', i::text, 'rare' FROM generate_series(1, $1) i",
    )
    .bind(printings)
    .execute(&pool)
    .await?;
    // Loaded without indexes, which are built afterwards (as a restore would).
    for statement in [
        "ALTER TABLE price_points DROP CONSTRAINT price_points_pkey",
        "DROP INDEX price_points_day_idx",
        "DROP INDEX price_points_recorded_at_idx",
        "ALTER TABLE price_points SET UNLOGGED",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price, recorded_at) \
         SELECT md5('bench' || i)::uuid, 'tcgplayer', 'retail', 'nonfoil', 'USD', current_date - d::int, \
                round((0.25 + (abs(hashint8(i)) % 5000) / 100.0) \
                      * exp(0.15 * sin(d / 20.0 + i) + 0.05 * ((abs(hashint8(i * 1000 + d)) % 2001) / 1000.0 - 1))::numeric, 2), \
                now() - interval '2 days' \
         FROM generate_series(1, $1) i, generate_series(1, $2) d",
    )
    .bind(printings)
    .bind(days)
    .execute(&pool)
    .await?;
    for statement in [
        "ALTER TABLE price_points SET LOGGED",
        "ALTER TABLE price_points ADD CONSTRAINT price_points_pkey \
         PRIMARY KEY (scryfall_id, source, price_type, finish, currency, day) INCLUDE (price)",
        "CREATE INDEX price_points_day_idx ON price_points (day)",
        "CREATE INDEX price_points_recorded_at_idx ON price_points (recorded_at)",
    ] {
        sqlx::query(statement).execute(&pool).await?;
    }
    eprintln!(
        "generated {printings} printings x {days} days in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let row = measure(
        &pool,
        &url,
        format!("generated {printings} x {days} days (daily)"),
    )
    .await?;
    pool.close().await;
    Ok(row)
}

pub async fn bench_analytics(history: &Path, printings: i64, days: i64) -> Result<()> {
    let admin_url = std::env::var("DD_BENCH_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://app:app@127.0.0.1:5432/app".to_owned());
    std::fs::create_dir_all(".local/bench")?;
    if !history.is_file() {
        return Err(anyhow!(
            "{} not found (the full v4 history lives in ../shared/data; pass --history)",
            history.display()
        ));
    }
    let mut rows = vec![real_history(&admin_url, history).await?];
    if printings > 0 {
        rows.push(generated_history(&admin_url, printings, days).await?);
    }
    println!("compute_price_metrics + detect_price_signals (the real analytics function), each dataset in its own database");
    println!(
        "{:<38} {:>10} {:>8} {:>8} {:>17} {:>8} {:>22} {:>8} {:>10}",
        "dataset",
        "points",
        "series",
        "scan s",
        "full s (m + s)",
        "x scan",
        "incremental s (m + s)",
        "full/inc",
        "rewrite s"
    );
    for r in &rows {
        let full = r.full.0 + r.full.1;
        let inc = r.incremental.0 + r.incremental.1;
        println!(
            "{:<38} {:>10} {:>8} {:>8.2} {:>17} {:>8.2} {:>22} {:>8.1} {:>10.2}",
            r.dataset,
            r.points,
            r.series,
            r.scan,
            format!("{full:.2} ({:.2} + {:.2})", r.full.0, r.full.1),
            full / r.scan,
            format!("{inc:.2} ({:.2} + {:.2})", r.incremental.0, r.incremental.1),
            full / inc,
            r.rewrite
        );
        eprintln!(
            "  {}: the new day added {} points; the incremental metrics run changed {} series",
            r.dataset, r.new_points, r.changed
        );
    }
    Ok(())
}
