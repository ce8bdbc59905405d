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

/// Wakeup mode: a queued task that no wait record covers moves to another run queue.
pub const SCHED_MIGRATE_PROG: &str = "sched_migrate_task";

/// pid → [`Wait`]: when a tracked task became runnable (wakeup mode only).
pub const WAIT_MAP: &str = "WAIT_START";

/// The task's `sched_info.run_delay` just after its last switch-in (sched_info mode), one
/// [`runq_base`] word per slot of an array indexed by [`runq_base_slot`] of the pid: the
/// kernel adds a wait's part before a migration to `run_delay` when the task leaves the old
/// run queue, so the next switch-in adds what `run_delay` grew by since then. An array, not a
/// hash map: the verifier inlines an array lookup, where a hash (or LRU) lookup is a helper
/// call with a hash and a bucket walk on every switch-in of a pod task (docs/performance.md
/// has the A/B). Two tasks whose pids share a slot take turns in it, and each loses the
/// migrated part of a wait the other overwrote; a record outlives its task and ages out when
/// the slot is reused.
pub const RUNQ_TASKS_MAP: &str = "RUNQ_TASKS";

/// log2 of the slots of [`RUNQ_TASKS_MAP`]: 65,536 slots of 8 bytes, 512 KiB.
pub const RUNQ_BASE_SLOTS_LOG2: u32 = 16;

/// Slots of [`RUNQ_TASKS_MAP`].
pub const RUNQ_BASE_SLOTS: u32 = 1 << RUNQ_BASE_SLOTS_LOG2;

/// Bits of `run_delay` a [`runq_base`] word keeps; the pid is in the 22 above them
/// (`PID_MAX_LIMIT` is 2^22 on 64-bit kernels). A migrated part is taken modulo 2^42 ns
/// (73 minutes), so it stays exact after `run_delay` itself passes that.
const BASE_BITS: u32 = 42;

const BASE_MASK: u64 = (1 << BASE_BITS) - 1;

/// The slot of `pid` in [`RUNQ_TASKS_MAP`]: Fibonacci hashing (the top bits of the pid times
/// 2^32 / φ), so consecutive pids, the threads of one process, land far apart, in different
/// cache lines (8 of them per 64-byte line).
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn runq_base_slot(pid: u32) -> u32 {
    pid.wrapping_mul(0x9E37_79B1) >> (32 - RUNQ_BASE_SLOTS_LOG2)
}

/// The word [`RUNQ_TASKS_MAP`] keeps for `pid` whose `run_delay` is `run_delay`: one u64, so
/// a reader on another CPU never sees one task's pid with another's base.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn runq_base(pid: u32, run_delay: u64) -> u64 {
    (u64::from(pid) << BASE_BITS) | (run_delay & BASE_MASK)
}

/// {victim cgroup id, holder cgroup id} ([`PreemptPair`]) → ns the victim's tasks waited on a
/// run queue before getting the CPU from a task of the holder, for cgroups of different pods.
pub const WAIT_PAIRS_MAP: &str = "WAIT_PAIRS";

/// {victim cgroup id, preemptor cgroup id} ([`PreemptPair`]) → preemptions of the victim's
/// tasks by tasks of the preemptor, counted only when the two are in different pods.
pub const PREEMPT_PAIRS_MAP: &str = "PREEMPT_PAIRS";

/// How run-queue latency is measured ([`Offsets::sched_info`](crate::kernel::Offsets::sched_info)): from the kernel's own
/// `task_struct.sched_info.last_queued`, read in `sched_switch` alone.
pub const RUNQ_MODE_SCHED_INFO: u32 = 1;

/// From `sched_wakeup`/`sched_wakeup_new` and involuntary switch-outs, kept per task in
/// [`WAIT_MAP`] (`sched_process_exit` forgets it), on the run queues' clock: the fallback.
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

