//! The response cache's validated settings: the store (`caching`), each cached route's own
//! (`cache`), and the compiled key template both use.

use super::model::Secret;
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;

/// The top-level `caching` section, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub backend: CacheBackend,
    /// Bytes the memory tier holds at most (bodies, headers, keys).
    pub max_size: u64,
    /// Largest body stored.
    pub max_object_size: u64,
    pub default_ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub lock_timeout: Duration,
}

impl CacheConfig {
    pub const DEFAULT_MAX_SIZE: u64 = 256 * 1024 * 1024;
    pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 1024 * 1024;
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_KEY_TEMPLATE: &'static str = "{method}:{path}:{query_hash}";
    pub const DEFAULT_L1_TTL: Duration = Duration::from_secs(30);
    pub const DEFAULT_L2_TTL: Duration = Duration::from_secs(300);
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
    pub const DEFAULT_KEY_PREFIX: &'static str = "kairos:cache:";
}

/// Where stored answers live.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheBackend {
    /// This instance's memory, bounded in bytes.
    Memory,
    /// A Redis shared by every instance pointing at it; no memory copy.
    Redis(RedisCache),
    /// This instance's memory (copies live at most `l1_ttl`) in front of a shared Redis
    /// (copies live at most `l2_ttl`).
    Hybrid {
        redis: RedisCache,
        l1_ttl: Duration,
        l2_ttl: Duration,
    },
}

impl CacheBackend {
    pub fn redis(&self) -> Option<&RedisCache> {
        match self {
            CacheBackend::Memory => None,
            CacheBackend::Redis(r) | CacheBackend::Hybrid { redis: r, .. } => Some(r),
        }
    }
}

/// The Redis of the redis and hybrid backends.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisCache {
    pub url: Secret,
    /// `redis_tls`: the CA and client certificate of a rediss:// URL.
    pub tls: Option<crate::base::redis::TlsFiles>,
    /// Bounds each connect and call; past it the request goes on without Redis.
    pub timeout: Duration,
    /// Prefix of every key the cache writes.
    pub key_prefix: String,
}

/// A cached route's settings (the route's own, else the `caching` defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    /// Freshness of a storable response that states none.
    pub ttl: Duration,
    pub key: Arc<KeyTemplate>,
    /// Request headers (lower case, sorted, unique) that always make separate entries.
    pub vary: Vec<HeaderName>,
    /// The cache's settings, shared by every cached route.
    pub store: Arc<CacheConfig>,
}

/// A compiled key template.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTemplate {
    pub parts: Vec<KeyPart>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyPart {
    Literal(String),
    Method,
    /// The request's host, lower case, without the default port.
    Host,
    /// The normalised path.
    Path,
    /// The query with its parameters sorted.
    Query,
    /// A hash of the sorted query (16 hex digits), empty without a query.
    QueryHash,
    /// A request header's values, joined with ", ".
    Header(HeaderName),
    Route,
    /// The request's tenant id (empty without one).
    Tenant,
}

/// Why a key template is refused, and the fix.
pub type KeyTemplateError = (String, String);

const VARIABLES: &str =
    "{method}, {host}, {path}, {query}, {query_hash}, {header.NAME}, {route}, {tenant}";

impl KeyTemplate {
    pub fn parse(s: &str) -> Result<KeyTemplate, KeyTemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        let mut path = false;
        while let Some(i) = rest.find('{') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('{') {
                lit.push('{');
                rest = r;
                continue;
            }
            let Some(end) = rest.find('}') else {
                return Err((
                    "`{` opens a variable that is never closed".into(),
                    "write `{{` for a literal `{`".into(),
                ));
            };
            let var = &rest[..end];
            rest = &rest[end + 1..];
            let part = match var {
                "method" => KeyPart::Method,
                "host" => KeyPart::Host,
                "path" => KeyPart::Path,
                "query" => KeyPart::Query,
                "query_hash" => KeyPart::QueryHash,
                "route" => KeyPart::Route,
                "tenant" => KeyPart::Tenant,
                _ => match var.strip_prefix("header.") {
                    Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => KeyPart::Header(h),
                        Err(_) => {
                            return Err((
                                format!("`{name}` is not a valid header name"),
                                "write {header.Accept-Language}".into(),
                            ))
                        }
                    },
                    None => {
                        return Err((
                            format!("unknown key template variable `{{{var}}}`"),
                            format!("use {VARIABLES}"),
                        ))
                    }
                },
            };
            path |= part == KeyPart::Path;
            if !lit.is_empty() {
                parts.push(KeyPart::Literal(std::mem::take(&mut lit)));
            }
            parts.push(part);
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(KeyPart::Literal(lit));
        }
        if !path {
            // Without the path every URL of the route would share one answer.
            return Err((
                "the key template has no `{path}`: every path would share one answer".into(),
                format!("start from \"{}\"", CacheConfig::DEFAULT_KEY_TEMPLATE),
            ));
        }
        Ok(KeyTemplate { parts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_template() {
        let t = KeyTemplate::parse(CacheConfig::DEFAULT_KEY_TEMPLATE).expect("valid");
        assert_eq!(
            t.parts,
            vec![
                KeyPart::Method,
                KeyPart::Literal(":".into()),
                KeyPart::Path,
                KeyPart::Literal(":".into()),
                KeyPart::QueryHash
            ]
        );
    }

    #[test]
    fn refuses_unknown_variables_and_keys_without_path() {
        assert!(KeyTemplate::parse("{method}:{pth}").is_err());
        assert!(KeyTemplate::parse("{method}:{query}").is_err());
        assert!(KeyTemplate::parse("{path}:{tenant}").is_ok());
        assert!(KeyTemplate::parse("{path}:{header.bad name}").is_err());
        assert!(KeyTemplate::parse("{path").is_err());
    }
}
