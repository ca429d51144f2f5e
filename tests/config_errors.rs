//! Every kind of config error, with the message, JSON path and location an operator sees.

use kairos_rs::config::{load_str_with_env, ConfigError};
use std::path::Path;

fn errors(text: &str) -> Vec<ConfigError> {
    errors_env(text, &[])
}

fn errors_env(text: &str, env: &[(&str, &str)]) -> Vec<ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match load_str_with_env(text, "t.json", Path::new("."), &lookup) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.errors,
    }
}

fn one(text: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap()
}

const UP: &str = r#""upstreams": {"users": {"servers": [{"url": "http://127.0.0.1:9001"}]}}"#;

#[test]
fn syntax_error_names_line_and_column() {
    let e = one("{\n  \"version\": 1,\n  \"server\": {\"port\": 80,}\n}");
    assert_eq!((e.line, e.column), (Some(3), Some(25)));
    assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
}

#[test]
fn unknown_field_suggests_the_right_one_and_points_at_the_key() {
    let text = format!(
        "{{\n  {UP},\n  \"routes\": [\n    {{\"path\": \"/a\", \"upstrem\": \"users\"}}\n  ]\n}}"
    );
    let errs = errors(&text);
    let e = errs
        .iter()
        .find(|e| e.message.contains("upstrem"))
        .expect("unknown field reported");
    assert_eq!(e.path, "routes[0].upstrem");
    assert_eq!(e.message, "unknown field `upstrem`");
    assert_eq!(e.hint.as_deref(), Some("did you mean `upstream`?"));
    assert_eq!((e.line, e.column), (Some(4), Some(20)));
    let rendered = e.to_string();
    assert_eq!(
        rendered,
        "4:20: routes[0].upstrem: unknown field `upstrem` (did you mean `upstream`?)"
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"{
  "server": {"prot": 8080, "request_timeout": "soon"},
  "upstreams": {
    "users": {"servers": [{"url": "127.0.0.1:9001", "weight": 0}], "conect_timeout": "1s"}
  },
  "routes": [
    {"path": "/a", "upstream": "user"},
    {"path": "/b", "upstream": "users", "timeout": "5 parsecs"}
  ]
}"#;
    let errs = errors(text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    // Unknown fields are structural: they are all reported together first.
    assert_eq!(
        paths,
        vec!["server.prot", "upstreams.users.conect_timeout"],
        "{errs:#?}"
    );
    assert_eq!(
        errs[1].hint.as_deref(),
        Some("did you mean `connect_timeout`?")
    );

    // Once the structure is right, every semantic error is reported in one pass.
    let fixed = text
        .replace("prot", "port")
        .replace("conect_timeout", "connect_timeout");
    let errs = errors(&fixed);
    let got: Vec<(&str, usize)> = errs
        .iter()
        .map(|e| (e.path.as_str(), e.line.unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("server.request_timeout", 2),
            ("upstreams.users.servers[0].url", 4),
            ("upstreams.users.servers[0].weight", 4),
            ("routes[0].upstream", 7),
            ("routes[1].timeout", 8),
        ],
        "{errs:#?}"
    );
    let by_path = |p: &str| errs.iter().find(|e| e.path == p).unwrap();
    assert!(by_path("server.request_timeout")
        .message
        .contains("\"soon\""));
    assert!(by_path("upstreams.users.servers[0].url")
        .message
        .contains("needs a scheme"));
    assert!(by_path("upstreams.users.servers[0].weight")
        .message
        .contains("out of range"));
    let up = by_path("routes[0].upstream");
    assert_eq!(up.message, "unknown upstream `user`");
    assert_eq!(up.hint.as_deref(), Some("did you mean `users`?"));
    assert!(by_path("routes[1].timeout")
        .message
        .contains("unknown unit"));
}

#[test]
fn conflicting_routes_are_an_error() {
    let text = format!(
        r#"{{{UP}, "routes": [
            {{"name": "a", "path": "/users/{{id}}", "methods": ["GET"], "upstream": "users"}},
            {{"name": "b", "path": "/users/{{uid}}", "methods": ["GET", "POST"], "upstream": "users"}},
            {{"name": "c", "path": "/users/{{uid}}", "methods": ["DELETE"], "upstream": "users"}}
        ]}}"#
    );
    let e = one(&text);
    assert_eq!(e.path, "routes[1].path");
    assert!(
        e.message.contains("can never be told apart from routes[0]"),
        "{}",
        e.message
    );
}

#[test]
fn duplicate_route_names_and_keys() {
    let text = format!(
        r#"{{{UP}, "routes": [{{"name": "x", "path": "/a", "upstream": "users"}}, {{"name": "x", "path": "/b", "upstream": "users"}}]}}"#
    );
    let e = one(&text);
    assert_eq!(e.path, "routes[1].name");
    assert!(e.message.contains("already used by routes[0]"));

    let e = one(&format!(r#"{{{UP}, "routes": [], "routes": []}}"#));
    assert_eq!(e.path, "routes");
    assert!(e.message.contains("appears twice"));
}

#[test]
fn bad_urls() {
    for (url, want) in [
        ("ftp://h:1", "not supported"),
        ("http://h:1/prefix", "must not have a path"),
        ("http://user:pw@h:1", "credentials"),
        ("not a url", "not a valid URL"),
    ] {
        let text = format!(r#"{{"upstreams": {{"u": {{"servers": [{{"url": "{url}"}}]}}}}}}"#);
        let e = one(&text);
        assert_eq!(e.path, "upstreams.u.servers[0].url");
        assert!(e.message.contains(want), "{url}: {}", e.message);
    }
}

#[test]
fn bad_paths_rewrites_and_methods() {
    let text = format!(
        r#"{{{UP}, "routes": [
            {{"path": "no-slash", "upstream": "users"}},
            {{"path": "/a/{{id}}", "rewrite": "/b/{{name}}", "upstream": "users"}},
            {{"path": "/c", "methods": ["GTE"], "upstream": "users"}},
            {{"path": "/_kairos/mine", "upstream": "users"}}
        ]}}"#
    );
    let errs = errors(&text);
    let find = |p: &str| {
        errs.iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} missing: {errs:#?}"))
    };
    assert!(find("routes[0].path")
        .message
        .contains("must start with '/'"));
    assert!(find("routes[1].rewrite").message.contains("{name}"));
    assert_eq!(
        find("routes[2].methods[0]").hint.as_deref(),
        Some("did you mean `GET`?")
    );
    assert!(find("routes[3].path").message.contains("reserved"));
}

