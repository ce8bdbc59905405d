//! The snapshot model both operator views render from.
//!
//! A [`Snapshot`] is built from exposition samples (whatever produced them: the in-process
//! registry or a remote agent's /metrics), one [`Cgroup`] per pod or container cgroup, keyed by
//! pod uid and container id. Two snapshots are diffed into [`Row`]s: counters and histograms
//! over the interval, gauges from the later one. Families that are absent stay `None`, and
//! the views print "–" or "no data" for them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::expo::Sample;
use crate::{
    collector::{cgroup, net, net::steering, sched, throttle},
    probe::metrics::PROBE_ATTACHED,
};

// The exposed names this model reads, from the families' declarations.
const PROBE: &str = PROBE_ATTACHED.exposed;
const SCHED_EXT: &str = cgroup::NODE_SCHED_EXT.exposed;
const USAGE: &str = cgroup::CPU_USAGE_SECONDS.exposed;
const PERIODS: &str = cgroup::CPU_PERIODS.exposed;
const THROTTLED_PERIODS: &str = cgroup::CPU_THROTTLED_PERIODS.exposed;
const THROTTLED_SECONDS: &str = cgroup::CPU_THROTTLED_SECONDS.exposed;
const LIMIT_CORES: &str = cgroup::CPU_LIMIT_CORES.exposed;
const PERIOD_SECONDS: &str = cgroup::CPU_PERIOD_SECONDS.exposed;
const BURST_LIMIT_SECONDS: &str = cgroup::CPU_BURST_LIMIT_SECONDS.exposed;
const THROTTLED_LOCAL_SECONDS: &str = cgroup::CPU_THROTTLED_LOCAL_SECONDS.exposed;
const DEFICIT: &str = throttle::CPU_THROTTLE_DEFICIT_SECONDS.exposed;
const PREEMPTIONS: &str = sched::CPU_PREEMPTIONS.exposed;
const PREEMPTED_BY_POD: &str = sched::CPU_PREEMPTED_BY_POD.exposed;
const WAITED: &str = sched::RUNQUEUE_WAIT_SECONDS.exposed;
const WAITED_BY_POD: &str = sched::RUNQUEUE_WAIT_BY_POD_SECONDS.exposed;
const STEERING: &str = steering::NET_RX_STEERING_PACKETS.exposed;
const MIGRATIONS: &str = steering::NET_FLOW_MIGRATIONS.exposed;
const RPS_CPUS: &str = net::NET_RPS_CPUS.exposed;
const ARFS_ENABLED: &str = net::NET_ARFS_ENABLED.exposed;

/// A histogram from the exposition: (upper bound, cumulative count) sorted by bound, sum, count.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Hist {
    /// The cumulative count at `le`: that of the largest bucket at or below it (0 below all).
    /// Exact for the sparse buckets of a native histogram, which leave out only empty ones.
    pub fn cumulative_at(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .take_while(|(b, _)| *b <= le)
            .last()
            .map_or(0.0, |(_, n)| *n)
    }

    /// The bounds of `self` and `other` together, sorted, each once.
    fn bounds_with(&self, other: &Self) -> Vec<f64> {
        let mut b: Vec<f64> = self
            .buckets
            .iter()
            .chain(&other.buckets)
            .map(|(le, _)| *le)
            .collect();
        b.sort_by(f64::total_cmp);
        b.dedup_by(|x, y| x.total_cmp(y).is_eq());
        b
    }

    /// `self - earlier`, at the bounds of both (a native histogram's populated buckets grow
    /// between scrapes); a histogram that restarted counts from zero.
    #[must_use]
    pub fn minus(&self, earlier: &Self) -> Self {
        if earlier.count > self.count {
            return self.clone();
        }
        Self {
            buckets: self
                .bounds_with(earlier)
                .into_iter()
                .map(|le| {
                    (
                        le,
                        (self.cumulative_at(le) - earlier.cumulative_at(le)).max(0.0),
                    )
                })
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
            count: self.count - earlier.count,
        }
    }

    /// Adds `other` into `self`, at the bounds of both.
    pub fn add(&mut self, other: &Self) {
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
        } else {
            self.buckets = self
                .bounds_with(other)
                .into_iter()
                .map(|le| (le, self.cumulative_at(le) + other.cumulative_at(le)))
                .collect();
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The q-quantile, interpolated within its bucket as Prometheus's `histogram_quantile`
    /// does (the +Inf bucket answers with the highest finite bound). `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let (mut prev_le, mut prev_n) = (0.0, 0.0);
        for (le, n) in &self.buckets {
            if *n >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let in_bucket = n - prev_n;
                return Some(if in_bucket <= 0.0 {
                    *le
                } else {
                    prev_le + (le - prev_le) * (rank - prev_n) / in_bucket
                });
            }
            prev_le = *le;
            prev_n = *n;
        }
        Some(prev_le)
    }

    /// The mean observation, `None` without samples.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// Identifies a pod (`container_id` empty) or container cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub pod_uid: String,
    pub container_id: String,
}

