//! The throttle probe (`ebpf/src/throttle.rs`): the shape of each CFS throttle episode.

use crate::kernel::{Hist, Layout, TIME_UNIT_LOG2};

pub const THROTTLE_FEXIT_PROG: &str = "throttle_fexit";

pub const THROTTLE_KPROBE_PROG: &str = "throttle_kprobe";

pub const UNTHROTTLE_FENTRY_PROG: &str = "unthrottle_fentry";

pub const UNTHROTTLE_KPROBE_PROG: &str = "unthrottle_kprobe";

/// pid → id of the group whose throttle episode the task's switch-out joined: an LRU hash,
/// written only in sched_info mode with throttle switch mode, for tasks switched out while
/// their group is throttled (see [`Known::throttled_at_ns`](crate::kernel::Known::throttled_at_ns)).
pub const THROTTLED_TASKS_MAP: &str = "THROTTLED_TASKS";

/// cgroup id → [`ThrottleStats`].
pub const THROTTLE_STATS_MAP: &str = "THROTTLE_STATS";

/// Array with one `u32`: how throttle episodes are detected, one of `THROTTLE_MODE_*`. Written
/// by userspace after it knows which hooks attached.
pub const THROTTLE_MODE_MAP: &str = "THROTTLE_MODE";

/// No throttle tracking.
pub const THROTTLE_MODE_OFF: u32 = 0;

/// `throttle_cfs_rq`/`unthrottle_cfs_rq` hooks (fentry/fexit or kprobes).
pub const THROTTLE_MODE_HOOKS: u32 = 1;

/// From `sched_switch`: a task switched out while runnable from a throttled cfs_rq starts
/// (or joins) an episode; the group's first switch-in after the period it ran out in ends it.
pub const THROTTLE_MODE_SWITCH: u32 = 2;

/// Switch mode in sched_info mode: a task's throttle record is looked up at its switch-in only
/// while its cgroup had a throttled switch-out less than this long ago (ns). A CFS period is
/// at most 1 s, so a throttled task is switched in again well within it unless it exits.
pub const THROTTLE_GATE_NS: u64 = 2_000_000_000;

/// Throttle pause and quota-exhausted-after: zero bucket up to 2^-14 s (61 µs), then four
/// buckets per power of two up to 1 s (the longest CFS period): 56 buckets, 59 slots.
pub const PERIOD_LAYOUT: Layout = Layout {
    zero_log2: 16,
    top_log2: 30,
    unit_log2: TIME_UNIT_LOG2,
};

pub const PERIOD_SLOTS: usize = PERIOD_LAYOUT.slots();

/// Runnable threads, counted in half threads (value `2 * threads`): zero bucket for 0 threads,
/// then four buckets per power of two up to 64 threads: 28 buckets, 31 slots.
pub const THREAD_LAYOUT: Layout = Layout {
    zero_log2: 0,
    top_log2: 7,
    unit_log2: -1,
};

pub const THREAD_SLOTS: usize = THREAD_LAYOUT.slots();

/// Value of [`THROTTLE_STATS_MAP`]: the episode in progress and the histograms.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThrottleStats {
    /// When the first of the cgroup's run queues throttled in the current episode.
    pub start_ns: u64,
    /// End of the period the quota ran out in (the period timer's expiry), switch mode.
    pub period_end_ns: u64,
    /// CPUs (bit `cpu % 64`) whose run queue already counted its threads in this episode.
    pub cpu_mask: u64,
    /// Run queues of this cgroup throttled right now (hooks mode); 1 while an episode is open
    /// (switch mode).
    pub throttled_rqs: u32,
    /// Threads queued on the run queues that throttled in this episode.
    pub runnable: u32,
    /// Wall-clock length of each episode, ns.
    pub pause: Hist<PERIOD_SLOTS>,
    /// Time from the period's start to the episode's first throttle, ns.
    pub exhausted_after: Hist<PERIOD_SLOTS>,
    /// Threads runnable when the quota ran out.
    pub runnable_threads: Hist<THREAD_SLOTS>,
    /// CPU time the cgroup would have used in its episodes without the quota, summed: each
    /// pause times the runnable threads, at most [`Offsets::nr_cpus`](crate::kernel::Offsets),
    /// CPU-ns. A sum, not a histogram: `explain` and the rules read only the rate, and a
    /// histogram would cost the series budget (tests/tests/budget.rs) 1 series in protobuf
    /// and 8 in text.
    pub deficit_ns: u64,
}

impl ThrottleStats {
    /// The value a cgroup's entry starts from.
    pub const ZERO: Self = Self {
        start_ns: 0,
        period_end_ns: 0,
        cpu_mask: 0,
        throttled_rqs: 0,
        runnable: 0,
        pause: [0; PERIOD_SLOTS],
        exhausted_after: [0; PERIOD_SLOTS],
        runnable_threads: [0; THREAD_SLOTS],
        deficit_ns: 0,
    };
}

impl Default for ThrottleStats {
    fn default() -> Self {
        Self::ZERO
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): #[repr(C)], fixed-width integer fields only, no implicit padding (padding
    // is spelled out as `_pad`), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ThrottleStats {}
}
