//! Route lookup cost: `Router::lookup(host, path, method)` on routers built from generated
//! configs with 10 and with 10,000 routes, for a static path, a path with a parameter, a
//! catch-all and a miss.
//!
//! Run: `cargo bench --bench route_lookup` (add `-- --quick` for a short run, or a filter such
//! as `-- 10000/` to run only the big router).
//!
//! The routes cycle through three shapes so that every generated path is distinct and none can
//! be confused with another:
//!   i % 3 == 0: `/static{i}/health`   (static)
//!   i % 3 == 1: `/svc{i}/items/{id}`  (one parameter, GET only)
//!   i % 3 == 2: `/files{i}/{*rest}`   (catch-all)
//! The looked-up routes sit in the middle of the generated range, so the 10,000-route tree has
//! thousands of siblings on the same prefix (`/static`, `/svc`, `/files`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kairos_rs::config::router::{Lookup, Router};
use std::hint::black_box;
use std::time::Duration;

/// The JSON config with `n` generated routes on one upstream.
fn config_json(n: usize) -> String {
    let routes: Vec<serde_json::Value> = (0..n)
        .map(|i| match i % 3 {
            0 => serde_json::json!({ "name": format!("r{i}"), "path": format!("/static{i}/health"), "upstream": "u" }),
            1 => serde_json::json!({ "name": format!("r{i}"), "path": format!("/svc{i}/items/{{id}}"), "methods": ["GET"], "upstream": "u" }),
            _ => serde_json::json!({ "name": format!("r{i}"), "path": format!("/files{i}/{{*rest}}"), "upstream": "u" }),
        })
        .collect();
    serde_json::json!({
        "version": 1,
        "upstreams": { "u": { "servers": [{ "url": "http://127.0.0.1:9" }] } },
        "routes": routes,
        "logging": { "level": "warn", "access_log": false }
    })
    .to_string()
}

/// The index of the route of shape `kind` (0, 1, 2) closest to the middle of `0..n`.
fn middle(n: usize, kind: usize) -> usize {
    let m = n / 2;
    m - m % 3 + kind
}

struct Case {
    name: &'static str,
    path: String,
    method: &'static str,
    /// The route name the lookup must find, or None for a miss.
    expect: Option<String>,
}

fn cases(n: usize) -> Vec<Case> {
    let (s, p, c) = (middle(n, 0), middle(n, 1), middle(n, 2));
    vec![
        Case {
            name: "static",
            path: format!("/static{s}/health"),
            method: "GET",
            expect: Some(format!("r{s}")),
        },
        Case {
            name: "param",
            path: format!("/svc{p}/items/12345"),
            method: "GET",
            expect: Some(format!("r{p}")),
        },
        Case {
            name: "catch_all",
            path: format!("/files{c}/a/b/c/report.pdf"),
            method: "GET",
            expect: Some(format!("r{c}")),
        },
        // Shares a prefix with a real route (`/svc{p}/`), then fails: the tree is walked
        // as far as it can be before giving up.
        Case {
            name: "miss",
            path: format!("/svc{p}/orders/12345"),
            method: "GET",
            expect: None,
        },
    ]
}

fn build(n: usize) -> (kairos_rs::config::Config, Router) {
    let json = config_json(n);
    let cfg = kairos_rs::config::load_str(&json, "bench", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("generated config with {n} routes is invalid: {e}"));
    assert_eq!(cfg.routes.len(), n);
    let router = Router::build(&cfg.routes)
        .unwrap_or_else(|e| panic!("router with {n} routes failed to build: {} errors", e.len()));
    (cfg, router)
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in [10usize, 10_000] {
        let (cfg, router) = build(n);
        for case in cases(n) {
            // Check once, outside the timing, that the lookup finds what it should.
            let got = match router.lookup(None, &case.path, case.method) {
                Lookup::Found { route, .. } => Some(cfg.routes[route].name.clone()),
                Lookup::MethodNotAllowed { allow } => {
                    panic!("{}: {} gave 405 (allow {allow})", case.name, case.path)
                }
                Lookup::NotFound => None,
            };
            assert_eq!(
                got, case.expect,
                "{} with {n} routes: {}",
                case.name, case.path
            );

            group.bench_with_input(BenchmarkId::new(case.name, n), &case, |b, case| {
                b.iter(|| {
                    let hit = router.lookup(
                        black_box(None),
                        black_box(case.path.as_str()),
                        black_box(case.method),
                    );
                    // Consume the result so the whole lookup (params included) is kept.
                    match hit {
                        Lookup::Found { route, params } => route + params.len(),
                        Lookup::MethodNotAllowed { allow } => allow.len(),
                        Lookup::NotFound => usize::MAX,
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route_lookup);
criterion_main!(benches);
