//! The edge chain: the policies a request meets before anything is forwarded, and the only
//! place their order is written down ([`Edge::admit`]):
//!
//! 1. CORS preflight ([`cors`]): a browser's preflight carries no credentials, so it is
//!    answered here, before authentication, and never forwarded. A WebSocket handshake (which
//!    browsers never preflight) from an origin the route's policy does not allow is refused
//!    here too: the defence against cross-site WebSocket hijacking.
//! 2. The identity-free rate limits ([`ratelimit`]: global, per IP), before any credential
//!    is looked at, so requests that fail authentication are counted too.
//! 3. The throttle on failed authentications ([`ratelimit::failures`]): a client whose
//!    authentications kept failing gets 429 before its credentials are checked.
//! 4. Authentication and the route's permissions ([`auth`]): JWT or API key; a 401 counts
//!    against the client's failure budget.
//! 5. The tenant ([`tenant`]), right after authentication: a tenant named by header or JWT
//!    claim that is not configured is refused (403 `tenant_unknown`), and with
//!    `tenancy.require` so is a request without one (401 `tenant_required`). The tenant was
//!    *recognised* before routing ([`tenant::Tenancy::recognise`], which refuses nothing),
//!    since a tenant's own routes are in its own route table; this is where it is enforced.
//! 6. The identity-bound rate limits (a key's own, per API key, per user), once the caller is
//!    known. Every limit that applies must admit the request; one refused at this step has
//!    used its identity-free tokens (it did reach the gateway).
//! 7. The tenant-wide rate limit (one bucket per tenant).
//! 8. The tenant's quotas (month and day, UTC): last, so that only admitted requests count.
//!
//! On the way back, [`Edge::respond`] adds what the chain owes every response of the route,
//! errors included: the rate-limit headers and the CORS headers.

pub mod auth;
pub mod cors;
pub mod ratelimit;
pub mod tenant;

use crate::base::error::GatewayError;
use crate::config::model::{Config, RouteConfig};
use crate::observability::metrics::Metrics;
use actix_web::{HttpRequest, HttpResponse};
use std::net::IpAddr;

/// The edge policies of one runtime.
pub struct Edge {
    pub cors: cors::CorsTable,
    pub auth: auth::Auth,
    /// Present when anything is rate limited.
    pub ratelimit: Option<ratelimit::RateLimiter>,
    /// Failed authentications per client address (routes and the admin API), always on.
    pub auth_failures: ratelimit::failures::AuthFailures,
    /// Present when the config has tenants or a `tenancy` section.
    pub tenancy: Option<tenant::Tenancy>,
}

/// What the chain owes the response: where the rate limits and the quota stand (a 429
/// carries them too).
#[derive(Default)]
pub struct Admission {
    pub ratelimit: Option<ratelimit::Report>,
    pub quota: Option<tenant::quota::QuotaReport>,
}

/// The chain's verdict on a request it did not refuse.
pub enum Verdict {
    /// Go on, as this caller (`None` on an open route).
    Pass(Option<auth::Identity>),
    /// The chain answered itself (a preflight's 204).
    Answer(HttpResponse),
}

/// A request as the chain sees it: matched to a route already.
pub struct EdgeRequest<'r> {
    pub req: &'r HttpRequest,
    pub route_idx: usize,
    pub route: &'r RouteConfig,
    /// A CORS preflight for a route with a policy (routed by the method it asks about).
    pub preflight: bool,
    pub request_id: &'r str,
    /// The tenant the request named (recognised before routing; enforced by the chain).
    pub tenant: tenant::Recognised,
}

impl Edge {
    /// The edge policies of `config`; the previous runtime's config and edge lend what keeps
    /// its identity across a reload: the JWT verifier (its JWKS and verified-token cache) when
    /// its settings are unchanged, rate-limit buckets and the Redis connection.
    pub fn build(
        config: &Config,
        metrics: &Metrics,
        previous: Option<(&Config, &Edge)>,
    ) -> Result<Edge, EdgeError> {
        let kept_jwt = previous
            .filter(|(c, _)| c.jwt == config.jwt)
            .and_then(|(_, p)| p.auth.jwt.clone());
        let previous = previous.map(|(_, p)| p);
        Ok(Edge {
            cors: cors::CorsTable::build(config).map_err(EdgeError::Cors)?,
            auth: auth::Auth::build(config, kept_jwt)?,
            ratelimit: ratelimit::RateLimiter::build(
                config,
                metrics,
                previous.and_then(|p| p.ratelimit.as_ref()),
            )?,
            auth_failures: ratelimit::failures::AuthFailures::build(
                config.auth_failures,
                previous.map(|p| &p.auth_failures),
            ),
            tenancy: match &config.tenancy {
                None => None,
                Some(t) => Some(tenant::Tenancy::build(
                    t,
                    metrics,
                    previous.and_then(|p| p.tenancy.as_ref()),
                )?),
            },
        })
    }

