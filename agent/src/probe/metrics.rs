//! The probes' self-metrics, for every probe whichever collectors run:
//! `podstat_probe_attached{probe, via}` and `podstat_bpf_map_full_total{map}`; with the steering
//! read program duty-cycled, its windows and their attached time.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{ProbeId, Probes, Status, net::NetProbe};
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

/// `podstat_probe_net_reader_windows_total`.
pub const NET_READER_WINDOWS: Family = crate::counter!(
    "podstat_probe_net_reader_windows",
    "Windows of the duty-cycled steering read program (--probe.net.duty-cycle) that closed: the steering locality counts are exported as of the last one. About 1 per EVERY; fewer when the switching thread is delayed or attaching fails.",
);
/// `podstat_probe_net_reader_attached_seconds_total`.
pub const NET_READER_ATTACHED: Family = crate::counter!(
    "podstat_probe_net_reader_attached_seconds",
    "Time the duty-cycled steering read program was attached in the windows that closed, as the switching thread timed it: its rate is the fraction of the time reads were examined (ON/EVERY, 0.125 by default, on schedule); each window's counts are extrapolated by the time it stands for over its own attached time.",
);

/// The probes' self-metrics.
pub const FAMILIES: &[Family] = &[
    PROBE_ATTACHED,
    BPF_MAP_FULL,
    NET_READER_WINDOWS,
    NET_READER_ATTACHED,
];

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

/// Encodes `podstat_probe_attached` for every requested probe that has to attach,
/// `podstat_bpf_map_full_total` for every map of every probe (and `known`) whenever the object
/// loaded, and the read program's windows when it is duty-cycled.
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
    let windows = probes
        .unit::<NetProbe>()
        .filter(|_| probes.net_duty().is_some())
        .and_then(NetProbe::extrapolated)
        .map(|e| e.windows());
    if let Some((n, attached)) = windows {
        ConstCounter::new(n).encode(NET_READER_WINDOWS.encode(enc)?)?;
        ConstCounter::new(attached.as_secs_f64()).encode(NET_READER_ATTACHED.encode(enc)?)?;
    }
    Ok(())
}
