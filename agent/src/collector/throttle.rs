//! `throttle` collector: CFS throttle episodes per pod and container, from the throttle probes
//! (`ebpf/src/throttle.rs`): pause length, how far into the period the quota ran out, and the
//! threads runnable then, and the CPU time the quota kept from the cgroup.

use std::sync::Arc;

use podstat_common::throttle::{PERIOD_LAYOUT, THREAD_LAYOUT};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::counter::ConstCounter,
};

use super::{
    Collect, CollectError, Context, Unsupported,
    family::{Classic, encode_hists, join, to_prom},
};
use crate::{
    cgroup::ErrorCounts,
    identity::IdMap,
    metric::Family,
    probe::{ProbeId, Probes, throttle::ThrottleProbe},
};

/// The families this collector exports.
pub const FAMILIES: &[Family] = &[
    CPU_THROTTLE_PAUSE_SECONDS,
    CPU_QUOTA_EXHAUSTED_AFTER_SECONDS,
    CPU_THROTTLE_RUNNABLE_THREADS,
    CPU_THROTTLE_DEFICIT_SECONDS,
];

/// `podstat_cpu_throttle_pause_seconds`.
pub const CPU_THROTTLE_PAUSE_SECONDS: Family = crate::histogram!(
    "podstat_cpu_throttle_pause_seconds",
    "Wall-clock length of each CFS throttle episode of the cgroup, from the first of its run queues throttling to the last unthrottling; once per episode, not per CPU (eBPF throttle_cfs_rq/unthrottle_cfs_rq)."
);

/// `podstat_cpu_quota_exhausted_after_seconds`.
pub const CPU_QUOTA_EXHAUSTED_AFTER_SECONDS: Family = crate::histogram!(
    "podstat_cpu_quota_exhausted_after_seconds",
    "How far into the CFS period the cgroup's quota ran out (time from the period's start to the episode's first throttle)."
);

/// `podstat_cpu_throttle_runnable_threads`.
pub const CPU_THROTTLE_RUNNABLE_THREADS: Family = crate::histogram!(
    "podstat_cpu_throttle_runnable_threads",
    "Threads of the cgroup that were running or runnable when its quota ran out (sum over the run queues that throttled in the episode)."
);

/// `podstat_cpu_throttle_deficit_seconds`.
pub const CPU_THROTTLE_DEFICIT_SECONDS: Family = crate::counter!(
    "podstat_cpu_throttle_deficit_seconds",
    "Estimated CPU time the cgroup would have used during its CFS throttle episodes without its quota, summed over the episodes: each episode's wall-clock pause times the threads runnable when the quota ran out, at most one per online CPU; an upper bound, since a thread may have finished its work before the pause ended (CPU-seconds)."
);

/// Classic buckets of the pause and quota-exhausted-after histograms: 2^-7 s (7.8 ms), 2^-5 s
/// (31.25 ms) and 2^-3 s (125 ms, above the default 100 ms period); three, to keep the series
/// budget.
pub const PERIOD_CLASSIC: Classic = Classic(&[-28, -20, -12]);

/// Classic buckets of the runnable-threads histogram: 2 and 8 threads.
pub const THREAD_CLASSIC: Classic = Classic(&[4, 12]);

#[derive(Debug)]
pub struct ThrottleCollector {
    probes: Arc<Probes>,
    identity: Arc<IdMap>,
}

impl ThrottleCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        super::require_probes(ctx, &[ProbeId::CfsThrottle, ProbeId::CfsUnthrottle])?;
        Ok(Box::new(Self {
            probes: Arc::clone(ctx.probes),
            identity: Arc::clone(ctx.identity),
        }))
    }
}

impl Collect for ThrottleCollector {
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        _errors: &mut ErrorCounts,
    ) -> Result<(), CollectError> {
        let Some(map) = self
            .probes
            .unit::<ThrottleProbe>()
            .and_then(ThrottleProbe::stats)
        else {
            return Err(CollectError::NoMaps);
        };
        let stats = join(&self.identity, map.iter().filter_map(Result::ok));
        drop(map);
        let pause: Vec<_> = stats
            .iter()
            .map(|(t, st)| {
                (
                    t.clone(),
                    to_prom(&st.pause, &PERIOD_LAYOUT, PERIOD_CLASSIC, 1e9),
                )
            })
            .collect();
        let after: Vec<_> = stats
            .iter()
            .map(|(t, st)| {
                (
                    t.clone(),
                    to_prom(&st.exhausted_after, &PERIOD_LAYOUT, PERIOD_CLASSIC, 1e9),
                )
            })
            .collect();
        let runnable: Vec<_> = stats
            .iter()
            .map(|(t, st)| {
                (
                    t.clone(),
                    to_prom(&st.runnable_threads, &THREAD_LAYOUT, THREAD_CLASSIC, 1.0),
                )
            })
            .collect();
        encode_hists(enc, &CPU_THROTTLE_PAUSE_SECONDS, &pause)?;
        encode_hists(enc, &CPU_QUOTA_EXHAUSTED_AFTER_SECONDS, &after)?;
        encode_hists(enc, &CPU_THROTTLE_RUNNABLE_THREADS, &runnable)?;
        if !stats.is_empty() {
            let mut m = CPU_THROTTLE_DEFICIT_SECONDS.encode(enc)?;
            for (t, st) in &stats {
                // CPU-ns to CPU-seconds; exact below 2^53 ns (104 days of CPU).
                #[expect(clippy::cast_precision_loss, reason = "see above")]
                let secs = st.deficit_ns as f64 / 1e9;
                ConstCounter::new(secs).encode(m.encode_family(t)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use podstat_common::kernel::Layout;

    use super::*;

    #[test]
    fn classic_edges_are_kernel_edges() {
        let check = |l: &Layout, c: Classic| {
            let edges: Vec<i32> = (1..=l.buckets()).map(|s| l.native_index(s)).collect();
            for e in c.0 {
                assert!(edges.contains(e), "{e} is not a kernel edge of {l:?}");
            }
            assert!(c.0.windows(2).all(|w| w[0] < w[1]));
        };
        check(&PERIOD_LAYOUT, PERIOD_CLASSIC);
        check(&THREAD_LAYOUT, THREAD_CLASSIC);
        assert!((Classic::bound(THREAD_CLASSIC.0[0]) - 2.0).abs() < f64::EPSILON);
        assert!((Classic::bound(PERIOD_CLASSIC.0[1]) - 0.031_25).abs() < f64::EPSILON);
    }
}
