//! The `upstreams` section: each upstream's servers (their URLs), load-balancing strategy,
//! timeouts and CA file, and its resilience settings: health checks, circuit breaker, outlier
//! detection and retries.

use super::{nonzero_duration, positive, resolve_path, V};
use crate::config::error::did_you_mean;
use crate::config::model::{
    BreakerConfig, HealthCheckConfig, MethodSet, OutlierConfig, RetryConfig, ServerEntry, Strategy,
    UpstreamConfig, UpstreamProtocol,
};
use crate::config::raw::{
    RawCircuitBreaker, RawHealthCheck, RawOutlierDetection, RawRetries, RawServerEntry, RawUpstream,
};
use rustls::pki_types::CertificateDer;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

const STRATEGIES: [&str; 7] = [
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "ip_hash",
    "random",
    "health_based",
    "p2c_ewma",
];

/// The smallest `max_response_header_size` (the HTTP/1 client's smallest buffer).
const MIN_RESPONSE_HEADER_SIZE: u64 = 8 << 10;

const RETRY_CONDITIONS: [&str; 4] = ["connect_error", "reset", "timeout", "5xx"];

/// Why an upstream server URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServerUrlError {
    #[error("\"{url}\" is not a valid URL: {source}")]
    NotAUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("scheme \"{scheme}\" in \"{url}\" is not supported (use http or https)")]
    UnsupportedScheme { scheme: String, url: String },
    #[error("\"{url}\" needs a scheme: write \"http://{url}\"")]
    NoScheme { url: String },
    #[error("\"{url}\" has no host")]
    NoHost { url: String },
    #[error("\"{url}\" must not contain credentials")]
    Credentials { url: String },
    #[error(
        "\"{url}\" must not have a path or query; use the route's \"rewrite\" to change the path"
    )]
    HasPath { url: String },
    #[error("\"{url}\": {source}")]
    BadAuthority {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("\"{url}\": {source}")]
    BadHostHeader {
        url: String,
        source: http::header::InvalidHeaderValue,
    },
}

/// Why an upstream's `tls.ca_file` gives no certificates.
#[derive(Debug, thiserror::Error)]
pub(super) enum CaFileError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Pem {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} contains no PEM certificate", .path.display())]
    Empty { path: PathBuf },
}

/// Why an `expected_status` is not a status range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusRangeError {
    #[error("`{text}` is not an HTTP status (100-599)")]
    NotAStatus { text: String },
    #[error("`{text}` is an empty range")]
    EmptyRange { text: String },
}

/// Validates every upstream; also returns the index of each name in the list, for routes.
pub(super) fn upstreams_config<'a>(
    v: &mut V,
    raw: &'a BTreeMap<String, RawUpstream>,
    base_dir: &Path,
) -> (Vec<UpstreamConfig>, HashMap<&'a str, usize>) {
    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, u) in raw {
        let upstream = upstream(v, name, u, base_dir);
        upstream_index.insert(name.as_str(), upstreams.len());
        upstreams.push(upstream);
    }
    (upstreams, upstream_index)
}

