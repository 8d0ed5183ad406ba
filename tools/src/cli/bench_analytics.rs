//! `dualcaster bench-analytics`: the analytics tasks (metrics, then signals) of the real analytics function over
//! the real MTGJSON v4 history and over a generated daily history, each timed as a full run, as an
//! incremental run after one new day of points for every series and as an incremental run after a new day for
//! 5 % of the series, side by side in the same run with their floors: one sequential scan of the points table
//! for the full run; for the incremental one, reading the points its windows need and rewriting the touched
//! metrics rows once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use chrono::NaiveDate;
use serde_json::{json, Value};
use sqlx::PgPool;

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use dualcaster_tools::local::stub::{Content, StubUpstream};
use dualcaster_tools::local::{function_binary, local_aws_defaults};
use dualcaster_tools::template::Template;

use crate::bench::fresh_database;
use crate::cpu_time::{cores, CpuTimes};

/// A run of metrics then signals: wall seconds of each.
#[derive(Clone, Copy)]
struct Pass {
    metrics: f64,
    signals: f64,
}

impl Pass {
    fn total(&self) -> f64 {
        self.metrics + self.signals
    }

    fn show(&self) -> String {
        format!(
            "{:.2} ({:.2} + {:.2})",
            self.total(),
            self.metrics,
            self.signals
        )
    }
}

struct Row {
    dataset: String,
    points: i64,
    series: i64,
    scan: f64,
    full: Pass,
    /// After one new day for every series.
    incremental: Pass,
    /// The CPU the incremental run took, the function's and Postgres' among it.
    incremental_cpu: CpuTimes,
    /// The incremental run's floor: reading the last 61 days of every series (what its windows need) ...
    window_read: f64,
    /// ... plus rewriting every metrics row once, in a transaction rolled back.
    rewrite: f64,
    /// The CPU the floor's read and rewrite took.
    floor_cpu: CpuTimes,
    /// Writing every metrics row into an empty copy of the table (same columns, indexes and logging), rolled
    /// back: what a first full run pays at least for its output.
    write: f64,
    /// After one new day for 5 % of the series.
    partial: Pass,
    partial_series: i64,
    /// With nothing new: what every run pays (two invocations, their leases and records, the watermarks).
    idle: Pass,
}

