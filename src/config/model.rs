//! The validated config: typed, checked, with every default applied. Nothing here can be
//! wrong in a way the gateway would discover at request time.

use ipnet::IpNet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The route label of requests that matched no route; no route may take this name.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    /// Upstreams in name order; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub logging: LoggingConfig,
    /// `None` when tracing is off.
    pub tracing: Option<TracingConfig>,
    pub jwt: Option<JwtConfig>,
    pub api_keys: Option<ApiKeysConfig>,
    /// The top-level CORS policy; a route's own replaces it.
    pub cors: Option<crate::config::cors::CorsConfig>,
    /// Present when any limit is configured (top-level, a route's or an API key's own).
    pub rate_limiting: Option<RateLimitConfig>,
    /// The throttle on failed authentications, always on.
    pub auth_failures: AuthFailureLimit,
    /// The response cache's store, when `caching` is configured.
    pub caching: Option<std::sync::Arc<crate::config::cache::CacheConfig>>,
    /// The route table compiled while validating (validation needs it to find routes that
    /// cannot be told apart); the runtime uses it as is, so a reload compiles it once.
    pub compiled_routes: Option<std::sync::Arc<crate::config::router::Router>>,
    /// Things that work but deserve the operator's attention (deprecated keys); logged at start.
    pub warnings: Vec<crate::config::ConfigError>,
    /// The text as written (`${ENV}` references unexpanded) of every string value that came
    /// from the environment, by JSON path (`routes[2].host`): what listings show instead.
    pub written: std::sync::Arc<std::collections::HashMap<String, String>>,
    /// Present when the config has a `tenancy` section or any tenant.
    pub tenancy: Option<TenancyConfig>,
    /// Where the shared part of the config comes from (`cluster.config_store`).
    pub config_store: Option<ConfigStoreConfig>,
}

/// An etcd key holding the shared config document.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigStoreConfig {
    /// Client URLs without a trailing slash (`http://127.0.0.1:2379`, `https://...`).
    pub endpoints: Vec<String>,
    pub key: String,
    /// Longest wait for one call (range, put, txn; not the watch).
    pub timeout: std::time::Duration,
    /// etcd user and password (auth enabled).
    pub credentials: Option<(String, String)>,
    pub tls: StoreTls,
}

/// The config store client's TLS files (checked readable and PEM when validated; read again
/// when the client is built).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreTls {
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl std::fmt::Debug for ConfigStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStoreConfig")
            .field("endpoints", &self.endpoints)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// How a request finds its tenant, the tenants, and where quota counts are kept.
#[derive(Debug, Clone)]
pub struct TenancyConfig {
    pub identify_by: Vec<IdentifyBy>,
    /// The header naming the tenant.
    pub header: http::HeaderName,
    pub claim: String,
    pub require: bool,
    pub quota_store: QuotaStoreConfig,
    /// In id order; a tenant's index is its number at run time.
    pub tenants: Vec<TenantConfig>,
    /// Each tenant's own route table (same order as `tenants`).
    pub routers: Vec<std::sync::Arc<crate::config::router::Router>>,
}

impl TenancyConfig {
    /// The index of the tenant called `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.tenants
            .binary_search_by(|t| t.id.as_str().cmp(id))
            .ok()
    }
}

/// One way of finding a request's tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifyBy {
    ApiKey,
    JwtClaim,
    Header,
    Host,
}

impl IdentifyBy {
    pub const NAMES: &'static [&'static str] = &["api_key", "jwt_claim", "header", "host"];
}

/// Where quota counts survive restarts.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaStoreConfig {
    /// An embedded database file (redb), flushed every second.
    File { path: PathBuf },
    /// Shared by every instance.
    Redis {
        /// May carry a password: never logged or shown.
        url: Secret,
        /// `redis_tls`: the CA and client certificate of a rediss:// URL.
        tls: Option<crate::base::redis::TlsFiles>,
        key_prefix: String,
    },
    /// Counts lost on restart.
    Memory,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub id: String,
    /// Lower-case host names.
    pub hosts: Vec<String>,
    /// Names of API keys.
    pub api_keys: Vec<String>,
    /// Indexes of this tenant's routes in `Config::routes`.
    pub routes: Vec<usize>,
    pub rate_limit: Option<RateConfig>,
    pub quotas: Option<QuotaConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaConfig {
    pub monthly: Option<u64>,
    pub daily: Option<u64>,
    /// Share of a quota from which responses warn.
    pub warn_at: Option<f64>,
}

