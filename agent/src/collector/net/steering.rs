//! The per-pod and per-queue part of the `net` collector: what the net probes
//! (`ebpf/src/net.rs`) aggregated in the kernel.

use std::collections::BTreeMap;

use podstat_common::net::{LOCALITY_NAMES, NO_QUEUE};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::counter::ConstCounter,
};

use super::Device;
use crate::{
    collector::family::join,
    identity::IdMap,
    metric::Family,
    probe::{
        ProbeId, Probes,
        net::{Design, NetProbe},
    },
};

/// `podstat_net_rx_steering_packets_total`.
pub const NET_RX_STEERING_PACKETS: Family = crate::counter!(
    "podstat_net_rx_steering_packets",
    "By default (read-time steering) reads, not packets: reads by the container that returned data, 1 in N per CPU examined and counted N times (--probe.net.sample-every, default 16) while the read program is attached, ON out of every EVERY, each window's counts extrapolated over the time it stands for as timed and exported when it closes (--probe.net.duty-cycle, default 500ms/4s: 1/8 of the time, counted about 8 times), by where the socket's last packet was processed (sk_incoming_cpu, what SO_INCOMING_CPU returns) relative to the reading CPU: same_cpu, same_llc (another CPU sharing the last-level cache), same_node, remote_node (eBPF sock_recv_length or tcp_rcv_space_adjust; unconnected UDP sockets, which record no incoming CPU, are not counted). With --probe.net.per-packet: packets queued to the container's sockets, by where the softirq that queued them ran relative to the CPU the socket's reader last consumed data on (eBPF sk_data_ready or tcp_probe vs sock_recv_length or tcp_rcv_space_adjust)."
);

/// `podstat_net_flow_migrations_total`.
pub const NET_FLOW_MIGRATIONS: Family = crate::counter!(
    "podstat_net_flow_migrations",
    "Reads by the container on a socket that happened on another CPU than the socket's previous read: the thread movement that makes RFS and aRFS re-steer the flow. By default among the sampled reads only (a sampled read on another CPU than the socket's previous sampled read, also across the duty cycle's gaps; not scaled); with --probe.net.per-packet, every read."
);

/// `podstat_net_rx_queue_packets_total`.
pub const NET_RX_QUEUE_PACKETS: Family = crate::counter!(
    "podstat_net_rx_queue_packets",
    "Packets received on the device's receive queue, devices of podstat's network namespace. By default from the driver's own counters with cpu=\"all\": netdev netlink queue statistics rx-packets (6.9+, drivers with queue stats), else the driver's per-queue ethtool statistics; devices with neither are absent. With --probe.net.per-packet: by the CPU that processed them (eBPF netif_receive_skb; queue \"none\" when the driver records none)."
);

/// `podstat_net_arfs_steer_requests_total`.
pub const NET_ARFS_STEER_REQUESTS: Family = crate::counter!(
    "podstat_net_arfs_steer_requests",
    "Calls of the driver's ndo_rx_flow_steer: the kernel asked the NIC to steer a flow to the queue of the reader's CPU (aRFS rule installed or moved)."
);

