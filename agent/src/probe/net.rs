//! The receive-steering probes (`ebpf/src/net.rs`): reader CPU against the CPU that
//! processed each socket's packets, per pod; packets per receive queue; aRFS rule churn.
//! Attach points are chosen by what the kernel offers; the aRFS driver is looked up in
//! /proc/kallsyms.
//!
//! By default the read-time design runs: one program on the read path, no packet-side program
//! (`net_softirq` and `net_rx_queue` are not needed: the socket's `sk_incoming_cpu` says where
//! its packets were processed, and the `net` collector reads per-queue packet counts from the
//! driver). `--probe.net.per-packet` loads the per-packet design instead.

use std::{
    any::Any,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::tp_btf::BtfTracePointLinkId,
};
use podstat_common::{
    kernel::Offsets,
    net::{self as common, ArfsStats, NetOffsets, NetSampling, NetStats, Place, RxQueueKey},
};

use super::{
    Absence, AttachEnv, Attempts, Probe, ProbeError, ProbeId, Report, Status, Wanted,
    btf::{BtfError, KernelBtf},
    duty::{DutyCycle, Extrapolated, Window},
    kernel::{self, Shared, attach_tp_btf, attach_tp_btf_link, per_cpu_sum},
};
use crate::{identity::Diff, netdev::topology::Topology};

/// Drivers' `ndo_rx_flow_steer` implementations (aRFS), looked up in /proc/kallsyms.
pub const ARFS_DRIVER_FUNCS: &[&str] = &[
    "mlx5e_rx_flow_steer",
    "mlx4_en_filter_rfs",
    "ice_rx_flow_steer",
    "bnxt_rx_flow_steer",
    "efx_filter_rfs",
    "qede_rx_flow_steer",
    "hns3_rx_flow_steer",
    "sxgbe_rx_flow_steer",
];

const IDS: &[ProbeId] = &[
    ProbeId::NetReader,
    ProbeId::NetSoftirq,
    ProbeId::NetRxQueue,
    ProbeId::Arfs,
];

/// Map handles of the net probes.
pub struct NetMaps {
    pub stats: HashMap<MapData, u64, NetStats>,
    pub rx_queue: PerCpuHashMap<MapData, RxQueueKey, u64>,
    pub arfs: HashMap<MapData, u32, ArfsStats>,
    pub full: PerCpuArray<MapData, u64>,
}

/// Which steering design is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Design {
    /// The reading CPU against `sk_incoming_cpu` on 1 read in `sample_every`, each counting
    /// `sample_every` times.
    #[default]
    ReadTime,
    /// Every packet matched to its socket's reader (`--probe.net.per-packet`).
    PerPacket,
}

#[derive(Default)]
pub struct NetProbe {
    offsets: Option<Result<NetOffsets, Arc<ProbeError>>>,
    sampling: NetSampling,
    design: Design,
    /// Read-time design: when the reader program is attached ([`DutyCycle`]).
    duty: DutyCycle,
    maps: Option<Mutex<NetMaps>>,
    /// Read-time design: the reader program that attached, for the duty cycle.
    reader: Mutex<Option<ReaderLink>>,
    /// Read-time design, duty-cycled: the locality counts as exported.
    extrapolated: Mutex<Extrapolated>,
}

impl std::fmt::Debug for NetProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetProbe")
            .field("offsets", &self.offsets)
            .finish_non_exhaustive()
    }
}

/// Why `net_softirq` is not attached in the read-time design.
const SOFTIRQ_NOT_NEEDED: &str = "read-time steering: the reader compares its CPU with the socket's sk_incoming_cpu, no packet-side program (--probe.net.per-packet attaches it)";
/// Why `net_rx_queue` is not attached in the read-time design.
const RXQ_NOT_NEEDED: &str = "per-queue packet counts come from the driver's queue statistics (netdev netlink qstats, else ethtool -S); --probe.net.per-packet attaches it";

impl NetProbe {
    /// The steering design this probe loaded.
    pub fn design(&self) -> Design {
        self.design
    }

