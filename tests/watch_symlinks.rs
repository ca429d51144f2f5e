//! The config watcher follows symlinks: a Kubernetes ConfigMap update (the `..data` link
//! swapped atomically to a new timestamped directory), an edit of the file the links point to,
//! and a link to a file in another directory are all picked up by a running gateway.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;
use support::{wait_until, GatewayProcess, Upstream};

/// A config with one route, `/{name}`, to `upstream`.
fn config(upstream: &str, name: &str) -> String {
    serde_json::json!({
        "version": 1,
        "server": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"up": {"servers": [{"url": upstream}]}},
        "routes": [{"name": name, "path": format!("/{name}"), "upstream": "up"}],
        "logging": {"format": "json", "level": "info"},
    })
    .to_string()
}

fn status(gw: &GatewayProcess, path: &str) -> u16 {
    support::install_crypto_provider();
    reqwest::blocking::Client::new()
        .get(gw.url(path))
        .timeout(Duration::from_secs(5))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Waits (bounded) until `path` is served, and says whether it was.
fn served(gw: &GatewayProcess, path: &str) -> bool {
    wait_until(Duration::from_secs(15), || status(gw, path) == 200)
}

/// Writes the ConfigMap layout `dir/..<stamp>/config.json`.
fn configmap_version(dir: &Path, stamp: &str, text: &str) {
    let version = dir.join(format!("..{stamp}"));
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("config.json"), text).unwrap();
}

#[test]
fn a_configmap_swap_and_an_edit_of_the_link_target_are_reloaded() {
    let up = Upstream::start_ok();
    let dir = tempfile::tempdir().unwrap();
    // What the kubelet writes: config.json -> ..data/config.json, ..data -> ..<stamp>.
    configmap_version(dir.path(), "2026_12_07_01", &config(&up.url(), "first"));
    symlink("..2026_12_07_01", dir.path().join("..data")).unwrap();
    symlink("..data/config.json", dir.path().join("config.json")).unwrap();
    let path = dir.path().to_path_buf();
    let gw = GatewayProcess::start_in_dir(dir, &[]);
    assert_eq!(status(&gw, "/first"), 200);

    // An update: a new version directory, a new link renamed over ..data, the old one removed.
    configmap_version(&path, "2026_12_07_02", &config(&up.url(), "second"));
    symlink("..2026_12_07_02", path.join("..data_tmp")).unwrap();
    std::fs::rename(path.join("..data_tmp"), path.join("..data")).unwrap();
    std::fs::remove_dir_all(path.join("..2026_12_07_01")).unwrap();
    assert!(
        served(&gw, "/second"),
        "the ConfigMap swap was not reloaded"
    );
    assert_eq!(status(&gw, "/first"), 404);

    // The file the links point to, edited in place.
    std::fs::write(
        path.join("..2026_12_07_02/config.json"),
        config(&up.url(), "third"),
    )
    .unwrap();
    assert!(
        served(&gw, "/third"),
        "an edit of the link's target was not reloaded"
    );
    assert_eq!(status(&gw, "/second"), 404);
}

#[test]
fn a_link_to_a_file_in_another_directory_is_followed() {
    let up = Upstream::start_ok();
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join("gateway.json");
    std::fs::write(&real, config(&up.url(), "before")).unwrap();
    symlink(&real, dir.path().join("config.json")).unwrap();
    let gw = GatewayProcess::start_in_dir(dir, &[]);
    assert_eq!(status(&gw, "/before"), 200);

    // An editor's save: a temp file renamed over the target, in the target's directory.
    let tmp = elsewhere.path().join(".gateway.json.swp");
    std::fs::write(&tmp, config(&up.url(), "after")).unwrap();
    std::fs::rename(&tmp, &real).unwrap();
    assert!(
        served(&gw, "/after"),
        "an edit of the linked file was not reloaded"
    );
    assert_eq!(status(&gw, "/before"), 404);
}
