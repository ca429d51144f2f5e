//! Every Prometheus metric the gateway exports, declared here and nowhere else.
//!
//! Cardinality is bounded by construction: `route` is a route's configured name (or
//! `unmatched`), never a raw path; `method` is one of the nine standard methods or `OTHER`;
//! `status` is a three-digit code; `upstream` is a configured upstream name.
//!
//! The hot path takes no lock. Per-request series are resolved once per worker thread and
//! kept in a thread-local table ([`Metrics::series`]); after that a request costs a hash
//! lookup and a few relaxed atomic adds. Upstream series are resolved when the runtime is
//! built ([`UpstreamSeries`]). Later features add their metrics to [`Metrics`] the same way.

use crate::config::model::MethodSet;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// Request latency buckets (seconds): 100 µs to 30 s, about three per decade.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Rate-limit decision buckets (seconds): 1 µs to 250 ms; a memory decision takes well under
/// a microsecond, a Redis one a round trip.
pub const DECISION_BUCKETS: [f64; 16] = [
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.25,
];

/// The `route` label of requests that matched no route.
pub const UNMATCHED: &str = crate::config::model::UNMATCHED_ROUTE;

/// Why an upstream attempt failed: the `kind` label of `kairos_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout = 1,
    Protocol = 2,
    Status5xx = 3,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Status5xx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Status5xx => "status_5xx",
        }
    }
}

/// The registry and every metric in it. One per gateway process (tests build several).
pub struct Metrics {
    registry: Registry,
    /// A process-unique id, so thread-local series of one `Metrics` never serve another.
    id: u64,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub active_connections: IntGauge,
    pub inflight: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_success: prometheus::Gauge,
    /// The config store's revision whose document runs here (0 without a store).
    pub config_revision: IntGauge,
    /// The latest revision of the config store's key seen, applied or refused.
    pub config_store_revision: IntGauge,
    /// 1 while the config store answers, 0 while it does not.
    pub config_store_up: IntGauge,
    pub build_info: IntGaugeVec,
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    /// Answers of a discovery source, by upstream, source and result (changed, unchanged,
    /// error).
    pub discovery_updates: IntCounterVec,
    /// Servers the discovery source last gave an upstream.
    pub discovery_servers: IntGaugeVec,
    pub auth_failures: IntCounterVec,
    pub ratelimited: IntCounterVec,
    pub ratelimit_decision_duration: HistogramVec,
    pub ratelimit_backend_errors: IntCounterVec,
    pub ratelimit_backend_up: IntGaugeVec,
    /// Whether each Redis user's connection reaches Redis, by role (rate_limit, cache, quota).
    pub redis_up: IntGaugeVec,
    pub protocol_errors: IntCounterVec,
    /// Transformation steps that failed, by route and step index (skipped or refused).
    pub transform_errors: IntCounterVec,
    /// gRPC calls on `grpc` routes by route and the gRPC status they ended with.
    pub grpc_responses: IntCounterVec,
    /// Brought up to the log writer's own count at each scrape ([`Metrics::render`]).
    pub log_dropped: IntCounter,
    /// WebSockets open now, opened in all, and their bytes by direction.
    pub websockets_open: IntGauge,
    pub websockets_total: IntCounter,
    pub websocket_bytes: IntCounterVec,
    /// The response cache's metrics.
    pub cache: CacheMetrics,
    /// Per tenant (configured ids, else `other`): requests by status class.
    pub tenant_requests: IntCounterVec,
    pub tenant_duration: HistogramVec,
    /// Share of the quota used, by tenant and period (`month`, `day`).
    pub tenant_quota_used: prometheus::GaugeVec,
    /// Responses past a tenant's soft limit (`warn_at`).
    pub tenant_quota_warnings: IntCounterVec,
    /// Quota decisions the store could not take (Redis unreachable): admitted, not counted.
    pub tenant_quota_store_errors: IntCounterVec,
    servers: Arc<ServerGauges>,
}

