//! The request filter, the first phase: limits on the request head, and the path normalised
//! as it will be routed and forwarded.

use super::context::Ctx;
use crate::base::error::GatewayError;
use actix_web::http::header as ax;
use actix_web::HttpRequest;

/// The request filter: the URI and header limits, then the path as it is routed and
/// forwarded (`None` when the client's path is already normal, the common case). A path must
/// never match one route and, once an upstream decodes or resolves it, reach another route's
/// resource: encoded slashes and backslashes and dot segments (also encoded ones, decoded by
/// [`normalize_path`]) are refused; escaped unreserved characters are decoded and runs of
/// slashes merged.
#[inline(always)]
pub fn filter(ctx: &Ctx<'_>) -> Result<Option<String>, GatewayError> {
    let req = ctx.req;
    let limits = &ctx.rt.config.server;
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) as u64 > limits.max_uri_length {
        return Err(GatewayError::UriTooLong);
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes as u64 > limits.max_header_size {
        return Err(GatewayError::HeadersTooLarge);
    }
    // A body declared too large is refused before the edge chain: it must use up no rate
    // limit and cost no credential check. The body phase checks the bytes as they arrive.
    if declared_length(req)?.is_some_and(|n| n > limits.max_body_size) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let normalized = normalize_path(req.path()).map_err(GatewayError::BadRequest)?;
    if has_dot_segment(normalized.as_deref().unwrap_or(req.path())) {
        return Err(GatewayError::BadRequest("path contains dot segments"));
    }
    Ok(normalized)
}

/// The request's `Content-Length`, if it has one (400 when it is not a number).
#[inline(always)]
pub fn declared_length(req: &HttpRequest) -> Result<Option<u64>, GatewayError> {
    match req.headers().get(ax::CONTENT_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(GatewayError::BadRequest("invalid Content-Length")),
        None => Ok(None),
    }
}

/// The Host the client asked for: the Host header, or the authority of an HTTP/2 request.
pub fn request_host(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(ax::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Whether a path that [`normalize_path`] accepted has a `.` or `..` segment, also one with
/// `;`-parameters (`..;x`, `.;`, `..%3B`): servlet containers such as Tomcat strip a segment's
/// parameters before resolving dot segments, so `/public/..;/admin` reaches `/admin` there.
/// Encoded dots were decoded by [`normalize_path`] and encoded or back slashes refused, so
/// only literal segments are left to look at (and most paths have no dot at all: one scan, no
/// allocation).
pub fn has_dot_segment(path: &str) -> bool {
    path.contains('.')
        && path.split('/').any(|seg| {
            // The segment up to its parameters: `;`, or `%3B` left encoded by normalize_path.
            let b = seg.as_bytes();
            let end = (0..b.len())
                .find(|&i| {
                    b[i] == b';'
                        || (b[i] == b'%'
                            && b.get(i + 1) == Some(&b'3')
                            && b.get(i + 2).is_some_and(|c| c.eq_ignore_ascii_case(&b'b')))
                })
                .unwrap_or(b.len());
            matches!(&b[..end], b"." | b"..")
        })
}

/// The path as it is routed and forwarded, or `None` when it is already normal (the common
/// case, which allocates nothing); an error message for a path that is refused.
///
/// - `%2F` and `%5C` (an encoded slash or backslash) and a raw `\` are refused: an upstream
///   that decodes them sees other segments than the router did (Envoy's
///   `path_with_escaped_slashes_action: REJECT_REQUEST`).
/// - An escaped unreserved character (`%61` for `a`) is decoded (RFC 3986 6.2.2.2), so
///   `/%61dmin` routes as `/admin`; other escapes are kept, with upper-case hex digits.
/// - A `%` not followed by two hex digits is refused.
/// - Runs of slashes are merged (NGINX's `merge_slashes`): `//admin/x` must not miss an
///   `/admin/` route and land on a catch-all.
pub fn normalize_path(path: &str) -> Result<Option<String>, &'static str> {
    let b = path.as_bytes();
    let mut prev = 0u8;
    if !b.iter().any(|&c| {
        let odd = c == b'%' || c == b'\\' || (c == b'/' && prev == b'/');
        prev = c;
        odd
    }) {
        return Ok(None);
    }
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err("path contains a backslash"),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err("path contains an invalid percent-encoding");
                };
                match (hi << 4) | lo {
                    b'/' | b'\\' => return Err("path contains an encoded slash or backslash"),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c)
                    }
                    c => out.extend_from_slice(&[
                        b'%',
                        HEX[usize::from(c >> 4)],
                        HEX[usize::from(c & 15)],
                    ]),
                }
                i += 3;
                continue;
            }
            b'/' if out.last() == Some(&b'/') => {}
            c => out.push(c),
        }
        i += 1;
    }
    // Only ASCII bytes were replaced or added, so the text stays UTF-8.
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| "path is not UTF-8")
}
