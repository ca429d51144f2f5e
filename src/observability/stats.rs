//! Live traffic figures for the admin UI, sampled once a second from what the gateway already
//! counts (no work per request): the deltas of `kairos_requests_total` and of the buckets of
//! `kairos_request_duration_seconds` give each route's requests/s, share of 5xx answers and
//! p50/p99 estimates (interpolated within a bucket, as Prometheus' `histogram_quantile`); the
//! upstream histogram and `kairos_upstream_errors_total` give each upstream's; the in-flight
//! gauges give what is active now.
//!
//! The last [`HISTORY_POINTS`] samples (15 minutes) are kept per series, for the total and for
//! at most [`MAX_SERIES`] routes and [`MAX_SERIES`] upstreams by name; later names are folded
//! into one series named [`OTHER`]. A point is 64 bytes, so the history holds at most
//! (1 + 2 x (32 + 1)) x 900 x 64 bytes, about 3.9 MB. Each sample is also sent to the stream's
//! subscribers (`stats` events), serialized only when someone listens.

use super::metrics::{Metrics, LATENCY_BUCKETS};
use prometheus::core::Collector;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Milliseconds between samples.
pub const INTERVAL_MS: u64 = 1000;
/// Samples kept per series: 15 minutes.
pub const HISTORY_POINTS: usize = 900;
/// Routes (and upstreams) with a series of their own; the rest share [`OTHER`].
pub const MAX_SERIES: usize = 32;
/// The series of the routes (upstreams) past [`MAX_SERIES`].
pub const OTHER: &str = "other";

/// One sample of one series.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub ts: u64,
    pub rps: f64,
    /// Share of 5xx answers (of failed attempts, for an upstream), 0 to 1.
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// In flight now (total, upstreams); for a route, the mean number in flight over the
    /// second (time spent in its requests / 1 s).
    pub active: u64,
}

/// Counts since the start, of one series.
#[derive(Debug, Default, Clone)]
struct Cumulative {
    /// Requests (attempts, for an upstream).
    count: u64,
    errors: u64,
    /// The latency histogram: cumulative bucket counts, total, sum of seconds.
    buckets: [u64; LATENCY_BUCKETS.len()],
    observed: u64,
    seconds: f64,
}

impl Cumulative {
    fn add(&mut self, o: &Cumulative) {
        self.count += o.count;
        self.errors += o.errors;
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.observed += o.observed;
        self.seconds += o.seconds;
    }

    fn add_histogram(&mut self, h: &prometheus::proto::Histogram) {
        for (slot, b) in self.buckets.iter_mut().zip(h.get_bucket()) {
            *slot += b.cumulative_count();
        }
        self.observed += h.get_sample_count();
        self.seconds += h.get_sample_sum();
    }

    /// The point of the interval from `prev` to `self`, `secs` long.
    fn point(&self, prev: &Cumulative, secs: f64, ts: u64, active: Option<u64>) -> Point {
        let count = self.count.saturating_sub(prev.count);
        let errors = self.errors.saturating_sub(prev.errors);
        let observed = self.observed.saturating_sub(prev.observed);
        let mut delta = [0u64; LATENCY_BUCKETS.len()];
        for (i, d) in delta.iter_mut().enumerate() {
            *d = self.buckets[i].saturating_sub(prev.buckets[i]);
        }
        let busy = (self.seconds - prev.seconds).max(0.0);
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        Point {
            ts,
            rps: round(count as f64 / secs),
            error_rate: match count {
                0 => 0.0,
                n => round((errors as f64 / n as f64).min(1.0)),
            },
            p50_ms: quantile(0.5, &delta, observed).map(round),
            p99_ms: quantile(0.99, &delta, observed).map(round),
            active: active.unwrap_or((busy / secs).round() as u64),
        }
    }
}

/// The `q` quantile in milliseconds from bucket deltas (cumulative per bound) of `total`
/// observations: linear within the bucket it falls in; the largest bound when it falls past
/// it. `None` without observations.
fn quantile(q: f64, cumulative: &[u64; LATENCY_BUCKETS.len()], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &c) in cumulative.iter().enumerate() {
        let upper = LATENCY_BUCKETS[i];
        if c as f64 >= rank && c > below {
            let within = (rank - below as f64) / (c - below) as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below = c;
        lower = upper;
    }
    Some(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1000.0)
}

/// Everything counted at one instant.
struct Snapshot {
    at: Instant,
    total: Cumulative,
    routes: FxHashMap<String, Cumulative>,
    upstreams: FxHashMap<String, Cumulative>,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|p| p.name() == name)
        .map_or("", |p| p.value())
}