/// The response cache: answers by outcome, what the store holds, what it evicts.
#[derive(Clone)]
pub struct CacheMetrics {
    /// Cached routes' requests by route and result (hit, miss, stale, expired, revalidated,
    /// bypass).
    pub requests: IntCounterVec,
    pub bytes: IntGauge,
    pub entries: IntGauge,
    pub evictions: IntCounter,
    pub coalesced_waits: IntCounter,
    /// Redis tier calls that failed (unreachable, timed out, error answers) and malformed
    /// entries read from it.
    pub redis_errors: IntCounter,
    /// `kairos_redis_up` (the same series as [`Metrics::redis_up`]): the Redis tier reports
    /// its health as role `cache`.
    pub redis_up: IntGaugeVec,
}

impl CacheMetrics {
    fn new(redis_up: IntGaugeVec) -> Self {
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric definition");
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric definition");
        CacheMetrics {
            requests: counter_vec(
                "kairos_cache_requests_total",
                "Requests of cached routes by route and result: hit, miss, stale (served stale), \
                 expired (stale, fetched again), revalidated (304 from the upstream), bypass.",
                &["route", "result"],
            ),
            bytes: gauge(
                "kairos_cache_bytes",
                "Bytes the memory tier holds (bodies, headers, keys).",
            ),
            entries: gauge("kairos_cache_entries", "Entries the memory tier holds."),
            evictions: counter(
                "kairos_cache_evictions_total",
                "Entries the memory tier evicted to stay within max_size.",
            ),
            coalesced_waits: counter(
                "kairos_cache_coalesced_waits_total",
                "Requests that waited for another request's fetch of the same key.",
            ),
            redis_errors: counter(
                "kairos_cache_redis_errors_total",
                "Redis tier calls that failed (unreachable, timed out, error answers) and \
                 malformed entries read from it; each is a miss or a write not made.",
            ),
            redis_up,
        }
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition")
}

impl Metrics {
    pub fn new() -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let redis_up = IntGaugeVec::new(
            Opts::new(
                "kairos_redis_up",
                "1 while the Redis of a role (rate_limit, cache, quota) answers, 0 while its \
                 last call could not reach it (refused, timed out, dropped, or a demoted master); \
                 absent for roles that use no Redis.",
            ),
            &["role"],
        )
        .expect("valid metric definition");
        let m = Metrics {
            registry: Registry::new(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            requests: counter_vec(
                "kairos_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: histogram_vec(
                "kairos_request_duration_seconds",
                "Time from the request's arrival to the last byte of the response.",
                &["route", "method"],
            ),
            request_bytes: counter_vec(
                "kairos_request_bytes_total",
                "Request body bytes received from clients.",
                &["route"],
            ),
            response_bytes: counter_vec(
                "kairos_response_bytes_total",
                "Response body bytes sent to clients.",
                &["route"],
            ),
            upstream_duration: histogram_vec(
                "kairos_upstream_request_duration_seconds",
                "Time from sending a request upstream to its response head.",
                &["upstream"],
            ),
            upstream_errors: counter_vec(
                "kairos_upstream_errors_total",
                "Failed upstream attempts: connect, timeout, protocol or status_5xx.",
                &["upstream", "kind"],
            ),
            active_connections: IntGauge::new(
                "kairos_active_connections",
                "Open client connections.",
            )
            .expect("valid metric definition"),
            inflight: IntGauge::new(
                "kairos_inflight_requests",
                "Requests received whose response has not finished.",
            )
            .expect("valid metric definition"),
            config_reloads: counter_vec(
                "kairos_config_reloads_total",
                "Config reloads, by result (success or failure).",
                &["result"],
            ),
            config_last_success: prometheus::Gauge::new(
                "kairos_config_last_reload_success_timestamp_seconds",
                "When the config in effect was loaded (start or last successful reload), Unix time.",
            )
            .expect("valid metric definition"),
            config_revision: IntGauge::new(
                "kairos_config_revision",
                "The config store revision whose shared config runs here (cluster.config_store; 0 without one).",
            )
            .expect("valid metric definition"),
            config_store_revision: IntGauge::new(
                "kairos_config_store_revision",
                "The latest revision of the config store's key seen by this instance, applied or refused.",
            )
            .expect("valid metric definition"),
            config_store_up: IntGauge::new(
                "kairos_config_store_up",
                "1 while the config store (etcd) answers this instance, 0 while it does not.",
            )
            .expect("valid metric definition"),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "kairos_build_info",
                    "Always 1; the version is in the label.",
                ),
                &["version"],
            )
            .expect("valid metric definition"),
            spans_exported: IntCounter::new(
                "kairos_tracing_spans_exported_total",
                "Spans the OTLP collector accepted.",
            )
            .expect("valid metric definition"),
            spans_dropped: counter_vec(
                "kairos_tracing_spans_dropped_total",
                "Spans lost: queue_full (export too slow) or export_failed (collector down).",
                &["reason"],
            ),
            upstream_retries: counter_vec(
                "kairos_upstream_retries_total",
                "Retries sent to another upstream server after a failed attempt.",
                &["upstream"],
            ),
            upstream_ejections: counter_vec(
                "kairos_upstream_ejections_total",
                "Times outlier detection took a server out after consecutive failures.",
                &["upstream", "server"],
            ),
            discovery_updates: counter_vec(
                "kairos_discovery_updates_total",
                "Answers of an upstream's discovery source: changed (a new server set), \
                 unchanged, or error (the last known servers are kept).",
                &["upstream", "source", "result"],
            ),
            discovery_servers: IntGaugeVec::new(
                Opts::new(
                    "kairos_discovery_servers",
                    "Servers the discovery source last gave the upstream.",
                ),
                &["upstream"],
            )
            .expect("valid metric definition"),
            auth_failures: counter_vec(
                "kairos_auth_failures_total",
                "Requests refused by authentication or permissions, by route, method (jwt, \
                 api_key; jwt_or_api_key when no credential was sent) and reason.",
                &["route", "method", "reason"],
            ),
            ratelimited: counter_vec(
                "kairos_ratelimited_total",
                "Requests refused with 429, by route and the scope of the limit that refused \
                 (global, per_ip, per_user, per_api_key).",
                &["route", "scope"],
            ),
            ratelimit_decision_duration: HistogramVec::new(
                HistogramOpts::new(
                    "kairos_ratelimit_decision_duration_seconds",
                    "Time one rate-limit decision took, by backend (memory, redis, or fallback \
                     while Redis is unreachable).",
                )
                .buckets(DECISION_BUCKETS.to_vec()),
                &["backend"],
            )
            .expect("valid metric definition"),
            ratelimit_backend_errors: counter_vec(
                "kairos_ratelimit_backend_errors_total",
                "Rate-limit decisions the backend failed (unreachable, timed out, or an error).",
                &["backend"],
            ),
            ratelimit_backend_up: IntGaugeVec::new(
                Opts::new(
                    "kairos_ratelimit_backend_up",
                    "1 while the rate-limit backend answers, 0 during an outage.",
                ),
                &["backend"],
            )
            .expect("valid metric definition"),
            redis_up: redis_up.clone(),
            transform_errors: counter_vec(
                "kairos_transform_errors_total",
                "Transformation steps that failed (the message refused, or passed on without \
                 the step when its on_error is skip), by route, step index and step type.",
                &["route", "step", "type"],
            ),
            grpc_responses: counter_vec(
                "kairos_grpc_responses_total",
                "gRPC calls on routes with `grpc`, by route and the grpc-status they ended with \
                 (the upstream's, or the gateway's own for its errors; `unknown` when the call \
                 ended without one).",
                &["route", "grpc_status"],
            ),
            protocol_errors: counter_vec(
                "kairos_http_protocol_errors_total",
                "Request heads refused before routing: malformed (400), too slow (408), \
                 too large (431).",
                &["status"],
            ),
            websockets_open: IntGauge::new(
                "kairos_websockets_open",
                "WebSockets open now (upgraded connections being relayed).",
            )
            .expect("valid metric definition"),
            websockets_total: IntCounter::new(
                "kairos_websockets_total",
                "WebSockets opened (handshakes the upstream accepted: 101, or 2xx to an extended CONNECT).",
            )
            .expect("valid metric definition"),
            websocket_bytes: counter_vec(
                "kairos_websocket_bytes_total",
                "Bytes relayed over WebSockets (frames as sent, headers included), by direction \
                 (client_to_upstream, upstream_to_client).",
                &["direction"],
            ),
            log_dropped: IntCounter::new(
                "kairos_log_dropped_total",
                "Log lines dropped because the log writer's queue was full (a slow or stalled \
                 reader of stderr, a slow disk).",
            )
            .expect("valid metric definition"),
            tenant_requests: counter_vec(
                "kairos_tenant_requests_total",
                "Requests by tenant (configured tenants; `other` for the rest) and status class \
                 (2xx, 3xx, 4xx, 5xx).",
                &["tenant", "class"],
            ),
            tenant_duration: histogram_vec(
                "kairos_tenant_request_duration_seconds",
                "Time from a tenant's request's arrival to its response head, by tenant.",
                &["tenant"],
            ),
            tenant_quota_used: prometheus::GaugeVec::new(
                Opts::new(
                    "kairos_tenant_quota_used_ratio",
                    "Share of a tenant's quota used in the current period (month or day, UTC).",
                ),
                &["tenant", "period"],
            )
            .expect("valid metric definition"),
            tenant_quota_warnings: counter_vec(
                "kairos_tenant_quota_warnings_total",
                "Tenant responses sent past the quota's soft limit (warn_at), by tenant.",
                &["tenant"],
            ),
            tenant_quota_store_errors: counter_vec(
                "kairos_tenant_quota_store_errors_total",
                "Quota decisions the store failed (admitted uncounted), by backend.",
                &["backend"],
            ),
            cache: CacheMetrics::new(redis_up.clone()),
            servers: Arc::new(ServerGauges::new()),
        };
        let collectors: [Box<dyn Collector>; 45] = [
            Box::new(m.config_revision.clone()),
            Box::new(m.config_store_revision.clone()),
            Box::new(m.config_store_up.clone()),
            Box::new(m.cache.requests.clone()),
            Box::new(m.cache.bytes.clone()),
            Box::new(m.cache.entries.clone()),
            Box::new(m.cache.evictions.clone()),
            Box::new(m.cache.coalesced_waits.clone()),
            Box::new(m.cache.redis_errors.clone()),
            Box::new(m.config_last_success.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.request_bytes.clone()),
            Box::new(m.response_bytes.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.upstream_errors.clone()),
            Box::new(m.active_connections.clone()),
            Box::new(m.inflight.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.spans_exported.clone()),
            Box::new(m.spans_dropped.clone()),
            Box::new(m.upstream_retries.clone()),
            Box::new(m.upstream_ejections.clone()),
            Box::new(m.discovery_updates.clone()),
            Box::new(m.discovery_servers.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.ratelimited.clone()),
            Box::new(m.ratelimit_decision_duration.clone()),
            Box::new(m.ratelimit_backend_errors.clone()),
            Box::new(m.ratelimit_backend_up.clone()),
            Box::new(m.redis_up.clone()),
            Box::new(m.protocol_errors.clone()),
            Box::new(m.transform_errors.clone()),
            Box::new(m.grpc_responses.clone()),
            Box::new(m.log_dropped.clone()),
            Box::new(m.websockets_open.clone()),
            Box::new(m.websockets_total.clone()),
            Box::new(m.websocket_bytes.clone()),
            Box::new(m.tenant_requests.clone()),
            Box::new(m.tenant_duration.clone()),
            Box::new(m.tenant_quota_used.clone()),
            Box::new(m.tenant_quota_warnings.clone()),
            Box::new(m.tenant_quota_store_errors.clone()),
            Box::new(ServerGaugesCollector(m.servers.clone())),
        ];
        for c in collectors {
            m.register(c);
        }
        #[cfg(target_os = "linux")]
        m.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that should read 0 before the first event, so rate() and alerts see them.
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for reason in ["queue_full", "export_failed"] {
            m.spans_dropped.with_label_values(&[reason]);
        }
        for status in ["400", "408", "431"] {
            m.protocol_errors.with_label_values(&[status]);
        }
        m
    }

    /// A request head actix-http refused before routing (400, 408 or 431). Rare, so the
    /// label lookup is not cached.
    pub fn protocol_error(&self, status: u16) {
        let code = match status {
            400 => "400",
            408 => "408",
            431 => "431",
            _ => "other",
        };
        self.protocol_errors.with_label_values(&[code]).inc();
        self.requests
            .with_label_values(&[UNMATCHED, "OTHER", code])
            .inc();
    }

    /// Adds a collector to the registry (the seam later features use for their own metrics).
    pub fn register(&self, c: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(c) {
            tracing::error!(error = %e, "metric registration failed");
        }
    }

    /// Requests in flight per upstream, summed over its servers (listed and discovered).
    pub fn upstream_inflight(&self) -> FxHashMap<String, u64> {
        let list = self.servers.list.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: FxHashMap<String, u64> = FxHashMap::default();
        let mut add = |upstream: &str, _: &str, state: &dyn ServerProbe| {
            *out.entry(upstream.to_string()).or_default() += u64::from(state.requests_in_flight());
        };
        for w in list.0.iter() {
            add(&w.upstream, &w.server, &*w.state);
        }
        for l in list.1.iter().filter_map(std::sync::Weak::upgrade) {
            l.each(&mut add);
        }
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = crate::observability::logging::dropped_lines();
        let seen = self.log_dropped.get();
        if dropped > seen {
            self.log_dropped.inc_by(dropped - seen);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metric encoding failed");
        }
        out
    }

    /// The series of one request outcome. `generation` identifies the runtime whose route
    /// indexes these are; `route` is `None` for unmatched requests.
    ///
    /// The first call for a combination on a thread creates the labelled series (that takes
    /// the registry's lock once); later calls are a thread-local lookup.
    pub fn series(
        &self,
        generation: u64,
        route: Option<(usize, &str)>,
        method: &str,
        status: u16,
    ) -> Rc<RequestSeries> {
        let method_idx = method_index(method);
        let route_idx = route.map_or(u32::MAX, |(i, _)| i as u32);
        // The generation is part of the key: after a reload, requests of the old and the new
        // runtime interleave on a thread without evicting each other.
        let key = (generation, route_idx, method_idx, status);
        SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != self.id || cache.map.len() >= MAX_CACHED_SERIES {
                cache.owner = self.id;
                cache.map.clear();
            }
            cache
                .map
                .entry(key)
                .or_insert_with(|| {
                    let route = route.map_or(UNMATCHED, |(_, name)| name);
                    let method = METHOD_LABELS[method_idx as usize];
                    let status = status.to_string();
                    Rc::new(RequestSeries {
                        requests: self.requests.with_label_values(&[route, method, &status]),
                        duration: self.request_duration.with_label_values(&[route, method]),
                        request_bytes: self.request_bytes.with_label_values(&[route]),
                        response_bytes: self.response_bytes.with_label_values(&[route]),
                    })
                })
                .clone()
        })
    }

    /// Counts one answer of the cache phase (`result`: hit, miss, stale, expired,
    /// revalidated, bypass) on a route of the runtime `generation`. Like [`Self::series`], a
    /// thread-local lookup after the first (`with_label_values` hashes the labels and takes a
    /// lock: about 600 instructions, a tenth of what a HIT costs the gateway itself).
    pub fn count_cache(&self, generation: u64, route: (usize, &str), result: &str) {
        let result_idx = CACHE_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(CACHE_RESULTS.len()) as u8;
        let key = (generation, route.0 as u32, result_idx);
        CACHE_SERIES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != self.id || cache.map.len() >= MAX_CACHED_SERIES {
                cache.owner = self.id;
                cache.map.clear();
            }
            cache
                .map
                .entry(key)
                .or_insert_with(|| self.cache.requests.with_label_values(&[route.1, result]))
                .inc();
        });
    }

    /// The series of one upstream, resolved when the runtime is built.
    pub fn upstream(&self, name: &str) -> UpstreamSeries {
        UpstreamSeries {
            name: Arc::from(name),
            duration: self.upstream_duration.with_label_values(&[name]),
            errors: UpstreamErrorKind::ALL
                .map(|k| self.upstream_errors.with_label_values(&[name, k.as_str()])),
            retries: self.upstream_retries.with_label_values(&[name]),
            ejections: self.upstream_ejections.clone(),
        }
    }

    /// Removes the series of routes, upstreams and servers (`(upstream, url)`) a reload took
    /// away, so that they neither linger on dashboards at their last value nor grow the
    /// exposition reload after reload.
    pub fn forget(&self, routes: &[String], upstreams: &[String], servers: &[(String, String)]) {
        if routes.is_empty() && upstreams.is_empty() && servers.is_empty() {
            return;
        }
        let gone = |names: &[&str], values: &[&str]| {
            let get = |k: &str| names.iter().position(|n| *n == k).map(|i| values[i]);
            get("route").is_some_and(|r| routes.iter().any(|x| x == r))
                || get("upstream").is_some_and(|u| upstreams.iter().any(|x| x == u))
                || matches!((get("upstream"), get("server")), (Some(u), Some(s))
                    if servers.iter().any(|(xu, xs)| xu == u && xs == s))
        };
        prune(&self.requests, &["route", "method", "status"], &gone);
        prune(&self.request_duration, &["route", "method"], &gone);
        prune(&self.request_bytes, &["route"], &gone);
        prune(&self.response_bytes, &["route"], &gone);
        prune(&self.auth_failures, &["route", "method", "reason"], &gone);
        prune(&self.transform_errors, &["route", "step", "type"], &gone);
        prune(&self.grpc_responses, &["route", "grpc_status"], &gone);
        prune(&self.cache.requests, &["route", "result"], &gone);
        prune(&self.ratelimited, &["route", "scope"], &gone);
        prune(&self.upstream_duration, &["upstream"], &gone);
        prune(&self.upstream_errors, &["upstream", "kind"], &gone);
        prune(&self.upstream_retries, &["upstream"], &gone);
        prune(&self.upstream_ejections, &["upstream", "server"], &gone);
        prune(
            &self.discovery_updates,
            &["upstream", "source", "result"],
            &gone,
        );
        prune(&self.discovery_servers, &["upstream"], &gone);
    }

    /// Removes the series of tenants no longer configured (`other` stays): a reload that
    /// removes a tenant leaves no series of it behind.
    pub fn forget_tenants(&self, configured: &[String]) {
        let gone = |names: &[&str], values: &[&str]| {
            names
                .iter()
                .position(|n| *n == "tenant")
                .map(|i| values[i])
                .is_some_and(|t| t != "other" && !configured.iter().any(|c| c == t))
        };
        prune(&self.tenant_requests, &["tenant", "class"], &gone);
        prune(&self.tenant_duration, &["tenant"], &gone);
        prune(&self.tenant_quota_used, &["tenant", "period"], &gone);
        prune(&self.tenant_quota_warnings, &["tenant"], &gone);
    }

    /// The servers whose live state the per-server gauges show (health, circuit, ejection,
    /// in-flight), read at scrape time: listed servers, and the current servers of each
    /// discovered upstream (`lists`). Replaced whole on reload, so servers that are gone leave
    /// no stale series.
    pub fn watch_servers(
        &self,
        servers: Vec<WatchedServer>,
        lists: Vec<std::sync::Weak<dyn ServerList>>,
    ) {
        *self.servers.list.lock().unwrap_or_else(|e| e.into_inner()) = (servers, lists);
    }
}

