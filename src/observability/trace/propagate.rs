//! Trace context on the wire (`tracing.propagators`): W3C `traceparent`/`tracestate`, W3C
//! `baggage`, and B3 in its single-header (`b3`) and multi-header (`X-B3-*`) forms. Incoming
//! headers are parsed by hand (no allocation, nothing on the heap for a header that is
//! absent); a malformed value is no context at all, so the request starts a new trace.
//! Outgoing headers are written from the request's ids. A propagator that is not configured
//! leaves its headers alone: they go upstream like any other header.

use crate::config::model::Propagator;
use actix_web::http::header::HeaderName as InName;

/// W3C trace context, sent upstream.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// W3C trace context's vendor part; dropped when the caller's trace is not continued.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
/// W3C baggage: application key-value pairs that travel with the trace.
pub const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");
const B3: http::HeaderName = http::HeaderName::from_static("b3");
const B3_TRACE_ID: http::HeaderName = http::HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: http::HeaderName = http::HeaderName::from_static("x-b3-spanid");
const B3_SAMPLED: http::HeaderName = http::HeaderName::from_static("x-b3-sampled");
const B3_PARENT: http::HeaderName = http::HeaderName::from_static("x-b3-parentspanid");
const B3_FLAGS: http::HeaderName = http::HeaderName::from_static("x-b3-flags");

// The same names for looking them up in the client's request (a `&str` key would be parsed,
// and allocated, on every lookup).
const TRACEPARENT_IN: InName = InName::from_static("traceparent");
const B3_IN: InName = InName::from_static("b3");
const B3_TRACE_ID_IN: InName = InName::from_static("x-b3-traceid");
const B3_SPAN_ID_IN: InName = InName::from_static("x-b3-spanid");
const B3_SAMPLED_IN: InName = InName::from_static("x-b3-sampled");
const B3_FLAGS_IN: InName = InName::from_static("x-b3-flags");

/// The W3C baggage limits every participant must accept; more is dropped member by member.
const MAX_BAGGAGE_MEMBERS: usize = 64;
const MAX_BAGGAGE_BYTES: usize = 8192;

/// The configured propagators as a set: what is written upstream. Copied into each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inject(u8);

impl Inject {
    const TRACECONTEXT: u8 = 1;
    const BAGGAGE: u8 = 2;
    const B3: u8 = 4;
    const B3MULTI: u8 = 8;

