//! The log phase: one access-log line per request (target `kairos::access`), when
//! `logging.access_log` is on.

use super::context::Ctx;
use crate::observability::metrics;
use actix_web::HttpResponse;

pub fn access(ctx: &Ctx<'_>, res: &HttpResponse) {
    if !ctx.rt.config.logging.access_log {
        return;
    }
    let ids = ctx.log_ids.as_ref();
    tracing::info!(
        target: "kairos::access",
        method = ctx.req.method().as_str(),
        path = ctx.req.path(),
        route = ctx.route.map_or(metrics::UNMATCHED, |(_, name)| name),
        status = res.status().as_u16(),
        latency_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
        upstream = ctx
            .upstream
            .as_ref()
            .and_then(|(set, i)| set.entries.get(*i))
            .map_or("-", |s| s.url.as_str()),
        identity = ctx.identity.as_deref().unwrap_or("-"),
        tenant = ctx.tenant_id().unwrap_or("-"),
        request_id = ctx.rid_str(),
        trace_id = ids.and_then(|(t, _)| std::str::from_utf8(t).ok()),
        span_id = ids.and_then(|(_, s)| std::str::from_utf8(s).ok()),
    );
}
