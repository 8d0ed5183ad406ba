//! Schedules as EventBridge evaluates them: `cron(...)` with AWS's six-field semantics (not Unix cron's) and
//! `rate(...)`.
//!
//! Cron fields: minutes (0-59), hours (0-23), day-of-month (1-31), month (1-12 or JAN-DEC), day-of-week
//! (1-7 or SUN-SAT, 1 = Sunday), year (1970-2199). All times are UTC. Wildcards: `,` lists, `-` ranges
//! (a range may wrap, `22-2` is 22, 23, 0, 1, 2), `*` everything, `/` increments (`0/15`, `*/10`, `10-40/5`),
//! `?` "no constraint" in exactly one of the two day fields (one of them must be `?`), `L` (last day of the
//! month; in day-of-week alone, Saturday, the last day of the week; `6L` the last Friday of the month),
//! `W` (`15W` the weekday nearest the 15th, never leaving the month; `LW` the last weekday of the month),
//! and `#` (`3#2` the second Tuesday).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc, Weekday};

/// First and last years EventBridge accepts.
pub const MIN_YEAR: i32 = 1970;
pub const MAX_YEAR: i32 = 2199;

/// A parse or validation failure, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> ScheduleError {
    ScheduleError {
        field,
        message: message.into(),
    }
}

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleExpression {
    Cron(Cron),
    Rate(Rate),
}

impl FromStr for ScheduleExpression {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(inner) = s.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
            Ok(ScheduleExpression::Cron(inner.parse()?))
        } else if let Some(inner) = s.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            Ok(ScheduleExpression::Rate(inner.parse()?))
        } else {
            Err(err(
                "expression",
                format!("`{s}` is neither cron(...) nor rate(...)"),
            ))
        }
    }
}

impl ScheduleExpression {
    /// The next `n` fire times after `after`. A rate has no fixed phase in EventBridge (it counts from when
    /// the rule is created), so its times are counted from `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        match self {
            ScheduleExpression::Cron(c) => c.upcoming(after, n),
            ScheduleExpression::Rate(r) => (1..=n as i32).map(|k| after + r.period() * k).collect(),
        }
    }
}

/// `rate(value unit)`: unit is minute(s), hour(s) or day(s); singular exactly when value is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub value: u32,
    pub unit: RateUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Minute,
    Hour,
    Day,
}

impl Rate {
    pub fn period(&self) -> Duration {
        let v = i64::from(self.value);
        match self.unit {
            RateUnit::Minute => Duration::minutes(v),
            RateUnit::Hour => Duration::hours(v),
            RateUnit::Day => Duration::days(v),
        }
    }
}

impl FromStr for Rate {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [value, unit] = parts.as_slice() else {
            return Err(err("rate", format!("`{s}` must be `<value> <unit>`")));
        };
        let value: u32 = value
            .parse()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| err("rate", format!("`{value}` is not a positive whole number")))?;
        let (unit, singular) = match *unit {
            "minute" => (RateUnit::Minute, true),
            "minutes" => (RateUnit::Minute, false),
            "hour" => (RateUnit::Hour, true),
            "hours" => (RateUnit::Hour, false),
            "day" => (RateUnit::Day, true),
            "days" => (RateUnit::Day, false),
            other => {
                return Err(err(
                    "rate",
                    format!("unknown unit `{other}` (minute(s), hour(s), day(s))"),
                ))
            }
        };
        if singular != (value == 1) {
            return Err(err(
                "rate",
                format!("`{s}`: use a singular unit for 1 and a plural one otherwise"),
            ));
        }
        Ok(Rate { value, unit })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
        };
        let plural = if self.value == 1 { "" } else { "s" };
        write!(f, "{} {unit}{plural}", self.value)
    }
}

/// A set of small numbers (0-63) as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bits(u64);

