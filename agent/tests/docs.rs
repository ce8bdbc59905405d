//! The docs stay true to the code: the README's collector table, the metric reference in
//! docs/metrics.md, the README's length, and every relative link in README.md and docs/*.md.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use podstat::collector::COLLECTORS;

const README: &str = include_str!("../../README.md");
const METRICS: &str = include_str!("../../docs/metrics.md");

/// The README is what a new SRE reads in five minutes; the depth lives in docs/.
const README_MAX_LINES: usize = 300;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dir` with extension `ext`, sorted.
fn files_ending(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

#[test]
fn every_collector_is_in_the_readme_table() {
    for spec in COLLECTORS {
        let default = if spec.default_enabled { "on" } else { "off" };
        let row = format!("| `{}` | {default} |", spec.name);
        assert!(README.contains(&row), "README collector table lacks {row}");
    }
}

#[test]
fn every_exported_family_is_documented() {
    let names = podstat::collector::family::all()
        .into_iter()
        .map(|f| f.exposed);
    for name in names {
        assert!(
            METRICS.contains(&format!("`{name}`")),
            "docs/metrics.md metric reference lacks `{name}`"
        );
    }
}

/// Every `# HELP` line of the golden expositions appears, verbatim, in docs/metrics.md.
#[test]
fn golden_help_text_is_in_the_metric_reference() {
    let dir = repo_root().join("agent/tests/fixtures/golden");
    let files = files_ending(&dir, "prom");
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    let mut help = BTreeSet::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        help.extend(
            text.lines()
                .filter(|l| l.starts_with("# HELP "))
                .map(str::to_owned),
        );
    }
    let documented: BTreeSet<&str> = METRICS.lines().collect();
    for line in &help {
        assert!(
            documented.contains(line.as_str()),
            "docs/metrics.md \"HELP text\" lacks the golden line\n{line}"
        );
    }
}

#[test]
fn readme_stays_short() {
    let lines = README.lines().count();
    assert!(
        lines < README_MAX_LINES,
        "README.md has {lines} lines; keep it under {README_MAX_LINES} and move depth to docs/"
    );
}

/// The lines of a markdown file outside fenced code blocks.
fn outside_fences(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The prose of a markdown file: lines outside fenced code blocks, without `code spans` (what
/// is between an odd backtick and the next one).
fn prose_lines(text: &str) -> Vec<String> {
    outside_fences(text)
        .map(|line| {
            line.split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, s)| s)
                .collect()
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (with GitHub's `-1`, `-2` for repeats).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in outside_fences(text).filter(|l| l.starts_with('#')) {
        let base = anchor(line.trim_start_matches('#'));
        let mut a = base.clone();
        let mut n = 0;
        while seen.contains(&a) {
            n += 1;
            a = format!("{base}-{n}");
        }
        seen.insert(a);
    }
    seen
}

/// The targets of `[text](target)` links in the prose of a markdown file.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(rest[..end].trim().to_owned());
            rest = &rest[end + 1..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_points_to_something_that_exists() {
    let root = repo_root();
    let docs = root.join("docs");
    let mut files = vec![root.join("README.md")];
    files.extend(files_ending(&docs, "md"));

    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let dir = file.parent().expect("a file has a directory");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, frag) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !dest.exists() {
                broken.push(format!(
                    "{}: {target} (no {})",
                    file.display(),
                    dest.display()
                ));
                continue;
            }
            if frag.is_empty() || dest.extension().is_none_or(|x| x != "md") {
                continue;
            }
            let dest_text = std::fs::read_to_string(&dest)
                .unwrap_or_else(|e| panic!("reading {}: {e}", dest.display()));
            if !anchors(&dest_text).contains(frag) {
                broken.push(format!(
                    "{}: {target} (no heading #{frag} in {})",
                    file.display(),
                    dest.display()
                ));
            }
        }
    }
    assert!(checked > 0, "no relative links found in {files:?}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        anchor(" Operator views: `podstat top` and `podstat explain`"),
        "operator-views-podstat-top-and-podstat-explain"
    );
    assert_eq!(
        anchor(" Run-queue latency: two modes"),
        "run-queue-latency-two-modes"
    );
    let a = anchors("# A\n## B\n```\n# not a heading\n```\n## B\n");
    assert_eq!(
        a,
        BTreeSet::from(["a".to_owned(), "b".to_owned(), "b-1".to_owned()])
    );
}
