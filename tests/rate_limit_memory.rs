//! One million distinct clients through the memory limiter: the buckets kept stay within
//! `max_keys` and the process' memory stops growing once that many are held. A test binary of
//! its own, so no other test's allocations move the RSS it reads.

use kairos_rs::edge::ratelimit::{Decision, Pending, RateLimiter};
use kairos_rs::observability::metrics::Metrics;
use std::net::{IpAddr, Ipv4Addr};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_million_clients_keep_memory_bounded() {
    const MAX_KEYS: u64 = 200_000;
    let text = format!(
        r#"{{"version":1,"upstreams":{{"u":{{"servers":[{{"url":"http://127.0.0.1:9"}}]}}}},
            "routes":[{{"path":"/","upstream":"u"}}],
            "rate_limiting":{{"max_keys":{MAX_KEYS},"per_ip":{{"rps":1,"burst":10}}}}}}"#
    );
    let config = kairos_rs::config::load_str(&text, "t.json", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let metrics = Metrics::new();
    let limiter = RateLimiter::build(&config, &metrics, None)
        .unwrap()
        .expect("a limiter");

    let mut admitted = 0u64;
    let mut decide = |i: u32| {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let Pending::Ready(d) = limiter.decide(limiter.applicable_anonymous(0, Some(ip))) else {
            panic!("the memory backend decides at once");
        };
        if matches!(d, Decision::Admitted(_)) {
            admitted += 1;
        }
    };
    // Fill to the bound, then measure from there.
    for i in 0..MAX_KEYS as u32 {
        decide(i);
    }
    let full = rss_kib();
    for i in MAX_KEYS as u32..1_000_000 {
        decide(i);
    }
    let after = rss_kib();
    let kept = limiter.keys_in_memory();
    println!(
        "1,000,000 clients: {kept} buckets kept (max_keys {MAX_KEYS}); RSS {full} KiB at the bound, \
         {after} KiB after"
    );
    assert_eq!(admitted, 1_000_000, "every new client has a full bucket");
    assert!(kept <= MAX_KEYS, "{kept} buckets kept");
    // 800,000 more clients than fit: memory stays where it was at the bound (8 MiB of slack
    // for allocator and cache bookkeeping, against ~200 bytes × 800,000 = 150 MiB unbounded).
    assert!(
        after <= full + 8 * 1024,
        "RSS grew from {full} KiB to {after} KiB"
    );
}
