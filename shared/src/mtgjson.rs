//! MTGJSON's formats: v5 price files (`AllPrices`, `AllPricesToday`: uuid -> paper|mtgo -> provider ->
//! retail|buylist -> normal|foil|etched -> {date: price}), `AllIdentifiers` (uuid -> identifiers, for the
//! Scryfall id), and the v4 weekly price history (uuid -> identifiers and {paper, paperFoil, mtgo, mtgoFoil}
//! -> {date: price}).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use crate::catalog::{PriceRow, PrintingRow};

/// A price as MTGJSON writes it: a JSON number (sometimes a string).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price(pub Decimal);

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(serde_json::Number),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        let value: Decimal = text
            .trim()
            .parse()
            .or_else(|_| Decimal::from_scientific(text.trim()))
            .map_err(|e| serde::de::Error::custom(format!("price `{text}`: {e}")))?;
        if value.is_sign_negative() {
            return Err(serde::de::Error::custom(format!("negative price `{text}`")));
        }
        Ok(Price(value))
    }
}

pub type Series = BTreeMap<NaiveDate, Price>;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PricePoints {
    #[serde(default)]
    pub normal: Series,
    #[serde(default)]
    pub foil: Series,
    #[serde(default)]
    pub etched: Series,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PriceList {
    #[serde(default)]
    pub retail: Option<PricePoints>,
    #[serde(default)]
    pub buylist: Option<PricePoints>,
    pub currency: String,
}

/// One card's entry in a v5 price file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PriceFormats {
    #[serde(default)]
    pub paper: BTreeMap<String, PriceList>,
    #[serde(default)]
    pub mtgo: BTreeMap<String, PriceList>,
}

/// Providers the catalog records, as MTGJSON names them.
const PROVIDERS: [&str; 6] = [
    "cardhoarder",
    "cardkingdom",
    "cardmarket",
    "cardsphere",
    "manapool",
    "tcgplayer",
];

fn provider(name: &str) -> Option<&'static str> {
    PROVIDERS.iter().copied().find(|p| *p == name)
}

fn currency(name: &str) -> Option<&'static str> {
    ["USD", "EUR", "TIX"]
        .into_iter()
        .find(|c| c.eq_ignore_ascii_case(name))
}

impl PriceFormats {
    /// Price rows for the printing `scryfall_id`. Returns the number of price lists skipped because their
    /// provider or currency is not one the catalog knows.
    pub fn price_rows(&self, scryfall_id: Uuid, out: &mut Vec<PriceRow>) -> u64 {
        let mut skipped = 0;
        for (name, list) in self.paper.iter().chain(self.mtgo.iter()) {
            let (Some(source), Some(currency)) = (provider(name), currency(&list.currency)) else {
                skipped += 1;
                continue;
            };
            for (price_type, points) in [("retail", &list.retail), ("buylist", &list.buylist)] {
                let Some(points) = points else { continue };
                for (finish, series) in [
                    ("nonfoil", &points.normal),
                    ("foil", &points.foil),
                    ("etched", &points.etched),
                ] {
                    for (day, price) in series {
                        out.push(PriceRow {
                            scryfall_id,
                            source,
                            price_type,
                            finish,
                            currency,
                            day: *day,
                            price: price.0,
                        });
                    }
                }
            }
        }
        skipped
    }
}

/// One card's entry in `AllIdentifiers`: only the Scryfall id matters here.
#[derive(Debug, Clone, Deserialize)]
pub struct IdentifiedCard {
    pub identifiers: Identifiers,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Identifiers {
    #[serde(rename = "scryfallId", default)]
    pub scryfall_id: Option<Uuid>,
}

/// One card's entry in the v4 history: identifiers and weekly prices.
#[derive(Debug, Clone, Deserialize)]
pub struct V4Card {
    pub name: String,
    #[serde(rename = "setCode")]
    pub set_code: String,
    pub number: String,
    pub rarity: String,
    #[serde(rename = "scryfallId")]
    pub scryfall_id: Uuid,
    #[serde(rename = "tcgplayerProductId", default)]
    pub tcgplayer_id: Option<i32>,
    #[serde(rename = "mtgoId", default)]
    pub mtgo_id: Option<i32>,
    #[serde(default)]
    pub prices: V4Prices,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct V4Prices {
    #[serde(default)]
    pub paper: Series,
    #[serde(rename = "paperFoil", default)]
    pub paper_foil: Series,
    #[serde(default)]
    pub mtgo: Series,
    #[serde(rename = "mtgoFoil", default)]
    pub mtgo_foil: Series,
}

impl V4Card {
    pub fn printing(&self) -> PrintingRow {
        PrintingRow {
            scryfall_id: self.scryfall_id,
            oracle_id: None,
            name: self.name.clone(),
            set_code: self.set_code.to_ascii_lowercase(),
            collector_number: self.number.clone(),
            rarity: self.rarity.clone(),
            finishes: Vec::new(),
            released_at: None,
            tcgplayer_id: self.tcgplayer_id,
            cardmarket_id: None,
            mtgo_id: self.mtgo_id,
            image_uri: None,
        }
    }

