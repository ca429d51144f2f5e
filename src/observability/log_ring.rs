//! The recent log lines the admin UI shows (`GET /_kairos/logs`, the `log` events of
//! `GET /_kairos/events`): a `tracing_subscriber` layer copies each access-log line (target
//! `kairos::access`, written only when `logging.access_log` is on) and each warn or error event
//! that carries a `request_id` into one bounded ring of [`RING_LINES`] lines per process.
//!
//! A line holds the fields the access log has, never a header value or a query string (the
//! access log's `path` has none), and its path is cut at [`MAX_PATH_BYTES`], so the ring's
//! memory is bounded (about 5,000 x 1 KB at most). Writing a line costs one allocation (its
//! text fields share one buffer) and one short lock; readers copy what they need under that lock, and stream
//! readers poll it from a sequence number of their own, so nothing is sent per request.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines the ring keeps; the oldest goes when a new one comes.
pub const RING_LINES: usize = 5000;
/// A longer path is cut (at a character boundary) and ends with `…`.
pub const MAX_PATH_BYTES: usize = 512;
/// A longer message is cut likewise.
const MAX_MESSAGE_BYTES: usize = 1024;

/// The text fields of a line, in [`LogLine`]'s order.
const TEXT_FIELDS: [&str; 9] = [
    "method",
    "path",
    "route",
    "upstream",
    "client",
    "identity",
    "tenant",
    "request_id",
    "message",
];
const ROUTE: usize = 2;
const CLIENT: usize = 4;
const REQUEST_ID: usize = 7;

/// One line: an access-log line (`kind` "access") or a warning or error about a request
/// ("event"). Its text fields share one buffer (one allocation per line, not one per field);
/// fields the line did not carry are absent.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Position in the ring's history (increasing, never reused).
    pub seq: u64,
    /// Unix milliseconds.
    pub ts: u64,
    pub level: &'static str,
    pub kind: &'static str,
    pub status: Option<u16>,
    pub latency_ms: Option<f64>,
    pub grpc_status: Option<u16>,
    text: String,
    /// Where each of [`TEXT_FIELDS`] is in `text` (start, end); `None` when absent.
    spans: [Option<(u16, u16)>; TEXT_FIELDS.len()],
}

impl Default for LogLine {
    fn default() -> Self {
        LogLine {
            seq: 0,
            ts: 0,
            level: "info",
            kind: "event",
            status: None,
            latency_ms: None,
            grpc_status: None,
            text: String::new(),
            spans: [None; TEXT_FIELDS.len()],
        }
    }
}

impl LogLine {
    /// Text field `i` of [`TEXT_FIELDS`].
    fn field(&self, i: usize) -> Option<&str> {
        let (a, b) = self.spans[i]?;
        self.text.get(usize::from(a)..usize::from(b))
    }

    /// Sets text field `i` (cut at `max` bytes); a line longer than 64 KB in all keeps the rest
    /// of its fields absent.
    fn set(&mut self, i: usize, value: &str, max: usize) {
        let value = cut(value, max);
        let start = self.text.len();
        let (Ok(a), Ok(b)) = (u16::try_from(start), u16::try_from(start + value.len())) else {
            return;
        };
        self.text.push_str(&value);
        self.spans[i] = Some((a, b));
    }

    pub fn route(&self) -> Option<&str> {
        self.field(ROUTE)
    }

    pub fn request_id(&self) -> Option<&str> {
        self.field(REQUEST_ID)
    }

    pub fn client(&self) -> Option<&str> {
        self.field(CLIENT)
    }
}

impl Serialize for LogLine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.ts);
        m.serialize_entry("ts", &crate::base::clock::rfc3339(t))?;
        m.serialize_entry("level", self.level)?;
        m.serialize_entry("kind", self.kind)?;
        for (i, name) in TEXT_FIELDS.iter().enumerate() {
            if let Some(v) = self.field(i) {
                m.serialize_entry(name, v)?;
            }
        }
        if let Some(v) = self.status {
            m.serialize_entry("status", &v)?;
        }
        if let Some(v) = self.latency_ms {
            m.serialize_entry("latency_ms", &v)?;
        }
        if let Some(v) = self.grpc_status {
            m.serialize_entry("grpc_status", &v)?;
        }
        m.end()
    }
}

