//! The batch runtime against a model of its contract (README "How the runtime behaves", the Lambda partial
//! batch response): generated SQS batches of successes, retryable and permanent failures, panics, records too
//! slow for the invocation's deadline, duplicates of completed deliveries, expired envelopes, malformed
//! bodies, unknown tasks, bad arguments and tasks of another queue, each with a receive count and its
//! producer's attributes, run through the real `Runtime` (tasks defined here, a real Postgres for
//! `task_runs`; the queue and lease store are in-memory stand-ins of their small traits). The model predicts
//! for every record whether it is reported as a batch item failure, whether it is hidden again and for how
//! long, whether it is dead-lettered with which class and attempt count, and its `task_runs` row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use dualcaster::context::{Services, TaskContext, Upstreams};
use dualcaster::db::RunLog;
use dualcaster::error::TaskError;
use dualcaster::lease::memory::MemoryLeaseStore;
use dualcaster::queue::{DeadLetter, MessageAttribute, MessageAttributes, Queue, QueueOps};
use dualcaster::registry::{Idempotency, Registry, Task, TaskSpec};
use dualcaster::report::{Counts, TaskReport};
use dualcaster::retry::RetryPolicy;
use dualcaster::runtime::{Invocation, Runtime};
use futures::future::BoxFuture;
use integration_tests::{generated_cases, TestStack};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

// ---------------------------------------------------------------------------------------------------------
// Tasks defined only here.

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Behaviour {
    Succeed,
    FailRetryably,
    FailPermanently,
    Panic,
}

#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct StepArgs {
    #[garde(skip)]
    behaviour: Behaviour,
    #[garde(range(max = 10_000))]
    sleep_ms: u64,
}

#[derive(Serialize)]
struct StepReport;

impl TaskReport for StepReport {
    fn counts(&self) -> Counts {
        Counts::new(1, 0)
    }
}

/// Two retries: attempts 1 and 2 are retried after 1 s and 2 s at most, attempt 3 is the last.
const STEP_RETRY: RetryPolicy = RetryPolicy::new(2, Duration::from_secs(1), Duration::from_secs(4));

struct Step;
impl Task for Step {
    const NAME: &'static str = "model_step";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy = STEP_RETRY;
    const IDEMPOTENCY: Option<Idempotency> = Some(Idempotency {
        keep: Duration::from_secs(3600),
    });
    type Args = StepArgs;
    type Report = StepReport;
    async fn run(args: StepArgs, _ctx: TaskContext) -> Result<StepReport, TaskError> {
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        match args.behaviour {
            Behaviour::Succeed => Ok(StepReport),
            Behaviour::FailRetryably => {
                Err(TaskError::retryable("task_retryable", "model: retryable"))
            }
            Behaviour::FailPermanently => {
                Err(TaskError::permanent("task_failed", "model: permanent"))
            }
            Behaviour::Panic => panic!("model: panic"),
        }
    }
}

#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

struct Elsewhere;
impl Task for Elsewhere {
    const NAME: &'static str = "model_elsewhere";
    const QUEUE: Queue = Queue::Ingestion;
    type Args = NoArgs;
    type Report = StepReport;
    async fn run(_: NoArgs, _ctx: TaskContext) -> Result<StepReport, TaskError> {
        Ok(StepReport)
    }
}

// ---------------------------------------------------------------------------------------------------------
// The queue as the runtime sees it: what it hid and for how long, what it dead-lettered.

#[derive(Default)]
struct RecordingQueue {
    delays: Mutex<BTreeMap<String, Duration>>,
    dead: Mutex<BTreeMap<String, (String, MessageAttributes, DeadLetter)>>,
}

impl QueueOps for RecordingQueue {
    fn delay_retry<'a>(
        &'a self,
        _url: &'a str,
        receipt: &'a str,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        self.delays
            .lock()
            .expect("lock")
            .insert(receipt.to_owned(), delay);
        Box::pin(async { Ok(()) })
    }

    fn dead_letter<'a>(
        &'a self,
        _dlq: &'a str,
        body: &'a str,
        own: &'a MessageAttributes,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        self.dead.lock().expect("lock").insert(
            record.source_message_id.clone(),
            (body.to_owned(), own.clone(), record.clone()),
        );
        Box::pin(async { Ok(()) })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Generated batches and the model.

