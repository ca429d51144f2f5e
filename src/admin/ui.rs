//! The web UI at `/_kairos/admin/`: the files the UI build wrote to `ui/dist/`, embedded in the
//! binary at compile time (debug builds too; `cargo build` never runs npm). `index.html` is
//! revalidated on every load (`no-cache`, with an `ETag`), the hashed files under `assets/` are
//! cached for a year as immutable, and a `.br` / `.gz` sibling written by the build is sent
//! when the client accepts it. Every answer carries a strict Content-Security-Policy. The files
//! hold no data, so they load without the admin token; every API call the UI makes needs it.
//! `admin.ui: false` answers 404 to all of it.

use crate::base::error::GatewayError;
use crate::observability::request_id;
use crate::runtime::SharedState;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "ui/dist/"]
#[allow_missing = true]
struct Dist;

/// No inline script or style, nothing from another origin, no framing, no plugin, no form.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Hashed build outputs: their name changes with their content.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /_kairos/admin`: the UI lives under the trailing slash (its relative asset URLs).
pub async fn redirect(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if !state.load().config.admin.ui {
        return not_found(&req);
    }
    secured(HttpResponse::PermanentRedirect())
        .insert_header((header::LOCATION, "/_kairos/admin/"))
        .finish()
}

/// `GET /_kairos/admin/{file}` (and HEAD: the same head, no body): an embedded file,
/// `index.html` for the folder itself.
pub async fn file(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<SharedState>,
) -> HttpResponse {
    if !state.load().config.admin.ui {
        return not_found(&req);
    }
    let name = match path.as_str() {
        "" => "index.html",
        other => other,
    };
    let Some(plain) = Dist::get(name) else {
        return not_found(&req);
    };
    // A precompressed sibling, best first, when the client takes it.
    let accepted = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let siblings = [("br", ".br"), ("gzip", ".gz")];
    let has_sibling = siblings
        .iter()
        .any(|(_, ext)| Dist::get(&format!("{name}{ext}")).is_some());
    let (file, coding) = siblings
        .iter()
        .filter(|(coding, _)| accepts(accepted, coding))
        .find_map(|(coding, ext)| Dist::get(&format!("{name}{ext}")).map(|f| (f, Some(*coding))))
        .unwrap_or((plain, None));
    let etag = format!(
        "\"{}{}\"",
        hex(&file.metadata.sha256_hash()[..16]),
        coding.map_or(String::new(), |c| format!("-{c}"))
    );
    let cache = match name.starts_with("assets/") {
        true => IMMUTABLE,
        false => "no-cache",
    };
    let mut res = if if_none_match(&req, &etag) {
        secured(HttpResponse::NotModified())
    } else {
        secured(HttpResponse::Ok())
    };
    res.insert_header((header::CONTENT_TYPE, content_type(name)))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, etag.clone()));
    if has_sibling {
        res.insert_header((header::VARY, "Accept-Encoding"));
    }
    if let Some(c) = coding {
        res.insert_header((header::CONTENT_ENCODING, c));
    }
    if if_none_match(&req, &etag) {
        return res.finish();
    }
    res.body(file.data.into_owned())
}

/// The security headers every UI answer carries.
fn secured(mut res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    res.insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    res
}

fn not_found(req: &HttpRequest) -> HttpResponse {
    GatewayError::NotFound.to_response(&request_id::for_request(req.headers()))
}

/// Whether `Accept-Encoding` takes `coding` (listed, or `*`, with a q-value above 0).
fn accepts(header: &str, coding: &str) -> bool {
    let mut star = false;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q > 0.0;
        }
        if name == "*" {
            star = q > 0.0;
        }
    }
    star
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn if_none_match(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The media type of a build output, by extension (of the file before its `.br` / `.gz`).
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("");
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_honours_q_values_and_star() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip;q=0.5, br;q=1.0", "gzip"));
        assert!(!accepts("gzip;q=0, br", "gzip"));
        assert!(!accepts("identity", "br"));
        assert!(accepts("*", "gzip"));
        assert!(!accepts("*, br;q=0", "br"));
        assert!(!accepts("", "gzip"));
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-abc123.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/x-1.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
    }
}
