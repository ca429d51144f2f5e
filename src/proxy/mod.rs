//! The request path, phase by phase: match the route -> check the request -> pick a server ->
//! build the upstream request -> forward -> build the response -> log. `handle` is the actix
//! handler behind every path outside `/_kairos`.

pub mod body;
pub mod completion;
pub mod headers;

use crate::base::error::GatewayError;
use crate::config::model::{RewritePart, RouteConfig, ServerConfig, Strategy};
use crate::config::router;
use crate::edge::cors::CorsPolicy;
use crate::edge::ratelimit;
use crate::observability::metrics::{self, Metrics, UpstreamErrorKind};
use crate::observability::request_id;
use crate::observability::trace::{self, RequestTrace};
use crate::runtime::{Runtime, SharedState};
use crate::upstream::client as forward;
use crate::upstream::server::AttemptResult;
use crate::upstream::{balancer, Upstream};
use actix_web::body::MessageBody;
use actix_web::http::header as ax;
use actix_web::{web, HttpRequest, HttpResponse};
use body::{ProxyBody, UpstreamBody};
use completion::Completion;
use std::sync::Arc;
use std::time::Instant;

/// What the phases learned, for the access log, the metrics and the trace.
struct Outcome<'a> {
    route: Option<(usize, &'a str)>,
    upstream: Option<&'a str>,
    /// The authenticated caller (API key name or JWT subject), for the access log.
    identity: Option<String>,
    /// Where the route's rate limits stand, for the response headers.
    ratelimit: Option<ratelimit::Report>,
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
    let trace = rt.tracing.as_ref().map(|t| t.start(&req, &rid));
    let trace_header = trace.as_ref().map(RequestTrace::trace_id_header);
    // Hex-encoded only for the access log.
    let ids = match rt.config.logging.access_log {
        true => trace.as_ref().map(RequestTrace::ids_hex),
        false => None,
    };
    let mut outcome = Outcome {
        route: None,
        upstream: None,
        identity: None,
        ratelimit: None,
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
            identity = outcome.identity.as_deref().unwrap_or("-"),
            request_id = rid_str(),
            trace_id = ids.as_ref().and_then(|(t, _)| std::str::from_utf8(t).ok()),
            span_id = ids.as_ref().and_then(|(_, s)| std::str::from_utf8(s).ok()),
        );
    }
    if let Some(v) = trace_header {
        res.headers_mut().insert(trace::TRACE_ID_HEADER, v);
    }
    if let (Some(report), Some(rl)) = (&outcome.ratelimit, &rt.ratelimit) {
        rl.apply_headers(report, res.headers_mut());
    }
    // CORS headers on every response of a CORS route, errors included, so a browser script
    // can read a 401 or a 429.
    let cors = match outcome.route {
        Some((i, _)) => rt.auth.route_cors.get(i).and_then(Option::as_ref),
        None => rt.auth.cors.as_ref(),
    };
    if let Some(policy) = cors {
        if !(res.status() == actix_web::http::StatusCode::NO_CONTENT
            && CorsPolicy::is_preflight(req.method(), req.headers()))
        {
            policy.apply(req.headers(), res.headers_mut());
        }
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

    // Phase 1: route, on the normalised path, which is also what goes upstream: a path must
    // never match one route and, once an upstream decodes or resolves it, reach another
    // route's resource. Encoded slashes and backslashes and dot segments (also encoded ones,
    // decoded by `normalize_path`) are refused; escaped unreserved characters are decoded
    // and runs of slashes merged.
    let normalized = normalize_path(req.path()).map_err(GatewayError::BadRequest)?;
    let path = normalized.as_deref().unwrap_or(req.path());
    if has_dot_segment(path) {
        return Err(GatewayError::BadRequest("path contains dot segments"));
    }
    let host_key = match (rt.router.uses_hosts(), host) {
        (true, Some(h)) => Some(crate::base::net::host_name(h).to_ascii_lowercase()),
        _ => None,
    };
    // A CORS preflight asks about the method the real request will use: match on that.
    let preflight = rt.auth.any_cors && CorsPolicy::is_preflight(method, req.headers());
    let lookup_method = match preflight {
        true => req
            .headers()
            .get("access-control-request-method")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("OPTIONS"),
        false => method.as_str(),
    };
    let mut lookup = rt.router.lookup(host_key.as_deref(), path, lookup_method);
    let mut preflight = preflight;
    if preflight
        && !matches!(lookup, router::Lookup::Found { route, .. } if rt.auth.route_cors[route].is_some())
    {
        // The route the preflight asks about has no CORS policy: this is an ordinary OPTIONS
        // request, routed (and authenticated) by its own method.
        preflight = false;
        lookup = rt.router.lookup(host_key.as_deref(), path, method.as_str());
    }
    let (route_idx, params) = match lookup {
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

    // Phase 2: the edge-security chain, in order. CORS first: a browser's preflight carries no
    // credentials, so it is answered before authentication (and never forwarded). Then
    // authentication and permissions. Rate limiting, caching and transforms follow here.
    if preflight {
        if let Some(policy) = &rt.auth.route_cors[route_idx] {
            return match policy.preflight(req.headers()) {
                Ok(headers) => {
                    let mut res = HttpResponse::NoContent().finish();
                    for (k, v) in headers {
                        res.headers_mut().append(k, v);
                    }
                    res.headers_mut()
                        .insert(ax::HeaderName::from_static(request_id::HEADER), rid.clone());
                    drop(outcome.complete(rt, metrics, method.as_str(), 204));
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
            };
        }
    }
    let rid_text = || rid.to_str().unwrap_or_default();
    let identity = match rt.auth.authenticate_now(route, req, metrics, rid_text()) {
        Some(decided) => decided?,
        // A token to verify. Boxed: kept inline, that future (a JWKS refetch included) would
        // grow every request's future, open routes too.
        None => Box::pin(rt.auth.authenticate(route, req, metrics, rid_text())).await?,
    };
    if rt.config.logging.access_log {
        outcome.identity = identity.as_ref().map(|i| i.name.clone());
    }
    // Rate limits, once the caller is known: every one that applies must admit the request.
    if let Some(rl) = rt
        .ratelimit
        .as_ref()
        .filter(|rl| rl.limits_route(route_idx))
    {
        let ip = client_ip(req, &rt.config.server);
        let decision = match rl.decide(rl.applicable(route_idx, ip, identity.as_ref())) {
            ratelimit::Pending::Ready(d) => d,
            ratelimit::Pending::Remote(f) => f.await,
        };
        match decision {
            ratelimit::Decision::Admitted(report) => outcome.ratelimit = Some(report),
            ratelimit::Decision::Limited(report) => {
                let scope = report
                    .refused_by()
                    .map_or("global", |i| rl.scope(i).as_str());
                metrics
                    .ratelimited
                    .with_label_values(&[route.name.as_str(), scope])
                    .inc();
                let retry_after = report.retry_after_s();
                outcome.ratelimit = Some(report);
                return Err(GatewayError::RateLimited { retry_after });
            }
            ratelimit::Decision::Unavailable => return Err(GatewayError::RateLimiterUnavailable),
        }
    }

    // Phase 3: check the request and prepare its body.
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
                Ok(Err(body::ReadError::TooLarge)) => return Err(GatewayError::PayloadTooLarge),
                Ok(Err(_)) => {
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

    // Phase 4: the upstream request, built once; a retry rebuilds it from the client's
    // request (only bodies kept whole can be sent twice).
    let upstream: &'a Upstream = &rt.upstreams[route.upstream];
    let policy = &upstream.config.retries;
    let mut path_and_query = upstream_path(req, normalized.as_deref(), route, &params)?;
    let edits = rt.auth.header_edits(identity.as_ref());
    if let Some(name) = rt
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
            let pq = match rest.is_empty() {
                true => path_and_query.path().to_string(),
                false => format!("{}?{rest}", path_and_query.path()),
            };
            path_and_query = http::uri::PathAndQuery::try_from(pq)
                .map_err(|_| GatewayError::BadRequest("invalid request target"))?;
        }
    }
    let up_method = http::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| GatewayError::BadRequest("invalid method"))?;
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
    let replayable = match &upstream_body {
        ProxyBody::Empty => Some(None),
        ProxyBody::Full(Some(b)) => Some(Some(b.clone())),
        _ => None,
    };
    let replay_after_send =
        replayable.is_some() && policy.after_send() && policy.methods.contains(method.as_str());
    let build = |body: ProxyBody| {
        let mut up = http::Request::new(body);
        *up.method_mut() = up_method.clone();
        // Origin-form on the wire (`GET /path?query HTTP/1.1`); the pool picks the server.
        *up.uri_mut() = http::Uri::from(path_and_query.clone());
        headers::request_headers(
            req.headers(),
            up.headers_mut(),
            &client,
            http::HeaderValue::from_static(""),
            &rid_up,
        );
        edits.apply(up.headers_mut());
        if matches!(up.body(), ProxyBody::Stream { len: None, .. }) {
            // Say so explicitly: for GET and HEAD hyper would otherwise assume no body.
            up.headers_mut().insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        up
    };
    let mut pending = Some(build(upstream_body));

    // Phase 5: pick a server and forward, bounded by the route's timeout until a response
    // head arrives; a failed attempt may be retried on the next candidate.
    let first_now = crate::base::clock::now_ms();
    if policy.attempts > 0 {
        upstream.budget.deposit();
    }
    let key = match upstream.balancer.strategy() {
        Strategy::IpHash => client_hash(req, &rt.config.server),
        _ => 0,
    };
    let mut candidates = upstream
        .balancer
        .candidates(&upstream.servers, first_now, key);
    let deadline = tokio::time::Instant::now() + route.timeout;
    let mut retries = 0u32;
    let mut last_error = GatewayError::NoHealthyUpstream;
    // The next candidate whose breaker admits an attempt.
    let admit = |candidates: &mut balancer::Candidates<'a, _>| {
        let now = crate::base::clock::now_ms();
        candidates
            .by_ref()
            .find_map(|i| upstream.servers[i].admit(now).map(|g| (i, g)))
    };
    // Whether a retry may go ahead: attempts left, another server, budget and time.
    let retry = |candidates: &mut balancer::Candidates<'a, _>, retries: u32| {
        if retries > policy.attempts {
            return None;
        }
        let pause = crate::upstream::retry::backoff(policy, retries);
        if tokio::time::Instant::now() + pause >= deadline {
            return None;
        }
        let next = admit(candidates)?;
        if !upstream.budget.withdraw(crate::base::clock::now_ms()) {
            tracing::debug!(upstream = upstream.config.name, "retry budget spent");
            return None;
        }
        upstream.metrics.retries.inc();
        Some((next, pause))
    };
    let mut next = admit(&mut candidates);
    let (parts, incoming, lease) = loop {
        let Some((server_idx, guard)) = next.take() else {
            return Err(last_error);
        };
        let server = &upstream.config.servers[server_idx];
        outcome.upstream = Some(&server.url);
        let mut up = match pending.take() {
            Some(up) => up,
            None => match &replayable {
                Some(Some(b)) => build(ProxyBody::Full(Some(b.clone()))),
                Some(None) => build(ProxyBody::Empty),
                None => return Err(last_error),
            },
        };
        let upstream_host = match (route.preserve_host, host) {
            (true, Some(h)) => {
                http::HeaderValue::from_str(h).unwrap_or_else(|_| server.host_header.clone())
            }
            _ => server.host_header.clone(),
        };
        up.headers_mut().insert(http::header::HOST, upstream_host);
        if let Some(t) = outcome.trace() {
            let tp = t.start_attempt(
                method.as_str(),
                up.uri().path_and_query().map_or("/", |pq| pq.as_str()),
                server,
                &upstream.config.name,
                retries,
            );
            up.headers_mut().insert(trace::TRACEPARENT, tp);
        }

        let target = forward::Target {
            pool_key: upstream.pool_keys[server_idx],
            https: server.https,
            authority: &server.authority,
            connect_timeout: upstream.config.connect_timeout,
            tls: &upstream.tls,
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt_timeout = upstream
            .config
            .attempt_timeout
            .map_or(remaining, |t| t.min(remaining));
        let sent_at = Instant::now();
        let result = with_progress_timeout(
            std::pin::pin!(forward::send(up, &target)),
            attempt_timeout,
            &progress,
        )
        .await;
        let latency = sent_at.elapsed();
        let record = |result: AttemptResult| {
            upstream.record(
                server_idx,
                crate::base::clock::now_ms(),
                guard.admission,
                result,
                latency.as_nanos() as u64,
            )
        };
        retries += 1;
        // Whether this failure's condition allows a retry at all.
        let retryable = match result {
            None => {
                record(AttemptResult::GatewayFailure);
                attempt_failed(outcome, upstream, UpstreamErrorKind::Timeout);
                last_error = GatewayError::UpstreamTimeout;
                policy.on_timeout && replay_after_send
            }
            Some(Err(forward::SendError { error, unsent })) => {
                if too_large.get() {
                    return Err(GatewayError::PayloadTooLarge);
                }
                if let forward::ForwardError::Body(_) = error {
                    // The client's body failed: not the server's fault, nothing to retry.
                    return Err(GatewayError::BadRequest("could not read the request body"));
                }
                record(AttemptResult::GatewayFailure);
                warn_upstream(
                    outcome,
                    rid,
                    &upstream.config.name,
                    &server.url,
                    &error,
                    "upstream request failed",
                );
                let (kind, err, on) = match error {
                    forward::ForwardError::Connect(_) => (
                        UpstreamErrorKind::Connect,
                        GatewayError::UpstreamConnect,
                        policy.on_connect_error,
                    ),
                    forward::ForwardError::ConnectTimeout => (
                        UpstreamErrorKind::Timeout,
                        GatewayError::UpstreamTimeout,
                        policy.on_connect_error,
                    ),
                    _ => (
                        UpstreamErrorKind::Protocol,
                        GatewayError::UpstreamProtocol,
                        policy.on_reset,
                    ),
                };
                attempt_failed(outcome, upstream, kind);
                last_error = err;
                // A request that was never written may go anywhere, whatever its method.
                let ok = on && (unsent.is_some() || replay_after_send);
                pending = unsent;
                ok
            }
            Some(Ok((response, mut lease))) => {
                let (parts, incoming) = response.into_parts();
                match response_problem(&parts) {
                    Some(problem) => {
                        // Drop the connection with the lease: its framing is not trusted.
                        drop(lease);
                        record(AttemptResult::GatewayFailure);
                        attempt_failed(outcome, upstream, UpstreamErrorKind::Protocol);
                        warn_upstream(
                            outcome,
                            rid,
                            &upstream.config.name,
                            &server.url,
                            &problem,
                            "upstream response refused",
                        );
                        last_error = GatewayError::UpstreamProtocol;
                        policy.on_reset && replay_after_send
                    }
                    None => {
                        let status = parts.status.as_u16();
                        if status >= 500 {
                            record(AttemptResult::Status5xx);
                            upstream.metrics.error(UpstreamErrorKind::Status5xx);
                        } else {
                            record(AttemptResult::Success);
                        }
                        upstream.metrics.duration.observe(latency.as_secs_f64());
                        if let Some(t) = outcome.trace() {
                            t.attempt_result(Some(status), None);
                        }
                        if replay_after_send && policy.on_status.binary_search(&status).is_ok() {
                            if let Some((n, pause)) = retry(&mut candidates, retries) {
                                // Dropping the unread response closes its connection.
                                drop((parts, incoming, lease, guard));
                                next = Some(n);
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                        }
                        // The last word is the upstream's own response, 5xx or not.
                        lease.hold(guard);
                        break (parts, incoming, lease);
                    }
                }
            }
        };
        drop(guard);
        if !retryable {
            return Err(last_error);
        }
        let Some((n, pause)) = retry(&mut candidates, retries) else {
            return Err(last_error);
        };
        next = Some(n);
        tokio::time::sleep(pause).await;
    };

    // Phase 6: the response.
    let status = actix_web::http::StatusCode::from_u16(parts.status.as_u16())
        .map_err(|_| GatewayError::UpstreamProtocol)?;
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

/// Counts a failed attempt and marks it on the attempt's span.
fn attempt_failed(outcome: &mut Outcome<'_>, upstream: &Upstream, kind: UpstreamErrorKind) {
    upstream.metrics.error(kind);
    if let Some(t) = outcome.trace() {
        t.attempt_result(None, Some(kind.as_str()));
    }
}

/// Why a response head cannot be passed on, if it cannot.
fn response_problem(parts: &http::response::Parts) -> Option<&'static str> {
    if actix_web::http::StatusCode::from_u16(parts.status.as_u16()).is_err() {
        return Some("invalid status code");
    }
    // Ambiguous framing (RFC 9112 6.3): refused, never guessed.
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        && parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return Some("both Transfer-Encoding and Content-Length");
    }
    None
}

