//! `dualcaster`: the operator and developer command line for the task platform.
//!
//! ```text
//! dualcaster migrate                          apply the embedded migrations to DATABASE_URL
//! dualcaster provision --stack NAME           create the template's queues (LocalStack) and write an env file
//! dualcaster enqueue TASK --kwargs '{...}'    validate and send an envelope to the task's queue
//! dualcaster invoke TASK --kwargs '{...}'     run a task here, synchronously, and print its report
//! dualcaster tasks                            list registered tasks with their queue and retry policy
//! dualcaster status [--watch 5]               queues, runs, failures, schedules and leases in one place
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
mod commands;
mod cpu_time;
mod demo;
mod mcp;
mod mcp_args;
mod stack;
mod stats;
mod template;

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;

use dualcaster_tools::local::load_env_file;

use args::{Cli, Command};
use bench_leases::bench_leases;
use commands::{enqueue, invoke, list_tasks, ops, provision_command, status};
use stack::{local_ops, migrate, run, runner};
use template::{list_schedules, template_command};

/// An error ends the command with one line, `error: <what failed>: <why>`, the causes joined in order. The
/// backtrace that `RUST_BACKTRACE=1` makes anyhow capture is printed only when `DUALCASTER_BACKTRACE=1` asks
/// for it: many shells set `RUST_BACKTRACE` for every program, and thirty frames would push the message off
/// the screen.
fn main() -> std::process::ExitCode {
    match main_inner() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if std::env::var_os("DUALCASTER_BACKTRACE").is_some_and(|v| v == "1") {
                eprintln!("{e:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_inner() -> Result<()> {
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
        Command::Migrate => migrate(&dualcaster_tools::local::database_url()).await,
        Command::Provision {
            stack,
            template,
            write_env,
        } => provision_command(&stack, &template, &write_env).await,
        Command::Tasks => {
            list_tasks();
            Ok(())
        }
        Command::Enqueue {
            task,
            kwargs,
            id,
            expires_in,
        } => enqueue(&task, &kwargs, id, expires_in).await,
        Command::Invoke {
            task,
            kwargs,
            id,
            endpoint,
        } => invoke(task, &kwargs, id, endpoint).await,
        Command::Ops { request, endpoint } => ops(&request, endpoint).await,
        Command::Mcp => mcp::serve(local_ops().await?).await,
        Command::Status { window, watch } => status(&window, watch).await,
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
            rounds,
        } => bench::bench_ingest(&cards, &sample, batch_size, rounds).await,
        Command::BenchAnalytics {
            history,
            template,
            connections,
            printings,
            days,
            runs,
        } => {
            bench_analytics::bench_analytics(
                &history,
                &template,
                connections,
                printings,
                days,
                runs,
            )
            .await
        }
        Command::BenchRuntime {
            lambda_dir,
            arm64_dir,
            starts,
            batches,
        } => {
            bench_runtime::bench_runtime(&lambda_dir, &[&lambda_dir, &arm64_dir], starts, batches)
                .await
        }
        Command::Template { action, path, docs } => template_command(action, &path, &docs),
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
