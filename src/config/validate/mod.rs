//! Raw config -> validated model. Collects every error (with its JSON path) instead of stopping
//! at the first, so an operator fixes a file in one pass.

use super::error::{did_you_mean, ConfigError};
use super::model::*;
use super::raw::*;
use super::units::{parse_duration, parse_size};
use ipnet::IpNet;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// The parsed pieces of a route path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The template with parameters renamed by position (`{p0}`, `{*p1}`), so that two routes
    /// differing only in parameter names share one router entry.
    pub normalized: String,
    pub params: Vec<String>,
}

/// Parses a route path template (`/users/{id}/files/{*rest}`).
pub fn parse_path_template(path: &str) -> Result<PathTemplate, String> {
    if !path.starts_with('/') {
        return Err(format!("path must start with '/', found \"{path}\""));
    }
    let mut normalized = String::with_capacity(path.len());
    let mut params: Vec<String> = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("unbalanced '}}' in path \"{path}\""));
        }
        normalized.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in path \"{path}\""))?;
        let inner = &after[..close];
        let (catch_all, name) = match inner.strip_prefix('*') {
            Some(n) => (true, n),
            None => (false, inner),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "parameter name \"{inner}\" in path \"{path}\" must be letters, digits or '_'"
            ));
        }
        if params.iter().any(|p| p == name) {
            return Err(format!(
                "parameter {{{name}}} appears twice in path \"{path}\""
            ));
        }
        let seg_start = normalized.ends_with('/');
        let tail = &after[close + 1..];
        if catch_all && !tail.is_empty() {
            return Err(format!(
                "catch-all {{*{name}}} must be the last part of path \"{path}\""
            ));
        }
        if !seg_start || !(tail.is_empty() || tail.starts_with('/')) {
            return Err(format!(
                "parameter {{{inner}}} must fill a whole path segment in \"{path}\""
            ));
        }
        let i = params.len();
        normalized.push_str(&if catch_all {
            format!("{{*p{i}}}")
        } else {
            format!("{{p{i}}}")
        });
        params.push(name.to_string());
        rest = tail;
    }
    normalized.push_str(rest);
    Ok(PathTemplate { normalized, params })
}

/// Compiles a rewrite template against the route's parameter names.
pub fn parse_rewrite(rewrite: &str, params: &[String]) -> Result<Rewrite, String> {
    if !rewrite.starts_with('/') {
        return Err(format!("rewrite must start with '/', found \"{rewrite}\""));
    }
    let mut parts = Vec::new();
    let mut rest = rewrite;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(RewritePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in rewrite \"{rewrite}\""))?;
        let name = after[..close].trim_start_matches('*');
        let idx = params.iter().position(|p| p == name).ok_or_else(|| {
            let known = if params.is_empty() {
                "the path has no parameters".to_string()
            } else {
                format!(
                    "the path has {}",
                    params
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("rewrite uses {{{name}}} but {known}")
        })?;
        parts.push(RewritePart::Param(idx));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(RewritePart::Literal(rest.to_string()));
    }
    Ok(Rewrite {
        template: rewrite.to_string(),
        parts,
    })
}

/// Parses an upstream server URL into its runtime form.
pub fn parse_server_url(
    url: &str,
) -> Result<(bool, http::uri::Authority, http::HeaderValue, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("\"{url}\" is not a valid URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(format!(
                "scheme \"{other}\" in \"{url}\" is not supported (use http or https)"
            ))
        }
        None => return Err(format!("\"{url}\" needs a scheme: write \"http://{url}\"")),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| format!("\"{url}\" has no host"))?;
    if auth.as_str().contains('@') {
        return Err(format!("\"{url}\" must not contain credentials"));
    }
    if auth.host().is_empty() {
        return Err(format!("\"{url}\" has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "\"{url}\" must not have a path or query; use the route's \"rewrite\" to change the path"
        ));
    }
    let default_port = if https { 443 } else { 80 };
    let port = auth.port_u16().unwrap_or(default_port);
    let host = auth.host();
    let authority: http::uri::Authority = format!("{host}:{port}")
        .parse()
        .map_err(|e| format!("\"{url}\": {e}"))?;
    let host_header = if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let host_header =
        http::HeaderValue::from_str(&host_header).map_err(|e| format!("\"{url}\": {e}"))?;
    let scheme = if https { "https" } else { "http" };
    Ok((
        https,
        authority,
        host_header,
        format!("{scheme}://{host}:{port}"),
    ))
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("\"{text}\" is not an IP address or CIDR range such as \"10.0.0.0/8\"")
        })
}

fn read_ca_file(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} contains no PEM certificate", path.display()));
    }
    Ok(certs)
}

type RoutesOnShape = Vec<(usize, MethodSet)>;

const STRATEGIES: [&str; 7] = [
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "ip_hash",
    "random",
    "health_based",
    "p2c_ewma",
];

struct V {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl V {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }
    fn err_hint(
        &mut self,
        path: impl Into<String>,
        msg: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(ConfigError::new(path, msg).with_hint(hint));
    }
    /// Parses an optional value, recording the error (and using the default) if it is bad.
    fn parsed<T>(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> T {
        match v.as_deref().map(parse) {
            None => default,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                self.err(path, e);
                default
            }
        }
    }
    fn duration(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        self.parsed(path, v, default, parse_duration)
    }
    fn size(&mut self, path: &str, v: &Option<String>, default: u64) -> u64 {
        self.parsed(path, v, default, parse_size)
    }
}

