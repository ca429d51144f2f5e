//! The edge chain: CORS, authentication and rate limiting, in that order.

pub mod auth;
pub mod cors;
pub mod ratelimit;
