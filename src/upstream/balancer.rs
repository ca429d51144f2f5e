//! Server selection. The balancer yields candidates in order, so a retry takes the next one;
//! every strategy skips servers that are not available (health check, outlier ejection or an
//! open circuit). Selection is lock-free: atomics shared by all workers.
//!
//! The first pick never allocates, whatever the strategy and the number of servers: it reads
//! the servers' atomics, the thread-local random generator and tables built once in
//! [`Balancer::new`]. Only ip_hash may allocate, and only when a second candidate is asked for
//! on an upstream of more than 128 servers (to remember which servers it already gave out).
//!
//! Every walk past unavailable servers is bounded ([`WALK_LIMIT`] entries, a few random
//! draws); past that the pick falls back to a scan in index order, so a mostly dead upstream
//! costs O(servers) per request, never more.

use crate::config::model::Strategy;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a strategy may know about a server at the moment of picking.
pub trait ServerLoad {
    /// Health checks, outlier detection and the circuit breaker allow traffic to it at
    /// `now_ms` (milliseconds on the gateway's monotonic clock).
    fn available(&self, now_ms: u64) -> bool;
    /// Requests in flight to it, all workers together.
    fn inflight(&self) -> u32;
    /// Peak-EWMA of its response latency in nanoseconds; 0 before the first sample.
    fn latency_ewma_ns(&self) -> u64;
    /// Share of its recent requests that succeeded, 0.0..=1.0; 1.0 before the first sample.
    fn success_ratio(&self) -> f64;
}

impl<T: ServerLoad> ServerLoad for std::sync::Arc<T> {
    fn available(&self, now_ms: u64) -> bool {
        (**self).available(now_ms)
    }
    fn inflight(&self) -> u32 {
        (**self).inflight()
    }
    fn latency_ewma_ns(&self) -> u64 {
        (**self).latency_ewma_ns()
    }
    fn success_ratio(&self) -> f64 {
        (**self).success_ratio()
    }
}

/// One server as the balancer is built from it.
pub struct ServerSpec<'a> {
    /// Stable identity (the server's URL): consistent hashing places servers by it, so a
    /// server keeps its clients when others are added or removed.
    pub id: &'a str,
    /// Relative weight, >= 1.
    pub weight: u32,
}

/// How many sequence (weighted round robin) or table (ip_hash) entries one request may walk
/// past unavailable or already-tried servers before falling back to a scan in index order.
/// With half the servers down the walk ends after 2 entries on average; the limit only matters
/// when nearly all are down, where a scan is as good as anything.
pub const WALK_LIMIT: u32 = 64;

/// Random draws (random, p2c_ewma) that may land on unavailable servers before the pick falls
/// back to a scan from a random offset.
const RANDOM_TRIES: u32 = 4;

/// health_based: rejection-sampling rounds before the exact two-pass draw. With every server
/// at a success ratio of 0.5 or better, 8 rounds all fail less than 0.4% of the time.
const HEALTH_TRIES: u32 = 8;

/// health_based: the lowest success ratio a server counts with, so it keeps a trickle of
/// traffic (and so can show it has recovered); taking dead servers out entirely is the job of
/// health checks and the circuit breaker, which make them unavailable.
pub const MIN_SUCCESS_RATIO: f64 = 0.01;

/// The round-robin counter on a cache line of its own: every worker writes it on every pick,
/// and it must not invalidate the line holding the read-only fields next to it.
#[repr(align(128))]
struct Counter(AtomicUsize);

pub struct Balancer {
    strategy: Strategy,
    /// For weighted round robin: the precomputed smooth sequence of server indexes, in the
    /// order NGINX interleaves them (weights 5/1/1 give a a b a c a a). Empty for the other
    /// strategies; plain round robin is the counter modulo the number of servers.
    sequence: Box<[u32]>,
    next: Counter,
    servers: usize,
    /// Weight of each server, at least 1 (least_connections, random, health_based, p2c_ewma).
    weights: Box<[u32]>,
    /// Running sums of the weights, for a weighted draw by binary search (random,
    /// health_based). Empty when all weights are equal: a uniform draw needs no search.
    prefix: Box<[u64]>,
    /// ip_hash: the Maglev lookup table, empty for the other strategies.
    table: Table,
}