    /// Starts background work (JWKS fetches).
    pub fn start(&self) {
        self.auth.start();
    }

    /// Runs the chain: a [`Verdict`], or the error that refuses the request. `client_ip` is
    /// asked only on a limited route or one that authenticates. What the response owes is left in
    /// `admission`, also when the request is refused (a 429 carries the rate-limit headers).
    #[inline(always)]
    pub async fn admit(
        &self,
        r: &EdgeRequest<'_>,
        client_ip: impl FnOnce() -> Option<IpAddr>,
        metrics: &Metrics,
        admission: &mut Admission,
    ) -> Result<Verdict, GatewayError> {
        // 1. CORS preflight.
        if r.preflight {
            return self
                .cors
                .answer_preflight(r.route, r.route_idx, r.req.headers())
                .map(Verdict::Answer);
        }
        // An upgrade request (a flag actix sets from `Connection: upgrade`; no header lookup
        // for other requests).
        if r.req.head().connection_type() == actix_web::http::ConnectionType::Upgrade {
            self.cors
                .websocket_origin(r.route, r.route_idx, r.req.headers())?;
        }
        let rl = self
            .ratelimit
            .as_ref()
            .filter(|rl| rl.limits_route(r.route_idx));
        let needs_auth = !r.route.auth.is_open();
        let ip = match rl.is_some() || needs_auth {
            true => client_ip(),
            false => None,
        };
        // 2. The identity-free rate limits (global, per IP): requests that will fail
        //    authentication count too.
        if let Some(rl) = rl {
            let applicable = rl.applicable_anonymous(r.route_idx, ip);
            limit(rl, applicable, r.route, metrics, admission).await?;
        }
        let identity = match needs_auth {
            false => None,
            true => {
                // 3. A client whose authentications kept failing is refused before any
                //    credential is looked at.
                if let Some(retry_after) = ip.and_then(|ip| self.auth_failures.blocked(ip)) {
                    metrics
                        .ratelimited
                        .with_label_values(&[r.route.name.as_str(), "auth_failures"])
                        .inc();
                    return Err(GatewayError::RateLimited { retry_after });
                }
                // 4. Authentication and permissions; a 401 counts against the client.
                let result = match self
                    .auth
                    .authenticate_now(r.route, r.req, metrics, r.request_id)
                {
                    Some(decided) => decided,
                    // A token to verify. Boxed: kept inline, that future (a JWKS refetch
                    // included) would grow every request's future, open routes too.
                    None => {
                        Box::pin(
                            self.auth
                                .authenticate(r.route, r.req, metrics, r.request_id),
                        )
                        .await
                    }
                };
                if let (Err(GatewayError::AuthRequired { .. }), Some(ip)) = (&result, ip) {
                    self.auth_failures.record(ip);
                }
                result?
            }
        };
        // 5. The tenant.
        let tenant = match &self.tenancy {
            None => None,
            Some(t) => t.enforce(r.tenant)?,
        };
        // 6. The identity-bound rate limits (a key's own, per key, per user).
        if let (Some(rl), Some(id)) = (rl, identity.as_ref()) {
            let applicable = rl.applicable_identified(r.route_idx, Some(id));
            limit(rl, applicable, r.route, metrics, admission).await?;
        }
        if let (Some(t), Some(tenancy)) = (tenant, &self.tenancy) {
            // 7. The tenant-wide rate limit.
            if let Some(applicable) = self
                .ratelimit
                .as_ref()
                .and_then(|rl| rl.applicable_tenant(t).map(|a| (rl, a)))
            {
                limit(applicable.0, applicable.1, r.route, metrics, admission).await?;
            }
            // 8. The quotas.
            if tenancy.quotas.limits(t) {
                quota(tenancy, t, admission).await?;
            }
        }
        Ok(Verdict::Pass(identity))
    }

