//! Errors and per-reason error counters of the cgroup module.
//!
//! Detecting the hierarchy layout is the only fallible step that returns an error: without a
//! cpu controller nothing in this module can work. Everything that runs on each scrape
//! (discovery, reading, parsing) is tolerant instead: a cgroup that vanished, a file that
//! cannot be read, a malformed value or an unknown key is counted in [`ErrorCounts`] and the
//! walk goes on.

use std::{io, path::PathBuf};

/// Why [`Layout::detect`](super::Layout::detect) failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroupfs root (or one of its files needed for detection) could not be read.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Neither a v1 hierarchy nor the cgroup2 mount offers the cpu controller.
    #[error(
        "no cpu controller under {}: no cgroup v1 hierarchy named with `cpu` and no cgroup2 \
         mount listing `cpu` in cgroup.controllers",
        root.display()
    )]
    NoCpuController { root: PathBuf },
}

/// Reason a cgroup, file or field was skipped. A fixed, bounded set, so it can be a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorReason {
    /// The cgroup directory disappeared between listing and reading (ENOENT).
    Vanished,
    /// A directory or file exists but could not be read (EACCES, EIO, ...).
    Unreadable,
    /// A line or value did not have the expected shape.
    Malformed,
    /// A key this version of podstat does not know (newer kernel, schedstats, ...).
    UnknownField,
}

impl ErrorReason {
    /// All reasons, in label order.
    pub const ALL: [ErrorReason; 4] = [
        ErrorReason::Vanished,
        ErrorReason::Unreadable,
        ErrorReason::Malformed,
        ErrorReason::UnknownField,
    ];

    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Vanished => "vanished",
            ErrorReason::Unreadable => "unreadable",
            ErrorReason::Malformed => "malformed",
            ErrorReason::UnknownField => "unknown_field",
        }
    }

    const fn index(self) -> usize {
        match self {
            ErrorReason::Vanished => 0,
            ErrorReason::Unreadable => 1,
            ErrorReason::Malformed => 2,
            ErrorReason::UnknownField => 3,
        }
    }
}

/// Counts per [`ErrorReason`]. Fixed size, no allocation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorCounts {
    counts: [u64; ErrorReason::ALL.len()],
}

impl ErrorCounts {
    /// Counts one occurrence of `reason`.
    pub fn add(&mut self, reason: ErrorReason) {
        let c = &mut self.counts[reason.index()];
        *c = c.saturating_add(1);
    }

    /// The count for one reason.
    #[must_use]
    pub fn get(&self, reason: ErrorReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Every reason with its count, zeros included, so exported series are stable.
    /// The iterator holds a copy, so `self` may be reset while it is in use.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorReason, u64)> + use<> {
        ErrorReason::ALL.into_iter().zip(self.counts)
    }

    /// Sum over all reasons.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Adds every count of `other` into `self`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_reason() {
        let mut e = ErrorCounts::default();
        e.add(ErrorReason::Malformed);
        e.add(ErrorReason::Malformed);
        e.add(ErrorReason::Vanished);
        let got: Vec<_> = e.iter().map(|(r, n)| (r.as_str(), n)).collect();
        assert_eq!(
            got,
            [
                ("vanished", 1),
                ("unreadable", 0),
                ("malformed", 2),
                ("unknown_field", 0)
            ]
        );
        assert_eq!(e.total(), 3);
        let mut f = ErrorCounts::default();
        f.merge(&e);
        f.merge(&e);
        assert_eq!(f.get(ErrorReason::Malformed), 4);
    }
}
