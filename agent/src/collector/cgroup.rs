//! `cgroup` collector: CFS bandwidth, usage and pressure per pod and container, read from
//! the cgroup filesystem at scrape time (v2, v1 and hybrid hosts).
//!
//! Series follow the cgroups: a cgroup that is gone is not walked, so its series vanish
//! from the next scrape and nothing accumulates with pod churn.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder},
    metrics::MetricType,
};

use super::{Collect, CollectError, Context, Unsupported};
use crate::cgroup::{
    self, CgroupKind, CgroupSample, DiscoverOptions, Discovered, ErrorCounts, Layout, Limits,
    Presence,
};

/// Options of the cgroup collector.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// Also export non-pod cgroups (system.slice services, the runtime itself), labelled by
    /// `cgroup` path. Off by default: it adds a series set per systemd unit.
    #[arg(long = "collector.cgroup.non-pod")]
    pub non_pod: bool,
    /// Also export the pod sandbox ("pause") containers. They are skipped by default: they do
    /// no work and double the container series.
    #[arg(long = "collector.cgroup.sandbox")]
    pub sandbox: bool,
    /// How long the limits read from cpu.max, cpu.max.burst and cpu.weight (v1: cfs_quota_us,
    /// cfs_period_us, cfs_burst_us, shares) are reused before they are read again. Counters are
    /// read on every scrape; limits change only when a pod is resized. `0s` reads them every scrape.
    #[arg(long = "collector.cgroup.limits-refresh", value_name = "DURATION", default_value = "10s", value_parser = crate::util::parse_duration_or_zero)]
    pub limits_refresh: Duration,
}

/// How long a container with no process yet stays "not a sandbox" before it is checked again.
const SANDBOX_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Sandbox,
    Workload,
    /// No process to look at when checked.
    Unknown(Instant),
}

/// The pod-scoped label set shared by every per-pod metric.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    pub container_id: String,
    pub qos: &'static str,
    /// Only for non-pod cgroups (`--collector.cgroup.non-pod`): the path below the root.
    pub cgroup: Option<String>,
}

impl EncodeLabelSet for Target {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for (k, v) in [
            ("namespace", self.namespace.as_str()),
            ("pod", self.pod.as_str()),
            ("container", self.container.as_str()),
            ("pod_uid", self.pod_uid.as_str()),
            ("container_id", self.container_id.as_str()),
            ("qos", self.qos),
        ] {
            (k, v).encode(enc.encode_label())?;
        }
        if let Some(path) = &self.cgroup {
            ("cgroup", path.as_str()).encode(enc.encode_label())?;
        }
        Ok(())
    }
}

impl Target {
    /// Labels for a discovered cgroup; the names are filled in by the metadata provider.
    pub fn from_kind(d: &Discovered) -> Self {
        match &d.kind {
            CgroupKind::Pod { pod_uid, qos, .. } => Self {
                pod_uid: pod_uid.clone(),
                qos: qos.as_str(),
                ..Self::default()
            },
            CgroupKind::Container {
                pod_uid,
                container_id,
                qos,
                ..
            } => Self {
                pod_uid: pod_uid.clone(),
                container_id: container_id.clone(),
                qos: qos.as_str(),
                ..Self::default()
            },
            CgroupKind::Other => Self {
                cgroup: Some(format!("/{}", d.rel_path)),
                ..Self::default()
            },
        }
    }
}

/// Finds the pod and container cgroups of this host and labels them: the identity join that
/// the cgroup collector and the eBPF probes share.
#[derive(Debug)]
pub struct Targets {
    layout: Layout,
    opts: Options,
    procfs: PathBuf,
    /// container id → is it a sandbox? Decided once per container (it costs two reads).
    sandbox: Mutex<HashMap<String, Verdict>>,
    /// Names from the metadata provider (empty without one).
    metadata: Arc<crate::metadata::Store>,
}