/// Validates a raw config. `base_dir` resolves relative file paths.
pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut v = V {
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    if let Some(ver) = raw.version {
        if ver != 1 {
            v.err(
                "version",
                format!("unsupported config version {ver}; this gateway reads version 1"),
            );
        }
    }
    let top_limits = raw
        .rate_limiting
        .as_ref()
        .map(|r| rate_limiting_config(&mut v, r));
    let jwt = raw.jwt_validation.as_ref().map(|j| jwt_config(&mut v, j));
    let api_keys = raw.api_keys.as_ref().map(|k| api_keys_config(&mut v, k));
    let cors = raw.cors.as_ref().map(|c| cors_config(&mut v, "cors", c));

    // server
    let s = &raw.server;
    let workers = match s.workers {
        Some(0) => {
            v.err("server.workers", "workers must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let max_body_size = v.size("server.max_body_size", &s.max_body_size, 10 << 20);
    let mut trusted = Vec::new();
    for (i, t) in s.trusted_proxies.iter().flatten().enumerate() {
        match parse_net(t) {
            Ok(n) => trusted.push(n),
            Err(e) => v.err(format!("server.trusted_proxies[{i}]"), e),
        }
    }
    let tls = s.tls.as_ref().map(|t| {
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let cfg = TlsConfig {
            cert: resolve(&t.cert),
            key: resolve(&t.key),
        };
        for (field, path) in [("cert", &cfg.cert), ("key", &cfg.key)] {
            if !path.is_file() {
                v.err(
                    format!("server.tls.{field}"),
                    format!("file {} does not exist", path.display()),
                );
            }
        }
        cfg
    });
    let host = s.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    if host.parse::<std::net::IpAddr>().is_err() && host != "localhost" {
        v.err_hint(
            "server.host",
            format!("\"{host}\" is not an IP address"),
            "use \"0.0.0.0\" to listen on all interfaces",
        );
    }
    let server = ServerConfig {
        host,
        port: s.port.unwrap_or(8080),
        workers,
        max_body_size,
        request_timeout: v.duration(
            "server.request_timeout",
            &s.request_timeout,
            Duration::from_secs(30),
        ),
        trusted_proxies: trusted,
        tls,
        h2c: s.h2c.unwrap_or(true),
        shutdown_timeout: v.duration(
            "server.shutdown_timeout",
            &s.shutdown_timeout,
            Duration::from_secs(30),
        ),
        keep_alive: v.duration("server.keep_alive", &s.keep_alive, Duration::from_secs(75)),
        max_uri_length: v.size("server.max_uri_length", &s.max_uri_length, 8 << 10),
        max_header_size: v.size("server.max_header_size", &s.max_header_size, 32 << 10),
        max_connections: s.max_connections.unwrap_or(25_000),
        client_header_timeout: v.duration(
            "server.client_header_timeout",
            &s.client_header_timeout,
            Duration::from_secs(10),
        ),
    };
    if server.max_connections < server.workers {
        v.err_hint(
            "server.max_connections",
            format!(
                "max_connections {} is less than one connection per worker ({} workers)",
                server.max_connections, server.workers
            ),
            "raise it, or lower server.workers",
        );
    }
    if server.client_header_timeout.is_zero() {
        v.err(
            "server.client_header_timeout",
            "client_header_timeout must be more than 0s",
        );
    }
    if server.request_timeout.is_zero() {
        v.err(
            "server.request_timeout",
            "request_timeout must be more than 0s",
        );
    }

    // admin
    let admin = match &raw.admin {
        None => AdminConfig {
            watch_config: true,
            ..AdminConfig::default()
        },
        Some(a) => {
            if let Some(t) = &a.token {
                if t.len() < 16 {
                    v.err_hint("admin.token", "admin token is shorter than 16 characters", "generate one with `openssl rand -hex 32` and pass it as \"${KAIROS_ADMIN_TOKEN}\"");
                }
            }
            AdminConfig {
                token: a.token.clone(),
                public_metrics: a.public_metrics.unwrap_or(false),
                watch_config: a.watch_config.unwrap_or(true),
            }
        }
    };

    // upstreams
    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, u) in &raw.upstreams {
        let p = format!("upstreams.{name}");
        if u.servers.is_empty() {
            v.err(
                format!("{p}.servers"),
                "an upstream needs at least one server",
            );
        }
        let mut servers = Vec::new();
        for (i, se) in u.servers.iter().enumerate() {
            let sp = format!("{p}.servers[{i}]");
            let weight = se.weight.unwrap_or(1);
            if weight == 0 || weight > 1000 {
                v.err_hint(
                    format!("{sp}.weight"),
                    format!("weight {weight} is out of range"),
                    "use a weight from 1 to 1000; remove the server to take it out",
                );
            }
            match parse_server_url(&se.url) {
                Ok((https, authority, host_header, url)) => {
                    if servers.iter().any(|s: &ServerEntry| s.url == url) {
                        v.err(format!("{sp}.url"), format!("server {url} is listed twice"));
                    }
                    servers.push(ServerEntry {
                        url,
                        https,
                        // Without an IPv6 address's brackets (as `server.address` wants it).
                        host: authority
                            .host()
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_string(),
                        port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
                        authority,
                        host_header,
                        weight: weight.clamp(1, 1000),
                    })
                }
                Err(e) => v.err(format!("{sp}.url"), e),
            }
        }
        let strategy = match u
            .load_balancing
            .as_ref()
            .and_then(|l| l.strategy.as_deref())
        {
            None => Strategy::RoundRobin,
            Some(name) => Strategy::parse(name).unwrap_or_else(|| {
                let hint = did_you_mean(name, STRATEGIES)
                    .unwrap_or_else(|| format!("expected one of {}", STRATEGIES.join(", ")));
                v.err_hint(
                    format!("{p}.load_balancing.strategy"),
                    format!("unknown strategy `{name}`"),
                    hint,
                );
                Strategy::RoundRobin
            }),
        };
        let attempt_timeout = u.attempt_timeout.as_ref().map(|_| {
            v.duration(
                &format!("{p}.attempt_timeout"),
                &u.attempt_timeout,
                Duration::from_secs(30),
            )
        });
        if attempt_timeout.is_some_and(|d| d.is_zero()) {
            v.err(
                format!("{p}.attempt_timeout"),
                "attempt_timeout must be more than 0s",
            );
        }
        let health_check = u
            .health_check
            .as_ref()
            .map(|h| health_check(&mut v, &format!("{p}.health_check"), h));
        let circuit_breaker = u
            .circuit_breaker
            .as_ref()
            .map(|b| circuit_breaker(&mut v, &format!("{p}.circuit_breaker"), b));
        let outlier = outlier_detection(
            &mut v,
            &format!("{p}.outlier_detection"),
            u.outlier_detection.as_ref(),
        );
        let retries = match &u.retries {
            None => RetryConfig::default(),
            Some(r) => retries(&mut v, &format!("{p}.retries"), r),
        };
        let connect_timeout = v.duration(
            &format!("{p}.connect_timeout"),
            &u.connect_timeout,
            Duration::from_secs(2),
        );
        if connect_timeout.is_zero() {
            v.err(
                format!("{p}.connect_timeout"),
                "connect_timeout must be more than 0s",
            );
        }
        let tls_roots = u
            .tls
            .as_ref()
            .and_then(|t| t.ca_file.as_ref())
            .and_then(|f| {
                let path = if Path::new(f).is_absolute() {
                    Path::new(f).to_path_buf()
                } else {
                    base_dir.join(f)
                };
                match read_ca_file(&path) {
                    Ok(certs) => Some(certs),
                    Err(e) => {
                        v.err(format!("{p}.tls.ca_file"), e);
                        None
                    }
                }
            });
        upstream_index.insert(name.as_str(), upstreams.len());
        upstreams.push(UpstreamConfig {
            name: name.clone(),
            servers,
            strategy,
            connect_timeout,
            tls_roots,
            attempt_timeout,
            health_check,
            circuit_breaker,
            outlier,
            retries,
        });
    }

    // routes
    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // (host, normalised path) -> the routes on it with their methods.
    let mut shapes: HashMap<(Option<String>, String), RoutesOnShape> = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        let template = match parse_path_template(&r.path) {
            Ok(t) => Some(t),
            Err(e) => {
                v.err(format!("{p}.path"), e);
                None
            }
        };
        if r.path == "/_kairos" || r.path.starts_with("/_kairos/") {
            v.err(
                format!("{p}.path"),
                "paths under /_kairos are reserved for the gateway's own endpoints",
            );
        }
        let methods = match &r.methods {
            None => MethodSet::ALL,
            Some(list) if list.is_empty() => {
                v.err_hint(
                    format!("{p}.methods"),
                    "an empty method list matches nothing",
                    "omit `methods` to allow every method",
                );
                MethodSet(0)
            }
            Some(list) => {
                let mut bits = 0u16;
                for (j, m) in list.iter().enumerate() {
                    let upper = m.to_ascii_uppercase();
                    match MethodSet::bit(&upper) {
                        Some(b) => {
                            bits |= b;
                            if upper == "GET" {
                                bits |= MethodSet::bit("HEAD").unwrap_or(0);
                            }
                        }
                        None => {
                            let hint =
                                did_you_mean(&upper, MethodSet::NAMES).unwrap_or_else(|| {
                                    format!("expected one of {}", MethodSet::NAMES.join(", "))
                                });
                            v.err_hint(
                                format!("{p}.methods[{j}]"),
                                format!("unknown method `{m}`"),
                                hint,
                            );
                        }
                    }
                }
                MethodSet(bits)
            }
        };
        let host = r
            .host
            .as_ref()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
        if let Some(h) = &host {
            if h.is_empty() || h.contains([':', '/', ' ', '*']) {
                v.err(
                    format!("{p}.host"),
                    format!(
                        "\"{h}\" is not a host name (write it without scheme, port or wildcard)"
                    ),
                );
            }
        }
        let upstream = match upstream_index.get(r.upstream.as_str()) {
            Some(&u) => u,
            None => {
                let hint = did_you_mean(&r.upstream, upstream_index.keys().copied())
                    .unwrap_or_else(|| "define it under \"upstreams\"".into());
                v.err_hint(
                    format!("{p}.upstream"),
                    format!("unknown upstream `{}`", r.upstream),
                    hint,
                );
                0
            }
        };
        let rewrite = match (&r.rewrite, &template) {
            (Some(rw), Some(t)) => match parse_rewrite(rw, &t.params) {
                Ok(rw) => Some(rw),
                Err(e) => {
                    v.err(format!("{p}.rewrite"), e);
                    None
                }
            },
            _ => None,
        };
        let auth = match &r.auth {
            None => AuthMode::default(),
            Some(a) => auth_mode(&mut v, &format!("{p}.auth"), a),
        };
        if auth.jwt && jwt.is_none() {
            v.err_hint(
                format!("{p}.auth"),
                "route uses jwt but there is no `jwt_validation` section",
                "add a top-level \"jwt_validation\" with a secret, public_key or jwks_url",
            );
        }
        if auth.api_key && api_keys.is_none() {
            v.err_hint(
                format!("{p}.auth"),
                "route uses api_key but there is no `api_keys` section",
                "add a top-level \"api_keys\" with at least one key",
            );
        }
        let permissions = r.permissions.clone().unwrap_or_default();
        if !permissions.is_empty() && auth.is_open() {
            v.err_hint(
                format!("{p}.permissions"),
                "permissions need an authenticated caller, but this route has no `auth`",
                "set \"auth\": \"jwt\" or \"api_key\", or remove `permissions`",
            );
        }
        let route_cors = r
            .cors
            .as_ref()
            .map(|c| cors_config(&mut v, &format!("{p}.cors"), c));
        let rate_limit = r
            .rate_limit
            .as_ref()
            .map(|rl| route_rate_limit(&mut v, &format!("{p}.rate_limit"), rl, auth));
        let timeout = v.duration(&format!("{p}.timeout"), &r.timeout, server.request_timeout);
        if timeout.is_zero() {
            v.err(format!("{p}.timeout"), "timeout must be more than 0s");
        }
        let name = r.name.clone().unwrap_or_else(|| {
            let target = format!("{}{}", host.as_deref().unwrap_or(""), r.path);
            match &r.methods {
                Some(m) => format!("{} {target}", m.join(",").to_ascii_uppercase()),
                None => target,
            }
        });
        if name.is_empty() {
            v.err(format!("{p}.name"), "route name must not be empty");
        }
        if name == UNMATCHED_ROUTE {
            v.err_hint(
                format!("{p}.name"),
                "route name `unmatched` is reserved: metrics label requests that match no route with it",
                "choose another name",
            );
        }
        if let Some(prev) = names.insert(name.clone(), i) {
            v.err_hint(
                format!("{p}.name"),
                format!("route name `{name}` is already used by routes[{prev}]"),
                "give every route a unique name",
            );
        }
        if let Some(t) = &template {
            let group = shapes
                .entry((host.clone(), t.normalized.clone()))
                .or_default();
            for (j, other) in group.iter() {
                if other.overlaps(methods) {
                    v.err_hint(
                        format!("{p}.path"),
                        format!("route `{name}` can never be told apart from routes[{j}]: same host, path shape and methods"),
                        "make the paths, hosts or methods differ, or remove one route",
                    );
                }
            }
            group.push((i, methods));
        }
        routes.push(RouteConfig {
            name,
            path: r.path.clone(),
            methods,
            host,
            upstream,
            rewrite,
            timeout,
            preserve_host: r.preserve_host.unwrap_or(false),
            auth,
            permissions,
            cors: route_cors,
            rate_limit,
        });
    }

    // logging
    let l = &raw.logging;
    let format = match l.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            v.err_hint(
                "logging.format",
                format!("unknown log format `{other}`"),
                "use \"json\" or \"pretty\"",
            );
            LogFormat::Json
        }
    };
    let level = l.level.clone().unwrap_or_else(|| "info".into());
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if !LEVELS.contains(&level.as_str()) {
        let hint = did_you_mean(&level, LEVELS)
            .unwrap_or_else(|| "use trace, debug, info, warn, error or off".into());
        v.err_hint(
            "logging.level",
            format!("unknown log level `{level}`"),
            hint,
        );
    }
    let logging = LoggingConfig {
        format,
        level,
        access_log: l.access_log.unwrap_or(true),
    };

    let tracing = raw.tracing.as_ref().and_then(|t| tracing_config(&mut v, t));

    // Rate limiting is on when anything is limited: the top level, a route or an API key.
    let any_key_limit = api_keys
        .as_ref()
        .is_some_and(|k| k.keys.iter().any(|e| e.rate_limit.is_some()));
    let any_route_limit = routes
        .iter()
        .any(|r| r.rate_limit.is_some_and(|rl| !rl.limits.is_empty()));
    let rate_limiting = match top_limits {
        Some(rl) => Some(rl),
        None if any_key_limit || any_route_limit => Some(RateLimitConfig::default()),
        None => None,
    };

    let mut compiled = None;
    if v.errors.is_empty() {
        match crate::config::router::Router::build(&routes) {
            Ok(router) => compiled = Some(std::sync::Arc::new(router)),
            Err(errs) => v.errors.extend(errs),
        }
    }
    if v.errors.is_empty() {
        Ok(Config {
            compiled_routes: compiled,
            server,
            admin,
            upstreams,
            routes,
            logging,
            tracing,
            jwt,
            api_keys,
            cors,
            rate_limiting,
            warnings: v.warnings,
        })
    } else {
        Err(v.errors)
    }
}

