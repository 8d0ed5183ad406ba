//! The three task queues, their dead-letter queues, and the few SQS operations the runtime needs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{from_sdk_error, TaskError};

/// A task queue. Each has its own Lambda function and its own dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

    /// The longest one run of a task on this queue can last: its function's timeout (the template's
    /// `Timeout`, held to this by the template checks). A run lease older than this has outlived its holder.
    pub fn time_limit(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            Queue::Ingestion | Queue::Analytics => 900,
            Queue::Default => 120,
        })
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

/// Message attribute names the runtime sets. Everything under `dd.` is the runtime's; every other attribute is
/// the producer's own and travels with the message unchanged.
pub mod attr {
    /// A dead letter's failure context, as one compact JSON string (see [`super::DeadLetter`]).
    pub const FAILURE: &str = "dd.failure";
    /// The prefix of the runtime's attributes.
    pub const PREFIX: &str = "dd.";
    // The one-attribute-per-field names of earlier releases, still read from messages dead-lettered then.
    pub(crate) const LEGACY_TASK: &str = "dd.task";
    pub(crate) const LEGACY_ERROR_KIND: &str = "dd.error_kind";
    pub(crate) const LEGACY_ERROR_CLASS: &str = "dd.error_class";
    pub(crate) const LEGACY_ERROR_MESSAGE: &str = "dd.error_message";
    pub(crate) const LEGACY_ATTEMPTS: &str = "dd.attempts";
    pub(crate) const LEGACY_FAILED_AT: &str = "dd.failed_at";
    pub(crate) const LEGACY_SOURCE_QUEUE: &str = "dd.source_queue";
    pub(crate) const LEGACY_SOURCE_MESSAGE_ID: &str = "dd.source_message_id";
}

/// Longest error message kept on a dead-lettered message.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// SQS accepts at most this many message attributes on a message.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// One message attribute as its producer set it: a data type (`String`, `Number`, `Binary`, optionally with a
/// custom suffix such as `String.trace`) and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAttribute {
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub binary_value: Option<Vec<u8>>,
}

