//! The command line's shape: every subcommand and its flags (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dualcaster",
    about = "Dualcaster Deals task platform: operate and run it locally"
)]
pub struct Cli {
    /// Env file read before anything else (variables already set win).
    #[arg(long, global = true, default_value = ".local/stack.env")]
    pub env_file: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// leases, release_lease, trigger, chain, migrate.
    Ops {
        request: String,
        /// A Lambda Invoke API endpoint, e.g. http://127.0.0.1:9000.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Serve the operator actions as MCP tools on stdin/stdout (for operators' assistants).
    Mcp,
    /// The dashboard's numbers in one place: queue and DLQ depths, runs by task and outcome with duration
    /// p50/p99, failures by error class, schedules with their next fire, held leases.
    Status {
        /// Runs and failures over this window: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        window: String,
        /// Refresh every this many seconds until Ctrl-C.
        #[arg(long)]
        watch: Option<u64>,
    },
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
        /// The docs page whose schedules table is generated from the registry too.
        #[arg(long, default_value = "docs/operating.md")]
        docs: PathBuf,
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
        /// Rounds per size (ingestion then COPY, each into an empty catalog); the best time of each side counts.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
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
        /// The template whose analytics function's environment the function runs with.
        #[arg(long, default_value = "infra/template.yaml")]
        template: PathBuf,
        /// The analytics function's pool size instead of the template's (`DD_DB_MAX_CONNECTIONS`; 2 has one
        /// writer, 1 reads through a cursor).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
        connections: Option<u32>,
        /// Printings of the generated history (0 skips it).
        #[arg(long, default_value_t = 100_000)]
        printings: i64,
        /// Days of the generated history.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Runs of each dataset; with more than one, the ranges of each ratio follow. The v4 history is
        /// ingested afresh for every run; the generated one is generated once and reset between runs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
        runs: u32,
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
pub enum TemplateAction {
    /// Rewrite the generated blocks (schedules; dashboard and alarms; the docs' schedules table) from the
    /// registry.
    Sync,
    /// Fail if a generated block drifted or an invariant is broken.
    Check,
    /// Print the template without its functions, as plain CloudFormation (queues, DLQs, alarms, rules,
    /// the lease table): what a deploy rehearsal creates in LocalStack.
    Infra,
}
