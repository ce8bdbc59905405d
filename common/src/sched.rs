//! The scheduler probe (`ebpf/src/sched.rs`).

/// Name of the per-CPU array that counts context switches; one slot.
pub const SWITCH_COUNT_MAP: &str = "SCHED_SWITCHES";
/// Name of the `tp_btf/sched_switch` program in the object.
pub const SCHED_SWITCH_PROG: &str = "sched_switch";
