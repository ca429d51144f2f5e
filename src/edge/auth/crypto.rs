//! A `jsonwebtoken` [`CryptoProvider`] backed by *ring*.
//!
//! jsonwebtoken 12 does the JWT parsing and claim validation itself and leaves the signatures
//! to a pluggable provider; we build it with neither of its bundled backends and install this
//! one ([`install`]) at start instead. Why *ring*:
//! - it is already in the binary for rustls, so JWT support adds no new crypto code;
//! - the bundled `aws_lc_rs` backend would add the aws-lc C/assembly build (cmake, a C
//!   toolchain, minutes of compile time) for the same primitives;
//! - the bundled `rust_crypto` backend verifies RSA with the pure-Rust `rsa` crate, much
//!   slower than ring's assembly bignum code, and RS256 is what most identity providers sign
//!   with (`benches/jwt_verify.rs` measures the whole `decode` per algorithm).
//!
//! Every [`Algorithm`] is covered: HS256/384/512 (HMAC, verified in constant time with
//! `ring::hmac::verify`), RS256/384/512 (PKCS#1 v1.5) and PS256/384/512 (PSS) with 2048 to
//! 8192-bit keys, ES256/ES384 (P-256/P-384, fixed-width `r || s` signatures as JWS requires)
//! and EdDSA (Ed25519).
//!
//! Keys the provider accepts:
//! - RSA verification: a PKCS#1 `RSAPublicKey` or a `SubjectPublicKeyInfo` DER (what the PEM
//!   and DER constructors of `DecodingKey` hold), or the `n`/`e` components of a JWK (leading
//!   zero bytes, which some JWKS endpoints send against RFC 7518, are tolerated).
//! - RSA signing: PKCS#1 `RSAPrivateKey` DER or PKCS#8 DER (`EncodingKey::from_rsa_pem`
//!   holds PKCS#1, `from_rsa_der` may hold either).
//! - EC verification: the uncompressed SEC1 point (PEM, DER or JWK x/y) or a
//!   `SubjectPublicKeyInfo` DER; the curve must match the algorithm. EC signing: PKCS#8.
//! - Ed25519 verification: the 32-byte public key or a `SubjectPublicKeyInfo` DER; signing:
//!   PKCS#8 v1 (openssl) or v2 (ring), v2 being checked for consistency.
//!
//! A key of the wrong family for the algorithm, or one that cannot be parsed, is an `Err`
//! from the factory (`InvalidKeyFormat`, `InvalidRsaKey`, `InvalidEcdsaKey`,
//! `InvalidEddsaKey`), never a panic. Public keys are checked structurally when the verifier
//! is built; ring's full validation (modulus and exponent ranges, point on the curve) runs in
//! `verify`, where a key that fails it simply fails verification.
//!
//! **Algorithm pinning is the caller's job, not the provider's.** The provider verifies with
//! the algorithm jsonwebtoken hands it, which comes from the token's header; it only refuses a
//! key of another family (so an HS256 token can never be checked with an RSA public key used
//! as an HMAC secret). Which algorithm a configured key may be used with must be fixed by the
//! caller through `Validation::algorithms` (one algorithm per key, from configuration or the
//! JWK's `alg`), never taken from the token.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _};
use ring::{digest, hmac};

/// The ring-backed provider. Install it with [`install`] (or
/// `PROVIDER.install_default()`) before the first `jsonwebtoken::encode`/`decode`.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key,
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