/// Highest `rps`: the memory limiter counts in nanoseconds, Redis in microseconds.
const MAX_RPS: f64 = 1_000_000.0;

fn rate(v: &mut V, p: &str, r: &RawRate) -> Option<RateConfig> {
    if !(r.rps > 0.0 && r.rps <= MAX_RPS) {
        v.err_hint(
            format!("{p}.rps"),
            format!("rps must be more than 0 and at most {MAX_RPS}, found {}", r.rps),
            "for a quota such as 1000 a day, write the rate per second (0.0116) and the quota as `burst`",
        );
        return None;
    }
    let burst = match r.burst {
        Some(0) => {
            v.err(format!("{p}.burst"), "burst must be at least 1");
            return None;
        }
        Some(b) => b,
        None => r.rps.ceil() as u32,
    };
    // A bucket that takes longer than this to refill is a misconfiguration (and its clock
    // arithmetic would leave the range the limiter counts in).
    const MAX_REFILL_DAYS: f64 = 366.0;
    if f64::from(burst) / r.rps > MAX_REFILL_DAYS * 86_400.0 {
        v.err_hint(
            format!("{p}.rps"),
            format!(
                "a bucket of {burst} at {} requests/s takes more than a year to refill",
                r.rps
            ),
            "limits refill within a year: raise rps or lower burst",
        );
        return None;
    }
    Some(RateConfig { rps: r.rps, burst })
}

