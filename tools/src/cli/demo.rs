//! `dualcaster demo`: the main job. The whole system on this machine, fed the bundled real data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::{json, Map};

use dualcaster::config::Settings;
use dualcaster::envelope::Envelope;
use dualcaster::queue::Queue;
use dualcaster_tools::local::event_source::Dispatch;
use dualcaster_tools::local::stub::{Content, StubUpstream};
use dualcaster_tools::local::system::{LocalSystem, Options, Runner};
use dualcaster_tools::local::{local_sqs, send_message};

use crate::stack::{migrate, provision_stack};

/// The date the bundled sample's prices were recorded, used as its bulk file version.
const SAMPLE_VERSION: &str = "2025-11-01T09:05:00Z";

/// task, status, disposition, runs, error classes
type RunSummaryRow = (Option<String>, String, String, i64, Option<String>);
pub(crate) async fn demo(
    stack: &str,
    template: &Path,
    timeout: Duration,
    keep_data: bool,
    runner: Runner,
) -> Result<()> {
    let started = Utc::now();
    println!(
        "== provisioning queues for stack `{stack}` from {}",
        template.display()
    );
    let env = provision_stack(stack, template).await?;
    migrate(&env["DATABASE_URL"]).await?;
    let settings =
        Settings::from_lookup(|name| env.get(name).cloned().or_else(|| std::env::var(name).ok()))?;
    let pool = sqlx::PgPool::connect(settings.database_url()?.expose_secret()).await?;
    if !keep_data {
        empty_catalog(&settings, &pool).await?;
    }
    let sqs = local_sqs().await;
    empty_queues(&sqs, &settings).await;
    let (system, _upstream) = start_functions(&sqs, &env, template, runner).await?;
    enqueue_ingestions(&sqs, &settings).await?;
    let run_id = send_a_mix(&sqs, &settings).await?;
    println!("== waiting for every queue to empty");
    system.drain(timeout).await?;
    print_runs(&pool, started, &run_id).await?;
    print_catalog(&pool).await?;
    print_dlq_report(&system).await?;
    system.stop().await;
    println!(
        "== done: the functions stop with this process; queues and history stay for inspection"
    );
    Ok(())
}