/// Who took the CPU from a preempted pod task, or held it while a pod task waited: index into
/// [`SchedStats::preempted_by`] and [`SchedStats::wait_by`].
pub const BY_SAME_POD: usize = 0;

pub const BY_OTHER_POD: usize = 1;

pub const BY_SYSTEM: usize = 2;

/// Who held the CPU while a task of pod `victim_pod` waited: the slot of `wait_by` and
/// `preempted_by`. `holder_pod` is the pod id of the task that ran before (0: not a tracked
/// cgroup, the system or the idle task).
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn holder_class(holder_pod: u64, victim_pod: u64) -> usize {
    if holder_pod == 0 {
        BY_SYSTEM
    } else if holder_pod == victim_pod {
        BY_SAME_POD
    } else {
        BY_OTHER_POD
    }
}

/// sched_info mode, at a switch-in of `pid`: the whole wait that ends now, and the
/// [`runq_base`] word to keep for its next one. `here` is `rq->clock - last_queued` (the wait
/// on this run queue), `run_delay` the kernel's total before this switch-in, `record` the
/// task's slot in [`RUNQ_TASKS_MAP`]: `run_delay` just after the task's previous switch-in, if
/// the slot holds this pid (0, or another pid: not seen yet, no migrated part). The kernel
/// adds the part of a wait spent on other run queues to `run_delay` when the task leaves them
/// (a migration), so that part is `run_delay - before`. A record older than the task (a
/// reused pid) can exceed `run_delay`: no migrated part then.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn wait_across_migrations(pid: u32, here: u64, run_delay: u64, record: u64) -> (u64, u64) {
    let mut migrated = 0;
    if record != 0 && record >> BASE_BITS == u64::from(pid) {
        let grown = run_delay.wrapping_sub(record) & BASE_MASK;
        if grown <= run_delay {
            migrated = grown;
        }
    }
    (here + migrated, runq_base(pid, run_delay + here))
}

/// Value of [`WAIT_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Wait {
    /// When the task became runnable, on its run queue's clock (`rq->clock`, the clock the
    /// kernel's sched_info stamps; `bpf_ktime_get_ns` where BTF lacks it); 0: consumed.
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
    /// Run-queue latency ([`RUNQ_LAYOUT`]) buckets. The kernel side leaves the sum slot at 0:
    /// the sum is `wait_by`'s ([`Self::runq_with_sum`]).
    pub runq: Hist<RUNQ_SLOTS>,
    /// Run-queue waiting time, ns, by who ran on the CPU just before the waiting task got it
    /// (`prev` at its switch-in): every wait is added to one of the three, so together they
    /// are the histogram's sum.
    pub wait_by: [u64; 3],
    /// Involuntary switch-outs while runnable, by who took the CPU.
    pub preempted_by: [u64; 3],
}

impl SchedStats {
    pub const ZERO: Self = Self {
        runq: [0; RUNQ_SLOTS],
        wait_by: [0; 3],
        preempted_by: [0; 3],
    };

    /// The run-queue latency histogram with its sum: the waiting time of all three holders.
    /// By construction the exported sum over `by` equals the histogram's sum.
    pub fn runq_with_sum(&self) -> Hist<RUNQ_SLOTS> {
        let mut h = self.runq;
        h[RUNQ_LAYOUT.sum_slot()] = self
            .wait_by
            .iter()
            .fold(0u64, |sum, ns| sum.wrapping_add(*ns));
        h
    }
}

impl Default for SchedStats {
    fn default() -> Self {
        Self::ZERO
    }
}

