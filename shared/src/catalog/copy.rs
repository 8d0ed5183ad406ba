//! `COPY ... FROM STDIN` in the text format ([`crate::pg_copy`]), for batches that cannot conflict with stored
//! rows; arrays as quoted literals.

use super::{PriceColumns, PrintingRow};
use crate::pg_copy::CopyRows;

/// `COPY` of printings. Returns the rows copied.
pub(super) async fn copy_printings(
    conn: &mut sqlx::PgConnection,
    rows: &[&PrintingRow],
) -> Result<u64, sqlx::Error> {
    let mut out = CopyRows::with_capacity(rows.len() * 200);
    for r in rows {
        out.field(r.scryfall_id)
            .optional(r.oracle_id)
            .field(&r.name)
            .field(&r.set_code)
            .field(&r.collector_number)
            .field(&r.rarity)
            .field(text_array_literal(&r.finishes))
            .optional(r.released_at)
            .optional(r.tcgplayer_id)
            .optional(r.cardmarket_id)
            .optional(r.mtgo_id)
            .optional(r.image_uri.as_ref())
            .end_row();
    }
    out.send(
        conn,
        "COPY printings (scryfall_id, oracle_id, name, set_code, collector_number, rarity, finishes, released_at, \
         tcgplayer_id, cardmarket_id, mtgo_id, image_uri) FROM STDIN",
    )
    .await
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

/// `COPY` of the batch's points. Returns the rows copied.
pub(super) async fn copy_price_columns(
    conn: &mut sqlx::PgConnection,
    columns: &PriceColumns,
) -> Result<u64, sqlx::Error> {
    let mut out = CopyRows::with_capacity(columns.len() * 80);
    for i in 0..columns.len() {
        out.field(columns.scryfall_ids[i])
            .field(columns.sources[i])
            .field(columns.price_types[i])
            .field(columns.finishes[i])
            .field(columns.currencies[i])
            .field(columns.days[i])
            .field(columns.prices[i])
            .end_row();
    }
    out.send(
        conn,
        "COPY price_points (scryfall_id, source, price_type, finish, currency, day, price) FROM STDIN",
    )
    .await
}
