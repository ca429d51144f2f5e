//! The log phase: one access-log line per request (target `kairos::access`, written by
//! [`AccessLine::write`]), when `logging.access_log` is on. A gRPC call's line carries its
//! `grpc_status`, and waits for the call's end when the status comes in the trailers.

use super::context::Ctx;
use crate::observability::lines::AccessLine;
use crate::observability::metrics;
use crate::observability::trace::LogIds;
use actix_web::HttpResponse;

pub fn access(ctx: &Ctx<'_>, res: &HttpResponse) {
    if !ctx.rt.config.logging.access_log {
        return;
    }
    if let Some(call) = &ctx.grpc {
        return grpc_access(ctx, res, call);
    }
    let ids = ctx.log_ids.as_ref();
    // Formatted once for every layer (the log line and the admin UI's ring), on the stack.
    let client = super::client_ip(ctx.req, &ctx.rt.config.server).map(IpText::new);
    AccessLine {
        method: ctx.req.method().as_str(),
        path: ctx.req.path(),
        route: ctx.route.map_or(metrics::UNMATCHED, |(_, name)| name),
        status: res.status().as_u16(),
        grpc_status: None,
        latency_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
        upstream: upstream(ctx),
        client: client.as_ref().map(IpText::as_str),
        identity: ctx.identity.as_deref().unwrap_or("-"),
        tenant: ctx.tenant_id().unwrap_or("-"),
        request_id: ctx.rid_str(),
        trace_id: ids.map(LogIds::trace_id),
        span_id: ids.map(LogIds::span_id),
    }
    .write();
}

/// The upstream server the request went to, or `-`.
fn upstream<'a>(ctx: &'a Ctx<'_>) -> &'a str {
    ctx.upstream
        .as_ref()
        .and_then(|(set, i)| set.entries.get(*i))
        .map_or("-", |s| s.url.as_str())
}

/// The access-log line of a gRPC call: written now when its status is known (the gateway's
/// own error, a trailers-only answer), else when the call ends; latency is then the call's.
fn grpc_access(ctx: &Ctx<'_>, res: &HttpResponse, call: &super::grpc::Call) {
    let ids = ctx.log_ids.as_ref();
    let method = ctx.req.method().as_str().to_string();
    let path = ctx.req.path().to_string();
    let route = ctx
        .route
        .map_or(metrics::UNMATCHED, |(_, name)| name)
        .to_string();
    let status = res.status().as_u16();
    let start = ctx.start;
    let upstream = upstream(ctx).to_string();
    let client = super::client_ip(ctx.req, &ctx.rt.config.server).map(|ip| ip.to_string());
    let identity = ctx.identity.clone().unwrap_or_else(|| "-".into());
    let tenant = ctx.tenant_id().unwrap_or("-").to_string();
    let request_id = ctx.rid_str().to_string();
    let ids = ids.copied();
    let line = move |grpc_status: Option<u16>| {
        AccessLine {
            method: &method,
            path: &path,
            route: &route,
            status,
            grpc_status,
            latency_ms: start.elapsed().as_secs_f64() * 1000.0,
            upstream: &upstream,
            client: client.as_deref(),
            identity: &identity,
            tenant: &tenant,
            request_id: &request_id,
            trace_id: ids.as_ref().map(LogIds::trace_id),
            span_id: ids.as_ref().map(LogIds::span_id),
        }
        .write()
    };
    match call.status() {
        Some(s) => line(Some(s)),
        None => call.defer_log(Box::new(line)),
    }
}

/// An IP address as text, formatted on the stack: `Ipv4Addr`'s `Display` (through
/// `to_string`) cost about 1,300 instructions and an allocation per access-log line.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: std::net::IpAddr) -> Self {
        let mut buf = [0; 48];
        let mut rest = &mut buf[..];
        // 45 bytes at most (an IPv4-mapped IPv6 address written out in full): it fits.
        crate::base::net::push_ip_as_is(&mut rest, ip);
        let len = 48 - rest.len();
        IpText { buf, len }
    }

    fn as_str(&self) -> &str {
        debug_assert!(self.buf[..self.len].is_ascii());
        // SAFETY: `push_ip_as_is` writes an address's decimal or hex digits, dots and colons:
        // ASCII (the test below compares with `Display`); checking them cost 80 instructions.
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) }
    }
}

#[cfg(test)]
mod tests {
    use super::IpText;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.168.100.200",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(addr).as_str(), addr.to_string());
        }
    }
}
