//! Multi-tenancy against a real upstream: each identification method, `tenant_unknown` and
//! `tenant_required`, tenant routes (isolation, winning over global ones), the tenant-wide
//! rate limit, quotas and their headers, `{tenant}` in transformations, per-tenant metrics.

mod support;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use support::{client, config, scrape_metrics, Gateway, Upstream};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const KEY_A: &str = "ka-0123456789abcdef";
const KEY_C: &str = "kc-0123456789abcdef";
const TOKEN: &str = "admin-token-0123456789";

fn hash(k: &str) -> String {
    kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(k))
}

fn jwt(claims: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut c = claims;
    c["exp"] = exp.into();
    encode(
        &Header::default(),
        &c,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Global routes `/orders/{*rest}` and `/open`, tenants a (host, key, own `/orders` route),
/// b (own `/b-only`), c (key only, quotas), d (rate limited).
fn gateway(up: &Upstream, tenancy: &str) -> Gateway {
    kairos_rs::edge::auth::crypto::install();
    let extra = format!(
        r#""admin":{{"token":"{TOKEN}"}},
        "jwt_validation":{{"secret":"{SECRET}"}},
        "api_keys":{{"header_name":"X-API-Key","keys":{{
            "key-a":{{"key_hash":"{}"}}, "key-c":{{"key_hash":"{}"}}}}}},
        "tenancy":{tenancy},
        "tenants":{{
          "tenant-a":{{"hosts":["a.example.com"],"api_keys":["key-a"],
            "routes":[{{"name":"a-orders","path":"/orders/{{*rest}}","upstream":"u","rewrite":"/a/{{rest}}",
                        "transformations":[{{"type":"header_set","headers":{{"X-Tenant":"{{tenant}}"}}}}]}}]}},
          "tenant-b":{{"routes":[{{"name":"b-only","path":"/b-only","upstream":"u"}}]}},
          "tenant-c":{{"api_keys":["key-c"],"quotas":{{"daily_requests":3,"monthly_requests":100,"warn_at":0.6}}}},
          "tenant-d":{{"rate_limits":{{"rps":0.5,"burst":2}}}}
        }}"#,
        hash(KEY_A),
        hash(KEY_C),
    );
    Gateway::start(&config(
        &up.url(),
        r#"[{"name":"orders","path":"/orders/{*rest}","upstream":"u"},
            {"name":"open","path":"/open","upstream":"u",
             "transformations":[{"type":"header_set","headers":{"X-Tenant":"{tenant}"}}]}]"#,
        &extra,
    ))
}

const MEMORY: &str = r#"{"identify_by":["api_key","jwt_claim","header","host"],
    "quota_store":{"backend":"memory"}}"#;

