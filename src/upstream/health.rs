//! Active health checks: one task per server (not per worker), on one background thread
//! shared by every upstream. A check is an HTTP GET with a timeout, or with `grpc_service`
//! a gRPC health call (grpc.health.v1.Health/Check, passing when the answer is SERVING); it
//! speaks HTTP/2 to an HTTP/2 upstream. Its result goes through [`Tracker`] (thresholds) into
//! the server's shared state, where the balancer reads it.
//!
//! While a server is on its way to a transition (an unhealthy server passed a check, or a
//! healthy one failed one), the next checks come `threshold` times faster, so the whole
//! transition takes about one interval whatever the thresholds are.

use super::server::{CheckRecord, Health, ServerState};
use crate::config::model::{HealthCheckConfig, ServerEntry, UpstreamProtocol};
use crate::observability::events;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// The most of a health check's response body that is read (then the connection is dropped).
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The request failed; shown with its sources, `outer: inner: innermost`.
    #[error("{}", crate::upstream::client::chain(.0))]
    Request(reqwest::Error),
    /// The server answered with a status outside `expected_status`.
    #[error("status {0}")]
    Status(u16),
    /// A gRPC health check's answer: a gRPC error, or a status other than SERVING.
    #[error("gRPC health: {0}")]
    Grpc(String),
}

/// The gRPC health protocol's method.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A gRPC message frame holding `HealthCheckRequest { service }` (protobuf field 1).
fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// The `status` of the `HealthCheckResponse` in a gRPC message frame (1 is SERVING); `None`
/// for a frame that is not one.
fn grpc_health_status(frame: &[u8]) -> Option<u64> {
    let (&compressed, rest) = frame.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut msg = rest.get(4..4 + len)?;
    // The default (UNKNOWN, 0) is not written.
    let mut status = 0;
    while let Some((&key, rest)) = msg.split_first() {
        let (value, used) = varint(rest)?;
        match key {
            0x08 => status = value,
            _ if key & 7 == 0 => {}
            _ => return None,
        }
        msg = &rest[used..];
    }
    Some(status)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Health thresholds as a pure state machine.
#[derive(Debug, Clone)]
pub struct Tracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    state: Health,
    /// Consecutive results against the current state.
    streak: u32,
}

impl Tracker {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Tracker {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            state: Health::Unknown,
            streak: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one check result; returns the (possibly new) state. The first result decides an
    /// unknown server at once: a gateway that just started should neither wait three
    /// intervals to stop sending to a dead server nor to trust a live one.
    pub fn observe(&mut self, ok: bool) -> Health {
        let (target, threshold) = match (self.state, ok) {
            (Health::Unknown, true) => (Health::Healthy, 1),
            (Health::Unknown, false) => (Health::Unhealthy, 1),
            (Health::Healthy, true) | (Health::Unhealthy, false) => {
                self.streak = 0;
                return self.state;
            }
            (Health::Unhealthy, true) => (Health::Healthy, self.healthy_threshold),
            (Health::Healthy, false) => (Health::Unhealthy, self.unhealthy_threshold),
        };
        self.streak += 1;
        if self.streak >= threshold {
            self.state = target;
            self.streak = 0;
        }
        self.state
    }

    /// Whether the last results lean towards a transition that has not happened yet.
    pub fn pending(&self) -> bool {
        self.streak > 0
    }

