//! Duty-cycling the read-time steering program (`--probe.net.duty-cycle`): attached for `on`
//! out of every `every`, detached in between, and each window's locality counts weighted by the
//! time it stands for over the time the program was really attached ([`Extrapolated`]):
//! `every / on` when the switching thread keeps to the schedule.
//!
//! Why: a program on `sock_recv_length` runs on every read of every socket on the node, and
//! the tracepoint's dispatch alone (an empty program) costs more per received packet than the
//! steering budget of issue 14 (docs/performance.md, "Receive steering"). Sampling inside the
//! program cannot go below that floor; only a detached program costs nothing. Detached, the
//! tracepoint's static key is off again, so the read path runs as on a node without podstat.
//!
//! Re-attaching needs no capability: the kernel checks privilege when the program is loaded,
//! and the agent keeps the program's fd after dropping every capability (6.5+; before 6.5 the
//! agent keeps `CAP_BPF`, see `privilege.rs`, which `bpf(2)` asks for). A re-attach that fails
//! is logged, counted as detached (`podstat_probe_attached` 0 for `net_reader`) and tried again
//! at the next window.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::Probes;

/// `--probe.net.duty-cycle`'s default: attached 500 ms in every 4 s (1/8 of the time).
pub const DEFAULT_DUTY_CYCLE: &str = "500ms/4s";

/// The shortest window: shorter ones would spend more on attaching than they save.
const MIN_ON: Duration = Duration::from_millis(10);
/// The largest `every / on`: how far one window's counts are extrapolated.
const MAX_SCALE: u128 = 64;

/// Attached for `on` out of every `every` (`on == every`: always attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyCycle {
    pub on: Duration,
    pub every: Duration,
}

impl DutyCycle {
    /// Always attached.
    pub const ALWAYS: Self = Self {
        on: Duration::from_secs(1),
        every: Duration::from_secs(1),
    };

    /// Whether the program is ever detached.
    pub fn cycles(&self) -> bool {
        self.on < self.every
    }

    /// What an examined read counts on schedule, on top of the in-program sampling weight:
    /// `every / on` (1 when always attached). The windows' own [`Window::weight`] is what
    /// the export uses.
    pub fn scale(&self) -> f64 {
        self.every.as_secs_f64() / self.on.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl Default for DutyCycle {
    fn default() -> Self {
        DEFAULT_DUTY_CYCLE.parse().unwrap_or(Self::ALWAYS)
    }
}

impl fmt::Display for DutyCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cycles() {
            write!(f, "{:?}/{:?}", self.on, self.every)
        } else {
            f.write_str("always")
        }
    }
}

/// Why a `--probe.net.duty-cycle` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DutyCycleError {
    #[error("{0:?} is not ON/EVERY (e.g. 500ms/4s) or \"always\"")]
    Form(String),
    #[error("{input:?}: {why}")]
    Duration { input: String, why: String },
    #[error(
        "{0:?}: EVERY must be from 1 to {MAX_SCALE} times ON (the windows' counts are extrapolated by about EVERY/ON)"
    )]
    Ratio(String),
    #[error("{0:?}: ON must be at least 10ms")]
    TooShort(String),
}

impl FromStr for DutyCycle {
    type Err = DutyCycleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "always" {
            return Ok(Self::ALWAYS);
        }
        let (on, every) = s
            .split_once('/')
            .ok_or_else(|| DutyCycleError::Form(s.to_owned()))?;
        let parse = |d: &str| {
            crate::util::parse_duration(d).map_err(|e| DutyCycleError::Duration {
                input: s.to_owned(),
                why: e.to_string(),
            })
        };
        let (on, every) = (parse(on)?, parse(every)?);
        if on < MIN_ON {
            return Err(DutyCycleError::TooShort(s.to_owned()));
        }
        let (n_on, n_every) = (on.as_nanos(), every.as_nanos());
        if n_every < n_on || n_every > n_on * MAX_SCALE {
            return Err(DutyCycleError::Ratio(s.to_owned()));
        }
        Ok(Self { on, every })
    }
}

/// The window schedule from `start`: where in its period `now` is, and when the next switch
/// (detach at `on`, attach at `every`) is due. Returns (attached now, next switch).
pub fn phase(d: DutyCycle, start: Instant, now: Instant) -> (bool, Instant) {
    let every = d.every.as_nanos().max(1);
    let since = now.saturating_duration_since(start).as_nanos();
    let period_start = since - since % every;
    let on_end = period_start + d.on.as_nanos();
    let (attached, next) = if since < on_end {
        (true, on_end)
    } else {
        (false, period_start + every)
    };
    let next = u64::try_from(next).unwrap_or(u64::MAX);
    (attached, start + Duration::from_nanos(next))
}

/// One closed window of the duty cycle, as the switching thread timed it: how long the program
/// was detached before it (since the previous window closed) and how long it was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub gap: Duration,
    pub attached: Duration,
}

