//! The response cache: the top-level `caching` section (its store, defaults and key template)
//! and a route's `cache` (off, or its own ttl, key and varied headers).

use super::V;
use crate::config::cache::{CacheBackend, CacheConfig, KeyTemplate, RedisCache, RouteCache};
use crate::config::error::did_you_mean;
use crate::config::raw::{RawCaching, RawRouteCache};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The validated `caching` section and what routes inherit from it.
pub(super) struct TopCache {
    pub config: Arc<CacheConfig>,
    /// Every route is cached unless it says `"cache": false`.
    pub enabled: bool,
    pub key: Arc<KeyTemplate>,
}

pub(super) fn caching_config(v: &mut V, r: &RawCaching, base_dir: &Path) -> TopCache {
    let backend = match r.backend.as_deref() {
        None | Some("memory") => CacheBackend::Memory,
        Some("redis") => CacheBackend::Redis(redis_cache(v, r, base_dir)),
        Some("hybrid") => {
            let redis = redis_cache(v, r, base_dir);
            let l1_ttl = v.duration("caching.l1_ttl", &r.l1_ttl, CacheConfig::DEFAULT_L1_TTL);
            let l2_ttl = v.duration("caching.l2_ttl", &r.l2_ttl, CacheConfig::DEFAULT_L2_TTL);
            if l1_ttl.is_zero() || l2_ttl.is_zero() {
                v.err_hint(
                    if l1_ttl.is_zero() {
                        "caching.l1_ttl"
                    } else {
                        "caching.l2_ttl"
                    },
                    "l1_ttl and l2_ttl must be more than 0s",
                    "use the redis backend for no memory copy",
                );
            } else if l1_ttl > l2_ttl {
                v.err_hint(
                    "caching.l1_ttl",
                    "l1_ttl is longer than l2_ttl: the memory copy would outlive the shared one",
                    format!("at most l2_ttl ({l2_ttl:?})"),
                );
            }
            CacheBackend::Hybrid {
                redis,
                l1_ttl,
                l2_ttl,
            }
        }
        Some(other) => {
            let hint = did_you_mean(other, ["memory", "redis", "hybrid"])
                .unwrap_or_else(|| "use \"memory\", \"redis\" or \"hybrid\"".into());
            v.err_hint(
                "caching.backend",
                format!("unknown backend `{other}`"),
                hint,
            );
            CacheBackend::Memory
        }
    };
    let ignored: &[(&str, bool, &str)] = match &backend {
        CacheBackend::Memory => &[
            (
                "redis_url",
                r.redis_url.is_some(),
                "the redis and hybrid backends",
            ),
            (
                "redis_timeout",
                r.redis_timeout.is_some(),
                "the redis and hybrid backends",
            ),
            (
                "redis_tls",
                r.redis_tls.is_some(),
                "the redis and hybrid backends",
            ),
            (
                "key_prefix",
                r.key_prefix.is_some(),
                "the redis and hybrid backends",
            ),
            ("l1_ttl", r.l1_ttl.is_some(), "the hybrid backend"),
            ("l2_ttl", r.l2_ttl.is_some(), "the hybrid backend"),
        ],
        CacheBackend::Redis(_) => &[
            ("l1_ttl", r.l1_ttl.is_some(), "the hybrid backend"),
            ("l2_ttl", r.l2_ttl.is_some(), "the hybrid backend"),
        ],
        CacheBackend::Hybrid { .. } => &[],
    };
    let name = match &backend {
        CacheBackend::Memory => "memory",
        CacheBackend::Redis(_) => "redis",
        CacheBackend::Hybrid { .. } => "hybrid",
    };
    for (key, set, applies) in ignored {
        if *set {
            v.warnings.push(
                crate::config::ConfigError::new(
                    format!("caching.{key}"),
                    format!("`{key}` is ignored: the cache backend is {name}"),
                )
                .with_hint(format!("it applies to {applies}")),
            );
        }
    }
    let max_size = v.size(
        "caching.max_size",
        &r.max_size,
        CacheConfig::DEFAULT_MAX_SIZE,
    );
    if max_size == 0 {
        v.err_hint(
            "caching.max_size",
            "max_size must be more than 0",
            "set \"enabled\": false to turn the cache off",
        );
    }
    let max_object_size = v.size(
        "caching.max_object_size",
        &r.max_object_size,
        CacheConfig::DEFAULT_MAX_OBJECT_SIZE,
    );
    if max_object_size == 0 || max_object_size > max_size {
        v.err_hint(
            "caching.max_object_size",
            "max_object_size must be more than 0 and at most max_size",
            "a few percent of max_size, e.g. \"1MB\" for \"256MB\"",
        );
    }
    let default_ttl = v.duration(
        "caching.default_ttl",
        &r.default_ttl,
        CacheConfig::DEFAULT_TTL,
    );
    let stale_while_revalidate = v.duration(
        "caching.stale_while_revalidate",
        &r.stale_while_revalidate,
        Duration::ZERO,
    );
    let stale_if_error = v.duration("caching.stale_if_error", &r.stale_if_error, Duration::ZERO);
    let lock_timeout = super::nonzero_duration(
        v,
        "caching.lock_timeout".into(),
        &r.lock_timeout,
        CacheConfig::DEFAULT_LOCK_TIMEOUT,
    );
    let key = key_template(
        v,
        "caching.cache_key_template",
        r.cache_key_template
            .as_deref()
            .unwrap_or(CacheConfig::DEFAULT_KEY_TEMPLATE),
    );
    TopCache {
        config: Arc::new(CacheConfig {
            backend,
            max_size,
            max_object_size,
            default_ttl,
            stale_while_revalidate,
            stale_if_error,
            lock_timeout,
        }),
        enabled: r.enabled.unwrap_or(false),
        key,
    }
}

