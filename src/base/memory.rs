//! Returning freed memory to the operating system after the big, rare frees: the parse of a
//! config and the runtime a reload replaced. Allocators keep freed pages for reuse (mimalloc
//! purges them only when the process allocates again, which an idle gateway does not), so a
//! 10,000-route config's parse garbage would otherwise stay resident for good. The binary
//! chooses the allocator and installs the matching release function at start-up.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Installs the function that returns the allocator's free memory to the OS (the binary's
/// `mi_collect(true)` with mimalloc). The first one installed stays.
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Returns free memory to the OS: the installed function, or glibc's `malloc_trim(0)` when
/// none is (the system allocator: tests and `--no-default-features` builds). Costs a walk of
/// the allocator's free pages (about a millisecond after a 10,000-route build): call it after
/// a config build or a reload, never per request.
pub fn release_free_memory() {
    match RELEASE.get() {
        Some(f) => f(),
        None => trim_system_allocator(),
    }
}

fn trim_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes glibc's arena locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn the_installed_release_function_runs_on_each_release_and_stays() {
        // The system allocator's trim runs (and returns) before any function is installed.
        release_free_memory();
        set_release(|| {
            CALLS.fetch_add(1, Ordering::SeqCst);
        });
        // A second installation is ignored: the binary's choice stays.
        set_release(|| panic!("replaced the first release function"));
        release_free_memory();
        release_free_memory();
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    }
}
