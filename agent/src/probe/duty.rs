//! Duty-cycling the read-time steering program (`--probe.net.duty-cycle`): attached for `on`
//! out of every `every`, detached in between, and its locality counts scaled by `every / on`.
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
/// The largest `every / on`: the counts' scale.
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

    /// What an examined read counts, on top of the in-program sampling weight: `every / on`
    /// (1 when always attached). Whole, as the parser requires.
    pub fn scale(&self) -> u64 {
        u64::try_from(self.every.as_nanos() / self.on.as_nanos().max(1)).unwrap_or(1)
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
        "{0:?}: EVERY must be a whole multiple of ON, from 1 to {MAX_SCALE} times (the counts are scaled by EVERY/ON)"
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
        if n_every < n_on || n_every % n_on != 0 || n_every / n_on > MAX_SCALE {
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
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                let (attached, next) = phase(d, start, now);
                // Logged once when switching starts failing, and once when it works again.
                match (probes.set_net_reader(attached), failing) {
                    (Ok(()), true) => {
                        failing = false;
                        tracing::info!("steering read program attached again");
                    }
                    (Err(why), false) => {
                        failing = true;
                        tracing::warn!(attach = attached, reason = %crate::util::chain(&why), "steering read program: switching failed; retried every window");
                    }
                    (Ok(()), false) | (Err(_), true) => {}
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
        assert_eq!(d.scale(), 8);
        assert_eq!(DutyCycle::default(), d);
        let a: DutyCycle = "always".parse().expect("parse");
        assert!(!a.cycles());
        assert_eq!(a.scale(), 1);
        let same: DutyCycle = "2s/2s".parse().expect("parse");
        assert!(!same.cycles());
        assert_eq!(same.scale(), 1);
        assert_eq!("100ms/800ms".parse::<DutyCycle>().map(|d| d.scale()), Ok(8));
    }

    #[test]
    fn a_ratio_that_is_not_whole_or_too_large_is_refused() {
        for bad in ["500ms/1.2s", "4s/500ms", "10ms/1s", "5ms/10ms"] {
            assert!(bad.parse::<DutyCycle>().is_err(), "{bad} accepted");
        }
        for bad in ["500ms", "x/4s", "500ms/", "0/4s"] {
            assert!(bad.parse::<DutyCycle>().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            "500ms/1.2s".parse::<DutyCycle>(),
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
    fn it_prints_as_it_is_written() {
        assert_eq!(DutyCycle::default().to_string(), "500ms/4s");
        assert_eq!(DutyCycle::ALWAYS.to_string(), "always");
    }
}
