//! `cargo xtask bench`: what podstat costs, each figure against a baseline measured in the
//! same run.
//!
//! 1. Scrape cost: the agent's `/metrics` on `pods` × 3 real (v1) container cgroups, against a
//!    plain loop that reads the same `cpu.stat` files.
//! 2. Per-event probe cost: `run_time_ns / run_cnt` of each of podstat's programs against
//!    libbpf-tools `runqlat`'s, during the same context-switch storm, run inside a kubelet-style
//!    container cgroup (podstat's full path; checked on the agent's run-queue series), then a
//!    shorter one outside pods (its early exit). Also all programs per context switch, and the
//!    floor: an empty `sched_switch` program (`podstat-test-floor`) attached alongside.
//! 3. End-to-end cost: stress-ng `--switch` throughput in that container cgroup with no probe,
//!    with the empty program alone (the floor: what attaching anything to `sched_switch`
//!    costs), with the podstat agent, and with runqlat alone, interleaved.
//!
//! Everything it creates (cgroups, processes, the `bpf_stats_enabled` sysctl) is undone by
//! guards, also on error and on panic.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{setup, step};

pub struct Config {
    pub pods: usize,
    pub scrapes: usize,
    pub storm_secs: u64,
    /// Skip part 1 (scrape cost): for probe work, where only parts 2 and 3 change.
    pub skip_scrape: bool,
    /// Skip part 3 (end-to-end cost): for quick A/B runs of the per-event cost.
    pub skip_e2e: bool,
}

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
/// Upper bound on directories visited when reaping a leftover tree.
const MAX_REAP_DIRS: usize = 200_000;

const TARGET_RATIO: f64 = 2.0;
const TARGET_SCRAPE_MS: f64 = 20.0;
const TARGET_RSS_KIB: u64 = 32 * 1024;
const TARGET_E2E: f64 = 0.97;

pub fn all(start: Instant, c: &Config) -> anyhow::Result<()> {
    ensure!(
        crate::is_root(),
        "the benchmarks need root (cgroups, eBPF, bpf_stats)"
    );
    ensure!(
        c.pods > 0 && c.scrapes > 0 && c.storm_secs > 0,
        "--pods, --scrapes and --storm-secs must be at least 1"
    );
    let (bin, bin_source) = podstat_bin();
    ensure!(
        bin.is_file(),
        "podstat binary {} not found ({bin_source})",
        bin.display()
    );
    let out_dir = crate::root().join("target/bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let env = Env {
        bin,
        out_dir,
        storm_secs: c.storm_secs,
    };

    step(start, "reaping leftover podstat-test-bench-* cgroups");
    reap_leftovers()?;

    let scrape = if c.skip_scrape {
        None
    } else {
        step(
            start,
            &format!(
                "scrape cost: {} pods x {CONTAINERS_PER_POD} containers, {} scrapes",
                c.pods, c.scrapes
            ),
        );
        Some(scrape_bench(&env, c.pods, c.scrapes)?)
    };

    step(
        start,
        &format!(
            "per-event probe cost: podstat and runqlat during a {}s context-switch storm in a pod, \
             then a {}s one outside pods",
            c.storm_secs,
            c.storm_secs.div_ceil(2)
        ),
    );
    let pod = create_storm_pod()?;
    let probe = probe_bench(start, &env, &pod)?;

    let e2e = if c.skip_e2e {
        None
    } else {
        step(
            start,
            &format!(
                "end-to-end cost: stress-ng --switch in the pod, {E2E_ROUNDS} rounds x {E2E_SECS}s: \
                 no probe, an empty sched_switch program, podstat, runqlat"
            ),
        );
        Some(e2e_bench(start, &env, &pod)?)
    };
    drop(pod);

    let report = render(c, &bin_source, &env, scrape.as_ref(), &probe, e2e.as_ref());
    println!("{report}");
    let path = env.out_dir.join("report.md");
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("report written to {}", path.display());

    let Some(scrape) = scrape else {
        return Ok(());
    };
    ensure!(
        scrape.matched_containers >= scrape.created_containers,
        "the agent exported podstat_cpu_periods_total for {} of the {} bench containers \
         (is the cgroup collector in {} a stub? set PODSTAT_BIN to a binary with the real one)",
        scrape.matched_containers,
        scrape.created_containers,
        env.bin.display()
    );
    Ok(())
}

pub(crate) struct Env {
    pub(crate) bin: PathBuf,
    pub(crate) out_dir: PathBuf,
    pub(crate) storm_secs: u64,
}

/// The binary to bench and where it comes from: `PODSTAT_BIN`, else the release build in
/// `CARGO_TARGET_DIR` (or `<root>/target`).
pub(crate) fn podstat_bin() -> (PathBuf, String) {
    if let Some(p) = std::env::var_os("PODSTAT_BIN") {
        return (PathBuf::from(p), "PODSTAT_BIN".to_owned());
    }
    (
        release_dir().join("podstat"),
        "built from this worktree".to_owned(),
    )
}

/// `release/` in `CARGO_TARGET_DIR` (or `<root>/target`).
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || crate::root().join("target"),
            |t| crate::root().join(PathBuf::from(t)),
        )
        .join("release")
}

// ---------------------------------------------------------------------------------------------
// Cgroups

/// The cgroup directories the bench created, removed deepest first when dropped.
#[derive(Default)]
struct CgroupTree {
    created: Vec<PathBuf>,
}