/// Deadline margin and invocation timeout: records start only in the first 0.8 s, tasks are stopped at
/// 1.1 s (the runtime keeps 0.5 s back), a slow record sleeps 3 s.
const MARGIN_MS: u64 = 800;
const TIMEOUT_MS: u64 = 1600;
const SLOW_MS: u64 = 3000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Succeeds,
    Retryable,
    Permanent,
    Panics,
    Slow,
    /// A second delivery of a message whose run completed in an earlier batch.
    Duplicate,
    Expired,
    NotJson,
    NotAnObject,
    UnknownTask,
    BadKwargs,
    WrongQueue,
}

#[derive(Debug, Clone)]
struct Record {
    kind: Kind,
    attempt: u32,
    own: MessageAttributes,
}

#[derive(Debug, Clone, PartialEq)]
struct Expected {
    /// Listed in `batchItemFailures`.
    failed: bool,
    /// Hidden again for a delay in this window.
    delay: Option<(Duration, Duration)>,
    /// Dead-lettered with this class and kind.
    dead: Option<(&'static str, &'static str)>,
    /// `task_runs`: status, disposition, error class, replayed; `None` when no run is recorded.
    run: Option<(&'static str, &'static str, Option<&'static str>, bool)>,
}

/// The model, from the contract alone.
fn expect(record: &Record, deadline_passed: bool) -> Expected {
    if deadline_passed {
        // Not started: handed back visible at once, no run recorded.
        return Expected {
            failed: true,
            delay: Some((Duration::ZERO, Duration::ZERO)),
            dead: None,
            run: None,
        };
    }
    let dead = |class: &'static str, kind: &'static str| Expected {
        failed: false,
        delay: None,
        dead: Some((class, kind)),
        run: Some(("failed", "dead_lettered", Some(class), false)),
    };
    let retryable = |class: &'static str| {
        if record.attempt <= STEP_RETRY.max_retries {
            let ceiling = STEP_RETRY.base_delay * 2u32.pow(record.attempt - 1);
            let ceiling = ceiling.min(STEP_RETRY.max_delay);
            Expected {
                failed: true,
                delay: Some((ceiling / 2, ceiling)),
                dead: None,
                run: Some(("failed", "retry_scheduled", Some(class), false)),
            }
        } else {
            dead(class, "retryable")
        }
    };
    let done = |status, replayed| Expected {
        failed: false,
        delay: None,
        dead: None,
        run: Some((status, "acknowledged", None, replayed)),
    };
    match record.kind {
        Kind::Succeeds => done("succeeded", false),
        Kind::Duplicate => done("succeeded", true),
        Kind::Expired => done("skipped", false),
        Kind::Retryable => retryable("task_retryable"),
        Kind::Slow => retryable("deadline_exceeded"),
        Kind::Permanent => dead("task_failed", "permanent"),
        Kind::Panics => dead("panic", "permanent"),
        Kind::NotJson | Kind::NotAnObject => dead("malformed_message", "permanent"),
        Kind::UnknownTask => dead("unknown_task", "permanent"),
        Kind::BadKwargs => dead("invalid_kwargs", "permanent"),
        Kind::WrongQueue => dead("wrong_queue", "permanent"),
    }
}

