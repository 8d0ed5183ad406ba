//! `dualcaster bench-runtime`: what the runtime itself costs. The real function binaries' start-up (spawn to
//! their first poll of a local Runtime API, with settings, clients and the lazy pool built), next to a
//! hello-world `lambda_runtime` function's built and timed alike in the same run, the size of each
//! packaged zip, and the runtime's own work per message for batches of ten no-op messages, in process.

use crate::stats::percentile;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use dualcaster::config::Settings;
use dualcaster::context::{Services, Upstreams};
use dualcaster::db::RunLog;
use dualcaster::lease::memory::MemoryLeaseStore;
use dualcaster::queue::{Queue, SqsQueueOps};
use dualcaster::registry::{Registry, TaskSpec};
use dualcaster::runtime::{Invocation, Runtime};
use dualcaster::tasks::noop::Noop;
use dualcaster_tools::local::function::LocalFunction;

/// The settings every function needs, pointing nowhere: start-up builds clients but connects to nothing.
fn offline_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for q in Queue::ALL {
        let suffix = q.as_str().to_uppercase();
        env.insert(
            format!("DD_QUEUE_URL_{suffix}"),
            format!("http://127.0.0.1:9/000000000000/{q}"),
        );
        env.insert(
            format!("DD_DLQ_URL_{suffix}"),
            format!("http://127.0.0.1:9/000000000000/{q}-dlq"),
        );
    }
    env.insert(
        "DATABASE_URL".into(),
        "postgresql://bench:bench@127.0.0.1:9/bench".into(),
    );
    env.insert("DD_LEASE_TABLE".into(), "bench-leases".into());
    env.insert("AWS_REGION".into(), "us-east-1".into());
    env.insert("AWS_ACCESS_KEY_ID".into(), "bench".into());
    env.insert("AWS_SECRET_ACCESS_KEY".into(), "bench".into());
    env.insert("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into());
    env.insert("RUST_LOG".into(), "warn".into());
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    env
}

/// The hello-world `lambda_runtime` function packaged beside the real ones: the start-up floor.
const FLOOR: &str = "minimal";

/// One binary's start-up: spawn to first poll of the Runtime API.
async fn start_once(name: &str, binary: &Path) -> Result<f64> {
    let started = Instant::now();
    let function = LocalFunction::start(
        &format!("bench-{name}"),
        binary,
        offline_env(),
        Duration::from_secs(30),
        None,
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(10), function.polled())
        .await
        .map_err(|_| anyhow!("{} never polled the Runtime API", binary.display()))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    drop(function);
    Ok(elapsed)
}

/// Spawn to first poll, `starts` times for each function binary in `bin_dir` and for the floor. The binaries
/// take turns start by start, so a slow spell of this machine falls on all of them alike.
async fn start_up(bin_dir: &Path, starts: usize) -> Result<Vec<(String, f64, f64)>> {
    let names: Vec<&str> = std::iter::once(FLOOR)
        .chain(Queue::ALL.iter().map(|q| q.as_str()))
        .chain(["ops"])
        .collect();
    let binaries: Vec<_> = names
        .iter()
        .map(|name| bin_dir.join(name).join("bootstrap"))
        .collect();
    if let Some(missing) = binaries.iter().find(|b| !b.exists()) {
        return Err(anyhow!(
            "{} is missing: `make bench-runtime` packages it (WITH_FLOOR=1 scripts/package.sh x86_64)",
            missing.display()
        ));
    }
    let mut samples = vec![Vec::with_capacity(starts); names.len()];
    for _ in 0..starts {
        for (i, binary) in binaries.iter().enumerate() {
            samples[i].push(start_once(names[i], binary).await?);
        }
    }
    Ok(names
        .iter()
        .zip(samples.iter_mut())
        .map(|(name, s)| (name.to_string(), percentile(s, 0.5), percentile(s, 0.95)))
        .collect())
}