fn function_env(url: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = local_aws_defaults();
    env.insert("DATABASE_URL".into(), url.to_owned());
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    env.insert("RUST_LOG".into(), "warn".into());
    env.insert("DD_TASK_RESERVE_MS".into(), "0".into());
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

impl Row {
    fn floor(&self) -> f64 {
        self.window_read + self.rewrite
    }

    /// The four ratios the targets are stated in: full / scan, incremental / its floor, incremental / full,
    /// full / the 5 % run.
    fn ratios(&self) -> [f64; 4] {
        [
            self.full.total() / self.scan,
            self.incremental.total() / self.floor(),
            self.incremental.total() / self.full.total(),
            self.full.total() / self.partial.total(),
        ]
    }
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

/// Metrics then signals, incremental unless `full`.
async fn pass(analytics: &LocalFunction, full: bool) -> Result<Pass> {
    let kwargs = if full {
        json!({"full": true})
    } else {
        json!({})
    };
    let (_, metrics) = timed(analytics, "compute_price_metrics", kwargs.clone()).await?;
    let (_, signals) = timed(analytics, "detect_price_signals", kwargs).await?;
    Ok(Pass { metrics, signals })
}

/// As if the last runs were a day ago: the next runs look only at what arrived since.
async fn age_runs(pool: &PgPool) -> Result<()> {
    for statement in [
        "UPDATE analytics_watermarks SET high_water = high_water - interval '1 day'",
        "UPDATE price_metrics SET computed_at = computed_at - interval '1 day'",
        "UPDATE price_signals SET detected_at = detected_at - interval '1 day'",
        "UPDATE price_points SET recorded_at = recorded_at - interval '1 day' WHERE recorded_at > now() - interval '1 hour'",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    // A day's autovacuum: the aging's dead rows are not the next run's to step over.
    sqlx::query("VACUUM ANALYZE price_points")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE price_metrics")
        .execute(pool)
        .await?;
    Ok(())
}

/// One new day for the series whose key hashes into `share_percent` of 100 buckets (all of them at 100): a
/// point the day after the series' latest, within 10 % of its latest price. Returns the points added.
async fn new_day(pool: &PgPool, share_percent: i32) -> Result<i64> {
    let added = sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT scryfall_id, source, price_type, finish, currency, latest_day + 1, \
                round(latest_price * (0.9 + (abs(hashtext(scryfall_id::text)) % 201) / 1000.0), 2) \
         FROM price_metrics \
         WHERE abs(hashtext(scryfall_id::text || source || price_type || finish || currency)) % 100 < $1",
    )
    .bind(share_percent)
    .execute(pool)
    .await?
    .rows_affected() as i64;
    sqlx::query("ANALYZE price_points").execute(pool).await?;
    Ok(added)
}

/// Reading every series' last 61 days (the windows of a run that touches every series), best of two, with
/// the CPU it took.
async fn window_read(pool: &PgPool) -> Result<(f64, CpuTimes)> {
    let mut best = (f64::MAX, CpuTimes::default());
    for _ in 0..2 {
        let before = CpuTimes::now(None)?;
        let started = Instant::now();
        let _: Option<rust_decimal::Decimal> = sqlx::query_scalar(
            "SELECT sum(w.price) FROM price_metrics m CROSS JOIN LATERAL ( \
                 SELECT p.price FROM price_points p \
                 WHERE (p.scryfall_id, p.source, p.price_type, p.finish, p.currency) \
                     = (m.scryfall_id, m.source, m.price_type, m.finish, m.currency) \
                   AND p.day > m.latest_day - 61) w",
        )
        .fetch_one(pool)
        .await?;
        let secs = started.elapsed().as_secs_f64();
        if secs < best.0 {
            best = (secs, CpuTimes::now(None)?.since(&before));
        }
    }
    Ok(best)
}

/// Seconds `timed` takes after `setup`, both in one transaction that is rolled back.
async fn rolled_back(pool: &PgPool, setup: Option<&str>, timed: &str) -> Result<f64> {
    let mut tx = pool.begin().await?;
    if let Some(setup) = setup {
        sqlx::query(sqlx::AssertSqlSafe(setup))
            .execute(&mut *tx)
            .await?;
    }
    let started = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(timed))
        .execute(&mut *tx)
        .await?;
    let secs = started.elapsed().as_secs_f64();
    tx.rollback().await?;
    Ok(secs)
}

/// Writing every metrics row into an empty copy of `price_metrics`, rolled back.
async fn write_floor(pool: &PgPool) -> Result<f64> {
    rolled_back(
        pool,
        Some("CREATE TABLE bench_metrics_copy (LIKE price_metrics INCLUDING ALL)"),
        "INSERT INTO bench_metrics_copy SELECT * FROM price_metrics",
    )
    .await
}

/// Rewriting every metrics row once, rolled back.
async fn rewrite(pool: &PgPool) -> Result<f64> {
    rolled_back(pool, None, "UPDATE price_metrics SET computed_at = now()").await
}

/// A full run; one new day for every series and an incremental run; a new day for 5 % of the series and an
/// incremental run; and the floors.
/// `analytics_env`: the analytics function's own environment, as the template gives it.
async fn measure(
    pool: &PgPool,
    url: &str,
    dataset: String,
    analytics_env: &BTreeMap<String, String>,
) -> Result<Row> {
    sqlx::query("VACUUM ANALYZE price_points")
        .execute(pool)
        .await?;
    let (points, series): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (scryfall_id, source, price_type, finish, currency)) FROM price_points",
    )
    .fetch_one(pool)
    .await?;
    let mut env = function_env(url, &[]);
    env.extend(analytics_env.clone());
    let analytics = LocalFunction::start(
        "bench-analytics",
        &function_binary(Queue::Analytics)?,
        env,
        Duration::from_secs(900),
        Some(".local/bench/analytics.log".into()),
    )
    .await?;
    let scan = seq_scan(pool).await?;
    let full = pass(&analytics, true).await?;
    age_runs(pool).await?;
    let added = new_day(pool, 100).await?;
    let before = CpuTimes::now(analytics.pid())?;
    let incremental = pass(&analytics, false).await?;
    let incremental_cpu = CpuTimes::now(analytics.pid())?.since(&before);
    let (window_read, read_cpu) = window_read(pool).await?;
    let before = CpuTimes::now(None)?;
    let rewrite = rewrite(pool).await?;
    let floor_cpu = CpuTimes::now(None)?.since(&before).plus(&read_cpu);
    let write = write_floor(pool).await?;
    age_runs(pool).await?;
    let partial_series = new_day(pool, 5).await?;
    let partial = pass(&analytics, false).await?;
    let idle = pass(&analytics, false).await?;
    eprintln!(
        "  {dataset}: a new day for every series added {added} points, a new day for 5 % of them {partial_series}"
    );
    Ok(Row {
        dataset,
        points,
        series,
        scan,
        full,
        incremental,
        incremental_cpu,
        window_read,
        rewrite,
        floor_cpu,
        write,
        partial,
        partial_series,
        idle,
    })
}

