//! What every probe shares: the task → cpu-cgroup offsets, the `KNOWN` map of tracked cgroups
//! (with the scheduler statistics inside each entry), the `MAP_FULL` insert-failure slots, and
//! the attach helpers each probe's fallback chain is built from.

use std::{
    collections::HashSet,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Btf, Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, tp_btf::BtfTracePointLinkId},
};
use podstat_common::kernel::{KNOWN_MAP, Known, MAP_FULL_MAP, MAP_NAMES, Offsets};

use super::{ProbeError, btf::KernelBtf, error::Attempts};
use crate::identity::{Diff, Subscriber};

/// The offsets every program needs: the task → cpu-controller cgroup chain, pid and state.
/// Layouts: <https://github.com/torvalds/linux/blob/v6.18/include/linux/sched.h>
/// (`task_struct`), <https://github.com/torvalds/linux/blob/v6.18/include/linux/cgroup-defs.h>
/// (`css_set.subsys`, `cgroup_subsys_state.cgroup`, `cgroup.kn`),
/// <https://github.com/torvalds/linux/blob/v6.18/include/linux/kernfs.h> (`kernfs_node.id`).
pub fn resolve_offsets(k: &KernelBtf) -> Result<Offsets, super::btf::BtfError> {
    let cpu_id = k.enum_value("cgroup_subsys_id", "cpu_cgrp_id")?;
    let (elem, len) = k.array_of("css_set", "subsys")?;
    let cpu_id = u32::try_from(cpu_id)
        .ok()
        .filter(|id| *id < len)
        .ok_or_else(|| {
            super::btf::BtfError::Malformed(format!(
                "cpu_cgrp_id {cpu_id} outside css_set.subsys[{len}]"
            ))
        })?;
    Ok(Offsets {
        task_cgroups: k.offset_of("task_struct", "cgroups")?,
        css_set_cpu_subsys: k.offset_of("css_set", "subsys")? + cpu_id * elem,
        css_cgroup: k.offset_of("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: k.offset_of("cgroup", "kn")?,
        kn_id: k.offset_of("kernfs_node", "id")?,
        task_pid: k.offset_of("task_struct", "pid")?,
        task_state: k.offset_of_any("task_struct", &["__state", "state"])?.1,
        task_on_rq: k.offset_of("task_struct", "on_rq")?,
        valid: 1,
        ..Offsets::default()
    })
}

/// Byte and mask of a flag that is an `int` on some kernels and a one-bit bitfield on others
/// (`cfs_rq.throttled`, `task_struct.throttled`).
pub fn flag_byte_and_mask(
    k: &KernelBtf,
    ty: &str,
    member: &str,
) -> Result<(u32, u32), super::btf::BtfError> {
    let bit = k.bit_offset_of(ty, member)?;
    let byte = u32::try_from(bit / 8)
        .map_err(|_| super::btf::BtfError::Malformed(format!("{ty}.{member} offset")))?;
    let mask = if k.offset_of(ty, member).is_ok() {
        0xff
    } else {
        1 << (bit % 8)
    };
    Ok((byte, mask))
}

/// Takes map `name` out of the object as a `T`.
pub fn take<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Deletes every key of `map` that `keep` refuses: how a probe forgets the cgroups that left.
pub fn sweep<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    keep: impl Fn(&K) -> bool,
) {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep(k))
        .collect();
    for k in &stale {
        let _ = map.remove(k);
    }
}

/// Sums slot `i` of a per-CPU counter array over the CPUs (0 if unreadable).
pub fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, i: u32) -> u64 {
    map.get(&i, 0).map_or(0, |v| v.iter().sum())
}

/// Loads program `prog` of the object and attaches it to the BTF tracepoint `tracepoint`.
pub fn attach_tp_btf(
    ebpf: &mut Ebpf,
    prog: &'static str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<(), ProbeError> {
    attach_tp_btf_link(ebpf, prog, tracepoint, btf).map(drop)
}

/// Program `prog` of the object, as a BTF tracepoint program.
pub fn tp_btf_program<'a>(
    ebpf: &'a mut Ebpf,
    prog: &'static str,
) -> Result<&'a mut BtfTracePoint, ProbeError> {
    ebpf.program_mut(prog)
        .ok_or(ProbeError::MissingProgram(prog))?
        .try_into()
        .map_err(|source| ProbeError::ProgramType { prog, source })
}

/// As [`attach_tp_btf`], returning the link's id (to detach it again: the duty cycle).
pub fn attach_tp_btf_link(
    ebpf: &mut Ebpf,
    prog: &'static str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<BtfTracePointLinkId, ProbeError> {
    let p = tp_btf_program(ebpf, prog)?;
    p.load(tracepoint, btf)
        .map_err(|source| ProbeError::LoadProgram {
            how: "tp_btf",
            point: tracepoint.to_owned(),
            source,
        })?;
    p.attach().map_err(|source| ProbeError::Attach {
        how: "tp_btf",
        point: tracepoint.to_owned(),
        source,
    })
}

/// Which side of a kernel function a program runs on.
#[derive(Clone, Copy)]
pub enum Hook {
    FEntry,
    FExit,
}

/// A kernel function to hook: with fentry/fexit where BTF has it, else with a kprobe.
pub struct FnHook {
    pub func: &'static str,
    /// Whether BTF has a FUNC for it (fentry/fexit need one).
    pub has_btf_func: bool,
    pub prog: &'static str,
    pub hook: Hook,
    pub kprobe_prog: &'static str,
}