/// Names from the metadata provider (empty without one) and the QoS class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Names {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub qos: String,
}

/// A pod that took the CPU from this cgroup's tasks (`count`: preemptions), or that this
/// cgroup's tasks waited behind (`count`: seconds waited).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Preemptor {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub count: f64,
}

/// Who took the CPU: indexes of [`Cgroup::preempted`].
pub const SAME_POD: usize = 0;
pub const OTHER_POD: usize = 1;
pub const SYSTEM: usize = 2;

/// Steering localities, in the order of [`Cgroup::steering`].
pub const LOCALITIES: [&str; 4] = ["same_cpu", "same_llc", "same_node", "remote_node"];

/// One pod or container cgroup's values at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cgroup {
    pub names: Names,
    pub usage_seconds: Option<f64>,
    pub periods: Option<f64>,
    pub throttled_periods: Option<f64>,
    pub throttled_seconds: Option<f64>,
    pub limit_cores: Option<f64>,
    pub period_seconds: Option<f64>,
    /// `cpu.max.burst` (v1 `cpu.cfs_burst_us`), present where the kernel supports bursts.
    pub burst_limit_seconds: Option<f64>,
    /// cpu.stat.local `throttled_usec`: time this cgroup's own tasks were throttled by an
    /// ancestor's quota or its own (cgroup v2, Linux 6.8+).
    pub throttled_local_seconds: Option<f64>,
    /// Preemptions by the same pod, other pods, the system.
    pub preempted: Option<[f64; 3]>,
    /// By preemptor pod uid.
    pub preempted_by_pod: BTreeMap<String, Preemptor>,
    /// Run-queue waiting seconds by who held the CPU: same pod, other pods, the system.
    pub waited: Option<[f64; 3]>,
    /// Seconds waited behind another pod, by its uid.
    pub waited_by_pod: BTreeMap<String, Preemptor>,
    pub runq: Option<Hist>,
    pub pause: Option<Hist>,
    pub exhausted_after: Option<Hist>,
    pub runnable: Option<Hist>,
    /// The throttle episodes' summed deficit, CPU-seconds.
    pub deficit_seconds: Option<f64>,
    /// Received packets by locality, in [`LOCALITIES`] order.
    pub steering: Option<[f64; 4]>,
    pub flow_migrations: Option<f64>,
}

/// A network device's receive steering setup.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Device {
    /// Receive queues seen in `podstat_net_rps_cpus`.
    pub queues: u32,
    /// Of those, queues that steer to at least one CPU (RPS on).
    pub rps_queues: u32,
    /// aRFS (ntuple filters with rps_flow_cnt) on, if known.
    pub arfs: Option<bool>,
}

/// Everything the views need from one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub cgroups: BTreeMap<Key, Cgroup>,
    pub devices: BTreeMap<String, Device>,
    /// `podstat_probe_attached{probe}`.
    pub probes: BTreeMap<String, bool>,
    /// `podstat_node_sched_ext_info`: (state, scheduler), on kernels with sched_ext.
    pub sched_ext: Option<(String, String)>,
}

