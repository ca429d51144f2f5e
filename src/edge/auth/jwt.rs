//! JWT validation the way RFC 8725 asks: every key is pinned to one algorithm (so `alg: none`
//! and the RS256 -> HS256 confusion cannot work), `exp` is required unless configured off,
//! `nbf` is honoured, issuer and audience are checked when configured, and `jku`/`x5u` in a
//! token are never followed. Keys come from the config (a secret or a PEM public key) or a
//! JWKS endpoint, fetched at start, refreshed in the background and chosen by `kid`; an
//! unknown `kid` triggers one coalesced, rate-capped refetch that the request waits for.
//!
//! Verified tokens are remembered per worker thread until they expire, so a client that sends
//! the same token again costs a hash lookup, not a signature check (RS256 is ~20 µs).

use crate::config::model::{JwtConfig, JwtKeySource, JwtProviderConfig};
use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::Instrument;

/// Why a token was refused: the `reason` label of `kairos_auth_failures_total` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    WrongScheme,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim,
    UnknownKey,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::WrongScheme => "wrong_scheme",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::MissingClaim => "missing_claim",
            Reason::UnknownKey => "unknown_key",
        }
    }
}

/// Why a JWT validator could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("secret: {0}")]
    Secret(jsonwebtoken::errors::Error),
    #[error("public key: {0}")]
    PublicKey(jsonwebtoken::errors::Error),
    #[error("an HMAC algorithm needs a secret")]
    HmacNeedsSecret,
    #[error("JWKS client: {0}")]
    JwksClient(reqwest::Error),
}

