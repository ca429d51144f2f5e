//! The background runtime: one thread with a current-thread tokio runtime for the gateway's
//! own outbound and periodic work (health checks, JWKS fetches, the Redis connection, sweeps of
//! retired runtimes), started on first use. Request workers never run this work.

use std::sync::OnceLock;

/// The background runtime for the gateway's own outbound work (health checks, JWKS fetches),
/// one thread, started on first use.
pub fn background() -> Option<&'static tokio::runtime::Handle> {
    static HANDLE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("kairos-health".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "health check runtime failed to start");
                            let _ = tx.send(None);
                            return;
                        }
                    };
                    let _ = tx.send(Some(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                });
            match spawned {
                Ok(_) => rx.recv().ok().flatten(),
                Err(e) => {
                    tracing::error!(error = %e, "health check thread failed to start");
                    None
                }
            }
        })
        .as_ref()
}
