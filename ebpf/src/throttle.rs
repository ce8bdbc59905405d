//! CFS throttle episodes per pod cgroup: how long each pause lasted, how far into the period
//! the quota ran out, and how many threads were runnable then.
//!
//! Two ways to see throttling, chosen by userspace at load time (THROTTLE_MODE):
//! - **hooks**: `fexit/throttle_cfs_rq` and `fentry/unthrottle_cfs_rq` (or kprobes). Sources:
//!   <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/fair.c> (`throttle_cfs_rq`,
//!   `unthrottle_cfs_rq`; `struct cfs_rq`, `struct cfs_bandwidth` in `kernel/sched/sched.h`).
//!   An episode starts when the first of the group's per-CPU run queues throttles and ends
//!   when the last one unthrottles.
//! - **switch**: from `tp_btf/sched_switch`, for kernels that refuse fentry and have no
//!   kprobes. A task switched out while still runnable whose cfs_rq (its own group's, or an
//!   ancestor's up to the pod) is throttled starts the group's episode, or joins it on a CPU
//!   not seen yet in it; the group's first switch-in after the end of the period the quota ran
//!   out in ends it. So the pause runs from the first throttled switch-out to the first
//!   switch-in after the refill.
//!
//! In both modes an episode is counted once per group, not once per run queue. Runnable threads:
//! in hooks mode, and in switch mode on kernels that throttle whole groups, the sum over CPUs of
//! `h_nr_running` (6.14+: `h_nr_runnable`) of the throttled cfs_rq; in switch mode on kernels with
//! task-based throttling (6.18+), where every runnable task throttles itself on its way back to
//! user space and is switched out once, the number of those switch-outs. The fexit hook reads `cfs_rq->throttled`
//! (an int, or a one-bit bitfield in 6.18: the loader passes the byte and the mask) after the
//! call, so a call that found fresh runtime is not counted; the kprobe fallback counts every call.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::{fentry, fexit, kprobe, map},
    maps::{Array, HashMap},
    programs::{FEntryContext, FExitContext, ProbeContext},
};
use podstat_common::{
    kernel::{DEFAULT_MAX_CGROUPS, MAP_THROTTLE_STATS, Offsets},
    throttle::{PERIOD_LAYOUT, THREAD_LAYOUT, THROTTLE_MODE_HOOKS, ThrottleStats},
};

use crate::kernel::{
    KNOWN, atomic_add, cgroup_kn_id, get_or_insert, now_ns, observe, observe_ns, offsets, read,
};

/// cgroup id → episode in progress and histograms.
#[map]
static THROTTLE_STATS: HashMap<u64, ThrottleStats> =
    HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

/// The value a cgroup's entry starts from.
static ZERO: ThrottleStats = ThrottleStats::ZERO;

/// How throttling is detected (`THROTTLE_MODE_*`), set by userspace after attaching.
#[map]
static THROTTLE_MODE: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn mode() -> u32 {
    THROTTLE_MODE.get(0).copied().unwrap_or(0)
}

#[fexit(function = "throttle_cfs_rq")]
pub fn throttle_fexit(ctx: FExitContext) -> i32 {
    if mode() == THROTTLE_MODE_HOOKS {
        let _ = on_throttle_hook(ctx.arg(0), true);
    }
    0
}

#[kprobe]
pub fn throttle_kprobe(ctx: ProbeContext) -> u32 {
    if mode() == THROTTLE_MODE_HOOKS
        && let Some(cfs_rq) = ctx.arg::<*const u8>(0)
    {
        let _ = on_throttle_hook(cfs_rq, false);
    }
    0
}

#[fentry(function = "unthrottle_cfs_rq")]
pub fn unthrottle_fentry(ctx: FEntryContext) -> i32 {
    if mode() == THROTTLE_MODE_HOOKS {
        let _ = on_unthrottle_hook(ctx.arg(0));
    }
    0
}

#[kprobe]
pub fn unthrottle_kprobe(ctx: ProbeContext) -> u32 {
    if mode() == THROTTLE_MODE_HOOKS
        && let Some(cfs_rq) = ctx.arg::<*const u8>(0)
    {
        let _ = on_unthrottle_hook(cfs_rq);
    }
    0
}

/// The task group's cgroup id, if it is one we track, and the task group.
#[inline(always)]
fn tracked_group(cfs_rq: *const u8, o: &Offsets) -> Result<Option<(u64, *const u8)>, i32> {
    let tg: *const u8 = read(cfs_rq, o.cfs_rq_tg)?;
    let cgrp: *const u8 = read(tg, o.tg_css_cgroup)?;
    let id = cgroup_kn_id(cgrp, o)?;
    Ok(KNOWN.get_ptr(id).map(|_| (id, tg)))
}

