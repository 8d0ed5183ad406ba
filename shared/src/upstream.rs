//! HTTP access to the upstreams (Scryfall, MTGJSON): one client per container with timeouts and a
//! descriptive User-Agent, request pacing where the upstream asks for it, retries with jittered exponential
//! backoff (`backon`) and a circuit breaker per upstream (`failsafe`: open after consecutive failures, a
//! half-open probe after its backoff).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{backoff, failure_policy, Config, StateMachine};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;

use crate::error::{class, TaskError};

/// Sent with every request, as Scryfall's API terms ask.
pub const USER_AGENT: &str = concat!(
    "DualcasterDeals-tasks/",
    env!("CARGO_PKG_VERSION"),
    " (MTG price intelligence; +https://github.com/dualcaster-deals)"
);

type Breaker = StateMachine<failure_policy::ConsecutiveFailures<backoff::Exponential>, ()>;

/// How an upstream is reached and how hard it is pushed.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: &'static str,
    pub base_url: String,
    /// Minimum gap between requests (Scryfall asks for 50-100 ms).
    pub pacing: Option<Duration>,
    pub connect_timeout: Duration,
    /// Time to the response headers; bodies are streamed and read with their own idle timeout.
    pub request_timeout: Duration,
    /// A streamed body that stalls this long fails the read.
    pub read_timeout: Duration,
    pub retries: usize,
    /// Consecutive failed calls that open the circuit.
    pub breaker_failures: u32,
}

impl UpstreamConfig {
    pub fn new(name: &'static str, base_url: impl Into<String>) -> Self {
        UpstreamConfig {
            name,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            pacing: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            retries: 3,
            breaker_failures: 5,
        }
    }
}

/// A configured upstream. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    config: Arc<UpstreamConfig>,
    /// Built on first use: building it reads the system's CA certificates (hundreds of files), which a cold
    /// start of a function that never calls this upstream should not pay for.
    client: Arc<std::sync::OnceLock<reqwest::Client>>,
    breaker: Breaker,
    pacer: Option<Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, TaskError> {
        let breaker = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                config.breaker_failures.max(1),
                backoff::exponential(Duration::from_secs(5), Duration::from_secs(120)),
            ))
            .build();
        let pacer = config
            .pacing
            .and_then(Quota::with_period)
            .map(|q| Arc::new(RateLimiter::direct(q)));
        Ok(Upstream {
            config: Arc::new(config),
            client: Arc::default(),
            breaker,
            pacer,
        })
    }

    /// The HTTP client, built the first time it is needed (a race builds two and keeps one).
    fn client(&self) -> Result<&reqwest::Client, TaskError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let built = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(self.config.connect_timeout)
            .read_timeout(self.config.read_timeout)
            .gzip(true)
            .build()
            .map_err(|e| {
                TaskError::permanent(class::UPSTREAM, format!("building the HTTP client: {e}"))
            })?;
        Ok(self.client.get_or_init(|| built))
    }

    pub fn name(&self) -> &'static str {
        self.config.name
    }

    /// `path` under the base URL, or an absolute URL as is (bulk files live on other hosts).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.config.base_url, path.trim_start_matches('/'))
        }
    }

    /// GET with pacing, retries and the circuit breaker. Returns a response with a success status whose
    /// body is not read yet (stream it or read it whole).
    pub async fn get(&self, path: &str) -> Result<reqwest::Response, TaskError> {
        let url = self.url(path);
        let attempt = || async {
            if let Some(pacer) = &self.pacer {
                pacer.until_ready().await;
            }
            let call = async {
                let response = self
                    .client()?
                    .get(&url)
                    .header(reqwest::header::ACCEPT, "application/json;q=0.9,*/*;q=0.8")
                    .timeout(self.config.request_timeout)
                    .send()
                    .await
                    .map_err(|e| classify_transport(self.config.name, &url, e))?;
                check_status(self.config.name, &url, response)
            };
            // Only failures that say the upstream is unwell count against the breaker; a 404 does not.
            match self
                .breaker
                .call_with(|e: &TaskError| e.is_retryable(), call)
                .await
            {
                Ok(response) => Ok(response),
                Err(failsafe::Error::Inner(e)) => Err(e),
                Err(failsafe::Error::Rejected) => Err(TaskError::retryable(
                    class::UPSTREAM_UNAVAILABLE,
                    format!(
                        "{}: circuit open after repeated failures; not calling {url}",
                        self.config.name
                    ),
                )),
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.config.retries)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|e: &TaskError| e.is_retryable() && !e.message().contains("circuit open"))
            .notify(|e: &TaskError, after: Duration| {
                tracing::warn!(upstream = self.config.name, error = %e, retry_in_ms = after.as_millis() as u64, "upstream call failed; retrying");
            })
            .await
    }

    /// GET and parse a JSON body (small documents such as Scryfall's bulk index).
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, TaskError> {
        let url = self.url(path);
        let response = self.get(path).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| classify_transport(self.config.name, &url, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            TaskError::retryable(
                class::UPSTREAM_UNAVAILABLE,
                format!(
                    "{}: {url} returned a document that is not the expected JSON: {e}",
                    self.config.name
                ),
            )
        })
    }
}

fn classify_transport(upstream: &str, url: &str, e: reqwest::Error) -> TaskError {
    // Timeouts, refused or reset connections and interrupted bodies are all worth retrying.
    TaskError::retryable(
        class::UPSTREAM_UNAVAILABLE,
        format!("{upstream}: GET {url}: {e}"),
    )
}

fn check_status(
    upstream: &str,
    url: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, TaskError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let message = format!("{upstream}: GET {url}: HTTP {status}");
    Err(match status {
        StatusCode::TOO_MANY_REQUESTS => TaskError::retryable(class::THROTTLED, message),
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
            TaskError::retryable(class::UPSTREAM_UNAVAILABLE, message)
        }
        _ => TaskError::permanent(class::UPSTREAM, message),
    })
}
