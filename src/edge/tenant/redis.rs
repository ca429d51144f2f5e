//! The Redis quota store: one atomic Lua script per decision checks the month's and the day's
//! counts and increments both (INCR, with an expiry) only when both are under their quota, so
//! every instance sharing the Redis enforces the same quota exactly. Refused requests are
//! counted in a key of their own. Keys:
//! `{prefix}quota:{len}:{tenant}:m:YYYY-MM`, `...:d:YYYY-MM-DD` and `...:r:YYYY-MM-DD`, kept
//! for [`KEEP_S`] (usage exports reach a year back); on a Redis Cluster the tenant's hash
//! tag follows `quota:` so that all of a tenant's keys share a slot.
//!
//! The connection is the shared Redis layer's ([`crate::base::redis`]: one node, Sentinel or
//! Cluster, TLS), one per worker thread. A call that fails or takes longer than [`TIMEOUT`] is reported to the caller,
//! which admits the request uncounted; after a failure Redis is not asked again for
//! [`PAUSE_AFTER_FAILURE`] (those requests are admitted uncounted at once, not after a
//! timeout each), and one warning is logged per outage.

use super::store::{DayCounts, StoreError};
use crate::base::clock::Date;
use crate::base::redis::{Conn, InvalidRedisUrl, RedisClient, TlsFiles};
use crate::config::model::QuotaConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    client: Arc<RedisClient>,
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

impl QuotaRedis {
    /// `up` follows the connection's health (`kairos_redis_up{role="quota"}`).
    pub fn new(
        url: &str,
        tls: Option<&TlsFiles>,
        prefix: &str,
        up: prometheus::IntGauge,
    ) -> Result<QuotaRedis, InvalidRedisUrl> {
        let client = RedisClient::open(url, tls, TIMEOUT)?.with_up_gauge(up);
        Ok(QuotaRedis {
            inner: Arc::new(Inner {
                client: Arc::new(client),
                prefix: prefix.to_string(),
                paused_until: AtomicU64::new(0),
            }),
            script: redis::Script::new(SCRIPT),
        })
    }

    /// The client, for the readiness answer.
    pub fn client(&self) -> &Arc<RedisClient> {
        &self.inner.client
    }

    /// The key of `tenant`'s `kind` count for `period`. On a Cluster every key of a tenant
    /// carries the tenant's hash tag, so one decision's month and day keys (and a usage
    /// export's days) share a slot.
    fn key(&self, tenant: &str, kind: char, period: &str) -> String {
        let tag = match self.inner.client.target() {
            "cluster" => crate::base::redis::hash_tag(tenant),
            _ => String::new(),
        };
        format!(
            "{}quota:{tag}{}:{tenant}:{kind}:{period}",
            self.inner.prefix,
            tenant.len()
        )
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        self.inner.client.connection().await.map_err(StoreError)
    }

    /// Whether Redis is being left alone after a failure.
    fn paused(&self) -> bool {
        let until = self.inner.paused_until.load(Ordering::Relaxed);
        until != 0 && crate::base::clock::now_ms() < until
    }

    /// A call failed: drop this worker's connection and leave Redis alone for a while (one
    /// warning per outage).
    fn failed(&self, error: &str) -> StoreError {
        self.inner.client.forget();
        self.inner.client.mark(false);
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
        self.inner.client.mark(true);
        if self.inner.paused_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("quota store (redis) answers again");
        }
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