#[test]
fn wrong_types_are_named() {
    let e = one(r#"{"server": {"port": "eighty"}}"#);
    assert_eq!(e.path, "server.port");
    assert!(e.message.starts_with("wrong type"), "{}", e.message);
    assert_eq!(e.line, Some(1));
}

#[test]
fn environment_variables_are_substituted_or_named_when_missing() {
    let text = format!(
        r#"{{{UP}, "admin": {{"token": "${{KAIROS_TEST_TOKEN}}"}}, "routes": [{{"path": "${{ROUTE_PREFIX}}/a", "upstream": "users"}}]}}"#
    );
    let errs = errors_env(&text, &[("ROUTE_PREFIX", "/api")]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "admin.token");
    assert_eq!(
        errs[0].message,
        "environment variable `KAIROS_TEST_TOKEN` is not set"
    );

    let lookup = |k: &str| match k {
        "KAIROS_TEST_TOKEN" => Some("0123456789abcdef0123".to_string()),
        "ROUTE_PREFIX" => Some("/api".to_string()),
        _ => None,
    };
    let cfg = load_str_with_env(&text, "t.json", Path::new("."), &lookup).unwrap();
    assert_eq!(cfg.admin.token.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(cfg.routes[0].path, "/api/a");
}

#[test]
fn rate_limiting_errors_name_the_key_and_the_fix() {
    let text = format!(
        r#"{{{UP}, "jwt_validation": {{"secret": "0123456789abcdef0123456789abcdef"}},
            "rate_limiting": {{"backend": "redis", "on_backend_error": "maybe",
                               "per_ip": {{"rps": 0}}, "global": {{"rps": 5, "burst": 0}}}},
            "routes": [{{"path": "/a", "upstream": "users",
                         "rate_limit": {{"per_user": {{"rps": 1}}, "per_api_key": {{"rps": 1}}}}}},
                       {{"path": "/b", "upstream": "users", "auth": "jwt",
                         "rate_limit": {{"per_user": {{"rps": 1}}}}}}]}}"#
    );
    let errs = errors(&text);
    let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "rate_limiting.global.burst",
            "rate_limiting.on_backend_error",
            "rate_limiting.per_ip.rps",
            "rate_limiting.redis_url",
            "routes[0].rate_limit.per_api_key",
            "routes[0].rate_limit.per_user",
        ],
        "{errs:#?}"
    );
    let find = |p: &str| errs.iter().find(|e| e.path == p).unwrap();
    assert!(find("rate_limiting.redis_url")
        .hint
        .as_deref()
        .unwrap()
        .contains("redis://"));
    assert!(find("rate_limiting.per_ip.rps")
        .hint
        .as_deref()
        .unwrap()
        .contains("burst"));
    assert!(find("routes[0].rate_limit.per_user")
        .message
        .contains("does not accept JWTs"));
    let e = one(&format!(
        r#"{{{UP}, "rate_limiting": {{"backend": "redsi"}}}}"#
    ));
    assert_eq!(e.hint.as_deref(), Some("did you mean `redis`?"));
    let e = one(&format!(
        r#"{{{UP}, "rate_limiting": {{"backend": "redis", "redis_url": "http://127.0.0.1:6379"}}}}"#
    ));
    assert_eq!(e.path, "rate_limiting.redis_url");
    let e = one(
        r#"{"upstreams": {"u": {"servers": [{"url": "http://h:1"}], "load_balancing": {"strategy": "round_robbin"}}}}"#,
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean `round_robin`?"));
}

#[test]
fn rate_limiting_is_on_when_anything_is_limited_and_takes_its_url_from_the_environment() {
    use kairos_rs::config::model::{RateBackend, Secret};
    let lookup = |k: &str| (k == "REDIS_URL").then(|| "redis://:pw@127.0.0.1:6379/2".to_string());
    let text = format!(
        r#"{{{UP}, "rate_limiting": {{"backend": "redis", "redis_url": "${{REDIS_URL}}"}},
            "routes": [{{"path": "/a", "upstream": "users"}}]}}"#
    );
    let cfg = load_str_with_env(&text, "t.json", Path::new("."), &lookup).unwrap();
    let rl = cfg.rate_limiting.expect("rate limiting");
    match &rl.backend {
        RateBackend::Redis {
            url,
            tls: None,
            timeout,
            key_prefix,
        } => {
            assert_eq!(url, &Secret(b"redis://:pw@127.0.0.1:6379/2".to_vec()));
            assert_eq!(*timeout, std::time::Duration::from_millis(50));
            assert_eq!(key_prefix, "kairos:rl:");
        }
        other => panic!("{other:?}"),
    }
    // The password never shows in the config's debug form.
    assert!(!format!("{rl:?}").contains("pw@"));
    // A route's own limit alone turns it on, with the defaults.
    let text = format!(
        r#"{{{UP}, "routes": [{{"path": "/a", "upstream": "users",
                               "rate_limit": {{"per_ip": {{"rps": 2.5}}}}}}]}}"#
    );
    let cfg = kairos_rs::config::load_str(&text, "t", Path::new(".")).unwrap();
    let rl = cfg.rate_limiting.expect("on");
    assert_eq!(rl.backend, RateBackend::Memory);
    let own = cfg.routes[0]
        .rate_limit
        .as_ref()
        .unwrap()
        .limits
        .per_ip
        .unwrap();
    assert_eq!(
        (own.rps, own.burst),
        (2.5, 3),
        "burst defaults to rps rounded up"
    );
    let text = format!(r#"{{{UP}, "routes": [{{"path": "/a", "upstream": "users"}}]}}"#);
    let cfg = kairos_rs::config::load_str(&text, "t", Path::new(".")).unwrap();
    assert!(cfg.rate_limiting.is_none());
}

