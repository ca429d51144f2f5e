//! Retry pacing: exponential backoff with jitter, and a budget per upstream so that retries
//! stay a bounded share of traffic (Finagle's RetryBudget): a failing upstream gets at most
//! `budget_ratio` extra requests per request, plus `min_retries_per_second`, not a storm.

use crate::config::model::RetryConfig;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// One token in milli-units, so a 20% deposit is an integer.
const TOKEN: i64 = 1000;

pub struct RetryBudget {
    /// Milli-tokens available; a retry takes [`TOKEN`].
    balance: AtomicI64,
    /// When the time-based refill last ran (ms on the gateway clock).
    refilled_at: AtomicU64,
    deposit: i64,
    per_second: i64,
    cap: i64,
}

impl RetryBudget {
    pub fn new(cfg: &RetryConfig) -> Self {
        let per_second = i64::from(cfg.min_retries_per_second) * TOKEN;
        // The balance can build up to ten seconds of the minimum rate plus a hundred retries
        // earned by traffic: enough for a burst of failures, not for a storm.
        let cap = per_second * 10 + 100 * TOKEN;
        RetryBudget {
            balance: AtomicI64::new(per_second * 10),
            refilled_at: AtomicU64::new(crate::base::clock::now_ms()),
            deposit: (cfg.budget_ratio * TOKEN as f64) as i64,
            per_second,
            cap,
        }
    }

    /// Every request earns the upstream a share of a retry.
    pub fn deposit(&self) {
        if self.deposit > 0 && self.balance.load(Ordering::Relaxed) < self.cap {
            self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget; false means the budget is spent.
    pub fn withdraw(&self, now_ms: u64) -> bool {
        let last = self.refilled_at.load(Ordering::Relaxed);
        if now_ms > last
            && self
                .refilled_at
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let add = (now_ms - last) as i64 * self.per_second / 1000;
            let _ = self
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some((b + add).min(self.cap))
                });
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= TOKEN).then_some(b - TOKEN)
            })
            .is_ok()
    }
}

/// The pause before retry number `retry` (1-based): backoff × 2^(retry-1), capped, with
/// "equal jitter" (half fixed, half random) so that clients that failed together do not
/// retry together.
pub fn backoff(cfg: &RetryConfig, retry: u32) -> Duration {
    let exp = cfg
        .backoff
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(cfg.max_backoff);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, per_second: u32) -> RetryConfig {
        RetryConfig {
            budget_ratio: ratio,
            min_retries_per_second: per_second,
            ..RetryConfig::default()
        }
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let b = RetryBudget::new(&cfg(0.2, 0));
        let now = b.refilled_at.load(Ordering::Relaxed);
        assert!(!b.withdraw(now), "no minimum and no traffic: no retries");
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw(now) {
                retries += 1;
            }
        }
        assert_eq!(retries, 200);
    }

    #[test]
    fn minimum_rate_refills_with_time_and_is_capped() {
        let b = RetryBudget::new(&cfg(0.0, 10));
        let t0 = b.refilled_at.load(Ordering::Relaxed);
        let mut n = 0;
        while b.withdraw(t0) {
            n += 1;
        }
        assert_eq!(n, 100, "ten seconds' worth to start with");
        assert!(!b.withdraw(t0 + 50));
        assert!(b.withdraw(t0 + 100), "one retry per 100 ms at 10/s");
        let mut n = 0;
        while b.withdraw(t0 + 3_600_000) {
            n += 1;
        }
        assert_eq!(n, 200, "an idle hour refills only up to the cap");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = RetryConfig {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..RetryConfig::default()
        };
        for _ in 0..100 {
            let b1 = backoff(&c, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b2 = backoff(&c, 2);
            assert!(b2 >= Duration::from_millis(100) && b2 <= Duration::from_millis(200));
            let b9 = backoff(&c, 9);
            assert!(b9 >= Duration::from_millis(150) && b9 <= Duration::from_millis(300));
        }
    }
}
