//! The forward phase: pick a server (balancer, breaker, health), send, and on a failure that
//! the route's retry policy allows, try the next candidate, all bounded by the route's timeout
//! until a response head arrives.

use super::body::{BodyWatch, ProgressState};
use super::context::Ctx;
use super::upstream_request::UpstreamRequest;
use crate::base::error::GatewayError;
use crate::config::model::{RetryConfig, RouteConfig, ServerEntry, Strategy};
use crate::observability::metrics::UpstreamErrorKind;
use crate::upstream::body::{ProxyBody, ResponseBody};
use crate::upstream::client::{self, ForwardError, Lease, SendError};
use crate::upstream::server::{AttemptGuard, AttemptResult};
use crate::upstream::set::{ServerSet, SetCandidates};
use crate::upstream::Upstream;
use std::time::{Duration, Instant};
use tokio::time::Instant as Deadline;

/// Times one request is sent again to the same server after an HTTP/2 server refused its
/// stream unprocessed (see [`ForwardError::Refused`]), before that counts as a failure.
const REFUSED_RESENDS: u32 = 3;

/// The upstream's answer: its response head, its body still to stream, and the connection.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: super::body::AnswerBody,
    /// The upstream connection; none for an answer from the cache.
    pub lease: Option<Lease>,
}

