//! DLQ operations against a model: generated dead-letter queues (messages the runtime forwarded, with a
//! task, an error class, a failure time and sometimes their producer's own attributes, and messages the
//! queue's redrive policy moved, with none of ours), generated filters, dry and real runs of `dlq_redrive`
//! through the real default function against LocalStack. The model is a plain filter over what was put in:
//! matched is its count, moved is min(matched, max_messages), the rest stays, nothing is lost or doubled,
//! the moved messages arrive as their producer sent them, and a second identical run finds what is left.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Duration, TimeZone, Utc};
use dualcaster::queue::{DeadLetter, MessageAttribute, MessageAttributes, Queue};
use dualcaster_tools::local::function::LocalFunction;
use integration_tests::{check_generated, run_task, TestStack};
use proptest::prelude::*;
use serde_json::{json, Value};

const TASKS: [&str; 3] = ["ping", "noop", "prune_price_history"];
const CLASSES: [&str; 4] = [
    "invalid_kwargs",
    "database",
    "malformed_message",
    "task_failed",
];

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
        .single()
        .expect("a time")
}

#[derive(Debug, Clone)]
struct Letter {
    /// `None`: moved by the queue's redrive policy, without our context.
    context: Option<(usize, usize, i64)>,
    own: MessageAttributes,
}

#[derive(Debug, Clone)]
struct Filter {
    task: Option<usize>,
    class: Option<usize>,
    after: Option<i64>,
    before: Option<i64>,
    dry_run: bool,
    max_messages: u32,
}

impl Filter {
    fn filtered(&self) -> bool {
        self.task.is_some() || self.class.is_some() || self.after.is_some() || self.before.is_some()
    }

    /// The model: straight from the redrive's contract.
    fn matches(&self, letter: &Letter) -> bool {
        if !self.filtered() {
            return true;
        }
        let Some((task, class, minute)) = letter.context else {
            return false;
        };
        self.task.is_none_or(|t| t == task)
            && self.class.is_none_or(|c| c == class)
            && self.after.is_none_or(|a| minute >= a)
            && self.before.is_none_or(|b| minute < b)
    }

    fn kwargs(&self) -> Value {
        let at = |m: i64| (base_time() + Duration::minutes(m)).to_rfc3339();
        let mut k = json!({"queue": "default", "dry_run": self.dry_run,
                           "max_messages": self.max_messages, "rate_per_second": 500});
        if let Some(t) = self.task {
            k["task"] = json!(TASKS[t]);
        }
        if let Some(c) = self.class {
            k["error_class"] = json!(CLASSES[c]);
        }
        if let Some(a) = self.after {
            k["failed_after"] = json!(at(a));
        }
        if let Some(b) = self.before {
            k["failed_before"] = json!(at(b));
        }
        k
    }
}

fn own_attributes() -> impl Strategy<Value = MessageAttributes> {
    let attribute = prop_oneof![
        "[a-z0-9-]{1,20}".prop_map(|v| MessageAttribute::string("String", v)),
        (0u32..100_000).prop_map(|n| MessageAttribute::string("Number", n.to_string())),
        "[a-f0-9]{8}".prop_map(|v| MessageAttribute::string("String.traceparent", v)),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(|b| MessageAttribute {
            data_type: "Binary".into(),
            string_value: None,
            binary_value: Some(b),
        }),
    ];
    prop_oneof![
        3 => Just(0usize),
        2 => 1usize..=3,
        1 => Just(10usize),
    ]
    .prop_flat_map(move |n| prop::collection::vec(attribute.clone(), n))
    .prop_map(|attrs| {
        attrs
            .into_iter()
            .enumerate()
            .map(|(i, a)| (format!("own{i}"), a))
            .collect()
    })
}

fn letter() -> impl Strategy<Value = Letter> {
    let context = prop_oneof![
        9 => (0..TASKS.len(), 0..CLASSES.len(), 0i64..14_400).prop_map(Some),
        1 => Just(None),
    ];
    (context, own_attributes()).prop_map(|(context, own)| Letter { context, own })
}

