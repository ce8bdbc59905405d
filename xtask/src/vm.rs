//! `cargo xtask vm [KERNEL…]`: the kernel matrix. Every kernel pinned in `xtask/vm-kernels.toml`
//! is downloaded from Debian (once; cached under `target/vm-cache`), booted under qemu with an
//! initramfs of busybox, the static (musl) `podstat` and the scenario runner
//! `podstat-test-vm`, on pure cgroup v2, and its verdict read from the serial console.
//!
//! qemu's exit code says nothing about the guest: the only pass is the line
//! `PODSTAT-VM RESULT PASS` on the console, printed by `/init` after the runner exits 0.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::{root, run, step};

/// The musl target the guest binaries are built for.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// The result line `/init` prints; the host reads nothing else as a verdict.
const RESULT: &str = "PODSTAT-VM RESULT ";
/// How long one guest may take from qemu's start to its result line. Under software
/// emulation a kernel boots in 5-15 s and the scenario takes 20-40 s.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "seconds, as the messages print it; from_mins is newer than the MSRV"
)]
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);
/// The heartbeat line `/init` prints every 5 s from a shell loop apart from the scenario.
const HEARTBEAT: &str = "podstat-vm-heartbeat:";
/// How long the heartbeat may be missing before the guest is taken for hung. The scenario's
/// busy threads are capped by CFS limits, so a live guest runs the loop within a few seconds.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "seconds, as the messages print it; from_mins is newer than the MSRV"
)]
const HEARTBEAT_LOST: Duration = Duration::from_secs(60);
/// How many lines of a failed guest's console the matrix prints at its end.
const TAIL: usize = 40;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pins {
    kernel: Vec<Kernel>,
}

/// One pinned kernel (see the comment at the top of `xtask/vm-kernels.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub name: String,
    archive: String,
    suite: String,
    package: String,
    version: String,
    sha256: String,
    release: String,
    probes: std::collections::BTreeMap<String, String>,
}

/// One guest's outcome.
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub secs: f64,
    /// The guest's serial console (the last boot's).
    pub log: PathBuf,
}

/// `xtask/vm-kernels.toml`, or `PODSTAT_VM_KERNELS` (to try a pin before writing it down).
fn pins_path() -> PathBuf {
    std::env::var_os("PODSTAT_VM_KERNELS")
        .map_or_else(|| root().join("xtask/vm-kernels.toml"), PathBuf::from)
}

/// The pinned kernels, all of them or the ones named (by `name`, e.g. `6.1`).
pub fn kernels(names: &[String]) -> anyhow::Result<Vec<Kernel>> {
    let path = pins_path();
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let pins = parse_pins(&text).with_context(|| format!("in {}", path.display()))?;
    if names.is_empty() {
        return Ok(pins.kernel);
    }
    let known: Vec<String> = pins.kernel.iter().map(|k| k.name.clone()).collect();
    for n in names {
        if !known.contains(n) {
            bail!(
                "kernel {n:?} is not pinned in {}; pinned: {}",
                path.display(),
                known.join(" ")
            );
        }
    }
    Ok(pins
        .kernel
        .into_iter()
        .filter(|k| names.contains(&k.name))
        .collect())
}

fn parse_pins(text: &str) -> anyhow::Result<Pins> {
    let pins: Pins = toml::from_str(text).context("parsing the pinned kernels")?;
    if pins.kernel.is_empty() {
        bail!("no kernel is pinned");
    }
    for k in &pins.kernel {
        k.validate().with_context(|| format!("kernel {}", k.name))?;
        if pins.kernel.iter().filter(|o| o.name == k.name).count() > 1 {
            bail!("kernel {} is pinned twice", k.name);
        }
    }
    Ok(pins)
}

