//! Mechanisms every part of the gateway shares and that know nothing of the gateway's config
//! or state: clocks, the background runtime, the error the gateway answers with, IP helpers,
//! hashing and TLS client/server setup. Imports nothing of the crate.

pub mod error;
pub mod tls;
