//! The measuring half of `cargo xtask bench`, on the test harness: what podstat costs, each
//! figure against a baseline measured in the same run. `cargo xtask bench` builds this in
//! release, runs it as root with `PODSTAT_BIN` set, and renders `target/bench/report.md` from
//! the JSON lines it prints on stdout (one per part: `setup`, `scrape`, `probe`, `e2e`).
//!
//! 1. Scrape cost: the agent's `/metrics` on `pods` × 3 real (v1) container cgroups, against a
//!    plain loop that reads the same `cpu.stat` files.
//! 2. Per-event probe cost: `run_time_ns / run_cnt` of each of podstat's programs against
//!    libbpf-tools `runqlat`'s, during the same context-switch storm, run inside a kubelet-style
//!    container cgroup (podstat's full path; checked on the agent's run-queue series), then a
//!    shorter one outside pods (its early exit). Also the floor: an empty `sched_switch`
//!    program (`podstat-test-floor`) attached alongside.
//! 3. End-to-end cost: stress-ng `--switch` throughput in that container cgroup with no probe,
//!    with the empty program alone (the floor), with the podstat agent, and with runqlat alone,
//!    interleaved.
//!
//! 4. Scrape flood: 1, 8 and 32 concurrent scrapers (Prometheus' `Accept` and gzip, a new
//!    connection each) for `--flood-secs` against `--flood-pods` × 3 container cgroups: every
//!    scrape answered, the agent's CPU (cores) and the latency p50/p99, with the default
//!    `--web.scrape-window`, with `0`, and with `--flood-baseline BIN` (another build, e.g. the
//!    main branch's) when given.
//!
//! `podstat-test-bench --out-dir DIR [--pods N] [--scrapes N] [--storm-secs N] [--skip-scrape]
//! [--skip-probe] [--skip-e2e] [--skip-flood] [--flood-pods N] [--flood-secs N]
//! [--flood-baseline BIN] [--churn N]`.
//! 5. Pod churn: `--churn N` container cgroups (0 skips it) created and removed in batches,
//!    each briefly running a task, probes on (the harness of `tests/churn.rs`): the agent's
//!    RSS curve, the series and map entries left. Processes' logs go to DIR. Everything it creates (cgroups below
//! `podstat-test-bench-<pid>`, processes, the `bpf_stats_enabled` sysctl) is undone by the
//! harness's guards, also on error and on panic.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use podstat_tests::{
    CgroupTree, Logged, agent_command,
    bench_json::{
        ChurnResult, E2eResult, FloodResult, FloodRow, ProbeResult, ProbeRow, ScrapeResult, Setup,
        StormRows, Summary,
    },
    bpf::{BpfStats, Prog, owned_progs, prog_snapshot},
    cgroup::reap_stale,
    churn, free_addr, http_get, wait_metrics,
};
use serde::Serialize;

/// The v1 hierarchies the bench creates its cgroups in (same relative paths in both).
const HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"];
/// Every cgroup the bench creates is below a directory named with this prefix and its pid.
const PREFIX: &str = "podstat-test-bench-";
const CONTAINERS_PER_POD: usize = 3;
const WARMUP: usize = 5;
const E2E_ROUNDS: usize = 5;
/// Seconds per end-to-end storm.
const E2E_SECS: u64 = 6;
/// The agent's `--probe.refresh-interval` in the bench.
const PROBE_REFRESH: &str = "500ms";
/// Wait between the agent being ready and a storm: a few refreshes, so the tracker knows the
/// storm's cgroup.
const TRACKER_WAIT: Duration = Duration::from_millis(1500);

#[expect(
    clippy::struct_excessive_bools,
    reason = "one switch per part of the bench"
)]
struct Config {
    pods: usize,
    scrapes: usize,
    storm_secs: u64,
    skip_scrape: bool,
    skip_probe: bool,
    skip_e2e: bool,
    skip_flood: bool,
    flood_pods: usize,
    flood_secs: u64,
    flood_baseline: Option<PathBuf>,
    churn: usize,
    out_dir: PathBuf,
}

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage: podstat-test-bench --out-dir DIR [--pods N] [--scrapes N] [--storm-secs N] [--skip-scrape] [--skip-probe] [--skip-e2e] [--skip-flood] [--flood-pods N] [--flood-secs N] [--flood-baseline BIN] [--churn N]"
    )
}