impl Bits {
    fn has(self, v: u32) -> bool {
        v < 64 && self.0 & (1 << v) != 0
    }
    fn set(&mut self, v: u32) {
        self.0 |= 1 << v;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DayOfMonth {
    /// `?`
    Any,
    Days(Bits),
    /// `L`
    Last,
    /// `LW`
    LastWeekday,
    /// `nW`
    NearestWeekday(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DayOfWeek {
    /// `?`
    Any,
    /// 1 = Sunday ... 7 = Saturday.
    Days(Bits),
    /// `nL`: the last such weekday of the month.
    LastOfMonth(u32),
    /// `n#k`: the k-th such weekday of the month.
    Nth(u32, u32),
}

/// A parsed six-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    source: String,
    minutes: Bits,
    hours: Bits,
    day_of_month: DayOfMonth,
    months: Bits,
    day_of_week: DayOfWeek,
    /// Years as offsets from 1970 don't fit 64 bits: keep the list.
    years: Vec<i32>,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Whether `a-b` with a > b wraps around (hours 22-2); not for years or days of the month.
    wraps: bool,
}

const MINUTES: FieldSpec = FieldSpec {
    name: "minutes",
    min: 0,
    max: 59,
    names: &[],
    wraps: true,
};
const HOURS: FieldSpec = FieldSpec {
    name: "hours",
    min: 0,
    max: 23,
    names: &[],
    wraps: true,
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    wraps: false,
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    wraps: true,
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 1,
    max: 7,
    names: &WEEKDAYS,
    wraps: true,
};
const YEAR: FieldSpec = FieldSpec {
    name: "year",
    min: MIN_YEAR as u32,
    max: MAX_YEAR as u32,
    names: &[],
    wraps: false,
};

impl FieldSpec {
    fn value(&self, text: &str) -> Result<u32, ScheduleError> {
        let upper = text.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.min + i as u32);
        }
        // Digits only: Rust's integer parser would also take a sign (`+5`), which the table does not.
        let v: u32 = Some(text)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| err(self.name, format!("`{text}` is not a valid value")))?;
        if v < self.min || v > self.max {
            return Err(err(
                self.name,
                format!("{v} is outside {}-{}", self.min, self.max),
            ));
        }
        Ok(v)
    }

    /// Every value matched by a list of `*`, `a`, `a-b`, with an optional `/step`.
    fn values(&self, field: &str) -> Result<Vec<u32>, ScheduleError> {
        let mut out = Vec::new();
        for item in field.split(',') {
            if item.is_empty() {
                return Err(err(self.name, format!("empty item in `{field}`")));
            }
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s >= 1).ok_or_else(|| {
                        err(
                            self.name,
                            format!("increment `{s}` must be a positive number"),
                        )
                    })?;
                    (r, Some(step))
                }
                None => (item, None),
            };
            let (start, end) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let a = self.value(range)?;
                // `a/step` runs from a to the end of the field.
                (a, if step.is_some() { self.max } else { a })
            };
            let span: Vec<u32> = if start <= end {
                (start..=end).collect()
            } else if self.wraps {
                (start..=self.max).chain(self.min..=end).collect()
            } else {
                return Err(err(self.name, format!("range `{range}` runs backwards")));
            };
            out.extend(span.into_iter().step_by(step.unwrap_or(1) as usize));
        }
        Ok(out)
    }

    fn bits(&self, field: &str) -> Result<Bits, ScheduleError> {
        let mut bits = Bits::default();
        for v in self.values(field)? {
            bits.set(v);
        }
        Ok(bits)
    }
}

fn parse_day_of_month(field: &str) -> Result<DayOfMonth, ScheduleError> {
    let name = DAY_OF_MONTH.name;
    match field {
        "?" => return Ok(DayOfMonth::Any),
        "L" => return Ok(DayOfMonth::Last),
        "LW" => return Ok(DayOfMonth::LastWeekday),
        _ => {}
    }
    if let Some(day) = field.strip_suffix('W') {
        let day = DAY_OF_MONTH.value(day)?;
        return Ok(DayOfMonth::NearestWeekday(day));
    }
    if field.contains(['L', 'W', '#', '?']) {
        return Err(err(
            name,
            format!("`{field}`: L, W and ? stand alone (L, LW, 15W, ?) and # is for day-of-week"),
        ));
    }
    Ok(DayOfMonth::Days(DAY_OF_MONTH.bits(field)?))
}