fn snapshot(m: &Metrics) -> Snapshot {
    let mut routes: FxHashMap<String, Cumulative> = FxHashMap::default();
    for family in m.requests.collect() {
        for s in family.get_metric() {
            let c = routes.entry(label(s, "route").to_string()).or_default();
            let n = s.get_counter().get_value() as u64;
            c.count += n;
            if label(s, "status").starts_with('5') {
                c.errors += n;
            }
        }
    }
    for family in m.request_duration.collect() {
        for s in family.get_metric() {
            routes
                .entry(label(s, "route").to_string())
                .or_default()
                .add_histogram(s.get_histogram());
        }
    }
    let mut upstreams: FxHashMap<String, Cumulative> = FxHashMap::default();
    for family in m.upstream_duration.collect() {
        for s in family.get_metric() {
            let c = upstreams
                .entry(label(s, "upstream").to_string())
                .or_default();
            c.add_histogram(s.get_histogram());
            c.count += s.get_histogram().get_sample_count();
        }
    }
    for family in m.upstream_errors.collect() {
        for s in family.get_metric() {
            let c = upstreams
                .entry(label(s, "upstream").to_string())
                .or_default();
            let n = s.get_counter().get_value() as u64;
            c.errors += n;
            // A 5xx answer is also a timed response; the other failures are attempts the
            // histogram did not see.
            if label(s, "kind") != "status_5xx" {
                c.count += n;
            }
        }
    }
    let mut total = Cumulative::default();
    for c in routes.values() {
        total.add(c);
    }
    Snapshot {
        at: Instant::now(),
        total,
        routes,
        upstreams,
    }
}

/// The series of one kind (routes or upstreams), capped by name.
#[derive(Default)]
struct Series {
    points: BTreeMap<String, VecDeque<Point>>,
}

impl Series {
    /// Folds `now` into at most [`MAX_SERIES`] names plus [`OTHER`] (names that have a series
    /// keep it), so that `prev` and `now` fold alike.
    fn fold(&self, now: &FxHashMap<String, Cumulative>) -> impl Fn(&str) -> String {
        let mut names: Vec<String> = now.keys().cloned().collect();
        names.sort();
        let mut admitted: Vec<String> = self
            .points
            .keys()
            .filter(|n| n.as_str() != OTHER)
            .cloned()
            .collect();
        for n in &names {
            if admitted.len() >= MAX_SERIES {
                break;
            }
            if n != OTHER && !admitted.contains(n) {
                admitted.push(n.clone());
            }
        }
        move |n: &str| match admitted.iter().any(|k| k == n) {
            true => n.to_string(),
            false => OTHER.to_string(),
        }
    }

    fn push(&mut self, name: String, p: Point) {
        let q = self.points.entry(name).or_default();
        if q.len() == HISTORY_POINTS {
            q.pop_front();
        }
        q.push_back(p);
    }

    /// Drops series with no point in the window.
    fn expire(&mut self, now_ms: u64) {
        let window = HISTORY_POINTS as u64 * INTERVAL_MS;
        self.points
            .retain(|_, q| q.back().is_some_and(|p| p.ts + window > now_ms));
    }
}

fn folded(
    map: &FxHashMap<String, Cumulative>,
    key: &dyn Fn(&str) -> String,
) -> BTreeMap<String, Cumulative> {
    let mut out: BTreeMap<String, Cumulative> = BTreeMap::new();
    for (name, c) in map {
        out.entry(key(name)).or_default().add(c);
    }
    out
}

struct History {
    prev: Option<Snapshot>,
    total: VecDeque<Point>,
    routes: Series,
    upstreams: Series,
}

