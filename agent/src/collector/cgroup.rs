//! `cgroup` collector: CFS bandwidth, usage and pressure per pod and container, read from
//! the cgroup filesystem at scrape time (v2, v1 and hybrid hosts).
//!
//! Series follow the cgroups: a cgroup that is gone is not walked, so its series vanish
//! from the next scrape and nothing accumulates with pod churn.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{Collect, CollectError, Context, Unsupported};
use crate::{
    cgroup::{self, CgroupSample, Discovered, ErrorCounts, Limits, Presence},
    identity::{ScanOptions, Scanner, Target},
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

impl Options {
    /// What the identity scan returns with these options.
    pub fn scan(&self) -> ScanOptions {
        ScanOptions {
            non_pod: self.non_pod,
            sandbox: self.sandbox,
        }
    }
}

#[derive(Debug)]
pub struct CgroupCollector {
    targets: Scanner,
    limits_refresh: Duration,
    /// cgroup id → limits and when they were read; pruned to live cgroups every scrape.
    limits: Mutex<HashMap<u64, (Instant, Limits)>>,
    /// Which optional files this host has, learnt once.
    presence: Mutex<Presence>,
}

impl CgroupCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        let targets = Scanner::new(
            &ctx.paths.cgroupfs,
            &ctx.paths.procfs,
            ctx.cgroup.scan(),
            ctx.metadata,
        )
        .map_err(|e| Unsupported::Cgroup(Arc::new(e)))?;
        let layout = targets.layout();
        tracing::info!(mode = ?layout.mode, cpu = %layout.cpu.display(), version = ?layout.cpu_version, "cgroup layout");
        Ok(Box::new(Self {
            targets,
            limits_refresh: ctx.cgroup.limits_refresh,
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
        let refresh = self.limits_refresh;
        let mut rows = Vec::with_capacity(found.len());
        let mut buf = String::with_capacity(1024);
        for (d, target) in found {
            let Some(mut sample) =
                cgroup::read_counters(self.targets.layout(), d, &mut buf, errors, presence)
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
                    let limits = cgroup::read_limits(self.targets.layout(), d, &mut buf, errors);
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
        let cpu = &self.targets.layout().cpu;
        if !cpu.exists() {
            return Err(CollectError::HierarchyGone(cpu.clone()));
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
