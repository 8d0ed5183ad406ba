//! Scryfall's formats as they really are: the bulk-data index and card objects (the fields the catalog keeps).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::catalog::{PriceRow, PrintingRow};
use crate::pg_text::PgText;

/// `GET /bulk-data`.
#[derive(Debug, Clone, Deserialize)]
pub struct BulkIndex {
    pub data: Vec<BulkItem>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BulkItem {
    #[serde(rename = "type")]
    pub kind: String,
    pub updated_at: DateTime<Utc>,
    pub download_uri: String,
    /// Uncompressed size in bytes (newer indexes), or the compressed size (older ones).
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub compressed_size: Option<u64>,
}

impl BulkItem {
    pub fn size_hint(&self) -> Option<u64> {
        self.size.or(self.compressed_size)
    }
}

/// A price as Scryfall serialises it: a decimal string, or (in some older files) a JSON number.
fn price<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(serde_json::Number),
    }
    let raw: Option<Raw> = Option::deserialize(d)?;
    let text = match raw {
        None => return Ok(None),
        Some(Raw::Text(s)) => s,
        Some(Raw::Number(n)) => n.to_string(),
    };
    let value: Decimal = text
        .trim()
        .parse()
        .map_err(|e| serde::de::Error::custom(format!("price `{text}`: {e}")))?;
    if value.is_sign_negative() {
        return Err(serde::de::Error::custom(format!("negative price `{text}`")));
    }
    Ok(Some(value))
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Prices {
    #[serde(default, deserialize_with = "price")]
    pub usd: Option<Decimal>,
    #[serde(default, deserialize_with = "price")]
    pub usd_foil: Option<Decimal>,
    #[serde(default, deserialize_with = "price")]
    pub usd_etched: Option<Decimal>,
    #[serde(default, deserialize_with = "price")]
    pub eur: Option<Decimal>,
    #[serde(default, deserialize_with = "price")]
    pub eur_foil: Option<Decimal>,
    #[serde(default, deserialize_with = "price")]
    pub tix: Option<Decimal>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageUris {
    pub normal: Option<PgText>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Face {
    #[serde(default)]
    pub image_uris: Option<ImageUris>,
}

/// A card object: one printing. Its strings are [`PgText`]: a card with a NUL in one is malformed.
#[derive(Debug, Clone, Deserialize)]
pub struct Card {
    pub id: Uuid,
    #[serde(default)]
    pub oracle_id: Option<Uuid>,
    pub name: PgText,
    pub set: PgText,
    pub collector_number: PgText,
    pub rarity: PgText,
    #[serde(default)]
    pub finishes: Vec<PgText>,
    #[serde(default)]
    pub released_at: Option<NaiveDate>,
    #[serde(default)]
    pub tcgplayer_id: Option<i32>,
    #[serde(default)]
    pub cardmarket_id: Option<i32>,
    #[serde(default)]
    pub mtgo_id: Option<i32>,
    #[serde(default)]
    pub image_uris: Option<ImageUris>,
    #[serde(default)]
    pub card_faces: Option<Vec<Face>>,
    #[serde(default)]
    pub prices: Prices,
}

/// Only the id, to name a card object that failed to parse.
#[derive(Debug, Deserialize)]
pub struct CardId {
    pub id: Option<String>,
}

impl Card {
    pub fn printing(&self) -> PrintingRow {
        // Double-faced cards keep their images on the faces.
        let image = self
            .image_uris
            .as_ref()
            .and_then(|i| i.normal.clone())
            .or_else(|| {
                self.card_faces
                    .iter()
                    .flatten()
                    .find_map(|f| f.image_uris.as_ref().and_then(|i| i.normal.clone()))
            });
        PrintingRow {
            scryfall_id: self.id,
            oracle_id: self.oracle_id,
            name: self.name.to_string(),
            set_code: self.set.to_ascii_lowercase(),
            collector_number: self.collector_number.to_string(),
            rarity: self.rarity.to_string(),
            finishes: self.finishes.iter().map(|f| f.to_string()).collect(),
            released_at: self.released_at,
            tcgplayer_id: self.tcgplayer_id,
            cardmarket_id: self.cardmarket_id,
            mtgo_id: self.mtgo_id,
            image_uri: image.map(PgText::into_string),
        }
    }

    /// One row per non-null price field, as Scryfall's own daily quote.
    pub fn price_rows(&self, day: NaiveDate, out: &mut Vec<PriceRow>) {
        let p = &self.prices;
        for (value, finish, currency) in [
            (p.usd, "nonfoil", "USD"),
            (p.usd_foil, "foil", "USD"),
            (p.usd_etched, "etched", "USD"),
            (p.eur, "nonfoil", "EUR"),
            (p.eur_foil, "foil", "EUR"),
            (p.tix, "nonfoil", "TIX"),
        ] {
            if let Some(price) = value {
                out.push(PriceRow {
                    scryfall_id: self.id,
                    source: "scryfall",
                    price_type: "retail",
                    finish,
                    currency,
                    day,
                    price,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_as_strings_numbers_or_null() {
        let card: Card = serde_json::from_str(
            r#"{"id":"18092f68-b96e-4084-9eba-b240d2195d81","name":"X","set":"MID","collector_number":"74a",
                "rarity":"rare","prices":{"usd":"3.80","usd_foil":4.06,"usd_etched":null,"eur":"3.32","tix":"0.02"}}"#,
        )
        .unwrap();
        let mut rows = Vec::new();
        card.price_rows(NaiveDate::from_ymd_opt(2025, 11, 1).unwrap(), &mut rows);
        let got: Vec<(&str, &str, String)> = rows
            .iter()
            .map(|r| (r.finish, r.currency, r.price.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("nonfoil", "USD", "3.80".to_owned()),
                ("foil", "USD", "4.06".to_owned()),
                ("nonfoil", "EUR", "3.32".to_owned()),
                ("nonfoil", "TIX", "0.02".to_owned()),
            ]
        );
        assert_eq!(card.printing().set_code, "mid");
    }

    #[test]
    fn malformed_cards_fail_to_parse() {
        for bad in [
            r#"{"name":"no id","set":"x","collector_number":"1","rarity":"common"}"#,
            r#"{"id":"not-a-uuid","name":"x","set":"x","collector_number":"1","rarity":"common"}"#,
            r#"{"id":"18092f68-b96e-4084-9eba-b240d2195d81","name":"x","set":"x","collector_number":"1","rarity":"common","prices":{"usd":"a lot"}}"#,
            r#"{"id":"18092f68-b96e-4084-9eba-b240d2195d81","name":"x","set":"x","collector_number":"1","rarity":"common","prices":{"usd":"-1.00"}}"#,
            r#"[1,2]"#,
            // Postgres text cannot hold a NUL, in any of the strings a printing keeps.
            r#"{"id":"18092f68-b96e-4084-9eba-b240d2195d81","name":"x\u0000","set":"x","collector_number":"1","rarity":"common"}"#,
            r#"{"id":"18092f68-b96e-4084-9eba-b240d2195d81","name":"x","set":"x","collector_number":"1","rarity":"common","finishes":["foil","\u0000"]}"#,
            r#"{"id":"18092f68-b96e-4084-9eba-b240d2195d81","name":"x","set":"x","collector_number":"1","rarity":"common","card_faces":[{"image_uris":{"normal":"https://x/\u0000.jpg"}}]}"#,
        ] {
            assert!(serde_json::from_str::<Card>(bad).is_err(), "{bad}");
        }
    }
}
