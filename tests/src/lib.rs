//! Test harness for the integration tests: every test gets its own Postgres database and its own set of
//! queues (created from `infra/template.yaml` under a unique stack name), so tests run in parallel against
//! one local stack (`make stack-up`).

pub mod lease_conformance;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use dualcaster::queue::Queue;
use dualcaster_tools::local::event_source::{invoke_function, Dispatch, EventSource};
use dualcaster_tools::local::function::LocalFunction;
use dualcaster_tools::local::template::{self, Provisioned, Template};
use dualcaster_tools::local::{function_binary, local_aws_defaults, local_dynamodb, local_sqs};
use sqlx::PgPool;

/// Visibility timeout of test queues: short, so crashed batches come back quickly.
pub const TEST_VISIBILITY_SECS: u64 = 3;

/// One test's isolated slice of the local stack.
pub struct TestStack {
    pub name: String,
    pub pool: PgPool,
    pub database_url: String,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub provisioned: Provisioned,
    pub db_name: String,
    pub admin_url: String,
    /// Set by [`TestStack::cleanup`]; otherwise dropping the stack (a test that panicked) cleans up.
    cleaned: bool,
}

/// A message read back from a dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLettered {
    pub body: String,
    /// String-valued attributes by name.
    pub attributes: HashMap<String, String>,
    /// Every attribute as SQS returned it.
    pub message_attributes: dualcaster::queue::MessageAttributes,
}

impl DeadLettered {
    /// The failure context the runtime put on the message (its `dd.failure` attribute).
    pub fn failure(&self) -> dualcaster::queue::DeadLetter {
        dualcaster::queue::DeadLetter::from_attributes(|name| self.attributes.get(name).cloned())
            .unwrap_or_else(|| panic!("no failure context on {self:?}"))
    }
}

impl TestStack {
    pub async fn start() -> Result<TestStack> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let name = format!("it-{id}");
        let admin_url = std::env::var("DD_TEST_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgresql://app:app@127.0.0.1:5432/app".into());
        let admin = PgPool::connect(&admin_url).await.with_context(|| {
            format!("connecting to {admin_url}: is the local stack up? (`make stack-up`)")
        })?;
        let db_name = format!("dd_it_{id}");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let database_url = replace_database(&admin_url, &db_name);
        let pool = PgPool::connect(&database_url).await?;
        dualcaster::db::MIGRATOR.run(&pool).await?;

