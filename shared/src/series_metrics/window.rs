//! A series' window kept beside its metrics (`price_metrics.window_points`), so that an incremental run after a
//! new day reads one short value per series instead of the series' last 61 days of points.
//!
//! The encoding is compact because every run writes it for every series it computes: a format byte
//! ([`FORMAT`]), then one entry per point, oldest first: its age in days before the row's `latest_day` (one
//! byte, 0 to 60), its price's scale (one byte, 0 to 28) and its price's mantissa as a zigzag LEB128 varint
//! (a price of 12.34 takes two bytes). A price of `0.00` keeps its two places.

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::{Window, WINDOW_DAYS};

/// The first byte of every encoded window; another value is refused (a window written by a later format).
pub const FORMAT: u8 = 1;

/// Why a stored window cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

/// Encodes a window, to be stored with the metrics of its latest day.
pub fn encode(window: &Window) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + window.days().len() * 4);
    out.push(FORMAT);
    for (&day, price) in window.days().iter().zip(window.prices()) {
        let age = (window.latest_day() - day).num_days();
        out.push(age as u8);
        out.push(price.scale() as u8);
        let mantissa = price.mantissa();
        // Zigzag: small magnitudes of either sign take few bytes.
        let mut rest = ((mantissa << 1) ^ (mantissa >> 127)) as u128;
        loop {
            let byte = (rest & 0x7f) as u8;
            rest >>= 7;
            if rest == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// Decodes a window stored for a row whose latest day is `latest_day` into its days (ascending) and prices.
pub fn decode(
    latest_day: NaiveDate,
    bytes: &[u8],
) -> Result<(Vec<NaiveDate>, Vec<Decimal>), Corrupt> {
    let (&format, mut rest) = bytes.split_first().ok_or(Corrupt("empty"))?;
    if format != FORMAT {
        return Err(Corrupt("unknown format"));
    }
    let (mut days, mut prices) = (Vec::new(), Vec::new());
    let mut previous_age = i64::from(u8::MAX);
    while let [age, scale, tail @ ..] = rest {
        let age = i64::from(*age);
        if age >= WINDOW_DAYS || age >= previous_age {
            return Err(Corrupt("days out of order or outside the window"));
        }
        previous_age = age;
        let (zigzag, tail) = varint(tail)?;
        let mantissa = (zigzag >> 1) as i128 ^ -((zigzag & 1) as i128);
        let price = Decimal::try_from_i128_with_scale(mantissa, u32::from(*scale))
            .map_err(|_| Corrupt("price out of range"))?;
        days.push(latest_day - chrono::Duration::days(age));
        prices.push(price);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Corrupt("truncated"));
    }
    Ok((days, prices))
}

/// Lays new points over a window (`days` ascending): a day already there takes the new price, any other day is
/// inserted in its place.
pub fn lay_over(
    days: &mut Vec<NaiveDate>,
    prices: &mut Vec<Decimal>,
    new_points: impl IntoIterator<Item = (NaiveDate, Decimal)>,
) {
    for (day, price) in new_points {
        match days.binary_search(&day) {
            Ok(i) => prices[i] = price,
            Err(i) => {
                days.insert(i, day);
                prices.insert(i, price);
            }
        }
    }
}

/// One LEB128 varint of at most 19 bytes (a zigzag mantissa under 2^97), and what follows it.
fn varint(bytes: &[u8]) -> Result<(u128, &[u8]), Corrupt> {
    let mut value = 0u128;
    for (i, &byte) in bytes.iter().enumerate().take(19) {
        value |= u128::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err(Corrupt("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn hand_encoded_bytes() {
        let latest = day("2026-03-10");
        let days = [day("2026-01-08"), day("2026-03-03"), day("2026-03-10")];
        let prices = [d("12.34"), d("-1"), d("0.00")];
        // 2026-01-08 is 61 days back: outside. 2026-03-03: age 7, scale 0, -1 zigzags to 1.
        // 2026-03-10: age 0, scale 2, mantissa 0.
        assert_eq!(
            encode(&Window::ending(latest, days.to_vec(), prices.to_vec())),
            vec![FORMAT, 7, 0, 1, 0, 2, 0]
        );
        // 12.34 on the latest day: scale 2, 1234 zigzags to 2468 = 0b10011_0100100: 0xa4, 0x13.
        assert_eq!(
            encode(&Window::ending(latest, vec![latest], vec![d("12.34")])),
            vec![FORMAT, 0, 2, 0xa4, 0x13]
        );
    }

    #[test]
    fn decoding_gives_back_the_window_with_its_places() {
        let latest = day("2026-03-10");
        let (days, prices) =
            decode(latest, &[FORMAT, 60, 2, 0xa4, 0x13, 7, 0, 1, 0, 2, 0]).unwrap();
        assert_eq!(
            days,
            vec![day("2026-01-09"), day("2026-03-03"), day("2026-03-10")]
        );
        assert_eq!(prices, vec![d("12.34"), d("-1"), d("0.00")]);
        assert_eq!(prices[2].to_string(), "0.00");
    }

    #[test]
    fn extreme_prices_survive_the_round_trip() {
        let latest = day("2026-03-10");
        let prices = [
            Decimal::MAX,
            Decimal::MIN,
            d("0.0000000000000000000000000001"),
            d("-79228162514264337593543950.335"),
            d("99999.99"),
        ];
        let days: Vec<NaiveDate> = (0..prices.len() as i64)
            .map(|i| latest - chrono::Duration::days(10 - i))
            .collect();
        let encoded = encode(&Window::ending(latest, days.clone(), prices.to_vec()));
        let (back_days, back_prices) = decode(latest, &encoded).unwrap();
        assert_eq!(back_days, days);
        for (a, b) in back_prices.iter().zip(&prices) {
            assert_eq!(a.to_string(), b.to_string());
        }
    }

    #[test]
    fn new_points_replace_their_day_or_take_their_place() {
        let mut days = vec![day("2026-03-01"), day("2026-03-08"), day("2026-03-10")];
        let mut prices = vec![d("1.00"), d("2.00"), d("3.00")];
        let new = [
            (day("2026-03-12"), d("5.00")),
            (day("2026-03-10"), d("3.50")),
            (day("2026-03-05"), d("1.50")),
        ];
        lay_over(&mut days, &mut prices, new);
        assert_eq!(
            days,
            vec![
                day("2026-03-01"),
                day("2026-03-05"),
                day("2026-03-08"),
                day("2026-03-10"),
                day("2026-03-12")
            ]
        );
        assert_eq!(
            prices,
            vec![d("1.00"), d("1.50"), d("2.00"), d("3.50"), d("5.00")]
        );
    }

    #[test]
    fn damaged_windows_are_refused() {
        let latest = day("2026-03-10");
        assert_eq!(decode(latest, &[]), Err(Corrupt("empty")));
        assert_eq!(
            decode(latest, &[2, 0, 0, 0]),
            Err(Corrupt("unknown format"))
        );
        assert_eq!(decode(latest, &[FORMAT, 0, 2]), Err(Corrupt("truncated")));
        assert_eq!(
            decode(latest, &[FORMAT, 0, 2, 0x80]),
            Err(Corrupt("truncated"))
        );
        let out_of_order = Err(Corrupt("days out of order or outside the window"));
        assert_eq!(decode(latest, &[FORMAT, 0, 0, 2, 1, 0, 2]), out_of_order);
        assert_eq!(decode(latest, &[FORMAT, 61, 0, 2]), out_of_order);
        assert_eq!(
            decode(latest, &[FORMAT, 0, 29, 2]),
            Err(Corrupt("price out of range"))
        );
        assert_eq!(decode(latest, &[FORMAT]), Ok((vec![], vec![])));
    }
}
