//! `GET /_kairos/cache` (what the response cache holds, per route, with its hit ratio) and
//! `DELETE /_kairos/cache` (purge by key, route, path prefix or all), admin token required.

use super::{api_error, refuse};
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
    let metrics = state.metrics.clone();
    // Off the worker: listing walks every entry.
    let body = web::block(move || {
        let (bytes, entries) = cache.store.held();
        let usage = cache.store.usage();
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
                serde_json::json!({
                    "route": r.name,
                    "entries": u.entries,
                    "bytes": u.bytes,
                    "hits": hits,
                    "lookups": lookups,
                    "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
                })
            })
            .collect();
        serde_json::json!({
            "backend": "memory",
            "max_size": cache.config.max_size,
            "bytes": bytes,
            "entries": entries,
            "routes": routes,
        })
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
    let purged = web::block(move || match what {
        Purge { key: Some(k), .. } => cache.store.purge_key(&k),
        Purge { route: Some(r), .. } => cache.store.purge(Some(&r), None),
        Purge {
            prefix: Some(p), ..
        } => cache.store.purge(None, Some(&p)),
        _ => cache.store.purge(None, None),
    })
    .await;
    match purged {
        Ok(n) => HttpResponse::Ok().json(serde_json::json!({ "purged": n })),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}
