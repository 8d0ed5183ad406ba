//! `COPY`'s text format: fields separated by tabs, rows by newlines, `\N` for NULL, and backslash, tab, newline
//! and carriage return escaped inside a field.

use std::fmt::{Display, Write as _};

/// Whole rows of `COPY`'s text format, built a field at a time.
#[derive(Debug, Default)]
pub struct CopyRows {
    text: String,
    rows: u64,
    row_started: bool,
}

impl CopyRows {
    pub fn with_capacity(bytes: usize) -> CopyRows {
        CopyRows {
            text: String::with_capacity(bytes),
            ..CopyRows::default()
        }
    }

    /// Appends a field, escaped.
    pub fn field(&mut self, value: impl Display) -> &mut Self {
        self.separate();
        let start = self.text.len();
        let _ = write!(self.text, "{value}");
        if self.text[start..].contains(['\\', '\t', '\n', '\r']) {
            let raw = self.text.split_off(start);
            for c in raw.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '\t' => self.text.push_str("\\t"),
                    '\n' => self.text.push_str("\\n"),
                    '\r' => self.text.push_str("\\r"),
                    c => self.text.push(c),
                }
            }
        }
        self
    }

    /// Appends a field, or NULL.
    pub fn optional(&mut self, value: Option<impl Display>) -> &mut Self {
        match value {
            Some(v) => self.field(v),
            None => {
                self.separate();
                self.text.push_str("\\N");
                self
            }
        }
    }

    /// Appends a `bytea` field in its hex form (`\x` and two digits a byte; the backslash escaped for `COPY`).
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.separate();
        self.text.push_str("\\\\x");
        // Straight into the text: `hex::encode` builds a string a char at a time, which was a tenth of the
        // client's time in a run that writes every series' window.
        self.text.reserve(value.len() * 2);
        for &byte in value {
            self.text.push(char::from(DIGITS[usize::from(byte >> 4)]));
            self.text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        self
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.text.push('\n');
        self.rows += 1;
        self.row_started = false;
    }

    /// Complete rows so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn separate(&mut self) {
        if self.row_started {
            self.text.push('\t');
        }
        self.row_started = true;
    }

    /// Sends the rows through `statement` (a `COPY ... FROM STDIN` in the text format); returns the rows
    /// copied.
    pub async fn send(
        self,
        conn: &mut sqlx::PgConnection,
        statement: &'static str,
    ) -> Result<u64, sqlx::Error> {
        debug_assert!(!self.row_started, "a row was left unfinished");
        super::send(conn, statement, self.text.into_bytes()).await
    }
}

#[cfg(test)]
mod tests {
    use super::CopyRows;

    #[test]
    fn fields_are_tab_separated_rows_newline_ended_and_nulls_written_as_backslash_n() {
        let mut rows = CopyRows::default();
        rows.field(1).optional(None::<i32>).field("x").end_row();
        rows.optional(Some(2.5)).field("y").end_row();
        assert_eq!(rows.rows(), 2);
        assert_eq!(rows.text, "1\t\\N\tx\n2.5\ty\n");
    }

    #[test]
    fn the_four_special_characters_are_escaped_and_nothing_else() {
        let mut rows = CopyRows::default();
        rows.field("a\\b\tc\nd\re \"{}' é").end_row();
        assert_eq!(rows.text, "a\\\\b\\tc\\nd\\re \"{}' é\n");
    }

    #[test]
    fn bytes_are_written_in_bytea_hex_form_with_the_backslash_escaped() {
        let mut rows = CopyRows::default();
        rows.bytes(&[0x01, 0xab, 0x00]).bytes(&[]).end_row();
        // COPY reads `\\x01ab00` as the text `\x01ab00`, which bytea reads as three bytes.
        assert_eq!(rows.text, "\\\\x01ab00\t\\\\x\n");
    }
}
