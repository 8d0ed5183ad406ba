//! `prune_task_runs` through its queue: the worked example of docs/writing-a-task.md, whose snippets are
//! taken from this file (a docs test keeps them equal).

use std::time::Duration;

use dualcaster::queue::Queue;
use integration_tests::{run_task, TestStack};
use serde_json::{json, Value};

/// Writes `count` finished `ping` runs that started `days_ago` days ago, an hour apart; returns their ids.
async fn old_runs(stack: &TestStack, count: i32, days_ago: i32) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "INSERT INTO task_runs (run_id, task, run_key, queue, trigger, attempt, status, disposition, \
         started_at, finished_at, duration_ms) \
         SELECT gen_random_uuid(), 'ping', 'old-' || n, 'default', 'sqs', 1, 'succeeded', 'acknowledged', \
                now() - make_interval(days => $2, hours => n), now() - make_interval(days => $2, hours => n), 5 \
         FROM generate_series(1, $1) n RETURNING run_id",
    )
    .bind(count)
    .bind(days_ago)
    .fetch_all(&stack.pool)
    .await
    .unwrap()
}

/// Every run id left, but the prune's own runs (written when each of its attempts ended).
async fn runs_left(stack: &TestStack) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(
        "SELECT run_id FROM task_runs WHERE task <> 'prune_task_runs' ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_prune_deletes_only_what_left_the_window_in_batches_continued_through_the_queue() {
    let stack = TestStack::start().await.unwrap();
    // A reserve longer than the function's 30 s timeout: every run is "near its deadline" after its first
    // batch, so each full batch ends in a follow-up message.
    let default = stack
        .function(Queue::Default, &[("DD_TASK_RESERVE_MS", "600000")])
        .await
        .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    old_runs(&stack, 25, 120).await;
    let mut kept = old_runs(&stack, 5, 10).await;
    kept.reverse(); // oldest first, as runs_left orders them

    // A dry run counts and deletes nothing.
    let dry = run_task(&default, "prune_task_runs", json!({"dry_run": true}))
        .await
        .unwrap();
    assert_eq!(dry["detail"]["deleted"], 25, "{dry}");
    assert_eq!(runs_left(&stack).await.len(), 30);

    stack
        .send(
            Queue::Default,
            &json!({"task": "prune_task_runs", "kwargs": {"batch_size": 10}}).to_string(),
        )
        .await
        .unwrap();
    stack
        .drain(&source, &default, Duration::from_secs(120))
        .await
        .unwrap();

    // Batches of 10, 10 and 5: two full batches continued, the short one ended the prune.
    let reports: Vec<Value> = sqlx::query_scalar(
        "SELECT detail FROM task_runs WHERE task = 'prune_task_runs' AND trigger = 'sqs' \
         AND status = 'succeeded' ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let deleted: Vec<u64> = reports
        .iter()
        .map(|r| r["deleted"].as_u64().unwrap())
        .collect();
    assert_eq!(deleted, [10, 10, 5], "{reports:?}");
    assert!(reports[..2].iter().all(|r| r["continuation"].is_string()));
    assert!(reports[2]["continuation"].is_null());
    assert!(reports.iter().all(|r| r["before"] == reports[0]["before"]));
    assert_eq!(
        runs_left(&stack).await,
        kept,
        "exactly the runs inside the window remain"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_cutoff_inside_the_window_is_dead_lettered_and_deletes_nothing() {
    let stack = TestStack::start().await.unwrap();
    let default = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let recent = old_runs(&stack, 3, 1).await;
    // Refused at the door: `dualcaster enqueue` and the ops trigger check the same way.
    let refused = dualcaster::tasks::registry()
        .envelope(
            "prune_task_runs",
            json!({"before": "2099-01-01T00:00:00Z"})
                .as_object()
                .cloned()
                .unwrap(),
        )
        .unwrap_err();
    assert_eq!(refused.class(), "invalid_kwargs");
    // A producer that skips the check: the message is dead-lettered with the reason, nothing is deleted.
    let body = json!({"task": "prune_task_runs", "kwargs": {"keep_days": 1, "before": "2099-01-01T00:00:00Z"}})
        .to_string();
    stack.send(Queue::Default, &body).await.unwrap();
    stack
        .drain(&source, &default, Duration::from_secs(60))
        .await
        .unwrap();
    let dead = stack.dead_letters(Queue::Default).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, body, "the message as its producer sent it");
    let failure = dead[0].failure();
    assert_eq!(failure.error_class, "invalid_kwargs");
    assert!(
        failure
            .error_message
            .contains("before: 2099-01-01T00:00:00Z is later than keep_days = 1 allows"),
        "{}",
        failure.error_message
    );
    let mut left = runs_left(&stack).await;
    left.sort();
    let mut recent = recent;
    recent.sort();
    assert_eq!(left, recent);
    stack.cleanup().await;
}