impl Targets {
    /// Detects the cgroup layout under `paths.cgroupfs`.
    pub fn new(
        paths: &crate::Paths,
        opts: &Options,
        metadata: &Arc<crate::metadata::Store>,
    ) -> Result<Self, Unsupported> {
        let layout =
            Layout::detect(&paths.cgroupfs).map_err(|e| Unsupported(crate::util::chain(&e)))?;
        Ok(Self {
            layout,
            opts: opts.clone(),
            procfs: paths.procfs.clone(),
            sandbox: Mutex::new(HashMap::new()),
            metadata: Arc::clone(metadata),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A sandbox ("pause") container runs a single process named `pause`.
    fn is_sandbox(&self, d: &Discovered, id: &str, cache: &mut HashMap<String, Verdict>) -> bool {
        match cache.get(id) {
            Some(Verdict::Sandbox) => return true,
            Some(Verdict::Workload) => return false,
            Some(Verdict::Unknown(at)) if at.elapsed() < SANDBOX_RECHECK => return false,
            _ => {}
        }
        let procs = std::fs::read_to_string(self.layout.cpu.join(&d.rel_path).join("cgroup.procs"))
            .unwrap_or_default();
        let verdict = match procs.lines().next() {
            // No process (yet): decide later, when it has one.
            None => Verdict::Unknown(Instant::now()),
            Some(pid) => {
                let comm = std::fs::read_to_string(self.procfs.join(pid.trim()).join("comm"))
                    .unwrap_or_default();
                if comm.trim_end() == "pause" {
                    Verdict::Sandbox
                } else {
                    Verdict::Workload
                }
            }
        };
        cache.insert(id.to_owned(), verdict);
        matches!(verdict, Verdict::Sandbox)
    }

    /// Walks the cpu hierarchy: every pod and container cgroup (and, with `--collector.cgroup.non-pod`,
    /// every other one) with its labels, sandboxes left out unless asked for.
    pub fn scan(&self, errors: &mut ErrorCounts) -> Vec<(Discovered, Target)> {
        let opts = DiscoverOptions {
            include_non_pod: self.opts.non_pod,
            ..DiscoverOptions::default()
        };
        let found = cgroup::discover(&self.layout, &opts, errors);
        let mut cache = self.sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(found.len());
        let mut live = Vec::new();
        for d in found {
            if let CgroupKind::Container { container_id, .. } = &d.kind {
                live.push(container_id.clone());
                if !self.opts.sandbox && self.is_sandbox(&d, container_id, &mut cache) {
                    continue;
                }
            }
            let target = Target::from_kind(&d);
            out.push((d, target));
        }
        // Forget containers that are gone, so the cache does not grow with churn.
        if cache.len() > live.len() {
            let live: HashSet<&str> = live.iter().map(String::as_str).collect();
            cache.retain(|id, _| live.contains(id.as_str()));
        }
        drop(cache);
        // Names from the metadata provider; the sandboxes it names (CRI knows them for sure)
        // go too, unless asked for.
        self.metadata
            .label_all(&mut out, self.opts.sandbox, |(_, t)| t);
        out
    }
}

#[derive(Debug)]
pub struct CgroupCollector {
    targets: Targets,
    /// cgroup id → limits and when they were read; pruned to live cgroups every scrape.
    limits: Mutex<HashMap<u64, (Instant, Limits)>>,
    /// Which optional files this host has, learnt once.
    presence: Mutex<Presence>,
}

impl CgroupCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        let targets = Targets::new(ctx.paths, ctx.cgroup, ctx.metadata)?;
        let layout = targets.layout();
        tracing::info!(mode = ?layout.mode, cpu = %layout.cpu.display(), version = ?layout.cpu_version, "cgroup layout");
        Ok(Box::new(Self {
            targets,
            limits: Mutex::new(HashMap::new()),
            presence: Mutex::new(Presence::default()),
        }))
    }

    /// Discovers and reads every cgroup: the rows of this scrape.
    pub fn gather(&self, errors: &mut ErrorCounts) -> Vec<(Target, CgroupSample)> {
        let found = self.targets.scan(errors);
        // One thread: reading cgroup files in parallel was measured no faster (300 pods x 3
        // containers on v1, 2 CPUs): the reads serialise in the kernel.
        let mut presence = self.presence.lock().unwrap_or_else(PoisonError::into_inner);
        let rows = self.read_chunk(&found, errors, &mut presence);
        drop(presence);
        let mut cache = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > found.len() {
            let live: HashSet<u64> = found.iter().map(|(d, _)| d.id).collect();
            cache.retain(|id, _| live.contains(id));
        }
        rows
    }

    /// Reads the counters (and, when stale, the limits) of `found`.
    fn read_chunk(
        &self,
        found: &[(Discovered, Target)],
        errors: &mut ErrorCounts,
        presence: &mut Presence,
    ) -> Vec<(Target, CgroupSample)> {
        let refresh = self.targets.opts.limits_refresh;
        let mut rows = Vec::with_capacity(found.len());
        let mut buf = String::with_capacity(1024);
        for (d, target) in found {
            let Some(mut sample) =
                cgroup::read_counters(&self.targets.layout, d, &mut buf, errors, presence)
            else {
                continue;
            };
            let cached = self
                .limits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&d.id)
                .cloned();
            let limits = match cached {
                Some((at, limits)) if at.elapsed() < refresh => limits,
                _ => {
                    let limits = cgroup::read_limits(&self.targets.layout, d, &mut buf, errors);
                    self.limits
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(d.id, (Instant::now(), limits.clone()));
                    limits
                }
            };
            sample.max = limits.max;
            sample.burst_us = limits.burst_us;
            sample.weight = limits.weight;
            rows.push((target.clone(), sample));
        }
        rows
    }
}

