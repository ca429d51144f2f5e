//! An upstream's servers as one request sees them: a [`ServerSet`] (entries, live state,
//! connection-pool keys and the balancer built over them). Listed servers make one set for
//! the runtime's life; a discovered upstream swaps in a new set whole when its source
//! changes ([`Dynamic`]), and a request keeps the set it started with until it is done.

use super::balancer::{Balancer, Candidates, ServerSpec};
use super::discovery::{Endpoint, Watcher};
use super::health::Checkers;
use super::server::ServerState;
use crate::config::model::{ServerEntry, UpstreamConfig};
use crate::observability::metrics::Metrics;
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
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
    /// The servers by priority, lowest (preferred) first, each a range of the set: one tier
    /// for listed servers and every source but DNS SRV records of several priorities.
    tiers: Box<[Tier]>,
    /// The priority of each server (0 unless a source gave one).
    pub priorities: Box<[u16]>,
}

/// The servers of one priority: a range of the set and the balancer over it.
struct Tier {
    start: usize,
    end: usize,
    balancer: Balancer,
}

impl ServerSet {
    /// Builds the set for `entries`, of the given `priorities` (empty: all 0; servers are
    /// reordered by priority). A server `previous` had under the same URL, address and scheme
    /// keeps its live state (health, breaker, ejection, latency); the others start fresh.
    /// Also returns the indexes of the fresh ones (their health checks must start).
    pub fn build(
        config: &UpstreamConfig,
        entries: Vec<ServerEntry>,
        priorities: Vec<u16>,
        tls: &Arc<rustls::ClientConfig>,
        previous: Option<&ServerSet>,
    ) -> (ServerSet, Vec<usize>) {
        let (entries, priorities): (Vec<ServerEntry>, Vec<u16>) = if priorities.len()
            == entries.len()
        {
            let mut both: Vec<(ServerEntry, u16)> = entries.into_iter().zip(priorities).collect();
            both.sort_by_key(|(_, p)| *p);
            both.into_iter().unzip()
        } else {
            let n = entries.len();
            (entries, vec![0; n])
        };
        let mut tiers = Vec::new();
        let mut start = 0;
        while start < entries.len() {
            let end = start
                + priorities[start..]
                    .iter()
                    .take_while(|&&p| p == priorities[start])
                    .count();
            let specs: Vec<ServerSpec<'_>> = entries[start..end]
                .iter()
                .map(|s| ServerSpec {
                    id: &s.url,
                    weight: s.weight,
                })
                .collect();
            tiers.push(Tier {
                start,
                end,
                balancer: Balancer::new(config.strategy, &specs),
            });
            start = end;
        }
        if tiers.is_empty() {
            tiers.push(Tier {
                start: 0,
                end: 0,
                balancer: Balancer::new(config.strategy, &[]),
            });
        }
        let mut fresh = Vec::new();
        // The previous servers by identity: one lookup per server, not a scan.
        let before: HashMap<(&str, &str, bool), usize> = previous
            .map(|p| {
                p.entries
                    .iter()
                    .enumerate()
                    .map(|(i, s)| ((s.url.as_str(), s.authority.as_str(), s.https), i))
                    .collect()
            })
            .unwrap_or_default();
        let states = entries
            .iter()
            .enumerate()
            .map(|(idx, entry)| {
                previous
                    .and_then(|p| {
                        let key = (entry.url.as_str(), entry.authority.as_str(), entry.https);
                        p.states.get(*before.get(&key)?).cloned()
                    })
                    .unwrap_or_else(|| {
                        fresh.push(idx);
                        Arc::new(
                            ServerState::new(config.circuit_breaker.clone())
                                .named(&config.name, &entry.url),
                        )
                    })
            })
            .collect();
        let pool_keys = entries
            .iter()
            .map(|s| {
                super::client::pool_key(
                    s.https,
                    &s.authority,
                    tls,
                    config.max_response_header_size,
                    config.protocol,
                )
            })
            .collect();
        let set = ServerSet {
            entries,
            states,
            pool_keys,
            tiers: tiers.into_boxed_slice(),
            priorities: priorities.into_boxed_slice(),
        };
        (set, fresh)
    }

    /// The balancing strategy (the same for every tier).
    pub fn strategy(&self) -> crate::config::model::Strategy {
        self.tiers[0].balancer.strategy()
    }

