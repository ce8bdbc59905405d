//! The join at the centre: cgroup id → pod uid, container id, QoS and names.
//!
//! - [`Scanner`] walks the cgroup hierarchy and labels each pod and container cgroup
//!   ([`Target`]), with names from the metadata provider's last snapshot ([`label`]).
//! - [`IdMap`] is the id → labels map the eBPF collectors join their kernel aggregates on.
//! - [`Refresher`] rescans on an interval, replaces the map, and hands every [`Subscriber`]
//!   (the probes) a [`Diff`] of the cgroups added and removed, so each probe adds and forgets
//!   its own keys.
//!
//! This module reads sources (`cgroup`, `metadata`) and is read by the collectors; it never
//! imports a collector, the CLI or the views.

mod labels;
mod scan;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub use labels::{Lookup, Target, label, label_all};
pub use scan::{ScanOptions, Scanner};

use crate::cgroup::ErrorCounts;

/// cgroup id → labels, for every tracked pod and container cgroup.
#[derive(Debug, Default)]
pub struct IdMap {
    by_id: RwLock<HashMap<u64, Target>>,
}

impl IdMap {
    /// The labels of cgroup `id`, if it is tracked.
    pub fn get(&self, id: u64) -> Option<Target> {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the whole view (tests and the refresher).
    pub fn replace(&self, by_id: HashMap<u64, Target>) {
        *self.by_id.write().unwrap_or_else(PoisonError::into_inner) = by_id;
    }
}

/// FNV-1a: a stable 64-bit id for a pod uid (tasks of one pod share it).
pub fn pod_id(pod_uid: &str) -> u64 {
    pod_uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A cgroup that appeared since the last refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub id: u64,
    /// [`pod_id`] of its pod.
    pub pod_id: u64,
    /// For a container cgroup, its pod-level cgroup's id (0 for a pod cgroup, or unknown).
    pub parent_id: u64,
}

/// What changed in one refresh.
#[derive(Debug)]
pub struct Diff<'a> {
    pub added: Vec<Added>,
    pub removed: Vec<u64>,
    live: &'a HashMap<u64, Target>,
}

impl Diff<'_> {
    /// Whether cgroup `id` exists after this refresh. A subscriber sweeps every key for which
    /// this is false, not only [`Diff::removed`]: a kernel program may re-create an entry for
    /// a cgroup after it left.
    pub fn is_live(&self, id: u64) -> bool {
        self.live.contains_key(&id)
    }
}

