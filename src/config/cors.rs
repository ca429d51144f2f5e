//! The `cors` config (top level or per route) and its compiled form: origins parsed and
//! normalised, wildcard patterns checked, every constant header value built once. How a
//! compiled policy answers requests belongs to the edge layer (`src/edge/cors.rs`).
//!
//! Decisions where the Fetch standard leaves the server a choice:
//! - Origins: an exact origin (`https://app.example.com`, scheme and host compared
//!   case-insensitively, a default port written out equals none), a pattern
//!   `scheme://*.domain[:port]` that matches one or more labels in front of `.domain` with the
//!   same scheme and port but NOT the bare domain (list `https://example.com` separately), `"*"`
//!   for any origin (not allowed together with `allow_credentials`), or the literal `"null"`,
//!   which only an exact `"null"` entry allows (`"*"` does not). An empty list allows no origin:
//!   a route can switch off the top-level CORS that way.
//! - Methods: an empty `allowed_methods` means [`DEFAULT_METHODS`]. Names are upper-cased;
//!   a preflight's requested method is compared exactly, as browsers compare it. `"*"` allows any
//!   method (answered `*`, or the requested method when credentials are allowed).
//! - Request headers: compared case-insensitively. `Accept`, `Accept-Language` and
//!   `Content-Language` need not be listed (a browser only asks for them when a value is unusual).
//!   `Content-Type` must be listed to accept JSON and other non-form bodies: that is the opt-in
//!   the preflight exists for. `"*"` allows any header; the answer then echoes the requested
//!   names, because browsers never let `*` cover `Authorization` and ignore it with credentials.
//! - The gateway's policy replaces any `Access-Control-Allow-Origin`, `-Allow-Credentials` and
//!   `-Expose-Headers` an upstream sent: two answers would make browsers refuse the response.
//! - A request with more than one `Origin` header is treated as coming from no allowed origin.

use actix_web::http::header::HeaderValue;

/// The methods allowed when `allowed_methods` is empty.
pub const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Request headers a preflight may ask for without them being listed.
/// The validated `cors` config (top level or per route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins, `scheme://*.domain[:port]` patterns, `"null"`, or `"*"`.
    pub allowed_origins: Vec<String>,
    /// Empty means [`DEFAULT_METHODS`]; `"*"` allows any method.
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for; `"*"` allows any.
    pub allowed_headers: Vec<String>,
    /// Response headers a page may read besides the safelisted ones; `"*"` (without
    /// credentials) exposes all.
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, in seconds (browsers cap it: Chromium at
    /// 7200, Firefox at 86400).
    pub max_age: Option<u64>,
}

/// A config error: the path relative to the `cors` object (such as `allowed_origins[2]`), the
/// message and an optional hint.
pub type CorsError = (String, String, Option<String>);

/// A compiled [`CorsConfig`]: normalised origins and patterns, and every constant header value
/// built once.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub(crate) any_origin: bool,
    pub(crate) allow_null: bool,
    exact: Vec<OriginParts>,
    patterns: Vec<OriginPattern>,
    pub(crate) any_method: bool,
    /// Upper-case.
    pub(crate) methods: Vec<Box<str>>,
    pub(crate) any_header: bool,
    /// Lower-case.
    pub(crate) headers: Vec<Box<str>>,
    pub(crate) credentials: bool,
    pub(crate) allow_methods: HeaderValue,
    /// The configured list as written; `None` when empty or `"*"`.
    pub(crate) allow_headers: Option<HeaderValue>,
    pub(crate) expose_headers: Option<HeaderValue>,
    pub(crate) max_age: Option<HeaderValue>,
}

/// An origin as configured: lower-case scheme and host, and the port with the scheme's default
/// filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginParts {
    scheme: Box<str>,
    host: Box<str>,
    port: Option<u16>,
}

/// `scheme://*.domain[:port]`; `suffix` is `.domain`, lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: Box<str>,
    suffix: Box<str>,
    port: Option<u16>,
}

/// An origin split into its parts, borrowing the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    /// Explicit, or the scheme's default.
    port: Option<u16>,
}

