//! Writing the catalog: printings and price points, set-based (`UNNEST` of column arrays) and idempotent
//! (upserts that only touch rows whose values differ, so a redelivered batch changes nothing), and the
//! `ingestion_runs` bookkeeping that lets a long run continue where it stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::context::Enqueue;
use crate::envelope::Envelope;
use crate::error::{class, TaskError};
use crate::json_stream::StreamEnd;
use crate::queue::Queue;

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

/// `COPY` of printings, in the text format (see [`copy_text`]). Returns the rows copied.
async fn copy_printings(
    conn: &mut sqlx::PgConnection,
    rows: &[&PrintingRow],
) -> Result<u64, sqlx::Error> {
    let mut payload = String::with_capacity(rows.len() * 200);
    let field = |payload: &mut String, value: Option<&dyn std::fmt::Display>, last: bool| {
        match value {
            Some(v) => copy_text(payload, v),
            None => payload.push_str("\\N"),
        }
        payload.push(if last { '\n' } else { '\t' });
    };
    for r in rows {
        let finishes = text_array_literal(&r.finishes);
        field(&mut payload, Some(&r.scryfall_id), false);
        field(&mut payload, r.oracle_id.as_ref().map(|v| v as _), false);
        field(&mut payload, Some(&r.name), false);
        field(&mut payload, Some(&r.set_code), false);
        field(&mut payload, Some(&r.collector_number), false);
        field(&mut payload, Some(&r.rarity), false);
        field(&mut payload, Some(&finishes), false);
        field(&mut payload, r.released_at.as_ref().map(|v| v as _), false);
        field(&mut payload, r.tcgplayer_id.as_ref().map(|v| v as _), false);
        field(
            &mut payload,
            r.cardmarket_id.as_ref().map(|v| v as _),
            false,
        );
        field(&mut payload, r.mtgo_id.as_ref().map(|v| v as _), false);
        field(&mut payload, r.image_uri.as_ref().map(|v| v as _), true);
    }
    copy_in(
        conn,
        "COPY printings (scryfall_id, oracle_id, name, set_code, collector_number, rarity, finishes, released_at, \
         tcgplayer_id, cardmarket_id, mtgo_id, image_uri) FROM STDIN",
        payload,
    )
    .await
}

/// Appends `value` as one field of `COPY`'s text format: backslash, tab, newline and carriage return escaped.
fn copy_text(out: &mut String, value: &dyn std::fmt::Display) {
    use std::fmt::Write as _;
    let start = out.len();
    let _ = write!(out, "{value}");
    if out[start..].contains(['\\', '\t', '\n', '\r']) {
        let raw = out.split_off(start);
        for c in raw.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
    }
}

/// A `text[]` literal: every element double-quoted, with `"` and `\` escaped inside.
fn text_array_literal(items: &[String]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Sends `payload` (whole lines of `COPY`'s text format) through `statement`; returns the rows copied.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    statement: &'static str,
    payload: String,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(payload.into_bytes()).await {
        let _ = copy.abort("sending failed").await;
        return Err(e);
    }
    copy.finish().await
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

/// `COPY` of the batch's points (text format; the fields are uuids, dates, decimals and the fixed source, type,
/// finish and currency names, none of which needs escaping). Returns the rows copied.
async fn copy_price_columns(
    conn: &mut sqlx::PgConnection,
    columns: &PriceColumns,
) -> Result<u64, sqlx::Error> {
    use std::fmt::Write as _;
    let mut payload = String::with_capacity(columns.len() * 80);
    for i in 0..columns.len() {
        let _ = writeln!(
            payload,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            columns.scryfall_ids[i],
            columns.sources[i],
            columns.price_types[i],
            columns.finishes[i],
            columns.currencies[i],
            columns.days[i],
            columns.prices[i]
        );
    }
    copy_in(
        conn,
        "COPY price_points (scryfall_id, source, price_type, finish, currency, day, price) FROM STDIN",
        payload,
    )
    .await
}

/// How an ingestion run ended, as its report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestOutcome {
    /// The whole file is in.
    Completed,
    /// Stopped before the deadline; a follow-up message continues from the cursor.
    Continued,
    /// The version was already ingested.
    Unchanged,
}

/// Where an ingestion of one upstream file version stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStart {
    /// This version was already ingested successfully.
    Unchanged { finished_at: Option<DateTime<Utc>> },
    /// Start (cursor 0) or resume after `cursor` items.
    Proceed { cursor: u64, resumed: bool },
}

