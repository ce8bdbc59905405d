//! The throttle probe (`ebpf/src/throttle.rs`): the shape of each CFS throttle episode per
//! pod: pause length, how far into the period the quota ran out, threads runnable then.
//!
//! Fallback chain: fexit/throttle_cfs_rq and fentry/unthrottle_cfs_rq; else kprobes on both;
//! else the throttling is seen from `tp_btf/sched_switch` (switch mode).

use std::{
    any::Any,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
};
use podstat_common::{
    kernel::{MAP_THROTTLE_STATS, Offsets},
    sched::SCHED_SWITCH_PROG,
    throttle::{
        THROTTLE_FEXIT_PROG, THROTTLE_KPROBE_PROG, THROTTLE_MODE_HOOKS, THROTTLE_MODE_MAP,
        THROTTLE_MODE_OFF, THROTTLE_MODE_SWITCH, THROTTLE_STATS_MAP, ThrottleStats,
        UNTHROTTLE_FENTRY_PROG, UNTHROTTLE_KPROBE_PROG,
    },
};

use super::{
    AttachEnv, Attempts, Probe, ProbeError, ProbeId, Report, Status, Wanted,
    btf::{BtfError, KernelBtf},
    kernel::{self, FnHook, Hook, Shared, attach_tp_btf, flag_byte_and_mask},
};
use crate::identity::Diff;

const IDS: &[ProbeId] = &[ProbeId::CfsThrottle, ProbeId::CfsUnthrottle];

#[derive(Default)]
pub struct ThrottleProbe {
    /// The CFS bandwidth fields resolved, or why not.
    fields: Option<Result<(), Arc<ProbeError>>>,
    /// Whether BTF has FUNCs for `throttle_cfs_rq` and `unthrottle_cfs_rq` (fentry/fexit).
    btf_funcs: (bool, bool),
    stats: Option<Mutex<HashMap<MapData, u64, ThrottleStats>>>,
}