#[inline(always)]
fn is_throttled(cfs_rq: *const u8, o: &Offsets) -> Result<bool, i32> {
    Ok(u32::from(read::<u8>(cfs_rq, o.cfs_rq_throttled)?) & o.cfs_rq_throttled_mask != 0)
}

/// Opens an episode: records when, and how far into the period the quota ran out.
/// Returns the end of that period (0 if unknown).
///
/// # Safety
/// `st` points into a live THROTTLE_STATS value.
#[inline(always)]
unsafe fn open_episode(st: *mut ThrottleStats, tg: *const u8, now: u64, o: &Offsets) -> u64 {
    // SAFETY: as the caller promises.
    unsafe {
        (*st).start_ns = now;
        (*st).runnable = 0;
        (*st).cpu_mask = 0;
        (*st).period_end_ns = 0;
    }
    // The period timer's next expiry minus the period is the current period's start (both
    // CLOCK_MONOTONIC, as bpf_ktime_get_ns).
    let (Ok(period), Ok(expires)) = (
        read::<i64>(tg, o.tg_period),
        read::<i64>(tg, o.tg_period_expires),
    ) else {
        return 0;
    };
    if period <= 0 || expires <= period {
        return 0;
    }
    let (period, end) = (period as u64, expires as u64);
    let start = end - period;
    if now >= start && now - start <= period {
        let after = now - start;
        // SAFETY: as the caller promises.
        unsafe {
            observe_ns(
                core::ptr::addr_of_mut!((*st).exhausted_after),
                &PERIOD_LAYOUT,
                after,
            );
        };
        return end;
    }
    0
}

/// Closes the episode: its pause, its runnable threads, and its deficit (the pause times the
/// runnable threads, at most `nr_cpus` of them: the CPU time the quota kept the cgroup from).
///
/// # Safety
/// `st` points into a live THROTTLE_STATS value.
#[inline(always)]
unsafe fn close_episode(st: *mut ThrottleStats, now: u64, nr_cpus: u32) {
    // SAFETY: as the caller promises.
    unsafe {
        if now > (*st).start_ns {
            let pause = now - (*st).start_ns;
            observe_ns(core::ptr::addr_of_mut!((*st).pause), &PERIOD_LAYOUT, pause);
            let runnable = u64::from((*st).runnable);
            observe(
                core::ptr::addr_of_mut!((*st).runnable_threads),
                &THREAD_LAYOUT,
                runnable << 1,
                runnable,
            );
            let threads = if nr_cpus != 0 && runnable > u64::from(nr_cpus) {
                u64::from(nr_cpus)
            } else {
                runnable
            };
            // A pause is at most a few periods (< 2^33 ns) and threads at most nr_cpus: no overflow.
            let deficit = pause.wrapping_mul(threads);
            atomic_add(core::ptr::addr_of_mut!((*st).deficit_ns), deficit);
        }
    }
}

#[inline(always)]
fn on_throttle_hook(cfs_rq: *const u8, check_throttled: bool) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 || (check_throttled && !is_throttled(cfs_rq, &o)?) {
        return Ok(());
    }
    let Some((id, tg)) = tracked_group(cfs_rq, &o)? else {
        return Ok(());
    };
    let queued: u32 = read(cfs_rq, o.cfs_rq_h_nr)?;
    let now = now_ns();
    let Some(st) = get_or_insert(&THROTTLE_STATS, id, &ZERO, MAP_THROTTLE_STATS) else {
        return Ok(());
    };
    // SAFETY: st points into a live map value. The run-queue count is changed with atomic adds
    // only: since 6.2 the period timer unthrottles the run queues of all CPUs at once (each on
    // its own CPU), and a lost decrement would leave the count above zero and the episode open
    // for good (seen on 7.3 in the kernel matrix). XADD returns nothing before 5.12, so the
    // count is read back: the run queue that made it 1 opens the episode. If two throttles
    // race past that read, the episode is not measured (start_ns stays 0); it never sticks.
    unsafe {
        let rqs = core::ptr::addr_of_mut!((*st).throttled_rqs);
        atomic_add_u32(rqs, 1);
        if core::ptr::read_volatile(rqs) == 1 {
            let _ = open_episode(st, tg, now, &o);
        }
        (*st).runnable += queued;
    }
    Ok(())
}