/// A message's attributes by name.
pub type MessageAttributes = BTreeMap<String, MessageAttribute>;

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => {
                s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

impl MessageAttribute {
    pub fn string(data_type: &str, value: impl Into<String>) -> Self {
        MessageAttribute {
            data_type: data_type.to_owned(),
            string_value: Some(value.into()),
            binary_value: None,
        }
    }

    /// As the SDK sends it. `None` for an attribute SQS would refuse (no value).
    pub fn to_sdk(&self) -> Option<MessageAttributeValue> {
        MessageAttributeValue::builder()
            .data_type(&self.data_type)
            .set_string_value(self.string_value.clone())
            .set_binary_value(
                self.binary_value
                    .clone()
                    .map(aws_sdk_sqs::primitives::Blob::new),
            )
            .build()
            .ok()
            .filter(|_| self.string_value.is_some() || self.binary_value.is_some())
    }

    /// As the SDK received it.
    pub fn from_sdk(v: &MessageAttributeValue) -> Self {
        MessageAttribute {
            data_type: v.data_type().to_owned(),
            string_value: v.string_value().map(str::to_owned),
            binary_value: v.binary_value().map(|b| b.as_ref().to_vec()),
        }
    }

    /// As the Lambda SQS event carries it.
    pub fn from_event(v: &aws_lambda_events::event::sqs::SqsMessageAttribute) -> Self {
        MessageAttribute {
            data_type: v.data_type.clone().unwrap_or_else(|| "String".to_owned()),
            string_value: v.string_value.clone(),
            binary_value: v.binary_value.as_ref().map(|b| b.0.clone()),
        }
    }
}

/// The producer's own attributes of a received message: every attribute outside `dd.`, and those a dead
/// letter carried inside its failure context for lack of room.
pub fn producer_attributes(all: &MessageAttributes) -> MessageAttributes {
    let mut own: MessageAttributes = all
        .iter()
        .filter(|(name, _)| !name.starts_with(attr::PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(dead) =
        DeadLetter::from_attributes(|name| all.get(name).and_then(|a| a.string_value.clone()))
    {
        own.extend(dead.carried);
    }
    own
}

/// Why a message was dead-lettered, as stored in its `dd.failure` attribute.
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
    /// The producer's attributes, carried here when the message had no room left for `dd.failure` (SQS allows
    /// ten); a redrive puts them back on the message.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub carried: MessageAttributes,
    /// The X-Ray trace the message carried (its `AWSTraceHeader` system attribute): the dead letter keeps it,
    /// and a redrive puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_header: Option<String>,
}

/// The `AWSTraceHeader` system attribute for a message sent with X-Ray trace `header` (None for an empty one).
pub fn trace_header_attribute(
    header: &str,
) -> Option<aws_sdk_sqs::types::MessageSystemAttributeValue> {
    if header.is_empty() {
        return None;
    }
    aws_sdk_sqs::types::MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(header)
        .build()
        .ok()
}

/// The compact form of [`DeadLetter`] in the `dd.failure` attribute.
#[derive(Serialize, Deserialize)]
struct FailureContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    kind: String,
    class: String,
    message: String,
    attempts: u32,
    failed_at: String,
    queue: String,
    message_id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: MessageAttributes,
}

impl DeadLetter {
    /// The `dd.failure` attribute's value: compact JSON, the error message cut to [`MAX_ERROR_MESSAGE`] bytes.
    pub fn to_failure_json(&self) -> String {
        let context = FailureContext {
            task: self.task.clone(),
            kind: self.error_kind.clone(),
            class: self.error_class.clone(),
            message: truncate(&self.error_message, MAX_ERROR_MESSAGE),
            attempts: self.attempts,
            failed_at: self.failed_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            queue: self.source_queue.clone(),
            message_id: self.source_message_id.clone(),
            attributes: self.carried.clone(),
        };
        serde_json::to_string(&context).unwrap_or_default()
    }

    /// The attributes a dead-lettered message carries: the producer's own (`own`, without any `dd.` left from
    /// an earlier failure) and `dd.failure`. When the producer used every attribute SQS allows, theirs ride
    /// inside `dd.failure` instead, so nothing is lost.
    pub fn message_attributes(&self, own: &MessageAttributes) -> MessageAttributes {
        let own = producer_attributes(own);
        let mut record = self.clone();
        let mut out = MessageAttributes::new();
        if own.len() < MAX_MESSAGE_ATTRIBUTES {
            out.extend(own);
        } else {
            record.carried = own;
        }
        out.insert(
            attr::FAILURE.to_owned(),
            MessageAttribute::string("String", record.to_failure_json()),
        );
        out
    }

    /// [`DeadLetter::message_attributes`] as the SDK sends them.
    pub fn to_attributes(&self, own: &MessageAttributes) -> HashMap<String, MessageAttributeValue> {
        self.message_attributes(own)
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.to_sdk()?)))
            .collect()
    }

    /// Reads the record back from a dead-lettered message's attributes (string values by name).
    /// Returns `None` for messages the runtime did not forward (those the redrive policy moved).
    pub fn from_attributes(get: impl Fn(&str) -> Option<String>) -> Option<DeadLetter> {
        if let Some(json) = get(attr::FAILURE) {
            let c: FailureContext = serde_json::from_str(&json).ok()?;
            return Some(DeadLetter {
                task: c.task,
                error_kind: c.kind,
                error_class: c.class,
                error_message: c.message,
                attempts: c.attempts,
                failed_at: parse_time(&c.failed_at),
                source_queue: c.queue,
                source_message_id: c.message_id,
                carried: c.attributes,
                trace_header: None,
            });
        }
        let error_class = get(attr::LEGACY_ERROR_CLASS)?;
        Some(DeadLetter {
            task: get(attr::LEGACY_TASK),
            error_kind: get(attr::LEGACY_ERROR_KIND).unwrap_or_default(),
            error_class,
            error_message: get(attr::LEGACY_ERROR_MESSAGE).unwrap_or_default(),
            attempts: get(attr::LEGACY_ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            failed_at: get(attr::LEGACY_FAILED_AT)
                .map(|t| parse_time(&t))
                .unwrap_or(DateTime::UNIX_EPOCH),
            source_queue: get(attr::LEGACY_SOURCE_QUEUE).unwrap_or_default(),
            source_message_id: get(attr::LEGACY_SOURCE_MESSAGE_ID).unwrap_or_default(),
            carried: MessageAttributes::new(),
            trace_header: None,
        })
    }
}

fn parse_time(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::UNIX_EPOCH)
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

    /// Sends the original body to a dead-letter queue with the producer's attributes (`own`) and the
    /// failure's context.
    fn dead_letter<'a>(
        &'a self,
        dlq_url: &'a str,
        body: &'a str,
        own: &'a MessageAttributes,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>>;
}

