//! The live state of one upstream server, shared by every worker: in-flight count, latency
//! and success averages, health, outlier ejection and the circuit breaker. Everything the hot
//! path reads is an atomic; the breaker's state machine takes a short lock only to record an
//! outcome.

use super::balancer::ServerLoad;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

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

pub struct ServerState {
    inflight: AtomicU32,
    health: AtomicU8,
    /// Outlier ejection: no traffic before this time (ms on the gateway clock); 0 = not ejected.
    ejected_until: AtomicU64,
    /// Peak-EWMA latency in ns, and when it was last updated (ms).
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    /// EWMA of the success ratio, in millionths.
    success_ppm: AtomicU32,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            inflight: AtomicU32::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            ejected_until: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
            success_ppm: AtomicU32::new(1_000_000),
        }
    }
}

impl ServerState {
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    pub fn set_health(&self, h: Health) {
        self.health.store(h as u8, Ordering::Relaxed);
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }
}

impl ServerLoad for ServerState {
    fn available(&self, now_ms: u64) -> bool {
        self.health() != Health::Unhealthy && !self.ejected(now_ms)
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
