//! Writing the catalog: printings and price points, set-based (`UNNEST` of column arrays) and idempotent
//! (upserts that only touch rows whose values differ, so a redelivered batch changes nothing), `COPY` first
//! where nothing can conflict ([`copy`]), and the `ingestion_runs` bookkeeping that lets a long run continue
//! where it stopped ([`runs`]).

mod copy;
mod runs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::TaskError;

use copy::{copy_price_columns, copy_printings};
pub use runs::{BatchCounts, Ending, IngestOutcome, IngestionRun, NextWork, RunStart};

/// A printing as the catalog stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct PrintingRow {
    pub scryfall_id: Uuid,
    pub oracle_id: Option<Uuid>,
    pub name: String,
    pub set_code: String,
    pub collector_number: String,
    pub rarity: String,
    pub finishes: Vec<String>,
    pub released_at: Option<NaiveDate>,
    pub tcgplayer_id: Option<i32>,
    pub cardmarket_id: Option<i32>,
    pub mtgo_id: Option<i32>,
    pub image_uri: Option<String>,
}

/// One daily price.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceRow {
    pub scryfall_id: Uuid,
    pub source: &'static str,
    pub price_type: &'static str,
    pub finish: &'static str,
    pub currency: &'static str,
    pub day: NaiveDate,
    pub price: Decimal,
}