/// Attaches `h`: fentry/fexit first, then a kprobe. Returns how it attached, or every reason.
pub fn attach_fn(ebpf: &mut Ebpf, btf: &Btf, h: &FnHook) -> Result<&'static str, ProbeError> {
    let mut why = Attempts::default();
    if h.has_btf_func {
        let r = fentry_fexit(ebpf, btf, h.prog, h.func, h.hook).map(|()| match h.hook {
            Hook::FEntry => "fentry",
            Hook::FExit => "fexit",
        });
        match r {
            Ok(how) => return Ok(how),
            Err(e) => why.0.push(e),
        }
    } else {
        why.0.push(ProbeError::NoBtfFunc { func: h.func });
    }
    match kprobe(ebpf, h.kprobe_prog, &[h.func]) {
        Ok(()) => {
            tracing::info!(function = h.func, reasons = %why, "fell back to a kprobe");
            Ok("kprobe")
        }
        Err(e) => {
            why.0.push(e);
            Err(ProbeError::AllFailed(why))
        }
    }
}

/// Loads `prog` as an fentry or fexit program on `func` and attaches it.
pub fn fentry_fexit(
    ebpf: &mut Ebpf,
    btf: &Btf,
    prog: &'static str,
    func: &'static str,
    hook: Hook,
) -> Result<(), ProbeError> {
    let how = match hook {
        Hook::FEntry => "fentry",
        Hook::FExit => "fexit",
    };
    let load = |source| ProbeError::LoadProgram {
        how,
        point: func.to_owned(),
        source,
    };
    let attach = |source| ProbeError::Attach {
        how,
        point: func.to_owned(),
        source,
    };
    let kind = |source| ProbeError::ProgramType { prog, source };
    let p = ebpf
        .program_mut(prog)
        .ok_or(ProbeError::MissingProgram(prog))?;
    match hook {
        Hook::FEntry => {
            let p: &mut FEntry = p.try_into().map_err(kind)?;
            p.load(func, btf).map_err(load)?;
            p.attach().map(drop).map_err(attach)
        }
        Hook::FExit => {
            let p: &mut FExit = p.try_into().map_err(kind)?;
            p.load(func, btf).map_err(load)?;
            p.attach().map(drop).map_err(attach)
        }
    }
}

/// Loads `prog` as a kprobe (or kretprobe: the program's own type says) and attaches it to
/// every function of `funcs`.
pub fn kprobe(ebpf: &mut Ebpf, prog: &'static str, funcs: &[&str]) -> Result<(), ProbeError> {
    let p: &mut KProbe = ebpf
        .program_mut(prog)
        .ok_or(ProbeError::MissingProgram(prog))?
        .try_into()
        .map_err(|source| ProbeError::ProgramType { prog, source })?;
    p.load().map_err(|source| ProbeError::LoadProgram {
        how: "kprobe",
        point: prog.to_owned(),
        source,
    })?;
    for f in funcs {
        p.attach(*f, 0).map_err(|source| ProbeError::Attach {
            how: "kprobe",
            point: (*f).to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// The maps every probe shares.
pub struct SharedMaps {
    /// cgroup id → [`Known`]: the cgroups the programs measure; run-queue stats inside.
    pub known: HashMap<MapData, u64, Known>,
    /// Insert failures of the scheduler and throttle maps, by `MAP_*` slot.
    pub map_full: PerCpuArray<MapData, u64>,
}

/// The shared maps, and the `KNOWN` inserts that failed because it was full.
pub struct Shared {
    maps: Mutex<SharedMaps>,
    known_full: AtomicU64,
}

impl Shared {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(Self {
            maps: Mutex::new(SharedMaps {
                known: take(ebpf, KNOWN_MAP)?,
                map_full: take(ebpf, MAP_FULL_MAP)?,
            }),
            known_full: AtomicU64::new(0),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, SharedMaps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every tracked cgroup's `KNOWN` entry.
    pub fn known(&self) -> Vec<(u64, Known)> {
        self.lock().known.iter().filter_map(Result::ok).collect()
    }

    /// The `MAP_FULL` counters of `slots`, summed over CPUs, by their `map` label (`MAP_NAMES`).
    pub fn map_full(&self, slots: &[u32]) -> Vec<(&'static str, u64)> {
        let maps = self.lock();
        slots
            .iter()
            .filter_map(|&slot| {
                let name = MAP_NAMES.get(usize::try_from(slot).ok()?)?;
                Some((*name, per_cpu_sum(&maps.map_full, slot)))
            })
            .collect()
    }

    /// Whether the kernel lets this thread read `KNOWN` (a lookup of an absent key).
    pub fn readable(&self) -> Result<(), MapError> {
        match self.lock().known.get(&0, 0) {
            Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `KNOWN` inserts that failed because the map was full.
    pub fn known_full(&self) -> u64 {
        self.known_full.load(Ordering::Relaxed)
    }
}

impl Subscriber for Shared {
    /// Removes the cgroups that left from `KNOWN` and adds the new ones; an insert into a full
    /// map is counted and the cgroup rejected (it is offered again next refresh).
    fn apply(&self, diff: &Diff<'_>) -> HashSet<u64> {
        let mut maps = self.lock();
        for id in &diff.removed {
            let _ = maps.known.remove(id);
        }
        let mut rejected = HashSet::new();
        for a in &diff.added {
            let known = Known {
                pod_id: a.pod_id,
                parent_id: a.parent_id,
                ..Known::default()
            };
            if let Err(e) = maps.known.insert(a.id, known, 0) {
                self.known_full.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cgroup_id = a.id, error = %e, "KNOWN map full; cgroup not measured by the probes");
                rejected.insert(a.id);
            }
        }
        rejected
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE to raise).
pub fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        libc::RLIM_INFINITY,
        libc::RLIM_INFINITY,
    ) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK (fine on 5.11+, where BPF memory is memcg-accounted)");
    }
}