fn scope_limits(
    v: &mut V,
    p: &str,
    global: &Option<RawRate>,
    per_ip: &Option<RawRate>,
    per_api_key: &Option<RawRate>,
    per_user: &Option<RawRate>,
) -> ScopeLimits {
    let mut one = |name: &str, r: &Option<RawRate>| {
        r.as_ref().and_then(|r| rate(v, &format!("{p}.{name}"), r))
    };
    ScopeLimits {
        global: one("global", global),
        per_ip: one("per_ip", per_ip),
        per_api_key: one("per_api_key", per_api_key),
        per_user: one("per_user", per_user),
    }
}

fn rate_limiting_config(v: &mut V, r: &RawRateLimiting) -> RateLimitConfig {
    let limits = scope_limits(
        v,
        "rate_limiting",
        &r.global,
        &r.per_ip,
        &r.per_api_key,
        &r.per_user,
    );
    let on_backend_error = match r.on_backend_error.as_deref() {
        None | Some("allow") => OnBackendError::Allow,
        Some("deny") => OnBackendError::Deny,
        Some(other) => {
            v.err_hint(
                "rate_limiting.on_backend_error",
                format!("unknown value `{other}`"),
                "use \"allow\" (a local limiter decides while Redis is down) or \"deny\" (503)",
            );
            OnBackendError::Allow
        }
    };
    let backend = match r.backend.as_deref() {
        None | Some("memory") => {
            if r.redis_url.is_some() {
                v.warnings.push(
                    ConfigError::new(
                        "rate_limiting.redis_url",
                        "`redis_url` is ignored: the backend is memory",
                    )
                    .with_hint("set \"backend\": \"redis\" to share limits through Redis"),
                );
            }
            RateBackend::Memory
        }
        Some("redis") => {
            let timeout = v.duration(
                "rate_limiting.redis_timeout",
                &r.redis_timeout,
                Duration::from_millis(50),
            );
            if timeout.is_zero() {
                v.err(
                    "rate_limiting.redis_timeout",
                    "redis_timeout must be more than 0s",
                );
            }
            let url = match &r.redis_url {
                None => {
                    v.err_hint(
                        "rate_limiting.redis_url",
                        "the redis backend needs `redis_url`",
                        "add \"redis_url\": \"redis://127.0.0.1:6379\" (or \"${REDIS_URL}\")",
                    );
                    String::new()
                }
                Some(u) => {
                    if let Err(e) = check_redis_url(u) {
                        v.err_hint(
                            "rate_limiting.redis_url",
                            e,
                            "write redis://[user:password@]host:port[/db]",
                        );
                    }
                    u.clone()
                }
            };
            RateBackend::Redis {
                url: Secret(url.into_bytes()),
                timeout,
                key_prefix: r.key_prefix.clone().unwrap_or_else(|| "kairos:rl:".into()),
            }
        }
        Some(other) => {
            let hint = did_you_mean(other, ["memory", "redis"])
                .unwrap_or_else(|| "use \"memory\" or \"redis\"".into());
            v.err_hint(
                "rate_limiting.backend",
                format!("unknown backend `{other}`"),
                hint,
            );
            RateBackend::Memory
        }
    };
    let max_keys = match r.max_keys {
        Some(0) => {
            v.err("rate_limiting.max_keys", "max_keys must be at least 1");
            1
        }
        Some(n) => n,
        None => RateLimitConfig::DEFAULT_MAX_KEYS,
    };
    RateLimitConfig {
        backend,
        on_backend_error,
        max_keys,
        headers: r.headers.unwrap_or(true),
        ietf_headers: r.ietf_headers.unwrap_or(false),
        limits,
    }
}

