//! The request path, phase by phase: match the route -> check the request -> pick a server ->
//! build the upstream request -> forward -> build the response -> log. `handle` is the actix
//! handler behind every path outside `/_kairos`.

pub mod body;
pub mod completion;
pub mod error;
pub mod forward;
pub mod headers;
pub mod router;

use crate::config::model::{RewritePart, RouteConfig};
use crate::observability::metrics::{self, Metrics, UpstreamErrorKind};
use crate::observability::request_id;
use crate::observability::trace::{self, RequestTrace};
use crate::state::{Runtime, SharedState};
use crate::upstream::Upstream;
use actix_web::body::MessageBody;
use actix_web::http::header as ax;
use actix_web::{web, HttpRequest, HttpResponse};
use body::{ProxyBody, UpstreamBody};
use completion::Completion;
use error::GatewayError;
use std::sync::Arc;
use std::time::Instant;

/// What the phases learned, for the access log, the metrics and the trace.
struct Outcome<'a> {
    route: Option<(usize, &'a str)>,
    upstream: Option<&'a str>,
    request_bytes: u64,
    streamed: Option<body::Progress>,
    /// Taken by whoever builds the response: into a proxied body, or dropped at once.
    done: Option<Completion>,
}

impl Outcome<'_> {
    fn trace(&mut self) -> Option<&mut RequestTrace> {
        self.done.as_mut().and_then(|d| d.trace.as_mut())
    }

    /// The completion, with what it needs to record a response of this status.
    fn complete(
        &mut self,
        rt: &Runtime,
        metrics: &Metrics,
        method: &str,
        status: u16,
    ) -> Option<Completion> {
        let mut done = self.done.take()?;
        done.set_outcome(
            metrics.series(rt.generation, self.route, method, status),
            status,
            self.request_bytes,
            self.streamed.take(),
        );
        Some(done)
    }
}

/// The actix handler for every proxied request.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<SharedState>,
) -> HttpResponse {
    let start = Instant::now();
    let rt: Arc<Runtime> = state.load();
    let metrics = &state.metrics;
    let rid = request_id::for_request(req.headers());
    // Validated lazily: most requests never need the id as text.
    let rid_str = || rid.to_str().unwrap_or_default();
    let trace = rt.tracing.as_ref().map(|t| t.start(&req, rid_str()));
    // Hex-encoded once: for X-Trace-Id and for the access log.
    let ids = trace.as_ref().map(|t| t.ids_hex());
    let trace_header = ids
        .as_ref()
        .and_then(|(t, _)| ax::HeaderValue::from_bytes(t).ok());
    let mut outcome = Outcome {
        route: None,
        upstream: None,
        request_bytes: 0,
        streamed: None,
        done: Some(Completion::begin(start, &metrics.inflight, trace)),
    };
    let mut res = match proxy(&req, payload, &rt, metrics, &rid, &mut outcome).await {
        Ok(res) => res,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::debug!(request_id = rid_str(), error = ?e, "request failed");
            }
            let res = e.to_response(&rid);
            if let Some(mut done) =
                outcome.complete(&rt, metrics, req.method().as_str(), res.status().as_u16())
            {
                if let actix_web::body::BodySize::Sized(n) = res.body().size() {
                    done.response_bytes = n;
                }
            }
            res
        }
    };
    if rt.config.logging.access_log {
        tracing::info!(
            target: "kairos::access",
            method = req.method().as_str(),
            path = req.path(),
            route = outcome.route.map_or(metrics::UNMATCHED, |(_, name)| name),
            status = res.status().as_u16(),
            latency_ms = start.elapsed().as_secs_f64() * 1000.0,
            upstream = outcome.upstream.unwrap_or("-"),
            request_id = rid_str(),
            trace_id = ids.as_ref().and_then(|(t, _)| std::str::from_utf8(t).ok()),
            span_id = ids.as_ref().and_then(|(_, s)| std::str::from_utf8(s).ok()),
        );
    }
    if let Some(v) = trace_header {
        res.headers_mut().insert(trace::TRACE_ID_HEADER, v);
    }
    res
}

