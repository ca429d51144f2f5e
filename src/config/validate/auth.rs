//! Authentication: the `jwt_validation` section (its providers, their algorithms and key
//! sources, forwarded claims), the `api_keys` section, and the schemes a route's `auth` names.

use super::rate_limiting::rate;
use super::{nonzero_duration, V};
use crate::config::error::{did_you_mean, ConfigError};
use crate::config::model::{
    ApiKeyEntry, ApiKeysConfig, AuthMode, JwtConfig, JwtKeySource, JwtProviderConfig, Secret,
};
use crate::config::raw::{RawApiKeys, RawAuth, RawJwt, RawJwtProvider};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::time::Duration;

const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

pub(super) fn auth_mode(v: &mut V, p: &str, a: &RawAuth) -> AuthMode {
    let names: Vec<&str> = match a {
        RawAuth::One(s) => vec![s.as_str()],
        RawAuth::Any(list) => list.iter().map(String::as_str).collect(),
    };
    let mut mode = AuthMode::default();
    if names.is_empty() {
        v.err_hint(
            p.to_string(),
            "an empty list accepts no credential",
            "write \"none\" for an open route, or list \"jwt\" and/or \"api_key\"",
        );
    }
    for (i, name) in names.iter().enumerate() {
        let path = match a {
            RawAuth::One(_) => p.to_string(),
            RawAuth::Any(_) => format!("{p}[{i}]"),
        };
        match *name {
            "none" if names.len() == 1 => {}
            "jwt" => mode.jwt = true,
            "api_key" => mode.api_key = true,
            other => {
                let hint = did_you_mean(other, ["none", "jwt", "api_key"]).unwrap_or_else(|| {
                    "use \"none\", \"jwt\", \"api_key\" or [\"jwt\", \"api_key\"]".into()
                });
                v.err_hint(path, format!("unknown auth scheme `{other}`"), hint);
            }
        }
    }
    mode
}

/// The top level of `jwt_validation` as a provider of its own.
fn own_provider(j: &RawJwt) -> RawJwtProvider {
    RawJwtProvider {
        secret: j.secret.clone(),
        algorithm: j.algorithm.clone(),
        public_key: j.public_key.clone(),
        jwks_url: j.jwks_url.clone(),
        jwks_refresh: j.jwks_refresh.clone(),
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        required_claims: j.required_claims.clone(),
        require_exp: j.require_exp,
        leeway: j.leeway.clone(),
    }
}

fn jwt_provider(v: &mut V, p: &str, f: &RawJwtProvider) -> Option<JwtProviderConfig> {
    let sources = [
        f.secret.is_some(),
        f.public_key.is_some(),
        f.jwks_url.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        v.err_hint(
            p.to_string(),
            if sources == 0 {
                "no key: give `secret`, `public_key` or `jwks_url`"
            } else {
                "give only one of `secret`, `public_key` and `jwks_url`"
            },
            "one provider has one key source; add more under `providers`",
        );
        return None;
    }
    let default_alg = if f.secret.is_some() { "HS256" } else { "RS256" };
    let alg_name = f.algorithm.as_deref().unwrap_or(default_alg);
    let algorithm = match alg_name.parse::<Algorithm>() {
        Ok(a) if JWT_ALGORITHMS.contains(&alg_name) => a,
        _ => {
            let hint = did_you_mean(alg_name, JWT_ALGORITHMS)
                .unwrap_or_else(|| format!("use one of {}", JWT_ALGORITHMS.join(", ")));
            v.err_hint(
                format!("{p}.algorithm"),
                format!("unknown or refused algorithm `{alg_name}`"),
                hint,
            );
            return None;
        }
    };
    let key = if let Some(secret) = &f.secret {
        secret_key(v, p, secret, algorithm, alg_name)?
    } else if let Some(pem) = &f.public_key {
        public_key(v, p, pem, algorithm, alg_name)?
    } else {
        jwks_key(v, p, f, algorithm)
    };
    let require_exp = f.require_exp.unwrap_or(true);
    let mut required_claims = f.required_claims.clone().unwrap_or_default();
    if require_exp && !required_claims.iter().any(|c| c == "exp") {
        required_claims.push("exp".into());
    }
    Some(JwtProviderConfig {
        algorithm,
        key,
        issuer: f.issuer.clone(),
        audience: f.audience.clone(),
        required_claims,
        require_exp,
        leeway: v.duration(&format!("{p}.leeway"), &f.leeway, Duration::from_secs(30)),
    })
}

