//! A stored answer as bytes, for the Redis tier: a versioned, length-prefixed binary record
//! (status, times, freshness, route, path, header fields, body). Decoding trusts nothing:
//! what Redis hands back is another process's (or anybody's) bytes, and anything malformed,
//! truncated or of another version is `None` (a miss).

use super::policy::Freshness;
use super::store::Stored;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::Duration;

const MAGIC: &[u8; 4] = b"KC1\0";

/// The record of `s`.
pub fn encode(s: &Stored) -> Vec<u8> {
    let headers: usize = s
        .headers
        .iter()
        .map(|(k, v)| 8 + k.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(64 + s.route.len() + s.path.len() + headers + s.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&s.status.to_be_bytes());
    for n in [
        s.response_time,
        s.initial_age,
        s.fresh.lifetime,
        s.fresh.swr,
        s.fresh.sie,
        s.keep.as_millis() as u64,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.push(u8::from(s.fresh.revalidate) | (u8::from(s.fresh.no_cache) << 1));
    bytes(&mut out, s.route.as_bytes());
    bytes(&mut out, s.path.as_bytes());
    out.extend_from_slice(&(s.headers.len() as u32).to_be_bytes());
    for (k, v) in &s.headers {
        bytes(&mut out, k.as_str().as_bytes());
        bytes(&mut out, v.as_bytes());
    }
    bytes(&mut out, &s.body);
    out
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// The stored answer of a record; `None` for anything that is not a whole, valid record.
pub fn decode(record: &[u8]) -> Option<Stored> {
    let mut r = Reader(record);
    if r.take(4)? != MAGIC {
        return None;
    }
    let status = r.u16()?;
    if !(200..600).contains(&status) {
        return None;
    }
    let response_time = r.u64()?;
    let initial_age = r.u64()?;
    let (lifetime, swr, sie, keep) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let flags = *r.take(1)?.first()?;
    if flags > 3 {
        return None;
    }
    let route: Arc<str> = Arc::from(r.text()?);
    let path: Box<str> = r.text()?.into();
    let count = r.u32()? as usize;
    // Each field takes at least 8 bytes: a count larger than what is left is a lie.
    if count > r.0.len() / 8 {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let name = HeaderName::from_bytes(r.bytes()?).ok()?;
        let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
        headers.append(name, value);
    }
    let body = Bytes::copy_from_slice(r.bytes()?);
    if !r.0.is_empty() {
        return None;
    }
    Some(Stored {
        status,
        headers,
        body,
        response_time,
        initial_age,
        fresh: Freshness {
            lifetime,
            swr,
            sie,
            revalidate: flags & 1 != 0,
            no_cache: flags & 2 != 0,
        },
        route,
        path,
        keep: Duration::from_millis(keep),
        client: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stored {
        let mut headers = HeaderMap::new();
        headers.append(http::header::ETAG, HeaderValue::from_static("\"v1\""));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        Stored {
            status: 200,
            headers,
            body: Bytes::from_static(b"hello\0world"),
            response_time: 1_700_000_000_000,
            initial_age: 1500,
            fresh: Freshness {
                lifetime: 60_000,
                swr: 10_000,
                sie: 0,
                revalidate: false,
                no_cache: true,
            },
            route: Arc::from("users"),
            path: "/api/users/42".into(),
            keep: Duration::from_secs(70),
            client: Default::default(),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let s = sample();
        let d = decode(&encode(&s)).expect("decodes");
        assert_eq!(d.status, 200);
        assert_eq!(d.headers, s.headers);
        assert_eq!(d.body, s.body);
        assert_eq!(
            (d.response_time, d.initial_age, d.fresh, d.keep),
            (s.response_time, s.initial_age, s.fresh, s.keep)
        );
        assert_eq!((&*d.route, &*d.path), ("users", "/api/users/42"));
    }

    #[test]
    fn anything_else_is_refused() {
        let good = encode(&sample());
        // Every truncation, a trailing byte, another magic, garbage.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_none(), "truncated at {n}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        let mut other = good.clone();
        other[2] = b'9';
        assert!(decode(&other).is_none());
        assert!(decode(b"not a record at all").is_none());
        // A header count far beyond the record.
        let mut lying = MAGIC.to_vec();
        lying.extend_from_slice(&200u16.to_be_bytes());
        lying.extend_from_slice(&[0; 49]);
        lying.extend_from_slice(&0u32.to_be_bytes());
        lying.extend_from_slice(&0u32.to_be_bytes());
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&lying).is_none());
    }
}
