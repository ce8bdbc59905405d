//! Collectors: one file per domain, each read at scrape time.
//!
//! [`COLLECTORS`] is the central table (name, enabled by default, what it reads, constructor)
//! that generates the `--collector.<name>` flags, the README's collector table and the
//! `podstat check` report. [`Gatherer`] runs the enabled collectors on each scrape and adds
//! the self-metrics every collector owes: `podstat_collector_success`,
//! `podstat_collector_duration_seconds` and `podstat_collector_errors_total`.

pub mod cgroup;
pub mod family;
pub mod net;
pub mod sched;
pub mod throttle;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    cgroup::{CgroupError, ErrorCounts},
    identity::IdMap,
    metric::Family,
    probe::{Absence, ProbeError, ProbeId, Probes, Status},
};

/// `podstat_collector_success`.
pub const COLLECTOR_SUCCESS: Family = crate::gauge!(
    "podstat_collector_success",
    "1 if the collector succeeded in this scrape, 0 if it failed as a whole."
);

/// `podstat_collector_duration_seconds`.
pub const COLLECTOR_DURATION_SECONDS: Family = crate::gauge!(
    "podstat_collector_duration_seconds",
    "Wall-clock time the collector took in this scrape."
);

/// `podstat_collector_supported`.
pub const COLLECTOR_SUPPORTED: Family = crate::gauge!(
    "podstat_collector_supported",
    "1 if the enabled collector can run on this host; 0 if it is unsupported (the log says why)."
);

/// `podstat_collector_errors_total`.
pub const COLLECTOR_ERRORS: Family = crate::counter!(
    "podstat_collector_errors",
    "Items a collector skipped since start (vanished cgroup, unreadable or malformed file, unknown field), by reason."
);

/// `podstat_build_info`.
pub const BUILD: Family = crate::info_family!(
    "podstat_build",
    "podstat's version and the running kernel's release."
);

/// Everything a collector constructor may need.
pub struct Context<'a> {
    pub paths: &'a crate::Paths,
    pub cgroup: &'a cgroup::Options,
    pub sched: &'a sched::Options,
    pub probes: &'a Arc<Probes>,
    pub identity: &'a Arc<IdMap>,
    pub metadata: &'a Arc<crate::metadata::Store>,
}

/// Why a collector cannot run on this host: what the host lacks. Logged once; not a scrape
/// failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unsupported {
    #[error("{probe} probe")]
    Probe {
        probe: ProbeId,
        #[source]
        source: Arc<ProbeError>,
    },
    #[error("{probe} probe: {why}")]
    ProbeAbsent { probe: ProbeId, why: Absence },
    #[error("{0} probe not loaded")]
    ProbeNotLoaded(ProbeId),
    #[error(transparent)]
    Cgroup(Arc<CgroupError>),
    /// A host file the collector reads is missing (`what` says what that means).
    #[error("{} missing ({what})", path.display())]
    Missing {
        path: std::path::PathBuf,
        what: &'static str,
    },
}

/// A collector, read at scrape time.
pub trait Collect: Send + Sync + fmt::Debug {
    /// Encodes this collector's metric families. Per-item problems (a cgroup that vanished, a
    /// malformed file) are counted in `errors` and skipped; `Err` means the whole collector
    /// failed this scrape.
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        errors: &mut ErrorCounts,
    ) -> Result<(), CollectError>;
}

/// A collector failed as a whole for this scrape.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("encoding metrics")]
    Encode(#[from] fmt::Error),
    #[error("probe maps unavailable")]
    NoMaps,
    #[error("reading eBPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cpu hierarchy {} is gone", .0.display())]
    HierarchyGone(std::path::PathBuf),
}

