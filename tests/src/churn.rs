//! Pod churn against a running agent: container cgroups created and removed in batches, each
//! briefly running a task while the agent tracks it, with the agent's RSS and its per-cgroup
//! eBPF maps followed. The soak test (`tests/churn.rs`) and `cargo xtask bench` share it.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{CgroupTree, find, http_get, parse_exposition};

/// The agent's eBPF maps keyed by cgroup id (bpftool shows names cut to 15 characters).
pub const PER_CGROUP_MAPS: [&str; 5] = [
    "KNOWN",
    "PREEMPT_PAIRS",
    "WAIT_PAIRS",
    "THROTTLE_STATS",
    "NET_STATS",
];

/// Container cgroups per batch: 25 pods of 2 containers.
pub const PODS_PER_BATCH: usize = 25;
pub const CONTAINERS_PER_POD: usize = 2;

/// What a churn run saw.
#[derive(Debug, Default)]
pub struct Churn {
    /// (container cgroups created and removed so far, the agent's VmRSS in KiB), after each batch.
    pub rss: Vec<(usize, u64)>,
    /// Batches in which the agent exported a series for every container of the batch.
    pub batches_seen: usize,
    pub batches: usize,
    /// Series of removed cgroups still exported at the end.
    pub leftover_series: Vec<String>,
    /// Entries of each per-cgroup map before the churn and after it.
    pub maps_before: BTreeMap<String, usize>,
    pub maps_after: BTreeMap<String, usize>,
}

impl Churn {
    /// RSS growth in percent from the cgroups `from..2*from` to the last `from` churned:
    /// the median of the samples (one per batch) in each span, so that one sample taken
    /// next to a scrape's transient buffers does not decide it.
    pub fn growth_after(&self, from: usize) -> Option<f64> {
        let median = |lo: usize, hi: usize| -> Option<u64> {
            let mut v: Vec<u64> = self
                .rss
                .iter()
                .filter(|(n, _)| *n > lo && *n <= hi)
                .map(|x| x.1)
                .collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        let end = self.rss.last()?.0;
        let first = median(from, 2 * from)?;
        let last = median(end.saturating_sub(from), end)?;
        #[expect(clippy::cast_precision_loss, reason = "KiB figures are small")]
        Some((last as f64 - first as f64) / first as f64 * 100.0)
    }
}

/// A cgroupfs view holding only one test tree: `<dir>/cpu` and `<dir>/cpuacct` link to
/// `<hierarchy>/<root>`, for the agent's `--path.cgroupfs`. The agent then tracks our
/// cgroups alone, whatever else runs on the machine (other tests' pods would otherwise enter
/// its maps and its memory). Removed on drop.
pub struct PrivateView(pub std::path::PathBuf);

impl PrivateView {
    pub fn new(v1: &crate::V1, root: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{root}-cgroupfs"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (name, h) in [("cpu", &v1.cpu), ("cpuacct", &v1.cpuacct)] {
            std::os::unix::fs::symlink(h.join(root), dir.join(name))
                .unwrap_or_else(|e| panic!("symlink in {}: {e}", dir.display()));
        }
        Self(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp dir")
    }
}

impl Drop for PrivateView {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// VmRSS of `pid`, KiB.
pub fn vm_rss_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}:\n{status}"))
}

/// Entries of the agent `pid`'s per-cgroup maps, by name: the maps whose fds it holds
/// (`map_id` in `/proc/<pid>/fdinfo`), named and dumped by bpftool.
pub fn map_entries(pid: i32) -> BTreeMap<String, usize> {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running bpftool {args:?}: {e} (apt-get install bpftool)"));
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?} JSON: {e}"))
    };
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u64> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = BTreeMap::new();
    for id in ids {
        let id = id.to_string();
        let m = json(&["map", "show", "id", &id]);
        let name = m["name"].as_str().unwrap_or_default();
        if PER_CGROUP_MAPS.contains(&name) {
            let n = json(&["map", "dump", "id", &id])
                .as_array()
                .map_or(0, Vec::len);
            out.insert(name.to_owned(), n);
        }
    }
    out
}

