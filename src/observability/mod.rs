//! What the gateway tells its operator: logs (and, later, metrics and traces) and the request id
//! that ties them together.

pub mod logging;
pub mod request_id;
