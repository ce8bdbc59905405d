//! eBPF probes: the embedded object, loaded and attached at startup.
//!
//! Each probe loads or fails on its own. A probe that fails is reported as
//! `podstat_probe_attached{probe} 0` with the reason in the log (and in `podstat check`);
//! the rest keep working. Kernel struct offsets come from the running kernel's BTF
//! ([`btf`]) and reach the programs as the read-only global `OFFSETS`.

pub mod btf;
pub mod net;
pub mod tracker;

use std::{
    fmt,
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, FEntry, FExit, KProbe},
};
use podstat_common::sched::{self as common, Known, Offsets, PreemptPair, ThrottleStats};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use self::btf::KernelBtf;
use crate::util::chain;

/// The eBPF object built from `ebpf/` by `build.rs`. Empty when the agent was built without
/// the eBPF toolchain (plain `cargo build`): then every probe reports "not built".
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podstat"));

/// The embedded eBPF object (empty when built without the eBPF toolchain). For tools that load
/// one program of it on their own, such as the benchmark's floor (`podstat-test-floor`).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Whether this binary carries an eBPF object at all.
pub fn object_embedded() -> bool {
    !OBJECT.is_empty()
}

/// The probes podstat knows, in report order: (name, collector that wants it).
pub const PROBES: &[(&str, &str)] = &[
    ("sched_switch", "sched"),
    ("sched_wakeup", "sched"),
    ("sched_wakeup_new", "sched"),
    ("sched_process_exit", "sched"),
    ("cfs_throttle", "throttle"),
    ("cfs_unthrottle", "throttle"),
    ("net_reader", "net"),
    ("net_softirq", "net"),
    ("net_rx_queue", "net"),
    ("arfs", "net"),
];

/// Outcome of loading one probe.
#[derive(Debug, Clone)]
pub enum Status {
    /// Attached, with the mechanism (`tp_btf`, `tp_btf (sched_info)`, `fentry`, `fexit`,
    /// `kprobe`, `tp_btf/sched_switch`).
    Attached(&'static str),
    Failed(String),
    /// Nothing on this host for the probe to watch (no NIC driver with aRFS): not attached,
    /// not a failure of the host's kernel.
    Absent(String),
    /// Not requested (its collector is off).
    Disabled,
    /// Requested, but another probe does its work on this kernel (why): not attached, and not
    /// a failure (no `podstat_probe_attached` series).
    NotNeeded(&'static str),
}

/// How run-queue latency is measured (`--probe.runqueue-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RunqueueMode {
    /// sched_info when the kernel has it, else wakeup.
    #[default]
    Auto,
    /// From the kernel's `task_struct.sched_info.last_queued`, in `sched_switch` alone.
    SchedInfo,
    /// From `sched_wakeup`/`sched_wakeup_new` and a per-task map (the fallback).
    Wakeup,
}

/// How `sched_switch` is described when it measures run-queue latency from `sched_info`.
pub const SCHED_INFO_ATTACH: &str = "tp_btf (sched_info)";
/// Why the wakeup and exit programs are not attached in sched_info mode.
const NOT_NEEDED_SCHED_INFO: &str = "not needed: sched_switch reads run-queue latency from the kernel's sched_info (sched_info mode)";

/// Which probes to load, and how big the maps are.
#[derive(Debug, Clone, Copy)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches, one per probe group"
)]
pub struct Wanted {
    pub sched: bool,
    pub throttle: bool,
    /// The receive-steering probes (`net` collector).
    pub net: bool,
    /// Use the pre-6.3 steering hooks (`tcp_rcv_space_adjust`, `tcp_probe`) even where
    /// `sock_recv_length` and `sk_data_ready` exist.
    pub net_legacy_hooks: bool,
    /// Pod and container cgroups tracked at once (sizes KNOWN and the per-cgroup stats maps).
    pub max_cgroups: u32,
    /// Tasks waiting for a CPU at once (sizes WAIT_START).
    pub max_waiting: u32,
    /// (victim, preemptor) cgroup pairs of different pods (sizes PREEMPT_PAIRS).
    pub max_preempt_pairs: u32,
    /// How run-queue latency is measured.
    pub runqueue: RunqueueMode,
}

impl Default for Wanted {
    fn default() -> Self {
        Self {
            sched: true,
            throttle: true,
            net: true,
            net_legacy_hooks: false,
            max_cgroups: common::DEFAULT_MAX_CGROUPS,
            max_waiting: common::DEFAULT_MAX_WAITING,
            max_preempt_pairs: common::DEFAULT_MAX_PREEMPT_PAIRS,
            runqueue: RunqueueMode::Auto,
        }
    }
}

