//! Receive-steering probes: where a socket's packets are processed in softirq compared with
//! where its reading thread runs, per pod cgroup; packets per receive queue and CPU; aRFS rule
//! churn.
//!
//! Two designs (see `common/src/net.rs`): at read time (the default), one program on the read
//! path compares the reading CPU with the socket's own record of where its last packet was
//! processed (`sk_incoming_cpu`, which `tcp_v4_rcv`/`tcp_v6_rcv` update for every segment and
//! `__udp_queue_rcv_skb` for every datagram of a connected socket, on the CPU doing the protocol
//! work), on a sample of reads; per packet (`--probe.net.per-packet`), the programs below the
//! reader side match each packet to its socket's reader.
//!
//! Hooks, argument layouts from
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sock.h>,
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/tcp.h> and
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/net.h>:
//! - reader side, process context, on the reading CPU: `sock_recv_length(sk, ret, flags)`
//!   (6.3+, every protocol's recvmsg) or, before 6.3, `tcp_rcv_space_adjust(sk)` (TCP reads);
//! - softirq side, the CPU that queues the packet to the socket: `sk_data_ready(sk)` (6.3+,
//!   TCP and UDP) or, before, `tcp_probe(sk, skb)` (each segment of an established TCP socket);
//! - `netif_receive_skb(skb)`: the CPU that processes each packet, by device and queue;
//! - aRFS: a kprobe on the driver's `ndo_rx_flow_steer(dev, skb, rxq, flow_id)` and fexit (or
//!   kretprobe) on `rps_may_expire_flow(dev, rxq, flow_id, filter_id) -> bool`.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_task, bpf_get_smp_processor_id},
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext},
};
use podstat_common::{
    kernel::DEFAULT_MAX_CGROUPS,
    net::{
        ArfsStats, DEFAULT_MAX_SOCKETS, MAX_ARFS_DEVICES, MAX_CPUS, MAX_RX_QUEUES, NET_MAP_ARFS,
        NET_MAP_NAMES, NET_MAP_RX_QUEUE, NET_MAP_STATS, NO_QUEUE, NetOffsets, NetSampling,
        NetStats, Place, REMOTE_NODE, Reader, RxQueueKey, SAME_CPU, SAME_LLC, SAME_NODE,
    },
};

use crate::kernel::{KNOWN, atomic_add, load, read};

/// Filled in by the loader from BTF.
#[unsafe(no_mangle)]
static NET_OFFSETS: NetOffsets = NetOffsets {
    skb_dev: 0,
    skb_queue_mapping: 0,
    skb_hash: 0,
    sk_rxhash: 0,
    sk_net: 0,
    dev_ifindex: 0,
    dev_nd_net: 0,
    net_ns_inum: 0,
    sk_incoming_cpu: 0,
    netns_inum: 0,
    task_cgroups: 0,
    css_set_cpu_subsys: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    valid: 0,
};

/// Filled in by the loader (`--probe.net.sample-every`).
#[unsafe(no_mangle)]
static NET_SAMPLING: NetSampling = NetSampling { mask: 0, weight: 1 };

static ZERO_STATS: NetStats = NetStats {
    locality: [0; 4],
    migrations: 0,
};
static ZERO_ARFS: ArfsStats = ArfsStats {
    steer: 0,
    expire: 0,
};

#[map]
static SOCK_READER: LruHashMap<u64, Reader> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static FLOW_READER: LruHashMap<u32, Reader> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKETS, 0);

#[map]
static NET_STATS: HashMap<u64, NetStats> = HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

#[map]
static CPU_PLACE: Array<Place> = Array::with_max_entries(MAX_CPUS, 0);

#[map]
static RX_QUEUE: PerCpuHashMap<RxQueueKey, u64> = PerCpuHashMap::with_max_entries(MAX_RX_QUEUES, 0);

#[map]
static ARFS_STATS: HashMap<u32, ArfsStats> = HashMap::with_max_entries(MAX_ARFS_DEVICES, 0);

/// The read-time design's per-CPU xorshift32 state (0 until the first read seeds it).
#[map]
static NET_SAMPLE_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[map]
static NET_MAP_FULL: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(NET_MAP_NAMES.len() as u32, 0);

#[inline(always)]
fn net_offsets() -> NetOffsets {
    // SAFETY: a plain static the loader rewrites; volatile so the zero initialiser is not folded.
    unsafe { core::ptr::read_volatile(&raw const NET_OFFSETS) }
}