    /// When the reader program is attached (`--probe.net.duty-cycle`).
    pub fn duty(&self) -> DutyCycle {
        self.duty
    }

    /// The locality counts to export in place of the kernel's, when they are extrapolated
    /// from the duty cycle's windows: the read-time design with a cycle that detaches. `None`:
    /// the kernel's counts are the totals (always attached, or per packet).
    pub fn extrapolated(&self) -> Option<MutexGuard<'_, Extrapolated>> {
        (self.design == Design::ReadTime && self.duty.cycles()).then(|| {
            self.extrapolated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        })
    }

    /// Closes one of the duty cycle's windows: the kernel's locality counts now, weighted by
    /// what the window stands for ([`Extrapolated::close`]).
    pub fn close_window(&self, w: Window) {
        let Some(maps) = self.maps() else {
            return;
        };
        let raw: Vec<(u64, [u64; 4])> = maps
            .stats
            .iter()
            .filter_map(Result::ok)
            .map(|(id, s)| (id, s.locality))
            .collect();
        drop(maps);
        if let Some(mut e) = self.extrapolated() {
            e.close(raw, w, self.duty);
        }
    }

    /// The reader program's link, for the duty cycle (`None` when it did not attach, or in the
    /// per-packet design).
    pub fn reader(&self) -> MutexGuard<'_, Option<ReaderLink>> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The maps, locked, if they were taken.
    pub fn maps(&self) -> Option<MutexGuard<'_, NetMaps>> {
        self.maps
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The offsets the net programs need. `sched` supplies the task → cgroup chain.
pub fn resolve_offsets(
    k: &KernelBtf,
    sched: &Offsets,
    netns_inum: u32,
) -> Result<NetOffsets, BtfError> {
    Ok(NetOffsets {
        skb_dev: k.offset_of("sk_buff", "dev")?,
        skb_queue_mapping: k.offset_of("sk_buff", "queue_mapping")?,
        skb_hash: k.offset_of("sk_buff", "hash")?,
        // CONFIG_RPS: without it no RFS either, and the per-socket hook alone counts. 6.x keeps
        // it in sock_common (`#define sk_rxhash __sk_common.skc_rxhash`).
        sk_rxhash: k
            .offset_of_any("sock", &["sk_rxhash", "__sk_common.skc_rxhash"])
            .map_or(0, |(_, off)| off),
        sk_net: k.offset_of("sock", "__sk_common.skc_net.net")?,
        sk_incoming_cpu: k.offset_of("sock", "__sk_common.skc_incoming_cpu")?,
        dev_ifindex: k.offset_of("net_device", "ifindex")?,
        dev_nd_net: k.offset_of("net_device", "nd_net.net")?,
        net_ns_inum: k.offset_of("net", "ns.inum")?,
        netns_inum,
        task_cgroups: sched.task_cgroups,
        css_set_cpu_subsys: sched.css_set_cpu_subsys,
        css_cgroup: sched.css_cgroup,
        cgroup_kn: sched.cgroup_kn,
        kn_id: sched.kn_id,
        valid: 1,
    })
}

/// The inode of this process's network namespace (`/proc/self/ns/net`), 0 if unknown.
pub fn own_netns_inum() -> u32 {
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
        .unwrap_or(0)
}

