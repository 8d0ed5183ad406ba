use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dualcaster::queue::Queue;
use dualcaster_tools::local::event_source::invoke_function;
use integration_tests::{ping, TestStack};
use serde_json::json;

#[tokio::test]
async fn a_ping_through_sqs_lands_in_postgres() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    for i in 0..3 {
        stack
            .send(
                Queue::Default,
                &ping(&format!("hb-{i}"), json!({"note": format!("n{i}")})),
            )
            .await
            .unwrap();
    }
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();

    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT check_key, queue, function_name, note FROM health_checks ORDER BY check_key",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String, String, Option<String>)> = (0..3)
        .map(|i| {
            (
                format!("hb-{i}"),
                "default".to_owned(),
                format!("{}-default", stack.name),
                Some(format!("n{i}")),
            )
        })
        .collect();
    assert_eq!(rows, expected);

    let runs: Vec<(String, String, String, String, i32, i64)> = sqlx::query_as(
        "SELECT task, run_key, status, disposition, attempt, processed FROM task_runs ORDER BY run_key",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 3);
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(
            run,
            &(
                "ping".to_owned(),
                format!("hb-{i}"),
                "succeeded".to_owned(),
                "acknowledged".to_owned(),
                1,
                1
            )
        );
    }
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        0
    );
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 0);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_mixed_batch_reports_only_its_failures() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let bodies: BTreeMap<&str, String> = BTreeMap::from([
        ("good-1", ping("good-1", json!({}))),
        ("good-2", ping("good-2", json!({"note": "second"}))),
        ("not-json", "{\"task\": \"ping\",".to_owned()),
        ("unknown-task", json!({"task": "pong"}).to_string()),
        ("bad-kwargs", ping("bad-kwargs", json!({"work_ms": "soon"}))),
        (
            "unknown-kwarg",
            ping("unknown-kwarg", json!({"colour": "blue"})),
        ),
        (
            "permanent",
            ping("permanent", json!({"drill": "permanent"})),
        ),
        ("panic", ping("panic", json!({"drill": "panic"}))),
        (
            "retryable",
            ping("retryable", json!({"drill": "retryable"})),
        ),
        (
            "expired",
            json!({"task": "ping", "id": "expired", "expires_at": "2020-01-01T00:00:00Z"})
                .to_string(),
        ),
    ]);
    let mut ids = BTreeMap::new();
    for (name, body) in &bodies {
        ids.insert(stack.send(Queue::Default, body).await.unwrap(), *name);
    }

    // Gather all ten into one batch, as the event source would with a batching window.
    let mut batch = Vec::new();
    while batch.len() < bodies.len() {
        batch.extend(source.receive(Duration::from_secs(1)).await.unwrap());
    }
    let dispatch = source
        .dispatch(batch, |event| invoke_function(&function, event))
        .await
        .unwrap();
    assert_eq!(dispatch.invoke_error, None);
    let failed: Vec<&str> = dispatch.failed.iter().map(|id| ids[id.as_str()]).collect();
    assert_eq!(
        failed,
        vec!["retryable"],
        "only the retryable failure is handed back"
    );
    assert_eq!(dispatch.deleted, 9);

    let dead = stack.dead_letters(Queue::Default).await.unwrap();
    let classes: BTreeMap<String, String> = dead
        .iter()
        .map(|d| {
            (
                ids[d.failure().source_message_id.as_str()].to_owned(),
                d.failure().error_class,
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("not-json", "malformed_message"),
        ("unknown-task", "unknown_task"),
        ("bad-kwargs", "invalid_kwargs"),
        ("unknown-kwarg", "invalid_kwargs"),
        ("permanent", "task_failed"),
        ("panic", "panic"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    assert_eq!(classes, expected);
    for d in &dead {
        let f = d.failure();
        let name = ids[f.source_message_id.as_str()];
        assert_eq!(d.body, bodies[name], "{name}: the original body is kept");
        assert_eq!(f.attempts, 1);
        assert_eq!(f.error_kind, "permanent");
        assert_eq!(f.source_queue, "default");
        assert!((chrono::Utc::now() - f.failed_at).num_seconds() < 60);
    }
    let unknown_kwarg = dead
        .iter()
        .find(|d| d.body == bodies["unknown-kwarg"])
        .unwrap();
    assert!(unknown_kwarg
        .failure()
        .error_message
        .contains("unknown field `colour`"));
    let panicked = dead.iter().find(|d| d.body == bodies["panic"]).unwrap();
    assert!(panicked
        .failure()
        .error_message
        .contains("drill: ping was asked to panic"));

    let heartbeats: BTreeSet<String> = sqlx::query_scalar("SELECT check_key FROM health_checks")
        .fetch_all(&stack.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        heartbeats,
        BTreeSet::from(["good-1".to_owned(), "good-2".to_owned()])
    );
    let skipped: Vec<(String, String)> =
        sqlx::query_as("SELECT run_key, reason FROM task_runs WHERE status = 'skipped'")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, "expired");
    assert!(skipped[0].1.starts_with("expired at 2020-01-01"));
    stack.cleanup().await;
}

#[tokio::test]
async fn a_failing_task_backs_off_then_lands_in_the_dlq_with_its_context() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let body = ping("flaky-1", json!({"drill": "retryable"}));
    stack.send(Queue::Default, &body).await.unwrap();
    stack
        .drain(&source, &function, Duration::from_secs(60))
        .await
        .unwrap();

    // ping retries 3 times: 4 attempts, delays from windows [0.5, 1], [1, 2], [2, 4] s (rounded up to
    // whole seconds by SQS's visibility timeout).
    let attempts: Vec<(i32, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT attempt, disposition, started_at FROM task_runs WHERE run_key = 'flaky-1' ORDER BY attempt")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.0).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4]);
    let dispositions: Vec<&str> = attempts.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        dispositions,
        vec![
            "retry_scheduled",
            "retry_scheduled",
            "retry_scheduled",
            "dead_lettered"
        ]
    );
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|w| (w[1].2 - w[0].2).num_milliseconds() as f64 / 1000.0)
        .collect();
    assert!(gaps[0] >= 0.9, "first retry waited {gaps:?}");
    assert!(gaps[1] >= 0.9, "second retry waited {gaps:?}");
    assert!(gaps[2] >= 1.9, "third retry waited {gaps:?}");
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");

    let dead = stack.dead_letters(Queue::Default).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.body, body);
    let f = d.failure();
    assert_eq!(f.task.as_deref(), Some("ping"));
    assert_eq!(f.error_kind, "retryable");
    assert_eq!(f.error_class, "task_retryable");
    assert_eq!(f.attempts, 4);
    assert_eq!(f.error_message, "drill: retryable failure on attempt 4");
    assert!((chrono::Utc::now() - f.failed_at).num_seconds() < 60);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_poison_message_reaches_the_dlq_after_one_attempt() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let poison = "\u{fffd}\u{fffd} garbage <xml/> {\t\"task\"";
    let id = stack.send(Queue::Default, poison).await.unwrap();
    let dispatches = stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(dispatches.len(), 1, "one attempt only: {dispatches:?}");
    assert_eq!(dispatches[0].deleted, 1);

    let dead = stack.dead_letters(Queue::Default).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, poison);
    let f = dead[0].failure();
    assert_eq!(f.source_message_id, id);
    assert_eq!(f.error_class, "malformed_message");
    assert_eq!(f.attempts, 1);
    assert_eq!(f.task, None);
    let (status, disposition, class): (String, String, String) = sqlx::query_as(
        "SELECT status, disposition, error_class FROM task_runs WHERE message_id = $1",
    )
    .bind(&id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), disposition.as_str(), class.as_str()),
        ("failed", "dead_lettered", "malformed_message")
    );
    stack.cleanup().await;
}
