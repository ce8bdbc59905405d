//! Load generator for the integration tests; every mode ends by itself (`gated` when its
//! stdin closes).
//!
//! - `busy THREADS SECS`: THREADS threads spinning for SECS seconds.
//! - `spin-sleep SPIN_MS SLEEP_MS SECS`: one thread that spins SPIN_MS, sleeps SLEEP_MS, repeat.
//! - `gated THREADS SPIN_US SLEEP_US SECS MIGRATE_EVERY`: THREADS threads that each spin
//!   SPIN_US, sleep SLEEP_US, repeat for SECS, and every MIGRATE_EVERY rounds (0: never) pin
//!   themselves to the next CPU (so that they migrate while runnable). They start when a line
//!   arrives on stdin (after `ready` on stdout) and, when all are done, print `done` and stay
//!   alive, blocked, until stdin closes: the tasks exist, quiet, at both ends of the interval
//!   a test compares with `/proc/<pid>/task/*/schedstat`. With SPIN_US 0 each thread instead
//!   sleeps to absolute deadlines SLEEP_US apart (`clock_nanosleep(TIMER_ABSTIME)`) and
//!   measures how late it woke, as `cyclictest` does: `done SUM_NS COUNT` then reports the
//!   lateness summed over all wakeups of all threads (`done 0 0` otherwise).
//! - `burst THREADS CPU_MS CYCLE_MS SECS`: THREADS threads that wake together every CYCLE_MS
//!   (absolute deadlines from a common start), each burns CPU_MS of its own CPU time (not wall
//!   time, so a throttled burst still asks for all of it), then sleeps to the next deadline. A
//!   burst that overruns the cycle starts the next one at once.
use std::{
    hint::black_box,
    io::{BufRead as _, Read as _, Write as _},
    sync::{Arc, Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

fn spin_for(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    black_box(x);
}

/// CLOCK_MONOTONIC, ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Sleeps to the absolute CLOCK_MONOTONIC instant `at_ns`.
fn sleep_until(at_ns: u64) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(at_ns / 1_000_000_000).unwrap_or(0),
        tv_nsec: libc::c_long::try_from(at_ns % 1_000_000_000).unwrap_or(0),
    };
    // SAFETY: a valid timespec; no remainder is asked for with TIMER_ABSTIME.
    while unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &raw const ts,
            std::ptr::null_mut(),
        )
    } == libc::EINTR
    {}
}

/// Cyclictest-style: wakes at deadlines `period` apart until `end`; (lateness ns summed, wakeups).
/// Deadlines that have passed before the thread goes to sleep are skipped, not counted.
fn lateness(period: Duration, end: Instant) -> (u64, u64) {
    // As cyclictest does: no timer slack (50 µs by default), so the lateness is the timer
    // interrupt's, the wakeup's and the run-queue wait's.
    // SAFETY: PR_SET_TIMERSLACK takes a value and changes only this thread's slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64) };
    let period = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
    let (mut sum, mut n) = (0u64, 0u64);
    let mut deadline = monotonic_ns() + period;
    while Instant::now() < end {
        let now = monotonic_ns();
        if now >= deadline {
            // Behind (starved by a neighbour, or slowed by emulation): a deadline already past
            // is not a sleep and has no wakeup, and counting it would add up the backlog, so
            // the next deadline is the first one still ahead.
            deadline += ((now - deadline) / period + 1) * period;
        }
        sleep_until(deadline);
        sum += monotonic_ns().saturating_sub(deadline);
        n += 1;
        deadline += period;
    }
    (sum, n)
}

