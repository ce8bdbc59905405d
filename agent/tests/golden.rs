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

fn render_fixture(name: &str, non_pod: bool) -> String {
    render_with(name, non_pod, &["cgroup"])
}

fn render_with(name: &str, non_pod: bool, collectors: &[&'static str]) -> String {
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
        ..Options::default()
    };
    let running = Agent::start(Config {
        enabled: collectors.to_vec(),
        paths,
        cgroup: opts,
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

/// The `net` collector on a host with an mlx5 NIC (4 queues, IRQs pinned one per CPU), a veth
/// with RPS and RFS configured, two NUMA nodes with one LLC each; 5.10 softnet_stat layout.
/// The fixture's devices do not exist in this network namespace, so no ethtool answer.
#[test]
fn golden_net_exposition_matches() {
    let file =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/net-mlx5.prom");
    let got = render_with("net-mlx5", false, &["net"]);
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