    /// v4 `paper`/`paperFoil` were TCGplayer's retail prices and `mtgo`/`mtgoFoil` Cardhoarder's, all in
    /// USD: they map to `paper.tcgplayer.retail` and `mtgo.cardhoarder.retail` of the v5 format.
    pub fn price_rows(&self, out: &mut Vec<PriceRow>) {
        let p = &self.prices;
        for (series, source, finish) in [
            (&p.paper, "tcgplayer", "nonfoil"),
            (&p.paper_foil, "tcgplayer", "foil"),
            (&p.mtgo, "cardhoarder", "nonfoil"),
            (&p.mtgo_foil, "cardhoarder", "foil"),
        ] {
            for (day, price) in series {
                out.push(PriceRow {
                    scryfall_id: self.scryfall_id,
                    source,
                    price_type: "retail",
                    finish,
                    currency: "USD",
                    day: *day,
                    price: price.0,
                });
            }
        }
    }
}

/// A file's `meta`: its date is the version.
#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub date: Option<NaiveDate>,
    /// The v4 history projection nests MTGJSON's own meta.
    #[serde(default)]
    pub mtgjson_meta: Option<Box<Meta>>,
}

impl Meta {
    pub fn version_date(&self) -> Option<NaiveDate> {
        self.date
            .or_else(|| self.mtgjson_meta.as_ref().and_then(|m| m.version_date()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_price_formats_become_rows_with_buylist_apart() {
        let entry: PriceFormats = serde_json::from_str(
            r#"{"paper": {
                  "tcgplayer": {"retail": {"normal": {"2024-02-01": 1.50, "2024-02-02": 1.45}, "foil": {"2024-02-01": 3.00}}, "currency": "USD"},
                  "cardkingdom": {"retail": {"normal": {"2024-02-01": 1.99}}, "buylist": {"normal": {"2024-02-01": 0.80}}, "currency": "USD"},
                  "cardmarket": {"retail": {"normal": {"2024-02-01": "1.20"}}, "currency": "EUR"},
                  "someshop": {"retail": {"normal": {"2024-02-01": 9}}, "currency": "USD"}},
                "mtgo": {"cardhoarder": {"retail": {"normal": {"2024-02-01": 0.02}}, "currency": "USD"}}}"#,
        )
        .unwrap();
        let id = Uuid::nil();
        let mut rows = Vec::new();
        assert_eq!(
            entry.price_rows(id, &mut rows),
            1,
            "the unknown provider is skipped"
        );
        let got: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {}",
                    r.source, r.price_type, r.finish, r.currency, r.day, r.price
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "cardkingdom retail nonfoil USD 2024-02-01 1.99",
                "cardkingdom buylist nonfoil USD 2024-02-01 0.8",
                "cardmarket retail nonfoil EUR 2024-02-01 1.20",
                "tcgplayer retail nonfoil USD 2024-02-01 1.5",
                "tcgplayer retail nonfoil USD 2024-02-02 1.45",
                "tcgplayer retail foil USD 2024-02-01 3.0",
                "cardhoarder retail nonfoil USD 2024-02-01 0.02",
            ]
        );
    }

    #[test]
    fn v4_history_entries() {
        let card: V4Card = serde_json::from_str(
            r#"{"name":"Abundance","setCode":"10E","number":"249","rarity":"rare","scryfallId":"46184f97-d5c9-4a98-9fd9-e19057ce9b7e",
                "tcgplayerProductId":15023,"mtgoId":27282,"prices":{"paper":{"2019-04-21":1.79,"2019-04-28":1.87},"paperFoil":{"2019-04-21":33.73}}}"#,
        )
        .unwrap();
        let mut rows = Vec::new();
        card.price_rows(&mut rows);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].finish, "foil");
        assert_eq!(rows[2].price.to_string(), "33.73");
        assert_eq!(card.printing().set_code, "10e");
        let meta: Meta = serde_json::from_str(
            r#"{"source":"x","mtgjson_meta":{"date":"2019-07-21","version":"4.4.2"}}"#,
        )
        .unwrap();
        assert_eq!(meta.version_date(), NaiveDate::from_ymd_opt(2019, 7, 21));
    }

    #[test]
    fn bad_prices_are_errors() {
        assert!(serde_json::from_str::<Series>(r#"{"2024-02-01": -1}"#).is_err());
        assert!(serde_json::from_str::<Series>(r#"{"2024-02-01": "cheap"}"#).is_err());
        assert!(serde_json::from_str::<Series>(r#"{"yesterday": 1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Series>(r#"{"2024-02-01": 1e-2}"#)
                .unwrap()
                .values()
                .next()
                .unwrap()
                .0
                .to_string(),
            "0.01"
        );
    }
}

#[cfg(test)]
mod meta_tests {
    use super::*;

    #[test]
    fn v5_meta_dates() {
        let meta: Meta =
            serde_json::from_str(r#"{"date":"2019-07-22","version":"5.2.2"}"#).unwrap();
        assert_eq!(meta.version_date(), NaiveDate::from_ymd_opt(2019, 7, 22));
    }
}
