//! The response cache (RFC 9111, a shared cache): what may be stored and for how long
//! ([`policy`], [`control`]), the memory tier bounded in bytes ([`store`]), the Redis tier
//! shared by instances ([`redis`], records by [`codec`]), request coalescing ([`lock`]), and
//! the sink that stores a body while it streams to the client ([`Sink`]). The proxy's cache
//! phase (`crate::proxy::cache`) decides per request; [`Cache`] puts the tiers together.

pub mod codec;
pub mod control;
pub mod lock;
pub mod policy;
pub mod redis;
pub mod store;

use crate::config::cache::{CacheBackend, CacheConfig, KeyPart, KeyTemplate};
use crate::observability::metrics::CacheMetrics;
use bytes::{Bytes, BytesMut};
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;
pub use store::{RequestHeaders, Stored};

/// The cache of one gateway: its tiers, its fetches in flight, its metrics. Memory only,
/// Redis only, or memory (copies capped by `l1_ttl`) in front of Redis (capped by `l2_ttl`).
pub struct Cache {
    pub config: Arc<CacheConfig>,
    pub memory: Option<Arc<store::Store>>,
    pub redis: Option<Arc<redis::RedisTier>>,
    pub locks: Arc<lock::Locks>,
    pub metrics: CacheMetrics,
}

impl Cache {
    pub fn new(
        config: Arc<CacheConfig>,
        metrics: CacheMetrics,
    ) -> Result<Cache, crate::base::redis::InvalidRedisUrl> {
        let memory = match config.backend {
            CacheBackend::Redis(_) => None,
            CacheBackend::Memory | CacheBackend::Hybrid { .. } => Some(Arc::new(
                store::Store::new(config.max_size, metrics.clone()),
            )),
        };
        let redis = match config.backend.redis() {
            None => None,
            Some(r) => Some(Arc::new(redis::RedisTier::new(
                r,
                metrics.redis_errors.clone(),
                metrics.redis_up.with_label_values(&["cache"]),
            )?)),
        };
        if let (Some(m), Some(r)) = (&memory, &redis) {
            // Hybrid: purges made on other instances reach this memory tier.
            r.subscribe(Arc::downgrade(m));
        }
        Ok(Cache {
            memory,
            redis,
            config,
            locks: Arc::default(),
            metrics,
        })
    }

    /// How long a memory copy may live: the hybrid backend caps it by `l1_ttl`.
    fn l1(&self, keep: Duration) -> Duration {
        match &self.config.backend {
            CacheBackend::Hybrid { l1_ttl, .. } => keep.min(*l1_ttl),
            _ => keep,
        }
    }

    /// How long the Redis copy lives: the hybrid backend caps it by `l2_ttl`.
    fn l2(&self, keep: Duration) -> Duration {
        match &self.config.backend {
            CacheBackend::Hybrid { l2_ttl, .. } => keep.min(*l2_ttl),
            _ => keep,
        }
    }

    /// The answer stored for `primary` that matches the request's `headers` on its `Vary`:
    /// from memory, else from Redis (then copied to memory with the hybrid backend).
    pub async fn get(&self, primary: &str, headers: &dyn RequestHeaders) -> Option<Arc<Stored>> {
        if let Some(s) = self.memory.as_ref().and_then(|m| m.get(primary, headers)) {
            return Some(s);
        }
        // Boxed: the Redis read's future is the largest the request path awaits, and kept
        // inline it would size every request's future (moved whole into actix's box).
        let found = Box::pin(self.redis.as_ref()?.get(primary, headers)).await?;
        let stored = Arc::new(found.stored);
        if let Some(m) = &self.memory {
            // What is left of its life, at most l1_ttl.
            let lived = Duration::from_millis(
                (crate::base::clock::unix_nanos() / 1_000_000).saturating_sub(stored.response_time),
            );
            let mut copy = stored.duplicate();
            copy.keep = self.l1(stored.keep.saturating_sub(lived));
            if !copy.keep.is_zero() {
                m.put(primary.into(), found.names, &found.selected, copy);
            }
        }
        Some(stored)
    }

    /// Stores `stored` under `primary`, selected on the `vary` headers by the request's values
    /// `selected` ([`policy::vary_values`]). The Redis write runs in the background; `fetch`
    /// (the key's coalescing lock) is released once it is done.
    pub fn put(
        &self,
        primary: Arc<str>,
        vary: Vec<HeaderName>,
        selected: &str,
        stored: Stored,
        fetch: Option<lock::Fetch>,
    ) {
        let Some(r) = &self.redis else {
            if let Some(m) = &self.memory {
                let mut stored = stored;
                stored.keep = self.l1(stored.keep);
                m.put(primary, vary, selected, stored);
            }
            return;
        };
        let ttl = self.l2(stored.keep);
        let shared = stored.duplicate();
        if let Some(m) = &self.memory {
            let mut stored = stored;
            stored.keep = self.l1(stored.keep);
            m.put(primary.clone(), vary.clone(), selected, stored);
        }
        let (r, selected) = (r.clone(), selected.to_owned());
        spawn(async move {
            r.put(&primary, &vary, &selected, &shared, ttl).await;
            drop(fetch);
        });
    }