fn route_rate_limit(v: &mut V, p: &str, r: &RawRouteRateLimit, auth: AuthMode) -> RouteRateLimit {
    let limits = scope_limits(v, p, &r.global, &r.per_ip, &r.per_api_key, &r.per_user);
    // A limit that can never apply is a mistake worth saying so.
    if limits.per_user.is_some() && !auth.jwt {
        v.err_hint(
            format!("{p}.per_user"),
            "per_user limits JWT subjects, but this route does not accept JWTs",
            "set the route's \"auth\" to \"jwt\", or use per_ip",
        );
    }
    if limits.per_api_key.is_some() && !auth.api_key {
        v.err_hint(
            format!("{p}.per_api_key"),
            "per_api_key limits API keys, but this route does not accept API keys",
            "set the route's \"auth\" to \"api_key\", or use per_ip",
        );
    }
    RouteRateLimit {
        limits,
        inherit: r.inherit.unwrap_or(true),
    }
}

/// The OTLP/HTTP port of Jaeger, Tempo and the OpenTelemetry Collector.
const OTLP_HTTP_PORT: u16 = 4318;

fn auth_mode(v: &mut V, p: &str, a: &RawAuth) -> AuthMode {
    let names: Vec<&str> = match a {
        RawAuth::One(s) => vec![s.as_str()],
        RawAuth::Any(list) => list.iter().map(String::as_str).collect(),
    };
    let mut mode = AuthMode::default();
    if names.is_empty() {
        v.err_hint(
            p.to_string(),
            "an empty list accepts no credential",
            "write \"none\" for an open route, or list \"jwt\" and/or \"api_key\"",
        );
    }
    for (i, name) in names.iter().enumerate() {
        let path = match a {
            RawAuth::One(_) => p.to_string(),
            RawAuth::Any(_) => format!("{p}[{i}]"),
        };
        match *name {
            "none" if names.len() == 1 => {}
            "jwt" => mode.jwt = true,
            "api_key" => mode.api_key = true,
            other => {
                let hint = did_you_mean(other, ["none", "jwt", "api_key"]).unwrap_or_else(|| {
                    "use \"none\", \"jwt\", \"api_key\" or [\"jwt\", \"api_key\"]".into()
                });
                v.err_hint(path, format!("unknown auth scheme `{other}`"), hint);
            }
        }
    }
    mode
}

const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// The top level of `jwt_validation` as a provider of its own.
fn own_provider(j: &RawJwt) -> RawJwtProvider {
    RawJwtProvider {
        secret: j.secret.clone(),
        algorithm: j.algorithm.clone(),
        public_key: j.public_key.clone(),
        jwks_url: j.jwks_url.clone(),
        jwks_refresh: j.jwks_refresh.clone(),
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        required_claims: j.required_claims.clone(),
        require_exp: j.require_exp,
        leeway: j.leeway.clone(),
    }
}

fn jwt_provider(v: &mut V, p: &str, f: &RawJwtProvider) -> Option<JwtProviderConfig> {
    use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
    let sources = [
        f.secret.is_some(),
        f.public_key.is_some(),
        f.jwks_url.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        v.err_hint(
            p.to_string(),
            if sources == 0 {
                "no key: give `secret`, `public_key` or `jwks_url`"
            } else {
                "give only one of `secret`, `public_key` and `jwks_url`"
            },
            "one provider has one key source; add more under `providers`",
        );
        return None;
    }
    let default_alg = if f.secret.is_some() { "HS256" } else { "RS256" };
    let alg_name = f.algorithm.as_deref().unwrap_or(default_alg);
    let algorithm = match alg_name.parse::<Algorithm>() {
        Ok(a) if JWT_ALGORITHMS.contains(&alg_name) => a,
        _ => {
            let hint = did_you_mean(alg_name, JWT_ALGORITHMS)
                .unwrap_or_else(|| format!("use one of {}", JWT_ALGORITHMS.join(", ")));
            v.err_hint(
                format!("{p}.algorithm"),
                format!("unknown or refused algorithm `{alg_name}`"),
                hint,
            );
            return None;
        }
    };
    let family = algorithm.family();
    let key = if let Some(secret) = &f.secret {
        if family != AlgorithmFamily::Hmac {
            v.err_hint(
                format!("{p}.secret"),
                format!("a secret is for HS256/HS384/HS512, not {alg_name}"),
                "use `public_key` or `jwks_url` for asymmetric algorithms",
            );
            return None;
        }
        // RFC 7518 3.2: the key must be at least as long as the hash output.
        let min = match algorithm {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        };
        if secret.len() < min {
            v.err_hint(
                format!("{p}.secret"),
                format!(
                    "the secret is {} bytes; {alg_name} needs at least {min}",
                    secret.len()
                ),
                "generate one with `openssl rand -base64 48` and pass it as \"${JWT_SECRET}\"",
            );
        }
        JwtKeySource::Secret(Secret(secret.as_bytes().to_vec()))
    } else if let Some(pem) = &f.public_key {
        let parsed = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()).map(|_| ()),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()).map(|_| ()),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()).map(|_| ()),
            AlgorithmFamily::Hmac => {
                v.err_hint(
                    format!("{p}.public_key"),
                    format!("{alg_name} uses a `secret`, not a public key"),
                    "set `algorithm` to the key's algorithm, e.g. RS256 or ES256",
                );
                return None;
            }
        };
        if let Err(e) = parsed {
            v.err_hint(
                format!("{p}.public_key"),
                format!("not a PEM public key for {alg_name}: {e}"),
                "paste the PEM text (-----BEGIN PUBLIC KEY----- ...) or use \"${JWT_PUBLIC_KEY}\"",
            );
        }
        JwtKeySource::PublicKey(pem.clone())
    } else {
        let url = f.jwks_url.clone().unwrap_or_default();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || reqwest::Url::parse(&url).is_err()
        {
            v.err(
                format!("{p}.jwks_url"),
                format!("`{url}` is not an http(s) URL"),
            );
        }
        if family == AlgorithmFamily::Hmac {
            v.err_hint(
                format!("{p}.algorithm"),
                "a JWKS holds public keys; HMAC algorithms use a `secret`",
                "set `algorithm` to the keys' algorithm, e.g. RS256",
            );
        }
        let refresh = nonzero_duration(
            v,
            format!("{p}.jwks_refresh"),
            &f.jwks_refresh,
            Duration::from_secs(300),
        );
        if url.starts_with("http://") {
            v.warnings.push(ConfigError::new(
                format!("{p}.jwks_url"),
                "the JWKS is fetched over plain http: anyone on the path can hand the gateway keys; use https",
            ));
        }
        JwtKeySource::Jwks { url, refresh }
    };
    let require_exp = f.require_exp.unwrap_or(true);
    let mut required_claims = f.required_claims.clone().unwrap_or_default();
    if require_exp && !required_claims.iter().any(|c| c == "exp") {
        required_claims.push("exp".into());
    }
    Some(JwtProviderConfig {
        algorithm,
        key,
        issuer: f.issuer.clone(),
        audience: f.audience.clone(),
        required_claims,
        require_exp,
        leeway: v.duration(&format!("{p}.leeway"), &f.leeway, Duration::from_secs(30)),
    })
}

