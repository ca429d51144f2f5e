//! The Redis tier: stored answers shared by every instance pointing at one Redis. Per primary
//! key, an index (a hash: the varied header names, the primary key itself, the path for
//! purges by prefix, and one field per stored variant) and one string per variant holding its
//! record ([`super::codec`]). Key names are hashes, so no user text reaches a `SCAN` pattern:
//!
//! ```text
//! {prefix}i:{route}:{key}:{primary}              the index      (route, key: 64-bit hashes)
//! {prefix}e:{route}:{key}:{primary}:{variant}    one variant    (primary, variant: 128-bit)
//! ```
//!
//! Purges find indexes with `SCAN ... MATCH` (never `KEYS`), on every master of a Cluster: by
//! route, by the key the template rendered, or all of them (filtered by path for a prefix). On
//! a Cluster the `{primary}` part is written in braces, a hash tag: an index and its variants
//! share a slot. Redis down or slow never fails a
//! request: a call that fails is a miss (or a write not made), counted in
//! `kairos_cache_redis_errors_total`; after a connection failure Redis is left alone for a
//! second, then tried again. A record that does not decode is a miss, counted the same way.
//! With the hybrid backend, purges and invalidations are published ([`Broadcast`]) so that
//! the other instances drop their memory copies.

use super::store::{RequestHeaders, Stored};
use super::Purge;
use super::{codec, policy};
use crate::base::redis::{Conn, InvalidRedisUrl, NodeAddr, RedisClient};
use crate::config::cache::RedisCache;
use http::HeaderName;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// KEYS: the index, the variant. ARGV: varied names, path, the variant's field, its record,
/// its TTL (ms), the prefix of the index's variants, the primary key. Stores the variant; an
/// index whose varied names changed is emptied first (its old variants deleted); the index
/// lives as long as its longest-lived variant.
const PUT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'names')
if cur and cur ~= ARGV[1] then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'v:' then redis.call('DEL', ARGV[6] .. string.sub(f, 3)) end
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'names', ARGV[1], 'path', ARGV[2], 'primary', ARGV[7], ARGV[3], '1')
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 1
"#;

/// KEYS: an index. ARGV: the prefix of its variants; a path prefix ('' for any). Deletes the
/// index and its variants when its path starts with the prefix: the variants deleted.
const REMOVE: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if ARGV[2] ~= '' then
  local path = redis.call('HGET', KEYS[1], 'path')
  if not path or string.sub(path, 1, string.len(ARGV[2])) ~= ARGV[2] then return 0 end
end
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'v:' then n = n + redis.call('DEL', ARGV[1] .. string.sub(f, 3)) end
end
redis.call('DEL', KEYS[1])
return n
"#;

/// How long Redis is left alone after a connection failure.
/// (The subscriber of purges reconnects on its own, backing off from 100 ms to 2 s.)
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// An index's `names` and `primary` fields, as bytes (whatever Redis holds).
type IndexFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// An answer found in Redis, with what selects its variant.
pub struct Found {
    pub stored: Stored,
    pub names: Vec<HeaderName>,
    pub selected: String,
}

pub struct RedisTier {
    client: Arc<RedisClient>,
    prefix: String,
    errors: IntCounter,
    /// Monotonic ms ([`crate::base::clock::now_ms`]) before which Redis is not tried.
    paused_until: AtomicU64,
    /// Whether the last call failed to reach Redis (for one warning per outage).
    down: AtomicBool,
    put: redis::Script,
    remove: redis::Script,
}

/// The Redis names of a primary key.
struct Names {
    index: String,
    /// Prefix of its variants' keys.
    variants: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn h64(text: &str) -> String {
    hex(&crate::base::hash::hash(text)[..8])
}

fn h128(text: &str) -> String {
    hex(&crate::base::hash::hash(text)[..16])
}

/// `text` with the glob characters of a `SCAN MATCH` pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisTier {
    /// `up` follows the connection's health (`kairos_redis_up{role="cache"}`).
    pub fn new(
        config: &RedisCache,
        errors: IntCounter,
        up: IntGauge,
    ) -> Result<RedisTier, InvalidRedisUrl> {
        let url = std::str::from_utf8(&config.url.0)
            .map_err(|_| InvalidRedisUrl("redis_url is not UTF-8".into()))?;
        let client = RedisClient::open(url, config.tls.as_ref(), config.timeout)?;
        Ok(RedisTier {
            client: Arc::new(client.with_up_gauge(up)),
            prefix: config.key_prefix.clone(),
            errors,
            paused_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            put: redis::Script::new(PUT),
            remove: redis::Script::new(REMOVE),
        })
    }

