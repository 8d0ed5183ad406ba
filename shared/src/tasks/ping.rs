//! `ping`: the health task. Proves that a queue, its function and Postgres work end to end, and records a
//! heartbeat per run. Its `drill` argument makes it fail on purpose, so operators can rehearse the retry
//! and dead-letter path (and its alarms) in a real environment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::error::{class, TaskError};
use crate::lease::{Lease, LeaseKind};
use crate::queue::Queue;
use crate::registry::{Idempotency, Schedule, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct Ping;

/// How a drill run fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Drill {
    /// Fails retryably on every attempt: retried with backoff, then dead-lettered.
    Retryable,
    /// Fails permanently: dead-lettered on the first attempt.
    Permanent,
    /// Panics: the runtime catches it and dead-letters the message.
    Panic,
}

#[derive(Debug, Clone, Default, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct PingArgs {
    /// Free text stored with the heartbeat.
    #[serde(default)]
    #[garde(length(chars, max = 200))]
    pub note: Option<String>,
    /// Simulated work before the heartbeat is written, in milliseconds.
    #[serde(default)]
    #[garde(range(max = 60_000))]
    pub work_ms: u32,
    /// Fail on purpose (see [`Drill`]).
    #[serde(default)]
    #[garde(skip)]
    pub drill: Option<Drill>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    pub queue: Queue,
    pub function: String,
    /// Postgres's clock, read in the same round trip that was timed.
    pub db_time: DateTime<Utc>,
    pub db_roundtrip_us: u64,
    /// False when this run's key already had a heartbeat (a redelivery): nothing new was written.
    pub recorded: bool,
    /// The message attributes its producer set (a correlation id, a trace header), by name: what a task can
    /// read of them after retries, the DLQ and a redrive. Binary values are shown by their length.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Single-instance leases held longer than their task can run (its queue's time limit): a holder that
    /// died without releasing and keeps being renewed, or a clock gone wrong. Counted in the
    /// `leases_held_past_limit` metric, which has an alarm. None when the lease table could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases_held_past_limit: Option<Vec<String>>,
}

impl TaskReport for PingReport {
    fn counts(&self) -> Counts {
        Counts::new(1, 0)
    }
}

impl Task for Ping {
    const NAME: &'static str = "ping";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy = RetryPolicy::new(3, Duration::from_secs(1), Duration::from_secs(30));
    /// A redelivered ping returns the first delivery's report (same `db_time`) instead of pinging again.
    const IDEMPOTENCY: Option<Idempotency> = Some(Idempotency {
        keep: Duration::from_secs(24 * 60 * 60),
    });
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "heartbeat",
        expression: "cron(0/15 * * * ? *)",
        kwargs: r#"{"note": "scheduled heartbeat"}"#,
        enabled: true,
        why: "A quarter-hourly heartbeat proves queue, function and database end to end; a gap of more than \
              15 minutes in health_checks is an outage. Cheap: one row per run.",
    }];
    type Args = PingArgs;
    type Report = PingReport;

    async fn run(args: PingArgs, ctx: TaskContext) -> Result<PingReport, TaskError> {
        if args.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.work_ms.into())).await;
        }
        match args.drill {
            Some(Drill::Retryable) => {
                return Err(TaskError::retryable(
                    class::TASK_RETRYABLE,
                    format!("drill: retryable failure on attempt {}", ctx.attempt),
                ))
            }
            Some(Drill::Permanent) => {
                return Err(TaskError::permanent(
                    class::TASK_FAILED,
                    "drill: permanent failure",
                ))
            }
            Some(Drill::Panic) => panic!("drill: ping was asked to panic"),
            None => {}
        }

        let started = Instant::now();
        let db_time: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(ctx.db())
            .await?;
        let db_roundtrip_us = started.elapsed().as_micros() as u64;

        let inserted = sqlx::query(
            "INSERT INTO health_checks (check_key, queue, function_name, note, checked_at, db_roundtrip_us) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (check_key) DO NOTHING",
        )
        .bind(&ctx.run_key)
        .bind(ctx.queue.as_str())
        .bind(&*ctx.function_name)
        .bind(args.note.as_deref())
        .bind(db_time)
        .bind(db_roundtrip_us as i64)
        .execute(ctx.db())
        .await?
        .rows_affected();

        let overdue = leases_held_past_limit(&ctx, Utc::now()).await;
        if let (Some(keys), true) = (&overdue, ctx.settings().emit_metrics) {
            crate::metrics::emit_count(crate::metrics::LEASES_HELD_PAST_LIMIT, keys.len() as u64);
        }

        Ok(PingReport {
            leases_held_past_limit: overdue,
            queue: ctx.queue,
            function: ctx.function_name.to_string(),
            db_time,
            db_roundtrip_us,
            recorded: inserted == 1,
            attributes: ctx
                .attributes()
                .iter()
                .map(|(name, a)| {
                    let shown = match (&a.string_value, &a.binary_value) {
                        (Some(s), _) => s.clone(),
                        (None, Some(b)) => format!("({} bytes)", b.len()),
                        (None, None) => String::new(),
                    };
                    (name.clone(), shown)
                })
                .collect(),
        })
    }
}

