//! `GET /_kairos/cache` (what the response cache holds, per route, with its hit ratio) and
//! `DELETE /_kairos/cache` (purge by key, route, path prefix or all), admin token required.

use super::{api_error, refuse};
use crate::cache;
use crate::runtime::SharedState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

/// What a purge removes: exactly one of the fields.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    key: Option<String>,
    route: Option<String>,
    prefix: Option<String>,
    all: Option<bool>,
}

fn not_configured(req: &HttpRequest) -> HttpResponse {
    api_error(
        req,
        StatusCode::NOT_FOUND,
        "cache_not_configured",
        "the response cache is not configured (no `caching` section)",
        None,
    )
}

/// `GET /_kairos/cache`.
pub async fn inspect(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let rt = state.load();
    let Some(cache) = rt.cache.clone() else {
        return not_configured(&req);
    };
    // The Redis tier's answers per route (one SCAN), asked from here; `None`: unreachable.
    let names: Vec<&str> = rt
        .config
        .routes
        .iter()
        .filter(|r| r.cache.is_some())
        .map(|r| r.name.as_str())
        .collect();
    let shared = match &cache.redis {
        Some(tier) => Some(tier.census(&names).await),
        None => None,
    };
    let metrics = state.metrics.clone();
    // Off the worker: listing walks every entry.
    let body = web::block(move || {
        let (bytes, entries) = cache.memory.as_ref().map_or((0, 0), |m| m.held());
        let usage = cache.memory.as_ref().map(|m| m.usage()).unwrap_or_default();
        let count = |route: &str, result: &str| {
            metrics
                .cache
                .requests
                .with_label_values(&[route, result])
                .get()
        };
        let routes: Vec<serde_json::Value> = rt
            .config
            .routes
            .iter()
            .filter(|r| r.cache.is_some())
            .map(|r| {
                let u = usage.get(&r.name).cloned().unwrap_or_default();
                let hits = count(&r.name, "hit") + count(&r.name, "stale");
                let lookups = hits
                    + ["miss", "expired", "revalidated"]
                        .iter()
                        .map(|x| count(&r.name, x))
                        .sum::<u64>();
                let mut route = serde_json::json!({
                    "route": r.name,
                    "entries": u.entries,
                    "bytes": u.bytes,
                    "hits": hits,
                    "lookups": lookups,
                    "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
                });
                if let Some(Some(counts)) = &shared {
                    route["redis_entries"] = counts.get(&r.name).copied().unwrap_or(0).into();
                }
                route
            })
            .collect();
        let backend = match cache.config.backend {
            crate::config::cache::CacheBackend::Memory => "memory",
            crate::config::cache::CacheBackend::Redis(_) => "redis",
            crate::config::cache::CacheBackend::Hybrid { .. } => "hybrid",
        };
        let mut body = serde_json::json!({
            "backend": backend,
            "max_size": cache.config.max_size,
            "bytes": bytes,
            "entries": entries,
            "routes": routes,
        });
        if let Some(counts) = &shared {
            body["redis"] = match counts {
                Some(c) => serde_json::json!({"status": "ok", "entries": c.values().sum::<u64>()}),
                None => serde_json::json!({"status": "unreachable", "entries": null}),
            };
        }
        body
    })
    .await;
    match body {
        Ok(b) => HttpResponse::Ok().json(b),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// `DELETE /_kairos/cache` with `{"key": ...}`, `{"route": ...}`, `{"prefix": ...}` or
/// `{"all": true}`: `{"purged": N}`.
pub async fn purge(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SharedState>,
) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let Some(cache) = state.load().cache.clone() else {
        return not_configured(&req);
    };
    let bad =
        |message: &str| api_error(&req, StatusCode::BAD_REQUEST, "bad_request", message, None);
    let what: Purge = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad(&format!("the body must be a purge object: {e}")),
    };
    let set = [
        what.key.is_some(),
        what.route.is_some(),
        what.prefix.is_some(),
        what.all.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 || what.all == Some(false) {
        return bad("give exactly one of `key`, `route`, `prefix` or `\"all\": true`");
    }
    let what = match what {
        Purge { key: Some(k), .. } => cache::Purge::Key(k),
        Purge { route: Some(r), .. } => cache::Purge::Route(r),
        Purge {
            prefix: Some(p), ..
        } => cache::Purge::Prefix(p),
        _ => cache::Purge::All,
    };
    // The memory tier is walked off the worker; Redis is asked from here. With both tiers
    // the larger count: an answer is usually in both.
    let shared = what.clone();
    let from_redis = cache.purge_redis(&shared).await;
    let memory = web::block(move || cache.purge_memory(&what)).await;
    match (memory, from_redis) {
        (Ok(n), None) => HttpResponse::Ok().json(serde_json::json!({ "purged": n })),
        (Ok(n), Some(r)) => HttpResponse::Ok().json(serde_json::json!({ "purged": n.max(r) })),
        (Err(_), _) => HttpResponse::ServiceUnavailable().finish(),
    }
}
