//! `net` collector: the node's receive-steering configuration and softirq counters, no eBPF.
//!
//! - `/proc/net/softnet_stat`, per CPU: processed, dropped, time_squeeze, received_rps,
//!   flow_limit_count;
//! - per device and receive queue: the IRQ (`/proc/interrupts`, matched by the drivers' IRQ
//!   naming) and the CPUs it is affine to (`/proc/irq/<n>/smp_affinity_list`), `rps_cpus`,
//!   `rps_flow_cnt`; `net.core.rps_sock_flow_entries`; ntuple filtering (the aRFS switch) over
//!   ethtool netlink ([`ethtool`]);
//! - the CPU topology (last-level cache and NUMA node per CPU), which the steering probe's
//!   locality classes use too ([`Topology`]).
//!
//! With the steering probe loaded (`ebpf/src/net.rs`) it also exports the per-pod steering
//! locality, flow migrations and per-queue packet counts (see [`steering`]).

pub mod ethtool;
pub mod steering;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{Collect, CollectError, Context, Unsupported};
use crate::{
    cgroup::{ErrorCounts, ErrorReason},
    identity::IdMap,
    probe::Probes,
};

/// One row of `/proc/net/softnet_stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Softnet {
    /// The CPU: the row's own index column (5.10+), else the row's position among the online
    /// CPUs (older kernels skip offline CPUs, so the row number is not the CPU number).
    pub cpu: u32,
    pub processed: u64,
    pub dropped: u64,
    pub time_squeeze: u64,
    pub received_rps: u64,
    pub flow_limit_count: u64,
}

/// Parses `/proc/net/softnet_stat`. Column layout (hex, one row per online CPU), from
/// <https://github.com/torvalds/linux/blob/v6.18/net/core/net-procfs.c>:
/// `processed dropped time_squeeze 0 0 0 0 0 cpu_collision(0) received_rps flow_limit_count`
/// (11 columns up to 5.9), then `backlog_len cpu_index` (13 columns, 5.10+), then
/// `input_qlen process_qlen` (15 columns, 6.4+). `online` maps row positions to CPUs when there
/// is no index column. Malformed rows are counted and skipped.
pub fn parse_softnet(text: &str, online: &[u32], errors: &mut ErrorCounts) -> Vec<Softnet> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let cols: Result<Vec<u64>, _> = line
            .split_whitespace()
            .map(|c| u64::from_str_radix(c, 16))
            .collect();
        let Ok(cols) = cols else {
            errors.add(ErrorReason::Malformed);
            continue;
        };
        if cols.len() < 11 {
            errors.add(ErrorReason::Malformed);
            continue;
        }
        let cpu = if cols.len() >= 13 {
            u32::try_from(cols[12]).ok()
        } else {
            online.get(i).copied()
        };
        let Some(cpu) = cpu else {
            errors.add(ErrorReason::Malformed);
            continue;
        };
        rows.push(Softnet {
            cpu,
            processed: cols[0],
            dropped: cols[1],
            time_squeeze: cols[2],
            received_rps: cols[9],
            flow_limit_count: cols[10],
        });
    }
    rows
}

/// Parses a CPU list (`0-3,8,10-11`), as in `smp_affinity_list`, `online`, `cpulist`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let s = s.trim();
    let mut cpus = Vec::new();
    if s.is_empty() {
        return Some(cpus);
    }
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// Parses a hex CPU mask in the kernel's `%*pb` form (`00000000,0000000f`), as in `rps_cpus`.
pub fn parse_cpu_mask(s: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    let mut bit = 0u32;
    for word in s.trim().rsplit(',') {
        let digits = word.trim();
        if digits.is_empty() || digits.len() > 8 {
            return None;
        }
        let v = u32::from_str_radix(digits, 16).ok()?;
        for b in 0..32 {
            if v & (1 << b) != 0 {
                cpus.push(bit + b);
            }
        }
        bit += 32;
    }
    Some(cpus)
}