impl CgroupTree {
    /// Creates `rel` (below each hierarchy); its parent must exist.
    fn mkdir(&mut self, rel: &Path) -> anyhow::Result<()> {
        for h in HIERARCHIES {
            let p = Path::new(h).join(rel);
            fs::create_dir(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
            self.created.push(p);
        }
        Ok(())
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Created parent first, so reversed is children first.
        for p in self.created.drain(..).rev() {
            if let Err(e) = fs::remove_dir(&p) {
                eprintln!("warning: removing cgroup {}: {e}", p.display());
            }
        }
    }
}

/// Removes `podstat-test-bench-*` trees left by runs that died without cleaning up.
fn reap_leftovers() -> anyhow::Result<()> {
    for h in HIERARCHIES {
        let entries = fs::read_dir(h).with_context(|| format!("listing {h}"))?;
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // A bench that is still running owns its tree.
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() == "xtask" {
                eprintln!(
                    "note: leaving {} alone: bench pid {pid} is running",
                    e.path().display()
                );
                continue;
            }
            eprintln!("removing leftover {}", e.path().display());
            remove_tree(&e.path())?;
        }
    }
    Ok(())
}

/// rmdir every directory below `root` and `root` itself, deepest first (cgroup files go with
/// their directory).
fn remove_tree(root: &Path) -> anyhow::Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        ensure!(
            dirs.len() <= MAX_REAP_DIRS,
            "more than {MAX_REAP_DIRS} directories below {}",
            root.display()
        );
        let d = dirs[i].clone();
        for e in fs::read_dir(&d)
            .with_context(|| format!("listing {}", d.display()))?
            .filter_map(Result::ok)
        {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        i += 1;
    }
    // Breadth-first order lists parents before children.
    for d in dirs.iter().rev() {
        fs::remove_dir(d).with_context(|| format!("removing cgroup {}", d.display()))?;
    }
    Ok(())
}

/// Kubelet-style cgroups (cgroupfs driver): guaranteed pods under `kubepods/`, the others
/// under `kubepods/{burstable,besteffort}/`.
struct BenchPods {
    tree: CgroupTree,
    container_ids: Vec<String>,
    /// `cpu.stat` of every pod and container: what the floor loop reads.
    stat_files: Vec<PathBuf>,
    with_quota: usize,
}

fn create_pods(pods: usize) -> anyhow::Result<BenchPods> {
    const POD_QUOTA_US: u64 = 150_000;
    const CONTAINER_QUOTA_US: u64 = 50_000;
    let pid = std::process::id();
    let mut b = BenchPods {
        tree: CgroupTree::default(),
        container_ids: Vec::with_capacity(pods * CONTAINERS_PER_POD),
        stat_files: Vec::with_capacity(pods * (CONTAINERS_PER_POD + 1)),
        with_quota: 0,
    };
    let base = PathBuf::from(format!("{PREFIX}{pid}"));
    let kubepods = base.join("kubepods");
    b.tree.mkdir(&base)?;
    b.tree.mkdir(&kubepods)?;
    b.tree.mkdir(&kubepods.join("burstable"))?;
    b.tree.mkdir(&kubepods.join("besteffort"))?;
    let cpu = Path::new(HIERARCHIES[0]);
    for i in 0..pods {
        let uid = format!("0b5a1c2e-{:04x}-4abc-8def-{i:012x}", pid & 0xffff);
        let (parent, quota) = match i % 3 {
            // guaranteed: quota on the pod and on every container
            0 => (kubepods.clone(), true),
            1 => (kubepods.join("burstable"), i % 2 == 1),
            _ => (kubepods.join("besteffort"), false),
        };
        let pod = parent.join(format!("pod{uid}"));
        b.tree.mkdir(&pod)?;
        if quota {
            // v1 refuses a child quota above its parent's: set the pod's first.
            write_quota(&cpu.join(&pod), POD_QUOTA_US)?;
        }
        b.stat_files.push(cpu.join(&pod).join("cpu.stat"));
        for j in 0..CONTAINERS_PER_POD {
            let id = format!("{pid:016x}{:048x}", i * CONTAINERS_PER_POD + j);
            let dir = pod.join(&id);
            b.tree.mkdir(&dir)?;
            if quota {
                write_quota(&cpu.join(&dir), CONTAINER_QUOTA_US)?;
                b.with_quota += 1;
            }
            b.stat_files.push(cpu.join(&dir).join("cpu.stat"));
            b.container_ids.push(id);
        }
    }
    Ok(b)
}

/// One burstable pod with one container (kubelet cgroupfs layout) on both hierarchies: where
/// the storms run. Removed when dropped.
struct StormPod {
    _tree: CgroupTree,
    /// The container's cgroup, relative to each hierarchy.
    rel: PathBuf,
    container_id: String,
}

fn create_storm_pod() -> anyhow::Result<StormPod> {
    let pid = std::process::id();
    let mut tree = CgroupTree::default();
    let base = PathBuf::from(format!("{PREFIX}{pid}"));
    let burstable = base.join("kubepods/burstable");
    tree.mkdir(&base)?;
    tree.mkdir(&base.join("kubepods"))?;
    tree.mkdir(&burstable)?;
    let uid = format!("5707a1e5-{:04x}-4abc-8def-000000000001", pid & 0xffff);
    let pod = burstable.join(format!("pod{uid}"));
    tree.mkdir(&pod)?;
    let container_id = format!("{pid:016x}{:048x}", 0x5707_u32);
    let rel = pod.join(&container_id);
    tree.mkdir(&rel)?;
    Ok(StormPod {
        _tree: tree,
        rel,
        container_id,
    })
}

