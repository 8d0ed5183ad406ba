//! The local stack as the CLI uses it: migrations, provisioning from the template, the functions' runtime
//! in this process, and `dualcaster run`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use serde_json::{Map, Value};

use dualcaster::config::Settings;
use dualcaster::queue::Queue;
use dualcaster::runtime::Runtime;
use dualcaster_tools::local::cloudformation;
use dualcaster_tools::local::event_source::Dispatch;
use dualcaster_tools::local::system::{LocalSystem, Options, Runner};
use dualcaster_tools::local::{local_aws, local_aws_defaults, local_sqs};

pub fn parse_kwargs(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text).context("--kwargs must be a JSON object")? {
        Value::Object(map) => Ok(map),
        other => bail!("--kwargs must be a JSON object, got {other}"),
    }
}

pub async fn migrate(database_url: &str) -> Result<()> {
    let pool = sqlx::PgPool::connect(database_url)
        .await
        .context("connecting to DATABASE_URL")?;
    // The ops function's `migrate` action, run from here: the same checks and the same report.
    let report = dualcaster::migrations::migrate(&pool, false)
        .await
        .context("applying migrations")?;
    for m in &report.applied {
        eprintln!("applied {} {}", m.version, m.description);
    }
    eprintln!(
        "migrations: {} applied now, {} already there; schema version {}",
        report.applied.len(),
        report.already_applied,
        report.schema_version.unwrap_or_default()
    );
    Ok(())
}

/// Creates the stack through CloudFormation (the template without its functions) and returns the functions' environment
/// for it (`DATABASE_URL` always included).
pub async fn provision_stack(stack: &str, template: &Path) -> Result<BTreeMap<String, String>> {
    let provisioned = cloudformation::deploy(&local_aws().await, template, stack).await?;
    eprintln!(
        "stack {stack} created through CloudFormation: {} queues, {} table(s)",
        provisioned.urls.len(),
        provisioned.tables.len()
    );
    let mut env = local_aws_defaults();
    env.extend(provisioned.env);
    env.insert(
        "DATABASE_URL".into(),
        dualcaster_tools::local::database_url(),
    );
    Ok(env)
}

pub fn write_env_file(path: &Path, env: &BTreeMap<String, String>) -> Result<()> {
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

pub async fn local_runtime(queue: Queue) -> Result<Runtime> {
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
pub async fn local_ops() -> Result<dualcaster::ops::Ops> {
    Ok(dualcaster::ops::Ops::new(
        local_runtime(Queue::Default).await?,
        dualcaster::lazy_client::ready(local_sqs().await),
    ))
}

pub fn runner(emulator: bool, port: u16) -> Runner {
    if emulator {
        Runner::Emulator
    } else {
        Runner::Watch { port }
    }
}

/// `dualcaster run`: provision, start the functions and their event sources, and print each batch until
/// Ctrl-C (or `seconds`).
pub async fn run(stack: &str, template: &Path, runner: Runner, seconds: Option<u64>) -> Result<()> {
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
