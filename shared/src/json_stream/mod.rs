//! Streaming JSON: the elements of a huge top-level array (a Scryfall bulk file), or the entries of a huge
//! `"data"` object (an MTGJSON file), handed over in batches while the download is still arriving. Only one
//! batch is ever held; the file never is.
//!
//! Both run on a blocking thread that reads the async body through `SyncIoBridge`. An array's elements are
//! found by a byte scanner and each validated by serde_json ([`array`]); a data object is parsed by
//! serde_json, driven entry by entry through a `MapAccess` visitor.

mod array;
mod limits;

pub use limits::Limits;
use limits::{Limited, Tally};

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// The receiver went away: the consumer decided to stop (a deadline), not an error in the file.
pub const STOPPED: &str = "stopped by the consumer";

/// One item of the stream: an array element, or a `data` entry with its key.
#[derive(Debug)]
pub struct Item {
    pub key: Option<String>,
    pub raw: Box<RawValue>,
}

/// How a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The whole document was read; the number of items in it (skipped ones included).
    Complete(u64),
    /// The consumer stopped reading.
    Stopped,
    /// The document is truncated or not valid JSON of the expected shape.
    Corrupt(String),
    /// The document, or one item of it, is over its [`Limits`]: reading stopped there.
    TooLarge(String),
}

/// Which items to deliver.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `[ item, item, ... ]`
    Array,
    /// `{ ..., "data": { key: item, ... }, ... }`
    DataObject,
}

/// Counts bytes read, for progress against a known file size.
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R) -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            CountingReader {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The `meta` member of a data-object document, handed over before any item so the consumer can decide how
/// many items to skip (a resumed run) or to stop (a version already ingested).
pub struct MetaHandshake {
    /// The raw `meta` value, or `None` if `data` came first.
    pub meta: tokio::sync::oneshot::Receiver<Option<Box<RawValue>>>,
    /// Send the number of items to skip; drop it to stop reading.
    pub skip: std::sync::mpsc::SyncSender<u64>,
}

struct MetaSide {
    meta: tokio::sync::oneshot::Sender<Option<Box<RawValue>>>,
    skip: std::sync::mpsc::Receiver<u64>,
}

/// Like [`spawn`] for a `{"meta": ..., "data": {...}}` document, with the skip count decided after `meta`.
pub fn spawn_with_meta<R: Read + Send + 'static>(
    reader: R,
    batch: usize,
    limits: Limits,
) -> (
    MetaHandshake,
    mpsc::Receiver<Vec<Item>>,
    tokio::task::JoinHandle<StreamEnd>,
) {
    let (tx, rx) = mpsc::channel(2);
    let (meta_tx, meta_rx) = tokio::sync::oneshot::channel();
    let (skip_tx, skip_rx) = std::sync::mpsc::sync_channel(1);
    let side = MetaSide {
        meta: meta_tx,
        skip: skip_rx,
    };
    let handle = tokio::task::spawn_blocking(move || {
        let tally = Arc::new(Tally::default());
        let reader = Limited {
            inner: reader,
            limits,
            tally: tally.clone(),
        };
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
            256 * 1024,
            reader,
        ));
        let sink = Sink {
            tx: &tx,
            skip: 0,
            batch: batch.max(1),
            buffer: Vec::with_capacity(batch),
            seen: 0,
            tally: &tally,
        };
        let result = de.deserialize_map(TopVisitor(sink, Some(side)));
        finish(result.and_then(|n| de.end().map(|()| n)), &tally)
    });
    (
        MetaHandshake {
            meta: meta_rx,
            skip: skip_tx,
        },
        rx,
        handle,
    )
}

fn finish(result: Result<u64, serde_json::Error>, tally: &Tally) -> StreamEnd {
    if let Some(why) = tally.refused() {
        return StreamEnd::TooLarge(why);
    }
    match result {
        Ok(n) => StreamEnd::Complete(n),
        Err(e) if e.to_string().starts_with(STOPPED) => StreamEnd::Stopped,
        Err(e) => StreamEnd::Corrupt(e.to_string()),
    }
}