/// The histogram families, and which field of [`Cgroup`] each fills.
const HISTS: [&str; 4] = [
    sched::RUNQUEUE_LATENCY_SECONDS.exposed,
    throttle::CPU_THROTTLE_PAUSE_SECONDS.exposed,
    throttle::CPU_QUOTA_EXHAUSTED_AFTER_SECONDS.exposed,
    throttle::CPU_THROTTLE_RUNNABLE_THREADS.exposed,
];

fn hist_slot(c: &mut Cgroup, family: usize) -> &mut Option<Hist> {
    match family {
        0 => &mut c.runq,
        1 => &mut c.pause,
        2 => &mut c.exhausted_after,
        _ => &mut c.runnable,
    }
}

impl Snapshot {
    /// Builds the model from exposition samples. Series without a `pod_uid` (node series,
    /// non-pod cgroups) only feed the node parts.
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut snap = Self::default();
        for s in samples {
            if !s.value.is_finite() {
                continue;
            }
            match s.name.as_str() {
                RPS_CPUS => {
                    let d = snap
                        .devices
                        .entry(s.label("device").to_owned())
                        .or_default();
                    d.queues += 1;
                    if s.value > 0.0 {
                        d.rps_queues += 1;
                    }
                    continue;
                }
                ARFS_ENABLED => {
                    let d = snap
                        .devices
                        .entry(s.label("device").to_owned())
                        .or_default();
                    d.arfs = Some(s.value > 0.0);
                    continue;
                }
                SCHED_EXT => {
                    snap.sched_ext =
                        Some((s.label("state").to_owned(), s.label("scheduler").to_owned()));
                    continue;
                }
                PROBE => {
                    snap.probes
                        .insert(s.label("probe").to_owned(), s.value > 0.0);
                    continue;
                }
                _ => {}
            }
            let uid = s.label("pod_uid");
            if uid.is_empty() || s.labels.contains_key("cgroup") {
                continue;
            }
            let key = Key {
                pod_uid: uid.to_owned(),
                container_id: s.label("container_id").to_owned(),
            };
            let c = snap.cgroups.entry(key).or_default();
            if c.names.qos.is_empty() {
                c.names = Names {
                    namespace: s.label("namespace").to_owned(),
                    pod: s.label("pod").to_owned(),
                    container: s.label("container").to_owned(),
                    qos: s.label("qos").to_owned(),
                };
            }
            record(c, s);
        }
        for c in snap.cgroups.values_mut() {
            for family in 0..HISTS.len() {
                if let Some(h) = hist_slot(c, family) {
                    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
            }
        }
        snap
    }
}

fn record(c: &mut Cgroup, s: &Sample) {
    let v = s.value;
    match s.name.as_str() {
        USAGE => c.usage_seconds = Some(v),
        PERIODS => c.periods = Some(v),
        THROTTLED_PERIODS => c.throttled_periods = Some(v),
        THROTTLED_SECONDS => c.throttled_seconds = Some(v),
        LIMIT_CORES => c.limit_cores = Some(v),
        PERIOD_SECONDS => c.period_seconds = Some(v),
        BURST_LIMIT_SECONDS => c.burst_limit_seconds = Some(v),
        THROTTLED_LOCAL_SECONDS => c.throttled_local_seconds = Some(v),
        DEFICIT => c.deficit_seconds = Some(v),
        PREEMPTIONS => record_by(c.preempted.get_or_insert([0.0; 3]), s),
        WAITED => record_by(c.waited.get_or_insert([0.0; 3]), s),
        PREEMPTED_BY_POD => record_pod(&mut c.preempted_by_pod, s),
        WAITED_BY_POD => record_pod(&mut c.waited_by_pod, s),
        STEERING => {
            if let Some(i) = LOCALITIES.iter().position(|l| *l == s.label("locality")) {
                c.steering.get_or_insert([0.0; 4])[i] = v;
            }
        }
        MIGRATIONS => c.flow_migrations = Some(v),
        name => {
            for (family, base) in HISTS.iter().enumerate() {
                let Some(suffix) = name.strip_prefix(base) else {
                    continue;
                };
                let h = hist_slot(c, family).get_or_insert_with(Hist::default);
                match suffix {
                    "_bucket" => {
                        let le = match s.label("le") {
                            "+Inf" => f64::INFINITY,
                            le => le.parse().unwrap_or(f64::NAN),
                        };
                        if !le.is_nan() {
                            h.buckets.push((le, v));
                        }
                    }
                    "_sum" => h.sum = v,
                    "_count" => h.count = v,
                    _ => {}
                }
            }
        }
    }
}

