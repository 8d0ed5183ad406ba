use std::time::Duration;

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::Invoked;
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use integration_tests::{ping, TestStack};
use serde_json::json;

#[tokio::test]
async fn a_bare_envelope_runs_synchronously_and_returns_its_report() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();

    let out = function
        .invoke(json!({"task": "ping", "id": "direct-1", "kwargs": {"note": "by hand"}}))
        .await
        .unwrap();
    let Invoked::Outcome(InvokeOutcome::Response(report)) = out else {
        panic!("{out:?}")
    };
    assert_eq!(report["task"], "ping");
    assert_eq!(report["id"], "direct-1");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["counts"], json!({"processed": 1, "errors": 0}));
    assert_eq!(report["detail"]["recorded"], true);
    let note: String =
        sqlx::query_scalar("SELECT note FROM health_checks WHERE check_key = 'direct-1'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(note, "by hand");

    // The same delivery again: the stored report comes back and nothing runs.
    let Invoked::Outcome(InvokeOutcome::Response(again)) = function
        .invoke(json!({"task": "ping", "id": "direct-1", "kwargs": {"note": "by hand"}}))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(again["replayed"], true);
    assert_eq!(again["detail"], report["detail"]);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM health_checks")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1);

    // The function's registry is the one this test links: every task of the list, in name order.
    let names: Vec<&str> = dualcaster::tasks::registry()
        .iter()
        .map(|spec| spec.name)
        .collect();
    let registered = format!("(registered: {})", names.join(", "));
    for (payload, error_type, needle) in [
        (
            json!({"task": "ping", "kwargs": {"work_ms": 999999}}),
            "invalid_kwargs",
            "work_ms",
        ),
        (
            json!({"task": "nope"}),
            "unknown_task",
            "unknown task `nope`",
        ),
        (
            json!({"kwargs": {}}),
            "malformed_message",
            "missing field `task`",
        ),
        (
            json!([1, 2, 3]),
            "malformed_message",
            "must be a JSON object",
        ),
        (
            json!({"task": "ping", "v": 7}),
            "unsupported_version",
            "version 7",
        ),
        (
            json!({"task": "ingest_everything_now"}),
            "unknown_task",
            &registered,
        ),
        (
            json!({"task": "ping", "kwargs": {"drill": "permanent"}}),
            "task_failed",
            "drill",
        ),
        (
            json!({"task": "ping", "id": "direct-1", "kwargs": {"note": "other"}}),
            "idempotency_conflict",
            "other arguments",
        ),
    ] {
        let out = function.invoke(payload.clone()).await.unwrap();
        match out {
            Invoked::Outcome(InvokeOutcome::Error {
                error_type: t,
                error_message,
            }) => {
                assert_eq!(t, error_type, "{payload}");
                assert!(error_message.contains(needle), "{payload}: {error_message}");
            }
            other => panic!("{payload}: {other:?}"),
        }
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn dlq_report_counts_dead_letters_without_consuming_them() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    for body in [
        "nope".to_owned(),
        "{]".to_owned(),
        json!({"task": "pong"}).to_string(),
        ping("p", json!({"drill": "permanent"})),
    ] {
        stack.send(Queue::Default, &body).await.unwrap();
    }
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();

    let out = function
        .invoke(json!({"task": "dlq_report", "kwargs": {"peek": 2}}))
        .await
        .unwrap();
    let Invoked::Outcome(InvokeOutcome::Response(report)) = out else {
        panic!("{out:?}")
    };
    let queues = report["detail"]["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 3);
    let default = queues.iter().find(|q| q["queue"] == "default").unwrap();
    assert_eq!(default["depth"], 4);
    assert_eq!(default["scanned"], 4);
    assert_eq!(
        default["by_error_class"],
        json!({"malformed_message": 2, "unknown_task": 1, "task_failed": 1})
    );
    assert_eq!(
        default["by_task"],
        json!({"(none)": 2, "pong": 1, "ping": 1})
    );
    assert_eq!(default["recent"].as_array().unwrap().len(), 2);
    assert_eq!(report["detail"]["total_depth"], 4);
    for q in queues.iter().filter(|q| q["queue"] != "default") {
        assert_eq!(q["depth"], 0);
    }

    // Nothing was consumed: all four are still there and visible again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.dead_letters(Queue::Default).await.unwrap().len(), 4);
    stack.cleanup().await;
}
