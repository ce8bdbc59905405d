//! TCP traffic for the steering tests; every mode ends by itself (bounded in bytes and time).
//!
//! - `send ADDR FLOWS MBYTES SECS CPU`: opens FLOWS connections to ADDR and writes until MBYTES
//!   in all have gone or SECS passed; pinned to CPU (`-1`: not pinned).
//! - `recv PORT FLOWS THREADS SECS MODE`: accepts FLOWS connections on PORT and reads them with
//!   THREADS threads until every flow ends or SECS pass. MODE `pin<N>`: each thread pinned to
//!   CPU N, reading its flows with blocking reads; `free`: unpinned threads that all read every
//!   flow (non-blocking); `hop<N>`: like `free`, and each thread moves to the next CPU every N
//!   reads (64 without N). Prints `bytes=<n> reads=<n>` at the end.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

fn usage() -> ! {
    eprintln!(
        "usage: podstat-test-net send ADDR FLOWS MBYTES SECS CPU | recv PORT FLOWS THREADS SECS pin<N>|free|hop[N]"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage())
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it;
    // sched_setaffinity(0) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

fn cpus() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn send(args: &[String]) {
    let addr: String = arg(args, 2);
    let flows: usize = arg(args, 3);
    let mbytes: u64 = arg(args, 4);
    let secs: u64 = arg(args, 5);
    let cpu: i64 = arg(args, 6);
    if let Ok(c) = usize::try_from(cpu) {
        pin(c);
    }
    let mut socks: Vec<TcpStream> = (0..flows)
        .map(|_| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match TcpStream::connect(&addr) {
                    Ok(s) => return s,
                    Err(e) if Instant::now() > deadline => {
                        eprintln!("connect {addr}: {e}");
                        std::process::exit(1)
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .collect();
    let buf = vec![0x5au8; 16 * 1024];
    let limit = mbytes * 1024 * 1024;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    'outer: while sent < limit && Instant::now() < end {
        for s in &mut socks {
            match s.write(&buf) {
                Ok(n) => sent += n as u64,
                Err(e) => {
                    eprintln!("write after {sent} bytes: {e}");
                    break 'outer;
                }
            }
        }
    }
    println!("sent={sent}");
}

fn recv(args: &[String]) {
    let port: u16 = arg(args, 2);
    let flows: usize = arg(args, 3);
    let threads: usize = arg(args, 4);
    let secs: u64 = arg(args, 5);
    let mode: String = arg(args, 6);
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("bind {port}: {e}");
        std::process::exit(1)
    });
    // Ready: the test starts the sender when this line appears.
    println!("listening");
    let _ = std::io::stdout().flush();
    let socks: Arc<Vec<TcpStream>> = Arc::new(
        (0..flows)
            .map(|_| {
                listener.accept().map(|(s, _)| s).unwrap_or_else(|e| {
                    eprintln!("accept: {e}");
                    std::process::exit(1)
                })
            })
            .collect(),
    );
    let end = Instant::now() + Duration::from_secs(secs);
    let bytes = Arc::new(AtomicU64::new(0));
    let eof: Arc<Vec<AtomicBool>> = Arc::new((0..flows).map(|_| AtomicBool::new(false)).collect());
    let reads = Arc::new(AtomicU64::new(0));
    let pinned: Option<usize> = mode.strip_prefix("pin").and_then(|c| c.parse().ok());
    // `hop<N>`: move to the next CPU every N reads (`hop` alone: every 64).
    let hop: Option<u64> = mode
        .strip_prefix("hop")
        .map(|n| {
            if n.is_empty() {
                Some(64)
            } else {
                n.parse().ok()
            }
        })
        .map(|n| n.unwrap_or_else(|| usage()).max(1));
    if pinned.is_none() && hop.is_none() && mode != "free" {
        usage();
    }
    let ncpu = cpus();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let socks = Arc::clone(&socks);
            let (bytes, reads) = (Arc::clone(&bytes), Arc::clone(&reads));
            let eof = Arc::clone(&eof);
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                if let Some(c) = pinned {
                    pin(c);
                    // Blocking reads of this thread's share of the flows.
                    let mine: Vec<&TcpStream> = socks.iter().skip(t).step_by(threads).collect();
                    for s in &mine {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    }
                    let mut open = mine.len();
                    while open > 0 && Instant::now() < end {
                        open = 0;
                        for mut s in mine.iter().copied() {
                            match s.read(&mut buf) {
                                Ok(0) => {}
                                Ok(n) => {
                                    open += 1;
                                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                                    reads.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock
                                            | ErrorKind::TimedOut
                                            | ErrorKind::Interrupted
                                    ) =>
                                {
                                    open += 1;
                                }
                                Err(e) => eprintln!("read: {e}"),
                            }
                        }
                    }
                    return;
                }
                for s in socks.iter() {
                    let _ = s.set_nonblocking(true);
                }
                let mut cpu = t % ncpu;
                let mut n_reads = 0u64;
                // Until every flow has ended (EOF) or the time is up.
                while Instant::now() < end && !eof.iter().all(|e| e.load(Ordering::Relaxed)) {
                    let mut got = false;
                    for (i, mut s) in socks.iter().enumerate() {
                        match s.read(&mut buf) {
                            Ok(0) => eof[i].store(true, Ordering::Relaxed),
                            Ok(n) => {
                                got = true;
                                bytes.fetch_add(n as u64, Ordering::Relaxed);
                                reads.fetch_add(1, Ordering::Relaxed);
                                n_reads += 1;
                                if let Some(every) = hop
                                    && n_reads % every == 0
                                {
                                    cpu = (cpu + 1) % ncpu;
                                    pin(cpu);
                                }
                            }
                            Err(_) => {}
                        }
                    }
                    if !got {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    println!(
        "bytes={} reads={}",
        bytes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("send") => send(&args),
        Some("recv") => recv(&args),
        _ => usage(),
    }
}