    pub fn of(propagators: &[Propagator]) -> Self {
        Inject(propagators.iter().fold(0, |set, p| {
            set | match p {
                Propagator::TraceContext => Self::TRACECONTEXT,
                Propagator::Baggage => Self::BAGGAGE,
                Propagator::B3 => Self::B3,
                Propagator::B3Multi => Self::B3MULTI,
            }
        }))
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A caller's trace context.
#[derive(Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// A caller's context with whether it carried a sampling decision (B3 may defer it).
#[derive(Debug)]
pub(super) struct Incoming {
    pub parent: Parent,
    /// False when the caller left the decision to us (B3 without a sampling state).
    pub decided: bool,
}

/// The first configured propagator's context found in the request's headers.
pub(super) fn extract(
    propagators: &[Propagator],
    headers: &actix_web::http::header::HeaderMap,
) -> Option<Incoming> {
    propagators.iter().find_map(|p| match p {
        Propagator::TraceContext => headers
            .get(&TRACEPARENT_IN)
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .map(|parent| Incoming {
                parent,
                decided: true,
            }),
        Propagator::B3 => headers.get(&B3_IN).and_then(|v| parse_b3(v.as_bytes())),
        Propagator::B3Multi => parse_b3_multi(
            headers.get(&B3_TRACE_ID_IN)?.as_bytes(),
            headers.get(&B3_SPAN_ID_IN)?.as_bytes(),
            headers.get(&B3_SAMPLED_IN).map(|v| v.as_bytes()),
            headers.get(&B3_FLAGS_IN).map(|v| v.as_bytes()),
        ),
        Propagator::Baggage => None,
    })
}

/// Whether a request's own `tracestate` and `baggage` are dropped: they belong to a caller's
/// context that is not continued, and the propagator that would carry them is configured.
pub(super) fn dropped(set: Inject, continued: bool) -> (bool, bool) {
    (
        !continued && set.has(Inject::TRACECONTEXT),
        !continued && set.has(Inject::BAGGAGE),
    )
}

/// Writes the configured propagators' headers into a request going upstream: the trace id,
/// `span_id` as the parent, and the sampling decision. `continued` says whether the caller's
/// trace is ours to continue: if not, its `tracestate` and `baggage` belong to a context we
/// did not accept, and the upstream request was built without them ([`dropped`]).
pub(super) fn inject(
    set: Inject,
    headers: &mut http::HeaderMap,
    trace_hex: &[u8; 32],
    span_id: &[u8; 8],
    sampled: bool,
    continued: bool,
) {
    if set.has(Inject::TRACECONTEXT) {
        // Unique per request: never indexed by HPACK (see request_id::for_request).
        let mut v = traceparent_hex(trace_hex, span_id, sampled);
        v.set_sensitive(true);
        headers.insert(TRACEPARENT, v);
    }
    if set.has(Inject::BAGGAGE) && continued {
        forward_baggage(headers);
    }
    if set.has(Inject::B3 | Inject::B3MULTI) {
        let mut span_hex = [0u8; 16];
        hex_into(span_id, &mut span_hex);
        // The caller's own B3 headers describe its span, not ours.
        for name in [
            &B3,
            &B3_TRACE_ID,
            &B3_SPAN_ID,
            &B3_SAMPLED,
            &B3_PARENT,
            &B3_FLAGS,
        ] {
            headers.remove(name);
        }
        let flag = if sampled { b'1' } else { b'0' };
        if set.has(Inject::B3) {
            let mut buf = [b'-'; 51];
            buf[..32].copy_from_slice(trace_hex);
            buf[33..49].copy_from_slice(&span_hex);
            buf[50] = flag;
            headers.insert(B3, ascii_value(&buf));
        }
        if set.has(Inject::B3MULTI) {
            headers.insert(B3_TRACE_ID, ascii_value(trace_hex));
            headers.insert(B3_SPAN_ID, ascii_value(&span_hex));
            headers.insert(B3_SAMPLED, ascii_value(&[flag]));
        }
    }
}

/// A header value of hex digits, dashes and digits.
fn ascii_value(buf: &[u8]) -> http::HeaderValue {
    debug_assert!(buf.iter().all(|b| b.is_ascii_graphic()));
    // SAFETY: every caller passes lower-case hex digits, digits and dashes: visible ASCII, a
    // valid header value (checking it byte by byte was a measurable share of the cost of an
    // unsampled request).
    unsafe { http::HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::copy_from_slice(buf)) }
}

/// W3C baggage going upstream: the caller's list when its context is continued, with only
/// well-formed members and within the limits every participant accepts (64 members, 8192
/// bytes); several `baggage` headers are joined into one. An untrusted caller's baggage is
/// not forwarded (like its `tracestate`): it was left out of the upstream request already.
fn forward_baggage(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(BAGGAGE).iter();
    let (Some(first), None) = (values.next(), values.next()) else {
        // None at all, or several to join.
        if headers.contains_key(BAGGAGE) {
            let joined = headers
                .get_all(BAGGAGE)
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b","[..]);
            set_baggage(headers, &joined);
        }
        return;
    };
    // The usual case, one header that is already fine, leaves the header as it is.
    if first.len() <= MAX_BAGGAGE_BYTES && baggage_members(first.as_bytes()).all(|m| m.is_some()) {
        let count = first.as_bytes().split(|b| *b == b',').count();
        if count <= MAX_BAGGAGE_MEMBERS {
            return;
        }
    }
    let text = first.as_bytes().to_vec();
    set_baggage(headers, &text);
}

/// Replaces the `baggage` header with the well-formed members of `text`, within the limits.
fn set_baggage(headers: &mut http::HeaderMap, text: &[u8]) {
    let mut out: Vec<u8> = Vec::with_capacity(text.len().min(MAX_BAGGAGE_BYTES));
    for (members, member) in baggage_members(text).flatten().enumerate() {
        let extra = member.len() + usize::from(!out.is_empty());
        if members == MAX_BAGGAGE_MEMBERS || out.len() + extra > MAX_BAGGAGE_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(member);
    }
    match http::HeaderValue::from_bytes(&out) {
        Ok(v) if !out.is_empty() => {
            headers.insert(BAGGAGE, v);
        }
        _ => {
            headers.remove(BAGGAGE);
        }
    }
}

