//! Settings, read once per container from the environment. A missing or invalid variable stops the cold
//! start with its name; the database URL is a secret and never printed.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;

use crate::queue::{Queue, QueueMap, QueueUrls};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing environment variable {0}")]
    Missing(String),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

/// Where the Postgres credentials come from.
#[derive(Debug, Clone)]
pub enum DatabaseSource {
    /// A connection URL in the environment (`DATABASE_URL`): local runs, tests and the CLI. Wrapped so that
    /// `Debug` shows `[REDACTED]`.
    Url(SecretString),
    /// A Secrets Manager secret (`DD_DATABASE_SECRET_ARN`), fetched on first use and again after an
    /// authentication failure. The secret is a URL or an RDS-style JSON document; `DD_DATABASE_HOST`,
    /// `DD_DATABASE_PORT` and `DD_DATABASE_NAME` fill in or override its endpoint (an RDS Proxy, say).
    Secret {
        arn: String,
        host: Option<String>,
        port: Option<u16>,
        name: Option<String>,
    },
}

/// Everything a function needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Postgres credentials: `DATABASE_URL` if set, else `DD_DATABASE_SECRET_ARN`.
    pub database: DatabaseSource,
    /// Every queue and its DLQ (`DD_QUEUE_URL_<QUEUE>`, `DD_DLQ_URL_<QUEUE>`): a function retries on its own
    /// queue, dead-letters to its own DLQ, and enqueues follow-up work on the others.
    pub queues: QueueMap,
    /// Records of one batch run at the same time (`DD_CONCURRENCY`, default 4).
    pub concurrency: usize,
    /// No record is started when less than this remains before the invocation's deadline
    /// (`DD_DEADLINE_MARGIN_MS`, default 5000).
    pub deadline_margin: Duration,
    /// Postgres connections per container (`DD_DB_MAX_CONNECTIONS`, default 2).
    pub db_max_connections: u32,
    /// How long to wait for a pooled connection (`DD_DB_ACQUIRE_TIMEOUT_MS`, default 5000).
    pub db_acquire_timeout: Duration,
    /// DynamoDB table of leases and idempotency records (`DD_LEASE_TABLE`).
    pub lease_table: String,
    /// A lease lasts this long past its last heartbeat (`DD_LEASE_WINDOW_MS`, default 60000), and never past
    /// the invocation's deadline plus a margin: a crashed holder blocks others for at most this long.
    pub lease_window: Duration,
    /// Scryfall's API (`DD_SCRYFALL_BASE_URL`, default https://api.scryfall.com).
    pub scryfall_base_url: String,
    /// MTGJSON's files (`DD_MTGJSON_BASE_URL`, default https://mtgjson.com/api/v5).
    pub mtgjson_base_url: String,
    /// Hosts Scryfall is fetched from besides its base URL's: the bulk files' host
    /// (`DD_SCRYFALL_ALLOWED_HOSTS`, comma-separated `host` or `host:port`, default `data.scryfall.io`).
    pub scryfall_allowed_hosts: Vec<String>,
    /// Hosts MTGJSON is fetched from besides its base URL's (`DD_MTGJSON_ALLOWED_HOSTS`, default none).
    pub mtgjson_allowed_hosts: Vec<String>,
    /// How long an upstream has to send its response headers (`DD_UPSTREAM_RESPONSE_TIMEOUT_MS`, default
    /// 30000). A body takes as long as it takes, within the task's deadline.
    pub upstream_response_timeout: Duration,
    /// A body that sends nothing for this long fails the read (`DD_UPSTREAM_READ_TIMEOUT_MS`, default 60000).
    pub upstream_read_timeout: Duration,
    /// What one downloaded document may hold once decoded (`DD_DOWNLOAD_MAX_BYTES`, default 16 GiB) and one
    /// item of it (`DD_DOWNLOAD_MAX_ITEM_BYTES`, default 64 MiB).
    pub download_limits: crate::json_stream::Limits,
    /// Every long task (an ingestion, a prune) stops between chunks and continues in a follow-up message when
    /// less than this remains before its deadline (`DD_TASK_RESERVE_MS`, default 60000; the older name
    /// `DD_INGEST_RESERVE_MS` is read when the new one is unset). See [`TaskContext::near_deadline`].
    ///
    /// [`TaskContext::near_deadline`]: crate::context::TaskContext::near_deadline
    pub task_reserve: Duration,
    /// Series that `compute_price_metrics` reads, computes and writes at a time (`DD_METRICS_CHUNK_SERIES`,
    /// default 2000): its memory stays bounded at any catalog size.
    pub metrics_chunk: usize,
    /// Each run writes its CloudWatch EMF line to stdout unless `DD_METRICS_DISABLED` is set (to anything):
    /// local tools and tests, whose stdout is a terminal or a report, turn it off.
    pub emit_metrics: bool,
}

