//! The `/_kairos` scope: liveness and readiness are open; everything else needs
//! `Authorization: Bearer <admin.token>` (compared in constant time). Metrics take the token
//! too unless `admin.public_metrics` is set. The admin API (config reload, read, validate and
//! replace; routes; status) sits behind the same guard; its OpenAPI document is
//! `src/admin/openapi.json`, served at `/_kairos/openapi.json`.

pub mod cache;
mod cluster;
mod events;
mod keys;
mod logs;
pub mod render;
mod stats;
mod tenants;
mod ui;
mod unredact;

use crate::base::clock::rfc3339;
use crate::base::error::GatewayError;
use crate::observability::request_id;
use crate::runtime::{reload, SharedState};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub fn scope() -> actix_web::Scope {
    web::scope("/_kairos")
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/upstreams", web::get().to(upstreams))
        .route("/config/reload", web::post().to(config_reload))
        .route("/config/validate", web::post().to(config_validate))
        .route("/config/schema", web::get().to(config_schema))
        .route("/config/history", web::get().to(config_history))
        .route("/config", web::get().to(config_get))
        .route("/config", web::put().to(config_put))
        .route("/routes", web::get().to(routes))
        .route("/status", web::get().to(status))
        .route("/openapi.json", web::get().to(openapi))
        .route("/cache", web::get().to(cache::inspect))
        .route("/cache", web::delete().to(cache::purge))
        .route("/tenants", web::get().to(tenants::list))
        .route("/tenants/{id}", web::get().to(tenants::get))
        .route("/tenants/{id}", web::put().to(tenants::put))
        .route("/tenants/{id}", web::delete().to(tenants::delete))
        .route("/tenants/{id}/usage", web::get().to(tenants::usage))
        .route("/logs", web::get().to(logs::logs))
        .route("/events", web::get().to(events::events))
        .route("/stats/history", web::get().to(stats::history))
        .route("/keys", web::get().to(keys::list))
        .route("/keys", web::post().to(keys::create))
        .route("/keys/{name}", web::delete().to(keys::delete))
        .route("/admin", web::get().to(ui::redirect))
        .route("/admin", web::head().to(ui::redirect))
        .route("/admin/{file:.*}", web::get().to(ui::file))
        .route("/admin/{file:.*}", web::head().to(ui::file))
        .default_service(web::to(guarded_fallback))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /_kairos/ready`: 200 when the gateway can serve, 503 with the reasons when it cannot:
/// still starting or shutting down, a discovered upstream with no servers whose source has
/// not answered (nor failed) its first time, a JWKS never fetched (its tokens cannot be verified),
/// the rate-limit backend down while `on_backend_error` is deny (limited routes answer 503),
/// or no server of any upstream available. Both answers carry `redis`: each Redis user's
/// connection (`{"rate_limit": {"target": "sentinel", "status": "ok"}}`, `unreachable`);
/// only the rate limiter's, with deny, makes the gateway not ready (the cache and quotas go on
/// without Redis).
async fn ready(state: web::Data<SharedState>) -> HttpResponse {
    if !state.is_ready() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "starting",
            "reasons": [{"check": "listener", "message": "not accepting traffic (starting or shutting down)"}],
        }));
    }
    let reasons = not_ready(&state).await;
    let mut body = if reasons.is_empty() {
        serde_json::json!({ "status": "ready" })
    } else {
        serde_json::json!({ "status": "not_ready", "reasons": reasons })
    };
    let redis = redis_health(&state).await;
    if !redis.is_empty() {
        body["redis"] = serde_json::Value::Object(redis);
    }
    match reasons.is_empty() {
        true => HttpResponse::Ok().json(body),
        false => HttpResponse::ServiceUnavailable().json(body),
    }
}

/// Each Redis user's connection, checked now (a PING within its timeout, in parallel): role
/// -> `{"target", "status"}`. No address: the URL may carry a password.
async fn redis_health(state: &SharedState) -> serde_json::Map<String, serde_json::Value> {
    let rt = state.load();
    let clients = [
        (
            "rate_limit",
            rt.edge.ratelimit.as_ref().and_then(|r| r.redis_client()),
        ),
        (
            "cache",
            rt.cache
                .as_ref()
                .and_then(|c| c.redis.as_ref())
                .map(|r| r.client()),
        ),
        (
            "quota",
            rt.edge
                .tenancy
                .as_ref()
                .and_then(|t| t.quotas.redis_client()),
        ),
    ];
    let checks = clients
        .iter()
        .filter_map(|(role, c)| c.map(|c| (*role, c)))
        .map(|(role, c)| async move {
            let status = match c.ping().await {
                true => "ok",
                false => "unreachable",
            };
            (
                role,
                serde_json::json!({"target": c.target(), "status": status}),
            )
        });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .map(|(role, v)| (role.to_string(), v))
        .collect()
}

/// What keeps a started gateway from serving, as `{"check", "message"}` (nothing that could
/// hold a value from the environment: no URL, no address).
async fn not_ready(state: &SharedState) -> Vec<serde_json::Value> {
    let rt = state.load();
    let mut reasons = Vec::new();
    let reason =
        |check: &str, message: String| serde_json::json!({"check": check, "message": message});
    if let Some(store) = state.store() {
        // Once a document runs, an unreachable store does not stop serving it.
        if store.status().config_revision.is_none() {
            reasons.push(reason(
                "config_store",
                "no shared config from the config store applied yet (see /_kairos/status)".into(),
            ));
        }
    }
    if let Some(jwt) = &rt.edge.auth.jwt {
        let n = jwt.jwks_without_keys();
        if n > 0 {
            reasons.push(reason(
                "jwks",
                format!("{n} JWT provider(s) have no key from their JWKS yet (never fetched)"),
            ));
        }
    }
    if let Some(rl) = &rt.edge.ratelimit {
        if !rl.can_decide().await {
            reasons.push(reason(
                "rate_limit_backend",
                "Redis does not answer and on_backend_error is deny: limited routes answer 503"
                    .into(),
            ));
        }
    }
    let waiting = rt.upstreams.iter().filter(|u| u.awaits_discovery()).count();
    if waiting > 0 {
        reasons.push(reason(
            "discovery",
            format!(
                "{waiting} discovered upstream(s) have no servers and no first answer from their source yet"
            ),
        ));
    }
    use crate::upstream::balancer::ServerLoad;
    let now = crate::base::clock::now_ms();
    let sets: Vec<_> = rt.upstreams.iter().map(|u| u.set()).collect();
    let servers = sets.iter().flat_map(|s| &s.states);
    if servers.clone().next().is_some() && servers.clone().all(|s| !s.available(now)) {
        reasons.push(reason(
            "upstreams",
            "no server of any upstream is available (unhealthy, circuit open or ejected)".into(),
        ));
    }
    reasons
}

/// Prometheus text exposition of every metric.
async fn metrics(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if !state.load().config.admin.public_metrics {
        if let Some(res) = refuse(&req, &state) {
            return res;
        }
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
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let rt = state.load();
    use crate::upstream::balancer::ServerLoad;
    let now = crate::base::clock::now_ms();
    let list: Vec<serde_json::Value> = rt
        .upstreams
        .iter()
        .map(|u| {
            let set = u.set();
            let source = u.source();
            let servers: Vec<serde_json::Value> = set
                .entries
                .iter()
                .zip(&set.states)
                .zip(set.priorities.iter())
                .map(|((entry, s), priority)| {
                    let check = s.last_check();
                    let ejected_for = s.ejected_until().saturating_sub(now);
                    serde_json::json!({
                        "url": entry.url,
                        "source": source,
                        "weight": entry.weight,
                        "priority": priority,
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
                "source": source,
                "discovery": discovery_status(u),
                "servers": servers,
            })
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "upstreams": list }))
}

/// A discovered upstream's state: "ok", "pending" before the source's first answer, or the
/// last error while the last known servers are kept; `null` for listed servers.
fn discovery_status(u: &crate::upstream::Upstream) -> serde_json::Value {
    let Some(d) = u.discovery() else {
        return serde_json::Value::Null;
    };
    let snap = d.watcher().map(|w| w.snapshot()).unwrap_or_default();
    let status = match (&snap.error, &snap.endpoints) {
        (Some(e), _) => e.to_string(),
        (None, Some(_)) => "ok".to_string(),
        (None, None) => "pending".to_string(),
    };
    serde_json::Value::String(status)
}

/// The 401 for a request without the admin token, or the 429 for a client whose wrong
/// tokens used up its failure budget (`rate_limiting.auth_failures`, shared with the routes:
/// checked before the token is); `None` when it carries the token.
pub(crate) fn refuse(req: &HttpRequest, state: &SharedState) -> Option<HttpResponse> {
    let rt = state.load();
    let ip = req.peer_addr().map(|peer| {
        crate::base::net::client_ip(peer.ip(), req.headers(), |ip| {
            rt.config.server.is_trusted(ip)
        })
    });
    let failures = &rt.edge.auth_failures;
    let rid = || request_id::for_request(req.headers());
    if let Some(retry_after) = ip.and_then(|ip| failures.blocked(ip)) {
        return Some(GatewayError::RateLimited { retry_after }.to_response(&rid()));
    }
    match authorized(req, rt.config.admin.token.as_deref()) {
        true => None,
        false => {
            if let Some(ip) = ip {
                failures.record(ip);
            }
            Some(GatewayError::Unauthorized.to_response(&rid()))
        }
    }
}

/// An admin API error in the gateway's JSON format, with config errors listed when there are.
pub(crate) fn api_error(
    req: &HttpRequest,
    status: actix_web::http::StatusCode,
    code: &str,
    message: &str,
    errors: Option<&crate::config::ConfigErrors>,
) -> HttpResponse {
    let rid = request_id::for_request(req.headers());
    let mut body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": rid.to_str().unwrap_or_default() }
    });
    if let Some(e) = errors {
        body["errors"] = serde_json::to_value(&e.errors).unwrap_or_default();
        body["source"] = e.source_name.clone().into();
    }
    HttpResponse::build(status)
        .insert_header((header::HeaderName::from_static(request_id::HEADER), rid))
        .json(body)
}

/// 409: the gateway was started without a config file (demo mode).
fn no_config_file(req: &HttpRequest, consequence: &str) -> HttpResponse {
    api_error(
        req,
        actix_web::http::StatusCode::CONFLICT,
        "no_config_file",
        &format!("the gateway runs without a config file (no --config): {consequence}"),
        None,
    )
}

fn invalid_config(req: &HttpRequest, e: &crate::config::ConfigErrors) -> HttpResponse {
    let n = e.errors.len();
    let message = format!(
        "{n} error{} in config; nothing was changed",
        if n == 1 { "" } else { "s" }
    );
    api_error(
        req,
        actix_web::http::StatusCode::BAD_REQUEST,
        "config_invalid",
        &message,
        Some(e),
    )
}

/// `POST /_kairos/config/reload`: reread the config file.
async fn config_reload(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    if state.config_path().is_none() {
        return no_config_file(&req, "nothing to reload");
    }
    let st = state.clone();
    match crate::runtime::on_reload_thread(move || reload::from_file(&st, "api")).await {
        Ok(Ok(applied)) => {
            HttpResponse::Ok().json(serde_json::json!({ "result": "success", "applied": applied }))
        }
        Ok(Err(e)) => invalid_config(&req, &e),
        Err(_) => reload_crashed(&req),
    }
}

/// Largest config an admin request may send (a 10,000-route config is about 1 MB).
const MAX_CONFIG_BYTES: usize = 16 << 20;

/// The config text of an admin request, or the response refusing it. The token is checked
/// before a byte of the body is read: an unauthenticated client cannot make the gateway buffer
/// anything.
async fn config_body(
    req: &HttpRequest,
    state: &SharedState,
    mut payload: web::Payload,
) -> Result<String, HttpResponse> {
    use futures_util::StreamExt;
    if let Some(res) = refuse(req, state) {
        return Err(res);
    }
    let bad = |status, code, message| api_error(req, status, code, message, None);
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return Err(bad(
                actix_web::http::StatusCode::BAD_REQUEST,
                "bad_request",
                "could not read the request body",
            ));
        };
        if body.len() + chunk.len() > MAX_CONFIG_BYTES {
            return Err(bad(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "a config of more than 16 MB",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body.to_vec()).map_err(|_| {
        bad(
            actix_web::http::StatusCode::BAD_REQUEST,
            "bad_request",
            "the config is not UTF-8",
        )
    })
}

/// A config the admin API edited (a tenant or key written into it), as the text it writes.
pub(crate) fn config_text(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// A whole config sent to the admin API: [`config_body`], with the secrets that still read
/// `<redacted>` (as `GET /_kairos/config` gave them) put back from the config in effect
/// ([`unredact`]); 400 `config_invalid` for one with nothing to put back.
async fn full_config_body(
    req: &HttpRequest,
    state: &SharedState,
    payload: web::Payload,
) -> Result<String, HttpResponse> {
    let text = config_body(req, state, payload).await?;
    if !text.contains("<redacted>") {
        return Ok(text);
    }
    let (running, _) = cluster::config_view(req, state).await?;
    unredact::unredact(&text, &running).map_err(|message| {
        api_error(
            req,
            actix_web::http::StatusCode::BAD_REQUEST,
            "config_invalid",
            &message,
            None,
        )
    })
}

/// `POST /_kairos/config/validate`: a dry run of the config in the body: its errors, or
/// what applying it would change.
async fn config_validate(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<SharedState>,
) -> HttpResponse {
    let text = match full_config_body(&req, &state, body).await {
        Ok(text) => text,
        Err(res) => return res,
    };
    if let Some(res) = env_not_allowed(&req, &state, &text) {
        return res;
    }
    let path = state
        .config_path()
        .unwrap_or_else(|| "request-body.json".into());
    // With a config store, the body is the shared document.
    let text = match state.store() {
        Some(store) => match store.merge(&text, "request body") {
            Ok(merged) => merged,
            Err(e) => return invalid_config(&req, &e),
        },
        None => text,
    };
    let st = state.clone();
    match crate::runtime::on_reload_thread(move || reload::dry_run(&st, &text, &path)).await {
        Ok(Ok(diff)) => HttpResponse::Ok().json(serde_json::json!({ "valid": true, "diff": diff })),
        Ok(Err(e)) => invalid_config(&req, &e),
        Err(_) => reload_crashed(&req),
    }
}

/// `PUT /_kairos/config`: validate, persist (atomically, the old file kept as `.bak`), apply.
async fn config_put(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<SharedState>,
) -> HttpResponse {
    let text = match full_config_body(&req, &state, body).await {
        Ok(text) => text,
        Err(res) => return res,
    };
    // With a config store the admin token is in each instance's file: a PUT cannot remove it.
    if state.store().is_none() && would_lock_out(&text) {
        return api_error(
            &req,
            actix_web::http::StatusCode::CONFLICT,
            "admin_lockout",
            "this config has no admin.token: it would leave the admin API without a token; nothing was changed",
            None,
        );
    }
    apply_put(&req, &state, text, None).await
}

/// Validates, applies and persists `text` as the new config (a PUT of the config or of a
/// part of it), honouring `If-Match`; without one, `implicit` (the hash of the config the
/// edit started from) is required instead, so that two edits of parts never lose one.
async fn apply_put(
    req: &HttpRequest,
    state: &web::Data<SharedState>,
    text: String,
    implicit: Option<String>,
) -> HttpResponse {
    let req = req.clone();
    let Some(path) = state.config_path() else {
        return no_config_file(&req, "there is nowhere to persist");
    };
    if let Some(res) = env_not_allowed(&req, state, &text) {
        return res;
    }
    let Ok(if_match) = if_match(&req).map(|m| m.or(implicit.map(|h| vec![h]))) else {
        return api_error(
            &req,
            actix_web::http::StatusCode::BAD_REQUEST,
            "bad_request",
            "If-Match must be \"*\" or a list of quoted ETags",
            None,
        );
    };
    if let Some(store) = state.store() {
        return cluster::put(&req, state, store.clone(), text, if_match).await;
    }
    let st = state.clone();
    let result = crate::runtime::on_reload_thread(move || {
        let write = || crate::runtime::persist(&path, &text).map_err(reload::ReloadError::Persist);
        reload::apply(&st, &text, &path, "api", Some(&write), if_match.as_deref())
    })
    .await;
    match result {
        Ok(Ok(applied)) => {
            HttpResponse::Ok().json(serde_json::json!({ "result": "success", "applied": applied }))
        }
        Ok(Err(e)) => write_refused(&req, e),
        Err(_) => reload_crashed(&req),
    }
}

/// The answer to a config write that did not take effect (nothing changed either way): 400
/// with the errors, 412 with the current ETag when the config (or the store's key) changed
/// since the caller read it, 500 when the file could not be written, 503 when the config
/// store could not be.
fn write_refused(req: &HttpRequest, e: reload::ReloadError) -> HttpResponse {
    let changed = |tag: String, message: &str| {
        let mut res = api_error(
            req,
            actix_web::http::StatusCode::PRECONDITION_FAILED,
            "config_changed",
            message,
            None,
        );
        if let Ok(v) = header::HeaderValue::from_str(&etag(&tag)) {
            res.headers_mut().insert(header::ETAG, v);
        }
        res
    };
    match e {
        reload::ReloadError::Invalid(e) => invalid_config(req, &e),
        reload::ReloadError::Stale(current) => changed(
            current,
            "the config changed since it was read (If-Match does not match its ETag); nothing was changed: read it again",
        ),
        reload::ReloadError::Conflict(revision) => changed(
            revision.to_string(),
            "the shared config changed since it was read (If-Match does not match the store's revision); nothing was changed: read it again",
        ),
        reload::ReloadError::Persist(message) => api_error(
            req,
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "config_persist_failed",
            &message.to_string(),
            None,
        ),
        reload::ReloadError::StoreUnknown(message) => {
            tracing::warn!(
                error = message.as_str(),
                "config sent to the config store, outcome unknown"
            );
            api_error(
                req,
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "config_store_outcome_unknown",
                "the config store did not answer the write and does not hold the config since: it may or may not have been applied (read the config again to see; see the log)",
                None,
            )
        }
        reload::ReloadError::Store(message) => {
            tracing::warn!(
                error = message.as_str(),
                "config not written to the config store"
            );
            api_error(
                req,
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "config_store_unreachable",
                "the config store could not be written; nothing was changed (see the log)",
                None,
            )
        }
    }
}

/// The ETag of the config whose hash is `hash`.
fn etag(hash: &str) -> String {
    format!("\"{hash}\"")
}

/// The config hashes an `If-Match` accepts: `None` when absent or `*` (any); `Err` for a
/// header that is not a list of entity tags.
fn if_match(req: &HttpRequest) -> Result<Option<Vec<String>>, ()> {
    let mut tags = Vec::new();
    for value in req.headers().get_all(header::IF_MATCH) {
        let value = value.to_str().map_err(|_| ())?;
        for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                return Ok(None);
            }
            // If-Match compares strongly: a weak tag matches nothing.
            let inner = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .ok_or(())?;
            tags.push(inner.to_string());
        }
    }
    let present = req.headers().contains_key(header::IF_MATCH);
    Ok(present.then_some(tags))
}

/// Whether a config would leave the admin API without a token (no `admin.token`, or an empty
/// one). Text that is not a JSON object is left to validation.
fn would_lock_out(text: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(root)) => root
            .get("admin")
            .and_then(|a| a.get("token"))
            .and_then(serde_json::Value::as_str)
            .is_none_or(|t| t.trim().is_empty()),
        _ => false,
    }
}

/// The 400 for a config sent to the admin API that references a `${NAME}` it may not: only the
/// variables the file the gateway started from references, and `admin.allowed_env`. The
/// answer names the variable, never its value.
fn env_not_allowed(req: &HttpRequest, state: &SharedState, text: &str) -> Option<HttpResponse> {
    let errors: Vec<crate::config::ConfigError> = crate::config::env_references(text)
        .into_iter()
        .filter(|(_, name)| !state.admin_may_reference(name))
        .map(|(path, name)| {
            crate::config::ConfigError::new(
                path,
                format!("environment variable `{name}` may not be referenced by a config sent to the admin API"),
            )
            .with_hint(match state.store() {
                Some(_) => "with a config store, list it in admin.allowed_env in each instance's file",
                None => "use only the variables the gateway's config file references, or list it in admin.allowed_env there",
            })
        })
        .collect();
    if errors.is_empty() {
        return None;
    }
    Some(invalid_config(
        req,
        &crate::config::ConfigErrors {
            source_name: "request body".into(),
            errors,
        },
    ))
}

/// The reload job died (a bug): 500, and the running config is unchanged.
fn reload_crashed(req: &HttpRequest) -> HttpResponse {
    api_error(
        req,
        actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
        "reload_failed",
        "the reload failed unexpectedly; the running config is unchanged (see the log)",
        None,
    )
}

/// `GET /_kairos/config`: the config in effect as written, secrets redacted.
async fn config_get(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let (text, hash) = match cluster::config_view(&req, &state).await {
        Ok(view) => view,
        Err(res) => return res,
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(mut v) => {
            redact(&mut v);
            HttpResponse::Ok()
                .insert_header((header::ETAG, etag(&hash)))
                .json(v)
        }
        Err(_) => api_error(
            &req,
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the config in effect is not JSON",
            None,
        ),
    }
}

/// Replaces secrets with `<redacted>`: JWT secrets, the admin token, API keys and their
/// hashes, passwords (and the userinfo of `redis_url`). `${ENV}` references are kept: they
/// name where a secret comes from, not the secret.
pub fn redact(v: &mut serde_json::Value) {
    // OTLP export headers are typically a hosted backend's API key: every value goes.
    if let Some(serde_json::Value::Object(headers)) = v.pointer_mut("/tracing/headers") {
        for value in headers.values_mut() {
            if let serde_json::Value::String(s) = value {
                if !crate::config::is_env_reference(s) {
                    *s = "<redacted>".into();
                }
            }
        }
    }
    redact_keys(v);
}

/// The part of [`redact`] that goes by key name, at any depth.
fn redact_keys(v: &mut serde_json::Value) {
    const SECRET_KEYS: [&str; 5] = ["secret", "token", "key_hash", "key", "password"];
    match v {
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                match item {
                    serde_json::Value::String(s) if SECRET_KEYS.contains(&k.as_str()) => {
                        if !crate::config::is_env_reference(s) {
                            *s = "<redacted>".into();
                        }
                    }
                    serde_json::Value::String(s) if s.contains("://") => {
                        // Any URL (redis_url, a JWKS or OTLP endpoint) may carry credentials
                        // in its userinfo.
                        if let Some((scheme, rest)) = s.split_once("://") {
                            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                            if let Some(at) = rest[..authority_end].rfind('@') {
                                *s = format!("{scheme}://<redacted>@{}", &rest[at + 1..]);
                            }
                        }
                    }
                    _ => redact_keys(item),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_keys),
        _ => {}
    }
}

/// `GET /_kairos/config/schema`: the JSON Schema of the config file (what
/// `kairos-rs config schema` prints), for editors that validate as one types.
async fn config_schema(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    static SCHEMA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HttpResponse::Ok()
        .content_type("application/schema+json")
        .body(SCHEMA.get_or_init(crate::config::json_schema).clone())
}

/// `GET /_kairos/config/history`: the last reload attempts, newest first: what started them,
/// whether they were applied, the config hash, and the errors of a refused one.
async fn config_history(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    HttpResponse::Ok().json(serde_json::json!({ "reloads": state.reload_history() }))
}

/// `GET /_kairos/routes`: the routes in effect.
async fn routes(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let rt = state.load();
    let text = render::render_routes(&rt.config, render::Format::Json);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(text)
}

/// `GET /_kairos/status`: version, uptime, the config in effect and the last reload.
async fn status(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let rt = state.load();
    let uptime = std::time::SystemTime::now()
        .duration_since(state.started)
        .unwrap_or_default();
    let store = state.store().map(|s| s.status());
    HttpResponse::Ok().json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(state.started),
        "uptime_seconds": uptime.as_secs(),
        "ready": state.is_ready(),
        "config": {
            "path": state.config_path().map(|p| p.display().to_string()),
            "sha256": state.config_hash(),
            "routes": rt.config.routes.len(),
            "upstreams": rt.config.upstreams.len(),
        },
        "last_reload": state.last_reload(),
        // Several instances as one (cluster.config_store); null without a store.
        "config_revision": store.as_ref().and_then(|s| s.config_revision),
        "store_revision": store.as_ref().and_then(|s| s.store_revision),
        "config_store": store.as_ref().map(|s| s.config_store),
        "config_store_error": store.as_ref().and_then(|s| s.last_error.clone()),
    }))
}

/// The OpenAPI 3.1 document of the admin API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// The methods each `/_kairos` path serves (as [`scope`] routes them), for the `Allow` of a
/// 405.
const ALLOWED_METHODS: [(&str, &str); 17] = [
    ("/_kairos/config/history", "GET"),
    ("/_kairos/keys", "GET, POST"),
    ("/_kairos/events", "GET"),
    ("/_kairos/stats/history", "GET"),
    ("/_kairos/logs", "GET"),
    ("/_kairos/config/schema", "GET"),
    ("/_kairos/tenants", "GET"),
    ("/_kairos/health", "GET"),
    ("/_kairos/ready", "GET"),
    ("/_kairos/metrics", "GET"),
    ("/_kairos/upstreams", "GET"),
    ("/_kairos/config/reload", "POST"),
    ("/_kairos/config/validate", "POST"),
    ("/_kairos/config", "GET, PUT"),
    ("/_kairos/routes", "GET"),
    ("/_kairos/status", "GET"),
    ("/_kairos/openapi.json", "GET"),
];

/// Any other `/_kairos` request. A path served with other methods: 405 with `Allow` (the open
/// paths, and metrics when public, answer it to anyone; the others only with the token).
/// Any other path: 401 without a valid token, 404 with one.
async fn guarded_fallback(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    let rid = request_id::for_request(req.headers());
    let rt = state.load();
    let path = req.path();
    let allow = ALLOWED_METHODS.iter().find(|(p, _)| *p == path);
    let open = matches!(path, "/_kairos/health" | "/_kairos/ready")
        || (path == "/_kairos/metrics" && rt.config.admin.public_metrics);
    if !open {
        // The token check, throttled per client like every admin token check.
        if let Some(res) = refuse(&req, &state) {
            return res;
        }
    }
    match allow {
        Some((_, methods)) => GatewayError::MethodNotAllowed {
            allow: methods.to_string(),
        }
        .to_response(&rid),
        None => GatewayError::NotFound.to_response(&rid),
    }
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
    // Digests of equal length: the comparison says nothing about the token's length either.
    let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
    crate::base::hash::constant_time_eq(digest(given.trim()).as_ref(), digest(token).as_ref())
}
