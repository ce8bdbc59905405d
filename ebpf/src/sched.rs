//! Scheduler probe: run-queue latency and preemption attribution per pod cgroup.
//!
//! Hooks (tp_btf, kernel 5.5+), argument layouts from
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sched.h>:
//! - `sched_switch(preempt, prev, next[, prev_state])`: `prev` leaves the CPU, `next` gets it;
//!   `prev` still `TASK_RUNNING` means it was switched out involuntarily and waits again;
//! - wakeup mode only: `sched_wakeup(p)`, `sched_wakeup_new(p)`: a task became runnable;
//!   `sched_process_exit(p)`: forget the task's wait record; `sched_migrate_task(p, cpu)`: a
//!   queued task the kernel starts a wait for when it lands on another run queue (see
//!   [`sched_migrate_task`]).
//!
//! Run-queue latency is the time from becoming runnable (wakeup, or involuntary switch-out) to
//! the next switch-in, added to the histogram of the task's cpu-controller cgroup. Two modes,
//! chosen by the loader (`Offsets::sched_info`):
//! - **sched_info**: the kernel already stamps that instant in `task->sched_info.last_queued`
//!   (CONFIG_SCHED_INFO), so `sched_switch` alone reads it for `next` and subtracts it from the
//!   run queue's clock, adding what `run_delay` grew by since the task's last switch-in (the
//!   part of the wait before a migration, RUNQ_TASKS): no wakeup or exit programs.
//! - **wakeup**: the fallback, with the instant kept per task in WAIT_START, on the same run
//!   queue clock, so both modes agree with the kernel's `run_delay` (docs/probes.md).
//!
//! Each wait is also added to who ran on the CPU before the waiting task got it (`prev`):
//! `wait_by` in the cgroup's entry, and WAIT_PAIRS for another pod.
//!
//! Only tasks in cgroups userspace put in KNOWN are tracked, so the maps are bounded by pod
//! cgroups.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use podstat_common::{
    kernel::{Known, MAP_PREEMPT_PAIRS, MAP_WAIT, MAP_WAIT_PAIRS, Offsets},
    sched::{
        BY_OTHER_POD, DEFAULT_MAX_PREEMPT_PAIRS, DEFAULT_MAX_WAITING, PreemptPair, RUNQ_BASE_SLOTS,
        RUNQ_LAYOUT, RUNQ_MODE_SCHED_INFO, Wait, holder_class, runq_base_slot,
        wait_across_migrations,
    },
    throttle::{THROTTLE_GATE_NS, THROTTLE_MODE_SWITCH},
};

use crate::{
    kernel::{
        KNOWN, atomic_add, count_ns, get_or_insert, load, map_full, now_ns, offsets, task_cgroup_id,
    },
    throttle,
};

/// Context switches seen on this CPU. One slot.
#[map]
static SCHED_SWITCHES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// pid → when the tracked task became runnable, and its cgroup (wakeup mode; the loader
/// shrinks it to one entry in sched_info mode).
#[map]
static WAIT_START: HashMap<u32, Wait> = HashMap::with_max_entries(DEFAULT_MAX_WAITING, 0);

/// pid → the group whose throttle episode the task's switch-out joined (sched_info mode with
/// throttle switch mode only): consumed at the task's next switch-in. LRU, because without a
/// `sched_process_exit` program nothing forgets a task that exits while throttled; such
/// records age out instead.
#[map]
static THROTTLED_TASKS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(DEFAULT_MAX_WAITING, 0);

/// {victim cgroup, preemptor cgroup} → preemptions, for pairs of cgroups in different pods
/// only: who, by name, took the CPU from a pod. Written only on that path (one lookup, and an
/// insert the first time a pair meets), so preemptions within a pod or by the system cost
/// nothing more.
#[map]
static PREEMPT_PAIRS: HashMap<PreemptPair, u64> =
    HashMap::with_max_entries(DEFAULT_MAX_PREEMPT_PAIRS, 0);