fn write_quota(dir: &Path, us: u64) -> anyhow::Result<()> {
    let f = dir.join("cpu.cfs_quota_us");
    fs::write(&f, us.to_string()).with_context(|| format!("writing {us} to {}", f.display()))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A process the bench started; dropped, it is stopped (SIGTERM, then SIGKILL) and reaped.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    done: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr to `<out_dir>/<name>.log`.
    pub(crate) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        out_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = out_dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let f2 = f.try_clone().context("duplicating the log file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        Ok(Self {
            name,
            child,
            log,
            done: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.done.is_none() {
            self.done = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.done)
    }

    /// Waits up to `limit` for the process to exit by itself.
    fn wait_for(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (by pid) and waits up to 5 s, then SIGKILL; returns the exit status.
    pub(crate) fn stop(&mut self, sig: Signal) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.exited()? {
            return Ok(s);
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).context("pid out of range")?);
        kill(pid, sig).with_context(|| format!("sending {sig} to {} ({pid})", self.name))?;
        if let Some(s) = self.wait_for(Duration::from_secs(5))? {
            return Ok(s);
        }
        eprintln!("warning: {} ({pid}) ignored {sig}; killing it", self.name);
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        let s = self
            .child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))?;
        self.done = Some(s);
        Ok(s)
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn log_text(&self) -> anyhow::Result<String> {
        fs::read_to_string(&self.log).with_context(|| format!("reading {}", self.log.display()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Signal::SIGTERM) {
            eprintln!("warning: stopping {}: {e:#}", self.name);
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    l.local_addr().context("local address of the probe socket")
}

/// Starts `podstat agent` on a free loopback port with `extra` flags (and the bench's
/// `--probe.refresh-interval`).
pub(crate) fn start_agent(
    env: &Env,
    name: &'static str,
    extra: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = free_addr()?;
    let mut cmd = Command::new(&env.bin);
    cmd.args([
        "agent",
        "--web.listen-address",
        &addr.to_string(),
        "--probe.refresh-interval",
        PROBE_REFRESH,
    ])
    .args(extra)
    .env("NO_COLOR", "1");
    let agent = Proc::spawn(name, &mut cmd, &env.out_dir)?;
    Ok((agent, addr))
}

/// Polls /metrics until it answers 200 with a body `ready` accepts (at most 20 s).
pub(crate) fn wait_ready(
    agent: &mut Proc,
    addr: SocketAddr,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Some(s) = agent.exited()? {
            bail!(
                "the agent exited with {s} before it was ready; its log:\n{}",
                agent.log_tail()
            );
        }
        match http_get(addr, "/metrics") {
            Ok((200, body)) => {
                if ready(&String::from_utf8_lossy(&body)) {
                    return Ok(());
                }
                last = "200 but not ready yet".into();
            }
            Ok((status, _)) => last = format!("HTTP {status}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the agent at {addr} was not ready after 20 s ({last}); its log:\n{}",
        agent.log_tail()
    )
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

// ---------------------------------------------------------------------------------------------
// HTTP

/// GET over a fresh connection (`Connection: close`), read to the end: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .context("sending the request")?;
    let mut raw = Vec::with_capacity(256 * 1024);
    s.read_to_end(&mut raw).context("reading the response")?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response without an end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| {
            format!(
                "bad status line: {:?}",
                head.lines().next().unwrap_or_default()
            )
        })?;
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line without CRLF")?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_str:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(b.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Clone, Copy)]
struct Summary {
    median_ms: f64,
    p99_ms: f64,
}

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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

#[expect(clippy::cast_precision_loss, reason = "counters below 2^53 are exact")]
fn per(num: u64, den: u64) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "**misses**" }
}

// ---------------------------------------------------------------------------------------------
// 1. Scrape cost

struct ScrapeResult {
    pods: usize,
    created_containers: usize,
    with_quota: usize,
    stat_files: usize,
    agent: Summary,
    floor: Summary,
    /// A plain loop over every file the collector reads on each scrape here (v1: cpu.stat and
    /// cpuacct.usage per cgroup): the I/O floor of this host's layout.
    floor_same: Summary,
    body_bytes: usize,
    /// Lines mentioning `podstat_cpu_periods_total` (what `grep -c` counts).
    periods_lines: usize,
    /// Bench containers with a `podstat_cpu_periods_total` series.
    matched_containers: usize,
    rss_kib: u64,
    hwm_kib: u64,
    /// The agent's own `podstat_collector_duration_seconds{collector="cgroup"}`, last scrape.
    collect_ms: Option<f64>,
}

fn scrape_bench(env: &Env, pods: usize, scrapes: usize) -> anyhow::Result<ScrapeResult> {
    let b = create_pods(pods)?;
    let (mut agent, addr) = start_agent(env, "agent-scrape", &["--no-collector.sched"])?;
    wait_ready(&mut agent, addr, |_| true)?;

    let mut body = Vec::new();
    for _ in 0..WARMUP {
        body = scrape(addr)?;
    }
    let mut times = Vec::with_capacity(scrapes);
    for _ in 0..scrapes {
        let t = Instant::now();
        body = scrape(addr)?;
        times.push(t.elapsed());
    }
    let (rss_kib, hwm_kib) = vm_rss_hwm(agent.pid())?;
    agent.stop(Signal::SIGTERM)?;

    let text = String::from_utf8_lossy(&body);
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
    let mut floor = Vec::with_capacity(scrapes);
    let mut bytes = 0usize;
    for i in 0..WARMUP + scrapes {
        let t = Instant::now();
        for f in &b.stat_files {
            bytes += fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .len();
        }
        if i >= WARMUP {
            floor.push(t.elapsed());
        }
    }
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
    let mut floor_same = Vec::with_capacity(scrapes);
    for i in 0..WARMUP + scrapes {
        let t = Instant::now();
        for f in &same_files {
            bytes += fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .len();
        }
        if i >= WARMUP {
            floor_same.push(t.elapsed());
        }
    }
    std::hint::black_box(bytes);

    Ok(ScrapeResult {
        floor_same: summarize(floor_same),
        pods,
        created_containers: b.container_ids.len(),
        with_quota: b.with_quota,
        stat_files: b.stat_files.len(),
        agent: summarize(times),
        floor: summarize(floor),
        body_bytes: body.len(),
        periods_lines,
        collect_ms,
        matched_containers: matched.len(),
        rss_kib,
        hwm_kib,
    })
    // `b` drops here: the cgroups go, children first.
}

fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let (status, body) = http_get(addr, "/metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}");
    Ok(body)
}

