//! cgroup discovery, classification and parsing: the kernel facts behind the per-pod CPU metrics.
//!
//! - [`Layout::detect`] finds the hierarchy that holds the cpu controller (v2, v1, hybrid) from
//!   the directory tree under `--path.cgroupfs`.
//! - [`discover`] walks it and returns pod and container cgroups with their kernfs id (the cgroup
//!   id eBPF sees), classified from the path by [`classify`].
//! - [`read_sample`] reads one cgroup's cpu files into a [`CgroupSample`] with the parsers in
//!   [`parse`].
//!
//! Per-scrape steps never fail as a whole: problems are counted by [`ErrorReason`] in
//! [`ErrorCounts`].

mod classify;
mod discover;
mod error;
mod layout;
pub mod parse;
mod read;
pub mod sched_ext;

pub use classify::{CgroupKind, Driver, Qos, Runtime, classify};
pub use discover::{DiscoverOptions, Discovered, discover};
pub use error::{CgroupError, ErrorCounts, ErrorReason};
pub use layout::{CgroupVersion, Layout, Mode};
pub use parse::{CpuMax, CpuStat, Pressure};
pub use read::{CgroupSample, Limits, Presence, read_counters, read_limits, read_sample};

#[cfg(test)]
pub(crate) mod test_util {
    use std::{
        fs,
        path::{Path, PathBuf},
        sync::atomic::{AtomicU32, Ordering},
    };

    /// Ids used across the fixture trees (see `agent/tests/fixtures/README.md`).
    pub mod ids {
        pub const UID_B: &str = "8a3d5f2e-1b4c-4d6e-9f0a-1b2c3d4e5f60";
        pub const UID_G: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
        pub const UID_E: &str = "c7b6a5d4-e3f2-4a1b-8c9d-0e1f2a3b4c5d";
        pub const STATIC_UID: &str = "2c4a5f0e8b0d1f3a7e6c9b8d7a6f5e4d";
        pub const C1: &str = "3b8f0a1c9d2e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
        pub const P1: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a1908f7e6d5c4b";
        pub const C2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        pub const C3: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    }

    /// `<root>` of a fixture host's cgroupfs.
    pub fn fixture(name: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hosts"))
            .join(name)
            .join("sys/fs/cgroup")
    }

    /// A scratch directory tree, removed on drop.
    pub struct TempTree(PathBuf);

    impl TempTree {
        pub fn new(tag: &str) -> TempTree {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "podstat-cgroup-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            TempTree(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        pub fn file(&self, rel: &str, content: &str) {
            let p = self.0.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
            }
            fs::write(&p, content).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }

        /// Creates `<root>/<link>` pointing at `target` (relative to the link's directory).
        pub fn symlink(&self, target: &str, link: &str) {
            let p = self.0.join(link);
            std::os::unix::fs::symlink(target, &p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }

    impl Drop for TempTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
