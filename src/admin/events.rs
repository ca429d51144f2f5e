//! `GET /_kairos/events`: the admin UI's live stream, one Server-Sent Events response per
//! client, authenticated by its `Authorization` header (the UI reads it with `fetch()`; the
//! token never goes in a URL). Events: `stats` once a second, `log` (the new lines of the log
//! ring, at most every [`LOG_BATCH_MS`] and [`LOG_BATCH_LINES`] lines), `upstream` and
//! `config` as they happen; a `: keepalive` comment every [`KEEPALIVE_SECS`] s.
//!
//! Nothing waits for a stream: its events come from broadcasts that never block a sender and
//! from a poll of the log ring. A client that does not read falls behind and is dropped (its
//! stream ends) when it lags; a graceful shutdown ends every stream.

use super::refuse;
use crate::observability::{events, log_ring};
use crate::runtime::SharedState;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Milliseconds between two `log` events at most.
pub const LOG_BATCH_MS: u64 = 250;
/// Lines per `log` event at most: under heavier traffic a batch carries the newest ones.
pub const LOG_BATCH_LINES: usize = 500;
/// Seconds between keep-alive comments.
pub const KEEPALIVE_SECS: u64 = 15;

struct Stream {
    stats: tokio::sync::broadcast::Receiver<Arc<str>>,
    events: tokio::sync::broadcast::Receiver<events::Event>,
    log_after: u64,
    log_tick: tokio::time::Interval,
    keepalive: tokio::time::Interval,
    draining: tokio::sync::watch::Receiver<bool>,
    opened: bool,
}

/// The data of a `log` event.
#[derive(serde::Serialize)]
struct Lines<'a> {
    lines: &'a [log_ring::LogLine],
}

fn frame(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl Stream {
    /// The next chunk of the response; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            // Sent at once, so the client sees the response head and knows it is connected.
            return Some(Bytes::from_static(b": connected\n\n"));
        }
        loop {
            tokio::select! {
                r = self.stats.recv() => return match r {
                    Ok(data) => Some(frame("stats", &data)),
                    Err(RecvError::Lagged(_) | RecvError::Closed) => None,
                },
                r = self.events.recv() => return match r {
                    Ok(e) => Some(frame(e.name, &e.data)),
                    Err(RecvError::Lagged(_) | RecvError::Closed) => None,
                },
                _ = self.log_tick.tick() => {
                    let (lines, next) = log_ring::ring().since(self.log_after, LOG_BATCH_LINES);
                    self.log_after = next;
                    if !lines.is_empty() {
                        // Serialized straight from the lines (no JSON value tree in between).
                        let data = serde_json::to_string(&Lines { lines: &lines }).unwrap_or_default();
                        return Some(frame("log", &data));
                    }
                }
                _ = self.keepalive.tick() => return Some(Bytes::from_static(b": keepalive\n\n")),
                _ = self.draining.wait_for(|d| *d) => return None,
            }
        }
    }
}

pub async fn events(req: HttpRequest, state: web::Data<SharedState>) -> HttpResponse {
    if let Some(res) = refuse(&req, &state) {
        return res;
    }
    let start = tokio::time::Instant::now();
    let stream = Stream {
        stats: state.stats.subscribe(),
        events: events::subscribe(),
        log_after: log_ring::ring().last_seq(),
        log_tick: tokio::time::interval_at(
            start + Duration::from_millis(LOG_BATCH_MS),
            Duration::from_millis(LOG_BATCH_MS),
        ),
        keepalive: tokio::time::interval_at(
            start + Duration::from_secs(KEEPALIVE_SECS),
            Duration::from_secs(KEEPALIVE_SECS),
        ),
        draining: state.draining(),
        opened: false,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), s))
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Proxies in front of the gateway must not buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}
