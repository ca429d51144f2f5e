//! JWT verification cost: `jsonwebtoken::decode` of a small token (sub, exp, iss, aud) with the
//! ring-backed `CryptoProvider` (`kairos_rs::edge::auth::crypto`), for HS256, RS256 and PS256 (RSA
//! 2048), ES256 (P-256) and EdDSA (Ed25519), plus RS256 with the key given as JWK n/e (the
//! JWKS path). Each iteration is what the gateway does per request: split and base64-decode
//! the token, build the verifier from the `DecodingKey`, check the signature, then parse and
//! validate the claims (exp, iss, aud).
//!
//! Run: `cargo bench --bench jwt_verify` (add `-- --quick` for a short run, or a filter such
//! as `-- RS256`).
//!
//! Keys are made once at start: the HMAC secret and the EC and Ed25519 keys with ring, the RSA
//! key with the `openssl` CLI (which must be on PATH), so that no private key is committed.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{
    decode, encode, get_current_timestamp, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Duration;

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "kairos-gateway";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iss: String,
    aud: String,
}

/// `openssl` with no stdin; its stdout.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI must be on PATH to make the RSA key");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Case {
    name: &'static str,
    alg: Algorithm,
    signing: EncodingKey,
    verifying: DecodingKey,
}

fn cases() -> Vec<Case> {
    let rng = SystemRandom::new();

    let mut secret = [0u8; 32];
    rng.fill(&mut secret).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rsa_path = dir.path().join("rsa.pem");
    let rsa_path = rsa_path.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa_path,
    ]);
    let rsa_private = std::fs::read(rsa_path).unwrap();
    let rsa_public = openssl(&["pkey", "-in", rsa_path, "-pubout"]);
    let rsa_signing = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let AlgorithmParameters::RSA(rsa_jwk) = Jwk::from_encoding_key(&rsa_signing, Algorithm::RS256)
        .unwrap()
        .algorithm
    else {
        unreachable!("an RSA key gives an RSA JWK")
    };

    let p256 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let p256_point =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p256.as_ref(), &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();

    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_public = Ed25519KeyPair::from_pkcs8(ed.as_ref())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();

    vec![
        Case {
            name: "HS256",
            alg: Algorithm::HS256,
            signing: EncodingKey::from_secret(&secret).unwrap(),
            verifying: DecodingKey::from_secret(&secret).unwrap(),
        },
        Case {
            name: "RS256",
            alg: Algorithm::RS256,
            signing: rsa_signing.clone(),
            verifying: DecodingKey::from_rsa_pem(&rsa_public).unwrap(),
        },
        Case {
            name: "RS256_jwk",
            alg: Algorithm::RS256,
            signing: rsa_signing.clone(),
            verifying: DecodingKey::from_rsa_components(&rsa_jwk.n, &rsa_jwk.e).unwrap(),
        },
        Case {
            name: "PS256",
            alg: Algorithm::PS256,
            signing: rsa_signing,
            verifying: DecodingKey::from_rsa_pem(&rsa_public).unwrap(),
        },
        Case {
            name: "ES256",
            alg: Algorithm::ES256,
            signing: EncodingKey::from_ec_der(p256.as_ref()),
            verifying: DecodingKey::from_ec_der(&p256_point),
        },
        Case {
            name: "EdDSA",
            alg: Algorithm::EdDSA,
            signing: EncodingKey::from_ed_der(ed.as_ref()),
            verifying: DecodingKey::from_ed_der(&ed_public),
        },
    ]
}

fn jwt_verify(c: &mut Criterion) {
    kairos_rs::edge::auth::crypto::install();
    let claims = Claims {
        sub: "user-1234".to_owned(),
        exp: get_current_timestamp() + 24 * 3600,
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
    };

    let mut group = c.benchmark_group("jwt_verify");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for case in cases() {
        let token = encode(&Header::new(case.alg), &claims, &case.signing).unwrap();
        let mut validation = Validation::new(case.alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        // Check once, outside the timing, that the token verifies and the claims come back.
        let data = decode::<Claims>(&token, &case.verifying, &validation)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(data.claims, claims, "{}", case.name);

        group.bench_with_input(
            BenchmarkId::from_parameter(case.name),
            &token,
            |b, token| {
                b.iter(|| {
                    decode::<Claims>(black_box(token.as_str()), &case.verifying, &validation)
                        .unwrap()
                        .claims
                        .exp
                })
            },
        );
    }
    group.finish();
}

/// API-key lookup: SHA-256 of the presented key, a hash-map probe and a constant-time compare,
/// with 10 and 10,000 configured keys; a miss costs the same as a hit.
fn api_key_lookup(c: &mut Criterion) {
    use kairos_rs::base::hash::hash;
    use kairos_rs::config::model::{ApiKeyEntry, ApiKeysConfig};
    use kairos_rs::edge::auth::api_key::KeyStore;
    let mut group = c.benchmark_group("api_key_lookup");
    for n in [10usize, 10_000] {
        let keys: Vec<String> = (0..n)
            .map(|i| format!("kairos_bench_key_{i:08}_padding_to_43"))
            .collect();
        let store = KeyStore::new(ApiKeysConfig {
            header_name: http::HeaderName::from_static("x-api-key"),
            query_param: None,
            keys: keys
                .iter()
                .enumerate()
                .map(|(i, k)| ApiKeyEntry {
                    name: format!("k{i}"),
                    hash: hash(k),
                    permissions: vec!["orders:read".into()],
                    rate_limit: None,
                })
                .collect(),
        });
        let hit = keys[n / 2].clone();
        group.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, k| {
            b.iter(|| std::hint::black_box(store.lookup(std::hint::black_box(k)).is_some()))
        });
        let miss = "kairos_not_a_configured_key_000000000000000".to_string();
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, k| {
            b.iter(|| std::hint::black_box(store.lookup(std::hint::black_box(k)).is_some()))
        });
    }
    group.finish();
}

criterion_group!(benches, jwt_verify, api_key_lookup);
criterion_main!(benches);