fn parse_day_of_week(field: &str) -> Result<DayOfWeek, ScheduleError> {
    let name = DAY_OF_WEEK.name;
    match field {
        "?" => return Ok(DayOfWeek::Any),
        // `L` alone is the last day of the week: Saturday.
        "L" => return Ok(DayOfWeek::Days(DAY_OF_WEEK.bits("7")?)),
        _ => {}
    }
    if let Some((day, nth)) = field.split_once('#') {
        let day = DAY_OF_WEEK.value(day)?;
        let nth: u32 = nth
            .parse()
            .ok()
            .filter(|n| (1..=5).contains(n))
            .ok_or_else(|| err(name, format!("`{field}`: the week after # must be 1-5")))?;
        return Ok(DayOfWeek::Nth(day, nth));
    }
    if let Some(day) = field.strip_suffix('L') {
        return Ok(DayOfWeek::LastOfMonth(DAY_OF_WEEK.value(day)?));
    }
    // Look for misplaced wildcards in the values only: day names may hold the same letters (WED).
    let misplaced = field.split([',', '-', '/']).any(|part| {
        part.contains(['L', 'W', '?', '#'])
            && !WEEKDAYS.iter().any(|n| n.eq_ignore_ascii_case(part))
    });
    if misplaced {
        return Err(err(
            name,
            format!("`{field}`: L and ? stand alone (L, 6L, ?) and W is for day-of-month"),
        ));
    }
    Ok(DayOfWeek::Days(DAY_OF_WEEK.bits(field)?))
}

impl FromStr for Cron {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        if fields.len() != 6 {
            return Err(err(
                "expression",
                format!(
                    "`{s}` has {} fields; EventBridge cron has 6 (minutes hours day-of-month month day-of-week year)",
                    fields.len()
                ),
            ));
        }

        let day_of_month = parse_day_of_month(fields[2])?;
        let day_of_week = parse_day_of_week(fields[4])?;
        match (&day_of_month, &day_of_week) {
            (DayOfMonth::Any, DayOfWeek::Any) => {
                return Err(err(
                    "day-of-week",
                    "day-of-month and day-of-week cannot both be ?",
                ))
            }
            (DayOfMonth::Any, _) | (_, DayOfWeek::Any) => {}
            _ => return Err(err(
                "day-of-week",
                "one of day-of-month and day-of-week must be ? (EventBridge does not combine them)",
            )),
        }
        let cron = Cron {
            source: s.split_whitespace().collect::<Vec<_>>().join(" "),
            minutes: MINUTES.bits(fields[0])?,
            hours: HOURS.bits(fields[1])?,
            day_of_month,
            months: MONTH.bits(fields[3])?,
            day_of_week,
            years: {
                let mut y: Vec<i32> = YEAR
                    .values(fields[5])?
                    .into_iter()
                    .map(|v| v as i32)
                    .collect();
                y.sort_unstable();
                y.dedup();
                y
            },
        };
        Ok(cron)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cron({})", self.source)
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

/// 1 = Sunday ... 7 = Saturday, as in EventBridge.
fn aws_weekday(date: NaiveDate) -> u32 {
    date.weekday().num_days_from_sunday() + 1
}

fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The weekday nearest to `day` within its month (Saturday moves to Friday, Sunday to Monday, except where
/// that would leave the month).
fn nearest_weekday(year: i32, month: u32, day: u32) -> Option<u32> {
    let last = days_in_month(year, month);
    if day > last {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    Some(match date.weekday() {
        Weekday::Sat if day == 1 => 3,
        Weekday::Sat => day - 1,
        Weekday::Sun if day == last => day - 2,
        Weekday::Sun => day + 1,
        _ => day,
    })
}

impl Cron {
    fn day_matches(&self, year: i32, month: u32, day: u32) -> bool {
        let Some(date) = NaiveDate::from_ymd_opt(year, month, day) else {
            return false;
        };
        let last = days_in_month(year, month);
        let dom = match &self.day_of_month {
            DayOfMonth::Any => true,
            DayOfMonth::Days(bits) => bits.has(day),
            DayOfMonth::Last => day == last,
            DayOfMonth::LastWeekday => {
                let mut d = last;
                while is_weekend(NaiveDate::from_ymd_opt(year, month, d).unwrap_or(date)) {
                    d -= 1;
                }
                day == d
            }
            DayOfMonth::NearestWeekday(n) => nearest_weekday(year, month, *n) == Some(day),
        };
        let weekday = aws_weekday(date);
        let dow = match &self.day_of_week {
            DayOfWeek::Any => true,
            DayOfWeek::Days(bits) => bits.has(weekday),
            DayOfWeek::LastOfMonth(w) => weekday == *w && day + 7 > last,
            DayOfWeek::Nth(w, k) => weekday == *w && (day - 1) / 7 + 1 == *k,
        };
        dom && dow
    }

    /// The first fire time strictly after `after`, or `None` if there is none before 2200.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let (sy, sm, sd, sh, smin) = (
            start.year(),
            start.month(),
            start.day(),
            start.hour(),
            start.minute(),
        );
        for &year in self.years.iter().filter(|y| **y >= sy) {
            for month in 1..=12u32 {
                if (year == sy && month < sm) || !self.months.has(month) {
                    continue;
                }
                let first_month = year == sy && month == sm;
                for day in 1..=days_in_month(year, month) {
                    if (first_month && day < sd) || !self.day_matches(year, month, day) {
                        continue;
                    }
                    let first_day = first_month && day == sd;
                    for hour in 0..24u32 {
                        if (first_day && hour < sh) || !self.hours.has(hour) {
                            continue;
                        }
                        let first_hour = first_day && hour == sh;
                        for minute in 0..60u32 {
                            if (first_hour && minute < smin) || !self.minutes.has(minute) {
                                continue;
                            }
                            return Utc
                                .with_ymd_and_hms(year, month, day, hour, minute, 0)
                                .single();
                        }
                    }
                }
            }
        }
        None
    }

    /// The next `n` fire times after `after` (fewer if the schedule ends).
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str, n: usize) -> Vec<String> {
        let cron: Cron = expr.parse().unwrap_or_else(|e| panic!("{expr}: {e}"));
        cron.upcoming(at(after), n)
            .into_iter()
            .map(|t| t.format("%Y-%m-%d %a %H:%M").to_string())
            .collect()
    }

