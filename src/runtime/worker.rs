//! The reload thread: all reload work (validation, building the new runtime, persisting) runs
//! on one thread at a low CPU priority, never on a request worker.

/// Runs `f` on the reload thread: one thread for all reload work (validation, building the
/// new runtime, persisting), so reloads are serialized, never run on a worker, and run at a
/// lower CPU priority (nice 19) than the workers: on a busy machine, config work yields to
/// traffic instead of taking time slices from it. Measured (benches/reload.sh, a 10,000-route
/// config, the gateway pinned to one saturated CPU, 10 reloads/s asked for): throughput
/// during reloads 0.60 of the steady rate at nice 0, 0.84 at nice 10, 0.92 at nice 19; the
/// price is that a reload waits for spare CPU (2.2 s under that saturation, 46 ms idle).
pub fn on_reload_thread<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> tokio::sync::oneshot::Receiver<R> {
    type Job = Box<dyn FnOnce() + Send>;
    static JOBS: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // A panic in one reload must not take the reload thread with it; the caller sees
        // the dropped answer.
        if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let _ = tx.send(out);
        }
    });
    let sender = JOBS.get_or_init(|| {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("kairos-reload".into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = jobs_rx.recv() {
                    job();
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(jobs_tx))
    });
    match sender {
        Some(s) => {
            if let Err(e) = s.lock().unwrap_or_else(|e| e.into_inner()).send(job) {
                // The thread is gone: run here rather than never.
                (e.0)();
            }
        }
        None => job(),
    }
    rx
}

/// Nice 19 for the calling thread (Linux applies setpriority to one thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
            tracing::debug!("could not lower the reload thread's priority");
        }
    }
}
