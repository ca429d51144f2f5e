//! Authentication: who the caller is (a JWT or an API key) and whether the route's permissions
//! let them in. Where it runs in the edge chain is [`crate::edge`]'s.

pub mod api_key;
pub mod crypto;
pub mod jwt;

use crate::base::error::GatewayError;
use crate::config::model::{AuthMode, Config, RateConfig, RouteConfig};
use crate::observability::lines::AuditLine;
use crate::observability::metrics::Metrics;
use actix_web::http::header as ax;
use std::sync::Arc;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Jwt,
    ApiKey,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Jwt => "jwt",
            Scheme::ApiKey => "api_key",
        }
    }
}

/// The authenticated caller, for the later phases (rate limiting per user or key, the access
/// and audit logs) and the forwarded headers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub scheme: Scheme,
    /// The API key's name, or the JWT's `sub` (`-` when it has none).
    pub name: String,
    pub permissions: Vec<String>,
    /// The key's own rate limit (API keys only).
    pub rate_limit: Option<RateConfig>,
    /// The verified token (JWT only).
    pub token: Option<Arc<jwt::Verified>>,
    /// The API key came in the query string (it is removed before forwarding).
    pub key_in_query: bool,
}

/// The edge-security state of one runtime.
pub struct Auth {
    pub jwt: Option<Arc<jwt::JwtAuth>>,
    pub keys: Option<api_key::KeyStore>,
    always_removed: AlwaysRemoved,
}

impl Auth {
    /// The edge security of `config`. `jwt` is a verifier to keep (the previous runtime's,
    /// when its settings did not change): its fetched JWKS and verified-token cache stay
    /// warm across a reload.
    pub fn build(config: &Config, jwt: Option<Arc<jwt::JwtAuth>>) -> Result<Auth, jwt::JwtError> {
        let jwt = match (jwt, &config.jwt) {
            (Some(kept), Some(_)) => Some(kept),
            (_, Some(cfg)) => Some(Arc::new(jwt::JwtAuth::new(cfg)?)),
            (_, None) => None,
        };
        let keys = config.api_keys.clone().map(api_key::KeyStore::new);
        Ok(Auth {
            always_removed: AlwaysRemoved::new(jwt.as_deref(), keys.as_ref()),
            jwt,
            keys,
        })
    }

    /// Starts background work (JWKS fetches).
    pub fn start(&self) {
        if let Some(j) = &self.jwt {
            j.start();
        }
    }

    /// Authenticates a request for `route` without waiting, when that is possible: an open
    /// route, an API key, a missing or malformed credential, or a JWT this worker verified
    /// before. `None` means a token must be verified: call [`Auth::authenticate`].
    pub fn authenticate_now(
        &self,
        route: &RouteConfig,
        req: &actix_web::HttpRequest,
        metrics: &Metrics,
        request_id: &str,
    ) -> Option<Result<Option<Identity>, GatewayError>> {
        if route.auth.is_open() {
            return Some(Ok(None));
        }
        let result = self.identify_now(route.auth, req)?;
        Some(self.decide(route, result, metrics, request_id))
    }

    /// Authenticates a request for `route`: `Ok(None)` for an open route, the caller's
    /// identity, or the 401/403 to answer. Failures are counted and logged with their reason
    /// (never the credential itself).
    pub async fn authenticate(
        &self,
        route: &RouteConfig,
        req: &actix_web::HttpRequest,
        metrics: &Metrics,
        request_id: &str,
    ) -> Result<Option<Identity>, GatewayError> {
        if route.auth.is_open() {
            return Ok(None);
        }
        let result = self.identify(route.auth, req).await;
        self.decide(route, result, metrics, request_id)
    }

