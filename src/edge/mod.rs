//! The edge chain: the policies a request meets before anything is forwarded, and the only
//! place their order is written down ([`Edge::admit`]):
//!
//! 1. CORS preflight ([`cors`]): a browser's preflight carries no credentials, so it is
//!    answered here, before authentication, and never forwarded.
//! 2. Authentication and the route's permissions ([`auth`]): JWT or API key.
//! 3. Rate limiting ([`ratelimit`]), once the caller is known: every limit that applies must
//!    admit the request.
//!
//! On the way back, [`Edge::respond`] adds what the chain owes every response of the route,
//! errors included: the rate-limit headers and the CORS headers.

pub mod auth;
pub mod cors;
pub mod ratelimit;

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
}

/// What the chain owes the response: where the rate limits stand (a 429 carries them too).
#[derive(Default)]
pub struct Admission {
    pub ratelimit: Option<ratelimit::Report>,
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
        })
    }

    /// Starts background work (JWKS fetches).
    pub fn start(&self) {
        self.auth.start();
    }

    /// Runs the chain: a [`Verdict`], or the error that refuses the request. `client_ip` is
    /// asked only when a per-IP limit needs it. What the response owes is left in
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
        // 2. Authentication.
        let identity = match self
            .auth
            .authenticate_now(r.route, r.req, metrics, r.request_id)
        {
            Some(decided) => decided?,
            // A token to verify. Boxed: kept inline, that future (a JWKS refetch included)
            // would grow every request's future, open routes too.
            None => {
                Box::pin(
                    self.auth
                        .authenticate(r.route, r.req, metrics, r.request_id),
                )
                .await?
            }
        };
        // 3. Rate limits.
        if let Some(rl) = self
            .ratelimit
            .as_ref()
            .filter(|rl| rl.limits_route(r.route_idx))
        {
            let applicable = rl.applicable(r.route_idx, client_ip(), identity.as_ref());
            let decision = match rl.decide(applicable) {
                ratelimit::Pending::Ready(d) => d,
                ratelimit::Pending::Remote(f) => f.await,
            };
            match decision {
                ratelimit::Decision::Admitted(report) => admission.ratelimit = Some(report),
                ratelimit::Decision::Limited(report) => {
                    let scope = report
                        .refused_by()
                        .map_or("global", |i| rl.scope(i).as_str());
                    metrics
                        .ratelimited
                        .with_label_values(&[r.route.name.as_str(), scope])
                        .inc();
                    let retry_after = report.retry_after_s();
                    admission.ratelimit = Some(report);
                    return Err(GatewayError::RateLimited { retry_after });
                }
                ratelimit::Decision::Unavailable => {
                    return Err(GatewayError::RateLimiterUnavailable)
                }
            }
        }
        Ok(Verdict::Pass(identity))
    }

    /// The chain's part of every response: rate-limit headers where limits were consulted,
    /// CORS headers where the route (or, unmatched, the top level) has a policy.
    pub fn respond(
        &self,
        route: Option<usize>,
        admission: &Admission,
        req: &HttpRequest,
        res: &mut HttpResponse,
    ) {
        if let (Some(report), Some(rl)) = (&admission.ratelimit, &self.ratelimit) {
            rl.apply_headers(report, res.headers_mut());
        }
        self.cors.respond(route, req, res);
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
}

impl EdgeError {
    /// The config section the error belongs to.
    pub fn section(&self) -> &'static str {
        match self {
            EdgeError::Cors(_) => "cors",
            EdgeError::Jwt(_) => "jwt_validation",
            EdgeError::RateLimit(_) => "rate_limiting",
        }
    }
}
