//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the fuzz targets' entry
//! points with the stable toolchain, so every input the fuzzers kept, and every crash turned
//! into a regression input, runs in CI. The fuzzers themselves run with `cargo fuzz` (see
//! fuzz/README.md).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked on {}", target, path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn config_corpus() {
    replay("config", kairos_rs::fuzz::config);
}

#[test]
fn router_corpus() {
    replay("router", kairos_rs::fuzz::router);
}

#[test]
fn headers_corpus() {
    replay("headers", kairos_rs::fuzz::headers);
}

#[test]
fn auth_corpus() {
    replay("auth", kairos_rs::fuzz::auth);
}
