//! The bucketing microbenchmark's shared half (`ebpf/src/floor.rs`, `podstat-test-bucketing`):
//! the maps it reads, and the two comparison-based bucketings the schema-2 bit operations
//! ([`slot_of_ns`]) are measured against: the 12-bound chain podstat bucketed run-queue waits
//! with before (`b1df6d1`), and a binary search over the schema-2 edges, a comparison chain at
//! the same resolution. The agent uses none of it.

use crate::{
    kernel::slot_of_ns,
    sched::{RUNQ_LAYOUT, RUNQ_SLOTS},
};

/// Array map of one `[u64; VALUES]`: the durations (ns) the programs bucket, one per run.
pub const INPUT_MAP: &str = "BUCKETING_INPUT";

/// Per-CPU array of one u32: the index of the next value to bucket.
pub const NEXT_MAP: &str = "BUCKETING_NEXT";

/// Array map of one run-queue histogram ([`crate::sched::RUNQ_SLOTS`] slots) the programs
/// count into.
pub const HIST_MAP: &str = "BUCKETING_HIST";

/// Values in an input set: a power of two, so the programs index with a mask.
pub const VALUES: usize = 256;

/// The run-queue bounds (ns, upper-inclusive) podstat used before the schema-2 buckets
/// (`b1df6d1`): a value above the last is counted in slot 12.
pub const CHAIN_BOUNDS_NS: [u64; 12] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    100_000_000,
];

/// Slot of `ns` in [`CHAIN_BOUNDS_NS`]: the first bound it is at most, compared in order as
/// `b1df6d1` did (LLVM unrolls the loop into a chain of compares), or 12 above the last.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn chain_slot(ns: u64) -> usize {
    let mut i = 0;
    while i < CHAIN_BOUNDS_NS.len() {
        if ns <= CHAIN_BOUNDS_NS[i] {
            return i;
        }
        i += 1;
    }
    CHAIN_BOUNDS_NS.len()
}

/// Finite run-queue slots (the zero bucket and the 80 buckets above it).
const FINITE: usize = RUNQ_SLOTS - 2;

/// The last ns of each finite run-queue slot, computed from [`slot_of_ns`] at build time (the
/// first ns above `EDGE_NS[k]` is in slot `k + 1`).
pub const EDGE_NS: [u64; FINITE] = {
    let mut edges = [0u64; FINITE];
    let mut k = 0;
    while k < FINITE {
        // slot_of_ns is monotonic in ns: bisect for the last ns at or below slot k.
        let (mut lo, mut hi) = (0u64, 1u64 << 31);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if slot_of_ns(mid, &RUNQ_LAYOUT) <= k {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        edges[k] = lo;
        k += 1;
    }
    edges
};

/// The run-queue slot of `ns` by binary search over [`EDGE_NS`]: seven compares, each halving
/// the slots left.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub fn search_slot(ns: u64) -> usize {
    let (mut lo, mut hi) = (0, FINITE);
    // 2^7 > FINITE: seven halvings leave one slot; the verifier sees a bounded loop.
    let mut step = 0;
    while step < 7 {
        if lo < hi {
            let mid = usize::midpoint(lo, hi);
            if ns <= EDGE_NS[mid] {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        step += 1;
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_is_upper_inclusive() {
        assert_eq!(chain_slot(0), 0);
        assert_eq!(chain_slot(5_000), 0);
        assert_eq!(chain_slot(5_001), 1);
        assert_eq!(chain_slot(100_000_000), 11);
        assert_eq!(chain_slot(100_000_001), 12);
        assert!(VALUES.is_power_of_two());
    }

    #[test]
    fn search_is_slot_of_ns() {
        use crate::kernel::{ns_to_units, slot_of};
        for (k, &e) in EDGE_NS.iter().enumerate() {
            assert_eq!(slot_of(ns_to_units(e), &RUNQ_LAYOUT), k);
            assert_eq!(slot_of(ns_to_units(e + 1), &RUNQ_LAYOUT), k + 1);
        }
        for ns in (0..1 << 16)
            .chain((0..1 << 32).step_by(7919))
            .chain([u64::MAX, 1 << 31])
        {
            assert_eq!(search_slot(ns), slot_of_ns(ns, &RUNQ_LAYOUT), "{ns}");
        }
    }
}
