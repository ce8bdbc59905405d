//! Golden exposition: the agent's collectors pointed at fixture host trees, rendered in the
//! Prometheus text format and diffed against checked-in files.
//!
//! Update after an intended change with `UPDATE_GOLDEN=1 cargo test -p podstat --test golden`
//! and review the diff. `cargo xtask test` runs `promtool check metrics` on every golden file.

use std::{path::PathBuf, sync::Arc, time::Duration};

use podstat::{
    Paths,
    agent::{Agent, Config},
    collector::cgroup::Options,
    exposition::Format,
    server::render,
};

const FIXTURES: &[&str] = &[
    "v2-systemd-containerd",
    "v2-cgroupfs-crio",
    "v1-cgroupfs-docker",
    "v1-cpu,cpuacct-systemd",
    "hybrid-cgroupfs-containerd",
];

/// Lines whose values change from run to run.
fn deterministic(line: &str) -> bool {
    !(line.starts_with("podstat_collector_duration_seconds")
        || line.starts_with("podstat_build_info"))
}

/// Every family the fixture has (`--collector.cgroup.extended`): the golden files cover all.
fn render_fixture(name: &str, non_pod: bool) -> String {
    render_with(name, non_pod, true, &["cgroup"])
}

fn render_with(name: &str, non_pod: bool, extended: bool, collectors: &[&'static str]) -> String {
    let host = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hosts")
        .join(name);
    let paths = Paths {
        cgroupfs: host.join("sys/fs/cgroup"),
        procfs: host.join("proc"),
        sysfs: host.join("sys"),
    };
    let opts = Options {
        non_pod,
        extended,
        ..Options::default()
    };
    let running = Agent::start(Config {
        enabled: collectors.to_vec(),
        paths,
        cgroup: opts,
        sched: podstat::collector::sched::Options::default(),
        probes: None,
        refresh_interval: Duration::from_secs(5),
        metadata: Arc::new(podstat::metadata::Store::default()),
        drop_privileges: false,
    })
    .expect("agent starts");
    let (body, _) = render(&running.registry, Format::Text, false).expect("render");
    let mut out = String::new();
    for l in String::from_utf8(body)
        .expect("utf-8")
        .lines()
        .filter(|l| deterministic(l))
    {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[test]
fn golden_exposition_matches() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut combined = String::new();
    let mut failures = Vec::new();
    for name in FIXTURES {
        for non_pod in [false, true] {
            let got = render_fixture(name, non_pod);
            let file = dir.join(format!(
                "{name}{}.prom",
                if non_pod { "+non-pod" } else { "" }
            ));
            if update {
                std::fs::create_dir_all(&dir).expect("mkdir golden");
                std::fs::write(&file, &got).expect("write golden");
            } else {
                let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                        file.display()
                    )
                });
                if got != want {
                    failures.push(format!(
                        "{} differs:\n--- want\n{want}\n--- got\n{got}",
                        file.display()
                    ));
                }
            }
            if !non_pod {
                combined.push_str(&got);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(if the change is intended: UPDATE_GOLDEN=1 cargo test -p podstat --test golden)",
        failures.join("\n")
    );
    assert!(
        combined.contains("podstat_cpu_throttled_periods_total"),
        "fixtures produced no throttling series"
    );
}

/// The default set (no `--collector.cgroup.extended`) is the extended one without the families
/// the series budget leaves out: the same lines otherwise, byte for byte.
#[test]
fn default_leaves_out_only_the_extended_families() {
    use podstat::collector::cgroup::{BURST, EXTENDED};
    for name in FIXTURES {
        let all = render_with(name, false, true, &["cgroup"]);
        let default = render_with(name, false, false, &["cgroup"]);
        // Label sets of the cgroups with a burst allowance: they keep their burst families.
        let limit = podstat::collector::cgroup::CPU_BURST_LIMIT_SECONDS.exposed;
        let with_burst: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix(limit)?.rsplit_once(' '))
            .filter(|(_, v)| v.parse::<f64>().is_ok_and(|v| v > 0.0))
            .map(|(labels, _)| labels)
            .collect();
        let sample_of = |l: &str, families: &[podstat::metric::Family]| {
            families.iter().find_map(|f| {
                l.strip_prefix(f.exposed)
                    .filter(|rest| rest.starts_with('{'))
                    .and_then(|rest| rest.rsplit_once(' '))
                    .map(|(labels, _)| labels.to_owned())
            })
        };
        let header_of = |l: &str, families: &[podstat::metric::Family]| {
            families.iter().any(|f| {
                [
                    format!("# HELP {} ", f.exposed),
                    format!("# TYPE {} ", f.exposed),
                ]
                .iter()
                .any(|p| l.starts_with(p.as_str()))
            })
        };
        let any_burst = all
            .lines()
            .filter_map(|l| sample_of(l, BURST))
            .any(|labels| with_burst.contains(&labels.as_str()));
        let left_out = |l: &str| {
            sample_of(l, EXTENDED).is_some()
                || header_of(l, EXTENDED)
                || sample_of(l, BURST).is_some_and(|labels| !with_burst.contains(&labels.as_str()))
                || (header_of(l, BURST) && !any_burst)
        };
        let want: Vec<&str> = all.lines().filter(|l| !left_out(l)).collect();
        let got: Vec<&str> = default.lines().collect();
        assert_eq!(
            got, want,
            "{name}: the default set differs from extended minus EXTENDED/BURST"
        );
        assert!(
            all.lines().count() > default.lines().count(),
            "{name}: nothing left out"
        );
        for f in EXTENDED {
            assert!(
                !default.contains(&format!("{}{{", f.exposed)),
                "{name}: {} exported by default",
                f.exposed
            );
        }
    }
}

/// The `net` collector on a host with an mlx5 NIC (4 queues, IRQs pinned one per CPU), a veth
/// with RPS and RFS configured, two NUMA nodes with one LLC each; 5.10 softnet_stat layout.
/// The fixture's devices do not exist in this network namespace, so no ethtool answer.
#[test]
fn golden_net_exposition_matches() {
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/net-mlx5.prom");
    let got = render_with("net-mlx5", false, false, &["net"]);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&file, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", file.display()));
    assert_eq!(
        got, want,
        "net golden differs (if intended: UPDATE_GOLDEN=1 cargo test -p podstat --test golden)"
    );
    for needle in [
        "podstat_node_softnet_processed_total{cpu=\"3\"} 73728",
        "podstat_net_rx_queue_irq_cpu{device=\"enp59s0f0np0\",queue=\"2\",irq=\"100\",cpu=\"3\"} 1",
        "podstat_net_rps_cpus{device=\"veth-fx0\",queue=\"0\"} 2",
        "podstat_net_rps_sock_flow_entries 32768",
        "podstat_node_cpu_topology_info{cpu=\"2\",llc=\"2\",numa_node=\"1\"} 1",
    ] {
        assert!(got.contains(needle), "{needle} missing from:\n{got}");
    }
    assert!(!got.contains("device=\"lo\""), "loopback exported:\n{got}");
}
