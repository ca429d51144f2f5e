//! The one place where a gateway error becomes an HTTP response: the status CONFIG.md assigns,
//! a generic JSON body with the request id, and never an upstream address or internal detail
//! (those go to the log).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

/// Everything the gateway itself can answer with.
#[derive(Debug)]
pub enum GatewayError {
    BadRequest(&'static str),
    Unauthorized,
    /// Route credentials missing or invalid; the challenge goes in WWW-Authenticate.
    AuthRequired {
        challenge: &'static str,
    },
    Forbidden,
    CorsRejected,
    NotFound,
    MethodNotAllowed {
        allow: String,
    },
    PayloadTooLarge,
    /// Seconds until the limits that refused admit again.
    RateLimited {
        retry_after: u64,
    },
    /// The shared rate-limit backend is down and `on_backend_error` is deny.
    RateLimiterUnavailable,
    UriTooLong,
    HeadersTooLarge,
    RequestTimeout,
    /// The request head did not arrive within `server.client_header_timeout`.
    HeadTimeout,
    UpstreamConnect,
    UpstreamProtocol,
    NoHealthyUpstream,
    UpstreamTimeout,
    /// `Cache-Control: only-if-cached` and no stored answer satisfies the request (RFC 9111
    /// 5.2.1.7).
    NotCached,
    /// The tenant a header or JWT claim named is not configured.
    TenantUnknown,
    /// `tenancy.require` and the request yields no tenant.
    TenantRequired,
    /// The tenant's monthly or daily quota is used up; seconds until it resets.
    QuotaExceeded {
        retry_after: u64,
    },
    /// A transformation step failed with `on_error: fail`: 400 for a request step, 502 for a
    /// response step.
    TransformFailed {
        route: String,
        step: usize,
        response: bool,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized | GatewayError::AuthRequired { .. } => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Forbidden | GatewayError::CorsRejected | GatewayError::TenantUnknown => {
                StatusCode::FORBIDDEN
            }
            GatewayError::TenantRequired => StatusCode::UNAUTHORIZED,
            GatewayError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::RequestTimeout | GatewayError::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::UpstreamConnect | GatewayError::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::NoHealthyUpstream | GatewayError::RateLimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::UpstreamTimeout | GatewayError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::TransformFailed {
                response: false, ..
            } => StatusCode::BAD_REQUEST,
            GatewayError::TransformFailed { response: true, .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unauthorized | GatewayError::AuthRequired { .. } => "unauthorized",
            GatewayError::Forbidden => "forbidden",
            GatewayError::CorsRejected => "cors_rejected",
            GatewayError::TenantUnknown => "tenant_unknown",
            GatewayError::TenantRequired => "tenant_required",
            GatewayError::QuotaExceeded { .. } => "quota_exceeded",
            GatewayError::NotFound => "route_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::RateLimiterUnavailable => "rate_limiter_unavailable",
            GatewayError::UriTooLong => "uri_too_long",
            GatewayError::HeadersTooLarge => "headers_too_large",
            GatewayError::RequestTimeout | GatewayError::HeadTimeout => "request_timeout",
            GatewayError::UpstreamConnect => "upstream_connect_failed",
            GatewayError::UpstreamProtocol => "upstream_protocol_error",
            GatewayError::NoHealthyUpstream => "no_healthy_upstream",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::NotCached => "not_cached",
            GatewayError::TransformFailed { .. } => "transform_failed",
        }
    }

    fn message(&self) -> std::borrow::Cow<'static, str> {
        let text = match self {
            GatewayError::TransformFailed { route, step, .. } => {
                return format!("transformation step {step} of route `{route}` failed").into();
            }
            GatewayError::BadRequest(m) => m,
            GatewayError::Unauthorized | GatewayError::AuthRequired { .. } => {
                "missing or invalid credentials"
            }
            GatewayError::Forbidden => "the credentials do not grant access to this route",
            GatewayError::CorsRejected => "cross-origin request not allowed from this origin",
            GatewayError::TenantUnknown => "the tenant named by this request is not known",
            GatewayError::TenantRequired => "this gateway needs to know the request's tenant",
            GatewayError::QuotaExceeded { .. } => {
                "the tenant's request quota is used up; retry after the seconds in Retry-After"
            }
            GatewayError::NotFound => "no route matches this request",
            GatewayError::MethodNotAllowed { .. } => "method not allowed on this path",
            GatewayError::PayloadTooLarge => "request body is larger than the gateway accepts",
            GatewayError::RateLimited { .. } => {
                "rate limit exceeded; retry after the seconds in Retry-After"
            }
            GatewayError::RateLimiterUnavailable => {
                "the rate limiter is unavailable; retry after the seconds in Retry-After"
            }
            GatewayError::UriTooLong => "request target is longer than the gateway accepts",
            GatewayError::HeadersTooLarge => "request headers are larger than the gateway accepts",
            GatewayError::RequestTimeout => "the request body did not arrive in time",
            GatewayError::HeadTimeout => "the request head did not arrive in time",
            GatewayError::UpstreamConnect => "the upstream service could not be reached",
            GatewayError::UpstreamProtocol => "the upstream service sent an invalid response",
            GatewayError::NoHealthyUpstream => "no healthy upstream server is available",
            GatewayError::UpstreamTimeout => "the upstream service did not answer in time",
            GatewayError::NotCached => "only-if-cached: no stored answer satisfies this request",
        };
        text.into()
    }

