//! Applying the embedded schema ([`crate::db::MIGRATOR`]) and saying what it did: the `migrate` action of the
//! ops function (so a database in private subnets needs no machine inside the VPC) and `dualcaster migrate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};

use crate::db::MIGRATOR;
use crate::error::TaskError;

/// Error class of a schema the embedded migrations cannot bring up to date.
pub const MIGRATION_FAILED: &str = "migration_failed";

/// Advisory lock key of a `migrate` call, held around reading what is applied, applying, and reading again,
/// so that each of two concurrent calls reports only what it applied itself. sqlx takes its own lock inside.
const MIGRATE_LOCK: i64 = 0x6464_6d69_6772_6174; // "ddmigrat"

/// One migration, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationView {
    pub version: i64,
    pub description: String,
}

/// What a `migrate` call found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub dry_run: bool,
    /// Migrations this call applied (none on a dry run).
    pub applied: Vec<MigrationView>,
    /// Migrations still to apply: on a dry run, what a real call would apply; after a real call, none.
    pub pending: Vec<MigrationView>,
    /// Migrations that were already in the database before this call.
    pub already_applied: usize,
    /// The newest version in the database after this call (None for an empty database).
    pub schema_version: Option<i64>,
}

/// Applies every embedded migration the database lacks (or, with `dry_run`, only lists them). Refuses,
/// changing nothing, a database that has a migration this build does not know, one whose checksum differs
/// from the embedded file's, or one left partially applied.
pub async fn migrate(pool: &PgPool, dry_run: bool) -> Result<MigrationReport, TaskError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = migrate_locked(&mut conn, dry_run).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // A session lock dies with its connection: never hand a connection holding it back to the pool.
        conn.detach();
    }
    result
}

async fn migrate_locked(
    conn: &mut PgConnection,
    dry_run: bool,
) -> Result<MigrationReport, TaskError> {
    let before = applied(conn).await?;
    check_known(&before)?;
    let pending: Vec<MigrationView> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !before.contains_key(&m.version))
        .map(view)
        .collect();
    if dry_run {
        return Ok(MigrationReport {
            dry_run,
            already_applied: before.len(),
            schema_version: before.keys().next_back().copied(),
            applied: Vec::new(),
            pending,
        });
    }
    if !pending.is_empty() {
        // `run_direct` is what `run` calls once it has a connection; called on the connection that holds the
        // lock, it keeps the future `Send` (sqlx's `Acquire` for `&mut PgConnection` is not general enough).
        MIGRATOR.run_direct(None, conn, false).await.map_err(|e| {
            TaskError::permanent(MIGRATION_FAILED, format!("applying migrations: {e}"))
        })?;
    }
    let after = applied(conn).await?;
    Ok(MigrationReport {
        dry_run,
        already_applied: before.len(),
        schema_version: after.keys().next_back().copied(),
        applied: MIGRATOR
            .iter()
            .filter(|m| after.contains_key(&m.version) && !before.contains_key(&m.version))
            .map(view)
            .collect(),
        pending: MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !after.contains_key(&m.version))
            .map(view)
            .collect(),
    })
}

/// A database row of the migrations table.
struct Applied {
    checksum: Vec<u8>,
    success: bool,
}

/// The migrations table's rows by version; empty when the table does not exist yet.
async fn applied(conn: &mut PgConnection) -> Result<BTreeMap<i64, Applied>, TaskError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(MIGRATOR.table_name.as_ref())
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT version, checksum, success FROM {} ORDER BY version",
        MIGRATOR.table_name
    )))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>("version")?,
                Applied {
                    checksum: row.try_get("checksum")?,
                    success: row.try_get("success")?,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(TaskError::from)
}

/// Refuses a database this build cannot safely migrate, before anything is applied.
fn check_known(applied: &BTreeMap<i64, Applied>) -> Result<(), TaskError> {
    for (version, row) in applied {
        let refuse = |why: String| {
            Err(TaskError::permanent(
                MIGRATION_FAILED,
                format!("migration {version} {why}; nothing was applied"),
            ))
        };
        if !row.success {
            return refuse("is partially applied (success = false in the migrations table)".into());
        }
        match MIGRATOR.iter().find(|m| m.version == *version) {
            None => {
                return refuse(
                    "is in the database but not in this build: deploy the build that has it".into(),
                )
            }
            Some(m) if m.checksum.as_ref() != row.checksum.as_slice() => {
                return refuse(format!(
                    "({}) was changed after it was applied: its checksum differs",
                    m.description
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn view(m: &sqlx::migrate::Migration) -> MigrationView {
    MigrationView {
        version: m.version,
        description: m.description.to_string(),
    }
}
