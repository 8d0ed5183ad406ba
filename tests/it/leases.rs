use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::Utc;
use dualcaster::lease::dynamo::DynamoLeaseStore;
use dualcaster::lease::{Acquire, Lease, LeaseKind, LeaseStore};
use dualcaster::queue::Queue;
use dualcaster_tools::local::event_source::invoke_function;
use dualcaster_tools::local::function::Invoked;
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use integration_tests::lease_conformance::{self as conformance, now_ms};
use integration_tests::{ping, TestStack};
use serde_json::{json, Value};

pub(crate) fn store(stack: &TestStack) -> DynamoLeaseStore {
    DynamoLeaseStore::new(stack.dynamodb.clone(), stack.lease_table())
}

async fn invoke(
    function: &dualcaster_tools::local::function::LocalFunction,
    payload: Value,
) -> Value {
    match function.invoke(payload.clone()).await.unwrap() {
        Invoked::Outcome(InvokeOutcome::Response(v)) => v,
        other => panic!("{payload}: {other:?}"),
    }
}

#[tokio::test]
async fn the_in_memory_store_follows_the_behaviour_suite() {
    conformance::run_all(&dualcaster::lease::memory::MemoryLeaseStore::new(), "mem").await;
}

#[tokio::test]
async fn the_dynamodb_store_follows_the_same_rules_as_the_in_memory_one() {
    let stack = TestStack::start().await.unwrap();
    conformance::run_all(&store(&stack), "suite").await;
    stack.cleanup().await;
}

