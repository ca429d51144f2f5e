//! The live state of one upstream server, shared by every worker: in-flight count, latency
//! and success averages, active health, outlier ejection and the circuit breaker. Everything
//! the balancer reads is an atomic; only the breaker takes a short lock, to record an outcome.

use super::balancer::ServerLoad;
use super::breaker::{Admission, BreakerConfig, CircuitBreaker, CircuitState};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Health as the active checker last decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check configured, or none finished yet: traffic is allowed.
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }
}

/// How one attempt on a server ended, as the resilience machinery judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// A response head that is not a 5xx.
    Success,
    /// A 5xx response head.
    Status5xx,
    /// No response: connect error, timeout, reset or protocol error.
    GatewayFailure,
}

/// The last active health check of a server, for the admin API.
#[derive(Debug, Clone, Copy)]
pub struct CheckRecord {
    pub at: SystemTime,
    pub latency_ms: f64,
    pub ok: bool,
}

/// EWMA time constant for latency: samples older than about this weigh little.
const EWMA_TAU_MS: u64 = 10_000;
/// Weight of one sample in the success-ratio average (1/32).
const SUCCESS_ALPHA_SHIFT: u32 = 5;

pub struct ServerState {
    inflight: AtomicU32,
    health: AtomicU8,
    /// Outlier ejection: no traffic before this time (ms on the gateway clock); 0 = never.
    ejected_until: AtomicU64,
    /// Times ejected; the next ejection lasts base × (ejections + 1), up to the maximum.
    ejections: AtomicU32,
    consecutive_gateway_failures: AtomicU32,
    consecutive_5xx: AtomicU32,
    /// Peak-EWMA latency in ns, and when it was last updated (ms).
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    /// EWMA of the success ratio, in millionths.
    success_ppm: AtomicU32,
    pub breaker: Option<CircuitBreaker>,
    last_check: Mutex<Option<CheckRecord>>,
}

impl ServerState {
    pub fn new(breaker: Option<BreakerConfig>) -> Self {
        ServerState {
            inflight: AtomicU32::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_gateway_failures: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
            success_ppm: AtomicU32::new(1_000_000),
            breaker: breaker.map(CircuitBreaker::new),
            last_check: Mutex::new(None),
        }
    }

