//! Quotas per calendar month and day (UTC): admitted requests counted against a tenant's
//! `monthly_requests` and `daily_requests`, the 429 `quota_exceeded` once one is used up, and
//! the `X-Quota-*` headers of every response of a tenant with quotas.
//!
//! With the `file` and `memory` backends the counts live in memory (a few atomics per
//! tenant: one add per request, no lock) and [`super::store`] writes them once a second. With the
//! `redis` backend every decision is one atomic Lua script (INCR with expiry), so every
//! instance sharing that Redis enforces the same quota exactly.
//!
//! The calendar clock is [`crate::base::clock::wall_ms`]; days and months are UTC.

use super::redis::QuotaRedis;
use super::store::{DayCounts, Flushable, Store, StoreError};
use crate::base::clock::{wall_ms, Date};
use crate::config::model::{QuotaConfig, QuotaStoreConfig, TenancyConfig};
use crate::observability::metrics::Metrics;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const DAY_MS: u64 = 86_400_000;

/// Why the quota store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum QuotaBuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    RedisUrl(#[from] crate::base::redis::InvalidRedisUrl),
}

/// One day's counts of one tenant in this instance.
struct Period {
    /// Days since the epoch (UTC).
    day: i64,
    /// Admitted requests in this month before `day`.
    month_base: u64,
    requests: AtomicU64,
    refused: AtomicU64,
    /// What the store last got.
    written: Mutex<DayCounts>,
}

impl Period {
    fn new(day: i64, month_base: u64, today: DayCounts) -> Period {
        Period {
            day,
            month_base,
            requests: AtomicU64::new(today.requests),
            refused: AtomicU64::new(today.refused),
            written: Mutex::new(today),
        }
    }

    fn counts(&self) -> DayCounts {
        DayCounts {
            requests: self.requests.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// One tenant's counts; kept across reloads (by tenant id) while the store is the same.
pub struct Counters {
    tenant: String,
    current: ArcSwap<Period>,
    /// Days that ended and may hold counts not yet written.
    retired: Mutex<Vec<Arc<Period>>>,
    rolling: Mutex<()>,
}

impl Flushable for Counters {
    fn changed(&self) -> Vec<(String, i64, DayCounts)> {
        let mut periods: Vec<Arc<Period>> = lock(&self.retired).clone();
        periods.push(self.current.load_full());
        periods
            .iter()
            .filter_map(|p| {
                let now = p.counts();
                (*lock(&p.written) != now).then(|| (self.tenant.clone(), p.day, now))
            })
            .collect()
    }

    fn written(&self, written: &[(String, i64, DayCounts)]) {
        let mark = |p: &Period| {
            if let Some((_, _, c)) = written.iter().find(|(_, d, _)| *d == p.day) {
                *lock(&p.written) = *c;
            }
        };
        mark(&self.current.load());
        // A day that ended is dropped once the store has all of it (nothing counts there
        // any more, but a request that read the period before the rollover may still add).
        lock(&self.retired).retain(|p| {
            mark(p);
            *lock(&p.written) != p.counts()
        });
    }
}

impl Counters {
    fn load(tenant: &str, store: &Store, day: i64) -> Result<Counters, StoreError> {
        let p = period_from_store(tenant, store, day)?;
        Ok(Counters {
            tenant: tenant.to_string(),
            current: ArcSwap::from_pointee(p),
            retired: Mutex::new(Vec::new()),
            rolling: Mutex::new(()),
        })
    }

    /// The period of `day`, rolling over (once, under a lock) when the day changed.
    fn period(&self, day: i64, store: &Store) -> Arc<Period> {
        let p = self.current.load_full();
        if p.day == day {
            return p;
        }
        let _one = lock(&self.rolling);
        let p = self.current.load_full();
        if p.day == day {
            return p;
        }
        let same_month = {
            let (a, b) = (Date::from_days(p.day), Date::from_days(day));
            (a.year, a.month) == (b.year, b.month) && day == p.day + 1
        };
        let next = match same_month {
            // The usual case: the next day of the same month.
            true => Period::new(
                day,
                p.month_base + p.requests.load(Ordering::Relaxed),
                DayCounts::default(),
            ),
            // A day skipped, a new month, or a clock set back: what the store has, with what
            // this instance counted written first.
            false => store.flush().and_then(|()| period_from_store(&self.tenant, store, day)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, tenant = %self.tenant, "quota counts of the new period not read; counting from 0");
                Period::new(day, 0, DayCounts::default())
            }),
        };
        lock(&self.retired).push(p);
        let next = Arc::new(next);
        self.current.store(next.clone());
        next
    }
}

/// A period as the store has it: today's counts and the month's before today.
fn period_from_store(tenant: &str, store: &Store, day: i64) -> Result<Period, StoreError> {
    let d = Date::from_days(day);
    let first = Date { day: 1, ..d }.days();
    let before: u64 = match day > first {
        true => store
            .days(tenant, first, day - 1)?
            .iter()
            .map(|(_, c)| c.requests)
            .sum(),
        false => 0,
    };
    Ok(Period::new(day, before, store.day(tenant, day)?))
}

/// Where a quota stands after a decision: the tightest of the tenant's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReport {
    pub limit: u64,
    /// After this request.
    pub remaining: u64,
    /// Seconds until that quota's period resets.
    pub reset_s: u64,
    /// Past the soft limit (`warn_at`) of a quota.
    pub warn: bool,
}

