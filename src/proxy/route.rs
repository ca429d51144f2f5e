//! The route phase: the request's host, path and method matched against the route table. A
//! CORS preflight is routed by the method it asks about, a WebSocket over HTTP/2 (an extended
//! CONNECT) as a GET.

use super::context::Ctx;
use crate::base::error::GatewayError;
use crate::config::model::RouteConfig;
use crate::config::router::Lookup;
use actix_web::http::ConnectionType;

/// A matched route.
pub struct Routed<'a, 'p> {
    pub idx: usize,
    pub route: &'a RouteConfig,
    pub params: matchit::Params<'a, 'p>,
    /// A CORS preflight for a route with a policy: the edge chain answers it.
    pub preflight: bool,
}

/// Matches `path` (normalised by the request filter) and the request's host and method; 404
/// or 405 (with `Allow`) when nothing matches.
#[inline(always)]
pub fn route<'a, 'p>(
    ctx: &mut Ctx<'a>,
    host: Option<&str>,
    path: &'p str,
) -> Result<Routed<'a, 'p>, GatewayError> {
    let (rt, req) = (ctx.rt, ctx.req);
    let method = req.method();
    let host_key = match (rt.router.uses_hosts(), host) {
        (true, Some(h)) => Some(crate::base::net::host_name(h).to_ascii_lowercase()),
        _ => None,
    };
    let cors = &rt.edge.cors;
    let preflight_method = cors.preflight_method(method, req.headers());
    // A tenant's own table first (its routes win over global ones), then the global one. A
    // config without tenants never has a tenant here: one branch.
    let own = match ctx.tenant {
        None => None,
        Some(t) => rt.config.tenancy.as_ref().and_then(|x| x.routers.get(t)),
    };
    let find = |m: &str| match own {
        None => rt.router.lookup(host_key.as_deref(), path, m),
        Some(own) => match own.lookup(host_key.as_deref(), path, m) {
            found @ Lookup::Found { .. } => found,
            Lookup::MethodNotAllowed { allow } => {
                match rt.router.lookup(host_key.as_deref(), path, m) {
                    found @ Lookup::Found { .. } => found,
                    _ => Lookup::MethodNotAllowed { allow },
                }
            }
            Lookup::NotFound => rt.router.lookup(host_key.as_deref(), path, m),
        },
    };
    let mut lookup = find(preflight_method.unwrap_or(method.as_str()));
    let mut preflight = preflight_method.is_some();
    if preflight && !matches!(lookup, Lookup::Found { route, .. } if cors.route_has_policy(route)) {
        // The route the preflight asks about has no CORS policy: this is an ordinary OPTIONS
        // request, routed (and authenticated) by its own method.
        preflight = false;
        lookup = find(method.as_str());
    }
    let (idx, params) = match lookup {
        Lookup::Found { route, params } => (route, params),
        Lookup::MethodNotAllowed { allow } => {
            // RFC 8441: a WebSocket over HTTP/2 is a CONNECT, routed as the GET handshake it
            // stands for to a route that proxies WebSockets (the upgrade flag first: no other
            // request pays for this).
            let websocket = req.head().connection_type() == ConnectionType::Upgrade
                && super::websocket::is_extended_connect(req);
            match websocket.then(|| find("GET")) {
                Some(Lookup::Found { route, params })
                    if rt.config.routes[route].websocket.is_some() =>
                {
                    (route, params)
                }
                _ => {
                    return Err(GatewayError::MethodNotAllowed {
                        allow: allow.to_string(),
                    })
                }
            }
        }
        Lookup::NotFound => return Err(GatewayError::NotFound),
    };
    let route: &'a RouteConfig = &rt.config.routes[idx];
    ctx.route = Some((idx, &route.name));
    if let Some(t) = ctx.trace() {
        t.routed(method.as_str(), &route.path, &route.name);
    }
    Ok(Routed {
        idx,
        route,
        params,
        preflight,
    })
}
