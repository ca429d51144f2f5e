//! Rate limiting: GCRA buckets per scope (global, per client address, per JWT subject, per API
//! key), top-level or per route, kept in memory or in Redis. Every limit that applies to a
//! request must admit it; a refused request uses up nothing in any of them.
//!
//! Which limits apply to a request on a route, scope by scope: the route's own limit if it
//! sets one, else the top-level one (unless the route says `"inherit": false`). An API key's
//! own `rate_limit` replaces the top-level `per_api_key`; a route's `per_api_key` is a further
//! budget per key on that route.

pub mod failures;
pub mod gcra;
pub mod memory;
pub mod redis;

use crate::config::model::{
    Config, OnBackendError, RateBackend, RateConfig, RateLimitConfig, RouteConfig, ScopeLimits,
};
use crate::edge::auth::{Identity, Scheme};
use crate::observability::metrics::Metrics;
use gcra::Rate;
use memory::{Key, Store};
use rustc_hash::FxHashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// Whom a limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    PerIp,
    PerUser,
    PerApiKey,
    /// One bucket per tenant (`tenants.*.rate_limits`).
    Tenant,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::PerIp => "per_ip",
            Scope::PerUser => "per_user",
            Scope::PerApiKey => "per_api_key",
            Scope::Tenant => "tenant",
        }
    }
}

/// Most limits one request can meet: its key's own, per key, per user, per IP, global.
const MAX_APPLICABLE: usize = 5;

/// What makes two limits of successive runtimes the same one (its buckets carry over).
#[derive(Debug, Clone, PartialEq)]
struct LimitId {
    scope: Scope,
    route: Option<String>,
    own_key: Option<String>,
    config: RateConfig,
}

/// One configured limit and its buckets.
struct Limit {
    id: LimitId,
    rate_ns: Rate,
    rate_us: Rate,
    /// The buckets in memory: the backend itself, or Redis' fallback.
    store: Arc<Store>,
    /// Redis keys of this limit start with this.
    redis_prefix: String,
    /// The length of the configured `key_prefix` at the start of `redis_prefix`: on a
    /// Cluster the hash tag goes right after it (before any free text).
    prefix_len: usize,
    /// On a Cluster, which hash tag this limit's keys carry.
    tag: TagBy,
    /// The policy's name in the IETF RateLimit fields.
    policy: String,
    /// Seconds a drained bucket takes to refill.
    window_s: u64,
}

/// The hash tag of a limit's keys on a Redis Cluster. Every key of one decision must share a
/// slot: the identity-bound limits of one decision (a key's own, per key, per user) all count
/// one caller, so they are tagged by the caller's name; a tenant's one bucket by the tenant; a
/// global bucket is one key met together with every client's per-IP bucket, so those share
/// one fixed tag, and per-IP limits never met with a global one are tagged by the address.
#[derive(Debug, Clone)]
enum TagBy {
    /// One tag for every key of the limit.
    Fixed(String),
    /// The tag of the client's key (address or name).
    Client,
}

/// The tag of the global limits and of the per-IP limits checked with them.
fn anonymous_tag() -> String {
    crate::base::redis::hash_tag("anonymous")
}

/// Which limits a route meets (indexes into the limits).
#[derive(Debug, Clone, Copy, Default)]
struct RoutePlan {
    global: Option<u32>,
    ip: Option<u32>,
    user: Option<u32>,
    key: Option<u32>,
    /// Whether `key` is the top-level default, which a key's own limit replaces.
    key_is_default: bool,
    /// Keys' own limits apply on this route.
    own_keys: bool,
}

impl RoutePlan {
    fn limited(&self, any_own: bool) -> bool {
        self.global.is_some()
            || self.ip.is_some()
            || self.user.is_some()
            || self.key.is_some()
            || (self.own_keys && any_own)
    }
}

/// The limits one request meets, with whom each counts.
#[derive(Default)]
pub struct Applicable {
    items: [Option<(u32, Option<Key>)>; MAX_APPLICABLE],
}

