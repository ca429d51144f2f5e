//! What a `redis_url` names: one Redis (`redis://`, `rediss://`, `unix://`), a master found
//! through Sentinel (`redis+sentinel://host:port[,host:port]/MASTER[/DB]`, `rediss+sentinel://`
//! for TLS to the sentinels and the master) or a Cluster (`redis+cluster://host:port[,...]`,
//! `rediss+cluster://`); the TLS files of `redis_tls`; and the hash tag that puts the keys of
//! one decision in one Cluster slot. No error text here holds the URL: it may carry a password.

use std::path::PathBuf;

/// Where a Redis user's commands go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One node; the URL as the redis crate reads it.
    Single { url: String, tls: bool },
    /// The master that the sentinels name for `master`.
    Sentinel {
        /// (host, port) of each sentinel.
        sentinels: Vec<(String, u16)>,
        master: String,
        /// `redis://[user:password@]x/DB`: the credentials and database for the master.
        auth_url: String,
        tls: bool,
    },
    /// A Redis Cluster, found from these seed nodes (each a full URL with the credentials).
    Cluster { nodes: Vec<String>, tls: bool },
}

/// The port a sentinel listens on unless the URL says otherwise.
pub const SENTINEL_PORT: u16 = 26379;

/// `redis_tls`: the CA that signs the server certificates (else the system's roots), and the
/// client certificate and key for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Target {
    /// Reads `url` without connecting.
    pub fn parse(url: &str) -> Result<Target, &'static str> {
        let (scheme, rest) = url.split_once("://").ok_or(
            "`redis_url` has no scheme (redis://, rediss://, redis+sentinel://, redis+cluster://)",
        )?;
        match scheme {
            "redis" | "rediss" | "unix" => {
                redis::Client::open(url).map_err(|_| "`redis_url` is not a URL the redis client reads")?;
                Ok(Target::Single {
                    url: url.to_string(),
                    tls: scheme == "rediss",
                })
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme == "rediss+sentinel";
                let (userinfo, hosts, path) = split(rest);
                let mut parts = path.splitn(2, '/');
                let master = parts.next().unwrap_or_default();
                if master.is_empty() {
                    return Err("a Sentinel URL names the master: redis+sentinel://host:port[,host:port]/MASTER_NAME[/DB]");
                }
                let db = parts.next().filter(|d| !d.is_empty());
                if db.is_some_and(|d| d.parse::<i64>().is_err()) {
                    return Err("the database of a Sentinel URL is a number: .../MASTER_NAME/DB");
                }
                let sentinels = addresses(hosts, SENTINEL_PORT)?;
                let auth_url = format!(
                    "redis://{}127.0.0.1/{}",
                    userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
                    db.unwrap_or("0")
                );
                redis::Client::open(auth_url.as_str())
                    .map_err(|_| "the credentials of the Sentinel URL do not parse")?;
                Ok(Target::Sentinel {
                    sentinels,
                    master: crate::base::net::percent_decode(master)
                        .ok_or("the master name of the Sentinel URL does not decode")?,
                    auth_url,
                    tls,
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let tls = scheme == "rediss+cluster";
                let (userinfo, hosts, path) = split(rest);
                if !path.is_empty() && path != "0" {
                    return Err("a Cluster has only database 0: write redis+cluster://host:port[,host:port]");
                }
                let node_scheme = if tls { "rediss" } else { "redis" };
                let nodes = addresses(hosts, 6379)?
                    .into_iter()
                    .map(|(h, p)| {
                        let host = if h.contains(':') { format!("[{h}]") } else { h };
                        format!(
                            "{node_scheme}://{}{host}:{p}",
                            userinfo.map(|u| format!("{u}@")).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>();
                for n in &nodes {
                    redis::Client::open(n.as_str())
                        .map_err(|_| "a node of the Cluster URL does not parse")?;
                }
                Ok(Target::Cluster { nodes, tls })
            }
            _ => Err("`redis_url` must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"),
        }
    }

    /// Whether connections use TLS (and so `redis_tls` applies).
    pub fn tls(&self) -> bool {
        match self {
            Target::Single { tls, .. }
            | Target::Sentinel { tls, .. }
            | Target::Cluster { tls, .. } => *tls,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// What the target is, for logs and the readiness answer (no address, no credentials).
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Single { .. } => "single",
            Target::Sentinel { .. } => "sentinel",
            Target::Cluster { .. } => "cluster",
        }
    }
}

/// `[userinfo@]hosts[/path]` -> (userinfo, hosts, path).
fn split(rest: &str) -> (Option<&str>, &str, &str) {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts, path),
        None => (None, authority, path),
    }
}

/// `host:port,host:port` (`[v6]:port`; the port defaults to `default`).
fn addresses(hosts: &str, default: u16) -> Result<Vec<(String, u16)>, &'static str> {
    let mut out = Vec::new();
    for h in hosts.split(',').map(str::trim) {
        let (host, port) = if let Some(v6) = h.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host is written [addr]:port")?;
            (host, after.strip_prefix(':'))
        } else {
            match h.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (h, None),
            }
        };
        if host.is_empty() {
            return Err("a host of the URL is empty: write host:port[,host:port]");
        }
        let port = match port {
            None => default,
            Some(p) => p.parse().map_err(|_| "a port of the URL is not a number")?,
        };
        out.push((host.to_string(), port));
    }
    Ok(out)
}