impl Config {
    /// The value at `path` for display: as written when it came from the environment.
    pub fn shown<'a>(&'a self, path: &str, value: &'a str) -> &'a str {
        self.written.get(path).map_or(value, String::as_str)
    }

    /// Where route `i` is in the file: `routes[i]`, or `tenants.ID.routes[j]` for a tenant's.
    pub fn route_json_path(&self, i: usize) -> String {
        let owner = self
            .routes
            .get(i)
            .and_then(|r| r.tenant)
            .and_then(|t| self.tenancy.as_ref()?.tenants.get(t));
        match owner {
            None => format!("routes[{i}]"),
            Some(t) => {
                let j = t.routes.iter().position(|&x| x == i).unwrap_or(0);
                format!("tenants.{}.routes[{j}]", t.id)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub max_body_size: u64,
    /// The largest response body a `body_json` step buffers.
    pub max_transform_body: u64,
    pub request_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<TlsConfig>,
    pub h2c: bool,
    pub shutdown_timeout: Duration,
    pub keep_alive: Duration,
    pub max_uri_length: u64,
    pub max_header_size: u64,
    pub max_connections: usize,
    pub client_header_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

impl ServerConfig {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = crate::base::net::canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    pub token: Option<String>,
    pub public_metrics: bool,
    pub watch_config: bool,
    /// Variables an admin API body may reference besides the start file's own.
    pub allowed_env: Vec<String>,
    /// Whether `/_kairos/admin/` serves the web UI (`admin.ui`, default true).
    pub ui: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    IpHash,
    Random,
    HealthBased,
    P2cEwma,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::IpHash,
        Strategy::Random,
        Strategy::HealthBased,
        Strategy::P2cEwma,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::IpHash => "ip_hash",
            Strategy::Random => "random",
            Strategy::HealthBased => "health_based",
            Strategy::P2cEwma => "p2c_ewma",
        }
    }

    pub fn parse(name: &str) -> Option<Strategy> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// The listed servers; empty when `discovery` finds them.
    pub servers: Vec<ServerEntry>,
    /// Where the servers come from when they are not listed.
    pub discovery: Option<DiscoveryConfig>,
    pub strategy: Strategy,
    pub connect_timeout: Duration,
    /// CA certificates (DER) to trust for https servers; `None` means the Mozilla root set.
    pub tls_roots: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// `None`: each attempt may take what is left of the route's timeout.
    pub attempt_timeout: Option<Duration>,
    pub health_check: Option<HealthCheckConfig>,
    pub circuit_breaker: Option<BreakerConfig>,
    pub outlier: Option<OutlierConfig>,
    pub retries: RetryConfig,
    /// Largest response head accepted from a server, in bytes.
    pub max_response_header_size: usize,
    /// The protocol spoken to the servers.
    pub protocol: UpstreamProtocol,
}

/// How the gateway speaks to an upstream's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, pooled connections (the default).
    #[default]
    Http1,
    /// HTTP/2 over TLS, chosen by ALPN (https servers).
    H2,
    /// HTTP/2 over plaintext TCP with prior knowledge (http servers).
    H2c,
    /// HTTP/2 when the TLS handshake chooses it by ALPN, else HTTP/1.1; HTTP/1.1 on http.
    Auto,
}

impl UpstreamProtocol {
    pub const ALL: [UpstreamProtocol; 4] = [
        UpstreamProtocol::Http1,
        UpstreamProtocol::H2,
        UpstreamProtocol::H2c,
        UpstreamProtocol::Auto,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Auto => "auto",
        }
    }

    pub fn parse(name: &str) -> Option<UpstreamProtocol> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether a server reached over `https` (or not) may be spoken to in HTTP/2.
    pub fn may_use_h2(self, https: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => true,
            UpstreamProtocol::Auto => https,
        }
    }
}

/// A discovery source and its settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    pub source: DiscoverySource,
    /// Servers found are reached over https (dns, consul, kubernetes; eureka: prefer the
    /// secure port).
    pub https: bool,
}

