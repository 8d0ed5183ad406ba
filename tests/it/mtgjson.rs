use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
use integration_tests::{fixture, FixtureServer, TestStack};
use serde_json::{json, Map, Value};

fn v4_slice() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("mtgjson/v4_history_WAR.json")).unwrap()).unwrap()
}

async fn function(stack: &TestStack, server: &FixtureServer) -> LocalFunction {
    // MTGJSON's files are served from the stub's /files.
    let mtgjson = format!("{}/files", server.base_url);
    let env = [
        ("DD_MTGJSON_BASE_URL", mtgjson.as_str()),
        ("DD_SCRYFALL_BASE_URL", server.base_url.as_str()),
    ];
    stack.function(Queue::Ingestion, &env).await.unwrap()
}

async fn run(function: &LocalFunction, task: &str, kwargs: Value) -> Value {
    match function
        .invoke(json!({"task": task, "kwargs": kwargs}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Response(report)) => report,
        other => panic!("{task} {kwargs}: {other:?}"),
    }
}

async fn count(stack: &TestStack, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

const V4: &str = "ingest_mtgjson_prices";

/// An MTGJSON document, `meta` first as MTGJSON writes it (serde_json's maps would sort `data` first).
fn document(meta: Value, data: Map<String, Value>) -> Vec<u8> {
    format!(r#"{{"meta":{meta},"data":{}}}"#, Value::Object(data)).into_bytes()
}

#[tokio::test]
async fn the_v4_history_backfills_printings_and_weekly_prices() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let slice = v4_slice();
    server.publish_file(
        "v4.json",
        std::fs::read(fixture("mtgjson/v4_history_WAR.json")).unwrap(),
    );
    let f = function(&stack, &server).await;

    let report = run(
        &f,
        V4,
        json!({"file": "v4_history", "path": "v4.json", "batch_size": 100}),
    )
    .await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let d = &report["detail"];
    assert_eq!(d["entries"], 275);
    assert_eq!(d["printings_added"], 275);
    assert_eq!(d["prices_changed"], 7006);
    assert_eq!(d["file_version"], "2019-07-21T00:00:00Z");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM printings WHERE set_code = 'war' AND mtgjson_uuid IS NOT NULL"
        )
        .await,
        275
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM price_points").await,
        7006
    );
    assert_eq!(
        count(&stack, "SELECT count(DISTINCT day) FROM price_points").await,
        13
    );

    // One card's series, week by week, as in the file.
    let (uuid, card) = slice["data"].as_object().unwrap().iter().next().unwrap();
    let scryfall_id: uuid::Uuid = card["scryfallId"].as_str().unwrap().parse().unwrap();
    let mtgjson_uuid: uuid::Uuid =
        sqlx::query_scalar("SELECT mtgjson_uuid FROM printings WHERE scryfall_id = $1")
            .bind(scryfall_id)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(mtgjson_uuid.to_string(), *uuid);
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT day::text, price::text FROM price_points WHERE scryfall_id = $1 AND source = 'tcgplayer' \
         AND finish = 'nonfoil' AND price_type = 'retail' ORDER BY day",
    )
    .bind(scryfall_id)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = card["prices"]["paper"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(day, p)| (day.clone(), p.to_string()))
        .collect();
    let normalise = |v: Vec<(String, String)>| -> Vec<(String, f64)> {
        v.into_iter()
            .map(|(d, p)| (d, p.parse::<f64>().unwrap()))
            .collect()
    };
    assert_eq!(normalise(stored), normalise(expected));

    // The same file again: skipped; forced: nothing changes.
    let again = run(&f, V4, json!({"file": "v4_history", "path": "v4.json"})).await;
    assert_eq!(again["status"], "skipped", "{again}");
    let forced = run(
        &f,
        V4,
        json!({"file": "v4_history", "path": "v4.json", "force": true}),
    )
    .await;
    assert_eq!(forced["detail"]["prices_changed"], 0);
    assert_eq!(forced["detail"]["printings_added"], 0);
    stack.cleanup().await;
}