impl Kernel {
    fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.archive.as_str(), "debian" | "debian-security") {
            bail!(
                "archive must be \"debian\" or \"debian-security\", not {:?}",
                self.archive
            );
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("sha256 {:?} is not 64 hex digits", self.sha256);
        }
        if self.probes.is_empty() {
            bail!("no [kernel.probes] expectations");
        }
        for (probe, want) in &self.probes {
            let f: Vec<&str> = want.split_whitespace().collect();
            match f.as_slice() {
                ["ok", _] | ["unsupported" | "n/a"] => {}
                _ => bail!(
                    "probe {probe} = {want:?}: expected \"ok <how>\" (e.g. \"ok fexit\"), \"unsupported\" or \"n/a\""
                ),
            }
        }
        Ok(())
    }

    /// What `uname -r` prints in the guest.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The package and version, for messages.
    pub fn pin(&self) -> String {
        format!("{} {}", self.package, self.version)
    }

    /// The expectations file the guest's runner reads (format in tests/src/kernel.rs).
    pub fn expect_file(&self) -> String {
        let mut out = format!("release {}\n", self.release);
        for (probe, want) in &self.probes {
            let _ = writeln!(out, "probe {probe} {want}");
        }
        out
    }

    /// What the kernel supports, as pinned: probes grouped by outcome, for the summary table.
    fn supports(&self) -> String {
        let mut by: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for (probe, want) in &self.probes {
            by.entry(want.as_str()).or_default().push(probe);
        }
        by.iter()
            .map(|(want, probes)| format!("{} {want}", probes.join(",")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn deb_name(&self) -> String {
        // apt-get download names files <package>_<version with ':' as %3a>_<arch>.deb.
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }
}

pub fn cache() -> PathBuf {
    root().join("target/vm-cache")
}

/// The Debian mirrors this machine's own apt uses: (main archive, security archive). Read
/// from /etc/apt (deb822 `.sources` and one-line `.list` files), never written.
/// `PODSTAT_VM_MIRROR` and `PODSTAT_VM_SECURITY_MIRROR` override them.
pub fn mirrors() -> anyhow::Result<(String, String)> {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if f.extension().is_some_and(|e| e == "sources") {
            for stanza in text.split("\n\n") {
                let field = |k: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                let suites = field("Suites:");
                for uri in field("URIs:") {
                    entries.push((uri, suites.clone()));
                }
            }
        } else {
            for line in text.lines() {
                let f: Vec<&str> = line
                    .split_whitespace()
                    .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
                    .collect();
                if let ["deb", uri, suite, ..] = f.as_slice() {
                    entries.push(((*uri).to_owned(), vec![(*suite).to_owned()]));
                }
            }
        }
    }
    let uri_of = |security: bool| {
        entries
            .iter()
            .find(|(uri, suites)| {
                let uri = uri.trim_end_matches('/');
                if security {
                    uri.ends_with("/debian-security")
                } else {
                    uri.ends_with("/debian") && suites.iter().any(|s| !s.ends_with("-security"))
                }
            })
            .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
    };
    let main = std::env::var("PODSTAT_VM_MIRROR")
        .ok()
        .or_else(|| uri_of(false));
    let security = std::env::var("PODSTAT_VM_SECURITY_MIRROR")
        .ok()
        .or_else(|| uri_of(true));
    match (main, security) {
        (Some(m), Some(s)) => Ok((m, s)),
        _ => bail!(
            "cannot find the Debian mirrors in /etc/apt (an entry ending in /debian and one in /debian-security); set PODSTAT_VM_MIRROR and PODSTAT_VM_SECURITY_MIRROR"
        ),
    }
}

/// apt-get or apt-cache with the private configuration under target/vm-cache/apt.
fn apt(tool: &str) -> Command {
    let dir = cache().join("apt");
    let mut cmd = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::sourcelist", dir.join("sources.list")),
        ("Dir::Etc::sourceparts", PathBuf::from("-")),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
        ("Dir::State::status", PathBuf::from("/dev/null")),
    ] {
        cmd.arg("-o").arg(format!("{k}={}", v.display()));
    }
    cmd.args([
        "-o",
        "APT::Architectures::=amd64",
        "-o",
        "Acquire::Languages=none",
        "-o",
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
        "-o",
        "APT::Sandbox::User=root",
        "-q",
    ]);
    cmd
}