impl Applicable {
    fn iter(&self) -> impl Iterator<Item = &(u32, Option<Key>)> {
        self.items.iter().map_while(Option::as_ref)
    }

    /// Adds limit `item` (a request meets at most MAX_APPLICABLE limits).
    fn add(&mut self, item: (u32, Option<Key>)) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(item);
        }
    }
}

/// One limit's state after a decision, in whole seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStatus {
    pub limit_idx: u32,
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
    /// Seconds until this limit admits again; 0 unless it refused the request.
    pub retry_after_s: u64,
    pub refused: bool,
}

/// Every applicable limit's state after one decision.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub items: [LimitStatus; MAX_APPLICABLE],
    pub n: u8,
}

impl Report {
    fn push(&mut self, s: LimitStatus) {
        if (self.n as usize) < MAX_APPLICABLE {
            self.items[self.n as usize] = s;
            self.n += 1;
        }
    }

    /// Adds the statuses of a later decision on the same request.
    pub fn merge(&mut self, later: &Report) {
        for s in later.statuses() {
            self.push(*s);
        }
    }

    pub fn statuses(&self) -> &[LimitStatus] {
        &self.items[..self.n as usize]
    }

    /// The limit closest to refusing: fewest remaining, then smallest.
    pub fn tightest(&self) -> Option<&LimitStatus> {
        self.statuses()
            .iter()
            .min_by_key(|s| (s.remaining, s.limit, std::cmp::Reverse(s.reset_s)))
    }

