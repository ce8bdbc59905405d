//! The operator views on the real kernel: `podstat explain` on the quota-burn, noisy-neighbour
//! and idle scenarios, and `podstat top` in a real terminal (tmux).
//!
//! cgroups on this machine's v1 cpu hierarchy in the kubelet's cgroupfs layout, as in
//! `sched.rs`. The test root gets the largest `cpu.shares`, so that other work on this shared
//! machine does not starve the scenarios (our own cgroup; the host's are left alone).

use std::{
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, find, podstat_bin, require_root, scrape, start_agent, test_ids, v1_hierarchies,
};

const LOAD: &str = env!("CARGO_BIN_EXE_podstat-test-load");

/// A test tree whose root holds pods under `kubepods/burstable`.
struct Scenario {
    tree: CgroupTree,
    root: String,
}

impl Scenario {
    fn new(tag: &str) -> Self {
        let v1 = v1_hierarchies();
        let root = format!("podstat-test-{}-{tag}", std::process::id());
        let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
        tree.mkdir(&root);
        tree.write(0, &root, "cpu.shares", "262144");
        Self { tree, root }
    }

    /// Creates a container cgroup of a new pod and returns (pod uid, container id, rel path).
    fn container(&mut self, seed: u32) -> (String, String, String) {
        let (uid, cid) = test_ids(seed);
        let rel = format!("{}/kubepods/burstable/pod{uid}/{cid}", self.root);
        self.tree.mkdir(&rel);
        (uid, cid, rel)
    }
}