/// Reads `reader` on a blocking thread and sends batches of up to `batch` items, after skipping the first
/// `skip` items, within `limits`. Drop the receiver to stop early.
pub fn spawn<R: Read + Send + 'static>(
    reader: R,
    shape: Shape,
    skip: u64,
    batch: usize,
    limits: Limits,
) -> (
    mpsc::Receiver<Vec<Item>>,
    tokio::task::JoinHandle<StreamEnd>,
) {
    let (tx, rx) = mpsc::channel(2);
    let handle = tokio::task::spawn_blocking(move || {
        read_all(reader, shape, skip, batch.max(1), limits, &tx)
    });
    (rx, handle)
}

/// The same, synchronously, calling `sink` for each batch (benchmarks and tests of the parser alone).
pub fn read_all<R: Read>(
    reader: R,
    shape: Shape,
    skip: u64,
    batch: usize,
    limits: Limits,
    tx: &mpsc::Sender<Vec<Item>>,
) -> StreamEnd {
    let tally = Arc::new(Tally::default());
    let reader = Limited {
        inner: reader,
        limits,
        tally: tally.clone(),
    };
    let mut sink = Sink {
        tx,
        skip,
        batch,
        buffer: Vec::with_capacity(batch),
        seen: 0,
        tally: &tally,
    };
    let result = match shape {
        Shape::Array => array::read(reader, &mut sink),
        Shape::DataObject => {
            let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
                256 * 1024,
                reader,
            ));
            de.deserialize_map(TopVisitor(sink, None))
                .and_then(|n| de.end().map(|()| n))
        }
    };
    finish(result, &tally)
}

struct Sink<'a> {
    tx: &'a mpsc::Sender<Vec<Item>>,
    skip: u64,
    batch: usize,
    buffer: Vec<Item>,
    seen: u64,
    tally: &'a Tally,
}

impl Sink<'_> {
    /// One more item of the document, handed on or skipped.
    fn counted(&mut self) {
        self.seen += 1;
        self.tally.item_ended();
    }

    fn push<E: de::Error>(&mut self, item: Item) -> Result<(), E> {
        self.buffer.push(item);
        if self.buffer.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush<E: de::Error>(&mut self) -> Result<(), E> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.batch));
        self.tx.blocking_send(full).map_err(|_| E::custom(STOPPED))
    }
}

struct TopVisitor<'a>(Sink<'a>, Option<MetaSide>);

impl TopVisitor<'_> {
    /// Hands `meta` over and waits for the skip count.
    fn handshake<E: de::Error>(&mut self, meta: Option<Box<RawValue>>) -> Result<(), E> {
        if let Some(side) = self.1.take() {
            let _ = side.meta.send(meta);
            self.0.skip = side.skip.recv().map_err(|_| E::custom(STOPPED))?;
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a `data` object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<u64, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                self.handshake::<A::Error>(None)?;
                found = Some(map.next_value_seed(DataSeed(&mut self.0))?);
            } else if key == "meta" && self.1.is_some() {
                let meta = map.next_value::<Box<RawValue>>()?;
                self.handshake::<A::Error>(Some(meta))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        found.ok_or_else(|| de::Error::missing_field("data"))
    }
}

struct DataSeed<'s, 'a>(&'s mut Sink<'a>);

