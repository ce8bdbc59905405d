//! Installs what the build and the tests need, when it is missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{run, step};

/// (command that proves it is installed, Debian package).
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("stress-ng", "stress-ng"),
    // The end-to-end test: pods through containerd's CRI, images from busybox-static.
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    ("tmux", "tmux"),
    // The churn soak reads the per-cgroup maps' entry counts (tests/src/churn.rs).
    ("bpftool", "bpftool"),
];
/// What `cargo xtask vm` needs: qemu, a static busybox for the guest, sha256sum, and a musl C
/// compiler for the C in the agent's dependencies (ring, for the kubelet's TLS).
pub const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("x86_64-linux-musl-gcc", "musl-tools"),
    ("busybox", "busybox-static"),
    ("sha256sum", "coreutils"),
    ("dpkg-deb", "dpkg"),
];
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("stress-ng", "stress-ng"),
    ("runqlat", "libbpf-tools"),
    ("bpftool", "bpftool"),
    ("iperf3", "iperf3"),
    ("ethtool", "ethtool"),
];

fn have(cmd: &str) -> bool {
    which(cmd).is_some()
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Debian puts libbpf-tools and bpftool in /usr/sbin, which a non-login PATH may lack.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(cmd)).find(|p| p.is_file())
}

/// Nightly `rust-src` and `bpf-linker` built against the nightly's own LLVM.
pub fn toolchain(start: Instant) -> anyhow::Result<()> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running rustc +nightly -vV (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: `rustc +nightly -vV` failed. The eBPF build needs the nightly that ships with this machine image"
        );
    }
    let vv = String::from_utf8_lossy(&out.stdout);
    let llvm_major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV printed no LLVM version")?
        .to_owned();

    let sysroot = String::from_utf8(
        Command::new("rustc")
            .args(["+nightly", "--print", "sysroot"])
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let sysroot = PathBuf::from(sysroot);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        step(
            start,
            "installing the nightly rust-src component (for -Z build-std=core)",
        );
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if bpf_linker_ok(&llvm_major) {
        return Ok(());
    }
    step(
        start,
        &format!(
            "building bpf-linker against the nightly's LLVM {llvm_major} (a few minutes, once)"
        ),
    );
    let lib = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.")
                    || (n.starts_with("libLLVM")
                        && Path::new(n).extension().is_some_and(|x| x == "so"))
            })
        })
        .with_context(|| {
            format!(
                "no libLLVM in {}: this nightly does not ship LLVM as a shared library",
                lib.display()
            )
        })?;
    let prefix = crate::root().join("target/xtask/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    let install = |locked: bool| {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "install", "--force"]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix)
            // bpf-linker loads the nightly's libLLVM at run time: find it there.
            .env(
                "RUSTFLAGS",
                format!("-C link-args=-Wl,-rpath,{}", lib.display()),
            );
        run(&mut cmd)
    };
    // Without --locked as a second try, in case the lock file pins something this toolchain
    // cannot build.
    install(true)
        .or_else(|_| install(false))
        .context("building bpf-linker")?;
    if !bpf_linker_ok(&llvm_major) {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` still fails; is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

/// bpf-linker runs. (It links against the nightly's libLLVM, so it must load.)
fn bpf_linker_ok(_llvm_major: &str) -> bool {
    which("bpf-linker").is_some_and(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Installs the Debian packages whose commands are missing (one apt-get run).
pub fn debian_packages(start: Instant, wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(
        start,
        &format!("installing Debian packages: {}", missing.join(" ")),
    );
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing {} and no apt-get here: install them by hand",
            missing.join(", ")
        );
    }
    // Another apt run (unattended-upgrades, a second checkout's setup) holds the dpkg lock for a
    // while; wait for it rather than fail.
    let lock_wait = ["-o", "DPkg::Lock::Timeout=600"];
    run(Command::new("apt-get")
        .args(lock_wait)
        .args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(lock_wait)
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for (cmd, pkg) in wanted {
        if !have(cmd) {
            bail!("installed {pkg} but `{cmd}` is still not found");
        }
    }
    Ok(())
}

/// Full path of a command, searching the sbin directories too.
pub fn find(cmd: &str) -> anyhow::Result<PathBuf> {
    which(cmd).with_context(|| format!("`{cmd}` not found"))
}
