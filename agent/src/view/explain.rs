//! `podstat explain`: a diagnosis of one pod (or container) over an observation window, in
//! plain language with a number for every claim, and a recommendation when one is clear.
//!
//! The thresholds that turn numbers into findings are the `pub const`s below (`--help` and
//! the docs print them from here): below all of them, the diagnosis says nothing is wrong.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    advice::{self, Advice, Effect, Load, Observed},
    model::{Hist, Key, LOCALITIES, OTHER_POD, Row, SAME_POD, SYSTEM, Snapshot, pod_display},
};
use crate::cgroup::{CgroupKind, classify};

/// Throttling is a finding when the cgroup was throttled in at least this share of its
/// enforcement periods…
pub const THROTTLED_PERIODS_MIN: f64 = 0.05;
/// …or lost at least this share of wall time to throttle pauses.
pub const THROTTLED_WALL_MIN: f64 = 0.01;
/// The throttling alert's default threshold on the share of wall-clock time a cgroup spends
/// throttled (`podstat:cpu_throttled_wall_share:alert_threshold` in
/// deploy/prometheus/podstat.rules.yaml; a docs test keeps the two equal). The recommended
/// limit aims under it.
pub const ALERT_THROTTLED_WALL_SHARE: f64 = 0.25;
/// The quota "runs out early" when it is exhausted before this share of the period (p50).
pub const EARLY_IN_PERIOD: f64 = 0.5;
/// Run-queue waiting is a finding when the pod's threads together waited at least this share
/// of wall time…
pub const RUNQ_WAIT_SHARE_MIN: f64 = 0.05;
/// …with a p99 wait of at least this (seconds)…
pub const RUNQ_P99_MIN: f64 = 0.005;
/// …and at least this share of its waiting time was spent behind other pods' tasks (behind
/// other pods or the system when the pod is not throttled: a throttled task's wait ends
/// whenever its quota is refilled, whoever ran before). Without waiting-time data (an older
/// agent), the same share of its preemptions.
pub const NEIGHBOUR_PREEMPT_SHARE_MIN: f64 = 0.25;
/// Steering is a finding when at least this share of received packets was handled outside
/// the reading thread's LLC…
pub const STEERING_REMOTE_SHARE_MIN: f64 = 0.25;
/// …over at least this many packets…
pub const STEERING_MIN_PACKETS: f64 = 1000.0;
/// …or when the pod's flows moved CPUs at least this often per second.
pub const FLOW_MIGRATIONS_MIN_RATE: f64 = 50.0;

/// `podstat explain --help`: the findings with the thresholds above, so the help cannot drift
/// from the code.
pub fn long_about() -> String {
    let pct = |share: f64| share * 100.0;
    format!(
        "Observe one pod (by name, namespace/name, uid or cgroup path) for --duration, then \
explain in plain language, with a number for each claim, whether it is slow because of CPU \
throttling, noisy neighbours or receive steering, and what to change. Says so when nothing is \
wrong.\n\n\
Findings (below all of them: nothing wrong): throttling when the cgroup was throttled in at \
least {}% of its periods or lost at least {}% of wall time to pauses; noisy neighbours when its \
threads waited at least {} s per second in all, with a run-queue p99 of at least {} ms, and at \
least {}% of that waiting was behind other pods' tasks (or the system's, when not throttled); \
steering when at least {}% of {}+ packets were handled outside the reader's LLC, or flows moved \
CPUs {}+ times a second.\n\n\
Recommendation, from the measured throttle episodes (pause, runnable threads, deficit) and \
use: the smallest limit (at the current period) under which the observed load would be \
throttled less than {}% of the time ({}% of the alert's {}% threshold); a cpu.max.burst sized \
to the typical burst's excess over the quota, for a load that comes in bursts, where the kernel \
has it (Kubernetes does not set it); and, for a steady load (at least {}% of the limit used, \
throttled in at least {}% of periods, more threads runnable than the limit has cores), a pool \
of max(1, floor(limit)) threads. Each with its expected throttled share and pause p99.",
        pct(THROTTLED_PERIODS_MIN),
        pct(THROTTLED_WALL_MIN),
        RUNQ_WAIT_SHARE_MIN,
        RUNQ_P99_MIN * 1000.0,
        pct(NEIGHBOUR_PREEMPT_SHARE_MIN),
        pct(STEERING_REMOTE_SHARE_MIN),
        STEERING_MIN_PACKETS,
        FLOW_MIGRATIONS_MIN_RATE,
        pct(ALERT_THROTTLED_WALL_SHARE * advice::TARGET_OF_THRESHOLD),
        pct(advice::TARGET_OF_THRESHOLD),
        pct(ALERT_THROTTLED_WALL_SHARE),
        pct(advice::STEADY_USE_MIN),
        pct(advice::STEADY_PERIODS_MIN),
    )
}

/// What `explain` was asked about, resolved against a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub pod_uid: String,
    /// Only this container (a container cgroup path was given).
    pub container_id: Option<String>,
}

/// Why the argument did not name a pod on this node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("{0:?} is not a pod or container cgroup (no kubepods segment in the path)")]
    NotPodCgroup(String),
    #[error("no pod named or with uid {0:?} on this node")]
    NotFound(String),
    #[error("{name:?} matches several pods: {candidates}; give namespace/pod or the uid")]
    Ambiguous { name: String, candidates: String },
}

