//! `cargo xtask node`: the DaemonSet on a real node. A Debian rootfs built with mmdebstrap
//! (systemd, dbus, containerd, runc, Prometheus, busybox-static for the workload images) from
//! the mirrors this machine's apt uses, is cached in target/node-cache; each run adds the
//! modules of a kernel pinned in the matrix and the node's configuration and writes it as an
//! ext4 image (target/node/rootfs.ext4). qemu boots that kernel on it (software
//! emulation, as the matrix) with systemd as PID 1 on pure cgroup v2; containerd runs with the
//! CRI plugin and `SystemdCgroup = true`. A second, read-only disk carries the run's payload:
//! the scenario runner `podstat-test-node`, the image `cargo xtask image` writes, the
//! kernel's expectations and a copy of deploy/. `podstat-node.service` runs the scenario
//! once containerd is up and prints the verdict line; the host reads nothing else.
//!
//! Kept for the reader: target/node/console.log (the whole serial console) and
//! target/node/agent.log (the podstat container's log, which the runner prints at the end).

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use crate::{image, root, run, step, vm};

/// The matrix kernel the node boots: Debian 12's own (bookworm-security), with cpu.stat.local
/// (6.8+) and PSI.
const KERNEL: &str = "6.12";
/// The Debian suite of the rootfs, the kernel's.
const SUITE: &str = "bookworm";
/// What the node runs. Recommends are not installed.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "containerd",
    "runc",
    "prometheus",
    "busybox-static",
    "kmod",
];
/// The host tools this needs.
const HOST_PACKAGES: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("dpkg-deb", "dpkg"),
];
#[expect(
    clippy::duration_suboptimal_units,
    reason = "seconds, as the messages print it; from_mins is newer than the MSRV"
)]
/// From qemu's start to the runner's first line: the kernel, systemd, dbus and containerd
/// under software emulation (about 40 s measured on a quiet 2-core host).
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
#[expect(
    clippy::duration_suboptimal_units,
    reason = "seconds, as the messages print it; from_mins is newer than the MSRV"
)]
/// From qemu's start to the verdict.
const RUN_TIMEOUT: Duration = Duration::from_secs(1500);
const RESULT: &str = "PODSTAT-NODE RESULT ";
const UP: &str = "podstat-node: guest up";
const AGENT_PREFIX: &str = "podstat-node-agent: ";

/// containerd's configuration: the CRI plugin with runc under the systemd cgroup driver.
/// `sandbox_image` is the local pause image tests/src/cri.rs builds (`PAUSE_IMAGE`): the node
/// pulls nothing.
const CONTAINERD_CONFIG: &str = r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "podstat-test.local/pause:1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"#;

/// The scenario's unit: mounts the payload disk (by label: no udev on the node), runs the
/// runner with its output on the serial console, prints the verdict and powers off.
const UNIT: &str = r#"[Unit]
Description=podstat node scenario (cargo xtask node)
After=containerd.service dbus.service
Requires=containerd.service dbus.service

