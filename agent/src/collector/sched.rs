//! `sched` collector: what the scheduler probe (`ebpf/src/sched.rs`) aggregated in the kernel:
//! run-queue latency, whose work it was spent waiting behind, and preemptions per pod and
//! container; context switches per CPU.

use std::{collections::HashMap, sync::Arc};

use podstat_common::sched::{
    BY_OTHER_POD, BY_SAME_POD, BY_SYSTEM, PreemptPair, RUNQ_LAYOUT, SWITCH_COUNT_MAP, SchedStats,
};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::counter::ConstCounter,
};

use super::{
    Collect, CollectError, Context, Unsupported,
    family::{Classic, PromHist, encode_hists, join, to_prom},
};
use crate::{
    cgroup::ErrorCounts,
    identity::{IdMap, Target},
    metric::Family,
    probe::{ProbeId, Probes, sched::SchedProbe},
};

/// `podstat_node_context_switches_total`.
pub const NODE_CONTEXT_SWITCHES: Family = crate::counter!(
    "podstat_node_context_switches",
    "Context switches on this CPU (tp_btf/sched_switch), counted in the kernel since the probe attached."
);

/// `podstat_cpu_preemptions_total`.
pub const CPU_PREEMPTIONS: Family = crate::counter!(
    "podstat_cpu_preemptions",
    "Involuntary switch-outs of the container's tasks while still runnable, by who took the CPU: a task of the same pod, of another pod, or anything else (system)."
);

/// `podstat_cpu_preempted_by_pod_total`.
pub const CPU_PREEMPTED_BY_POD: Family = crate::counter!(
    "podstat_cpu_preempted_by_pod",
    "Involuntary switch-outs of the container's tasks while still runnable because a task of another pod took the CPU, by that pod; the 3 pods with the most per container."
);

/// `podstat_runqueue_wait_seconds_total`.
pub const RUNQUEUE_WAIT_SECONDS: Family = crate::counter!(
    "podstat_runqueue_wait_seconds",
    "Time the container's tasks waited on a run queue, by who ran on the CPU just before the waiting task got it: a task of the same pod, of another pod, or anything else (system). Adds up to podstat_runqueue_latency_seconds_sum."
);

/// `podstat_runqueue_wait_by_pod_seconds_total`.
pub const RUNQUEUE_WAIT_BY_POD_SECONDS: Family = crate::counter!(
    "podstat_runqueue_wait_by_pod_seconds",
    "Time the container's tasks waited on a run queue before getting the CPU from a task of another pod, by that pod; the 3 pods with the most per container."
);

/// The families this collector exports.
pub const FAMILIES: &[Family] = &[
    NODE_CONTEXT_SWITCHES,
    RUNQUEUE_LATENCY_SECONDS,
    RUNQUEUE_WAIT_SECONDS,
    RUNQUEUE_WAIT_BY_POD_SECONDS,
    CPU_PREEMPTIONS,
    CPU_PREEMPTED_BY_POD,
];

/// `podstat_runqueue_latency_seconds`.
pub const RUNQUEUE_LATENCY_SECONDS: Family = crate::histogram!(
    "podstat_runqueue_latency_seconds",
    "Time the container's tasks waited on a run queue: from wakeup, or from an involuntary switch-out while runnable, to the next switch-in (eBPF sched_switch reading the kernel's sched_info, or sched_wakeup/sched_switch)."
);

/// The `by` label of the preemption and waiting-time families, and its slot in the kernel's
/// arrays.
const BY: [(&str, usize); 3] = [
    ("same_pod", BY_SAME_POD),
    ("other_pod", BY_OTHER_POD),
    ("system", BY_SYSTEM),
];

