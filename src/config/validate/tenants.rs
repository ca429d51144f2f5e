//! The `tenancy` and `tenants` sections: identification methods, the tenant header and claim,
//! the quota store, and each tenant's hosts, API keys, own routes, rate limit and quotas; the
//! checks between tenants (a host or key belongs to one tenant only) and each tenant's own
//! route table.

use super::routes::{route, RouteContext, Seen};
use super::V;
use crate::config::error::did_you_mean;
use crate::config::model::{
    ApiKeysConfig, IdentifyBy, QuotaConfig, QuotaStoreConfig, RouteConfig, TenancyConfig,
    TenantConfig,
};
use crate::config::raw::{RawConfig, RawQuotaStore, RawQuotas, RawTenancy};
use crate::config::router::Router;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The metrics label of requests whose tenant is not configured; no tenant may take it.
pub const OTHER_TENANT: &str = "other";

/// What the tenants are checked against: the sections validated before them.
pub(super) struct TenantContext<'a> {
    pub(super) routes: &'a RouteContext<'a>,
    pub(super) api_keys: Option<&'a ApiKeysConfig>,
    pub(super) base_dir: &'a Path,
}

/// The tenancy of `raw` (`None` without `tenancy` and `tenants`); the tenants' own routes are
/// appended to `routes`.
pub(super) fn tenancy_config(
    v: &mut V,
    raw: &RawConfig,
    cx: &TenantContext,
    seen: &mut Seen,
    routes: &mut Vec<RouteConfig>,
) -> Option<TenancyConfig> {
    if raw.tenancy.is_none() && raw.tenants.is_empty() {
        return None;
    }
    let default = RawTenancy {
        identify_by: None,
        header: None,
        claim: None,
        require: None,
        quota_store: None,
    };
    let t = raw.tenancy.as_ref().unwrap_or(&default);
    let identify_by = identify_by(v, t.identify_by.as_deref(), cx.routes.has_jwt);
    let header =
        match http::HeaderName::from_bytes(t.header.as_deref().unwrap_or("X-Tenant-Id").as_bytes())
        {
            Ok(h) => h,
            Err(_) => {
                v.err_hint(
                    "tenancy.header",
                    "not a valid header name",
                    "write a header name such as \"X-Tenant-Id\"",
                );
                http::HeaderName::from_static("x-tenant-id")
            }
        };
    let claim = t.claim.clone().unwrap_or_else(|| "tenant".to_string());
    if claim.is_empty() {
        v.err("tenancy.claim", "the claim name must not be empty");
    }
    let quota_store = quota_store(v, t.quota_store.as_ref(), cx.base_dir);

    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut host_owner: HashMap<String, &str> = HashMap::new();
    let mut key_owner: HashMap<&str, &str> = HashMap::new();
    // BTreeMap order: a tenant's index is its rank by id.
    for (t_idx, (id, rt)) in raw.tenants.iter().enumerate() {
        let p = format!("tenants.{id}");
        check_id(v, &p, id);
        let mut hosts = Vec::with_capacity(rt.hosts.len());
        for (j, h) in rt.hosts.iter().enumerate() {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if h.is_empty() || h.contains([':', '/', ' ', '*']) {
                v.err(
                    format!("{p}.hosts[{j}]"),
                    format!(
                        "\"{h}\" is not a host name (write it without scheme, port or wildcard)"
                    ),
                );
            }
            if let Some(other) = host_owner.insert(h.clone(), id) {
                v.err_hint(
                    format!("{p}.hosts[{j}]"),
                    format!("host `{h}` already belongs to tenant `{other}`"),
                    "a host identifies one tenant: list it under one tenant only",
                );
            }
            hosts.push(h);
        }
        for (j, k) in rt.api_keys.iter().enumerate() {
            let names: Vec<&str> = cx
                .api_keys
                .map(|a| a.keys.iter().map(|e| e.name.as_str()).collect())
                .unwrap_or_default();
            if !names.contains(&k.as_str()) {
                let hint = match cx.api_keys {
                    None => "add a top-level \"api_keys\" section with this key".to_string(),
                    Some(_) => did_you_mean(k, names.iter().copied())
                        .unwrap_or_else(|| "list the name of a key under \"api_keys.keys\"".into()),
                };
                v.err_hint(
                    format!("{p}.api_keys[{j}]"),
                    format!("`{k}` is not a configured API key"),
                    hint,
                );
            }
            if let Some(other) = key_owner.insert(k.as_str(), id) {
                v.err_hint(
                    format!("{p}.api_keys[{j}]"),
                    format!("API key `{k}` already belongs to tenant `{other}`"),
                    "a key identifies one tenant: list it under one tenant only",
                );
            }
        }
        let mut own = Vec::with_capacity(rt.routes.len());
        for (j, r) in rt.routes.iter().enumerate() {
            let rc = route(
                v,
                &format!("{p}.routes[{j}]"),
                r,
                cx.routes,
                seen,
                Some(t_idx),
            );
            own.push(routes.len());
            routes.push(rc);
        }
        let rate_limit = rt
            .rate_limits
            .as_ref()
            .and_then(|r| super::rate_limiting::rate(v, &format!("{p}.rate_limits"), r));
        let quotas = rt
            .quotas
            .as_ref()
            .and_then(|q| quotas(v, &format!("{p}.quotas"), q));
        tenants.push(TenantConfig {
            id: id.clone(),
            hosts,
            api_keys: rt.api_keys.clone(),
            routes: own,
            rate_limit,
            quotas,
        });
    }
    if identify_by.contains(&IdentifyBy::ApiKey) && cx.api_keys.is_none() && t.identify_by.is_some()
    {
        v.warnings.push(crate::config::ConfigError::new(
            "tenancy.identify_by",
            "`api_key` identifies nobody: there is no `api_keys` section",
        ));
    }
    Some(TenancyConfig {
        identify_by,
        header,
        claim,
        require: t.require.unwrap_or(false),
        quota_store,
        tenants,
        routers: Vec::new(),
    })
}

