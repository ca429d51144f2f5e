//! What a reload changes, by name: routes, upstreams and servers added, removed or changed,
//! settings sections changed, and settings that need a restart. Shown by the admin API's dry
//! run and PUT, and logged on every reload.

use crate::config::model::{Config, QuotaStoreConfig, RouteConfig};
use serde::Serialize;

/// What a reload changes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub upstreams_added: Vec<String>,
    pub upstreams_removed: Vec<String>,
    pub upstreams_changed: Vec<String>,
    /// `upstream url`.
    pub servers_added: Vec<String>,
    pub servers_removed: Vec<String>,
    /// Sections whose settings changed: jwt_validation, api_keys, rate_limiting, cors,
    /// tracing, admin.
    pub settings_changed: Vec<String>,
    /// Settings that only take effect on restart (listener, workers, logging).
    pub needs_restart: Vec<String>,
}

impl Diff {
    pub fn between(old: &Config, new: &Config) -> Diff {
        let mut d = Diff::default();
        // By name: 10,000 routes are compared in linear time.
        let old_routes: std::collections::HashMap<&str, &RouteConfig> =
            old.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        let new_names: std::collections::HashSet<&str> =
            new.routes.iter().map(|r| r.name.as_str()).collect();
        // The same route: equal in everything, its upstream compared by name (indexes shift
        // when upstreams are added or removed).
        let same = |o: &RouteConfig, r: &RouteConfig| {
            old.upstreams[o.upstream].name == new.upstreams[r.upstream].name
                && RouteConfig {
                    upstream: r.upstream,
                    ..o.clone()
                } == *r
        };
        for r in &new.routes {
            match old_routes.get(r.name.as_str()) {
                None => d.routes_added.push(r.name.clone()),
                Some(o) if !same(o, r) => d.routes_changed.push(r.name.clone()),
                Some(_) => {}
            }
        }
        for o in &old.routes {
            if !new_names.contains(o.name.as_str()) {
                d.routes_removed.push(o.name.clone());
            }
        }
        for u in &new.upstreams {
            let Some(o) = old.upstreams.iter().find(|o| o.name == u.name) else {
                d.upstreams_added.push(u.name.clone());
                d.servers_added
                    .extend(u.servers.iter().map(|s| format!("{} {}", u.name, s.url)));
                continue;
            };
            if format!("{o:?}") != format!("{u:?}") {
                d.upstreams_changed.push(u.name.clone());
            }
            for s in &u.servers {
                if !o.servers.iter().any(|x| x.url == s.url) {
                    d.servers_added.push(format!("{} {}", u.name, s.url));
                }
            }
            for s in &o.servers {
                if !u.servers.iter().any(|x| x.url == s.url) {
                    d.servers_removed.push(format!("{} {}", u.name, s.url));
                }
            }
        }
        for o in &old.upstreams {
            if !new.upstreams.iter().any(|u| u.name == o.name) {
                d.upstreams_removed.push(o.name.clone());
                d.servers_removed
                    .extend(o.servers.iter().map(|s| format!("{} {}", o.name, s.url)));
            }
        }
        let (a, b) = (&old.server, &new.server);
        let restart = [
            ("server.host", a.host != b.host),
            ("server.port", a.port != b.port),
            ("server.workers", a.workers != b.workers),
            (
                "server.tls",
                format!("{:?}", a.tls) != format!("{:?}", b.tls),
            ),
            ("server.h2c", a.h2c != b.h2c),
            ("server.keep_alive", a.keep_alive != b.keep_alive),
            (
                "server.max_connections",
                a.max_connections != b.max_connections,
            ),
            (
                "server.client_header_timeout",
                a.client_header_timeout != b.client_header_timeout,
            ),
            (
                "server.shutdown_timeout",
                a.shutdown_timeout != b.shutdown_timeout,
            ),
            (
                "logging",
                format!("{:?}", old.logging) != format!("{:?}", new.logging),
            ),
            (
                "admin.watch_config",
                old.admin.watch_config != new.admin.watch_config,
            ),
            ("cluster.config_store", old.config_store != new.config_store),
        ];
        // Compared through Debug (secrets print as redacted or as hashes; nothing of it is
        // shown, only the section names).
        let sections = [
            (
                "jwt_validation",
                format!("{:?}", old.jwt) != format!("{:?}", new.jwt),
            ),
            (
                "api_keys",
                format!("{:?}", old.api_keys) != format!("{:?}", new.api_keys),
            ),
            ("rate_limiting", old.rate_limiting != new.rate_limiting),
            ("cors", old.cors != new.cors),
            (
                "tracing",
                format!("{:?}", old.tracing) != format!("{:?}", new.tracing),
            ),
            (
                "admin",
                format!("{:?}", old.admin) != format!("{:?}", new.admin),
            ),
            ("tenancy", tenancy(old) != tenancy(new)),
            ("tenants", tenants(old) != tenants(new)),
        ];
        d.settings_changed = sections
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k.to_string())
            .collect();
        d.needs_restart = restart
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(k, _)| k.to_string())
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

/// The `tenancy` settings of a config, for comparison.
fn tenancy(c: &Config) -> Option<(String, String, bool, &QuotaStoreConfig)> {
    c.tenancy.as_ref().map(|t| {
        (
            format!("{:?} {}", t.identify_by, t.header),
            t.claim.clone(),
            t.require,
            &t.quota_store,
        )
    })
}

/// Each tenant's settings and its routes by name (route indexes shift between configs).
fn tenants(c: &Config) -> Vec<(String, String, Vec<&str>)> {
    c.tenancy
        .iter()
        .flat_map(|t| &t.tenants)
        .map(|t| {
            (
                t.id.clone(),
                format!(
                    "{:?} {:?} {:?} {:?}",
                    t.hosts, t.api_keys, t.rate_limit, t.quotas
                ),
                t.routes
                    .iter()
                    .filter_map(|&i| c.routes.get(i))
                    .map(|r| r.name.as_str())
                    .collect(),
            )
        })
        .collect()
}
