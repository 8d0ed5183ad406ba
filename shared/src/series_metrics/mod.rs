//! The metrics of one price series, computed from the points of its last [`WINDOW_DAYS`] days.
//!
//! What each metric means is the contract of `price_metrics` (see `docs/data.md`); the arithmetic follows
//! Postgres' `numeric` so that a value reads the same as the SQL definition would give it: money stays exact
//! decimal, percentages are rounded half away from zero to 2 places and averages to 4, and the volatility is
//! the sample standard deviation of the log returns in `float8`, accumulated as Postgres' `stddev_samp` does.

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};

pub mod store;
pub mod window;

/// How many days back from its latest day a series' window reaches (its latest day counts as day 0): the
/// 30-day change looks back up to 60 days.
pub const WINDOW_DAYS: i64 = 61;

/// A series' metrics as stored in `price_metrics` (`points`, the all-time count, is kept by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub latest_day: NaiveDate,
    pub latest_price: Decimal,
    pub change_1d: Option<Decimal>,
    pub change_1d_pct: Option<Decimal>,
    pub change_7d: Option<Decimal>,
    pub change_7d_pct: Option<Decimal>,
    pub change_30d: Option<Decimal>,
    pub change_30d_pct: Option<Decimal>,
    pub ma_7d: Option<Decimal>,
    pub ma_30d: Option<Decimal>,
    pub volatility_30d: Option<f64>,
    pub high_30d: Decimal,
    pub low_30d: Decimal,
    pub points_30d: i32,
    pub prior_high_30d: Option<Decimal>,
    pub prior_points_30d: i32,
}

/// A value out of `Decimal`'s range (about 7.9e28): the metric cannot be computed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// A series' points of the [`WINDOW_DAYS`] days that end on its latest day, oldest first: what every metric is
/// computed from, whichever way the points were gathered (read from `price_points`, or a stored window with
/// the new points laid over it). Points outside it are left out when it is made, so that no metric, the
/// returns' "previous point" included, can see one.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    latest_day: NaiveDate,
    days: Vec<NaiveDate>,
    prices: Vec<Decimal>,
}

impl Window {
    /// The points of `days`/`prices` (one price per day, in any order) that lie in the window ending on
    /// `latest_day`.
    pub fn ending(latest_day: NaiveDate, days: Vec<NaiveDate>, prices: Vec<Decimal>) -> Window {
        let in_window =
            |day: &NaiveDate| (0..WINDOW_DAYS).contains(&(latest_day - *day).num_days());
        let (days, prices): (Vec<NaiveDate>, Vec<Decimal>) = if days.is_sorted() {
            days.into_iter()
                .zip(prices)
                .filter(|(day, _)| in_window(day))
                .unzip()
        } else {
            let mut points: Vec<_> = days
                .into_iter()
                .zip(prices)
                .filter(|(day, _)| in_window(day))
                .collect();
            points.sort_by_key(|&(day, _)| day);
            points.into_iter().unzip()
        };
        Window {
            latest_day,
            days,
            prices,
        }
    }

    pub fn latest_day(&self) -> NaiveDate {
        self.latest_day
    }

    pub fn days(&self) -> &[NaiveDate] {
        &self.days
    }

    pub fn prices(&self) -> &[Decimal] {
        &self.prices
    }
}