/// The bookkeeping row of one ingestion (`ingestion_runs`).
#[derive(Debug, Clone)]
pub struct IngestionRun {
    pub source: String,
    pub file_version: DateTime<Utc>,
}

/// How a run that was not an error ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// Continues in the follow-up message with this envelope id.
    Continued(String),
}

/// Counts applied together with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub items: u64,
    pub printings: u64,
    pub prices: u64,
    pub malformed: u64,
}

/// The work an ingestion run leads to.
pub struct NextWork<'a> {
    /// This task, its queue and its arguments: sent again, with a continuation id, to resume from the cursor
    /// when the run stops for the deadline.
    pub resume: (&'a str, Queue, serde_json::Map<String, serde_json::Value>),
    /// The task, and its queue, sent once the whole file is applied.
    pub then: Option<(&'a str, Queue)>,
}

impl IngestionRun {
    /// Registers the run. A succeeded version is `Unchanged` unless `force`; a version left running or failed
    /// resumes from its cursor (single-instance leases make sure no one else is at it); older versions still
    /// marked running are superseded.
    pub async fn begin(
        pool: &PgPool,
        source: &str,
        file_version: DateTime<Utc>,
        file_uri: &str,
        force: bool,
    ) -> Result<(IngestionRun, RunStart), TaskError> {
        let run = IngestionRun {
            source: source.to_owned(),
            file_version,
        };
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE ingestion_runs SET status = 'failed', error = 'superseded by a newer file', updated_at = now() \
             WHERE source = $1 AND file_version < $2 AND status = 'running'",
        )
        .bind(source)
        .bind(file_version)
        .execute(&mut *tx)
        .await?;
        let existing: Option<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT status, cursor, finished_at FROM ingestion_runs WHERE source = $1 AND file_version = $2 FOR UPDATE",
        )
        .bind(source)
        .bind(file_version)
        .fetch_optional(&mut *tx)
        .await?;
        let start = match existing {
            Some((status, _, finished_at)) if status == "succeeded" && !force => {
                RunStart::Unchanged { finished_at }
            }
            Some((status, cursor, _)) if status != "succeeded" => {
                sqlx::query(
                    "UPDATE ingestion_runs SET status = 'running', error = NULL, updated_at = now() \
                     WHERE source = $1 AND file_version = $2",
                )
                .bind(source)
                .bind(file_version)
                .execute(&mut *tx)
                .await?;
                RunStart::Proceed {
                    cursor: cursor as u64,
                    resumed: cursor > 0,
                }
            }
            _ => {
                sqlx::query(
                    "INSERT INTO ingestion_runs (source, file_version, file_uri, status) VALUES ($1, $2, $3, 'running') \
                     ON CONFLICT (source, file_version) DO UPDATE SET status = 'running', cursor = 0, items_seen = 0, \
                         printings_upserted = 0, prices_written = 0, malformed = 0, error = NULL, started_at = now(), \
                         updated_at = now(), finished_at = NULL, file_uri = EXCLUDED.file_uri",
                )
                .bind(source)
                .bind(file_version)
                .bind(file_uri)
                .execute(&mut *tx)
                .await?;
                RunStart::Proceed {
                    cursor: 0,
                    resumed: false,
                }
            }
        };
        tx.commit().await?;
        Ok((run, start))
    }

    /// Moves the cursor past a batch, in the batch's own transaction: a batch is applied exactly when the
    /// cursor says so, which is what makes a resumed run free of gaps and duplicates.
    pub async fn advance(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        counts: BatchCounts,
    ) -> Result<u64, TaskError> {
        let cursor: i64 = sqlx::query_scalar(
            "UPDATE ingestion_runs SET cursor = cursor + $3, items_seen = items_seen + $3, \
                 printings_upserted = printings_upserted + $4, prices_written = prices_written + $5, \
                 malformed = malformed + $6, updated_at = now() \
             WHERE source = $1 AND file_version = $2 RETURNING cursor",
        )
        .bind(&self.source)
        .bind(self.file_version)
        .bind(counts.items as i64)
        .bind(counts.printings as i64)
        .bind(counts.prices as i64)
        .bind(counts.malformed as i64)
        .fetch_one(&mut **tx)
        .await?;
        Ok(cursor as u64)
    }

    pub async fn succeed(&self, pool: &PgPool) -> Result<(), TaskError> {
        sqlx::query(
            "UPDATE ingestion_runs SET status = 'succeeded', finished_at = now(), updated_at = now() \
             WHERE source = $1 AND file_version = $2",
        )
        .bind(&self.source)
        .bind(self.file_version)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Settles the run once its stream has ended: succeeded when every item of the file was applied; continued
    /// in a follow-up message (`task` with `kwargs` on `queue`, delivered two seconds later so this run's lease
    /// is released first) when it stopped for the deadline; failed, retryably, when the download was truncated
    /// or corrupt, keeping the cursor so that the retry resumes after the applied batches.
    pub async fn conclude(
        &self,
        db: &PgPool,
        out: &dyn Enqueue,
        end: StreamEnd,
        cursor: u64,
        stopped_for_deadline: bool,
        next: NextWork<'_>,
    ) -> Result<Ending, TaskError> {
        let NextWork {
            resume: (task, queue, kwargs),
            then,
        } = next;
        let source = &self.source;
        match end {
            StreamEnd::Complete(total) if cursor >= total => {
                if let Some((next, next_queue)) = then {
                    // One follow-up per ingestion run (a version's run and its continuations share a start; a
                    // forced rerun starts anew): its id makes a repeated one a duplicate delivery.
                    let started: DateTime<Utc> = sqlx::query_scalar(
                        "SELECT started_at FROM ingestion_runs WHERE source = $1 AND file_version = $2",
                    )
                    .bind(source)
                    .bind(self.file_version)
                    .fetch_one(db)
                    .await?;
                    let id = format!(
                        "after:{source}:{}:{}",
                        self.file_version.timestamp(),
                        started.timestamp_micros()
                    );
                    let envelope = Envelope::new(next, serde_json::Map::new()).with_id(&id);
                    out.enqueue(next_queue, &envelope, 0).await?;
                    tracing::info!(source = %source, task = next, id = %id, "enqueued the follow-up analytics");
                }
                self.succeed(db).await?;
                tracing::info!(source = %source, items = total, "ingestion complete");
                Ok(Ending::Completed)
            }
            StreamEnd::Complete(_) | StreamEnd::Stopped if stopped_for_deadline => {
                let id = format!(
                    "continue:{source}:{}:{cursor}",
                    self.file_version.timestamp()
                );
                let envelope = Envelope::new(task, kwargs).with_id(&id);
                // Two seconds later, so this run has released its lease when the follow-up arrives.
                out.enqueue(queue, &envelope, 2).await?;
                tracing::info!(source = %source, cursor, continuation = %id, "deadline near: continuing in a follow-up message");
                Ok(Ending::Continued(id))
            }
            StreamEnd::Complete(total) => Err(TaskError::retryable(
                class::CORRUPT_DOWNLOAD,
                format!(
                    "{source}: the reader finished {total} items but only {cursor} were applied"
                ),
            )),
            StreamEnd::Stopped => Err(TaskError::retryable(
                class::CORRUPT_DOWNLOAD,
                format!("{source}: reading stopped early"),
            )),
            StreamEnd::Corrupt(detail) => {
                let message = format!(
                    "{source} version {}: the download is truncated or corrupt after item {cursor}: {detail}",
                    self.file_version.to_rfc3339()
                );
                self.fail(db, &message).await?;
                Err(TaskError::retryable(class::CORRUPT_DOWNLOAD, message))
            }
        }
    }

    /// Records why the run stopped; its cursor stays, so the next run resumes after the applied batches.
    pub async fn fail(&self, pool: &PgPool, error: &str) -> Result<(), TaskError> {
        sqlx::query(
            "UPDATE ingestion_runs SET status = 'failed', error = $3, updated_at = now() \
             WHERE source = $1 AND file_version = $2",
        )
        .bind(&self.source)
        .bind(self.file_version)
        .bind(error)
        .execute(pool)
        .await?;
        Ok(())
    }
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
