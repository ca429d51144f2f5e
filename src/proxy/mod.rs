//! The request path: [`handle`] runs every request outside `/_kairos` through the phases
//! below, in this order, each a plain function over one request context ([`context::Ctx`]).
//! A new stage of the gateway is a new phase in this list.
//!
//! | phase              | where                                   | what                                  |
//! |--------------------|-----------------------------------------|---------------------------------------|
//! | request filter     | [`request::filter`]                     | URI, header and declared body limits, path normalised |
//! | tenant             | [`crate::edge::tenant::Tenancy::recognise_now`] | the tenant the request names (with tenancy only; refuses nothing) |
//! | route              | [`route::route`]                        | host, path and method matched (the tenant's own table first); a gRPC call noted ([`grpc`]) |
//! | edge chain         | [`crate::edge::Edge::admit`]            | CORS preflight, rate limits, authentication, tenant, quota |
//! | WebSocket          | [`websocket::proxy`]                    | a handshake: forwarded, then the socket relayed (in place of the phases below) |
//! | request body       | [`body::read`]                          | read whole or streamed, bytes counted |
//! | cache lookup       | [`cache::lookup`]                       | routes with `cache`: stored answer, revalidation, coalescing; a plain HIT answered at once ([`cache::answer_now`]) |
//! | upstream request   | [`upstream_request::build`]             | rewrite, headers, the edge's edits    |
//! | request transform  | [`transform::request`]                  | `transformations`: path, query, headers |
//! | forward            | [`forward::forward`], or [`cache::fetch`] | balancer, breaker, retries, timeout; the cache's answer or the upstream's, stored as it streams |
//! | response transform | [`transform::response`], [`transform::response_body`] | `transformations`: headers, status; a JSON body |
//! | response           | [`response::upstream`] / [`response::error`] | the client's response            |
//! | response filter    | [`response::filter`]                    | trace id, rate-limit, quota and CORS headers |
//! | log                | [`log::access`]                         | the access-log line                   |
//!
//! Metrics and spans are recorded when the response is complete ([`completion`]); a tenant's
//! series ([`crate::edge::tenant::TenantSeries`]) when its response head is ready.
//!
//! The phase functions are `#[inline(always)]`: each separate function (and each separate
//! future) costs moves of the values handed between phases. Splitting the 511-line function
//! this replaced cost +1.2% instructions per request before that, moves avoided and clock
//! reads shared (callgrind, benches/load/callgrind.sh).

pub mod body;
pub mod body_json;
pub mod cache;
pub mod coding;
pub mod completion;
pub mod context;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod log;
pub mod request;
pub mod response;
pub mod route;
pub mod transform;
pub mod upstream_request;
pub mod websocket;

pub use request::{has_dot_segment, normalize_path};

use crate::base::error::GatewayError;
use crate::config::model::ServerConfig;
use crate::edge::tenant::Recognised;
use crate::edge::{EdgeRequest, Verdict};
use crate::runtime::SharedState;
use actix_web::{web, HttpRequest, HttpResponse};
use context::Ctx;

/// The actix handler for every proxied request.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<SharedState>,
) -> HttpResponse {
    let rt = state.load();
    let mut ctx = Ctx::new(&req, &rt, &state.metrics);
    let mut res = match phases(&mut ctx, payload).await {
        Ok(res) => res,
        Err(e) => response::error(&mut ctx, e),
    };
    response::filter(&mut ctx, &mut res);
    if let Some(t) = &rt.edge.tenancy {
        t.series(ctx.tenant)
            .record(res.status().as_u16(), ctx.start.elapsed().as_secs_f64());
    }
    log::access(&ctx, &res);
    res
}

