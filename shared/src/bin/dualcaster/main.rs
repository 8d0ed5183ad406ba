//! `dualcaster`: the operator and developer command line for the task platform.
//!
//! ```text
//! dualcaster migrate                          apply the embedded migrations to DATABASE_URL
//! dualcaster provision --stack NAME           create the template's queues (LocalStack) and write an env file
//! dualcaster enqueue TASK --kwargs '{...}'    validate and send an envelope to the task's queue
//! dualcaster invoke TASK --kwargs '{...}'     run a task here, synchronously, and print its report
//! dualcaster tasks                            list registered tasks with their queue and retry policy
//! dualcaster demo                             the whole system on this machine, end to end
//! ```
//!
//! Settings come from the environment; `.local/stack.env` (written by `provision`) fills in what is unset.

mod bench;
mod bench_analytics;
mod bench_runtime;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use dualcaster::config::Settings;

use dualcaster::db::MIGRATOR;
use dualcaster::envelope::Envelope;
use dualcaster::lease::dynamo::DynamoLeaseStore;
use dualcaster::local::event_source::{invoke_function, EventSource};
use dualcaster::local::function::{Invoked, LocalFunction};
use dualcaster::local::runtime_api::InvokeOutcome;
use dualcaster::local::stub::{Content, StubUpstream};
use dualcaster::local::template::{provision, provision_rules, Template};
use dualcaster::local::{
    function_binary, load_env_file, local_aws, local_aws_defaults, local_dynamodb, local_events,
    local_sqs, send_message,
};
use dualcaster::queue::Queue;
use dualcaster::registry::Registry;
use dualcaster::runtime::{Invocation, Runtime};

#[derive(Parser)]
#[command(
    name = "dualcaster",
    about = "Dualcaster Deals task platform: operate and run it locally"
)]
struct Cli {
    /// Env file read before anything else (variables already set win).
    #[arg(long, global = true, default_value = ".local/stack.env")]
    env_file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the embedded migrations to DATABASE_URL.
    Migrate,
    /// Create the SAM template's queues and DLQs in SQS (LocalStack) under a stack name.
    Provision {
        #[arg(long, default_value = "dualcaster-local")]
        stack: String,
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        /// Where to write the functions' environment (queue URLs, database, AWS endpoint).
        #[arg(long, default_value = ".local/stack.env")]
        write_env: PathBuf,
    },
    /// List the registered tasks.
    Tasks,
    /// Validate arguments and send a task to its queue (routing from the registry).
    Enqueue {
        task: String,
        #[arg(long, default_value = "{}")]
        kwargs: String,
        #[arg(long)]
        id: Option<String>,
        /// Skip the run if it has not started within this many seconds.
        #[arg(long)]
        expires_in: Option<i64>,
    },
    /// Run one task in this process, as a direct invoke of its function would, and print the report.
    Invoke {
        task: String,
        #[arg(long, default_value = "{}")]
        kwargs: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Keep infra/template.yaml in step with the registry.
    Template {
        #[command(subcommand)]
        action: TemplateAction,
        #[arg(long, default_value = "infra/template.yaml")]
        path: PathBuf,
    },
    /// List every schedule with its next fire times (UTC).
    Schedules {
        #[arg(long, default_value_t = 3)]
        next: usize,
    },
    /// Ingestion rate and peak RSS of the real ingestion function vs raw COPY, on generated bulk files.
    BenchIngest {
        /// File sizes, in cards.
        #[arg(long, value_delimiter = ',', default_value = "20000,100000")]
        cards: Vec<usize>,
        /// The real cards the files are built from.
        #[arg(long, default_value = "tests/fixtures/scryfall/mid_all_prints.json")]
        sample: PathBuf,
        /// Cards per transaction in the ingestion.
        #[arg(long, default_value_t = 1000)]
        batch_size: u32,
    },
    /// Time metrics + signals, full and incremental, over the real v4 history and a generated history,
    /// against one sequential scan of the points.
    BenchAnalytics {
        /// The real MTGJSON v4 history (all sets).
        #[arg(
            long,
            default_value = "../shared/data/mtgjson/v4_history/prices_by_uuid_v4_20190721.json"
        )]
        history: PathBuf,
        /// Printings of the generated history (0 skips it).
        #[arg(long, default_value_t = 100_000)]
        printings: i64,
        /// Days of the generated history.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Measure the functions' start-up, their zip sizes and the runtime's work per message.
    BenchRuntime {
        /// Where `make package` put the x86_64 build (`<dir>/<function>/bootstrap[.zip]`).
        #[arg(long, default_value = "target/lambda/x86_64")]
        lambda_dir: PathBuf,
        /// The arm64 build, when there is one (zip sizes only).
        #[arg(long, default_value = "target/lambda/arm64")]
        arm64_dir: PathBuf,
        /// Starts of each function binary.
        #[arg(long, default_value_t = 50)]
        starts: usize,
        /// Batches of ten no-op messages.
        #[arg(long, default_value_t = 2000)]
        batches: usize,
    },
    /// Measure lease operations against the lease table (DD_LEASE_TABLE) and the in-memory store.
    BenchLeases {
        #[arg(long, default_value_t = 300)]
        rounds: usize,
    },
    /// Provision, start the three functions locally, feed them from their queues, send a scripted mix of
    /// tasks (good, retried, poison, expired), wait until every queue is empty and print what happened.
    Demo {
        #[arg(long, default_value = "dualcaster-local")]
        stack: String,
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        /// Give up waiting for the queues to empty after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Keep the catalog and analytics of earlier runs (by default a demo starts from an empty catalog,
        /// and only on a database at 127.0.0.1 or localhost).
        #[arg(long)]
        keep_data: bool,
    },
}

