//! `sched` collector: what the scheduler probe (`ebpf/src/sched.rs`) aggregated in the kernel.

use std::sync::Arc;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
};

use super::{Collect, CollectError, Context, Unsupported};
use crate::{cgroup::ErrorCounts, probe::Probes};

#[derive(Debug)]
pub struct SchedCollector {
    probes: Arc<Probes>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabel {
    cpu: u32,
}

impl SchedCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        match ctx
            .probes
            .status()
            .iter()
            .find(|(p, _)| *p == "sched_switch")
        {
            Some((_, crate::probe::Status::Attached)) => Ok(Box::new(Self {
                probes: Arc::clone(ctx.probes),
            })),
            Some((_, crate::probe::Status::Failed(why))) => {
                Err(Unsupported(format!("sched_switch probe: {why}")))
            }
            _ => Err(Unsupported("sched_switch probe not loaded".into())),
        }
    }
}

impl Collect for SchedCollector {
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        _errors: &mut ErrorCounts,
    ) -> Result<(), CollectError> {
        let per_cpu = self
            .probes
            .context_switches()
            .ok_or_else(|| CollectError::Source("reading the sched_switch map failed".into()))?;
        let mut m = enc.encode_descriptor(
            "podstat_node_context_switches",
            "Context switches on this CPU (tp_btf/sched_switch), counted in the kernel since the probe attached.",
            None,
            MetricType::Counter,
        )?;
        for (cpu, n) in (0u32..).zip(per_cpu) {
            ConstCounter::new(n).encode(m.encode_family(&CpuLabel { cpu })?)?;
        }
        Ok(())
    }
}
