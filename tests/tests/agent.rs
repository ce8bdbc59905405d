//! The agent as a process: eBPF probe attached, HTTP behaviour, shutdown, `podstat check`.

use std::{io::Read as _, process::Command, time::Duration};

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
    std::thread::sleep(Duration::from_millis(300));
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
    std::thread::sleep(Duration::from_millis(500));
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