/// Why a string is not an origin, with the hint for a config error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OriginError {
    NoScheme,
    BadScheme,
    HasPath,
    UserInfo,
    BadHost,
    BadPort,
}

impl OriginError {
    fn message(self) -> &'static str {
        match self {
            OriginError::NoScheme => "an origin needs a scheme",
            OriginError::BadScheme => "the scheme is not valid",
            OriginError::HasPath => "an origin has no path, query or fragment",
            OriginError::UserInfo => "an origin has no user name or password",
            OriginError::BadHost => "the host is not a valid host name or IP address",
            OriginError::BadPort => "the port is not a number from 1 to 65535",
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

/// Splits `scheme://host[:port]`, rejecting anything a browser would not send as an origin.
/// No allocation: it runs for every request with an `Origin`.
fn parse_origin(s: &str) -> Result<Origin<'_>, OriginError> {
    let (scheme, rest) = s.split_once("://").ok_or(OriginError::NoScheme)?;
    let mut sb = scheme.bytes();
    if !sb.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(OriginError::BadScheme);
    }
    if rest.contains(['/', '?', '#']) {
        return Err(OriginError::HasPath);
    }
    if rest.contains('@') {
        return Err(OriginError::UserInfo);
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or(OriginError::BadHost)?;
        let inner = &rest[1..end];
        if inner.is_empty()
            || !inner.contains(':')
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return Err(OriginError::BadHost);
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (&rest[..=end], Some(p)),
            None if after.is_empty() => (&rest[..=end], None),
            None => return Err(OriginError::BadHost),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if !host.starts_with('[')
        && (host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        return Err(OriginError::BadHost);
    }
    let port = match port {
        None => default_port(scheme),
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(OriginError::BadPort);
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(OriginError::BadPort),
                Ok(n) => Some(n),
            }
        }
    };
    Ok(Origin { scheme, host, port })
}

/// Whether `s` is one or more non-empty dot-separated labels.
fn is_labels(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|l| !l.is_empty())
}

/// An RFC 9110 token (a method or header name).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// The fix for a malformed origin entry, where one is obvious.
fn hint_for_origin(entry: &str, e: OriginError) -> Option<String> {
    match e {
        OriginError::NoScheme => Some(format!(
            "write the scheme too, e.g. \"https://{}\"",
            entry.trim_start_matches('/')
        )),
        OriginError::HasPath => {
            let (scheme, rest) = entry.split_once("://")?;
            let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
            Some(format!(
                "an origin is scheme://host[:port], as the browser sends it: write \"{scheme}://{host}\""
            ))
        }
        OriginError::UserInfo => Some("remove the `user@` part".into()),
        OriginError::BadScheme => Some("write it as \"https://app.example.com\"".into()),
        OriginError::BadHost | OriginError::BadPort => None,
    }
}