/// Removes every series of `vec` whose labels (named `names`, in the vec's order) `gone`
/// matches.
fn prune<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    names: &[&str],
    gone: &dyn Fn(&[&str], &[&str]) -> bool,
) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let values: Vec<&str> = names
                .iter()
                .map(|n| {
                    m.get_label()
                        .iter()
                        .find(|p| p.name() == *n)
                        .map_or("", |p| p.value())
                })
                .collect();
            if gone(names, &values) {
                let _ = vec.remove_label_values(&values);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The standard methods by index, and `OTHER` for extension methods (bounded cardinality).
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

fn method_index(m: &str) -> u8 {
    MethodSet::NAMES
        .iter()
        .position(|n| *n == m)
        .map_or(9, |i| i as u8)
}

/// The series one request outcome updates.
pub struct RequestSeries {
    pub requests: IntCounter,
    pub duration: Histogram,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
}

impl RequestSeries {
    pub fn record(&self, seconds: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(seconds);
        if request_bytes > 0 {
            self.request_bytes.inc_by(request_bytes);
        }
        if response_bytes > 0 {
            self.response_bytes.inc_by(response_bytes);
        }
    }
}

/// One upstream's series.
#[derive(Clone)]
pub struct UpstreamSeries {
    pub duration: Histogram,
    errors: [IntCounter; 4],
    pub retries: IntCounter,
    name: Arc<str>,
    /// Labelled by server when one is ejected (rare: the label lookup is not cached, so
    /// discovered servers need no series built ahead).
    ejections: IntCounterVec,
}

impl UpstreamSeries {
    pub fn error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].inc();
    }

    pub fn ejection(&self, server: &str) {
        self.ejections
            .with_label_values(&[&self.name, server])
            .inc();
    }
}

