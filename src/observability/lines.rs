//! The per-request log lines: the access log's (target `kairos::access`, one per request when
//! `logging.access_log` is on, also kept in the admin UI's ring) and the audit log's
//! (`kairos::audit`, one per authenticated request).
//!
//! With JSON lines, and a log filter that lets them through, they are written without a
//! tracing event: formatted straight into a buffer of the worker's (the same bytes as the
//! event's line, which the tests check) and queued for the log writer; the access line's ring
//! line is made from the same fields. As events they went through the subscriber's three
//! layers, a per-layer filter and field visitors: about 4,000 of the full chain's instructions
//! per request for the access line and 1,600 for the audit line (benches/load/callgrind.sh).
//! The human-readable format, and a subscriber the gateway did not install (tests), still get
//! the events.

use super::logging::{self, LinePath};

/// The fields of an access-log line, in the line's order.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    /// A gRPC call's status.
    pub grpc_status: Option<u16>,
    pub latency_ms: f64,
    pub upstream: &'a str,
    pub client: Option<&'a str>,
    pub identity: &'a str,
    pub tenant: &'a str,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
}

/// The fields of an audit line (an authentication's outcome), in the line's order after its
/// message, which comes first; keys and tokens are never among them.
#[derive(Debug, Clone, Copy)]
pub struct AuditLine<'a> {
    pub route: &'a str,
    pub scheme: &'a str,
    /// The caller, when a credential was valid.
    pub identity: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why a credential was refused (`missing`, `expired`, ...).
    pub reason: Option<&'static str>,
    /// The route's permission a valid caller lacks.
    pub missing_permission: Option<&'a str>,
    pub request_id: &'a str,
    /// `authentication failed` or `authenticated request`.
    pub message: &'static str,
}

/// Writes a JSON line with `format` into this thread's line buffer and queues it; `false`
/// when it could not (a clock outside what the line's timestamp writes).
fn write_json(format: impl FnOnce(&mut String) -> bool) -> bool {
    super::log_json::with_line(|buf| {
        let ok = format(buf);
        if ok {
            logging::push_line(buf.as_bytes());
        }
        ok
    })
}

impl AccessLine<'_> {
    /// Writes the line where this process's logging sends access lines.
    pub fn write(&self) {
        match logging::access_path() {
            LinePath::Event => self.event(),
            LinePath::Filtered => super::log_ring::push_access(self),
            LinePath::Json => match write_json(|buf| super::log_json::access_line(buf, self)) {
                true => super::log_ring::push_access(self),
                false => self.event(),
            },
        }
    }

    /// The line as a tracing event: a gRPC call's carries `grpc_status`, another's has no such
    /// field (as before these lines were written directly; a filter on field names sees the
    /// same fields).
    fn event(&self) {
        match self.grpc_status {
            Some(grpc_status) => tracing::info!(
                target: "kairos::access",
                method = self.method,
                path = self.path,
                route = self.route,
                status = self.status,
                grpc_status,
                latency_ms = self.latency_ms,
                upstream = self.upstream,
                client = self.client,
                identity = self.identity,
                tenant = self.tenant,
                request_id = self.request_id,
                trace_id = self.trace_id,
                span_id = self.span_id,
            ),
            None => tracing::info!(
                target: "kairos::access",
                method = self.method,
                path = self.path,
                route = self.route,
                status = self.status,
                latency_ms = self.latency_ms,
                upstream = self.upstream,
                client = self.client,
                identity = self.identity,
                tenant = self.tenant,
                request_id = self.request_id,
                trace_id = self.trace_id,
                span_id = self.span_id,
            ),
        }
    }
}