/// Parses `/proc/interrupts` into (irq number, action names) for numbered IRQs. The names are
/// what follows the per-CPU counts and the chip columns: the last field, which may list several
/// actions separated by ", ".
pub fn parse_interrupts(text: &str) -> Vec<(u32, Vec<String>)> {
    let mut lines = text.lines();
    let ncpus = lines.next().map_or(0, |h| h.split_whitespace().count());
    let mut out = Vec::new();
    for line in lines {
        let Some((irq, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.trim().parse::<u32>() else {
            continue; // NMI, LOC, ERR, ...
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // counts, then chip name, hwirq / type, then the action names.
        if fields.len() <= ncpus + 1 {
            continue;
        }
        // Action names are joined with ", "; take the comma-separated tail after the last
        // field that does not end with ','.
        let tail = &fields[ncpus..];
        let mut start = tail.len() - 1;
        while start > 0 && tail[start - 1].ends_with(',') {
            start -= 1;
        }
        let names = tail[start..]
            .iter()
            .map(|n| n.trim_end_matches(',').to_owned())
            .collect();
        out.push((irq, names));
    }
    out
}

/// What identifies a device in IRQ names besides its own name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIds {
    pub name: String,
    /// PCI address (`0000:3b:00.0`), for mlx5 (`mlx5_comp3@pci:0000:3b:00.0`).
    pub pci: Option<String>,
    /// The virtio device (`virtio1`), for virtio-net (`virtio1-input.0`).
    pub virtio: Option<String>,
}

/// The receive queue an IRQ action name serves on this device, for the common drivers'
/// naming: `<dev>-TxRx-<n>` (bnxt, ixgbe) with an optional driver prefix (`ice-<dev>-TxRx-<n>`,
/// `i40e-<dev>-TxRx-<n>`), `<dev>-rx-<n>`, `virtio<k>-input.<n>`, `mlx5_comp<n>@pci:<addr>`
/// (completion vector n serves channel n), `<dev>-Tx-Rx-<n>` (ena).
pub fn irq_queue(action: &str, dev: &DeviceIds) -> Option<u32> {
    let num = |s: &str| s.parse::<u32>().ok();
    if let Some(q) = dev.virtio.as_ref().and_then(|v| {
        action
            .strip_prefix(v.as_str())
            .and_then(|r| r.strip_prefix("-input."))
    }) {
        return num(q);
    }
    if let Some((n, at)) = action
        .strip_prefix("mlx5_comp")
        .and_then(|r| r.split_once('@'))
    {
        return (dev.pci.is_some() && at.strip_prefix("pci:") == dev.pci.as_deref())
            .then(|| num(n))
            .flatten();
    }
    // `<dev>-<kind>-<n>`, or `<driver>-<dev>-<kind>-<n>`.
    let after = action
        .strip_prefix(dev.name.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .or_else(|| {
            let needle = format!("-{}-", dev.name);
            let at = action.find(&needle)?;
            let prefix = &action[..at];
            (!prefix.is_empty() && !prefix.contains('-')).then(|| &action[at + needle.len()..])
        })?;
    let (kind, n) = after.rsplit_once('-')?;
    matches!(kind, "TxRx" | "Tx-Rx" | "rx" | "Rx" | "txrx" | "fp")
        .then(|| num(n))
        .flatten()
}

/// Per-CPU placement: last-level cache and NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPlace {
    pub cpu: u32,
    /// The LLC, named by the lowest CPU that shares it (`shared_cpu_list` of the highest-level
    /// unified cache); the CPU itself when sysfs shows no cache.
    pub llc: u32,
    /// The NUMA node (`/sys/devices/system/node/node<n>/cpulist`); 0 without NUMA.
    pub node: u32,
}

/// The CPU topology from sysfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub cpus: Vec<CpuPlace>,
}

impl Topology {
    /// Reads the online CPUs' LLC and NUMA node under `sysfs`.
    pub fn read(sysfs: &Path) -> Self {
        let cpu_dir = sysfs.join("devices/system/cpu");
        let online = online_cpus(sysfs);
        let mut node_of = BTreeMap::new();
        if let Ok(dir) = fs::read_dir(sysfs.join("devices/system/node")) {
            for e in dir.filter_map(Result::ok) {
                let name = e.file_name();
                let Some(n) = name
                    .to_str()
                    .and_then(|s| s.strip_prefix("node"))
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let list = fs::read_to_string(e.path().join("cpulist")).unwrap_or_default();
                for cpu in parse_cpu_list(&list).unwrap_or_default() {
                    node_of.insert(cpu, n);
                }
            }
        }
        let cpus = online
            .iter()
            .map(|&cpu| CpuPlace {
                cpu,
                llc: llc_of(&cpu_dir.join(format!("cpu{cpu}/cache"))).unwrap_or(cpu),
                node: node_of.get(&cpu).copied().unwrap_or(0),
            })
            .collect();
        Self { cpus }
    }

    pub fn get(&self, cpu: u32) -> Option<&CpuPlace> {
        self.cpus.iter().find(|p| p.cpu == cpu)
    }
}

/// The lowest CPU sharing the highest-level unified (or data) cache under `cache_dir`.
fn llc_of(cache_dir: &Path) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None;
    for e in fs::read_dir(cache_dir).ok()?.filter_map(Result::ok) {
        if !e.file_name().to_string_lossy().starts_with("index") {
            continue;
        }
        let p = e.path();
        let kind = fs::read_to_string(p.join("type")).unwrap_or_default();
        if !matches!(kind.trim(), "Unified" | "Data") {
            continue;
        }
        let Some(level) = fs::read_to_string(p.join("level"))
            .ok()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let Some(first) = fs::read_to_string(p.join("shared_cpu_list"))
            .ok()
            .and_then(|l| parse_cpu_list(&l))
            .and_then(|l| l.into_iter().min())
        else {
            continue;
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, first));
        }
    }
    best.map(|(_, first)| first)
}