/// Writes the private sources list for the suites `kernels` need and runs `apt-get update`.
fn apt_update(kernels: &[&Kernel]) -> anyhow::Result<()> {
    let (main, security) = mirrors()?;
    let dir = cache().join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    if !Path::new(keyring).exists() {
        bail!("{keyring} is missing (Debian package debian-archive-keyring)");
    }
    let mut list = String::new();
    let mut suites: Vec<(&str, &str)> = kernels
        .iter()
        .map(|k| (k.archive.as_str(), k.suite.as_str()))
        .collect();
    suites.sort_unstable();
    suites.dedup();
    for (archive, suite) in suites {
        let uri = if archive == "debian-security" {
            &security
        } else {
            &main
        };
        let _ = writeln!(
            list,
            "deb [arch=amd64 signed-by={keyring}] {uri} {suite} main"
        );
    }
    fs::write(dir.join("sources.list"), list)?;
    let update = || run(apt("apt-get").arg("update"));
    update()
        .or_else(|e| {
            eprintln!("apt-get update failed ({e:#}); retrying once");
            update()
        })
        .context("apt-get update with the private sources list (target/vm-cache/apt)")
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Downloads (retrying once) and checks the pinned packages that are not cached yet, then
/// extracts each kernel image. Returns the vmlinuz of every kernel, in order. Any kernel that
/// cannot be had fails the whole run, naming it.
pub fn fetch(start: Instant, kernels: &[Kernel]) -> anyhow::Result<Vec<PathBuf>> {
    let debs = cache().join("debs");
    fs::create_dir_all(&debs)?;
    let cached = |k: &Kernel| -> bool {
        let p = debs.join(k.deb_name());
        p.is_file() && sha256(&p).is_ok_and(|h| h == k.sha256)
    };
    let missing: Vec<&Kernel> = kernels.iter().filter(|k| !cached(k)).collect();
    if !missing.is_empty() {
        step(
            start,
            &format!(
                "downloading kernels {}",
                missing
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
        apt_update(&missing)?;
        for k in &missing {
            let spec = format!("{}={}", k.package, k.version);
            let get = || run(apt("apt-get").arg("download").arg(&spec).current_dir(&debs));
            get()
                .or_else(|e| {
                    eprintln!("downloading kernel {} failed ({e:#}); retrying once", k.name);
                    get()
                })
                .with_context(|| {
                    format!(
                        "kernel {} could not be downloaded ({spec} from {}); the matrix never runs with fewer kernels than pinned",
                        k.name, k.suite
                    )
                })?;
            let p = debs.join(k.deb_name());
            let got = sha256(&p).with_context(|| format!("kernel {}: {}", k.name, p.display()))?;
            if got != k.sha256 {
                let _ = fs::remove_file(&p);
                bail!(
                    "kernel {}: {} has sha256 {got}, pinned {}",
                    k.name,
                    p.display(),
                    k.sha256
                );
            }
        }
    }
    kernels.iter().map(|k| vmlinuz(k, &debs)).collect()
}

/// The kernel's modules (`lib/modules/<release>` of the pinned package, already fetched),
/// extracted once to target/vm-cache/kernels/<release>/modules; for a guest with a real root.
pub fn modules(k: &Kernel) -> anyhow::Result<PathBuf> {
    let out = cache().join("kernels").join(&k.release).join("modules");
    if out.join("modules.order").is_file() {
        return Ok(out);
    }
    let tmp = cache().join("extract-modules");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(cache().join("debs").join(k.deb_name()))
        .arg(&tmp))
    .with_context(|| format!("kernel {}: extracting {}", k.name, k.deb_name()))?;
    let found = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| tmp.join(d).join(&k.release))
        .find(|p| p.join("modules.order").is_file())
        .with_context(|| {
            format!(
                "kernel {}: no modules for {} in {}",
                k.name,
                k.release,
                k.deb_name()
            )
        })?;
    let _ = fs::remove_dir_all(&out);
    fs::rename(&found, &out)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(out)
}

/// Extracts the kernel image from the package once (to target/vm-cache/kernels/<release>).
fn vmlinuz(k: &Kernel, debs: &Path) -> anyhow::Result<PathBuf> {
    let out = cache().join("kernels").join(&k.release).join("vmlinuz");
    if out.is_file() {
        return Ok(out);
    }
    let tmp = cache().join("extract");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(debs.join(k.deb_name()))
        .arg(&tmp))
    .with_context(|| format!("kernel {}: extracting {}", k.name, k.deb_name()))?;
    // Up to 6.x: boot/vmlinuz-<release>; from 7.x (linux-binary-*): usr/lib/modules/<release>/vmlinuz.
    let found = [
        tmp.join("boot").join(format!("vmlinuz-{}", k.release)),
        tmp.join("usr/lib/modules").join(&k.release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| {
        format!(
            "kernel {}: no vmlinuz for release {} in {}",
            k.name,
            k.release,
            k.deb_name()
        )
    })?;
    fs::create_dir_all(out.parent().context("kernel dir")?)?;
    fs::rename(&found, &out)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(out)
}

/// Builds the static guest binaries: podstat (with its eBPF object), the load generator and
/// the scenario runner. Returns the directory they are in.
pub fn build_guest_binaries(start: Instant) -> anyhow::Result<PathBuf> {
    build_static(
        start,
        &[
            ("podstat", "podstat"),
            ("podstat-tests", "podstat-test-load"),
            ("podstat-tests", "podstat-test-vm"),
        ],
    )
}

/// Builds `(package, binary)` pairs for the musl target (static, release), adding the target
/// with rustup if it is missing. Returns the directory the binaries are in.
pub fn build_static(start: Instant, bins: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    step(
        start,
        &format!(
            "building {} for {MUSL} (static)",
            bins.iter().map(|(_, b)| *b).collect::<Vec<_>>().join(", ")
        ),
    );
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup target list")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    let mut cmd = crate::cargo();
    cmd.args(["build", "--release", "--target", MUSL]);
    let mut packages: Vec<&str> = bins.iter().map(|(p, _)| *p).collect();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    for (_, b) in bins {
        cmd.args(["--bin", b]);
    }
    run(&mut cmd)?;
    Ok(crate::target_dir().join(MUSL).join("release"))
}

/// The guest's `/init`: mounts, pure cgroup v2 with the cpu controller delegated, loopback,
/// then the runner; prints the verdict line and powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
(while :; do sleep 5; echo "podstat-vm-heartbeat: up $(cut -d' ' -f1 /proc/uptime) s"; done) &
echo "podstat-vm: guest up: $(uname -r), $(nproc) CPUs"
PODSTAT_BIN=/bin/podstat RUST_BACKTRACE=1 /bin/podstat-test-vm /podstat-vm/expect
rc=$?
if [ "$rc" = 0 ]; then
  echo "PODSTAT-VM RESULT PASS"
else
  echo "PODSTAT-VM RESULT FAIL exit=$rc"
fi
sync
poweroff -f
"#;

/// An ELF64 executable with no program interpreter (PT_INTERP), i.e. it needs no libc.
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if b.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff + i * usize::from(phentsize);
        b.get(at..at + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

/// A newc ("070701") cpio archive, as the kernel unpacks into its initramfs.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> anyhow::Result<()> {
        let size = u32::try_from(data.len()).context("file too large for cpio")?;
        let namesize = u32::try_from(name.len() + 1).context("name too long")?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) -> anyhow::Result<()> {
        self.entry(name, 0o040_755, (0, 0), &[])
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.entry(name, 0o100_000 | mode, (0, 0), data)
    }

    fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// The initramfs for one kernel: busybox, the guest binaries, /init and the expectations.
fn initramfs(k: &Kernel, bins: &Path, busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let mut c = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "run", "podstat-vm"] {
        c.dir(d)?;
    }
    // The kernel opens /dev/console for init before anything is mounted.
    c.entry("dev/console", 0o020_600, (5, 1), &[])?;
    c.file("init", 0o755, INIT.as_bytes())?;
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    c.file("bin/busybox", 0o755, &read(busybox)?)?;
    for bin in ["podstat", "podstat-test-load", "podstat-test-vm"] {
        c.file(&format!("bin/{bin}"), 0o755, &read(&bins.join(bin))?)?;
    }
    c.file("podstat-vm/expect", 0o644, k.expect_file().as_bytes())?;
    c.finish()
}