    /// Replaces a stored answer (a revalidation's merged headers and new times): stored
    /// like a new one, so that a variant whose index went meanwhile (purged, invalidated,
    /// evicted) is stored under a new index, never as the answer for every variant.
    pub fn replace(&self, primary: &str, vary: Vec<HeaderName>, selected: &str, stored: Stored) {
        self.put(primary.into(), vary, selected, stored, None);
    }

    /// Removes what `primary` holds (every variant), in memory now and in Redis in the
    /// background.
    pub fn remove(&self, primary: &str) {
        if let Some(m) = &self.memory {
            m.remove(primary);
        }
        if let Some(r) = &self.redis {
            let (r, primary) = (r.clone(), primary.to_owned());
            spawn(async move {
                r.remove(&primary).await;
                r.publish(&redis::Broadcast::Primary(primary)).await;
            });
        }
    }

    /// Removes every answer of `route` for `path` (an unsafe method's invalidation when the
    /// key holds more than the URI): the memory tier walked on the blocking pool, Redis
    /// purged by the path as a prefix (which may remove a little more: longer paths) and the
    /// purge published; both in the background.
    pub fn remove_path(&self, route: &str, path: &str) {
        if let Some(m) = &self.memory {
            let (m, route, path) = (m.clone(), route.to_owned(), path.to_owned());
            tokio::task::spawn_blocking(move || m.purge_path(&route, &path));
        }
        if let Some(r) = &self.redis {
            let (r, route, path) = (r.clone(), route.to_owned(), path.to_owned());
            spawn(async move {
                r.purge(Some(&route), Some(&path)).await;
                r.publish(&redis::Broadcast::Purge(Purge::Prefix(path)))
                    .await;
            });
        }
    }

    /// Purges the memory tier (walks every entry: call it off the worker): the number of
    /// answers removed.
    pub fn purge_memory(&self, what: &Purge) -> u64 {
        match &self.memory {
            None => 0,
            Some(m) => match what {
                Purge::Key(k) => m.purge_key(k),
                Purge::Route(r) => m.purge(Some(r), None),
                Purge::Prefix(p) => m.purge(None, Some(p)),
                Purge::All => m.purge(None, None),
            },
        }
    }

    /// Purges the Redis tier: the number of answers removed (`None` without Redis, or when it
    /// could not be reached; `SCAN` then a script per index, never `KEYS`).
    /// The purge is then published to the other instances' memory tiers.
    pub async fn purge_redis(&self, what: &Purge) -> Option<u64> {
        let r = self.redis.as_ref()?;
        let n = match what {
            Purge::Key(k) => r.purge_key(k).await,
            Purge::Route(x) => r.purge(Some(x), None).await,
            Purge::Prefix(p) => r.purge(None, Some(p)).await,
            Purge::All => r.purge(None, None).await,
        };
        r.publish(&redis::Broadcast::Purge(what.clone())).await;
        n
    }
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// The key as the template rendered it, on any route.
    Key(String),
    Route(String),
    /// A path prefix.
    Prefix(String),
    All,
}

/// Runs a cache write off the request: on this worker's runtime (where its Redis connection
/// lives), else on the background runtime.
fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(f);
        }
        Err(_) => {
            if let Some(bg) = crate::base::background::background() {
                bg.spawn(f);
            }
        }
    }
}

/// What a key template reads of a request.
pub struct KeyInput<'a> {
    pub method: &'a str,
    /// Lower case, without the default port.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub route: &'a str,
    /// The request's tenant id, empty without one.
    pub tenant: &'a str,
    pub headers: &'a dyn RequestHeaders,
}

/// The key `template` gives a request.
pub fn render_key(template: &KeyTemplate, input: &KeyInput<'_>) -> String {
    let mut out = String::with_capacity(64);
    push_key(&mut out, template, input);
    out
}