/// `sched_info.run_delay` just after a task's last switch-in, tagged with its pid, in the
/// pid's slot ([`runq_base_slot`]; sched_info mode, the loader shrinks it to one entry in
/// wakeup mode). The kernel adds the part of a wait before a migration to `run_delay` when the
/// task leaves the old run queue and stamps `last_queued` anew on the new one, so a switch-in
/// adds what `run_delay` grew by since the last one to `rq->clock - last_queued`. An array, so
/// the lookup is inlined (see `RUNQ_TASKS_MAP`).
#[map]
static RUNQ_TASKS: Array<u64> = Array::with_max_entries(RUNQ_BASE_SLOTS, 0);

/// {victim cgroup, holder cgroup} → ns the victim's tasks waited before a task of the holder,
/// in another pod, left them the CPU: whose work a pod waited behind, by name.
#[map]
static WAIT_PAIRS: HashMap<PreemptPair, u64> =
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

/// Wakeup mode: `p` moves to another CPU. When it is queued (`on_rq`: load balancing, an
/// affinity change; not a wakeup, whose `sched_wakeup` follows) and no live wait record covers
/// it, the kernel is about to start a wait for it all the same: `enqueue_task` on the new run
/// queue stamps `sched_info.last_queued`, and the switch-in counts it. Such a task was last
/// switched out not runnable (EEVDF's delayed dequeue keeps a task that went to sleep on the
/// run queue; so does a preemption just before it slept), so nothing stamped it. On 6.18
/// beside CPU hogs, most switch-ins wakeup mode missed were of such tasks (docs/probes.md has
/// the measurement and what is still missed). A live record keeps its stamp: the
/// kernel's `run_delay` keeps the part before the migration too. The stamp is the old run
/// queue's clock: the tracepoint runs before the task leaves it.
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn sched_migrate_task(ctx: BtfTracePointContext) -> i32 {
    let _ = on_migrate(ctx.arg(0));
    0
}

#[inline(always)]
fn on_migrate(task: *const u8) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Ok(());
    }
    let on_rq: u32 = load(task, o.task_on_rq)?;
    if on_rq == 0 {
        return Ok(());
    }
    let cgroup_id = task_cgroup_id(task, o)?;
    if KNOWN.get_ptr(cgroup_id).is_none() {
        return Ok(());
    }
    start_wait(task, cgroup_id, 0, o, Live::Keep)
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

/// What [`start_wait`] does to a wait the task already has running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    /// Starts it again now: a wakeup or a switch-out begins a new wait.
    Restart,
    /// Leaves it: a migration of a queued task moves a wait, it does not begin one.
    Keep,
}

