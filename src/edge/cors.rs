//! CORS at the edge: a compiled [`CorsPolicy`] (see [`crate::config::cors`] for what a policy
//! allows and why) answers preflights itself (they carry no credentials, so this runs before
//! authentication) and adds the `Access-Control-*` headers to actual responses, error responses
//! included.

use crate::base::error::GatewayError;
pub use crate::config::cors::CorsPolicy;
use crate::config::cors::{is_token, CorsConfig, CorsError};
use crate::config::model::{Config, RouteConfig};
use actix_web::http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use std::sync::Arc;

const ALWAYS_ALLOWED_HEADERS: &[&str] = &["accept", "accept-language", "content-language"];

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

impl CorsPolicy {
    /// OPTIONS with `Origin` and `Access-Control-Request-Method`: a preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The `Access-Control-Allow-Origin` value for a request with these headers, if its origin
    /// is allowed.
    fn allow_origin(&self, request_headers: &HeaderMap) -> Option<HeaderValue> {
        let mut all = request_headers.get_all(ORIGIN);
        let origin = all.next()?;
        if all.next().is_some() {
            return None;
        }
        let text = origin.to_str().ok()?;
        if !self.allows_origin(text) {
            return None;
        }
        if self.any_origin && !self.credentials && !text.eq_ignore_ascii_case("null") {
            Some(HeaderValue::from_static("*"))
        } else {
            Some(origin.clone())
        }
    }

    /// The answer to a preflight: `Ok(headers)` for a 204, or `Err(reason)` when the origin, the
    /// method or one of the requested headers is not allowed (the reason is for the log, not
    /// for the client).
    pub fn preflight(&self, headers: &HeaderMap) -> Result<HeaderMap, &'static str> {
        let allow_origin = self.allow_origin(headers).ok_or("origin not allowed")?;

        let mut acrm = headers.get_all(ACCESS_CONTROL_REQUEST_METHOD);
        let method = match (acrm.next(), acrm.next()) {
            (Some(m), None) => m.to_str().ok().filter(|m| is_token(m)),
            _ => None,
        }
        .ok_or("malformed Access-Control-Request-Method")?;
        if !self.any_method && !self.methods.iter().any(|m| **m == *method) {
            return Err("method not allowed");
        }