    /// Seconds until every refusing limit admits again (at least 1).
    pub fn retry_after_s(&self) -> u64 {
        self.statuses()
            .iter()
            .filter(|s| s.refused)
            .map(|s| s.retry_after_s)
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// The scope of the first limit that refused.
    pub fn refused_by(&self) -> Option<u32> {
        self.statuses()
            .iter()
            .find(|s| s.refused)
            .map(|s| s.limit_idx)
    }
}

pub enum Decision {
    Admitted(Report),
    Limited(Report),
    /// Redis is down and `on_backend_error` is deny.
    Unavailable,
}

/// A decision made at once (memory) or awaiting Redis.
pub enum Pending<'a> {
    Ready(Decision),
    Remote(Pin<Box<dyn Future<Output = Decision> + 'a>>),
}

/// Series resolved once per limiter.
struct LimiterMetrics {
    memory: prometheus::Histogram,
    redis: prometheus::Histogram,
    fallback: prometheus::Histogram,
}

pub struct RateLimiter {
    limits: Vec<Limit>,
    routes: Vec<RoutePlan>,
    /// API key name -> its own limit.
    own: FxHashMap<Box<str>, u32>,
    /// Tenant index -> its limit.
    tenants: Vec<Option<u32>>,
    redis: Option<redis::RedisStore>,
    /// Identity of the Redis settings, for handing the connection over on reload.
    redis_id: Option<RedisId>,
    on_error: OnBackendError,
    max_keys: u64,
    /// Bits of an IPv6 address that key a per-IP limit.
    ipv6_prefix: u8,
    pub headers: bool,
    pub ietf_headers: bool,
    metrics: LimiterMetrics,
}

/// The Redis settings a limiter's connection was made for (URL, TLS files, timeout, prefix).
type RedisId = (
    Vec<u8>,
    Option<crate::base::redis::TlsFiles>,
    std::time::Duration,
    String,
);

/// Seconds, rounded up.
fn ceil_s(units: u64, per_second: f64) -> u64 {
    (units as f64 / per_second).ceil() as u64
}

/// Why a rate limiter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitBuildError {
    #[error("redis_url is not UTF-8")]
    RedisUrlNotUtf8,
    #[error(transparent)]
    RedisUrl(#[from] redis::InvalidRedisUrl),
}

impl RateLimiter {
    /// The limiter for `config`, or `None` when nothing is limited. Buckets of limits that
    /// `previous` already had (same scope, route, key and rate) carry over, and so does its
    /// Redis connection when the Redis settings are unchanged.
    pub fn build(
        config: &Config,
        metrics: &Metrics,
        previous: Option<&RateLimiter>,
    ) -> Result<Option<RateLimiter>, RateLimitBuildError> {
        let Some(rl) = &config.rate_limiting else {
            return Ok(None);
        };
        let mut b = Builder {
            rl,
            limits: Vec::new(),
            previous,
        };
        let top = rl.limits;
        let top_idx = TopLimits {
            global: top.global.map(|c| b.limit(Scope::Global, None, None, c)),
            ip: top.per_ip.map(|c| b.limit(Scope::PerIp, None, None, c)),
            user: top.per_user.map(|c| b.limit(Scope::PerUser, None, None, c)),
            key: top
                .per_api_key
                .map(|c| b.limit(Scope::PerApiKey, None, None, c)),
        };
        let mut own = FxHashMap::default();
        for key in config.api_keys.iter().flat_map(|k| &k.keys) {
            if let Some(c) = key.rate_limit {
                let i = b.limit(Scope::PerApiKey, None, Some(&key.name), c);
                own.insert(key.name.as_str().into(), i);
            }
        }
        let tenants = config
            .tenancy
            .iter()
            .flat_map(|t| &t.tenants)
            .map(|t| {
                t.rate_limit
                    .map(|c| b.limit(Scope::Tenant, None, Some(&t.id), c))
            })
            .collect();
        let routes: Vec<RoutePlan> = config.routes.iter().map(|r| b.plan(r, &top_idx)).collect();
        let mut limits = b.limits;
        for p in &routes {
            if let (Some(ip), Some(_)) = (p.ip, p.global) {
                limits[ip as usize].tag = TagBy::Fixed(anonymous_tag());
            }
        }
        let (redis, redis_id) = match &rl.backend {
            RateBackend::Memory => (None, None),
            RateBackend::Redis {
                url,
                tls,
                timeout,
                key_prefix,
            } => {
                let id = (url.0.clone(), tls.clone(), *timeout, key_prefix.clone());
                let reused = previous.and_then(|p| match (&p.redis, &p.redis_id) {
                    (Some(r), Some(pid)) if *pid == id => Some(r.clone()),
                    _ => None,
                });
                let store = match reused {
                    Some(s) => s,
                    None => {
                        let url = std::str::from_utf8(&url.0)
                            .map_err(|_| RateLimitBuildError::RedisUrlNotUtf8)?;
                        redis::RedisStore::new(
                            url,
                            tls.as_ref(),
                            *timeout,
                            key_prefix,
                            metrics
                                .ratelimit_backend_errors
                                .with_label_values(&["redis"]),
                            metrics.ratelimit_backend_up.with_label_values(&["redis"]),
                            metrics.redis_up.with_label_values(&["rate_limit"]),
                            match rl.on_backend_error {
                                OnBackendError::Allow => {
                                    "each instance enforces the limits on its own"
                                }
                                OnBackendError::Deny => "limited routes answer 503",
                            },
                        )?
                    }
                };
                (Some(store), Some(id))
            }
        };
        let histogram = |backend: &str| {
            metrics
                .ratelimit_decision_duration
                .with_label_values(&[backend])
        };
        Ok(Some(RateLimiter {
            limits,
            routes,
            own,
            tenants,
            redis,
            redis_id,
            on_error: rl.on_backend_error,
            max_keys: rl.max_keys,
            ipv6_prefix: rl.ipv6_prefix,
            headers: rl.headers,
            ietf_headers: rl.ietf_headers,
            metrics: LimiterMetrics {
                memory: histogram("memory"),
                redis: histogram("redis"),
                fallback: histogram("fallback"),
            },
        }))
    }