/// Creates and removes `total` container cgroups (rounded up to whole batches) below
/// `<prefix>kubepods/besteffort` in `tree` (`prefix` is `<root>/`, or empty for a
/// [`PrivateView`]'s tree): each batch waits `settle` (a few of the agent's
/// refreshes) so the agent tracks it, runs a short task in every container, scrapes once, and
/// removes the batch. `task` is the command run in each container.
#[expect(
    clippy::too_many_lines,
    reason = "one batch after another, then the checks, as the test reads"
)]
pub fn churn(
    tree: &mut CgroupTree,
    prefix: &str,
    agent_pid: i32,
    addr: SocketAddr,
    total: usize,
    settle: Duration,
    task: &[&str],
) -> Churn {
    let mut c = Churn {
        maps_before: map_entries(agent_pid),
        ..Churn::default()
    };
    let per_batch = PODS_PER_BATCH * CONTAINERS_PER_POD;
    let mut removed_ids: HashSet<String> = HashSet::new();
    let mut done = 0;
    let mut batch = 0usize;
    let pid = std::process::id();
    while done < total {
        let besteffort = format!("{prefix}kubepods/besteffort");
        let mut ids = Vec::with_capacity(per_batch);
        let mut pods = Vec::with_capacity(PODS_PER_BATCH);
        for p in 0..PODS_PER_BATCH {
            let uid = format!("{pid:08x}-{:04x}-4000-8000-{p:012x}", batch & 0xffff);
            let pod = format!("{besteffort}/pod{uid}");
            for k in 0..CONTAINERS_PER_POD {
                let cid = format!("{pid:08x}{batch:016x}{p:08x}{k:032x}");
                tree.mkdir(&format!("{pod}/{cid}"));
                ids.push((pod.clone(), cid));
            }
            pods.push(pod);
        }
        thread::sleep(settle);
        let mut children: Vec<_> = ids
            .iter()
            .map(|(pod, cid)| {
                let rel = format!("{pod}/{cid}");
                let mut cmd = Command::new(task[0]);
                cmd.args(&task[1..]).stderr(Stdio::null());
                tree.spawn(&rel, &mut cmd)
            })
            .collect();
        for ch in &mut children {
            let _ = ch.wait();
        }
        // Every container of the batch is exported while it lives. A scrape within
        // --web.scrape-window of the last one shares its collection: try for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = http_get(addr, "/metrics", &[])
                .map(|r| r.text())
                .unwrap_or_default();
            let samples = parse_exposition(&body);
            let missing = ids
                .iter()
                .filter(|(_, cid)| {
                    find(
                        &samples,
                        "podstat_cpu_usage_seconds_total",
                        &[("container_id", cid)],
                    )
                    .is_empty()
                })
                .count();
            if missing == 0 {
                c.batches_seen += 1;
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "batch {batch}: {missing} of {} containers not exported ({} bytes scraped)",
                    ids.len(),
                    body.len()
                );
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        for pod in &pods {
            tree.remove(pod);
        }
        removed_ids.extend(ids.into_iter().map(|(_, cid)| cid));
        done += per_batch;
        batch += 1;
        c.rss.push((done, vm_rss_kib(agent_pid)));
    }
    c.batches = batch;
    // Two refreshes and a scrape later, nothing of the removed cgroups is left.
    thread::sleep(settle * 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = http_get(addr, "/metrics", &[])
            .map(|r| r.text())
            .unwrap_or_default();
        c.leftover_series = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split("container_id=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .is_some_and(|id| removed_ids.contains(id))
            })
            .map(str::to_owned)
            .collect();
        c.maps_after = map_entries(agent_pid);
        if (c.leftover_series.is_empty() && c.maps_after == c.maps_before)
            || Instant::now() > deadline
        {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    c
}
