//! Pod churn with the probes on: container cgroups created and removed by the thousand, each
//! briefly running a task. No series of a removed cgroup stays, every per-cgroup eBPF map
//! returns to its entry count, and the agent's RSS stays flat.
//!
//! The count is `PODSTAT_CHURN_COUNT` (default 3,000, about 40 s here, so that CI spends
//! under two minutes; the RSS bound compares the median of the samples from 1,000 to 2,000 with
//! the median of the last 1,000). Run it by hand with
//! `PODSTAT_CHURN_COUNT=10000`.

use std::time::Duration;

use podstat_tests::{CgroupTree, churn, require_root, start_agent, v1_hierarchies};

#[test]
fn churn_leaves_no_series_no_map_entries_and_no_growth() {
    require_root();
    let total: usize = std::env::var("PODSTAT_CHURN_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    assert!(
        total >= 3000,
        "PODSTAT_CHURN_COUNT must be at least 3000 (the bound compares 1,000-2,000 with the last 1,000)"
    );
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-churn", std::process::id());
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&format!("{root}/kubepods/besteffort"));
    // The agent sees our tree only (other tests' pods would enter its maps and memory).
    let view = churn::PrivateView::new(&v1, &root);
    // PODSTAT_CHURN_AGENT_FLAGS (space-separated) adds agent flags, to bisect a growth.
    let extra = std::env::var("PODSTAT_CHURN_AGENT_FLAGS").unwrap_or_default();
    let mut flags = vec![
        "--probe.refresh-interval",
        "100ms",
        "--path.cgroupfs",
        view.path(),
    ];
    flags.extend(extra.split_whitespace());
    let (agent, addr) = start_agent(&flags);
    let c = churn::churn(
        &mut tree,
        &format!("{root}/"),
        agent.pid(),
        addr,
        total,
        Duration::from_millis(300),
        &["/bin/sleep", "0.01"],
    );
    let curve: Vec<String> = c
        .rss
        .iter()
        .filter(|(n, _)| n % 500 == 0)
        .map(|(n, kib)| format!("{n}: {kib} KiB"))
        .collect();
    eprintln!("RSS by container cgroups churned: {}", curve.join(", "));
    eprintln!(
        "per-cgroup maps before {:?}, after {:?}",
        c.maps_before, c.maps_after
    );
    assert_eq!(
        c.batches_seen, c.batches,
        "the agent did not export every batch's containers while they lived"
    );
    assert!(
        c.leftover_series.is_empty(),
        "series of removed cgroups remain:\n{}",
        c.leftover_series.join("\n")
    );
    assert!(
        c.maps_before.contains_key("KNOWN"),
        "bpftool shows no KNOWN map of the agent: {:?}",
        c.maps_before
    );
    assert_eq!(
        c.maps_after, c.maps_before,
        "per-cgroup maps did not return to their entry counts"
    );
    let growth = c.growth_after(1000).expect("RSS samples");
    assert!(
        growth <= 5.0,
        "RSS grew {growth:.1}% from after the first 1,000 cgroups to the end (medians of 1,000-2,000 and of the last 1,000): {}",
        curve.join(", ")
    );
}
