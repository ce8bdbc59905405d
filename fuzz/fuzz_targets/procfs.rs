//! procfs and sysfs text: `/proc/net/softnet_stat`, `/proc/interrupts` (and the action names
//! matched to a device's queues), CPU lists and masks (`smp_affinity_list`, `online`,
//! `rps_cpus`) and `/proc/<pid>/schedstat`, all on the same input. Properties: a CPU list or
//! mask that parses prints back (in the kernel's form) to the same CPUs; softnet rows carry
//! the CPU of their index column or position.
#![no_main]

use std::{fmt::Write as _, path::Path};

use libfuzzer_sys::fuzz_target;
use podstat::{
    cgroup::ErrorCounts,
    netdev::{
        irq::{DeviceIds, irq_queue, parse_interrupts},
        softnet,
        topology::{parse_cpu_list, parse_cpu_mask},
    },
    probe::sched::parse_schedstat_live,
};

/// `cpus` (sorted, deduplicated) in the kernel's `%*pbl` list form.
fn list_form(cpus: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        let sep = if out.is_empty() { "" } else { "," };
        if cpus[i] == start {
            let _ = write!(out, "{sep}{start}");
        } else {
            let _ = write!(out, "{sep}{start}-{}", cpus[i]);
        }
        i += 1;
    }
    out
}

/// `cpus` in the kernel's `%*pb` mask form (32-bit words, most significant first).
fn mask_form(cpus: &[u32]) -> String {
    let words = cpus.last().map_or(1, |m| m / 32 + 1) as usize;
    let mut w = vec![0u32; words];
    for c in cpus {
        w[(c / 32) as usize] |= 1 << (c % 32);
    }
    w.iter()
        .rev()
        .map(|x| format!("{x:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v.dedup();
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let online: Vec<u32> = (0..8).collect();
    let mut errors = ErrorCounts::default();
    let rows = softnet::parse(text, &online, &mut errors);
    assert!(rows.len() <= text.lines().count());

    let dev = DeviceIds {
        name: "eth0".into(),
        pci: Some("0000:3b:00.0".into()),
        virtio: Some("virtio1".into()),
    };
    for irq in parse_interrupts(text) {
        for action in &irq.actions {
            let _ = irq_queue(action, &dev);
        }
    }

    for line in text.lines() {
        if let Ok(cpus) = parse_cpu_list(line) {
            let cpus = sorted(cpus);
            let again = parse_cpu_list(&list_form(&cpus)).expect("list form parses");
            assert_eq!(sorted(again), cpus, "cpu list {line:?}");
        }
        if let Ok(cpus) = parse_cpu_mask(line) {
            // A mask lists each CPU once, in increasing order.
            assert!(
                cpus.windows(2).all(|w| w[0] < w[1]),
                "cpu mask {line:?}: {cpus:?}"
            );
            let again = parse_cpu_mask(&mask_form(&cpus)).expect("mask form parses");
            assert_eq!(again, cpus, "cpu mask {line:?}");
        }
    }
    let _ = parse_schedstat_live(Path::new("/proc/self/schedstat"), text);
});
