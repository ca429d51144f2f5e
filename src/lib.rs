//! kairos-rs: an HTTP API gateway and reverse proxy.

pub mod admin;
pub mod base;
pub mod cli;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzz;
pub mod observability;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod upstream;