/// Map handles the collectors and the tracker use.
pub struct Maps {
    pub switches: PerCpuArray<MapData, u64>,
    pub known: HashMap<MapData, u64, Known>,
    pub throttle_stats: HashMap<MapData, u64, ThrottleStats>,
    pub preempt_pairs: HashMap<MapData, PreemptPair, u64>,
    pub map_full: PerCpuArray<MapData, u64>,
    pub net: net::NetMaps,
}

/// The loaded object and the map handles the collectors read.
pub struct Probes {
    status: Vec<(&'static str, Status)>,
    maps: Option<Mutex<Maps>>,
    offsets: Option<Offsets>,
    /// Keeps programs and links alive; dropping it detaches everything.
    keep_alive: Option<Ebpf>,
}

impl fmt::Debug for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes")
            .field("status", &self.status)
            .field("offsets", &self.offsets)
            .finish_non_exhaustive()
    }
}

/// What [`resolve_offsets`] found in the kernel's BTF.
#[derive(Debug)]
pub struct Resolved {
    /// Every offset found (`sched_info` is left at [`common::RUNQ_MODE_WAKEUP`]: the loader
    /// chooses the mode).
    pub offsets: Offsets,
    /// The CFS bandwidth fields of the throttle probe (CONFIG_CFS_BANDWIDTH), or why not.
    pub throttle: Result<(), String>,
    /// The fields sched_info mode reads (CONFIG_SCHED_INFO, CONFIG_FAIR_GROUP_SCHED), or why not.
    pub sched_info: Result<(), String>,
}

/// Resolves every offset the programs need. The scheduler part is required; the throttle
/// part (CONFIG_CFS_BANDWIDTH) and the sched_info part are optional, each with its own result.
pub fn resolve_offsets(k: &KernelBtf) -> Result<Resolved, btf::BtfError> {
    let cpu_id = k.enum_value("cgroup_subsys_id", "cpu_cgrp_id")?;
    let (elem, len) = k.array_of("css_set", "subsys")?;
    let cpu_id = u32::try_from(cpu_id)
        .ok()
        .filter(|id| *id < len)
        .ok_or_else(|| {
            btf::BtfError::Malformed(format!(
                "cpu_cgrp_id {cpu_id} outside css_set.subsys[{len}]"
            ))
        })?;
    let css_cgroup = k.offset_of("cgroup_subsys_state", "cgroup")?;
    let mut o = Offsets {
        task_cgroups: k.offset_of("task_struct", "cgroups")?,
        css_set_cpu_subsys: k.offset_of("css_set", "subsys")? + cpu_id * elem,
        css_cgroup,
        cgroup_kn: k.offset_of("cgroup", "kn")?,
        kn_id: k.offset_of("kernfs_node", "id")?,
        task_pid: k.offset_of("task_struct", "pid")?,
        task_state: k.offset_of_any("task_struct", &["__state", "state"])?.1,
        valid: 1,
        ..Offsets::default()
    };
    let throttle = (|| -> Result<(), btf::BtfError> {
        o.cfs_rq_tg = k.offset_of("cfs_rq", "tg")?;
        // `int throttled` on older kernels, `bool throttled:1` in 6.18: pass byte and mask.
        let bit = k.bit_offset_of("cfs_rq", "throttled")?;
        o.cfs_rq_throttled = u32::try_from(bit / 8)
            .map_err(|_| btf::BtfError::Malformed("cfs_rq.throttled offset".into()))?;
        o.cfs_rq_throttled_mask = if k.offset_of("cfs_rq", "throttled").is_ok() {
            0xff
        } else {
            1 << (bit % 8)
        };
        // 6.14 renamed h_nr_running to h_nr_queued and added h_nr_runnable (queued minus
        // delayed-dequeue tasks): prefer the one that counts runnable threads.
        o.cfs_rq_h_nr = k
            .offset_of_any("cfs_rq", &["h_nr_runnable", "h_nr_running", "h_nr_queued"])?
            .1;
        o.tg_css_cgroup = k.offset_of("task_group", "css")? + css_cgroup;
        o.tg_period = k.offset_of("task_group", "cfs_bandwidth.period")?;
        o.tg_period_expires =
            k.offset_of("task_group", "cfs_bandwidth.period_timer.node.expires")?;
        // For the sched_switch fallback: task → its group's cfs_rq, and up the group entities.
        let se = k.offset_of("task_struct", "se")?;
        o.se_cfs_rq = k.offset_of("sched_entity", "cfs_rq")?;
        o.se_parent = k.offset_of("sched_entity", "parent")?;
        o.task_se_cfs_rq = se + o.se_cfs_rq;
        o.task_se_parent = se + o.se_parent;
        if k.has_member("task_struct", "throttled") {
            o.task_based_throttle = 1;
            let bit = k.bit_offset_of("task_struct", "throttled")?;
            o.task_throttled = u32::try_from(bit / 8)
                .map_err(|_| btf::BtfError::Malformed("task_struct.throttled offset".into()))?;
            o.task_throttled_mask = if k.offset_of("task_struct", "throttled").is_ok() {
                0xff
            } else {
                1 << (bit % 8)
            };
        }
        Ok(())
    })()
    .map_err(|e| {
        format!(
            "kernel BTF lacks what CFS bandwidth tracking needs (CONFIG_CFS_BANDWIDTH?): {}",
            chain(&e)
        )
    });
    let sched_info = resolve_sched_info(k, &mut o).map_err(|e| {
        format!(
            "kernel BTF lacks what sched_info mode reads (CONFIG_SCHED_INFO, CONFIG_FAIR_GROUP_SCHED?): {}",
            chain(&e)
        )
    });
    Ok(Resolved {
        offsets: o,
        throttle,
        sched_info,
    })
}