    /// Whether any limit applies on route `route` (then every response carries the headers).
    pub fn limits_route(&self, route: usize) -> bool {
        self.routes
            .get(route)
            .is_some_and(|p| p.limited(!self.own.is_empty()))
    }

    /// The scope of limit `idx`, for the metric label.
    pub fn scope(&self, idx: u32) -> Scope {
        self.limits[idx as usize].id.scope
    }

    /// The identity-free limits (per IP, global) a request on `route` from `ip` meets:
    /// decided before authentication, so that requests failing it are counted too.
    pub fn applicable_anonymous(&self, route: usize, ip: Option<IpAddr>) -> Applicable {
        let mut out = Applicable::default();
        let Some(plan) = self.routes.get(route) else {
            return out;
        };
        if let (Some(i), Some(ip)) = (plan.ip, ip) {
            let key = crate::base::net::client_key(ip, self.ipv6_prefix);
            out.add((i, Some(Key::Ip(key))));
        }
        if let Some(i) = plan.global {
            out.add((i, None));
        }
        out
    }

    /// The identity-bound limits (a key's own, per key, per user) a request on `route` by
    /// `identity` meets: decided once authentication has said who the caller is.
    pub fn applicable_identified(&self, route: usize, identity: Option<&Identity>) -> Applicable {
        let mut out = Applicable::default();
        let Some(plan) = self.routes.get(route) else {
            return out;
        };
        if let Some(id) = identity.filter(|i| i.scheme == Scheme::ApiKey) {
            let own = match plan.own_keys {
                true => self.own.get(id.name.as_str()).copied(),
                false => None,
            };
            if let Some(i) = own {
                out.add((i, None));
            }
            if let Some(i) = plan.key.filter(|_| own.is_none() || !plan.key_is_default) {
                out.add((i, Some(Key::Name(id.name.as_str().into()))));
            }
        }
        if let (Some(i), Some(id)) = (plan.user, identity) {
            // A token without `sub` has no user to count.
            if id.scheme == Scheme::Jwt && id.name != "-" {
                out.add((i, Some(Key::Name(id.name.as_str().into()))));
            }
        }
        out
    }

    /// The tenant-wide limit of tenant `t`, if it has one.
    pub fn applicable_tenant(&self, t: usize) -> Option<Applicable> {
        let i = (*self.tenants.get(t)?)?;
        let mut out = Applicable::default();
        out.add((i, None));
        Some(out)
    }

