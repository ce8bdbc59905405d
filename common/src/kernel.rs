//! What every probe shares (`ebpf/src/kernel.rs`): the kernel struct offsets, the `KNOWN`
//! map of tracked cgroups, the kernel histogram layout, and the map-full slots.
//!
//! The kernel aggregates into histograms keyed by `{cgroup id, bucket}`; userspace adds the
//! buckets up, converts units and fills in empty buckets. Only cgroups that userspace put in
//! [`KNOWN_MAP`] (pods and containers) are tracked, which bounds every map by the number of
//! pod cgroups on the node.

use crate::sched::SchedStats;

/// cgroup id → [`Known`]: the cgroups userspace wants measured.
pub const KNOWN_MAP: &str = "KNOWN";

/// Per-CPU array of insert failures, indexed by `MAP_*` (names in [`MAP_NAMES`]).
pub const MAP_FULL_MAP: &str = "MAP_FULL";

/// Read-only global with the kernel struct offsets ([`Offsets`]).
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Default sizing: cgroups tracked (a 300-pod node has about 1200 pod and container cgroups).
pub const DEFAULT_MAX_CGROUPS: u32 = 4096;

/// Native-histogram schema of every kernel histogram: `2^SCHEMA` buckets per power of two, so
/// bucket `i` of a histogram is `(2^((i-1)/4), 2^(i/4)]` in the exported unit (seconds, or
/// threads), exactly Prometheus' native-histogram bucket `i` at schema 2.
pub const SCHEMA: i32 = 2;

/// Buckets per power of two.
pub const SUB_BUCKETS: usize = 1 << SCHEMA;

/// Where a kernel histogram's buckets lie. Values are bucketed in *kernel units* of
/// `2^unit_log2` exported units (2^-30 s for times, see [`ns_to_units`]; half a thread for
/// thread counts), so that the powers of two of the kernel unit are powers of two of the
/// exported unit and every kernel bucket is one native bucket.
///
/// Slots of a histogram (`[u64; slots()]`): slot 0 counts values `<= 2^zero_log2` kernel units
/// (the native zero bucket), slots `1..=buckets()` the [`SUB_BUCKETS`] buckets of each power of
/// two up to `2^top_log2`, then one slot counts values above it (overflow), and the last holds
/// the sum of the observed values in their own unit (ns, or threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// log2 of the zero bucket's upper edge, in kernel units (at least 0).
    pub zero_log2: u32,
    /// log2 of the highest finite edge, in kernel units (at most 62).
    pub top_log2: u32,
    /// log2 of the kernel unit in the exported unit.
    pub unit_log2: i32,
}

impl Layout {
    /// Finite buckets above the zero bucket.
    pub const fn buckets(&self) -> usize {
        SUB_BUCKETS * (self.top_log2 - self.zero_log2) as usize
    }

    /// Slot counting values above the highest finite edge.
    pub const fn overflow_slot(&self) -> usize {
        self.buckets() + 1
    }

    /// Slot holding the sum of observed values.
    pub const fn sum_slot(&self) -> usize {
        self.buckets() + 2
    }

    /// Slots of a histogram with this layout.
    pub const fn slots(&self) -> usize {
        self.buckets() + 3
    }

    /// Native-histogram index (schema [`SCHEMA`], exported unit) of the upper edge of `slot`
    /// (1..=[`buckets`](Self::buckets)); slot 0's edge is the zero threshold.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "slots are below 2^10"
    )]
    pub const fn native_index(&self, slot: usize) -> i32 {
        (SUB_BUCKETS as i32) * (self.zero_log2 as i32 + self.unit_log2) + slot as i32
    }
}

/// `floor(2^62 * 2^(m/4))` for m = 1, 2, 3: the sub-bucket edges of a power of two, in 62-bit
/// fixed point. Shifted right by `62 - e` they give `floor(2^(e + m/4))` exactly.
const SUB_EDGES_Q62: [u64; 3] = [
    5_484_249_825_272_419_511, // 2^62 * 2^0.25
    6_521_908_912_666_391_106, // 2^62 * 2^0.5
    7_755_900_482_342_532_474, // 2^62 * 2^0.75
];

