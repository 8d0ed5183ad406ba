//! The batch runtime with an in-memory queue and lease store: dispositions, retries, dead letters,
//! deadlines, concurrency, single-instance and idempotency policies.

use super::leases::{payload_hash, run_lease_key};
use super::*;
use crate::config::Settings;
use crate::lease::memory::MemoryLeaseStore;
use crate::lease::{Lease, LeaseKind, LeaseStore};
use crate::queue::QueueUrls;
use crate::registry::OnDuplicate;
use crate::registry::{Idempotency, SingleInstance};
use crate::registry::{Task, TaskSpec};
use crate::report::TaskReport;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Delay {
        queue: String,
        receipt: String,
        delay: Duration,
    },
    DeadLetter {
        dlq: String,
        body: String,
        record: DeadLetter,
    },
}

#[derive(Default)]
struct RecordingQueue {
    calls: Mutex<Vec<Call>>,
    dlq_down: bool,
}

impl RecordingQueue {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn dead_letters(&self) -> Vec<(String, DeadLetter)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::DeadLetter { body, record, .. } => Some((body, record)),
                _ => None,
            })
            .collect()
    }
    fn delays(&self) -> Vec<(String, Duration)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Delay { receipt, delay, .. } => Some((receipt, delay)),
                _ => None,
            })
            .collect()
    }
}

impl QueueOps for RecordingQueue {
    fn delay_retry<'a>(
        &'a self,
        queue: &'a str,
        receipt: &'a str,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        self.calls.lock().unwrap().push(Call::Delay {
            queue: queue.into(),
            receipt: receipt.into(),
            delay,
        });
        Box::pin(async { Ok(()) })
    }
    fn dead_letter<'a>(
        &'a self,
        dlq: &'a str,
        body: &'a str,
        _own: &'a crate::queue::MessageAttributes,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        let down = self.dlq_down;
        if !down {
            self.calls.lock().unwrap().push(Call::DeadLetter {
                dlq: dlq.into(),
                body: body.into(),
                record: record.clone(),
            });
        }
        Box::pin(async move {
            if down {
                Err(TaskError::retryable(
                    class::UPSTREAM_UNAVAILABLE,
                    "DLQ unreachable",
                ))
            } else {
                Ok(())
            }
        })
    }
}

// Test-only tasks.
#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct CountArgs {
    #[garde(range(max = 100))]
    n: u64,
    #[serde(default)]
    #[garde(skip)]
    sleep_ms: u64,
}
#[derive(Debug, Serialize)]
struct CountReport {
    n: u64,
}
impl TaskReport for CountReport {
    fn counts(&self) -> Counts {
        Counts::new(self.n, 0)
    }
    fn skipped(&self) -> Option<String> {
        (self.n == 0).then(|| "nothing to count".to_owned())
    }
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Count;
impl Task for Count {
    const NAME: &'static str = "count";
    const QUEUE: Queue = Queue::Default;
    type Args = CountArgs;
    type Report = CountReport;
    async fn run(args: CountArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        Ok(CountReport { n: args.n })
    }
}

/// Measures how many runs overlap.
struct Gauge;
impl Task for Gauge {
    const NAME: &'static str = "gauge";
    const QUEUE: Queue = Queue::Default;
    type Args = NoArgs;
    type Report = CountReport;
    async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(CountReport { n: 1 })
    }
}

#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

struct Flaky;
impl Task for Flaky {
    const NAME: &'static str = "flaky";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy =
        RetryPolicy::new(2, Duration::from_secs(10), Duration::from_secs(60));
    type Args = NoArgs;
    type Report = CountReport;
    async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
        Err(TaskError::retryable(
            class::UPSTREAM_UNAVAILABLE,
            "scryfall timed out",
        ))
    }
}

struct Boom;
impl Task for Boom {
    const NAME: &'static str = "boom";
    const QUEUE: Queue = Queue::Default;
    type Args = NoArgs;
    type Report = CountReport;
    async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
        panic!("index out of bounds: the len is 3 but the index is 7")
    }
}

struct Elsewhere;
impl Task for Elsewhere {
    const NAME: &'static str = "elsewhere";
    const QUEUE: Queue = Queue::Ingestion;
    type Args = NoArgs;
    type Report = CountReport;
    async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
        Ok(CountReport { n: 1 })
    }
}

