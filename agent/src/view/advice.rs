//! Sizing advice for a throttled cgroup, from what the window measured: the smallest CPU
//! limit that keeps the throttled wall-time share under the alert threshold, the
//! `cpu.max.burst` that absorbs the typical burst, and a pool size for a steady load, each
//! with its expected effect (throttled share, pause p99). docs/operator-views.md has the maths.
//!
//! Two models of the load, told apart by what was measured:
//! - **steady**: the cgroup used its limit (at least [`STEADY_USE_MIN`] of it), was
//!   throttled in (nearly) every wall-clock period, and more threads were runnable than the limit has
//!   cores. Its demand is unbounded at the current limit: with `k` threads runnable (at most
//!   one per CPU) and a limit `L`, each period pauses `1 − L/k` of the time.
//! - **bursts**: otherwise. The load is modelled as bursts of `B` CPU-seconds run by `k`
//!   threads in parallel, starting at a uniformly random point of a period with the period's
//!   quota unused, `U/B` of them per second (`U` the cores used), their sizes spread evenly
//!   over `B ± 50%`. `B` is the typical burst size whose
//!   simulated pauses and throttle episodes match the measured ones best; the same bursts are
//!   then simulated under other limits and burst allowances. Demand is conserved: a larger
//!   limit finishes each burst sooner, it does not add work.

use serde::Serialize;

/// A steady load used at least this share of its limit (less than all of it when other work
/// on the node takes CPU from it)…
pub const STEADY_USE_MIN: f64 = 0.85;
/// …and was throttled in at least this share of wall-clock periods: all of them but for the
/// window's edges. A load with idle periods comes in bursts.
pub const STEADY_PERIODS_MIN: f64 = 0.95;
/// The advice aims at this share of the alert threshold, so that the window-to-window
/// variation of a load does not put it straight back over the threshold.
pub const TARGET_OF_THRESHOLD: f64 = 0.8;
/// Limits are advised in steps of this many cores (10 millicores, as Kubernetes writes them).
pub const LIMIT_STEP: f64 = 0.01;

/// Phases of the period a simulated burst starts at (uniformly spread).
const PHASES: usize = 40;
/// Burst sizes simulated around the typical one: uniformly from (1 − SPREAD)·B to
/// (1 + SPREAD)·B. Real bursts vary, and identical ones would make the throttled share a
/// staircase in the limit (a step wherever the quota divides the burst).
const SIZES: usize = 9;
const SPREAD: f64 = 0.5;
/// Candidate burst sizes, as multiples of the quota: 1.01× … 64×, 1% apart.
const BURST_GRID_STEP: f64 = 1.01;
const BURST_GRID_MAX: f64 = 64.0;

/// What one window measured of a cgroup with a CPU limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub limit_cores: f64,
    pub period_seconds: f64,
    /// Length of the window.
    pub seconds: f64,
    pub used_cores: f64,
    /// Throttle episodes and their summed wall-clock pause (eBPF).
    pub episodes: f64,
    pub pause_seconds: f64,
    /// The episodes' summed deficit (pause × runnable threads, at most one per CPU), if exported.
    pub deficit_seconds: Option<f64>,
    /// Threads runnable when the quota ran out, mean over the episodes.
    pub runnable_threads: Option<f64>,
    /// Periods with throttling (cpu.stat `nr_throttled`), if read.
    pub throttled_periods: Option<f64>,
    /// The cgroup has a `cpu.max.burst` (v1: `cpu.cfs_burst_us`): the kernel supports bursts.
    pub burst_supported: bool,
    /// The alert's threshold on the throttled wall-time share.
    pub threshold: f64,
}

/// A throttled share and pause p99 that an option is expected to give.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Effect {
    pub throttled_share: f64,
    /// `None` when no pause is left.
    pub pause_p99_seconds: Option<f64>,
}

/// Which model the advice comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    Steady,
    Bursts,
}

