//! The harness of the privileged integration tests, the benches and the VM scenario (real
//! cgroups, real eBPF, network namespaces, the agent over HTTP).
//!
//! Everything a test creates is named `podstat-test-*` and removed by a guard's `Drop`, so
//! it goes away when the test passes, fails or panics. Tests `panic!` with context (see
//! tests/README.md) and never skip silently: a missing prerequisite is a failure that says
//! what is missing.
//!
//! - [`cgroup`]: v1 hierarchies, [`CgroupTree`] and placing processes in it.
//! - [`proc`]: [`Proc`] and [`Logged`] process guards.
//! - [`http`]: the one HTTP GET ([`http_get`]) and [`scrape`].
//! - [`agent`]: [`podstat_bin`], [`start_agent`] and waiting for readiness.
//! - [`netns`]: [`NetPair`], two namespaces joined by a veth pair.
//! - [`expo`]: reading a scrape ([`find`], [`probe_attached`], [`Hist`]).
//! - [`bpf`]: `bpf_stats` and per-program run time, for the benches.
//! - [`bucketing`]: the bucketing microbenchmark's programs under `BPF_PROG_TEST_RUN`.
//! - [`tls`]: test certificates, and [`tls::Secure`], an agent behind TLS and basic auth.

pub mod agent;
pub mod bench_json;
pub mod bpf;
pub mod bucketing;
pub mod cgroup;
pub mod churn;
pub mod cri;
pub mod dashboard;
pub mod deploy;
pub mod expo;
pub mod http;
pub mod kernel;
pub mod kubelet;
pub mod netns;
pub mod oracle;
pub mod proc;
pub mod prometheus;
pub mod rules;
pub mod tls;

use std::{thread, time::Instant};

pub use agent::{
    agent_command, free_addr, podstat_bin, start_agent, start_secure_agent, wait_healthy,
    wait_metrics,
};
pub use cgroup::{CgroupTree, V1, v1_hierarchies};
pub use expo::{Hist, Sample, find, parse_exposition, probe_attached};
pub use http::{Response, free_port, http_get, scrape};
pub use netns::NetPair;
pub use proc::{Logged, Proc};

/// Panics unless we are root: the tests create cgroups and load eBPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the privileged integration tests need root (real cgroups, eBPF); run them through `sudo cargo xtask test`"
    );
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

/// Number of online CPUs.
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
