//! The config file as written: serde structs only, no logic. Every struct denies unknown fields;
//! `validate/` turns these into the runtime model. The JSON Schema printed by
//! `kairos-rs config schema` is derived from these types.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A duration such as "250ms", "5s", "1m30s" or "1h".
pub type DurationStr = String;
/// A size such as "512KB" or "10MB" (1 MB = 1024 KB).
pub type SizeStr = String;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Kairos gateway configuration, version 1")]
pub struct RawConfig {
    /// Editors may point this at config/schema.json; the gateway ignores it.
    #[serde(default, rename = "$schema")]
    pub schema: Option<String>,
    /// Config format version; must be 1.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub logging: RawLogging,
    /// JWT validation for routes with `"auth": "jwt"`.
    #[serde(default)]
    pub jwt_validation: Option<RawJwt>,
    /// API keys for routes with `"auth": "api_key"`.
    #[serde(default)]
    pub api_keys: Option<RawApiKeys>,
    /// Rate limits for every route (a route's own `rate_limit` replaces them scope by scope),
    /// and the backend that keeps the counts.
    #[serde(default)]
    pub rate_limiting: Option<RawRateLimiting>,
    /// CORS for every route (a route's own `cors` replaces it).
    #[serde(default)]
    pub cors: Option<RawCors>,
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    /// Steps applied to every route's requests and responses, before the route's own.
    #[serde(default)]
    pub transformations: Vec<RawTransform>,
    /// The response cache (RFC 9111 shared cache) and its store.
    #[serde(default)]
    pub caching: Option<RawCaching>,
    /// How a request finds its tenant, and where quota counts are kept.
    #[serde(default)]
    pub tenancy: Option<RawTenancy>,
    /// Tenants by id: their hosts, API keys, own routes, rate limit and quotas.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// Several instances as one: where the shared part of the config (everything but
    /// `server`, `logging`, `admin` and `cluster`) comes from.
    #[serde(default)]
    pub cluster: Option<RawCluster>,
}

/// Several instances as one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// The store holding the shared config document: routes, upstreams and policies. With it,
    /// this file gives only `server`, `logging`, `admin` and `cluster`.
    pub config_store: Option<RawConfigStore>,
}

/// A config store: one key holding the shared config document, watched by every instance.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfigStore {
    /// "etcd" (the v3 API, through its HTTP/JSON gateway).
    #[serde(rename = "type")]
    pub kind: String,
    /// The etcd members' client URLs, http://host:port; tried in order, the next on failure.
    pub endpoints: Vec<String>,
    /// The key holding the shared config document, e.g. "/kairos/config".
    pub key: String,
    /// Longest wait for one call to etcd (default "2s"; the watch itself has none).
    pub timeout: Option<DurationStr>,
    /// An etcd user (etcd's auth enabled); needs `password`.
    pub username: Option<String>,
    /// The user's password; write it as "${ETCD_PASSWORD}".
    pub password: Option<String>,
    /// TLS to https:// endpoints: the CA to trust instead of the Mozilla root set, and a
    /// client certificate when etcd asks for one (`--client-cert-auth`).
    pub tls: Option<RawStoreTls>,
}

/// TLS settings of the config store's client (paths relative to the config file).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStoreTls {
    /// PEM file of the CA certificates that sign etcd's server certificate.
    pub ca_file: Option<String>,
    /// PEM file of the client certificate (chain) presented to etcd; needs `key_file`.
    pub cert_file: Option<String>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<String>,
}