/// What to look for on a guest's serial console.
pub struct Console<'a> {
    /// Shown in front of echoed lines (`[6.1]`).
    pub name: &'a str,
    /// The line that says the guest's own program runs (the kernel and init are up).
    pub up: &'a str,
    /// How long the guest may take to print `up`.
    pub up_within: Duration,
    /// The verdict line's prefix; what follows it is the verdict.
    pub result: &'a str,
    /// How long the guest may take from qemu's start to its verdict.
    pub within: Duration,
    /// Lines starting with one of these are echoed to stderr (progress).
    pub echo: &'a [&'a str],
    /// A line the guest prints on its own every few seconds from `up` on (a process apart from
    /// the scenario), and how long it may be missing before the guest is taken for hung: its
    /// kernel or the emulator, since a hung scenario does not stop it. None: no heartbeat.
    pub heartbeat: Option<(&'a str, Duration)>,
}

/// What the console said: the verdict (None: none within the time), when `up` was seen (s
/// after qemu started; None: never), and when the heartbeat stopped (s after qemu started,
/// the last beat's time; None: it did not, or there is none).
pub struct Seen {
    pub verdict: Option<String>,
    pub up_at: Option<f64>,
    pub heartbeat_lost: Option<f64>,
}

/// Runs qemu (`cmd`, its serial console on stdout) and reads the console into `log`, calling
/// `line` on every line, until the verdict, qemu's exit or a time limit. A guest that hangs
/// is killed (our own child).
pub fn run_console(
    cmd: &mut Command,
    c: &Console<'_>,
    log: &Path,
    mut line_fn: impl FnMut(&str),
) -> anyhow::Result<Seen> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut verdict = None;
    let mut up_at = None;
    let mut heartbeat_lost = None;
    // The last heartbeat, or `up` (the guest starts beating then).
    let mut last_beat = None;
    loop {
        let limit = if up_at.is_some() {
            c.within
        } else {
            c.up_within.min(c.within)
        };
        let beat_due = c
            .heartbeat
            .zip(last_beat)
            .filter(|_| verdict.is_none())
            .map(|((_, every), last): ((&str, Duration), Instant)| last + every);
        let until = beat_due.map_or(t0 + limit, |d| d.min(t0 + limit));
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(file, "{line}")?;
                if up_at.is_none() && line.contains(c.up) {
                    up_at = Some(t0.elapsed().as_secs_f64());
                    last_beat = Some(Instant::now());
                }
                if c.heartbeat.is_some_and(|(beat, _)| line.contains(beat)) {
                    last_beat = Some(Instant::now());
                }
                if c.echo.iter().any(|e| line.starts_with(e)) || line.contains("panicked") {
                    eprintln!("  [{}] {line}", c.name);
                }
                line_fn(&line);
                // Kernel messages can land on the same console line; the verdict is what follows.
                if let Some(at) = line.find(c.result) {
                    verdict = Some(line[at + c.result.len()..].trim().to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout)
                if beat_due.is_some_and(|d| Instant::now() >= d) =>
            {
                heartbeat_lost = last_beat.map(|b| b.duration_since(t0).as_secs_f64());
                break;
            }
            // qemu exited, or the guest is out of time.
            Err(_) => break,
        }
    }
    // The guest powers off after its verdict; a guest that hangs is killed (our own child).
    let wait_until = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > wait_until || verdict.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = reader.join();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    if !stderr.trim().is_empty() {
        writeln!(file, "--- qemu stderr ---\n{stderr}")?;
    }
    Ok(Seen {
        verdict,
        up_at,
        heartbeat_lost,
    })
}

