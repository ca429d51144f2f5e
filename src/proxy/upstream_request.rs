//! The upstream-request phase: the request sent upstream, built once from the client's
//! request (the route's rewrite, the API key stripped from the query, hop-by-hop headers
//! removed, X-Forwarded-* set, the edge chain's header edits applied). A retry rebuilds it
//! from the same template; only bodies kept whole can be sent twice.

use super::body::ProxyBody;
use super::context::Ctx;
use super::headers;
use super::route::Routed;
use crate::base::arena;
use crate::base::error::GatewayError;
use crate::config::model::{RewritePart, RouteConfig, UpstreamProtocol};
use crate::edge::auth::{HeaderEdits, Identity};
use actix_web::HttpRequest;
use bytes::Bytes;

/// Everything an attempt's request is built from.
pub struct UpstreamRequest<'a> {
    req: &'a HttpRequest,
    method: http::Method,
    /// The path and query sent upstream (the request-transform phase may change them).
    pub(super) path_and_query: http::uri::PathAndQuery,
    client: headers::ClientInfo<'a>,
    request_id: http::HeaderValue,
    edits: HeaderEdits<'a>,
    /// The request-transform phase's header edits, applied after the edge chain's.
    pub(super) transformed: Vec<super::transform::HeaderOp>,
    /// The body again for a retry: `Some(None)` for no body, `Some(Some(bytes))` for one read
    /// whole; `None` for a streamed body, which cannot be sent twice.
    pub replayable: Option<Option<Bytes>>,
    /// The first attempt's body, until it is sent.
    pub(super) first: Option<ProxyBody>,
    /// The body's length after a `body_json` step rewrote it (sent as Content-Length).
    pub(super) body_len: Option<u64>,
    /// A request that was never written (its connection failed first): the next attempt sends
    /// it as it is, whatever its body.
    pub unsent: Option<http::Request<ProxyBody>>,
    /// A WebSocket handshake: sent with `Connection: upgrade` and `Upgrade: websocket` on a
    /// connection of its own (see [`super::websocket`]).
    pub upgrade: bool,
    /// The `Sec-WebSocket-Key` the gateway sends for a client whose handshake has none (a
    /// WebSocket over HTTP/2: see [`super::websocket`]).
    pub websocket_key: Option<http::HeaderValue>,
}

/// The upstream-request phase. `normalized` is the request filter's path, `host` the Host the
/// client asked for, `identity` the caller the edge chain authenticated. The request itself is
/// built for each attempt ([`UpstreamRequest::next_attempt`]).
#[inline(always)]
pub fn build<'a>(
    ctx: &Ctx<'a>,
    routed: &Routed<'_, '_>,
    normalized: Option<&str>,
    host: Option<&'a str>,
    identity: Option<&Identity>,
    body: ProxyBody,
) -> Result<UpstreamRequest<'a>, GatewayError> {
    let (req, rt) = (ctx.req, ctx.rt);
    let mut path_and_query = upstream_path(req, normalized, routed.route, &routed.params)?;
    if let Some(name) = rt
        .edge
        .auth
        .keys
        .as_ref()
        .and_then(|k| k.config.query_param.as_deref())
    {
        // An API key in the URL never goes upstream (nor into upstream access logs), whether
        // or not it is what authenticated this request.
        if let Some(rest) = path_and_query
            .query()
            .and_then(|q| crate::edge::auth::api_key::strip_query_param(q, name))
        {
            path_and_query = path_query(path_and_query.path(), &rest)?;
        }
    }
    let method = http::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| GatewayError::BadRequest("invalid method"))?;
    let peer = req.peer_addr().map(|a| a.ip());
    let (drop_tracestate, drop_baggage) = ctx
        .trace_ref()
        .map_or((false, false), |t| t.drops_incoming_context());
    let client = headers::ClientInfo {
        peer,
        trusted: peer.is_some_and(|ip| rt.config.server.is_trusted(ip)),
        scheme: if req.app_config().secure() {
            "https"
        } else {
            "http"
        },
        host: host.map(str::as_bytes),
        drop_tracestate,
        drop_baggage,
        // Trailers are relayed between an HTTP/2 client and an HTTP/2 upstream.
        te_trailers: req.version() >= actix_web::http::Version::HTTP_2
            && rt.upstreams[routed.route.upstream].config.protocol != UpstreamProtocol::Http1,
    };
    let mut request_id = headers::to_hyper(&ctx.rid);
    // Never indexed by HPACK on an HTTP/2 upstream connection (see request_id::for_request):
    // unique per request, it churned the encoder's table (callgrind, h2load to an h2c upstream:
    // about 2,200 instructions per request).
    request_id.set_sensitive(true);
    let replayable = match &body {
        ProxyBody::Empty => Some(None),
        ProxyBody::Full(Some(b)) => Some(Some(b.clone())),
        _ => None,
    };
    Ok(UpstreamRequest {
        req,
        method,
        path_and_query,
        client,
        request_id,
        edits: rt.edge.auth.header_edits(identity),
        transformed: Vec::new(),
        replayable,
        first: Some(body),
        body_len: None,
        unsent: None,
        upgrade: false,
        websocket_key: None,
    })
}

