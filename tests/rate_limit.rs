//! Rate limiting with the memory backend, through a real gateway in front of a real upstream:
//! each scope, route overrides, the headers, the 429 body, and that refused requests use up
//! nothing.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use kairos_rs::base::hash as api_key;
use reqwest::Response;
use serde_json::json;
use support::*;

const ADMIN: &str = "admin-token-for-tests-0123456789";
const HS_SECRET: &str = "an-hmac-secret-of-at-least-thirty-two-bytes!";

/// A config whose client addresses come from X-Forwarded-For (the test is the trusted proxy),
/// so one test can speak for many clients.
fn cfg(up: &Upstream, routes: &str, extra: &str) -> String {
    config(&up.url(), routes, extra).replace(
        r#""workers":1"#,
        r#""workers":2,"trusted_proxies":["127.0.0.1/32"]"#,
    )
}

fn with_admin(extra: &str) -> String {
    format!(r#""admin":{{"token":"{ADMIN}"}},{extra}"#)
}

async fn get_as(gw: &Gateway, path: &str, ip: &str) -> Response {
    client()
        .get(gw.url(path))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .expect("request")
}

fn header(res: &Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `kairos_ratelimited_total` of `route` and `scope`.
fn ratelimited(metrics: &str, route: &str, scope: &str) -> Option<f64> {
    metric(
        metrics,
        "kairos_ratelimited_total",
        &[("route", route), ("scope", scope)],
    )
}

/// Statuses of `n` requests in a row.
async fn statuses(gw: &Gateway, path: &str, ip: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_as(gw, path, ip).await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn per_ip_admits_the_burst_then_429_with_headers_and_json() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"name":"api","path":"/api","upstream":"u"}]"#,
        &with_admin(r#""rate_limiting":{"per_ip":{"rps":0.5,"burst":3}}"#),
    ));
    for remaining in ["2", "1", "0"] {
        let res = get_as(&gw, "/api", "203.0.113.1").await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            header(&res, "x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        // Until the bucket is full again: 2 s per request used, rounded up.
        let reset: u64 = header(&res, "x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=6).contains(&reset), "reset {reset}");
        assert!(header(&res, "retry-after").is_none());
    }
    let res = get_as(&gw, "/api", "203.0.113.1").await;
    assert_eq!(res.status(), 429);
    let rid = header(&res, "x-request-id").expect("request id");
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["request_id"], rid.as_str());
    // Another client has its own bucket.
    assert_eq!(get_as(&gw, "/api", "203.0.113.2").await.status(), 200);
    assert_eq!(
        up.count(),
        4,
        "a refused request never reaches the upstream"
    );

    let text = scrape_metrics(&gw, ADMIN).await;
    let limited = |scope| ratelimited(&text, "api", scope);
    assert_eq!(limited("per_ip"), Some(1.0));
    let decisions = metric(
        &text,
        "kairos_ratelimit_decision_duration_seconds_count",
        &[("backend", "memory")],
    );
    assert_eq!(decisions, Some(5.0));
}

#[tokio::test]
async fn the_bucket_refills_at_the_rate() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/api","upstream":"u"}]"#,
        r#""rate_limiting":{"per_ip":{"rps":20,"burst":2}}"#,
    ));
    assert_eq!(
        statuses(&gw, "/api", "198.51.100.7", 3).await,
        [200, 200, 429]
    );
    // One request every 50 ms refills.
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    assert_eq!(
        statuses(&gw, "/api", "198.51.100.7", 3).await,
        [200, 200, 429]
    );
}