/// The phases from the request filter to the response; an error short-cuts to
/// [`response::error`].
async fn phases(ctx: &mut Ctx<'_>, payload: web::Payload) -> Result<HttpResponse, GatewayError> {
    let normalized = request::filter(ctx)?;
    let req = ctx.req;
    let host = request::request_host(req);
    // The tenant is recognised before routing (its own routes are in its own table) and
    // enforced by the edge chain.
    let tenant = match &ctx.rt.edge.tenancy {
        None => Recognised::Nobody,
        Some(t) => match t.recognise_now(req, &ctx.rt.edge.auth) {
            Some(r) => r,
            // A JWT to verify first. Boxed: kept inline, that future would grow every
            // request's future.
            None => Box::pin(t.recognise(req, &ctx.rt.edge.auth)).await,
        },
    };
    if let Recognised::Tenant(i) = tenant {
        ctx.tenant = Some(i);
        if let (Some(id), Some(trace)) = (
            ctx.tenant_id(),
            ctx.done.as_mut().and_then(|d| d.trace.as_mut()),
        ) {
            trace.tenant(id);
        }
    }
    let routed = route::route(ctx, host, normalized.as_deref().unwrap_or(req.path()))?;
    if routed.route.grpc && grpc::is_call(req) {
        let counter = &ctx.metrics.grpc_responses;
        ctx.grpc = Some(std::rc::Rc::new(grpc::Call::new(
            &routed.route.name,
            req,
            counter,
        )));
    }
    let edge = EdgeRequest {
        req,
        route_idx: routed.idx,
        route: routed.route,
        preflight: routed.preflight,
        request_id: ctx.rid.to_str().unwrap_or_default(),
        tenant,
    };
    let server = &ctx.rt.config.server;
    let verdict = ctx
        .rt
        .edge
        .admit(
            &edge,
            || client_ip(req, server),
            ctx.metrics,
            &mut ctx.admission,
        )
        .await?;
    let identity = match verdict {
        Verdict::Pass(identity) => identity,
        Verdict::Answer(res) => return Ok(response::local(ctx, res)),
    };
    if ctx.rt.config.logging.access_log {
        ctx.identity = identity.as_ref().map(|i| i.name.clone());
    }
    // An upgrade request (a flag actix sets from `Connection: upgrade`, or for an HTTP/2
    // extended CONNECT).
    if req.head().connection_type() == actix_web::http::ConnectionType::Upgrade {
        if let (Some(idle), true) = (routed.route.websocket, websocket::is_handshake(req)) {
            // Boxed: a rare branch whose future would otherwise grow every request's.
            return Box::pin(websocket::proxy(
                ctx,
                &routed,
                normalized.as_deref(),
                host,
                identity.as_ref(),
                payload,
                idle,
            ))
            .await;
        }
        if req.version() == actix_web::http::Version::HTTP_2 {
            // An extended CONNECT (RFC 8441) this route does not proxy (another protocol, or
            // `websocket: false`): nothing an upstream could be sent.
            return Err(GatewayError::BadRequest(
                "extended CONNECT is not proxied on this route",
            ));
        }
    }
    let (body, watch) = body::read(ctx, payload, routed.route.timeout).await?;
    // A route without a cache skips both cache phases.
    let cached = match &routed.route.cache {
        None => None,
        Some(rc) => {
            let path = normalized.as_deref().unwrap_or(req.path());
            Some((rc, cache::lookup(ctx, routed.route, rc, host, path).await))
        }
    };
    // A plain HIT is answered here, without building the upstream request.
    let cached = match cached {
        Some((rc, plan)) if routed.route.transforms.is_empty() => {
            match cache::answer_now(ctx, routed.route, plan) {
                Ok(res) => return Ok(res),
                Err(plan) => Some((rc, plan)),
            }
        }
        other => other,
    };
    let mut up = upstream_request::build(
        ctx,
        &routed,
        normalized.as_deref(),
        host,
        identity.as_ref(),
        body,
    )?;
    // A route without transformations skips both transform phases (and their state).
    let transforms = !routed.route.transforms.is_empty();
    let after = match transforms {
        true => Some(transform::request(
            ctx,
            &routed,
            identity.as_ref(),
            &mut up,
        )?),
        false => None,
    };
    drop(identity);
    let mut answer = match cached {
        None => forward::forward(ctx, routed.route, host, &mut up, &watch).await?,
        Some((rc, plan)) => {
            Box::pin(cache::fetch(
                ctx,
                plan,
                routed.route,
                rc,
                host,
                &mut up,
                &watch,
            ))
            .await?
        }
    };
    let read = match after {
        None => None,
        Some(steps) => {
            let body_steps = transform::response(ctx, routed.route, steps, &mut answer.parts)?;
            // Boxed: kept inline, the body-buffering future would grow every request's future.
            Box::pin(transform::response_body(
                ctx,
                routed.route,
                body_steps,
                &mut answer,
            ))
            .await?
        }
    };
    response::upstream(ctx, routed.route, answer, read)
}

/// The client's address as the gateway believes it (see [`crate::base::net::client_ip`]).
pub fn client_ip(req: &HttpRequest, server: &ServerConfig) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    Some(crate::base::net::client_ip(peer, req.headers(), |ip| {
        server.is_trusted(ip)
    }))
}
