use std::collections::BTreeMap;

use dualcaster::local::function::{Invoked, LocalFunction};
use dualcaster::local::runtime_api::InvokeOutcome;
use dualcaster::queue::Queue;
use integration_tests::{fixture, FixtureServer, TestStack};
use serde_json::{json, Value};

async fn run(function: &LocalFunction, task: &str, kwargs: Value) -> Value {
    match function
        .invoke(json!({"task": task, "kwargs": kwargs}))
        .await
        .unwrap()
    {
        Invoked::Outcome(InvokeOutcome::Response(report)) => report,
        other => panic!("{task}: {other:?}"),
    }
}

/// The metrics row of one series, as text (exact decimals) or floats.
async fn metrics(stack: &TestStack, scryfall_id: uuid::Uuid) -> BTreeMap<String, Option<String>> {
    let row: Value = sqlx::query_scalar(
        "SELECT to_jsonb(m) FROM price_metrics m WHERE scryfall_id = $1 AND source = 'tcgplayer' AND finish = 'nonfoil'",
    )
    .bind(scryfall_id)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    row.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                if v.is_null() {
                    None
                } else {
                    Some(v.to_string().trim_matches('"').to_owned())
                },
            )
        })
        .collect()
}

fn f(v: &Option<String>) -> f64 {
    v.as_deref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_follow_the_weekly_history_and_later_runs_only_touch_what_is_new() {
    let stack = TestStack::start().await.unwrap();
    let server = FixtureServer::start().await.unwrap();
    server.publish_file(
        "v4.json",
        std::fs::read(fixture("mtgjson/v4_history_WAR.json")).unwrap(),
    );
    let mtgjson = format!("{}/files", server.base_url);
    let ingestion = stack
        .function(
            Queue::Ingestion,
            &[("DD_MTGJSON_BASE_URL", mtgjson.as_str())],
        )
        .await
        .unwrap();
    let analytics = stack.function(Queue::Analytics, &[]).await.unwrap();
    run(
        &ingestion,
        "ingest_mtgjson_prices",
        json!({"file": "v4_history", "path": "v4.json"}),
    )
    .await;

    let first = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let series: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT scryfall_id, source, price_type, finish, currency FROM price_points) s",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        first["detail"]["full"], true,
        "the first run computes everything"
    );
    assert_eq!(first["detail"]["series"], series);
    assert_eq!(first["detail"]["changed"], series);

    // One card with 13 weekly points, checked against its series in the file.
    let slice: Value =
        serde_json::from_slice(&std::fs::read(fixture("mtgjson/v4_history_WAR.json")).unwrap())
            .unwrap();
    let (_, card) = slice["data"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, c)| {
            c["prices"]["paper"]
                .as_object()
                .is_some_and(|p| p.len() == 13)
        })
        .unwrap();
    let id: uuid::Uuid = card["scryfallId"].as_str().unwrap().parse().unwrap();
    let day = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
    let paper: Vec<(chrono::NaiveDate, f64)> = card["prices"]["paper"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(d, p)| (day(d), p.as_f64().unwrap()))
        .collect();
    let (latest_day, latest) = *paper.last().unwrap();
    // The latest point at or before `latest - n` days, but no older than `latest - 2n`.
    let reference = |n: i64| {
        paper
            .iter()
            .rev()
            .find(|(d, _)| *d <= latest_day - chrono::Duration::days(n))
            .filter(|(d, _)| *d >= latest_day - chrono::Duration::days(2 * n))
            .map(|(_, p)| *p)
    };
    let within = |n: i64| -> Vec<(chrono::NaiveDate, f64)> {
        paper
            .iter()
            .filter(|(d, _)| *d > latest_day - chrono::Duration::days(n))
            .copied()
            .collect()
    };
    let m = metrics(&stack, id).await;
    assert_eq!(
        m["latest_day"].as_deref(),
        Some(latest_day.to_string().as_str())
    );
    assert!((f(&m["latest_price"]) - latest).abs() < 1e-9);
    assert_eq!(m["change_1d"], None, "weekly history has no 1-day change");
    assert!((f(&m["change_7d"]) - (latest - reference(7).unwrap())).abs() < 1e-9);
    assert!((f(&m["change_30d"]) - (latest - reference(30).unwrap())).abs() < 1e-9);
    let last30 = within(30);
    let ma30 = last30.iter().map(|(_, p)| p).sum::<f64>() / last30.len() as f64;
    assert!((f(&m["ma_30d"]) - ma30).abs() < 1e-4, "{m:?}");
    assert!((f(&m["ma_7d"]) - latest).abs() < 1e-4);
    let high = last30.iter().map(|(_, p)| *p).fold(f64::MIN, f64::max);
    let low = last30.iter().map(|(_, p)| *p).fold(f64::MAX, f64::min);
    assert!((f(&m["high_30d"]) - high).abs() < 1e-9 && (f(&m["low_30d"]) - low).abs() < 1e-9);
    assert_eq!(m["points"].as_deref(), Some("13"));
    assert_eq!(
        m["points_30d"].as_deref(),
        Some(last30.len().to_string().as_str())
    );
    // Log returns of the 30-day points against the point before each (the first against the one before the window).
    let first = paper.iter().position(|(d, _)| *d == last30[0].0).unwrap();
    let returns: Vec<f64> = paper[first - 1..]
        .windows(2)
        .map(|w| (w[1].1 / w[0].1).ln())
        .collect();
    let mean = returns.iter().sum::<f64>() / returns.len() as f64;
    let sd = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
        / (returns.len() as f64 - 1.0))
        .sqrt();
    assert!((f(&m["volatility_30d"]) - sd).abs() < 1e-9, "{m:?} vs {sd}");

    // Nothing new: nothing recomputed.
    let idle = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(idle["detail"]["full"], false);
    assert_eq!(idle["detail"]["changed"], 0, "{idle}");

    // A new day for one card: only its series moves.
    let next_day = latest_day + chrono::Duration::days(7);
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         VALUES ($1, 'tcgplayer', 'retail', 'nonfoil', 'USD', $2, 99.99)",
    )
    .bind(id)
    .bind(next_day)
    .execute(&stack.pool)
    .await
    .unwrap();
    let next = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(next["detail"]["changed"], 1, "{next}");
    let m = metrics(&stack, id).await;
    assert_eq!(
        m["latest_day"].as_deref(),
        Some(next_day.to_string().as_str())
    );
    assert_eq!(m["latest_price"].as_deref(), Some("99.99"));
    assert!((f(&m["change_7d"]) - (99.99 - latest)).abs() < 1e-9);
    stack.cleanup().await;
}