/// Upserts printings; returns how many rows were inserted or actually changed. Later duplicates of an id in
/// `rows` win (Postgres refuses to update one row twice in a statement).
///
/// While `copy_first` is set, the rows are first written with `COPY` inside a savepoint: a first ingestion
/// finds none of them stored, and `COPY` writes them in well under half the upsert's time. The first batch
/// that finds one already stored rolls its savepoint back, upserts, and clears `copy_first`, so a daily run,
/// which finds every printing stored, pays for one failed `COPY` at most.
pub async fn upsert_printings(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[PrintingRow],
    copy_first: &AtomicBool,
) -> Result<u64, TaskError> {
    let mut by_id: HashMap<Uuid, &PrintingRow> = HashMap::with_capacity(rows.len());
    for r in rows {
        by_id.insert(r.scryfall_id, r);
    }
    if by_id.is_empty() {
        return Ok(0);
    }
    // In key order, so the inserts walk the primary key's pages in order rather than at random.
    let mut rows: Vec<&PrintingRow> = by_id.into_values().collect();
    rows.sort_unstable_by_key(|r| r.scryfall_id);
    if copy_first.load(Ordering::Relaxed) {
        let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
        match copy_printings(&mut savepoint, &rows).await {
            Ok(copied) => {
                savepoint.commit().await?;
                return Ok(copied);
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                copy_first.store(false, Ordering::Relaxed);
                savepoint.rollback().await?
            }
            Err(e) => return Err(e.into()),
        }
    }
    let done = sqlx::query(
        "INSERT INTO printings (scryfall_id, oracle_id, name, set_code, collector_number, rarity, finishes, \
             released_at, tcgplayer_id, cardmarket_id, mtgo_id, image_uri) \
         SELECT u.scryfall_id, u.oracle_id, u.name, u.set_code, u.collector_number, u.rarity, \
             string_to_array(u.finishes, ','), u.released_at, u.tcgplayer_id, u.cardmarket_id, u.mtgo_id, u.image_uri \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::date[], $9::int4[], $10::int4[], $11::int4[], $12::text[]) \
             AS u(scryfall_id, oracle_id, name, set_code, collector_number, rarity, finishes, released_at, \
                  tcgplayer_id, cardmarket_id, mtgo_id, image_uri) \
         ON CONFLICT (scryfall_id) DO UPDATE SET \
             oracle_id = EXCLUDED.oracle_id, name = EXCLUDED.name, set_code = EXCLUDED.set_code, \
             collector_number = EXCLUDED.collector_number, rarity = EXCLUDED.rarity, finishes = EXCLUDED.finishes, \
             released_at = EXCLUDED.released_at, tcgplayer_id = EXCLUDED.tcgplayer_id, \
             cardmarket_id = EXCLUDED.cardmarket_id, mtgo_id = EXCLUDED.mtgo_id, image_uri = EXCLUDED.image_uri, \
             updated_at = now() \
         WHERE (printings.oracle_id, printings.name, printings.set_code, printings.collector_number, \
                printings.rarity, printings.finishes, printings.released_at, printings.tcgplayer_id, \
                printings.cardmarket_id, printings.mtgo_id, printings.image_uri) \
           IS DISTINCT FROM \
               (EXCLUDED.oracle_id, EXCLUDED.name, EXCLUDED.set_code, EXCLUDED.collector_number, \
                EXCLUDED.rarity, EXCLUDED.finishes, EXCLUDED.released_at, EXCLUDED.tcgplayer_id, \
                EXCLUDED.cardmarket_id, EXCLUDED.mtgo_id, EXCLUDED.image_uri)",
    )
    .bind(rows.iter().map(|r| r.scryfall_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.oracle_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.set_code.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.collector_number.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.rarity.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.finishes.join(",")).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.released_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tcgplayer_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cardmarket_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.mtgo_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.image_uri.as_deref()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts printings that are not in the catalog yet (from a source with less detail than Scryfall, such
/// as MTGJSON's history) and records their MTGJSON ids; existing printings keep their data. Returns the rows
/// inserted.
pub async fn insert_missing_printings(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(PrintingRow, Uuid)],
) -> Result<u64, TaskError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let inserted = sqlx::query(
        "INSERT INTO printings (scryfall_id, name, set_code, collector_number, rarity, tcgplayer_id, mtgo_id, mtgjson_uuid) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[], $8::uuid[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(rows.iter().map(|(r, _)| r.scryfall_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(r, _)| r.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(r, _)| r.set_code.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(r, _)| r.collector_number.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(r, _)| r.rarity.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(r, _)| r.tcgplayer_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(r, _)| r.mtgo_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, u)| *u).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    // Existing printings learn their MTGJSON id (once; a uuid never moves to another printing).
    sqlx::query(
        "UPDATE printings p SET mtgjson_uuid = u.mtgjson_uuid \
         FROM UNNEST($1::uuid[], $2::uuid[]) AS u(scryfall_id, mtgjson_uuid) \
         WHERE p.scryfall_id = u.scryfall_id AND p.mtgjson_uuid IS NULL \
           AND NOT EXISTS (SELECT 1 FROM printings q WHERE q.mtgjson_uuid = u.mtgjson_uuid)",
    )
    .bind(rows.iter().map(|(r, _)| r.scryfall_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, u)| *u).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(inserted)
}

/// Price rows as the upsert binds them: one column per field, one entry per key (the last of duplicates,
/// since Postgres refuses to update one row twice in a statement), in key order so the inserts walk the
/// primary key's pages in order rather than at random. Built where the rows are parsed, off the write path.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PriceColumns {
    scryfall_ids: Vec<Uuid>,
    sources: Vec<&'static str>,
    price_types: Vec<&'static str>,
    finishes: Vec<&'static str>,
    currencies: Vec<&'static str>,
    days: Vec<NaiveDate>,
    prices: Vec<Decimal>,
}

impl PriceColumns {
    pub fn new(rows: &[PriceRow]) -> PriceColumns {
        let key = |r: &PriceRow| {
            (
                r.scryfall_id,
                r.source,
                r.price_type,
                r.finish,
                r.currency,
                r.day,
            )
        };
        let mut order: Vec<usize> = (0..rows.len()).collect();
        // Stable: duplicates keep their input order, and the last of each run of equal keys is kept.
        order.sort_by_key(|&i| key(&rows[i]));
        let mut columns = PriceColumns::default();
        for (n, &i) in order.iter().enumerate() {
            let r = &rows[i];
            if order
                .get(n + 1)
                .is_some_and(|&next| key(&rows[next]) == key(r))
            {
                continue;
            }
            columns.scryfall_ids.push(r.scryfall_id);
            columns.sources.push(r.source);
            columns.price_types.push(r.price_type);
            columns.finishes.push(r.finish);
            columns.currencies.push(r.currency);
            columns.days.push(r.day);
            columns.prices.push(r.price);
        }
        columns
    }

    pub fn len(&self) -> usize {
        self.scryfall_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scryfall_ids.is_empty()
    }
}

/// Upserts price points; returns how many were inserted or changed. Later duplicates in `rows` win.
pub async fn upsert_prices(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[PriceRow],
) -> Result<u64, TaskError> {
    upsert_price_columns(tx, &PriceColumns::new(rows)).await
}

/// [`upsert_prices`] for rows already laid out as columns.
///
/// A new day's points never conflict with stored ones (the day is part of the key), and `COPY` writes them
/// faster than any upsert: they are copied inside a savepoint first. When one of them already exists (the same
/// day ingested again, a corrected price), the savepoint is rolled back and the batch upserted instead.
pub async fn upsert_price_columns(
    tx: &mut Transaction<'_, Postgres>,
    columns: &PriceColumns,
) -> Result<u64, TaskError> {
    if columns.is_empty() {
        return Ok(0);
    }
    let mut savepoint = sqlx::Connection::begin(&mut **tx).await?;
    match copy_price_columns(&mut savepoint, columns).await {
        Ok(copied) => {
            savepoint.commit().await?;
            return Ok(copied);
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => savepoint.rollback().await?,
        Err(e) => return Err(e.into()),
    }
    let done = sqlx::query(
        "INSERT INTO price_points (scryfall_id, source, price_type, finish, currency, day, price) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::numeric[]) \
         ON CONFLICT (scryfall_id, source, price_type, finish, currency, day) \
         DO UPDATE SET price = EXCLUDED.price, recorded_at = now() \
         WHERE price_points.price IS DISTINCT FROM EXCLUDED.price",
    )
    .bind(&columns.scryfall_ids)
    .bind(&columns.sources)
    .bind(&columns.price_types)
    .bind(&columns.finishes)
    .bind(&columns.currencies)
    .bind(&columns.days)
    .bind(&columns.prices)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u128, finish: &'static str, day: u32, price: &str) -> PriceRow {
        PriceRow {
            scryfall_id: Uuid::from_u128(id),
            source: "scryfall",
            price_type: "retail",
            finish,
            currency: "USD",
            day: NaiveDate::from_ymd_opt(2026, 11, day).unwrap(),
            price: price.parse().unwrap(),
        }
    }

    #[test]
    fn price_columns_are_in_key_order_with_the_last_duplicate_kept() {
        let rows = [
            row(2, "nonfoil", 26, "1.00"),
            row(1, "foil", 26, "5.00"),
            row(2, "nonfoil", 26, "1.10"),
            row(1, "foil", 25, "4.00"),
            row(2, "nonfoil", 26, "1.20"),
            row(1, "etched", 26, "9.00"),
        ];
        let columns = PriceColumns::new(&rows);
        assert_eq!(columns.len(), 4);
        assert_eq!(
            columns.scryfall_ids,
            [1, 1, 1, 2].map(Uuid::from_u128).to_vec()
        );
        assert_eq!(columns.finishes, ["etched", "foil", "foil", "nonfoil"]);
        assert_eq!(
            columns
                .days
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["2026-11-26", "2026-11-25", "2026-11-26", "2026-11-26"]
        );
        let prices: Vec<String> = columns.prices.iter().map(|p| p.to_string()).collect();
        assert_eq!(prices, ["9.00", "4.00", "5.00", "1.20"]);
        assert!(PriceColumns::new(&[]).is_empty());
    }
}
