//! The agent as a process: eBPF probe attached, HTTP behaviour, shutdown, `podstat check`.

use std::{
    io::Read as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, find, http_get, parse_exposition, podstat_bin, probe_attached, require_root,
    scrape, start_agent, test_ids, v1_hierarchies,
};

#[test]
fn sched_switch_probe_attaches_and_counts() {
    require_root();
    let (_agent, addr) = start_agent(&["--no-collector.cgroup"]);
    let first = parse_exposition(&http_get(addr, "/metrics", &[]).expect("scrape").text());
    let attached = probe_attached(&first, "sched_switch");
    assert!(
        (attached.value - 1.0).abs() < f64::EPSILON,
        "sched_switch probe not attached: see the agent's log above"
    );
    let total = |s: &[podstat_tests::Sample]| -> f64 {
        find(s, "podstat_node_context_switches_total", &[])
            .iter()
            .map(|x| x.value)
            .sum()
    };
    thread::sleep(Duration::from_millis(300));
    let second = parse_exposition(&http_get(addr, "/metrics", &[]).expect("scrape").text());
    assert!(
        total(&second) > total(&first),
        "context switch counter did not grow: {} -> {}",
        total(&first),
        total(&second)
    );
}

/// With only the throttle collector on, every probe map's overflow counter is exported,
/// whichever collector used to own the family (before, `throttle_stats` overflows were silent
/// without the sched collector, and in throttle switch mode, which this host runs in, the
/// family was missing). And `KNOWN` overflows are counted: with `--probe.max-cgroups 1` a pod
/// and its container cannot both fit.
#[test]
fn throttle_only_agent_exports_every_map_overflow() {
    require_root();
    let v1 = v1_hierarchies();
    let (uid, cid) = test_ids(7);
    let pod = format!(
        "podstat-test-{}/kubepods/burstable/pod{uid}",
        std::process::id()
    );
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&format!("{pod}/{cid}"));
    let (_agent, addr) = start_agent(&[
        "--no-collector.cgroup",
        "--no-collector.sched",
        "--no-collector.net",
        "--probe.max-cgroups",
        "1",
    ]);
    let samples = scrape(addr);
    assert!(
        (probe_attached(&samples, "cfs_throttle").value - 1.0).abs() < f64::EPSILON,
        "cfs_throttle probe not attached: see the agent's log above"
    );
    assert!(
        find(
            &samples,
            "podstat_probe_attached",
            &[("probe", "sched_switch")]
        )
        .is_empty(),
        "the sched collector is off: no sched_switch probe series"
    );
    for map in [
        "throttle_stats",
        "wait_start",
        "preempt_pairs",
        "net_stats",
        "rx_queue",
        "arfs_stats",
        "known",
    ] {
        let found = find(&samples, "podstat_bpf_map_full_total", &[("map", map)]);
        assert_eq!(
            found.len(),
            1,
            "podstat_bpf_map_full_total{{map=\"{map}\"}} missing with only the throttle collector"
        );
    }
    let known = find(&samples, "podstat_bpf_map_full_total", &[("map", "known")])[0].value;
    assert!(
        known >= 1.0,
        "a pod and its container against --probe.max-cgroups 1: KNOWN must have refused one, counted {known}"
    );
}

#[test]
fn negotiation_gzip_health_and_404() {
    require_root();
    let (_agent, addr) = start_agent(&["--no-collector.sched"]);
    let text = http_get(addr, "/metrics", &[]).expect("scrape");
    assert!(
        text.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        text.headers
    );
    assert!(!text.text().contains("# EOF"));

    let om = http_get(
        addr,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .expect("scrape");
    assert!(
        om.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        om.headers
    );
    assert!(
        om.text().trim_end().ends_with("# EOF"),
        "OpenMetrics body must end with # EOF"
    );

    let gz = http_get(addr, "/metrics", &[("Accept-Encoding", "gzip")]).expect("scrape");
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    let mut plain = String::new();
    flate2_free_gunzip(&gz.body, &mut plain);
    assert!(
        plain.contains("podstat_build_info"),
        "gunzipped body lacks podstat_build_info"
    );

    assert_eq!(
        http_get(addr, "/healthz", &[]).expect("healthz").status,
        200
    );
    assert_eq!(http_get(addr, "/readyz", &[]).expect("readyz").status, 200);
    assert_eq!(http_get(addr, "/nope", &[]).expect("404").status, 404);
}

/// gunzip through the system's `gzip -dc` (keeps this crate free of a compression dependency).
fn flate2_free_gunzip(body: &[u8], out: &mut String) {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning gzip -dc");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), body).expect("writing to gzip");
    drop(child.stdin.take());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(out)
        .expect("reading gzip output");
    assert!(
        child.wait().expect("gzip").success(),
        "gzip -dc rejected the body: not valid gzip"
    );
}

/// A field of `/proc/<pid>/task/<tid>/status`.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
        .trim()
        .to_owned()
}

