//! What the gateway tells its operator: logs, metrics and traces and the request id
//! that ties them together.

pub mod logging;
pub mod metrics;
pub mod request_id;
pub mod trace;
