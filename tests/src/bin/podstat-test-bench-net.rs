//! The measuring half of `cargo xtask bench-net`, on the test harness: what the
//! receive-steering probes cost on the receive path. `cargo xtask bench-net` builds this in
//! release, runs it as root with `PODSTAT_BIN` set, and renders `target/bench/net.md` from the
//! JSON line it prints on stdout (`{"net": {sample_every, runs}}`).
//!
//! Two hosts in network namespaces (`podstat-test-bench-<pid>-tx`/`-rx`) joined by a 4-queue
//! veth pair with RPS and RFS on the receiver; an iperf3 server in a kubelet-style pod cgroup in
//! the receiver. Two workloads from the sender: 64-byte UDP datagrams at full speed (`-u -l 64
//! -b 0`: request-sized packets, the receiver the bottleneck) and 1400-byte TCP segments (`-l
//! 1400 -M 1400`, TSO/GSO off on the sender's veth so every segment is one packet). Five arms,
//! interleaved in every round (the order rotates from round to round): no programs; the floor
//! (an empty `sock_recv_length` program, `podstat-test-floor`); the agent with the default
//! read-time steering design (duty-cycled); the same with `--probe.net.duty-cycle always`; the
//! agent with `--probe.net.per-packet` (the old design). The agents run only the `net`
//! collector. Throughput runs have `kernel.bpf_stats_enabled` off;
//! each arm with programs then does one cost run per workload with it on, from which the run
//! time and events of each of its programs come (by the process holding them).
//!
//! `podstat-test-bench-net --out-dir DIR [--secs N] [--rounds N] [--sample-every N]
//! [--arms A,B,...] [--throughput-only]`: `--arms` runs a subset (with `none`, which every
//! ratio is against), `--throughput-only` skips the cost runs, for more rounds in the time.
//! Everything it creates (namespaces, cgroups, processes, the `bpf_stats_enabled` and
//! `net.core.rps_sock_flow_entries` sysctls) is undone by the harness's guards, also on error.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use podstat_tests::{
    CgroupTree, Logged, NetPair, agent_command,
    bench_json::{NetResult, NetRun, ProgTotals},
    bpf::{BpfStats, owned_progs, prog_snapshot, start_floor},
    free_addr,
    netns::enter,
    proc::run,
    wait_metrics,
};

const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"];
const SUBNET: &str = "10.211.9";
const WORKLOADS: [&str; 2] = ["udp64", "tcp1400"];
const ARMS: [&str; 5] = ["none", "floor", "read", "read_always", "per_packet"];

struct Config {
    secs: u64,
    rounds: usize,
    sample_every: u32,
    out_dir: PathBuf,
    /// The arms to run, in [`ARMS`]' order; `none` always (every ratio is against it).
    arms: Vec<&'static str>,
    /// No cost runs (bpf_stats): throughput runs only, for more rounds in the same time.
    throughput_only: bool,
}

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage: podstat-test-bench-net --out-dir DIR [--secs N] [--rounds N] [--sample-every N] [--arms A,B,...] [--throughput-only]\narms: {}",
        ARMS.join(", ")
    )
}

/// `--arms`: a comma-separated subset of [`ARMS`], run in that table's order, with `none`.
fn parse_arms(list: &str) -> anyhow::Result<Vec<&'static str>> {
    let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = wanted.iter().find(|a| !ARMS.contains(a)) {
        bail!(
            "--arms: unknown arm {bad:?}; the arms are {}",
            ARMS.join(", ")
        );
    }
    Ok(ARMS
        .into_iter()
        .filter(|a| *a == "none" || wanted.contains(a))
        .collect())
}

fn parse_args() -> anyhow::Result<Config> {
    let mut c = Config {
        secs: 5,
        rounds: 5,
        sample_every: podstat_common::net::DEFAULT_SAMPLE_EVERY,
        out_dir: PathBuf::new(),
        arms: ARMS.to_vec(),
        throughput_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--secs" => c.secs = value()?.parse().context("--secs")?,
            "--rounds" => c.rounds = value()?.parse().context("--rounds")?,
            "--sample-every" => c.sample_every = value()?.parse().context("--sample-every")?,
            "--out-dir" => c.out_dir = PathBuf::from(value()?),
            "--arms" => c.arms = parse_arms(&value()?)?,
            "--throughput-only" => c.throughput_only = true,
            _ => return Err(usage()),
        }
    }
    ensure!(!c.out_dir.as_os_str().is_empty(), usage());
    ensure!(
        c.secs > 0 && c.rounds > 0,
        "--secs and --rounds must be at least 1"
    );
    Ok(c)
}