/// The response cache: where answers are stored and the defaults of every cached route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCaching {
    /// Cache every route's GET and HEAD answers unless the route says `"cache": false`
    /// (default false: only routes with a `cache` object are cached).
    pub enabled: Option<bool>,
    /// "memory" (default: this instance, bounded by `max_size` bytes), "redis" (shared by
    /// every instance) or "hybrid" (memory in front of Redis).
    pub backend: Option<String>,
    /// For the redis and hybrid backends: redis://[user:password@]host:port[/db], rediss://
    /// for TLS, redis+sentinel://host:port[,host:port]/MASTER_NAME (Sentinel) or
    /// redis+cluster://host:port[,host:port] (Cluster).
    pub redis_url: Option<String>,
    /// TLS files of a rediss:// `redis_url` (a CA, a client certificate and key).
    pub redis_tls: Option<RawRedisTls>,
    /// Redis backends: the longest wait for a connect or a call (default "100ms"); past it
    /// the request goes on without Redis.
    pub redis_timeout: Option<DurationStr>,
    /// Redis backends: the prefix of every key the cache writes (default "kairos:cache:").
    pub key_prefix: Option<String>,
    /// Most bytes the memory tier holds: bodies, headers and keys (default "256MB").
    pub max_size: Option<SizeStr>,
    /// Largest body stored (default "1MB"); a larger one is passed on but not stored.
    pub max_object_size: Option<SizeStr>,
    /// Freshness of a storable response that states none (default "300s").
    pub default_ttl: Option<DurationStr>,
    /// Hybrid backend: the longest a memory copy lives (default "30s").
    pub l1_ttl: Option<DurationStr>,
    /// Hybrid backend: the longest a Redis copy lives (default "300s").
    pub l2_ttl: Option<DurationStr>,
    /// The key of a stored answer (default "{method}:{path}:{query_hash}"); variables:
    /// {method}, {host}, {path}, {query}, {query_hash}, {header.NAME}, {route}, {tenant}.
    pub cache_key_template: Option<String>,
    /// How long a stale answer may be served while one background request refreshes it,
    /// when the response has no `stale-while-revalidate` of its own (default "0s").
    pub stale_while_revalidate: Option<DurationStr>,
    /// How long a stale answer may be served when the upstream fails (5xx, unreachable), when
    /// the response has no `stale-if-error` of its own (default "0s").
    pub stale_if_error: Option<DurationStr>,
    /// Longest wait of a request for another request's fetch of the same key (default "5s").
    pub lock_timeout: Option<DurationStr>,
}

/// A route's cache: `false` turns it off, an object tunes it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawRouteCache {
    Switch(bool),
    Settings(RawRouteCacheSettings),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCacheSettings {
    /// Default true.
    pub enabled: Option<bool>,
    /// Freshness of a storable response that states none (default `caching.default_ttl`).
    pub ttl: Option<DurationStr>,
    /// This route's key (default `caching.cache_key_template`).
    pub key_template: Option<String>,
    /// Request headers that always make separate entries, on top of the response's `Vary`.
    pub vary: Option<Vec<String>>,
}

/// Tenant identification and the quota store.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTenancy {
    /// Methods tried in order, the first that yields a tenant wins: "api_key", "jwt_claim",
    /// "header", "host" (default: all four, "jwt_claim" only with `jwt_validation`).
    pub identify_by: Option<Vec<String>>,
    /// The request header naming the tenant (default "X-Tenant-Id").
    pub header: Option<String>,
    /// The JWT claim naming the tenant (default "tenant").
    pub claim: Option<String>,
    /// A request that yields no tenant answers 401 `tenant_required` (default false).
    pub require: Option<bool>,
    /// Where quota counts are kept (default: the file "kairos-quotas.db" next to the config).
    pub quota_store: Option<RawQuotaStore>,
}

/// Where quota counts survive restarts.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuotaStore {
    /// "file" (an embedded database, one instance; at most the last second of counts is lost
    /// on a crash), "redis" (shared by every instance) or "memory" (lost on restart; tests).
    pub backend: String,
    /// The database file of the file backend (default "kairos-quotas.db"), relative to the
    /// config file's folder.
    pub path: Option<String>,
    /// For the redis backend: redis://[user:password@]host:port[/db], rediss:// for TLS,
    /// redis+sentinel://host:port[,host:port]/MASTER_NAME (Sentinel) or
    /// redis+cluster://host:port[,host:port] (Cluster).
    pub redis_url: Option<String>,
    /// TLS files of a rediss:// `redis_url` (a CA, a client certificate and key).
    pub redis_tls: Option<RawRedisTls>,
    /// Prefix of the Redis keys (default "kairos:").
    pub key_prefix: Option<String>,
}

/// One tenant.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Host names (without port) whose requests belong to this tenant (`identify_by` "host").
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Names of configured API keys (under `api_keys.keys`) whose callers belong to this tenant.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Routes only this tenant sees; they win over a global route with the same path.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// One bucket for the whole tenant (`burst` defaults to `rps`).
    pub rate_limits: Option<RawRate>,
    /// Requests per calendar month and day (UTC).
    pub quotas: Option<RawQuotas>,
}

/// A tenant's quotas.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuotas {
    /// Admitted requests per calendar month (UTC).
    pub monthly_requests: Option<u64>,
    /// Admitted requests per calendar day (UTC).
    pub daily_requests: Option<u64>,
    /// Soft limit: from this share of a quota used (0 < warn_at < 1, e.g. 0.8) responses carry
    /// `X-Quota-Warning` and `kairos_tenant_quota_warnings_total` counts them; nothing is
    /// refused before the quota itself.
    pub warn_at: Option<f64>,
}

