//! What of a URL may be written to a log or a span: no userinfo (a password in
//! `https://user:pass@host/`), and no query value (a token in `?access_token=...`).

/// `scheme://host[:port]/path` of a URL, for logs: userinfo, query and fragment removed.
pub fn url_for_log(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let after = &rest[authority_end..];
    let path = &after[..after.find(['?', '#']).unwrap_or(after.len())];
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

/// `url` with its userinfo (`user:pass@`) removed and everything else kept: for URLs whose
/// query and path are the gateway's own (a discovery request), where [`url_for_log`] would
/// drop useful detail.
pub fn url_without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// The placeholder for a removed value (the one the OpenTelemetry semantic conventions use).
pub const REDACTED: &str = "REDACTED";

/// `query` (without the `?`) with every non-empty parameter value replaced by `REDACTED`;
/// names, order and empty values are kept (`a=1&b=&c` -> `a=REDACTED&b=&c`).
pub fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    redact_query_into(&mut out, query);
    out
}

/// [`redact_query`], appended to `out`.
pub fn redact_query_into(out: &mut String, query: &str) {
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
}

/// A path and query (`/p?q`) with the query's values redacted.
pub fn redact_path_and_query(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    match path_and_query.split_once('?') {
        None => path_and_query.into(),
        Some((path, query)) => {
            let mut out = String::with_capacity(path_and_query.len() + 16);
            out.push_str(path);
            out.push('?');
            redact_query_into(&mut out, query);
            out.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_goes_and_the_rest_stays() {
        assert_eq!(
            url_without_userinfo("http://eureka:s3cret@10.0.0.1:8761/eureka/apps/X?a=b"),
            "http://10.0.0.1:8761/eureka/apps/X?a=b"
        );
        assert_eq!(
            url_without_userinfo("http://10.0.0.1/p?email=a@b"),
            "http://10.0.0.1/p?email=a@b"
        );
        assert_eq!(url_without_userinfo("not a url"), "not a url");
    }

    #[test]
    fn urls_lose_userinfo_query_and_fragment() {
        for (url, logged) in [
            (
                "https://user:s3cret@idp.example.com:8443/keys?token=abc#x",
                "https://idp.example.com:8443/keys",
            ),
            (
                "http://127.0.0.1:4318/v1/traces",
                "http://127.0.0.1:4318/v1/traces",
            ),
            ("http://host?key=v", "http://host"),
            ("http://a@b@host/p", "http://host/p"),
            (
                "https://[::1]:4318/v1/traces?x=1",
                "https://[::1]:4318/v1/traces",
            ),
            ("host/p?q=1", "host/p"),
            ("http://h/p@x?y=@z", "http://h/p@x"),
        ] {
            assert_eq!(url_for_log(url), logged, "{url}");
        }
    }

    #[test]
    fn query_values_are_redacted_names_kept() {
        for (query, redacted) in [
            ("a=1&b=&c", "a=REDACTED&b=&c"),
            ("api_key=s3cret", "api_key=REDACTED"),
            ("x=a=b&&y=2", "x=REDACTED&&y=REDACTED"),
            ("", ""),
        ] {
            assert_eq!(redact_query(query), redacted, "{query}");
        }
        assert_eq!(redact_path_and_query("/p?t=secret&u"), "/p?t=REDACTED&u");
        assert_eq!(redact_path_and_query("/p"), "/p");
    }
}
