//! What every probe shares (`ebpf/src/kernel.rs`): the kernel struct offsets, the `KNOWN`
//! map of tracked cgroups, the kernel histogram layout, and the map-full slots.
//!
//! The kernel aggregates into histograms keyed by `{cgroup id, bucket}`; userspace adds the
//! buckets up, converts units and fills in empty buckets. Only cgroups that userspace put in
//! [`KNOWN_MAP`] (pods and containers) are tracked, which bounds every map by the number of
//! pod cgroups on the node.

use crate::sched::SchedStats;

/// cgroup id → [`Known`]: the cgroups userspace wants measured.
pub const KNOWN_MAP: &str = "KNOWN";

/// Per-CPU array of insert failures, indexed by `MAP_*` (names in [`MAP_NAMES`]).
pub const MAP_FULL_MAP: &str = "MAP_FULL";

/// Read-only global with the kernel struct offsets ([`Offsets`]).
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Default sizing: cgroups tracked (a 300-pod node has about 1200 pod and container cgroups).
pub const DEFAULT_MAX_CGROUPS: u32 = 4096;

/// Histogram buckets in the kernel: `BUCKETS` finite upper bounds, then +Inf, then the sum.
pub const BUCKETS: usize = 12;

/// Slot of +Inf in a [`Hist`].
pub const INF_SLOT: usize = BUCKETS;

/// Slot that holds the sum of observed values (ns, or threads).
pub const SUM_SLOT: usize = BUCKETS + 1;

/// Slots in a [`Hist`].
pub const HIST_SLOTS: usize = BUCKETS + 2;

/// One histogram in the kernel: per-bucket counts (not cumulative), +Inf, and the sum.
/// One map value holds a cgroup's whole histogram, so userspace reads a cgroup with a single
/// lookup instead of one per bucket.
pub type Hist = [u64; HIST_SLOTS];

/// Maps whose inserts can fail, for `podstat_bpf_map_full_total{map}`.
pub const MAP_WAIT: u32 = 0;

pub const MAP_THROTTLE_STATS: u32 = 1;

pub const MAP_PREEMPT_PAIRS: u32 = 2;

pub const MAP_WAIT_PAIRS: u32 = 3;

/// Slots of [`MAP_FULL_MAP`], named as in the metric.
pub const MAP_NAMES: [&str; 4] = [
    "wait_start",
    "throttle_stats",
    "preempt_pairs",
    "wait_pairs",
];

/// Value of [`KNOWN_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Identifies the pod: tasks in cgroups with the same `pod_id` belong to the same pod.
    pub pod_id: u64,
    /// The pod-level cgroup's id for a container cgroup (0 for a pod cgroup or when unknown):
    /// a pod-level quota throttles the pod's cfs_rq, not the container's.
    pub parent_id: u64,
    /// Written by the kernel (userspace inserts 0): when a task of this cgroup last left the
    /// CPU while its group was throttled (`bpf_ktime_get_ns`), in sched_info mode with throttle
    /// switch mode. Only while it is recent does a switch-in look for a throttle record.
    pub throttled_at_ns: u64,
    /// Keeps the fields above, read on every switch-in of the cgroup's tasks, off the cache
    /// lines of the counters below, which every CPU running the cgroup's tasks adds to: 64
    /// bytes put a whole line between them wherever the kernel places the value. Measured with
    /// `cargo xtask bench --skip-e2e` (docs/architecture.md has the table): in the slower runs
    /// the pod path cost 237–283 ns per event with it and 302–332 ns without.
    pub pad: [u64; 8],
    /// Written by the kernel (userspace inserts zeros): the cgroup's run-queue latency and
    /// preemptions. Kept in the entry the probe looks up anyway, so a tracked task's
    /// switch-in costs one hash lookup, not two, and the stats go when the cgroup leaves.
    pub sched: SchedStats,
}

