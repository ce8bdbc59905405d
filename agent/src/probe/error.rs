//! Why a probe did not attach: typed, so `podstat check` maps variants to outcomes and the
//! log keeps the whole chain.

use std::{fmt, path::PathBuf};

use super::btf::BtfError;

/// Why a probe, or one step of loading it, failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this binary was built without the eBPF object (build it with `cargo xtask build`)")]
    NotBuilt,
    #[error("kernel BTF unavailable at {}", path.display())]
    NoBtf {
        path: PathBuf,
        #[source]
        source: BtfError,
    },
    #[error("parsing {}", path.display())]
    ParseBtf {
        path: PathBuf,
        #[source]
        source: aya::BtfError,
    },
    #[error("resolving kernel struct offsets from BTF")]
    Offsets(#[source] BtfError),
    #[error("resolving network struct offsets from BTF")]
    NetOffsets(#[source] BtfError),
    /// The kernel's BTF lacks the fields a probe reads: conclusive, the kernel cannot do it.
    #[error("kernel BTF lacks what {what} needs ({config}?)")]
    KernelLacks {
        what: &'static str,
        config: &'static str,
        #[source]
        source: BtfError,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: unexpected content {content:?}", path.display())]
    Unexpected { path: PathBuf, content: String },
    #[error(
        "{}: reads 0 runs: the kernel does not keep sched_info (delay accounting off?)",
        path.display()
    )]
    SchedInfoOff { path: PathBuf },
    #[error("--probe.runqueue-mode sched-info")]
    SchedInfoAsked(#[source] Box<ProbeError>),
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {prog}: wrong program type")]
    ProgramType {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("verifier/load {how}/{point}")]
    LoadProgram {
        how: &'static str,
        point: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attach {how}/{point}")]
    Attach {
        how: &'static str,
        point: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{func} has no BTF FUNC (inlined or renamed?), no fentry/fexit")]
    NoBtfFunc { func: &'static str },
    #[error("{point}: not used (--probe.net.legacy-hooks)")]
    NotUsed { point: &'static str },
    #[error("CPU topology map")]
    Topology(#[source] Box<ProbeError>),
    #[error("{0}; and sched_switch could not attach either")]
    NoThrottleHook(Attempts),
    /// Every way in a fallback chain failed; each attempt's reason, in order.
    #[error("{0}")]
    AllFailed(Attempts),
}

impl ProbeError {
    /// Whether the failure says for certain that this host cannot run the probe (`podstat
    /// check`: unsupported), rather than that the question could not be answered (a host
    /// file that could not be read: inconclusive).
    pub fn conclusive(&self) -> bool {
        match self {
            Self::Read { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            Self::SchedInfoAsked(inner) | Self::Topology(inner) => inner.conclusive(),
            _ => true,
        }
    }
}

/// The reasons of a fallback chain, shown joined by "; ".
#[derive(Debug, Default)]
pub struct Attempts(pub Vec<ProbeError>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&crate::util::chain(e))?;
        }
        Ok(())
    }
}

/// Why a probe has nothing to watch on this host (not a failure of the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Absence {
    #[error(
        "unsupported on this host: no loaded NIC driver implements ndo_rx_flow_steer (looked for {} in /proc/kallsyms); aRFS rule churn cannot be seen on this host",
        super::net::ARFS_DRIVER_FUNCS.join(", ")
    )]
    NoArfsDriver,
}
