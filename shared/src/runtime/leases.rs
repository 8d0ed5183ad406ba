//! The leases of one run: its single-instance lease and its delivery's idempotency record, taken in that
//! order before the task starts, renewed while it runs, and completed or released when it ends.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::outcome::Outcome;
use crate::error::{class, TaskError};
use crate::lease::{Acquire, Lease, LeaseKind, LeaseStore};
use crate::registry::{Idempotency, OnDuplicate, SingleInstance, TaskOutput};

/// Leases outlive the invocation's deadline by this much at most (clock skew between holders).
const DEADLINE_MARGIN: chrono::Duration = chrono::Duration::seconds(10);

/// What one run holds. Every lease ends at the latest at the invocation's deadline plus a margin, so a
/// crashed holder blocks others only until then.
pub(super) struct LeaseGuard {
    store: Arc<dyn LeaseStore>,
    owner: String,
    task: &'static str,
    window: chrono::Duration,
    latest: DateTime<Utc>,
    held: Vec<String>,
    /// The idempotency record's key, kept with the output when the run completes, and for how long.
    completes: Option<(String, chrono::Duration)>,
}

impl LeaseGuard {
    pub(super) fn new(
        store: Arc<dyn LeaseStore>,
        task: &'static str,
        window: Duration,
        deadline_at: DateTime<Utc>,
    ) -> Self {
        LeaseGuard {
            store,
            owner: uuid::Uuid::new_v4().to_string(),
            task,
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            latest: deadline_at + DEADLINE_MARGIN,
            held: Vec::new(),
            completes: None,
        }
    }

    fn hold_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        (now + self.window).min(self.latest)
    }

    fn lease(&self, key: &str, kind: LeaseKind, now: DateTime<Utc>) -> Lease {
        Lease::new(key, kind, &self.owner, self.task, now, self.hold_until(now))
    }

    /// Takes the task's single-instance lease for these arguments. When another run holds it, the outcome
    /// the task's policy gives (skipped, deferred or failed) is returned instead.
    pub(super) async fn single_instance(
        &mut self,
        policy: SingleInstance,
        kwargs: &Map<String, Value>,
    ) -> Result<(), Outcome> {
        let now = Utc::now();
        let key = run_lease_key(self.task, policy.keys, kwargs);
        match self
            .store
            .acquire(&self.lease(&key, LeaseKind::Run, now), now)
            .await
        {
            Err(e) => Err(Outcome::Failed(e.into())),
            Ok(Acquire::Acquired) => {
                self.held.push(key);
                Ok(())
            }
            Ok(Acquire::Held(holder)) => {
                let reason = format!("already running: {holder}");
                warn!(lease = %holder.key, holder = %holder.owner, expires_at = %holder.expires_at,
                    policy = ?policy.on_duplicate, "single-instance lease held");
                Err(match policy.on_duplicate {
                    OnDuplicate::Skip => Outcome::Skipped(reason),
                    OnDuplicate::Defer(delay) => Outcome::Deferred(delay, reason),
                    OnDuplicate::Fail => {
                        Outcome::Failed(TaskError::permanent(class::LEASE_HELD, reason))
                    }
                })
            }
        }
    }

    /// Takes the delivery's idempotency record (`id` is the idempotency key, else the run key). For a
    /// duplicate, the outcome it gets instead: the stored output, a deferral while the first is in progress,
    /// or a conflict when the arguments differ.
    pub(super) async fn idempotency(
        &mut self,
        policy: Idempotency,
        id: &str,
        kwargs: &Map<String, Value>,
    ) -> Result<(), Outcome> {
        let now = Utc::now();
        let key = format!("idem:{}:{id}", self.task);
        let hash = payload_hash(kwargs);
        let mut record = self.lease(&key, LeaseKind::Idempotency, now);
        record.payload_hash = Some(hash.clone());
        match self.store.acquire(&record, now).await {
            Err(e) => Err(Outcome::Failed(e.into())),
            Ok(Acquire::Held(previous)) => Err(duplicate_outcome(
                &previous, &key, id, self.task, &hash, now,
            )),
            Ok(Acquire::Acquired) => {
                self.held.push(key.clone());
                let keep = chrono::Duration::from_std(policy.keep).unwrap_or(chrono::Duration::MAX);
                self.completes = Some((key, keep));
                Ok(())
            }
        }
    }

    /// Renews every held lease each third of the window. Never completes: raced against the task.
    pub(super) async fn heartbeat(&self) -> std::convert::Infallible {
        let every = (self.window / 3).to_std().unwrap_or(Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let now = Utc::now();
            for key in &self.held {
                if let Err(e) = self
                    .store
                    .renew(key, &self.owner, self.hold_until(now), now)
                    .await
                {
                    warn!(key = %key, error = %e, "lease heartbeat failed");
                }
            }
        }
    }

    /// Ends the run's hold. A completed delivery keeps its idempotency record, with the output, for
    /// duplicates to find; every other lease is released, so a retry can run.
    pub(super) async fn finish(mut self, outcome: &Outcome) {
        if let (Some((key, keep)), Outcome::Done(output)) = (&self.completes, outcome) {
            if self.complete(key, *keep, output).await {
                let key = key.clone();
                self.held.retain(|k| *k != key);
            }
        }
        for key in &self.held {
            if let Err(e) = self.store.release(key, &self.owner).await {
                warn!(key = %key, error = %e, "could not release a lease; it ends at its expiry");
            }
        }
    }

    /// Stores the output in the idempotency record; false (and the record is released instead) when it
    /// cannot be stored, so a duplicate runs again rather than finding an unreadable result.
    async fn complete(&self, key: &str, keep: chrono::Duration, output: &TaskOutput) -> bool {
        let stored = match serde_json::to_string(output) {
            Ok(stored) => stored,
            Err(e) => {
                warn!(key = %key, error = %e, "the output cannot be stored for duplicate deliveries");
                return false;
            }
        };
        let now = Utc::now();
        match self
            .store
            .complete(key, &self.owner, &stored, now + keep, now)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(key = %key, error = %e, "could not store the result for duplicate deliveries");
                false
            }
        }
    }
}

