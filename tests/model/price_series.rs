//! `price_series` (each series' point count and latest day, kept by triggers on `price_points`) against counts
//! kept by the test itself: generated sequences of the statements that write points (ingestion's `COPY` and
//! upsert, an insert rolled back, a prune's delete by day, a printing's deletion cascading to its points, an
//! operator moving a point to another series or day, `TRUNCATE`) run against Postgres, the same sequence is
//! applied to a plain map of series to days, and after every statement the table must hold exactly one row
//! per series with points, with the map's count and latest day.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use integration_tests::{check_generated, TestStack};
use proptest::prelude::*;
use sqlx::PgPool;

const PRINTINGS: u8 = 4;
const SOURCES: [&str; 2] = ["tcgplayer", "scryfall"];
const FINISHES: [&str; 2] = ["nonfoil", "foil"];

/// A series (printing, source, finish; always retail USD) and a day of it.
type Series = (u8, usize, usize);
type Point = (Series, u8);

#[derive(Debug, Clone)]
enum Op {
    /// New points by `COPY`, as ingestion writes a batch that nothing conflicts with.
    Copy(Vec<Point>),
    /// Points by `INSERT ... ON CONFLICT DO UPDATE`, as ingestion writes a batch that repeats stored days.
    Upsert(Vec<Point>),
    /// Points inserted in a transaction that is rolled back.
    RolledBack(Vec<Point>),
    /// Every point of the days `from..=to`, as a prune deletes them.
    DeleteDays(u8, u8),
    /// A printing deleted (its points go by the cascade) and inserted again.
    DeletePrinting(u8),
    /// One point moved to another series or day, unless a point is there already.
    Move(Point, Point),
    /// `TRUNCATE printings CASCADE`, then the printings again.
    Truncate,
}

fn point() -> impl Strategy<Value = Point> {
    ((0..PRINTINGS, 0..SOURCES.len(), 0..FINISHES.len()), 0u8..24)
}

fn op() -> impl Strategy<Value = Op> {
    let points = || prop::collection::vec(point(), 0..40);
    prop_oneof![
        4 => points().prop_map(Op::Copy),
        4 => points().prop_map(Op::Upsert),
        1 => points().prop_map(Op::RolledBack),
        2 => (0u8..24, 0u8..8).prop_map(|(from, len)| Op::DeleteDays(from, from + len)),
        1 => (0..PRINTINGS).prop_map(Op::DeletePrinting),
        2 => (point(), point()).prop_map(|(from, to)| Op::Move(from, to)),
        1 => Just(Op::Truncate),
    ]
}

fn printing_id(printing: u8) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x005e_51e5_0000_4000_8000_0000_0000_0000 + u128::from(printing))
}

fn day(d: u8) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 9, 1).expect("a date") + chrono::Days::new(u64::from(d))
}

/// The statement's bind arrays for `points`, each point once (a statement may not write a row twice).
fn columns(points: &[Point]) -> (Vec<uuid::Uuid>, Vec<String>, Vec<String>, Vec<NaiveDate>) {
    let unique: BTreeSet<Point> = points.iter().copied().collect();
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((printing, source, finish), d) in unique {
        out.0.push(printing_id(printing));
        out.1.push(SOURCES[source].to_owned());
        out.2.push(FINISHES[finish].to_owned());
        out.3.push(day(d));
    }
    out
}

const UPSERT: &str =
    "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
     SELECT id, source, 'retail', finish, 'USD', day, 1.00 \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::date[]) AS p (id, source, finish, day) \
     ON CONFLICT (scryfall_id, source, price_type, finish, currency, day) \
     DO UPDATE SET price = EXCLUDED.price + price_points.price, recorded_at = now()";

async fn insert_printings(pool: &PgPool) {
    for printing in 0..PRINTINGS {
        sqlx::query(
            "INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity) \
             VALUES ($1, 'Series test card', 'tst', $2, 'rare') ON CONFLICT DO NOTHING",
        )
        .bind(printing_id(printing))
        .bind(printing.to_string())
        .execute(pool)
        .await
        .expect("a printing");
    }
}

