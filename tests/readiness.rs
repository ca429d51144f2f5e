//! Readiness says whether the gateway can serve: 503 with the reasons while a JWKS has never
//! been fetched, while Redis (the rate-limit backend, with `on_backend_error: deny`) is down,
//! or while no server of any upstream is available; liveness stays 200 throughout. Against the
//! real binary, a real redis-server (killed mid-test) and a real upstream that goes down.

mod support;

use std::time::Duration;
use support::*;

const TOKEN: &str = "readiness-admin-token-0123456789";

fn client() -> reqwest::blocking::Client {
    blocking_client()
}

/// Status and JSON of `/_kairos/ready`.
fn ready(c: &reqwest::blocking::Client, gw: &GatewayProcess) -> (u16, serde_json::Value) {
    let res = c.get(gw.url("/_kairos/ready")).send().unwrap();
    (res.status().as_u16(), res.json().unwrap())
}

fn checks(v: &serde_json::Value) -> Vec<String> {
    v["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["check"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn live(c: &reqwest::blocking::Client, gw: &GatewayProcess) -> u16 {
    c.get(gw.url("/_kairos/health"))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// A gateway whose per-IP limit lives in a real redis-server, with `on_backend_error` as
/// given; the upstream and Redis are returned to keep them running.
fn behind_redis(on_backend_error: &str) -> (Upstream, RedisServer, GatewayProcess) {
    let up = Upstream::start_ok();
    let redis = RedisServer::start();
    let text = config(
        &up.url(),
        r#"[{"name":"api","path":"/api","upstream":"u"}]"#,
        &format!(
            r#""admin":{{"token":"{TOKEN}"}},
               "rate_limiting":{{"backend":"redis","redis_url":"{}","on_backend_error":"{on_backend_error}",
                                 "redis_timeout":"200ms","per_ip":{{"rps":100,"burst":100}}}}"#,
            redis.url()
        ),
    );
    let gw = GatewayProcess::start(&text.replace(r#""level":"error""#, r#""level":"info""#));
    (up, redis, gw)
}

#[test]
fn redis_down_with_deny_makes_the_gateway_not_ready_until_it_is_back() {
    let (_up, mut redis, gw) = behind_redis("deny");
    let c = client();
    let (status, v) = ready(&c, &gw);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ready");

    redis.kill();
    let (status, v) = ready(&c, &gw);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["status"], "not_ready");
    assert_eq!(checks(&v), ["rate_limit_backend"], "{v}");
    assert!(
        !v.to_string().contains(&redis.url()),
        "no address in the answer: {v}"
    );
    assert_eq!(live(&c, &gw), 200, "liveness stays trivial");

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || ready(&c, &gw).0 == 200),
        "ready again once Redis is back"
    );
}

#[test]
fn redis_down_with_allow_keeps_the_gateway_ready() {
    let (_up, mut redis, gw) = behind_redis("allow");
    let c = client();
    redis.kill();
    let (status, v) = ready(&c, &gw);
    assert_eq!(status, 200, "the memory fallback serves: {v}");
}

#[test]
fn an_unfetched_jwks_and_upstreams_all_down_make_the_gateway_not_ready() {
    // The JWKS endpoint refuses connections, and so does the only upstream server (its
    // health check marks it unhealthy after one failure).
    let closed = |()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (idp, dead) = (closed(()), closed(()));
    let text = serde_json::json!({
        "version": 1,
        "server": {"workers": 1},
        "admin": {"token": TOKEN},
        "upstreams": {"u": {
            "servers": [{"url": format!("http://{dead}")}],
            "health_check": {"path": "/health", "interval": "100ms", "timeout": "50ms",
                             "healthy_threshold": 1, "unhealthy_threshold": 1}
        }},
        "routes": [{"name": "api", "path": "/api", "upstream": "u", "auth": "jwt"}],
        "jwt_validation": {"algorithm": "RS256", "jwks_url": format!("http://{idp}/jwks.json"),
                           "issuer": "i", "jwks_refresh": "1h"},
        "logging": {"access_log": false, "level": "info"}
    })
    .to_string();
    let gw = GatewayProcess::start(&text.replace(r#""level":"error""#, r#""level":"info""#));
    let c = client();
    let mut last = serde_json::Value::Null;
    let both = wait_until(Duration::from_secs(10), || {
        let (status, v) = ready(&c, &gw);
        last = v;
        status == 503 && checks(&last) == ["jwks", "upstreams"]
    });
    assert!(both, "{last}");
    assert!(!last.to_string().contains(&idp.to_string()), "{last}");
    assert_eq!(live(&c, &gw), 200);

    // The upstream comes back (a real server on the address that was down): only the JWKS
    // keeps the gateway from serving.
    let _up = Upstream::start_on(std::net::TcpListener::bind(dead).unwrap(), |_| {
        Reply::ok("ok")
    });
    let only_jwks = wait_until(Duration::from_secs(10), || {
        let (_, v) = ready(&c, &gw);
        last = v;
        checks(&last) == ["jwks"]
    });
    assert!(only_jwks, "{last}");
}
