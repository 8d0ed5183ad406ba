//! The schedule expression parser and cron evaluator on arbitrary text: no panic, no endless search, and
//! the fire times of an accepted expression are strictly increasing, after the start, consistent with
//! `next_after`, and the same after printing and parsing the expression again.
#![no_main]

use chrono::{DateTime, Duration, Utc};
use dualcaster::schedule::ScheduleExpression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, u32)| {
    let (text, offset) = data;
    let Ok(expr) = text.parse::<ScheduleExpression>() else {
        return;
    };
    // Any start between 2020 and about 2156.
    let start = DateTime::<Utc>::from_timestamp(1_577_836_800 + i64::from(offset), 0).unwrap();
    let times = expr.upcoming(start, 4);
    let mut previous = start;
    for t in &times {
        assert!(*t > previous, "{text:?} from {start}: {times:?}");
        previous = *t;
    }
    if let ScheduleExpression::Cron(cron) = &expr {
        for pair in times.windows(2) {
            assert_eq!(cron.next_after(pair[0]), Some(pair[1]), "{text:?}");
        }
        if let Some(first) = times.first() {
            assert_eq!(cron.next_after(*first - Duration::seconds(1)), Some(*first));
        }
        let reparsed: ScheduleExpression = cron.to_string().parse().expect("own output rejected");
        assert_eq!(reparsed.upcoming(start, 4), times, "{text:?}");
    }
});