fn parse_args() -> anyhow::Result<Config> {
    let mut c = Config {
        pods: 300,
        scrapes: 200,
        storm_secs: 10,
        skip_scrape: false,
        skip_probe: false,
        skip_e2e: false,
        skip_flood: false,
        flood_pods: 200,
        flood_secs: 10,
        flood_baseline: None,
        churn: 3000,
        out_dir: PathBuf::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(usage);
        match a.as_str() {
            "--pods" => c.pods = value()?.parse().context("--pods")?,
            "--scrapes" => c.scrapes = value()?.parse().context("--scrapes")?,
            "--storm-secs" => c.storm_secs = value()?.parse().context("--storm-secs")?,
            "--out-dir" => c.out_dir = PathBuf::from(value()?),
            "--skip-scrape" => c.skip_scrape = true,
            "--skip-e2e" => c.skip_e2e = true,
            "--skip-probe" => c.skip_probe = true,
            "--skip-flood" => c.skip_flood = true,
            "--flood-pods" => c.flood_pods = value()?.parse().context("--flood-pods")?,
            "--flood-secs" => c.flood_secs = value()?.parse().context("--flood-secs")?,
            "--flood-baseline" => c.flood_baseline = Some(PathBuf::from(value()?)),
            "--churn" => c.churn = value()?.parse().context("--churn")?,
            _ => return Err(usage()),
        }
    }
    ensure!(!c.out_dir.as_os_str().is_empty(), usage());
    ensure!(
        c.pods > 0 && c.scrapes > 0 && c.storm_secs > 0,
        "--pods, --scrapes and --storm-secs must be at least 1"
    );
    Ok(c)
}

/// Progress on stderr, with the time since start.
fn step(start: Instant, what: &str) {
    eprintln!("\n==> [{:>5.0}s] {what}", start.elapsed().as_secs_f64());
}

/// One part's result as a JSON line on stdout: `{"<part>": …}`.
fn emit(part: &str, value: &impl Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(&serde_json::json!({ part: value }))
        .with_context(|| format!("encoding the {part} result"))?;
    println!("{line}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let start = Instant::now();
    let c = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks need root (cgroups, eBPF, bpf_stats)"
    );
    let hierarchies = HIERARCHIES.map(Path::new);
    step(start, "reaping leftover podstat-test-bench-* cgroups");
    // A bench still running owns its tree (its comm is cut to 15 characters).
    reap_stale(&hierarchies, PREFIX, "podstat-test-be").context("reaping leftover cgroups")?;
    emit(
        "setup",
        &Setup {
            containers_per_pod: CONTAINERS_PER_POD,
            warmup: WARMUP,
            e2e_rounds: E2E_ROUNDS,
            e2e_secs: E2E_SECS,
            probe_refresh: PROBE_REFRESH.to_owned(),
            tracker_wait_secs: TRACKER_WAIT.as_secs_f64(),
        },
    )?;

    if !c.skip_scrape {
        step(
            start,
            &format!(
                "scrape cost: {} pods x {CONTAINERS_PER_POD} containers, {} scrapes",
                c.pods, c.scrapes
            ),
        );
        emit("scrape", &scrape_bench(&c)?)?;
    }

    if !c.skip_probe {
        step(
            start,
            &format!(
                "per-event probe cost: podstat and runqlat during a {}s context-switch storm in a pod, \
                 then a {}s one outside pods",
                c.storm_secs,
                c.storm_secs.div_ceil(2)
            ),
        );
        let pod = StormPod::new();
        emit("probe", &probe_bench(start, &c, &pod)?)?;

        if !c.skip_e2e {
            step(
                start,
                &format!(
                    "end-to-end cost: stress-ng --switch in the pod, {E2E_ROUNDS} rounds x {E2E_SECS}s: \
                     no probe, an empty sched_switch program, podstat, runqlat"
                ),
            );
            emit("e2e", &e2e_bench(start, &c, &pod)?)?;
        }
    }

    if !c.skip_flood {
        step(
            start,
            &format!(
                "scrape flood: {:?} concurrent scrapers for {}s each against {} pods x {CONTAINERS_PER_POD} containers",
                FLOOD_SCRAPERS, c.flood_secs, c.flood_pods
            ),
        );
        emit("flood", &flood_bench(start, &c)?)?;
    }

    if c.churn > 0 {
        step(start, &format!("pod churn: {} container cgroups", c.churn));
        emit("churn", &churn_bench(&c)?)?;
    }
    Ok(())
}

