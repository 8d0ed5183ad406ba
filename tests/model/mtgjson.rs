//! MTGJSON's daily prices against a plain reading of the document: generated `AllPricesToday` documents in
//! the v5 layout (uuid -> paper|mtgo -> provider -> retail|buylist -> normal|foil|etched -> {date: price},
//! with the list's currency) go through the real ingestion function, and the catalog must hold, by the
//! ingestion's contract:
//! - for each entry whose uuid a printing carries, one price point per date, keyed by that printing, the
//!   provider as `source`, retail or buylist, the finish (`normal` is nonfoil) and the list's currency (any
//!   case); lists of providers or currencies the catalog does not know are left out;
//! - an entry whose uuid no printing carries is counted as unmatched and writes nothing;
//! - an entry with a price that is not a non-negative decimal is counted as malformed and writes nothing.

use std::collections::BTreeMap;

use dualcaster::queue::Queue;
use integration_tests::{check_generated, run_task, FixtureServer, TestStack};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

const KNOWN: usize = 30;
const DATES: [&str; 3] = ["2024-04-29", "2024-04-30", "2024-05-01"];

fn mtgjson_uuid(i: usize) -> String {
    format!("5f8287b1-5bb6-5f4c-ad17-{i:012x}")
}

fn scryfall_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// A provider's list as generated: its name, currency as written, and points by (price type, finish, date).
#[derive(Debug, Clone)]
struct List {
    provider: &'static str,
    currency: &'static str,
    points: BTreeMap<(&'static str, &'static str, usize), (u64, bool)>,
}

#[derive(Debug, Clone)]
struct Entry {
    card: usize,
    paper: Vec<List>,
    mtgo: Option<List>,
    malformed: Option<&'static str>,
}

fn list(providers: Vec<(&'static str, &'static str)>) -> impl Strategy<Value = List> {
    let point = (
        prop::sample::select(vec!["retail", "buylist"]),
        prop::sample::select(vec!["normal", "foil", "etched"]),
        0..DATES.len(),
    );
    (
        prop::sample::select(providers),
        prop::collection::btree_map(point, (0u64..2_000_000, any::<bool>()), 1..6),
    )
        .prop_map(|((provider, currency), points)| List {
            provider,
            currency,
            points,
        })
}

fn entry() -> impl Strategy<Value = Entry> {
    let paper = list(vec![
        ("tcgplayer", "USD"),
        ("cardkingdom", "USD"),
        ("cardmarket", "EUR"),
        ("cardsphere", "usd"),
        ("manapool", "USD"),
        // Not recorded: an unknown provider, an unknown currency.
        ("starcitygames", "USD"),
        ("tcgplayer", "GBP"),
    ]);
    let mtgo = list(vec![("cardhoarder", "TIX")]);
    (
        0usize..KNOWN + 10,
        prop::collection::vec(paper, 0..4),
        prop::option::of(mtgo),
        prop_oneof![12 => Just(None), 1 => Just(Some("\"lots\"")), 1 => Just(Some("-0.5"))],
    )
        .prop_map(|(card, paper, mtgo, malformed)| Entry {
            card,
            paper,
            mtgo,
            malformed,
        })
}

