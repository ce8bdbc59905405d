//! Reading kernel structs through offsets that userspace resolved from the running kernel's
//! BTF, and the maps every scheduler probe shares.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use podstat_common::kernel::{
    DEFAULT_MAX_CGROUPS, Hist, Known, Layout, MAP_NAMES, Offsets, slot_of, slot_of_ns,
};

/// Kernel struct offsets, filled in by the loader (`EbpfLoader::set_global`) before load.
/// The verifier sees them as constants, so the reads below cost what hand-written ones do.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    task_cgroups: 0,
    css_set_cpu_subsys: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    task_pid: 0,
    task_state: 0,
    task_on_rq: 0,
    cfs_rq_tg: 0,
    cfs_rq_throttled: 0,
    cfs_rq_throttled_mask: 0,
    cfs_rq_h_nr: 0,
    tg_css_cgroup: 0,
    tg_period: 0,
    tg_period_expires: 0,
    task_se_cfs_rq: 0,
    task_se_parent: 0,
    se_cfs_rq: 0,
    se_parent: 0,
    task_based_throttle: 0,
    task_throttled: 0,
    task_throttled_mask: 0,
    nr_cpus: 0,
    task_last_queued: 0,
    cfs_rq_rq: 0,
    rq_clock: 0,
    task_run_delay: 0,
    sched_info: 0,
    valid: 0,
};

/// The cgroups to measure (pod and container cgroups), written by userspace.
#[map]
pub static KNOWN: HashMap<u64, Known> = HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

/// Insert failures per map (slots named by `MAP_NAMES`), per CPU.
#[map]
pub static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAP_NAMES.len() as u32, 0);

#[inline(always)]
pub fn offsets() -> &'static Offsets {
    // SAFETY: OFFSETS is a plain static that lives for the whole program. The pointer goes
    // through black_box so that LLVM cannot fold the zero initialiser into the code (the loader
    // rewrites the value), yet each field is loaded only where it is used: copying the whole
    // struct out with one volatile read cost about 50 instructions per event. The verifier
    // still sees a pointer into the frozen read-only map, so the loads are constants to it.
    unsafe { &*core::hint::black_box(&raw const OFFSETS) }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    if base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel copies with fault handling; a bad address is an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) }
}

/// Loads a `T` at `base + off` directly. Only for pointers the verifier knows the BTF type of
/// (tp_btf arguments and what is loaded through them): it checks the access against the
/// kernel's BTF (the offset is a constant from the read-only OFFSETS, so it knows which field)
/// and turns it into a fault-safe load. One instruction instead of a helper call per hop,
/// which is most of the probe's cost on the scheduler's hot path.
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, off: u32) -> Result<T, i32> {
    if base.is_null() {
        return Err(-1);
    }
    // SAFETY: see above; a faulting address reads as zero instead of crashing (BPF_PROBE_MEM).
    Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize).cast::<T>()) })
}

/// The kernfs id of a cgroup (`cgroup->kn->id`), which is its directory's inode number.
#[inline(always)]
pub fn cgroup_kn_id(cgrp: *const u8, o: &Offsets) -> Result<u64, i32> {
    let kn: *const u8 = read(cgrp, o.cgroup_kn)?;
    read(kn, o.kn_id)
}

/// The id of the task's cgroup in the cpu controller's hierarchy
/// (`task->cgroups->subsys[cpu_cgrp_id]->cgroup->kn->id`): the same on cgroup v1 and v2.
#[inline(always)]
pub fn task_cgroup_id(task: *const u8, o: &Offsets) -> Result<u64, i32> {
    let cset: *const u8 = load(task, o.task_cgroups)?;
    let css: *const u8 = load(cset, o.css_set_cpu_subsys)?;
    let cgrp: *const u8 = load(css, o.css_cgroup)?;
    let kn: *const u8 = load(cgrp, o.cgroup_kn)?;
    load(kn, o.kn_id)
}

#[inline(always)]
pub fn map_full(slot: u32) {
    if let Some(p) = MAP_FULL.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot of a per-CPU array; tracing programs do not nest on a CPU
        // for the same program.
        unsafe { *p += 1 };
    }
}

/// Adds `v` to the u64 at `p` atomically (several CPUs update the same cgroup's value).
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: p points into a map value, 8-byte aligned. With the result unused this is the
    // BPF `lock +=` (xadd) instruction, which every kernel we support accepts.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Records `value` (its own unit: ns, or threads) in the bucket of `units` (the same value in
/// the layout's kernel units) of `hist`, and adds it to the sum. The bucket is found with bit
/// operations ([`slot_of`]); every histogram of every probe goes through here or
/// [`observe_ns`].
#[inline(always)]
pub fn observe<const N: usize>(hist: *mut Hist<N>, l: &Layout, units: u64, value: u64) {
    add_to(hist, slot_of(units, l), value);
}

/// [`observe`] for a duration in ns, the slot from [`slot_of_ns`] (the zero bucket by a compare
/// of the ns, without the conversion).
#[inline(always)]
pub fn observe_ns<const N: usize>(hist: *mut Hist<N>, l: &Layout, ns: u64) {
    add_to(hist, slot_of_ns(ns, l), ns);
}

/// Counts a duration of `ns` in its bucket of `hist` and leaves the sum slot alone (whether it
/// was counted): for a histogram whose sum another counter already holds (the run-queue
/// latency's is the sum of `wait_by`), one atomic add per event instead of two.
#[inline(always)]
pub fn count_ns<const N: usize>(hist: *mut Hist<N>, l: &Layout, ns: u64) -> bool {
    count_slot(hist, slot_of_ns(ns, l))
}

/// Adds one to `slot` of `hist` if it is one of its buckets; whether it was.
#[inline(always)]
pub fn count_slot<const N: usize>(hist: *mut Hist<N>, slot: usize) -> bool {
    if slot >= N {
        return false;
    }
    // SAFETY: slot is bounds-checked; hist points into a map value.
    unsafe { atomic_add(core::ptr::addr_of_mut!((*hist)[slot]), 1) };
    true
}

/// Counts `slot` of `hist` and adds `value` to its sum slot (`N - 1`).
#[inline(always)]
fn add_to<const N: usize>(hist: *mut Hist<N>, slot: usize, value: u64) {
    if count_slot(hist, slot) {
        // SAFETY: hist points into a map value; N - 1 is the sum slot.
        unsafe { atomic_add(core::ptr::addr_of_mut!((*hist)[N - 1]), value) };
    }
}

/// Looks `key` up in `map`, inserting `zero` first if it is missing. `None` (and a
/// count in MAP_FULL) when the map is full.
#[inline(always)]
pub fn get_or_insert<K: Copy, V>(
    map: &HashMap<K, V>,
    key: K,
    zero: &V,
    full_slot: u32,
) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    // `zero` is a static (in .rodata, itself a map), so the large value never sits on the
    // 512-byte BPF stack. A race with another CPU inserting the same key is fine: BPF_NOEXIST
    // fails and the lookup finds the other CPU's value.
    let _ = map.insert(key, zero, u64::from(BPF_NOEXIST));
    let p = map.get_ptr_mut(key);
    if p.is_none() {
        map_full(full_slot);
    }
    p
}