/// The value of label `name` in an exposition line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn vm_rss_hwm(pid: u32) -> anyhow::Result<(u64, u64)> {
    let p = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {p}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system, all threads) the process `pid` has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let p = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    cpu_time_of(&stat).with_context(|| format!("no utime/stime in {p}"))
}

/// utime + stime from a `/proc/<pid>/stat` line (fields 14 and 15, after the `(comm)`, which
/// may hold spaces), in clock ticks of 1/100 s (USER_HZ on every Linux architecture we run).
fn cpu_time_of(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

// ---------------------------------------------------------------------------------------------
// 2. Per-event probe cost

/// `kernel.bpf_stats_enabled` on while it lives; the old value is restored when dropped.
pub(crate) struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub(crate) fn enable() -> anyhow::Result<Self> {
        let old = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.old) {
            eprintln!("warning: restoring {BPF_STATS} to {}: {e}", self.old);
        }
    }
}

#[derive(Clone)]
pub(crate) struct Prog {
    pub(crate) name: String,
    pub(crate) run_time_ns: u64,
    pub(crate) run_cnt: u64,
    pids: Vec<u32>,
}

/// Every loaded program, by id, from `bpftool -j prog show`.
pub(crate) fn prog_snapshot() -> anyhow::Result<HashMap<u64, Prog>> {
    let bpftool = setup::find("bpftool")?;
    let out = Command::new(&bpftool)
        .args(["-j", "prog", "show"])
        .output()
        .with_context(|| format!("running {} -j prog show", bpftool.display()))?;
    ensure!(
        out.status.success(),
        "bpftool prog show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    let arr = v.as_array().context("bpftool's JSON is not an array")?;
    let mut m = HashMap::with_capacity(arr.len());
    for p in arr {
        let Some(id) = p["id"].as_u64() else { continue };
        let pids = p["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["pid"].as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect()
            })
            .unwrap_or_default();
        m.insert(
            id,
            Prog {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                pids,
            },
        );
    }
    Ok(m)
}