    fn fails(expr: &str) -> ScheduleError {
        expr.parse::<Cron>().expect_err(expr)
    }

    // The examples of AWS's "Cron expressions" table (EventBridge user guide).

    #[test]
    fn aws_example_10am_every_day() {
        assert_eq!(
            next("0 10 * * ? *", "2026-11-26T10:00:00Z", 3),
            [
                "2026-11-27 Fri 10:00",
                "2026-11-28 Sat 10:00",
                "2026-11-29 Sun 10:00"
            ]
        );
    }

    #[test]
    fn aws_example_12_15_every_day() {
        assert_eq!(
            next("15 12 * * ? *", "2026-11-26T12:14:59Z", 2),
            ["2026-11-26 Thu 12:15", "2026-11-27 Fri 12:15"]
        );
    }

    #[test]
    fn aws_example_6pm_monday_to_friday() {
        assert_eq!(
            next("0 18 ? * MON-FRI *", "2026-11-27T18:00:00Z", 3),
            [
                "2026-11-30 Mon 18:00",
                "2026-12-01 Tue 18:00",
                "2026-12-02 Wed 18:00"
            ]
        );
    }

    #[test]
    fn aws_example_8am_first_of_month() {
        assert_eq!(
            next("0 8 1 * ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-12-01 Tue 08:00",
                "2027-01-01 Fri 08:00",
                "2027-02-01 Mon 08:00"
            ]
        );
    }

    #[test]
    fn aws_example_every_15_minutes() {
        assert_eq!(
            next("0/15 * * * ? *", "2026-11-26T23:50:00Z", 3),
            [
                "2026-11-27 Fri 00:00",
                "2026-11-27 Fri 00:15",
                "2026-11-27 Fri 00:30"
            ]
        );
    }

    #[test]
    fn aws_example_every_10_minutes_weekdays() {
        assert_eq!(
            next("0/10 * ? * MON-FRI *", "2026-11-27T23:45:00Z", 2),
            ["2026-11-27 Fri 23:50", "2026-11-30 Mon 00:00"]
        );
    }

