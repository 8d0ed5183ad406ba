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

/// A cold start does only what every invocation needs before its first poll: no AWS or HTTP client is built,
/// so the system's CA certificates are not read. The certificate file here is a FIFO with no writer: reading
/// it blocks forever, so a start-up that reads it never polls.
#[tokio::test]
async fn a_cold_start_reads_no_certificates_before_its_first_poll() {
    let stack = TestStack::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("dd-certs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("ca.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo_path = fifo.to_str().unwrap().to_owned();
    let dir_path = dir.to_str().unwrap().to_owned();
    for queue in Queue::ALL {
        let function = stack
            .function(
                queue,
                &[
                    ("SSL_CERT_FILE", fifo_path.as_str()),
                    ("SSL_CERT_DIR", dir_path.as_str()),
                ],
            )
            .await
            .unwrap();
        let polled = tokio::time::timeout(Duration::from_secs(20), function.polled()).await;
        assert!(
            polled.is_ok(),
            "the {queue} function did not poll within 20 s: its start-up reads certificates"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    stack.cleanup().await;
}
