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

/// Starts `podstat-test-floor` (next to the running binary) with the empty program on `hook`
/// (`sched_switch` or `sock_recv_length`) alone, bounded to outlive no bench (900 s), its log
/// in `dir`, and waits until it holds its program.
///
/// # Errors
/// The loader missing, failing or not loading within 15 s.
pub fn start_floor(
    dir: &std::path::Path,
    name: &'static str,
    hook: &str,
) -> std::io::Result<crate::Logged> {
    let bin = std::env::current_exe()?.with_file_name("podstat-test-floor");
    if !bin.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found (`cargo xtask bench` builds it)",
                bin.display()
            ),
        ));
    }
    let floor = crate::Logged::spawn(name, Command::new(&bin).args(["--hook", hook, "900"]), dir)?;
    wait_for_progs(floor, 1)
}

/// Waits (at most 15 s) until `p` holds at least `n` BPF programs.
///
/// # Errors
/// The process exits first, or the deadline passes.
pub fn wait_for_progs(mut p: crate::Logged, n: usize) -> std::io::Result<crate::Logged> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Some(s) = p.proc.exited() {
            return Err(std::io::Error::other(format!(
                "{} exited with {s}:\n{}",
                p.name,
                p.tail()
            )));
        }
        let pid = u32::try_from(p.proc.pid())
            .map_err(|_| std::io::Error::other(format!("{} has no pid", p.name)))?;
        if owned_progs(pid, &HashMap::new())?.len() >= n {
            return Ok(p);
        }
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "{} loaded fewer than {n} programs in 15 s:\n{}",
                p.name,
                p.tail()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
