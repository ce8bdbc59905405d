//! The benchmark's floor: an empty `sched_switch` program.
//!
//! `cargo xtask bench` attaches it on its own (through `podstat-test-floor`) to measure what any
//! program on that tracepoint costs the host, the tracepoint's dispatch and an empty BPF run,
//! which no scheduler probe can go below. The agent never loads it.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "sched_switch")]
pub fn bench_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}