/// A comma-separated list of hosts, or `default` when the variable is unset (set and empty: none).
fn hosts(value: Option<String>, default: &[&str]) -> Vec<String> {
    match value {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect(),
        None => default.iter().map(|h| (*h).to_owned()).collect(),
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply a map instead of the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let required = |name: &str| -> Result<String, ConfigError> {
            match lookup(name) {
                Some(v) if !v.trim().is_empty() => Ok(v),
                _ => Err(ConfigError::Missing(name.to_owned())),
            }
        };
        let mut queues = HashMap::new();
        for q in Queue::ALL {
            let queue = required(&format!("DD_QUEUE_URL_{}", q.env_suffix()))?;
            let dlq = required(&format!("DD_DLQ_URL_{}", q.env_suffix()))?;
            queues.insert(q, QueueUrls { queue, dlq });
        }
        let optional = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let database = match (optional("DATABASE_URL"), optional("DD_DATABASE_SECRET_ARN")) {
            (Some(url), _) => DatabaseSource::Url(SecretString::from(url)),
            (None, Some(arn)) => DatabaseSource::Secret {
                arn,
                host: optional("DD_DATABASE_HOST"),
                port: match optional("DD_DATABASE_PORT") {
                    Some(_) => Some(parse_or(&lookup, "DD_DATABASE_PORT", 5432, 1..=65535)?),
                    None => None,
                },
                name: optional("DD_DATABASE_NAME"),
            },
            (None, None) => {
                return Err(ConfigError::Missing(
                    "DATABASE_URL (or DD_DATABASE_SECRET_ARN)".to_owned(),
                ))
            }
        };
        Ok(Settings {
            database,
            queues,
            concurrency: parse_or(&lookup, "DD_CONCURRENCY", 4, 1..=64)?,
            deadline_margin: Duration::from_millis(parse_or(
                &lookup,
                "DD_DEADLINE_MARGIN_MS",
                5000,
                0..=600_000,
            )?),
            db_max_connections: parse_or(&lookup, "DD_DB_MAX_CONNECTIONS", 2, 1..=50)?,
            db_acquire_timeout: Duration::from_millis(parse_or(
                &lookup,
                "DD_DB_ACQUIRE_TIMEOUT_MS",
                5000,
                100..=60_000,
            )?),
            lease_table: required("DD_LEASE_TABLE")?,
            lease_window: Duration::from_millis(parse_or(
                &lookup,
                "DD_LEASE_WINDOW_MS",
                60_000,
                1_000..=900_000,
            )?),
            scryfall_base_url: lookup("DD_SCRYFALL_BASE_URL")
                .unwrap_or_else(|| "https://api.scryfall.com".to_owned()),
            mtgjson_base_url: lookup("DD_MTGJSON_BASE_URL")
                .unwrap_or_else(|| "https://mtgjson.com/api/v5".to_owned()),
            scryfall_allowed_hosts: hosts(
                lookup("DD_SCRYFALL_ALLOWED_HOSTS"),
                &["data.scryfall.io"],
            ),
            mtgjson_allowed_hosts: hosts(lookup("DD_MTGJSON_ALLOWED_HOSTS"), &[]),
            upstream_response_timeout: Duration::from_millis(parse_or(
                &lookup,
                "DD_UPSTREAM_RESPONSE_TIMEOUT_MS",
                30_000,
                100..=300_000,
            )?),
            upstream_read_timeout: Duration::from_millis(parse_or(
                &lookup,
                "DD_UPSTREAM_READ_TIMEOUT_MS",
                60_000,
                100..=600_000,
            )?),
            download_limits: {
                let default = crate::json_stream::Limits::default();
                crate::json_stream::Limits {
                    max_bytes: parse_or(
                        &lookup,
                        "DD_DOWNLOAD_MAX_BYTES",
                        default.max_bytes,
                        1 << 20..=1 << 40,
                    )?,
                    max_item_bytes: parse_or(
                        &lookup,
                        "DD_DOWNLOAD_MAX_ITEM_BYTES",
                        default.max_item_bytes,
                        1 << 10..=1 << 32,
                    )?,
                }
            },
            task_reserve: Duration::from_millis(parse_or(
                &lookup,
                if lookup("DD_TASK_RESERVE_MS").is_some() {
                    "DD_TASK_RESERVE_MS"
                } else {
                    "DD_INGEST_RESERVE_MS"
                },
                60_000,
                0..=900_000,
            )?),
            metrics_chunk: parse_or(&lookup, "DD_METRICS_CHUNK_SERIES", 2_000, 1..=100_000)?,
            emit_metrics: lookup("DD_METRICS_DISABLED").is_none(),
        })
    }

    /// The connection URL, when the credentials are in the environment (local tools need one).
    pub fn database_url(&self) -> Result<&SecretString, ConfigError> {
        match &self.database {
            DatabaseSource::Url(url) => Ok(url),
            DatabaseSource::Secret { .. } => Err(ConfigError::Missing("DATABASE_URL".to_owned())),
        }
    }

    /// The URLs of `queue`. Every queue is present: [`Settings::from_lookup`] requires all of them.
    pub fn urls(&self, queue: Queue) -> &QueueUrls {
        &self.queues[&queue]
    }
}

