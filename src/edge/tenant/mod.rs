//! Multi-tenancy at the edge: which tenant a request belongs to, whether it may go on
//! (`tenant_unknown`, `tenant_required`), the tenant's quotas ([`quota`]) and its metrics
//! series. The tenant-wide rate limit lives with the other limits
//! ([`crate::edge::ratelimit`]).
//!
//! A tenant's own routes are only in its own route table, so the tenant must be known before
//! routing: [`Tenancy::recognise`] reads the request (API key, JWT claim, header, host, in the
//! configured order) and refuses nothing; the edge chain enforces what it found right after
//! authentication ([`Tenancy::enforce`], see [`crate::edge`]).

pub mod quota;
pub mod redis;
pub mod store;

use crate::base::error::GatewayError;
use crate::config::model::{IdentifyBy, TenancyConfig};
use crate::edge::auth::Auth;
use crate::observability::metrics::Metrics;
use actix_web::http::header as ax;
use actix_web::HttpRequest;
use rustc_hash::FxHashMap;

pub use crate::config::validate::OTHER_TENANT;

/// What a request says about its tenant, before anything is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recognised {
    /// No method yielded a tenant.
    #[default]
    Nobody,
    /// The tenant at this index.
    Tenant(usize),
    /// A header or JWT claim named a tenant that is not configured.
    Unknown,
}

/// The JWT verifier and the request's bearer token, when both exist.
fn bearer<'r>(
    req: &'r HttpRequest,
    auth: &'r Auth,
) -> Option<(&'r crate::edge::auth::jwt::JwtAuth, &'r str)> {
    let jwt = auth.jwt.as_deref()?;
    let value = req.headers().get(ax::AUTHORIZATION)?.to_str().ok()?;
    let token = crate::edge::auth::jwt::bearer(value).ok()?;
    Some((jwt, token))
}

/// One tenant's metrics series, resolved once per runtime.
pub struct TenantSeries {
    /// 2xx, 3xx, 4xx, 5xx (1xx counts with 2xx).
    pub by_class: [prometheus::IntCounter; 4],
    pub duration: prometheus::Histogram,
}

impl TenantSeries {
    fn new(metrics: &Metrics, id: &str) -> Self {
        let c = |class: &str| metrics.tenant_requests.with_label_values(&[id, class]);
        TenantSeries {
            by_class: [c("2xx"), c("3xx"), c("4xx"), c("5xx")],
            duration: metrics.tenant_duration.with_label_values(&[id]),
        }
    }

    /// Counts one response of `status` that took `seconds` to its head.
    pub fn record(&self, status: u16, seconds: f64) {
        let i = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.by_class[i].inc();
        self.duration.observe(seconds);
    }
}

/// The tenancy of one runtime.
pub struct Tenancy {
    identify_by: Vec<IdentifyBy>,
    header: String,
    claim: String,
    require: bool,
    by_key: FxHashMap<Box<str>, usize>,
    by_host: FxHashMap<Box<str>, usize>,
    by_id: FxHashMap<Box<str>, usize>,
    /// Tenant ids by index.
    pub ids: Vec<String>,
    pub quotas: quota::Quotas,
    series: Vec<TenantSeries>,
    other: TenantSeries,
}

impl Tenancy {
    /// The tenancy of `config`; the previous runtime's lends its quota counters and store.
    pub fn build(
        t: &TenancyConfig,
        metrics: &Metrics,
        previous: Option<&Tenancy>,
    ) -> Result<Tenancy, quota::QuotaBuildError> {
        let mut by_key = FxHashMap::default();
        let mut by_host = FxHashMap::default();
        let mut by_id = FxHashMap::default();
        for (i, tenant) in t.tenants.iter().enumerate() {
            for k in &tenant.api_keys {
                by_key.insert(k.as_str().into(), i);
            }
            for h in &tenant.hosts {
                by_host.insert(h.as_str().into(), i);
            }
            by_id.insert(tenant.id.as_str().into(), i);
        }
        Ok(Tenancy {
            identify_by: t.identify_by.clone(),
            header: t.header.as_str().to_string(),
            claim: t.claim.clone(),
            require: t.require,
            by_key,
            by_host,
            by_id,
            ids: t.tenants.iter().map(|x| x.id.clone()).collect(),
            quotas: quota::Quotas::build(t, metrics, previous.map(|p| &p.quotas))?,
            series: t
                .tenants
                .iter()
                .map(|x| TenantSeries::new(metrics, &x.id))
                .collect(),
            other: TenantSeries::new(metrics, OTHER_TENANT),
        })
    }

