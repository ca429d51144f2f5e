//! Logging with tracing-subscriber: `RUST_LOG` wins over `logging.level`; `logging.format`
//! picks JSON lines or human-readable output. Access log lines use the target `kairos::access`.
//!
//! No worker ever waits on its log: a line is formatted on the worker and appended to one
//! shared buffer that a background thread (`kairos-log`) swaps out and writes to stderr, or to
//! `logging.file`, in batches: one `write` for all the lines of [`FLUSH_EVERY`], never a wake
//! per line. Appending costs one short lock and a copy (no allocation once the buffer has
//! grown); the thread is woken only by the first line after it went idle, or when
//! [`WAKE_BYTES`] are waiting. When [`LOG_QUEUE_LINES`] lines are waiting (a slow or stalled
//! reader of stderr, a full disk), new lines are dropped and counted in
//! `kairos_log_dropped_total`. The file is reopened at its configured path on SIGUSR1
//! ([`reopen`]), after logrotate has moved it away. Access-log lines, and warnings about a
//! request, are also kept in the in-memory ring the admin UI reads ([`super::log_ring`]).
//!
//! The writer this replaced (tracing-appender's non-blocking one) sent each line through a
//! channel as a `Vec` of its own and woke its thread for it, which wrote it with a `write` of
//! its own: with the proxy pinned to one CPU, that wake and that syscall per line cost more
//! than the rest of the access log.

use crate::config::model::{LogFormat, LoggingConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines waiting for the writer thread before new ones are dropped (a few MB of JSON lines).
pub const LOG_QUEUE_LINES: usize = 8192;
/// How long the writer thread gathers lines before it writes them, once it has one.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Waiting bytes that wake the writer thread before [`FLUSH_EVERY`] is over.
pub const WAKE_BYTES: usize = 256 * 1024;

/// Lines dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The queue of the installed subscriber, for lines written without a tracing event.
static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();
/// How access-log and audit lines are written (see [`LinePath`]), decided once by [`init`].
static LINE_PATHS: OnceLock<(LinePath, LinePath)> = OnceLock::new();

/// How a per-request line of a target (the access log's, the audit log's) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinePath {
    /// As a tracing event (the human-readable format, or a subscriber [`init`] did not
    /// install, as in tests): every layer sees it.
    Event,
    /// JSON lines, and the log filter lets the target's info lines through: the line is
    /// written straight to the log queue ([`push_line`]) (an access line also to the admin
    /// UI's ring).
    Json,
    /// JSON lines, and the log filter drops the target's info lines: only an access line is
    /// kept, in the ring.
    Filtered,
}

/// How access-log lines (`kairos::access`) are written in this process. The filter is fixed
/// at start-up (`logging` takes effect only after a restart), so the answer never changes.
pub fn access_path() -> LinePath {
    LINE_PATHS.get().map_or(LinePath::Event, |p| p.0)
}

/// How audit lines (`kairos::audit`, at info) are written; see [`access_path`].
pub fn audit_path() -> LinePath {
    LINE_PATHS.get().map_or(LinePath::Event, |p| p.1)
}

