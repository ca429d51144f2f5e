//! Request coalescing: the first miss for a key fetches it; the others wait for that fetch
//! (to its stored end, or its failure) for at most the lock timeout, then look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Default)]
pub struct Locks {
    held: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
}

/// The fetch of one key, held by the request that makes it; released when dropped (the
/// answer stored, or given up), which wakes the waiters.
pub struct Fetch {
    locks: Arc<Locks>,
    key: Arc<str>,
    _tx: watch::Sender<()>,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        if let Ok(mut held) = self.locks.held.lock() {
            held.remove(&self.key);
        }
        // Dropping the sender wakes every waiter.
    }
}

pub enum Acquired {
    /// This request fetches.
    Fetch(Fetch),
    /// Another request is fetching: wait on this.
    Wait(watch::Receiver<()>),
}

impl Locks {
    pub fn acquire(self: &Arc<Self>, key: &Arc<str>) -> Acquired {
        let Ok(mut held) = self.held.lock() else {
            // A poisoned map: no coalescing, every request fetches.
            let (tx, _) = watch::channel(());
            return Acquired::Fetch(Fetch {
                locks: self.clone(),
                key: key.clone(),
                _tx: tx,
            });
        };
        if let Some(rx) = held.get(key) {
            return Acquired::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        held.insert(key.clone(), rx);
        Acquired::Fetch(Fetch {
            locks: self.clone(),
            key: key.clone(),
            _tx: tx,
        })
    }

    /// Whether a fetch of `key` is under way.
    pub fn busy(&self, key: &str) -> bool {
        self.held.lock().is_ok_and(|h| h.contains_key(key))
    }
}

/// Waits until the fetch `rx` watches is over, or `timeout` passed: whether it ended.
pub async fn wait(mut rx: watch::Receiver<()>, timeout: std::time::Duration) -> bool {
    // `changed` fails once the sender is gone: the fetch is over.
    tokio::time::timeout(timeout, async { while rx.changed().await.is_ok() {} })
        .await
        .is_ok()
}
