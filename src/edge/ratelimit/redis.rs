//! The Redis backend: every decision is one atomic Lua script (EVALSHA, loaded on NOSCRIPT),
//! so several gateways pointing at one Redis share each limit exactly. The script reads
//! Redis' own clock (TIME), so the gateways' clocks may drift, and gives every key a TTL of
//! the time its bucket takes to refill.
//!
//! Each worker thread keeps its own multiplexed connection ([`crate::base::redis`], shared
//! with the response cache's Redis tier). A failed or slow call sends its own request to
//! the fallback; [`OUTAGE_AFTER`] failures in a row (see [`FailureStreak`]) mark the backend
//! down for every worker at once: one warning, then decisions go to the fallback without
//! asking Redis while a probe on the background thread reconnects; the first successful probe
//! brings Redis back.

use super::gcra::Rate;
pub use crate::base::redis::InvalidRedisUrl;
use crate::base::redis::{Conn, RedisClient, TlsFiles};
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Microseconds: Lua numbers are doubles, exact to 2^53 (285 years of microseconds).
pub const UNITS_PER_SECOND: f64 = 1e6;

/// KEYS: one bucket per limit. ARGV: interval and tolerance (µs) of each, in KEYS order.
/// Returns {admitted (1 or 0), now, the TAT of each bucket}: the new TAT when the request is
/// admitted (all buckets advance together), else the unchanged one (none does).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1, now}
local cur, nxt = {}, {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  cur[i] = tat
  local base = tat
  if base < now then base = now end
  nxt[i] = base + interval
  if nxt[i] - now > tolerance then out[1] = 0 end
end
for i = 1, #KEYS do
  if out[1] == 1 then
    local ttl = math.ceil((nxt[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', nxt[i]), 'PX', string.format('%.0f', ttl))
    out[i + 2] = nxt[i]
  else
    out[i + 2] = cur[i]
  end
end
return out
"#;

/// Failures in a row (each call started after the previous one was seen) that mark the
/// backend down. One slow answer on a busy machine is not an outage; three fresh attempts
/// that all fail are.
pub const OUTAGE_AFTER: u32 = 3;

/// The count of consecutive failed calls that decides when Redis is down. A failure counts
/// only if its call started after the last counted failure: the calls in flight during one
/// stall all time out together and count once. Any answer from Redis ends the streak.
#[derive(Debug, Default)]
pub struct FailureStreak {
    count: u32,
    /// When the last counted failure was seen.
    last: Option<Instant>,
}

impl FailureStreak {
    /// A call that started at `started` failed at `now`: whether the backend is now down.
    pub fn failed(&mut self, started: Instant, now: Instant) -> bool {
        if self.last.is_none_or(|last| started >= last) {
            self.count += 1;
            self.last = Some(now);
        }
        self.count >= OUTAGE_AFTER
    }

    /// Redis answered: the streak is over.
    pub fn answered(&mut self) {
        *self = FailureStreak::default();
    }

    /// The failures counted so far.
    pub fn failures(&self) -> u32 {
        self.count
    }
}

/// Redis did not decide (down, failed or too slow): the caller falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What Redis decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub admitted: bool,
    /// Redis' clock, µs.
    pub now: u64,
    /// The TAT of each bucket, in the order asked.
    pub tats: Vec<u64>,
}

struct Shared {
    /// The client and this worker's connection ([`crate::base::redis`]).
    conn: Arc<RedisClient>,
    timeout: Duration,
    up: AtomicBool,
    /// Failed calls in a row while up; `streak_len` mirrors its length for the hot path.
    streak: Mutex<FailureStreak>,
    streak_len: AtomicU32,
    /// Bumped at each recovery: a call that started before it cannot start a new outage.
    recoveries: AtomicU64,
    /// When an error answer (not an outage) was last logged, to log at most one a minute.
    last_error_log: Mutex<Option<Instant>>,
    /// Where the probe runs the real script.
    probe_key: String,
    /// When the current outage began.
    down_since: Mutex<Option<Instant>>,
    errors: IntCounter,
    up_gauge: IntGauge,
    /// What happens meanwhile, for the warning.
    meanwhile: &'static str,
}

/// A handle on one Redis backend; clones share its connections and outage state.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    script: redis::Script,
}

impl RedisStore {
    /// `redis_up` follows the connection's health (`kairos_redis_up{role="rate_limit"}`);
    /// `up_gauge` whether decisions go to Redis.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        tls: Option<&TlsFiles>,
        timeout: Duration,
        key_prefix: &str,
        errors: IntCounter,
        up_gauge: IntGauge,
        redis_up: IntGauge,
        meanwhile: &'static str,
    ) -> Result<RedisStore, InvalidRedisUrl> {
        let conn = Arc::new(RedisClient::open(url, tls, timeout)?.with_up_gauge(redis_up));
        up_gauge.set(1);
        Ok(RedisStore {
            shared: Arc::new(Shared {
                conn,
                timeout,
                up: AtomicBool::new(true),
                streak: Mutex::new(FailureStreak::default()),
                streak_len: AtomicU32::new(0),
                recoveries: AtomicU64::new(0),
                last_error_log: Mutex::new(None),
                probe_key: format!("{key_prefix}probe"),
                down_since: Mutex::new(None),
                errors,
                up_gauge,
                meanwhile,
            }),
            script: redis::Script::new(SCRIPT),
        })
    }

    /// Whether decisions go to Redis (false during an outage).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Whether the keys must carry hash tags (a Redis Cluster).
    pub fn is_cluster(&self) -> bool {
        self.shared.conn.target() == "cluster"
    }

    /// The client, for the readiness answer.
    pub fn client(&self) -> &Arc<RedisClient> {
        &self.shared.conn
    }

    /// One decision over `buckets` (key, rate in µs); `Err` when Redis failed or is down
    /// (the caller falls back).
    pub async fn decide(&self, buckets: &[(String, Rate)]) -> Result<Verdict, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable);
        }
        let epoch = self.shared.recoveries.load(Ordering::Acquire);
        let started = Instant::now();
        let mut conn = self.connection(epoch, started).await?;
        let mut call = self.script.prepare_invoke();
        for (key, _) in buckets {
            call.key(key.as_str());
        }
        for (_, rate) in buckets {
            call.arg(rate.interval).arg(rate.tolerance);
        }
        let out = tokio::time::timeout(
            self.shared.timeout,
            call.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await;
        match out {
            Ok(Ok(v)) if v.len() == buckets.len() + 2 => {
                self.answered();
                Ok(Verdict {
                    admitted: v[0] == 1,
                    now: v[1].max(0) as u64,
                    tats: v[2..].iter().map(|&t| t.max(0) as u64).collect(),
                })
            }
            Ok(Ok(v)) => {
                self.answered();
                Err(self.error_answer(&format!("script returned {} values", v.len())))
            }
            Ok(Err(e)) if crate::base::redis::is_connection_error(&e) => {
                self.forget();
                Err(self.failed(epoch, started, &e.to_string()))
            }
            // Redis answered, with an error (a key of the wrong type, OOM, READONLY): this
            // request falls back; Redis is not down.
            Ok(Err(e)) => {
                self.answered();
                Err(self.error_answer(&e.to_string()))
            }
            Err(_) => {
                // The connection may be dead without an error (a peer gone silent): the next
                // request connects afresh.
                self.forget();
                Err(self.failed(epoch, started, "no answer within redis_timeout"))
            }
        }
    }

    /// The shared connection, or a new one within `redis_timeout`; a failure counts toward
    /// marking the backend down.
    async fn connection(&self, epoch: u64, started: Instant) -> Result<Conn, Unavailable> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        match tokio::time::timeout(self.shared.timeout, self.connect()).await {
            // Several requests may have connected at once: one connection is kept and used by
            // all, the others are dropped here.
            Ok(Ok(c)) => Ok(self.keep(c)),
            Ok(Err(e)) => Err(self.failed(epoch, started, &e.to_string())),
            Err(_) => Err(self.failed(epoch, started, "connect timed out")),
        }
    }

    /// Whether Redis answers a PING now (for readiness): a failure counts toward marking the
    /// backend down as a failed decision does (three in a row; one warning, the background
    /// probe brings it back).
    pub async fn check(&self) -> bool {
        if !self.is_up() {
            return false;
        }
        let epoch = self.shared.recoveries.load(Ordering::Acquire);
        let started = Instant::now();
        let Ok(mut conn) = self.connection(epoch, started).await else {
            return false;
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.shared.timeout, ping).await {
            Ok(Ok(_)) => {
                self.answered();
                true
            }
            Ok(Err(e)) => {
                self.forget();
                self.failed(epoch, started, &e.to_string());
                false
            }
            Err(_) => {
                self.forget();
                self.failed(epoch, started, "no answer within redis_timeout");
                false
            }
        }
    }

    /// Counts an error answer and logs it at most once a minute.
    fn error_answer(&self, error: &str) -> Unavailable {
        let s = &self.shared;
        s.errors.inc();
        let mut last = s.last_error_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(
                backend = "redis",
                error,
                "rate limit backend answered with an error; {} for such requests (logged at most once a minute)",
                s.meanwhile
            );
        }
        Unavailable
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        self.shared.conn.connect().await
    }

    fn cached(&self) -> Option<Conn> {
        self.shared.conn.cached()
    }

    fn keep(&self, conn: Conn) -> Conn {
        self.shared.conn.keep(conn)
    }

    fn forget(&self) {
        self.shared.conn.forget()
    }

    /// Redis answered (a verdict or an error answer): ends a streak of failures.
    fn answered(&self) {
        let s = &self.shared;
        s.conn.mark(true);
        if s.streak_len.load(Ordering::Relaxed) != 0 {
            let mut streak = s.streak.lock().unwrap_or_else(|e| e.into_inner());
            streak.answered();
            s.streak_len.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure of a call that started at `started` in recovery epoch `epoch`. The
    /// [`OUTAGE_AFTER`]th in a row marks the backend down, warns once and starts the probe;
    /// the ones before send only their own request to the fallback. A call that started
    /// before the last recovery (it failed against the Redis that was down) starts no new
    /// outage.
    fn failed(&self, epoch: u64, started: Instant, error: &str) -> Unavailable {
        let s = &self.shared;
        s.errors.inc();
        s.conn.mark(false);
        if s.recoveries.load(Ordering::Acquire) != epoch {
            return Unavailable;
        }
        let (down, len) = {
            let mut streak = s.streak.lock().unwrap_or_else(|e| e.into_inner());
            let down = streak.failed(started, Instant::now());
            s.streak_len.store(streak.failures(), Ordering::Relaxed);
            (down, streak.failures())
        };
        if !down {
            tracing::debug!(
                backend = "redis",
                error,
                failures_in_a_row = len,
                "rate limit backend call failed; this request falls back (the backend is \
                 marked down after {OUTAGE_AFTER} in a row)"
            );
            return Unavailable;
        }
        if s.up.swap(false, Ordering::AcqRel) {
            s.up_gauge.set(0);
            *s.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            tracing::warn!(
                backend = "redis",
                error,
                "rate limit backend unreachable; {} until it is back",
                s.meanwhile
            );
            self.probe();
        }
        Unavailable
    }

    /// Reconnects in the background, 100 ms after the failure and then backing off to 2 s.
    fn probe(&self) {
        let Some(rt) = crate::base::background::background() else {
            tracing::error!("no background runtime: the rate limit backend will not be probed");
            return;
        };
        let shared = self.shared.clone();
        let script = self.script.clone();
        rt.spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                if Arc::strong_count(&shared) == 1 {
                    return; // the limiter is gone
                }
                let check = async {
                    let mut conn = shared.conn.connect().await?;
                    // The real script on a key of its own: Redis is back when decisions work
                    // (not merely when it accepts connections: a replica answers READONLY),
                    // and the script is loaded for the first decision after the outage.
                    script
                        .key(shared.probe_key.as_str())
                        .arg(1_000_000u64)
                        .arg(1_000_000_000u64)
                        .invoke_async::<Vec<i64>>(&mut conn)
                        .await
                };
                match tokio::time::timeout(shared.timeout * 4, check).await {
                    Ok(Ok(_)) => {
                        shared.conn.mark(true);
                        let since = shared
                            .down_since
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take();
                        shared.up_gauge.set(1);
                        {
                            let mut streak =
                                shared.streak.lock().unwrap_or_else(|e| e.into_inner());
                            streak.answered();
                            shared.streak_len.store(0, Ordering::Relaxed);
                        }
                        shared.recoveries.fetch_add(1, Ordering::AcqRel);
                        shared.up.store(true, Ordering::Release);
                        tracing::info!(
                            backend = "redis",
                            outage_s = since.map(|t| t.elapsed().as_secs_f64()),
                            "rate limit backend reachable again"
                        );
                        return;
                    }
                    _ => pause = (pause * 2).min(Duration::from_secs(2)),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        // A fixed origin: only differences matter.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn one_slow_answer_is_not_an_outage() {
        let mut s = FailureStreak::default();
        assert!(!s.failed(at(0), at(50)));
        assert_eq!(s.failures(), 1);
    }

    #[test]
    fn three_failures_in_a_row_are() {
        let mut s = FailureStreak::default();
        assert!(!s.failed(at(0), at(50)));
        assert!(!s.failed(at(60), at(110)));
        assert!(s.failed(at(120), at(170)));
    }

    #[test]
    fn an_answer_ends_the_streak() {
        let mut s = FailureStreak::default();
        assert!(!s.failed(at(0), at(50)));
        assert!(!s.failed(at(60), at(110)));
        s.answered();
        assert_eq!(s.failures(), 0);
        assert!(!s.failed(at(120), at(170)));
        assert!(!s.failed(at(180), at(230)));
        assert!(s.failed(at(240), at(290)));
    }

    #[test]
    fn calls_in_flight_during_one_stall_count_once() {
        let mut s = FailureStreak::default();
        // Five calls started before the stall was seen, all timing out together.
        for started in [0, 5, 10, 15, 20] {
            assert!(!s.failed(at(started), at(started + 50)));
        }
        assert_eq!(s.failures(), 1);
        // Fresh attempts after it: the second and third failures in a row.
        assert!(!s.failed(at(100), at(150)));
        assert_eq!(s.failures(), 2);
        assert!(s.failed(at(160), at(210)));
    }

    #[test]
    fn refused_connections_are_seen_at_once() {
        // Redis gone: each fresh attempt fails within a millisecond.
        let mut s = FailureStreak::default();
        assert!(!s.failed(at(0), at(0)));
        assert!(!s.failed(at(0), at(1)));
        assert!(s.failed(at(1), at(1)));
    }
}