async fn proxy<'a>(
    req: &HttpRequest,
    mut payload: web::Payload,
    rt: &'a Runtime,
    metrics: &Metrics,
    rid: &ax::HeaderValue,
    outcome: &mut Outcome<'a>,
) -> Result<HttpResponse, GatewayError> {
    let method = req.method();
    let host = request_host(req);

    // Phase 0: limits on the request head.
    let limits = &rt.config.server;
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) as u64 > limits.max_uri_length {
        return Err(GatewayError::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes as u64 > limits.max_header_size {
        return Err(GatewayError::HeadersTooLarge);
    }

    // Phase 1: route. A path with dot segments could match one route and, once the upstream
    // resolves them, reach another route's resource: refused, never forwarded.
    if has_dot_segment(req.path()) {
        return Err(GatewayError::BadRequest("path contains dot segments"));
    }
    let host_key = match (rt.router.uses_hosts(), host) {
        (true, Some(h)) => Some(host_name(h).to_ascii_lowercase()),
        _ => None,
    };
    let (route_idx, params) =
        match rt
            .router
            .lookup(host_key.as_deref(), req.path(), method.as_str())
        {
            router::Lookup::Found { route, params } => (route, params),
            router::Lookup::MethodNotAllowed { allow } => {
                return Err(GatewayError::MethodNotAllowed {
                    allow: allow.to_string(),
                })
            }
            router::Lookup::NotFound => return Err(GatewayError::NotFound),
        };
    let route: &'a RouteConfig = &rt.config.routes[route_idx];
    outcome.route = Some((route_idx, &route.name));
    if let Some(t) = outcome.trace() {
        t.routed(method.as_str(), &route.path, &route.name);
    }

    // Phase 2: check the request and prepare its body.
    let max = rt.config.server.max_body_size;
    let declared_len = match req.headers().get(ax::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(GatewayError::BadRequest("invalid Content-Length"))?,
        ),
        None => None,
    };
    if declared_len.is_some_and(|n| n > max) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let too_large = body::TooLargeFlag::default();
    let progress = body::Progress::default();
    let read_timeout = route.timeout;
    outcome.request_bytes = declared_len.unwrap_or(0);
    let upstream_body = match declared_len {
        Some(0) => ProxyBody::Empty,
        Some(n) if n <= body::BUFFER_LIMIT => {
            match tokio::time::timeout(read_timeout, body::read_small(&mut payload, n, max)).await {
                Err(_) => return Err(GatewayError::RequestTimeout),
                Ok(Ok(b)) => ProxyBody::Full(Some(b)),
                Ok(Err(Ok(()))) => return Err(GatewayError::PayloadTooLarge),
                Ok(Err(Err(_))) => {
                    return Err(GatewayError::BadRequest("could not read the request body"))
                }
            }
        }
        Some(n) => {
            outcome.streamed = Some(progress.clone());
            body::stream(
                payload,
                None,
                Some(n),
                max,
                too_large.clone(),
                progress.clone(),
            )
        }
        None if req.version() >= actix_web::http::Version::HTTP_2
            || req.headers().contains_key(ax::TRANSFER_ENCODING) =>
        {
            use futures_util::StreamExt;
            match tokio::time::timeout(read_timeout, payload.next()).await {
                Err(_) => return Err(GatewayError::RequestTimeout),
                Ok(None) => ProxyBody::Empty,
                Ok(Some(Ok(first))) => {
                    outcome.streamed = Some(progress.clone());
                    body::stream(
                        payload,
                        Some(first),
                        None,
                        max,
                        too_large.clone(),
                        progress.clone(),
                    )
                }
                Ok(Some(Err(_))) => {
                    return Err(GatewayError::BadRequest("could not read the request body"))
                }
            }
        }
        None => ProxyBody::Empty,
    };

    // Phase 3: pick a server.
    let upstream: &'a Upstream = &rt.upstreams[route.upstream];
    let server_idx = upstream
        .balancer
        .candidates(&upstream.servers, 0, 0)
        .next()
        .ok_or(GatewayError::NoHealthyUpstream)?;
    let server = upstream
        .config
        .servers
        .get(server_idx)
        .ok_or(GatewayError::NoHealthyUpstream)?;
    outcome.upstream = Some(&server.url);

    // Phase 4: the upstream request.
    let path_and_query = upstream_path(req, route, &params)?;
    // Origin-form on the wire (`GET /path?query HTTP/1.1`); the server is chosen by the pool.
    let uri = http::Uri::from(path_and_query);
    let mut up = http::Request::new(upstream_body);
    *up.method_mut() = http::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| GatewayError::BadRequest("invalid method"))?;
    *up.uri_mut() = uri;
    let upstream_host = match (route.preserve_host, host) {
        (true, Some(h)) => {
            http::HeaderValue::from_str(h).unwrap_or_else(|_| server.host_header.clone())
        }
        _ => server.host_header.clone(),
    };
    let peer = req.peer_addr().map(|a| a.ip());
    let client = headers::ClientInfo {
        peer,
        trusted: peer.is_some_and(|ip| rt.config.server.is_trusted(ip)),
        scheme: if req.app_config().secure() {
            "https"
        } else {
            "http"
        },
        host: host.map(str::as_bytes),
    };
    let rid_up = http::HeaderValue::from_bytes(rid.as_bytes())
        .unwrap_or_else(|_| http::HeaderValue::from_static("-"));
    headers::request_headers(
        req.headers(),
        up.headers_mut(),
        &client,
        upstream_host,
        &rid_up,
    );
    if matches!(up.body(), ProxyBody::Stream { len: None, .. }) {
        // Say so explicitly: for GET and HEAD hyper would otherwise assume no body.
        up.headers_mut().insert(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }

    if let Some(t) = outcome.trace() {
        let tp = t.start_attempt(
            method.as_str(),
            server.https,
            up.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            &server.authority,
            &upstream.config.name,
        );
        up.headers_mut().insert(trace::TRACEPARENT, tp);
    }

    // Phase 5: forward, bounded by the route's timeout until the response head arrives.
    let target = forward::Target {
        pool_key: upstream.pool_keys[server_idx],
        https: server.https,
        authority: &server.authority,
        connect_timeout: upstream.config.connect_timeout,
        tls: &upstream.tls,
    };
    let sent_at = Instant::now();
    let sent = forward::send(up, &target);
    let failed = |kind: UpstreamErrorKind, outcome: &mut Outcome| {
        upstream.metrics.error(kind);
        if let Some(t) = outcome.trace() {
            t.attempt_result(None, Some(kind.as_str()));
        }
    };
    let (response, lease) = match with_progress_timeout(sent, route.timeout, &progress).await {
        None => {
            failed(UpstreamErrorKind::Timeout, outcome);
            return Err(GatewayError::UpstreamTimeout);
        }
        Some(Err(e)) => {
            if too_large.get() {
                return Err(GatewayError::PayloadTooLarge);
            }
            warn_upstream(
                outcome,
                rid,
                &upstream.config.name,
                &server.url,
                &e,
                "upstream request failed",
            );
            let (kind, err) = match e {
                forward::ForwardError::Connect(_) => {
                    (UpstreamErrorKind::Connect, GatewayError::UpstreamConnect)
                }
                forward::ForwardError::ConnectTimeout => {
                    (UpstreamErrorKind::Timeout, GatewayError::UpstreamTimeout)
                }
                forward::ForwardError::Body(_) => {
                    return Err(GatewayError::BadRequest("could not read the request body"))
                }
                forward::ForwardError::Protocol(_) => {
                    (UpstreamErrorKind::Protocol, GatewayError::UpstreamProtocol)
                }
            };
            failed(kind, outcome);
            return Err(err);
        }
        Some(Ok(exchange)) => exchange,
    };
    upstream
        .metrics
        .duration
        .observe(sent_at.elapsed().as_secs_f64());

    // Phase 6: the response.
    let (parts, incoming) = response.into_parts();
    let status = match actix_web::http::StatusCode::from_u16(parts.status.as_u16()) {
        Ok(s) => s,
        Err(_) => {
            failed(UpstreamErrorKind::Protocol, outcome);
            return Err(GatewayError::UpstreamProtocol);
        }
    };
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        && parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        failed(UpstreamErrorKind::Protocol, outcome);
        // Ambiguous framing (RFC 9112 6.3): refuse it, and drop the connection with the lease.
        warn_upstream(
            outcome,
            rid,
            &upstream.config.name,
            &server.url,
            &"both Transfer-Encoding and Content-Length",
            "upstream response has ambiguous framing",
        );
        drop(lease);
        return Err(GatewayError::UpstreamProtocol);
    }
    if status.is_server_error() {
        upstream.metrics.error(UpstreamErrorKind::Status5xx);
    }
    if let Some(t) = outcome.trace() {
        t.attempt_result(Some(status.as_u16()), None);
    }
    let len = headers::content_length(&parts.headers);
    let head = method == actix_web::http::Method::HEAD;
    let mut body = UpstreamBody::new(incoming, len, status.as_u16(), head, lease, route.timeout);
    if let Some(done) = outcome.complete(rt, metrics, method.as_str(), status.as_u16()) {
        body = body.with_completion(done);
    }
    let mut res = HttpResponse::with_body(status, body);
    headers::response_headers(&parts.headers, res.headers_mut());
    if status == actix_web::http::StatusCode::NOT_MODIFIED {
        // The length of the representation a 304 stands for; actix keeps it as set.
        if let Some(n) = len {
            res.headers_mut()
                .insert(ax::CONTENT_LENGTH, ax::HeaderValue::from(n));
        }
    }
    res.headers_mut()
        .insert(ax::HeaderName::from_static(request_id::HEADER), rid.clone());
    Ok(res.map_into_boxed_body())
}

