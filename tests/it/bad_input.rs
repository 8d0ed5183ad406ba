//! The bad-input corpus: every kind of bad message, sent through the real queue between good batch-mates,
//! ends in the DLQ after one attempt with a precise error class and message, and the good ones run.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use dualcaster::queue::{DeadLetter, Queue};
use integration_tests::TestStack;
use serde_json::json;

struct Bad {
    kind: &'static str,
    body: String,
    class: &'static str,
    /// A part of the error message that says what was wrong.
    says: &'static str,
}

fn bad(
    kind: &'static str,
    body: impl Into<String>,
    class: &'static str,
    says: &'static str,
) -> Bad {
    Bad {
        kind,
        body: body.into(),
        class,
        says,
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn corpus() -> Vec<Bad> {
    const MALFORMED: &str = "malformed_message";
    const KWARGS: &str = "invalid_kwargs";
    vec![
        bad(
            "not JSON",
            r#"{"task": "ping""#,
            MALFORMED,
            "body is not JSON",
        ),
        bad("plain text", "ping please", MALFORMED, "body is not JSON"),
        bad("whitespace only", " \n\t ", MALFORMED, "body is not JSON"),
        bad(
            "trailing garbage",
            r#"{"task": "noop"} and more"#,
            MALFORMED,
            "trailing characters",
        ),
        bad(
            "byte order mark",
            "\u{feff}{\"task\": \"noop\"}",
            MALFORMED,
            "body is not JSON",
        ),
        bad(
            "lone surrogate escape",
            r#"{"task": "noop", "id": "\udc00"}"#,
            MALFORMED,
            "surrogate",
        ),
        bad(
            "JSON array",
            "[1, 2, 3]",
            MALFORMED,
            "must be a JSON object, got an array",
        ),
        bad(
            "JSON string",
            r#""ping""#,
            MALFORMED,
            "must be a JSON object, got a string",
        ),
        bad(
            "JSON number",
            "42",
            MALFORMED,
            "must be a JSON object, got a number",
        ),
        bad(
            "JSON null",
            "null",
            MALFORMED,
            "must be a JSON object, got null",
        ),
        bad(
            "missing task",
            r#"{"kwargs": {}}"#,
            MALFORMED,
            "missing field `task`",
        ),
        bad(
            "task not a string",
            r#"{"task": 7}"#,
            MALFORMED,
            "invalid type",
        ),
        bad(
            "empty task",
            r#"{"task": ""}"#,
            MALFORMED,
            "`task` is empty",
        ),
        bad(
            "control characters in task",
            r#"{"task": "no\nop"}"#,
            MALFORMED,
            "control characters",
        ),
        bad(
            "overlong task name",
            json!({"task": "x".repeat(200)}).to_string(),
            MALFORMED,
            "bytes long",
        ),
        bad(
            "unknown envelope field",
            r#"{"task": "noop", "priority": 9}"#,
            MALFORMED,
            "unknown field `priority`",
        ),
        bad(
            "kwargs not an object",
            r#"{"task": "noop", "kwargs": [1]}"#,
            MALFORMED,
            "invalid type",
        ),
        bad(
            "id not a string",
            r#"{"task": "noop", "id": 12}"#,
            MALFORMED,
            "invalid type",
        ),
        bad(
            "expires_at not a time",
            r#"{"task": "noop", "expires_at": "tomorrow"}"#,
            MALFORMED,
            "invalid",
        ),
        bad(
            "schema version 2",
            r#"{"v": 2, "task": "noop"}"#,
            "unsupported_version",
            "version 2 is not supported",
        ),
        bad(
            "schema version as text",
            r#"{"v": "1", "task": "noop"}"#,
            MALFORMED,
            "`v` must be a positive integer",
        ),
        bad(
            "negative schema version",
            r#"{"v": -1, "task": "noop"}"#,
            MALFORMED,
            "`v` must be a positive integer",
        ),
        bad(
            "unknown task",
            r#"{"task": "pong"}"#,
            "unknown_task",
            "unknown task `pong`",
        ),
        bad(
            "task of another queue",
            r#"{"task": "compute_price_metrics"}"#,
            "wrong_queue",
            "runs on the analytics queue",
        ),
        bad(
            "unknown kwarg",
            r#"{"task": "noop", "kwargs": {"lable": "x"}}"#,
            KWARGS,
            "unknown field `lable`",
        ),
        bad(
            "kwarg of the wrong type",
            r#"{"task": "ping", "kwargs": {"work_ms": "slow"}}"#,
            KWARGS,
            "invalid type",
        ),
        bad(
            "a 200 KB string where a number belongs (serde quotes it in its error)",
            json!({"task": "ping", "kwargs": {"work_ms": "9".repeat(200_000)}}).to_string(),
            KWARGS,
            "work_ms: invalid type: string",
        ),
        bad(
            "negative duration",
            r#"{"task": "ping", "kwargs": {"work_ms": -1}}"#,
            KWARGS,
            "work_ms",
        ),
        bad(
            "kwarg over its bound",
            r#"{"task": "ping", "kwargs": {"work_ms": 60001}}"#,
            KWARGS,
            "work_ms",
        ),
        bad(
            "a NUL character in a string kwarg (Postgres stores none)",
            r#"{"task": "ping", "kwargs": {"note": "nul\u0000here"}}"#,
            KWARGS,
            "note: a NUL character",
        ),
        bad(
            "missing required kwarg",
            r#"{"task": "dlq_purge", "kwargs": {"queue": "default"}}"#,
            KWARGS,
            "missing field `confirm`",
        ),
        bad(
            "null for a required kwarg",
            r#"{"task": "dlq_purge", "kwargs": {"queue": "default", "confirm": null}}"#,
            KWARGS,
            "confirm",
        ),
        bad(
            "unknown enum value",
            r#"{"task": "dlq_report", "kwargs": {"queues": ["archive"]}}"#,
            KWARGS,
            "unknown variant `archive`",
        ),
        bad(
            "zero batch size",
            r#"{"task": "dlq_report", "kwargs": {"scan": 0}}"#,
            KWARGS,
            "scan",
        ),
        bad(
            "negative batch size",
            r#"{"task": "dlq_report", "kwargs": {"scan": -10}}"#,
            KWARGS,
            "scan",
        ),
        bad(
            "absurd batch size",
            r#"{"task": "dlq_report", "kwargs": {"scan": 4294967296}}"#,
            KWARGS,
            "scan",
        ),
        bad(
            "absurd rate",
            r#"{"task": "dlq_redrive", "kwargs": {"queue": "default", "rate_per_second": 1000000}}"#,
            KWARGS,
            "rate_per_second",
        ),
        bad(
            "window below the minimum",
            r#"{"task": "prune_price_history", "kwargs": {"keep_days": 7}}"#,
            KWARGS,
            "keep_days",
        ),
        bad(
            "huge body",
            json!({"task": "noop", "kwargs": {"label": "x".repeat(200_000)}}).to_string(),
            KWARGS,
            "label",
        ),
        bad(
            "huge non-JSON body",
            "x".repeat(250_000),
            MALFORMED,
            "body is not JSON",
        ),
        bad(
            "deep nesting",
            format!(
                r#"{{"task": "noop", "kwargs": {{"label": {}}}}}"#,
                nested(5000)
            ),
            MALFORMED,
            "recursion limit",
        ),
        bad(
            "deep kwargs of the wrong shape",
            format!(
                r#"{{"task": "noop", "kwargs": {{"label": {}}}}}"#,
                nested(50)
            ),
            KWARGS,
            "invalid type",
        ),
    ]
}

/// An attribute no part of the system reads, holding bytes that are not UTF-8.
fn junk_attribute() -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(Blob::new(vec![0xff, 0xfe, 0xc3, 0x28, 0x00, 0x80]))
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_kind_of_bad_message_is_dead_lettered_once_with_its_reason_and_its_batch_mates_run() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let corpus = corpus();
    assert!(corpus.len() >= 30);

    // Bad and good interleaved, so every batch of ten mixes them; every message carries an attribute of
    // bytes that are not UTF-8.
    let mut goods = 0;
    for (i, b) in corpus.iter().enumerate() {
        for (body, label) in [
            (b.body.clone(), b.kind.to_owned()),
            (
                json!({"task": "noop", "id": format!("good-{i}"), "kwargs": {"label": format!("good {i}")}})
                    .to_string(),
                format!("good {i}"),
            ),
        ] {
            stack
                .sqs
                .send_message()
                .queue_url(stack.queue_url(Queue::Default))
                .message_body(&body)
                .message_attributes("junk", junk_attribute())
                .send()
                .await
                .unwrap_or_else(|e| panic!("sending {label}: {e:?}"));
        }
        goods += 1;
    }
    // An expired envelope is not an error: it is acknowledged as skipped, with the reason on record.
    stack
        .send(
            Queue::Default,
            &json!({"task": "noop", "id": "expired-1", "expires_at": "2020-01-01T00:00:00Z"})
                .to_string(),
        )
        .await
        .unwrap();
    // A body SQS itself refuses never enters the queue: characters outside its allowed set.
    for (what, body) in [("a NUL character", "{\"task\": \"noop\u{0}\"}".to_owned())] {
        let refused = stack
            .sqs
            .send_message()
            .queue_url(stack.queue_url(Queue::Default))
            .message_body(body)
            .send()
            .await;
        assert!(refused.is_err(), "SQS accepted a body with {what}");
    }

    let dispatches = stack
        .drain(&source, &function, Duration::from_secs(180))
        .await
        .unwrap();
    assert!(
        dispatches.iter().all(|d| d.invoke_error.is_none()),
        "{dispatches:?}"
    );
    // Permanent failures are dead-lettered by the runtime and deleted from the queue: nothing is retried.
    assert!(
        dispatches.iter().all(|d| d.failed.is_empty()),
        "{dispatches:?}"
    );

    let dead = stack.dead_letters(Queue::Default).await.unwrap();
    let mut by_body: HashMap<&str, Vec<&HashMap<String, String>>> = HashMap::new();
    for d in &dead {
        // The producer's own attribute travels with the dead letter, bytes intact.
        let junk = d.message_attributes.get("junk");
        assert_eq!(
            junk.and_then(|j| j.binary_value.as_deref()),
            Some(&[0xff, 0xfe, 0xc3, 0x28, 0x00, 0x80][..]),
            "{d:?}"
        );
        by_body
            .entry(d.body.as_str())
            .or_default()
            .push(&d.attributes);
    }
    println!("{:<32} {:<20} error message", "kind", "class");
    let mut wrong = Vec::new();
    for b in &corpus {
        let found = by_body
            .get(b.body.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let [a] = found else {
            wrong.push(format!("{}: dead-lettered {} times", b.kind, found.len()));
            continue;
        };
        let Some(f) = DeadLetter::from_attributes(|name| a.get(name).cloned()) else {
            wrong.push(format!(
                "{}: dead-lettered without a failure context: {a:?}",
                b.kind
            ));
            continue;
        };
        let message = &f.error_message;
        println!(
            "{:<32} {:<20} {}",
            b.kind,
            f.error_class,
            message.chars().take(110).collect::<String>()
        );
        if f.error_class != b.class || !message.contains(b.says) {
            wrong.push(format!(
                "{}: expected {} saying {:?}, got {} {message:?}",
                b.kind, b.class, b.says, f.error_class
            ));
        }
        if (f.attempts, f.error_kind.as_str()) != (1, "permanent") {
            wrong.push(format!(
                "{}: not a permanent failure on attempt 1: {a:?}",
                b.kind
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        dead.len(),
        corpus.len(),
        "only the bad messages are dead-lettered"
    );

    let (succeeded, skipped): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'skipped') \
         FROM task_runs WHERE task = 'noop'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!((succeeded, skipped), (goods, 1));
    // However long the input it quotes, a reason stays short (the dead letter keeps the whole body, above,
    // and its attribute the first kilobyte of the reason).
    let longest: i32 = sqlx::query_scalar("SELECT max(length(reason)) FROM task_runs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert!(
        longest as usize <= dualcaster::error::MAX_MESSAGE_CHARS + 40,
        "{longest}"
    );
    println!(
        "{} kinds of bad message dead-lettered once each; {goods} batch-mates succeeded; 1 expired envelope skipped",
        corpus.len()
    );
    stack.cleanup().await;
}
