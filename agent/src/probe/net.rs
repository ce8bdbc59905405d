//! Loading the receive-steering probes (`ebpf/src/net.rs`): offsets, topology map, attach
//! points chosen by what the kernel offers, and the aRFS driver lookup.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{FExit, KProbe},
};
use podstat_common::{
    net::{self as common, ArfsStats, NetOffsets, NetStats, Place, RxQueueKey},
    sched::Offsets,
};

use super::{Status, btf, btf::KernelBtf};
use crate::collector::net::Topology;
use crate::util::chain;

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

/// Map handles of the net probes.
pub struct NetMaps {
    pub stats: HashMap<MapData, u64, NetStats>,
    pub rx_queue: PerCpuHashMap<MapData, RxQueueKey, u64>,
    pub arfs: HashMap<MapData, u32, ArfsStats>,
    pub full: PerCpuArray<MapData, u64>,
}

/// The offsets the net programs need. `sched` supplies the task → cgroup chain.
pub fn resolve_offsets(
    k: &KernelBtf,
    sched: &Offsets,
    netns_inum: u32,
) -> Result<NetOffsets, btf::BtfError> {
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

fn tp_btf(ebpf: &mut Ebpf, prog: &str, tp: &str, btf: &Btf) -> Result<(), String> {
    super::attach_tp_btf(ebpf, prog, tp, btf)
}

/// Attaches the net programs; returns each probe's outcome.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    sysfs: &Path,
    legacy: bool,
) -> Vec<(&'static str, Status)> {
    let mut out = Vec::new();
    if let Err(why) = fill_topology(ebpf, sysfs) {
        for p in ["net_reader", "net_softirq"] {
            out.push((p, Status::Failed(format!("CPU topology map: {why}"))));
        }
    } else {
        // Reader side: sock_recv_length (6.3+, any protocol), else tcp_rcv_space_adjust.
        let newer = |ebpf: &mut Ebpf, prog: &str, tp: &str| {
            if legacy {
                Err(format!("{tp}: not used (--probe.net.legacy-hooks)"))
            } else {
                tp_btf(ebpf, prog, tp, btf)
            }
        };
        let reader = match newer(ebpf, common::NET_RECV_PROG, "sock_recv_length") {
            Ok(()) => Status::Attached("tp_btf/sock_recv_length"),
            Err(e1) => match tp_btf(ebpf, common::NET_RECV_TCP_PROG, "tcp_rcv_space_adjust", btf) {
                Ok(()) => Status::Attached("tp_btf/tcp_rcv_space_adjust (TCP only)"),
                Err(e2) => Status::Failed(format!("{e1}; {e2}")),
            },
        };
        out.push(("net_reader", reader));
        // Softirq side: sk_data_ready (6.3+, TCP and UDP), else tcp_probe.
        let softirq = match newer(ebpf, common::NET_READY_PROG, "sk_data_ready") {
            Ok(()) => Status::Attached("tp_btf/sk_data_ready"),
            Err(e1) => match tp_btf(ebpf, common::NET_READY_TCP_PROG, "tcp_probe", btf) {
                Ok(()) => Status::Attached("tp_btf/tcp_probe (TCP only)"),
                Err(e2) => Status::Failed(format!("{e1}; {e2}")),
            },
        };
        out.push(("net_softirq", softirq));
    }
    let rxq = tp_btf(ebpf, common::NET_RXQ_PROG, "netif_receive_skb", btf)
        .map_or_else(Status::Failed, |()| {
            Status::Attached("tp_btf/netif_receive_skb")
        });
    out.push(("net_rx_queue", rxq));
    out.push(("arfs", attach_arfs(ebpf, btf)));
    out
}

