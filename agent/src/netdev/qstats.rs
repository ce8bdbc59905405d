//! Packets per receive queue from the driver's own counters, with no program on the packet path:
//! the netdev netlink family's queue statistics (`NETDEV_CMD_QSTATS_GET` with scope queue,
//! Linux 6.9+, drivers that implement `netdev_stat_ops`), else the driver's ethtool statistics
//! (`ETHTOOL_GSTRINGS`/`ETHTOOL_GSTATS`, the `ethtool -S` ioctl; every kernel) under the
//! per-queue names the drivers use.
//!
//! What each gives, on the kernels and drivers podstat knows (docs/probes.md has the table):
//! qstats `rx-packets` is defined by the kernel ("wire packets successfully received and passed
//! to the stack", per queue since the last reconfiguration); the ethtool names are each driver's
//! own. Constants from <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/netdev.h>
//! and `include/uapi/linux/ethtool.h`.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::genl::{Genl, GenlError, attrs_of, put_attr, uint};

const NETDEV_CMD_QSTATS_GET: u8 = 12;
const NETDEV_A_QSTATS_IFINDEX: u16 = 1;
const NETDEV_A_QSTATS_QUEUE_TYPE: u16 = 2;
const NETDEV_A_QSTATS_QUEUE_ID: u16 = 3;
const NETDEV_A_QSTATS_SCOPE: u16 = 4;
const NETDEV_A_QSTATS_RX_PACKETS: u16 = 8;
const NETDEV_QUEUE_TYPE_RX: u64 = 0;
const NETDEV_QSTATS_SCOPE_QUEUE: u32 = 1;

/// Where a device's per-queue counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// netdev netlink `qstats-get`, `rx-packets`.
    Qstats,
    /// The driver's ethtool statistics, by the named per-queue pattern.
    Ethtool(&'static str),
}

/// `rx-packets` per (ifindex, receive queue) from one qstats dump of this network namespace.
/// Devices whose driver has no queue statistics are absent.
pub fn qstats_rx_packets(g: &mut Genl) -> Result<BTreeMap<(u32, u32), u64>, GenlError> {
    let mut attrs = Vec::new();
    put_attr(
        &mut attrs,
        NETDEV_A_QSTATS_SCOPE,
        &NETDEV_QSTATS_SCOPE_QUEUE.to_ne_bytes(),
    );
    let replies = g.dump(NETDEV_CMD_QSTATS_GET, 1, &attrs)?;
    Ok(parse_qstats(&replies))
}

/// Opens a socket on the `netdev` family (6.5+; queue statistics 6.9+).
pub fn open_netdev() -> Result<Genl, GenlError> {
    Genl::open("netdev", "kernel before 6.5 (queue statistics need 6.9)")
}

/// The rx queues' `rx-packets` of a qstats dump's messages.
pub fn parse_qstats(replies: &[Vec<u8>]) -> BTreeMap<(u32, u32), u64> {
    let mut out = BTreeMap::new();
    for msg in replies {
        let (mut ifindex, mut kind, mut queue, mut packets) = (None, None, None, None);
        for (t, v) in attrs_of(msg) {
            match t {
                NETDEV_A_QSTATS_IFINDEX => ifindex = uint(v),
                NETDEV_A_QSTATS_QUEUE_TYPE => kind = uint(v),
                NETDEV_A_QSTATS_QUEUE_ID => queue = uint(v),
                NETDEV_A_QSTATS_RX_PACKETS => packets = uint(v),
                _ => {}
            }
        }
        if let (Some(i), Some(NETDEV_QUEUE_TYPE_RX), Some(q), Some(p)) =
            (ifindex, kind, queue, packets)
            && let (Ok(i), Ok(q)) = (u32::try_from(i), u32::try_from(q))
        {
            out.insert((i, q), p);
        }
    }
    out
}