/// Why a JWKS fetch failed (the keys already fetched stay in use).
#[derive(Debug, thiserror::Error)]
pub enum JwksFetchError {
    #[error("{0}")]
    Request(reqwest::Error),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("JWKS larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Body(reqwest::Error),
    #[error("not a JWKS: {0}")]
    NotJwks(serde_json::Error),
}

/// A token that passed, with what later phases need from it.
#[derive(Debug)]
pub struct Verified {
    pub claims: Map<String, Value>,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// From `scope` (space-separated) and `permissions` (an array of strings).
    pub permissions: Vec<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    leeway: u64,
    /// Which [`JwtAuth`] verified it (the cache is per thread, shared by runtimes).
    auth_id: u64,
}

impl Verified {
    fn still_valid(&self, now: u64) -> bool {
        self.exp
            .is_none_or(|exp| now < exp.saturating_add(self.leeway))
            && self
                .nbf
                .is_none_or(|nbf| now.saturating_add(self.leeway) >= nbf)
    }
}

struct Provider {
    alg_name: &'static str,
    issuer: Option<String>,
    validation: Validation,
    /// Claims that must be present.
    custom_required: Vec<String>,
    leeway: u64,
    keys: Keys,
}

enum Keys {
    Static(DecodingKey),
    Jwks(Arc<Jwks>),
}

/// The JWT validator of one runtime.
pub struct JwtAuth {
    providers: Vec<Provider>,
    pub forward_claims: Vec<(String, http::HeaderName)>,
    pub strip_authorization: bool,
    id: u64,
    /// Holds the JWKS refreshers alive; they stop once the runtime is gone.
    alive: Arc<()>,
}

const SPEC_CLAIMS: [&str; 6] = ["exp", "nbf", "aud", "iss", "sub", "iat"];

impl JwtAuth {
    pub fn new(cfg: &JwtConfig) -> Result<Self, JwtError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        super::crypto::install();
        let providers = cfg
            .providers
            .iter()
            .map(provider)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JwtAuth {
            providers,
            forward_claims: cfg.forward_claims.clone(),
            strip_authorization: cfg.strip_authorization,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alive: Arc::new(()),
        })
    }

    /// How many providers take their keys from a JWKS that has no key yet (never fetched, or
    /// fetched empty): tokens they sign cannot be verified.
    pub fn jwks_without_keys(&self) -> usize {
        self.providers
            .iter()
            .filter(|p| matches!(&p.keys, Keys::Jwks(j) if j.keys.load().is_empty()))
            .count()
    }

    /// Starts fetching the JWKS of every provider that has one (once per runtime).
    pub fn start(&self) {
        for p in &self.providers {
            if let Keys::Jwks(j) = &p.keys {
                j.start(Arc::downgrade(&self.alive));
            }
        }
    }

    /// A token this worker verified before and that is still valid, without any work beyond
    /// a hash lookup.
    pub fn verify_cached(&self, token: &str) -> Option<Arc<Verified>> {
        cache_get(token, self.id, jsonwebtoken::get_current_timestamp())
    }

    /// Checks a bearer token.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, Reason> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = cache_get(token, self.id, now) {
            return Ok(hit);
        }
        let (header, payload) = peek(token)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        let iss = match payload.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            // An array or object iss would dodge the choice of provider by issuer.
            Some(_) => return Err(Reason::Malformed),
        };
        // The provider for this issuer if one claims it, else every provider; then only those
        // whose pinned algorithm is the token's.
        let by_issuer = self
            .providers
            .iter()
            .any(|p| p.issuer.is_some() && p.issuer.as_deref() == iss);
        let mut last = Reason::Algorithm;
        for p in self
            .providers
            .iter()
            .filter(|p| (!by_issuer || p.issuer.as_deref() == iss) && p.alg_name == alg)
        {
            match self.verify_with(p, token, kid).await {
                Ok(v) => {
                    let v = Arc::new(v);
                    if v.still_valid(now) {
                        cache_put(token, v.clone());
                    }
                    return Ok(v);
                }
                Err(r) => last = r,
            }
        }
        Err(last)
    }

    async fn verify_with(
        &self,
        p: &Provider,
        token: &str,
        kid: Option<&str>,
    ) -> Result<Verified, Reason> {
        let data = match &p.keys {
            Keys::Static(key) => decode(token, key, &p.validation)?,
            Keys::Jwks(jwks) => {
                let key = match jwks.key(kid) {
                    Some(k) => k,
                    None => {
                        jwks.refetch_and_wait().await;
                        jwks.key(kid).ok_or(Reason::UnknownKey)?
                    }
                };
                decode(token, &key, &p.validation)?
            }
        };
        if p.custom_required.iter().any(|c| !data.contains_key(c)) {
            return Err(Reason::MissingClaim);
        }
        let subject = data.get("sub").and_then(Value::as_str).map(str::to_string);
        let mut permissions: Vec<String> = data
            .get("scope")
            .and_then(Value::as_str)
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(Value::Array(items)) = data.get("permissions") {
            permissions.extend(items.iter().filter_map(Value::as_str).map(str::to_string));
        }
        // jsonwebtoken accepts fractional timestamps; the cache must read them the same way
        // (rounded towards the stricter side) or a token could outlive its exp here.
        let time = |name: &str, up: bool| -> Result<Option<u64>, Reason> {
            match data.get(name) {
                None => Ok(None),
                Some(v) => match (v.as_u64(), v.as_f64()) {
                    (Some(n), _) => Ok(Some(n)),
                    (None, Some(f)) if f >= 0.0 => {
                        Ok(Some(if up { f.ceil() } else { f.floor() } as u64))
                    }
                    _ => Err(Reason::Malformed),
                },
            }
        };
        let (exp, nbf) = (time("exp", false)?, time("nbf", true)?);
        Ok(Verified {
            exp,
            nbf,
            leeway: p.leeway,
            claims: data,
            subject,
            permissions,
            auth_id: self.id,
        })
    }
}