        let sqs = local_sqs().await;
        let dynamodb = local_dynamodb().await;
        let template_path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        let template = Template::load(&template_path)?;
        let overrides = BTreeMap::from([(
            "VisibilityTimeout".to_owned(),
            TEST_VISIBILITY_SECS.to_string(),
        )]);
        let provisioned = template::provision(&sqs, &dynamodb, &template, &name, &overrides)
            .await
            .context("creating queues in LocalStack: is the local stack up? (`make stack-up`)")?;
        Ok(TestStack {
            name,
            pool,
            database_url,
            sqs,
            dynamodb,
            provisioned,
            db_name,
            admin_url,
            cleaned: false,
        })
    }

    pub fn queue_url(&self, queue: Queue) -> &str {
        &self.provisioned.env[&format!("DD_QUEUE_URL_{}", queue.env_suffix())]
    }

    /// The lease table of this test's stack.
    pub fn lease_table(&self) -> &str {
        &self.provisioned.env["DD_LEASE_TABLE"]
    }

    pub fn dlq_url(&self, queue: Queue) -> &str {
        &self.provisioned.env[&format!("DD_DLQ_URL_{}", queue.env_suffix())]
    }

    /// The environment a deployed function would get, pointing at this test's database and queues.
    pub fn function_env(&self) -> BTreeMap<String, String> {
        let mut env = local_aws_defaults();
        env.extend(self.provisioned.env.clone());
        env.insert("DATABASE_URL".into(), self.database_url.clone());
        env.insert("DD_DEADLINE_MARGIN_MS".into(), "1000".into());
        // Short leases, so a killed holder blocks the next delivery for seconds, not a minute.
        env.insert("DD_LEASE_WINDOW_MS".into(), "3000".into());
        // Functions here time out after 30 s; keep the ingestion reserve well inside that.
        env.insert("DD_TASK_RESERVE_MS".into(), "2000".into());
        env.insert("DD_METRICS_DISABLED".into(), "1".into());
        env.insert("RUST_LOG".into(), "info".into());
        env
    }

    /// Starts the real function binary of `queue` against a local Runtime API (a 30 s timeout).
    pub async fn function(
        &self,
        queue: Queue,
        extra_env: &[(&str, &str)],
    ) -> Result<LocalFunction> {
        self.function_with_timeout(queue, extra_env, Duration::from_secs(30))
            .await
    }

    /// [`TestStack::function`] with another function timeout (each invocation's deadline).
    pub async fn function_with_timeout(
        &self,
        queue: Queue,
        extra_env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<LocalFunction> {
        let mut env = self.function_env();
        for (k, v) in extra_env {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/it-logs");
        std::fs::create_dir_all(&log_dir)?;
        let log = log_dir.join(format!("{}-{queue}.log", self.name));
        LocalFunction::start(
            &format!("{}-{queue}", self.name),
            &function_binary(queue)?,
            env,
            timeout,
            Some(log),
        )
        .await
    }

    /// Starts the real ops function against a local Runtime API, with `extra_env` over the functions'
    /// environment (a 60 s timeout).
    pub async fn ops_function(&self, extra_env: &[(&str, &str)]) -> Result<LocalFunction> {
        let mut env = self.function_env();
        for (k, v) in extra_env {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/it-logs");
        std::fs::create_dir_all(&log_dir)?;
        LocalFunction::start(
            &format!("{}-ops", self.name),
            &dualcaster_tools::local::ops_binary()?,
            env,
            Duration::from_secs(60),
            Some(log_dir.join(format!("{}-ops.log", self.name))),
        )
        .await
    }

    pub async fn event_source(&self, queue: Queue, batch_size: usize) -> Result<EventSource> {
        EventSource::new(
            self.sqs.clone(),
            self.queue_url(queue),
            batch_size,
            Duration::ZERO,
        )
        .await
    }

    /// The check keys of every heartbeat `ping` has recorded, in order.
    pub async fn heartbeats(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT check_key FROM health_checks ORDER BY check_key")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn send(&self, queue: Queue, body: &str) -> Result<String> {
        dualcaster_tools::local::send_message(&self.sqs, self.queue_url(queue), body).await
    }

    /// Polls `queue` into `function` until the queue holds nothing (visible, in flight or delayed).
    pub async fn drain(
        &self,
        source: &EventSource,
        function: &LocalFunction,
        timeout: Duration,
    ) -> Result<Vec<Dispatch>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut dispatches = Vec::new();
        loop {
            let d = source
                .poll_once(Duration::from_secs(1), |event| {
                    invoke_function(function, event)
                })
                .await?;
            if d.received > 0 {
                dispatches.push(d);
            } else if source.backlog().await? == 0 {
                return Ok(dispatches);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(anyhow!(
                    "queue not drained after {timeout:?}: {dispatches:?}"
                ));
            }
        }
    }

    /// Visible + in-flight + delayed messages of a queue URL.
    pub async fn depth(&self, url: &str) -> Result<u64> {
        Ok(dualcaster_tools::local::queue_depths(&self.sqs, url)
            .await?
            .total())
    }

    /// Reads every message of a DLQ (nothing is deleted; all are visible again afterwards).
    pub async fn dead_letters(&self, queue: Queue) -> Result<Vec<DeadLettered>> {
        self.read_all(self.dlq_url(queue)).await
    }

    /// Reads every message of a queue URL (each hidden while the read goes on, so that every receive brings
    /// new ones, and made visible again at the end; nothing is deleted).
    pub async fn read_all(&self, url: &str) -> Result<Vec<DeadLettered>> {
        let mut out = Vec::new();
        let mut receipts = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .wait_time_seconds(if out.is_empty() { 1 } else { 0 })
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "ReceiveMessage: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    )
                })?;
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                for receipt in receipts {
                    self.sqs
                        .change_message_visibility()
                        .queue_url(url)
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .send()
                        .await
                        .map_err(|e| {
                            anyhow!(
                                "ChangeMessageVisibility: {}",
                                aws_sdk_sqs::error::DisplayErrorContext(&e)
                            )
                        })?;
                }
                return Ok(out);
            }
            for m in messages {
                receipts.push(m.receipt_handle().unwrap_or_default().to_owned());
                if !seen.insert(m.message_id().unwrap_or_default().to_owned()) {
                    continue;
                }
                let attributes = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| {
                                v.string_value().map(|s| (k.clone(), s.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let message_attributes = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| {
                                (k.clone(), dualcaster::queue::MessageAttribute::from_sdk(v))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(DeadLettered {
                    body: m.body().unwrap_or_default().to_owned(),
                    attributes,
                    message_attributes,
                });
            }
        }
    }

    /// Drops the database and the queues.
    pub async fn cleanup(mut self) {
        self.pool.close().await;
        remove(
            &self.sqs,
            &self.dynamodb,
            &self.provisioned,
            &self.admin_url,
            &self.db_name,
        )
        .await;
        self.cleaned = true;
    }
}

impl Drop for TestStack {
    /// A test that panics before [`TestStack::cleanup`] still leaves nothing behind: the same clean-up runs on
    /// a thread of its own, with its own clients, since the test's runtime is unwinding.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (provisioned, admin_url, db_name) = (
            self.provisioned.clone(),
            self.admin_url.clone(),
            self.db_name.clone(),
        );
        let cleaner = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let (sqs, dynamodb) = (local_sqs().await, local_dynamodb().await);
                remove(&sqs, &dynamodb, &provisioned, &admin_url, &db_name).await;
            });
        });
        let _ = cleaner.join();
    }
}

