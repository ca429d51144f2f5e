//! The JSON log line (`logging.format: "json"`), written straight into the formatter's buffer:
//! the same bytes as tracing-subscriber's JSON format with `flatten_event` (a unit test
//! compares the two), without its per-line `String` for the timestamp, its serde machinery
//! and its UTF-8 check of every fragment. The date and time of day are formatted once a second
//! per thread. An event inside a span (its fields go in the line's `span`) is left to
//! tracing-subscriber's own format.
//!
//! At level info every request writes an access line and, on a route that authenticates, an
//! audit line: their formatting was the larger part of what the access log cost a request.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, Format, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format of JSON lines: [`format_event`](FormatEvent::format_event) writes a line
/// outside any span itself, and hands one inside a span to tracing-subscriber's format.
pub struct JsonLines {
    spans: Format<Json, SystemTime>,
}

impl JsonLines {
    /// The gateway's JSON lines: fields flattened into the line, the current span's fields
    /// (if any) under `span`, no span list.
    pub fn new() -> Self {
        JsonLines {
            spans: format::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        }
    }
}

impl Default for JsonLines {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The same choice of span as tracing-subscriber's JSON format.
        let in_span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some();
        let stamp = match in_span {
            false => timestamp(std::time::SystemTime::now()),
            true => None,
        };
        let Some(stamp) = stamp else {
            return self.spans.format_event(ctx, writer, event);
        };
        // The line is built in a buffer of this thread's and handed over in one write: each
        // write to `writer` is a call through `dyn fmt::Write`.
        with_line(|buf| {
            write_line(buf, &stamp, event);
            writer.write_str(buf)
        })
    }
}

thread_local! {
    /// The line being formatted on this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` on this thread's line buffer, emptied (a buffer of its own when the thread's is
/// in use: formatting a field logged an event of its own). Shared by the event format and
/// the lines written without an event ([`super::lines`]).
pub(super) fn with_line<R>(f: impl FnOnce(&mut String) -> R) -> R {
    LINE.with(|line| match line.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let out = f(&mut buf);
            // A long line's room is not kept for the next one.
            buf.shrink_to(4096);
            out
        }
        Err(_) => f(&mut String::with_capacity(256)),
    })
}

/// The line of an event outside any span, with its newline.
fn write_line(buf: &mut String, stamp: &Stamp, event: &Event<'_>) {
    let meta = event.metadata();
    buf.push_str("{\"timestamp\":\"");
    buf.push_str(stamp.as_str());
    buf.push_str("\",\"level\":\"");
    buf.push_str(level(meta.level()));
    buf.push('"');
    event.record(&mut Fields { buf: &mut *buf });
    buf.push_str(",\"target\":");
    string(buf, meta.target());
    buf.push_str("}\n");
}

/// The JSON line of `line` as [`JsonLines`] writes its event, with its newline; `false`
/// (nothing written) when the clock is outside what [`timestamp`] formats.
pub(super) fn access_line(buf: &mut String, line: &super::lines::AccessLine<'_>) -> bool {
    if !open_line(buf, 320 + line.path.len()) {
        return false;
    }
    text(buf, ",\"method\":\"", line.method);
    text(buf, ",\"path\":\"", line.path);
    text(buf, ",\"route\":\"", line.route);
    buf.push_str(",\"status\":");
    buf.push_str(itoa::Buffer::new().format(line.status));
    if let Some(g) = line.grpc_status {
        buf.push_str(",\"grpc_status\":");
        buf.push_str(itoa::Buffer::new().format(g));
    }
    buf.push_str(",\"latency_ms\":");
    float(buf, line.latency_ms);
    text(buf, ",\"upstream\":\"", line.upstream);
    opt_text(buf, ",\"client\":\"", line.client);
    text(buf, ",\"identity\":\"", line.identity);
    text(buf, ",\"tenant\":\"", line.tenant);
    text(buf, ",\"request_id\":\"", line.request_id);
    opt_text(buf, ",\"trace_id\":\"", line.trace_id);
    opt_text(buf, ",\"span_id\":\"", line.span_id);
    buf.push_str(",\"target\":\"kairos::access\"}\n");
    true
}

/// The JSON line of an audit line, as [`access_line`] writes an access line.
pub(super) fn audit_line(buf: &mut String, line: &super::lines::AuditLine<'_>) -> bool {
    if !open_line(buf, 320) {
        return false;
    }
    // tracing puts an event's message first.
    text(buf, ",\"message\":\"", line.message);
    text(buf, ",\"route\":\"", line.route);
    text(buf, ",\"scheme\":\"", line.scheme);
    opt_text(buf, ",\"identity\":\"", line.identity);
    text(buf, ",\"decision\":\"", line.decision);
    opt_text(buf, ",\"reason\":\"", line.reason);
    opt_text(buf, ",\"missing_permission\":\"", line.missing_permission);
    text(buf, ",\"request_id\":\"", line.request_id);
    buf.push_str(",\"target\":\"kairos::audit\"}\n");
    true
}

