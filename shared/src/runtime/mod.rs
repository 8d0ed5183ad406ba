//! The runtime every function runs: SQS batches (each record on its own, bounded concurrency, partial
//! batch response, retries with backoff, dead-lettering with context, deadline awareness) and direct
//! invokes of a bare envelope.
//!
//! In pieces: [`invocation`] (who asked and until when), [`outcome`] (what an attempt produced and the pure
//! decision of what happens to its message), [`leases`] (the run's single-instance lease and idempotency
//! record), and here the order they are used in.

mod invocation;
mod leases;
mod outcome;

pub use invocation::{Invocation, InvokeError};

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
use crate::db::{RunLog, RunRecord};
use crate::envelope::Envelope;
use crate::error::{class, TaskError};
use crate::metrics::{self, RunMetrics};
use crate::queue::{
    producer_attributes, DeadLetter, MessageAttribute, MessageAttributes, Queue, QueueOps,
};
use crate::registry::{Registry, TaskSpec};
use crate::report::{Counts, Disposition, RunReport, Status};
use crate::retry::RetryPolicy;
use invocation::to_response;
use leases::LeaseGuard;
use outcome::{plan, Outcome, Plan};

/// Time kept back at the end of an invocation for reporting, after running tasks are stopped.
const FINAL_RESERVE: Duration = Duration::from_millis(500);

/// The `AWSTraceHeader` system attribute: the X-Ray trace a message belongs to.
pub const TRACE_HEADER: &str = "AWSTraceHeader";

/// Where an attempt's envelope came from.
struct Origin {
    /// The run key when the envelope has no id: the SQS message id, or a fresh id for a direct invoke.
    fallback_key: String,
    /// 1 for the first delivery.
    attempt: u32,
    /// The producer's own message attributes.
    attributes: Arc<MessageAttributes>,
    /// The X-Ray trace to continue in follow-ups.
    trace_header: Option<String>,
}

#[derive(Debug)]
struct Attempted {
    task: Option<String>,
    run_key: String,
    /// The chain the run belongs to: the envelope's `chain_id`, else its own key (it starts a chain).
    chain_id: String,
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