    #[test]
    fn aws_example_every_5_minutes_office_hours() {
        let times = next("0/5 8-17 ? * MON-FRI *", "2026-11-27T17:50:00Z", 3);
        assert_eq!(
            times,
            [
                "2026-11-27 Fri 17:55",
                "2026-11-30 Mon 08:00",
                "2026-11-30 Mon 08:05"
            ]
        );
    }

    #[test]
    fn aws_example_every_30_minutes_over_midnight() {
        // Hours 22-2 wrap: 22, 23, 0, 1, 2 on Monday to Friday (so Monday 00:00-02:30 too, Saturday not).
        let times = next("0/30 22-2 ? * MON-FRI *", "2026-11-27T21:00:00Z", 7);
        assert_eq!(
            times,
            [
                "2026-11-27 Fri 22:00",
                "2026-11-27 Fri 22:30",
                "2026-11-27 Fri 23:00",
                "2026-11-27 Fri 23:30",
                "2026-11-30 Mon 00:00",
                "2026-11-30 Mon 00:30",
                "2026-11-30 Mon 01:00",
            ]
        );
    }

    #[test]
    fn every_minute_and_names_in_any_case() {
        assert_eq!(
            next("* * * * ? *", "2026-11-26T10:00:30Z", 2),
            ["2026-11-26 Thu 10:01", "2026-11-26 Thu 10:02"]
        );
        assert_eq!(
            next("0 9 ? jan,Jul mon 2027", "2026-11-26T00:00:00Z", 2),
            ["2027-01-04 Mon 09:00", "2027-01-11 Mon 09:00"]
        );
        assert_eq!(
            next("0 9 ? JAN,JUL MON 2027", "2027-01-26T00:00:00Z", 1),
            ["2027-07-05 Mon 09:00"]
        );
    }

    #[test]
    fn day_of_week_numbers_start_on_sunday() {
        assert_eq!(
            next("0 0 ? * 1 *", "2026-11-26T00:00:00Z", 1),
            ["2026-11-29 Sun 00:00"]
        );
        assert_eq!(
            next("0 0 ? * 7 *", "2026-11-26T00:00:00Z", 1),
            ["2026-11-28 Sat 00:00"]
        );
        assert_eq!(
            next("0 0 ? * SAT-MON *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-11-28 Sat 00:00",
                "2026-11-29 Sun 00:00",
                "2026-11-30 Mon 00:00"
            ]
        );
    }

    #[test]
    fn steps_ranges_and_lists() {
        assert_eq!(
            next("10-40/15 3 * * ? *", "2026-11-26T00:00:00Z", 4),
            [
                "2026-11-26 Thu 03:10",
                "2026-11-26 Thu 03:25",
                "2026-11-26 Thu 03:40",
                "2026-11-27 Fri 03:10"
            ]
        );
        assert_eq!(
            next("*/20 0 * * ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-11-26 Thu 00:20",
                "2026-11-26 Thu 00:40",
                "2026-11-27 Fri 00:00"
            ]
        );
        assert_eq!(
            next("5,1,3 0 * * ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-11-26 Thu 00:01",
                "2026-11-26 Thu 00:03",
                "2026-11-26 Thu 00:05"
            ]
        );
        assert_eq!(
            next("0 0 1/10 * ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-12-01 Tue 00:00",
                "2026-12-11 Fri 00:00",
                "2026-12-21 Mon 00:00"
            ]
        );
        assert_eq!(
            next("0 0 1 NOV-FEB/2 ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2027-01-01 Fri 00:00",
                "2027-11-01 Mon 00:00",
                "2028-01-01 Sat 00:00"
            ]
        );
    }

    #[test]
    fn the_old_celery_beat_schedules() {
        // crontab(minute="*/15"), crontab(hour="*/4") and crontab(hour="3", minute="0") in EventBridge form.
        assert_eq!(
            next("0/15 * * * ? *", "2026-11-26T10:01:00Z", 2),
            ["2026-11-26 Thu 10:15", "2026-11-26 Thu 10:30"]
        );
        assert_eq!(
            next("0 0/4 * * ? *", "2026-11-26T10:01:00Z", 3),
            [
                "2026-11-26 Thu 12:00",
                "2026-11-26 Thu 16:00",
                "2026-11-26 Thu 20:00"
            ]
        );
        assert_eq!(
            next("0 3 * * ? *", "2026-11-26T03:00:00Z", 1),
            ["2026-11-27 Fri 03:00"]
        );
    }