/// The Redis of the redis and hybrid backends.
fn redis_cache(v: &mut V, r: &RawCaching, base_dir: &Path) -> RedisCache {
    let timeout = v.duration(
        "caching.redis_timeout",
        &r.redis_timeout,
        CacheConfig::DEFAULT_REDIS_TIMEOUT,
    );
    if timeout.is_zero() {
        v.err_hint(
            "caching.redis_timeout",
            "redis_timeout must be more than 0s",
            "a few times Redis' round trip, e.g. \"100ms\"",
        );
    }
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| CacheConfig::DEFAULT_KEY_PREFIX.into());
    if key_prefix.is_empty() {
        v.err_hint(
            "caching.key_prefix",
            "key_prefix must not be empty: a purge of everything would match every key of the Redis",
            format!("use \"{}\"", CacheConfig::DEFAULT_KEY_PREFIX),
        );
    }
    let (url, tls, _) = super::redis::connection(
        v,
        "caching",
        &r.redis_url,
        &r.redis_tls,
        Some(&key_prefix),
        base_dir,
        "the redis and hybrid cache backends need `redis_url`",
    );
    RedisCache {
        url,
        tls,
        timeout,
        key_prefix,
    }
}

fn key_template(v: &mut V, path: &str, text: &str) -> Arc<KeyTemplate> {
    match KeyTemplate::parse(text) {
        Ok(t) => Arc::new(t),
        Err((msg, hint)) => {
            v.err_hint(path, msg, hint);
            Arc::new(KeyTemplate { parts: Vec::new() })
        }
    }
}

/// A route's cache: `None` when the route is not cached.
pub(super) fn route_cache(
    v: &mut V,
    p: &str,
    raw: Option<&RawRouteCache>,
    top: Option<&TopCache>,
) -> Option<Arc<RouteCache>> {
    let settings = match raw {
        None => None,
        Some(RawRouteCache::Switch(false)) => return None,
        Some(RawRouteCache::Switch(true)) => None,
        Some(RawRouteCache::Settings(s)) if s.enabled == Some(false) => return None,
        Some(RawRouteCache::Settings(s)) => Some(s),
    };
    let Some(top) = top else {
        if raw.is_some() {
            v.err_hint(
                format!("{p}.cache"),
                "a route's cache needs the top-level `caching` section",
                "add \"caching\": {\"backend\": \"memory\"}",
            );
        }
        return None;
    };
    if raw.is_none() && !top.enabled {
        return None;
    }
    let ttl = match settings.and_then(|s| s.ttl.as_ref()) {
        None => top.config.default_ttl,
        some => v.duration(
            &format!("{p}.cache.ttl"),
            &some.cloned(),
            top.config.default_ttl,
        ),
    };
    let key = match settings.and_then(|s| s.key_template.as_deref()) {
        None => top.key.clone(),
        Some(t) => key_template(v, &format!("{p}.cache.key_template"), t),
    };
    let mut vary = Vec::new();
    for (i, name) in settings
        .and_then(|s| s.vary.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => vary.push(h),
            Err(_) => v.err_hint(
                format!("{p}.cache.vary[{i}]"),
                format!("`{name}` is not a valid header name"),
                "list request header names, e.g. [\"Accept-Language\"]",
            ),
        }
    }
    vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    vary.dedup();
    Some(Arc::new(RouteCache {
        ttl,
        key,
        vary,
        store: top.config.clone(),
    }))
}