    /// Decides one request: at once in memory, or through Redis.
    pub fn decide<'a>(&'a self, req: Applicable) -> Pending<'a> {
        if req.iter().next().is_none() {
            // Nothing applies to this caller (say, a JWT caller on a route limited per API
            // key): admitted, and no reason to ask Redis or to refuse while it is down.
            return Pending::Ready(Decision::Admitted(Report::default()));
        }
        match &self.redis {
            None => Pending::Ready(self.decide_memory(&req, &self.metrics.memory)),
            Some(r) if !r.is_up() => Pending::Ready(self.fallback(&req)),
            Some(r) => Pending::Remote(Box::pin(async move {
                let start = Instant::now();
                let cluster = r.is_cluster();
                let buckets: Vec<(String, Rate)> = req
                    .iter()
                    .map(|(i, key)| {
                        let l = &self.limits[*i as usize];
                        let client = match key {
                            None => String::new(),
                            Some(Key::Ip(ip)) => match ip {
                                IpAddr::V4(_) => ip.to_string(),
                                IpAddr::V6(_) => format!("{ip}/{}", self.ipv6_prefix),
                            },
                            Some(Key::Name(name)) => name.to_string(),
                        };
                        let k = match (cluster, &l.tag) {
                            (false, _) => format!("{}{client}", l.redis_prefix),
                            (true, tag) => {
                                let (prefix, rest) = l.redis_prefix.split_at(l.prefix_len);
                                let tag = match tag {
                                    TagBy::Fixed(t) => t.clone(),
                                    TagBy::Client => crate::base::redis::hash_tag(&client),
                                };
                                format!("{prefix}{tag}{rest}{client}")
                            }
                        };
                        (k, l.rate_us)
                    })
                    .collect();
                match r.decide(&buckets).await {
                    Ok(v) => {
                        let mut report = Report::default();
                        for ((i, _), tat) in req.iter().zip(&v.tats) {
                            let rate = &self.limits[*i as usize].rate_us;
                            let refused = !v.admitted && rate.acquire(*tat, v.now).is_err();
                            report.push(status(
                                *i,
                                rate,
                                *tat,
                                v.now,
                                refused,
                                redis::UNITS_PER_SECOND,
                            ));
                        }
                        self.metrics.redis.observe(start.elapsed().as_secs_f64());
                        match v.admitted {
                            true => Decision::Admitted(report),
                            false => Decision::Limited(report),
                        }
                    }
                    Err(redis::Unavailable) => self.fallback(&req),
                }
            })),
        }
    }

    /// What Redis' absence means: the local limiter's decision, or 503.
    fn fallback(&self, req: &Applicable) -> Decision {
        match self.on_error {
            OnBackendError::Allow => self.decide_memory(req, &self.metrics.fallback),
            OnBackendError::Deny => Decision::Unavailable,
        }
    }

    fn decide_memory(&self, req: &Applicable, histogram: &prometheus::Histogram) -> Decision {
        use std::sync::atomic::{AtomicU64, Ordering};
        // One clock for the buckets and the latency histogram.
        let now = memory::now_ns();
        let mut taken: [Option<(&Limit, Arc<AtomicU64>, memory::Taken)>; MAX_APPLICABLE] =
            Default::default();
        let mut report = Report::default();
        let mut any_refused = false;
        for (j, (i, key)) in req.iter().enumerate() {
            let l = &self.limits[*i as usize];
            let (tat, refused) = match any_refused {
                // Already refused: only see whether this limit would refuse too, without
                // creating a bucket.
                true => {
                    let cur = l
                        .store
                        .peek(key.as_ref())
                        .map_or(0, |c| c.load(Ordering::Acquire));
                    (cur, l.rate_ns.acquire(cur, now).is_err())
                }
                false => {
                    let cell = l.store.cell(key.as_ref());
                    match memory::acquire(&cell, &l.rate_ns, now) {
                        Ok(t) => {
                            taken[j] = Some((l, cell, t));
                            (t.after, false)
                        }
                        Err(t) => (t, true),
                    }
                }
            };
            any_refused |= refused;
            report.push(status(*i, &l.rate_ns, tat, now, refused, 1e9));
        }
        if any_refused {
            // Give back what the limits that admitted it took, and report them as they are.
            for (j, t) in taken.iter().enumerate() {
                if let Some((l, cell, taken)) = t {
                    memory::refund(cell, &l.rate_ns, *taken);
                    let cur = cell.load(Ordering::Acquire);
                    let idx = report.items[j].limit_idx;
                    report.items[j] = status(idx, &l.rate_ns, cur, now, false, 1e9);
                }
            }
        }
        histogram.observe(memory::now_ns().saturating_sub(now) as f64 / 1e9);
        match any_refused {
            false => Decision::Admitted(report),
            true => Decision::Limited(report),
        }
    }

    /// Clients the memory buckets of every limit hold (for tests and the admin API).
    pub fn keys_in_memory(&self) -> u64 {
        self.limits.iter().map(|l| l.store.len()).sum()
    }

    /// For readiness: `false` when limited routes would answer 503 because the backend
    /// (Redis, with `on_backend_error: deny`) does not answer now; `true` otherwise.
    pub async fn can_decide(&self) -> bool {
        match (&self.redis, self.on_error) {
            (Some(r), OnBackendError::Deny) => r.check().await,
            _ => true,
        }
    }

    /// The Redis client, if the backend is Redis (for the readiness answer).
    pub fn redis_client(&self) -> Option<&std::sync::Arc<crate::base::redis::RedisClient>> {
        self.redis.as_ref().map(redis::RedisStore::client)
    }

    /// Whether decisions currently go to Redis.
    pub fn backend_up(&self) -> Option<bool> {
        self.redis.as_ref().map(redis::RedisStore::is_up)
    }

    /// The rate-limit headers of a response on a limited route: X-RateLimit-* for the
    /// tightest limit, and the IETF draft's fields for all of them when switched on.
    pub fn apply_headers(&self, report: &Report, headers: &mut actix_web::http::header::HeaderMap) {
        use actix_web::http::header::{HeaderName, HeaderValue};
        // Made at compile time: `from_static` at run time validates a name on every call.
        const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
        const STATE: HeaderName = HeaderName::from_static("ratelimit");
        if self.headers {
            if let Some(t) = report.tightest() {
                headers.insert(LIMIT, number(u64::from(t.limit)));
                headers.insert(REMAINING, number(u64::from(t.remaining)));
                headers.insert(RESET, number(t.reset_s));
            }
        }
        if self.ietf_headers && report.n > 0 {
            let (policy, state) = self.ietf_fields(report);
            for (name, value) in [(POLICY, policy), (STATE, state)] {
                if let Ok(v) = HeaderValue::try_from(value) {
                    headers.insert(name, v);
                }
            }
        }
    }

    /// RateLimit-Policy and RateLimit values (IETF draft) for `report`.
    pub fn ietf_fields(&self, report: &Report) -> (String, String) {
        use std::fmt::Write;
        let (mut policy, mut state) = (String::new(), String::new());
        for s in report.statuses() {
            let l = &self.limits[s.limit_idx as usize];
            let sep = if policy.is_empty() { "" } else { ", " };
            let _ = write!(
                policy,
                "{sep}\"{}\";q={};w={}",
                l.policy, s.limit, l.window_s
            );
            let _ = write!(
                state,
                "{sep}\"{}\";r={};t={}",
                l.policy, s.remaining, s.reset_s
            );
        }
        (policy, state)
    }
}

