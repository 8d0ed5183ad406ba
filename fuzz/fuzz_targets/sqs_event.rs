//! The batch runtime on arbitrary SQS events and direct-invoke payloads: no panic escapes, the invocation
//! itself succeeds for any well-formed event, every reported failure names one of the batch's records, and
//! whatever is dead-lettered is one of the batch's bodies.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use dualcaster::config::Settings;
use dualcaster::context::{Services, TaskContext, Upstreams};
use dualcaster::db::RunLog;
use dualcaster::error::TaskError;
use dualcaster::lease::memory::MemoryLeaseStore;
use dualcaster::queue::{DeadLetter, MessageAttributes, Queue, QueueOps};
use dualcaster::registry::{Registry, Task, TaskSpec};
use dualcaster::report::{Counts, TaskReport};
use dualcaster::runtime::{Invocation, Runtime};
use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct FlakyArgs {
    #[garde(range(max = 2))]
    fail: u8,
}

#[derive(Debug, Serialize)]
struct Done;

impl TaskReport for Done {
    fn counts(&self) -> Counts {
        Counts::new(1, 0)
    }
}

/// Succeeds (`fail: 0`), fails retryably (1) or permanently (2).
struct Flaky;

impl Task for Flaky {
    const NAME: &'static str = "flaky";
    const QUEUE: Queue = Queue::Default;
    type Args = FlakyArgs;
    type Report = Done;

    async fn run(args: FlakyArgs, _ctx: TaskContext) -> Result<Done, TaskError> {
        match args.fail {
            0 => Ok(Done),
            1 => Err(TaskError::retryable("task_retryable", "flaky")),
            _ => Err(TaskError::permanent("task_failed", "flaky")),
        }
    }
}

#[derive(Default)]
struct MemoryQueue {
    dead: Mutex<Vec<String>>,
}

impl QueueOps for MemoryQueue {
    fn delay_retry<'a>(
        &'a self,
        _queue: &'a str,
        _receipt: &'a str,
        _delay: Duration,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async { Ok(()) })
    }

    fn dead_letter<'a>(
        &'a self,
        _dlq: &'a str,
        body: &'a str,
        _own: &'a MessageAttributes,
        _record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        self.dead.lock().unwrap().push(body.to_owned());
        Box::pin(async { Ok(()) })
    }
}

struct Harness {
    tokio: tokio::runtime::Runtime,
    runtime: Runtime,
    queue: Arc<MemoryQueue>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("DD_LEASE_TABLE".into(), "leases".into());
        env.insert(
            "DATABASE_URL".into(),
            "postgresql://nobody@127.0.0.1:1/none".into(),
        );
        env.insert("DD_DEADLINE_MARGIN_MS".into(), "100".into());
        for q in Queue::ALL {
            env.insert(format!("DD_QUEUE_URL_{}", q.env_suffix()), format!("q/{q}"));
            env.insert(
                format!("DD_DLQ_URL_{}", q.env_suffix()),
                format!("q/{q}-dlq"),
            );
        }
        let settings = Settings::from_lookup(|k| env.get(k).cloned()).unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = tokio.enter();
        let db = dualcaster::db::lazy_pool(&settings).unwrap();
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .build(),
        );
        let upstreams = Upstreams::from_settings(&settings).unwrap();
        let services = Arc::new(Services {
            settings,
            db,
            db_secret: None,
            sqs,
            leases: Arc::new(MemoryLeaseStore::new()),
            upstreams,
        });
        let registry = Registry::from_specs([
            TaskSpec::of::<Flaky>(),
            TaskSpec::of::<dualcaster::tasks::noop::Noop>(),
        ])
        .unwrap();
        let queue = Arc::new(MemoryQueue::default());
        let runtime = Runtime::new(
            Queue::Default,
            registry,
            services,
            queue.clone(),
            RunLog::Disabled,
            "fuzz",
        );
        drop(_guard);
        Harness {
            tokio,
            runtime,
            queue,
        }
    })
}

#[derive(Debug, Arbitrary)]
struct Record {
    body: String,
    receive_count: Option<String>,
    shared_id: bool,
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// A well-formed SQS event whose records carry arbitrary bodies and receive counts.
    Event(Vec<Record>),
    /// Any payload at all (a direct invoke, or something that only looks like an event).
    Raw(String),
}

fuzz_target!(|input: Input| {
    let h = harness();
    h.queue.dead.lock().unwrap().clear();
    let invocation = Invocation::with_timeout("fuzz", Duration::from_secs(30));
    match input {
        Input::Event(records) => {
            let records: Vec<Record> = records.into_iter().take(10).collect();
            let ids: Vec<String> = records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    if r.shared_id {
                        "shared".into()
                    } else {
                        format!("m{i}")
                    }
                })
                .collect();
            let event = json!({"Records": records.iter().zip(&ids).map(|(r, id)| {
                let mut attributes = json!({"SentTimestamp": "1795708059351"});
                if let Some(count) = &r.receive_count {
                    attributes["ApproximateReceiveCount"] = json!(count);
                }
                json!({
                    "messageId": id,
                    "receiptHandle": format!("rh-{id}"),
                    "body": r.body,
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:fuzz-default",
                    "awsRegion": "us-east-1",
                })
            }).collect::<Vec<_>>()});
            let response = h
                .tokio
                .block_on(h.runtime.handle(event, invocation))
                .unwrap_or_else(|e| panic!("a well-formed event failed as a whole: {e:?}"));
            for failure in response["batchItemFailures"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let id = failure["itemIdentifier"].as_str().unwrap_or_default();
                assert!(
                    ids.iter().any(|i| i == id),
                    "unknown failure id {id}: {response}"
                );
            }
            for body in h.queue.dead.lock().unwrap().iter() {
                assert!(
                    records.iter().any(|r| &r.body == body),
                    "dead-lettered an unknown body"
                );
            }
        }
        Input::Raw(text) => {
            let payload = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let _ = h.tokio.block_on(h.runtime.handle(payload, invocation));
        }
    }
});