#[inline(always)]
fn cpu() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn full(slot: u32) {
    if let Some(p) = NET_MAP_FULL.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn get_or_insert<K, V>(map: &HashMap<K, V>, key: &K, zero: &V, slot: u32) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, zero, u64::from(BPF_NOEXIST));
    let p = map.get_ptr_mut(key);
    if p.is_none() {
        full(slot);
    }
    p
}

#[inline(always)]
fn net_sampling() -> NetSampling {
    // SAFETY: as net_offsets.
    unsafe { core::ptr::read_volatile(&raw const NET_SAMPLING) }
}

// ---- read-time design ----------------------------------------------------------------------

#[btf_tracepoint(function = "sock_recv_length")]
pub fn net_read_recv(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret > 0 {
        let _ = on_read_sampled(ctx.arg(0));
    }
    0
}

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn net_read_tcp(ctx: BtfTracePointContext) -> i32 {
    let _ = on_read_sampled(ctx.arg(0));
    0
}

/// Whether this read is in the sample: the low bits of this CPU's xorshift32 under the mask
/// are zero. A generator rather than a counter, so a reader that alternates between sockets
/// in step with the sampling period is not always sampled on the same one.
#[inline(always)]
fn sampled(mask: u32) -> bool {
    if mask == 0 {
        return true;
    }
    let Some(p) = NET_SAMPLE_STATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    let mut x = unsafe { *p };
    if x == 0 {
        x = 0x9e37_79b9 ^ cpu();
    }
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    // SAFETY: as above.
    unsafe { *p = x };
    x & mask == 0
}

/// The read-time design: on a sampled read by a pod thread, the locality of the CPU that
/// processed the socket's last packet (`sk_incoming_cpu`) to this reading CPU, weighted by the
/// sampling period; and whether this sampled read is on another CPU than the socket's previous
/// sampled read.
#[inline(always)]
fn on_read_sampled(sk: *const u8) -> Result<(), i32> {
    let s = net_sampling();
    if !sampled(s.mask) {
        return Ok(());
    }
    let o = net_offsets();
    if o.valid == 0 || sk.is_null() {
        return Ok(());
    }
    let cgroup_id = current_cgroup_id(&o)?;
    if KNOWN.get_ptr(cgroup_id).is_none() {
        return Ok(());
    }
    let now = cpu();
    let incoming: i32 = load(sk, o.sk_incoming_cpu)?;
    let key = sk as u64;
    let mut migrated = false;
    if let Some(r) = SOCK_READER.get_ptr_mut(key) {
        // SAFETY: a live map value.
        unsafe {
            migrated = (*r).cpu != now && (*r).cgroup_id == cgroup_id;
            (*r).cpu = now;
            (*r).cgroup_id = cgroup_id;
        }
    } else {
        let reader = Reader {
            cgroup_id,
            cpu: now,
            rxhash: 0,
            netns: 0,
            pad: 0,
        };
        // LRU: a full map evicts the least recently used socket, never fails.
        let _ = SOCK_READER.insert(key, reader, 0);
    }
    // -1: no packet processed for this socket yet, or an unconnected UDP socket (the kernel
    // records no incoming CPU for those): no locality to count.
    let locality = u32::try_from(incoming).ok().map(|c| locality_of(c, now));
    if locality.is_none() && !migrated {
        return Ok(());
    }
    if let Some(st) = get_or_insert(&NET_STATS, &cgroup_id, &ZERO_STATS, NET_MAP_STATS) {
        if let Some(l) = locality
            && l < 4
        {
            // SAFETY: bounds-checked index into a map value.
            unsafe {
                atomic_add(
                    core::ptr::addr_of_mut!((*st).locality[l]),
                    u64::from(s.weight),
                );
            }
        }
        if migrated {
            // SAFETY: st points into a map value.
            unsafe { atomic_add(core::ptr::addr_of_mut!((*st).migrations), 1) };
        }
    }
    Ok(())
}

// ---- per-packet design: reader side --------------------------------------------------------

#[btf_tracepoint(function = "sock_recv_length")]
pub fn net_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret > 0 {
        let _ = on_read(ctx.arg(0));
    }
    0
}

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn net_tcp_rcv_space_adjust(ctx: BtfTracePointContext) -> i32 {
    let _ = on_read(ctx.arg(0));
    0
}

