//! One Lambda invocation as the runtime sees it: who asked, when it must end, and how a failure is answered.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{class, TaskError};

/// One Lambda invocation's identity and deadline.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub deadline: Instant,
    /// The same deadline on the wall clock, for lease expiries shared with other processes.
    pub deadline_at: chrono::DateTime<Utc>,
    /// The invocation's X-Ray trace header (`Root=...;Parent=...;Sampled=...`), with active tracing.
    pub trace_header: Option<String>,
}

impl Invocation {
    /// From the Lambda context: its deadline is in milliseconds since the Unix epoch.
    pub fn from_lambda(ctx: &lambda_runtime::Context) -> Self {
        let now = Utc::now();
        let remaining = remaining_ms(ctx.deadline, now.timestamp_millis());
        Invocation {
            request_id: ctx.request_id.clone(),
            deadline: Instant::now() + Duration::from_millis(remaining as u64),
            deadline_at: now + chrono::Duration::milliseconds(remaining),
            trace_header: ctx.xray_trace_id.clone().filter(|t| !t.is_empty()),
        }
    }

    pub fn with_timeout(request_id: impl Into<String>, timeout: Duration) -> Self {
        Invocation {
            request_id: request_id.into(),
            deadline: Instant::now() + timeout,
            deadline_at: Utc::now()
                + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX),
            trace_header: None,
        }
    }
}

/// Milliseconds left before `deadline`. Lambda sends an epoch time; `cargo lambda watch` sends the
/// function timeout itself (600000), which read as an epoch time would be 1970 and end every invocation
/// at once. No real deadline is that far in the past, so a value under [`EPOCH_MS_FLOOR`] is taken as
/// a duration.
fn remaining_ms(deadline: u64, now_ms: i64) -> i64 {
    let deadline = deadline as i64;
    if deadline < EPOCH_MS_FLOOR {
        return deadline.max(0);
    }
    deadline.saturating_sub(now_ms).max(0)
}

/// 2001-09-09 in epoch milliseconds: below it, a deadline is a duration (see [`remaining_ms`]).
const EPOCH_MS_FLOOR: i64 = 1_000_000_000_000;

/// A failed invocation, returned to the caller as a Lambda error (`errorType` is the error class).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InvokeError {
    pub error_type: String,
    pub message: String,
}

impl From<TaskError> for InvokeError {
    fn from(e: TaskError) -> Self {
        InvokeError {
            error_type: e.class().to_owned(),
            message: format!("{} ({})", e.message(), e.kind().as_str()),
        }
    }
}

impl From<InvokeError> for lambda_runtime::Diagnostic {
    fn from(e: InvokeError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type,
            error_message: e.message,
        }
    }
}

/// The invocation's answer as JSON. One that cannot be serialised fails the whole invocation, so the batch
/// comes back whole, rather than answering `null`, which Lambda reads as "every record succeeded".
pub(super) fn to_response(value: &impl serde::Serialize) -> Result<Value, InvokeError> {
    serde_json::to_value(value).map_err(|e| InvokeError {
        error_type: class::TASK_FAILED.into(),
        message: format!("the invocation's response could not be serialised: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_epoch_times_unless_they_can_only_be_durations() {
        let now = 1_795_708_059_351;
        assert_eq!(remaining_ms(now as u64 + 30_000, now), 30_000);
        assert_eq!(remaining_ms(now as u64 - 5, now), 0);
        // `cargo lambda watch` sends its 600 s timeout as the deadline.
        assert_eq!(remaining_ms(600_000, now), 600_000);
    }

    #[test]
    fn a_response_that_cannot_be_serialised_fails_the_invocation() {
        struct Unserialisable;
        impl serde::Serialize for Unserialisable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let err = to_response(&Unserialisable).unwrap_err();
        assert_eq!(err.error_type, "task_failed");
        assert!(
            err.message.contains("could not be serialised: no"),
            "{}",
            err.message
        );
    }
}
