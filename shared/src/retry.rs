//! Retry policy: how often and how late a retryable failure is tried again.

use std::time::Duration;

use rand::Rng;

/// SQS's ceiling for a message's visibility timeout (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// Exponential backoff with "equal jitter": the n-th retry waits between half and all of
/// `base * 2^(n-1)` (capped at `max_delay`). Half of each delay is fixed, so delays grow from one attempt
/// to the next while concurrent failures still spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt; attempt `max_retries + 1` is the last.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

/// What to do after a retryable failure on a given attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    GiveUp,
}

impl RetryPolicy {
    /// Three retries, 2 s base, capped at 5 minutes: the default for most tasks.
    pub const STANDARD: RetryPolicy =
        RetryPolicy::new(3, Duration::from_secs(2), Duration::from_secs(300));
    /// Never retried: the first failure dead-letters the message.
    pub const NONE: RetryPolicy = RetryPolicy::new(0, Duration::ZERO, Duration::ZERO);

    pub const fn new(max_retries: u32, base_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_retries,
            base_delay,
            max_delay,
        }
    }

    /// The largest delay before retry number `retry` (1-based), before jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let factor = 1u32 << exp;
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
            .min(MAX_VISIBILITY)
    }

    /// The delay window `[ceiling/2, ceiling]` for retry number `retry`.
    pub fn window(&self, retry: u32) -> (Duration, Duration) {
        let ceiling = self.ceiling(retry);
        (ceiling / 2, ceiling)
    }

    /// Decides after a retryable failure of `attempt` (1-based: the first delivery is attempt 1).
    pub fn decide(&self, attempt: u32, rng: &mut impl Rng) -> RetryDecision {
        if attempt > self.max_retries {
            return RetryDecision::GiveUp;
        }
        let (low, high) = self.window(attempt);
        let delay = if high > low {
            let span = (high - low).as_millis() as u64;
            low + Duration::from_millis(rng.random_range(0..=span))
        } else {
            low
        };
        RetryDecision::RetryAfter(delay)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::STANDARD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn delay(d: RetryDecision) -> Duration {
        match d {
            RetryDecision::RetryAfter(d) => d,
            RetryDecision::GiveUp => panic!("expected a retry"),
        }
    }

    #[test]
    fn ceilings_double_and_cap() {
        let p = RetryPolicy::new(10, Duration::from_secs(1), Duration::from_secs(20));
        let ceilings: Vec<u64> = (1..=7).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 20, 20]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy::new(u32::MAX, Duration::from_secs(3600), Duration::MAX);
        assert_eq!(p.ceiling(u32::MAX), MAX_VISIBILITY);
        assert_eq!(p.ceiling(40), MAX_VISIBILITY);
    }

    #[test]
    fn delays_stay_in_their_window_and_grow() {
        let p = RetryPolicy::new(5, Duration::from_millis(500), Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let mut previous = Duration::ZERO;
            for attempt in 1..=5 {
                let d = delay(p.decide(attempt, &mut rng));
                let (low, high) = p.window(attempt);
                assert!(
                    d >= low && d <= high,
                    "attempt {attempt}: {d:?} outside {low:?}..={high:?}"
                );
                assert!(
                    d >= previous,
                    "delays must not shrink: {previous:?} then {d:?}"
                );
                previous = d;
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = RetryPolicy::STANDARD;
        let mut rng = StdRng::seed_from_u64(1);
        let distinct: std::collections::HashSet<_> =
            (0..100).map(|_| delay(p.decide(3, &mut rng))).collect();
        assert!(
            distinct.len() > 50,
            "only {} distinct delays",
            distinct.len()
        );
    }

    #[test]
    fn gives_up_after_max_retries() {
        let p = RetryPolicy::new(2, Duration::from_secs(1), Duration::from_secs(10));
        let mut rng = StdRng::seed_from_u64(3);
        assert!(matches!(
            p.decide(1, &mut rng),
            RetryDecision::RetryAfter(_)
        ));
        assert!(matches!(
            p.decide(2, &mut rng),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(p.decide(3, &mut rng), RetryDecision::GiveUp);
        assert_eq!(RetryPolicy::NONE.decide(1, &mut rng), RetryDecision::GiveUp);
    }
}
