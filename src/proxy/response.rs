//! The response phases: the upstream's response head turned into the client's response
//! ([`upstream`]), an error turned into the gateway's own answer ([`error`]), and the
//! response filter every response passes ([`filter`]).

use super::body::UpstreamBody;
use super::context::Ctx;
use super::forward::Answer;
use super::headers;
use crate::base::error::GatewayError;
use crate::config::model::RouteConfig;
use crate::observability::{request_id, trace};
use actix_web::body::MessageBody;
use actix_web::http::header as ax;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

/// The client's response from the upstream's: its status and end-to-end headers, the body
/// streamed as it comes (with the request's completion inside, recorded when it ends).
#[inline(always)]
pub fn upstream(
    ctx: &mut Ctx<'_>,
    route: &RouteConfig,
    answer: Answer,
    read: Option<super::transform::Buffered>,
) -> Result<HttpResponse, GatewayError> {
    let Answer { parts, body, lease } = answer;
    let status =
        StatusCode::from_u16(parts.status.as_u16()).map_err(|_| GatewayError::UpstreamProtocol)?;
    let len = headers::content_length(&parts.headers);
    let head = ctx.req.method() == actix_web::http::Method::HEAD;
    let done = ctx.complete(status.as_u16());
    let mut body = UpstreamBody::new(body, len, status.as_u16(), head, lease, route.timeout, done);
    match read {
        None => {}
        Some(super::transform::Buffered::Whole(b)) => body.set_prefix(b, false),
        Some(super::transform::Buffered::Prefix(b)) => body.set_prefix(b, true),
    }
    // An HTTP/2 client gets the upstream's trailers (the vendored actix-http sends them).
    let trailers = (ctx.req.version() >= actix_web::http::Version::HTTP_2)
        .then(actix_http::h2::Trailers::default);
    if let Some(t) = &trailers {
        body.set_trailers(t.clone());
    }
    if let Some(call) = &ctx.grpc {
        // A trailers-only answer carries the status in its head.
        if let Some(s) = super::grpc::status_in(
            parts
                .headers
                .get("grpc-status")
                .map(http::HeaderValue::as_bytes),
        ) {
            call.set_status(s);
        }
        let deadline = call
            .timeout
            .map(|t| tokio::time::Instant::from_std(ctx.start) + t);
        body.set_grpc(call.clone(), deadline);
    }
    let mut res = HttpResponse::with_body(status, body);
    if let Some(t) = trailers {
        res.extensions_mut().insert(t);
    }
    headers::response_headers(&parts.headers, res.headers_mut());
    crate::base::arena::recycle(parts.headers);
    if status == StatusCode::NOT_MODIFIED {
        // The length of the representation a 304 stands for; actix keeps it as set.
        if let Some(n) = len {
            res.headers_mut()
                .insert(ax::CONTENT_LENGTH, ax::HeaderValue::from(n));
        }
    }
    let mut res = res.map_into_boxed_body();
    set_request_id(ctx, &mut res);
    Ok(res)
}

/// A response the gateway answers itself (a preflight's 204): recorded at once.
#[inline(always)]
pub fn local(ctx: &mut Ctx<'_>, mut res: HttpResponse) -> HttpResponse {
    close_if_body_unread(ctx, &mut res);
    drop(ctx.complete(res.status().as_u16()));
    set_request_id(ctx, &mut res);
    res
}

/// An answer the gateway gives while an HTTP/1 request's body is still unread (a 413 from the
/// declared length, a 401, 403, 404, 405 or 429 before the body phase, a streamed body cut
/// short) closes the connection: the rest of the body would otherwise be parsed as the next
/// request, or drained first. Requests without a body keep their connection.
fn close_if_body_unread(ctx: &Ctx<'_>, res: &mut HttpResponse) {
    let req = ctx.req;
    if ctx.body_read || req.version() >= actix_web::http::Version::HTTP_2 {
        return;
    }
    let headers = req.headers();
    let has_body = headers.contains_key(ax::TRANSFER_ENCODING)
        || headers
            .get(ax::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().iter().any(|&b| b != b'0'));
    if has_body {
        res.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
}

/// The gateway's answer to an error: the status and JSON body of [`GatewayError`], recorded at
/// once.
#[inline(always)]
pub fn error(ctx: &mut Ctx<'_>, e: GatewayError) -> HttpResponse {
    if e.status().is_server_error() {
        tracing::debug!(request_id = ctx.rid_str(), error = ?e, "request failed");
    }
    let mut res = match grpc_answer(ctx) {
        true => {
            if let Some(call) = &ctx.grpc {
                call.set_code(e.grpc_status());
            }
            e.to_grpc_response(&ctx.rid)
        }
        false => e.to_response(&ctx.rid),
    };
    close_if_body_unread(ctx, &mut res);
    if let Some(mut done) = ctx.complete(res.status().as_u16()) {
        if let actix_web::body::BodySize::Sized(n) = res.body().size() {
            done.response_bytes = n;
        }
    }
    res
}

/// Whether the gateway answers in gRPC: a call on a `grpc` route, or a gRPC call that matched
/// no route while some route serves gRPC (an unknown method is UNIMPLEMENTED).
fn grpc_answer(ctx: &Ctx<'_>) -> bool {
    ctx.grpc.is_some()
        || (ctx.route.is_none()
            && super::grpc::is_call(ctx.req)
            && ctx.rt.config.routes.iter().any(|r| r.grpc))
}

/// The response filter: what every response carries, proxied or not: the trace id, and the
/// edge chain's headers (rate limits, CORS).
#[inline(always)]
pub fn filter(ctx: &mut Ctx<'_>, res: &mut HttpResponse) {
    if let Some(v) = ctx.trace_header.take() {
        res.headers_mut().insert(trace::TRACE_ID_HEADER, v);
    }
    ctx.rt.edge.respond(
        ctx.route.map(|(i, _)| i),
        ctx.tenant,
        &ctx.admission,
        ctx.req,
        res,
    );
}

fn set_request_id(ctx: &Ctx<'_>, res: &mut HttpResponse) {
    res.headers_mut()
        .insert(request_id::HEADER_NAME, ctx.rid.clone());
}
