//! The throttle on failed authentications: a GCRA bucket per client address (keyed like
//! `per_ip`) that only failures use up. A client whose bucket is empty is refused with 429
//! before any credential it sends is looked at, so guessing API keys or admin tokens, and
//! forged tokens that each cost a signature check, are bounded per client. Kept in this
//! instance's memory whatever the rate-limit backend.

use super::gcra::Rate;
use super::memory::{self, Key, Store};
use crate::config::model::{AuthFailureLimit, RateLimitConfig};
use std::net::IpAddr;
use std::sync::Arc;

pub struct AuthFailures {
    config: AuthFailureLimit,
    rate: Rate,
    store: Arc<Store>,
}

impl AuthFailures {
    /// The throttle of `config`; `previous`'s counts carry over when its settings are the same.
    pub fn build(config: AuthFailureLimit, previous: Option<&AuthFailures>) -> AuthFailures {
        let rate = Rate::new(config.rate, 1e9);
        let store = previous
            .filter(|p| p.config == config)
            .map(|p| p.store.clone())
            .unwrap_or_else(|| Arc::new(Store::keyed(&rate, RateLimitConfig::DEFAULT_MAX_KEYS)));
        AuthFailures {
            config,
            rate,
            store,
        }
    }

    fn key(&self, ip: IpAddr) -> Key {
        Key::Ip(crate::base::net::client_key(ip, self.config.ipv6_prefix))
    }

    /// Seconds until `ip` may try again, when its failures used up the limit.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let cell = self.store.peek(Some(&self.key(ip)))?;
        let tat = cell.load(Ordering::Acquire);
        let now = memory::now_ns();
        self.rate.acquire(tat, now).err()?;
        let wait = self.rate.status(tat, now).retry_after;
        Some(wait.div_ceil(1_000_000_000).max(1))
    }

    /// Counts one failed authentication of `ip`.
    pub fn record(&self, ip: IpAddr) {
        let cell = self.store.cell(Some(&self.key(ip)));
        let _ = memory::acquire(&cell, &self.rate, memory::now_ns());
    }
}
