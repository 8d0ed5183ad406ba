use std::collections::BTreeMap;

use dualcaster::queue::Queue;
use dualcaster_tools::local::function::{Invoked, LocalFunction};
use dualcaster_tools::local::runtime_api::InvokeOutcome;
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

/// The ingestion function, reading MTGJSON from a server that holds the bundled v4 history as `v4.json`, and
/// the analytics function. The server lives as long as the first element.
pub(crate) async fn functions_with_v4_history(
    stack: &TestStack,
) -> (FixtureServer, LocalFunction, LocalFunction) {
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
    (server, ingestion, analytics)
}

#[tokio::test]
async fn metrics_follow_the_weekly_history_and_later_runs_only_touch_what_is_new() {
    let stack = TestStack::start().await.unwrap();
    let (_server, ingestion, analytics) = functions_with_v4_history(&stack).await;
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
    assert_eq!(
        m["points"].as_deref(),
        Some("14"),
        "a new day adds to the count"
    );

    // A backfilled day before the latest one: the series is recounted.
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         VALUES ($1, 'tcgplayer', 'retail', 'nonfoil', 'USD', $2, 1.23)",
    )
    .bind(id)
    .bind(paper[0].0 - chrono::Duration::days(7))
    .execute(&stack.pool)
    .await
    .unwrap();
    run(&analytics, "compute_price_metrics", json!({})).await;
    let m = metrics(&stack, id).await;
    assert_eq!(m["points"].as_deref(), Some("15"));
    assert_eq!(m["latest_price"].as_deref(), Some("99.99"));
    stack.cleanup().await;
}

