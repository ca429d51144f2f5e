//! The Docker build without a Docker engine: the build context is assembled the way
//! .dockerignore filters it, then the builder stage's COPY and RUN steps run on it in a temp
//! dir. Every COPY source must be in the filtered context; every `cargo` call of a RUN step is
//! replaced by `cargo fetch --offline --locked --target <host>`, which parses the manifest as
//! the stage has it at that point (stubs included: a declared target without a file is
//! refused) and resolves the lockfile and the `[patch]` paths, without compiling or network.
//! Finally every `include_str!`/`include_bytes!` of the copied sources must resolve.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---- .dockerignore ------------------------------------------------------------------------

/// One .dockerignore line: a cleaned pattern (no leading `/`, no trailing `/`, no `.`
/// components) split into path components, and whether it is an exception (`!`).
struct Pattern {
    parts: Vec<String>,
    exception: bool,
}

/// The rules of Docker's pattern matcher (moby/patternmatcher, as BuildKit applies them):
/// patterns are relative to the context root; `*` and `?` do not cross `/`, `**` matches any
/// number of directories; a path is matched when the pattern matches it or one of its parent
/// directories; the last pattern that matches decides, `!` re-includes.
struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pat) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let parts: Vec<String> = pat
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .map(str::to_string)
                .collect();
            assert!(
                !parts.iter().any(|p| p == ".."),
                ".dockerignore: `..` is not handled by this test: {line}"
            );
            if !parts.is_empty() {
                patterns.push(Pattern { parts, exception });
            }
        }
        DockerIgnore { patterns }
    }

    /// Whether `rel` (components of a path relative to the context root) is left out.
    fn excluded(&self, rel: &[&str]) -> bool {
        let mut excluded = false;
        for p in &self.patterns {
            let hit = (1..=rel.len()).any(|n| match_parts(&p.parts, &rel[..n]));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some exception could re-include a path below the excluded directory `dir`
    /// (Docker walks into an excluded directory only then).
    fn exception_below(&self, dir: &[&str]) -> bool {
        self.patterns
            .iter()
            .filter(|p| p.exception)
            .any(|p| prefix_could_match(&p.parts, dir))
    }
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_parts(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((name, path_rest)) => {
                glob(first.as_bytes(), name.as_bytes()) && match_parts(rest, path_rest)
            }
            None => false,
        },
    }
}

fn prefix_could_match(pat: &[String], dir: &[&str]) -> bool {
    for (i, name) in dir.iter().enumerate() {
        match pat.get(i) {
            None => return true,
            Some(p) if p == "**" => return true,
            Some(p) if !glob(p.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
        }
    }
    true
}

/// One path component against one pattern component: `*`, `?`, `[...]` (with `^` or `!`
/// negation and ranges) and `\` escapes, as Go's filepath.Match.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let (negated, mut class) = match rest.first() {
                Some(b'^' | b'!') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let mut hit = false;
            let mut first = true;
            loop {
                match class.split_first() {
                    None => panic!(".dockerignore: unterminated `[` in a pattern"),
                    Some((b']', after)) if !first => {
                        class = after;
                        break;
                    }
                    Some((&lo, after)) => {
                        if after.len() >= 2 && after[0] == b'-' && after[1] != b']' {
                            hit |= lo <= c && c <= after[1];
                            class = &after[2..];
                        } else {
                            hit |= lo == c;
                            class = after;
                        }
                    }
                }
                first = false;
            }
            hit != negated && glob(class, name_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            name.first() == Some(&rest[0]) && glob(&rest[1..], &name[1..])
        }
        Some((&p, rest)) => name.first() == Some(&p) && glob(rest, &name[1..]),
    }
}

