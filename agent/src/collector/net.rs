//! `net` collector: the node's receive-steering configuration and softirq counters, no eBPF.
//!
//! Encoding only: the sources are in [`crate::netdev`], and this file maps what they parse to
//! metric families.
//!
//! - `/proc/net/softnet_stat`, per CPU: processed, dropped, time_squeeze, received_rps,
//!   flow_limit_count ([`softnet`]);
//! - per device and receive queue: the IRQ (`/proc/interrupts`, matched by the drivers' IRQ
//!   naming) and the CPUs it is affine to (`/proc/irq/<n>/smp_affinity_list`) ([`irq`]),
//!   `rps_cpus`, `rps_flow_cnt`, `net.core.rps_sock_flow_entries` ([`netdev`]); ntuple
//!   filtering (the aRFS switch) over ethtool netlink ([`ethtool`](crate::netdev::ethtool));
//! - the CPU topology (last-level cache and NUMA node per CPU), which the steering probe's
//!   locality classes use too ([`Topology`]).
//!
//! With the steering probe loaded (`ebpf/src/net.rs`) it also exports the per-pod steering
//! locality, flow migrations and per-queue packet counts (see [`steering`]).

pub mod steering;

use std::{
    io,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{Collect, CollectError, Context, Unsupported};
use crate::{
    cgroup::ErrorCounts,
    identity::IdMap,
    metric::Family,
    netdev::{
        Device, Error as NetdevError, Softnet, Topology,
        ethtool::{Ethtool, EthtoolError},
        irq, netdev,
        qstats::QueueCounts,
        softnet, topology,
    },
    probe::Probes,
    util::chain,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CpuLabel {
    cpu: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaceLabels {
    cpu: u32,
    llc: u32,
    numa_node: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    device: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IrqLabels {
    device: String,
    queue: String,
    irq: u32,
    cpu: u32,
}

/// The metric families this collector can export.
pub const FAMILIES: &[Family] = &[
    NODE_SOFTNET_PROCESSED,
    NODE_SOFTNET_DROPPED,
    NODE_SOFTNET_TIME_SQUEEZE,
    NODE_SOFTNET_RECEIVED_RPS,
    NODE_SOFTNET_FLOW_LIMIT,
    NODE_CPU_TOPOLOGY,
    NET_RX_QUEUE_IRQ_CPU,
    NET_RPS_CPUS,
    NET_RPS_FLOW_ENTRIES,
    NET_RPS_SOCK_FLOW_ENTRIES,
    NET_ARFS_ENABLED,
    steering::NET_RX_STEERING_PACKETS,
    steering::NET_FLOW_MIGRATIONS,
    steering::NET_RX_QUEUE_PACKETS,
    steering::NET_ARFS_STEER_REQUESTS,
    steering::NET_ARFS_EXPIRIES,
];

/// `podstat_node_softnet_processed_total`.
pub const NODE_SOFTNET_PROCESSED: Family = crate::counter!(
    "podstat_node_softnet_processed",
    "Packets this CPU took off its backlog or a NAPI poll in the receive softirq (/proc/net/softnet_stat column 1; a 32-bit kernel counter that wraps)."
);

/// `podstat_node_softnet_dropped_total`.
pub const NODE_SOFTNET_DROPPED: Family = crate::counter!(
    "podstat_node_softnet_dropped",
    "Packets dropped because this CPU's backlog was over net.core.netdev_max_backlog (softnet_stat column 2)."
);

/// `podstat_node_softnet_time_squeeze_total`.
pub const NODE_SOFTNET_TIME_SQUEEZE: Family = crate::counter!(
    "podstat_node_softnet_time_squeeze",
    "Times the receive softirq on this CPU stopped with work left, out of net.core.netdev_budget or time (softnet_stat column 3)."
);

/// `podstat_node_softnet_received_rps_total`.
pub const NODE_SOFTNET_RECEIVED_RPS: Family = crate::counter!(
    "podstat_node_softnet_received_rps",
    "Inter-processor interrupts this CPU received to process packets that RPS/RFS steered to it (softnet_stat column 10)."
);

/// `podstat_node_softnet_flow_limit_total`.
pub const NODE_SOFTNET_FLOW_LIMIT: Family = crate::counter!(
    "podstat_node_softnet_flow_limit",
    "Packets dropped on this CPU by RPS flow limiting (net.core.flow_limit_cpu_bitmap; softnet_stat column 11)."
);

/// `podstat_node_cpu_topology_info`.
pub const NODE_CPU_TOPOLOGY: Family = crate::info_family!(
    "podstat_node_cpu_topology",
    "Where each online CPU sits: its last-level cache (named by the lowest CPU sharing it) and NUMA node; the steering locality classes use this."
);

/// `podstat_net_rx_queue_irq_cpu`.
pub const NET_RX_QUEUE_IRQ_CPU: Family = crate::gauge!(
    "podstat_net_rx_queue_irq_cpu",
    "1 for each CPU the receive queue's IRQ is affine to (/proc/interrupts matched by driver naming, /proc/irq/<irq>/smp_affinity_list)."
);

/// `podstat_net_rps_cpus`.
pub const NET_RPS_CPUS: Family = crate::gauge!(
    "podstat_net_rps_cpus",
    "CPUs in the receive queue's RPS mask (queues/rx-<n>/rps_cpus); 0 means RPS is off for the queue."
);

/// `podstat_net_rps_flow_entries`.
pub const NET_RPS_FLOW_ENTRIES: Family = crate::gauge!(
    "podstat_net_rps_flow_entries",
    "Entries of the queue's RFS flow table (queues/rx-<n>/rps_flow_cnt); 0 means RFS is off for the queue."
);

/// `podstat_net_rps_sock_flow_entries`.
pub const NET_RPS_SOCK_FLOW_ENTRIES: Family = crate::gauge!(
    "podstat_net_rps_sock_flow_entries",
    "Entries of the global RFS socket flow table (net.core.rps_sock_flow_entries); 0 means RFS is off."
);

/// `podstat_net_arfs_enabled`.
pub const NET_ARFS_ENABLED: Family = crate::gauge!(
    "podstat_net_arfs_enabled",
    "1 if ntuple filtering (rx-ntuple-filter, which aRFS needs) is active on the device, from ethtool netlink ETHTOOL_MSG_FEATURES_GET."
);

/// A source that fails as a whole fails the scrape as a read of its file.
impl From<NetdevError> for CollectError {
    fn from(e: NetdevError) -> Self {
        match e {
            NetdevError::NoSoftnet { path, source } | NetdevError::Read { path, source } => {
                CollectError::Read { path, source }
            }
            NetdevError::Malformed { path, source } => CollectError::Read {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, source),
            },
        }
    }
}

#[derive(Debug)]
pub struct NetCollector {
    procfs: PathBuf,
    sysfs: PathBuf,
    /// The ethtool netlink socket, opened on first use; `Err` (why, already logged) once it is
    /// known not to work, so opening is tried once.
    ethtool: Mutex<Option<Result<Ethtool, EthtoolError>>>,
    /// The drivers' per-queue counters (qstats, ethtool -S), read when no per-packet probe
    /// counts the queues.
    queues: Mutex<QueueCounts>,
    probes: Arc<Probes>,
    identity: Arc<IdMap>,
}

impl NetCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        if let Err(NetdevError::NoSoftnet { path, .. }) = softnet::available(&ctx.paths.procfs) {
            return Err(Unsupported::Missing {
                path,
                what: softnet::MISSING,
            });
        }
        Ok(Box::new(Self {
            procfs: ctx.paths.procfs.clone(),
            sysfs: ctx.paths.sysfs.clone(),
            ethtool: Mutex::new(None),
            queues: Mutex::new(QueueCounts::default()),
            probes: Arc::clone(ctx.probes),
            identity: Arc::clone(ctx.identity),
        }))
    }

    /// ntuple state of `dev`, if ethtool netlink answers for a device with the same ifindex
    /// (a fixture tree's devices do not exist in this network namespace and get none).
    fn ntuple(&self, dev: &Device) -> Option<bool> {
        let mut guard = self.ethtool.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = guard.get_or_insert_with(|| {
            Ethtool::open().inspect_err(|e| {
                tracing::info!(reason = %chain(e), "ethtool netlink unavailable: {} not exported", NET_ARFS_ENABLED.exposed);
            })
        });
        let Ok(e) = slot else {
            return None;
        };
        match e.features(&dev.ids.name) {
            Ok(f) if Some(f.ifindex) == dev.ifindex => Some(f.ntuple),
            Ok(_) => None,
            Err(err) => {
                tracing::debug!(device = %dev.ids.name, error = %chain(&err), "ethtool FEATURES_GET");
                None
            }
        }
    }
}

impl Collect for NetCollector {
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        errors: &mut ErrorCounts,
    ) -> Result<(), CollectError> {
        type Field = fn(&Softnet) -> u64;
        let online = topology::online_cpus(&self.sysfs);
        let softnet = softnet::read(&self.procfs, &online, errors)?;
        let fields: [(&Family, Field); 5] = [
            (&NODE_SOFTNET_PROCESSED, |s| s.processed),
            (&NODE_SOFTNET_DROPPED, |s| s.dropped),
            (&NODE_SOFTNET_TIME_SQUEEZE, |s| s.time_squeeze),
            (&NODE_SOFTNET_RECEIVED_RPS, |s| s.received_rps),
            (&NODE_SOFTNET_FLOW_LIMIT, |s| s.flow_limit_count),
        ];
        for (family, get) in fields {
            let mut m = family.encode(enc)?;
            for row in &softnet {
                ConstCounter::new(get(row)).encode(m.encode_family(&CpuLabel { cpu: row.cpu })?)?;
            }
        }

        let topo = Topology::read(&self.sysfs);
        if !topo.cpus.is_empty() {
            let mut m = NODE_CPU_TOPOLOGY.encode(enc)?;
            for p in &topo.cpus {
                m.encode_info(&PlaceLabels {
                    cpu: p.cpu,
                    llc: p.llc,
                    numa_node: p.node,
                })?;
            }
        }

        let interrupts = irq::read_interrupts(&self.procfs).unwrap_or_else(|e| {
            errors.add(e.reason());
            Vec::new()
        });
        let devices = netdev::read_devices(&self.sysfs, &self.procfs, &interrupts, errors);

        let mut m = NET_RX_QUEUE_IRQ_CPU.encode(enc)?;
        for d in &devices {
            for q in &d.queues {
                for a in &q.irqs {
                    for &cpu in &a.cpus {
                        ConstGauge::new(1).encode(m.encode_family(&IrqLabels {
                            device: d.ids.name.clone(),
                            queue: q.queue.to_string(),
                            irq: a.irq,
                            cpu,
                        })?)?;
                    }
                }
            }
        }
        let mut m = NET_RPS_CPUS.encode(enc)?;
        for d in &devices {
            for q in &d.queues {
                if let Some(cpus) = &q.rps_cpus {
                    ConstGauge::new(i64::try_from(cpus.len()).unwrap_or(i64::MAX)).encode(
                        m.encode_family(&QueueLabels {
                            device: d.ids.name.clone(),
                            queue: q.queue.to_string(),
                        })?,
                    )?;
                }
            }
        }
        let mut m = NET_RPS_FLOW_ENTRIES.encode(enc)?;
        for d in &devices {
            for q in &d.queues {
                if let Some(n) = q.rps_flow_cnt {
                    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(
                        m.encode_family(&QueueLabels {
                            device: d.ids.name.clone(),
                            queue: q.queue.to_string(),
                        })?,
                    )?;
                }
            }
        }
        if let Some(n) = netdev::rps_sock_flow_entries(&self.procfs) {
            let m = NET_RPS_SOCK_FLOW_ENTRIES.encode(enc)?;
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m)?;
        }
        let arfs: Vec<(String, bool)> = devices
            .iter()
            .filter_map(|d| self.ntuple(d).map(|on| (d.ids.name.clone(), on)))
            .collect();
        if !arfs.is_empty() {
            let mut m = NET_ARFS_ENABLED.encode(enc)?;
            for (device, on) in arfs {
                ConstGauge::new(i64::from(on)).encode(m.encode_family(&DeviceLabel { device })?)?;
            }
        }

        steering::encode(enc, &self.probes, &self.identity, &devices)?;
        if !self.probes.attached(crate::probe::ProbeId::NetRxQueue) {
            self.encode_driver_queues(enc, &devices)?;
        }
        Ok(())
    }
}

impl NetCollector {
    /// Per-queue packets from the drivers' counters, when no per-packet probe counts them.
    fn encode_driver_queues(
        &self,
        enc: &mut DescriptorEncoder,
        devices: &[Device],
    ) -> Result<(), std::fmt::Error> {
        let named: Vec<(String, u32)> = devices
            .iter()
            .filter_map(|d| d.ifindex.map(|i| (d.ids.name.clone(), i)))
            .collect();
        let counts = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(&named, |what, e| {
                tracing::debug!(source = what, error = %chain(e), "per-queue packet counts");
            });
        steering::encode_driver_queues(enc, &counts)
    }
}