/// Per-queue receive packet counters in drivers' ethtool statistics: (pattern, drivers). `N` is
/// the queue number; a pattern listed more than once for a queue (bnxt's unicast, multicast and
/// broadcast) is summed.
pub const ETHTOOL_QUEUE_PATTERNS: &[(&str, &str)] = &[
    (
        "rx_queue_N_packets",
        "virtio_net before 6.10, ixgbe, igb, igc, ice, hv_netvsc, ixgbevf",
    ),
    ("rxN_packets", "mlx5_core, mlx4_en"),
    ("rx-N.packets", "i40e, iavf"),
    ("queue_N_rx_cnt", "ena"),
    ("[N]: rx_ucast_packets", "bnxt_en (with rx_mcast, rx_bcast)"),
    ("[N]: rx_mcast_packets", "bnxt_en"),
    ("[N]: rx_bcast_packets", "bnxt_en"),
    (
        "rx_queue_N_xdp_packets",
        "veth (only packets through its NAPI path: XDP or GRO on)",
    ),
];

/// The queue number `name` names under `pattern` (`N` stands for it).
fn match_pattern(pattern: &str, name: &str) -> Option<u32> {
    let (pre, post) = pattern.split_once('N')?;
    let digits = name.strip_prefix(pre)?.strip_suffix(post)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The per-queue receive packets among ethtool statistics `names` and `values`, with the
/// pattern that matched (the first of [`ETHTOOL_QUEUE_PATTERNS`] that matches any name).
pub fn ethtool_rx_packets(
    names: &[String],
    values: &[u64],
) -> Option<(&'static str, BTreeMap<u32, u64>)> {
    let mut found: Option<(&'static str, BTreeMap<u32, u64>)> = None;
    for (pattern, _) in ETHTOOL_QUEUE_PATTERNS {
        let mut m = BTreeMap::new();
        for (n, v) in names.iter().zip(values) {
            if let Some(q) = match_pattern(pattern, n) {
                *m.entry(q).or_insert(0u64) += v;
            }
        }
        if m.is_empty() {
            continue;
        }
        match &mut found {
            // bnxt: the multicast and broadcast patterns add to the unicast one's queues.
            Some((first, acc)) if first.starts_with("[N]") && pattern.starts_with("[N]") => {
                for (q, v) in m {
                    *acc.entry(q).or_insert(0) += v;
                }
            }
            Some(_) => {}
            None => found = Some((pattern, m)),
        }
    }
    found
}

/// One device's per-queue receive packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQueues {
    pub device: String,
    pub source: Source,
    /// queue → packets.
    pub packets: BTreeMap<u32, u64>,
}

/// The driver-counter source for the devices of podstat's network namespace: a netdev netlink
/// socket and an ethtool ioctl socket, opened on first use; a socket that cannot be opened is
/// not tried again (logged once by the caller through [`QueueCounts::read`]'s `on_error`).
#[derive(Debug, Default)]
pub struct QueueCounts {
    netdev: Option<Result<Genl, ()>>,
    ioctl: Option<Result<EthtoolIoctl, ()>>,
}

impl QueueCounts {
    /// Per-queue receive packets of `devices` (name, ifindex): from one qstats dump where the
    /// driver has queue statistics, else from its ethtool statistics; devices with neither are
    /// left out. `on_error` hears why a source could not be used (once per socket that cannot
    /// be opened, every time for a failed dump).
    pub fn read(
        &mut self,
        devices: &[(String, u32)],
        mut on_error: impl FnMut(&'static str, &dyn std::error::Error),
    ) -> Vec<DeviceQueues> {
        let netdev = self
            .netdev
            .get_or_insert_with(|| open_netdev().map_err(|e| on_error("netdev netlink", &e)));
        let qstats = match netdev {
            Ok(g) => qstats_rx_packets(g).unwrap_or_else(|e| {
                on_error("netdev netlink qstats-get", &e);
                BTreeMap::new()
            }),
            Err(()) => BTreeMap::new(),
        };
        let mut out = Vec::new();
        for (name, ifindex) in devices {
            let from_qstats: BTreeMap<u32, u64> = qstats
                .range((*ifindex, 0)..=(*ifindex, u32::MAX))
                .map(|((_, q), p)| (*q, *p))
                .collect();
            if !from_qstats.is_empty() {
                out.push(DeviceQueues {
                    device: name.clone(),
                    source: Source::Qstats,
                    packets: from_qstats,
                });
                continue;
            }
            let ioctl = self.ioctl.get_or_insert_with(|| {
                EthtoolIoctl::open().map_err(|e| on_error("ethtool ioctl socket", &e))
            });
            let Ok(ioctl) = ioctl else { continue };
            // A device of this name must be the one with this ifindex (fixture trees name
            // devices that do not exist here).
            if ioctl_ifindex(ioctl, name) != Some(*ifindex) {
                continue;
            }
            if let Ok((names, values)) = ioctl.stats(name)
                && let Some((pattern, packets)) = ethtool_rx_packets(&names, &values)
            {
                out.push(DeviceQueues {
                    device: name.clone(),
                    source: Source::Ethtool(pattern),
                    packets,
                });
            }
        }
        out
    }
}

/// The ifindex of device `name` in this network namespace (`SIOCGIFINDEX`).
fn ioctl_ifindex(e: &EthtoolIoctl, name: &str) -> Option<u32> {
    #[repr(C)]
    struct IfIndexReq {
        name: [u8; libc::IFNAMSIZ],
        ifindex: libc::c_int,
        pad: [u8; 20],
    }
    let mut req = IfIndexReq {
        name: [0; libc::IFNAMSIZ],
        ifindex: 0,
        pad: [0; 20],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: `req` is a valid ifreq for SIOCGIFINDEX, which writes the int after the name.
    let r = unsafe { libc::ioctl(e.0.as_raw_fd(), SIOCGIFINDEX, &raw mut req) };
    if r < 0 {
        None
    } else {
        u32::try_from(req.ifindex).ok()
    }
}

/// `SIOCETHTOOL` and `SIOCGIFINDEX` (`include/uapi/linux/sockios.h`), typed as this libc's
/// ioctl request (an `unsigned long` on glibc, an `int` on musl).
const SIOCETHTOOL: libc::Ioctl = 0x8946;
const SIOCGIFINDEX: libc::Ioctl = 0x8933;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Drivers with more statistics than this are not read (mlx5 has a few thousand).
const MAX_STATS: usize = 1 << 16;

/// The ethtool ioctl (`SIOCETHTOOL`) on a datagram socket of this network namespace.
#[derive(Debug)]
pub struct EthtoolIoctl(OwnedFd);

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut u8,
    pad: [u8; 16],
}

impl EthtoolIoctl {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    fn ioctl(&self, dev: &str, data: *mut u8) -> io::Result<()> {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data,
            pad: [0; 16],
        };
        let n = dev.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&dev.as_bytes()[..n]);
        // SAFETY: `req` is a valid ifreq whose data points at a buffer the caller sized for the
        // command in it.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), SIOCETHTOOL, &raw mut req) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The names and values of `dev`'s ethtool statistics (`ethtool -S`).
    pub fn stats(&self, dev: &str) -> io::Result<(Vec<String>, Vec<u64>)> {
        // struct ethtool_sset_info { cmd, reserved, sset_mask: u64, data[] }: one set asked.
        let mut info = [0u8; 24];
        info[..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
        info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
        self.ioctl(dev, info.as_mut_ptr())?;
        let mask = u64::from_ne_bytes(info[8..16].try_into().unwrap_or([0; 8]));
        if mask & (1 << ETH_SS_STATS) == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let n = u32::from_ne_bytes(info[16..20].try_into().unwrap_or([0; 4])) as usize;
        if n == 0 || n > MAX_STATS {
            return Ok((Vec::new(), Vec::new()));
        }
        let n32 = u32::try_from(n).map_err(|_| io::Error::other("too many statistics"))?;
        // struct ethtool_gstrings { cmd, string_set, len, data[len * 32] }
        let mut strings = vec![0u8; 12 + n * ETH_GSTRING_LEN];
        strings[..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
        strings[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
        strings[8..12].copy_from_slice(&n32.to_ne_bytes());
        self.ioctl(dev, strings.as_mut_ptr())?;
        // struct ethtool_stats { cmd, n_stats, data[n_stats]: u64 }
        let mut stats = vec![0u8; 8 + n * 8];
        stats[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
        stats[4..8].copy_from_slice(&n32.to_ne_bytes());
        self.ioctl(dev, stats.as_mut_ptr())?;
        let names = strings[12..]
            .chunks(ETH_GSTRING_LEN)
            .map(|c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            })
            .collect();
        let values = stats[8..]
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok((names, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_patterns_match_driver_names() {
        let names: Vec<String> = [
            "rx_drops",
            "rx_queue_0_packets",
            "rx_queue_1_packets",
            "rx_queue_10_packets",
            "rx_queue_x_packets",
            "tx_queue_0_packets",
        ]
        .map(str::to_owned)
        .to_vec();
        let (p, m) = ethtool_rx_packets(&names, &[1, 10, 11, 12, 99, 5]).expect("virtio/ixgbe");
        assert_eq!(p, "rx_queue_N_packets");
        assert_eq!(m, BTreeMap::from([(0, 10), (1, 11), (10, 12)]));

        let mlx: Vec<String> = ["rx_packets", "rx0_packets", "rx1_packets", "rx0_bytes"]
            .map(str::to_owned)
            .to_vec();
        let (p, m) = ethtool_rx_packets(&mlx, &[100, 60, 40, 7]).expect("mlx5");
        assert_eq!((p, m), ("rxN_packets", BTreeMap::from([(0, 60), (1, 40)])));

        let bnxt: Vec<String> = [
            "[0]: rx_ucast_packets",
            "[0]: rx_mcast_packets",
            "[0]: rx_bcast_packets",
            "[1]: rx_ucast_packets",
        ]
        .map(str::to_owned)
        .to_vec();
        let (_, m) = ethtool_rx_packets(&bnxt, &[10, 2, 1, 7]).expect("bnxt");
        assert_eq!(m, BTreeMap::from([(0, 13), (1, 7)]));

        let none: Vec<String> = ["rx_kicks", "rx0_kicks"].map(str::to_owned).to_vec();
        assert!(ethtool_rx_packets(&none, &[1, 2]).is_none());
    }

    #[test]
    fn qstats_dump_messages_parse() {
        let msg = |ifindex: u32, kind: u32, queue: u32, packets: Option<u64>| {
            let mut m = Vec::new();
            put_attr(&mut m, NETDEV_A_QSTATS_IFINDEX, &ifindex.to_ne_bytes());
            put_attr(&mut m, NETDEV_A_QSTATS_QUEUE_TYPE, &kind.to_ne_bytes());
            put_attr(&mut m, NETDEV_A_QSTATS_QUEUE_ID, &queue.to_ne_bytes());
            if let Some(p) = packets {
                put_attr(&mut m, NETDEV_A_QSTATS_RX_PACKETS, &p.to_ne_bytes());
            }
            m
        };
        let got = parse_qstats(&[
            msg(2, 0, 0, Some(1 << 40)),
            msg(2, 0, 1, Some(7)),
            msg(2, 1, 0, Some(99)), // a tx queue
            msg(3, 0, 0, None),     // no rx-packets from this driver
        ]);
        assert_eq!(got, BTreeMap::from([((2, 0), 1 << 40), ((2, 1), 7)]));
        let (a, b) = (msg(2, 0, 0, Some(1 << 40)), msg(2, 1, 0, Some(99)));
        crate::util::fuzz_seed(
            "netlink",
            "qstats-dump",
            &crate::netdev::genl::datagram(1, &[&a, &b]),
        );
    }

    /// The running kernel answers a queue-scoped qstats dump (6.9+), and every answer is an rx
    /// or tx queue of a device that exists; the ethtool ioctl answers for loopback (which has no
    /// statistics). Runs without root.
    #[test]
    fn asks_the_running_kernel() {
        let mut g = open_netdev().expect("netdev netlink family (6.5+)");
        let q = qstats_rx_packets(&mut g).expect("qstats dump (6.9+)");
        for (ifindex, _) in q.keys() {
            assert!(
                std::fs::read_dir("/sys/class/net")
                    .expect("/sys/class/net")
                    .filter_map(Result::ok)
                    .any(|d| std::fs::read_to_string(d.path().join("ifindex"))
                        .is_ok_and(|s| s.trim() == ifindex.to_string())),
                "qstats named ifindex {ifindex}, which is not a device here"
            );
        }
        let e = EthtoolIoctl::open().expect("datagram socket");
        match e.stats("lo") {
            Ok((names, _)) => assert!(names.is_empty(), "lo has ethtool statistics: {names:?}"),
            Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP), "{err}"),
        }
    }
}