/// Makes [`PROVIDER`] the process-wide jsonwebtoken provider. Idempotent: calling it again is
/// a no-op. If a *different* provider was installed first (another crate enabling a bundled
/// jsonwebtoken backend and using it before this call), that one stays, since jsonwebtoken
/// allows a single installation per process, and a warning is logged.
pub fn install() {
    if let Err(current) = PROVIDER.install_default() {
        if !std::ptr::eq(current, &PROVIDER) {
            tracing::warn!(
                "another jsonwebtoken CryptoProvider was installed before the ring provider; \
                 it stays in use"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signing

enum SigningKey {
    Hmac(hmac::Key),
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
}

struct RingSigner {
    alg: Algorithm,
    key: SigningKey,
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        match &self.key {
            SigningKey::Hmac(key) => Ok(hmac::sign(key, msg).as_ref().to_vec()),
            SigningKey::Rsa(key, padding) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(*padding, &SystemRandom::new(), msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
            SigningKey::Ecdsa(key) => key
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            SigningKey::Ed25519(key) => Ok(key.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let bytes = key.as_bytes();
    let key = match alg {
        Algorithm::HS256 => SigningKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes)),
        Algorithm::HS384 => SigningKey::Hmac(hmac::Key::new(hmac::HMAC_SHA384, bytes)),
        Algorithm::HS512 => SigningKey::Hmac(hmac::Key::new(hmac::HMAC_SHA512, bytes)),
        Algorithm::RS256 => SigningKey::Rsa(rsa_key_pair(bytes)?, &sig::RSA_PKCS1_SHA256),
        Algorithm::RS384 => SigningKey::Rsa(rsa_key_pair(bytes)?, &sig::RSA_PKCS1_SHA384),
        Algorithm::RS512 => SigningKey::Rsa(rsa_key_pair(bytes)?, &sig::RSA_PKCS1_SHA512),
        Algorithm::PS256 => SigningKey::Rsa(rsa_key_pair(bytes)?, &sig::RSA_PSS_SHA256),
        Algorithm::PS384 => SigningKey::Rsa(rsa_key_pair(bytes)?, &sig::RSA_PSS_SHA384),
        Algorithm::PS512 => SigningKey::Rsa(rsa_key_pair(bytes)?, &sig::RSA_PSS_SHA512),
        Algorithm::ES256 => SigningKey::Ecdsa(ecdsa_key_pair(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            bytes,
        )?),
        Algorithm::ES384 => SigningKey::Ecdsa(ecdsa_key_pair(
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            bytes,
        )?),
        Algorithm::EdDSA => SigningKey::Ed25519(ed25519_key_pair(bytes)?),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingSigner { alg, key }))
}

/// An RSA private key as PKCS#1 `RSAPrivateKey` DER (what `EncodingKey::from_rsa_pem` holds,
/// for both PEM flavours) or PKCS#8 DER (possible through `EncodingKey::from_rsa_der`).
fn rsa_key_pair(der: &[u8]) -> Result<sig::RsaKeyPair> {
    sig::RsaKeyPair::from_der(der).or_else(|pkcs1_err| {
        sig::RsaKeyPair::from_pkcs8(der).map_err(|pkcs8_err| {
            Error::from(ErrorKind::InvalidRsaKey(format!(
                "not a usable PKCS#1 ({pkcs1_err}) or PKCS#8 ({pkcs8_err}) RSA private key"
            )))
        })
    })
}

fn ecdsa_key_pair(
    alg: &'static sig::EcdsaSigningAlgorithm,
    pkcs8: &[u8],
) -> Result<sig::EcdsaKeyPair> {
    sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &SystemRandom::new())
        .map_err(|_| ErrorKind::InvalidEcdsaKey.into())
}

/// PKCS#8 v2 (ring's `generate_pkcs8`, checked against the embedded public key) or v1
/// (`openssl genpkey -algorithm ED25519`, which carries no public key to check).
fn ed25519_key_pair(pkcs8: &[u8]) -> Result<sig::Ed25519KeyPair> {
    sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|_| ErrorKind::InvalidEddsaKey.into())
}

// ---------------------------------------------------------------------------------------------
// Verification

enum VerifyingKey {
    Hmac(hmac::Key),
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        params: &'static sig::RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An EC point or Ed25519 key in the raw form ring expects.
    Raw {
        alg: &'static dyn sig::VerificationAlgorithm,
        key: Vec<u8>,
    },
}

struct RingVerifier {
    alg: Algorithm,
    key: VerifyingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let verified = match &self.key {
            // Constant time in the comparison of the tags.
            VerifyingKey::Hmac(key) => hmac::verify(key, msg, signature),
            VerifyingKey::Rsa { params, n, e } => {
                sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
            }
            VerifyingKey::Raw { alg, key } => {
                sig::UnparsedPublicKey::new(*alg, key).verify(msg, signature)
            }
        };
        // Deliberately opaque: no detail about why a signature failed.
        verified.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let key = match alg {
        Algorithm::HS256 => {
            VerifyingKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, key.try_get_as_bytes()?))
        }
        Algorithm::HS384 => {
            VerifyingKey::Hmac(hmac::Key::new(hmac::HMAC_SHA384, key.try_get_as_bytes()?))
        }
        Algorithm::HS512 => {
            VerifyingKey::Hmac(hmac::Key::new(hmac::HMAC_SHA512, key.try_get_as_bytes()?))
        }
        Algorithm::RS256 => rsa_verifying_key(&sig::RSA_PKCS1_2048_8192_SHA256, key)?,
        Algorithm::RS384 => rsa_verifying_key(&sig::RSA_PKCS1_2048_8192_SHA384, key)?,
        Algorithm::RS512 => rsa_verifying_key(&sig::RSA_PKCS1_2048_8192_SHA512, key)?,
        Algorithm::PS256 => rsa_verifying_key(&sig::RSA_PSS_2048_8192_SHA256, key)?,
        Algorithm::PS384 => rsa_verifying_key(&sig::RSA_PSS_2048_8192_SHA384, key)?,
        Algorithm::PS512 => rsa_verifying_key(&sig::RSA_PSS_2048_8192_SHA512, key)?,
        Algorithm::ES256 => VerifyingKey::Raw {
            alg: &sig::ECDSA_P256_SHA256_FIXED,
            key: ec_point(key.try_get_as_bytes()?, Curve::P256)?.to_vec(),
        },
        Algorithm::ES384 => VerifyingKey::Raw {
            alg: &sig::ECDSA_P384_SHA384_FIXED,
            key: ec_point(key.try_get_as_bytes()?, Curve::P384)?.to_vec(),
        },
        Algorithm::EdDSA => VerifyingKey::Raw {
            alg: &sig::ED25519,
            key: ed25519_public_key(key.try_get_as_bytes()?)?.to_vec(),
        },
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier { alg, key }))
}

fn rsa_verifying_key(
    params: &'static sig::RsaParameters,
    key: &DecodingKey,
) -> Result<VerifyingKey> {
    let (n, e) = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => rsa_public_key_der(der)?,
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            (strip_leading_zeros(n), strip_leading_zeros(e))
        }
    };
    check_rsa_public_components(n, e)?;
    Ok(VerifyingKey::Rsa {
        params,
        n: n.to_vec(),
        e: e.to_vec(),
    })
}

/// The structural checks ring would make in `verify`, done once up front so that a bad key
/// is reported as a bad key rather than as a failed signature: 2048 to 8192-bit odd modulus,
/// odd exponent from 3 to 2^33 - 1 (ring's limits for verification).
fn check_rsa_public_components(n: &[u8], e: &[u8]) -> Result<()> {
    let invalid = |what: &str| Err(ErrorKind::InvalidRsaKey(what.to_owned()).into());
    if !(256..=1024).contains(&n.len()) {
        return invalid("the modulus must be 2048 to 8192 bits");
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return invalid("the modulus must be odd");
    }
    if e.is_empty() || e.len() > 5 {
        return invalid("the public exponent is out of range");
    }
    let e_value = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if !(3..(1u64 << 33)).contains(&e_value) || e_value & 1 == 0 {
        return invalid("the public exponent must be odd and between 3 and 2^33 - 1");
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn point_len(self) -> usize {
        match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
        }
    }
}