/// Runs `podstat explain` with `args`, bounded to `within`; panics with its stderr on failure.
fn explain(args: &[&str], within: Duration) -> String {
    let mut child = Command::new(podstat_bin())
        .arg("explain")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning podstat explain");
    let deadline = Instant::now() + within;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            panic!(
                "podstat explain {args:?} did not finish within {within:?}; stderr: {}",
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child
        .wait_with_output()
        .expect("collecting explain's output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(
        status.success(),
        "podstat explain {args:?} failed ({status}): {stderr}"
    );
    eprintln!(
        "--- podstat explain {args:?} (stderr: {})\n{stdout}",
        stderr.trim()
    );
    stdout
}

fn num(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in {v:#}"))
}

#[test]
fn explain_quota_burn_names_throttling_and_recommends_a_pool_of_one() {
    require_root();
    let mut sc = Scenario::new("explain-burn");
    let (uid, _cid, ctr) = sc.container(41);
    sc.tree.write(0, &ctr, "cpu.cfs_period_us", "100000");
    sc.tree.write(0, &ctr, "cpu.cfs_quota_us", "50000");
    // Starts first, so its cgroups exist when explain resolves the pod; outlives the window.
    let mut load = sc
        .tree
        .spawn(&ctr, Command::new(LOAD).args(["busy", "4", "30"]));
    thread::sleep(Duration::from_millis(300));
    // Local mode: explain loads the probes itself, reading the cgroup by its path.
    let path = format!("{}/{ctr}", v1_hierarchies().cpu.display());
    let out = explain(
        &[&path, "--duration", "6s", "--output", "json"],
        Duration::from_mins(1),
    );
    sc.tree.kill_all(&ctr);
    let _ = load.wait();
    let d: serde_json::Value = serde_json::from_str(&out).expect("explain --output json");
    assert_eq!(d["pod_uid"], uid.as_str());
    assert_eq!(
        d["causes"][0], "throttling",
        "throttling is not named as the cause: {d:#}"
    );
    let t = &d["throttling"][0];
    assert_eq!(t["problem"], true);
    assert!((num(t, "/limit_cores") - 0.5).abs() < 1e-9);
    // 50 ms of quota on min(4, CPUs) CPUs runs out after about 50 ms / CPUs: early.
    let after = num(t, "/quota_exhausted_after_p50_seconds");
    assert!(
        after < 0.05 && t["exhausted_early"] == true,
        "quota ran out {after} s into the period: not early"
    );
    let threads = num(t, "/runnable_threads");
    assert!(
        (3.0..=5.0).contains(&threads),
        "{threads} runnable threads at throttle, expected about 4"
    );
    let share = num(t, "/throttled_period_share");
    assert!(share > 0.5, "throttled in only {share} of periods");
    let rec = &t["recommendation"];
    let pool = rec["pool_max_threads"].as_u64();
    let limit = rec["limit_min_cores"].as_f64();
    assert!(
        pool.is_some_and(|p| p <= 1) || limit.is_some_and(|l| l > 0.5),
        "recommendation neither a pool of at most 1 thread nor a larger limit: {rec:#}"
    );
    assert_eq!(pool, Some(1), "{rec:#}");
    let text = rec["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("at most 1 thread") && text.contains("raise the limit to at least"),
        "{text}"
    );
}

#[test]
fn explain_noisy_neighbour_names_the_hog_pod() {
    require_root();
    let mut sc = Scenario::new("explain-noisy");
    let (uid_a, _, a) = sc.container(42);
    let (uid_b, _, b) = sc.container(43);
    // The per-pod preemption counts are off by default (series budget); this test reads them.
    let (_agent, addr) = start_agent(&[
        "--no-collector.cgroup",
        "--probe.refresh-interval",
        "200ms",
        "--collector.sched.preempted-by-pod",
    ]);
    thread::sleep(Duration::from_millis(500));
    let hogs = (podstat_tests::cpus() * 2).to_string();
    let mut victim = sc
        .tree
        .spawn(&a, Command::new(LOAD).args(["spin-sleep", "60", "1", "30"]));
    let mut hog = sc
        .tree
        .spawn(&b, Command::new(LOAD).args(["busy", &hogs, "30"]));
    thread::sleep(Duration::from_millis(700)); // the tracker has seen both
    // From a running agent: no second set of probes.
    let url = format!("http://{addr}/metrics");
    let out = explain(
        &[&uid_a, "--from", &url, "--duration", "5s"],
        Duration::from_mins(1),
    );
    // The kernel's pair map, as the agent exports it: A preempted by B, by name (uid here).
    let scraped = scrape(addr);
    let by_b = find(
        &scraped,
        "podstat_cpu_preempted_by_pod_total",
        &[
            ("pod_uid", uid_a.as_str()),
            ("preemptor_pod_uid", uid_b.as_str()),
        ],
    );
    assert!(
        by_b.first().is_some_and(|s| s.value > 0.0),
        "no podstat_cpu_preempted_by_pod_total for A by B: {by_b:?}"
    );
    let full = find(
        &scraped,
        "podstat_bpf_map_full_total",
        &[("map", "preempt_pairs")],
    );
    assert!(
        full.first().is_some_and(|s| s.value == 0.0),
        "the preempt_pairs map reports overflow or is missing: {full:?}"
    );
    sc.tree.kill_all(&a);
    sc.tree.kill_all(&b);
    let _ = (victim.wait(), hog.wait());
    let main = out
        .lines()
        .find(|l| l.contains("main preemptor:"))
        .unwrap_or_else(|| panic!("no main preemptor named:\n{out}"));
    assert!(
        main.contains(&format!("pod {uid_b} ")),
        "the main preemptor is not the hog pod {uid_b}: {main}"
    );
    assert!(out.contains("run-queue latency p50"), "{out}");
}

/// `podstat_runqueue_wait_seconds_total` of `uid`'s cgroups by `by`, summed.
fn waited(samples: &[podstat_tests::Sample], uid: &str, by: &str) -> f64 {
    find(
        samples,
        "podstat_runqueue_wait_seconds_total",
        &[("pod_uid", uid), ("by", by)],
    )
    .iter()
    .map(|s| s.value)
    .sum()
}

/// The case: a request/response-like victim in a low-weight pod works 1 ms and sleeps
/// 1 ms, so it is rarely preempted and its waits are wakeup waits, beside a heavy pod (high
/// cpu.shares) running twice as many busy threads as CPUs. Whose work it waited behind is the
/// heavy pod's, and explain says so by name.
#[test]
fn explain_sleep_heavy_victim_waits_behind_the_heavy_pod() {
    require_root();
    let mut sc = Scenario::new("explain-waits");
    let (uid_a, _, a) = sc.container(44);
    let (uid_b, _, b) = sc.container(45);
    let pod_of = |uid: &str| format!("{}/kubepods/burstable/pod{uid}", sc.root);
    sc.tree.write(0, &pod_of(&uid_a), "cpu.shares", "102");
    sc.tree.write(0, &pod_of(&uid_b), "cpu.shares", "10240");
    let (_agent, addr) =
        start_agent(&["--no-collector.cgroup", "--probe.refresh-interval", "200ms"]);
    thread::sleep(Duration::from_millis(500));
    let hogs = (podstat_tests::cpus() * 2).to_string();
    let mut hog = sc
        .tree
        .spawn(&b, Command::new(LOAD).args(["busy", &hogs, "30"]));
    let mut victim = sc
        .tree
        .spawn(&a, Command::new(LOAD).args(["spin-sleep", "1", "1", "30"]));
    thread::sleep(Duration::from_millis(700)); // the tracker has seen both
    let s0 = scrape(addr);
    let url = format!("http://{addr}/metrics");
    let out = explain(
        &[
            &uid_a,
            "--from",
            &url,
            "--duration",
            "6s",
            "--output",
            "json",
        ],
        Duration::from_mins(1),
    );
    let s1 = scrape(addr);
    sc.tree.kill_all(&a);
    sc.tree.kill_all(&b);
    let _ = (victim.wait(), hog.wait());

    let by = |by: &str| waited(&s1, &uid_a, by) - waited(&s0, &uid_a, by);
    let (same, other, system) = (by("same_pod"), by("other_pod"), by("system"));
    let total = same + other + system;
    let preempted = |s: &[podstat_tests::Sample]| -> f64 {
        find(
            s,
            "podstat_cpu_preemptions_total",
            &[("pod_uid", uid_a.as_str())],
        )
        .iter()
        .map(|x| x.value)
        .sum()
    };
    eprintln!(
        "victim waited {total:.3} s: behind other pods {other:.3} s, its own pod {same:.3} s, the system {system:.3} s; preempted {} times",
        preempted(&s1) - preempted(&s0)
    );
    assert!(
        total > 0.5,
        "the victim waited only {total} s in 6 s beside the hogs"
    );
    assert!(
        other >= 0.7 * total,
        "only {other:.3} of the victim's {total:.3} s of waiting is attributed to other pods"
    );
    // The heavy pod is its top neighbour by waiting time, in the agent's export...
    let mut behind: Vec<(String, f64)> = find(
        &s1,
        "podstat_runqueue_wait_by_pod_seconds_total",
        &[("pod_uid", uid_a.as_str())],
    )
    .iter()
    .map(|s| (s.label("preemptor_pod_uid").to_owned(), s.value))
    .collect();
    behind.sort_by(|x, y| y.1.total_cmp(&x.1));
    assert_eq!(
        behind.first().map(|b| b.0.as_str()),
        Some(uid_b.as_str()),
        "the heavy pod is not the top neighbour by waiting time: {behind:?}"
    );
    let full = find(&s1, "podstat_bpf_map_full_total", &[("map", "wait_pairs")]);
    assert!(
        full.first().is_some_and(|s| s.value == 0.0),
        "the wait_pairs map reports overflow or is missing: {full:?}"
    );
    // ...and explain names it, and calls it noisy neighbours.
    let d: serde_json::Value = serde_json::from_str(&out).expect("explain --output json");
    let n = &d["neighbours"];
    assert_eq!(
        n["waited_behind"][0]["pod_uid"],
        uid_b.as_str(),
        "explain does not name the heavy pod first: {d:#}"
    );
    assert!(
        num(n, "/waited_behind/0/share_of_waiting") >= 0.5,
        "explain gives the heavy pod a small share: {d:#}"
    );
    assert!(
        d["causes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "noisy_neighbours")),
        "explain does not find noisy neighbours: {d:#}"
    );
}

#[test]
fn explain_idle_pod_reports_nothing_wrong() {
    require_root();
    let mut sc = Scenario::new("explain-idle");
    let (uid, _, ctr) = sc.container(44);
    // Wakes every 50 ms and works for 1 ms: measured, but nothing wrong.
    let mut idle = sc.tree.spawn(
        &ctr,
        Command::new(LOAD).args(["spin-sleep", "1", "50", "30"]),
    );
    thread::sleep(Duration::from_millis(300));
    let out = explain(&[&uid, "--duration", "4s"], Duration::from_mins(1));
    sc.tree.kill_all(&ctr);
    let _ = idle.wait();
    assert!(
        out.contains("Verdict: nothing wrong"),
        "an idle pod was diagnosed with a problem:\n{out}"
    );
    assert!(out.contains(&format!("(uid {uid})")), "{out}");
    let waits: f64 = out
        .split(" waits;")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(
        waits >= 10.0,
        "the idle pod's wakeups were not measured ({waits} waits):\n{out}"
    );
}

/// A detached tmux session running a command; killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, cmd: &str) -> Self {
        assert!(
            Command::new("tmux")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs tmux (Debian package tmux; `cargo xtask test` installs it)"
        );
        let session = Self(name.to_owned());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "200",
                "-y",
                "40",
                cmd,
            ])
            .env("TERM", "xterm-256color")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux new-session {name} failed");
        session
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.0])
            .args(keys)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux send-keys {keys:?} failed");
    }

    fn capture(&self) -> String {
        Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `ok`, or panics with the last screen.
    fn wait_for(&self, what: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.capture();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "top: {what} not on screen within {within:?}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The table rows under the header line (`POD …`), as on screen.
fn table_rows(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("POD "))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The CPU used (the part before `/` of CPU/LIMIT, the third column) of a row.
fn cpu_of(row: &str) -> f64 {
    row.split_whitespace()
        .nth(2)
        .and_then(|c| c.split('/').next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn top_in_a_terminal_sorts_and_filters() {
    require_root();
    let mut sc = Scenario::new("top");
    let (uid_t, _, t) = sc.container(45);
    let (uid_u, _, u) = sc.container(46);
    let (uid_i, _, i) = sc.container(47);
    sc.tree.write(0, &t, "cpu.cfs_period_us", "100000");
    sc.tree.write(0, &t, "cpu.cfs_quota_us", "20000");
    let mut loads = vec![
        sc.tree
            .spawn(&t, Command::new(LOAD).args(["busy", "2", "40"])),
        sc.tree
            .spawn(&u, Command::new(LOAD).args(["busy", "1", "40"])),
        sc.tree.spawn(
            &i,
            Command::new(LOAD).args(["spin-sleep", "1", "100", "40"]),
        ),
    ];
    let (_agent, addr) = start_agent(&["--probe.refresh-interval", "200ms"]);
    let name = format!("podstat-test-top-{}", std::process::id());
    let tmux = Tmux::start(
        &name,
        &format!(
            "{} top --from http://{addr}/metrics",
            podstat_bin().display()
        ),
    );

    // Sorted by throttling (the default): the throttled pod's container comes first.
    let screen = tmux.wait_for(
        "all three test pods with data",
        Duration::from_secs(20),
        |s| {
            let rows = table_rows(s);
            [&uid_t, &uid_u, &uid_i]
                .iter()
                .all(|uid| rows.iter().any(|r| r.contains(uid.as_str())))
                && rows.first().is_some_and(|r| r.contains('%'))
        },
    );
    eprintln!("--- top, sorted by throttling:\n{screen}");
    assert!(screen.contains("sort: throttled"), "{screen}");
    assert!(
        screen.contains("t throttled") && screen.contains("/ filter") && screen.contains("q quit"),
        "the keys are not listed on screen:\n{screen}"
    );
    let first = table_rows(&screen)[0];
    assert!(
        first.starts_with(uid_t.as_str()),
        "the throttled pod {uid_t} is not listed first:\n{screen}"
    );

    // c: by CPU, largest first.
    tmux.keys(&["c"]);
    let screen = tmux.wait_for("sort: cpu", Duration::from_secs(5), |s| {
        s.contains("sort: cpu")
    });
    eprintln!("--- top, sorted by cpu:\n{screen}");
    let cpus: Vec<f64> = table_rows(&screen).iter().map(|r| cpu_of(r)).collect();
    assert!(
        cpus.windows(2).all(|w| w[0] >= w[1]),
        "rows not sorted by CPU: {cpus:?}\n{screen}"
    );

    // /: filter to the idle pod.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &uid_i[..13]]);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the filter applied", Duration::from_secs(5), |s| {
        s.contains(&format!("filter: {}", &uid_i[..13]))
    });
    eprintln!("--- top, filtered:\n{screen}");
    let rows = table_rows(&screen);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.starts_with(uid_i.as_str())),
        "the filter shows other pods:\n{screen}"
    );

    // Esc clears the filter; q quits and gives the terminal back.
    tmux.keys(&["Escape"]);
    tmux.wait_for("the filter cleared", Duration::from_secs(5), |s| {
        s.contains("filter: none") && table_rows(s).iter().any(|r| r.contains(uid_t.as_str()))
    });
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        thread::sleep(Duration::from_millis(100));
    }
    for l in &mut loads {
        let _ = l.kill();
        let _ = l.wait();
    }
}
