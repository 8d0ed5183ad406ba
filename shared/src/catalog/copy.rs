//! `COPY ... FROM STDIN` in the text format, for batches that cannot conflict with stored rows: every field
//! escaped as the format requires (backslash, tab, newline, carriage return), arrays as quoted literals.

use super::{PriceColumns, PrintingRow};

/// `COPY` of printings, in the text format (see [`copy_text`]). Returns the rows copied.
pub(super) async fn copy_printings(
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

/// `COPY` of the batch's points (text format; the fields are uuids, dates, decimals and the fixed source, type,
/// finish and currency names, none of which needs escaping). Returns the rows copied.
pub(super) async fn copy_price_columns(
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
