//! The node's receive path as the kernel shows it: pure readers and parsers over procfs, sysfs
//! and ethtool netlink, which the `net` collector encodes.
//!
//! - [`softnet`]: `/proc/net/softnet_stat`, one row per online CPU (11 to 15 columns).
//! - [`irq`]: `/proc/interrupts`, the receive queue each IRQ action serves by the drivers'
//!   naming, and `/proc/irq/<n>/smp_affinity_list`.
//! - [`netdev`]: the devices under `class/net` with their receive queues (`rps_cpus`,
//!   `rps_flow_cnt`, the IRQs matched to them) and `net.core.rps_sock_flow_entries`.
//! - [`topology`]: CPU lists and masks, the online CPUs, and the last-level cache and NUMA node
//!   of each (the steering probe's locality classes use it too).
//! - [`ethtool`]: the one ethtool netlink question (is ntuple filtering on?).
//! - [`genl`]: the generic netlink client both netlink sources use.
//! - [`qstats`]: packets per receive queue from the driver's counters (netdev netlink queue
//!   statistics, else ethtool statistics), with no program on the packet path.
//!
//! Every host path is the caller's (`--path.procfs`, `--path.sysfs`), so fixture trees stand in
//! for the host. A file the caller cannot do without returns an [`Error`]; inside a walk over
//! devices and queues, a file that cannot be read or does not parse is counted by
//! [`ErrorReason`] in [`ErrorCounts`] and skipped, as in [`crate::cgroup`].

pub mod ethtool;
pub mod genl;
pub mod irq;
#[expect(
    clippy::module_inception,
    reason = "the sysfs network devices are one of several sources here, named like the others"
)]
pub mod netdev;
pub mod qstats;
pub mod softnet;
pub mod topology;

use std::{io, path::PathBuf};

pub use ethtool::EthtoolError;
pub use irq::{DeviceIds, Interrupt, IrqAffinity};
pub use netdev::{Device, RxQueue};
pub use softnet::Softnet;
pub use topology::{CpuPlace, Topology};

use crate::cgroup::{ErrorCounts, ErrorReason};

/// Why a network source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/proc/net/softnet_stat` is not there: a kernel without networking, or procfs is not
    /// mounted at that path. The collector reports this as unsupported, not as a failed scrape.
    #[error("{} missing ({})", path.display(), softnet::MISSING)]
    NoSoftnet {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file exists (or should) but could not be read.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file was read but its value does not have the kernel's shape.
    #[error("parsing {}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

impl Error {
    /// The reason this is counted under when it only skips one item of a walk.
    #[must_use]
    pub const fn reason(&self) -> ErrorReason {
        match self {
            Error::NoSoftnet { .. } | Error::Read { .. } => ErrorReason::Unreadable,
            Error::Malformed { .. } => ErrorReason::Malformed,
        }
    }

    /// Counts this error in `errors` (for callers that skip the item and go on).
    pub fn count(&self, errors: &mut ErrorCounts) {
        errors.add(self.reason());
    }
}

/// Why a value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a CPU list like 0-3,8")]
    CpuList(String),
    #[error("{0:?} is not a hex CPU mask like 00000000,0000000f")]
    CpuMask(String),
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::{
        fs,
        path::{Path, PathBuf},
    };

    /// A file of `agent/tests/fixtures/net` (single files from real hosts).
    pub fn fixture(name: &str) -> String {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/net")).join(name);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
    }

    /// The fixture host tree with an mlx5 NIC and a veth (`proc/`, `sys/`), the one the golden
    /// exposition `net-mlx5.prom` is made from.
    pub fn mlx5_host() -> PathBuf {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hosts/net-mlx5"
        ))
        .into()
    }
}