    #[test]
    fn leap_days() {
        assert_eq!(
            next("0 12 29 2 ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2028-02-29 Tue 12:00",
                "2032-02-29 Sun 12:00",
                "2036-02-29 Fri 12:00"
            ]
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("0 0 29 FEB ? 2096-2104", "2096-03-01T00:00:00Z", 1),
            ["2104-02-29 Fri 00:00"]
        );
        assert_eq!(
            next("0 0 L 2 ? *", "2027-01-01T00:00:00Z", 2),
            ["2027-02-28 Sun 00:00", "2028-02-29 Tue 00:00"]
        );
    }

    #[test]
    fn month_ends() {
        assert_eq!(
            next("0 0 L * ? *", "2026-11-26T00:00:00Z", 4),
            [
                "2026-11-30 Mon 00:00",
                "2026-12-31 Thu 00:00",
                "2027-01-31 Sun 00:00",
                "2027-02-28 Sun 00:00"
            ]
        );
        // The 31st only exists in some months.
        assert_eq!(
            next("0 0 31 * ? *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-12-31 Thu 00:00",
                "2027-01-31 Sun 00:00",
                "2027-03-31 Wed 00:00"
            ]
        );
        // Year end into the next year.
        assert_eq!(
            next("59 23 31 12 ? *", "2026-12-31T23:59:00Z", 1),
            ["2027-12-31 Fri 23:59"]
        );
    }

    #[test]
    fn nearest_weekday_w() {
        // 2027-05-15 is a Saturday: the nearest weekday is Friday the 14th.
        assert_eq!(
            next("0 9 15W * ? *", "2027-05-01T00:00:00Z", 1),
            ["2027-05-14 Fri 09:00"]
        );
        // 2026-11-15 is a Sunday: Monday the 16th.
        assert_eq!(
            next("0 9 15W * ? *", "2026-11-01T00:00:00Z", 1),
            ["2026-11-16 Mon 09:00"]
        );
        // 2027-05-01 is a Saturday: W never leaves the month, so Monday the 3rd, not Friday April 30th.
        assert_eq!(
            next("0 9 1W * ? *", "2027-04-15T00:00:00Z", 1),
            ["2027-05-03 Mon 09:00"]
        );
        // 2027-10-31 is a Sunday and the last day: Friday the 29th.
        assert_eq!(
            next("0 9 31W 10 ? *", "2027-10-01T00:00:00Z", 1),
            ["2027-10-29 Fri 09:00"]
        );
        // 30W does not exist in February: skipped, not moved.
        assert_eq!(
            next("0 9 30W 2,3 ? *", "2027-02-01T00:00:00Z", 1),
            ["2027-03-30 Tue 09:00"]
        );
        // A weekday stays where it is.
        assert_eq!(
            next("0 9 10W * ? *", "2026-11-01T00:00:00Z", 1),
            ["2026-11-10 Tue 09:00"]
        );
    }

    #[test]
    fn last_weekday_lw() {
        // 2027-01-31 is a Sunday, so the last weekday is Friday the 29th; 2027-02-28 Sunday: the 26th.
        assert_eq!(
            next("0 17 LW * ? *", "2027-01-01T00:00:00Z", 2),
            ["2027-01-29 Fri 17:00", "2027-02-26 Fri 17:00"]
        );
    }

    #[test]
    fn nth_weekday_hash() {
        // 3#2: the second Tuesday.
        assert_eq!(
            next("0 8 ? * 3#2 *", "2026-11-26T00:00:00Z", 2),
            ["2026-12-08 Tue 08:00", "2027-01-12 Tue 08:00"]
        );
        // The first Wednesday of the month (4#1), as in AWS's DataSync example.
        assert_eq!(
            next("0 8 ? * 4#1 *", "2026-11-26T00:00:00Z", 1),
            ["2026-12-02 Wed 08:00"]
        );
        // 2#5: the fifth Monday, only in months that have one.
        assert_eq!(
            next("0 0 ? * MON#5 *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-11-30 Mon 00:00",
                "2027-03-29 Mon 00:00",
                "2027-05-31 Mon 00:00"
            ]
        );
    }

