//! The scheduler probe (`ebpf/src/sched.rs`): run-queue latency and preemptions per pod,
//! context switches per CPU. Run-queue latency comes from the kernel's own
//! `sched_info.last_queued` in `sched_switch` alone (sched_info mode), or from
//! `sched_wakeup`/`sched_wakeup_new` and a per-task map (wakeup mode, the fallback).

use std::{
    any::Any,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
};
use podstat_common::{
    kernel::{MAP_PREEMPT_PAIRS, MAP_WAIT, MAP_WAIT_PAIRS, Offsets},
    sched::{
        PREEMPT_PAIRS_MAP, PreemptPair, RUNQ_BASE_SLOTS, RUNQ_MODE_SCHED_INFO, RUNQ_TASKS_MAP,
        SCHED_EXIT_PROG, SCHED_MIGRATE_PROG, SCHED_SWITCH_PROG, SCHED_WAKEUP_NEW_PROG,
        SCHED_WAKEUP_PROG, SWITCH_COUNT_MAP, WAIT_MAP, WAIT_PAIRS_MAP,
    },
    throttle::THROTTLED_TASKS_MAP,
};

use super::{
    AttachEnv, Probe, ProbeError, ProbeId, Report, RunqueueMode, Status, Wanted,
    btf::KernelBtf,
    kernel::{self, Shared, attach_tp_btf},
};
use crate::identity::Diff;

/// How `sched_switch` is described when it measures run-queue latency from `sched_info`.
pub const SCHED_INFO_ATTACH: &str = "tp_btf (sched_info)";
/// Why the wakeup and exit programs are not attached in sched_info mode.
const NOT_NEEDED_SCHED_INFO: &str = "not needed: sched_switch reads run-queue latency from the kernel's sched_info (sched_info mode)";

const IDS: &[ProbeId] = &[
    ProbeId::SchedSwitch,
    ProbeId::SchedWakeup,
    ProbeId::SchedWakeupNew,
    ProbeId::SchedProcessExit,
    ProbeId::SchedMigrateTask,
];

/// The maps of the scheduler probe (its run-queue stats live in the shared `KNOWN` entries).
pub struct SchedMaps {
    pub switches: PerCpuArray<MapData, u64>,
    pub preempt_pairs: HashMap<MapData, PreemptPair, u64>,
    /// {victim, holder} → ns waited behind the holder (another pod).
    pub wait_pairs: HashMap<MapData, PreemptPair, u64>,
}

#[derive(Default)]
pub struct SchedProbe {
    /// sched_info mode (`Ok(true)`), wakeup mode (`Ok(false)`), or why the asked-for mode
    /// cannot run; decided at resolve time.
    mode: Option<Result<bool, Arc<ProbeError>>>,
    maps: Option<Mutex<SchedMaps>>,
}

