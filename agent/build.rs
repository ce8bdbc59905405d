//! Builds the eBPF object (`ebpf/`) with aya-build and leaves it in `OUT_DIR/podstat`,
//! where `src/probe/mod.rs` embeds it; and generates the CRI messages (`runtime.v1`) from the
//! vendored `proto/runtime/v1/api.proto` into `OUT_DIR/runtime.v1.rs`, where
//! `src/metadata/cri.rs` includes them. The proto is compiled by protox (pure Rust), so the
//! build needs no `protoc`.
//!
//! Building eBPF needs the nightly toolchain with `rust-src` and `bpf-linker`; `cargo xtask`
//! installs both. A plain `cargo build`/`cargo test` on a machine without them still works:
//! it embeds an empty object and warns, and the agent then reports every probe as
//! "not built into this binary". `cargo xtask` sets `PODSTAT_REQUIRE_EBPF=1`, which turns
//! that fallback into a hard error so a release can never ship without its probes;
//! `PODSTAT_REQUIRE_EBPF=0` skips the eBPF build and embeds the empty object (the fuzz targets,
//! which exercise only parsers, so their cold build does not compile the eBPF crate again).
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    generate_cri(&out_dir)?;
    build_ebpf(&out_dir)
}

/// The CRI's `runtime.v1` messages, without service stubs (the transport is podstat's own
/// hyper HTTP/2 client).
fn generate_cri(out_dir: &Path) -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let proto = "runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={root}/{proto}");
    let fds =
        protox::compile([proto], [root]).with_context(|| format!("compiling {root}/{proto}"))?;
    prost_build::Config::new()
        .out_dir(out_dir)
        .compile_fds(fds)
        .with_context(|| format!("generating Rust for {root}/{proto}"))?;
    Ok(())
}

fn build_ebpf(out_dir: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PODSTAT_REQUIRE_EBPF");
    let wanted = env::var_os("PODSTAT_REQUIRE_EBPF");
    let required = wanted.as_ref().is_some_and(|v| v == "1");
    let object = out_dir.join("podstat");
    if wanted.is_some_and(|v| v == "0") {
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let missing = missing_prerequisites();
    if let Some(what) = missing {
        if required {
            return Err(anyhow!(
                "cannot build the eBPF object: {what}; run `cargo xtask setup`"
            ));
        }
        println!(
            "cargo:warning=building podstat WITHOUT eBPF probes: {what} (run `cargo xtask setup`)"
        );
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let ebpf = aya_build::Package {
        name: "podstat-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    // Rebuild when the shared types change too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../common/src")
    );
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
        .context("building the eBPF object")?;
    if !object.exists() {
        return Err(anyhow!(
            "aya-build finished but {} is missing",
            object.display()
        ));
    }
    Ok(())
}

/// What is missing for an eBPF build, if anything.
fn missing_prerequisites() -> Option<String> {
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker is not on PATH".into());
    }
    let sysroot = std::process::Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    match sysroot {
        Ok(out) if out.status.success() => {
            let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let src = PathBuf::from(root).join("lib/rustlib/src/rust/library/core");
            if src.exists() {
                None
            } else {
                Some("the nightly toolchain has no rust-src component".into())
            }
        }
        _ => Some("no nightly toolchain (rustup run nightly rustc failed)".into()),
    }
}