fn gated(threads: usize, spin: Duration, sleep: Duration, secs: Duration, migrate_every: u64) {
    let ncpu = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let start = Arc::new(Barrier::new(threads + 1));
    let (done_tx, done_rx) = mpsc::channel();
    for t in 0..threads {
        let (start, done_tx) = (Arc::clone(&start), done_tx.clone());
        thread::spawn(move || {
            start.wait();
            let end = Instant::now() + secs;
            if spin.is_zero() {
                let _ = done_tx.send(lateness(sleep, end));
                loop {
                    thread::park();
                }
            }
            let mut round = 0u64;
            while Instant::now() < end {
                spin_for(spin);
                thread::sleep(sleep);
                round += 1;
                if migrate_every > 0 && round.is_multiple_of(migrate_every) {
                    #[expect(
                        clippy::cast_possible_truncation,
                        reason = "a round count mod a CPU count"
                    )]
                    let _ = podstat_tests::proc::pin_thread(
                        (t + (round / migrate_every) as usize) % ncpu,
                    );
                }
            }
            let _ = done_tx.send((0, 0));
            loop {
                thread::park();
            }
        });
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    start.wait();
    let (mut late_ns, mut wakeups) = (0u64, 0u64);
    for _ in 0..threads {
        let (s, n) = done_rx.recv().unwrap_or((0, 0));
        late_ns += s;
        wakeups += n;
    }
    let _ = writeln!(out, "done {late_ns} {wakeups}");
    let _ = out.flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// Spins until this thread has used `d` more CPU time.
fn burn_cpu(d: Duration) {
    let end = podstat_tests::proc::thread_cpu_time() + d;
    let mut x = 0u64;
    while podstat_tests::proc::thread_cpu_time() < end {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    black_box(x);
}

/// `burst`: see the module comment.
fn burst(threads: usize, cpu: Duration, cycle: Duration, secs: Duration) {
    let start = Instant::now();
    let end = start + secs;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            thread::spawn(move || {
                let mut next = start;
                while next < end {
                    burn_cpu(cpu);
                    next += cycle;
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn arg(args: &[String], i: usize, what: &str) -> f64 {
    args.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: podstat-test-load busy THREADS SECS | spin-sleep SPIN_MS SLEEP_MS SECS | gated THREADS SPIN_US SLEEP_US SECS MIGRATE_EVERY | burst THREADS CPU_MS CYCLE_MS SECS (bad {what})");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("busy") => {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a small thread count from the command line"
            )]
            let threads = arg(&args, 2, "THREADS").max(0.0) as usize;
            let secs = Duration::from_secs_f64(arg(&args, 3, "SECS").min(120.0));
            let handles: Vec<_> = (0..threads)
                .map(|_| thread::spawn(move || spin_for(secs)))
                .collect();
            for h in handles {
                let _ = h.join();
            }
        }
        Some("spin-sleep") => {
            let spin = Duration::from_secs_f64(arg(&args, 2, "SPIN_MS") / 1000.0);
            let sleep = Duration::from_secs_f64(arg(&args, 3, "SLEEP_MS") / 1000.0);
            let end = Instant::now() + Duration::from_secs_f64(arg(&args, 4, "SECS").min(120.0));
            while Instant::now() < end {
                spin_for(spin);
                thread::sleep(sleep);
            }
        }
        Some("gated") => {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "small counts from the command line"
            )]
            let (threads, every) = (
                arg(&args, 2, "THREADS").max(0.0) as usize,
                arg(&args, 6, "MIGRATE_EVERY").max(0.0) as u64,
            );
            gated(
                threads,
                Duration::from_secs_f64(arg(&args, 3, "SPIN_US") / 1e6),
                Duration::from_secs_f64(arg(&args, 4, "SLEEP_US") / 1e6),
                Duration::from_secs_f64(arg(&args, 5, "SECS").min(120.0)),
                every,
            );
        }
        Some("burst") => {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a small thread count from the command line"
            )]
            let threads = arg(&args, 2, "THREADS").max(0.0) as usize;
            burst(
                threads,
                Duration::from_secs_f64(arg(&args, 3, "CPU_MS") / 1000.0),
                Duration::from_secs_f64(arg(&args, 4, "CYCLE_MS").max(1.0) / 1000.0),
                Duration::from_secs_f64(arg(&args, 5, "SECS").min(120.0)),
            );
        }
        _ => {
            eprintln!(
                "usage: podstat-test-load busy THREADS SECS | spin-sleep SPIN_MS SLEEP_MS SECS | gated THREADS SPIN_US SLEEP_US SECS MIGRATE_EVERY | burst THREADS CPU_MS CYCLE_MS SECS"
            );
            std::process::exit(2);
        }
    }
}