/// qemu under software emulation (see GUEST_TIMEOUT), 2 CPUs, serial console on stdout.
pub fn qemu(memory_mib: u32, kernel: &Path, append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m"])
        .arg(memory_mib.to_string())
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-append")
        .arg(append);
    cmd
}

/// Boots one kernel and reads its verdict from the serial console. The console is kept in
/// target/vm-cache/logs/<name>.log.
/// The verdict: passed, what the console said (or why it said nothing), and what was seen.
fn boot(
    k: &Kernel,
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
) -> anyhow::Result<(bool, String, Seen)> {
    let mut cmd = qemu(
        1024,
        vmlinuz,
        "console=ttyS0 cgroup_no_v1=all panic=-1 rdinit=/init loglevel=4",
    );
    cmd.arg("-initrd").arg(initrd);
    let seen = run_console(
        &mut cmd,
        &Console {
            name: &k.name,
            up: "podstat-vm: guest up",
            up_within: GUEST_TIMEOUT,
            result: RESULT,
            within: GUEST_TIMEOUT,
            echo: &["podstat-vm:"],
            heartbeat: Some((HEARTBEAT, HEARTBEAT_LOST)),
        },
        log,
        |_| {},
    )?;
    let (passed, verdict) = match (&seen.verdict, seen.heartbeat_lost) {
        (Some(v), _) => (v == "PASS", v.clone()),
        (None, Some(at)) => (
            false,
            format!(
                "the guest hung: its heartbeat stopped {at:.0}s after qemu started, none for {}s (see {})",
                HEARTBEAT_LOST.as_secs(),
                log.display()
            ),
        ),
        (None, None) => (
            false,
            format!(
                "no result line within {}s (see {})",
                GUEST_TIMEOUT.as_secs(),
                log.display()
            ),
        ),
    };
    Ok((passed, verdict, seen))
}

