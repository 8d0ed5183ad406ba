//! Postgres: the per-container pool, the embedded migrations and the task-run history.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::{DatabaseSource, Settings};
use crate::error::TaskError;
use crate::report::{Disposition, RunReport};

/// The schema, embedded in every binary. Applied by `dualcaster migrate` (or `make migrate`), never
/// implicitly on a cold start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The `application_name` of the functions' connections.
pub const APPLICATION_NAME: &str = "dualcaster-tasks";

/// A small pool that connects on first use, so a cold start never waits for (or fails on) Postgres
/// before a task actually needs it. With credentials in Secrets Manager the pool starts without them:
/// [`crate::secrets::DatabaseSecret::ensure`] supplies them before the first task runs.
pub fn lazy_pool(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = match &settings.database {
        DatabaseSource::Url(url) => url.expose_secret().parse()?,
        DatabaseSource::Secret { .. } => {
            PgConnectOptions::new_without_pgpass().host("credentials.not-loaded.invalid")
        }
    };
    Ok(pool_options()
        .max_connections(settings.db_max_connections)
        .min_connections(0)
        .acquire_timeout(settings.db_acquire_timeout)
        .idle_timeout(std::time::Duration::from_secs(60))
        .connect_lazy_with(options.application_name(APPLICATION_NAME)))
}

/// Pool options every pool of the project starts from: each new connection gets `TCP_NODELAY`
/// ([`no_delay_on_tcp_sockets`]).
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().after_connect(|_, _| {
        Box::pin(async {
            no_delay_on_tcp_sockets();
            Ok(())
        })
    })
}

/// Turns Nagle's algorithm off on every TCP socket of this process, the connection just opened among them.
///
/// sqlx 0.9.0 no longer sets `TCP_NODELAY` on its connections (transact-rs/sqlx#4335, fixed upstream but not
/// released). Without it, a statement whose parameters span several TCP segments (a batch's column arrays)
/// waits for the server's delayed ACK, about 40 ms on Linux, before its last segment leaves: half of an
/// ingestion batch's time. [`pool_options`] calls it from `after_connect`; the other TCP clients of the process (hyper, the AWS
/// SDKs) already set the option, so setting it again changes nothing for them.
pub fn no_delay_on_tcp_sockets() {
    #[cfg(target_os = "linux")]
    {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for fd in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<libc::c_int>().ok())
        {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt only reads `on` for the given length. On a descriptor that is not a TCP
            // socket (or was closed meanwhile) it fails with an error that is ignored, changing nothing.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// One finished attempt, as stored in `task_runs`.
#[derive(Debug, Clone)]
pub struct RunRecord<'a> {
    pub report: &'a RunReport,
    pub message_id: Option<&'a str>,
    pub trigger: &'static str,
    pub disposition: Disposition,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The X-Ray trace header the run belonged to, when there was one.
    pub trace_header: Option<&'a str>,
}

/// Where run history goes. `Disabled` is for in-process benchmarks and unit tests of the batch logic.
#[derive(Debug, Clone)]
pub enum RunLog {
    Postgres(PgPool),
    Disabled,
}

impl RunLog {
    pub async fn record(&self, run: &RunRecord<'_>) -> Result<(), TaskError> {
        let RunLog::Postgres(pool) = self else {
            return Ok(());
        };
        let r = run.report;
        let detail = (!r.detail.is_null()).then_some(&r.detail);
        sqlx::query(
            "INSERT INTO task_runs (run_id, task, run_key, message_id, queue, trigger, attempt, status, \
             disposition, processed, errors, started_at, finished_at, duration_ms, reason, error_kind, \
             error_class, detail, replayed, chain_id, trace_header) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21)",
        )
        .bind(Uuid::new_v4())
        .bind(r.task.as_deref())
        .bind(&r.id)
        .bind(run.message_id)
        .bind(r.queue.as_str())
        .bind(run.trigger)
        .bind(r.attempt as i32)
        .bind(r.status.as_str())
        .bind(run.disposition.as_str())
        .bind(r.counts.processed as i64)
        .bind(r.counts.errors as i64)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(r.duration_ms as i64)
        .bind(r.reason.as_deref())
        .bind(r.error_kind.as_deref())
        .bind(r.error_class.as_deref())
        .bind(detail.map(sqlx::types::Json))
        .bind(r.replayed)
        .bind(&r.chain_id)
        .bind(run.trace_header)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// One run of a chain, as `{"action":"chain"}` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct ChainRun {
    pub task: Option<String>,
    pub run_key: String,
    pub queue: String,
    pub attempt: i32,
    pub status: String,
    pub disposition: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub processed: i64,
    pub errors: i64,
    pub error_class: Option<String>,
    pub reason: Option<String>,
    pub trace_header: Option<String>,
}

/// The runs of chain `chain_id` in the order they started (at most `limit`, the first ones).
pub async fn chain_runs(
    pool: &PgPool,
    chain_id: &str,
    limit: i64,
) -> Result<Vec<ChainRun>, TaskError> {
    Ok(sqlx::query_as::<_, ChainRun>(
        "SELECT task, run_key, queue, attempt, status, disposition, started_at, duration_ms, processed, \
         errors, error_class, reason, trace_header \
         FROM task_runs WHERE chain_id = $1 ORDER BY started_at, finished_at LIMIT $2",
    )
    .bind(chain_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn tcp_sockets_get_no_delay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(
            !client.nodelay().unwrap(),
            "a new socket starts with Nagle on"
        );
        no_delay_on_tcp_sockets();
        assert!(client.nodelay().unwrap());
        assert!(server.nodelay().unwrap());
    }
}