/// The metrics of a series from its window. `None` when the window holds no point on its latest day (nothing
/// to compute).
pub fn compute(window: &Window) -> Result<Option<Metrics>, Overflow> {
    let (latest_day, days, prices) = (window.latest_day, &window.days[..], &window.prices[..]);
    if days.last() != Some(&latest_day) {
        return Ok(None);
    }
    let latest_price = prices[prices.len() - 1];
    // The reference of an N-day change is the price on the latest day inside its look-back range; the days
    // ascend, so the last one seen wins.
    let (mut ref_1d, mut ref_7d, mut ref_30d) = (None, None, None);
    let (mut sum_7d, mut n_7d) = (Decimal::ZERO, 0i32);
    let (mut sum_30d, mut n_30d) = (Decimal::ZERO, 0i32);
    let (mut high, mut low) = (latest_price, latest_price);
    let (mut prior_high, mut prior_n): (Option<Decimal>, i32) = (None, 0);
    let mut returns = StddevSamp::default();
    for (i, (&day, &price)) in days.iter().zip(prices).enumerate() {
        let age = (latest_day - day).num_days();
        match age {
            1..=2 => ref_1d = Some(price),
            7..=14 => ref_7d = Some(price),
            30..=60 => ref_30d = Some(price),
            _ => {}
        }
        if age < 7 {
            sum_7d = sum_7d.checked_add(price).ok_or(Overflow)?;
            n_7d += 1;
        }
        if age < 30 {
            sum_30d = sum_30d.checked_add(price).ok_or(Overflow)?;
            n_30d += 1;
            // Of equal prices the most recent one's text is shown (`9.0` after `9.00` shows `9.0`); the days
            // ascend, so `>=` and `<=` keep the last of equal ones. (`Decimal::max` keeps the first.)
            if price >= high {
                high = price;
            }
            if price <= low {
                low = price;
            }
            // The log return from the window's previous point (of any age in the window), as `lag` over the
            // window gives it.
            if let Some(&previous) = i.checked_sub(1).and_then(|j| prices.get(j)) {
                if previous > Decimal::ZERO && price > Decimal::ZERO {
                    returns.add((to_f64(price) / to_f64(previous)).ln());
                }
            }
        }
        if (1..=30).contains(&age) {
            if prior_high.is_none_or(|h| price >= h) {
                prior_high = Some(price);
            }
            prior_n += 1;
        }
    }
    let change =
        |reference: Option<Decimal>| -> Result<(Option<Decimal>, Option<Decimal>), Overflow> {
            let Some(reference) = reference else {
                return Ok((None, None));
            };
            let mut change = latest_price.checked_sub(reference).ok_or(Overflow)?;
            // `numeric` subtraction carries the larger of the two scales (`0.1 - 0.00` is `0.10`); `Decimal`
            // returns an operand unchanged when the other is zero.
            change.rescale(latest_price.scale().max(reference.scale()));
            let pct = if reference.is_zero() {
                None
            } else {
                let ratio = change.checked_div(reference).ok_or(Overflow)?;
                Some(rounded(
                    ratio.checked_mul(Decimal::ONE_HUNDRED).ok_or(Overflow)?,
                    2,
                ))
            };
            Ok((Some(change), pct))
        };
    let mean = |sum: Decimal, n: i32| -> Result<Option<Decimal>, Overflow> {
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(rounded(
            sum.checked_div(Decimal::from(n)).ok_or(Overflow)?,
            4,
        )))
    };
    let (change_1d, change_1d_pct) = change(ref_1d)?;
    let (change_7d, change_7d_pct) = change(ref_7d)?;
    let (change_30d, change_30d_pct) = change(ref_30d)?;
    Ok(Some(Metrics {
        latest_day,
        latest_price,
        change_1d,
        change_1d_pct,
        change_7d,
        change_7d_pct,
        change_30d,
        change_30d_pct,
        ma_7d: mean(sum_7d, n_7d)?,
        ma_30d: mean(sum_30d, n_30d)?,
        volatility_30d: returns.value(),
        high_30d: high,
        low_30d: low,
        points_30d: n_30d,
        prior_high_30d: prior_high,
        prior_points_30d: prior_n,
    }))
}

/// `round(value, places)` of Postgres' `numeric`: half away from zero, and the result carries exactly
/// `places` decimals (`12.50`, not `12.5`).
fn rounded(value: Decimal, places: u32) -> Decimal {
    let mut r = value.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(places);
    r
}

/// Powers of ten that `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The `f64` nearest to a decimal, as Postgres' `numeric::float8` gives it. A mantissa under 2^53 and a power
/// of ten up to 1e22 are both exact in `f64`, so their one division rounds once, correctly; anything else
/// goes through the correctly rounded parser.
fn to_f64(d: Decimal) -> f64 {
    let (mantissa, scale) = (d.mantissa(), d.scale() as usize);
    if mantissa.unsigned_abs() < (1u128 << 53) && scale < POW10.len() {
        mantissa as f64 / POW10[scale]
    } else {
        d.to_string().parse().unwrap_or(f64::NAN)
    }
}

/// Postgres' `stddev_samp(float8)`: the Youngs-Cramer accumulation of `float8_accum`, then
/// `sqrt(Sxx / (N - 1))`, undefined (NULL) below two values.
#[derive(Debug, Default)]
struct StddevSamp {
    n: f64,
    sx: f64,
    sxx: f64,
}

impl StddevSamp {
    fn add(&mut self, x: f64) {
        let previous_n = self.n;
        self.n += 1.0;
        self.sx += x;
        if previous_n > 0.0 {
            let t = x * self.n - self.sx;
            self.sxx += t * t / (self.n * previous_n);
        }
    }