/// The hash tag of `text` (`{` 16 hex digits `}`): keys that carry the same tag share a
/// Cluster slot whatever else they hold; no brace of the text can end the tag early.
pub fn hash_tag(text: &str) -> String {
    let h = crate::base::hash::hash(text);
    let mut out = String::with_capacity(18);
    out.push('{');
    for b in &h[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out.push('}');
    out
}

/// Whether `prefix` may start the keys of a Cluster user: a brace in it would take the
/// place of the hash tag that follows.
pub fn cluster_prefix_ok(prefix: &str) -> bool {
    !prefix.contains(['{', '}'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_nodes() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379"),
            Ok(Target::Single {
                url: "redis://127.0.0.1:6379".into(),
                tls: false
            })
        );
        assert!(Target::parse("rediss://:pw@h:6380/2").unwrap().tls());
        assert!(Target::parse("http://h").is_err());
        assert!(Target::parse("h:6379").is_err());
    }

    #[test]
    fn sentinels() {
        let t = Target::parse("redis+sentinel://:p%40ss@a:1,b,[::1]:3/my%20master/2").unwrap();
        assert_eq!(
            t,
            Target::Sentinel {
                sentinels: vec![
                    ("a".into(), 1),
                    ("b".into(), SENTINEL_PORT),
                    ("::1".into(), 3)
                ],
                master: "my master".into(),
                auth_url: "redis://:p%40ss@127.0.0.1/2".into(),
                tls: false,
            }
        );
        assert!(Target::parse("rediss+sentinel://a:1/m").unwrap().tls());
        assert!(Target::parse("redis+sentinel://a:1").is_err());
        assert!(Target::parse("redis+sentinel://a:1/m/x").is_err());
        assert!(Target::parse("redis+sentinel://a:x/m").is_err());
    }

    #[test]
    fn clusters() {
        assert_eq!(
            Target::parse("rediss+cluster://u:p@a:7000,b").unwrap(),
            Target::Cluster {
                nodes: vec!["rediss://u:p@a:7000".into(), "rediss://u:p@b:6379".into()],
                tls: true
            }
        );
        assert!(Target::parse("redis+cluster://a:1/3").is_err());
        assert!(Target::parse("redis+cluster://a:1,,b").is_err());
    }

    #[test]
    fn errors_never_hold_the_url() {
        for bad in [
            "redis+sentinel://:hunter2@a:x/m",
            "redis+cluster://:hunter2@a:1/3",
            "nope://:hunter2@a",
        ] {
            assert!(!Target::parse(bad).unwrap_err().contains("hunter2"));
        }
    }

    #[test]
    fn tags_are_brace_free_and_stable() {
        let t = hash_tag("te}n{ant");
        assert_eq!(t.len(), 18);
        assert_eq!(t.matches(['{', '}']).count(), 2);
        assert_eq!(t, hash_tag("te}n{ant"));
        assert_ne!(t, hash_tag("tenant"));
        assert!(cluster_prefix_ok("kairos:rl:"));
        assert!(!cluster_prefix_ok("kairos:{rl}:"));
    }
}