/// `{"timestamp":"...","level":"INFO"` with room for `len` bytes in all; `false` (nothing
/// written) when the clock is outside what [`timestamp`] formats.
fn open_line(buf: &mut String, len: usize) -> bool {
    let Some(stamp) = timestamp(std::time::SystemTime::now()) else {
        return false;
    };
    buf.reserve(len);
    buf.push_str("{\"timestamp\":\"");
    buf.push_str(stamp.as_str());
    buf.push_str("\",\"level\":\"INFO\"");
    true
}

/// A string field: `key` is its constant `,"name":"` (copied without a call), the value is
/// escaped as a field's.
fn text(buf: &mut String, key: &str, value: &str) {
    buf.push_str(key);
    escape_into(buf, value);
    buf.push('"');
}

/// A string field that is left out when absent, as tracing records a `None`.
fn opt_text(buf: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        text(buf, key, v);
    }
}

fn level(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// `2026-12-07T21:08:20.123456Z` (UTC, microseconds), as tracing-subscriber writes it.
struct Stamp([u8; 27]);

impl Stamp {
    fn as_str(&self) -> &str {
        debug_assert!(self.0.is_ascii());
        // SAFETY: only `timestamp` makes a stamp, and it writes ASCII digits and separators
        // into every byte (checking them again cost 100 instructions a line).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

thread_local! {
    /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// The timestamp of `now`; `None` outside the years 1970 to 9999 (tracing-subscriber's format
/// writes those itself).
fn timestamp(now: std::time::SystemTime) -> Option<Stamp> {
    let since = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let days = i64::try_from(secs / 86_400).ok()?;
        let d = crate::base::clock::Date::from_days(days);
        if !(0..=9999).contains(&d.year) {
            return None;
        }
        let rem = secs % 86_400;
        let mut two = |at: usize, v: u64| {
            prefix[at] = b'0' + (v / 10 % 10) as u8;
            prefix[at + 1] = b'0' + (v % 10) as u8;
        };
        let year = d.year as u64;
        two(0, year / 100);
        two(2, year % 100);
        two(5, u64::from(d.month));
        two(8, u64::from(d.day));
        two(11, rem / 3600);
        two(14, rem / 60 % 60);
        two(17, rem % 60);
        for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
            prefix[at] = c;
        }
        SECOND.set((secs, prefix));
    }
    let mut out = [0u8; 27];
    out[..19].copy_from_slice(&prefix);
    out[19] = b'.';
    let mut micros = since.subsec_micros();
    for i in (20..26).rev() {
        out[i] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out[26] = b'Z';
    Some(Stamp(out))
}

/// Writes the event's fields as `,"name":value` entries, as tracing-serde's map visitor
/// does through serde_json.
struct Fields<'a> {
    buf: &'a mut String,
}

impl Fields<'_> {
    /// `,"name":`, with room reserved for `more` bytes of the value after it.
    #[inline]
    fn key(&mut self, field: &Field, more: usize) {
        let name = field.name();
        self.buf.reserve(name.len() + more + 4);
        self.buf.push_str(",\"");
        escape_into(self.buf, name);
        self.buf.push_str("\":");
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field, 5);
        self.buf.push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field, 20);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field, 20);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field, 24);
        float(self.buf, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field, value.len() + 2);
        self.buf.push('"');
        escape_into(self.buf, value);
        self.buf.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field, 2);
        self.buf.push('"');
        // Writing into a String never fails.
        let _ = write!(Escaped(&mut *self.buf), "{value:?}");
        self.buf.push('"');
    }
}

/// A float as serde_json writes one: ryu for a finite value, `null` for NaN and the infinities.
fn float(buf: &mut String, value: f64) {
    match value.is_finite() {
        true => buf.push_str(ryu::Buffer::new().format_finite(value)),
        false => buf.push_str("null"),
    }
}

/// A JSON string: quoted, escaped.
fn string(buf: &mut String, s: &str) {
    buf.push('"');
    escape_into(buf, s);
    buf.push('"');
}

/// Whether any of the 8 bytes of `w` must be escaped in a JSON string: a control character
/// (below 0x20), `"` or `\`: the classic "has a zero byte" and "has a byte below n" tests,
/// exact as a yes or no (all that is asked).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// Appends `s` escaped as serde_json escapes a string's contents: `"`, `\` and control
/// characters; everything else as it is. A string with nothing to escape (nearly always:
/// paths, names, ids) is checked a word at a time and copied whole.
#[inline]
fn escape_into(buf: &mut String, s: &str) {
    match clean(s.as_bytes()) {
        true => buf.push_str(s),
        false => escape_from(buf, s, 0),
    }
}

