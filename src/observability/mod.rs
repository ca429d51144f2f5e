//! What the gateway tells its operator: logs, metrics and traces and the request id
//! that ties them together.

pub mod events;
pub mod lines;
pub mod log_json;
pub mod log_ring;
pub mod logging;
pub mod metrics;
pub mod request_id;
pub mod stats;
pub mod trace;

/// The target of access-log lines.
pub const ACCESS_TARGET: &str = "kairos::access";