/// Slack for clocks that disagree between the holder and this check.
const CLOCK_SLACK: chrono::Duration = chrono::Duration::seconds(60);

/// The keys of live run leases acquired longer ago than their task's queue lets a run last. A lease store
/// that cannot be read is logged and leaves the heartbeat alone (None): the heartbeat proves the queue,
/// function and database, and a lease problem has its own alarm.
async fn leases_held_past_limit(ctx: &TaskContext, now: DateTime<Utc>) -> Option<Vec<String>> {
    let leases = match ctx.leases().list(LeaseKind::Run, now).await {
        Ok(leases) => leases,
        Err(e) => {
            tracing::warn!(error = %e, "heartbeat: could not list run leases");
            return None;
        }
    };
    let registry = crate::tasks::registry();
    Some(overdue(&leases, now, |task| {
        registry.get(task).map(|spec| spec.queue.time_limit())
    }))
}

/// The leases among `leases` older than their task's limit; a task this build does not know gets the
/// longest limit of any queue.
fn overdue(
    leases: &[Lease],
    now: DateTime<Utc>,
    limit_of: impl Fn(&str) -> Option<Duration>,
) -> Vec<String> {
    let longest = Queue::ALL
        .iter()
        .map(|q| q.time_limit())
        .max()
        .unwrap_or_default();
    leases
        .iter()
        .filter(|l| {
            let limit = limit_of(&l.task).unwrap_or(longest);
            let limit = chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
            now - l.acquired_at > limit + CLOCK_SLACK
        })
        .map(|l| l.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    fn check(v: serde_json::Value) -> Result<(), TaskError> {
        TaskSpec::of::<Ping>().check_kwargs(v.as_object().unwrap())
    }

    #[test]
    fn arguments_have_defaults_and_bounds() {
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"note": "hello", "work_ms": 60000, "drill": "panic"})).is_ok());
        assert!(check(json!({"work_ms": 60001})).is_err());
        assert!(check(json!({"work_ms": -1})).is_err());
        assert!(check(json!({"note": "x".repeat(201)})).is_err());
        assert!(check(json!({"drill": "explode"})).is_err());
        assert!(check(json!({"note": null})).is_ok());
    }

    #[test]
    fn a_lease_is_overdue_once_older_than_its_tasks_queue_allows_plus_a_minute() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let lease = |key: &str, task: &str, age_secs: i64| {
            let acquired = now - chrono::Duration::seconds(age_secs);
            Lease::new(
                key,
                LeaseKind::Run,
                "owner",
                task,
                acquired,
                now + chrono::Duration::seconds(30),
            )
        };
        // Limits by hand: default-queue tasks 120 s, analytics 900 s, unknown tasks the longest (900 s);
        // each with 60 s of slack.
        let leases = [
            lease("run:dlq_report", "dlq_report", 180),
            lease("run:dlq_redrive", "dlq_redrive", 181),
            lease("run:compute_price_metrics", "compute_price_metrics", 960),
            lease("run:detect_price_signals", "detect_price_signals", 961),
            lease("run:from_a_newer_build", "from_a_newer_build", 961),
            lease("run:another", "another", 900),
        ];
        let registry = crate::tasks::registry();
        let found = overdue(&leases, now, |task| {
            registry.get(task).map(|spec| spec.queue.time_limit())
        });
        assert_eq!(
            found,
            [
                "run:dlq_redrive",
                "run:detect_price_signals",
                "run:from_a_newer_build"
            ]
        );
    }
}
