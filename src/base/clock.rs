//! The gateway's clocks: a monotonic millisecond clock for state machines (breakers, health,
//! caches), wall-clock seconds and nanoseconds since the Unix epoch (metrics, spans) and the
//! RFC 3339 form of a wall-clock time (the admin API, reload records).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Milliseconds on the gateway's monotonic clock (never 0, so 0 can mean "never").
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// The gateway's monotonic clock at `t`, in milliseconds: for a caller that read the clock
/// already (each read costs about 50 instructions on the request path).
pub fn ms_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_millis() as u64 + 1
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Nanoseconds since the Unix epoch (span start and end times).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A shift of the wall clock that [`wall_ms`] reads, in milliseconds (0 unless a test set it).
static WALL_SHIFT_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Milliseconds since the Unix epoch on the calendar clock of quotas (UTC days and months):
/// the system clock, shifted by [`shift_wall_clock`].
pub fn wall_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now.saturating_add(WALL_SHIFT_MS.load(std::sync::atomic::Ordering::Relaxed))
        .max(0) as u64
}

/// Moves the calendar clock of [`wall_ms`] by `ms` (for tests of month and day rollover; the
/// gateway itself never calls it). Process-wide: a test binary that shifts it runs alone.
pub fn shift_wall_clock(ms: i64) {
    WALL_SHIFT_MS.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
}

/// A civil date (UTC): year, month 1-12, day 1-31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// The date of day `days` since 1970-01-01 (Howard Hinnant's civil_from_days).
    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date { year, month, day }
    }

    /// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    pub fn days(self) -> i64 {
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The first day of the next month.
    pub fn next_month(self) -> Date {
        match self.month {
            12 => Date {
                year: self.year + 1,
                month: 1,
                day: 1,
            },
            m => Date {
                year: self.year,
                month: m + 1,
                day: 1,
            },
        }
    }

    /// `YYYY-MM-DD`, or `None` when `s` is not a valid date in that form.
    pub fn parse(s: &str) -> Option<Date> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        if !(digits(0..4) && digits(5..7) && digits(8..10)) {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
        let d = Date {
            year: i64::from(num(0..4)?),
            month: num(5..7)?,
            day: num(8..10)?,
        };
        // Valid when it survives the round trip (no 2026-02-30).
        (d.month >= 1 && d.day >= 1 && Date::from_days(d.days()) == d).then_some(d)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A UTC timestamp as RFC 3339 with milliseconds: `2026-11-30T16:28:55.123Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let Date { year, month, day } = Date::from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_056_135_123);
        assert_eq!(super::rfc3339(t), "2026-11-30T16:28:55.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(super::rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn dates_round_trip() {
        use super::Date;
        for days in [-1000i64, 0, 11_016, 20_429, 20_454, 60_000] {
            assert_eq!(Date::from_days(days).days(), days);
        }
        let d = Date::parse("2026-12-31").unwrap();
        assert_eq!(d.next_month(), Date::parse("2027-01-01").unwrap());
        assert_eq!(d.to_string(), "2026-12-31");
        assert!(Date::parse("2026-02-30").is_none());
        assert!(Date::parse("2026-2-01").is_none());
        assert!(Date::parse("2026-13-01").is_none());
        assert!(Date::parse("2026-+1-01").is_none());
    }
}
