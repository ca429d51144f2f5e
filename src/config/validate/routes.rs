//! The `routes` section: each route's path template, methods, host, upstream, rewrite, auth,
//! permissions, CORS, rate limit, timeout and name; the checks between routes (unique names,
//! routes that cannot be told apart); and the compiled route table.

use super::auth::auth_mode;
use super::cors::cors_config;
use super::rate_limiting::route_rate_limit;
use super::V;
use crate::config::error::did_you_mean;
use crate::config::model::{
    AuthMode, MethodSet, Rewrite, RewritePart, RouteConfig, UpstreamConfig, UpstreamProtocol,
    UNMATCHED_ROUTE,
};
use crate::config::raw::RawRoute;
use crate::config::router::Router;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The idle timeout of a WebSocket when the route does not set one (as Envoy's stream idle
/// timeout; NGINX's proxy_read_timeout of 60s closes quiet chat sockets, a known complaint).
const DEFAULT_WEBSOCKET_IDLE: Duration = Duration::from_secs(3600);

/// The parsed pieces of a route path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The template with parameters renamed by position (`{p0}`, `{*p1}`), so that two routes
    /// differing only in parameter names share one router entry.
    pub normalized: String,
    pub params: Vec<String>,
}

/// Why a route path is not a usable template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathTemplateError {
    #[error("path must start with '/', found \"{path}\"")]
    NoLeadingSlash { path: String },
    #[error("unbalanced '}}' in path \"{path}\"")]
    UnbalancedClose { path: String },
    #[error("unclosed '{{' in path \"{path}\"")]
    Unclosed { path: String },
    #[error("parameter name \"{inner}\" in path \"{path}\" must be letters, digits or '_'")]
    BadParamName { inner: String, path: String },
    #[error("parameter {{{name}}} appears twice in path \"{path}\"")]
    DuplicateParam { name: String, path: String },
    #[error("catch-all {{*{name}}} must be the last part of path \"{path}\"")]
    CatchAllNotLast { name: String, path: String },
    #[error("parameter {{{inner}}} must fill a whole path segment in \"{path}\"")]
    PartialSegment { inner: String, path: String },
}

/// Why a `rewrite` template cannot be compiled against its route's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("rewrite must start with '/', found \"{rewrite}\"")]
    NoLeadingSlash { rewrite: String },
    #[error("unclosed '{{' in rewrite \"{rewrite}\"")]
    Unclosed { rewrite: String },
    #[error("rewrite uses {{{name}}} but {}", known_params(.params))]
    UnknownParam { name: String, params: Vec<String> },
}

/// "the path has {a}, {b}", or that it has none.
fn known_params(params: &[String]) -> String {
    if params.is_empty() {
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
    }
}

