//! What an attempt produced, and what happens to its message: decided from the outcome, the attempt number
//! and the task's retry policy alone, so every case is tested without a queue.

use std::time::Duration;

use rand::Rng;

use crate::error::TaskError;
use crate::registry::TaskOutput;
use crate::report::Status;
use crate::retry::{RetryDecision, RetryPolicy};

/// What running one envelope produced, before deciding what happens to its message.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(TaskOutput),
    /// A duplicate delivery of a completed run: its stored output.
    Replayed(TaskOutput),
    Skipped(String),
    /// Not run now: another run holds the lease or the delivery's key. Try again after the delay.
    Deferred(Duration, String),
    Failed(TaskError),
}

impl Outcome {
    /// The run's status in a batch. A deferral is a skip: nothing ran, and the message comes back.
    pub(crate) fn status(&self) -> Status {
        match self {
            Outcome::Done(_) | Outcome::Replayed(_) => Status::Succeeded,
            Outcome::Skipped(_) | Outcome::Deferred(..) => Status::Skipped,
            Outcome::Failed(_) => Status::Failed,
        }
    }
}

/// What happens to a record's message after its attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Plan<'a> {
    /// Deleted from the queue: succeeded, replayed or skipped.
    Acknowledge,
    /// Another run holds the lease or the key: back to the queue, visible again after the delay.
    Defer(Duration, &'a str),
    /// A retryable failure with retries left: back to the queue after the backoff delay.
    Retry(Duration, &'a TaskError),
    /// A permanent failure, or a retryable one out of retries: to the DLQ with its context.
    DeadLetter(&'a TaskError),
}

/// Decides what happens to the message of attempt `attempt` (1-based) that ended in `outcome`.
pub(crate) fn plan<'a>(
    outcome: &'a Outcome,
    attempt: u32,
    retry: &RetryPolicy,
    rng: &mut impl Rng,
) -> Plan<'a> {
    match outcome {
        Outcome::Done(_) | Outcome::Replayed(_) | Outcome::Skipped(_) => Plan::Acknowledge,
        Outcome::Deferred(delay, reason) => Plan::Defer(*delay, reason),
        Outcome::Failed(err) if err.is_retryable() => match retry.decide(attempt, rng) {
            RetryDecision::RetryAfter(delay) => Plan::Retry(delay, err),
            RetryDecision::GiveUp => Plan::DeadLetter(err),
        },
        Outcome::Failed(err) => Plan::DeadLetter(err),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::report::Counts;

    fn output() -> TaskOutput {
        TaskOutput {
            counts: Counts::new(1, 0),
            skipped: None,
            detail: serde_json::Value::Null,
        }
    }

    fn outcomes() -> Vec<(&'static str, Outcome)> {
        vec![
            ("done", Outcome::Done(output())),
            ("replayed", Outcome::Replayed(output())),
            ("skipped", Outcome::Skipped("expired".into())),
            (
                "deferred",
                Outcome::Deferred(Duration::from_secs(7), "held".into()),
            ),
            (
                "permanent",
                Outcome::Failed(TaskError::permanent("task_failed", "no")),
            ),
            (
                "retryable",
                Outcome::Failed(TaskError::retryable("task_retryable", "later")),
            ),
        ]
    }

    /// The backoff window of the contract (README: exponential backoff with equal jitter): the ceiling is
    /// `base * 2^(attempt - 1)` capped at `max`, and the delay falls in `[ceiling / 2, ceiling]`.
    fn window(policy: &RetryPolicy, attempt: u32) -> (Duration, Duration) {
        let ceiling = policy
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt - 1))
            .min(policy.max_delay);
        (ceiling / 2, ceiling)
    }

    #[test]
    fn every_outcome_attempt_and_policy_gets_the_plan_the_contract_gives() {
        let policies = [
            RetryPolicy::NONE,
            RetryPolicy::STANDARD,
            RetryPolicy::new(2, Duration::from_secs(1), Duration::from_secs(3)),
            RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(60)),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut checked = 0;
        for policy in &policies {
            for attempt in 1..=policy.max_retries + 3 {
                for (name, outcome) in outcomes() {
                    let got = plan(&outcome, attempt, policy, &mut rng);
                    let context = format!("{name}, attempt {attempt}, {policy:?}: {got:?}");
                    match name {
                        "done" | "replayed" | "skipped" => {
                            assert!(matches!(got, Plan::Acknowledge), "{context}")
                        }
                        "deferred" => assert!(
                            matches!(got, Plan::Defer(d, "held") if d == Duration::from_secs(7)),
                            "{context}"
                        ),
                        "permanent" => assert!(
                            matches!(got, Plan::DeadLetter(e) if e.class() == "task_failed"),
                            "{context}"
                        ),
                        _ if attempt > policy.max_retries => assert!(
                            matches!(got, Plan::DeadLetter(e) if e.class() == "task_retryable"),
                            "{context}"
                        ),
                        _ => {
                            let Plan::Retry(delay, _) = got else {
                                panic!("{context}")
                            };
                            let (low, high) = window(policy, attempt);
                            assert!(
                                low <= delay && delay <= high,
                                "{context}: outside {low:?}..={high:?}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn a_status_follows_from_the_outcome() {
        let statuses: Vec<_> = outcomes().iter().map(|(n, o)| (*n, o.status())).collect();
        assert_eq!(
            statuses,
            vec![
                ("done", Status::Succeeded),
                ("replayed", Status::Succeeded),
                ("skipped", Status::Skipped),
                ("deferred", Status::Skipped),
                ("permanent", Status::Failed),
                ("retryable", Status::Failed),
            ]
        );
    }
}
