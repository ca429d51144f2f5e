//! The memory tier: stored answers in a moka cache bounded in bytes by a weigher (bodies,
//! headers and keys), each entry living as long as it may still be used (fresh, stale but
//! servable, or revalidatable). A response with a `Vary` is stored under a secondary key: the
//! primary key holds the varied header names and a nonce, so replacing or purging the primary
//! makes every old variant unreachable at once, and the variants it lists are removed too.

use super::policy::Freshness;
use crate::observability::metrics::CacheMetrics;
use actix_web::http::header as ax;
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A stored answer's header fields as the client gets them (see [`Stored::client_headers`]).
pub type ClientHeaders = Box<[(ax::HeaderName, ax::HeaderValue)]>;

/// Bytes a stored header field costs beyond its name and value.
const HEADER_OVERHEAD: usize = 128;
/// Bytes a header field's client copy ([`Stored::client_headers`]) costs beyond its value:
/// its slot (a name and a value, 72 bytes), the value's allocation rounded to its size class,
/// and the shared handle its first clone makes.
const CLIENT_HEADER_OVERHEAD: usize = 128;
/// Bytes an entry costs beyond its body, header fields and path.
const ENTRY_OVERHEAD: usize = 1024;

/// One stored answer.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    /// End-to-end headers as received (hop-by-hop fields and `Age` removed), `Content-Length`
    /// set to the body's.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Wall-clock ms (Unix) when the response arrived.
    pub response_time: u64,
    /// Its age then, ms (RFC 9111 4.2.3).
    pub initial_age: u64,
    pub fresh: Freshness,
    pub route: Arc<str>,
    /// The request's path, for purges by prefix.
    pub path: Box<str>,
    /// How long the entry is kept.
    pub keep: Duration,
    /// `headers` in actix's types, made by the first HIT that needs them.
    pub client: OnceLock<ClientHeaders>,
}

impl Stored {
    /// A copy (the body is shared).
    pub fn duplicate(&self) -> Stored {
        Stored {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            response_time: self.response_time,
            initial_age: self.initial_age,
            fresh: self.fresh,
            route: self.route.clone(),
            path: self.path.clone(),
            keep: self.keep,
            client: self.client.clone(),
        }
    }

    /// The header fields as the client gets them: `headers` in actix's types, without
    /// `Content-Length` (actix writes it from the body). Converted once, at the first HIT that
    /// asks, and kept with the entry: a HIT then copies no header bytes (the conversion of
    /// every field on every HIT was 2,200 of a HIT's 28,600 instructions).
    pub fn client_headers(&self) -> &[(ax::HeaderName, ax::HeaderValue)] {
        self.client.get_or_init(|| {
            self.headers
                .iter()
                .filter(|(n, _)| **n != http::header::CONTENT_LENGTH)
                .filter_map(|(n, v)| {
                    Some((
                        ax::HeaderName::from_bytes(n.as_str().as_bytes()).ok()?,
                        ax::HeaderValue::from_bytes(v.as_bytes()).ok()?,
                    ))
                })
                .collect()
        })
    }

    /// The current age, ms.
    pub fn age(&self, now_ms: u64) -> u64 {
        self.initial_age
            .saturating_add(now_ms.saturating_sub(self.response_time))
    }

    /// Fresh, and usable without revalidation.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        !self.fresh.no_cache && self.age(now_ms) < self.fresh.lifetime
    }

    /// How long past its lifetime, ms (0 while fresh).
    pub fn staleness(&self, now_ms: u64) -> u64 {
        self.age(now_ms).saturating_sub(self.fresh.lifetime)
    }

    /// What the entry costs in memory, as near as can be told: the body, each header field
    /// (its bytes, its slot in the map, its own allocation, and its client copy, counted
    /// whether or not a HIT has made it yet), the path, and a fixed part for
    /// the entry itself (this struct, its `Arc`, moka's bookkeeping, the key's allocation).
    /// The constants are calibrated on the RSS of a key-churning load (`kairos-cache-churn` in
    /// benches/load/run.sh), so that `max_size` bounds memory, not only payload.
    fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + 2 * v.len() + HEADER_OVERHEAD + CLIENT_HEADER_OVERHEAD)
            .sum();
        (self.body.len() + headers + self.path.len() + ENTRY_OVERHEAD) as u64
    }
}

/// The primary key's slot.
#[derive(Clone)]
enum Slot {
    Response(Arc<Stored>),
    Variants(Arc<Variants>),
}

