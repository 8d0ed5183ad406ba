//! EventBridge cron against a naive reference evaluator written from AWS's "Cron expressions" table
//! (EventBridge user guide): fields minutes, hours, day-of-month, month, day-of-week, year; `, - * /` in
//! every field, `?` in one of the two day fields, `L` and `W` in day-of-month, `L` and `#` in day-of-week,
//! names (JAN-DEC, SUN-SAT) in any case, 1 = Sunday, years 1970-2199, UTC.
//!
//! The reference shares nothing with the product's parser: it keeps each field as `(start, end, step)`
//! triples, tests membership arithmetically, and finds fire times by walking the calendar a day at a time
//! and then a minute at a time. Generated valid expressions must be accepted by both and give the same next
//! fire times from generated instants; generated invalid ones must be refused by both.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use dualcaster::schedule::ScheduleExpression;
use integration_tests::check_generated;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------------------
// The reference model.

#[derive(Clone, Copy)]
struct Spec {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// A range written high-low wraps around (hours `22-2`); not for days of the month or years.
    wraps: bool,
}

const MINUTES: Spec = Spec {
    min: 0,
    max: 59,
    names: &[],
    wraps: true,
};
const HOURS: Spec = Spec {
    min: 0,
    max: 23,
    names: &[],
    wraps: true,
};
const DAYS: Spec = Spec {
    min: 1,
    max: 31,
    names: &[],
    wraps: false,
};
const MONTHS: Spec = Spec {
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    wraps: true,
};
const WEEKDAYS: Spec = Spec {
    min: 1,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    wraps: true,
};
const YEARS: Spec = Spec {
    min: 1970,
    max: 2199,
    names: &[],
    wraps: false,
};

/// One list item as `(start, end, step)`.
type Item = (u32, u32, u32);

fn number(text: &str, spec: Spec) -> Option<u32> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Some(spec.min + i as u32);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 4 {
        return None;
    }
    let v: u32 = text.parse().ok()?;
    (spec.min..=spec.max).contains(&v).then_some(v)
}

fn list(text: &str, spec: Spec) -> Option<Vec<Item>> {
    text.split(',')
        .map(|item| {
            let (base, step) = match item.split_once('/') {
                Some((b, s)) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => {
                    (b, Some(s.parse::<u32>().ok().filter(|s| *s >= 1)?))
                }
                Some(_) => return None,
                None => (item, None),
            };
            let (start, end) = if base == "*" {
                (spec.min, spec.max)
            } else if let Some((a, b)) = base.split_once('-') {
                (number(a, spec)?, number(b, spec)?)
            } else {
                let a = number(base, spec)?;
                (a, if step.is_some() { spec.max } else { a })
            };
            if start > end && !spec.wraps {
                return None;
            }
            Some((start, end, step.unwrap_or(1)))
        })
        .collect()
}

fn member(items: &[Item], v: u32, spec: Spec) -> bool {
    items.iter().any(|&(start, end, step)| {
        let offset = if start <= end {
            (start..=end).contains(&v).then(|| v - start)
        } else if v >= start {
            Some(v - start)
        } else if v <= end {
            Some(spec.max - start + 1 + v - spec.min)
        } else {
            None
        };
        offset.is_some_and(|o| o % step == 0)
    })
}

enum RefDayOfMonth {
    Any,
    Last,
    LastWeekday,
    NearestWeekday(u32),
    List(Vec<Item>),
}

enum RefDayOfWeek {
    Any,
    LastOf(u32),
    Nth(u32, u32),
    List(Vec<Item>),
}

struct RefCron {
    minutes: Vec<Item>,
    hours: Vec<Item>,
    dom: RefDayOfMonth,
    months: Vec<Item>,
    dow: RefDayOfWeek,
    years: Vec<Item>,
}

