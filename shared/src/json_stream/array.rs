//! The elements of a top-level JSON array, found by a byte scanner rather than a full parse.
//!
//! serde_json reading from an `io::Read` goes a byte at a time and tracks lines and columns; on a bulk file
//! of hundreds of MB that alone kept a core busy while the ingestion shared two cores with Postgres. The
//! scanner reads 256 KiB at a time and finds where each element ends by its brackets, jumping through strings
//! with `memchr`; each element is then validated on its own by serde_json's slice parser, which is fast, so
//! invalid JSON is still reported (with its byte offset) and never handed on.

use std::io::Read;

use serde::de::Error as _;
use serde_json::value::RawValue;

use super::{Item, Sink};

const CHUNK: usize = 256 * 1024;

struct Scanner<R> {
    reader: R,
    /// Input bytes in `buf[..end]`; the rest is room to read into (never zeroed again once allocated).
    buf: Vec<u8>,
    end: usize,
    pos: usize,
    /// Bytes of the input before `buf[0]`, for error offsets.
    dropped: u64,
}

type Result<T> = std::result::Result<T, serde_json::Error>;

fn corrupt(message: String) -> serde_json::Error {
    serde_json::Error::custom(message)
}

impl<R: Read> Scanner<R> {
    /// Reads more input, first dropping what lies before `keep` (indices into `buf` shift down by it).
    /// `false` at the end of the input.
    fn refill(&mut self, keep: usize) -> Result<bool> {
        if keep > 0 {
            self.buf.copy_within(keep..self.end, 0);
            self.end -= keep;
            self.pos -= keep;
            self.dropped += keep as u64;
        }
        if self.buf.len() - self.end < CHUNK / 2 {
            // Only an element of more than half a chunk grows the buffer.
            self.buf.resize(self.end + CHUNK, 0);
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(format!("reading the document failed: {e}"))),
            }
        }
    }

    fn offset(&self) -> u64 {
        self.dropped + self.pos as u64
    }

    /// The next byte that is not JSON whitespace, without consuming it; `None` at the end of the input.
    fn peek(&mut self) -> Result<Option<u8>> {
        loop {
            while self.pos < self.end {
                match self.buf[self.pos] {
                    b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                    b => return Ok(Some(b)),
                }
            }
            let keep = self.pos;
            if !self.refill(keep)? {
                return Ok(None);
            }
        }
    }

    /// The extent of the value starting at `pos` (not whitespace): `buf[start..end]`, with `pos` left at its
    /// end. Brackets are matched by depth only; the element's own validation catches a mismatch.
    fn value(&mut self) -> Result<(usize, usize)> {
        let mut start = self.pos;
        let (mut depth, mut in_string) = (0usize, false);
        loop {
            if self.pos >= self.end {
                if !self.refill(start)? {
                    return Err(corrupt(format!(
                        "EOF while parsing a value at byte {}",
                        self.offset()
                    )));
                }
                start = 0;
                continue;
            }
            if in_string {
                match memchr::memchr2(b'"', b'\\', &self.buf[self.pos..self.end]) {
                    None => self.pos = self.end,
                    Some(i) if self.buf[self.pos + i] == b'\\' => self.pos += i + 2,
                    Some(i) => {
                        self.pos += i + 1;
                        in_string = false;
                        if depth == 0 {
                            return Ok((start, self.pos));
                        }
                    }
                }
                continue;
            }
            match self.buf[self.pos] {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Ok((start, self.pos)),
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.pos += 1;
                        return Ok((start, self.pos));
                    }
                }
                b',' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => return Ok((start, self.pos)),
                _ => {}
            }
            self.pos += 1;
        }
    }
}

/// Scans `[ element, ... ]` from `reader`, skipping the first `sink.skip` elements (counted, not validated: an
/// earlier run read them) and pushing the rest into `sink`. Returns the number of elements in the array.
pub(super) fn read<R: Read>(reader: R, sink: &mut Sink) -> Result<u64> {
    let mut s = Scanner {
        reader,
        buf: vec![0; CHUNK],
        end: 0,
        pos: 0,
        dropped: 0,
    };
    match s.peek()? {
        Some(b'[') => s.pos += 1,
        Some(b) => {
            return Err(corrupt(format!(
                "expected a JSON array, found `{}` at byte {}",
                b as char,
                s.offset()
            )))
        }
        None => {
            return Err(corrupt(
                "EOF while parsing a JSON array: the document is empty".to_owned(),
            ))
        }
    }
    let mut first = true;
    loop {
        match s.peek()? {
            Some(b']') if first => {
                s.pos += 1;
                break;
            }
            Some(_) => {}
            None => {
                return Err(corrupt(format!(
                    "EOF while parsing a list at byte {}",
                    s.offset()
                )))
            }
        }
        first = false;
        let at = s.offset();
        let (start, end) = s.value()?;
        if end == start {
            return Err(corrupt(format!("expected a value at byte {at}")));
        }
        if sink.seen >= sink.skip {
            let raw = std::str::from_utf8(&s.buf[start..end])
                .map_err(|e| {
                    corrupt(format!(
                        "element {} (byte {at}) is not UTF-8: {e}",
                        sink.seen + 1
                    ))
                })
                .and_then(|text| {
                    RawValue::from_string(text.to_owned())
                        .map_err(|e| corrupt(format!("element {} (byte {at}): {e}", sink.seen + 1)))
                })?;
            sink.counted();
            sink.push::<serde_json::Error>(Item { key: None, raw })?;
        } else {
            sink.counted();
        }
        match s.peek()? {
            Some(b',') => s.pos += 1,
            Some(b']') => {
                s.pos += 1;
                break;
            }
            Some(b) => {
                return Err(corrupt(format!(
                    "expected `,` or `]` at byte {}, found `{}`",
                    s.offset(),
                    b as char
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "EOF while parsing a list at byte {}",
                    s.offset()
                )))
            }
        }
    }
    if let Some(b) = s.peek()? {
        return Err(corrupt(format!(
            "trailing characters at byte {}: `{}`",
            s.offset(),
            b as char
        )));
    }
    sink.flush::<serde_json::Error>()?;
    Ok(sink.seen)
}