fn join(items: &[&str]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl CorsPolicy {
    /// Validates and compiles `cfg`, collecting every error.
    pub fn compile(cfg: &CorsConfig) -> Result<CorsPolicy, Vec<CorsError>> {
        let mut errors: Vec<CorsError> = Vec::new();
        let mut err = |path: String, msg: &str, hint: Option<String>| {
            errors.push((path, msg.to_string(), hint));
        };

        let origins = compile_origins(cfg, &mut err);

        let mut any_method = false;
        let mut methods: Vec<Box<str>> = Vec::new();
        let mut method_names: Vec<&str> = Vec::new();
        if cfg.allowed_methods.is_empty() {
            methods.extend(DEFAULT_METHODS.iter().map(|m| Box::<str>::from(*m)));
        }
        for (i, m) in cfg.allowed_methods.iter().enumerate() {
            if m == "*" {
                any_method = true;
            } else if !is_token(m) {
                err(
                    format!("allowed_methods[{i}]"),
                    "not a valid HTTP method name",
                    Some("write method names such as \"GET\" or \"DELETE\"".into()),
                );
            } else {
                let upper = m.to_ascii_uppercase();
                if !methods.iter().any(|x| **x == *upper) {
                    methods.push(upper.into());
                }
            }
        }
        method_names.extend(methods.iter().map(|m| &**m));
        let allow_methods = if any_method && !cfg.allow_credentials {
            HeaderValue::from_static("*")
        } else {
            join(&method_names).unwrap_or_else(|| HeaderValue::from_static(""))
        };

        let mut any_header = false;
        let mut headers: Vec<Box<str>> = Vec::new();
        let mut header_names: Vec<&str> = Vec::new();
        for (i, h) in cfg.allowed_headers.iter().enumerate() {
            if h == "*" {
                any_header = true;
            } else if !is_token(h) {
                err(
                    format!("allowed_headers[{i}]"),
                    "not a valid header name",
                    None,
                );
            } else {
                let lower = h.to_ascii_lowercase();
                if !headers.iter().any(|x| **x == *lower) {
                    headers.push(lower.into());
                    header_names.push(h);
                }
            }
        }
        let allow_headers = if any_header {
            None
        } else {
            join(&header_names)
        };

        let mut expose_names: Vec<&str> = Vec::new();
        for (i, h) in cfg.expose_headers.iter().enumerate() {
            let path = format!("expose_headers[{i}]");
            if h == "*" && cfg.allow_credentials {
                err(
                    path,
                    "\"*\" exposes every header only without credentials; with allow_credentials it would expose a header named `*`",
                    Some("list the response headers the page may read, e.g. \"X-Request-Id\"".into()),
                );
            } else if !is_token(h) {
                err(path, "not a valid header name", None);
            } else if !expose_names.iter().any(|x| x.eq_ignore_ascii_case(h)) {
                expose_names.push(h);
            }
        }
        let expose_headers = join(&expose_names);

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CorsPolicy {
            any_origin: origins.any,
            allow_null: origins.null,
            exact: origins.exact,
            patterns: origins.patterns,
            any_method,
            methods,
            any_header,
            headers,
            credentials: cfg.allow_credentials,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: cfg.max_age.map(HeaderValue::from),
        })
    }

    /// Whether a request with this `Origin` value may read responses.
    pub fn allows_origin(&self, origin: &str) -> bool {
        if origin.eq_ignore_ascii_case("null") {
            return self.allow_null;
        }
        if self.any_origin {
            return true;
        }
        let Ok(o) = parse_origin(origin) else {
            return false;
        };
        self.exact.iter().any(|e| {
            e.port == o.port
                && e.scheme.eq_ignore_ascii_case(o.scheme)
                && e.host.eq_ignore_ascii_case(o.host)
        }) || self.patterns.iter().any(|p| p.matches(&o))
    }
}

/// Why a wildcard origin entry is not a usable pattern: the message and, where one is
/// obvious, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PatternError {
    message: &'static str,
    hint: Option<String>,
}

impl PatternError {
    fn new(message: &'static str, hint: Option<String>) -> Self {
        PatternError { message, hint }
    }
}

/// The `allowed_origins` of a policy, compiled.
struct Origins {
    any: bool,
    null: bool,
    exact: Vec<OriginParts>,
    patterns: Vec<OriginPattern>,
}

