//! `dlq_redrive`: replays dead-lettered messages into their source queue, all of them or those matching a
//! task, an error class and a time window; with a dry run (the default) and a rate limit.
//!
//! An unfiltered redrive of no more than `max_messages` is handed to SQS itself (`StartMessageMoveTask`).
//! Any other scans the whole DLQ: it sends each matching message back to the source queue as its producer
//! sent it (the body and their own attributes) and only then deletes it from the DLQ (a crash in between
//! leaves a duplicate, which idempotent tasks absorb, never a loss). Messages it examines and does not move
//! stay hidden until the scan ends, then are made visible again together. A real run the deadline cuts
//! short continues in a follow-up message.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName,
    MessageSystemAttributeNameForSends, QueueAttributeName,
};
use chrono::{DateTime, Utc};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::envelope::Envelope;
use crate::error::{from_sdk_error, TaskError};
use crate::queue::{producer_attributes, DeadLetter, MessageAttribute, MessageAttributes, Queue};
use crate::registry::{OnDuplicate, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct DlqRedrive;

fn default_true() -> bool {
    true
}

fn default_max() -> u32 {
    1000
}

fn default_rate() -> u32 {
    50
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct DlqRedriveArgs {
    /// The queue whose dead-letter queue is replayed.
    #[garde(skip)]
    pub queue: Queue,
    /// Only messages of this task.
    #[serde(default)]
    #[garde(length(min = 1, max = 128))]
    pub task: Option<String>,
    /// Only messages that failed with this error class.
    #[serde(default)]
    #[garde(length(min = 1, max = 64))]
    pub error_class: Option<String>,
    /// Only messages that failed at or after this instant.
    #[serde(default)]
    #[garde(skip)]
    pub failed_after: Option<DateTime<Utc>>,
    /// Only messages that failed before this instant.
    #[serde(default)]
    #[garde(skip)]
    pub failed_before: Option<DateTime<Utc>>,
    /// Count and list what would move, move nothing (the default: say `false` to move).
    #[serde(default = "default_true")]
    #[garde(skip)]
    pub dry_run: bool,
    /// Messages moved at most.
    #[serde(default = "default_max")]
    #[garde(range(min = 1, max = 100_000))]
    pub max_messages: u32,
    /// Messages moved per second at most.
    #[serde(default = "default_rate")]
    #[garde(range(min = 1, max = 500))]
    pub rate_per_second: u32,
}

impl DlqRedriveArgs {
    fn filtered(&self) -> bool {
        self.task.is_some()
            || self.error_class.is_some()
            || self.failed_after.is_some()
            || self.failed_before.is_some()
    }

    fn matches(&self, dead: Option<&DeadLetter>) -> bool {
        if !self.filtered() {
            return true;
        }
        // Messages the redrive policy moved (no attributes) match only an unfiltered redrive.
        let Some(d) = dead else { return false };
        self.task
            .as_ref()
            .is_none_or(|t| d.task.as_ref() == Some(t))
            && self
                .error_class
                .as_ref()
                .is_none_or(|c| &d.error_class == c)
            && self.failed_after.is_none_or(|t| d.failed_at >= t)
            && self.failed_before.is_none_or(|t| d.failed_at < t)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveSample {
    pub message_id: String,
    pub task: Option<String>,
    pub error_class: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqRedriveReport {
    pub queue: Queue,
    pub dry_run: bool,
    /// Messages the DLQ held when the run started (SQS's approximate count of visible messages).
    pub depth_seen: u64,
    /// Messages examined.
    pub scanned: u64,
    /// Whether the scan reached the end of the DLQ; when not, `continuation` names the follow-up that
    /// carries on a real redrive.
    pub complete: bool,
    /// Messages that match the filters (all of them, also beyond `max_messages`).
    pub matched: u64,
    /// Messages sent back to the source queue (and deleted from the DLQ).
    pub moved: u64,
    /// Set when SQS's own message move task does the (unfiltered) work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_task_handle: Option<String>,
    /// The id of the follow-up message that carries on a real redrive the deadline cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
    /// Up to ten of the matching messages.
    pub samples: Vec<RedriveSample>,
}

impl TaskReport for DlqRedriveReport {
    fn counts(&self) -> Counts {
        Counts::new(self.matched, 0)
    }
}

/// Time kept back at the end of a run to release what the scan holds and to hand the rest on.
const RESERVE: Duration = Duration::from_secs(5);

impl Task for DlqRedrive {
    const NAME: &'static str = "dlq_redrive";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy = RetryPolicy::STANDARD;
    /// Two redrives of one DLQ at once would hide messages from each other.
    const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
        keys: &["queue"],
        on_duplicate: OnDuplicate::Fail,
    });
    type Args = DlqRedriveArgs;
    type Report = DlqRedriveReport;

    async fn run(args: DlqRedriveArgs, ctx: TaskContext) -> Result<DlqRedriveReport, TaskError> {
        let urls = ctx.settings().urls(args.queue).clone();
        let sqs = ctx.sqs();
        let mut report = DlqRedriveReport {
            queue: args.queue,
            dry_run: args.dry_run,
            depth_seen: queue_depth(&ctx, &urls.dlq).await?,
            scanned: 0,
            complete: false,
            matched: 0,
            moved: 0,
            move_task_handle: None,
            continuation: None,
            samples: Vec::new(),
        };

        // SQS moves a whole DLQ itself, but cannot stop at `max_messages`: a smaller cap is scanned below.
        if !args.filtered() && !args.dry_run && report.depth_seen <= u64::from(args.max_messages) {
            let arn = |url: String| async move {
                sqs.get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(|e| from_sdk_error("GetQueueAttributes", e))
                    .map(|o| {
                        o.attributes()
                            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                            .unwrap_or_default()
                    })
            };
            let source = arn(urls.dlq.clone()).await?;
            let destination = arn(urls.queue.clone()).await?;
            let started = sqs
                .start_message_move_task()
                .source_arn(source)
                .destination_arn(destination)
                .max_number_of_messages_per_second(args.rate_per_second as i32)
                .send()
                .await
                .map_err(|e| from_sdk_error("StartMessageMoveTask", e))?;
            report.matched = report.depth_seen;
            report.complete = true;
            report.move_task_handle = started.task_handle().map(str::to_owned);
            tracing::warn!(queue = %args.queue, messages = report.depth_seen, "redriving the whole DLQ with a message move task");
            return Ok(report);
        }

        let pacer = RateLimiter::direct(Quota::per_second(
            NonZeroU32::new(args.rate_per_second).unwrap_or(NonZeroU32::MIN),
        ));
        // Every message examined and not moved stays hidden until the scan ends, so that each receive brings
        // new ones (released at once, SQS would hand the same ten back); all are released at the end. Should
        // this run die, they come back on their own when the hiding ends.
        let hide_secs = (ctx.remaining() + Duration::from_secs(30))
            .as_secs()
            .min(crate::retry::MAX_VISIBILITY.as_secs()) as i32;
        let mut held: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let result = async {
            while ctx.remaining() > RESERVE {
                let out = sqs
                    .receive_message()
                    .queue_url(&urls.dlq)
                    .max_number_of_messages(10)
                    .visibility_timeout(hide_secs)
                    // A short poll can miss messages on a few of SQS's hosts; the last look waits a second.
                    .wait_time_seconds(if report.scanned >= report.depth_seen {
                        1
                    } else {
                        0
                    })
                    .message_attribute_names("All")
                    .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                    .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
                    .send()
                    .await
                    .map_err(|e| from_sdk_error("ReceiveMessage (DLQ)", e))?;
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    if report.scanned >= report.depth_seen {
                        report.complete = true;
                        break;
                    }
                    continue;
                }
                for m in messages {
                    let id = m.message_id().unwrap_or_default().to_owned();
                    let receipt = m.receipt_handle().unwrap_or_default().to_owned();
                    if !seen.insert(id.clone()) {
                        held.push(receipt);
                        continue;
                    }
                    report.scanned += 1;
                    let attributes: MessageAttributes = m
                        .message_attributes()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| (k.clone(), MessageAttribute::from_sdk(v)))
                                .collect()
                        })
                        .unwrap_or_default();
                    let dead = DeadLetter::from_attributes(|name| {
                        attributes.get(name).and_then(|a| a.string_value.clone())
                    });
                    if !args.matches(dead.as_ref()) {
                        held.push(receipt);
                        continue;
                    }
                    report.matched += 1;
                    if report.samples.len() < 10 {
                        report.samples.push(RedriveSample {
                            message_id: id.clone(),
                            task: dead.as_ref().and_then(|d| d.task.clone()),
                            error_class: dead.as_ref().map(|d| d.error_class.clone()),
                            failed_at: dead.as_ref().map(|d| d.failed_at),
                        });
                    }
                    if args.dry_run || report.moved >= u64::from(args.max_messages) {
                        held.push(receipt);
                        continue;
                    }
                    pacer.until_ready().await;
                    // The message as its producer sent it: the body and their own attributes, without ours.
                    let own: HashMap<String, _> = producer_attributes(&attributes)
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.to_sdk()?)))
                        .collect();
                    // And its X-Ray trace, which SQS keeps as a system attribute.
                    let trace = m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                        .and_then(|t| crate::queue::trace_header_attribute(t))
                        .map(|t| {
                            HashMap::from([(MessageSystemAttributeNameForSends::AwsTraceHeader, t)])
                        });
                    // Send first, delete second: a failure in between duplicates, never loses.
                    sqs.send_message()
                        .queue_url(&urls.queue)
                        .message_body(m.body().unwrap_or_default())
                        .set_message_attributes((!own.is_empty()).then_some(own))
                        .set_message_system_attributes(trace)
                        .send()
                        .await
                        .map_err(|e| from_sdk_error("SendMessage (redrive)", e))?;
                    sqs.delete_message()
                        .queue_url(&urls.dlq)
                        .receipt_handle(&receipt)
                        .send()
                        .await
                        .map_err(|e| from_sdk_error("DeleteMessage (DLQ)", e))?;
                    report.moved += 1;
                    tracing::info!(message_id = %id, queue = %args.queue, "redriven");
                }
            }
            Ok::<(), TaskError>(())
        }
        .await;
        release(&ctx, &urls.dlq, &held).await;
        result?;

        if !report.complete && !args.dry_run && report.moved < u64::from(args.max_messages) {
            let mut rest = args.clone();
            rest.max_messages = args.max_messages.saturating_sub(report.moved as u32).max(1);
            let kwargs = serde_json::to_value(&rest)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default();
            let id = format!("{}:continued:{}", ctx.run_key, report.moved);
            // A few seconds later, so this run has released its lease when the follow-up arrives.
            ctx.enqueue(
                Self::QUEUE,
                &Envelope::new(Self::NAME, kwargs).with_id(&id),
                5,
            )
            .await?;
            tracing::warn!(scanned = report.scanned, depth = report.depth_seen, continuation = %id, "deadline near: the redrive continues in a follow-up");
            report.continuation = Some(id);
        }
        Ok(report)
    }
}