/// A quota decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    /// The tenant has no quota.
    Unlimited,
    Admitted(QuotaReport),
    /// Refused; Retry-After is the report's `reset_s`.
    Refused(QuotaReport),
    /// The store could not decide (Redis unreachable): admitted, not counted.
    Unavailable,
}

enum Backend {
    /// Counting in memory, written to the store (a file, or memory).
    Local(Arc<Store>),
    Redis(QuotaRedis),
}

/// A tenant's quota state at run time.
struct TenantQuota {
    config: QuotaConfig,
    counters: Option<Arc<Counters>>,
    used_month: prometheus::Gauge,
    used_day: prometheus::Gauge,
    warnings: prometheus::IntCounter,
}

/// The quotas of one runtime.
pub struct Quotas {
    backend: Backend,
    /// Store settings, for handing the store over on reload.
    store_config: QuotaStoreConfig,
    /// Whether `backend` is the configured store (a config without quotas opens none: it
    /// gets a store in memory that nothing counts in).
    opened: bool,
    tenants: Vec<Option<TenantQuota>>,
    /// Counters of every tenant with quotas, by id (handed over on reload).
    by_id: Vec<(String, Arc<Counters>)>,
    store_errors: prometheus::IntCounter,
}

impl Quotas {
    /// The Redis client of the quota store, when it is Redis (for the readiness answer).
    pub fn redis_client(&self) -> Option<&Arc<crate::base::redis::RedisClient>> {
        match &self.backend {
            Backend::Redis(r) => Some(r.client()),
            Backend::Local(_) => None,
        }
    }