fn filter() -> impl Strategy<Value = Filter> {
    (
        prop::option::weighted(0.5, 0..TASKS.len()),
        prop::option::weighted(0.5, 0..CLASSES.len()),
        prop::option::weighted(0.3, 0i64..14_400),
        prop::option::weighted(0.3, 0i64..14_400),
        any::<bool>(),
        prop_oneof![1u32..=20, 20u32..=400],
    )
        .prop_map(
            |(task, class, after, before, dry_run, max_messages)| Filter {
                task,
                class,
                after,
                before,
                dry_run,
                max_messages,
            },
        )
}

async fn fill(stack: &TestStack, letters: &[Letter]) {
    let entries: Vec<SendMessageBatchRequestEntry> = letters
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let attributes = match l.context {
                Some((task, class, minute)) => DeadLetter {
                    task: Some(TASKS[task].into()),
                    error_kind: "permanent".into(),
                    error_class: CLASSES[class].into(),
                    error_message: format!("{} failed", TASKS[task]),
                    attempts: 1,
                    failed_at: base_time() + Duration::minutes(minute),
                    source_queue: "default".into(),
                    source_message_id: format!("src-{i}"),
                    carried: MessageAttributes::new(),
                    trace_header: None,
                }
                .to_attributes(&l.own),
                None => l
                    .own
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.to_sdk()?)))
                    .collect(),
            };
            SendMessageBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .message_body(body(i))
                .set_message_attributes((!attributes.is_empty()).then_some(attributes))
                .build()
                .expect("an entry")
        })
        .collect();
    for chunk in entries.chunks(10) {
        let out = stack
            .sqs
            .send_message_batch()
            .queue_url(stack.dlq_url(Queue::Default))
            .set_entries(Some(chunk.to_vec()))
            .send()
            .await
            .expect("SendMessageBatch");
        assert!(out.failed().is_empty(), "{:?}", out.failed());
    }
}

fn body(i: usize) -> String {
    json!({"task": "ping", "id": format!("dl-{i}")}).to_string()
}

async fn redrive(function: &LocalFunction, kwargs: &Value) -> Value {
    match run_task(function, "dlq_redrive", kwargs.clone()).await {
        Ok(report) => report["detail"].clone(),
        Err(e) => panic!("{kwargs}: {e}"),
    }
}

/// Bodies by index and their attributes, of every message in `url`.
async fn contents(stack: &TestStack, url: &str) -> BTreeMap<usize, Vec<MessageAttributes>> {
    let mut out: BTreeMap<usize, Vec<MessageAttributes>> = BTreeMap::new();
    for m in stack.read_all(url).await.expect("read") {
        let id: Value = serde_json::from_str(&m.body).expect("a body we sent");
        let i: usize = id["id"]
            .as_str()
            .and_then(|s| s.strip_prefix("dl-"))
            .and_then(|s| s.parse().ok())
            .expect("an index");
        out.entry(i).or_default().push(m.message_attributes);
    }
    out
}

