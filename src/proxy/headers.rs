//! Header rewriting between client and upstream: hop-by-hop headers removed in both directions
//! (the fixed list plus every header named in `Connection`, RFC 9110 7.6.1), X-Forwarded-For,
//! -Proto and -Host set according to `server.trusted_proxies`, and the conversion between
//! actix's `http` 0.2 header types and hyper's `http` 1 types.

use actix_web::http::header as ax;
use http::header::{self as hh, HeaderName, HeaderValue};

// Names made at compile time: `from_static` at run time validates the name on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, never the message (RFC 9110 7.6.1, plus the
/// non-standard ones proxies are expected to drop).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Header names listed in the Connection header(s), lower-cased.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        for tok in v.split(|&b| b == b',') {
            let t = String::from_utf8_lossy(tok).trim().to_ascii_lowercase();
            if !t.is_empty() {
                out.push(t);
            }
        }
    }
    out
}

/// What the gateway knows about the client connection, for the X-Forwarded-* headers.
pub struct ClientInfo<'a> {
    pub peer: Option<std::net::IpAddr>,
    pub trusted: bool,
    pub scheme: &'static str,
    pub host: Option<&'a [u8]>,
    /// The caller's `tracestate` and `baggage` stay behind: they belong to a trace context
    /// the gateway did not continue (see [`crate::observability::trace`]). Left out here, in
    /// the copy, instead of removed from the upstream request afterwards (a removal costs a
    /// hash and a probe even when the header is absent).
    pub drop_tracestate: bool,
    pub drop_baggage: bool,
    /// `TE: trailers` is passed on (the client and the upstream speak HTTP/2, and trailers
    /// are relayed between them); every other `TE` is hop-by-hop.
    pub te_trailers: bool,
}

/// Copies the client's request headers into the upstream request, minus hop-by-hop headers
/// and the ones the gateway sets itself; room is made for `more` headers added after it.
pub fn request_headers(
    src: &ax::HeaderMap,
    dst: &mut hh::HeaderMap,
    client: &ClientInfo<'_>,
    host: HeaderValue,
    request_id: &HeaderValue,
    more: usize,
) {
    let nominated = match src.contains_key(ax::CONNECTION) {
        true => connection_tokens(src.get_all(ax::CONNECTION).map(|v| v.as_bytes())),
        false => Vec::new(),
    };
    let mut xff: Option<Vec<u8>> = None;
    let mut xfp: Option<HeaderValue> = None;
    let mut xfh: Option<HeaderValue> = None;
    let mut cookies: Vec<&[u8]> = Vec::new();
    dst.reserve(src.len() + 4 + more);
    for (name, value) in src.iter() {
        let n = name.as_str();
        match n {
            "host" | "content-length" | "expect" | "x-request-id" => continue,
            "tracestate" if client.drop_tracestate => continue,
            "baggage" if client.drop_baggage => continue,
            // Other client-address headers are only believed from a trusted proxy.
            "forwarded" | "x-real-ip" | "x-forwarded-port" | "x-forwarded-prefix"
                if !client.trusted =>
            {
                continue
            }
            // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
            "cookie" => {
                cookies.push(value.as_bytes());
                continue;
            }
            "x-forwarded-for" => {
                if client.trusted {
                    let acc = xff.get_or_insert_with(Vec::new);
                    if !acc.is_empty() {
                        acc.extend_from_slice(b", ");
                    }
                    acc.extend_from_slice(value.as_bytes());
                }
                continue;
            }
            "x-forwarded-proto" => {
                if client.trusted && xfp.is_none() {
                    xfp = HeaderValue::from_bytes(value.as_bytes()).ok();
                }
                continue;
            }
            "x-forwarded-host" => {
                if client.trusted && xfh.is_none() {
                    xfh = HeaderValue::from_bytes(value.as_bytes()).ok();
                }
                continue;
            }
            _ => {}
        }
        if is_hop_by_hop(n) || (!nominated.is_empty() && nominated.iter().any(|t| t == n)) {
            if n == "te" && client.te_trailers && value.as_bytes().eq_ignore_ascii_case(b"trailers")
            {
                dst.append(hh::TE, HeaderValue::from_static("trailers"));
            }
            continue;
        }
        if let (Some(hn), Ok(hv)) = (hyper_name(n), HeaderValue::from_bytes(value.as_bytes())) {
            dst.append(hn, hv);
        }
    }
    // Content-Length is set from the body we actually send (hyper derives it from the body).
    if let Some(len) = src.get(ax::CONTENT_LENGTH) {
        if let Ok(v) = HeaderValue::from_bytes(len.as_bytes()) {
            dst.insert(hh::CONTENT_LENGTH, v);
        }
    }
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
            dst.insert(hh::COOKIE, v);
        }
    }
    dst.insert(hh::HOST, host);
    if let Some(ip) = client.peer {
        let mut acc = xff.unwrap_or_else(|| Vec::with_capacity(16));
        if !acc.is_empty() {
            acc.extend_from_slice(b", ");
        }
        crate::base::net::push_ip(&mut acc, ip);
        if let Ok(v) = HeaderValue::from_bytes(&acc) {
            dst.insert(X_FORWARDED_FOR, v);
        }
    }
    dst.insert(
        X_FORWARDED_PROTO,
        xfp.unwrap_or_else(|| HeaderValue::from_static(client.scheme)),
    );
    if let Some(v) = xfh.or_else(|| client.host.and_then(|h| HeaderValue::from_bytes(h).ok())) {
        dst.insert(X_FORWARDED_HOST, v);
    }
    dst.insert(X_REQUEST_ID, request_id.clone());
}

