//! Rate limits: the top-level `rate_limiting` section (its limits and the memory or Redis
//! backend), a route's `rate_limit`, one `{rps, burst}` rate wherever it appears (API keys
//! too), and whether limiting is on at all.

use super::V;
use crate::config::error::{did_you_mean, ConfigError};
use crate::config::model::{
    ApiKeysConfig, AuthFailureLimit, AuthMode, OnBackendError, RateBackend, RateConfig,
    RateLimitConfig, RouteConfig, RouteRateLimit, ScopeLimits,
};
use crate::config::raw::{RawRate, RawRateLimiting, RawRouteRateLimit};
use std::path::Path;
use std::time::Duration;

/// Highest `rps`: the memory limiter counts in nanoseconds, Redis in microseconds.
const MAX_RPS: f64 = 1_000_000.0;

pub(super) fn rate(v: &mut V, p: &str, r: &RawRate) -> Option<RateConfig> {
    if !(r.rps > 0.0 && r.rps <= MAX_RPS) {
        v.err_hint(
            format!("{p}.rps"),
            format!("rps must be more than 0 and at most {MAX_RPS}, found {}", r.rps),
            "for a quota such as 1000 a day, write the rate per second (0.0116) and the quota as `burst`",
        );
        return None;
    }
    let burst = match r.burst {
        Some(0) => {
            v.err(format!("{p}.burst"), "burst must be at least 1");
            return None;
        }
        Some(b) => b,
        None => r.rps.ceil() as u32,
    };
    // A bucket that takes longer than this to refill is a misconfiguration (and its clock
    // arithmetic would leave the range the limiter counts in).
    const MAX_REFILL_DAYS: f64 = 366.0;
    if f64::from(burst) / r.rps > MAX_REFILL_DAYS * 86_400.0 {
        v.err_hint(
            format!("{p}.rps"),
            format!(
                "a bucket of {burst} at {} requests/s takes more than a year to refill",
                r.rps
            ),
            "limits refill within a year: raise rps or lower burst",
        );
        return None;
    }
    Some(RateConfig { rps: r.rps, burst })
}

fn scope_limits(
    v: &mut V,
    p: &str,
    global: &Option<RawRate>,
    per_ip: &Option<RawRate>,
    per_api_key: &Option<RawRate>,
    per_user: &Option<RawRate>,
) -> ScopeLimits {
    let mut one = |name: &str, r: &Option<RawRate>| {
        r.as_ref().and_then(|r| rate(v, &format!("{p}.{name}"), r))
    };
    ScopeLimits {
        global: one("global", global),
        per_ip: one("per_ip", per_ip),
        per_api_key: one("per_api_key", per_api_key),
        per_user: one("per_user", per_user),
    }
}

pub(super) fn rate_limiting_config(
    v: &mut V,
    r: &RawRateLimiting,
    base_dir: &Path,
) -> RateLimitConfig {
    let limits = scope_limits(
        v,
        "rate_limiting",
        &r.global,
        &r.per_ip,
        &r.per_api_key,
        &r.per_user,
    );
    let on_backend_error = match r.on_backend_error.as_deref() {
        None | Some("allow") => OnBackendError::Allow,
        Some("deny") => OnBackendError::Deny,
        Some(other) => {
            v.err_hint(
                "rate_limiting.on_backend_error",
                format!("unknown value `{other}`"),
                "use \"allow\" (a local limiter decides while Redis is down) or \"deny\" (503)",
            );
            OnBackendError::Allow
        }
    };
    let backend = backend(v, r, base_dir);
    let max_keys = match r.max_keys {
        Some(0) => {
            v.err("rate_limiting.max_keys", "max_keys must be at least 1");
            1
        }
        Some(n) => n,
        None => RateLimitConfig::DEFAULT_MAX_KEYS,
    };
    let ipv6_prefix = match r.ipv6_prefix {
        None => RateLimitConfig::DEFAULT_IPV6_PREFIX,
        Some(n @ 1..=128) => n as u8,
        Some(n) => {
            v.err_hint(
                "rate_limiting.ipv6_prefix",
                format!("ipv6_prefix must be from 1 to 128, found {n}"),
                "64 counts one IPv6 network (a host usually holds a whole /64) as one client",
            );
            RateLimitConfig::DEFAULT_IPV6_PREFIX
        }
    };
    RateLimitConfig {
        ipv6_prefix,
        backend,
        on_backend_error,
        max_keys,
        headers: r.headers.unwrap_or(true),
        ietf_headers: r.ietf_headers.unwrap_or(false),
        limits,
    }
}

