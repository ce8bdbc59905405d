//! `cargo xtask bench-net`: runs the scenario `podstat-test-bench-net` (the tests crate, on the
//! test harness) as root and renders `target/bench/net.md` from the JSON line it prints: for
//! 64-byte UDP and 1400-byte TCP over a veth pair between two network namespaces, the received
//! packets per second with no programs, with an empty `sock_recv_length` program (the floor),
//! with the agent's read-time steering and with its per-packet design
//! (`--probe.net.per-packet`), interleaved (target ≥ 99% of no programs); and the ns per
//! received packet of each net program of each design (bpf_stats), so the ratio between the
//! designs comes from the same run. What it measures, and how, is described in
//! `tests/src/bin/podstat-test-bench-net.rs`.

use std::{collections::BTreeMap, fmt::Write as _, fs, time::Instant};

use anyhow::{Context as _, ensure};

use crate::{
    bench::{mean_ci, out_dir, part, per_round_ratios, podstat_bin, run_scenario},
    bench_json::{NetResult, NetRun},
    step,
};

pub struct Config {
    pub secs: u64,
    pub rounds: usize,
    pub sample_every: u32,
    /// `--arms`: a comma-separated subset of the arms (the scenario checks the names).
    pub arms: Option<String>,
    pub throughput_only: bool,
}

/// Received packets per second with the agent, against no programs.
const TARGET: f64 = 0.99;
/// Total eBPF time of the default design's programs per received packet.
const TARGET_NS: f64 = 60.0;

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
    let mut args = vec![
        "--secs".to_owned(),
        c.secs.to_string(),
        "--rounds".to_owned(),
        c.rounds.to_string(),
        "--sample-every".to_owned(),
        c.sample_every.to_string(),
    ];
    if let Some(arms) = &c.arms {
        args.extend(["--arms".to_owned(), arms.clone()]);
    }
    if c.throughput_only {
        args.push("--throughput-only".to_owned());
    }
    let lines = run_scenario("podstat-test-bench-net", &bin, &out_dir, &args)?;
    let raw = out_dir.join("net.json");
    fs::write(
        &raw,
        lines
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .with_context(|| format!("writing {}", raw.display()))?;
    let net: NetResult =
        part(&lines, "net")?.context("podstat-test-bench-net printed no result")?;
    let report = render(c, &net)?;
    let file = out_dir.join("net.md");
    fs::write(&file, &report).with_context(|| format!("writing {}", file.display()))?;
    println!("{report}");
    eprintln!("report: {}", file.display());
    Ok(())
}

const ARMS: [(&str, &str); 5] = [
    ("none", "no programs"),
    ("floor", "empty `sock_recv_length` program"),
    ("read", "agent, read-time steering (default, duty-cycled)"),
    (
        "read_always",
        "agent, read-time steering, `--probe.net.duty-cycle always`",
    ),
    ("per_packet", "agent, `--probe.net.per-packet`"),
];
const WORKLOADS: [(&str, &str); 2] = [
    ("udp64", "64-byte UDP (`iperf3 -u -l 64 -b 0`)"),
    (
        "tcp1400",
        "1400-byte TCP (`iperf3 -l 1400 -M 1400`, no TSO/GSO)",
    ),
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Delivered packets per second of each throughput run of `arm` on `workload`, by round.
fn rates(runs: &[NetRun], workload: &str, arm: &str) -> BTreeMap<usize, f64> {
    runs.iter()
        .filter(|r| r.workload == workload && r.arm == arm && !r.stats)
        .map(|r| (r.round, r.delivered / r.secs))
        .collect()
}

/// Per program of `arm` on `workload`, over its cost runs: (events, run time, veth packets,
/// delivered packets).
fn costs(runs: &[NetRun], workload: &str, arm: &str) -> (BTreeMap<String, (u64, u64)>, u64, f64) {
    let mut progs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut rx, mut delivered) = (0u64, 0.0);
    for r in runs
        .iter()
        .filter(|r| r.workload == workload && r.arm == arm && r.stats)
    {
        rx += r.rx_packets;
        delivered += r.delivered;
        for (name, t) in &r.programs {
            let e = progs.entry(name.clone()).or_default();
            e.0 += t.run_cnt;
            e.1 += t.run_time_ns;
        }
    }
    (progs, rx, delivered)
}