fn batch(size: usize, round: usize) -> Value {
    let records: Vec<Value> = (0..size)
        .map(|i| {
            json!({
                "messageId": format!("m-{round}-{i}"),
                "receiptHandle": format!("r-{round}-{i}"),
                "body": json!({"v": 1, "task": "noop", "id": format!("noop-{round}-{i}"), "kwargs": {"label": format!("{i}")}}).to_string(),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764115200000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:bench-default",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The runtime's time per message over `batches` batches of ten no-op messages (median and p95 of the
/// batches, divided by ten).
async fn per_message(batches: usize) -> Result<(f64, f64)> {
    let env = offline_env();
    let settings = Settings::from_lookup(|k| env.get(k).cloned())?;
    let db = dualcaster::db::lazy_pool(&settings)?;
    let aws = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let upstreams = Upstreams::from_settings(&settings)?;
    let services = Arc::new(Services {
        settings,
        db,
        db_secret: None,
        sqs: dualcaster::lazy_client::ready(sqs.clone()),
        leases: Arc::new(MemoryLeaseStore::new()),
        upstreams,
    });
    let registry = Registry::from_specs([TaskSpec::of::<Noop>()]).map_err(|e| anyhow!("{e:?}"))?;
    let runtime = Runtime::new(
        Queue::Default,
        registry,
        services,
        Arc::new(SqsQueueOps::new(sqs)),
        RunLog::Disabled,
        "bench-default",
    );
    let mut samples = Vec::with_capacity(batches);
    for round in 0..batches + 100 {
        let payload = batch(10, round);
        let invocation = Invocation {
            request_id: format!("bench-{round}"),
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
            deadline_at: chrono::Utc::now() + chrono::Duration::seconds(60),
            trace_header: None,
        };
        let started = Instant::now();
        let response = runtime
            .handle(payload, invocation)
            .await
            .map_err(|e| anyhow!("{e:?}"))?;
        let elapsed = started.elapsed();
        if response["batchItemFailures"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            return Err(anyhow!("no-op batch reported failures: {response}"));
        }
        // The first hundred batches warm up allocators and caches.
        if round >= 100 {
            samples.push(elapsed.as_secs_f64() * 1e6 / 10.0);
        }
    }
    Ok((
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.95),
    ))
}

pub async fn bench_runtime(
    bin_dir: &Path,
    zip_dirs: &[&Path],
    starts: usize,
    batches: usize,
) -> Result<()> {
    let starts_rows = start_up(bin_dir, starts).await?;
    println!(
        "start-up: spawn to first Runtime API poll, {starts} starts each, binaries in {}",
        bin_dir.display()
    );
    let floor = starts_rows
        .iter()
        .find(|(name, _, _)| name == FLOOR)
        .map(|(_, median, _)| *median)
        .unwrap_or(f64::NAN);
    println!(
        "{:<12} {:>12} {:>12} {:>14}",
        "function", "median ms", "p95 ms", "median vs floor"
    );
    for (name, median, p95) in &starts_rows {
        let label = if name == FLOOR {
            "minimal (floor: hello-world lambda_runtime)".to_owned()
        } else {
            String::new()
        };
        println!(
            "{:<12} {median:>12.2} {p95:>12.2} {:>13.2}x  {label}",
            name,
            median / floor
        );
    }
    println!("target: each function's median within 1.5x of the floor's");
    println!("zip sizes (cargo lambda build --release --output-format zip):");
    let mut any = false;
    for dir in zip_dirs {
        for function in Queue::ALL.iter().map(|q| q.as_str()).chain(["ops"]) {
            let zip = dir.join(function).join("bootstrap.zip");
            if let Ok(meta) = std::fs::metadata(&zip) {
                any = true;
                println!(
                    "  {:<48} {:>8.2} MB",
                    zip.display(),
                    meta.len() as f64 / 1e6
                );
            }
        }
    }
    if !any {
        println!("  (no zips found: run `make package` first)");
    }
    let (median, p95) = per_message(batches).await?;
    println!(
        "runtime work per message, batches of 10 no-op messages in process ({batches} batches): median {median:.1} us, p95 {p95:.1} us"
    );
    Ok(())
}
