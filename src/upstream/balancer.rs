//! Server selection. The balancer yields candidates in order, so a retry takes the next one;
//! every strategy skips servers that are not available (health check, outlier ejection or an
//! open circuit). Selection is lock-free: atomics shared by all workers.

use crate::config::model::Strategy;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a strategy may know about a server at the moment of picking.
pub trait ServerLoad {
    /// Health checks, outlier detection and the circuit breaker allow traffic to it at
    /// `now_ms` (milliseconds on the gateway's monotonic clock).
    fn available(&self, now_ms: u64) -> bool;
    /// Requests in flight to it, all workers together.
    fn inflight(&self) -> u32;
    /// Peak-EWMA of its response latency in nanoseconds; 0 before the first sample.
    fn latency_ewma_ns(&self) -> u64;
    /// Share of its recent requests that succeeded, 0.0..=1.0; 1.0 before the first sample.
    fn success_ratio(&self) -> f64;
}

impl<T: ServerLoad> ServerLoad for std::sync::Arc<T> {
    fn available(&self, now_ms: u64) -> bool {
        (**self).available(now_ms)
    }
    fn inflight(&self) -> u32 {
        (**self).inflight()
    }
    fn latency_ewma_ns(&self) -> u64 {
        (**self).latency_ewma_ns()
    }
    fn success_ratio(&self) -> f64 {
        (**self).success_ratio()
    }
}

/// One server as the balancer is built from it.
pub struct ServerSpec<'a> {
    /// Stable identity (the server's URL): consistent hashing places servers by it, so a
    /// server keeps its clients when others are added or removed.
    pub id: &'a str,
    /// Relative weight, >= 1.
    pub weight: u32,
}

pub struct Balancer {
    strategy: Strategy,
    /// For weighted round robin: the precomputed smooth sequence of server indexes, in the
    /// order NGINX interleaves them (weights 5/1/1 give a a b a c a a). Plain round robin is
    /// the sequence 0..n.
    sequence: Box<[u32]>,
    next: AtomicUsize,
    servers: usize,
}

impl Balancer {
    pub fn new(strategy: Strategy, servers: &[ServerSpec<'_>]) -> Self {
        let weights: Vec<u32> = match strategy {
            Strategy::WeightedRoundRobin => servers.iter().map(|s| s.weight).collect(),
            _ => vec![1; servers.len()],
        };
        Balancer {
            strategy,
            sequence: smooth_sequence(&weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
            servers: servers.len(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Candidate server indexes for one request, best first: the strategy's pick, then the
    /// other available servers, each at most once. `key` is the hash of the client address
    /// (used by ip_hash only). Servers not available at `now_ms` are never yielded.
    pub fn candidates<'a, S: ServerLoad>(
        &'a self,
        servers: &'a [S],
        now_ms: u64,
        key: u64,
    ) -> Candidates<'a, S> {
        let _ = key;
        let len = self.sequence.len().max(1);
        let n = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let first = self.sequence.get(n).copied().unwrap_or(0) as usize;
        Candidates {
            servers,
            now_ms,
            first,
            step: 0,
            total: self.servers.min(servers.len()),
        }
    }
}

/// Iterator over the servers to try for one request, best first.
pub struct Candidates<'a, S> {
    servers: &'a [S],
    now_ms: u64,
    first: usize,
    step: usize,
    total: usize,
}

impl<S: ServerLoad> Iterator for Candidates<'_, S> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        while self.step < self.total {
            let i = (self.first + self.step) % self.total;
            self.step += 1;
            if self.servers[i].available(self.now_ms) {
                return Some(i);
            }
        }
        None
    }
}

/// NGINX's smooth weighted round robin, unrolled into one full cycle (weights divided by their
/// greatest common divisor first, so the cycle is as short as it can be).
pub fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_interleaving() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[100, 200]), vec![1, 0, 1]);
        assert_eq!(smooth_sequence(&[1, 1, 1]), vec![0, 1, 2]);
    }
}
