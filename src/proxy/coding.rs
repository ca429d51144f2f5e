//! The content codings a `body_json` step sees through: `gzip` (and `x-gzip`), `deflate`
//! (zlib, as RFC 9110 section 8.4.1.2 defines it) and `br`. A body is decoded with a bound on
//! its decoded size (a small compressed body that expands past the limit, a decompression
//! bomb, fails the step instead of filling memory), edited, and encoded again with the coding
//! it came with, so the client gets what the upstream announced.

use bytes::Bytes;
use http::HeaderMap;
use std::io::{Read, Write};

/// A body's content coding, from its `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

/// gzip and deflate at zlib's default level: its usual speed/size balance.
const DEFLATE_LEVEL: u32 = 6;
/// Brotli quality 5 of 11: close to gzip 6's speed with smaller output; 11 (the crate's
/// default) costs tens of milliseconds per MiB, too slow for a body edited per request.
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
const BUF: usize = 8 * 1024;

/// The coding a response's `headers` announce: [`coding_of`] their `Content-Encoding`s.
pub fn coding(headers: &HeaderMap) -> Result<Coding, &'static str> {
    coding_of(
        headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// The coding `Content-Encoding` values announce, when the gateway can decode it: one coding
/// (`identity` entries aside). Stacked codings (`gzip, br`) and unknown ones are refused.
pub fn coding_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Coding, &'static str> {
    let mut found = Coding::Identity;
    for value in values {
        let value = std::str::from_utf8(value)
            .map_err(|_| "the body's Content-Encoding is not readable")?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let next = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                _ => return Err("the body's Content-Encoding is not gzip, deflate or br"),
            };
            if found != Coding::Identity {
                return Err("the body has more than one Content-Encoding");
            }
            found = next;
        }
    }
    Ok(found)
}

/// `body` decoded, when it decodes whole to at most `limit` bytes.
pub fn decode(coding: Coding, body: Bytes, limit: u64) -> Result<Bytes, &'static str> {
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Identity => return Ok(body),
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        Coding::Brotli => Box::new(brotli::Decompressor::new(&body[..], BUF)),
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit as usize));
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| "the body does not decode as its Content-Encoding says")?;
    if out.len() as u64 > limit {
        return Err("the decoded body is larger than server.max_transform_body");
    }
    Ok(Bytes::from(out))
}

/// `body` encoded with `coding`.
pub fn encode(coding: Coding, body: Bytes) -> Bytes {
    let mut out = Vec::with_capacity(body.len() / 2 + 64);
    // Writing into a Vec cannot fail: the results below carry no I/O error to report.
    match coding {
        Coding::Identity => return body,
        Coding::Gzip => {
            let mut w =
                flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(DEFLATE_LEVEL));
            let _ = w.write_all(&body);
            let _ = w.finish();
        }
        Coding::Deflate => {
            let mut w =
                flate2::write::ZlibEncoder::new(&mut out, flate2::Compression::new(DEFLATE_LEVEL));
            let _ = w.write_all(&body);
            let _ = w.finish();
        }
        Coding::Brotli => {
            let mut w = brotli::CompressorWriter::new(&mut out, BUF, BROTLI_QUALITY, BROTLI_WINDOW);
            let _ = w.write_all(&body);
            let _ = w.flush();
            drop(w);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::CONTENT_ENCODING, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn codings_are_read_from_the_header() {
        assert_eq!(coding(&headers(&[])), Ok(Coding::Identity));
        assert_eq!(coding(&headers(&["identity"])), Ok(Coding::Identity));
        assert_eq!(coding(&headers(&["GZIP"])), Ok(Coding::Gzip));
        assert_eq!(coding(&headers(&["x-gzip"])), Ok(Coding::Gzip));
        assert_eq!(coding(&headers(&["deflate"])), Ok(Coding::Deflate));
        assert_eq!(coding(&headers(&["identity, br"])), Ok(Coding::Brotli));
        assert!(coding(&headers(&["gzip, br"])).is_err());
        assert!(coding(&headers(&["gzip", "gzip"])).is_err());
        assert!(coding(&headers(&["zstd"])).is_err());
    }

    #[test]
    fn every_coding_round_trips() {
        let body = Bytes::from(r#"{"a":[1,2,3],"b":"text text text text"}"#.repeat(100));
        for c in [
            Coding::Identity,
            Coding::Gzip,
            Coding::Deflate,
            Coding::Brotli,
        ] {
            let encoded = encode(c, body.clone());
            if c != Coding::Identity {
                assert!(encoded.len() < body.len() / 4, "{c:?} did not compress");
            }
            assert_eq!(decode(c, encoded, 1 << 20).unwrap(), body, "{c:?}");
        }
    }

    #[test]
    fn a_body_that_expands_past_the_limit_is_refused() {
        let bomb = encode(Coding::Gzip, Bytes::from(vec![b'0'; 4 << 20]));
        assert!(bomb.len() < 64 << 10);
        assert_eq!(
            decode(Coding::Gzip, bomb.clone(), 1 << 20),
            Err("the decoded body is larger than server.max_transform_body")
        );
        assert_eq!(decode(Coding::Gzip, bomb, 4 << 20).unwrap().len(), 4 << 20);
        let br = encode(Coding::Brotli, Bytes::from(vec![b'0'; 4 << 20]));
        assert!(decode(Coding::Brotli, br, 1 << 20).is_err());
    }

    #[test]
    fn a_body_that_is_not_what_it_says_is_refused() {
        let plain = Bytes::from_static(b"{\"not\":\"compressed\"}");
        for c in [Coding::Gzip, Coding::Deflate, Coding::Brotli] {
            assert_eq!(
                decode(c, plain.clone(), 1 << 20),
                Err("the body does not decode as its Content-Encoding says"),
                "{c:?}"
            );
        }
    }
}