/// Deletes a test's queues and lease table and drops its database.
async fn remove(
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    provisioned: &Provisioned,
    admin_url: &str,
    db_name: &str,
) {
    template::delete(sqs, dynamodb, provisioned).await;
    if let Ok(admin) = PgPool::connect(admin_url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// `url` with its database name replaced by `db` (the query string kept).
pub fn replace_database(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, rest)) => {
            let query = rest
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{db}{query}")
        }
        None => format!("{url}/{db}"),
    }
}

/// Body of a ping envelope with a known id.
pub fn ping(id: &str, kwargs: serde_json::Value) -> String {
    serde_json::json!({"v": 1, "task": "ping", "id": id, "kwargs": kwargs}).to_string()
}

/// The repository's test fixtures directory.
pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

/// The local Scryfall/MTGJSON stand-in.
pub use dualcaster_tools::local::stub::StubUpstream as FixtureServer;

/// A TCP proxy in front of a service that a test can cut (every open connection dropped, new ones refused)
/// and restore: an outage of LocalStack as the functions see it, without losing LocalStack's state.
pub struct CuttableProxy {
    pub port: u16,
    /// Connections refused while cut, and open ones dropped by a cut.
    pub refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Result<CuttableProxy> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (accept_open, accept_connections, accept_refused) =
            (open.clone(), connections.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_open.load(Ordering::Acquire) {
                    accept_refused.fetch_add(1, Ordering::Relaxed);
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut c) = accept_connections.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(task.abort_handle());
                }
            }
        });
        Ok(CuttableProxy {
            port,
            refused,
            dropped: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            open,
            connections,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every open connection and refuses new ones until [`CuttableProxy::restore`].
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Release);
        if let Ok(mut c) = self.connections.lock() {
            for h in c.drain(..) {
                if !h.is_finished() {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                h.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A property-test runner with a fixed seed (`DD_TEST_SEED`, 32 hex digits, overrides it) and `ci_cases`
/// cases, or `deep_cases` when `DD_TEST_DEEP=1` (`make test-deep`). Failures print the seed and the input,
/// shrunk in at most `shrink_steps` steps (cases against the local stack take seconds each).
pub fn generated_cases(
    ci_cases: u32,
    deep_cases: u32,
    shrink_steps: u32,
) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let deep = std::env::var("DD_TEST_DEEP").is_ok_and(|v| v == "1");
    let seed = std::env::var("DD_TEST_SEED")
        .unwrap_or_else(|_| "d0a1ca57e7de0a15d0a1ca57e7de0a15".to_owned());
    let bytes: Vec<u8> = (0..seed.len().min(32))
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(seed.get(i..i + 2)?, 16).ok())
        .collect();
    let mut key = [0u8; 32];
    for (k, b) in key.iter_mut().zip(bytes.iter().cycle()) {
        *k = *b;
    }
    eprintln!("generated cases: seed {seed} (set DD_TEST_SEED to change it), deep={deep}");
    let config = Config {
        cases: if deep { deep_cases } else { ci_cases },
        failure_persistence: None,
        max_shrink_iters: shrink_steps,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// Runs `check` on the cases of [`generated_cases`] and fails the test with the seed and the shrunk input of
/// the first case that fails.
pub fn check_generated<S: proptest::strategy::Strategy>(
    (ci_cases, deep_cases, shrink_steps): (u32, u32, u32),
    strategy: &S,
    check: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    if let Err(e) = generated_cases(ci_cases, deep_cases, shrink_steps).run(strategy, check) {
        panic!("{e}");
    }
}

/// Invokes `task` with `kwargs` directly on `function` and returns its report, or the failure as text.
pub async fn run_task(
    function: &LocalFunction,
    task: &str,
    kwargs: serde_json::Value,
) -> std::result::Result<serde_json::Value, String> {
    use dualcaster_tools::local::function::Invoked;
    use dualcaster_tools::local::runtime_api::InvokeOutcome;
    match function
        .invoke(serde_json::json!({"task": task, "kwargs": kwargs}))
        .await
    {
        Ok(Invoked::Outcome(InvokeOutcome::Response(report))) => Ok(report),
        Ok(other) => Err(format!("{task}: {other:?}")),
        Err(e) => Err(format!("{task}: {e:#}")),
    }
}

/// Fails when a `.rs` file of the test binary in `tests/<binary>/` has no `mod` line in its `main.rs`:
/// such a file is never compiled, so its tests would silently never run.
pub fn assert_every_file_is_a_module(binary: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(binary);
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("main.rs");
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|line| line.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("test directory") {
        let path = entry.expect("directory entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let module = path.extension().is_some_and(|e| e == "rs") || path.is_dir();
        if module && stem != "main" && !declared.contains(&stem) {
            missing.push(stem.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "tests/{binary}/main.rs has no `mod` line for {missing:?}: add `mod <name>;` or its tests never run"
    );
}