/// Whether the guest's console shows the kernel trapping on a text patch's int3 (`Oops:
/// int3`): the emulator ran a half-patched instruction.
fn stale_text_patch(log: &Path) -> bool {
    fs::read(log).is_ok_and(|b| String::from_utf8_lossy(&b).contains("Oops: int3"))
}

/// Why a guest that did not pass is booted once more, if it is: its kernel died or hung, not
/// a check.
/// - Under TCG a live text patch (the int3 of text_poke_bp, for jump labels and BPF
///   trampolines) is occasionally executed stale on the other vCPU. Seen on 6.12 at boot (an
///   Oops in sched_clock_cpu at 2 s, before /init, in the matrix and in the node) and on 6.18
///   while the agent attached its programs ("Oops: int3" in enqueue_task_fair, a CI run of
///   2026-12-03). That is the emulator's cross-modifying code, not podstat.
/// - A guest whose heartbeat (a shell loop apart from the scenario) stopped: its kernel or the
///   emulator hung. A CI run of 2026-12-07 saw 5.10 print nothing to its end at 240 s; 8 runs
///   here passed in 30-32 s each.
/// - A guest that never started its own program.
///
/// A guest whose scenario failed a check, or hung while the heartbeat went on, is never
/// booted again (None). The reason is short: the verdict printed beside it says when the
/// heartbeat stopped.
pub fn boot_again(passed: bool, seen: &Seen, log: &Path) -> Option<&'static str> {
    if passed {
        None
    } else if stale_text_patch(log) {
        Some("Oops: int3, a stale text patch")
    } else if seen.heartbeat_lost.is_some() {
        Some("its heartbeat stopped")
    } else if seen.up_at.is_some() {
        None
    } else {
        Some("before the guest's own program started")
    }
}

/// The last `n` lines of a console log but heartbeats, indented, then the last heartbeat,
/// for a failure's report.
pub fn console_tail(log: &Path, n: usize) -> String {
    let text = match fs::read(log) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return format!("    (cannot read {}: {e})\n", log.display()),
    };
    let (beats, lines): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.contains(HEARTBEAT));
    let mut out =
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .fold(String::new(), |mut out, l| {
                let _ = writeln!(out, "    | {l}");
                out
            });
    let _ = writeln!(
        out,
        "    last heartbeat: {}",
        beats.last().map_or("none", |b| b.trim())
    );
    out
}

/// The names of the kernels that failed.
pub fn failed(outcomes: &[Outcome]) -> Vec<&str> {
    outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.name.as_str())
        .collect()
}