/// The fields of sched_info mode: `task->sched_info.last_queued`, and the run queue's clock
/// through `task->se.cfs_rq->rq->clock`. Layouts:
/// <https://github.com/torvalds/linux/blob/v6.18/include/linux/sched.h> (`struct sched_info`,
/// `task_struct.sched_info`, `sched_entity.cfs_rq` under CONFIG_FAIR_GROUP_SCHED),
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/sched.h> (`cfs_rq.rq` under
/// CONFIG_FAIR_GROUP_SCHED, `rq.clock`); the same fields in
/// <https://github.com/torvalds/linux/blob/v5.10/include/linux/sched.h> and
/// <https://github.com/torvalds/linux/blob/v5.10/kernel/sched/sched.h>.
fn resolve_sched_info(k: &KernelBtf, o: &mut Offsets) -> Result<(), btf::BtfError> {
    let last_queued = k.offset_of("task_struct", "sched_info.last_queued")?;
    let task_se_cfs_rq =
        k.offset_of("task_struct", "se")? + k.offset_of("sched_entity", "cfs_rq")?;
    let cfs_rq_rq = k.offset_of("cfs_rq", "rq")?;
    let rq_clock = k.offset_of("rq", "clock")?;
    o.task_last_queued = last_queued;
    o.task_se_cfs_rq = task_se_cfs_rq;
    o.cfs_rq_rq = cfs_rq_rq;
    o.rq_clock = rq_clock;
    Ok(())
}

/// Whether the kernel keeps `sched_info` for tasks right now. CONFIG_SCHED_INFO puts the
/// fields in BTF, but before 5.14 a kernel without CONFIG_SCHEDSTATS fills them only while
/// delay accounting is on (`sched_info_on()`); `/proc/<pid>/schedstat` then reads `0 0 0`. So
/// this asks the kernel about ourselves: a process that has run has a non-zero run count
/// (`pcount`, the third field) exactly when `sched_info` is live.
pub fn sched_info_live(schedstat: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(schedstat)
        .map_err(|e| format!("reading {}: {e}", schedstat.display()))?;
    parse_schedstat_live(&text).map_err(|why| format!("{}: {why}", schedstat.display()))
}

/// `Ok` if a `/proc/<pid>/schedstat` line (`<run ns> <wait ns> <run count>`) shows a live
/// `sched_info`.
fn parse_schedstat_live(text: &str) -> Result<(), String> {
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unexpected content {:?}", text.trim()))?;
    match fields.as_slice() {
        [_, _, pcount] if *pcount > 0 => Ok(()),
        [_, _, _] => {
            Err("reads 0 runs: the kernel does not keep sched_info (delay accounting off?)".into())
        }
        _ => Err(format!("unexpected content {:?}", text.trim())),
    }
}

impl Probes {
    /// No probes at all (for tests and when every probe collector is off).
    pub fn none() -> Self {
        Self {
            status: PROBES.iter().map(|(p, _)| (*p, Status::Disabled)).collect(),
            maps: None,
            offsets: None,
            keep_alive: None,
        }
    }

    /// Loads the embedded object and attaches the wanted probes. Never fails as a whole:
    /// every failure is recorded per probe.
    #[expect(
        clippy::too_many_lines,
        reason = "one linear sequence of load steps, each failing on its own"
    )]
    pub fn load(wanted: Wanted, sysfs: &Path) -> Self {
        let mut probes = Self::none();
        let wants = |collector: &str| match collector {
            "sched" => wanted.sched,
            "throttle" => wanted.throttle,
            "net" => wanted.net,
            _ => false,
        };
        let requested: Vec<&'static str> = PROBES
            .iter()
            .filter(|(_, c)| wants(c))
            .map(|(p, _)| *p)
            .collect();
        if requested.is_empty() {
            return probes;
        }
        let fail_all = |probes: &mut Self, why: &str| {
            tracing::warn!(probes = ?requested, reason = %why, "probes not attached");
            for p in &requested {
                probes.set(p, Status::Failed(why.to_owned()));
            }
        };
        if !object_embedded() {
            fail_all(
                &mut probes,
                "this binary was built without the eBPF object (build it with `cargo xtask build`)",
            );
            return probes;
        }
        raise_memlock_limit();
        let vmlinux = sysfs.join("kernel/btf/vmlinux");
        let kbtf = match KernelBtf::load(&vmlinux) {
            Ok(k) => k,
            Err(e) => {
                fail_all(
                    &mut probes,
                    &format!(
                        "kernel BTF unavailable at {}: {}",
                        vmlinux.display(),
                        chain(&e)
                    ),
                );
                return probes;
            }
        };
        let Resolved {
            mut offsets,
            throttle: throttle_offsets,
            sched_info: sched_info_offsets,
        } = match resolve_offsets(&kbtf) {
            Ok(o) => o,
            Err(e) => {
                fail_all(
                    &mut probes,
                    &format!("resolving kernel struct offsets from BTF: {}", chain(&e)),
                );
                return probes;
            }
        };

        let sched_info = wanted.sched
            && match choose_runqueue_mode(wanted.runqueue, sched_info_offsets) {
                Ok(on) => on,
                Err(why) => {
                    for p in [
                        "sched_switch",
                        "sched_wakeup",
                        "sched_wakeup_new",
                        "sched_process_exit",
                    ] {
                        probes.record(p, Status::Failed(why.clone()));
                    }
                    false
                }
            };
        if sched_info {
            offsets.sched_info = common::RUNQ_MODE_SCHED_INFO;
        }
        tracing::debug!(?offsets, "kernel struct offsets from BTF");
        let net_offsets = net::resolve_offsets(&kbtf, &offsets, net::own_netns_inum())
            .map_err(|e| format!("resolving network struct offsets from BTF: {}", chain(&e)));
        // Keep what the attach step needs from our BTF view, and free it before aya parses the
        // same file: the two would otherwise be in memory at once (peak RSS).
        let has_func = |f: &str| kbtf.has_func(f);
        let fentry_ok = (has_func("throttle_cfs_rq"), has_func("unthrottle_cfs_rq"));
        drop(kbtf);
        let btf = match Btf::parse_file(&vmlinux, aya::Endianness::default()) {
            Ok(b) => b,
            Err(e) => {
                fail_all(
                    &mut probes,
                    &format!("parsing {}: {}", vmlinux.display(), chain(&e)),
                );
                return probes;
            }
        };

        probes.offsets = Some(offsets);

        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .override_global(common::OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(common::KNOWN_MAP, wanted.max_cgroups)
            .map_max_entries(common::THROTTLE_STATS_MAP, wanted.max_cgroups)
            // sched_info mode keeps no wait records; only throttled tasks get a record.
            .map_max_entries(
                common::WAIT_MAP,
                if sched_info { 1 } else { wanted.max_waiting },
            )
            .map_max_entries(
                common::THROTTLED_TASKS_MAP,
                if sched_info { wanted.max_waiting } else { 1 },
            )
            .map_max_entries(common::PREEMPT_PAIRS_MAP, wanted.max_preempt_pairs)
            .map_max_entries(podstat_common::net::NET_STATS_MAP, wanted.max_cgroups);
        if let Ok(o) = &net_offsets {
            loader.override_global(podstat_common::net::NET_OFFSETS_GLOBAL, o, true);
        }
        let mut ebpf = match loader.load(OBJECT) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                fail_all(
                    &mut probes,
                    &format!("loading the eBPF object: {}", chain(&e)),
                );
                return probes;
            }
        };

        if wanted.sched && sched_info {
            let status = attach_tp_btf(&mut ebpf, common::SCHED_SWITCH_PROG, "sched_switch", &btf)
                .map_or_else(Status::Failed, |()| Status::Attached(SCHED_INFO_ATTACH));
            probes.record("sched_switch", status);
            for probe in ["sched_wakeup", "sched_wakeup_new", "sched_process_exit"] {
                probes.record(probe, Status::NotNeeded(NOT_NEEDED_SCHED_INFO));
            }
        } else if wanted.sched && !probes.failed("sched_switch") {
            for (probe, prog, tp) in [
                ("sched_switch", common::SCHED_SWITCH_PROG, "sched_switch"),
                ("sched_wakeup", common::SCHED_WAKEUP_PROG, "sched_wakeup"),
                (
                    "sched_wakeup_new",
                    common::SCHED_WAKEUP_NEW_PROG,
                    "sched_wakeup_new",
                ),
                (
                    "sched_process_exit",
                    common::SCHED_EXIT_PROG,
                    "sched_process_exit",
                ),
            ] {
                let status = attach_tp_btf(&mut ebpf, prog, tp, &btf)
                    .map_or_else(Status::Failed, |()| Status::Attached("tp_btf"));
                probes.record(probe, status);
            }
        }
        let mut throttle_mode = common::THROTTLE_MODE_OFF;
        if wanted.throttle {
            match throttle_offsets {
                Ok(()) => {
                    let t = attach_fn(
                        &mut ebpf,
                        &btf,
                        fentry_ok.0,
                        "throttle_cfs_rq",
                        common::THROTTLE_FEXIT_PROG,
                        Hook::FExit,
                        common::THROTTLE_KPROBE_PROG,
                    );
                    let u = attach_fn(
                        &mut ebpf,
                        &btf,
                        fentry_ok.1,
                        "unthrottle_cfs_rq",
                        common::UNTHROTTLE_FENTRY_PROG,
                        Hook::FEntry,
                        common::UNTHROTTLE_KPROBE_PROG,
                    );
                    match (t, u) {
                        (Ok(t), Ok(u)) => {
                            throttle_mode = common::THROTTLE_MODE_HOOKS;
                            probes.record("cfs_throttle", Status::Attached(t));
                            probes.record("cfs_unthrottle", Status::Attached(u));
                        }
                        (t, u) => {
                            // The kernel refuses fentry/fexit and has no kprobes (or the
                            // functions are gone): watch throttling from sched_switch instead.
                            let why: Vec<String> =
                                [t.err(), u.err()].into_iter().flatten().collect();
                            tracing::info!(reasons = ?why, "throttle hooks unavailable; detecting throttling from sched_switch");
                            let switch_ok = probes.attached("sched_switch")
                                || attach_tp_btf(
                                    &mut ebpf,
                                    common::SCHED_SWITCH_PROG,
                                    "sched_switch",
                                    &btf,
                                )
                                .is_ok();
                            if switch_ok {
                                throttle_mode = common::THROTTLE_MODE_SWITCH;
                                probes.record(
                                    "cfs_throttle",
                                    Status::Attached("tp_btf/sched_switch"),
                                );
                                probes.record(
                                    "cfs_unthrottle",
                                    Status::Attached("tp_btf/sched_switch"),
                                );
                            } else {
                                let why = format!(
                                    "{}; and sched_switch could not attach either",
                                    why.join("; ")
                                );
                                probes.record("cfs_throttle", Status::Failed(why.clone()));
                                probes.record("cfs_unthrottle", Status::Failed(why));
                            }
                        }
                    }
                }
                Err(why) => {
                    probes.record("cfs_throttle", Status::Failed(why.clone()));
                    probes.record("cfs_unthrottle", Status::Failed(why));
                }
            }
        }
        if wanted.net {
            match &net_offsets {
                Ok(_) => {
                    for (probe, status) in
                        net::attach(&mut ebpf, &btf, sysfs, wanted.net_legacy_hooks)
                    {
                        probes.record(probe, status);
                    }
                }
                Err(why) => {
                    for (probe, c) in PROBES {
                        if *c == "net" {
                            probes.record(probe, Status::Failed(why.clone()));
                        }
                    }
                }
            }
        }
        if let Err(why) = set_throttle_mode(&mut ebpf, throttle_mode) {
            probes.record("cfs_throttle", Status::Failed(why.clone()));
            probes.record("cfs_unthrottle", Status::Failed(why));
        }
        match take_maps(&mut ebpf) {
            Ok(maps) => probes.maps = Some(Mutex::new(maps)),
            Err(why) => fail_all(&mut probes, &why),
        }
        probes.keep_alive = Some(ebpf);
        probes
    }

    fn set(&mut self, probe: &str, status: Status) {
        if let Some(slot) = self.status.iter_mut().find(|(p, _)| *p == probe) {
            slot.1 = status;
        }
    }

    fn record(&mut self, probe: &'static str, status: Status) {
        match &status {
            Status::Attached(how) => tracing::info!(probe, via = how, "probe attached"),
            Status::Failed(why) => tracing::warn!(probe, reason = %why, "probe not attached"),
            Status::NotNeeded(why) => tracing::info!(probe, reason = why, "probe not attached"),
            Status::Absent(why) => tracing::info!(probe, reason = %why, "probe not attached"),
            Status::Disabled => {}
        }
        self.set(probe, status);
    }

    /// Whether `probe` was recorded as failed.
    fn failed(&self, probe: &str) -> bool {
        self.status
            .iter()
            .any(|(p, s)| *p == probe && matches!(s, Status::Failed(_)))
    }

    /// Per-probe outcome, for `podstat check` and the collectors.
    pub fn status(&self) -> &[(&'static str, Status)] {
        &self.status
    }

    /// Whether `probe` is attached.
    pub fn attached(&self, probe: &str) -> bool {
        self.status
            .iter()
            .any(|(p, s)| *p == probe && matches!(s, Status::Attached(_)))
    }

    /// The offsets resolved from this kernel's BTF, if any.
    pub fn offsets(&self) -> Option<&Offsets> {
        self.offsets.as_ref()
    }

    /// The map handles (locked), if the object loaded.
    pub fn maps(&self) -> Option<MutexGuard<'_, Maps>> {
        self.maps
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// `podstat_probe_attached{probe, via}` for every requested probe that has to attach.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct ProbeLabel {
            probe: &'static str,
            via: &'static str,
        }
        if self
            .status
            .iter()
            .all(|(_, s)| matches!(s, Status::Disabled | Status::NotNeeded(_)))
        {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(
            "podstat_probe_attached",
            "1 if the eBPF probe is loaded and attached, 0 if it failed (the log and `podstat check` say why); `via` is how it attached (for sched_switch, `tp_btf (sched_info)` when run-queue latency comes from the kernel's sched_info).",
            None,
            MetricType::Gauge,
        )?;
        for (probe, status) in &self.status {
            let (v, via) = match status {
                Status::Attached(how) => (1, *how),
                Status::Failed(_) | Status::Absent(_) => (0, ""),
                Status::Disabled | Status::NotNeeded(_) => continue,
            };
            ConstGauge::new(v).encode(m.encode_family(&ProbeLabel { probe, via })?)?;
        }
        Ok(())
    }
}

