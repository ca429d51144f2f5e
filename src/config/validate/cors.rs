//! A `cors` object (top level or per route): defaults filled in, then checked by compiling it
//! with [`CorsPolicy::compile`], whose errors are placed under the object's path.

use super::V;
use crate::config::cors::{CorsConfig, CorsPolicy, DEFAULT_METHODS};
use crate::config::raw::RawCors;

pub(super) fn cors_config(v: &mut V, p: &str, c: &RawCors) -> CorsConfig {
    let strings = |x: &Option<Vec<String>>, d: &[&str]| {
        x.clone()
            .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
    };
    let cfg = CorsConfig {
        allowed_origins: c.allowed_origins.clone(),
        allowed_methods: strings(&c.allowed_methods, DEFAULT_METHODS),
        allowed_headers: strings(&c.allowed_headers, &["Content-Type", "Authorization"]),
        expose_headers: strings(&c.expose_headers, &[]),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        max_age: c.max_age,
    };
    if let Err(errors) = CorsPolicy::compile(&cfg) {
        for (sub, msg, hint) in errors {
            let path = if sub.is_empty() {
                p.to_string()
            } else {
                format!("{p}.{sub}")
            };
            match hint {
                Some(h) => v.err_hint(path, msg, h),
                None => v.err(path, msg),
            }
        }
    }
    cfg
}