    /// The threshold of the transition in progress.
    fn pending_threshold(&self) -> u32 {
        match self.state {
            Health::Unhealthy => self.healthy_threshold,
            _ => self.unhealthy_threshold,
        }
    }
}

/// The delay before the next check: the interval with +-10% jitter, divided by the pending
/// transition's threshold.
pub fn next_delay(cfg: &HealthCheckConfig, tracker: &Tracker) -> Duration {
    let base = if tracker.pending() {
        cfg.interval / tracker.pending_threshold()
    } else {
        cfg.interval
    };
    base.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// An upstream's checkers: they stop at their next wake-up once this is dropped, or once
/// their server is (a discovered server that went away).
pub struct Checkers {
    alive: Arc<()>,
    upstream: String,
    cfg: HealthCheckConfig,
    /// `None` when no check can run (no background runtime, or the client failed).
    client: Option<reqwest::Client>,
}

impl Checkers {
    /// Checkers for one upstream; [`Checkers::watch`] starts them for servers.
    pub fn new(
        upstream: &str,
        cfg: &HealthCheckConfig,
        tls: &Arc<rustls::ClientConfig>,
        protocol: UpstreamProtocol,
    ) -> Self {
        let mut checkers = Checkers {
            alive: Arc::new(()),
            upstream: upstream.to_string(),
            cfg: cfg.clone(),
            client: None,
        };
        let Some(rt) = crate::base::background::background() else {
            return checkers;
        };
        crate::base::tls::install_crypto_provider();
        let client = {
            let _guard = rt.enter();
            let builder = match protocol {
                // HTTP/2 without TLS is prior knowledge; over TLS, `tls` offers it by ALPN.
                UpstreamProtocol::H2c => reqwest::Client::builder().http2_prior_knowledge(),
                _ => reqwest::Client::builder(),
            };
            builder
                .use_preconfigured_tls((**tls).clone())
                .timeout(cfg.timeout)
                .connect_timeout(cfg.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .pool_max_idle_per_host(1)
                .user_agent(concat!(
                    "kairos-rs/",
                    env!("CARGO_PKG_VERSION"),
                    " health-check"
                ))
                .build()
        };
        match client {
            Ok(c) => checkers.client = Some(c),
            Err(e) => {
                tracing::error!(upstream, error = %e, "health checks disabled: HTTP client failed")
            }
        }
        checkers
    }

    /// Starts one checker per server.
    pub fn watch(&self, servers: &[ServerEntry], states: &[Arc<ServerState>]) {
        let (Some(client), Some(rt)) = (&self.client, crate::base::background::background()) else {
            return;
        };
        for (server, state) in servers.iter().zip(states) {
            let scheme = if server.https { "https" } else { "http" };
            let check = Check {
                upstream: self.upstream.clone(),
                server: server.url.clone(),
                url: match self.cfg.grpc_service {
                    Some(_) => format!("{scheme}://{}{GRPC_HEALTH_CHECK}", server.authority),
                    None => format!("{scheme}://{}{}", server.authority, self.cfg.path),
                },
                cfg: self.cfg.clone(),
                client: client.clone(),
                state: Arc::downgrade(state),
                alive: Arc::downgrade(&self.alive),
            };
            rt.spawn(check.run());
        }
    }
}

struct Check {
    upstream: String,
    server: String,
    url: String,
    cfg: HealthCheckConfig,
    client: reqwest::Client,
    state: Weak<ServerState>,
    alive: Weak<()>,
}

impl Check {
    async fn run(self) {
        let mut tracker = Tracker::new(self.cfg.healthy_threshold, self.cfg.unhealthy_threshold);
        // Spread the first checks of many servers over a moment instead of one burst.
        let first = self.cfg.interval.min(Duration::from_millis(200));
        tokio::time::sleep(first.mul_f64(fastrand::f64())).await;
        loop {
            if self.alive.strong_count() == 0 {
                return;
            }
            let Some(state) = self.state.upgrade() else {
                return;
            };
            let span = tracing::info_span!(
                target: crate::observability::trace::ops::TARGET,
                "health_check",
                upstream = self.upstream.as_str(),
                server = self.server.as_str(),
                outcome = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                "otel.status_code" = tracing::field::Empty,
            );
            crate::observability::trace::ops::record_ids(&span);
            let started = Instant::now();
            let result = self.probe().instrument(span.clone()).await;
            span.record("outcome", if result.is_ok() { "pass" } else { "fail" });
            if result.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            let _in = span.enter();
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let ok = result.is_ok();
            state.set_last_check(CheckRecord {
                at: SystemTime::now(),
                latency_ms,
                ok,
            });
            let before = state.health();
            let now = tracker.observe(ok);
            state.set_health(now);
            if ok {
                if let Some(b) = &state.breaker {
                    b.health_check_passed(crate::base::clock::now_ms());
                }
            }
            if now != before {
                match (&result, now) {
                    (Err(reason), _) => {
                        let reason = reason.to_string();
                        tracing::warn!(
                            upstream = self.upstream,
                            server = self.server,
                            reason = reason.as_str(),
                            "upstream server is unhealthy"
                        );
                        events::upstream(&self.upstream, &self.server, "down", Some(&reason));
                    }
                    (Ok(()), Health::Healthy) => {
                        // Envoy's default: a passing active check ends a passive ejection.
                        let was_ejected = state.ejected(crate::base::clock::now_ms());
                        state.uneject();
                        tracing::info!(
                            upstream = self.upstream,
                            server = self.server,
                            "upstream server is healthy"
                        );
                        events::upstream(&self.upstream, &self.server, "up", None);
                        if was_ejected {
                            events::upstream(
                                &self.upstream,
                                &self.server,
                                "returned",
                                Some("a health check passed"),
                            );
                        }
                    }
                    _ => {}
                }
            }
            drop(state);
            drop(_in);
            drop(span);
            tokio::time::sleep(next_delay(&self.cfg, &tracker)).await;
        }
    }

    async fn probe(&self) -> Result<(), ProbeError> {
        if let Some(service) = &self.cfg.grpc_service {
            return self.probe_grpc(service).await;
        }
        let mut res = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(ProbeError::Request)?;
        let status = res.status().as_u16();
        // Read a short body so the connection can be reused; a longer one (or one that never
        // ends) is dropped after MAX_PROBE_BODY bytes, closing its connection.
        let mut read = 0;
        while read <= MAX_PROBE_BODY {
            match res.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if self.cfg.expected_status.contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    }
}

impl Check {
    /// One grpc.health.v1 `Check`: passes when the answer is SERVING. A gRPC error comes
    /// trailers-only, in the head; a status in the trailers is not read (an answer message
    /// means OK).
    async fn probe_grpc(&self, service: &str) -> Result<(), ProbeError> {
        let mut res = self
            .client
            .post(&self.url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(grpc_health_request(service))
            .send()
            .await
            .map_err(ProbeError::Request)?;
        let status = res.status().as_u16();
        if status != 200 {
            return Err(ProbeError::Status(status));
        }
        if let Some(code) = res.headers().get("grpc-status") {
            if code.as_bytes() != b"0" {
                let code = String::from_utf8_lossy(code.as_bytes()).into_owned();
                return Err(ProbeError::Grpc(format!("grpc-status {code}")));
            }
        }
        let mut body = Vec::new();
        while body.len() <= MAX_PROBE_BODY {
            match res.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(ProbeError::Request(e)),
            }
        }
        match grpc_health_status(&body) {
            Some(1) => Ok(()),
            Some(s) => Err(ProbeError::Grpc(format!("status {s} (not SERVING)"))),
            None => Err(ProbeError::Grpc("no HealthCheckResponse".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages() {
        assert_eq!(grpc_health_request(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("db"),
            [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(grpc_health_status(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 5, 0x08]), None, "short");
    }

    #[test]
    fn probe_error_text() {
        assert_eq!(ProbeError::Status(503).to_string(), "status 503");
    }

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.observe(true), Health::Healthy);
        assert_eq!(t.observe(false), Health::Healthy);
        assert_eq!(t.observe(false), Health::Healthy);
        assert_eq!(t.observe(true), Health::Healthy, "a pass resets the streak");
        assert_eq!(t.observe(false), Health::Healthy);
        assert_eq!(t.observe(false), Health::Healthy);
        assert_eq!(t.observe(false), Health::Unhealthy);
        assert_eq!(t.observe(true), Health::Unhealthy);
        assert!(t.pending());
        assert_eq!(t.observe(true), Health::Healthy);
        assert!(!t.pending());

        let mut t = Tracker::new(2, 3);
        assert_eq!(t.observe(false), Health::Unhealthy);
    }

    #[test]
    fn pending_transitions_check_faster() {
        let cfg = HealthCheckConfig {
            path: "/health".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 5,
            expected_status: 200..=399,
            grpc_service: None,
        };
        let mut t = Tracker::new(2, 5);
        t.observe(true);
        let d = next_delay(&cfg, &t);
        assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        t.observe(false);
        let d = next_delay(&cfg, &t);
        assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
        for _ in 0..4 {
            t.observe(false);
        }
        assert_eq!(t.state(), Health::Unhealthy);
        t.observe(true);
        let d = next_delay(&cfg, &t);
        assert!(d >= Duration::from_millis(4500) && d <= Duration::from_millis(5500));
    }
}
