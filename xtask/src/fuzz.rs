//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (cargo-fuzz layout), each run for a
//! bounded time on a copy of its seed corpus `fuzz/corpus/<target>`, so a run never grows the
//! corpus kept in the repository. The build lives in `<target dir>/fuzz` (cached with the rest
//! of the target dir), the runs' corpora, crash inputs and logs in `<target dir>/fuzz/runs`;
//! cargo-fuzz, when it is not on PATH, is installed once into `<target dir>/fuzz/tools`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{root, run, step, target_dir};

/// The fuzz targets: `fuzz/fuzz_targets/<name>.rs`, sorted.
pub fn all_targets() -> anyhow::Result<Vec<String>> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// The targets named (all when none is), each checked against `fuzz/fuzz_targets`.
pub fn targets(wanted: &[String]) -> anyhow::Result<Vec<String>> {
    let all = all_targets()?;
    if wanted.is_empty() {
        return Ok(all);
    }
    for w in wanted {
        if !all.contains(w) {
            bail!("no fuzz target {w:?}; there are: {}", all.join(" "));
        }
    }
    Ok(wanted.to_vec())
}

fn fuzz_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// `cargo fuzz`: the one on PATH, else the one installed (once) under the fuzz dir.
fn cargo_fuzz(start: Instant) -> anyhow::Result<PathBuf> {
    let works = |bin: &Path| {
        Command::new(bin)
            .args(["fuzz", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("cargo-fuzz"))
        .find(|p| p.is_file());
    if let Some(bin) = on_path.filter(|b| works(b)) {
        return Ok(bin);
    }
    let tools = fuzz_dir().join("tools");
    let bin = tools.join("bin/cargo-fuzz");
    if works(&bin) {
        return Ok(bin);
    }
    step(
        start,
        "installing cargo-fuzz (once, into the fuzz target dir)",
    );
    run(Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked", "--root"])
        .arg(&tools))?;
    if !works(&bin) {
        bail!("installed cargo-fuzz but {} does not run", bin.display());
    }
    Ok(bin)
}

/// Builds every target (release, with debug assertions and AddressSanitizer, as cargo-fuzz
/// does by default).
pub fn build(start: Instant) -> anyhow::Result<()> {
    let cargo_fuzz = cargo_fuzz(start)?;
    step(
        start,
        "building the fuzz targets (nightly, libFuzzer, AddressSanitizer)",
    );
    // cargo-fuzz runs `cargo`; through rustup's proxy with the nightly toolchain, which
    // -Zsanitizer needs.
    run(Command::new(&cargo_fuzz)
        .args(["fuzz", "build", "--target-dir"])
        .arg(fuzz_dir())
        .current_dir(root())
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        // The targets exercise parsers only: no eBPF object (agent/build.rs).
        .env("PODSTAT_REQUIRE_EBPF", "0"))
}

fn binary(target: &str) -> PathBuf {
    fuzz_dir()
        .join("x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// Runs `target` for `secs` seconds on a fresh copy of its seed corpus: `None` if it ran
/// clean, else what failed. A crash, a leak, an input slower than 10 s or one that needs more
/// than 2 GiB is a failure; libFuzzer writes that input under
/// `<fuzz dir>/runs/artifacts/<target>/`, and the failure names it.
pub fn run_target(target: &str, secs: u64) -> anyhow::Result<Option<String>> {
    let seeds = root().join("fuzz/corpus").join(target);
    let runs = fuzz_dir().join("runs");
    let corpus = runs.join("corpus").join(target);
    let artifacts = runs.join("artifacts").join(target);
    let log = runs.join("logs").join(format!("{target}.log"));
    if corpus.exists() {
        fs::remove_dir_all(&corpus).with_context(|| format!("clearing {}", corpus.display()))?;
    }
    fs::create_dir_all(&corpus)?;
    fs::create_dir_all(&artifacts)?;
    fs::create_dir_all(log.parent().context("a log dir")?)?;
    let mut seeded = 0;
    for e in fs::read_dir(&seeds).with_context(|| format!("listing {}", seeds.display()))? {
        let e = e?;
        fs::copy(e.path(), corpus.join(e.file_name()))?;
        seeded += 1;
    }
    if seeded == 0 {
        bail!("no seeds in {}", seeds.display());
    }
    let before: Vec<PathBuf> = list(&artifacts)?;
    let bin = binary(target);
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .arg(&corpus)
        .arg(format!("-max_total_time={secs}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (built by `cargo xtask fuzz`?)", bin.display()))?;
    let stderr = child.stderr.take().context("fuzzer stderr")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        lines.push(line?);
    }
    let status = child.wait()?;
    fs::write(&log, lines.join("\n") + "\n")?;
    summarize(target, started.elapsed().as_secs(), seeded, &lines);
    if status.success() {
        return Ok(None);
    }
    let new: Vec<PathBuf> = list(&artifacts)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    // The panic and its message (the line after), or the sanitizer's or libFuzzer's error.
    let why = lines
        .iter()
        .position(|l| {
            l.contains("panicked at")
                || l.contains("ERROR: libFuzzer")
                || l.contains("ERROR: AddressSanitizer")
                || l.contains("ERROR: LeakSanitizer")
        })
        .map_or_else(
            || format!("exited with {status}"),
            |i| {
                let mut why = lines[i].trim().to_owned();
                if why.contains("panicked at")
                    && let Some(msg) = lines.get(i + 1)
                {
                    why = format!("{why} {}", msg.trim());
                }
                why
            },
        );
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(30)
        .rev()
        .map(String::as_str)
        .collect();
    eprintln!("{}", tail.join("\n"));
    let input = new.first().map_or_else(
        || "no crash input was written".to_owned(),
        |p| format!("crash input {}", p.display()),
    );
    Ok(Some(format!(
        "fuzz {target}: {why}; {input} (replay: {} <input>; log {}). Fix the parser, add the input to fuzz/corpus/{target}/ and a unit test that replays it",
        bin.display(),
        log.display()
    )))
}

/// One line from libFuzzer's output: inputs run in `secs`, coverage, corpus, memory.
fn summarize(target: &str, secs: u64, seeded: usize, lines: &[String]) {
    let stat = |key: &str| -> Option<u64> {
        lines.iter().find_map(|l| {
            l.strip_prefix(&format!("stat::{key}:"))
                .and_then(|v| v.trim().parse().ok())
        })
    };
    // The last status line ("#123 DONE cov: 456 ft: 789 corp: 12/3Kb ..."): coverage and corpus.
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov:"))
        .map_or("", String::as_str);
    let field = |name: &str| {
        last.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .unwrap_or("?")
            .to_owned()
    };
    eprintln!(
        "fuzz {target}: {} inputs in {secs} s, coverage {} edges, corpus {} (from {seeded} seeds), peak RSS {} MB",
        stat("number_of_executed_units").unwrap_or(0),
        field("cov:"),
        field("corp:"),
        stat("peak_rss_mb").map_or_else(|| "?".into(), |m| m.to_string()),
    );
}

fn list(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect())
}

/// Builds, then runs each of `targets` for `secs` seconds in turn; every target runs even when
/// an earlier one crashed. Returns what failed, one message per failed target.
pub fn fuzz(start: Instant, targets: &[String], secs: u64) -> anyhow::Result<Vec<String>> {
    build(start)?;
    let mut failed = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        step(
            start,
            &format!("fuzz target {t} ({}/{}) for {secs} s", i + 1, targets.len()),
        );
        failed.extend(run_target(t, secs)?);
    }
    Ok(failed)
}
