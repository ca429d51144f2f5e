//! gRPC calls on routes with `grpc: true`: which requests are calls (`content-type:
//! application/grpc*`), their `grpc-timeout`, and the status each call ends with, for the
//! access log and `kairos_grpc_responses_total`. The gateway's own errors become
//! trailers-only responses in [`crate::base::error::GatewayError::to_grpc_response`].

use crate::base::error::GrpcCode;
use actix_web::http::header as ax;
use actix_web::HttpRequest;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// Whether the request is a gRPC call: its content type is `application/grpc` or a subtype
/// (`application/grpc+proto`, `application/grpc-web` is not one).
pub fn is_call(req: &HttpRequest) -> bool {
    req.headers()
        .get(ax::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(v: &[u8]) -> bool {
    let Some(rest) = v.strip_prefix(b"application/grpc") else {
        return false;
    };
    rest.is_empty() || rest[0] == b'+' || rest[0] == b';'
}

/// The call's `grpc-timeout` (at most 8 digits and a unit: H, M, S, m, u, n); `None` when
/// absent or malformed (a malformed one is ignored, as gRPC servers do).
pub fn timeout(req: &HttpRequest) -> Option<Duration> {
    parse_timeout(req.headers().get("grpc-timeout")?.as_bytes())
}

fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` in a response head (trailers-only) or in trailers.
pub fn status_in(value: Option<&[u8]>) -> Option<u16> {
    std::str::from_utf8(value?).ok()?.trim().parse().ok()
}

/// An access-log line waiting for the call's gRPC status.
pub type LogLine = Box<dyn FnOnce(Option<u16>)>;

/// One gRPC call through the gateway: its deadline and, once known, its status. The access
/// log line of a call whose status comes in the trailers waits here for them.
pub struct Call {
    /// The route's name, for the metric.
    route: String,
    pub timeout: Option<Duration>,
    status: Cell<Option<u16>>,
    /// The access-log line, written when the status is known (or the call ends).
    line: RefCell<Option<LogLine>>,
    counter: prometheus::IntCounterVec,
}

impl Call {
    pub fn new(route: &str, req: &HttpRequest, counter: &prometheus::IntCounterVec) -> Call {
        Call {
            route: route.to_string(),
            timeout: timeout(req),
            status: Cell::new(None),
            line: RefCell::new(None),
            counter: counter.clone(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        self.status.get()
    }

    pub fn set_status(&self, status: u16) {
        self.status.set(Some(status));
    }

    pub fn set_code(&self, code: GrpcCode) {
        self.set_status(code as u16);
    }

    /// Keeps the access-log line until the call ends.
    pub fn defer_log(&self, line: LogLine) {
        *self.line.borrow_mut() = Some(line);
    }

    /// The call is over (its response ended, or the client went away): counted, and its
    /// access-log line written if it waited for the status.
    pub fn finish(&self) {
        let status = self.status.get();
        let label = status.map_or_else(|| "unknown".to_string(), |s| s.to_string());
        self.counter.with_label_values(&[&self.route, &label]).inc();
        if let Some(line) = self.line.borrow_mut().take() {
            line(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_malformed_ones() {
        assert_eq!(parse_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout(b"10u"), Some(Duration::from_micros(10)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [&b"S"[..], b"123456789S", b"1s", b"-1S", b"1.5S", b""] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"application/json"));
    }

    #[test]
    fn statuses_parse_as_decimal() {
        assert_eq!(status_in(Some(b"14")), Some(14));
        assert_eq!(status_in(Some(b"x")), None);
    }
}