/// Resolves a pod name (`pod` or `namespace/pod`), a pod uid (or a unique prefix of one) or a
/// cgroup path against the pods in `snap`. A cgroup path is resolved from the path alone,
/// with the same identity rules the collectors use.
pub fn resolve(arg: &str, snap: &Snapshot) -> Result<Selection, ResolveError> {
    let arg = arg.trim();
    if arg.contains('/') && (arg.starts_with('/') || arg.contains("kubepods")) {
        return match classify(arg) {
            CgroupKind::Pod { pod_uid, .. } => Ok(Selection {
                pod_uid,
                container_id: None,
            }),
            CgroupKind::Container {
                pod_uid,
                container_id,
                ..
            } => Ok(Selection {
                pod_uid,
                container_id: Some(container_id),
            }),
            CgroupKind::Other => Err(ResolveError::NotPodCgroup(arg.into())),
        };
    }
    let pods: Vec<(&Key, String)> = snap
        .cgroups
        .iter()
        .filter(|(k, _)| {
            k.container_id.is_empty()
                || !snap.cgroups.contains_key(&Key {
                    pod_uid: k.pod_uid.clone(),
                    container_id: String::new(),
                })
        })
        .map(|(k, c)| (k, pod_display(&c.names.namespace, &c.names.pod, "")))
        .collect();
    let norm = |s: &str| s.replace('_', "-");
    let exact: Vec<&str> = pods
        .iter()
        .filter(|(k, name)| {
            norm(&k.pod_uid) == norm(arg)
                || (!name.is_empty() && (name == arg || name.rsplit('/').next() == Some(arg)))
        })
        .map(|(k, _)| k.pod_uid.as_str())
        .collect();
    let mut uids = if exact.is_empty() {
        pods.iter()
            .filter(|(k, _)| arg.len() >= 4 && norm(&k.pod_uid).starts_with(&norm(arg)))
            .map(|(k, _)| k.pod_uid.as_str())
            .collect()
    } else {
        exact
    };
    uids.sort_unstable();
    uids.dedup();
    match uids.as_slice() {
        [] if looks_like_uid(arg) => Ok(Selection {
            pod_uid: arg.into(),
            container_id: None,
        }),
        [] => Err(ResolveError::NotFound(arg.into())),
        [one] => Ok(Selection {
            pod_uid: (*one).to_owned(),
            container_id: None,
        }),
        many => Err(ResolveError::Ambiguous {
            name: arg.into(),
            candidates: many.join(", "),
        }),
    }
}

/// A full pod uid (maybe not measured yet): 32 hex digits with or without dashes.
fn looks_like_uid(s: &str) -> bool {
    let hex: String = s.chars().filter(|c| *c != '-' && *c != '_').collect();
    hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// The recommendation for a throttled cgroup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// The smallest limit, in cores at the current period, expected to keep the throttled
    /// wall-time share under the alert threshold (`None` without throttle-probe data).
    pub limit_cores: Option<f64>,
    /// The `cpu.max.burst` that absorbs the typical burst, where the kernel supports it and
    /// the load comes in bursts.
    pub burst_seconds: Option<f64>,
    /// The CPU-bound pool size that fits the current limit, for a steady load only.
    pub pool_threads: Option<u64>,
    /// Or drop the CPU limit (keep the request), for a latency-sensitive pod.
    pub drop_limit_if_latency_sensitive: bool,
    /// The model behind the figures, with each option's expected effect.
    pub model: Option<Advice>,
    pub text: String,
}

/// Throttling of one cgroup that has a CPU limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throttling {
    pub container: String,
    pub container_id: String,
    pub limit_cores: f64,
    pub period_seconds: Option<f64>,
    pub cpu_used_cores: Option<f64>,
    pub periods: Option<f64>,
    pub throttled_periods: Option<f64>,
    pub throttled_period_share: Option<f64>,
    pub wall_lost_seconds: Option<f64>,
    pub wall_lost_share: Option<f64>,
    pub pause_p99_seconds: Option<f64>,
    pub quota_exhausted_after_p50_seconds: Option<f64>,
    pub exhausted_early: Option<bool>,
    pub runnable_threads: Option<f64>,
    /// CPU time the throttle episodes kept from the cgroup (pause × runnable threads, at most
    /// one per CPU), CPU-seconds.
    pub deficit_seconds: Option<f64>,
    /// A pod-level limit (on the pod cgroup, the containers have none; KEP-2837 pod-level
    /// resources): the pod cgroup is the one throttled.
    pub pod_level: bool,
    /// For a pod cgroup: how long each container's own tasks stalled under its quota
    /// (cpu.stat.local `throttled_usec`, cgroup v2 on Linux 6.8+), most first; empty where
    /// the kernel does not say.
    pub lost_by_container: Vec<ContainerLoss>,
    pub problem: bool,
    pub recommendation: Option<Recommendation>,
}

/// One container's stall under its pod's quota.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerLoss {
    pub container: String,
    pub container_id: String,
    pub throttled_seconds: f64,
    /// Of the pod's containers' summed stall.
    pub share: f64,
}

/// A pod that preempted the target, with its share of the target's preemptions by other pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedPreemptor {
    pub name: String,
    pub pod_uid: String,
    pub count: f64,
    pub share_of_other_pod: f64,
}

/// A pod the victim's tasks waited behind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitedBehind {
    pub name: String,
    pub pod_uid: String,
    pub seconds: f64,
    /// Of all the pod's run-queue waiting time.
    pub share_of_waiting: f64,
}

/// Run-queue waiting, whose work it waited behind, and who took the CPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbours {
    pub waits: f64,
    pub runq_p50_seconds: Option<f64>,
    pub runq_p99_seconds: Option<f64>,
    /// Sum of all waits over wall time (threads × share).
    pub wait_share: f64,
    pub preemptions: f64,
    pub preemptions_per_second: f64,
    pub by_same_pod: f64,
    pub by_other_pods: f64,
    pub by_system: f64,
    pub preemptors: Vec<NamedPreemptor>,
    /// Waiting seconds by who held the CPU (same pod, other pods, system), if measured.
    pub waited_seconds: Option<[f64; 3]>,
    /// The pods waited behind, most seconds first (at most 3 per container).
    pub waited_behind: Vec<WaitedBehind>,
    pub problem: bool,
}