pub type Constructor = fn(&Context<'_>) -> Result<Box<dyn Collect>, Unsupported>;

/// One row of the collector table.
pub struct Spec {
    pub name: &'static str,
    pub default_enabled: bool,
    /// What it reads, for `--help`, `podstat check` and the README.
    pub reads: &'static str,
    /// Kernel requirement, for the README and `podstat check`.
    pub requires: &'static str,
    pub build: Constructor,
}

/// The collector table. Order here is order in the exposition.
pub const COLLECTORS: &[Spec] = &[
    Spec {
        name: "cgroup",
        default_enabled: true,
        reads: "cgroup v2 cpu.stat, cpu.stat.local, cpu.max, cpu.max.burst, cpu.weight, cpu.pressure; \
                v1 cpu.stat, cpu.cfs_quota_us, cpu.cfs_period_us, cpu.cfs_burst_us, cpu.shares, cpuacct.usage",
        requires: "cgroup v1 cpu controller or cgroup v2 with the cpu controller (any kernel podstat runs on)",
        build: cgroup::CgroupCollector::build,
    },
    Spec {
        name: "sched",
        default_enabled: true,
        reads: "eBPF tp_btf sched_switch, reading the kernel's sched_info (CONFIG_SCHED_INFO; else also sched_wakeup, sched_wakeup_new, sched_process_exit, sched_migrate_task): run-queue latency and preemptions per pod, context switches per CPU",
        requires: "BTF (/sys/kernel/btf/vmlinux), tp_btf (5.5+), CAP_BPF + CAP_PERFMON (5.8+) or CAP_SYS_ADMIN",
        build: sched::SchedCollector::build,
    },
    Spec {
        name: "throttle",
        default_enabled: true,
        reads: "eBPF fexit/throttle_cfs_rq and fentry/unthrottle_cfs_rq (kprobe fallback): throttle pause, quota-exhausted-after, runnable threads per pod",
        requires: "BTF, CONFIG_CFS_BANDWIDTH; fentry/fexit 5.5+ (else kprobes), CAP_BPF + CAP_PERFMON",
        build: throttle::ThrottleCollector::build,
    },
    Spec {
        name: "net",
        default_enabled: true,
        reads: "/proc/net/softnet_stat, /proc/interrupts, /proc/irq/*/smp_affinity_list, sysfs rps_cpus, rps_flow_cnt, \
                net.core.rps_sock_flow_entries, CPU topology; ethtool netlink (ntuple); packets per receive queue \
                from netdev netlink queue stats or ethtool -S; with the net probes, receive steering locality and \
                flow migrations per pod (sampled reads; per packet with --probe.net.per-packet), aRFS rule churn",
        requires: "any kernel (softnet_stat 11 to 15 columns, 2.6 to 6.18); ethtool netlink 5.6+ for ntuple; \
                   queue stats 6.9+; probes: BTF, tp_btf sock_recv_length (6.3+) or tcp_rcv_space_adjust \
                   (per packet also sk_data_ready (6.3+) or tcp_probe, netif_receive_skb)",
        build: net::NetCollector::build,
    },
];

/// The self-metrics every collector owes, exported by the [`Gatherer`].
pub const SELF_FAMILIES: &[Family] = &[
    COLLECTOR_SUCCESS,
    COLLECTOR_DURATION_SECONDS,
    COLLECTOR_SUPPORTED,
    COLLECTOR_ERRORS,
    BUILD,
];

/// `Ok` if every probe in `probes` is attached, else why the collector cannot run.
pub fn require_probes(ctx: &Context<'_>, probes: &[ProbeId]) -> Result<(), Unsupported> {
    for probe in probes {
        match ctx.probes.status().iter().find(|(p, _)| p == probe) {
            Some((_, Status::Attached(_))) => {}
            Some((_, Status::Failed(why))) => {
                return Err(Unsupported::Probe {
                    probe: *probe,
                    source: Arc::clone(why),
                });
            }
            Some((_, Status::Absent(why))) => {
                return Err(Unsupported::ProbeAbsent {
                    probe: *probe,
                    why: *why,
                });
            }
            _ => return Err(Unsupported::ProbeNotLoaded(*probe)),
        }
    }
    Ok(())
}

/// Looks up a collector by name.
pub fn spec(name: &str) -> Option<&'static Spec> {
    COLLECTORS.iter().find(|s| s.name == name)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectorLabel {
    collector: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    collector: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    version: &'static str,
    kernel: String,
}

/// The state of one configured collector.
#[derive(Debug)]
pub enum Slot {
    Ready(Box<dyn Collect>),
    Unsupported(Unsupported),
}

/// Runs the enabled collectors and adds the self-metrics; registered once in the registry.
#[derive(Debug)]
pub struct Gatherer {
    slots: Vec<(&'static str, Slot)>,
    kernel: String,
    /// Cumulative skipped-item counts, `(collector, reason)` → count.
    errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Gatherer {
    /// Builds every enabled collector; an unsupported one is logged once, here.
    pub fn new(enabled: &[&'static str], ctx: &Context<'_>) -> Self {
        let mut slots = Vec::new();
        for spec in COLLECTORS.iter().filter(|s| enabled.contains(&s.name)) {
            let slot = match (spec.build)(ctx) {
                Ok(c) => Slot::Ready(c),
                Err(why) => {
                    tracing::warn!(collector = spec.name, reason = %crate::util::chain(&why), "collector unsupported on this host; it stays off");
                    Slot::Unsupported(why)
                }
            };
            slots.push((spec.name, slot));
        }
        Self {
            slots,
            kernel: crate::util::kernel_release(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// The configured collectors, for `podstat check`.
    pub fn slots(&self) -> &[(&'static str, Slot)] {
        &self.slots
    }
}

impl Collector for Gatherer {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut outcomes: Vec<(&'static str, bool, f64)> = Vec::with_capacity(self.slots.len());
        for (name, slot) in &self.slots {
            let Slot::Ready(collector) = slot else {
                continue;
            };
            let mut errors = ErrorCounts::default();
            let start = Instant::now();
            let result = collector.collect(&mut encoder, &mut errors);
            let elapsed = start.elapsed().as_secs_f64();
            let ok = match result {
                Ok(()) => true,
                // A broken writer means the response is lost anyway: stop.
                Err(CollectError::Encode(e)) => return Err(e),
                Err(why) => {
                    tracing::warn!(collector = name, error = %crate::util::chain(&why), "collector failed this scrape");
                    false
                }
            };
            outcomes.push((name, ok, elapsed));
            let mut totals = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            for (reason, n) in errors.iter() {
                *totals.entry((name, reason.as_str())).or_default() += n;
            }
        }

        let mut m = COLLECTOR_SUCCESS.encode(&mut encoder)?;
        for (collector, ok, _) in &outcomes {
            ConstGauge::new(i64::from(*ok))
                .encode(m.encode_family(&CollectorLabel { collector })?)?;
        }
        let mut m = COLLECTOR_DURATION_SECONDS.encode(&mut encoder)?;
        for (collector, _, secs) in &outcomes {
            ConstGauge::new(*secs).encode(m.encode_family(&CollectorLabel { collector })?)?;
        }
        let mut m = COLLECTOR_SUPPORTED.encode(&mut encoder)?;
        for (collector, slot) in &self.slots {
            let v = i64::from(matches!(slot, Slot::Ready(_)));
            ConstGauge::new(v).encode(m.encode_family(&CollectorLabel { collector })?)?;
        }
        let totals = self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !totals.is_empty() {
            let mut m = COLLECTOR_ERRORS.encode(&mut encoder)?;
            for ((collector, reason), n) in &totals {
                ConstCounter::new(*n)
                    .encode(m.encode_family(&ErrorLabel { collector, reason })?)?;
            }
        }
        let mut m = BUILD.encode(&mut encoder)?;
        m.encode_info(&BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            kernel: self.kernel.clone(),
        })?;
        Ok(())
    }
}