/// The forward phase. `host` is the Host the client asked for (kept with `preserve_host`).
#[inline(always)]
pub async fn forward<'a>(
    ctx: &mut Ctx<'a>,
    route: &'a RouteConfig,
    host: Option<&str>,
    up: &mut UpstreamRequest<'_>,
    body: &BodyWatch,
) -> Result<Answer, GatewayError> {
    let rt = ctx.rt;
    let upstream: &'a Upstream = &rt.upstreams[route.upstream];
    let policy = &upstream.config.retries;
    let method = ctx.req.method().as_str();
    let replay_after_send =
        up.replayable.is_some() && policy.after_send() && policy.methods.contains(method);
    if policy.attempts > 0 {
        upstream.budget.deposit();
    }
    let set = upstream.set();
    let key = match set.strategy() {
        Strategy::IpHash => client_hash(ctx),
        _ => 0,
    };
    // One clock read for the balancer, the first admission and the deadline.
    let started = Instant::now();
    let now = crate::base::clock::ms_at(started);
    let mut candidates = set.candidates(now, key);
    let mut deadline = Deadline::from_std(started) + route.timeout;
    // A gRPC call's own deadline (`grpc-timeout`, from its arrival) when it comes first.
    if let Some(t) = ctx.grpc.as_ref().and_then(|c| c.timeout) {
        deadline = deadline.min(Deadline::from_std(ctx.start) + t);
    }
    let mut retries = 0u32;
    let mut refused = 0u32;
    let mut last_error = GatewayError::NoHealthyUpstream;
    let mut next = admit(&set, &mut candidates, now);
    loop {
        let Some((server_idx, guard)) = next.take() else {
            return Err(last_error);
        };
        let server = &set.entries[server_idx];
        ctx.upstream = Some((set.clone(), server_idx));
        let Some(mut req) = up.next_attempt() else {
            return Err(last_error);
        };
        let upstream_host = match (route.preserve_host, host) {
            (true, Some(h)) => {
                http::HeaderValue::from_str(h).unwrap_or_else(|_| server.host_header.clone())
            }
            _ => server.host_header.clone(),
        };
        req.headers_mut().insert(http::header::HOST, upstream_host);
        if let Some(t) = ctx.trace() {
            let out = t.start_attempt(
                method,
                req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
                server,
                &upstream.config.name,
                retries,
            );
            t.propagate(req.headers_mut(), out);
        }
        let sent_at = Instant::now();
        let result = match send(
            req,
            (upstream, up.upgrade),
            (&set, server_idx),
            sent_at,
            deadline,
            route.timeout,
            body,
        )
        .await
        {
            Waited::Done(out) => Some(out),
            Waited::TimedOut => None,
            Waited::ClientStalled => {
                // The client stopped sending its body: its stall, not the server's. Nothing is
                // recorded against the server (breaker, outlier streak, error metrics).
                if let Some(t) = ctx.trace() {
                    t.attempt_result(None, Some("request_timeout"));
                }
                return Err(GatewayError::RequestTimeout);
            }
        };
        let latency = sent_at.elapsed();
        retries += 1;
        let record = |result: AttemptResult| {
            upstream.record(
                &set,
                server_idx,
                crate::base::clock::ms_at(sent_at + latency),
                guard.admission,
                result,
                latency.as_nanos() as u64,
            )
        };
        // Whether this failure's condition allows a retry at all.
        let retryable = match result {
            None => {
                record(AttemptResult::GatewayFailure);
                attempt_failed(ctx, upstream, UpstreamErrorKind::Timeout);
                last_error = GatewayError::UpstreamTimeout;
                policy.on_timeout && replay_after_send
            }
            // The server refused the stream unprocessed (its GOAWAY, REFUSED_STREAM): not its
            // failure, and not one of the retry policy's attempts. The same server again (a
            // new connection), whatever the method, when the request can be sent again.
            Some(Err(SendError {
                error: ForwardError::Refused(why),
                unsent,
            })) if refused < REFUSED_RESENDS && (unsent.is_some() || up.replayable.is_some()) => {
                refused += 1;
                retries -= 1;
                tracing::debug!(
                    request_id = ctx.rid_str(),
                    upstream = upstream.config.name,
                    server = server.url,
                    error = why,
                    "upstream refused the stream unprocessed: sent again"
                );
                if let Some(t) = ctx.trace() {
                    t.attempt_result(None, Some("refused_stream"));
                }
                up.unsent = unsent;
                next = Some((server_idx, guard));
                continue;
            }
            Some(Err(SendError { error, unsent })) => {
                if body.too_large() {
                    return Err(GatewayError::PayloadTooLarge);
                }
                if let ForwardError::Body(_) = error {
                    // The client's body failed: not the server's fault, nothing to retry.
                    return Err(GatewayError::BadRequest("could not read the request body"));
                }
                record(AttemptResult::GatewayFailure);
                let (err, on) = send_failed(ctx, upstream, server, policy, &error);
                last_error = err;
                // A request that was never written may go anywhere, whatever its method.
                let ok = on && (unsent.is_some() || replay_after_send);
                up.unsent = unsent;
                ok
            }
            Some(Ok((response, mut lease))) => {
                let (parts, incoming) = response.into_parts();
                match received(ctx, upstream, server, &parts, latency, record) {
                    Err(err) => {
                        // Drop the connection with the lease: its framing is not trusted.
                        drop(lease);
                        last_error = err;
                        policy.on_reset && replay_after_send
                    }
                    Ok(status) => {
                        if replay_after_send && policy.on_status.binary_search(&status).is_ok() {
                            if let Some((n, pause)) =
                                retry(upstream, &set, &mut candidates, retries, deadline)
                            {
                                // Dropping the unread response closes its connection.
                                drop((parts, incoming, lease, guard));
                                next = Some(n);
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                        }
                        // The last word is the upstream's own response, 5xx or not.
                        lease.hold(guard);
                        return Ok(Answer {
                            parts,
                            body: super::body::AnswerBody::Upstream(incoming),
                            lease: Some(lease),
                        });
                    }
                }
            }
        };
        drop(guard);
        if !retryable {
            return Err(last_error);
        }
        let Some((n, pause)) = retry(upstream, &set, &mut candidates, retries, deadline) else {
            return Err(last_error);
        };
        next = Some(n);
        tokio::time::sleep(pause).await;
    }
}

/// The next candidate whose breaker admits an attempt at `now` (gateway clock, ms).
fn admit(
    set: &ServerSet,
    candidates: &mut SetCandidates<'_>,
    now: u64,
) -> Option<(usize, AttemptGuard)> {
    candidates
        .by_ref()
        .find_map(|i| set.states[i].admit(now).map(|g| (i, g)))
}

/// Whether a retry may go ahead: attempts left, another server, budget and time.
fn retry(
    upstream: &Upstream,
    set: &ServerSet,
    candidates: &mut SetCandidates<'_>,
    retries: u32,
    deadline: Deadline,
) -> Option<((usize, AttemptGuard), Duration)> {
    let policy = &upstream.config.retries;
    if retries > policy.attempts {
        return None;
    }
    let pause = crate::upstream::retry::backoff(policy, retries);
    if Deadline::now() + pause >= deadline {
        return None;
    }
    let next = admit(set, candidates, crate::base::clock::now_ms())?;
    if !upstream.budget.withdraw(crate::base::clock::now_ms()) {
        tracing::debug!(upstream = upstream.config.name, "retry budget spent");
        return None;
    }
    upstream.metrics.retries.inc();
    Some((next, pause))
}

/// One send to server `idx` at `sent_at`, bounded by the time left before `deadline` (and the
/// upstream's `attempt_timeout`), counted from a streamed body's last progress; a client that
/// stops sending its body is given the route's `timeout` from its last progress.
async fn send(
    req: http::Request<ProxyBody>,
    (upstream, upgrade): (&Upstream, bool),
    (set, idx): (&ServerSet, usize),
    sent_at: Instant,
    deadline: Deadline,
    client_timeout: Duration,
    body: &BodyWatch,
) -> Waited<Result<(http::Response<ResponseBody>, Lease), SendError>> {
    let server = &set.entries[idx];
    let target = client::Target {
        pool_key: set.pool_keys[idx],
        https: server.https,
        authority: &server.authority,
        connect_timeout: upstream.config.connect_timeout,
        tls: &upstream.tls,
        max_header_size: upstream.config.max_response_header_size,
        upgrade,
        protocol: upstream.config.protocol,
    };
    let remaining = deadline.saturating_duration_since(Deadline::from_std(sent_at));
    let attempt_timeout = upstream
        .config
        .attempt_timeout
        .map_or(remaining, |t| t.min(remaining));
    // Two paths, so the HTTP/1.1 one's future is not grown by the HTTP/2 one (boxed).
    if client::uses_h2(&target) {
        if upgrade {
            // A WebSocket handshake: an extended CONNECT when the server allows it, else
            // HTTP/1.1 (over TLS offering only "http/1.1").
            let http1_tls = match server.https {
                true => client::tls_http1_only(&upstream.tls),
                false => upstream.tls.clone(),
            };
            let http1 = client::Target {
                tls: &http1_tls,
                ..target
            };
            return with_progress_timeout(
                Box::pin(client::send_websocket(req, &target, &http1)).as_mut(),
                Deadline::from_std(sent_at),
                attempt_timeout,
                client_timeout,
                body.progress.as_deref(),
            )
            .await;
        }
        return with_progress_timeout(
            Box::pin(client::send_h2(req, &target)).as_mut(),
            Deadline::from_std(sent_at),
            attempt_timeout,
            client_timeout,
            body.progress.as_deref(),
        )
        .await;
    }
    let out = with_progress_timeout(
        std::pin::pin!(client::send(req, &target)),
        Deadline::from_std(sent_at),
        attempt_timeout,
        client_timeout,
        body.progress.as_deref(),
    )
    .await;
    out
}

/// A send that failed on the server's side: logged and counted; the error to answer and
/// whether the retry policy covers this kind of failure.
fn send_failed(
    ctx: &mut Ctx<'_>,
    upstream: &Upstream,
    server: &ServerEntry,
    policy: &RetryConfig,
    error: &ForwardError,
) -> (GatewayError, bool) {
    warn_upstream(
        ctx,
        &upstream.config.name,
        &server.url,
        error,
        "upstream request failed",
    );
    let (kind, err, on) = match error {
        ForwardError::Connect(_) => (
            UpstreamErrorKind::Connect,
            GatewayError::UpstreamConnect,
            policy.on_connect_error,
        ),
        ForwardError::ConnectTimeout => (
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
    attempt_failed(ctx, upstream, kind);
    (err, on)
}

/// A response head arrived: its status, recorded (5xx against the server), or the error when
/// it cannot be passed on.
fn received(
    ctx: &mut Ctx<'_>,
    upstream: &Upstream,
    server: &ServerEntry,
    parts: &http::response::Parts,
    latency: Duration,
    record: impl Fn(AttemptResult),
) -> Result<u16, GatewayError> {
    if let Some(problem) = response_problem(parts) {
        record(AttemptResult::GatewayFailure);
        attempt_failed(ctx, upstream, UpstreamErrorKind::Protocol);
        warn_upstream(
            ctx,
            &upstream.config.name,
            &server.url,
            &problem,
            "upstream response refused",
        );
        return Err(GatewayError::UpstreamProtocol);
    }
    let status = parts.status.as_u16();
    if status >= 500 {
        record(AttemptResult::Status5xx);
        upstream.metrics.error(UpstreamErrorKind::Status5xx);
    } else {
        record(AttemptResult::Success);
    }
    upstream.metrics.duration.observe(latency.as_secs_f64());
    if let Some(t) = ctx.trace() {
        t.attempt_result(Some(status), None);
    }
    Ok(status)
}

/// Counts a failed attempt and marks it on the attempt's span.
fn attempt_failed(ctx: &mut Ctx<'_>, upstream: &Upstream, kind: UpstreamErrorKind) {
    upstream.metrics.error(kind);
    if let Some(t) = ctx.trace() {
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

/// The hash ip_hash balances on: the client's address (see [`super::client_ip`]).
fn client_hash(ctx: &Ctx<'_>) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(super::client_ip(ctx.req, &ctx.rt.config.server))
}

/// A warning about an upstream, with the ids that tie it to the request and its trace.
fn warn_upstream(
    ctx: &mut Ctx<'_>,
    upstream: &str,
    server: &str,
    error: &dyn std::fmt::Display,
    message: &str,
) {
    let ids = ctx.trace().map(|t| t.ids_hex());
    tracing::warn!(
        request_id = ctx.rid_str(),
        trace_id = ids.as_ref().map(crate::observability::trace::LogIds::trace_id),
        span_id = ids.as_ref().map(crate::observability::trace::LogIds::span_id),
        upstream,
        server,
        error = %error,
        "{message}"
    );
}

/// How a wait bounded by [`with_progress_timeout`] ended.
enum Waited<T> {
    Done(T),
    /// The upstream took longer than the timeout (counted from the body's last progress).
    TimedOut,
    /// The client sent no body data for `client_timeout`: its stall, not the upstream's.
    ClientStalled,
}

/// Waits for `fut` for at most `timeout`, counted from the later of `started` and the last
/// progress of a streamed request body: an upload that keeps moving is never cut off. While
/// the body waits for the client (not for the upstream to take a chunk), the wait is the
/// client's: it ends as [`Waited::ClientStalled`] once `client_timeout` has passed since the
/// last progress (the upstream's shorter `attempt_timeout` does not apply to it).
async fn with_progress_timeout<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    started: Deadline,
    timeout: Duration,
    client_timeout: Duration,
    progress: Option<&ProgressState>,
) -> Waited<F::Output> {
    let sleep = tokio::time::sleep_until(started + timeout);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Waited::Done(out),
            () = &mut sleep => {
                let now = Deadline::now();
                let from = progress
                    .and_then(|p| p.last.get())
                    .map_or(started, |last| last.max(started));
                if from + timeout > now {
                    sleep.as_mut().reset(from + timeout);
                } else if !progress.is_some_and(|p| p.reading.get()) {
                    return Waited::TimedOut;
                } else if from + client_timeout > now {
                    sleep.as_mut().reset(from + client_timeout);
                } else {
                    return Waited::ClientStalled;
                }
            }
        }
    }
}
