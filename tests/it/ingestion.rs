use std::time::Duration;

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use dualcaster_tools::local::stub::Content;
use integration_tests::{fixture, FixtureServer, TestStack};
use serde_json::{json, Value};

const VERSION: &str = "2025-11-01T09:05:00.000+00:00";

fn mid_cards() -> Vec<Value> {
    serde_json::from_slice(&std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap())
        .unwrap()
}

/// Non-null prices in `cards`, counted straight from the file.
fn expected_prices(cards: &[Value]) -> i64 {
    cards
        .iter()
        .map(|c| {
            ["usd", "usd_foil", "usd_etched", "eur", "eur_foil", "tix"]
                .iter()
                .filter(|k| !c["prices"][**k].is_null())
                .count() as i64
        })
        .sum()
}

async fn ingestion_function(
    stack: &TestStack,
    server: &FixtureServer,
    extra: &[(&str, &str)],
) -> LocalFunction {
    let mut env = vec![("DD_SCRYFALL_BASE_URL", server.base_url.as_str())];
    env.extend_from_slice(extra);
    stack.function(Queue::Ingestion, &env).await.unwrap()
}

async fn ingest(function: &LocalFunction, kwargs: Value) -> Result<Value, (String, String)> {
    match function
        .invoke(json!({"task": "ingest_scryfall_bulk", "kwargs": kwargs}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Response(report)) => Ok(report),
        Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        }) => Err((error_type, error_message)),
        other => panic!("{other:?}"),
    }
}

async fn count(stack: &TestStack, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bulk_file_lands_as_printings_and_prices_exactly_as_in_the_file() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let cards = mid_cards();
    server.publish_bulk(
        "default_cards",
        VERSION,
        serde_json::to_vec(&cards).unwrap(),
    );
    let function = ingestion_function(&stack, &server, &[]).await;

    let report = ingest(&function, json!({"batch_size": 100})).await.unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    let d = &report["detail"];
    assert_eq!(d["outcome"], "completed");
    assert_eq!(d["cards"], 399);
    assert_eq!(d["cursor"], 399);
    assert_eq!(d["malformed"], 0);
    assert_eq!(d["printings_changed"], 399);
    assert_eq!(d["prices_changed"], expected_prices(&cards));

    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 399);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points").await,
        expected_prices(&cards)
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points WHERE day = '2025-11-01' AND source = 'scryfall' AND price_type = 'retail'").await,
        expected_prices(&cards)
    );

    // One card, field by field, as the file has it.
    let card = &cards[0];
    let id: uuid::Uuid = card["id"].as_str().unwrap().parse().unwrap();
    let (name, set_code, number, rarity, tcgplayer, finishes): (String, String, String, String, Option<i32>, Vec<String>) =
        sqlx::query_as("SELECT name, set_code, collector_number, rarity, tcgplayer_id, finishes FROM printings WHERE scryfall_id = $1")
            .bind(id)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(name, card["name"].as_str().unwrap());
    assert_eq!(set_code, "mid");
    assert_eq!(number, card["collector_number"].as_str().unwrap());
    assert_eq!(rarity, card["rarity"].as_str().unwrap());
    assert_eq!(tcgplayer, card["tcgplayer_id"].as_i64().map(|v| v as i32));
    let expected_finishes: Vec<String> = serde_json::from_value(card["finishes"].clone()).unwrap();
    assert_eq!(finishes, expected_finishes);
    let prices: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT finish, currency, price::text FROM price_points WHERE scryfall_id = $1 ORDER BY currency, finish",
    )
    .bind(id)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let mut expected = Vec::new();
    for (key, finish, currency) in [
        ("eur", "nonfoil", "EUR"),
        ("eur_foil", "foil", "EUR"),
        ("tix", "nonfoil", "TIX"),
        ("usd", "nonfoil", "USD"),
        ("usd_foil", "foil", "USD"),
        ("usd_etched", "etched", "USD"),
    ] {
        if let Some(p) = card["prices"][key].as_str() {
            expected.push((finish.to_owned(), currency.to_owned(), p.to_owned()));
        }
    }
    expected.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    assert_eq!(prices, expected, "prices of {}", card["name"]);

    // The completed ingestion asked for new metrics, once for this version.
    let follow_up = stack
        .sqs
        .receive_message()
        .queue_url(stack.queue_url(Queue::Analytics))
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let bodies: Vec<Value> = follow_up
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["task"], "compute_price_metrics");
    let started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT started_at FROM ingestion_runs WHERE source = 'scryfall:default_cards'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        bodies[0]["id"],
        format!(
            "after:scryfall:default_cards:1761987900:{}",
            started.timestamp_micros()
        )
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn an_unchanged_file_is_skipped_and_a_forced_rerun_changes_nothing() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    server.publish_bulk(
        "default_cards",
        VERSION,
        std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap(),
    );
    let function = ingestion_function(&stack, &server, &[]).await;
    ingest(&function, json!({})).await.unwrap();
    let downloads_before = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("/files/"))
        .count();

    let again = ingest(&function, json!({})).await.unwrap();
    assert_eq!(again["status"], "skipped");
    assert!(
        again["reason"]
            .as_str()
            .unwrap()
            .contains("already ingested"),
        "{again}"
    );
    let downloads_after = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("/files/"))
        .count();
    assert_eq!(
        downloads_after, downloads_before,
        "an unchanged file is not downloaded again"
    );

    let forced = ingest(&function, json!({"force": true})).await.unwrap();
    assert_eq!(forced["status"], "succeeded");
    assert_eq!(forced["detail"]["cards"], 399);
    assert_eq!(forced["detail"]["printings_changed"], 0, "{forced}");
    assert_eq!(forced["detail"]["prices_changed"], 0, "{forced}");
    stack.cleanup().await;
}

