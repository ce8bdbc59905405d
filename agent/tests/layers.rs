//! The agent's layers (docs/architecture.md): imports point down only, and errors are typed.
//! Sources never import the collectors, the CLI, the views or the server; collectors never
//! import the CLI; no function returns `Result<_, String>`.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The code of `text` without comment lines (a doc comment may name an upper layer).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sources_and_identity_do_not_import_upper_layers() {
    let mut bad = Vec::new();
    for layer in ["cgroup", "probe", "metadata", "identity", "netdev"] {
        let dir = src().join(layer);
        assert!(dir.is_dir(), "{} is missing", dir.display());
        for f in rust_files(&dir) {
            let text = code(&read(&f));
            for upper in ["collector", "cli", "view", "server", "agent"] {
                if text.contains(&format!("crate::{upper}::"))
                    || text.contains(&format!("crate::{upper};"))
                    || text.contains(&format!("crate::{{{upper}"))
                {
                    bad.push(format!("{} imports crate::{upper}", f.display()));
                }
            }
        }
    }
    for f in rust_files(&src().join("collector")) {
        if code(&read(&f)).contains("crate::cli") {
            bad.push(format!("{} imports crate::cli", f.display()));
        }
    }
    for leaf in ["util.rs", "metric.rs"] {
        let text = code(&read(&src().join(leaf)));
        if text.contains("crate::") && !text.contains("$crate::metric") {
            bad.push(format!("{leaf} is a leaf and imports the agent"));
        }
    }
    assert!(bad.is_empty(), "imports pointing up:\n{}", bad.join("\n"));
}

#[test]
fn no_function_returns_a_string_error() {
    let mut bad = Vec::new();
    for f in rust_files(&src()) {
        for (i, line) in read(&f).lines().enumerate() {
            let l = line.replace(' ', "");
            if result_error_types(&l).any(|e| e == "String") {
                bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "String errors:\n{}", bad.join("\n"));
}

/// The error type of every `Result<T, E>` written on `line` (spaces removed): the last
/// top-level argument between the brackets, so `Result<BTreeMap<String, String>, E>` gives `E`.
fn result_error_types(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("Result<").filter_map(move |(at, pat)| {
        let args = &line[at + pat.len()..];
        let (mut depth, mut comma) = (0usize, None);
        for (i, c) in args.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                ',' if depth == 0 => comma = Some(i),
                '>' | ')' | ']' if depth == 0 => return comma.map(|k| &args[k + 1..i]),
                '>' | ')' | ']' => depth -= 1,
                _ => {}
            }
        }
        None
    })
}

#[test]
fn result_error_types_reads_the_last_top_level_argument() {
    fn errs(l: &str) -> Vec<&str> {
        result_error_types(l).collect()
    }
    assert_eq!(errs("fn a() -> Result<u8,String> {"), ["String"]);
    assert_eq!(
        errs("->Result<Vec<BTreeMap<String,String>>,prost::DecodeError>{"),
        ["prost::DecodeError"]
    );
    assert_eq!(errs("Result<(String,String),Box<E>>"), ["Box<E>"]);
    assert!(errs("io::Result<String>").is_empty());
}