/// A `by="same_pod|other_pod|system"` sample into its slot.
fn record_by(by: &mut [f64; 3], s: &Sample) {
    match s.label("by") {
        "same_pod" => by[SAME_POD] = s.value,
        "other_pod" => by[OTHER_POD] = s.value,
        "system" => by[SYSTEM] = s.value,
        _ => {}
    }
}

/// A `preemptor_*` sample into the map by preemptor pod uid.
fn record_pod(pods: &mut BTreeMap<String, Preemptor>, s: &Sample) {
    let uid = s.label("preemptor_pod_uid").to_owned();
    pods.insert(
        uid.clone(),
        Preemptor {
            namespace: s.label("preemptor_namespace").to_owned(),
            pod: s.label("preemptor_pod").to_owned(),
            pod_uid: uid,
            count: s.value,
        },
    );
}

/// What each pod in `later` added since `earlier`, largest first (then by uid); pods that
/// added nothing are left out.
fn delta_pods(
    later: &BTreeMap<String, Preemptor>,
    earlier: Option<&BTreeMap<String, Preemptor>>,
) -> Vec<Preemptor> {
    let mut pods: Vec<Preemptor> = later
        .values()
        .map(|p| {
            let before = earlier.and_then(|e| e.get(&p.pod_uid)).map(|b| b.count);
            Preemptor {
                count: delta(Some(p.count), before).unwrap_or(0.0),
                ..p.clone()
            }
        })
        .filter(|p| p.count > 0.0)
        .collect();
    pods.sort_by(|a, b| {
        b.count
            .total_cmp(&a.count)
            .then_with(|| a.pod_uid.cmp(&b.pod_uid))
    });
    pods
}

/// One cgroup over an interval: rates and histograms of what happened in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub key: Key,
    pub names: Names,
    /// Length of the interval, seconds.
    pub seconds: f64,
    pub cpu_cores: Option<f64>,
    pub limit_cores: Option<f64>,
    pub period_seconds: Option<f64>,
    pub burst_limit_seconds: Option<f64>,
    pub periods: Option<f64>,
    pub throttled_periods: Option<f64>,
    /// Time this cgroup's own tasks spent throttled (cpu.stat.local), seconds.
    pub throttled_local_seconds: Option<f64>,
    /// Wall-clock time lost to throttle pauses (the pause histogram's sum), seconds.
    pub throttled_wall_seconds: Option<f64>,
    pub pause: Option<Hist>,
    pub exhausted_after: Option<Hist>,
    pub runnable: Option<Hist>,
    /// The throttle episodes' summed deficit, CPU-seconds.
    pub deficit_seconds: Option<f64>,
    pub runq: Option<Hist>,
    pub preempted: Option<[f64; 3]>,
    /// Preemptor pods, most preemptions first.
    pub preempted_by_pod: Vec<Preemptor>,
    /// Run-queue waiting seconds by who held the CPU (same pod, other pods, system).
    pub waited: Option<[f64; 3]>,
    /// Pods waited behind, most seconds first (`count` in seconds).
    pub waited_by_pod: Vec<Preemptor>,
    pub steering: Option<[f64; 4]>,
    pub flow_migrations: Option<f64>,
}

