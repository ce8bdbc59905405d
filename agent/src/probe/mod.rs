//! eBPF probes: the embedded object, loaded and attached at startup.
//!
//! A probe is a unit ([`Probe`]): one file here, the same stem as its programs in `ebpf/`, its
//! shared types in `common/` and its collector in `collector/`. Each unit resolves the kernel
//! offsets it needs, sizes its maps, attaches with its own fallback chain, owns its map
//! handles, forgets the cgroups the identity refresh says are gone, and reports its map
//! overflows. [`Probes::load`] is a loop over the units in [`UNITS`].
//!
//! Each probe loads or fails on its own. A probe that fails is reported as
//! `podstat_probe_attached{probe} 0` with the reason in the log (and in `podstat check`); the
//! rest keep working. Kernel struct offsets come from the running kernel's BTF ([`btf`]) and
//! reach the programs as read-only globals.

pub mod btf;
pub mod duty;
mod error;
pub mod kernel;
pub mod metrics;
pub mod net;
pub mod sched;
pub mod throttle;

use std::{
    any::Any,
    collections::HashSet,
    fmt,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use aya::{Btf, Ebpf, EbpfLoader};
use podstat_common::{
    kernel::{DEFAULT_MAX_CGROUPS, KNOWN_MAP, OFFSETS_GLOBAL, Offsets},
    sched::{DEFAULT_MAX_PREEMPT_PAIRS, DEFAULT_MAX_WAITING},
};

use self::{btf::KernelBtf, kernel::Shared};
pub use self::{
    error::{Absence, Attempts, ProbeError},
    kernel::attach_tp_btf,
};
use crate::identity::{Diff, Subscriber};

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

/// Every attach point podstat reports on, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeId {
    SchedSwitch,
    SchedWakeup,
    SchedWakeupNew,
    SchedProcessExit,
    SchedMigrateTask,
    CfsThrottle,
    CfsUnthrottle,
    NetReader,
    NetSoftirq,
    NetRxQueue,
    Arfs,
}

impl ProbeId {
    /// The `probe` label value, and the name `podstat check` prints.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SchedSwitch => "sched_switch",
            Self::SchedWakeup => "sched_wakeup",
            Self::SchedWakeupNew => "sched_wakeup_new",
            Self::SchedProcessExit => "sched_process_exit",
            Self::SchedMigrateTask => "sched_migrate_task",
            Self::CfsThrottle => "cfs_throttle",
            Self::CfsUnthrottle => "cfs_unthrottle",
            Self::NetReader => "net_reader",
            Self::NetSoftirq => "net_softirq",
            Self::NetRxQueue => "net_rx_queue",
            Self::Arfs => "arfs",
        }
    }
}

impl fmt::Display for ProbeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Outcome of loading one probe.
#[derive(Debug, Clone)]
pub enum Status {
    /// Attached, with the mechanism (`tp_btf`, `tp_btf (sched_info)`, `fentry`, `fexit`,
    /// `kprobe`, `tp_btf/sched_switch`).
    Attached(&'static str),
    Failed(Arc<ProbeError>),
    /// Nothing on this host for the probe to watch (no NIC driver with aRFS): not attached,
    /// not a failure of the host's kernel.
    Absent(Absence),
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
    /// The per-packet steering design (softirq-side programs on every packet) instead of the
    /// read-time one.
    pub net_per_packet: bool,
    /// Read-time design: 1 read in this many is examined (a power of two; 1: every read).
    pub net_sample_every: u32,
    /// Read-time design: when the reader program is attached (`--probe.net.duty-cycle`).
    pub net_duty: duty::DutyCycle,
    /// Pod and container cgroups tracked at once (sizes KNOWN and the per-cgroup stats maps).
    pub max_cgroups: u32,
    /// Tasks waiting for a CPU at once (sizes WAIT_START).
    pub max_waiting: u32,
    /// (victim, preemptor) cgroup pairs of different pods (sizes PREEMPT_PAIRS).
    pub max_preempt_pairs: u32,
    /// How run-queue latency is measured.
    pub runqueue: RunqueueMode,
}

impl Wanted {
    /// Caps every sized map at `entries`: for loading the probes to see whether they work,
    /// not to measure a node.
    pub fn shrink_maps(&mut self, entries: u32) {
        self.max_cgroups = self.max_cgroups.min(entries);
        self.max_waiting = self.max_waiting.min(entries);
        self.max_preempt_pairs = self.max_preempt_pairs.min(entries);
    }
}

impl Default for Wanted {
    fn default() -> Self {
        Self {
            sched: true,
            throttle: true,
            net: true,
            net_legacy_hooks: false,
            net_per_packet: false,
            net_sample_every: podstat_common::net::DEFAULT_SAMPLE_EVERY,
            net_duty: duty::DutyCycle::default(),
            max_cgroups: DEFAULT_MAX_CGROUPS,
            max_waiting: DEFAULT_MAX_WAITING,
            max_preempt_pairs: DEFAULT_MAX_PREEMPT_PAIRS,
            runqueue: RunqueueMode::Auto,
        }
    }
}

/// The outcome of every probe, filled in as the units load.
#[derive(Debug, Clone)]
pub struct Report(Vec<(ProbeId, Status)>);

impl Report {
    fn new(ids: impl IntoIterator<Item = ProbeId>) -> Self {
        Self(ids.into_iter().map(|p| (p, Status::Disabled)).collect())
    }

