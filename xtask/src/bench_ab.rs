//! `cargo xtask bench-ab`: the per-switch cost of two or more podstat binaries in one run, for
//! a change to the pod path. Each round runs the probe part of `podstat-test-bench` (a
//! context-switch storm in a pod container with podstat, runqlat and the empty program all
//! attached) once per binary, the order rotated from round to round; the report gives each
//! binary's ns per `sched_switch` and its ratio to the same run's runqlat, per round and as
//! medians within each of the storm's two clusters, and every binary against every other paired
//! round by round (the mean of the per-round ratios, with a 95% interval).
//!
//! Why clusters: on the 2-CPU test host the storm's rounds fall in two groups whatever the
//! binary (its two tasks mostly sharing a CPU or not), podstat's cost in them 30–50% apart; a
//! median over all rounds then compares the binaries' mix of clusters more than the binaries
//! (docs/performance.md has the runs). The split is the middle of the widest gap between the
//! rounds' pod-path figures, all binaries together (`--split-ns` sets it instead), so it holds
//! while the binaries differ by less than the clusters do; runqlat's own cost shifts with the
//! host's state and did not separate them in every run.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::PathBuf, time::Instant};

use anyhow::{Context as _, ensure};

use crate::{
    bench::{mean_ci, median, ns_per_switch, out_dir, part, per_round_ratios, run_scenario},
    bench_json::ProbeResult,
    step,
};

pub struct Config {
    /// (name, binary), the first the baseline.
    pub binaries: Vec<(String, PathBuf)>,
    pub rounds: usize,
    pub storm_secs: u64,
    /// podstat's ns per switch that splits the clusters (`None`: the widest gap).
    pub split_ns: Option<f64>,
}

/// The middle of the widest gap between consecutive values (`None` with fewer than two).
fn widest_gap(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.windows(2)
        .max_by(|a, b| (a[1] - a[0]).total_cmp(&(b[1] - b[0])))
        .map(|w| f64::midpoint(w[0], w[1]))
}

/// One binary in one round.
struct Row {
    round: usize,
    name: String,
    pod: f64,
    runqlat: f64,
    floor: f64,
    host: f64,
}

/// A `--binary` value that is not `NAME=PATH`.
#[derive(Debug, PartialEq, Eq)]
pub struct NotNameEqualsPath(String);

impl std::fmt::Display for NotNameEqualsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not NAME=PATH", self.0)
    }
}

impl std::error::Error for NotNameEqualsPath {}

/// `NAME=PATH`, for `--binary`.
pub fn parse_binary(s: &str) -> Result<(String, PathBuf), NotNameEqualsPath> {
    let (name, path) = s
        .split_once('=')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| NotNameEqualsPath(s.to_owned()))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

pub fn run(start: Instant, c: &Config) -> anyhow::Result<()> {
    ensure!(
        crate::is_root(),
        "the benchmark needs root (cgroups, eBPF, bpf_stats)"
    );
    ensure!(
        c.binaries.len() >= 2,
        "give at least two binaries (--binary NAME=PATH, the first the baseline)"
    );
    ensure!(
        c.rounds > 0 && c.storm_secs > 0,
        "--rounds and --storm-secs must be at least 1"
    );
    for (name, bin) in &c.binaries {
        ensure!(bin.is_file(), "{name}: {} is not a file", bin.display());
    }
    let out = out_dir()?;
    let args: Vec<String> = [
        "--skip-scrape",
        "--skip-e2e",
        "--skip-flood",
        "--churn",
        "0",
        "--storm-secs",
    ]
    .iter()
    .map(ToString::to_string)
    .chain([c.storm_secs.to_string()])
    .collect();
    let mut rows = Vec::new();
    let n = c.binaries.len();
    for round in 0..c.rounds {
        for k in 0..n {
            let (name, bin) = &c.binaries[(k + round) % n];
            step(start, &format!("round {}/{}: {name}", round + 1, c.rounds));
            let lines = run_scenario("podstat-test-bench", bin, &out, &args)
                .with_context(|| format!("{name} ({}), round {}", bin.display(), round + 1))?;
            let p: ProbeResult =
                part(&lines, "probe")?.context("podstat-test-bench printed no probe result")?;
            rows.push(Row {
                round,
                name: name.clone(),
                pod: ns_per_switch(&p.pod, "podstat"),
                runqlat: ns_per_switch(&p.pod, "runqlat"),
                floor: ns_per_switch(&p.pod, "floor"),
                host: ns_per_switch(&p.host, "podstat"),
            });
        }
    }
    let report = render(c, &rows)?;
    println!("{report}");
    let path = out.join("ab.md");
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

fn render(c: &Config, rows: &[Row]) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(r, "# podstat bench-ab\n")?;
    writeln!(
        r,
        "{} rounds of a {} s context-switch storm in a pod container, the binaries rotated; ns per `sched_switch` of all of podstat's programs (bpf_stats), runqlat's and the empty program's in the same storm.\n",
        c.rounds, c.storm_secs
    )?;
    for (name, bin) in &c.binaries {
        writeln!(r, "- `{name}`: {}", bin.display())?;
    }
    writeln!(
        r,
        "\n| round | binary | pod path ns | runqlat ns | / runqlat | floor ns | outside pods ns |"
    )?;
    writeln!(r, "|---:|---|---:|---:|---:|---:|---:|")?;
    for x in rows {
        writeln!(
            r,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} |",
            x.round + 1,
            x.name,
            x.pod,
            x.runqlat,
            x.pod / x.runqlat,
            x.floor,
            x.host
        )?;
    }
    paired(&mut r, c, rows)?;
    let base = &c.binaries[0].0;
    let pods: Vec<f64> = rows.iter().map(|x| x.pod).collect();
    let Some(split) = c.split_ns.or_else(|| widest_gap(&pods)) else {
        return Ok(r);
    };
    let how = if c.split_ns.is_some() {
        "--split-ns"
    } else {
        "the widest gap between the rounds"
    };
    for (cluster, fast) in [("below", true), ("at or above", false)] {
        writeln!(
            r,
            "\n## Rounds with the pod path {cluster} {split:.0} ns ({how})\n\n| binary | rounds | pod path ns (median) | / runqlat (median) | vs `{base}`: ns, / runqlat |\n|---|---:|---:|---:|---|"
        )?;
        let mut by: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for x in rows.iter().filter(|x| (x.pod < split) == fast) {
            let e = by.entry(x.name.as_str()).or_default();
            e.0.push(x.pod);
            e.1.push(x.pod / x.runqlat);
        }
        let meds = |name: &str| by.get(name).map(|(ns, rat)| (median(ns), median(rat)));
        let b = meds(base);
        for (name, _) in &c.binaries {
            let Some((ns, rat)) = meds(name) else {
                continue;
            };
            let vs = b.map_or_else(
                || "no baseline rounds".to_owned(),
                |(bns, brat)| {
                    format!(
                        "{:+.1}%, {:+.1}%",
                        100.0 * (ns / bns - 1.0),
                        100.0 * (rat / brat - 1.0)
                    )
                },
            );
            writeln!(
                r,
                "| `{name}` | {} | {ns:.0} | {rat:.3} | {vs} |",
                by[name.as_str()].0.len()
            )?;
        }
    }
    Ok(r)
}