    /// The quotas of `t`; the previous runtime's store and counters carry over when the store
    /// settings are the same.
    pub fn build(
        t: &TenancyConfig,
        metrics: &Metrics,
        previous: Option<&Quotas>,
    ) -> Result<Quotas, QuotaBuildError> {
        let any = t.tenants.iter().any(|x| x.quotas.is_some());
        // The previous store carries over when it is the configured one (not the stand-in a
        // config without quotas got), or when nothing needs a store now.
        let kept = previous.filter(|p| p.store_config == t.quota_store && (p.opened || !any));
        let backend = match (&t.quota_store, kept) {
            (_, Some(p)) => match &p.backend {
                Backend::Local(s) => Backend::Local(s.clone()),
                Backend::Redis(r) => Backend::Redis(r.clone()),
            },
            // No tenant has quotas: nothing is opened (no file is created).
            (_, None) if !any => Backend::Local(Store::in_memory()?),
            (QuotaStoreConfig::Memory, None) => Backend::Local(Store::in_memory()?),
            (QuotaStoreConfig::File { path }, None) => Backend::Local(Store::open_file(path)?),
            (
                QuotaStoreConfig::Redis {
                    url,
                    tls,
                    key_prefix,
                },
                None,
            ) => {
                let url = std::str::from_utf8(&url.0).map_err(|_| {
                    crate::base::redis::InvalidRedisUrl("redis_url is not UTF-8".into())
                })?;
                Backend::Redis(QuotaRedis::new(
                    url,
                    tls.as_ref(),
                    key_prefix,
                    metrics.redis_up.with_label_values(&["quota"]),
                )?)
            }
        };
        let label = match &backend {
            Backend::Local(s) => s.label,
            Backend::Redis(_) => "redis",
        };
        let today = (wall_ms() / DAY_MS) as i64;
        let mut tenants = Vec::with_capacity(t.tenants.len());
        let mut by_id = Vec::new();
        for tenant in &t.tenants {
            let Some(config) = tenant.quotas else {
                tenants.push(None);
                continue;
            };
            let counters = match &backend {
                Backend::Redis(_) => None,
                Backend::Local(store) => {
                    let reused = kept
                        .and_then(|p| p.by_id.iter().find(|(id, _)| *id == tenant.id))
                        .map(|(_, c)| c.clone());
                    let c = match reused {
                        Some(c) => c,
                        None => {
                            let c = Arc::new(Counters::load(&tenant.id, store, today)?);
                            let weak: std::sync::Weak<dyn Flushable> =
                                Arc::downgrade(&c) as std::sync::Weak<dyn Flushable>;
                            store.register(weak);
                            c
                        }
                    };
                    by_id.push((tenant.id.clone(), c.clone()));
                    Some(c)
                }
            };
            let gauge = |period: &str| {
                metrics
                    .tenant_quota_used
                    .with_label_values(&[tenant.id.as_str(), period])
            };
            tenants.push(Some(TenantQuota {
                config,
                counters,
                used_month: gauge("month"),
                used_day: gauge("day"),
                warnings: metrics
                    .tenant_quota_warnings
                    .with_label_values(&[tenant.id.as_str()]),
            }));
        }
        let opened = kept.map_or(any, |p| p.opened);
        Ok(Quotas {
            backend,
            opened,
            store_config: t.quota_store.clone(),
            tenants,
            by_id,
            store_errors: metrics
                .tenant_quota_store_errors
                .with_label_values(&[label]),
        })
    }

    /// Whether tenant `t` has a quota.
    pub fn limits(&self, t: usize) -> bool {
        matches!(self.tenants.get(t), Some(Some(_)))
    }

    /// Decides one request of tenant `t` (counted when admitted) at `now_ms` on the calendar
    /// clock, at once when the counts are in memory; `None` when the store must be asked
    /// ([`Quotas::decide_remote`]).
    #[inline]
    pub fn decide_now(&self, t: usize, now_ms: u64) -> Option<QuotaDecision> {
        let Some(Some(q)) = self.tenants.get(t) else {
            return Some(QuotaDecision::Unlimited);
        };
        let (Backend::Local(store), Some(c)) = (&self.backend, &q.counters) else {
            return match self.backend {
                Backend::Redis(_) => None,
                Backend::Local(_) => Some(QuotaDecision::Unlimited),
            };
        };
        let p = c.period((now_ms / DAY_MS) as i64, store);
        let today = p.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let month = p.month_base + today;
        let over = q.config.daily.is_some_and(|l| today > l)
            || q.config.monthly.is_some_and(|l| month > l);
        Some(match over {
            false => finish(q, now_ms, month, today, true),
            true => {
                p.requests.fetch_sub(1, Ordering::Relaxed);
                p.refused.fetch_add(1, Ordering::Relaxed);
                finish(q, now_ms, month - 1, today - 1, false)
            }
        })
    }

    /// Decides one request of tenant `t` through the Redis store.
    pub async fn decide_remote(&self, t: usize, tenant_id: &str, now_ms: u64) -> QuotaDecision {
        let (Some(Some(q)), Backend::Redis(r)) = (self.tenants.get(t), &self.backend) else {
            return self
                .decide_now(t, now_ms)
                .unwrap_or(QuotaDecision::Unlimited);
        };
        let date = Date::from_days((now_ms / DAY_MS) as i64);
        match r.decide(tenant_id, date, &q.config).await {
            Ok((month, today, admitted)) => finish(q, now_ms, month, today, admitted),
            Err(e) => {
                self.store_errors.inc();
                tracing::debug!(error = %e, "quota store unreachable; request admitted uncounted");
                QuotaDecision::Unavailable
            }
        }
    }

