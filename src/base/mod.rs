//! Mechanisms every part of the gateway shares and that know nothing of the gateway's config
//! or state: per-thread buffers for short byte strings, clocks, the background runtime, the
//! error the gateway answers with, IP helpers, hashing, redaction of URLs, TLS setup, the Redis
//! connection and returning freed memory to the OS. Imports nothing of the crate.

pub mod arena;
pub mod background;
pub mod clock;
pub mod error;
pub mod hash;
pub mod memory;
pub mod net;
pub mod redact;
pub mod redis;
pub mod tls;
