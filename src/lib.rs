//! kairos-rs: an HTTP API gateway and reverse proxy.
//!
//! The crate is built in layers; every import points down (tests/layers.rs checks it):
//!
//! - [`base`]: clocks, the background runtime, the gateway's error answer, IP helpers, hashing,
//!   TLS. Imports nothing of the crate.
//! - [`config`]: the config file read, validated (every error at once, with path and line)
//!   and compiled into the model, route table and CORS policies included.
//! - [`observability`]: metrics (every name in one file), traces, logs, request ids.
//! - [`upstream`], [`edge`] and [`cache`]: servers, balancing, health, breakers and the pooled
//!   client; the edge chain (CORS, authentication, rate limiting), ordered in
//!   [`edge::Edge::admit`]; the response cache's policy and store.
//! - [`runtime`]: the live state built from one config, swapped whole on reload.
//! - [`proxy`] and [`admin`]: the request path as named phases ([`proxy::handle`]); the
//!   `/_kairos` scope.
//! - [`server`]: the listener and the actix app; [`cli`]: the command line.

pub mod admin;
pub mod base;
pub mod cache;
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