/// An HMAC secret: only for the HS algorithms, and at least as long as the hash output.
fn secret_key(
    v: &mut V,
    p: &str,
    secret: &str,
    algorithm: Algorithm,
    alg_name: &str,
) -> Option<JwtKeySource> {
    if algorithm.family() != AlgorithmFamily::Hmac {
        v.err_hint(
            format!("{p}.secret"),
            format!("a secret is for HS256/HS384/HS512, not {alg_name}"),
            "use `public_key` or `jwks_url` for asymmetric algorithms",
        );
        return None;
    }
    // RFC 7518 3.2: the key must be at least as long as the hash output.
    let min = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if secret.len() < min {
        v.err_hint(
            format!("{p}.secret"),
            format!(
                "the secret is {} bytes; {alg_name} needs at least {min}",
                secret.len()
            ),
            "generate one with `openssl rand -base64 48` and pass it as \"${JWT_SECRET}\"",
        );
    }
    Some(JwtKeySource::Secret(Secret(secret.as_bytes().to_vec())))
}

/// A PEM public key, which must parse as a key of the algorithm's family.
fn public_key(
    v: &mut V,
    p: &str,
    pem: &str,
    algorithm: Algorithm,
    alg_name: &str,
) -> Option<JwtKeySource> {
    let parsed = match algorithm.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()).map(|_| ()),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()).map(|_| ()),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()).map(|_| ()),
        AlgorithmFamily::Hmac => {
            v.err_hint(
                format!("{p}.public_key"),
                format!("{alg_name} uses a `secret`, not a public key"),
                "set `algorithm` to the key's algorithm, e.g. RS256 or ES256",
            );
            return None;
        }
    };
    if let Err(e) = parsed {
        v.err_hint(
            format!("{p}.public_key"),
            format!("not a PEM public key for {alg_name}: {e}"),
            "paste the PEM text (-----BEGIN PUBLIC KEY----- ...) or use \"${JWT_PUBLIC_KEY}\"",
        );
    }
    Some(JwtKeySource::PublicKey(pem.to_string()))
}

/// A JWKS URL (http(s); plain http is warned about) and how often it is fetched again.
fn jwks_key(v: &mut V, p: &str, f: &RawJwtProvider, algorithm: Algorithm) -> JwtKeySource {
    let url = f.jwks_url.clone().unwrap_or_default();
    if !(url.starts_with("https://") || url.starts_with("http://"))
        || reqwest::Url::parse(&url).is_err()
    {
        v.err(
            format!("{p}.jwks_url"),
            format!("`{url}` is not an http(s) URL"),
        );
    }
    if algorithm.family() == AlgorithmFamily::Hmac {
        v.err_hint(
            format!("{p}.algorithm"),
            "a JWKS holds public keys; HMAC algorithms use a `secret`",
            "set `algorithm` to the keys' algorithm, e.g. RS256",
        );
    }
    let refresh = nonzero_duration(
        v,
        format!("{p}.jwks_refresh"),
        &f.jwks_refresh,
        Duration::from_secs(300),
    );
    if url.starts_with("http://") {
        v.warnings.push(ConfigError::new(
            format!("{p}.jwks_url"),
            "the JWKS is fetched over plain http: anyone on the path can hand the gateway keys; use https",
        ));
    }
    JwtKeySource::Jwks { url, refresh }
}

