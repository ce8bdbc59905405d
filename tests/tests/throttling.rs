//! Real CFS throttling on this machine's v1 cpu hierarchy, scraped from a real agent.
//!
//! Layout as the kubelet's cgroupfs driver writes it:
//! `podstat-test-<pid>/kubepods/burstable/pod<uid>/<container id>`.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, find, http_get, parse_exposition, require_root, start_agent, test_ids,
    v1_hierarchies,
};

const NS_PER_SEC: f64 = 1e9;

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, set up, scraped and compared field by field"
)]
#[expect(
    clippy::float_cmp,
    reason = "counters are integers in f64: the agent and cpu.stat must agree exactly"
)]
fn throttled_container_is_reported_and_matches_cpu_stat() {
    require_root();
    let started = Instant::now();
    let v1 = v1_hierarchies();
    let (uid, busy) = test_ids(1);
    let (_, idle) = test_ids(2);
    let root = format!("podstat-test-{}", std::process::id());
    let pod = format!("{root}/kubepods/burstable/pod{uid}");
    let busy_cg = format!("{pod}/{busy}");
    let idle_cg = format!("{pod}/{idle}");

    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&busy_cg);
    tree.mkdir(&idle_cg);
    // 20 ms every 100 ms.
    tree.write(0, &busy_cg, "cpu.cfs_period_us", "100000");
    tree.write(0, &busy_cg, "cpu.cfs_quota_us", "20000");

    // Two busy processes, born inside the busy container, for at least 2 s.
    let mut load = tree.spawn(
        &busy_cg,
        Command::new("sh").args(["-c", "yes >/dev/null & yes >/dev/null & wait"]),
    );
    let mut sleeper = tree.spawn(&idle_cg, Command::new("sleep").arg("30"));
    thread::sleep(Duration::from_millis(2500));
    tree.kill_all(&busy_cg);
    let _ = load.wait();
    // Counters are static from here on, so the agent and cpu.stat must agree exactly.
    thread::sleep(Duration::from_millis(300));

    let (mut agent, addr) = start_agent(&["--no-collector.sched"]);
    let resp = http_get(addr, "/metrics", &[]).expect("scraping /metrics");
    assert_eq!(
        resp.status,
        200,
        "/metrics answered {}: {}",
        resp.status,
        resp.text()
    );
    let samples = parse_exposition(&resp.text());

    let direct = tree.read(0, &busy_cg, "cpu.stat");
    let field = |name: &str| -> f64 {
        direct
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from cpu.stat:\n{direct}"))
    };
    let one = |name: &str, cid: &str| -> f64 {
        let hits = find(
            &samples,
            name,
            &[
                ("pod_uid", uid.as_str()),
                ("container_id", cid),
                ("qos", "burstable"),
            ],
        );
        assert_eq!(
            hits.len(),
            1,
            "expected one {name} series for container {cid}, got {hits:?}\nscrape:\n{}",
            resp.text()
        );
        hits[0].value
    };

    let periods = one("podstat_cpu_throttled_periods_total", &busy);
    let seconds = one("podstat_cpu_throttled_seconds_total", &busy);
    assert!(periods > 0.0, "busy container not throttled: {periods}");
    assert!(
        seconds > 0.0,
        "busy container has no throttled time: {seconds}"
    );
    assert_eq!(
        periods,
        field("nr_throttled"),
        "agent and cpu.stat disagree on nr_throttled"
    );
    assert_eq!(
        one("podstat_cpu_periods_total", &busy),
        field("nr_periods"),
        "nr_periods"
    );
    let want = field("throttled_time") / NS_PER_SEC;
    assert!(
        (seconds - want).abs() < 1e-6,
        "throttled seconds: agent {seconds}, cpu.stat {want}"
    );
    let limit = one("podstat_cpu_limit_cores", &busy);
    assert!((limit - 0.2).abs() < 1e-9, "limit cores {limit}");
    assert!(
        one("podstat_cpu_usage_seconds_total", &busy) > 0.3,
        "2 busy processes at 0.2 cores for 2.5 s use > 0.3 s"
    );

    // The sibling: no quota, so no periods and never throttled.
    assert_eq!(
        one("podstat_cpu_throttled_periods_total", &idle),
        0.0,
        "idle sibling throttled"
    );
    // The pod-level cgroup is there too, with container="" and container_id="".
    let pod_rows = find(
        &samples,
        "podstat_cpu_usage_seconds_total",
        &[
            ("pod_uid", uid.as_str()),
            ("container_id", ""),
            ("container", ""),
        ],
    );
    assert_eq!(pod_rows.len(), 1, "pod-level series missing");

    let status = agent
        .stop(libc::SIGTERM, Duration::from_secs(10))
        .expect("agent did not exit within 10 s of SIGTERM");
    assert!(status.success(), "agent exited with {status} after SIGTERM");
    drop(sleeper.kill());
    let _ = sleeper.wait();
    assert!(
        started.elapsed() < Duration::from_mins(1),
        "test took too long"
    );
}

#[test]
fn series_disappear_when_the_cgroup_goes_away() {
    require_root();
    let v1 = v1_hierarchies();
    let (uid, cid) = test_ids(3);
    let root = format!("podstat-test-{}-gone", std::process::id());
    let ctr = format!("{root}/kubepods/besteffort/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&ctr);
    let (_agent, addr) = start_agent(&["--no-collector.sched"]);
    let scrape = || parse_exposition(&http_get(addr, "/metrics", &[]).expect("scrape").text());
    let before = scrape();
    assert_eq!(
        find(
            &before,
            "podstat_cpu_usage_seconds_total",
            &[("container_id", cid.as_str()), ("qos", "besteffort")]
        )
        .len(),
        1,
        "container not discovered"
    );
    drop(tree);
    let after = scrape();
    assert!(
        find(
            &after,
            "podstat_cpu_usage_seconds_total",
            &[("pod_uid", uid.as_str())]
        )
        .is_empty(),
        "series of a removed cgroup still exported"
    );
}