impl AuditLine<'_> {
    /// Writes the line where this process's logging sends audit lines.
    pub fn write(&self) {
        match logging::audit_path() {
            LinePath::Event => self.event(),
            LinePath::Filtered => {}
            LinePath::Json => {
                if !write_json(|buf| super::log_json::audit_line(buf, self)) {
                    self.event();
                }
            }
        }
    }

    /// The line as a tracing event: a refused credential's names its `reason`, a valid
    /// caller's its `identity` and `missing_permission`, each with only its own fields (a
    /// filter on field names sees what it saw before these lines were written directly).
    fn event(&self) {
        match self.reason {
            Some(reason) => tracing::info!(
                target: "kairos::audit",
                route = self.route,
                scheme = self.scheme,
                decision = self.decision,
                reason,
                request_id = self.request_id,
                "{}",
                self.message
            ),
            None => tracing::info!(
                target: "kairos::audit",
                route = self.route,
                scheme = self.scheme,
                identity = self.identity,
                decision = self.decision,
                missing_permission = self.missing_permission,
                request_id = self.request_id,
                "{}",
                self.message
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::log_json::tests::{untimed, Buf};
    use crate::observability::log_ring;
    use tracing_subscriber::layer::SubscriberExt;

    fn lines() -> Vec<AccessLine<'static>> {
        let full = AccessLine {
            method: "GET",
            path: "/api/items/42",
            route: "items",
            status: 200,
            grpc_status: None,
            latency_ms: 0.123_456,
            upstream: "http://127.0.0.1:8080",
            client: Some("10.0.0.1"),
            identity: "alice",
            tenant: "-",
            request_id: "0123456789abcdef0123456789abcdef",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: Some("00f067aa0ba902b7"),
        };
        vec![
            full,
            AccessLine {
                path: "/a\"b\\c\n\u{1}é/€",
                grpc_status: Some(14),
                latency_ms: 3.0,
                client: None,
                trace_id: None,
                span_id: None,
                ..full
            },
            AccessLine {
                method: "PROPFIND",
                route: "-",
                status: 404,
                latency_ms: 1e-7,
                upstream: "-",
                identity: "ünïcode\t\"quoted\"",
                ..full
            },
        ]
    }

    /// The line the gateway's JSON format writes for the event `emit` logs.
    fn event_line(emit: impl FnOnce()) -> String {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .event_format(crate::observability::log_json::JsonLines::new());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        line
    }

    /// The direct line and the event's are the same but for the time.
    fn same(direct: &str, event: &str) {
        assert!(direct.ends_with('\n') && event.ends_with('\n'));
        assert_eq!(untimed(direct), untimed(event));
        serde_json::from_str::<serde_json::Value>(direct).expect("valid JSON");
    }

    #[test]
    fn the_direct_json_line_is_the_events_line_byte_for_byte() {
        for line in lines() {
            let mut direct = String::new();
            assert!(crate::observability::log_json::access_line(
                &mut direct,
                &line
            ));
            same(&direct, &event_line(|| line.event()));
        }
        // And as the access log's lines have always read.
        let mut first = String::new();
        crate::observability::log_json::access_line(&mut first, &lines()[0]);
        assert_eq!(
            untimed(&first),
            concat!(
                r#"{"timestamp":"","level":"INFO","method":"GET","path":"/api/items/42","#,
                r#""route":"items","status":200,"latency_ms":0.123456,"#,
                r#""upstream":"http://127.0.0.1:8080","client":"10.0.0.1","identity":"alice","#,
                r#""tenant":"-","request_id":"0123456789abcdef0123456789abcdef","#,
                r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","#,
                r#""target":"kairos::access"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn the_direct_audit_line_is_the_events_line_byte_for_byte() {
        let allowed = AuditLine {
            route: "orders",
            scheme: "jwt",
            identity: Some("alice \"admin\""),
            decision: "allow",
            reason: None,
            missing_permission: None,
            request_id: "0123456789abcdef0123456789abcdef",
            message: "authenticated request",
        };
        let audits = [
            allowed,
            AuditLine {
                decision: "deny",
                missing_permission: Some("orders:write"),
                ..allowed
            },
            AuditLine {
                scheme: "api_key",
                identity: None,
                decision: "deny",
                reason: Some("expired"),
                message: "authentication failed",
                ..allowed
            },
        ];
        for line in audits {
            let mut direct = String::new();
            assert!(crate::observability::log_json::audit_line(
                &mut direct,
                &line
            ));
            same(&direct, &event_line(|| line.event()));
        }
        // And as the audit lines have always read.
        let mut refused = String::new();
        crate::observability::log_json::audit_line(&mut refused, &audits[2]);
        assert_eq!(
            untimed(&refused),
            concat!(
                r#"{"timestamp":"","level":"INFO","message":"authentication failed","#,
                r#""route":"orders","scheme":"api_key","decision":"deny","reason":"expired","#,
                r#""request_id":"0123456789abcdef0123456789abcdef","target":"kairos::audit"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn the_ring_keeps_the_same_line_either_way() {
        for (i, line) in lines().into_iter().enumerate() {
            // A request id of each case's own, to find its lines in the process's ring.
            let rid = format!("ring-either-way-{i}");
            let line = AccessLine {
                request_id: &rid,
                ..line
            };
            let subscriber = tracing_subscriber::registry().with(log_ring::layer());
            tracing::subscriber::with_default(subscriber, || line.event());
            log_ring::push_access(&line);
            let filter = log_ring::Filter {
                request_id: Some(rid.clone()),
                ..Default::default()
            };
            let kept = log_ring::ring().query(&filter, 10);
            assert_eq!(kept.len(), 2, "{kept:?}");
            let json = |l: &log_ring::LogLine| {
                let mut v = serde_json::to_value(l).unwrap();
                v.as_object_mut().unwrap().remove("ts");
                v
            };
            assert_eq!(json(&kept[0]), json(&kept[1]));
            assert_eq!(kept[0].request_id(), Some(rid.as_str()));
        }
    }
}