/// A number as a header value. Those below 4096 (most limits, counts and resets) come from a
/// table of static values, whose clones neither allocate nor format; larger ones are written
/// to the worker's arena (no allocation either).
fn number(n: u64) -> actix_web::http::header::HeaderValue {
    use actix_web::http::header::HeaderValue;
    const CACHED: u64 = 4096;
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if n >= CACHED {
        let digits = crate::base::arena::build(20, |b| {
            b.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
        });
        return HeaderValue::from_maybe_shared(digits).unwrap_or_else(|_| HeaderValue::from(n));
    }
    let table = SMALL.get_or_init(|| {
        (0..CACHED)
            .map(|i| HeaderValue::from_static(Box::leak(i.to_string().into_boxed_str())))
            .collect()
    });
    table[n as usize].clone()
}

fn status(idx: u32, rate: &Rate, tat: u64, now: u64, refused: bool, per_s: f64) -> LimitStatus {
    let s = rate.status(tat, now);
    LimitStatus {
        limit_idx: idx,
        limit: s.limit,
        remaining: if refused { 0 } else { s.remaining },
        reset_s: ceil_s(s.reset, per_s),
        retry_after_s: if refused {
            ceil_s(s.retry_after, per_s).max(1)
        } else {
            0
        },
        refused,
    }
}

struct TopLimits {
    global: Option<u32>,
    ip: Option<u32>,
    user: Option<u32>,
    key: Option<u32>,
}

struct Builder<'a> {
    rl: &'a RateLimitConfig,
    limits: Vec<Limit>,
    previous: Option<&'a RateLimiter>,
}