/// The hash ip_hash balances on: the client address, taken from X-Forwarded-For when the
/// peer is a trusted proxy (the rightmost address that is not itself a trusted proxy).
fn client_hash(req: &HttpRequest, server: &ServerConfig) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(client_ip(req, server))
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

/// Whether a path that [`normalize_path`] accepted has a `.` or `..` segment. Encoded dots
/// were decoded there and encoded or back slashes refused, so only literal segments are left
/// to look at (and most paths have no dot at all: one scan, no allocation).
pub fn has_dot_segment(path: &str) -> bool {
    path.contains('.') && path.split('/').any(|seg| seg == "." || seg == "..")
}

/// The path as it is routed and forwarded, or `None` when it is already normal (the common
/// case, which allocates nothing); an error message for a path that is refused.
///
/// - `%2F` and `%5C` (an encoded slash or backslash) and a raw `\` are refused: an upstream
///   that decodes them sees other segments than the router did (Envoy's
///   `path_with_escaped_slashes_action: REJECT_REQUEST`).
/// - An escaped unreserved character (`%61` for `a`) is decoded (RFC 3986 6.2.2.2), so
///   `/%61dmin` routes as `/admin`; other escapes are kept, with upper-case hex digits.
/// - A `%` not followed by two hex digits is refused.
/// - Runs of slashes are merged (NGINX's `merge_slashes`): `//admin/x` must not miss an
///   `/admin/` route and land on a catch-all.
pub fn normalize_path(path: &str) -> Result<Option<String>, &'static str> {
    let b = path.as_bytes();
    let mut prev = 0u8;
    if !b.iter().any(|&c| {
        let odd = c == b'%' || c == b'\\' || (c == b'/' && prev == b'/');
        prev = c;
        odd
    }) {
        return Ok(None);
    }
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err("path contains a backslash"),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("path contains an invalid percent-encoding");
                };
                match (hi << 4) | lo {
                    b'/' | b'\\' => return Err("path contains an encoded slash or backslash"),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c)
                    }
                    c => out.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(c >> 4)],
                        HEX[usize::from(c & 15)],
                    ]),
                }
                i += 3;
                continue;
            }
            b'/' if out.last() == Some(&b'/') => {}
            c => out.push(c),
        }
        i += 1;
    }
    // Only ASCII bytes were replaced or added, so the text stays UTF-8.
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| "path is not UTF-8")
}

/// Waits for `fut` for at most `timeout`, counted from the later of the start and the last
/// progress of a streamed request body: an upload that keeps moving is never cut off.
async fn with_progress_timeout<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    timeout: std::time::Duration,
    progress: &body::Progress,
) -> Option<F::Output> {
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
    merged_path: Option<&str>,
    route: &RouteConfig,
    params: &matchit::Params<'_, '_>,
) -> Result<http::uri::PathAndQuery, GatewayError> {
    let bad = |_| GatewayError::BadRequest("invalid request target");
    let query = req.query_string();
    let Some(rw) = &route.rewrite else {
        return match merged_path {
            None => {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                http::uri::PathAndQuery::try_from(pq).map_err(bad)
            }
            Some(path) if query.is_empty() => {
                http::uri::PathAndQuery::try_from(path.to_string()).map_err(bad)
            }
            Some(path) => http::uri::PathAndQuery::try_from(format!("{path}?{query}")).map_err(bad),
        };
    };
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

/// The client's address as the gateway believes it (see [`crate::base::net::client_ip`]).
pub fn client_ip(req: &HttpRequest, server: &ServerConfig) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    Some(crate::base::net::client_ip(peer, req.headers(), |ip| {
        server.is_trusted(ip)
    }))
}