#[test]
fn sizes_durations_versions_and_tls_files() {
    let e = one(r#"{"server": {"max_body_size": "10XB"}}"#);
    assert_eq!(e.path, "server.max_body_size");
    let e = one(r#"{"version": 2}"#);
    assert!(e.message.contains("version 2"));
    let e = one(r#"{"server": {"workers": 0}}"#);
    assert_eq!(e.path, "server.workers");
    let errs = errors(r#"{"server": {"tls": {"cert": "missing.pem", "key": "missing.key"}}}"#);
    assert_eq!(errs.len(), 2);
    assert!(errs[0].message.contains("does not exist"));
    let e = one(r#"{"admin": {"token": "short"}}"#);
    assert!(e.message.contains("shorter than 16"));
    let e = one(r#"{"server": {"workers": 4, "max_connections": 2}}"#);
    assert_eq!(e.path, "server.max_connections");
    assert!(
        e.message.contains("less than one connection per worker"),
        "{}",
        e.message
    );
    let e = one(&format!(
        r#"{{{UP}, "routes": [{{"name": "unmatched", "path": "/a", "upstream": "users"}}]}}"#
    ));
    assert!(e.message.contains("reserved"), "{}", e.message);
    let e = one(r#"{"server": {"client_header_timeout": "0s"}}"#);
    assert_eq!(e.path, "server.client_header_timeout");
    let e = one(r#"{"server": {"h2_max_concurrent_streams": 0}}"#);
    assert_eq!(e.path, "server.h2_max_concurrent_streams");
    let e = one(r#"{"tracing": {"endpoint": "ftp://collector:4318"}}"#);
    assert_eq!(e.path, "tracing.endpoint");
    assert!(
        e.message.contains("must start with http:// or https://"),
        "{}",
        e.message
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let demo = kairos_rs::config::load_str(kairos_rs::config::DEMO_CONFIG, "demo", Path::new("."))
        .unwrap();
    assert!(!demo.routes.is_empty());
}

#[test]
fn a_typo_is_one_error_not_two() {
    let errs = errors(
        r#"{"upstreams": {"u": {"servers": [{"url": "http://h:1"}]}}, "routes": [{"path": "/a", "upstrem": "u"}]}"#,
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].hint.as_deref(), Some("did you mean `upstream`?"));
    // A field that is simply missing is still reported.
    let errs = errors(
        r#"{"upstreams": {"u": {"servers": [{"url": "http://h:1"}]}}, "routes": [{"path": "/a"}]}"#,
    );
    assert_eq!(errs[0].message, "missing field `upstream`");
    assert_eq!(errs[0].path, "routes[0]");
}

#[test]
fn schema_key_is_allowed() {
    let ok =
        r#"{"$schema": "./schema.json", "upstreams": {"u": {"servers": [{"url": "http://h:1"}]}}}"#;
    assert!(kairos_rs::config::load_str(ok, "t", Path::new(".")).is_ok());
}

#[test]
fn resilience_sections_are_validated_with_their_paths() {
    // The contract's own example is accepted as written.
    let contract = r#"{"upstreams": {"user-service": {
      "servers": [{"url": "http://127.0.0.1:9001", "weight": 100}, {"url": "http://127.0.0.1:9002", "weight": 200}],
      "load_balancing": {"strategy": "weighted_round_robin"},
      "health_check": {"path": "/health", "interval": "10s", "timeout": "2s", "healthy_threshold": 2, "unhealthy_threshold": 3},
      "circuit_breaker": {"failure_threshold": 5, "recovery_timeout": "30s", "minimum_throughput": 10, "error_percentage_threshold": 50.0},
      "connect_timeout": "2s",
      "retries": {"attempts": 2, "backoff": "50ms", "on": ["connect_error", "502", "503", "504"]}}},
      "routes": [{"path": "/", "upstream": "user-service"}]}"#;
    let cfg = kairos_rs::config::load_str(contract, "t.json", Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let u = &cfg.upstreams[0];
    assert_eq!(u.retries.attempts, 2);
    assert_eq!(u.retries.on_status, vec![502, 503, 504]);
    assert!(u.retries.on_connect_error && !u.retries.on_reset);
    assert_eq!(u.health_check.as_ref().unwrap().expected_status, 200..=399);
    assert!(u.outlier.is_some(), "outlier detection is on by default");

    let up = |body: &str| {
        format!(r#"{{"upstreams": {{"u": {{"servers": [{{"url": "http://h:1"}}], {body}}}}}}}"#)
    };
    let e = one(&up(r#""health_check": {"path": "health"}"#));
    assert_eq!(e.path, "upstreams.u.health_check.path");
    let e = one(&up(r#""health_check": {"expected_status": "200-600"}"#));
    assert_eq!(e.path, "upstreams.u.health_check.expected_status");
    assert!(e.message.contains("600"), "{}", e.message);
    let e = one(&up(
        r#""health_check": {"interval": "1s", "timeout": "5s"}"#,
    ));
    assert_eq!(e.path, "upstreams.u.health_check.timeout");
    let e = one(&up(r#""health_check": {"healthy_threshold": 0}"#));
    assert_eq!(e.path, "upstreams.u.health_check.healthy_threshold");
    let e = one(&up(
        r#""circuit_breaker": {"error_percentage_threshold": 0}"#,
    ));
    assert_eq!(
        e.path,
        "upstreams.u.circuit_breaker.error_percentage_threshold"
    );
    let e = one(&up(r#""circuit_breaker": {"recovery_timeout": "0s"}"#));
    assert_eq!(e.path, "upstreams.u.circuit_breaker.recovery_timeout");
    let e = one(&up(r#""outlier_detection": {"max_ejection_percent": 150}"#));
    assert_eq!(e.path, "upstreams.u.outlier_detection.max_ejection_percent");
    let e = one(&up(r#""retries": {"on": ["connect_eror"]}"#));
    assert_eq!(e.path, "upstreams.u.retries.on[0]");
    assert_eq!(e.hint.as_deref(), Some("did you mean `connect_error`?"));
    let e = one(&up(r#""retries": {"methods": ["GET", "FETCH"]}"#));
    assert_eq!(e.path, "upstreams.u.retries.methods[1]");
    let e = one(&up(r#""retries": {"attempts": 50}"#));
    assert_eq!(e.path, "upstreams.u.retries.attempts");
    let e = one(&up(r#""attempt_timeout": "0ms""#));
    assert_eq!(e.path, "upstreams.u.attempt_timeout");
    let e = one(&up(r#""retries": {"backof": "1s"}"#));
    assert_eq!(e.hint.as_deref(), Some("did you mean `backoff`?"));
}

#[test]
fn edge_security_sections_are_validated_with_their_paths() {
    let secret = "s".repeat(32);
    let with = |extra: &str, route: &str| {
        format!(r#"{{{UP}, {extra}, "routes": [{{"path": "/a", "upstream": "users"{route}}}]}}"#)
    };
    // The contract's own shapes are accepted.
    let ok = with(
        &format!(
            r#""jwt_validation": {{"secret": "{secret}", "algorithm": "HS256", "required_claims": ["sub", "exp"],
               "issuer": "kairos-rs", "audience": "my-api", "leeway": "30s", "public_key": null, "jwks_url": null,
               "forward_claims": {{"sub": "X-User-Id"}}}},
               "api_keys": {{"header_name": "X-API-Key", "query_param": "api_key", "keys": {{"partner-a":
                 {{"key_hash": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                   "permissions": ["users:read"], "rate_limit": {{"rps": 100, "burst": 200}}}}}}}},
               "cors": {{"allowed_origins": ["https://app.example.com", "https://*.example.com"],
                 "allowed_methods": ["GET", "POST", "PUT", "DELETE"], "allowed_headers": ["Content-Type", "Authorization"],
                 "expose_headers": ["X-Request-Id"], "allow_credentials": false, "max_age": 3600}}"#
        ),
        r#", "auth": ["jwt", "api_key"], "permissions": ["users:read"]"#,
    );
    let cfg = kairos_rs::config::load_str(&ok, "t.json", Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.routes[0].auth.jwt && cfg.routes[0].auth.api_key);
    assert_eq!(
        cfg.api_keys.as_ref().unwrap().keys[0]
            .rate_limit
            .unwrap()
            .burst,
        200
    );

    let e = one(&with(
        r#""jwt_validation": {"secret": "short"}"#,
        r#", "auth": "jwt""#,
    ));
    assert_eq!(e.path, "jwt_validation.secret");
    assert!(e.message.contains("at least 32"), "{}", e.message);
    let e = one(&with(
        &format!(r#""jwt_validation": {{"secret": "{secret}", "algorithm": "none"}}"#),
        "",
    ));
    assert_eq!(e.path, "jwt_validation.algorithm");
    let e = one(&with(
        &format!(r#""jwt_validation": {{"secret": "{secret}", "algorithm": "RS256"}}"#),
        "",
    ));
    assert_eq!(e.path, "jwt_validation.secret");
    let e = one(&with(
        r#""jwt_validation": {"algorithm": "RS256", "public_key": "not a pem"}"#,
        "",
    ));
    assert_eq!(e.path, "jwt_validation.public_key");
    let e = one(&with(r#""jwt_validation": {"issuer": "x"}"#, ""));
    assert_eq!(e.path, "jwt_validation");
    assert!(e.message.contains("no key"), "{}", e.message);
    let e = one(&with(
        r#""jwt_validation": {"jwks_url": "ftp://idp/keys"}"#,
        "",
    ));
    assert_eq!(e.path, "jwt_validation.jwks_url");
    let e = one(&with(
        r#""cors": {"allowed_origins": []}"#,
        r#", "auth": "jwtt""#,
    ));
    assert_eq!(e.path, "routes[0].auth");
    assert_eq!(e.hint.as_deref(), Some("did you mean `jwt`?"));
    let e = one(&with(
        r#""cors": {"allowed_origins": []}"#,
        r#", "auth": "jwt""#,
    ));
    assert!(e.message.contains("no `jwt_validation`"), "{}", e.message);
    let e = one(&with(
        r#""cors": {"allowed_origins": []}"#,
        r#", "permissions": ["a"]"#,
    ));
    assert_eq!(e.path, "routes[0].permissions");
    let e = one(&with(
        r#""api_keys": {"keys": {"a": {"key_hash": "md5:00"}}}"#,
        "",
    ));
    assert_eq!(e.path, "api_keys.keys.a.key_hash");
    let e = one(&with(r#""api_keys": {"keys": {"a": {}}}"#, ""));
    assert_eq!(e.path, "api_keys.keys.a");
    let e = one(&with(
        r#""cors": {"allowed_origins": ["https://ok.example.com", "https://exa*mple.com"]}"#,
        "",
    ));
    assert_eq!(e.path, "cors.allowed_origins[1]");
    let e = one(&with(
        r#""cors": {"allowed_origins": ["*"], "allow_credentials": true}"#,
        "",
    ));
    assert!(e.path.starts_with("cors"), "{}", e.path);
    assert!(e.message.contains("credentials"), "{}", e.message);
    let e = one(&with(
        r#""cors": {"allowed_origins": []}"#,
        r#", "cors": {"allowed_origins": ["app.example.com"]}"#,
    ));
    assert_eq!(e.path, "routes[0].cors.allowed_origins[0]");
}

#[test]
fn errors_never_echo_a_value_from_the_environment() {
    let secret = "s3cr3t-value-from-env-9f8e7d";
    let errs = errors_env(
        &format!(
            r#"{{{UP}, "server": {{"port": "${{JWT_SECRET}}"}}, "logging": {{"level": "${{LEVEL}}"}}}}"#
        ),
        &[("JWT_SECRET", secret), ("LEVEL", "verbose-and-secret")],
    );
    assert!(!errs.is_empty());
    for e in &errs {
        let shown = format!("{e} {:?}", e.hint);
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains("verbose-and-secret"), "{shown}");
    }
    let port = errs
        .iter()
        .find(|e| e.path == "server.port")
        .expect("port error");
    assert!(
        port.message.contains("<value of ${JWT_SECRET}>"),
        "{}",
        port.message
    );
}

#[test]
fn max_response_header_size_is_a_size_of_at_least_8kb() {
    let e = one(
        r#"{"upstreams":{"u":{"servers":[{"url":"http://h:1"}],"max_response_header_size":"4KB"}}}"#,
    );
    assert_eq!(e.path, "upstreams.u.max_response_header_size");
    assert!(e.message.contains("8KB"), "{}", e.message);
    let e = one(
        r#"{"upstreams":{"u":{"servers":[{"url":"http://h:1"}],"max_response_header_size":"lots"}}}"#,
    );
    assert_eq!(e.path, "upstreams.u.max_response_header_size");
}

#[test]
fn ipv6_prefix_and_the_auth_failure_throttle_are_checked() {
    let e = one(&format!(
        r#"{{{UP}, "rate_limiting": {{"ipv6_prefix": 0}}, "routes": [{{"path": "/a", "upstream": "users"}}]}}"#
    ));
    assert_eq!(e.path, "rate_limiting.ipv6_prefix");
    assert!(e.message.contains("from 1 to 128"), "{}", e.message);
    let e = one(&format!(
        r#"{{{UP}, "rate_limiting": {{"ipv6_prefix": 129}}, "routes": [{{"path": "/a", "upstream": "users"}}]}}"#
    ));
    assert_eq!(e.path, "rate_limiting.ipv6_prefix");
    let errs = errors(&format!(
        r#"{{{UP}, "rate_limiting": {{"auth_failures": {{"rps": 0}}}}, "routes": [{{"path": "/a", "upstream": "users"}}]}}"#
    ));
    assert!(
        errs.iter()
            .any(|e| e.path.starts_with("rate_limiting.auth_failures")),
        "{errs:#?}"
    );
}

fn transform_errors(route_steps: &str, top_steps: &str) -> Vec<ConfigError> {
    errors(&format!(
        r#"{{{UP}, "transformations": {top_steps}, "routes": [
          {{"path": "/users/{{id}}", "upstream": "users", "transformations": {route_steps}}}]}}"#
    ))
}

#[test]
fn transformation_errors_name_the_step_and_suggest_the_fix() {
    let errs = transform_errors(
        r#"[
          {"type": "path_rewrite", "pattern": "/v1/(users", "replacement": "/$1"},
          {"type": "path_rewrite", "pattern": "/v1/(.*)", "replacement": "/$2"},
          {"type": "path_rewrite", "pattern": "/v1/(.*)", "replacement": "/$name"},
          {"type": "header_set", "headers": {"X-A": "{user.id}"}},
          {"type": "header_set", "headers": {"X-B": "{path.user_id}"}},
          {"type": "header_add", "headers": {"Content-Length": "1"}},
          {"type": "query_set", "phase": "response", "params": {"a": "1"}},
          {"type": "header_set", "headers": {"X-C": "{unclosed"}}
        ]"#,
        r#"[{"type": "status_map", "phase": "request", "from": 404, "to": 410},
            {"type": "status_map", "from": 200, "to": 204, "on_error": "ignore"}]"#,
    );
    let find = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"))
    };
    let p = "routes[0].transformations";
    let e = find(&format!("{p}[0].pattern"));
    assert_eq!(e.message, "invalid regular expression: unclosed group");
    let e = find(&format!("{p}[1].replacement"));
    assert_eq!(e.message, "`$2` names a capture the pattern lacks");
    assert_eq!(
        e.hint.as_deref(),
        Some("the pattern has 1 capture group(s); `$0` is the whole match")
    );
    let e = find(&format!("{p}[2].replacement"));
    assert_eq!(e.message, "`$name` names a capture the pattern lacks");
    let e = find(&format!("{p}[3].headers.X-A"));
    assert_eq!(e.message, "unknown template variable `{user.id}`");
    assert!(e.hint.as_deref().unwrap().contains("{path.NAME}"), "{e}");
    let e = find(&format!("{p}[4].headers.X-B"));
    assert_eq!(
        e.message,
        "`{path.user_id}` is not a parameter of the route's path"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("the route's path parameters are: id")
    );
    let e = find(&format!("{p}[5].headers.Content-Length"));
    assert!(e.message.contains("managed by the gateway"), "{e}");
    let e = find(&format!("{p}[6].phase"));
    assert!(e.message.starts_with("a response has no query"), "{e}");
    let e = find(&format!("{p}[7].headers.X-C"));
    assert_eq!(e.hint.as_deref(), Some("write `{{` for a literal `{`"));
    let e = find("transformations[0].phase");
    assert_eq!(e.message, "status_map applies to responses only");
    let e = find("transformations[1].to");
    assert_eq!(e.message, "204 cannot be mapped");
    let e = find("transformations[1].on_error");
    assert_eq!(e.hint.as_deref(), Some("use \"fail\" or \"skip\""));
    assert_eq!(errs.len(), 11, "{errs:#?}");
}

#[test]
fn an_unknown_transformation_type_is_named_with_a_suggestion() {
    let errs = transform_errors(r#"[{"type": "header_sett", "headers": {}}]"#, "[]");
    let e = errs
        .iter()
        .find(|e| e.path == "routes[0].transformations[0].type")
        .unwrap_or_else(|| panic!("{errs:#?}"));
    assert_eq!(e.message, "unknown value `header_sett`");
    assert_eq!(e.hint.as_deref(), Some("did you mean `header_set`?"));
    assert_eq!(e.line, Some(2));
    let errs = transform_errors(r#"[{"type": "gzip", "level": 5}]"#, "[]");
    let e = errs
        .iter()
        .find(|e| e.path == "routes[0].transformations[0].type")
        .unwrap_or_else(|| panic!("{errs:#?}"));
    assert_eq!(e.message, "unknown value `gzip`");
    assert!(
        e.hint
            .as_deref()
            .unwrap()
            .starts_with("expected one of header_add, header_set,"),
        "{e}"
    );
}

#[test]
fn body_json_pointers_must_start_with_a_slash() {
    let errs = transform_errors(
        r#"[{"type": "body_json", "ops": [
              {"op": "set", "path": "gateway", "value": 1},
              {"op": "rename", "from": "/a", "to": "b"}]}]"#,
        "[]",
    );
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].transformations[0].ops[0].path",
            "routes[0].transformations[0].ops[1].to"
        ]
    );
    assert_eq!(
        errs[0].message,
        "`gateway` is not a JSON Pointer below the document"
    );
}

#[test]
fn a_path_replacement_may_not_carry_a_query() {
    let errs = transform_errors(
        r#"[{"type": "path_rewrite", "pattern": "^/users/(.*)$", "replacement": "/u/$1?v=2"}]"#,
        "[]",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "routes[0].transformations[0].replacement");
    assert_eq!(
        errs[0].message,
        "a path replacement may not contain `?` or `#`"
    );
}

#[test]
fn a_template_may_not_read_the_api_key() {
    let text = format!(
        r#"{{{UP},
          "api_keys": {{"header_name": "X-Partner-Key", "query_param": "key",
                        "keys": {{"a": {{"key_hash": "sha256:{}"}}}}}},
          "transformations": [{{"type": "header_set", "headers": {{"X-K": "{{header.x-partner-key}}"}}}}],
          "routes": [{{"path": "/a", "upstream": "users", "transformations": [
            {{"type": "query_set", "params": {{"k": "{{query.key}}"}}}},
            {{"type": "header_set", "headers": {{"X-Name": "{{api_key}}"}}}}]}}]}}"#,
        "0".repeat(64)
    );
    let errs = errors(&text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "transformations[0].headers.X-K",
            "routes[0].transformations[0].params.k"
        ],
        "{errs:#?}"
    );
    assert_eq!(
        errs[0].message,
        "a template may not read the API key: the gateway never forwards it"
    );
    assert_eq!(
        errs[0].hint.as_deref(),
        Some("use {api_key} for the name of the caller's key")
    );
}

/// A config whose upstream `u` has the given members (JSON text).
fn with_upstream(members: &str) -> String {
    format!(
        "{{\n  \"version\": 1,\n  \"upstreams\": {{\"u\": {{\n{members}\n  }}}},\n  \"routes\": [{{\"path\": \"/a\", \"upstream\": \"u\"}}]\n}}"
    )
}

#[test]
fn discovery_errors_name_path_line_and_fix() {
    // `servers` and `discovery` exclude each other.
    let e = one(&with_upstream(
        r#"    "servers": [{"url": "http://127.0.0.1:9001"}],
    "discovery": {"type": "dns", "name": "u.internal", "port": 80}"#,
    ));
    assert_eq!(e.path, "upstreams.u.discovery");
    assert_eq!(e.line, Some(5));
    assert!(e.message.contains("not both"), "{}", e.message);
    // Neither.
    let e = one(&with_upstream(r#"    "connect_timeout": "1s""#));
    assert_eq!(e.path, "upstreams.u.servers");
    assert!(e.hint.as_deref().unwrap_or("").contains("discovery"));
    // An unknown type, with a suggestion.
    let e = one(&with_upstream(r#"    "discovery": {"type": "consull"}"#));
    assert_eq!(e.path, "upstreams.u.discovery.type");
    assert_eq!(e.hint.as_deref(), Some("did you mean `consul`?"));
    // Another type's setting, a missing port, a bad resolver, a bad record type.
    let errs = errors(&with_upstream(
        r#"    "discovery": {"type": "dns", "name": "u.internal", "port": 80, "tag": "v2",
                  "resolvers": ["10.0.0.2", "127.0.0.1:5353", "nope"], "record": "MX"}"#,
    ));
    let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "upstreams.u.discovery.record",
            "upstreams.u.discovery.resolvers[2]",
            "upstreams.u.discovery.tag",
        ],
        "{errs:#?}"
    );
    let tag = errs.iter().find(|e| e.path.ends_with(".tag")).unwrap();
    assert_eq!(tag.hint.as_deref(), Some("`tag` belongs to type consul"));
    let e = one(&with_upstream(
        r#"    "discovery": {"type": "dns", "name": "u.internal"}"#,
    ));
    assert_eq!(e.path, "upstreams.u.discovery.port");
    // SRV records carry their own port.
    let e = one(&with_upstream(
        r#"    "discovery": {"type": "dns", "name": "_http._tcp.u", "record": "SRV", "port": 80}"#,
    ));
    assert_eq!(e.path, "upstreams.u.discovery.port");
    // Required settings per type, and URLs.
    let errs = errors(&with_upstream(
        r#"    "discovery": {"type": "consul", "endpoint": "127.0.0.1:8500", "wait": "20m"}"#,
    ));
    let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "upstreams.u.discovery.endpoint",
            "upstreams.u.discovery.service_name",
            "upstreams.u.discovery.wait",
        ],
        "{errs:#?}"
    );
    let e = one(&with_upstream(
        r#"    "discovery": {"type": "eureka", "endpoint": "http://e:8761/eureka"}"#,
    ));
    assert_eq!(e.path, "upstreams.u.discovery.app");
    let e = one(&with_upstream(r#"    "discovery": {"type": "kubernetes"}"#));
    assert_eq!(e.path, "upstreams.u.discovery.service_name");
    // Kubernetes names are DNS-1123 labels: they go into the API path and a label selector.
    let errs = errors(&with_upstream(
        r#"    "discovery": {"type": "kubernetes",
                  "namespace": "shop/../kube-system", "service_name": "Stock"}"#,
    ));
    let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "upstreams.u.discovery.namespace",
            "upstreams.u.discovery.service_name",
        ],
        "{errs:#?}"
    );
    let name = errs
        .iter()
        .find(|e| e.path.ends_with("service_name"))
        .unwrap();
    assert_eq!(name.line, Some(5));
    assert!(name.message.contains("DNS-1123"), "{}", name.message);
    assert_eq!(
        name.hint.as_deref(),
        Some("Kubernetes names are lowercase: write \"stock\"")
    );
    let ns = errs.iter().find(|e| e.path.ends_with("namespace")).unwrap();
    assert!(
        ns.hint
            .as_deref()
            .unwrap_or("")
            .contains("lowercase letters"),
        "{ns:#?}"
    );
    let long = "a".repeat(64);
    let e = one(&with_upstream(&format!(
        r#"    "discovery": {{"type": "kubernetes", "service_name": "{long}"}}"#
    )));
    assert_eq!(e.path, "upstreams.u.discovery.service_name");
    let ok = with_upstream(
        r#"    "discovery": {"type": "kubernetes", "namespace": "shop-2", "service_name": "stock-v2"}"#,
    );
    assert!(load_str_with_env(&ok, "t.json", Path::new("."), &|_| None).is_ok());
    // The Consul token comes from the environment like any secret; a missing variable names it.
    let text = with_upstream(
        r#"    "discovery": {"type": "consul", "endpoint": "http://127.0.0.1:8500", "service_name": "orders", "token": "${CONSUL_TOKEN}"}"#,
    );
    let errs = errors_env(&text, &[]);
    assert!(errs[0].message.contains("CONSUL_TOKEN"), "{errs:#?}");
    let lookup = |k: &str| (k == "CONSUL_TOKEN").then(|| "t0k3n".to_string());
    let cfg = load_str_with_env(&text, "t.json", Path::new("."), &lookup).expect("valid");
    let d = cfg.upstreams[0].discovery.as_ref().expect("discovery");
    assert_eq!(d.kind(), "consul");
    assert!(
        !format!("{d:?}").contains("t0k3n"),
        "the token never prints"
    );
}

#[test]
fn caching_errors_name_the_key_its_line_and_the_fix() {
    let text = format!(
        "{{\n  {UP},\n  \"caching\": {{\n    \"backend\": \"memroy\",\n    \"max_object_size\": \"2GB\",\n    \"cache_key_template\": \"{{method}}:{{query}}\",\n    \"lock_timeout\": \"0s\"\n  }},\n  \"routes\": [{{\"path\": \"/a\", \"upstream\": \"users\",\n    \"cache\": {{\"key_template\": \"{{path}}:{{tenant_id}}\", \"vary\": [\"bad name\"], \"ttl\": \"soon\"}}}}]\n}}"
    );
    let errs = errors(&text);
    let find = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"))
    };
    let backend = find("caching.backend");
    assert_eq!(backend.message, "unknown backend `memroy`");
    assert_eq!(backend.hint.as_deref(), Some("did you mean `memory`?"));
    assert_eq!(backend.line, Some(4));
    let size = find("caching.max_object_size");
    assert!(
        size.message.contains("at most max_size"),
        "{}",
        size.message
    );
    assert_eq!(size.line, Some(5));
    let key = find("caching.cache_key_template");
    assert!(key.message.contains("no `{path}`"), "{}", key.message);
    assert!(key
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("{method}:{path}:{query_hash}")));
    assert_eq!(find("caching.lock_timeout").message, "must be more than 0s");
    // An unknown variable (`{tenant}` is one, `{tenant_id}` is not).
    let unknown = find("routes[0].cache.key_template");
    assert!(
        unknown.message.contains("{tenant_id}"),
        "{}",
        unknown.message
    );
    let vary = find("routes[0].cache.vary[0]");
    assert_eq!(vary.message, "`bad name` is not a valid header name");
    assert_eq!(vary.line, Some(10));
    find("routes[0].cache.ttl");
}

#[test]
fn a_route_cache_without_the_caching_section_is_refused_with_the_fix() {
    let text = format!(
        "{{\n  {UP},\n  \"routes\": [{{\"path\": \"/a\", \"upstream\": \"users\",\n    \"cache\": {{\"ttl\": \"60s\"}}}}]\n}}"
    );
    let e = one(&text);
    assert_eq!(e.path, "routes[0].cache");
    assert_eq!(e.line, Some(4));
    assert_eq!(
        e.hint.as_deref(),
        Some("add \"caching\": {\"backend\": \"memory\"}")
    );
}

#[test]
fn redis_and_hybrid_cache_errors_name_the_key_its_line_and_the_fix() {
    let no_url = one(&format!(
        "{{\n  {UP},\n  \"caching\": {{\n    \"backend\": \"redis\"\n  }}\n}}"
    ));
    assert_eq!(no_url.path, "caching.redis_url");
    assert_eq!(
        no_url.message,
        "the redis and hybrid cache backends need `redis_url`"
    );
    assert!(no_url
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("redis://127.0.0.1:6379")));
    let text = format!(
        "{{\n  {UP},\n  \"caching\": {{\n    \"backend\": \"hybrid\",\n    \"redis_url\": \"http://127.0.0.1:6379\",\n    \"redis_timeout\": \"0s\",\n    \"key_prefix\": \"\",\n    \"l1_ttl\": \"10m\",\n    \"l2_ttl\": \"1m\"\n  }}\n}}"
    );
    let errs = errors(&text);
    let find = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"))
    };
    let url = find("caching.redis_url");
    assert_eq!(url.line, Some(5));
    assert!(url
        .hint
        .as_deref()
        .unwrap()
        .starts_with("write redis://[user:password@]host:port[/db], rediss:// for TLS"));
    assert_eq!(find("caching.redis_timeout").line, Some(6));
    assert!(find("caching.key_prefix")
        .message
        .contains("must not be empty"));
    let l1 = find("caching.l1_ttl");
    assert!(l1.message.contains("longer than l2_ttl"), "{}", l1.message);
    assert_eq!(l1.line, Some(8));
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

/// The tenants' checks, each with its path, line and hint.
#[test]
fn tenancy_errors_name_path_line_and_hint() {
    let key = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let text = format!(
        r#"{{
  {UP},
  "routes": [{{"name": "orders", "path": "/orders", "upstream": "users"}}],
  "api_keys": {{"keys": {{"partner-a": {{"key_hash": "{key}"}}}}}},
  "tenancy": {{
    "identify_by": ["api_key", "jwt_claim", "hedaer"],
    "quota_store": {{"backend": "sqlite"}}
  }},
  "tenants": {{
    "a": {{"hosts": ["a.example.com"], "api_keys": ["partner-a"],
           "routes": [{{"name": "orders", "path": "/orders", "upstream": "users"}},
                      {{"name": "a-x", "path": "/x", "upstream": "users"}},
                      {{"name": "a-y", "path": "/x", "upstream": "users"}}]}},
    "b": {{"hosts": ["A.example.com"], "api_keys": ["partner-a", "partner-b"],
           "quotas": {{"monthly_requests": 0}}, "rate_limits": {{"rps": 0}}}},
    "other": {{"quotas": {{"warn_at": 0.5}}}}
  }}
}}"#
    );
    let errs = errors(&text);
    let find = |path: &str| {
        errs.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"))
    };
    let e = find("tenancy.identify_by[1]");
    assert_eq!(
        e.message,
        "`jwt_claim` needs a top-level `jwt_validation` section"
    );
    assert_eq!(e.line, Some(6));
    let e = find("tenancy.identify_by[2]");
    assert_eq!(e.message, "unknown identification method `hedaer`");
    assert_eq!(e.hint.as_deref(), Some("did you mean `header`?"));
    let e = find("tenancy.quota_store.backend");
    assert_eq!(e.message, "unknown quota store `sqlite`");
    assert_eq!(e.line, Some(7));
    let e = find("tenants.a.routes[0].name");
    assert_eq!(
        e.message,
        "route name `orders` is already used by routes[0]"
    );
    let e = find("tenants.a.routes[2].path");
    assert!(
        e.message
            .contains("can never be told apart from tenants.a.routes[1]"),
        "{e}"
    );
    let e = find("tenants.b.hosts[0]");
    assert_eq!(
        e.message,
        "host `a.example.com` already belongs to tenant `a`"
    );
    assert_eq!(e.line, Some(14));
    let e = find("tenants.b.api_keys[0]");
    assert_eq!(
        e.message,
        "API key `partner-a` already belongs to tenant `a`"
    );
    let e = find("tenants.b.api_keys[1]");
    assert_eq!(e.message, "`partner-b` is not a configured API key");
    assert_eq!(e.hint.as_deref(), Some("did you mean `partner-a`?"));
    assert_eq!(
        find("tenants.b.quotas.monthly_requests").message,
        "must be at least 1"
    );
    assert!(find("tenants.b.rate_limits.rps")
        .message
        .starts_with("rps must be more than 0"));
    assert!(find("tenants.other").message.contains("reserved"));
    assert_eq!(
        find("tenants.other.quotas").message,
        "`quotas` sets no quota"
    );
    // A tenant's route on the same path as a global one is not a conflict.
    assert!(
        !errs.iter().any(|e| e.path == "tenants.a.routes[0].path"),
        "{errs:#?}"
    );
}

#[test]
fn tenancy_unknown_keys_and_redis_store_need_a_url() {
    let text = format!(
        r#"{{{UP}, "tenancy": {{"quota_store": {{"backend": "redis"}}, "requier": true}}}}"#
    );
    let errs = errors(&text);
    let e = errs
        .iter()
        .find(|e| e.message.contains("requier"))
        .expect("unknown key");
    assert_eq!(e.hint.as_deref(), Some("did you mean `require`?"));
    let text = format!(r#"{{{UP}, "tenancy": {{"quota_store": {{"backend": "redis"}}}}}}"#);
    let e = one(&text);
    assert_eq!(e.path, "tenancy.quota_store.redis_url");
    assert_eq!(e.message, "the redis backend needs `redis_url`");
}

#[test]
fn websocket_keys_are_checked_against_the_routes_methods() {
    let text = format!(
        "{{\n  {UP},\n  \"routes\": [\n    {{\"path\": \"/a\", \"upstream\": \"users\", \"methods\": [\"POST\"], \"websocket\": true}},\n    {{\"path\": \"/b\", \"upstream\": \"users\", \"websocket\": false, \"websocket_idle_timeout\": \"5m\"}},\n    {{\"path\": \"/c\", \"upstream\": \"users\", \"websocket_idle_timeout\": \"0s\"}}\n  ]\n}}"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert_eq!(errs[0].path, "routes[0].websocket");
    assert_eq!(
        errs[0].message,
        "a WebSocket handshake is a GET, and this route does not allow GET"
    );
    assert_eq!(errs[0].line, Some(4));
    assert_eq!(errs[1].path, "routes[1].websocket_idle_timeout");
    assert!(
        errs[1].message.contains("websocket: false"),
        "{}",
        errs[1].message
    );
    assert_eq!(errs[2].path, "routes[2].websocket_idle_timeout");
    assert_eq!(
        errs[2].hint.as_deref(),
        Some("omit it for the default of 1h")
    );
}