/// `floor(log2(x))` for `1 <= x < 2^32` by halving the search range with shifts: five steps, no
/// loop and no table (BPF has no count-leading-zeros instruction). [`slot_of`] takes it of a
/// value already shifted down by the zero bucket's power, and no layout spans 32 powers of two.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub const fn log2_floor(mut x: u64) -> u32 {
    let mut r = 0;
    let mut s = ((x > 0xffff) as u32) << 4;
    x >>= s;
    r |= s;
    s = ((x > 0xff) as u32) << 3;
    x >>= s;
    r |= s;
    s = ((x > 0xf) as u32) << 2;
    x >>= s;
    r |= s;
    s = ((x > 0x3) as u32) << 1;
    x >>= s;
    r |= s;
    r | (x > 0x1) as u32
}

/// Slot of `v` (in kernel units) in a histogram with layout `l`: the native bucket
/// `(2^((i-1)/4), 2^(i/4)]` that holds it, found with [`log2_floor`], one shift and three
/// compares against constants, whatever the number of buckets (no comparison chain). `const`,
/// so tables of edges are computed from it at build time (`bucketing::EDGE_NS`).
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
#[expect(
    clippy::many_single_char_names,
    reason = "the names of the maths in the comment: v, d, e, w, m"
)]
pub const fn slot_of(v: u64, l: &Layout) -> usize {
    if v <= 1 << l.zero_log2 {
        return 0;
    }
    if v > 1 << l.top_log2 {
        return l.overflow_slot();
    }
    // v is in (2^e, 2^(e+1)] with e = floor(log2(v - 1)) = zero_log2 + d (below 2^32 once
    // shifted: top_log2 - zero_log2 <= 32). v is above the m-th edge of that power of two,
    // 2^(e + m/4) (irrational), exactly when v - 1 >= floor(2^(e + m/4)) = floor(C_m >> s)
    // with s = 62 - e, that is when v << s > C_m: one shift of v instead of one per constant.
    let d = log2_floor((v - 1) >> l.zero_log2);
    let w = v << (62 - l.zero_log2 - d);
    let m = (w > SUB_EDGES_Q62[0]) as usize
        + (w > SUB_EDGES_Q62[1]) as usize
        + (w > SUB_EDGES_Q62[2]) as usize;
    SUB_BUCKETS * d as usize + m + 1
}

/// [`slot_of`]`(`[`ns_to_units`]`(ns), l)` for a duration in ns, the zero bucket found by one
/// compare of the ns before the conversion's multiply (most run-queue waits of a busy CPU are
/// that short: 64% of the bucketing microbenchmark's short set).
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub const fn slot_of_ns(ns: u64, l: &Layout) -> usize {
    if ns <= zero_ns(l) {
        return 0;
    }
    slot_of(ns_to_units(ns), l)
}

/// The longest duration, in ns, that a time histogram with layout `l` counts in its zero
/// bucket (954 ns for the run-queue's 2^-20 s): the last ns that [`ns_to_units`] takes to at
/// most `2^zero_log2` units.
#[expect(
    clippy::cast_possible_truncation,
    reason = "zero edges are below 2^31 units, so their ns are too"
)]
pub const fn zero_ns(l: &Layout) -> u64 {
    // (ns * Q) >> 32 <= T  <=>  ns * Q < (T + 1) << 32  <=>  ns < ceil(((T + 1) << 32) / Q).
    let bound = ((1u128 << l.zero_log2) + 1) << 32;
    (bound.div_ceil(NS_TO_UNITS_Q32 as u128) - 1) as u64
}

/// `ceil(2^62 / 10^9)`: ns to kernel time units (2^-30 s) as a multiply and a shift.
const NS_TO_UNITS_Q32: u64 = 4_611_686_019;

/// Nanoseconds in kernel time units of 2^-30 s (about 0.93 ns), so that a power of two of
/// them is a power of two of seconds. `(ns * ceil(2^62 / 10^9)) >> 32` is `ns * 2^30 / 10^9`
/// rounded down, or up by one unit when it lies within 0.3 units below an integer: a value
/// within 1 ns of a bucket edge may be counted in the bucket next to it. Durations of 2^31 ns
/// (2.1 s) and more saturate; every time histogram ends at 1 s.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "BPF has no real calls between these helpers; it must inline"
)]
pub const fn ns_to_units(ns: u64) -> u64 {
    if ns >= 1 << 31 {
        return u64::MAX;
    }
    (ns * NS_TO_UNITS_Q32) >> 32
}

