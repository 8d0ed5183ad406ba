//! What a run returns: the typed successor of the old `{"processed": n, "errors": n}` dict.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::queue::Queue;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Succeeded,
    Skipped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

/// How the message of a finished attempt was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Acknowledged,
    RetryScheduled,
    DeadLettered,
    HandedBack,
    /// A direct invoke: the report or the error went back to the caller.
    Returned,
    /// Handed back with a delay because another run holds the task's lease or the delivery's key.
    Deferred,
}

impl Disposition {
    /// Whether the message stays in its queue (reported to Lambda as a batch item failure) rather than
    /// being deleted: a retry, a deferral, or a hand-back when the DLQ was unreachable.
    pub fn stays_in_queue(self) -> bool {
        matches!(
            self,
            Disposition::RetryScheduled | Disposition::HandedBack | Disposition::Deferred
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Acknowledged => "acknowledged",
            Disposition::RetryScheduled => "retry_scheduled",
            Disposition::DeadLettered => "dead_lettered",
            Disposition::HandedBack => "handed_back",
            Disposition::Returned => "returned",
            Disposition::Deferred => "deferred",
        }
    }
}

/// Items a run handled, and how many of them it could not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub processed: u64,
    pub errors: u64,
}

impl Counts {
    pub fn new(processed: u64, errors: u64) -> Self {
        Counts { processed, errors }
    }
}

/// Implemented by every task's typed report.
pub trait TaskReport: Serialize + Send + 'static {
    fn counts(&self) -> Counts;

    /// `Some(reason)` when the task decided there was nothing to do (the run is reported as skipped).
    fn skipped(&self) -> Option<String> {
        None
    }
}

/// The report of one run, as returned to a direct invoke, logged, and stored in `task_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Task name; absent when the message did not name one.
    pub task: Option<String>,
    /// The run's id: the envelope's `id`, else the SQS message id, else a fresh UUID.
    pub id: String,
    /// The chain the run belongs to (`dualcaster ops '{"action":"chain","id":...}'` lists its runs).
    #[serde(default)]
    pub chain_id: String,
    pub queue: Queue,
    pub status: Status,
    pub attempt: u32,
    pub counts: Counts,
    pub duration_ms: u64,
    /// Why the run was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `retryable` or `permanent`, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The failure's class (`invalid_kwargs`, `database_unavailable`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// True when this delivery was a duplicate of a completed run and the stored report was returned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// The task's own typed report, when it produced one.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}