/// The current task's cpu-controller cgroup id, through probe reads (the current task pointer
/// from `bpf_get_current_task` is untyped for the verifier).
#[inline(always)]
fn current_cgroup_id(o: &NetOffsets) -> Result<u64, i32> {
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let cset: *const u8 = read(task, o.task_cgroups)?;
    let css: *const u8 = read(cset, o.css_set_cpu_subsys)?;
    let cgrp: *const u8 = read(css, o.css_cgroup)?;
    let kn: *const u8 = read(cgrp, o.cgroup_kn)?;
    read(kn, o.kn_id)
}

#[inline(always)]
fn on_read(sk: *const u8) -> Result<(), i32> {
    let o = net_offsets();
    if o.valid == 0 || sk.is_null() {
        return Ok(());
    }
    let key = sk as u64;
    let now = cpu();
    // The flow hash RFS recorded for the socket (0 while RFS is off or before the first packet).
    let rxhash: u32 = if o.sk_rxhash != 0 {
        load(sk, o.sk_rxhash).unwrap_or(0)
    } else {
        0
    };
    // Fast path: a tracked socket read again on the same CPU for the same flow (the steady
    // state of a pinned or settled reader) changes nothing; skip the walk to the thread's
    // cgroup. A new socket at a freed one's address has another flow hash, so it takes the
    // slow path and gets its own reader.
    let tracked = if let Some(r) = SOCK_READER.get_ptr(key) {
        // SAFETY: a live map value.
        let (cpu_was, hash_was) = unsafe { ((*r).cpu, (*r).rxhash) };
        if cpu_was == now && hash_was == rxhash {
            return Ok(());
        }
        true
    } else {
        false
    };
    let cgroup_id = current_cgroup_id(&o)?;
    if KNOWN.get_ptr(cgroup_id).is_none() {
        if tracked {
            // A pod's socket now read outside pods (or its address reused): forget it.
            let _ = SOCK_READER.remove(key);
        }
        return Ok(());
    }
    let netns: u32 = load::<*const u8>(sk, o.sk_net)
        .and_then(|net| load(net, o.net_ns_inum))
        .unwrap_or(0);
    let reader = Reader {
        cgroup_id,
        cpu: now,
        rxhash,
        netns,
        pad: 0,
    };
    if let Some(r) = SOCK_READER.get_ptr_mut(key) {
        // SAFETY: a live map value; copy, then update in place.
        let prev = unsafe { *r };
        if prev.cpu == now && prev.cgroup_id == cgroup_id && prev.rxhash == rxhash {
            return Ok(());
        }
        // SAFETY: as above.
        unsafe { *r = reader };
        if prev.cpu != now
            && let Some(s) = get_or_insert(&NET_STATS, &cgroup_id, &ZERO_STATS, NET_MAP_STATS)
        {
            // SAFETY: s points into a map value.
            unsafe { atomic_add(core::ptr::addr_of_mut!((*s).migrations), 1) };
        }
    } else {
        // LRU: a full map evicts the least recently used socket, never fails.
        let _ = SOCK_READER.insert(key, reader, 0);
    }
    if rxhash != 0 {
        let _ = FLOW_READER.insert(rxhash, reader, 0);
    }
    Ok(())
}

// ---- per-packet design: softirq side -------------------------------------------------------

#[btf_tracepoint(function = "sk_data_ready")]
pub fn net_sk_data_ready(ctx: BtfTracePointContext) -> i32 {
    on_ready(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "tcp_probe")]
pub fn net_tcp_probe(ctx: BtfTracePointContext) -> i32 {
    on_ready(ctx.arg(0));
    0
}

#[inline(always)]
fn on_ready(sk: *const u8) {
    let Some(r) = SOCK_READER.get_ptr(sk as u64) else {
        return;
    };
    // SAFETY: a live map value.
    let reader = unsafe { *r };
    if reader.rxhash != 0 {
        // Counted per packet in netif_receive_skb, by flow hash, on the CPU RPS/RFS chose.
        return;
    }
    count_locality(&reader);
}

/// The locality class of CPU `a` to CPU `b`: index into [`NetStats::locality`].
#[inline(always)]
fn locality_of(a: u32, b: u32) -> usize {
    if a == b {
        SAME_CPU
    } else {
        match (CPU_PLACE.get(a), CPU_PLACE.get(b)) {
            (Some(a), Some(b)) if a.llc == b.llc => SAME_LLC,
            (Some(a), Some(b)) if a.node == b.node => SAME_NODE,
            _ => REMOTE_NODE,
        }
    }
}

