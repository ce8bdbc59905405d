//! Scheduler probe.
//!
//! `tp_btf/sched_switch` (kernel 5.5+), argument layout of `trace_sched_switch`:
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sched.h#L222>.
//! Today it counts context switches per CPU, which proves the path from source to an
//! attached program; the run-queue latency and preemption attribution grow from here.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};

/// Context switches seen on this CPU. One slot; userspace sums nothing, it reports per CPU.
#[map]
static SCHED_SWITCHES: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    match try_sched_switch(&ctx) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

#[inline(always)]
fn try_sched_switch(_ctx: &BtfTracePointContext) -> Result<(), i32> {
    let slot = SCHED_SWITCHES.get_ptr_mut(0).ok_or(1)?;
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it points at this
    // CPU's slot, which no other CPU writes, and preemption is off in a tracepoint.
    unsafe { *slot += 1 };
    Ok(())
}