/// Receive steering of the pod's packets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Steering {
    /// Packets by locality (`same_cpu`, `same_llc`, `same_node`, `remote_node`), if measured.
    pub packets: Option<[f64; 4]>,
    pub locality_shares: Option<[f64; 4]>,
    pub flow_migrations_per_second: Option<f64>,
    pub devices: Vec<DeviceState>,
    pub problem: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceState {
    pub device: String,
    pub queues: u32,
    pub rps_queues: u32,
    pub arfs: Option<bool>,
}

/// The node runs a BPF scheduler (sched_ext), so `cpu.max` means only what it implements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedExtNote {
    pub state: String,
    pub scheduler: String,
    pub text: String,
}

/// The note for a node whose sched_ext state is `state`, `None` when CFS is in charge.
fn sched_ext_note(snap: &Snapshot) -> Option<SchedExtNote> {
    let (state, scheduler) = snap.sched_ext.clone()?;
    (state != "disabled").then(|| SchedExtNote {
        text: format!(
            "a BPF scheduler ({}) is loaded on this node (sched_ext {state}): cpu.max and cpu.weight mean only what it implements, and the throttling figures below (cpu.stat, the throttle probe) may not apply",
            if scheduler.is_empty() { "unnamed" } else { &scheduler }
        ),
        state,
        scheduler,
    })
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    pub pod: String,
    pub pod_uid: String,
    pub container_id: Option<String>,
    pub observed_seconds: f64,
    /// Findings, most important first: `throttling`, `noisy_neighbours`, `steering`.
    pub causes: Vec<&'static str>,
    pub throttling: Vec<Throttling>,
    /// A BPF scheduler (sched_ext) is loaded: the throttling figures may not apply.
    pub sched_ext: Option<SchedExtNote>,
    pub neighbours: Option<Neighbours>,
    pub steering: Steering,
}

/// `throttle_probe`: the throttle probe is attached, so a cgroup without pause data had no
/// pause (rather than no measurement).
fn throttling_of(r: &Row, throttle_probe: bool) -> Option<Throttling> {
    let limit = r.limit_cores.filter(|l| *l > 0.0)?;
    let period = r.period_seconds;
    let after = r.exhausted_after_p50();
    let threads = r.runnable_at_throttle();
    let problem = r
        .throttled_period_share()
        .is_some_and(|s| s >= THROTTLED_PERIODS_MIN)
        || r.throttled_wall_share()
            .is_some_and(|s| s >= THROTTLED_WALL_MIN);
    let early = match (after, period) {
        (Some(a), Some(p)) if p > 0.0 => Some(a < p * EARLY_IN_PERIOD),
        _ => None,
    };
    let recommendation = problem.then(|| recommend(r, limit));
    Some(Throttling {
        container: r.container_name(),
        container_id: r.key.container_id.clone(),
        limit_cores: limit,
        period_seconds: period,
        cpu_used_cores: r.cpu_cores,
        periods: r.periods,
        throttled_periods: r.throttled_periods,
        throttled_period_share: r.throttled_period_share(),
        wall_lost_seconds: r.throttled_wall_seconds.or(throttle_probe.then_some(0.0)),
        wall_lost_share: r.throttled_wall_share().or(throttle_probe.then_some(0.0)),
        pause_p99_seconds: r.pause_p99(),
        quota_exhausted_after_p50_seconds: after,
        exhausted_early: early,
        runnable_threads: threads,
        deficit_seconds: r.deficit_seconds,
        pod_level: false,
        lost_by_container: Vec::new(),
        problem,
        recommendation,
    })
}

/// What a row measured, for the advice (`None` without throttle-probe episodes).
fn observed(r: &Row, limit: f64) -> Option<Observed> {
    let pause = r.pause.as_ref().filter(|h| h.count > 0.0)?;
    Some(Observed {
        limit_cores: limit,
        period_seconds: r.period_seconds?,
        seconds: r.seconds,
        used_cores: r.cpu_cores?,
        episodes: pause.count,
        pause_seconds: pause.sum,
        deficit_seconds: r.deficit_seconds,
        runnable_threads: r.runnable_at_throttle(),
        throttled_periods: r.throttled_periods,
        burst_supported: r.burst_limit_seconds.is_some(),
        threshold: ALERT_THROTTLED_WALL_SHARE,
    })
}

/// "throttled 12% of the time, pause p99 40.0 ms".
fn effect_text(e: &Effect) -> String {
    format!(
        "throttled {} of the time{}",
        pct(e.throttled_share),
        e.pause_p99_seconds
            .filter(|_| e.throttled_share > 0.0)
            .map_or_else(
                || ", no pauses".to_owned(),
                |p| format!(", pause p99 {}", ms(p))
            )
    )
}

