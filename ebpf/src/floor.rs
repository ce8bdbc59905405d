//! The benchmarks' floors: empty programs on the hooks podstat's probes use.
//!
//! `cargo xtask bench` and `bench-net` attach them on their own (through `podstat-test-floor`)
//! to measure what any program on that tracepoint costs the host, the tracepoint's dispatch and
//! an empty BPF run, which no probe there can go below. The agent never loads them, nor the
//! bucketing microbenchmark's socket filters below (it does create their three small maps, about
//! 3 KiB, as it creates every map of the object).

use core::ptr::addr_of_mut;

use aya_ebpf::{
    macros::{btf_tracepoint, map, socket_filter},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, SkBuffContext},
};
use podstat_common::{
    bucketing::{VALUES, chain_slot, search_slot},
    kernel::Hist,
    sched::{RUNQ_LAYOUT, RUNQ_SLOTS},
};

use crate::kernel::{atomic_add, count_ns, count_slot};

#[btf_tracepoint(function = "sched_switch")]
pub fn bench_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The floor of the read-time steering program (`net_read_recv`).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_recv(_ctx: BtfTracePointContext) -> i32 {
    0
}

// The bucketing microbenchmark (`podstat-test-bucketing`): socket filters that
// `BPF_PROG_TEST_RUN` runs a million times each, every run taking the next duration of an input
// set and counting it in a run-queue histogram the way the pod path does. The floor does the same
// with the slot fixed at 0, so their difference is the bucketing alone, measured to a fraction
// of a ns where the context-switch storm of `cargo xtask bench` resolves only a few.

/// The durations (ns) to bucket, written by the loader.
#[map]
static BUCKETING_INPUT: Array<[u64; VALUES]> = Array::with_max_entries(1, 0);

/// Index of the next value, per CPU (a test run stays on one CPU).
#[map]
static BUCKETING_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The histogram the programs count into, read back to check the kernel's slots.
#[map]
static BUCKETING_HIST: Array<Hist<RUNQ_SLOTS>> = Array::with_max_entries(1, 0);

/// The next input value and the histogram, or `None` (never, once the maps exist).
#[inline(always)]
fn next_value() -> Option<(u64, *mut Hist<RUNQ_SLOTS>)> {
    let next = BUCKETING_NEXT.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array; test runs do not nest.
    let i = unsafe {
        let i = *next;
        *next = i.wrapping_add(1);
        i as usize & (VALUES - 1)
    };
    let ns = BUCKETING_INPUT.get(0)?[i];
    Some((ns, BUCKETING_HIST.get_ptr_mut(0)?))
}

/// The floor: the same value read and the same atomic add, to slot 0.
#[socket_filter]
pub fn bucketing_floor(_ctx: SkBuffContext) -> i64 {
    if let Some((ns, hist)) = next_value() {
        // SAFETY: hist points into a map value.
        atomic_add(unsafe { addr_of_mut!((*hist)[0]) }, ns);
    }
    0
}

/// The pod path's bucketing ([`count_ns`]): the schema-2 slot by bit operations.
#[socket_filter]
pub fn bucketing_native(_ctx: SkBuffContext) -> i64 {
    if let Some((ns, hist)) = next_value() {
        let _ = count_ns(hist, &RUNQ_LAYOUT, ns);
    }
    0
}

/// The comparison chain podstat used before ([`chain_slot`]).
#[socket_filter]
pub fn bucketing_chain(_ctx: SkBuffContext) -> i64 {
    if let Some((ns, hist)) = next_value() {
        let _ = count_slot(hist, chain_slot(ns));
    }
    0
}

/// A comparison chain at schema 2's resolution ([`search_slot`]).
#[socket_filter]
pub fn bucketing_search(_ctx: SkBuffContext) -> i64 {
    if let Some((ns, hist)) = next_value() {
        let _ = count_slot(hist, search_slot(ns));
    }
    0
}