    /// A primary key is `route \n scope \n key` ([`crate::proxy::cache`]).
    fn names(&self, primary: &str) -> Names {
        let mut parts = primary.splitn(3, '\n');
        let route = parts.next().unwrap_or_default();
        let _scope = parts.next();
        let key = parts.next().unwrap_or_default();
        // On a Cluster the primary key's hash is the hash tag: its index and variants share a
        // slot (the scripts touch them together).
        let rest = match self.client.target() {
            "cluster" => format!("{}:{}:{{{}}}", h64(route), h64(key), h128(primary)),
            _ => format!("{}:{}:{}", h64(route), h64(key), h128(primary)),
        };
        Names {
            index: format!("{}i:{rest}", self.prefix),
            variants: format!("{}e:{rest}:", self.prefix),
        }
    }

    /// The connection to use, unless Redis is paused after a failure.
    async fn connection(&self) -> Option<Conn> {
        if crate::base::clock::now_ms() < self.paused_until.load(Ordering::Relaxed) {
            return None;
        }
        match self.client.connection().await {
            Ok(c) => Some(c),
            Err(e) => {
                self.unreachable(&e);
                None
            }
        }
    }

    /// A call failed: counted; a connection failure pauses Redis for a while.
    fn failed(&self, e: &redis::RedisError) {
        if crate::base::redis::is_connection_error(e) {
            self.client.forget();
            self.unreachable(&e.to_string());
        } else {
            self.errors.inc();
            tracing::debug!(backend = "redis", error = %e, "cache call answered with an error");
        }
    }

