//! Server selection. The balancer yields candidates in order, so a retry takes the next one.
//! Selection is lock-free: one atomic counter per upstream, shared by all workers.

use crate::config::model::{Strategy, UpstreamConfig};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Balancer {
    /// For weighted round robin: the precomputed smooth sequence of server indexes, in the
    /// order NGINX interleaves them (weights 5/1/1 give a a b a c a a). Plain round robin is
    /// the sequence 0..n.
    sequence: Box<[u32]>,
    next: AtomicUsize,
    servers: usize,
}

impl Balancer {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let weights: Vec<u32> = match cfg.strategy {
            Strategy::RoundRobin => vec![1; cfg.servers.len()],
            Strategy::WeightedRoundRobin => cfg.servers.iter().map(|s| s.weight).collect(),
        };
        Balancer {
            sequence: smooth_sequence(&weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
            servers: cfg.servers.len(),
        }
    }

    /// Candidate server indexes for one request: the balancer's pick first, then every other
    /// server once, for retries.
    pub fn candidates(&self) -> Candidates {
        let len = self.sequence.len().max(1);
        let n = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let first = self.sequence.get(n).copied().unwrap_or(0) as usize;
        Candidates {
            first,
            servers: self.servers,
            step: 0,
        }
    }

    /// The server for the next request.
    pub fn pick(&self) -> usize {
        self.candidates().first
    }
}

/// Iterator over the servers to try for one request, best first.
pub struct Candidates {
    first: usize,
    servers: usize,
    step: usize,
}

impl Iterator for Candidates {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.step >= self.servers {
            return None;
        }
        let i = (self.first + self.step) % self.servers;
        self.step += 1;
        Some(i)
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