/// Delivered packets per second of every arm that ran on `workload`, each round and against
/// the no-program runs.
fn throughput_table(r: &mut String, runs: &[NetRun], workload: &str) -> std::fmt::Result {
    writeln!(
        r,
        "| arm | delivered packets/s (each round) | median | vs no programs: median (range over rounds) |"
    )?;
    writeln!(r, "|---|---|---|---|")?;
    let base = rates(runs, workload, "none");
    let base_med = median(&mut base.values().copied().collect::<Vec<_>>());
    for (arm, desc) in ARMS {
        let v = rates(runs, workload, arm);
        if v.is_empty() {
            continue;
        }
        let each: Vec<String> = v.values().map(|x| format!("{x:.0}")).collect();
        let med = median(&mut v.values().copied().collect::<Vec<_>>());
        let mut per_round = per_round_ratios(&v, &base);
        per_round.sort_by(f64::total_cmp);
        let spread = match (per_round.first(), per_round.last()) {
            (Some(lo), Some(hi)) if arm != "none" => {
                format!(" ({:.1}–{:.1}%)", 100.0 * lo, 100.0 * hi)
            }
            _ => String::new(),
        };
        let ratio = med / base_med;
        let verdict = if matches!(arm, "read" | "read_always" | "per_packet") {
            if ratio >= TARGET {
                " (target ≥ 99%: met)"
            } else {
                " (target ≥ 99%: NOT met)"
            }
        } else {
            ""
        };
        writeln!(
            r,
            "| {desc} | {} | {med:.0} | {:.1}%{spread}{verdict} |",
            each.join(", "),
            100.0 * ratio
        )?;
    }
    Ok(())
}

/// ON/EVERY of the agent's default `--probe.net.duty-cycle` (500ms/4s), which the `read` arm
/// runs.
const DEFAULT_ON_FRACTION: f64 = 0.125;

/// The read-time arms' throughput as the mean of their per-round ratios to the same round's
/// no-program run, with a 95% interval; and what the duty-cycled arm should lose, from the
/// always-attached arm: detached, the read path is the no-program path (the tracepoint's static
/// key is off), so it loses ON/EVERY of what the always-attached program loses. That arm's
/// loss is large enough to measure in a few rounds; the duty-cycled one's is not.
fn throughput_summary(r: &mut String, runs: &[NetRun], workload: &str) -> std::fmt::Result {
    let base = rates(runs, workload, "none");
    let paired = |arm: &str| per_round_ratios(&rates(runs, workload, arm), &base);
    let (read, always) = (paired("read"), paired("read_always"));
    if read.is_empty() && always.is_empty() {
        return Ok(());
    }
    writeln!(r)?;
    for (v, what) in [(&read, "duty-cycled"), (&always, "always attached")] {
        if !v.is_empty() {
            let (m, ci) = mean_ci(v);
            writeln!(
                r,
                "- read-time, {what}: mean of {} per-round ratios {:.1}% ± {:.1}% (95%)",
                v.len(),
                100.0 * m,
                100.0 * ci
            )?;
        }
    }
    if !always.is_empty() {
        let (m, ci) = mean_ci(&always);
        let expected = 1.0 - (1.0 - m) * DEFAULT_ON_FRACTION;
        writeln!(
            r,
            "- duty-cycled, expected from the always-attached arm's loss × ON/EVERY ({DEFAULT_ON_FRACTION}): {:.2}% ± {:.2}% (target ≥ 99%: {})",
            100.0 * expected,
            100.0 * ci * DEFAULT_ON_FRACTION,
            if expected >= TARGET { "met" } else { "NOT met" }
        )?;
    }
    Ok(())
}