/// The real v4 weekly history, ingested by the real ingestion function.
async fn real_history(
    admin_url: &str,
    history: &Path,
    analytics_env: &BTreeMap<String, String>,
) -> Result<Row> {
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
    let row = measure(
        &pool,
        &url,
        "MTGJSON v4 history (weekly)".into(),
        analytics_env,
    )
    .await?;
    pool.close().await;
    Ok(row)
}

/// `printings` x `days` of daily retail prices: a slow cycle and day-to-day noise around a per-card base.
/// Returns the database's pool and URL, and the history's last day.
async fn generate_history(
    admin_url: &str,
    printings: i64,
    days: i64,
) -> Result<(PgPool, String, NaiveDate)> {
    let (pool, url) = fresh_database(admin_url, "dd_bench_analytics").await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity) \
         SELECT md5('bench' || i)::uuid, 'Bench card ' || i, 'bch', i::text, 'rare' FROM generate_series(1, $1) i",
    )
    .bind(printings)
    .execute(&pool)
    .await?;
    // Loaded without indexes, which are built afterwards (as a restore would): each is rebuilt from the
    // definition the migrations gave it, read back from the catalog, so the bench's table is the real one.
    let primary_key: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'price_points_pkey'",
    )
    .fetch_one(&pool)
    .await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes \
         WHERE schemaname = current_schema() AND tablename = 'price_points' AND indexname <> 'price_points_pkey'",
    )
    .fetch_all(&pool)
    .await?;
    sqlx::query("ALTER TABLE price_points DROP CONSTRAINT price_points_pkey")
        .execute(&pool)
        .await?;
    for (name, _) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .execute(&pool)
            .await?;
    }
    sqlx::query("ALTER TABLE price_points SET UNLOGGED")
        .execute(&pool)
        .await?;
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
    sqlx::query("ALTER TABLE price_points SET LOGGED")
        .execute(&pool)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE price_points ADD CONSTRAINT price_points_pkey {primary_key}"
    )))
    .execute(&pool)
    .await?;
    for (_, definition) in indexes {
        sqlx::query(sqlx::AssertSqlSafe(definition))
            .execute(&pool)
            .await?;
    }
    eprintln!(
        "generated {printings} printings x {days} days in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let last_day: NaiveDate = sqlx::query_scalar("SELECT max(day) FROM price_points")
        .fetch_one(&pool)
        .await?;
    Ok((pool, url, last_day))
}

/// Back to the history as generated, for the next run: the points the runs added (all after its last day) are
/// deleted, which the statement triggers take out of `price_series`, and the analytics tables are emptied, so
/// the next run starts with a full run as the first did. Regenerating would take 20 minutes.
async fn reset_history(pool: &PgPool, last_day: NaiveDate) -> Result<()> {
    let deleted = sqlx::query("DELETE FROM price_points WHERE day > $1")
        .bind(last_day)
        .execute(pool)
        .await?
        .rows_affected();
    sqlx::query(
        "TRUNCATE price_metrics, price_signals, price_recommendations, analytics_watermarks",
    )
    .execute(pool)
    .await?;
    for table in ["price_points", "price_series"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
            .execute(pool)
            .await?;
    }
    eprintln!("reset the generated history: {deleted} points added by the last run deleted");
    Ok(())
}

/// One dataset's line of the table, printed as soon as it is measured.
fn print_row(r: &Row) {
    let floor = r.floor();
    let [x_scan, x_floor, _, full_over_partial] = r.ratios();
    println!(
        "{:<38} {:>9} {:>7} {:>6.2} {:>19} {:>6.2} | {:>19} {:>15} {:>6.2} | {:>19} {:>8.1}",
        r.dataset,
        r.points,
        r.series,
        r.scan,
        r.full.show(),
        x_scan,
        r.incremental.show(),
        format!("{floor:.2} ({:.2} + {:.2})", r.window_read, r.rewrite),
        x_floor,
        r.partial.show(),
        full_over_partial
    );
    println!(
        "  {}: writing every metrics row into an empty table takes {:.2} s ({:.1}x the scan); 5 % of the series is {} of {}; a run with nothing new takes {} (full / that: {:.1})",
        r.dataset,
        r.write,
        r.write / r.scan,
        r.partial_series,
        r.series,
        r.idle.show(),
        r.full.total() / r.idle.total()
    );
    let (run, floor) = (&r.incremental_cpu, &r.floor_cpu);
    // What runs alone (the signal pass, one statement at a time, and a metrics run's fixed cost) cannot share
    // the cores; the rest of the run's CPU at best spreads over all of them.
    let alone = r.incremental.signals + r.idle.metrics;
    let at_best = alone + (run.machine - alone).max(0.0) / cores() as f64;
    println!(
        "  {}: CPU of the incremental run after a day for every series {:.2} s (the function {:.2}, Postgres {:.2}, \
         the rest {:.2}), {:.2} of the {} cores over its {:.2} s; of its floor {:.2} s (Postgres {:.2}) over {:.2} s; \
         the run at best {:.2} s ({:.2}x its floor: {:.2} s alone, the rest over every core)",
        r.dataset,
        run.machine,
        run.process,
        run.postgres,
        (run.machine - run.process - run.postgres).max(0.0),
        run.machine / r.incremental.total(),
        cores(),
        r.incremental.total(),
        floor.machine,
        floor.postgres,
        r.floor(),
        at_best,
        at_best / r.floor(),
        alone
    );
}