pub(super) fn jwt_config(v: &mut V, j: &RawJwt) -> JwtConfig {
    let mut providers = Vec::new();
    let has_own_key = j.secret.is_some() || j.public_key.is_some() || j.jwks_url.is_some();
    if !has_own_key && j.providers.as_ref().is_some_and(|p| !p.is_empty()) {
        // Without a key of its own the top-level object is no provider: settings there would
        // protect nothing. Never ignore them silently.
        for (key, set) in [
            ("algorithm", j.algorithm.is_some()),
            ("issuer", j.issuer.is_some()),
            ("audience", j.audience.is_some()),
            ("required_claims", j.required_claims.is_some()),
            ("require_exp", j.require_exp.is_some()),
            ("leeway", j.leeway.is_some()),
            ("jwks_refresh", j.jwks_refresh.is_some()),
        ] {
            if set {
                v.err_hint(
                    format!("jwt_validation.{key}"),
                    "applies to the top-level provider, which has no key",
                    "set it on each entry of `providers`, or give the top level a key",
                );
            }
        }
    }
    if has_own_key || j.providers.as_ref().is_none_or(|p| p.is_empty()) {
        providers.extend(jwt_provider(v, "jwt_validation", &own_provider(j)));
    }
    for (i, pr) in j.providers.iter().flatten().enumerate() {
        providers.extend(jwt_provider(
            v,
            &format!("jwt_validation.providers[{i}]"),
            pr,
        ));
    }
    let mut forward_claims = Vec::new();
    for (claim, header) in j.forward_claims.iter().flatten() {
        match http::HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) => forward_claims.push((claim.clone(), h)),
            Err(_) => v.err(
                format!("jwt_validation.forward_claims.{claim}"),
                format!("`{header}` is not a valid header name"),
            ),
        }
    }
    JwtConfig {
        providers,
        forward_claims,
        strip_authorization: j.strip_authorization.unwrap_or(false),
    }
}

pub(super) fn api_keys_config(v: &mut V, k: &RawApiKeys) -> ApiKeysConfig {
    let header_name = match http::HeaderName::from_bytes(
        k.header_name.as_deref().unwrap_or("X-API-Key").as_bytes(),
    ) {
        Ok(h) => h,
        Err(_) => {
            v.err("api_keys.header_name", "not a valid header name");
            http::HeaderName::from_static("x-api-key")
        }
    };
    if k.keys.is_empty() {
        v.err_hint(
            "api_keys.keys",
            "no keys",
            "add one: `kairos-rs keys generate --name NAME` prints the entry",
        );
    }
    let mut keys: Vec<ApiKeyEntry> = Vec::new();
    for (name, key) in &k.keys {
        let p = format!("api_keys.keys.{name}");
        let Some(hash) = key_hash(v, &p, key.key_hash.as_deref(), key.key.as_deref()) else {
            continue;
        };
        if let Some(other) = keys.iter().find(|e| e.hash == hash) {
            v.err(p.clone(), format!("same key as `{}`", other.name));
        }
        let rate_limit = key
            .rate_limit
            .as_ref()
            .and_then(|r| rate(v, &format!("{p}.rate_limit"), r));
        keys.push(ApiKeyEntry {
            name: name.clone(),
            hash,
            permissions: key.permissions.clone().unwrap_or_default(),
            rate_limit,
        });
    }
    if let Some(q) = &k.query_param {
        if q.is_empty() || q.contains(['&', '=', '#', ' ']) {
            v.err(
                "api_keys.query_param",
                format!("`{q}` is not a query parameter name"),
            );
        }
    }
    ApiKeysConfig {
        header_name,
        query_param: k.query_param.clone(),
        keys,
    }
}

/// The SHA-256 of one API key, from exactly one of `key_hash` and `key`; `None` (with the
/// error recorded) when the entry has no usable key.
fn key_hash(v: &mut V, p: &str, key_hash: Option<&str>, key: Option<&str>) -> Option<[u8; 32]> {
    match (key_hash, key) {
        (Some(h), None) => match crate::base::hash::parse_hash(h) {
            Ok(hash) => Some(hash),
            Err(e) => {
                v.err_hint(
                    format!("{p}.key_hash"),
                    e.to_string(),
                    "write \"sha256:\" and 64 hex digits; `kairos-rs keys hash` prints it",
                );
                None
            }
        },
        (None, Some(plain)) => {
            if plain.len() < 16 {
                v.err(
                    format!("{p}.key"),
                    "the key is shorter than 16 characters; use `kairos-rs keys generate`",
                );
            }
            Some(crate::base::hash::hash(plain))
        }
        _ => {
            v.err_hint(
                p.to_string(),
                "give exactly one of `key_hash` and `key`",
                "prefer key_hash; `key` must be \"${ENV_VAR}\"",
            );
            None
        }
    }
}
