//! `cargo xtask bench`: runs the bench scenario `podstat-test-bench` (the tests crate, on the
//! test harness) as root and renders `target/bench/report.md` from the JSON lines it prints.
//! What is measured, and how, is described in `tests/src/bin/podstat-test-bench.rs`; this file
//! only starts it and writes the report, each figure against its baseline from the same run.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use crate::{
    bench_json::{
        BucketingResult, ChurnResult, E2eResult, FloodResult, ProbeResult, ScrapeResult, Setup,
        StormRows,
    },
    step,
};
use anyhow::{Context as _, ensure};

pub struct Config {
    pub pods: usize,
    pub scrapes: usize,
    pub storm_secs: u64,
    /// Skip part 1 (scrape cost): for probe work, where only parts 2 and 3 change.
    pub skip_scrape: bool,
    /// Skip part 3 (end-to-end cost): for quick A/B runs of the per-event cost.
    pub skip_e2e: bool,
    pub flood_pods: usize,
    pub flood_secs: u64,
    pub flood_baseline: Option<PathBuf>,
    pub churn: usize,
}

const TARGET_RATIO: f64 = 2.0;
const TARGET_SCRAPE_MS: f64 = 20.0;
const TARGET_RSS_KIB: u64 = 32 * 1024;
const TARGET_E2E: f64 = 0.97;

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

/// `target/bench/`, created: where the reports and the scenario's process logs go.
pub(crate) fn out_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::root().join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Runs the release scenario binary `name` with `args` (`--out-dir` added) and `PODSTAT_BIN`
/// set, its progress on our stderr; the JSON lines it printed on stdout.
pub(crate) fn run_scenario(
    name: &str,
    bin: &std::path::Path,
    out_dir: &std::path::Path,
    args: &[String],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let exe = release_dir().join(name);
    ensure!(
        exe.is_file(),
        "{} not found (`cargo xtask` builds it)",
        exe.display()
    );
    // Debian puts libbpf-tools and bpftool in /usr/sbin, which a non-login PATH may lack.
    let mut path: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    path.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let path: OsString = std::env::join_paths(path).context("joining PATH")?;
    let out = Command::new(&exe)
        .arg("--out-dir")
        .arg(out_dir)
        .args(args)
        .env("PODSTAT_BIN", bin)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{name} failed with {} (its output above; what it printed on stdout:\n{stdout})",
        out.status
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("{name} printed {l:?}")))
        .collect()
}

/// The part `key` of the scenario's output, if it printed one.
pub(crate) fn part<T: serde::de::DeserializeOwned>(
    lines: &[serde_json::Value],
    key: &str,
) -> anyhow::Result<Option<T>> {
    lines
        .iter()
        .find_map(|v| v.get(key))
        .map(|v| {
            serde_json::from_value(v.clone()).with_context(|| format!("reading the {key} part"))
        })
        .transpose()
}

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
    let out_dir = out_dir()?;
    let mut args = vec![
        "--pods".to_owned(),
        c.pods.to_string(),
        "--scrapes".to_owned(),
        c.scrapes.to_string(),
        "--storm-secs".to_owned(),
        c.storm_secs.to_string(),
    ];
    if c.skip_scrape {
        args.push("--skip-scrape".to_owned());
    }
    if c.skip_e2e {
        args.push("--skip-e2e".to_owned());
    }
    args.extend([
        "--flood-pods".to_owned(),
        c.flood_pods.to_string(),
        "--flood-secs".to_owned(),
        c.flood_secs.to_string(),
    ]);
    args.extend(["--churn".to_owned(), c.churn.to_string()]);
    if let Some(b) = &c.flood_baseline {
        args.push("--flood-baseline".to_owned());
        args.push(b.display().to_string());
    }
    step(start, "running podstat-test-bench");
    let lines = run_scenario("podstat-test-bench", &bin, &out_dir, &args)?;
    let setup: Setup = part(&lines, "setup")?.context("podstat-test-bench printed no setup")?;
    let scrape: Option<ScrapeResult> = part(&lines, "scrape")?;
    let probe: ProbeResult =
        part(&lines, "probe")?.context("podstat-test-bench printed no probe result")?;
    let e2e: Option<E2eResult> = part(&lines, "e2e")?;
    let flood: Option<FloodResult> = part(&lines, "flood")?;
    let churn: Option<ChurnResult> = part(&lines, "churn")?;

    let mut report = render(
        c,
        &bin,
        &bin_source,
        &setup,
        scrape.as_ref(),
        &probe,
        e2e.as_ref(),
        flood.as_ref(),
    );
    if let Some(churn) = &churn {
        render_churn(&mut report, churn);
    }
    step(
        start,
        "running podstat-test-bucketing (the bucketing microbenchmark)",
    );
    let lines = run_scenario("podstat-test-bucketing", &bin, &out_dir, &[])?;
    let bucketing: BucketingResult =
        part(&lines, "bucketing")?.context("podstat-test-bucketing printed no bucketing result")?;
    render_bucketing(&mut report, &bucketing);
    println!("{report}");
    let path = out_dir.join("report.md");
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
        bin.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Statistics

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// Each round's figure of `arm` against `base`'s in the same round, in round order: paired, so
/// the host's state in a round (which moves every figure of it) cancels out.
pub(crate) fn per_round_ratios(
    arm: &BTreeMap<usize, f64>,
    base: &BTreeMap<usize, f64>,
) -> Vec<f64> {
    arm.iter()
        .filter_map(|(round, x)| base.get(round).map(|b| x / b))
        .collect()
}

