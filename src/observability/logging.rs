//! Logging with tracing-subscriber: `RUST_LOG` wins over `logging.level`; `logging.format`
//! picks JSON lines or human-readable output. Access log lines use the target `kairos::access`.
//!
//! No worker ever waits on its log: a line is formatted on the worker and queued for one
//! background thread (tracing-appender's non-blocking writer) that writes it to stderr, or to
//! `logging.file`. When [`LOG_QUEUE_LINES`] lines are waiting (a slow or stalled reader of
//! stderr, a full disk), new lines are dropped and counted in `kairos_log_dropped_total`.
//! The file is reopened at its configured path on SIGUSR1 ([`reopen`]), after logrotate has
//! moved it away. Access-log lines, and warnings about a request, are also kept in the
//! in-memory ring the admin UI reads ([`super::log_ring`]).

use crate::config::model::{LogFormat, LoggingConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines waiting for the writer thread before new ones are dropped (a few MB of JSON lines).
pub const LOG_QUEUE_LINES: usize = 8192;

/// The writer's count of dropped lines, once logging is installed.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();
/// Set by [`reopen`]; the writer thread reopens the file before its next line.
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
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(cfg: &LoggingConfig) -> Result<LogGuard, LoggingError> {
    let sink: Box<dyn Write + Send> = match &cfg.file {
        Some(path) => Box::new(LogFile::open(path)?),
        None => Box::new(std::io::stderr()),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("kairos-log")
        .finish(sink);
    let dropped = writer.error_counter();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Each layer filters for itself: the log level applies to the log lines, and the
    // OpenTelemetry layer sees the gateway's operation spans whatever the level.
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match cfg.format {
        // A line inside an operation span carries the span's fields, its trace_id and span_id
        // among them (trace::ops::record_ids).
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
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
    let _ = DROPPED.set(dropped);
    Ok(LogGuard(Some(guard)))
}

/// Log lines dropped so far because the queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
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
