//! How much one download may hold. A body is decoded as it arrives (gzip included), so a small compressed file
//! can decode to any size, and one item with no end would grow the reader's buffer without bound: both end
//! the stream as [`StreamEnd::TooLarge`](super::StreamEnd::TooLarge), which the ingestions refuse for good
//! rather than retry into the same out-of-memory crash.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The limits of one document, in decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole document.
    pub max_bytes: u64,
    /// One item (an array element, a `data` entry), measured from the end of the item before it.
    pub max_item_bytes: u64,
}

impl Default for Limits {
    /// 16 GiB in all (Scryfall's largest bulk file, `all_cards`, is about 2.3 GB) and 64 MiB per item (a
    /// card object is a few KB, an MTGJSON price entry tens of KB).
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_item_bytes: 64 << 20,
        }
    }
}

/// Bytes the reader may be ahead of the parser: its buffers (256 KiB each) with room to spare, so an item is
/// only refused once it is certainly over its limit.
const READ_AHEAD: u64 = 1 << 20;

/// What the reader and the parser share: bytes read, where the current item started, and why the reader
/// refused to go on, if it did.
#[derive(Debug, Default)]
pub(super) struct Tally {
    read: AtomicU64,
    item_start: AtomicU64,
    items: AtomicU64,
    refused: Mutex<Option<String>>,
}

impl Tally {
    /// An item ended (read or skipped): the next one starts about here.
    pub(super) fn item_ended(&self) {
        self.item_start
            .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    /// Why the reader stopped the document, if a limit did.
    pub(super) fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn refuse(&self, why: String) -> std::io::Error {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        std::io::Error::other(why)
    }
}

/// A reader that refuses to read past the limits.
pub(super) struct Limited<R> {
    pub(super) inner: R,
    pub(super) limits: Limits,
    pub(super) tally: Arc<Tally>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(why) = self.tally.refused() {
            return Err(std::io::Error::other(why));
        }
        let n = self.inner.read(buf)?;
        let read = self.tally.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let start = self.tally.item_start.load(Ordering::Relaxed);
        if read > self.limits.max_bytes {
            return Err(self.tally.refuse(format!(
                "the document is over its limit of {} bytes",
                self.limits.max_bytes
            )));
        }
        if read - start > self.limits.max_item_bytes + READ_AHEAD {
            return Err(self.tally.refuse(format!(
                "item {} is over the limit of {} bytes for one item (still unfinished at byte {read} of the \
                 document)",
                self.tally.items.load(Ordering::Relaxed) + 1,
                self.limits.max_item_bytes
            )));
        }
        Ok(n)
    }
}