fn upstream(v: &mut V, name: &str, u: &RawUpstream, base_dir: &Path) -> UpstreamConfig {
    let p = format!("upstreams.{name}");
    let discovery = match (&u.servers, &u.discovery) {
        (Some(_), Some(_)) => {
            v.err_hint(
                format!("{p}.discovery"),
                "an upstream takes `servers` or `discovery`, not both",
                "remove `servers` to let the discovery source find them, or remove `discovery`",
            );
            None
        }
        (None, None) => {
            v.err_hint(
                format!("{p}.servers"),
                "an upstream needs at least one server",
                "list them in \"servers\", or find them with \"discovery\"",
            );
            None
        }
        (Some(list), None) => {
            if list.is_empty() {
                v.err(
                    format!("{p}.servers"),
                    "an upstream needs at least one server",
                );
            }
            None
        }
        (None, Some(d)) => super::discovery::discovery(v, &format!("{p}.discovery"), d, base_dir),
    };
    let servers = servers(v, &p, u.servers.as_deref().unwrap_or_default());
    let strategy = strategy(v, &p, u);
    let attempt_timeout = u.attempt_timeout.as_ref().map(|_| {
        v.duration(
            &format!("{p}.attempt_timeout"),
            &u.attempt_timeout,
            Duration::from_secs(30),
        )
    });
    if attempt_timeout.is_some_and(|d| d.is_zero()) {
        v.err(
            format!("{p}.attempt_timeout"),
            "attempt_timeout must be more than 0s",
        );
    }
    let health_check = u
        .health_check
        .as_ref()
        .map(|h| health_check(v, &format!("{p}.health_check"), h));
    let circuit_breaker = u
        .circuit_breaker
        .as_ref()
        .map(|b| circuit_breaker(v, &format!("{p}.circuit_breaker"), b));
    let outlier = outlier_detection(
        v,
        &format!("{p}.outlier_detection"),
        u.outlier_detection.as_ref(),
    );
    let retries = match &u.retries {
        None => RetryConfig::default(),
        Some(r) => retries(v, &format!("{p}.retries"), r),
    };
    let connect_timeout = v.duration(
        &format!("{p}.connect_timeout"),
        &u.connect_timeout,
        Duration::from_secs(2),
    );
    if connect_timeout.is_zero() {
        v.err(
            format!("{p}.connect_timeout"),
            "connect_timeout must be more than 0s",
        );
    }
    let tls_roots = tls_roots(v, &p, u, base_dir);
    let max_response_header_size = v.size(
        &format!("{p}.max_response_header_size"),
        &u.max_response_header_size,
        64 << 10,
    );
    if max_response_header_size < MIN_RESPONSE_HEADER_SIZE {
        v.err(
            format!("{p}.max_response_header_size"),
            "max_response_header_size must be at least \"8KB\"",
        );
    }
    let protocol = protocol(v, &p, u, &servers, discovery.as_ref().map(|d| d.https));
    if health_check
        .as_ref()
        .is_some_and(|h| h.grpc_service.is_some())
    {
        let https = servers
            .iter()
            .map(|s| s.https)
            .chain(discovery.as_ref().map(|d| d.https));
        if !https.into_iter().all(|h| protocol.may_use_h2(h)) {
            v.err_hint(
                format!("{p}.health_check.grpc_service"),
                "gRPC health checks need HTTP/2 to the servers",
                "set the upstream's protocol to \"h2c\" (http servers) or \"h2\" (https)",
            );
        }
    }
    UpstreamConfig {
        name: name.to_string(),
        servers,
        discovery,
        strategy,
        connect_timeout,
        tls_roots,
        attempt_timeout,
        health_check,
        circuit_breaker,
        outlier,
        retries,
        max_response_header_size: usize::try_from(max_response_header_size)
            .unwrap_or(usize::MAX)
            .max(MIN_RESPONSE_HEADER_SIZE as usize),
        protocol,
    }
}

/// The `protocol`, checked against the servers' schemes: "h2" is negotiated in the TLS
/// handshake (https only), "h2c" is HTTP/2 on plaintext TCP (http only). `discovered_https`
/// is the scheme of the servers a discovery source finds.
fn protocol(
    v: &mut V,
    p: &str,
    u: &RawUpstream,
    servers: &[ServerEntry],
    discovered_https: Option<bool>,
) -> UpstreamProtocol {
    let Some(name) = u.protocol.as_deref() else {
        return UpstreamProtocol::Http1;
    };
    let names = UpstreamProtocol::ALL.map(UpstreamProtocol::as_str);
    let Some(protocol) = UpstreamProtocol::parse(name) else {
        let hint = did_you_mean(name, names)
            .unwrap_or_else(|| format!("expected one of \"{}\"", names.join("\", \"")));
        v.err_hint(
            format!("{p}.protocol"),
            format!("unknown protocol `{name}`"),
            hint,
        );
        return UpstreamProtocol::Http1;
    };
    let schemes = servers
        .iter()
        .map(|s| (s.https, s.url.as_str()))
        .chain(discovered_https.map(|h| (h, "the discovered servers")));
    for (https, url) in schemes {
        match (protocol, https) {
            (UpstreamProtocol::H2, false) => {
                v.err_hint(
                    format!("{p}.protocol"),
                    format!("protocol \"h2\" is HTTP/2 over TLS, but {url} is plaintext http"),
                    "use \"h2c\" for HTTP/2 without TLS, or https:// servers",
                );
                break;
            }
            (UpstreamProtocol::H2c, true) => {
                v.err_hint(
                    format!("{p}.protocol"),
                    format!("protocol \"h2c\" is HTTP/2 without TLS, but {url} is https"),
                    "use \"h2\" (or \"auto\") for HTTP/2 over TLS, or http:// servers",
                );
                break;
            }
            _ => {}
        }
    }
    protocol
}