/// The duty-cycled read program against the always-attached one and the floor, per received
/// packet.
fn duty_summary(r: &mut String, totals: &BTreeMap<&str, f64>) -> std::fmt::Result {
    if let (Some(read), Some(always), Some(floor)) = (
        totals.get("read"),
        totals.get("read_always"),
        totals.get("floor"),
    ) {
        writeln!(
            r,
            "\nduty cycle: {:.3} of the always-attached read program's {always:.1} ns, {:.3} of the empty program's {floor:.1} ns (the floor of any program on the read path), in the same run.",
            read / always.max(0.001),
            read / floor.max(0.001)
        )?;
    }
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^53")]
fn render(c: &Config, net: &NetResult) -> anyhow::Result<String> {
    let mut r = String::new();
    writeln!(r, "# podstat bench-net")?;
    writeln!(
        r,
        "\nA 4-queue veth between two namespaces (RPS + RFS on the receiver, iperf3 server in a pod cgroup); {} rounds of {} s per run, the arms interleaved and their order rotated every round; read-time agent with `--probe.net.sample-every {}`. Throughput runs with `kernel.bpf_stats_enabled` off; {}",
        c.rounds,
        c.secs,
        net.sample_every,
        if c.throughput_only {
            "no cost runs (`--throughput-only`)."
        } else {
            "program costs from one extra run per arm and workload with it on."
        }
    )?;
    for (workload, wdesc) in WORKLOADS {
        writeln!(r, "\n## {wdesc}\n")?;
        throughput_table(&mut r, &net.runs, workload)?;
        throughput_summary(&mut r, &net.runs, workload)?;
        if c.throughput_only {
            continue;
        }
        writeln!(
            r,
            "\n| arm | program | events per received packet | ns per event | ns per received packet | ns per delivered packet |"
        )?;
        writeln!(r, "|---|---|---|---|---|---|")?;
        let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
        for (arm, desc) in ARMS.iter().skip(1) {
            let (progs, rx, delivered) = costs(&net.runs, workload, arm);
            if progs.is_empty() {
                continue;
            }
            let mut total_ns = 0u64;
            for (name, (events, ns)) in &progs {
                total_ns += ns;
                let per_event = if *events == 0 {
                    0.0
                } else {
                    *ns as f64 / *events as f64
                };
                writeln!(
                    r,
                    "| {desc} | `{name}` | {:.3} | {per_event:.0} | {:.1} | {:.1} |",
                    *events as f64 / rx.max(1) as f64,
                    *ns as f64 / rx.max(1) as f64,
                    *ns as f64 / delivered.max(1.0)
                )?;
            }
            let per_packet = total_ns as f64 / rx.max(1) as f64;
            totals.insert(arm, per_packet);
            writeln!(
                r,
                "| {desc} | **all** | | | **{per_packet:.1}** | {:.1} |",
                total_ns as f64 / delivered.max(1.0)
            )?;
        }
        if let (Some(read), Some(old)) = (totals.get("read"), totals.get("per_packet")) {
            writeln!(
                r,
                "\nread-time design: {read:.1} ns per received packet (target ≤ {TARGET_NS:.0}: {}), {:.1}× less than the per-packet design's {old:.1} ns in the same run.",
                if *read <= TARGET_NS { "met" } else { "NOT met" },
                old / read.max(0.001)
            )?;
        }
        duty_summary(&mut r, &totals)?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(arm: &str, round: usize, delivered: f64) -> NetRun {
        NetRun {
            workload: "udp64".to_owned(),
            arm: arm.to_owned(),
            round,
            stats: false,
            secs: 1.0,
            rx_packets: 0,
            delivered,
            bits_per_second: 0.0,
            programs: BTreeMap::new(),
        }
    }

    #[test]
    fn the_duty_cycled_arm_is_expected_to_lose_on_every_of_the_always_attached_loss() {
        // Always attached: 92% and 94% of the same rounds' no-program runs, a mean loss of 7%.
        let runs = [
            run("none", 0, 100.0),
            run("none", 1, 200.0),
            run("read_always", 0, 92.0),
            run("read_always", 1, 188.0),
            run("read", 0, 99.0),
            run("read", 1, 200.0),
        ];
        let mut r = String::new();
        throughput_summary(&mut r, &runs, "udp64").expect("render");
        assert!(
            r.contains("duty-cycled: mean of 2 per-round ratios 99.5%"),
            "{r}"
        );
        assert!(
            r.contains("always attached: mean of 2 per-round ratios 93.0%"),
            "{r}"
        );
        // 1 - 0.07 / 8.
        assert!(r.contains("ON/EVERY (0.125): 99.12%"), "{r}");
        assert!(r.contains("target ≥ 99%: met"), "{r}");
        // No read-time arm run: nothing said.
        let mut none = String::new();
        throughput_summary(&mut none, &runs[..2], "udp64").expect("render");
        assert!(none.is_empty());
    }
}