/// The watermark's contract (docs/data.md): a batch whose transaction began before a run and commits after it
/// is seen by the next run, and with no transaction open elsewhere a run reads nothing the previous one saw.
#[tokio::test]
async fn a_batch_committing_after_a_run_is_seen_by_the_next_and_nothing_is_read_twice() {
    let stack = TestStack::start().await.unwrap();
    let analytics = stack.function(Queue::Analytics, &[]).await.unwrap();
    let id = series(&stack, "Late batch", &[1.0, 1.1, 1.2]).await;
    let first = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(first["detail"]["series"], 1, "{first}");

    // A batch begins (its points' recorded_at is its start), then a run reads while it is still open.
    let mut batch = stack.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         VALUES ($1, 'tcgplayer', 'retail', 'nonfoil', 'USD', '2026-09-27', 5.00)",
    )
    .bind(id)
    .execute(&mut *batch)
    .await
    .unwrap();
    let during = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(during["detail"]["series"], 0, "uncommitted: {during}");
    batch.commit().await.unwrap();

    let after = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(after["detail"]["series"], 1, "the late batch: {after}");
    assert_eq!(after["detail"]["changed"], 1, "{after}");
    let m = metrics(&stack, id).await;
    assert_eq!(m["latest_day"].as_deref(), Some("2026-09-27"));
    assert_eq!(f(&m["latest_price"]), 5.0);
    assert_eq!(m["points"].as_deref(), Some("4"));

    // Nothing new and nothing open: nothing is read again (with a fixed overlap, the last batch would be).
    let idle = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(idle["detail"]["series"], 0, "{idle}");

    // A new price for the latest day: recomputed from the previous count, which it does not change.
    sqlx::query(
        "UPDATE price_points SET price = 6.00, recorded_at = now() WHERE scryfall_id = $1 AND day = '2026-09-27'",
    )
    .bind(id)
    .execute(&stack.pool)
    .await
    .unwrap();
    let repriced = run(&analytics, "compute_price_metrics", json!({})).await;
    assert_eq!(repriced["detail"]["series"], 1, "{repriced}");
    let m = metrics(&stack, id).await;
    assert_eq!(f(&m["latest_price"]), 6.0);
    assert_eq!(m["points"].as_deref(), Some("4"));
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

    // Recommendations from those metrics and signals.
    let recs = run(&analytics, "generate_recommendations", json!({})).await;
    assert_eq!(recs["status"], "succeeded", "{recs}");
    assert_eq!(recs["detail"]["considered"], 4, "{recs}");
    let recommendations = || async {
        sqlx::query_as::<
            _,
            (
                String,
                String,
                String,
                String,
                chrono::DateTime<chrono::Utc>,
            ),
        >(
            "SELECT p.name, r.action, r.confidence::text, r.rationale, r.updated_at \
             FROM price_recommendations r JOIN printings p USING (scryfall_id) ORDER BY 1",
        )
        .fetch_all(&stack.pool)
        .await
        .unwrap()
    };
    let first = recommendations().await;
    let judged: Vec<(&str, &str, &str, &str)> = first
        .iter()
        .map(|(n, a, c, r, _)| (n.as_str(), a.as_str(), c.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        judged,
        vec![
            // +150% but under the minimum price: no signal, so hold, at the lowest hold confidence
            // (0.5 + 0.4 * (1 - min(1, 150 / 20))).
            ("Bulk Common", "hold", "0.500", "Hold: 0.25 USD, +150.0% over 7 days and no signal."),
            // Drop strength 40 / 20 = 2: 0.4 + 0.1 * 2. The 30-day average of 3, 5, 4.95, 5.05, 5 is 4.60.
            ("Faller", "buy", "0.600", "Buy the dip: down 40.0% in 7 days to 3.00 USD, under its 30-day average of 4.60."),
            // The spike (2.5x its threshold) outranks the breakout: 0.5 + 0.1 * 2.5. Average of 3, 2, 1.99, 2.01, 2.
            ("Riser", "sell", "0.750", "Sell into the spike: up 50.0% in 7 days to 3.00 USD, against a 30-day average of 2.20."),
            // Arbitrage 4.40 / 4.02 - 1 = 0.0945: 0.6 + 0.0945, rounded to 0.695.
            ("Steady", "sell", "0.695", "Sell to cardkingdom's buylist at 4.40 USD (nonfoil), 9.5% over the cheapest retail price (4.02 at tcgplayer)."),
        ]
    );
    let basis: Value =
        sqlx::query_scalar("SELECT basis FROM price_recommendations WHERE scryfall_id = $1")
            .bind(riser)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(basis["signals"]["spike"]["strength"], 2.5, "{basis}");
    assert!(basis["signals"]["breakout"].is_object(), "{basis}");

    // Judging again changes nothing, so nothing is rewritten.
    let again = run(
        &analytics,
        "generate_recommendations",
        json!({"full": true}),
    )
    .await;
    assert_eq!(again["detail"]["considered"], 4, "{again}");
    for action in ["buy", "sell", "hold"] {
        assert_eq!(again["detail"][action], 0, "{again}");
    }
    assert_eq!(recommendations().await, first);

    // A week later Steady's arbitrage is out of its last seven days: only Steady is judged again, and it holds.
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         VALUES ($1, 'tcgplayer', 'retail', 'nonfoil', 'USD', '2026-11-01', 4.03)",
    )
    .bind(steady)
    .execute(&stack.pool)
    .await
    .unwrap();
    run(&analytics, "compute_price_metrics", json!({})).await;
    run(&analytics, "detect_price_signals", json!({})).await;
    let next = run(&analytics, "generate_recommendations", json!({})).await;
    let written = |action: &str| next["detail"][action].as_u64().unwrap();
    assert_eq!(
        (written("buy"), written("sell"), written("hold")),
        (0, 0, 1),
        "{next}"
    );
    let after = recommendations().await;
    let steady_now = after.iter().find(|r| r.0 == "Steady").unwrap();
    assert_eq!(steady_now.1, "hold");
    // 4.03 / 4.02 - 1 = 0.25% over the week (rounded to 0.3 in words): 0.5 + 0.4 * (1 - 0.25 / 20).
    assert_eq!(
        steady_now.3,
        "Hold: 4.03 USD, +0.3% over 7 days and no signal."
    );
    assert_eq!(steady_now.2, "0.895");
    for (old, new) in first.iter().zip(&after).filter(|(o, _)| o.0 != "Steady") {
        assert_eq!(old, new, "unchanged recommendations are not rewritten");
    }

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

