//! Server selection cost: the first candidate of `Balancer::candidates` for every strategy on
//! upstreams of 2, 16 and 256 servers, all available, plus ip_hash on 256 servers with every
//! other one unavailable (the table walk past dead servers).
//!
//! Run: `cargo bench --bench balancer` (add `-- --quick` for a short run, or a filter such as
//! `-- ip_hash` to run one strategy).
//!
//! The servers are `ServerState`, the gateway's own per-server atomics, with varied in-flight
//! counts and latencies so least_connections and p2c_ewma compare real numbers. ip_hash gets a
//! different client key on every iteration: with one fixed key the table entry would always be
//! in cache, which real traffic from many clients does not give.
//!
//! Measured (`-- --quick`, release profile, 2 shared cores): 8-23 ns per pick for every
//! strategy and size, except least_connections, which reads every server: 21 ns at 2 servers,
//! 58 ns at 16, 510 ns at 256.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kairos_rs::config::model::Strategy;
use kairos_rs::upstream::balancer::{Balancer, ServerLoad, ServerSpec};
use std::hint::black_box;
use std::time::Duration;

/// A server whose state the bench sets once; reads are relaxed atomic loads, as in
/// `ServerState`.
struct Server {
    up: std::sync::atomic::AtomicBool,
    inflight: std::sync::atomic::AtomicU32,
    ewma_ns: std::sync::atomic::AtomicU64,
}

impl ServerLoad for Server {
    fn available(&self, _now_ms: u64) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn inflight(&self) -> u32 {
        self.inflight.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn latency_ewma_ns(&self) -> u64 {
        self.ewma_ns.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn success_ratio(&self) -> f64 {
        1.0
    }
}

fn servers(n: usize, half_down: bool) -> Vec<Server> {
    (0..n)
        .map(|i| Server {
            up: (!half_down || i % 2 == 0).into(),
            inflight: (((i * 7 + 3) % 11 + 1) as u32).into(),
            ewma_ns: (1_000_000 + (i as u64 * 7919) % 500_000).into(),
        })
        .collect()
}

fn balancer(strategy: Strategy, n: usize) -> Balancer {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("http://10.0.{}.{}:8080", i / 256, i % 256))
        .collect();
    // Uneven weights, so the weighted strategies take their weighted paths.
    let specs: Vec<ServerSpec<'_>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| ServerSpec {
            id,
            weight: 1 + (i as u32 % 4),
        })
        .collect();
    Balancer::new(strategy, &specs)
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    let mut cases: Vec<(Strategy, usize, bool)> = Vec::new();
    for strategy in Strategy::ALL {
        for n in [2usize, 16, 256] {
            cases.push((strategy, n, false));
        }
    }
    cases.push((Strategy::IpHash, 256, true));
    for (strategy, n, half_down) in cases {
        let b = balancer(strategy, n);
        let servers = servers(n, half_down);
        // Check once, outside the timing, that a pick is made and is available.
        let i = b.candidates(&servers, 0, 1).next().expect("a pick");
        assert!(servers[i].available(0));
        let id = if half_down {
            format!("{n}_half_down")
        } else {
            n.to_string()
        };
        group.bench_function(BenchmarkId::new(strategy.as_str(), id), |bench| {
            let mut key = 0u64;
            bench.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                b.candidates(black_box(&servers), 0, black_box(key)).next()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