/// A time histogram's kernel unit: 2^-30 s.
pub const TIME_UNIT_LOG2: i32 = -30;

/// A kernel histogram with `N` slots (see [`Layout`]). One map value holds a cgroup's whole
/// histogram, so userspace reads a cgroup with a single lookup instead of one per bucket.
pub type Hist<const N: usize> = [u64; N];

/// Maps whose inserts can fail, for `podstat_bpf_map_full_total{map}`.
pub const MAP_WAIT: u32 = 0;

pub const MAP_THROTTLE_STATS: u32 = 1;

pub const MAP_PREEMPT_PAIRS: u32 = 2;

pub const MAP_WAIT_PAIRS: u32 = 3;

/// Slots of [`MAP_FULL_MAP`], named as in the metric.
pub const MAP_NAMES: [&str; 4] = [
    "wait_start",
    "throttle_stats",
    "preempt_pairs",
    "wait_pairs",
];

/// Value of [`KNOWN_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Identifies the pod: tasks in cgroups with the same `pod_id` belong to the same pod.
    pub pod_id: u64,
    /// The pod-level cgroup's id for a container cgroup (0 for a pod cgroup or when unknown):
    /// a pod-level quota throttles the pod's cfs_rq, not the container's.
    pub parent_id: u64,
    /// Written by the kernel (userspace inserts 0): when a task of this cgroup last left the
    /// CPU while its group was throttled (`bpf_ktime_get_ns`), in sched_info mode with throttle
    /// switch mode. Only while it is recent does a switch-in look for a throttle record.
    pub throttled_at_ns: u64,
    /// Keeps the fields above, read on every switch-in of the cgroup's tasks, off the cache
    /// lines of the counters below, which every CPU running the cgroup's tasks adds to: 64
    /// bytes put a whole line between them wherever the kernel places the value. Measured with
    /// `cargo xtask bench --skip-e2e` (docs/architecture.md has the table): in the slower runs
    /// the pod path cost 237–283 ns per event with it and 302–332 ns without.
    pub pad: [u64; 8],
    /// Written by the kernel (userspace inserts zeros): the cgroup's run-queue latency and
    /// preemptions. Kept in the entry the probe looks up anyway, so a tracked task's
    /// switch-in costs one hash lookup, not two, and the stats go when the cgroup leaves.
    pub sched: SchedStats,
}

