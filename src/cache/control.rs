//! Cache-Control directives (RFC 9111 section 5.2, RFC 5861) of a request or a response,
//! parsed conservatively: a qualified `private="..."` or `no-cache="..."` counts as the
//! unqualified directive, and a delta-seconds value that does not parse counts as 0 (stale).

use http::HeaderMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// Request: `max-stale` without a value is `Some(u64::MAX)`.
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// The directives of every `Cache-Control` field line of `headers`; a request's
    /// `Pragma: no-cache` counts as `no-cache` when there is no `Cache-Control`.
    pub fn of(headers: &HeaderMap) -> Directives {
        Directives::from_lines(
            headers
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .map(|v| v.as_bytes()),
            headers
                .get_all(http::header::PRAGMA)
                .iter()
                .map(|v| v.as_bytes()),
        )
    }

    /// The directives of `Cache-Control` field lines `cc`, and `Pragma` lines `pragma`.
    pub fn from_lines<'a>(
        cc: impl Iterator<Item = &'a [u8]>,
        mut pragma: impl Iterator<Item = &'a [u8]>,
    ) -> Directives {
        let mut d = Directives::default();
        let mut any = false;
        for line in cc {
            any = true;
            let Ok(text) = std::str::from_utf8(line) else {
                // Unreadable directives: treat the message as uncacheable.
                d.no_store = true;
                continue;
            };
            for item in split_list(text) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let secs = || value.map_or(0, |v| v.parse::<u64>().unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "only-if-cached" => d.only_if_cached = true,
                    // A repeated directive: the most conservative value wins.
                    "max-age" => d.max_age = Some(d.max_age.map_or(secs(), |a| a.min(secs()))),
                    "s-maxage" => d.s_maxage = Some(d.s_maxage.map_or(secs(), |a| a.min(secs()))),
                    "max-stale" => {
                        d.max_stale = Some(value.map_or(u64::MAX, |v| v.parse().unwrap_or(0)))
                    }
                    "min-fresh" => d.min_fresh = Some(secs()),
                    "stale-while-revalidate" => d.stale_while_revalidate = Some(secs()),
                    "stale-if-error" => d.stale_if_error = Some(secs()),
                    _ => {}
                }
            }
        }
        if !any
            && pragma.any(|v| {
                std::str::from_utf8(v).is_ok_and(|t| t.to_ascii_lowercase().contains("no-cache"))
            })
        {
            d.no_cache = true;
        }
        d
    }
}

/// The items of a comma-separated list, trimmed, empty ones skipped; commas inside a quoted
/// string do not split.
pub fn split_list(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let item = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("");
        if !item.is_empty() {
            return Some(item);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &str) -> Directives {
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, v.parse().expect("value"));
        Directives::of(&h)
    }

    #[test]
    fn parses_directives_conservatively() {
        let d = cc("public, max-age=60, s-maxage=\"30\", private=\"set-cookie\"");
        assert!(d.public && d.private);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(30)));
        assert_eq!(cc("max-age=abc").max_age, Some(0));
        assert_eq!(cc("max-age=60, max-age=10").max_age, Some(10));
        assert_eq!(cc("max-stale").max_stale, Some(u64::MAX));
        assert!(cc("No-Store").no_store);
        let mut h = HeaderMap::new();
        h.insert(http::header::PRAGMA, "no-cache".parse().expect("value"));
        assert!(Directives::of(&h).no_cache);
    }

    #[test]
    fn splits_lists_outside_quotes() {
        let items: Vec<_> = split_list(" a, ,b=\"x, y\",c ").collect();
        assert_eq!(items, ["a", "b=\"x, y\"", "c"]);
    }
}
