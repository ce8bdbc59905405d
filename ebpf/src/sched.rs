//! Scheduler probe: run-queue latency and preemption attribution per pod cgroup.
//!
//! Hooks (tp_btf, kernel 5.5+), argument layouts from
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sched.h>:
//! - `sched_wakeup(p)`, `sched_wakeup_new(p)`: a task became runnable;
//! - `sched_switch(preempt, prev, next[, prev_state])`: `prev` leaves the CPU, `next` gets it;
//!   `prev` still `TASK_RUNNING` means it was switched out involuntarily and waits again;
//! - `sched_process_exit(p)`: forget the task's wait record.
//!
//! Run-queue latency is the time from becoming runnable (wakeup, or involuntary switch-out) to
//! the next switch-in, added to the histogram of the task's cpu-controller cgroup. Only tasks in
//! cgroups userspace put in KNOWN are tracked, so the maps are bounded by pod cgroups.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use podstat_common::sched::{
    BY_OTHER_POD, BY_SAME_POD, BY_SYSTEM, DEFAULT_MAX_CGROUPS, DEFAULT_MAX_PREEMPT_PAIRS,
    DEFAULT_MAX_WAITING, HIST_SLOTS, MAP_PREEMPT_PAIRS, MAP_SCHED_STATS, MAP_WAIT, PreemptPair,
    RUNQ_BOUNDS_NS, SchedStats, THROTTLE_MODE_SWITCH, Wait, bucket_of,
};

use crate::{
    kernel::{
        KNOWN, atomic_add, get_or_insert, load, map_full, now_ns, observe, offsets, task_cgroup_id,
    },
    throttle,
};

/// The value a cgroup's entry starts from.
static ZERO: SchedStats = SchedStats {
    runq: [0; HIST_SLOTS],
    preempted_by: [0; 3],
};

/// Context switches seen on this CPU. One slot.
#[map]
static SCHED_SWITCHES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// pid → when the tracked task became runnable, and its cgroup.
#[map]
static WAIT_START: HashMap<u32, Wait> = HashMap::with_max_entries(DEFAULT_MAX_WAITING, 0);

/// cgroup id → run-queue latency histogram and preemption counts.
#[map]
static SCHED_STATS: HashMap<u64, SchedStats> = HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

/// {victim cgroup, preemptor cgroup} → preemptions, for pairs of cgroups in different pods
/// only: who, by name, took the CPU from a pod. Written only on that path (one lookup, and an
/// insert the first time a pair meets), so preemptions within a pod or by the system cost
/// nothing more.
#[map]
static PREEMPT_PAIRS: HashMap<PreemptPair, u64> =
    HashMap::with_max_entries(DEFAULT_MAX_PREEMPT_PAIRS, 0);

/// A pair's count starts from this (a static, like the other maps' zero values).
static ZERO_COUNT: u64 = 0;

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let _ = on_wakeup(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    let _ = on_wakeup(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    if let Some(slot) = SCHED_SWITCHES.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array; preemption is off in a tracepoint.
        unsafe { *slot += 1 };
    }
    let _ = on_switch(ctx.arg(1), ctx.arg(2));
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let o = offsets();
    if o.valid != 0 {
        if let Ok(pid) = load::<u32>(ctx.arg(0), o.task_pid) {
            let _ = WAIT_START.remove(pid);
        }
    }
    0
}

#[inline(always)]
fn start_wait(
    task: *const u8,
    cgroup_id: u64,
    throttled_group: u64,
    pid_off: u32,
) -> Result<(), i32> {
    let pid: u32 = load(task, pid_off)?;
    if pid == 0 {
        return Ok(());
    }
    let now = now_ns();
    // A tracked task keeps its entry from its first wait until it exits: later waits rewrite it
    // in place, which costs a lookup instead of a hash insert and delete per context switch.
    if let Some(w) = WAIT_START.get_ptr_mut(pid) {
        // SAFETY: a pointer to a live map value; only this task's own events write it.
        unsafe {
            (*w).since_ns = now;
            (*w).cgroup_id = cgroup_id;
            (*w).throttled_group = throttled_group;
        }
    } else if WAIT_START
        .insert(
            pid,
            Wait {
                since_ns: now,
                cgroup_id,
                throttled_group,
            },
            0,
        )
        .is_err()
    {
        map_full(MAP_WAIT);
    }
    Ok(())
}

#[inline(always)]
fn on_wakeup(task: *const u8) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Ok(());
    }
    let cgroup_id = task_cgroup_id(task, &o)?;
    if KNOWN.get_ptr(cgroup_id).is_none() {
        return Ok(());
    }
    start_wait(task, cgroup_id, 0, o.task_pid)
}

#[inline(always)]
fn on_switch(prev: *const u8, next: *const u8) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Ok(());
    }
    // prev preempted while still runnable: it waits again, and someone took its CPU.
    let state: u32 = load(prev, o.task_state)?;
    let switch_mode = throttle::mode() == THROTTLE_MODE_SWITCH;
    if state == 0 {
        let prev_cg = task_cgroup_id(prev, &o)?;
        if let Some(known) = KNOWN.get_ptr(prev_cg) {
            // SAFETY: a pointer to a live map value.
            let pod = unsafe { (*known).pod_id };
            let throttled_group = if switch_mode {
                throttle::on_runnable_switch_out(prev, now_ns(), &o).unwrap_or(0)
            } else {
                0
            };
            start_wait(prev, prev_cg, throttled_group, o.task_pid)?;
            let next_cg = task_cgroup_id(next, &o).unwrap_or(0);
            let by = match KNOWN.get_ptr(next_cg) {
                // SAFETY: a pointer to a live map value.
                Some(k) if unsafe { (*k).pod_id } == pod => BY_SAME_POD,
                Some(_) => BY_OTHER_POD,
                None => BY_SYSTEM,
            };
            if let Some(stats) = get_or_insert(&SCHED_STATS, prev_cg, &ZERO, MAP_SCHED_STATS) {
                // SAFETY: `by` < 3; stats points into a map value.
                unsafe { atomic_add(core::ptr::addr_of_mut!((*stats).preempted_by[by]), 1) };
            }
            if by == BY_OTHER_POD {
                let pair = PreemptPair {
                    victim: prev_cg,
                    preemptor: next_cg,
                };
                if let Some(n) = get_or_insert(&PREEMPT_PAIRS, pair, &ZERO_COUNT, MAP_PREEMPT_PAIRS)
                {
                    atomic_add(n, 1);
                }
            }
        }
    }

    let pid: u32 = load(next, o.task_pid)?;
    if pid == 0 {
        return Ok(());
    }
    if let Some(entry) = WAIT_START.get_ptr_mut(pid) {
        // SAFETY: a pointer to a live map value: copy it out, then mark it consumed.
        let wait = unsafe { *entry };
        if wait.since_ns == 0 {
            return Ok(());
        }
        // SAFETY: as above.
        unsafe { (*entry).since_ns = 0 };
        let now = now_ns();
        if switch_mode && wait.throttled_group != 0 {
            throttle::on_switch_in(wait.throttled_group, now);
        }
        if now > wait.since_ns {
            let delta = now - wait.since_ns;
            if let Some(stats) = get_or_insert(&SCHED_STATS, wait.cgroup_id, &ZERO, MAP_SCHED_STATS)
            {
                // SAFETY: stats points into a map value.
                observe(
                    unsafe { core::ptr::addr_of_mut!((*stats).runq) },
                    bucket_of(delta, &RUNQ_BOUNDS_NS),
                    delta,
                );
            }
        }
    }
    Ok(())
}
