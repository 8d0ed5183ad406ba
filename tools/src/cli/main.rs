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
mod bench_event_source;
mod bench_load;
mod bench_runtime;
mod demo;
mod mcp;
mod mcp_args;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use dualcaster::config::Settings;

use dualcaster::db::MIGRATOR;
use dualcaster::envelope::Envelope;
use dualcaster::lease::dynamo::DynamoLeaseStore;
use dualcaster::queue::Queue;
use dualcaster::runtime::{Invocation, Runtime};
use dualcaster_tools::local::event_source::Dispatch;
use dualcaster_tools::local::system::{LocalSystem, Options, Runner};
use dualcaster_tools::local::template::{provision, provision_rules, Template};
use dualcaster_tools::local::watch::InvokeApi;
use dualcaster_tools::local::{
    load_env_file, local_aws, local_aws_defaults, local_dynamodb, local_events, local_sqs,
    send_message,
};

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
    /// Run one task as a direct invoke of its function and print the report: in this process, or with
    /// --endpoint through the Lambda Invoke API of the function that serves the task's queue (the local
    /// `dualcaster run` serves it on http://127.0.0.1:9000).
    Invoke {
        task: String,
        #[arg(long, default_value = "{}")]
        kwargs: String,
        #[arg(long)]
        id: Option<String>,
        /// A Lambda Invoke API endpoint, e.g. http://127.0.0.1:9000.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Run an operator action (the `ops` function's payload) and print its report: in this process, or
    /// with --endpoint through the Lambda Invoke API of the `ops` function. E.g.
    /// `dualcaster ops '{"action":"dlq_stats","peek":3}'`; actions: dlq_stats, redrive, purge, schedules,
    /// leases, release_lease, trigger.
    Ops {
        request: String,
        /// A Lambda Invoke API endpoint, e.g. http://127.0.0.1:9000.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Serve the operator actions as MCP tools on stdin/stdout (for operators' assistants).
    Mcp,
    /// The whole system on this machine until Ctrl-C: provision the queues and schedules, run the
    /// functions under `cargo lambda watch` and feed each from its queue as the event source mapping does.
    Run {
        #[arg(long, default_value = "dualcaster-local")]
        stack: String,
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        /// The Invoke API port of `cargo lambda watch`.
        #[arg(long, default_value_t = 9000)]
        port: u16,
        /// Run the functions under the built-in Runtime API instead of `cargo lambda watch`.
        #[arg(long)]
        emulator: bool,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
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
    /// Throughput of the local event source (noop tasks through the real default function) against the
    /// raw ReceiveMessage + DeleteMessageBatch rate of LocalStack, in one run.
    BenchEventSource {
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// The Invoke API port of `cargo lambda watch`.
        #[arg(long, default_value_t = 9000)]
        port: u16,
    },
    /// A sustained run of a realistic task mix through the local event source and the real default
    /// function: throughput, task latency, retries, nothing lost, the function's memory and sockets.
    BenchLoad {
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Messages sent per second.
        #[arg(long, default_value_t = 200)]
        rate: usize,
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
        /// The Invoke API port of `cargo lambda watch`.
        #[arg(long, default_value_t = 9000)]
        port: u16,
        /// Run the functions under the built-in Runtime API instead of `cargo lambda watch`.
        #[arg(long)]
        emulator: bool,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The env file joins the process environment before any thread exists; nothing sets a variable later.
    if cli.env_file.is_file() {
        load_env_file(&cli.env_file)
            .with_context(|| format!("reading {}", cli.env_file.display()))?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(execute(cli))
}

async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Migrate => migrate(&database_url()?).await,
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
            for spec in dualcaster::tasks::registry().iter() {
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
            let (queue, mut envelope) = dualcaster::tasks::registry()
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
        Command::Invoke {
            task,
            kwargs,
            id,
            endpoint: Some(endpoint),
        } => {
            let queue = dualcaster::tasks::registry()
                .route(&task)
                .map_err(|e| anyhow!("{e}"))?;
            let mut envelope = Envelope::new(task, parse_kwargs(&kwargs)?);
            envelope.id = id;
            let api = InvokeApi::new(&endpoint, Duration::from_secs(960));
            match api
                .invoke(queue.as_str(), &serde_json::to_value(&envelope)?)
                .await
            {
                Ok(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
        Command::Invoke {
            task,
            kwargs,
            id,
            endpoint: None,
        } => {
            let registry = dualcaster::tasks::registry();
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
        Command::Ops { request, endpoint } => {
            let payload: Value =
                serde_json::from_str(&request).context("the request must be a JSON object")?;
            let result = match endpoint {
                Some(endpoint) => InvokeApi::new(&endpoint, Duration::from_secs(960))
                    .invoke("ops", &payload)
                    .await
                    .map_err(|e| anyhow!("{e}")),
                None => {
                    let request = dualcaster::ops::parse(payload)
                        .map_err(|e| anyhow!("{}: {}", e.error_type, e.message))?;
                    local_ops()
                        .await?
                        .execute(
                            request,
                            Invocation::with_timeout("cli", Duration::from_secs(900)),
                        )
                        .await
                        .map_err(|e| anyhow!("{}: {}", e.error_type, e.message))
                }
            };
            println!("{}", serde_json::to_string_pretty(&result?)?);
            Ok(())
        }
        Command::Mcp => mcp::serve(local_ops().await?).await,
        Command::BenchLeases { rounds } => bench_leases(rounds).await,
        Command::BenchLoad {
            template,
            messages,
            rate,
        } => bench_load::bench_load(&template, messages, rate).await,
        Command::BenchEventSource {
            template,
            messages,
            port,
        } => bench_event_source::bench_event_source(&template, messages, port).await,
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
            port,
            emulator,
        } => {
            demo::demo(
                &stack,
                &template,
                Duration::from_secs(timeout),
                keep_data,
                runner(emulator, port),
            )
            .await
        }
        Command::Run {
            stack,
            template,
            port,
            emulator,
            seconds,
        } => run(&stack, &template, runner(emulator, port), seconds).await,
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

async fn migrate(database_url: &str) -> Result<()> {
    let pool = sqlx::PgPool::connect(database_url)
        .await
        .context("connecting to DATABASE_URL")?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await?;
    eprintln!("migrations applied: {applied}");
    Ok(())
}

/// Creates the queues and returns the functions' environment for them (`DATABASE_URL` always included).
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
    let settings = Settings::from_lookup(|name| match std::env::var(name) {
        Ok(value) => Some(value),
        Err(_) if name == "DD_METRICS_DISABLED" => Some("1".into()),
        Err(_) => None,
    })?;
    dualcaster::function::build_with(
        queue,
        settings,
        &local_aws().await,
        format!("dualcaster-cli-{queue}"),
    )
    .map_err(|e| anyhow!("{e}"))
}

/// The operator actions, run in this process as the `ops` function runs them.
async fn local_ops() -> Result<dualcaster::ops::Ops> {
    Ok(dualcaster::ops::Ops::new(
        local_runtime(Queue::Default).await?,
        local_sqs().await,
    ))
}

fn runner(emulator: bool, port: u16) -> Runner {
    if emulator {
        Runner::Emulator
    } else {
        Runner::Watch { port }
    }
}

/// `dualcaster run`: provision, start the functions and their event sources, and print each batch until
/// Ctrl-C (or `seconds`).
async fn run(stack: &str, template: &Path, runner: Runner, seconds: Option<u64>) -> Result<()> {
    let env = provision_stack(stack, template).await?;
    migrate(&env["DATABASE_URL"]).await?;
    let system = LocalSystem::start(
        local_sqs().await,
        Options {
            runner,
            env,
            template: template.to_owned(),
            log_dir: PathBuf::from(".local/logs"),
            queues: Queue::ALL.to_vec(),
            profile: None,
        },
        Arc::new(|queue, d: &Dispatch| println!("{} {queue}: {d}", Utc::now().format("%H:%M:%S"))),
    )
    .await?;
    match system.invoke_endpoint() {
        Some(endpoint) => println!(
            "functions under `cargo lambda watch`: Invoke API {endpoint} (functions: ingestion, analytics, default, ops); logs in .local/logs/watch.log"
        ),
        None => println!("functions under the built-in Runtime API; logs in .local/logs/function-<queue>.log"),
    }
    println!("event sources polling the {stack} queues; schedules fire from LocalStack's EventBridge rules. Ctrl-C stops.");
    match seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    let totals = &system.totals;
    println!(
        "stopping: {} batches, {} messages received, {} deleted, {} handed back, {} failed invocations",
        totals.batches.load(std::sync::atomic::Ordering::Relaxed),
        totals.received.load(std::sync::atomic::Ordering::Relaxed),
        totals.deleted.load(std::sync::atomic::Ordering::Relaxed),
        totals.handed_back.load(std::sync::atomic::Ordering::Relaxed),
        totals.failed_invocations.load(std::sync::atomic::Ordering::Relaxed),
    );
    system.stop().await;
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
    use dualcaster_tools::infra;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let registry = dualcaster::tasks::registry();
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
    let registry = dualcaster::tasks::registry();
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
