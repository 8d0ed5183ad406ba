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
    // Another chain at the same time, which must not show up in this one (on another queue: a second
    // metrics run at once would hold the single-instance lease, and the chain's would be skipped).
    let default = stack.function(Queue::Default, &[]).await.unwrap();
    let default_source = stack.event_source(Queue::Default, 10).await.unwrap();
    stack
        .send(
            Queue::Default,
            r#"{"task": "ping", "id": "chain-test:by-hand"}"#,
        )
        .await
        .unwrap();
    stack
        .drain(&default_source, &default, timeout)
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

/// A metric as the dashboard or an alarm names it: namespace, name and dimension names (sorted).
type MetricKey = (String, String, Vec<String>);

/// Every (namespace, metric, dimension names) the EMF lines in `log` declare, with the dimension values
/// each line carried.
fn emitted(log: &str) -> Vec<(MetricKey, Value)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Ok(doc) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(directives) = doc["_aws"]["CloudWatchMetrics"].as_array() else {
            continue;
        };
        for d in directives {
            let namespace = d["Namespace"].as_str().unwrap().to_owned();
            for dims in d["Dimensions"].as_array().unwrap() {
                let mut names: Vec<String> = dims
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
                    .collect();
                names.sort();
                for m in d["Metrics"].as_array().unwrap() {
                    let name = m["Name"].as_str().unwrap().to_owned();
                    assert!(
                        doc[&name].is_number(),
                        "{name} declared without a value: {line}"
                    );
                    out.push(((namespace.clone(), name, names.clone()), doc.clone()));
                }
            }
        }
    }
    out
}

/// The metrics a dashboard widget names, with their dimension values; a `SEARCH` expression gives its
/// namespace, dimension names and metric name. Checks the widget's shape as CloudWatch's dashboard body
/// reference states it on the way.
fn widget_metrics(widget: &Value) -> Vec<(MetricKey, Vec<(String, String)>)> {
    assert_eq!(widget["type"], "metric", "{widget}");
    let width = widget["width"].as_u64().unwrap();
    assert!((1..=24).contains(&width), "{widget}");
    let p = &widget["properties"];
    assert!(
        p["region"].is_string() && p["title"].is_string(),
        "{widget}"
    );
    let mut out = Vec::new();
    for line in p["metrics"].as_array().unwrap() {
        let parts = line.as_array().unwrap();
        if let Some(expression) = parts[0]["expression"].as_str() {
            if let Some(search) = expression.strip_prefix("SEARCH('{") {
                let (schema, rest) = search.split_once('}').unwrap();
                let mut schema = schema.split(',').map(str::to_owned);
                let namespace = schema.next().unwrap();
                let mut dims: Vec<String> = schema.collect();
                dims.sort();
                let name = rest
                    .split_once("MetricName=\"")
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(n, _)| n.to_owned())
                    .unwrap();
                out.push(((namespace, name, dims), Vec::new()));
            }
            continue;
        }
        let options = parts.last().unwrap();
        assert!(options.is_object(), "{line}");
        let stat = options["stat"].as_str().unwrap();
        assert!(
            ["Sum", "Maximum", "SampleCount", "p50", "p99"].contains(&stat),
            "{line}"
        );
        let strings: Vec<String> = parts[..parts.len() - 1]
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        assert!(
            strings.len() >= 2 && strings.len().is_multiple_of(2),
            "{line}"
        );
        let pairs: Vec<(String, String)> = strings[2..]
            .chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect();
        let mut dims: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
        dims.sort();
        out.push(((strings[0].clone(), strings[1].clone(), dims), pairs));
    }
    out
}

