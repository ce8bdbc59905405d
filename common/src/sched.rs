//! The scheduler probe (`ebpf/src/sched.rs`): run-queue latency and preemptions per pod,
//! context switches per CPU.

use crate::kernel::{Hist, Layout, TIME_UNIT_LOG2};

/// Name of the per-CPU array that counts context switches; one slot.
pub const SWITCH_COUNT_MAP: &str = "SCHED_SWITCHES";

/// Name of the `tp_btf/sched_switch` program in the object.
pub const SCHED_SWITCH_PROG: &str = "sched_switch";

pub const SCHED_WAKEUP_PROG: &str = "sched_wakeup";

pub const SCHED_WAKEUP_NEW_PROG: &str = "sched_wakeup_new";

pub const SCHED_EXIT_PROG: &str = "sched_process_exit";

/// pid → [`Wait`]: when a tracked task became runnable (wakeup mode only).
pub const WAIT_MAP: &str = "WAIT_START";

/// {victim cgroup id, preemptor cgroup id} ([`PreemptPair`]) → preemptions of the victim's
/// tasks by tasks of the preemptor, counted only when the two are in different pods.
pub const PREEMPT_PAIRS_MAP: &str = "PREEMPT_PAIRS";

/// How run-queue latency is measured ([`Offsets::sched_info`](crate::kernel::Offsets::sched_info)): from the kernel's own
/// `task_struct.sched_info.last_queued`, read in `sched_switch` alone.
pub const RUNQ_MODE_SCHED_INFO: u32 = 1;

/// From `sched_wakeup`/`sched_wakeup_new` and involuntary switch-outs, kept per task in
/// [`WAIT_MAP`] (`sched_process_exit` forgets it): the fallback.
pub const RUNQ_MODE_WAKEUP: u32 = 0;

/// Default sizing: tasks waiting on a run queue at once.
pub const DEFAULT_MAX_WAITING: u32 = 32768;

/// Default sizing: (victim, preemptor) cgroup pairs from different pods counted at once.
pub const DEFAULT_MAX_PREEMPT_PAIRS: u32 = 16384;

/// Run-queue latency: zero bucket up to 2^-20 s (0.95 µs), then four buckets per power of two
/// up to 1 s: 80 buckets, 83 slots (664 bytes).
pub const RUNQ_LAYOUT: Layout = Layout {
    zero_log2: 10,
    top_log2: 30,
    unit_log2: TIME_UNIT_LOG2,
};

/// Slots of a run-queue latency histogram.
pub const RUNQ_SLOTS: usize = RUNQ_LAYOUT.slots();

/// Who took the CPU from a preempted pod task: index into [`SchedStats::preempted_by`].
pub const BY_SAME_POD: usize = 0;

pub const BY_OTHER_POD: usize = 1;

pub const BY_SYSTEM: usize = 2;

/// Value of [`WAIT_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Wait {
    pub since_ns: u64,
    pub cgroup_id: u64,
    /// Switch mode: the group whose throttle episode this task's switch-out joined (0: none).
    /// Its switch-in after the refill closes the episode, so only these tasks pay for the check.
    pub throttled_group: u64,
}

/// A cgroup's scheduler statistics, part of its [`Known`](crate::kernel::Known) entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedStats {
    /// Run-queue latency ([`RUNQ_LAYOUT`]; the sum in ns).
    pub runq: Hist<RUNQ_SLOTS>,
    /// Involuntary switch-outs while runnable, by who took the CPU.
    pub preempted_by: [u64; 3],
}

impl SchedStats {
    pub const ZERO: Self = Self {
        runq: [0; RUNQ_SLOTS],
        preempted_by: [0; 3],
    };
}

impl Default for SchedStats {
    fn default() -> Self {
        Self::ZERO
    }
}

/// Key of [`PREEMPT_PAIRS_MAP`]: whose task was switched out involuntarily (`victim`) and whose
/// task took the CPU (`preemptor`), both cgroup ids of pod or container cgroups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PreemptPair {
    pub victim: u64,
    pub preemptor: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): #[repr(C)], fixed-width integer fields only, no implicit padding (padding
    // is spelled out as `_pad`), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Wait {}
    unsafe impl aya::Pod for super::SchedStats {}
    unsafe impl aya::Pod for super::PreemptPair {}
}
