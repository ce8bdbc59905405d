//! `cargo xtask bench-net`: what the receive-steering probes cost on the receive path.
//!
//! Two hosts in network namespaces (`podstat-test-bench-<pid>-tx`/`-rx`) joined by a 4-queue
//! veth pair with RPS and RFS on the receiver; an iperf3 server in a kubelet-style pod cgroup in
//! the receiver; iperf3 TCP runs from the sender, alternately with no agent and with the agent
//! running only the `net` collector (its steering probes attached), interleaved. Reports the
//! throughput ratio (target ≥ 97%) and, from `kernel.bpf_stats_enabled`, the nanoseconds per
//! event of each of the agent's net programs during the runs with it.
//!
//! Everything it creates (namespaces, cgroups, processes, the `bpf_stats_enabled` and
//! `net.core.rps_sock_flow_entries` sysctls) is undone by guards, also on error.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::Signal;

use crate::{
    bench::{
        BpfStats, Env, Proc, owned_progs, podstat_bin, prog_snapshot, start_agent, wait_ready,
    },
    step,
};

pub struct Config {
    pub secs: u64,
    pub rounds: usize,
}

const TARGET: f64 = 0.97;
const SOCK_FLOW: &str = "/proc/sys/net/core/rps_sock_flow_entries";
const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"];

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces, the veth pair, RPS/RFS, the pod cgroup; all undone on drop.
struct Net {
    tx: String,
    rx: String,
    sock_flow: String,
    cgroups: Vec<PathBuf>,
}