#[tokio::test]
async fn todays_prices_are_keyed_to_printings_with_buylist_apart() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let slice = v4_slice();
    server.publish_file(
        "v4.json",
        std::fs::read(fixture("mtgjson/v4_history_WAR.json")).unwrap(),
    );
    let f = function(&stack, &server).await;
    run(&f, V4, json!({"file": "v4_history", "path": "v4.json"})).await;

    // An AllPricesToday document in MTGJSON's v5 layout, built from the sample: each of 40 cards' last
    // TCGplayer price as today's, one card with a Card Kingdom buylist quote (the layout's documented
    // example), a uuid no printing has, and one malformed entry.
    let mut data = Map::new();
    let entries: Vec<(&String, &Value)> =
        slice["data"].as_object().unwrap().iter().take(40).collect();
    for (uuid, card) in &entries {
        let (_, last) = card["prices"]["paper"]
            .as_object()
            .unwrap()
            .iter()
            .next_back()
            .unwrap();
        data.insert((*uuid).clone(), json!({"paper": {"tcgplayer": {"retail": {"normal": {"2019-07-22": last}}, "currency": "USD"}}}));
    }
    let with_buylist = entries[0].0.clone();
    data.insert(
        with_buylist.clone(),
        json!({"paper": {
            "tcgplayer": {"retail": {"normal": {"2019-07-22": 1.50}}, "currency": "USD"},
            "cardkingdom": {"retail": {"normal": {"2019-07-22": 1.99}}, "buylist": {"normal": {"2019-07-22": 0.80}}, "currency": "USD"}
        }}),
    );
    data.insert("00000000-0000-5000-8000-000000000000".into(), json!({"paper": {"tcgplayer": {"retail": {"normal": {"2019-07-22": 9.99}}, "currency": "USD"}}}));
    data.insert(entries[1].0.clone(), json!({"paper": {"tcgplayer": {"retail": {"normal": {"2019-07-22": "lots"}}, "currency": "USD"}}}));
    server.publish_file(
        "AllPricesToday.json",
        document(json!({"date": "2019-07-22", "version": "5.2.2"}), data),
    );

    let report = run(&f, V4, json!({})).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let d = &report["detail"];
    assert_eq!(d["entries"], 41);
    assert_eq!(d["unmatched"], 1);
    assert_eq!(d["malformed"], 1);
    assert_eq!(
        d["prices_changed"],
        38 + 3,
        "38 plain entries + tcgplayer, cardkingdom retail and buylist"
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM price_points WHERE day = '2019-07-22'"
        )
        .await,
        41
    );
    let buylist: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT pp.source, pp.price_type, pp.price::text FROM price_points pp JOIN printings p USING (scryfall_id) \
         WHERE p.mtgjson_uuid = $1 AND pp.day = '2019-07-22' ORDER BY pp.source, pp.price_type",
    )
    .bind(with_buylist.parse::<uuid::Uuid>().unwrap())
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        buylist,
        vec![
            ("cardkingdom".into(), "buylist".into(), "0.8".into()),
            ("cardkingdom".into(), "retail".into(), "1.99".into()),
            ("tcgplayer".into(), "retail".into(), "1.5".into()),
        ]
    );
    stack.cleanup().await;
}

#[tokio::test]
async fn identifiers_teach_scryfall_printings_their_mtgjson_uuids() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    let cards: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture("scryfall/mid_all_prints.json")).unwrap())
            .unwrap();
    server.publish_bulk(
        "default_cards",
        "2025-11-01T09:05:00Z",
        serde_json::to_vec(&cards).unwrap(),
    );
    let f = function(&stack, &server).await;
    run(&f, "ingest_scryfall_bulk", json!({})).await;

    // An AllIdentifiers document naming ten of the Scryfall printings (uuids made up for the test).
    let mut data = Map::new();
    for (i, card) in cards.iter().take(10).enumerate() {
        let uuid = format!("00000000-0000-5000-8000-{i:012}");
        data.insert(
            uuid,
            json!({"name": card["name"], "identifiers": {"scryfallId": card["id"]}}),
        );
    }
    server.publish_file(
        "AllIdentifiers.json",
        document(json!({"date": "2025-11-01"}), data),
    );
    let report = run(&f, V4, json!({"file": "all_identifiers"})).await;
    assert_eq!(report["detail"]["printings_matched"], 10, "{report}");
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM printings WHERE mtgjson_uuid IS NOT NULL"
        )
        .await,
        10
    );
    stack.cleanup().await;
}
