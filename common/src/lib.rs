//! Types shared by the eBPF programs (`podstat-ebpf`) and the agent.
//!
//! Every type is `#[repr(C)]` with fixed-width fields and no implicit padding, so the
//! kernel side and userspace agree on the layout. The `user` feature adds `aya::Pod`.
#![no_std]

pub mod bucketing;
pub mod kernel;
pub mod net;
pub mod sched;
pub mod throttle;
