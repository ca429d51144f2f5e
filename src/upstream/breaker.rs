//! The circuit breaker of one upstream server.
//!
//! [`Machine`] is the pure state machine: it is fed outcomes and asked for admission, with the
//! time passed in, so tests drive it on a synthetic clock. [`CircuitBreaker`] wraps it for
//! the request path: the common case (closed) is one atomic load; outcomes take a short,
//! uncontended lock.
//!
//! closed --(failure_threshold consecutive failures, or error_percentage_threshold over the
//! rolling window with at least minimum_throughput requests)--> open
//! open --(recovery_timeout elapsed, or an active health check succeeded)--> half-open
//! half-open --(half_open_requests probes succeeded)--> closed
//! half-open --(any failure)--> open

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::config::model::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
    fn from_u8(v: u8) -> CircuitState {
        match v {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

/// How a request was let through; hand it back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (ms / bucket length) these counts belong to.
    epoch: u64,
    total: u32,
    failures: u32,
}

/// The pure state machine. Times are milliseconds on any monotonic clock.
#[derive(Debug)]
pub struct Machine {
    cfg: BreakerConfig,
    state: CircuitState,
    consecutive_failures: u32,
    buckets: [Bucket; BUCKETS],
    /// While open: when probes may start. While half-open: when it became half-open.
    since: u64,
    open_until: u64,
    probes_inflight: u32,
    probe_successes: u32,
}

impl Machine {
    pub fn new(cfg: BreakerConfig) -> Self {
        Machine {
            cfg,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            buckets: [Bucket::default(); BUCKETS],
            since: 0,
            open_until: 0,
            probes_inflight: 0,
            probe_successes: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn open_until(&self) -> u64 {
        self.open_until
    }

    fn recovery_ms(&self) -> u64 {
        self.cfg.recovery_timeout.as_millis() as u64
    }

    fn bucket_ms(&self) -> u64 {
        (self.cfg.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }

    /// Whether a request may go to the server now. Open turns half-open once the recovery
    /// timeout has passed; half-open admits a bounded number of probes.
    pub fn admit(&mut self, now: u64) -> Option<Admission> {
        match self.state {
            CircuitState::Closed => Some(Admission::Normal),
            CircuitState::Open if now >= self.open_until => {
                self.half_open(now);
                self.admit(now)
            }
            CircuitState::Open => None,
            CircuitState::HalfOpen => {
                // A probe whose outcome never came back (its client went away) must not hold
                // the circuit half-open for ever.
                if now.saturating_sub(self.since) >= self.recovery_ms() {
                    self.probes_inflight = 0;
                    self.since = now;
                }
                if self.probes_inflight + self.probe_successes < self.cfg.half_open_requests {
                    self.probes_inflight += 1;
                    Some(Admission::Probe)
                } else {
                    None
                }
            }
        }
    }

    /// Records the outcome of a request let through with `admission`.
    pub fn record(&mut self, now: u64, admission: Admission, ok: bool) {
        if admission == Admission::Probe {
            self.probes_inflight = self.probes_inflight.saturating_sub(1);
        }
        match self.state {
            CircuitState::Closed => {
                self.count(now, ok);
                if ok {
                    self.consecutive_failures = 0;
                    return;
                }
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.cfg.failure_threshold.max(1)
                    || self.error_rate_exceeded(now)
                {
                    self.open(now);
                }
            }
            CircuitState::HalfOpen => {
                if !ok {
                    self.open(now);
                } else if admission == Admission::Probe {
                    self.probe_successes += 1;
                    if self.probe_successes >= self.cfg.half_open_requests.max(1) {
                        self.close();
                    }
                }
            }
            // Outcomes of requests that started before the circuit opened change nothing.
            CircuitState::Open => {}
        }
    }

    /// An active health check passed: an open circuit lets probes through at once instead of
    /// waiting out the recovery timeout; live traffic then decides.
    pub fn health_check_passed(&mut self, now: u64) {
        if self.state == CircuitState::Open {
            self.half_open(now);
        }
    }

    fn open(&mut self, now: u64) {
        self.state = CircuitState::Open;
        self.since = now;
        self.open_until = now + self.recovery_ms();
        self.probes_inflight = 0;
        self.probe_successes = 0;
    }

    fn half_open(&mut self, now: u64) {
        self.state = CircuitState::HalfOpen;
        self.since = now;
        self.probes_inflight = 0;
        self.probe_successes = 0;
    }

    fn close(&mut self) {
        self.state = CircuitState::Closed;
        self.consecutive_failures = 0;
        self.buckets = [Bucket::default(); BUCKETS];
        self.probes_inflight = 0;
        self.probe_successes = 0;
    }

    fn count(&mut self, now: u64, ok: bool) {
        let epoch = now / self.bucket_ms();
        let b = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if b.epoch != epoch {
            *b = Bucket {
                epoch,
                total: 0,
                failures: 0,
            };
        }
        b.total += 1;
        if !ok {
            b.failures += 1;
        }
    }

    fn error_rate_exceeded(&self, now: u64) -> bool {
        let epoch = now / self.bucket_ms();
        let (total, failures) = self
            .buckets
            .iter()
            .filter(|b| b.total > 0 && epoch - b.epoch.min(epoch) < BUCKETS as u64)
            .fold((0u32, 0u32), |(t, f), b| (t + b.total, f + b.failures));
        total >= self.cfg.minimum_throughput.max(1)
            && f64::from(failures) * 100.0 >= self.cfg.error_percentage_threshold * f64::from(total)
    }
}

/// The breaker as the request path uses it.
pub struct CircuitBreaker {
    machine: Mutex<Machine>,
    /// The upstream and server it guards, for the live events of the admin UI.
    name: Option<(Arc<str>, Arc<str>)>,
    /// Mirrors of the machine, read without the lock.
    state: AtomicU8,
    open_until: AtomicU64,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        CircuitBreaker {
            machine: Mutex::new(Machine::new(cfg)),
            name: None,
            state: AtomicU8::new(CircuitState::Closed as u8),
            open_until: AtomicU64::new(0),
        }
    }

    /// Names the upstream and server whose state changes it reports as events.
    pub fn named(mut self, upstream: &str, server: &str) -> Self {
        self.name = Some((Arc::from(upstream), Arc::from(server)));
        self
    }

    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether the balancer may consider the server (no lock, no side effect).
    pub fn may_admit(&self, now: u64) -> bool {
        match self.state() {
            CircuitState::Closed | CircuitState::HalfOpen => true,
            CircuitState::Open => now >= self.open_until.load(Ordering::Relaxed),
        }
    }

    /// Asks to send a request; `None` means fail fast (the circuit is open).
    pub fn admit(&self, now: u64) -> Option<Admission> {
        if self.state() == CircuitState::Closed {
            return Some(Admission::Normal);
        }
        self.with(|m| m.admit(now))
    }

    pub fn record(&self, now: u64, admission: Admission, ok: bool) {
        // Every outcome feeds the rolling window, so this takes the (uncontended) lock.
        self.with(|m| m.record(now, admission, ok));
    }

    pub fn health_check_passed(&self, now: u64) {
        if self.state() == CircuitState::Open {
            self.with(|m| m.health_check_passed(now));
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        let mut m = self.machine.lock().unwrap_or_else(|e| e.into_inner());
        let before = m.state();
        let out = f(&mut m);
        let after = m.state();
        self.open_until.store(m.open_until(), Ordering::Relaxed);
        self.state.store(after as u8, Ordering::Relaxed);
        drop(m);
        if before != after {
            tracing::info!(
                from = before.as_str(),
                to = after.as_str(),
                "circuit changed"
            );
            if let Some((upstream, server)) = &self.name {
                let event = match after {
                    CircuitState::Open => "breaker_open",
                    CircuitState::HalfOpen => "breaker_half_open",
                    CircuitState::Closed => "breaker_closed",
                };
                crate::observability::events::upstream(upstream, server, event, None);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            recovery_timeout: Duration::from_secs(30),
            minimum_throughput: 10,
            error_percentage_threshold: 50.0,
            window: Duration::from_secs(10),
            half_open_requests: 2,
        }
    }

    fn fail(m: &mut Machine, now: u64) {
        let a = m.admit(now).expect("admitted");
        m.record(now, a, false);
    }

    fn succeed(m: &mut Machine, now: u64) {
        let a = m.admit(now).expect("admitted");
        m.record(now, a, true);
    }

    #[test]
    fn consecutive_failures_open_and_success_resets_the_count() {
        let mut m = Machine::new(cfg());
        fail(&mut m, 0);
        fail(&mut m, 1);
        succeed(&mut m, 2);
        fail(&mut m, 3);
        fail(&mut m, 4);
        assert_eq!(m.state(), CircuitState::Closed);
        fail(&mut m, 5);
        assert_eq!(m.state(), CircuitState::Open);
        assert_eq!(m.admit(6), None, "open fails fast");
        assert_eq!(m.admit(5 + 29_999), None);
    }

    #[test]
    fn error_percentage_opens_only_with_enough_throughput() {
        let mut m = Machine::new(BreakerConfig {
            failure_threshold: 100,
            ..cfg()
        });
        // 4 failures in 8 requests: 50%, but below minimum_throughput.
        for i in 0..4 {
            succeed(&mut m, i * 10);
            fail(&mut m, i * 10 + 5);
        }
        assert_eq!(m.state(), CircuitState::Closed);
        succeed(&mut m, 100);
        fail(&mut m, 101); // 10 requests, 5 failures = 50%
        assert_eq!(m.state(), CircuitState::Open);
    }

    #[test]
    fn the_window_forgets_old_requests() {
        let mut m = Machine::new(BreakerConfig {
            failure_threshold: 100,
            ..cfg()
        });
        for i in 0..9 {
            fail(&mut m, i); // 9 failures at t=0..8ms
        }
        // 20 s later the window holds only what follows.
        let t = 20_000;
        for i in 0..9 {
            succeed(&mut m, t + i);
        }
        fail(&mut m, t + 10); // 10 requests, 1 failure
        assert_eq!(m.state(), CircuitState::Closed);
    }

    #[test]
    fn half_open_after_recovery_timeout_then_probes_close_it() {
        let mut m = Machine::new(cfg());
        for t in 0..3 {
            fail(&mut m, t);
        }
        assert_eq!(m.state(), CircuitState::Open);
        let t = 2 + 30_000;
        let p1 = m.admit(t).expect("first probe");
        assert_eq!(p1, Admission::Probe);
        assert_eq!(m.state(), CircuitState::HalfOpen);
        let p2 = m.admit(t).expect("second probe");
        assert_eq!(m.admit(t), None, "probes are bounded");
        m.record(t + 1, p1, true);
        assert_eq!(m.state(), CircuitState::HalfOpen);
        m.record(t + 2, p2, true);
        assert_eq!(m.state(), CircuitState::Closed);
        assert_eq!(m.admit(t + 3), Some(Admission::Normal));
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_recovery_timeout() {
        let mut m = Machine::new(cfg());
        for t in 0..3 {
            fail(&mut m, t);
        }
        let t = 40_000;
        let p = m.admit(t).expect("probe");
        m.record(t + 5, p, false);
        assert_eq!(m.state(), CircuitState::Open);
        assert_eq!(m.admit(t + 5 + 29_999), None);
        assert!(m.admit(t + 5 + 30_000).is_some());
    }

    #[test]
    fn a_lost_probe_does_not_wedge_half_open() {
        let mut m = Machine::new(BreakerConfig {
            half_open_requests: 1,
            ..cfg()
        });
        for t in 0..3 {
            fail(&mut m, t);
        }
        let t = 30_002;
        assert!(m.admit(t).is_some()); // never reported back
        assert_eq!(m.admit(t + 1), None);
        assert_eq!(m.admit(t + 30_000), Some(Admission::Probe));
    }

    #[test]
    fn health_check_success_half_opens_at_once() {
        let mut m = Machine::new(cfg());
        for t in 0..3 {
            fail(&mut m, t);
        }
        m.health_check_passed(1000);
        assert_eq!(m.state(), CircuitState::HalfOpen);
        assert_eq!(m.admit(1000), Some(Admission::Probe));
    }

    #[test]
    fn late_results_while_open_change_nothing() {
        let mut m = Machine::new(cfg());
        for t in 0..3 {
            fail(&mut m, t);
        }
        m.record(10, Admission::Normal, true);
        m.record(11, Admission::Normal, false);
        assert_eq!(m.state(), CircuitState::Open);
        assert_eq!(m.open_until(), 2 + 30_000);
    }

    #[test]
    fn wrapper_mirrors_the_machine() {
        let b = CircuitBreaker::new(cfg());
        assert!(b.may_admit(0));
        for t in 0..3 {
            let a = b.admit(t).expect("closed");
            b.record(t, a, false);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(!b.may_admit(100));
        assert!(b.admit(100).is_none());
        assert!(b.may_admit(30_002));
        assert_eq!(b.admit(30_002), Some(Admission::Probe));
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn a_named_breaker_reports_its_transitions_as_events() {
        let mut rx = crate::observability::events::subscribe();
        let b = CircuitBreaker::new(cfg()).named("breaker-events-test", "http://s1");
        for t in 0..3 {
            let a = b.admit(t).expect("closed");
            b.record(t, a, false);
        }
        for t in 30_002..30_004 {
            let a = b.admit(t).expect("a probe");
            b.record(t, a, true);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&e.data).expect("json");
            if e.name == "upstream" && v["upstream"] == "breaker-events-test" {
                assert_eq!(v["server"], "http://s1");
                seen.push(v["event"].as_str().unwrap_or_default().to_string());
            }
        }
        assert_eq!(
            seen,
            ["breaker_open", "breaker_half_open", "breaker_closed"]
        );
    }
}