#[tokio::test]
async fn malformed_card_objects_are_counted_logged_and_skipped() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let mut cards = mid_cards();
    cards[10].as_object_mut().unwrap().remove("id");
    cards[20]["prices"]["usd"] = json!("twelve dollars");
    cards[30] = json!(["not", "a", "card"]);
    cards[40]["id"] = json!("not-a-uuid");
    let good: Vec<Value> = cards
        .iter()
        .enumerate()
        .filter(|(i, _)| ![10, 20, 30, 40].contains(i))
        .map(|(_, c)| c.clone())
        .collect();
    server.publish_bulk(
        "default_cards",
        VERSION,
        serde_json::to_vec(&cards).unwrap(),
    );
    let function = ingestion_function(&stack, &server, &[]).await;
    let report = ingest(&function, json!({})).await.unwrap();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["detail"]["malformed"], 4);
    assert_eq!(
        report["detail"]["malformed_ids"],
        json!(["(none)", cards[20]["id"], "(none)", "not-a-uuid"])
    );
    assert_eq!(report["counts"], json!({"processed": 399, "errors": 4}));
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 395);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points").await,
        expected_prices(&good)
    );
    assert_eq!(
        count(&stack, "SELECT malformed FROM ingestion_runs").await,
        4
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_nul_in_one_card_makes_that_card_malformed_and_every_other_card_is_ingested() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let mut cards = mid_cards();
    // Postgres text cannot hold U+0000: before, the batch holding this card failed, and so did every run.
    let name = cards[57]["name"].as_str().unwrap().to_owned();
    cards[57]["name"] = json!(format!("{name}\u{0}"));
    let bad_id = cards[57]["id"].clone();
    let good: Vec<Value> = cards
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 57)
        .map(|(_, c)| c.clone())
        .collect();
    let body = serde_json::to_vec(&cards).unwrap();
    assert!(String::from_utf8_lossy(&body).contains(r"\u0000"));
    server.publish_bulk("default_cards", VERSION, body);
    let function = ingestion_function(&stack, &server, &[]).await;

    let report = ingest(&function, json!({"batch_size": 50})).await.unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["detail"]["outcome"], "completed");
    assert_eq!(report["detail"]["cursor"], 399);
    assert_eq!(report["detail"]["malformed"], 1);
    assert_eq!(report["detail"]["malformed_ids"], json!([bad_id]));
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 398);
    assert_eq!(
        count(
            &stack,
            &format!(
                "SELECT count(*) FROM printings WHERE scryfall_id = '{}'",
                bad_id.as_str().unwrap()
            )
        )
        .await,
        0
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points").await,
        expected_prices(&good)
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_bulk_file_on_a_slow_link_completes_however_long_its_body_takes() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let bytes = std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap();
    // 2 MB at 400 KB/s: about five seconds of body, against one and a half for the response to start.
    server.publish_bulk(
        "default_cards",
        VERSION,
        Content::Throttled {
            bytes: bytes.into(),
            bytes_per_sec: 400_000,
        },
    );
    let function = ingestion_function(
        &stack,
        &server,
        &[("DD_UPSTREAM_RESPONSE_TIMEOUT_MS", "1500")],
    )
    .await;
    let started = std::time::Instant::now();
    let report = ingest(&function, json!({})).await.unwrap();
    let took = started.elapsed();
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["detail"]["cards"], 399);
    assert!(
        took > Duration::from_secs(4),
        "{took:?}: the link was not slow"
    );
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 399);
    stack.cleanup().await;
}