fn provider(cfg: &JwtProviderConfig) -> Result<Provider, JwtError> {
    let algorithm = cfg.algorithm;
    let mut validation = Validation::new(algorithm);
    validation.leeway = cfg.leeway.as_secs();
    // `require_exp: false` makes exp optional, never ignored: a present exp is always checked.
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // Configured iss/aud must be present, not just correct when present (jsonwebtoken skips
    // the check of an absent claim unless it is required).
    let mut spec: Vec<&str> = cfg
        .required_claims
        .iter()
        .map(String::as_str)
        .filter(|c| SPEC_CLAIMS.contains(c))
        .collect();
    if cfg.issuer.is_some() {
        spec.push("iss");
    }
    if cfg.audience.is_some() {
        spec.push("aud");
    }
    validation.set_required_spec_claims(&spec);
    match &cfg.issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    match &cfg.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let keys = match &cfg.key {
        JwtKeySource::Secret(s) => {
            Keys::Static(DecodingKey::from_secret(&s.0).map_err(JwtError::Secret)?)
        }
        JwtKeySource::PublicKey(pem) => {
            let pem = pem.as_bytes();
            let key = match algorithm.family() {
                jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                jsonwebtoken::AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
                jsonwebtoken::AlgorithmFamily::Hmac => return Err(JwtError::HmacNeedsSecret),
            };
            Keys::Static(key.map_err(JwtError::PublicKey)?)
        }
        JwtKeySource::Jwks { url, refresh } => {
            Keys::Jwks(Arc::new(Jwks::new(url.clone(), *refresh, algorithm)?))
        }
    };
    Ok(Provider {
        alg_name: alg_name(algorithm),
        issuer: cfg.issuer.clone(),
        // Every required claim is checked for presence here too: jsonwebtoken ignores some
        // (iat) even when asked to require them.
        custom_required: cfg.required_claims.clone(),
        validation,
        leeway: cfg.leeway.as_secs(),
        keys,
    })
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// The header and payload of a token, decoded but not verified (to choose the provider and
/// key; nothing in them is trusted before the signature is checked).
type Json = Map<String, Value>;

fn peek(token: &str) -> Result<(Json, Json), Reason> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    let json = |seg: &str| -> Result<Json, Reason> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seg)
            .map_err(|_| Reason::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
    };
    Ok((json(h)?, json(p)?))
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, Reason> {
    use jsonwebtoken::errors::ErrorKind as K;
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            K::ExpiredSignature => Reason::Expired,
            K::ImmatureSignature => Reason::NotYetValid,
            K::InvalidIssuer => Reason::Issuer,
            K::InvalidAudience => Reason::Audience,
            K::MissingRequiredClaim(_) => Reason::MissingClaim,
            K::InvalidSignature => Reason::Signature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => Reason::Algorithm,
            _ => Reason::Malformed,
        })
}

/// Verified tokens a worker thread remembers before starting over.
const CACHE_ENTRIES: usize = 4096;

thread_local! {
    static VERIFIED: RefCell<FxHashMap<Box<str>, Arc<Verified>>> = RefCell::new(FxHashMap::default());
}

fn cache_get(token: &str, auth_id: u64, now: u64) -> Option<Arc<Verified>> {
    VERIFIED.with(|c| {
        let c = c.borrow();
        let v = c.get(token)?;
        (v.auth_id == auth_id && v.still_valid(now)).then(|| v.clone())
    })
}

fn cache_put(token: &str, v: Arc<Verified>) {
    VERIFIED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(token.into(), v);
    });
}

/// Shortest time between two fetches caused by unknown `kid`s: a stream of tokens with random
/// kids must not turn into a stream of requests to the identity provider.
const REFETCH_MIN_INTERVAL_MS: u64 = 2_000;
/// Largest JWKS document accepted (real ones are a few KB).
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// Longest a request waits for a JWKS fetch it triggered.
const REFETCH_WAIT: Duration = Duration::from_secs(3);

