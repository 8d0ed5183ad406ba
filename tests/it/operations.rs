use std::time::Duration;

use chrono::Utc;
use dualcaster::queue::{DeadLetter, MessageAttributes, Queue};
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use integration_tests::{ping, TestStack};
use serde_json::{json, Value};

async fn invoke(function: &LocalFunction, payload: Value) -> Result<Value, (String, String)> {
    match function.invoke(payload.clone()).await.unwrap() {
        Invoked::Outcome(InvokeOutcome::Response(v)) => Ok(v),
        Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        }) => Err((error_type, error_message)),
        other => panic!("{payload}: {other:?}"),
    }
}

/// Puts `body` in the default DLQ as the runtime would have after a failure of `class`.
async fn dead_letter(stack: &TestStack, body: &str, class: &str) {
    dead_letter_with(stack, body, class, &Default::default()).await;
}

/// [`dead_letter`] of a message that carried its producer's attributes `own`.
async fn dead_letter_with(stack: &TestStack, body: &str, class: &str, own: &MessageAttributes) {
    let record = DeadLetter {
        task: Some("ping".into()),
        error_kind: "retryable".into(),
        error_class: class.into(),
        error_message: format!("{class} while running ping"),
        attempts: 4,
        failed_at: Utc::now(),
        source_queue: "default".into(),
        source_message_id: uuid::Uuid::new_v4().to_string(),
        carried: Default::default(),
        trace_header: None,
    };
    let attributes = record.message_attributes(own);
    send_with(stack, stack.dlq_url(Queue::Default), body, &attributes).await;
}