/// The online CPUs (`devices/system/cpu/online`), or the `cpu<n>` directories.
pub fn online_cpus(sysfs: &Path) -> Vec<u32> {
    let cpu_dir = sysfs.join("devices/system/cpu");
    if let Some(list) = fs::read_to_string(cpu_dir.join("online"))
        .ok()
        .and_then(|s| parse_cpu_list(&s))
    {
        return list;
    }
    let mut cpus: Vec<u32> = fs::read_dir(&cpu_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|s| s.strip_prefix("cpu"))
                        .and_then(|s| s.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    cpus.sort_unstable();
    cpus
}

/// One receive queue's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxQueue {
    pub queue: u32,
    /// CPUs in `rps_cpus` (empty: RPS off). `None` when the kernel has no RPS (no file).
    pub rps_cpus: Option<Vec<u32>>,
    pub rps_flow_cnt: Option<u64>,
    /// IRQs serving this queue, with the CPUs each is affine to.
    pub irqs: Vec<(u32, Vec<u32>)>,
}

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub ids: DeviceIds,
    pub ifindex: Option<u32>,
    pub queues: Vec<RxQueue>,
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Reads the devices under `sysfs/class/net` (all but `lo`) with their receive queues, and
/// matches IRQs from `interrupts` to queues; affinities from `procfs/irq/<n>/smp_affinity_list`.
pub fn read_devices(
    sysfs: &Path,
    procfs: &Path,
    interrupts: &[(u32, Vec<String>)],
    errors: &mut ErrorCounts,
) -> Vec<Device> {
    let class = sysfs.join("class/net");
    let Ok(dir) = fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let mut devices = Vec::new();
    for name in names {
        let dev_dir = class.join(&name);
        // The bus device: `device` links to the PCI function or the virtio device.
        let (pci, virtio) = match fs::canonicalize(dev_dir.join("device")) {
            Ok(target) => {
                let base = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned);
                match base {
                    Some(b) if b.starts_with("virtio") => {
                        let parent_pci = target
                            .parent()
                            .and_then(|p| p.file_name())
                            .and_then(|n| n.to_str())
                            .map(str::to_owned);
                        (parent_pci, Some(b))
                    }
                    Some(b) => (Some(b), None),
                    None => (None, None),
                }
            }
            Err(_) => (None, None),
        };
        let ids = DeviceIds {
            name: name.clone(),
            pci,
            virtio,
        };
        let ifindex = read_trim(&dev_dir.join("ifindex")).and_then(|s| s.parse().ok());
        let mut queues = Vec::new();
        if let Ok(qdir) = fs::read_dir(dev_dir.join("queues")) {
            for e in qdir.filter_map(Result::ok) {
                let fname = e.file_name();
                let Some(q) = fname
                    .to_str()
                    .and_then(|s| s.strip_prefix("rx-"))
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let rps_cpus = read_trim(&e.path().join("rps_cpus")).and_then(|m| {
                    let parsed = parse_cpu_mask(&m);
                    if parsed.is_none() {
                        errors.add(ErrorReason::Malformed);
                    }
                    parsed
                });
                let rps_flow_cnt =
                    read_trim(&e.path().join("rps_flow_cnt")).and_then(|s| s.parse().ok());
                queues.push(RxQueue {
                    queue: q,
                    rps_cpus,
                    rps_flow_cnt,
                    irqs: Vec::new(),
                });
            }
        }
        queues.sort_by_key(|q| q.queue);
        for (irq, actions) in interrupts {
            for action in actions {
                let Some(q) = irq_queue(action, &ids) else {
                    continue;
                };
                let Some(queue) = queues.iter_mut().find(|x| x.queue == q) else {
                    continue;
                };
                let path = procfs.join(format!("irq/{irq}/smp_affinity_list"));
                let cpus = if let Ok(s) = fs::read_to_string(&path) {
                    parse_cpu_list(&s).unwrap_or_else(|| {
                        errors.add(ErrorReason::Malformed);
                        Vec::new()
                    })
                } else {
                    errors.add(ErrorReason::Unreadable);
                    Vec::new()
                };
                queue.irqs.push((*irq, cpus));
            }
        }
        devices.push(Device {
            ids,
            ifindex,
            queues,
        });
    }
    devices
}

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