    /// Records (and logs) the outcome of `probe`.
    pub fn record(&mut self, probe: ProbeId, status: Status) {
        let name = probe.name();
        match &status {
            Status::Attached(how) => tracing::info!(probe = name, via = how, "probe attached"),
            Status::Failed(why) => {
                tracing::warn!(probe = name, reason = %crate::util::chain(why.as_ref()), "probe not attached");
            }
            Status::NotNeeded(why) => {
                tracing::info!(probe = name, reason = why, "probe not attached");
            }
            Status::Absent(why) => {
                tracing::info!(probe = name, reason = %why, "probe not attached");
            }
            Status::Disabled => {}
        }
        self.set(probe, status);
    }

    /// Records the same failure for every probe of `ids`.
    pub fn fail(&mut self, ids: &[ProbeId], why: &Arc<ProbeError>) {
        for p in ids {
            self.record(*p, Status::Failed(Arc::clone(why)));
        }
    }

    fn set(&mut self, probe: ProbeId, status: Status) {
        if let Some(slot) = self.0.iter_mut().find(|(p, _)| *p == probe) {
            slot.1 = status;
        }
    }

    pub fn get(&self, probe: ProbeId) -> Option<&Status> {
        self.0.iter().find(|(p, _)| *p == probe).map(|(_, s)| s)
    }

    /// Whether `probe` is attached.
    pub fn attached(&self, probe: ProbeId) -> bool {
        matches!(self.get(probe), Some(Status::Attached(_)))
    }

    /// Whether `probe` was recorded as failed.
    pub fn failed(&self, probe: ProbeId) -> bool {
        matches!(self.get(probe), Some(Status::Failed(_)))
    }
}

/// What the units' attach steps may read.
pub struct AttachEnv<'a> {
    pub btf: &'a Btf,
    pub sysfs: &'a Path,
    pub wanted: &'a Wanted,
}