impl DiscoveryConfig {
    /// The source's name as configured: "dns", "consul", "kubernetes" or "eureka".
    pub fn kind(&self) -> &'static str {
        self.source.kind()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRecord {
    A,
    Aaaa,
    Srv,
}

impl DnsRecord {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsRecord::A => "A",
            DnsRecord::Aaaa => "AAAA",
            DnsRecord::Srv => "SRV",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum DiscoverySource {
    Dns {
        name: String,
        record: DnsRecord,
        /// A/AAAA: the servers' port (SRV records carry their own).
        port: u16,
        /// Empty: the system's resolvers.
        resolvers: Vec<std::net::SocketAddr>,
        /// Longest time an answer is kept.
        refresh: Duration,
    },
    Consul {
        /// Base URL of the agent, without a trailing slash.
        endpoint: String,
        service_name: String,
        /// Only instances whose checks pass.
        passing: bool,
        tag: Option<String>,
        datacenter: Option<String>,
        token: Option<Secret>,
        wait: Duration,
    },
    Kubernetes {
        /// `None`: the pod's namespace, else "default" (read when the watch starts).
        namespace: Option<String>,
        service_name: String,
        port_name: Option<String>,
        /// `None`: in-cluster (KUBERNETES_SERVICE_HOST/PORT).
        api_server: Option<String>,
        token_file: std::path::PathBuf,
        /// `token_file` was named in the config: its token is sent over http too (the
        /// in-cluster default is sent over https only).
        token_file_given: bool,
        ca_file: std::path::PathBuf,
    },
    Eureka {
        /// Base URL with its path (e.g. `http://host:8761/eureka`), without a trailing slash.
        endpoint: String,
        app: String,
        refresh: Duration,
    },
}

impl DiscoverySource {
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoverySource::Dns { .. } => "dns",
            DiscoverySource::Consul { .. } => "consul",
            DiscoverySource::Kubernetes { .. } => "kubernetes",
            DiscoverySource::Eureka { .. } => "eureka",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Path and query, starting with `/`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expected_status: std::ops::RangeInclusive<u16>,
    /// Checks use grpc.health.v1 for this service ("" for the whole server).
    pub grpc_service: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// 0 = off.
    pub consecutive_gateway_failures: u32,
    /// 0 = off.
    pub consecutive_5xx: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt; 0 = off.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub on_connect_error: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    /// Response statuses retried (each 100..=599).
    pub on_status: Vec<u16>,
    /// Methods retried once the request was sent.
    pub methods: MethodSet,
    /// Retries per request allowed over time (0.2 = 20%).
    pub budget_ratio: f64,
    pub min_retries_per_second: u32,
}

impl RetryConfig {
    /// GET HEAD PUT DELETE OPTIONS TRACE (RFC 9110 9.2.2).
    pub const IDEMPOTENT: MethodSet = MethodSet(0b1101_1011);

    /// Whether anything but a connect error can be retried (the request must then be kept
    /// for a replay).
    pub fn after_send(&self) -> bool {
        self.attempts > 0 && (self.on_reset || self.on_timeout || !self.on_status.is_empty())
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 1,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            on_connect_error: true,
            on_reset: true,
            on_timeout: false,
            on_status: Vec::new(),
            methods: Self::IDEMPOTENT,
            budget_ratio: 0.2,
            min_retries_per_second: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerEntry {
    /// Normalised URL as written, for display: `http://127.0.0.1:9001`.
    pub url: String,
    pub https: bool,
    /// `host:port` as it goes into the request URI.
    pub authority: http::uri::Authority,
    /// The authority's host and port, split once (trace spans name them on every attempt).
    pub host: String,
    pub port: u16,
    /// The Host header value sent upstream (port omitted when it is the scheme's default).
    pub host_header: http::HeaderValue,
    pub weight: u32,
}

/// A route's method filter as a bit set over the standard methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(pub u16);

impl MethodSet {
    pub const ALL: MethodSet = MethodSet(u16::MAX);
    pub const NAMES: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];

    /// Bit for a method name; extension methods have none and only match `ALL`.
    pub fn bit(name: &str) -> Option<u16> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| 1 << i)
    }

    pub fn contains(self, method: &str) -> bool {
        match Self::bit(method) {
            Some(b) => self.0 & b != 0,
            None => self == Self::ALL,
        }
    }