impl<'de> DeserializeSeed<'de> for DataSeed<'_, '_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_, '_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of items")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let sink = self.0;
        while let Some(key) = map.next_key::<String>()? {
            if sink.seen < sink.skip {
                map.next_value::<IgnoredAny>()?;
                sink.counted();
                continue;
            }
            let raw = map.next_value::<Box<RawValue>>()?;
            sink.counted();
            sink.push::<A::Error>(Item {
                key: Some(key),
                raw,
            })?;
        }
        sink.flush::<A::Error>()?;
        Ok(sink.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(doc: &str, shape: Shape, skip: u64, batch: usize) -> (Vec<Vec<String>>, StreamEnd) {
        let (tx, mut rx) = mpsc::channel(1024);
        let end = read_all(doc.as_bytes(), shape, skip, batch, Limits::default(), &tx);
        drop(tx);
        let mut batches = Vec::new();
        while let Ok(b) = rx.try_recv() {
            batches.push(
                b.into_iter()
                    .map(|i| {
                        format!(
                            "{}{}",
                            i.key.map(|k| format!("{k}=")).unwrap_or_default(),
                            i.raw.get()
                        )
                    })
                    .collect(),
            );
        }
        (batches, end)
    }

    #[test]
    fn array_elements_arrive_in_batches_and_skip_resumes() {
        let doc = r#"[ {"a":1}, {"b":[2,3]}, "x", 4, {"c":{"d":null}} ]"#;
        let (batches, end) = collect(doc, Shape::Array, 0, 2);
        assert_eq!(
            batches,
            vec![
                vec![r#"{"a":1}"#, r#"{"b":[2,3]}"#],
                vec![r#""x""#, "4"],
                vec![r#"{"c":{"d":null}}"#]
            ]
        );
        assert!(matches!(end, StreamEnd::Complete(5)));
        let (batches, end) = collect(doc, Shape::Array, 3, 10);
        assert_eq!(batches, vec![vec!["4", r#"{"c":{"d":null}}"#]]);
        assert!(matches!(end, StreamEnd::Complete(5)));
    }

    #[test]
    fn data_object_entries_keep_their_keys() {
        let doc = r#"{"meta": {"date": "2026-11-26"}, "data": {"u1": {"p": 1}, "u2": {"p": 2}, "u3": {}}}"#;
        let (batches, end) = collect(doc, Shape::DataObject, 1, 10);
        assert_eq!(batches, vec![vec![r#"u2={"p": 2}"#, "u3={}"]]);
        assert!(matches!(end, StreamEnd::Complete(3)));
    }

    #[test]
    fn truncated_and_corrupt_documents_are_reported_after_the_complete_items() {
        let (batches, end) = collect(r#"[{"a":1},{"b":2},{"c":"#, Shape::Array, 0, 1);
        assert_eq!(
            batches.len(),
            2,
            "complete items before the cut are delivered"
        );
        assert!(matches!(end, StreamEnd::Corrupt(m) if m.contains("EOF")));
        let (_, end) = collect(r#"[{"a":1}] trailing"#, Shape::Array, 0, 1);
        assert!(matches!(end, StreamEnd::Corrupt(_)));
        let (_, end) = collect(r#"{"a":1}"#, Shape::Array, 0, 1);
        assert!(matches!(end, StreamEnd::Corrupt(_)));
        let (_, end) = collect(r#"{"meta":{}}"#, Shape::DataObject, 0, 1);
        assert!(matches!(end, StreamEnd::Corrupt(m) if m.contains("data")));
    }

    #[tokio::test]
    async fn meta_is_handed_over_before_the_items_and_decides_the_skip() {
        let doc = r#"{"meta": {"date": "2026-11-26"}, "data": {"a": 1, "b": 2, "c": 3}}"#;
        let (hs, mut rx, handle) = spawn_with_meta(
            std::io::Cursor::new(doc.as_bytes().to_vec()),
            10,
            Limits::default(),
        );
        let meta = hs.meta.await.unwrap().unwrap();
        assert_eq!(meta.get(), r#"{"date": "2026-11-26"}"#);
        hs.skip.send(2).unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(
            batch
                .iter()
                .map(|i| i.key.clone().unwrap())
                .collect::<Vec<_>>(),
            vec!["c"]
        );
        assert!(matches!(handle.await.unwrap(), StreamEnd::Complete(3)));

        // Dropping the skip sender stops the reader before any item.
        let (hs, _rx, handle) = spawn_with_meta(
            std::io::Cursor::new(doc.as_bytes().to_vec()),
            10,
            Limits::default(),
        );
        let _ = hs.meta.await;
        drop(hs.skip);
        assert!(matches!(handle.await.unwrap(), StreamEnd::Stopped));
    }

    #[test]
    fn a_consumer_that_hangs_up_stops_the_reader() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let end = read_all(
            r#"[1,2,3]"#.as_bytes(),
            Shape::Array,
            0,
            1,
            Limits::default(),
            &tx,
        );
        assert!(matches!(end, StreamEnd::Stopped));
    }

    /// `n` string elements of `len` bytes each, in an array or as a data object's entries.
    fn document(shape: Shape, n: usize, len: usize) -> String {
        let items: Vec<String> = (0..n)
            .map(|_| format!("\"{}\"", "x".repeat(len - 2)))
            .collect();
        match shape {
            Shape::Array => format!("[{}]", items.join(",")),
            Shape::DataObject => format!(
                r#"{{"meta":{{}},"data":{{{}}}}}"#,
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("\"k{i}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    fn read_with(doc: &str, shape: Shape, limits: Limits) -> (usize, StreamEnd) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let end = read_all(doc.as_bytes(), shape, 0, 1, limits, &tx);
        drop(tx);
        let mut items = 0;
        while let Ok(b) = rx.try_recv() {
            items += b.len();
        }
        (items, end)
    }

    #[test]
    fn a_document_over_its_byte_limit_is_refused_after_the_items_within_it() {
        for shape in [Shape::Array, Shape::DataObject] {
            // 40 items of 128 KiB: 5 MiB in all, against a limit of 3 MiB.
            let doc = document(shape, 40, 128 << 10);
            let limits = Limits {
                max_bytes: 3 << 20,
                max_item_bytes: 1 << 20,
            };
            let (items, end) = read_with(&doc, shape, limits);
            let StreamEnd::TooLarge(why) = end else {
                panic!("{shape:?}: {end:?}")
            };
            assert_eq!(why, "the document is over its limit of 3145728 bytes");
            // What was read before the limit was handed on: at most 3 MiB of items, less what was read ahead.
            assert!((16..24).contains(&items), "{shape:?}: {items}");
            let (items, end) = read_with(&doc, shape, Limits::default());
            assert!(matches!(end, StreamEnd::Complete(40)), "{end:?}");
            assert_eq!(items, 40);
        }
    }

    #[test]
    fn one_item_over_its_limit_is_refused_and_named_while_many_smaller_ones_pass() {
        for shape in [Shape::Array, Shape::DataObject] {
            let limits = Limits {
                max_bytes: 1 << 30,
                max_item_bytes: 1 << 20,
            };
            // Each item is under the limit plus what the reader may have read ahead; together they are far
            // over it.
            let (items, end) = read_with(&document(shape, 30, 512 << 10), shape, limits);
            assert!(matches!(end, StreamEnd::Complete(30)), "{shape:?}: {end:?}");
            assert_eq!(items, 30);
            // Two small items, then one of 4 MiB.
            let mut doc = document(shape, 2, 100);
            let big = format!("\"{}\"", "y".repeat(4 << 20));
            match shape {
                Shape::Array => doc.insert_str(doc.len() - 1, &format!(",{big}")),
                Shape::DataObject => doc.insert_str(doc.len() - 2, &format!(r#","big":{big}"#)),
            }
            let (items, end) = read_with(&doc, shape, limits);
            let StreamEnd::TooLarge(why) = end else {
                panic!("{shape:?}: {end:?}")
            };
            assert!(
                why.starts_with(
                    "item 3 is over the limit of 1048576 bytes for one item (still unfinished at byte "
                ) && why.ends_with(" of the document)"),
                "{shape:?}: {why}"
            );
            assert_eq!(items, 2, "{shape:?}");
        }
    }
}
