use std::collections::BTreeSet;
use std::time::Duration;

use dualcaster::lease::LeaseStore;
use dualcaster::queue::Queue;
use dualcaster_tools::local::event_source::invoke_function;
use integration_tests::{ping, TestStack};
use serde_json::json;

/// After a scenario: no single-instance lease is held and no delivery record is left in progress (a record
/// whose run never finished), so nothing waits on a holder that is gone.
pub(crate) async fn assert_no_lease_held(stack: &TestStack) {
    let store = crate::leases::store(stack);
    let now = chrono::Utc::now();
    let runs = store
        .list(dualcaster::lease::LeaseKind::Run, now)
        .await
        .unwrap();
    assert!(runs.is_empty(), "run leases left: {runs:?}");
    let in_progress: Vec<_> = store
        .list(dualcaster::lease::LeaseKind::Idempotency, now)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.result.is_none())
        .collect();
    assert!(
        in_progress.is_empty(),
        "delivery records left in progress: {in_progress:?}"
    );
}

/// Kill -9 the function while it is half-way through batches, several times, then let the queue drain:
/// every ping lands exactly once and nothing reaches the DLQ.
#[tokio::test]
async fn killing_the_function_mid_batch_loses_nothing_and_duplicates_nothing() {
    const MESSAGES: usize = 24;
    const KILLS: usize = 3;
    let stack = TestStack::start().await.unwrap();
    let mut function = stack
        .function(Queue::Default, &[("DD_CONCURRENCY", "2")])
        .await
        .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let keys: BTreeSet<String> = (0..MESSAGES).map(|i| format!("crash-{i:02}")).collect();
    for key in &keys {
        stack
            .send(Queue::Default, &ping(key, json!({"work_ms": 250})))
            .await
            .unwrap();
    }

    let mut crashed_batches = 0;
    for _ in 0..KILLS {
        let batch = source.receive(Duration::from_secs(5)).await.unwrap();
        if batch.is_empty() {
            continue;
        }
        let pid = function.pid().unwrap();
        let before = stack.heartbeats().await.unwrap().len();
        let killer = async {
            // Kill once two pings of this batch have committed (their redeliveries must be suppressed) while
            // the rest are mid-flight. Waiting on the data, not a clock: a slow start would otherwise leave
            // nothing committed before the kill.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while stack.heartbeats().await.unwrap().len() < before + 2
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        };
        let (dispatch, ()) = tokio::join!(
            source.dispatch(batch, |event| invoke_function(&function, event)),
            killer
        );
        let dispatch = dispatch.unwrap();
        let error = dispatch.invoke_error.unwrap_or_default();
        assert!(
            error.contains("killed") || error.contains("signal"),
            "{error}"
        );
        assert_eq!(dispatch.deleted, 0, "a crashed invocation deletes nothing");
        crashed_batches += 1;
        function.restart().await.unwrap();
    }
    assert_eq!(crashed_batches, KILLS);

    stack
        .drain(&source, &function, Duration::from_secs(90))
        .await
        .unwrap();

    let recorded: Vec<String> = stack.heartbeats().await.unwrap();
    assert_eq!(
        recorded.len(),
        MESSAGES,
        "exactly one heartbeat per message"
    );
    assert_eq!(
        recorded.into_iter().collect::<BTreeSet<_>>(),
        keys,
        "no message lost"
    );
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 0);
    assert_eq!(
        stack.depth(stack.queue_url(Queue::Default)).await.unwrap(),
        0
    );

    // Pings finished before a kill were redelivered and ran again without writing a second heartbeat.
    let suppressed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_runs WHERE task = 'ping' AND status = 'succeeded' \
         AND (replayed OR detail->>'recorded' = 'false')",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!(
        suppressed >= KILLS as i64,
        "expected redelivered duplicates to be suppressed, got {suppressed}"
    );
    let redelivered: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT run_key) FROM task_runs WHERE attempt > 1")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    println!(
        "crash test: sent {MESSAGES}, kills {KILLS}, redelivered {redelivered}, duplicates suppressed {suppressed}, lost 0"
    );
    assert_no_lease_held(&stack).await;
    stack.cleanup().await;
}