/// Runs the matrix over `kernels`, one after another. Every kernel is attempted; the outcomes
/// say which passed.
pub fn matrix(start: Instant, kernels: &[Kernel]) -> anyhow::Result<Vec<Outcome>> {
    crate::setup::debian_packages(start, crate::setup::VM_PACKAGES)?;
    let images = fetch(start, kernels)?;
    let bins = build_guest_binaries(start)?;
    let busybox = crate::setup::find("busybox")?;
    if !is_static_elf(
        &fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?,
    ) {
        bail!(
            "{} is dynamically linked and cannot run in the guest: install busybox-static instead of busybox",
            busybox.display()
        );
    }
    let logs = cache().join("logs");
    fs::create_dir_all(&logs)?;
    let mut outcomes = Vec::new();
    for (k, vmlinuz) in kernels.iter().zip(&images) {
        step(
            start,
            &format!("kernel {} ({} {}) in qemu", k.name, k.package, k.version),
        );
        let t = Instant::now();
        let initrd = cache().join(format!("initramfs-{}.cpio", k.name));
        fs::write(&initrd, initramfs(k, &bins, &busybox)?)
            .with_context(|| format!("writing {}", initrd.display()))?;
        let log = logs.join(format!("{}.log", k.name));
        let (mut passed, mut verdict, seen) = boot(k, vmlinuz, &initrd, &log)?;
        if let Some(why) = boot_again(passed, &seen, &log) {
            // Boot once more, keeping the first console.
            let first = logs.join(format!("{}.boot1.log", k.name));
            fs::rename(&log, &first)?;
            eprintln!(
                "kernel {}: the guest's kernel died or hung ({why}; {verdict}; console kept in {}); booting once more",
                k.name,
                first.display()
            );
            (passed, verdict, _) = boot(k, vmlinuz, &initrd, &log)?;
        }
        let detail = if passed { k.supports() } else { verdict };
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "kernel {}: {} in {secs:.0}s (console: {})",
            k.name,
            if passed { "PASS" } else { "FAIL" },
            log.display()
        );
        outcomes.push(Outcome {
            name: k.name.clone(),
            passed,
            detail,
            secs,
            log,
        });
    }
    eprintln!("\nkernel matrix:");
    eprintln!(
        "  {:<8} {:<6} {:>6}  probes as asserted (or why it failed)",
        "kernel", "result", "time"
    );
    for o in &outcomes {
        eprintln!(
            "  {:<8} {:<6} {:>5.0}s  {}",
            o.name,
            if o.passed { "PASS" } else { "FAIL" },
            o.secs,
            o.detail
        );
    }
    // Last, so that a run's tail shows why a guest failed.
    for o in outcomes.iter().filter(|o| !o.passed) {
        eprintln!(
            "\nkernel {}: the last {TAIL} lines of its console ({}):\n{}",
            o.name,
            o.log.display(),
            console_tail(&o.log, TAIL)
        );
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_text_patch_is_told_from_a_failed_check() {
        let dir = std::env::temp_dir().join(format!("podstat-test-vm-log-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("6.18.log");
        fs::write(
            &log,
            "podstat-vm: ok\n[   13.007085] Oops: int3: 0000 [#1] SMP NOPTI\n",
        )
        .expect("log");
        assert!(stale_text_patch(&log));
        fs::write(
            &log,
            "podstat-vm: FAIL run-queue oracle\nPODSTAT-VM RESULT FAIL exit=101\n",
        )
        .expect("log");
        assert!(!stale_text_patch(&log));
        assert!(!stale_text_patch(&dir.join("missing.log")));
        // A failed check is not booted again; a guest that never started its program is, and
        // so is one whose heartbeat stopped.
        let seen = |up_at, heartbeat_lost| Seen {
            verdict: None,
            up_at,
            heartbeat_lost,
        };
        assert_eq!(boot_again(false, &seen(Some(9.0), None), &log), None);
        assert!(boot_again(false, &seen(None, None), &log).is_some());
        assert!(boot_again(false, &seen(Some(9.0), Some(40.0)), &log).is_some());
        assert_eq!(boot_again(true, &seen(Some(9.0), None), &log), None);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A stand-in for qemu: a shell that prints `script`'s lines, then `exec`s into a sleep
    /// (so that killing it closes the console).
    fn fake_guest(script: &str, log: &Path, heartbeat: Duration) -> (Seen, Duration) {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        let t = Instant::now();
        let seen = run_console(
            &mut cmd,
            &Console {
                name: "fake",
                up: "guest up",
                up_within: Duration::from_secs(20),
                result: RESULT,
                within: Duration::from_secs(20),
                echo: &[],
                heartbeat: Some(("beat", heartbeat)),
            },
            log,
            |_| {},
        )
        .expect("run_console");
        (seen, t.elapsed())
    }

    #[test]
    fn a_guest_whose_heartbeat_stops_is_told_from_one_that_hangs_or_passes() {
        // The guest's /init prints the line the host waits for.
        assert!(INIT.contains(&format!("echo \"{HEARTBEAT} ")));
        let dir = std::env::temp_dir().join(format!("podstat-test-vm-beat-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("guest.log");
        let beat = Duration::from_millis(700);
        // The kernel hangs: up, two beats, then nothing. Ended at the missing beat, not at 20 s.
        let (seen, took) = fake_guest(
            "echo guest up; echo beat; sleep 0.2; echo beat; exec sleep 30",
            &log,
            beat,
        );
        assert!(seen.verdict.is_none());
        assert!(
            seen.heartbeat_lost.is_some_and(|at| at < 1.0),
            "{:?}",
            seen.heartbeat_lost
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(boot_again(false, &seen, &log).is_some());
        // The scenario runs 3 s, longer than the heartbeat's limit, while the heartbeat goes
        // on: nothing is missed, its verdict is read, and a failed one is not booted again.
        let (seen, _) = fake_guest(
            "echo guest up; i=0; while [ $i -lt 12 ]; do echo beat; sleep 0.25; i=$((i+1)); done; echo 'PODSTAT-VM RESULT FAIL exit=1'",
            &log,
            beat,
        );
        assert_eq!(seen.verdict.as_deref(), Some("FAIL exit=1"));
        assert_eq!(seen.heartbeat_lost, None);
        assert_eq!(boot_again(false, &seen, &log), None);
        // A passing guest with no beat after its verdict: the verdict ends the wait for beats.
        let (seen, took) = fake_guest(
            "echo guest up; echo 'PODSTAT-VM RESULT PASS'; sleep 1.5",
            &log,
            beat,
        );
        assert_eq!(seen.verdict.as_deref(), Some("PASS"));
        assert_eq!(seen.heartbeat_lost, None);
        assert!(took < Duration::from_secs(5), "{took:?}");
        let tail = console_tail(&log, 1);
        assert!(tail.contains("RESULT PASS") && tail.contains("last heartbeat: none"));
        fs::write(&log, "podstat-vm: agent up\npodstat-vm-heartbeat: up 9 s\n").expect("log");
        let tail = console_tail(&log, 1);
        assert!(
            tail.contains("agent up")
                && tail.contains("last heartbeat: podstat-vm-heartbeat: up 9 s")
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn pinned_kernels_parse_and_list_the_same_probes() {
        let text = fs::read_to_string(root().join("xtask/vm-kernels.toml")).expect("pins");
        let pins = parse_pins(&text).expect("valid pins");
        let names: Vec<&str> = pins.kernel.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["5.10", "6.1", "6.12", "6.18", "7.3"]);
        let first: Vec<&String> = pins.kernel[0].probes.keys().collect();
        for k in &pins.kernel {
            assert_eq!(
                k.probes.keys().collect::<Vec<_>>(),
                first,
                "kernel {} lists other probes",
                k.name
            );
            assert!(
                k.expect_file()
                    .starts_with(&format!("release {}\n", k.release))
            );
        }
    }

    #[test]
    fn bad_pins_are_refused() {
        let good = r#"
[[kernel]]
name = "x"
archive = "debian"
suite = "bookworm"
package = "linux-image-x"
version = "1"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
release = "x"
[kernel.probes]
sched_switch = "ok tp_btf"
"#;
        assert!(parse_pins(good).is_ok());
        for (from, to) in [
            ("ok tp_btf", "maybe"),
            ("ok tp_btf", "ok"),
            ("\"debian\"", "\"ubuntu\""),
            ("00000000000000000000", "zz"),
            ("release = \"x\"\n", ""),
        ] {
            let bad = good.replacen(from, to, 1);
            assert!(parse_pins(&bad).is_err(), "accepted {bad}");
        }
        assert!(
            parse_pins(&format!("{good}{good}")).is_err(),
            "accepted a kernel pinned twice"
        );
        assert!(parse_pins("").is_err());
    }

    #[test]
    fn cpio_is_newc_and_padded() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"abc").expect("entry");
        let out = c.finish().expect("archive");
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // Header (110) + "init\0" (5) padded to 116, then 3 data bytes padded to 4.
        assert_eq!(&out[116..119], b"abc");
        let trailer = 120;
        assert_eq!(&out[trailer..trailer + 6], b"070701");
        assert_eq!(&out[trailer + 110..trailer + 120], b"TRAILER!!!");
    }

    #[test]
    fn static_elf_is_told_from_dynamic() {
        assert!(!is_static_elf(b"not an elf"));
        let dynamic = fs::read("/bin/sh").expect("/bin/sh");
        assert!(!is_static_elf(&dynamic), "/bin/sh has an interpreter");
        // An ELF64 header with no program headers at all: nothing asks for an interpreter.
        let mut header = vec![0u8; 64];
        header[..5].copy_from_slice(b"\x7fELF\x02");
        assert!(is_static_elf(&header));
    }
}
