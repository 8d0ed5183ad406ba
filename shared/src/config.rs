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

/// Everything a function needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres connection URL (`DATABASE_URL`). Wrapped so that `Debug` shows `[REDACTED]`.
    pub database_url: SecretString,
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
    /// Long ingestions stop and continue in a follow-up message when less than this remains
    /// (`DD_INGEST_RESERVE_MS`, default 60000).
    pub ingest_reserve: Duration,
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
        Ok(Settings {
            database_url: SecretString::from(required("DATABASE_URL")?),
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
            ingest_reserve: Duration::from_millis(parse_or(
                &lookup,
                "DD_INGEST_RESERVE_MS",
                60_000,
                0..=900_000,
            )?),
        })
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
            s.database_url.expose_secret(),
            "postgresql://app:hunter2@db/app"
        );
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
