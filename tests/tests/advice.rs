//! `podstat explain`'s sizing advice, proven on the real kernel: three loads are throttled,
//! explain's recommended limit is applied to the cgroup and the same load is run again; its
//! throttled wall-time share must fall under the alert threshold, while half the recommended
//! extra quota must not get it there. For the steady pool, the recommended pool size at the old
//! limit must end the throttling.
//!
//! cgroups on this machine's v1 cpu hierarchy in the kubelet's cgroupfs layout, as in
//! `operator.rs` (the test root gets the largest `cpu.shares`, so that other work on this shared
//! machine takes as little as it can from the loads). The agent rereads limits every scrape.

use std::{
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{CgroupTree, podstat_bin, require_root, start_agent, test_ids, v1_hierarchies};

const LOAD: &str = env!("CARGO_BIN_EXE_podstat-test-load");

/// The alert's default threshold (`podstat:cpu_throttled_wall_share:alert_threshold`).
const THRESHOLD: f64 = 0.25;
/// "The throttling disappears": under explain's own floor for a finding (1% of wall time).
const GONE: f64 = 0.01;
/// Seconds each window observes.
const WINDOW_SECS: u64 = 20;
const PERIOD_US: f64 = 100_000.0;
/// A window counts only if the load got at least this share of the CPU it asks for: on a
/// machine shared with other work, a load that cannot run is throttled less, which says
/// nothing about the limit. Such a window is run again, up to [`ATTEMPTS`] times (5: a CI
/// run on an otherwise idle host had three "before" windows in a row at 1.71-1.79 of the 2
/// cores between throttles, with the observer's debug build beside the load).
const GOT_CPU_MIN: f64 = 0.9;
const ATTEMPTS: usize = 5;
/// For a steady load, which burns its quota and so always "gets" its limit: a window counts
/// only if, while not throttled, the load ran at this share of the cores it can use
/// (`used / (1 - throttled share)` against `peak`). A CI run found 1.82 of 2 cores (other work
/// took the machine): the quota lasted longer, and the load was throttled 23% of the time at
/// a limit where it is throttled 30-32% when it has both CPUs.
const RAN_AT_PEAK_MIN: f64 = 0.95;

/// One window's throttling entry of explain's JSON.
fn observe(url: &str, uid: &str) -> serde_json::Value {
    let duration = format!("{WINDOW_SECS}s");
    let args = [
        "explain",
        uid,
        "--from",
        url,
        "--duration",
        &duration,
        "--output",
        "json",
    ];
    let mut child = Command::new(podstat_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning podstat explain");
    let deadline = Instant::now() + Duration::from_secs(WINDOW_SECS + 60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("podstat explain {args:?} did not finish in time");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("explain's output");
    let out = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "podstat explain {args:?} failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    let d: serde_json::Value = serde_json::from_str(&out).expect("explain --output json");
    d["throttling"]
        .as_array()
        .and_then(|t| t.first())
        .cloned()
        .unwrap_or_else(|| panic!("no throttling entry (no limit seen?): {d:#}"))
}

fn share(t: &serde_json::Value) -> f64 {
    t["wall_lost_share"]
        .as_f64()
        .unwrap_or_else(|| panic!("no wall_lost_share (throttle probe not attached?): {t:#}"))
}

/// One pod with one container on the v1 hierarchy, and an agent watching it.
struct Pod {
    tree: CgroupTree,
    ctr: String,
    uid: String,
}

impl Pod {
    fn new(tag: &str, seed: u32) -> Self {
        let v1 = v1_hierarchies();
        let root = format!("podstat-test-{}-{tag}", std::process::id());
        let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
        tree.mkdir(&root);
        tree.write(0, &root, "cpu.shares", "262144");
        let (uid, cid) = test_ids(seed);
        let ctr = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
        tree.mkdir(&ctr);
        tree.write(0, &ctr, "cpu.cfs_period_us", "100000");
        Self { tree, ctr, uid }
    }

    /// Runs `load` (arguments of podstat-test-load, without its SECS) under `limit` cores
    /// for one window and returns explain's throttling entry. `demand` is the CPU (cores) the
    /// load uses under that limit when nothing else takes the machine: a window in which it
    /// got less than [`GOT_CPU_MIN`] of that is run again.
    fn window(
        &self,
        url: &str,
        limit: f64,
        load: &[String],
        (demand, peak): (f64, Option<f64>),
        what: &str,
    ) -> serde_json::Value {
        for attempt in 1..=ATTEMPTS {
            let t = self.window_once(url, limit, load, what);
            let used = t["cpu_used_cores"].as_f64().unwrap_or(0.0);
            let running = 1.0 - t["wall_lost_share"].as_f64().unwrap_or(0.0);
            let ran_at = used / running.max(1e-9);
            let starved = if used < GOT_CPU_MIN * demand {
                format!("the load got {used:.3} of the {demand:.3} cores it asks for")
            } else if let Some(p) = peak.filter(|p| ran_at < RAN_AT_PEAK_MIN * p) {
                format!("between throttles the load ran at {ran_at:.3} of its {p:.3} cores")
            } else {
                return t;
            };
            eprintln!(
                "{what}: {starved} (attempt {attempt} of {ATTEMPTS}): the machine is busy; running the window again"
            );
        }
        panic!(
            "{what}: in {ATTEMPTS} windows the load never got {:.0}% of the {demand:.3} cores it asks for{}: this machine is too busy to measure a limit",
            GOT_CPU_MIN * 100.0,
            peak.map_or(String::new(), |p| format!(
                ", or ran below {:.0}% of its {p:.3} cores between throttles",
                RAN_AT_PEAK_MIN * 100.0
            ))
        );
    }

    fn window_once(&self, url: &str, limit: f64, load: &[String], what: &str) -> serde_json::Value {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a quota of a few hundred thousand µs"
        )]
        let quota = (limit * PERIOD_US).round() as u64;
        self.tree
            .write(0, &self.ctr, "cpu.cfs_quota_us", &quota.to_string());
        let secs = (WINDOW_SECS + 4).to_string();
        let mut child = self.tree.spawn(
            &self.ctr,
            Command::new(LOAD)
                .args(load)
                .arg(&secs)
                .stderr(Stdio::null()),
        );
        // The probes' refresh has seen the cgroup, and the load is in its stride.
        thread::sleep(Duration::from_secs(1));
        let t = observe(url, &self.uid);
        self.tree.kill_all(&self.ctr);
        let _ = child.wait();
        let rec = &t["recommendation"];
        eprintln!(
            "{what}: limit {limit:.2} cores, load {load:?}: throttled {:.1}% of wall time, pause p99 {}, used {:.3} cores, {} threads runnable at throttle, deficit {} s; recommendation limit {} burst {} pool {}: {}",
            share(&t) * 100.0,
            t["pause_p99_seconds"],
            t["cpu_used_cores"].as_f64().unwrap_or(f64::NAN),
            t["runnable_threads"],
            t["deficit_seconds"],
            rec["limit_cores"],
            rec["burst_seconds"],
            rec["pool_threads"],
            rec["text"].as_str().unwrap_or("-"),
        );
        t
    }
}

/// The whole proof for one shape; returns the recommendation of the first window. `demand`
/// gives the cores the load uses under a limit when it has the machine to itself.
fn prove(
    tag: &str,
    seed: u32,
    limit: f64,
    load: &[String],
    demand: impl Fn(f64) -> f64,
    peak: Option<f64>,
) -> serde_json::Value {
    require_root();
    let pod = Pod::new(tag, seed);
    let (_agent, addr) = start_agent(&[
        "--collector.cgroup.limits-refresh",
        "0s",
        "--probe.refresh-interval",
        "200ms",
        "--no-collector.net",
    ]);
    let url = format!("http://{addr}/metrics");
    let before = pod.window(
        &url,
        limit,
        load,
        (demand(limit), peak),
        &format!("{tag} before"),
    );
    let w0 = share(&before);
    assert!(
        w0 >= THRESHOLD,
        "{tag}: the load is throttled only {:.1}% of the time at {limit} cores, under the {:.0}% threshold: the shape did not reproduce on this machine (busy?): {before:#}",
        w0 * 100.0,
        THRESHOLD * 100.0
    );
    let rec = before["recommendation"].clone();
    let advised = rec["limit_cores"]
        .as_f64()
        .unwrap_or_else(|| panic!("{tag}: no recommended limit: {rec:#}"));
    assert!(advised > limit, "{tag}: advised {advised} ≤ {limit}");

    let after = pod.window(
        &url,
        advised,
        load,
        (demand(advised), peak),
        &format!("{tag} at the advised limit"),
    );
    assert!(
        share(&after) < THRESHOLD,
        "{tag}: at the advised {advised} cores the load is still throttled {:.1}% of the time (was {:.1}% at {limit}): {after:#}",
        share(&after) * 100.0,
        w0 * 100.0
    );
    let half = limit + (advised - limit) / 2.0;
    let halfway = pod.window(
        &url,
        half,
        load,
        (demand(half), peak),
        &format!("{tag} at half the extra"),
    );
    assert!(
        share(&halfway) >= THRESHOLD,
        "{tag}: half the advised extra quota ({half:.3} cores) already brings the share to {:.1}%: the advice ({advised}) is larger than needed",
        share(&halfway) * 100.0
    );
    eprintln!(
        "{tag}: limit {limit:.2} → {advised:.2} cores: throttled {:.1}% → {:.1}% (half the extra, {half:.3}: {:.1}%); pause p99 {} → {}",
        w0 * 100.0,
        share(&after) * 100.0,
        share(&halfway) * 100.0,
        before["pause_p99_seconds"],
        after["pause_p99_seconds"],
    );
    rec
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn advice_for_a_bursty_pod_brings_it_under_the_threshold() {
    // 4 threads wake together every 1537 ms and burn 60 ms of CPU each: 0.156 cores on
    // average, 62% of the 0.25-core limit, yet each burst is 9.6 quotas. The cycle is not a
    // multiple of the 100 ms period, so the bursts start at every phase of it (37 ms apart).
    let rec = prove(
        "advice-bursty",
        61,
        0.25,
        &args(&["burst", "4", "60", "1537"]),
        |_| 4.0 * 60.0 / 1537.0,
        None,
    );
    assert_eq!(rec["model"]["load"], "bursts", "{rec:#}");
    assert!(
        rec["pool_threads"].is_null(),
        "pool advice for bursts: {rec:#}"
    );
}

#[test]
fn advice_for_a_steady_pool_sizes_the_limit_and_the_pool() {
    require_root();
    // 4 busy threads on this 2-CPU machine against 1.2 cores: 2 run, paused 40% of each
    // period. (At exactly 1.0 core a pool of one thread still meets the quota's edge: the
    // kernel throttled it in 4 of 100 periods here.)
    let limit = 1.2;
    // 4 busy threads use the limit, at most one core per CPU.
    let cpus = f64::from(u32::try_from(podstat_tests::cpus()).unwrap_or(u32::MAX));
    let rec = prove(
        "advice-steady",
        62,
        limit,
        &args(&["busy", "4"]),
        |l| l.min(cpus).min(4.0),
        Some(cpus.min(4.0)),
    );
    assert_eq!(rec["model"]["load"], "steady", "{rec:#}");
    assert!(
        rec["burst_seconds"].is_null(),
        "burst advice for a steady pool: {rec:#}"
    );
    let pool = rec["pool_threads"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pool size for a steady pool: {rec:#}"));
    assert_eq!(pool, 1, "{rec:#}");
    // The old limit, the advised pool: the throttling disappears.
    let pod = Pod::new("advice-pool", 63);
    let (_agent, addr) = start_agent(&[
        "--collector.cgroup.limits-refresh",
        "0s",
        "--probe.refresh-interval",
        "200ms",
        "--no-collector.net",
    ]);
    let url = format!("http://{addr}/metrics");
    let t = pod.window(
        &url,
        limit,
        &args(&["busy", &pool.to_string()]),
        #[expect(clippy::cast_precision_loss, reason = "a pool of a few threads")]
        ((pool as f64).min(limit).min(cpus), None),
        "steady pool at the advised size",
    );
    assert!(
        share(&t) < GONE,
        "a pool of {pool} at {limit} cores is still throttled {:.1}% of the time: {t:#}",
        share(&t) * 100.0
    );
}

#[test]
fn advice_for_a_pod_just_below_its_limit_brings_it_under_the_threshold() {
    // Bursts of 6 quotas by 4 threads every 677 ms: 0.44 cores on average, 89% of the limit.
    prove(
        "advice-below",
        64,
        0.5,
        &args(&["burst", "4", "75", "677"]),
        |_| 4.0 * 75.0 / 677.0,
        None,
    );
}