/// Program ids `pid` holds: from bpftool's `pids` field when this bpftool has it, and from
/// the `prog_id:` lines of the process's fdinfo (program and link fds) in any case.
pub(crate) fn owned_progs(pid: u32, snap: &HashMap<u64, Prog>) -> anyhow::Result<HashSet<u64>> {
    let mut ids: HashSet<u64> = snap
        .iter()
        .filter(|(_, p)| p.pids.contains(&pid))
        .map(|(id, _)| *id)
        .collect();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in fs::read_dir(&dir)
        .with_context(|| format!("listing {dir}"))?
        .filter_map(Result::ok)
    {
        let Ok(info) = fs::read_to_string(e.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    Ok(ids)
}

struct ProbeRow {
    owner: &'static str,
    id: u64,
    name: String,
    events: u64,
    run_ns: u64,
}

/// One storm with podstat and runqlat attached: every program of both, deltas over the storm.
struct StormRows {
    secs: u64,
    rows: Vec<ProbeRow>,
    storm_ops: Option<f64>,
}

impl StormRows {
    /// Programs of `owner` that ran during the storm.
    fn ran<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a ProbeRow> + 'a {
        self.rows
            .iter()
            .filter(move |x| x.owner == owner && x.events > 0)
    }

    /// `owner`'s `sched_switch` program: (run time, events), the events being the context
    /// switches of the storm.
    fn switch(&self, owner: &str) -> Option<(u64, u64)> {
        self.ran(owner)
            .find(|x| is_switch_prog(&x.name))
            .map(|x| (x.run_ns, x.events))
    }

    /// Run time of all `owner`'s programs per context switch (its `sched_switch` run count).
    fn ns_per_switch(&self, owner: &str) -> f64 {
        let total: u64 = self.ran(owner).map(|x| x.run_ns).sum();
        self.switch(owner)
            .map_or(f64::NAN, |(_, switches)| per(total, switches))
    }
}

/// The `sched_switch` program: podstat's and runqlat's `tp_btf` one, runqlat's raw
/// tracepoint fallback (`handle_sched_switch`, cut to 15 characters by the kernel), or the
/// floor's empty one.
fn is_switch_prog(name: &str) -> bool {
    name == "sched_switch" || name.starts_with("handle_sched_sw") || name == "bench_floor"
}

struct ProbeResult {
    /// The agent's `podstat_probe_attached{probe="sched_switch"…}` line: how it measured.
    attach: String,
    pod: StormRows,
    host: StormRows,
    /// `podstat_runqueue_latency_seconds_count` of the storm pod's container after the storm.
    runq_count: f64,
    container_id: String,
}

fn probe_bench(start: Instant, env: &Env, pod: &StormPod) -> anyhow::Result<ProbeResult> {
    let _stats = BpfStats::enable()?;
    let (mut agent, addr) = start_agent(env, "agent-probe", &["--no-collector.cgroup"])?;
    wait_ready(&mut agent, addr, probe_attached)?;
    let attach = switch_attach_line(&String::from_utf8_lossy(&scrape(addr)?))
        .unwrap_or("?")
        .to_owned();
    let mut runqlat = start_runqlat(env, "runqlat")?;
    let mut floor = start_floor(env, "floor")?;
    // Let the tracker's refresh find the storm pod's cgroup.
    std::thread::sleep(TRACKER_WAIT);

    step(
        start,
        &format!("  storm in pod container {}", pod.container_id),
    );
    let before = prog_snapshot()?;
    let ops = stress_switch(env, "stress-probe-pod", env.storm_secs, Some(&pod.rel))?;
    let after = prog_snapshot()?;
    let runq_count = runq_count(addr, &pod.container_id)?;
    ensure!(
        runq_count > 0.0,
        "the agent has no podstat_runqueue_latency_seconds_count > 0 for the storm's container \
         {} ({runq_count}): its probes did not take the pod path, so the figures would be the \
         non-pod path's; agent log:\n{}",
        pod.container_id,
        agent.log_tail()
    );
    let owners = [
        ("podstat", owned_progs(agent.pid(), &after)?),
        ("runqlat", owned_progs(runqlat.pid(), &after)?),
        ("floor", owned_progs(floor.pid(), &after)?),
    ];
    let pod_rows = StormRows {
        secs: env.storm_secs,
        rows: prog_deltas(&owners, &before, &after),
        storm_ops: ops.ok(),
    };

    let host_secs = env.storm_secs.div_ceil(2);
    step(
        start,
        &format!("  shorter storm ({host_secs}s) outside pods"),
    );
    let before = prog_snapshot()?;
    let ops = stress_switch(env, "stress-probe-host", host_secs, None)?;
    let after = prog_snapshot()?;
    let host_rows = StormRows {
        secs: host_secs,
        rows: prog_deltas(&owners, &before, &after),
        storm_ops: ops.ok(),
    };
    runqlat.stop(Signal::SIGINT)?;
    floor.stop(Signal::SIGTERM)?;
    agent.stop(Signal::SIGTERM)?;

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
                owner,
                id,
                name: a.name.clone(),
                events: a.run_cnt.saturating_sub(b.run_cnt),
                run_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            });
        }
    }
    rows
}

/// Starts libbpf-tools `runqlat` and waits (at most 15 s) until it holds its programs.
fn start_runqlat(env: &Env, name: &'static str) -> anyhow::Result<Proc> {
    let runqlat_bin = setup::find("runqlat")?;
    let runqlat = Proc::spawn(name, &mut Command::new(&runqlat_bin), &env.out_dir)?;
    wait_for_progs(runqlat, 3)
}

/// Starts `podstat-test-floor` (the empty `sched_switch` program alone), bounded to outlive no
/// bench, and waits until it holds its program.
fn start_floor(env: &Env, name: &'static str) -> anyhow::Result<Proc> {
    let bin = release_dir().join("podstat-test-floor");
    ensure!(
        bin.is_file(),
        "{} not found (`cargo xtask bench` builds it)",
        bin.display()
    );
    let floor = Proc::spawn(name, Command::new(&bin).arg("900"), &env.out_dir)?;
    wait_for_progs(floor, 1)
}

/// Waits (at most 15 s) until `p` holds at least `n` BPF programs.
fn wait_for_progs(mut p: Proc, n: usize) -> anyhow::Result<Proc> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = p.exited()? {
            bail!("{} exited with {s}:\n{}", p.name, p.log_tail());
        }
        if owned_progs(p.pid(), &HashMap::new())?.len() >= n {
            return Ok(p);
        }
        ensure!(
            Instant::now() < deadline,
            "{} loaded fewer than {n} programs in 15 s:\n{}",
            p.name,
            p.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's `podstat_runqueue_latency_seconds_count` for `container_id` (0 if absent).
fn runq_count(addr: SocketAddr, container_id: &str) -> anyhow::Result<f64> {
    let body = scrape(addr)?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("podstat_runqueue_latency_seconds_count{"))
        .filter(|l| label(l, "container_id") == Some(container_id))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum())
}

// ---------------------------------------------------------------------------------------------
// 3. End-to-end cost