impl Window {
    /// What each count of this window stands for: `(gap + attached) / attached`, the gap
    /// capped at the schedule's own gap plus one whole period (`2 * every - on`). A window the
    /// thread missed (woken more than `on` late) is extrapolated over; a longer gap, when
    /// attaching failed (`podstat_probe_attached` 0 meanwhile), is not.
    pub fn weight(&self, d: DutyCycle) -> f64 {
        let cap = (d.every * 2).saturating_sub(d.on);
        let attached = self.attached.as_secs_f64();
        if attached <= 0.0 {
            return 1.0;
        }
        (self.gap.min(cap).as_secs_f64() + attached) / attached
    }
}

/// The read-time locality counts as exported while the program is duty-cycled: per cgroup,
/// what each closed window added to the kernel's counts, times that window's
/// [`Window::weight`]. A window's counts are exported when it closes, at most `every` late.
///
/// Why measured times rather than a fixed `every / on`: the switching thread is an ordinary
/// thread, and a busy node delays it. Beside the net tests' spinning readers a 20 ms sleep
/// overslept by up to 850 ms; a late detach makes a window longer, a late attach makes it
/// shorter, and a fixed scale would count such a window as if it had kept to the schedule.
#[derive(Debug, Default)]
pub struct Extrapolated {
    per_cgroup: HashMap<u64, Tally>,
    /// Windows closed, and the time the program was attached in them.
    windows: u64,
    attached: Duration,
}

/// One cgroup's kernel counts when the last window closed, and its weighted totals.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    seen: [u64; 4],
    total: [f64; 4],
}

impl Extrapolated {
    /// Closes a window: `raw`, every cgroup's kernel counts read after the detach, gains
    /// `weight` times what it added since the last window. A cgroup missing from `raw` (its
    /// entry removed with the cgroup) is forgotten; a count below the last one (the entry
    /// removed and made again) counts in whole.
    pub fn close(
        &mut self,
        raw: impl IntoIterator<Item = (u64, [u64; 4])>,
        w: Window,
        d: DutyCycle,
    ) {
        let weight = w.weight(d);
        self.windows += 1;
        self.attached += w.attached;
        let mut next = HashMap::with_capacity(self.per_cgroup.len());
        for (cgroup, now) in raw {
            let mut t = self.per_cgroup.remove(&cgroup).unwrap_or_default();
            for ((seen, total), n) in t.seen.iter_mut().zip(&mut t.total).zip(now) {
                let added = n.checked_sub(*seen).unwrap_or(n);
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "counts stay far below 2^53 reads per window"
                )]
                let added = added as f64;
                *total += added * weight;
                *seen = n;
            }
            next.insert(cgroup, t);
        }
        self.per_cgroup = next;
    }

    /// Windows closed so far, and the time the program was attached in them.
    pub fn windows(&self) -> (u64, Duration) {
        (self.windows, self.attached)
    }

    /// A cgroup's weighted totals, rounded (0 before its first closed window).
    pub fn get(&self, cgroup: u64) -> [u64; 4] {
        self.per_cgroup.get(&cgroup).map_or([0; 4], |t| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "non-negative totals; a total above u64::MAX saturates"
            )]
            t.total.map(|x| x.round() as u64)
        })
    }
}