fn jwt_config(v: &mut V, j: &RawJwt) -> JwtConfig {
    let mut providers = Vec::new();
    let has_own_key = j.secret.is_some() || j.public_key.is_some() || j.jwks_url.is_some();
    if !has_own_key && j.providers.as_ref().is_some_and(|p| !p.is_empty()) {
        // Without a key of its own the top-level object is no provider: settings there would
        // protect nothing. Never ignore them silently.
        for (key, set) in [
            ("algorithm", j.algorithm.is_some()),
            ("issuer", j.issuer.is_some()),
            ("audience", j.audience.is_some()),
            ("required_claims", j.required_claims.is_some()),
            ("require_exp", j.require_exp.is_some()),
            ("leeway", j.leeway.is_some()),
            ("jwks_refresh", j.jwks_refresh.is_some()),
        ] {
            if set {
                v.err_hint(
                    format!("jwt_validation.{key}"),
                    "applies to the top-level provider, which has no key",
                    "set it on each entry of `providers`, or give the top level a key",
                );
            }
        }
    }
    if has_own_key || j.providers.as_ref().is_none_or(|p| p.is_empty()) {
        providers.extend(jwt_provider(v, "jwt_validation", &own_provider(j)));
    }
    for (i, pr) in j.providers.iter().flatten().enumerate() {
        providers.extend(jwt_provider(
            v,
            &format!("jwt_validation.providers[{i}]"),
            pr,
        ));
    }
    let mut forward_claims = Vec::new();
    for (claim, header) in j.forward_claims.iter().flatten() {
        match http::HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) => forward_claims.push((claim.clone(), h)),
            Err(_) => v.err(
                format!("jwt_validation.forward_claims.{claim}"),
                format!("`{header}` is not a valid header name"),
            ),
        }
    }
    JwtConfig {
        providers,
        forward_claims,
        strip_authorization: j.strip_authorization.unwrap_or(false),
    }
}

fn api_keys_config(v: &mut V, k: &RawApiKeys) -> ApiKeysConfig {
    let header_name = match http::HeaderName::from_bytes(
        k.header_name.as_deref().unwrap_or("X-API-Key").as_bytes(),
    ) {
        Ok(h) => h,
        Err(_) => {
            v.err("api_keys.header_name", "not a valid header name");
            http::HeaderName::from_static("x-api-key")
        }
    };
    if k.keys.is_empty() {
        v.err_hint(
            "api_keys.keys",
            "no keys",
            "add one: `kairos-rs keys generate --name NAME` prints the entry",
        );
    }
    let mut keys: Vec<ApiKeyEntry> = Vec::new();
    for (name, key) in &k.keys {
        let p = format!("api_keys.keys.{name}");
        let hash = match (&key.key_hash, &key.key) {
            (Some(h), None) => match crate::base::hash::parse_hash(h) {
                Ok(hash) => hash,
                Err(e) => {
                    v.err_hint(
                        format!("{p}.key_hash"),
                        e.to_string(),
                        "write \"sha256:\" and 64 hex digits; `kairos-rs keys hash` prints it",
                    );
                    continue;
                }
            },
            (None, Some(plain)) => {
                if plain.len() < 16 {
                    v.err(
                        format!("{p}.key"),
                        "the key is shorter than 16 characters; use `kairos-rs keys generate`",
                    );
                }
                crate::base::hash::hash(plain)
            }
            _ => {
                v.err_hint(
                    p.clone(),
                    "give exactly one of `key_hash` and `key`",
                    "prefer key_hash; `key` must be \"${ENV_VAR}\"",
                );
                continue;
            }
        };
        if let Some(other) = keys.iter().find(|e| e.hash == hash) {
            v.err(p.clone(), format!("same key as `{}`", other.name));
        }
        let rate_limit = key
            .rate_limit
            .as_ref()
            .and_then(|r| rate(v, &format!("{p}.rate_limit"), r));
        keys.push(ApiKeyEntry {
            name: name.clone(),
            hash,
            permissions: key.permissions.clone().unwrap_or_default(),
            rate_limit,
        });
    }
    if let Some(q) = &k.query_param {
        if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
            v.err(
                "api_keys.query_param",
                format!("`{q}` is not a query parameter name"),
            );
        }
    }
    ApiKeysConfig {
        header_name,
        query_param: k.query_param.clone(),
        keys,
    }
}

fn cors_config(v: &mut V, p: &str, c: &RawCors) -> crate::config::cors::CorsConfig {
    let strings = |x: &Option<Vec<String>>, d: &[&str]| {
        x.clone()
            .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
    };
    let cfg = crate::config::cors::CorsConfig {
        allowed_origins: c.allowed_origins.clone(),
        allowed_methods: strings(&c.allowed_methods, crate::config::cors::DEFAULT_METHODS),
        allowed_headers: strings(&c.allowed_headers, &["Content-Type", "Authorization"]),
        expose_headers: strings(&c.expose_headers, &[]),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        max_age: c.max_age,
    };
    if let Err(errors) = crate::config::cors::CorsPolicy::compile(&cfg) {
        for (sub, msg, hint) in errors {
            let path = if sub.is_empty() {
                p.to_string()
            } else {
                format!("{p}.{sub}")
            };
            match hint {
                Some(h) => v.err_hint(path, msg, h),
                None => v.err(path, msg),
            }
        }
    }
    cfg
}