fn settings(concurrency: usize, margin_ms: u64) -> Settings {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DD_LEASE_TABLE".into(), "leases".into());
    env.insert(
        "DATABASE_URL".into(),
        "postgresql://nobody@127.0.0.1:1/none".into(),
    );
    for q in Queue::ALL {
        env.insert(format!("DD_QUEUE_URL_{}", q.env_suffix()), format!("q/{q}"));
        env.insert(
            format!("DD_DLQ_URL_{}", q.env_suffix()),
            format!("q/{q}-dlq"),
        );
    }
    env.insert("DD_CONCURRENCY".into(), concurrency.to_string());
    env.insert("DD_DEADLINE_MARGIN_MS".into(), margin_ms.to_string());
    env.insert("DD_METRICS_DISABLED".into(), "1".into());
    Settings::from_lookup(|k| env.get(k).cloned()).unwrap()
}

fn runtime(queue_ops: Arc<RecordingQueue>, concurrency: usize, margin_ms: u64) -> Runtime {
    runtime_with(
        queue_ops,
        concurrency,
        margin_ms,
        Arc::new(MemoryLeaseStore::new()),
    )
}

fn runtime_with(
    queue_ops: Arc<RecordingQueue>,
    concurrency: usize,
    margin_ms: u64,
    leases: Arc<MemoryLeaseStore>,
) -> Runtime {
    let settings = settings(concurrency, margin_ms);
    let db = crate::db::lazy_pool(&settings).unwrap();
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build(),
    );
    let registry = Registry::from_specs([
        TaskSpec::of::<Count>(),
        TaskSpec::of::<Flaky>(),
        TaskSpec::of::<Boom>(),
        TaskSpec::of::<Elsewhere>(),
        TaskSpec::of::<Gauge>(),
        TaskSpec::of::<Solo>(),
        TaskSpec::of::<SoloDefer>(),
        TaskSpec::of::<SoloFail>(),
        TaskSpec::of::<Once>(),
    ])
    .unwrap();
    let upstreams = crate::context::Upstreams::from_settings(&settings).unwrap();
    let services = Arc::new(Services {
        settings,
        db,
        db_secret: None,
        sqs: crate::lazy_client::ready(sqs),
        leases,
        upstreams,
    });
    Runtime::new(
        Queue::Default,
        registry,
        services,
        queue_ops,
        RunLog::Disabled,
        "test-fn",
    )
}

fn record(id: &str, body: &str, receive_count: u32) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.into());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body.into());
    m.attributes
        .insert("ApproximateReceiveCount".into(), receive_count.to_string());
    m
}

fn event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = records;
    e
}