/// sched_info mode (`Ok(true)`) or wakeup mode (`Ok(false)`), as `wanted` asks and the kernel
/// allows; `Err` when sched_info mode was asked for and the kernel cannot do it.
fn choose_runqueue_mode(wanted: RunqueueMode, offsets: Result<(), String>) -> Result<bool, String> {
    let available = || -> Result<(), String> {
        offsets?;
        sched_info_live(Path::new("/proc/self/schedstat"))
    };
    match wanted {
        RunqueueMode::Wakeup => {
            tracing::info!("run-queue latency from sched_wakeup (wakeup mode, as asked)");
            Ok(false)
        }
        RunqueueMode::SchedInfo => available()
            .map(|()| true)
            .map_err(|why| format!("--probe.runqueue-mode sched-info: {why}")),
        RunqueueMode::Auto => match available() {
            Ok(()) => {
                tracing::info!("run-queue latency from the kernel's sched_info (sched_info mode)");
                Ok(true)
            }
            Err(why) => {
                tracing::info!(reason = %why, "run-queue latency from sched_wakeup (wakeup mode)");
                Ok(false)
            }
        },
    }
}

/// Loads program `prog` of the object and attaches it to the BTF tracepoint `tracepoint`.
pub fn attach_tp_btf(
    ebpf: &mut Ebpf,
    prog: &str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<(), String> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program type: {}", chain(&e)))?;
    p.load(tracepoint, btf)
        .map_err(|e| format!("verifier/load tp_btf/{tracepoint}: {}", chain(&e)))?;
    p.attach()
        .map_err(|e| format!("attach tp_btf/{tracepoint}: {}", chain(&e)))?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Hook {
    FEntry,
    FExit,
}

/// Attaches to kernel function `func` with fentry/fexit when BTF has it, else with a kprobe.
fn attach_fn(
    ebpf: &mut Ebpf,
    btf: &Btf,
    has_btf_func: bool,
    func: &str,
    prog: &str,
    hook: Hook,
    kprobe_prog: &str,
) -> Result<&'static str, String> {
    let mut why = Vec::new();
    if has_btf_func {
        let r = match hook {
            Hook::FEntry => ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("program {prog} missing"))
                .and_then(|p| <&mut FEntry>::try_from(p).map_err(|e| chain(&e)))
                .and_then(|p| {
                    p.load(func, btf).map_err(|e| chain(&e))?;
                    p.attach().map(|_| "fentry").map_err(|e| chain(&e))
                }),
            Hook::FExit => ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("program {prog} missing"))
                .and_then(|p| <&mut FExit>::try_from(p).map_err(|e| chain(&e)))
                .and_then(|p| {
                    p.load(func, btf).map_err(|e| chain(&e))?;
                    p.attach().map(|_| "fexit").map_err(|e| chain(&e))
                }),
        };
        match r {
            Ok(how) => return Ok(how),
            Err(e) => why.push(format!("fentry/fexit on {func}: {e}")),
        }
    } else {
        why.push(format!(
            "{func} has no BTF FUNC (inlined or renamed?), no fentry/fexit"
        ));
    }
    let r = ebpf
        .program_mut(kprobe_prog)
        .ok_or_else(|| format!("program {kprobe_prog} missing"))
        .and_then(|p| <&mut KProbe>::try_from(p).map_err(|e| chain(&e)))
        .and_then(|p| {
            p.load().map_err(|e| chain(&e))?;
            p.attach(func, 0).map(|_| "kprobe").map_err(|e| chain(&e))
        });
    match r {
        Ok(how) => {
            tracing::info!(function = func, reasons = ?why, "fell back to a kprobe");
            Ok(how)
        }
        Err(e) => {
            why.push(format!("kprobe on {func}: {e}"));
            Err(why.join("; "))
        }
    }
}