/// The metric families this collector can export (README reference test).
pub const FAMILIES: &[&str] = &[
    "podstat_node_softnet_processed_total",
    "podstat_node_softnet_dropped_total",
    "podstat_node_softnet_time_squeeze_total",
    "podstat_node_softnet_received_rps_total",
    "podstat_node_softnet_flow_limit_total",
    "podstat_node_cpu_topology_info",
    "podstat_net_rx_queue_irq_cpu",
    "podstat_net_rps_cpus",
    "podstat_net_rps_flow_entries",
    "podstat_net_rps_sock_flow_entries",
    "podstat_net_arfs_enabled",
    "podstat_net_rx_steering_packets_total",
    "podstat_net_flow_migrations_total",
    "podstat_net_rx_queue_packets_total",
    "podstat_net_arfs_steer_requests_total",
    "podstat_net_arfs_expiries_total",
];

#[derive(Debug)]
pub struct NetCollector {
    procfs: PathBuf,
    sysfs: PathBuf,
    /// The ethtool netlink socket, opened on first use; `Err` once it is known not to work.
    ethtool: Mutex<Option<Result<ethtool::Ethtool, String>>>,
    probes: Arc<Probes>,
    identity: Arc<IdMap>,
}

impl NetCollector {
    pub fn build(ctx: &Context<'_>) -> Result<Box<dyn Collect>, Unsupported> {
        let softnet = ctx.paths.procfs.join("net/softnet_stat");
        if !softnet.exists() {
            return Err(Unsupported::Missing {
                path: softnet,
                what: "kernel without CONFIG_NET or procfs not mounted there",
            });
        }
        Ok(Box::new(Self {
            procfs: ctx.paths.procfs.clone(),
            sysfs: ctx.paths.sysfs.clone(),
            ethtool: Mutex::new(None),
            probes: Arc::clone(ctx.probes),
            identity: Arc::clone(ctx.identity),
        }))
    }

    /// ntuple state of `dev`, if ethtool netlink answers for a device with the same ifindex
    /// (a fixture tree's devices do not exist in this network namespace and get none).
    fn ntuple(&self, dev: &Device) -> Option<bool> {
        let mut guard = self.ethtool.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = guard.get_or_insert_with(|| {
            ethtool::Ethtool::open().map_err(|e| {
                let why = crate::util::chain(&e);
                tracing::info!(reason = %why, "ethtool netlink unavailable: podstat_net_arfs_enabled not exported");
                why
            })
        });
        let Ok(e) = slot else {
            return None;
        };
        match e.features(&dev.ids.name) {
            Ok(f) if Some(f.ifindex) == dev.ifindex => Some(f.ntuple),
            Ok(_) => None,
            Err(err) => {
                tracing::debug!(device = %dev.ids.name, error = %crate::util::chain(&err), "ethtool FEATURES_GET");
                None
            }
        }
    }
}