/// The `identify_by` list: known methods, each once; `jwt_claim` needs `jwt_validation`.
fn identify_by(v: &mut V, list: Option<&[String]>, has_jwt: bool) -> Vec<IdentifyBy> {
    let Some(list) = list else {
        let mut all = vec![IdentifyBy::ApiKey];
        if has_jwt {
            all.push(IdentifyBy::JwtClaim);
        }
        all.extend([IdentifyBy::Header, IdentifyBy::Host]);
        return all;
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let p = format!("tenancy.identify_by[{i}]");
        let method = match m.as_str() {
            "api_key" => IdentifyBy::ApiKey,
            "jwt_claim" => IdentifyBy::JwtClaim,
            "header" => IdentifyBy::Header,
            "host" => IdentifyBy::Host,
            other => {
                let hint = did_you_mean(other, IdentifyBy::NAMES.iter().copied())
                    .unwrap_or_else(|| format!("expected one of {}", IdentifyBy::NAMES.join(", ")));
                v.err_hint(p, format!("unknown identification method `{other}`"), hint);
                continue;
            }
        };
        if method == IdentifyBy::JwtClaim && !has_jwt {
            v.err_hint(
                p.clone(),
                "`jwt_claim` needs a top-level `jwt_validation` section",
                "add \"jwt_validation\", or remove \"jwt_claim\" from identify_by",
            );
        }
        if out.contains(&method) {
            v.err_hint(p, format!("`{m}` is listed twice"), "list each method once");
            continue;
        }
        out.push(method);
    }
    if list.is_empty() {
        v.err_hint(
            "tenancy.identify_by",
            "an empty list identifies no tenant",
            "omit `identify_by` to try api_key, jwt_claim, header and host",
        );
    }
    out
}

/// A tenant id: it names metrics series, Redis keys and admin API paths.
fn check_id(v: &mut V, p: &str, id: &str) {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        v.err_hint(
            p,
            format!("tenant id `{id}` must be 1 to 64 letters, digits, '-', '_' or '.'"),
            "tenant ids appear in metrics, URLs and store keys",
        );
    }
    if id == OTHER_TENANT {
        v.err_hint(
            p,
            "tenant id `other` is reserved: metrics label unconfigured tenants with it",
            "choose another id",
        );
    }
}

