//! Errors with a class: what the runtime does with a failure depends only on its [`ErrorKind`].

use std::borrow::Cow;
use std::fmt;

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Network trouble, throttling, a database that is restarting, a deadline: the message comes back later
    /// with an exponential, jittered delay, up to the task's retry limit.
    Retryable,
    /// Not JSON, unknown task, invalid arguments, a bug: retrying cannot help, so the message goes to the
    /// dead-letter queue at once.
    Permanent,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Retryable => "retryable",
            ErrorKind::Permanent => "permanent",
        }
    }
}

/// Stable, machine-readable error classes. They end up in DLQ message attributes, task-run history,
/// metrics and Lambda error types, so renaming one is a breaking change.
pub mod class {
    pub const MALFORMED_MESSAGE: &str = "malformed_message";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const UNKNOWN_TASK: &str = "unknown_task";
    pub const WRONG_QUEUE: &str = "wrong_queue";
    pub const INVALID_KWARGS: &str = "invalid_kwargs";
    pub const TASK_FAILED: &str = "task_failed";
    pub const PANIC: &str = "panic";
    pub const DATABASE: &str = "database";
    pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";
    /// Postgres rejected the login (a rotated password): retried after the credentials are fetched again.
    pub const DATABASE_AUTH: &str = "database_auth";
    /// The database secret is missing, unreadable or not a database secret.
    pub const DATABASE_CREDENTIALS: &str = "database_credentials";
    pub const UPSTREAM: &str = "upstream";
    pub const UPSTREAM_UNAVAILABLE: &str = "upstream_unavailable";
    pub const THROTTLED: &str = "throttled";
    pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";
    pub const TASK_RETRYABLE: &str = "task_retryable";
    pub const LEASE_STORE: &str = "lease_store";
    pub const LEASE_STORE_UNAVAILABLE: &str = "lease_store_unavailable";
    pub const LEASE_LOST: &str = "lease_lost";
    pub const LEASE_HELD: &str = "lease_held";
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    pub const CORRUPT_DOWNLOAD: &str = "corrupt_download";
    pub const DOWNLOAD_TOO_LARGE: &str = "download_too_large";
}

/// The longest error message kept, in characters. A message goes to the logs, `task_runs.reason`, the DLQ's
/// attributes and the Lambda error, and may quote its input (serde quotes a refused string in full): a 200 KB
/// argument must not become a 200 KB reason. The message itself keeps everything its producer sent.
pub const MAX_MESSAGE_CHARS: usize = 2_000;

/// `message` with its middle cut to [`MAX_MESSAGE_CHARS`], keeping its start (what failed) and its end (the
/// cause, which error chains put last), and saying how much was cut.
fn capped(message: String) -> String {
    let total = message.chars().count();
    if total <= MAX_MESSAGE_CHARS {
        return message;
    }
    let (head, tail) = (MAX_MESSAGE_CHARS * 3 / 4, MAX_MESSAGE_CHARS / 5);
    let start: String = message.chars().take(head).collect();
    let end: String = message.chars().skip(total - tail).collect();
    format!(
        "{start} [... {} characters cut ...] {end}",
        total - head - tail
    )
}

/// A task or runtime failure: its kind decides retry vs dead-letter; its class and message travel with
/// the message to the DLQ.
#[derive(Debug)]
pub struct TaskError {
    kind: ErrorKind,
    class: Cow<'static, str>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl TaskError {
    pub fn new(
        kind: ErrorKind,
        class: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        TaskError {
            kind,
            class: class.into(),
            message: capped(message.into()),
            source: None,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(class: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, class, message)
    }

    /// A failure that may go away if the message is tried again later.
    pub fn retryable(class: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, class, message)
    }

    /// Keeps the underlying error for `Debug` output and the source chain.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Prefixes the message with what was being done, like `anyhow::Context`.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = capped(format!("{what}: {}", self.message));
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn class(&self) -> &str {
        &self.class
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.class,
            self.kind.as_str(),
            self.message
        )
    }
}

impl std::error::Error for TaskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Postgres errors: connection trouble, restarts, serialization failures and deadlocks are worth retrying;
/// constraint violations and bad SQL are not.
impl From<sqlx::Error> for TaskError {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if matches!(db.code().as_deref(), Some("28000" | "28P01")) {
                return TaskError::new(ErrorKind::Retryable, class::DATABASE_AUTH, err.to_string())
                    .with_source(err);
            }
        }
        let kind = match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => ErrorKind::Retryable,
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(code) if is_transient_sqlstate(code) => ErrorKind::Retryable,
                _ => ErrorKind::Permanent,
            },
            _ => ErrorKind::Permanent,
        };
        let class = match kind {
            ErrorKind::Retryable => class::DATABASE_UNAVAILABLE,
            ErrorKind::Permanent => class::DATABASE,
        };
        TaskError::new(kind, class, err.to_string()).with_source(err)
    }
}