/// Adds `v` to the u32 at `p` atomically (`u32::MAX` subtracts one). BPF XADD: no result.
#[inline(always)]
fn atomic_add_u32(p: *mut u32, v: u32) {
    // SAFETY: p points into a live map value (callers' contract); XADD is the only RMW
    // operation on the BPF target (core::sync::atomic has none).
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
fn on_unthrottle_hook(cfs_rq: *const u8) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Ok(());
    }
    let Some((id, _)) = tracked_group(cfs_rq, &o)? else {
        return Ok(());
    };
    let Some(st) = THROTTLE_STATS.get_ptr_mut(id) else {
        return Ok(());
    };
    // SAFETY: st points into a live map value (see on_throttle_hook for the race note).
    unsafe {
        let rqs = core::ptr::addr_of_mut!((*st).throttled_rqs);
        // A run queue that throttled before the group was tracked: nothing to release.
        if core::ptr::read_volatile(rqs) == 0 {
            return Ok(());
        }
        atomic_add_u32(rqs, u32::MAX);
        let left = core::ptr::read_volatile(rqs);
        // Wrapped below zero: two releases raced past the check above. Back to zero.
        if left > i32::MAX as u32 {
            *rqs = 0;
        }
        if (left == 0 || left > i32::MAX as u32) && (*st).start_ns != 0 {
            close_episode(st, now_ns(), o.nr_cpus);
            (*st).start_ns = 0;
        }
    }
    Ok(())
}

/// Switch mode: `prev`, a task of a tracked cgroup, left the CPU while runnable. If its cfs_rq or
/// an ancestor's (up to three levels: container, pod, QoS) is throttled, that group's episode
/// starts or grows. Returns the group's cgroup id, or 0 when nothing is throttled.
#[inline(always)]
pub fn on_runnable_switch_out(prev: *const u8, now: u64, o: &Offsets) -> Result<u64, i32> {
    // With task-based throttling a task can also be preempted while its cfs_rq is throttled
    // and before it throttles itself; only the real throttle counts.
    if o.task_based_throttle != 0
        && u32::from(read::<u8>(prev, o.task_throttled)?) & o.task_throttled_mask == 0
    {
        return Ok(0);
    }
    let mut cfs_rq: *const u8 = read(prev, o.task_se_cfs_rq)?;
    let mut se: *const u8 = read(prev, o.task_se_parent)?;
    let mut level = 0;
    while level < 3 {
        if cfs_rq.is_null() {
            return Ok(0);
        }
        if is_throttled(cfs_rq, o)? {
            return throttled_switch_out(cfs_rq, now, level == 0, o);
        }
        if se.is_null() {
            return Ok(0);
        }
        cfs_rq = read(se, o.se_cfs_rq)?;
        se = read(se, o.se_parent)?;
        level += 1;
    }
    Ok(0)
}

#[inline(always)]
fn throttled_switch_out(
    cfs_rq: *const u8,
    now: u64,
    own_group: bool,
    o: &Offsets,
) -> Result<u64, i32> {
    let Some((id, tg)) = tracked_group(cfs_rq, o)? else {
        return Ok(0);
    };
    let Some(st) = get_or_insert(&THROTTLE_STATS, id, &ZERO, MAP_THROTTLE_STATS) else {
        return Ok(0);
    };
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let bit = 1u64 << (cpu & 63);
    // SAFETY: st points into a live map value; the race note of on_throttle_hook applies.
    unsafe {
        if (*st).throttled_rqs == 0 {
            let end = open_episode(st, tg, now, o);
            (*st).period_end_ns = end;
            (*st).throttled_rqs = 1;
        }
        if o.task_based_throttle != 0 {
            // Task-based throttling (6.18+): every runnable task of the group throttles itself
            // on its way back to user space and is switched out here once per episode, so
            // each such switch-out is one runnable thread.
            if own_group {
                (*st).runnable += 1;
            } else if (*st).cpu_mask & bit == 0 {
                // An ancestor's quota: count its queued threads once per CPU.
                (*st).cpu_mask |= bit;
                (*st).runnable += read::<u32>(cfs_rq, o.cfs_rq_h_nr)?;
            }
        } else if (*st).cpu_mask & bit == 0 {
            // The whole group left the run queue at once; only the running task is switched
            // out. The throttled cfs_rq still counts its queued threads: once per CPU.
            (*st).cpu_mask |= bit;
            (*st).runnable += read::<u32>(cfs_rq, o.cfs_rq_h_nr)?;
        }
    }
    Ok(id)
}

/// Switch mode: a task of cgroup `id` got a CPU. If the group's episode is open and the period
/// it ran out in is over, the group is running again: close the episode.
#[inline(always)]
pub fn on_switch_in(id: u64, now: u64) {
    if let Some(st) = THROTTLE_STATS.get_ptr_mut(id) {
        // SAFETY: st points into a live map value.
        unsafe {
            if (*st).throttled_rqs != 0 && now >= (*st).period_end_ns {
                (*st).throttled_rqs = 0;
                close_episode(st, now, offsets().nr_cpus);
            }
        }
    }
}