    /// The function's Postgres pool.
    pub fn db(&self) -> &sqlx::PgPool {
        &self.services.db
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
    /// that must come back (retry scheduled, deferred, not started before the deadline, or not dead-lettered
    /// because the DLQ was unreachable); every other record is done and may be deleted.
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
            let receipt = record.receipt_handle.as_deref().unwrap_or_default();
            if Instant::now() >= start_cutoff {
                // Not started: hand it back visible at once, so another invocation picks it up.
                info!("deadline near: handing back a record that was not started");
                self.hand_back(receipt, Duration::ZERO, "the hand-back").await;
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
            // The producer's trace (SQS keeps it as a system attribute), else this invocation's: follow-ups
            // carry it on, so a chain stays one trace.
            let trace = record
                .attributes
                .get(TRACE_HEADER)
                .cloned()
                .or_else(|| invocation.trace_header.clone());
            let origin = Origin {
                fallback_key: message_id.clone(),
                attempt,
                attributes: producers,
                trace_header: trace.clone(),
            };
            let attempted = self.attempt(Envelope::parse(body), origin, invocation).await;
            let duration = clock.elapsed();

            let planned = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                plan(&attempted.outcome, attempt, &attempted.retry, &mut *rng)
            };
            let disposition = match planned {
                Plan::Acknowledge => Disposition::Acknowledged,
                Plan::Defer(delay, reason) => {
                    info!(delay_ms = delay.as_millis() as u64, reason = %reason, "deferred");
                    self.hand_back(receipt, delay, "the deferral delay").await;
                    Disposition::Deferred
                }
                Plan::Retry(delay, err) => {
                    warn!(error_class = err.class(), error = %err, delay_ms = delay.as_millis() as u64, "retry scheduled");
                    self.hand_back(receipt, delay, "the retry delay").await;
                    Disposition::RetryScheduled
                }
                Plan::DeadLetter(err) => {
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
                        // The producer's trace only: the dead letter is what they sent.
                        trace_header: record.attributes.get(TRACE_HEADER).cloned(),
                    };
                    self.dead_letter(err, &dead, body, &attributes).await
                }
            };
            let report = self.report(&attempted, attempted.outcome.status(), attempt, duration);
            let record = RunRecord {
                report: &report,
                message_id: Some(&message_id),
                trigger: "sqs",
                disposition,
                started_at,
                finished_at: Utc::now(),
                trace_header: trace.as_deref(),
            };
            self.finish(&record).await;
            disposition.stays_in_queue().then_some(message_id)
        }
        .instrument(span)
        .await
    }

    /// Makes a message visible again after `delay`. When that fails, it still comes back, after its
    /// visibility timeout: said in the log, not hidden.
    async fn hand_back(&self, receipt: &str, delay: Duration, what: &str) {
        let own = &self.services.settings.urls(self.queue).queue;
        if let Err(e) = self.queue_ops.delay_retry(own, receipt, delay).await {
            warn!(error = %e, "could not set {what}; the message returns after its visibility timeout");
        }
    }

    /// Sends a failed record to the queue's DLQ with its context; an unreachable DLQ hands it back instead.
    async fn dead_letter(
        &self,
        err: &TaskError,
        dead: &DeadLetter,
        body: &str,
        attributes: &MessageAttributes,
    ) -> Disposition {
        let dlq = &self.services.settings.urls(self.queue).dlq;
        match self
            .queue_ops
            .dead_letter(dlq, body, attributes, dead)
            .await
        {
            Ok(()) => {
                warn!(error_class = err.class(), error = %err, "dead-lettered");
                Disposition::DeadLettered
            }
            Err(e) => {
                warn!(error_class = err.class(), error = %err, dlq_error = %e,
                    "could not dead-letter; handing the message back");
                Disposition::HandedBack
            }
        }
    }

    /// Runs a bare envelope synchronously and returns its report; a failure becomes a Lambda error.
    pub async fn handle_direct(
        &self,
        payload: Value,
        invocation: &Invocation,
    ) -> Result<RunReport, InvokeError> {
        let started_at = Utc::now();
        let clock = Instant::now();
        let origin = Origin {
            fallback_key: uuid::Uuid::new_v4().to_string(),
            attempt: 1,
            attributes: Arc::default(),
            trace_header: invocation.trace_header.clone(),
        };
        let attempted = self
            .attempt(Envelope::from_value(payload), origin, invocation)
            .await;
        // A caller waiting for an answer cannot be handed back to a queue: a deferral is a failure here.
        let status = match attempted.outcome {
            Outcome::Deferred(..) => Status::Failed,
            ref outcome => outcome.status(),
        };
        let report = self.report(&attempted, status, 1, clock.elapsed());
        self.finish(&RunRecord {
            report: &report,
            message_id: None,
            trigger: "invoke",
            disposition: Disposition::Returned,
            started_at,
            finished_at: Utc::now(),
            trace_header: invocation.trace_header.as_deref(),
        })
        .await;
        match attempted.outcome {
            Outcome::Failed(err) => Err(err.into()),
            Outcome::Deferred(_, reason) => {
                Err(TaskError::retryable(class::LEASE_HELD, reason).into())
            }
            _ => Ok(report),
        }
    }

    /// One envelope from parse to outcome: admitted (routed, not expired, arguments valid), its leases
    /// taken, run, its leases completed or released.
    async fn attempt(
        &self,
        parsed: Result<Envelope, TaskError>,
        origin: Origin,
        invocation: &Invocation,
    ) -> Attempted {
        let (envelope, spec, run_key) = match self.admit(parsed, origin.fallback_key) {
            Ok(admitted) => admitted,
            Err(rejected) => return *rejected,
        };
        let chain_id = envelope.chain_id.clone().unwrap_or_else(|| run_key.clone());
        let done = |outcome| Attempted {
            task: Some(envelope.task.clone()),
            run_key: run_key.clone(),
            chain_id: chain_id.clone(),
            retry: spec.retry,
            outcome,
        };
        let mut leases = LeaseGuard::new(
            self.services.leases.clone(),
            spec.name,
            self.services.settings.lease_window,
            invocation.deadline_at,
        );
        if let Err(outcome) = self
            .take_leases(&mut leases, &spec, &envelope, &run_key)
            .await
        {
            leases.finish(&outcome).await;
            return done(outcome);
        }
        let ctx = TaskContext::new(
            self.services.clone(),
            self.queue,
            run_key.clone(),
            origin.attempt,
            self.function_name.clone(),
            stop_at(invocation),
        )
        .with_attributes(origin.attributes)
        .in_chain(&chain_id, origin.trace_header.as_deref());
        let outcome = run_task(&spec, envelope.kwargs.clone(), ctx, &leases).await;
        leases.finish(&outcome).await;
        done(outcome)
    }

    /// Parses, routes and checks an envelope before anything is taken or run. A rejection is the attempt's
    /// whole result: a failure, or a skip for an expired envelope.
    fn admit(
        &self,
        parsed: Result<Envelope, TaskError>,
        fallback_key: String,
    ) -> Result<(Envelope, TaskSpec, String), Box<Attempted>> {
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err(err) => {
                return Err(Box::new(Attempted {
                    task: None,
                    chain_id: fallback_key.clone(),
                    run_key: fallback_key,
                    retry: RetryPolicy::NONE,
                    outcome: Outcome::Failed(err),
                }))
            }
        };
        let chain_id = envelope
            .chain_id
            .clone()
            .unwrap_or_else(|| envelope.id.clone().unwrap_or(fallback_key.clone()));
        let rejected = |task: Option<String>, run_key: String, retry, outcome| {
            Box::new(Attempted {
                task,
                run_key,
                chain_id: chain_id.clone(),
                retry,
                outcome,
            })
        };
        tracing::Span::current().record("task", envelope.task.as_str());
        let run_key = envelope.id.clone().unwrap_or(fallback_key);
        let task = Some(envelope.task.clone());
        let failed = |err| Outcome::Failed(err);
        let spec = match self.registry.lookup(&envelope.task) {
            Ok(spec) => *spec,
            Err(err) => return Err(rejected(task, run_key, RetryPolicy::NONE, failed(err))),
        };
        if spec.queue != self.queue {
            let err = TaskError::permanent(
                class::WRONG_QUEUE,
                format!(
                    "task `{}` runs on the {} queue, not on {}",
                    spec.name, spec.queue, self.queue
                ),
            );
            return Err(rejected(task, run_key, RetryPolicy::NONE, failed(err)));
        }
        if envelope.is_expired(Utc::now()) {
            let at = envelope
                .expires_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            let skipped = Outcome::Skipped(format!("expired at {at}"));
            return Err(rejected(task, run_key, spec.retry, skipped));
        }
        if let Err(err) = spec.check_kwargs(&envelope.kwargs) {
            return Err(rejected(task, run_key, RetryPolicy::NONE, failed(err)));
        }
        Ok((envelope, spec, run_key))
    }

    /// The single-instance lease first, then the delivery's idempotency record, as the task declares them.
    async fn take_leases(
        &self,
        leases: &mut LeaseGuard,
        spec: &TaskSpec,
        envelope: &Envelope,
        run_key: &str,
    ) -> Result<(), Outcome> {
        if let Some(policy) = spec.single_instance {
            leases.single_instance(policy, &envelope.kwargs).await?;
        }
        if let Some(policy) = spec.idempotency {
            let id = envelope.idempotency_key.as_deref().unwrap_or(run_key);
            leases.idempotency(policy, id, &envelope.kwargs).await?;
        }
        Ok(())
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
            chain_id: attempted.chain_id.clone(),
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
    async fn finish(&self, record: &RunRecord<'_>) {
        let (report, disposition) = (record.report, record.disposition);
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
        let recorded = self.runs.record(record).await;
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
                retries: u64::from(disposition == Disposition::RetryScheduled),
                dead_lettered: u64::from(disposition == Disposition::DeadLettered),
                skipped: u64::from(report.status == Status::Skipped),
                deferred: u64::from(disposition == Disposition::Deferred),
                error_class: report.error_class.clone(),
            },
        );
    }
}

/// When a running task is stopped: the invocation's deadline less what reporting needs.
fn stop_at(invocation: &Invocation) -> Instant {
    invocation
        .deadline
        .checked_sub(FINAL_RESERVE)
        .unwrap_or(invocation.deadline)
}

/// Runs the task while its leases are renewed, catching a panic and stopping it at the deadline.
async fn run_task(
    spec: &TaskSpec,
    kwargs: serde_json::Map<String, Value>,
    ctx: TaskContext,
    leases: &LeaseGuard,
) -> Outcome {
    let stop = ctx.deadline;
    let running = AssertUnwindSafe(spec.run(kwargs, ctx)).catch_unwind();
    let result = tokio::select! {
        result = tokio::time::timeout_at(stop, running) => result,
        never = leases.heartbeat() => match never {},
    };
    match result {
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
mod tests;
