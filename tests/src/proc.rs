//! Process guards: whatever a test or bench starts is killed and reaped when its guard drops,
//! on success, failure and panic.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Runs `cmd` to the end and returns its stdout; panics with the command and its output unless
/// it exits 0.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process we started; killed (SIGKILL unless stopped earlier) and reaped on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0
            .as_ref()
            .map_or(0, |c| i32::try_from(c.id()).unwrap_or(0))
    }

    /// The exit status if the process has ended (or was stopped through this guard).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the process to end by itself; its status, or None if it runs.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (0: none) and waits up to `within` for exit; returns the exit status, or
    /// None when it had to be killed (SIGKILL) after `within`.
    pub fn stop(&mut self, sig: i32, within: Duration) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let pid = i32::try_from(child.id()).ok()?;
        // SAFETY: plain syscall on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, sig) };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A [`Proc`] whose stdout and stderr go to `<dir>/<name>.log`, kept after it ends (the benches
/// keep theirs in `target/bench/`).
pub struct Logged {
    pub name: &'static str,
    pub proc: Proc,
    pub log: PathBuf,
}

impl Logged {
    /// Spawns `cmd` (stdin null) with its output to `<dir>/<name>.log`.
    ///
    /// # Errors
    /// Creating the log file, or spawning.
    pub fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> std::io::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let f = fs::File::create(&log).map_err(|e| {
            std::io::Error::new(e.kind(), format!("creating {}: {e}", log.display()))
        })?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("spawning {cmd:?}: {e}")))?;
        Ok(Self {
            name,
            proc: Proc(Some(child)),
            log,
        })
    }

    /// The last 20 lines of the log.
    pub fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The whole log.
    ///
    /// # Errors
    /// Reading the file.
    pub fn text(&self) -> std::io::Result<String> {
        fs::read_to_string(&self.log)
    }

    /// Sends `sig`, waits up to 5 s, then SIGKILL (with a warning); the exit status, if any.
    pub fn stop(&mut self, sig: i32) -> Option<ExitStatus> {
        let pid = self.proc.pid();
        let s = self.proc.stop(sig, Duration::from_secs(5));
        if s.is_none() {
            eprintln!(
                "warning: {} ({pid}) ignored signal {sig}; killed it",
                self.name
            );
        }
        s
    }
}

/// This thread's CPU time (user and system): what a spinning load has used, or what a
/// benchmark's syscall cost this thread without the time it was preempted.
#[must_use]
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Pins the calling thread to `cpu` (the process's other threads keep their affinity).
///
/// # Errors
/// `sched_setaffinity` failing (no such CPU, or not allowed).
pub fn pin_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity(0) reads it for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
