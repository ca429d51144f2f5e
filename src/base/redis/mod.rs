//! The Redis layer shared by the gateway's Redis users (rate limits, the response cache,
//! tenant quotas): one client per user for what its `redis_url` names ([`target`]: one node,
//! a Sentinel-managed master, a Cluster; TLS with a CA and a client certificate), the timeout
//! of every connect and call, one connection per worker thread (its driver runs on that
//! worker's runtime: no cross-thread hop per call), and the connection's health (the
//! `kairos_redis_up{role}` gauge, the readiness answer). What a failure means (an outage, a
//! fallback) is each user's own business.
//!
//! Failover: with Sentinel, every new connection asks the sentinels for the current master
//! (and checks that it says it is one), so a user that drops its connection after a failure
//! finds the new master on the next call; an answer `READONLY` (a demoted master) counts as a
//! connection failure for that reason. A planned failover leaves the old master up and
//! writable for a while (the sentinels demote it seconds later), so the client also listens
//! to the sentinels' `+switch-master` announcements: each one retires every worker's
//! connection, and the next call connects to the new master. A Cluster connection follows
//! slot moves by itself.

mod conn;
pub mod target;

pub use conn::{Conn, NodeAddr};
pub use target::{hash_tag, Target, TlsFiles};

use prometheus::IntGauge;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The Redis settings cannot be used (the reason holds no URL: it may carry a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid redis_url: {0}")]
pub struct InvalidRedisUrl(pub String);

enum Kind {
    Node(redis::Client),
    Sentinel {
        client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
        /// One client per sentinel, for the `+switch-master` subscription.
        sentinels: Vec<redis::Client>,
        master: String,
        /// Whether the subscription has been started (on the first connect).
        watching: AtomicBool,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        /// One client per seed node, for the subscriptions (classic pub/sub reaches every
        /// node of a Cluster).
        seeds: Vec<redis::Client>,
    },
}

/// One Redis (or Sentinel group, or Cluster): its clients, the timeout, its health.
pub struct RedisClient {
    kind: Kind,
    timeout: Duration,
    target: &'static str,
    up: AtomicBool,
    up_gauge: Option<IntGauge>,
    /// Bumped when the sentinels announce a new master: connections made before are retired.
    generation: Arc<AtomicU64>,
}

thread_local! {
    /// This worker's connection to each Redis client alive in the process, with the
    /// generation it was made in.
    static CONNECTIONS: RefCell<Vec<(Weak<RedisClient>, Conn, u64)>> =
        const { RefCell::new(Vec::new()) };
}

/// The PEM files of `redis_tls`, read.
fn certificates(tls: &TlsFiles) -> Result<redis::TlsCertificates, InvalidRedisUrl> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| InvalidRedisUrl(format!("redis_tls.{what} {}: {e}", p.display())))
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read("ca_file", p))
        .transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read("cert_file", c)?,
            client_key: read("key_file", k)?,
        }),
        (None, None) => None,
        _ => {
            return Err(InvalidRedisUrl(
                "redis_tls needs both cert_file and key_file for a client certificate".into(),
            ))
        }
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn invalid(e: redis::RedisError) -> InvalidRedisUrl {
    // The redis crate's errors on building a client name the part that failed (a PEM, a
    // scheme), never the URL.
    InvalidRedisUrl(format!("{} ({})", e.category(), e.detail().unwrap_or("")))
}

