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

mod args;
mod bench;
mod bench_analytics;
mod bench_event_source;
mod bench_leases;
mod bench_load;
mod bench_runtime;
mod demo;
mod mcp;
mod mcp_args;
mod stack;
mod stats;
mod template;

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use clap::Parser;
use serde_json::{json, Value};

use dualcaster::config::Settings;
use dualcaster::envelope::Envelope;
use dualcaster::runtime::Invocation;
use dualcaster_tools::local::watch::InvokeApi;
use dualcaster_tools::local::{load_env_file, local_sqs, send_message};

use args::{Cli, Command};
use bench_leases::bench_leases;
use stack::{
    database_url, local_ops, local_runtime, migrate, parse_kwargs, provision_stack, run, runner,
    write_env_file,
};
use template::{list_schedules, template_command};

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