#[tokio::test]
async fn of_eight_concurrent_acquirers_exactly_one_wins_every_round() {
    const CONTENDERS: usize = 8;
    const ROUNDS: usize = 40;
    let stack = TestStack::start().await.unwrap();
    let shared: Arc<dyn LeaseStore> = Arc::new(store(&stack));
    let winners = conformance::contention(shared, "race", CONTENDERS, ROUNDS).await;
    assert_eq!(winners, vec![1; ROUNDS], "winners per round");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_holder_that_dies_blocks_others_only_until_its_lease_expires() {
    let stack = TestStack::start().await.unwrap();
    let leases = store(&stack);
    let now = now_ms();
    let expires = now + chrono::Duration::milliseconds(1500);
    // The holder takes the lease and then "dies": it never renews or releases.
    let dead = Lease::new(
        "run:nightly",
        LeaseKind::Run,
        "crashed-container",
        "nightly",
        now,
        expires,
    );
    assert_eq!(leases.acquire(&dead, now).await.unwrap(), Acquire::Acquired);

    let next = |t| {
        Lease::new(
            "run:nightly",
            LeaseKind::Run,
            "next-container",
            "nightly",
            t,
            t + chrono::Duration::seconds(30),
        )
    };
    let t = now_ms();
    match leases.acquire(&next(t), t).await.unwrap() {
        Acquire::Held(h) => assert_eq!(
            (h.owner.as_str(), h.expires_at),
            ("crashed-container", expires)
        ),
        other => panic!("{other:?}"),
    }
    let wait = (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(50);
    tokio::time::sleep(wait).await;
    let t = now_ms();
    assert_eq!(
        leases.acquire(&next(t), t).await.unwrap(),
        Acquire::Acquired,
        "taken over at expiry"
    );
    // The dead holder, were it to wake up, can no longer touch the lease.
    assert!(leases
        .release("run:nightly", "crashed-container")
        .await
        .is_err());
    assert!(leases
        .renew(
            "run:nightly",
            "crashed-container",
            t + chrono::Duration::seconds(60),
            t
        )
        .await
        .is_err());
    assert_eq!(
        leases.get("run:nightly").await.unwrap().unwrap().owner,
        "next-container"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_duplicate_delivery_of_a_completed_message_runs_once_and_reports_the_same() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 1).await.unwrap();
    let body = ping("delivered-twice", json!({"note": "once only"}));
    stack.send(Queue::Default, &body).await.unwrap();
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    // SQS delivers the same message again (at-least-once).
    stack.send(Queue::Default, &body).await.unwrap();
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();

    let heartbeats: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM health_checks WHERE check_key = 'delivered-twice'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(heartbeats, 1);
    let runs: Vec<(String, bool, Value)> = sqlx::query_as(
        "SELECT status, replayed, detail FROM task_runs WHERE run_key = 'delivered-twice' ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].0.as_str(), runs[0].1), ("succeeded", false));
    assert_eq!((runs[1].0.as_str(), runs[1].1), ("succeeded", true));
    assert_eq!(
        runs[0].2, runs[1].2,
        "both deliveries report the same result"
    );
    let record = store(&stack)
        .get("idem:ping:delivered-twice")
        .await
        .unwrap()
        .unwrap();
    assert!(record.is_completed());
    stack.cleanup().await;
}

/// Fills the default DLQ so that a dlq_report run takes a while (it scans every message).
pub(crate) async fn fill_dlq(stack: &TestStack, messages: usize) {
    for chunk in 0..messages.div_ceil(10) {
        let entries: Vec<SendMessageBatchRequestEntry> = (0..10)
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(format!("dead letter {chunk}-{i}"))
                    .build()
                    .unwrap()
            })
            .collect();
        stack
            .sqs
            .send_message_batch()
            .queue_url(stack.dlq_url(Queue::Default))
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_single_instance_task_fired_twice_at_once_runs_once_and_the_other_is_skipped() {
    let stack = TestStack::start().await.unwrap();
    fill_dlq(&stack, 300).await;
    let function = stack
        .function(Queue::Default, &[("DD_CONCURRENCY", "2")])
        .await
        .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let fire =
        json!({"task": "dlq_report", "kwargs": {"scan": 1000, "queues": ["default"]}}).to_string();
    stack.send(Queue::Default, &fire).await.unwrap();
    stack.send(Queue::Default, &fire).await.unwrap();
    let mut batch = Vec::new();
    while batch.len() < 2 {
        batch.extend(source.receive(Duration::from_secs(1)).await.unwrap());
    }
    let dispatch = source
        .dispatch(batch, |e| invoke_function(&function, e))
        .await
        .unwrap();
    assert_eq!(
        (dispatch.deleted, dispatch.failed.len()),
        (2, 0),
        "both acknowledged"
    );

    let runs: Vec<(String, Option<String>, Option<Value>)> =
        sqlx::query_as("SELECT status, reason, detail FROM task_runs WHERE task = 'dlq_report' ORDER BY status DESC")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    let statuses: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(statuses, vec!["succeeded", "skipped"]);
    assert_eq!(runs[0].2.as_ref().unwrap()["queues"][0]["scanned"], 300);
    let reason = runs[1].1.as_deref().unwrap();
    assert!(
        reason.starts_with("already running: run:dlq_report (dlq_report) held by "),
        "{reason}"
    );
    assert!(
        store(&stack)
            .list(LeaseKind::Run, Utc::now())
            .await
            .unwrap()
            .is_empty(),
        "released after the run"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn operators_list_and_force_release_a_stuck_lease() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let leases = store(&stack);
    let now = now_ms();
    let stuck = Lease::new(
        "run:dlq_report",
        LeaseKind::Run,
        "container-7",
        "dlq_report",
        now,
        now + chrono::Duration::minutes(10),
    );
    leases.acquire(&stuck, now).await.unwrap();

    let listed = invoke(
        &function,
        json!({"task": "leases", "kwargs": {"action": "list"}}),
    )
    .await;
    let views = listed["detail"]["leases"].as_array().unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["key"], "run:dlq_report");
    assert_eq!(views[0]["owner"], "container-7");
    assert_eq!(views[0]["task"], "dlq_report");
    assert!(views[0]["expires_in_secs"].as_i64().unwrap() > 500);

    let skipped = invoke(&function, json!({"task": "dlq_report"})).await;
    assert_eq!(skipped["status"], "skipped");

    let released = invoke(
        &function,
        json!({"task": "leases", "kwargs": {"action": "release", "key": "run:dlq_report", "reason": "container-7 was terminated"}}),
    )
    .await;
    assert_eq!(released["detail"]["released"]["owner"], "container-7");
    assert_eq!(leases.get("run:dlq_report").await.unwrap(), None);

    let ran = invoke(&function, json!({"task": "dlq_report"})).await;
    assert_eq!(ran["status"], "succeeded");

    match function
        .invoke(json!({"task": "leases", "kwargs": {"action": "release", "key": "run:dlq_report"}}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        }) => {
            assert_eq!(error_type, "invalid_kwargs");
            assert!(error_message.contains("reason"), "{error_message}");
        }
        other => panic!("{other:?}"),
    }
    stack.cleanup().await;
}
