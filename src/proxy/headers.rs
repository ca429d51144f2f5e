//! Header rewriting between client and upstream: hop-by-hop headers removed in both directions
//! (the fixed list plus every header named in `Connection`, RFC 9110 7.6.1), X-Forwarded-For,
//! -Proto and -Host set according to `server.trusted_proxies`, and the conversion between
//! actix's `http` 0.2 header types and hyper's `http` 1 types. Nothing here allocates per
//! request: values are shared between the two crates' types, not copied ([`to_hyper`],
//! [`to_actix`]), names outside http's table are converted once per worker ([`NameCache`](crate::base::arena::NameCache)), and
//! the values the gateway makes are written to the worker's arena ([`crate::base::arena`]).

use crate::base::arena::{self, NameCache};
use actix_web::http::header as ax;
use http::header::{self as hh, HeaderName, HeaderValue};
use std::cell::RefCell;

// Names made at compile time: `from_static` at run time validates the name on every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const AX_X_FORWARDED_FOR: ax::HeaderName = ax::HeaderName::from_static("x-forwarded-for");

/// The longest address [`crate::base::net::push_ip`] writes (IPv6: 8 groups of 4 hex digits
/// and 7 colons).
const MAX_IP_TEXT: usize = 39;

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

/// [`is_hop_by_hop`] for a `Connection` token, in any case.
fn is_hop_by_hop_token(t: &[u8]) -> bool {
    let mut lower = [0u8; 24];
    let Some(buf) = lower.get_mut(..t.len()) else {
        return false;
    };
    buf.copy_from_slice(t);
    buf.make_ascii_lowercase();
    std::str::from_utf8(buf).is_ok_and(is_hop_by_hop)
}

/// The header names a message's `Connection` header(s) nominate (RFC 9110 7.6.1), as slices of
/// those values, less the names removed anyway ([`is_hop_by_hop`]): the common
/// `Connection: keep-alive` leaves nothing to compare each header with. Up to
/// [`Nominated::FEW`] names are kept inline, more (no client sends them) in a vector.
#[derive(Default)]
struct Nominated<'a> {
    few: [&'a [u8]; Nominated::FEW],
    len: usize,
    more: Vec<&'a [u8]>,
}

impl<'a> Nominated<'a> {
    const FEW: usize = 4;

    fn new(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut out = Nominated::default();
        for v in values {
            for tok in v.split(|&b| b == b',') {
                let t = tok.trim_ascii();
                if t.is_empty() || is_hop_by_hop_token(t) {
                    continue;
                }
                if out.len < Self::FEW {
                    out.few[out.len] = t;
                    out.len += 1;
                } else {
                    out.more.push(t);
                }
            }
        }
        out
    }

