//! `price_metrics` after every kind of change to `price_points`, against a from-scratch computation of the
//! definitions in docs/data.md written here: generated sequences of operations (a new day for a share of the
//! series, late and corrected old days through ingestion's own write, an operator's `UPDATE` and `DELETE`,
//! the real prune, metrics runs incremental or full through the real function with one connection or three)
//! are applied to Postgres and to a plain map of series to days and prices, and after every metrics run each
//! row must read as the map says, decimals compared as text.
//!
//! The reference works in whole cents and exact integer rounding (half away from zero), not in the product's
//! decimal type, and takes every metric from all of a series' points; only the volatility is a float,
//! compared within 1e-12.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use dualcaster::catalog::{upsert_prices, PriceRow};
use dualcaster::queue::Queue;
use dualcaster_tools::local::function::LocalFunction;
use integration_tests::{check_generated, run_task, TestStack};
use proptest::prelude::*;
use serde_json::json;
use sqlx::PgPool;

const PRINTINGS: usize = 3;
const SOURCES: [&str; 2] = ["tcgplayer", "cardkingdom"];
const FINISHES: [&str; 2] = ["nonfoil", "foil"];
const SERIES: usize = PRINTINGS * SOURCES.len() * FINISHES.len();
/// Days are numbered from `today - LAST_DAY`, so that the real prune (which keeps the days before today)
/// reaches the older ones.
const LAST_DAY: u8 = 140;
/// The last day of the generated history a case starts from.
const HISTORY_DAYS: u8 = 70;

/// A price as written: whole cents and its places (1 or 2: `9.0` and `9.00` are equal, their text is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Price {
    cents: i64,
    places: u32,
}

impl Price {
    /// Its value in units of 10^-places.
    fn units(self, places: u32) -> i128 {
        i128::from(self.cents) * 10i128.pow(places) / 100
    }

    fn text(self) -> String {
        decimal_text(self.units(self.places), self.places)
    }

    fn decimal(self) -> rust_decimal::Decimal {
        rust_decimal::Decimal::from_i128_with_scale(self.units(self.places), self.places)
    }
}

/// `numeric`'s text of `units` x 10^-places.
fn decimal_text(units: i128, places: u32) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let (whole, fraction) = (
        units.unsigned_abs() / 10u128.pow(places),
        units.unsigned_abs() % 10u128.pow(places),
    );
    if places == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction:0width$}", width = places as usize)
    }
}

/// `num / den` rounded half away from zero (`den` > 0).
fn rounded_quotient(num: i128, den: i128) -> i128 {
    let q = (2 * num.abs() + den) / (2 * den);
    if num < 0 {
        -q
    } else {
        q
    }
}

fn price() -> impl Strategy<Value = Price> {
    // Few distinct values, so that equal prices (ties for the high and low), zero and repeated prices occur.
    (
        prop_oneof![1 => Just(0i64), 12 => 1i64..40, 4 => 100i64..2000],
        any::<bool>(),
    )
        .prop_map(|(n, short)| {
            let cents = if n < 40 { n * 10 } else { n };
            let places = if short && cents % 10 == 0 { 1 } else { 2 };
            Price { cents, places }
        })
}

#[derive(Debug, Clone)]
enum Op {
    /// The next day (`step` days after the last one, at most [`LAST_DAY`]) for the series given a price.
    NewDay {
        step: u8,
        prices: Vec<Option<Price>>,
    },
    /// Late or corrected points `back` days before the last day, through ingestion's write.
    Backdated(Vec<(usize, u8, Price)>),
    /// An operator's `UPDATE ... SET price` of the point `back` days before the last day, if there is one.
    Correct {
        series: usize,
        back: u8,
        price: Price,
    },
    /// An operator's `DELETE` of a series' points from `from` to `to` days before the last day.
    Delete { series: usize, from: u8, to: u8 },
    /// The real `prune_price_history` with `keep_days`.
    Prune { keep_days: u32 },
    /// A metrics run, incremental or full, through a function with one connection or three.
    Metrics { full: bool, wide: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..=7, prop::collection::vec(prop::option::weighted(0.6, price()), SERIES))
            .prop_map(|(step, prices)| Op::NewDay { step, prices }),
        2 => prop::collection::vec((0..SERIES, 0u8..70, price()), 1..6).prop_map(Op::Backdated),
        2 => (0..SERIES, 0u8..70, price()).prop_map(|(series, back, price)| Op::Correct { series, back, price }),
        2 => (0..SERIES, 0u8..80, 0u8..20)
            .prop_map(|(series, from, len)| Op::Delete { series, from, to: from.saturating_add(len) }),
        1 => (61u32..=100).prop_map(|keep_days| Op::Prune { keep_days }),
        5 => (prop::bool::weighted(0.2), any::<bool>()).prop_map(|(full, wide)| Op::Metrics { full, wide }),
    ]
}

