//! The benchmarks' floor: attaches one of podstat's empty programs (`ebpf/src/floor.rs`) and
//! nothing else, so `cargo xtask bench` (`sched_switch`) and `bench-net` (`sock_recv_length`)
//! can measure what any program on that tracepoint costs, against which the probes' costs are
//! read.
//!
//! `podstat-test-floor [--hook sched_switch|sock_recv_length] [MAX_SECS]`: attaches (default
//! `sched_switch`), prints `attached`, and detaches on SIGTERM or SIGINT, or after MAX_SECS
//! (default 600) so that it never outlives a bench that died.
use std::{process::ExitCode, time::Duration};

use aya::{Btf, EbpfLoader};

fn run(hook: &str, max: Duration) -> Result<(), String> {
    let prog = match hook {
        "sched_switch" => "bench_floor",
        "sock_recv_length" => "floor_recv",
        other => return Err(format!("no floor program for hook {other}")),
    };
    let object = podstat::probe::object();
    if object.is_empty() {
        return Err("this build has no eBPF object (run it through `cargo xtask`)".into());
    }
    let btf = Btf::from_sys_fs().map_err(|e| format!("reading /sys/kernel/btf/vmlinux: {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .load(object)
        .map_err(|e| format!("loading the eBPF object: {}", podstat::util::chain(&e)))?;
    podstat::probe::attach_tp_btf(&mut ebpf, prog, hook, &btf)
        .map_err(|e| format!("{prog}: {e}"))?;
    println!("attached");
    wait_for_signal(max);
    Ok(())
}

/// Blocks until SIGTERM or SIGINT arrives, or `max` passes.
fn wait_for_signal(max: Duration) {
    // SAFETY: plain libc signal-set calls on a local set; the signals are blocked before
    // waiting, so one that arrives in between is not lost.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        let timeout = libc::timespec {
            tv_sec: libc::time_t::try_from(max.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: 0,
        };
        libc::sigtimedwait(&raw const set, std::ptr::null_mut(), &raw const timeout);
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut hook = "sched_switch".to_owned();
    if args.first().map(String::as_str) == Some("--hook") && args.len() >= 2 {
        hook = args.remove(1);
        args.remove(0);
    }
    let max = match args.first().map(|a| a.parse::<u64>()) {
        None => Duration::from_mins(10),
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => {
            eprintln!(
                "usage: podstat-test-floor [--hook sched_switch|sock_recv_length] [MAX_SECS]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&hook, max) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podstat-test-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