/// One server the per-server gauges report.
pub struct WatchedServer {
    pub upstream: String,
    pub server: String,
    pub state: Arc<dyn ServerProbe>,
}

/// What the per-server gauges read from a server's live state when Prometheus scrapes
/// (implemented by the upstream's server state; metrics know nothing of upstreams).
pub trait ServerProbe: Send + Sync {
    fn healthy(&self) -> bool;
    /// 0 closed, 1 open, 2 half-open.
    fn circuit_code(&self) -> i64;
    fn ejected_at(&self, now_ms: u64) -> bool;
    fn requests_in_flight(&self) -> u32;
}

/// A changing list of servers (a discovered upstream's), walked at scrape time:
/// `f(upstream, server, state)` for each.
pub trait ServerList: Send + Sync {
    fn each(&self, f: &mut dyn FnMut(&str, &str, &dyn ServerProbe));
}

/// Listed servers, and the lists of discovered upstreams.
type Watched = (Vec<WatchedServer>, Vec<std::sync::Weak<dyn ServerList>>);

/// Gauges computed from the servers' live state when Prometheus scrapes.
struct ServerGauges {
    list: Mutex<Watched>,
    health: IntGaugeVec,
    circuit: IntGaugeVec,
    ejected: IntGaugeVec,
    inflight: IntGaugeVec,
}

