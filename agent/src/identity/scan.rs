//! Finding the pod and container cgroups of this host, with their labels.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::{Target, labels::label_all};
use crate::{
    cgroup::{self, CgroupError, CgroupKind, DiscoverOptions, Discovered, ErrorCounts, Layout},
    metadata::Store,
};

/// Which cgroups a scan returns besides the pods' workload containers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Also non-pod cgroups (system.slice services, the runtime itself), labelled by path.
    pub non_pod: bool,
    /// Also the pod sandbox ("pause") containers.
    pub sandbox: bool,
}

/// How long a container with no process yet stays "not a sandbox" before it is checked again.
const SANDBOX_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Sandbox,
    Workload,
    /// No process to look at when checked.
    Unknown(Instant),
}

/// Walks the cgroup hierarchy and labels what it finds: the identity join that the cgroup
/// collector and the eBPF probes share.
#[derive(Debug)]
pub struct Scanner {
    layout: Layout,
    opts: ScanOptions,
    procfs: PathBuf,
    /// container id → is it a sandbox? Decided once per container (it costs two reads).
    sandbox: Mutex<HashMap<String, Verdict>>,
    /// Names from the metadata provider (empty without one).
    metadata: Arc<Store>,
}

impl Scanner {
    /// Detects the cgroup layout under `cgroupfs`; `procfs` is where sandbox processes are
    /// looked up.
    pub fn new(
        cgroupfs: &Path,
        procfs: &Path,
        opts: ScanOptions,
        metadata: &Arc<Store>,
    ) -> Result<Self, CgroupError> {
        Ok(Self {
            layout: Layout::detect(cgroupfs)?,
            opts,
            procfs: procfs.to_path_buf(),
            sandbox: Mutex::new(HashMap::new()),
            metadata: Arc::clone(metadata),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A sandbox ("pause") container runs a single process named `pause`.
    fn is_sandbox(&self, d: &Discovered, id: &str, cache: &mut HashMap<String, Verdict>) -> bool {
        match cache.get(id) {
            Some(Verdict::Sandbox) => return true,
            Some(Verdict::Workload) => return false,
            Some(Verdict::Unknown(at)) if at.elapsed() < SANDBOX_RECHECK => return false,
            _ => {}
        }
        let procs = std::fs::read_to_string(self.layout.cpu.join(&d.rel_path).join("cgroup.procs"))
            .unwrap_or_default();
        let verdict = match procs.lines().next() {
            // No process (yet): decide later, when it has one.
            None => Verdict::Unknown(Instant::now()),
            Some(pid) => {
                let comm = std::fs::read_to_string(self.procfs.join(pid.trim()).join("comm"))
                    .unwrap_or_default();
                if comm.trim_end() == "pause" {
                    Verdict::Sandbox
                } else {
                    Verdict::Workload
                }
            }
        };
        cache.insert(id.to_owned(), verdict);
        matches!(verdict, Verdict::Sandbox)
    }

    /// Walks the cpu hierarchy: every pod and container cgroup (and, with
    /// [`ScanOptions::non_pod`], every other one) with its labels, sandboxes left out unless
    /// asked for.
    pub fn scan(&self, errors: &mut ErrorCounts) -> Vec<(Discovered, Target)> {
        let opts = DiscoverOptions {
            include_non_pod: self.opts.non_pod,
            ..DiscoverOptions::default()
        };
        let found = cgroup::discover(&self.layout, &opts, errors);
        let mut cache = self.sandbox.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(found.len());
        let mut live = Vec::new();
        for d in found {
            if let CgroupKind::Container { container_id, .. } = &d.kind {
                live.push(container_id.clone());
                if !self.opts.sandbox && self.is_sandbox(&d, container_id, &mut cache) {
                    continue;
                }
            }
            let target = Target::from_kind(&d);
            out.push((d, target));
        }
        // Forget containers that are gone, so the cache does not grow with churn.
        if cache.len() > live.len() {
            let live: HashSet<&str> = live.iter().map(String::as_str).collect();
            cache.retain(|id, _| live.contains(id.as_str()));
        }
        drop(cache);
        // Names from the metadata provider; the sandboxes it names (CRI knows them for sure)
        // go too, unless asked for.
        label_all(&self.metadata, &mut out, self.opts.sandbox, |(_, t)| t);
        out
    }
}
