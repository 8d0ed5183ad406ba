//! A local SQS event source mapping: receives batches from a queue, hands them to a function as the
//! `SqsEvent` AWS would build, and deletes every record the function did not report in
//! `batchItemFailures`. A failed or crashed invocation deletes nothing: the records come back after their
//! visibility timeout, and the queue's redrive policy applies, as in AWS.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// Settings of the mapping, as on `AWS::Serverless::Function` SQS events.
#[derive(Debug, Clone)]
pub struct EventSource {
    sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub region: String,
    /// Records per invocation (1-10 here; AWS allows more with a batching window).
    pub batch_size: usize,
    /// How long to gather records before invoking (`MaximumBatchingWindowInSeconds`).
    pub batching_window: Duration,
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dispatch {
    pub received: usize,
    pub deleted: usize,
    /// Ids reported in `batchItemFailures`.
    pub failed: Vec<String>,
    /// Set when the invocation itself failed (function error, crash, timeout): nothing was deleted.
    pub invoke_error: Option<String>,
}

/// `batch of 4 -> 3 deleted, 1 handed back`, with the invocation's error when it failed.
impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch of {} -> {} deleted, {} handed back",
            self.received,
            self.deleted,
            self.failed.len()
        )?;
        if let Some(e) = &self.invoke_error {
            write!(f, " (invoke failed: {e})")?;
        }
        Ok(())
    }
}