/// Kernel nanoseconds as exported seconds.
#[expect(
    clippy::cast_precision_loss,
    reason = "a counter of ns; f64 keeps 2^53 ns exactly"
)]
fn ns_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}
/// Classic buckets of `podstat_runqueue_latency_seconds` (text formats, and protobuf with
/// `--web.histograms=classic|both`): 2^-12 s (244 µs), 2^-8 s (3.9 ms), 2^-4 s (62.5 ms) and
/// 1 s, every one an edge of the kernel's buckets (four, to keep the series budget).
pub const RUNQ_CLASSIC: Classic = Classic(&[-48, -32, -16, 0]);

#[derive(Debug)]
pub struct SchedCollector {
    probes: Arc<Probes>,
    identity: Arc<IdMap>,
    preempted_by_pod: bool,
}

/// Options of the sched collector.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "SchedOptions")]
pub struct Options {
    /// Also export `podstat_cpu_preempted_by_pod_total`: the 3 pods whose tasks preempted each
    /// container's most often. Off by default to keep the series budget per container (README,
    /// "Series budget"): `podstat_runqueue_wait_by_pod_seconds_total` names the pods a container
    /// waited behind, which is what `explain`, `top`, the alerts and the dashboard use.
    #[arg(long = "collector.sched.preempted-by-pod")]
    pub preempted_by_pod: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabel {
    cpu: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: &'static str,
}

/// The pod that took the CPU, in `podstat_cpu_preempted_by_pod_total`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PreemptorLabel {
    pub preemptor_namespace: String,
    pub preemptor_pod: String,
    pub preemptor_pod_uid: String,
}

/// Preemptor pods exported per victim cgroup: the ones with the most preemptions (or the most
/// waiting time behind them). Bounds the families at this many series per pod or container,
/// whatever the node runs.
pub const TOP_PREEMPTORS: usize = 3;

/// Adds up the kernel's (victim cgroup, preemptor cgroup) counts per victim and preemptor pod
/// (a pod's containers and its pod cgroup are one preemptor), keeps the [`TOP_PREEMPTORS`]
/// largest per victim, and labels them. Pairs with a cgroup the identity does not know are
/// dropped. Rows come out sorted by victim, then by count, largest first. The same for the
/// waiting time behind other pods (`WAIT_PAIRS`, ns).
pub fn preemptor_rows(
    identity: &IdMap,
    pairs: impl IntoIterator<Item = (PreemptPair, u64)>,
) -> Vec<(Target, PreemptorLabel, u64)> {
    let mut per_victim: HashMap<u64, HashMap<String, (PreemptorLabel, u64)>> = HashMap::new();
    for (pair, n) in pairs {
        let Some(by) = identity.get(pair.preemptor) else {
            continue;
        };
        let entry = per_victim
            .entry(pair.victim)
            .or_default()
            .entry(by.pod_uid.clone())
            .or_insert_with(|| {
                (
                    PreemptorLabel {
                        preemptor_namespace: by.namespace.clone(),
                        preemptor_pod: by.pod.clone(),
                        preemptor_pod_uid: by.pod_uid.clone(),
                    },
                    0,
                )
            });
        entry.1 += n;
    }
    let mut rows = Vec::new();
    for (victim, preemptors) in join(identity, per_victim) {
        let mut top: Vec<(PreemptorLabel, u64)> = preemptors.into_values().collect();
        top.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.preemptor_pod_uid.cmp(&b.0.preemptor_pod_uid))
        });
        top.truncate(TOP_PREEMPTORS);
        rows.extend(top.into_iter().map(|(l, n)| (victim.clone(), l, n)));
    }
    rows
}

impl SchedCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        super::require_probes(ctx, &[ProbeId::SchedSwitch])?;
        Ok(Box::new(Self {
            probes: Arc::clone(ctx.probes),
            identity: Arc::clone(ctx.identity),
            preempted_by_pod: ctx.sched.preempted_by_pod,
        }))
    }
}

