//! `throttle` collector: CFS throttle episodes per pod and container, from the throttle probes
//! (`ebpf/src/throttle.rs`): pause length, how far into the period the quota ran out, and the
//! threads runnable then.

use std::sync::Arc;

use podstat_common::throttle::{PERIOD_BOUNDS_NS, THREAD_BOUNDS};
use prometheus_client::encoding::DescriptorEncoder;

use super::{
    Collect, CollectError, Context, Unsupported,
    family::{encode_hists, join, to_prom},
};
use crate::{
    cgroup::ErrorCounts,
    identity::IdMap,
    metric::Family,
    probe::{ProbeId, Probes, throttle::ThrottleProbe},
};

/// `podstat_cpu_throttle_pause_seconds`.
/// The families this collector exports.
pub const FAMILIES: &[Family] = &[
    CPU_THROTTLE_PAUSE_SECONDS,
    CPU_QUOTA_EXHAUSTED_AFTER_SECONDS,
    CPU_THROTTLE_RUNNABLE_THREADS,
];

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
            .map(|(t, st)| (t.clone(), to_prom(&st.pause, &PERIOD_BOUNDS_NS, 1e9)))
            .collect();
        let after: Vec<_> = stats
            .iter()
            .map(|(t, st)| {
                (
                    t.clone(),
                    to_prom(&st.exhausted_after, &PERIOD_BOUNDS_NS, 1e9),
                )
            })
            .collect();
        let runnable: Vec<_> = stats
            .iter()
            .map(|(t, st)| {
                (
                    t.clone(),
                    to_prom(&st.runnable_threads, &THREAD_BOUNDS, 1.0),
                )
            })
            .collect();
        encode_hists(enc, &CPU_THROTTLE_PAUSE_SECONDS, &pause)?;
        encode_hists(enc, &CPU_QUOTA_EXHAUSTED_AFTER_SECONDS, &after)?;
        encode_hists(enc, &CPU_THROTTLE_RUNNABLE_THREADS, &runnable)?;
        Ok(())
    }
}