/// SQLSTATEs that describe the server's state rather than the statement: connection exceptions (08),
/// serialization failure and deadlock (40001, 40P01), a lock not granted within `lock_timeout` (55P03),
/// insufficient resources (53), operator intervention such as a shutdown or a server still starting
/// (57P01-57P03), a statement cancelled or over `statement_timeout` (57014), a session ended by
/// `idle_session_timeout` (57P05), a write refused because the server is a read-only replica, as a
/// connection to a failed-over primary's old address finds it (25006), and system or I/O errors of the server
/// (58000, 58030).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001"
                | "40P01"
                | "55P03"
                | "57P01"
                | "57P02"
                | "57P03"
                | "57P05"
                | "57014"
                | "25006"
                | "58000"
                | "58030"
        )
}

/// Classifies an AWS SDK error: transport failures, timeouts, throttling and 5xx are retryable.
pub fn from_sdk_error<E, R>(what: &str, err: aws_sdk_sqs::error::SdkError<E, R>) -> TaskError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
    let code = err.code().map(str::to_owned);
    let message = format!("{what}: {}", aws_sdk_sqs::error::DisplayErrorContext(&err));
    let (kind, class) = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (ErrorKind::Retryable, class::UPSTREAM_UNAVAILABLE)
        }
        SdkError::ServiceError(_) => match code.as_deref() {
            Some(c)
                if c.contains("Throttl")
                    || c == "RequestThrottled"
                    || c == "TooManyRequestsException" =>
            {
                (ErrorKind::Retryable, class::THROTTLED)
            }
            Some("ServiceUnavailable" | "InternalError" | "InternalFailure" | "KmsThrottled") => {
                (ErrorKind::Retryable, class::UPSTREAM_UNAVAILABLE)
            }
            _ => (ErrorKind::Permanent, class::UPSTREAM),
        },
        _ => (ErrorKind::Permanent, class::UPSTREAM),
    };
    TaskError::new(kind, class, message)
}

/// A JSON document refused by its type, said as `field: error`, or the error alone when it is about the whole object (an unknown or missing field).
pub fn path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner().to_string();
    match e.path().to_string().as_str() {
        // An unknown field names itself.
        _ if inner.starts_with("unknown field") => inner,
        "." | "" => inner,
        path => format!("{path}: {inner}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_kind_and_class() {
        let e = TaskError::permanent(class::INVALID_KWARGS, "limit: must be at most 10");
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert_eq!(e.class(), "invalid_kwargs");
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "invalid_kwargs (permanent): limit: must be at most 10"
        );

        let e = TaskError::retryable(class::THROTTLED, "slow down").context("sending to DLQ");
        assert!(e.is_retryable());
        assert_eq!(e.message(), "sending to DLQ: slow down");
    }

    #[test]
    fn a_long_message_keeps_its_start_and_end_and_says_what_was_cut() {
        let quoted = "é".repeat(200_000);
        let e = TaskError::permanent(
            class::INVALID_KWARGS,
            format!("work_ms: invalid type: string \"{quoted}\", expected u32"),
        );
        let m = e.message();
        assert!(m.chars().count() <= MAX_MESSAGE_CHARS + 40, "{}", m.len());
        assert!(m.starts_with("work_ms: invalid type: string \"ééé"));
        assert!(m.ends_with("ééé\", expected u32"));
        // 200,000 + 46 characters, of which 1,500 are kept in front and 400 at the end.
        assert!(m.contains(" [... 198146 characters cut ...] "), "{m}");
        let e = e.context("task `ping`");
        assert!(e.message().starts_with("task `ping`: work_ms"));
        assert!(e.message().chars().count() <= MAX_MESSAGE_CHARS + 40);
        let short = TaskError::permanent(class::INVALID_KWARGS, "x".repeat(MAX_MESSAGE_CHARS));
        assert_eq!(short.message().len(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn pool_and_io_errors_are_retryable() {
        let e: TaskError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(e.kind(), ErrorKind::Retryable);
        assert_eq!(e.class(), class::DATABASE_UNAVAILABLE);

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e: TaskError = sqlx::Error::Io(io).into();
        assert!(e.is_retryable());
    }

    #[test]
    fn row_not_found_and_decode_errors_are_permanent() {
        let e: TaskError = sqlx::Error::RowNotFound.into();
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert_eq!(e.class(), class::DATABASE);
    }

    #[test]
    fn transient_sqlstates() {
        for code in [
            "08006", "08001", "40001", "40P01", "55P03", "53300", "57P01", "57P03", "57P05",
            "57014", "25006", "58000", "58030",
        ] {
            assert!(is_transient_sqlstate(code), "{code} should be transient");
        }
        for code in [
            "23505", "42P01", "22003", "42601", "22P05", "25P02", "57P04",
        ] {
            assert!(!is_transient_sqlstate(code), "{code} should be permanent");
        }
    }
}
