//! The bucketing microbenchmark: podstat's socket filters `bucketing_*` (`ebpf/src/floor.rs`)
//! run through `BPF_PROG_TEST_RUN`, each run bucketing the next duration of an input set into a
//! run-queue histogram. `podstat-test-bucketing` times them for `cargo xtask bench`; the
//! privileged tests check that the kernel's slots are the ones userspace computes.
//!
//! Timing is this thread's CPU time around a test run of [`REPEAT`] runs, divided by the runs:
//! the kernel's own `duration` is a whole number of ns per run, too coarse for a difference of
//! one or two. The thread stays on one CPU, so the per-CPU index walks the set in order.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{SocketFilter, TestRun, TestRunOptions},
    util::nr_cpus,
};
use podstat_common::{
    bucketing::{CHAIN_BOUNDS_NS, EDGE_NS, HIST_MAP, INPUT_MAP, NEXT_MAP, VALUES, chain_slot},
    kernel::{Hist, ns_to_units, slot_of},
    sched::{RUNQ_LAYOUT, RUNQ_SLOTS},
};

/// Runs in one timed test run: about 20 ms of a 20 ns program.
pub const REPEAT: u32 = 1 << 20;

/// The floor: the same value read and the same atomic add, to slot 0.
pub const FLOOR: &str = "bucketing_floor";

/// The pod path's bucketing: schema 2, bit operations ([`podstat_common::kernel::slot_of_ns`]).
pub const NATIVE: &str = "bucketing_native";

/// The 12-bound comparison chain of `b1df6d1` ([`chain_slot`]).
pub const CHAIN: &str = "bucketing_chain";

/// A comparison chain at schema 2's resolution: binary search over the edges
/// ([`podstat_common::bucketing::search_slot`]).
pub const SEARCH: &str = "bucketing_search";

/// Every program, the floor first.
pub const PROGRAMS: [&str; 4] = [FLOOR, NATIVE, CHAIN, SEARCH];

/// A packet for the socket filters, which never read it: an Ethernet header's worth of zeros
/// (the least `BPF_PROG_TEST_RUN` takes for a socket filter).
const PACKET: [u8; 14] = [0; 14];

/// The slot `program` counts `ns` in: [`CHAIN`]'s bound, or the schema-2 bucket that both
/// [`NATIVE`] and [`SEARCH`] must find (the floor adds the value itself to slot 0).
#[must_use]
pub fn expected_slot(program: &str, ns: u64) -> usize {
    if program == CHAIN {
        chain_slot(ns)
    } else {
        slot_of(ns_to_units(ns), &RUNQ_LAYOUT)
    }
}

/// An input set: its name, what it stands for, and its durations in ns.
pub struct InputSet {
    pub name: &'static str,
    pub what: &'static str,
    pub values: [u64; VALUES],
}

/// `VALUES` durations spread evenly in log between `lo` and `hi` ns, shuffled by a fixed
/// permutation so that consecutive runs do not climb the buckets in order (a branch predictor
/// would learn that).
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "durations below 2^40 ns, indices below VALUES"
)]
pub fn log_spread(lo: f64, hi: f64) -> [u64; VALUES] {
    let mut sorted = [0u64; VALUES];
    for (i, v) in sorted.iter_mut().enumerate() {
        let t = i as f64 / (VALUES - 1) as f64;
        *v = (lo * (hi / lo).powf(t)).round() as u64;
    }
    // i -> 97 * i + 31 mod VALUES is a permutation (97 is odd, VALUES a power of two).
    let mut out = [0u64; VALUES];
    for (i, v) in sorted.iter().enumerate() {
        out[(97 * i + 31) % VALUES] = *v;
    }
    out
}

/// The sets `podstat-test-bucketing` times.
#[must_use]
pub fn input_sets() -> Vec<InputSet> {
    vec![
        InputSet {
            name: "short",
            what: "250 ns to 2 µs, where 99% of the bench storm's waits fall (by runqlat)",
            values: log_spread(250.0, 2_000.0),
        },
        InputSet {
            name: "spread",
            what: "1 µs to 1 s, even in log: every bucket, as a node with slow waits sees them",
            values: log_spread(1_000.0, 1e9),
        },
    ]
}

/// Durations next to every run-queue bucket edge ([`EDGE_NS`], the last ns of each slot) and the
/// chain's bounds (the ns on each side of each), then the extremes, padded to `VALUES` with
/// zeros: the set the slot check uses.
#[must_use]
pub fn edge_values() -> Vec<[u64; VALUES]> {
    let mut all: Vec<u64> = vec![0, 1, 1 << 31, u64::MAX];
    for e in EDGE_NS {
        all.extend([e.saturating_sub(1), e, e + 1, e + 2]);
    }
    for b in CHAIN_BOUNDS_NS {
        all.extend([b - 1, b, b + 1]);
    }
    all.chunks(VALUES)
        .map(|c| {
            let mut set = [0u64; VALUES];
            set[..c.len()].copy_from_slice(c);
            set
        })
        .collect()
}

/// The loaded socket filters and their maps.
pub struct Bench {
    ebpf: Ebpf,
}