#[tokio::test]
async fn refused_requests_use_up_no_other_limit() {
    // Per IP 2, global 5: client A's refused requests must not count against the global
    // budget, so B gets the 3 that are left.
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"name":"api","path":"/api","upstream":"u"}]"#,
        &with_admin(
            r#""rate_limiting":{"ietf_headers":true,"per_ip":{"rps":0.01,"burst":2},"global":{"rps":0.01,"burst":5}}"#,
        ),
    ));
    assert_eq!(
        statuses(&gw, "/api", "192.0.2.1", 6).await,
        [200, 200, 429, 429, 429, 429]
    );
    assert_eq!(statuses(&gw, "/api", "192.0.2.2", 2).await, [200, 200]);
    let res = get_as(&gw, "/api", "192.0.2.3").await;
    assert_eq!(res.status(), 200);
    // The tightest limit is reported: global has 0 left, per_ip 1.
    assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("0"));
    let res = get_as(&gw, "/api", "192.0.2.4").await;
    assert_eq!(res.status(), 429);
    // A global refusal says so; the Retry-After is the global bucket's (100 s per request).
    let retry: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((90..=100).contains(&retry), "Retry-After {retry}");
    // Its per-IP bucket, taken before global refused, was given back: still 2 of 2.
    let state = header(&res, "ratelimit").unwrap();
    assert!(state.starts_with(r#""per_ip";r=2;"#), "{state}");
    assert!(state.contains(r#""global";r=0;"#), "{state}");
    let text = scrape_metrics(&gw, ADMIN).await;
    let limited = |scope| ratelimited(&text, "api", scope);
    assert_eq!(limited("per_ip"), Some(4.0));
    assert_eq!(limited("global"), Some(1.0));
    assert_eq!(up.count(), 5);
}

fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    kairos_rs::edge::auth::crypto::install();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now + 600}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn per_user_counts_jwt_subjects_whatever_their_address() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/me","upstream":"u","auth":"jwt"}]"#,
        &format!(
            r#""jwt_validation":{{"secret":"{HS_SECRET}"}},
               "rate_limiting":{{"per_user":{{"rps":0.01,"burst":2}}}}"#
        ),
    ));
    let (alice, bob) = (token("alice"), token("bob"));
    let c = client();
    let mut got = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        let res = c
            .get(gw.url("/me"))
            .bearer_auth(&alice)
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
        got.push(res.status().as_u16());
    }
    assert_eq!(got, [200, 200, 429]);
    let res = c.get(gw.url("/me")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // An unauthenticated request is refused by auth first, and uses up nothing.
    let res = c.get(gw.url("/me")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(header(&res, "x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn per_api_key_default_and_a_keys_own_limit() {
    let up = Upstream::start_ok();
    let (std_key, gold_key, silver_key) = (
        "standard-key-0123456789",
        "gold-key-0123456789abc",
        "silver-key-0123456789ab",
    );
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/k","upstream":"u","auth":"api_key"},
            {"path":"/k2","upstream":"u","auth":"api_key",
             "rate_limit":{"per_api_key":{"rps":0.01,"burst":1}}}]"#,
        &format!(
            r#""api_keys":{{"keys":{{
                 "standard":{{"key_hash":"{}"}},
                 "gold":{{"key_hash":"{}","rate_limit":{{"rps":0.01,"burst":4}}}},
                 "silver":{{"key_hash":"{}","rate_limit":{{"rps":0.01,"burst":10}}}}}}}},
               "rate_limiting":{{"per_api_key":{{"rps":0.01,"burst":2}}}}"#,
            api_key::format_hash(&api_key::hash(std_key)),
            api_key::format_hash(&api_key::hash(gold_key)),
            api_key::format_hash(&api_key::hash(silver_key))
        ),
    ));
    let c = client();
    let run = |key: &'static str, path: &'static str, n: usize| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let res = c.get(&url).header("x-api-key", key).send().await.unwrap();
                out.push(res.status().as_u16());
            }
            out
        }
    };
    assert_eq!(run(std_key, "/k", 3).await, [200, 200, 429]);
    // The key's own limit replaces the default.
    assert_eq!(run(gold_key, "/k", 5).await, [200, 200, 200, 200, 429]);
    // A route's per-key budget comes on top of the key's own.
    assert_eq!(
        run(gold_key, "/k2", 1).await,
        [429],
        "gold's own budget is spent"
    );
    // The route's per-key limit replaces the top-level default there: standard's spent
    // default budget does not count on /k2, its own /k2 budget of 1 does.
    assert_eq!(run(std_key, "/k2", 2).await, [200, 429]);
}

