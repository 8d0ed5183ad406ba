//! HTTP access to the upstreams (Scryfall, MTGJSON): one client per container with timeouts and a
//! descriptive User-Agent, request pacing where the upstream asks for it, retries with jittered exponential
//! backoff (`backon`) and a circuit breaker per upstream (`failsafe`: open after consecutive failures, a
//! half-open probe after its backoff).
//!
//! An upstream is only fetched from where it publishes: its base URL's origin and the hosts it declares (for
//! Scryfall, the host of its bulk files), over https unless the host is this machine's loopback (the local
//! stack). A link found in upstream data, a redirect, or a path that climbs out of the base URL to anywhere
//! else is refused before any request is made, as a permanent `upstream` error that names the URL and the
//! allowed hosts.

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
    /// Time to the response headers. A body is streamed for as long as it takes (a bulk file on a slow link
    /// takes minutes), bounded by `read_timeout` between reads and by the task's own deadline.
    pub request_timeout: Duration,
    /// A streamed body that stalls this long fails the read.
    pub read_timeout: Duration,
    pub retries: usize,
    /// Consecutive failed calls that open the circuit.
    pub breaker_failures: u32,
    /// Hosts it may be fetched from besides its base URL's, as `host` (https, port 443) or `host:port`.
    pub allowed_hosts: Vec<String>,
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
            allowed_hosts: Vec::new(),
        }
    }
}

/// The origins an upstream may be fetched from: its base URL's and the hosts it declares.
#[derive(Debug, Clone)]
struct AllowedOrigins {
    upstream: &'static str,
    base: reqwest::Url,
    /// (host, port), the host in lower case.
    origins: Vec<(String, u16)>,
}

/// Redirects followed at most, each to an allowed origin.
const MAX_REDIRECTS: usize = 5;

impl AllowedOrigins {
    fn new(config: &UpstreamConfig) -> Result<AllowedOrigins, String> {
        let base = reqwest::Url::parse(&format!("{}/", config.base_url))
            .map_err(|e| format!("{}: base URL `{}`: {e}", config.name, config.base_url))?;
        let mut origins = vec![origin_of(&base).ok_or_else(|| {
            format!(
                "{}: base URL `{}` names no host",
                config.name, config.base_url
            )
        })?];
        for host in &config.allowed_hosts {
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() {
                continue;
            }
            let parsed = reqwest::Url::parse(&format!("https://{host}/"))
                .ok()
                .filter(|u| u.path() == "/" && u.username().is_empty())
                .and_then(|u| origin_of(&u));
            origins.push(parsed.ok_or_else(|| {
                format!(
                    "{}: allowed host `{host}` is not a host or host:port",
                    config.name
                )
            })?);
        }
        let allowed = AllowedOrigins {
            upstream: config.name,
            base,
            origins,
        };
        allowed.check(&allowed.base)?;
        Ok(allowed)
    }

    /// Why `url` may not be fetched, if it may not.
    fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            scheme => {
                return Err(format!(
                    "{}: refusing {url}: {scheme} is not https (plain http only to this machine's loopback)",
                    self.upstream
                ))
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{}: refusing a URL with credentials in it",
                self.upstream
            ));
        }
        match origin_of(url) {
            Some(origin) if self.origins.contains(&origin) => Ok(()),
            _ => Err(format!(
                "{}: refusing {url}: not on the hosts this upstream is fetched from ({})",
                self.upstream,
                self.origins
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// `path` under the base URL, or an absolute URL (a link in upstream data) when its origin is allowed.
    fn resolve(&self, path: &str) -> Result<reqwest::Url, String> {
        let url = if has_scheme(path) {
            reqwest::Url::parse(path).map_err(|e| format!("{}: `{path}`: {e}", self.upstream))?
        } else {
            if let Some(problem) = relative_path_problem(path) {
                return Err(format!("{}: `{path}`: {problem}", self.upstream));
            }
            let url = self
                .base
                .join(path.trim_start_matches('/'))
                .map_err(|e| format!("{}: `{path}`: {e}", self.upstream))?;
            // The URL standard also reads `%2e%2e` as `..`: what counts is where the joined URL ends up.
            if !url.path().starts_with(self.base.path()) {
                return Err(format!(
                    "{}: `{path}` leaves the base URL {}",
                    self.upstream, self.base
                ));
            }
            url
        };
        self.check(&url)?;
        Ok(url)
    }
}

fn has_scheme(path: &str) -> bool {
    path.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !scheme.contains('/')
    })
}

/// Why `path` is not a path under a base URL, if it is not: an absolute or scheme-relative URL, a `..`
/// segment (plain or percent-encoded), or a backslash (which URL parsers read as a slash).
pub fn relative_path_problem(path: &str) -> Option<&'static str> {
    if has_scheme(path) || path.starts_with("//") {
        Some("an absolute URL; only a path under the upstream's base URL is accepted")
    } else if path.contains('\\') {
        Some("a backslash in a path")
    } else if path.split(['/', '?', '#']).any(|segment| {
        matches!(
            segment.to_ascii_lowercase().as_str(),
            ".." | ".%2e" | "%2e." | "%2e%2e"
        )
    }) {
        Some("a `..` segment; only a path under the upstream's base URL is accepted")
    } else {
        None
    }
}