/// A case: the history it starts from (series, day, price) and the operations after it.
fn case() -> impl Strategy<Value = (Vec<(usize, u8, Price)>, Vec<Op>)> {
    (
        prop::collection::vec((0..SERIES, 0..=HISTORY_DAYS, price()), 0..160),
        prop::collection::vec(op(), 1..14),
    )
}

/// Series `i`: its printing, source and finish.
fn key(i: usize) -> (uuid::Uuid, &'static str, &'static str) {
    let printing = i / (SOURCES.len() * FINISHES.len());
    let rest = i % (SOURCES.len() * FINISHES.len());
    (
        printing_id(printing),
        SOURCES[rest / FINISHES.len()],
        FINISHES[rest % FINISHES.len()],
    )
}

fn printing_id(printing: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x0e7a_1c5e_0000_4000_8000_0000_0000_0000 + printing as u128)
}

/// Each series' points by day number.
type Model = BTreeMap<usize, BTreeMap<u8, Price>>;

/// The stack, its functions and the date day 0 stands for.
struct Rig {
    stack: TestStack,
    narrow: LocalFunction,
    wide: LocalFunction,
    default: LocalFunction,
    day0: NaiveDate,
}

impl Rig {
    fn date(&self, day: u8) -> NaiveDate {
        self.day0 + chrono::Days::new(u64::from(day))
    }

    fn day_number(&self, date: NaiveDate) -> i64 {
        (date - self.day0).num_days()
    }
}

/// Writes points as an ingestion batch does (`COPY` when all are new, else the upsert).
async fn ingest(pool: &PgPool, rig: &Rig, points: &[(usize, u8, Price)]) {
    let rows: Vec<PriceRow> = points
        .iter()
        .map(|&(series, day, price)| {
            let (scryfall_id, source, finish) = key(series);
            PriceRow {
                scryfall_id,
                source,
                price_type: "retail",
                finish,
                currency: "USD",
                day: rig.date(day),
                price: price.decimal(),
            }
        })
        .collect();
    let mut tx = pool.begin().await.expect("a transaction");
    upsert_prices(&mut tx, &rows).await.expect("ingested");
    tx.commit().await.expect("committed");
}

/// What an ingested batch leaves: of two points of one key in the batch the last wins, and a stored point
/// of equal value keeps its text (the upsert changes only prices that differ: `9.0` stays when `9.00` comes).
fn record(model: &mut Model, points: &[(usize, u8, Price)]) {
    let mut batch: BTreeMap<(usize, u8), Price> = BTreeMap::new();
    for &(series, day, price) in points {
        batch.insert((series, day), price);
    }
    for ((series, day), price) in batch {
        let days = model.entry(series).or_default();
        match days.get(&day) {
            Some(stored) if stored.cents == price.cents => {}
            _ => {
                days.insert(day, price);
            }
        }
    }
}

