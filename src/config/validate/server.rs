//! The `server` section: the listener (host, port, workers, TLS files), its limits and timeouts,
//! and the trusted proxy ranges.

use super::{resolve_path, V};
use crate::config::model::{ServerConfig, TlsConfig};
use crate::config::raw::{RawServer, RawTls};
use ipnet::IpNet;
use std::path::Path;
use std::time::Duration;

/// A `trusted_proxies` entry that is neither an IP address nor a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{text}\" is not an IP address or CIDR range such as \"10.0.0.0/8\"")]
struct NetError {
    text: String,
}

pub(super) fn server_config(v: &mut V, s: &RawServer, base_dir: &Path) -> ServerConfig {
    let workers = match s.workers {
        Some(0) => {
            v.err("server.workers", "workers must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let max_body_size = v.size("server.max_body_size", &s.max_body_size, 10 << 20);
    let trusted = trusted_proxies(v, s.trusted_proxies.iter().flatten());
    let tls = s.tls.as_ref().map(|t| tls_config(v, t, base_dir));
    let host = s.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    if host.parse::<std::net::IpAddr>().is_err() && host != "localhost" {
        v.err_hint(
            "server.host",
            format!("\"{host}\" is not an IP address"),
            "use \"0.0.0.0\" to listen on all interfaces",
        );
    }
    let server = ServerConfig {
        host,
        port: s.port.unwrap_or(8080),
        workers,
        max_body_size,
        max_transform_body: v.size("server.max_transform_body", &s.max_transform_body, 1 << 20),
        request_timeout: v.duration(
            "server.request_timeout",
            &s.request_timeout,
            Duration::from_secs(30),
        ),
        trusted_proxies: trusted,
        tls,
        h2c: s.h2c.unwrap_or(true),
        shutdown_timeout: v.duration(
            "server.shutdown_timeout",
            &s.shutdown_timeout,
            Duration::from_secs(30),
        ),
        keep_alive: v.duration("server.keep_alive", &s.keep_alive, Duration::from_secs(75)),
        max_uri_length: v.size("server.max_uri_length", &s.max_uri_length, 8 << 10),
        max_header_size: v.size("server.max_header_size", &s.max_header_size, 32 << 10),
        max_connections: s.max_connections.unwrap_or(25_000),
        client_header_timeout: v.duration(
            "server.client_header_timeout",
            &s.client_header_timeout,
            Duration::from_secs(10),
        ),
        h2_max_concurrent_streams: match s.h2_max_concurrent_streams {
            Some(0) => {
                v.err(
                    "server.h2_max_concurrent_streams",
                    "h2_max_concurrent_streams must be at least 1",
                );
                1
            }
            Some(n) => n,
            None => 128,
        },
    };
    check_limits(v, &server);
    server
}

fn trusted_proxies<'a>(v: &mut V, entries: impl Iterator<Item = &'a String>) -> Vec<IpNet> {
    let mut trusted = Vec::new();
    for (i, t) in entries.enumerate() {
        match parse_net(t) {
            Ok(n) => trusted.push(n),
            Err(e) => v.err(format!("server.trusted_proxies[{i}]"), e.to_string()),
        }
    }
    trusted
}

fn parse_net(text: &str) -> Result<IpNet, NetError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| NetError {
            text: text.to_string(),
        })
}

fn tls_config(v: &mut V, t: &RawTls, base_dir: &Path) -> TlsConfig {
    let cfg = TlsConfig {
        cert: resolve_path(base_dir, &t.cert),
        key: resolve_path(base_dir, &t.key),
    };
    for (field, path) in [("cert", &cfg.cert), ("key", &cfg.key)] {
        if !path.is_file() {
            v.err(
                format!("server.tls.{field}"),
                format!("file {} does not exist", path.display()),
            );
        }
    }
    cfg
}

/// Checks between settings: connections per worker, and timeouts that must not be zero.
fn check_limits(v: &mut V, server: &ServerConfig) {
    if server.max_connections < server.workers {
        v.err_hint(
            "server.max_connections",
            format!(
                "max_connections {} is less than one connection per worker ({} workers)",
                server.max_connections, server.workers
            ),
            "raise it, or lower server.workers",
        );
    }
    if server.client_header_timeout.is_zero() {
        v.err(
            "server.client_header_timeout",
            "client_header_timeout must be more than 0s",
        );
    }
    if server.request_timeout.is_zero() {
        v.err(
            "server.request_timeout",
            "request_timeout must be more than 0s",
        );
    }
}