/// Mean and 95% half-width (normal approximation) of `v`.
#[expect(clippy::cast_precision_loss, reason = "a handful of rounds")]
pub(crate) fn mean_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (var / n).sqrt())
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
// Report

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per part of the report"
)]
fn render(
    c: &Config,
    bin: &std::path::Path,
    bin_source: &str,
    setup: &Setup,
    scrape: Option<&ScrapeResult>,
    probe: &ProbeResult,
    e2e: Option<&E2eResult>,
    flood: Option<&FloodResult>,
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
        bin.display(),
        c.pods,
        c.scrapes,
        c.storm_secs
    );

    match scrape {
        Some(scrape) => render_scrape(&mut r, c, setup, scrape),
        None => {
            let _ = writeln!(r, "## 1. Scrape cost\n\nSkipped (`--skip-scrape`).\n");
        }
    }
    render_probe(&mut r, setup, probe);
    if let Some(e2e) = e2e {
        render_e2e(&mut r, setup, e2e, cpus);
    }
    if let Some(flood) = flood {
        render_flood(&mut r, flood);
    }
    r
}

fn render_churn(r: &mut String, ch: &ChurnResult) {
    let _ = writeln!(r, "## 5. Pod churn\n");
    let _ = writeln!(
        r,
        "Container cgroups created and removed in batches of 50 (25 pods x 2), each running \
         `sleep 0.01` once the agent tracks it, probes on, the agent reading only the bench's \
         tree. Target: RSS grows at most 5% from after the first 1,000 to the end.\n"
    );
    let _ = writeln!(r, "| cgroups churned | agent VmRSS |\n|---:|---:|");
    for (n, kib) in ch.rss.iter().filter(|(n, _)| n % 1000 == 0) {
        let _ = writeln!(r, "| {n} | {kib} KiB |");
    }
    let first = ch.rss.iter().find(|(n, _)| *n >= 1000).map(|x| x.1);
    if let (Some(first), Some(last)) = (first, ch.rss.last().map(|x| x.1)) {
        #[expect(clippy::cast_precision_loss, reason = "KiB figures are small")]
        let growth = (last as f64 - first as f64) / first as f64 * 100.0;
        let _ = writeln!(
            r,
            "\nGrowth from 1,000 to the end: {growth:.1}% (target ≤ 5%: {}). Series of removed \
             cgroups left: {}. Per-cgroup maps before {:?}, after {:?}.\n",
            verdict(growth <= 5.0),
            ch.leftover_series,
            ch.maps_before,
            ch.maps_after
        );
    }
}

/// The bucketing microbenchmark's programs, in report order, with what each is.
const BUCKETING_PROGRAMS: [(&str, &str); 4] = [
    (
        "bucketing_floor",
        "floor: the value read, one atomic add to slot 0",
    ),
    (
        "bucketing_native",
        "**schema 2 by bit operations (the pod path's `slot_of_ns`)**",
    ),
    (
        "bucketing_chain",
        "the 12-bound comparison chain used before (`b1df6d1`)",
    ),
    (
        "bucketing_search",
        "a comparison chain at schema 2's resolution (binary search over the 81 edges)",
    ),
];

