//! The probes' self-metrics, for every probe whichever collectors run:
//! `podstat_probe_attached{probe, via}` and `podstat_bpf_map_full_total{map}`.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{ProbeId, Probes, Status};
use crate::metric::Family;

/// `podstat_probe_attached`.
pub const PROBE_ATTACHED: Family = crate::gauge!(
    "podstat_probe_attached",
    "1 if the eBPF probe is loaded and attached, 0 if it failed (the log and `podstat check` say why), or for net_reader if the duty cycle's last re-attach failed; `via` is how it attached (for sched_switch, `tp_btf (sched_info)` when run-queue latency comes from the kernel's sched_info).",
);
/// `podstat_bpf_map_full_total`.
pub const BPF_MAP_FULL: Family = crate::counter!(
    "podstat_bpf_map_full",
    "Inserts into an eBPF map that failed because it was full: those events were not measured. Raise --probe.max-cgroups or --probe.max-waiting.",
);

/// The probes' self-metrics.
pub const FAMILIES: &[Family] = &[PROBE_ATTACHED, BPF_MAP_FULL];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabel {
    probe: &'static str,
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: &'static str,
}

/// The probes' self-metrics collector, registered once whatever the collectors.
#[derive(Debug)]
pub struct ProbeMetrics(pub Arc<Probes>);

impl Collector for ProbeMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode(&self.0, &mut enc)
    }
}

/// Encodes both families: `podstat_probe_attached` for every requested probe that has to
/// attach, and `podstat_bpf_map_full_total` for every map of every probe (and `known`)
/// whenever the object loaded.
pub fn encode(probes: &Probes, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let reported: Vec<(&'static str, i64, &'static str)> = probes
        .status()
        .iter()
        .filter_map(|(probe, status)| match status {
            // The duty cycle could not re-attach the steering reader: detached for now.
            Status::Attached(how) if *probe == ProbeId::NetReader && probes.reader_lost() => {
                Some((probe.name(), 0, *how))
            }
            Status::Attached(how) => Some((probe.name(), 1, *how)),
            Status::Failed(_) => Some((probe.name(), 0, "")),
            // Nothing on the host for it to watch (no aRFS driver, as on most NICs) is no
            // failure: a 0 would fire PodstatProbeDetached on every such node.
            Status::Absent(_) | Status::Disabled | Status::NotNeeded(_) => None,
        })
        .collect();
    if !reported.is_empty() {
        let mut m = PROBE_ATTACHED.encode(enc)?;
        for (probe, v, via) in reported {
            ConstGauge::new(v).encode(m.encode_family(&ProbeLabel { probe, via })?)?;
        }
    }
    let overflows = probes.overflows();
    if !overflows.is_empty() {
        let mut m = BPF_MAP_FULL.encode(enc)?;
        for (map, n) in overflows {
            ConstCounter::new(n).encode(m.encode_family(&MapLabel { map })?)?;
        }
    }
    Ok(())
}