/// What a reader asks for: every given filter must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub route: Option<String>,
    /// A status (`404`) or a class (`5xx`).
    pub status: Option<String>,
    pub client: Option<String>,
    pub request_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, l: &LogLine) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| match want {
            None => true,
            Some(w) => got == Some(w.as_str()),
        };
        let status = match self.status.as_deref() {
            None => true,
            Some(s) => l.status.is_some_and(|got| status_matches(s, got)),
        };
        status
            && eq(&self.route, l.route())
            && eq(&self.client, l.client())
            && eq(&self.request_id, l.request_id())
    }
}

/// `404` matches 404; `4xx` (or `4XX`) matches 400 to 499.
fn status_matches(want: &str, got: u16) -> bool {
    let b = want.as_bytes();
    if b.len() == 3 && b[1].eq_ignore_ascii_case(&b'x') && b[2].eq_ignore_ascii_case(&b'x') {
        return (b[0] as char).to_digit(10) == Some(u32::from(got / 100));
    }
    want.parse::<u16>() == Ok(got)
}

/// Whether `status` is a filter [`Filter::status`] understands.
pub fn valid_status_filter(status: &str) -> bool {
    let b = status.as_bytes();
    b.len() == 3
        && b[0].is_ascii_digit()
        && ((b[1].is_ascii_digit() && b[2].is_ascii_digit())
            || (b[1].eq_ignore_ascii_case(&b'x') && b[2].eq_ignore_ascii_case(&b'x')))
}

struct Lines {
    lines: VecDeque<LogLine>,
    next_seq: u64,
}

/// The ring: the last [`RING_LINES`] lines.
pub struct LogRing {
    inner: Mutex<Lines>,
}

impl LogRing {
    fn new() -> Self {
        LogRing {
            inner: Mutex::new(Lines {
                lines: VecDeque::with_capacity(RING_LINES),
                next_seq: 1,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, mut line: LogLine) {
        let mut l = self.lock();
        line.seq = l.next_seq;
        l.next_seq += 1;
        if l.lines.len() == RING_LINES {
            l.lines.pop_front();
        }
        l.lines.push_back(line);
    }

    /// The newest `limit` lines that match, oldest first.
    pub fn query(&self, filter: &Filter, limit: usize) -> Vec<LogLine> {
        let l = self.lock();
        let mut out: Vec<LogLine> = l
            .lines
            .iter()
            .rev()
            .filter(|line| filter.matches(line))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// The lines after sequence number `after` (the newest `limit` of them, oldest first),
    /// and the sequence number to ask from next time.
    pub fn since(&self, after: u64, limit: usize) -> (Vec<LogLine>, u64) {
        let l = self.lock();
        let mut out: Vec<LogLine> = l
            .lines
            .iter()
            .rev()
            .take_while(|line| line.seq > after)
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        (out, (l.next_seq - 1).max(after))
    }

    /// The sequence number of the newest line so far (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }
}

/// The process's ring (logging is process-wide, and so is the ring).
pub fn ring() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(LogRing::new)
}

/// The layer that fills [`ring`]: access-log lines, and warnings and errors (every target).
/// Its filter is static per callsite, so other events cost it nothing.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    RingLayer.with_filter(
        Targets::new()
            .with_target(crate::observability::ACCESS_TARGET, Level::INFO)
            .with_default(Level::WARN),
    )
}

struct RingLayer;

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let access = meta.target() == crate::observability::ACCESS_TARGET;
        let mut v = LineVisitor {
            line: LogLine {
                text: String::with_capacity(160),
                ..LogLine::default()
            },
        };
        event.record(&mut v);
        let mut line = v.line;
        if !access && line.request_id().is_none() {
            return;
        }
        line.ts = crate::base::clock::wall_ms();
        line.kind = if access { "access" } else { "event" };
        line.level = match *meta.level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        ring().push(line);
    }
}