fn servers(v: &mut V, p: &str, entries: &[RawServerEntry]) -> Vec<ServerEntry> {
    let mut servers = Vec::new();
    for (i, se) in entries.iter().enumerate() {
        let sp = format!("{p}.servers[{i}]");
        let weight = se.weight.unwrap_or(1);
        if weight == 0 || weight > 1000 {
            v.err_hint(
                format!("{sp}.weight"),
                format!("weight {weight} is out of range"),
                "use a weight from 1 to 1000; remove the server to take it out",
            );
        }
        match parse_server_url(&se.url) {
            Ok((https, authority, host_header, url)) => {
                if servers.iter().any(|s: &ServerEntry| s.url == url) {
                    v.err(format!("{sp}.url"), format!("server {url} is listed twice"));
                }
                servers.push(ServerEntry {
                    url,
                    https,
                    // Without an IPv6 address's brackets (as `server.address` wants it).
                    host: authority
                        .host()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                    port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
                    authority,
                    host_header,
                    weight: weight.clamp(1, 1000),
                })
            }
            Err(e) => v.err(format!("{sp}.url"), e.to_string()),
        }
    }
    servers
}

fn strategy(v: &mut V, p: &str, u: &RawUpstream) -> Strategy {
    match u
        .load_balancing
        .as_ref()
        .and_then(|l| l.strategy.as_deref())
    {
        None => Strategy::RoundRobin,
        Some(name) => Strategy::parse(name).unwrap_or_else(|| {
            let hint = did_you_mean(name, STRATEGIES)
                .unwrap_or_else(|| format!("expected one of {}", STRATEGIES.join(", ")));
            v.err_hint(
                format!("{p}.load_balancing.strategy"),
                format!("unknown strategy `{name}`"),
                hint,
            );
            Strategy::RoundRobin
        }),
    }
}

/// The certificates of `tls.ca_file`, when one is given and readable.
fn tls_roots(
    v: &mut V,
    p: &str,
    u: &RawUpstream,
    base_dir: &Path,
) -> Option<Vec<CertificateDer<'static>>> {
    let f = u.tls.as_ref().and_then(|t| t.ca_file.as_ref())?;
    match read_ca_file(&resolve_path(base_dir, f)) {
        Ok(certs) => Some(certs),
        Err(e) => {
            v.err(format!("{p}.tls.ca_file"), e.to_string());
            None
        }
    }
}

/// Parses an upstream server URL into its runtime form.
pub fn parse_server_url(
    url: &str,
) -> Result<(bool, http::uri::Authority, http::HeaderValue, String), ServerUrlError> {
    let owned = || url.to_string();
    let uri: http::Uri = url.parse().map_err(|source| ServerUrlError::NotAUrl {
        url: owned(),
        source,
    })?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(ServerUrlError::UnsupportedScheme {
                scheme: other.to_string(),
                url: owned(),
            })
        }
        None => return Err(ServerUrlError::NoScheme { url: owned() }),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| ServerUrlError::NoHost { url: owned() })?;
    if auth.as_str().contains('@') {
        return Err(ServerUrlError::Credentials { url: owned() });
    }
    if auth.host().is_empty() {
        return Err(ServerUrlError::NoHost { url: owned() });
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ServerUrlError::HasPath { url: owned() });
    }
    let default_port = if https { 443 } else { 80 };
    let port = auth.port_u16().unwrap_or(default_port);
    let host = auth.host();
    let authority: http::uri::Authority =
        format!("{host}:{port}")
            .parse()
            .map_err(|source| ServerUrlError::BadAuthority {
                url: owned(),
                source,
            })?;
    let host_header = if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let host_header = http::HeaderValue::from_str(&host_header).map_err(|source| {
        ServerUrlError::BadHostHeader {
            url: owned(),
            source,
        }
    })?;
    let scheme = if https { "https" } else { "http" };
    Ok((
        https,
        authority,
        host_header,
        format!("{scheme}://{host}:{port}"),
    ))
}

