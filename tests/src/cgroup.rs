//! Test cgroups: the v1 hierarchies of this host, trees created under the same relative path in
//! every hierarchy given, and processes placed in them before they exec.

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The v1 hierarchies this host mounts the cpu and cpuacct controllers on.
pub struct V1 {
    pub cpu: PathBuf,
    pub cpuacct: PathBuf,
}

/// Finds the v1 cpu and cpuacct hierarchies (separate or combined), or panics saying why.
pub fn v1_hierarchies() -> V1 {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    let mut cpu = None;
    let mut cpuacct = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "cgroup" {
            continue;
        }
        let opts: Vec<&str> = f[3].split(',').collect();
        if opts.contains(&"cpu") {
            cpu = Some(PathBuf::from(f[1]));
        }
        if opts.contains(&"cpuacct") {
            cpuacct = Some(PathBuf::from(f[1]));
        }
    }
    match (cpu, cpuacct) {
        (Some(cpu), Some(cpuacct)) => V1 { cpu, cpuacct },
        _ => panic!(
            "this test needs the cgroup v1 cpu and cpuacct controllers (this machine's layout); none found in /proc/self/mounts. \
             Pure cgroup v2 hosts are covered by the fixture tests and the VM matrix"
        ),
    }
}

/// A tree of test cgroups, created in every given hierarchy under the same relative path.
/// Drop kills what runs inside (only our own processes are ever put there) and removes the
/// directories deepest first.
pub struct CgroupTree {
    hierarchies: Vec<PathBuf>,
    /// Relative paths, in creation order.
    dirs: Vec<String>,
}

impl CgroupTree {
    pub fn new(hierarchies: &[&Path]) -> Self {
        Self {
            hierarchies: hierarchies.iter().map(|p| p.to_path_buf()).collect(),
            dirs: Vec::new(),
        }
    }

    /// Creates `rel` (and its parents) in every hierarchy.
    pub fn mkdir(&mut self, rel: &str) {
        let mut acc = String::new();
        for part in rel.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.contains(&acc) {
                continue;
            }
            for h in &self.hierarchies {
                let p = h.join(&acc);
                if !p.exists() {
                    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                }
            }
            self.dirs.push(acc.clone());
        }
    }

    /// The directory of `rel` in hierarchy `i`.
    pub fn path(&self, i: usize, rel: &str) -> PathBuf {
        self.hierarchies[i].join(rel)
    }

    /// Writes a control file in hierarchy `i`.
    pub fn write(&self, i: usize, rel: &str, file: &str, value: &str) {
        let p = self.path(i, rel).join(file);
        fs::write(&p, value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", p.display()));
    }

    pub fn read(&self, i: usize, rel: &str, file: &str) -> String {
        let p = self.path(i, rel).join(file);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    }

    /// Makes `cmd` join `rel` (in every hierarchy) before it execs, so its children are born
    /// there too; the caller spawns it (with the stdio it wants).
    pub fn place<'c>(&self, rel: &str, cmd: &'c mut Command) -> &'c mut Command {
        let procs: Vec<CString> = self
            .hierarchies
            .iter()
            .map(|h| {
                CString::new(
                    h.join(rel)
                        .join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .expect("path without NUL")
            })
            .collect();
        // SAFETY: between fork and exec the closure only calls async-signal-safe libc
        // functions (open, write, close) on C strings allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            })
        }
    }

    /// Starts `cmd` inside `rel` (see [`CgroupTree::place`]) with stdin and stdout null. The
    /// caller owns the child; Drop also kills anything left inside.
    pub fn spawn(&self, rel: &str, cmd: &mut Command) -> Child {
        self.place(rel, cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in {rel}: {e}"))
    }

    /// Kills every process in `rel` (all ours) and waits until the cgroup is empty.
    pub fn kill_all(&self, rel: &str) {
        for h in &self.hierarchies {
            kill_cgroup(&h.join(rel));
        }
    }
}

fn kill_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: plain syscall; the pids are in a cgroup only our test put processes in.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl CgroupTree {
    /// Removes `rel` and everything created below it (killing what runs there), deepest first,
    /// in every hierarchy; the tree forgets them.
    pub fn remove(&mut self, rel: &str) {
        let below = format!("{rel}/");
        let (gone, kept): (Vec<String>, Vec<String>) = std::mem::take(&mut self.dirs)
            .into_iter()
            .partition(|d| d == rel || d.starts_with(&below));
        self.dirs = kept;
        for d in gone.iter().rev() {
            self.remove_dir(d);
        }
    }

    fn remove_dir(&self, rel: &str) {
        for h in &self.hierarchies {
            let dir = h.join(rel);
            if !dir.exists() {
                continue;
            }
            kill_cgroup(&dir);
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = fs::remove_dir(&dir) {
                if Instant::now() > deadline {
                    eprintln!("warning: could not remove {}: {e}", dir.display());
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for rel in self.dirs.iter().rev() {
            self.remove_dir(rel);
        }
    }
}

/// Upper bound on directories visited when reaping a leftover tree.
const MAX_REAP_DIRS: usize = 200_000;

/// Removes the trees `<hierarchy>/<prefix><pid>` left by runs that died without cleaning up,
/// unless process `<pid>` still runs with a command name starting with `owner_comm` (then the
/// tree is still its own). Only empty cgroups can go; one with a process left fails.
///
/// # Errors
/// A hierarchy that cannot be listed, or a directory that cannot be removed.
pub fn reap_stale(hierarchies: &[&Path], prefix: &str, owner_comm: &str) -> std::io::Result<()> {
    for h in hierarchies {
        for e in fs::read_dir(h)?.filter_map(Result::ok) {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with(owner_comm) {
                eprintln!(
                    "note: leaving {} alone: pid {pid} is running",
                    e.path().display()
                );
                continue;
            }
            eprintln!("removing leftover {}", e.path().display());
            remove_tree(&e.path())?;
        }
    }
    Ok(())
}

/// rmdir every directory below `root` and `root` itself, deepest first (cgroup files go with
/// their directory).
fn remove_tree(root: &Path) -> std::io::Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if dirs.len() > MAX_REAP_DIRS {
            return Err(std::io::Error::other(format!(
                "more than {MAX_REAP_DIRS} directories below {}",
                root.display()
            )));
        }
        let d = dirs[i].clone();
        for e in fs::read_dir(&d)?.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        i += 1;
    }
    // Breadth-first order lists parents before children.
    for d in dirs.iter().rev() {
        fs::remove_dir(d)
            .map_err(|e| std::io::Error::new(e.kind(), format!("removing {}: {e}", d.display())))?;
    }
    Ok(())
}