/// Four flat weeks, then one drop: the returns of the last 30 days are 0, 0, 0 and r, whose sample deviation is
/// |r| / 2, so the drop is exactly 2 deviations (hand-computed: mean r/4, squares 3(r/4)^2 + (3r/4)^2 = 3r^2/4,
/// over 3 gives r^2/4). In float8 the two logarithms of 10.00 -> 5.30 and 10.00 -> 5.80 come out one unit in
/// the last place short of the tie; a series whose drop is below 2 deviations stays quiet.
#[tokio::test]
async fn a_drop_of_exactly_two_deviations_is_a_drop_and_one_below_is_not() {
    let stack = TestStack::start().await.unwrap();
    let analytics = stack.function(Queue::Analytics, &[]).await.unwrap();
    series(&stack, "Tie at 5.30", &[10.0, 10.0, 10.0, 10.0, 5.3]).await;
    series(&stack, "Tie at 5.80", &[10.0, 10.0, 10.0, 10.0, 5.8]).await;
    // Returns 0, 0, ln(10.5/10), ln(5.8/10.5): the 44.76% drop is 1.94 deviations.
    series(
        &stack,
        "Under two deviations",
        &[10.0, 10.0, 10.0, 10.5, 5.8],
    )
    .await;
    run(&analytics, "compute_price_metrics", json!({})).await;
    let report = run(&analytics, "detect_price_signals", json!({})).await;
    assert_eq!(report["detail"]["drops"], 2, "{report}");
    let drops: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.name, s.strength::text FROM price_signals s JOIN printings p USING (scryfall_id) \
         WHERE s.kind = 'drop' ORDER BY 1",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    // Strength: the percent move over the 20% threshold, exactly (47 / 20, 42 / 20).
    assert_eq!(
        drops,
        vec![
            ("Tie at 5.30".to_owned(), "2.350".to_owned()),
            ("Tie at 5.80".to_owned(), "2.100".to_owned())
        ]
    );
    run(&analytics, "generate_recommendations", json!({})).await;
    let dips: Vec<String> = sqlx::query_scalar(
        "SELECT p.name FROM price_recommendations r JOIN printings p USING (scryfall_id) \
         WHERE r.action = 'buy' AND r.rationale LIKE 'Buy the dip%' ORDER BY 1",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(dips, vec!["Tie at 5.30", "Tie at 5.80"]);
    stack.cleanup().await;
}

/// Runs per task since the stack started: (task, disposition, replayed, runs).
async fn runs(stack: &TestStack) -> Vec<(String, String, bool, i64)> {
    sqlx::query_as(
        "SELECT task, status, replayed, count(*) FROM task_runs WHERE trigger = 'sqs' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn ingestion_chains_metrics_signals_and_recommendations_once_per_ingested_version() {
    let stack = TestStack::start().await.unwrap();
    let (_server, ingestion, analytics) = functions_with_v4_history(&stack).await;
    let ingestion_source = stack.event_source(Queue::Ingestion, 10).await.unwrap();
    let analytics_source = stack.event_source(Queue::Analytics, 10).await.unwrap();
    let ingest = json!({"task": "ingest_mtgjson_prices", "kwargs": {"file": "v4_history", "path": "v4.json"}});
    let timeout = std::time::Duration::from_secs(120);

    stack
        .send(Queue::Ingestion, &ingest.to_string())
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
    let once = |task: &str| (task.to_owned(), "succeeded".to_owned(), false, 1);
    assert_eq!(
        runs(&stack).await,
        vec![
            once("compute_price_metrics"),
            once("detect_price_signals"),
            once("generate_recommendations"),
            once("ingest_mtgjson_prices"),
        ]
    );
    // Every printing with a retail series has a recommendation.
    let (printings, recommended): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT scryfall_id) FROM price_metrics WHERE price_type = 'retail'), \
                (SELECT count(*) FROM price_recommendations)",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!(printings > 100, "{printings}");
    assert_eq!(recommended, printings);

    // A redelivered follow-up is answered from the first run's record.
    let follow_up: String =
        sqlx::query_scalar("SELECT run_key FROM task_runs WHERE task = 'compute_price_metrics'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert!(
        follow_up.starts_with("after:mtgjson:v4_history:"),
        "{follow_up}"
    );
    stack
        .send(
            Queue::Analytics,
            &json!({"task": "compute_price_metrics", "id": follow_up}).to_string(),
        )
        .await
        .unwrap();
    stack
        .drain(&analytics_source, &analytics, timeout)
        .await
        .unwrap();
    // The same version ingested again (forced) is a new ingestion run with its own metrics run, which finds
    // nothing changed: the chain stops there.
    let forced = json!({"task": "ingest_mtgjson_prices", "kwargs": {"file": "v4_history", "path": "v4.json", "force": true}});
    stack
        .send(Queue::Ingestion, &forced.to_string())
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
    assert_eq!(
        runs(&stack).await,
        vec![
            ("compute_price_metrics".into(), "succeeded".into(), false, 2),
            ("compute_price_metrics".into(), "succeeded".into(), true, 1),
            once("detect_price_signals"),
            once("generate_recommendations"),
            ("ingest_mtgjson_prices".into(), "succeeded".into(), false, 2),
        ]
    );
    stack.cleanup().await;
}