/// `podstat_net_arfs_expiries_total`.
pub const NET_ARFS_EXPIRIES: Family = crate::counter!(
    "podstat_net_arfs_expiries",
    "rps_may_expire_flow calls that allowed the driver to remove an aRFS rule (device \"all\" when only a kretprobe could attach)."
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LocalityLabel {
    locality: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueCpuLabels {
    device: String,
    queue: String,
    /// The CPU that processed the packets (per-packet probe), or `all` (driver counters).
    cpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

/// The name of device `ifindex` in podstat's network namespace (`lo` is always ifindex 1),
/// else `ifindex<n>` (a device that went away since the packet was counted).
fn device_name(devices: &[Device], ifindex: u32) -> String {
    if ifindex == 1 {
        return "lo".to_owned();
    }
    devices
        .iter()
        .find(|d| d.ifindex == Some(ifindex))
        .map_or_else(|| format!("ifindex{ifindex}"), |d| d.ids.name.clone())
}

/// Encodes the per-queue packets the drivers count (`cpu="all"`: the driver does not know
/// which CPU processed them), when no per-packet probe counts them.
pub fn encode_driver_queues(
    enc: &mut DescriptorEncoder,
    counts: &[crate::netdev::qstats::DeviceQueues],
) -> Result<(), std::fmt::Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let mut m = NET_RX_QUEUE_PACKETS.encode(enc)?;
    for d in counts {
        for (q, n) in &d.packets {
            ConstCounter::new(*n).encode(m.encode_family(&QueueCpuLabels {
                device: d.device.clone(),
                queue: q.to_string(),
                cpu: "all".to_owned(),
            })?)?;
        }
    }
    Ok(())
}

/// Encodes the steering families, if the probes are loaded.
pub fn encode(
    enc: &mut DescriptorEncoder,
    probes: &Probes,
    identity: &IdMap,
    devices: &[Device],
) -> Result<(), std::fmt::Error> {
    let Some(net) = probes.unit::<NetProbe>() else {
        return Ok(());
    };
    let Some(maps) = net.maps() else {
        return Ok(());
    };
    // Duty-cycled, the locality counts are the windows' extrapolated ones, not the kernel's.
    let extrapolated = net.extrapolated();
    let stats = join(
        identity,
        maps.stats.iter().filter_map(Result::ok).map(|(id, mut s)| {
            if let Some(e) = &extrapolated {
                s.locality = e.get(id);
            }
            (id, s)
        }),
    );
    drop(extrapolated);
    let mut rxq: BTreeMap<(String, String, u32), u64> = BTreeMap::new();
    for (key, per_cpu) in maps.rx_queue.iter().filter_map(Result::ok) {
        let device = device_name(devices, key.ifindex);
        let queue = if key.queue == NO_QUEUE {
            "none".to_owned()
        } else {
            key.queue.to_string()
        };
        for (cpu, n) in (0u32..).zip(per_cpu.iter()) {
            if *n > 0 {
                *rxq.entry((device.clone(), queue.clone(), cpu)).or_default() += n;
            }
        }
    }
    let arfs: Vec<(u32, podstat_common::net::ArfsStats)> =
        maps.arfs.iter().filter_map(Result::ok).collect();
    drop(maps);
    let read_time = net.design() == Design::ReadTime;

    let reader = probes.attached(ProbeId::NetReader);
    // Read time: the reader program alone counts locality; per packet it needs the softirq side.
    if reader && (read_time || probes.attached(ProbeId::NetSoftirq)) {
        let mut m = NET_RX_STEERING_PACKETS.encode(enc)?;
        for (target, s) in &stats {
            for (locality, n) in LOCALITY_NAMES.iter().zip(s.locality) {
                ConstCounter::new(n)
                    .encode(m.encode_family(&(target.clone(), LocalityLabel { locality }))?)?;
            }
        }
    }
    if reader {
        let mut m = NET_FLOW_MIGRATIONS.encode(enc)?;
        for (target, s) in &stats {
            ConstCounter::new(s.migrations).encode(m.encode_family(target)?)?;
        }
    }
    if probes.attached(ProbeId::NetRxQueue) {
        let mut m = NET_RX_QUEUE_PACKETS.encode(enc)?;
        for ((device, queue, cpu), n) in rxq {
            ConstCounter::new(n).encode(m.encode_family(&QueueCpuLabels {
                device,
                queue,
                cpu: cpu.to_string(),
            })?)?;
        }
    }
    if probes.attached(ProbeId::Arfs) {
        let name = |ifindex: u32| {
            if ifindex == 0 {
                "all".to_owned()
            } else {
                device_name(devices, ifindex)
            }
        };
        let mut m = NET_ARFS_STEER_REQUESTS.encode(enc)?;
        for (ifindex, s) in &arfs {
            ConstCounter::new(s.steer).encode(m.encode_family(&DeviceLabel {
                device: name(*ifindex),
            })?)?;
        }
        let mut m = NET_ARFS_EXPIRIES.encode(enc)?;
        for (ifindex, s) in &arfs {
            ConstCounter::new(s.expire).encode(m.encode_family(&DeviceLabel {
                device: name(*ifindex),
            })?)?;
        }
    }
    Ok(())
}