/// [`QueueOps`] on Amazon SQS (or LocalStack).
#[derive(Clone)]
pub struct SqsQueueOps {
    client: crate::lazy_client::LazyClient<aws_sdk_sqs::Client>,
}

impl SqsQueueOps {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self::with_lazy_client(crate::lazy_client::ready(client))
    }

    /// Queue operations whose client is built on first use.
    pub fn with_lazy_client(client: crate::lazy_client::LazyClient<aws_sdk_sqs::Client>) -> Self {
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
        own: &'a MessageAttributes,
        record: &'a DeadLetter,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(async move {
            let trace = record
                .trace_header
                .as_deref()
                .and_then(trace_header_attribute);
            self.client
                .send_message()
                .queue_url(dlq_url)
                .message_body(body)
                .set_message_attributes(Some(record.to_attributes(own)))
                .set_message_system_attributes(trace.map(|t| {
                    HashMap::from([(
                        aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
                        t,
                    )])
                }))
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

    fn record() -> DeadLetter {
        DeadLetter {
            task: Some("ping".into()),
            error_kind: "permanent".into(),
            error_class: "invalid_kwargs".into(),
            error_message: "work_ms: greater than 60000".into(),
            attempts: 1,
            failed_at: "2026-11-26T10:00:00.123Z".parse().unwrap(),
            source_queue: "dd-default".into(),
            source_message_id: "m-1".into(),
            carried: MessageAttributes::new(),
            trace_header: None,
        }
    }

    fn read(attrs: &MessageAttributes) -> Option<DeadLetter> {
        DeadLetter::from_attributes(|name| attrs.get(name).and_then(|a| a.string_value.clone()))
    }

    fn producers(n: usize) -> MessageAttributes {
        (0..n)
            .map(|i| {
                (
                    format!("attr{i}"),
                    MessageAttribute::string("String", format!("v{i}")),
                )
            })
            .collect()
    }

    #[test]
    fn dead_letter_context_is_one_attribute_next_to_the_producers_own() {
        let mut own = producers(2);
        own.insert(
            "blob".into(),
            MessageAttribute {
                data_type: "Binary.gzip".into(),
                string_value: None,
                binary_value: Some(vec![0xff, 0, 1]),
            },
        );
        let attrs = record().message_attributes(&own);
        assert_eq!(attrs.len(), 4, "{attrs:?}");
        assert_eq!(read(&attrs), Some(record()));
        assert_eq!(producer_attributes(&attrs), own);
        assert_eq!(record().to_attributes(&own).len(), 4);
        let json: serde_json::Value =
            serde_json::from_str(attrs[attr::FAILURE].string_value.as_deref().unwrap()).unwrap();
        assert_eq!(json["class"], "invalid_kwargs");
        assert_eq!(json["failed_at"], "2026-11-26T10:00:00.123Z");
    }

    #[test]
    fn a_message_with_ten_attributes_carries_them_inside_its_context() {
        let own = producers(MAX_MESSAGE_ATTRIBUTES);
        let attrs = record().message_attributes(&own);
        assert_eq!(attrs.len(), 1, "only dd.failure fits");
        assert_eq!(read(&attrs).unwrap().carried, own);
        assert_eq!(
            producer_attributes(&attrs),
            own,
            "a redrive restores all ten"
        );
        // Nine still fit beside the context.
        assert_eq!(record().message_attributes(&producers(9)).len(), 10);
    }

    #[test]
    fn dead_lettering_again_replaces_the_earlier_context() {
        let own = producers(3);
        let first = record().message_attributes(&own);
        let mut later = record();
        later.error_class = "database".into();
        let second = later.message_attributes(&first);
        assert_eq!(second.len(), 4);
        assert_eq!(read(&second).unwrap().error_class, "database");
        assert_eq!(producer_attributes(&second), own);
    }

    #[test]
    fn earlier_one_attribute_per_field_dead_letters_are_still_read() {
        let legacy: HashMap<&str, &str> = HashMap::from([
            ("dd.task", "ping"),
            ("dd.error_kind", "permanent"),
            ("dd.error_class", "invalid_kwargs"),
            ("dd.error_message", "work_ms: greater than 60000"),
            ("dd.attempts", "1"),
            ("dd.failed_at", "2026-11-26T10:00:00.123Z"),
            ("dd.source_queue", "dd-default"),
            ("dd.source_message_id", "m-1"),
        ]);
        let back = DeadLetter::from_attributes(|name| legacy.get(name).map(|v| v.to_string()));
        assert_eq!(back, Some(record()));
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