/// Queues one whole line (with its newline) for the log writer, as the formatter's writes do.
/// Without an installed subscriber: nothing.
pub fn push_line(line: &[u8]) {
    if let Some(q) = QUEUE.get() {
        q.push(line);
    }
}
/// Set by [`reopen`]; the writer thread reopens the file before its next write.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open the log file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Keeps the writer thread; dropping it writes out the queued lines (up to a second). Hold it
/// until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] Option<Stopper>);

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(cfg: &LoggingConfig) -> Result<LogGuard, LoggingError> {
    let sink: Box<dyn Write + Send> = match &cfg.file {
        Some(path) => Box::new(LogFile::open(path)?),
        None => Box::new(std::io::stderr()),
    };
    let queue = Arc::new(Queue::default());
    let writer = Writer(queue.clone());
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let path = |target: Target| match cfg.format {
        LogFormat::Json => json_path(filter(), target),
        LogFormat::Pretty => LinePath::Event,
    };
    let paths = (path(Target::Access), path(Target::Audit));
    let filter = filter();
    // Each layer filters for itself: the log level applies to the log lines, and the
    // OpenTelemetry layer sees the gateway's operation spans whatever the level.
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match cfg.format {
        // A line inside an operation span carries the span's fields, its trace_id and span_id
        // among them (trace::ops::record_ids).
        // Written by our own formatter (super::log_json), the same lines as
        // tracing-subscriber's JSON format; JSON field formatting for the spans' fields.
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(super::log_json::JsonLines::new())
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => fmt.compact().with_filter(filter).boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(crate::observability::trace::ops::layer())
        .with(crate::observability::log_ring::layer())
        .try_init();
    if installed.is_err() {
        return Ok(LogGuard(None));
    }
    let _ = QUEUE.set(queue.clone());
    let _ = LINE_PATHS.set(paths);
    // Lines logged before the thread runs wait in the queue (no wake is asked for before the
    // thread first says it is idle, and it names itself before that).
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let thread = {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name("kairos-log".into())
            .spawn(move || {
                let _ = queue.thread.set(std::thread::current());
                write_out(&queue, sink);
                let _ = done_tx.try_send(());
            })
    };
    match thread {
        Ok(_) => Ok(LogGuard(Some(Stopper {
            queue,
            done: done_rx,
        }))),
        // Nothing to write the lines: they wait until the queue is full, then are counted
        // as dropped; the gateway runs on.
        Err(e) => {
            eprintln!("kairos-rs: cannot start the log writer thread: {e}");
            Ok(LogGuard(None))
        }
    }
}

/// The targets of the lines [`LinePath`] is about.
#[derive(Debug, Clone, Copy)]
enum Target {
    Access,
    Audit,
}

/// How a JSON line of `target` is written under `filter`: straight to the queue when the
/// filter lets its info lines through, asked once of a subscriber that has only the filter,
/// as it judges an event outside any span (where the access and audit lines are). A filter
/// with span or field directives (`[...]`) judges each event by its fields, which a probe
/// cannot stand for: its lines stay events. Written directly, a line no longer cost the full
/// chain a tracing event's dispatch to three layers, per-layer filtering and field visitors
/// (about 4,000 instructions a request for the access line, 1,600 for the audit line).
fn json_path(filter: EnvFilter, target: Target) -> LinePath {
    if filter.to_string().contains('[') {
        return LinePath::Event;
    }
    let probe = tracing_subscriber::registry().with(filter);
    let through = tracing::subscriber::with_default(probe, || match target {
        Target::Access => tracing::enabled!(target: "kairos::access", tracing::Level::INFO),
        Target::Audit => tracing::enabled!(target: "kairos::audit", tracing::Level::INFO),
    });
    match through {
        true => LinePath::Json,
        false => LinePath::Filtered,
    }
}

/// Log lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The lines waiting for the writer thread.
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// The writer thread is parked until a line comes (set by the thread, taken by the first
    /// line that finds it set).
    idle: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Queues one line (the formatter hands over a whole line per write).
    fn push(&self, line: &[u8]) {
        let (was_empty, len) = {
            let mut p = self.lock();
            if p.lines >= LOG_QUEUE_LINES {
                drop(p);
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let was_empty = p.bytes.is_empty();
            p.bytes.extend_from_slice(line);
            p.lines += 1;
            (was_empty, p.bytes.len())
        };
        if (was_empty && self.idle.swap(false, Ordering::AcqRel))
            || (len >= WAKE_BYTES && len - line.len() < WAKE_BYTES)
        {
            self.wake();
        }
    }

    /// Swaps the waiting lines into `out` (empty), leaving its buffer in their place.
    fn take(&self, out: &mut Vec<u8>) {
        let mut p = self.lock();
        std::mem::swap(&mut p.bytes, out);
        p.lines = 0;
    }
}

/// The writer thread: waits for a line, gathers for [`FLUSH_EVERY`], writes what waits in one
/// go, until stopped (then writes what is left).
fn write_out(queue: &Queue, mut sink: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    loop {
        let stop = queue.stop.load(Ordering::Acquire);
        queue.take(&mut batch);
        if !batch.is_empty() {
            // A failed write (a closed stderr) loses these lines; there is nowhere to say so.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            // A batch larger than a full queue is not kept for the next.
            batch.shrink_to(WAKE_BYTES * 2);
        }
        if stop {
            return;
        }
        // Idle until a line comes; checked after saying so, so that no wake is lost.
        queue.idle.store(true, Ordering::Release);
        let empty = queue.lock().bytes.is_empty();
        if empty && !queue.stop.load(Ordering::Acquire) {
            std::thread::park();
        }
        queue.idle.store(false, Ordering::Release);
        if !queue.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(FLUSH_EVERY);
        }
    }
}

/// Stops the writer thread when the guard is dropped, after it wrote what was queued.
struct Stopper {
    queue: Arc<Queue>,
    done: mpsc::Receiver<()>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.queue.stop.store(true, Ordering::Release);
        self.queue.wake();
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

/// The formatter's writer: each write is one whole line, queued for the writer thread.
#[derive(Clone)]
struct Writer(Arc<Queue>);

impl<'a> MakeWriter<'a> for Writer {
    type Writer = &'a Queue;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

impl Write for &Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reopens `logging.file` at its path before the next line (SIGUSR1). Without a file: nothing.
pub fn reopen() {
    REOPEN.store(true, Ordering::Release);
}

/// `logging.file`, appended to; owned by the writer thread.
struct LogFile {
    path: PathBuf,
    file: std::fs::File,
}

impl LogFile {
    fn open(path: &Path) -> Result<Self, LoggingError> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: open_append(path).map_err(|source| LoggingError::Open {
                path: path.to_path_buf(),
                source,
            })?,
        })
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if REOPEN.swap(false, Ordering::AcqRel) {
            match open_append(&self.path) {
                Ok(f) => self.file = f,
                // The log itself is where this would go: say it on stderr, keep the old file.
                Err(e) => eprintln!(
                    "kairos-rs: cannot reopen the log file {}: {e}; still writing to the old one",
                    self.path.display()
                ),
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_written_directly_only_where_a_probe_can_judge_the_filter() {
        let path = |spec: &str, target| json_path(EnvFilter::new(spec), target);
        for (spec, access, audit) in [
            ("info", LinePath::Json, LinePath::Json),
            ("debug", LinePath::Json, LinePath::Json),
            ("warn", LinePath::Filtered, LinePath::Filtered),
            (
                "info,kairos::access=off",
                LinePath::Filtered,
                LinePath::Json,
            ),
            (
                "warn,kairos::audit=info",
                LinePath::Filtered,
                LinePath::Json,
            ),
            ("error,kairos=debug", LinePath::Json, LinePath::Json),
            // Field and span directives judge each event by its fields: events stay.
            ("warn,[{request_id}]=info", LinePath::Event, LinePath::Event),
            (
                "info,kairos::access[{client}]=off",
                LinePath::Event,
                LinePath::Event,
            ),
        ] {
            assert_eq!(path(spec, Target::Access), access, "{spec}");
            assert_eq!(path(spec, Target::Audit), audit, "{spec}");
        }
    }
}