/// One provider's JWKS: keys by `kid`, replaced whole on each successful fetch.
pub struct Jwks {
    url: String,
    /// `url` as logs show it: `scheme://host[:port]/path` (no userinfo, no query).
    url_log: String,
    refresh: Duration,
    algorithm: Algorithm,
    client: reqwest::Client,
    keys: ArcSwap<FxHashMap<String, DecodingKey>>,
    fetching: AtomicBool,
    last_fetch_ms: AtomicU64,
    fetched: tokio::sync::watch::Sender<u64>,
    started: std::sync::Once,
}

impl Jwks {
    fn new(url: String, refresh: Duration, algorithm: Algorithm) -> Result<Self, JwtError> {
        crate::base::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kairos-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(JwtError::JwksClient)?;
        Ok(Jwks {
            url_log: crate::base::redact::url_for_log(&url),
            url,
            refresh,
            algorithm,
            client,
            keys: ArcSwap::from_pointee(FxHashMap::default()),
            fetching: AtomicBool::new(false),
            last_fetch_ms: AtomicU64::new(0),
            fetched: tokio::sync::watch::channel(0).0,
            started: std::sync::Once::new(),
        })
    }

    /// The key for `kid`; a token without a kid may use the JWKS's only key.
    fn key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.load();
        match kid {
            Some(k) => keys.get(k).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    fn start(self: &Arc<Self>, alive: Weak<()>) {
        self.started.call_once(|| {
            let Some(rt) = crate::base::background::background() else {
                return;
            };
            let me = Arc::downgrade(self);
            rt.spawn(async move {
                loop {
                    if alive.strong_count() == 0 {
                        return;
                    }
                    let Some(jwks) = me.upgrade() else { return };
                    jwks.fetch_now().await;
                    let refresh = jwks.refresh;
                    drop(jwks);
                    tokio::time::sleep(refresh).await;
                }
            });
        });
    }

    /// Fetches unless a fetch is running (then waits for it) or the last one was too recent.
    async fn refetch_and_wait(self: &Arc<Self>) {
        let mut rx = self.fetched.subscribe();
        let now = crate::base::clock::now_ms();
        let recent = now.saturating_sub(self.last_fetch_ms.load(Ordering::Relaxed))
            < REFETCH_MIN_INTERVAL_MS;
        if !self.fetching.load(Ordering::Acquire) {
            if recent {
                return;
            }
            let Some(rt) = crate::base::background::background() else {
                return;
            };
            let me = self.clone();
            rt.spawn(async move { me.fetch_now().await });
        }
        let _ = tokio::time::timeout(REFETCH_WAIT, rx.changed()).await;
    }

    async fn fetch_now(&self) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_fetch_ms
            .store(crate::base::clock::now_ms(), Ordering::Relaxed);
        let span = tracing::info_span!(
            target: crate::observability::trace::ops::TARGET,
            "jwks.fetch",
            url = self.url_log.as_str(),
            outcome = tracing::field::Empty,
            keys = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        crate::observability::trace::ops::record_ids(&span);
        let fetched = self.fetch().instrument(span.clone()).await;
        let _in = span.enter();
        match &fetched {
            Ok(keys) => {
                span.record("outcome", "ok");
                span.record("keys", keys.len());
            }
            Err(_) => {
                span.record("outcome", "failed");
                span.record("otel.status_code", "ERROR");
            }
        }
        match fetched {
            Ok(keys) => {
                tracing::debug!(url = self.url_log, keys = keys.len(), "JWKS fetched");
                self.keys.store(Arc::new(keys));
            }
            // The keys we have stay in use: an identity provider's hiccup must not log
            // everyone out.
            Err(e) => tracing::warn!(
                url = self.url_log,
                error = e.to_string().as_str(),
                "JWKS fetch failed"
            ),
        }
        drop(_in);
        self.fetching.store(false, Ordering::Release);
        self.fetched.send_modify(|n| *n += 1);
    }

    async fn fetch(&self) -> Result<FxHashMap<String, DecodingKey>, JwksFetchError> {
        let mut res = self
            .client
            .get(&self.url)
            .send()
            .await
            // Without the URL: it may carry credentials (the log shows `url_for_log`).
            .map_err(|e| JwksFetchError::Request(e.without_url()))?;
        if !res.status().is_success() {
            return Err(JwksFetchError::Status(res.status()));
        }
        if res.content_length().is_some_and(|n| n > MAX_JWKS_BYTES) {
            return Err(JwksFetchError::TooLarge);
        }
        // Read piece by piece: a body without a Content-Length is refused as soon as it passes
        // the limit, never buffered whole.
        let mut body = Vec::with_capacity(res.content_length().unwrap_or(0) as usize);
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| JwksFetchError::Body(e.without_url()))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_JWKS_BYTES {
                return Err(JwksFetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&body).map_err(JwksFetchError::NotJwks)?;
        let want = alg_name(self.algorithm);
        let mut keys = FxHashMap::default();
        for jwk in &set.keys {
            // A key meant for another algorithm or for encryption is not ours to use.
            if let Some(a) = jwk.common.key_algorithm {
                if format!("{a:?}") != want {
                    continue;
                }
            }
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    keys.insert(jwk.common.key_id.clone().unwrap_or_default(), k);
                }
                Err(e) => tracing::warn!(url = self.url_log, error = %e, "JWKS key skipped"),
            }
        }
        Ok(keys)
    }
}