/// A probe: one unit of programs and the maps they fill.
pub trait Probe: Send + Sync + fmt::Debug {
    /// The attach points this unit reports on, in report order.
    fn ids(&self) -> &'static [ProbeId];
    /// Whether its collector asked for it.
    fn requested(&self, wanted: &Wanted) -> bool;
    /// Reads what it needs from the kernel's BTF: fields of the shared `offsets`, and its own
    /// globals. A failure is kept and reported when it would attach.
    fn resolve(&mut self, k: &KernelBtf, offsets: &mut Offsets, wanted: &Wanted);
    /// Sizes its maps and sets its globals.
    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>, wanted: &Wanted);
    /// Attaches with its fallback chain (only called when requested), recording each id.
    fn attach(&mut self, ebpf: &mut Ebpf, env: &AttachEnv<'_>, report: &mut Report);
    /// Takes its maps out of the loaded object (whether or not it was requested, so its
    /// overflow counters are always exported).
    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError>;
    /// Deletes the keys of cgroups that are gone (every key for which `diff.is_live` is false).
    fn forget(&self, diff: &Diff<'_>);
    /// Its maps' insert failures, by the `map` label value.
    fn overflows(&self, shared: &Shared) -> Vec<(&'static str, u64)>;
    fn as_any(&self) -> &dyn Any;
}

/// The probe table: every unit, in load order (sched before throttle: throttle falls back to
/// the sched_switch program).
pub const UNITS: &[fn() -> Box<dyn Probe>] = &[
    || Box::new(sched::SchedProbe::default()),
    || Box::new(throttle::ThrottleProbe::default()),
    || Box::new(net::NetProbe::default()),
];

/// The loaded object, the units and the maps they share.
pub struct Probes {
    report: Report,
    units: Vec<Box<dyn Probe>>,
    shared: Option<Shared>,
    offsets: Option<Offsets>,
    /// Keeps programs and links alive; dropping it detaches everything. Locked by the duty
    /// cycle, which detaches and re-attaches the steering reader program.
    keep_alive: Mutex<Option<Ebpf>>,
    /// The duty cycle failed to re-attach the steering reader program: it is detached until a
    /// later window's attach works (`podstat_probe_attached` 0 for `net_reader` meanwhile).
    reader_lost: AtomicBool,
}

impl fmt::Debug for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes")
            .field("report", &self.report)
            .field("offsets", &self.offsets)
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// No probes at all (for tests and when every probe collector is off).
    pub fn none() -> Self {
        let units: Vec<Box<dyn Probe>> = UNITS.iter().map(|u| u()).collect();
        Self {
            report: Report::new(units.iter().flat_map(|u| u.ids().iter().copied())),
            units,
            shared: None,
            offsets: None,
            keep_alive: Mutex::new(None),
            reader_lost: AtomicBool::new(false),
        }
    }

    /// Loads the embedded object and attaches the wanted probes. Never fails as a whole:
    /// every failure is recorded per probe.
    pub fn load(wanted: Wanted, sysfs: &Path) -> Self {
        let mut probes = Self::none();
        let requested: Vec<ProbeId> = probes
            .units
            .iter()
            .filter(|u| u.requested(&wanted))
            .flat_map(|u| u.ids().iter().copied())
            .collect();
        if requested.is_empty() {
            return probes;
        }
        if let Err(why) = probes.load_requested(&wanted, sysfs) {
            let why = Arc::new(why);
            tracing::warn!(probes = ?requested, reason = %crate::util::chain(why.as_ref()), "probes not attached");
            probes.report.fail(&requested, &why);
            probes.shared = None;
            probes.keep_alive = Mutex::new(None);
        }
        probes
    }

    /// The steps every unit shares; an `Err` fails every requested probe.
    fn load_requested(&mut self, wanted: &Wanted, sysfs: &Path) -> Result<(), ProbeError> {
        if !object_embedded() {
            return Err(ProbeError::NotBuilt);
        }
        kernel::raise_memlock_limit();
        let vmlinux = sysfs.join("kernel/btf/vmlinux");
        let kbtf = KernelBtf::load(&vmlinux).map_err(|source| ProbeError::NoBtf {
            path: vmlinux.clone(),
            source,
        })?;
        let mut offsets = kernel::resolve_offsets(&kbtf).map_err(ProbeError::Offsets)?;
        for unit in &mut self.units {
            unit.resolve(&kbtf, &mut offsets, wanted);
        }
        tracing::debug!(?offsets, "kernel struct offsets from BTF");
        // Free our BTF view before aya parses the same file: the two would otherwise be in
        // memory at once (peak RSS).
        drop(kbtf);
        let btf = Btf::parse_file(&vmlinux, aya::Endianness::default()).map_err(|source| {
            ProbeError::ParseBtf {
                path: vmlinux.clone(),
                source,
            }
        })?;
        self.offsets = Some(offsets);

        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(KNOWN_MAP, wanted.max_cgroups);
        for unit in &self.units {
            unit.configure(&mut loader, wanted);
        }
        let mut ebpf = loader.load(OBJECT).map_err(ProbeError::Load)?;
        let env = AttachEnv {
            btf: &btf,
            sysfs,
            wanted,
        };
        for unit in &mut self.units {
            if unit.requested(wanted) {
                unit.attach(&mut ebpf, &env, &mut self.report);
            }
        }
        self.shared = Some(Shared::take(&mut ebpf)?);
        for unit in &mut self.units {
            if let Err(why) = unit.take_maps(&mut ebpf)
                && unit.requested(wanted)
            {
                self.report.fail(unit.ids(), &Arc::new(why));
            }
        }
        self.keep_alive = Mutex::new(Some(ebpf));
        Ok(())
    }

    /// Per-probe outcome, for `podstat check` and the collectors.
    pub fn status(&self) -> &[(ProbeId, Status)] {
        &self.report.0
    }

    /// Whether `probe` is attached.
    pub fn attached(&self, probe: ProbeId) -> bool {
        self.report.attached(probe)
    }

    /// Whether the duty cycle's last attach of the steering reader program failed: it is
    /// detached until a later window's attach works (`podstat_probe_attached` says 0).
    pub fn reader_lost(&self) -> bool {
        self.reader_lost.load(Ordering::Relaxed)
    }

    /// The steering reader program's duty cycle, if it has one to run: the read-time design's
    /// reader program attached (only that design keeps its link) and a cycle that detaches.
    pub fn net_duty(&self) -> Option<duty::DutyCycle> {
        self.unit::<net::NetProbe>()
            .filter(|n| n.reader().is_some())
            .map(net::NetProbe::duty)
            .filter(duty::DutyCycle::cycles)
    }

    /// Closes one of the duty cycle's windows of the steering reader program, just detached.
    pub fn close_net_window(&self, w: duty::Window) {
        if let Some(net) = self.unit::<net::NetProbe>() {
            net.close_window(w);
        }
    }

    /// Attaches (`on`) or detaches the steering reader program (the duty cycle). A failure to
    /// attach marks the program lost ([`Self::reader_lost`]) until an attach works again.
    pub fn set_net_reader(&self, on: bool) -> Result<(), ProbeError> {
        let Some(net) = self.unit::<net::NetProbe>() else {
            return Ok(());
        };
        let mut reader = net.reader();
        let Some(link) = reader.as_mut() else {
            return Ok(());
        };
        let mut ebpf = self
            .keep_alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(ebpf) = ebpf.as_mut() else {
            return Ok(());
        };
        let r = link.set(ebpf, on);
        if on {
            self.reader_lost.store(r.is_err(), Ordering::Relaxed);
        }
        r
    }

    /// The offsets resolved from this kernel's BTF, if any.
    pub fn offsets(&self) -> Option<&Offsets> {
        self.offsets.as_ref()
    }

    /// Whether the object loaded (the maps are there to read).
    pub fn loaded(&self) -> bool {
        self.shared.is_some()
    }

    /// The maps every probe shares, if the object loaded.
    pub fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The unit of type `P`, if the object loaded.
    pub fn unit<P: Probe + 'static>(&self) -> Option<&P> {
        self.shared.as_ref()?;
        self.units
            .iter()
            .find_map(|u| u.as_any().downcast_ref::<P>())
    }

    /// Every map's insert failures, by the `map` label: each unit's, then `known`.
    pub fn overflows(&self) -> Vec<(&'static str, u64)> {
        let Some(shared) = &self.shared else {
            return Vec::new();
        };
        let mut out: Vec<(&'static str, u64)> = self
            .units
            .iter()
            .flat_map(|u| u.overflows(shared))
            .collect();
        out.push(("known", shared.known_full()));
        out
    }
}

impl Subscriber for Probes {
    /// `KNOWN` follows the cgroups; then each unit forgets its own keys of cgroups that left.
    fn apply(&self, diff: &Diff<'_>) -> HashSet<u64> {
        let Some(shared) = &self.shared else {
            return HashSet::new();
        };
        let rejected = shared.apply(diff);
        for unit in &self.units {
            unit.forget(diff);
        }
        rejected
    }
}

#[cfg(test)]
mod tests {
    use podstat_common::sched::RUNQ_MODE_WAKEUP;

    use super::*;

    /// This kernel's BTF and the offsets every unit resolves from it, with the throttle and
    /// sched_info results. Needs no root (vmlinux BTF is world-readable).
    fn running_kernel() -> (
        KernelBtf,
        Offsets,
        Result<(), btf::BtfError>,
        Result<(), ProbeError>,
    ) {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        assert!(
            path.exists(),
            "this test needs kernel BTF at {}",
            path.display()
        );
        let k = KernelBtf::load(path).expect("loading vmlinux BTF");
        let mut o = kernel::resolve_offsets(&k).expect("resolving the scheduler offsets");
        let throttle = throttle::resolve_fields(&k, &mut o);
        let sched_info = sched::resolve_sched_info(&k, &mut o);
        (k, o, throttle, sched_info)
    }

    /// The offsets this kernel's BTF yields: all there, distinct where they must be, inside
    /// their structs.
    #[test]
    fn offsets_resolve_against_the_running_kernels_btf() {
        let (k, o, throttle, _) = running_kernel();
        assert_eq!(o.valid, 1);
        assert_eq!(
            o.sched_info, RUNQ_MODE_WAKEUP,
            "the loader, not the resolver, picks the mode"
        );
        throttle.expect("CFS bandwidth offsets");
        let task = k.size_of("task_struct").expect("task_struct size");
        for (name, off) in [
            ("cgroups", o.task_cgroups),
            ("pid", o.task_pid),
            ("state", o.task_state),
            ("on_rq", o.task_on_rq),
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
        let (k, o, _, sched_info) = running_kernel();
        sched_info.expect(
            "this kernel (CONFIG_SCHED_INFO, CONFIG_FAIR_GROUP_SCHED) has the sched_info fields",
        );
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
        let mut o = kernel::resolve_offsets(&k).expect("the scheduler part resolves");
        assert_eq!(o.valid, 1);
        let why = sched::resolve_sched_info(&k, &mut o).expect_err("no sched_info in this BTF");
        assert!(matches!(why, ProbeError::KernelLacks { .. }), "{why:?}");
        let why = crate::util::chain(&why);
        assert!(why.contains("sched_info"), "{why}");
        assert_eq!(o.task_last_queued, 0);
    }

    /// The probe table covers every id exactly once, and a probe that is not loaded exports
    /// no self-metric.
    #[test]
    fn every_probe_id_belongs_to_one_unit() {
        let probes = Probes::none();
        let ids: Vec<ProbeId> = probes.status().iter().map(|(p, _)| *p).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "{ids:?}");
        assert_eq!(ids.len(), 11);
        assert!(probes.overflows().is_empty());
        assert!(!probes.loaded());
        assert!(probes.unit::<sched::SchedProbe>().is_none());
    }
}