impl Collect for NetCollector {
    #[expect(
        clippy::too_many_lines,
        reason = "one family after the other, in exposition order"
    )]
    fn collect(
        &self,
        enc: &mut DescriptorEncoder,
        errors: &mut ErrorCounts,
    ) -> Result<(), CollectError> {
        type Field = fn(&Softnet) -> u64;
        let online = online_cpus(&self.sysfs);
        let softnet_path = self.procfs.join("net/softnet_stat");
        let text = fs::read_to_string(&softnet_path).map_err(|source| CollectError::Read {
            path: softnet_path.clone(),
            source,
        })?;
        let softnet = parse_softnet(&text, &online, errors);
        let fields: [(&str, &str, Field); 5] = [
            (
                "podstat_node_softnet_processed",
                "Packets this CPU took off its backlog or a NAPI poll in the receive softirq (/proc/net/softnet_stat column 1; a 32-bit kernel counter that wraps).",
                |s| s.processed,
            ),
            (
                "podstat_node_softnet_dropped",
                "Packets dropped because this CPU's backlog was over net.core.netdev_max_backlog (softnet_stat column 2).",
                |s| s.dropped,
            ),
            (
                "podstat_node_softnet_time_squeeze",
                "Times the receive softirq on this CPU stopped with work left, out of net.core.netdev_budget or time (softnet_stat column 3).",
                |s| s.time_squeeze,
            ),
            (
                "podstat_node_softnet_received_rps",
                "Inter-processor interrupts this CPU received to process packets that RPS/RFS steered to it (softnet_stat column 10).",
                |s| s.received_rps,
            ),
            (
                "podstat_node_softnet_flow_limit",
                "Packets dropped on this CPU by RPS flow limiting (net.core.flow_limit_cpu_bitmap; softnet_stat column 11).",
                |s| s.flow_limit_count,
            ),
        ];
        for (name, help, get) in fields {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in &softnet {
                ConstCounter::new(get(row)).encode(m.encode_family(&CpuLabel { cpu: row.cpu })?)?;
            }
        }

        let topo = Topology::read(&self.sysfs);
        if !topo.cpus.is_empty() {
            let mut m = enc.encode_descriptor(
                "podstat_node_cpu_topology",
                "Where each online CPU sits: its last-level cache (named by the lowest CPU sharing it) and NUMA node; the steering locality classes use this.",
                None,
                MetricType::Info,
            )?;
            for p in &topo.cpus {
                m.encode_info(&PlaceLabels {
                    cpu: p.cpu,
                    llc: p.llc,
                    numa_node: p.node,
                })?;
            }
        }

        let interrupts = if let Ok(t) = fs::read_to_string(self.procfs.join("interrupts")) {
            parse_interrupts(&t)
        } else {
            errors.add(ErrorReason::Unreadable);
            Vec::new()
        };
        let devices = read_devices(&self.sysfs, &self.procfs, &interrupts, errors);

        let mut m = enc.encode_descriptor(
            "podstat_net_rx_queue_irq_cpu",
            "1 for each CPU the receive queue's IRQ is affine to (/proc/interrupts matched by driver naming, /proc/irq/<irq>/smp_affinity_list).",
            None,
            MetricType::Gauge,
        )?;
        for d in &devices {
            for q in &d.queues {
                for (irq, cpus) in &q.irqs {
                    for cpu in cpus {
                        ConstGauge::new(1).encode(m.encode_family(&IrqLabels {
                            device: d.ids.name.clone(),
                            queue: q.queue.to_string(),
                            irq: *irq,
                            cpu: *cpu,
                        })?)?;
                    }
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "podstat_net_rps_cpus",
            "CPUs in the receive queue's RPS mask (queues/rx-<n>/rps_cpus); 0 means RPS is off for the queue.",
            None,
            MetricType::Gauge,
        )?;
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
        let mut m = enc.encode_descriptor(
            "podstat_net_rps_flow_entries",
            "Entries of the queue's RFS flow table (queues/rx-<n>/rps_flow_cnt); 0 means RFS is off for the queue.",
            None,
            MetricType::Gauge,
        )?;
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
        let sock_flow = self.procfs.join("sys/net/core/rps_sock_flow_entries");
        if let Some(n) = read_trim(&sock_flow).and_then(|s| s.parse::<i64>().ok()) {
            let m = enc.encode_descriptor(
                "podstat_net_rps_sock_flow_entries",
                "Entries of the global RFS socket flow table (net.core.rps_sock_flow_entries); 0 means RFS is off.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(n).encode(m)?;
        }
        let arfs: Vec<(String, bool)> = devices
            .iter()
            .filter_map(|d| self.ntuple(d).map(|on| (d.ids.name.clone(), on)))
            .collect();
        if !arfs.is_empty() {
            let mut m = enc.encode_descriptor(
                "podstat_net_arfs_enabled",
                "1 if ntuple filtering (rx-ntuple-filter, which aRFS needs) is active on the device, from ethtool netlink ETHTOOL_MSG_FEATURES_GET.",
                None,
                MetricType::Gauge,
            )?;
            for (device, on) in arfs {
                ConstGauge::new(i64::from(on)).encode(m.encode_family(&DeviceLabel { device })?)?;
            }
        }

        steering::encode(enc, &self.probes, &self.identity, &devices)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/net");

    fn fixture(name: &str) -> String {
        fs::read_to_string(Path::new(FIXTURES).join(name))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    #[test]
    fn softnet_layouts_of_several_kernels() {
        // (fixture, online CPUs, expected (cpu, processed, dropped, squeeze, rps, flow_limit))
        type Row = (u32, u64, u64, u64, u64, u64);
        let cases: &[(&str, &[u32], &[Row])] = &[
            (
                // 4.19: 11 columns; CPU 1 offline, so row 1 is CPU 2.
                "softnet_stat-4.19",
                &[0, 2, 3],
                &[
                    (0, 0x1a2b, 0, 3, 0x10, 0),
                    (2, 0xff, 1, 0, 0x20, 2),
                    (3, 0, 0, 0, 0, 0),
                ],
            ),
            (
                // 5.10: 13 columns, the last is the CPU; CPU 1 offline.
                "softnet_stat-5.10",
                &[],
                &[
                    (0, 0x0010_0000, 5, 7, 0x0101, 1),
                    (2, 0x2000, 0, 1, 0x1ff, 0),
                ],
            ),
            (
                // 6.18: 15 columns (input and process queue lengths at the end).
                "softnet_stat-6.18",
                &[],
                &[(0, 0xb6, 0, 0, 0, 0), (1, 0x2af6, 0, 0, 0, 0)],
            ),
        ];
        for (file, online, want) in cases {
            let mut errors = ErrorCounts::default();
            let got: Vec<Row> = parse_softnet(&fixture(file), online, &mut errors)
                .iter()
                .map(|s| {
                    (
                        s.cpu,
                        s.processed,
                        s.dropped,
                        s.time_squeeze,
                        s.received_rps,
                        s.flow_limit_count,
                    )
                })
                .collect();
            assert_eq!(&got, want, "{file}");
            assert_eq!(errors.total(), 0, "{file}");
        }
        let mut errors = ErrorCounts::default();
        let rows = parse_softnet("zz 00\n00000001 00000002\n", &[0, 1], &mut errors);
        assert!(rows.is_empty());
        assert_eq!(errors.get(ErrorReason::Malformed), 2);
    }

    #[test]
    fn cpu_lists_and_masks() {
        for (s, want) in [
            ("0-3,8,10-11", Some(vec![0, 1, 2, 3, 8, 10, 11])),
            ("5\n", Some(vec![5])),
            ("", Some(vec![])),
            ("3-1", None),
            ("x", None),
        ] {
            assert_eq!(parse_cpu_list(s), want, "{s:?}");
        }
        for (s, want) in [
            ("0\n", Some(vec![])),
            ("f", Some(vec![0, 1, 2, 3])),
            ("00000001,00000000", Some(vec![32])),
            ("00000000,00000000,00000005", Some(vec![0, 2])),
            ("g", None),
        ] {
            assert_eq!(parse_cpu_mask(s), want, "{s:?}");
        }
    }

    /// IRQ naming of mlx5, ice, i40e, bnxt, virtio-net and ENA, from real `/proc/interrupts`
    /// files.
    #[test]
    fn interrupts_matched_to_queues_per_driver() {
        type Case = (&'static str, DeviceIds, Vec<(u32, u32)>);
        let dev = |name: &str, pci: Option<&str>, virtio: Option<&str>| DeviceIds {
            name: name.into(),
            pci: pci.map(Into::into),
            virtio: virtio.map(Into::into),
        };
        // (fixture, device, expected (irq, queue))
        let cases: Vec<Case> = vec![
            (
                "interrupts-mlx5",
                dev("enp59s0f0np0", Some("0000:3b:00.0"), None),
                vec![(98, 0), (99, 1), (100, 2), (101, 3)],
            ),
            (
                "interrupts-ice",
                dev("ens2f0", Some("0000:17:00.0"), None),
                vec![(120, 0), (121, 1), (122, 2)],
            ),
            (
                "interrupts-i40e",
                dev("eno1", Some("0000:1a:00.0"), None),
                vec![(60, 0), (61, 1)],
            ),
            (
                "interrupts-bnxt",
                dev("eth1", Some("0000:5e:00.0"), None),
                vec![(140, 0), (141, 1), (142, 2)],
            ),
            (
                "interrupts-virtio",
                dev("eth0", Some("0000:00:03.0"), Some("virtio1")),
                vec![(25, 0), (27, 1)],
            ),
            (
                "interrupts-ena",
                dev("ens5", Some("0000:00:05.0"), None),
                vec![(27, 0), (28, 1)],
            ),
        ];
        for (file, d, want) in cases {
            let irqs = parse_interrupts(&fixture(file));
            let mut got: Vec<(u32, u32)> = irqs
                .iter()
                .flat_map(|(irq, names)| {
                    names
                        .iter()
                        .filter_map(|n| irq_queue(n, &d).map(|q| (*irq, q)))
                })
                .collect();
            got.sort_unstable();
            assert_eq!(got, want, "{file} for {}", d.name);
        }
        // A device whose name prefixes another's does not take its IRQs.
        let eth1 = dev("eth1", None, None);
        assert_eq!(irq_queue("eth10-TxRx-0", &eth1), None);
        assert_eq!(irq_queue("eth1-TxRx-3", &eth1), Some(3));
        assert_eq!(irq_queue("eth1-tx-3", &eth1), None);
        assert_eq!(irq_queue("i40e-eth1-TxRx-2", &eth1), Some(2));
        assert_eq!(irq_queue("i40e-0000:1a:00.0:misc", &eth1), None);
    }

    #[test]
    fn shared_interrupt_names_are_split() {
        let text = "           CPU0       CPU1\n  9:          0          0   IO-APIC    9-fasteoi   acpi\n 11:         1          2   IO-APIC   11-fasteoi   uhci_hcd:usb1, eth0-rx-0\nNMI:          0          0   Non-maskable interrupts\n";
        assert_eq!(
            parse_interrupts(text),
            vec![
                (9, vec!["acpi".to_owned()]),
                (11, vec!["uhci_hcd:usb1".to_owned(), "eth0-rx-0".to_owned()]),
            ]
        );
    }

    #[test]
    fn topology_of_a_two_socket_fixture() {
        let sys = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hosts/net-mlx5/sys"
        ));
        let t = Topology::read(sys);
        let got: Vec<(u32, u32, u32)> = t.cpus.iter().map(|p| (p.cpu, p.llc, p.node)).collect();
        assert_eq!(got, vec![(0, 0, 0), (1, 0, 0), (2, 2, 1), (3, 2, 1)]);
    }

    /// The running host's topology: every online CPU placed, LLCs and nodes are CPUs/nodes
    /// that exist.
    #[test]
    fn topology_of_this_host() {
        let t = Topology::read(Path::new("/sys"));
        let online = online_cpus(Path::new("/sys"));
        assert_eq!(t.cpus.len(), online.len());
        for p in &t.cpus {
            assert!(online.contains(&p.llc), "{p:?}");
        }
    }
}
