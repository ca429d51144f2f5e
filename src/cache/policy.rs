//! What a shared cache may store and for how long (RFC 9111 sections 3, 3.5 and 4.2): the
//! storability of a response, its freshness lifetime, its age when it arrived, and the
//! normalised request-header values its `Vary` selects on.

use super::control::{split_list, Directives};
use http::{HeaderMap, HeaderName};
use std::time::{Duration, SystemTime};

/// How a storable response may be used, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The freshness lifetime.
    pub lifetime: u64,
    /// Serving stale while one request refreshes in the background.
    pub swr: u64,
    /// Serving stale when the upstream fails.
    pub sie: u64,
    /// No stale serving at all (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub revalidate: bool,
    /// Every use needs a successful revalidation first (`no-cache`).
    pub no_cache: bool,
}

/// The defaults of the route that applies the policy.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub ttl: Duration,
    pub swr: Duration,
    pub sie: Duration,
}

/// Statuses heuristically cacheable (RFC 9110 section 15.1), 206 left out: partial answers
/// are never stored.
const HEURISTIC: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 501];

/// Whether the response to a GET may be stored, and its freshness; the reason when it may
/// not. `authorized`: the request carried `Authorization`.
pub fn storable(
    req: &Directives,
    authorized: bool,
    status: u16,
    headers: &HeaderMap,
    res: &Directives,
    defaults: Defaults,
    now: SystemTime,
) -> Result<Freshness, &'static str> {
    if req.no_store || res.no_store {
        return Err("no-store");
    }
    if res.private {
        return Err("private");
    }
    if !(200..600).contains(&status) || status == 206 || status == 304 {
        return Err("status");
    }
    // RFC 9111 3.5: a shared cache reuses an answer to an authorized request only when the
    // response says so.
    if authorized && !(res.public || res.s_maxage.is_some() || res.must_revalidate) {
        return Err("authorization");
    }
    if vary_star(headers) {
        return Err("vary *");
    }
    // Never hand one client's cookie to another.
    if headers.contains_key(http::header::SET_COOKIE) {
        return Err("set-cookie");
    }
    let explicit = explicit_lifetime(headers, res, now);
    let lifetime = match explicit {
        Some(l) => l,
        None if res.public || HEURISTIC.contains(&status) => defaults.ttl.as_millis() as u64,
        None => return Err("status"),
    };
    let revalidate = res.must_revalidate || res.proxy_revalidate || res.s_maxage.is_some();
    if res.no_cache && !has_validator(headers) {
        return Err("no-cache without a validator");
    }
    let ms =
        |s: Option<u64>, d: Duration| s.map_or(d.as_millis() as u64, |s| s.saturating_mul(1000));
    // `no-cache`: never used without a successful validation (RFC 9111 5.2.2.4), so never
    // served stale, not even when the upstream fails.
    let no_stale = revalidate || res.no_cache;
    Ok(Freshness {
        lifetime,
        swr: if no_stale {
            0
        } else {
            ms(res.stale_while_revalidate, defaults.swr)
        },
        sie: if no_stale {
            0
        } else {
            ms(res.stale_if_error, defaults.sie)
        },
        revalidate,
        no_cache: res.no_cache,
    })
}

