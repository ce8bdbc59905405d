//! The kernel's BTF (`/sys/kernel/btf/vmlinux`), parsed and then asked what the probes ask:
//! the offsets every program needs, the throttle and run-queue fields, and a few direct
//! queries. Property: no panic, whatever the bytes (the answers may be errors).
#![no_main]

use libfuzzer_sys::fuzz_target;
use podstat::probe::{btf::KernelBtf, kernel::resolve_offsets, net, sched, throttle};

fuzz_target!(|data: &[u8]| {
    let Ok(k) = KernelBtf::parse(data) else {
        return;
    };
    let mut offsets = resolve_offsets(&k).unwrap_or_default();
    let _ = throttle::resolve_fields(&k, &mut offsets);
    let _ = sched::resolve_sched_info(&k, &mut offsets);
    let _ = net::resolve_offsets(&k, &offsets, 0xf000_0000);
    for (ty, path) in [
        ("task_struct", "se.cfs_rq"),
        ("cfs_rq", "throttled"),
        ("sk_buff", "dev"),
        ("sock", "__sk_common.skc_rxhash"),
        ("outer", "tm.expires"),
    ] {
        let _ = k.offset_of(ty, path);
        let _ = k.bit_offset_of(ty, path);
        let _ = k.array_of(ty, path);
        let _ = k.has_member(ty, path);
        let _ = k.size_of(ty);
    }
    let _ = k.enum_value("big", "HUGE");
    let _ = k.has_func("do_thing");
});