/// Key of [`PREEMPT_PAIRS_MAP`] and [`WAIT_PAIRS_MAP`] (there `preemptor` is the cgroup of the
/// task that held the CPU while the victim's task waited): whose task was switched out involuntarily (`victim`) and whose
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_class_names_who_held_the_cpu() {
        assert_eq!(holder_class(0, 7), BY_SYSTEM);
        assert_eq!(holder_class(7, 7), BY_SAME_POD);
        assert_eq!(holder_class(8, 7), BY_OTHER_POD);
    }

    #[test]
    fn the_runq_sum_is_the_waiting_time_of_every_holder() {
        let mut s = SchedStats::ZERO;
        s.runq[3] = 2;
        s.runq[RUNQ_LAYOUT.overflow_slot()] = 1;
        s.wait_by = [1_000, 20_000, 300];
        let h = s.runq_with_sum();
        assert_eq!(h[RUNQ_LAYOUT.sum_slot()], 21_300);
        assert_eq!(h[3], 2);
        assert_eq!(h[RUNQ_LAYOUT.overflow_slot()], 1);
        // The kernel side never writes the slot; a stale value there is not added to.
        s.runq[RUNQ_LAYOUT.sum_slot()] = 5;
        assert_eq!(s.runq_with_sum()[RUNQ_LAYOUT.sum_slot()], 21_300);
    }

    #[test]
    fn a_migrated_wait_is_added_up_like_run_delay() {
        let pid = 4242;
        // Seen for the first time: only the wait on this run queue.
        assert_eq!(
            wait_across_migrations(pid, 300, 10_000, 0),
            (300, runq_base(pid, 10_300))
        );
        // No migration since the last switch-in: run_delay is where that one left it.
        assert_eq!(
            wait_across_migrations(pid, 300, 10_300, runq_base(pid, 10_300)),
            (300, runq_base(pid, 10_600))
        );
        // Waited 2 ms on another CPU (the kernel folded it into run_delay when the task left
        // that run queue), then 300 ns here: the histogram gets the whole 2.0003 ms.
        let (wait, after) = wait_across_migrations(pid, 300, 2_010_600, runq_base(pid, 10_600));
        assert_eq!((wait, after), (2_000_300, runq_base(pid, 2_010_900)));
        // Summed over switch-ins, the waits are run_delay's growth (what /proc/<pid>/schedstat
        // reports), from the first switch-in seen on; also past 2^42 ns of run_delay.
        for start in [5_000, (1 << 42) - 3_000] {
            let mut record = 0;
            let mut total = 0;
            let mut run_delay = start;
            for (folded, here) in [(0, 100), (4_000, 50), (0, 0), (1_000, 7), (0, 9_999)] {
                run_delay += folded; // a migration while waiting
                let (w, after) = wait_across_migrations(pid, here, run_delay, record);
                total += w;
                run_delay += here; // sched_info_arrive adds `here`
                record = after;
            }
            assert_eq!(total, run_delay - start, "from {start}");
        }
        // A stale record of a reused pid larger than the new task's run_delay.
        assert_eq!(
            wait_across_migrations(pid, 40, 100, runq_base(pid, 9_999)),
            (40, runq_base(pid, 140))
        );
        // Another task's record in the slot: nothing of it is added.
        assert_eq!(
            wait_across_migrations(pid, 40, 100, runq_base(pid + 1, 10)),
            (40, runq_base(pid, 140))
        );
    }

    #[test]
    fn consecutive_pids_get_their_own_slots_and_cache_lines() {
        // 8192 pids in a row, each slot taken once (a bitmap of the 65,536 slots).
        for start in [1_u32, 300, 100_000, (1 << 22) - 9_000] {
            let mut taken = [0_u64; (RUNQ_BASE_SLOTS / 64) as usize];
            for pid in start..start + 8192 {
                let slot = runq_base_slot(pid);
                assert!(slot < RUNQ_BASE_SLOTS);
                let (word, bit) = ((slot / 64) as usize, slot % 64);
                assert_eq!(taken[word] & (1 << bit), 0, "pid {pid} shares a slot");
                taken[word] |= 1 << bit;
                // Neighbouring pids at least a cache line (8 slots) apart.
                assert!(slot.abs_diff(runq_base_slot(pid + 1)) >= 8, "pid {pid}");
            }
        }
    }
}
