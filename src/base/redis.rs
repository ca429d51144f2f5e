//! The connection to a Redis shared by the gateway's Redis users (rate limits, the response
//! cache): a client, its timeout, and one multiplexed connection per worker thread (its
//! driver runs on that worker's runtime: no cross-thread hop per call). What a failure means
//! (an outage, a fallback) is each user's own business.

use redis::aio::MultiplexedConnection;
use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The Redis URL could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid redis_url")]
pub struct InvalidRedisUrl;

/// One Redis: its client and the timeout of every connect and call.
pub struct RedisClient {
    client: redis::Client,
    timeout: Duration,
}

thread_local! {
    /// This worker's connection to each Redis client alive in the process.
    static CONNECTIONS: RefCell<Vec<(Weak<RedisClient>, MultiplexedConnection)>> =
        const { RefCell::new(Vec::new()) };
}

impl RedisClient {
    /// A client for `url` (nothing is connected yet).
    pub fn open(url: &str, timeout: Duration) -> Result<Arc<RedisClient>, InvalidRedisUrl> {
        let client = redis::Client::open(url).map_err(|_| InvalidRedisUrl)?;
        Ok(Arc::new(RedisClient { client, timeout }))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A new connection, connect and calls bounded by the timeout.
    pub async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// This worker's connection, if it has one.
    pub fn cached(self: &Arc<Self>) -> Option<MultiplexedConnection> {
        CONNECTIONS.with(|c| {
            c.borrow()
                .iter()
                .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)))
                .map(|(_, conn)| conn.clone())
        })
    }

    /// Keeps `conn` as this worker's connection, unless another call stored one first: the
    /// connection to use.
    pub fn keep(self: &Arc<Self>, conn: MultiplexedConnection) -> MultiplexedConnection {
        if let Some(existing) = self.cached() {
            return existing;
        }
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            // Connections of clients that are gone (replaced by a reload) are dropped here.
            c.retain(|(w, _)| w.strong_count() > 0);
            c.push((Arc::downgrade(self), conn.clone()));
        });
        conn
    }

    /// Drops this worker's connection (after a failure: the next call connects afresh).
    pub fn forget(self: &Arc<Self>) {
        CONNECTIONS.with(|c| {
            c.borrow_mut().retain(|(w, _)| {
                w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(self))
            })
        });
    }

    /// This worker's connection, or a new one within the timeout (then kept).
    pub async fn connection(self: &Arc<Self>) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        match tokio::time::timeout(self.timeout, self.connect()).await {
            // Several calls may have connected at once: one connection is kept and used by
            // all, the others are dropped here.
            Ok(Ok(c)) => Ok(self.keep(c)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }
}

impl RedisClient {
    /// A connection of its own for `SUBSCRIBE`, within the timeout.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }
}

/// Whether a failed call means the connection (or Redis) is gone, rather than an error answer.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
}