/// A warning about an upstream, with the ids that tie it to the request and its trace.
fn warn_upstream(
    outcome: &mut Outcome<'_>,
    rid: &ax::HeaderValue,
    upstream: &str,
    server: &str,
    error: &dyn std::fmt::Display,
    message: &str,
) {
    let ids = outcome.trace().map(|t| t.ids_hex());
    tracing::warn!(
        request_id = rid.to_str().unwrap_or_default(),
        trace_id = ids.as_ref().and_then(|(t, _)| std::str::from_utf8(t).ok()),
        span_id = ids.as_ref().and_then(|(_, s)| std::str::from_utf8(s).ok()),
        upstream,
        server,
        error = %error,
        "{message}"
    );
}

/// The Host the client asked for: the Host header, or the authority of an HTTP/2 request.
fn request_host(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(ax::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// The host name of a Host header or authority: no userinfo, port or trailing dot.
pub fn host_name(host: &str) -> &str {
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Whether a raw request path has a `.` or `..` segment, also when the dots or the slashes
/// around them are percent-encoded (`%2e%2e`, `..%2f`, `..\`).
pub fn has_dot_segment(path: &str) -> bool {
    if !path.contains('.') && !path.contains('%') {
        return false;
    }
    let mut decoded = Vec::with_capacity(path.len());
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            match (b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()) {
                (b'2', b'e') => decoded.push(b'.'),
                (b'2', b'f') | (b'5', b'c') => decoded.push(b'/'),
                _ => decoded.extend_from_slice(&b[i..i + 3]),
            }
            i += 3;
        } else {
            decoded.push(if b[i] == b'\\' { b'/' } else { b[i] });
            i += 1;
        }
    }
    decoded
        .split(|&c| c == b'/')
        .any(|seg| seg == b"." || seg == b"..")
}

/// Waits for `fut` for at most `timeout`, counted from the later of the start and the last
/// progress of a streamed request body: an upload that keeps moving is never cut off.
async fn with_progress_timeout<F: std::future::Future>(
    fut: F,
    timeout: std::time::Duration,
    progress: &body::Progress,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let sleep = tokio::time::sleep(timeout);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = &mut sleep => match progress.last.get() {
                Some(last) if last + timeout > tokio::time::Instant::now() => {
                    sleep.as_mut().reset(last + timeout);
                }
                _ => return None,
            },
        }
    }
}

/// The path and query sent upstream: the route's rewrite with parameters substituted, or the
/// client's path unchanged. The query string always goes along.
fn upstream_path(
    req: &HttpRequest,
    route: &RouteConfig,
    params: &matchit::Params<'_, '_>,
) -> Result<http::uri::PathAndQuery, GatewayError> {
    let bad = |_| GatewayError::BadRequest("invalid request target");
    let Some(rw) = &route.rewrite else {
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        return http::uri::PathAndQuery::try_from(pq).map_err(bad);
    };
    let query = req.query_string();
    let mut out = String::with_capacity(rw.template.len() + 32 + query.len());
    for part in &rw.parts {
        match part {
            RewritePart::Literal(s) => out.push_str(s),
            RewritePart::Param(i) => {
                if let Some((_, v)) = params.iter().nth(*i) {
                    out.push_str(v);
                }
            }
        }
    }
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    http::uri::PathAndQuery::try_from(out).map_err(bad)
}