/// The recommendation rules (README "explain", docs/operator-views.md): sized from the
/// measured episodes by [`advice::advise`].
pub fn recommend(r: &Row, limit: f64) -> Recommendation {
    let drop = "or, if the pod is latency-sensitive, drop the CPU limit and keep the request";
    let Some(a) = observed(r, limit).and_then(|o| advice::advise(&o)) else {
        return Recommendation {
            limit_cores: None,
            burst_seconds: None,
            pool_threads: None,
            drop_limit_if_latency_sensitive: true,
            model: None,
            text: format!(
                "no throttle-probe episodes to size it from: raise the {}-core limit, {drop}",
                cores(limit)
            ),
        };
    };
    let now = format!(
        "now {}{}",
        r.throttled_wall_share().map_or("–".into(), pct),
        r.pause_p99()
            .map_or(String::new(), |p| format!(", p99 {}", ms(p)))
    );
    let mut parts = Vec::new();
    match a.load {
        Load::Steady => {
            let pool = a.pool_threads.unwrap_or(1);
            parts.push(format!(
                "steady load: {:.1} threads ran in parallel against the {}-core limit in nearly every period. Size the CPU-bound pool to {pool} thread{} (the limit, min 1): {} at the {}-core limit",
                a.parallelism,
                cores(limit),
                if pool == 1 { "" } else { "s" },
                a.pool_effect.as_ref().map_or_else(String::new, effect_text),
                cores(limit),
            ));
            parts.push(format!(
                "or set the limit to {} cores: {} ({now})",
                cores(a.limit_cores),
                effect_text(&a.limit_effect)
            ));
        }
        Load::Bursts => {
            parts.push(format!(
                "the load comes in bursts of about {} of CPU at {:.1} threads, against a {} quota. Set the limit to {} cores: {} ({now})",
                ms(a.typical_burst_cpu_seconds.unwrap_or_default()),
                a.parallelism,
                ms(limit * r.period_seconds.unwrap_or_default()),
                cores(a.limit_cores),
                effect_text(&a.limit_effect)
            ));
            match (a.burst_seconds, &a.burst_effect) {
                (Some(b), Some(e)) => parts.push(format!(
                    "or keep the limit and set cpu.max.burst to {} ({}Kubernetes does not set it today: write it to the cgroup yourself): {}",
                    ms(b),
                    if a.burst_absorbs_all == Some(false) {
                        "at most the quota, so it absorbs only part of the burst; "
                    } else {
                        ""
                    },
                    effect_text(e)
                )),
                _ if r.burst_limit_seconds.is_none() => parts.push(
                    "a cpu.max.burst would absorb the bursts, but this cgroup has none (Linux 5.14+; Kubernetes does not set it)".to_owned(),
                ),
                _ => {}
            }
        }
    }
    parts.push(drop.to_owned());
    Recommendation {
        limit_cores: Some(a.limit_cores),
        burst_seconds: a.burst_seconds,
        pool_threads: a.pool_threads,
        drop_limit_if_latency_sensitive: true,
        text: parts.join("; "),
        model: Some(a),
    }
}

/// For a throttled pod cgroup: which container lost the time (cpu.stat.local), and whether the
/// limit is pod-level (no container of the pod has one).
fn attribute_pod_level(throttling: &mut [Throttling], mine: &[&Row]) {
    let containers: Vec<&&Row> = mine
        .iter()
        .filter(|r| !r.key.container_id.is_empty())
        .collect();
    let pod_level = !containers.is_empty()
        && containers
            .iter()
            .all(|r| r.limit_cores.is_none_or(|l| l <= 0.0));
    for t in throttling.iter_mut().filter(|t| t.container_id.is_empty()) {
        t.pod_level = pod_level;
        let mut lost: Vec<ContainerLoss> = containers
            .iter()
            .filter_map(|r| {
                r.throttled_local_seconds.map(|s| ContainerLoss {
                    container: r.container_name(),
                    container_id: r.key.container_id.clone(),
                    throttled_seconds: s,
                    share: 0.0,
                })
            })
            .collect();
        let total: f64 = lost.iter().map(|l| l.throttled_seconds).sum();
        for l in &mut lost {
            l.share = if total > 0.0 {
                l.throttled_seconds / total
            } else {
                0.0
            };
        }
        lost.sort_by(|a, b| b.throttled_seconds.total_cmp(&a.throttled_seconds));
        t.lost_by_container = lost;
    }
}

