//! The benchmarks' floors: empty programs on the hooks podstat's probes use.
//!
//! `cargo xtask bench` and `bench-net` attach them on their own (through `podstat-test-floor`)
//! to measure what any program on that tracepoint costs the host, the tracepoint's dispatch and
//! an empty BPF run, which no probe there can go below. The agent never loads them.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "sched_switch")]
pub fn bench_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The floor of the read-time steering program (`net_read_recv`).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_recv(_ctx: BtfTracePointContext) -> i32 {
    0
}