/// The uncompressed SEC1 point of a `curve` public key, given either as the point itself (PEM,
/// JWK x/y) or wrapped in a `SubjectPublicKeyInfo`.
fn ec_point(bytes: &[u8], curve: Curve) -> Result<&[u8]> {
    let point = if bytes.first() == Some(&der::SEQUENCE) {
        let spki = der::SubjectPublicKeyInfo::parse(bytes).ok_or(ErrorKind::InvalidEcdsaKey)?;
        let named_curve = match curve {
            Curve::P256 => der::OID_P256,
            Curve::P384 => der::OID_P384,
        };
        if spki.algorithm != der::OID_EC_PUBLIC_KEY || spki.parameters != Some(named_curve) {
            return Err(ErrorKind::InvalidEcdsaKey.into());
        }
        spki.key
    } else {
        bytes
    };
    if point.len() != curve.point_len() || point[0] != 0x04 {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    Ok(point)
}

/// The 32-byte Ed25519 public key, given raw (PEM, JWK x) or wrapped in a
/// `SubjectPublicKeyInfo`.
fn ed25519_public_key(bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() == sig::ED25519_PUBLIC_KEY_LEN {
        return Ok(bytes);
    }
    match der::SubjectPublicKeyInfo::parse(bytes) {
        Some(spki)
            if spki.algorithm == der::OID_ED25519
                && spki.parameters.is_none()
                && spki.key.len() == sig::ED25519_PUBLIC_KEY_LEN =>
        {
            Ok(spki.key)
        }
        _ => Err(ErrorKind::InvalidEddsaKey.into()),
    }
}

/// (n, e) of an RSA public key given as PKCS#1 `RSAPublicKey` DER (what jsonwebtoken's PEM
/// loader extracts) or as a `SubjectPublicKeyInfo` DER around it.
fn rsa_public_key_der(der: &[u8]) -> Result<(&[u8], &[u8])> {
    let invalid = || ErrorKind::InvalidRsaKey("not a PKCS#1 or SPKI RSA public key".to_owned());
    let pkcs1 = if let Some(spki) = der::SubjectPublicKeyInfo::parse(der) {
        // rsaEncryption takes NULL parameters (RFC 3279); absent ones are tolerated.
        if spki.algorithm != der::OID_RSA_ENCRYPTION
            || spki.parameters.is_some_and(|p| p != der::NULL)
        {
            return Err(invalid().into());
        }
        spki.key
    } else {
        der
    };
    der::rsa_public_key(pkcs1).ok_or_else(|| invalid().into())
}

// ---------------------------------------------------------------------------------------------
// Key utilities for the JWK helpers

fn rsa_pub_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let key_pair = rsa_key_pair(der)?;
    let components = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key_pair.public());
    Ok((components.n, components.e))
}

fn rsa_pub_components_from_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let (n, e) = rsa_public_key_der(der)?;
    Ok((n.to_vec(), e.to_vec()))
}