/// Diagnoses `sel` from the rows of one observation window.
#[expect(
    clippy::too_many_lines,
    reason = "three findings from one pass over the pod's rows"
)]
pub fn diagnose(sel: &Selection, rows: &[Row], snap: &Snapshot, seconds: f64) -> Diagnosis {
    let mine: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.key.pod_uid == sel.pod_uid
                && sel
                    .container_id
                    .as_ref()
                    .is_none_or(|c| *c == r.key.container_id)
        })
        .collect();
    let pod = mine
        .iter()
        .find(|r| !r.names.pod.is_empty())
        .map_or_else(|| sel.pod_uid.clone(), |r| r.pod_name());
    let throttle_probe = snap.probes.get("cfs_throttle") == Some(&true);
    let mut throttling: Vec<Throttling> = mine
        .iter()
        .filter_map(|r| throttling_of(r, throttle_probe))
        .collect();
    attribute_pod_level(&mut throttling, &mine);
    let throttled = throttling.iter().any(|t| t.problem);

    // Scheduler and steering numbers belong to the cgroups the threads run in: add them up.
    let mut runq: Option<Hist> = None;
    let mut preempted: Option<[f64; 3]> = None;
    let mut by_pod: Vec<NamedPreemptor> = Vec::new();
    let mut waited: Option<[f64; 3]> = None;
    let mut behind: Vec<WaitedBehind> = Vec::new();
    let mut packets: Option<[f64; 4]> = None;
    let mut migrations: Option<f64> = None;
    for r in &mine {
        if let Some(h) = &r.runq {
            runq.get_or_insert_with(Hist::default).add(h);
        }
        if let Some(p) = r.preempted {
            let acc = preempted.get_or_insert([0.0; 3]);
            for i in 0..3 {
                acc[i] += p[i];
            }
        }
        if let Some(w) = r.waited {
            let acc = waited.get_or_insert([0.0; 3]);
            for i in 0..3 {
                acc[i] += w[i];
            }
        }
        for p in &r.waited_by_pod {
            match behind.iter_mut().find(|x| x.pod_uid == p.pod_uid) {
                Some(x) => x.seconds += p.count,
                None => behind.push(WaitedBehind {
                    name: pod_display(&p.namespace, &p.pod, &p.pod_uid),
                    pod_uid: p.pod_uid.clone(),
                    seconds: p.count,
                    share_of_waiting: 0.0,
                }),
            }
        }
        for p in &r.preempted_by_pod {
            match by_pod.iter_mut().find(|x| x.pod_uid == p.pod_uid) {
                Some(x) => x.count += p.count,
                None => by_pod.push(NamedPreemptor {
                    name: pod_display(&p.namespace, &p.pod, &p.pod_uid),
                    pod_uid: p.pod_uid.clone(),
                    count: p.count,
                    share_of_other_pod: 0.0,
                }),
            }
        }
        if let Some(s) = r.steering {
            let acc = packets.get_or_insert([0.0; 4]);
            for i in 0..4 {
                acc[i] += s[i];
            }
        }
        if let Some(m) = r.flow_migrations {
            *migrations.get_or_insert(0.0) += m;
        }
    }
    let seconds = seconds.max(1e-3);
    let neighbours = runq.map(|h| {
        let p = preempted.unwrap_or_default();
        let total: f64 = p.iter().sum();
        let other_total = p[OTHER_POD];
        by_pod.sort_by(|a, b| {
            b.count
                .total_cmp(&a.count)
                .then_with(|| a.name.cmp(&b.name))
        });
        for x in &mut by_pod {
            x.share_of_other_pod = if other_total > 0.0 {
                x.count / other_total
            } else {
                0.0
            };
        }
        let wait_share = h.sum / seconds;
        let p99 = h.quantile(0.99);
        let outside = if throttled {
            p[OTHER_POD]
        } else {
            p[OTHER_POD] + p[SYSTEM]
        };
        let waited_total: f64 = waited.map_or(0.0, |w| w.iter().sum());
        behind.sort_by(|a, b| {
            b.seconds
                .total_cmp(&a.seconds)
                .then_with(|| a.name.cmp(&b.name))
        });
        for x in &mut behind {
            x.share_of_waiting = if waited_total > 0.0 {
                x.seconds / waited_total
            } else {
                0.0
            };
        }
        // Whose work the pod waited behind decides; preemptions only without that data.
        let from_outside = match waited {
            Some(w) if waited_total > 0.0 => {
                let outside = if throttled {
                    w[OTHER_POD]
                } else {
                    w[OTHER_POD] + w[SYSTEM]
                };
                outside / waited_total >= NEIGHBOUR_PREEMPT_SHARE_MIN
            }
            _ => total > 0.0 && outside / total >= NEIGHBOUR_PREEMPT_SHARE_MIN,
        };
        let problem = wait_share >= RUNQ_WAIT_SHARE_MIN
            && p99.is_some_and(|v| v >= RUNQ_P99_MIN)
            && from_outside;
        Neighbours {
            waits: h.count,
            runq_p50_seconds: h.quantile(0.5),
            runq_p99_seconds: p99,
            wait_share,
            preemptions: total,
            preemptions_per_second: total / seconds,
            by_same_pod: p[SAME_POD],
            by_other_pods: p[OTHER_POD],
            by_system: p[SYSTEM],
            preemptors: std::mem::take(&mut by_pod),
            waited_seconds: waited,
            waited_behind: std::mem::take(&mut behind),
            problem,
        }
    });
    let shares = packets.and_then(|p| {
        let total: f64 = p.iter().sum();
        (total > 0.0).then(|| p.map(|n| n / total))
    });
    let steering_problem = packets.is_some_and(|p| {
        let total: f64 = p.iter().sum();
        total >= STEERING_MIN_PACKETS && (p[2] + p[3]) / total >= STEERING_REMOTE_SHARE_MIN
    }) || migrations
        .is_some_and(|m| m / seconds >= FLOW_MIGRATIONS_MIN_RATE);
    let steering = Steering {
        packets,
        locality_shares: shares,
        flow_migrations_per_second: migrations.map(|m| m / seconds),
        devices: snap
            .devices
            .iter()
            .map(|(name, d)| DeviceState {
                device: name.clone(),
                queues: d.queues,
                rps_queues: d.rps_queues,
                arfs: d.arfs,
            })
            .collect(),
        problem: steering_problem,
    };
    let mut causes = Vec::new();
    if throttled {
        causes.push("throttling");
    }
    if neighbours.as_ref().is_some_and(|n| n.problem) {
        causes.push("noisy_neighbours");
    }
    if steering.problem {
        causes.push("steering");
    }
    Diagnosis {
        pod,
        pod_uid: sel.pod_uid.clone(),
        container_id: sel.container_id.clone(),
        observed_seconds: seconds,
        causes,
        throttling,
        sched_ext: sched_ext_note(snap),
        neighbours,
        steering,
    }
}