    /// Where tenant `t`'s quota stands at `now_ms`, without counting anything: for the
    /// headers of a response refused before the quota step. `None` without a quota, and with
    /// the Redis store (that would cost a round trip).
    pub fn peek(&self, t: usize, now_ms: u64) -> Option<QuotaReport> {
        let q = self.tenants.get(t)?.as_ref()?;
        let c = q.counters.as_ref()?;
        let p = c.current.load();
        let day = (now_ms / DAY_MS) as i64;
        let today = p.requests.load(Ordering::Relaxed);
        let (month, today) = match p.day == day {
            true => (p.month_base + today, today),
            false => {
                let (a, b) = (Date::from_days(p.day), Date::from_days(day));
                match (a.year, a.month) == (b.year, b.month) && day > p.day {
                    true => (p.month_base + today, 0),
                    false => (0, 0),
                }
            }
        };
        Some(report(&q.config, now_ms, month, today, true))
    }

    /// Writes counts not yet in the store (before a usage read; at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local(s) => s.flush(),
            Backend::Redis(_) => Ok(()),
        }
    }

    /// Daily counts of tenant `id` from `from` to `to` (inclusive), every day listed.
    pub async fn usage(
        &self,
        id: &str,
        from: Date,
        to: Date,
    ) -> Result<Vec<(Date, DayCounts)>, StoreError> {
        let (a, b) = (from.days(), to.days());
        let found: Vec<(i64, DayCounts)> = match &self.backend {
            Backend::Local(s) => {
                s.flush()?;
                s.days(id, a, b)?
            }
            Backend::Redis(r) => r.days(id, a, b).await?,
        };
        Ok((a..=b)
            .map(|d| {
                let c = found
                    .iter()
                    .find(|(x, _)| *x == d)
                    .map_or(DayCounts::default(), |(_, c)| *c);
                (Date::from_days(d), c)
            })
            .collect())
    }
}

/// A decision at these counts: its report, the gauges and the soft-limit counter.
fn finish(q: &TenantQuota, now_ms: u64, month: u64, today: u64, admitted: bool) -> QuotaDecision {
    let report = report(&q.config, now_ms, month, today, admitted);
    if let Some(l) = q.config.monthly {
        q.used_month.set(month as f64 / l as f64);
    }
    if let Some(l) = q.config.daily {
        q.used_day.set(today as f64 / l as f64);
    }
    if report.warn {
        q.warnings.inc();
    }
    match admitted {
        true => QuotaDecision::Admitted(report),
        false => QuotaDecision::Refused(report),
    }
}

/// The report of the tightest quota after a decision (`admitted` or not) with the month and
/// day at these counts.
fn report(
    q: &QuotaConfig,
    now_ms: u64,
    month_used: u64,
    day_used: u64,
    admitted: bool,
) -> QuotaReport {
    let now_s = now_ms / 1000;
    let day = (now_ms / DAY_MS) as i64;
    let day_reset = (day as u64 + 1) * 86_400 - now_s;
    let month_reset = (Date::from_days(day).next_month().days() as u64) * 86_400 - now_s;
    let candidates = [
        q.monthly.map(|l| (l, month_used, month_reset)),
        q.daily.map(|l| (l, day_used, day_reset)),
    ];
    let mut best: Option<QuotaReport> = None;
    let mut warn = false;
    let mut refused_reset = 0;
    for (limit, used, reset) in candidates.into_iter().flatten() {
        let remaining = limit.saturating_sub(used);
        if let Some(w) = q.warn_at {
            warn |= used as f64 >= w * limit as f64;
        }
        if !admitted && remaining == 0 {
            refused_reset = refused_reset.max(reset);
        }
        let r = QuotaReport {
            limit,
            remaining,
            reset_s: reset,
            warn: false,
        };
        best = match best {
            Some(b) if b.remaining <= r.remaining => Some(b),
            _ => Some(r),
        };
    }
    let mut r = best.unwrap_or(QuotaReport {
        limit: 0,
        remaining: 0,
        reset_s: 0,
        warn: false,
    });
    r.warn = warn;
    if !admitted {
        r.remaining = 0;
        r.reset_s = refused_reset.max(1);
    }
    r
}

