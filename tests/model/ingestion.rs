//! Scryfall ingestion against a straightforward computation over the same input: generated bulk files of
//! Scryfall-shaped card objects (prices as strings, as JSON numbers as the 2022-23 files had them, null or
//! missing; odd collector numbers; names with tabs, line breaks and backslashes; double-faced cards with their
//! images on the faces; duplicated ids; malformed objects among them) go through the real ingestion function, in generated batch sizes, and the
//! catalog must hold what a plain reading of the file says, by the ingestion's contract:
//! - every well-formed card object is a printing; of objects with the same id the last one in the file wins;
//! - each non-null price is the day's `scryfall` retail quote for its finish and currency (`usd` nonfoil USD,
//!   `usd_foil` foil USD, `usd_etched` etched USD, `eur`, `eur_foil`, `tix` nonfoil TIX); of quotes for the
//!   same key the last wins, and a null quote changes nothing;
//! - a malformed object (no id, a bad id, a price that is not a non-negative decimal) is counted and skipped.
//!
//! The reference parses prices by hand from the JSON text (digits, one point), sums them as exact decimals per
//! finish and currency and compares them with Postgres's `numeric` sums.

use std::collections::BTreeMap;

use dualcaster::queue::Queue;
use integration_tests::{check_generated, run_task, FixtureServer, TestStack};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

const VERSION: &str = "2023-03-14T09:05:00.000+00:00";
const DAY: &str = "2023-03-14";
const FIELDS: [(&str, &str, &str); 6] = [
    ("usd", "nonfoil", "USD"),
    ("usd_foil", "foil", "USD"),
    ("usd_etched", "etched", "USD"),
    ("eur", "nonfoil", "EUR"),
    ("eur_foil", "foil", "EUR"),
    ("tix", "nonfoil", "TIX"),
];

/// A price as generated: its value in cents, written as a string, a JSON number, null, or left out.
#[derive(Debug, Clone)]
enum Quote {
    Missing,
    Null,
    Text(String),
    Number(String),
}

#[derive(Debug, Clone)]
struct Card {
    /// Index into a small pool of ids, so that some repeat.
    id: usize,
    name: String,
    set: String,
    collector_number: String,
    rarity: &'static str,
    finishes: Vec<&'static str>,
    tcgplayer_id: Option<i32>,
    double_faced: bool,
    quotes: Vec<Quote>,
    /// How the object is broken, if it is.
    defect: Option<&'static str>,
}