/// The sampled history and its live subscribers.
pub struct Stats {
    history: Mutex<History>,
    events: broadcast::Sender<Arc<str>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            history: Mutex::new(History {
                prev: None,
                total: VecDeque::new(),
                routes: Series::default(),
                upstreams: Series::default(),
            }),
            events: broadcast::channel(16).0,
        }
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one sample: a point per series, and a `stats` event when someone listens.
    pub fn sample(&self, m: &Metrics) {
        let now = snapshot(m);
        let ts = crate::base::clock::wall_ms();
        let inflight = m.upstream_inflight();
        let mut h = self.lock();
        let Some(prev) = h.prev.take() else {
            h.prev = Some(now);
            return;
        };
        let secs = now.at.duration_since(prev.at).as_secs_f64().max(0.001);
        let total = now.total.point(
            &prev.total,
            secs,
            ts,
            Some(u64::try_from(m.inflight.get()).unwrap_or(0)),
        );
        if h.total.len() == HISTORY_POINTS {
            h.total.pop_front();
        }
        h.total.push_back(total);
        let mut live_routes = serde_json::Map::new();
        let mut live_upstreams = serde_json::Map::new();
        {
            let key = h.routes.fold(&now.routes);
            let (cur, old) = (folded(&now.routes, &key), folded(&prev.routes, &key));
            drop(key);
            for (name, c) in cur {
                let p = c.point(&old.get(&name).cloned().unwrap_or_default(), secs, ts, None);
                live_routes.insert(name.clone(), live(&p));
                h.routes.push(name, p);
            }
        }
        {
            let key = h.upstreams.fold(&now.upstreams);
            let (cur, old) = (folded(&now.upstreams, &key), folded(&prev.upstreams, &key));
            let mut active: BTreeMap<String, u64> = BTreeMap::new();
            for (name, n) in &inflight {
                *active.entry(key(name)).or_default() += n;
            }
            drop(key);
            for (name, c) in cur {
                let a = active.get(&name).copied().unwrap_or(0);
                let p = c.point(
                    &old.get(&name).cloned().unwrap_or_default(),
                    secs,
                    ts,
                    Some(a),
                );
                live_upstreams.insert(name.clone(), live(&p));
                h.upstreams.push(name, p);
            }
        }
        h.routes.expire(ts);
        h.upstreams.expire(ts);
        h.prev = Some(now);
        drop(h);
        if self.events.receiver_count() > 0 {
            let mut t = live(&total);
            t["connections"] = m.active_connections.get().max(0).into();
            let event = serde_json::json!({
                "ts": ts,
                "total": t,
                "routes": live_routes,
                "upstreams": live_upstreams,
            });
            let _ = self.events.send(Arc::from(event.to_string()));
        }
    }

    /// The history as `GET /_kairos/stats/history` answers it.
    pub fn history(&self) -> serde_json::Value {
        let h = self.lock();
        let series = |s: &Series| -> serde_json::Map<String, serde_json::Value> {
            s.points
                .iter()
                .map(|(k, q)| (k.clone(), serde_json::json!(q)))
                .collect()
        };
        serde_json::json!({
            "interval_ms": INTERVAL_MS,
            "total": h.total,
            "routes": series(&h.routes),
            "upstreams": series(&h.upstreams),
        })
    }

    /// The `stats` events (one-line JSON each), from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Samples `metrics` every [`INTERVAL_MS`] on the background runtime while `stats` lives.
    pub fn start(stats: &Arc<Stats>, metrics: Arc<Metrics>) {
        let Some(rt) = crate::base::background::background() else {
            return;
        };
        let weak: Weak<Stats> = Arc::downgrade(stats);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(stats) = weak.upgrade() else { return };
                stats.sample(&metrics);
            }
        });
    }
}

/// A point as the live event shows it (no timestamp: the event has one).
fn live(p: &Point) -> serde_json::Value {
    serde_json::json!({
        "rps": p.rps,
        "error_rate": p.error_rate,
        "p50_ms": p.p50_ms,
        "p99_ms": p.p99_ms,
        "active": p.active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut c = [0u64; LATENCY_BUCKETS.len()];
        // 10 observations in (1 ms, 2.5 ms], none elsewhere.
        for (i, slot) in c.iter_mut().enumerate() {
            *slot = if LATENCY_BUCKETS[i] >= 0.0025 { 10 } else { 0 };
        }
        let p50 = quantile(0.5, &c, 10).unwrap();
        assert!((p50 - 1.75).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.5, &c, 0), None);
        // Past the largest bound: the largest bound.
        let none = [0u64; LATENCY_BUCKETS.len()];
        assert_eq!(quantile(0.99, &none, 5), Some(30_000.0));
    }

    #[test]
    fn samples_give_rates_errors_and_a_bounded_capped_history() {
        let m = Metrics::new();
        let stats = Stats::default();
        stats.sample(&m);
        for i in 0..(MAX_SERIES + 5) {
            let s = m.series(1, Some((i, &format!("route-{i:02}"))), "GET", 200);
            s.record(0.002, 0, 0);
        }
        m.series(1, Some((0, "route-00")), "GET", 503)
            .record(0.002, 0, 0);
        stats.sample(&m);
        let h = stats.history();
        let routes = h["routes"].as_object().unwrap();
        assert_eq!(routes.len(), MAX_SERIES + 1, "{routes:?}");
        let other = &routes[OTHER][0];
        assert!(other["rps"].as_f64().unwrap() > 0.0);
        let r0 = &routes["route-00"][0];
        assert!(
            (r0["error_rate"].as_f64().unwrap() - 0.5).abs() < 1e-9,
            "{r0}"
        );
        assert!(r0["p50_ms"].as_f64().unwrap() > 1.0);
        for _ in 0..HISTORY_POINTS + 3 {
            stats.sample(&m);
        }
        let h = stats.history();
        assert_eq!(h["total"].as_array().unwrap().len(), HISTORY_POINTS);
        assert_eq!(
            h["routes"]["route-00"].as_array().unwrap().len(),
            HISTORY_POINTS
        );
    }
}
