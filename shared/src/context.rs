//! What a running task can reach: Postgres, SQS, the settings, and its own deadline.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::config::Settings;
use crate::envelope::Envelope;
use crate::error::{from_sdk_error, TaskError};
use crate::lease::LeaseStore;
use crate::queue::{MessageAttributes, Queue};
use crate::telemetry::Progress;
use crate::upstream::{Upstream, UpstreamConfig};

/// Clients built once per container and shared by every invocation.
pub struct Services {
    pub settings: Settings,
    pub db: PgPool,
    /// Where the pool's credentials come from, when they are in Secrets Manager.
    pub db_secret: Option<crate::secrets::DatabaseSecret>,
    /// Built on first use ([`crate::lazy_client`]).
    pub sqs: crate::lazy_client::LazyClient<aws_sdk_sqs::Client>,
    pub leases: Arc<dyn LeaseStore>,
    pub upstreams: Upstreams,
}

/// The HTTP upstreams, one client (and circuit breaker) each per container.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub scryfall: Upstream,
    pub mtgjson: Upstream,
}

impl Upstreams {
    pub fn from_settings(settings: &Settings) -> Result<Upstreams, crate::error::TaskError> {
        let mut scryfall = UpstreamConfig::new("scryfall", &settings.scryfall_base_url);
        // Scryfall asks for 50-100 ms between requests.
        scryfall.pacing = Some(std::time::Duration::from_millis(100));
        scryfall.allowed_hosts = settings.scryfall_allowed_hosts.clone();
        let mut mtgjson = UpstreamConfig::new("mtgjson", &settings.mtgjson_base_url);
        mtgjson.allowed_hosts = settings.mtgjson_allowed_hosts.clone();
        for config in [&mut scryfall, &mut mtgjson] {
            config.request_timeout = settings.upstream_response_timeout;
            config.read_timeout = settings.upstream_read_timeout;
        }
        Ok(Upstreams {
            scryfall: Upstream::new(scryfall)?,
            mtgjson: Upstream::new(mtgjson)?,
        })
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Sending work to a queue: all that domain code (an ingestion run's follow-ups, the analytics chain) asks of
/// the runtime. [`TaskContext`] is the implementation.
pub trait Enqueue: Sync {
    /// Sends `envelope` to `queue`, delivered after `delay_secs`.
    fn enqueue<'a>(
        &'a self,
        queue: Queue,
        envelope: &'a Envelope,
        delay_secs: i32,
    ) -> BoxFuture<'a, Result<(), TaskError>>;
}

impl Enqueue for TaskContext {
    fn enqueue<'a>(
        &'a self,
        queue: Queue,
        envelope: &'a Envelope,
        delay_secs: i32,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(TaskContext::enqueue(self, queue, envelope, delay_secs))
    }
}

/// Handed to each task run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The run's key: the envelope id, else the SQS message id, else a generated id.
    pub run_key: String,
    /// The queue the run came from (the function's own queue).
    pub queue: Queue,
    /// 1 for the first delivery, 2 for the first retry, ...
    pub attempt: u32,
    /// The Lambda function's name (the binary name when run locally).
    pub function_name: Arc<str>,
    pub(crate) deadline: Instant,
    pub(crate) services: Arc<Services>,
    /// The message's own attributes, as its producer set them (none for a direct invoke).
    pub(crate) attributes: Arc<MessageAttributes>,
    /// The chain this run belongs to; follow-ups are sent in it.
    pub chain_id: Arc<str>,
    /// The X-Ray trace follow-ups continue (their `AWSTraceHeader`).
    pub(crate) trace_header: Option<Arc<str>>,
}

impl TaskContext {
    pub fn new(
        services: Arc<Services>,
        queue: Queue,
        run_key: String,
        attempt: u32,
        function_name: Arc<str>,
        deadline: Instant,
    ) -> Self {
        TaskContext {
            chain_id: run_key.as_str().into(),
            trace_header: None,
            run_key,
            queue,
            attempt,
            function_name,
            deadline,
            services,
            attributes: Arc::default(),
        }
    }

    /// The same context for a message that carried `attributes`.
    pub fn with_attributes(mut self, attributes: Arc<MessageAttributes>) -> Self {
        self.attributes = attributes;
        self
    }

    /// The same context for a run in chain `chain_id` (and X-Ray trace `trace_header`).
    pub fn in_chain(mut self, chain_id: &str, trace_header: Option<&str>) -> Self {
        self.chain_id = chain_id.into();
        self.trace_header = trace_header.map(Into::into);
        self
    }

    /// The message attributes its producer put on it (a correlation id, a trace header), whatever route the
    /// message took: a retry, the DLQ and a redrive keep them. The runtime's own `dd.` attributes are not here.
    pub fn attributes(&self) -> &MessageAttributes {
        &self.attributes
    }

    pub fn db(&self) -> &PgPool {
        &self.services.db
    }

    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.services.sqs
    }

    pub fn settings(&self) -> &Settings {
        &self.services.settings
    }

    /// Sends follow-up work to `queue` (after `delay_secs`): a continuation, or the next step of a chain. It
    /// goes in this run's chain (unless the envelope names another) and X-Ray trace.
    pub async fn enqueue(
        &self,
        queue: Queue,
        envelope: &Envelope,
        delay_secs: i32,
    ) -> Result<(), TaskError> {
        let mut envelope = envelope.clone();
        envelope
            .chain_id
            .get_or_insert_with(|| self.chain_id.to_string());
        let trace = self
            .trace_header
            .as_deref()
            .and_then(crate::queue::trace_header_attribute);
        let mut send = self
            .sqs()
            .send_message()
            .queue_url(&self.settings().urls(queue).queue)
            .message_body(envelope.to_json())
            .delay_seconds(delay_secs);
        if let Some(trace) = trace {
            send = send.message_system_attributes(
                aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
                trace,
            );
        }
        send.send()
            .await
            .map_err(|e| from_sdk_error("SendMessage (follow-up)", e))?;
        Ok(())
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.services.upstreams
    }

    pub fn leases(&self) -> &dyn LeaseStore {
        self.services.leases.as_ref()
    }

    /// Time left before the runtime stops this run. Long tasks check it between chunks and continue in a
    /// follow-up message rather than being cut off.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// True once less than the task reserve (`DD_TASK_RESERVE_MS`, a minute by default) is left before the
    /// deadline: a long task checks it between chunks, saves its cursor and continues in a follow-up message.
    pub fn near_deadline(&self) -> bool {
        self.remaining() < self.settings().task_reserve
    }

    /// A progress logger for `total` items of long work.
    pub fn progress(&self, what: &'static str, total: u64) -> Progress {
        Progress::new(what, total)
    }
}
