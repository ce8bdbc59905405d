//! The scenario that `cargo xtask vm` runs inside each kernel of the matrix, as the guest's
//! only program after `/init` (a static musl binary; the guest has no other userland than
//! busybox).
//!
//! `podstat-test-vm EXPECT_FILE`. The file, written by xtask from `xtask/vm-kernels.toml`:
//!
//! ```text
//! release 6.1.0-50-cloud-amd64
//! probe sched_switch ok tp_btf
//! probe cfs_throttle ok fexit
//! probe some_probe unsupported
//! ```
//!
//! On pure cgroup v2 it checks `podstat check` against the expectations (every probe the agent
//! reports must be listed, with its outcome and attach mode), creates kubelet-style pod cgroups
//! in both the systemd and the cgroupfs naming, throttles one container, lets another wake and
//! sleep against a CPU hog in a third, and asserts the cgroup counters and the data of every
//! probe the kernel supports from the real agent's scrape. A fourth pod has a pod-level limit
//! (KEP-2837: `cpu.max` on the pod cgroup, none on its two containers, one busy): where the
//! kernel has `cpu.stat.local` (6.8+), the busy container's local throttled time must agree with
//! it and the idle one's stay 0. Then the run-queue oracle in both modes: the waker's
//! histogram against the kernel's `run_delay`/`pcount` of its threads (`oracle`). A failed
//! assertion panics (exit 101); `/init` prints the verdict.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, Hist, Sample, find,
    kernel::{Expect, assert_pure_v2, compare_check, kernel_release, read_expectations},
    oracle::{Pods, Workload, measure, wait_tracked},
    podstat_bin, scrape, start_agent, test_ids,
};

/// Seconds of load. Everything runs under software emulation, so keep it short.
const LOAD_SECS: &str = "5";

/// The run-queue oracle's workloads in the guest, each in both modes, beside one busy thread
/// per CPU in the hog's pod: two threads waking at absolute deadlines every 500 µs, which
/// measure their own lateness (a third account, cyclictest-style: neither podstat nor the
/// kernel may count more run-queue waiting than it); and two threads that work 200 µs and
/// sleep 1 ms (wakeup waits, preemptions, and the load balancer's migrations of waiting
/// threads).
const ORACLE: [(&str, Workload); 2] = [
    (
        "timer",
        Workload {
            victim: ["2", "0", "500"],
            secs: 2,
            migrate_every: "0",
            hogs_per_cpu: 1,
            system_hogs_per_cpu: 0,
        },
    ),
    (
        "work-sleep",
        Workload {
            victim: ["2", "200", "1000"],
            secs: 3,
            migrate_every: "0",
            hogs_per_cpu: 1,
            system_hogs_per_cpu: 0,
        },
    ),
];

/// Runs `podstat check --output json` and compares every probe with the expectations.
/// Returns the probes that attached.
fn check_probes(expect: &BTreeMap<String, Expect>) -> Vec<String> {
    let out = Command::new(podstat_bin())
        .args(["check", "--output", "json", "--log.level", "error"])
        .output()
        .expect("running podstat check");
    compare_check(
        "podstat-vm",
        &out.stdout,
        &out.stderr,
        out.status.success(),
        expect,
    )
}

/// Enables the cpu controller for the children of every ancestor of `rel` (v2 only lets a
/// controller into a cgroup whose parent delegates it).
fn delegate_cpu(tree: &CgroupTree, rel: &str) {
    let parts: Vec<&str> = rel.split('/').collect();
    for n in 1..parts.len() {
        tree.write(0, &parts[..n].join("/"), "cgroup.subtree_control", "+cpu");
    }
}

fn cpu_stat(tree: &CgroupTree, rel: &str, field: &str) -> f64 {
    let text = tree.read(0, rel, "cpu.stat");
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from {rel}/cpu.stat:\n{text}"))
}

fn value(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(s, name, labels).first().map_or_else(
        || panic!("no {name} with {labels:?} in the scrape"),
        |x| x.value,
    )
}

