//! Lookback windows: `CalendarDay(n)` keeps messages until local midnight
//! (in the configured time zone) `n` days after the day they were saved;
//! `Minutes(n)` keeps them `n` minutes.
//!
//! Invariant: `window_start(now)` and `expires_at(t)` agree: a message saved
//! at `t` is inside the window at `now` exactly while `now < expires_at(t)`
//! (up to the day boundary for `CalendarDay`).

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// A lookback rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LookBack {
    CalendarDay(u32),
    Minutes(u32),
}

fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    // Where a DST change skips midnight, the day starts at the first instant
    // that exists.
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive)),
    }
}

impl LookBack {
    /// Start of the replay window at `now`.
    pub fn window_start(&self, now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match *self {
            LookBack::Minutes(n) => now - Duration::minutes(i64::from(n)),
            LookBack::CalendarDay(n) => {
                let today = now.with_timezone(&tz).date_naive();
                let first = today - Duration::days(i64::from(n.max(1)) - 1);
                local_midnight(first, tz)
            }
        }
    }

    /// When a message saved at `t` leaves the window.
    pub fn expires_at(&self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match *self {
            LookBack::Minutes(n) => t + Duration::minutes(i64::from(n)),
            LookBack::CalendarDay(n) => {
                let day = t.with_timezone(&tz).date_naive();
                local_midnight(day + Duration::days(i64::from(n.max(1))), tz)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn calendar_day_ends_at_local_midnight() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let t = at("2026-11-23T22:30:00Z"); // 23:30 in Berlin
        assert_eq!(
            LookBack::CalendarDay(1).expires_at(t, tz),
            at("2026-11-23T23:00:00Z")
        );
        assert_eq!(
            LookBack::CalendarDay(2).expires_at(t, tz),
            at("2026-11-24T23:00:00Z")
        );
        assert_eq!(
            LookBack::CalendarDay(1).window_start(t, tz),
            at("2026-11-22T23:00:00Z")
        );
        assert_eq!(
            LookBack::CalendarDay(1).window_start(t, chrono_tz::UTC),
            at("2026-11-23T00:00:00Z")
        );
    }

    #[test]
    fn minutes_are_a_sliding_window() {
        let t = at("2026-11-23T10:00:00Z");
        assert_eq!(
            LookBack::Minutes(30).expires_at(t, chrono_tz::UTC),
            at("2026-11-23T10:30:00Z")
        );
        assert_eq!(
            LookBack::Minutes(30).window_start(t, chrono_tz::UTC),
            at("2026-11-23T09:30:00Z")
        );
    }

    #[test]
    fn dst_gap_at_midnight_does_not_panic() {
        // Santiago skips 00:00 when DST starts (early September).
        let tz: Tz = "America/Santiago".parse().unwrap();
        let t = at("2026-09-06T12:00:00Z");
        let start = LookBack::CalendarDay(1).window_start(t, tz);
        assert!(start <= t);
    }
}