#[derive(Subcommand)]
enum TemplateAction {
    /// Rewrite the generated schedules block from the registry.
    Sync,
    /// Fail if the generated block drifted or an invariant is broken.
    Check,
    /// Print the template without its functions, as plain CloudFormation (queues, DLQs, alarms, rules,
    /// the lease table): what a deploy rehearsal creates in LocalStack.
    Infra,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.env_file.is_file() {
        load_env_file(&cli.env_file)
            .with_context(|| format!("reading {}", cli.env_file.display()))?;
    }
    match cli.command {
        Command::Migrate => migrate().await,
        Command::Provision {
            stack,
            template,
            write_env,
        } => {
            let env = provision_stack(&stack, &template).await?;
            write_env_file(&write_env, &env)?;
            for (k, v) in &env {
                if k != "DATABASE_URL" {
                    println!("{k}={v}");
                }
            }
            eprintln!("wrote {}", write_env.display());
            Ok(())
        }
        Command::Tasks => {
            for spec in Registry::builtin().iter() {
                println!(
                    "{:<20} queue={:<10} max_retries={} base_delay={:?} max_delay={:?}",
                    spec.name,
                    spec.queue,
                    spec.retry.max_retries,
                    spec.retry.base_delay,
                    spec.retry.max_delay
                );
            }
            Ok(())
        }
        Command::Enqueue {
            task,
            kwargs,
            id,
            expires_in,
        } => {
            let settings = Settings::from_env()?;
            let (queue, mut envelope) = Registry::builtin()
                .envelope(&task, parse_kwargs(&kwargs)?)
                .map_err(|e| anyhow!("{e}"))?;
            envelope.id = Some(id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
            if let Some(secs) = expires_in {
                envelope.expires_at = Some(Utc::now() + chrono::Duration::seconds(secs));
            }
            let sqs = local_sqs().await;
            let message_id =
                send_message(&sqs, &settings.urls(queue).queue, &envelope.to_json()).await?;
            println!(
                "{}",
                json!({"queue": queue, "message_id": message_id, "envelope": envelope})
            );
            Ok(())
        }
        Command::Invoke { task, kwargs, id } => {
            let registry = Registry::builtin();
            let queue = registry.route(&task).map_err(|e| anyhow!("{e}"))?;
            let runtime = local_runtime(queue).await?;
            let mut envelope = Envelope::new(task, parse_kwargs(&kwargs)?);
            envelope.id = id;
            let payload = serde_json::to_value(&envelope)?;
            match runtime
                .handle(
                    payload,
                    Invocation::with_timeout("cli", Duration::from_secs(900)),
                )
                .await
            {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(())
                }
                Err(e) => bail!("{}: {}", e.error_type, e.message),
            }
        }
        Command::BenchLeases { rounds } => bench_leases(rounds).await,
        Command::BenchIngest {
            cards,
            sample,
            batch_size,
        } => bench::bench_ingest(&cards, &sample, batch_size).await,
        Command::BenchAnalytics {
            history,
            printings,
            days,
        } => bench_analytics::bench_analytics(&history, printings, days).await,
        Command::BenchRuntime {
            lambda_dir,
            arm64_dir,
            starts,
            batches,
        } => {
            bench_runtime::bench_runtime(&lambda_dir, &[&lambda_dir, &arm64_dir], starts, batches)
                .await
        }
        Command::Template { action, path } => template_command(action, &path),
        Command::Schedules { next } => list_schedules(next),
        Command::Demo {
            stack,
            template,
            timeout,
            keep_data,
        } => demo(&stack, &template, Duration::from_secs(timeout), keep_data).await,
    }
}

