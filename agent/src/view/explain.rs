//! `podstat explain`: a diagnosis of one pod (or container) over an observation window, in
//! plain language with a number for every claim, and a recommendation when one is clear.
//!
//! The thresholds that turn numbers into findings are the `pub const`s below (`--help` and
//! the docs print them from here): below all of them, the diagnosis says nothing is wrong.

use std::fmt::Write as _;

use serde::Serialize;

use super::model::{
    Hist, Key, LOCALITIES, OTHER_POD, Row, SAME_POD, SYSTEM, Snapshot, pod_display,
};
use crate::cgroup::{CgroupKind, classify};

/// Throttling is a finding when the cgroup was throttled in at least this share of its
/// enforcement periods…
pub const THROTTLED_PERIODS_MIN: f64 = 0.05;
/// …or lost at least this share of wall time to throttle pauses.
pub const THROTTLED_WALL_MIN: f64 = 0.01;
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
Recommendation, with N threads runnable when a quota of L cores ran out: N > L: size the \
CPU-bound pool to max(1, floor(L)) threads, or raise the limit to ceil(N) cores, or drop the \
limit for a latency-sensitive pod; N <= L: raise the limit (or allow a burst), or drop it.",
        pct(THROTTLED_PERIODS_MIN),
        pct(THROTTLED_WALL_MIN),
        RUNQ_WAIT_SHARE_MIN,
        RUNQ_P99_MIN * 1000.0,
        pct(NEIGHBOUR_PREEMPT_SHARE_MIN),
        pct(STEERING_REMOTE_SHARE_MIN),
        STEERING_MIN_PACKETS,
        FLOW_MIGRATIONS_MIN_RATE,
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
    /// Size the CPU-bound thread pool to at most this many threads (when threads > limit).
    pub pool_max_threads: Option<u64>,
    /// Or raise the limit to at least this many cores.
    pub limit_min_cores: Option<f64>,
    /// Or drop the CPU limit (keep the request), for a latency-sensitive pod.
    pub drop_limit_if_latency_sensitive: bool,
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
    pub problem: bool,
    pub recommendation: Option<Recommendation>,
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
    let recommendation = problem.then(|| recommend(limit, threads, after, period));
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
        problem,
        recommendation,
    })
}

/// The recommendation rules (README "explain"): with N threads runnable when a quota of L cores
/// runs out t into a period P,
/// - N > L: size the CPU-bound pool to max(1, floor(L)) threads, or raise the limit to ≥ ceil(N)
///   cores, or drop the limit for a latency-sensitive pod;
/// - N ≤ L (or N unknown): the quota runs out on bursts: raise the limit, or drop it.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "floor/ceil of small positive core and thread counts"
)]
pub fn recommend(
    limit: f64,
    threads: Option<f64>,
    after: Option<f64>,
    period: Option<f64>,
) -> Recommendation {
    let when = match (after, period) {
        (Some(a), Some(p)) => format!(" {} into each {} period", ms(a), ms(p)),
        (Some(a), None) => format!(" {} into each period", ms(a)),
        _ => String::new(),
    };
    match threads {
        Some(n) if n > limit + 0.05 => {
            let pool = (limit.floor() as u64).max(1);
            let need = n.ceil();
            Recommendation {
                pool_max_threads: Some(pool),
                limit_min_cores: Some(need),
                drop_limit_if_latency_sensitive: true,
                text: format!(
                    "size the CPU-bound pool to at most {pool} thread{} (the {}-core limit, min 1), because {n:.1} are runnable when the {}-core quota runs out{when}; or raise the limit to at least {need:.0} cores; or, if the pod is latency-sensitive, drop the CPU limit and keep the request",
                    if pool == 1 { "" } else { "s" },
                    cores(limit),
                    cores(limit),
                ),
            }
        }
        _ => Recommendation {
            pool_max_threads: None,
            limit_min_cores: None,
            drop_limit_if_latency_sensitive: true,
            text: format!(
                "the runnable threads{} fit the {}-core limit, so bursts use up the quota{when}: raise the limit (or allow a burst), or, if the pod is latency-sensitive, drop the CPU limit and keep the request",
                threads.map_or(String::new(), |n| format!(" ({n:.1})")),
                cores(limit)
            ),
        },
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
    let throttling: Vec<Throttling> = mine
        .iter()
        .filter_map(|r| throttling_of(r, throttle_probe))
        .collect();
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
    fn recommendation_rules() {
        // 4 threads against half a core: pool of 1 (never 0), or 4 cores.
        let r = recommend(0.5, Some(4.0), Some(0.0125), Some(0.1));
        assert_eq!(
            (r.pool_max_threads, r.limit_min_cores),
            (Some(1), Some(4.0))
        );
        assert!(
            r.text.contains("12.5 ms into each 100.0 ms period"),
            "{}",
            r.text
        );
        // 24 threads against 16 cores: a pool of 16 or 24 cores.
        let r = recommend(16.0, Some(24.0), Some(0.024), Some(0.1));
        assert_eq!(
            (r.pool_max_threads, r.limit_min_cores),
            (Some(16), Some(24.0))
        );
        // Threads that fit the limit: no pool size, raise or drop the limit.
        let r = recommend(4.0, Some(2.0), None, None);
        assert_eq!((r.pool_max_threads, r.limit_min_cores), (None, None));
        assert!(r.drop_limit_if_latency_sensitive);
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
