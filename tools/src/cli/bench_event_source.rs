//! `dualcaster bench-event-source`: end-to-end throughput of the local event source (LocalStack SQS ->
//! receive -> invoke the real default function with the `noop` task -> delete) against the raw
//! ReceiveMessage + DeleteMessageBatch rate of the same LocalStack, in one run, on fresh queues.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use serde_json::json;

use dualcaster::queue::Queue;
use dualcaster_tools::local::system::{LocalSystem, Options, Runner};
use dualcaster_tools::local::template::{self, Template};
use dualcaster_tools::local::{local_aws_defaults, local_dynamodb, local_sqs};

fn sdk<E: std::error::Error + 'static>(what: &str, e: E) -> anyhow::Error {
    anyhow!("{what}: {}", aws_sdk_sqs::error::DisplayErrorContext(&e))
}

/// Sends `bodies` to `url` in batches of ten, eight batches in flight.
async fn fill(sqs: &aws_sdk_sqs::Client, url: &str, bodies: Vec<String>) -> Result<()> {
    use futures::StreamExt;
    let chunks: Vec<Vec<String>> = bodies.chunks(10).map(<[String]>::to_vec).collect();
    let results: Vec<Result<()>> = futures::stream::iter(chunks)
        .map(|chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(b)
                        .build()
                        .map_err(|e| anyhow!("{e}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let out = sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk("SendMessageBatch", e))?;
            if !out.failed().is_empty() {
                bail!("SendMessageBatch: {} failed", out.failed().len());
            }
            Ok(())
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// One consumer receiving ten at a time and deleting each batch, until `n` are gone: messages/s.
async fn raw_receive_delete(sqs: &aws_sdk_sqs::Client, url: &str, n: usize) -> Result<f64> {
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| sdk("ReceiveMessage", e))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            continue;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .map_err(|e| anyhow!("{e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let deleted = sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk("DeleteMessageBatch", e))?;
        done += deleted.successful().len();
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The event source feeding the default function until `n` noop messages are deleted: messages/s.
async fn through_event_source(
    sqs: &aws_sdk_sqs::Client,
    env: &BTreeMap<String, String>,
    template: &Path,
    runner: Runner,
    profile: Option<String>,
    n: usize,
) -> Result<f64> {
    let system = LocalSystem::start(
        sqs.clone(),
        Options {
            runner,
            env: env.clone(),
            template: template.to_owned(),
            log_dir: PathBuf::from(".local/logs/bench"),
            queues: vec![Queue::Default],
            profile,
        },
        Arc::new(|_, _| {}),
    )
    .await?;
    // Warm up: the function's cold start (and, under cargo lambda, cargo's start of the binary) is not
    // throughput.
    let target = system
        .target(Queue::Default)
        .ok_or_else(|| anyhow!("no default function"))?;
    target
        .invoke(json!({"task": "noop", "kwargs": {"label": "warm-up"}}))
        .await
        .map_err(|e| anyhow!("warm-up invoke: {e}"))?;
    eprintln!("  warm-up invoke done");
    let url = &env["DD_QUEUE_URL_DEFAULT"];
    let bodies = (0..n)
        .map(|i| {
            json!({"v": 1, "task": "noop", "id": format!("bench-{}", uuid::Uuid::new_v4()), "kwargs": {"label": i.to_string()}})
                .to_string()
        })
        .collect();
    // Fill first, then time the draining alone, as for the raw rate.
    let totals = system.totals.clone();
    let paused = totals.received.load(Ordering::Relaxed);
    if paused != 0 {
        bail!("the default queue was not empty");
    }
    fill(sqs, url, bodies).await?;
    eprintln!("  {n} noop messages sent; draining");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while (totals.deleted.load(Ordering::Relaxed) as usize) < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} deleted after 600 s",
                totals.deleted.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let failed = totals.handed_back.load(Ordering::Relaxed)
        + totals.failed_invocations.load(Ordering::Relaxed);
    system.stop().await;
    if failed > 0 {
        bail!("{failed} records or invocations failed: see .local/logs/bench");
    }
    Ok(rate)
}

pub async fn bench_event_source(template_path: &Path, messages: usize, port: u16) -> Result<()> {
    if messages < 10 {
        bail!("--messages must be at least 10");
    }
    let template = Template::load(template_path)?;
    let sqs = local_sqs().await;
    let dynamodb = local_dynamodb().await;
    let stack = format!(
        "bench-es-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let provisioned =
        template::provision(&sqs, &dynamodb, &template, &stack, &BTreeMap::new()).await?;
    let mut env = local_aws_defaults();
    env.extend(provisioned.env.clone());
    env.insert(
        "DATABASE_URL".into(),
        dualcaster_tools::local::database_url(),
    );
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    env.insert(
        "RUST_LOG".into(),
        std::env::var("BENCH_LOG").unwrap_or("warn".into()),
    );
    // The functions of the same build as this command (`make bench-event-source` builds `profiling`).
    let profile = crate::bench::build_profile().filter(|d| d != "debug");
    let url = env["DD_QUEUE_URL_DEFAULT"].clone();
    let result = async {
        let bodies: Vec<String> = (0..messages).map(|i| format!("raw-{i}")).collect();
        fill(&sqs, &url, bodies).await?;
        let raw = raw_receive_delete(&sqs, &url, messages).await?;
        eprintln!("raw receive + delete: {raw:.0} msg/s");
        let watch = through_event_source(
            &sqs,
            &env,
            template_path,
            Runner::Watch { port },
            profile.clone(),
            messages,
        )
        .await?;
        eprintln!("event source, cargo lambda watch: {watch:.0} msg/s");
        let emulated = through_event_source(
            &sqs,
            &env,
            template_path,
            Runner::Emulator,
            profile.clone(),
            messages,
        )
        .await?;
        anyhow::Ok((raw, watch, emulated))
    }
    .await;
    template::delete(&sqs, &dynamodb, &provisioned).await;
    let (raw, watch, emulated) = result?;
    println!(
        "{messages} messages per measurement, one consumer, batches of 10, default queue of a fresh stack; functions built with the `{}` profile",
        profile.as_deref().unwrap_or("dev")
    );
    println!("{:<62} {:>10} {:>10}", "path", "msg/s", "vs raw");
    println!(
        "{:<62} {:>10.0} {:>9.2}x",
        "raw ReceiveMessage + DeleteMessageBatch (LocalStack)", raw, 1.0
    );
    println!(
        "{:<62} {:>10.0} {:>9.2}x",
        "event source -> Invoke API (cargo lambda watch) -> noop",
        watch,
        watch / raw
    );
    println!(
        "{:<62} {:>10.0} {:>9.2}x",
        "event source -> built-in Runtime API -> noop",
        emulated,
        emulated / raw
    );
    Ok(())
}