fn reference_parse(expr: &str) -> Option<RefCron> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let [minutes, hours, dom, months, dow, years] = fields.as_slice() else {
        return None;
    };
    let dom = match *dom {
        "?" => RefDayOfMonth::Any,
        "L" => RefDayOfMonth::Last,
        "LW" => RefDayOfMonth::LastWeekday,
        d if d.ends_with('W') => RefDayOfMonth::NearestWeekday(number(&d[..d.len() - 1], DAYS)?),
        d => RefDayOfMonth::List(list(d, DAYS)?),
    };
    let dow = match *dow {
        "?" => RefDayOfWeek::Any,
        "L" => RefDayOfWeek::List(vec![(7, 7, 1)]),
        d if d.contains('#') => {
            let (day, k) = d.split_once('#')?;
            let k = number(
                k,
                Spec {
                    min: 1,
                    max: 5,
                    names: &[],
                    wraps: false,
                },
            )?;
            RefDayOfWeek::Nth(number(day, WEEKDAYS)?, k)
        }
        d if d.len() > 1 && d.ends_with('L') => {
            RefDayOfWeek::LastOf(number(&d[..d.len() - 1], WEEKDAYS)?)
        }
        d => RefDayOfWeek::List(list(d, WEEKDAYS)?),
    };
    // Exactly one of the day fields is `?`.
    if matches!(dom, RefDayOfMonth::Any) == matches!(dow, RefDayOfWeek::Any) {
        return None;
    }
    Some(RefCron {
        minutes: list(minutes, MINUTES)?,
        hours: list(hours, HOURS)?,
        dom,
        months: list(months, MONTHS)?,
        dow,
        years: list(years, YEARS)?,
    })
}

fn is_weekday(date: NaiveDate) -> bool {
    !matches!(date.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun)
}

fn days_of(date: NaiveDate) -> Vec<NaiveDate> {
    (1..=31)
        .filter_map(|d| NaiveDate::from_ymd_opt(date.year(), date.month(), d))
        .collect()
}

impl RefCron {
    fn day_fires(&self, date: NaiveDate) -> bool {
        if !member(&self.years, date.year() as u32, YEARS)
            || !member(&self.months, date.month(), MONTHS)
        {
            return false;
        }
        let month_days = days_of(date);
        let weekday = date.weekday().num_days_from_sunday() + 1;
        let dom = match &self.dom {
            RefDayOfMonth::Any => true,
            RefDayOfMonth::Last => month_days.last() == Some(&date),
            RefDayOfMonth::LastWeekday => {
                month_days.iter().rev().find(|d| is_weekday(**d)) == Some(&date)
            }
            // The weekday of the month closest to day n; no fire in a month without a day n.
            RefDayOfMonth::NearestWeekday(n) => {
                month_days.len() as u32 >= *n
                    && month_days
                        .iter()
                        .filter(|d| is_weekday(**d))
                        .min_by_key(|d| (d.day() as i64 - i64::from(*n)).abs())
                        == Some(&date)
            }
            RefDayOfMonth::List(items) => member(items, date.day(), DAYS),
        };
        let same_weekday = |w: u32| {
            month_days
                .iter()
                .filter(move |d| d.weekday().num_days_from_sunday() + 1 == w)
                .copied()
        };
        let dow = match &self.dow {
            RefDayOfWeek::Any => true,
            RefDayOfWeek::LastOf(w) => same_weekday(*w).last() == Some(date),
            RefDayOfWeek::Nth(w, k) => same_weekday(*w).nth(*k as usize - 1) == Some(date),
            RefDayOfWeek::List(items) => member(items, weekday, WEEKDAYS),
        };
        dom && dow
    }

