use std::time::Duration;

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use dualcaster_tools::local::{function_binary, local_aws};
use integration_tests::TestStack;
use serde_json::json;
use sqlx::PgPool;

async fn ping(function: &LocalFunction, note: &str) -> InvokeOutcome {
    match function
        .invoke(json!({"task": "ping", "kwargs": {"note": note}}))
        .await
        .unwrap()
    {
        Invoked::Outcome(outcome) => outcome,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn credentials_come_from_secrets_manager_and_a_rotated_password_costs_one_retry() {
    let stack = TestStack::start().await.unwrap();
    let role = format!("{}_tasks", stack.db_name);
    let (first, second) = ("first-Secret-1", "second-Secret-2");
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{first}'"),
        // Membership lets the test close the role's sessions.
        format!("GRANT {role} TO CURRENT_USER"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&stack.pool)
            .await
            .unwrap();
    }
    let secrets = aws_sdk_secretsmanager::Client::new(&local_aws().await);
    let document = |password: &str| {
        json!({"engine": "postgres", "username": role, "password": password, "host": "127.0.0.1",
               "port": 5432, "dbname": stack.db_name})
        .to_string()
    };
    let created = secrets
        .create_secret()
        .name(format!("{}-database", stack.name))
        .secret_string(document(first))
        .send()
        .await
        .unwrap();
    let arn = created.arn().unwrap().to_owned();

    // The function has no DATABASE_URL: only the secret's ARN.
    let mut env = stack.function_env();
    env.remove("DATABASE_URL");
    env.insert("DD_DATABASE_SECRET_ARN".into(), arn.clone());
    let log = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/it-logs/{}-secrets.log", stack.name));
    let function = LocalFunction::start(
        &format!("{}-default", stack.name),
        &function_binary(Queue::Default).unwrap(),
        env,
        Duration::from_secs(30),
        Some(log.clone()),
    )
    .await
    .unwrap();
    match ping(&function, "first password").await {
        InvokeOutcome::Response(r) => assert_eq!(r["status"], "succeeded", "{r}"),
        other => panic!("{other:?}"),
    }
    let sessions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
            .bind(&role)
            .fetch_one(&stack.pool)
            .await
            .unwrap()
    };
    assert!(
        sessions().await >= 1,
        "the function connects as the secret's role"
    );

    // Rotation: the role's password and the secret change, and the function's connections are closed.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE {role} PASSWORD '{second}'"
    )))
    .execute(&stack.pool)
    .await
    .unwrap();
    secrets
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(document(second))
        .send()
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&role)
        .execute(&stack.pool)
        .await
        .unwrap();
    // The next run logs in with the cached password, is refused, and fails retryably...
    match ping(&function, "stale password").await {
        InvokeOutcome::Error {
            error_type,
            error_message,
        } => {
            assert_eq!(error_type, "database_auth", "{error_message}");
            assert!(error_message.contains("(retryable)"), "{error_message}");
        }
        other => panic!("{other:?}"),
    }
    // ... and the one after it fetches the secret again and succeeds.
    match ping(&function, "rotated password").await {
        InvokeOutcome::Response(r) => assert_eq!(r["status"], "succeeded", "{r}"),
        other => panic!("{other:?}"),
    }
    let notes: Vec<String> =
        sqlx::query_scalar("SELECT note FROM health_checks ORDER BY checked_at")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    assert_eq!(notes, vec!["first password", "rotated password"]);
    drop(function);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("database credentials loaded"), "{logged}");
    assert!(
        !logged.contains(first) && !logged.contains(second),
        "passwords never reach the logs"
    );

    let admin_url = stack.admin_url.clone();
    secrets
        .delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    stack.cleanup().await;
    let admin = PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await
        .unwrap();
}
