//! Database credentials from AWS Secrets Manager: fetched once per container on first use, cached, and fetched
//! again after Postgres rejects them (a rotated password), so a rotation costs one retried message, not a
//! redeploy. The secret is either a connection URL or an RDS-style JSON document
//! (`{"username", "password", "host", "port", "dbname"}`; RDS-managed secrets carry only the first two), and
//! the function's `DD_DATABASE_HOST` / `DD_DATABASE_PORT` / `DD_DATABASE_NAME` fill in or override the endpoint
//! (the RDS Proxy in front of the database).

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use crate::error::{class, from_sdk_error, TaskError};

/// The endpoint parts the function's environment supplies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct RdsSecret {
    username: String,
    password: String,
    host: Option<String>,
    port: Option<serde_json::Value>,
    dbname: Option<String>,
}

/// Connection options from a secret's text. Errors never quote the secret.
pub fn connect_options(secret: &str, endpoint: &Endpoint) -> Result<PgConnectOptions, String> {
    let text = secret.trim();
    let mut options = if text.starts_with('{') {
        let doc: RdsSecret = serde_json::from_str(text).map_err(|e| {
            format!(
                "the secret is not a JSON database secret (it needs `username` and `password`): {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let port = match &doc.port {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            Some(_) => None,
        };
        if doc.port.is_some() && port.is_none() {
            return Err("the secret's `port` is not a port number".to_owned());
        }
        let mut options = PgConnectOptions::new_without_pgpass()
            .username(&doc.username)
            .password(&doc.password);
        if let Some(host) = &doc.host {
            options = options.host(host);
        }
        if let Some(port) = port {
            options = options.port(port);
        }
        if let Some(name) = &doc.dbname {
            options = options.database(name);
        }
        if doc.host.is_none() && endpoint.host.is_none() {
            return Err("the secret names no host: set DD_DATABASE_HOST".to_owned());
        }
        options
    } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        text.parse::<PgConnectOptions>()
            .map_err(|_| "the secret is not a valid Postgres URL".to_owned())?
    } else {
        return Err("the secret is neither a Postgres URL nor a JSON database secret".to_owned());
    };
    if let Some(host) = &endpoint.host {
        options = options.host(host);
    }
    if let Some(port) = endpoint.port {
        options = options.port(port);
    }
    if let Some(name) = &endpoint.name {
        options = options.database(name);
    }
    Ok(options)
}

/// The secret behind a function's pool.
pub struct DatabaseSecret {
    client: crate::lazy_client::LazyClient<aws_sdk_secretsmanager::Client>,
    arn: String,
    endpoint: Endpoint,
    application_name: &'static str,
    loaded: tokio::sync::Mutex<bool>,
    /// Set when Postgres refused a login; the next invocation fetches the secret again.
    rejected: AtomicBool,
}

impl DatabaseSecret {
    pub fn new(
        client: crate::lazy_client::LazyClient<aws_sdk_secretsmanager::Client>,
        arn: String,
        endpoint: Endpoint,
        application_name: &'static str,
    ) -> Self {
        DatabaseSecret {
            client,
            arn,
            endpoint,
            application_name,
            loaded: tokio::sync::Mutex::new(false),
            rejected: AtomicBool::new(false),
        }
    }

    /// Records that Postgres rejected the credentials (a `database_auth` error: SQLSTATE 28000 or 28P01).
    pub fn note_rejected(&self) {
        self.rejected.store(true, Ordering::SeqCst);
    }

    /// Points `pool` at the secret's credentials, fetching them on first use and after a rejected login.
    /// Connections already open keep working; new ones use the fresh credentials.
    pub async fn ensure(&self, pool: &PgPool) -> Result<(), TaskError> {
        let mut loaded = self.loaded.lock().await;
        if self.rejected.swap(false, Ordering::SeqCst) && *loaded {
            tracing::warn!(secret = %self.arn, "Postgres rejected the credentials: fetching the secret again");
            *loaded = false;
        }
        if *loaded {
            return Ok(());
        }
        let value = self
            .client
            .get_secret_value()
            .secret_id(&self.arn)
            .send()
            .await
            .map_err(|e| from_sdk_error("GetSecretValue (database credentials)", e))?;
        let text = value.secret_string().ok_or_else(|| {
            TaskError::permanent(
                class::DATABASE_CREDENTIALS,
                format!("secret {} has no string value", self.arn),
            )
        })?;
        let options = connect_options(text, &self.endpoint).map_err(|reason| {
            TaskError::permanent(
                class::DATABASE_CREDENTIALS,
                format!("secret {}: {reason}", self.arn),
            )
        })?;
        pool.set_connect_options(options.application_name(self.application_name));
        *loaded = true;
        tracing::info!(secret = %self.arn, version = value.version_id().unwrap_or("?"), "database credentials loaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(host: Option<&str>, port: Option<u16>, name: Option<&str>) -> Endpoint {
        Endpoint {
            host: host.map(str::to_owned),
            port,
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn a_url_secret() {
        let o = connect_options(
            "postgresql://app:s3cret@db.internal:6432/app\n",
            &Endpoint::default(),
        )
        .unwrap();
        assert_eq!(o.get_host(), "db.internal");
        assert_eq!(o.get_port(), 6432);
        assert_eq!(o.get_username(), "app");
        assert_eq!(o.get_database(), Some("app"));
    }

    #[test]
    fn an_rds_secret_with_its_endpoint() {
        let secret = r#"{"engine":"postgres","host":"db.rds.example","port":5432,"username":"tasks","password":"p@ss","dbname":"dualcaster"}"#;
        let o = connect_options(secret, &Endpoint::default()).unwrap();
        assert_eq!(
            (o.get_host(), o.get_port(), o.get_username()),
            ("db.rds.example", 5432, "tasks")
        );
        assert_eq!(o.get_database(), Some("dualcaster"));
        // The function's environment points it at the proxy instead.
        let o =
            connect_options(secret, &endpoint(Some("proxy.example"), Some(6432), None)).unwrap();
        assert_eq!((o.get_host(), o.get_port()), ("proxy.example", 6432));
        assert_eq!(o.get_database(), Some("dualcaster"));
        let o = connect_options(
            r#"{"username":"u","password":"p","host":"h","port":"5433"}"#,
            &Endpoint::default(),
        )
        .unwrap();
        assert_eq!(o.get_port(), 5433, "a port given as a string");
    }

    #[test]
    fn an_rds_managed_secret_needs_the_endpoint_from_the_environment() {
        let secret = r#"{"username":"postgres","password":"managed-by-rds"}"#;
        let err = connect_options(secret, &Endpoint::default()).unwrap_err();
        assert_eq!(err, "the secret names no host: set DD_DATABASE_HOST");
        let o = connect_options(
            secret,
            &endpoint(Some("proxy.example"), None, Some("dualcaster")),
        )
        .unwrap();
        assert_eq!(o.get_host(), "proxy.example");
        assert_eq!(o.get_database(), Some("dualcaster"));
    }

    #[test]
    fn errors_never_quote_the_secret() {
        for secret in [
            r#"{"username":"u","pass":"hunter2"}"#,
            r#"{"username":"u","password":"hunter2","port":true,"host":"h"}"#,
            "hunter2",
            "postgresql://u:hunter2@[bad",
            r#"{"username":"u","password":"hunter2""#,
        ] {
            let err = connect_options(secret, &Endpoint::default()).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