    /// Finds the request's tenant: the first method of `identify_by` that yields one. An API
    /// key or JWT that does not verify yields nothing (authentication, where the route asks
    /// for it, answers for it). At once, unless a JWT not verified before must be checked:
    /// then `None`, and [`Tenancy::recognise`] does it.
    #[inline]
    pub fn recognise_now(&self, req: &HttpRequest, auth: &Auth) -> Option<Recognised> {
        for method in &self.identify_by {
            let found = match method {
                IdentifyBy::ApiKey => self.by_api_key(req, auth),
                IdentifyBy::JwtClaim => match bearer(req, auth) {
                    None => None,
                    Some((jwt, token)) => match jwt.verify_cached(token) {
                        Some(v) => self.claim_of(&v),
                        None => return None,
                    },
                },
                IdentifyBy::Header => req
                    .headers()
                    .get(self.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|id| self.named(id.trim())),
                IdentifyBy::Host => self.by_host(req),
            };
            if let Some(r) = found {
                return Some(r);
            }
        }
        Some(Recognised::Nobody)
    }

    /// As [`Tenancy::recognise_now`], verifying a JWT when it must.
    pub async fn recognise(&self, req: &HttpRequest, auth: &Auth) -> Recognised {
        for method in &self.identify_by {
            let found = match method {
                IdentifyBy::JwtClaim => match bearer(req, auth) {
                    None => None,
                    Some((jwt, token)) => match jwt.verify(token).await {
                        Ok(v) => self.claim_of(&v),
                        Err(_) => None,
                    },
                },
                IdentifyBy::ApiKey => self.by_api_key(req, auth),
                IdentifyBy::Header => req
                    .headers()
                    .get(self.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|id| self.named(id.trim())),
                IdentifyBy::Host => self.by_host(req),
            };
            if let Some(r) = found {
                return r;
            }
        }
        Recognised::Nobody
    }

    /// The tenant a verified token's claim names: `Unknown` for a claim that is not a
    /// string.
    fn claim_of(&self, v: &crate::edge::auth::jwt::Verified) -> Option<Recognised> {
        match v.claims.get(&self.claim)? {
            serde_json::Value::String(id) => Some(self.named(id)),
            _ => Some(Recognised::Unknown),
        }
    }

    /// The tenant of the request's Host (or HTTP/2 `:authority`), compared without port,
    /// trailing dot or case.
    fn by_host(&self, req: &HttpRequest) -> Option<Recognised> {
        let host = req
            .headers()
            .get(ax::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
        let name = crate::base::net::host_name(host).trim_end_matches('.');
        let i = match self.by_host.get(name) {
            Some(&i) => i,
            None => *self.by_host.get(name.to_ascii_lowercase().as_str())?,
        };
        Some(Recognised::Tenant(i))
    }

    fn named(&self, id: &str) -> Recognised {
        match self.by_id.get(id) {
            Some(&i) => Recognised::Tenant(i),
            None => Recognised::Unknown,
        }
    }

    fn by_api_key(&self, req: &HttpRequest, auth: &Auth) -> Option<Recognised> {
        let keys = auth.keys.as_ref()?;
        let presented = keys.presented(req.headers(), req.query_string())?;
        let entry = keys.lookup(&presented)?;
        self.by_key
            .get(entry.name.as_str())
            .map(|&i| Recognised::Tenant(i))
    }

    /// The chain's tenant step: an unknown tenant is refused (403), whatever `require` says;
    /// none at all is refused (401) when `require` is set.
    pub fn enforce(&self, r: Recognised) -> Result<Option<usize>, GatewayError> {
        match r {
            Recognised::Tenant(i) => Ok(Some(i)),
            Recognised::Unknown => Err(GatewayError::TenantUnknown),
            Recognised::Nobody if self.require => Err(GatewayError::TenantRequired),
            Recognised::Nobody => Ok(None),
        }
    }

    /// The metrics series of a tenant (`other` for anything but a configured tenant).
    pub fn series(&self, tenant: Option<usize>) -> &TenantSeries {
        tenant
            .and_then(|i| self.series.get(i))
            .unwrap_or(&self.other)
    }

    /// The index of tenant `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}