impl ServerGauges {
    fn new() -> Self {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["upstream", "server"])
                .expect("valid metric definition")
        };
        ServerGauges {
            list: Mutex::new((Vec::new(), Vec::new())),
            health: gauge(
                "kairos_upstream_health",
                "Active health check verdict: 1 healthy (or not checked), 0 unhealthy.",
            ),
            circuit: gauge(
                "kairos_circuit_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ),
            ejected: gauge(
                "kairos_upstream_ejected",
                "1 while outlier detection keeps the server out.",
            ),
            inflight: gauge(
                "kairos_upstream_inflight_requests",
                "Requests in flight to the server, response bodies included.",
            ),
        }
    }
}

struct ServerGaugesCollector(Arc<ServerGauges>);

impl Collector for ServerGaugesCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let g = &self.0;
        [&g.health, &g.circuit, &g.ejected, &g.inflight]
            .into_iter()
            .flat_map(|v| v.desc())
            .collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let g = &self.0;
        // One scrape at a time: the gauges are rebuilt from scratch on each.
        let list = g.list.lock().unwrap_or_else(|e| e.into_inner());
        let now = crate::base::clock::now_ms();
        for v in [&g.health, &g.circuit, &g.ejected, &g.inflight] {
            v.reset();
        }
        let mut set = |upstream: &str, server: &str, state: &dyn ServerProbe| {
            let labels = [upstream, server];
            g.health
                .with_label_values(&labels)
                .set(i64::from(state.healthy()));
            g.circuit
                .with_label_values(&labels)
                .set(state.circuit_code());
            g.ejected
                .with_label_values(&labels)
                .set(i64::from(state.ejected_at(now)));
            g.inflight
                .with_label_values(&labels)
                .set(i64::from(state.requests_in_flight()));
        };
        for w in list.0.iter() {
            set(&w.upstream, &w.server, &*w.state);
        }
        for l in list.1.iter().filter_map(std::sync::Weak::upgrade) {
            l.each(&mut set);
        }
        [&g.health, &g.circuit, &g.ejected, &g.inflight]
            .into_iter()
            .flat_map(|v| v.collect())
            .collect()
    }
}

