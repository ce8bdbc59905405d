//! The measuring half of `cargo xtask bench-net`, on the test harness: what the
//! receive-steering probes cost on the receive path. `cargo xtask bench-net` builds this in
//! release, runs it as root with `PODSTAT_BIN` set, and renders `target/bench/net.md` from the
//! JSON line it prints on stdout (`{"net": {base, with, programs}}`).
//!
//! Two hosts in network namespaces (`podstat-test-bench-<pid>-tx`/`-rx`) joined by a 4-queue
//! veth pair with RPS and RFS on the receiver; an iperf3 server in a kubelet-style pod cgroup in
//! the receiver; iperf3 TCP runs from the sender, alternately with no agent and with the agent
//! running only the `net` collector (its steering probes attached), interleaved. From
//! `kernel.bpf_stats_enabled`, the run time and events of each of the agent's net programs
//! during the runs with it.
//!
//! `podstat-test-bench-net --out-dir DIR [--secs N] [--rounds N]`. Everything it creates
//! (namespaces, cgroups, processes, the `bpf_stats_enabled` and
//! `net.core.rps_sock_flow_entries` sysctls) is undone by the harness's guards, also on error.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use podstat_tests::{
    CgroupTree, Logged, NetPair, agent_command,
    bench_json::NetResult,
    bpf::{BpfStats, owned_progs, prog_snapshot},
    free_addr,
    netns::enter,
    proc::run,
    wait_metrics,
};

const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"];
const SUBNET: &str = "10.211.9";

struct Config {
    secs: u64,
    rounds: usize,
    out_dir: PathBuf,
}

fn usage() -> anyhow::Error {
    anyhow::anyhow!("usage: podstat-test-bench-net --out-dir DIR [--secs N] [--rounds N]")
}

fn parse_args() -> anyhow::Result<Config> {
    let mut c = Config {
        secs: 5,
        rounds: 5,
        out_dir: PathBuf::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--secs" => c.secs = value()?.parse().context("--secs")?,
            "--rounds" => c.rounds = value()?.parse().context("--rounds")?,
            "--out-dir" => c.out_dir = PathBuf::from(value()?),
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

/// One iperf3 run from the sender: received bits per second.
fn iperf(net: &NetPair, secs: u64) -> anyhow::Result<f64> {
    let out =
        run(enter(&net.tx).args(["iperf3", "-c", &net.rx_ip(), "-t", &secs.to_string(), "-J"]));
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing iperf3 -J")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
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
    let _ = iperf(&net, 1)?;

    let mut result = NetResult {
        base: Vec::new(),
        with: Vec::new(),
        programs: BTreeMap::new(),
    };
    for round in 0..c.rounds {
        step(
            start,
            &format!("round {}/{}: iperf3 without probes", round + 1, c.rounds),
        );
        result.base.push(iperf(&net, c.secs)?);
        step(
            start,
            &format!(
                "round {}/{}: iperf3 with the net probes",
                round + 1,
                c.rounds
            ),
        );
        let addr = free_addr();
        let mut agent = Logged::spawn(
            "agent-net",
            &mut agent_command(
                None,
                addr,
                &[
                    "--probe.refresh-interval",
                    "500ms",
                    "--no-collector.cgroup",
                    "--no-collector.sched",
                    "--no-collector.throttle",
                    "--collector.net",
                ],
            ),
            &c.out_dir,
        )?;
        if let Err(e) = wait_metrics(&mut agent.proc, addr, |b| {
            // `podstat_probe_attached{probe="net_rx_queue",via="…"} 1`
            b.lines().map(str::trim_end).any(|l| {
                l.starts_with(r#"podstat_probe_attached{probe="net_rx_queue""#) && l.ends_with(" 1")
            })
        }) {
            bail!("{e}; its log:\n{}", agent.tail());
        }
        std::thread::sleep(Duration::from_millis(1500)); // the tracker knows the pod
        let stats = BpfStats::enable().context("enabling kernel.bpf_stats_enabled")?;
        let before = prog_snapshot()?;
        result.with.push(iperf(&net, c.secs)?);
        let after = prog_snapshot()?;
        drop(stats);
        let agent_pid = u32::try_from(agent.proc.pid()).context("the agent has no pid")?;
        for id in owned_progs(agent_pid, &after)? {
            let (Some(a), b) = (after.get(&id), before.get(&id)) else {
                continue;
            };
            if !a.name.starts_with("net_") {
                continue;
            }
            let t = result.programs.entry(a.name.clone()).or_default();
            t.run_time_ns += a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            t.run_cnt += a.run_cnt - b.map_or(0, |b| b.run_cnt);
        }
        agent.stop(libc::SIGTERM);
    }
    server.stop(libc::SIGTERM);
    let line = serde_json::to_string(&serde_json::json!({ "net": result }))
        .context("encoding the result")?;
    println!("{line}");
    Ok(())
}
