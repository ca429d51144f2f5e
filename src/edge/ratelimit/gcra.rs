//! GCRA, the generic cell rate algorithm: a token bucket kept as one number, the theoretical
//! arrival time (TAT) of the next request if the client sent at exactly the sustained rate.
//! A request is admitted when, after adding one emission interval, the TAT is no further
//! ahead of now than the burst allows. There are no windows, so there is no double burst at
//! window edges; an idle bucket is simply one whose TAT lies in the past.
//!
//! Pure arithmetic over a caller-supplied clock in any unit (nanoseconds in memory,
//! microseconds in Redis' Lua script, which mirrors [`Rate::acquire`]): tests drive time by hand.

use crate::config::model::RateConfig;

/// One limit in clock units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time one request uses up: 1 / rps.
    pub interval: u64,
    /// How far ahead of now the TAT may run: burst × interval.
    pub tolerance: u64,
    pub burst: u32,
}

/// Where one limit stands after a decision, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// Requests admitted at once from a full bucket.
    pub limit: u32,
    /// Requests that would be admitted right now.
    pub remaining: u32,
    /// Until the bucket is full again (clock units).
    pub reset: u64,
    /// Until the next request would be admitted; 0 when it would be now.
    pub retry_after: u64,
}

impl Rate {
    /// `units_per_second`: 1e9 for a nanosecond clock.
    pub fn new(cfg: RateConfig, units_per_second: f64) -> Rate {
        let interval = (units_per_second / cfg.rps).round().max(1.0) as u64;
        Rate {
            interval,
            tolerance: interval.saturating_mul(u64::from(cfg.burst)),
            burst: cfg.burst,
        }
    }

    /// The decision for a request at `now` against the stored `tat`: the TAT to store when
    /// admitted, or the unchanged TAT when refused (a refused request uses up nothing).
    pub fn acquire(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval);
        if next - now <= self.tolerance {
            Ok(next)
        } else {
            Err(tat)
        }
    }

    /// The state a stored `tat` stands for at `now`.
    pub fn status(&self, tat: u64, now: u64) -> Status {
        let ahead = tat.saturating_sub(now);
        let remaining = (self.tolerance.saturating_sub(ahead) / self.interval)
            .min(u64::from(self.burst)) as u32;
        // The next request is admitted once TAT + interval - tolerance has passed.
        let retry_after = tat
            .max(now)
            .saturating_add(self.interval)
            .saturating_sub(self.tolerance)
            .saturating_sub(now);
        Status {
            limit: self.burst,
            remaining,
            reset: ahead,
            retry_after,
        }
    }

    /// How long an untouched bucket takes to be indistinguishable from a new one.
    pub fn idle_after(&self) -> u64 {
        self.tolerance.saturating_add(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn rate(rps: f64, burst: u32) -> Rate {
        Rate::new(RateConfig { rps, burst }, S as f64)
    }

    /// Sends `n` requests at `now`, returning how many were admitted.
    fn burst_at(r: &Rate, tat: &mut u64, now: u64, n: u32) -> u32 {
        let mut ok = 0;
        for _ in 0..n {
            if let Ok(t) = r.acquire(*tat, now) {
                *tat = t;
                ok += 1;
            }
        }
        ok
    }

    #[test]
    fn a_full_bucket_admits_exactly_the_burst() {
        let r = rate(10.0, 20);
        let mut tat = 0;
        assert_eq!(burst_at(&r, &mut tat, 5 * S, 100), 20);
        assert_eq!(r.status(tat, 5 * S).remaining, 0);
    }

    #[test]
    fn refill_is_one_request_per_interval() {
        let r = rate(10.0, 20);
        let mut tat = 0;
        let t0 = 100 * S;
        assert_eq!(burst_at(&r, &mut tat, t0, 20), 20);
        // 99 ms later: not yet a whole interval.
        assert_eq!(burst_at(&r, &mut tat, t0 + 99_000_000, 5), 0);
        // 100 ms: exactly one.
        assert_eq!(burst_at(&r, &mut tat, t0 + 100_000_000, 5), 1);
        // 1 s more: ten.
        assert_eq!(burst_at(&r, &mut tat, t0 + 1_100_000_000, 50), 10);
        // Idle for the whole tolerance: the full burst again, never more.
        assert_eq!(burst_at(&r, &mut tat, t0 + 60 * S, 50), 20);
    }

    #[test]
    fn steady_sending_at_the_rate_is_never_refused() {
        let r = rate(50.0, 1);
        let mut tat = 0;
        for i in 0..10_000u64 {
            assert_eq!(
                burst_at(&r, &mut tat, S + i * (S / 50), 1),
                1,
                "request {i}"
            );
        }
    }

    #[test]
    fn no_double_burst_at_any_boundary() {
        // Whatever instant the client picks, within any one second it gets at most
        // burst + rps requests: the bound a fixed window breaks (2 × limit at its edge).
        let r = rate(10.0, 10);
        let mut tat = 0;
        let mut admitted = Vec::new();
        let mut now = 0;
        while now < 5 * S {
            if let Ok(t) = r.acquire(tat, now) {
                tat = t;
                admitted.push(now);
            }
            now += S / 1000; // a request every millisecond
        }
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().take_while(|&&t| t < start + S).count();
            assert!(
                in_window <= 20,
                "{in_window} admitted in one second from {start}"
            );
        }
        // Sustained: 10 in the first instant, then 10 per second.
        assert!(
            (admitted.len() as i64 - 60).abs() <= 1,
            "{}",
            admitted.len()
        );
    }

    #[test]
    fn refused_requests_use_up_nothing() {
        let r = rate(1.0, 2);
        let mut tat = 0;
        assert_eq!(burst_at(&r, &mut tat, 10 * S, 2), 2);
        let before = tat;
        assert_eq!(burst_at(&r, &mut tat, 10 * S, 1000), 0);
        assert_eq!(tat, before);
        assert_eq!(burst_at(&r, &mut tat, 11 * S, 5), 1);
    }

    #[test]
    fn status_reports_remaining_reset_and_retry_after() {
        let r = rate(2.0, 4); // interval 0.5 s, tolerance 2 s
        let now = 50 * S;
        let fresh = r.status(0, now);
        assert_eq!(
            (fresh.limit, fresh.remaining, fresh.reset, fresh.retry_after),
            (4, 4, 0, 0)
        );
        let mut tat = 0;
        burst_at(&r, &mut tat, now, 3);
        let st = r.status(tat, now);
        assert_eq!((st.remaining, st.reset, st.retry_after), (1, 3 * S / 2, 0));
        burst_at(&r, &mut tat, now, 1);
        let st = r.status(tat, now);
        assert_eq!((st.remaining, st.reset, st.retry_after), (0, 2 * S, S / 2));
        // Half a second later one request fits again.
        let st = r.status(tat, now + S / 2);
        assert_eq!((st.remaining, st.retry_after), (1, 0));
    }

    #[test]
    fn fractional_rates_make_daily_quotas() {
        // 1000 a day, all usable at once.
        let r = rate(1000.0 / 86_400.0, 1000);
        let mut tat = 0;
        assert_eq!(burst_at(&r, &mut tat, S, 2000), 1000);
        let st = r.status(tat, S);
        assert!(st.retry_after > 86 * S && st.retry_after < 87 * S);
    }
}
