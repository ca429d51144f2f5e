//! The `/_kairos` scope: liveness and readiness are open; everything else needs
//! `Authorization: Bearer <admin.token>` (compared in constant time). Metrics take the token
//! too unless `admin.public_metrics` is set. Later issues add config reload and the admin API
//! behind the same guard.

use crate::observability::request_id;
use crate::proxy::error::GatewayError;
use crate::state::SharedState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub fn scope() -> actix_web::Scope {
    web::scope("/_kairos")
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/upstreams", web::get().to(upstreams))
        .default_service(web::to(guarded_fallback))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn ready(state: web::Data<SharedState>) -> HttpResponse {
    if state.is_ready() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "starting" }))
    }
}

/// Prometheus text exposition of every metric.
async fn metrics(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    let rt = state.load();
    if !rt.config.admin.public_metrics && !authorized(&req, rt.config.admin.token.as_deref()) {
        return GatewayError::Unauthorized.to_response(&request_id::for_request(req.headers()));
    }
    // Off the worker: the process collector reads /proc/self/fd, one entry per connection.
    let metrics = state.metrics.clone();
    match web::block(move || metrics.render()).await {
        Ok(body) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(body),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// Every upstream with its servers' live state: health, circuit, ejection, in-flight.
async fn upstreams(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    let rt = state.load();
    if !authorized(&req, rt.config.admin.token.as_deref()) {
        return GatewayError::Unauthorized.to_response(&request_id::for_request(req.headers()));
    }
    use crate::upstream::balancer::ServerLoad;
    let now = crate::upstream::now_ms();
    let list: Vec<serde_json::Value> = rt
        .upstreams
        .iter()
        .map(|u| {
            let servers: Vec<serde_json::Value> = u
                .config
                .servers
                .iter()
                .zip(&u.servers)
                .map(|(entry, s)| {
                    let check = s.last_check();
                    let ejected_for = s.ejected_until().saturating_sub(now);
                    serde_json::json!({
                        "url": entry.url,
                        "weight": entry.weight,
                        "available": s.available(now),
                        "health": s.health().as_str(),
                        "circuit": s.circuit().as_str(),
                        "inflight": s.inflight(),
                        "ejected": ejected_for > 0,
                        "ejected_for_ms": ejected_for,
                        "ejections": s.ejections(),
                        "last_check": check.map(|c| rfc3339(c.at)),
                        "last_check_ok": check.map(|c| c.ok),
                        "latency_ms": check.map(|c| (c.latency_ms * 1000.0).round() / 1000.0),
                        "latency_ewma_ms": s.latency_ewma_ns() as f64 / 1e6,
                    })
                })
                .collect();
            serde_json::json!({
                "name": u.config.name,
                "strategy": u.config.strategy.as_str(),
                "health_check": u.config.health_check.is_some(),
                "circuit_breaker": u.config.circuit_breaker.is_some(),
                "servers": servers,
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "upstreams": list }))
}

/// A UTC timestamp as RFC 3339 with milliseconds: `2026-11-30T16:28:55.123Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Any other `/_kairos` path: 401 without a valid token, 404 with one.
async fn guarded_fallback(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    let rid = request_id::for_request(req.headers());
    let rt = state.load();
    if !authorized(&req, rt.config.admin.token.as_deref()) {
        return GatewayError::Unauthorized.to_response(&rid);
    }
    GatewayError::NotFound.to_response(&rid)
}

/// Whether the request carries the admin token. With no token configured nothing is authorized.
pub fn authorized(req: &HttpRequest, token: Option<&str>) -> bool {
    let Some(token) = token else { return false };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    crate::auth::api_key::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_056_135_123);
        assert_eq!(super::rfc3339(t), "2026-11-30T16:28:55.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(super::rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
