//! sched_ext: whether a BPF scheduler replaces CFS (`/sys/kernel/sched_ext/state`, Linux 6.12+).
//!
//! Read here, beside the cgroup files, because it decides what those files mean: with a BPF
//! scheduler loaded, `cpu.max` and `cpu.weight` (v1 `cpu.cfs_quota_us`, `cpu.shares`) do only
//! what that scheduler implements, and the CFS bandwidth counters (`nr_throttled`,
//! `throttled_usec`) and the throttle probe may say nothing about the tasks it runs.
//! Layout: <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/ext.c> (`scx_attr_state`,
//! `scx_attr_ops`: `state` is one of `enabling`, `enabled`, `disabling`, `disabled`; `root/ops`
//! names the loaded scheduler and exists only while one is).

use std::{fs, path::Path};

/// The node's sched_ext state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedExt {
    /// `enabling`, `enabled`, `disabling` or `disabled`, as the kernel writes it.
    pub state: String,
    /// The loaded BPF scheduler's name (`root/ops`, else the older top-level `ops`), if any.
    pub scheduler: Option<String>,
}

impl SchedExt {
    /// A BPF scheduler is (being) loaded: the CFS bandwidth controls may not apply.
    pub fn active(&self) -> bool {
        self.state != "disabled"
    }
}

/// Reads `<sysfs>/kernel/sched_ext`; `None` when the kernel has no sched_ext
/// (`CONFIG_SCHED_CLASS_EXT` unset or before 6.12), or its state cannot be read.
pub fn read(sysfs: &Path) -> Option<SchedExt> {
    let dir = sysfs.join("kernel/sched_ext");
    let state = fs::read_to_string(dir.join("state")).ok()?;
    let state = state.trim();
    if state.is_empty() {
        return None;
    }
    let scheduler = ["root/ops", "ops"]
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    Some(SchedExt {
        state: state.to_owned(),
        scheduler,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(name)
            .join("sys")
    }

    #[test]
    fn reads_the_state_and_the_scheduler() {
        assert_eq!(
            read(&fixture("v2-systemd-containerd")),
            Some(SchedExt {
                state: "enabled".into(),
                scheduler: Some("rusty_1.0.14_x86_64_unknown_linux_gnu".into()),
            })
        );
        let off = read(&fixture("sched-ext-disabled")).expect("state file");
        assert_eq!(off.state, "disabled");
        assert_eq!(off.scheduler, None);
        assert!(!off.active());
        // No sched_ext directory: the kernel has none.
        assert_eq!(read(&fixture("net-mlx5")), None);
    }
}
