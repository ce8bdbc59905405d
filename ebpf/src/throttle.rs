//! CFS throttle episodes per pod cgroup: how long each pause lasted, how far into the period
//! the quota ran out, and how many threads were runnable then.
//!
//! Hooks, resolved by the loader: `fexit/throttle_cfs_rq` (falls back to `kprobe`) and
//! `fentry/unthrottle_cfs_rq` (falls back to `kprobe`). Sources:
//! <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/fair.c> (`throttle_cfs_rq`,
//! `unthrottle_cfs_rq`, `struct cfs_rq` and `struct cfs_bandwidth` in `kernel/sched/sched.h`).
//!
//! Semantics: each CPU's `cfs_rq` of a task group throttles on its own when the group's quota is
//! gone. An *episode* starts when the first of the group's run queues throttles and ends when
//! the last one unthrottles; it is counted once per group, not once per run queue. The runnable
//! threads are the sum of `h_nr_running` (6.14+: `h_nr_queued`) of the run queues that throttled
//! during the episode. With task-based throttling (6.18+) throttled tasks stay queued until they
//! return to user space, so the count at `throttle_cfs_rq` still includes them. The fexit hook
//! checks `cfs_rq->throttled` (an int, or a one-bit bitfield in 6.18: the loader passes the byte and
//! the mask) so a call that found fresh runtime and did not throttle is not
//! counted; the kprobe fallback cannot, and counts every call.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, map},
    maps::HashMap,
    programs::{FEntryContext, FExitContext, ProbeContext},
};
use podstat_common::sched::{
    DEFAULT_MAX_CGROUPS, MAP_THROTTLE_STATS, PERIOD_BOUNDS_NS, THREAD_BOUNDS, ThrottleStats,
    bucket_of,
};

use crate::kernel::{KNOWN, cgroup_kn_id, get_or_insert, now_ns, observe, offsets, read};

/// cgroup id → episode in progress and histograms.
#[map]
static THROTTLE_STATS: HashMap<u64, ThrottleStats> =
    HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[fexit(function = "throttle_cfs_rq")]
pub fn throttle_fexit(ctx: FExitContext) -> i32 {
    let _ = on_throttle(ctx.arg(0), true);
    0
}

#[kprobe]
pub fn throttle_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(cfs_rq) = ctx.arg::<*const u8>(0) {
        let _ = on_throttle(cfs_rq, false);
    }
    0
}

#[fentry(function = "unthrottle_cfs_rq")]
pub fn unthrottle_fentry(ctx: FEntryContext) -> i32 {
    let _ = on_unthrottle(ctx.arg(0));
    0
}

#[kprobe]
pub fn unthrottle_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(cfs_rq) = ctx.arg::<*const u8>(0) {
        let _ = on_unthrottle(cfs_rq);
    }
    0
}

/// The task group's cgroup id, if it is one we track.
#[inline(always)]
fn tracked_group(cfs_rq: *const u8) -> Result<Option<(u64, *const u8)>, i32> {
    let o = offsets();
    if o.valid == 0 {
        return Ok(None);
    }
    let tg: *const u8 = read(cfs_rq, o.cfs_rq_tg)?;
    let cgrp: *const u8 = read(tg, o.tg_css_cgroup)?;
    let id = cgroup_kn_id(cgrp, &o)?;
    Ok(KNOWN.get_ptr(id).map(|_| (id, tg)))
}

#[inline(always)]
fn on_throttle(cfs_rq: *const u8, check_throttled: bool) -> Result<(), i32> {
    let o = offsets();
    if check_throttled
        && u32::from(read::<u8>(cfs_rq, o.cfs_rq_throttled)?) & o.cfs_rq_throttled_mask == 0
    {
        return Ok(());
    }
    let Some((id, tg)) = tracked_group(cfs_rq)? else {
        return Ok(());
    };
    let queued: u32 = read(cfs_rq, o.cfs_rq_h_nr)?;
    let now = now_ns();
    let Some(st) = get_or_insert(&THROTTLE_STATS, id, MAP_THROTTLE_STATS) else {
        return Ok(());
    };
    // SAFETY: st points into a live map value. Two CPUs throttling the same group in the same
    // instant can race on these plain updates; the loss is one run queue's count in a rare
    // episode, and unthrottle saturates at zero, so an episode always ends.
    unsafe {
        if (*st).throttled_rqs == 0 {
            (*st).start_ns = now;
            (*st).runnable = 0;
            // The period timer's next expiry minus the period is the current period's start
            // (both CLOCK_MONOTONIC, as bpf_ktime_get_ns).
            let period: i64 = read(tg, o.tg_period)?;
            let expires: i64 = read(tg, o.tg_period_expires)?;
            let start = expires - period;
            if period > 0 && start > 0 {
                let start = start as u64;
                if now >= start && now - start <= period as u64 {
                    let after = now - start;
                    observe(
                        core::ptr::addr_of_mut!((*st).exhausted_after),
                        bucket_of(after, &PERIOD_BOUNDS_NS),
                        after,
                    );
                }
            }
        }
        (*st).throttled_rqs += 1;
        (*st).runnable += queued;
    }
    Ok(())
}

#[inline(always)]
fn on_unthrottle(cfs_rq: *const u8) -> Result<(), i32> {
    let Some((id, _)) = tracked_group(cfs_rq)? else {
        return Ok(());
    };
    let Some(st) = THROTTLE_STATS.get_ptr_mut(id) else {
        return Ok(());
    };
    let now = now_ns();
    // SAFETY: st points into a live map value (see on_throttle for the race note).
    unsafe {
        if (*st).throttled_rqs == 0 {
            return Ok(());
        }
        (*st).throttled_rqs -= 1;
        if (*st).throttled_rqs == 0 && now > (*st).start_ns {
            let pause = now - (*st).start_ns;
            observe(
                core::ptr::addr_of_mut!((*st).pause),
                bucket_of(pause, &PERIOD_BOUNDS_NS),
                pause,
            );
            let runnable = u64::from((*st).runnable);
            observe(
                core::ptr::addr_of_mut!((*st).runnable_threads),
                bucket_of(runnable, &THREAD_BOUNDS),
                runnable,
            );
        }
    }
    Ok(())
}
