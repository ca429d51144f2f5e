//! Route matching on a radix tree (matchit): the cost of a lookup grows with the path's length,
//! not with the number of routes. Routes are grouped by host; a host-specific route wins over
//! one without a host. Routes that share a path shape but not methods share one tree entry.

use crate::config::model::{MethodSet, RouteConfig};
use crate::config::validate::parse_path_template;
use crate::config::ConfigError;
use std::collections::HashMap;

pub struct Router {
    by_host: HashMap<String, matchit::Router<usize>>,
    any: matchit::Router<usize>,
    entries: Vec<Entry>,
}

/// All routes on one (host, path shape), in config order.
struct Entry {
    routes: Vec<(MethodSet, usize)>,
    allow: String,
}

/// The outcome of a lookup.
pub enum Lookup<'r, 'p> {
    Found {
        route: usize,
        params: matchit::Params<'r, 'p>,
    },
    /// The path matched but not the method; `allow` lists the methods that would.
    MethodNotAllowed {
        allow: &'r str,
    },
    NotFound,
}

impl Router {
    /// Builds the router; errors name the route (`routes[i].path`) that could not be added.
    pub fn build(routes: &[RouteConfig]) -> Result<Router, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut by_host: HashMap<String, matchit::Router<usize>> = HashMap::new();
        let mut any = matchit::Router::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut slots: HashMap<(Option<&str>, String), usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let template = match parse_path_template(&r.path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::new(format!("routes[{i}].path"), e));
                    continue;
                }
            };
            let key = (r.host.as_deref(), template.normalized.clone());
            if let Some(&slot) = slots.get(&key) {
                entries[slot].routes.push((r.methods, i));
                continue;
            }
            let tree = match &r.host {
                Some(h) => by_host.entry(h.clone()).or_default(),
                None => &mut any,
            };
            match tree.insert(template.normalized.clone(), entries.len()) {
                Ok(()) => {
                    slots.insert(key, entries.len());
                    entries.push(Entry { routes: vec![(r.methods, i)], allow: String::new() });
                }
                Err(e) => errors.push(
                    ConfigError::new(format!("routes[{i}].path"), format!("path \"{}\" cannot be routed: {}", r.path, denormalize(&e.to_string(), &template.params)))
                        .with_hint("two templates that match the same paths cannot be told apart; make one of them more specific"),
                ),
            }
        }
        for e in &mut entries {
            let all = e.routes.iter().fold(0u16, |acc, (m, _)| acc | m.0);
            e.allow = if all == MethodSet::ALL.0 {
                String::new()
            } else {
                MethodSet(all).names().join(", ")
            };
        }
        if errors.is_empty() {
            Ok(Router {
                by_host,
                any,
                entries,
            })
        } else {
            Err(errors)
        }
    }

    /// Whether any route is bound to a host (if not, the Host header need not be looked at).
    pub fn uses_hosts(&self) -> bool {
        !self.by_host.is_empty()
    }

    /// Finds the route for a request. `host` is the lower-case host name without port.
    pub fn lookup<'r, 'p>(
        &'r self,
        host: Option<&str>,
        path: &'p str,
        method: &str,
    ) -> Lookup<'r, 'p> {
        let mut allow: Option<&'r str> = None;
        if let Some(tree) = host.and_then(|h| self.by_host.get(h)) {
            match self.in_tree(tree, path, method) {
                Lookup::NotFound => {}
                Lookup::MethodNotAllowed { allow: a } => allow = Some(a),
                found => return found,
            }
        }
        match self.in_tree(&self.any, path, method) {
            Lookup::NotFound => match allow {
                Some(allow) => Lookup::MethodNotAllowed { allow },
                None => Lookup::NotFound,
            },
            other => other,
        }
    }

    fn in_tree<'r, 'p>(
        &'r self,
        tree: &'r matchit::Router<usize>,
        path: &'p str,
        method: &str,
    ) -> Lookup<'r, 'p> {
        let Ok(m) = tree.at(path) else {
            return Lookup::NotFound;
        };
        let Some(entry) = self.entries.get(*m.value) else {
            return Lookup::NotFound;
        };
        match entry.routes.iter().find(|(set, _)| set.contains(method)) {
            Some(&(_, route)) => Lookup::Found {
                route,
                params: m.params,
            },
            None => Lookup::MethodNotAllowed {
                allow: &entry.allow,
            },
        }
    }
}

/// matchit reports conflicts with our positional parameter names; put the real ones back.
fn denormalize(msg: &str, params: &[String]) -> String {
    let mut out = msg.to_string();
    for (i, p) in params.iter().enumerate().rev() {
        out = out
            .replace(&format!("{{p{i}}}"), &format!("{{{p}}}"))
            .replace(&format!("{{*p{i}}}"), &format!("{{*{p}}}"));
    }
    out
}