/// Copies the upstream's response headers to the client, minus hop-by-hop headers and the
/// framing headers actix writes itself from the body's size. Repeated headers stay repeated.
pub fn response_headers(src: &hh::HeaderMap, dst: &mut ax::HeaderMap) {
    let nominated = match src.contains_key(hh::CONNECTION) {
        true => connection_tokens(src.get_all(hh::CONNECTION).iter().map(|v| v.as_bytes())),
        false => Vec::new(),
    };
    for (name, value) in src.iter() {
        let n = name.as_str();
        if n == "content-length"
            || is_hop_by_hop(n)
            || (!nominated.is_empty() && nominated.iter().any(|t| t == n))
        {
            continue;
        }
        if let (Some(an), Ok(av)) = (
            actix_name(name),
            ax::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            dst.append(an, av);
        }
    }
}

/// A response header's name for actix: the common ones by an enum comparison each, the rest
/// parsed (`from_bytes` looks a name up in the standard table first, about 125 instructions).
fn actix_name(n: &HeaderName) -> Option<ax::HeaderName> {
    macro_rules! common {
        ($($c:ident),*) => {
            $(if *n == hh::$c {
                return Some(ax::$c);
            })*
        };
    }
    common!(
        CONTENT_TYPE,
        DATE,
        SERVER,
        CACHE_CONTROL,
        ETAG,
        LAST_MODIFIED,
        VARY,
        EXPIRES,
        SET_COOKIE,
        LOCATION,
        CONTENT_ENCODING,
        ACCEPT_RANGES,
        AGE
    );
    // The cache's own header on every cached answer.
    const X_CACHE: ax::HeaderName = ax::HeaderName::from_static("x-cache");
    match n.as_str() {
        "x-cache" => Some(X_CACHE),
        name => ax::HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}

/// A request header's name for hyper: the common ones by their text, the rest parsed.
fn hyper_name(n: &str) -> Option<HeaderName> {
    Some(match n {
        "user-agent" => hh::USER_AGENT,
        "accept" => hh::ACCEPT,
        "accept-encoding" => hh::ACCEPT_ENCODING,
        "accept-language" => hh::ACCEPT_LANGUAGE,
        "content-type" => hh::CONTENT_TYPE,
        "authorization" => hh::AUTHORIZATION,
        "cache-control" => hh::CACHE_CONTROL,
        "if-none-match" => hh::IF_NONE_MATCH,
        "if-modified-since" => hh::IF_MODIFIED_SINCE,
        "origin" => hh::ORIGIN,
        "referer" => hh::REFERER,
        _ => return HeaderName::from_bytes(n.as_bytes()).ok(),
    })
}

/// A client's trailers as they go upstream.
pub fn trailers_to_upstream(src: &ax::HeaderMap) -> hh::HeaderMap {
    let mut dst = hh::HeaderMap::with_capacity(src.len());
    for (name, value) in src.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            dst.append(n, v);
        }
    }
    dst
}

/// The upstream's trailers as they go to the client.
pub fn trailers_to_client(src: &hh::HeaderMap) -> ax::HeaderMap {
    let mut dst = ax::HeaderMap::with_capacity(src.len());
    for (name, value) in src.iter() {
        if let (Ok(n), Ok(v)) = (
            ax::HeaderName::from_bytes(name.as_str().as_bytes()),
            ax::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            dst.append(n, v);
        }
    }
    dst
}

/// The Content-Length of an upstream response, if present and valid.
pub fn content_length(h: &hh::HeaderMap) -> Option<u64> {
    let mut it = h.get_all(hh::CONTENT_LENGTH).iter();
    let v = it.next()?;
    if it.next().is_some() {
        return None;
    }
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_shortcuts_agree_with_parsing() {
        for n in [
            "content-type",
            "date",
            "server",
            "cache-control",
            "etag",
            "last-modified",
            "vary",
            "expires",
            "set-cookie",
            "location",
            "content-encoding",
            "accept-ranges",
            "age",
            "user-agent",
            "accept",
            "accept-encoding",
            "accept-language",
            "authorization",
            "if-none-match",
            "if-modified-since",
            "origin",
            "referer",
            "x-cache",
            "x-custom-1",
            "content-length",
            "www-authenticate",
        ] {
            let parsed = ax::HeaderName::from_bytes(n.as_bytes()).unwrap();
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert_eq!(actix_name(&name), Some(parsed), "{n}");
            assert_eq!(hyper_name(n), Some(name), "{n}");
        }
    }

    #[test]
    fn ip_formatting_matches_std() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.10.9",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            crate::base::net::push_ip(&mut out, addr);
            let want = ip.trim_start_matches("::ffff:");
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