/// Compiles `allowed_origins`; each bad entry is reported through `err`.
fn compile_origins(
    cfg: &CorsConfig,
    err: &mut impl FnMut(String, &str, Option<String>),
) -> Origins {
    let mut any_origin = false;
    let mut allow_null = false;
    let mut exact: Vec<OriginParts> = Vec::new();
    let mut patterns: Vec<OriginPattern> = Vec::new();
    for (i, entry) in cfg.allowed_origins.iter().enumerate() {
        let path = format!("allowed_origins[{i}]");
        if entry.is_empty() {
            err(path, "an origin cannot be empty", None);
            continue;
        }
        if entry.trim() != entry {
            err(
                path,
                "an origin cannot start or end with spaces",
                Some(format!("write \"{}\"", entry.trim())),
            );
            continue;
        }
        if entry == "*" {
            if cfg.allow_credentials {
                err(
                    path,
                    "\"*\" cannot be combined with allow_credentials: browsers refuse credentialed responses to any origin",
                    Some("list the origins that may send credentials, e.g. \"https://app.example.com\"".into()),
                );
            }
            any_origin = true;
            continue;
        }
        if entry.eq_ignore_ascii_case("null") {
            allow_null = true;
            continue;
        }
        if entry.contains('*') {
            match compile_pattern(entry) {
                Ok(p) => {
                    if !patterns.contains(&p) {
                        patterns.push(p);
                    }
                }
                Err(e) => err(path, e.message, e.hint),
            }
            continue;
        }
        match parse_origin(entry) {
            Ok(o) => {
                let parts = OriginParts {
                    scheme: o.scheme.to_ascii_lowercase().into(),
                    host: o.host.to_ascii_lowercase().into(),
                    port: o.port,
                };
                if !exact.contains(&parts) {
                    exact.push(parts);
                }
            }
            Err(e) => err(path, e.message(), hint_for_origin(entry, e)),
        }
    }
    Origins {
        any: any_origin,
        null: allow_null,
        exact,
        patterns,
    }
}

/// Parses `scheme://*.domain[:port]`.
fn compile_pattern(entry: &str) -> Result<OriginPattern, PatternError> {
    let example = Some("write it as \"https://*.example.com\" (and list \"https://example.com\" separately if the bare domain is wanted too)".to_string());
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err(PatternError::new(
            "a wildcard origin needs a scheme",
            example,
        ));
    };
    if scheme.contains('*') {
        return Err(PatternError::new(
            "the scheme cannot be a wildcard",
            Some("list \"http://...\" and \"https://...\" separately".into()),
        ));
    }
    if entry.matches('*').count() > 1 {
        return Err(PatternError::new(
            "an origin pattern has exactly one `*`",
            example,
        ));
    }
    let Some(after) = rest.strip_prefix("*.") else {
        let msg = if rest == "*" || rest.starts_with("*:") {
            "a wildcard needs a domain after it"
        } else {
            "`*` must be the whole leftmost label(s) of the host"
        };
        return Err(PatternError::new(msg, example));
    };
    // Validate the rest as an origin with a stand-in label where the `*` was.
    let stand_in = format!("{scheme}://x.{after}");
    let o = match parse_origin(&stand_in) {
        Ok(o) => o,
        Err(e) => {
            let hint = hint_for_origin(entry, e).or(example);
            return Err(PatternError::new(e.message(), hint));
        }
    };
    let domain = &o.host[2..];
    if domain.starts_with('[') || !is_labels(domain) {
        return Err(PatternError::new(
            "a wildcard needs a domain name after `*.`",
            example,
        ));
    }
    let labels_ok = domain.split('.').all(|l| {
        l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    });
    if !labels_ok {
        return Err(PatternError::new(
            "the domain after `*.` is not a valid host name",
            example,
        ));
    }
    let last = domain.rsplit('.').next().unwrap_or(domain);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PatternError::new(
            "a wildcard cannot stand for part of an IP address",
            Some("list each IP origin exactly".into()),
        ));
    }
    if !domain.contains('.') && !domain.eq_ignore_ascii_case("localhost") {
        return Err(PatternError::new(
            "a wildcard in front of a top-level domain would allow every site under it",
            example,
        ));
    }
    Ok(OriginPattern {
        scheme: scheme.to_ascii_lowercase().into(),
        suffix: format!(".{}", domain.to_ascii_lowercase()).into(),
        port: o.port,
    })
}

impl OriginPattern {
    fn matches(&self, o: &Origin<'_>) -> bool {
        if o.port != self.port || !self.scheme.eq_ignore_ascii_case(o.scheme) {
            return false;
        }
        let (host, suffix) = (o.host.as_bytes(), self.suffix.as_bytes());
        if host.len() <= suffix.len() {
            return false;
        }
        let split = host.len() - suffix.len();
        host[split..].eq_ignore_ascii_case(suffix) && is_labels(&o.host[..split])
    }
}