/// The list members of a baggage value, trimmed; `None` for a malformed one. Empty members
/// (from `a=1,,b=2`) are skipped, as the W3C list rules allow.
fn baggage_members(text: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    text.split(|b| *b == b',')
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .map(|m| valid_member(m).then_some(m))
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = s.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(a), Some(b)) => &s[a..=b],
        _ => &[],
    }
}

/// `key = value *( ; property )` of the W3C baggage grammar: a token key, a value of
/// baggage-octets (percent-encoded text), properties as a token or token=value.
fn valid_member(m: &[u8]) -> bool {
    let mut parts = m.split(|b| *b == b';');
    let Some(kv) = parts.next() else { return false };
    let Some(eq) = kv.iter().position(|b| *b == b'=') else {
        return false;
    };
    let key = trim_ows(&kv[..eq]);
    let value = trim_ows(&kv[eq + 1..]);
    if key.is_empty() || !key.iter().all(|b| is_tchar(*b)) || !valid_value(value) {
        return false;
    }
    parts.all(|prop| {
        let prop = trim_ows(prop);
        match prop.iter().position(|b| *b == b'=') {
            None => !prop.is_empty() && prop.iter().all(|b| is_tchar(*b)),
            Some(eq) => {
                let k = trim_ows(&prop[..eq]);
                !k.is_empty()
                    && k.iter().all(|b| is_tchar(*b))
                    && valid_value(trim_ows(&prop[eq + 1..]))
            }
        }
    })
}

/// baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E, with `%` escapes whole.
fn valid_value(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' => {
                let ok = v
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !ok {
                    return false;
                }
                i += 3;
                continue;
            }
            0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Every byte's two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    table
};

/// Writes `bytes` as lower-case hex into `out` (twice as long).
pub(super) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Lower-case hex to bytes; `None` for any other character or the wrong length.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
    }
    Some(out)
}

/// A W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> http::HeaderValue {
    let mut trace_hex = [0u8; 32];
    hex_into(trace_id, &mut trace_hex);
    traceparent_hex(&trace_hex, span_id, sampled)
}

