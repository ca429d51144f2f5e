//! The response cache (RFC 9111, a shared cache): what may be stored and for how long
//! ([`policy`], [`control`]), the memory tier bounded in bytes ([`store`]), request
//! coalescing ([`lock`]), and the sink that stores a body while it streams to the client
//! ([`Sink`]). The proxy's cache phase (`crate::proxy::cache`) decides per request.

pub mod control;
pub mod lock;
pub mod policy;
pub mod store;

use crate::config::cache::{CacheConfig, KeyPart, KeyTemplate};
use crate::observability::metrics::CacheMetrics;
use bytes::{Bytes, BytesMut};
use http::HeaderName;
use std::sync::Arc;
pub use store::{RequestHeaders, Stored};

/// The cache of one gateway: its store, its fetches in flight, its metrics.
pub struct Cache {
    pub config: Arc<CacheConfig>,
    pub store: store::Store,
    pub locks: Arc<lock::Locks>,
    pub metrics: CacheMetrics,
}

impl Cache {
    pub fn new(config: Arc<CacheConfig>, metrics: CacheMetrics) -> Cache {
        Cache {
            store: store::Store::new(config.max_size, metrics.clone()),
            config,
            locks: Arc::default(),
            metrics,
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
    pub headers: &'a dyn RequestHeaders,
}

/// The key `template` gives a request.
pub fn render_key(template: &KeyTemplate, input: &KeyInput<'_>) -> String {
    let mut out = String::with_capacity(64);
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
                    use std::hash::{BuildHasher, Hasher};
                    // A fixed-seed hash: the same key on every instance and after restarts.
                    let mut h = rustc_hash::FxBuildHasher.build_hasher();
                    h.write(q.as_bytes());
                    out.push_str(&format!("{:016x}", h.finish()));
                }
            }
            KeyPart::Header(name) => {
                let values = input.headers.values(name.as_str());
                let text: Vec<String> = values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                out.push_str(&text.join(", "));
            }
            KeyPart::Route => out.push_str(input.route),
        }
    }
    out
}

/// The query with its parameters sorted (each kept as written).
pub fn sorted_query(query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_unstable();
    params.join("&")
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
    _fetch: Option<lock::Fetch>,
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
            _fetch: fetch,
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
        self.stored.body = std::mem::take(&mut self.buf).freeze();
        self.stored
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        let stored = std::mem::replace(&mut self.stored, empty());
        self.cache.store.put(
            self.primary.clone(),
            std::mem::take(&mut self.vary),
            &self.selected,
            stored,
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
                    headers: &NoHeaders,
                },
            )
        };
        assert_eq!(key(Some("b=2&a=1")), "GET:/a?a=1&b=2");
        assert_eq!(key(Some("a=1&b=2")), key(Some("b=2&a=1")));
        assert_eq!(key(None), "GET:/a?");
    }
}
