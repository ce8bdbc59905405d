//! Helpers for the privileged integration tests (real cgroups, real eBPF).
//!
//! Everything a test creates is named `podstat-test-*` and removed by a guard's `Drop`, so
//! it goes away when the test passes, fails or panics. Tests `panic!` with context (see
//! tests/README.md) and never skip silently: a missing prerequisite is a failure that says
//! what is missing.

pub mod cri;
pub mod dashboard;
pub mod deploy;
pub mod rules;

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The agent binary under test (`cargo xtask test` sets `PODSTAT_BIN`).
pub fn podstat_bin() -> PathBuf {
    let bin = std::env::var_os("PODSTAT_BIN").map_or_else(|| {
        panic!("PODSTAT_BIN is not set: run the integration tests through `cargo xtask test`, which builds podstat with its eBPF object")
    }, PathBuf::from);
    assert!(
        bin.is_file(),
        "PODSTAT_BIN={} does not exist; run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Panics unless we are root: the tests create cgroups and load eBPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the privileged integration tests need root (real cgroups, eBPF); run them through `sudo cargo xtask test`"
    );
}

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

    /// Starts `cmd` inside `rel` (in every hierarchy) before it execs, so its children are
    /// born there too. The caller owns the child; Drop also kills anything left inside.
    pub fn spawn(&self, rel: &str, cmd: &mut Command) -> Child {
        let procs: Vec<std::ffi::CString> = self
            .hierarchies
            .iter()
            .map(|h| {
                std::ffi::CString::new(
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
            });
        }
        cmd.stdin(Stdio::null())
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

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for rel in self.dirs.iter().rev() {
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
}

/// A process we started; killed (SIGKILL unless stopped earlier) and reaped on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0
            .as_ref()
            .map_or(0, |c| i32::try_from(c.id()).unwrap_or(0))
    }

    /// Sends `sig` and waits up to `within` for exit; returns the exit status.
    pub fn stop(&mut self, sig: i32, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
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

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Starts `podstat agent` on a free loopback port and waits until /healthz answers.
pub fn start_agent(extra: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(podstat_bin())
        .arg("agent")
        .arg("--web.listen-address")
        .arg(addr.to_string())
        .args(["--log.level", "warn"])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning podstat agent");
    let mut proc = Proc(Some(child));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http_get(addr, "/healthz", &[])
            && r.status == 200
        {
            return (proc, addr);
        }
        if let Some(c) = proc.0.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("podstat agent exited during startup with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "podstat agent did not answer /healthz on {addr} within 20 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 GET (Connection: close), bounded to 10 s.
///
/// # Errors
/// I/O errors and malformed responses.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = nl + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// The exposition parser is the agent's own (`podstat top --from` and `podstat explain --from`
/// read with it too).
pub use podstat::view::expo::{Sample, parse as parse_exposition};

/// The samples named `name` whose labels include all of `want`.
pub fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The one `podstat_probe_attached{probe}` sample; panics unless there is exactly one.
pub fn probe_attached<'a>(samples: &'a [Sample], probe: &str) -> &'a Sample {
    let found = find(samples, "podstat_probe_attached", &[("probe", probe)]);
    assert_eq!(
        found.len(),
        1,
        "no podstat_probe_attached{{probe=\"{probe}\"}}"
    );
    found[0]
}

/// A random-enough pod uid and container id for this test run.
pub fn test_ids(seed: u32) -> (String, String) {
    let pid = std::process::id();
    let t = Instant::now().elapsed().as_nanos();
    let uid = format!(
        "{pid:08x}-{seed:04x}-4000-8000-{:012x}",
        u64::try_from(t & 0xffff_ffff_ffff).unwrap_or(0)
    );
    let cid = format!("{pid:08x}{seed:08x}{}", "0".repeat(48));
    (uid, cid)
}

/// A histogram read from a scrape: per-bucket (upper bound, cumulative count), sum, count.
#[derive(Debug, Clone, Default)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Hist {
    /// The histogram `name` of the series whose labels include `want`, or None.
    pub fn find(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<Self> {
        let count = find(samples, &format!("{name}_count"), want);
        let count = count.first()?.value;
        let sum = find(samples, &format!("{name}_sum"), want)
            .first()
            .map_or(0.0, |s| s.value);
        let mut buckets: Vec<(f64, f64)> = find(samples, &format!("{name}_bucket"), want)
            .iter()
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Self {
            buckets,
            sum,
            count,
        })
    }

    /// `self - earlier`, bucket by bucket (same bounds).
    #[must_use]
    pub fn minus(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|((le, a), (_, b))| (*le, a - b))
            .collect();
        Self {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The q-quantile, interpolated within the bucket as Prometheus's histogram_quantile does.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let rank = q * self.count;
        let mut prev_le = 0.0;
        let mut prev_n = 0.0;
        for (le, n) in &self.buckets {
            if *n >= rank {
                if le.is_infinite() {
                    return prev_le;
                }
                let in_bucket = n - prev_n;
                return if in_bucket <= 0.0 {
                    *le
                } else {
                    prev_le + (le - prev_le) * (rank - prev_n) / in_bucket
                };
            }
            prev_le = *le;
            prev_n = *n;
        }
        prev_le
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// Observations at or below `le` (cumulative count of that bucket).
    pub fn at_most(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .filter(|(b, _)| *b <= le + 1e-12)
            .map(|(_, n)| *n)
            .fold(0.0, f64::max)
    }
}

/// Scrapes `/metrics` and parses it, panicking with context on failure.
pub fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let r = http_get(addr, "/metrics", &[]).unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(r.status, 200, "/metrics answered {}", r.status);
    parse_exposition(&r.text())
}

/// Number of online CPUs.
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
