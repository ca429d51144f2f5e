//! An upstream's `discovery` section: which source (dns, consul, kubernetes, eureka) and the
//! settings of that source. A setting of another source is an error naming the source it
//! belongs to, so a copied block does not silently do something else.

use super::{nonzero_duration, resolve_path, V};
use crate::config::error::did_you_mean;
use crate::config::model::{DiscoveryConfig, DiscoverySource, DnsRecord, Secret};
use crate::config::raw::RawDiscovery;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const KINDS: [&str; 4] = ["dns", "consul", "kubernetes", "eureka"];

/// Where the pod's service account is mounted (token, CA and namespace).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The longest blocking query Consul serves (its own cap is 10 minutes).
const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// Validates `upstreams.NAME.discovery` (at path `p`).
pub(super) fn discovery(
    v: &mut V,
    p: &str,
    d: &RawDiscovery,
    base_dir: &Path,
) -> Option<DiscoveryConfig> {
    let kind = d.kind.as_str();
    if !KINDS.contains(&kind) {
        let hint = did_you_mean(kind, KINDS)
            .unwrap_or_else(|| format!("expected one of {}", KINDS.join(", ")));
        v.err_hint(
            format!("{p}.type"),
            format!("unknown discovery type `{kind}`"),
            hint,
        );
        return None;
    }
    not_for(v, p, kind, d);
    let https = match d.scheme.as_deref() {
        None | Some("http") => false,
        Some("https") => true,
        Some(other) => {
            v.err_hint(
                format!("{p}.scheme"),
                format!("unknown scheme `{other}`"),
                "use \"http\" or \"https\"",
            );
            false
        }
    };
    let source = match kind {
        "dns" => dns(v, p, d),
        "consul" => consul(v, p, d),
        "kubernetes" => kubernetes(v, p, d, base_dir),
        _ => eureka(v, p, d),
    }?;
    Some(DiscoveryConfig { source, https })
}

/// Reports each setting given that `kind` does not take.
fn not_for(v: &mut V, p: &str, kind: &str, d: &RawDiscovery) {
    // (key, given, the types that take it)
    let keys: [(&str, bool, &[&str]); 19] = [
        ("name", d.name.is_some(), &["dns"]),
        ("record", d.record.is_some(), &["dns"]),
        ("port", d.port.is_some(), &["dns"]),
        ("resolvers", d.resolvers.is_some(), &["dns"]),
        ("refresh", d.refresh.is_some(), &["dns", "eureka"]),
        ("endpoint", d.endpoint.is_some(), &["consul", "eureka"]),
        (
            "service_name",
            d.service_name.is_some(),
            &["consul", "kubernetes"],
        ),
        ("health_check", d.health_check.is_some(), &["consul"]),
        ("tag", d.tag.is_some(), &["consul"]),
        ("datacenter", d.datacenter.is_some(), &["consul"]),
        ("token", d.token.is_some(), &["consul"]),
        ("wait", d.wait.is_some(), &["consul"]),
        ("namespace", d.namespace.is_some(), &["kubernetes"]),
        ("port_name", d.port_name.is_some(), &["kubernetes"]),
        ("api_server", d.api_server.is_some(), &["kubernetes"]),
        ("token_file", d.token_file.is_some(), &["kubernetes"]),
        ("ca_file", d.ca_file.is_some(), &["kubernetes"]),
        ("app", d.app.is_some(), &["eureka"]),
        (
            "scheme",
            d.scheme.is_some(),
            &["dns", "consul", "kubernetes", "eureka"],
        ),
    ];
    for (key, given, types) in keys {
        if given && !types.contains(&kind) {
            v.err_hint(
                format!("{p}.{key}"),
                format!("`{key}` is not a setting of {kind} discovery"),
                format!("`{key}` belongs to type {}", types.join(" or ")),
            );
        }
    }
}

fn required<'a>(v: &mut V, p: &str, key: &str, kind: &str, value: &'a Option<String>) -> &'a str {
    match value.as_deref() {
        Some(s) if !s.trim().is_empty() => s,
        Some(_) => {
            v.err(format!("{p}.{key}"), format!("`{key}` must not be empty"));
            ""
        }
        None => {
            v.err_hint(
                format!("{p}.{key}"),
                format!("{kind} discovery needs `{key}`"),
                format!("add \"{key}\" to the discovery section"),
            );
            ""
        }
    }
}

fn dns(v: &mut V, p: &str, d: &RawDiscovery) -> Option<DiscoverySource> {
    let name = required(v, p, "name", "dns", &d.name).to_string();
    let record = match d.record.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("A") => DnsRecord::A,
        Some("AAAA") => DnsRecord::Aaaa,
        Some("SRV") => DnsRecord::Srv,
        Some(other) => {
            v.err_hint(
                format!("{p}.record"),
                format!("unknown record type `{other}`"),
                "use \"A\", \"AAAA\" or \"SRV\"",
            );
            DnsRecord::A
        }
    };
    let port = match (record, d.port) {
        (DnsRecord::Srv, Some(_)) => {
            v.err_hint(
                format!("{p}.port"),
                "SRV records carry their own port",
                "remove `port`, or use record \"A\"",
            );
            0
        }
        (DnsRecord::Srv, None) => 0,
        (_, Some(0)) => {
            v.err(format!("{p}.port"), "port must be from 1 to 65535");
            0
        }
        (_, Some(port)) => port,
        (r, None) => {
            v.err_hint(
                format!("{p}.port"),
                format!("{} records carry no port", r.as_str()),
                "add \"port\": the servers' port, such as 8080",
            );
            0
        }
    };
    let mut resolvers = Vec::new();
    for (i, r) in d.resolvers.iter().flatten().enumerate() {
        let parsed = r.parse::<SocketAddr>().or_else(|_| {
            r.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(a) => resolvers.push(a),
            Err(_) => v.err_hint(
                format!("{p}.resolvers[{i}]"),
                format!("`{r}` is not an IP address with an optional port"),
                "write \"10.0.0.2\" or \"127.0.0.1:5353\" (\"[::1]:53\" for IPv6)",
            ),
        }
    }
    let refresh = nonzero_duration(
        v,
        format!("{p}.refresh"),
        &d.refresh,
        Duration::from_secs(30),
    );
    Some(DiscoverySource::Dns {
        name,
        record,
        port,
        resolvers,
        refresh,
    })
}

