//! Raw config -> validated model. Collects every error (with its JSON path) instead of stopping
//! at the first, so an operator fixes a file in one pass. This module owns the error collector
//! `V`, the top-level [`validate`] that checks one section after another, and the small helpers
//! the sections share; each section's checks live in a file of their own.

mod auth;
mod caching;
mod cluster;
mod cors;
mod discovery;
mod observability;
mod rate_limiting;
mod redis;
mod routes;
mod server;
mod tenants;
mod transformations;
mod upstreams;

pub use discovery::SERVICE_ACCOUNT_DIR;
pub use observability::{parse_otlp_endpoint, EndpointError};
pub use routes::{
    parse_path_template, parse_rewrite, PathTemplate, PathTemplateError, RewriteError,
};
pub use tenants::OTHER_TENANT;
pub use transformations::{parse_template, replacement};
pub use upstreams::{parse_server_url, parse_status_range, ServerUrlError, StatusRangeError};

use super::error::ConfigError;
use super::model::Config;
use super::raw::RawConfig;
use super::units::{parse_duration, parse_size};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Collects the errors and warnings of one validation run.
#[derive(Default)]
struct V {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl V {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }
    fn err_hint(
        &mut self,
        path: impl Into<String>,
        msg: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.errors
            .push(ConfigError::new(path, msg).with_hint(hint));
    }
    /// Parses an optional value, recording the error (and using the default) if it is bad.
    fn parsed<T, E: Display>(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: T,
        parse: fn(&str) -> Result<T, E>,
    ) -> T {
        match v.as_deref().map(parse) {
            None => default,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                self.err(path, e.to_string());
                default
            }
        }
    }
    fn duration(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        self.parsed(path, v, default, parse_duration)
    }
    fn size(&mut self, path: &str, v: &Option<String>, default: u64) -> u64 {
        self.parsed(path, v, default, parse_size)
    }
}

/// Validates a raw config. `base_dir` resolves relative file paths.
pub fn validate(
    raw: RawConfig,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut v = V::default();

    check_version(&mut v, raw.version);
    let top_limits = raw
        .rate_limiting
        .as_ref()
        .map(|r| rate_limiting::rate_limiting_config(&mut v, r, base_dir));
    let jwt = raw
        .jwt_validation
        .as_ref()
        .map(|j| auth::jwt_config(&mut v, j));
    let api_keys = raw
        .api_keys
        .as_ref()
        .map(|k| auth::api_keys_config(&mut v, k));
    let cors = raw
        .cors
        .as_ref()
        .map(|c| cors::cors_config(&mut v, "cors", c));
    let server = server::server_config(&mut v, &raw.server, base_dir);
    let admin = observability::admin_config(&mut v, raw.admin.as_ref());
    let (upstreams, upstream_index) = upstreams::upstreams_config(&mut v, &raw.upstreams, base_dir);
    let key_sources = transformations::KeySources {
        header: api_keys.as_ref().map(|k| &k.header_name),
        query: api_keys.as_ref().and_then(|k| k.query_param.as_deref()),
    };
    let top_transforms = transformations::steps(
        &mut v,
        "transformations",
        &raw.transformations,
        (None, key_sources),
        0,
    );
    let caching = raw
        .caching
        .as_ref()
        .map(|c| caching::caching_config(&mut v, c, base_dir));
    let context = routes::RouteContext {
        cache: caching.as_ref(),
        top_transforms: &top_transforms,
        key_sources,
        upstreams: &upstream_index,
        upstream_configs: &upstreams,
        has_jwt: jwt.is_some(),
        has_api_keys: api_keys.is_some(),
        default_timeout: server.request_timeout,
    };
    let mut seen = routes::Seen::default();
    let mut routes = routes::routes_config(&mut v, &raw.routes, &context, &mut seen);
    let tenant_cx = tenants::TenantContext {
        routes: &context,
        api_keys: api_keys.as_ref(),
        base_dir,
    };
    let mut tenancy = tenants::tenancy_config(&mut v, &raw, &tenant_cx, &mut seen, &mut routes);
    let logging = observability::logging_config(&mut v, &raw.logging, base_dir);
    let tracing = raw
        .tracing
        .as_ref()
        .and_then(|t| observability::tracing_config(&mut v, t, env, base_dir));
    let auth_failures =
        rate_limiting::auth_failures(&mut v, raw.rate_limiting.as_ref(), top_limits.as_ref());
    let tenant_limits = tenancy
        .as_ref()
        .is_some_and(|t| t.tenants.iter().any(|t| t.rate_limit.is_some()));
    let rate_limiting =
        rate_limiting::effective(top_limits, api_keys.as_ref(), &routes, tenant_limits);
    let config_store = raw
        .cluster
        .as_ref()
        .and_then(|c| c.config_store.as_ref())
        .and_then(|s| cluster::config_store(&mut v, s, base_dir));
    let compiled = routes::compile(&mut v, &routes);
    if let Some(t) = &mut tenancy {
        tenants::compile(&mut v, t, &routes);
    }

    if v.errors.is_empty() {
        Ok(Config {
            compiled_routes: compiled,
            server,
            admin,
            upstreams,
            routes,
            logging,
            tracing,
            jwt,
            api_keys,
            cors,
            rate_limiting,
            auth_failures,
            caching: caching.map(|c| c.config),
            warnings: v.warnings,
            written: Default::default(),
            tenancy,
            config_store,
        })
    } else {
        Err(v.errors)
    }
}

fn check_version(v: &mut V, version: Option<u32>) {
    if let Some(ver) = version {
        if ver != 1 {
            v.err(
                "version",
                format!("unsupported config version {ver}; this gateway reads version 1"),
            );
        }
    }
}

/// A path from the config: absolute as written, relative to the config file's folder otherwise.
fn resolve_path(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// A count that must be at least 1; 0 is reported and replaced by the default.
fn positive(v: &mut V, path: String, value: Option<u32>, default: u32) -> u32 {
    match value {
        Some(0) => {
            v.err(path, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// A duration that must be more than zero; 0 is reported and replaced by the default.
fn nonzero_duration(
    v: &mut V,
    path: String,
    value: &Option<String>,
    default: Duration,
) -> Duration {
    let d = v.duration(&path, value, default);
    if d.is_zero() {
        v.err(path, "must be more than 0s");
        return default;
    }
    d
}