/// Runs `op` against Postgres and applies it to `model`; `last` is the last day written so far. Returns
/// whether it was a metrics run (after which the rows are compared).
async fn apply(rig: &Rig, op: &Op, model: &mut Model, last: &mut u8) -> Result<bool, String> {
    let pool = &rig.stack.pool;
    let back = |back: u8, last: u8| last.saturating_sub(back);
    match op {
        Op::NewDay { step, prices } => {
            *last = last.saturating_add(*step).min(LAST_DAY);
            let points: Vec<(usize, u8, Price)> = prices
                .iter()
                .enumerate()
                .filter_map(|(series, price)| Some((series, *last, (*price)?)))
                .collect();
            ingest(pool, rig, &points).await;
            record(model, &points);
        }
        Op::Backdated(points) => {
            let points: Vec<(usize, u8, Price)> = points
                .iter()
                .map(|&(series, b, price)| (series, back(b, *last), price))
                .collect();
            ingest(pool, rig, &points).await;
            record(model, &points);
        }
        Op::Correct {
            series,
            back: b,
            price,
        } => {
            let (id, source, finish) = key(*series);
            let day = back(*b, *last);
            sqlx::query(
                "UPDATE price_points SET price = $6 \
                 WHERE (scryfall_id, source, price_type, finish, currency, day) = ($1, $2, 'retail', $3, 'USD', $4) \
                   AND price::text <> $5",
            )
            .bind(id)
            .bind(source)
            .bind(finish)
            .bind(rig.date(day))
            .bind(price.text())
            .bind(price.decimal())
            .execute(pool)
            .await
            .map_err(|e| format!("update: {e}"))?;
            if let Some(p) = model.get_mut(series).and_then(|days| days.get_mut(&day)) {
                *p = *price;
            }
        }
        Op::Delete { series, from, to } => {
            let (id, source, finish) = key(*series);
            let (newest, oldest) = (back(*from, *last), back(*to, *last));
            sqlx::query(
                "DELETE FROM price_points \
                 WHERE (scryfall_id, source, price_type, finish, currency) = ($1, $2, 'retail', $3, 'USD') \
                   AND day BETWEEN $4 AND $5",
            )
            .bind(id)
            .bind(source)
            .bind(finish)
            .bind(rig.date(oldest))
            .bind(rig.date(newest))
            .execute(pool)
            .await
            .map_err(|e| format!("delete: {e}"))?;
            if let Some(days) = model.get_mut(series) {
                days.retain(|d, _| *d < oldest || *d > newest);
            }
        }
        Op::Prune { keep_days } => {
            let report = run_task(
                &rig.default,
                "prune_price_history",
                json!({"keep_days": keep_days}),
            )
            .await?;
            let detail = &report["detail"];
            if detail.get("continuation").is_some() {
                return Err(format!("the prune did not finish in one run: {report}"));
            }
            let cutoff: NaiveDate = detail["cutoff"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no cutoff in {report}"))?;
            // Before the cutoff (a Monday), each Monday-to-Sunday week keeps only its last point.
            let cutoff = rig.day_number(cutoff);
            for days in model.values_mut() {
                let mut last_of_week: BTreeMap<i64, u8> = BTreeMap::new();
                for &d in days.keys() {
                    let date = rig.date(d);
                    let monday =
                        rig.day_number(date) - i64::from(date.weekday().num_days_from_monday());
                    if i64::from(d) < cutoff {
                        last_of_week.insert(monday, d);
                    }
                }
                days.retain(|&d, _| {
                    let date = rig.date(d);
                    let monday =
                        rig.day_number(date) - i64::from(date.weekday().num_days_from_monday());
                    i64::from(d) >= cutoff || last_of_week.get(&monday) == Some(&d)
                });
            }
        }
        Op::Metrics { full, wide } => {
            let function = if *wide { &rig.wide } else { &rig.narrow };
            run_task(function, "compute_price_metrics", json!({"full": full})).await?;
        }
    }
    model.retain(|_, days| !days.is_empty());
    Ok(matches!(op, Op::Metrics { .. }))
}

/// A metrics row as compared: decimals as their text, the volatility as a float.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    scryfall_id: uuid::Uuid,
    source: String,
    finish: String,
    latest_day: NaiveDate,
    latest_price: String,
    change_1d: Option<String>,
    change_1d_pct: Option<String>,
    change_7d: Option<String>,
    change_7d_pct: Option<String>,
    change_30d: Option<String>,
    change_30d_pct: Option<String>,
    ma_7d: Option<String>,
    ma_30d: Option<String>,
    volatility_30d: Option<f64>,
    high_30d: String,
    low_30d: String,
    points_30d: i32,
    points: i32,
    prior_high_30d: Option<String>,
    prior_points_30d: i32,
}

const ROWS: &str = "SELECT scryfall_id, source, finish, latest_day, latest_price::text, change_1d::text, \
    change_1d_pct::text, change_7d::text, change_7d_pct::text, change_30d::text, change_30d_pct::text, \
    ma_7d::text, ma_30d::text, volatility_30d, high_30d::text, low_30d::text, points_30d, points, \
    prior_high_30d::text, prior_points_30d \
    FROM price_metrics ORDER BY scryfall_id, source, finish";

