//! What an operator sees: schema migrations applied through the ops function, and a chain of runs followed
//! by its id from an ingestion to its recommendations.

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use integration_tests::{replace_database, TestStack};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::analytics::functions_with_v4_history;

async fn invoke(function: &LocalFunction, payload: Value) -> Result<Value, (String, String)> {
    match function.invoke(payload.clone()).await.unwrap() {
        Invoked::Outcome(InvokeOutcome::Response(v)) => Ok(v),
        Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        }) => Err((error_type, error_message)),
        other => panic!("{payload}: {other:?}"),
    }
}

/// The migration versions as the files in `shared/migrations` name them (`<version>_<description>.sql`).
fn migration_files() -> Vec<(i64, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/migrations");
    let mut files: Vec<(i64, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| {
            let stem = name.strip_suffix(".sql")?;
            let (version, description) = stem.split_once('_')?;
            Some((version.parse().ok()?, description.replace('_', " ")))
        })
        .collect();
    files.sort();
    files
}

fn versions(list: &Value) -> Vec<(i64, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["version"].as_i64().unwrap(),
                m["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_ops_function_migrates_a_fresh_database_once_even_when_called_twice_at_once() {
    let stack = TestStack::start().await.unwrap();
    let fresh = format!("{}_fresh", stack.db_name);
    let admin = PgPool::connect(&stack.admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {fresh}")))
        .execute(&admin)
        .await
        .unwrap();
    let fresh_url = replace_database(&stack.admin_url, &fresh);
    let ops = stack
        .ops_function(&[("DATABASE_URL", fresh_url.as_str())])
        .await
        .unwrap();
    let files = migration_files();
    assert!(files.len() >= 9, "{files:?}");

    // A dry run lists every migration and applies none.
    let planned = invoke(&ops, json!({"action": "migrate", "dry_run": true}))
        .await
        .unwrap();
    assert_eq!(versions(&planned["pending"]), files, "{planned}");
    assert_eq!(planned["applied"], json!([]));
    assert_eq!(planned["already_applied"], 0);
    let db = PgPool::connect(&fresh_url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a dry run created tables");

    // Two calls at once, in two containers: each migration is applied by exactly one of them.
    let other = stack
        .ops_function(&[("DATABASE_URL", fresh_url.as_str())])
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        invoke(&ops, json!({"action": "migrate"})),
        invoke(&other, json!({"action": "migrate"}))
    );
    drop(other);
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut applied = versions(&a["applied"]);
    applied.extend(versions(&b["applied"]));
    applied.sort();
    assert_eq!(applied, files, "{a}\n{b}");
    for report in [&a, &b] {
        assert_eq!(report["pending"], json!([]), "{report}");
        assert_eq!(report["schema_version"], files.last().unwrap().0);
    }
    // The schema is there: the chain columns of the latest migration among it.
    let chain_columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_name = 'task_runs' AND column_name IN ('chain_id', 'trace_header')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(chain_columns, 2);

    // Again: nothing to apply.
    let again = invoke(&ops, json!({"action": "migrate"})).await.unwrap();
    assert_eq!(again["applied"], json!([]));
    assert_eq!(again["already_applied"], files.len());

    // A database ahead of this build is refused, and nothing is changed.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000001, 'from a newer build', true, '\\x00', 0)",
    )
    .execute(&db)
    .await
    .unwrap();
    let (class, message) = invoke(&ops, json!({"action": "migrate", "dry_run": true}))
        .await
        .unwrap_err();
    assert_eq!(class, "migration_failed");
    assert!(message.contains("29991231000001"), "{message}");
    assert!(message.contains("not in this build"), "{message}");
    let (class, _) = invoke(&ops, json!({"action": "migrate", "dry_run": "yes"}))
        .await
        .unwrap_err();
    assert_eq!(class, "invalid_kwargs");

    drop(ops);
    db.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {fresh} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    stack.cleanup().await;
}

#[tokio::test]
async fn a_chain_is_followed_by_its_id_from_an_ingestion_to_its_recommendations() {
    let stack = TestStack::start().await.unwrap();
    let (_server, ingestion, analytics) = functions_with_v4_history(&stack).await;
    let ops = stack.ops_function(&[]).await.unwrap();
    let ingestion_source = stack.event_source(Queue::Ingestion, 10).await.unwrap();
    let analytics_source = stack.event_source(Queue::Analytics, 10).await.unwrap();
    let timeout = Duration::from_secs(120);

    // The producer's X-Ray trace rides on the message as SQS's AWSTraceHeader.
    let trace = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1";
    let root = "chain-test:v4-ingestion";
    let ingest = json!({"task": "ingest_mtgjson_prices", "id": root, "kwargs": {"file": "v4_history", "path": "v4.json"}});
    stack
        .sqs
        .send_message()
        .queue_url(stack.queue_url(Queue::Ingestion))
        .message_body(ingest.to_string())
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            MessageSystemAttributeValue::builder()
                .data_type("String")
                .string_value(trace)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // Another chain at the same time, which must not show up in this one.
    stack
        .send(
            Queue::Analytics,
            r#"{"task": "compute_price_metrics", "id": "chain-test:by-hand"}"#,
        )
        .await
        .unwrap();
    stack
        .drain(&ingestion_source, &ingestion, timeout)
        .await
        .unwrap();
    stack
        .drain(&analytics_source, &analytics, timeout)
        .await
        .unwrap();

    let chain = invoke(&ops, json!({"action": "chain", "id": root}))
        .await
        .unwrap();
    let runs = chain["runs"].as_array().unwrap();
    let steps: Vec<(&str, &str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["task"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
                r["disposition"].as_str().unwrap(),
            )
        })
        .collect();
    // The contract: an ingestion that changed prices is followed by metrics, then signals, then
    // recommendations, each once.
    assert_eq!(
        steps,
        [
            ("ingest_mtgjson_prices", "succeeded", "acknowledged"),
            ("compute_price_metrics", "succeeded", "acknowledged"),
            ("detect_price_signals", "succeeded", "acknowledged"),
            ("generate_recommendations", "succeeded", "acknowledged"),
        ],
        "{chain}"
    );
    assert_eq!(runs[0]["run_key"], root);
    for run in runs {
        assert_eq!(run["trace_header"], trace, "{run}");
    }
    let times: Vec<&str> = runs
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    // The other run is a chain of its own.
    let other = invoke(&ops, json!({"action": "chain", "id": "chain-test:by-hand"}))
        .await
        .unwrap();
    assert_eq!(other["runs"].as_array().unwrap().len(), 1, "{other}");
    // An unknown chain is empty; a limit out of bounds is refused.
    let none = invoke(&ops, json!({"action": "chain", "id": "no-such-chain"}))
        .await
        .unwrap();
    assert_eq!(none["runs"], json!([]));
    let (class, _) = invoke(&ops, json!({"action": "chain", "id": root, "limit": 0}))
        .await
        .unwrap_err();
    assert_eq!(class, "invalid_kwargs");

    drop(ops);
    stack.cleanup().await;
}
