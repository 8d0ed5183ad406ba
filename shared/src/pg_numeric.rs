//! Postgres `numeric` values as exact decimals that keep their scale, read and written in the binary format.
//!
//! sqlx's own decoding into `rust_decimal::Decimal` returns a zero without its places (`0.00` becomes `0`), and
//! it multiplies a `Decimal` power of 10,000 per base-10,000 digit. [`PgDecimal`] reads the binary format
//! directly: the digits into one integer, then the value at the scale Postgres gives (`dscale`).
//! [`write_binary`] writes a decimal the same way for a binary `COPY` ([`crate::pg_copy::BinaryRows`]).

use rust_decimal::Decimal;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgHasArrayType, PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type};

/// A `numeric` read with its scale; NaN, infinities and values beyond `Decimal` (about 7.9e28, or more than 28
/// places) are refused with an error naming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgDecimal(pub Decimal);

impl Type<Postgres> for PgDecimal {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("numeric")
    }
}

impl PgHasArrayType for PgDecimal {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("_numeric")
    }
}

impl<'r> Decode<'r, Postgres> for PgDecimal {
    fn decode(value: PgValueRef<'r>) -> Result<PgDecimal, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => from_binary(value.as_bytes()?).map(PgDecimal),
            // The text form already carries the scale.
            PgValueFormat::Text => Ok(PgDecimal(value.as_str()?.parse()?)),
        }
    }
}

const POSITIVE: u16 = 0x0000;
const NEGATIVE: u16 = 0x4000;