impl RedisClient {
    /// A client for `url` with the TLS files `tls` (nothing is connected yet).
    pub fn open(
        url: &str,
        tls: Option<&TlsFiles>,
        timeout: Duration,
    ) -> Result<RedisClient, InvalidRedisUrl> {
        let target = Target::parse(url).map_err(|e| InvalidRedisUrl(e.into()))?;
        let certs = match tls {
            Some(_) if !target.tls() => {
                return Err(InvalidRedisUrl(
                    "redis_tls applies only to a rediss:// URL (or rediss+sentinel://, rediss+cluster://)"
                        .into(),
                ))
            }
            Some(files) => Some(certificates(files)?),
            None => None,
        };
        if target.tls() {
            crate::base::tls::install_crypto_provider();
        }
        let node = |url: &str| match &certs {
            Some(c) => redis::Client::build_with_tls(url, c.clone()).map_err(invalid),
            None => redis::Client::open(url).map_err(invalid),
        };
        let kind = match &target {
            Target::Single { url, .. } => Kind::Node(node(url)?),
            Target::Sentinel {
                sentinels,
                master,
                auth_url,
                tls,
            } => {
                use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
                use redis::{ConnectionAddr, IntoConnectionInfo};
                let auth = auth_url.as_str().into_connection_info().map_err(invalid)?;
                let auth = auth.redis_settings();
                let addrs = sentinels.iter().map(|(h, p)| match tls {
                    true => ConnectionAddr::TcpTls {
                        host: h.clone(),
                        port: *p,
                        insecure: false,
                        tls_params: None,
                    },
                    false => ConnectionAddr::Tcp(h.clone(), *p),
                });
                let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(invalid)?
                    .set_client_to_redis_db(auth.db());
                if let Some(u) = auth.username() {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = auth.password() {
                    b = b.set_client_to_redis_password(p);
                }
                if *tls {
                    b = b
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                    if let Some(c) = &certs {
                        b = b
                            .set_client_to_redis_certificates(c.clone())
                            .set_client_to_sentinel_certificates(c.clone());
                    }
                }
                let scheme = if *tls { "rediss" } else { "redis" };
                Kind::Sentinel {
                    client: tokio::sync::Mutex::new(b.build().map_err(invalid)?),
                    sentinels: sentinels
                        .iter()
                        .map(|(h, p)| {
                            let host = if h.contains(':') {
                                format!("[{h}]")
                            } else {
                                h.clone()
                            };
                            node(&format!("{scheme}://{host}:{p}"))
                        })
                        .collect::<Result<_, _>>()?,
                    master: master.clone(),
                    watching: AtomicBool::new(false),
                }
            }
            Target::Cluster { nodes, tls } => {
                let mut b = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1);
                if *tls {
                    b = b.tls(redis::TlsMode::Secure);
                    if let Some(c) = &certs {
                        b = b.certs(c.clone());
                    }
                }
                Kind::Cluster {
                    client: b.build().map_err(invalid)?,
                    seeds: nodes.iter().map(|n| node(n)).collect::<Result<_, _>>()?,
                }
            }
        };
        Ok(RedisClient {
            kind,
            timeout,
            target: target.kind(),
            up: AtomicBool::new(true),
            up_gauge: None,
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Reports the connection's health in `gauge` (1 up, 0 down) from now on.
    pub fn with_up_gauge(mut self, gauge: IntGauge) -> RedisClient {
        gauge.set(i64::from(self.up.load(Ordering::Relaxed)));
        self.up_gauge = Some(gauge);
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// "single", "sentinel" or "cluster".
    pub fn target(&self) -> &'static str {
        self.target
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records whether the last call reached Redis (a command answered, even with an error,
    /// is up; a refused connect, a timeout or a dropped connection is down).
    pub fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if let Some(g) = &self.up_gauge {
                g.set(i64::from(up));
            }
        }
    }

    /// A new connection, connect and calls bounded by the timeout. Through Sentinel, the
    /// master is looked up afresh.
    pub async fn connect(&self) -> redis::RedisResult<Conn> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match &self.kind {
            Kind::Node(c) => c
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map(Conn::Node),
            Kind::Sentinel { client, .. } => {
                self.watch_switches();
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&cfg)
                    .await
                    .map(Conn::Node)
            }
            Kind::Cluster { client, .. } => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// This worker's connection, if it has one made since the last announced failover.
    pub fn cached(self: &Arc<Self>) -> Option<Conn> {
        let generation = self.generation.load(Ordering::Acquire);
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            let i = c
                .iter()
                .position(|(w, _, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)))?;
            if c[i].2 != generation {
                // Made before a failover: to a master that is no longer the master.
                c.swap_remove(i);
                return None;
            }
            Some(c[i].1.clone())
        })
    }