fn positive(v: &mut V, path: String, value: Option<u32>, default: u32) -> u32 {
    match value {
        Some(0) => {
            v.err(path, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    }
}

fn nonzero_duration(
    v: &mut V,
    path: String,
    value: &Option<String>,
    default: Duration,
) -> Duration {
    let d = v.duration(&path, value, default);
    if d.is_zero() {
        v.err(path, "must be more than 0s");
        return default;
    }
    d
}

fn health_check(v: &mut V, p: &str, h: &RawHealthCheck) -> HealthCheckConfig {
    let path = h.path.clone().unwrap_or_else(|| "/health".into());
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        v.err_hint(
            format!("{p}.path"),
            format!("`{path}` is not a request path"),
            "write a path starting with /, such as \"/health\"",
        );
    }
    let interval = nonzero_duration(
        v,
        format!("{p}.interval"),
        &h.interval,
        Duration::from_secs(10),
    );
    let timeout = nonzero_duration(
        v,
        format!("{p}.timeout"),
        &h.timeout,
        Duration::from_secs(2),
    );
    if timeout > interval {
        v.err_hint(
            format!("{p}.timeout"),
            "timeout is longer than interval",
            "a check must end before the next one starts; lower the timeout",
        );
    }
    let expected_status = match h.expected_status.as_deref() {
        None => 200..=399,
        Some(text) => match parse_status_range(text) {
            Ok(r) => r,
            Err(e) => {
                v.err_hint(
                    format!("{p}.expected_status"),
                    e,
                    "write \"200-399\" or \"204\"",
                );
                200..=399
            }
        },
    };
    HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_threshold: positive(v, format!("{p}.healthy_threshold"), h.healthy_threshold, 2),
        unhealthy_threshold: positive(
            v,
            format!("{p}.unhealthy_threshold"),
            h.unhealthy_threshold,
            3,
        ),
        expected_status,
    }
}

/// "200-399" or "204": statuses from 100 to 599.
pub fn parse_status_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| format!("`{}` is not an HTTP status (100-599)", s.trim()))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (status(a)?, status(b)?),
        None => {
            let s = status(text)?;
            (s, s)
        }
    };
    if lo > hi {
        return Err(format!("`{text}` is an empty range"));
    }
    Ok(lo..=hi)
}

fn circuit_breaker(v: &mut V, p: &str, b: &RawCircuitBreaker) -> BreakerConfig {
    let d = BreakerConfig::default();
    let pct = b
        .error_percentage_threshold
        .unwrap_or(d.error_percentage_threshold);
    if !(pct > 0.0 && pct <= 100.0) {
        v.err(
            format!("{p}.error_percentage_threshold"),
            format!("{pct} is not a percentage from above 0 to 100"),
        );
    }
    BreakerConfig {
        failure_threshold: positive(
            v,
            format!("{p}.failure_threshold"),
            b.failure_threshold,
            d.failure_threshold,
        ),
        recovery_timeout: nonzero_duration(
            v,
            format!("{p}.recovery_timeout"),
            &b.recovery_timeout,
            d.recovery_timeout,
        ),
        minimum_throughput: positive(
            v,
            format!("{p}.minimum_throughput"),
            b.minimum_throughput,
            d.minimum_throughput,
        ),
        error_percentage_threshold: pct.clamp(0.0, 100.0),
        window: nonzero_duration(v, format!("{p}.window"), &b.window, d.window),
        half_open_requests: positive(
            v,
            format!("{p}.half_open_requests"),
            b.half_open_requests,
            d.half_open_requests,
        ),
    }
}

fn outlier_detection(v: &mut V, p: &str, o: Option<&RawOutlierDetection>) -> Option<OutlierConfig> {
    let Some(o) = o else {
        return Some(OutlierConfig {
            consecutive_gateway_failures: 5,
            consecutive_5xx: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        });
    };
    let base = nonzero_duration(
        v,
        format!("{p}.base_ejection_time"),
        &o.base_ejection_time,
        Duration::from_secs(30),
    );
    let max = nonzero_duration(
        v,
        format!("{p}.max_ejection_time"),
        &o.max_ejection_time,
        Duration::from_secs(300),
    );
    if max < base {
        v.err(
            format!("{p}.max_ejection_time"),
            "max_ejection_time is shorter than base_ejection_time",
        );
    }
    let pct = o.max_ejection_percent.unwrap_or(50);
    if pct > 100 {
        v.err(
            format!("{p}.max_ejection_percent"),
            format!("{pct} is more than 100 percent"),
        );
    }
    let cfg = OutlierConfig {
        consecutive_gateway_failures: o.consecutive_gateway_failures.unwrap_or(5),
        consecutive_5xx: o.consecutive_5xx.unwrap_or(0),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct.min(100),
    };
    let off = cfg.consecutive_gateway_failures == 0 && cfg.consecutive_5xx == 0;
    (o.enabled != Some(false) && !off).then_some(cfg)
}

const RETRY_CONDITIONS: [&str; 4] = ["connect_error", "reset", "timeout", "5xx"];

fn retries(v: &mut V, p: &str, r: &RawRetries) -> RetryConfig {
    let d = RetryConfig::default();
    let mut cfg = RetryConfig {
        attempts: r.attempts.unwrap_or(d.attempts),
        backoff: v.duration(&format!("{p}.backoff"), &r.backoff, d.backoff),
        max_backoff: v.duration(&format!("{p}.max_backoff"), &r.max_backoff, d.max_backoff),
        ..d
    };
    if cfg.attempts > 10 {
        v.err_hint(
            format!("{p}.attempts"),
            format!("{} retries per request is too many", cfg.attempts),
            "use at most 10; the retry budget limits retries across requests anyway",
        );
    }
    if cfg.max_backoff < cfg.backoff {
        v.err(
            format!("{p}.max_backoff"),
            "max_backoff is shorter than backoff",
        );
    }
    if let Some(on) = &r.on {
        cfg.on_connect_error = false;
        cfg.on_reset = false;
        for (i, c) in on.iter().enumerate() {
            match c.as_str() {
                "connect_error" => cfg.on_connect_error = true,
                "reset" => cfg.on_reset = true,
                "timeout" => cfg.on_timeout = true,
                "5xx" => cfg.on_status.extend(500..=599),
                other => match other.parse::<u16>() {
                    Ok(n) if (400..=599).contains(&n) => cfg.on_status.push(n),
                    _ => {
                        let hint = did_you_mean(other, RETRY_CONDITIONS).unwrap_or_else(|| {
                            "use connect_error, reset, timeout, 5xx or a status from 400 to 599"
                                .into()
                        });
                        v.err_hint(
                            format!("{p}.on[{i}]"),
                            format!("unknown retry condition `{other}`"),
                            hint,
                        );
                    }
                },
            }
        }
        cfg.on_status.sort_unstable();
        cfg.on_status.dedup();
    } else {
        cfg.on_status = vec![502, 503, 504];
    }
    if let Some(methods) = &r.methods {
        let mut set = 0u16;
        for (i, m) in methods.iter().enumerate() {
            match MethodSet::bit(&m.to_ascii_uppercase()) {
                Some(b) => set |= b,
                None => v.err(format!("{p}.methods[{i}]"), format!("unknown method `{m}`")),
            }
        }
        cfg.methods = MethodSet(set);
    }
    let pct = r.budget_percent.unwrap_or(20.0);
    if !(0.0..=100.0).contains(&pct) {
        v.err(
            format!("{p}.budget_percent"),
            format!("{pct} is not a percentage from 0 to 100"),
        );
    }
    cfg.budget_ratio = pct.clamp(0.0, 100.0) / 100.0;
    cfg.min_retries_per_second = r.min_retries_per_second.unwrap_or(d.min_retries_per_second);
    cfg
}