fn failed_ids(r: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = r
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

fn inv() -> Invocation {
    Invocation::with_timeout("req-1", Duration::from_secs(30))
}

#[tokio::test]
async fn mixed_batch_reports_only_the_retryable_failure() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q.clone(), 4, 1000);
    let batch = event(vec![
        record("ok", r#"{"task":"count","kwargs":{"n":3}}"#, 1),
        record("notjson", "{{{", 1),
        record("unknown", r#"{"task":"nope"}"#, 1),
        record("badargs", r#"{"task":"count","kwargs":{"n":1000}}"#, 1),
        record("extra", r#"{"task":"count","kwargs":{"n":1,"x":2}}"#, 1),
        record("wrongq", r#"{"task":"elsewhere"}"#, 1),
        record("panic", r#"{"task":"boom"}"#, 1),
        record("flaky", r#"{"task":"flaky"}"#, 1),
        record("ok2", r#"{"task":"count","kwargs":{"n":1}}"#, 1),
    ]);
    let response = rt.handle_batch(batch, &inv()).await;
    assert_eq!(failed_ids(&response), vec!["flaky"]);

    let dead: HashMap<String, DeadLetter> = q
        .dead_letters()
        .into_iter()
        .map(|(_, d)| (d.source_message_id.clone(), d))
        .collect();
    let classes: HashMap<&str, &str> = dead
        .iter()
        .map(|(k, d)| (k.as_str(), d.error_class.as_str()))
        .collect();
    assert_eq!(
        classes,
        HashMap::from([
            ("notjson", "malformed_message"),
            ("unknown", "unknown_task"),
            ("badargs", "invalid_kwargs"),
            ("extra", "invalid_kwargs"),
            ("wrongq", "wrong_queue"),
            ("panic", "panic"),
        ])
    );
    assert!(dead["panic"].error_message.contains("index out of bounds"));
    assert_eq!(dead["notjson"].task, None);
    assert_eq!(dead["badargs"].task.as_deref(), Some("count"));
    assert!(dead
        .values()
        .all(|d| d.attempts == 1 && d.error_kind == "permanent" && d.source_queue == "default"));

    let delays = q.delays();
    assert_eq!(delays.len(), 1);
    assert_eq!(delays[0].0, "rh-flaky");
    let (low, high) = Flaky::RETRY.window(1);
    assert!(
        delays[0].1 >= low && delays[0].1 <= high,
        "{:?}",
        delays[0].1
    );
}

#[tokio::test]
async fn dead_lettered_messages_keep_their_body_and_go_to_their_own_dlq() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q.clone(), 1, 1000);
    let body = "not json at all \u{1F409}";
    rt.handle_batch(event(vec![record("m", body, 1)]), &inv())
        .await;
    let calls = q.calls();
    assert_eq!(calls.len(), 1);
    let Call::DeadLetter {
        dlq, body: sent, ..
    } = &calls[0]
    else {
        panic!("{calls:?}")
    };
    assert_eq!(dlq, "q/default-dlq");
    assert_eq!(sent, body);
}

#[tokio::test]
async fn retryable_failure_is_dead_lettered_after_the_last_retry() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q.clone(), 1, 1000);
    for attempt in 1..=2 {
        let r = rt
            .handle_batch(
                event(vec![record("f", r#"{"task":"flaky"}"#, attempt)]),
                &inv(),
            )
            .await;
        assert_eq!(failed_ids(&r), vec!["f"], "attempt {attempt}");
    }
    let r = rt
        .handle_batch(event(vec![record("f", r#"{"task":"flaky"}"#, 3)]), &inv())
        .await;
    assert!(r.batch_item_failures.is_empty());
    let delays: Vec<Duration> = q.delays().into_iter().map(|(_, d)| d).collect();
    assert_eq!(delays.len(), 2);
    assert!(delays[1] >= delays[0]);
    let dead = q.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.attempts, 3);
    assert_eq!(dead[0].1.error_kind, "retryable");
    assert_eq!(dead[0].1.error_class, "upstream_unavailable");
    assert_eq!(dead[0].1.error_message, "scryfall timed out");
}

#[tokio::test]
async fn unreachable_dlq_hands_the_message_back() {
    let q = Arc::new(RecordingQueue {
        dlq_down: true,
        ..Default::default()
    });
    let rt = runtime(q.clone(), 1, 1000);
    let r = rt
        .handle_batch(event(vec![record("p", "garbage", 1)]), &inv())
        .await;
    assert_eq!(failed_ids(&r), vec!["p"]);
}

#[tokio::test]
async fn expired_envelopes_are_skipped_not_run_or_dead_lettered() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q.clone(), 1, 1000);
    let body =
        json!({"task":"count","kwargs":{"n":1},"expires_at":"2020-01-01T00:00:00Z","id":"e1"})
            .to_string();
    let r = rt
        .handle_batch(event(vec![record("e", &body, 1)]), &inv())
        .await;
    assert!(r.batch_item_failures.is_empty());
    assert!(q.calls().is_empty());

    let report = rt
        .handle_direct(serde_json::from_str(&body).unwrap(), &inv())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Skipped);
    assert_eq!(report.id, "e1");
    assert!(report.reason.unwrap().contains("expired at 2020-01-01"));
}

#[tokio::test]
async fn records_are_not_started_after_the_cutoff() {
    let q = Arc::new(RecordingQueue::default());
    // The margin is larger than the time left: nothing may start.
    let rt = runtime(q.clone(), 2, 10_000);
    let invocation = Invocation::with_timeout("late", Duration::from_secs(5));
    let records = (0..5)
        .map(|i| record(&format!("r{i}"), r#"{"task":"count","kwargs":{"n":1}}"#, 1))
        .collect();
    let r = rt.handle_batch(event(records), &invocation).await;
    assert_eq!(failed_ids(&r), vec!["r0", "r1", "r2", "r3", "r4"]);
    assert!(q.delays().iter().all(|(_, d)| d.is_zero()));
    assert_eq!(q.delays().len(), 5);
}

#[tokio::test]
async fn a_task_running_into_the_deadline_is_stopped_and_retried() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q.clone(), 1, 0);
    let invocation = Invocation::with_timeout("short", Duration::from_millis(800));
    let r = rt
        .handle_batch(
            event(vec![record(
                "slow",
                r#"{"task":"count","kwargs":{"n":1,"sleep_ms":5000}}"#,
                1,
            )]),
            &invocation,
        )
        .await;
    assert_eq!(failed_ids(&r), vec!["slow"]);
    assert_eq!(q.delays().len(), 1);
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q.clone(), 3, 0);
    let records = (0..10)
        .map(|i| record(&format!("c{i}"), r#"{"task":"gauge"}"#, 1))
        .collect();
    let r = rt.handle_batch(event(records), &inv()).await;
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(PEAK.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn direct_invoke_returns_the_report_or_a_typed_error() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q, 1, 0);
    let out = rt
        .handle(json!({"task":"count","kwargs":{"n":7},"id":"d-1"}), inv())
        .await
        .unwrap();
    assert_eq!(out["status"], "succeeded");
    assert_eq!(out["counts"]["processed"], 7);
    assert_eq!(out["detail"]["n"], 7);
    assert_eq!(out["id"], "d-1");

    let out = rt
        .handle(json!({"task":"count","kwargs":{"n":0}}), inv())
        .await
        .unwrap();
    assert_eq!(out["status"], "skipped");
    assert_eq!(out["reason"], "nothing to count");

    let err = rt
        .handle(json!({"task":"count","kwargs":{"n":"seven"}}), inv())
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "invalid_kwargs");
    assert!(err.message.contains("task `count`"), "{}", err.message);

    let err = rt.handle(json!("ping"), inv()).await.unwrap_err();
    assert_eq!(err.error_type, "malformed_message");

    let err = rt.handle(json!({"task":"boom"}), inv()).await.unwrap_err();
    assert_eq!(err.error_type, "panic");

    let diagnostic: lambda_runtime::Diagnostic = rt
        .handle(json!({"task":"zzz"}), inv())
        .await
        .unwrap_err()
        .into();
    assert_eq!(diagnostic.error_type, "unknown_task");
}

#[tokio::test]
async fn sqs_payload_yields_a_batch_response() {
    let q = Arc::new(RecordingQueue::default());
    let rt = runtime(q, 1, 0);
    let payload = json!({"Records": [
        {"messageId": "a", "receiptHandle": "rh-a", "body": "{\"task\":\"flaky\"}",
         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"}
    ]});
    let out = rt.handle(payload, inv()).await.unwrap();
    assert_eq!(out, json!({"batchItemFailures": [{"itemIdentifier": "a"}]}));
}

#[test]
fn queue_urls_come_from_settings() {
    let s = settings(1, 0);
    assert_eq!(
        s.urls(Queue::Default),
        &QueueUrls {
            queue: "q/default".into(),
            dlq: "q/default-dlq".into()
        }
    );
}

// Lease-policy test tasks.
#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct SetArgs {
    #[serde(default)]
    #[garde(skip)]
    set: Option<String>,
    #[serde(default)]
    #[garde(skip)]
    fail: bool,
}

macro_rules! solo_task {
    ($name:ident, $task:literal, $policy:expr) => {
        struct $name;
        impl Task for $name {
            const NAME: &'static str = $task;
            const QUEUE: Queue = Queue::Default;
            const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
                keys: &["set"],
                on_duplicate: $policy,
            });
            type Args = SetArgs;
            type Report = CountReport;
            async fn run(args: SetArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
                Ok(CountReport {
                    n: args.set.map_or(1, |s| s.len() as u64),
                })
            }
        }
    };
}
solo_task!(Solo, "solo", OnDuplicate::Skip);
solo_task!(
    SoloDefer,
    "solo_defer",
    OnDuplicate::Defer(Duration::from_secs(30))
);
solo_task!(SoloFail, "solo_fail", OnDuplicate::Fail);

static ONCE_RUNS: AtomicUsize = AtomicUsize::new(0);

struct Once;
impl Task for Once {
    const NAME: &'static str = "once";
    const QUEUE: Queue = Queue::Default;
    const IDEMPOTENCY: Option<Idempotency> = Some(Idempotency {
        keep: Duration::from_secs(3600),
    });
    type Args = SetArgs;
    type Report = CountReport;
    async fn run(args: SetArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
        let n = ONCE_RUNS.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        if args.fail {
            return Err(TaskError::retryable(class::TASK_RETRYABLE, "not yet"));
        }
        Ok(CountReport { n })
    }
}

fn held_by_someone_else(key: &str) -> Lease {
    let now = Utc::now();
    Lease::new(
        key,
        LeaseKind::Run,
        "other-run",
        "solo",
        now,
        now + chrono::Duration::seconds(60),
    )
}

#[tokio::test]
async fn single_instance_skip_acknowledges_and_names_the_holder() {
    let q = Arc::new(RecordingQueue::default());
    let leases = Arc::new(MemoryLeaseStore::new());
    let rt = runtime_with(q.clone(), 1, 0, leases.clone());
    let holder = held_by_someone_else("run:solo:set=MH1");
    leases.acquire(&holder, Utc::now()).await.unwrap();

    let out = rt
        .handle(json!({"task": "solo", "kwargs": {"set": "MH1"}}), inv())
        .await
        .unwrap();
    assert_eq!(out["status"], "skipped");
    let reason = out["reason"].as_str().unwrap();
    assert!(reason.contains("held by other-run until"), "{reason}");

    // Another set is another key: it runs, and its lease is released afterwards.
    let out = rt
        .handle(json!({"task": "solo", "kwargs": {"set": "WAR"}}), inv())
        .await
        .unwrap();
    assert_eq!(out["status"], "succeeded");
    assert_eq!(leases.get("run:solo:set=WAR").await.unwrap(), None);

    let r = rt
        .handle_batch(
            event(vec![record(
                "s",
                r#"{"task":"solo","kwargs":{"set":"MH1"}}"#,
                1,
            )]),
            &inv(),
        )
        .await;
    assert!(
        r.batch_item_failures.is_empty(),
        "a skipped duplicate is acknowledged"
    );
    assert!(q.calls().is_empty());
}

#[tokio::test]
async fn single_instance_defer_and_fail() {
    let q = Arc::new(RecordingQueue::default());
    let leases = Arc::new(MemoryLeaseStore::new());
    let rt = runtime_with(q.clone(), 1, 0, leases.clone());
    leases
        .acquire(&held_by_someone_else("run:solo_defer:set=-"), Utc::now())
        .await
        .unwrap();
    leases
        .acquire(&held_by_someone_else("run:solo_fail:set=-"), Utc::now())
        .await
        .unwrap();

    let r = rt
        .handle_batch(
            event(vec![
                record("d", r#"{"task":"solo_defer"}"#, 1),
                record("f", r#"{"task":"solo_fail"}"#, 1),
            ]),
            &inv(),
        )
        .await;
    assert_eq!(failed_ids(&r), vec!["d"]);
    assert_eq!(
        q.delays(),
        vec![("rh-d".to_owned(), Duration::from_secs(30))]
    );
    let dead = q.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.error_class, "lease_held");

    let err = rt
        .handle(json!({"task": "solo_defer"}), inv())
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "lease_held");
}

#[tokio::test]
async fn duplicate_deliveries_run_once_and_report_the_same() {
    let q = Arc::new(RecordingQueue::default());
    let leases = Arc::new(MemoryLeaseStore::new());
    let rt = runtime_with(q.clone(), 1, 0, leases.clone());
    let before = ONCE_RUNS.load(Ordering::SeqCst);
    let body = r#"{"task":"once","id":"delivery-1","kwargs":{"set":"M20"}}"#;
    let first = rt
        .handle(serde_json::from_str(body).unwrap(), inv())
        .await
        .unwrap();
    let second = rt
        .handle(serde_json::from_str(body).unwrap(), inv())
        .await
        .unwrap();
    assert_eq!(ONCE_RUNS.load(Ordering::SeqCst), before + 1, "ran once");
    assert_eq!(first["detail"], second["detail"]);
    assert_eq!(first["counts"], second["counts"]);
    assert_eq!(second["replayed"], true);
    assert!(first.get("replayed").is_none());

    // Through SQS: redelivery with another receive count is acknowledged with the stored report.
    let r = rt
        .handle_batch(event(vec![record("again", body, 2)]), &inv())
        .await;
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(ONCE_RUNS.load(Ordering::SeqCst), before + 1);

    // Same key, other arguments: a clear permanent error.
    let err = rt
        .handle(
            json!({"task":"once","id":"delivery-1","kwargs":{"set":"WAR"}}),
            inv(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "idempotency_conflict");
    assert!(err.message.contains("`delivery-1`"), "{}", err.message);

    // The envelope's idempotency_key wins over its id.
    let keyed = |id: &str| json!({"task":"once","id":id,"idempotency_key":"nightly-2026-11-26"});
    rt.handle(keyed("a"), inv()).await.unwrap();
    let again = rt.handle(keyed("b"), inv()).await.unwrap();
    assert_eq!(again["replayed"], true);
}

#[tokio::test]
async fn a_failed_delivery_frees_its_key_and_an_in_progress_one_is_deferred() {
    let q = Arc::new(RecordingQueue::default());
    let leases = Arc::new(MemoryLeaseStore::new());
    let rt = runtime_with(q.clone(), 1, 0, leases.clone());
    let r = rt
        .handle_batch(
            event(vec![record(
                "x",
                r#"{"task":"once","id":"retry-me","kwargs":{"fail":true}}"#,
                1,
            )]),
            &inv(),
        )
        .await;
    assert_eq!(failed_ids(&r), vec!["x"]);
    assert_eq!(
        leases.get("idem:once:retry-me").await.unwrap(),
        None,
        "a failure keeps no record"
    );

    // A live in-progress record (another delivery running now): hand back until it expires.
    let now = Utc::now();
    let mut running = Lease::new(
        "idem:once:busy",
        LeaseKind::Idempotency,
        "other",
        "once",
        now,
        now + chrono::Duration::seconds(20),
    );
    running.payload_hash = Some(payload_hash(&serde_json::Map::new()));
    leases.acquire(&running, now).await.unwrap();
    let r = rt
        .handle_batch(
            event(vec![record("y", r#"{"task":"once","id":"busy"}"#, 1)]),
            &inv(),
        )
        .await;
    assert_eq!(failed_ids(&r), vec!["y"]);
    let delay = q.delays().last().unwrap().1;
    assert!(
        delay > Duration::from_secs(15) && delay <= Duration::from_secs(20),
        "{delay:?}"
    );

    // Once it has expired (its holder died), the next delivery takes it over and runs.
    let expired = now - chrono::Duration::seconds(1);
    let mut dead = Lease::new(
        "idem:once:dead",
        LeaseKind::Idempotency,
        "crashed",
        "once",
        expired,
        expired,
    );
    dead.payload_hash = running.payload_hash.clone();
    leases
        .acquire(&dead, expired - chrono::Duration::seconds(1))
        .await
        .unwrap();
    let out = rt
        .handle(json!({"task":"once","id":"dead"}), inv())
        .await
        .unwrap();
    assert_eq!(out["status"], "succeeded");
    assert!(out.get("replayed").is_none());
}

#[test]
fn lease_keys_and_payload_hashes() {
    let kwargs = json!({"set": "MH1", "limit": 5, "flag": null})
        .as_object()
        .cloned()
        .unwrap();
    assert_eq!(run_lease_key("refresh", &[], &kwargs), "run:refresh");
    assert_eq!(
        run_lease_key("refresh", &["set", "limit", "flag", "other"], &kwargs),
        "run:refresh:set=MH1:limit=5:flag=-:other=-"
    );
    let reordered = json!({"flag": null, "limit": 5, "set": "MH1"})
        .as_object()
        .cloned()
        .unwrap();
    assert_eq!(
        payload_hash(&kwargs),
        payload_hash(&reordered),
        "key order does not matter"
    );
    assert_ne!(payload_hash(&kwargs), payload_hash(&serde_json::Map::new()));
    assert_eq!(payload_hash(&kwargs).len(), 64);
}
