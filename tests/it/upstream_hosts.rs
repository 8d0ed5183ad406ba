//! The ingestions fetch only from where their upstream publishes: a link in Scryfall's index, a redirect or a
//! `path` argument that points at another host (here a second stub on another port of 127.0.0.1) is refused
//! before any request reaches it, and nothing is recorded as ingested.

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use dualcaster_tools::local::stub::Content;
use integration_tests::{fixture, FixtureServer, TestStack};
use serde_json::{json, Value};

const VERSION: &str = "2025-11-01T09:05:00.000+00:00";

async fn function(stack: &TestStack, server: &FixtureServer) -> LocalFunction {
    let mtgjson = format!("{}/files", server.base_url);
    let env = [
        ("DD_SCRYFALL_BASE_URL", server.base_url.as_str()),
        ("DD_MTGJSON_BASE_URL", mtgjson.as_str()),
    ];
    stack.function(Queue::Ingestion, &env).await.unwrap()
}

/// The task's report, or its error's type and message.
async fn run(
    function: &LocalFunction,
    task: &str,
    kwargs: Value,
) -> Result<Value, (String, String)> {
    match function
        .invoke(json!({"task": task, "kwargs": kwargs}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Response(report)) => Ok(report),
        Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        }) => Err((error_type, error_message)),
        other => panic!("{task}: {other:?}"),
    }
}

async fn count(stack: &TestStack, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

fn cards() -> Vec<u8> {
    std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap()
}

#[tokio::test]
async fn links_redirects_and_paths_to_another_host_are_refused_before_a_request() {
    let stack = TestStack::start().await.unwrap();
    let scryfall = FixtureServer::start().await.unwrap();
    let elsewhere = FixtureServer::start().await.unwrap();
    elsewhere.publish_file("cards.json", cards());
    elsewhere.publish_file("prices.json", b"{}".to_vec());
    let f = function(&stack, &scryfall).await;

    // The index links the bulk file to another host.
    let foreign = format!("{}/files/cards.json", elsewhere.base_url);
    scryfall.publish_bulk_link("default_cards", VERSION, &foreign);
    let (class, message) = run(&f, "ingest_scryfall_bulk", json!({}))
        .await
        .unwrap_err();
    assert_eq!(class, "upstream", "{message}");
    assert!(message.contains(&foreign), "{message}");
    assert!(
        message.contains(scryfall.base_url.trim_start_matches("http://")),
        "{message}"
    );

    // The index links to Scryfall's own host, which redirects to the other one.
    scryfall.publish_bulk("default_cards", VERSION, Content::Redirect(foreign.clone()));
    let (class, message) = run(&f, "ingest_scryfall_bulk", json!({}))
        .await
        .unwrap_err();
    assert_eq!(class, "upstream", "{message}");
    assert!(message.contains("redirect refused"), "{message}");

    // An MTGJSON `path` naming another host, or climbing out of the base URL.
    for path in [
        format!("{}/files/prices.json", elsewhere.base_url),
        "../files/prices.json".to_owned(),
    ] {
        let (class, message) = run(
            &f,
            "ingest_mtgjson_prices",
            json!({"file": "v4_history", "path": path}),
        )
        .await
        .unwrap_err();
        assert_eq!(class, "invalid_kwargs", "{message}");
        assert!(message.contains("`path`"), "{message}");
    }

    assert_eq!(elsewhere.requests(), Vec::<String>::new());
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 0);
    // The redirect was only met after the run had begun: it is recorded as failed, not as ingested.
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM ingestion_runs WHERE status = 'succeeded'"
        )
        .await,
        0
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn a_redirect_within_the_upstream_is_followed() {
    let stack = TestStack::start().await.unwrap();
    let scryfall = FixtureServer::start().await.unwrap();
    scryfall.publish_file("cards.json", cards());
    let moved = format!("{}/files/cards.json", scryfall.base_url);
    scryfall.publish_bulk("default_cards", VERSION, Content::Redirect(moved));
    let f = function(&stack, &scryfall).await;

    let report = run(&f, "ingest_scryfall_bulk", json!({})).await.unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["detail"]["cards"], 399);
    assert_eq!(count(&stack, "SELECT count(*) FROM printings").await, 399);
    let requests = scryfall.requests();
    assert!(
        requests.ends_with(&["/files/cards.json".to_owned()]),
        "{requests:?}"
    );
    stack.cleanup().await;
}