fn parse_or<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = lookup(name) else {
        return Ok(default);
    };
    let value: T = raw.trim().parse().map_err(|_| ConfigError::Invalid {
        name: name.to_owned(),
        reason: format!("`{raw}` is not a number"),
    })?;
    if !range.contains(&value) {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            reason: format!("{value} is outside {}..={}", range.start(), range.end()),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn full_env() -> HashMap<String, String> {
        let mut env = HashMap::new();
        env.insert(
            "DATABASE_URL".into(),
            "postgresql://app:hunter2@db/app".into(),
        );
        env.insert("DD_LEASE_TABLE".into(), "leases".into());
        for q in Queue::ALL {
            env.insert(
                format!("DD_QUEUE_URL_{}", q.env_suffix()),
                format!("http://sqs/{q}"),
            );
            env.insert(
                format!("DD_DLQ_URL_{}", q.env_suffix()),
                format!("http://sqs/{q}-dlq"),
            );
        }
        env
    }

    fn load(env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn reads_queues_and_defaults() {
        let s = load(&full_env()).unwrap();
        assert_eq!(s.urls(Queue::Analytics).dlq, "http://sqs/analytics-dlq");
        assert_eq!(s.concurrency, 4);
        assert_eq!(s.deadline_margin, Duration::from_secs(5));
        assert_eq!(
            s.database_url().unwrap().expose_secret(),
            "postgresql://app:hunter2@db/app"
        );
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn upstream_hosts_default_to_what_each_upstream_publishes_from() {
        let s = load(&full_env()).unwrap();
        assert_eq!(s.scryfall_allowed_hosts, ["data.scryfall.io"]);
        assert!(s.mtgjson_allowed_hosts.is_empty());
        let mut env = full_env();
        env.insert(
            "DD_SCRYFALL_ALLOWED_HOSTS".into(),
            " data.scryfall.io, mirror.example:8443 ,".into(),
        );
        env.insert("DD_MTGJSON_ALLOWED_HOSTS".into(), "".into());
        let s = load(&env).unwrap();
        assert_eq!(
            s.scryfall_allowed_hosts,
            ["data.scryfall.io", "mirror.example:8443"]
        );
        assert!(s.mtgjson_allowed_hosts.is_empty());
        assert_eq!(s.upstream_response_timeout, Duration::from_secs(30));
        assert_eq!(s.upstream_read_timeout, Duration::from_secs(60));
    }

    #[test]
    fn credentials_come_from_a_secret_when_no_url_is_set() {
        let mut env = full_env();
        env.remove("DATABASE_URL");
        assert_eq!(
            load(&env).unwrap_err().to_string(),
            "missing environment variable DATABASE_URL (or DD_DATABASE_SECRET_ARN)"
        );
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf";
        env.insert("DD_DATABASE_SECRET_ARN".into(), arn.into());
        env.insert("DD_DATABASE_HOST".into(), "proxy.example".into());
        env.insert("DD_DATABASE_NAME".into(), "".into());
        let s = load(&env).unwrap();
        match &s.database {
            DatabaseSource::Secret {
                arn: a,
                host,
                port,
                name,
            } => {
                assert_eq!(a, arn);
                assert_eq!(host.as_deref(), Some("proxy.example"));
                assert_eq!(*port, None);
                assert_eq!(*name, None, "an empty value counts as unset");
            }
            other => panic!("{other:?}"),
        }
        assert!(s.database_url().is_err());
        env.insert("DD_DATABASE_PORT".into(), "99999".into());
        assert!(load(&env)
            .unwrap_err()
            .to_string()
            .contains("DD_DATABASE_PORT"));
    }

    #[test]
    fn missing_variable_is_named() {
        let mut env = full_env();
        env.remove("DD_DLQ_URL_INGESTION");
        let err = load(&env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing environment variable DD_DLQ_URL_INGESTION"
        );
    }

    #[test]
    fn invalid_numbers_are_named() {
        let mut env = full_env();
        env.insert("DD_CONCURRENCY".into(), "lots".into());
        assert!(load(&env)
            .unwrap_err()
            .to_string()
            .contains("DD_CONCURRENCY"));
        env.insert("DD_CONCURRENCY".into(), "0".into());
        assert!(load(&env)
            .unwrap_err()
            .to_string()
            .contains("outside 1..=64"));
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let s = load(&full_env()).unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