/// [`traceparent`] with the trace id already in hex.
pub(super) fn traceparent_hex(
    trace_hex: &[u8; 32],
    span_id: &[u8; 8],
    sampled: bool,
) -> http::HeaderValue {
    let mut buf = [b'-'; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    buf[3..35].copy_from_slice(trace_hex);
    hex_into(span_id, &mut buf[36..52]);
    buf[53] = b'0';
    buf[54] = if sampled { b'1' } else { b'0' };
    ascii_value(&buf)
}

/// Parses a W3C `traceparent` (trace-context level 1 and later versions' first fields).
/// Invalid values (bad hex, upper case, all-zero ids, version ff) are `None`: a new trace.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = unhex::<1>(&v[0..2])?;
    // Version 00 has exactly these fields; a later version may append more after a dash.
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let span_id = unhex::<8>(&v[36..52])?;
    let [flags] = unhex::<1>(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// A B3 trace id: 32 or 16 lower-hex digits (a 64-bit id is the low half of ours).
fn b3_trace_id(s: &[u8]) -> Option<[u8; 16]> {
    let id = match s.len() {
        32 => unhex::<16>(s)?,
        16 => {
            let low = unhex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

fn b3_span_id(s: &[u8]) -> Option<[u8; 8]> {
    unhex::<8>(s).filter(|id| *id != [0; 8])
}

/// The single `b3` header: `{trace id}-{span id}[-{1|0|d}[-{parent span id}]]`. A value
/// with only a sampling state (`0`, `1`, `d`) carries no context to continue.
pub(super) fn parse_b3(v: &[u8]) -> Option<Incoming> {
    let mut parts = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let (sampled, decided) = match parts.next() {
        None => (false, false),
        Some(b"1") | Some(b"d") => (true, true),
        Some(b"0") => (false, true),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Incoming {
        parent: Parent {
            trace_id,
            span_id,
            sampled,
        },
        decided,
    })
}

/// The `X-B3-*` headers: trace and span id, `X-B3-Sampled` (`1`/`0`, or the old
/// `true`/`false`), `X-B3-Flags: 1` (debug, which implies sampled).
pub(super) fn parse_b3_multi(
    trace_id: &[u8],
    span_id: &[u8],
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> Option<Incoming> {
    let trace_id = b3_trace_id(trace_id)?;
    let span_id = b3_span_id(span_id)?;
    let (sampled, decided) = match (flags, sampled) {
        (Some(b"1"), _) => (true, true),
        (_, Some(b"1")) | (_, Some(b"true")) => (true, true),
        (_, Some(b"0")) | (_, Some(b"false")) => (false, true),
        (_, None) => (false, false),
        (_, Some(_)) => return None,
    };
    Some(Incoming {
        parent: Parent {
            trace_id,
            span_id,
            sampled,
        },
        decided,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(good).unwrap();
        assert!(p.sampled);
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true).as_bytes(), good);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).unwrap().sampled);
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn b3_single_and_multi() {
        let i = parse_b3(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
            .unwrap();
        assert!(i.decided && i.parent.sampled);
        assert_eq!(i.parent.span_id, 0xe457b5a2e4d86bd1_u64.to_be_bytes());
        let i = parse_b3(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert!(!i.decided);
        assert_eq!(i.parent.trace_id[..8], [0; 8]);
        assert!(
            parse_b3(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")
                .unwrap()
                .parent
                .sampled
        );
        for bad in [
            &b"1"[..],
            b"0",
            b"",
            b"80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
            b"80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz",
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-1",
        ] {
            assert!(parse_b3(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let t = b"80f198ee56343ba864fe8b2a57d3eff7";
        let s = b"e457b5a2e4d86bd1";
        assert!(
            parse_b3_multi(t, s, Some(b"1"), None)
                .unwrap()
                .parent
                .sampled
        );
        assert!(
            !parse_b3_multi(t, s, Some(b"0"), None)
                .unwrap()
                .parent
                .sampled
        );
        assert!(
            parse_b3_multi(t, s, Some(b"0"), Some(b"1"))
                .unwrap()
                .parent
                .sampled
        );
        assert!(!parse_b3_multi(t, s, None, None).unwrap().decided);
        assert!(parse_b3_multi(t, s, Some(b"yes"), None).is_none());
        assert!(parse_b3_multi(b"xyz", s, Some(b"1"), None).is_none());
    }

    #[test]
    fn baggage_is_checked_member_by_member() {
        let mut h = http::HeaderMap::new();
        let fine = "userId=alice, serverNode=DF%2028;ttl=60,isProduction=false";
        h.insert(BAGGAGE, http::HeaderValue::from_static(fine));
        forward_baggage(&mut h);
        assert_eq!(h[BAGGAGE], fine);

        h.insert(
            BAGGAGE,
            http::HeaderValue::from_static("a=1,bad key=2,b=\"q\",c=3"),
        );
        forward_baggage(&mut h);
        assert_eq!(h[BAGGAGE], "a=1,c=3");

        h.insert(BAGGAGE, http::HeaderValue::from_static("a=1"));
        h.append(BAGGAGE, http::HeaderValue::from_static("b=2"));
        forward_baggage(&mut h);
        assert_eq!(h.get_all(BAGGAGE).iter().count(), 1);
        assert_eq!(h[BAGGAGE], "a=1,b=2");

        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        h.insert(
            BAGGAGE,
            http::HeaderValue::from_str(&many.join(",")).unwrap(),
        );
        forward_baggage(&mut h);
        assert_eq!(h[BAGGAGE].as_bytes().split(|b| *b == b',').count(), 64);

        h.insert(BAGGAGE, http::HeaderValue::from_static("nothing valid"));
        forward_baggage(&mut h);
        assert!(!h.contains_key(BAGGAGE));

        // Not continued: dropped (by the upstream request's header copy).
        assert_eq!(
            dropped(Inject::of(&[Propagator::Baggage]), false),
            (false, true)
        );
        assert_eq!(
            dropped(Inject::of(&[Propagator::Baggage]), true),
            (false, false)
        );
        assert_eq!(
            dropped(Inject::of(&[Propagator::TraceContext]), false),
            (true, false)
        );
    }
}