impl Bench {
    /// Loads podstat's eBPF object and its three bucketing programs (nothing is attached).
    ///
    /// # Errors
    /// No eBPF object in this build, or the kernel refusing a program.
    pub fn load() -> anyhow::Result<Self> {
        let object = podstat::probe::object();
        ensure!(
            !object.is_empty(),
            "this build has no eBPF object (run it through `cargo xtask`)"
        );
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .context("loading the eBPF object")?;
        for name in PROGRAMS {
            let prog: &mut SocketFilter = ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not a socket filter"))?;
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self { ebpf })
    }

    /// Sets the durations the programs bucket, starts every CPU's walk at the first and
    /// empties the histogram.
    ///
    /// # Errors
    /// A map update failing.
    pub fn set_input(&mut self, values: &[u64; VALUES]) -> anyhow::Result<()> {
        let mut input: Array<&mut MapData, [u64; VALUES]> =
            Array::try_from(self.map(INPUT_MAP)?).context(INPUT_MAP)?;
        input
            .set(0, values, 0)
            .with_context(|| format!("writing {INPUT_MAP}"))?;
        let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let mut next: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(self.map(NEXT_MAP)?).context(NEXT_MAP)?;
        let zeros = PerCpuValues::try_from(vec![0u32; cpus]).context("per-CPU zeros")?;
        next.set(0, zeros, 0)
            .with_context(|| format!("writing {NEXT_MAP}"))?;
        let mut hist: Array<&mut MapData, Hist<RUNQ_SLOTS>> =
            Array::try_from(self.map(HIST_MAP)?).context(HIST_MAP)?;
        hist.set(0, [0; RUNQ_SLOTS], 0)
            .with_context(|| format!("writing {HIST_MAP}"))
    }

    /// The histogram the programs counted into.
    ///
    /// # Errors
    /// The map read failing.
    pub fn hist(&mut self) -> anyhow::Result<Hist<RUNQ_SLOTS>> {
        let hist: Array<&mut MapData, Hist<RUNQ_SLOTS>> =
            Array::try_from(self.map(HIST_MAP)?).context(HIST_MAP)?;
        hist.get(&0, 0)
            .with_context(|| format!("reading {HIST_MAP}"))
    }

    /// Runs `program` `runs` times in one test run; this thread's CPU time for it.
    ///
    /// # Errors
    /// No such program, or the test run failing.
    pub fn run(&self, program: &str, runs: u32) -> anyhow::Result<Duration> {
        let prog: &SocketFilter = self
            .ebpf
            .program(program)
            .with_context(|| format!("the eBPF object has no program {program}"))?
            .try_into()
            .with_context(|| format!("{program} is not a socket filter"))?;
        let opts = TestRunOptions {
            data_in: Some(&PACKET),
            repeat: runs,
            ..TestRunOptions::default()
        };
        let before = crate::proc::thread_cpu_time();
        prog.test_run(opts)
            .with_context(|| format!("test run of {program}"))?;
        Ok(crate::proc::thread_cpu_time().saturating_sub(before))
    }

    fn map(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("the eBPF object has no map {name}"))
    }
}

/// Keeps this thread on the CPU it runs on, so a test run's per-CPU index is one walk.
///
/// # Errors
/// `sched_setaffinity` failing.
pub fn pin_to_current_cpu() -> anyhow::Result<usize> {
    // SAFETY: sched_getcpu has no arguments and no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() })
        .map_err(|_| std::io::Error::last_os_error())
        .context("sched_getcpu")?;
    crate::proc::pin_thread(cpu).context("sched_setaffinity")?;
    Ok(cpu)
}

/// Runs `program` once per value of each edge set and compares the kernel's histogram with
/// [`expected_slot`]: the slots the BPF build of the bucketing gives are the host build's.
///
/// # Errors
/// A run failing, or the first set whose histogram differs (with the slots that differ).
pub fn check_slots(bench: &mut Bench, program: &str) -> anyhow::Result<usize> {
    let sets = edge_values();
    let mut checked = 0;
    for set in &sets {
        bench.set_input(set)?;
        bench.run(program, u32::try_from(VALUES).unwrap_or(u32::MAX))?;
        let got = bench.hist()?;
        let mut want = [0u64; RUNQ_SLOTS];
        for &ns in set {
            if let Some(n) = want.get_mut(expected_slot(program, ns)) {
                *n += 1;
            }
        }
        if got != want {
            let diff: Vec<String> = (0..RUNQ_SLOTS)
                .filter(|&i| got[i] != want[i])
                .map(|i| format!("slot {i}: kernel {} userspace {}", got[i], want[i]))
                .collect();
            bail!(
                "{program}: the kernel's slots differ from userspace's for the set starting \
                 {:?}: {}",
                &set[..4],
                diff.join(", ")
            );
        }
        checked += set.len();
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_a_permutation_of_the_log_ladder() {
        let s = log_spread(1_000.0, 1e9);
        let mut sorted = s;
        sorted.sort_unstable();
        assert_eq!(sorted[0], 1_000);
        assert_eq!(sorted[VALUES - 1], 1_000_000_000);
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        assert_ne!(s, sorted, "shuffled");
    }

    #[test]
    fn edge_values_cross_every_slot() {
        let all: Vec<u64> = edge_values().concat();
        for slot in 0..=RUNQ_LAYOUT.overflow_slot() {
            assert!(
                all.iter().any(|&ns| expected_slot(NATIVE, ns) == slot),
                "no value in slot {slot}"
            );
        }
        for slot in 0..=12 {
            assert!(all.iter().any(|&ns| expected_slot(CHAIN, ns) == slot));
        }
    }
}
