//! Entry points of the fuzz targets (fuzz/, run with `cargo fuzz`), kept in the library so
//! that `tests/fuzz_corpus.rs` replays the committed corpus on every test run with the stable
//! toolchain. Each takes arbitrary bytes and must never panic; each also checks properties
//! that must hold for any input.

use crate::config::{load_str_with_env, model::MethodSet};

/// Config text through the whole pipeline: parse, `${ENV}`, deserialise, validate, build the
/// router. Errors are fine; panics are not, and every error must name a location or a path.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_str_with_env(text, "fuzz.json", std::path::Path::new("."), &|_| {
        Some("x".repeat(16))
    }) {
        Ok(cfg) => {
            let router = crate::config::router::Router::build(&cfg.routes);
            assert!(router.is_ok(), "a validated config must build its router");
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            for err in &e.errors {
                assert!(!err.message.is_empty());
            }
        }
    }
}

/// Route templates and request paths: the input's lines before an empty line are route paths
/// (each becomes a route), the lines after it are looked up with every method. A match must
/// name a route whose method set contains the method, with one value per template parameter.
pub fn router(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (templates, requests) = text.split_once("\n\n").unwrap_or((text, ""));
    let routes: Vec<serde_json::Value> = templates
        .lines()
        .take(64)
        .enumerate()
        .map(|(i, path)| {
            let methods: Vec<&str> = MethodSet::NAMES
                .iter()
                .enumerate()
                .filter(|(m, _)| (i + m) % 3 != 0)
                .map(|(_, n)| *n)
                .collect();
            serde_json::json!({ "name": format!("r{i}"), "path": path, "methods": methods, "upstream": "u" })
        })
        .collect();
    let config = serde_json::json!({
        "upstreams": { "u": { "servers": [{ "url": "http://127.0.0.1:9" }] } },
        "routes": routes,
    });
    let Ok(cfg) = crate::config::load_str(&config.to_string(), "fuzz", std::path::Path::new("."))
    else {
        return;
    };
    let Ok(router) = crate::config::router::Router::build(&cfg.routes) else {
        panic!("a validated config must build its router");
    };
    for path in requests.lines().take(64) {
        for method in MethodSet::NAMES.iter().chain(&["PURGE"]) {
            match router.lookup(None, path, method) {
                crate::config::router::Lookup::Found { route, params } => {
                    let r = &cfg.routes[route];
                    assert!(r.methods.contains(method), "{method} {path} -> {}", r.path);
                    let expected = r.path.matches('{').count();
                    assert_eq!(params.len(), expected, "{path} -> {}", r.path);
                }
                crate::config::router::Lookup::MethodNotAllowed { allow } => {
                    assert!(!allow.is_empty());
                }
                crate::config::router::Lookup::NotFound => {}
            }
        }
    }
}

/// What the gateway parses from request headers: `traceparent`, the Host, the path's dot
/// segments, X-Request-Id. Properties: a parsed traceparent formats back to itself (version
/// 00); a kept request id is one the client sent.
pub fn headers(data: &[u8]) {
    use crate::observability::trace::{parse_traceparent, traceparent};
    if let Some(p) = parse_traceparent(data) {
        if data.len() == 55 && data.starts_with(b"00-") {
            let again = traceparent(&p.trace_id, &p.span_id, p.sampled);
            let flags_match = data[53..] == again.as_bytes()[53..];
            // Flags other than "sampled" are not kept; everything else round-trips.
            assert_eq!(&data[..53], &again.as_bytes()[..53]);
            assert!(flags_match || (data[53..] != *b"00" && data[53..] != *b"01"));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let name = crate::base::net::host_name(s);
        assert!(s.contains(name.trim_end_matches('.')) || name.is_empty());
        if let Ok(normalized) = crate::proxy::normalize_path(s) {
            let path = normalized.as_deref().unwrap_or(s);
            // What is routed and forwarded has no escaped or back slash and no run of slashes.
            let lower = path.to_ascii_lowercase();
            assert!(!path.contains("//") && !path.contains('\\'), "{path}");
            assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{path}");
            let _ = crate::proxy::has_dot_segment(path);
        }
    }
    let mut headers = actix_web::http::header::HeaderMap::new();
    if let Ok(v) = actix_web::http::header::HeaderValue::from_bytes(data) {
        headers.insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            v.clone(),
        );
        let id = crate::observability::request_id::for_request(&headers);
        assert!(id == v || id.len() == 32);
    }
}

/// An Authorization header value through the JWT path (bearer parsing, header and payload
/// decoding, provider choice, signature and claim checks), and a query string through the
/// API-key helpers. Nothing here may panic; a token the fuzzer made up must never verify (it
/// cannot know the secret); stripping the key parameter must leave no such parameter.
pub fn auth(data: &[u8]) {
    use futures_util::FutureExt;
    use std::sync::OnceLock;
    static JWT: OnceLock<crate::edge::auth::jwt::JwtAuth> = OnceLock::new();
    let jwt = JWT.get_or_init(|| {
        let cfg = crate::config::model::JwtConfig {
            providers: vec![crate::config::model::JwtProviderConfig {
                algorithm: jsonwebtoken::Algorithm::HS256,
                key: crate::config::model::JwtKeySource::Secret(crate::config::model::Secret(
                    b"fuzzing-secret-that-is-thirty-two-bytes-long".to_vec(),
                )),
                issuer: Some("fuzz".into()),
                audience: None,
                required_claims: vec!["exp".into()],
                require_exp: true,
                leeway: std::time::Duration::from_secs(30),
            }],
            forward_claims: Vec::new(),
            strip_authorization: false,
        };
        crate::edge::auth::jwt::JwtAuth::new(&cfg).expect("fuzz JWT config")
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = crate::edge::auth::jwt::bearer(text) {
        // Static keys never wait: the future completes on its first poll.
        if let Some(result) = jwt.verify(token).now_or_never() {
            assert!(result.is_err(), "a made-up token verified: {token}");
        }
    }
    let name = "api_key";
    let _ = crate::edge::auth::api_key::query_value(text, name);
    if let Some(rest) = crate::edge::auth::api_key::strip_query_param(text, name) {
        assert!(
            !rest
                .split('&')
                .any(|p| p.split_once('=').map_or(p, |(k, _)| k) == name),
            "strip_query_param left the parameter in {rest}"
        );
    }
}
