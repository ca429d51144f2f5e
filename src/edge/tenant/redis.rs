//! The Redis quota store: one atomic Lua script per decision checks the month's and the day's
//! counts and increments both (INCR, with an expiry) only when both are under their quota, so
//! every instance sharing the Redis enforces the same quota exactly. Refused requests are
//! counted in a key of their own. Keys:
//! `{prefix}quota:{len}:{tenant}:m:YYYY-MM`, `...:d:YYYY-MM-DD` and `...:r:YYYY-MM-DD`, kept
//! for [`KEEP_S`] (usage exports reach a year back).
//!
//! Each worker thread keeps its own multiplexed connection (its driver runs on that worker's
//! runtime). A call that fails or takes longer than [`TIMEOUT`] is reported to the caller,
//! which admits the request uncounted; after a failure Redis is not asked again for
//! [`PAUSE_AFTER_FAILURE`] (those requests are admitted uncounted at once, not after a
//! timeout each), and one warning is logged per outage.

use super::store::{DayCounts, StoreError};
use crate::base::clock::Date;
use crate::config::model::QuotaConfig;
use redis::aio::MultiplexedConnection;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a quota key lives: usage stays exportable for a year and a month.
pub const KEEP_S: u64 = 400 * 86_400;
/// Longest wait for Redis per decision.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis is left alone after a failed call.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// KEYS: month, day, refused-day. ARGV: monthly quota, daily quota (0: none), TTL seconds.
/// Returns {month count, day count, admitted (1 or 0)}.
const SCRIPT: &str = r#"
local lm = tonumber(ARGV[1])
local ld = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local m = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
if (lm > 0 and m >= lm) or (ld > 0 and d >= ld) then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ttl)
  return {m, d, 0}
end
m = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ttl)
d = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ttl)
return {m, d, 1}
"#;

struct Inner {
    client: redis::Client,
    prefix: String,
    /// Until when (monotonic ms, [`crate::base::clock::now_ms`]) Redis is not asked; 0: ask.
    paused_until: AtomicU64,
}

/// A handle on the quota Redis; clones share it.
#[derive(Clone)]
pub struct QuotaRedis {
    inner: Arc<Inner>,
    script: redis::Script,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<(Weak<Inner>, MultiplexedConnection)>> =
        const { RefCell::new(Vec::new()) };
}

impl QuotaRedis {
    pub fn new(url: &str, prefix: &str) -> Result<QuotaRedis, redis::RedisError> {
        Ok(QuotaRedis {
            inner: Arc::new(Inner {
                client: redis::Client::open(url)?,
                prefix: prefix.to_string(),
                paused_until: AtomicU64::new(0),
            }),
            script: redis::Script::new(SCRIPT),
        })
    }

    fn key(&self, tenant: &str, kind: char, period: &str) -> String {
        format!(
            "{}quota:{}:{tenant}:{kind}:{period}",
            self.inner.prefix,
            tenant.len()
        )
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let cached = CONNECTIONS.with(|c| {
            c.borrow()
                .iter()
                .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.inner)))
                .map(|(_, conn)| conn.clone())
        });
        if let Some(c) = cached {
            return Ok(c);
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            c.retain(|(w, _)| w.strong_count() > 0);
            c.push((Arc::downgrade(&self.inner), conn.clone()));
        });
        Ok(conn)
    }

    /// Whether Redis is being left alone after a failure.
    fn paused(&self) -> bool {
        let until = self.inner.paused_until.load(Ordering::Relaxed);
        until != 0 && crate::base::clock::now_ms() < until
    }

    /// A call failed: drop this worker's connection and leave Redis alone for a while (one
    /// warning per outage).
    fn failed(&self, error: &str) -> StoreError {
        self.forget();
        let until = crate::base::clock::now_ms() + PAUSE_AFTER_FAILURE.as_millis() as u64;
        if self.inner.paused_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(
                error,
                "quota store (redis) unreachable; tenant requests are admitted uncounted until it answers"
            );
        }
        StoreError(error.to_string())
    }

    /// A call succeeded: the outage, if any, is over.
    fn answered(&self) {
        if self.inner.paused_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("quota store (redis) answers again");
        }
    }

    fn forget(&self) {
        CONNECTIONS.with(|c| {
            c.borrow_mut().retain(|(w, _)| {
                w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.inner))
            })
        });
    }

    /// One decision for `tenant` on `date`: (month count, day count, admitted).
    pub async fn decide(
        &self,
        tenant: &str,
        date: Date,
        q: &QuotaConfig,
    ) -> Result<(u64, u64, bool), StoreError> {
        if self.paused() {
            return Err(StoreError("paused after a failure".into()));
        }
        let month = format!("{:04}-{:02}", date.year, date.month);
        let day = date.to_string();
        let mut conn = match tokio::time::timeout(TIMEOUT, self.connection()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(self.failed(&e.0)),
            Err(_) => return Err(self.failed("connect timed out")),
        };
        let mut call = self.script.prepare_invoke();
        call.key(self.key(tenant, 'm', &month))
            .key(self.key(tenant, 'd', &day))
            .key(self.key(tenant, 'r', &day))
            .arg(q.monthly.unwrap_or(0))
            .arg(q.daily.unwrap_or(0))
            .arg(KEEP_S);
        match tokio::time::timeout(TIMEOUT, call.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(v)) if v.len() == 3 => {
                self.answered();
                Ok((v[0].max(0) as u64, v[1].max(0) as u64, v[2] == 1))
            }
            Ok(Ok(v)) => Err(StoreError(format!("script returned {} values", v.len()))),
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed("no answer from redis in time")),
        }
    }

    /// The counts of `tenant` from day `from` to `to` (days since the epoch, inclusive).
    pub async fn days(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, DayCounts)>, StoreError> {
        let days: Vec<i64> = (from..=to).collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::with_capacity(days.len() * 2);
        for d in &days {
            let date = Date::from_days(*d).to_string();
            keys.push(self.key(tenant, 'd', &date));
            keys.push(self.key(tenant, 'r', &date));
        }
        let mut conn = self.connection().await?;
        let values: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(days
            .iter()
            .zip(values.chunks(2))
            .map(|(d, v)| {
                (
                    *d,
                    DayCounts {
                        requests: v.first().copied().flatten().unwrap_or(0),
                        refused: v.get(1).copied().flatten().unwrap_or(0),
                    },
                )
            })
            .collect())
    }
}