/// `later - earlier` for a counter. A series absent from `earlier` counts from zero: its
/// cgroup appeared, or its kernel entry was created (first event after the probes loaded),
/// during the interval. A counter that went down was reset and counts from zero too.
fn delta(later: Option<f64>, earlier: Option<f64>) -> Option<f64> {
    let l = later?;
    Some(match earlier {
        Some(e) if e <= l => l - e,
        _ => l,
    })
}

fn delta_arr<const N: usize>(
    later: Option<[f64; N]>,
    earlier: Option<[f64; N]>,
) -> Option<[f64; N]> {
    let l = later?;
    let mut out = [0.0; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = delta(Some(l[i]), earlier.map(|e| e[i])).unwrap_or(0.0);
    }
    Some(out)
}

fn delta_hist(later: Option<&Hist>, earlier: Option<&Hist>) -> Option<Hist> {
    let l = later?;
    Some(earlier.map_or_else(|| l.clone(), |e| l.minus(e)))
}

impl Row {
    /// What happened in `later`'s cgroup since `earlier` (`seconds` apart). What `earlier`
    /// lacks counts from zero.
    pub fn between(key: &Key, later: &Cgroup, earlier: Option<&Cgroup>, seconds: f64) -> Self {
        let e = earlier;
        let seconds = seconds.max(1e-3);
        let pause = delta_hist(later.pause.as_ref(), e.and_then(|e| e.pause.as_ref()));
        Self {
            key: key.clone(),
            names: later.names.clone(),
            seconds,
            cpu_cores: delta(later.usage_seconds, e.and_then(|e| e.usage_seconds))
                .map(|d| d / seconds),
            limit_cores: later.limit_cores,
            period_seconds: later.period_seconds,
            burst_limit_seconds: later.burst_limit_seconds,
            periods: delta(later.periods, e.and_then(|e| e.periods)),
            throttled_periods: delta(later.throttled_periods, e.and_then(|e| e.throttled_periods)),
            throttled_local_seconds: delta(
                later.throttled_local_seconds,
                e.and_then(|e| e.throttled_local_seconds),
            ),
            throttled_wall_seconds: pause.as_ref().map(|h| h.sum),
            pause,
            exhausted_after: delta_hist(
                later.exhausted_after.as_ref(),
                e.and_then(|e| e.exhausted_after.as_ref()),
            ),
            runnable: delta_hist(later.runnable.as_ref(), e.and_then(|e| e.runnable.as_ref())),
            deficit_seconds: delta(later.deficit_seconds, e.and_then(|e| e.deficit_seconds)),
            runq: delta_hist(later.runq.as_ref(), e.and_then(|e| e.runq.as_ref())),
            preempted: delta_arr(later.preempted, e.and_then(|e| e.preempted)),
            preempted_by_pod: delta_pods(&later.preempted_by_pod, e.map(|e| &e.preempted_by_pod)),
            waited: delta_arr(later.waited, e.and_then(|e| e.waited)),
            waited_by_pod: delta_pods(&later.waited_by_pod, e.map(|e| &e.waited_by_pod)),
            steering: delta_arr(later.steering, e.and_then(|e| e.steering)),
            flow_migrations: delta(later.flow_migrations, e.and_then(|e| e.flow_migrations)),
        }
    }

    /// Share of wall time the cgroup spent throttled (pause time over the interval).
    pub fn throttled_wall_share(&self) -> Option<f64> {
        self.throttled_wall_seconds
            .map(|s| (s / self.seconds).min(1.0))
    }

    /// Share of enforcement periods in which the cgroup was throttled.
    pub fn throttled_period_share(&self) -> Option<f64> {
        let (t, p) = (self.throttled_periods?, self.periods?);
        (p > 0.0).then(|| (t / p).min(1.0))
    }

    pub fn pause_p99(&self) -> Option<f64> {
        self.pause.as_ref()?.quantile(0.99)
    }

