//! `cluster`: the config store (an etcd key holding the shared config document): endpoints,
//! key, credentials and TLS files.

use super::{resolve_path, V};
use crate::config::model::{ConfigStoreConfig, StoreTls};
use crate::config::raw::{RawConfigStore, RawStoreTls};
use std::path::Path;
use std::time::Duration;

/// Validates `cluster.config_store`; `None` when it has errors (recorded in `v`).
pub(super) fn config_store(
    v: &mut V,
    raw: &RawConfigStore,
    base_dir: &Path,
) -> Option<ConfigStoreConfig> {
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
    let credentials = match (&raw.username, &raw.password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
        (None, None) => None,
        _ => {
            v.err_hint(
                "cluster.config_store",
                "username and password go together (a non-empty username)",
                "give both, the password as \"${ETCD_PASSWORD}\"",
            );
            None
        }
    };
    let tls = raw
        .tls
        .as_ref()
        .map(|t| tls(v, t, base_dir))
        .unwrap_or_default();
    (v.errors.len() == before).then(|| ConfigStoreConfig {
        endpoints,
        key: raw.key.clone(),
        timeout,
        credentials,
        tls,
    })
}

/// The TLS files, each checked to hold what it should.
fn tls(v: &mut V, t: &RawStoreTls, base_dir: &Path) -> StoreTls {
    let p = "cluster.config_store.tls";
    let mut check = |field: &str, file: &Option<String>, want: fn(&[u8]) -> bool, what: &str| {
        let path = resolve_path(base_dir, file.as_deref()?);
        match std::fs::read(&path) {
            Ok(pem) if want(&pem) => {}
            Ok(_) => v.err(
                format!("{p}.{field}"),
                format!("{} contains no PEM {what}", path.display()),
            ),
            Err(e) => v.err(
                format!("{p}.{field}"),
                format!("cannot read {}: {e}", path.display()),
            ),
        }
        Some(path)
    };
    let ca_file = check("ca_file", &t.ca_file, has_certs, "certificate");
    let cert = check("cert_file", &t.cert_file, has_certs, "certificate");
    let key = check("key_file", &t.key_file, has_key, "private key");
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            v.err(p, "cert_file and key_file go together");
            None
        }
    };
    StoreTls { ca_file, identity }
}

fn has_certs(pem: &[u8]) -> bool {
    let mut r = pem;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut r).collect();
    certs.is_ok_and(|c| !c.is_empty())
}

fn has_key(pem: &[u8]) -> bool {
    let mut r = pem;
    matches!(rustls_pemfile::private_key(&mut r), Ok(Some(_)))
}

/// An etcd client URL: `http://host:port` or `https://host:port` (a path is not allowed: the API paths are the
/// gateway's). Returned without a trailing slash.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{s}`: credentials in the URL are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{s}` must be only scheme, host and port"));
    }
    Ok(format!("{scheme}://{authority}"))
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
        assert_eq!(
            parse_endpoint("https://etcd:2379").unwrap(),
            "https://etcd:2379"
        );
        assert!(parse_endpoint("127.0.0.1:2379").is_err());
        assert!(parse_endpoint("http://etcd:2379/v3").is_err());
        assert!(parse_endpoint("http://u:p@etcd:2379").is_err());
    }
}
