//! podstat: per-pod CPU throttling, run-queue and RX-steering metrics for Kubernetes nodes.
//!
//! The binary (`src/main.rs`) is thin: it parses the CLI and calls into this library, so the
//! golden-output tests can drive the same code against fixture host trees.

pub mod agent;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod collector;
pub mod exposition;
pub mod http;
pub mod identity;
pub mod metadata;
pub mod metric;
pub mod netdev;
pub mod privilege;
pub mod probe;
pub mod server;
pub mod tls;
pub mod util;
pub mod view;
pub mod webconfig;

use std::path::PathBuf;

/// Host paths, each behind a flag so a fixture tree can stand in for the host.
#[derive(Debug, Clone, clap::Args)]
pub struct Paths {
    /// Where the cgroup filesystems are mounted (the v2 root, or the tmpfs holding the v1
    /// hierarchies and, on hybrid hosts, `unified/`). In a container, mount the host's here.
    #[arg(
        long = "path.cgroupfs",
        value_name = "DIR",
        default_value = "/sys/fs/cgroup",
        env = "PODSTAT_PATH_CGROUPFS"
    )]
    pub cgroupfs: PathBuf,
    /// The host's procfs (for /proc/<pid>/comm of sandbox containers, and network counters).
    #[arg(
        long = "path.procfs",
        value_name = "DIR",
        default_value = "/proc",
        env = "PODSTAT_PATH_PROCFS"
    )]
    pub procfs: PathBuf,
    /// The host's sysfs (BTF, CPU topology, network devices).
    #[arg(
        long = "path.sysfs",
        value_name = "DIR",
        default_value = "/sys",
        env = "PODSTAT_PATH_SYSFS"
    )]
    pub sysfs: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            cgroupfs: "/sys/fs/cgroup".into(),
            procfs: "/proc".into(),
            sysfs: "/sys".into(),
        }
    }
}
