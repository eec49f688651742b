//! Lookback windows: `CalendarDay(n)` keeps messages until local midnight
//! (in the configured time zone) `n` days after the day they were saved;
//! `Minutes(n)` keeps them `n` minutes.
//!
//! Invariant: `window_start` and `expires_at` agree: a message saved at `t`
//! is inside the window at `now` exactly while `now < expires_at(t)` (for
//! `CalendarDay`, whole local days). Neither ever panics: out-of-range dates
//! saturate.

use chrono::{DateTime, Days, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// A channel's lookback rule (`LookBack` with `IsEnabled: true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LookBack {
    /// Today and the `n - 1` previous local calendar days.
    CalendarDay(u32),
    /// A sliding window of `n` minutes.
    Minutes(u32),
}

/// The first instant of `date` in `tz`. Where a DST change skips midnight,
/// the day starts at the first instant that exists.
fn local_midnight(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let naive = date.and_time(chrono::NaiveTime::MIN);
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        chrono::LocalResult::None => (1..=4)
            .find_map(|h| {
                let later = naive.checked_add_signed(Duration::minutes(30 * h))?;
                tz.from_local_datetime(&later).earliest()
            })
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive)),
    }
}

impl LookBack {
    /// Start of the replay window at `now`: `CalendarDay(n)` = local midnight
    /// (in `tz`) of today minus `n - 1` days; `Minutes(n)` = `now - n` minutes.
    pub fn window_start(&self, now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match *self {
            LookBack::Minutes(n) => now
                .checked_sub_signed(Duration::minutes(i64::from(n)))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            LookBack::CalendarDay(n) => {
                let today = now.with_timezone(&tz).date_naive();
                let back = u64::from(n.max(1) - 1);
                match today.checked_sub_days(Days::new(back)) {
                    Some(first) => local_midnight(first, tz),
                    None => DateTime::<Utc>::MIN_UTC,
                }
            }
        }
    }

    /// When a message saved at `t` expires: `CalendarDay(n)` = local midnight
    /// (in `tz`) of `t`'s day plus `n` days; `Minutes(n)` = `t + n` minutes.
    pub fn expires_at(&self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match *self {
            LookBack::Minutes(n) => t
                .checked_add_signed(Duration::minutes(i64::from(n)))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            LookBack::CalendarDay(n) => {
                let day = t.with_timezone(&tz).date_naive();
                match day.checked_add_days(Days::new(u64::from(n.max(1)))) {
                    Some(end) => local_midnight(end, tz),
                    None => DateTime::<Utc>::MAX_UTC,
                }
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

    #[test]
    fn dst_gap_start_is_the_first_instant_of_the_day() {
        let tz: Tz = "America/Santiago".parse().unwrap();
        // 2026-09-06 00:00 local does not exist; the day starts at 01:00
        // local (UTC-3), i.e. 04:00Z.
        let t = at("2026-09-06T12:00:00Z");
        assert_eq!(
            LookBack::CalendarDay(1).window_start(t, tz),
            at("2026-09-06T04:00:00Z")
        );
    }

    #[test]
    fn extremes_saturate_instead_of_panicking() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        for lb in [LookBack::CalendarDay(u32::MAX), LookBack::Minutes(u32::MAX)] {
            // (chrono itself cannot express local times beyond its range, so
            // the extremes are tried in UTC.)
            let _ = lb.window_start(DateTime::<Utc>::MIN_UTC, chrono_tz::UTC);
            let _ = lb.expires_at(DateTime::<Utc>::MAX_UTC, chrono_tz::UTC);
            assert!(lb.expires_at(at("2026-01-01T00:00:00Z"), tz) > at("2026-01-01T00:00:00Z"));
        }
    }

    #[test]
    fn window_and_expiry_agree() {
        // A message saved at t is in the window at `now` iff now < expires_at(t).
        let tz: Tz = "America/New_York".parse().unwrap();
        let base = at("2026-03-07T00:00:00Z"); // spans the March DST switch
        for lb in [
            LookBack::CalendarDay(1),
            LookBack::CalendarDay(3),
            LookBack::Minutes(90),
        ] {
            for saved_h in (0..96).step_by(5) {
                let t = base + Duration::minutes(saved_h * 60 + 17);
                for now_h in (0..120).step_by(3) {
                    let now = base + Duration::minutes(now_h * 60 + 41);
                    if now < t {
                        continue;
                    }
                    let in_window = lb.window_start(now, tz) <= t;
                    assert_eq!(
                        in_window,
                        now < lb.expires_at(t, tz),
                        "{lb:?} t={t} now={now}"
                    );
                }
            }
        }
    }
}
