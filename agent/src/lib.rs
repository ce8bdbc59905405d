//! podstat: per-pod CPU throttling, run-queue and RX-steering metrics for Kubernetes nodes.
//!
//! The binary (`src/main.rs`) is thin: it parses the CLI and calls into this library, so the
//! golden-output tests can drive the same code against fixture host trees.

pub mod cgroup;
pub mod check;
pub mod cli;
pub mod collector;
pub mod exposition;
pub mod http;
pub mod metadata;
pub mod probe;
pub mod server;
pub mod util;
pub mod view;

use std::{path::PathBuf, sync::Arc};

use prometheus_client::registry::Registry;

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

/// The agent's pieces, wired together.
pub struct Built {
    pub registry: Registry,
    pub gatherer: Arc<collector::Gatherer>,
    /// Keeps the probes' KNOWN map and the identity join current; `None` without probes.
    pub tracker: Option<Arc<probe::tracker::Tracker>>,
}

/// Builds the registry with the enabled collectors. With probes loaded, also the tracker,
/// which has already done its first pass when this returns.
pub fn build_registry(
    enabled: &[&'static str],
    paths: &Paths,
    cgroup: &collector::cgroup::Options,
    probes: &Arc<probe::Probes>,
    metadata: &Arc<metadata::Store>,
) -> Built {
    let identity = Arc::new(probe::tracker::Identity::default());
    let tracker = if probes.maps().is_some() {
        match collector::cgroup::Targets::new(paths, cgroup, metadata) {
            Ok(targets) => {
                let t = Arc::new(probe::tracker::Tracker::new(
                    Arc::clone(probes),
                    targets,
                    Arc::clone(&identity),
                ));
                let n = t.refresh();
                tracing::info!(cgroups = n, "probes track the pod and container cgroups");
                Some(t)
            }
            Err(why) => {
                tracing::warn!(reason = %why.0, "no cgroup layout: the probes cannot attribute anything to pods");
                None
            }
        }
    } else {
        None
    };
    let ctx = collector::Context {
        paths,
        cgroup,
        probes,
        identity: &identity,
        metadata,
    };
    let gatherer = Arc::new(collector::Gatherer::new(enabled, &ctx));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Arc::clone(&gatherer)));
    registry.register_collector(Box::new(metadata::Metrics(Arc::clone(metadata))));
    Built {
        registry,
        gatherer,
        tracker,
    }
}