fn render_bucketing(r: &mut String, b: &BucketingResult) {
    let _ = writeln!(r, "## 6. Bucketing, per value (`BPF_PROG_TEST_RUN`)\n");
    let checked: Vec<String> = b.checked.iter().map(|(p, n)| format!("{p} {n}")).collect();
    let _ = writeln!(
        r,
        "Socket filters (`ebpf/src/floor.rs`) run {} times per timed test run, each run \
         bucketing the next of 256 durations of a set into a run-queue histogram with one atomic \
         add, as the pod path does; ns per run is this thread's CPU time over the runs, the \
         programs rotating each round. Resolves a fraction of a ns, where the storm above \
         resolves a few. Before timing, the kernel's slots were checked against userspace's for \
         the durations next to every edge ({}).\n",
        b.repeat,
        checked.join(", ")
    );
    for set in &b.sets {
        let floor = set.ns.get("bucketing_floor");
        let chain = set.ns.get("bucketing_chain");
        let rounds = floor.map_or(0, Vec::len);
        let _ = writeln!(
            r,
            "Set `{}`: {} ({rounds} rounds).\n\n| program | ns per run (median) | above the floor \
             (median of the rounds) | against the chain, paired (mean, 95%) |\n|---|---:|---:|---:|",
            set.name, set.what
        );
        for (name, what) in BUCKETING_PROGRAMS {
            let Some(v) = set.ns.get(name) else {
                continue;
            };
            let diff = |base: Option<&Vec<f64>>| -> Vec<f64> {
                base.map_or_else(Vec::new, |b| v.iter().zip(b).map(|(x, y)| x - y).collect())
            };
            let above = median(&diff(floor));
            let (vs, ci) = mean_ci(&diff(chain));
            let _ = writeln!(
                r,
                "| {what} | {:.2} | {above:+.2} ns | {vs:+.2} ± {ci:.2} ns |",
                median(v)
            );
        }
        let _ = writeln!(r);
    }
}

/// Agent CPU in a flood of 32 scrapers over 200 pods x 3 containers, with the window on.
const TARGET_FLOOD_CORES: f64 = 0.6;

fn render_flood(r: &mut String, f: &FloodResult) {
    let _ = writeln!(
        r,
        "## 4. Scrape flood
"
    );
    let _ = writeln!(
        r,
        "{} pods x 3 containers ({} container cgroups); the agent with its default collectors \
         (probes on); N threads each scraping back to back (Prometheus' `Accept`, gzip, a new \
         connection per scrape). CPU: the agent's utime + stime over the flood divided by its \
         wall time. `baseline`: the binary given with `--flood-baseline`, at its defaults.\n",
        f.pods, f.containers
    );
    let _ = writeln!(
        r,
        "| agent | scrapers | answered | failed | agent CPU (cores) | p50 | p99 |"
    );
    let _ = writeln!(r, "|---|---:|---:|---:|---:|---:|---:|");
    for row in &f.rows {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {:.2} | {:.1} ms | {:.1} ms |",
            row.agent,
            row.scrapers,
            row.answered,
            row.failed,
            row.cpu_cores,
            row.latency.median_ms,
            row.latency.p99_ms
        );
    }
    if let Some(top) = f
        .rows
        .iter()
        .find(|x| x.agent == "window 1s" && x.scrapers == 32)
    {
        let _ = writeln!(
            r,
            "\n32 scrapers, window 1s: {:.2} cores (target ≤ {TARGET_FLOOD_CORES}: {}), {} failed (target 0: {})",
            top.cpu_cores,
            verdict(top.cpu_cores <= TARGET_FLOOD_CORES),
            top.failed,
            verdict(top.failed == 0)
        );
        if let Some(base) = f
            .rows
            .iter()
            .find(|x| x.agent == "baseline" && x.scrapers == 32)
        {
            let _ = writeln!(
                r,
                "against the baseline's {:.2} cores: {:.2}x",
                base.cpu_cores,
                top.cpu_cores / base.cpu_cores
            );
        }
    }
    let _ = writeln!(r);
}

