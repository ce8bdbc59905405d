//! Keeps the probes' view of the node current: which cgroups are pods and containers
//! (the kernel's KNOWN map) and how each cgroup id is labelled (the [`Identity`] the
//! collectors join on). Runs at startup and then every `--probe.refresh-interval`.
//!
//! When a cgroup goes away its KNOWN entry and its stats are deleted, so its series leave the
//! next scrape and the maps do not fill with churn.

use std::{
    collections::HashMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use podstat_common::sched::Known;

use super::Probes;
use crate::{
    cgroup::ErrorCounts,
    collector::cgroup::{Target, Targets},
};

/// cgroup id → labels, for every tracked cgroup.
#[derive(Debug, Default)]
pub struct Identity {
    by_id: RwLock<HashMap<u64, Target>>,
    /// KNOWN inserts that failed because the map was full.
    pub known_full: AtomicU64,
}

impl Identity {
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

    /// Replaces the whole view (tests and the tracker).
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

#[derive(Debug)]
pub struct Tracker {
    probes: Arc<Probes>,
    targets: Targets,
    identity: Arc<Identity>,
}

impl Tracker {
    pub fn new(probes: Arc<Probes>, targets: Targets, identity: Arc<Identity>) -> Self {
        Self {
            probes,
            targets,
            identity,
        }
    }

    /// One pass: scan the cgroups, update KNOWN, drop the stats of cgroups that are gone.
    /// Returns the number of tracked cgroups.
    pub fn refresh(&self) -> usize {
        let mut errors = ErrorCounts::default();
        let scanned = self.targets.scan(&mut errors);
        let mut next: HashMap<u64, Target> = HashMap::with_capacity(scanned.len());
        // pod uid → the pod-level cgroup's id, the parent of its containers' cgroups.
        let mut pod_cgroup: HashMap<String, u64> = HashMap::new();
        for (d, target) in scanned {
            // Only pod and container cgroups are measured in the kernel.
            if target.cgroup.is_none() {
                if target.container_id.is_empty() {
                    pod_cgroup.insert(target.pod_uid.clone(), d.id);
                }
                next.insert(d.id, target);
            }
        }
        let Some(mut maps) = self.probes.maps() else {
            self.identity.replace(next);
            return 0;
        };
        let old: Vec<u64> = maps.known.keys().filter_map(Result::ok).collect();
        for id in &old {
            if !next.contains_key(id) {
                let _ = maps.known.remove(id);
            }
        }
        // Stats of cgroups that are gone (a cgroup's run-queue stats live in its KNOWN entry
        // and went with it), including entries a probe re-created after the cgroup left
        // KNOWN: swept so the maps never fill with churn.
        let stale: Vec<u64> = maps
            .throttle_stats
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !next.contains_key(id))
            .collect();
        for id in &stale {
            let _ = maps.throttle_stats.remove(id);
        }
        let stale: Vec<_> = maps
            .preempt_pairs
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !(next.contains_key(&p.victim) && next.contains_key(&p.preemptor)))
            .collect();
        for pair in &stale {
            let _ = maps.preempt_pairs.remove(pair);
        }
        let stale: Vec<u64> = maps
            .net
            .stats
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !next.contains_key(id))
            .collect();
        for id in &stale {
            let _ = maps.net.stats.remove(id);
        }
        let mut tracked = HashMap::with_capacity(next.len());
        for (id, target) in next {
            if !old.contains(&id) {
                let parent_id = if target.container_id.is_empty() {
                    0
                } else {
                    pod_cgroup.get(&target.pod_uid).copied().unwrap_or(0)
                };
                let known = Known {
                    pod_id: pod_id(&target.pod_uid),
                    parent_id,
                    ..Known::default()
                };
                if let Err(e) = maps.known.insert(id, known, 0) {
                    self.identity.known_full.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cgroup_id = id, error = %e, "KNOWN map full; cgroup not measured by the probes");
                    continue;
                }
            }
            tracked.insert(id, target);
        }
        drop(maps);
        let n = tracked.len();
        self.identity.replace(tracked);
        n
    }

    /// Refreshes every `interval` on a background thread until `stop` is set.
    pub fn spawn(
        self: Arc<Self>,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("podstat-tracker".into())
            .spawn(move || {
                let tick = Duration::from_millis(100).min(interval);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(tick);
                    if last.elapsed() >= interval {
                        let start = Instant::now();
                        let n = self.refresh();
                        tracing::trace!(tracked = n, took = ?start.elapsed(), "probe targets refreshed");
                        last = Instant::now();
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