    /// Whether `name` (lower case, as both crates keep names) is nominated.
    fn contains(&self, name: &str) -> bool {
        self.len > 0
            && self.few[..self.len]
                .iter()
                .chain(&self.more)
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The same header value for hyper, sharing its bytes: a value actix parsed is a slice of its
/// read buffer, so no copy and no allocation (`as_shared` is the vendored http's, see
/// vendor/README.md).
pub fn to_hyper(v: &ax::HeaderValue) -> HeaderValue {
    // SAFETY: http 0.2 and http 1 accept the same bytes in a value (visible ASCII, SP, HTAB and
    // obs-text; `value_rules_agree` below checks every byte), so a valid 0.2 value is a valid
    // 1.x value. Validating again cost a loop over every byte of every header.
    let mut out = unsafe { HeaderValue::from_maybe_shared_unchecked(v.as_shared()) };
    out.set_sensitive(v.is_sensitive());
    out
}

/// The same header value for actix, sharing its bytes (hyper's read buffer); see [`to_hyper`].
pub fn to_actix(v: &HeaderValue) -> ax::HeaderValue {
    // SAFETY: as in `to_hyper`, the other way round.
    let mut out = unsafe { ax::HeaderValue::from_maybe_shared_unchecked(v.as_shared()) };
    out.set_sensitive(v.is_sensitive());
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
        true => Nominated::new(src.get_all(ax::CONNECTION).map(|v| v.as_bytes())),
        false => Nominated::default(),
    };
    let mut xff_in = false;
    let mut xfp: Option<HeaderValue> = None;
    let mut xfh: Option<HeaderValue> = None;
    let mut host_in: Option<&ax::HeaderValue> = None;
    let (mut cookie, mut cookies) = (None, 0);
    dst.reserve(src.len() + 4 + more);
    for (name, value) in src.iter() {
        let n = name.as_str();
        match n {
            "host" => {
                host_in = Some(value);
                continue;
            }
            "content-length" | "expect" | "x-request-id" => continue,
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
                cookie = Some(value);
                cookies += 1;
                continue;
            }
            "x-forwarded-for" => {
                xff_in |= client.trusted;
                continue;
            }
            "x-forwarded-proto" => {
                if client.trusted && xfp.is_none() {
                    xfp = Some(to_hyper(value));
                }
                continue;
            }
            "x-forwarded-host" => {
                if client.trusted && xfh.is_none() {
                    xfh = Some(to_hyper(value));
                }
                continue;
            }
            _ => {}
        }
        if is_hop_by_hop(n) || nominated.contains(n) {
            if n == "te" && client.te_trailers && value.as_bytes().eq_ignore_ascii_case(b"trailers")
            {
                dst.append(hh::TE, HeaderValue::from_static("trailers"));
            }
            continue;
        }
        if let Some(hn) = hyper_name(name) {
            dst.append(hn, to_hyper(value));
        }
    }
    // Content-Length is set from the body we actually send (hyper derives it from the body).
    if let Some(len) = src.get(ax::CONTENT_LENGTH) {
        dst.insert(hh::CONTENT_LENGTH, to_hyper(len));
    }
    match (cookie, cookies) {
        (None, _) => {}
        (Some(one), 1) => {
            dst.insert(hh::COOKIE, to_hyper(one));
        }
        (Some(_), _) => {
            let all = || src.get_all(ax::COOKIE).map(|v| v.as_bytes());
            let joined = arena::build(all().map(|v| v.len() + 2).sum(), |buf| {
                for (i, v) in all().enumerate() {
                    if i > 0 {
                        buf.extend_from_slice(b"; ");
                    }
                    buf.extend_from_slice(v);
                }
            });
            if let Ok(v) = HeaderValue::from_maybe_shared(joined) {
                dst.insert(hh::COOKIE, v);
            }
        }
    }
    dst.insert(hh::HOST, host);
    if let Some(ip) = client.peer {
        // The chain a trusted proxy sent, then the peer's address.
        let chain = || src.get_all(AX_X_FORWARDED_FOR).map(|v| v.as_bytes());
        let chain_len: usize = match xff_in {
            true => chain().map(|v| v.len() + 2).sum(),
            false => 0,
        };
        let value = arena::build(chain_len + MAX_IP_TEXT, |buf| {
            // `buf` starts empty: ", " goes between what is there and what follows.
            if xff_in {
                for v in chain() {
                    if !buf.is_empty() {
                        buf.extend_from_slice(b", ");
                    }
                    buf.extend_from_slice(v);
                }
            }
            if !buf.is_empty() {
                buf.extend_from_slice(b", ");
            }
            crate::base::net::push_ip(buf, ip);
        });
        if let Ok(v) = HeaderValue::from_maybe_shared(value) {
            dst.insert(X_FORWARDED_FOR, v);
        }
    }
    dst.insert(
        X_FORWARDED_PROTO,
        xfp.unwrap_or_else(|| HeaderValue::from_static(client.scheme)),
    );
    // The Host the client asked for: its Host header shared, an HTTP/2 authority copied.
    let xfh = xfh.or_else(|| match (host_in, client.host) {
        (Some(h), Some(asked)) if h.as_bytes() == asked => Some(to_hyper(h)),
        (_, Some(asked)) => HeaderValue::from_maybe_shared(arena::copy(asked)).ok(),
        (_, None) => None,
    });
    if let Some(v) = xfh {
        dst.insert(X_FORWARDED_HOST, v);
    }
    dst.insert(X_REQUEST_ID, request_id.clone());
}

/// Copies the upstream's response headers to the client, minus hop-by-hop headers and the
/// framing headers actix writes itself from the body's size. Repeated headers stay repeated.
pub fn response_headers(src: &hh::HeaderMap, dst: &mut ax::HeaderMap) {
    let nominated = match src.contains_key(hh::CONNECTION) {
        true => Nominated::new(src.get_all(hh::CONNECTION).iter().map(|v| v.as_bytes())),
        false => Nominated::default(),
    };
    for (name, value) in src.iter() {
        let n = name.as_str();
        if n == "content-length" || is_hop_by_hop(n) || nominated.contains(n) {
            continue;
        }
        if let Some(an) = actix_name(name) {
            dst.append(an, to_actix(value));
        }
    }
}

