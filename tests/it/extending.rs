//! A task from the outside: a task defined only in this file, added to the task
//! list with one line, is validated, routed, run from its queue and recorded like the built-in ones, and its
//! bad arguments are dead-lettered with their reason.

use std::time::Duration;

use dualcaster::context::TaskContext;
use dualcaster::error::TaskError;
use dualcaster::queue::Queue;
use dualcaster::registry::{Registry, Task, TaskSpec};
use dualcaster::report::{Counts, TaskReport};
use dualcaster::runtime::Invocation;
use dualcaster_tools::local::event_source::EventSource;
use dualcaster_tools::local::local_aws;
use integration_tests::TestStack;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Adds `amount` to a named tally.
struct Tally;

#[derive(Debug, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
struct TallyArgs {
    #[garde(length(min = 1, max = 20))]
    name: String,
    #[garde(range(min = 1, max = 100))]
    amount: i32,
}

#[derive(Debug, Serialize)]
struct TallyReport {
    total: i64,
}

impl TaskReport for TallyReport {
    fn counts(&self) -> Counts {
        Counts::new(1, 0)
    }
}

impl Task for Tally {
    const NAME: &'static str = "tally";
    const QUEUE: Queue = Queue::Default;
    type Args = TallyArgs;
    type Report = TallyReport;

    async fn run(args: TallyArgs, ctx: TaskContext) -> Result<TallyReport, TaskError> {
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO tallies (name, total) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET total = tallies.total + EXCLUDED.total RETURNING total",
        )
        .bind(&args.name)
        .bind(i64::from(args.amount))
        .fetch_one(ctx.db())
        .await?;
        Ok(TallyReport { total })
    }
}

#[tokio::test]
async fn a_task_defined_outside_the_library_runs_from_its_queue_with_one_line() {
    let stack = TestStack::start().await.unwrap();
    sqlx::query("CREATE TABLE tallies (name text PRIMARY KEY, total bigint NOT NULL)")
        .execute(&stack.pool)
        .await
        .unwrap();
    // The one line: the task list, plus this task.
    let registry = Registry::from_specs(
        dualcaster::tasks::all()
            .into_iter()
            .chain([TaskSpec::of::<Tally>()]),
    )
    .unwrap();
    let env = stack.function_env();
    let settings = dualcaster::config::Settings::from_lookup(|k| env.get(k).cloned()).unwrap();
    let runtime = dualcaster::function::build_with_registry(
        Queue::Default,
        settings,
        &local_aws().await,
        "extending".into(),
        registry.clone(),
    )
    .unwrap();

    let url = stack.queue_url(Queue::Default).to_owned();
    for amount in [5, 7] {
        let (queue, envelope) = registry
            .envelope(
                "tally",
                json!({"name": "wins", "amount": amount})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        assert_eq!(queue, Queue::Default);
        stack.send(queue, &envelope.to_json()).await.unwrap();
    }
    // Past its bounds: only the runtime's own validation stands between it and the task.
    let too_much =
        json!({"task": "tally", "id": "too-much", "kwargs": {"name": "wins", "amount": 1000}});
    stack
        .send(Queue::Default, &too_much.to_string())
        .await
        .unwrap();

    let source = EventSource::new(stack.sqs.clone(), &url, 10, Duration::ZERO)
        .await
        .unwrap();
    let mut deleted = 0;
    for _ in 0..10 {
        let dispatch = source
            .poll_once(Duration::from_secs(1), |event| async {
                let invocation = Invocation::with_timeout("extending", Duration::from_secs(30));
                runtime
                    .handle(event, invocation)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap();
        assert!(dispatch.failed.is_empty(), "{dispatch:?}");
        deleted += dispatch.deleted;
        if deleted == 3 {
            break;
        }
    }
    assert_eq!(deleted, 3);

    let total: i64 = sqlx::query_scalar("SELECT total FROM tallies WHERE name = 'wins'")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(total, 12);
    let runs: Vec<(String, String)> = sqlx::query_as(
        "SELECT status, disposition FROM task_runs WHERE task = 'tally' ORDER BY status",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        runs,
        vec![
            ("failed".to_owned(), "dead_lettered".to_owned()),
            ("succeeded".to_owned(), "acknowledged".to_owned()),
            ("succeeded".to_owned(), "acknowledged".to_owned()),
        ]
    );
    let dead = stack.dead_letters(Queue::Default).await.unwrap();
    assert_eq!(dead.len(), 1);
    let failure = dead[0].failure();
    assert_eq!(failure.error_class, "invalid_kwargs");
    assert!(
        failure.error_message.contains("amount"),
        "{}",
        failure.error_message
    );
    assert_eq!(dead[0].body, too_much.to_string());
    stack.cleanup().await;
}