/// Kernel struct offsets in bytes, resolved from the running kernel's BTF at load time.
/// A zero `valid` means "not resolved": the programs do nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.cgroups` (struct css_set *).
    pub task_cgroups: u32,
    /// `css_set.subsys[cpu_cgrp_id]` (struct cgroup_subsys_state *).
    pub css_set_cpu_subsys: u32,
    /// `cgroup_subsys_state.cgroup` (struct cgroup *).
    pub css_cgroup: u32,
    /// `cgroup.kn` (struct kernfs_node *).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64).
    pub kn_id: u32,
    /// `task_struct.pid` (pid_t).
    pub task_pid: u32,
    /// `task_struct.__state` (5.14+) or `.state`: low 32 bits, 0 = TASK_RUNNING.
    pub task_state: u32,
    /// `cfs_rq.tg` (struct task_group *).
    pub cfs_rq_tg: u32,
    /// Byte holding `cfs_rq.throttled` (an `int` on older kernels, a one-bit bitfield in 6.18).
    pub cfs_rq_throttled: u32,
    /// Mask of the `throttled` bit(s) in that byte (0xff for an int, which is 0 or 1).
    pub cfs_rq_throttled_mask: u32,
    /// `cfs_rq.h_nr_running` (≤ 6.13) or `.h_nr_queued` (6.14+), unsigned int.
    pub cfs_rq_h_nr: u32,
    /// `task_group.css.cgroup` (struct cgroup *): `task_group.css` + `css_cgroup`.
    pub tg_css_cgroup: u32,
    /// `task_group.cfs_bandwidth.period` (ktime_t, ns).
    pub tg_period: u32,
    /// `task_group.cfs_bandwidth.period_timer.node.expires` (ktime_t, CLOCK_MONOTONIC ns).
    pub tg_period_expires: u32,
    /// `task_struct.se.cfs_rq`: the cfs_rq of the task's own group on its CPU.
    pub task_se_cfs_rq: u32,
    /// `task_struct.se.parent`: the group entity of the task's group.
    pub task_se_parent: u32,
    /// `sched_entity.cfs_rq` and `sched_entity.parent`, to walk up the group hierarchy.
    pub se_cfs_rq: u32,
    pub se_parent: u32,
    /// 1 on kernels with task-based throttling (6.18+: `task_struct.throttled` exists), where a
    /// throttled task is dequeued before it is switched out and so is not in `h_nr_*`.
    pub task_based_throttle: u32,
    /// With task-based throttling: byte and mask of `task_struct.throttled`, set when the task
    /// has really been throttled (not merely preempted while its cfs_rq was throttled).
    pub task_throttled: u32,
    pub task_throttled_mask: u32,
    /// `task_struct.sched_info.last_queued` (unsigned long long, rq clock ns; CONFIG_SCHED_INFO).
    pub task_last_queued: u32,
    /// `cfs_rq.rq` (struct rq *; CONFIG_FAIR_GROUP_SCHED).
    pub cfs_rq_rq: u32,
    /// `rq.clock` (u64 ns, the clock `sched_info` stamps `last_queued` with).
    pub rq_clock: u32,
    /// `task_struct.sched_info.run_delay` (unsigned long long ns): the kernel's total, which it
    /// also adds to when a waiting task leaves a run queue to migrate.
    pub task_run_delay: u32,
    /// [`RUNQ_MODE_SCHED_INFO`](crate::sched::RUNQ_MODE_SCHED_INFO) or [`RUNQ_MODE_WAKEUP`](crate::sched::RUNQ_MODE_WAKEUP): how run-queue latency is measured.
    pub sched_info: u32,
    /// 1 when the fields above are filled in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): #[repr(C)], fixed-width integer fields only, no implicit padding (padding
    // is spelled out as `_pad`), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Known {}
    unsafe impl aya::Pod for super::Offsets {}
}

/// Slot of the first bound that `value` is at most, or [`INF_SLOT`].
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn bucket_of(value: u64, bounds: &[u64; BUCKETS]) -> usize {
    let mut i = 0;
    while i < BUCKETS {
        if value <= bounds[i] {
            return i;
        }
        i += 1;
    }
    INF_SLOT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sched::RUNQ_BOUNDS_NS,
        throttle::{PERIOD_BOUNDS_NS, THREAD_BOUNDS},
    };

    #[test]
    fn known_keeps_a_cache_line_between_read_fields_and_counters() {
        let read_end = core::mem::offset_of!(Known, throttled_at_ns) + 8;
        let counters = core::mem::offset_of!(Known, sched);
        // A 64-byte line can hold the last read byte and the first counter byte only if they
        // are less than 64 bytes apart, wherever the kernel places the value.
        assert!(counters - (read_end - 1) > 64, "{read_end} {counters}");
    }

    #[test]
    fn buckets_are_upper_inclusive() {
        assert_eq!(bucket_of(0, &RUNQ_BOUNDS_NS), 0);
        assert_eq!(bucket_of(5_000, &RUNQ_BOUNDS_NS), 0);
        assert_eq!(bucket_of(5_001, &RUNQ_BOUNDS_NS), 1);
        assert_eq!(bucket_of(1_000_000_001, &RUNQ_BOUNDS_NS), INF_SLOT);
        assert_eq!(bucket_of(4, &THREAD_BOUNDS), 3);
        assert_eq!(bucket_of(5, &THREAD_BOUNDS), 4);
        for bounds in [RUNQ_BOUNDS_NS, PERIOD_BOUNDS_NS, THREAD_BOUNDS] {
            assert!(
                bounds.windows(2).all(|w| w[0] < w[1]),
                "bounds must increase"
            );
        }
    }
}
