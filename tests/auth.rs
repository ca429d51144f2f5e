//! Edge security end to end with real keys made in the test (openssl for RSA, EC and Ed25519;
//! random HMAC secrets), a real JWKS server that rotates its keys, and every attack the
//! gateway must refuse: alg none, the RS256 -> HS256 confusion, expired and not-yet-valid
//! tokens, wrong issuer or audience, missing claims, tampering, garbage, the wrong scheme and
//! forged forwarded-claim headers. API keys from a header and the query string, permissions,
//! and keys that never reach a log line.

mod support;

use base64::Engine;
use jsonwebtoken::{encode, jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

const TOKEN: &str = "auth-test-admin-token-0123";
const HS_SECRET: &str = "an-hmac-secret-of-at-least-thirty-two-bytes!";
const API_KEY: &str = "kairos_test_key_for_partner_a_0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A private key made by openssl: (private PEM, public PEM).
fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let out = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&private)
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    assert!(public.status.success());
    (
        std::fs::read_to_string(&private).unwrap(),
        String::from_utf8(public.stdout).unwrap(),
    )
}

struct Keys {
    rsa: (String, String),
    rsa2: (String, String),
    ec: (String, String),
    ed: (String, String),
    _dir: tempfile::TempDir,
}

fn keys() -> Keys {
    kairos_rs::edge::auth::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let rsa_args = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    Keys {
        rsa: openssl_key(dir.path(), "rsa", &rsa_args),
        rsa2: openssl_key(dir.path(), "rsa2", &rsa_args),
        ec: openssl_key(
            dir.path(),
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        ed: openssl_key(dir.path(), "ed", &["-algorithm", "ed25519"]),
        _dir: dir,
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, &claims, key).unwrap()
}

fn hs(claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
        None,
        claims,
    )
}

fn claims(iss: &str, sub: &str) -> serde_json::Value {
    json!({"iss": iss, "sub": sub, "aud": "my-api", "exp": now() + 600, "scope": "orders:read"})
}

/// A JWKS document with the public half of `private_pem` under `kid`.
fn jwks(entries: &[(&str, &str)]) -> String {
    let keys: Vec<Jwk> = entries
        .iter()
        .map(|(kid, pem)| {
            let mut jwk = Jwk::from_encoding_key(
                &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
                Algorithm::RS256,
            )
            .unwrap();
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&json!({ "keys": keys })).unwrap()
}

struct Setup {
    gw: Gateway,
    up: Upstream,
    jwks_doc: Arc<Mutex<String>>,
    _jwks: Upstream,
    keys: Keys,
}

fn setup() -> Setup {
    let keys = keys();
    let jwks_doc = Arc::new(Mutex::new(jwks(&[("k1", &keys.rsa2.0)])));
    let doc = jwks_doc.clone();
    let jwks_server = Upstream::start(move |_| {
        Reply::ok(&doc.lock().unwrap()).header("content-type", "application/json")
    });
    let up = Upstream::start(|_| Reply::ok("ok"));
    let json_str = |s: &str| serde_json::to_string(s).unwrap();
    let config = format!(
        r#"{{"version":1,"server":{{"workers":1}},"admin":{{"token":"{TOKEN}"}},
        "upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
        "routes":[
          {{"name":"api","path":"/api/{{*rest}}","upstream":"u","auth":"jwt"}},
          {{"name":"admin-area","path":"/admin/{{*rest}}","upstream":"u","auth":"jwt","permissions":["admin"]}},
          {{"name":"partner","path":"/partner/{{*rest}}","upstream":"u","auth":"api_key","permissions":["orders:read"]}},
          {{"name":"writes","path":"/writes/{{*rest}}","upstream":"u","auth":"api_key","permissions":["orders:write"]}},
          {{"name":"either","path":"/either/{{*rest}}","upstream":"u","auth":["jwt","api_key"]}},
          {{"name":"open","path":"/open/{{*rest}}","upstream":"u"}}
        ],
        "jwt_validation":{{
          "secret":"{HS_SECRET}","algorithm":"HS256","issuer":"hs-issuer","audience":"my-api",
          "required_claims":["sub","exp"],"leeway":"5s",
          "forward_claims":{{"sub":"X-User-Id","tenant":"X-Tenant"}},
          "providers":[
            {{"algorithm":"RS256","public_key":{},"issuer":"rs-issuer","audience":"my-api"}},
            {{"algorithm":"ES256","public_key":{},"issuer":"es-issuer"}},
            {{"algorithm":"EdDSA","public_key":{},"issuer":"ed-issuer"}},
            {{"algorithm":"RS256","jwks_url":"{}/jwks.json","issuer":"jwks-issuer","jwks_refresh":"1h"}}
          ]}},
        "api_keys":{{"header_name":"X-API-Key","query_param":"api_key","keys":{{
          "partner-a":{{"key_hash":"{}","permissions":["orders:read"],"rate_limit":{{"rps":100,"burst":200}}}}
        }}}},
        "logging":{{"access_log":true,"level":"info"}}}}"#,
        up.url(),
        json_str(&keys.rsa.1),
        json_str(&keys.ec.1),
        json_str(&keys.ed.1),
        jwks_server.url(),
        kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(API_KEY)),
    );
    Setup {
        gw: Gateway::start(&config),
        up,
        jwks_doc,
        _jwks: jwks_server,
        keys,
    }
}