[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
Environment=RUST_BACKTRACE=1
TimeoutStartSec=infinity
ExecStartPre=/bin/mkdir -p /podstat-node
ExecStartPre=/bin/mount -o ro LABEL=podstat-payload /podstat-node
ExecStart=/bin/sh -c '/podstat-node/podstat-test-node /podstat-node; rc=$?; if [ "$rc" = 0 ]; then echo "PODSTAT-NODE RESULT PASS"; else echo "PODSTAT-NODE RESULT FAIL exit=$rc"; fi'
ExecStopPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"#;

/// Units of the packages that a node of this scenario does not need, masked: Debian's own
/// Prometheus (the runner starts one with the shipped rules), consoles and periodic jobs.
const MASKED: &[&str] = &[
    "prometheus.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
    "systemd-pstore.service",
];

fn cache() -> PathBuf {
    root().join("target/node-cache")
}

fn out_dir() -> PathBuf {
    root().join("target/node")
}

/// The package tree's cache key: what mmdebstrap is given.
fn packages_key(mirrors: &[String]) -> String {
    let mut h = Sha256::new();
    for p in std::iter::once(&SUITE)
        .chain(PACKAGES)
        .map(|s| s.as_bytes())
        .chain(mirrors.iter().map(String::as_bytes))
    {
        h.update(p);
        h.update([0]);
    }
    h.finalize().iter().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The packages a failed mmdebstrap names (apt's "Unable to locate package X", "Failed to
/// fetch …/X_<version>_<arch>.deb", "X : Depends: …").
fn failed_packages(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let name = if let Some(rest) = line.split("Unable to locate package ").nth(1) {
            rest.split_whitespace().next().map(str::to_owned)
        } else if let Some(rest) = line.split("Failed to fetch ").nth(1) {
            rest.split_whitespace()
                .next()
                .and_then(|url| url.rsplit('/').next())
                .and_then(|f| f.split('_').next())
                .map(str::to_owned)
        } else if line.contains(" : Depends: ") {
            line.split(" : ").next().map(|s| s.trim().to_owned())
        } else {
            None
        };
        if let Some(n) = name
            && !n.is_empty()
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

/// The rootfs image of this run: the cached package tree (mmdebstrap, built if missing) with
/// the node's configuration applied, written with `mkfs.ext4 -d` to target/node/rootfs.ext4.
/// Returns (path, seconds mmdebstrap took, or 0 when the tree came from the cache).
fn rootfs(start: Instant, k: &vm::Kernel, modules: &Path) -> anyhow::Result<(PathBuf, f64)> {
    let (main, security) = vm::mirrors()?;
    let sources = vec![
        format!("deb {main} {SUITE} main"),
        format!("deb {main} {SUITE}-updates main"),
        format!("deb {security} {SUITE}-security main"),
    ];
    let key = packages_key(&sources);
    let dir = cache().join(format!("debian-{key}"));
    let done = cache().join(format!("debian-{key}.done"));
    let mut secs = 0.0;
    if done.is_file() && dir.is_dir() {
        step(
            start,
            &format!("node packages from the cache: {}", dir.display()),
        );
    } else {
        let t = Instant::now();
        step(
            start,
            &format!(
                "building the node rootfs with mmdebstrap ({SUITE}: {})",
                PACKAGES.join(" ")
            ),
        );
        fs::create_dir_all(cache())?;
        let _ = fs::remove_dir_all(&dir);
        let mut cmd = Command::new("mmdebstrap");
        cmd.args([
            "--variant=apt",
            "--mode=root",
            "--aptopt=APT::Install-Recommends \"false\"",
        ])
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
        ])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&dir)
        .args(&sources);
        let out = cmd
            .output()
            .context("running mmdebstrap (Debian package mmdebstrap)")?;
        let log = cache().join("mmdebstrap.log");
        fs::write(
            &log,
            [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
        )?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let named = failed_packages(&text);
            let _ = fs::remove_dir_all(&dir);
            bail!(
                "the node rootfs could not be built: {} (mmdebstrap {}; log {})",
                if named.is_empty() {
                    "mmdebstrap failed".to_owned()
                } else {
                    format!("package(s) {} could not be installed", named.join(", "))
                },
                out.status,
                log.display()
            );
        }
        fs::write(&done, "")?;
        secs = t.elapsed().as_secs_f64();
        eprintln!("node packages installed in {secs:.0}s: {}", dir.display());
    }
    // The configuration is applied on every run (it is idempotent), so changing it never needs
    // a new mmdebstrap.
    configure(&dir, k, modules)?;
    fs::create_dir_all(out_dir())?;
    let img = out_dir().join("rootfs.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "podstat-root", "-d"])
        .arg(&dir)
        .arg(&img)
        .arg("3G"))
    .context("making the rootfs image (mkfs.ext4 -d)")?;
    Ok((img, secs))
}

/// The node's configuration on top of the packages: the kernel's modules, containerd's
/// config, the scenario unit, masked units, the host name.
fn configure(dir: &Path, k: &vm::Kernel, modules: &Path) -> anyhow::Result<()> {
    let mods = dir.join("lib/modules").join(k.release());
    fs::create_dir_all(mods.parent().context("modules dir")?)?;
    run(Command::new("cp").arg("-a").arg(modules).arg(&mods))?;
    run(Command::new("chroot")
        .arg(dir)
        .args(["depmod", k.release()]))?;
    // containerd's overlayfs snapshotter needs the module (=m in Debian's kernel).
    fs::write(
        dir.join("etc/modules-load.d/podstat-node.conf"),
        "overlay\n",
    )?;
    fs::create_dir_all(dir.join("etc/containerd"))?;
    fs::write(dir.join("etc/containerd/config.toml"), CONTAINERD_CONFIG)?;
    let sys = dir.join("etc/systemd/system");
    fs::write(sys.join("podstat-node.service"), UNIT)?;
    let wants = sys.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let link = wants.join("podstat-node.service");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/podstat-node.service", &link)?;
    for unit in MASKED {
        let p = sys.join(unit);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink("/dev/null", &p)?;
    }
    fs::write(dir.join("etc/hostname"), "podstat-node\n")?;
    // containerd copies both into every host-network sandbox; mmdebstrap writes neither.
    fs::write(
        dir.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 podstat-node\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    let resolv = dir.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    fs::write(
        &resolv,
        "# no DNS on this node: every pod uses the host network\n",
    )?;
    fs::write(dir.join("etc/fstab"), "")?;
    Ok(())
}

/// The payload disk: the runner, the image (and its binary), the expectations and deploy/.
fn payload(k: &vm::Kernel, bins: &Path, archive: &Path) -> anyhow::Result<PathBuf> {
    let dir = out_dir().join("payload");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::copy(
        bins.join("podstat-test-node"),
        dir.join("podstat-test-node"),
    )?;
    fs::copy(archive, dir.join("podstat-image.oci.tar"))?;
    // The image's binary, for the scenario's second podstat (the extended cgroup families).
    fs::copy(bins.join("podstat"), dir.join("podstat"))?;
    fs::write(dir.join("image"), image::image_name())?;
    fs::write(dir.join("expect"), k.expect_file())?;
    run(Command::new("cp")
        .arg("-r")
        .arg(root().join("deploy"))
        .arg(dir.join("deploy")))?;
    let img = out_dir().join("payload.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "podstat-payload", "-d"])
        .arg(&dir)
        .arg(&img)
        .arg("256M"))
    .context("making the payload image (mkfs.ext4 -d)")?;
    Ok(img)
}

/// `cargo xtask node`.
#[expect(
    clippy::too_many_lines,
    reason = "the steps in order, each a few lines"
)]
pub fn node(start: Instant) -> anyhow::Result<()> {
    crate::setup::debian_packages(start, HOST_PACKAGES)?;
    let k = vm::kernels(&[KERNEL.into()])?
        .into_iter()
        .next()
        .context("the node's kernel")?;
    let vmlinuz = vm::fetch(start, std::slice::from_ref(&k))?
        .into_iter()
        .next()
        .context("vmlinuz")?;
    let modules = vm::modules(&k)?;
    let (rootfs, built_secs) = rootfs(start, &k, &modules)?;
    let bins = vm::build_static(
        start,
        &[
            ("podstat", "podstat"),
            ("podstat-tests", "podstat-test-node"),
        ],
    )?;
    step(start, "the image (cargo xtask image) and the payload disk");
    let built = image::write(&bins.join("podstat"))?;
    eprintln!(
        "image {}: {} archive",
        image::image_name(),
        image::mib(built.archive_bytes)
    );
    let payload = payload(&k, &bins, &built.archive)?;

    step(
        start,
        &format!(
            "booting the node: kernel {KERNEL} ({}), systemd, containerd",
            k.pin()
        ),
    );
    let out = out_dir();
    let console_log = out.join("console.log");
    let agent_log_path = out.join("agent.log");
    let mut cmd = vm::qemu(
        3072,
        &vmlinuz,
        "console=ttyS0 root=/dev/nvme0n1 rw rootfstype=ext4 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 panic=-1 loglevel=4",
    );
    // Both disks are snapshot=on: the cached rootfs stays as built. One NVMe controller with
    // the disks as its namespaces 1 and 2, so the root is always nvme0n1: with a controller
    // each, the kernel probes them asynchronously and their names can swap (a run booted the
    // payload as its root and found no init).
    cmd.arg("-device").arg("nvme,id=nvme0,serial=podstat-node");
    for (nsid, id, file) in [(1, "root", &rootfs), (2, "payload", &payload)] {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id={id},format=raw,snapshot=on",
                file.display()
            ))
            .arg("-device")
            .arg(format!("nvme-ns,drive={id},bus=nvme0,nsid={nsid}"));
    }
    // Booted once more when the kernel died rather than a check failing, by the matrix's rule
    // (`vm::boot_again`; a run here oopsed in sched_clock_cpu 1.8 s into the boot).
    let mut attempt = 1;
    let (seen, t) = loop {
        let mut agent_log = fs::File::create(&agent_log_path)?;
        let t = Instant::now();
        let seen = vm::run_console(
            &mut cmd,
            &vm::Console {
                name: "node",
                up: UP,
                up_within: BOOT_TIMEOUT,
                result: RESULT,
                within: RUN_TIMEOUT,
                echo: &["podstat-node:"],
                heartbeat: None,
            },
            &console_log,
            |line| {
                if let Some(l) = line.strip_prefix(AGENT_PREFIX) {
                    let _ = writeln!(agent_log, "{l}");
                }
            },
        )?;
        let why = vm::boot_again(seen.verdict.as_deref() == Some("PASS"), &seen, &console_log);
        let Some(why) = why.filter(|_| attempt == 1) else {
            break (seen, t);
        };
        let first = out.join("console.boot1.log");
        fs::rename(&console_log, &first)?;
        eprintln!(
            "node: the guest's kernel died ({why}; after {:.0}s; console kept in {}); booting once more",
            t.elapsed().as_secs_f64(),
            first.display()
        );
        attempt += 1;
    };
    let total = t.elapsed().as_secs_f64();
    eprintln!(
        "\nnode console: {}\nagent log:    {}",
        console_log.display(),
        agent_log_path.display()
    );
    let Some(up) = seen.up_at else {
        let console = fs::read_to_string(&console_log).unwrap_or_default();
        let panic = console
            .lines()
            .find(|l| l.contains("Kernel panic") || l.contains("Oops:"))
            .map_or_else(String::new, |l| format!("; the kernel said: {}", l.trim()));
        bail!(
            "the node did not boot: kernel {KERNEL} ({}) with the rootfs {} printed no {UP:?} (allowed {}s, qemu ran {total:.0}s{panic}; console: {})",
            k.pin(),
            rootfs.display(),
            BOOT_TIMEOUT.as_secs(),
            console_log.display()
        );
    };
    eprintln!(
        "node: rootfs {}, booted to the scenario in {up:.0}s, scenario {:.0}s, {total:.0}s in qemu",
        if built_secs > 0.0 {
            format!("built in {built_secs:.0}s")
        } else {
            "cached".into()
        },
        total - up
    );
    match seen.verdict.as_deref() {
        Some("PASS") => Ok(()),
        Some(v) => bail!(
            "the node scenario failed: {v} (console: {})",
            console_log.display()
        ),
        None => bail!(
            "the node scenario printed no verdict within {}s (console: {})",
            RUN_TIMEOUT.as_secs(),
            console_log.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_packages_are_named() {
        let log = "E: Unable to locate package containerdx\n\
                   E: Failed to fetch http://m/debian/pool/main/r/runc/runc_1.1.5+ds1-1_amd64.deb  404\n\
                   prometheus : Depends: libfoo but it is not installable\n";
        assert_eq!(failed_packages(log), ["containerdx", "runc", "prometheus"]);
        assert!(failed_packages("I: all fine").is_empty());
    }
}