/// The first hook of `chain` that attaches: (program, tracepoint, how it is described). With
/// it, the program that attached and its link (the duty cycle detaches and re-attaches it).
fn first_of(
    ebpf: &mut Ebpf,
    env: &AttachEnv<'_>,
    chain: &[(&'static str, &'static str, &'static str)],
) -> (Status, Option<ReaderLink>) {
    let mut why = Attempts::default();
    for (i, (prog, tp, how)) in chain.iter().enumerate() {
        // The first hook of each chain is the 6.3+ one that --probe.net.legacy-hooks skips.
        let r = if i == 0 && env.wanted.net_legacy_hooks {
            Err(ProbeError::NotUsed { point: tp })
        } else {
            attach_tp_btf_link(ebpf, prog, tp, env.btf)
        };
        match r {
            Ok(link) => {
                return (
                    Status::Attached(how),
                    Some(ReaderLink {
                        prog,
                        link: Some(link),
                    }),
                );
            }
            Err(e) => why.0.push(e),
        }
    }
    (Status::Failed(Arc::new(ProbeError::AllFailed(why))), None)
}

/// The read-time program and its link while attached (`None`: detached by the duty cycle).
#[derive(Debug)]
pub struct ReaderLink {
    pub prog: &'static str,
    pub link: Option<BtfTracePointLinkId>,
}

impl ReaderLink {
    /// Attaches (`on`) or detaches the program; nothing when it already is.
    pub fn set(&mut self, ebpf: &mut Ebpf, on: bool) -> Result<(), ProbeError> {
        let prog = self.prog;
        let p = kernel::tp_btf_program(ebpf, prog)?;
        match (on, self.link.take()) {
            (true, None) => {
                self.link = Some(p.attach().map_err(|source| ProbeError::Attach {
                    how: "tp_btf",
                    point: prog.to_owned(),
                    source,
                })?);
            }
            (false, Some(id)) => {
                p.detach(id).map_err(|source| ProbeError::Attach {
                    how: "tp_btf (detach)",
                    point: prog.to_owned(),
                    source,
                })?;
            }
            (_, same) => self.link = same,
        }
        Ok(())
    }
}

fn fill_topology(ebpf: &mut Ebpf, sysfs: &Path) -> Result<(), ProbeError> {
    let name = common::CPU_PLACE_MAP;
    let topo = Topology::read(sysfs);
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut array: Array<&mut MapData, Place> =
        Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    for p in &topo.cpus {
        if p.cpu >= common::MAX_CPUS {
            continue;
        }
        let place = Place {
            llc: p.llc,
            node: p.node,
        };
        array
            .set(p.cpu, place, 0)
            .map_err(|source| ProbeError::Map { name, source })?;
    }
    Ok(())
}

/// The aRFS probe: a kprobe on every loaded driver's `ndo_rx_flow_steer`, and fexit (else a
/// kretprobe) on `rps_may_expire_flow`. Absent when no such driver is loaded.
fn attach_arfs(ebpf: &mut Ebpf, env: &AttachEnv<'_>) -> Status {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let found: Vec<&str> = ARFS_DRIVER_FUNCS
        .iter()
        .copied()
        .filter(|f| {
            kallsyms.lines().any(|l| {
                let mut it = l.split_whitespace().skip(2);
                it.next() == Some(*f)
            })
        })
        .collect();
    if found.is_empty() {
        return Status::Absent(Absence::NoArfsDriver);
    }
    if let Err(why) = kernel::kprobe(ebpf, common::ARFS_STEER_PROG, &found) {
        return Status::Failed(Arc::new(why));
    }
    let expire = "rps_may_expire_flow";
    let fexit = kernel::fentry_fexit(
        ebpf,
        env.btf,
        common::ARFS_EXPIRE_FEXIT_PROG,
        expire,
        kernel::Hook::FExit,
    );
    let Err(fexit) = fexit else {
        return Status::Attached("kprobe ndo_rx_flow_steer + fexit/rps_may_expire_flow");
    };
    match kernel::kprobe(ebpf, common::ARFS_EXPIRE_KRETPROBE_PROG, &[expire]) {
        Ok(()) => Status::Attached("kprobe ndo_rx_flow_steer + kretprobe/rps_may_expire_flow"),
        Err(kret) => Status::Failed(Arc::new(ProbeError::AllFailed(Attempts(vec![fexit, kret])))),
    }
}

impl NetProbe {
    /// The read-time design: the reader program alone (`sock_recv_length`, else
    /// `tcp_rcv_space_adjust`), described with its sampling.
    fn attach_read_time(&self, ebpf: &mut Ebpf, env: &AttachEnv<'_>, report: &mut Report) {
        if let Err(why) = fill_topology(ebpf, env.sysfs) {
            let why = Arc::new(ProbeError::Topology(Box::new(why)));
            report.fail(&[ProbeId::NetReader], &why);
        } else {
            let (all, tcp) = match (self.sampling.weight == 1, self.duty.cycles()) {
                (true, false) => (
                    "tp_btf/sock_recv_length (read time: sk_incoming_cpu, every read)",
                    "tp_btf/tcp_rcv_space_adjust (read time: sk_incoming_cpu, every read; TCP only)",
                ),
                (false, false) => (
                    "tp_btf/sock_recv_length (read time: sk_incoming_cpu, sampled reads)",
                    "tp_btf/tcp_rcv_space_adjust (read time: sk_incoming_cpu, sampled reads; TCP only)",
                ),
                (true, true) => (
                    "tp_btf/sock_recv_length (read time: sk_incoming_cpu, every read, duty-cycled)",
                    "tp_btf/tcp_rcv_space_adjust (read time: sk_incoming_cpu, every read, duty-cycled; TCP only)",
                ),
                (false, true) => (
                    "tp_btf/sock_recv_length (read time: sk_incoming_cpu, sampled reads, duty-cycled)",
                    "tp_btf/tcp_rcv_space_adjust (read time: sk_incoming_cpu, sampled reads, duty-cycled; TCP only)",
                ),
            };
            let (reader, link) = first_of(
                ebpf,
                env,
                &[
                    (common::NET_READ_RECV_PROG, "sock_recv_length", all),
                    (common::NET_READ_TCP_PROG, "tcp_rcv_space_adjust", tcp),
                ],
            );
            report.record(ProbeId::NetReader, reader);
            *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = link;
        }
        report.record(ProbeId::NetSoftirq, Status::NotNeeded(SOFTIRQ_NOT_NEEDED));
        report.record(ProbeId::NetRxQueue, Status::NotNeeded(RXQ_NOT_NEEDED));
    }
}

impl Probe for NetProbe {
    fn ids(&self) -> &'static [ProbeId] {
        IDS
    }

    fn requested(&self, wanted: &Wanted) -> bool {
        wanted.net
    }

    fn resolve(&mut self, k: &KernelBtf, offsets: &mut Offsets, wanted: &Wanted) {
        self.design = if wanted.net_per_packet {
            Design::PerPacket
        } else {
            Design::ReadTime
        };
        self.duty = wanted.net_duty;
        let every = wanted.net_sample_every.max(1).next_power_of_two();
        self.sampling = NetSampling {
            mask: every - 1,
            weight: every,
        };
        self.offsets = Some(
            resolve_offsets(k, offsets, own_netns_inum())
                .map_err(|e| Arc::new(ProbeError::NetOffsets(e))),
        );
    }

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>, wanted: &Wanted) {
        loader.map_max_entries(common::NET_STATS_MAP, wanted.max_cgroups);
        if let Some(Ok(o)) = &self.offsets {
            loader.override_global(common::NET_OFFSETS_GLOBAL, o, true);
        }
        loader.override_global(common::NET_SAMPLING_GLOBAL, &self.sampling, true);
    }

    fn attach(&mut self, ebpf: &mut Ebpf, env: &AttachEnv<'_>, report: &mut Report) {
        match &self.offsets {
            Some(Ok(_)) => {}
            Some(Err(why)) => return report.fail(IDS, why),
            None => return,
        }
        if self.design == Design::ReadTime {
            self.attach_read_time(ebpf, env, report);
            report.record(ProbeId::Arfs, attach_arfs(ebpf, env));
            return;
        }
        if let Err(why) = fill_topology(ebpf, env.sysfs) {
            let why = Arc::new(ProbeError::Topology(Box::new(why)));
            report.fail(&[ProbeId::NetReader, ProbeId::NetSoftirq], &why);
        } else {
            // Reader side: sock_recv_length (6.3+, any protocol), else tcp_rcv_space_adjust.
            let (reader, _) = first_of(
                ebpf,
                env,
                &[
                    (
                        common::NET_RECV_PROG,
                        "sock_recv_length",
                        "tp_btf/sock_recv_length",
                    ),
                    (
                        common::NET_RECV_TCP_PROG,
                        "tcp_rcv_space_adjust",
                        "tp_btf/tcp_rcv_space_adjust (TCP only)",
                    ),
                ],
            );
            report.record(ProbeId::NetReader, reader);
            // Softirq side: sk_data_ready (6.3+, TCP and UDP), else tcp_probe.
            let (softirq, _) = first_of(
                ebpf,
                env,
                &[
                    (
                        common::NET_READY_PROG,
                        "sk_data_ready",
                        "tp_btf/sk_data_ready",
                    ),
                    (
                        common::NET_READY_TCP_PROG,
                        "tcp_probe",
                        "tp_btf/tcp_probe (TCP only)",
                    ),
                ],
            );
            report.record(ProbeId::NetSoftirq, softirq);
        }
        let rxq = attach_tp_btf(ebpf, common::NET_RXQ_PROG, "netif_receive_skb", env.btf)
            .map_or_else(
                |e| Status::Failed(Arc::new(e)),
                |()| Status::Attached("tp_btf/netif_receive_skb"),
            );
        report.record(ProbeId::NetRxQueue, rxq);
        report.record(ProbeId::Arfs, attach_arfs(ebpf, env));
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        self.maps = Some(Mutex::new(NetMaps {
            stats: kernel::take(ebpf, common::NET_STATS_MAP)?,
            rx_queue: kernel::take(ebpf, common::RX_QUEUE_MAP)?,
            arfs: kernel::take(ebpf, common::ARFS_STATS_MAP)?,
            full: kernel::take(ebpf, common::NET_MAP_FULL_MAP)?,
        }));
        Ok(())
    }

    fn forget(&self, diff: &Diff<'_>) {
        let Some(mut maps) = self.maps() else {
            return;
        };
        kernel::sweep(&mut maps.stats, |id| diff.is_live(*id));
    }

    fn overflows(&self, _shared: &Shared) -> Vec<(&'static str, u64)> {
        let Some(maps) = self.maps() else {
            return Vec::new();
        };
        common::NET_MAP_NAMES
            .iter()
            .zip(0u32..)
            .map(|(name, i)| (*name, per_cpu_sum(&maps.full, i)))
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The net offsets this kernel's BTF yields: all inside their structs, distinct where they
    /// must be. Runs without root (vmlinux BTF is world-readable).
    #[test]
    fn offsets_resolve_against_the_running_kernels_btf() {
        let k = KernelBtf::load(Path::new("/sys/kernel/btf/vmlinux")).expect("vmlinux BTF");
        let sched = kernel::resolve_offsets(&k).expect("sched offsets");
        let o = resolve_offsets(&k, &sched, own_netns_inum()).expect("net offsets");
        assert_eq!(o.valid, 1);
        assert_ne!(o.netns_inum, 0, "own network namespace inode");
        let skb = k.size_of("sk_buff").expect("sk_buff");
        for off in [o.skb_dev, o.skb_queue_mapping, o.skb_hash] {
            assert!(off < skb, "sk_buff offset {off} outside {skb}");
        }
        assert_ne!(o.skb_hash, o.skb_queue_mapping);
        assert!(o.dev_ifindex < k.size_of("net_device").expect("net_device"));
        assert!(o.net_ns_inum < k.size_of("net").expect("net"));
        assert!(o.sk_rxhash > 0 && o.sk_rxhash < k.size_of("sock").expect("sock"));
        assert!(o.sk_incoming_cpu > 0 && o.sk_incoming_cpu < k.size_of("sock").expect("sock"));
        assert_ne!(o.sk_incoming_cpu, o.sk_rxhash);
        assert_eq!(o.task_cgroups, sched.task_cgroups);
    }

    #[test]
    fn arfs_driver_functions_are_unique() {
        let mut v = ARFS_DRIVER_FUNCS.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), ARFS_DRIVER_FUNCS.len());
    }
}