        // Requested header names, checked; kept only when the answer has to name them.
        let mut echo: Vec<&str> = Vec::new();
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let list = value
                .to_str()
                .map_err(|_| "malformed Access-Control-Request-Headers")?;
            for name in list.split(',').map(|n| n.trim_matches([' ', '\t'])) {
                if name.is_empty() {
                    continue;
                }
                if !is_token(name) {
                    return Err("malformed Access-Control-Request-Headers");
                }
                if self.any_header {
                    echo.push(name);
                } else if self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    // Named by the configured list.
                } else if ALWAYS_ALLOWED_HEADERS
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
                {
                    echo.push(name);
                } else {
                    return Err("request header not allowed");
                }
            }
        }

        let mut out = HeaderMap::with_capacity(7);
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        let allow_methods = if self.any_method && self.credentials {
            HeaderValue::from_str(method).map_err(|_| "malformed Access-Control-Request-Method")?
        } else {
            self.allow_methods.clone()
        };
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, allow_methods);
        let allow_headers = match (&self.allow_headers, echo.is_empty()) {
            (base, true) => base.clone(),
            (None, false) => HeaderValue::from_str(&echo.join(", ")).ok(),
            (Some(base), false) => {
                let base = base.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{base}, {}", echo.join(", "))).ok()
            }
        };
        if let Some(v) = allow_headers {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        out.insert(VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        Ok(out)
    }

    /// Adds the CORS headers to an actual response (error responses too: 401, 429, 5xx, so the
    /// page can read them), replacing any the upstream sent. Always adds `Vary: Origin`, merged
    /// into an existing `Vary`.
    pub fn apply(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        add_vary_origin(response_headers);
        response_headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
        response_headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        response_headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
        let Some(allow_origin) = self.allow_origin(request_headers) else {
            return;
        };
        response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            response_headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

/// `Vary: Origin`, unless the response already varies on Origin (or on everything). An
/// existing `Vary` is merged into one line, for clients that read only the first.
fn add_vary_origin(headers: &mut HeaderMap) {
    let mut existing: Vec<&str> = Vec::new();
    for v in headers.get_all(VARY) {
        let Ok(s) = v.to_str() else { continue };
        if s.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        {
            return;
        }
        let s = s.trim();
        if !s.is_empty() {
            existing.push(s);
        }
    }
    let value = if existing.is_empty() {
        HeaderValue::from_static("Origin")
    } else {
        existing.push("Origin");
        match HeaderValue::from_str(&existing.join(", ")) {
            Ok(v) => v,
            Err(_) => HeaderValue::from_static("Origin"),
        }
    };
    headers.insert(VARY, value);
}

/// The CORS policies of one runtime: each route's (its own or the top-level one) and the
/// top-level one for requests that match no route. Every CORS decision of a request is made
/// here: which method a preflight is routed by, the preflight's answer, and the headers of the
/// actual response.
pub struct CorsTable {
    per_route: Vec<Option<Arc<CorsPolicy>>>,
    global: Option<Arc<CorsPolicy>>,
    /// Some route (or the top level) has a policy: preflights need looking at.
    any: bool,
}

impl CorsTable {
    /// Compiles the policies of `config` (validated already, so compiling does not fail in
    /// practice; the errors are those of [`CorsPolicy::compile`]).
    pub fn build(config: &Config) -> Result<CorsTable, Vec<CorsError>> {
        let compile = |c: &CorsConfig| CorsPolicy::compile(c).map(Arc::new);
        let global = config.cors.as_ref().map(compile).transpose()?;
        let per_route = config
            .routes
            .iter()
            .map(|r| match &r.cors {
                Some(c) => compile(c).map(Some),
                None => Ok(global.clone()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsTable {
            any: per_route.iter().any(Option::is_some) || global.is_some(),
            per_route,
            global,
        })
    }

    /// The method a CORS preflight asks about (`Access-Control-Request-Method`), which it is
    /// routed by; `None` when the request is no preflight or no policy exists.
    pub fn preflight_method<'r>(&self, method: &Method, headers: &'r HeaderMap) -> Option<&'r str> {
        if !(self.any && CorsPolicy::is_preflight(method, headers)) {
            return None;
        }
        Some(
            headers
                .get(ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("OPTIONS"),
        )
    }

    /// Whether route `route` has a policy (else a preflight for it is an ordinary OPTIONS).
    pub fn route_has_policy(&self, route: usize) -> bool {
        self.per_route.get(route).is_some_and(Option::is_some)
    }

    /// The answer to a preflight for route `route`: a 204 with the policy's headers, or a
    /// refusal (403).
    pub fn answer_preflight(
        &self,
        route: &RouteConfig,
        route_idx: usize,
        headers: &HeaderMap,
    ) -> Result<HttpResponse, GatewayError> {
        let Some(policy) = self.per_route.get(route_idx).and_then(Option::as_ref) else {
            return Err(GatewayError::CorsRejected);
        };
        match policy.preflight(headers) {
            Ok(allowed) => {
                let mut res = HttpResponse::NoContent().finish();
                for (k, v) in allowed {
                    res.headers_mut().append(k, v);
                }
                Ok(res)
            }
            Err(reason) => {
                tracing::debug!(
                    route = route.name.as_str(),
                    reason,
                    "CORS preflight refused"
                );
                Err(GatewayError::CorsRejected)
            }
        }
    }

    /// A WebSocket handshake's `Origin` checked against route `route_idx`'s policy: browsers
    /// send it but never preflight a WebSocket, and the socket is not bound by the same-origin
    /// policy, so the gateway refuses (403) an origin the policy does not allow. A handshake
    /// without `Origin` (not from a browser) and a route without a policy pass.
    pub fn websocket_origin(
        &self,
        route: &RouteConfig,
        route_idx: usize,
        headers: &HeaderMap,
    ) -> Result<(), GatewayError> {
        let Some(policy) = self.per_route.get(route_idx).and_then(Option::as_ref) else {
            return Ok(());
        };
        if !headers.contains_key(ORIGIN) || policy.allow_origin(headers).is_some() {
            return Ok(());
        }
        tracing::debug!(
            route = route.name.as_str(),
            "WebSocket handshake from an origin the CORS policy does not allow"
        );
        Err(GatewayError::CorsRejected)
    }

    /// Adds the CORS headers to a response on `route` (or to one that matched no route),
    /// errors included, so a browser script can read a 401 or a 429. A preflight's own 204
    /// already has them.
    pub fn respond(&self, route: Option<usize>, req: &HttpRequest, res: &mut HttpResponse) {
        let policy = match route {
            Some(i) => self.per_route.get(i).and_then(Option::as_ref),
            None => self.global.as_ref(),
        };
        if let Some(policy) = policy {
            if !(res.status() == StatusCode::NO_CONTENT
                && CorsPolicy::is_preflight(req.method(), req.headers()))
            {
                policy.apply(req.headers(), res.headers_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cors::DEFAULT_METHODS;
    use actix_web::http::header::HeaderName;

    fn cfg(origins: &[&str]) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsConfig::default()
        }
    }

    fn policy(c: &CorsConfig) -> CorsPolicy {
        CorsPolicy::compile(c).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn compile_errors(c: &CorsConfig) -> Vec<CorsError> {
        match CorsPolicy::compile(c) {
            Ok(_) => panic!("{c:?} compiled"),
            Err(e) => e,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    /// The example from the config contract.
    fn api_config() -> CorsConfig {
        CorsConfig {
            allowed_origins: vec![
                "https://app.example.com".into(),
                "https://*.example.com".into(),
            ],
            allowed_methods: vec!["GET".into(), "POST".into(), "PUT".into(), "DELETE".into()],
            allowed_headers: vec!["Content-Type".into(), "Authorization".into()],
            expose_headers: vec!["X-Request-Id".into()],
            allow_credentials: false,
            max_age: Some(3600),
        }
    }

    #[test]
    fn exact_origins_compare_scheme_host_and_port() {
        let p = policy(&cfg(&[
            "https://app.example.com",
            "http://localhost:3000",
            "https://[::1]:8443",
        ]));
        assert!(p.allows_origin("https://app.example.com"));
        assert!(p.allows_origin("HTTPS://App.Example.COM"));
        assert!(p.allows_origin("https://app.example.com:443"));
        assert!(p.allows_origin("http://localhost:3000"));
        assert!(p.allows_origin("https://[::1]:8443"));
        for o in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.co",
            "https://xapp.example.com",
            "https://app.example.com.evil.com",
            "http://localhost",
            "http://localhost:30000",
            "https://[::1]",
            "https://app.example.com/",
            "https://evil.com#https://app.example.com",
            "https://app.example.com@evil.com",
            "app.example.com",
            "",
            "null",
        ] {
            assert!(!p.allows_origin(o), "{o} allowed");
        }
    }

    #[test]
    fn a_default_port_in_the_config_equals_none() {
        let p = policy(&cfg(&[
            "https://a.com:443",
            "http://b.com:80",
            "https://c.com",
        ]));
        assert!(p.allows_origin("https://a.com"));
        assert!(p.allows_origin("http://b.com"));
        assert!(p.allows_origin("https://c.com:443"));
        assert!(!p.allows_origin("http://a.com"));
        assert!(!p.allows_origin("https://b.com"));
        assert!(!p.allows_origin("https://c.com:80"));
    }

    #[test]
    fn patterns_match_subdomains_only() {
        let p = policy(&cfg(&["https://*.example.com"]));
        assert!(p.allows_origin("https://a.example.com"));
        assert!(p.allows_origin("https://a.b.example.com"));
        assert!(p.allows_origin("https://A.EXAMPLE.com"));
        assert!(p.allows_origin("https://a.example.com:443"));
        for o in [
            // The bare domain is listed separately by design.
            "https://example.com",
            "https://example.com.evil.com",
            "https://a.example.com.evil.com",
            "https://evilexample.com",
            "https://a.evilexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://.example.com",
            "https://a..example.com",
            "https://a.example.com.",
            "https://a.example.com/",
            "https://evil.com/.example.com",
            "https://evil.com?.example.com",
            "https://evil.com#.example.com",
            "https://evil.com@a.example.com",
            "https://a.example.com@evil.com",
            "wss://a.example.com",
            "null",
        ] {
            assert!(!p.allows_origin(o), "{o} allowed");
        }
    }

    #[test]
    fn patterns_keep_their_port() {
        let p = policy(&cfg(&["http://*.localhost:8080"]));
        assert!(p.allows_origin("http://app.localhost:8080"));
        assert!(!p.allows_origin("http://app.localhost"));
        assert!(!p.allows_origin("http://app.localhost:8081"));
        assert!(!p.allows_origin("http://localhost:8080"));
        let p = policy(&cfg(&["https://*.example.com:443"]));
        assert!(p.allows_origin("https://a.example.com"));
    }

    #[test]
    fn malformed_patterns_are_config_errors_with_hints() {
        for (entry, wanted) in [
            ("https://api.*.example.com", "whole leftmost label"),
            ("https://a*.example.com", "whole leftmost label"),
            ("https://*example.com", "whole leftmost label"),
            ("https://*", "needs a domain"),
            ("https://*:443", "needs a domain"),
            ("*.example.com", "needs a scheme"),
            ("//*.example.com", "needs a scheme"),
            ("*://app.example.com", "scheme cannot be a wildcard"),
            ("https://*.*.example.com", "exactly one `*`"),
            ("https://*.example.com/", "no path"),
            ("https://*.example.com/api", "no path"),
            ("https://*.example.com:0", "port"),
            ("https://*.example.com:99999", "port"),
            ("https://*.com", "top-level domain"),
            ("https://*.", "domain name"),
            ("https://*..com", "domain name"),
            ("https://*.-a.com", "not a valid host name"),
            ("http://*.0.0.1", "IP address"),
            ("https://*.[::1]", "host"),
        ] {
            let errs = compile_errors(&cfg(&["https://ok.example.com", entry]));
            assert_eq!(errs.len(), 1, "{entry}: {errs:?}");
            let (path, msg, hint) = &errs[0];
            assert_eq!(path, "allowed_origins[1]");
            assert!(msg.contains(wanted), "{entry}: {msg}");
            if entry.contains("*.") && entry.contains("://") && !entry.starts_with('*') {
                assert!(hint.is_some(), "{entry}: no hint");
            }
        }
        let hint = &compile_errors(&cfg(&["https://*.example.com/"]))[0].2;
        assert!(
            hint.as_deref()
                .unwrap()
                .contains("\"https://*.example.com\""),
            "{hint:?}"
        );
        // A local development wildcard is fine.
        policy(&cfg(&["http://*.localhost"]));
    }

    #[test]
    fn malformed_exact_origins_are_config_errors() {
        let errs = compile_errors(&cfg(&[
            "https://app.example.com/",
            "app.example.com",
            "https://user@app.example.com",
            "https://app.example.com:abc",
            "https://app example.com",
            " https://app.example.com",
            "",
            "ht tp://a.com",
            "https://",
        ]));
        let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            (0..9)
                .map(|i| format!("allowed_origins[{i}]"))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            errs[0].2.as_deref(),
            Some("an origin is scheme://host[:port], as the browser sends it: write \"https://app.example.com\"")
        );
        assert_eq!(
            errs[1].2.as_deref(),
            Some("write the scheme too, e.g. \"https://app.example.com\"")
        );
        assert_eq!(
            errs[5].2.as_deref(),
            Some("write \"https://app.example.com\"")
        );
    }

    #[test]
    fn star_allows_any_origin_but_not_null_and_not_with_credentials() {
        let p = policy(&cfg(&["*"]));
        assert!(p.allows_origin("https://anything.test"));
        assert!(!p.allows_origin("null"));
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "https://x.test")]), &mut res);
        assert_eq!(get(&res, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&res, "access-control-allow-credentials"), None);

        let mut c = cfg(&["https://a.com", "*"]);
        c.allow_credentials = true;
        let errs = compile_errors(&c);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "allowed_origins[1]");
        assert!(errs[0].1.contains("allow_credentials"));
        assert!(errs[0].2.is_some());
    }

    #[test]
    fn null_is_allowed_only_when_listed() {
        let p = policy(&cfg(&["null"]));
        assert!(p.allows_origin("null"));
        assert!(!p.allows_origin("https://a.com"));
        let p = policy(&cfg(&["*", "null"]));
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "null")]), &mut res);
        assert_eq!(get(&res, "access-control-allow-origin"), Some("null"));
        let p = policy(&cfg(&["https://a.com"]));
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "null")]), &mut res);
        assert_eq!(get(&res, "access-control-allow-origin"), None);
    }

    #[test]
    fn an_empty_origin_list_allows_nothing() {
        let p = policy(&cfg(&[]));
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "https://a.com")]), &mut res);
        assert_eq!(get(&res, "access-control-allow-origin"), None);
        assert_eq!(get(&res, "vary"), Some("Origin"));
        assert_eq!(
            p.preflight(&headers(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "GET")
            ]))
            .unwrap_err(),
            "origin not allowed"
        );
    }

    #[test]
    fn apply_echoes_an_allowed_origin_with_exposed_headers() {
        let p = policy(&api_config());
        let mut res = headers(&[("content-type", "application/json")]);
        p.apply(&headers(&[("origin", "https://app.example.com")]), &mut res);
        assert_eq!(
            get(&res, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&res, "access-control-expose-headers"),
            Some("X-Request-Id")
        );
        assert_eq!(get(&res, "access-control-allow-credentials"), None);
        assert_eq!(get(&res, "vary"), Some("Origin"));
        // Preflight-only headers never go on actual responses.
        assert_eq!(get(&res, "access-control-allow-methods"), None);
        assert_eq!(get(&res, "access-control-max-age"), None);
        // The origin is echoed as the browser sent it.
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "https://Api.Example.com")]), &mut res);
        assert_eq!(
            get(&res, "access-control-allow-origin"),
            Some("https://Api.Example.com")
        );
    }

    #[test]
    fn apply_adds_nothing_but_vary_for_other_origins_and_strips_upstream_cors() {
        let p = policy(&api_config());
        for req in [
            headers(&[]),
            headers(&[("origin", "https://evil.com")]),
            headers(&[("origin", "https://example.com.evil.com")]),
            headers(&[
                ("origin", "https://app.example.com"),
                ("origin", "https://evil.com"),
            ]),
        ] {
            let mut res = headers(&[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "X-Secret"),
                ("x-other", "1"),
            ]);
            p.apply(&req, &mut res);
            assert_eq!(get(&res, "access-control-allow-origin"), None, "{req:?}");
            assert_eq!(get(&res, "access-control-allow-credentials"), None);
            assert_eq!(get(&res, "access-control-expose-headers"), None);
            assert_eq!(get(&res, "x-other"), Some("1"));
            assert_eq!(get(&res, "vary"), Some("Origin"));
        }
        // An upstream's own answer is replaced, not duplicated.
        let mut res = headers(&[("access-control-allow-origin", "*")]);
        p.apply(&headers(&[("origin", "https://app.example.com")]), &mut res);
        let all: Vec<_> = res.get_all("access-control-allow-origin").collect();
        assert_eq!(all, ["https://app.example.com"]);
    }

    #[test]
    fn apply_on_error_responses_too() {
        let p = policy(&api_config());
        let mut res = headers(&[
            ("www-authenticate", "Bearer"),
            ("content-type", "application/json"),
        ]);
        p.apply(&headers(&[("origin", "https://app.example.com")]), &mut res);
        assert_eq!(
            get(&res, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
    }

    #[test]
    fn vary_is_merged_not_duplicated() {
        let p = policy(&api_config());
        let req = headers(&[("origin", "https://app.example.com")]);
        let mut res = headers(&[("vary", "Accept-Encoding")]);
        p.apply(&req, &mut res);
        assert_eq!(get(&res, "vary"), Some("Accept-Encoding, Origin"));
        let mut res = headers(&[("vary", "Accept-Encoding"), ("vary", "Accept")]);
        p.apply(&req, &mut res);
        let all: Vec<_> = res.get_all("vary").collect();
        assert_eq!(all, ["Accept-Encoding, Accept, Origin"]);
        let mut res = headers(&[("vary", "accept-encoding, origin")]);
        p.apply(&req, &mut res);
        assert_eq!(get(&res, "vary"), Some("accept-encoding, origin"));
        let mut res = headers(&[("vary", "*")]);
        p.apply(&req, &mut res);
        assert_eq!(get(&res, "vary"), Some("*"));
        let mut res = HeaderMap::new();
        p.apply(&headers(&[]), &mut res);
        assert_eq!(get(&res, "vary"), Some("Origin"));
    }

    #[test]
    fn credentials_echo_the_origin() {
        let mut c = cfg(&["https://app.example.com", "https://*.example.org"]);
        c.allow_credentials = true;
        c.expose_headers = vec!["X-Request-Id".into()];
        let p = policy(&c);
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "https://x.example.org")]), &mut res);
        assert_eq!(
            get(&res, "access-control-allow-origin"),
            Some("https://x.example.org")
        );
        assert_eq!(get(&res, "access-control-allow-credentials"), Some("true"));
        let pre = p
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ]))
            .unwrap();
        assert_eq!(
            get(&pre, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&pre, "access-control-allow-credentials"), Some("true"));
    }

    #[test]
    fn is_preflight_needs_options_origin_and_request_method() {
        let full = headers(&[
            ("origin", "https://a.com"),
            ("access-control-request-method", "PUT"),
        ]);
        assert!(CorsPolicy::is_preflight(&Method::OPTIONS, &full));
        assert!(!CorsPolicy::is_preflight(&Method::GET, &full));
        assert!(!CorsPolicy::is_preflight(
            &Method::OPTIONS,
            &headers(&[("origin", "https://a.com")])
        ));
        assert!(!CorsPolicy::is_preflight(
            &Method::OPTIONS,
            &headers(&[("access-control-request-method", "PUT")])
        ));
    }

    #[test]
    fn preflight_answers_with_the_configured_lists() {
        let p = policy(&api_config());
        let pre = p
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ]))
            .unwrap();
        assert_eq!(
            get(&pre, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&pre, "access-control-allow-methods"),
            Some("GET, POST, PUT, DELETE")
        );
        assert_eq!(
            get(&pre, "access-control-allow-headers"),
            Some("Content-Type, Authorization")
        );
        assert_eq!(get(&pre, "access-control-max-age"), Some("3600"));
        assert_eq!(get(&pre, "access-control-allow-credentials"), None);
        assert_eq!(get(&pre, "access-control-expose-headers"), None);
        assert_eq!(
            get(&pre, "vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
    }

    #[test]
    fn preflight_refusals() {
        let p = policy(&api_config());
        let ask = |pairs: &[(&str, &str)]| p.preflight(&headers(pairs)).map(|_| ());
        let o = ("origin", "https://app.example.com");
        let get_ = ("access-control-request-method", "GET");
        assert_eq!(
            ask(&[("origin", "https://example.com.evil.com"), get_]),
            Err("origin not allowed")
        );
        assert_eq!(
            ask(&[("origin", "https://evilexample.com"), get_]),
            Err("origin not allowed")
        );
        assert_eq!(ask(&[("origin", "null"), get_]), Err("origin not allowed"));
        assert_eq!(
            ask(&[get_]),
            Err("origin not allowed"),
            "not a preflight at all"
        );
        assert_eq!(
            ask(&[o, ("access-control-request-method", "PATCH")]),
            Err("method not allowed")
        );
        // Methods compare exactly, as browsers compare them.
        assert_eq!(
            ask(&[o, ("access-control-request-method", "delete")]),
            Err("method not allowed")
        );
        assert_eq!(ask(&[o]), Err("malformed Access-Control-Request-Method"));
        assert_eq!(
            ask(&[o, ("access-control-request-method", "GE T")]),
            Err("malformed Access-Control-Request-Method")
        );
        assert_eq!(
            ask(&[o, get_, ("access-control-request-method", "PUT")]),
            Err("malformed Access-Control-Request-Method")
        );
        assert_eq!(
            ask(&[o, get_, ("access-control-request-headers", "x-custom")]),
            Err("request header not allowed")
        );
        assert_eq!(
            ask(&[
                o,
                get_,
                ("access-control-request-headers", "authorization, x-custom")
            ]),
            Err("request header not allowed")
        );
        assert_eq!(
            ask(&[o, get_, ("access-control-request-headers", "bad header")]),
            Err("malformed Access-Control-Request-Headers")
        );
        // A range request needs Range listed, like any other header.
        assert_eq!(
            ask(&[o, get_, ("access-control-request-headers", "range")]),
            Err("request header not allowed")
        );
    }

    #[test]
    fn preflight_header_lists_are_lenient_about_case_and_spaces() {
        let p = policy(&api_config());
        for list in [
            "AUTHORIZATION",
            "authorization ,\tcontent-type",
            " Content-Type , , Authorization ",
            "",
        ] {
            let pre = p.preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", list),
            ]));
            assert!(pre.is_ok(), "{list:?}: {pre:?}");
        }
        // Several header lines form one list.
        assert!(p
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
                ("access-control-request-headers", "content-type"),
            ]))
            .is_ok());
    }

    #[test]
    fn safelisted_headers_need_not_be_listed_but_are_named_in_the_answer() {
        let p = policy(&api_config());
        let pre = p
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "accept,authorization"),
            ]))
            .unwrap();
        assert_eq!(
            get(&pre, "access-control-allow-headers"),
            Some("Content-Type, Authorization, accept")
        );
        let p = policy(&cfg(&["https://a.com"]));
        let pre = p
            .preflight(&headers(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "GET"),
                (
                    "access-control-request-headers",
                    "accept-language,content-language",
                ),
            ]))
            .unwrap();
        assert_eq!(
            get(&pre, "access-control-allow-headers"),
            Some("accept-language, content-language")
        );
        // Content-Type (JSON bodies) is the opt-in a preflight exists for: it must be listed.
        assert_eq!(
            p.preflight(&headers(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ]))
            .unwrap_err(),
            "request header not allowed"
        );
    }

    #[test]
    fn default_methods_when_none_are_listed() {
        let p = policy(&cfg(&["https://a.com"]));
        for m in DEFAULT_METHODS {
            let pre = p
                .preflight(&headers(&[
                    ("origin", "https://a.com"),
                    ("access-control-request-method", m),
                ]))
                .unwrap();
            assert_eq!(
                get(&pre, "access-control-allow-methods"),
                Some("GET, HEAD, POST, PUT, PATCH, DELETE")
            );
            // Nothing configured, nothing asked: no Allow-Headers.
            assert_eq!(get(&pre, "access-control-allow-headers"), None);
            assert_eq!(get(&pre, "access-control-max-age"), None);
        }
        assert_eq!(
            p.preflight(&headers(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "PURGE"),
            ]))
            .unwrap_err(),
            "method not allowed"
        );
    }

    #[test]
    fn methods_are_upper_cased_and_validated() {
        let mut c = cfg(&["https://a.com"]);
        c.allowed_methods = vec!["get".into(), "Purge".into(), "GET".into()];
        let p = policy(&c);
        let pre = p
            .preflight(&headers(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "PURGE"),
            ]))
            .unwrap();
        assert_eq!(
            get(&pre, "access-control-allow-methods"),
            Some("GET, PURGE")
        );
        c.allowed_methods = vec!["GET".into(), "G T".into(), "".into()];
        let errs = compile_errors(&c);
        let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(paths, ["allowed_methods[1]", "allowed_methods[2]"]);
    }

    #[test]
    fn wildcard_methods_and_headers() {
        let mut c = cfg(&["https://a.com"]);
        c.allowed_methods = vec!["*".into()];
        c.allowed_headers = vec!["*".into()];
        let p = policy(&c);
        let req = headers(&[
            ("origin", "https://a.com"),
            ("access-control-request-method", "PURGE"),
            ("access-control-request-headers", "authorization,x-anything"),
        ]);
        let pre = p.preflight(&req).unwrap();
        assert_eq!(get(&pre, "access-control-allow-methods"), Some("*"));
        // `*` never covers Authorization in browsers: the names are echoed.
        assert_eq!(
            get(&pre, "access-control-allow-headers"),
            Some("authorization, x-anything")
        );
        // With credentials `*` is no wildcard to a browser: echo the method too.
        c.allow_credentials = true;
        let pre = policy(&c).preflight(&req).unwrap();
        assert_eq!(get(&pre, "access-control-allow-methods"), Some("PURGE"));
        assert_eq!(
            get(&pre, "access-control-allow-headers"),
            Some("authorization, x-anything")
        );
        // Nothing asked: nothing to name.
        let pre = policy(&c)
            .preflight(&headers(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "GET"),
            ]))
            .unwrap();
        assert_eq!(get(&pre, "access-control-allow-headers"), None);
    }

    #[test]
    fn expose_headers_validation_and_wildcard() {
        let mut c = cfg(&["*"]);
        c.expose_headers = vec!["*".into()];
        let p = policy(&c);
        let mut res = HeaderMap::new();
        p.apply(&headers(&[("origin", "https://a.com")]), &mut res);
        assert_eq!(get(&res, "access-control-expose-headers"), Some("*"));

        let mut c = cfg(&["https://a.com"]);
        c.allow_credentials = true;
        c.expose_headers = vec!["X-Ok".into(), "*".into(), "bad name".into()];
        c.allowed_headers = vec!["x:y".into()];
        let errs = compile_errors(&c);
        let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "allowed_headers[0]",
                "expose_headers[1]",
                "expose_headers[2]"
            ]
        );
        assert!(errs[1].2.is_some());
    }

    #[test]
    fn every_error_is_reported() {
        let c = CorsConfig {
            allowed_origins: vec!["*".into(), "https://a.*.com".into(), "a.com".into()],
            allowed_methods: vec!["G T".into()],
            allowed_headers: vec!["".into()],
            expose_headers: vec!["*".into()],
            allow_credentials: true,
            max_age: None,
        };
        let errs = compile_errors(&c);
        let paths: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "allowed_origins[0]",
                "allowed_origins[1]",
                "allowed_origins[2]",
                "allowed_methods[0]",
                "allowed_headers[0]",
                "expose_headers[0]"
            ]
        );
    }

    #[test]
    fn header_values_are_built_once() {
        let p = policy(&api_config());
        assert_eq!(p.allow_methods, "GET, POST, PUT, DELETE");
        assert_eq!(
            p.allow_headers.as_ref().unwrap(),
            "Content-Type, Authorization"
        );
        assert_eq!(p.expose_headers.as_ref().unwrap(), "X-Request-Id");
        assert_eq!(p.max_age.as_ref().unwrap(), "3600");
    }

    proptest::proptest! {
        /// Whatever the Origin text, a pattern allows nothing but https subdomains of its
        /// domain on the default port.
        #[test]
        fn a_pattern_allows_only_its_subdomains(origin in "(?i)(https?|wss)://[a-z0-9.@:/#?_-]{0,12}(\\.?example\\.com)?(\\.[a-z]{1,4})?(:[0-9]{1,4})?/?") {
            let p = policy(&cfg(&["https://*.example.com"]));
            if p.allows_origin(&origin) {
                let lower = origin.to_ascii_lowercase();
                let host = lower.strip_prefix("https://").expect("https").trim_end_matches(":443");
                proptest::prop_assert!(host.ends_with(".example.com"), "{}", origin);
                let sub = &host[..host.len() - ".example.com".len()];
                proptest::prop_assert!(!sub.is_empty() && sub.split('.').all(|l| !l.is_empty()), "{}", origin);
                proptest::prop_assert!(sub.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'), "{}", origin);
            }
        }
    }

    #[test]
    fn non_utf8_origins_are_not_allowed() {
        let p = policy(&cfg(&["*"]));
        let mut req = HeaderMap::new();
        req.insert(
            ORIGIN,
            HeaderValue::from_bytes(b"https://\xffa.com").unwrap(),
        );
        let mut res = HeaderMap::new();
        p.apply(&req, &mut res);
        assert_eq!(get(&res, "access-control-allow-origin"), None);
    }
}