fn fill_topology(ebpf: &mut Ebpf, sysfs: &Path) -> Result<(), String> {
    let topo = Topology::read(sysfs);
    let map = ebpf
        .map_mut(common::CPU_PLACE_MAP)
        .ok_or_else(|| format!("map {} missing", common::CPU_PLACE_MAP))?;
    let mut array: Array<&mut MapData, Place> = Array::try_from(map).map_err(|e| chain(&e))?;
    for p in &topo.cpus {
        if p.cpu >= common::MAX_CPUS {
            continue;
        }
        array
            .set(
                p.cpu,
                Place {
                    llc: p.llc,
                    node: p.node,
                },
                0,
            )
            .map_err(|e| chain(&e))?;
    }
    Ok(())
}

/// The aRFS probe: a kprobe on every loaded driver's `ndo_rx_flow_steer`, and fexit (else a
/// kretprobe) on `rps_may_expire_flow`. Unsupported when no such driver is loaded.
fn attach_arfs(ebpf: &mut Ebpf, btf: &Btf) -> Status {
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
        return Status::Absent(format!(
            "unsupported on this host: no loaded NIC driver implements ndo_rx_flow_steer (looked for {} in /proc/kallsyms); aRFS rule churn cannot be seen on this host",
            ARFS_DRIVER_FUNCS.join(", ")
        ));
    }
    let steer = ebpf
        .program_mut(common::ARFS_STEER_PROG)
        .ok_or_else(|| "program arfs_steer missing".to_owned())
        .and_then(|p| <&mut KProbe>::try_from(p).map_err(|e| chain(&e)))
        .and_then(|p| {
            p.load().map_err(|e| chain(&e))?;
            for f in &found {
                p.attach(*f, 0)
                    .map_err(|e| format!("kprobe on {f}: {}", chain(&e)))?;
            }
            Ok(())
        });
    if let Err(why) = steer {
        return Status::Failed(why);
    }
    let fexit = ebpf
        .program_mut(common::ARFS_EXPIRE_FEXIT_PROG)
        .ok_or_else(|| "program arfs_expire_fexit missing".to_owned())
        .and_then(|p| <&mut FExit>::try_from(p).map_err(|e| chain(&e)))
        .and_then(|p| {
            p.load("rps_may_expire_flow", btf).map_err(|e| chain(&e))?;
            p.attach().map(|_| ()).map_err(|e| chain(&e))
        });
    if fexit.is_ok() {
        return Status::Attached("kprobe ndo_rx_flow_steer + fexit/rps_may_expire_flow");
    }
    let kret = ebpf
        .program_mut(common::ARFS_EXPIRE_KRETPROBE_PROG)
        .ok_or_else(|| "program arfs_expire_kretprobe missing".to_owned())
        .and_then(|p| <&mut KProbe>::try_from(p).map_err(|e| chain(&e)))
        .and_then(|p| {
            p.load().map_err(|e| chain(&e))?;
            p.attach("rps_may_expire_flow", 0)
                .map(|_| ())
                .map_err(|e| chain(&e))
        });
    match kret {
        Ok(()) => Status::Attached("kprobe ndo_rx_flow_steer + kretprobe/rps_may_expire_flow"),
        Err(e) => Status::Failed(format!(
            "rps_may_expire_flow: fexit: {}; kretprobe: {e}",
            fexit.err().unwrap_or_default()
        )),
    }
}

pub fn take_maps(ebpf: &mut Ebpf) -> Result<NetMaps, String> {
    Ok(NetMaps {
        stats: super::take(ebpf, common::NET_STATS_MAP)?,
        rx_queue: super::take(ebpf, common::RX_QUEUE_MAP)?,
        arfs: super::take(ebpf, common::ARFS_STATS_MAP)?,
        full: super::take(ebpf, common::NET_MAP_FULL_MAP)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The net offsets this kernel's BTF yields: all inside their structs, distinct where they
    /// must be. Runs without root (vmlinux BTF is world-readable).
    #[test]
    fn offsets_resolve_against_the_running_kernels_btf() {
        let k = KernelBtf::load(Path::new("/sys/kernel/btf/vmlinux")).expect("vmlinux BTF");
        let sched = super::super::resolve_offsets(&k)
            .expect("sched offsets")
            .offsets;
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