/// The advice, with the model's fitted parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub load: Load,
    /// Threads that ran in parallel while throttled (deficit over pause), at most one per CPU.
    pub parallelism: f64,
    /// The burst size the model fitted, CPU-seconds (`None` for a steady load).
    pub typical_burst_cpu_seconds: Option<f64>,
    /// What the measured window would have shown under the model (a check of the fit).
    pub now: Effect,
    /// The smallest limit, in cores at the current period, expected to keep the throttled
    /// share under [`TARGET_OF_THRESHOLD`] × the threshold.
    pub limit_cores: f64,
    pub limit_effect: Effect,
    /// The `cpu.max.burst` that absorbs the typical burst (at most the quota, as the kernel
    /// requires), where the kernel supports it and the load comes in bursts.
    pub burst_seconds: Option<f64>,
    pub burst_effect: Option<Effect>,
    /// Whether that burst covers the whole typical burst's excess over the quota.
    pub burst_absorbs_all: Option<bool>,
    /// For a steady load only: the pool size that fits the current limit.
    pub pool_threads: Option<u64>,
    pub pool_effect: Option<Effect>,
}

/// One simulated burst: its pauses (appended to `pauses`) and episodes.
fn simulate_burst(
    burst: f64,
    quota: f64,
    k: f64,
    period: f64,
    phase: f64,
    allowance: f64,
    pauses: &mut Vec<f64>,
) {
    let (mut t, mut avail, mut work) = (phase, quota + allowance, burst);
    // A burst far larger than the quota ends: at most one episode per quota of work.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive count of quotas, at most 64 × 1.5 here"
    )]
    let max_steps = (burst / quota.max(1e-9)).ceil() as usize * 2 + 4;
    for _ in 0..max_steps {
        if work <= 0.0 {
            return;
        }
        let run = work.min(avail) / k;
        if t + run >= period {
            // The period ends first: the rest of the work meets a fresh quota.
            work -= (period - t) * k;
            (t, avail) = (0.0, quota);
            continue;
        }
        if work <= avail {
            return;
        }
        work -= avail;
        pauses.push(period - (t + avail / k));
        (t, avail) = (0.0, quota);
    }
}

/// Pauses of one burst per phase, all phases: (mean pause per burst, mean episodes per burst).
fn bursts_at(
    burst: f64,
    quota: f64,
    k: f64,
    period: f64,
    allowance: f64,
    pauses: &mut Vec<f64>,
) -> (f64, f64) {
    pauses.clear();
    #[expect(clippy::cast_precision_loss, reason = "PHASES and SIZES are small")]
    let (n, sizes) = ((PHASES * SIZES) as f64, (SIZES - 1) as f64);
    for j in 0..SIZES {
        #[expect(clippy::cast_precision_loss, reason = "j < SIZES")]
        let size = burst * (1.0 - SPREAD + 2.0 * SPREAD * j as f64 / sizes);
        for i in 0..PHASES {
            #[expect(clippy::cast_precision_loss, reason = "i < PHASES")]
            let phase = (i as f64 + 0.5) / PHASES as f64 * period;
            simulate_burst(size, quota, k, period, phase, allowance, pauses);
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "a few thousand pauses")]
    let episodes = pauses.len() as f64;
    (pauses.iter().sum::<f64>() / n, episodes / n)
}

