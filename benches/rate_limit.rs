//! Decision cost of the memory rate limiter, as the request path makes it: find the client's
//! bucket (creating it on first sight) and advance its GCRA cell with one compare-and-swap.
//!
//! - `single_key`: one client over and over (a hot bucket);
//! - `1M_keys`: clients drawn at random from one million, all of them held (max_keys 1M), so
//!   every lookup misses the CPU caches as it would under a crowd;
//! - `per_ip+global`: two limits per request, the common production pair.
//!
//! Run: `cargo bench --bench rate_limit` (add `-- --quick` for a short run).

use criterion::{criterion_group, criterion_main, Criterion};
use kairos_rs::edge::ratelimit::{Decision, Pending, RateLimiter};
use kairos_rs::observability::metrics::Metrics;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

fn limiter(limits: &str, max_keys: u64) -> RateLimiter {
    let text = format!(
        r#"{{"version":1,"upstreams":{{"u":{{"servers":[{{"url":"http://127.0.0.1:9"}}]}}}},
            "routes":[{{"path":"/","upstream":"u"}}],
            "rate_limiting":{{"max_keys":{max_keys},{limits}}}}}"#
    );
    let config = kairos_rs::config::load_str(&text, "bench.json", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    // The metrics must outlive the limiter's histogram handles; leaked once per bench.
    let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    RateLimiter::build(&config, metrics, None)
        .expect("limiter")
        .expect("some limit")
}

fn decide(l: &RateLimiter, ip: IpAddr) -> bool {
    match l.decide(l.applicable_anonymous(0, Some(ip))) {
        Pending::Ready(d) => matches!(d, Decision::Admitted(_)),
        Pending::Remote(_) => unreachable!("memory backend"),
    }
}

fn bench(c: &mut Criterion) {
    // A rate no benchmark can exhaust: every decision admits.
    let per_ip = r#""per_ip":{"rps":1000000,"burst":1000000}"#;
    let one = limiter(per_ip, 100_000);
    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    c.bench_function("memory/single_key", |b| {
        b.iter(|| decide(&one, black_box(ip)))
    });

    const N: u32 = 1_000_000;
    let many = limiter(per_ip, u64::from(N));
    for i in 0..N {
        decide(&many, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    c.bench_function("memory/1M_keys", |b| {
        b.iter(|| {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + rng.u32(0..N)));
            decide(&many, ip)
        })
    });

    let pair = limiter(
        &format!(r#"{per_ip},"global":{{"rps":1000000,"burst":1000000}}"#),
        100_000,
    );
    c.bench_function("memory/per_ip+global", |b| {
        b.iter(|| decide(&pair, black_box(ip)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
