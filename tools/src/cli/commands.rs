//! The everyday commands: provision the local stack, list the tasks, enqueue or invoke one, run an operator
//! action.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use serde_json::{json, Value};

use dualcaster::config::Settings;
use dualcaster::envelope::Envelope;
use dualcaster::runtime::Invocation;
use dualcaster_tools::local::watch::InvokeApi;
use dualcaster_tools::local::{local_sqs, send_message};

use crate::stack::{local_ops, local_runtime, parse_kwargs, provision_stack, write_env_file};

/// `dualcaster provision`: the template's queues, table and rules in LocalStack, and the env file.
pub async fn provision_command(stack: &str, template: &Path, write_env: &Path) -> Result<()> {
    let env = provision_stack(stack, template).await?;
    write_env_file(write_env, &env)?;
    for (k, v) in &env {
        if k != "DATABASE_URL" {
            println!("{k}={v}");
        }
    }
    eprintln!("wrote {}", write_env.display());
    Ok(())
}

/// `dualcaster tasks`: every registered task with its queue and retry policy.
pub fn list_tasks() {
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
}

/// `dualcaster enqueue`: a validated envelope on the task's queue.
pub async fn enqueue(
    task: &str,
    kwargs: &str,
    id: Option<String>,
    expires_in: Option<i64>,
) -> Result<()> {
    let settings = Settings::from_env()?;
    let (queue, mut envelope) = dualcaster::tasks::registry()
        .envelope(task, parse_kwargs(kwargs)?)
        .map_err(|e| anyhow!("{e}"))?;
    envelope.id = Some(id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
    if let Some(secs) = expires_in {
        envelope.expires_at = Some(Utc::now() + chrono::Duration::seconds(secs));
    }
    let sqs = local_sqs().await;
    let message_id = send_message(&sqs, &settings.urls(queue).queue, &envelope.to_json()).await?;
    println!(
        "{}",
        json!({"queue": queue, "message_id": message_id, "envelope": envelope})
    );
    Ok(())
}

/// `dualcaster invoke`: a direct invoke, through an Invoke API endpoint or in this process.
pub async fn invoke(
    task: String,
    kwargs: &str,
    id: Option<String>,
    endpoint: Option<String>,
) -> Result<()> {
    let queue = dualcaster::tasks::registry()
        .route(&task)
        .map_err(|e| anyhow!("{e}"))?;
    let mut envelope = Envelope::new(task, parse_kwargs(kwargs)?);
    envelope.id = id;
    let payload = serde_json::to_value(&envelope)?;
    let report = match endpoint {
        Some(endpoint) => InvokeApi::new(&endpoint, Duration::from_secs(960))
            .invoke(queue.as_str(), &payload)
            .await
            .map_err(|e| anyhow!("{e}"))?,
        None => local_runtime(queue)
            .await?
            .handle(
                payload,
                Invocation::with_timeout("cli", Duration::from_secs(900)),
            )
            .await
            .map_err(|e| anyhow!("{}: {}", e.error_type, e.message))?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `dualcaster ops`: an operator action, through the ops function's Invoke API or in this process.
pub async fn ops(request: &str, endpoint: Option<String>) -> Result<()> {
    let payload: Value =
        serde_json::from_str(request).context("the request must be a JSON object")?;
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
    match result {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}

/// `dualcaster status`: the stack's queues, runs, failures, schedules and leases; again every `watch`
/// seconds until Ctrl-C when asked.
pub async fn status(window: &str, watch: Option<u64>) -> Result<()> {
    use dualcaster::lease::dynamo::DynamoLeaseStore;
    use dualcaster::queue::Queue;
    use dualcaster_tools::status::{collect, parse_window, render, Sources};

    let window = parse_window(window)?;
    let settings = Settings::from_env()?;
    let db = sqlx::PgPool::connect(&dualcaster_tools::local::database_url())
        .await
        .context("connecting to DATABASE_URL")?;
    let sqs = local_sqs().await;
    let leases = DynamoLeaseStore::new(
        dualcaster_tools::local::local_dynamodb().await,
        settings.lease_table.clone(),
    );
    let registry = dualcaster::tasks::registry();
    let sources = Sources {
        sqs: &sqs,
        urls: Queue::ALL
            .iter()
            .map(|q| {
                let urls = settings.urls(*q);
                (*q, urls.queue.clone(), urls.dlq.clone())
            })
            .collect(),
        db: &db,
        leases: &leases,
        registry: &registry,
    };
    loop {
        let text = render(&collect(&sources, window, Utc::now()).await?);
        match watch {
            None => {
                print!("{text}");
                return Ok(());
            }
            Some(secs) => {
                // Clear the screen and start at the top, like `watch(1)`.
                print!("\x1b[2J\x1b[H{text}\n(refreshing every {secs} s; Ctrl-C to stop)\n");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
}
