//! kairos-rs: an HTTP API gateway and reverse proxy.
//!
//! The request path, top to bottom: [`server`] accepts connections and hands each request to
//! [`proxy::handle`], which matches a route ([`proxy::router`]), picks an upstream server
//! ([`upstream::balancer`]), rewrites headers ([`proxy::headers`]) and streams the exchange
//! through the pooled client in [`proxy::forward`]. The `/_kairos` scope lives in [`admin`];
//! the one live state both read is [`state::SharedState`].

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzz;
pub mod observability;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod remote;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