    fn value(&self) -> Option<f64> {
        (self.n > 1.0).then(|| (self.sxx / (self.n - 1.0)).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn day(n: i64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Duration::days(n)
    }

    fn series(points: &[(i64, &str)]) -> (Vec<NaiveDate>, Vec<Decimal>) {
        points.iter().map(|&(n, p)| (day(n), d(p))).unzip()
    }

    #[test]
    fn daily_points_give_hand_computed_changes_averages_and_extremes() {
        // Days 0..=60, price 1.00 + 0.01 per day: day 60 is 1.60.
        let prices: Vec<String> = (0..=60)
            .map(|i| format!("{:.2}", 1.0 + f64::from(i) / 100.0))
            .collect();
        let points: Vec<(i64, &str)> = (0..=60).map(|i| (i, prices[i as usize].as_str())).collect();
        let (days, prices) = series(&points);
        let m = compute(&Window::ending(day(60), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(m.latest_price, d("1.60"));
        assert_eq!(m.change_1d, Some(d("0.01")));
        assert_eq!(m.change_1d_pct.unwrap().to_string(), "0.63"); // 0.01 / 1.59 = 0.6289...%
        assert_eq!(m.change_7d, Some(d("0.07")));
        assert_eq!(m.change_7d_pct.unwrap().to_string(), "4.58"); // 0.07 / 1.53 = 4.575...%
        assert_eq!(m.change_30d, Some(d("0.30")));
        assert_eq!(m.change_30d_pct.unwrap().to_string(), "23.08"); // 0.30 / 1.30 = 23.0769...%
                                                                    // Days 54..=60 average 1.57; days 31..=60 average (1.31 + 1.60) / 2 = 1.455.
        assert_eq!(m.ma_7d.unwrap().to_string(), "1.5700");
        assert_eq!(m.ma_30d.unwrap().to_string(), "1.4550");
        assert_eq!((m.high_30d, m.low_30d), (d("1.60"), d("1.31")));
        assert_eq!((m.points_30d, m.prior_points_30d), (30, 30));
        assert_eq!(m.prior_high_30d, Some(d("1.59")));
        // 30 returns ln(p_i / p_{i-1}) for days 31..=60, each about 0.0070; they differ, so the deviation is
        // small and positive.
        let v = m.volatility_30d.unwrap();
        assert!(v > 0.0 && v < 0.001, "{v}");
    }

    #[test]
    fn references_take_the_latest_day_inside_each_look_back_range() {
        // Weekly points: no point 1-2 days back; 7 days back is inside 7..=14; 28 is outside 30..=60, 35 inside.
        let (days, prices) = series(&[
            (0, "10"),
            (7, "11"),
            (14, "12"),
            (21, "13"),
            (28, "14"),
            (35, "20"),
        ]);
        let m = compute(&Window::ending(day(35), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!((m.change_1d, m.change_1d_pct), (None, None));
        assert_eq!(m.change_7d, Some(d("6")));
        assert_eq!(m.change_7d_pct.unwrap().to_string(), "42.86"); // 6 / 14
        assert_eq!(m.change_30d, Some(d("10"))); // day 0 (35 back) beats nothing nearer in 30..=60
        assert_eq!(m.change_30d_pct.unwrap().to_string(), "100.00");
        assert_eq!(m.ma_7d.unwrap().to_string(), "20.0000");
        // Days 6..=35 (ages under 30): 11, 12, 13, 14, 20.
        assert_eq!(m.ma_30d.unwrap().to_string(), "14.0000");
        assert_eq!(m.points_30d, 5);
        // Ages 1..=30: days 7..=28.
        assert_eq!((m.prior_high_30d, m.prior_points_30d), (Some(d("14")), 4));
        // The returns of days 7..=35, each from the point before it (day 0's return is from nothing).
        let r: Vec<f64> = [
            11.0f64 / 10.0,
            12.0 / 11.0,
            13.0 / 12.0,
            14.0 / 13.0,
            20.0 / 14.0,
        ]
        .iter()
        .map(|x| x.ln())
        .collect();
        let mean = r.iter().sum::<f64>() / 5.0;
        let sd = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!(
            (m.volatility_30d.unwrap() - sd).abs() < 1e-15,
            "{m:?} vs {sd}"
        );
    }

    #[test]
    fn a_zero_reference_has_a_change_but_no_percentage_and_zero_prices_have_no_return() {
        // The 1-day reference is the latest of ages 1..=2: day 1 (0.50), not day 0.
        let (days, prices) = series(&[(0, "0.25"), (1, "0.50"), (2, "0.75")]);
        let m = compute(&Window::ending(day(2), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(m.change_1d, Some(d("0.25")));
        assert_eq!(m.change_1d_pct.unwrap().to_string(), "50.00");
        let (days, prices) = series(&[(0, "0.50"), (1, "0.00"), (2, "0.75")]);
        let m = compute(&Window::ending(day(2), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!((m.change_1d, m.change_1d_pct), (Some(d("0.75")), None));
        // 0.50 -> 0.00 and 0.00 -> 0.75 have no log return: one return is not enough for a deviation.
        assert_eq!(m.volatility_30d, None);
    }

    #[test]
    fn a_change_carries_the_larger_scale_of_its_two_prices() {
        let (days, prices) = series(&[(0, "0.00"), (7, "0.1")]);
        let m = compute(&Window::ending(day(7), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(m.change_7d.unwrap().to_string(), "0.10");
        let (days, prices) = series(&[(0, "2.5"), (7, "0.00")]);
        let m = compute(&Window::ending(day(7), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(m.change_7d.unwrap().to_string(), "-2.50");
    }

    #[test]
    fn of_equal_prices_the_high_and_low_show_the_most_recent_text() {
        let (days, prices) = series(&[(0, "9.00"), (1, "9.0"), (2, "1.00"), (3, "1.0"), (4, "5")]);
        let m = compute(&Window::ending(day(4), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(m.high_30d.to_string(), "9.0");
        assert_eq!(m.low_30d.to_string(), "1.0");
        assert_eq!(m.prior_high_30d.unwrap().to_string(), "9.0");
        let (days, prices) = series(&[(0, "9.0"), (1, "9.00")]);
        let m = compute(&Window::ending(day(1), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.high_30d.to_string(), m.low_30d.to_string()),
            ("9.00".into(), "9.00".into())
        );
    }

    #[test]
    fn one_point_has_its_price_and_no_changes() {
        let (days, prices) = series(&[(5, "3.25")]);
        let m = compute(&Window::ending(day(5), days, prices))
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.latest_price, m.high_30d, m.low_30d),
            (d("3.25"), d("3.25"), d("3.25"))
        );
        assert_eq!(
            (m.points_30d, m.prior_points_30d, m.prior_high_30d),
            (1, 0, None)
        );
        assert_eq!(
            (m.change_7d, m.ma_7d.unwrap().to_string()),
            (None, "3.2500".to_owned())
        );
        assert_eq!(m.volatility_30d, None);
    }

    #[test]
    fn a_point_outside_the_window_is_no_previous_point_for_a_return() {
        // Day 0 is 63 days before the latest day: the window holds days 56 and 63, one return (a flat one), so
        // there is no deviation; counting the return from day 0 would give two returns and a deviation.
        let (days, prices) = series(&[(0, "0.88"), (56, "1.00"), (63, "1.00")]);
        let window = Window::ending(day(63), days, prices);
        assert_eq!(window.days(), &[day(56), day(63)]);
        let m = compute(&window).unwrap().unwrap();
        assert_eq!(m.volatility_30d, None);
        assert_eq!((m.points_30d, m.change_7d), (2, Some(d("0.00"))));
    }

    #[test]
    fn a_window_is_sorted_and_trimmed_to_its_days() {
        let (days, prices) = series(&[(70, "3"), (5, "1"), (10, "2"), (9, "9")]);
        let window = Window::ending(day(70), days, prices);
        assert_eq!(window.days(), &[day(10), day(70)]);
        assert_eq!(window.prices(), &[d("2"), d("3")]);
    }

    #[test]
    fn a_window_that_does_not_end_on_the_latest_day_computes_nothing() {
        let (days, prices) = series(&[(0, "1"), (1, "2")]);
        assert_eq!(compute(&Window::ending(day(2), days, prices)), Ok(None));
        assert_eq!(compute(&Window::ending(day(2), vec![], vec![])), Ok(None));
    }

    #[test]
    fn rounding_is_half_away_from_zero_with_fixed_places() {
        assert_eq!(rounded(d("0.125"), 2).to_string(), "0.13");
        assert_eq!(rounded(d("-0.125"), 2).to_string(), "-0.13");
        assert_eq!(rounded(d("50"), 2).to_string(), "50.00");
        assert_eq!(rounded(d("1.23445"), 4).to_string(), "1.2345");
    }

    #[test]
    fn decimals_convert_to_the_nearest_double_as_the_parser_does() {
        for s in [
            "0.1",
            "1.59",
            "123.45",
            "0.000001",
            "99999999.99",
            "0.00000000000000000000001",
            "79228162514264337593543950335",
        ] {
            assert_eq!(to_f64(d(s)), s.parse::<f64>().unwrap(), "{s}");
        }
    }

    #[test]
    fn stddev_matches_the_two_pass_definition() {
        let xs = [0.1, -0.05, 0.2, 0.0, 0.07];
        let mut s = StddevSamp::default();
        xs.iter().for_each(|&x| s.add(x));
        let mean = xs.iter().sum::<f64>() / 5.0;
        let two_pass = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        assert!((s.value().unwrap() - two_pass).abs() < 1e-15);
        let mut one = StddevSamp::default();
        one.add(1.0);
        assert_eq!(one.value(), None);
    }
}
