//! Rows for `COPY ... FROM STDIN`, built in memory a field at a time and sent in one piece: in Postgres' text
//! format ([`CopyRows`]), or in its binary format ([`BinaryRows`]), which Postgres reads without parsing text
//! (a metrics row's 14 `numeric` fields took about half of the server's time for each text row).

mod binary;
mod text;

pub use binary::{BinaryField, BinaryRows};
pub use text::CopyRows;

/// Sends `data` through `statement` (a `COPY ... FROM STDIN`); returns the rows copied.
async fn send(
    conn: &mut sqlx::PgConnection,
    statement: &'static str,
    data: Vec<u8>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("sending failed").await;
        return Err(e);
    }
    copy.finish().await
}