/// OpenTelemetry tracing, exported over OTLP/HTTP (Jaeger, Tempo and the OpenTelemetry
/// Collector all take it).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// Record and export spans (default true when this section is present).
    pub enabled: Option<bool>,
    /// OTLP/HTTP endpoint: a base URL such as "http://127.0.0.1:4318" ("/v1/traces" is
    /// appended) or the full traces URL (default "http://127.0.0.1:4318"). With protocol
    /// "grpc": the collector's gRPC address, e.g. "http://127.0.0.1:4317".
    pub endpoint: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 0.1). A request that arrives with a
    /// W3C traceparent from a peer `trust_incoming` trusts follows its caller's sampled flag
    /// (parent-based).
    pub sampling_rate: Option<f64>,
    /// Whose W3C traceparent (trace id and sampled flag) is continued: "trusted_proxies"
    /// (default: peers in server.trusted_proxies), "all" or "none". Any other caller's request
    /// starts a new trace, sampled by sampling_rate, with the caller's context as a span link.
    pub trust_incoming: Option<String>,
    /// The service.name of exported spans (default "kairos-rs").
    pub service_name: Option<String>,
    /// Deprecated: the endpoint of Jaeger's own collector protocol. Accepted with a warning;
    /// spans go to OTLP/HTTP on the same host, port 4318, unless `endpoint` is set.
    pub jaeger_endpoint: Option<String>,
    /// Longest time one export may take, retries included (default "10s", else
    /// OTEL_EXPORTER_OTLP_TRACES_TIMEOUT / OTEL_EXPORTER_OTLP_TIMEOUT in milliseconds).
    pub export_timeout: Option<DurationStr>,
    /// OTLP transport: "http/protobuf" (default, else OTEL_EXPORTER_OTLP_TRACES_PROTOCOL /
    /// OTEL_EXPORTER_OTLP_PROTOCOL) or "grpc" (then `endpoint` is the collector's gRPC
    /// address, used as is; default "http://127.0.0.1:4317").
    pub protocol: Option<String>,
    /// Headers sent with every export, e.g. a hosted backend's API key (merged over
    /// OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS; these win). Never
    /// logged; shown redacted by GET /_kairos/config.
    pub headers: Option<BTreeMap<String, String>>,
    /// "gzip" or "none" (default "none", else OTEL_EXPORTER_OTLP_TRACES_COMPRESSION /
    /// OTEL_EXPORTER_OTLP_COMPRESSION).
    pub compression: Option<String>,
    /// PEM file of the CA certificates an https collector's certificate is checked against
    /// (only these; default: the system's trusted CAs over HTTP, the Mozilla roots over gRPC),
    /// relative to the config file; else
    /// OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE / OTEL_EXPORTER_OTLP_CERTIFICATE.
    pub ca_file: Option<String>,
    /// Extra resource attributes of every span (merged over OTEL_RESOURCE_ATTRIBUTES; these
    /// win), e.g. {"deployment.environment.name": "prod"}.
    pub resource_attributes: Option<BTreeMap<String, String>>,
    /// Trace context formats read from requests (the first one found, in this order) and
    /// written upstream (all): "tracecontext" (W3C traceparent/tracestate), "baggage" (W3C
    /// baggage), "b3" (single b3 header), "b3multi" (X-B3-* headers). Default
    /// ["tracecontext", "baggage"], else OTEL_PROPAGATORS. [] propagates nothing.
    pub propagators: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Listen address (default "127.0.0.1").
    pub host: Option<String>,
    /// Listen port (default 8080; 0 picks a free port).
    pub port: Option<u16>,
    /// Worker threads (default: number of CPUs).
    pub workers: Option<usize>,
    /// Largest request body accepted (default "10MB"); larger bodies get 413.
    pub max_body_size: Option<SizeStr>,
    /// Largest response body a `body_json` step buffers (default "1MB"); a larger one is
    /// handled per the step's `on_error`.
    pub max_transform_body: Option<SizeStr>,
    /// Longest wait for the request body, the upstream's response head, and each piece of
    /// the response body (default "30s").
    pub request_timeout: Option<DurationStr>,
    /// Peers (CIDR) whose X-Forwarded-* headers are trusted and extended, not replaced.
    pub trusted_proxies: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    /// Serve HTTP/2 with prior knowledge (h2c) on the plaintext listener (default true).
    pub h2c: Option<bool>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT (default "30s").
    pub shutdown_timeout: Option<DurationStr>,
    /// Idle time before a client keep-alive connection is closed (default "75s").
    pub keep_alive: Option<DurationStr>,
    /// Longest request target (path and query) accepted (default "8KB"); longer gets 414.
    pub max_uri_length: Option<SizeStr>,
    /// Largest total size of the request's header names and values (default "32KB"); larger
    /// gets 431. actix-web also refuses more than 96 header fields with 431.
    pub max_header_size: Option<SizeStr>,
    /// Most client connections open at once, shared evenly by the workers (default 25000).
    /// At the cap the gateway stops accepting: new connections wait in the kernel's accept
    /// queue (backpressure) instead of being refused or exhausting memory.
    pub max_connections: Option<usize>,
    /// Longest time a client may take to send a request head (default "10s"), timed from
    /// the connection's start for the first request and from the first byte for later ones
    /// on a keep-alive connection (the idle time between requests is `keep_alive`'s). A
    /// slower client gets 408 and is disconnected.
    pub client_header_timeout: Option<DurationStr>,
    /// Most streams (requests) an HTTP/2 client may have open at once on one connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS, default 128); one more is refused with
    /// RST_STREAM(REFUSED_STREAM).
    pub h2_max_concurrent_streams: Option<u32>,
}

