//! The gateway's own state changes as live events for the admin UI's stream
//! (`GET /_kairos/events`): a server going down or up, a breaker opening or closing, an
//! ejection and a return (`upstream`), a config reload applied (`config`). One broadcast per
//! process; an event is serialized and sent only while a stream listens, and a subscriber
//! that falls [`CAPACITY`] events behind is told it lagged (the stream then drops it), so
//! no sender ever waits.

use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Events a subscriber may fall behind before it is dropped.
pub const CAPACITY: usize = 256;

/// One event: its SSE name and its data, one line of JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: Arc<str>,
}

fn hub() -> &'static broadcast::Sender<Event> {
    static HUB: OnceLock<broadcast::Sender<Event>> = OnceLock::new();
    HUB.get_or_init(|| broadcast::channel(CAPACITY).0)
}

/// The events from now on.
pub fn subscribe() -> broadcast::Receiver<Event> {
    hub().subscribe()
}

/// Sends an event built by `data` when a stream listens (`data` is not called otherwise).
pub fn publish(name: &'static str, data: impl FnOnce() -> serde_json::Value) {
    let hub = hub();
    if hub.receiver_count() == 0 {
        return;
    }
    let _ = hub.send(Event {
        name,
        data: Arc::from(data().to_string()),
    });
}

/// A server of an upstream changed state: `event` is one of `down`, `up`, `breaker_open`,
/// `breaker_half_open`, `breaker_closed`, `ejected`, `returned`.
pub fn upstream(upstream: &str, server: &str, event: &'static str, detail: Option<&str>) {
    publish("upstream", || {
        let mut v = serde_json::json!({
            "ts": crate::base::clock::wall_ms(),
            "upstream": upstream,
            "server": server,
            "event": event,
        });
        if let Some(d) = detail {
            v["detail"] = d.into();
        }
        v
    });
}

/// A reload was applied; `config_hash` is the new config's SHA-256.
pub fn config_applied(config_hash: &str) {
    publish(
        "config",
        || serde_json::json!({ "ts": crate::base::clock::wall_ms(), "config_hash": config_hash }),
    );
}