#[tokio::test]
async fn a_download_that_stops_sending_fails_retryably_after_the_read_timeout() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let bytes = std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap();
    let after = bytes.len() / 2;
    server.publish_bulk(
        "default_cards",
        VERSION,
        Content::Stalls {
            bytes: bytes.into(),
            after,
        },
    );
    let function =
        ingestion_function(&stack, &server, &[("DD_UPSTREAM_READ_TIMEOUT_MS", "1000")]).await;
    let started = std::time::Instant::now();
    let (error_type, message) = ingest(&function, json!({"batch_size": 50}))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(error_type, "corrupt_download", "{message}");
    assert!(message.contains("(retryable)"), "{message}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // Only whole batches of what arrived were applied.
    let cursor = count(&stack, "SELECT cursor FROM ingestion_runs").await;
    assert!(cursor > 0 && cursor % 50 == 0 && cursor < 399, "{cursor}");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM printings").await,
        cursor
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_at_its_byte_limit_and_the_function_lives_on() {
    use std::io::Write;
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    // 256 MiB of decoded JSON (an array of one long string) in about a megabyte of gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"[\"").unwrap();
    let run = vec![b'a'; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&run).unwrap();
    }
    gz.write_all(b"\"]").unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    server.publish_bulk("default_cards", VERSION, Content::Gzip(bomb.into()));
    let function =
        ingestion_function(&stack, &server, &[("DD_DOWNLOAD_MAX_BYTES", "33554432")]).await;
    let (error_type, message) = ingest(&function, json!({"batch_size": 5000}))
        .await
        .unwrap_err();
    assert_eq!(error_type, "download_too_large", "{message}");
    assert!(
        message.contains("the document is over its limit of 33554432 bytes"),
        "{message}"
    );
    assert!(message.ends_with("(permanent)"), "{message}");
    let status: String = sqlx::query_scalar("SELECT status FROM ingestion_runs")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    // The same process answers the next invocation, the same way.
    let (again, _) = ingest(&function, json!({"force": true})).await.unwrap_err();
    assert_eq!(again, "download_too_large");
    stack.cleanup().await;
}

#[tokio::test]
async fn one_card_object_over_the_item_limit_is_refused_and_named() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let mut cards = mid_cards();
    cards.truncate(3);
    // A 100 MB name: over the 64 MiB one item may take by default.
    cards[2]["name"] = json!("x".repeat(100 << 20));
    server.publish_bulk(
        "default_cards",
        VERSION,
        serde_json::to_vec(&cards).unwrap(),
    );
    let function = ingestion_function(&stack, &server, &[]).await;
    let (error_type, message) = ingest(&function, json!({"batch_size": 10}))
        .await
        .unwrap_err();
    assert_eq!(error_type, "download_too_large", "{message}");
    assert!(
        message.contains("item 3 is over the limit of 67108864 bytes for one item"),
        "{message}"
    );
    assert!(message.ends_with("(permanent)"), "{message}");
    stack.cleanup().await;
}

#[tokio::test]
async fn a_truncated_download_fails_retryably_and_the_next_run_resumes_without_gaps() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let full = std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap();
    server.publish_bulk(
        "default_cards",
        VERSION,
        full[..full.len() * 6 / 10].to_vec(),
    );
    let function = ingestion_function(&stack, &server, &[]).await;

    let (error_type, message) = ingest(&function, json!({"batch_size": 50}))
        .await
        .unwrap_err();
    assert_eq!(error_type, "corrupt_download");
    assert!(
        message.contains("truncated or corrupt") && message.contains("(retryable)"),
        "{message}"
    );
    let (status, cursor): (String, i64) =
        sqlx::query_as("SELECT status, cursor FROM ingestion_runs")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(
        cursor > 0 && cursor < 399 && cursor % 50 == 0,
        "only whole batches were applied: {cursor}"
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM printings").await,
        cursor
    );

    // The download works again: the run resumes after the applied batches.
    server.publish_bulk("default_cards", VERSION, full);
    let report = ingest(&function, json!({"batch_size": 50})).await.unwrap();
    assert_eq!(report["detail"]["outcome"], "completed");
    assert_eq!(report["detail"]["resumed_from"], cursor);
    assert_eq!(report["detail"]["cards"], 399 - cursor);
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 399);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points").await,
        expected_prices(&mid_cards())
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_long_run_continues_in_follow_up_messages_without_gaps_or_duplicates() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    server.publish_bulk(
        "default_cards",
        VERSION,
        std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap(),
    );
    // A reserve longer than the function timeout (30 s): every invocation stops after one batch.
    let function = ingestion_function(&stack, &server, &[("DD_TASK_RESERVE_MS", "40000")]).await;
    let source = stack.event_source(Queue::Ingestion, 1).await.unwrap();
    stack
        .send(
            Queue::Ingestion,
            &json!({"task": "ingest_scryfall_bulk", "kwargs": {"batch_size": 100}}).to_string(),
        )
        .await
        .unwrap();
    let dispatches = stack
        .drain(&source, &function, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        dispatches.len(),
        4,
        "399 cards in batches of 100: {dispatches:?}"
    );

    let runs: Vec<(String, Value)> = sqlx::query_as(
        "SELECT run_key, detail FROM task_runs WHERE task = 'ingest_scryfall_bulk' ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let outcomes: Vec<(&str, i64, i64)> = runs
        .iter()
        .map(|(_, d)| {
            (
                d["outcome"].as_str().unwrap(),
                d["resumed_from"].as_i64().unwrap(),
                d["cursor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("continued", 0, 100),
            ("continued", 100, 200),
            ("continued", 200, 300),
            ("completed", 300, 399)
        ]
    );
    assert!(
        runs[1].0.starts_with("continue:scryfall:default_cards:"),
        "{}",
        runs[1].0
    );
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 399);
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points").await,
        expected_prices(&mid_cards())
    );
    let (status, cursor): (String, i64) =
        sqlx::query_as("SELECT status, cursor FROM ingestion_runs")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), cursor), ("succeeded", 399));
    stack.cleanup().await;
}