fn body(kind: Kind, id: &str, duplicate_of: &str) -> String {
    let step = |behaviour: &str, sleep_ms: u64| {
        json!({"task": "model_step", "id": id, "kwargs": {"behaviour": behaviour, "sleep_ms": sleep_ms}}).to_string()
    };
    match kind {
        Kind::Succeeds => step("succeed", 5),
        Kind::Retryable => step("fail_retryably", 5),
        Kind::Permanent => step("fail_permanently", 0),
        Kind::Panics => step("panic", 0),
        Kind::Slow => step("succeed", SLOW_MS),
        Kind::Duplicate => json!({"task": "model_step", "id": duplicate_of, "kwargs": {"behaviour": "succeed", "sleep_ms": 5}}).to_string(),
        Kind::Expired => json!({"task": "model_step", "id": id, "expires_at": "2020-01-01T00:00:00Z",
                                "kwargs": {"behaviour": "succeed", "sleep_ms": 0}})
        .to_string(),
        Kind::NotJson => format!("{{\"task\": \"model_step\", \"id\": \"{id}\""),
        Kind::NotAnObject => json!(["model_step", id]).to_string(),
        Kind::UnknownTask => json!({"task": "model_nothing", "id": id}).to_string(),
        Kind::BadKwargs => json!({"task": "model_step", "id": id, "kwargs": {"behaviour": "sideways", "sleep_ms": 0}}).to_string(),
        Kind::WrongQueue => json!({"task": "model_elsewhere", "id": id}).to_string(),
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Succeeds),
        4 => Just(Kind::Retryable),
        2 => Just(Kind::Permanent),
        1 => Just(Kind::Panics),
        2 => Just(Kind::Slow),
        2 => Just(Kind::Duplicate),
        1 => Just(Kind::Expired),
        1 => Just(Kind::NotJson),
        1 => Just(Kind::NotAnObject),
        1 => Just(Kind::UnknownTask),
        1 => Just(Kind::BadKwargs),
        1 => Just(Kind::WrongQueue),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    let own = prop::collection::btree_map("[a-z]{1,8}", "[ -~]{1,12}", 0..=3).prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (format!("p-{k}"), MessageAttribute::string("String", v)))
            .collect::<MessageAttributes>()
    });
    (kind(), 1u32..=4, own).prop_map(|(kind, attempt, own)| Record { kind, attempt, own })
}

fn runtime(stack: &TestStack, queue: Arc<RecordingQueue>) -> Runtime {
    let mut env: BTreeMap<String, String> = stack.function_env();
    env.insert("DD_CONCURRENCY".into(), "10".into());
    env.insert("DD_DEADLINE_MARGIN_MS".into(), MARGIN_MS.to_string());
    let settings =
        dualcaster::config::Settings::from_lookup(|k| env.get(k).cloned()).expect("settings");
    let upstreams = Upstreams::from_settings(&settings).expect("upstreams");
    let services = Arc::new(Services {
        settings,
        db: stack.pool.clone(),
        db_secret: None,
        sqs: dualcaster::lazy_client::ready(stack.sqs.clone()),
        leases: Arc::new(MemoryLeaseStore::new()),
        upstreams,
    });
    let registry = Registry::from_specs([TaskSpec::of::<Step>(), TaskSpec::of::<Elsewhere>()])
        .expect("registry");
    Runtime::new(
        Queue::Default,
        registry,
        services,
        queue,
        RunLog::Postgres(stack.pool.clone()),
        "model-fn",
    )
}

fn message(id: &str, body: String, attempt: u32, own: &MessageAttributes) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.to_owned());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body);
    m.attributes
        .insert("ApproximateReceiveCount".into(), attempt.to_string());
    for (k, v) in own {
        let mut a = SqsMessageAttribute::default();
        a.data_type = Some(v.data_type.clone());
        a.string_value = v.string_value.clone();
        m.message_attributes.insert(k.clone(), a);
    }
    m
}

fn event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = records;
    e
}

/// Records checked per kind over the whole run (printed at the end).
static CHECKED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