impl Builder<'_> {
    fn limit(
        &mut self,
        scope: Scope,
        route: Option<&str>,
        own_key: Option<&str>,
        config: RateConfig,
    ) -> u32 {
        let id = LimitId {
            scope,
            route: route.map(str::to_string),
            own_key: own_key.map(str::to_string),
            config,
        };
        let rate_ns = Rate::new(config, 1e9);
        let keyed = own_key.is_none() && scope != Scope::Global;
        let store = self
            .previous
            .filter(|p| p.max_keys == self.rl.max_keys && p.ipv6_prefix == self.rl.ipv6_prefix)
            .and_then(|p| p.limits.iter().find(|l| l.id == id))
            .map(|l| l.store.clone())
            .unwrap_or_else(|| {
                Arc::new(match keyed {
                    true => Store::keyed(&rate_ns, self.rl.max_keys),
                    false => Store::single(),
                })
            });
        let prefix = match &self.rl.backend {
            RateBackend::Redis { key_prefix, .. } => key_prefix.as_str(),
            RateBackend::Memory => "",
        };
        // Route and key names are free text: length-prefixed, so no two limits' keys can
        // collide whatever the names contain.
        let redis_prefix = match (route, own_key) {
            (_, Some(t)) if scope == Scope::Tenant => format!("{prefix}tenant:{}:{t}", t.len()),
            (_, Some(k)) => format!("{prefix}key:{}:{k}", k.len()),
            (Some(r), None) => format!("{prefix}route:{}:{r}:{}:", r.len(), scope.as_str()),
            (None, None) => format!("{prefix}{}:", scope.as_str()),
        };
        let tag = match (scope, own_key) {
            (Scope::Global, _) => TagBy::Fixed(anonymous_tag()),
            // A tenant's bucket, or a key's own: tagged like the caller it counts.
            (_, Some(name)) => TagBy::Fixed(crate::base::redis::hash_tag(name)),
            _ => TagBy::Client,
        };
        let policy = match route {
            Some(_) => format!("route_{}", scope.as_str()),
            None => scope.as_str().to_string(),
        };
        self.limits.push(Limit {
            window_s: ceil_s(rate_ns.tolerance, 1e9),
            rate_us: Rate::new(config, redis::UNITS_PER_SECOND),
            rate_ns,
            store,
            redis_prefix,
            prefix_len: prefix.len(),
            tag,
            policy,
            id,
        });
        (self.limits.len() - 1) as u32
    }

    fn plan(&mut self, r: &RouteConfig, top: &TopLimits) -> RoutePlan {
        let (own, inherit) = match &r.rate_limit {
            Some(rl) => (rl.limits, rl.inherit),
            None => (ScopeLimits::default(), true),
        };
        let name = Some(r.name.as_str());
        let mut pick = |scope: Scope, own: Option<RateConfig>, top: Option<u32>| match own {
            Some(c) => (Some(self.limit(scope, name, None, c)), false),
            None if inherit => (top, top.is_some()),
            None => (None, false),
        };
        let (global, _) = pick(Scope::Global, own.global, top.global);
        let (ip, _) = pick(Scope::PerIp, own.per_ip, top.ip);
        let (user, _) = pick(Scope::PerUser, own.per_user, top.user);
        let (key, key_is_default) = pick(Scope::PerApiKey, own.per_api_key, top.key);
        RoutePlan {
            global,
            ip,
            user: user.filter(|_| r.auth.jwt),
            key: key.filter(|_| r.auth.api_key),
            key_is_default,
            own_keys: inherit && r.auth.api_key,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_error_text() {
        use super::RateLimitBuildError as E;
        assert_eq!(E::RedisUrlNotUtf8.to_string(), "redis_url is not UTF-8");
        assert_eq!(
            E::from(super::redis::InvalidRedisUrl("no scheme".into())).to_string(),
            "invalid redis_url: no scheme"
        );
    }

    #[test]
    fn header_numbers_from_the_table_and_beyond() {
        for n in [0u64, 1, 42, 4095, 4096, 1_000_000] {
            assert_eq!(super::number(n).to_str().unwrap(), n.to_string());
        }
    }
}
