//! The throttle on failed authentications: a GCRA bucket per client address (keyed like
//! `per_ip`) that only failures use up. A client whose bucket is empty is refused with 429
//! before any credential it sends is looked at, so guessing API keys or admin tokens, and
//! forged tokens that each cost a signature check, are bounded per client. Kept in this
//! instance's memory whatever the rate-limit backend.

use super::gcra::Rate;
use super::memory::{self, Key, Store};
use crate::config::model::{AuthFailureLimit, RateLimitConfig};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct AuthFailures {
    config: AuthFailureLimit,
    rate: Rate,
    store: Arc<Store>,
    /// No bucket's state (GCRA's TAT) is past it: each failure raises it to the furthest state
    /// it could write. Once it has passed no client is refused, and [`AuthFailures::blocked`]
    /// need not look its address up (a cache lookup of about 500 instructions on every
    /// authenticated request). Shared with the store.
    horizon: Arc<AtomicU64>,
}

impl AuthFailures {
    /// The throttle of `config`; `previous`'s counts carry over when its settings are the same.
    pub fn build(config: AuthFailureLimit, previous: Option<&AuthFailures>) -> AuthFailures {
        let rate = Rate::new(config.rate, 1e9);
        let (store, horizon) = previous
            .filter(|p| p.config == config)
            .map(|p| (p.store.clone(), p.horizon.clone()))
            .unwrap_or_else(|| {
                let store = Store::keyed(&rate, RateLimitConfig::DEFAULT_MAX_KEYS);
                (Arc::new(store), Arc::new(AtomicU64::new(0)))
            });
        AuthFailures {
            config,
            rate,
            store,
            horizon,
        }
    }

    fn key(&self, ip: IpAddr) -> Key {
        Key::Ip(crate::base::net::client_key(ip, self.config.ipv6_prefix))
    }

    /// Seconds until `ip` may try again, when its failures used up the limit.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let now = memory::now_ns();
        // A bucket refuses only while its TAT is ahead of now (GCRA: the tolerance is at
        // least one interval), and no bucket is ahead of the horizon.
        if now >= self.horizon.load(Ordering::Acquire) {
            return None;
        }
        let cell = self.store.peek(Some(&self.key(ip)))?;
        let tat = cell.load(Ordering::Acquire);
        self.rate.acquire(tat, now).err()?;
        let wait = self.rate.status(tat, now).retry_after;
        Some(wait.div_ceil(1_000_000_000).max(1))
    }

    /// Counts one failed authentication of `ip`.
    pub fn record(&self, ip: IpAddr) {
        let now = memory::now_ns();
        // Raised before the bucket is, to the furthest TAT admitting a failure can write
        // (now + the tolerance): a `blocked` between the two never misses this bucket.
        self.horizon
            .fetch_max(now.saturating_add(self.rate.tolerance), Ordering::AcqRel);
        let cell = self.store.cell(Some(&self.key(ip)));
        let _ = memory::acquire(&cell, &self.rate, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RateConfig;

    fn limit(burst: u32) -> AuthFailureLimit {
        AuthFailureLimit {
            rate: RateConfig { rps: 0.001, burst },
            ..AuthFailureLimit::default()
        }
    }

    #[test]
    fn a_client_is_refused_once_its_failures_use_up_the_burst_and_others_are_not() {
        let f = AuthFailures::build(limit(3), None);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(f.blocked(a), None, "no failure yet");
        for _ in 0..3 {
            assert_eq!(f.blocked(a), None);
            f.record(a);
        }
        // Refilled at 0.001/s: one more try in 1,000 s.
        let wait = f.blocked(a).expect("refused after 3 failures");
        assert!((990..=1000).contains(&wait), "{wait}");
        assert_eq!(f.blocked(b), None, "another client");
        f.record(b);
        assert_eq!(f.blocked(b), None, "one failure of 3");
    }

    #[test]
    fn a_reload_with_the_same_limit_keeps_who_is_refused() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let old = AuthFailures::build(limit(1), None);
        old.record(ip);
        assert!(old.blocked(ip).is_some());
        let same = AuthFailures::build(limit(1), Some(&old));
        assert!(same.blocked(ip).is_some(), "carried over");
        let changed = AuthFailures::build(limit(2), Some(&old));
        assert_eq!(changed.blocked(ip), None, "a new limit starts afresh");
    }
}