/// Makes held messages visible again at once, ten per call. Best effort: what is not released comes back
/// when its hiding ends.
async fn release(ctx: &TaskContext, dlq: &str, receipts: &[String]) {
    for (n, chunk) in receipts.chunks(10).enumerate() {
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .receipt_handle(r)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            })
            .collect();
        let sent = ctx
            .sqs()
            .change_message_visibility_batch()
            .queue_url(dlq)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(out) if !out.failed().is_empty() => {
                tracing::warn!(
                    batch = n,
                    failed = out.failed().len(),
                    "some scanned dead letters stay hidden until their timeout"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(batch = n, error = %from_sdk_error("ChangeMessageVisibilityBatch", e), "scanned dead letters stay hidden until their timeout")
            }
        }
    }
}

async fn queue_depth(ctx: &TaskContext, url: &str) -> Result<u64, TaskError> {
    let out = ctx
        .sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| from_sdk_error("GetQueueAttributes", e))?;
    Ok(out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    fn dead(task: &str, class: &str, at: &str) -> DeadLetter {
        DeadLetter {
            task: Some(task.into()),
            error_kind: "permanent".into(),
            error_class: class.into(),
            error_message: String::new(),
            attempts: 1,
            failed_at: at.parse().unwrap(),
            source_queue: "default".into(),
            source_message_id: "m".into(),
            carried: Default::default(),
            trace_header: None,
        }
    }

    #[test]
    fn filters_combine() {
        let args: DlqRedriveArgs = serde_json::from_value(json!({
            "queue": "default", "task": "ping", "error_class": "database_unavailable",
            "failed_after": "2026-11-26T00:00:00Z", "failed_before": "2026-11-27T00:00:00Z"
        }))
        .unwrap();
        assert!(args.dry_run, "dry run unless asked otherwise");
        assert!(args.matches(Some(&dead(
            "ping",
            "database_unavailable",
            "2026-11-26T10:00:00Z"
        ))));
        assert!(!args.matches(Some(&dead(
            "pong",
            "database_unavailable",
            "2026-11-26T10:00:00Z"
        ))));
        assert!(!args.matches(Some(&dead("ping", "task_failed", "2026-11-26T10:00:00Z"))));
        assert!(!args.matches(Some(&dead(
            "ping",
            "database_unavailable",
            "2026-11-27T00:00:00Z"
        ))));
        assert!(
            !args.matches(None),
            "a filtered redrive skips messages without context"
        );
        let all: DlqRedriveArgs = serde_json::from_value(json!({"queue": "ingestion"})).unwrap();
        assert!(all.matches(None));
    }

    #[test]
    fn arguments() {
        let spec = TaskSpec::of::<DlqRedrive>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({"queue": "default"})).is_ok());
        assert!(check(json!({})).is_err(), "the queue is required");
        assert!(check(json!({"queue": "default", "rate_per_second": 0})).is_err());
        assert!(check(json!({"queue": "default", "max_messages": 0})).is_err());
        assert!(check(json!({"queue": "default", "failed_after": "yesterday"})).is_err());
    }
}
