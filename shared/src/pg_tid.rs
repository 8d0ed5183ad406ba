//! Postgres `tid` values (a row version's place: heap block and line pointer), read with sqlx and written in a
//! binary `COPY` ([`crate::pg_copy::BinaryRows`]).
//!
//! A `tid` names the row version a snapshot saw. It stays that version's place until the version is updated or
//! deleted (pruning and plain `VACUUM` never move a live version; `VACUUM FULL` and `CLUSTER` need a lock that
//! any reader of the table blocks), so a statement that matches on it must run in the snapshot it was read in
//! and under `REPEATABLE READ`, where touching a version changed since is an error, not a silent miss.

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type};

use crate::pg_copy::BinaryField;

/// A row version's place: its heap block and its line pointer (offset) in that block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgTid {
    pub block: u32,
    pub offset: u16,
}

impl Type<Postgres> for PgTid {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("tid")
    }
}

impl<'r> Decode<'r, Postgres> for PgTid {
    fn decode(value: PgValueRef<'r>) -> Result<PgTid, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => from_binary(value.as_bytes()?),
            PgValueFormat::Text => from_text(value.as_str()?),
        }
    }
}

/// The binary `tid`: the block as a big-endian `u32`, then the offset as a big-endian `u16`.
fn from_binary(bytes: &[u8]) -> Result<PgTid, BoxDynError> {
    let [b0, b1, b2, b3, o0, o1] = bytes else {
        return Err(format!("tid: {} bytes, not 6", bytes.len()).into());
    };
    Ok(PgTid {
        block: u32::from_be_bytes([*b0, *b1, *b2, *b3]),
        offset: u16::from_be_bytes([*o0, *o1]),
    })
}

/// The text `tid`: `(block,offset)`.
fn from_text(text: &str) -> Result<PgTid, BoxDynError> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("tid: {text:?} is not (block,offset)"))?;
    let (block, offset) = inner
        .split_once(',')
        .ok_or_else(|| format!("tid: {text:?} is not (block,offset)"))?;
    Ok(PgTid {
        block: block.trim().parse()?,
        offset: offset.trim().parse()?,
    })
}

/// `tid` in a binary `COPY`: the same six bytes.
impl BinaryField for PgTid {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_form_is_block_then_offset_big_endian() {
        // (70000,35): 70000 = 0x00011170, 35 = 0x0023.
        let bytes = [0x00, 0x01, 0x11, 0x70, 0x00, 0x23];
        let tid = from_binary(&bytes).unwrap();
        assert_eq!(
            tid,
            PgTid {
                block: 70_000,
                offset: 35
            }
        );
        let mut out = Vec::new();
        tid.write(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn text_form_is_read_like_postgres_prints_it() {
        assert_eq!(
            from_text("(6601,35)").unwrap(),
            PgTid {
                block: 6601,
                offset: 35
            }
        );
        assert_eq!(
            from_text("(4294967295,65535)").unwrap(),
            PgTid {
                block: u32::MAX,
                offset: u16::MAX
            }
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        assert!(from_binary(&[0, 0, 0, 1, 0]).is_err());
        assert!(from_text("6601,35").is_err());
        assert!(from_text("(6601)").is_err());
        assert!(from_text("(6601,70000)").is_err());
    }
}