/// Adds `days` of daily retail points ending today for a new printing; price = day number within the series.
async fn daily_series(stack: &TestStack, days: i64) -> uuid::Uuid {
    let id = series(stack, "Daily", &[]).await;
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT $1, 'tcgplayer', 'retail', 'nonfoil', 'USD', current_date - n::int, (1000 - n)::numeric / 100 \
         FROM generate_series(0, $2 - 1) n",
    )
    .bind(id)
    .bind(days)
    .execute(&stack.pool)
    .await
    .unwrap();
    id
}

async fn days_of(stack: &TestStack, id: uuid::Uuid) -> Vec<(chrono::NaiveDate, String)> {
    sqlx::query_as("SELECT day, price::text FROM price_points WHERE scryfall_id = $1 ORDER BY day")
        .bind(id)
        .fetch_all(&stack.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn pruning_rolls_old_history_up_to_weekly_closes_and_keeps_the_window_and_the_metrics() {
    use chrono::Datelike;
    let stack = TestStack::start().await.unwrap();
    let default = stack.function(Queue::Default, &[]).await.unwrap();
    let analytics = stack.function(Queue::Analytics, &[]).await.unwrap();
    let daily = daily_series(&stack, 200).await;
    // An old series with one point a week (Wednesdays): nothing of it may go.
    let weekly = series(&stack, "Weekly", &[]).await;
    sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT $1, 'tcgplayer', 'retail', 'nonfoil', 'USD', d::date, 2.5 \
         FROM generate_series(date '2025-01-01', date '2025-06-30', interval '7 days') d",
    )
    .bind(weekly)
    .execute(&stack.pool)
    .await
    .unwrap();
    run(&analytics, "compute_price_metrics", json!({})).await;
    let metrics_before = metrics(&stack, daily).await;
    let before = days_of(&stack, daily).await;
    let weekly_before = days_of(&stack, weekly).await;

    let today: chrono::NaiveDate = sqlx::query_scalar("SELECT current_date")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    let window_start = today - chrono::Duration::days(90);
    let cutoff =
        window_start - chrono::Duration::days(window_start.weekday().num_days_from_monday() as i64);
    // What must stay: every point from the cutoff on, and before it each week's last point.
    let expected: Vec<_> = before
        .iter()
        .filter(|(d, _)| *d >= cutoff || d.weekday() == chrono::Weekday::Sun)
        .cloned()
        .collect();
    let first_week_end = before[0].0
        + chrono::Duration::days(6 - before[0].0.weekday().num_days_from_monday() as i64);
    assert!(first_week_end < cutoff);
    let doomed = (before.len() - expected.len()) as u64;

    let dry = run(&default, "prune_price_history", json!({"dry_run": true})).await;
    assert_eq!(dry["status"], "succeeded", "{dry}");
    assert_eq!(dry["detail"]["cutoff"], cutoff.to_string());
    assert_eq!(dry["detail"]["deleted"], doomed, "{dry}");
    assert_eq!(
        days_of(&stack, daily).await,
        before,
        "a dry run deletes nothing"
    );

    let pruned = run(&default, "prune_price_history", json!({})).await;
    assert_eq!(pruned["detail"]["deleted"], doomed, "{pruned}");
    assert_eq!(days_of(&stack, daily).await, expected);
    assert_eq!(
        days_of(&stack, weekly).await,
        weekly_before,
        "the only point of a week stays"
    );
    // The metrics read the last 61 days, which the window keeps.
    run(&analytics, "compute_price_metrics", json!({"full": true})).await;
    let mut metrics_after = metrics(&stack, daily).await;
    metrics_after.insert("computed_at".into(), metrics_before["computed_at"].clone());
    let mut metrics_before = metrics_before;
    metrics_before.remove("points");
    metrics_after.remove("points");
    assert_eq!(metrics_after, metrics_before);

    let again = run(&default, "prune_price_history", json!({})).await;
    assert_eq!(again["detail"]["deleted"], 0, "{again}");
    let short = default
        .invoke(json!({"task": "prune_price_history", "kwargs": {"keep_days": 7}}))
        .await
        .unwrap();
    match short {
        Invoked::Outcome(InvokeOutcome::Error {
            error_type,
            error_message,
        }) => {
            assert_eq!(error_type, "invalid_kwargs");
            assert!(
                error_message.contains("keep_days: lower than 61"),
                "{error_message}"
            );
        }
        other => panic!("{other:?}"),
    }
    stack.cleanup().await;
}

#[tokio::test]
async fn a_prune_that_runs_out_of_time_continues_from_the_next_week() {
    let stack = TestStack::start().await.unwrap();
    // A reserve longer than the function's timeout: every run stops after its first chunk of weeks.
    let default = stack
        .function(Queue::Default, &[("DD_TASK_RESERVE_MS", "600000")])
        .await
        .unwrap();
    let source = stack.event_source(Queue::Default, 10).await.unwrap();
    let daily = daily_series(&stack, 200).await;
    let before = days_of(&stack, daily).await.len();
    stack
        .send(
            Queue::Default,
            &json!({"task": "prune_price_history"}).to_string(),
        )
        .await
        .unwrap();
    stack
        .drain(&source, &default, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    let reports: Vec<Value> = sqlx::query_scalar(
        "SELECT detail FROM task_runs WHERE task = 'prune_price_history' AND status = 'succeeded' ORDER BY started_at",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert!(reports.len() >= 3, "{reports:?}");
    let cutoff = &reports[0]["cutoff"];
    let mut deleted = 0;
    for pair in reports.windows(2) {
        assert_eq!(
            &pair[1]["cutoff"], cutoff,
            "continuations keep the first run's cutoff"
        );
        assert!(pair[0]["continuation"].is_string(), "{pair:?}");
        assert!(
            pair[1]["from"].as_str() > pair[0]["from"].as_str(),
            "{pair:?}"
        );
    }
    for r in &reports {
        deleted += r["deleted"].as_u64().unwrap();
    }
    assert!(reports.last().unwrap()["continuation"].is_null());
    let after = days_of(&stack, daily).await;
    assert_eq!(before - after.len(), deleted as usize);
    let cutoff: chrono::NaiveDate = cutoff.as_str().unwrap().parse().unwrap();
    use chrono::Datelike;
    assert!(after
        .iter()
        .all(|(d, _)| *d >= cutoff || d.weekday() == chrono::Weekday::Sun));
    stack.cleanup().await;
}