fn render_scrape(r: &mut String, c: &Config, setup: &Setup, s: &ScrapeResult) {
    let _ = writeln!(r, "## 1. Scrape cost\n");
    let _ = writeln!(
        r,
        "{} pods x {} containers ({} container cgroups, {} with a CFS quota) as v1 \
         cgroups; agent with `--no-collector.sched`; {} warm-up scrapes, then {} sequential \
         scrapes (HTTP/1.1, `Connection: close`, read to end). Floor: a plain loop reading the {} \
         pod and container `cpu.stat` files, {} iterations.\n",
        s.pods,
        setup.containers_per_pod,
        s.created_containers,
        s.with_quota,
        setup.warmup,
        c.scrapes,
        s.stat_files,
        c.scrapes
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
        "- body: {} bytes (text), {} (OpenMetrics), {} (protobuf); `grep -c podstat_cpu_periods_total`: {}; bench containers with a \
         `podstat_cpu_periods_total` series: {} of {} ({})",
        s.body_bytes,
        s.openmetrics_bytes,
        s.protobuf_bytes,
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

fn render_probe(r: &mut String, setup: &Setup, p: &ProbeResult) {
    let _ = writeln!(r, "## 2. Per-event probe cost\n");
    let _ = writeln!(
        r,
        "`kernel.bpf_stats_enabled=1`; podstat agent (`--no-collector.cgroup --probe.refresh-interval \
         {}`, started {:.1} s before the storm so its tracker knows the pod) and \
         libbpf-tools `runqlat` attached side by side. Deltas of `run_time_ns` and `run_cnt` \
         (bpftool) over each storm; programs attributed to their process by the prog fds it \
         holds. These figures include the cost of the stats accounting itself, the same for \
         every program.\n",
        setup.probe_refresh, setup.tracker_wait_secs
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

/// Run time of all `owner`'s programs per context switch (its `sched_switch` run count).
pub(crate) fn ns_per_switch(s: &StormRows, owner: &str) -> f64 {
    let total: u64 = s.ran(owner).map(|x| x.run_ns).sum();
    s.switch(owner)
        .map_or(f64::NAN, |(_, switches)| per(total, switches))
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
    let (ps_all, rq_all) = (ns_per_switch(s, "podstat"), ns_per_switch(s, "runqlat"));
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
fn render_e2e(r: &mut String, setup: &Setup, e: &E2eResult, cpus: usize) {
    let (rounds, secs) = (setup.e2e_rounds, setup.e2e_secs);
    let _ = writeln!(r, "\n## 3. End-to-end cost\n");
    let _ = writeln!(
        r,
        "`stress-ng --switch 2 --timeout {secs}s --metrics-brief` inside the same pod \
         container cgroup, bogo-ops/s (real time). {rounds} rounds of four arms, interleaved \
         (order rotating each round): no probe; the floor, an empty `sched_switch` program alone \
         (`podstat-test-floor`: what attaching any program to that tracepoint costs); the podstat \
         agent (default collectors but \
         `--no-collector.cgroup`, `--probe.refresh-interval {}`, started {:.1} s \
         before the storm; its run-queue series for the container checked after each round); \
         libbpf-tools `runqlat` alone.\n",
        setup.probe_refresh, setup.tracker_wait_secs
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
    let cpu = &e.agent_cpu_ms;
    let cpu_secs = std::time::Duration::from_secs(secs).as_secs_f64()
        * f64::from(u32::try_from(cpus.max(1)).unwrap_or(u32::MAX));
    let _ = writeln!(
        r,
        "The agent's own CPU time (user + system, from `/proc/<pid>/stat`) during each {secs} s \
         podstat storm: {} ms (median {:.0} ms, {:.2}% of the {} CPU-seconds the storm had).\n",
        cpu.iter()
            .map(|c| format!("{c:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        median(cpu),
        median(cpu) / 1000.0 / cpu_secs * 100.0,
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
    fn bucketing_is_rendered_against_the_floor_and_the_chain() {
        let ns = |v: &[f64]| v.to_vec();
        let b = BucketingResult {
            repeat: 8,
            checked: BTreeMap::from([("bucketing_native".to_owned(), 512)]),
            sets: vec![crate::bench_json::BucketingSet {
                name: "short".to_owned(),
                what: "a test".to_owned(),
                ns: BTreeMap::from([
                    ("bucketing_floor".to_owned(), ns(&[20.0, 21.0, 22.0])),
                    ("bucketing_native".to_owned(), ns(&[23.0, 24.0, 25.0])),
                    ("bucketing_chain".to_owned(), ns(&[21.0, 22.0, 23.0])),
                ]),
            }],
        };
        let mut r = String::new();
        render_bucketing(&mut r, &b);
        assert!(r.contains("bucketing_native 512"), "{r}");
        assert!(r.contains("(3 rounds)"), "{r}");
        assert!(
            r.contains("(the pod path's `slot_of_ns`)** | 24.00 | +3.00 ns | +2.00 ± 0.00 ns |"),
            "{r}"
        );
        assert!(
            r.contains("(`b1df6d1`) | 22.00 | +1.00 ns | +0.00 ± 0.00 ns |"),
            "{r}"
        );
        assert!(
            !r.contains("binary search"),
            "no row for a program that did not run: {r}"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]).to_bits(), 2.0f64.to_bits());
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]).to_bits(), 2.5f64.to_bits());
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_interval_is_the_normal_approximation() {
        let (m, ci) = mean_ci(&[1.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        // sd sqrt(2), n 2: 1.96 * sqrt(2) / sqrt(2).
        assert!((ci - 1.96).abs() < 1e-12);
        assert!(mean_ci(&[1.0]).1.is_nan());
    }

    #[test]
    fn ratios_pair_the_rounds_both_ran() {
        let arm = BTreeMap::from([(0, 110.0), (1, 90.0), (3, 50.0)]);
        let base = BTreeMap::from([(0, 100.0), (1, 100.0), (2, 100.0)]);
        assert_eq!(per_round_ratios(&arm, &base), vec![1.1, 0.9]);
    }
}