/// Whether no byte of `b` needs escaping: 8 bytes at a time, the tail as one word that
/// overlaps the one before, 4 to 7 bytes as two overlapping halves.
#[inline]
fn clean(b: &[u8]) -> bool {
    let n = b.len();
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let half = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&b[at..at + 4]);
        u64::from(u32::from_le_bytes(w))
    };
    match n {
        8.. => {
            let mut at = 0;
            while at + 8 < n {
                if needs_escape(word(at)) {
                    return false;
                }
                at += 8;
            }
            !needs_escape(word(n - 8))
        }
        4..=7 => !needs_escape(half(0) | (half(n - 4) << 32)),
        _ => b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\'),
    }
}

/// [`escape_into`] once the bytes before `scan` are known to need no escaping.
#[cold]
#[inline(never)]
fn escape_from(buf: &mut String, s: &str, scan: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(scan) {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `start..i` holds no byte that is escaped, so it ends at a character boundary (an
        // escaped byte is ASCII).
        buf.push_str(&s[start..i]);
        start = i + 1;
        if short.is_empty() {
            buf.push_str("\\u00");
            buf.push(char::from(HEX[usize::from(b >> 4)]));
            buf.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            buf.push_str(short);
        }
    }
    buf.push_str(&s[start..]);
}

/// Escapes what is written through it (a Debug value's text) into the line.
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    /// A log writer that keeps what is written (shared with observability::lines' tests).
    #[derive(Clone, Default)]
    pub(crate) struct Buf(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn events() {
        tracing::info!(
            target: "kairos::access",
            method = "GET",
            path = "/a\"b\\c\n\u{1}\u{7f}é",
            long = "/a/long/path/é/with/ünïcode/€/and\ttabs/\"quoted\"/end/ééééé\"",
            clean = "/exactly/16bytes",
            ctl = "1234567é\u{1f}",
            status = 200u16,
            latency_ms = 0.123_456_f64,
            neg = -42i64,
            big = u64::MAX,
            min = i64::MIN,
            ok = true,
            nan = f64::NAN,
            tiny = 1e-7_f64,
            whole = 3.0_f64,
            client = Some("10.0.0.1"),
            missing = None::<&str>,
            shown = %"display\tvalue",
            debugged = ?vec!["x", "y"],
        );
        tracing::warn!(request_id = "r-1", error = %std::io::Error::other("boom \"quoted\""), "upstream request failed");
        let span = tracing::info_span!("op", name = "reload");
        let _in = span.enter();
        tracing::info!(answer = 42u64, "inside a span");
    }

    /// The lines of `events()` as written by the given JSON layer.
    fn lines(fast: bool) -> Vec<String> {
        let buf = Buf::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(buf.clone())
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        let subscriber = tracing_subscriber::registry();
        if fast {
            let layer = layer.event_format(JsonLines::new());
            tracing::subscriber::with_default(subscriber.with(layer), events);
        } else {
            tracing::subscriber::with_default(subscriber.with(layer), events);
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    /// A line with its timestamp's value blanked (the two runs differ in time).
    pub(crate) fn untimed(line: &str) -> String {
        let at = line.find("\"timestamp\":\"").expect("a timestamp") + 13;
        let end = at + line[at..].find('"').unwrap();
        format!("{}{}", &line[..at], &line[end..])
    }

    #[test]
    fn lines_are_byte_for_byte_tracing_subscribers_json() {
        let ours = lines(true);
        let theirs = lines(false);
        assert_eq!(ours.len(), 3, "{ours:?}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(untimed(a), untimed(b));
            serde_json::from_str::<serde_json::Value>(a).expect("valid JSON");
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let escapes = [
            'a', '/', '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', '\u{7f}', 'é', '€', '😀',
        ];
        // Mostly clean strings (the fast path), now and then one byte to escape.
        let mostly_clean = [
            'a', '/', ' ', '-', '9', '~', '\u{7f}', 'é', '€', '😀', 'z', '"',
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for alphabet in [escapes, mostly_clean] {
            for _ in 0..20_000 {
                let len = rng.usize(0..40);
                let s: String = (0..len)
                    .map(|_| match rng.usize(0..20) {
                        0 if alphabet == mostly_clean => '"',
                        _ => alphabet[rng.usize(0..alphabet.len() - 1)],
                    })
                    .collect();
                let mut ours = String::new();
                string(&mut ours, &s);
                assert_eq!(ours, serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_056_135_123_456);
        assert_eq!(
            timestamp(t).unwrap().as_str(),
            "2026-11-30T16:28:55.123456Z"
        );
        // The cached second is reused; the next second is formatted anew.
        let t2 = t + std::time::Duration::from_millis(1500);
        assert_eq!(
            timestamp(t2).unwrap().as_str(),
            "2026-11-30T16:28:56.623456Z"
        );
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH).unwrap().as_str(),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
