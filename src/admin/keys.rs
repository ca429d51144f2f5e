//! The API key management of the admin UI: `GET /_kairos/keys` (names, permissions, rate
//! limits, tenant, where the key comes from; never a key or a hash), `POST /_kairos/keys`
//! (a new random key, answered once; only its `sha256:` hash is stored) and
//! `DELETE /_kairos/keys/{name}`. A write edits `api_keys.keys` of the config in effect and goes
//! through the same path as `PUT /_kairos/config` (validation, reload, atomic file write or the
//! config store), and needs `If-Match` with the config's ETag: 428 without it, 412 when stale.

use super::{api_error, apply_put, etag, refuse};
use crate::runtime::SharedState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// The longest key name the API takes.
const MAX_NAME: usize = 64;

/// `GET /_kairos/keys`.
pub async fn list(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let (config, tag) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    let rt = state.load();
    let tenant_of = |name: &str| {
        rt.config
            .tenancy
            .iter()
            .flat_map(|t| &t.tenants)
            .find(|t| t.api_keys.iter().any(|k| k == name))
            .map(|t| t.id.clone())
    };
    let written = config.pointer("/api_keys/keys").and_then(Value::as_object);
    let keys: Vec<Value> = rt
        .config
        .api_keys
        .iter()
        .flat_map(|k| &k.keys)
        .map(|k| {
            let source = match written
                .and_then(|w| w.get(&k.name))
                .and_then(|e| e.get("key_hash"))
            {
                Some(_) => "hash",
                None => "env",
            };
            json!({
                "name": k.name,
                "permissions": k.permissions,
                "rate_limit": k.rate_limit.map(|r| json!({"rps": r.rps, "burst": r.burst})),
                "tenant": tenant_of(&k.name),
                "source": source,
            })
        })
        .collect();
    HttpResponse::Ok()
        .insert_header((header::ETAG, etag(&tag)))
        .json(json!({ "keys": keys }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
    rate_limit: Option<NewRate>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRate {
    rps: f64,
    burst: Option<u32>,
}

/// 428 for a write without `If-Match`: a key edit always names the config it started from.
fn needs_if_match(req: &HttpRequest) -> Option<HttpResponse> {
    match req.headers().contains_key(header::IF_MATCH) {
        true => None,
        false => Some(api_error(
            req,
            StatusCode::PRECONDITION_REQUIRED,
            "if_match_required",
            "send If-Match with the config's ETag (GET /_kairos/config or /_kairos/keys)",
            None,
        )),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The answer to a write that `apply_put` applied: `status` with `body` plus the new ETag
/// and config hash; any other answer of `apply_put` as it is.
async fn applied(
    req: &HttpRequest,
    state: &SharedState,
    res: HttpResponse,
    status: StatusCode,
    mut body: Value,
) -> HttpResponse {
    if res.status() != StatusCode::OK {
        return res;
    }
    let hash = match super::cluster::config_view(req, state).await {
        Ok((_, hash)) => hash,
        Err(res) => return res,
    };
    body["config_hash"] = hash.clone().into();
    HttpResponse::build(status)
        .insert_header((header::ETAG, etag(&hash)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// `POST /_kairos/keys`: `{"name", "permissions", "rate_limit"?}` -> 201 `{"name", "key",
/// "config_hash"}`; the key is in this answer only.
pub async fn create(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<SharedState>,
) -> HttpResponse {
    let text = match super::config_body(&req, &state, body).await {
        Ok(text) => text,
        Err(res) => return res,
    };
    if let Some(res) = needs_if_match(&req) {
        return res;
    }
    let bad =
        |message: &str| api_error(&req, StatusCode::BAD_REQUEST, "bad_request", message, None);
    let new: NewKey = match serde_json::from_str(&text) {
        Ok(k) => k,
        Err(e) => {
            return bad(&format!(
                "the body must be {{\"name\", \"permissions\", \"rate_limit\"?}}: {e}"
            ))
        }
    };
    if !valid_name(&new.name) {
        return bad("name: 1 to 64 letters, digits, '-', '_' or '.'");
    }
    let (mut config, hash) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    if config
        .pointer(&format!("/api_keys/keys/{}", new.name))
        .is_some()
    {
        return api_error(
            &req,
            StatusCode::CONFLICT,
            "key_exists",
            &format!(
                "a key named `{}` exists; delete it first or pick another name",
                new.name
            ),
            None,
        );
    }
    let key = match crate::edge::auth::api_key::generate() {
        Ok(k) => k,
        Err(_) => {
            return api_error(
                &req,
                StatusCode::INTERNAL_SERVER_ERROR,
                "random_failed",
                "the system random generator failed; no key was made",
                None,
            )
        }
    };
    let mut entry = json!({
        "key_hash": crate::base::hash::format_hash(&crate::base::hash::hash(&key)),
        "permissions": new.permissions,
    });
    if let Some(r) = &new.rate_limit {
        entry["rate_limit"] = json!({ "rps": r.rps });
        if let Some(b) = r.burst {
            entry["rate_limit"]["burst"] = b.into();
        }
    }
    let Some(root) = config.as_object_mut() else {
        return bad("the config in effect is not a JSON object");
    };
    let section = root.entry("api_keys").or_insert_with(|| json!({}));
    if !section.is_object() {
        *section = json!({});
    }
    let keys = &mut section["keys"];
    if !keys.is_object() {
        *keys = json!({});
    }
    keys[new.name.as_str()] = entry;
    let res = apply_put(&req, &state, super::config_text(&config), Some(hash)).await;
    applied(
        &req,
        &state,
        res,
        StatusCode::CREATED,
        json!({ "name": new.name, "key": key }),
    )
    .await
}

/// `DELETE /_kairos/keys/{name}`: removes the key from the config (a tenant that lists it
/// makes the config invalid: 400, nothing changed).
pub async fn delete(
    req: HttpRequest,
    name: web::Path<String>,
    state: web::Data<SharedState>,
) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    if let Some(res) = needs_if_match(&req) {
        return res;
    }
    let (mut config, hash) = match super::cluster::config_json(&req, &state).await {
        Ok(c) => c,
        Err(res) => return *res,
    };
    let removed = config
        .pointer_mut("/api_keys/keys")
        .and_then(Value::as_object_mut)
        .and_then(|keys| keys.remove(name.as_str()));
    if removed.is_none() {
        return api_error(
            &req,
            StatusCode::NOT_FOUND,
            "key_not_found",
            &format!("no key `{name}` in the config in effect"),
            None,
        );
    }
    let res = apply_put(&req, &state, super::config_text(&config), Some(hash)).await;
    applied(
        &req,
        &state,
        res,
        StatusCode::OK,
        json!({ "name": name.as_str() }),
    )
    .await
}