    /// Names the server for the events its breaker reports.
    pub fn named(mut self, upstream: &str, server: &str) -> Self {
        self.breaker = self.breaker.map(|b| b.named(upstream, server));
        self
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Sets the health the checker decided; returns the previous one.
    pub fn set_health(&self, h: Health) -> Health {
        Health::from_u8(self.health.swap(h as u8, Ordering::Relaxed))
    }

    pub fn circuit(&self) -> CircuitState {
        self.breaker
            .as_ref()
            .map_or(CircuitState::Closed, |b| b.state())
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn last_check(&self) -> Option<CheckRecord> {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_last_check(&self, rec: CheckRecord) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(rec);
    }

    /// Asks to send one attempt: the breaker's admission (fail fast when open), and an
    /// in-flight count held until the guard drops.
    pub fn admit(self: &Arc<Self>, now_ms: u64) -> Option<AttemptGuard> {
        let admission = match &self.breaker {
            None => Admission::Normal,
            Some(b) => b.admit(now_ms)?,
        };
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Some(AttemptGuard {
            server: self.clone(),
            admission,
        })
    }

    /// Feeds the averages and the breaker with one attempt's result; returns whether the
    /// outlier detector should consider ejecting the server (a failure streak reached
    /// `limits`: consecutive gateway failures, consecutive 5xx; 0 = off).
    pub fn record(
        &self,
        now_ms: u64,
        admission: Admission,
        result: AttemptResult,
        latency_ns: u64,
        limits: (u32, u32),
    ) -> bool {
        let ok = result == AttemptResult::Success;
        if let Some(b) = &self.breaker {
            b.record(now_ms, admission, ok);
        }
        self.observe_latency(now_ms, latency_ns);
        let ppm = self.success_ppm.load(Ordering::Relaxed);
        let sample = if ok { 1_000_000 } else { 0 };
        let next = ppm - (ppm >> SUCCESS_ALPHA_SHIFT) + (sample >> SUCCESS_ALPHA_SHIFT);
        if next != ppm {
            self.success_ppm.store(next, Ordering::Relaxed);
        }
        let streak = |c: &AtomicU32, hit: bool, limit: u32| -> bool {
            if hit {
                let n = c.fetch_add(1, Ordering::Relaxed) + 1;
                limit > 0 && n >= limit
            } else {
                if c.load(Ordering::Relaxed) != 0 {
                    c.store(0, Ordering::Relaxed);
                }
                false
            }
        };
        let gw = streak(
            &self.consecutive_gateway_failures,
            result == AttemptResult::GatewayFailure,
            limits.0,
        );
        // Envoy counts gateway failures as 5xx too: a dead server is also "returning errors".
        let s5 = streak(&self.consecutive_5xx, !ok, limits.1);
        gw || s5
    }

    /// Peak EWMA (Finagle): a slower sample takes over at once, faster ones decay in.
    fn observe_latency(&self, now_ms: u64, ns: u64) {
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let at = self.ewma_at.swap(now_ms, Ordering::Relaxed);
        let next = if prev == 0 || ns >= prev {
            ns
        } else {
            // w = tau / (tau + dt): 1 for back-to-back samples, 0.5 after tau.
            let dt = now_ms.saturating_sub(at);
            let w = EWMA_TAU_MS as f64 / (EWMA_TAU_MS + dt) as f64;
            (prev as f64 * w + ns as f64 * (1.0 - w)) as u64
        };
        self.ewma_ns.store(next.max(1), Ordering::Relaxed);
    }

    /// Ejects the server until `until`, clearing its failure streaks.
    pub fn eject(&self, until: u64) {
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.consecutive_gateway_failures
            .store(0, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
    }

    /// Ends an ejection early (a health check passed), keeping the ejection count.
    pub fn uneject(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
    }

    /// Forgets past ejections (the next one starts at the base time again).
    pub fn reset_ejections(&self) {
        self.ejections.store(0, Ordering::Relaxed);
    }
}

impl ServerLoad for ServerState {
    fn available(&self, now_ms: u64) -> bool {
        self.health() != Health::Unhealthy
            && !self.ejected(now_ms)
            && self.breaker.as_ref().is_none_or(|b| b.may_admit(now_ms))
    }
    fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }
    fn latency_ewma_ns(&self) -> u64 {
        self.ewma_ns.load(Ordering::Relaxed)
    }
    fn success_ratio(&self) -> f64 {
        f64::from(self.success_ppm.load(Ordering::Relaxed)) / 1e6
    }
}

/// One admitted attempt: counts as in flight until dropped. Dropped with its connection
/// lease, so a response body still streaming is still in flight (least_connections).
pub struct AttemptGuard {
    pub server: Arc<ServerState>,
    pub admission: Admission,
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.server.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl crate::observability::metrics::ServerProbe for ServerState {
    fn healthy(&self) -> bool {
        self.health() != Health::Unhealthy
    }

    fn circuit_code(&self) -> i64 {
        self.circuit() as i64
    }

    fn ejected_at(&self, now_ms: u64) -> bool {
        self.ejected(now_ms)
    }

    fn requests_in_flight(&self) -> u32 {
        ServerLoad::inflight(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_streaks_and_reset() {
        let s = ServerState::new(None);
        for _ in 0..2 {
            assert!(!s.record(
                0,
                Admission::Normal,
                AttemptResult::GatewayFailure,
                1,
                (3, 0)
            ));
        }
        assert!(!s.record(0, Admission::Normal, AttemptResult::Success, 1, (3, 0)));
        for _ in 0..2 {
            assert!(!s.record(
                0,
                Admission::Normal,
                AttemptResult::GatewayFailure,
                1,
                (3, 0)
            ));
        }
        assert!(s.record(
            0,
            Admission::Normal,
            AttemptResult::GatewayFailure,
            1,
            (3, 0)
        ));
        // 5xx streaks only count when configured.
        let s = ServerState::new(None);
        for _ in 0..10 {
            assert!(!s.record(0, Admission::Normal, AttemptResult::Status5xx, 1, (3, 0)));
        }
        assert!(!s.record(0, Admission::Normal, AttemptResult::Status5xx, 1, (3, 12)));
        assert!(s.record(0, Admission::Normal, AttemptResult::Status5xx, 1, (3, 12)));
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays() {
        let s = ServerState::new(None);
        s.record(0, Admission::Normal, AttemptResult::Success, 1_000, (0, 0));
        assert_eq!(s.latency_ewma_ns(), 1_000);
        s.record(1, Admission::Normal, AttemptResult::Success, 9_000, (0, 0));
        assert_eq!(s.latency_ewma_ns(), 9_000);
        s.record(
            10_001,
            Admission::Normal,
            AttemptResult::Success,
            1_000,
            (0, 0),
        );
        assert_eq!(s.latency_ewma_ns(), 5_000, "half weight after tau");
    }

    #[test]
    fn success_ratio_moves_with_failures() {
        let s = ServerState::new(None);
        assert_eq!(s.success_ratio(), 1.0);
        for _ in 0..64 {
            s.record(0, Admission::Normal, AttemptResult::Status5xx, 1, (0, 0));
        }
        assert!(s.success_ratio() < 0.2, "{}", s.success_ratio());
    }

    #[test]
    fn guards_count_inflight_and_breaker_gates_admission() {
        let s = Arc::new(ServerState::new(Some(BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        })));
        let g = s.admit(0).expect("closed");
        assert_eq!(s.inflight(), 1);
        s.record(0, g.admission, AttemptResult::GatewayFailure, 1, (0, 0));
        drop(g);
        assert_eq!(s.inflight(), 0);
        assert!(!s.available(1));
        assert!(s.admit(1).is_none());
    }
}