fn hist(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Hist {
    Hist::find(s, name, labels).unwrap_or_else(|| panic!("no {name} with {labels:?} in the scrape"))
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario, set up and asserted in order"
)]
#[expect(
    clippy::float_cmp,
    reason = "counters are integers in f64: the agent and cpu.stat must agree exactly"
)]
fn main() {
    let started = Instant::now();
    let expect_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/podstat-vm/expect".into());
    let load =
        std::env::var("PODSTAT_TEST_LOAD").unwrap_or_else(|_| "/bin/podstat-test-load".into());
    let (release, expect) = read_expectations(Path::new(&expect_path));
    let running = kernel_release();
    assert_eq!(running, release, "booted the wrong kernel");
    println!("podstat-vm: kernel {running}, pure cgroup v2");
    assert_pure_v2();

    let attached = check_probes(&expect);
    let has = |p: &str| attached.iter().any(|a| a == p);
    println!(
        "podstat-vm: [{:>4.1}s] podstat check matches the expectations",
        started.elapsed().as_secs_f64()
    );

    // Three pods: a throttled container in the systemd driver's naming, a waker and a hog in
    // the cgroupfs driver's naming (different pods, so the hog preempts the waker as other_pod).
    let (uid_t, cid_t) = test_ids(1);
    let (uid_w, cid_w) = test_ids(2);
    let (uid_h, cid_h) = test_ids(3);
    let throttled = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid_t}.scope",
        uid_t.replace('-', "_")
    );
    let waker = format!("kubepods/burstable/pod{uid_w}/{cid_w}");
    let hog = format!("kubepods/besteffort/pod{uid_h}/{cid_h}");
    let (uid_p, busy_cid) = test_ids(4);
    let (_, idle_cid) = test_ids(5);
    let pod_level = format!("kubepods/burstable/pod{uid_p}");
    let (pl_busy, pl_idle) = (
        format!("{pod_level}/{busy_cid}"),
        format!("{pod_level}/{idle_cid}"),
    );
    let mut tree = CgroupTree::new(&[Path::new("/sys/fs/cgroup")]);
    for rel in [&throttled, &waker, &hog, &pl_busy, &pl_idle] {
        tree.mkdir(rel);
        delegate_cpu(&tree, rel);
    }
    // 20 ms every 100 ms for three busy threads.
    tree.write(0, &throttled, "cpu.max", "20000 100000");
    // The pod-level limit: on the pod cgroup only.
    tree.write(0, &pod_level, "cpu.max", "20000 100000");

    // --collector.cgroup.extended: cpu.stat.local (6.8+) and cpu.pressure are exported only
    // with it since the series budget (a95cce7), and this scenario checks them on v2 kernels.
    let (mut agent, addr) = start_agent(&[
        "--probe.refresh-interval",
        "1s",
        "--collector.cgroup.extended",
    ]);
    let attached_at = Instant::now();
    println!(
        "podstat-vm: [{:>4.1}s] agent up on {addr}",
        started.elapsed().as_secs_f64()
    );
    let lt = [
        ("pod_uid", uid_t.as_str()),
        ("container_id", cid_t.as_str()),
    ];
    let lw = [
        ("pod_uid", uid_w.as_str()),
        ("container_id", cid_w.as_str()),
    ];

    let mut hogs = tree.spawn(&hog, Command::new(&load).args(["busy", "2", LOAD_SECS]));
    let mut busy = tree.spawn(
        &throttled,
        Command::new(&load).args(["busy", "3", LOAD_SECS]),
    );
    let mut sleepy = tree.spawn(
        &waker,
        Command::new(&load).args(["spin-sleep", "20", "2", LOAD_SECS]),
    );
    let mut pod_busy = tree.spawn(&pl_busy, Command::new(&load).args(["busy", "2", LOAD_SECS]));
    if has("sched_switch") {
        let _ = wait_tracked(
            addr,
            "podstat_runqueue_latency_seconds_count",
            &lw,
            Duration::from_secs(10),
        );
    }
    for c in [&mut hogs, &mut busy, &mut sleepy, &mut pod_busy] {
        let _ = c.wait();
    }
    tree.kill_all(&throttled);
    tree.kill_all(&pl_busy);
    // Counters are static from here on: the agent and cpu.stat must agree exactly.
    thread::sleep(Duration::from_millis(300));
    let s = scrape(addr);
    let window = attached_at.elapsed().as_secs_f64();
    println!(
        "podstat-vm: [{:>4.1}s] load done, scraped",
        started.elapsed().as_secs_f64()
    );
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        println!("podstat-vm: {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures.push(what);
        }
    };

    for (probe, want) in &expect {
        // An attached probe exports 1. One that is not attached exports 0, or no series at all
        // when the run-queue mode does not need it (the wakeup programs in sched_info mode).
        let got = find(&s, "podstat_probe_attached", &[("probe", probe)])
            .first()
            .map(|x| x.value);
        let (ok, should) = if want.outcome == "ok" {
            (got == Some(1.0), "1")
        } else {
            (got.is_none_or(|v| v == 0.0), "0 or no series")
        };
        check(
            ok,
            format!("podstat_probe_attached{{probe=\"{probe}\"}} = {got:?} (expected {should})"),
        );
    }

    // cgroup counters of the throttled container against its cpu.stat.
    for (metric, field, scale) in [
        ("podstat_cpu_periods_total", "nr_periods", 1.0),
        ("podstat_cpu_throttled_periods_total", "nr_throttled", 1.0),
        (
            "podstat_cpu_throttled_seconds_total",
            "throttled_usec",
            1e-6,
        ),
    ] {
        // Compared in the file's own unit (integers), so no float rounding gets in the way.
        let direct = cpu_stat(&tree, &throttled, field);
        let got = value(&s, metric, &lt);
        check(
            (got / scale).round() == direct && got > 0.0,
            format!("{metric} = {got}, cpu.stat {field} = {direct}, both > 0"),
        );
    }

    // Run-queue latency needs sched_switch only: the wakeup programs attach in wakeup mode and
    // are n/a in sched_info mode.
    if has("sched_switch") {
        let w = hist(&s, "podstat_runqueue_latency_seconds", &lw);
        let p50 = w.quantile(0.5);
        check(
            w.count >= 20.0 && w.sum > 0.0 && p50 > 0.0 && p50 < 0.5,
            format!(
                "waker's run-queue latency: {} waits, p50 {:.1} µs, mean {:.1} µs",
                w.count,
                p50 * 1e6,
                w.mean() * 1e6
            ),
        );
        let t = hist(&s, "podstat_runqueue_latency_seconds", &lt);
        check(
            t.count > 0.0,
            format!("throttled container's run-queue waits: {}", t.count),
        );
        let by_other = value(
            &s,
            "podstat_cpu_preemptions_total",
            &[lw[0], lw[1], ("by", "other_pod")],
        );
        check(
            by_other > 0.0,
            format!("waker preempted by other pods {by_other} times"),
        );
        let switches: f64 = find(&s, "podstat_node_context_switches_total", &[])
            .iter()
            .map(|x| x.value)
            .sum();
        check(
            switches > 0.0,
            format!("node context switches since attach: {switches}"),
        );
    }

    if has("cfs_throttle") && has("cfs_unthrottle") {
        let pause = hist(&s, "podstat_cpu_throttle_pause_seconds", &lt);
        let after = hist(&s, "podstat_cpu_quota_exhausted_after_seconds", &lt);
        let runnable = hist(&s, "podstat_cpu_throttle_runnable_threads", &lt);
        let throttled_periods = value(&s, "podstat_cpu_throttled_periods_total", &lt);
        check(
            pause.count >= 3.0 && pause.count <= throttled_periods * 2.0 + 5.0,
            format!(
                "throttle pauses: {} (throttled periods {throttled_periods})",
                pause.count
            ),
        );
        // Pauses are wall-clock time, so a host that starves the emulated CPUs stretches them
        // (single pauses of over a second were seen then); what holds regardless: a cgroup's
        // episodes do not overlap, so they fit in the time since the probes attached, and an
        // episode is the union of its run queues' throttled intervals, so it cannot exceed
        // their sum, which cpu.stat's throttled_usec is (10% for the two clocks and the
        // episode still open at the scrape).
        let throttled_secs = value(&s, "podstat_cpu_throttled_seconds_total", &lt);
        check(
            pause.mean() > 0.001 && pause.sum <= window && pause.sum <= throttled_secs * 1.1 + 0.1,
            format!(
                "throttle pauses: mean {:.1} ms, sum {:.2} s <= {window:.2} s since attach and <= throttled_usec {throttled_secs:.2} s",
                pause.mean() * 1e3,
                pause.sum
            ),
        );
        let p50 = after.quantile(0.5);
        check(
            after.count > 0.0 && p50 > 0.0 && p50 <= 0.1,
            format!(
                "quota exhausted after: {} episodes, p50 {:.1} ms into the 100 ms period",
                after.count,
                p50 * 1e3
            ),
        );
        // An episode lasts until the last run queue unthrottles; under emulation one run queue
        // often throttles again before the other is released, so an episode can span periods
        // and count a run queue more than once. At most: 3 threads on each of the 2 run
        // queues, per period the mean episode spans.
        let most = 3.0 * 2.0 * (1.0 + pause.mean() / 0.1).ceil();
        check(
            runnable.count > 0.0 && runnable.mean() >= 1.0 && runnable.mean() <= most,
            format!(
                "runnable threads at throttle: {} episodes, mean {:.2} (3 busy threads; at least 1, at most {most})",
                runnable.count,
                runnable.mean()
            ),
        );
    }

    // The pod-level limit: the pod cgroup is throttled, and cpu.stat.local (6.8+) says which
    // container stalled.
    let lp = [("pod_uid", uid_p.as_str()), ("container_id", "")];
    let pod_direct = cpu_stat(&tree, &pod_level, "nr_throttled");
    check(
        value(&s, "podstat_cpu_throttled_periods_total", &lp) == pod_direct && pod_direct > 0.0,
        format!("pod-level limit: the pod cgroup's nr_throttled {pod_direct} exported and > 0"),
    );
    if tree.path(0, &pl_busy).join("cpu.stat.local").exists() {
        let local = |rel: &str| {
            let text = tree.read(0, rel, "cpu.stat.local");
            text.lines()
                .find_map(|l| l.strip_prefix("throttled_usec "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(f64::NAN, |us| us / 1e6)
        };
        let got = |cid: &str| {
            value(
                &s,
                "podstat_cpu_throttled_local_seconds_total",
                &[("pod_uid", uid_p.as_str()), ("container_id", cid)],
            )
        };
        let busy_local = local(&pl_busy);
        check(
            busy_local > 0.0 && (got(&busy_cid) - busy_local).abs() < 1e-6,
            format!(
                "pod-level limit: busy container's cpu.stat.local throttled {busy_local:.3} s, exported {:.3} s",
                got(&busy_cid)
            ),
        );
        check(
            got(&idle_cid) == 0.0,
            format!(
                "pod-level limit: idle container's local throttled time {} (expected 0)",
                got(&idle_cid)
            ),
        );
    } else {
        println!(
            "podstat-vm: skip cpu.stat.local checks: this kernel has no cpu.stat.local (6.8+)"
        );
    }
    if has("cfs_throttle") && has("cfs_unthrottle") {
        // The deficit: pause x runnable threads, at most one per CPU.
        let pause = hist(&s, "podstat_cpu_throttle_pause_seconds", &lt);
        let deficit = value(&s, "podstat_cpu_throttle_deficit_seconds_total", &lt);
        let cpus = f64::from(u32::try_from(podstat_tests::cpus()).unwrap_or(u32::MAX));
        check(
            pause.count > 0.0 && deficit >= pause.sum * 0.99 && deficit <= pause.sum * cpus * 1.01,
            format!(
                "throttle deficit: {deficit:.3} s over {} episodes, between the pauses' {:.3} s and {cpus} CPUs' worth",
                pause.count, pause.sum
            ),
        );
    }

    let status = agent.stop(15, Duration::from_secs(10));
    check(
        status.is_some_and(|s| s.success()),
        format!("agent stopped on SIGTERM with {status:?}"),
    );

    // The run-queue oracle (issue 13): in both modes the waker's run-queue histogram against
    // the kernel's run_delay and pcount of its threads, as on the test host (tests/sched.rs).
    if has("sched_switch") {
        let pods = Pods {
            tree: &tree,
            victim: &waker,
            victim_labels: lw,
            hog: &hog,
            load: Path::new(&load),
            quiet_within: Duration::from_secs(30),
        };
        for mode in ["sched-info", "wakeup"] {
            let (mut agent, addr) = start_agent(&[
                "--no-collector.cgroup",
                "--probe.refresh-interval",
                "1s",
                "--probe.runqueue-mode",
                mode,
            ]);
            for (name, work) in &ORACLE {
                let got = measure(&pods, addr, work);
                // sched_info mode (every pinned kernel's default) to the test host's bounds.
                // Wakeup mode, the fallback for kernels without sched_info, to its count and
                // the sum's upper side (the issue's over-count): on 6.12 one run of the
                // work-sleep workload summed 0.46x run_delay with the count exact, while the
                // other runs agreed within 0.3% (docs/probes.md, what remains).
                let ok = if mode == "sched-info" {
                    got.agrees()
                } else {
                    got.agrees_on_count_and_upper_sum()
                };
                check(
                    ok,
                    format!("run-queue oracle, {mode} mode, {name}: {}", got.describe()),
                );
                if let Some(late) = got.kernel_exceeds_lateness() {
                    // Reported, not failed: the third account says the kernel over-counted
                    // (docs/probes.md, what remains).
                    println!(
                        "podstat-vm: note run-queue oracle, {mode} mode, {name}: the kernel's run_delay {:.6} s exceeds the threads' own lateness {late:.6} s",
                        got.run_delay
                    );
                }
                for bad in got.inconsistencies() {
                    check(
                        false,
                        format!("run-queue oracle, {mode} mode, {name}: {bad}"),
                    );
                }
            }
            let _ = agent.stop(15, Duration::from_secs(10));
        }
        println!(
            "podstat-vm: [{:>4.1}s] run-queue oracle done",
            started.elapsed().as_secs_f64()
        );
    }
    drop(tree);
    assert!(
        failures.is_empty(),
        "{} assertion(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    println!(
        "podstat-vm: [{:>4.1}s] scenario passed",
        started.elapsed().as_secs_f64()
    );
}