fn parse_kwargs(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text).context("--kwargs must be a JSON object")? {
        Value::Object(map) => Ok(map),
        other => bail!("--kwargs must be a JSON object, got {other}"),
    }
}

fn database_url() -> Result<String> {
    std::env::var("DATABASE_URL").map_err(|_| anyhow!("missing environment variable DATABASE_URL"))
}

async fn migrate() -> Result<()> {
    let pool = sqlx::PgPool::connect(&database_url()?)
        .await
        .context("connecting to DATABASE_URL")?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await?;
    eprintln!("migrations applied: {applied}");
    Ok(())
}

/// Creates the queues and returns the functions' environment for them.
async fn provision_stack(stack: &str, template: &Path) -> Result<BTreeMap<String, String>> {
    let template = Template::load(template)?;
    let sqs = local_sqs().await;
    let dynamodb = local_dynamodb().await;
    let provisioned = provision(&sqs, &dynamodb, &template, stack, &BTreeMap::new()).await?;
    let rules = provision_rules(
        &local_events().await,
        &template,
        stack,
        &provisioned,
        &BTreeMap::new(),
        None,
    )
    .await?;
    eprintln!("scheduled rules: {}", rules.join(", "));
    let mut env = local_aws_defaults();
    env.extend(provisioned.env);
    env.insert(
        "DATABASE_URL".into(),
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgresql://app:app@127.0.0.1:5432/app".into()),
    );
    Ok(env)
}