#[inline(always)]
fn start_wait(
    task: *const u8,
    cgroup_id: u64,
    throttled_group: u64,
    o: &Offsets,
    live: Live,
) -> Result<(), i32> {
    let pid: u32 = load(task, o.task_pid)?;
    if pid == 0 {
        return Ok(());
    }
    // A tracked task keeps its entry from its first wait until it exits: later waits rewrite it
    // in place, which costs a lookup instead of a hash insert and delete per context switch.
    if let Some(w) = WAIT_START.get_ptr_mut(pid) {
        // SAFETY: a pointer to a live map value; only this task's own events write it.
        unsafe {
            if live == Live::Keep && (*w).since_ns != 0 {
                return Ok(());
            }
            (*w).since_ns = clock_of(task, o)?;
            (*w).cgroup_id = cgroup_id;
            (*w).throttled_group = throttled_group;
        }
    } else if WAIT_START
        .insert(
            pid,
            Wait {
                since_ns: clock_of(task, o)?,
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
    start_wait(task, cgroup_id, 0, o, Live::Restart)
}

/// Wakeup mode's clock: the clock of the run queue `task` is on (`task->se.cfs_rq->rq->clock`),
/// the one the kernel's `sched_info` stamps and reads, so both modes measure what
/// `/proc/<pid>/schedstat` accounts (docs/probes.md has why not `bpf_ktime_get_ns`, which
/// remains the clock where the kernel's BTF lacks those fields). At `sched_wakeup` and at
/// `sched_switch` the kernel has just updated it.
#[inline(always)]
fn clock_of(task: *const u8, o: &Offsets) -> Result<u64, i32> {
    if o.rq_clock == 0 || o.cfs_rq_rq == 0 || o.task_se_cfs_rq == 0 {
        return Ok(now_ns());
    }
    let cfs_rq: *const u8 = load(task, o.task_se_cfs_rq)?;
    let rq: *const u8 = load(cfs_rq, o.cfs_rq_rq)?;
    load(rq, o.rq_clock)
}

/// What the switch-out path already learnt about `next` (its cgroup's KNOWN entry) and `prev`
/// (its cgroup and pod), so the switch-in path does not walk to the cgroups and look them up a
/// second time.
#[derive(Clone, Copy)]
struct NextCgroup {
    /// Null when the cgroup is not tracked.
    known: *mut Known,
    next_cg: u64,
    prev: Holder,
}

/// The task that ran on the CPU before a waiting task got it: its cgroup and pod (`pod` 0:
/// not a tracked cgroup, the system).
#[derive(Clone, Copy)]
struct Holder {
    cg: u64,
    pod: u64,
}

/// `prev`'s cgroup and pod, looked up; `known` is the waiting task's entry (for `victim_cg`):
/// a task of the same cgroup, the common case, needs no second lookup.
#[inline(always)]
fn holder_of(prev: *const u8, o: &Offsets, known: *mut Known, victim_cg: u64) -> Holder {
    let cg = task_cgroup_id(prev, o).unwrap_or(0);
    if cg == victim_cg {
        // SAFETY: known points into a map value.
        return Holder {
            cg,
            pod: unsafe { (*known).pod_id },
        };
    }
    let pod = match KNOWN.get_ptr(cg) {
        // SAFETY: a pointer to a live map value.
        Some(k) => unsafe { (*k).pod_id },
        None => 0,
    };
    Holder { cg, pod }
}

/// Adds a wait of `delta` ns of the task of `victim_cg` (entry `known`, pod `pod`) to the
/// histogram's bucket and to who held the CPU: `by` and, for another pod, the (victim, holder)
/// pair. The histogram's sum is the sum of `by` ([`SchedStats::runq_with_sum`]), so a wait
/// costs two atomic adds, not three.
///
/// [`SchedStats::runq_with_sum`]: podstat_common::sched::SchedStats::runq_with_sum
#[inline(always)]
fn account_wait(known: *mut Known, victim_cg: u64, holder: Holder, delta: u64) {
    // SAFETY: known points into a map value.
    let pod = unsafe { (*known).pod_id };
    // SAFETY: as above.
    let _ = count_ns(
        unsafe { core::ptr::addr_of_mut!((*known).sched.runq) },
        &RUNQ_LAYOUT,
        delta,
    );
    let by = holder_class(holder.pod, pod);
    // SAFETY: `by` < 3; known points into a map value.
    unsafe { atomic_add(core::ptr::addr_of_mut!((*known).sched.wait_by[by]), delta) };
    if by == BY_OTHER_POD {
        let pair = PreemptPair {
            victim: victim_cg,
            preemptor: holder.cg,
        };
        if let Some(n) = get_or_insert(&WAIT_PAIRS, pair, &ZERO_COUNT, MAP_WAIT_PAIRS) {
            atomic_add(n, delta);
        }
    }
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
    let mut seen: Option<NextCgroup> = None;
    if state == 0 {
        seen = on_preempted(prev, next, &o, switch_mode)?;
    }
    if o.sched_info == RUNQ_MODE_SCHED_INFO {
        switch_in_sched_info(prev, next, &o, switch_mode, seen)
    } else {
        switch_in_wakeup(prev, next, &o, switch_mode, seen)
    }
}

/// `prev` was switched out while runnable: count who took its CPU and, in wakeup mode, start
/// its wait. Returns `next`'s cgroup when it had to look it up.
#[inline(always)]
fn on_preempted(
    prev: *const u8,
    next: *const u8,
    o: &Offsets,
    switch_mode: bool,
) -> Result<Option<NextCgroup>, i32> {
    let prev_cg = task_cgroup_id(prev, o)?;
    let Some(known) = KNOWN.get_ptr_mut(prev_cg) else {
        return Ok(None);
    };
    // SAFETY: a pointer to a live map value.
    let pod = unsafe { (*known).pod_id };
    let (throttled_group, now) = if switch_mode {
        let now = now_ns();
        (
            throttle::on_runnable_switch_out(prev, now, o).unwrap_or(0),
            now,
        )
    } else {
        (0, 0)
    };
    if o.sched_info == RUNQ_MODE_SCHED_INFO {
        // The kernel stamps prev's sched_info.last_queued itself (sched_info_depart); only a
        // throttled switch-out needs a record, for the switch-in that ends the episode.
        if throttled_group != 0 {
            let pid: u32 = load(prev, o.task_pid)?;
            if THROTTLED_TASKS.insert(pid, throttled_group, 0).is_ok() {
                // SAFETY: a pointer to a live map value; a racing write of the same field
                // from another CPU stores a time just as recent.
                unsafe { (*known).throttled_at_ns = now };
            }
        }
    } else {
        start_wait(prev, prev_cg, throttled_group, o, Live::Restart)?;
    }
    let next_cg = task_cgroup_id(next, o).unwrap_or(0);
    let next_known = KNOWN.get_ptr_mut(next_cg);
    // SAFETY: a pointer to a live map value.
    let by = holder_class(next_known.map_or(0, |k| unsafe { (*k).pod_id }), pod);
    // SAFETY: `by` < 3; known points into a map value.
    unsafe { atomic_add(core::ptr::addr_of_mut!((*known).sched.preempted_by[by]), 1) };
    if by == BY_OTHER_POD {
        let pair = PreemptPair {
            victim: prev_cg,
            preemptor: next_cg,
        };
        if let Some(n) = get_or_insert(&PREEMPT_PAIRS, pair, &ZERO_COUNT, MAP_PREEMPT_PAIRS) {
            atomic_add(n, 1);
        }
    }
    Ok(Some(NextCgroup {
        known: next_known.unwrap_or(core::ptr::null_mut()),
        next_cg,
        prev: Holder { cg: prev_cg, pod },
    }))
}

/// sched_info mode: `next` gets the CPU. The kernel set `next->sched_info.last_queued` to the
/// run queue's clock when `next` was enqueued (wakeup, or a new task) or was switched out still
/// runnable, and zeroes it only in `sched_info_arrive`, which runs after this tracepoint (in
/// `prepare_task_switch`). `__schedule` updated the run queue's clock before picking `next`,
/// so `rq->clock - last_queued` is the wait `sched_info` is about to account. Sources (v6.18,
/// the same order since v5.10):
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/stats.h> (`sched_info_enqueue`,
/// `sched_info_arrive`, `sched_info_depart`),
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/core.c> (`__schedule`:
/// `update_rq_clock`, `trace_sched_switch`, then `context_switch` → `prepare_task_switch` →
/// `sched_info_switch`), <https://github.com/torvalds/linux/blob/v6.18/include/linux/sched.h>
/// (`struct sched_info`), <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/sched.h>
/// (`struct cfs_rq`'s `rq`, `struct rq`'s `clock`, `rq_clock()`).
#[inline(always)]
fn switch_in_sched_info(
    prev: *const u8,
    next: *const u8,
    o: &Offsets,
    switch_mode: bool,
    seen: Option<NextCgroup>,
) -> Result<(), i32> {
    let queued: u64 = load(next, o.task_last_queued)?;
    if queued == 0 {
        // Not queued since it last ran (the idle task, or sched_info off): nothing waited.
        return Ok(());
    }
    let (known, next_cg) = match seen {
        Some(n) => (n.known, n.next_cg),
        None => {
            let id = task_cgroup_id(next, o)?;
            (KNOWN.get_ptr_mut(id).unwrap_or(core::ptr::null_mut()), id)
        }
    };
    if known.is_null() {
        return Ok(());
    }
    if switch_mode {
        // SAFETY: a pointer to a live map value.
        let at = unsafe { (*known).throttled_at_ns };
        if at != 0 {
            throttled_switch_in(next, at, o)?;
        }
    }
    // next is on this CPU's run queue, so its cfs_rq's rq is this CPU's.
    let cfs_rq: *const u8 = load(next, o.task_se_cfs_rq)?;
    let rq: *const u8 = load(cfs_rq, o.cfs_rq_rq)?;
    let clock: u64 = load(rq, o.rq_clock)?;
    // The kernel counts this switch-in (pcount) even when the clock read here is a little
    // behind the stamp; what this misses of the wait, run_delay gives at the next one.
    let here = clock.saturating_sub(queued);
    // The part of the wait spent on other run queues before migrations: what the kernel added
    // to run_delay since the task's last switch-in (see RUNQ_TASKS).
    let run_delay: u64 = load(next, o.task_run_delay)?;
    let pid: u32 = load(next, o.task_pid)?;
    let delta = match RUNQ_TASKS.get_ptr_mut(runq_base_slot(pid)) {
        Some(slot) => {
            // SAFETY: a slot of an array map. A task whose pid shares the slot may write it
            // from another CPU: each write is one aligned u64, and a word of another pid is
            // no base for this one.
            let (delta, after) = wait_across_migrations(pid, here, run_delay, unsafe {
                core::ptr::read_volatile(slot)
            });
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(slot, after) };
            delta
        }
        // The array shrunk to one entry (wakeup mode never gets here).
        None => here,
    };
    let holder = match seen {
        Some(n) => n.prev,
        // Tasks that share a css_set share every cgroup: prev ran in next's own cgroup (the
        // usual case, a thread of the same container), known without walking to it.
        None if load::<*const u8>(prev, o.task_cgroups)? == load(next, o.task_cgroups)? => Holder {
            cg: next_cg,
            // SAFETY: known points into a map value.
            pod: unsafe { (*known).pod_id },
        },
        None => holder_of(prev, o, known, next_cg),
    };
    account_wait(known, next_cg, holder, delta);
    Ok(())
}

/// sched_info mode, throttle switch mode: a task of a cgroup that had a throttled switch-out
/// `at` gets a CPU. If it is one of those tasks (it has a record), its group may be running
/// again: let the throttle probe close the episode. Only tasks of recently throttled cgroups
/// pay for the lookup.
#[inline(always)]
fn throttled_switch_in(next: *const u8, at: u64, o: &Offsets) -> Result<(), i32> {
    let now = now_ns();
    if now.wrapping_sub(at) >= THROTTLE_GATE_NS {
        return Ok(());
    }
    let pid: u32 = load(next, o.task_pid)?;
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(group) = unsafe { THROTTLED_TASKS.get(pid) }.copied() {
        let _ = THROTTLED_TASKS.remove(pid);
        throttle::on_switch_in(group, now);
    }
    Ok(())
}

/// Wakeup mode: `next` gets the CPU; its wait record (from a wakeup or an involuntary
/// switch-out) gives the latency.
#[inline(always)]
fn switch_in_wakeup(
    prev: *const u8,
    next: *const u8,
    o: &Offsets,
    switch_mode: bool,
    seen: Option<NextCgroup>,
) -> Result<(), i32> {
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
        // The run queues' clocks of two CPUs (a wait that migrated) can be a little apart;
        // the kernel counts the switch-in all the same.
        let delta = clock_of(next, o)?.saturating_sub(wait.since_ns);
        // A cgroup that left KNOWN while its task waited is no longer measured.
        if let Some(known) = KNOWN.get_ptr_mut(wait.cgroup_id) {
            let holder = match seen {
                Some(n) => n.prev,
                None => holder_of(prev, o, known, wait.cgroup_id),
            };
            account_wait(known, wait.cgroup_id, holder, delta);
        }
    }
    Ok(())
}