fn v1_tree() -> CgroupTree {
    CgroupTree::new(&HIERARCHIES.map(Path::new))
}

// ---------------------------------------------------------------------------------------------
// Agent

/// Starts `podstat agent` on a free loopback port with `extra` flags and the bench's
/// `--probe.refresh-interval` (unless `extra` sets its own: the flag may be given once), its
/// output in `<out_dir>/<name>.log`, and waits until `/metrics` answers with a body `ready`
/// accepts.
fn start_agent(
    c: &Config,
    name: &'static str,
    extra: &[&str],
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<(Logged, SocketAddr)> {
    let addr = free_addr();
    let mut args = Vec::new();
    if !extra.contains(&"--probe.refresh-interval") {
        args.extend(["--probe.refresh-interval", PROBE_REFRESH]);
    }
    args.extend_from_slice(extra);
    let mut agent = Logged::spawn(name, &mut agent_command(None, addr, &args), &c.out_dir)?;
    if let Err(e) = wait_metrics(&mut agent.proc, addr, ready) {
        bail!("{e}; its log:\n{}", agent.tail());
    }
    Ok((agent, addr))
}

fn agent_pid(agent: &Logged) -> anyhow::Result<u32> {
    u32::try_from(agent.proc.pid()).context("the agent has no pid (stopped?)")
}

fn probe_attached(body: &str) -> bool {
    switch_attach_line(body).is_some_and(|l| l.ends_with(" 1"))
}

/// The agent's `podstat_probe_attached{probe="sched_switch"…}` line (with its `via` label, if
/// the binary exports one: `tp_btf (sched_info)` in sched_info mode).
fn switch_attach_line(body: &str) -> Option<&str> {
    body.lines()
        .map(str::trim_end)
        .find(|l| l.starts_with(r#"podstat_probe_attached{probe="sched_switch""#))
}

/// GET /metrics as Prometheus text; the body.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let r = http_get(addr, "/metrics", &[("Accept", "text/plain")])
        .with_context(|| format!("GET http://{addr}/metrics"))?;
    ensure!(r.status == 200, "GET /metrics answered {}", r.status);
    Ok(r.text())
}

/// The value of label `name` in an exposition line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Nearest-rank median and p99.
fn summarize(mut d: Vec<Duration>) -> Summary {
    d.sort_unstable();
    let rank = |p: f64| {
        if d.is_empty() {
            return 0.0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "sample counts are small and positive"
        )]
        let i = ((p * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1;
        d[i].as_secs_f64() * 1e3
    };
    Summary {
        median_ms: rank(0.5),
        p99_ms: rank(0.99),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Scrape cost

/// Kubelet-style cgroups (cgroupfs driver): guaranteed pods under `kubepods/`, the others
/// under `kubepods/{burstable,besteffort}/`.
struct BenchPods {
    _tree: CgroupTree,
    container_ids: Vec<String>,
    /// `cpu.stat` of every pod and container: what the floor loop reads.
    stat_files: Vec<PathBuf>,
    with_quota: usize,
}

fn create_pods(pods: usize) -> BenchPods {
    const POD_QUOTA_US: &str = "150000";
    const CONTAINER_QUOTA_US: &str = "50000";
    let pid = std::process::id();
    let mut tree = v1_tree();
    let mut container_ids = Vec::with_capacity(pods * CONTAINERS_PER_POD);
    let mut stat_files = Vec::with_capacity(pods * (CONTAINERS_PER_POD + 1));
    let mut with_quota = 0;
    let kubepods = format!("{PREFIX}{pid}/kubepods");
    tree.mkdir(&format!("{kubepods}/burstable"));
    tree.mkdir(&format!("{kubepods}/besteffort"));
    for i in 0..pods {
        let uid = format!("0b5a1c2e-{:04x}-4abc-8def-{i:012x}", pid & 0xffff);
        let (parent, quota) = match i % 3 {
            // guaranteed: quota on the pod and on every container
            0 => (kubepods.clone(), true),
            1 => (format!("{kubepods}/burstable"), i % 2 == 1),
            _ => (format!("{kubepods}/besteffort"), false),
        };
        let pod = format!("{parent}/pod{uid}");
        tree.mkdir(&pod);
        if quota {
            // v1 refuses a child quota above its parent's: set the pod's first.
            tree.write(0, &pod, "cpu.cfs_quota_us", POD_QUOTA_US);
        }
        stat_files.push(tree.path(0, &pod).join("cpu.stat"));
        for j in 0..CONTAINERS_PER_POD {
            let id = format!("{pid:016x}{:048x}", i * CONTAINERS_PER_POD + j);
            let dir = format!("{pod}/{id}");
            tree.mkdir(&dir);
            if quota {
                tree.write(0, &dir, "cpu.cfs_quota_us", CONTAINER_QUOTA_US);
                with_quota += 1;
            }
            stat_files.push(tree.path(0, &dir).join("cpu.stat"));
            container_ids.push(id);
        }
    }
    BenchPods {
        _tree: tree,
        container_ids,
        stat_files,
        with_quota,
    }
}

/// Reads every file in `files`, `WARMUP + n` times; the times of the last `n` rounds.
fn read_loop(files: &[PathBuf], n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0usize;
    for i in 0..WARMUP + n {
        let t = Instant::now();
        for f in files {
            bytes += fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .len();
        }
        if i >= WARMUP {
            times.push(t.elapsed());
        }
    }
    std::hint::black_box(bytes);
    Ok(times)
}

fn scrape_bench(c: &Config) -> anyhow::Result<ScrapeResult> {
    let b = create_pods(c.pods);
    let (mut agent, addr) = start_agent(c, "agent-scrape", &["--no-collector.sched"], |_| true)?;

    let mut text = String::new();
    for _ in 0..WARMUP {
        text = scrape(addr)?;
    }
    let mut times = Vec::with_capacity(c.scrapes);
    for _ in 0..c.scrapes {
        let t = Instant::now();
        text = scrape(addr)?;
        times.push(t.elapsed());
    }
    let (rss_kib, hwm_kib) = vm_rss_hwm(agent_pid(&agent)?)?;
    let size_of = |accept: &str| -> anyhow::Result<usize> {
        let r = http_get(addr, "/metrics", &[("Accept", accept)]).context("scrape")?;
        anyhow::ensure!(r.status == 200, "/metrics answered {}", r.status);
        Ok(r.body.len())
    };
    let openmetrics_bytes = size_of("application/openmetrics-text;version=1.0.0")?;
    let protobuf_bytes = size_of(
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
    )?;
    agent.stop(libc::SIGTERM);

    let collect_ms = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"podstat_collector_duration_seconds{collector="cgroup"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|secs| secs * 1e3);
    let periods_lines = text
        .lines()
        .filter(|l| l.contains("podstat_cpu_periods_total"))
        .count();
    let ours: HashSet<&str> = b.container_ids.iter().map(String::as_str).collect();
    let matched: HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("podstat_cpu_periods_total{"))
        .filter_map(|l| label(l, "container_id"))
        .filter(|id| ours.contains(id))
        .collect();

    // The floor: the same pods' and containers' cpu.stat, read in a plain loop.
    let floor = read_loop(&b.stat_files, c.scrapes)?;
    // The same-files floor: cpu.stat and, from the separate cpuacct mount, cpuacct.usage.
    let same_files: Vec<PathBuf> = b
        .stat_files
        .iter()
        .flat_map(|f| {
            let usage = f
                .to_string_lossy()
                .replacen("/sys/fs/cgroup/cpu/", "/sys/fs/cgroup/cpuacct/", 1)
                .replace("cpu.stat", "cpuacct.usage");
            [f.clone(), PathBuf::from(usage)]
        })
        .collect();
    let floor_same = read_loop(&same_files, c.scrapes)?;

    Ok(ScrapeResult {
        floor_same: summarize(floor_same),
        pods: c.pods,
        created_containers: b.container_ids.len(),
        with_quota: b.with_quota,
        stat_files: b.stat_files.len(),
        agent: summarize(times),
        floor: summarize(floor),
        body_bytes: text.len(),
        openmetrics_bytes,
        protobuf_bytes,
        periods_lines,
        collect_ms,
        matched_containers: matched.len(),
        rss_kib,
        hwm_kib,
    })
    // `b` drops here: the cgroups go, children first.
}

fn vm_rss_hwm(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = process(pid)?
        .status()
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib =
        |v: Option<u64>, name: &str| v.with_context(|| format!("no {name} in /proc/{pid}/status"));
    Ok((kib(status.vmrss, "VmRSS")?, kib(status.vmhwm, "VmHWM")?))
}

/// CPU time (user + system, all threads) the process `pid` has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = process(pid)?
        .stat()
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = stat.utime + stat.stime;
    let hz = procfs::ticks_per_second().max(1);
    Ok(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

fn process(pid: u32) -> anyhow::Result<procfs::process::Process> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    procfs::process::Process::new(pid).with_context(|| format!("opening /proc/{pid}"))
}

// ---------------------------------------------------------------------------------------------
// 4. Scrape flood

/// Concurrent scrapers in each flood.
const FLOOD_SCRAPERS: [usize; 3] = [1, 8, 32];
/// What Prometheus 3 sends.
const PROM_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn flood_bench(start: Instant, c: &Config) -> anyhow::Result<FloodResult> {
    let b = create_pods(c.flood_pods);
    let ours = podstat_tests::podstat_bin();
    let mut agents: Vec<(&'static str, PathBuf, Vec<&str>)> = vec![
        ("window 1s", ours.clone(), vec!["--web.scrape-window", "1s"]),
        ("window 0", ours, vec!["--web.scrape-window", "0"]),
    ];
    if let Some(base) = &c.flood_baseline {
        agents.push(("baseline", base.clone(), Vec::new()));
    }
    let mut rows = Vec::new();
    for (name, bin, flags) in &agents {
        let addr = free_addr();
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .args([
                "--web.listen-address",
                &addr.to_string(),
                "--log.level",
                "warn",
            ])
            .args(["--probe.refresh-interval", PROBE_REFRESH])
            .args(flags)
            .stdin(std::process::Stdio::null());
        let log = match *name {
            "window 1s" => "agent-flood-window-1s",
            "window 0" => "agent-flood-window-0",
            _ => "agent-flood-baseline",
        };
        let mut agent = Logged::spawn(log, &mut cmd, &c.out_dir)?;
        if let Err(e) = wait_metrics(&mut agent.proc, addr, |_| true) {
            bail!("{e}; its log:\n{}", agent.tail());
        }
        let pid = agent_pid(&agent)?;
        for &n in &FLOOD_SCRAPERS {
            step(start, &format!("  {name}: {n} scrapers"));
            rows.push(flood(
                name,
                pid,
                addr,
                n,
                Duration::from_secs(c.flood_secs),
            )?);
        }
        agent.stop(libc::SIGTERM);
    }
    Ok(FloodResult {
        pods: c.flood_pods,
        containers: b.container_ids.len(),
        rows,
    })
}

/// `n` threads scraping `addr` back to back for `secs`; the agent `pid`'s CPU meanwhile.
fn flood(
    name: &str,
    pid: u32,
    addr: SocketAddr,
    n: usize,
    secs: Duration,
) -> anyhow::Result<FloodRow> {
    let cpu0 = cpu_time(pid)?;
    let t0 = Instant::now();
    let deadline = t0 + secs;
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(move || {
                    let (mut times, mut failed) = (Vec::new(), 0);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match http_get(
                            addr,
                            "/metrics",
                            &[("Accept", PROM_ACCEPT), ("Accept-Encoding", "gzip")],
                        ) {
                            Ok(r) if r.status == 200 && !r.body.is_empty() => {
                                times.push(t.elapsed());
                            }
                            _ => failed += 1,
                        }
                    }
                    (times, failed)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let wall = t0.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu0);
    let failed = results.iter().map(|r| r.1).sum();
    let times: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    Ok(FloodRow {
        agent: name.to_owned(),
        scrapers: n,
        secs: wall.as_secs_f64(),
        answered: times.len(),
        failed,
        cpu_cores: cpu.as_secs_f64() / wall.as_secs_f64(),
        latency: summarize(times),
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Pod churn

fn churn_bench(c: &Config) -> anyhow::Result<ChurnResult> {
    let v1 = podstat_tests::v1_hierarchies();
    let root = format!("{PREFIX}{}-churn", std::process::id());
    let mut tree = v1_tree();
    tree.mkdir(&format!("{root}/kubepods/besteffort"));
    let view = churn::PrivateView::new(&v1, &root);
    let (agent, addr) = start_agent(
        c,
        "agent-churn",
        &[
            "--probe.refresh-interval",
            "100ms",
            "--path.cgroupfs",
            view.path(),
        ],
        |_| true,
    )?;
    let pid = agent.proc.pid();
    let r = churn::churn(
        &mut tree,
        &format!("{root}/"),
        pid,
        addr,
        c.churn,
        Duration::from_millis(300),
        &["/bin/sleep", "0.01"],
    );
    Ok(ChurnResult {
        rss: r.rss,
        leftover_series: r.leftover_series.len(),
        maps_before: r.maps_before,
        maps_after: r.maps_after,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Per-event probe cost

/// One burstable pod with one container (kubelet cgroupfs layout) on both hierarchies: where
/// the storms run. Removed when dropped.
struct StormPod {
    tree: CgroupTree,
    /// The container's cgroup, relative to each hierarchy.
    rel: String,
    container_id: String,
}

impl StormPod {
    fn new() -> Self {
        let pid = std::process::id();
        let uid = format!("5707a1e5-{:04x}-4abc-8def-000000000001", pid & 0xffff);
        let container_id = format!("{pid:016x}{:048x}", 0x5707_u32);
        let rel = format!("{PREFIX}{pid}/kubepods/burstable/pod{uid}/{container_id}");
        let mut tree = v1_tree();
        tree.mkdir(&rel);
        Self {
            tree,
            rel,
            container_id,
        }
    }
}

/// The `sched_switch` program: podstat's and runqlat's `tp_btf` one, runqlat's raw
/// tracepoint fallback (`handle_sched_switch`, cut to 15 characters by the kernel), or the
/// floor's empty one.
fn is_switch_prog(name: &str) -> bool {
    name == "sched_switch" || name.starts_with("handle_sched_sw") || name == "bench_floor"
}

fn pid_of(p: &Logged) -> anyhow::Result<u32> {
    u32::try_from(p.proc.pid()).with_context(|| format!("{} has no pid", p.name))
}

fn probe_bench(start: Instant, c: &Config, pod: &StormPod) -> anyhow::Result<ProbeResult> {
    let _stats = BpfStats::enable().context("enabling kernel.bpf_stats_enabled")?;
    let (mut agent, addr) =
        start_agent(c, "agent-probe", &["--no-collector.cgroup"], probe_attached)?;
    let attach = switch_attach_line(&scrape(addr)?).unwrap_or("?").to_owned();
    let mut runqlat = start_runqlat(c, "runqlat")?;
    let mut floor = start_floor(c, "floor")?;
    // Let the tracker's refresh find the storm pod's cgroup.
    std::thread::sleep(TRACKER_WAIT);

    step(
        start,
        &format!("  storm in pod container {}", pod.container_id),
    );
    let before = prog_snapshot()?;
    let ops = stress_switch(c, "stress-probe-pod", c.storm_secs, Some(pod))?;
    let after = prog_snapshot()?;
    let runq_count = runq_count(addr, &pod.container_id)?;
    ensure!(
        runq_count > 0.0,
        "the agent has no podstat_runqueue_latency_seconds_count > 0 for the storm's container \
         {} ({runq_count}): its probes did not take the pod path, so the figures would be the \
         non-pod path's; agent log:\n{}",
        pod.container_id,
        agent.tail()
    );
    let owners = [
        ("podstat", owned_progs(pid_of(&agent)?, &after)?),
        ("runqlat", owned_progs(pid_of(&runqlat)?, &after)?),
        ("floor", owned_progs(pid_of(&floor)?, &after)?),
    ];
    let pod_rows = StormRows {
        secs: c.storm_secs,
        rows: prog_deltas(&owners, &before, &after),
        storm_ops: ops.ok(),
    };

    let host_secs = c.storm_secs.div_ceil(2);
    step(
        start,
        &format!("  shorter storm ({host_secs}s) outside pods"),
    );
    let before = prog_snapshot()?;
    let ops = stress_switch(c, "stress-probe-host", host_secs, None)?;
    let after = prog_snapshot()?;
    let host_rows = StormRows {
        secs: host_secs,
        rows: prog_deltas(&owners, &before, &after),
        storm_ops: ops.ok(),
    };
    runqlat.stop(libc::SIGINT);
    floor.stop(libc::SIGTERM);
    agent.stop(libc::SIGTERM);

    for (what, s) in [("in the pod", &pod_rows), ("outside pods", &host_rows)] {
        for owner in ["podstat", "runqlat", "floor"] {
            ensure!(
                s.switch(owner).is_some(),
                "no sched_switch program of {owner} ran during the storm {what} (rows: {})",
                s.rows
                    .iter()
                    .map(|r| format!("{}:{}:{}", r.owner, r.name, r.events))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(ProbeResult {
        attach,
        pod: pod_rows,
        host: host_rows,
        runq_count,
        container_id: pod.container_id.clone(),
    })
}

/// The per-program deltas between two snapshots, for the programs of each owner.
fn prog_deltas(
    owners: &[(&'static str, HashSet<u64>)],
    before: &HashMap<u64, Prog>,
    after: &HashMap<u64, Prog>,
) -> Vec<ProbeRow> {
    let mut rows = Vec::new();
    for (owner, ids) in owners {
        let mut ids: Vec<u64> = ids.iter().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let (Some(a), Some(b)) = (after.get(&id), before.get(&id)) else {
                continue;
            };
            rows.push(ProbeRow {
                owner: (*owner).to_owned(),
                switch: is_switch_prog(&a.name),
                id,
                name: a.name.clone(),
                events: a.run_cnt.saturating_sub(b.run_cnt),
                run_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            });
        }
    }
    rows
}

/// Starts libbpf-tools `runqlat` (on `PATH`; `cargo xtask bench` installs it) and waits (at
/// most 15 s) until it holds its programs.
fn start_runqlat(c: &Config, name: &'static str) -> anyhow::Result<Logged> {
    let runqlat = Logged::spawn(name, &mut Command::new("runqlat"), &c.out_dir)
        .context("starting runqlat (Debian package libbpf-tools)")?;
    Ok(podstat_tests::bpf::wait_for_progs(runqlat, 3)?)
}

/// Starts `podstat-test-floor` (the empty `sched_switch` program alone; next to this binary).
fn start_floor(c: &Config, name: &'static str) -> anyhow::Result<Logged> {
    Ok(podstat_tests::bpf::start_floor(
        &c.out_dir,
        name,
        "sched_switch",
    )?)
}

/// The agent's `podstat_runqueue_latency_seconds_count` for `container_id` (0 if absent).
fn runq_count(addr: SocketAddr, container_id: &str) -> anyhow::Result<f64> {
    Ok(scrape(addr)?
        .lines()
        .filter(|l| l.starts_with("podstat_runqueue_latency_seconds_count{"))
        .filter(|l| label(l, "container_id") == Some(container_id))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum())
}

// ---------------------------------------------------------------------------------------------
// 3. End-to-end cost

/// Runs the context-switch storm for `secs`, in the storm pod's container cgroup (stress-ng
/// joins it before it execs, so its workers are born there) or where the bench runs;
/// Ok(bogo-ops/s, real time) or Err(stress-ng's output).
fn stress_switch(
    c: &Config,
    name: &'static str,
    secs: u64,
    pod: Option<&StormPod>,
) -> anyhow::Result<Result<f64, String>> {
    let mut cmd = Command::new("stress-ng");
    cmd.args([
        "--switch",
        "2",
        "--timeout",
        &format!("{secs}s"),
        "--metrics-brief",
    ]);
    if let Some(pod) = pod {
        pod.tree.place(&pod.rel, &mut cmd);
    }
    let mut p = Logged::spawn(name, &mut cmd, &c.out_dir).context("starting stress-ng")?;
    let limit = Duration::from_secs(secs + 30);
    let Some(status) = p.proc.wait_for(limit) else {
        let s = p.stop(libc::SIGTERM);
        bail!(
            "stress-ng ran past {}s and was stopped ({s:?}):\n{}",
            limit.as_secs(),
            p.tail()
        );
    };
    let out = p
        .text()
        .with_context(|| format!("reading {}", p.log.display()))?;
    ensure!(status.success(), "stress-ng failed with {status}:\n{out}");
    Ok(parse_switch_ops(&out).ok_or(out))
}

/// bogo-ops/s (real time) from the `switch` line of `--metrics-brief`:
/// `stress-ng: metrc: [pid] switch <ops> <real> <usr> <sys> <ops/s real> <ops/s usr+sys>`.
fn parse_switch_ops(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        let k = t.iter().position(|w| *w == "switch")?;
        t.get(k + 1)?.parse::<u64>().ok()?;
        let nums: Option<Vec<f64>> = t
            .get(k + 1..k + 7)?
            .iter()
            .map(|w| w.parse().ok())
            .collect();
        nums?.get(4).copied()
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    NoProbe,
    Floor,
    Podstat,
    Runqlat,
}

impl Arm {
    const ALL: [Self; 4] = [Self::NoProbe, Self::Floor, Self::Podstat, Self::Runqlat];

    fn describe(self) -> &'static str {
        match self {
            Self::NoProbe => "no probe",
            Self::Floor => "empty sched_switch program",
            Self::Podstat => "podstat agent",
            Self::Runqlat => "runqlat alone",
        }
    }
}

fn e2e_bench(start: Instant, c: &Config, pod: &StormPod) -> anyhow::Result<E2eResult> {
    let mut r = E2eResult::default();
    let ops_of =
        |ops: Result<f64, String>| ops.map_err(|o| anyhow::anyhow!("no switch line in:\n{o}"));
    for round in 0..E2E_ROUNDS {
        // Rotate the order so no arm always runs first or last.
        let mut order = Arm::ALL;
        order.rotate_left(round % Arm::ALL.len());
        for arm in order {
            step(
                start,
                &format!("  round {}/{E2E_ROUNDS}: {}", round + 1, arm.describe()),
            );
            match arm {
                Arm::NoProbe => {
                    let ops = stress_switch(c, "stress-e2e", E2E_SECS, Some(pod))?;
                    r.off.push(ops_of(ops)?);
                }
                Arm::Floor => {
                    let mut floor = start_floor(c, "floor-e2e")?;
                    let ops = stress_switch(c, "stress-e2e", E2E_SECS, Some(pod))?;
                    floor.stop(libc::SIGTERM);
                    r.floor.push(ops_of(ops)?);
                }
                Arm::Podstat => {
                    let (mut agent, addr) =
                        start_agent(c, "agent-e2e", &["--no-collector.cgroup"], probe_attached)?;
                    std::thread::sleep(TRACKER_WAIT);
                    let pid = agent_pid(&agent)?;
                    let cpu_before = cpu_time(pid)?;
                    let ops = stress_switch(c, "stress-e2e", E2E_SECS, Some(pod))?;
                    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
                    r.agent_cpu_ms.push(cpu.as_secs_f64() * 1000.0);
                    let count = runq_count(addr, &pod.container_id)?;
                    agent.stop(libc::SIGTERM);
                    ensure!(
                        count > 0.0,
                        "round {}: the agent measured no run-queue waits for the storm's \
                         container {} (it ran the non-pod path)",
                        round + 1,
                        pod.container_id
                    );
                    r.podstat.push(ops_of(ops)?);
                }
                Arm::Runqlat => {
                    let mut runqlat = start_runqlat(c, "runqlat-e2e")?;
                    let ops = stress_switch(c, "stress-e2e", E2E_SECS, Some(pod))?;
                    runqlat.stop(libc::SIGINT);
                    r.runqlat.push(ops_of(ops)?);
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stress_ng_metrics() {
        let out = "stress-ng: metrc: [15449] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s\n\
stress-ng: metrc: [15449]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)\n\
stress-ng: metrc: [15449] switch           637576      2.00      0.10      1.67    318732.22      361308.60\n\
stress-ng: metrc: [15449] switch              6401.73 nanosecs per context switch (pipe method)\n";
        assert_eq!(parse_switch_ops(out), Some(318_732.22));
        assert_eq!(parse_switch_ops("nothing"), None);
    }

    #[test]
    fn reads_own_cpu_time_and_memory() -> anyhow::Result<()> {
        let me = std::process::id();
        let before = cpu_time(me)?;
        // Spin until /proc says 100 ms more were used; a reader that did not see this process's
        // time grow would spin until the 20 s bound and fail.
        let start = Instant::now();
        let mut x = 0u64;
        while cpu_time(me)?.saturating_sub(before) < Duration::from_millis(100) {
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "cpu time did not grow"
            );
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        // CPU time cannot exceed wall time for this single spinning thread (plus one tick).
        let used = cpu_time(me)?.saturating_sub(before);
        ensure!(
            used <= start.elapsed() + Duration::from_millis(20),
            "{used:?}"
        );
        let (rss, hwm) = vm_rss_hwm(me)?;
        ensure!(rss > 0 && hwm >= rss, "{rss} {hwm}");
        Ok(())
    }

    #[test]
    fn finds_labels() {
        let l = r#"podstat_cpu_periods_total{pod_uid="a",container_id="abc",qos="x"} 5"#;
        assert_eq!(label(l, "container_id"), Some("abc"));
        assert_eq!(label(l, "nope"), None);
    }
}