async fn call(gw: &Gateway, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = client().get(gw.url(path));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

async fn status(gw: &Gateway, path: &str, token: &str) -> u16 {
    call(gw, path, Some(&format!("Bearer {token}")))
        .await
        .status()
        .as_u16()
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn every_algorithm_is_accepted_with_its_own_key_and_claims_go_upstream() {
    let s = setup();
    let rsa = EncodingKey::from_rsa_pem(s.keys.rsa.0.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(s.keys.ec.0.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(s.keys.ed.0.as_bytes()).unwrap();
    let mut c = claims("hs-issuer", "alice");
    c["tenant"] = json!("acme");
    let tokens = [
        ("HS256", hs(c)),
        (
            "RS256",
            sign(Algorithm::RS256, &rsa, None, claims("rs-issuer", "bob")),
        ),
        (
            "ES256",
            sign(Algorithm::ES256, &ec, None, claims("es-issuer", "carol")),
        ),
        (
            "EdDSA",
            sign(Algorithm::EdDSA, &ed, None, claims("ed-issuer", "dave")),
        ),
    ];
    for (alg, token) in &tokens {
        // A forged X-User-Id from the client never reaches the upstream.
        let res = client()
            .get(s.gw.url("/api/orders"))
            .bearer_auth(token)
            .header("x-user-id", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{alg}");
        let seen = s.up.last();
        let users = seen.header_all("x-user-id");
        assert_eq!(users.len(), 1, "{alg}: {users:?}");
        assert_ne!(users[0], "admin", "{alg}");
        assert!(
            seen.header("authorization").is_some(),
            "forwarded unless stripped"
        );
    }
    assert_eq!(s.up.last().header("x-user-id"), Some("dave"));
    // The first token carried a tenant claim: it was forwarded as X-Tenant.
    status(&s.gw, "/api/t", &tokens[0].1).await;
    assert_eq!(s.up.last().header("x-tenant"), Some("acme"));
    assert_eq!(s.up.last().header("x-user-id"), Some("alice"));

    // An open route strips the forwarded-claim headers too: upstreams may trust them.
    let res = client()
        .get(s.gw.url("/open/x"))
        .header("x-user-id", "admin")
        .header("x-tenant", "evil")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(s.up.last().header("x-user-id"), None);
    assert_eq!(s.up.last().header("x-tenant"), None);
}

#[tokio::test]
async fn every_attack_is_refused_with_401_and_counted_by_reason() {
    let s = setup();
    let gw = &s.gw;
    let good = hs(claims("hs-issuer", "alice"));
    assert_eq!(status(gw, "/api/a", &good).await, 200);

    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("hs-issuer", "alice"))
    );
    // RS256 -> HS256 confusion: HS256 "signed" with the RSA public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(s.keys.rsa.1.as_bytes()).unwrap(),
        None,
        claims("rs-issuer", "mallory"),
    );
    let expired = hs(json!({"iss": "hs-issuer", "sub": "a", "aud": "my-api", "exp": now() - 60}));
    let future = hs(
        json!({"iss": "hs-issuer", "sub": "a", "aud": "my-api", "exp": now() + 600, "nbf": now() + 300}),
    );
    let wrong_iss = hs(claims("someone-else", "a"));
    let wrong_aud =
        hs(json!({"iss": "hs-issuer", "sub": "a", "aud": "other-api", "exp": now() + 600}));
    let no_sub = hs(json!({"iss": "hs-issuer", "aud": "my-api", "exp": now() + 600}));
    let no_exp = hs(json!({"iss": "hs-issuer", "sub": "a", "aud": "my-api"}));
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin_claims = claims("hs-issuer", "alice");
    admin_claims["scope"] = json!("admin");
    let tampered_payload = format!("{}.{}.{}", parts[0], b64(&admin_claims), parts[2]);
    let mut sig = parts[2].to_string();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], sig);
    let wrong_key = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-also-long-enough!!").unwrap(),
        None,
        claims("hs-issuer", "a"),
    );

    let cases: [(&str, String, &str); 12] = [
        ("alg none", none, "algorithm"),
        ("RS256 -> HS256 confusion", confused, "algorithm"),
        ("expired", expired, "expired"),
        ("nbf in the future", future, "not_yet_valid"),
        ("wrong issuer", wrong_iss, "issuer"),
        ("wrong audience", wrong_aud, "audience"),
        ("missing sub", no_sub, "missing_claim"),
        ("missing exp", no_exp, "missing_claim"),
        ("tampered payload", tampered_payload, "signature"),
        ("tampered signature", tampered_sig, "signature"),
        ("another key", wrong_key, "signature"),
        ("garbage", "not.a.jwt".into(), "malformed"),
    ];
    for (what, token, _) in &cases {
        let res = call(gw, "/api/a", Some(&format!("Bearer {token}"))).await;
        assert_eq!(res.status(), 401, "{what}");
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
        let rid = res.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        assert_eq!(body["error"]["request_id"], rid.as_str());
        // The reason is for the log and the metrics, never the client.
        assert_eq!(body["error"]["message"], "missing or invalid credentials");
    }
    // The wrong scheme and no credentials at all: a plain challenge.
    let res = call(gw, "/api/a", Some("Basic YWxpY2U6c2VjcmV0")).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer realm="kairos""#
    );
    assert_eq!(call(gw, "/api/a", None).await.status(), 401);
    // Valid, but without the route's permission: 403.
    assert_eq!(status(gw, "/admin/x", &good).await, 403);

    let m = scrape_metrics(gw, TOKEN).await;
    for (what, _, reason) in &cases {
        let n = metric(
            &m,
            "kairos_auth_failures_total",
            &[("route", "api"), ("method", "jwt"), ("reason", reason)],
        );
        assert!(
            n.is_some_and(|n| n >= 1.0),
            "{what}: no {reason} failure counted"
        );
    }
    assert_eq!(
        metric(
            &m,
            "kairos_auth_failures_total",
            &[("route", "api"), ("method", "jwt"), ("reason", "missing")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "kairos_auth_failures_total",
            &[
                ("route", "api"),
                ("method", "jwt"),
                ("reason", "wrong_scheme")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "kairos_auth_failures_total",
            &[
                ("route", "admin-area"),
                ("method", "jwt"),
                ("reason", "permission")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.up.count(),
        1,
        "only the one good request reached the upstream"
    );
}

#[tokio::test]
async fn jwks_keys_rotate_and_the_gateway_follows() {
    let s = setup();
    let k1 = EncodingKey::from_rsa_pem(s.keys.rsa2.0.as_bytes()).unwrap();
    let k2 = EncodingKey::from_rsa_pem(s.keys.rsa.0.as_bytes()).unwrap();
    let t1 = sign(
        Algorithm::RS256,
        &k1,
        Some("k1"),
        claims("jwks-issuer", "u1"),
    );
    assert_eq!(status(&s.gw, "/api/j", &t1).await, 200);

    // The identity provider rotates: k1 is withdrawn, k2 published.
    *s.jwks_doc.lock().unwrap() = jwks(&[("k2", &s.keys.rsa.0)]);
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the refetch rate cap
    let t2 = sign(
        Algorithm::RS256,
        &k2,
        Some("k2"),
        claims("jwks-issuer", "u2"),
    );
    assert_eq!(
        status(&s.gw, "/api/j", &t2).await,
        200,
        "an unknown kid refetches the JWKS"
    );
    let fresh_k1 = sign(
        Algorithm::RS256,
        &k1,
        Some("k1"),
        claims("jwks-issuer", "u3"),
    );
    assert_eq!(status(&s.gw, "/api/j", &fresh_k1).await, 401, "k1 is gone");
    // A token naming a key that does not exist at all.
    let bogus = sign(
        Algorithm::RS256,
        &k2,
        Some("nope"),
        claims("jwks-issuer", "u4"),
    );
    assert_eq!(status(&s.gw, "/api/j", &bogus).await, 401);
    let m = scrape_metrics(&s.gw, TOKEN).await;
    assert!(metric(
        &m,
        "kairos_auth_failures_total",
        &[
            ("route", "api"),
            ("method", "jwt"),
            ("reason", "unknown_key")
        ]
    )
    .is_some());
    // A token whose header points at its own key set: jku is never followed.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("evil".into());
    h.jku = Some(format!("{}/jwks.json", s.up.url()));
    let jku = encode(&h, &claims("jwks-issuer", "u5"), &k2).unwrap();
    assert_eq!(status(&s.gw, "/api/j", &jku).await, 401);
    assert!(
        s.up.requests().iter().all(|r| r.target != "/jwks.json"),
        "the gateway fetched a jku URL"
    );
}

#[tokio::test]
async fn api_keys_from_header_or_query_with_permissions_and_never_logged() {
    let s = setup();
    let c = client();
    let res = c
        .get(s.gw.url("/partner/orders?x=1"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = s.up.last();
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the key does not go upstream"
    );
    assert_eq!(seen.target, "/partner/orders?x=1");

    let res = c
        .get(s.gw.url(&format!("/partner/orders?a=1&api_key={API_KEY}&b=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        s.up.last().target,
        "/partner/orders?a=1&b=2",
        "query key removed"
    );

    let res = c
        .get(s.gw.url("/partner/orders"))
        .header("x-api-key", "kairos_wrong_key_000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"ApiKey realm="kairos""#
    );
    let res = c
        .get(s.gw.url("/writes/orders"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "the key lacks orders:write");
    assert_eq!(
        c.get(s.gw.url("/partner/x")).send().await.unwrap().status(),
        401
    );
    // Either scheme on one route.
    let res = c
        .get(s.gw.url("/either/x"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        status(&s.gw, "/either/x", &hs(claims("hs-issuer", "alice"))).await,
        200
    );
}

#[test]
fn keys_never_reach_the_logs_and_plaintext_keys_come_from_the_environment() {
    let up = Upstream::start_ok();
    let key = "kairos_env_key_abcdefghijklmnopqrstuvwxyz";
    let config = format!(
        r#"{{"version":1,"server":{{"workers":1}},
        "upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
        "routes":[{{"name":"partner","path":"/p/{{*rest}}","upstream":"u","auth":"api_key"}}],
        "api_keys":{{"query_param":"api_key","keys":{{"env-key":{{"key":"${{PARTNER_KEY}}"}}}}}},
        "logging":{{"access_log":true,"level":"debug","format":"json"}}}}"#,
        up.url()
    );
    let mut gw = GatewayProcess::start_with_env(&config, &[("PARTNER_KEY", key)]);
    install_crypto_provider();
    let c = reqwest::blocking::Client::new();
    let ok = c
        .get(gw.url("/p/a"))
        .header("x-api-key", key)
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    let q = c
        .get(gw.url(&format!("/p/b?api_key={key}")))
        .send()
        .unwrap();
    assert_eq!(q.status(), 200);
    let bad = c
        .get(gw.url("/p/c"))
        .header("x-api-key", "kairos_guess_0000000000000000000000000")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(gw.stop());
    let logs = gw.logs().join("\n");
    assert!(
        logs.contains("env-key"),
        "the audit log names the key: {logs}"
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains("kairos::access") && l.contains(r#""identity":"env-key""#)),
        "the access log names the caller: {logs}"
    );
    // One audit line per authenticated request: two allowed, one refused with its reason.
    let audit: Vec<serde_json::Value> = gw
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "kairos::audit")
        .collect();
    assert_eq!(audit.len(), 3, "{logs}");
    for (line, decision) in audit.iter().zip(["allow", "allow", "deny"]) {
        assert_eq!(line["decision"], decision, "{line}");
        assert_eq!(line["route"], "partner", "{line}");
        assert_eq!(line["scheme"], "api_key", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["request_id"].is_string(), "{line}");
    }
    assert_eq!(audit[0]["identity"], "env-key");
    assert_eq!(audit[0]["message"], "authenticated request");
    assert!(audit[2]["identity"].is_null() && audit[2]["reason"].is_string());
    assert_eq!(audit[2]["message"], "authentication failed");
    assert!(!logs.contains(key), "a key leaked into the log");
    assert!(
        !logs.contains("kairos_guess"),
        "a presented key leaked into the log"
    );

    // Written into the file, a plaintext key is refused.
    let text = config.replace("${PARTNER_KEY}", key);
    let err = kairos_rs::config::load_str(&text, "t.json", Path::new(".")).unwrap_err();
    let e = &err.errors[0];
    assert_eq!(e.path, "api_keys.keys.env-key.key");
    assert!(e.message.contains("environment"), "{}", e.message);
    assert!(!err.to_string().contains(key), "the error repeats the key");
}

#[tokio::test]
async fn review_cases_expiry_presence_duplicates_and_stray_credentials() {
    let s = setup();
    let gw = &s.gw;
    // A configured iss/aud must be present, not only correct when present.
    let no_iss = hs(json!({"sub": "a", "aud": "my-api", "exp": now() + 600}));
    assert_eq!(status(gw, "/api/a", &no_iss).await, 401);
    let no_aud = hs(json!({"iss": "hs-issuer", "sub": "a", "exp": now() + 600}));
    assert_eq!(status(gw, "/api/a", &no_aud).await, 401);
    // An iss that is not a string cannot dodge the choice of provider.
    let arr_iss =
        hs(json!({"iss": ["hs-issuer"], "sub": "a", "aud": "my-api", "exp": now() + 600}));
    assert_eq!(status(gw, "/api/a", &arr_iss).await, 401);
    // Two Authorization headers: one would be verified and both forwarded.
    let good = hs(claims("hs-issuer", "alice"));
    let res = client()
        .get(gw.url("/api/a"))
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", "Bearer forged.token.here")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Authenticated by API key, a bearer token alongside is not passed on unverified.
    let res = client()
        .get(gw.url("/either/x"))
        .header("x-api-key", API_KEY)
        .header("authorization", "Bearer forged.token.here")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(s.up.last().header("authorization"), None);
    // Stray credentials never go upstream, and X_User_Id cannot stand in for X-User-Id.
    let res = client()
        .get(gw.url(&format!("/open/x?a=1&api_key={API_KEY}")))
        .header("x-api-key", API_KEY)
        .header("x_user_id", "admin")
        .header("x_other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = s.up.last();
    assert_eq!(seen.target, "/open/x?a=1");
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("x_user_id"), None);
    assert_eq!(seen.header("x_other"), Some("kept"));

    // Expiry with no leeway: a fractional exp is honoured by the verified-token cache too,
    // and `require_exp: false` makes exp optional, never ignored.
    let up = Upstream::start_ok();
    let cfg = |require_exp: bool| {
        format!(
            r#"{{"version":1,"server":{{"workers":1}},"upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
            "routes":[{{"path":"/{{*r}}","upstream":"u","auth":"jwt"}}],
            "jwt_validation":{{"secret":"{HS_SECRET}","leeway":"0s","require_exp":{require_exp}}},
            "logging":{{"access_log":false,"level":"error"}}}}"#,
            up.url()
        )
    };
    let strict = Gateway::start(&cfg(true));
    let soon = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 1.2;
    let t = hs(json!({"sub": "a", "exp": soon}));
    assert_eq!(status(&strict, "/x", &t).await, 200);
    // Timestamps are whole seconds: 2 s past exp is expired however the fraction rounds.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(
        status(&strict, "/x", &t).await,
        401,
        "a cached token outlived its exp"
    );
    let lax = Gateway::start(&cfg(false));
    assert_eq!(status(&lax, "/x", &hs(json!({"sub": "a"}))).await, 200);
    let expired = hs(json!({"sub": "a", "exp": now() - 10}));
    assert_eq!(
        status(&lax, "/x", &expired).await,
        401,
        "exp optional, never ignored"
    );
}

#[tokio::test]
async fn underscore_variants_of_the_api_key_header_never_go_upstream() {
    let s = setup();
    let c = client();
    // Authenticated by the real header, a stray X_API_Key alongside is not passed on.
    let res = c
        .get(s.gw.url("/partner/orders"))
        .header("x-api-key", API_KEY)
        .header("X_API_Key", "kairos_other_key_0123456789")
        .header("x_api-key", "mixed")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = s.up.last();
    assert_eq!(seen.header("x_api_key"), None);
    assert_eq!(seen.header("x_api-key"), None);
    // On an open route too, where nothing reads it: an upstream behind a CGI-style stack
    // would read it as X-API-Key.
    let res = c
        .get(s.gw.url("/open/x"))
        .header("X_API_Key", API_KEY)
        .header("x_api_keys", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = s.up.last();
    assert_eq!(seen.header("x_api_key"), None);
    assert_eq!(seen.header("x_api_keys"), Some("kept"));
}

#[tokio::test]
async fn query_keys_are_form_decoded() {
    let up = Upstream::start_ok();
    let hash = |k: &str| kairos_rs::base::hash::format_hash(&kairos_rs::base::hash::hash(k));
    let config = format!(
        r#"{{"version":1,"server":{{"workers":1}},"upstreams":{{"u":{{"servers":[{{"url":"{}"}}]}}}},
        "routes":[{{"path":"/{{*r}}","upstream":"u","auth":"api_key"}}],
        "api_keys":{{"query_param":"api_key","keys":{{
          "plus":{{"key_hash":"{}"}},
          "control":{{"key_hash":"{}"}}
        }}}},
        "logging":{{"access_log":false,"level":"error"}}}}"#,
        up.url(),
        hash("kairos+plus_key_0123456789"),
        hash("kairos\u{1}control_key_0123456789"),
    );
    let gw = Gateway::start(&config);
    let get = |q: &str| client().get(gw.url(&format!("/x?api_key={q}"))).send();
    assert_eq!(
        get("kairos%2Bplus_key_0123456789").await.unwrap().status(),
        200,
        "%2B is +"
    );
    assert_eq!(
        get("kairos%2bplus_key_0123456789").await.unwrap().status(),
        200
    );
    assert_eq!(
        get("kairos+plus_key_0123456789").await.unwrap().status(),
        401,
        "+ is a space"
    );
    assert_eq!(
        get("kairos%01control_key_0123456789")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("kairos%+1control_key_0123456789")
            .await
            .unwrap()
            .status(),
        401,
        "%+1 is not an escape of byte 1"
    );
}
