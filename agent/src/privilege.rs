//! Giving up privilege once the probes are attached: every capability out of every set, and
//! `no_new_privs`, so that what the agent does for the rest of its life (read files and the
//! maps through the fds it holds, serve HTTP) runs with no capability at all.
//!
//! Capabilities belong to a thread, not to the process: [`drop_all`] must run before the
//! agent starts any thread (the identity refresh, the async runtime), which then inherit the
//! empty sets.
//!
//! Whether the maps stay readable without `CAP_BPF` depends on the kernel: before 6.5 the
//! `bpf(2)` syscall refuses every command, map lookups included, to a caller without
//! `CAP_BPF` while `kernel.unprivileged_bpf_disabled` is set (Debian's and Ubuntu's default).
//! Rather than compare kernel versions, [`drop_all`] asks the kernel: a short-lived thread
//! clears its own effective set and reads a map. If that is refused, `CAP_BPF` alone stays
//! (permitted and effective) and the outcome says why.

use std::fmt;

use caps::{CapSet, Capability, CapsHashSet};

/// What [`drop_all`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No capability left in any set, `no_new_privs` on. `bounding` says whether the
    /// bounding set was emptied too (that needs `CAP_SETPCAP`, which the DaemonSet does not
    /// grant; with `no_new_privs` an `execve` cannot gain capabilities either way).
    Dropped { bounding: bool },
    /// Everything dropped but `CAP_BPF`, because this kernel refuses map reads without it.
    KeptBpf { bounding: bool, refused: String },
    /// Dropping failed part way; what is left is in `/proc/self/status`.
    Failed(String),
    /// Not asked to (check's host report, the views, the tests of the library).
    NotAsked,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bnd = |b: bool| {
            if b {
                "the bounding set emptied"
            } else {
                "the bounding set kept (no CAP_SETPCAP to empty it; no_new_privs makes it moot)"
            }
        };
        match self {
            Self::Dropped { bounding } => write!(
                f,
                "every capability dropped from the effective, permitted, inheritable and ambient sets after attach, no_new_privs set, {}",
                bnd(*bounding)
            ),
            Self::KeptBpf { bounding, refused } => write!(
                f,
                "every capability dropped after attach but CAP_BPF (this kernel refuses map reads without it: {refused}), no_new_privs set, {}",
                bnd(*bounding)
            ),
            Self::Failed(why) => write!(f, "dropping capabilities failed: {why}"),
            Self::NotAsked => f.write_str("capabilities not dropped (not asked to)"),
        }
    }
}

/// Drops every capability from every set of the calling thread and sets `no_new_privs`.
/// `map_readable` reads one eBPF map and says whether the kernel allowed it; it is called on a
/// thread whose effective set is empty (`None`: no map to read, nothing to keep).
pub fn drop_all<E: std::error::Error>(
    map_readable: Option<&(dyn Fn() -> Result<(), E> + Sync)>,
) -> Outcome {
    let refused = map_readable.and_then(|read| {
        std::thread::scope(|s| {
            s.spawn(|| match caps::clear(None, CapSet::Effective) {
                Err(e) => Some(e.to_string()),
                Ok(()) => read().err().map(|e| crate::util::chain(&e)),
            })
            .join()
            .unwrap_or_else(|_| Some("the probing thread panicked".into()))
        })
    });
    match drop_sets(refused.is_some()) {
        Ok(bounding) => match refused {
            None => Outcome::Dropped { bounding },
            Some(refused) => Outcome::KeptBpf { bounding, refused },
        },
        Err(e) => Outcome::Failed(crate::util::chain(&e)),
    }
}

/// The order matters: the bounding set first (dropping from it needs `CAP_SETPCAP` in the
/// effective set), permitted last (it takes effective with it).
fn drop_sets(keep_bpf: bool) -> Result<bool, DropError> {
    let bounding = caps::clear(None, CapSet::Bounding).is_ok();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    nix::sys::prctl::set_no_new_privs().map_err(DropError::NoNewPrivs)?;
    if keep_bpf {
        let only: CapsHashSet = [Capability::CAP_BPF].into_iter().collect();
        caps::set(None, CapSet::Effective, &only)?;
        caps::set(None, CapSet::Permitted, &only)?;
    } else {
        caps::clear(None, CapSet::Effective)?;
        caps::clear(None, CapSet::Permitted)?;
    }
    Ok(bounding)
}

#[derive(Debug, thiserror::Error)]
enum DropError {
    #[error("capset")]
    Caps(#[from] caps::errors::CapsError),
    #[error("prctl(PR_SET_NO_NEW_PRIVS)")]
    NoNewPrivs(#[source] nix::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_say_what_is_left() {
        assert!(
            Outcome::Dropped { bounding: false }
                .to_string()
                .contains("no_new_privs set")
        );
        let kept = Outcome::KeptBpf {
            bounding: true,
            refused: "EPERM".into(),
        }
        .to_string();
        assert!(
            kept.contains("but CAP_BPF") && kept.contains("EPERM"),
            "{kept}"
        );
    }
}
