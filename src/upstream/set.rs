//! An upstream's servers as one request sees them: a [`ServerSet`] (entries, live state,
//! connection-pool keys and the balancer built over them). Listed servers make one set for
//! the runtime's life; a discovered upstream swaps in a new set whole when its source
//! changes ([`Dynamic`]), and a request keeps the set it started with until it is done.

use super::balancer::{Balancer, ServerSpec};
use super::discovery::{Endpoint, Watcher};
use super::health::Checkers;
use super::server::ServerState;
use crate::config::model::{ServerEntry, UpstreamConfig};
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The shortest time between two rebuilds of a discovered upstream's set: a flapping
/// source costs at most ten rebuilds a second, each taking the latest answer.
pub const DAMPING: Duration = Duration::from_millis(100);

/// One set of servers and what the request path needs of each, in server order.
pub struct ServerSet {
    pub entries: Vec<ServerEntry>,
    pub states: Vec<Arc<ServerState>>,
    /// Connection-pool key of each server: a server that stays keeps its pooled connections.
    pub pool_keys: Vec<u64>,
    pub balancer: Balancer,
}

impl ServerSet {
    /// Builds the set for `entries`. A server `previous` had under the same URL, address and
    /// scheme keeps its live state (health, breaker, ejection, latency); the others start
    /// fresh. Also returns the indexes of the fresh ones (their health checks must start).
    pub fn build(
        config: &UpstreamConfig,
        entries: Vec<ServerEntry>,
        tls: &Arc<rustls::ClientConfig>,
        previous: Option<&ServerSet>,
    ) -> (ServerSet, Vec<usize>) {
        let specs: Vec<ServerSpec<'_>> = entries
            .iter()
            .map(|s| ServerSpec {
                id: &s.url,
                weight: s.weight,
            })
            .collect();
        let balancer = Balancer::new(config.strategy, &specs);
        let mut fresh = Vec::new();
        let states = entries
            .iter()
            .enumerate()
            .map(|(idx, entry)| {
                previous
                    .and_then(|p| {
                        let i = p.entries.iter().position(|s| {
                            s.url == entry.url
                                && s.authority == entry.authority
                                && s.https == entry.https
                        })?;
                        p.states.get(i).cloned()
                    })
                    .unwrap_or_else(|| {
                        fresh.push(idx);
                        Arc::new(ServerState::new(config.circuit_breaker.clone()))
                    })
            })
            .collect();
        let pool_keys = entries
            .iter()
            .map(|s| {
                super::client::pool_key(s.https, &s.authority, tls, config.max_response_header_size)
            })
            .collect();
        let set = ServerSet {
            entries,
            states,
            pool_keys,
            balancer,
        };
        (set, fresh)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The set a request works with: borrowed from the runtime for listed servers (no cost),
/// held for discovered ones (one reference count), so a swap during the request changes
/// nothing for it.
#[derive(Clone)]
pub enum SetRef<'a> {
    Listed(&'a ServerSet),
    Discovered(Arc<ServerSet>),
}

impl std::ops::Deref for SetRef<'_> {
    type Target = ServerSet;
    #[inline]
    fn deref(&self) -> &ServerSet {
        match self {
            SetRef::Listed(s) => s,
            SetRef::Discovered(s) => s,
        }
    }
}

/// What an upstream of the same name had in the runtime a reload replaces.
#[derive(Clone, Copy)]
pub enum Before<'a> {
    Listed(&'a ServerSet),
    Discovered(&'a Dynamic),
}

/// A discovered upstream's servers: the current set, swapped whole by a task that follows
/// the discovery [`Watcher`] (at most one rebuild per [`DAMPING`]).
pub struct Dynamic {
    upstream: String,
    config: UpstreamConfig,
    tls: Arc<rustls::ClientConfig>,
    current: ArcSwap<ServerSet>,
    watcher: OnceLock<Watcher>,
    /// Dropped with the upstream: the applying task ends.
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Dynamic {
    /// A discovered upstream, built next to `previous` (the upstream of the same name in
    /// the runtime being replaced, if any). Following the same source, it starts with the
    /// servers `previous` last had and shares its watcher: a reload neither asks the source
    /// again nor loses a server. Following another source (or after listed servers), it
    /// starts with `previous`'s servers until the new source's first answer (as Envoy warms
    /// a changed cluster), so a reload never leaves the upstream empty for a moment; a new
    /// source that fails keeps them, like any last known servers. `keep_state`: servers that
    /// stay keep their health, breaker and latency.
    pub fn new(
        config: &UpstreamConfig,
        tls: Arc<rustls::ClientConfig>,
        previous: Option<Before<'_>>,
        keep_state: bool,
    ) -> Dynamic {
        let prev_set = match previous {
            Some(Before::Listed(s)) => Some(SetRef::Listed(s)),
            Some(Before::Discovered(d)) => Some(SetRef::Discovered(d.load())),
            None => None,
        };
        let entries = prev_set
            .as_ref()
            .map(|s| s.entries.clone())
            .unwrap_or_default();
        let kept = prev_set.as_deref().filter(|_| keep_state);
        let (set, _) = ServerSet::build(config, entries, &tls, kept);
        let watcher = OnceLock::new();
        let same_source = match previous {
            Some(Before::Discovered(p)) if p.config.discovery == config.discovery => Some(p),
            _ => None,
        };
        if let Some(w) = same_source.and_then(|p| p.watcher.get()) {
            let _ = watcher.set(w.clone());
        }
        Dynamic {
            upstream: config.name.clone(),
            config: config.clone(),
            tls,
            current: ArcSwap::from_pointee(set),
            watcher,
            stop: Mutex::new(None),
        }
    }

    /// The current set (one atomic load and a reference count).
    #[inline]
    pub fn load(&self) -> Arc<ServerSet> {
        self.current.load_full()
    }

    /// The watcher this upstream follows, once started.
    pub fn watcher(&self) -> Option<&Watcher> {
        self.watcher.get()
    }

    /// Starts following the source (once): the watcher (unless one was carried over) and the
    /// task that applies its answers. `checkers` start health checks for new servers.
    pub fn start(
        self: &Arc<Self>,
        metrics: &Arc<crate::observability::metrics::Metrics>,
        checkers: Option<Arc<Checkers>>,
    ) {
        let Some(discovery) = &self.config.discovery else {
            return;
        };
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if stop.is_some() {
            return;
        }
        let Some(rt) = crate::base::background::background() else {
            return;
        };
        let watcher = self
            .watcher
            .get_or_init(|| Watcher::start(&self.upstream, discovery, metrics.clone()))
            .clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        *stop = Some(tx);
        rt.spawn(apply_loop(Arc::downgrade(self), watcher, checkers, rx));
    }

    /// Builds and swaps in the set for `endpoints`, keeping the state of servers that stay.
    fn apply(&self, endpoints: &[Endpoint], checkers: Option<&Checkers>) {
        let entries: Vec<ServerEntry> = endpoints.iter().filter_map(Endpoint::entry).collect();
        let old = self.current.load_full();
        let (set, fresh) = ServerSet::build(&self.config, entries, &self.tls, Some(&old));
        if let Some(c) = checkers {
            let entries: Vec<ServerEntry> = fresh.iter().map(|&i| set.entries[i].clone()).collect();
            let states: Vec<Arc<ServerState>> =
                fresh.iter().map(|&i| set.states[i].clone()).collect();
            c.watch(&entries, &states);
        }
        self.current.store(Arc::new(set));
    }
}

impl crate::observability::metrics::ServerList for Dynamic {
    fn each(&self, f: &mut dyn FnMut(&str, &str, &dyn crate::observability::metrics::ServerProbe)) {
        let set = self.current.load();
        for (e, s) in set.entries.iter().zip(&set.states) {
            f(&self.upstream, &e.url, &**s);
        }
    }
}

/// Follows the watcher: applies its latest answer, then waits [`DAMPING`] before the next
/// (answers in between are coalesced into the latest). Ends when the upstream is dropped.
async fn apply_loop(
    dynamic: std::sync::Weak<Dynamic>,
    watcher: Watcher,
    checkers: Option<Arc<Checkers>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut rx = watcher.subscribe();
    let mut applied: Option<Arc<[Endpoint]>> = None;
    loop {
        let endpoints = rx.borrow_and_update().endpoints.clone();
        if let Some(eps) = endpoints {
            if !applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, &eps)) {
                let Some(d) = dynamic.upgrade() else {
                    return;
                };
                d.apply(&eps, checkers.as_deref());
                applied = Some(eps);
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(DAMPING) => {}
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}
