//! The settings every Redis user shares: `redis_url` (one node, Sentinel, Cluster; checked
//! without connecting) and its sibling `redis_tls` (the CA and client certificate files).

use super::V;
use crate::base::redis::{Target, TlsFiles};
use crate::config::model::Secret;
use crate::config::raw::RawRedisTls;
use std::path::Path;

/// The URL forms, for hints.
const FORMS: &str = "write redis://[user:password@]host:port[/db], rediss:// for TLS, \
                     redis+sentinel://host:port[,host:port]/MASTER_NAME or \
                     redis+cluster://host:port[,host:port]";

/// One Redis user's connection settings under `p` (`rate_limiting`, `caching`,
/// `tenancy.quota_store`): the URL (`missing` is the error when it is absent) and the TLS
/// files.
/// `key_prefix`, when the user has one, must leave room for a Cluster's hash tag.
pub(super) fn connection(
    v: &mut V,
    p: &str,
    url: &Option<String>,
    tls: &Option<RawRedisTls>,
    key_prefix: Option<&str>,
    base_dir: &Path,
    missing: &str,
) -> (Secret, Option<TlsFiles>, Option<Target>) {
    let target = match url {
        None => {
            v.err_hint(
                format!("{p}.redis_url"),
                missing,
                "add \"redis_url\": \"redis://127.0.0.1:6379\" (or \"${REDIS_URL}\")",
            );
            None
        }
        Some(u) => match Target::parse(u) {
            Ok(t) => Some(t),
            Err(e) => {
                v.err_hint(format!("{p}.redis_url"), e, FORMS);
                None
            }
        },
    };
    if let (Some(t), Some(prefix)) = (&target, key_prefix) {
        if t.is_cluster() && !crate::base::redis::target::cluster_prefix_ok(prefix) {
            v.err_hint(
                format!("{p}.key_prefix"),
                "on a Redis Cluster the key prefix must not hold `{` or `}`: the gateway puts \
                 a hash tag after it so that the keys of one decision share a slot",
                "remove the braces",
            );
        }
    }
    let files = tls.as_ref().map(|t| {
        let files = TlsFiles {
            ca_file: t
                .ca_file
                .as_deref()
                .map(|f| super::resolve_path(base_dir, f)),
            cert_file: t
                .cert_file
                .as_deref()
                .map(|f| super::resolve_path(base_dir, f)),
            key_file: t
                .key_file
                .as_deref()
                .map(|f| super::resolve_path(base_dir, f)),
        };
        if target.as_ref().is_some_and(|t| !t.tls()) {
            v.err_hint(
                format!("{p}.redis_tls"),
                "`redis_tls` applies only to a TLS URL",
                "write rediss:// (or rediss+sentinel://, rediss+cluster://), or remove redis_tls",
            );
        }
        if files.cert_file.is_some() != files.key_file.is_some() {
            v.err_hint(
                format!("{p}.redis_tls"),
                "a client certificate needs both `cert_file` and `key_file`",
                "name both files, or neither",
            );
        }
        for (name, f) in [
            ("ca_file", &files.ca_file),
            ("cert_file", &files.cert_file),
            ("key_file", &files.key_file),
        ] {
            if let Some(f) = f {
                if let Err(e) = std::fs::metadata(f) {
                    v.err_hint(
                        format!("{p}.redis_tls.{name}"),
                        format!("cannot read {}: {e}", f.display()),
                        "a PEM file; a relative path is relative to the config file",
                    );
                }
            }
        }
        files
    });
    let url = url.clone().unwrap_or_default();
    (Secret(url.into_bytes()), files, target)
}