impl std::fmt::Debug for SchedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedProbe")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl SchedProbe {
    fn sched_info(&self) -> bool {
        matches!(self.mode, Some(Ok(true)))
    }

    /// The maps, locked, if they were taken.
    pub fn maps(&self) -> Option<MutexGuard<'_, SchedMaps>> {
        self.maps
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The fields of sched_info mode: `task->sched_info.last_queued` and `.run_delay`, and the run queue's clock
/// through `task->se.cfs_rq->rq->clock`. Layouts:
/// <https://github.com/torvalds/linux/blob/v6.18/include/linux/sched.h> (`struct sched_info`,
/// `task_struct.sched_info`, `sched_entity.cfs_rq` under CONFIG_FAIR_GROUP_SCHED),
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/sched.h> (`cfs_rq.rq` under
/// CONFIG_FAIR_GROUP_SCHED, `rq.clock`); the same fields in
/// <https://github.com/torvalds/linux/blob/v5.10/include/linux/sched.h> and
/// <https://github.com/torvalds/linux/blob/v5.10/kernel/sched/sched.h>.
pub fn resolve_sched_info(k: &KernelBtf, o: &mut Offsets) -> Result<(), ProbeError> {
    let lacks = |source| ProbeError::KernelLacks {
        what: "sched_info mode",
        config: "CONFIG_SCHED_INFO, CONFIG_FAIR_GROUP_SCHED",
        source,
    };
    let last_queued = k
        .offset_of("task_struct", "sched_info.last_queued")
        .map_err(lacks)?;
    let task_se_cfs_rq = k.offset_of("task_struct", "se").map_err(lacks)?
        + k.offset_of("sched_entity", "cfs_rq").map_err(lacks)?;
    let cfs_rq_rq = k.offset_of("cfs_rq", "rq").map_err(lacks)?;
    let rq_clock = k.offset_of("rq", "clock").map_err(lacks)?;
    o.task_run_delay = k
        .offset_of("task_struct", "sched_info.run_delay")
        .map_err(lacks)?;
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
pub fn sched_info_live(schedstat: &Path) -> Result<(), ProbeError> {
    let text = std::fs::read_to_string(schedstat).map_err(|source| ProbeError::Read {
        path: schedstat.to_path_buf(),
        source,
    })?;
    parse_schedstat_live(schedstat, &text)
}

/// `Ok` if a `/proc/<pid>/schedstat` line (`<run ns> <wait ns> <run count>`) shows a live
/// `sched_info`.
pub fn parse_schedstat_live(path: &Path, text: &str) -> Result<(), ProbeError> {
    let unexpected = || ProbeError::Unexpected {
        path: path.to_path_buf(),
        content: text.trim().to_owned(),
    };
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| unexpected())?;
    match fields.as_slice() {
        [_, _, pcount] if *pcount > 0 => Ok(()),
        [_, _, _] => Err(ProbeError::SchedInfoOff {
            path: path.to_path_buf(),
        }),
        _ => Err(unexpected()),
    }
}

/// sched_info mode (`Ok(true)`) or wakeup mode (`Ok(false)`), as `wanted` asks and the kernel
/// allows; `Err` when sched_info mode was asked for and the kernel cannot do it.
fn choose_runqueue_mode(
    wanted: RunqueueMode,
    offsets: Result<(), ProbeError>,
) -> Result<bool, ProbeError> {
    let available = || -> Result<(), ProbeError> {
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
            .map_err(|why| ProbeError::SchedInfoAsked(Box::new(why))),
        RunqueueMode::Auto => match available() {
            Ok(()) => {
                tracing::info!("run-queue latency from the kernel's sched_info (sched_info mode)");
                Ok(true)
            }
            Err(why) => {
                tracing::info!(reason = %crate::util::chain(&why), "run-queue latency from sched_wakeup (wakeup mode)");
                Ok(false)
            }
        },
    }
}

impl Probe for SchedProbe {
    fn ids(&self) -> &'static [ProbeId] {
        IDS
    }

    fn requested(&self, wanted: &Wanted) -> bool {
        wanted.sched
    }

    fn resolve(&mut self, k: &KernelBtf, offsets: &mut Offsets, wanted: &Wanted) {
        let fields = resolve_sched_info(k, offsets);
        if !wanted.sched {
            return;
        }
        let mode = choose_runqueue_mode(wanted.runqueue, fields).map_err(Arc::new);
        if matches!(mode, Ok(true)) {
            offsets.sched_info = RUNQ_MODE_SCHED_INFO;
        }
        self.mode = Some(mode);
    }

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>, wanted: &Wanted) {
        let sched_info = self.sched_info();
        loader
            // sched_info mode keeps no wait records; only throttled tasks get a record.
            .map_max_entries(WAIT_MAP, if sched_info { 1 } else { wanted.max_waiting })
            .map_max_entries(
                THROTTLED_TASKS_MAP,
                if sched_info { wanted.max_waiting } else { 1 },
            )
            // An array indexed by a hash of the pid (RUNQ_BASE_SLOTS), not sized by
            // --probe.max-waiting.
            .map_max_entries(RUNQ_TASKS_MAP, if sched_info { RUNQ_BASE_SLOTS } else { 1 })
            .map_max_entries(PREEMPT_PAIRS_MAP, wanted.max_preempt_pairs)
            .map_max_entries(WAIT_PAIRS_MAP, wanted.max_preempt_pairs);
    }

    fn attach(&mut self, ebpf: &mut Ebpf, env: &AttachEnv<'_>, report: &mut Report) {
        match &self.mode {
            Some(Err(why)) => report.fail(IDS, why),
            Some(Ok(true)) => {
                let status = attach_tp_btf(ebpf, SCHED_SWITCH_PROG, "sched_switch", env.btf)
                    .map_or_else(
                        |e| Status::Failed(Arc::new(e)),
                        |()| Status::Attached(SCHED_INFO_ATTACH),
                    );
                report.record(ProbeId::SchedSwitch, status);
                for probe in &IDS[1..] {
                    report.record(*probe, Status::NotNeeded(NOT_NEEDED_SCHED_INFO));
                }
            }
            Some(Ok(false)) | None => {
                for (probe, prog, tp) in [
                    (ProbeId::SchedSwitch, SCHED_SWITCH_PROG, "sched_switch"),
                    (ProbeId::SchedWakeup, SCHED_WAKEUP_PROG, "sched_wakeup"),
                    (
                        ProbeId::SchedWakeupNew,
                        SCHED_WAKEUP_NEW_PROG,
                        "sched_wakeup_new",
                    ),
                    (
                        ProbeId::SchedProcessExit,
                        SCHED_EXIT_PROG,
                        "sched_process_exit",
                    ),
                    (
                        ProbeId::SchedMigrateTask,
                        SCHED_MIGRATE_PROG,
                        "sched_migrate_task",
                    ),
                ] {
                    let status = attach_tp_btf(ebpf, prog, tp, env.btf).map_or_else(
                        |e| Status::Failed(Arc::new(e)),
                        |()| Status::Attached("tp_btf"),
                    );
                    report.record(probe, status);
                }
            }
        }
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        self.maps = Some(Mutex::new(SchedMaps {
            switches: kernel::take(ebpf, SWITCH_COUNT_MAP)?,
            preempt_pairs: kernel::take(ebpf, PREEMPT_PAIRS_MAP)?,
            wait_pairs: kernel::take(ebpf, WAIT_PAIRS_MAP)?,
        }));
        Ok(())
    }

    fn forget(&self, diff: &Diff<'_>) {
        // A cgroup's run-queue stats live in its KNOWN entry and leave with it; the pairs
        // name two cgroups, and go when either is gone.
        let Some(mut maps) = self.maps() else {
            return;
        };
        let live = |p: &PreemptPair| diff.is_live(p.victim) && diff.is_live(p.preemptor);
        kernel::sweep(&mut maps.preempt_pairs, live);
        kernel::sweep(&mut maps.wait_pairs, live);
    }

    fn overflows(&self, shared: &Shared) -> Vec<(&'static str, u64)> {
        shared.map_full(&[MAP_WAIT, MAP_PREEMPT_PAIRS, MAP_WAIT_PAIRS])
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_tells_whether_sched_info_is_live() {
        let p = Path::new("/proc/self/schedstat");
        for (text, live) in [
            ("276217 525967 3\n", true),
            ("1 0 1", true),
            ("0 0 0\n", false),
            ("", false),
            ("12 34\n", false),
            ("a b c", false),
        ] {
            assert_eq!(parse_schedstat_live(p, text).is_ok(), live, "{text:?}");
        }
        // This process, on this kernel (CONFIG_SCHED_INFO=y).
        sched_info_live(p).expect("sched_info live here");
    }

    #[test]
    fn mode_follows_the_flag_and_the_kernel() {
        let missing = || Err::<(), _>(ProbeError::MissingMap("no fields"));
        assert!(matches!(
            choose_runqueue_mode(RunqueueMode::Wakeup, Ok(())),
            Ok(false)
        ));
        assert!(matches!(
            choose_runqueue_mode(RunqueueMode::Auto, missing()),
            Ok(false)
        ));
        assert!(choose_runqueue_mode(RunqueueMode::SchedInfo, missing()).is_err());
        // This kernel has sched_info live (see above).
        assert!(matches!(
            choose_runqueue_mode(RunqueueMode::Auto, Ok(())),
            Ok(true)
        ));
        assert!(matches!(
            choose_runqueue_mode(RunqueueMode::SchedInfo, Ok(())),
            Ok(true)
        ));
    }
}