/// The price of the greatest value among `points`, the most recent of equal ones.
fn highest<'a>(points: impl Iterator<Item = (&'a u8, &'a Price)>) -> Option<Price> {
    let mut best: Option<Price> = None;
    for (_, &p) in points {
        if best.is_none_or(|b| p.cents >= b.cents) {
            best = Some(p);
        }
    }
    best
}

fn lowest<'a>(points: impl Iterator<Item = (&'a u8, &'a Price)>) -> Option<Price> {
    let mut best: Option<Price> = None;
    for (_, &p) in points {
        if best.is_none_or(|b| p.cents <= b.cents) {
            best = Some(p);
        }
    }
    best
}

/// One series' row by the definitions of docs/data.md, from all of its points.
fn reference(rig: &Rig, series: usize, days: &BTreeMap<u8, Price>) -> Row {
    let (scryfall_id, source, finish) = key(series);
    let (&latest, &latest_price) = days.last_key_value().expect("a series has points");
    let age = |d: u8| i64::from(latest) - i64::from(d);
    // The window: the points of the latest day and the 60 before it.
    let window: Vec<(u8, Price)> = days
        .iter()
        .filter(|(&d, _)| age(d) <= 60)
        .map(|(&d, &p)| (d, p))
        .collect();
    let in_ages = |lo: i64, hi: i64| {
        window
            .iter()
            .filter(move |(d, _)| (lo..=hi).contains(&age(*d)))
            .map(|(d, p)| (d, p))
    };
    let change = |n: i64| -> (Option<String>, Option<String>) {
        // Against the latest point at least n and at most 2n days back.
        let Some((_, reference)) = in_ages(n, 2 * n).next_back() else {
            return (None, None);
        };
        let places = latest_price.places.max(reference.places);
        let change = latest_price.units(places) - reference.units(places);
        let pct = (reference.cents != 0).then(|| {
            let num = i128::from(latest_price.cents - reference.cents) * 10_000;
            decimal_text(rounded_quotient(num, i128::from(reference.cents)), 2)
        });
        (Some(decimal_text(change, places)), pct)
    };
    let mean = |n: i64| -> Option<String> {
        let prices: Vec<i64> = in_ages(0, n - 1).map(|(_, p)| p.cents).collect();
        (!prices.is_empty()).then(|| {
            let sum: i128 = prices.iter().map(|&c| i128::from(c)).sum();
            decimal_text(rounded_quotient(sum * 100, prices.len() as i128), 4)
        })
    };
    // Log returns between consecutive points of the window, for the returns that end in the last 30 days.
    let returns: Vec<f64> = window
        .windows(2)
        .filter(|pair| age(pair[1].0) < 30 && pair[0].1.cents > 0 && pair[1].1.cents > 0)
        .map(|pair| (pair[1].1.cents as f64 / pair[0].1.cents as f64).ln())
        .collect();
    let volatility = (returns.len() >= 2).then(|| {
        let n = returns.len() as f64;
        let mean = returns.iter().sum::<f64>() / n;
        (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    });
    let (change_1d, change_1d_pct) = change(1);
    let (change_7d, change_7d_pct) = change(7);
    let (change_30d, change_30d_pct) = change(30);
    Row {
        scryfall_id,
        source: source.to_owned(),
        finish: finish.to_owned(),
        latest_day: rig.date(latest),
        latest_price: latest_price.text(),
        change_1d,
        change_1d_pct,
        change_7d,
        change_7d_pct,
        change_30d,
        change_30d_pct,
        ma_7d: mean(7),
        ma_30d: mean(30),
        volatility_30d: volatility,
        high_30d: highest(in_ages(0, 29)).expect("the latest point").text(),
        low_30d: lowest(in_ages(0, 29)).expect("the latest point").text(),
        points_30d: in_ages(0, 29).count() as i32,
        points: days.len() as i32,
        prior_high_30d: highest(in_ages(1, 30)).map(Price::text),
        prior_points_30d: in_ages(1, 30).count() as i32,
    }
}

/// Equal but for float rounding in the volatility.
fn same(a: &Row, b: &Row) -> bool {
    let volatility = match (a.volatility_30d, b.volatility_30d) {
        (None, None) => true,
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
        _ => false,
    };
    volatility
        && Row {
            volatility_30d: None,
            ..a.clone()
        } == Row {
            volatility_30d: None,
            ..b.clone()
        }
}

async fn reset(rig: &Rig) {
    let pool = &rig.stack.pool;
    sqlx::query("TRUNCATE printings, analytics_watermarks CASCADE")
        .execute(pool)
        .await
        .expect("a clean catalog");
    for printing in 0..PRINTINGS {
        sqlx::query(
            "INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity) \
             VALUES ($1, 'Metrics model card', 'tst', $2, 'rare')",
        )
        .bind(printing_id(printing))
        .bind(printing.to_string())
        .execute(pool)
        .await
        .expect("a printing");
    }
}

async fn check(
    rig: &Rig,
    history: Vec<(usize, u8, Price)>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    reset(rig).await;
    let mut model = Model::new();
    let mut last = HISTORY_DAYS;
    let initial = Op::Backdated(
        history
            .iter()
            .map(|&(series, day, price)| (series, HISTORY_DAYS - day, price))
            .collect(),
    );
    // Every case ends with an incremental run, so that what the last operations left is compared too.
    let end = Op::Metrics {
        full: false,
        wide: true,
    };
    let ops = std::iter::once(&initial)
        .chain(&ops)
        .chain(std::iter::once(&end));
    for (i, op) in ops.enumerate() {
        let compared = apply(rig, op, &mut model, &mut last)
            .await
            .map_err(|e| TestCaseError::fail(format!("op {i} ({op:?}): {e}")))?;
        if !compared {
            continue;
        }
        let rows: Vec<Row> = sqlx::query_as(ROWS)
            .fetch_all(&rig.stack.pool)
            .await
            .expect("metrics rows");
        let mut expected: Vec<Row> = model
            .iter()
            .map(|(&series, days)| reference(rig, series, days))
            .collect();
        expected.sort_by(|a, b| {
            (a.scryfall_id, &a.source, &a.finish).cmp(&(b.scryfall_id, &b.source, &b.finish))
        });
        let wrong: Vec<String> = expected
            .iter()
            .filter(|e| !rows.iter().any(|r| same(r, e)))
            .map(|e| {
                let stored = rows.iter().find(|r| {
                    (r.scryfall_id, &r.source, &r.finish) == (e.scryfall_id, &e.source, &e.finish)
                });
                format!("expected {e:?}\n    stored {stored:?}")
            })
            .collect();
        prop_assert!(
            wrong.is_empty() && rows.len() == expected.len(),
            "after op {} ({:?}): {} rows stored, {} expected; {} differ:\n  {}",
            i,
            op,
            rows.len(),
            expected.len(),
            wrong.len(),
            wrong.join("\n  ")
        );
    }
    Ok(())
}

#[test]
fn metrics_rows_equal_a_from_scratch_computation_after_every_kind_of_change() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let rig = rt.block_on(async {
        let stack = TestStack::start().await.expect("stack");
        // Chunks of three series, so that every run writes several.
        let narrow = stack
            .function(
                Queue::Analytics,
                &[
                    ("DD_DB_MAX_CONNECTIONS", "1"),
                    ("DD_METRICS_CHUNK_SERIES", "3"),
                ],
            )
            .await
            .expect("a one-connection analytics function");
        let wide = stack
            .function(
                Queue::Analytics,
                &[
                    ("DD_DB_MAX_CONNECTIONS", "3"),
                    ("DD_METRICS_CHUNK_SERIES", "3"),
                ],
            )
            .await
            .expect("a three-connection analytics function");
        let default = stack
            .function(Queue::Default, &[])
            .await
            .expect("the default function");
        let day0 = chrono::Utc::now().date_naive() - chrono::Days::new(u64::from(LAST_DAY));
        Rig {
            stack,
            narrow,
            wide,
            default,
            day0,
        }
    });
    check_generated((24, 600, 300), &case(), |(history, ops)| {
        rt.block_on(check(&rig, history, ops))
    });
    rt.block_on(rig.stack.cleanup());
}