fn price_text(cents: u64) -> String {
    let text = format!("{}.{:02}", cents / 100, cents % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn list_json(l: &List) -> Value {
    let mut kinds: BTreeMap<&str, BTreeMap<&str, Map<String, Value>>> = BTreeMap::new();
    for ((kind, finish, date), (cents, as_text)) in &l.points {
        let text = price_text(*cents);
        let v: Value = if *as_text {
            json!(text)
        } else {
            serde_json::from_str(&text).expect("a number")
        };
        kinds
            .entry(kind)
            .or_default()
            .entry(finish)
            .or_default()
            .insert(DATES[*date].into(), v);
    }
    let mut out = json!(kinds);
    out["currency"] = json!(l.currency);
    out
}

/// The entries of one document: one per uuid (a JSON object has each key once), the last generated wins.
fn dedup(entries: Vec<Entry>) -> Vec<Entry> {
    let mut by_card: BTreeMap<usize, Entry> = BTreeMap::new();
    for e in entries {
        // Malformed entries only where a printing exists, so that "unmatched" and "malformed" never overlap.
        let e = if e.card >= KNOWN {
            Entry {
                malformed: None,
                ..e
            }
        } else {
            e
        };
        by_card.insert(e.card, e);
    }
    by_card.into_values().collect()
}

fn document(entries: &[Entry]) -> Vec<u8> {
    let mut data = Map::new();
    for e in entries {
        let mut paper = Map::new();
        for l in &e.paper {
            paper.insert(l.provider.into(), list_json(l));
        }
        if let Some(bad) = e.malformed {
            paper.insert(
                "tcgplayer".into(),
                serde_json::from_str(&format!(
                    r#"{{"retail": {{"normal": {{"{}": {bad}}}}}, "currency": "USD"}}"#,
                    DATES[0]
                ))
                .expect("json"),
            );
        }
        let mut formats = json!({"paper": paper});
        if let Some(m) = &e.mtgo {
            formats["mtgo"] = json!({"cardhoarder": list_json(m)});
        }
        data.insert(mtgjson_uuid(e.card), formats);
    }
    format!(
        r#"{{"meta":{{"date":"{}","version":"5.2.2+20240501"}},"data":{}}}"#,
        DATES[2],
        Value::Object(data)
    )
    .into_bytes()
}

type Key = (String, String, String, String, String, String);

/// The plain reading.
fn reference(entries: &[Entry]) -> (BTreeMap<Key, Decimal>, u64, u64) {
    let mut rows = BTreeMap::new();
    let (mut unmatched, mut malformed) = (0, 0);
    for e in entries {
        if e.card >= KNOWN {
            unmatched += 1;
            continue;
        }
        if e.malformed.is_some() {
            malformed += 1;
            continue;
        }
        // A provider named twice in `paper` is one key of the object: the last list written.
        let mut lists: BTreeMap<&str, &List> = BTreeMap::new();
        for l in &e.paper {
            lists.insert(l.provider, l);
        }
        let mtgo = e.mtgo.iter().map(|m| (m.provider, m));
        for (provider, l) in lists.into_iter().chain(mtgo) {
            let known = [
                "tcgplayer",
                "cardkingdom",
                "cardmarket",
                "cardsphere",
                "manapool",
                "cardhoarder",
            ]
            .contains(&provider);
            let currency = l.currency.to_ascii_uppercase();
            if !known || !["USD", "EUR", "TIX"].contains(&currency.as_str()) {
                continue;
            }
            for ((kind, finish, date), (cents, _)) in &l.points {
                let finish = if *finish == "normal" {
                    "nonfoil"
                } else {
                    finish
                };
                rows.insert(
                    (
                        scryfall_id(e.card),
                        provider.to_owned(),
                        kind.to_string(),
                        finish.to_owned(),
                        currency.clone(),
                        DATES[*date].to_owned(),
                    ),
                    Decimal::new(*cents as i64, 2),
                );
            }
        }
    }
    (rows, unmatched, malformed)
}

async fn check_document(entries: Vec<Entry>, batch_size: u32) -> Result<(), TestCaseError> {
    let entries = dedup(entries);
    let stack = TestStack::start().await.expect("stack");
    for i in 0..KNOWN {
        sqlx::query(
            "INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity, mtgjson_uuid) \
             VALUES ($1::uuid, $2, 'mh3', $3, 'rare', $4::uuid)",
        )
        .bind(scryfall_id(i))
        .bind(format!("Card {i}"))
        .bind(i.to_string())
        .bind(mtgjson_uuid(i))
        .execute(&stack.pool)
        .await
        .expect("a printing");
    }
    let server = FixtureServer::start().await.expect("stub");
    server.publish_file("AllPricesToday.json", document(&entries));
    // The stub serves its files under /files.
    let files = format!("{}/files", server.base_url);
    let function = stack
        .function(Queue::Ingestion, &[("DD_MTGJSON_BASE_URL", files.as_str())])
        .await
        .expect("function");
    let report = run_task(
        &function,
        "ingest_mtgjson_prices",
        json!({"batch_size": batch_size}),
    )
    .await
    .map_err(TestCaseError::fail)?;
    let (expected, unmatched, malformed) = reference(&entries);
    let d = &report["detail"];
    prop_assert_eq!(
        d["entries"].as_u64(),
        Some(entries.len() as u64),
        "{}",
        report
    );
    prop_assert_eq!(d["unmatched"].as_u64(), Some(unmatched), "{}", report);
    prop_assert_eq!(d["malformed"].as_u64(), Some(malformed), "{}", report);

    let stored: Vec<(String, String, String, String, String, String, Decimal)> = sqlx::query_as(
        "SELECT scryfall_id::text, source, price_type, finish, currency, day::text, price FROM price_points",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("prices");
    let got: BTreeMap<Key, Decimal> = stored
        .into_iter()
        .map(|(i, s, t, f, c, d, p)| ((i, s, t, f, c, d), p))
        .collect();
    prop_assert_eq!(&got, &expected);
    // Exact sums per source, price type, finish and currency: Postgres's numeric against the reference's.
    let sums: Vec<(String, String, String, String, Decimal)> = sqlx::query_as(
        "SELECT source, price_type, finish, currency, sum(price) FROM price_points GROUP BY 1, 2, 3, 4",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("sums");
    let mut expected_sums: BTreeMap<(String, String, String, String), Decimal> = BTreeMap::new();
    for ((_, s, t, f, c, _), p) in &expected {
        *expected_sums
            .entry((s.clone(), t.clone(), f.clone(), c.clone()))
            .or_default() += p;
    }
    let got_sums: BTreeMap<_, _> = sums
        .into_iter()
        .map(|(s, t, f, c, p)| ((s, t, f, c), p))
        .collect();
    prop_assert_eq!(got_sums, expected_sums);
    drop(function);
    stack.cleanup().await;
    Ok(())
}

#[test]
fn generated_price_documents_land_as_a_plain_reading_of_them_says() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let case = (prop::collection::vec(entry(), 0..=60), 10u32..=40);
    check_generated((6, 80, 24), &case, |(entries, batch_size)| {
        rt.block_on(check_document(entries, batch_size))
    });
}