impl std::fmt::Debug for ThrottleProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleProbe")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl ThrottleProbe {
    /// cgroup id → its throttle episodes, locked, if the map was taken.
    pub fn stats(&self) -> Option<MutexGuard<'_, HashMap<MapData, u64, ThrottleStats>>> {
        self.stats
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The CFS bandwidth fields (CONFIG_CFS_BANDWIDTH), and for the sched_switch fallback the
/// task → group cfs_rq → parent entity chain. Layouts:
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/sched/sched.h> (`cfs_rq`,
/// `task_group`, `cfs_bandwidth`), <https://github.com/torvalds/linux/blob/v6.18/include/linux/sched.h>
/// (`sched_entity`, `task_struct.throttled`).
pub fn resolve_fields(k: &KernelBtf, o: &mut Offsets) -> Result<(), BtfError> {
    o.cfs_rq_tg = k.offset_of("cfs_rq", "tg")?;
    // `int throttled` on older kernels, `bool throttled:1` in 6.18: pass byte and mask.
    (o.cfs_rq_throttled, o.cfs_rq_throttled_mask) = flag_byte_and_mask(k, "cfs_rq", "throttled")?;
    // 6.14 renamed h_nr_running to h_nr_queued and added h_nr_runnable (queued minus
    // delayed-dequeue tasks): prefer the one that counts runnable threads.
    o.cfs_rq_h_nr = k
        .offset_of_any("cfs_rq", &["h_nr_runnable", "h_nr_running", "h_nr_queued"])?
        .1;
    o.tg_css_cgroup = k.offset_of("task_group", "css")? + o.css_cgroup;
    o.tg_period = k.offset_of("task_group", "cfs_bandwidth.period")?;
    o.tg_period_expires = k.offset_of("task_group", "cfs_bandwidth.period_timer.node.expires")?;
    let se = k.offset_of("task_struct", "se")?;
    o.se_cfs_rq = k.offset_of("sched_entity", "cfs_rq")?;
    o.se_parent = k.offset_of("sched_entity", "parent")?;
    o.task_se_cfs_rq = se + o.se_cfs_rq;
    o.task_se_parent = se + o.se_parent;
    if k.has_member("task_struct", "throttled") {
        o.task_based_throttle = 1;
        (o.task_throttled, o.task_throttled_mask) =
            flag_byte_and_mask(k, "task_struct", "throttled")?;
    }
    Ok(())
}

fn set_throttle_mode(ebpf: &mut Ebpf, mode: u32) -> Result<(), ProbeError> {
    let name = THROTTLE_MODE_MAP;
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut array: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    array
        .set(0, mode, 0)
        .map_err(|source| ProbeError::Map { name, source })
}

impl ThrottleProbe {
    /// The fallback chain; returns the mode the programs run in.
    fn attach_chain(&self, ebpf: &mut Ebpf, env: &AttachEnv<'_>, report: &mut Report) -> u32 {
        let t = kernel::attach_fn(
            ebpf,
            env.btf,
            &FnHook {
                func: "throttle_cfs_rq",
                has_btf_func: self.btf_funcs.0,
                prog: THROTTLE_FEXIT_PROG,
                hook: Hook::FExit,
                kprobe_prog: THROTTLE_KPROBE_PROG,
            },
        );
        let u = kernel::attach_fn(
            ebpf,
            env.btf,
            &FnHook {
                func: "unthrottle_cfs_rq",
                has_btf_func: self.btf_funcs.1,
                prog: UNTHROTTLE_FENTRY_PROG,
                hook: Hook::FEntry,
                kprobe_prog: UNTHROTTLE_KPROBE_PROG,
            },
        );
        match (t, u) {
            (Ok(t), Ok(u)) => {
                report.record(ProbeId::CfsThrottle, Status::Attached(t));
                report.record(ProbeId::CfsUnthrottle, Status::Attached(u));
                THROTTLE_MODE_HOOKS
            }
            (t, u) => {
                // The kernel refuses fentry/fexit and has no kprobes (or the functions are
                // gone): watch throttling from sched_switch instead.
                let why = Attempts([t.err(), u.err()].into_iter().flatten().collect());
                tracing::info!(reasons = %why, "throttle hooks unavailable; detecting throttling from sched_switch");
                let switch_ok = report.attached(ProbeId::SchedSwitch)
                    || attach_tp_btf(ebpf, SCHED_SWITCH_PROG, "sched_switch", env.btf).is_ok();
                if switch_ok {
                    for p in IDS {
                        report.record(*p, Status::Attached("tp_btf/sched_switch"));
                    }
                    THROTTLE_MODE_SWITCH
                } else {
                    report.fail(IDS, &Arc::new(ProbeError::NoThrottleHook(why)));
                    THROTTLE_MODE_OFF
                }
            }
        }
    }
}

impl Probe for ThrottleProbe {
    fn ids(&self) -> &'static [ProbeId] {
        IDS
    }

    fn requested(&self, wanted: &Wanted) -> bool {
        wanted.throttle
    }

    fn resolve(&mut self, k: &KernelBtf, offsets: &mut Offsets, _wanted: &Wanted) {
        // The deficit counts at most one thread per online CPU; unknown: no cap.
        offsets.nr_cpus = aya::util::online_cpus()
            .map_or(0, |cpus| u32::try_from(cpus.len()).unwrap_or(u32::MAX));
        self.fields = Some(resolve_fields(k, offsets).map_err(|source| {
            Arc::new(ProbeError::KernelLacks {
                what: "CFS bandwidth tracking",
                config: "CONFIG_CFS_BANDWIDTH",
                source,
            })
        }));
        self.btf_funcs = (
            k.has_func("throttle_cfs_rq"),
            k.has_func("unthrottle_cfs_rq"),
        );
    }

    fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>, wanted: &Wanted) {
        loader.map_max_entries(THROTTLE_STATS_MAP, wanted.max_cgroups);
    }

    fn attach(&mut self, ebpf: &mut Ebpf, env: &AttachEnv<'_>, report: &mut Report) {
        let mode = match &self.fields {
            Some(Ok(())) => self.attach_chain(ebpf, env, report),
            Some(Err(why)) => {
                report.fail(IDS, why);
                THROTTLE_MODE_OFF
            }
            None => THROTTLE_MODE_OFF,
        };
        if let Err(why) = set_throttle_mode(ebpf, mode) {
            report.fail(IDS, &Arc::new(why));
        }
    }

    fn take_maps(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        self.stats = Some(Mutex::new(kernel::take(ebpf, THROTTLE_STATS_MAP)?));
        Ok(())
    }

    fn forget(&self, diff: &Diff<'_>) {
        let Some(mut stats) = self.stats() else {
            return;
        };
        // Including entries the programs re-created after the cgroup left KNOWN.
        kernel::sweep(&mut stats, |id| diff.is_live(*id));
    }

    fn overflows(&self, shared: &Shared) -> Vec<(&'static str, u64)> {
        shared.map_full(&[MAP_THROTTLE_STATS])
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
