//! `cargo xtask bench-net`: runs the scenario `podstat-test-bench-net` (the tests crate, on the
//! test harness) as root and renders `target/bench/net.md` from the JSON line it prints: the
//! receive-path cost of the steering probes (iperf3 over a veth pair between two network
//! namespaces, without and with the agent's net probes, interleaved; target ≥ 97%) and the
//! nanoseconds per event of each net program. What it measures, and how, is described in
//! `tests/src/bin/podstat-test-bench-net.rs`.

use std::{collections::BTreeMap, fmt::Write as _, fs, time::Instant};

use crate::{
    bench::{out_dir, part, podstat_bin, run_scenario},
    bench_json::{NetResult, ProgTotals},
    step,
};
use anyhow::{Context as _, ensure};

pub struct Config {
    pub secs: u64,
    pub rounds: usize,
}

const TARGET: f64 = 0.97;

pub fn all(start: Instant, c: &Config) -> anyhow::Result<()> {
    ensure!(
        crate::is_root(),
        "the network benchmark needs root (netns, cgroups, eBPF)"
    );
    ensure!(
        c.secs > 0 && c.rounds > 0,
        "--secs and --rounds must be at least 1"
    );
    let (bin, from) = podstat_bin();
    ensure!(bin.exists(), "{} missing ({from})", bin.display());
    let out_dir = out_dir()?;
    step(start, "running podstat-test-bench-net");
    let lines = run_scenario(
        "podstat-test-bench-net",
        &bin,
        &out_dir,
        &[
            "--secs".to_owned(),
            c.secs.to_string(),
            "--rounds".to_owned(),
            c.rounds.to_string(),
        ],
    )?;
    let net: NetResult =
        part(&lines, "net")?.context("podstat-test-bench-net printed no result")?;

    let report = render(c, &net.base, &net.with, &net.programs)?;
    let file = out_dir.join("net.md");
    fs::write(&file, &report).with_context(|| format!("writing {}", file.display()))?;
    println!("{report}");
    eprintln!("report: {}", file.display());
    Ok(())
}

fn render(
    c: &Config,
    base: &[f64],
    with: &[f64],
    totals: &BTreeMap<String, ProgTotals>,
) -> anyhow::Result<String> {
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without, with_probes) = (med(&mut base.to_vec()), med(&mut with.to_vec()));
    let ratio = with_probes / without;
    let mut r = String::new();
    writeln!(r, "# podstat bench-net")?;
    writeln!(
        r,
        "\niperf3 TCP over a 4-queue veth between two namespaces (RPS + RFS on the receiver, server in a pod cgroup), {} rounds of {} s, interleaved; median of rounds.\n",
        c.rounds, c.secs
    )?;
    writeln!(r, "| run | Gbit/s (each round) | median |")?;
    writeln!(r, "|---|---|---|")?;
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.2}", x / 1e9))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(r, "| no probes | {} | {:.2} |", fmt(base), without / 1e9)?;
    writeln!(
        r,
        "| net probes | {} | {:.2} |",
        fmt(with),
        with_probes / 1e9
    )?;
    writeln!(
        r,
        "\nthroughput with probes: {:.1}% of without (target ≥ {:.0}%: {})\n",
        100.0 * ratio,
        100.0 * TARGET,
        if ratio >= TARGET { "met" } else { "NOT met" }
    )?;
    writeln!(r, "| program | events | ns per event |")?;
    writeln!(r, "|---|---|---|")?;
    let mut names: Vec<&String> = totals.keys().collect();
    names.sort();
    for n in names {
        let t = &totals[n];
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^53")]
        let per = if t.run_cnt == 0 {
            0.0
        } else {
            t.run_time_ns as f64 / t.run_cnt as f64
        };
        writeln!(r, "| `{n}` | {} | {per:.0} |", t.run_cnt)?;
    }
    Ok(r)
}
