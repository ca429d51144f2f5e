//! SHA-256 as the gateway uses it: API keys are stored and looked up by their hash, the config
//! text is identified by its hash (ETags, reload records), and secrets are compared in time that
//! does not depend on where they differ. Also the SHA-1 of a WebSocket handshake's accept value.

use ring::digest;

/// Why a `sha256:<hex>` value does not parse. The value itself is never echoed: it may be a
/// plaintext key pasted into the wrong field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("the value does not start with \"sha256:\"")]
    NoPrefix,
    #[error("a SHA-256 hash has 64 hex digits, this one has {0}")]
    Length(usize),
    #[error("`{0}` is not hex")]
    NotHex(String),
}

/// The GUID of RFC 6455 4.2.2, hashed with the key into `Sec-WebSocket-Accept`.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` a server owes the handshake whose `Sec-WebSocket-Key` is `key`
/// (RFC 6455 4.2.2): base64 of SHA-1 of the key and the GUID.
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// SHA-256 of a key.
pub fn hash(key: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The config form of a hash: `sha256:` and 64 lower-case hex digits.
pub fn format_hash(hash: &[u8; 32]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses `sha256:<64 hex>`.
pub fn parse_hash(text: &str) -> Result<[u8; 32], HashError> {
    let Some(hex) = text.strip_prefix("sha256:") else {
        // Not echoed: it may be a plaintext key pasted in the wrong field.
        return Err(HashError::NoPrefix);
    };
    if hex.len() != 64 {
        return Err(HashError::Length(hex.len()));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| HashError::NotHex(String::new()))?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| HashError::NotHex(s.to_string()))?;
    }
    Ok(out)
}

/// SHA-256 of config text, hex.
pub fn hash_text(text: &str) -> String {
    let d = digest::digest(&digest::SHA256, text.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two byte strings in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip() {
        let h = hash("test");
        let text = format_hash(&h);
        assert_eq!(
            text,
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(parse_hash(&text).unwrap(), h);
        assert!(parse_hash("md5:abc").is_err());
        assert!(parse_hash("sha256:abc").is_err());
        assert!(parse_hash(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }
}