async fn check_case(letters: Vec<Letter>, filter: Filter) -> Result<(), TestCaseError> {
    let stack = TestStack::start().await.expect("stack");
    let function = stack.function(Queue::Default, &[]).await.expect("function");
    fill(&stack, &letters).await;
    let kwargs = filter.kwargs();
    let matching: BTreeSet<usize> = (0..letters.len())
        .filter(|i| filter.matches(&letters[*i]))
        .collect();
    let n = letters.len() as u64;
    let max = u64::from(filter.max_messages);
    let move_task = !filter.filtered() && !filter.dry_run && n <= max;

    let report = redrive(&function, &kwargs).await;
    let case = format!("{} letters, {filter:?}: {report}", letters.len());
    prop_assert_eq!(report["depth_seen"].as_u64(), Some(n), "{}", case);
    prop_assert_eq!(
        report["matched"].as_u64(),
        Some(matching.len() as u64),
        "{}",
        case
    );
    let expected_moved = if filter.dry_run {
        0
    } else {
        (matching.len() as u64).min(max)
    };
    if move_task {
        prop_assert!(report["move_task_handle"].as_str().is_some(), "{}", case);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while stack
            .depth(stack.dlq_url(Queue::Default))
            .await
            .expect("depth")
            > 0
        {
            prop_assert!(
                tokio::time::Instant::now() < deadline,
                "the move task did not finish: {}",
                case
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    } else {
        prop_assert_eq!(report["scanned"].as_u64(), Some(n), "{}", case);
        prop_assert_eq!(report["complete"].as_bool(), Some(true), "{}", case);
        prop_assert_eq!(report["moved"].as_u64(), Some(expected_moved), "{}", case);
    }

    let source = contents(&stack, stack.queue_url(Queue::Default)).await;
    let dlq = contents(&stack, stack.dlq_url(Queue::Default)).await;
    // Nothing lost, nothing doubled: every letter is in exactly one of the two queues, once.
    for i in 0..letters.len() {
        let copies = source.get(&i).map_or(0, Vec::len) + dlq.get(&i).map_or(0, Vec::len);
        prop_assert_eq!(
            copies,
            1,
            "letter {} is there {} times: {}",
            i,
            copies,
            case
        );
    }
    prop_assert_eq!(source.len() as u64, expected_moved, "{}", case);
    for (i, attrs) in &source {
        prop_assert!(
            matching.contains(i),
            "letter {} moved without matching: {}",
            i,
            case
        );
        // Back as its producer sent it. SQS's own move keeps every attribute of the dead letter, ours too:
        // the runtime gives the task the producer's (those carried inside `dd.failure` included).
        let attrs = if move_task {
            dualcaster::queue::producer_attributes(&attrs[0])
        } else {
            attrs[0].clone()
        };
        prop_assert_eq!(&attrs, &letters[*i].own, "letter {}: {}", i, case);
    }

    if !filter.dry_run && !move_task {
        // A second identical run finds only what the cap left behind.
        let again = redrive(&function, &kwargs).await;
        let left = matching.len() as u64 - expected_moved;
        prop_assert_eq!(
            again["matched"].as_u64(),
            Some(left),
            "second run {}: {}",
            again,
            case
        );
        if !filter.filtered() && left <= max {
            // What is left now fits under the cap: SQS's message move task takes it.
            prop_assert!(
                again["move_task_handle"].as_str().is_some(),
                "second run {}: {}",
                again,
                case
            );
        } else {
            prop_assert_eq!(
                again["moved"].as_u64(),
                Some(left.min(max)),
                "second run {}: {}",
                again,
                case
            );
        }
    }
    drop(function);
    stack.cleanup().await;
    Ok(())
}

#[test]
fn generated_dead_letter_queues_redrive_as_the_model_says() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let case = (prop::collection::vec(letter(), 0..=140), filter());
    check_generated((6, 60, 24), &case, |(letters, filter)| {
        rt.block_on(check_case(letters, filter))
    });
}

/// A filtered redrive whose matching messages are not among the first ten received used to stop there
/// (`scanned 10, matched 0`): non-matching messages released at once came straight back.
#[test]
fn a_filtered_redrive_looks_past_the_first_ten() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let malformed = (0..17).map(|m| Letter {
        context: Some((0, 2, m)),
        own: MessageAttributes::new(),
    });
    let wanted = (0..7).map(|m| Letter {
        context: Some((0, 0, 100 + m)),
        own: MessageAttributes::new(),
    });
    let database = Letter {
        context: Some((0, 1, 50)),
        own: MessageAttributes::new(),
    };
    let letters: Vec<Letter> = malformed.chain([database]).chain(wanted).collect();
    for dry_run in [true, false] {
        let filter = Filter {
            task: None,
            class: Some(0),
            after: None,
            before: None,
            dry_run,
            max_messages: 100,
        };
        rt.block_on(check_case(letters.clone(), filter))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