#[cfg(test)]
mod tests {
    use super::super::{read_all, Limits, Shape, StreamEnd};
    use proptest::prelude::*;
    use serde_json::Value;
    use tokio::sync::mpsc;

    /// Hands the document over a few bytes at a time, so elements, strings and escapes straddle reads.
    struct Trickle<'a> {
        doc: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.doc.len());
            buf[..n].copy_from_slice(&self.doc[..n]);
            self.doc = &self.doc[n..];
            Ok(n)
        }
    }

    fn scan(doc: &[u8], step: usize, skip: u64) -> (Vec<Value>, StreamEnd) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let end = read_all(
            Trickle { doc, step },
            Shape::Array,
            skip,
            3,
            Limits::default(),
            &tx,
        );
        drop(tx);
        let mut items = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            items.extend(
                batch
                    .into_iter()
                    .map(|i| serde_json::from_str::<Value>(i.raw.get()).unwrap()),
            );
        }
        (items, end)
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            // Quotes, backslashes, control characters, brackets and commas inside strings.
            "[a-z\"\\\\\\[\\]{},: \t\n\u{1}é🂡]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\]{0,5}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the values and however the bytes arrive, the scanner hands over exactly the array's
        /// elements, in order, as serde_json reads them; after a skip, exactly the rest.
        #[test]
        fn elements_are_the_arrays_elements(
            values in prop::collection::vec(json(), 0..12),
            pretty in any::<bool>(),
            step in 1usize..40,
            skip in 0u64..4,
        ) {
            let doc = if pretty { serde_json::to_vec_pretty(&values) } else { serde_json::to_vec(&values) }.unwrap();
            let (items, end) = scan(&doc, step, skip);
            prop_assert!(matches!(end, StreamEnd::Complete(n) if n == values.len() as u64), "{end:?}");
            let rest: Vec<Value> = values.iter().skip(skip as usize).cloned().collect();
            prop_assert_eq!(items, rest);
        }

        /// A document cut anywhere is reported corrupt, and what was handed over before the cut is a prefix of
        /// the elements: a truncated download never yields a wrong or partial element.
        #[test]
        fn a_cut_document_is_corrupt_after_a_prefix(
            values in prop::collection::vec(json(), 1..8),
            cut in any::<prop::sample::Index>(),
            step in 1usize..40,
        ) {
            let doc = serde_json::to_vec_pretty(&values).unwrap();
            let cut = cut.index(doc.len());
            let (items, end) = scan(&doc[..cut], step, 0);
            prop_assert!(matches!(end, StreamEnd::Corrupt(_)), "{end:?}");
            prop_assert!(items.len() <= values.len());
            prop_assert_eq!(&items[..], &values[..items.len()]);
        }
    }

    #[test]
    fn invalid_elements_and_separators_are_reported_with_their_offset() {
        for (doc, wanted) in [
            (&br#"[{"a":1},{"b":}]"#[..], "element 2 (byte 9)"),
            (br#"[1 2]"#, "expected `,` or `]` at byte 3"),
            (br#"[1,]"#, "expected a value at byte 3"),
            (br#"[1,,2]"#, "expected a value at byte 3"),
            (br#"[{"a":[1}]"#, "element 1 (byte 1)"),
            (br#"[{"a":[1}"#, "EOF while parsing a value"),
            (br#"[1] x"#, "trailing characters at byte 4"),
            (b"[\"\xff\"]", "not UTF-8"),
            (b"  ", "the document is empty"),
        ] {
            let (_, end) = scan(doc, 3, 0);
            match end {
                StreamEnd::Corrupt(m) => {
                    assert!(m.contains(wanted), "{}: {m}", String::from_utf8_lossy(doc))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(doc)),
            }
        }
        assert!(matches!(scan(b" [ ] ", 1, 0).1, StreamEnd::Complete(0)));
    }
}