    fn unreachable(&self, error: &str) {
        self.errors.inc();
        self.client.mark(false);
        self.paused_until.store(
            crate::base::clock::now_ms() + PAUSE_AFTER_FAILURE.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backend = "redis",
                error,
                "response cache Redis unreachable; requests go on without it until it is back"
            );
        }
    }

    fn answered(&self) {
        self.client.mark(true);
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = "redis", "response cache Redis reachable again");
        }
    }

    /// Runs `call` on a connection within the timeout: `None` when Redis could not answer.
    async fn call<T, F>(&self, call: impl FnOnce(Conn) -> F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.client.timeout(), call(conn)).await {
            Ok(Ok(v)) => {
                self.answered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.client.forget();
                self.unreachable("no answer within redis_timeout");
                None
            }
        }
    }

    /// A record that does not decode, or an index that does not parse: a miss, counted.
    fn malformed(&self, what: &str) -> Option<Found> {
        self.errors.inc();
        tracing::debug!(
            backend = "redis",
            what,
            "malformed cache entry in Redis; treated as a miss"
        );
        None
    }

    /// The answer stored for `primary` that matches the request's `headers` on its `Vary`.
    pub async fn get(&self, primary: &str, headers: &dyn RequestHeaders) -> Option<Found> {
        let n = self.names(primary);
        let plain = format!("{}{}", n.variants, h128(""));
        let (index, record): (IndexFields, Option<Vec<u8>>) = self
            .call(|mut c| async move {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&n.index)
                    .arg("names")
                    .arg("primary")
                    .get(&plain)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let (Some(names), Some(owner)) = index else {
            return None;
        };
        let Ok(names) = String::from_utf8(names) else {
            return self.malformed("index");
        };
        if owner != primary.as_bytes() {
            // Another primary key with the same hash: not this one's answer.
            return None;
        }
        let mut varied = Vec::new();
        for name in names.split(',').filter(|n| !n.is_empty()) {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => varied.push(h),
                Err(_) => return self.malformed("index"),
            }
        }
        let selected = policy::vary_values(&varied, |h| headers.values(h));
        let record = if varied.is_empty() {
            record
        } else {
            let key = format!("{}{}", self.names(primary).variants, h128(&selected));
            self.call(|mut c| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await?
        }?;
        match codec::decode(&record) {
            Some(stored) => Some(Found {
                stored,
                names: varied,
                selected,
            }),
            None => self.malformed("record"),
        }
    }

    /// Stores `stored` under `primary` for `ttl`, selected on the `names` headers by the
    /// request's values `selected`.
    pub async fn put(
        &self,
        primary: &str,
        names: &[HeaderName],
        selected: &str,
        stored: &Stored,
        ttl: Duration,
    ) {
        let n = self.names(primary);
        let variant = h128(selected);
        let entry = format!("{}{variant}", n.variants);
        let joined: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        let record = codec::encode(stored);
        let ttl = ttl.as_millis().max(1) as u64;
        let script = &self.put;
        self.call(|mut c| async move {
            script
                .key(&n.index)
                .key(&entry)
                .arg(joined.join(","))
                .arg(&*stored.path)
                .arg(format!("v:{variant}"))
                .arg(record)
                .arg(ttl)
                .arg(&n.variants)
                .arg(primary)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Removes every variant of `primary`: the number removed (`None`: Redis unreachable).
    pub async fn remove(&self, primary: &str) -> Option<u64> {
        let n = self.names(primary);
        self.remove_index(&n.index, "").await
    }

    async fn remove_index(&self, index: &str, path_prefix: &str) -> Option<u64> {
        let variants = match index.strip_prefix(&format!("{}i:", self.prefix)) {
            Some(rest) => format!("{}e:{rest}:", self.prefix),
            None => return Some(0),
        };
        let script = &self.remove;
        self.call(|mut c| async move {
            script
                .key(index)
                .arg(&variants)
                .arg(path_prefix)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|n| n.max(0) as u64)
    }

    /// Removes the answers of the indexes matching `pattern` (and under `path_prefix`): the
    /// number removed, `None` when Redis could not be reached or failed midway.
    async fn purge_matching(&self, pattern: &str, path_prefix: &str) -> Option<u64> {
        let mut removed = 0;
        let mut scan = self.scan(pattern).await?;
        while let Some(keys) = self.next_batch(&mut scan).await? {
            for key in keys {
                removed += self.remove_index(&key, path_prefix).await?;
            }
        }
        Some(removed)
    }

    /// A `SCAN` for `pattern` on every node that holds keys (the one Redis, or each master
    /// of a Cluster), read batch by batch with [`Self::next_batch`].
    async fn scan(&self, pattern: &str) -> Option<Scan> {
        let nodes: Vec<NodeAddr> = self.call(|mut c| async move { c.masters().await }).await?;
        Some(Scan {
            pattern: pattern.to_owned(),
            nodes,
            node: 0,
            cursor: 0,
        })
    }

    /// The next batch of names (`COUNT 1000`): `Some(None)` once every node is done, `None`
    /// when Redis fails.
    async fn next_batch(&self, s: &mut Scan) -> Option<Option<Vec<String>>> {
        let Some(node) = s.nodes.get(s.node) else {
            return Some(None);
        };
        let mut scan = redis::cmd("SCAN");
        scan.arg(s.cursor)
            .arg("MATCH")
            .arg(&s.pattern)
            .arg("COUNT")
            .arg(1000);
        let (next, keys): (u64, Vec<String>) = self
            .call(|mut c| async move { c.query_on(node, &scan).await })
            .await?;
        match next {
            0 => (s.node, s.cursor) = (s.node + 1, 0),
            n => s.cursor = n,
        }
        Some(Some(keys))
    }

    /// Removes every answer of `route` and/or under the path `prefix` (both `None`: all).
    pub async fn purge(&self, route: Option<&str>, prefix: Option<&str>) -> Option<u64> {
        let p = glob_escape(&self.prefix);
        let pattern = match route {
            Some(r) => format!("{p}i:{}:*", h64(r)),
            None => format!("{p}i:*"),
        };
        self.purge_matching(&pattern, prefix.unwrap_or_default())
            .await
    }

    /// How many answers (variants) the Redis tier holds for each of `routes`, by one `SCAN`
    /// of the tier's variant names on every master (`COUNT 1000`; nothing is read): `None`
    /// when Redis does not answer. Answers of routes not listed (removed by a reload, not yet
    /// expired) are not counted.
    pub async fn census(&self, routes: &[&str]) -> Option<std::collections::HashMap<String, u64>> {
        let by_hash: std::collections::HashMap<String, &str> =
            routes.iter().map(|r| (h64(r), *r)).collect();
        let mut counts: std::collections::HashMap<String, u64> =
            routes.iter().map(|r| (r.to_string(), 0)).collect();
        let head = format!("{}e:", self.prefix);
        let mut scan = self
            .scan(&format!("{}e:*", glob_escape(&self.prefix)))
            .await?;
        while let Some(keys) = self.next_batch(&mut scan).await? {
            for key in &keys {
                let route = key
                    .strip_prefix(&head)
                    .and_then(|rest| rest.split(':').next())
                    .and_then(|h| by_hash.get(h));
                if let Some(n) = route.and_then(|r| counts.get_mut(*r)) {
                    *n += 1;
                }
            }
        }
        Some(counts)
    }

    /// Removes the answers whose key (as the key template rendered it, on any route) is `key`.
    pub async fn purge_key(&self, key: &str) -> Option<u64> {
        let p = glob_escape(&self.prefix);
        self.purge_matching(&format!("{p}i:*:{}:*", h64(key)), "")
            .await
    }
}

/// A `SCAN` in progress over every node ([`RedisTier::scan`]).
struct Scan {
    pattern: String,
    nodes: Vec<NodeAddr>,
    /// The node being scanned (an index into `nodes`).
    node: usize,
    cursor: u64,
}

/// A purge made on one instance, told to the others (`PUBLISH` on `{prefix}purge`): what
/// their memory tiers remove. Peer-controlled text: anything else is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broadcast {
    /// Every variant of a primary key (an invalidation by an unsafe method).
    Primary(String),
    Purge(Purge),
}

impl Broadcast {
    fn encode(&self) -> String {
        let (kind, text) = match self {
            Broadcast::Primary(p) => ("primary", p.as_str()),
            Broadcast::Purge(Purge::Key(k)) => ("key", k.as_str()),
            Broadcast::Purge(Purge::Route(r)) => ("route", r.as_str()),
            Broadcast::Purge(Purge::Prefix(p)) => ("prefix", p.as_str()),
            Broadcast::Purge(Purge::All) => ("all", ""),
        };
        format!("{kind}\n{text}")
    }

    fn decode(payload: &[u8]) -> Option<Broadcast> {
        let text = std::str::from_utf8(payload).ok()?;
        let (kind, rest) = text.split_once('\n')?;
        let rest = rest.to_owned();
        Some(match kind {
            "primary" => Broadcast::Primary(rest),
            "key" => Broadcast::Purge(Purge::Key(rest)),
            "route" => Broadcast::Purge(Purge::Route(rest)),
            "prefix" => Broadcast::Purge(Purge::Prefix(rest)),
            "all" => Broadcast::Purge(Purge::All),
            _ => return None,
        })
    }
}

impl RedisTier {
    /// The client, for the readiness answer.
    pub fn client(&self) -> &Arc<RedisClient> {
        &self.client
    }

    fn channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// Tells the other instances' memory tiers about a purge (best effort: an instance not
    /// subscribed at that moment keeps its copies for at most `l1_ttl`).
    pub async fn publish(&self, what: &Broadcast) {
        let (channel, message) = (self.channel(), what.encode());
        self.call(|mut c| async move {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&message)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Applies the purges other instances publish to `memory`, on the background runtime,
    /// for as long as `memory` lives; reconnects (100 ms, backing off to 2 s) when the
    /// subscription drops.
    pub fn subscribe(&self, memory: std::sync::Weak<super::store::Store>) {
        let Some(rt) = crate::base::background::background() else {
            tracing::error!(
                "no background runtime: cache purges of other instances are not received"
            );
            return;
        };
        let (client, channel, errors) = (self.client.clone(), self.channel(), self.errors.clone());
        rt.spawn(async move {
            use futures_util::StreamExt;
            let mut pause = Duration::from_millis(100);
            while memory.strong_count() > 0 {
                if let Ok(mut ps) = client.pubsub().await {
                    if ps.subscribe(&channel).await.is_ok() {
                        pause = Duration::from_millis(100);
                        let mut messages = ps.on_message();
                        loop {
                            // Woken once a second to notice a cache replaced by a reload.
                            match tokio::time::timeout(Duration::from_secs(1), messages.next())
                                .await
                            {
                                Ok(Some(msg)) => {
                                    let Some(m) = memory.upgrade() else { return };
                                    match Broadcast::decode(msg.get_payload_bytes()) {
                                        Some(b) => apply(&m, &b),
                                        None => errors.inc(),
                                    }
                                }
                                Ok(None) => break,
                                Err(_) if memory.strong_count() == 0 => return,
                                Err(_) => {}
                            }
                        }
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }
}

/// A broadcast purge applied to this instance's memory tier.
fn apply(memory: &super::store::Store, what: &Broadcast) {
    match what {
        Broadcast::Primary(p) => {
            memory.remove(p);
        }
        Broadcast::Purge(Purge::Key(k)) => {
            memory.purge_key(k);
        }
        Broadcast::Purge(Purge::Route(r)) => {
            memory.purge(Some(r), None);
        }
        Broadcast::Purge(Purge::Prefix(p)) => {
            memory.purge(None, Some(p));
        }
        Broadcast::Purge(Purge::All) => {
            memory.purge(None, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_round_trip_and_garbage_is_refused() {
        for b in [
            Broadcast::Primary("c\n\nGET:/a:".into()),
            Broadcast::Purge(Purge::Key("GET:/a:".into())),
            Broadcast::Purge(Purge::Route("users".into())),
            Broadcast::Purge(Purge::Prefix("/api/".into())),
            Broadcast::Purge(Purge::All),
        ] {
            assert_eq!(Broadcast::decode(b.encode().as_bytes()), Some(b));
        }
        assert_eq!(Broadcast::decode(b"drop\neverything"), None);
        assert_eq!(Broadcast::decode(b"no newline"), None);
        assert_eq!(Broadcast::decode(b"\xff\n"), None);
    }

    #[test]
    fn patterns_escape_the_prefix() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("kairos:cache:"), "kairos:cache:");
    }
}