thread_local! {
    static HYPER_NAMES: RefCell<NameCache<HeaderName>> = const { RefCell::new(NameCache::new()) };
    static ACTIX_NAMES: RefCell<NameCache<ax::HeaderName>> =
        const { RefCell::new(NameCache::new()) };
}

/// A response header's name for actix: the common ones by an enum comparison each, the rest
/// from the worker's cache of names.
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
    ACTIX_NAMES.with_borrow_mut(|names| {
        names.get(n.as_str().as_bytes(), ax::HeaderName::as_str, |b| {
            ax::HeaderName::from_bytes(b).ok()
        })
    })
}

/// A request header's name for hyper: the common ones by their text, the rest from the
/// worker's cache of names.
fn hyper_name(name: &ax::HeaderName) -> Option<HeaderName> {
    let n = name.as_str();
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
        _ => {
            return HYPER_NAMES.with_borrow_mut(|names| {
                names.get(n.as_bytes(), HeaderName::as_str, |b| {
                    HeaderName::from_bytes(b).ok()
                })
            })
        }
    })
}

/// A client's trailers as they go upstream.
pub fn trailers_to_upstream(src: &ax::HeaderMap) -> hh::HeaderMap {
    let mut dst = hh::HeaderMap::with_capacity(src.len());
    for (name, value) in src.iter() {
        if let Some(n) = hyper_name(name) {
            dst.append(n, to_hyper(value));
        }
    }
    dst
}

/// The upstream's trailers as they go to the client.
pub fn trailers_to_client(src: &hh::HeaderMap) -> ax::HeaderMap {
    let mut dst = ax::HeaderMap::with_capacity(src.len());
    for (name, value) in src.iter() {
        if let Some(n) = actix_name(name) {
            dst.append(n, to_actix(value));
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
            assert_eq!(actix_name(&name), Some(parsed.clone()), "{n}");
            assert_eq!(hyper_name(&parsed), Some(name), "{n}");
        }
    }

    #[test]
    fn cached_names_are_the_names_asked_for() {
        // More names than slots, twice: every slot is taken, replaced and hit.
        for _ in 0..2 {
            for i in 0..3 * arena::NAME_SLOTS {
                let n = format!("x-header-{i}");
                let actix = ax::HeaderName::from_bytes(n.as_bytes()).unwrap();
                let hyper = HeaderName::from_bytes(n.as_bytes()).unwrap();
                assert_eq!(hyper_name(&actix).as_ref(), Some(&hyper));
                assert_eq!(actix_name(&hyper).as_ref(), Some(&actix));
            }
        }
    }

    #[test]
    fn value_rules_agree() {
        // `to_hyper` and `to_actix` skip validation: the two crates must accept the same bytes.
        for b in 0..=255u8 {
            let bytes = [b'a', b, b'z'];
            assert_eq!(
                ax::HeaderValue::from_bytes(&bytes).is_ok(),
                HeaderValue::from_bytes(&bytes).is_ok(),
                "byte {b:#04x}"
            );
        }
        let v = ax::HeaderValue::from_static("shared");
        let mut secret = HeaderValue::from_static("secret");
        secret.set_sensitive(true);
        assert_eq!(to_hyper(&v), "shared");
        assert_eq!(to_actix(&to_hyper(&v)), "shared");
        assert!(to_actix(&secret).is_sensitive());
    }

    #[test]
    fn connection_nominates_names_in_any_case() {
        let values: [&[u8]; 2] = [b"keep-alive, X-Secret ,Upgrade", b"close,,x-other"];
        let n = Nominated::new(values.into_iter());
        assert!(n.contains("x-secret") && n.contains("x-other") && n.contains("close"));
        assert!(!n.contains("x-public"));
        // Hop-by-hop names are removed anyway: not kept to compare with.
        assert_eq!(n.len, 3);
        let many: [&[u8]; 1] = [b"a, b, c, d, e, f"];
        let n = Nominated::new(many.into_iter());
        assert!(["a", "b", "c", "d", "e", "f"].iter().all(|t| n.contains(t)));
        assert!(!Nominated::new(std::iter::empty()).contains("a"));
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
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            crate::base::net::push_ip(&mut out, addr);
            let want = ip.trim_start_matches("::ffff:");
            assert_eq!(String::from_utf8(out).unwrap(), want);
            assert!(want.len() <= MAX_IP_TEXT);
        }
    }
}