/// Starts the thread that detaches and re-attaches the read-time program on its duty cycle,
/// if the probes loaded it and the cycle detaches ([`Probes::net_duty`]); it stops when `stop`
/// is set. Must start after the capabilities are dropped, like every other thread (it needs
/// none).
pub fn spawn(
    probes: Arc<Probes>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Option<JoinHandle<()>>> {
    let Some(d) = probes.net_duty() else {
        return Ok(None);
    };
    tracing::info!(duty_cycle = %d, scale = d.scale(), "steering read program duty-cycled");
    std::thread::Builder::new()
        .name("net-duty".into())
        .spawn(move || {
            let start = Instant::now();
            // The agent loaded the program attached: a window is open from the start.
            let mut opened = Some(start);
            let mut closed = start;
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                let (attach, next) = phase(d, start, Instant::now());
                if attach != opened.is_some() {
                    let r = probes.set_net_reader(attach);
                    let now = Instant::now();
                    match (&r, opened) {
                        (Ok(()), None) => opened = Some(now),
                        (Ok(()), Some(at)) => {
                            probes.close_net_window(Window {
                                gap: at.saturating_duration_since(closed),
                                attached: now.saturating_duration_since(at),
                            });
                            opened = None;
                            closed = now;
                        }
                        (Err(_), _) => {}
                    }
                    // Logged once when switching starts failing, and once when it works again.
                    match (r, failing) {
                        (Ok(()), true) => {
                            failing = false;
                            tracing::info!("steering read program switched again");
                        }
                        (Err(why), false) => {
                            failing = true;
                            tracing::warn!(attach, reason = %crate::util::chain(&why), "steering read program: switching failed; retried every window");
                        }
                        (Ok(()), false) | (Err(_), true) => {}
                    }
                }
                // Short naps, so that a stop is seen within 100 ms.
                while !stop.load(Ordering::Relaxed) {
                    let left = next.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                }
            }
            // Leave it attached, as the agent loaded it.
            let _ = probes.set_net_reader(true);
        })
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_takes_on_every_or_always() {
        let d: DutyCycle = "500ms/4s".parse().expect("parse");
        assert_eq!(d.on, Duration::from_millis(500));
        assert_eq!(d.every, Duration::from_secs(4));
        assert!(d.cycles());
        assert!((d.scale() - 8.0).abs() < 1e-9);
        assert_eq!(DutyCycle::default(), d);
        let a: DutyCycle = "always".parse().expect("parse");
        assert!(!a.cycles());
        assert!((a.scale() - 1.0).abs() < 1e-9);
        let same: DutyCycle = "2s/2s".parse().expect("parse");
        assert!(!same.cycles());
        assert!((same.scale() - 1.0).abs() < 1e-9);
        let odd: DutyCycle = "500ms/1.2s".parse().expect("a ratio need not be whole");
        assert!((odd.scale() - 2.4).abs() < 1e-9);
    }

    #[test]
    fn a_ratio_below_one_or_too_large_is_refused() {
        for bad in ["4s/500ms", "10ms/1s", "5ms/10ms"] {
            assert!(bad.parse::<DutyCycle>().is_err(), "{bad} accepted");
        }
        for bad in ["500ms", "x/4s", "500ms/", "0/4s"] {
            assert!(bad.parse::<DutyCycle>().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            "10ms/1s".parse::<DutyCycle>(),
            Err(DutyCycleError::Ratio(_))
        ));
        assert!(matches!(
            "5ms/10ms".parse::<DutyCycle>(),
            Err(DutyCycleError::TooShort(_))
        ));
    }

    #[test]
    fn the_schedule_attaches_at_each_period_start_and_detaches_after_on() {
        let d: DutyCycle = "500ms/4s".parse().expect("parse");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(phase(d, t0, t0), (true, at(500)));
        assert_eq!(phase(d, t0, at(499)), (true, at(500)));
        assert_eq!(phase(d, t0, at(500)), (false, at(4000)));
        assert_eq!(phase(d, t0, at(3999)), (false, at(4000)));
        assert_eq!(phase(d, t0, at(4000)), (true, at(4500)));
        assert_eq!(phase(d, t0, at(8700)), (false, at(12_000)));
        // A clock before the start (cannot happen with Instant, saturates) is the start.
        assert_eq!(phase(d, at(10), t0), (true, at(510)));
    }

    #[test]
    fn a_window_stands_for_its_gap_and_itself_as_timed() {
        let d = DutyCycle::default();
        let ms = Duration::from_millis;
        let w = |gap, attached| Window {
            gap: ms(gap),
            attached: ms(attached),
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // On schedule: every / on.
        assert!(close(w(3500, 500).weight(d), 8.0));
        // The first window, open since the agent loaded the program: itself only.
        assert!(close(w(0, 500).weight(d), 1.0));
        // Detached 350 ms late: a longer window, each read counts less.
        assert!(close(w(3500, 850).weight(d), 4350.0 / 850.0));
        // Attached 300 ms late: a longer gap and a shorter window.
        assert!(close(w(3800, 200).weight(d), 20.0));
        // A missed window is extrapolated over; a longer gap (attaching failed) is not.
        assert!(close(w(7500, 500).weight(d), 16.0));
        assert!(close(w(3_600_000, 500).weight(d), 16.0));
        // Nothing attached to divide by: the counts as they are.
        assert!(close(w(100, 0).weight(d), 1.0));
    }

    #[test]
    fn each_window_adds_its_own_counts_times_its_weight() {
        let d = DutyCycle::default();
        // Windows of 500 ms after gaps that weigh them 1, 8 and 5.5.
        let w = |gap_ms| Window {
            gap: Duration::from_millis(gap_ms),
            attached: Duration::from_millis(500),
        };
        let mut e = Extrapolated::default();
        assert_eq!(e.get(7), [0; 4]);
        e.close([(7, [10, 0, 2, 0])], w(0), d);
        assert_eq!(e.get(7), [10, 0, 2, 0]);
        // The second window added 5 and 1: weighted by 8 on top of the first.
        e.close([(7, [15, 0, 3, 0]), (9, [4, 4, 0, 0])], w(3500), d);
        assert_eq!(e.get(7), [50, 0, 10, 0]);
        assert_eq!(e.get(9), [32, 32, 0, 0]);
        // Nothing new: nothing added, whatever the weight.
        e.close([(7, [15, 0, 3, 0]), (9, [4, 4, 0, 0])], w(2250), d);
        assert_eq!(e.get(7), [50, 0, 10, 0]);
        // A cgroup gone from the map is forgotten; one whose entry was made again (counts
        // below the last ones) counts them in whole.
        e.close([(9, [1, 0, 0, 0])], w(0), d);
        assert_eq!(e.get(7), [0; 4]);
        assert_eq!(e.get(9), [33, 32, 0, 0]);
        assert_eq!(e.windows(), (4, Duration::from_secs(2)));
    }

    #[test]
    fn it_prints_as_it_is_written() {
        assert_eq!(DutyCycle::default().to_string(), "500ms/4s");
        assert_eq!(DutyCycle::ALWAYS.to_string(), "always");
    }
}