    #[test]
    fn last_weekday_of_month_and_last_day_of_week() {
        // 6L: the last Friday.
        assert_eq!(
            next("0 0 ? * 6L *", "2026-11-26T00:00:00Z", 3),
            [
                "2026-11-27 Fri 00:00",
                "2026-12-25 Fri 00:00",
                "2027-01-29 Fri 00:00"
            ]
        );
        // L alone in day-of-week: Saturday, the last day of the week.
        assert_eq!(
            next("0 0 ? * L *", "2026-11-26T00:00:00Z", 2),
            ["2026-11-28 Sat 00:00", "2026-12-05 Sat 00:00"]
        );
    }

    #[test]
    fn years_bound_the_schedule() {
        assert_eq!(
            next("0 0 1 1 ? 2027,2029", "2026-11-26T00:00:00Z", 5),
            ["2027-01-01 Fri 00:00", "2029-01-01 Mon 00:00"]
        );
        assert!(
            next("0 0 1 1 ? 2020", "2026-11-26T00:00:00Z", 1).is_empty(),
            "a past year never fires"
        );
        assert!(
            next("0 0 30 2 ? *", "2026-11-26T00:00:00Z", 1).is_empty(),
            "February 30th never fires"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("0 10 * * *", "expression"),
            ("0 10 * * ? * *", "expression"),
            ("60 10 * * ? *", "minutes"),
            ("0 24 * * ? *", "hours"),
            ("0 0 32 * ? *", "day-of-month"),
            ("0 0 0 * ? *", "day-of-month"),
            ("0 0 1 13 ? *", "month"),
            ("0 0 1 FOO ? *", "month"),
            ("0 0 ? * 8 *", "day-of-week"),
            ("0 0 ? * 0 *", "day-of-week"),
            ("0 0 ? * FUN *", "day-of-week"),
            ("0 0 1 * ? 1969", "year"),
            ("0 0 1 * ? 2200", "year"),
            ("0 0 * * * *", "day-of-week"),
            ("0 0 ? * ? *", "day-of-week"),
            ("0 0 1 * MON *", "day-of-week"),
            ("0 0 1#2 * ? *", "day-of-month"),
            ("0 0 ? * 2W *", "day-of-week"),
            ("0 0 ? * 2#6 *", "day-of-week"),
            ("0 0 ? * 2#0 *", "day-of-week"),
            ("0 L * * ? *", "hours"),
            ("? 0 * * ? *", "minutes"),
            ("0 0 * L ? *", "month"),
            ("0/0 * * * ? *", "minutes"),
            ("1,,2 * * * ? *", "minutes"),
            ("0 0 20-10 * ? *", "day-of-month"),
            ("0 0 1 * ? 2030-2027", "year"),
            ("0 0 32W * ? *", "day-of-month"),
        ];
        for (expr, field) in cases {
            assert_eq!(fails(expr).field, field, "{expr}: {}", fails(expr));
        }
        assert_eq!(
            fails("61 0 * * ? *").to_string(),
            "minutes: 61 is outside 0-59"
        );
    }

    #[test]
    fn schedule_expressions_and_rates() {
        let e: ScheduleExpression = "cron(0 3 * * ? *)".parse().unwrap();
        assert_eq!(
            e.upcoming(at("2026-11-26T04:00:00Z"), 1),
            vec![at("2026-11-27T03:00:00Z")]
        );
        let r: ScheduleExpression = "rate(15 minutes)".parse().unwrap();
        assert_eq!(
            r.upcoming(at("2026-11-26T04:00:00Z"), 2),
            vec![at("2026-11-26T04:15:00Z"), at("2026-11-26T04:30:00Z")]
        );
        assert!("rate(1 hour)".parse::<ScheduleExpression>().is_ok());
        assert!("rate(1 day)".parse::<ScheduleExpression>().is_ok());
        for bad in [
            "rate(1 hours)",
            "rate(5 minute)",
            "rate(0 minutes)",
            "rate(-1 days)",
            "rate(5 weeks)",
            "rate(five minutes)",
            "rate()",
            "every 5 minutes",
            "cron(0 3 * * ?)",
        ] {
            assert!(bad.parse::<ScheduleExpression>().is_err(), "{bad}");
        }
    }
}