/// `redis_tls`: TLS files for a rediss:// `redis_url` (paths relative to the config file).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedisTls {
    /// PEM CA certificate(s) that sign the Redis servers' certificates (default: the
    /// system's roots).
    pub ca_file: Option<String>,
    /// PEM client certificate chain, for Redis servers that require one (mutual TLS).
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain (path relative to the config file).
    pub cert: String,
    /// PEM private key (path relative to the config file).
    pub key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer token for /_kairos/* (except health and ready). Use "${ENV_VAR}".
    pub token: Option<String>,
    /// Serve /_kairos/metrics without the token (default false).
    pub public_metrics: Option<bool>,
    /// Reload when the config file changes (default true). SIGHUP and
    /// `POST /_kairos/config/reload` always reload.
    pub watch_config: Option<bool>,
    /// Environment variables a config sent to the admin API (`PUT /_kairos/config`,
    /// `POST /_kairos/config/validate`) may reference as `${NAME}`, besides those the file the
    /// gateway started from references. Read from the file the gateway started from.
    pub allowed_env: Option<Vec<String>>,
    /// Serve the web UI at /_kairos/admin/ (default true). Its static files load without the
    /// token (they hold no data); every API call they make needs it.
    pub ui: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// The servers, listed (static). Give either `servers` or `discovery`.
    pub servers: Option<Vec<RawServerEntry>>,
    /// Where to find the servers instead of listing them: DNS, Consul, Kubernetes or Eureka.
    /// The running upstream follows the source's changes without a reload.
    pub discovery: Option<RawDiscovery>,
    pub load_balancing: Option<RawLoadBalancing>,
    /// Time allowed to open a TCP connection to a server (default "2s").
    pub connect_timeout: Option<DurationStr>,
    /// TLS settings for https:// servers.
    pub tls: Option<RawUpstreamTls>,
    /// Longest wait for one attempt's response head (default: the route's timeout, which
    /// also bounds all attempts together).
    pub attempt_timeout: Option<DurationStr>,
    /// Active health checks: one GET per server every interval, from one task per server.
    pub health_check: Option<RawHealthCheck>,
    /// Per-server circuit breaker (off unless this section is present).
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Passive ejection of servers that fail live requests in a row (on by default for
    /// connect errors, timeouts and resets).
    pub outlier_detection: Option<RawOutlierDetection>,
    /// Retries to the next server (default: one retry after a connect error or a reset).
    pub retries: Option<RawRetries>,
    /// Largest response head (status line and headers) accepted from a server (default
    /// "64KB", at least "8KB"); a larger one is answered 502.
    pub max_response_header_size: Option<SizeStr>,
    /// How the gateway speaks to the servers: "http1" (default), "h2" (HTTP/2 over TLS,
    /// https servers), "h2c" (HTTP/2 with prior knowledge, http servers) or "auto" (HTTP/2
    /// when the server's TLS handshake chooses it by ALPN, else HTTP/1.1; HTTP/1.1 on http).
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path (and query) requested with GET on each server (default "/health").
    pub path: Option<String>,
    /// Time between checks of one server, with +-10% jitter (default "10s").
    pub interval: Option<DurationStr>,
    /// Longest a check may take (default "2s").
    pub timeout: Option<DurationStr>,
    /// Consecutive passing checks that make an unhealthy server healthy (default 2).
    pub healthy_threshold: Option<u32>,
    /// Consecutive failing checks that make a healthy server unhealthy (default 3).
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that pass: "200-399" (default), or one status such as "200".
    pub expected_status: Option<String>,
    /// Check with the gRPC health protocol (grpc.health.v1.Health/Check) instead of a GET:
    /// the service name to ask about ("" for the server as a whole). Needs an HTTP/2
    /// upstream; `path` and `expected_status` do not apply.
    pub grpc_service: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Consecutive failures (connect error, timeout, reset, 5xx) that open the circuit
    /// (default 5).
    pub failure_threshold: Option<u32>,
    /// How long an open circuit fails fast before letting probes through (default "30s").
    pub recovery_timeout: Option<DurationStr>,
    /// Requests the rolling window needs before the error percentage counts (default 10).
    pub minimum_throughput: Option<u32>,
    /// Failure percentage over the rolling window that opens the circuit (default 50.0).
    pub error_percentage_threshold: Option<f64>,
    /// Length of the rolling window (default "10s").
    pub window: Option<DurationStr>,
    /// Probes let through when half-open; all must succeed to close (default 1).
    pub half_open_requests: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Set false to turn passive ejection off (default true).
    pub enabled: Option<bool>,
    /// Connect errors, timeouts and resets in a row that eject a server (default 5; 0 = off).
    pub consecutive_gateway_failures: Option<u32>,
    /// Failed attempts (5xx responses included) in a row that eject a server (default 0 = off).
    pub consecutive_5xx: Option<u32>,
    /// First ejection's length; the n-th lasts n times this (default "30s").
    pub base_ejection_time: Option<DurationStr>,
    /// Longest ejection (default "300s").
    pub max_ejection_time: Option<DurationStr>,
    /// Most servers of the upstream ejected at once, in percent, rounded down (default 50).
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Retries after the first attempt, each to the next server (default 1; 0 = off).
    pub attempts: Option<u32>,
    /// Base of the exponential backoff between retries, with jitter (default "25ms").
    pub backoff: Option<DurationStr>,
    /// Longest backoff (default "1s").
    pub max_backoff: Option<DurationStr>,
    /// Conditions: "connect_error", "reset", "timeout", "5xx", or a status such as "503"
    /// (default ["connect_error", "reset", "502", "503", "504"]). A connect error is retried
    /// for every method (nothing was sent); the others only for `methods`.
    pub on: Option<Vec<String>>,
    /// Methods retried after the request was sent (default: the idempotent ones, GET HEAD
    /// OPTIONS TRACE PUT DELETE).
    pub methods: Option<Vec<String>>,
    /// Retries allowed as a share of requests, in percent (default 20).
    pub budget_percent: Option<f64>,
    /// Retries allowed per second regardless of traffic (default 10).
    pub min_retries_per_second: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM file of the CA certificates to trust for this upstream, instead of the built-in
    /// Mozilla root set (path relative to the config file).
    pub ca_file: Option<String>,
}

/// One discovery source. `type` says which; each type takes the settings listed for it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// "dns", "consul", "kubernetes" or "eureka".
    #[serde(rename = "type")]
    pub kind: String,
    /// dns: the name queried as given, e.g. "users.internal" or "_http._tcp.users.internal".
    pub name: Option<String>,
    /// dns: "A" (default), "AAAA" (both need `port`) or "SRV" (port and weight from the record).
    pub record: Option<String>,
    /// dns (A/AAAA): the servers' port.
    pub port: Option<u16>,
    /// dns: name servers to ask, "ip" or "ip:port" (default: the system's, /etc/resolv.conf).
    pub resolvers: Option<Vec<String>>,
    /// dns: the longest time an answer is kept (its TTL when shorter); eureka: time between
    /// polls (default "30s").
    pub refresh: Option<DurationStr>,
    /// consul: the agent's URL, e.g. "http://127.0.0.1:8500"; eureka: the server's URL with
    /// its path, e.g. "http://127.0.0.1:8761/eureka".
    pub endpoint: Option<String>,
    /// consul, kubernetes: the service's name.
    pub service_name: Option<String>,
    /// consul: only instances whose health checks pass (default true).
    pub health_check: Option<bool>,
    /// consul: only instances with this tag.
    pub tag: Option<String>,
    /// consul: the datacenter to ask (default: the agent's).
    pub datacenter: Option<String>,
    /// consul: the ACL token, sent as X-Consul-Token; write it as "${CONSUL_TOKEN}".
    pub token: Option<String>,
    /// consul: how long one blocking query may wait for a change (default "55s", at most "10m").
    pub wait: Option<DurationStr>,
    /// kubernetes: the service's namespace (default: the pod's own namespace, else "default").
    pub namespace: Option<String>,
    /// kubernetes: the name of the service port whose endpoints are used (default: the only
    /// port of the service).
    pub port_name: Option<String>,
    /// kubernetes: the API server's URL (default: in-cluster, from KUBERNETES_SERVICE_HOST and
    /// KUBERNETES_SERVICE_PORT).
    pub api_server: Option<String>,
    /// kubernetes: the bearer token file (default: the pod's service-account token, which is
    /// sent only over https; a file named here is sent to an http `api_server` too).
    pub token_file: Option<String>,
    /// kubernetes: the API server's CA file (default: the pod's service-account CA).
    pub ca_file: Option<String>,
    /// eureka: the application's name, e.g. "LEGACY".
    pub app: Option<String>,
    /// dns, consul, kubernetes: "http" (default) or "https" for the servers found; eureka
    /// uses the instance's enabled port, its secure port when this is "https".
    pub scheme: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServerEntry {
    /// http:// or https:// URL of the server, without a path.
    pub url: String,
    /// Relative weight, 1..=1000 (default 1); used by weighted_round_robin.
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLoadBalancing {
    /// round_robin (default), weighted_round_robin, least_connections, ip_hash, random,
    /// health_based or p2c_ewma.
    pub strategy: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name, used in logs and metrics (default: "<METHODS> <host><path>", e.g. "GET /api/users/{id}").
    pub name: Option<String>,
    /// Path template: literal segments, {name} for one segment, {*name} for the rest.
    pub path: String,
    /// Allowed methods (default: all). GET also allows HEAD.
    pub methods: Option<Vec<String>>,
    /// Match only requests whose Host header is this name.
    pub host: Option<String>,
    pub upstream: String,
    /// Upstream path template using the route's parameters, e.g. "/users/{id}".
    pub rewrite: Option<String>,
    /// Overrides server.request_timeout for this route.
    pub timeout: Option<DurationStr>,
    /// Send the client's Host header upstream instead of the upstream server's authority.
    pub preserve_host: Option<bool>,
    /// "none" (default), "jwt", "api_key", or ["jwt", "api_key"] (either is enough).
    pub auth: Option<RawAuth>,
    /// Permissions the caller must hold, every one: an API key's `permissions`, or a JWT's
    /// `scope` (space-separated) or `permissions` claim.
    pub permissions: Option<Vec<String>>,
    /// This route's limits: each scope set here replaces the top-level one for this route.
    pub rate_limit: Option<RawRouteRateLimit>,
    /// CORS for this route, replacing the top-level `cors`.
    pub cors: Option<RawCors>,
    /// Steps applied to this route's requests and responses, after the top-level ones.
    pub transformations: Option<Vec<RawTransform>>,
    /// This route's response cache: `false`, or settings (needs the top-level `caching`).
    pub cache: Option<RawRouteCache>,
    /// Proxy `Upgrade: websocket` handshakes and then relay the connection (default true for
    /// routes that allow GET).
    pub websocket: Option<bool>,
    /// A WebSocket with no byte in either direction for this long is closed (default "1h").
    pub websocket_idle_timeout: Option<DurationStr>,
    /// gRPC over this route: requests with `content-type: application/grpc*` get the
    /// gateway's own errors as gRPC statuses and `grpc-timeout` enforced (default false;
    /// needs an HTTP/2 upstream).
    pub grpc: Option<bool>,
}

/// One scheme or a list of schemes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawAuth {
    One(String),
    Any(Vec<String>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Exact origins ("https://app.example.com"), patterns ("https://*.example.com": any
    /// subdomain, not the bare domain), or "*" (not with allow_credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for (default GET, HEAD, POST, PUT, PATCH, DELETE).
    pub allowed_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (default Content-Type, Authorization).
    pub allowed_headers: Option<Vec<String>>,
    /// Response headers scripts may read (default none besides the safelisted ones).
    pub expose_headers: Option<Vec<String>>,
    /// Allow cookies and Authorization (default false); needs explicit origins.
    pub allow_credentials: Option<bool>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age: Option<u64>,
}

/// JWT validation: one provider here, more under `providers`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// HMAC secret for HS256/HS384/HS512. Use "${ENV_VAR}".
    pub secret: Option<String>,
    /// The one algorithm this provider's key is used with (default HS256 with `secret`,
    /// RS256 with `public_key` or `jwks_url`). Tokens with any other `alg` are rejected.
    pub algorithm: Option<String>,
    /// PEM public key (the text itself) for RS*, PS*, ES* or EdDSA.
    pub public_key: Option<String>,
    /// JWKS endpoint: keys fetched at start, refreshed in the background, chosen by `kid`.
    pub jwks_url: Option<String>,
    /// How often the JWKS is refetched (default "5m").
    pub jwks_refresh: Option<DurationStr>,
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Expected `aud` (one of them when the token has several).
    pub audience: Option<String>,
    /// Claims every token must carry (default ["exp"]).
    pub required_claims: Option<Vec<String>>,
    /// Tokens without `exp` are accepted when false (default true).
    pub require_exp: Option<bool>,
    /// Clock skew allowed for exp and nbf (default "30s").
    pub leeway: Option<DurationStr>,
    /// Claim -> upstream request header, e.g. {"sub": "X-User-Id"}. The same headers sent by
    /// the client are removed first.
    pub forward_claims: Option<BTreeMap<String, String>>,
    /// Remove the Authorization header before forwarding (default false).
    pub strip_authorization: Option<bool>,
    /// Further providers (another issuer or key); a token is checked against the provider
    /// whose `issuer` matches its `iss`, else against each provider whose algorithm matches.
    pub providers: Option<Vec<RawJwtProvider>>,
}

/// One more JWT provider: the key fields of `jwt_validation`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    pub secret: Option<String>,
    pub algorithm: Option<String>,
    pub public_key: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_refresh: Option<DurationStr>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub required_claims: Option<Vec<String>>,
    pub require_exp: Option<bool>,
    pub leeway: Option<DurationStr>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    /// Request header carrying the key (default "X-API-Key").
    pub header_name: Option<String>,
    /// Query parameter carrying the key (default: none; keys in URLs end up in logs). It is
    /// removed before the request is forwarded.
    pub query_param: Option<String>,
    /// Keys by name. The name is the caller's identity in logs and to later middlewares.
    pub keys: BTreeMap<String, RawApiKey>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// "sha256:<64 hex digits>" of the key (`kairos-rs keys hash` prints it).
    pub key_hash: Option<String>,
    /// The key itself, only as "${ENV_VAR}" (never written in the file).
    pub key: Option<String>,
    /// Permissions this key holds.
    pub permissions: Option<Vec<String>>,
    /// This key's own rate limit (applied by the rate limiter).
    pub rate_limit: Option<RawRate>,
}

/// Rate limiting: GCRA (a token bucket without fixed-window edges) per scope.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimiting {
    /// "memory" (default: counts kept in this instance) or "redis" (shared by every instance
    /// pointing at the same Redis).
    pub backend: Option<String>,
    /// For the redis backend: redis://[user:password@]host:port[/db], rediss:// for TLS,
    /// redis+sentinel://host:port[,host:port]/MASTER_NAME (Sentinel) or
    /// redis+cluster://host:port[,host:port] (Cluster). Use "${REDIS_URL}" when it carries a
    /// password.
    pub redis_url: Option<String>,
    /// TLS files of a rediss:// `redis_url` (a CA, a client certificate and key).
    pub redis_tls: Option<RawRedisTls>,
    /// What happens while Redis cannot be reached: "allow" (default: the same limits are
    /// enforced per instance by a local fallback limiter) or "deny" (503).
    pub on_backend_error: Option<String>,
    /// Longest wait for one Redis decision before the request goes on per
    /// `on_backend_error` (default "50ms").
    pub redis_timeout: Option<DurationStr>,
    /// Prefix of every Redis key the limiter writes (default "kairos:rl:").
    pub key_prefix: Option<String>,
    /// Most clients (IPs, users, keys) whose counts one limit keeps in memory (default
    /// 100000, about 40 MB); the least used are forgotten first, idle ones expire.
    pub max_keys: Option<u64>,
    /// X-RateLimit-Limit, -Remaining and -Reset on every response of a limited route (default
    /// true).
    pub headers: Option<bool>,
    /// The IETF draft's RateLimit-Policy and RateLimit fields (default false).
    pub ietf_headers: Option<bool>,
    /// One budget for all requests together.
    pub global: Option<RawRate>,
    /// Per client address (resolved through `server.trusted_proxies`).
    pub per_ip: Option<RawRate>,
    /// Per API key; a key's own `rate_limit` replaces this one.
    pub per_api_key: Option<RawRate>,
    /// Per JWT subject (`sub`).
    pub per_user: Option<RawRate>,
    /// How much of an IPv6 client address counts as one client, in bits (default 64: one
    /// network, as a single host usually holds a whole /64; 1-128). IPv4 addresses count
    /// whole.
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: Option<u32>,
    /// Failed authentications (401s of routes and of the admin API) allowed per client
    /// address; past it the client gets 429 before any credential is checked (default
    /// `{"rps": 0.1667, "burst": 20}`: 20 at once, then 10 a minute). Applies also when no
    /// other limit is configured.
    pub auth_failures: Option<RawRate>,
}

/// A route's own limits: budgets of this route alone, replacing the top-level limit of the
/// same scope.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRouteRateLimit {
    /// Apply the top-level limits of the scopes this route does not set (default true);
    /// false exempts the route from them.
    pub inherit: Option<bool>,
    pub global: Option<RawRate>,
    pub per_ip: Option<RawRate>,
    pub per_api_key: Option<RawRate>,
    pub per_user: Option<RawRate>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Requests per second, sustained.
    pub rps: f64,
    /// Requests allowed at once above the sustained rate (default: rps).
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// "json" (default) or "pretty".
    pub format: Option<String>,
    /// trace, debug, info (default), warn or error; RUST_LOG overrides it.
    pub level: Option<String>,
    /// One line per request at info level (default true).
    pub access_log: Option<bool>,
    /// Write logs to this file (appended; relative to the config file's folder) instead of
    /// stderr. SIGUSR1 reopens it at this path (after logrotate moved it).
    pub file: Option<String>,
}

/// One transformation step. Values may use `{request_id}`, `{client_ip}`, `{route}`,
/// `{path.NAME}`, `{header.NAME}`, `{query.NAME}`, `{jwt.CLAIM}` and `{api_key}` (the key's
/// name); `{{` is a literal `{`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawTransform {
    /// Appends a value to each header, keeping existing ones.
    HeaderAdd(RawHeaderValues),
    /// Replaces each header's values.
    HeaderSet(RawHeaderValues),
    HeaderRemove(RawHeaderNames),
    /// Renames headers: `{"X-Old": "X-New"}`.
    HeaderRename(RawHeaderValues),
    /// Sets query parameters, replacing every existing value.
    QuerySet(RawParamValues),
    QueryRemove(RawParamNames),
    /// Renames query parameters: `{"old": "new"}`.
    QueryRename(RawParamValues),
    /// Rewrites the path (not the query, which goes along) with a regular expression.
    PathRewrite(RawPathRewrite),
    /// Replaces one upstream status with another (response phase only).
    StatusMap(RawStatusMap),
    /// Edits a JSON body with JSON Pointer operations, in order.
    BodyJson(RawBodyJson),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBodyJson {
    pub ops: Vec<RawJsonOp>,
    /// "request" (default) or "response".
    pub phase: Option<String>,
    /// "fail" (default) or "skip".
    pub on_error: Option<String>,
}

/// One JSON Pointer (RFC 6901) operation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawJsonOp {
    /// Sets the value at `path`, creating missing objects on the way.
    Set {
        path: String,
        value: serde_json::Value,
    },
    /// Removes the value at `path` (nothing if it is missing).
    Remove { path: String },
    /// Moves the value at `from` to `to` (nothing if `from` is missing).
    Rename { from: String, to: String },
    /// Copies the value at `from` to `to` (nothing if `from` is missing).
    Copy { from: String, to: String },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderValues {
    pub headers: BTreeMap<String, String>,
    /// "request" (default) or "response".
    pub phase: Option<String>,
    /// "fail" (default: 400 for a request step, 502 for a response step) or "skip".
    pub on_error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderNames {
    pub headers: Vec<String>,
    /// "request" (default) or "response".
    pub phase: Option<String>,
    /// "fail" (default) or "skip".
    pub on_error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParamValues {
    pub params: BTreeMap<String, String>,
    /// "request" (the only phase with a query).
    pub phase: Option<String>,
    /// "fail" (default) or "skip".
    pub on_error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParamNames {
    pub params: Vec<String>,
    /// "request" (the only phase with a query).
    pub phase: Option<String>,
    /// "fail" (default) or "skip".
    pub on_error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPathRewrite {
    /// A regular expression (Rust `regex` syntax), matched anywhere in the path unless
    /// anchored with `^...$`; the first match is replaced.
    pub pattern: String,
    /// The replacement: `$1` or `$name` for a capture, `$$` for a literal `$`.
    pub replacement: String,
    /// "request" (the only phase with a path).
    pub phase: Option<String>,
    /// "fail" (default) or "skip".
    pub on_error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStatusMap {
    pub from: u16,
    pub to: u16,
    /// "response" (default; the only phase with a status).
    pub phase: Option<String>,
    /// "fail" (default) or "skip".
    pub on_error: Option<String>,
}