#[tokio::test]
async fn route_limits_replace_the_top_level_ones_and_inherit_false_exempts() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/normal","upstream":"u"},
            {"path":"/strict","upstream":"u","rate_limit":{"per_ip":{"rps":0.01,"burst":1}}},
            {"path":"/loose","upstream":"u","rate_limit":{"per_ip":{"rps":0.01,"burst":4}}},
            {"path":"/exempt","upstream":"u","rate_limit":{"inherit":false}}]"#,
        r#""rate_limiting":{"per_ip":{"rps":0.01,"burst":2}}"#,
    ));
    let ip = "203.0.113.50";
    assert_eq!(statuses(&gw, "/normal", ip, 3).await, [200, 200, 429]);
    assert_eq!(statuses(&gw, "/strict", ip, 2).await, [200, 429]);
    assert_eq!(
        statuses(&gw, "/loose", ip, 5).await,
        [200, 200, 200, 200, 429]
    );
    let exempt = get_as(&gw, "/exempt", ip).await;
    assert_eq!(exempt.status(), 200);
    assert!(header(&exempt, "x-ratelimit-limit").is_none());
    assert_eq!(statuses(&gw, "/exempt", ip, 10).await, [200; 10]);
}

#[tokio::test]
async fn ietf_fields_by_switch_and_legacy_headers_can_be_turned_off() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/a","upstream":"u","rate_limit":{"global":{"rps":10,"burst":50}}}]"#,
        r#""rate_limiting":{"headers":false,"ietf_headers":true,"per_ip":{"rps":1,"burst":3}}"#,
    ));
    let res = get_as(&gw, "/a", "198.51.100.1").await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "x-ratelimit-limit").is_none());
    assert_eq!(
        header(&res, "ratelimit-policy").as_deref(),
        Some(r#""per_ip";q=3;w=3, "route_global";q=50;w=5"#)
    );
    assert_eq!(
        header(&res, "ratelimit").as_deref(),
        Some(r#""per_ip";r=2;t=1, "route_global";r=49;t=1"#)
    );
}

#[tokio::test]
async fn headers_also_on_upstream_errors_and_not_on_unlimited_routes() {
    let up = Upstream::start(|r| {
        if r.target == "/fail" {
            Reply::ok("no").status(503)
        } else {
            Reply::ok("ok")
        }
    });
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/fail","upstream":"u","rate_limit":{"per_ip":{"rps":1,"burst":5}}},
            {"path":"/free","upstream":"u"}]"#,
        "",
    ));
    let res = get_as(&gw, "/fail", "198.51.100.2").await;
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("4"));
    let res = get_as(&gw, "/free", "198.51.100.2").await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn ipv4_clients_on_a_dual_stack_socket_share_their_bucket() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/a","upstream":"u"}]"#,
        r#""rate_limiting":{"per_ip":{"rps":0.01,"burst":1}}"#,
    ));
    assert_eq!(statuses(&gw, "/a", "192.0.2.77", 1).await, [200]);
    assert_eq!(statuses(&gw, "/a", "::ffff:192.0.2.77", 1).await, [429]);
}