/// The range of each ratio over one dataset's runs.
fn print_ranges(rows: &[Row]) {
    let Some(first) = rows.first() else {
        return;
    };
    let range = |i: usize| {
        let values = rows.iter().map(|r| r.ratios()[i]);
        let low = values.clone().fold(f64::INFINITY, f64::min);
        let high = values.fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.2}-{high:.2}")
    };
    println!(
        "{} over {} runs: full {}x the scan; incremental after a day for every series {}x its floor and {}x full; \
         full / incremental after a day for 5 % {}",
        first.dataset,
        rows.len(),
        range(0),
        range(1),
        range(2),
        range(3)
    );
}

/// The analytics function's environment as `template` gives it, with `connections` over its pool size.
fn analytics_env(template: &Path, connections: Option<u32>) -> Result<BTreeMap<String, String>> {
    let template = Template::load(template)?;
    let mut env = template
        .function(Queue::Analytics.as_str())
        .ok_or_else(|| anyhow!("the template defines no analytics function"))?
        .environment
        .clone();
    if let Some(connections) = connections {
        env.insert("DD_DB_MAX_CONNECTIONS".into(), connections.to_string());
    }
    Ok(env)
}

pub async fn bench_analytics(
    history: &Path,
    template: &Path,
    connections: Option<u32>,
    printings: i64,
    days: i64,
    runs: u32,
) -> Result<()> {
    let admin_url = std::env::var("DD_BENCH_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| dualcaster_tools::local::LOCAL_DATABASE_URL.to_owned());
    std::fs::create_dir_all(".local/bench")?;
    if !history.is_file() {
        return Err(anyhow!(
            "{} not found (the full v4 history lives in ../shared/data; pass --history)",
            history.display()
        ));
    }
    // The functions are checked against their sources once, up front: a stale binary found after a long
    // generation would throw the run away.
    function_binary(Queue::Analytics)?;
    function_binary(Queue::Ingestion)?;
    let analytics_env = analytics_env(template, connections)?;
    println!("compute_price_metrics + detect_price_signals (the real analytics function), each dataset in its own database");
    println!(
        "the analytics function's own environment: {}",
        analytics_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<38} {:>9} {:>7} {:>6} {:>19} {:>6} | {:>19} {:>15} {:>6} | {:>19} {:>8}",
        "dataset",
        "points",
        "series",
        "scan s",
        "full s (m + s)",
        "x scan",
        "inc. all s (m + s)",
        "floor s (r + w)",
        "x flr",
        "inc. 5% s (m + s)",
        "full/5%"
    );
    let mut v4 = Vec::new();
    for _ in 0..runs {
        let row = real_history(&admin_url, history, &analytics_env).await?;
        print_row(&row);
        v4.push(row);
    }
    let mut generated = Vec::new();
    if printings > 0 {
        let (pool, url, last_day) = generate_history(&admin_url, printings, days).await?;
        for run in 0..runs {
            if run > 0 {
                reset_history(&pool, last_day).await?;
            }
            let dataset = format!("generated {printings} x {days} days (daily)");
            let row = measure(&pool, &url, dataset, &analytics_env).await?;
            print_row(&row);
            generated.push(row);
        }
        pool.close().await;
    }
    if runs > 1 {
        print_ranges(&v4);
        print_ranges(&generated);
    }
    println!(
        "targets: full within 5x of the scan (10x on the v4 history); incremental after a day for every series \
         within 1.5x of its floor (r: reading each series' last 61 days, w: rewriting every metrics row) and \
         never slower than full; incremental after a day for 5 % of the series at least 20x faster than full"
    );
    Ok(())
}
