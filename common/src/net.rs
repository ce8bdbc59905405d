//! The receive-steering probes (`ebpf/src/net.rs`).
//!
//! Two designs share the maps:
//! - **read time** (the default): one program on the read path compares the reading CPU with
//!   the socket's `sk_incoming_cpu` (the CPU that processed its last packet, what
//!   `SO_INCOMING_CPU` returns) on a sample of reads, and adds the sample's weight to the
//!   reader cgroup's locality counters. No program runs per packet.
//! - **per packet** (`--probe.net.per-packet`): the reader side records, per socket, the CPU and
//!   pod cgroup of the thread that last consumed data; the softirq side compares the CPU that
//!   queues a packet to that socket with it and adds the packet to the reader cgroup's locality
//!   counters.
//!
//! Userspace fills [`CPU_PLACE_MAP`] with the topology. Everything is aggregated in the kernel;
//! no per-packet events.

/// Read-time design, `tp_btf/sock_recv_length` (6.3+): a sampled read compares its CPU with
/// `sk_incoming_cpu`, TCP and connected UDP.
pub const NET_READ_RECV_PROG: &str = "net_read_recv";
/// Read-time design, `tp_btf/tcp_rcv_space_adjust`: the same for TCP reads on older kernels.
pub const NET_READ_TCP_PROG: &str = "net_read_tcp";
/// Per-packet design, `tp_btf/sock_recv_length` (6.3+): a read returned data, TCP and UDP.
pub const NET_RECV_PROG: &str = "net_sock_recv_length";
/// `tp_btf/tcp_rcv_space_adjust`: fallback reader hook (TCP only, every kernel podstat runs on).
pub const NET_RECV_TCP_PROG: &str = "net_tcp_rcv_space_adjust";
/// `tp_btf/sk_data_ready` (6.3+): a packet was queued to the socket, TCP and UDP.
pub const NET_READY_PROG: &str = "net_sk_data_ready";
/// `tp_btf/tcp_probe` (4.16+): fallback softirq hook, each segment of an established TCP socket.
pub const NET_READY_TCP_PROG: &str = "net_tcp_probe";
/// `tp_btf/netif_receive_skb`: packets per receive queue and CPU.
pub const NET_RXQ_PROG: &str = "net_netif_receive_skb";
/// kprobe on the driver's `ndo_rx_flow_steer` (module functions: kprobe).
pub const ARFS_STEER_PROG: &str = "arfs_steer";
/// fexit / kretprobe on `rps_may_expire_flow`: a driver's expiry check that said yes.
pub const ARFS_EXPIRE_FEXIT_PROG: &str = "arfs_expire_fexit";
pub const ARFS_EXPIRE_KRETPROBE_PROG: &str = "arfs_expire_kretprobe";

/// socket pointer → [`Reader`] (LRU: sockets come and go without a close hook).
pub const SOCK_READER_MAP: &str = "SOCK_READER";
/// flow hash (`sk_rxhash`) → [`Reader`], for the per-packet side (LRU).
pub const FLOW_READER_MAP: &str = "FLOW_READER";
/// cgroup id → [`NetStats`].
pub const NET_STATS_MAP: &str = "NET_STATS";
/// CPU → [`Place`], written by userspace.
pub const CPU_PLACE_MAP: &str = "CPU_PLACE";
/// Per-CPU hash [`RxQueueKey`] → packets.
pub const RX_QUEUE_MAP: &str = "RX_QUEUE";
/// ifindex → [`ArfsStats`].
pub const ARFS_STATS_MAP: &str = "ARFS_STATS";
/// Per-CPU array of insert failures, indexed by `NET_MAP_*`.
pub const NET_MAP_FULL_MAP: &str = "NET_MAP_FULL";
/// Read-only global with [`NetOffsets`].
pub const NET_OFFSETS_GLOBAL: &str = "NET_OFFSETS";
/// Read-only global with [`NetSampling`].
pub const NET_SAMPLING_GLOBAL: &str = "NET_SAMPLING";
/// Per-CPU array of one `u32`: the read-time design's sampling generator state.
pub const NET_SAMPLE_STATE_MAP: &str = "NET_SAMPLE_STATE";

/// Default sampling of the read-time design: 1 read in this many is examined, and counts this
/// many times (a power of two).
pub const DEFAULT_SAMPLE_EVERY: u32 = 16;

/// How the read-time design samples reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSampling {
    /// A read is examined when the low bits of a per-CPU xorshift32 under this mask are 0:
    /// `sample_every - 1` (0: every read).
    pub mask: u32,
    /// What an examined read adds to its locality class: `sample_every`.
    pub weight: u32,
}

/// Sockets whose reader is remembered at once.
pub const DEFAULT_MAX_SOCKETS: u32 = 65536;
/// CPUs the topology map holds.
pub const MAX_CPUS: u32 = 1024;
/// (device, queue) pairs counted at once.
pub const MAX_RX_QUEUES: u32 = 4096;
/// Devices with aRFS counters.
pub const MAX_ARFS_DEVICES: u32 = 256;