struct Variants {
    names: Vec<HeaderName>,
    nonce: u64,
    route: Arc<str>,
    path: Box<str>,
    keep: Duration,
    /// The secondary keys stored under it, removed with it.
    keys: Mutex<Vec<Arc<str>>>,
}

impl Slot {
    fn keep(&self) -> Duration {
        match self {
            Slot::Response(s) => s.keep,
            Slot::Variants(v) => v.keep,
        }
    }
    fn weight(&self) -> u64 {
        match self {
            Slot::Response(s) => s.weight(),
            Slot::Variants(v) => 128 + v.names.len() as u64 * 32 + v.path.len() as u64,
        }
    }
    fn is(&self, route: Option<&str>, prefix: Option<&str>) -> bool {
        let (r, p) = match self {
            Slot::Response(s) => (&s.route, &s.path),
            Slot::Variants(v) => (&v.route, &v.path),
        };
        route.is_none_or(|x| **r == *x) && prefix.is_none_or(|x| p.starts_with(x))
    }
}

struct Keep;

impl moka::Expiry<Arc<str>, Slot> for Keep {
    fn expire_after_create(&self, _: &Arc<str>, v: &Slot, _: Instant) -> Option<Duration> {
        Some(v.keep())
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.keep())
    }
}

/// What one route holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteUsage {
    pub entries: u64,
    pub bytes: u64,
}

pub struct Store {
    entries: moka::sync::Cache<Arc<str>, Slot>,
    /// What this store added to the gauges, taken back when it is dropped.
    held: Arc<(AtomicI64, AtomicI64)>,
    metrics: CacheMetrics,
    nonce: AtomicU64,
}