fn ec_pub_components_from_private_key(
    pkcs8: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (signing_alg, curve, coord_len) = match alg {
        Algorithm::ES256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let key_pair = ecdsa_key_pair(signing_alg, pkcs8)?;
    let point = key_pair.public_key().as_ref();
    if point.len() != 1 + 2 * coord_len || point[0] != 0x04 {
        return Err(ErrorKind::InvalidEcdsaKey.into());
    }
    let (x, y) = point[1..].split_at(coord_len);
    Ok((curve, x.to_vec(), y.to_vec()))
}

fn ed_pub_components_from_private_key(pkcs8: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(ed25519_key_pair(pkcs8)?.public_key().as_ref().to_vec()),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}

/// Just enough strict DER to read public keys: `RSAPublicKey` (RFC 8017) and
/// `SubjectPublicKeyInfo` (RFC 5280). ring parses the same structures internally but does not
/// export its parser. Definite, minimal lengths only; no trailing data anywhere.
mod der {
    pub const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const OID: u8 = 0x06;

    /// The encoded NULL (tag and length), as `AlgorithmIdentifier.parameters` of rsaEncryption.
    pub const NULL: &[u8] = &[0x05, 0x00];
    /// 1.2.840.113549.1.1.1
    pub const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// 1.2.840.10045.2.1
    pub const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// The encoded OID (tag, length, value) of prime256v1, 1.2.840.10045.3.1.7.
    pub const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// The encoded OID (tag, length, value) of secp384r1, 1.3.132.0.34.
    pub const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    /// 1.3.101.112
    pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        /// The next TLV, whatever its tag: (tag, whole encoding, contents).
        fn any(&mut self) -> Option<(u8, &'a [u8], &'a [u8])> {
            let input = self.0;
            let (&tag, rest) = input.split_first()?;
            // Low tag numbers only (no multi-byte tags in these structures).
            if tag & 0x1f == 0x1f {
                return None;
            }
            let (&first, rest) = rest.split_first()?;
            let (len, rest) = if first < 0x80 {
                (usize::from(first), rest)
            } else {
                // Long form, at most 2 length bytes (keys here are far below 64 KiB).
                let count = usize::from(first & 0x7f);
                if count == 0 || count > 2 {
                    return None;
                }
                let (len_bytes, rest) = rest.split_at_checked(count)?;
                if len_bytes[0] == 0 {
                    return None;
                }
                let len = len_bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                if len < 0x80 {
                    return None;
                }
                (len, rest)
            };
            let (contents, rest) = rest.split_at_checked(len)?;
            let header_len = input.len() - rest.len() - len;
            self.0 = rest;
            Some((tag, &input[..header_len + len], contents))
        }

        fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
            match self.any()? {
                (t, _, contents) if t == tag => Some(contents),
                _ => None,
            }
        }

        /// A positive INTEGER's magnitude, big-endian without leading zeros.
        fn positive_integer(&mut self) -> Option<&'a [u8]> {
            let contents = self.expect(INTEGER)?;
            match contents {
                [] => None,
                [b, ..] if b & 0x80 != 0 => None,
                [0] => None,
                [0, b, ..] if b & 0x80 == 0 => None,
                [0, rest @ ..] => Some(rest),
                _ => Some(contents),
            }
        }

        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Reads exactly one `tag` TLV covering all of `input` and returns its contents.
    fn single(input: &[u8], tag: u8) -> Option<&[u8]> {
        let mut reader = Reader(input);
        let contents = reader.expect(tag)?;
        reader.is_empty().then_some(contents)
    }

    /// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`
    pub fn rsa_public_key(input: &[u8]) -> Option<(&[u8], &[u8])> {
        let mut seq = Reader(single(input, SEQUENCE)?);
        let n = seq.positive_integer()?;
        let e = seq.positive_integer()?;
        seq.is_empty().then_some((n, e))
    }

    pub struct SubjectPublicKeyInfo<'a> {
        /// The algorithm OID's contents.
        pub algorithm: &'a [u8],
        /// The whole encoding (tag and length included) of the parameters, if any.
        pub parameters: Option<&'a [u8]>,
        /// The contents of the `subjectPublicKey` BIT STRING.
        pub key: &'a [u8],
    }

    impl<'a> SubjectPublicKeyInfo<'a> {
        /// `SEQUENCE { SEQUENCE { algorithm OID, parameters ANY OPTIONAL },
        /// subjectPublicKey BIT STRING }`, the BIT STRING whole bytes only.
        pub fn parse(input: &'a [u8]) -> Option<Self> {
            let mut spki = Reader(single(input, SEQUENCE)?);
            let mut alg_id = Reader(spki.expect(SEQUENCE)?);
            let bits = spki.expect(BIT_STRING)?;
            if !spki.is_empty() {
                return None;
            }
            let algorithm = alg_id.expect(OID)?;
            let parameters = if alg_id.is_empty() {
                None
            } else {
                Some(alg_id.any()?.1)
            };
            if !alg_id.is_empty() {
                return None;
            }
            let (&unused_bits, key) = bits.split_first()?;
            (unused_bits == 0).then_some(SubjectPublicKeyInfo {
                algorithm,
                parameters,
                key,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
    use jsonwebtoken::{
        decode, encode, get_current_timestamp, AlgorithmFamily, Header, Validation,
    };
    use serde::{Deserialize, Serialize};
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.to_owned(),
            exp: get_current_timestamp() + 3600,
        }
    }

    /// Runs the openssl CLI (the test script installs it) with `input` on stdin; its stdout.
    fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the openssl CLI must be installed for these tests");
        // Inputs are a few KB at most: well under a pipe buffer, so no writer thread needed.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(input).expect("write to openssl");
        drop(stdin);
        let out = child.wait_with_output().expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// An RSA 2048 key from openssl in every form the tests load.
    struct RsaMaterial {
        pkcs8_pem: Vec<u8>,
        pkcs1_pem: Vec<u8>,
        pkcs8_der: Vec<u8>,
        spki_pem: Vec<u8>,
        pkcs1_public_pem: Vec<u8>,
        spki_der: Vec<u8>,
    }

    fn generate_rsa() -> RsaMaterial {
        let pkcs8_pem = openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            b"",
        );
        RsaMaterial {
            pkcs1_pem: openssl(&["pkey", "-traditional"], &pkcs8_pem),
            pkcs8_der: openssl(&["pkey", "-outform", "DER"], &pkcs8_pem),
            spki_pem: openssl(&["pkey", "-pubout"], &pkcs8_pem),
            pkcs1_public_pem: openssl(&["rsa", "-RSAPublicKey_out"], &pkcs8_pem),
            spki_der: openssl(&["pkey", "-pubout", "-outform", "DER"], &pkcs8_pem),
            pkcs8_pem,
        }
    }

    /// RSA keygen costs a few hundred ms: one key shared by all tests, and a second one.
    fn rsa() -> &'static RsaMaterial {
        static KEY: OnceLock<RsaMaterial> = OnceLock::new();
        KEY.get_or_init(generate_rsa)
    }

    fn rsa_other() -> &'static RsaMaterial {
        static KEY: OnceLock<RsaMaterial> = OnceLock::new();
        KEY.get_or_init(generate_rsa)
    }

    fn jwk(key: &EncodingKey, alg: Algorithm) -> Jwk {
        install();
        Jwk::from_encoding_key(key, alg).unwrap_or_else(|e| panic!("{alg:?} JWK: {e}"))
    }

    /// Keys for one algorithm: every way of loading the signing key, every way of loading the
    /// matching verifying key, and a signing key of the same kind that is not the pair.
    struct Case {
        alg: Algorithm,
        signing: Vec<(&'static str, EncodingKey)>,
        verifying: Vec<(&'static str, DecodingKey)>,
        stranger: EncodingKey,
    }

    fn hmac_case(alg: Algorithm) -> Case {
        let mut secret = [0u8; 64];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut secret).unwrap();
        Case {
            alg,
            signing: vec![("secret", EncodingKey::from_secret(&secret).unwrap())],
            verifying: vec![("secret", DecodingKey::from_secret(&secret).unwrap())],
            stranger: EncodingKey::from_secret(b"another secret of reasonable length!").unwrap(),
        }
    }

    fn rsa_case(alg: Algorithm) -> Case {
        let k = rsa();
        let from_pem = EncodingKey::from_rsa_pem(&k.pkcs8_pem).unwrap();
        let AlgorithmParameters::RSA(params) = jwk(&from_pem, alg).algorithm else {
            panic!("an RSA key gives an RSA JWK")
        };
        Case {
            alg,
            signing: vec![
                ("PKCS#8 PEM", from_pem),
                (
                    "PKCS#1 PEM",
                    EncodingKey::from_rsa_pem(&k.pkcs1_pem).unwrap(),
                ),
                ("PKCS#8 DER", EncodingKey::from_rsa_der(&k.pkcs8_der)),
            ],
            verifying: vec![
                ("SPKI PEM", DecodingKey::from_rsa_pem(&k.spki_pem).unwrap()),
                (
                    "PKCS#1 PEM",
                    DecodingKey::from_rsa_pem(&k.pkcs1_public_pem).unwrap(),
                ),
                ("SPKI DER", DecodingKey::from_rsa_der(&k.spki_der)),
                (
                    "JWK n/e",
                    DecodingKey::from_rsa_components(&params.n, &params.e).unwrap(),
                ),
            ],
            stranger: EncodingKey::from_rsa_pem(&rsa_other().pkcs8_pem).unwrap(),
        }
    }

    fn ec_case(alg: Algorithm) -> Case {
        let signing_alg = match alg {
            Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            _ => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let rng = SystemRandom::new();
        let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(signing_alg, &rng).unwrap();
        let pkcs8 = pkcs8.as_ref();
        let point = sig::EcdsaKeyPair::from_pkcs8(signing_alg, pkcs8, &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let private_pem = openssl(&["pkey", "-inform", "DER"], pkcs8);
        let public_pem = openssl(&["pkey", "-inform", "DER", "-pubout"], pkcs8);
        let spki_der = openssl(
            &["pkey", "-inform", "DER", "-pubout", "-outform", "DER"],
            pkcs8,
        );
        let from_der = EncodingKey::from_ec_der(pkcs8);
        let AlgorithmParameters::EllipticCurve(params) = jwk(&from_der, alg).algorithm else {
            panic!("an EC key gives an EC JWK")
        };
        let stranger = sig::EcdsaKeyPair::generate_pkcs8(signing_alg, &rng).unwrap();
        Case {
            alg,
            signing: vec![
                ("PKCS#8 DER (ring)", from_der),
                (
                    "PKCS#8 PEM (openssl)",
                    EncodingKey::from_ec_pem(&private_pem).unwrap(),
                ),
            ],
            verifying: vec![
                ("SPKI PEM", DecodingKey::from_ec_pem(&public_pem).unwrap()),
                ("raw point", DecodingKey::from_ec_der(&point)),
                ("SPKI DER", DecodingKey::from_ec_der(&spki_der)),
                (
                    "JWK x/y",
                    DecodingKey::from_ec_components(&params.x, &params.y).unwrap(),
                ),
            ],
            stranger: EncodingKey::from_ec_der(stranger.as_ref()),
        }
    }

    /// The SubjectPublicKeyInfo of a raw Ed25519 public key (RFC 8410).
    fn ed25519_spki(raw: &[u8]) -> Vec<u8> {
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(raw);
        spki
    }

    fn ed_case() -> Case {
        let rng = SystemRandom::new();
        // ring writes PKCS#8 v2 (with the public key), openssl v1 (without).
        let v2 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let v2 = v2.as_ref();
        let v2_public = sig::Ed25519KeyPair::from_pkcs8(v2)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let v2_spki = ed25519_spki(&v2_public);
        let v2_public_pem = openssl(&["pkey", "-pubin", "-inform", "DER"], &v2_spki);
        let v2_key = EncodingKey::from_ed_der(v2);
        let x_from_decoding_key =
            match Jwk::from_decoding_key(&DecodingKey::from_ed_der(&v2_public), None)
                .unwrap()
                .algorithm
            {
                AlgorithmParameters::OctetKeyPair(p) => p.x,
                _ => panic!("an Ed25519 key gives an OKP JWK"),
            };

        let v1_pem = openssl(&["genpkey", "-algorithm", "ED25519"], b"");
        let v1_public_pem = openssl(&["pkey", "-pubout"], &v1_pem);
        let v1_key = EncodingKey::from_ed_pem(&v1_pem).unwrap();
        assert_eq!(v1_key.as_bytes().len(), 48, "openssl writes PKCS#8 v1");
        // jsonwebtoken's JWK export only takes v1 keys (it goes by the 48-byte length).
        let AlgorithmParameters::OctetKeyPair(v1_params) = jwk(&v1_key, Algorithm::EdDSA).algorithm
        else {
            panic!("an Ed25519 key gives an OKP JWK")
        };

        Case {
            alg: Algorithm::EdDSA,
            signing: vec![
                ("PKCS#8 v2 DER (ring)", v2_key.clone()),
                ("PKCS#8 v1 PEM (openssl)", v1_key),
            ],
            // Each verifying key is tried with each signing key; only pairs that match are
            // expected to verify, see `check`.
            verifying: vec![
                ("raw (ring)", DecodingKey::from_ed_der(&v2_public)),
                ("SPKI DER (ring)", DecodingKey::from_ed_der(&v2_spki)),
                (
                    "SPKI PEM (ring)",
                    DecodingKey::from_ed_pem(&v2_public_pem).unwrap(),
                ),
                (
                    "JWK x (ring)",
                    DecodingKey::from_ed_components(&x_from_decoding_key).unwrap(),
                ),
                (
                    "SPKI PEM (openssl)",
                    DecodingKey::from_ed_pem(&v1_public_pem).unwrap(),
                ),
                (
                    "JWK x (openssl)",
                    DecodingKey::from_ed_components(&v1_params.x).unwrap(),
                ),
            ],
            stranger: EncodingKey::from_ed_der(
                sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref(),
            ),
        }
    }

    fn parts(token: &str) -> (&str, &str, &str) {
        let mut it = token.split('.');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(h), Some(p), Some(s), None) => (h, p, s),
            _ => panic!("not a JWS compact token: {token}"),
        }
    }

    /// Signs with every signing key and verifies with every verifying key (Ed25519: those of
    /// the same origin), then checks that a swapped payload, an altered signature and a
    /// signature by another key all fail with `InvalidSignature`.
    fn check(case: &Case) {
        install();
        let alg = case.alg;
        let validation = Validation::new(alg);
        let alice = claims("alice");
        let by_stranger = encode(&Header::new(alg), &alice, &case.stranger).unwrap();
        for (signing_name, signing_key) in &case.signing {
            let token = encode(&Header::new(alg), &alice, signing_key)
                .unwrap_or_else(|e| panic!("{alg:?} sign with {signing_name}: {e}"));
            let (header, _, signature) = parts(&token);

            let mallory = encode(&Header::new(alg), &claims("mallory"), signing_key).unwrap();
            let tampered_payload = format!("{header}.{}.{signature}", parts(&mallory).1);
            // The first character carries the 6 top bits of the first byte: always significant.
            let replacement = if signature.starts_with('A') { 'B' } else { 'A' };
            let tampered_signature = format!(
                "{header}.{}.{replacement}{}",
                parts(&token).1,
                &signature[1..]
            );
            let truncated = &token[..token.len() - 4];
            let unsigned = format!("{header}.{}.", parts(&token).1);

            for (verifying_name, verifying_key) in &case.verifying {
                if alg == Algorithm::EdDSA
                    && signing_name.contains("(ring)") != verifying_name.contains("(ring)")
                {
                    continue;
                }
                let ctx = format!("{alg:?} {signing_name} -> {verifying_name}");
                let data = decode::<Claims>(&token, verifying_key, &validation)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(data.claims, alice, "{ctx}");
                assert_eq!(data.header.alg, alg, "{ctx}");

                for (what, bad) in [
                    ("swapped payload", tampered_payload.as_str()),
                    ("altered signature", tampered_signature.as_str()),
                    ("signature by another key", by_stranger.as_str()),
                    ("empty signature", unsigned.as_str()),
                ] {
                    let err = decode::<Claims>(bad, verifying_key, &validation)
                        .expect_err(&format!("{ctx}: {what} must not verify"));
                    assert_eq!(err.kind(), &ErrorKind::InvalidSignature, "{ctx}: {what}");
                }
                // Truncation may break the base64 rather than the signature; either way an Err.
                assert!(
                    decode::<Claims>(truncated, verifying_key, &validation).is_err(),
                    "{ctx}: truncated signature"
                );
            }
        }
    }

    #[test]
    fn hmac_sign_and_verify() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            check(&hmac_case(alg));
        }
    }

    #[test]
    fn rsa_pkcs1_sign_and_verify() {
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            check(&rsa_case(alg));
        }
    }

    #[test]
    fn rsa_pss_sign_and_verify() {
        for alg in [Algorithm::PS256, Algorithm::PS384, Algorithm::PS512] {
            check(&rsa_case(alg));
        }
    }

    #[test]
    fn ecdsa_sign_and_verify() {
        for alg in [Algorithm::ES256, Algorithm::ES384] {
            check(&ec_case(alg));
        }
    }

    #[test]
    fn eddsa_sign_and_verify() {
        check(&ed_case());
    }

    fn kind_of<T>(result: Result<T>) -> ErrorKind {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.into_kind(),
        }
    }

    /// A key pair for every family, and for each EC curve.
    struct Pairs(Vec<(Algorithm, EncodingKey, DecodingKey)>);

    impl Pairs {
        fn new() -> Self {
            Pairs(
                [
                    hmac_case(Algorithm::HS256),
                    rsa_case(Algorithm::RS256),
                    ec_case(Algorithm::ES256),
                    ec_case(Algorithm::ES384),
                    ed_case(),
                ]
                .into_iter()
                .map(|mut case| {
                    let (_, signing) = case.signing.swap_remove(0);
                    let (_, verifying) = case.verifying.swap_remove(0);
                    (case.alg, signing, verifying)
                })
                .collect(),
            )
        }

        /// The pair that `alg` can use.
        fn of(&self, alg: Algorithm) -> (&EncodingKey, &DecodingKey) {
            let (_, signing, verifying) = self
                .0
                .iter()
                .find(|(a, ..)| {
                    *a == alg || (a.family() == alg.family() && alg.family() != AlgorithmFamily::Ec)
                })
                .unwrap();
            (signing, verifying)
        }

        /// The pairs of every family but `alg`'s.
        fn foreign(
            &self,
            alg: Algorithm,
        ) -> impl Iterator<Item = &(Algorithm, EncodingKey, DecodingKey)> {
            self.0
                .iter()
                .filter(move |(a, ..)| a.family() != alg.family())
        }
    }

    #[test]
    fn keys_of_another_family_are_errors() {
        install();
        let pairs = Pairs::new();
        for alg in ALL {
            let (own_signing, _) = pairs.of(alg);
            let token = encode(&Header::new(alg), &claims("alice"), own_signing).unwrap();
            for (other, signing, verifying) in pairs.foreign(alg) {
                let ctx = format!("{alg:?} with a {other:?} key");
                assert_eq!(
                    kind_of((PROVIDER.signer_factory)(&alg, signing)),
                    ErrorKind::InvalidKeyFormat,
                    "{ctx}"
                );
                assert_eq!(
                    kind_of((PROVIDER.verifier_factory)(&alg, verifying)),
                    ErrorKind::InvalidKeyFormat,
                    "{ctx}"
                );
                // Through the public API: jsonwebtoken's own family check fires first on encode.
                assert!(
                    encode(&Header::new(alg), &claims("x"), signing).is_err(),
                    "{ctx}"
                );
                assert_eq!(
                    kind_of(decode::<Claims>(&token, verifying, &Validation::new(alg))),
                    ErrorKind::InvalidKeyFormat,
                    "{ctx}"
                );
            }
        }
    }

    #[test]
    fn unusable_keys_are_errors() {
        install();
        let rng = SystemRandom::new();
        let p384 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let p384_point = sig::EcdsaKeyPair::from_pkcs8(
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            p384.as_ref(),
            &rng,
        )
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
        let p256_spki = openssl(
            &["pkey", "-inform", "DER", "-pubout", "-outform", "DER"],
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap()
                .as_ref(),
        );
        let ed = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let rsa_public_der = DecodingKey::from_rsa_pem(&rsa().spki_pem)
            .unwrap()
            .try_get_as_bytes()
            .unwrap()
            .to_vec();
        let mut odd_2048 = vec![0xc5; 256];
        odd_2048[255] = 0x01;

        let signing: Vec<(&str, Algorithm, EncodingKey, ErrorKind)> = vec![
            (
                "P-384 key for ES256",
                Algorithm::ES256,
                EncodingKey::from_ec_der(p384.as_ref()),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "Ed25519 PKCS#8 as EC",
                Algorithm::ES256,
                EncodingKey::from_ec_der(ed.as_ref()),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "garbage EC",
                Algorithm::ES384,
                EncodingKey::from_ec_der(b"not a key"),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "garbage Ed25519",
                Algorithm::EdDSA,
                EncodingKey::from_ed_der(b"not a key"),
                ErrorKind::InvalidEddsaKey,
            ),
            (
                "P-384 PKCS#8 as Ed25519",
                Algorithm::EdDSA,
                EncodingKey::from_ed_der(p384.as_ref()),
                ErrorKind::InvalidEddsaKey,
            ),
        ];
        for (what, alg, key, expected) in signing {
            assert_eq!(
                kind_of((PROVIDER.signer_factory)(&alg, &key)),
                expected,
                "{what}"
            );
        }
        for (what, key) in [
            ("garbage RSA", EncodingKey::from_rsa_der(b"not a key")),
            ("RSA public key", EncodingKey::from_rsa_der(&rsa_public_der)),
            ("empty RSA", EncodingKey::from_rsa_der(b"")),
        ] {
            match kind_of((PROVIDER.signer_factory)(&Algorithm::PS256, &key)) {
                ErrorKind::InvalidRsaKey(_) => {}
                other => panic!("{what}: {other:?}"),
            }
        }

        let verifying: Vec<(&str, Algorithm, DecodingKey, ErrorKind)> = vec![
            (
                "P-384 point for ES256",
                Algorithm::ES256,
                DecodingKey::from_ec_der(&p384_point),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "P-256 SPKI for ES384",
                Algorithm::ES384,
                DecodingKey::from_ec_der(&p256_spki),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "RSA SPKI as EC",
                Algorithm::ES256,
                DecodingKey::from_ec_der(&rsa().spki_der),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "compressed point",
                Algorithm::ES256,
                DecodingKey::from_ec_der(&[0x02; 33]),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "empty EC",
                Algorithm::ES256,
                DecodingKey::from_ec_der(b""),
                ErrorKind::InvalidEcdsaKey,
            ),
            (
                "31-byte Ed25519",
                Algorithm::EdDSA,
                DecodingKey::from_ed_der(&[7; 31]),
                ErrorKind::InvalidEddsaKey,
            ),
            (
                "RSA SPKI as Ed25519",
                Algorithm::EdDSA,
                DecodingKey::from_ed_der(&rsa().spki_der),
                ErrorKind::InvalidEddsaKey,
            ),
        ];
        for (what, alg, key, expected) in verifying {
            assert_eq!(
                kind_of((PROVIDER.verifier_factory)(&alg, &key)),
                expected,
                "{what}"
            );
        }
        for (what, key) in [
            (
                "garbage DER",
                DecodingKey::from_rsa_der(b"\x30\x03\x02\x01"),
            ),
            ("empty DER", DecodingKey::from_rsa_der(b"")),
            ("EC SPKI as RSA", DecodingKey::from_rsa_der(&p256_spki)),
            (
                "trailing byte",
                DecodingKey::from_rsa_der(&[rsa_public_der.as_slice(), &[0]].concat()),
            ),
            (
                "1024-bit modulus",
                DecodingKey::from_rsa_raw_components(&[0xc5; 128], &[1, 0, 1]),
            ),
            (
                "even modulus",
                DecodingKey::from_rsa_raw_components(&[0xc4; 256], &[1, 0, 1]),
            ),
            (
                "e = 1",
                DecodingKey::from_rsa_raw_components(&odd_2048, &[1]),
            ),
            (
                "even e",
                DecodingKey::from_rsa_raw_components(&odd_2048, &[1, 0, 0]),
            ),
            (
                "huge e",
                DecodingKey::from_rsa_raw_components(&odd_2048, &[1; 6]),
            ),
            (
                "empty e",
                DecodingKey::from_rsa_raw_components(&odd_2048, &[0]),
            ),
        ] {
            match kind_of((PROVIDER.verifier_factory)(&Algorithm::RS256, &key)) {
                ErrorKind::InvalidRsaKey(_) => {}
                other => panic!("{what}: {other:?}"),
            }
        }

        // Structurally fine but not a valid key: the verifier is built, and nothing verifies.
        let msg = b"header.payload";
        for (what, alg, key) in [
            (
                "point off the curve",
                Algorithm::ES256,
                DecodingKey::from_ec_der(&[[4].as_slice(), &[1; 64]].concat()),
            ),
            (
                "bogus modulus",
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&odd_2048, &[1, 0, 1]),
            ),
        ] {
            let verifier = (PROVIDER.verifier_factory)(&alg, &key).unwrap();
            for signature in [vec![], vec![0; 64], vec![0xff; 256], vec![1; 4096]] {
                assert!(verifier.verify(msg, &signature).is_err(), "{what}");
            }
        }
    }

    #[test]
    fn malformed_signatures_are_rejected_without_panics() {
        install();
        let pairs = Pairs::new();
        let msg = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0";
        for alg in ALL {
            let (signing, verifying) = pairs.of(alg);
            let good = (PROVIDER.signer_factory)(&alg, signing)
                .unwrap()
                .try_sign(msg)
                .unwrap();
            let verifier = (PROVIDER.verifier_factory)(&alg, verifying).unwrap();
            assert!(verifier.verify(msg, &good).is_ok(), "{alg:?}");
            let mut longer = good.clone();
            longer.push(0);
            for bad in [
                vec![],
                good[..good.len() - 1].to_vec(),
                longer,
                vec![0; good.len()],
                vec![0xff; good.len()],
            ] {
                assert!(
                    verifier.verify(msg, &bad).is_err(),
                    "{alg:?} {} bytes",
                    bad.len()
                );
            }
        }
    }

    /// The classic alg-confusion attack: take the server's RSA public key, use its bytes as
    /// an HMAC secret and send an HS256 token, hoping the verifier feeds the key it holds to
    /// HMAC. Tried with the PEM text an attacker downloads and with the DER bytes the
    /// `DecodingKey` actually holds (the ones a family-blind provider would use).
    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_rejected() {
        install();
        let public_pem = &rsa().spki_pem;
        let rsa_key = DecodingKey::from_rsa_pem(public_pem).unwrap();
        let held_bytes = rsa_key.try_get_as_bytes().unwrap().to_vec();
        for (what, secret) in [("PEM", public_pem.as_slice()), ("DER", &held_bytes)] {
            let forged = encode(
                &Header::new(Algorithm::HS256),
                &claims("admin"),
                &EncodingKey::from_secret(secret).unwrap(),
            )
            .unwrap();

            // The forgery is a valid HS256 token for those bytes (so the checks below are not
            // vacuous)...
            decode::<Claims>(
                &forged,
                &DecodingKey::from_secret(secret).unwrap(),
                &Validation::new(Algorithm::HS256),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));

            // ...what really stops it is the caller pinning the algorithm per key...
            assert_eq!(
                kind_of(decode::<Claims>(
                    &forged,
                    &rsa_key,
                    &Validation::new(Algorithm::RS256)
                )),
                ErrorKind::InvalidAlgorithm,
                "{what}"
            );
            // ...but even with a careless validation that lets HS256 through for this key,
            // the provider never uses an RSA key as an HMAC secret.
            let careless = Validation::new(Algorithm::HS256);
            assert_eq!(
                kind_of(decode::<Claims>(&forged, &rsa_key, &careless)),
                ErrorKind::InvalidKeyFormat,
                "{what}"
            );
            let (message, signature) = forged.rsplit_once('.').unwrap();
            assert_eq!(
                kind_of(jsonwebtoken::crypto::verify(
                    signature,
                    message.as_bytes(),
                    &rsa_key,
                    Algorithm::HS256
                )),
                ErrorKind::InvalidKeyFormat,
                "{what}"
            );
        }
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                kind_of((PROVIDER.verifier_factory)(&alg, &rsa_key)),
                ErrorKind::InvalidKeyFormat
            );
        }
    }

    #[test]
    fn key_utils_agree_between_private_and_public_keys() {
        install();
        // RSA: n/e from the private key (PKCS#1 and PKCS#8) == from the public key.
        let k = rsa();
        let from_private = jwk(
            &EncodingKey::from_rsa_pem(&k.pkcs1_pem).unwrap(),
            Algorithm::RS256,
        );
        let from_pkcs8 = jwk(&EncodingKey::from_rsa_der(&k.pkcs8_der), Algorithm::RS256);
        let from_public = Jwk::from_decoding_key(
            &DecodingKey::from_rsa_pem(&k.spki_pem).unwrap(),
            Some(Algorithm::RS256),
        )
        .unwrap();
        let from_spki_der = Jwk::from_decoding_key(
            &DecodingKey::from_rsa_der(&k.spki_der),
            Some(Algorithm::RS256),
        )
        .unwrap();
        for other in [&from_pkcs8, &from_public, &from_spki_der] {
            assert_eq!(from_private.algorithm, other.algorithm);
        }
        // Thumbprints go through compute_digest.
        for hash in [
            ThumbprintHash::SHA256,
            ThumbprintHash::SHA384,
            ThumbprintHash::SHA512,
        ] {
            assert_eq!(
                from_private.thumbprint(hash.clone()).unwrap(),
                from_public.thumbprint(hash).unwrap()
            );
        }
        let AlgorithmParameters::RSA(params) = &from_private.algorithm else {
            unreachable!()
        };
        assert_eq!(params.e, "AQAB");

        // EC: x/y from the private key == the public point.
        for (alg, signing_alg, len) in [
            (Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED_SIGNING, 32),
            (Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED_SIGNING, 48),
        ] {
            let rng = SystemRandom::new();
            let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(signing_alg, &rng).unwrap();
            let point = sig::EcdsaKeyPair::from_pkcs8(signing_alg, pkcs8.as_ref(), &rng)
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec();
            let (curve, x, y) =
                (PROVIDER.key_utils.ec_pub_components_from_private_key)(pkcs8.as_ref(), alg)
                    .unwrap();
            assert_eq!(
                curve,
                if len == 32 {
                    EllipticCurve::P256
                } else {
                    EllipticCurve::P384
                }
            );
            assert_eq!([&[4][..], &x, &y].concat(), point);
            assert_eq!(
                jwk(&EncodingKey::from_ec_der(pkcs8.as_ref()), alg).algorithm,
                Jwk::from_decoding_key(&DecodingKey::from_ec_der(&point), Some(alg))
                    .unwrap()
                    .algorithm
            );
        }

        // Ed25519, both PKCS#8 versions.
        let rng = SystemRandom::new();
        let v2 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public = sig::Ed25519KeyPair::from_pkcs8(v2.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        assert_eq!(
            (PROVIDER.key_utils.ed_pub_components_from_private_key)(
                v2.as_ref(),
                &EllipticCurve::Ed25519
            )
            .unwrap(),
            public
        );
        let v1 =
            EncodingKey::from_ed_pem(&openssl(&["genpkey", "-algorithm", "ED25519"], b"")).unwrap();
        assert_eq!(
            (PROVIDER.key_utils.ed_pub_components_from_private_key)(
                v1.as_bytes(),
                &EllipticCurve::Ed25519
            )
            .unwrap()
            .len(),
            32
        );

        // Known answer: SHA-256("abc").
        assert_eq!(
            compute_digest(b"abc", ThumbprintHash::SHA256).unwrap()[..4],
            [0xba, 0x78, 0x16, 0xbf]
        );
    }

    #[test]
    fn key_utils_reject_garbage() {
        let utils = &PROVIDER.key_utils;
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x00",
            b"not a key at all",
            &[0xff; 300],
        ] {
            assert!((utils.rsa_pub_components_from_private_key)(junk).is_err());
            assert!((utils.rsa_pub_components_from_public_key)(junk).is_err());
            for alg in ALL {
                assert!((utils.ec_pub_components_from_private_key)(junk, alg).is_err());
            }
            for curve in [
                EllipticCurve::Ed25519,
                EllipticCurve::P256,
                EllipticCurve::P521,
            ] {
                assert!((utils.ed_pub_components_from_private_key)(junk, &curve).is_err());
            }
        }
    }

    #[test]
    fn der_reader_is_strict() {
        // SEQUENCE { INTEGER 0x00c5 (positive, minimal), INTEGER 3 }
        assert_eq!(
            der::rsa_public_key(&[0x30, 0x07, 0x02, 0x02, 0x00, 0xc5, 0x02, 0x01, 0x03]),
            Some((&[0xc5][..], &[0x03][..]))
        );
        for bad in [
            &[0x30, 0x06, 0x02, 0x01, 0xc5, 0x02, 0x01, 0x03][..], // negative n
            &[0x30, 0x07, 0x02, 0x02, 0x00, 0x45, 0x02, 0x01, 0x03], // non-minimal n
            &[0x30, 0x06, 0x02, 0x01, 0x45, 0x02, 0x01, 0x00],     // e = 0
            &[0x30, 0x07, 0x02, 0x01, 0x45, 0x02, 0x01, 0x03, 0x00], // trailing data inside
            &[0x30, 0x06, 0x02, 0x01, 0x45, 0x02, 0x01, 0x03, 0x00], // trailing data outside
            &[0x30, 0x81, 0x06, 0x02, 0x01, 0x45, 0x02, 0x01, 0x03], // non-minimal length
            &[0x30, 0x80, 0x02, 0x01, 0x45, 0x02, 0x01, 0x03, 0x00, 0x00], // indefinite length
            &[0x30, 0x09, 0x02, 0x01, 0x45, 0x02, 0x01, 0x03],     // length past the end
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],                 // 4-byte length
            &[0x30, 0x03, 0x02, 0x01, 0x45],                       // e missing
        ] {
            assert_eq!(der::rsa_public_key(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn install_is_idempotent() {
        install();
        install();
        assert!(std::ptr::eq(
            CryptoProvider::try_get_default().unwrap(),
            &PROVIDER
        ));
    }
}