/// Runs the context-switch storm for `secs`, in the container cgroup `cgroup` (relative to
/// each hierarchy; stress-ng is moved there before it starts, so its workers inherit it) or
/// where the bench runs; Ok(bogo-ops/s, real time) or Err(stress-ng's output).
fn stress_switch(
    env: &Env,
    name: &'static str,
    secs: u64,
    cgroup: Option<&Path>,
) -> anyhow::Result<Result<f64, String>> {
    let stress = format!("stress-ng --switch 2 --timeout {secs}s --metrics-brief");
    let mut cmd = match cgroup {
        None => {
            let mut c = Command::new("stress-ng");
            c.args(stress.split_whitespace().skip(1));
            c
        }
        Some(rel) => {
            let mut script = String::new();
            for h in HIERARCHIES {
                let procs = Path::new(h).join(rel).join("cgroup.procs");
                let _ = write!(script, "echo $$ > '{}' && ", procs.display());
            }
            let _ = write!(script, "exec {stress}");
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        }
    };
    let mut p = Proc::spawn(name, &mut cmd, &env.out_dir)?;
    let limit = Duration::from_secs(secs + 30);
    let Some(status) = p.wait_for(limit)? else {
        let s = p.stop(Signal::SIGTERM)?;
        bail!(
            "stress-ng ran past {}s and was stopped ({s}):\n{}",
            limit.as_secs(),
            p.log_tail()
        );
    };
    let out = p.log_text()?;
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

struct E2eResult {
    off: Vec<f64>,
    floor: Vec<f64>,
    podstat: Vec<f64>,
    /// The agent's own CPU time during each podstat storm.
    agent_cpu: Vec<Duration>,
    runqlat: Vec<f64>,
}

fn e2e_bench(start: Instant, env: &Env, pod: &StormPod) -> anyhow::Result<E2eResult> {
    let mut r = E2eResult {
        off: Vec::new(),
        floor: Vec::new(),
        podstat: Vec::new(),
        agent_cpu: Vec::new(),
        runqlat: Vec::new(),
    };
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
                    let ops = stress_switch(env, "stress-e2e", E2E_SECS, Some(&pod.rel))?;
                    r.off.push(ops_of(ops)?);
                }
                Arm::Floor => {
                    let mut floor = start_floor(env, "floor-e2e")?;
                    let ops = stress_switch(env, "stress-e2e", E2E_SECS, Some(&pod.rel))?;
                    floor.stop(Signal::SIGTERM)?;
                    r.floor.push(ops_of(ops)?);
                }
                Arm::Podstat => {
                    let (mut agent, addr) =
                        start_agent(env, "agent-e2e", &["--no-collector.cgroup"])?;
                    wait_ready(&mut agent, addr, probe_attached)?;
                    std::thread::sleep(TRACKER_WAIT);
                    let cpu_before = cpu_time(agent.pid())?;
                    let ops = stress_switch(env, "stress-e2e", E2E_SECS, Some(&pod.rel))?;
                    r.agent_cpu
                        .push(cpu_time(agent.pid())?.saturating_sub(cpu_before));
                    let count = runq_count(addr, &pod.container_id)?;
                    agent.stop(Signal::SIGTERM)?;
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
                    let mut runqlat = start_runqlat(env, "runqlat-e2e")?;
                    let ops = stress_switch(env, "stress-e2e", E2E_SECS, Some(&pod.rel))?;
                    runqlat.stop(Signal::SIGINT)?;
                    r.runqlat.push(ops_of(ops)?);
                }
            }
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Report

fn render(
    c: &Config,
    bin_source: &str,
    env: &Env,
    scrape: Option<&ScrapeResult>,
    probe: &ProbeResult,
    e2e: Option<&E2eResult>,
) -> String {
    let mut r = String::new();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let _ = writeln!(r, "# podstat benchmarks\n");
    let _ = writeln!(
        r,
        "Kernel {}, {cpus} CPUs. Binary `{}` ({bin_source}). `--pods {} --scrapes {} --storm-secs {}`. \
         Every figure is from this run; ratios are against a baseline measured in the same run.\n",
        kernel.trim(),
        env.bin.display(),
        c.pods,
        c.scrapes,
        c.storm_secs
    );

    match scrape {
        Some(scrape) => render_scrape(&mut r, c, scrape),
        None => {
            let _ = writeln!(r, "## 1. Scrape cost\n\nSkipped (`--skip-scrape`).\n");
        }
    }
    render_probe(&mut r, probe);
    if let Some(e2e) = e2e {
        render_e2e(&mut r, e2e, cpus);
    }
    r
}

