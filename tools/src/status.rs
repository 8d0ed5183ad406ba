//! `dualcaster status` (`make status`): the dashboard's numbers for a stack in one place, read from the queues,
//! `task_runs`, the registry and the lease table: queue and DLQ depths, runs by task and outcome over a
//! window with their duration p50/p99, failures by error class, schedules with their next fire, and the
//! single-instance leases held now.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use dualcaster::lease::{LeaseKind, LeaseStore};
use dualcaster::queue::Queue;
use dualcaster::registry::Registry;
use dualcaster::schedule::ScheduleExpression;

use crate::local::queue_depths;

/// Where a stack's numbers come from.
pub struct Sources<'a> {
    pub sqs: &'a aws_sdk_sqs::Client,
    /// Each queue's URL and its DLQ's.
    pub urls: Vec<(Queue, String, String)>,
    pub db: &'a PgPool,
    pub leases: &'a dyn LeaseStore,
    pub registry: &'a Registry,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    /// Runs and failures are counted over the window ending `at`.
    pub window_secs: u64,
    pub queues: Vec<QueueStatus>,
    pub runs: Vec<TaskRuns>,
    pub failures: Vec<FailureClass>,
    pub schedules: Vec<ScheduleStatus>,
    pub leases: Vec<HeldLease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    pub queue: Queue,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TaskRuns {
    pub task: String,
    pub queue: String,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub deferred: i64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct FailureClass {
    pub task: String,
    pub error_class: String,
    pub count: i64,
    pub last_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleStatus {
    pub rule: String,
    pub task: String,
    pub expression: String,
    pub enabled: bool,
    pub next: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldLease {
    pub key: String,
    pub task: String,
    pub owner: String,
    pub held_secs: i64,
    pub expires_in_secs: i64,
}

/// Reads everything once.
pub async fn collect(
    sources: &Sources<'_>,
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Status> {
    let since = now - chrono::Duration::from_std(window).context("window too long")?;
    let mut queues = Vec::new();
    for (queue, url, dlq) in &sources.urls {
        let depth = queue_depths(sources.sqs, url).await?;
        queues.push(QueueStatus {
            queue: *queue,
            visible: depth.visible,
            in_flight: depth.in_flight,
            delayed: depth.delayed,
            dead_letters: queue_depths(sources.sqs, dlq).await?.total(),
        });
    }
    let runs = sqlx::query_as::<_, TaskRuns>(
        "SELECT coalesce(task, '(no task)') AS task, queue, \
                count(*) FILTER (WHERE status = 'succeeded') AS succeeded, \
                count(*) FILTER (WHERE status = 'failed') AS failed, \
                count(*) FILTER (WHERE status = 'skipped') AS skipped, \
                count(*) FILTER (WHERE disposition = 'retry_scheduled') AS retried, \
                count(*) FILTER (WHERE disposition = 'dead_lettered') AS dead_lettered, \
                count(*) FILTER (WHERE disposition = 'deferred') AS deferred, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms \
         FROM task_runs WHERE started_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(since)
    .fetch_all(sources.db)
    .await
    .context("reading task_runs")?;
    let failures = sqlx::query_as::<_, FailureClass>(
        "SELECT coalesce(task, '(no task)') AS task, coalesce(error_class, '(none)') AS error_class, \
                count(*) AS count, max(finished_at) AS last_at \
         FROM task_runs WHERE started_at >= $1 AND status = 'failed' \
         GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2",
    )
    .bind(since)
    .fetch_all(sources.db)
    .await
    .context("reading task_runs")?;
    let mut schedules = Vec::new();
    for (spec, schedule) in sources.registry.schedules() {
        let next = schedule
            .expression
            .parse::<ScheduleExpression>()
            .ok()
            .and_then(|e| e.upcoming(now, 1).into_iter().next());
        schedules.push(ScheduleStatus {
            rule: schedule.rule_name(spec.name),
            task: spec.name.to_owned(),
            expression: schedule.expression.to_owned(),
            enabled: schedule.enabled,
            next,
        });
    }
    schedules.sort_by_key(|s| s.next);
    let leases = sources
        .leases
        .list(LeaseKind::Run, now)
        .await
        .map_err(|e| anyhow!("listing leases: {e}"))?
        .into_iter()
        .map(|l| HeldLease {
            held_secs: (now - l.acquired_at).num_seconds(),
            expires_in_secs: (l.expires_at - now).num_seconds(),
            key: l.key,
            task: l.task,
            owner: l.owner,
        })
        .collect();
    Ok(Status {
        at: now,
        window_secs: window.as_secs(),
        queues,
        runs,
        failures,
        schedules,
        leases,
    })
}

/// A window such as `90s`, `15m`, `1h` or `7d`.
pub fn parse_window(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| anyhow!("window `{text}` needs a unit: s, m, h or d (e.g. 1h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow!("window `{text}`: `{number}` is not a whole number"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => anyhow::bail!("window `{text}`: unknown unit `{other}` (s, m, h or d)"),
    };
    if secs == 0 {
        anyhow::bail!("window `{text}` is empty");
    }
    Ok(Duration::from_secs(secs))
}

/// The status as text, one section per widget row of the dashboard.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let _ = writeln!(
        out,
        "status at {} (runs over the last {})",
        s.at.format("%Y-%m-%d %H:%M:%S UTC"),
        human(s.window_secs)
    );
    let _ = writeln!(
        out,
        "\nqueues          waiting  in flight  delayed  dead letters"
    );
    for q in &s.queues {
        let _ = writeln!(
            out,
            "  {:<13} {:>7}  {:>9}  {:>7}  {:>12}",
            q.queue.as_str(),
            q.visible,
            q.in_flight,
            q.delayed,
            q.dead_letters
        );
    }
    let _ = writeln!(
        out,
        "\nruns                          ok  failed  skipped  retried  dead  deferred  p50 ms  p99 ms"
    );
    if s.runs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for r in &s.runs {
        let _ = writeln!(
            out,
            "  {:<26} {:>4}  {:>6}  {:>7}  {:>7}  {:>4}  {:>8}  {:>6}  {:>6}",
            r.task,
            r.succeeded,
            r.failed,
            r.skipped,
            r.retried,
            r.dead_lettered,
            r.deferred,
            ms(r.p50_ms),
            ms(r.p99_ms)
        );
    }
    let _ = writeln!(out, "\nfailures by error class");
    if s.failures.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for f in &s.failures {
        let _ = writeln!(
            out,
            "  {:<26} {:<24} {:>4}  last {}",
            f.task,
            f.error_class,
            f.count,
            f.last_at.format("%H:%M:%S")
        );
    }
    let _ = writeln!(out, "\nschedules (next fire)");
    for sch in &s.schedules {
        let next = match (sch.enabled, sch.next) {
            (false, _) => "disabled".to_owned(),
            (true, Some(t)) => format!(
                "{} (in {})",
                t.format("%Y-%m-%d %H:%M UTC"),
                human((t - s.at).num_seconds().max(0) as u64)
            ),
            (true, None) => "never".to_owned(),
        };
        let _ = writeln!(out, "  {:<40} {next}", sch.rule);
    }
    let _ = writeln!(out, "\nleases held");
    if s.leases.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for l in &s.leases {
        let _ = writeln!(
            out,
            "  {:<32} by {:<28} for {:>6}, expires in {}",
            l.key,
            l.owner,
            human(l.held_secs.max(0) as u64),
            human(l.expires_in_secs.max(0) as u64)
        );
    }
    out
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_written() {
        assert_eq!(parse_window("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_window("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_window("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_window("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "h", "15", "1w", "-1h", "0m", "1.5h"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_move_to_the_next_unit_at_two_of_it() {
        assert_eq!(human(59), "59s");
        assert_eq!(human(119), "119s");
        assert_eq!(human(120), "2m");
        assert_eq!(human(7199), "119m");
        assert_eq!(human(7200), "2h");
        assert_eq!(human(3 * 86_400), "3d");
    }
}