/// Copies what Docker would send as the build context of `src` into `dst`.
fn assemble_context(src: &Path, dst: &Path, ignore: &DockerIgnore) {
    fn walk(src: &Path, dst: &Path, rel: &mut Vec<String>, ignore: &DockerIgnore) {
        let mut entries: Vec<_> = std::fs::read_dir(src.join(rel.join("/")))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().into_string().expect("UTF-8 file name");
            rel.push(name);
            let parts: Vec<&str> = rel.iter().map(String::as_str).collect();
            let excluded = ignore.excluded(&parts);
            let kind = entry.file_type().unwrap();
            let rel_path = rel.join("/");
            if kind.is_dir() {
                if !excluded {
                    std::fs::create_dir_all(dst.join(&rel_path)).unwrap();
                }
                if !excluded || ignore.exception_below(&parts) {
                    walk(src, dst, rel, ignore);
                }
            } else if !excluded {
                let to = dst.join(&rel_path);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(entry.path(), to).unwrap();
            }
            rel.pop();
        }
    }
    walk(src, dst, &mut Vec::new(), ignore);
}

#[test]
fn dockerignore_rules() {
    let ig = DockerIgnore::parse("# c\n*\n!src/\n!Cargo.toml\nconfig/certs/\n!a/**/keep\n");
    let ex = |p: &str| ig.excluded(&p.split('/').collect::<Vec<_>>());
    assert!(ex("target"));
    assert!(ex("target/debug/x"));
    assert!(!ex("src"));
    assert!(
        !ex("src/proxy/mod.rs"),
        "a re-included directory keeps its contents"
    );
    assert!(!ex("Cargo.toml"));
    assert!(ex("Cargo.lock"));
    assert!(ex("config/certs/key.pem"));
    assert!(!ex("a/b/c/keep"));
    assert!(!ig.exception_below(&["target"]));
    assert!(ig.exception_below(&["a", "x"]));
    assert!(glob(b"*.rs", b"lib.rs"));
    assert!(!glob(b"*.rs", b"lib.r"));
    assert!(glob(b"[a-c]?", b"bz"));
    assert!(!glob(b"[^a-c]?", b"bz"));
}

// ---- the Dockerfile -------------------------------------------------------------------------

/// One instruction: its keyword (upper case) and the rest, continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

struct Stage {
    name: Option<String>,
    steps: Vec<Instruction>,
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && !current.is_empty()) {
            continue; // comments and blank lines inside a continued instruction are dropped
        }
        if trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for ins in instructions {
        let (keyword, args) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            stages.push(Stage {
                name,
                steps: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .steps
                .push(Instruction { keyword, args });
        }
    }
    stages
}

/// COPY's flags, sources and destination (shell form only; the exec form is not used here).
fn copy_args(args: &str) -> (Option<String>, Vec<String>, String) {
    assert!(
        !args.starts_with('['),
        "COPY in exec form is not handled: {args}"
    );
    let mut from = None;
    let mut words = Vec::new();
    for w in args.split_whitespace() {
        if let Some(f) = w.strip_prefix("--from=") {
            from = Some(f.to_string());
        } else if !w.starts_with("--") {
            words.push(w.to_string());
        }
    }
    let dest = words.pop().expect("COPY without a destination");
    assert!(!words.is_empty(), "COPY without a source: {args}");
    (from, words, dest)
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host")
}

/// A `cargo` for the RUN steps: it records its arguments and checks the manifest and lockfile
/// as they are in the working directory (`cargo fetch --offline --locked`), instead of building.
fn cargo_shim(dir: &Path) -> PathBuf {
    let real = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let shim = dir.join("cargo");
    let script = format!(
        "#!/bin/sh\n\
         echo \"cargo $*\" >> \"$SHIM_LOG\"\n\
         exec '{real}' fetch --offline --locked --target '{host}' --quiet\n",
        host = host_triple(),
    );
    std::fs::write(&shim, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

/// `include_str!("...")` / `include_bytes!("...")` paths in the .rs files under `dir`, each
/// with the file it appears in.
fn includes(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            includes(&path, found);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(mac) {
                    let rest = &text[at + mac.len()..];
                    let arg = &rest[..rest.find('"').unwrap()];
                    found.push((path.clone(), arg.to_string()));
                }
            }
        }
    }
}