/// Every message delivered twice (as SQS's at-least-once delivery may): each effect lands once, and the
/// second delivery is answered from the first one's idempotency record.
#[tokio::test]
async fn every_message_delivered_twice_lands_once() {
    const MESSAGES: usize = 30;
    let stack = TestStack::start().await.unwrap();
    let function = stack
        .function(Queue::Default, &[("DD_CONCURRENCY", "4")])
        .await
        .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let keys: BTreeSet<String> = (0..MESSAGES).map(|i| format!("twice-{i:02}")).collect();
    // Both copies in the queue at once, so some pairs meet in one batch and run side by side.
    for key in &keys {
        for _ in 0..2 {
            stack
                .send(Queue::Default, &ping(key, json!({"work_ms": 20})))
                .await
                .unwrap();
        }
    }
    stack
        .drain(&source, &function, Duration::from_secs(120))
        .await
        .unwrap();

    let recorded: Vec<String> = stack.heartbeats().await.unwrap();
    assert_eq!(recorded.into_iter().collect::<BTreeSet<_>>(), keys);
    let (first, suppressed, retried): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded' AND NOT replayed AND detail->>'recorded' = 'true'), \
                count(*) FILTER (WHERE status = 'succeeded' AND (replayed OR detail->>'recorded' = 'false')), \
                count(*) FILTER (WHERE disposition = 'retry_scheduled') \
         FROM task_runs WHERE task = 'ping'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(first, MESSAGES as i64, "one effective run per message");
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 0);
    // A copy that met its twin in progress is retried, then answered from the record.
    assert_eq!(suppressed, MESSAGES as i64, "every second copy suppressed");
    println!(
        "duplicate delivery: sent {}, processed {first}, retried {retried}, dead-lettered 0, duplicates suppressed {suppressed}, lost 0",
        2 * MESSAGES
    );
    assert_no_lease_held(&stack).await;
    stack.cleanup().await;
}

/// status, started_at, finished_at, reason
type RunSpan = (
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
);

/// A single-instance schedule fired twelve times at once (twelve firings, three function processes running
/// four records each): the runs never overlap, every firing is acknowledged (run or skipped with the
/// holder named), and no lease is left behind.
#[tokio::test]
async fn a_single_instance_schedule_fired_many_times_at_once_never_overlaps() {
    const FIRINGS: usize = 12;
    let stack = TestStack::start().await.unwrap();
    crate::leases::fill_dlq(&stack, 300).await;
    let mut functions = Vec::new();
    for _ in 0..3 {
        functions.push(
            stack
                .function(Queue::Default, &[("DD_CONCURRENCY", "4")])
                .await
                .unwrap(),
        );
    }
    let source = stack.event_source(Queue::Default, 4).await.unwrap();
    for i in 0..FIRINGS {
        // As the hourly rule sends it, each firing with its own time.
        let fire = json!({"v": 1, "task": "dlq_report", "id": format!("schedule:dlq_report-hourly:2026-11-26T{i:02}:05:00Z"),
                          "kwargs": {"scan": 1000, "queues": ["default"]}});
        stack.send(Queue::Default, &fire.to_string()).await.unwrap();
    }
    let mut batches = Vec::new();
    let mut received = 0;
    while received < FIRINGS {
        let batch = source.receive(Duration::from_secs(1)).await.unwrap();
        received += batch.len();
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    let dispatches =
        futures::future::join_all(batches.into_iter().enumerate().map(|(i, batch)| {
            let function = &functions[i % functions.len()];
            let source = &source;
            async move {
                source
                    .dispatch(batch, |event| invoke_function(function, event))
                    .await
                    .unwrap()
            }
        }))
        .await;
    let deleted: usize = dispatches.iter().map(|d| d.deleted).sum();
    assert_eq!(
        deleted, FIRINGS,
        "every firing acknowledged: {dispatches:?}"
    );

    let runs: Vec<RunSpan> = sqlx::query_as(
        "SELECT status, started_at, finished_at, reason FROM task_runs WHERE task = 'dlq_report' \
             ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), FIRINGS);
    let ran: Vec<_> = runs.iter().filter(|r| r.0 == "succeeded").collect();
    let skipped: Vec<_> = runs.iter().filter(|r| r.0 == "skipped").collect();
    assert!(!ran.is_empty());
    assert_eq!(ran.len() + skipped.len(), FIRINGS, "{runs:?}");
    for pair in ran.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "two runs overlapped: {pair:?}");
    }
    for s in &skipped {
        let reason = s.3.as_deref().unwrap_or_default();
        assert!(
            reason.starts_with("already running: run:dlq_report"),
            "{reason}"
        );
    }
    let held = crate::leases::store(&stack)
        .list(dualcaster::lease::LeaseKind::Run, chrono::Utc::now())
        .await
        .unwrap();
    assert!(held.is_empty(), "leases left behind: {held:?}");
    println!(
        "single-instance storm: fired {FIRINGS}, ran {} (never overlapping), skipped while held {}, lost 0, leases left 0",
        ran.len(),
        skipped.len()
    );
    stack.cleanup().await;
}