const NS_PER_SEC: f64 = 1e9;
const US_PER_SEC: f64 = 1e6;

#[expect(
    clippy::cast_precision_loss,
    reason = "counters below 2^53 are exact; above it the error is below a part per 10^15"
)]
fn secs_ns(ns: u64) -> f64 {
    ns as f64 / NS_PER_SEC
}

#[expect(clippy::cast_precision_loss, reason = "counters below 2^53 are exact")]
fn secs_us(us: u64) -> f64 {
    us as f64 / US_PER_SEC
}

#[expect(clippy::cast_precision_loss, reason = "small integers")]
fn float(n: u64) -> f64 {
    n as f64
}

type Getter = fn(&CgroupSample) -> Option<f64>;

/// The families this collector exports: (name, type, help, value).
const FAMILIES: &[(&str, MetricType, &str, Getter)] = &[
    (
        "podstat_cpu_usage_seconds",
        MetricType::Counter,
        "CPU time consumed by the cgroup (v2 cpu.stat usage_usec; v1 cpuacct.usage).",
        |s| s.stat.usage_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_user_seconds",
        MetricType::Counter,
        "CPU time in user mode (v2 cpu.stat user_usec).",
        |s| s.stat.user_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_system_seconds",
        MetricType::Counter,
        "CPU time in kernel mode (v2 cpu.stat system_usec).",
        |s| s.stat.system_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_core_sched_force_idle_seconds",
        MetricType::Counter,
        "Time SMT siblings were forced idle by core scheduling (v2 cpu.stat core_sched.force_idle_usec).",
        |s| s.stat.force_idle_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_periods",
        MetricType::Counter,
        "CFS bandwidth periods that elapsed while the cgroup had runnable tasks (cpu.stat nr_periods).",
        |s| s.stat.nr_periods.map(float),
    ),
    (
        "podstat_cpu_throttled_periods",
        MetricType::Counter,
        "CFS periods in which the cgroup was throttled at least once, for any length of time (cpu.stat nr_throttled).",
        |s| s.stat.nr_throttled.map(float),
    ),
    (
        "podstat_cpu_throttled_seconds",
        MetricType::Counter,
        "Time the cgroup's run queues spent throttled, summed over CPUs as the kernel counts it (v2 cpu.stat throttled_usec; v1 throttled_time).",
        |s| s.stat.throttled_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_throttled_local_seconds",
        MetricType::Counter,
        "Throttled time caused by this cgroup's own limit, not an ancestor's (v2 cpu.stat.local throttled_usec, kernel 6.8+).",
        |s| s.local_throttled_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_bursts",
        MetricType::Counter,
        "Periods in which the cgroup used burst quota beyond its limit (cpu.stat nr_bursts).",
        |s| s.stat.nr_bursts.map(float),
    ),
    (
        "podstat_cpu_burst_seconds",
        MetricType::Counter,
        "CPU time used beyond the quota from accumulated burst (cpu.stat burst_usec; v1 burst_time).",
        |s| s.stat.burst_ns.map(secs_ns),
    ),
    (
        "podstat_cpu_limit_cores",
        MetricType::Gauge,
        "CFS quota divided by period, in cores (cpu.max; v1 cpu.cfs_quota_us / cpu.cfs_period_us). Absent when unlimited.",
        |s| {
            s.max.as_ref().and_then(|m| {
                m.quota_us
                    .filter(|_| m.period_us > 0)
                    .map(|q| float(q) / float(m.period_us))
            })
        },
    ),
    (
        "podstat_cpu_period_seconds",
        MetricType::Gauge,
        "CFS bandwidth period (cpu.max second field; v1 cpu.cfs_period_us).",
        |s| s.max.as_ref().map(|m| secs_us(m.period_us)),
    ),
    (
        "podstat_cpu_burst_limit_seconds",
        MetricType::Gauge,
        "CFS burst allowance per period (cpu.max.burst; v1 cpu.cfs_burst_us).",
        |s| s.burst_us.map(secs_us),
    ),
    (
        "podstat_cpu_weight",
        MetricType::Gauge,
        "CPU weight, 1..10000 (cpu.weight; v1 cpu.shares converted as 1 + (shares - 2) * 9999 / 262142).",
        |s| s.weight.map(float),
    ),
    (
        "podstat_cpu_pressure_waiting_seconds",
        MetricType::Counter,
        "Time at least one of the cgroup's tasks waited for a CPU (cpu.pressure some total).",
        |s| {
            s.pressure
                .as_ref()
                .and_then(|p| p.some_total_us)
                .map(secs_us)
        },
    ),
    (
        "podstat_cpu_pressure_stalled_seconds",
        MetricType::Counter,
        "Time all of the cgroup's non-idle tasks waited for a CPU at once (cpu.pressure full total).",
        |s| {
            s.pressure
                .as_ref()
                .and_then(|p| p.full_total_us)
                .map(secs_us)
        },
    ),
];

