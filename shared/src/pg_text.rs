//! Text from upstream files that is stored in Postgres `text` columns.
//!
//! Postgres `text` cannot hold U+0000, and a row carrying one fails its whole statement: one card name with a
//! NUL would fail every batch it lands in, and every later run of that file at the same place. JSON strings
//! are valid UTF-8 once parsed (serde_json refuses lone surrogates), so NUL is the one character to refuse.
//! Refusing it while the item is parsed makes the item malformed, with its id, like any other broken field,
//! and the rest of the file is ingested.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer};

/// A string Postgres can store: deserializing one refuses a NUL character.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PgText(String);

impl PgText {
    /// `text` when it holds no NUL character.
    pub fn new(text: String) -> Result<PgText, NulInText> {
        match text.find('\0') {
            Some(at) => Err(NulInText { at }),
            None => Ok(PgText(text)),
        }
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for PgText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PgText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<PgText> for String {
    fn from(text: PgText) -> String {
        text.0
    }
}

/// A NUL character in a string, at byte `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NulInText {
    pub at: usize,
}

impl fmt::Display for NulInText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a NUL character (U+0000) at byte {} of a string, which Postgres text cannot store",
            self.at
        )
    }
}

impl std::error::Error for NulInText {}

impl<'de> Deserialize<'de> for PgText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PgText, D::Error> {
        PgText::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_anywhere_in_a_string_is_refused_with_its_place() {
        let err = serde_json::from_str::<PgText>(r#""Jace\u0000, the Mind Sculptor""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("a NUL character (U+0000) at byte 4 of a string"),
            "{err}"
        );
        assert_eq!(
            PgText::new("\0".to_owned()).unwrap_err(),
            NulInText { at: 0 }
        );
        assert_eq!(
            PgText::new("ab\0".to_owned()).unwrap_err(),
            NulInText { at: 2 }
        );
    }

    #[test]
    fn every_other_string_is_kept_as_it_is() {
        // An escaped backslash before `u0000` is six ordinary characters, not a NUL.
        for (json, text) in [
            (r#""Jace, the Mind Sculptor""#, "Jace, the Mind Sculptor"),
            (r#""a\\u0000b""#, r"a\u0000b"),
            (r#""\u0001\t\n\"""#, "\u{1}\t\n\""),
            (r#""Lim-Dûl's Vault""#, "Lim-Dûl's Vault"),
            (r#""""#, ""),
        ] {
            let parsed: PgText = serde_json::from_str(json).unwrap();
            assert_eq!(&*parsed, text);
            assert_eq!(String::from(parsed), text);
        }
    }
}