fn quotas(v: &mut V, p: &str, q: &RawQuotas) -> Option<QuotaConfig> {
    for (key, value) in [
        ("monthly_requests", q.monthly_requests),
        ("daily_requests", q.daily_requests),
    ] {
        if value == Some(0) {
            v.err_hint(
                format!("{p}.{key}"),
                "must be at least 1",
                "omit it for no quota",
            );
            return None;
        }
    }
    if q.monthly_requests.is_none() && q.daily_requests.is_none() {
        v.err_hint(
            p,
            "`quotas` sets no quota",
            "add \"monthly_requests\" or \"daily_requests\", or remove `quotas`",
        );
        return None;
    }
    if let Some(w) = q.warn_at {
        if !(w > 0.0 && w < 1.0) {
            v.err_hint(
                format!("{p}.warn_at"),
                format!("warn_at must be between 0 and 1 (exclusive), found {w}"),
                "write the share of the quota from which to warn, e.g. 0.8",
            );
            return None;
        }
    }
    Some(QuotaConfig {
        monthly: q.monthly_requests,
        daily: q.daily_requests,
        warn_at: q.warn_at,
    })
}

fn quota_store(v: &mut V, s: Option<&RawQuotaStore>, base_dir: &Path) -> QuotaStoreConfig {
    const DEFAULT_FILE: &str = "kairos-quotas.db";
    let Some(s) = s else {
        return QuotaStoreConfig::File {
            path: super::resolve_path(base_dir, DEFAULT_FILE),
        };
    };
    let p = "tenancy.quota_store";
    match s.backend.as_str() {
        "file" => {
            if s.redis_url.is_some() || s.redis_tls.is_some() {
                v.err_hint(
                    format!("{p}.redis_url"),
                    "`redis_url` and `redis_tls` belong to the redis backend",
                    "remove it, or set \"backend\": \"redis\"",
                );
            }
            let path = s.path.as_deref().unwrap_or(DEFAULT_FILE);
            if path.is_empty() {
                v.err(format!("{p}.path"), "the path must not be empty");
            }
            QuotaStoreConfig::File {
                path: super::resolve_path(base_dir, path),
            }
        }
        "redis" => {
            if s.path.is_some() {
                v.err_hint(
                    format!("{p}.path"),
                    "`path` belongs to the file backend",
                    "remove it, or set \"backend\": \"file\"",
                );
            }
            let key_prefix = s.key_prefix.clone().unwrap_or_else(|| "kairos:".into());
            let (url, tls, _) = super::redis::connection(
                v,
                p,
                &s.redis_url,
                &s.redis_tls,
                Some(&key_prefix),
                base_dir,
                "the redis backend needs `redis_url`",
            );
            QuotaStoreConfig::Redis {
                url,
                tls,
                key_prefix,
            }
        }
        "memory" => QuotaStoreConfig::Memory,
        other => {
            let hint = did_you_mean(other, ["file", "redis", "memory"])
                .unwrap_or_else(|| "expected one of file, redis, memory".into());
            v.err_hint(
                format!("{p}.backend"),
                format!("unknown quota store `{other}`"),
                hint,
            );
            QuotaStoreConfig::Memory
        }
    }
}

/// Each tenant's own route table, built only when everything else is valid.
pub(super) fn compile(v: &mut V, tenancy: &mut TenancyConfig, routes: &[RouteConfig]) {
    if !v.errors.is_empty() {
        return;
    }
    for (i, t) in tenancy.tenants.iter().enumerate() {
        let path_of = |r: usize| {
            let j = t.routes.iter().position(|&x| x == r).unwrap_or(0);
            format!("tenants.{}.routes[{j}].path", t.id)
        };
        match Router::build_for(routes, Some(i), &path_of) {
            Ok(r) => tenancy.routers.push(Arc::new(r)),
            Err(errs) => v.errors.extend(errs),
        }
    }
}