/// The `X-Quota-*` headers of a tenant response (and `X-Quota-Warning` past the soft limit).
pub fn apply_headers(r: &QuotaReport, headers: &mut actix_web::http::header::HeaderMap) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    // Made at compile time: `from_static` at run time validates a name on every call.
    const LIMIT: HeaderName = HeaderName::from_static("x-quota-limit");
    const REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");
    const RESET: HeaderName = HeaderName::from_static("x-quota-reset");
    const WARNING: HeaderName = HeaderName::from_static("x-quota-warning");
    headers.insert(LIMIT, HeaderValue::from(r.limit));
    headers.insert(REMAINING, HeaderValue::from(r.remaining));
    headers.insert(RESET, HeaderValue::from(r.reset_s));
    if r.warn {
        headers.insert(WARNING, HeaderValue::from_static("soft limit reached"));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(monthly: Option<u64>, daily: Option<u64>) -> QuotaConfig {
        QuotaConfig {
            monthly,
            daily,
            warn_at: Some(0.8),
        }
    }

    #[test]
    fn report_picks_the_tightest_quota_and_resets() {
        // 2026-12-31T23:59:00Z
        let now = Date::parse("2026-12-31").unwrap().days() as u64 * DAY_MS + 86_340_000;
        let r = report(&cfg(Some(100), Some(10)), now, 50, 9, true);
        assert_eq!((r.limit, r.remaining, r.reset_s, r.warn), (10, 1, 60, true));
        let r = report(&cfg(Some(100), None), now, 50, 9, true);
        assert_eq!(
            (r.limit, r.remaining, r.reset_s, r.warn),
            (100, 50, 60, false)
        );
        let r = report(&cfg(Some(100), Some(1000)), now, 100, 100, false);
        assert_eq!((r.remaining, r.reset_s), (0, 60));
    }

    #[test]
    fn counts_roll_over_at_midnight_and_month_end() {
        let store = Store::in_memory().unwrap();
        let d = Date::parse("2026-11-29").unwrap().days();
        let c = Counters::load("t", &store, d).unwrap();
        for _ in 0..3 {
            c.period(d, &store).requests.fetch_add(1, Ordering::Relaxed);
        }
        let next = c.period(d + 1, &store);
        assert_eq!((next.month_base, next.counts().requests), (3, 0));
        next.requests.fetch_add(2, Ordering::Relaxed);
        // 2026-12-01: a new month starts from the store (nothing in December yet).
        let dec = c.period(d + 2, &store);
        assert_eq!((dec.month_base, dec.counts().requests), (0, 0));
        // Everything counted is there to be written; once written, nothing is left.
        let changed = c.changed();
        assert!(changed
            .iter()
            .any(|(_, day, n)| *day == d && n.requests == 3));
        assert!(changed
            .iter()
            .any(|(_, day, n)| *day == d + 1 && n.requests == 2));
        c.written(&changed);
        assert!(c.changed().is_empty());
        assert!(lock(&c.retired).is_empty());
    }

    #[test]
    fn the_store_gets_every_day_and_a_restart_reads_the_month_back() {
        let store = Store::in_memory().unwrap();
        let d = Date::parse("2026-11-29").unwrap().days();
        let c = Arc::new(Counters::load("t", &store, d).unwrap());
        let weak: std::sync::Weak<dyn Flushable> = Arc::downgrade(&c) as _;
        store.register(weak);
        c.period(d, &store).requests.fetch_add(3, Ordering::Relaxed);
        c.period(d + 1, &store)
            .requests
            .fetch_add(2, Ordering::Relaxed);
        c.period(d + 1, &store)
            .refused
            .fetch_add(1, Ordering::Relaxed);
        store.flush().unwrap();
        let days = store.days("t", d - 5, d + 5).unwrap();
        assert_eq!(days.len(), 2);
        assert_eq!(
            days[1].1,
            DayCounts {
                requests: 2,
                refused: 1
            }
        );
        // As a restart on 2026-11-30 sees it: 3 earlier this month, 2 today.
        let again = Counters::load("t", &store, d + 1).unwrap();
        let p = again.current.load();
        assert_eq!((p.month_base, p.counts().requests), (3, 2));
    }
}
