//! The runtime every function runs: SQS batches (each record on its own, bounded concurrency, partial
//! batch response, retries with backoff, dead-lettering with context, deadline awareness) and direct
//! invokes of a bare envelope.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{field, info, info_span, warn, Instrument};

use crate::context::{Services, TaskContext};
use crate::db::{Disposition, RunLog, RunRecord};
use crate::envelope::Envelope;
use crate::error::{class, TaskError};
use crate::lease::{Acquire, Lease, LeaseKind, LeaseStore};
use crate::metrics::{self, RunMetrics};
use crate::queue::{
    producer_attributes, DeadLetter, MessageAttribute, MessageAttributes, Queue, QueueOps,
};
use crate::registry::{OnDuplicate, Registry, TaskOutput};
use crate::report::{Counts, RunReport, Status};
use crate::retry::{RetryDecision, RetryPolicy};

/// Time kept back at the end of an invocation for reporting, after running tasks are stopped.
const FINAL_RESERVE: Duration = Duration::from_millis(500);

/// One Lambda invocation's identity and deadline.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub deadline: Instant,
    /// The same deadline on the wall clock, for lease expiries shared with other processes.
    pub deadline_at: chrono::DateTime<Utc>,
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
        }
    }

    pub fn with_timeout(request_id: impl Into<String>, timeout: Duration) -> Self {
        Invocation {
            request_id: request_id.into(),
            deadline: Instant::now() + timeout,
            deadline_at: Utc::now()
                + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// Milliseconds left before `deadline`. Lambda sends an epoch time; `cargo lambda watch` sends the
/// function timeout itself (600000), which read as an epoch time would be 1970 and end every invocation
/// at once. No real deadline is that far in the past, so a value under [`EPOCH_MS_FLOOR`] is taken as
/// a duration.
/// The invocation's answer as JSON. One that cannot be serialised fails the whole invocation, so the batch
/// comes back whole, rather than answering `null`, which Lambda reads as "every record succeeded".
fn to_response(value: &impl serde::Serialize) -> Result<Value, InvokeError> {
    serde_json::to_value(value).map_err(|e| InvokeError {
        error_type: class::TASK_FAILED.into(),
        message: format!("the invocation's response could not be serialised: {e}"),
    })
}

fn remaining_ms(deadline: u64, now_ms: i64) -> i64 {
    let deadline = deadline as i64;
    if deadline < EPOCH_MS_FLOOR {
        return deadline.max(0);
    }
    deadline.saturating_sub(now_ms).max(0)
}

/// 2001-09-09 in epoch milliseconds: below it, a deadline is a duration (see [`remaining_ms`]).
const EPOCH_MS_FLOOR: i64 = 1_000_000_000_000;

/// A failed direct invoke, returned to the caller as a Lambda error (`errorType` is the error class).
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

/// What running one envelope produced, before deciding what happens to its message.
#[derive(Debug)]
enum Outcome {
    Done(TaskOutput),
    /// A duplicate delivery of a completed run: its stored output.
    Replayed(TaskOutput),
    Skipped(String),
    /// Not run now: another run holds the lease or the delivery's key. Try again after the delay.
    Deferred(Duration, String),
    Failed(TaskError),
}

/// Leases outlive the invocation's deadline by this much at most (clock skew between holders).
const LEASE_DEADLINE_MARGIN: chrono::Duration = chrono::Duration::seconds(10);

#[derive(Debug)]
struct Attempted {
    task: Option<String>,
    run_key: String,
    retry: RetryPolicy,
    outcome: Outcome,
}

/// The shared runtime of one function (one queue).
pub struct Runtime {
    queue: Queue,
    registry: Arc<Registry>,
    services: Arc<Services>,
    queue_ops: Arc<dyn QueueOps>,
    runs: RunLog,
    function_name: Arc<str>,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
}

impl Runtime {
    pub fn new(
        queue: Queue,
        registry: Registry,
        services: Arc<Services>,
        queue_ops: Arc<dyn QueueOps>,
        runs: RunLog,
        function_name: impl Into<Arc<str>>,
    ) -> Self {
        use rand::SeedableRng;
        Runtime {
            queue,
            registry: Arc::new(registry),
            services,
            queue_ops,
            runs,
            function_name: function_name.into(),
            rng: std::sync::Mutex::new(rand::rngs::StdRng::from_os_rng()),
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn settings(&self) -> &crate::config::Settings {
        &self.services.settings
    }

    /// Entry point for any payload: an SQS event (it has `Records`) or a bare envelope (direct invoke).
    pub async fn handle(
        &self,
        payload: Value,
        invocation: Invocation,
    ) -> Result<Value, InvokeError> {
        let span =
            info_span!("invocation", request_id = %invocation.request_id, queue = %self.queue);
        async move {
            if let Some(secret) = &self.services.db_secret {
                // Without credentials no record can run: the whole invocation fails and the batch comes back.
                secret
                    .ensure(&self.services.db)
                    .await
                    .map_err(|e| InvokeError {
                        error_type: e.class().into(),
                        message: e.to_string(),
                    })?;
            }
            if payload.get("Records").is_some() {
                let event: SqsEvent = serde_json::from_value(payload).map_err(|e| InvokeError {
                    error_type: class::MALFORMED_MESSAGE.into(),
                    message: format!("payload has `Records` but is not an SQS event: {e}"),
                })?;
                let response = self.handle_batch(event, &invocation).await;
                to_response(&response)
            } else {
                let report = self.handle_direct(payload, &invocation).await?;
                to_response(&report)
            }
        }
        .instrument(span)
        .await
    }

    /// Runs a batch: each record on its own, at most `concurrency` at a time. Returns the ids of the records
    /// that must come back (retry scheduled, not started before the deadline, or not dead-lettered because
    /// the DLQ was unreachable); every other record is done and may be deleted.
    pub async fn handle_batch(&self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        let margin = self.services.settings.deadline_margin;
        let start_cutoff = invocation
            .deadline
            .checked_sub(margin)
            .unwrap_or(invocation.deadline);
        let total = event.records.len();
        let failures: Vec<String> = futures::stream::iter(event.records)
            .map(|record| self.handle_record(record, invocation, start_cutoff))
            .buffer_unordered(self.services.settings.concurrency)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        info!(records = total, failed = failures.len(), "batch finished");
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures
            .into_iter()
            .map(|id| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                f
            })
            .collect();
        response
    }

    /// Processes one record; returns its message id if it must be reported as a batch item failure.
    async fn handle_record(
        &self,
        record: SqsMessage,
        invocation: &Invocation,
        start_cutoff: Instant,
    ) -> Option<String> {
        let message_id = record.message_id.clone().unwrap_or_default();
        let attempt = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let span = info_span!("record", message_id = %message_id, attempt, task = field::Empty);
        async move {
            let own = self.services.settings.urls(self.queue);
            let receipt = record.receipt_handle.as_deref().unwrap_or_default();
            if Instant::now() >= start_cutoff {
                // Not started: hand it back visible at once, so another invocation picks it up.
                info!("deadline near: handing back a record that was not started");
                if let Err(e) = self.queue_ops.delay_retry(&own.queue, receipt, Duration::ZERO).await {
                    warn!(error = %e, "could not make the record visible again; it returns after its visibility timeout");
                }
                return Some(message_id);
            }

            let started_at = Utc::now();
            let clock = Instant::now();
            let body = record.body.as_deref().unwrap_or_default();
            let attributes: MessageAttributes = record
                .message_attributes
                .iter()
                .map(|(name, value)| (name.clone(), MessageAttribute::from_event(value)))
                .collect();
            let producers = Arc::new(producer_attributes(&attributes));
            let attempted = self
                .attempt(Envelope::parse(body), message_id.clone(), attempt, producers, invocation)
                .await;
            let duration = clock.elapsed();

            let (status, disposition, failed, retried) = match &attempted.outcome {
                Outcome::Done(_) | Outcome::Replayed(_) => {
                    (Status::Succeeded, Disposition::Acknowledged, false, false)
                }
                Outcome::Skipped(_) => (Status::Skipped, Disposition::Acknowledged, false, false),
                Outcome::Deferred(delay, reason) => {
                    info!(delay_ms = delay.as_millis() as u64, reason = %reason, "deferred");
                    if let Err(e) = self.queue_ops.delay_retry(&own.queue, receipt, *delay).await {
                        warn!(error = %e, "could not set the deferral delay; the message returns after its visibility timeout");
                    }
                    (Status::Skipped, Disposition::Deferred, true, false)
                }
                Outcome::Failed(err) => {
                    let decision = if err.is_retryable() {
                        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                        attempted.retry.decide(attempt, &mut *rng)
                    } else {
                        RetryDecision::GiveUp
                    };
                    match decision {
                        RetryDecision::RetryAfter(delay) => {
                            warn!(error_class = err.class(), error = %err, delay_ms = delay.as_millis() as u64, "retry scheduled");
                            if let Err(e) = self.queue_ops.delay_retry(&own.queue, receipt, delay).await {
                                warn!(error = %e, "could not set the retry delay; the message returns after its visibility timeout");
                            }
                            (Status::Failed, Disposition::RetryScheduled, true, true)
                        }
                        RetryDecision::GiveUp => {
                            let dead = DeadLetter {
                                task: attempted.task.clone(),
                                error_kind: err.kind().as_str().to_owned(),
                                error_class: err.class().to_owned(),
                                error_message: err.message().to_owned(),
                                attempts: attempt,
                                failed_at: Utc::now(),
                                source_queue: self.queue.as_str().to_owned(),
                                source_message_id: message_id.clone(),
                                carried: MessageAttributes::new(),
                            };
                            match self.queue_ops.dead_letter(&own.dlq, body, &attributes, &dead).await {
                                Ok(()) => {
                                    warn!(error_class = err.class(), error = %err, "dead-lettered");
                                    (Status::Failed, Disposition::DeadLettered, false, false)
                                }
                                Err(e) => {
                                    warn!(error_class = err.class(), error = %err, dlq_error = %e,
                                        "could not dead-letter; handing the message back");
                                    (Status::Failed, Disposition::HandedBack, true, false)
                                }
                            }
                        }
                    }
                }
            };
            let report = self.report(&attempted, status, attempt, duration);
            self.finish(&report, Some(&message_id), "sqs", disposition, started_at, retried)
                .await;
            failed.then_some(message_id)
        }
        .instrument(span)
        .await
    }

    /// Runs a bare envelope synchronously and returns its report; a failure becomes a Lambda error.
    pub async fn handle_direct(
        &self,
        payload: Value,
        invocation: &Invocation,
    ) -> Result<RunReport, InvokeError> {
        let started_at = Utc::now();
        let clock = Instant::now();
        let fallback_key = uuid::Uuid::new_v4().to_string();
        let attempted = self
            .attempt(
                Envelope::from_value(payload),
                fallback_key,
                1,
                Arc::default(),
                invocation,
            )
            .await;
        let status = match attempted.outcome {
            Outcome::Done(_) | Outcome::Replayed(_) => Status::Succeeded,
            Outcome::Skipped(_) => Status::Skipped,
            Outcome::Deferred(..) | Outcome::Failed(_) => Status::Failed,
        };
        let report = self.report(&attempted, status, 1, clock.elapsed());
        self.finish(
            &report,
            None,
            "invoke",
            Disposition::Returned,
            started_at,
            false,
        )
        .await;
        match attempted.outcome {
            Outcome::Failed(err) => Err(err.into()),
            // A caller waiting for an answer cannot be handed back to a queue.
            Outcome::Deferred(_, reason) => {
                Err(TaskError::retryable(class::LEASE_HELD, reason).into())
            }
            _ => Ok(report),
        }
    }

    /// Parses, routes, checks expiry and runs one envelope, catching panics and stopping at the deadline.
    async fn attempt(
        &self,
        parsed: Result<Envelope, TaskError>,
        fallback_key: String,
        attempt: u32,
        attributes: Arc<MessageAttributes>,
        invocation: &Invocation,
    ) -> Attempted {
        let failed = |task: Option<String>, run_key: String, err: TaskError| Attempted {
            task,
            run_key,
            retry: RetryPolicy::NONE,
            outcome: Outcome::Failed(err),
        };
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err(err) => return failed(None, fallback_key, err),
        };
        tracing::Span::current().record("task", envelope.task.as_str());
        let run_key = envelope.id.clone().unwrap_or(fallback_key);
        let task = Some(envelope.task.clone());
        let spec = match self.registry.lookup(&envelope.task) {
            Ok(spec) => *spec,
            Err(err) => return failed(task, run_key, err),
        };
        if spec.queue != self.queue {
            let err = TaskError::permanent(
                class::WRONG_QUEUE,
                format!(
                    "task `{}` runs on the {} queue, not on {}",
                    spec.name, spec.queue, self.queue
                ),
            );
            return failed(task, run_key, err);
        }
        if envelope.is_expired(Utc::now()) {
            let at = envelope
                .expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            return Attempted {
                task,
                run_key,
                retry: spec.retry,
                outcome: Outcome::Skipped(format!("expired at {at}")),
            };
        }

        if let Err(err) = spec.check_kwargs(&envelope.kwargs) {
            return failed(task, run_key, err);
        }
        let retry = spec.retry;
        let done = |outcome| Attempted {
            task: task.clone(),
            run_key: run_key.clone(),
            retry,
            outcome,
        };

        // Leases: the single-instance lease first, then the delivery's idempotency record.
        let owner = uuid::Uuid::new_v4().to_string();
        let leases = self.services.leases.clone();
        let window = chrono::Duration::from_std(self.services.settings.lease_window)
            .unwrap_or(chrono::Duration::MAX);
        let latest = invocation.deadline_at + LEASE_DEADLINE_MARGIN;
        let hold_until = move |now: chrono::DateTime<Utc>| (now + window).min(latest);
        let mut held: Vec<String> = Vec::new();
        if let Some(policy) = spec.single_instance {
            let now = Utc::now();
            let key = run_lease_key(spec.name, policy.keys, &envelope.kwargs);
            let lease = Lease::new(
                &key,
                LeaseKind::Run,
                &owner,
                spec.name,
                now,
                hold_until(now),
            );
            match leases.acquire(&lease, now).await {
                Err(e) => return done(Outcome::Failed(e.into())),
                Ok(Acquire::Acquired) => held.push(key),
                Ok(Acquire::Held(holder)) => {
                    let reason = format!("already running: {holder}");
                    warn!(lease = %holder.key, holder = %holder.owner, expires_at = %holder.expires_at,
                        policy = ?policy.on_duplicate, "single-instance lease held");
                    return done(match policy.on_duplicate {
                        OnDuplicate::Skip => Outcome::Skipped(reason),
                        OnDuplicate::Defer(delay) => Outcome::Deferred(delay, reason),
                        OnDuplicate::Fail => {
                            Outcome::Failed(TaskError::permanent(class::LEASE_HELD, reason))
                        }
                    });
                }
            }
        }
        let mut completes: Option<(String, chrono::Duration)> = None;
        if let Some(idem) = spec.idempotency {
            let now = Utc::now();
            let id = envelope
                .idempotency_key
                .clone()
                .unwrap_or_else(|| run_key.clone());
            let key = format!("idem:{}:{id}", spec.name);
            let hash = payload_hash(&envelope.kwargs);
            let mut record = Lease::new(
                &key,
                LeaseKind::Idempotency,
                &owner,
                spec.name,
                now,
                hold_until(now),
            );
            record.payload_hash = Some(hash.clone());
            let outcome = match leases.acquire(&record, now).await {
                Err(e) => Some(Outcome::Failed(e.into())),
                Ok(Acquire::Acquired) => None,
                Ok(Acquire::Held(previous)) => Some(duplicate_outcome(
                    &previous, &key, &id, spec.name, &hash, now,
                )),
            };
            if let Some(outcome) = outcome {
                self.release_all(&owner, &held).await;
                return done(outcome);
            }
            held.push(key.clone());
            completes = Some((
                key,
                chrono::Duration::from_std(idem.keep).unwrap_or(chrono::Duration::MAX),
            ));
        }

        let stop_at = invocation
            .deadline
            .checked_sub(FINAL_RESERVE)
            .unwrap_or(invocation.deadline);
        let ctx = TaskContext::new(
            self.services.clone(),
            self.queue,
            run_key.clone(),
            attempt,
            self.function_name.clone(),
            stop_at,
        )
        .with_attributes(attributes);
        let running = AssertUnwindSafe(spec.run(envelope.kwargs, ctx)).catch_unwind();
        let beat = heartbeat(
            leases.as_ref(),
            &owner,
            &held,
            self.services.settings.lease_window / 3,
            hold_until,
        );
        let result = tokio::select! {
            result = tokio::time::timeout_at(stop_at, running) => result,
            never = beat => match never {},
        };
        let outcome = match result {
            Err(_) => Outcome::Failed(TaskError::retryable(
                class::DEADLINE_EXCEEDED,
                "stopped at the invocation deadline before finishing",
            )),
            Ok(Err(panic)) => Outcome::Failed(TaskError::permanent(
                class::PANIC,
                format!("task panicked: {}", panic_message(&panic)),
            )),
            Ok(Ok(Err(err))) => Outcome::Failed(err),
            Ok(Ok(Ok(output))) => match output.skipped.clone() {
                Some(reason) => Outcome::Skipped(reason),
                None => Outcome::Done(output),
            },
        };

        // A completed delivery keeps its record, with the output, for duplicates to find; anything else
        // frees the key so a retry can run.
        if let (Some((key, keep)), Outcome::Done(output)) = (&completes, &outcome) {
            let now = Utc::now();
            let stored = serde_json::to_string(output).unwrap_or_default();
            match leases
                .complete(key, &owner, &stored, now + *keep, now)
                .await
            {
                Ok(()) => held.retain(|k| k != key),
                Err(e) => {
                    warn!(key = %key, error = %e, "could not store the result for duplicate deliveries")
                }
            }
        }
        self.release_all(&owner, &held).await;
        done(outcome)
    }

    async fn release_all(&self, owner: &str, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.services.leases.release(key, owner).await {
                warn!(key = %key, error = %e, "could not release a lease; it ends at its expiry");
            }
        }
    }

    fn report(
        &self,
        attempted: &Attempted,
        status: Status,
        attempt: u32,
        duration: Duration,
    ) -> RunReport {
        let (counts, reason, error, detail) = match &attempted.outcome {
            Outcome::Done(out) | Outcome::Replayed(out) => {
                (out.counts, None, None, out.detail.clone())
            }
            Outcome::Skipped(reason) | Outcome::Deferred(_, reason) => {
                (Counts::default(), Some(reason.clone()), None, Value::Null)
            }
            Outcome::Failed(err) => (
                Counts::new(0, 1),
                Some(err.message().to_owned()),
                Some(err),
                Value::Null,
            ),
        };
        RunReport {
            task: attempted.task.clone(),
            id: attempted.run_key.clone(),
            queue: self.queue,
            status,
            attempt,
            counts,
            duration_ms: duration.as_millis() as u64,
            reason,
            error_kind: error.map(|e| e.kind().as_str().to_owned()),
            error_class: error.map(|e| e.class().to_owned()),
            replayed: matches!(attempted.outcome, Outcome::Replayed(_)),
            detail,
        }
    }

    /// Logs the run, stores it in `task_runs` and emits its metrics. History is best effort: a database
    /// outage must not change what happens to the message.
    async fn finish(
        &self,
        report: &RunReport,
        message_id: Option<&str>,
        trigger: &'static str,
        disposition: Disposition,
        started_at: chrono::DateTime<Utc>,
        retried: bool,
    ) {
        info!(
            status = report.status.as_str(),
            disposition = disposition.as_str(),
            run_key = %report.id,
            duration_ms = report.duration_ms,
            processed = report.counts.processed,
            errors = report.counts.errors,
            error_class = report.error_class.as_deref(),
            reason = report.reason.as_deref(),
            "run finished"
        );
        let record = RunRecord {
            report,
            message_id,
            trigger,
            disposition,
            started_at,
            finished_at: Utc::now(),
        };
        let recorded = self.runs.record(&record).await;
        if let Err(e) = &recorded {
            warn!(error = %e, "could not record the run in task_runs");
        }
        let auth_failed = report.error_class.as_deref() == Some(class::DATABASE_AUTH)
            || matches!(&recorded, Err(e) if e.class() == class::DATABASE_AUTH);
        if let (true, Some(secret)) = (auth_failed, &self.services.db_secret) {
            secret.note_rejected();
        }
        if !self.services.settings.emit_metrics {
            return;
        }
        metrics::emit(
            self.queue.as_str(),
            report.task.as_deref().unwrap_or("(none)"),
            &RunMetrics {
                duration_ms: report.duration_ms as f64,
                processed: report.counts.processed,
                errors: report.counts.errors,
                retries: u64::from(retried),
                dead_lettered: u64::from(disposition == Disposition::DeadLettered),
                skipped: u64::from(report.status == Status::Skipped),
            },
        );
    }
}

/// What a delivery does when its idempotency key already has a record.
fn duplicate_outcome(
    previous: &Lease,
    key: &str,
    id: &str,
    task: &str,
    hash: &str,
    now: chrono::DateTime<Utc>,
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
fn run_lease_key(task: &str, keys: &[&str], kwargs: &serde_json::Map<String, Value>) -> String {
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
fn payload_hash(kwargs: &serde_json::Map<String, Value>) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::to_string(kwargs).unwrap_or_default();
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Renews `keys` every `every` until dropped. Never completes on its own.
async fn heartbeat(
    leases: &dyn LeaseStore,
    owner: &str,
    keys: &[String],
    every: Duration,
    hold_until: impl Fn(chrono::DateTime<Utc>) -> chrono::DateTime<Utc>,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        let now = Utc::now();
        for key in keys {
            if let Err(e) = leases.renew(key, owner, hold_until(now), now).await {
                warn!(key = %key, error = %e, "lease heartbeat failed");
            }
        }
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deadlines_are_epoch_times_unless_they_can_only_be_durations() {
        let now = 1_795_708_059_351;
        assert_eq!(super::remaining_ms(now as u64 + 30_000, now), 30_000);
        assert_eq!(super::remaining_ms(now as u64 - 5, now), 0);
        // `cargo lambda watch` sends its 600 s timeout as the deadline.
        assert_eq!(super::remaining_ms(600_000, now), 600_000);
    }
    use super::*;
    use crate::config::Settings;
    use crate::lease::memory::MemoryLeaseStore;
    use crate::queue::QueueUrls;
    use crate::registry::{Idempotency, SingleInstance};
    use crate::registry::{Task, TaskSpec};
    use crate::report::TaskReport;
    use futures::future::BoxFuture;
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Delay {
            queue: String,
            receipt: String,
            delay: Duration,
        },
        DeadLetter {
            dlq: String,
            body: String,
            record: DeadLetter,
        },
    }

    #[derive(Default)]
    struct RecordingQueue {
        calls: Mutex<Vec<Call>>,
        dlq_down: bool,
    }

    impl RecordingQueue {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn dead_letters(&self) -> Vec<(String, DeadLetter)> {
            self.calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::DeadLetter { body, record, .. } => Some((body, record)),
                    _ => None,
                })
                .collect()
        }
        fn delays(&self) -> Vec<(String, Duration)> {
            self.calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Delay { receipt, delay, .. } => Some((receipt, delay)),
                    _ => None,
                })
                .collect()
        }
    }

    impl QueueOps for RecordingQueue {
        fn delay_retry<'a>(
            &'a self,
            queue: &'a str,
            receipt: &'a str,
            delay: Duration,
        ) -> BoxFuture<'a, Result<(), TaskError>> {
            self.calls.lock().unwrap().push(Call::Delay {
                queue: queue.into(),
                receipt: receipt.into(),
                delay,
            });
            Box::pin(async { Ok(()) })
        }
        fn dead_letter<'a>(
            &'a self,
            dlq: &'a str,
            body: &'a str,
            _own: &'a crate::queue::MessageAttributes,
            record: &'a DeadLetter,
        ) -> BoxFuture<'a, Result<(), TaskError>> {
            let down = self.dlq_down;
            if !down {
                self.calls.lock().unwrap().push(Call::DeadLetter {
                    dlq: dlq.into(),
                    body: body.into(),
                    record: record.clone(),
                });
            }
            Box::pin(async move {
                if down {
                    Err(TaskError::retryable(
                        class::UPSTREAM_UNAVAILABLE,
                        "DLQ unreachable",
                    ))
                } else {
                    Ok(())
                }
            })
        }
    }

    // Test-only tasks.
    #[derive(Debug, Deserialize, garde::Validate)]
    #[serde(deny_unknown_fields)]
    struct CountArgs {
        #[garde(range(max = 100))]
        n: u64,
        #[serde(default)]
        #[garde(skip)]
        sleep_ms: u64,
    }
    #[derive(Debug, Serialize)]
    struct CountReport {
        n: u64,
    }
    impl TaskReport for CountReport {
        fn counts(&self) -> Counts {
            Counts::new(self.n, 0)
        }
        fn skipped(&self) -> Option<String> {
            (self.n == 0).then(|| "nothing to count".to_owned())
        }
    }

    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    struct Count;
    impl Task for Count {
        const NAME: &'static str = "count";
        const QUEUE: Queue = Queue::Default;
        type Args = CountArgs;
        type Report = CountReport;
        async fn run(args: CountArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
            tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
            Ok(CountReport { n: args.n })
        }
    }

    /// Measures how many runs overlap.
    struct Gauge;
    impl Task for Gauge {
        const NAME: &'static str = "gauge";
        const QUEUE: Queue = Queue::Default;
        type Args = NoArgs;
        type Report = CountReport;
        async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            Ok(CountReport { n: 1 })
        }
    }

    #[derive(Debug, Deserialize, garde::Validate)]
    #[serde(deny_unknown_fields)]
    struct NoArgs {}

    struct Flaky;
    impl Task for Flaky {
        const NAME: &'static str = "flaky";
        const QUEUE: Queue = Queue::Default;
        const RETRY: RetryPolicy =
            RetryPolicy::new(2, Duration::from_secs(10), Duration::from_secs(60));
        type Args = NoArgs;
        type Report = CountReport;
        async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
            Err(TaskError::retryable(
                class::UPSTREAM_UNAVAILABLE,
                "scryfall timed out",
            ))
        }
    }

    struct Boom;
    impl Task for Boom {
        const NAME: &'static str = "boom";
        const QUEUE: Queue = Queue::Default;
        type Args = NoArgs;
        type Report = CountReport;
        async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
            panic!("index out of bounds: the len is 3 but the index is 7")
        }
    }

    struct Elsewhere;
    impl Task for Elsewhere {
        const NAME: &'static str = "elsewhere";
        const QUEUE: Queue = Queue::Ingestion;
        type Args = NoArgs;
        type Report = CountReport;
        async fn run(_: NoArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
            Ok(CountReport { n: 1 })
        }
    }

    fn settings(concurrency: usize, margin_ms: u64) -> Settings {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("DD_LEASE_TABLE".into(), "leases".into());
        env.insert(
            "DATABASE_URL".into(),
            "postgresql://nobody@127.0.0.1:1/none".into(),
        );
        for q in Queue::ALL {
            env.insert(format!("DD_QUEUE_URL_{}", q.env_suffix()), format!("q/{q}"));
            env.insert(
                format!("DD_DLQ_URL_{}", q.env_suffix()),
                format!("q/{q}-dlq"),
            );
        }
        env.insert("DD_CONCURRENCY".into(), concurrency.to_string());
        env.insert("DD_DEADLINE_MARGIN_MS".into(), margin_ms.to_string());
        env.insert("DD_METRICS_DISABLED".into(), "1".into());
        Settings::from_lookup(|k| env.get(k).cloned()).unwrap()
    }

    fn runtime(queue_ops: Arc<RecordingQueue>, concurrency: usize, margin_ms: u64) -> Runtime {
        runtime_with(
            queue_ops,
            concurrency,
            margin_ms,
            Arc::new(MemoryLeaseStore::new()),
        )
    }

    fn runtime_with(
        queue_ops: Arc<RecordingQueue>,
        concurrency: usize,
        margin_ms: u64,
        leases: Arc<MemoryLeaseStore>,
    ) -> Runtime {
        let settings = settings(concurrency, margin_ms);
        let db = crate::db::lazy_pool(&settings).unwrap();
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .build(),
        );
        let registry = Registry::from_specs([
            TaskSpec::of::<Count>(),
            TaskSpec::of::<Flaky>(),
            TaskSpec::of::<Boom>(),
            TaskSpec::of::<Elsewhere>(),
            TaskSpec::of::<Gauge>(),
            TaskSpec::of::<Solo>(),
            TaskSpec::of::<SoloDefer>(),
            TaskSpec::of::<SoloFail>(),
            TaskSpec::of::<Once>(),
        ])
        .unwrap();
        let upstreams = crate::context::Upstreams::from_settings(&settings).unwrap();
        let services = Arc::new(Services {
            settings,
            db,
            db_secret: None,
            sqs,
            leases,
            upstreams,
        });
        Runtime::new(
            Queue::Default,
            registry,
            services,
            queue_ops,
            RunLog::Disabled,
            "test-fn",
        )
    }

    fn record(id: &str, body: &str, receive_count: u32) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.receipt_handle = Some(format!("rh-{id}"));
        m.body = Some(body.into());
        m.attributes
            .insert("ApproximateReceiveCount".into(), receive_count.to_string());
        m
    }

    fn event(records: Vec<SqsMessage>) -> SqsEvent {
        let mut e = SqsEvent::default();
        e.records = records;
        e
    }

    fn failed_ids(r: &SqsBatchResponse) -> Vec<String> {
        let mut ids: Vec<String> = r
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        ids.sort();
        ids
    }

    fn inv() -> Invocation {
        Invocation::with_timeout("req-1", Duration::from_secs(30))
    }

    #[tokio::test]
    async fn mixed_batch_reports_only_the_retryable_failure() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q.clone(), 4, 1000);
        let batch = event(vec![
            record("ok", r#"{"task":"count","kwargs":{"n":3}}"#, 1),
            record("notjson", "{{{", 1),
            record("unknown", r#"{"task":"nope"}"#, 1),
            record("badargs", r#"{"task":"count","kwargs":{"n":1000}}"#, 1),
            record("extra", r#"{"task":"count","kwargs":{"n":1,"x":2}}"#, 1),
            record("wrongq", r#"{"task":"elsewhere"}"#, 1),
            record("panic", r#"{"task":"boom"}"#, 1),
            record("flaky", r#"{"task":"flaky"}"#, 1),
            record("ok2", r#"{"task":"count","kwargs":{"n":1}}"#, 1),
        ]);
        let response = rt.handle_batch(batch, &inv()).await;
        assert_eq!(failed_ids(&response), vec!["flaky"]);

        let dead: HashMap<String, DeadLetter> = q
            .dead_letters()
            .into_iter()
            .map(|(_, d)| (d.source_message_id.clone(), d))
            .collect();
        let classes: HashMap<&str, &str> = dead
            .iter()
            .map(|(k, d)| (k.as_str(), d.error_class.as_str()))
            .collect();
        assert_eq!(
            classes,
            HashMap::from([
                ("notjson", "malformed_message"),
                ("unknown", "unknown_task"),
                ("badargs", "invalid_kwargs"),
                ("extra", "invalid_kwargs"),
                ("wrongq", "wrong_queue"),
                ("panic", "panic"),
            ])
        );
        assert!(dead["panic"].error_message.contains("index out of bounds"));
        assert_eq!(dead["notjson"].task, None);
        assert_eq!(dead["badargs"].task.as_deref(), Some("count"));
        assert!(dead.values().all(|d| d.attempts == 1
            && d.error_kind == "permanent"
            && d.source_queue == "default"));

        let delays = q.delays();
        assert_eq!(delays.len(), 1);
        assert_eq!(delays[0].0, "rh-flaky");
        let (low, high) = Flaky::RETRY.window(1);
        assert!(
            delays[0].1 >= low && delays[0].1 <= high,
            "{:?}",
            delays[0].1
        );
    }

    #[tokio::test]
    async fn dead_lettered_messages_keep_their_body_and_go_to_their_own_dlq() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q.clone(), 1, 1000);
        let body = "not json at all \u{1F409}";
        rt.handle_batch(event(vec![record("m", body, 1)]), &inv())
            .await;
        let calls = q.calls();
        assert_eq!(calls.len(), 1);
        let Call::DeadLetter {
            dlq, body: sent, ..
        } = &calls[0]
        else {
            panic!("{calls:?}")
        };
        assert_eq!(dlq, "q/default-dlq");
        assert_eq!(sent, body);
    }

    #[tokio::test]
    async fn retryable_failure_is_dead_lettered_after_the_last_retry() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q.clone(), 1, 1000);
        for attempt in 1..=2 {
            let r = rt
                .handle_batch(
                    event(vec![record("f", r#"{"task":"flaky"}"#, attempt)]),
                    &inv(),
                )
                .await;
            assert_eq!(failed_ids(&r), vec!["f"], "attempt {attempt}");
        }
        let r = rt
            .handle_batch(event(vec![record("f", r#"{"task":"flaky"}"#, 3)]), &inv())
            .await;
        assert!(r.batch_item_failures.is_empty());
        let delays: Vec<Duration> = q.delays().into_iter().map(|(_, d)| d).collect();
        assert_eq!(delays.len(), 2);
        assert!(delays[1] >= delays[0]);
        let dead = q.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1.attempts, 3);
        assert_eq!(dead[0].1.error_kind, "retryable");
        assert_eq!(dead[0].1.error_class, "upstream_unavailable");
        assert_eq!(dead[0].1.error_message, "scryfall timed out");
    }

    #[tokio::test]
    async fn unreachable_dlq_hands_the_message_back() {
        let q = Arc::new(RecordingQueue {
            dlq_down: true,
            ..Default::default()
        });
        let rt = runtime(q.clone(), 1, 1000);
        let r = rt
            .handle_batch(event(vec![record("p", "garbage", 1)]), &inv())
            .await;
        assert_eq!(failed_ids(&r), vec!["p"]);
    }

    #[tokio::test]
    async fn expired_envelopes_are_skipped_not_run_or_dead_lettered() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q.clone(), 1, 1000);
        let body =
            json!({"task":"count","kwargs":{"n":1},"expires_at":"2020-01-01T00:00:00Z","id":"e1"})
                .to_string();
        let r = rt
            .handle_batch(event(vec![record("e", &body, 1)]), &inv())
            .await;
        assert!(r.batch_item_failures.is_empty());
        assert!(q.calls().is_empty());

        let report = rt
            .handle_direct(serde_json::from_str(&body).unwrap(), &inv())
            .await
            .unwrap();
        assert_eq!(report.status, Status::Skipped);
        assert_eq!(report.id, "e1");
        assert!(report.reason.unwrap().contains("expired at 2020-01-01"));
    }

    #[tokio::test]
    async fn records_are_not_started_after_the_cutoff() {
        let q = Arc::new(RecordingQueue::default());
        // The margin is larger than the time left: nothing may start.
        let rt = runtime(q.clone(), 2, 10_000);
        let invocation = Invocation::with_timeout("late", Duration::from_secs(5));
        let records = (0..5)
            .map(|i| record(&format!("r{i}"), r#"{"task":"count","kwargs":{"n":1}}"#, 1))
            .collect();
        let r = rt.handle_batch(event(records), &invocation).await;
        assert_eq!(failed_ids(&r), vec!["r0", "r1", "r2", "r3", "r4"]);
        assert!(q.delays().iter().all(|(_, d)| d.is_zero()));
        assert_eq!(q.delays().len(), 5);
    }

    #[tokio::test]
    async fn a_task_running_into_the_deadline_is_stopped_and_retried() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q.clone(), 1, 0);
        let invocation = Invocation::with_timeout("short", Duration::from_millis(800));
        let r = rt
            .handle_batch(
                event(vec![record(
                    "slow",
                    r#"{"task":"count","kwargs":{"n":1,"sleep_ms":5000}}"#,
                    1,
                )]),
                &invocation,
            )
            .await;
        assert_eq!(failed_ids(&r), vec!["slow"]);
        assert_eq!(q.delays().len(), 1);
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q.clone(), 3, 0);
        let records = (0..10)
            .map(|i| record(&format!("c{i}"), r#"{"task":"gauge"}"#, 1))
            .collect();
        let r = rt.handle_batch(event(records), &inv()).await;
        assert!(r.batch_item_failures.is_empty());
        assert_eq!(PEAK.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn direct_invoke_returns_the_report_or_a_typed_error() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q, 1, 0);
        let out = rt
            .handle(json!({"task":"count","kwargs":{"n":7},"id":"d-1"}), inv())
            .await
            .unwrap();
        assert_eq!(out["status"], "succeeded");
        assert_eq!(out["counts"]["processed"], 7);
        assert_eq!(out["detail"]["n"], 7);
        assert_eq!(out["id"], "d-1");

        let out = rt
            .handle(json!({"task":"count","kwargs":{"n":0}}), inv())
            .await
            .unwrap();
        assert_eq!(out["status"], "skipped");
        assert_eq!(out["reason"], "nothing to count");

        let err = rt
            .handle(json!({"task":"count","kwargs":{"n":"seven"}}), inv())
            .await
            .unwrap_err();
        assert_eq!(err.error_type, "invalid_kwargs");
        assert!(err.message.contains("task `count`"), "{}", err.message);

        let err = rt.handle(json!("ping"), inv()).await.unwrap_err();
        assert_eq!(err.error_type, "malformed_message");

        let err = rt.handle(json!({"task":"boom"}), inv()).await.unwrap_err();
        assert_eq!(err.error_type, "panic");

        let diagnostic: lambda_runtime::Diagnostic = rt
            .handle(json!({"task":"zzz"}), inv())
            .await
            .unwrap_err()
            .into();
        assert_eq!(diagnostic.error_type, "unknown_task");
    }

    #[tokio::test]
    async fn sqs_payload_yields_a_batch_response() {
        let q = Arc::new(RecordingQueue::default());
        let rt = runtime(q, 1, 0);
        let payload = json!({"Records": [
            {"messageId": "a", "receiptHandle": "rh-a", "body": "{\"task\":\"flaky\"}",
             "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
             "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"}
        ]});
        let out = rt.handle(payload, inv()).await.unwrap();
        assert_eq!(out, json!({"batchItemFailures": [{"itemIdentifier": "a"}]}));
    }

    #[test]
    fn queue_urls_come_from_settings() {
        let s = settings(1, 0);
        assert_eq!(
            s.urls(Queue::Default),
            &QueueUrls {
                queue: "q/default".into(),
                dlq: "q/default-dlq".into()
            }
        );
    }

    // Lease-policy test tasks.
    #[derive(Debug, Deserialize, garde::Validate)]
    #[serde(deny_unknown_fields)]
    struct SetArgs {
        #[serde(default)]
        #[garde(skip)]
        set: Option<String>,
        #[serde(default)]
        #[garde(skip)]
        fail: bool,
    }

    macro_rules! solo_task {
        ($name:ident, $task:literal, $policy:expr) => {
            struct $name;
            impl Task for $name {
                const NAME: &'static str = $task;
                const QUEUE: Queue = Queue::Default;
                const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
                    keys: &["set"],
                    on_duplicate: $policy,
                });
                type Args = SetArgs;
                type Report = CountReport;
                async fn run(args: SetArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
                    Ok(CountReport {
                        n: args.set.map_or(1, |s| s.len() as u64),
                    })
                }
            }
        };
    }
    solo_task!(Solo, "solo", OnDuplicate::Skip);
    solo_task!(
        SoloDefer,
        "solo_defer",
        OnDuplicate::Defer(Duration::from_secs(30))
    );
    solo_task!(SoloFail, "solo_fail", OnDuplicate::Fail);

    static ONCE_RUNS: AtomicUsize = AtomicUsize::new(0);

    struct Once;
    impl Task for Once {
        const NAME: &'static str = "once";
        const QUEUE: Queue = Queue::Default;
        const IDEMPOTENCY: Option<Idempotency> = Some(Idempotency {
            keep: Duration::from_secs(3600),
        });
        type Args = SetArgs;
        type Report = CountReport;
        async fn run(args: SetArgs, _ctx: TaskContext) -> Result<CountReport, TaskError> {
            let n = ONCE_RUNS.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            if args.fail {
                return Err(TaskError::retryable(class::TASK_RETRYABLE, "not yet"));
            }
            Ok(CountReport { n })
        }
    }

    fn held_by_someone_else(key: &str) -> Lease {
        let now = Utc::now();
        Lease::new(
            key,
            LeaseKind::Run,
            "other-run",
            "solo",
            now,
            now + chrono::Duration::seconds(60),
        )
    }

    #[tokio::test]
    async fn single_instance_skip_acknowledges_and_names_the_holder() {
        let q = Arc::new(RecordingQueue::default());
        let leases = Arc::new(MemoryLeaseStore::new());
        let rt = runtime_with(q.clone(), 1, 0, leases.clone());
        let holder = held_by_someone_else("run:solo:set=MH1");
        leases.acquire(&holder, Utc::now()).await.unwrap();

        let out = rt
            .handle(json!({"task": "solo", "kwargs": {"set": "MH1"}}), inv())
            .await
            .unwrap();
        assert_eq!(out["status"], "skipped");
        let reason = out["reason"].as_str().unwrap();
        assert!(reason.contains("held by other-run until"), "{reason}");

        // Another set is another key: it runs, and its lease is released afterwards.
        let out = rt
            .handle(json!({"task": "solo", "kwargs": {"set": "WAR"}}), inv())
            .await
            .unwrap();
        assert_eq!(out["status"], "succeeded");
        assert_eq!(leases.get("run:solo:set=WAR").await.unwrap(), None);

        let r = rt
            .handle_batch(
                event(vec![record(
                    "s",
                    r#"{"task":"solo","kwargs":{"set":"MH1"}}"#,
                    1,
                )]),
                &inv(),
            )
            .await;
        assert!(
            r.batch_item_failures.is_empty(),
            "a skipped duplicate is acknowledged"
        );
        assert!(q.calls().is_empty());
    }

    #[tokio::test]
    async fn single_instance_defer_and_fail() {
        let q = Arc::new(RecordingQueue::default());
        let leases = Arc::new(MemoryLeaseStore::new());
        let rt = runtime_with(q.clone(), 1, 0, leases.clone());
        leases
            .acquire(&held_by_someone_else("run:solo_defer:set=-"), Utc::now())
            .await
            .unwrap();
        leases
            .acquire(&held_by_someone_else("run:solo_fail:set=-"), Utc::now())
            .await
            .unwrap();

        let r = rt
            .handle_batch(
                event(vec![
                    record("d", r#"{"task":"solo_defer"}"#, 1),
                    record("f", r#"{"task":"solo_fail"}"#, 1),
                ]),
                &inv(),
            )
            .await;
        assert_eq!(failed_ids(&r), vec!["d"]);
        assert_eq!(
            q.delays(),
            vec![("rh-d".to_owned(), Duration::from_secs(30))]
        );
        let dead = q.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1.error_class, "lease_held");

        let err = rt
            .handle(json!({"task": "solo_defer"}), inv())
            .await
            .unwrap_err();
        assert_eq!(err.error_type, "lease_held");
    }

    #[tokio::test]
    async fn duplicate_deliveries_run_once_and_report_the_same() {
        let q = Arc::new(RecordingQueue::default());
        let leases = Arc::new(MemoryLeaseStore::new());
        let rt = runtime_with(q.clone(), 1, 0, leases.clone());
        let before = ONCE_RUNS.load(Ordering::SeqCst);
        let body = r#"{"task":"once","id":"delivery-1","kwargs":{"set":"M20"}}"#;
        let first = rt
            .handle(serde_json::from_str(body).unwrap(), inv())
            .await
            .unwrap();
        let second = rt
            .handle(serde_json::from_str(body).unwrap(), inv())
            .await
            .unwrap();
        assert_eq!(ONCE_RUNS.load(Ordering::SeqCst), before + 1, "ran once");
        assert_eq!(first["detail"], second["detail"]);
        assert_eq!(first["counts"], second["counts"]);
        assert_eq!(second["replayed"], true);
        assert!(first.get("replayed").is_none());

        // Through SQS: redelivery with another receive count is acknowledged with the stored report.
        let r = rt
            .handle_batch(event(vec![record("again", body, 2)]), &inv())
            .await;
        assert!(r.batch_item_failures.is_empty());
        assert_eq!(ONCE_RUNS.load(Ordering::SeqCst), before + 1);

        // Same key, other arguments: a clear permanent error.
        let err = rt
            .handle(
                json!({"task":"once","id":"delivery-1","kwargs":{"set":"WAR"}}),
                inv(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.error_type, "idempotency_conflict");
        assert!(err.message.contains("`delivery-1`"), "{}", err.message);

        // The envelope's idempotency_key wins over its id.
        let keyed =
            |id: &str| json!({"task":"once","id":id,"idempotency_key":"nightly-2026-11-26"});
        rt.handle(keyed("a"), inv()).await.unwrap();
        let again = rt.handle(keyed("b"), inv()).await.unwrap();
        assert_eq!(again["replayed"], true);
    }

    #[tokio::test]
    async fn a_failed_delivery_frees_its_key_and_an_in_progress_one_is_deferred() {
        let q = Arc::new(RecordingQueue::default());
        let leases = Arc::new(MemoryLeaseStore::new());
        let rt = runtime_with(q.clone(), 1, 0, leases.clone());
        let r = rt
            .handle_batch(
                event(vec![record(
                    "x",
                    r#"{"task":"once","id":"retry-me","kwargs":{"fail":true}}"#,
                    1,
                )]),
                &inv(),
            )
            .await;
        assert_eq!(failed_ids(&r), vec!["x"]);
        assert_eq!(
            leases.get("idem:once:retry-me").await.unwrap(),
            None,
            "a failure keeps no record"
        );

        // A live in-progress record (another delivery running now): hand back until it expires.
        let now = Utc::now();
        let mut running = Lease::new(
            "idem:once:busy",
            LeaseKind::Idempotency,
            "other",
            "once",
            now,
            now + chrono::Duration::seconds(20),
        );
        running.payload_hash = Some(payload_hash(&serde_json::Map::new()));
        leases.acquire(&running, now).await.unwrap();
        let r = rt
            .handle_batch(
                event(vec![record("y", r#"{"task":"once","id":"busy"}"#, 1)]),
                &inv(),
            )
            .await;
        assert_eq!(failed_ids(&r), vec!["y"]);
        let delay = q.delays().last().unwrap().1;
        assert!(
            delay > Duration::from_secs(15) && delay <= Duration::from_secs(20),
            "{delay:?}"
        );

        // Once it has expired (its holder died), the next delivery takes it over and runs.
        let expired = now - chrono::Duration::seconds(1);
        let mut dead = Lease::new(
            "idem:once:dead",
            LeaseKind::Idempotency,
            "crashed",
            "once",
            expired,
            expired,
        );
        dead.payload_hash = running.payload_hash.clone();
        leases
            .acquire(&dead, expired - chrono::Duration::seconds(1))
            .await
            .unwrap();
        let out = rt
            .handle(json!({"task":"once","id":"dead"}), inv())
            .await
            .unwrap();
        assert_eq!(out["status"], "succeeded");
        assert!(out.get("replayed").is_none());
    }

    #[test]
    fn lease_keys_and_payload_hashes() {
        let kwargs = json!({"set": "MH1", "limit": 5, "flag": null})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(run_lease_key("refresh", &[], &kwargs), "run:refresh");
        assert_eq!(
            run_lease_key("refresh", &["set", "limit", "flag", "other"], &kwargs),
            "run:refresh:set=MH1:limit=5:flag=-:other=-"
        );
        let reordered = json!({"flag": null, "limit": 5, "set": "MH1"})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(
            payload_hash(&kwargs),
            payload_hash(&reordered),
            "key order does not matter"
        );
        assert_ne!(payload_hash(&kwargs), payload_hash(&serde_json::Map::new()));
        assert_eq!(payload_hash(&kwargs).len(), 64);
    }
}