/// Empties the catalog and analytics, so the summary shows this run only. Refused on a database that is not
/// on this machine.
async fn empty_catalog(settings: &Settings, pool: &sqlx::PgPool) -> Result<()> {
    let host = reqwest::Url::parse(settings.database_url()?.expose_secret())
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]") {
        bail!("the demo empties the catalog first, so it only runs on a local database (DATABASE_URL names `{host}`); pass --keep-data to keep what is there");
    }
    println!("== emptying the local catalog and analytics, so the summary shows this run only (--keep-data keeps them)");
    sqlx::query(
        "TRUNCATE printings, price_points, price_metrics, price_signals, price_recommendations, \
         ingestion_runs, analytics_watermarks",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Empties every queue and DLQ, so the DLQ report at the end shows this run only.
async fn empty_queues(sqs: &aws_sdk_sqs::Client, settings: &Settings) {
    // Start from empty queues, so the DLQ report below shows this run only.
    for queue in Queue::ALL {
        let urls = settings.urls(queue);
        for url in [&urls.queue, &urls.dlq] {
            let _ = sqs.purge_queue().queue_url(url).send().await;
        }
    }
}

/// Starts the functions and their event sources, with a local stand-in for Scryfall and MTGJSON serving the
/// bundled real data (kept alive by the caller).
async fn start_functions(
    sqs: &aws_sdk_sqs::Client,
    env: &BTreeMap<String, String>,
    template: &Path,
    runner: Runner,
) -> Result<(LocalSystem, StubUpstream)> {
    std::fs::create_dir_all(".local/logs")?;
    let mut function_env = env.clone();
    function_env.insert("DD_DEADLINE_MARGIN_MS".into(), "2000".into());
    // Scryfall, played locally by a stub serving the bundled real bulk file (Innistrad: Midnight Hunt).
    let scryfall = StubUpstream::start().await?;
    let cards = PathBuf::from("tests/fixtures/scryfall/mid_all_prints.json");
    if !cards.is_file() {
        bail!(
            "{} not found: run the demo from the repository root",
            cards.display()
        );
    }
    scryfall.publish_bulk(
        "default_cards",
        SAMPLE_VERSION,
        Content::File(cards.clone()),
    );
    function_env.insert("DD_SCRYFALL_BASE_URL".into(), scryfall.base_url.clone());
    // MTGJSON, played by the same stub: the bundled slice of its v4 weekly price history.
    let history = PathBuf::from("tests/fixtures/mtgjson/v4_history_WAR.json");
    scryfall.publish_file("v4_history_WAR.json", Content::File(history.clone()));
    function_env.insert(
        "DD_MTGJSON_BASE_URL".into(),
        format!("{}/files", scryfall.base_url),
    );
    println!(
        "== serving {} as Scryfall's default_cards bulk file at {}",
        cards.display(),
        scryfall.base_url
    );
    let system = LocalSystem::start(
        sqs.clone(),
        Options {
            runner,
            env: function_env,
            template: template.to_owned(),
            log_dir: PathBuf::from(".local/logs"),
            queues: Queue::ALL.to_vec(),
            profile: None,
        },
        Arc::new(|queue, d: &Dispatch| println!("   {queue}: {d}")),
    )
    .await?;
    match system.invoke_endpoint() {
        Some(endpoint) => println!(
            "== the three functions run under `cargo lambda watch` (Invoke API {endpoint}, logs in .local/logs/watch.log); one event source per queue feeds them"
        ),
        None => println!(
            "== the three functions run under the local Runtime API (logs in .local/logs/function-<queue>.log); one event source per queue feeds them"
        ),
    }
    Ok((system, scryfall))
}

async fn enqueue_ingestions(sqs: &aws_sdk_sqs::Client, settings: &Settings) -> Result<()> {
    println!("== enqueueing ingest_scryfall_bulk and ingest_mtgjson_prices (v4 history) on the ingestion queue");
    for (task, kwargs) in [
        (
            "ingest_scryfall_bulk",
            json!({"force": true, "batch_size": 100}),
        ),
        (
            "ingest_mtgjson_prices",
            json!({"file": "v4_history", "path": "v4_history_WAR.json", "force": true}),
        ),
    ] {
        let (_, envelope) = dualcaster::tasks::registry()
            .envelope(task, kwargs.as_object().cloned().unwrap_or_default())
            .map_err(|e| anyhow!("{e}"))?;
        send_message(
            sqs,
            &settings.urls(Queue::Ingestion).queue,
            &envelope.to_json(),
        )
        .await?;
    }
    Ok(())
}

/// Good, duplicate, failing, poison and expired messages on the default queue; returns the run id their
/// envelope ids carry.
async fn send_a_mix(sqs: &aws_sdk_sqs::Client, settings: &Settings) -> Result<String> {
    println!("== sending a mix of messages to the default queue");
    let registry = dualcaster::tasks::registry();
    let default_url = settings.urls(Queue::Default).queue.clone();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut bodies = Vec::new();
    for i in 0..5 {
        let (_, e) = registry
            .envelope(
                "ping",
                json!({"note": format!("demo ping {i}")})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )
            .map_err(|e| anyhow!("{e}"))?;
        bodies.push((
            "ping",
            e.with_id(format!("demo-{run_id}-ping-{i}")).to_json(),
        ));
    }
    let duplicate = bodies[0].1.clone();
    bodies.push((
        "the first ping again (a duplicate delivery: answered from its idempotency record)",
        duplicate,
    ));
    let drill = |kind: &str| {
        json!({"task": "ping", "id": format!("demo-{run_id}-drill-{kind}"), "kwargs": {"drill": kind}}).to_string()
    };
    bodies.push((
        "ping (retryable drill: retried with backoff, then DLQ)",
        drill("retryable"),
    ));
    bodies.push(("ping (permanent drill: DLQ at once)", drill("permanent")));
    bodies.push(("not JSON (DLQ at once)", "{\"task\": \"ping\"".to_owned()));
    bodies.push((
        "unknown task (DLQ at once)",
        json!({"task": "pong"}).to_string(),
    ));
    bodies.push((
        "expired envelope (skipped)",
        Envelope::new("ping", Map::new())
            .with_id(format!("demo-{run_id}-expired"))
            .expiring_at(Utc::now() - chrono::Duration::minutes(1))
            .to_json(),
    ));
    for (what, body) in &bodies {
        send_message(sqs, &default_url, body).await?;
        println!("   sent: {what}");
    }
    Ok(run_id)
}

async fn print_runs(
    pool: &sqlx::PgPool,
    started: chrono::DateTime<Utc>,
    run_id: &str,
) -> Result<()> {
    println!("== task runs since the demo started (from task_runs)");
    let rows: Vec<RunSummaryRow> = sqlx::query_as(
        "SELECT task, status, disposition || CASE WHEN replayed THEN ' (replayed)' ELSE '' END, count(*), \
         string_agg(DISTINCT error_class, ',') \
         FROM task_runs WHERE started_at >= $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(started)
    .fetch_all(pool)
    .await?;
    println!(
        "   {:<26} {:<10} {:<25} {:>5}  error classes",
        "task", "status", "disposition", "runs"
    );
    for (task, status, disposition, n, classes) in rows {
        println!(
            "   {:<26} {:<10} {:<25} {:>5}  {}",
            task.unwrap_or_else(|| "(none)".into()),
            status,
            disposition,
            n,
            classes.unwrap_or_default()
        );
    }
    let heartbeats: i64 =
        sqlx::query_scalar("SELECT count(*) FROM health_checks WHERE check_key LIKE $1")
            .bind(format!("demo-{run_id}-%"))
            .fetch_one(pool)
            .await?;
    println!("   heartbeats written by this demo: {heartbeats}");
    Ok(())
}

async fn print_catalog(pool: &sqlx::PgPool) -> Result<()> {
    println!("== the catalog after ingestion (Postgres)");
    let (printings, points, days): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM printings), (SELECT count(*) FROM price_points), \
                (SELECT count(DISTINCT day) FROM price_points)",
    )
    .fetch_one(pool)
    .await?;
    println!("   printings: {printings}, price points: {points} over {days} day(s)");
    let by_source: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT source, price_type, count(DISTINCT scryfall_id), count(*) FROM price_points GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    for (source, price_type, cards, n) in by_source {
        println!("     {source:<12} {price_type:<8} {n:>6} points for {cards:>4} printings");
    }
    let top: Vec<(String, String, String, rust_decimal::Decimal)> = sqlx::query_as(
        "SELECT p.name, p.set_code, p.collector_number, pp.price FROM price_points pp \
         JOIN printings p USING (scryfall_id) \
         WHERE pp.source = 'scryfall' AND pp.currency = 'USD' AND pp.finish = 'nonfoil' AND pp.day = $1 \
         ORDER BY pp.price DESC, p.name LIMIT 5",
    )
    .bind(chrono::DateTime::parse_from_rfc3339(SAMPLE_VERSION)?.date_naive())
    .fetch_all(pool)
    .await?;
    let metrics: i64 = sqlx::query_scalar("SELECT count(*) FROM price_metrics")
        .fetch_one(pool)
        .await?;
    println!("   price metrics (compute_price_metrics, enqueued by each completed ingestion): {metrics} series");
    let movers: Vec<(String, String, rust_decimal::Decimal, rust_decimal::Decimal, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT p.name, p.set_code, m.latest_price, m.change_7d_pct, m.latest_day FROM price_metrics m \
         JOIN printings p USING (scryfall_id) \
         WHERE m.source = 'tcgplayer' AND m.finish = 'nonfoil' AND m.latest_price >= 1 AND m.change_7d_pct IS NOT NULL \
         ORDER BY m.change_7d_pct DESC, p.name LIMIT 3",
    )
    .fetch_all(pool)
    .await?;
    let signals: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM price_signals GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await?;
    println!(
        "   price signals (detect_price_signals, enqueued by each metrics run): {}",
        if signals.is_empty() {
            "none over the default thresholds".to_owned()
        } else {
            signals
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!("   biggest 7-day risers (TCGplayer, non-foil, price >= 1 USD):");
    for (name, set, price, pct, day) in movers {
        println!(
            "     {pct:>7}%  {price:>7}  {name} ({}, week to {day})",
            set.to_uppercase()
        );
    }
    println!(
        "   most expensive non-foil printings (USD, Scryfall, {}):",
        &SAMPLE_VERSION[..10]
    );
    for (name, set, number, price) in top {
        println!("     {price:>8}  {name} ({} #{number})", set.to_uppercase());
    }
    let strongest: Vec<(String, String, String, rust_decimal::Decimal, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT DISTINCT ON (s.kind) s.kind, p.name, p.set_code, s.strength, s.day FROM price_signals s \
         JOIN printings p USING (scryfall_id) ORDER BY s.kind, s.strength DESC, p.name",
    )
    .fetch_all(pool)
    .await?;
    if !strongest.is_empty() {
        println!("   the strongest signal of each kind:");
        for (kind, name, set, strength, day) in strongest {
            println!(
                "     {kind:<17} {strength:>7}  {name} ({}, {day})",
                set.to_uppercase()
            );
        }
    }
    let actions: Vec<(String, i64)> =
        sqlx::query_as("SELECT action, count(*) FROM price_recommendations GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await?;
    println!(
        "   recommendations (generate_recommendations, enqueued by each signal pass): {}",
        actions
            .iter()
            .map(|(a, n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let picks: Vec<(String, String, String, rust_decimal::Decimal, String)> = sqlx::query_as(
        "SELECT * FROM (SELECT DISTINCT ON (r.action, r.confidence, p.name) r.action, p.name, p.set_code, \
                r.confidence, r.rationale \
         FROM price_recommendations r JOIN printings p USING (scryfall_id) WHERE r.action <> 'hold' \
         ORDER BY r.action, r.confidence DESC, p.name) d \
         ORDER BY action, confidence DESC, name",
    )
    .fetch_all(pool)
    .await?;
    for action in ["buy", "sell"] {
        let top: Vec<_> = picks.iter().filter(|p| p.0 == action).take(3).collect();
        if top.is_empty() {
            continue;
        }
        println!("   most confident {action}s:");
        for (_, name, set, confidence, rationale) in top {
            println!(
                "     {confidence}  {name} ({}): {rationale}",
                set.to_uppercase()
            );
        }
    }
    Ok(())
}

async fn print_dlq_report(system: &LocalSystem) -> Result<()> {
    println!(
        "== dlq_report, invoked directly on the default function (as `aws lambda invoke` would)"
    );
    let default_fn = system
        .target(Queue::Default)
        .ok_or_else(|| anyhow!("no default function"))?;
    match default_fn
        .invoke(json!({"task": "dlq_report", "kwargs": {"peek": 3, "queues": ["default"]}}))
        .await
    {
        Ok(report) => {
            let q = &report["detail"]["queues"][0];
            println!("   default DLQ depth: {}", q["depth"]);
            println!("   by error class: {}", q["by_error_class"]);
            println!("   by task: {}", q["by_task"]);
            for m in q["recent"].as_array().into_iter().flatten() {
                let d = &m["dead_letter"];
                println!(
                    "   - {} attempts={} {}: {}",
                    d["error_class"].as_str().unwrap_or("?"),
                    d["attempts"],
                    d["task"].as_str().unwrap_or("(none)"),
                    d["error_message"].as_str().unwrap_or_default()
                );
            }
        }
        Err(e) => bail!("dlq_report failed: {e}"),
    }
    Ok(())
}