    /// The response the client sees.
    pub fn to_response(&self, request_id: &HeaderValue) -> HttpResponse {
        let rid = request_id.to_str().unwrap_or_default();
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message(), "request_id": rid }
        });
        let mut res = HttpResponse::build(self.status());
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        res.insert_header((
            header::HeaderName::from_static("x-request-id"),
            request_id.clone(),
        ));
        self.challenge_headers(&mut res);
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                res.insert_header((header::ALLOW, allow.as_str()));
            }
            GatewayError::RateLimiterUnavailable => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            GatewayError::PayloadTooLarge
            | GatewayError::UriTooLong
            | GatewayError::HeadersTooLarge
            | GatewayError::RequestTimeout
            | GatewayError::HeadTimeout
            | GatewayError::BadRequest(_) => {
                // The unread body (or head) makes the connection unusable. The connection
                // type, not a `Connection` header: actix's encoder drops that header and would
                // keep the connection alive.
                res.force_close();
            }
            GatewayError::NotFound
            | GatewayError::Forbidden
            | GatewayError::CorsRejected
            | GatewayError::TenantUnknown
            | GatewayError::TenantRequired
            | GatewayError::UpstreamConnect
            | GatewayError::UpstreamProtocol
            | GatewayError::NoHealthyUpstream
            | GatewayError::UpstreamTimeout
            | GatewayError::NotCached
            | GatewayError::TransformFailed { .. }
            // Their headers are the challenge's (above).
            | GatewayError::Unauthorized
            | GatewayError::AuthRequired { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::QuotaExceeded { .. } => {}
        }
        res.body(body.to_string())
    }

    /// The gRPC status a gRPC call gets for this error: what its HTTP status would say
    /// (429 RESOURCE_EXHAUSTED, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404
    /// UNIMPLEMENTED, 504 DEADLINE_EXCEEDED, 502 and 503 UNAVAILABLE).
    pub fn grpc_status(&self) -> GrpcCode {
        match self {
            GatewayError::Unauthorized
            | GatewayError::AuthRequired { .. }
            | GatewayError::TenantRequired => GrpcCode::Unauthenticated,
            GatewayError::Forbidden | GatewayError::CorsRejected | GatewayError::TenantUnknown => {
                GrpcCode::PermissionDenied
            }
            GatewayError::RateLimited { .. }
            | GatewayError::QuotaExceeded { .. }
            | GatewayError::PayloadTooLarge
            | GatewayError::UriTooLong
            | GatewayError::HeadersTooLarge => GrpcCode::ResourceExhausted,
            GatewayError::NotFound | GatewayError::MethodNotAllowed { .. } => {
                GrpcCode::Unimplemented
            }
            GatewayError::RequestTimeout
            | GatewayError::HeadTimeout
            | GatewayError::UpstreamTimeout
            | GatewayError::NotCached => GrpcCode::DeadlineExceeded,
            GatewayError::UpstreamConnect
            | GatewayError::UpstreamProtocol
            | GatewayError::NoHealthyUpstream
            | GatewayError::RateLimiterUnavailable
            | GatewayError::TransformFailed { response: true, .. } => GrpcCode::Unavailable,
            GatewayError::BadRequest(_)
            | GatewayError::TransformFailed {
                response: false, ..
            } => GrpcCode::Internal,
        }
    }

    /// What a refusal tells the client to do next, in the JSON and the gRPC answer alike: the
    /// authentication challenge of a 401, when to retry a 429.
    fn challenge_headers(&self, res: &mut actix_web::HttpResponseBuilder) {
        match self {
            GatewayError::Unauthorized => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"kairos\""),
                ));
            }
            GatewayError::AuthRequired { challenge } => {
                res.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                ));
            }
            GatewayError::RateLimited { retry_after }
            | GatewayError::QuotaExceeded { retry_after } => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after)));
            }
            _ => {}
        }
    }

    /// The response a gRPC client sees: trailers-only (HTTP 200, no body, `grpc-status` and
    /// `grpc-message` in the head), with the request id and the headers the JSON answer has.
    pub fn to_grpc_response(&self, request_id: &HeaderValue) -> HttpResponse {
        let mut res = HttpResponse::Ok();
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        ));
        res.insert_header((
            header::HeaderName::from_static("grpc-status"),
            HeaderValue::from(self.grpc_status() as u16),
        ));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&self.message())) {
            res.insert_header((header::HeaderName::from_static("grpc-message"), v));
        }
        res.insert_header((
            header::HeaderName::from_static("x-request-id"),
            request_id.clone(),
        ));
        self.challenge_headers(&mut res);
        // No body at all: the head ends the stream (a trailers-only response).
        res.body(actix_web::body::None::new())
    }
}

/// gRPC status codes the gateway sends or counts (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum GrpcCode {
    Ok = 0,
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// A `grpc-message` value: percent-encoded outside printable ASCII (and `%` itself).
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'%' => out.push_str("%25"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