fn step(start: Instant, what: &str) {
    eprintln!("\n==> [{:>5.0}s] {what}", start.elapsed().as_secs_f64());
}

/// `rx_packets` of the receiver's veth.
fn rx_packets(net: &NetPair) -> anyhow::Result<u64> {
    let out = run(std::process::Command::new("ip").args([
        "-n",
        &net.rx,
        "-j",
        "-s",
        "link",
        "show",
        "podstat-test-b",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j -s link")?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no stats64.rx.packets in ip's JSON")
}

/// One iperf3 run of `workload` from the sender: (received bits/s, packets delivered to the
/// reader, veth rx packets).
fn iperf(net: &NetPair, workload: &str, secs: u64) -> anyhow::Result<(f64, f64, u64)> {
    let t = secs.to_string();
    let ip = net.rx_ip();
    let mut args = vec!["iperf3", "-c", &ip, "-t", &t, "-J"];
    match workload {
        "udp64" => args.extend(["-u", "-l", "64", "-b", "0"]),
        "tcp1400" => args.extend(["-l", "1400", "-M", "1400"]),
        other => bail!("unknown workload {other}"),
    }
    let before = rx_packets(net)?;
    let out = run(enter(&net.tx).args(&args));
    let after = rx_packets(net)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing iperf3 -J")?;
    let r = &v["end"]["sum_received"];
    let bps = r["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")?;
    let packets = after.saturating_sub(before);
    #[expect(clippy::cast_precision_loss, reason = "packet counts far below 2^53")]
    let delivered = if workload == "udp64" {
        r["bytes"].as_f64().context("no end.sum_received.bytes")? / 64.0
    } else {
        packets as f64
    };
    Ok((bps, delivered, packets))
}

/// The programs `pid` holds, deltas between two snapshots, by name.
fn program_deltas(
    pid: u32,
    before: &std::collections::HashMap<u64, podstat_tests::bpf::Prog>,
    after: &std::collections::HashMap<u64, podstat_tests::bpf::Prog>,
) -> anyhow::Result<BTreeMap<String, ProgTotals>> {
    let mut out: BTreeMap<String, ProgTotals> = BTreeMap::new();
    for id in owned_progs(pid, after)? {
        let (Some(a), b) = (after.get(&id), before.get(&id)) else {
            continue;
        };
        let t = out.entry(a.name.clone()).or_default();
        t.run_time_ns += a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
        t.run_cnt += a.run_cnt - b.map_or(0, |b| b.run_cnt);
    }
    // Programs that never ran (another design's, the aRFS ones) are left out.
    out.retain(|_, t| t.run_cnt > 0);
    Ok(out)
}

/// The agent with only the `net` collector, `extra` flags, once its reader probe is attached
/// and the identity refresh knows the pod.
fn start_agent(c: &Config, name: &'static str, extra: &[&str]) -> anyhow::Result<Logged> {
    let addr = free_addr();
    let every = c.sample_every.to_string();
    let mut flags = vec![
        "--probe.refresh-interval",
        "500ms",
        "--no-collector.cgroup",
        "--no-collector.sched",
        "--no-collector.throttle",
        "--collector.net",
        "--probe.net.sample-every",
        &every,
    ];
    flags.extend_from_slice(extra);
    let mut agent = Logged::spawn(name, &mut agent_command(None, addr, &flags), &c.out_dir)?;
    if let Err(e) = wait_metrics(&mut agent.proc, addr, |b| {
        // `podstat_probe_attached{probe="net_reader",via="…"} 1`
        b.lines().map(str::trim_end).any(|l| {
            l.starts_with(r#"podstat_probe_attached{probe="net_reader""#) && l.ends_with(" 1")
        })
    }) {
        bail!("{e}; its log:\n{}", agent.tail());
    }
    std::thread::sleep(Duration::from_millis(1500)); // the identity refresh knows the pod
    Ok(agent)
}

/// One arm of one round: its programs (if any) loaded, a throughput run of each workload with
/// bpf_stats off, then (arms with programs) a cost run of each with it on.
fn arm(
    start: Instant,
    c: &Config,
    net: &NetPair,
    (round, name): (usize, &str),
    runs: &mut Vec<NetRun>,
) -> anyhow::Result<()> {
    let mut holder: Option<Logged> = match name {
        "none" => None,
        "floor" => Some(start_floor(&c.out_dir, "floor-recv", "sock_recv_length")?),
        "read" => Some(start_agent(c, "agent-net-read", &[])?),
        "read_always" => Some(start_agent(
            c,
            "agent-net-read-always",
            &["--probe.net.duty-cycle", "always"],
        )?),
        "per_packet" => Some(start_agent(
            c,
            "agent-net-per-packet",
            &["--probe.net.per-packet"],
        )?),
        other => bail!("unknown arm {other}"),
    };
    let passes: &[bool] = if holder.is_some() && !c.throughput_only {
        &[false, true]
    } else {
        &[false]
    };
    for &stats in passes {
        for workload in WORKLOADS {
            step(
                start,
                &format!(
                    "round {}/{}: {workload}, {name}{}",
                    round + 1,
                    c.rounds,
                    if stats {
                        " (cost run, bpf_stats on)"
                    } else {
                        ""
                    }
                ),
            );
            let guard = if stats {
                Some(BpfStats::enable().context("enabling kernel.bpf_stats_enabled")?)
            } else {
                None
            };
            let before = prog_snapshot()?;
            let t0 = Instant::now();
            let (bps, delivered, rx) = iperf(net, workload, c.secs)?;
            let secs = t0.elapsed().as_secs_f64();
            let after = prog_snapshot()?;
            drop(guard);
            let programs = match (&holder, stats) {
                (Some(h), true) => {
                    let pid = u32::try_from(h.proc.pid()).context("no pid")?;
                    program_deltas(pid, &before, &after)?
                }
                _ => BTreeMap::new(),
            };
            runs.push(NetRun {
                workload: workload.to_owned(),
                arm: name.to_owned(),
                round,
                stats,
                secs,
                rx_packets: rx,
                delivered,
                bits_per_second: bps,
                programs,
            });
        }
    }
    if let Some(h) = holder.as_mut() {
        h.stop(libc::SIGTERM);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let start = Instant::now();
    let c = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the network benchmark needs root (netns, cgroups, eBPF)"
    );
    step(start, "network namespaces, veth, RPS/RFS, pod cgroup");
    let pid = std::process::id();
    let net = NetPair::new(&format!("podstat-test-bench-{pid}"), SUBNET, true, false);
    // 1400-byte segments on the wire: no TSO/GSO on the sender's end.
    run(enter(&net.tx).args([
        "ethtool",
        "-K",
        "podstat-test-a",
        "tso",
        "off",
        "gso",
        "off",
    ]));
    let mut tree = CgroupTree::new(&HIERARCHIES.map(Path::new));
    let pod = format!(
        "podstat-test-bench-{pid}/kubepods/burstable/pod6c1e2d3c-4b5a-4968-8776-a5b4c3d2e1f9/6c1e2d3c4b5a49688776a5b4c3d2e1f96c1e2d3c4b5a49688776a5b4c3d2e1f9"
    );
    tree.mkdir(&pod);
    // `iperf3 -s` in the receiver's namespace, inside the pod cgroup from before its exec.
    let mut server_cmd = enter(&net.rx);
    server_cmd.args(["iperf3", "-s"]);
    tree.place(&pod, &mut server_cmd);
    let mut server = Logged::spawn("iperf3-server", &mut server_cmd, &c.out_dir)
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(s) = server.proc.exited() {
        bail!("iperf3 -s exited with {s}: {}", server.tail());
    }
    // Warm-up.
    for w in WORKLOADS {
        let _ = iperf(&net, w, 1)?;
    }

    let mut result = NetResult {
        sample_every: c.sample_every,
        runs: Vec::new(),
    };
    for round in 0..c.rounds {
        for k in 0..c.arms.len() {
            let name = c.arms[(k + round) % c.arms.len()];
            arm(start, &c, &net, (round, name), &mut result.runs)?;
        }
    }
    server.stop(libc::SIGTERM);
    let line = serde_json::to_string(&serde_json::json!({ "net": result }))
        .context("encoding the result")?;
    println!("{line}");
    Ok(())
}
