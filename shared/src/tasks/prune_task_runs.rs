//! `prune_task_runs`: deletes the run history (`task_runs`, one row per attempt) older than `keep_days` (90 by
//! default), so the table the dashboard, `make status` and `ops chain` read stays the size of its window.
//! Rows go oldest first, `batch_size` per statement; a run that nears its deadline continues in a follow-up
//! message from where it stopped, with the same cutoff. `dry_run` counts what would go.
//!
//! docs/writing-a-task.md walks through this file as its example.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::envelope::Envelope;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::{OnDuplicate, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct PruneTaskRuns;

fn default_keep_days() -> u32 {
    90
}

fn default_batch_size() -> u32 {
    5_000
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct PruneTaskRunsArgs {
    /// Runs that started in the last `keep_days` days are kept.
    #[serde(default = "default_keep_days")]
    #[garde(range(min = 1, max = 3650))]
    pub keep_days: u32,
    /// Rows deleted per statement (and so per transaction).
    #[serde(default = "default_batch_size")]
    #[garde(range(min = 1, max = 50_000))]
    pub batch_size: u32,
    /// Count what would go, delete nothing.
    #[serde(default)]
    #[garde(skip)]
    pub dry_run: bool,
    /// Runs that started before this instant go: fixed by the first run, carried by its continuations.
    #[serde(default)]
    #[garde(skip)]
    pub before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneTaskRunsReport {
    pub keep_days: u32,
    pub dry_run: bool,
    /// Runs that started before this instant were deleted (or, on a dry run, would be).
    pub before: DateTime<Utc>,
    /// Rows deleted by this run (on a dry run: all that would go).
    pub deleted: u64,
    /// Statements that deleted rows.
    pub batches: u32,
    /// The follow-up message's envelope id, when the run continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl TaskReport for PruneTaskRunsReport {
    fn counts(&self) -> Counts {
        Counts::new(self.deleted, 0)
    }
}

/// The latest cutoff allowed at `now`: every run of the last `keep_days` days stays.
fn latest_cutoff(keep_days: u32, now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::days(i64::from(keep_days))
}

/// A `before` inside the kept window would delete history the arguments say to keep.
fn check_before(args: &PruneTaskRunsArgs, now: DateTime<Utc>) -> Result<(), String> {
    let latest = latest_cutoff(args.keep_days, now);
    match args.before {
        Some(before) if before > latest => Err(format!(
            "before: {} is later than keep_days = {} allows (at most {})",
            before.to_rfc3339_opts(SecondsFormat::Secs, true),
            args.keep_days,
            latest.to_rfc3339_opts(SecondsFormat::Secs, true)
        )),
        _ => Ok(()),
    }
}

/// Deletes the `$2` oldest runs that started before `$1`.
const DELETE_BATCH: &str = "WITH doomed AS (
    SELECT run_id FROM task_runs WHERE started_at < $1 ORDER BY started_at LIMIT $2
)
DELETE FROM task_runs t USING doomed d WHERE t.run_id = d.run_id";

impl Task for PruneTaskRuns {
    const NAME: &'static str = "prune_task_runs";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy =
        RetryPolicy::new(3, Duration::from_secs(30), Duration::from_secs(600));
    /// One prune at a time. A continuation that arrives while its parent still holds the lease waits (it is
    /// deferred, not skipped: a skipped continuation would end the prune).
    const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
        keys: &[],
        on_duplicate: OnDuplicate::Defer(Duration::from_secs(30)),
    });
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "nightly",
        expression: "cron(45 3 * * ? *)",
        kwargs: "{}",
        enabled: true,
        why: "Once a night, after the price history prune: a day of runs leaves the window each night and goes \
              in one statement; the first run on a long history continues in follow-ups.",
    }];
    type Args = PruneTaskRunsArgs;
    type Report = PruneTaskRunsReport;

    /// A `before` later than `keep_days` ago is refused before it reaches a queue.
    fn validate(args: &PruneTaskRunsArgs) -> Result<(), String> {
        check_before(args, Utc::now())
    }

    async fn run(
        args: PruneTaskRunsArgs,
        ctx: TaskContext,
    ) -> Result<PruneTaskRunsReport, TaskError> {
        let before = args
            .before
            .unwrap_or_else(|| latest_cutoff(args.keep_days, Utc::now()));
        let mut report = PruneTaskRunsReport {
            keep_days: args.keep_days,
            dry_run: args.dry_run,
            before,
            deleted: 0,
            batches: 0,
            continuation: None,
        };
        if args.dry_run {
            let doomed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM task_runs WHERE started_at < $1")
                    .bind(before)
                    .fetch_one(ctx.db())
                    .await?;
            report.deleted = doomed as u64;
            return Ok(report);
        }
        loop {
            let deleted = sqlx::query(DELETE_BATCH)
                .bind(before)
                .bind(i64::from(args.batch_size))
                .execute(ctx.db())
                .await?
                .rows_affected();
            report.deleted += deleted;
            if deleted == 0 {
                break;
            }
            report.batches += 1;
            if deleted < u64::from(args.batch_size) {
                break;
            }
            if ctx.near_deadline() {
                let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT min(started_at) FROM task_runs WHERE started_at < $1",
                )
                .bind(before)
                .fetch_one(ctx.db())
                .await?;
                let Some(oldest) = oldest else { break };
                let kwargs = serde_json::json!({
                    "keep_days": args.keep_days,
                    "batch_size": args.batch_size,
                    "before": before,
                });
                // Named by the cutoff and the oldest row left, so a redelivered run sends the same id.
                let id = format!(
                    "prune_task_runs:{}:{}",
                    before.to_rfc3339_opts(SecondsFormat::Micros, true),
                    oldest.to_rfc3339_opts(SecondsFormat::Micros, true)
                );
                let envelope =
                    Envelope::new(Self::NAME, kwargs.as_object().cloned().unwrap_or_default())
                        .with_id(&id);
                // Two seconds later, so this run has released its lease when the follow-up arrives.
                ctx.enqueue(Self::QUEUE, &envelope, 2).await?;
                tracing::info!(
                    continuation = %id,
                    deleted = report.deleted,
                    "deadline near: continuing in a follow-up message"
                );
                report.continuation = Some(id);
                break;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    #[test]
    fn arguments_have_defaults_inside_their_bounds() {
        let spec = TaskSpec::of::<PruneTaskRuns>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok(), "the defaults are valid");
        assert!(check(json!({"keep_days": 1, "batch_size": 50000, "dry_run": true})).is_ok());
        assert!(check(json!({"keep_days": 0})).is_err());
        assert!(check(json!({"batch_size": 0})).is_err());
        assert!(check(json!({"keep_days": 3651})).is_err());
        assert!(
            check(json!({"keep": 30})).is_err(),
            "unknown fields are refused"
        );
        let args: PruneTaskRunsArgs = serde_json::from_value(json!({})).unwrap();
        assert_eq!((args.keep_days, args.batch_size), (90, 5000));
    }

    #[test]
    fn a_cutoff_inside_the_kept_window_is_refused_at_the_door() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let args = |before: &str| PruneTaskRunsArgs {
            keep_days: 30,
            batch_size: 10,
            dry_run: false,
            before: Some(before.parse().unwrap()),
        };
        // 2026-12-07 12:00 minus 30 days is 2026-11-07 12:00.
        assert_eq!(check_before(&args("2026-11-07T12:00:00Z"), now), Ok(()));
        assert_eq!(check_before(&args("2025-01-01T00:00:00Z"), now), Ok(()));
        assert_eq!(
            check_before(&args("2026-11-07T12:00:01Z"), now).unwrap_err(),
            "before: 2026-11-07T12:00:01Z is later than keep_days = 30 allows (at most 2026-11-07T12:00:00Z)"
        );
        let err = TaskSpec::of::<PruneTaskRuns>()
            .check_kwargs(
                json!({"before": "2099-01-01T00:00:00Z"})
                    .as_object()
                    .unwrap(),
            )
            .unwrap_err();
        assert_eq!(err.class(), "invalid_kwargs");
        assert!(
            err.message().starts_with(
                "task `prune_task_runs`: before: 2099-01-01T00:00:00Z is later than keep_days = 90 allows"
            ),
            "{}",
            err.message()
        );
    }
}
