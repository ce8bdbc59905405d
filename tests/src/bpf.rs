//! What the benches read of the kernel's own accounting of BPF programs: the
//! `kernel.bpf_stats_enabled` switch (restored on drop) and per-program `run_time_ns` and
//! `run_cnt` from `bpftool -j prog show`, attributed to processes by the fds they hold.

use std::{
    collections::{HashMap, HashSet},
    fs,
    hash::BuildHasher,
    process::Command,
};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on while it lives; the old value is restored when dropped.
pub struct BpfStats {
    old: String,
}

impl BpfStats {
    /// # Errors
    /// Reading or writing the sysctl.
    pub fn enable() -> std::io::Result<Self> {
        let old = fs::read_to_string(BPF_STATS)?.trim().to_owned();
        fs::write(BPF_STATS, "1")?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.old) {
            eprintln!("warning: restoring {BPF_STATS} to {}: {e}", self.old);
        }
    }
}

/// One loaded program as bpftool reports it.
#[derive(Clone)]
pub struct Prog {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pids: Vec<u32>,
}

/// Every loaded program, by id, from `bpftool -j prog show` (bpftool on `PATH`; `cargo xtask`
/// installs it and adds `/usr/sbin`).
///
/// # Errors
/// bpftool missing or failing, or JSON it did not mean.
pub fn prog_snapshot() -> std::io::Result<HashMap<u64, Prog>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("running bpftool -j prog show: {e}")))?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| std::io::Error::other(format!("parsing bpftool's JSON: {e}")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| std::io::Error::other("bpftool's JSON is not an array"))?;
    let mut m = HashMap::with_capacity(arr.len());
    for p in arr {
        let Some(id) = p["id"].as_u64() else { continue };
        let pids = p["pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["pid"].as_u64().and_then(|n| u32::try_from(n).ok()))
                    .collect()
            })
            .unwrap_or_default();
        m.insert(
            id,
            Prog {
                name: p["name"].as_str().unwrap_or("?").to_owned(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                pids,
            },
        );
    }
    Ok(m)
}

/// Program ids `pid` holds: from bpftool's `pids` field when this bpftool has it, and from
/// the `prog_id:` lines of the process's fdinfo (program and link fds) in any case.
///
/// # Errors
/// Listing `/proc/<pid>/fdinfo`.
pub fn owned_progs<S: BuildHasher>(
    pid: u32,
    snap: &HashMap<u64, Prog, S>,
) -> std::io::Result<HashSet<u64>> {
    let mut ids: HashSet<u64> = snap
        .iter()
        .filter(|(_, p)| p.pids.contains(&pid))
        .map(|(id, _)| *id)
        .collect();
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("listing {dir}: {e}")))?;
    for e in entries.filter_map(Result::ok) {
        let Ok(info) = fs::read_to_string(e.path()) else {
            continue;
        };
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    Ok(ids)
}
