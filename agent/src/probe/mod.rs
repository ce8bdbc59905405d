//! eBPF probes: the embedded object, loaded and attached at startup.
//!
//! Each probe loads or fails on its own. A probe that fails is reported as
//! `podstat_probe_attached{probe} 0` with the reason in the log (and in `podstat check`);
//! the rest keep working.

use std::{
    fmt,
    sync::{Mutex, PoisonError},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::BtfTracePoint,
};
use podstat_common::sched as common;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

/// The eBPF object built from `ebpf/` by `build.rs`. Empty when the agent was built without
/// the eBPF toolchain (plain `cargo build`): then every probe reports "not built".
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podstat"));

/// Whether this binary carries an eBPF object at all.
pub fn object_embedded() -> bool {
    !OBJECT.is_empty()
}

/// The probes podstat knows, in report order.
pub const PROBES: &[&str] = &["sched_switch"];

/// Outcome of loading one probe.
#[derive(Debug, Clone)]
pub enum Status {
    Attached,
    Failed(String),
    /// Not requested (its collector is off).
    Disabled,
}

/// The loaded object and the map handles the collectors read.
pub struct Probes {
    status: Vec<(&'static str, Status)>,
    /// Context switches per CPU (one slot, per-CPU).
    pub sched_switches: Option<Mutex<PerCpuArray<MapData, u64>>>,
    /// Keeps programs and links alive; dropping it detaches everything.
    _ebpf: Option<Ebpf>,
}

impl fmt::Debug for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Which probes to load.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub sched: bool,
}

impl Probes {
    /// No probes at all (for tests and for `--no-collector.sched`).
    pub fn none() -> Self {
        Self {
            status: PROBES.iter().map(|p| (*p, Status::Disabled)).collect(),
            sched_switches: None,
            _ebpf: None,
        }
    }

    /// Loads the embedded object and attaches the wanted probes. Never fails as a whole:
    /// every failure is recorded per probe.
    pub fn load(wanted: Wanted) -> Self {
        let mut probes = Self::none();
        if !wanted.sched {
            return probes;
        }
        let fail = |probes: &mut Self, why: String| {
            tracing::warn!(probe = "sched_switch", reason = %why, "probe not attached");
            probes.set("sched_switch", Status::Failed(why));
        };
        if !object_embedded() {
            fail(
                &mut probes,
                "this binary was built without the eBPF object (build it with `cargo xtask build`)"
                    .into(),
            );
            return probes;
        }
        raise_memlock_limit();
        let btf = match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => {
                fail(
                    &mut probes,
                    format!("kernel BTF unavailable at /sys/kernel/btf/vmlinux: {e}"),
                );
                return probes;
            }
        };
        let mut ebpf = match EbpfLoader::new().btf(Some(&btf)).load(OBJECT) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                fail(
                    &mut probes,
                    format!("loading the eBPF object: {}", chain(&e)),
                );
                return probes;
            }
        };
        match attach_sched(&mut ebpf, &btf) {
            Ok(map) => {
                probes.sched_switches = Some(Mutex::new(map));
                probes.set("sched_switch", Status::Attached);
                tracing::info!(probe = "sched_switch", "probe attached");
            }
            Err(why) => fail(&mut probes, why),
        }
        probes._ebpf = Some(ebpf);
        probes
    }

    fn set(&mut self, probe: &'static str, status: Status) {
        if let Some(slot) = self.status.iter_mut().find(|(p, _)| *p == probe) {
            slot.1 = status;
        }
    }

    /// Per-probe outcome, for `podstat check`.
    pub fn status(&self) -> &[(&'static str, Status)] {
        &self.status
    }

    /// Sum over CPUs is left to PromQL; this returns the per-CPU context switch counts.
    pub fn context_switches(&self) -> Option<Vec<u64>> {
        let map = self.sched_switches.as_ref()?;
        let map = map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&0, 0).ok().map(|v| v.iter().copied().collect())
    }

    /// `podstat_probe_attached{probe}` for every requested probe.
    pub fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct ProbeLabel {
            probe: &'static str,
        }
        if self
            .status
            .iter()
            .all(|(_, s)| matches!(s, Status::Disabled))
        {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(
            "podstat_probe_attached",
            "1 if the eBPF probe is loaded and attached, 0 if it failed (the log and `podstat check` say why).",
            None,
            MetricType::Gauge,
        )?;
        for (probe, status) in &self.status {
            let v = match status {
                Status::Attached => 1,
                Status::Failed(_) => 0,
                Status::Disabled => continue,
            };
            ConstGauge::new(v).encode(m.encode_family(&ProbeLabel { probe })?)?;
        }
        Ok(())
    }
}

fn attach_sched(ebpf: &mut Ebpf, btf: &Btf) -> Result<PerCpuArray<MapData, u64>, String> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(common::SCHED_SWITCH_PROG)
        .ok_or_else(|| {
            format!(
                "program {} missing from the object",
                common::SCHED_SWITCH_PROG
            )
        })?
        .try_into()
        .map_err(|e| format!("program type: {}", chain(&e)))?;
    prog.load("sched_switch", btf)
        .map_err(|e| format!("verifier/load: {}", chain(&e)))?;
    prog.attach()
        .map_err(|e| format!("attach tp_btf/sched_switch: {}", chain(&e)))?;
    let map = ebpf
        .take_map(common::SWITCH_COUNT_MAP)
        .ok_or_else(|| format!("map {} missing from the object", common::SWITCH_COUNT_MAP))?;
    PerCpuArray::try_from(map)
        .map_err(|e| format!("map {}: {}", common::SWITCH_COUNT_MAP, chain(&e)))
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

/// An error with its sources, joined by ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