impl<'a> UpstreamRequest<'a> {
    /// A request already built (by [`UpstreamRequest::detach`]), sent once: no retry.
    pub fn prepared(
        req: &'a HttpRequest,
        rt: &'a crate::runtime::Runtime,
        request: http::Request<ProxyBody>,
    ) -> UpstreamRequest<'a> {
        UpstreamRequest {
            req,
            method: request.method().clone(),
            path_and_query: request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            client: headers::ClientInfo {
                peer: None,
                trusted: false,
                scheme: "http",
                host: None,
                drop_tracestate: false,
                drop_baggage: false,
                te_trailers: false,
            },
            request_id: http::HeaderValue::from_static("-"),
            edits: rt.edge.auth.header_edits(None),
            transformed: Vec::new(),
            replayable: None,
            first: None,
            body_len: None,
            unsent: Some(request),
            upgrade: false,
            websocket_key: None,
        }
    }
}

impl UpstreamRequest<'_> {
    /// The request as it would be sent now, without a body, as a GET: for a fetch made on the
    /// request's behalf after its response (the cache's background refresh).
    pub fn detach(&self) -> http::Request<ProxyBody> {
        let mut r = self.with_body(ProxyBody::Empty);
        *r.method_mut() = http::Method::GET;
        r.headers_mut().remove(http::header::CONTENT_LENGTH);
        r.headers_mut().remove(http::header::TRANSFER_ENCODING);
        r
    }

    /// The request for an attempt: one never written, the first, or a rebuilt one when the
    /// body can be sent again.
    pub fn next_attempt(&mut self) -> Option<http::Request<ProxyBody>> {
        if let Some(unsent) = self.unsent.take() {
            return Some(unsent);
        }
        if let Some(body) = self.first.take() {
            return Some(self.with_body(body));
        }
        match &self.replayable {
            Some(Some(b)) => Some(self.with_body(ProxyBody::Full(Some(b.clone())))),
            Some(None) => Some(self.with_body(ProxyBody::Empty)),
            None => None,
        }
    }

    fn with_body(&self, body: ProxyBody) -> http::Request<ProxyBody> {
        let mut up = http::Request::new(body);
        // A map that served an earlier request and came back with its response.
        *up.headers_mut() = arena::header_map();
        *up.method_mut() = self.method.clone();
        // Origin-form on the wire (`GET /path?query HTTP/1.1`); the pool picks the server.
        *up.uri_mut() = http::Uri::from(self.path_and_query.clone());
        headers::request_headers(
            self.req.headers(),
            up.headers_mut(),
            &self.client,
            http::HeaderValue::from_static(""),
            &self.request_id,
            self.transformed.len(),
        );
        self.edits.apply(up.headers_mut());
        for op in &self.transformed {
            op.apply(up.headers_mut());
        }
        if let Some(n) = self.body_len {
            up.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        if self.upgrade {
            if self.websocket_key.is_some() {
                // An HTTP/2 client's extended CONNECT, sent as the GET handshake it stands for
                // (RFC 8441 5).
                *up.method_mut() = http::Method::GET;
            }
            // Hop-by-hop, so removed with the client's other connection headers: set again.
            let h = up.headers_mut();
            h.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            h.insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("websocket"),
            );
            if let Some(key) = &self.websocket_key {
                // The key is the gateway's, the version RFC 6455's.
                h.insert(http::header::SEC_WEBSOCKET_KEY, key.clone());
                if !h.contains_key(http::header::SEC_WEBSOCKET_VERSION) {
                    h.insert(
                        http::header::SEC_WEBSOCKET_VERSION,
                        http::HeaderValue::from_static("13"),
                    );
                }
            }
        }
        if matches!(up.body(), ProxyBody::Stream { len: None, .. }) {
            // Say so explicitly: for GET and HEAD hyper would otherwise assume no body.
            up.headers_mut().insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        up
    }
}

/// The path and query sent upstream: the route's rewrite with parameters substituted, or the
/// client's path unchanged. The query string always goes along. Written to the worker's arena
/// ([`crate::base::arena`]): no allocation per request.
fn upstream_path(
    req: &HttpRequest,
    merged_path: Option<&str>,
    route: &RouteConfig,
    params: &matchit::Params<'_, '_>,
) -> Result<http::uri::PathAndQuery, GatewayError> {
    let query = req.query_string();
    let Some(rw) = &route.rewrite else {
        return match merged_path {
            None => {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                parse_path(arena::copy(pq.as_bytes()))
            }
            Some(path) => path_query(path, query),
        };
    };
    let params_len: usize = params.iter().map(|(_, v)| v.len()).sum();
    let len = rw.template.len() + params_len + 1 + query.len();
    parse_path(arena::build(len, |out| {
        for part in &rw.parts {
            match part {
                RewritePart::Literal(s) => out.extend_from_slice(s.as_bytes()),
                RewritePart::Param(i) => {
                    if let Some((_, v)) = params.iter().nth(*i) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
            }
        }
        if !query.is_empty() {
            out.extend_from_slice(b"?");
            out.extend_from_slice(query.as_bytes());
        }
    }))
}

/// `path`, and `?query` when there is one, as a path and query.
fn path_query(path: &str, query: &str) -> Result<http::uri::PathAndQuery, GatewayError> {
    parse_path(arena::build(path.len() + 1 + query.len(), |out| {
        out.extend_from_slice(path.as_bytes());
        if !query.is_empty() {
            out.extend_from_slice(b"?");
            out.extend_from_slice(query.as_bytes());
        }
    }))
}

fn parse_path(bytes: Bytes) -> Result<http::uri::PathAndQuery, GatewayError> {
    http::uri::PathAndQuery::from_maybe_shared(bytes)
        .map_err(|_| GatewayError::BadRequest("invalid request target"))
}
