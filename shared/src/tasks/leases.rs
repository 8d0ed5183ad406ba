//! `leases`: the operator's view of the lease table. Lists held single-instance leases (or in-progress and
//! completed idempotency records) with owner, task and expiry, and force-releases one with a reason, which
//! is logged with the holder it removed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::error::{class, TaskError};
use crate::lease::{Lease, LeaseKind};
use crate::queue::Queue;
use crate::registry::Task;
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct Leases;

fn default_kind() -> LeaseKind {
    LeaseKind::Run
}

#[derive(Debug, Clone, Deserialize, garde::Validate)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum LeasesArgs {
    /// Live records of a kind (default: single-instance run leases).
    List {
        #[serde(default = "default_kind")]
        #[garde(skip)]
        kind: LeaseKind,
    },
    /// Delete one record whoever holds it.
    Release {
        #[garde(length(min = 1, max = 512))]
        key: String,
        /// Why: kept in the log line with the removed holder.
        #[garde(length(chars, min = 3, max = 500))]
        reason: String,
    },
}

/// A record as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseView {
    pub key: String,
    pub kind: LeaseKind,
    pub task: String,
    pub owner: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Seconds until expiry.
    pub expires_in_secs: i64,
    /// Idempotency records: whether the run completed (its report is stored).
    pub completed: bool,
}

impl LeaseView {
    fn of(l: Lease, now: DateTime<Utc>) -> Self {
        LeaseView {
            completed: l.is_completed(),
            expires_in_secs: (l.expires_at - now).num_seconds(),
            key: l.key,
            kind: l.kind,
            task: l.task,
            owner: l.owner,
            acquired_at: l.acquired_at,
            expires_at: l.expires_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum LeasesReport {
    List {
        leases: Vec<LeaseView>,
    },
    Release {
        key: String,
        reason: String,
        released: Option<LeaseView>,
    },
}

impl TaskReport for LeasesReport {
    fn counts(&self) -> Counts {
        match self {
            LeasesReport::List { leases } => Counts::new(leases.len() as u64, 0),
            LeasesReport::Release { released, .. } => Counts::new(u64::from(released.is_some()), 0),
        }
    }
}

impl Task for Leases {
    const NAME: &'static str = "leases";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy = RetryPolicy::STANDARD;
    type Args = LeasesArgs;
    type Report = LeasesReport;

    async fn run(args: LeasesArgs, ctx: TaskContext) -> Result<LeasesReport, TaskError> {
        let now = Utc::now();
        match args {
            LeasesArgs::List { kind } => {
                let leases = ctx.leases().list(kind, now).await?;
                Ok(LeasesReport::List {
                    leases: leases.into_iter().map(|l| LeaseView::of(l, now)).collect(),
                })
            }
            LeasesArgs::Release { key, reason } => {
                if !key.starts_with("run:") && !key.starts_with("idem:") {
                    return Err(TaskError::permanent(
                        class::INVALID_KWARGS,
                        format!("`{key}` is not a lease key (they start with `run:` or `idem:`)"),
                    ));
                }
                let released = ctx.leases().force_release(&key).await?;
                match &released {
                    Some(l) => tracing::warn!(
                        key = %key, reason = %reason, holder = %l.owner, task = %l.task,
                        expires_at = %l.expires_at, "lease force-released by an operator"
                    ),
                    None => {
                        tracing::info!(key = %key, reason = %reason, "force-release: no such lease")
                    }
                }
                Ok(LeasesReport::Release {
                    key,
                    reason,
                    released: released.map(|l| LeaseView::of(l, now)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    #[test]
    fn arguments() {
        let spec = TaskSpec::of::<Leases>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({"action": "list"})).is_ok());
        assert!(check(json!({"action": "list", "kind": "idempotency"})).is_ok());
        assert!(check(
            json!({"action": "release", "key": "run:ping", "reason": "stuck after a deploy"})
        )
        .is_ok());
        assert!(
            check(json!({"action": "release", "key": "run:ping"})).is_err(),
            "a reason is required"
        );
        assert!(check(json!({"action": "release", "key": "run:ping", "reason": "x"})).is_err());
        assert!(check(json!({"action": "steal", "key": "run:ping"})).is_err());
        assert!(check(json!({})).is_err());
        assert!(check(json!({"action": "list", "extra": 1})).is_err());
    }
}