/// Keeps an access-log line written without a tracing event (see
/// [`super::logging::LinePath`]): the line [`RingLayer`] makes of its event.
pub(super) fn push_access(a: &super::lines::AccessLine<'_>) {
    let mut line = LogLine {
        ts: crate::base::clock::wall_ms(),
        kind: "access",
        status: Some(a.status),
        latency_ms: Some((a.latency_ms * 1000.0).round() / 1000.0),
        grpc_status: a.grpc_status,
        text: String::with_capacity(160),
        ..LogLine::default()
    };
    let fields = [
        Some(a.method),
        Some(a.path),
        Some(a.route),
        Some(a.upstream),
        a.client,
        Some(a.identity),
        Some(a.tenant),
        Some(a.request_id),
        None,
    ];
    for (i, value) in fields.into_iter().enumerate() {
        // The access log writes "-" for what it does not know.
        if let Some(v) = value.filter(|v| *v != "-") {
            line.set(i, v, MAX_PATH_BYTES);
        }
    }
    ring().push(line);
}

struct LineVisitor {
    line: LogLine,
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        // The access log writes "-" for what it does not know.
        if value == "-" {
            return;
        }
        let name = field.name();
        if let Some(i) = TEXT_FIELDS.iter().position(|f| *f == name) {
            let max = match name {
                "message" => MAX_MESSAGE_BYTES,
                _ => MAX_PATH_BYTES,
            };
            self.line.set(i, value, max);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "status" => self.line.status = u16::try_from(value).ok(),
            "grpc_status" => self.line.grpc_status = u16::try_from(value).ok(),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(v) = u64::try_from(value) {
            self.record_u64(field, v);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "latency_ms" {
            self.line.latency_ms = Some((value * 1000.0).round() / 1000.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // The message, and fields given with `%` (Display) or `?`; only those the line keeps
        // are formatted.
        let name = field.name();
        if TEXT_FIELDS.contains(&name) {
            let text = format!("{value:?}");
            self.record_str(field, text.trim_matches('"'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(status: u16, route: &str, rid: &str) -> LogLine {
        let mut l = LogLine {
            status: Some(status),
            ..LogLine::default()
        };
        l.set(ROUTE, route, MAX_PATH_BYTES);
        l.set(REQUEST_ID, rid, MAX_PATH_BYTES);
        l
    }

    #[test]
    fn status_filters_take_codes_and_classes() {
        assert!(status_matches("5xx", 503));
        assert!(status_matches("5XX", 500));
        assert!(!status_matches("5xx", 404));
        assert!(status_matches("404", 404));
        assert!(!status_matches("404", 405));
        assert!(valid_status_filter("2xx") && valid_status_filter("201"));
        assert!(
            !valid_status_filter("2x")
                && !valid_status_filter("abc")
                && !valid_status_filter("x00")
        );
    }

    #[test]
    fn the_ring_is_bounded_and_readers_follow_it_by_sequence() {
        let ring = LogRing::new();
        for i in 0..RING_LINES + 10 {
            ring.push(line(200, "r", &format!("id-{i}")));
        }
        let all = ring.query(&Filter::default(), usize::MAX);
        assert_eq!(all.len(), RING_LINES);
        assert_eq!(all[0].request_id(), Some("id-10"));
        let last = ring.last_seq();
        ring.push(line(502, "other", "new"));
        let (lines, next) = ring.since(last, 100);
        assert_eq!(lines.len(), 1);
        assert_eq!(next, last + 1);
        let f = Filter {
            status: Some("5xx".into()),
            ..Filter::default()
        };
        let hits = ring.query(&f, 10);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].route(), Some("other"));
        // Newest last, limited from the newest end.
        let two = ring.query(&Filter::default(), 2);
        assert_eq!(two[1].request_id(), Some("new"));
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let long = "é".repeat(400);
        let c = cut(&long, MAX_PATH_BYTES);
        assert!(c.len() <= MAX_PATH_BYTES + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }

    #[test]
    fn a_line_serializes_the_fields_it_has() {
        let mut l = line(503, "users", "rid-1");
        l.ts = 1_796_056_135_123;
        l.kind = "access";
        l.set(1, "/users/1", MAX_PATH_BYTES);
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": "2026-11-30T16:28:55.123Z", "level": "info", "kind": "access",
                               "path": "/users/1", "route": "users", "request_id": "rid-1", "status": 503})
        );
    }
}