/// Adds one packet processed on this CPU to the reader cgroup's locality counters.
#[inline(always)]
fn count_locality(reader: &Reader) {
    let locality = locality_of(cpu(), reader.cpu);
    if let Some(s) = get_or_insert(&NET_STATS, &reader.cgroup_id, &ZERO_STATS, NET_MAP_STATS) {
        if locality < 4 {
            // SAFETY: bounds-checked index into a map value.
            unsafe { atomic_add(core::ptr::addr_of_mut!((*s).locality[locality]), 1) };
        }
    }
}

// ---- receive queues ----------------------------------------------------------------------

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn net_netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    let _ = on_receive(ctx.arg(0));
    0
}

#[inline(always)]
fn on_receive(skb: *const u8) -> Result<(), i32> {
    let o = net_offsets();
    if o.valid == 0 {
        return Ok(());
    }
    // Steering: the packet's flow hash (set when RPS/RFS or the NIC computed one) names the
    // socket whose reader RFS tracks; this is the CPU that does its protocol processing.
    let dev: *const u8 = load(skb, o.skb_dev)?;
    let net: *const u8 = load(dev, o.dev_nd_net)?;
    let netns: u32 = load(net, o.net_ns_inum)?;
    let hash: u32 = load(skb, o.skb_hash)?;
    if hash != 0
        && let Some(r) = FLOW_READER.get_ptr(hash)
    {
        // SAFETY: a live map value.
        let reader = unsafe { *r };
        // The same hash in another namespace is the flow's other direction (its ACKs).
        if reader.netns == netns {
            count_locality(&reader);
        }
    }
    if o.netns_inum != 0 && netns != o.netns_inum {
        return Ok(());
    }
    let ifindex: i32 = load(dev, o.dev_ifindex)?;
    let mapping: u16 = load(skb, o.skb_queue_mapping)?;
    let key = RxQueueKey {
        ifindex: ifindex as u32,
        queue: if mapping == 0 {
            NO_QUEUE
        } else {
            u32::from(mapping) - 1
        },
    };
    if let Some(n) = RX_QUEUE.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of a per-CPU map value.
        unsafe { *n += 1 };
    } else if RX_QUEUE.insert(&key, &1, 0).is_err() {
        full(NET_MAP_RX_QUEUE);
    }
    Ok(())
}

// ---- aRFS --------------------------------------------------------------------------------

#[inline(always)]
fn arfs_count(dev: *const u8, steer: bool) -> Result<(), i32> {
    let o = net_offsets();
    if o.valid == 0 {
        return Ok(());
    }
    let ifindex: i32 = read(dev, o.dev_ifindex)?;
    let ifindex = ifindex as u32;
    if let Some(s) = get_or_insert(&ARFS_STATS, &ifindex, &ZERO_ARFS, NET_MAP_ARFS) {
        // SAFETY: s points into a map value.
        unsafe {
            if steer {
                atomic_add(core::ptr::addr_of_mut!((*s).steer), 1);
            } else {
                atomic_add(core::ptr::addr_of_mut!((*s).expire), 1);
            }
        }
    }
    Ok(())
}

#[kprobe]
pub fn arfs_steer(ctx: ProbeContext) -> u32 {
    if let Some(dev) = ctx.arg::<*const u8>(0) {
        let _ = arfs_count(dev, true);
    }
    0
}

#[fexit(function = "rps_may_expire_flow")]
pub fn arfs_expire_fexit(ctx: FExitContext) -> i32 {
    // bool rps_may_expire_flow(dev, rxq_index, flow_id, filter_id): the return value follows
    // the four arguments.
    let expired: u64 = ctx.arg(4);
    if expired & 0xff != 0 {
        let _ = arfs_count(ctx.arg(0), false);
    }
    0
}

#[kretprobe]
pub fn arfs_expire_kretprobe(ctx: RetProbeContext) -> u32 {
    // The kretprobe sees only the return value, not the device: counted under ifindex 0
    // ("all devices") by the agent.
    let expired: u64 = ctx.ret();
    if expired & 0xff != 0 {
        let ifindex = 0u32;
        if let Some(s) = get_or_insert(&ARFS_STATS, &ifindex, &ZERO_ARFS, NET_MAP_ARFS) {
            // SAFETY: s points into a map value.
            unsafe { atomic_add(core::ptr::addr_of_mut!((*s).expire), 1) };
        }
    }
    0
}