impl Balancer {
    pub fn new(strategy: Strategy, servers: &[ServerSpec<'_>]) -> Self {
        let weights: Box<[u32]> = servers.iter().map(|s| s.weight.max(1)).collect();
        let sequence = match strategy {
            Strategy::WeightedRoundRobin => smooth_sequence(&weights),
            _ => Vec::new(),
        };
        let uneven = weights.windows(2).any(|w| w[0] != w[1]);
        let prefix = match strategy {
            Strategy::Random | Strategy::HealthBased if uneven => weights
                .iter()
                .scan(0u64, |sum, &w| {
                    *sum += u64::from(w);
                    Some(*sum)
                })
                .collect(),
            _ => Vec::new(),
        };
        let table = match strategy {
            Strategy::IpHash => Table::build(servers, &weights),
            _ => Table::U16(Box::new([])),
        };
        Balancer {
            strategy,
            sequence: sequence.into_boxed_slice(),
            next: Counter(AtomicUsize::new(0)),
            servers: servers.len(),
            weights,
            prefix: prefix.into_boxed_slice(),
            table,
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Candidate server indexes for one request, best first: the strategy's pick, then the
    /// other available servers, each at most once. `key` is the hash of the client address
    /// (used by ip_hash only). Servers not available at `now_ms` are never yielded.
    pub fn candidates<'a, S: ServerLoad>(
        &'a self,
        servers: &'a [S],
        now_ms: u64,
        key: u64,
    ) -> Candidates<'a, S> {
        Candidates {
            balancer: self,
            servers,
            now_ms,
            key,
            total: self.servers.min(servers.len()),
            phase: Phase::Pick,
            first: 0,
            step: 1,
            pos: 0,
            walk_left: WALK_LIMIT,
            seen: Seen::default(),
        }
    }

    /// ip_hash: the number of entries in the Maglev table (0 for the other strategies).
    #[cfg(test)]
    fn table_len(&self) -> usize {
        self.table.len()
    }

    /// A server index drawn with probability proportional to its weight.
    #[inline]
    fn draw_weighted(&self) -> usize {
        match self.prefix.last() {
            None => fastrand::usize(..self.servers),
            Some(&total) => {
                let r = fastrand::u64(..total);
                self.prefix.partition_point(|&p| p <= r)
            }
        }
    }
}

/// Where a [`Candidates`] iterator is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing yielded yet: the next call makes the strategy's pick.
    Pick,
    /// ip_hash: retries continue the walk through the Maglev table.
    Walk,
    /// Retries in index order from just after the first pick.
    Scan,
    Done,
}

/// Iterator over the servers to try for one request, best first.
pub struct Candidates<'a, S> {
    balancer: &'a Balancer,
    servers: &'a [S],
    now_ms: u64,
    key: u64,
    /// Servers that can be yielded: those the balancer was built for and the caller passed.
    total: usize,
    phase: Phase,
    /// The strategy's pick, once made.
    first: usize,
    /// Scan: the next offset from `first`.
    step: usize,
    /// ip_hash: the next table position of the walk, and how many entries it may still read.
    pos: usize,
    walk_left: u32,
    /// ip_hash: servers yielded by the walk after the first pick (the table repeats servers).
    seen: Seen,
}