/// The binary `numeric`: digit count, weight (the power of 10,000 of the first digit), sign, display scale,
/// then the base-10,000 digits, each an `i16`, all big-endian.
fn from_binary(bytes: &[u8]) -> Result<Decimal, BoxDynError> {
    let word = |i: usize| -> Result<u16, BoxDynError> {
        bytes
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric: truncated value".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = u32::from(word(3)?);
    let negative = match sign {
        POSITIVE => false,
        NEGATIVE => true,
        _ => return Err("numeric: NaN or infinity has no decimal value".into()),
    };
    if bytes.len() != 8 + 2 * ndigits {
        return Err("numeric: digit count does not match the value's length".into());
    }
    let out_of_range = || -> BoxDynError { "numeric: value out of decimal range".into() };
    let mut mantissa: i128 = 0;
    for i in 0..ndigits {
        let digit = i128::from(word(4 + i)?);
        if digit >= 10_000 {
            return Err("numeric: digit out of base 10,000".into());
        }
        mantissa = mantissa
            .checked_mul(10_000)
            .and_then(|m| m.checked_add(digit))
            .ok_or_else(out_of_range)?;
    }
    // The last digit's power of ten; the digits then say mantissa x 10^exponent.
    let exponent = if ndigits == 0 {
        0
    } else {
        4 * (weight - (ndigits as i64 - 1))
    };
    let target = -i64::from(dscale);
    if exponent > target {
        let up = u32::try_from(exponent - target).map_err(|_| out_of_range())?;
        mantissa = 10i128
            .checked_pow(up)
            .and_then(|p| mantissa.checked_mul(p))
            .ok_or_else(out_of_range)?;
    } else if exponent < target {
        // Places beyond the display scale are padding of the last base-10,000 digit: zeros.
        let down = u32::try_from(target - exponent).map_err(|_| out_of_range())?;
        let p = 10i128.checked_pow(down).ok_or_else(out_of_range)?;
        if mantissa % p != 0 {
            return Err("numeric: digits beyond its display scale".into());
        }
        mantissa /= p;
    }
    if negative {
        mantissa = -mantissa;
    }
    Decimal::try_from_i128_with_scale(mantissa, dscale).map_err(|_| out_of_range())
}

/// Appends `value` as a binary `numeric` (the format [`from_binary`] reads), with its scale as the display
/// scale: `0.00` stays `0.00`. The digits are the mantissa's, padded with zeros on the right to whole base-10,000
/// digits after the point; zero digits at either end are left out, as Postgres leaves them out.
pub fn write_binary(value: Decimal, out: &mut Vec<u8>) {
    let scale = value.scale();
    let pad = (4 - scale % 4) % 4;
    // At most 96 bits times 10^3: well inside a u128.
    let mut rest = value.mantissa().unsigned_abs() * 10u128.pow(pad);
    let fraction_digits = ((scale + pad) / 4) as i16;
    // Under 10^33, so at most 9 base-10,000 digits: kept on the stack, as every metrics row writes 14 of these.
    let (mut found, mut count) = ([0u16; 9], 0);
    while rest > 0 {
        found[count] = (rest % 10_000) as u16;
        count += 1;
        rest /= 10_000;
    }
    let digits = &found[..count];
    // The last digit found is the first one written; its power of 10,000 follows from the fraction's digits.
    let weight = digits.len() as i16 - 1 - fraction_digits;
    let trailing = digits.iter().take_while(|&&d| d == 0).count();
    let digits = &digits[trailing..];
    let sign = if value.is_sign_negative() && !digits.is_empty() {
        NEGATIVE
    } else {
        POSITIVE
    };
    out.extend((digits.len() as u16).to_be_bytes());
    out.extend((if digits.is_empty() { 0 } else { weight }).to_be_bytes());
    out.extend(sign.to_be_bytes());
    out.extend((scale as u16).to_be_bytes());
    for digit in digits.iter().rev() {
        out.extend(digit.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::{from_binary, write_binary};
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    /// A binary `numeric` as Postgres' `numeric_send` writes it.
    fn encoded(weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((digits.len() as i16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend(sign.to_be_bytes());
        out.extend(dscale.to_be_bytes());
        for d in digits {
            out.extend(d.to_be_bytes());
        }
        out
    }

    fn text(bytes: &[u8]) -> String {
        from_binary(bytes).unwrap().to_string()
    }

    #[test]
    fn values_keep_the_scale_postgres_sends_zero_included() {
        // Hand-encoded per the format: 0.00 has no digits; 1.50 is [1, 5000] from 10,000^0; 12345.6789 is
        // [1, 2345, 6789] from 10,000^1; -0.05 is [500] at 10,000^-1; 100000 is [10] at 10,000^1.
        assert_eq!(text(&encoded(0, 0, 2, &[])), "0.00");
        assert_eq!(text(&encoded(0, 0, 0, &[])), "0");
        assert_eq!(text(&encoded(0, 0, 2, &[1, 5000])), "1.50");
        assert_eq!(text(&encoded(0, 0, 1, &[1, 5000])), "1.5");
        assert_eq!(text(&encoded(1, 0, 4, &[1, 2345, 6789])), "12345.6789");
        assert_eq!(text(&encoded(-1, 0x4000, 2, &[500])), "-0.05");
        assert_eq!(text(&encoded(1, 0, 0, &[10])), "100000");
        assert_eq!(text(&encoded(1, 0, 3, &[10])), "100000.000");
        assert_eq!(text(&encoded(-2, 0, 8, &[1])), "0.00000001");
    }

    #[test]
    fn what_a_decimal_cannot_hold_is_refused() {
        for (bytes, why) in [
            (encoded(0, 0xC000, 0, &[]), "NaN or infinity"),
            (encoded(0, 0xD000, 0, &[]), "NaN or infinity"),
            (encoded(8, 0, 0, &[1]), "out of decimal range"),
            (encoded(0, 0, 29, &[1]), "out of decimal range"),
            (encoded(0, 0, 0, &[10_000]), "base 10,000"),
            (encoded(-1, 0, 2, &[1234]), "beyond its display scale"),
            (encoded(0, 0, 0, &[1])[..9].to_vec(), "does not match"),
            (vec![0, 0, 0], "truncated"),
        ] {
            let err = from_binary(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err} should say {why}");
        }
        assert_eq!(
            from_binary(&encoded(6, 0, 0, &[7])).unwrap(),
            Decimal::from_i128_with_scale(7 * 10i128.pow(24), 0)
        );
    }

    fn written(value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_binary(value.parse().unwrap(), &mut out);
        out
    }

    #[test]
    fn decimals_are_written_as_postgres_sends_them() {
        // The same hand-encoded values as above, written from their text.
        assert_eq!(written("0.00"), encoded(0, 0, 2, &[]));
        assert_eq!(written("0"), encoded(0, 0, 0, &[]));
        assert_eq!(written("-0.00"), encoded(0, 0, 2, &[]));
        assert_eq!(written("1.50"), encoded(0, 0, 2, &[1, 5000]));
        assert_eq!(written("1.5"), encoded(0, 0, 1, &[1, 5000]));
        assert_eq!(written("12345.6789"), encoded(1, 0, 4, &[1, 2345, 6789]));
        assert_eq!(written("-0.05"), encoded(-1, 0x4000, 2, &[500]));
        assert_eq!(written("100000"), encoded(1, 0, 0, &[10]));
        assert_eq!(written("100000.000"), encoded(1, 0, 3, &[10]));
        assert_eq!(written("0.00000001"), encoded(-2, 0, 8, &[1]));
        assert_eq!(
            written("79228162514264337593543950335"),
            encoded(7, 0, 0, &[7, 9228, 1625, 1426, 4337, 5935, 4395, 335])
        );
    }

    proptest! {
        #[test]
        fn any_decimal_reads_back_with_its_value_and_scale(
            mantissa in -(1i128 << 96) + 1..(1i128 << 96),
            scale in 0u32..=28,
        ) {
            let value = Decimal::from_i128_with_scale(mantissa, scale);
            let mut out = Vec::new();
            write_binary(value, &mut out);
            let back = from_binary(&out).unwrap();
            prop_assert_eq!(back.to_string(), value.to_string());
        }
    }
}