#[tokio::test]
async fn ipv6_clients_share_a_bucket_per_prefix() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/api","upstream":"u"}]"#,
        r#""rate_limiting":{"per_ip":{"rps":0.01,"burst":2}}"#,
    ));
    // Two addresses of one /64 (the default prefix): one client, one bucket.
    assert_eq!(
        statuses(&gw, "/api", "2001:db8:1:2::a", 2).await,
        [200, 200]
    );
    assert_eq!(
        statuses(&gw, "/api", "2001:db8:1:2:ffff:1:2:3", 1).await,
        [429],
        "a rotated address in the same /64 is the same client"
    );
    // The next /64 is another client.
    assert_eq!(
        statuses(&gw, "/api", "2001:db8:1:3::a", 2).await,
        [200, 200]
    );

    // A wider prefix counts a whole /48 as one client.
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/api","upstream":"u"}]"#,
        r#""rate_limiting":{"ipv6_prefix":48,"per_ip":{"rps":0.01,"burst":2}}"#,
    ));
    assert_eq!(statuses(&gw, "/api", "2001:db8:1:2::a", 1).await, [200]);
    assert_eq!(
        statuses(&gw, "/api", "2001:db8:1:3::a", 2).await,
        [200, 429]
    );
    assert_eq!(statuses(&gw, "/api", "2001:db8:2::a", 1).await, [200]);
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_client_before_any_credential_check() {
    let up = Upstream::start_ok();
    let good = "kairos_good_key_for_the_throttle_test_0123";
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"name":"keyed","path":"/keyed","upstream":"u","auth":"api_key"}]"#,
        &with_admin(&format!(
            r#""api_keys":{{"keys":{{"k":{{"key_hash":"{}"}}}}}},
               "rate_limiting":{{"auth_failures":{{"rps":0.01,"burst":3}}}}"#,
            api_key::format_hash(&api_key::hash(good))
        )),
    ));
    let keyed = |ip: &'static str, key: &'static str| {
        client()
            .get(gw.url("/keyed"))
            .header("x-forwarded-for", ip)
            .header("x-api-key", key)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(keyed("203.0.113.9", "guess").await.unwrap().status(), 401);
    }
    let res = keyed("203.0.113.9", "guess").await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(header(&res, "retry-after").is_some());
    // Refused before the credential is looked at: the right key does not help now.
    assert_eq!(keyed("203.0.113.9", good).await.unwrap().status(), 429);
    // Another client is not affected.
    assert_eq!(keyed("203.0.113.10", good).await.unwrap().status(), 200);
    assert_eq!(up.count(), 1);

    // Wrong admin tokens count the same way.
    let admin = |token: &'static str| {
        client()
            .get(gw.url("/_kairos/routes"))
            .header("x-forwarded-for", "203.0.113.11")
            .bearer_auth(token)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(admin("wrong-token").await.unwrap().status(), 401);
    }
    assert_eq!(admin("wrong-token").await.unwrap().status(), 429);
    assert_eq!(admin(ADMIN).await.unwrap().status(), 429);
    let text = scrape_metrics(&gw, ADMIN).await;
    assert_eq!(ratelimited(&text, "keyed", "auth_failures"), Some(2.0));
}

#[tokio::test]
async fn identity_free_limits_count_requests_that_fail_authentication() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(&cfg(
        &up,
        r#"[{"path":"/keyed","upstream":"u","auth":"api_key"}]"#,
        r#""api_keys":{"keys":{"k":{"key_hash":"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}},
           "rate_limiting":{"per_ip":{"rps":0.01,"burst":2}}"#,
    ));
    assert_eq!(
        statuses(&gw, "/keyed", "198.51.100.20", 3).await,
        [401, 401, 429]
    );
}

#[tokio::test]
async fn a_declared_body_over_the_maximum_gets_413_and_uses_up_no_token() {
    let up = Upstream::start_ok();
    let gw = Gateway::start(
        &cfg(
            &up,
            r#"[{"path":"/api","upstream":"u"}]"#,
            r#""rate_limiting":{"per_ip":{"rps":0.01,"burst":1}}"#,
        )
        .replace(r#""workers":2,"#, r#""workers":2,"max_body_size":"1KB","#),
    );
    let res = client()
        .post(gw.url("/api"))
        .header("x-forwarded-for", "198.51.100.30")
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(header(&res, "x-ratelimit-remaining").is_none());
    assert_eq!(
        statuses(&gw, "/api", "198.51.100.30", 2).await,
        [200, 429],
        "the 413 used up no token"
    );
    assert_eq!(up.count(), 1);
}
