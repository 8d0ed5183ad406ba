//! How Postgres' own errors are classed, produced by a real server: what a failover, a statement timeout or a
//! cancel by an operator says is worth retrying; what a bad statement says is not.

use dualcaster::error::{class, ErrorKind, TaskError};
use integration_tests::TestStack;

async fn error_of(pool: &sqlx::PgPool, statements: &str) -> TaskError {
    let mut tx = pool.begin().await.unwrap();
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
        .execute(&mut *tx)
        .await
        .unwrap_err();
    TaskError::from(err)
}

#[tokio::test]
async fn a_timeout_a_cancel_and_a_read_only_server_are_retryable_and_a_bad_statement_is_not() {
    let stack = TestStack::start().await.unwrap();
    let pool = &stack.pool;

    let timeout = error_of(
        pool,
        "SET LOCAL statement_timeout = '50ms'; SELECT pg_sleep(5)",
    )
    .await;
    assert_eq!(timeout.kind(), ErrorKind::Retryable, "{timeout}");
    assert_eq!(timeout.class(), class::DATABASE_UNAVAILABLE);
    assert!(timeout.message().contains("statement timeout"), "{timeout}");

    // What a write meets on a server that is now a replica (a failed-over primary's old address).
    let read_only = error_of(
        pool,
        "SET TRANSACTION READ ONLY; \
         INSERT INTO health_checks (check_key, queue, function_name, checked_at, db_roundtrip_us) \
         VALUES ('read only', 'default', 'f', now(), 1)",
    )
    .await;
    assert_eq!(read_only.kind(), ErrorKind::Retryable, "{read_only}");
    assert!(
        read_only.message().contains("read-only transaction"),
        "{read_only}"
    );

    // An operator cancels the statement from another session.
    let mut sleeper = pool.acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *sleeper)
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move {
        sqlx::query("SELECT pg_sleep(30)")
            .execute(&mut *sleeper)
            .await
            .map(|_| ())
    });
    let admin = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let mut cancelled = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%' \
             AND state = 'active')",
        )
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
        if active {
            cancelled = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
            break;
        }
    }
    assert!(cancelled, "the sleeping statement was never seen running");
    let cancel = TaskError::from(sleeping.await.unwrap().unwrap_err());
    assert_eq!(cancel.kind(), ErrorKind::Retryable, "{cancel}");
    assert!(cancel.message().contains("canceling statement"), "{cancel}");

    for bad in [
        "SELECT 1 / 0",
        "SELECT * FROM no_such_table",
        "INSERT INTO health_checks (check_key) VALUES (NULL)",
    ] {
        let err = error_of(pool, bad).await;
        assert_eq!(err.kind(), ErrorKind::Permanent, "{bad}: {err}");
        assert_eq!(err.class(), class::DATABASE, "{bad}");
    }
    admin.close().await;
    stack.cleanup().await;
}
