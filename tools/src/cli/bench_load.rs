//! `dualcaster bench-load`: a sustained run of a realistic task mix through the local event source and the
//! real default function (built-in Runtime API, so its process can be watched): throughput, task latency,
//! retries, dead letters, nothing lost, and the function's memory and open sockets over the run.

use crate::stats::percentile;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Utc};
use serde_json::json;

use dualcaster::queue::Queue;
use dualcaster_tools::local::system::{LocalSystem, Options, Runner, Target};
use dualcaster_tools::local::template::{self, Template};
use dualcaster_tools::local::{local_aws_defaults, local_dynamodb, local_sqs};

/// One message of the mix: its body, and whether it should end acknowledged or dead-lettered.
fn message(run: &str, i: usize) -> (String, String, bool) {
    let id = format!("{run}-{i}");
    let body = match i % 100 {
        0..=69 => json!({"task": "noop", "id": id, "kwargs": {"label": i.to_string()}}),
        70..=94 => json!({"task": "ping", "id": id, "kwargs": {"note": "load"}}),
        95..=96 => json!({"task": "ping", "id": id, "kwargs": {"drill": "retryable"}}),
        97 => json!({"task": "ping", "id": id, "kwargs": {"drill": "permanent"}}),
        98 => json!({"task": "noop", "id": id, "kwargs": {"bogus": true}}),
        _ => {
            return (
                id,
                format!("{{\"task\": \"noop\", \"id\": \"{run}-{i}\""),
                false,
            )
        }
    };
    let dies = matches!(i % 100, 95..=99);
    (id, body.to_string(), !dies)
}

/// Resident memory and open sockets of a process.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count();
    Some((rss_kb, sockets))
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