    pub fn exhausted_after_p50(&self) -> Option<f64> {
        self.exhausted_after.as_ref()?.quantile(0.5)
    }

    /// Threads runnable when the quota ran out, averaged over the episodes (exact: sum/count).
    pub fn runnable_at_throttle(&self) -> Option<f64> {
        self.runnable.as_ref()?.mean()
    }

    pub fn runq_p99(&self) -> Option<f64> {
        self.runq.as_ref()?.quantile(0.99)
    }

    /// Preemptions by other pods per second.
    pub fn preempted_by_others_rate(&self) -> Option<f64> {
        self.preempted.map(|p| p[OTHER_POD] / self.seconds)
    }

    /// Seconds waited behind other pods' tasks per second of the interval.
    pub fn waited_behind_others_rate(&self) -> Option<f64> {
        self.waited.map(|w| w[OTHER_POD] / self.seconds)
    }

    /// Share of the run-queue waiting time spent behind other pods' tasks.
    pub fn waited_behind_others_share(&self) -> Option<f64> {
        let w = self.waited?;
        let total: f64 = w.iter().sum();
        (total > 0.0).then(|| w[OTHER_POD] / total)
    }

    /// Share of received packets handled on the reading thread's CPU or its LLC.
    pub fn local_share(&self) -> Option<f64> {
        let s = self.steering?;
        let total: f64 = s.iter().sum();
        (total > 0.0).then(|| (s[0] + s[1]) / total)
    }

    /// `namespace/pod`, or the pod uid without a metadata provider.
    pub fn pod_name(&self) -> String {
        pod_display(&self.names.namespace, &self.names.pod, &self.key.pod_uid)
    }

    /// The container's name, else the first 12 characters of its id; `(pod)` for the pod cgroup.
    pub fn container_name(&self) -> String {
        if self.key.container_id.is_empty() {
            "(pod)".into()
        } else if self.names.container.is_empty() {
            self.key.container_id.chars().take(12).collect()
        } else {
            self.names.container.clone()
        }
    }
}

/// `namespace/pod` when names are known, else the uid.
pub fn pod_display(namespace: &str, pod: &str, uid: &str) -> String {
    match (namespace.is_empty(), pod.is_empty()) {
        (_, true) => uid.to_owned(),
        (true, false) => pod.to_owned(),
        (false, false) => format!("{namespace}/{pod}"),
    }
}

