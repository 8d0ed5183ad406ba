use std::time::Duration;

use chrono::Utc;
use dualcaster::local::function::{Invoked, LocalFunction};
use dualcaster::local::runtime_api::InvokeOutcome;
use dualcaster::queue::{DeadLetter, Queue};
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
    let record = DeadLetter {
        task: Some("ping".into()),
        error_kind: "retryable".into(),
        error_class: class.into(),
        error_message: format!("{class} while running ping"),
        attempts: 4,
        failed_at: Utc::now(),
        source_queue: "default".into(),
        source_message_id: uuid::Uuid::new_v4().to_string(),
    };
    stack
        .sqs
        .send_message()
        .queue_url(stack.dlq_url(Queue::Default))
        .message_body(body)
        .set_message_attributes(Some(record.to_attributes()))
        .send()
        .await
        .unwrap();
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