pub async fn bench_load(template_path: &Path, messages: usize, rate: usize) -> Result<()> {
    if messages < 100 || rate == 0 {
        bail!("--messages must be at least 100 and --rate positive");
    }
    let template = Template::load(template_path)?;
    let sqs = local_sqs().await;
    let dynamodb = local_dynamodb().await;
    let run = format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let provisioned =
        template::provision(&sqs, &dynamodb, &template, &run, &BTreeMap::new()).await?;
    let database_url = dualcaster_tools::local::database_url();
    let pool = sqlx::PgPool::connect(&database_url).await?;
    let mut env = local_aws_defaults();
    env.extend(provisioned.env.clone());
    env.insert("DATABASE_URL".into(), database_url);
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    env.insert("RUST_LOG".into(), "warn".into());
    let result = async {
        let system = LocalSystem::start(
            sqs.clone(),
            Options {
                runner: Runner::Emulator,
                env: env.clone(),
                template: template_path.to_owned(),
                log_dir: PathBuf::from(".local/logs/load"),
                queues: vec![Queue::Default],
                profile: None,
            },
            Arc::new(|_, _| {}),
        )
        .await?;
        let pid = match system.target(Queue::Default) {
            Some(Target::Emulated(f)) => f.pid(),
            _ => None,
        }
        .ok_or_else(|| anyhow!("the default function is not running"))?;
        let url = env["DD_QUEUE_URL_DEFAULT"].clone();

        // Sample the function process every 250 ms while the run lasts.
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Some(s) = sample(pid) {
                    samples.push(s);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop_rx.changed() => return samples,
                }
            }
        });

        // Send at `rate` messages per second, ten per request.
        let started = Instant::now();
        let started_at = Utc::now();
        let mut sent_at: HashMap<String, DateTime<Utc>> = HashMap::new();
        let mut expected_ok = 0usize;
        let mut expected_dead = 0usize;
        let mut bad_bodies = 0usize;
        for chunk_start in (0..messages).step_by(10) {
            let due = started + Duration::from_secs_f64(chunk_start as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let mut entries = Vec::new();
            for i in chunk_start..(chunk_start + 10).min(messages) {
                let (id, body, ok) = message(&run, i);
                if ok {
                    expected_ok += 1;
                } else {
                    expected_dead += 1;
                }
                if i % 100 == 99 {
                    bad_bodies += 1;
                }
                sent_at.insert(id, Utc::now());
                entries.push(
                    SendMessageBatchRequestEntry::builder()
                        .id((i - chunk_start).to_string())
                        .message_body(body)
                        .build()
                        .map_err(|e| anyhow!("{e}"))?,
                );
            }
            let out = sqs
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow!("SendMessageBatch: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
            if !out.failed().is_empty() {
                bail!("SendMessageBatch: {} entries failed", out.failed().len());
            }
        }
        let sending = started.elapsed();
        system.drain(Duration::from_secs(900)).await?;
        let elapsed = started.elapsed();
        let totals = (
            system.totals.received.load(Ordering::Relaxed),
            system.totals.deleted.load(Ordering::Relaxed),
            system.totals.handed_back.load(Ordering::Relaxed),
            system.totals.failed_invocations.load(Ordering::Relaxed),
        );
        let _ = stop_tx.send(true);
        let samples = sampler.await?;
        system.stop().await;

        // What happened to each message, from the run history.
        let rows: Vec<(String, String, String, i64, DateTime<Utc>, i32)> = sqlx::query_as(
            "SELECT run_key, status, disposition, duration_ms, finished_at, attempt FROM task_runs \
             WHERE run_key LIKE $1 AND started_at >= $2",
        )
        .bind(format!("{run}-%"))
        .bind(started_at)
        .fetch_all(&pool)
        .await?;
        let malformed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task_runs WHERE queue = 'default' AND error_class = 'malformed_message' \
             AND started_at >= $1",
        )
        .bind(started_at)
        .fetch_one(&pool)
        .await?;
        let mut done_ok = 0usize;
        let mut dead = 0usize;
        let mut retries = 0usize;
        let mut run_ms: Vec<f64> = Vec::new();
        let mut end_to_end_ms: Vec<f64> = Vec::new();
        let mut finals: HashMap<&str, usize> = HashMap::new();
        let mut first_attempts_done = started_at;
        let mut first_attempts = 0usize;
        for (key, status, disposition, duration_ms, finished_at, attempt) in &rows {
            run_ms.push(*duration_ms as f64);
            if *attempt == 1 {
                first_attempts += 1;
                first_attempts_done = first_attempts_done.max(*finished_at);
            }
            match disposition.as_str() {
                "retry_scheduled" => retries += 1,
                "dead_lettered" => {
                    dead += 1;
                    *finals.entry(key).or_default() += 1;
                }
                "acknowledged" if status == "succeeded" => {
                    done_ok += 1;
                    *finals.entry(key).or_default() += 1;
                    if let Some(t) = sent_at.get(key) {
                        end_to_end_ms.push((*finished_at - *t).num_milliseconds() as f64);
                    }
                }
                _ => {}
            }
        }
        let doubled = finals.values().filter(|n| **n > 1).count();
        let lost = messages - finals.len() - bad_bodies.min(malformed as usize);

        println!(
            "{messages} messages sent at {rate}/s over {:.1} s (70% noop, 25% ping, 2% retryable failures, 1% permanent, 1% invalid kwargs, 1% not JSON) to the default function (built-in Runtime API, `{}` build)",
            sending.as_secs_f64(),
            crate::bench::build_profile().unwrap_or_default()
        );
        let first_span = (first_attempts_done - started_at).num_milliseconds() as f64 / 1000.0;
        println!(
            "throughput: {first_attempts} first attempts done {first_span:.1} s after the first send ({:.0} messages/s); the last retry was done after {:.1} s; event source: {} received, {} deleted, {} handed back, {} failed invocations",
            first_attempts as f64 / first_span.max(0.001),
            elapsed.as_secs_f64(),
            totals.0,
            totals.1,
            totals.2,
            totals.3
        );
        println!(
            "outcomes: {done_ok} succeeded (expected {expected_ok}), {dead} dead-lettered with a task + {malformed} not JSON (expected {expected_dead} in all), {retries} retries, duplicated {doubled}, lost {lost}"
        );
        println!(
            "task run time: p50 {:.0} ms, p99 {:.0} ms; send to done (succeeded): p50 {:.0} ms, p99 {:.0} ms",
            percentile(&mut run_ms, 0.5),
            percentile(&mut run_ms, 0.99),
            percentile(&mut end_to_end_ms, 0.5),
            percentile(&mut end_to_end_ms, 0.99)
        );
        // Warm-up (pool connections opening, first allocations) is the first quarter: growth is judged
        // between the second and the last.
        let quarter = (samples.len() / 4).max(1);
        let rss: Vec<f64> = samples.iter().map(|s| s.0 as f64 / 1024.0).collect();
        let sockets: Vec<f64> = samples.iter().map(|s| s.1 as f64).collect();
        let peak_rss = rss.iter().copied().fold(0.0, f64::max);
        println!(
            "function process: peak RSS {peak_rss:.1} MB; mean RSS second quarter {:.1} MB, last quarter {:.1} MB; mean open sockets second quarter {:.1}, last quarter {:.1}, max {:.0} ({} samples, every 250 ms)",
            mean(&rss[quarter..(2 * quarter).min(rss.len())]),
            mean(&rss[rss.len() - quarter..]),
            mean(&sockets[quarter..(2 * quarter).min(sockets.len())]),
            mean(&sockets[sockets.len() - quarter..]),
            sockets.iter().copied().fold(0.0, f64::max),
            samples.len()
        );
        if lost != 0 || doubled != 0 || done_ok != expected_ok {
            bail!("the run lost or doubled work: see above");
        }
        anyhow::Ok(())
    }
    .await;
    template::delete(&sqs, &dynamodb, &provisioned).await;
    result
}