/// The rows of every cgroup in `later`, diffed against `earlier` (`seconds` apart).
pub fn rows(later: &Snapshot, earlier: &Snapshot, seconds: f64) -> Vec<Row> {
    later
        .cgroups
        .iter()
        .map(|(k, c)| Row::between(k, c, earlier.cgroups.get(k), seconds))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::expo::parse;

    const T0: &str = r#"podstat_cpu_usage_seconds_total{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable"} 10
podstat_cpu_limit_cores{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable"} 0.5
podstat_cpu_usage_seconds_total{namespace="",pod="",container="",pod_uid="",container_id="",qos="",cgroup="/system.slice"} 99
podstat_cpu_preemptions_total{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable",by="other_pod"} 5
podstat_runqueue_latency_seconds_bucket{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable",le="0.001"} 1
podstat_runqueue_latency_seconds_bucket{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable",le="+Inf"} 2
podstat_runqueue_latency_seconds_sum{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable"} 0.5
podstat_runqueue_latency_seconds_count{namespace="",pod="",container="",pod_uid="u1",container_id="c1",qos="burstable"} 2
podstat_net_rps_cpus{device="eth0",queue="0"} 2
podstat_net_rps_cpus{device="eth0",queue="1"} 0
podstat_net_arfs_enabled{device="eth0"} 0
"#;

    #[test]
    fn snapshot_and_rows() {
        let s0 = Snapshot::from_samples(&parse(T0));
        assert_eq!(s0.cgroups.len(), 1, "the non-pod cgroup is left out");
        let c = s0.cgroups.values().next().expect("one cgroup");
        assert_eq!(c.limit_cores, Some(0.5));
        assert_eq!(c.preempted, Some([0.0, 5.0, 0.0]));
        assert_eq!(c.runq.as_ref().map(|h| h.buckets.len()), Some(2));
        assert_eq!(
            s0.devices.get("eth0"),
            Some(&Device {
                queues: 2,
                rps_queues: 1,
                arfs: Some(false)
            })
        );
        let t1 = T0
            .replace("} 10\n", "} 12\n")
            .replace("by=\"other_pod\"} 5", "by=\"other_pod\"} 25")
            .replace("le=\"+Inf\"} 2", "le=\"+Inf\"} 12")
            .replace("_count{namespace=\"\",pod=\"\",container=\"\",pod_uid=\"u1\",container_id=\"c1\",qos=\"burstable\"} 2", "_count{namespace=\"\",pod=\"\",container=\"\",pod_uid=\"u1\",container_id=\"c1\",qos=\"burstable\"} 12");
        let s1 = Snapshot::from_samples(&parse(&t1));
        let r = rows(&s1, &s0, 2.0);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].cpu_cores, Some(1.0));
        assert_eq!(r[0].preempted_by_others_rate(), Some(10.0));
        assert_eq!(r[0].runq.as_ref().map(|h| h.count), Some(10.0));
        // All 10 new waits above 1 ms: the p50 is the highest finite bound.
        assert_eq!(r[0].runq_p99(), Some(0.001));
        assert_eq!(r[0].pod_name(), "u1");
        assert_eq!(r[0].container_name(), "c1");
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let h = Hist {
            buckets: vec![
                (1.0, 0.0),
                (2.0, 0.0),
                (3.0, 0.0),
                (4.0, 10.0),
                (f64::INFINITY, 10.0),
            ],
            sum: 40.0,
            count: 10.0,
        };
        assert_eq!(h.quantile(0.5), Some(3.5));
        assert_eq!(h.mean(), Some(4.0));
        assert_eq!(Hist::default().quantile(0.5), None);
        // Sparse native buckets: the later scrape has a bucket the earlier one had not.
        let earlier = Hist {
            buckets: vec![(0.5, 2.0), (f64::INFINITY, 2.0)],
            sum: 0.8,
            count: 2.0,
        };
        let later = Hist {
            buckets: vec![(0.5, 3.0), (1.0, 5.0), (f64::INFINITY, 5.0)],
            sum: 3.0,
            count: 5.0,
        };
        let d = later.minus(&earlier);
        assert_eq!(
            d.buckets,
            vec![(0.5, 1.0), (1.0, 3.0), (f64::INFINITY, 3.0)]
        );
        let mut sum = earlier.clone();
        sum.add(&later);
        assert_eq!(
            sum.buckets,
            vec![(0.5, 5.0), (1.0, 7.0), (f64::INFINITY, 7.0)]
        );
        let mut sum = h.clone();
        sum.add(&h);
        assert!((sum.count - 20.0).abs() < 1e-9);
        assert_eq!(sum.buckets[3], (4.0, 20.0));
        assert_eq!(sum.minus(&h), h);
        // Sparse native buckets: the later scrape has a bucket the earlier one lacked. The
        // difference is still per bound, not the later histogram whole.
        let earlier = Hist {
            buckets: vec![(1.0, 2.0), (4.0, 5.0), (f64::INFINITY, 5.0)],
            sum: 10.0,
            count: 5.0,
        };
        let later = Hist {
            buckets: vec![(1.0, 2.0), (2.0, 4.0), (4.0, 8.0), (f64::INFINITY, 8.0)],
            sum: 16.0,
            count: 8.0,
        };
        let d = later.minus(&earlier);
        assert_eq!(
            d.buckets,
            vec![(1.0, 0.0), (2.0, 2.0), (4.0, 3.0), (f64::INFINITY, 3.0)]
        );
        assert!((d.sum - 6.0).abs() < 1e-9 && (d.count - 3.0).abs() < 1e-9);
    }
}
