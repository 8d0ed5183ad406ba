//! `COPY`'s binary format: the signature `PGCOPY\n\xff\r\n\0` and two zero words (flags, header extension),
//! then each row as its field count and each field as its length in bytes (-1 for NULL) and its value as the
//! column type's binary (`send`) form, all big-endian; a field count of -1 ends the data.

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use uuid::Uuid;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The days from 0001-01-01 to 2000-01-01, Postgres' day 0.
const POSTGRES_EPOCH_FROM_CE: i32 = 730_120;

/// A value with a binary form in `COPY` (each for the column type named).
pub trait BinaryField {
    fn write(&self, out: &mut Vec<u8>);
}

/// `uuid`: the 16 bytes.
impl BinaryField for Uuid {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

/// `text`: the UTF-8 bytes (the connection's encoding).
impl BinaryField for str {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl BinaryField for String {
    fn write(&self, out: &mut Vec<u8>) {
        self.as_str().write(out);
    }
}

/// `date`: days since 2000-01-01.
impl BinaryField for NaiveDate {
    fn write(&self, out: &mut Vec<u8>) {
        (self.num_days_from_ce() - POSTGRES_EPOCH_FROM_CE).write(out);
    }
}

/// `numeric`, with the decimal's scale.
impl BinaryField for Decimal {
    fn write(&self, out: &mut Vec<u8>) {
        crate::pg_numeric::write_binary(*self, out);
    }
}

/// `float8`: the IEEE 754 bits.
impl BinaryField for f64 {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_be_bytes());
    }
}

/// `int4`.
impl BinaryField for i32 {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

/// `bytea`: the bytes.
impl BinaryField for [u8] {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<T: BinaryField + ?Sized> BinaryField for &T {
    fn write(&self, out: &mut Vec<u8>) {
        (**self).write(out);
    }
}

/// Whole rows of `COPY`'s binary format, built a field at a time.
#[derive(Debug)]
pub struct BinaryRows {
    data: Vec<u8>,
    rows: u64,
    /// Where the current row's field count goes, and the fields so far.
    row: Option<(usize, i16)>,
}

impl Default for BinaryRows {
    fn default() -> BinaryRows {
        BinaryRows::with_capacity(0)
    }
}

impl BinaryRows {
    pub fn with_capacity(bytes: usize) -> BinaryRows {
        let mut data = Vec::with_capacity(bytes.max(SIGNATURE.len() + 8));
        data.extend_from_slice(SIGNATURE);
        data.extend_from_slice(&[0; 8]);
        BinaryRows {
            data,
            rows: 0,
            row: None,
        }
    }

    /// Appends a field.
    pub fn field(&mut self, value: impl BinaryField) -> &mut Self {
        let at = self.start_field();
        self.data.extend_from_slice(&[0; 4]);
        value.write(&mut self.data);
        // Postgres refuses a field over 1 GB anyway; these are at most a window's few hundred bytes.
        let length = i32::try_from(self.data.len() - at - 4).unwrap_or(i32::MAX);
        self.data[at..at + 4].copy_from_slice(&length.to_be_bytes());
        self
    }

    /// Appends a field, or NULL.
    pub fn optional(&mut self, value: Option<impl BinaryField>) -> &mut Self {
        match value {
            Some(v) => self.field(v),
            None => {
                self.start_field();
                self.data.extend_from_slice(&(-1i32).to_be_bytes());
                self
            }
        }
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        let (at, fields) = self.row.take().unwrap_or((self.data.len(), 0));
        if at == self.data.len() {
            // A row of no fields.
            self.data.extend_from_slice(&[0; 2]);
        }
        self.data[at..at + 2].copy_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    /// Complete rows so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Starts a field (and the row, at its first field); returns where the field begins.
    fn start_field(&mut self) -> usize {
        match &mut self.row {
            Some((_, fields)) => *fields += 1,
            None => {
                self.row = Some((self.data.len(), 1));
                self.data.extend_from_slice(&[0; 2]);
            }
        }
        self.data.len()
    }

    /// Sends the rows through `statement` (a `COPY ... FROM STDIN (FORMAT binary)`); returns the rows copied.
    pub async fn send(
        mut self,
        conn: &mut sqlx::PgConnection,
        statement: &'static str,
    ) -> Result<u64, sqlx::Error> {
        debug_assert!(self.row.is_none(), "a row was left unfinished");
        self.data.extend_from_slice(&(-1i16).to_be_bytes());
        super::send(conn, statement, self.data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_a_field_count_then_each_field_as_its_length_and_bytes() {
        let mut rows = BinaryRows::default();
        rows.field(7i32).optional(None::<i32>).field("ab").end_row();
        rows.end_row();
        assert_eq!(rows.rows(), 2);
        let mut expected = b"PGCOPY\n\xff\r\n\0".to_vec();
        expected.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        // Three fields: int4 7 (4 bytes), NULL (-1), text "ab" (2 bytes); then a row of none.
        expected.extend([0, 3, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff]);
        expected.extend([0, 0, 0, 2, b'a', b'b', 0, 0]);
        assert_eq!(rows.data, expected);
    }

    #[test]
    fn dates_count_days_from_2000_and_floats_are_their_bits() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let bytes = |value: &dyn BinaryField| {
            let mut out = Vec::new();
            value.write(&mut out);
            out
        };
        assert_eq!(bytes(&day(2000, 1, 1)), 0i32.to_be_bytes());
        // 2000 is a leap year: 366 days to 2001-01-01; 1999-12-31 is day -1.
        assert_eq!(bytes(&day(2001, 1, 1)), 366i32.to_be_bytes());
        assert_eq!(bytes(&day(1999, 12, 31)), (-1i32).to_be_bytes());
        // 1.5 is 0x3FF8000000000000 in IEEE 754 double precision.
        assert_eq!(bytes(&1.5f64), [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    }
}