async fn error_code(res: reqwest::Response) -> String {
    let v: Value = res.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn each_identification_method_finds_the_tenant() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    let c = client();
    // header
    let res = c
        .get(gw.url("/orders/1"))
        .header("X-Tenant-Id", "tenant-a")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/a/1", "tenant a's own route");
    assert_eq!(up.last().header("x-tenant"), Some("tenant-a"));
    // host (with port and upper case)
    let res = c
        .get(gw.url("/orders/2"))
        .header("Host", "A.Example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/a/2");
    // api_key, on a route that does not authenticate
    let res = c
        .get(gw.url("/orders/3"))
        .header("X-API-Key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/a/3");
    // jwt_claim
    let res = c
        .get(gw.url("/orders/4"))
        .bearer_auth(jwt(json!({"sub": "u1", "tenant": "tenant-a"})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/a/4");
    // No tenant: the global route.
    let res = c.get(gw.url("/orders/5")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/orders/5");
}

#[tokio::test]
async fn the_first_method_in_order_wins() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    // The key says tenant-a, the header tenant-b: api_key comes first.
    let res = client()
        .get(gw.url("/b-only"))
        .header("X-API-Key", KEY_A)
        .header("X-Tenant-Id", "tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "tenant-a does not see tenant-b's route");
    // An invalid key yields nothing; the header decides.
    let res = client()
        .get(gw.url("/b-only"))
        .header("X-API-Key", "not-a-key-0123456789")
        .header("X-Tenant-Id", "tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn unknown_tenants_are_refused_and_require_needs_one() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    let c = client();
    let res = c
        .get(gw.url("/open"))
        .header("X-Tenant-Id", "nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "tenant_unknown");
    let res = c
        .get(gw.url("/open"))
        .bearer_auth(jwt(json!({"sub": "u1", "tenant": "ghost"})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "tenant_unknown");
    assert_eq!(up.count(), 0, "nothing refused reached the upstream");

    let gw = gateway(
        &up,
        r#"{"require":true,"identify_by":["header"],"quota_store":{"backend":"memory"}}"#,
    );
    let res = c.get(gw.url("/open")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "tenant_required");
    // A host is not a method of this config: it yields nothing.
    let res = c
        .get(gw.url("/open"))
        .header("Host", "a.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = c
        .get(gw.url("/open"))
        .header("X-Tenant-Id", "tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_tenant_never_reaches_another_tenants_route() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    let c = client();
    for (who, path) in [
        (Some("tenant-a"), "/b-only"),
        (Some("tenant-c"), "/b-only"),
        (None, "/b-only"),
        (Some("tenant-a"), "/b-only/"),
        (Some("tenant-a"), "/B-only"),
    ] {
        let mut req = c.get(gw.url(path));
        if let Some(t) = who {
            req = req.header("X-Tenant-Id", t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 404, "{who:?} {path}");
        assert_eq!(error_code(res).await, "route_not_found");
    }
    assert_eq!(up.count(), 0);
    // tenant-b's /orders is the global one (tenant-a's own route is not in its table).
    let res = c
        .get(gw.url("/orders/9"))
        .header("X-Tenant-Id", "tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().target, "/orders/9");
}

#[tokio::test]
async fn tenant_rate_limit_is_one_bucket_for_the_tenant() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    let c = client();
    let mut statuses = Vec::new();
    for path in ["/open", "/orders/1", "/open"] {
        let res = c
            .get(gw.url(path))
            .header("X-Tenant-Id", "tenant-d")
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            assert_eq!(error_code(res).await, "rate_limited");
        }
    }
    assert_eq!(statuses, vec![200, 200, 429], "burst 2 across routes");
    // Another tenant has its own budget (none here).
    for _ in 0..5 {
        let res = c
            .get(gw.url("/open"))
            .header("X-Tenant-Id", "tenant-b")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let text = scrape_metrics(&gw, TOKEN).await;
    assert_eq!(
        support::metric(
            &text,
            "kairos_ratelimited_total",
            &[("route", "open"), ("scope", "tenant")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn quotas_count_warn_and_refuse_with_headers() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let res = c
            .get(gw.url("/open"))
            .header("X-API-Key", KEY_C)
            .send()
            .await
            .unwrap();
        let h = |n: &str| {
            res.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        seen.push((
            res.status().as_u16(),
            h("x-quota-limit"),
            h("x-quota-remaining"),
            h("x-quota-warning").is_some(),
            h("retry-after"),
        ));
        let reset: u64 = h("x-quota-reset").unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&reset), "{reset}");
        if res.status() == 429 {
            assert_eq!(h("retry-after"), Some(reset.to_string()));
            assert_eq!(error_code(res).await, "quota_exceeded");
        }
    }
    let s = |x: &str| Some(x.to_string());
    assert_eq!(seen[0], (200, s("3"), s("2"), false, None));
    assert_eq!(
        seen[1],
        (200, s("3"), s("1"), true, None),
        "2/3 > warn_at 0.6"
    );
    assert_eq!(seen[2], (200, s("3"), s("0"), true, None));
    assert_eq!(seen[3].0, 429);
    assert_eq!(seen[3].2, s("0"));
    assert_eq!(up.count(), 3, "the refused request never left the gateway");
    // A response refused before the quota step (no route here) carries where it stands.
    let res = c
        .get(gw.url("/nowhere"))
        .header("X-API-Key", KEY_C)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-quota-remaining"], "0");
    assert_eq!(res.headers()["x-quota-limit"], "3");
    let text = scrape_metrics(&gw, TOKEN).await;
    let m = |name: &str, labels: &[(&str, &str)]| support::metric(&text, name, labels);
    assert_eq!(
        m(
            "kairos_tenant_requests_total",
            &[("tenant", "tenant-c"), ("class", "2xx")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m(
            "kairos_tenant_requests_total",
            &[("tenant", "tenant-c"), ("class", "4xx")]
        ),
        Some(2.0),
        "the 429 and the 404"
    );
    assert_eq!(
        m(
            "kairos_tenant_quota_used_ratio",
            &[("tenant", "tenant-c"), ("period", "day")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "kairos_tenant_quota_warnings_total",
            &[("tenant", "tenant-c")]
        ),
        Some(3.0)
    );
    assert!(text.contains("kairos_tenant_request_duration_seconds_bucket{tenant=\"tenant-c\""));
}

#[tokio::test]
async fn tenant_variable_and_other_label() {
    let up = Upstream::start_ok();
    let gw = gateway(&up, MEMORY);
    let c = client();
    let res = c
        .get(gw.url("/open"))
        .header("X-Tenant-Id", "tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.last().header("x-tenant"), Some("tenant-b"));
    // No tenant: `{tenant}` has no value, so the step fails like any absent variable.
    let res = c.get(gw.url("/open")).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "transform_failed");
    let _ = c
        .get(gw.url("/open"))
        .header("X-Tenant-Id", "ghost")
        .send()
        .await
        .unwrap();
    let text = scrape_metrics(&gw, TOKEN).await;
    assert_eq!(
        support::metric(
            &text,
            "kairos_tenant_requests_total",
            &[("tenant", "other"), ("class", "4xx")]
        ),
        Some(2.0),
        "no tenant and an unknown one count as `other`"
    );
    assert!(!text.contains("tenant=\"ghost\""));
}

#[test]
fn the_roadmap_example_is_valid_as_written() {
    let text = r#"{
      "upstreams": {"orders": {"servers": [{"url": "http://127.0.0.1:9001"}]}},
      "routes": [{"name": "orders", "path": "/orders/{*rest}", "upstream": "orders"}],
      "tenants": {
        "tenant-a": { "routes": [{"name": "a-orders", "path": "/orders/{*rest}", "upstream": "orders"}], "rate_limits": { "rps": 1000 }, "quotas": { "monthly_requests": 1000000 } },
        "tenant-b": { "routes": [{"name": "b-orders", "path": "/orders/{*rest}", "upstream": "orders"}], "rate_limits": { "rps": 500 },  "quotas": { "monthly_requests": 500000 } }
      }
    }"#;
    let cfg = kairos_rs::config::load_str(text, "roadmap", std::path::Path::new("/tmp"))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = cfg.tenancy.expect("tenancy");
    assert_eq!(t.tenants.len(), 2);
    assert_eq!(
        t.tenants[0].rate_limit.map(|r| r.burst),
        Some(1000),
        "burst defaults to rps"
    );
    assert_eq!(
        t.quota_store,
        kairos_rs::config::model::QuotaStoreConfig::File {
            path: "/tmp/kairos-quotas.db".into()
        }
    );
    // The CONFIG.md `tenancy` example too.
    let text = r#"{
      "upstreams": {"orders": {"servers": [{"url": "http://127.0.0.1:9001"}]}},
      "api_keys": {"keys": {"partner-a": {"key_hash": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}},
      "jwt_validation": {"secret": "a-test-secret-that-is-long-enough-for-hs256"},
      "tenancy": {
        "identify_by": ["api_key", "jwt_claim", "header", "host"],
        "header": "X-Tenant-Id",
        "claim": "tenant",
        "require": true,
        "quota_store": { "backend": "file", "path": "kairos-quotas.db" }
      },
      "tenants": {
        "tenant-a": {
          "hosts": ["a.example.com"],
          "api_keys": ["partner-a"],
          "routes": [ { "name": "a-orders", "path": "/orders/{*rest}", "upstream": "orders" } ],
          "rate_limits": { "rps": 1000, "burst": 2000 },
          "quotas": { "monthly_requests": 1000000 }
        }
      }
    }"#;
    kairos_rs::config::load_str(text, "config-md", std::path::Path::new("/tmp"))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The README's SaaS example (three tenants) is a valid config, its key hashes filled in.
#[test]
fn the_readme_saas_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### Tenants").expect("a Tenants section")..];
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a JSON block");
    let block = block
        .replacen(
            "\"sha256:...\"",
            &format!("\"{}\"", hash("acme-prod-key-0123")),
            1,
        )
        .replacen(
            "\"sha256:...\"",
            &format!("\"{}\"", hash("acme-stg-key-0123")),
            1,
        )
        .replace("/var/lib/kairos/quotas.db", "quotas.db");
    let text = format!(
        r#"{{"upstreams": {{"orders": {{"servers": [{{"url": "http://127.0.0.1:1"}}]}},
             "reports": {{"servers": [{{"url": "http://127.0.0.1:2"}}]}},
             "reports-acme": {{"servers": [{{"url": "http://127.0.0.1:3"}}]}}}},
        {block}}}"#
    );
    let lookup = |k: &str| (k == "JWT_SECRET").then(|| SECRET.to_string());
    let cfg = kairos_rs::config::load_str_with_env(
        &text,
        "readme",
        std::path::Path::new("/tmp"),
        &lookup,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = cfg
        .tenancy
        .as_ref()
        .unwrap()
        .tenants
        .iter()
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(ids, ["acme", "globex", "initech"]);
}

/// Route listings say whose a route is, and show a tenant route's values from the environment
/// as written; a tenant route's name may not come from the environment.
#[test]
fn listings_name_the_tenant_and_never_expand_the_environment() {
    let text = r#"{
      "upstreams": {"u": {"servers": [{"url": "http://127.0.0.1:9001"}]}},
      "routes": [{"name": "orders", "path": "/orders", "upstream": "u"}],
      "tenants": {"acme": {"routes": [{"name": "acme-orders", "path": "${ACME_PATH}", "upstream": "u"}]}}
    }"#;
    let lookup = |k: &str| (k == "ACME_PATH").then(|| "/orders".to_string());
    let cfg =
        kairos_rs::config::load_str_with_env(text, "t", std::path::Path::new("/tmp"), &lookup)
            .unwrap_or_else(|e| panic!("{e}"));
    let json: Value = serde_json::from_str(&kairos_rs::cli::render_routes(
        &cfg,
        kairos_rs::admin::render::Format::Json,
    ))
    .unwrap();
    assert_eq!(json[0]["tenant"], Value::Null);
    assert_eq!(json[1]["tenant"], "acme");
    assert_eq!(json[1]["path"], "${ACME_PATH}");
    let bad = text.replace("acme-orders", "${ACME_PATH}");
    let errs =
        kairos_rs::config::load_str_with_env(&bad, "t", std::path::Path::new("/tmp"), &lookup)
            .unwrap_err()
            .errors;
    assert_eq!(errs[0].path, "tenants.acme.routes[0].name");
}