async fn check_batch(
    stack: &TestStack,
    records: Vec<Record>,
    deadline_passed: bool,
) -> Result<(), TestCaseError> {
    let case = uuid::Uuid::new_v4().simple().to_string();
    let queue = Arc::new(RecordingQueue::default());
    let rt = runtime(stack, queue.clone());
    let long = Invocation::with_timeout("model-setup", Duration::from_secs(30));

    // The earlier deliveries the duplicates repeat.
    let originals: Vec<SqsMessage> = (0..records.len())
        .map(|i| {
            message(
                &format!("{case}-orig-{i}"),
                body(Kind::Succeeds, &format!("{case}-dup-{i}"), ""),
                1,
                &MessageAttributes::new(),
            )
        })
        .collect();
    let setup = rt.handle_batch(event(originals), &long).await;
    prop_assert!(setup.batch_item_failures.is_empty());

    let ids: Vec<String> = (0..records.len()).map(|i| format!("{case}-m{i}")).collect();
    let batch: Vec<SqsMessage> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            message(
                &ids[i],
                body(r.kind, &ids[i], &format!("{case}-dup-{i}")),
                r.attempt,
                &r.own,
            )
        })
        .collect();
    let bodies: Vec<String> = batch
        .iter()
        .map(|m| m.body.clone().unwrap_or_default())
        .collect();
    let timeout = if deadline_passed {
        MARGIN_MS / 2
    } else {
        TIMEOUT_MS
    };
    let invocation = Invocation::with_timeout("model", Duration::from_millis(timeout));
    let response = rt.handle_batch(event(batch), &invocation).await;

    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let delays = queue.delays.lock().expect("lock").clone();
    let dead = queue.dead.lock().expect("lock").clone();
    let runs: BTreeMap<String, (String, String, Option<String>, bool, i32)> = sqlx::query_as(
        "SELECT message_id, status, disposition, error_class, replayed, attempt FROM task_runs WHERE message_id LIKE $1",
    )
    .bind(format!("{case}-m%"))
    .fetch_all(&stack.pool)
    .await
    .expect("task_runs")
    .into_iter()
    .map(|(id, s, d, c, r, a): (String, String, String, Option<String>, bool, i32)| (id, (s, d, c, r, a)))
    .collect();

    for (i, r) in records.iter().enumerate() {
        let id = &ids[i];
        let want = expect(r, deadline_passed);
        let what = format!("record {i} {r:?} expected {want:?}");
        prop_assert_eq!(
            failed.contains(&id.as_str()),
            want.failed,
            "batch item failure: {}",
            what
        );
        let delay = delays.get(&format!("rh-{id}"));
        match want.delay {
            None => prop_assert!(delay.is_none(), "hidden for {:?}: {}", delay, what),
            Some((low, high)) => {
                let d = delay.copied();
                prop_assert!(
                    d.is_some_and(|d| d >= low && d <= high),
                    "delay {:?} outside [{:?}, {:?}]: {}",
                    d,
                    low,
                    high,
                    what
                )
            }
        }
        match (want.dead, dead.get(id)) {
            (None, None) => {}
            (Some((class, kind)), Some((sent_body, own, letter))) => {
                prop_assert_eq!(letter.error_class.as_str(), class, "{}", what);
                prop_assert_eq!(letter.error_kind.as_str(), kind, "{}", what);
                prop_assert_eq!(letter.attempts, r.attempt, "{}", what);
                prop_assert_eq!(letter.source_queue.as_str(), "default", "{}", what);
                prop_assert_eq!(sent_body, &bodies[i], "the original body: {}", what);
                prop_assert_eq!(own, &r.own, "the producer's attributes: {}", what);
                let named = !matches!(r.kind, Kind::NotJson | Kind::NotAnObject);
                prop_assert_eq!(letter.task.is_some(), named, "{}", what);
            }
            (want_dead, got) => prop_assert!(
                false,
                "dead letter {:?}, got {:?}: {}",
                want_dead,
                got,
                what
            ),
        }
        match (want.run, runs.get(id)) {
            (None, None) => {}
            (Some((status, disposition, class, replayed)), Some((s, d, c, rp, a))) => {
                prop_assert_eq!(
                    (s.as_str(), d.as_str(), c.as_deref(), *rp, *a as u32),
                    (status, disposition, class, replayed, r.attempt),
                    "task_runs: {}",
                    what
                );
            }
            (want_run, got) => {
                prop_assert!(false, "task_runs {:?}, got {:?}: {}", want_run, got, what)
            }
        }
    }
    if let Ok(mut checked) = CHECKED.lock() {
        for r in &records {
            let key = if deadline_passed {
                "not started (deadline)".to_owned()
            } else {
                format!("{:?} attempt {}", r.kind, r.attempt)
            };
            *checked.entry(key).or_default() += 1;
        }
    }
    // Nothing else was touched.
    prop_assert!(dead.keys().all(|k| ids.contains(k)), "{:?}", dead.keys());
    prop_assert!(failed.iter().all(|f| ids.iter().any(|i| i == f)));
    Ok(())
}

#[test]
fn generated_batches_end_as_the_model_says() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let stack = rt.block_on(TestStack::start()).expect("stack");
    let mut runner = generated_cases(40, 1000, 64);
    let case = (
        prop::collection::vec(record(), 1..=10),
        prop::bool::weighted(0.1),
    );
    let result = runner.run(&case, |(records, deadline_passed)| {
        rt.block_on(check_batch(&stack, records, deadline_passed))
    });
    rt.block_on(stack.cleanup());
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "batch model: records checked by kind and attempt: {:?}",
        CHECKED.lock().map(|c| c.clone()).unwrap_or_default()
    );
}