/// The lifetime the response states (RFC 9111 4.2.1), in ms: `s-maxage`, `max-age`, then
/// `Expires` minus `Date`; an invalid `Expires` means already expired.
fn explicit_lifetime(headers: &HeaderMap, res: &Directives, now: SystemTime) -> Option<u64> {
    if let Some(s) = res.s_maxage.or(res.max_age) {
        return Some(s.saturating_mul(1000));
    }
    let expires = headers.get(http::header::EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(0);
    };
    let date = headers
        .get(http::header::DATE)
        .and_then(http_date)
        .unwrap_or(now);
    Some(
        expires
            .duration_since(date)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// The response's age when it arrived (RFC 9111 4.2.3), in ms: the larger of its apparent age
/// (`Date` to arrival) and its `Age` plus the time the request took.
pub fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> u64 {
    let apparent = headers
        .get(http::header::DATE)
        .and_then(http_date)
        .and_then(|d| response_time.duration_since(d).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let age_value = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let delay = response_time
        .duration_since(request_time)
        .map_or(0, |d| d.as_millis() as u64);
    apparent.max(age_value.saturating_mul(1000).saturating_add(delay))
}

pub fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::VARY)
        .iter()
        .any(|v| v.to_str().map_or(true, |t| split_list(t).any(|i| i == "*")))
}

/// The header names a response varies on (lower case, sorted, unique), with the route's own.
pub fn vary_names(headers: &HeaderMap, route: &[HeaderName]) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = route.to_vec();
    for v in headers.get_all(http::header::VARY) {
        let Ok(t) = v.to_str() else { continue };
        names.extend(split_list(t).filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()));
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// The normalised values of the varied headers of a request, one line per name: field lines
/// joined, list items trimmed; `Accept-Encoding`'s items lower-cased and sorted (their order
/// carries no meaning). An absent header differs from an empty one.
/// `values` gives a request header's field lines by (lower-case) name.
pub fn vary_values<'a>(names: &[HeaderName], values: impl Fn(&str) -> Vec<&'a [u8]>) -> String {
    let mut out = String::new();
    for name in names {
        out.push_str(name.as_str());
        let values = values(name.as_str());
        if values.is_empty() {
            out.push_str("\u{0}\n");
            continue;
        }
        out.push('=');
        let mut items: Vec<String> = values
            .into_iter()
            .flat_map(|v| {
                let text = String::from_utf8_lossy(v).into_owned();
                split_list(&text)
                    .map(|i| i.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
            })
            .collect();
        if name == http::header::ACCEPT_ENCODING {
            for i in &mut items {
                *i = i.to_ascii_lowercase().replace(' ', "");
            }
            items.sort();
            items.dedup();
        }
        out.push_str(&items.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    const D: Defaults = Defaults {
        ttl: Duration::from_secs(300),
        swr: Duration::from_secs(10),
        sie: Duration::from_secs(60),
    };

    fn decide(
        status: u16,
        res: &[(&str, &str)],
        authorized: bool,
    ) -> Result<Freshness, &'static str> {
        let h = headers(res);
        storable(
            &Directives::default(),
            authorized,
            status,
            &h,
            &Directives::of(&h),
            D,
            SystemTime::now(),
        )
    }

    #[test]
    fn storability_follows_rfc_9111() {
        assert_eq!(decide(200, &[], false).map(|f| f.lifetime), Ok(300_000));
        assert_eq!(decide(302, &[], false), Err("status"));
        assert!(decide(302, &[("cache-control", "max-age=5")], false).is_ok());
        assert_eq!(
            decide(200, &[("cache-control", "no-store")], false),
            Err("no-store")
        );
        assert_eq!(
            decide(200, &[("cache-control", "private")], false),
            Err("private")
        );
        assert_eq!(decide(200, &[("vary", "Accept, *")], false), Err("vary *"));
        assert_eq!(decide(200, &[], true), Err("authorization"));
        assert!(decide(200, &[("cache-control", "public")], true).is_ok());
        assert!(decide(200, &[("cache-control", "s-maxage=5")], true).is_ok());
        assert!(decide(200, &[("cache-control", "must-revalidate")], true).is_ok());
        assert_eq!(
            decide(206, &[("cache-control", "max-age=5")], false),
            Err("status")
        );
        let f = decide(200, &[("cache-control", "max-age=5, s-maxage=7")], false).expect("ok");
        assert_eq!((f.lifetime, f.revalidate, f.swr), (7000, true, 0));
        let f = decide(
            200,
            &[("cache-control", "max-age=5, stale-if-error=3")],
            false,
        );
        assert_eq!(f.map(|f| (f.swr, f.sie)), Ok((10_000, 3000)));
        assert!(decide(200, &[("cache-control", "no-cache")], false).is_err());
        assert!(decide(
            200,
            &[("cache-control", "no-cache"), ("etag", "\"a\"")],
            false
        )
        .is_ok_and(|f| f.no_cache));
    }

    #[test]
    fn expires_counts_from_date_and_a_bad_one_is_stale() {
        let f = decide(
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
            ],
            false,
        );
        assert_eq!(f.map(|f| f.lifetime), Ok(60_000));
        assert_eq!(
            decide(200, &[("expires", "0")], false).map(|f| f.lifetime),
            Ok(0)
        );
    }

    #[test]
    fn initial_age_takes_the_larger_of_date_and_age() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now - Duration::from_secs(20));
        let h = headers(&[("date", &date), ("age", "5")]);
        let age = initial_age(&h, now, now);
        assert!((19_000..=21_000).contains(&age), "{age}");
        let h = headers(&[("age", "30")]);
        assert_eq!(initial_age(&h, now - Duration::from_secs(1), now), 31_000);
    }

    #[test]
    fn vary_values_are_normalised() {
        let names = vec![http::header::ACCEPT_ENCODING];
        let of = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            vary_values(&names, |n| {
                h.get_all(n).iter().map(|v| v.as_bytes()).collect()
            })
        };
        let a = of(&[("accept-encoding", "gzip,  BR")]);
        assert_eq!(
            a,
            of(&[("accept-encoding", "br"), ("accept-encoding", "gzip")])
        );
        assert_ne!(of(&[]), of(&[("accept-encoding", "")]));
        assert_ne!(a, of(&[("accept-encoding", "gzip")]));
    }
}