    /// The chain's part of every response: rate-limit headers where limits were consulted,
    /// the quota headers of a tenant with quotas (where its quota stands when the request was
    /// refused before the quota step), CORS headers where the route (or, unmatched, the top
    /// level) has a policy.
    pub fn respond(
        &self,
        route: Option<usize>,
        tenant: Option<usize>,
        admission: &Admission,
        req: &HttpRequest,
        res: &mut HttpResponse,
    ) {
        if let (Some(report), Some(rl)) = (&admission.ratelimit, &self.ratelimit) {
            rl.apply_headers(report, res.headers_mut());
        }
        match (&admission.quota, tenant, &self.tenancy) {
            (Some(q), _, _) => tenant::quota::apply_headers(q, res.headers_mut()),
            (None, Some(t), Some(tenancy)) => {
                if let Some(q) = tenancy.quotas.peek(t, crate::base::clock::wall_ms()) {
                    tenant::quota::apply_headers(&q, res.headers_mut());
                }
            }
            _ => {}
        }
        self.cors.respond(route, req, res);
    }
}

/// One rate-limit decision of the chain: its report joins the response's, a refusal is the 429
/// (or the 503 while Redis is down and `on_backend_error` is deny).
#[inline(always)]
async fn limit(
    rl: &ratelimit::RateLimiter,
    applicable: ratelimit::Applicable,
    route: &RouteConfig,
    metrics: &Metrics,
    admission: &mut Admission,
) -> Result<(), GatewayError> {
    let decision = match rl.decide(applicable) {
        ratelimit::Pending::Ready(d) => d,
        ratelimit::Pending::Remote(f) => f.await,
    };
    let (report, refused) = match decision {
        ratelimit::Decision::Admitted(report) => (report, false),
        ratelimit::Decision::Limited(report) => (report, true),
        ratelimit::Decision::Unavailable => return Err(GatewayError::RateLimiterUnavailable),
    };
    let retry_after = report.retry_after_s();
    if refused {
        let scope = report
            .refused_by()
            .map_or("global", |i| rl.scope(i).as_str());
        metrics
            .ratelimited
            .with_label_values(&[route.name.as_str(), scope])
            .inc();
    }
    match &mut admission.ratelimit {
        Some(earlier) => earlier.merge(&report),
        None => admission.ratelimit = Some(report),
    }
    match refused {
        true => Err(GatewayError::RateLimited { retry_after }),
        false => Ok(()),
    }
}

/// The quota decision of the chain: its report joins the response's, a refusal is the 429.
/// Counts in memory decide at once; the Redis store's future is boxed, so that it does not
/// grow every request's future.
#[inline(always)]
async fn quota(
    tenancy: &tenant::Tenancy,
    t: usize,
    admission: &mut Admission,
) -> Result<(), GatewayError> {
    use tenant::quota::QuotaDecision;
    let now = crate::base::clock::wall_ms();
    let decision = match tenancy.quotas.decide_now(t, now) {
        Some(d) => d,
        None => {
            let id = tenancy.ids.get(t).map_or("", String::as_str);
            Box::pin(tenancy.quotas.decide_remote(t, id, now)).await
        }
    };
    match decision {
        QuotaDecision::Unlimited | QuotaDecision::Unavailable => Ok(()),
        QuotaDecision::Admitted(r) => {
            admission.quota = Some(r);
            Ok(())
        }
        QuotaDecision::Refused(r) => {
            admission.quota = Some(r);
            Err(GatewayError::QuotaExceeded {
                retry_after: r.reset_s,
            })
        }
    }
}

/// Why the edge policies of a (validated) config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cors: {0:?}")]
    Cors(Vec<crate::config::cors::CorsError>),
    #[error(transparent)]
    Jwt(#[from] auth::jwt::JwtError),
    #[error(transparent)]
    RateLimit(#[from] ratelimit::RateLimitBuildError),
    #[error(transparent)]
    Quota(#[from] tenant::quota::QuotaBuildError),
}

impl EdgeError {
    /// The config section the error belongs to.
    pub fn section(&self) -> &'static str {
        match self {
            EdgeError::Cors(_) => "cors",
            EdgeError::Jwt(_) => "jwt_validation",
            EdgeError::RateLimit(_) => "rate_limiting",
            EdgeError::Quota(_) => "tenancy.quota_store",
        }
    }
}
