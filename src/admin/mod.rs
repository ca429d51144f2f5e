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
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