    fn decide(
        &self,
        route: &RouteConfig,
        result: Result<Identity, (Option<Scheme>, &'static str)>,
        metrics: &Metrics,
        request_id: &str,
    ) -> Result<Option<Identity>, GatewayError> {
        let mode = route.auth;
        let identity = match result {
            Ok(id) => id,
            Err((scheme, reason)) => {
                let scheme = scheme.map_or(accepted(mode), Scheme::as_str);
                metrics
                    .auth_failures
                    .with_label_values(&[route.name.as_str(), scheme, reason])
                    .inc();
                AuditLine {
                    route: route.name.as_str(),
                    scheme,
                    identity: None,
                    decision: "deny",
                    reason: Some(reason),
                    missing_permission: None,
                    request_id,
                    message: "authentication failed",
                }
                .write();
                let challenge = match (mode.jwt, reason) {
                    (true, "missing" | "wrong_scheme") => "Bearer realm=\"kairos\"",
                    (true, _) => "Bearer realm=\"kairos\", error=\"invalid_token\"",
                    (false, _) => "ApiKey realm=\"kairos\"",
                };
                return Err(GatewayError::AuthRequired { challenge });
            }
        };
        let missing = route
            .permissions
            .iter()
            .find(|p| !identity.permissions.iter().any(|h| h == *p));
        let decision = if missing.is_some() { "deny" } else { "allow" };
        AuditLine {
            route: route.name.as_str(),
            scheme: identity.scheme.as_str(),
            identity: Some(identity.name.as_str()),
            decision,
            reason: None,
            missing_permission: missing.map(String::as_str),
            request_id,
            message: "authenticated request",
        }
        .write();
        if missing.is_some() {
            metrics
                .auth_failures
                .with_label_values(&[route.name.as_str(), identity.scheme.as_str(), "permission"])
                .inc();
            return Err(GatewayError::Forbidden);
        }
        Ok(Some(identity))
    }

    /// [`Auth::identify`] without waiting; `None` when a JWT needs verifying.
    fn identify_now(
        &self,
        mode: AuthMode,
        req: &actix_web::HttpRequest,
    ) -> Option<Result<Identity, (Option<Scheme>, &'static str)>> {
        match self.credential(mode, req) {
            Credential::Done(r) => Some(r),
            Credential::Token(auth, token) => {
                auth.verify_cached(token).map(|v| Ok(jwt_identity(v)))
            }
        }
    }

    async fn identify(
        &self,
        mode: AuthMode,
        req: &actix_web::HttpRequest,
    ) -> Result<Identity, (Option<Scheme>, &'static str)> {
        match self.credential(mode, req) {
            Credential::Done(r) => r,
            Credential::Token(auth, token) => auth
                .verify(token)
                .await
                .map(jwt_identity)
                .map_err(|r| (Some(Scheme::Jwt), r.as_str())),
        }
    }

    /// What the request presents: an API key (checked at once), a bearer token to verify, or
    /// nothing usable.
    fn credential<'a>(&'a self, mode: AuthMode, req: &'a actix_web::HttpRequest) -> Credential<'a> {
        let headers = req.headers();
        if mode.api_key {
            if let Some(store) = &self.keys {
                let in_header = headers.contains_key(store.config.header_name.as_str());
                if let Some(presented) = store.presented(headers, req.query_string()) {
                    let Some(entry) = store.lookup(&presented) else {
                        return Credential::Done(Err((Some(Scheme::ApiKey), "invalid_key")));
                    };
                    return Credential::Done(Ok(Identity {
                        scheme: Scheme::ApiKey,
                        name: entry.name.clone(),
                        permissions: entry.permissions.clone(),
                        rate_limit: entry.rate_limit,
                        token: None,
                        key_in_query: !in_header,
                    }));
                }
            }
        }
        if mode.jwt {
            if let Some(auth) = &self.jwt {
                let mut values = headers.get_all(ax::AUTHORIZATION);
                let Some(value) = values.next() else {
                    return Credential::Done(Err((None, "missing")));
                };
                if values.next().is_some() {
                    // Verifying one and forwarding both would hand the upstream an unchecked one.
                    return Credential::Done(Err((Some(Scheme::Jwt), "malformed")));
                }
                // from_utf8 has a word-at-a-time ASCII path; HeaderValue::to_str checks byte
                // by byte (~9 instructions each; a 400-byte RS256 token made that 3.8k).
                let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
                    return Credential::Done(Err((Some(Scheme::Jwt), "malformed")));
                };
                return match jwt::bearer(value) {
                    Ok(token) => Credential::Token(auth, token),
                    Err(r) => Credential::Done(Err((Some(Scheme::Jwt), r.as_str()))),
                };
            }
        }
        Credential::Done(Err((None, "missing")))
    }
}

