//! The three task queues, their dead-letter queues, and the few SQS operations the runtime needs.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{from_sdk_error, TaskError};

/// A task queue. Each has its own Lambda function and its own dead-letter queue.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    /// Pulling card and price data from upstream (Scryfall, MTGJSON).
    Ingestion,
    /// Price metrics, signals and recommendations.
    Analytics,
    /// Health checks, housekeeping and operator tasks.
    Default,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Ingestion, Queue::Analytics, Queue::Default];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Ingestion => "ingestion",
            Queue::Analytics => "analytics",
            Queue::Default => "default",
        }
    }

    /// Suffix of the environment variables naming this queue's URLs (`DD_QUEUE_URL_<SUFFIX>`).
    pub fn env_suffix(self) -> &'static str {
        match self {
            Queue::Ingestion => "INGESTION",
            Queue::Analytics => "ANALYTICS",
            Queue::Default => "DEFAULT",
        }
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Queue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Queue::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                format!("unknown queue `{s}` (expected ingestion, analytics or default)")
            })
    }
}

/// Where a queue and its dead-letter queue live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueUrls {
    pub queue: String,
    pub dlq: String,
}

/// The URLs of every queue, keyed by queue.
pub type QueueMap = HashMap<Queue, QueueUrls>;

/// Message attribute names carried by dead-lettered messages.
pub mod attr {
    pub const TASK: &str = "dd.task";
    pub const ERROR_KIND: &str = "dd.error_kind";
    pub const ERROR_CLASS: &str = "dd.error_class";
    pub const ERROR_MESSAGE: &str = "dd.error_message";
    pub const ATTEMPTS: &str = "dd.attempts";
    pub const FAILED_AT: &str = "dd.failed_at";
    pub const SOURCE_QUEUE: &str = "dd.source_queue";
    pub const SOURCE_MESSAGE_ID: &str = "dd.source_message_id";
}

/// Longest error message kept on a dead-lettered message.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Why a message was dead-lettered, as stored in its message attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The task name, when the body got far enough to name one.
    pub task: Option<String>,
    pub error_kind: String,
    pub error_class: String,
    pub error_message: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
    pub source_queue: String,
    pub source_message_id: String,
}

impl DeadLetter {
    /// The SQS message attributes for this record. Strings are trimmed to SQS's limits.
    pub fn to_attributes(&self) -> HashMap<String, MessageAttributeValue> {
        let mut attrs = HashMap::new();
        let mut put = |name: &str, data_type: &str, value: String| {
            if value.is_empty() {
                return;
            }
            if let Ok(v) = MessageAttributeValue::builder()
                .data_type(data_type)
                .string_value(value)
                .build()
            {
                attrs.insert(name.to_owned(), v);
            }
        };
        if let Some(task) = &self.task {
            put(attr::TASK, "String", task.clone());
        }
        put(attr::ERROR_KIND, "String", self.error_kind.clone());
        put(attr::ERROR_CLASS, "String", self.error_class.clone());
        put(
            attr::ERROR_MESSAGE,
            "String",
            truncate(&self.error_message, MAX_ERROR_MESSAGE),
        );
        put(attr::ATTEMPTS, "Number", self.attempts.to_string());
        put(
            attr::FAILED_AT,
            "String",
            self.failed_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        put(attr::SOURCE_QUEUE, "String", self.source_queue.clone());
        put(
            attr::SOURCE_MESSAGE_ID,
            "String",
            self.source_message_id.clone(),
        );
        attrs
    }

    /// Reads the record back from a dead-lettered message's attributes (string values by name).
    /// Returns `None` for messages the runtime did not forward (those the redrive policy moved).
    pub fn from_attributes(get: impl Fn(&str) -> Option<String>) -> Option<DeadLetter> {
        let error_class = get(attr::ERROR_CLASS)?;
        Some(DeadLetter {
            task: get(attr::TASK),
            error_kind: get(attr::ERROR_KIND).unwrap_or_default(),
            error_class,
            error_message: get(attr::ERROR_MESSAGE).unwrap_or_default(),
            attempts: get(attr::ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            failed_at: get(attr::FAILED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(DateTime::UNIX_EPOCH),
            source_queue: get(attr::SOURCE_QUEUE).unwrap_or_default(),
            source_message_id: get(attr::SOURCE_MESSAGE_ID).unwrap_or_default(),
        })
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The SQS operations the runtime performs on a batch. A trait so the batch logic can be unit-tested with an
/// in-memory recorder; production and integration tests use [`SqsQueueOps`].
pub trait QueueOps: Send + Sync {
    /// Hides a received message for `delay` more (the retry backoff), counted from now.
    fn delay_retry<'a>(
        &'a self,
        queue_url: &'a str,
        receipt_handle: &'a str,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), TaskError>>;

    /// Sends the original body to a dead-letter queue with the failure's attributes.
    fn dead_letter<'a>(
        &'a self,
        dlq_url: &'a str,
        body: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>>;
}

/// [`QueueOps`] on Amazon SQS (or LocalStack).
#[derive(Clone)]
pub struct SqsQueueOps {
    client: aws_sdk_sqs::Client,
}

impl SqsQueueOps {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        SqsQueueOps { client }
    }
}

impl QueueOps for SqsQueueOps {
    fn delay_retry<'a>(
        &'a self,
        queue_url: &'a str,
        receipt_handle: &'a str,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            // Visibility is whole seconds: round up so a delay is never shorter than planned.
            let secs = delay
                .as_millis()
                .div_ceil(1000)
                .min(u128::from(crate::retry::MAX_VISIBILITY.as_secs()))
                as i32;
            self.client
                .change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(receipt_handle)
                .visibility_timeout(secs)
                .send()
                .await
                .map_err(|e| from_sdk_error("ChangeMessageVisibility", e))?;
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        dlq_url: &'a str,
        body: &'a str,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            self.client
                .send_message()
                .queue_url(dlq_url)
                .message_body(body)
                .set_message_attributes(Some(record.to_attributes()))
                .send()
                .await
                .map_err(|e| from_sdk_error("SendMessage to DLQ", e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_round_trip() {
        for q in Queue::ALL {
            assert_eq!(q.as_str().parse::<Queue>().unwrap(), q);
            assert_eq!(
                serde_json::to_string(&q).unwrap(),
                format!("\"{}\"", q.as_str())
            );
        }
        assert!("fast".parse::<Queue>().is_err());
    }

    #[test]
    fn dead_letter_attributes_round_trip() {
        let record = DeadLetter {
            task: Some("ping".into()),
            error_kind: "permanent".into(),
            error_class: "invalid_kwargs".into(),
            error_message: "work_ms: greater than 60000".into(),
            attempts: 1,
            failed_at: "2026-11-26T10:00:00.123Z".parse().unwrap(),
            source_queue: "dd-default".into(),
            source_message_id: "m-1".into(),
        };
        let attrs = record.to_attributes();
        assert_eq!(attrs[attr::ATTEMPTS].data_type(), "Number");
        let back = DeadLetter::from_attributes(|name| {
            attrs
                .get(name)
                .and_then(|v| v.string_value().map(str::to_owned))
        })
        .unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let cut = truncate(&long, MAX_ERROR_MESSAGE);
        assert!(cut.len() <= MAX_ERROR_MESSAGE);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn messages_without_our_attributes_are_not_dead_letters() {
        assert_eq!(DeadLetter::from_attributes(|_| None), None);
    }
}