impl Collect for SchedCollector {
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        _errors: &mut ErrorCounts,
    ) -> Result<(), CollectError> {
        let (Some(sched), Some(shared)) = (self.probes.unit::<SchedProbe>(), self.probes.shared())
        else {
            return Err(CollectError::NoMaps);
        };
        let (per_cpu, pairs) = {
            let Some(maps) = sched.maps() else {
                return Err(CollectError::NoMaps);
            };
            let per_cpu = maps
                .switches
                .get(&0, 0)
                .map_err(|source| CollectError::Map {
                    map: SWITCH_COUNT_MAP,
                    source,
                })?;
            let pairs: Vec<(PreemptPair, u64)> =
                maps.preempt_pairs.iter().filter_map(Result::ok).collect();
            let waits: Vec<(PreemptPair, u64)> =
                maps.wait_pairs.iter().filter_map(Result::ok).collect();
            (per_cpu, (pairs, waits))
        };
        let (pairs, waits) = pairs;
        let stats = join(
            &self.identity,
            // A cgroup's stats live in its KNOWN entry; one without a wait or a preemption
            // yet (a pod-level cgroup with no tasks of its own) has no series.
            shared
                .known()
                .into_iter()
                .map(|(id, k)| (id, k.sched))
                .filter(|(_, s)| *s != SchedStats::default()),
        );
        let runq: Vec<(Target, PromHist)> = stats
            .iter()
            .map(|(t, s)| {
                (
                    t.clone(),
                    to_prom(&s.runq_with_sum(), &RUNQ_LAYOUT, RUNQ_CLASSIC, 1e9),
                )
            })
            .collect();
        let wait_by: Vec<(Target, [u64; 3])> =
            stats.iter().map(|(t, s)| (t.clone(), s.wait_by)).collect();
        let preempt: Vec<(Target, [u64; 3])> = stats
            .into_iter()
            .map(|(t, s)| (t, s.preempted_by))
            .collect();

        let mut m = NODE_CONTEXT_SWITCHES.encode(enc)?;
        for (cpu, n) in (0u32..).zip(per_cpu.iter()) {
            ConstCounter::new(*n).encode(m.encode_family(&CpuLabel { cpu })?)?;
        }
        encode_hists(enc, &RUNQUEUE_LATENCY_SECONDS, &runq)?;
        if !wait_by.is_empty() {
            let mut m = RUNQUEUE_WAIT_SECONDS.encode(enc)?;
            for (target, by) in &wait_by {
                for (label, idx) in BY {
                    ConstCounter::new(ns_to_seconds(by[idx]))
                        .encode(m.encode_family(&(target.clone(), ByLabel { by: label }))?)?;
                }
            }
        }
        let wait_by_pod = preemptor_rows(&self.identity, waits);
        if !wait_by_pod.is_empty() {
            let mut m = RUNQUEUE_WAIT_BY_POD_SECONDS.encode(enc)?;
            for (victim, by, ns) in &wait_by_pod {
                ConstCounter::new(ns_to_seconds(*ns))
                    .encode(m.encode_family(&(victim.clone(), by.clone()))?)?;
            }
        }
        if !preempt.is_empty() {
            let mut m = CPU_PREEMPTIONS.encode(enc)?;
            for (target, by) in &preempt {
                for (label, idx) in BY {
                    ConstCounter::new(by[idx])
                        .encode(m.encode_family(&(target.clone(), ByLabel { by: label }))?)?;
                }
            }
        }
        let by_pod = if self.preempted_by_pod {
            preemptor_rows(&self.identity, pairs)
        } else {
            Vec::new()
        };
        if !by_pod.is_empty() {
            let mut m = CPU_PREEMPTED_BY_POD.encode(enc)?;
            for (victim, by, n) in &by_pod {
                ConstCounter::new(*n).encode(m.encode_family(&(victim.clone(), by.clone()))?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn join_labels_known_ids_and_drops_the_rest() {
        let identity = IdMap::default();
        let target = |uid: &str, cid: &str| Target {
            pod_uid: uid.into(),
            container_id: cid.into(),
            qos: "burstable",
            ..Target::default()
        };
        identity.replace(HashMap::from([
            (7, target("b", "c2")),
            (3, target("a", "c1")),
            (9, target("b", "c1")),
        ]));
        let rows = join(&identity, [(9, 'x'), (42, 'g'), (3, 'y'), (7, 'z')]);
        let got: Vec<(&str, &str, char)> = rows
            .iter()
            .map(|(t, v)| (t.pod_uid.as_str(), t.container_id.as_str(), *v))
            .collect();
        assert_eq!(
            got,
            vec![("a", "c1", 'y'), ("b", "c1", 'x'), ("b", "c2", 'z')]
        );
    }

    #[test]
    fn preemptors_add_up_per_pod_and_keep_the_top_ones() {
        let identity = IdMap::default();
        let target = |uid: &str, cid: &str, pod: &str| Target {
            pod_uid: uid.into(),
            container_id: cid.into(),
            pod: pod.into(),
            namespace: "ns".into(),
            qos: "burstable",
            ..Target::default()
        };
        identity.replace(HashMap::from([
            (1, target("victim", "c", "v")),
            (2, target("hog", "", "hog")),
            (3, target("hog", "c1", "hog")),
            (4, target("p4", "c", "p4")),
            (5, target("p5", "c", "p5")),
            (6, target("p6", "c", "p6")),
        ]));
        let pair = |victim, preemptor| PreemptPair { victim, preemptor };
        let rows = preemptor_rows(
            &identity,
            [
                (pair(1, 2), 5),
                (pair(1, 3), 10),
                (pair(1, 4), 1),
                (pair(1, 5), 7),
                (pair(1, 6), 2),
                (pair(1, 99), 100), // preemptor gone
                (pair(98, 2), 100), // victim gone
            ],
        );
        let got: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|(v, by, n)| (v.pod_uid.as_str(), by.preemptor_pod.as_str(), *n))
            .collect();
        assert_eq!(
            got,
            vec![
                ("victim", "hog", 15),
                ("victim", "p5", 7),
                ("victim", "p6", 2)
            ]
        );
    }

    #[test]
    fn waits_behind_pods_keep_the_three_longest_in_seconds() {
        let identity = IdMap::default();
        let target = |uid: &str, cid: &str| Target {
            pod_uid: uid.into(),
            container_id: cid.into(),
            pod: uid.into(),
            namespace: "ns".into(),
            qos: "burstable",
            ..Target::default()
        };
        identity.replace(HashMap::from([
            (1, target("victim", "c")),
            (2, target("hog", "c1")),
            (3, target("hog", "c2")),
            (4, target("a", "c")),
            (5, target("b", "c")),
            (6, target("z", "c")),
        ]));
        let pair = |victim, preemptor| PreemptPair { victim, preemptor };
        // ns waited behind each holder cgroup; hog's two containers are one pod; a and z tie.
        let rows = preemptor_rows(
            &identity,
            [
                (pair(1, 2), 1_500_000_000),
                (pair(1, 3), 500_000_000),
                (pair(1, 4), 250_000_000),
                (pair(1, 5), 1_000),
                (pair(1, 6), 250_000_000),
            ],
        );
        let got: Vec<(&str, f64)> = rows
            .iter()
            .map(|(_, by, ns)| (by.preemptor_pod.as_str(), ns_to_seconds(*ns)))
            .collect();
        assert_eq!(got, vec![("hog", 2.0), ("a", 0.25), ("z", 0.25)]);
    }

    #[test]
    fn runq_classic_edges_are_kernel_edges() {
        let l = RUNQ_LAYOUT;
        let edges: Vec<i32> = (1..=l.buckets()).map(|s| l.native_index(s)).collect();
        for e in RUNQ_CLASSIC.0 {
            assert!(edges.contains(e), "{e} is not a kernel edge");
        }
        assert!(RUNQ_CLASSIC.0.windows(2).all(|w| w[0] < w[1]));
        // The run-queue alert's threshold (50 ms) lies below the top classic edge.
        assert!(Classic::bound(*RUNQ_CLASSIC.0.last().expect("edges")) > 0.05);
    }
}