#[tokio::test]
async fn a_filtered_redrive_replays_only_the_matching_dead_letters_and_they_run() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    // Three pings that died while the database was down, two that failed for good.
    for i in 0..3 {
        dead_letter(
            &stack,
            &ping(&format!("outage-{i}"), json!({})),
            "database_unavailable",
        )
        .await;
    }
    for i in 0..2 {
        dead_letter(
            &stack,
            &ping(&format!("bad-{i}"), json!({"drill": "permanent"})),
            "task_failed",
        )
        .await;
    }
    let filter = json!({"queue": "default", "error_class": "database_unavailable"});

    let dry = invoke(&function, json!({"task": "dlq_redrive", "kwargs": filter}))
        .await
        .unwrap();
    let d = &dry["detail"];
    assert_eq!(
        (
            d["dry_run"].as_bool(),
            d["matched"].as_u64(),
            d["moved"].as_u64()
        ),
        (Some(true), Some(3), Some(0)),
        "{dry}"
    );
    assert_eq!(d["scanned"], 5);
    let samples = d["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    assert!(samples
        .iter()
        .all(|s| s["error_class"] == "database_unavailable" && s["task"] == "ping"));
    assert_eq!(
        stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(),
        5,
        "a dry run moves nothing"
    );
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        0
    );

    let mut real = filter.clone();
    real["dry_run"] = json!(false);
    let done = invoke(&function, json!({"task": "dlq_redrive", "kwargs": real}))
        .await
        .unwrap();
    assert_eq!(done["detail"]["moved"], 3, "{done}");
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        stack.heartbeats().await.unwrap(),
        vec!["outage-0", "outage-1", "outage-2"],
        "the replayed pings ran"
    );
    assert_eq!(
        stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(),
        2,
        "the others stay in the DLQ"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn an_unfiltered_redrive_moves_everything_back_with_a_message_move_task() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    for i in 0..3 {
        dead_letter(
            &stack,
            &ping(&format!("moved-{i}"), json!({})),
            "database_unavailable",
        )
        .await;
    }
    let out = invoke(
        &function,
        json!({"task": "dlq_redrive", "kwargs": {"queue": "default", "dry_run": false}}),
    )
    .await
    .unwrap();
    assert_eq!(out["detail"]["matched"], 3, "{out}");
    assert!(
        out["detail"]["move_task_handle"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{out}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stack.depth(stack.dlq_url(Queue::Default)).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the move task did not empty the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        3
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn purging_a_dlq_needs_a_confirmation_that_names_it() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    for i in 0..2 {
        dead_letter(&stack, &ping(&format!("p-{i}"), json!({})), "task_failed").await;
    }
    let (error_type, message) = invoke(
        &function,
        json!({"task": "dlq_purge", "kwargs": {"queue": "default", "confirm": "yes"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(error_type, "invalid_kwargs");
    assert!(message.contains("`purge default-dlq`"), "{message}");
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 2);

    let out = invoke(&function, json!({"task": "dlq_purge", "kwargs": {"queue": "default", "confirm": "purge default-dlq"}}))
        .await
        .unwrap();
    assert_eq!(out["detail"]["purged"], 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.depth(stack.dlq_url(Queue::Default)).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the DLQ was not purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.cleanup().await;
}

/// The producer's own attributes: a correlation id, a trace header with a custom type, bytes that are not
/// UTF-8.
fn own_attributes() -> MessageAttributes {
    use dualcaster::queue::MessageAttribute;
    [
        (
            "correlation_id",
            MessageAttribute::string("String", "order-7"),
        ),
        (
            "traceparent",
            MessageAttribute::string("String.w3c", "00-4bf92f3577b34da6-01"),
        ),
        (
            "blob",
            MessageAttribute {
                data_type: "Binary".into(),
                string_value: None,
                binary_value: Some(vec![0xff, 0x00, 0x80]),
            },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn send_with(stack: &TestStack, url: &str, body: &str, attrs: &MessageAttributes) {
    stack
        .sqs
        .send_message()
        .queue_url(url)
        .message_body(body)
        .set_message_attributes(Some(
            attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.to_sdk().unwrap()))
                .collect(),
        ))
        .send()
        .await
        .unwrap();
}

/// Dead letters used to keep only the runtime's `dd.*` attributes, and a redrive sent the body alone.
#[tokio::test]
async fn a_messages_own_attributes_survive_the_dlq_and_both_kinds_of_redrive() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let own = own_attributes();
    let failing = ping("attrs-failing", json!({"drill": "permanent"}));
    send_with(&stack, stack.queue_url(Queue::Default), &failing, &own).await;
    let dead_letter_with_own =
        |stage: &str, attempts: Option<u32>, stack_dead: Vec<integration_tests::DeadLettered>| {
            assert_eq!(stack_dead.len(), 1, "{stage}: {stack_dead:#?}");
            let d = &stack_dead[0];
            let mut attrs = d.message_attributes.clone();
            assert!(attrs.remove("dd.failure").is_some(), "{d:?}");
            assert_eq!(
                attrs, own,
                "the DLQ keeps the producer's attributes beside one of ours"
            );
            if let Some(attempts) = attempts {
                assert_eq!(d.failure().attempts, attempts, "{stage}");
            }
            assert_eq!(d.failure().error_class, "task_failed", "{stage}");
        };
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    dead_letter_with_own(
        "dead-lettered",
        Some(1),
        stack.dead_letters(Queue::Default).await.unwrap(),
    );

    // A filtered redrive sends it back as it was sent: the same attributes, none of ours.
    let filter = json!({"queue": "default", "task": "ping", "dry_run": false});
    let out = invoke(&function, json!({"task": "dlq_redrive", "kwargs": filter}))
        .await
        .unwrap();
    assert_eq!(out["detail"]["moved"], 1, "{out}");
    let back = stack
        .read_all(stack.queue_url(Queue::Default))
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_attributes, own);
    assert_eq!(back[0].body, failing);
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    // Received twice: once by the look above.
    dead_letter_with_own(
        "after a filtered redrive",
        Some(2),
        stack.dead_letters(Queue::Default).await.unwrap(),
    );

    // SQS's own move keeps every attribute; failing again replaces our context rather than adding one.
    let all = json!({"queue": "default", "dry_run": false});
    invoke(&function, json!({"task": "dlq_redrive", "kwargs": all}))
        .await
        .unwrap();
    wait_empty(&stack, stack.dlq_url(Queue::Default)).await;
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    dead_letter_with_own(
        "after SQS's move",
        None,
        stack.dead_letters(Queue::Default).await.unwrap(),
    );
    invoke(&function, json!({"task": "dlq_purge", "kwargs": {"queue": "default", "confirm": "purge default-dlq"}}))
        .await
        .unwrap();
    wait_empty(&stack, stack.dlq_url(Queue::Default)).await;

    // The task reads them, after a filtered redrive and after SQS's move, even with all ten SQS allows
    // (then carried inside our context).
    let ten: MessageAttributes = (0..10)
        .map(|i| {
            (
                format!("a{i}"),
                dualcaster::queue::MessageAttribute::string("String", format!("v{i}")),
            )
        })
        .collect();
    for (id, attrs, kwargs) in [
        (
            "attrs-filtered",
            &own,
            json!({"queue": "default", "error_class": "database_unavailable", "dry_run": false}),
        ),
        (
            "attrs-moved",
            &ten,
            json!({"queue": "default", "dry_run": false}),
        ),
    ] {
        dead_letter_with(&stack, &ping(id, json!({})), "database_unavailable", attrs).await;
        invoke(&function, json!({"task": "dlq_redrive", "kwargs": kwargs}))
            .await
            .unwrap();
        wait_empty(&stack, stack.dlq_url(Queue::Default)).await;
        stack
            .drain(&source, &function, Duration::from_secs(30))
            .await
            .unwrap();
        let detail: Value = sqlx::query_scalar(
            "SELECT detail FROM task_runs WHERE run_key = $1 AND status = 'succeeded'",
        )
        .bind(id)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        let expected: serde_json::Map<String, Value> = attrs
            .iter()
            .map(|(k, v)| {
                let shown = match (&v.string_value, &v.binary_value) {
                    (Some(s), _) => s.clone(),
                    (None, Some(b)) => format!("({} bytes)", b.len()),
                    (None, None) => String::new(),
                };
                (k.clone(), Value::String(shown))
            })
            .collect();
        assert_eq!(
            detail["attributes"],
            Value::Object(expected),
            "{id}: {detail}"
        );
    }
    stack.cleanup().await;
}

/// Waits until a queue holds nothing.
async fn wait_empty(stack: &TestStack, url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stack.depth(url).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not empty"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real redrive the deadline cuts short hands the rest to a follow-up message, which carries on until every
/// matching dead letter has moved, each exactly once, and the others stay.
#[tokio::test]
async fn a_redrive_cut_short_by_its_deadline_continues_in_a_follow_up() {
    let stack = TestStack::start().await.unwrap();
    // Eight seconds per invocation: a redrive stops five seconds before its deadline.
    let function = stack
        .function_with_timeout(Queue::Default, &[], Duration::from_secs(8))
        .await
        .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    for i in 0..40 {
        dead_letter(
            &stack,
            &ping(&format!("outage-{i:02}"), json!({})),
            "database_unavailable",
        )
        .await;
    }
    for i in 0..5 {
        dead_letter(&stack, &ping(&format!("bad-{i}"), json!({})), "task_failed").await;
    }
    let filter = json!({"queue": "default", "error_class": "database_unavailable",
                        "dry_run": false, "rate_per_second": 5});
    let first = invoke(&function, json!({"task": "dlq_redrive", "kwargs": filter}))
        .await
        .unwrap();
    let d = &first["detail"];
    assert_eq!(d["complete"], false, "{first}");
    let moved_first = d["moved"].as_u64().unwrap();
    assert!((1..40).contains(&moved_first), "{first}");
    assert!(d["continuation"].is_string(), "{first}");

    // The follow-ups arrive on the default queue (and the moved pings with them).
    stack
        .drain(&source, &function, Duration::from_secs(120))
        .await
        .unwrap();
    let expected: Vec<String> = (0..40).map(|i| format!("outage-{i:02}")).collect();
    assert_eq!(stack.heartbeats().await.unwrap(), expected);
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 5);
    let moved: Vec<i64> = sqlx::query_scalar(
        "SELECT (detail->>'moved')::bigint FROM task_runs WHERE task = 'dlq_redrive' AND status = 'succeeded' \
         ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert!(moved.len() >= 2, "{moved:?}");
    assert_eq!(moved.iter().sum::<i64>(), 40, "each moved once: {moved:?}");
    stack.cleanup().await;
}