/// Where the counts live: this process's memory, or a Redis shared by every gateway.
fn backend(v: &mut V, r: &RawRateLimiting, base_dir: &Path) -> RateBackend {
    match r.backend.as_deref() {
        None | Some("memory") => {
            if r.redis_url.is_some() || r.redis_tls.is_some() {
                v.warnings.push(
                    ConfigError::new(
                        "rate_limiting.redis_url",
                        "`redis_url` and `redis_tls` are ignored: the backend is memory",
                    )
                    .with_hint("set \"backend\": \"redis\" to share limits through Redis"),
                );
            }
            RateBackend::Memory
        }
        Some("redis") => redis_backend(v, r, base_dir),
        Some(other) => {
            let hint = did_you_mean(other, ["memory", "redis"])
                .unwrap_or_else(|| "use \"memory\" or \"redis\"".into());
            v.err_hint(
                "rate_limiting.backend",
                format!("unknown backend `{other}`"),
                hint,
            );
            RateBackend::Memory
        }
    }
}

fn redis_backend(v: &mut V, r: &RawRateLimiting, base_dir: &Path) -> RateBackend {
    let timeout = v.duration(
        "rate_limiting.redis_timeout",
        &r.redis_timeout,
        Duration::from_millis(50),
    );
    if timeout.is_zero() {
        v.err(
            "rate_limiting.redis_timeout",
            "redis_timeout must be more than 0s",
        );
    }
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "kairos:rl:".into());
    let (url, tls, _) = super::redis::connection(
        v,
        "rate_limiting",
        &r.redis_url,
        &r.redis_tls,
        Some(&key_prefix),
        base_dir,
        "the redis backend needs `redis_url`",
    );
    RateBackend::Redis {
        url,
        tls,
        timeout,
        key_prefix,
    }
}

pub(super) fn route_rate_limit(
    v: &mut V,
    p: &str,
    r: &RawRouteRateLimit,
    auth: AuthMode,
) -> RouteRateLimit {
    let limits = scope_limits(v, p, &r.global, &r.per_ip, &r.per_api_key, &r.per_user);
    // A limit that can never apply is a mistake worth saying so.
    if limits.per_user.is_some() && !auth.jwt {
        v.err_hint(
            format!("{p}.per_user"),
            "per_user limits JWT subjects, but this route does not accept JWTs",
            "set the route's \"auth\" to \"jwt\", or use per_ip",
        );
    }
    if limits.per_api_key.is_some() && !auth.api_key {
        v.err_hint(
            format!("{p}.per_api_key"),
            "per_api_key limits API keys, but this route does not accept API keys",
            "set the route's \"auth\" to \"api_key\", or use per_ip",
        );
    }
    RouteRateLimit {
        limits,
        inherit: r.inherit.unwrap_or(true),
    }
}

/// The throttle on failed authentications: `rate_limiting.auth_failures`, or the default.
pub(super) fn auth_failures(
    v: &mut V,
    raw: Option<&RawRateLimiting>,
    top: Option<&RateLimitConfig>,
) -> AuthFailureLimit {
    let default = AuthFailureLimit::default();
    AuthFailureLimit {
        rate: raw
            .and_then(|r| r.auth_failures.as_ref())
            .and_then(|r| rate(v, "rate_limiting.auth_failures", r))
            .unwrap_or(default.rate),
        ipv6_prefix: top.map_or(default.ipv6_prefix, |t| t.ipv6_prefix),
    }
}

/// Rate limiting is on when anything is limited: the top level, a route or an API key.
pub(super) fn effective(
    top_limits: Option<RateLimitConfig>,
    api_keys: Option<&ApiKeysConfig>,
    routes: &[RouteConfig],
    tenant_limits: bool,
) -> Option<RateLimitConfig> {
    let any_key_limit = api_keys.is_some_and(|k| k.keys.iter().any(|e| e.rate_limit.is_some()));
    let any_route_limit = routes.iter().any(|r| {
        r.rate_limit
            .as_ref()
            .is_some_and(|rl| !rl.limits.is_empty())
    });
    match top_limits {
        Some(rl) => Some(rl),
        None if any_key_limit || any_route_limit || tenant_limits => {
            Some(RateLimitConfig::default())
        }
        None => None,
    }
}