/// Parses a route path template (`/users/{id}/files/{*rest}`).
pub fn parse_path_template(path: &str) -> Result<PathTemplate, PathTemplateError> {
    let owned = || path.to_string();
    if !path.starts_with('/') {
        return Err(PathTemplateError::NoLeadingSlash { path: owned() });
    }
    let mut normalized = String::with_capacity(path.len());
    let mut params: Vec<String> = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(PathTemplateError::UnbalancedClose { path: owned() });
        }
        normalized.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| PathTemplateError::Unclosed { path: owned() })?;
        let inner = &after[..close];
        let (catch_all, name) = match inner.strip_prefix('*') {
            Some(n) => (true, n),
            None => (false, inner),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PathTemplateError::BadParamName {
                inner: inner.to_string(),
                path: owned(),
            });
        }
        if params.iter().any(|p| p == name) {
            return Err(PathTemplateError::DuplicateParam {
                name: name.to_string(),
                path: owned(),
            });
        }
        let seg_start = normalized.ends_with('/');
        let tail = &after[close + 1..];
        if catch_all && !tail.is_empty() {
            return Err(PathTemplateError::CatchAllNotLast {
                name: name.to_string(),
                path: owned(),
            });
        }
        if !seg_start || !(tail.is_empty() || tail.starts_with('/')) {
            return Err(PathTemplateError::PartialSegment {
                inner: inner.to_string(),
                path: owned(),
            });
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
pub fn parse_rewrite(rewrite: &str, params: &[String]) -> Result<Rewrite, RewriteError> {
    if !rewrite.starts_with('/') {
        return Err(RewriteError::NoLeadingSlash {
            rewrite: rewrite.to_string(),
        });
    }
    let mut parts = Vec::new();
    let mut rest = rewrite;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(RewritePart::Literal(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| RewriteError::Unclosed {
            rewrite: rewrite.to_string(),
        })?;
        let name = after[..close].trim_start_matches('*');
        let idx =
            params
                .iter()
                .position(|p| p == name)
                .ok_or_else(|| RewriteError::UnknownParam {
                    name: name.to_string(),
                    params: params.to_vec(),
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

/// What routes are checked against: the sections validated before them.
pub(super) struct RouteContext<'a> {
    /// The top-level `caching` section, when there is one.
    pub(super) cache: Option<&'a super::caching::TopCache>,
    /// Upstream name -> its index in the validated list.
    pub(super) upstreams: &'a HashMap<&'a str, usize>,
    /// The validated upstreams, by index (a gRPC route checks its upstream's protocol).
    pub(super) upstream_configs: &'a [crate::config::model::UpstreamConfig],
    pub(super) has_jwt: bool,
    pub(super) has_api_keys: bool,
    /// `server.request_timeout`, the default of a route's `timeout`.
    pub(super) default_timeout: Duration,
    /// The compiled top-level `transformations`, with their phase (true: response).
    pub(super) top_transforms: &'a [(bool, crate::config::transform::Step)],
    /// Where API keys come from (no template may read them).
    pub(super) key_sources: super::transformations::KeySources<'a>,
}

type RoutesOnShape = Vec<(String, MethodSet)>;

/// The routes seen so far (global and tenants' own), for the checks between routes.
#[derive(Default)]
pub(super) struct Seen {
    /// Route name -> the JSON path of the route that has it.
    names: HashMap<String, String>,
    /// (tenant, host, normalised path) -> the routes on it with their methods. A tenant's own
    /// route and a global one on the same shape are not a conflict: the tenant's wins.
    shapes: HashMap<(Option<usize>, Option<String>, String), RoutesOnShape>,
}

pub(super) fn routes_config(
    v: &mut V,
    raw: &[RawRoute],
    cx: &RouteContext,
    seen: &mut Seen,
) -> Vec<RouteConfig> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| route(v, &format!("routes[{i}]"), r, cx, seen, None))
        .collect()
}

/// One route at JSON path `p`: a global one, or tenant `tenant`'s own.
pub(super) fn route(
    v: &mut V,
    p: &str,
    r: &RawRoute,
    cx: &RouteContext,
    seen: &mut Seen,
    tenant: Option<usize>,
) -> RouteConfig {
    let p = p.to_string();
    let template = match parse_path_template(&r.path) {
        Ok(t) => Some(t),
        Err(e) => {
            v.err(format!("{p}.path"), e.to_string());
            None
        }
    };
    if r.path == "/_kairos" || r.path.starts_with("/_kairos/") {
        v.err(
            format!("{p}.path"),
            "paths under /_kairos are reserved for the gateway's own endpoints",
        );
    }
    let methods = methods(v, &p, r.methods.as_deref());
    let host = host(v, &p, r.host.as_deref());
    let upstream = upstream(v, &p, &r.upstream, cx.upstreams);
    let rewrite = match (&r.rewrite, &template) {
        (Some(rw), Some(t)) => match parse_rewrite(rw, &t.params) {
            Ok(rw) => Some(Box::new(rw)),
            Err(e) => {
                v.err(format!("{p}.rewrite"), e.to_string());
                None
            }
        },
        _ => None,
    };
    let auth = auth(v, &p, r, cx);
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
        .map(|c| Box::new(cors_config(v, &format!("{p}.cors"), c)));
    let rate_limit = r
        .rate_limit
        .as_ref()
        .map(|rl| Box::new(route_rate_limit(v, &format!("{p}.rate_limit"), rl, auth)));
    let timeout = v.duration(&format!("{p}.timeout"), &r.timeout, cx.default_timeout);
    if timeout.is_zero() {
        v.err(format!("{p}.timeout"), "timeout must be more than 0s");
    }
    let own = match &r.transformations {
        Some(list) => super::transformations::steps(
            v,
            &format!("{p}.transformations"),
            list,
            (
                template.as_ref().map(|t| t.params.as_slice()),
                cx.key_sources,
            ),
            cx.top_transforms.len(),
        ),
        None => Vec::new(),
    };
    let params = template.as_ref().map_or(&[][..], |t| t.params.as_slice());
    let transforms = super::transformations::merge(cx.top_transforms, own, params);
    let cache = super::caching::route_cache(v, &p, r.cache.as_ref(), cx.cache);
    let websocket = websocket(v, &p, r, methods);
    let grpc = r.grpc.unwrap_or(false);
    if grpc && cx.upstreams.contains_key(r.upstream.as_str()) {
        check_grpc_upstream(v, &p, cx.upstream_configs.get(upstream));
    }
    let name = name(v, &p, r, host.as_deref(), seen);
    if let Some(t) = &template {
        check_shape(v, &p, &name, (tenant, &host, t, methods), seen);
    }
    RouteConfig {
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
        transforms,
        cache,
        tenant,
        websocket,
        grpc,
    }
}

/// The idle timeout of the route's WebSockets, or `None` when the route does not proxy them
/// (a handshake is a GET: by default every route that allows GET proxies them).
fn websocket(v: &mut V, p: &str, r: &RawRoute, methods: MethodSet) -> Option<Duration> {
    let idle = v.duration(
        &format!("{p}.websocket_idle_timeout"),
        &r.websocket_idle_timeout,
        DEFAULT_WEBSOCKET_IDLE,
    );
    if idle.is_zero() {
        v.err_hint(
            format!("{p}.websocket_idle_timeout"),
            "websocket_idle_timeout must be more than 0s",
            "omit it for the default of 1h",
        );
    }
    match r.websocket {
        Some(false) => {
            if r.websocket_idle_timeout.is_some() {
                v.err_hint(
                    format!("{p}.websocket_idle_timeout"),
                    "websocket_idle_timeout is set on a route with websocket: false",
                    "remove one of the two",
                );
            }
            None
        }
        Some(true) if !methods.contains("GET") => {
            v.err_hint(
                format!("{p}.websocket"),
                "a WebSocket handshake is a GET, and this route does not allow GET",
                "add \"GET\" to `methods`, or remove `websocket`",
            );
            None
        }
        _ if methods.contains("GET") => Some(idle),
        _ => None,
    }
}

/// A gRPC route needs an upstream spoken to in HTTP/2 (gRPC needs trailers).
fn check_grpc_upstream(v: &mut V, p: &str, upstream: Option<&UpstreamConfig>) {
    let Some(u) = upstream else { return };
    // An unknown protocol is reported already; its stand-in value proves nothing here.
    let protocol_path = format!("upstreams.{}.protocol", u.name);
    if v.errors.iter().any(|e| e.path == protocol_path) {
        return;
    }
    let https = u
        .servers
        .iter()
        .map(|s| s.https)
        .chain(u.discovery.as_ref().map(|d| d.https));
    let mut https = https.peekable();
    let all_h2 = https.peek().is_some() && https.all(|h| u.protocol.may_use_h2(h));
    if !all_h2 {
        let fix = match u.servers.iter().any(|s| s.https) {
            true => "\"h2\"",
            false => "\"h2c\"",
        };
        v.err_hint(
            format!("{p}.grpc"),
            format!(
                "gRPC needs HTTP/2 to the upstream, but upstream `{}` speaks {}",
                u.name,
                match u.protocol {
                    UpstreamProtocol::Auto => "HTTP/1.1 to its http:// servers (\"auto\")",
                    _ => "HTTP/1.1 (protocol \"http1\")",
                }
            ),
            format!("set upstreams.{}.protocol to {fix}", u.name),
        );
    }
}

/// The `methods` list; none given means every method, and `GET` brings `HEAD`.
fn methods(v: &mut V, p: &str, methods: Option<&[String]>) -> MethodSet {
    match methods {
        None => MethodSet::ALL,
        Some([]) => {
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
                        let hint = did_you_mean(&upper, MethodSet::NAMES).unwrap_or_else(|| {
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
    }
}

/// The `host`, lower-cased and without a trailing dot.
fn host(v: &mut V, p: &str, host: Option<&str>) -> Option<String> {
    let host = host.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    if let Some(h) = &host {
        if h.is_empty() || h.contains([':', '/', ' ', '*']) {
            v.err(
                format!("{p}.host"),
                format!("\"{h}\" is not a host name (write it without scheme, port or wildcard)"),
            );
        }
    }
    host
}

/// The index of the named upstream (0, with the error recorded, when there is none).
fn upstream(v: &mut V, p: &str, name: &str, upstreams: &HashMap<&str, usize>) -> usize {
    match upstreams.get(name) {
        Some(&u) => u,
        None => {
            let hint = did_you_mean(name, upstreams.keys().copied())
                .unwrap_or_else(|| "define it under \"upstreams\"".into());
            v.err_hint(
                format!("{p}.upstream"),
                format!("unknown upstream `{name}`"),
                hint,
            );
            0
        }
    }
}

/// The route's `auth`, whose schemes need their top-level sections.
fn auth(v: &mut V, p: &str, r: &RawRoute, cx: &RouteContext) -> AuthMode {
    let auth = match &r.auth {
        None => AuthMode::default(),
        Some(a) => auth_mode(v, &format!("{p}.auth"), a),
    };
    if auth.jwt && !cx.has_jwt {
        v.err_hint(
            format!("{p}.auth"),
            "route uses jwt but there is no `jwt_validation` section",
            "add a top-level \"jwt_validation\" with a secret, public_key or jwks_url",
        );
    }
    if auth.api_key && !cx.has_api_keys {
        v.err_hint(
            format!("{p}.auth"),
            "route uses api_key but there is no `api_keys` section",
            "add a top-level \"api_keys\" with at least one key",
        );
    }
    auth
}

/// The route's name (by default its methods, host and path), which must be unique.
fn name(v: &mut V, p: &str, r: &RawRoute, host: Option<&str>, seen: &mut Seen) -> String {
    let name = r.name.clone().unwrap_or_else(|| {
        let target = format!("{}{}", host.unwrap_or(""), r.path);
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
    if let Some(prev) = seen.names.insert(name.clone(), p.to_string()) {
        v.err_hint(
            format!("{p}.name"),
            format!("route name `{name}` is already used by {prev}"),
            "give every route a unique name",
        );
    }
    name
}

/// Two routes on the same host and path shape must not share a method: one would never match.
fn check_shape(
    v: &mut V,
    p: &str,
    name: &str,
    (tenant, host, template, methods): (Option<usize>, &Option<String>, &PathTemplate, MethodSet),
    seen: &mut Seen,
) {
    let group = seen
        .shapes
        .entry((tenant, host.clone(), template.normalized.clone()))
        .or_default();
    for (j, other) in group.iter() {
        if other.overlaps(methods) {
            v.err_hint(
                format!("{p}.path"),
                format!("route `{name}` can never be told apart from {j}: same host, path shape and methods"),
                "make the paths, hosts or methods differ, or remove one route",
            );
        }
    }
    group.push((p.to_string(), methods));
}

/// The route table, built only when everything else is valid.
pub(super) fn compile(v: &mut V, routes: &[RouteConfig]) -> Option<Arc<Router>> {
    if !v.errors.is_empty() {
        return None;
    }
    match Router::build(routes) {
        Ok(router) => Some(Arc::new(router)),
        Err(errs) => {
            v.errors.extend(errs);
            None
        }
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
            .to_string()
            .contains("last"));
        assert!(parse_path_template("/a/{id")
            .unwrap_err()
            .to_string()
            .contains("unclosed"));
        assert!(parse_path_template("/a/x{id}")
            .unwrap_err()
            .to_string()
            .contains("whole path segment"));
        assert!(parse_path_template("/a/{id}/{id}")
            .unwrap_err()
            .to_string()
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
        assert_eq!(
            parse_rewrite("/x/{nope}", &params).unwrap_err().to_string(),
            "rewrite uses {nope} but the path has {id}, {rest}"
        );
    }
}