/// The bearer token of an Authorization header value.
pub fn bearer(value: &str) -> Result<&str, Reason> {
    let (scheme, token) = value.trim().split_once(' ').ok_or(Reason::WrongScheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reason::WrongScheme);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Reason::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        assert_eq!(
            JwtError::HmacNeedsSecret.to_string(),
            "an HMAC algorithm needs a secret"
        );
        assert_eq!(
            JwksFetchError::Status(reqwest::StatusCode::NOT_FOUND).to_string(),
            "status 404 Not Found"
        );
        assert_eq!(
            JwksFetchError::TooLarge.to_string(),
            "JWKS larger than 1048576 bytes"
        );
    }

    /// A JWKS endpoint answering with an endless chunked body: the fetch stops at the limit
    /// instead of buffering the body (it took the client's 5 s timeout, and all it sent).
    #[tokio::test]
    async fn a_chunked_jwks_over_the_limit_is_refused_without_reading_it_all() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let sent2 = sent.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head).await;
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            out.extend_from_slice(b"1\r\n[\r\n");
            let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
            loop {
                if s.write_all(&out).await.is_err() {
                    return;
                }
                sent2.fetch_add(out.len() as u64, Ordering::Relaxed);
                out = chunk.clone().into_bytes();
            }
        });
        crate::base::tls::install_crypto_provider();
        let jwks = Jwks::new(url, Duration::from_secs(60), Algorithm::RS256).unwrap();
        let started = std::time::Instant::now();
        let res = jwks.fetch().await;
        assert!(
            matches!(res, Err(JwksFetchError::TooLarge)),
            "{:?}",
            res.err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let sent = sent.load(Ordering::Relaxed);
        assert!(sent < 64 << 20, "the server sent {sent} bytes");
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Ok("abc"));
        assert_eq!(bearer("bearer  abc "), Ok("abc"));
        assert_eq!(bearer("Basic abc"), Err(Reason::WrongScheme));
        assert_eq!(bearer("Bearer "), Err(Reason::WrongScheme));
        assert_eq!(bearer("abc"), Err(Reason::WrongScheme));
    }

    #[test]
    fn peek_refuses_garbage() {
        assert_eq!(peek("a.b").unwrap_err(), Reason::Malformed);
        assert_eq!(peek("a.b.c.d").unwrap_err(), Reason::Malformed);
        assert_eq!(peek("!!.??.x").unwrap_err(), Reason::Malformed);
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#);
        let (h, p) = peek(&format!("{h}.{p}.")).unwrap();
        assert_eq!(h["alg"], "none");
        assert_eq!(p["sub"], "x");
    }
}