/// [`render_key`], appended to `out` (the cache phase builds the whole primary key in one
/// string).
pub fn push_key(out: &mut String, template: &KeyTemplate, input: &KeyInput<'_>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for part in &template.parts {
        match part {
            KeyPart::Literal(s) => out.push_str(s),
            KeyPart::Method => out.push_str(input.method),
            KeyPart::Host => out.push_str(input.host),
            KeyPart::Path => out.push_str(input.path),
            KeyPart::Query => out.push_str(&sorted_query(input.query)),
            KeyPart::QueryHash => {
                let q = sorted_query(input.query);
                if !q.is_empty() {
                    // SHA-256 (128 bits of it): the same key on every instance and after
                    // restarts, and no client can craft a query whose key is another's.
                    let digest = crate::base::hash::hash(&q);
                    for b in &digest[..16] {
                        out.push(HEX[usize::from(b >> 4)] as char);
                        out.push(HEX[usize::from(b & 15)] as char);
                    }
                }
            }
            KeyPart::Header(name) => {
                for (i, v) in input.headers.values(name.as_str()).iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&String::from_utf8_lossy(v));
                }
            }
            KeyPart::Route => out.push_str(input.route),
            KeyPart::Tenant => out.push_str(input.tenant),
        }
    }
}

/// The query with its parameters sorted by name (each kept as written); parameters of one
/// name keep their order, which carries meaning (`a=1&a=2` is not `a=2&a=1`).
pub fn sorted_query(query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    // A stable sort: equal names stay as written.
    params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    params.join("&")
}

fn param_name(p: &str) -> &str {
    p.split_once('=').map_or(p, |(n, _)| n)
}

/// Stores a response body while it streams to the client: pieces are kept up to
/// `max_object_size`; past it, or when the body fails or does not match its declared length,
/// storing stops and the client's response goes on untouched.
pub struct Sink {
    cache: Arc<Cache>,
    primary: Arc<str>,
    vary: Vec<HeaderName>,
    selected: String,
    stored: Stored,
    buf: BytesMut,
    expected: Option<u64>,
    /// Released when the body is stored or given up: waiting requests look again.
    fetch: Option<lock::Fetch>,
}

impl Sink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: Arc<Cache>,
        primary: Arc<str>,
        vary: Vec<HeaderName>,
        selected: String,
        stored: Stored,
        expected: Option<u64>,
        fetch: Option<lock::Fetch>,
    ) -> Option<Sink> {
        if expected.is_some_and(|n| n > cache.config.max_object_size) {
            return None;
        }
        Some(Sink {
            buf: BytesMut::with_capacity(expected.unwrap_or(0) as usize),
            cache,
            primary,
            vary,
            selected,
            stored,
            expected,
            fetch,
        })
    }

    /// A piece of the body: false when storing stopped (drop the sink).
    pub fn push(&mut self, data: &Bytes) -> bool {
        if (self.buf.len() + data.len()) as u64 > self.cache.config.max_object_size {
            return false;
        }
        self.buf.extend_from_slice(data);
        true
    }

    /// The body ended: stored when it is complete.
    pub fn finish(mut self) {
        let len = self.buf.len() as u64;
        if self.expected.is_some_and(|n| n != len) {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        // A buffer grown by doubling (a body of unknown length) is trimmed to its content.
        self.stored.body = if buf.capacity() > buf.len() + buf.len() / 8 {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        self.stored
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        let stored = std::mem::replace(&mut self.stored, empty());
        self.cache.put(
            self.primary.clone(),
            std::mem::take(&mut self.vary),
            &self.selected,
            stored,
            self.fetch.take(),
        );
    }
}

fn empty() -> Stored {
    Stored {
        status: 0,
        headers: http::HeaderMap::new(),
        body: Bytes::new(),
        response_time: 0,
        initial_age: 0,
        fresh: policy::Freshness {
            lifetime: 0,
            swr: 0,
            sie: 0,
            revalidate: true,
            no_cache: true,
        },
        route: Arc::from(""),
        path: "".into(),
        keep: std::time::Duration::ZERO,
        client: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHeaders;
    impl RequestHeaders for NoHeaders {
        fn values(&self, _: &str) -> Vec<&[u8]> {
            Vec::new()
        }
    }

    #[test]
    fn keys_sort_the_query() {
        let t = KeyTemplate::parse("{method}:{path}?{query}").expect("valid");
        let key = |q| {
            render_key(
                &t,
                &KeyInput {
                    method: "GET",
                    host: "h",
                    path: "/a",
                    query: q,
                    route: "r",
                    tenant: "",
                    headers: &NoHeaders,
                },
            )
        };
        assert_eq!(key(Some("b=2&a=1")), "GET:/a?a=1&b=2");
        assert_eq!(key(Some("a=1&b=2")), key(Some("b=2&a=1")));
        assert_eq!(key(None), "GET:/a?");
        assert_ne!(key(Some("a=1&a=2")), key(Some("a=2&a=1")));
        assert_eq!(key(Some("a=2&b=1&a=1")), "GET:/a?a=2&a=1&b=1");
    }
}