    pub fn overlaps(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// The path template as written.
    pub path: String,
    pub methods: MethodSet,
    /// Lower-case host name without port.
    pub host: Option<String>,
    pub upstream: usize,
    /// Boxed, like `cors` and `rate_limit`: most routes have none.
    pub rewrite: Option<Box<Rewrite>>,
    pub timeout: Duration,
    pub preserve_host: bool,
    pub auth: AuthMode,
    /// Every one must be held by the caller.
    pub permissions: Vec<String>,
    /// This route's CORS policy, replacing the top-level one. Boxed, like `rate_limit` and
    /// `rewrite`: few routes have one, and a 10,000-route table is 2.5 MB smaller with these
    /// three out of line.
    pub cors: Option<Box<crate::config::cors::CorsConfig>>,
    /// This route's own limits.
    pub rate_limit: Option<Box<RouteRateLimit>>,
    /// The top-level `transformations`, then the route's own, compiled.
    pub transforms: std::sync::Arc<crate::config::transform::Transforms>,
    /// Present when the route's GET and HEAD answers are cached.
    pub cache: Option<std::sync::Arc<crate::config::cache::RouteCache>>,
    /// The idle timeout of the route's WebSockets; `None` when upgrades are not proxied (the
    /// handshake is then forwarded as a plain GET, without `Upgrade`).
    pub websocket: Option<Duration>,
    /// The tenant (index in `TenancyConfig::tenants`) whose own route this is; `None` for a
    /// global route.
    pub tenant: Option<usize>,
    /// gRPC requests (`content-type: application/grpc*`) get gRPC statuses for the gateway's
    /// own errors and their `grpc-timeout` enforced.
    pub grpc: bool,
}

/// Which credentials a route accepts; neither means the route is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthMode {
    pub jwt: bool,
    pub api_key: bool,
}

impl AuthMode {
    pub fn is_open(self) -> bool {
        !self.jwt && !self.api_key
    }
}

/// A value that must never be printed (secrets, key material).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    pub providers: Vec<JwtProviderConfig>,
    /// Claim name -> upstream header.
    pub forward_claims: Vec<(String, http::HeaderName)>,
    pub strip_authorization: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwtProviderConfig {
    /// The one algorithm this provider's keys are used with.
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: JwtKeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Claims that must be present (exp included unless `require_exp` is off).
    pub required_claims: Vec<String>,
    pub require_exp: bool,
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeySource {
    Secret(Secret),
    /// PEM text of a public key.
    PublicKey(String),
    Jwks {
        url: String,
        refresh: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct ApiKeysConfig {
    pub header_name: http::HeaderName,
    pub query_param: Option<String>,
    pub keys: Vec<ApiKeyEntry>,
}

#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    pub permissions: Vec<String>,
    pub rate_limit: Option<RateConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    pub rps: f64,
    pub burst: u32,
}

/// Limits by scope; `None` where a scope is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScopeLimits {
    pub global: Option<RateConfig>,
    pub per_ip: Option<RateConfig>,
    pub per_api_key: Option<RateConfig>,
    pub per_user: Option<RateConfig>,
}

impl ScopeLimits {
    pub fn is_empty(&self) -> bool {
        *self == ScopeLimits::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteRateLimit {
    pub limits: ScopeLimits,
    /// The top-level limits of scopes this route does not set apply too.
    pub inherit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Decide with a per-instance limiter until the backend is back.
    Allow,
    /// Refuse limited requests (503) until the backend is back.
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RateBackend {
    Memory,
    Redis {
        /// May carry a password: never logged or shown.
        url: Secret,
        /// `redis_tls`: the CA and client certificate of a rediss:// URL.
        tls: Option<crate::base::redis::TlsFiles>,
        timeout: Duration,
        key_prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub backend: RateBackend,
    pub on_backend_error: OnBackendError,
    /// Clients one limit keeps in memory at most.
    pub max_keys: u64,
    pub headers: bool,
    pub ietf_headers: bool,
    pub limits: ScopeLimits,
    /// Bits of an IPv6 client address that make one client (1-128).
    pub ipv6_prefix: u8,
}

/// Failed authentications allowed per client address (keyed like `per_ip`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuthFailureLimit {
    pub rate: RateConfig,
    pub ipv6_prefix: u8,
}

impl Default for AuthFailureLimit {
    /// 20 at once, then 10 a minute.
    fn default() -> Self {
        AuthFailureLimit {
            rate: RateConfig {
                rps: 10.0 / 60.0,
                burst: 20,
            },
            ipv6_prefix: RateLimitConfig::DEFAULT_IPV6_PREFIX,
        }
    }
}

impl RateLimitConfig {
    pub const DEFAULT_MAX_KEYS: u64 = 100_000;
    pub const DEFAULT_IPV6_PREFIX: u8 = 64;
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            backend: RateBackend::Memory,
            on_backend_error: OnBackendError::Allow,
            max_keys: Self::DEFAULT_MAX_KEYS,
            headers: true,
            ietf_headers: false,
            limits: ScopeLimits::default(),
            ipv6_prefix: Self::DEFAULT_IPV6_PREFIX,
        }
    }
}

/// A compiled rewrite template: literal pieces and the positions of route parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub template: String,
    pub parts: Vec<RewritePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewritePart {
    Literal(String),
    /// Index of the parameter in the route's path template.
    Param(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
    /// Log to this file instead of stderr (reopened on SIGUSR1).
    pub file: Option<PathBuf>,
}

/// The `tracing` section with the OTEL_* environment variables applied beneath it (a key set
/// in the config wins over its variable).
#[derive(Clone, PartialEq)]
pub struct TracingConfig {
    /// Over HTTP the full OTLP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`; over gRPC
    /// the collector's address, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// How spans are sent: OTLP over HTTP with protobuf bodies, or over gRPC.
    pub protocol: OtlpProtocol,
    /// 0.0..=1.0, for traces this gateway starts.
    pub sampling_rate: f64,
    /// Whether a continued trace follows its caller's sampled flag (the default, and the
    /// `parentbased_*` samplers of OTEL_TRACES_SAMPLER); if not, `sampling_rate` decides for
    /// every request.
    pub parent_based: bool,
    pub service_name: String,
    pub export_timeout: Duration,
    pub trust_incoming: TraceTrust,
    /// Sent with every export; values may be secrets (never logged, not in `Debug`).
    pub headers: Vec<(String, String)>,
    /// Gzip the export bodies.
    pub gzip: bool,
    /// PEM text of the only CA certificates an https collector is trusted by (`ca_file`);
    /// `None`: the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Resource attributes besides service.name (configured and OTEL_RESOURCE_ATTRIBUTES).
    pub resource_attributes: Vec<(String, String)>,
    /// Trace context formats read (the first found, in this order) and written upstream (all);
    /// no duplicates. Default: W3C trace context and baggage.
    pub propagators: Vec<Propagator>,
}

/// The OTLP transport (`tracing.protocol`, OTEL_EXPORTER_OTLP_PROTOCOL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`, the default.
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// A trace context format on the wire (`tracing.propagators`, OTEL_PROPAGATORS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagator {
    /// W3C `traceparent` and `tracestate`.
    TraceContext,
    /// W3C `baggage`.
    Baggage,
    /// B3 single header `b3`.
    B3,
    /// B3 multi-header `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`.
    B3Multi,
}

impl Propagator {
    /// The names the config and OTEL_PROPAGATORS use.
    pub const NAMES: [&'static str; 4] = ["tracecontext", "baggage", "b3", "b3multi"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tracecontext" => Some(Propagator::TraceContext),
            "baggage" => Some(Propagator::Baggage),
            "b3" => Some(Propagator::B3),
            "b3multi" => Some(Propagator::B3Multi),
            _ => None,
        }
    }
}

impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TracingConfig")
            .field(
                "endpoint",
                &crate::base::redact::url_for_log(&self.endpoint),
            )
            .field("sampling_rate", &self.sampling_rate)
            .field("parent_based", &self.parent_based)
            .field("service_name", &self.service_name)
            .field("export_timeout", &self.export_timeout)
            .field("trust_incoming", &self.trust_incoming)
            .field("header_names", &header_names)
            .field("gzip", &self.gzip)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("resource_attributes", &self.resource_attributes)
            .field("propagators", &self.propagators)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// Whose incoming `traceparent` is continued (`tracing.trust_incoming`); anyone else's request
/// starts a new trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceTrust {
    /// Peers in `server.trusted_proxies` (the default).
    TrustedProxies,
    All,
    None,
}

/// A server's circuit breaker (`upstreams.*.circuit_breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before letting probes through.
    pub recovery_timeout: Duration,
    /// Requests the rolling window needs before the error percentage can open the circuit.
    pub minimum_throughput: u32,
    /// Failure share (0..=100) over the rolling window that opens the circuit.
    pub error_percentage_threshold: f64,
    /// Length of the rolling window.
    pub window: Duration,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            minimum_throughput: 10,
            error_percentage_threshold: 50.0,
            window: Duration::from_secs(10),
            half_open_requests: 1,
        }
    }
}