fn write_env_file(path: &Path, env: &BTreeMap<String, String>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = String::from(
        "# Written by `dualcaster provision`: the local stack's queues and services.\n",
    );
    for (k, v) in env {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn local_runtime(queue: Queue) -> Result<Runtime> {
    // Metrics lines belong in CloudWatch Logs, not in a terminal's report.
    if std::env::var_os("DD_METRICS_DISABLED").is_none() {
        std::env::set_var("DD_METRICS_DISABLED", "1");
    }
    let settings = Settings::from_env()?;
    dualcaster::function::build_with(
        queue,
        settings,
        &local_aws().await,
        format!("dualcaster-cli-{queue}"),
    )
    .map_err(|e| anyhow!("{e}"))
}

/// The date the bundled sample's prices were recorded, used as its bulk file version.
const SAMPLE_VERSION: &str = "2025-11-01T09:05:00Z";

/// task, status, disposition, runs, error classes
type RunSummaryRow = (Option<String>, String, String, i64, Option<String>);

async fn demo(stack: &str, template: &Path, timeout: Duration, keep_data: bool) -> Result<()> {
    let started = Utc::now();
    println!(
        "== provisioning queues for stack `{stack}` from {}",
        template.display()
    );
    let env = provision_stack(stack, template).await?;
    for (k, v) in &env {
        std::env::set_var(k, v);
    }
    migrate().await?;
    let settings = Settings::from_env()?;
    let pool = sqlx::PgPool::connect(settings.database_url()?.expose_secret()).await?;
    if !keep_data {
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
        .execute(&pool)
        .await?;
    }
    let sqs = local_sqs().await;
    // Start from empty queues, so the DLQ report below shows this run only.
    for queue in Queue::ALL {
        let urls = settings.urls(queue);
        for url in [&urls.queue, &urls.dlq] {
            let _ = sqs.purge_queue().queue_url(url).send().await;
        }
    }

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
    let functions = Template::load(template)?.functions;
    let mut sources = Vec::new();
    for queue in Queue::ALL {
        let log = PathBuf::from(format!(".local/logs/function-{queue}.log"));
        // Run each function as the template deploys it: its timeout, its own environment, its event
        // source's batch size and batching window.
        let definition = functions
            .get(queue.as_str())
            .ok_or_else(|| anyhow!("{} defines no `{queue}` function", template.display()))?;
        let mut env = function_env.clone();
        env.extend(definition.environment.clone());
        let function = LocalFunction::start(
            &format!("{stack}-{queue}"),
            &function_binary(queue)?,
            env,
            Duration::from_secs(definition.timeout_secs),
            Some(log.clone()),
        )
        .await?;
        let source = EventSource::new(
            sqs.clone(),
            &settings.urls(queue).queue,
            definition.batch_size,
            Duration::from_secs(definition.batching_window_secs),
        )
        .await?;
        println!(
            "== started the {queue} function (pid {:?}, logs in {})",
            function.pid(),
            log.display()
        );
        sources.push((queue, Arc::new(function), source));
    }

    // The event source mappings: one poller per queue.
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut pollers = Vec::new();
    for (queue, function, source) in &sources {
        let (queue, function, source, stop) =
            (*queue, function.clone(), source.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                let poll = source.poll_once(Duration::from_secs(1), |event| invoke_function(&function, event));
                tokio::select! {
                    _ = stop.notified() => return,
                    result = poll => match result {
                        Ok(d) if d.received > 0 => println!(
                            "   {queue}: batch of {} -> {} deleted, {} handed back{}",
                            d.received, d.deleted, d.failed.len(),
                            d.invoke_error.map(|e| format!(" (invoke failed: {e})")).unwrap_or_default()
                        ),
                        Ok(_) => {}
                        Err(e) => { eprintln!("   {queue}: poll failed: {e:#}"); tokio::time::sleep(Duration::from_secs(1)).await; }
                    }
                }
            }
        }));
    }

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
        let (_, envelope) = Registry::builtin()
            .envelope(task, kwargs.as_object().cloned().unwrap_or_default())
            .map_err(|e| anyhow!("{e}"))?;
        send_message(
            &sqs,
            &settings.urls(Queue::Ingestion).queue,
            &envelope.to_json(),
        )
        .await?;
    }

    println!("== sending a mix of messages to the default queue");
    let registry = Registry::builtin();
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
        send_message(&sqs, &default_url, body).await?;
        println!("   sent: {what}");
    }

    println!("== waiting for every queue to empty");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut backlog = 0;
        for (_, _, source) in &sources {
            backlog += source.backlog().await?;
        }
        if backlog == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("queues still hold {backlog} messages after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.notify_waiters();
    for p in pollers {
        p.abort();
    }

    println!("== task runs since the demo started (from task_runs)");
    let rows: Vec<RunSummaryRow> = sqlx::query_as(
        "SELECT task, status, disposition || CASE WHEN replayed THEN ' (replayed)' ELSE '' END, count(*), \
         string_agg(DISTINCT error_class, ',') \
         FROM task_runs WHERE started_at >= $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(started)
    .fetch_all(&pool)
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
            .fetch_one(&pool)
            .await?;
    println!("   heartbeats written by this demo: {heartbeats}");

    println!("== the catalog after ingestion (Postgres)");
    let (printings, points, days): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM printings), (SELECT count(*) FROM price_points), \
                (SELECT count(DISTINCT day) FROM price_points)",
    )
    .fetch_one(&pool)
    .await?;
    println!("   printings: {printings}, price points: {points} over {days} day(s)");
    let by_source: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT source, price_type, count(DISTINCT scryfall_id), count(*) FROM price_points GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
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
    .fetch_all(&pool)
    .await?;
    let metrics: i64 = sqlx::query_scalar("SELECT count(*) FROM price_metrics")
        .fetch_one(&pool)
        .await?;
    println!("   price metrics (compute_price_metrics, enqueued by each completed ingestion): {metrics} series");
    let movers: Vec<(String, String, rust_decimal::Decimal, rust_decimal::Decimal, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT p.name, p.set_code, m.latest_price, m.change_7d_pct, m.latest_day FROM price_metrics m \
         JOIN printings p USING (scryfall_id) \
         WHERE m.source = 'tcgplayer' AND m.finish = 'nonfoil' AND m.latest_price >= 1 AND m.change_7d_pct IS NOT NULL \
         ORDER BY m.change_7d_pct DESC, p.name LIMIT 3",
    )
    .fetch_all(&pool)
    .await?;
    let signals: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM price_signals GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
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
    .fetch_all(&pool)
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
            .fetch_all(&pool)
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
    .fetch_all(&pool)
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

    println!(
        "== dlq_report, invoked directly on the default function (as `aws lambda invoke` would)"
    );
    let default_fn = &sources
        .iter()
        .find(|(q, _, _)| *q == Queue::Default)
        .map(|(_, f, _)| f.clone());
    let default_fn = default_fn
        .as_ref()
        .ok_or_else(|| anyhow!("no default function"))?;
    match default_fn
        .invoke(json!({"task": "dlq_report", "kwargs": {"peek": 3, "queues": ["default"]}}))
        .await?
    {
        Invoked::Outcome(InvokeOutcome::Response(report)) => {
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
        other => bail!("dlq_report failed: {other:?}"),
    }
    println!(
        "== done: the functions stop with this process; queues and history stay for inspection"
    );
    Ok(())
}

