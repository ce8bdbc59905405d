//! The agent assembled once: [`Agent::start`] loads the probes, builds the identity join and
//! the collectors, and registers them. `podstat agent`, `podstat check`, `podstat top` and
//! `podstat explain` all start it the same way, and so do the golden tests.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use prometheus_client::registry::Registry;

use crate::{
    Paths,
    collector::{self, Gatherer},
    identity::{IdMap, Refresher, Scanner, Subscriber},
    metadata::{self, Store},
    privilege,
    probe::{Probes, Wanted, kernel::Shared, metrics::ProbeMetrics},
};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The enabled collectors, by name.
    pub enabled: Vec<&'static str>,
    pub paths: Paths,
    pub cgroup: collector::cgroup::Options,
    pub sched: collector::sched::Options,
    /// The probes to load; `None` loads none (not root, or a fixture tree).
    pub probes: Option<Wanted>,
    /// How often the identity join (and the probes' `KNOWN` map) is refreshed.
    pub refresh_interval: Duration,
    /// Names from the metadata provider; the caller decides what fills it.
    pub metadata: Arc<Store>,
    /// Drop every capability and set `no_new_privs` once the probes are attached, before any
    /// thread starts (`podstat agent` and `podstat check` do; the views and tests do not).
    pub drop_privileges: bool,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the identity refresh thread")]
    Refresher(#[source] std::io::Error),
    #[error("starting the steering duty-cycle thread")]
    Duty(#[source] std::io::Error),
}

/// The running agent: the registry to serve, and the pieces behind it. Dropping it stops
/// the identity refresh and detaches the probes.
pub struct Running {
    pub registry: Arc<Registry>,
    pub gatherer: Arc<Gatherer>,
    pub probes: Arc<Probes>,
    pub metadata: Arc<Store>,
    /// What was done about capabilities after attach.
    pub privilege: privilege::Outcome,
    stop: Arc<AtomicBool>,
    refresher: Option<JoinHandle<()>>,
    /// The steering reader program's duty cycle (`probe::duty`).
    duty: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in [self.refresher.take(), self.duty.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

pub struct Agent;

impl Agent {
    /// Loads the probes (if asked), builds the identity join and the enabled collectors, and
    /// registers them with the self-metrics. With probes loaded, the identity has done its
    /// first refresh when this returns, and refreshes every `refresh_interval` after.
    pub fn start(config: Config) -> Result<Running, StartError> {
        let probes = Arc::new(match config.probes {
            Some(wanted) => Probes::load(wanted, &config.paths.sysfs),
            None => Probes::none(),
        });
        // Loading the probes parses the kernel's BTF (several MiB, twice: ours and aya's); that
        // memory is free again, but glibc keeps it in its heap.
        crate::util::release_free_memory();
        let privilege = if config.drop_privileges {
            let read = |shared: &Shared| shared.readable();
            let outcome = match probes.shared() {
                Some(shared) => privilege::drop_all(Some(&|| read(shared))),
                None => privilege::drop_all::<aya::maps::MapError>(None),
            };
            if let privilege::Outcome::Dropped { .. } = &outcome {
                tracing::info!("{outcome}");
            } else {
                tracing::warn!("{outcome}");
            }
            outcome
        } else {
            privilege::Outcome::NotAsked
        };
        let identity = Arc::new(IdMap::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut refresher = None;
        if probes.loaded() {
            match Scanner::new(
                &config.paths.cgroupfs,
                &config.paths.procfs,
                config.cgroup.scan(),
                &config.metadata,
            ) {
                Ok(scanner) => {
                    let r = Arc::new(Refresher::new(
                        scanner,
                        Arc::clone(&identity),
                        vec![Arc::clone(&probes) as Arc<dyn Subscriber>],
                    ));
                    let n = r.refresh();
                    tracing::info!(cgroups = n, "probes track the pod and container cgroups");
                    refresher = Some(
                        r.spawn(config.refresh_interval, Arc::clone(&stop))
                            .map_err(StartError::Refresher)?,
                    );
                }
                Err(why) => {
                    tracing::warn!(reason = %crate::util::chain(&why), "no cgroup layout: the probes cannot attribute anything to pods");
                }
            }
        }
        let duty = crate::probe::duty::spawn(Arc::clone(&probes), Arc::clone(&stop))
            .map_err(StartError::Duty)?;
        let ctx = collector::Context {
            paths: &config.paths,
            cgroup: &config.cgroup,
            sched: &config.sched,
            probes: &probes,
            identity: &identity,
            metadata: &config.metadata,
        };
        let gatherer = Arc::new(Gatherer::new(&config.enabled, &ctx));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Arc::clone(&gatherer)));
        registry.register_collector(Box::new(ProbeMetrics(Arc::clone(&probes))));
        registry.register_collector(Box::new(metadata::Metrics(Arc::clone(&config.metadata))));
        Ok(Running {
            registry: Arc::new(registry),
            gatherer,
            probes,
            metadata: config.metadata,
            privilege,
            stop,
            refresher,
            duty,
        })
    }
}