fn origin_of(url: &reqwest::Url) -> Option<(String, u16)> {
    Some((
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

/// A configured upstream. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    config: Arc<UpstreamConfig>,
    allowed: Arc<AllowedOrigins>,
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
        let allowed =
            AllowedOrigins::new(&config).map_err(|e| TaskError::permanent(class::UPSTREAM, e))?;
        let pacer = config
            .pacing
            .and_then(Quota::with_period)
            .map(|q| Arc::new(RateLimiter::direct(q)));
        Ok(Upstream {
            config: Arc::new(config),
            allowed: Arc::new(allowed),
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
        let allowed = self.allowed.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if let Err(refused) = allowed.check(attempt.url()) {
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        });
        let built = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(redirects)
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

    /// `path` under the base URL, or an absolute URL found in the upstream's data (Scryfall's bulk files live
    /// on another host) when it is on an allowed host; anything else is a permanent `upstream` error.
    pub fn url(&self, path: &str) -> Result<reqwest::Url, TaskError> {
        self.allowed
            .resolve(path)
            .map_err(|e| TaskError::permanent(class::UPSTREAM, e))
    }

    /// GET with pacing, retries and the circuit breaker. Returns a response with a success status whose
    /// body is not read yet (stream it or read it whole).
    pub async fn get(&self, path: &str) -> Result<reqwest::Response, TaskError> {
        let url = self.url(path)?;
        let attempt = || async {
            if let Some(pacer) = &self.pacer {
                pacer.until_ready().await;
            }
            let call = async {
                // Not reqwest's own timeout, which also runs while the body is read and so cut every bulk
                // file that took longer to arrive than to start.
                let request = self
                    .client()?
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, "application/json;q=0.9,*/*;q=0.8")
                    .send();
                let response = tokio::time::timeout(self.config.request_timeout, request)
                    .await
                    .map_err(|_| {
                        TaskError::retryable(
                            class::UPSTREAM_UNAVAILABLE,
                            format!(
                                "{}: GET {url}: no response within {} ms",
                                self.config.name,
                                self.config.request_timeout.as_millis()
                            ),
                        )
                    })?
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
        let url = self.url(path)?;
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

fn classify_transport(upstream: &str, url: &reqwest::Url, e: reqwest::Error) -> TaskError {
    if e.is_redirect() {
        // A redirect off the allowed hosts (or too many of them) is refused the same way every time.
        let why = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        return TaskError::permanent(
            class::UPSTREAM,
            format!("{upstream}: GET {url}: redirect refused: {why}"),
        );
    }
    // Timeouts, refused or reset connections and interrupted bodies are all worth retrying.
    TaskError::retryable(
        class::UPSTREAM_UNAVAILABLE,
        format!("{upstream}: GET {url}: {e}"),
    )
}

fn check_status(
    upstream: &str,
    url: &reqwest::Url,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str, hosts: &[&str]) -> Result<Upstream, TaskError> {
        let mut config = UpstreamConfig::new("scryfall", base);
        config.allowed_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        Upstream::new(config)
    }

    #[test]
    fn paths_and_links_on_the_declared_hosts_resolve() {
        let scryfall = upstream("https://api.scryfall.com", &["data.scryfall.io"]).unwrap();
        for (path, url) in [
            ("bulk-data", "https://api.scryfall.com/bulk-data"),
            (
                "/cards/search?q=c%3Ared",
                "https://api.scryfall.com/cards/search?q=c%3Ared",
            ),
            (
                "https://data.scryfall.io/default-cards/default-cards-20240221100428.json",
                "https://data.scryfall.io/default-cards/default-cards-20240221100428.json",
            ),
            (
                "https://DATA.Scryfall.io:443/x.json",
                "https://data.scryfall.io/x.json",
            ),
        ] {
            assert_eq!(scryfall.url(path).unwrap().as_str(), url, "{path}");
        }
        let local = upstream("http://127.0.0.1:4010/files", &[]).unwrap();
        assert_eq!(
            local.url("v4.json").unwrap().as_str(),
            "http://127.0.0.1:4010/files/v4.json"
        );
        assert!(upstream("http://localhost:8080", &[]).is_ok());
    }

    #[test]
    fn every_other_place_is_refused_before_a_request() {
        let scryfall = upstream("https://api.scryfall.com", &["data.scryfall.io"]).unwrap();
        for path in [
            "https://evil.example/default-cards.json",
            "https://api.scryfall.com.evil.example/x",
            "https://api.scryfall.com@evil.example/x",
            "https://user:secret@data.scryfall.io/x.json",
            "https://data.scryfall.io:8443/x.json",
            "http://data.scryfall.io/x.json",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "//evil.example/x",
            "../x",
            "cards/../../x",
            "%2e%2E/x",
            "cards\\..\\x",
        ] {
            let err = scryfall.url(path).unwrap_err();
            assert_eq!(err.class(), class::UPSTREAM, "{path}");
            assert!(!err.is_retryable(), "{path}");
        }
        let mtgjson = upstream("https://mtgjson.com/api/v5", &[]).unwrap();
        // A path that climbs out of the base path stays on the host, but not under the base URL.
        assert!(mtgjson.url("../v4/AllPrices.json").is_err());
        assert!(mtgjson.url("%2e%2e/v4/AllPrices.json").is_err());
        let local = upstream("http://127.0.0.1:4010/files", &[]).unwrap();
        let err = local
            .url("http://127.0.0.1:4011/files/v4.json")
            .unwrap_err();
        assert!(err.message().contains("127.0.0.1:4010"), "{err}");
    }

    #[test]
    fn a_plain_http_base_or_a_malformed_host_outside_loopback_is_refused_at_start() {
        assert!(upstream("http://10.0.0.5/api", &[]).is_err());
        assert!(upstream("http://mirror.internal", &[]).is_err());
        assert!(upstream("https://api.scryfall.com", &["data.scryfall.io/path"]).is_err());
        assert!(upstream("https://api.scryfall.com", &["user@data.scryfall.io"]).is_err());
        assert!(upstream("https://api.scryfall.com", &["data.scryfall.io:8443", " "]).is_ok());
    }
}
