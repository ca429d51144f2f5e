//! Route matching on a radix tree (matchit): the cost of a lookup grows with the path's length,
//! not with the number of routes. Routes are grouped by host; a host-specific route wins over
//! one without a host. Routes that share a path shape but not methods share one tree entry.
//! Templates without a parameter skip the tree: they are found by the whole path in a hash map.
//!
//! matchit cannot hold a parameter and a catch-all at the same position (`/v1/{id}` and
//! `/v1/{*rest}`), although such routes are easily told apart. A route that conflicts that way
//! goes into a further tree; a lookup then asks every tree (almost always just one) and the
//! most specific match wins, segment by segment: literal, then parameter, then catch-all.

use crate::config::model::{MethodSet, RouteConfig};
use crate::config::validate::parse_path_template;
use crate::config::ConfigError;
use rustc_hash::FxHashMap;
use std::collections::HashMap;

pub struct Router {
    by_host: HashMap<String, Trees>,
    any: Trees,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("shapes", &self.entries.len())
            .field("hosts", &self.by_host.len())
            .finish()
    }
}

/// All routes on one (host, path shape), in config order.
struct Entry {
    routes: Vec<(MethodSet, usize)>,
    allow: String,
    /// Specificity per segment: 2 literal, 1 parameter, 0 catch-all; higher wins.
    rank: Vec<u8>,
}

/// At most this many trees per host; more means the config is pathological.
const MAX_TREES: usize = 8;

#[derive(Default)]
struct Trees {
    /// Templates without a parameter, found by the whole path: a hash probe instead of a
    /// chain of tree nodes (1.5 MB of a 10,000-route table where a third of the routes are
    /// static). A literal match is literal in every segment, so no tree's match is more
    /// specific.
    exact: FxHashMap<Box<str>, usize>,
    trees: Vec<matchit::Router<usize>>,
}

impl Trees {
    fn insert(&mut self, template: &str, entry: usize) -> Result<(), matchit::InsertError> {
        if !template.contains(['{', '}']) {
            self.exact.insert(template.into(), entry);
            return Ok(());
        }
        let mut last = None;
        for tree in &mut self.trees {
            match tree.insert(template, entry) {
                Ok(()) => return Ok(()),
                Err(e @ matchit::InsertError::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let (Some(e), true) = (last.take(), self.trees.len() >= MAX_TREES) {
            return Err(e);
        }
        let mut tree = matchit::Router::new();
        tree.insert(template, entry)?;
        self.trees.push(tree);
        Ok(())
    }

    /// Copies each tree once all routes are in: matchit grows a node's children one push at
    /// a time, so a node with one child holds room for four (a 10,000-route table used 11.8
    /// MB of children arrays); a clone allocates each array at its length.
    fn compact(&mut self) {
        for tree in &mut self.trees {
            *tree = tree.clone();
        }
        self.trees.shrink_to_fit();
        self.exact.shrink_to_fit();
    }

    /// The entry matching `path` and its parameters.
    fn at<'r, 'p>(
        &'r self,
        path: &'p str,
        entries: &[Entry],
    ) -> Option<(usize, matchit::Params<'r, 'p>)> {
        if !self.exact.is_empty() {
            if let Some(&entry) = self.exact.get(path) {
                return Some((entry, matchit::Params::new()));
            }
        }
        let m = match self.trees.as_slice() {
            [] => None,
            [one] => one.at(path).ok(),
            many => many
                .iter()
                .filter_map(|t| t.at(path).ok())
                .max_by(|a, b| rank(entries, *a.value).cmp(rank(entries, *b.value))),
        };
        m.map(|m| (*m.value, m.params))
    }
}

fn rank(entries: &[Entry], i: usize) -> &[u8] {
    entries.get(i).map_or(&[], |e| e.rank.as_slice())
}

fn template_rank(path: &str) -> Vec<u8> {
    path.split('/')
        .skip(1)
        .map(|seg| match seg.strip_prefix('{') {
            Some(p) if p.starts_with('*') => 0,
            Some(_) => 1,
            None => 2,
        })
        .collect()
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
    /// Builds the global route table (the routes of no tenant); errors name the route
    /// (`routes[i].path`) that could not be added.
    pub fn build(routes: &[RouteConfig]) -> Result<Router, Vec<ConfigError>> {
        Self::build_for(routes, None, &|i| format!("routes[{i}].path"))
    }

    /// Builds the table of the routes of `tenant` (`None`: the global routes); `path_of` names
    /// route `i` in errors. Route numbers in the table are indexes into `routes`.
    pub fn build_for(
        routes: &[RouteConfig],
        tenant: Option<usize>,
        path_of: &dyn Fn(usize) -> String,
    ) -> Result<Router, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut by_host: HashMap<String, Trees> = HashMap::new();
        let mut any = Trees::default();
        let mut entries: Vec<Entry> = Vec::new();
        let mut slots: HashMap<(Option<&str>, String), usize> = HashMap::new();
        for (i, r) in routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tenant == tenant)
        {
            let template = match parse_path_template(&r.path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::new(path_of(i), e.to_string()));
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
            match tree.insert(&template.normalized, entries.len()) {
                Ok(()) => {
                    slots.insert(key, entries.len());
                    entries.push(Entry {
                        routes: vec![(r.methods, i)],
                        allow: String::new(),
                        rank: template_rank(&template.normalized),
                    });
                }
                Err(e) => errors.push(
                    ConfigError::new(path_of(i), format!("path \"{}\" cannot be routed: {}", r.path, denormalize(&e.to_string(), &template.params)))
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
            any.compact();
            for trees in by_host.values_mut() {
                trees.compact();
            }
            by_host.shrink_to_fit();
            entries.shrink_to_fit();
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

    fn in_tree<'r, 'p>(&'r self, trees: &'r Trees, path: &'p str, method: &str) -> Lookup<'r, 'p> {
        let Some((found, params)) = trees.at(path, &self.entries) else {
            return Lookup::NotFound;
        };
        let Some(entry) = self.entries.get(found) else {
            return Lookup::NotFound;
        };
        match entry.routes.iter().find(|(set, _)| set.contains(method)) {
            Some(&(_, route)) => Lookup::Found { route, params },
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