/// The p99 of `v` (sorted in place), `None` if empty.
fn p99(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

/// The bursts model of one observation.
struct Bursts {
    burst: f64,
    rate: f64,
    k: f64,
    period: f64,
}

impl Bursts {
    /// Fits the burst size to the measured share and episodes.
    fn fit(o: &Observed, k: f64) -> Option<Self> {
        let quota = o.limit_cores * o.period_seconds;
        let (w0, e0) = (o.pause_seconds / o.seconds, o.episodes);
        if quota <= 0.0 || w0 <= 0.0 || e0 <= 0.0 || o.used_cores <= 0.0 {
            return None;
        }
        let mut pauses = Vec::new();
        let mut best: Option<(f64, f64)> = None;
        let mut m = BURST_GRID_STEP;
        while m <= BURST_GRID_MAX {
            let burst = quota * m;
            let (pause, eps) = bursts_at(burst, quota, k, o.period_seconds, 0.0, &mut pauses);
            if eps > 0.0 {
                let rate = o.used_cores / burst;
                let loss =
                    (rate * pause / w0).ln().powi(2) + (rate * eps * o.seconds / e0).ln().powi(2);
                if best.is_none_or(|(l, _)| loss < l) {
                    best = Some((loss, burst));
                }
            }
            m *= BURST_GRID_STEP;
        }
        best.map(|(_, burst)| Self {
            burst,
            rate: o.used_cores / burst,
            k,
            period: o.period_seconds,
        })
    }

    fn effect(&self, limit: f64, allowance: f64) -> Effect {
        let mut pauses = Vec::new();
        let (pause, _) = bursts_at(
            self.burst,
            limit * self.period,
            self.k,
            self.period,
            allowance,
            &mut pauses,
        );
        Effect {
            throttled_share: (self.rate * pause).min(1.0),
            pause_p99_seconds: p99(&mut pauses),
        }
    }
}

fn steady_effect(limit: f64, k: f64, period: f64) -> Effect {
    let share = (1.0 - limit / k).max(0.0);
    Effect {
        throttled_share: share,
        pause_p99_seconds: (share > 0.0).then_some(share * period),
    }
}

/// Rounds a limit up to [`LIMIT_STEP`].
fn round_up(cores: f64) -> f64 {
    ((cores / LIMIT_STEP) - 1e-9).ceil() * LIMIT_STEP
}

/// The advice for one observation, `None` without throttle episodes to fit.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "floor of a small positive core count"
)]
pub fn advise(o: &Observed) -> Option<Advice> {
    if o.episodes <= 0.0 || o.pause_seconds <= 0.0 || o.period_seconds <= 0.0 {
        return None;
    }
    let k = o
        .deficit_seconds
        .filter(|d| *d > 0.0)
        .map(|d| d / o.pause_seconds)
        .or(o.runnable_threads)?;
    // Throttling needs more threads than the limit has cores; a lower figure is noise.
    let k = k.max(o.limit_cores * 1.01);
    let target = o.threshold * TARGET_OF_THRESHOLD;
    let periods_share =
        (o.throttled_periods.unwrap_or(o.episodes) * o.period_seconds / o.seconds).min(1.0);
    let steady = o.used_cores >= STEADY_USE_MIN * o.limit_cores
        && periods_share >= STEADY_PERIODS_MIN
        && k > o.limit_cores;
    if steady {
        let limit = round_up(k * (1.0 - target)).max(o.limit_cores);
        let pool = (o.limit_cores.floor() as u64).max(1);
        #[expect(clippy::cast_precision_loss, reason = "a small thread count")]
        let pool_k = pool as f64;
        return Some(Advice {
            load: Load::Steady,
            parallelism: k,
            typical_burst_cpu_seconds: None,
            now: steady_effect(o.limit_cores, k, o.period_seconds),
            limit_cores: limit,
            limit_effect: steady_effect(limit, k, o.period_seconds),
            burst_seconds: None,
            burst_effect: None,
            burst_absorbs_all: None,
            pool_threads: Some(pool),
            pool_effect: Some(steady_effect(o.limit_cores, pool_k, o.period_seconds)),
        });
    }
    let model = Bursts::fit(o, k)?;
    let mut limit = o.limit_cores;
    let ceiling = k.max(model.burst / o.period_seconds) + LIMIT_STEP;
    let mut effect = model.effect(limit, 0.0);
    while effect.throttled_share > target && limit < ceiling {
        limit = round_up(limit + LIMIT_STEP);
        effect = model.effect(limit, 0.0);
    }
    let quota = o.limit_cores * o.period_seconds;
    let excess = model.burst - quota;
    let burst = (o.burst_supported && excess > 0.0).then(|| excess.min(quota));
    Some(Advice {
        load: Load::Bursts,
        parallelism: k,
        typical_burst_cpu_seconds: Some(model.burst),
        now: model.effect(o.limit_cores, 0.0),
        limit_cores: limit,
        limit_effect: effect,
        burst_seconds: burst,
        burst_effect: burst.map(|b| model.effect(o.limit_cores, b)),
        burst_absorbs_all: burst.map(|b| b >= excess),
        pool_threads: None,
        pool_effect: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a window of `seconds` shows of bursts of `burst` CPU-seconds by `k` threads,
    /// `rate` a second, under `limit` cores: the model run forwards, to fit backwards.
    fn observe_bursts(burst: f64, k: f64, rate: f64, limit: f64, seconds: f64) -> Observed {
        let mut pauses = Vec::new();
        let (pause, eps) = bursts_at(burst, limit * 0.1, k, 0.1, 0.0, &mut pauses);
        Observed {
            limit_cores: limit,
            period_seconds: 0.1,
            seconds,
            used_cores: burst * rate,
            episodes: eps * rate * seconds,
            pause_seconds: pause * rate * seconds,
            deficit_seconds: Some(pause * rate * seconds * k),
            runnable_threads: Some(k),
            throttled_periods: Some(eps * rate * seconds),
            burst_supported: true,
            threshold: 0.25,
        }
    }

    #[test]
    fn a_steady_pool_gets_a_limit_of_its_parallelism_and_a_pool_of_its_limit() {
        // 4 threads on 2 CPUs against 1 core: paused half of every period.
        let o = Observed {
            limit_cores: 1.0,
            period_seconds: 0.1,
            seconds: 10.0,
            used_cores: 1.0,
            episodes: 100.0,
            pause_seconds: 5.0,
            deficit_seconds: Some(10.0),
            runnable_threads: Some(4.0),
            throttled_periods: Some(100.0),
            burst_supported: true,
            threshold: 0.25,
        };
        let a = advise(&o).expect("advice");
        assert_eq!(a.load, Load::Steady);
        assert!((a.parallelism - 2.0).abs() < 1e-9);
        // 1 − L/2 ≤ 0.2: L = 1.6.
        assert!((a.limit_cores - 1.6).abs() < 1e-9, "{a:?}");
        assert!((a.now.throttled_share - 0.5).abs() < 1e-9);
        assert!(a.limit_effect.throttled_share <= 0.2 + 1e-9);
        assert_eq!(a.pool_threads, Some(1));
        assert_eq!(a.pool_effect.map(|e| e.throttled_share), Some(0.0));
        assert_eq!(a.burst_seconds, None, "no burst advice for a steady load");
    }

    #[test]
    fn bursts_are_fitted_back_and_sized_by_their_deficit() {
        // Bursts of 4 quotas on 2 CPUs at half the limit on average.
        let (limit, burst) = (0.25, 0.087);
        let rate = 0.5 * limit / burst;
        let o = observe_bursts(burst, 2.0, rate, limit, 10.0);
        let a = advise(&o).expect("advice");
        assert_eq!(a.load, Load::Bursts);
        let fitted = a.typical_burst_cpu_seconds.expect("burst size");
        assert!((fitted / burst - 1.0).abs() < 0.03, "fitted {fitted}");
        assert!(
            (a.now.throttled_share - o.pause_seconds / o.seconds).abs() < 0.02,
            "{a:?}"
        );
        assert!(a.limit_effect.throttled_share <= 0.2);
        // The smallest such limit: one step less is over the target.
        let model = Bursts::fit(&o, 2.0).expect("fit");
        assert!(
            model
                .effect(a.limit_cores - LIMIT_STEP, 0.0)
                .throttled_share
                > 0.2
        );
        assert!(a.limit_cores < 1.0, "{a:?}");
        // The burst allowance is at most the quota, and says it does not cover it all.
        assert_eq!(a.burst_seconds, Some(0.025));
        assert_eq!(a.burst_absorbs_all, Some(false));
        assert!(
            a.burst_effect
                .is_some_and(|e| e.throttled_share < a.now.throttled_share)
        );
        assert_eq!(a.pool_threads, None, "no pool advice for bursts");
    }

    #[test]
    fn the_predicted_share_falls_smoothly_with_the_limit() {
        let o = observe_bursts(0.16, 2.0, 1.0, 0.25, 10.0);
        let model = Bursts::fit(&o, 2.0).expect("fit");
        let mut last = f64::INFINITY;
        let mut limit = 0.25;
        while limit < 1.0 {
            let w = model.effect(limit, 0.0).throttled_share;
            assert!(
                w <= last + 0.005,
                "share rose to {w} at {limit} cores from {last}"
            );
            assert!(
                last.is_infinite() || last - w < 0.05,
                "a step of {} at {limit}",
                last - w
            );
            last = w;
            limit += LIMIT_STEP;
        }
        // A burst allowance helps, and more of it helps more.
        let small = model.effect(0.25, 0.01).throttled_share;
        let large = model.effect(0.25, 0.025).throttled_share;
        assert!(large < small && small < model.effect(0.25, 0.0).throttled_share);
    }

    #[test]
    fn no_episodes_no_advice() {
        let mut o = observe_bursts(0.05, 2.0, 1.0, 0.25, 10.0);
        o.episodes = 0.0;
        assert_eq!(advise(&o), None);
    }
}