/// Entries a thread keeps before starting over (stale generations pile up across reloads).
const MAX_CACHED_SERIES: usize = 16_384;

struct SeriesCache {
    owner: u64,
    map: FxHashMap<(u64, u32, u8, u16), Rc<RequestSeries>>,
}

/// The cache phase's results, in `kairos_cache_requests_total`'s `result` label.
const CACHE_RESULTS: [&str; 6] = ["hit", "miss", "stale", "expired", "revalidated", "bypass"];

struct CacheSeriesCache {
    owner: u64,
    map: FxHashMap<(u64, u32, u8), IntCounter>,
}

thread_local! {
    static SERIES: RefCell<SeriesCache> = RefCell::new(SeriesCache {
        owner: 0,
        map: FxHashMap::default(),
    });
    static CACHE_SERIES: RefCell<CacheSeriesCache> = RefCell::new(CacheSeriesCache {
        owner: 0,
        map: FxHashMap::default(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_cached_per_thread_and_labelled() {
        let m = Metrics::new();
        let a = m.series(1, Some((0, "users")), "GET", 200);
        let b = m.series(1, Some((0, "users")), "GET", 200);
        assert!(Rc::ptr_eq(&a, &b));
        a.record(0.002, 10, 20);
        m.series(1, None, "PURGE", 404).record(0.0001, 0, 0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"kairos_requests_total{method="GET",route="users",status="200"} 1"#)
        );
        assert!(text
            .contains(r#"kairos_requests_total{method="OTHER",route="unmatched",status="404"} 1"#));
        assert!(text.contains(r#"kairos_request_bytes_total{route="users"} 10"#));
        assert!(text.contains(r#"kairos_response_bytes_total{route="users"} 20"#));
        // A new runtime generation must not reuse index 0's series for another route.
        m.series(2, Some((0, "orders")), "GET", 200)
            .record(0.1, 0, 0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"kairos_requests_total{method="GET",route="orders",status="200"} 1"#)
        );
        assert!(text.contains(r#"kairos_build_info{version=""#));
    }
}
