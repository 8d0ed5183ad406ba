//! Streaming JSON: the elements of a huge top-level array (a Scryfall bulk file), or the entries of a huge
//! `"data"` object (an MTGJSON file), handed over in batches while the download is still arriving. Only one
//! batch is ever held; the file never is.
//!
//! Both run on a blocking thread that reads the async body through `SyncIoBridge`. An array's elements are
//! found by a byte scanner and each validated by serde_json ([`array`]); a data object is parsed by
//! serde_json, driven entry by entry through a `MapAccess` visitor.

mod array;

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
        };
        let result = de.deserialize_map(TopVisitor(sink, Some(side)));
        finish(result.and_then(|n| de.end().map(|()| n)))
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

fn finish(result: Result<u64, serde_json::Error>) -> StreamEnd {
    match result {
        Ok(n) => StreamEnd::Complete(n),
        Err(e) if e.to_string().starts_with(STOPPED) => StreamEnd::Stopped,
        Err(e) => StreamEnd::Corrupt(e.to_string()),
    }
}

/// Reads `reader` on a blocking thread and sends batches of up to `batch` items, after skipping the first
/// `skip` items. Drop the receiver to stop early.
pub fn spawn<R: Read + Send + 'static>(
    reader: R,
    shape: Shape,
    skip: u64,
    batch: usize,
) -> (
    mpsc::Receiver<Vec<Item>>,
    tokio::task::JoinHandle<StreamEnd>,
) {
    let (tx, rx) = mpsc::channel(2);
    let handle =
        tokio::task::spawn_blocking(move || read_all(reader, shape, skip, batch.max(1), &tx));
    (rx, handle)
}

/// The same, synchronously, calling `sink` for each batch (benchmarks and tests of the parser alone).
pub fn read_all<R: Read>(
    reader: R,
    shape: Shape,
    skip: u64,
    batch: usize,
    tx: &mpsc::Sender<Vec<Item>>,
) -> StreamEnd {
    let mut sink = Sink {
        tx,
        skip,
        batch,
        buffer: Vec::with_capacity(batch),
        seen: 0,
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
    finish(result)
}

struct Sink<'a> {
    tx: &'a mpsc::Sender<Vec<Item>>,
    skip: u64,
    batch: usize,
    buffer: Vec<Item>,
    seen: u64,
}

impl Sink<'_> {
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
                sink.seen += 1;
                continue;
            }
            let raw = map.next_value::<Box<RawValue>>()?;
            sink.seen += 1;
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
        let end = read_all(doc.as_bytes(), shape, skip, batch, &tx);
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
        let (hs, mut rx, handle) =
            spawn_with_meta(std::io::Cursor::new(doc.as_bytes().to_vec()), 10);
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
        let (hs, _rx, handle) = spawn_with_meta(std::io::Cursor::new(doc.as_bytes().to_vec()), 10);
        let _ = hs.meta.await;
        drop(hs.skip);
        assert!(matches!(handle.await.unwrap(), StreamEnd::Stopped));
    }

    #[test]
    fn a_consumer_that_hangs_up_stops_the_reader() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let end = read_all(r#"[1,2,3]"#.as_bytes(), Shape::Array, 0, 1, &tx);
        assert!(matches!(end, StreamEnd::Stopped));
    }
}