    /// Walks every day up to the end of 2199, then every minute of a firing day.
    fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let first = after
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .map(|t| t + Duration::minutes(1))
            .expect("a valid instant");
        let mut out = Vec::new();
        let mut date = first.date_naive();
        let end = NaiveDate::from_ymd_opt(2199, 12, 31).expect("a date");
        while date <= end && out.len() < n {
            if self.day_fires(date) {
                let from = if date == first.date_naive() {
                    first.hour() * 60 + first.minute()
                } else {
                    0
                };
                for minute_of_day in from..1440 {
                    let (h, m) = (minute_of_day / 60, minute_of_day % 60);
                    if member(&self.hours, h, HOURS) && member(&self.minutes, m, MINUTES) {
                        out.push(
                            Utc.from_utc_datetime(&date.and_hms_opt(h, m, 0).expect("a time")),
                        );
                        if out.len() == n {
                            break;
                        }
                    }
                }
            }
            date = date.succ_opt().expect("a date");
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------
// Generators.

fn name_or_number(spec: Spec, v: u32) -> BoxedStrategy<String> {
    let number = Just(v.to_string());
    if spec.names.is_empty() {
        return number.boxed();
    }
    let name = spec.names[(v - spec.min) as usize];
    prop_oneof![
        number,
        Just(name.to_owned()),
        Just(name.to_ascii_lowercase()),
        Just(format!("{}{}", &name[..1], name[1..].to_ascii_lowercase())),
    ]
    .boxed()
}

fn value(spec: Spec) -> BoxedStrategy<String> {
    (spec.min..=spec.max)
        .prop_flat_map(move |v| name_or_number(spec, v))
        .boxed()
}

/// One list item: a value, a range (wrapping where the field allows it) or a stepped form.
fn item(spec: Spec) -> BoxedStrategy<String> {
    let span = spec.max - spec.min + 1;
    let range = (spec.min..=spec.max, spec.min..=spec.max).prop_flat_map(move |(a, b)| {
        let (a, b) = if spec.wraps {
            (a, b)
        } else {
            (a.min(b), a.max(b))
        };
        (name_or_number(spec, a), name_or_number(spec, b)).prop_map(|(a, b)| format!("{a}-{b}"))
    });
    let step = 1..=span.max(2) - 1;
    prop_oneof![
        3 => value(spec),
        2 => range.clone().boxed(),
        1 => (range, step.clone()).prop_map(|(r, s)| format!("{r}/{s}")),
        1 => (value(spec), step.clone()).prop_map(|(v, s)| format!("{v}/{s}")),
        1 => step.prop_map(|s| format!("*/{s}")),
    ]
    .boxed()
}

fn plain_field(spec: Spec) -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just("*".to_owned()),
        4 => prop::collection::vec(item(spec), 1..=3).prop_map(|items| items.join(",")),
    ]
    .boxed()
}

fn day_of_month() -> BoxedStrategy<String> {
    prop_oneof![
        4 => plain_field(DAYS),
        1 => Just("L".to_owned()),
        1 => Just("LW".to_owned()),
        2 => (1u32..=31).prop_map(|d| format!("{d}W")),
    ]
    .boxed()
}

fn day_of_week() -> BoxedStrategy<String> {
    prop_oneof![
        4 => plain_field(WEEKDAYS),
        1 => Just("L".to_owned()),
        2 => value(WEEKDAYS).prop_map(|d| format!("{d}L")),
        2 => (value(WEEKDAYS), 1u32..=5).prop_map(|(d, k)| format!("{d}#{k}")),
    ]
    .boxed()
}

/// Years near the instants the tests start from, so that most schedules fire within a few walks.
fn years() -> BoxedStrategy<String> {
    let near = Spec {
        min: 2024,
        max: 2045,
        names: &[],
        wraps: false,
    };
    prop_oneof![
        4 => Just("*".to_owned()),
        2 => prop::collection::vec(item(near), 1..=2).prop_map(|items| items.join(",")),
        1 => (2024u32..=2199).prop_map(|y| format!("{y}/7")),
    ]
    .boxed()
}

fn valid_expression() -> impl Strategy<Value = String> {
    let days = prop_oneof![
        (day_of_month(), Just("?".to_owned())),
        (Just("?".to_owned()), day_of_week()),
    ];
    (
        plain_field(MINUTES),
        plain_field(HOURS),
        days,
        plain_field(MONTHS),
        years(),
    )
        .prop_map(|(minutes, hours, (dom, dow), months, years)| {
            format!("{minutes} {hours} {dom} {months} {dow} {years}")
        })
}

/// Tokens that break the documented table, per field (minutes, hours, day-of-month, month, day-of-week,
/// year).
const INVALID: [&[&str]; 6] = [
    &[
        "60", "-1", "5-", "*/0", "1,,2", "+5", "5W", "L", "?", "#", "a", "0/", "1-2-3", "0/x",
    ],
    &["24", "25", "+1", "?", "L", "1#2", ""],
    &[
        "0", "32", "1#2", "L,5", "32W", "0W", "W", "15-3", "+1", "5L", "LW5", "MON",
    ],
    &["0", "13", "FOO", "JANUARY", "L", "?", "+3", "1W"],
    &[
        "0", "8", "2W", "MON#6", "MON#0", "1#", "W", "FUNDAY", "L,MON", "+2", "MON-W", "2#2#2",
    ],
    &["1969", "2200", "2030-2020", "+2030", "L", "?", "20300"],
];