/// Adds a printing and a weekly retail series for it.
async fn series(stack: &TestStack, name: &str, prices: &[f64]) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity) VALUES ($1, $2, 'tst', '1', 'rare')")
        .bind(id)
        .bind(name)
        .execute(&stack.pool)
        .await
        .unwrap();
    let start = chrono::NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
    for (i, p) in prices.iter().enumerate() {
        sqlx::query(
            "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
             VALUES ($1, 'tcgplayer', 'retail', 'nonfoil', 'USD', $2, $3::float8::numeric)",
        )
        .bind(id)
        .bind(start + chrono::Duration::days(7 * i as i64))
        .bind(p)
        .execute(&stack.pool)
        .await
        .unwrap();
    }
    id
}

#[tokio::test]
async fn signals_flag_spikes_breakouts_drops_and_arbitrage_once_per_day() {
    let stack = TestStack::start().await.unwrap();
    let analytics = stack.function(Queue::Analytics, &[]).await.unwrap();
    let riser = series(
        &stack,
        "Riser",
        &[2.0, 2.02, 1.98, 2.0, 2.01, 1.99, 2.0, 3.0],
    )
    .await;
    let faller = series(
        &stack,
        "Faller",
        &[5.0, 5.1, 4.9, 5.0, 5.05, 4.95, 5.0, 3.0],
    )
    .await;
    let bulk = series(
        &stack,
        "Bulk Common",
        &[0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.25],
    )
    .await;
    let steady = series(
        &stack,
        "Steady",
        &[4.0, 4.1, 3.9, 4.0, 4.05, 3.95, 4.0, 4.02],
    )
    .await;
    // A store buys Steady for more than the cheapest store sells it, on its latest day.
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         VALUES ($1, 'cardkingdom', 'buylist', 'nonfoil', 'USD', '2026-10-25', 4.40)",
    )
    .bind(steady)
    .execute(&stack.pool)
    .await
    .unwrap();

    run(&analytics, "compute_price_metrics", json!({})).await;
    let report = run(&analytics, "detect_price_signals", json!({})).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let signals: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT p.name, s.kind, s.strength::text FROM price_signals s JOIN printings p USING (scryfall_id) ORDER BY 1, 2",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let kinds: Vec<(&str, &str)> = signals
        .iter()
        .map(|(n, k, _)| (n.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("Faller", "drop"),
            ("Riser", "breakout"),
            ("Riser", "spike"),
            ("Steady", "buylist_arbitrage")
        ],
        "the bulk common's +150% stays quiet under the minimum price"
    );
    let strength = |name: &str, kind: &str| {
        signals
            .iter()
            .find(|s| s.0 == name && s.1 == kind)
            .unwrap()
            .2
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        (strength("Riser", "spike") - 50.0 / 20.0).abs() < 1e-3,
        "a 50% move over the 20% threshold"
    );
    // Over the prior 30 days (the four points before the latest): high 2.01.
    assert!((strength("Riser", "breakout") - (3.0 / 2.01 - 1.0)).abs() < 1e-3);
    assert!((strength("Steady", "buylist_arbitrage") - (4.40 / 4.02 - 1.0)).abs() < 1e-3);
    let details: Value =
        sqlx::query_scalar("SELECT details FROM price_signals WHERE kind = 'buylist_arbitrage'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(details["retail_source"], "tcgplayer");
    assert_eq!(details["buylist_source"], "cardkingdom");
    let _ = (riser, faller, bulk);

    // The same day is not signalled twice, even on a full pass.
    let again = run(&analytics, "detect_price_signals", json!({"full": true})).await;
    assert_eq!(again["counts"]["processed"], 0, "{again}");
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM price_signals")
            .fetch_one(&stack.pool)
            .await
            .unwrap(),
        4
    );

    // Thresholds are arguments: a looser spike threshold and no volatility test find more.
    let loose = run(
        &analytics,
        "detect_price_signals",
        json!({"full": true, "spike_pct": 1.0, "min_sigmas": 0, "min_price": 0}),
    )
    .await;
    assert!(loose["detail"]["spikes"].as_u64().unwrap() >= 1, "{loose}");
    stack.cleanup().await;
}
