//! `prune_price_history`: keeps daily price points for a window (`keep_days`, 90 by default) and rolls older
//! history up to one point per series and week: the week's last quote (its close) stays, the other days of
//! that week go. Every price kept is a real quote, and the only point of a week is never deleted.
//!
//! Only whole weeks (Monday to Sunday) that end before the window are touched, oldest first, a few weeks per
//! transaction; a run that nears its deadline continues in a follow-up message from the next week. The window
//! is at least 61 days, so a series with a recent point keeps every point its metrics read; one whose latest
//! point is older loses points of its window, and the next metrics run recomputes it.

use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::envelope::Envelope;
use crate::error::TaskError;
use crate::queue::Queue;
use crate::registry::{OnDuplicate, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct PrunePriceHistory;

/// Weeks pruned per transaction.
const WEEKS_PER_CHUNK: i64 = 4;

fn d_keep_days() -> u32 {
    90
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct PrunePriceHistoryArgs {
    /// Daily points of the last `keep_days` days are kept as they are.
    #[serde(default = "d_keep_days")]
    #[garde(range(min = 61, max = 3650))]
    pub keep_days: u32,
    /// Count what would go, delete nothing.
    #[serde(default)]
    #[garde(skip)]
    pub dry_run: bool,
    /// Start at this Monday's week instead of the oldest one (set by a continuation).
    #[serde(default)]
    #[garde(custom(monday))]
    pub resume_from: Option<NaiveDate>,
    /// The end of the pruned history, fixed by the first run of a continued prune.
    #[serde(default)]
    #[garde(custom(monday))]
    pub cutoff: Option<NaiveDate>,
}

fn monday(day: &Option<NaiveDate>, _: &()) -> garde::Result {
    match day {
        Some(d) if d.weekday() != chrono::Weekday::Mon => Err(garde::Error::new(format!(
            "{d} is a {}, not a Monday",
            d.weekday()
        ))),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub keep_days: u32,
    pub dry_run: bool,
    /// Weeks before this Monday were rolled up.
    pub cutoff: NaiveDate,
    /// The first week looked at.
    pub from: Option<NaiveDate>,
    /// Weeks that held points and were rolled up.
    pub weeks: u64,
    /// Points deleted (or, on a dry run, that would be).
    pub deleted: u64,
    /// The follow-up message's envelope id, when the run continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl TaskReport for PruneReport {
    fn counts(&self) -> Counts {
        Counts::new(self.deleted, 0)
    }
}

/// The points of `[$1, $2)` (whole weeks) that have a later point of the same series in the same week.
macro_rules! doomed {
    () => {
        "FROM price_points p WHERE p.day >= $1 AND p.day < $2 AND EXISTS (
    SELECT 1 FROM price_points q
    WHERE q.scryfall_id = p.scryfall_id AND q.source = p.source AND q.price_type = p.price_type
      AND q.finish = p.finish AND q.currency = p.currency
      AND q.day > p.day AND q.day < p.day - (extract(isodow FROM p.day)::int - 1) + 7)"
    };
}

/// How many points a prune of `[$1, $2)` deletes.
const COUNT_DOOMED: &str = concat!("SELECT count(*) ", doomed!());

/// Deletes the doomed points of `[$1, $2)`; returns how many were deleted. The deletion's own triggers keep the
/// metrics rows of their series true to what is left (the migration `price_metrics_follow_every_change`): a
/// series that lost a point of its window is recomputed from its points by the next metrics run, and one that
/// lost only older points has them taken off its all-time `points`.
const DELETE_DOOMED: &str = concat!(
    "WITH gone AS (DELETE ",
    doomed!(),
    " RETURNING 1) SELECT count(*) FROM gone"
);

/// The latest cutoff a prune may use on `today`: the Monday of the week in which the kept window starts, so
/// every week it rolls up ended before the window.
fn latest_cutoff(keep_days: u32, today: NaiveDate) -> NaiveDate {
    week_of(today - chrono::Duration::days(keep_days as i64))
}

/// The arguments' meaning against each other and the date: what `validate` refuses, at enqueue and at run
/// time.
fn check_dates(args: &PrunePriceHistoryArgs, today: NaiveDate) -> Result<(), String> {
    let latest = latest_cutoff(args.keep_days, today);
    if let Some(cutoff) = args.cutoff {
        if cutoff > latest {
            return Err(format!(
                "cutoff: {cutoff} would prune inside the {} days kept (the latest cutoff on {today} is {latest})",
                args.keep_days
            ));
        }
        if let Some(from) = args.resume_from.filter(|from| *from >= cutoff) {
            return Err(format!(
                "resume_from: {from} is not before the cutoff {cutoff}, so there is nothing to prune"
            ));
        }
    }
    Ok(())
}

fn week_of(day: NaiveDate) -> NaiveDate {
    day - chrono::Duration::days(day.weekday().num_days_from_monday() as i64)
}

impl Task for PrunePriceHistory {
    const NAME: &'static str = "prune_price_history";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy =
        RetryPolicy::new(3, Duration::from_secs(30), Duration::from_secs(600));
    /// One prune at a time; a second one (or a continuation arriving early) waits for the first.
    const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
        keys: &[],
        on_duplicate: OnDuplicate::Defer(Duration::from_secs(60)),
    });
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "nightly",
        expression: "cron(30 3 * * ? *)",
        kwargs: "{}",
        enabled: true,
        why: "Once a night, away from the ingestion and analytics hours; after the first run each night only has \
              the week that left the window to roll up.",
    }];
    type Args = PrunePriceHistoryArgs;
    type Report = PruneReport;

    /// A `cutoff` inside the kept window, or a `resume_from` past it, is refused before it is enqueued.
    fn validate(args: &PrunePriceHistoryArgs) -> Result<(), String> {
        check_dates(args, chrono::Utc::now().date_naive())
    }

    async fn run(args: PrunePriceHistoryArgs, ctx: TaskContext) -> Result<PruneReport, TaskError> {
        // The function's clock, the same one `validate` checks a continuation's cutoff against.
        let cutoff = args
            .cutoff
            .unwrap_or_else(|| latest_cutoff(args.keep_days, chrono::Utc::now().date_naive()));
        let oldest: Option<NaiveDate> = sqlx::query_scalar(
            "SELECT min(day) FROM price_points WHERE $1::date IS NULL OR day >= $1",
        )
        .bind(args.resume_from)
        .fetch_one(ctx.db())
        .await?;
        let mut report = PruneReport {
            keep_days: args.keep_days,
            dry_run: args.dry_run,
            cutoff,
            from: None,
            weeks: 0,
            deleted: 0,
            continuation: None,
        };
        let Some(oldest) = oldest else {
            return Ok(report);
        };
        let mut start = week_of(oldest);
        report.from = Some(start);
        while start < cutoff {
            let end = (start + chrono::Duration::days(7 * WEEKS_PER_CHUNK)).min(cutoff);
            let weeks: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT day - (extract(isodow FROM day)::int - 1)) FROM price_points \
                 WHERE day >= $1 AND day < $2",
            )
            .bind(start)
            .bind(end)
            .fetch_one(ctx.db())
            .await?;
            let deleted = if args.dry_run {
                sqlx::query_scalar::<_, i64>(COUNT_DOOMED)
                    .bind(start)
                    .bind(end)
                    .fetch_one(ctx.db())
                    .await? as u64
            } else {
                sqlx::query_scalar::<_, i64>(DELETE_DOOMED)
                    .bind(start)
                    .bind(end)
                    .fetch_one(ctx.db())
                    .await? as u64
            };
            report.weeks += weeks as u64;
            report.deleted += deleted;
            tracing::info!(from = %start, to = %end, weeks, deleted, dry_run = args.dry_run, "rolled up price history");
            // Skip empty stretches: the next chunk starts at the week of the next point.
            let next: Option<NaiveDate> =
                sqlx::query_scalar("SELECT min(day) FROM price_points WHERE day >= $1")
                    .bind(end)
                    .fetch_one(ctx.db())
                    .await?;
            match next {
                Some(day) => start = week_of(day),
                None => break,
            }
            if start < cutoff && ctx.near_deadline() {
                let kwargs = serde_json::json!({
                    "keep_days": args.keep_days, "dry_run": args.dry_run,
                    "resume_from": start, "cutoff": cutoff,
                });
                let id = format!(
                    "prune:{cutoff}:{start}:{}",
                    if args.dry_run { "dry" } else { "apply" }
                );
                let envelope =
                    Envelope::new(Self::NAME, kwargs.as_object().cloned().unwrap_or_default())
                        .with_id(&id);
                // Two seconds later, so this run has released its lease when the follow-up arrives.
                ctx.enqueue(Self::QUEUE, &envelope, 2).await?;
                tracing::info!(continuation = %id, "deadline near: continuing in a follow-up message");
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
    fn arguments() {
        let spec = TaskSpec::of::<PrunePriceHistory>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"keep_days": 61, "dry_run": true})).is_ok());
        assert!(
            check(json!({"keep_days": 30})).is_err(),
            "inside the metrics' 61 days"
        );
        assert!(check(json!({"keep_days": -1})).is_err());
        assert!(check(json!({"resume_from": "2026-08-17", "cutoff": "2026-08-24"})).is_ok());
        assert!(
            check(json!({"resume_from": "2026-11-23", "cutoff": "2026-08-24"})).is_err(),
            "a continuation past its own cutoff"
        );
        let tuesday = check(json!({"resume_from": "2026-11-24"})).unwrap_err();
        assert!(tuesday.to_string().contains("not a Monday"), "{tuesday}");
        assert!(check(json!({"resume_from": "yesterday"})).is_err());
    }

    /// The dates are worked out by hand from the calendar.
    #[test]
    fn a_cutoff_inside_the_kept_window_is_refused() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        let args = |cutoff: Option<&str>, resume_from: Option<&str>| PrunePriceHistoryArgs {
            keep_days: 90,
            dry_run: false,
            resume_from: resume_from.map(d),
            cutoff: cutoff.map(d),
        };
        // 2026-12-07 - 90 days = 2026-09-08, a Tuesday: its week starts on Monday 2026-09-07.
        let today = d("2026-12-07");
        assert_eq!(latest_cutoff(90, today), d("2026-09-07"));
        assert_eq!(check_dates(&args(Some("2026-09-07"), None), today), Ok(()));
        assert_eq!(check_dates(&args(Some("2025-01-06"), None), today), Ok(()));
        let late = check_dates(&args(Some("2026-09-14"), None), today).unwrap_err();
        assert_eq!(
            late,
            "cutoff: 2026-09-14 would prune inside the 90 days kept (the latest cutoff on 2026-12-07 is 2026-09-07)"
        );
        assert_eq!(
            check_dates(&args(Some("2026-08-03"), Some("2026-07-27")), today),
            Ok(())
        );
        let past = check_dates(&args(Some("2026-08-03"), Some("2026-08-03")), today).unwrap_err();
        assert!(
            past.starts_with("resume_from: 2026-08-03 is not before"),
            "{past}"
        );
        // Through the spec, as `dualcaster enqueue` checks it: refused with the task's name and the class.
        let spec = TaskSpec::of::<PrunePriceHistory>();
        let err = spec
            .check_kwargs(json!({"cutoff": "2099-01-05"}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(err.class(), "invalid_kwargs");
        assert!(
            err.message()
                .starts_with("task `prune_price_history`: cutoff: 2099-01-05 would prune inside"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(week_of(d("2026-11-26")), d("2026-11-23"));
        assert_eq!(week_of(d("2026-11-23")), d("2026-11-23"));
        assert_eq!(week_of(d("2026-11-29")), d("2026-11-23"));
        assert_eq!(week_of(d("2024-01-01")), d("2024-01-01"));
    }
}