/// Median and 95th percentile of `samples`, in microseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() - 1) as f64 * q).round() as usize].as_nanos() as f64 / 1000.0
    };
    (at(0.5), at(0.95))
}

async fn bench_leases(rounds: usize) -> Result<()> {
    use dualcaster::lease::memory::MemoryLeaseStore;
    use dualcaster::lease::{Lease, LeaseKind, LeaseStore};
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let table = std::env::var("DD_LEASE_TABLE")
        .map_err(|_| anyhow!("missing DD_LEASE_TABLE (run `make provision`)"))?;
    let dynamo = DynamoLeaseStore::new(local_dynamodb().await, table.clone());
    let memory = MemoryLeaseStore::new();
    let stores: [(&str, &dyn LeaseStore); 2] = [("dynamodb", &dynamo), ("in-memory", &memory)];
    println!(
        "lease operations, {rounds} rounds each; dynamodb = LocalStack -> moto, table {table}"
    );
    println!(
        "{:<38} {:>12} {:>12}",
        "store: operation", "median (us)", "p95 (us)"
    );
    for (name, store) in stores {
        let (mut acquire, mut held, mut renew, mut release) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let run = uuid::Uuid::new_v4().simple().to_string();
        for i in 0..rounds {
            let now = Utc::now();
            let key = format!("run:bench-{run}-{i}");
            let lease = Lease::new(
                &key,
                LeaseKind::Run,
                "bench",
                "bench",
                now,
                now + chrono::Duration::seconds(60),
            );
            let t = std::time::Instant::now();
            store.acquire(&lease, now).await?;
            acquire.push(t.elapsed());
            let mut rival = lease.clone();
            rival.owner = "rival".into();
            let t = std::time::Instant::now();
            store.acquire(&rival, now).await?;
            held.push(t.elapsed());
            let t = std::time::Instant::now();
            store
                .renew(&key, "bench", now + chrono::Duration::seconds(120), now)
                .await?;
            renew.push(t.elapsed());
            let t = std::time::Instant::now();
            store.release(&key, "bench").await?;
            release.push(t.elapsed());
        }
        for (op, samples) in [
            ("acquire, key free", acquire),
            ("acquire, key held (put + get)", held),
            ("renew", renew),
            ("release", release),
        ] {
            let (p50, p95) = percentiles(samples);
            println!(
                "{:<38} {:>12.1} {:>12.1}",
                format!("{name}: {op}"),
                p50,
                p95
            );
        }
    }
    Ok(())
}

fn template_command(action: TemplateAction, path: &Path) -> Result<()> {
    use dualcaster::infra;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = Registry::builtin();
    if let Err(problems) = registry.validate_schedules() {
        bail!("invalid schedules:\n  {}", problems.join("\n  "));
    }
    match action {
        TemplateAction::Sync => {
            let synced = infra::sync(&text, &registry)?;
            if synced == text {
                eprintln!("{} is up to date", path.display());
            } else {
                std::fs::write(path, synced)?;
                eprintln!("rewrote the schedules of {}", path.display());
            }
            Ok(())
        }
        TemplateAction::Infra => {
            let (plain, dropped) = infra::without_functions(&text)?;
            eprintln!("left out: {}", dropped.join(", "));
            print!("{plain}");
            Ok(())
        }
        TemplateAction::Check => {
            infra::check_drift(&text, &registry)?;
            let problems = infra::check_invariants(&text)?;
            if !problems.is_empty() {
                bail!(
                    "{} breaks deployment rules:\n  {}",
                    path.display(),
                    problems.join("\n  ")
                );
            }
            eprintln!(
                "{}: schedules match the registry; invariants hold",
                path.display()
            );
            Ok(())
        }
    }
}

fn list_schedules(next: usize) -> Result<()> {
    use dualcaster::schedule::ScheduleExpression;
    let registry = Registry::builtin();
    let now = Utc::now();
    for (spec, schedule) in registry.schedules() {
        let expr: ScheduleExpression = schedule
            .expression
            .parse()
            .map_err(|e| anyhow!("task `{}`, schedule `{}`: {e}", spec.name, schedule.name))?;
        println!(
            "{:<22} {:<10} {:<24} {}{}",
            schedule.rule_name(spec.name),
            spec.queue,
            schedule.expression,
            schedule.kwargs,
            if schedule.enabled { "" } else { "  (disabled)" }
        );
        for t in expr.upcoming(now, next) {
            println!("{:<22} next: {}", "", t.format("%Y-%m-%d %a %H:%M UTC"));
        }
        println!(
            "{:<22} why: {}",
            "",
            schedule
                .why
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