pub(super) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| CaFileError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn health_check(v: &mut V, p: &str, h: &RawHealthCheck) -> HealthCheckConfig {
    let path = h.path.clone().unwrap_or_else(|| "/health".into());
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        v.err_hint(
            format!("{p}.path"),
            format!("`{path}` is not a request path"),
            "write a path starting with /, such as \"/health\"",
        );
    }
    let interval = nonzero_duration(
        v,
        format!("{p}.interval"),
        &h.interval,
        Duration::from_secs(10),
    );
    let timeout = nonzero_duration(
        v,
        format!("{p}.timeout"),
        &h.timeout,
        Duration::from_secs(2),
    );
    if timeout > interval {
        v.err_hint(
            format!("{p}.timeout"),
            "timeout is longer than interval",
            "a check must end before the next one starts; lower the timeout",
        );
    }
    let expected_status = match h.expected_status.as_deref() {
        None => 200..=399,
        Some(text) => match parse_status_range(text) {
            Ok(r) => r,
            Err(e) => {
                v.err_hint(
                    format!("{p}.expected_status"),
                    e.to_string(),
                    "write \"200-399\" or \"204\"",
                );
                200..=399
            }
        },
    };
    HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_threshold: positive(v, format!("{p}.healthy_threshold"), h.healthy_threshold, 2),
        unhealthy_threshold: positive(
            v,
            format!("{p}.unhealthy_threshold"),
            h.unhealthy_threshold,
            3,
        ),
        expected_status,
        grpc_service: h.grpc_service.clone(),
    }
}

/// "200-399" or "204": statuses from 100 to 599.
pub fn parse_status_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, StatusRangeError> {
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| StatusRangeError::NotAStatus {
                text: s.trim().to_string(),
            })
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (status(a)?, status(b)?),
        None => {
            let s = status(text)?;
            (s, s)
        }
    };
    if lo > hi {
        return Err(StatusRangeError::EmptyRange {
            text: text.to_string(),
        });
    }
    Ok(lo..=hi)
}

fn circuit_breaker(v: &mut V, p: &str, b: &RawCircuitBreaker) -> BreakerConfig {
    let d = BreakerConfig::default();
    let pct = b
        .error_percentage_threshold
        .unwrap_or(d.error_percentage_threshold);
    if !(pct > 0.0 && pct <= 100.0) {
        v.err(
            format!("{p}.error_percentage_threshold"),
            format!("{pct} is not a percentage from above 0 to 100"),
        );
    }
    BreakerConfig {
        failure_threshold: positive(
            v,
            format!("{p}.failure_threshold"),
            b.failure_threshold,
            d.failure_threshold,
        ),
        recovery_timeout: nonzero_duration(
            v,
            format!("{p}.recovery_timeout"),
            &b.recovery_timeout,
            d.recovery_timeout,
        ),
        minimum_throughput: positive(
            v,
            format!("{p}.minimum_throughput"),
            b.minimum_throughput,
            d.minimum_throughput,
        ),
        error_percentage_threshold: pct.clamp(0.0, 100.0),
        window: nonzero_duration(v, format!("{p}.window"), &b.window, d.window),
        half_open_requests: positive(
            v,
            format!("{p}.half_open_requests"),
            b.half_open_requests,
            d.half_open_requests,
        ),
    }
}

fn outlier_detection(v: &mut V, p: &str, o: Option<&RawOutlierDetection>) -> Option<OutlierConfig> {
    let Some(o) = o else {
        return Some(OutlierConfig {
            consecutive_gateway_failures: 5,
            consecutive_5xx: 0,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        });
    };
    let base = nonzero_duration(
        v,
        format!("{p}.base_ejection_time"),
        &o.base_ejection_time,
        Duration::from_secs(30),
    );
    let max = nonzero_duration(
        v,
        format!("{p}.max_ejection_time"),
        &o.max_ejection_time,
        Duration::from_secs(300),
    );
    if max < base {
        v.err(
            format!("{p}.max_ejection_time"),
            "max_ejection_time is shorter than base_ejection_time",
        );
    }
    let pct = o.max_ejection_percent.unwrap_or(50);
    if pct > 100 {
        v.err(
            format!("{p}.max_ejection_percent"),
            format!("{pct} is more than 100 percent"),
        );
    }
    let cfg = OutlierConfig {
        consecutive_gateway_failures: o.consecutive_gateway_failures.unwrap_or(5),
        consecutive_5xx: o.consecutive_5xx.unwrap_or(0),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct.min(100),
    };
    let off = cfg.consecutive_gateway_failures == 0 && cfg.consecutive_5xx == 0;
    (o.enabled != Some(false) && !off).then_some(cfg)
}