impl EventSource {
    pub async fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: &str,
        batch_size: usize,
        batching_window: Duration,
    ) -> Result<Self> {
        let arn = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "GetQueueAttributes {queue_url}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| anyhow!("{queue_url} has no QueueArn"))?;
        let region = arn.split(':').nth(3).unwrap_or("us-east-1").to_owned();
        Ok(EventSource {
            sqs,
            queue_url: queue_url.to_owned(),
            queue_arn: arn,
            region,
            batch_size: batch_size.clamp(1, 10),
            batching_window,
        })
    }

    /// Receives up to `batch_size` messages: long-polls up to `wait` for the first, then keeps gathering
    /// until the batch is full or the batching window has passed.
    pub async fn receive(&self, wait: Duration) -> Result<Vec<Message>> {
        let mut batch: Vec<Message> = Vec::new();
        let window_end = Instant::now() + self.batching_window;
        loop {
            let wait_secs = if batch.is_empty() {
                wait.as_secs().min(20) as i32
            } else {
                0
            };
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages((self.batch_size - batch.len()).min(10) as i32)
                .wait_time_seconds(wait_secs)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "ReceiveMessage: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    )
                })?;
            let got = out.messages.unwrap_or_default();
            let empty = got.is_empty();
            batch.extend(got);
            if batch.is_empty() || batch.len() >= self.batch_size || Instant::now() >= window_end {
                return Ok(batch);
            }
            if empty {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The Lambda event for `messages`, field for field as the SQS event source builds it.
    pub fn event(&self, messages: &[Message]) -> Value {
        let records: Vec<Value> = messages.iter().map(|m| self.record(m)).collect();
        json!({ "Records": records })
    }

    fn record(&self, m: &Message) -> Value {
        let mut attributes = Map::new();
        if let Some(attrs) = m.attributes() {
            for (k, v) in attrs {
                attributes.insert(k.as_str().to_owned(), Value::String(v.clone()));
            }
        }
        let mut message_attributes = Map::new();
        if let Some(attrs) = m.message_attributes() {
            for (k, v) in attrs {
                let b64 = |b: &aws_sdk_sqs::primitives::Blob| {
                    base64::engine::general_purpose::STANDARD.encode(b.as_ref())
                };
                message_attributes.insert(
                    k.clone(),
                    json!({
                        "stringValue": v.string_value(),
                        "binaryValue": v.binary_value().map(b64),
                        "stringListValues": v.string_list_values(),
                        "binaryListValues": v.binary_list_values().iter().map(b64).collect::<Vec<_>>(),
                        "dataType": v.data_type(),
                    }),
                );
            }
        }
        json!({
            "messageId": m.message_id(),
            "receiptHandle": m.receipt_handle(),
            "body": m.body(),
            "attributes": attributes,
            "messageAttributes": message_attributes,
            "md5OfBody": m.md5_of_body(),
            "md5OfMessageAttributes": m.md5_of_message_attributes(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.region,
        })
    }

    /// Invokes the function with `messages` and deletes what succeeded. `invoke` returns the function's
    /// response, or an error description when the invocation failed.
    pub async fn dispatch<F, Fut>(&self, messages: Vec<Message>, invoke: F) -> Result<Dispatch>
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = std::result::Result<Value, String>>,
    {
        let (mut result, done) = self.invoke(messages, invoke).await;
        result.deleted = self.delete(&done).await?;
        Ok(result)
    }

    /// The first half of [`EventSource::dispatch`]: invokes the function with `messages` and returns what
    /// happened (`deleted` still 0) with the messages to delete, those the function did not hand back.
    pub async fn invoke<F, Fut>(
        &self,
        messages: Vec<Message>,
        invoke: F,
    ) -> (Dispatch, Vec<Message>)
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = std::result::Result<Value, String>>,
    {
        let mut result = Dispatch {
            received: messages.len(),
            ..Default::default()
        };
        if messages.is_empty() {
            return (result, Vec::new());
        }
        let response = match invoke(self.event(&messages)).await {
            Ok(response) => response,
            Err(e) => {
                result.invoke_error = Some(e);
                return (result, Vec::new());
            }
        };
        // As in AWS: a response that is not a valid batch response fails the whole batch.
        let failed: Vec<String> = match response.get("batchItemFailures").and_then(Value::as_array)
        {
            Some(items) => items
                .iter()
                .filter_map(|i| {
                    i.get("itemIdentifier")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect(),
            None if response.is_null() || response == json!({}) => Vec::new(),
            None => {
                result.invoke_error = Some(format!("invalid batch response: {response}"));
                return (result, Vec::new());
            }
        };
        let done = messages
            .into_iter()
            .filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id()))
            .collect();
        result.failed = failed;
        (result, done)
    }

    /// The second half of [`EventSource::dispatch`]: deletes `messages`, ten per request. Returns how many
    /// SQS deleted.
    pub async fn delete(&self, messages: &[Message]) -> Result<usize> {
        let mut deleted = 0;
        for chunk in messages.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .ok()
                })
                .collect();
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "DeleteMessageBatch: {}",
                        aws_sdk_sqs::error::DisplayErrorContext(&e)
                    )
                })?;
            deleted += out.successful().len();
        }
        Ok(deleted)
    }

    /// One receive-invoke-delete cycle.
    pub async fn poll_once<F, Fut>(&self, wait: Duration, invoke: F) -> Result<Dispatch>
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = std::result::Result<Value, String>>,
    {
        let messages = self.receive(wait).await?;
        self.dispatch(messages, invoke).await
    }

    /// Visible plus in-flight plus delayed messages.
    pub async fn backlog(&self) -> Result<u64> {
        Ok(super::queue_depths(&self.sqs, &self.queue_url)
            .await?
            .total())
    }
}

/// Adapts a [`LocalFunction`](super::function::LocalFunction) invocation to [`EventSource::dispatch`].
pub async fn invoke_function(
    function: &super::function::LocalFunction,
    event: Value,
) -> std::result::Result<Value, String> {
    use super::function::Invoked;
    use super::runtime_api::InvokeOutcome;
    match function.invoke(event).await {
        Ok(Invoked::Outcome(InvokeOutcome::Response(v))) => Ok(v),
        Ok(Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        })) => Err(format!("function error {error_type}: {error_message}")),
        Ok(Invoked::Crashed(how)) => Err(format!("function process {how}")),
        Ok(Invoked::TimedOut) => Err("function timed out".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dispatch_reads_as_one_line() {
        let ok = Dispatch {
            received: 4,
            deleted: 3,
            failed: vec!["m-1".into()],
            invoke_error: None,
        };
        assert_eq!(ok.to_string(), "batch of 4 -> 3 deleted, 1 handed back");
        let crashed = Dispatch {
            received: 2,
            deleted: 0,
            failed: vec![],
            invoke_error: Some("function crashed".into()),
        };
        assert_eq!(
            crashed.to_string(),
            "batch of 2 -> 0 deleted, 0 handed back (invoke failed: function crashed)"
        );
    }
}