/// What a delivery does when its idempotency key already has a record.
fn duplicate_outcome(
    previous: &Lease,
    key: &str,
    id: &str,
    task: &str,
    hash: &str,
    now: DateTime<Utc>,
) -> Outcome {
    if previous.payload_hash.as_deref() != Some(hash) {
        return Outcome::Failed(TaskError::permanent(
            class::IDEMPOTENCY_CONFLICT,
            format!("idempotency key `{id}` of task `{task}` was first used with other arguments"),
        ));
    }
    match previous
        .result
        .as_deref()
        .map(serde_json::from_str::<TaskOutput>)
    {
        Some(Ok(output)) => {
            info!(key = %key, "duplicate delivery of a completed run: returning the stored report");
            Outcome::Replayed(output)
        }
        Some(Err(e)) => Outcome::Failed(TaskError::permanent(
            class::LEASE_STORE,
            format!("stored result of `{key}` is unreadable: {e}"),
        )),
        None => {
            let wait = (previous.expires_at - now)
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(1));
            Outcome::Deferred(
                wait,
                format!("the same delivery is in progress: {previous}"),
            )
        }
    }
}

/// The single-instance lease key: `run:<task>` plus `:<name>=<value>` for each selected argument.
pub(super) fn run_lease_key(task: &str, keys: &[&str], kwargs: &Map<String, Value>) -> String {
    let mut key = format!("run:{task}");
    for name in keys {
        let value = match kwargs.get(*name) {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        key.push_str(&format!(":{name}={value}"));
    }
    key
}

/// SHA-256 of the arguments in canonical form (object keys sorted).
pub(super) fn payload_hash(kwargs: &Map<String, Value>) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::to_string(kwargs).unwrap_or_default();
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