/// LocalStack unreachable for four seconds while pings are in flight (a proxy in front of it drops every
/// connection and refuses new ones; LocalStack keeps its state, as SQS would): the function's lease and
/// SQS calls fail, the event source's polls and deletes fail, and still every ping lands exactly once or
/// is dead-lettered with its reason.
#[tokio::test]
async fn localstack_unreachable_mid_run_loses_nothing_and_doubles_nothing() {
    const MESSAGES: usize = 40;
    let stack = TestStack::start().await.unwrap();
    let proxy = integration_tests::CuttableProxy::start("127.0.0.1:4566".parse().unwrap())
        .await
        .unwrap();
    let endpoint = proxy.url();
    let function = stack
        .function(
            Queue::Default,
            &[("DD_CONCURRENCY", "2"), ("AWS_ENDPOINT_URL", &endpoint)],
        )
        .await
        .unwrap();
    let through_proxy = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&dualcaster_tools::local::local_aws().await)
            .endpoint_url(&endpoint)
            .build(),
    );
    let source = dualcaster_tools::local::event_source::EventSource::new(
        through_proxy,
        stack.queue_url(Queue::Default),
        10,
        Duration::ZERO,
    )
    .await
    .unwrap();
    let keys: BTreeSet<String> = (0..MESSAGES).map(|i| format!("cut-{i:02}")).collect();
    for key in &keys {
        stack
            .send(Queue::Default, &ping(key, json!({"work_ms": 150})))
            .await
            .unwrap();
    }

    let started = tokio::time::Instant::now();
    let (mut polls_failed, mut handed_back, mut invocations_failed) = (0, 0, 0);
    let proxy = std::sync::Arc::new(proxy);
    let outage = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            proxy.cut();
            tokio::time::sleep(Duration::from_secs(4)).await;
            proxy.restore();
        })
    };
    loop {
        match tokio::time::timeout(
            Duration::from_secs(30),
            source.poll_once(Duration::from_secs(1), |event| {
                invoke_function(&function, event)
            }),
        )
        .await
        {
            Ok(Ok(d)) => {
                handed_back += d.failed.len();
                invocations_failed += usize::from(d.invoke_error.is_some());
            }
            Ok(Err(_)) | Err(_) => {
                polls_failed += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if outage.is_finished() && stack.depth(stack.queue_url(Queue::Default)).await.unwrap() == 0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "not drained");
    }

    let recorded: Vec<String> = stack.heartbeats().await.unwrap();
    let recorded_set: BTreeSet<String> = recorded.iter().cloned().collect();
    assert_eq!(
        recorded.len(),
        recorded_set.len(),
        "a heartbeat written twice"
    );
    let mut dead_keys = BTreeSet::new();
    for d in stack.dead_letters(Queue::Default).await.unwrap() {
        let id = serde_json::from_str::<serde_json::Value>(&d.body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !d.failure().error_class.is_empty(),
            "dead-lettered without a reason: {d:?}"
        );
        dead_keys.insert(id);
    }
    assert!(recorded_set.is_disjoint(&dead_keys));
    let accounted: BTreeSet<String> = recorded_set.union(&dead_keys).cloned().collect();
    let lost: Vec<&String> = keys.difference(&accounted).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let suppressed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_runs WHERE task = 'ping' AND status = 'succeeded' \
         AND (replayed OR detail->>'recorded' = 'false')",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    let dropped = proxy.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let refused = proxy.refused.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "localstack outage (4 s, {dropped} open connections dropped, {refused} refused): sent {MESSAGES}, processed {}, retried {handed_back}, failed polls {polls_failed}, failed invocations {invocations_failed}, dead-lettered {}, duplicates suppressed {suppressed}, lost 0",
        recorded.len(),
        dead_keys.len()
    );
    // The SDKs retry a dropped or refused connection, so an outage this short is often absorbed without
    // any failure reaching the runtime; what matters is that it happened and nothing was lost.
    assert!(dropped + refused > 0, "the outage touched no connection");
    assert_no_lease_held(&stack).await;
    stack.cleanup().await;
}