/// Seconds as ms or µs, for sentences.
pub fn ms(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn cores(c: f64) -> String {
    format!("{c:.2}")
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// The diagnosis as plain text.
#[expect(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "one report, section by section; d, o, t, n, s: diagnosis, output and section"
)]
pub fn render_text(d: &Diagnosis) -> String {
    let mut o = String::new();
    let what = match &d.container_id {
        Some(c) => format!(
            "container {} of pod {}",
            c.chars().take(12).collect::<String>(),
            d.pod
        ),
        None => format!("pod {}", d.pod),
    };
    let _ = writeln!(
        o,
        "podstat explain: {what} (uid {}), observed for {:.1} s",
        d.pod_uid, d.observed_seconds
    );
    let _ = writeln!(o);
    let verdict = match d.causes.first() {
        None => "nothing wrong: no throttling, no noisy neighbours, no steering problem above the thresholds".to_owned(),
        Some(&"throttling") => "CPU throttling is the main cause".to_owned(),
        Some(&"noisy_neighbours") => "noisy neighbours are the main cause: the pod waits for CPUs other pods hold".to_owned(),
        Some(_) => "receive steering is the main cause".to_owned(),
    };
    let _ = writeln!(o, "Verdict: {verdict}.");
    if d.causes.len() > 1 {
        let _ = writeln!(o, "Also: {}.", d.causes[1..].join(", ").replace('_', " "));
    }

    let _ = writeln!(o, "\nThrottling");
    if let Some(n) = &d.sched_ext {
        let _ = writeln!(o, "  NOTE: {}.", n.text);
    }
    if d.throttling.is_empty() {
        let _ = writeln!(o, "  no CPU limit on this pod: it cannot be throttled.");
    }
    for t in &d.throttling {
        let _ = writeln!(
            o,
            "  {} (limit {} cores{}): {}",
            t.container,
            cores(t.limit_cores),
            t.period_seconds.map_or(String::new(), |p| format!(
                ", {} quota per {} period",
                ms(t.limit_cores * p),
                ms(p)
            )),
            if t.problem { "THROTTLED" } else { "ok" }
        );
        if let Some(u) = t.cpu_used_cores {
            let _ = writeln!(
                o,
                "  - used {} cores of its {}-core limit",
                cores(u),
                cores(t.limit_cores)
            );
        }
        match (t.throttled_periods, t.periods, t.throttled_period_share) {
            (Some(n), Some(p), Some(s)) => {
                let _ = writeln!(
                    o,
                    "  - throttled in {} of periods ({n:.0} of {p:.0})",
                    pct(s)
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    "  - throttled periods: no data (no enforcement period ran, or no cgroup collector)"
                );
            }
        }
        match (t.wall_lost_seconds, t.wall_lost_share) {
            (Some(w), Some(s)) => {
                let _ = writeln!(
                    o,
                    "  - lost {} of wall time to throttle pauses ({} of {:.1} s){}",
                    pct(s),
                    ms(w),
                    d.observed_seconds,
                    t.pause_p99_seconds
                        .map_or(String::new(), |p| format!("; pause p99 {}", ms(p)))
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    "  - wall time lost: no data (throttle probe not attached)"
                );
            }
        }
        if let Some(a) = t.quota_exhausted_after_p50_seconds {
            let _ = writeln!(
                o,
                "  - the quota ran out {} into the period (p50){}",
                ms(a),
                match (t.exhausted_early, t.period_seconds) {
                    (Some(true), Some(p)) => format!(
                        ", early: in the first {} of the {} period",
                        pct(a / p),
                        ms(p)
                    ),
                    (Some(false), Some(p)) =>
                        format!(", late: {} into the {} period", pct(a / p), ms(p)),
                    _ => String::new(),
                }
            );
        }
        if let Some(n) = t.runnable_threads {
            let _ = writeln!(
                o,
                "  - {n:.1} threads were runnable when it ran out (average), against a limit of {} cores",
                cores(t.limit_cores)
            );
        }
        if t.pod_level {
            let _ = writeln!(
                o,
                "  - pod-level limit: the pod cgroup holds the quota and its containers have none, so the pod is what is throttled"
            );
        }
        if t.container_id.is_empty() && t.problem {
            if t.lost_by_container.is_empty() {
                let _ = writeln!(
                    o,
                    "  - which container stalled: not known here (cpu.stat.local needs cgroup v2 and Linux 6.8+)"
                );
            }
            for (i, l) in t.lost_by_container.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {} container {}: its tasks stalled {} under the pod's quota ({} of the containers' stall)",
                    if i == 0 { "- lost the most:" } else { "  then" },
                    l.container,
                    ms(l.throttled_seconds),
                    pct(l.share)
                );
            }
        }
        if let (Some(dfc), Some(w)) = (t.deficit_seconds, t.wall_lost_seconds)
            && dfc > 0.0
            && w > 0.0
        {
            let _ = writeln!(
                o,
                "  - the pauses kept {} of CPU time from it ({:.1} threads in parallel while paused, at most one per CPU)",
                ms(dfc),
                dfc / w
            );
        }
        if let Some(r) = &t.recommendation {
            let _ = writeln!(o, "  => Recommendation: {}.", r.text);
        }
    }

    let _ = writeln!(o, "\nNoisy neighbours");
    match &d.neighbours {
        None => {
            let _ = writeln!(
                o,
                "  no data: the scheduler probe is not attached, or the pod never waited for a CPU."
            );
        }
        Some(n) => {
            let q = |v: Option<f64>| v.map_or("–".into(), ms);
            let _ = writeln!(
                o,
                "  {}: run-queue latency p50 {}, p99 {} over {:.0} waits; the threads waited {:.2} s per second of wall time (summed over threads)",
                if n.problem {
                    "WAITING ON NEIGHBOURS"
                } else {
                    "ok"
                },
                q(n.runq_p50_seconds),
                q(n.runq_p99_seconds),
                n.waits,
                n.wait_share
            );
            if let Some(w) = n.waited_seconds {
                let total: f64 = w.iter().sum();
                let share = |x: f64| pct(if total > 0.0 { x / total } else { 0.0 });
                let _ = writeln!(
                    o,
                    "  - waited behind other pods {:.2} s ({}), the same pod {:.2} s ({}), the system {:.2} s ({})",
                    w[OTHER_POD],
                    share(w[OTHER_POD]),
                    w[SAME_POD],
                    share(w[SAME_POD]),
                    w[SYSTEM],
                    share(w[SYSTEM])
                );
            }
            if let Some(main) = n.waited_behind.first() {
                let _ = writeln!(
                    o,
                    "  - waited longest behind pod {}: {:.2} s ({} of the waiting time)",
                    main.name,
                    main.seconds,
                    pct(main.share_of_waiting)
                );
                for p in n.waited_behind.iter().skip(1) {
                    let _ = writeln!(
                        o,
                        "    then pod {}: {:.2} s ({})",
                        p.name,
                        p.seconds,
                        pct(p.share_of_waiting)
                    );
                }
            }
            if n.preemptions > 0.0 {
                let _ = writeln!(
                    o,
                    "  - preempted {:.0} times ({:.1}/s): by the same pod {} ({:.0}), by other pods {} ({:.0}), by the system {} ({:.0})",
                    n.preemptions,
                    n.preemptions_per_second,
                    pct(n.by_same_pod / n.preemptions),
                    n.by_same_pod,
                    pct(n.by_other_pods / n.preemptions),
                    n.by_other_pods,
                    pct(n.by_system / n.preemptions),
                    n.by_system
                );
            } else {
                let _ = writeln!(o, "  - never preempted");
            }
            if let Some(main) = n.preemptors.first() {
                let _ = writeln!(
                    o,
                    "  - main preemptor: pod {} ({:.0} preemptions, {} of those by other pods)",
                    main.name,
                    main.count,
                    pct(main.share_of_other_pod)
                );
                for p in n.preemptors.iter().skip(1) {
                    let _ = writeln!(
                        o,
                        "    then pod {} ({:.0}, {})",
                        p.name,
                        p.count,
                        pct(p.share_of_other_pod)
                    );
                }
            }
        }
    }

    let _ = writeln!(o, "\nSteering");
    let s = &d.steering;
    match (s.packets, s.locality_shares) {
        (Some(p), Some(sh)) => {
            let parts: Vec<String> = LOCALITIES
                .iter()
                .zip(sh)
                .map(|(l, x)| format!("{} {}", l.replace('_', " "), pct(x)))
                .collect();
            let _ = writeln!(
                o,
                "  {}: {:.0} packets received: {}",
                if s.problem { "POOR LOCALITY" } else { "ok" },
                p.iter().sum::<f64>(),
                parts.join(", ")
            );
        }
        (Some(_), None) => {
            let _ = writeln!(o, "  no packets received in the window");
        }
        _ => {
            let _ = writeln!(
                o,
                "  no data: the steering probe is not running on this node"
            );
        }
    }
    if let Some(m) = s.flow_migrations_per_second {
        let _ = writeln!(o, "  - flow migrations: {m:.1}/s");
    }
    for dev in &s.devices {
        let _ = writeln!(
            o,
            "  - device {}: RPS on {} of {} queues, aRFS {}",
            dev.device,
            dev.rps_queues,
            dev.queues,
            match dev.arfs {
                Some(true) => "on",
                Some(false) => "off",
                None => "unknown",
            }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod-level limit of 0.5 cores on the pod cgroup, two containers without limits, only
    /// `busy` busy (cgroup v2 with cpu.stat.local), on a node running a BPF scheduler.
    fn pod_level_scrape(t: f64) -> String {
        let l = |c: &str, id: &str| {
            format!(
                "namespace=\"shop\",pod=\"cart\",container=\"{c}\",pod_uid=\"u-pod\",container_id=\"{id}\",qos=\"burstable\""
            )
        };
        let (pod, busy, idle) = (l("", ""), l("busy", "c-busy"), l("idle", "c-idle"));
        format!(
            "podstat_node_sched_ext_info{{state=\"enabled\",scheduler=\"rusty\"}} 1\n\
             podstat_probe_attached{{probe=\"cfs_throttle\",via=\"tp_btf\"}} 1\n\
             podstat_cpu_limit_cores{{{pod}}} 0.5\n\
             podstat_cpu_period_seconds{{{pod}}} 0.1\n\
             podstat_cpu_usage_seconds_total{{{pod}}} {}\n\
             podstat_cpu_periods_total{{{pod}}} {}\n\
             podstat_cpu_throttled_periods_total{{{pod}}} {}\n\
             podstat_cpu_throttle_pause_seconds_bucket{{{pod},le=\"0.1\"}} {}\n\
             podstat_cpu_throttle_pause_seconds_bucket{{{pod},le=\"+Inf\"}} {}\n\
             podstat_cpu_throttle_pause_seconds_sum{{{pod}}} {}\n\
             podstat_cpu_throttle_pause_seconds_count{{{pod}}} {}\n\
             podstat_cpu_throttle_deficit_seconds_total{{{pod}}} {}\n\
             podstat_cpu_usage_seconds_total{{{busy}}} {}\n\
             podstat_cpu_throttled_local_seconds_total{{{busy}}} {}\n\
             podstat_cpu_usage_seconds_total{{{idle}}} 0.01\n\
             podstat_cpu_throttled_local_seconds_total{{{idle}}} {}\n",
            0.5 * t,
            10.0 * t,
            10.0 * t,
            10.0 * t,
            10.0 * t,
            0.75 * t,
            10.0 * t,
            1.5 * t,
            0.5 * t,
            1.5 * t,
            0.01 * t,
        )
    }

    /// A victim row over 10 s: 1 s of waiting in 100 waits, all of them long, with the given
    /// waiting seconds and preemptions by (same pod, other pods, system).
    fn victim(waited: Option<[f64; 3]>, preempted: [f64; 3], behind: &[(&str, f64)]) -> Row {
        Row {
            key: Key {
                pod_uid: "victim".into(),
                container_id: "c".into(),
            },
            seconds: 10.0,
            runq: Some(Hist {
                buckets: vec![(0.001, 0.0), (0.1, 100.0), (f64::INFINITY, 100.0)],
                sum: 1.0,
                count: 100.0,
            }),
            preempted: Some(preempted),
            waited,
            waited_by_pod: behind
                .iter()
                .map(|(uid, secs)| super::super::model::Preemptor {
                    namespace: "ns".into(),
                    pod: (*uid).into(),
                    pod_uid: (*uid).into(),
                    count: *secs,
                })
                .collect(),
            ..Row::default()
        }
    }

    fn neighbours(r: Row) -> Neighbours {
        let sel = Selection {
            pod_uid: "victim".into(),
            container_id: None,
        };
        diagnose(&sel, &[r], &Snapshot::default(), 10.0)
            .neighbours
            .expect("run-queue data")
    }

    #[test]
    fn noisy_neighbours_are_judged_by_waiting_time() {
        // A sleeping victim is rarely preempted (8 times, 1 by another pod) but waited 0.8 s
        // of its 1 s behind other pods: noisy neighbours, named with seconds and shares.
        let n = neighbours(victim(
            Some([0.1, 0.8, 0.1]),
            [0.0, 1.0, 7.0],
            &[("small", 0.2), ("hog", 0.6)],
        ));
        assert!(n.problem, "{n:?}");
        let names: Vec<(&str, f64, f64)> = n
            .waited_behind
            .iter()
            .map(|w| (w.name.as_str(), w.seconds, w.share_of_waiting))
            .collect();
        assert_eq!(names[0].0, "ns/hog");
        assert!((names[0].1 - 0.6).abs() < 1e-9 && (names[0].2 - 0.6).abs() < 1e-9);
        assert_eq!(names[1].0, "ns/small");
        let text = render_text(&diagnose(
            &Selection {
                pod_uid: "victim".into(),
                container_id: None,
            },
            &[victim(
                Some([0.1, 0.8, 0.1]),
                [0.0, 1.0, 7.0],
                &[("hog", 0.6)],
            )],
            &Snapshot::default(),
            10.0,
        ));
        assert!(
            text.contains("waited longest behind pod ns/hog: 0.60 s (60% of the waiting time)"),
            "{text}"
        );
        // Preempted mostly by other pods, but it waited behind its own pod's threads: not a
        // neighbour's doing.
        let n = neighbours(victim(Some([0.9, 0.05, 0.05]), [1.0, 90.0, 9.0], &[]));
        assert!(!n.problem, "{n:?}");
        // Without waiting-time data (an older agent), the preemptions decide as before.
        let n = neighbours(victim(None, [1.0, 90.0, 9.0], &[]));
        assert!(n.problem, "{n:?}");
        assert!(n.waited_behind.is_empty() && n.waited_seconds.is_none());
    }

    #[test]
    fn a_pod_level_limit_names_the_container_that_lost_time() {
        let s0 = Snapshot::from_samples(&super::super::expo::parse(&pod_level_scrape(0.0)));
        let s1 = Snapshot::from_samples(&super::super::expo::parse(&pod_level_scrape(10.0)));
        let rows = super::super::model::rows(&s1, &s0, 10.0);
        let sel = Selection {
            pod_uid: "u-pod".into(),
            container_id: None,
        };
        let d = diagnose(&sel, &rows, &s1, 10.0);
        assert_eq!(d.causes.first(), Some(&"throttling"), "{d:#?}");
        assert_eq!(d.throttling.len(), 1, "only the pod cgroup has a limit");
        let t = &d.throttling[0];
        assert!(t.pod_level && t.problem, "{t:#?}");
        assert_eq!(t.lost_by_container[0].container, "busy");
        assert!(t.lost_by_container[0].share > 0.99, "{t:#?}");
        // 4 threads' worth of deficit on 2 CPUs (1.5 s over 0.75 s of pauses): a steady load
        // using its whole limit, throttled in every period: the pod's limit and a pool.
        let rec = t.recommendation.as_ref().expect("recommendation");
        assert_eq!(rec.pool_threads, Some(1), "{rec:#?}");
        assert!(rec.limit_cores.is_some_and(|l| l > 0.5), "{rec:#?}");
        let text = render_text(&d);
        assert!(text.contains("pod-level limit"), "{text}");
        assert!(text.contains("lost the most: container busy"), "{text}");
        // sched_ext: the throttling figures may not apply, in text and JSON.
        assert!(
            text.contains("BPF scheduler (rusty)") && text.contains("may not apply"),
            "{text}"
        );
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(json["sched_ext"]["scheduler"], "rusty");
        assert!(json["throttling"][0]["recommendation"]["burst_seconds"].is_null());
        assert_eq!(json["throttling"][0]["recommendation"]["pool_threads"], 1);
    }

    #[test]
    fn targets_resolve_by_uid_name_prefix_and_path() {
        let text = "podstat_cpu_usage_seconds_total{namespace=\"ns\",pod=\"web\",container=\"\",pod_uid=\"0a1b2c3d-0000-4000-8000-000000000001\",container_id=\"\",qos=\"burstable\"} 1\n\
                    podstat_cpu_usage_seconds_total{namespace=\"other\",pod=\"web\",container=\"\",pod_uid=\"9a1b2c3d-0000-4000-8000-000000000002\",container_id=\"\",qos=\"burstable\"} 1\n";
        let snap = Snapshot::from_samples(&super::super::expo::parse(text));
        let uid = |s: &str| resolve(s, &snap).map(|s| s.pod_uid);
        assert_eq!(
            uid("ns/web").as_deref(),
            Ok("0a1b2c3d-0000-4000-8000-000000000001")
        );
        assert_eq!(
            uid("0a1b2c3d").as_deref(),
            Ok("0a1b2c3d-0000-4000-8000-000000000001")
        );
        assert!(matches!(
            resolve("web", &snap),
            Err(ResolveError::Ambiguous { .. })
        ));
        assert!(matches!(
            resolve("nope", &snap),
            Err(ResolveError::NotFound(_))
        ));
        let sel = resolve(
            "/sys/fs/cgroup/cpu/kubepods/burstable/pod0a1b2c3d-0000-4000-8000-000000000001/3b8f0a1c9d2e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c",
            &snap,
        )
        .expect("container path");
        assert_eq!(sel.pod_uid, "0a1b2c3d-0000-4000-8000-000000000001");
        assert_eq!(sel.container_id.as_deref().map(str::len), Some(64));
        assert!(matches!(
            resolve("/sys/fs/cgroup/cpu/system.slice/x.service", &snap),
            Err(ResolveError::NotPodCgroup(_))
        ));
    }
}
