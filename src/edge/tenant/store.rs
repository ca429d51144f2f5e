//! The embedded quota store: daily counts (admitted and refused requests) per tenant in a redb
//! database, a file (or memory, for the `memory` backend). Counting happens in memory
//! ([`super::quota`]); a background thread writes the counts that changed once a second, in
//! one transaction, so a crash loses at most the last second of counts.
//!
//! Keys are `tenant/YYYY-MM-DD`: a tenant's days sort by date, so a month or a usage export is
//! one range scan.

use crate::base::clock::Date;
use redb::TableDefinition;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

const REQUESTS: TableDefinition<&str, u64> = TableDefinition::new("requests");
const REFUSED: TableDefinition<&str, u64> = TableDefinition::new("refused");

/// How often counts are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A store operation failed (the message names what redb said).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota store: {0}")]
pub struct StoreError(pub String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// One day's counts of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayCounts {
    pub requests: u64,
    pub refused: u64,
}

/// Something the flusher writes: the absolute counts of (tenant, day) it currently holds.
pub trait Flushable: Send + Sync {
    /// Counts changed since the last write, as (tenant, day, counts).
    fn changed(&self) -> Vec<(String, i64, DayCounts)>;
    /// The store now holds `written` (what [`Flushable::changed`] returned): a failed write
    /// leaves them changed, to be written next time.
    fn written(&self, written: &[(String, i64, DayCounts)]);
}

/// The database and the counters it flushes.
pub struct Store {
    db: redb::Database,
    /// What the flusher asks for changed counts; dead entries are dropped as they are seen.
    sources: Mutex<Vec<Weak<dyn Flushable>>>,
    /// Serialises flushes (the thread's and an admin read's).
    flushing: Mutex<()>,
    pub label: &'static str,
}

fn key(tenant: &str, day: i64) -> String {
    format!("{tenant}/{}", Date::from_days(day))
}

impl Store {
    /// Opens (or creates) the database file, readable and writable by its owner only, and
    /// starts the flusher.
    pub fn open_file(path: &Path) -> Result<Arc<Store>, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // Created owner-only from the start (redb initialises an empty file), and narrowed to
        // that if it existed with wider permissions.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        let db = redb::Database::create(path).map_err(err)?;
        Self::start(db, "file")
    }

    /// A store in memory (counts lost on restart).
    pub fn in_memory() -> Result<Arc<Store>, StoreError> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(err)?;
        Self::start(db, "memory")
    }

    fn start(db: redb::Database, label: &'static str) -> Result<Arc<Store>, StoreError> {
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(REQUESTS).map_err(err)?;
        tx.open_table(REFUSED).map_err(err)?;
        tx.commit().map_err(err)?;
        let store = Arc::new(Store {
            db,
            sources: Mutex::new(Vec::new()),
            flushing: Mutex::new(()),
            label,
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("kairos-quota-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.flush() {
                    tracing::warn!(error = %e, "quota counts not written; retried in a second");
                }
            })
            .map_err(err)?;
        Ok(store)
    }

    /// Adds counters for the flusher to write.
    pub fn register(&self, source: Weak<dyn Flushable>) {
        lock(&self.sources).push(source);
    }

    /// Writes every changed count now, in one transaction.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one = lock(&self.flushing);
        let sources: Vec<Arc<dyn Flushable>> = {
            let mut s = lock(&self.sources);
            s.retain(|w| w.strong_count() > 0);
            s.iter().filter_map(Weak::upgrade).collect()
        };
        let changed: Vec<_> = sources.iter().map(|s| s.changed()).collect();
        if changed.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut req = tx.open_table(REQUESTS).map_err(err)?;
            let mut refused = tx.open_table(REFUSED).map_err(err)?;
            for (tenant, day, c) in changed.iter().flatten() {
                let k = key(tenant, *day);
                req.insert(k.as_str(), c.requests).map_err(err)?;
                refused.insert(k.as_str(), c.refused).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        for (source, written) in sources.iter().zip(&changed) {
            source.written(written);
        }
        Ok(())
    }

    /// The counts of `tenant` on each day from `from` to `to` (days since the epoch,
    /// inclusive) that has any.
    pub fn days(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, DayCounts)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let req = tx.open_table(REQUESTS).map_err(err)?;
        let refused = tx.open_table(REFUSED).map_err(err)?;
        let (lo, hi) = (key(tenant, from), key(tenant, to));
        let mut out = Vec::new();
        for item in req.range(lo.as_str()..=hi.as_str()).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let Some(date) = k.value().rsplit_once('/').and_then(|(_, d)| Date::parse(d)) else {
                continue;
            };
            let r = refused
                .get(k.value())
                .map_err(err)?
                .map_or(0, |g| g.value());
            out.push((
                date.days(),
                DayCounts {
                    requests: v.value(),
                    refused: r,
                },
            ));
        }
        Ok(out)
    }

    /// The counts of `tenant` on `day`.
    pub fn day(&self, tenant: &str, day: i64) -> Result<DayCounts, StoreError> {
        Ok(self
            .days(tenant, day, day)?
            .first()
            .map_or(DayCounts::default(), |(_, c)| *c))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
