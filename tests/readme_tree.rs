//! The README's source tree (the fenced block right under `### Source tree`) names exactly what
//! is in `src/`: every folder and every `.rs` file, and nothing that does not exist.
//!
//! The block has one entry per line: a path from the repository root (`src/proxy/route.rs`;
//! a folder ends with `/`, `src/proxy/`), then a short description. Lines that start with
//! whitespace continue the previous entry's description. `src/a/*.rs` stands for the `.rs`
//! files directly in `src/a/` that the block does not name one by one (there must be some).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const HEADING: &str = "### Source tree";

/// The paths the block names, in the order written, or why the block cannot be read.
fn tree_block(readme: &str) -> Result<Vec<String>, String> {
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == HEADING)
        .ok_or_else(|| format!("README.md has no `{HEADING}` heading"))?;
    let fence = lines
        .by_ref()
        .find(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("```"))
        .ok_or_else(|| format!("the first thing under `{HEADING}` must be a fenced code block"))?;
    let fence = &fence[..fence.len() - fence.trim_start_matches('`').len()];
    let mut paths = Vec::new();
    for line in lines {
        if line.trim_end() == fence {
            return Ok(paths);
        }
        if line.trim().is_empty() || line.starts_with(char::is_whitespace) {
            continue;
        }
        paths.push(
            line.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    Err(format!("the code block under `{HEADING}` is not closed"))
}

/// Every folder (as `src/a/b/`) and every file (as `src/a/b.rs`) under `dir`, recursively.
fn walk(root: &Path, dir: &Path, folders: &mut BTreeSet<String>, files: &mut BTreeSet<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        if entry.file_type().expect("file type").is_dir() {
            folders.insert(format!("{rel}/"));
            walk(root, &path, folders, files);
        } else {
            files.insert(rel);
        }
    }
}

#[test]
fn readme_source_tree_names_exactly_what_is_in_src() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let named = tree_block(&readme).unwrap_or_else(|e| panic!("{e}"));

    let mut folders = BTreeSet::new();
    let mut files = BTreeSet::new();
    walk(&root, &root.join("src"), &mut folders, &mut files);

    let mut problems = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut globs = Vec::new();
    for path in &named {
        if !seen.insert(path.clone()) {
            problems.push(format!("named twice: {path}"));
        }
        if !path.starts_with("src/") {
            problems.push(format!("not a path under src/: {path}"));
        } else if let Some(folder) = path.strip_suffix("*.rs") {
            globs.push((path, folder));
        } else if path != "src/" && !folders.contains(path) && !files.contains(path) {
            let what = if path.ends_with('/') {
                "folder"
            } else {
                "file"
            };
            problems.push(format!("named but no such {what}: {path}"));
        }
    }
    // A glob names the .rs files of its folder that no line names on its own.
    for (glob, folder) in globs {
        let covered: Vec<&String> = files
            .iter()
            .filter(|f| {
                f.strip_prefix(folder)
                    .is_some_and(|rest| rest.ends_with(".rs") && !rest.contains('/'))
            })
            .filter(|f| !seen.contains(*f))
            .collect();
        if covered.is_empty() {
            problems.push(format!("named but no such files: {glob}"));
        }
        let covered: Vec<String> = covered.into_iter().cloned().collect();
        seen.extend(covered);
    }
    for folder in &folders {
        if !seen.contains(folder) {
            problems.push(format!("folder not named: {folder}"));
        }
    }
    for file in files.iter().filter(|f| f.ends_with(".rs")) {
        if !seen.contains(file) {
            problems.push(format!("file not named: {file}"));
        }
    }
    assert!(
        problems.is_empty(),
        "README.md's `{HEADING}` block and src/ disagree ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_block_parser_reads_entries_and_skips_continuations() {
    let readme = "x\n### Source tree\n\n```text\nsrc/a.rs   one\n           more\nsrc/b/     two\nsrc/b/*.rs three\n```\n";
    assert_eq!(
        tree_block(readme).unwrap(),
        ["src/a.rs", "src/b/", "src/b/*.rs"]
    );
    assert!(tree_block("### Source tree\ntext\n").is_err());
    assert!(tree_block("### Source tree\n```\nsrc/a.rs\n").is_err());
    assert!(tree_block("no heading").is_err());
}