/// Something that keeps per-cgroup state and must follow the cgroups (the probes).
pub trait Subscriber: Send + Sync {
    /// Applies one refresh. Returns the added ids it could not take (a full map): they are
    /// left out of the [`IdMap`] and offered again as added on the next refresh.
    fn apply(&self, diff: &Diff<'_>) -> HashSet<u64>;
}

/// Rescans the cgroups and keeps the [`IdMap`] and the subscribers current.
pub struct Refresher {
    scanner: Scanner,
    map: Arc<IdMap>,
    subscribers: Vec<Arc<dyn Subscriber>>,
    /// The ids tracked after the last refresh.
    tracked: Mutex<HashSet<u64>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("scanner", &self.scanner)
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl Refresher {
    pub fn new(scanner: Scanner, map: Arc<IdMap>, subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Self {
            scanner,
            map,
            subscribers,
            tracked: Mutex::new(HashSet::new()),
        }
    }

    /// One pass: scan, diff against the last pass, let the subscribers follow, replace the
    /// map. Only pod and container cgroups are tracked. Returns the number tracked.
    pub fn refresh(&self) -> usize {
        let mut errors = ErrorCounts::default();
        let mut next: HashMap<u64, Target> = HashMap::new();
        // pod uid → the pod-level cgroup's id, the parent of its containers' cgroups.
        let mut pod_cgroup: HashMap<String, u64> = HashMap::new();
        for (d, target) in self.scanner.scan(&mut errors) {
            if target.cgroup.is_none() {
                if target.container_id.is_empty() {
                    pod_cgroup.insert(target.pod_uid.clone(), d.id);
                }
                next.insert(d.id, target);
            }
        }
        let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        let added: Vec<Added> = next
            .iter()
            .filter(|(id, _)| !tracked.contains(id))
            .map(|(id, t)| Added {
                id: *id,
                pod_id: pod_id(&t.pod_uid),
                parent_id: if t.container_id.is_empty() {
                    0
                } else {
                    pod_cgroup.get(&t.pod_uid).copied().unwrap_or(0)
                },
            })
            .collect();
        let removed: Vec<u64> = tracked
            .iter()
            .filter(|id| !next.contains_key(id))
            .copied()
            .collect();
        let gone = removed.len();
        let diff = Diff {
            added,
            removed,
            live: &next,
        };
        let mut rejected = HashSet::new();
        for s in &self.subscribers {
            rejected.extend(s.apply(&diff));
        }
        drop(diff);
        next.retain(|id, _| !rejected.contains(id));
        *tracked = next.keys().copied().collect();
        drop(tracked);
        let n = next.len();
        self.map.replace(next);
        if gone > 0 {
            // What the removed cgroups' entries (labels, scans, map keys) took is free now: give
            // the free pages back to the kernel. Costs well under a millisecond on this heap,
            // once per refresh that saw cgroups go. (The growth under churn itself was glibc's
            // per-thread arenas: see util::one_malloc_arena.)
            crate::util::release_free_memory();
        }
        n
    }

    /// Refreshes every `interval` on a background thread until `stop` is set.
    pub fn spawn(
        self: Arc<Self>,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("podstat-identity".into())
            .spawn(move || {
                let tick = Duration::from_millis(100).min(interval);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(tick);
                    if last.elapsed() >= interval {
                        let start = Instant::now();
                        let n = self.refresh();
                        tracing::trace!(tracked = n, took = ?start.elapsed(), "identity refreshed");
                        last = Instant::now();
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroup::test_util::TempTree, metadata::Store};

    #[test]
    fn pod_ids_are_stable_and_distinct() {
        assert_eq!(pod_id("a"), pod_id("a"));
        assert_ne!(
            pod_id("8a3d5f2e-1b4c-4d6e-9f0a-1b2c3d4e5f60"),
            pod_id("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0")
        );
        // FNV-1a test vector.
        assert_eq!(pod_id("a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// Records the diffs it is given and rejects the ids it is told to.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<(Vec<Added>, Vec<u64>)>>,
        reject: Mutex<HashSet<u64>>,
    }

    impl Subscriber for Recorder {
        fn apply(&self, diff: &Diff<'_>) -> HashSet<u64> {
            let mut added = diff.added.clone();
            added.sort_by_key(|a| a.id);
            let mut removed = diff.removed.clone();
            removed.sort_unstable();
            for a in &added {
                assert!(diff.is_live(a.id));
            }
            for r in &removed {
                assert!(!diff.is_live(*r));
            }
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((added.clone(), removed));
            let reject = self.reject.lock().unwrap_or_else(PoisonError::into_inner);
            added
                .iter()
                .map(|a| a.id)
                .filter(|id| reject.contains(id))
                .collect()
        }
    }

    fn inode(path: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .ino()
    }

    /// A cgroupfs v2 tree with one burstable pod and its containers, on a scratch directory:
    /// the refresher diffs pass by pass, a rejected id is retried, and a removed one leaves.
    #[test]
    fn refresh_emits_added_and_removed_and_retries_rejected() {
        let tree = TempTree::new("identity");
        tree.file("cgroup.controllers", "cpu memory\n");
        let pod = "kubepods/burstable/pod8a3d5f2e-1b4c-4d6e-9f0a-1b2c3d4e5f60";
        let c1 = "3b8f0a1c9d2e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
        let c2 = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
        for dir in [pod.to_owned(), format!("{pod}/{c1}"), format!("{pod}/{c2}")] {
            tree.file(&format!("{dir}/cpu.stat"), "usage_usec 1\n");
        }
        let metadata = Arc::new(Store::default());
        let scanner = Scanner::new(
            tree.path(),
            tree.path(),
            ScanOptions {
                non_pod: false,
                sandbox: true,
            },
            &metadata,
        )
        .expect("layout");
        let rec = Arc::new(Recorder::default());
        let map = Arc::new(IdMap::default());
        let pod_ino = inode(&tree.path().join(pod));
        let c1_ino = inode(&tree.path().join(pod).join(c1));
        let c2_ino = inode(&tree.path().join(pod).join(c2));
        rec.reject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(c2_ino);
        let r = Refresher::new(
            scanner,
            Arc::clone(&map),
            vec![Arc::clone(&rec) as Arc<dyn Subscriber>],
        );

        assert_eq!(r.refresh(), 2, "c2 was rejected");
        assert!(map.get(c2_ino).is_none());
        assert_eq!(map.get(c1_ino).map(|t| t.container_id), Some(c1.to_owned()));
        rec.reject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        assert_eq!(r.refresh(), 3, "c2 offered again");
        std::fs::remove_file(tree.path().join(pod).join(c1).join("cpu.stat")).expect("rm");
        std::fs::remove_dir(tree.path().join(pod).join(c1)).expect("rmdir");
        assert_eq!(r.refresh(), 2);
        assert!(map.get(c1_ino).is_none());

        let seen = rec.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = pod_id("8a3d5f2e-1b4c-4d6e-9f0a-1b2c3d4e5f60");
        let added = |id, parent_id| Added {
            id,
            pod_id: pid,
            parent_id,
        };
        let mut first = vec![
            added(pod_ino, 0),
            added(c1_ino, pod_ino),
            added(c2_ino, pod_ino),
        ];
        first.sort_by_key(|a| a.id);
        assert_eq!(seen[0], (first, vec![]));
        assert_eq!(seen[1], (vec![added(c2_ino, pod_ino)], vec![]));
        assert_eq!(seen[2], (vec![], vec![c1_ino]));
    }
}
