//! The in-memory backend: one GCRA cell (an atomic TAT) per client, shared by every worker.
//! Cells live in a moka cache bounded by entry count and expire once idle long enough to be
//! full again, when forgetting them changes nothing. Eviction is LRU, as NGINX's
//! limit_req zones do: every new client is admitted (TinyLFU, moka's default, may refuse to
//! keep a newcomer when the cache is full, and a client whose bucket is never kept would get a
//! full bucket on every request: the limit would fail open).

use super::gcra::Rate;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Nanoseconds on a monotonic clock (since the first call in this process, plus one second
/// so that a fresh TAT of 0 is always in the past).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1_000_000_000
}

/// Whom a keyed limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    Name(Box<str>),
}

/// The cells of one limit.
pub enum Store {
    /// A global limit, or one key's own: a single cell.
    Single(Arc<AtomicU64>),
    Keyed(moka::sync::Cache<Key, Arc<AtomicU64>, rustc_hash::FxBuildHasher>),
}

impl Store {
    pub fn single() -> Store {
        Store::Single(Arc::new(AtomicU64::new(0)))
    }

    pub fn keyed(rate: &Rate, max_keys: u64) -> Store {
        let idle = Duration::from_nanos(rate.idle_after()).max(Duration::from_secs(1));
        Store::Keyed(
            moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(idle)
                .build_with_hasher(rustc_hash::FxBuildHasher),
        )
    }

    /// The cell of `key` (ignored by a single-cell store), created on first use.
    pub fn cell(&self, key: Option<&Key>) -> Arc<AtomicU64> {
        match (self, key) {
            (Store::Single(c), _) => c.clone(),
            (Store::Keyed(cache), Some(k)) => match cache.get(k) {
                Some(c) => c,
                None => cache.get_with(k.clone(), || Arc::new(AtomicU64::new(0))),
            },
            // A keyed limit without a key is a bug upstream; count it in one cell.
            (Store::Keyed(cache), None) => {
                cache.get_with(Key::Name("".into()), || Arc::new(AtomicU64::new(0)))
            }
        }
    }

    /// The cell of `key` if it exists, without creating one (for a request already refused:
    /// a flood of refused requests must not churn the store).
    pub fn peek(&self, key: Option<&Key>) -> Option<Arc<AtomicU64>> {
        match (self, key) {
            (Store::Single(c), _) => Some(c.clone()),
            (Store::Keyed(cache), Some(k)) => cache.get(k),
            (Store::Keyed(_), None) => None,
        }
    }

    /// Clients currently kept (after pending evictions are applied).
    pub fn len(&self) -> u64 {
        match self {
            Store::Single(_) => 1,
            Store::Keyed(cache) => {
                cache.run_pending_tasks();
                cache.entry_count()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`acquire`] changed, so that [`refund`] can undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub before: u64,
    pub after: u64,
}

/// Admits one request against `cell` at `now`: the TAT before and after, or the current TAT
/// if refused.
pub fn acquire(cell: &AtomicU64, rate: &Rate, now: u64) -> Result<Taken, u64> {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let next = rate.acquire(current, now)?;
        match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Ok(Taken {
                    before: current,
                    after: next,
                })
            }
            Err(actual) => current = actual,
        }
    }
}

/// Gives back what [`acquire`] took, when another limit refused the same request: the cell
/// goes back to where it was if nobody moved it since, else it loses one interval (what this
/// request added, whatever came after).
pub fn refund(cell: &AtomicU64, rate: &Rate, taken: Taken) {
    if cell
        .compare_exchange(
            taken.after,
            taken.before,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t.saturating_sub(rate.interval).max(taken.before))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RateConfig;

    #[test]
    fn cells_are_shared_across_threads_and_exact() {
        let rate = Rate::new(
            RateConfig {
                rps: 1.0,
                burst: 1000,
            },
            1e9,
        );
        let store = Arc::new(Store::keyed(&rate, 100));
        let now = now_ns();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let key = Key::Ip([10, 0, 0, 1].into());
                    for _ in 0..1000 {
                        if acquire(&store.cell(Some(&key)), &rate, now).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 4000 tries at one instant against a burst of 1000: exactly 1000, however the
        // threads interleave.
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn refund_restores_the_cell() {
        let rate = Rate::new(RateConfig { rps: 1.0, burst: 2 }, 1e9);
        let cell = AtomicU64::new(0);
        let now = now_ns();
        let t1 = acquire(&cell, &rate, now).unwrap();
        let t2 = acquire(&cell, &rate, now).unwrap();
        assert!(acquire(&cell, &rate, now).is_err());
        refund(&cell, &rate, t2);
        assert_eq!(cell.load(Ordering::Relaxed), t1.after);
        assert_eq!(acquire(&cell, &rate, now), Ok(t2));
        // A later request moved the cell meanwhile: only this request's interval comes off.
        let cell = AtomicU64::new(0);
        let mine = acquire(&cell, &rate, now).unwrap();
        let theirs = acquire(&cell, &rate, now + 10).unwrap();
        refund(&cell, &rate, mine);
        assert_eq!(cell.load(Ordering::Relaxed), theirs.after - rate.interval);
    }

    #[test]
    fn a_newcomer_to_a_full_store_is_still_limited() {
        // Fill the store with clients that came often, then a new one keeps coming: its bucket
        // must be kept (and drain), not recreated full on every request.
        let rate = Rate::new(
            RateConfig {
                rps: 0.001,
                burst: 2,
            },
            1e9,
        );
        let store = Store::keyed(&rate, 100);
        let now = now_ns();
        for round in 0..5 {
            for i in 0..100u32 {
                let key = Key::Ip(IpAddr::from(i.to_be_bytes()));
                let _ = acquire(&store.cell(Some(&key)), &rate, now + round);
            }
        }
        let newcomer = Key::Ip([198, 51, 100, 1].into());
        let admitted = (0..10)
            .filter(|_| acquire(&store.cell(Some(&newcomer)), &rate, now).is_ok())
            .count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn the_store_is_bounded() {
        let rate = Rate::new(RateConfig { rps: 1.0, burst: 1 }, 1e9);
        let store = Store::keyed(&rate, 1000);
        let now = now_ns();
        for i in 0..50_000u32 {
            let _ = acquire(
                &store.cell(Some(&Key::Ip(IpAddr::from(i.to_be_bytes())))),
                &rate,
                now,
            );
        }
        assert!(store.len() <= 1000, "{} kept", store.len());
    }
}