impl Net {
    fn new() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let mut net = Self {
            tx: format!("podstat-test-bench-{pid}-tx"),
            rx: format!("podstat-test-bench-{pid}-rx"),
            sock_flow: fs::read_to_string(SOCK_FLOW)
                .with_context(|| format!("reading {SOCK_FLOW}"))?
                .trim()
                .to_owned(),
            cgroups: Vec::new(),
        };
        for ns in [&net.tx, &net.rx] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        run(Command::new("ip").args([
            "-n",
            &net.tx,
            "link",
            "add",
            "podstat-test-a",
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            "podstat-test-b",
            "netns",
            &net.rx,
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
        ]))?;
        for (ns, dev, addr) in [
            (&net.tx, "podstat-test-a", "10.211.9.1/24"),
            (&net.rx, "podstat-test-b", "10.211.9.2/24"),
        ] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mask = format!("{:x}", (1u64 << cpus.min(63)) - 1);
        let script = format!(
            "for q in /sys/class/net/podstat-test-b/queues/rx-*; do echo {mask} > $q/rps_cpus; echo 4096 > $q/rps_flow_cnt; done"
        );
        run(Command::new("ip").args(["netns", "exec", &net.rx, "sh", "-c", &script]))?;
        fs::write(SOCK_FLOW, "32768").with_context(|| format!("writing {SOCK_FLOW}"))?;
        let rel = format!(
            "podstat-test-bench-{pid}/kubepods/burstable/pod6c1e2d3c-4b5a-4968-8776-a5b4c3d2e1f9/6c1e2d3c4b5a49688776a5b4c3d2e1f96c1e2d3c4b5a49688776a5b4c3d2e1f9"
        );
        for h in HIERARCHIES {
            let mut p = PathBuf::from(h);
            for part in rel.split('/') {
                p.push(part);
                if !p.exists() {
                    fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
                    net.cgroups.push(p.clone());
                }
            }
        }
        Ok(net)
    }

    fn pod_procs(&self) -> Vec<PathBuf> {
        HIERARCHIES
            .iter()
            .filter_map(|h| {
                self.cgroups
                    .iter()
                    .filter(|c| c.starts_with(h))
                    .max_by_key(|c| c.components().count())
                    .map(|c| c.join("cgroup.procs"))
            })
            .collect()
    }

    fn enter(ns: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"));
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = fs::write(SOCK_FLOW, &self.sock_flow) {
            eprintln!("warning: restoring {SOCK_FLOW}: {e}");
        }
        for c in self.cgroups.iter().rev() {
            let _ = fs::remove_dir(c);
        }
        for ns in [&self.tx, &self.rx] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One iperf3 run from the sender: received bits per second.
fn iperf(net: &Net, secs: u64) -> anyhow::Result<f64> {
    let out = run(Net::enter(&net.tx).args([
        "iperf3",
        "-c",
        "10.211.9.2",
        "-t",
        &secs.to_string(),
        "-J",
    ]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing iperf3 -J")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
}

#[derive(Default)]
struct ProgTotals {
    run_time_ns: u64,
    run_cnt: u64,
}

pub fn all(start: Instant, c: &Config) -> anyhow::Result<()> {
    ensure!(
        crate::is_root(),
        "the network benchmark needs root (netns, cgroups, eBPF)"
    );
    let (bin, from) = podstat_bin();
    ensure!(bin.exists(), "{} missing ({from})", bin.display());
    let out_dir = crate::root().join("target/bench");
    fs::create_dir_all(&out_dir).context("creating target/bench")?;
    let env = Env {
        bin,
        out_dir: out_dir.clone(),
        storm_secs: c.secs,
    };
    step(start, "network namespaces, veth, RPS/RFS, pod cgroup");
    let net = Net::new()?;
    let mut server = spawn_server(&net, &out_dir)?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(s) = server.exited()? {
        bail!("iperf3 -s exited with {s}: {}", server.log_tail());
    }
    // Warm-up.
    let _ = iperf(&net, 1)?;

    let mut base = Vec::new();
    let mut with = Vec::new();
    let mut totals: HashMap<String, ProgTotals> = HashMap::new();
    for round in 0..c.rounds {
        step(
            start,
            &format!("round {}/{}: iperf3 without probes", round + 1, c.rounds),
        );
        base.push(iperf(&net, c.secs)?);
        step(
            start,
            &format!(
                "round {}/{}: iperf3 with the net probes",
                round + 1,
                c.rounds
            ),
        );
        let (mut agent, addr) = start_agent(
            &env,
            "agent-net",
            &[
                "--no-collector.cgroup",
                "--no-collector.sched",
                "--no-collector.throttle",
                "--collector.net",
            ],
        )?;
        wait_ready(&mut agent, addr, |b| {
            b.lines()
                .any(|l| l.trim_end() == r#"podstat_probe_attached{probe="net_rx_queue"} 1"#)
        })?;
        std::thread::sleep(Duration::from_millis(1500)); // the tracker knows the pod
        let stats = BpfStats::enable()?;
        let before = prog_snapshot()?;
        with.push(iperf(&net, c.secs)?);
        let after = prog_snapshot()?;
        drop(stats);
        let mine = owned_progs(agent.pid(), &after)?;
        for id in mine {
            let (Some(a), b) = (after.get(&id), before.get(&id)) else {
                continue;
            };
            if !a.name.starts_with("net_") {
                continue;
            }
            let t = totals.entry(a.name.clone()).or_default();
            t.run_time_ns += a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            t.run_cnt += a.run_cnt - b.map_or(0, |b| b.run_cnt);
        }
        agent.stop(Signal::SIGTERM)?;
    }
    server.stop(Signal::SIGTERM)?;

    let report = render(c, &base, &with, &totals)?;
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
    totals: &HashMap<String, ProgTotals>,
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

/// `iperf3 -s` in the receiver's namespace, inside the pod cgroup from before its exec.
fn spawn_server(net: &Net, out_dir: &std::path::Path) -> anyhow::Result<Proc> {
    let procs: Vec<std::ffi::CString> = net
        .pod_procs()
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).context("cgroup path"))
        .collect::<anyhow::Result<_>>()?;
    let mut server_cmd = Net::enter(&net.rx);
    server_cmd.args(["iperf3", "-s"]);
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on C
    // strings allocated before the fork.
    unsafe {
        server_cmd.pre_exec(move || {
            for p in &procs {
                let fd = nix::libc::open(p.as_ptr(), nix::libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
                nix::libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Proc::spawn("iperf3-server", &mut server_cmd, out_dir)
}