enum Credential<'a> {
    Done(Result<Identity, (Option<Scheme>, &'static str)>),
    Token(&'a jwt::JwtAuth, &'a str),
}

fn jwt_identity(verified: Arc<jwt::Verified>) -> Identity {
    Identity {
        scheme: Scheme::Jwt,
        name: verified.subject.clone().unwrap_or_else(|| "-".into()),
        permissions: verified.permissions.clone(),
        rate_limit: None,
        token: Some(verified),
        key_in_query: false,
    }
}

/// Headers removed from every forwarded request, whatever the route: the forwarded-claim
/// headers (an upstream must be able to trust them) and the API-key header (a key never goes
/// upstream). Built once per runtime.
struct AlwaysRemoved {
    names: Vec<http::HeaderName>,
    /// The same names with a `-`: a client's `X_User_Id` or `X_API_Key` is removed too, since
    /// CGI-style stacks (WSGI, PHP, nginx variables) read it as `X-User-Id` or `X-API-Key`.
    underscored: Vec<http::HeaderName>,
}

impl AlwaysRemoved {
    fn new(jwt: Option<&jwt::JwtAuth>, keys: Option<&api_key::KeyStore>) -> Self {
        let mut names: Vec<http::HeaderName> = jwt
            .map(|j| j.forward_claims.iter().map(|(_, h)| h.clone()).collect())
            .unwrap_or_default();
        names.extend(keys.map(|k| k.config.header_name.clone()));
        let underscored = names
            .iter()
            .filter(|n| n.as_str().contains('-'))
            .cloned()
            .collect();
        AlwaysRemoved { names, underscored }
    }
}

/// Changes to the upstream request's headers that follow from authentication.
pub struct HeaderEdits<'a> {
    always: &'a AlwaysRemoved,
    remove_authorization: bool,
    add: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeaderEdits<'_> {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.always.names {
            headers.remove(name);
        }
        if self.remove_authorization {
            headers.remove(http::header::AUTHORIZATION);
        }
        let underscored = &self.always.underscored;
        if !underscored.is_empty() && headers.keys().any(|k| k.as_str().contains('_')) {
            let doomed: Vec<http::HeaderName> = headers
                .keys()
                .filter(|k| {
                    k.as_str().contains('_')
                        && underscored.iter().any(|f| {
                            f.as_str().len() == k.as_str().len()
                                && f.as_str()
                                    .bytes()
                                    .zip(k.as_str().bytes())
                                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
                        })
                })
                .cloned()
                .collect();
            for name in doomed {
                headers.remove(name);
            }
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

impl Auth {
    /// The header edits for a request: the headers always removed, a JWT's claims set in
    /// place of the client's copies, and Authorization removed when configured or when an API
    /// key authenticated the request (a bearer token alongside was never verified, and an
    /// upstream that decodes it unverified would be fooled). Allocates only to add claims.
    pub fn header_edits(&self, identity: Option<&Identity>) -> HeaderEdits<'_> {
        let mut edits = HeaderEdits {
            always: &self.always_removed,
            remove_authorization: identity.is_some_and(|id| id.scheme == Scheme::ApiKey),
            add: Vec::new(),
        };
        if let (Some(jwt), Some(token)) = (&self.jwt, identity.and_then(|i| i.token.as_ref())) {
            for (claim, header) in &jwt.forward_claims {
                let value = match token.claims.get(claim) {
                    None | Some(serde_json::Value::Null) => continue,
                    Some(serde_json::Value::String(s)) => http::HeaderValue::from_str(s),
                    Some(other) => http::HeaderValue::from_str(&other.to_string()),
                };
                if let Ok(v) = value {
                    edits.add.push((header.clone(), v));
                }
            }
            edits.remove_authorization |= jwt.strip_authorization;
        }
        edits
    }
}

/// The `method` label of a failure before any credential was seen.
fn accepted(mode: AuthMode) -> &'static str {
    match (mode.jwt, mode.api_key) {
        (true, true) => "jwt_or_api_key",
        (true, false) => "jwt",
        _ => "api_key",
    }
}
