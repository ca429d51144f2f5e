//! The admin API with a config store (`cluster.config_store`): the config an edit starts
//! from is the shared document, its ETag the key's revision, and a write goes to etcd as a
//! compare-and-swap on that revision before it is applied here.

use super::{api_error, etag, reload_crashed, write_refused};
use crate::runtime::store::ConfigStore;
use crate::runtime::SharedState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

/// The config an edit starts from and its ETag: the file's text and hash, or with a config
/// store the key's document and its mod revision, read from etcd now (a linearizable read:
/// the body and the ETag are of one revision, whatever this instance's watch has applied
/// yet). After the key was deleted, the document in effect with the ETag `"0"` (what a
/// create-only write expects). `Err`: the answer to send (no document yet, etcd unreachable).
pub(crate) async fn config_view(
    req: &HttpRequest,
    state: &SharedState,
) -> Result<(Arc<str>, String), HttpResponse> {
    let Some(store) = state.store().cloned() else {
        return Ok(state.config_text_and_hash());
    };
    match web::block(move || store.current_document()).await {
        Ok(Ok(Some((doc, revision)))) => Ok((doc, revision.to_string())),
        Ok(Ok(None)) => Err(pending(req)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "config store not read");
            Err(api_error(
                req,
                StatusCode::SERVICE_UNAVAILABLE,
                "config_store_unreachable",
                "the config store could not be read (see the log)",
                None,
            ))
        }
        Err(_) => Err(reload_crashed(req)),
    }
}

/// [`config_view`] as JSON: the config in effect as written (`${ENV}` references kept, no
/// redaction: for writes that edit it) and its ETag value. `Err`: the answer to send.
pub(crate) async fn config_json(
    req: &HttpRequest,
    state: &SharedState,
) -> Result<(serde_json::Value, String), Box<HttpResponse>> {
    let (text, hash) = config_view(req, state).await.map_err(Box::new)?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok((v, hash)),
        _ => Err(Box::new(api_error(
            req,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the config in effect is not a JSON object",
            None,
        ))),
    }
}

/// 503: no shared config from the store yet.
pub(crate) fn pending(req: &HttpRequest) -> HttpResponse {
    api_error(
        req,
        StatusCode::SERVICE_UNAVAILABLE,
        "config_store_pending",
        "no shared config from the config store yet (see /_kairos/status)",
        None,
    )
}

/// A PUT with a config store: the body is the shared document, validated here with this
/// instance's own members, written to the store as a compare-and-swap on the revision
/// `If-Match` names (412 when the key moved on), then applied here; the other instances
/// apply it from their watch.
pub(crate) async fn put(
    req: &HttpRequest,
    state: &web::Data<SharedState>,
    store: Arc<ConfigStore>,
    text: String,
    if_match: Option<Vec<String>>,
) -> HttpResponse {
    // Without If-Match the write is unconditional, as for a file; a tag that is not a
    // revision of this key can never match.
    let expected = if_match.map(|tags| {
        tags.iter()
            .find_map(|t| t.parse::<i64>().ok())
            .unwrap_or(-1)
    });
    let st = state.clone();
    let result = crate::runtime::on_reload_thread(move || store.write(&st, &text, expected)).await;
    match result {
        Ok(Ok((applied, revision))) => HttpResponse::Ok()
            .insert_header((header::ETAG, etag(&revision.to_string())))
            .json(serde_json::json!({
                "result": "success", "applied": applied, "revision": revision,
            })),
        Ok(Err(e)) => write_refused(req, e),
        Err(_) => reload_crashed(req),
    }
}