/// Once the probes are attached the agent holds no capability in any set, on any of its
/// threads, and has `no_new_privs`; yet a container cgroup created afterwards is tracked (the
/// refresh writes `KNOWN` without `CAP_BPF`) and its run-queue series are read from the maps.
#[test]
fn agent_holds_no_capability_after_attach() {
    require_root();
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-caps", std::process::id());
    let (uid, cid) = test_ids(41);
    let ctr = format!("{root}/kubepods/besteffort/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&format!("{root}/kubepods/besteffort"));
    let (agent, addr) =
        start_agent(&["--no-collector.cgroup", "--probe.refresh-interval", "200ms"]);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).expect("agent tasks");
    let mut seen = 0;
    for t in tasks {
        let t = t.expect("task entry").path();
        let status = std::fs::read_to_string(t.join("status")).expect("task status");
        for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            assert_eq!(
                u64::from_str_radix(&status_field(&status, key), 16).expect("hex"),
                0,
                "{} {key} is not empty:\n{status}",
                t.display()
            );
        }
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
        seen += 1;
    }
    assert!(seen >= 2, "the agent runs its refresh thread: {seen} tasks");
    // Root on this host has CAP_SETPCAP, so the bounding set goes too.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    assert_eq!(
        u64::from_str_radix(&status_field(&status, "CapBnd:"), 16).expect("hex"),
        0,
        "{status}"
    );

    tree.mkdir(&ctr);
    let mut load = tree.spawn(&ctr, Command::new(LOAD).args(["spin-sleep", "1", "1", "1"]));
    let _ = load.wait();
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(addr);
        if find(&s, "podstat_runqueue_latency_seconds_count", &labels)
            .iter()
            .any(|x| x.value > 0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no run-queue series for a cgroup created after the drop: the maps are not usable without capabilities"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

const LOAD: &str = env!("CARGO_BIN_EXE_podstat-test-load");

#[test]
fn check_reports_this_host() {
    require_root();
    let out = Command::new(podstat_bin())
        .args(["check", "--output", "json"])
        .output()
        .expect("running podstat check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podstat check failed on this host:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "\"after attach\"",
        "every capability dropped",
        "\"cpu controller\"",
        "\"BTF\"",
        "\"sched_switch\"",
        "\"cgroup\"",
    ] {
        assert!(text.contains(want), "check output lacks {want}:\n{text}");
    }
    let human = Command::new(podstat_bin())
        .arg("check")
        .output()
        .expect("podstat check");
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("Hybrid") || human.contains("Legacy"),
        "this host is hybrid:\n{human}"
    );
}

#[test]
fn bad_flag_is_a_usage_error_not_a_crash() {
    let out = Command::new(podstat_bin())
        .args(["agent", "--web.listen-address", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--web.listen-address"));
}

#[test]
fn live_scrape_passes_promtool_lint() {
    require_root();
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found: install Debian's prometheus package (cargo xtask test does)"
            )
        });
    // Everything on, with a throttled pod that has run, so every family is in the scrape.
    let v1 = v1_hierarchies();
    let (uid, cid) = test_ids(41);
    let ctr = format!(
        "podstat-test-{}-lint/kubepods/burstable/pod{uid}/{cid}",
        std::process::id()
    );
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&ctr);
    tree.write(0, &ctr, "cpu.cfs_quota_us", "20000");
    let (_agent, addr) = start_agent(&["--probe.refresh-interval", "200ms"]);
    thread::sleep(Duration::from_millis(500));
    let mut load = tree.spawn(
        &ctr,
        Command::new(env!("CARGO_BIN_EXE_podstat-test-load")).args(["busy", "2", "1"]),
    );
    let _ = load.wait();
    let body = http_get(addr, "/metrics", &[]).expect("scrape").body;
    let text = String::from_utf8_lossy(&body);
    for family in [
        "podstat_runqueue_latency_seconds_bucket",
        "podstat_cpu_throttle_pause_seconds_bucket",
        "podstat_cpu_throttled_seconds_total",
    ] {
        assert!(
            text.contains(&format!("{family}{{")),
            "{family} missing from the scrape"
        );
    }
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), &body)
        .expect("writing to promtool");
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on a live scrape:\n{said}"
    );
}