/// Encodes the rows, family by family. Families with no value at all are left out.
pub fn encode_rows(
    enc: &mut DescriptorEncoder,
    rows: &[(Target, CgroupSample)],
) -> Result<(), fmt::Error> {
    use prometheus_client::{
        encoding::EncodeMetric as _,
        metrics::{counter::ConstCounter, gauge::ConstGauge},
    };
    for (name, kind, help, get) in FAMILIES {
        if !rows.iter().any(|(_, s)| get(s).is_some()) {
            continue;
        }
        let mut m = enc.encode_descriptor(name, help, None, *kind)?;
        for (target, sample) in rows {
            let Some(v) = get(sample) else { continue };
            let family = m.encode_family(target)?;
            match kind {
                MetricType::Counter => ConstCounter::new(v).encode(family)?,
                _ => ConstGauge::new(v).encode(family)?,
            }
        }
    }
    Ok(())
}

impl Collect for CgroupCollector {
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        errors: &mut ErrorCounts,
    ) -> Result<(), CollectError> {
        if !self.targets.layout.cpu.exists() {
            return Err(CollectError::Source(format!(
                "cpu hierarchy {} is gone",
                self.targets.layout.cpu.display()
            )));
        }
        let t0 = Instant::now();
        let rows = self.gather(errors);
        let t1 = Instant::now();
        encode_rows(enc, &rows)?;
        tracing::debug!(gather = ?(t1 - t0), encode = ?t1.elapsed(), rows = rows.len(), "cgroup collector");
        Ok(())
    }
}

/// The exposed names of this collector's families (counters with their `_total`).
pub fn family_names() -> impl Iterator<Item = String> {
    FAMILIES.iter().map(|(name, kind, ..)| match kind {
        MetricType::Counter => format!("{name}_total"),
        _ => (*name).to_owned(),
    })
}