fn retries(v: &mut V, p: &str, r: &RawRetries) -> RetryConfig {
    let d = RetryConfig::default();
    let mut cfg = RetryConfig {
        attempts: r.attempts.unwrap_or(d.attempts),
        backoff: v.duration(&format!("{p}.backoff"), &r.backoff, d.backoff),
        max_backoff: v.duration(&format!("{p}.max_backoff"), &r.max_backoff, d.max_backoff),
        ..d
    };
    if cfg.attempts > 10 {
        v.err_hint(
            format!("{p}.attempts"),
            format!("{} retries per request is too many", cfg.attempts),
            "use at most 10; the retry budget limits retries across requests anyway",
        );
    }
    if cfg.max_backoff < cfg.backoff {
        v.err(
            format!("{p}.max_backoff"),
            "max_backoff is shorter than backoff",
        );
    }
    match &r.on {
        Some(on) => retry_conditions(v, p, on, &mut cfg),
        None => cfg.on_status = vec![502, 503, 504],
    }
    if let Some(methods) = &r.methods {
        let mut set = 0u16;
        for (i, m) in methods.iter().enumerate() {
            match MethodSet::bit(&m.to_ascii_uppercase()) {
                Some(b) => set |= b,
                None => v.err(format!("{p}.methods[{i}]"), format!("unknown method `{m}`")),
            }
        }
        cfg.methods = MethodSet(set);
    }
    let pct = r.budget_percent.unwrap_or(20.0);
    if !(0.0..=100.0).contains(&pct) {
        v.err(
            format!("{p}.budget_percent"),
            format!("{pct} is not a percentage from 0 to 100"),
        );
    }
    cfg.budget_ratio = pct.clamp(0.0, 100.0) / 100.0;
    cfg.min_retries_per_second = r.min_retries_per_second.unwrap_or(d.min_retries_per_second);
    cfg
}

/// The `on` list: what a retry is for, replacing the defaults.
fn retry_conditions(v: &mut V, p: &str, on: &[String], cfg: &mut RetryConfig) {
    cfg.on_connect_error = false;
    cfg.on_reset = false;
    for (i, c) in on.iter().enumerate() {
        match c.as_str() {
            "connect_error" => cfg.on_connect_error = true,
            "reset" => cfg.on_reset = true,
            "timeout" => cfg.on_timeout = true,
            "5xx" => cfg.on_status.extend(500..=599),
            other => match other.parse::<u16>() {
                Ok(n) if (400..=599).contains(&n) => cfg.on_status.push(n),
                _ => {
                    let hint = did_you_mean(other, RETRY_CONDITIONS).unwrap_or_else(|| {
                        "use connect_error, reset, timeout, 5xx or a status from 400 to 599".into()
                    });
                    v.err_hint(
                        format!("{p}.on[{i}]"),
                        format!("unknown retry condition `{other}`"),
                        hint,
                    );
                }
            },
        }
    }
    cfg.on_status.sort_unstable();
    cfg.on_status.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let (https, auth, host, url) = parse_server_url("http://127.0.0.1:9001").unwrap();
        assert!(!https);
        assert_eq!(auth.as_str(), "127.0.0.1:9001");
        assert_eq!(host, "127.0.0.1:9001");
        assert_eq!(url, "http://127.0.0.1:9001");
        let (https, auth, host, _) = parse_server_url("https://api.example.com").unwrap();
        assert!(https);
        assert_eq!(auth.as_str(), "api.example.com:443");
        assert_eq!(host, "api.example.com");
        assert!(parse_server_url("127.0.0.1:9001").is_err());
        assert!(parse_server_url("ftp://x").is_err());
        assert!(parse_server_url("http://x/path")
            .unwrap_err()
            .to_string()
            .contains("rewrite"));
    }
}