/// Runs `op` against Postgres and applies it to `model`.
async fn apply(pool: &PgPool, op: &Op, model: &mut BTreeMap<Series, BTreeSet<u8>>) {
    match op {
        Op::Copy(points) => {
            // Only points the table lacks: a conflict would fail the whole COPY (ingestion then upserts).
            let fresh: Vec<Point> = points
                .iter()
                .filter(|(s, d)| !model.get(s).is_some_and(|days| days.contains(d)))
                .copied()
                .collect();
            let (ids, sources, finishes, days) = columns(&fresh);
            let mut text = String::new();
            for i in 0..ids.len() {
                text.push_str(&format!(
                    "{}\t{}\tretail\t{}\tUSD\t{}\t2.50\n",
                    ids[i], sources[i], finishes[i], days[i]
                ));
            }
            let mut conn = pool.acquire().await.expect("a connection");
            let mut copy = conn
                .copy_in_raw(
                    "COPY price_points (scryfall_id, source, price_type, finish, currency, day, price) FROM STDIN",
                )
                .await
                .expect("COPY starts");
            copy.send(text.as_bytes()).await.expect("COPY rows");
            copy.finish().await.expect("COPY ends");
            for (s, d) in fresh {
                model.entry(s).or_default().insert(d);
            }
        }
        Op::Upsert(points) => {
            let (ids, sources, finishes, days) = columns(points);
            sqlx::query(UPSERT)
                .bind(ids)
                .bind(sources)
                .bind(finishes)
                .bind(days)
                .execute(pool)
                .await
                .expect("upsert");
            for &(s, d) in points {
                model.entry(s).or_default().insert(d);
            }
        }
        Op::RolledBack(points) => {
            let (ids, sources, finishes, days) = columns(points);
            let mut tx = pool.begin().await.expect("a transaction");
            sqlx::query(UPSERT)
                .bind(ids)
                .bind(sources)
                .bind(finishes)
                .bind(days)
                .execute(&mut *tx)
                .await
                .expect("upsert");
            tx.rollback().await.expect("rollback");
        }
        Op::DeleteDays(from, to) => {
            sqlx::query("DELETE FROM price_points WHERE day BETWEEN $1 AND $2")
                .bind(day(*from))
                .bind(day(*to))
                .execute(pool)
                .await
                .expect("delete");
            for days in model.values_mut() {
                days.retain(|d| d < from || d > to);
            }
        }
        Op::DeletePrinting(printing) => {
            sqlx::query("DELETE FROM printings WHERE scryfall_id = $1")
                .bind(printing_id(*printing))
                .execute(pool)
                .await
                .expect("delete a printing");
            insert_printings(pool).await;
            for ((p, _, _), days) in model.iter_mut() {
                if p == printing {
                    days.clear();
                }
            }
        }
        Op::Move(((fp, fs, ff), fd), ((tp, ts, tf), td)) => {
            sqlx::query(
                "UPDATE price_points SET scryfall_id = $5, source = $6, finish = $7, day = $8 \
                 WHERE (scryfall_id, source, price_type, finish, currency, day) = ($1, $2, 'retail', $3, 'USD', $4) \
                   AND NOT EXISTS (SELECT 1 FROM price_points q \
                       WHERE (q.scryfall_id, q.source, q.price_type, q.finish, q.currency, q.day) \
                           = ($5, $6, 'retail', $7, 'USD', $8))",
            )
            .bind(printing_id(*fp))
            .bind(SOURCES[*fs])
            .bind(FINISHES[*ff])
            .bind(day(*fd))
            .bind(printing_id(*tp))
            .bind(SOURCES[*ts])
            .bind(FINISHES[*tf])
            .bind(day(*td))
            .execute(pool)
            .await
            .expect("move");
            let (from, to) = (((*fp, *fs, *ff), *fd), ((*tp, *ts, *tf), *td));
            let present = |(s, d): Point, m: &BTreeMap<Series, BTreeSet<u8>>| {
                m.get(&s).is_some_and(|days| days.contains(&d))
            };
            if from != to && present(from, model) && !present(to, model) {
                model.entry(from.0).or_default().remove(&from.1);
                model.entry(to.0).or_default().insert(to.1);
            }
        }
        Op::Truncate => {
            sqlx::query("TRUNCATE printings CASCADE")
                .execute(pool)
                .await
                .expect("truncate");
            insert_printings(pool).await;
            model.clear();
        }
    }
    model.retain(|_, days| !days.is_empty());
}

type SeriesRow = (uuid::Uuid, String, String, i64, NaiveDate);

/// The model's expected `price_series` rows, in key order.
fn expected(model: &BTreeMap<Series, BTreeSet<u8>>) -> Vec<SeriesRow> {
    let mut rows: Vec<SeriesRow> = model
        .iter()
        .map(|(&(p, s, f), days)| {
            let latest = *days.last().expect("a series in the model has days");
            (
                printing_id(p),
                SOURCES[s].to_owned(),
                FINISHES[f].to_owned(),
                days.len() as i64,
                day(latest),
            )
        })
        .collect();
    rows.sort();
    rows
}

async fn check(stack: &TestStack, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let pool = &stack.pool;
    sqlx::query("TRUNCATE printings CASCADE")
        .execute(pool)
        .await
        .expect("a clean catalog");
    insert_printings(pool).await;
    let mut model = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        apply(pool, op, &mut model).await;
        let points: i64 = sqlx::query_scalar("SELECT count(*) FROM price_points")
            .fetch_one(pool)
            .await
            .expect("points");
        let in_model: usize = model.values().map(BTreeSet::len).sum();
        prop_assert_eq!(points, in_model as i64, "points after op {} ({:?})", i, op);
        let mut rows: Vec<SeriesRow> = sqlx::query_as(
            "SELECT scryfall_id, source, finish, points, latest_day FROM price_series \
             WHERE price_type = 'retail' AND currency = 'USD'",
        )
        .fetch_all(pool)
        .await
        .expect("price_series");
        rows.sort();
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM price_series WHERE price_type <> 'retail' OR currency <> 'USD'",
        )
        .fetch_one(pool)
        .await
        .expect("price_series");
        prop_assert_eq!(others, 0);
        prop_assert_eq!(
            rows,
            expected(&model),
            "price_series after op {} ({:?})",
            i,
            op
        );
    }
    Ok(())
}

#[test]
fn price_series_counts_every_series_as_its_statements_say() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let stack = rt.block_on(TestStack::start()).expect("stack");
    check_generated((24, 400, 200), &prop::collection::vec(op(), 1..16), |ops| {
        rt.block_on(check(&stack, ops))
    });
    rt.block_on(stack.cleanup());
}
