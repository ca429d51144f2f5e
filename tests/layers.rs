//! The crate's layers: every `crate::` import points down (or sideways within a folder), never
//! up, so no two folders depend on each other. The order is the README's architecture section:
//!
//! base <- config <- observability <- upstream, edge, cache <- runtime <- proxy, admin <- server
//! <- cli, main, fuzz
//!
//! A new folder must be given its layer here; an arrow up fails with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of src/ and its layer (higher may use lower, equal may not cross).
const LAYERS: &[(&str, u8)] = &[
    ("base", 0),
    ("config", 1),
    ("observability", 2),
    ("upstream", 3),
    ("edge", 3),
    ("cache", 3),
    ("runtime", 4),
    ("proxy", 5),
    ("admin", 5),
    ("server", 6),
    ("cli", 7),
    ("main", 7),
    ("fuzz", 7),
    ("lib", 8),
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules named by `crate::x` paths and `use crate::{x, y}` groups in `line`.
fn targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn every_import_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut arrows: BTreeMap<(String, String), usize> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let Some(&from_layer) = layer.get(from.as_str()) else {
            problems.push(format!(
                "{}: module `{from}` has no layer in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // Unit tests may reach anywhere; they are not part of the library's graph.
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for to in targets(line) {
                if to == from {
                    continue;
                }
                let Some(&to_layer) = layer.get(to.as_str()) else {
                    problems.push(format!(
                        "{}:{}: `crate::{to}` is not a known module",
                        file.display(),
                        n + 1
                    ));
                    continue;
                };
                *arrows.entry((from.clone(), to.clone())).or_default() += 1;
                if to_layer >= from_layer {
                    problems.push(format!(
                        "{}:{}: {from} (layer {from_layer}) uses {to} (layer {to_layer})",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports that do not point down:\n{}",
        problems.join("\n")
    );
    // The graph, for `cargo test --test layers -- --nocapture`.
    for ((from, to), n) in &arrows {
        println!("{from} -> {to} ({n})");
    }
}

#[test]
fn the_checker_sees_groups_and_paths() {
    assert_eq!(
        targets("use crate::{admin, proxy::x}; let a = crate::base::clock::now_ms();"),
        ["admin", "proxy", "base"]
    );
}