#[tokio::test]
async fn every_task_metric_the_dashboard_and_alarms_name_is_one_the_runtime_emits() {
    use dualcaster_tools::infra::{observability, without_functions};

    let stack = TestStack::start().await.unwrap();
    // The default function with its metrics on, its stdout (where EMF goes) in a file of its own.
    let mut env = stack.function_env();
    env.remove("DD_METRICS_DISABLED");
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/it-logs/{}-emf.log", stack.name));
    let _ = std::fs::remove_file(&log);
    let function = LocalFunction::start(
        &format!("{}-default", stack.name),
        &dualcaster_tools::local::function_binary(Queue::Default).unwrap(),
        env,
        Duration::from_secs(30),
        Some(log.clone()),
    )
    .await
    .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    // A heartbeat that succeeds and one that fails for good: every run metric, a failure's class and the
    // heartbeat's lease count.
    for body in [
        r#"{"task": "ping", "id": "emf-ok"}"#,
        r#"{"task": "ping", "id": "emf-failed", "kwargs": {"drill": "permanent"}}"#,
    ] {
        stack.send(Queue::Default, body).await.unwrap();
    }
    stack
        .drain(&source, &function, Duration::from_secs(60))
        .await
        .unwrap();
    drop(function);
    let emitted = emitted(&std::fs::read_to_string(&log).unwrap());
    let keys: std::collections::BTreeSet<&MetricKey> = emitted.iter().map(|(k, _)| k).collect();
    assert!(
        emitted
            .iter()
            .any(|((_, name, _), doc)| name == "failures" && doc["error_class"] == "task_failed"),
        "{keys:?}"
    );

    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
    )
    .unwrap();
    let (plain, _) = without_functions(&text).unwrap();
    let dashboards =
        dualcaster_tools::local::emulator::dashboards(&plain, "st", "us-east-1").unwrap();
    assert_eq!(dashboards.len(), 1);
    let body: Value = serde_json::from_str(&dashboards[0].1).unwrap();
    let mut named: Vec<(MetricKey, Vec<(String, String)>)> = body["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(widget_metrics)
        .collect();
    let registry = dualcaster::tasks::registry();
    for alarm in observability::alarms(&registry) {
        let mut dims: Vec<String> = alarm
            .dimensions
            .iter()
            .map(|(k, _)| (*k).to_owned())
            .collect();
        dims.sort();
        let pairs = alarm
            .dimensions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        named.push((
            (alarm.namespace.to_owned(), alarm.metric.clone(), dims),
            pairs,
        ));
    }

    let ours: Vec<&(MetricKey, Vec<(String, String)>)> = named
        .iter()
        .filter(|((ns, _, _), _)| ns == dualcaster::metrics::NAMESPACE)
        .collect();
    assert!(ours.len() > 50, "{}", ours.len());
    for ((ns, name, dims), pairs) in ours {
        assert!(
            keys.contains(&(ns.clone(), name.clone(), dims.clone())),
            "the dashboard or an alarm names {name} by {dims:?}, which no EMF line declares; emitted: {keys:?}"
        );
        // Its queue and task values are a registered task and the queue it runs on.
        let value = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if let Some(task) = value("task") {
            let spec = registry
                .get(task)
                .unwrap_or_else(|| panic!("unknown task {task}"));
            assert_eq!(value("queue"), Some(spec.queue.as_str()), "{task}");
        }
    }
    // The AWS metrics name the stack's own queues, functions and rules.
    let template = dualcaster_tools::template::Template::parse(&text).unwrap();
    let queues: Vec<String> = template.queues.iter().map(|q| q.name("st")).collect();
    let rules: Vec<String> = template.rules.iter().map(|r| r.name("st")).collect();
    let functions: Vec<String> = template
        .functions
        .iter()
        .map(|f| {
            f.name_template
                .as_ref()
                .unwrap()
                .replace("${AWS::StackName}", "st")
        })
        .collect();
    for ((ns, name, _), pairs) in named
        .iter()
        .filter(|((ns, _, _), _)| ns.starts_with("AWS/"))
    {
        for (k, v) in pairs {
            let v = v.replace("${AWS::StackName}", "st");
            let known = match k.as_str() {
                "QueueName" => queues.contains(&v) || v.starts_with("!GetAtt"),
                "RuleName" => rules.contains(&v),
                "FunctionName" => functions.contains(&v),
                _ => false,
            };
            assert!(
                known,
                "{ns} {name}: {k} = {v} is not a resource of the stack"
            );
        }
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn the_heartbeat_reports_a_run_lease_held_longer_than_its_task_can_run() {
    use chrono::{Duration as Age, Utc};
    use dualcaster::lease::{Lease, LeaseKind, LeaseStore};

    let stack = TestStack::start().await.unwrap();
    let store = crate::leases::store(&stack);
    let now = Utc::now();
    // dlq_report runs on the default queue: 120 s at most, plus a minute of slack. Still live (expires in
    // the future), as a holder that keeps renewing would leave it.
    for (task, age_secs) in [
        ("dlq_report", 300),
        ("dlq_purge", 30),
        ("compute_price_metrics", 300),
    ] {
        let lease = Lease::new(
            format!("run:{task}"),
            LeaseKind::Run,
            "a-gone-container",
            task,
            now - Age::seconds(age_secs),
            now + Age::seconds(600),
        );
        store
            .acquire(&lease, now - Age::seconds(age_secs))
            .await
            .unwrap();
    }
    let default = stack.function(Queue::Default, &[]).await.unwrap();
    let report = invoke(&default, json!({"task": "ping", "id": "lease-check"}))
        .await
        .unwrap();
    // By hand: dlq_report 300 s > 180 s; dlq_purge 30 s is fine; compute_price_metrics (analytics, 900 s)
    // at 300 s is fine.
    assert_eq!(
        report["detail"]["leases_held_past_limit"],
        json!(["run:dlq_report"]),
        "{report}"
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn status_counts_what_the_queues_runs_and_leases_hold() {
    use chrono::{Duration as Age, Utc};
    use dualcaster::lease::{Lease, LeaseKind, LeaseStore};
    use dualcaster_tools::status::{collect, render, Sources};

    let stack = TestStack::start().await.unwrap();
    let default = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    for body in [
        r#"{"task": "ping", "id": "status-1"}"#,
        r#"{"task": "ping", "id": "status-2"}"#,
        r#"{"task": "ping", "id": "status-3", "kwargs": {"drill": "permanent"}}"#,
    ] {
        stack.send(Queue::Default, body).await.unwrap();
    }
    stack
        .drain(&source, &default, Duration::from_secs(60))
        .await
        .unwrap();
    // Two messages still waiting on the analytics queue, one delayed.
    stack
        .send(Queue::Analytics, r#"{"task": "compute_price_metrics"}"#)
        .await
        .unwrap();
    stack
        .sqs
        .send_message()
        .queue_url(stack.queue_url(Queue::Analytics))
        .message_body(r#"{"task": "detect_price_signals"}"#)
        .delay_seconds(60)
        .send()
        .await
        .unwrap();
    let store = crate::leases::store(&stack);
    let now = Utc::now();
    let lease = Lease::new(
        "run:prune_price_history",
        LeaseKind::Run,
        "container-9",
        "prune_price_history",
        now - Age::seconds(30),
        now + Age::seconds(90),
    );
    store.acquire(&lease, now - Age::seconds(30)).await.unwrap();

    let registry = dualcaster::tasks::registry();
    let sources = Sources {
        sqs: &stack.sqs,
        urls: Queue::ALL
            .iter()
            .map(|q| {
                (
                    *q,
                    stack.queue_url(*q).to_owned(),
                    stack.dlq_url(*q).to_owned(),
                )
            })
            .collect(),
        db: &stack.pool,
        leases: &store,
        registry: &registry,
    };
    let status = collect(&sources, Duration::from_secs(3600), Utc::now())
        .await
        .unwrap();

    let depth = |q: Queue| {
        let s = status.queues.iter().find(|s| s.queue == q).unwrap();
        (s.visible, s.in_flight, s.delayed, s.dead_letters)
    };
    assert_eq!(depth(Queue::Default), (0, 0, 0, 1));
    assert_eq!(depth(Queue::Analytics), (1, 0, 1, 0));
    assert_eq!(depth(Queue::Ingestion), (0, 0, 0, 0));
    assert_eq!(status.runs.len(), 1, "{:?}", status.runs);
    let ping = &status.runs[0];
    assert_eq!(
        (
            ping.task.as_str(),
            ping.succeeded,
            ping.failed,
            ping.dead_lettered,
            ping.retried
        ),
        ("ping", 2, 1, 1, 0)
    );
    assert!(ping.p50_ms.unwrap() <= ping.p99_ms.unwrap());
    let failures: Vec<(&str, &str, i64)> = status
        .failures
        .iter()
        .map(|f| (f.task.as_str(), f.error_class.as_str(), f.count))
        .collect();
    assert_eq!(failures, [("ping", "task_failed", 1)]);
    // Every schedule, each firing within the day (none is rarer than daily), soonest first.
    assert_eq!(status.schedules.len(), registry.schedules().count());
    let nexts: Vec<_> = status.schedules.iter().map(|s| s.next.unwrap()).collect();
    assert!(nexts.windows(2).all(|w| w[0] <= w[1]), "{nexts:?}");
    assert!(nexts
        .iter()
        .all(|t| *t > status.at && *t <= status.at + Age::days(1)));
    assert_eq!(status.leases.len(), 1);
    assert_eq!(status.leases[0].owner, "container-9");
    assert!(
        (29..=40).contains(&status.leases[0].held_secs),
        "{:?}",
        status.leases
    );
    let text = render(&status);
    assert!(text.contains("task_failed"), "{text}");
    assert!(text.contains("run:prune_price_history"), "{text}");
    stack.cleanup().await;
}

/// The X-Ray trace a producer put on a message (SQS's `AWSTraceHeader`) stays with it through the DLQ and a
/// filtered redrive, which moves messages itself: the redriven run is still in the producer's trace.
#[tokio::test]
async fn a_producers_trace_survives_the_dlq_and_a_filtered_redrive() {
    let stack = TestStack::start().await.unwrap();
    let function = stack.function(Queue::Default, &[]).await.unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    stack
        .sqs
        .send_message()
        .queue_url(stack.queue_url(Queue::Default))
        .message_body(
            r#"{"task": "ping", "id": "traced-failure", "kwargs": {"drill": "permanent"}}"#,
        )
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
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stack.depth(stack.dlq_url(Queue::Default)).await.unwrap(), 1);
    let redrive = json!({"queue": "default", "task": "ping", "dry_run": false});
    let out = invoke(&function, json!({"task": "dlq_redrive", "kwargs": redrive}))
        .await
        .unwrap();
    assert_eq!(out["detail"]["moved"], 1, "{out}");
    stack
        .drain(&source, &function, Duration::from_secs(30))
        .await
        .unwrap();
    // Two runs of the message, before the DLQ and after the redrive, both in the producer's trace.
    let traces: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT trace_header FROM task_runs WHERE run_key = 'traced-failure' ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(traces, vec![Some(trace.to_owned()); 2]);
    stack.cleanup().await;
}
