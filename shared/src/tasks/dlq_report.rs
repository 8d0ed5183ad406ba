//! `dlq_report`: per-queue dead-letter depth, counts by task and error class, and the most recent
//! dead-lettered messages, without consuming any of them.
//!
//! SQS cannot list a queue, so the task receives up to `scan` messages per DLQ, hiding each for a few
//! seconds while it looks, then makes them all visible again at once. Nothing is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::context::TaskContext;
use crate::error::{from_sdk_error, TaskError};
use crate::queue::{truncate, DeadLetter, Queue};
use crate::registry::{OnDuplicate, Schedule, SingleInstance, Task};
use crate::report::{Counts, TaskReport};
use crate::retry::RetryPolicy;

pub struct DlqReport;

/// How long scanned messages stay hidden if making them visible again fails.
const SCAN_HIDE: Duration = Duration::from_secs(5);
/// Characters of each body shown in the report.
const BODY_PREVIEW: usize = 240;
/// Scanning stops when less than this remains before the deadline.
const TIME_RESERVE: Duration = Duration::from_secs(2);

fn all_queues() -> Vec<Queue> {
    Queue::ALL.to_vec()
}

fn default_peek() -> u16 {
    5
}

fn default_scan() -> u16 {
    100
}

#[derive(Debug, Clone, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
pub struct DlqReportArgs {
    /// Queues whose DLQs to report on (default: all).
    #[serde(default = "all_queues")]
    #[garde(length(min = 1, max = 3))]
    pub queues: Vec<Queue>,
    /// Most recent messages listed per queue.
    #[serde(default = "default_peek")]
    #[garde(range(max = 50))]
    pub peek: u16,
    /// Messages examined per queue for the counts and the listing.
    #[serde(default = "default_scan")]
    #[garde(range(min = 1, max = 1000))]
    pub scan: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterSample {
    pub message_id: String,
    pub sent_at: Option<DateTime<Utc>>,
    /// Why it was dead-lettered; absent when the queue's redrive policy moved it (a crash or timeout).
    pub dead_letter: Option<DeadLetter>,
    pub body_preview: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDlq {
    pub queue: Queue,
    pub dlq_url: String,
    /// Messages available in the DLQ.
    pub depth: u64,
    /// Messages currently being received by someone.
    pub in_flight: u64,
    pub scanned: u64,
    pub oldest_sent_at: Option<DateTime<Utc>>,
    pub by_task: BTreeMap<String, u64>,
    pub by_error_class: BTreeMap<String, u64>,
    /// Newest first.
    pub recent: Vec<DeadLetterSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqSummary {
    pub total_depth: u64,
    pub queues: Vec<QueueDlq>,
}

impl TaskReport for DlqSummary {
    fn counts(&self) -> Counts {
        Counts::new(self.queues.len() as u64, 0)
    }
}

impl Task for DlqReport {
    const NAME: &'static str = "dlq_report";
    const QUEUE: Queue = Queue::Default;
    const RETRY: RetryPolicy = RetryPolicy::STANDARD;
    /// Two scans at once would hide messages from each other and both report wrong counts.
    const SINGLE_INSTANCE: Option<SingleInstance> = Some(SingleInstance {
        keys: &[],
        on_duplicate: OnDuplicate::Skip,
    });
    const SCHEDULES: &'static [Schedule] = &[Schedule {
        name: "hourly",
        expression: "cron(5 * * * ? *)",
        kwargs: r#"{"peek": 5}"#,
        enabled: true,
        why: "Hourly history of dead letters by task and error class in task_runs, for trends and triage; the \
              DLQ depth alarms page within five minutes, so this need not be faster.",
    }];
    type Args = DlqReportArgs;
    type Report = DlqSummary;

    async fn run(args: DlqReportArgs, ctx: TaskContext) -> Result<DlqSummary, TaskError> {
        let mut queues = Vec::new();
        let mut seen_queues = HashSet::new();
        for queue in args.queues {
            if seen_queues.insert(queue) {
                queues.push(report_queue(&ctx, queue, args.peek.into(), args.scan.into()).await?);
            }
        }
        Ok(DlqSummary {
            total_depth: queues.iter().map(|q| q.depth).sum(),
            queues,
        })
    }
}

async fn report_queue(
    ctx: &TaskContext,
    queue: Queue,
    peek: usize,
    scan: usize,
) -> Result<QueueDlq, TaskError> {
    let sqs = ctx.sqs();
    let url = ctx.settings().urls(queue).dlq.clone();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| from_sdk_error("GetQueueAttributes", e).context(format!("DLQ of {queue}")))?;
    let attr = |name: QueueAttributeName| -> u64 {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let depth = attr(QueueAttributeName::ApproximateNumberOfMessages);
    let in_flight = attr(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);

    let mut samples = Vec::new();
    let mut receipts = Vec::new();
    let mut seen = HashSet::new();
    while seen.len() < scan && depth > 0 && ctx.remaining() > TIME_RESERVE {
        let batch = (scan - seen.len()).min(10) as i32;
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(batch)
            .visibility_timeout(SCAN_HIDE.as_secs() as i32)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| from_sdk_error("ReceiveMessage", e).context(format!("DLQ of {queue}")))?;
        let mut new = 0;
        for m in out.messages() {
            let id = m.message_id().unwrap_or_default().to_owned();
            if let Some(handle) = m.receipt_handle() {
                receipts.push(handle.to_owned());
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            new += 1;
            let attributes: HashMap<&str, String> = m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .filter_map(|(k, v)| v.string_value().map(|s| (k.as_str(), s.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let sent_at = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<i64>().ok())
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            samples.push(DeadLetterSample {
                message_id: id,
                sent_at,
                dead_letter: DeadLetter::from_attributes(|name| attributes.get(name).cloned()),
                body_preview: truncate(m.body().unwrap_or_default(), BODY_PREVIEW),
            });
        }
        if new == 0 {
            break;
        }
    }
    release(ctx, &url, receipts).await;

    let mut by_task = BTreeMap::new();
    let mut by_error_class = BTreeMap::new();
    for s in &samples {
        let (task, class) = match &s.dead_letter {
            Some(d) => (
                d.task.clone().unwrap_or_else(|| "(none)".into()),
                d.error_class.clone(),
            ),
            None => ("(unknown)".into(), "redrive_policy".into()),
        };
        *by_task.entry(task).or_insert(0) += 1;
        *by_error_class.entry(class).or_insert(0) += 1;
    }
    let oldest_sent_at = samples.iter().filter_map(|s| s.sent_at).min();
    samples.sort_by_key(|s| {
        std::cmp::Reverse(s.dead_letter.as_ref().map(|d| d.failed_at).or(s.sent_at))
    });
    let scanned = samples.len() as u64;
    samples.truncate(peek);
    Ok(QueueDlq {
        queue,
        dlq_url: url,
        depth,
        in_flight,
        scanned,
        oldest_sent_at,
        by_task,
        by_error_class,
        recent: samples,
    })
}

/// Makes scanned messages visible again. If this fails they reappear after [`SCAN_HIDE`] anyway.
async fn release(ctx: &TaskContext, url: &str, receipts: Vec<String>) {
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            })
            .collect();
        let result = ctx
            .sqs()
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not release scanned DLQ messages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TaskSpec;
    use serde_json::json;

    #[test]
    fn arguments_have_defaults_and_bounds() {
        let spec = TaskSpec::of::<DlqReport>();
        let check = |v: serde_json::Value| spec.check_kwargs(v.as_object().unwrap());
        assert!(check(json!({})).is_ok());
        assert!(check(json!({"queues": ["ingestion"], "peek": 0, "scan": 1000})).is_ok());
        assert!(check(json!({"queues": []})).is_err());
        assert!(check(json!({"queues": ["nope"]})).is_err());
        assert!(check(json!({"scan": 0})).is_err());
        assert!(check(json!({"peek": 51})).is_err());
        assert!(check(json!({"limit": 5})).is_err());
    }
}