impl Store {
    pub fn new(max_size: u64, metrics: CacheMetrics) -> Store {
        let held: Arc<(AtomicI64, AtomicI64)> = Arc::default();
        let (m, h) = (metrics.clone(), held.clone());
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|k: &Arc<str>, v: &Slot| {
                u32::try_from(k.len() as u64 + v.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(Keep)
            .eviction_listener(move |k: Arc<Arc<str>>, v: Slot, cause| {
                let w = (k.len() as u64 + v.weight()) as i64;
                h.0.fetch_sub(w, Ordering::Relaxed);
                m.bytes.sub(w);
                if let Slot::Response(_) = v {
                    h.1.fetch_sub(1, Ordering::Relaxed);
                    m.entries.dec();
                }
                if cause == moka::notification::RemovalCause::Size {
                    m.evictions.inc();
                }
            })
            .build();
        Store {
            entries,
            held,
            metrics,
            nonce: AtomicU64::new(1),
        }
    }

    fn insert(&self, key: Arc<str>, slot: Slot) {
        let w = (key.len() as u64 + slot.weight()) as i64;
        self.held.0.fetch_add(w, Ordering::Relaxed);
        self.metrics.bytes.add(w);
        if let Slot::Response(_) = slot {
            self.held.1.fetch_add(1, Ordering::Relaxed);
            self.metrics.entries.inc();
        }
        self.entries.insert(key, slot);
    }

    /// The answer stored for `primary` that matches the request's `headers` on its `Vary`.
    pub fn get(&self, primary: &str, headers: &dyn RequestHeaders) -> Option<Arc<Stored>> {
        match self.entries.get(primary)? {
            Slot::Response(s) => Some(s),
            Slot::Variants(v) => {
                let key = secondary(primary, &v, headers);
                match self.entries.get(key.as_str())? {
                    Slot::Response(s) => Some(s),
                    Slot::Variants(_) => None,
                }
            }
        }
    }

    /// Stores `stored` under `primary`, selected on the `vary` headers by the request's
    /// values `selected` ([`super::policy::vary_values`]).
    pub fn put(&self, primary: Arc<str>, vary: Vec<HeaderName>, selected: &str, stored: Stored) {
        if vary.is_empty() {
            self.remove_variants(&primary);
            self.insert(primary, Slot::Response(Arc::new(stored)));
            return;
        }
        let index = match self.entries.get(&primary) {
            Some(Slot::Variants(v)) if v.names == vary => v,
            _ => {
                self.remove_variants(&primary);
                let v = Arc::new(Variants {
                    names: vary,
                    nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
                    route: stored.route.clone(),
                    path: stored.path.clone(),
                    keep: stored.keep,
                    keys: Mutex::default(),
                });
                self.insert(primary.clone(), Slot::Variants(v.clone()));
                v
            }
        };
        let key: Arc<str> = format!("{primary}\n#{}\n{selected}", index.nonce).into();
        if let Ok(mut keys) = index.keys.lock() {
            if !keys.contains(&key) {
                keys.push(key.clone());
            }
        }
        if stored.keep > index.keep {
            // The index must outlive its longest-lived variant.
            self.insert(
                primary,
                Slot::Variants(Arc::new(Variants {
                    names: index.names.clone(),
                    nonce: index.nonce,
                    route: index.route.clone(),
                    path: index.path.clone(),
                    keep: stored.keep,
                    keys: Mutex::new(index.keys.lock().map(|k| k.clone()).unwrap_or_default()),
                })),
            );
        }
        self.insert(key, Slot::Response(Arc::new(stored)));
    }

    /// Removes what `primary` holds (every variant): the number of answers removed.
    pub fn remove(&self, primary: &str) -> u64 {
        let n = self.remove_variants(primary);
        match self.entries.remove(primary) {
            Some(Slot::Response(_)) => n + 1,
            _ => n,
        }
    }

    fn remove_variants(&self, primary: &str) -> u64 {
        let Some(Slot::Variants(v)) = self.entries.get(primary) else {
            return 0;
        };
        let keys = v.keys.lock().map(|k| k.clone()).unwrap_or_default();
        keys.iter()
            .filter(|k| self.entries.remove(k.as_ref()).is_some())
            .count() as u64
    }

    /// Removes every answer of `route` and/or under the path `prefix` (both `None`: all): the
    /// number of answers removed.
    pub fn purge(&self, route: Option<&str>, prefix: Option<&str>) -> u64 {
        let mut n = 0;
        for (k, slot) in self.entries.iter() {
            if slot.is(route, prefix) {
                if let Some(Slot::Response(_)) = self.entries.remove(k.as_ref()) {
                    n += 1;
                }
            }
        }
        self.entries.run_pending_tasks();
        n
    }

    /// Removes every answer of `route` for exactly `path` (whatever else their keys hold):
    /// the number of answers removed. Walks every entry.
    pub fn purge_path(&self, route: &str, path: &str) -> u64 {
        let mut n = 0;
        for (k, slot) in self.entries.iter() {
            let (r, p) = match &slot {
                Slot::Response(s) => (&s.route, &s.path),
                Slot::Variants(v) => (&v.route, &v.path),
            };
            if **r == *route && **p == *path {
                if let Some(Slot::Response(_)) = self.entries.remove(k.as_ref()) {
                    n += 1;
                }
            }
        }
        self.entries.run_pending_tasks();
        n
    }

    /// Removes the answers whose key (as the key template rendered it, on any route) is
    /// `key`: the number of answers removed.
    pub fn purge_key(&self, key: &str) -> u64 {
        let primaries: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(k, _)| {
                let mut parts = k.splitn(4, '\n');
                // route \n scope \n key: a primary key has exactly three parts.
                parts.nth(2) == Some(key) && parts.next().is_none()
            })
            .map(|(k, _)| (*k).clone())
            .collect();
        let n = primaries.iter().map(|k| self.remove(k)).sum();
        self.entries.run_pending_tasks();
        n
    }

    /// Entries and bytes per route.
    pub fn usage(&self) -> std::collections::BTreeMap<String, RouteUsage> {
        let mut out = std::collections::BTreeMap::<String, RouteUsage>::new();
        for (k, slot) in self.entries.iter() {
            let route = match &slot {
                Slot::Response(s) => &s.route,
                Slot::Variants(v) => &v.route,
            };
            let u = out.entry(route.to_string()).or_default();
            u.bytes += k.len() as u64 + slot.weight();
            if let Slot::Response(_) = slot {
                u.entries += 1;
            }
        }
        out
    }

    /// Bytes and entries held now (exact once pending evictions ran).
    pub fn held(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (
            self.held.0.load(Ordering::Relaxed).max(0) as u64,
            self.held.1.load(Ordering::Relaxed).max(0) as u64,
        )
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // moka drops its entries without notifications: give the gauges back what is left.
        self.entries.run_pending_tasks();
        self.metrics.bytes.sub(self.held.0.load(Ordering::Relaxed));
        self.metrics
            .entries
            .sub(self.held.1.load(Ordering::Relaxed));
    }
}

fn secondary(primary: &str, v: &Variants, headers: &dyn RequestHeaders) -> String {
    let selected = super::policy::vary_values(&v.names, |n| headers.values(n));
    format!("{primary}\n#{}\n{selected}", v.nonce)
}

/// A request's header field lines by (lower-case) name, whatever its header map type.
pub trait RequestHeaders {
    fn values(&self, name: &str) -> Vec<&[u8]>;
}