impl<S: ServerLoad> Candidates<'_, S> {
    #[inline]
    fn ok(&self, i: usize) -> bool {
        i < self.total && self.servers[i].available(self.now_ms)
    }

    /// The first available server in index order from `start` (wrapping), if any.
    fn first_available_from(&self, start: usize, exclude: Option<usize>) -> Option<usize> {
        let n = self.total;
        let mut i = start % n;
        for _ in 0..n {
            if Some(i) != exclude && self.servers[i].available(self.now_ms) {
                return Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    /// The strategy's pick; `None` only when no server is available.
    fn pick(&mut self) -> Option<usize> {
        let n = self.total;
        if n == 0 {
            return None;
        }
        match self.balancer.strategy {
            Strategy::RoundRobin => self.round_robin(),
            Strategy::WeightedRoundRobin => self.weighted_round_robin(),
            Strategy::LeastConnections => self.least_connections(),
            Strategy::IpHash => self.ip_hash(),
            Strategy::Random => self.random(),
            Strategy::HealthBased => self.health_based(),
            Strategy::P2cEwma => self.p2c_ewma(),
        }
    }

    /// The next server in rotation, or the first available one after it. A dead server's
    /// share goes to its successor in index order (as in NGINX); the health checks are what
    /// should keep that state short.
    fn round_robin(&self) -> Option<usize> {
        let c = self.balancer.next.0.fetch_add(1, Ordering::Relaxed);
        self.first_available_from(c % self.total, None)
    }

    /// The next entry of the smooth sequence; unavailable entries are skipped to the next
    /// entry of the sequence, so a dead server's turns are shared the way the sequence
    /// interleaves the others rather than all landing on one neighbour.
    fn weighted_round_robin(&self) -> Option<usize> {
        let seq = &self.balancer.sequence;
        let len = seq.len();
        if len == 0 {
            return None;
        }
        let c = self.balancer.next.0.fetch_add(1, Ordering::Relaxed) % len;
        let mut pos = c;
        // A heavy dead server fills runs of the sequence: don't ask it again and again.
        let mut dead = usize::MAX;
        for _ in 0..len.min(WALK_LIMIT as usize) {
            let i = seq[pos] as usize;
            if i != dead {
                if self.ok(i) {
                    return Some(i);
                }
                dead = i;
            }
            pos += 1;
            if pos == len {
                pos = 0;
            }
        }
        self.first_available_from(seq[c] as usize, None)
    }

    /// The server with the fewest requests in flight per unit of weight (compared as
    /// `inflight_a * weight_b < inflight_b * weight_a`, exact in u64). The scan starts at a
    /// random offset and only a strictly smaller load replaces the best so far, so equally
    /// loaded servers share the traffic instead of index 0 taking it all.
    fn least_connections(&self) -> Option<usize> {
        let n = self.total;
        let weights = &self.balancer.weights;
        let mut i = fastrand::usize(..n);
        let mut best: Option<(usize, u64, u64)> = None;
        for _ in 0..n {
            if self.servers[i].available(self.now_ms) {
                let load = u64::from(self.servers[i].inflight());
                let w = u64::from(weights[i]);
                match best {
                    Some((_, bl, bw)) if load * bw >= bl * w => {}
                    _ => {
                        best = Some((i, load, w));
                        if load == 0 {
                            // Nothing can be strictly less loaded than an idle server.
                            break;
                        }
                    }
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Maglev: the table entry at the client's hash; if that server is unavailable, the walk
    /// goes on through the table to the next available one. Table entries around a position
    /// belong to unrelated servers, so a dead server's clients spread over all the others.
    fn ip_hash(&mut self) -> Option<usize> {
        let table = &self.balancer.table;
        let m = table.len();
        if m == 0 {
            return None;
        }
        let start = fast_range(fmix64(self.key), m);
        let mut pos = start;
        while self.walk_left > 0 {
            let i = table.get(pos);
            self.walk_left -= 1;
            pos += 1;
            if pos == m {
                pos = 0;
            }
            if self.ok(i) {
                self.pos = pos;
                return Some(i);
            }
        }
        // The walk's budget is spent: retries go straight to the scan.
        self.first_available_from(table.get(start), None)
    }

    /// A draw by weight; a draw that lands on an unavailable server is drawn again a few
    /// times, then a scan from a random offset takes the first available server.
    fn random(&self) -> Option<usize> {
        for _ in 0..RANDOM_TRIES {
            let i = self.balancer.draw_weighted();
            if self.ok(i) {
                return Some(i);
            }
        }
        self.first_available_from(fastrand::usize(..self.total), None)
    }

    /// A draw by `weight × success_ratio` (the ratio floored at [`MIN_SUCCESS_RATIO`]), among
    /// available servers. Rejection sampling keeps it O(1) when servers are healthy: draw by
    /// weight, keep the server with probability equal to its ratio. Every round is an exact
    /// draw from the target distribution given it is kept, so stopping after a few rounds and
    /// finishing with the exact O(n) draw changes nothing in the distribution.
    fn health_based(&self) -> Option<usize> {
        for _ in 0..HEALTH_TRIES {
            let i = self.balancer.draw_weighted();
            if self.ok(i) {
                let r = floor_ratio(self.servers[i].success_ratio());
                if r >= 1.0 || fastrand::f64() < r {
                    return Some(i);
                }
            }
        }
        // Two passes over the servers; their ratios may move in between, so the second pass
        // keeps the last available server in case the draw runs past the end.
        let weights = &self.balancer.weights;
        let share = |i: usize| f64::from(weights[i]) * floor_ratio(self.servers[i].success_ratio());
        let total: f64 = (0..self.total).filter(|&i| self.ok(i)).map(share).sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = fastrand::f64() * total;
        let mut last = None;
        for i in (0..self.total).filter(|&i| self.ok(i)) {
            x -= share(i);
            last = Some(i);
            if x < 0.0 {
                break;
            }
        }
        last
    }

    /// Power of two choices over peak-EWMA load (as in Finagle and Linkerd): two distinct
    /// random available servers, the one of lower `(ewma_ns + 1) × (inflight + 1) / weight`
    /// wins. A server without a latency sample costs little, so new servers warm up quickly.
    fn p2c_ewma(&self) -> Option<usize> {
        let a = self.random_available(None)?;
        let Some(b) = self.random_available(Some(a)) else {
            return Some(a);
        };
        let weights = &self.balancer.weights;
        let cost = |i: usize| {
            let s = &self.servers[i];
            u128::from(s.latency_ewma_ns())
                .saturating_add(1)
                .saturating_mul(u128::from(s.inflight()) + 1)
        };
        // cost_b / w_b < cost_a / w_a, without dividing.
        let b_cheaper = cost(b).saturating_mul(u128::from(weights[a]))
            < cost(a).saturating_mul(u128::from(weights[b]));
        Some(if b_cheaper { b } else { a })
    }

    /// A uniformly drawn available server other than `exclude`: a few draws, then a scan from
    /// a random offset.
    fn random_available(&self, exclude: Option<usize>) -> Option<usize> {
        let n = self.total;
        let choices = match exclude {
            Some(_) if n < 2 => return None,
            Some(_) => n - 1,
            None => n,
        };
        for _ in 0..RANDOM_TRIES {
            let mut i = fastrand::usize(..choices);
            if exclude.is_some_and(|x| i >= x) {
                i += 1;
            }
            if self.servers[i].available(self.now_ms) {
                return Some(i);
            }
        }
        self.first_available_from(fastrand::usize(..n), exclude)
    }

    /// ip_hash retries: the table walk goes on past the first pick, skipping servers already
    /// yielded or unavailable, while its budget lasts.
    fn walk(&mut self) -> Option<usize> {
        let table = &self.balancer.table;
        let m = table.len();
        while self.walk_left > 0 {
            let i = table.get(self.pos);
            self.walk_left -= 1;
            self.pos += 1;
            if self.pos == m {
                self.pos = 0;
            }
            if i != self.first && i < self.total && !self.seen.contains(i) && self.ok(i) {
                self.seen.insert(i, self.total);
                return Some(i);
            }
        }
        None
    }

    /// Retries in index order from just after the first pick: every other server once.
    fn scan(&mut self) -> Option<usize> {
        let n = self.total;
        while self.step < n {
            let mut i = self.first + self.step;
            if i >= n {
                i -= n;
            }
            self.step += 1;
            if !self.seen.contains(i) && self.servers[i].available(self.now_ms) {
                return Some(i);
            }
        }
        self.phase = Phase::Done;
        None
    }
}

impl<S: ServerLoad> Iterator for Candidates<'_, S> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        match self.phase {
            Phase::Pick => match self.pick() {
                Some(i) => {
                    self.first = i;
                    // ip_hash retries go on with the table walk while it has budget left
                    // (none when the first pick already had to fall back to a scan).
                    self.phase = if self.balancer.strategy == Strategy::IpHash && self.walk_left > 0
                    {
                        Phase::Walk
                    } else {
                        Phase::Scan
                    };
                    Some(i)
                }
                None => {
                    self.phase = Phase::Done;
                    None
                }
            },
            Phase::Walk => {
                if let Some(i) = self.walk() {
                    return Some(i);
                }
                self.phase = Phase::Scan;
                self.scan()
            }
            Phase::Scan => self.scan(),
            Phase::Done => None,
        }
    }
}

impl<S: ServerLoad> std::iter::FusedIterator for Candidates<'_, S> {}

/// A set of server indexes: inline up to 128 servers; above that a bitmap allocated on the
/// first insert, which happens only when a retry is asked for.
#[derive(Default)]
struct Seen {
    inline: u128,
    heap: Vec<u64>,
}

impl Seen {
    #[inline]
    fn contains(&self, i: usize) -> bool {
        if i < 128 && self.heap.is_empty() {
            self.inline & (1 << i) != 0
        } else {
            self.heap
                .get(i / 64)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
        }
    }

    fn insert(&mut self, i: usize, n: usize) {
        if n <= 128 {
            self.inline |= 1 << i;
        } else {
            if self.heap.is_empty() {
                self.heap = vec![0; n.div_ceil(64)];
            }
            self.heap[i / 64] |= 1 << (i % 64);
        }
    }
}

fn floor_ratio(r: f64) -> f64 {
    // `!(r >= MIN)` also catches NaN.
    if r >= MIN_SUCCESS_RATIO {
        r.min(1.0)
    } else {
        MIN_SUCCESS_RATIO
    }
}

/// The Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
/// Load Balancer", NSDI 2016): every server owns a permutation of the table positions derived
/// from its id, and the servers take turns claiming their next free position until the table
/// is full. A server's positions depend on its id only, so removing one of N servers hands
/// its positions to the others and moves few other positions; adding one takes about 1/(N+1)
/// of them.
///
/// Entries are u16 (server indexes) up to 65,535 servers, u32 above.
enum Table {
    U16(Box<[u16]>),
    U32(Box<[u32]>),
}

impl Table {
    fn len(&self) -> usize {
        match self {
            Table::U16(t) => t.len(),
            Table::U32(t) => t.len(),
        }
    }

    #[inline]
    fn get(&self, pos: usize) -> usize {
        match self {
            Table::U16(t) => usize::from(t[pos]),
            Table::U32(t) => t[pos] as usize,
        }
    }

    /// Weighted Maglev: in each round a server claims as many positions as its weight (the
    /// weights divided by their greatest common divisor, so equal weights of any size build
    /// the same table as weight 1), so its share of the table is proportional to its weight.
    fn build(servers: &[ServerSpec<'_>], weights: &[u32]) -> Table {
        let n = servers.len();
        if n == 0 {
            return Table::U16(Box::new([]));
        }
        let m = maglev_table_size(n);
        let g = weights.iter().copied().fold(0, gcd).max(1);
        // Each server's permutation: offset + j × skip (mod m); m is prime, so any skip in
        // 1..m visits every position once.
        let mut pos: Vec<u64> = Vec::with_capacity(n);
        let mut skip: Vec<u64> = Vec::with_capacity(n);
        for s in servers {
            let h = id_hash(s.id);
            pos.push(fmix64(h) % m as u64);
            skip.push(fmix64(h ^ 0x9e37_79b9_7f4a_7c15) % (m as u64 - 1) + 1);
        }
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                for _ in 0..weights[i] / g {
                    loop {
                        let p = pos[i] as usize;
                        pos[i] = (pos[i] + skip[i]) % m as u64;
                        if table[p] == EMPTY {
                            table[p] = i as u32;
                            break;
                        }
                    }
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        if n <= usize::from(u16::MAX) {
            Table::U16(table.into_iter().map(|i| i as u16).collect())
        } else {
            Table::U32(table.into_boxed_slice())
        }
    }
}

/// The Maglev table size for `n` servers: a prime of at least 100 × n, so each server owns
/// about 100 positions or more (the paper's condition for small disruption and even balance).
///
/// The size comes in classes, 65,537 for up to 655 servers, then the first prime above each
/// power of two: every key's position depends on the size, so crossing a class boundary
/// remaps nearly all clients once. One class up to 655 servers keeps that out of every
/// realistic upstream, for 128 KB of u16 entries per ip_hash upstream.
fn maglev_table_size(n: usize) -> usize {
    let want = n.saturating_mul(100);
    if want <= 65_537 {
        return 65_537;
    }
    let mut m = want.next_power_of_two() + 1;
    while !is_prime(m) {
        m += 2;
    }
    m
}

fn is_prime(m: usize) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= m {
        if m.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A server id's hash, the same in every process and on every platform (FNV-1a, then
/// [`fmix64`]): replicas of the gateway built from the same config send a client to the same
/// server.
fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finaliser: every input bit flips each output bit with probability
/// about one half, so keys that differ in a few bits (neighbouring addresses) land far apart.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// `h` mapped onto `0..m` by a multiply instead of a division (Lemire's fast range); uses the
/// high bits of `h`, which [`fmix64`] makes uniform.
#[inline]
fn fast_range(h: u64, m: usize) -> usize {
    ((u128::from(h) * m as u128) >> 64) as usize
}

/// The longest weighted round robin cycle built. Weights whose sum (after dividing by their
/// gcd) is larger are scaled down to about this sum, each kept at 1 or more: a share then
/// differs from its weight's by at most one entry in this many.
pub const MAX_SEQUENCE: u64 = 1 << 16;

/// Up to this many steps (servers × cycle length) the cycle is NGINX's own algorithm, which
/// scans every server per entry; above it (thousands of servers) an equivalent smooth order
/// is built with a heap, so building never costs more than O(cycle · log servers).
const EXACT_STEPS: u64 = 1 << 22;

/// NGINX's smooth weighted round robin, unrolled into one full cycle (weights divided by their
/// greatest common divisor first, so the cycle is as short as it can be; scaled down to about
/// [`MAX_SEQUENCE`] entries when longer).
pub fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g).max(1)).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_SEQUENCE {
        for x in &mut w {
            *x = (*x * MAX_SEQUENCE / sum).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    if (w.len() as u64).saturating_mul(total) <= EXACT_STEPS {
        nginx_cycle(&w, total)
    } else {
        heap_cycle(&w, total)
    }
}

/// NGINX's algorithm: each step every server's current weight grows by its weight, the
/// largest is picked and loses the total.
fn nginx_cycle(w: &[u64], total: u64) -> Vec<u32> {
    let total = total as i64;
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

/// A smooth cycle for many servers: server `i` of `n` has its `k`-th entry (from 0) due at
/// `(k + (i + 1/2) / n) / w_i` of the cycle, and entries are taken in order of when they are
/// due (ties to the lower index). Each server's entries are spread evenly over the cycle, and
/// the offsets `(i + 1/2) / n` keep servers of the same weight from all falling due at once.
fn heap_cycle(w: &[u64], total: u64) -> Vec<u32> {
    use std::cmp::Ordering as O;
    use std::collections::BinaryHeap;
    /// Server `i`'s next entry, due at `num / den`; `step` is added to `num` per entry.
    #[derive(PartialEq, Eq)]
    struct Due {
        num: u64,
        den: u64,
        step: u64,
        i: u32,
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> O {
            // Reversed: the heap's top is the earliest due (then the lowest index).
            let a = u128::from(self.num) * u128::from(o.den);
            let b = u128::from(o.num) * u128::from(self.den);
            b.cmp(&a).then(o.i.cmp(&self.i))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<O> {
            Some(self.cmp(o))
        }
    }
    let n = w.len() as u64;
    // In units of 1 / (2 n w_i): due at (2 k n + 2 i + 1) / (2 n w_i).
    let mut heap: BinaryHeap<Due> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| Due {
            num: 2 * i as u64 + 1,
            den: 2 * n * wi,
            step: 2 * n,
            i: i as u32,
        })
        .collect();
    let mut seq = Vec::with_capacity(total as usize);
    while let Some(mut d) = heap.pop() {
        seq.push(d.i);
        d.num += d.step;
        // Its last entry is due before 1 (the end of the cycle): num < den.
        if d.num < d.den {
            heap.push(d);
        }
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashSet;

    #[test]
    fn nginx_interleaving() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[100, 200]), vec![1, 0, 1]);
        assert_eq!(smooth_sequence(&[1, 1, 1]), vec![0, 1, 2]);
    }

    /// Many servers with large weights: the cycle is capped, every server is in it, and each
    /// share stays its weight's.
    #[test]
    fn long_cycles_are_capped_and_keep_the_shares() {
        // 5,000 servers of weights 1000 and 999 (gcd 1): 5 million entries uncapped.
        let weights: Vec<u32> = (0..5_000).map(|i| 1000 - (i % 2)).collect();
        let seq = smooth_sequence(&weights);
        assert!(seq.len() as u64 <= MAX_SEQUENCE + 5_000, "{}", seq.len());
        let mut count = vec![0u32; weights.len()];
        for &i in &seq {
            count[i as usize] += 1;
        }
        assert!(count.iter().all(|&c| c >= 1));
        let (lo, hi) = (count.iter().min(), count.iter().max());
        assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{lo:?} {hi:?}");
        // A heavy server among light ones keeps its share, spread over the cycle.
        let mut weights = vec![1u32; 3_000];
        weights[0] = 1000;
        let seq = smooth_sequence(&weights);
        let heavy: Vec<usize> = (0..seq.len()).filter(|&p| seq[p] == 0).collect();
        assert_eq!(heavy.len(), 1000);
        let gaps = heavy.windows(2).map(|p| p[1] - p[0]);
        assert!(gaps.clone().max() <= Some(5), "{:?}", gaps.max());
        // The heap order agrees with NGINX's on the shares.
        let w = [5u64, 1, 1];
        let mut a = heap_cycle(&w, 7);
        let mut b = nginx_cycle(&w, 7);
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }

    /// A server whose state the test sets directly.
    struct Fake {
        up: Cell<bool>,
        inflight: Cell<u32>,
        ewma: Cell<u64>,
        success: Cell<f64>,
    }

    impl Fake {
        fn up() -> Fake {
            Fake {
                up: Cell::new(true),
                inflight: Cell::new(0),
                ewma: Cell::new(0),
                success: Cell::new(1.0),
            }
        }
    }

    impl ServerLoad for Fake {
        fn available(&self, _now_ms: u64) -> bool {
            self.up.get()
        }
        fn inflight(&self) -> u32 {
            self.inflight.get()
        }
        fn latency_ewma_ns(&self) -> u64 {
            self.ewma.get()
        }
        fn success_ratio(&self) -> f64 {
            self.success.get()
        }
    }

    fn fakes(n: usize) -> Vec<Fake> {
        (0..n).map(|_| Fake::up()).collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://10.0.{}.{}:8080", i / 256, i % 256))
            .collect()
    }

    fn balancer(strategy: Strategy, weights: &[u32]) -> Balancer {
        let ids = ids(weights.len());
        let specs: Vec<ServerSpec<'_>> = ids
            .iter()
            .zip(weights)
            .map(|(id, &weight)| ServerSpec { id, weight })
            .collect();
        Balancer::new(strategy, &specs)
    }

    fn first<S: ServerLoad>(b: &Balancer, servers: &[S], key: u64) -> Option<usize> {
        b.candidates(servers, 0, key).next()
    }

    /// For every strategy, size and availability pattern: only available servers, each at
    /// most once, all of them in the end, and nothing when none is available.
    #[test]
    fn candidates_are_the_available_servers_once_each() {
        for strategy in Strategy::ALL {
            for n in [1usize, 2, 3, 7, 16, 130, 300] {
                let weights: Vec<u32> = (0..n).map(|i| 1 + (i as u32 * 7) % 5).collect();
                let b = balancer(strategy, &weights);
                let servers = fakes(n);
                let patterns: [&dyn Fn(usize) -> bool; 6] = [
                    &|_| true,
                    &|_| false,
                    &|i| i % 2 == 0,
                    &|i| i % 3 != 1,
                    &|i| i == n - 1,
                    &|i| i != 0,
                ];
                for (p, up) in patterns.iter().enumerate() {
                    for (i, s) in servers.iter().enumerate() {
                        s.up.set(up(i));
                        s.inflight.set((i as u32 * 13) % 4);
                        s.ewma.set((i as u64 * 7919) % 1000);
                        s.success.set(((i % 10) as f64) / 10.0);
                    }
                    let expect: HashSet<usize> = (0..n).filter(|&i| up(i)).collect();
                    for key in 0..40u64 {
                        let got: Vec<usize> = b
                            .candidates(&servers, 0, key.wrapping_mul(0x1234_5678_9abc))
                            .collect();
                        let set: HashSet<usize> = got.iter().copied().collect();
                        let what = format!("{} n={n} pattern {p} key {key}", strategy.as_str());
                        assert_eq!(set.len(), got.len(), "{what}: repeated index in {got:?}");
                        assert_eq!(set, expect, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_servers_no_candidates() {
        for strategy in Strategy::ALL {
            let b = balancer(strategy, &[]);
            assert_eq!(b.candidates::<Fake>(&[], 0, 1).next(), None);
            // The caller passing fewer servers than the balancer was built for is not a panic.
            let b = balancer(strategy, &[1, 1, 1]);
            let one = fakes(1);
            let got: Vec<usize> = b.candidates(&one, 0, 9).collect();
            assert_eq!(got, vec![0], "{}", strategy.as_str());
        }
    }

    #[test]
    fn round_robin_rotates_and_skips_to_the_following_server() {
        let b = balancer(Strategy::RoundRobin, &[1, 1, 1]);
        let servers = fakes(3);
        let picks: Vec<_> = (0..6).map(|_| first(&b, &servers, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        servers[1].up.set(false);
        let picks: Vec<_> = (0..6).map(|_| first(&b, &servers, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 2, 0, 2, 2]);
        // Retries follow in index order after the pick.
        let all: Vec<_> = b.candidates(&servers, 0, 0).collect();
        assert_eq!(all, vec![0, 2]);
    }

    #[test]
    fn weighted_round_robin_follows_the_smooth_sequence() {
        let b = balancer(Strategy::WeightedRoundRobin, &[5, 1, 1]);
        let servers = fakes(3);
        let picks: Vec<_> = (0..14).map(|_| first(&b, &servers, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        // With b down its entry goes to the next entry of the sequence (a).
        servers[1].up.set(false);
        let picks: Vec<_> = (0..7).map(|_| first(&b, &servers, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 0, 0, 2, 0, 0]);
        // With a down, each of its entries goes to the next b or c in the sequence.
        servers[1].up.set(true);
        servers[0].up.set(false);
        let picks: Vec<_> = (0..7).map(|_| first(&b, &servers, 0).unwrap()).collect();
        assert_eq!(picks, vec![1, 1, 1, 2, 2, 1, 1]);
    }

    #[test]
    fn least_connections_picks_the_least_loaded_per_weight() {
        let b = balancer(Strategy::LeastConnections, &[1, 1, 1]);
        let servers = fakes(3);
        for (s, f) in servers.iter().zip([5, 2, 7]) {
            s.inflight.set(f);
        }
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(1));
        }
        servers[1].up.set(false);
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(0));
        }

        // 4 in flight on weight 2 is a lighter load than 3 on weight 1.
        let b = balancer(Strategy::LeastConnections, &[2, 1]);
        let servers = fakes(2);
        servers[0].inflight.set(4);
        servers[1].inflight.set(3);
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(0));
        }
    }

    #[test]
    fn least_connections_shares_ties() {
        let b = balancer(Strategy::LeastConnections, &[1, 1, 1, 1]);
        let servers = fakes(4);
        for s in &servers {
            s.inflight.set(3);
        }
        let mut count = [0usize; 4];
        for _ in 0..4000 {
            count[first(&b, &servers, 0).unwrap()] += 1;
        }
        for c in count {
            assert!((700..1300).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn p2c_takes_the_cheaper_of_two() {
        // Two servers: both are always drawn, so the cheaper always wins.
        let b = balancer(Strategy::P2cEwma, &[1, 1]);
        let servers = fakes(2);
        servers[0].ewma.set(5_000_000);
        servers[1].ewma.set(1_000_000);
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(1));
        }
        // Load counts: 1 ms with 9 in flight costs more than 5 ms idle.
        servers[1].inflight.set(9);
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(0));
        }
        // A server without a sample is attractive.
        servers[0].ewma.set(0);
        servers[0].inflight.set(0);
        servers[1].inflight.set(0);
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(0));
        }
        // Weight divides the cost: 3 ms on weight 4 beats 1 ms on weight 1.
        let b = balancer(Strategy::P2cEwma, &[4, 1]);
        servers[0].ewma.set(3_000_000);
        servers[1].ewma.set(1_000_000);
        for _ in 0..50 {
            assert_eq!(first(&b, &servers, 0), Some(0));
        }

        // Three servers: the most expensive never wins a pair, the cheapest wins every pair
        // it is in (2/3 of draws).
        let b = balancer(Strategy::P2cEwma, &[1, 1, 1]);
        let servers = fakes(3);
        for (s, e) in servers.iter().zip([2_000_000, 9_000_000, 1_000_000]) {
            s.ewma.set(e);
        }
        let mut count = [0usize; 3];
        for _ in 0..3000 {
            count[first(&b, &servers, 0).unwrap()] += 1;
        }
        assert_eq!(count[1], 0, "{count:?}");
        assert!((1800..2200).contains(&count[2]), "{count:?}");

        // One server: it.
        let b = balancer(Strategy::P2cEwma, &[1]);
        assert_eq!(first(&b, &fakes(1), 0), Some(0));
    }

    #[test]
    fn random_follows_weights() {
        let b = balancer(Strategy::Random, &[3, 1]);
        let servers = fakes(2);
        let mut count = [0usize; 2];
        for _ in 0..20_000 {
            count[first(&b, &servers, 0).unwrap()] += 1;
        }
        assert!((14_400..15_600).contains(&count[0]), "{count:?}");
    }

    #[test]
    fn health_based_follows_success_ratio() {
        let b = balancer(Strategy::HealthBased, &[1, 1]);
        let servers = fakes(2);
        servers[0].success.set(0.7);
        let mut count = [0usize; 2];
        for _ in 0..50_000 {
            count[first(&b, &servers, 0).unwrap()] += 1;
        }
        let share = count[0] as f64 / 50_000.0;
        assert!((share - 0.7 / 1.7).abs() < 0.01, "{count:?}");

        // A failing server keeps a trickle (its ratio floored at 1%), not nothing.
        servers[0].success.set(0.0);
        let mut count = [0usize; 2];
        for _ in 0..50_000 {
            count[first(&b, &servers, 0).unwrap()] += 1;
        }
        let share = count[0] as f64 / 50_000.0;
        assert!((share - 0.01 / 1.01).abs() < 0.003, "{count:?}");

        // All failing: the floor makes them equal again, and the exact fallback still picks.
        servers[1].success.set(0.0);
        let mut count = [0usize; 2];
        for _ in 0..10_000 {
            count[first(&b, &servers, 0).unwrap()] += 1;
        }
        assert!((4_500..5_500).contains(&count[0]), "{count:?}");
    }

    #[test]
    fn ip_hash_is_sticky_and_spreads_a_dead_servers_clients() {
        let b = balancer(Strategy::IpHash, &[1; 10]);
        let servers = fakes(10);
        let keys: Vec<u64> = (0..5000u64).map(|k| k.wrapping_mul(0x9e37_79b9)).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| first(&b, &servers, k).unwrap())
            .collect();
        for (&k, &s) in keys.iter().zip(&before) {
            assert_eq!(first(&b, &servers, k), Some(s));
        }
        servers[3].up.set(false);
        let mut heirs = HashSet::new();
        for (&k, &s) in keys.iter().zip(&before) {
            let now = first(&b, &servers, k).unwrap();
            if s == 3 {
                heirs.insert(now);
            } else {
                assert_eq!(now, s, "clients of live servers stay put");
            }
        }
        assert!(heirs.len() >= 7, "dead server's clients went to {heirs:?}");
        // It comes back: its clients return.
        servers[3].up.set(true);
        for (&k, &s) in keys.iter().zip(&before) {
            assert_eq!(first(&b, &servers, k), Some(s));
        }
    }

    #[test]
    fn maglev_table_is_balanced_and_weighted() {
        let b = balancer(Strategy::IpHash, &[1; 7]);
        let m = b.table_len();
        assert_eq!(m, 65_537);
        let mut count = [0usize; 7];
        for p in 0..m {
            count[b.table.get(p)] += 1;
        }
        for c in count {
            assert!(c.abs_diff(m / 7) <= 1, "{count:?}");
        }
        let b = balancer(Strategy::IpHash, &[3, 1]);
        let mut count = [0usize; 2];
        for p in 0..m {
            count[b.table.get(p)] += 1;
        }
        assert!(count[0].abs_diff(m * 3 / 4) <= 3, "{count:?}");
    }

    #[test]
    fn maglev_table_sizes_are_primes_of_100_per_server() {
        for n in [1, 2, 100, 655, 656, 1000, 5000, 70_000] {
            let m = maglev_table_size(n);
            assert!(is_prime(m), "{m}");
            assert!(m >= 100 * n, "{n}: {m}");
        }
        assert_eq!(maglev_table_size(655), 65_537);
        assert_eq!(maglev_table_size(656), maglev_table_size(1310));
    }

    #[test]
    fn ip_hash_with_more_than_128_servers_retries_without_repeats() {
        let b = balancer(Strategy::IpHash, &[1; 300]);
        let servers = fakes(300);
        for s in servers.iter().step_by(3) {
            s.up.set(false);
        }
        let got: Vec<usize> = b.candidates(&servers, 0, 42).take(50).collect();
        let set: HashSet<usize> = got.iter().copied().collect();
        assert_eq!(set.len(), 50);
        assert!(got.iter().all(|&i| i % 3 != 0));
    }
}