fn invalid_expression() -> impl Strategy<Value = String> {
    let broken_field = (valid_expression(), 0usize..6, any::<prop::sample::Index>()).prop_map(
        |(expr, field, pick)| {
            let mut fields: Vec<String> = expr.split(' ').map(str::to_owned).collect();
            fields[field] = pick.get(INVALID[field]).to_string();
            // Keep the `?` rule satisfied so the broken field is the only fault.
            if field == 2 && fields[4] != "?" {
                fields[4] = "?".into();
            }
            if field == 4 && fields[2] != "?" {
                fields[2] = "?".into();
            }
            fields.join(" ")
        },
    );
    let broken_shape = (valid_expression(), 0usize..4).prop_map(|(expr, how)| {
        let mut fields: Vec<&str> = expr.split(' ').collect();
        match how {
            0 => {
                fields.pop();
            }
            1 => fields.push("*"),
            2 => {
                fields[2] = "?";
                fields[4] = "?";
            }
            _ => {
                fields[2] = "*";
                fields[4] = "*";
            }
        }
        fields.join(" ")
    });
    prop_oneof![4 => broken_field, 1 => broken_shape]
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2024-01-01 to 2035-12-31, any second.
    (1_704_067_200i64..2_082_758_400)
        .prop_map(|s| Utc.timestamp_opt(s, 0).single().expect("an instant"))
}

fn product_upcoming(
    expr: &str,
    after: DateTime<Utc>,
    n: usize,
) -> Result<Vec<DateTime<Utc>>, String> {
    let parsed: ScheduleExpression = format!("cron({expr})")
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok(parsed.upcoming(after, n))
}

// ---------------------------------------------------------------------------------------------------------
// The tests.

#[test]
fn generated_valid_expressions_fire_when_the_reference_fires() {
    let case = (valid_expression(), instant());
    check_generated((1000, 20_000, 4096), &case, |(expr, after)| {
        let reference = reference_parse(&expr);
        prop_assert!(
            reference.is_some(),
            "the generator made an expression the reference refuses: {expr}"
        );
        let expected = reference.expect("checked").upcoming(after, 5);
        let got = product_upcoming(&expr, after, 5);
        prop_assert_eq!(got, Ok(expected), "cron({}) after {}", expr, after);
        Ok(())
    });
}

#[test]
fn generated_invalid_expressions_are_refused_by_both() {
    check_generated((1000, 20_000, 4096), &invalid_expression(), |expr| {
        prop_assert!(
            reference_parse(&expr).is_none(),
            "the reference accepts {}",
            expr
        );
        let got = product_upcoming(&expr, Utc::now(), 1);
        prop_assert!(got.is_err(), "cron({}) was accepted: {:?}", expr, got);
        Ok(())
    });
}

/// Day names containing a W (WED) were refused as if W were the day-of-month wildcard; the reference and
/// AWS's table accept them.
#[test]
fn weekday_names_with_a_w_are_accepted() {
    let after = Utc
        .with_ymd_and_hms(2026, 11, 30, 0, 0, 0)
        .single()
        .expect("an instant");
    for expr in [
        "0 9 ? * MON,WED,FRI *",
        "0 12 ? * WED *",
        "0 12 ? * MON-WED *",
        "0 12 ? * wed *",
    ] {
        let expected = reference_parse(expr)
            .expect("the reference accepts it")
            .upcoming(after, 4);
        assert_eq!(product_upcoming(expr, after, 4), Ok(expected), "{expr}");
    }
}

/// A signed number (`+5`) is not a number in the table: refused, as the reference refuses it.
#[test]
fn signed_numbers_are_refused() {
    for expr in [
        "+5 * * * ? *",
        "0 +1 * * ? *",
        "0 0 +1 * ? *",
        "0 0 ? * +2 *",
        "0 0 1 * ? +2030",
    ] {
        assert!(reference_parse(expr).is_none(), "{expr}");
        assert!(
            product_upcoming(expr, Utc::now(), 1).is_err(),
            "{expr} was accepted"
        );
    }
}
