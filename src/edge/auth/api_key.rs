//! API keys: looked up by their SHA-256 (the config holds hashes, never keys), so the lookup's
//! timing depends on the hash of the presented key, which tells an attacker nothing about a
//! real key; taken from a header or (when configured) a query parameter.

use crate::base::hash::{constant_time_eq, hash};
use crate::config::model::{ApiKeyEntry, ApiKeysConfig};
use rustc_hash::FxHashMap;

/// The system's random generator failed, so no key could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomFailed;

/// A new random key: 32 bytes from the system's CSPRNG, base64url, with a prefix that makes
/// leaked keys easy to find with secret scanners.
pub fn generate() -> Result<String, RandomFailed> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomFailed)?;
    Ok(format!(
        "kairos_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The keys of a runtime, by hash.
pub struct KeyStore {
    pub config: ApiKeysConfig,
    by_hash: FxHashMap<[u8; 32], usize>,
}

impl KeyStore {
    pub fn new(config: ApiKeysConfig) -> Self {
        let by_hash = config
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.hash, i))
            .collect();
        KeyStore { config, by_hash }
    }

    /// The key entry for a presented key, if it is one of ours.
    pub fn lookup(&self, presented: &str) -> Option<&ApiKeyEntry> {
        let h = hash(presented);
        let entry = &self.config.keys[*self.by_hash.get(&h)?];
        // Belt and braces: the map already compared the digests; this comparison takes the
        // same time whatever the bytes.
        constant_time_eq(&entry.hash, &h).then_some(entry)
    }

    /// The key a request presents, from the header or the query string.
    pub fn presented<'a>(
        &self,
        headers: &'a actix_web::http::header::HeaderMap,
        query: &'a str,
    ) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(v) = headers.get(self.config.header_name.as_str()) {
            return v
                .to_str()
                .ok()
                .map(|s| std::borrow::Cow::Borrowed(s.trim()));
        }
        let name = self.config.query_param.as_deref()?;
        query_value(query, name)
    }
}

/// The value of query parameter `name`, decoded as `application/x-www-form-urlencoded`
/// (`+` is a space, `%XX` a byte, anything else literal). The name is compared as sent, so
/// that [`strip_query_param`] removes exactly the parameter that was read.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        if k != name {
            return None;
        }
        Some(
            form_urlencoded::parse(pair.as_bytes())
                .next()
                .map_or(std::borrow::Cow::Borrowed(""), |(_, v)| v),
        )
    })
}

/// The query string without parameter `name` (None when it is not there).
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let mut found = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let hit = k == name;
            found |= hit;
            !hit
        })
        .collect();
    found.then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_long() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kairos_") && a.len() == 7 + 43, "{a}");
    }

    #[test]
    fn query_parameters() {
        assert_eq!(
            query_value("a=1&api_key=k%2By&b", "api_key").as_deref(),
            Some("k+y")
        );
        assert_eq!(query_value("a=1", "api_key"), None);
        assert_eq!(
            strip_query_param("a=1&api_key=x&b=2", "api_key").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(
            strip_query_param("api_key=x", "api_key").as_deref(),
            Some("")
        );
        assert_eq!(strip_query_param("a=1", "api_key"), None);
        assert_eq!(query_value("k=a%zz%4", "k").as_deref(), Some("a%zz%4"));
        // `%+1` is no escape (u8::from_str_radix would take "+1" for 1).
        assert_eq!(query_value("k=a%+1", "k").as_deref(), Some("a% 1"));
        assert_eq!(query_value("k=a%2B%2b+b", "k").as_deref(), Some("a++ b"));
        assert_eq!(query_value("k", "k").as_deref(), Some(""));
    }
}