/// Every binary against every other, round by round: the mean of the per-round ratios of their
/// pod-path ns, with a 95% interval, and the rounds in which the row's binary cost less. A
/// round's host state (which cluster it fell in, what else ran) moves all of its binaries
/// alike, so pairing cancels it where medians over rounds compare the clusters' mix.
fn paired(r: &mut String, c: &Config, rows: &[Row]) -> anyhow::Result<()> {
    let names: Vec<&str> = c.binaries.iter().map(|(n, _)| n.as_str()).collect();
    // Each binary's pod-path ns by round, gathered once for every cell of its row and column.
    let mut pods: BTreeMap<&str, BTreeMap<usize, f64>> = BTreeMap::new();
    for x in rows {
        pods.entry(x.name.as_str())
            .or_default()
            .insert(x.round, x.pod);
    }
    let none = BTreeMap::new();
    let pods_of = |name: &str| pods.get(name).unwrap_or(&none);
    writeln!(
        r,
        "\n## Paired by round\n\nThe row's pod path over the column's in the same round: mean of the per-round ratios, 95% interval, and the rounds in which the row cost less.\n"
    )?;
    writeln!(
        r,
        "| vs | {} |",
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(r, "|---|{}", "---|".repeat(names.len()))?;
    for a in &names {
        let cells: Vec<String> = names
            .iter()
            .map(|b| {
                if a == b {
                    return "–".to_owned();
                }
                let v = per_round_ratios(pods_of(a), pods_of(b));
                if v.is_empty() {
                    return "no rounds".to_owned();
                }
                let (mean, ci) = mean_ci(&v);
                let lower = v.iter().filter(|x| **x < 1.0).count();
                format!(
                    "{:+.1}% ± {:.1}% ({lower}/{})",
                    100.0 * (mean - 1.0),
                    100.0 * ci,
                    v.len()
                )
            })
            .collect();
        writeln!(r, "| `{a}` | {} |", cells.join(" | "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_name_equals_path() {
        assert_eq!(
            parse_binary("base=/tmp/podstat"),
            Ok(("base".to_owned(), PathBuf::from("/tmp/podstat")))
        );
        for bad in ["base", "=/tmp/x", "base=", ""] {
            assert!(parse_binary(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_report_compares_within_each_cluster() {
        let row = |round, name: &str, pod, runqlat| Row {
            round,
            name: name.to_owned(),
            pod,
            runqlat,
            floor: 50.0,
            host: 100.0,
        };
        let c = Config {
            binaries: vec![
                ("old".to_owned(), PathBuf::from("/a")),
                ("new".to_owned(), PathBuf::from("/b")),
            ],
            rounds: 2,
            storm_secs: 5,
            split_ns: None,
        };
        let rows = [
            row(0, "old", 180.0, 590.0),
            row(0, "new", 198.0, 590.0),
            row(1, "old", 260.0, 640.0),
            row(1, "new", 273.0, 640.0),
        ];
        let r = render(&c, &rows).expect("render");
        assert!(
            r.contains("| `new` | 1 | 198 | 0.336 | +10.0%, +10.0% |"),
            "{r}"
        );
        assert!(
            r.contains("| `new` | 1 | 273 | 0.427 | +5.0%, +5.0% |"),
            "{r}"
        );
        assert!(r.contains("below 229 ns (the widest gap"), "{r}");
        // Round 0: 198 / 180 = 1.10, round 1: 273 / 260 = 1.05: mean 1.075, sd 0.0354, so
        // 1.96 * 0.0354 / sqrt(2) = 4.9%; the other way 0.909 and 0.952.
        assert!(r.contains("| `new` | +7.5% ± 4.9% (0/2) | – |"), "{r}");
        assert!(r.contains("| `old` | – | -6.9% ± 4.2% (2/2) |"), "{r}");
    }

    #[test]
    fn the_clusters_split_at_the_widest_gap() {
        assert_eq!(
            widest_gap(&[180.0, 290.0, 195.0, 275.0, 210.0]),
            Some(242.5)
        );
        assert_eq!(widest_gap(&[1.0]), None);
    }
}
