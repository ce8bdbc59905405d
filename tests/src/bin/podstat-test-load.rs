//! Load generator for the integration tests; every mode ends by itself.
//!
//! - `busy THREADS SECS`: THREADS threads spinning for SECS seconds.
//! - `spin-sleep SPIN_MS SLEEP_MS SECS`: one thread that spins SPIN_MS, sleeps SLEEP_MS, repeat.
use std::{
    hint::black_box,
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

fn arg(args: &[String], i: usize, what: &str) -> f64 {
    args.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: podstat-test-load busy THREADS SECS | spin-sleep SPIN_MS SLEEP_MS SECS (bad {what})");
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
        _ => {
            eprintln!(
                "usage: podstat-test-load busy THREADS SECS | spin-sleep SPIN_MS SLEEP_MS SECS"
            );
            std::process::exit(2);
        }
    }
}
