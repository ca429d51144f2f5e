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

/// A UTC timestamp as RFC 3339 with milliseconds: `2026-11-30T16:28:55.123Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
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
}
