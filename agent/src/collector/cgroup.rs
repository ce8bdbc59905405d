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
    encoding::{DescriptorEncoder, EncodeLabelSet},
    metrics::MetricType,
};

use super::{Collect, CollectError, Context, Unsupported};
use crate::{
    cgroup::{self, CgroupSample, Discovered, ErrorCounts, Limits, Presence},
    identity::{ScanOptions, Scanner, Target},
    metric::Family,
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
    /// Also export the series left out by default to keep the series budget per container
    /// (README, "Series budget"): user and system time, core-scheduling forced idle, the locally
    /// throttled time of cgroups with a limit of their own (without one, it is exported once an
    /// ancestor's limit throttles them), the CPU weight, CPU pressure (some and full; the
    /// kubelet exports them too), and the burst families for cgroups without a burst allowance
    /// (with one they are always exported).
    #[arg(long = "collector.cgroup.extended")]
    pub extended: bool,
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
    extended: bool,
    limits_refresh: Duration,
    /// cgroup id → limits and when they were read; pruned to live cgroups every scrape.
    limits: Mutex<HashMap<u64, (Instant, Limits)>>,
    /// Which optional files this host has, learnt once.
    presence: Mutex<Presence>,
    /// `--path.sysfs`, for the sched_ext state.
    sysfs: PathBuf,
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
            extended: ctx.cgroup.extended,
            limits_refresh: ctx.cgroup.limits_refresh,
            limits: Mutex::new(HashMap::new()),
            presence: Mutex::new(Presence::default()),
            sysfs: ctx.paths.sysfs.clone(),
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

pub const CPU_USAGE_SECONDS: Family = crate::counter!(
    "podstat_cpu_usage_seconds",
    "CPU time consumed by the cgroup (v2 cpu.stat usage_usec; v1 cpuacct.usage)."
);
pub const CPU_USER_SECONDS: Family = crate::counter!(
    "podstat_cpu_user_seconds",
    "CPU time in user mode (v2 cpu.stat user_usec)."
);
pub const CPU_SYSTEM_SECONDS: Family = crate::counter!(
    "podstat_cpu_system_seconds",
    "CPU time in kernel mode (v2 cpu.stat system_usec)."
);
pub const CPU_CORE_SCHED_FORCE_IDLE_SECONDS: Family = crate::counter!(
    "podstat_cpu_core_sched_force_idle_seconds",
    "Time SMT siblings were forced idle by core scheduling (v2 cpu.stat core_sched.force_idle_usec)."
);
pub const CPU_PERIODS: Family = crate::counter!(
    "podstat_cpu_periods",
    "CFS bandwidth periods that elapsed while the cgroup had runnable tasks (cpu.stat nr_periods)."
);
pub const CPU_THROTTLED_PERIODS: Family = crate::counter!(
    "podstat_cpu_throttled_periods",
    "CFS periods in which the cgroup was throttled at least once, for any length of time (cpu.stat nr_throttled)."
);
pub const CPU_THROTTLED_SECONDS: Family = crate::counter!(
    "podstat_cpu_throttled_seconds",
    "Time the cgroup's run queues spent throttled, summed over CPUs as the kernel counts it (v2 cpu.stat throttled_usec; v1 throttled_time)."
);
pub const CPU_THROTTLED_LOCAL_SECONDS: Family = crate::counter!(
    "podstat_cpu_throttled_local_seconds",
    "Time this cgroup's run queues were throttled while it had runnable tasks, by its own limit or an ancestor's (a pod-level limit), summed over CPUs (v2 cpu.stat.local throttled_usec, kernel 6.8+). Exported by default for a cgroup without a limit of its own once an ancestor's has throttled it; for every cgroup with --collector.cgroup.extended."
);
pub const CPU_BURSTS: Family = crate::counter!(
    "podstat_cpu_bursts",
    "Periods in which the cgroup used burst quota beyond its limit (cpu.stat nr_bursts)."
);
pub const CPU_BURST_SECONDS: Family = crate::counter!(
    "podstat_cpu_burst_seconds",
    "CPU time used beyond the quota from accumulated burst (cpu.stat burst_usec; v1 burst_time)."
);
pub const CPU_LIMIT_CORES: Family = crate::gauge!(
    "podstat_cpu_limit_cores",
    "CFS quota divided by period, in cores (cpu.max; v1 cpu.cfs_quota_us / cpu.cfs_period_us). Absent when unlimited."
);
pub const CPU_PERIOD_SECONDS: Family = crate::gauge!(
    "podstat_cpu_period_seconds",
    "CFS bandwidth period (cpu.max second field; v1 cpu.cfs_period_us)."
);
pub const CPU_BURST_LIMIT_SECONDS: Family = crate::gauge!(
    "podstat_cpu_burst_limit_seconds",
    "CFS burst allowance per period (cpu.max.burst; v1 cpu.cfs_burst_us)."
);
pub const CPU_WEIGHT: Family = crate::gauge!(
    "podstat_cpu_weight",
    "CPU weight, 1..10000 (cpu.weight; v1 cpu.shares converted as 1 + (shares - 2) * 9999 / 262142)."
);
pub const CPU_PRESSURE_WAITING_SECONDS: Family = crate::counter!(
    "podstat_cpu_pressure_waiting_seconds",
    "Time at least one of the cgroup's tasks waited for a CPU (cpu.pressure some total)."
);
pub const CPU_PRESSURE_STALLED_SECONDS: Family = crate::counter!(
    "podstat_cpu_pressure_stalled_seconds",
    "Time all of the cgroup's non-idle tasks waited for a CPU at once (cpu.pressure full total)."
);

/// `podstat_node_sched_ext_info`: the node's sched_ext state (not per cgroup).
pub const NODE_SCHED_EXT: Family = crate::info_family!(
    "podstat_node_sched_ext",
    "The node's sched_ext state (/sys/kernel/sched_ext/state: enabling, enabled, disabling, disabled) and the loaded BPF scheduler's name (root/ops, empty without one); absent on kernels without sched_ext. While a BPF scheduler is loaded, cpu.max and cpu.weight mean only what it implements, and the CFS throttling counters and probes may not apply."
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchedExtLabels {
    state: String,
    scheduler: String,
}

/// The families this collector exports, with how each value is read from a sample.
pub const FAMILIES: &[(Family, Getter)] = &[
    (CPU_USAGE_SECONDS, |s| s.stat.usage_ns.map(secs_ns)),
    (CPU_USER_SECONDS, |s| s.stat.user_ns.map(secs_ns)),
    (CPU_SYSTEM_SECONDS, |s| s.stat.system_ns.map(secs_ns)),
    (CPU_CORE_SCHED_FORCE_IDLE_SECONDS, |s| {
        s.stat.force_idle_ns.map(secs_ns)
    }),
    (CPU_PERIODS, |s| s.stat.nr_periods.map(float)),
    (CPU_THROTTLED_PERIODS, |s| s.stat.nr_throttled.map(float)),
    (CPU_THROTTLED_SECONDS, |s| s.stat.throttled_ns.map(secs_ns)),
    (CPU_THROTTLED_LOCAL_SECONDS, |s| {
        s.local_throttled_ns.map(secs_ns)
    }),
    (CPU_BURSTS, |s| s.stat.nr_bursts.map(float)),
    (CPU_BURST_SECONDS, |s| s.stat.burst_ns.map(secs_ns)),
    (CPU_LIMIT_CORES, |s| {
        s.max.as_ref().and_then(|m| {
            m.quota_us
                .filter(|_| m.period_us > 0)
                .map(|q| float(q) / float(m.period_us))
        })
    }),
    (CPU_PERIOD_SECONDS, |s| {
        s.max.as_ref().map(|m| secs_us(m.period_us))
    }),
    (CPU_BURST_LIMIT_SECONDS, |s| s.burst_us.map(secs_us)),
    (CPU_WEIGHT, |s| s.weight.map(float)),
    (CPU_PRESSURE_WAITING_SECONDS, |s| {
        s.pressure
            .as_ref()
            .and_then(|p| p.some_total_us)
            .map(secs_us)
    }),
    (CPU_PRESSURE_STALLED_SECONDS, |s| {
        s.pressure
            .as_ref()
            .and_then(|p| p.full_total_us)
            .map(secs_us)
    }),
];

/// Families exported only with `--collector.cgroup.extended`: none of `explain`, `top`, the
/// alerts or the dashboard reads them, and each would cost every container a series of the
/// budget (tests/tests/budget.rs).
pub const EXTENDED: &[Family] = &[
    CPU_USER_SECONDS,
    CPU_SYSTEM_SECONDS,
    CPU_CORE_SCHED_FORCE_IDLE_SECONDS,
    CPU_THROTTLED_LOCAL_SECONDS,
    CPU_WEIGHT,
    // PSI: the kubelet exports the same files per container (cAdvisor's
    // container_pressure_cpu_*, KubeletPSI, beta and on by default since Kubernetes 1.34).
    CPU_PRESSURE_WAITING_SECONDS,
    CPU_PRESSURE_STALLED_SECONDS,
];

/// Families exported by default only for cgroups with a burst allowance: without one they are 0.
pub const BURST: &[Family] = &[CPU_BURSTS, CPU_BURST_SECONDS, CPU_BURST_LIMIT_SECONDS];

/// Whether `family` is exported for `sample`: every family with `extended`, else the default
/// ones, the burst families where a burst allowance is set, and the locally throttled time of
/// a cgroup that has no limit of its own but was throttled by an ancestor's: a container under
/// a pod-level limit (KEP-2837), the one case where that time says something cpu.stat does
/// not (which container of the pod stalled; `explain`, the pod-level alert and the dashboard
/// read it).
fn exported(family: &Family, sample: &CgroupSample, extended: bool) -> bool {
    if extended {
        return true;
    }
    if family.name == CPU_THROTTLED_LOCAL_SECONDS.name {
        return sample.max.as_ref().is_none_or(|m| m.quota_us.is_none())
            && sample.local_throttled_ns.is_some_and(|t| t > 0);
    }
    !(EXTENDED.iter().any(|f| f.name == family.name)
        || (BURST.iter().any(|f| f.name == family.name) && sample.burst_us.is_none_or(|b| b == 0)))
}

/// Encodes the rows, family by family. Families with no value at all are left out, and those
/// [`exported`] does not want.
pub fn encode_rows(
    enc: &mut DescriptorEncoder,
    rows: &[(Target, CgroupSample)],
    extended: bool,
) -> Result<(), fmt::Error> {
    use prometheus_client::{
        encoding::EncodeMetric as _,
        metrics::{counter::ConstCounter, gauge::ConstGauge},
    };
    for (family, get) in FAMILIES {
        let value = |s: &CgroupSample| get(s).filter(|_| exported(family, s, extended));
        if !rows.iter().any(|(_, s)| value(s).is_some()) {
            continue;
        }
        let mut m = family.encode(enc)?;
        for (target, sample) in rows {
            let Some(v) = value(sample) else { continue };
            let f = m.encode_family(target)?;
            match family.kind {
                MetricType::Counter => ConstCounter::new(v).encode(f)?,
                _ => ConstGauge::new(v).encode(f)?,
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
        encode_rows(enc, &rows, self.extended)?;
        if let Some(scx) = cgroup::sched_ext::read(&self.sysfs) {
            NODE_SCHED_EXT.encode(enc)?.encode_info(&SchedExtLabels {
                state: scx.state,
                scheduler: scx.scheduler.unwrap_or_default(),
            })?;
        }
        tracing::debug!(gather = ?(t1 - t0), encode = ?t1.elapsed(), rows = rows.len(), "cgroup collector");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CpuMax;

    #[test]
    fn locally_throttled_time_is_exported_by_default_under_a_pod_level_limit_only() {
        let limited = |quota_us| CgroupSample {
            max: Some(CpuMax {
                quota_us,
                period_us: 100_000,
            }),
            local_throttled_ns: Some(5_000),
            ..CgroupSample::default()
        };
        let local = &CPU_THROTTLED_LOCAL_SECONDS;
        // No limit of its own, throttled by an ancestor's (the pod's).
        assert!(exported(local, &limited(None), false));
        let never = CgroupSample {
            local_throttled_ns: Some(0),
            ..limited(None)
        };
        assert!(!exported(local, &never, false));
        // Its own limit: cpu.stat's throttled time already says it.
        assert!(!exported(local, &limited(Some(20_000)), false));
        assert!(exported(local, &limited(Some(20_000)), true));
        // The other extended families stay behind the flag.
        assert!(!exported(
            &CPU_PRESSURE_WAITING_SECONDS,
            &limited(None),
            false
        ));
        assert!(exported(&CPU_USAGE_SECONDS, &limited(None), false));
    }
}