fn render_scrape(r: &mut String, c: &Config, s: &ScrapeResult) {
    let _ = writeln!(r, "## 1. Scrape cost\n");
    let _ = writeln!(
        r,
        "{} pods x {CONTAINERS_PER_POD} containers ({} container cgroups, {} with a CFS quota) as v1 \
         cgroups; agent with `--no-collector.sched`; {WARMUP} warm-up scrapes, then {} sequential \
         scrapes (HTTP/1.1, `Connection: close`, read to end). Floor: a plain loop reading the {} \
         pod and container `cpu.stat` files, {} iterations.\n",
        s.pods, s.created_containers, s.with_quota, c.scrapes, s.stat_files, c.scrapes
    );
    let ratio_med = s.agent.median_ms / s.floor.median_ms;
    let ratio_p99 = s.agent.p99_ms / s.floor.p99_ms;
    let _ = writeln!(r, "| | median | p99 | target |");
    let _ = writeln!(r, "|---|---:|---:|---|");
    let _ = writeln!(
        r,
        "| agent scrape | {:.3} ms | {:.3} ms | ≤ {TARGET_SCRAPE_MS} ms: {} |",
        s.agent.median_ms,
        s.agent.p99_ms,
        verdict(s.agent.p99_ms <= TARGET_SCRAPE_MS)
    );
    let _ = writeln!(
        r,
        "| floor (read {} cpu.stat) | {:.3} ms | {:.3} ms | |",
        s.stat_files, s.floor.median_ms, s.floor.p99_ms
    );
    let _ = writeln!(
        r,
        "| ratio agent/floor | {ratio_med:.2}x | {ratio_p99:.2}x | ≤ {TARGET_RATIO}x: {} |",
        verdict(ratio_med <= TARGET_RATIO && ratio_p99 <= TARGET_RATIO)
    );
    let _ = writeln!(
        r,
        "| floor of this layout (read the {} cpu.stat and {} cpuacct.usage the collector reads) | {:.3} ms | {:.3} ms | |",
        s.stat_files, s.stat_files, s.floor_same.median_ms, s.floor_same.p99_ms
    );
    let _ = writeln!(
        r,
        "| ratio agent/floor of this layout | {:.2}x | {:.2}x | |\n",
        s.agent.median_ms / s.floor_same.median_ms,
        s.agent.p99_ms / s.floor_same.p99_ms
    );
    #[expect(clippy::cast_precision_loss, reason = "KiB figures are small")]
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(
        r,
        "- body: {} bytes; `grep -c podstat_cpu_periods_total`: {}; bench containers with a \
         `podstat_cpu_periods_total` series: {} of {} ({})",
        s.body_bytes,
        s.periods_lines,
        s.matched_containers,
        s.created_containers,
        if s.matched_containers >= s.created_containers {
            "all found"
        } else {
            "**missing some: FAIL**"
        }
    );
    if let Some(ms) = s.collect_ms {
        let _ = writeln!(
            r,
            "- the agent's own `podstat_collector_duration_seconds{{collector=\"cgroup\"}}` in \
             the last scrape: {ms:.3} ms (the rest of the scrape time is encoding and transfer)"
        );
    }
    let _ = writeln!(
        r,
        "- agent memory after the run: VmRSS {:.1} MiB (target RSS ≤ 32 MiB: {}); peak VmHWM {:.1} MiB, reached at start-up while the kernel BTF is parsed to load the probes\n",
        mib(s.rss_kib),
        verdict(s.rss_kib <= TARGET_RSS_KIB),
        mib(s.hwm_kib)
    );
}

fn render_probe(r: &mut String, p: &ProbeResult) {
    let _ = writeln!(r, "## 2. Per-event probe cost\n");
    let _ = writeln!(
        r,
        "`kernel.bpf_stats_enabled=1`; podstat agent (`--no-collector.cgroup --probe.refresh-interval \
         {PROBE_REFRESH}`, started {:.1} s before the storm so its tracker knows the pod) and \
         libbpf-tools `runqlat` attached side by side. Deltas of `run_time_ns` and `run_cnt` \
         (bpftool) over each storm; programs attributed to their process by the prog fds it \
         holds. These figures include the cost of the stats accounting itself, the same for \
         every program.\n",
        TRACKER_WAIT.as_secs_f64()
    );
    let _ = writeln!(r, "The agent reported `{}`.\n", p.attach);
    let _ = writeln!(
        r,
        "### Pod tasks (podstat's full path)\n\n`stress-ng --switch 2 --timeout {}s` inside the \
         container cgroup `kubepods/burstable/pod<uid>/<64-hex id>` (v1 cpu and cpuacct). After \
         the storm the agent had `podstat_runqueue_latency_seconds_count` {:.0} for that \
         container (`container_id=\"{}\"`): the storm took the pod path.\n",
        p.pod.secs, p.runq_count, p.container_id
    );
    render_storm(r, &p.pod);
    let _ = writeln!(
        r,
        "\n### Non-pod tasks (podstat's early exit)\n\n`stress-ng --switch 2 --timeout {}s` in \
         the bench's own cgroup, outside any pod.\n",
        p.host.secs
    );
    render_storm(r, &p.host);
}

fn render_storm(r: &mut String, s: &StormRows) {
    let _ = writeln!(r, "| owner | program (id) | events | run time | ns/event |");
    let _ = writeln!(r, "|---|---|---:|---:|---:|");
    let mut idle = Vec::new();
    for row in &s.rows {
        if row.events == 0 {
            idle.push(format!("{} `{}` ({})", row.owner, row.name, row.id));
            continue;
        }
        let _ = writeln!(
            r,
            "| {} | {} ({}) | {} | {:.1} ms | {:.1} |",
            row.owner,
            row.name,
            row.id,
            row.events,
            per(row.run_ns, 1_000_000),
            per(row.run_ns, row.events)
        );
    }
    if !idle.is_empty() {
        let _ = writeln!(r, "\nLoaded but not run (0 events): {}.", idle.join(", "));
    }
    let sw = |owner: &str| s.switch(owner).map_or(f64::NAN, |(ns, n)| per(ns, n));
    let (ps, rq, fl) = (sw("podstat"), sw("runqlat"), sw("floor"));
    let (ps_all, rq_all) = (s.ns_per_switch("podstat"), s.ns_per_switch("runqlat"));
    let switches = |owner: &str| s.switch(owner).map_or(0, |(_, n)| n);
    let names = |owner: &str| {
        s.ran(owner)
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "- `sched_switch` vs `sched_switch`: podstat {ps:.1} ns/event, runqlat {rq:.1} ns/event: \
         **{:.2}x**",
        ps / rq
    );
    let _ = writeln!(
        r,
        "- the floor, an empty `sched_switch` program attached alongside: {fl:.1} ns/event (the \
         stats accounting and an empty run); above it: podstat {:.1} ns, runqlat {:.1} ns: \
         **{:.2}x**",
        ps - fl,
        rq - fl,
        (ps - fl) / (rq - fl)
    );
    let _ = writeln!(
        r,
        "- ns per context switch, all programs (run time of all the tool's programs over its \
         `sched_switch` events): podstat {ps_all:.1} ns ({}; {} switches), runqlat {rq_all:.1} ns \
         ({}; {} switches): **{:.2}x**",
        names("podstat"),
        switches("podstat"),
        names("runqlat"),
        switches("runqlat"),
        ps_all / rq_all
    );
    if let Some(ops) = s.storm_ops {
        let _ = writeln!(
            r,
            "- stress-ng with all three attached and stats on: {ops:.0} bogo-ops/s"
        );
    }
}