/// Kernel struct offsets in bytes, resolved from the running kernel's BTF at load time.
/// A zero `valid` means "not resolved": the programs do nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.cgroups` (struct css_set *).
    pub task_cgroups: u32,
    /// `css_set.subsys[cpu_cgrp_id]` (struct cgroup_subsys_state *).
    pub css_set_cpu_subsys: u32,
    /// `cgroup_subsys_state.cgroup` (struct cgroup *).
    pub css_cgroup: u32,
    /// `cgroup.kn` (struct kernfs_node *).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64).
    pub kn_id: u32,
    /// `task_struct.pid` (pid_t).
    pub task_pid: u32,
    /// `task_struct.__state` (5.14+) or `.state`: low 32 bits, 0 = TASK_RUNNING.
    pub task_state: u32,
    /// `task_struct.on_rq` (int): non-zero while the task is queued on a run queue, or
    /// `TASK_ON_RQ_MIGRATING` between two (wakeup mode's `sched_migrate_task`).
    pub task_on_rq: u32,
    /// `cfs_rq.tg` (struct task_group *).
    pub cfs_rq_tg: u32,
    /// Byte holding `cfs_rq.throttled` (an `int` on older kernels, a one-bit bitfield in 6.18).
    pub cfs_rq_throttled: u32,
    /// Mask of the `throttled` bit(s) in that byte (0xff for an int, which is 0 or 1).
    pub cfs_rq_throttled_mask: u32,
    /// `cfs_rq.h_nr_running` (≤ 6.13) or `.h_nr_queued` (6.14+), unsigned int.
    pub cfs_rq_h_nr: u32,
    /// `task_group.css.cgroup` (struct cgroup *): `task_group.css` + `css_cgroup`.
    pub tg_css_cgroup: u32,
    /// `task_group.cfs_bandwidth.period` (ktime_t, ns).
    pub tg_period: u32,
    /// `task_group.cfs_bandwidth.period_timer.node.expires` (ktime_t, CLOCK_MONOTONIC ns).
    pub tg_period_expires: u32,
    /// `task_struct.se.cfs_rq`: the cfs_rq of the task's own group on its CPU.
    pub task_se_cfs_rq: u32,
    /// `task_struct.se.parent`: the group entity of the task's group.
    pub task_se_parent: u32,
    /// `sched_entity.cfs_rq` and `sched_entity.parent`, to walk up the group hierarchy.
    pub se_cfs_rq: u32,
    pub se_parent: u32,
    /// 1 on kernels with task-based throttling (6.18+: `task_struct.throttled` exists), where a
    /// throttled task is dequeued before it is switched out and so is not in `h_nr_*`.
    pub task_based_throttle: u32,
    /// With task-based throttling: byte and mask of `task_struct.throttled`, set when the task
    /// has really been throttled (not merely preempted while its cfs_rq was throttled).
    pub task_throttled: u32,
    pub task_throttled_mask: u32,
    /// Online CPUs, which cap the threads a throttle deficit counts (0: no cap).
    pub nr_cpus: u32,
    /// `task_struct.sched_info.last_queued` (unsigned long long, rq clock ns; CONFIG_SCHED_INFO).
    pub task_last_queued: u32,
    /// `cfs_rq.rq` (struct rq *; CONFIG_FAIR_GROUP_SCHED).
    pub cfs_rq_rq: u32,
    /// `rq.clock` (u64 ns, the clock `sched_info` stamps `last_queued` with).
    pub rq_clock: u32,
    /// `task_struct.sched_info.run_delay` (unsigned long long ns): the kernel's total, which it
    /// also adds to when a waiting task leaves a run queue to migrate.
    pub task_run_delay: u32,
    /// [`RUNQ_MODE_SCHED_INFO`](crate::sched::RUNQ_MODE_SCHED_INFO) or [`RUNQ_MODE_WAKEUP`](crate::sched::RUNQ_MODE_WAKEUP): how run-queue latency is measured.
    pub sched_info: u32,
    /// 1 when the fields above are filled in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): #[repr(C)], fixed-width integer fields only, no implicit padding (padding
    // is spelled out as `_pad`), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Known {}
    unsafe impl aya::Pod for super::Offsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keeps_a_cache_line_between_read_fields_and_counters() {
        let read_end = core::mem::offset_of!(Known, throttled_at_ns) + 8;
        let counters = core::mem::offset_of!(Known, sched);
        // A 64-byte line can hold the last read byte and the first counter byte only if they
        // are less than 64 bytes apart, wherever the kernel places the value.
        assert!(counters - (read_end - 1) > 64, "{read_end} {counters}");
    }

    /// The native bucket of `x` (exported unit) at schema 2, in floating point: the reference.
    fn native_index_f64(x: f64) -> i32 {
        #[expect(clippy::cast_possible_truncation, reason = "small")]
        let i = (4.0 * x.log2()).ceil() as i32;
        i
    }

    fn check(l: &Layout, v: u64) {
        let slot = slot_of(v, l);
        let unit = 2f64.powi(l.unit_log2);
        #[expect(clippy::cast_precision_loss, reason = "v < 2^53")]
        let x = v as f64 * unit;
        let zero = 2f64.powi(l.zero_log2.cast_signed()) * unit;
        let top = 2f64.powi(l.top_log2.cast_signed()) * unit;
        if x <= zero {
            assert_eq!(slot, 0, "{v}");
        } else if x > top {
            assert_eq!(slot, l.overflow_slot(), "{v}");
        } else {
            assert!((1..=l.buckets()).contains(&slot), "{v} -> {slot}");
            assert_eq!(
                l.native_index(slot),
                native_index_f64(x),
                "{v} -> slot {slot}"
            );
        }
    }

    const RUNQ: Layout = Layout {
        zero_log2: 10,
        top_log2: 30,
        unit_log2: TIME_UNIT_LOG2,
    };

    /// The per-cgroup kernel memory the docs state (`--probe.max-cgroups`, README): KNOWN's
    /// value 800 bytes, THROTTLE_STATS' 1232 bytes, before the hash table's per-entry overhead.
    #[test]
    fn per_cgroup_values_are_the_stated_size() {
        assert_eq!(size_of::<Known>(), 800);
        assert_eq!(size_of::<crate::throttle::ThrottleStats>(), 1232);
    }

    #[test]
    fn log2_floor_matches_leading_zeros() {
        for e in 0..32 {
            for x in [
                1u64 << e,
                (1u64 << e) | 1,
                (1u64 << e).wrapping_mul(2).wrapping_sub(1),
            ] {
                if x >= 1 << e && x < 1 << 32 {
                    assert_eq!(log2_floor(x), x.ilog2(), "{x}");
                }
            }
        }
    }

    /// The zero bucket's edge in ns is exact, and the ns way gives the units way's slot, in every
    /// time layout; every layout spans at most 32 powers of two (what `log2_floor` takes).
    #[test]
    fn slot_of_ns_is_slot_of_units() {
        use crate::{
            sched::RUNQ_LAYOUT,
            throttle::{PERIOD_LAYOUT, THREAD_LAYOUT},
        };
        assert_eq!(zero_ns(&RUNQ_LAYOUT), 954);
        for l in [RUNQ_LAYOUT, PERIOD_LAYOUT, THREAD_LAYOUT] {
            assert!(l.top_log2 - l.zero_log2 <= 32, "{l:?}");
        }
        for l in [RUNQ_LAYOUT, PERIOD_LAYOUT] {
            let z = zero_ns(&l);
            assert!(ns_to_units(z) <= 1 << l.zero_log2, "{l:?}");
            assert!(ns_to_units(z + 1) > 1 << l.zero_log2, "{l:?}");
            for ns in (0..1 << 18).chain((0..1 << 32).step_by(4099)).chain([
                z - 1,
                z,
                z + 1,
                1 << 31,
                u64::MAX,
            ]) {
                assert_eq!(
                    slot_of_ns(ns, &l),
                    slot_of(ns_to_units(ns), &l),
                    "{ns} ns in {l:?}"
                );
            }
        }
    }

    #[test]
    fn slots_are_native_buckets() {
        // Every value up to 2^20 units, then the integers next to every edge up to the top.
        for v in 0..(1 << 20) {
            check(&RUNQ, v);
        }
        for e in 10..31 {
            for m in 0..4 {
                let edge = 2f64.powf(f64::from(e) + f64::from(m) / 4.0);
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "edges below 2^31"
                )]
                let f = edge.floor() as u64;
                for v in [f.saturating_sub(1), f, f + 1, f + 2] {
                    check(&RUNQ, v);
                }
            }
        }
        assert_eq!(slot_of(u64::MAX, &RUNQ), RUNQ.overflow_slot());
        // Upper-inclusive: a power of two is the top of the bucket below it.
        assert_eq!(slot_of(1 << 11, &RUNQ), 4);
        assert_eq!(slot_of((1 << 11) + 1, &RUNQ), 5);
        assert_eq!(RUNQ.native_index(4), -76); // 2^-19 s
    }

    #[test]
    fn ns_convert_to_binary_units() {
        assert_eq!(ns_to_units(0), 0);
        assert_eq!(ns_to_units(1_000_000_000), 1 << 30);
        assert_eq!(ns_to_units(500_000_000), 1 << 29);
        assert_eq!(ns_to_units(1 << 31), u64::MAX);
        // Never below the exact value, and at most one unit above it.
        for ns in (0..(1u64 << 31))
            .step_by(777_777)
            .chain([1, 999, 1_000_001, (1 << 31) - 1])
        {
            let exact = (u128::from(ns) << 30) / 1_000_000_000;
            let got = u128::from(ns_to_units(ns));
            assert!(got == exact || got == exact + 1, "{ns}: {got} vs {exact}");
        }
    }
}