/// Locality of the softirq CPU relative to the reader's CPU: index into [`NetStats::locality`].
pub const SAME_CPU: usize = 0;
pub const SAME_LLC: usize = 1;
pub const SAME_NODE: usize = 2;
pub const REMOTE_NODE: usize = 3;
/// Label values, by index.
pub const LOCALITY_NAMES: [&str; 4] = ["same_cpu", "same_llc", "same_node", "remote_node"];

/// Slots of [`NET_MAP_FULL_MAP`], named as in `podstat_bpf_map_full_total{map}`.
pub const NET_MAP_STATS: u32 = 0;
pub const NET_MAP_RX_QUEUE: u32 = 1;
pub const NET_MAP_ARFS: u32 = 2;
pub const NET_MAP_NAMES: [&str; 3] = ["net_stats", "rx_queue", "arfs_stats"];

/// Value of [`SOCK_READER_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Reader {
    /// The reading thread's cpu-controller cgroup (a pod or container in KNOWN).
    pub cgroup_id: u64,
    /// The CPU it last consumed data on.
    pub cpu: u32,
    /// The socket's `sk_rxhash` (the flow hash RFS keys on) when RFS recorded one, else 0.
    pub rxhash: u32,
    /// The socket's network namespace (inode): a packet of the same flow hash received in
    /// another namespace is the other end's (the kernel's flow hash is symmetric).
    pub netns: u32,
    pub pad: u32,
}

/// Value of [`NET_STATS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    /// Per packet: packets queued to the cgroup's sockets, by locality of the softirq CPU to
    /// the reader's. Read time: sampled reads times their weight, by locality of the socket's
    /// `sk_incoming_cpu` to the reading CPU.
    pub locality: [u64; 4],
    /// Per packet: reads on a CPU other than the socket's previous read. Read time: sampled
    /// reads on a CPU other than the socket's previous sampled read.
    pub migrations: u64,
}

/// Value of [`CPU_PLACE_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// Lowest CPU sharing this CPU's last-level cache.
    pub llc: u32,
    /// NUMA node.
    pub node: u32,
}

/// Key of [`RX_QUEUE_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RxQueueKey {
    pub ifindex: u32,
    /// `skb->queue_mapping - 1` when the driver recorded the receive queue, else [`NO_QUEUE`].
    pub queue: u32,
}

/// [`RxQueueKey::queue`] when the driver did not record a receive queue.
pub const NO_QUEUE: u32 = u32::MAX;

/// Value of [`ARFS_STATS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArfsStats {
    /// `ndo_rx_flow_steer` calls: the kernel asked the NIC to steer a flow to a new queue.
    pub steer: u64,
    /// `rps_may_expire_flow` calls that returned true: the driver may drop the rule.
    pub expire: u64,
}

/// Kernel struct offsets for the net programs, from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOffsets {
    /// `sk_buff.dev` (struct net_device *).
    pub skb_dev: u32,
    /// `sk_buff.queue_mapping` (__u16).
    pub skb_queue_mapping: u32,
    /// `sk_buff.hash` (__u32): the flow hash RPS/RFS computed.
    pub skb_hash: u32,
    /// `sock.sk_rxhash` (__u32, CONFIG_RPS); 0 when the kernel has none.
    pub sk_rxhash: u32,
    /// `sock.__sk_common.skc_net.net` (struct net *).
    pub sk_net: u32,
    /// `net_device.ifindex` (int).
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net` (struct net *), CONFIG_NET_NS.
    pub dev_nd_net: u32,
    /// `net.ns.inum` (unsigned int).
    pub net_ns_inum: u32,
    /// `sock.__sk_common.skc_incoming_cpu` (int): the CPU that processed the socket's last
    /// packet (`SO_INCOMING_CPU`); -1 until one was (and always on unconnected UDP sockets).
    pub sk_incoming_cpu: u32,
    /// Count receive queues only of devices in this network namespace (the agent's), by inode.
    pub netns_inum: u32,
    /// The scheduler offsets the reader side needs (task → cpu cgroup id), copied here so the
    /// net programs do not depend on the sched object's global.
    pub task_cgroups: u32,
    pub css_set_cpu_subsys: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// 1 when filled in.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): #[repr(C)], fixed-width integer fields only, no implicit padding.
    unsafe impl aya::Pod for super::Reader {}
    unsafe impl aya::Pod for super::NetStats {}
    unsafe impl aya::Pod for super::Place {}
    unsafe impl aya::Pod for super::RxQueueKey {}
    unsafe impl aya::Pod for super::ArfsStats {}
    unsafe impl aya::Pod for super::NetOffsets {}
    unsafe impl aya::Pod for super::NetSampling {}
}