    /// Candidate server indexes for one request, best first: the balancer's picks among the
    /// servers of the lowest priority that has an available one (RFC 2782's fallback, as
    /// Envoy and NGINX's `backup` apply it), then, for retries, the servers of the priorities
    /// after it. With one priority this is the balancer's candidates, at no extra cost.
    pub fn candidates(&self, now_ms: u64, key: u64) -> SetCandidates<'_> {
        let tier = if self.tiers.len() == 1 {
            0
        } else {
            use super::balancer::ServerLoad;
            self.tiers
                .iter()
                .position(|t| {
                    self.states[t.start..t.end]
                        .iter()
                        .any(|s| s.available(now_ms))
                })
                .unwrap_or(0)
        };
        let t = &self.tiers[tier];
        SetCandidates {
            set: self,
            now_ms,
            key,
            tier,
            inner: t
                .balancer
                .candidates(&self.states[t.start..t.end], now_ms, key),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The servers to try for one request, best first (see [`ServerSet::candidates`]).
pub struct SetCandidates<'a> {
    set: &'a ServerSet,
    now_ms: u64,
    key: u64,
    tier: usize,
    inner: Candidates<'a, Arc<ServerState>>,
}

impl Iterator for SetCandidates<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        loop {
            if let Some(i) = self.inner.next() {
                return Some(self.set.tiers[self.tier].start + i);
            }
            self.tier += 1;
            let t = self.set.tiers.get(self.tier)?;
            self.inner =
                t.balancer
                    .candidates(&self.set.states[t.start..t.end], self.now_ms, self.key);
        }
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
        let priorities = prev_set
            .as_ref()
            .map(|s| s.priorities.to_vec())
            .unwrap_or_default();
        let (set, _) = ServerSet::build(config, entries, priorities, &tls, kept);
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
    pub fn start(self: &Arc<Self>, metrics: &Arc<Metrics>, checkers: Option<Arc<Checkers>>) {
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
        rt.spawn(apply_loop(
            Arc::downgrade(self),
            watcher,
            checkers,
            metrics.clone(),
            rx,
        ));
    }

    /// Builds and swaps in the set for `endpoints`, keeping the state of servers that stay.
    /// A new server's ejection count reads 0 from the start (as a listed server's does); a
    /// server that left takes its series with it, so churning pods do not pile series up.
    fn apply(&self, endpoints: &[Endpoint], checkers: Option<&Checkers>, metrics: &Metrics) {
        let (entries, priorities): (Vec<ServerEntry>, Vec<u16>) = endpoints
            .iter()
            .filter_map(|e| Some((e.entry()?, e.priority)))
            .unzip();
        let old = self.current.load_full();
        let (set, fresh) =
            ServerSet::build(&self.config, entries, priorities, &self.tls, Some(&old));
        if let Some(c) = checkers {
            let entries: Vec<ServerEntry> = fresh.iter().map(|&i| set.entries[i].clone()).collect();
            let states: Vec<Arc<ServerState>> =
                fresh.iter().map(|&i| set.states[i].clone()).collect();
            c.watch(&entries, &states);
        }
        for &i in &fresh {
            metrics
                .upstream_ejections
                .with_label_values(&[&self.upstream, &set.entries[i].url]);
        }
        let now: HashSet<&str> = set.entries.iter().map(|e| e.url.as_str()).collect();
        for gone in old.entries.iter().filter(|o| !now.contains(o.url.as_str())) {
            let _ = metrics
                .upstream_ejections
                .remove_label_values(&[&self.upstream, &gone.url]);
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
    metrics: Arc<Metrics>,
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
                d.apply(&eps, checkers.as_deref(), &metrics);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(strategy: &str) -> UpstreamConfig {
        let text = format!(
            r#"{{"version":1,"upstreams":{{"u":{{"servers":[{{"url":"http://127.0.0.1:1"}},
                {{"url":"http://127.0.0.1:2"}},{{"url":"http://127.0.0.1:3"}}],
                "load_balancing":{{"strategy":"{strategy}"}}}}}},
              "routes":[{{"name":"r","path":"/","upstream":"u"}}]}}"#
        );
        let cfg = crate::config::load_str(&text, "test", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        cfg.upstreams[0].clone()
    }

    #[test]
    fn the_lowest_priority_with_an_available_server_is_used_then_the_next() {
        crate::base::tls::install_crypto_provider();
        let cfg = upstream("round_robin");
        let tls = crate::upstream::client::default_tls_config();
        // Port 1 is a backup (priority 20); ports 2 and 3 the primaries (10).
        let (set, fresh) =
            ServerSet::build(&cfg, cfg.servers.clone(), vec![20, 10, 10], &tls, None);
        assert_eq!(fresh.len(), 3);
        let ports: Vec<u16> = set.entries.iter().map(|e| e.port).collect();
        assert_eq!(ports, [2, 3, 1], "ordered by priority");
        assert_eq!(&*set.priorities, &[10, 10, 20]);
        let now = 1_000;
        // All available: the primaries, then the backup for a retry.
        let order: Vec<usize> = set.candidates(now, 0).collect();
        assert_eq!(order.len(), 3);
        assert!(
            order[..2].contains(&0) && order[..2].contains(&1),
            "{order:?}"
        );
        assert_eq!(order[2], 2);
        // One primary out: the other primary first.
        set.states[0].eject(now + 60_000);
        let order: Vec<usize> = set.candidates(now, 0).collect();
        assert_eq!(order, [1, 2]);
        // Both primaries out: the backup.
        set.states[1].eject(now + 60_000);
        let order: Vec<usize> = set.candidates(now, 0).collect();
        assert_eq!(order, [2]);
        // Once the ejections end, the primaries again.
        let later = now + 60_001;
        let first = set.candidates(later, 0).next();
        assert!(matches!(first, Some(0 | 1)), "{first:?}");
    }

    #[test]
    fn one_priority_is_the_plain_balancer() {
        crate::base::tls::install_crypto_provider();
        let cfg = upstream("round_robin");
        let tls = crate::upstream::client::default_tls_config();
        let (set, _) = ServerSet::build(&cfg, cfg.servers.clone(), Vec::new(), &tls, None);
        assert_eq!(&*set.priorities, &[0, 0, 0]);
        let firsts: Vec<usize> = (0..6)
            .filter_map(|_| set.candidates(1_000, 0).next())
            .collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
    }
}