    /// Keeps `conn` as this worker's connection, unless another call stored one first: the
    /// connection to use.
    pub fn keep(self: &Arc<Self>, conn: Conn) -> Conn {
        if let Some(existing) = self.cached() {
            return existing;
        }
        let generation = self.generation.load(Ordering::Acquire);
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            // Connections of clients that are gone (replaced by a reload) are dropped here.
            c.retain(|(w, _, _)| w.strong_count() > 0);
            c.push((Arc::downgrade(self), conn.clone(), generation));
        });
        conn
    }

    /// Drops this worker's connection (after a failure: the next call connects afresh).
    pub fn forget(self: &Arc<Self>) {
        CONNECTIONS.with(|c| {
            c.borrow_mut().retain(|(w, _, _)| {
                w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(self))
            })
        });
    }

    /// Sentinel: listens (once started, for as long as the client lives) to the sentinels'
    /// `+switch-master` for this master, one sentinel at a time, the next one when it fails
    /// (100 ms, backing off to 2 s); each announcement retires the connections made before.
    fn watch_switches(&self) {
        let Kind::Sentinel {
            sentinels,
            master,
            watching,
            ..
        } = &self.kind
        else {
            return;
        };
        if watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(rt) = crate::base::background::background() else {
            tracing::error!("no background runtime: Sentinel failovers are seen only by errors");
            return;
        };
        let (sentinels, master) = (sentinels.clone(), master.clone());
        let generation = self.generation.clone();
        let timeout = self.timeout;
        rt.spawn(async move {
            use futures_util::StreamExt;
            let mut pause = Duration::from_millis(100);
            let prefix = format!("{master} ");
            for s in sentinels.iter().cycle() {
                if Arc::strong_count(&generation) == 1 {
                    return; // the client is gone
                }
                let sub = async {
                    let mut ps = s.get_async_pubsub().await?;
                    ps.subscribe("+switch-master").await?;
                    Ok::<_, redis::RedisError>(ps)
                };
                if let Ok(Ok(mut ps)) =
                    tokio::time::timeout(timeout.max(Duration::from_secs(1)), sub).await
                {
                    pause = Duration::from_millis(100);
                    let mut messages = ps.on_message();
                    loop {
                        // Woken once a second to notice a client replaced by a reload.
                        match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                            Ok(Some(msg)) => {
                                let payload = msg.get_payload_bytes();
                                if payload.starts_with(prefix.as_bytes()) {
                                    generation.fetch_add(1, Ordering::AcqRel);
                                    tracing::info!(
                                        master = master.as_str(),
                                        "Sentinel announced a new master; reconnecting"
                                    );
                                }
                            }
                            Ok(None) => break,
                            Err(_) if Arc::strong_count(&generation) == 1 => return,
                            Err(_) => {}
                        }
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// This worker's connection, or a new one within the timeout (then kept). A failure
    /// marks the client down.
    pub async fn connection(self: &Arc<Self>) -> Result<Conn, String> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let out = match tokio::time::timeout(self.timeout, self.connect()).await {
            // Several calls may have connected at once: one connection is kept and used by
            // all, the others are dropped here.
            Ok(Ok(c)) => Ok(self.keep(c)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        };
        if out.is_err() {
            self.mark(false);
        }
        out
    }

    /// Whether Redis answers a PING now (for readiness), on this worker's connection; the
    /// health follows the answer.
    pub async fn ping(self: &Arc<Self>) -> bool {
        let Ok(mut conn) = self.connection().await else {
            return false;
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let ok = matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(_)));
        if !ok {
            self.forget();
        }
        self.mark(ok);
        ok
    }

    /// A connection of its own for `SUBSCRIBE`, within the timeout: to the node, the current
    /// master (Sentinel), or the first seed node that answers (Cluster: classic pub/sub is
    /// broadcast to every node).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let connect = async {
            match &self.kind {
                Kind::Node(c) => c.get_async_pubsub().await,
                Kind::Sentinel { client, .. } => {
                    let master = client.lock().await.async_get_client().await?;
                    master.get_async_pubsub().await
                }
                Kind::Cluster { seeds, .. } => {
                    let mut last = None;
                    for s in seeds {
                        match s.get_async_pubsub().await {
                            Ok(p) => return Ok(p),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::Io, "no seed node"))
                    }))
                }
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        }
    }
}

/// Whether a failed call means the connection (or Redis) is gone, rather than an error answer.
/// `READONLY` is one: the node was the master and has been demoted (a Sentinel failover), so
/// the next call must find the new master.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.code() == Some("READONLY")
}