/// `cpus`: the CPUs the report's header names, which the storm ran on.
fn render_e2e(r: &mut String, e: &E2eResult, cpus: usize) {
    let _ = writeln!(r, "\n## 3. End-to-end cost\n");
    let _ = writeln!(
        r,
        "`stress-ng --switch 2 --timeout {E2E_SECS}s --metrics-brief` inside the same pod \
         container cgroup, bogo-ops/s (real time). {E2E_ROUNDS} rounds of four arms, interleaved \
         (order rotating each round): no probe; the floor, an empty `sched_switch` program alone \
         (`podstat-test-floor`: what attaching any program to that tracepoint costs); the podstat \
         agent (default collectors but \
         `--no-collector.cgroup`, `--probe.refresh-interval {PROBE_REFRESH}`, started {:.1} s \
         before the storm; its run-queue series for the container checked after each round); \
         libbpf-tools `runqlat` alone.\n",
        TRACKER_WAIT.as_secs_f64()
    );
    let _ = writeln!(
        r,
        "| round | no probe | empty program | podstat | runqlat |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|");
    for (i, (((off, fl), ps), rq)) in e
        .off
        .iter()
        .zip(&e.floor)
        .zip(&e.podstat)
        .zip(&e.runqlat)
        .enumerate()
    {
        let _ = writeln!(r, "| {} | {off:.0} | {fl:.0} | {ps:.0} | {rq:.0} |", i + 1);
    }
    let (moff, mfl, mps, mrq) = (
        median(&e.off),
        median(&e.floor),
        median(&e.podstat),
        median(&e.runqlat),
    );
    let (fl, ps, rq) = (mfl / moff, mps / moff, mrq / moff);
    let _ = writeln!(
        r,
        "| median | {moff:.0} | {mfl:.0} | {mps:.0} | {mrq:.0} |\n| median / no probe | 100% | \
         {:.1}% | {:.1}% | {:.1}% |\n",
        fl * 100.0,
        ps * 100.0,
        rq * 100.0
    );
    let cpu: Vec<f64> = e
        .agent_cpu
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let cpu_secs = Duration::from_secs(E2E_SECS).as_secs_f64()
        * f64::from(u32::try_from(cpus.max(1)).unwrap_or(u32::MAX));
    let _ = writeln!(
        r,
        "The agent's own CPU time (user + system, from `/proc/<pid>/stat`) during each {E2E_SECS} s \
         podstat storm: {} ms (median {:.0} ms, {:.2}% of the {} CPU-seconds the storm had).\n",
        cpu.iter()
            .map(|c| format!("{c:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        median(&cpu),
        median(&cpu) / 1000.0 / cpu_secs * 100.0,
        cpu_secs
    );
    let _ = writeln!(
        r,
        "The floor: an empty program on `sched_switch` keeps {:.1}% of the no-probe throughput, so \
         no probe there can keep more on this host. Against the floor: podstat {:.1}%, runqlat \
         {:.1}%.\n",
        fl * 100.0,
        ps / fl * 100.0,
        rq / fl * 100.0
    );
    let _ = writeln!(
        r,
        "With podstat: {:.1}% of the no-probe throughput (target ≥ {:.0}%: {}); with runqlat: \
         {:.1}%. Throughput lost: podstat {:.1}%, runqlat {:.1}%.",
        ps * 100.0,
        TARGET_E2E * 100.0,
        verdict(ps >= TARGET_E2E),
        rq * 100.0,
        (1.0 - ps) * 100.0,
        (1.0 - rq) * 100.0
    );
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
    fn parses_cpu_time() {
        let stat = "4242 (podstat (x) y) S 1 4242 4242 0 -1 4194560 1200 0 0 0 37 12 0 0 20 0 9 0";
        assert_eq!(cpu_time_of(stat), Some(Duration::from_millis(490)));
        assert_eq!(cpu_time_of("4242 (podstat) S 1"), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n").ok(),
            Some(b"abcde".to_vec())
        );
    }

    #[test]
    fn finds_labels() {
        let l = r#"podstat_cpu_periods_total{pod_uid="a",container_id="abc",qos="x"} 5"#;
        assert_eq!(label(l, "container_id"), Some("abc"));
        assert_eq!(label(l, "nope"), None);
    }
}