fn tracing_config(v: &mut V, t: &crate::config::raw::RawTracing) -> Option<TracingConfig> {
    let endpoint = match (&t.endpoint, &t.jaeger_endpoint) {
        (Some(e), jaeger) => {
            if jaeger.is_some() {
                v.warnings.push(
                    ConfigError::new(
                        "tracing.jaeger_endpoint",
                        "`jaeger_endpoint` is deprecated and ignored because `endpoint` is set",
                    )
                    .with_hint("remove `jaeger_endpoint`"),
                );
            }
            match parse_otlp_endpoint(e) {
                Ok(url) => url,
                Err(msg) => {
                    v.err_hint(
                        "tracing.endpoint",
                        msg,
                        "write e.g. \"http://127.0.0.1:4318\"",
                    );
                    return None;
                }
            }
        }
        (None, Some(j)) => match jaeger_to_otlp(j) {
            Ok(url) => {
                v.warnings.push(
                    ConfigError::new(
                        "tracing.jaeger_endpoint",
                        format!(
                            "`jaeger_endpoint` is deprecated; Jaeger takes OTLP, so spans go to {url}"
                        ),
                    )
                    .with_hint(format!(
                        "replace it with \"endpoint\": \"{}\"",
                        url.trim_end_matches("/v1/traces")
                    )),
                );
                url
            }
            Err(msg) => {
                v.err_hint(
                    "tracing.jaeger_endpoint",
                    msg,
                    "use \"endpoint\": \"http://<jaeger-host>:4318\" instead",
                );
                return None;
            }
        },
        (None, None) => format!("http://127.0.0.1:{OTLP_HTTP_PORT}/v1/traces"),
    };
    let sampling_rate = t.sampling_rate.unwrap_or(0.1);
    if !(0.0..=1.0).contains(&sampling_rate) {
        v.err_hint(
            "tracing.sampling_rate",
            format!("sampling_rate {sampling_rate} is outside 0.0..=1.0"),
            "0.1 records one new trace in ten; 1.0 records all",
        );
    }
    let service_name = t.service_name.clone().unwrap_or_else(|| "kairos-rs".into());
    if service_name.trim().is_empty() {
        v.err("tracing.service_name", "service_name must not be empty");
    }
    let export_timeout = v.duration(
        "tracing.export_timeout",
        &t.export_timeout,
        Duration::from_secs(10),
    );
    if !t.enabled.unwrap_or(true) {
        return None;
    }
    Some(TracingConfig {
        endpoint,
        sampling_rate,
        service_name,
        export_timeout,
    })
}

/// An OTLP/HTTP traces URL: a base URL gets `/v1/traces`, a URL with a path is kept.
pub fn parse_otlp_endpoint(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{text}\" must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("\"{text}\" has no host"));
    }
    let base = text.trim_end_matches('/');
    Ok(match uri.path() {
        "" | "/" => format!("{base}/v1/traces"),
        _ => text.to_string(),
    })
}

/// The OTLP/HTTP endpoint on the host of an old Jaeger collector URL
/// (`http://jaeger:14268/api/traces` -> `http://jaeger:4318/v1/traces`).
fn jaeger_to_otlp(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("\"{text}\" has no host"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        _ => "http",
    };
    Ok(format!("{scheme}://{host}:{OTLP_HTTP_PORT}/v1/traces"))
}

/// Checks a `redis_url` without connecting.
fn check_redis_url(url: &str) -> Result<(), &'static str> {
    match redis::Client::open(url) {
        Ok(_) if url.starts_with("redis://") || url.starts_with("unix://") => Ok(()),
        _ => Err("`redis_url` is not a redis:// URL this build can use"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = parse_path_template("/api/users/{id}/files/{*rest}").unwrap();
        assert_eq!(t.normalized, "/api/users/{p0}/files/{*p1}");
        assert_eq!(t.params, vec!["id", "rest"]);
        assert!(parse_path_template("api").is_err());
        assert!(parse_path_template("/a/{*rest}/b")
            .unwrap_err()
            .contains("last"));
        assert!(parse_path_template("/a/{id")
            .unwrap_err()
            .contains("unclosed"));
        assert!(parse_path_template("/a/x{id}")
            .unwrap_err()
            .contains("whole path segment"));
        assert!(parse_path_template("/a/{id}/{id}")
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn rewrites() {
        let params = vec!["id".to_string(), "rest".to_string()];
        let rw = parse_rewrite("/users/{id}/{rest}", &params).unwrap();
        assert_eq!(
            rw.parts,
            vec![
                RewritePart::Literal("/users/".into()),
                RewritePart::Param(0),
                RewritePart::Literal("/".into()),
                RewritePart::Param(1)
            ]
        );
        assert!(parse_rewrite("/x/{nope}", &params)
            .unwrap_err()
            .contains("{nope}"));
    }

    #[test]
    fn server_urls() {
        let (https, auth, host, url) = parse_server_url("http://127.0.0.1:9001").unwrap();
        assert!(!https);
        assert_eq!(auth.as_str(), "127.0.0.1:9001");
        assert_eq!(host, "127.0.0.1:9001");
        assert_eq!(url, "http://127.0.0.1:9001");
        let (https, auth, host, _) = parse_server_url("https://api.example.com").unwrap();
        assert!(https);
        assert_eq!(auth.as_str(), "api.example.com:443");
        assert_eq!(host, "api.example.com");
        assert!(parse_server_url("127.0.0.1:9001").is_err());
        assert!(parse_server_url("ftp://x").is_err());
        assert!(parse_server_url("http://x/path")
            .unwrap_err()
            .contains("rewrite"));
    }
}