fn uuid_of(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

fn quote() -> impl Strategy<Value = Quote> {
    let amount = prop_oneof![0u64..100, 0u64..10_000, 0u64..5_000_000];
    prop_oneof![
        2 => Just(Quote::Missing),
        3 => Just(Quote::Null),
        4 => (amount.clone(), any::<bool>()).prop_map(|(cents, padded)| {
            // Scryfall writes two decimals; some files had fewer.
            Quote::Text(if padded { format!("{}.{:02}", cents / 100, cents % 100) } else { trim(cents) })
        }),
        2 => amount.prop_map(|cents| Quote::Number(trim(cents))),
    ]
}

/// `cents` as the shortest decimal text (`12.5`, `3`, `0.07`).
fn trim(cents: u64) -> String {
    let text = format!("{}.{:02}", cents / 100, cents % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn card() -> impl Strategy<Value = Card> {
    let number = prop_oneof![
        (1u32..400).prop_map(|n| n.to_string()),
        (1u32..400, "[a-e]").prop_map(|(n, s)| format!("{n}{s}")),
        (1u32..100).prop_map(|n| format!("★{n}")),
        "[A-Z]{2,3}[0-9]{1,2}",
        (1u32..50).prop_map(|n| format!("{n}†")),
    ];
    // Names also carry what `COPY`'s text format must escape (tab, newline, carriage return, backslash).
    let name = prop_oneof![3 => "\\PC{1,24}", 1 => "[a-z \\\\\t\r\n\"{},]{1,12}"];
    let finishes = prop::sample::subsequence(vec!["nonfoil", "foil", "etched"], 0..=3);
    let defect = prop_oneof![
        20 => Just(None),
        1 => Just(Some("no id")),
        1 => Just(Some("bad id")),
        1 => Just(Some("price not a number")),
        1 => Just(Some("negative price")),
        1 => Just(Some("not an object")),
    ];
    (
        (0usize..40, name, "[a-zA-Z0-9]{3,5}", number),
        (
            prop::sample::select(vec!["common", "uncommon", "rare", "mythic", "special"]),
            finishes,
        ),
        (prop::option::of(1i32..i32::MAX), any::<bool>()),
        (prop::collection::vec(quote(), 6), defect),
    )
        .prop_map(
            |(
                (id, name, set, collector_number),
                (rarity, finishes),
                (tcgplayer_id, double_faced),
                (quotes, defect),
            )| Card {
                id,
                name,
                set,
                collector_number,
                rarity,
                finishes,
                tcgplayer_id,
                double_faced,
                quotes,
                defect,
            },
        )
}

/// The card object as Scryfall would write it (with its defect, if any).
fn card_json(c: &Card) -> String {
    if c.defect == Some("not an object") {
        return json!([c.name, c.set]).to_string();
    }
    let mut o = Map::new();
    match c.defect {
        Some("no id") => {}
        Some("bad id") => {
            o.insert("id".into(), json!(format!("card-{}", c.id)));
        }
        _ => {
            o.insert("id".into(), json!(uuid_of(c.id)));
        }
    }
    o.insert("object".into(), json!("card"));
    o.insert("name".into(), json!(c.name));
    o.insert("set".into(), json!(c.set));
    o.insert("collector_number".into(), json!(c.collector_number));
    o.insert("rarity".into(), json!(c.rarity));
    o.insert("finishes".into(), json!(c.finishes));
    if let Some(t) = c.tcgplayer_id {
        o.insert("tcgplayer_id".into(), json!(t));
    }
    let image = format!("https://cards.scryfall.io/normal/front/{}.jpg", c.id);
    if c.double_faced {
        o.insert(
            "card_faces".into(),
            json!([{"name": "front", "image_uris": {"normal": image}}, {"name": "back", "image_uris": {"normal": "back.jpg"}}]),
        );
    } else {
        o.insert(
            "image_uris".into(),
            json!({"normal": image, "small": "small.jpg"}),
        );
    }
    // Prices are written by hand so that JSON numbers keep the text generated.
    let mut prices = Vec::new();
    for ((field, _, _), q) in FIELDS.iter().zip(&c.quotes) {
        match q {
            Quote::Missing => {}
            Quote::Null => prices.push(format!("\"{field}\":null")),
            Quote::Text(t) => prices.push(format!("\"{field}\":\"{t}\"")),
            Quote::Number(n) => prices.push(format!("\"{field}\":{n}")),
        }
    }
    match c.defect {
        Some("price not a number") => prices.push("\"usd\":\"N/A\"".into()),
        Some("negative price") => prices.push("\"eur\":\"-0.50\"".into()),
        _ => {}
    }
    let mut text = Value::Object(o).to_string();
    text.pop();
    format!("{text},\"prices\":{{{}}}}}", prices.join(","))
}

/// A decimal from generated text, by hand: digits with at most one point.
fn decimal(text: &str) -> Decimal {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits: i64 = format!("{whole}{frac}").parse().expect("digits");
    Decimal::new(digits, frac.len() as u32)
}

/// A printing's stored fields: name, set code, collector number, rarity, finishes, TCGplayer id, image.
type PrintingFields = (
    String,
    String,
    String,
    String,
    Vec<String>,
    Option<i32>,
    Option<String>,
);

#[derive(Debug, Default, PartialEq)]
struct Catalog {
    printings: BTreeMap<String, PrintingFields>,
    /// (id, finish, currency) -> price
    prices: BTreeMap<(String, String, String), Decimal>,
}

/// The straightforward computation.
fn reference(cards: &[Card]) -> (Catalog, u64) {
    let mut catalog = Catalog::default();
    let mut malformed = 0;
    for c in cards {
        if c.defect.is_some() {
            malformed += 1;
            continue;
        }
        let id = uuid_of(c.id);
        catalog.printings.insert(
            id.clone(),
            (
                c.name.clone(),
                c.set.to_lowercase(),
                c.collector_number.clone(),
                c.rarity.to_owned(),
                c.finishes.iter().map(|f| f.to_string()).collect(),
                c.tcgplayer_id,
                Some(format!(
                    "https://cards.scryfall.io/normal/front/{}.jpg",
                    c.id
                )),
            ),
        );
        for ((_, finish, currency), q) in FIELDS.iter().zip(&c.quotes) {
            if let Quote::Text(t) | Quote::Number(t) = q {
                catalog.prices.insert(
                    (id.clone(), finish.to_string(), currency.to_string()),
                    decimal(t),
                );
            }
        }
    }
    (catalog, malformed)
}

async fn stored(stack: &TestStack) -> Catalog {
    type Printing = (
        String,
        String,
        String,
        String,
        String,
        Vec<String>,
        Option<i32>,
        Option<String>,
    );
    let printings: Vec<Printing> = sqlx::query_as(
        "SELECT scryfall_id::text, name, set_code, collector_number, rarity, finishes, tcgplayer_id, image_uri FROM printings",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("printings");
    let prices: Vec<(String, String, String, Decimal)> = sqlx::query_as(
        "SELECT scryfall_id::text, finish, currency, price FROM price_points \
         WHERE source = 'scryfall' AND price_type = 'retail' AND day = $1::date",
    )
    .bind(DAY)
    .fetch_all(&stack.pool)
    .await
    .expect("prices");
    Catalog {
        printings: printings
            .into_iter()
            .map(|(id, n, s, c, r, f, t, i)| (id, (n, s, c, r, f, t, i)))
            .collect(),
        prices: prices
            .into_iter()
            .map(|(id, f, c, p)| ((id, f, c), p))
            .collect(),
    }
}

async fn check_file(cards: Vec<Card>, batch_size: u32) -> Result<(), TestCaseError> {
    let stack = TestStack::start().await.expect("stack");
    let server = FixtureServer::start().await.expect("stub");
    let file = format!(
        "[{}]",
        cards.iter().map(card_json).collect::<Vec<_>>().join(",\n")
    );
    server.publish_bulk("default_cards", VERSION, file.into_bytes());
    let function = stack
        .function(
            Queue::Ingestion,
            &[("DD_SCRYFALL_BASE_URL", server.base_url.as_str())],
        )
        .await
        .expect("function");
    let report = run_task(
        &function,
        "ingest_scryfall_bulk",
        json!({"batch_size": batch_size}),
    )
    .await
    .map_err(TestCaseError::fail)?;
    let (expected, malformed) = reference(&cards);
    let d = &report["detail"];
    prop_assert_eq!(d["outcome"].as_str(), Some("completed"), "{}", report);
    prop_assert_eq!(d["cards"].as_u64(), Some(cards.len() as u64), "{}", report);
    prop_assert_eq!(d["malformed"].as_u64(), Some(malformed), "{}", report);

    let got = stored(&stack).await;
    prop_assert_eq!(&got.printings, &expected.printings);
    prop_assert_eq!(&got.prices, &expected.prices);
    // Exact sums per finish and currency, from Postgres's numeric arithmetic and from the reference's.
    let sums: Vec<(String, String, Decimal, i64)> = sqlx::query_as(
        "SELECT finish, currency, sum(price), count(*) FROM price_points WHERE source = 'scryfall' \
         GROUP BY finish, currency ORDER BY finish, currency",
    )
    .fetch_all(&stack.pool)
    .await
    .expect("sums");
    let mut expected_sums: BTreeMap<(String, String), (Decimal, i64)> = BTreeMap::new();
    for ((_, finish, currency), price) in &expected.prices {
        let e = expected_sums
            .entry((finish.clone(), currency.clone()))
            .or_default();
        e.0 += price;
        e.1 += 1;
    }
    let got_sums: BTreeMap<(String, String), (Decimal, i64)> = sums
        .into_iter()
        .map(|(f, c, s, n)| ((f, c), (s, n)))
        .collect();
    prop_assert_eq!(got_sums, expected_sums);
    drop(function);
    stack.cleanup().await;
    Ok(())
}

#[test]
fn generated_bulk_files_land_as_a_plain_reading_of_them_says() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let case = (prop::collection::vec(card(), 0..=120), 10u32..=60);
    check_generated((8, 100, 24), &case, |(cards, batch_size)| {
        rt.block_on(check_file(cards, batch_size))
    });
}