/// An http(s) base URL without query, returned without a trailing slash.
fn base_url(v: &mut V, path: String, url: &str) -> String {
    let ok = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
        .filter(|u| u.authority().is_some_and(|a| !a.host().is_empty()))
        .filter(|u| u.query().is_none());
    if ok.is_none() && !url.is_empty() {
        // A password in the userinfo is accepted (sent as basic auth) and never shown.
        let shown = crate::base::redact::url_without_userinfo(url);
        v.err_hint(
            path,
            format!("`{shown}` is not an http:// or https:// URL"),
            "write the URL with its scheme, such as \"http://127.0.0.1:8500\"",
        );
    }
    url.trim_end_matches('/').to_string()
}

fn consul(v: &mut V, p: &str, d: &RawDiscovery) -> Option<DiscoverySource> {
    let endpoint = required(v, p, "endpoint", "consul", &d.endpoint).to_string();
    let endpoint = base_url(v, format!("{p}.endpoint"), &endpoint);
    let service_name = required(v, p, "service_name", "consul", &d.service_name).to_string();
    let wait = nonzero_duration(v, format!("{p}.wait"), &d.wait, Duration::from_secs(55));
    if wait > MAX_CONSUL_WAIT {
        v.err_hint(
            format!("{p}.wait"),
            "wait is longer than Consul serves a blocking query",
            "use at most \"10m\"",
        );
    }
    Some(DiscoverySource::Consul {
        endpoint,
        service_name,
        passing: d.health_check.unwrap_or(true),
        tag: d.tag.clone(),
        datacenter: d.datacenter.clone(),
        token: d.token.as_ref().map(|t| Secret(t.as_bytes().to_vec())),
        wait: wait.min(MAX_CONSUL_WAIT),
    })
}

/// Whether `s` is a DNS-1123 label, as Kubernetes requires of namespace and service names:
/// 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit.
fn is_dns1123_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| alnum(c) || c == b'-')
        && b.first().copied().is_some_and(alnum)
        && b.last().copied().is_some_and(alnum)
}

/// Reports `value` at `p.key` unless it is a DNS-1123 label (it becomes part of the API path
/// and a label selector: anything else could never match).
fn dns1123(v: &mut V, p: &str, key: &str, value: &str) {
    if !value.is_empty() && !is_dns1123_label(value) {
        let lower = value.to_ascii_lowercase();
        let hint = if lower != value && is_dns1123_label(&lower) {
            format!("Kubernetes names are lowercase: write \"{lower}\"")
        } else {
            "use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter \
             or digit, as `kubectl get` shows the name"
                .to_string()
        };
        v.err_hint(
            format!("{p}.{key}"),
            format!("`{value}` is not a Kubernetes name (a DNS-1123 label)"),
            hint,
        );
    }
}

fn kubernetes(v: &mut V, p: &str, d: &RawDiscovery, base_dir: &Path) -> Option<DiscoverySource> {
    let service_name = required(v, p, "service_name", "kubernetes", &d.service_name).to_string();
    dns1123(v, p, "service_name", &service_name);
    if let Some(ns) = &d.namespace {
        dns1123(v, p, "namespace", ns);
        if ns.is_empty() {
            v.err(format!("{p}.namespace"), "`namespace` must not be empty");
        }
    }
    let api_server = d
        .api_server
        .as_deref()
        .map(|u| base_url(v, format!("{p}.api_server"), u));
    let file = |given: &Option<String>, default: &str| match given {
        Some(f) => resolve_path(base_dir, f),
        None => Path::new(SERVICE_ACCOUNT_DIR).join(default),
    };
    Some(DiscoverySource::Kubernetes {
        namespace: d.namespace.clone(),
        service_name,
        port_name: d.port_name.clone(),
        api_server,
        token_file: file(&d.token_file, "token"),
        token_file_given: d.token_file.is_some(),
        ca_file: file(&d.ca_file, "ca.crt"),
    })
}

fn eureka(v: &mut V, p: &str, d: &RawDiscovery) -> Option<DiscoverySource> {
    let endpoint = required(v, p, "endpoint", "eureka", &d.endpoint).to_string();
    let endpoint = base_url(v, format!("{p}.endpoint"), &endpoint);
    let app = required(v, p, "app", "eureka", &d.app).to_string();
    let refresh = nonzero_duration(
        v,
        format!("{p}.refresh"),
        &d.refresh,
        Duration::from_secs(30),
    );
    Some(DiscoverySource::Eureka {
        endpoint,
        app,
        refresh,
    })
}