fn set_throttle_mode(ebpf: &mut Ebpf, mode: u32) -> Result<(), String> {
    let map = ebpf
        .map_mut(common::THROTTLE_MODE_MAP)
        .ok_or_else(|| format!("map {} missing", common::THROTTLE_MODE_MAP))?;
    let mut array: Array<&mut MapData, u32> = Array::try_from(map).map_err(|e| chain(&e))?;
    array
        .set(0, mode, 0)
        .map_err(|e| format!("writing {}: {}", common::THROTTLE_MODE_MAP, chain(&e)))
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T, String> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| format!("map {name} missing from the object"))?;
    T::try_from(map).map_err(|e| format!("map {name}: {}", chain(&e)))
}

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, String> {
    Ok(Maps {
        switches: take(ebpf, common::SWITCH_COUNT_MAP)?,
        known: take(ebpf, common::KNOWN_MAP)?,
        throttle_stats: take(ebpf, common::THROTTLE_STATS_MAP)?,
        preempt_pairs: take(ebpf, common::PREEMPT_PAIRS_MAP)?,
        map_full: take(ebpf, common::MAP_FULL_MAP)?,
        net: net::take_maps(ebpf)?,
    })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE to raise).
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        libc::RLIM_INFINITY,
        libc::RLIM_INFINITY,
    ) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK (fine on 5.11+, where BPF memory is memcg-accounted)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's BTF and what the resolver finds in it. Needs no root (vmlinux BTF is
    /// world-readable).
    fn running_kernel() -> (KernelBtf, Resolved) {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        assert!(
            path.exists(),
            "this test needs kernel BTF at {}",
            path.display()
        );
        let k = KernelBtf::load(path).expect("loading vmlinux BTF");
        let r = resolve_offsets(&k).expect("resolving the scheduler offsets");
        (k, r)
    }

    /// The offsets this kernel's BTF yields: all there, distinct where they must be, inside
    /// their structs. Runs without root (vmlinux BTF is world-readable).
    #[test]
    fn offsets_resolve_against_the_running_kernels_btf() {
        let (k, r) = running_kernel();
        let o = r.offsets;
        assert_eq!(o.valid, 1);
        assert_eq!(
            o.sched_info,
            common::RUNQ_MODE_WAKEUP,
            "the loader, not the resolver, picks the mode"
        );
        r.throttle.expect("CFS bandwidth offsets");
        let task = k.size_of("task_struct").expect("task_struct size");
        for (name, off) in [
            ("cgroups", o.task_cgroups),
            ("pid", o.task_pid),
            ("state", o.task_state),
            ("se.cfs_rq", o.task_se_cfs_rq),
            ("se.parent", o.task_se_parent),
        ] {
            assert!(
                off > 0 && off < task,
                "task_struct.{name} at {off} outside 1..{task}"
            );
        }
        assert_ne!(o.task_se_cfs_rq, o.task_se_parent);
        let cfs_rq = k.size_of("cfs_rq").expect("cfs_rq size");
        for off in [o.cfs_rq_tg, o.cfs_rq_throttled, o.cfs_rq_h_nr] {
            assert!(off < cfs_rq);
        }
        assert_ne!(o.cfs_rq_throttled_mask, 0);
        assert!(
            o.tg_period_expires > o.tg_period,
            "period_timer follows period in cfs_bandwidth"
        );
        let cpu_id = u32::try_from(
            k.enum_value("cgroup_subsys_id", "cpu_cgrp_id")
                .expect("cpu_cgrp_id"),
        )
        .expect("small");
        assert_eq!(
            o.css_set_cpu_subsys,
            k.offset_of("css_set", "subsys").expect("subsys") + 8 * cpu_id
        );
        if k.has_member("task_struct", "throttled") {
            assert_eq!(o.task_based_throttle, 1);
            assert_ne!(o.task_throttled_mask, 0);
        }
    }

    /// sched_info mode's fields against this kernel's BTF: `task_struct.sched_info.last_queued`
    /// (the last of `struct sched_info`'s u64 timestamps), `cfs_rq.rq`, `rq.clock`.
    #[test]
    fn sched_info_fields_resolve_against_the_running_kernels_btf() {
        let (k, r) = running_kernel();
        r.sched_info.expect(
            "this kernel (CONFIG_SCHED_INFO, CONFIG_FAIR_GROUP_SCHED) has the sched_info fields",
        );
        let o = r.offsets;
        let field = |ty, name| {
            k.offset_of(ty, name)
                .unwrap_or_else(|e| panic!("{ty}.{name}: {e}"))
        };
        let last_queued = field("sched_info", "last_queued");
        assert_eq!(
            o.task_last_queued,
            field("task_struct", "sched_info") + last_queued
        );
        assert_eq!(last_queued % 8, 0, "last_queued is an aligned u64");
        assert!(
            last_queued + 8 <= k.size_of("sched_info").expect("sched_info size"),
            "last_queued inside struct sched_info"
        );
        assert!(o.task_last_queued + 8 <= k.size_of("task_struct").expect("task_struct size"));
        assert_eq!(
            o.task_se_cfs_rq,
            field("task_struct", "se") + field("sched_entity", "cfs_rq")
        );
        assert!(o.cfs_rq_rq + 8 <= k.size_of("cfs_rq").expect("cfs_rq size"));
        assert_eq!(o.cfs_rq_rq % 8, 0, "cfs_rq.rq is a pointer");
        assert!(o.rq_clock + 8 <= k.size_of("rq").expect("rq size"));
        assert_eq!(o.rq_clock % 8, 0, "rq.clock is an aligned u64");
        assert_ne!(
            o.rq_clock,
            field("rq", "clock_task"),
            "the rq clock sched_info stamps with is rq->clock, not clock_task"
        );
    }

    /// A kernel without the fields (an older layout, or CONFIG_SCHED_INFO off) leaves
    /// sched_info mode unavailable and the rest resolved: the wakeup-mode fallback.
    #[test]
    fn sched_info_missing_from_btf_falls_back() {
        let k = btf::tests::minimal_btf_without_sched_info();
        let r = resolve_offsets(&k).expect("the scheduler part resolves");
        assert_eq!(r.offsets.valid, 1);
        let why = r.sched_info.expect_err("no sched_info in this BTF");
        assert!(why.contains("sched_info"), "{why}");
        assert_eq!(r.offsets.task_last_queued, 0);
    }

    #[test]
    fn schedstat_tells_whether_sched_info_is_live() {
        for (text, live) in [
            ("276217 525967 3\n", true),
            ("1 0 1", true),
            ("0 0 0\n", false),
            ("", false),
            ("12 34\n", false),
            ("a b c", false),
        ] {
            assert_eq!(parse_schedstat_live(text).is_ok(), live, "{text:?}");
        }
        // This process, on this kernel (CONFIG_SCHED_INFO=y).
        sched_info_live(Path::new("/proc/self/schedstat")).expect("sched_info live here");
    }

    #[test]
    fn mode_follows_the_flag_and_the_kernel() {
        let missing = || Err::<(), String>("no fields".to_owned());
        assert_eq!(
            choose_runqueue_mode(RunqueueMode::Wakeup, Ok(())),
            Ok(false)
        );
        assert_eq!(
            choose_runqueue_mode(RunqueueMode::Auto, missing()),
            Ok(false)
        );
        assert!(choose_runqueue_mode(RunqueueMode::SchedInfo, missing()).is_err());
        // This kernel has sched_info live (see above).
        assert_eq!(choose_runqueue_mode(RunqueueMode::Auto, Ok(())), Ok(true));
        assert_eq!(
            choose_runqueue_mode(RunqueueMode::SchedInfo, Ok(())),
            Ok(true)
        );
    }
}
