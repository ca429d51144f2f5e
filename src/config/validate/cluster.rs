//! `cluster`: the config store (an etcd key holding the shared config document).

use super::V;
use crate::config::model::ConfigStoreConfig;
use crate::config::raw::RawConfigStore;
use std::time::Duration;

/// Validates `cluster.config_store`; `None` when it has errors (recorded in `v`).
pub(super) fn config_store(v: &mut V, raw: &RawConfigStore) -> Option<ConfigStoreConfig> {
    let before = v.errors.len();
    if raw.kind != "etcd" {
        v.err_hint(
            "cluster.config_store.type",
            format!("unknown config store type `{}`", raw.kind),
            "the one supported type is \"etcd\"",
        );
    }
    if raw.endpoints.is_empty() {
        v.err_hint(
            "cluster.config_store.endpoints",
            "at least one endpoint is needed",
            "an etcd client URL such as \"http://127.0.0.1:2379\"",
        );
    }
    let mut endpoints = Vec::new();
    for (i, e) in raw.endpoints.iter().enumerate() {
        match parse_endpoint(e) {
            Ok(url) => endpoints.push(url),
            Err(reason) => v.err_hint(
                format!("cluster.config_store.endpoints[{i}]"),
                reason,
                "an etcd client URL such as \"http://127.0.0.1:2379\"",
            ),
        }
    }
    if raw.key.is_empty() {
        v.err_hint(
            "cluster.config_store.key",
            "the key must not be empty",
            "a key such as \"/kairos/config\"",
        );
    }
    let timeout = v.duration(
        "cluster.config_store.timeout",
        &raw.timeout,
        Duration::from_secs(2),
    );
    if timeout.is_zero() {
        v.err("cluster.config_store.timeout", "must be more than 0");
    }
    (v.errors.len() == before).then(|| ConfigStoreConfig {
        endpoints,
        key: raw.key.clone(),
        timeout,
    })
}

/// An etcd client URL: `http://host:port` (a path is not allowed: the API paths are the
/// gateway's). Returned without a trailing slash.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{s}`: https endpoints are not supported yet (etcd's client TLS)"
            ))
        }
        _ => return Err(format!("`{s}` must start with http://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{s}`: credentials in the URL are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{s}` must be only scheme, host and port"));
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::parse_endpoint;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert!(parse_endpoint("https://etcd:2379").is_err());
        assert!(parse_endpoint("127.0.0.1:2379").is_err());
        assert!(parse_endpoint("http://etcd:2379/v3").is_err());
        assert!(parse_endpoint("http://u:p@etcd:2379").is_err());
    }
}