#[test]
fn builder_stage_runs_on_the_filtered_context() {
    let root = Path::new(ROOT);
    let tmp = tempfile::tempdir().unwrap();
    let context = tmp.path().join("context");
    let image = tmp.path().join("image");
    let bin = tmp.path().join("bin");
    for d in [&context, &image, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    let ignore = DockerIgnore::parse(&std::fs::read_to_string(root.join(".dockerignore")).unwrap());
    assemble_context(root, &context, &ignore);
    let shim_log = tmp.path().join("cargo-calls");
    let shim_dir = cargo_shim(&bin).parent().unwrap().to_path_buf();
    let path_var = format!(
        "{}:{}",
        shim_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let stages = parse_dockerfile(&std::fs::read_to_string(root.join("Dockerfile")).unwrap());
    let builder = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("builder"))
        .expect("a stage named builder");

    let mut missing = Vec::new();
    let mut workdir = image.clone();
    let mut cargo_runs = 0;
    let mut failed_runs = Vec::new();
    for step in &builder.steps {
        match step.keyword.as_str() {
            "WORKDIR" => {
                workdir = image.join(step.args.trim_start_matches('/'));
                std::fs::create_dir_all(&workdir).unwrap();
            }
            "COPY" => {
                let (from, sources, dest) = copy_args(&step.args);
                assert!(
                    from.is_none(),
                    "the builder stage copies from another stage"
                );
                let dest_path = if dest.starts_with('/') {
                    image.join(dest.trim_start_matches('/'))
                } else {
                    workdir.join(&dest)
                };
                for s in &sources {
                    let src = context.join(s);
                    if !src.exists() {
                        missing.push(format!("COPY {s} (builder stage)"));
                        continue;
                    }
                    let to = if dest.ends_with('/') && src.is_file() {
                        dest_path.join(src.file_name().unwrap())
                    } else {
                        dest_path.clone()
                    };
                    copy_tree(&src, &to);
                }
            }
            "RUN" => {
                let before = std::fs::read_to_string(&shim_log).unwrap_or_default();
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(&step.args)
                    .current_dir(&workdir)
                    .env("PATH", &path_var)
                    .env("SHIM_LOG", &shim_log)
                    .env_remove("CARGO_TARGET_DIR")
                    .output()
                    .unwrap();
                let after = std::fs::read_to_string(&shim_log).unwrap_or_default();
                let calls = after[before.len()..].to_string();
                if !out.status.success() {
                    failed_runs.push(format!(
                        "RUN {}\n  ({}checked as cargo fetch --offline --locked)\n{}{}",
                        step.args,
                        calls.replace('\n', "; "),
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                cargo_runs += calls.lines().count();
            }
            _ => {}
        }
    }
    // The other stages copy from the context too (COPY --from=builder is the build's output).
    for stage in &stages {
        for step in stage.steps.iter().filter(|s| s.keyword == "COPY") {
            let (from, sources, _) = copy_args(&step.args);
            if from.is_none() && stage.name.as_deref() != Some("builder") {
                missing.extend(
                    sources
                        .iter()
                        .filter(|s| !context.join(s).exists())
                        .map(|s| format!("COPY {s} (stage {:?})", stage.name)),
                );
            }
        }
    }
    assert!(
        missing.is_empty() && failed_runs.is_empty(),
        "COPY sources missing from the build context as .dockerignore filters it: {missing:?}\n\
         RUN steps that fail on it:\n{}",
        failed_runs.join("\n")
    );
    assert_eq!(
        cargo_runs,
        2,
        "the builder stage runs cargo twice (dependencies, then the gateway); update this test \
         if that changed: {}",
        std::fs::read_to_string(&shim_log).unwrap_or_default()
    );

    // Files compiled in must be in the image's source tree.
    let mut found = Vec::new();
    includes(&workdir.join("src"), &mut found);
    assert!(
        !found.is_empty(),
        "no include_str! found: the scan is broken"
    );
    for (file, arg) in found {
        let target = file.parent().unwrap().join(&arg);
        assert!(
            target.exists(),
            "{} includes {arg}, which the Docker build does not copy",
            file.display()
        );
    }
}
