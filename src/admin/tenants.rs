//! The tenant management API: `GET /_kairos/tenants`, `GET|PUT|DELETE /_kairos/tenants/{id}`
//! and `GET /_kairos/tenants/{id}/usage`. A PUT or DELETE edits the `tenants` member of the
//! config in effect and goes through the same path as `PUT /_kairos/config`: `If-Match`,
//! validation, the reload, and the atomic write of the config file.

use super::{api_error, apply_put, etag, refuse};
use crate::base::clock::{wall_ms, Date};
use crate::runtime::SharedState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// Longest usage export, in days.
const MAX_USAGE_DAYS: i64 = 366;

fn not_found(req: &HttpRequest, id: &str) -> HttpResponse {
    api_error(
        req,
        StatusCode::NOT_FOUND,
        "tenant_not_found",
        &format!("no tenant `{id}` in the config in effect"),
        None,
    )
}

/// `GET /_kairos/tenants`: every tenant as the running config has it.
pub async fn list(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let rt = state.load();
    let (_, tag) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    let tenants: Vec<Value> = rt
        .config
        .tenancy
        .iter()
        .flat_map(|t| &t.tenants)
        .map(|t| {
            json!({
                "id": t.id,
                "hosts": t.hosts,
                "api_keys": t.api_keys,
                "routes": t.routes.iter().filter_map(|&i| rt.config.routes.get(i)).map(|r| r.name.as_str()).collect::<Vec<_>>(),
                "rate_limits": t.rate_limit.map(|r| json!({"rps": r.rps, "burst": r.burst})),
                "quotas": t.quotas.map(|q| json!({
                    "monthly_requests": q.monthly, "daily_requests": q.daily, "warn_at": q.warn_at
                })),
            })
        })
        .collect();
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(&tag)))
        .json(json!({ "tenants": tenants }))
}

/// `GET /_kairos/tenants/{id}`: the tenant as written in the config (secrets redacted).
pub async fn get(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<SharedState>,
) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let (config, tag) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    match config.get("tenants").and_then(|t| t.get(id.as_str())) {
        Some(t) => {
            let mut t = t.clone();
            super::redact(&mut t);
            HttpResponse::Ok()
                .insert_header((header::ETAG, etag(&tag)))
                .json(t)
        }
        None => not_found(&req, &id),
    }
}

/// `PUT /_kairos/tenants/{id}`: adds or replaces the tenant; applied and persisted like a
/// config PUT (`If-Match` against the config's ETag).
pub async fn put(
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
    state: web::Data<SharedState>,
) -> HttpResponse {
    let text = match super::config_body(&req, &state, body).await {
        Ok(text) => text,
        Err(res) => return res,
    };
    let tenant: Value = match serde_json::from_str(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return api_error(
                &req,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body must be a JSON object: the tenant as it would appear under `tenants`",
                None,
            )
        }
    };
    let (mut config, hash) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    let Some(root) = config.as_object_mut() else {
        return api_error(
            &req,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the config in effect is not a JSON object",
            None,
        );
    };
    let tenants = root.entry("tenants").or_insert_with(|| json!({}));
    match tenants.as_object_mut() {
        Some(t) => {
            t.insert(id.to_string(), tenant);
        }
        None => *tenants = json!({ id.as_str(): tenant }),
    }
    apply_put(&req, &state, super::config_text(&config), Some(hash)).await
}

/// `DELETE /_kairos/tenants/{id}`: removes the tenant (its routes go with it); applied and
/// persisted like a config PUT. Its usage counts stay in the quota store.
pub async fn delete(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<SharedState>,
) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let (mut config, hash) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    let removed = config
        .get_mut("tenants")
        .and_then(Value::as_object_mut)
        .and_then(|t| t.remove(id.as_str()));
    if removed.is_none() {
        return not_found(&req, &id);
    }
    apply_put(&req, &state, super::config_text(&config), Some(hash)).await
}

#[derive(serde::Deserialize)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /_kairos/tenants/{id}/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: daily counts (admitted
/// and refused requests), JSON or CSV (`Accept: text/csv`). Defaults: the current month (UTC)
/// up to today.
pub async fn usage(
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<UsageQuery>,
    state: web::Data<SharedState>,
) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let rt = state.load();
    let Some(tenancy) = rt.edge.tenancy.as_ref().filter(|t| t.index(&id).is_some()) else {
        return not_found(&req, &id);
    };
    let today = Date::from_days((wall_ms() / 86_400_000) as i64);
    let bad = |what: &str| {
        api_error(
            &req,
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("`{what}` must be a date written YYYY-MM-DD"),
            None,
        )
    };
    let from = match query.from.as_deref() {
        None => Date { day: 1, ..today },
        Some(s) => match Date::parse(s) {
            Some(d) => d,
            None => return bad("from"),
        },
    };
    let to = match query.to.as_deref() {
        None => today,
        Some(s) => match Date::parse(s) {
            Some(d) => d,
            None => return bad("to"),
        },
    };
    let span = to.days() - from.days();
    if !(0..MAX_USAGE_DAYS).contains(&span) {
        return api_error(
            &req,
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("`from` must be on or before `to`, at most {MAX_USAGE_DAYS} days apart"),
            None,
        );
    }
    let days = match tenancy.quotas.usage(&id, from, to).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "usage not read from the quota store");
            return api_error(
                &req,
                StatusCode::SERVICE_UNAVAILABLE,
                "quota_store_unavailable",
                "the quota store could not be read",
                None,
            );
        }
    };
    let csv = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if csv {
        let mut out = String::from("tenant,date,requests,refused\n");
        for (d, c) in &days {
            out.push_str(&format!(
                "{},{d},{},{}\n",
                id.as_str(),
                c.requests,
                c.refused
            ));
        }
        return HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .body(out);
    }
    let days: Vec<Value> = days
        .iter()
        .map(|(d, c)| json!({"date": d.to_string(), "requests": c.requests, "refused": c.refused}))
        .collect();
    HttpResponse::Ok().json(json!({ "tenant": id.as_str(), "days": days }))
}
