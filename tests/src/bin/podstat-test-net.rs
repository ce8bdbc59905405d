//! TCP traffic for the steering tests; every mode ends by itself (bounded in bytes and time).
//!
//! - `send ADDR FLOWS MBYTES SECS CPU`: opens FLOWS connections to ADDR and writes until MBYTES
//!   in all have gone or SECS passed; pinned to CPU (`-1`: not pinned).
//! - `usend ADDR MBYTES SECS CPU`, `urecv PORT SECS CPU`: the same over UDP, one flow, the
//!   reader pinned to CPU.
//! - `recv PORT FLOWS THREADS SECS MODE`: accepts FLOWS connections on PORT and reads them with
//!   THREADS threads until every flow ends or SECS pass. MODE `pin<N>`: each thread pinned to
//!   CPU N, reading its flows with blocking reads; `free`: unpinned threads that all read every
//!   flow (non-blocking); `hop<N>`: like `free`, and each thread moves to the next CPU every N
//!   reads (64 without N). Prints `bytes=<n> reads=<n>` at the end.
//! - `orecv tcp|udp PORT SECS CPU`: the oracle reader. One socket (TCP: the one accepted
//!   connection; UDP: bound, then connected to the sender of the first datagram, as iperf3's
//!   server does, so the kernel records its incoming CPU) read by one thread pinned to CPU until
//!   the flow ends, SECS pass, or (UDP) nothing came for a second. After every read that returned
//!   data it asks the kernel where the socket's last packet was processed (`SO_INCOMING_CPU`)
//!   and which CPU it runs on (`sched_getcpu`), and prints the tally as
//!   `reads=<n> pairs=<reader cpu>:<incoming cpu>:<reads>,...` (incoming -1: none recorded).
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

fn usage() -> ! {
    eprintln!(
        "usage: podstat-test-net send ADDR FLOWS MBYTES SECS CPU | recv PORT FLOWS THREADS SECS pin<N>|free|hop[N] | usend ADDR MBYTES SECS CPU | urecv PORT SECS CPU | orecv tcp|udp PORT SECS CPU"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage())
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
        let _ = podstat_tests::proc::pin_thread(c);
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

/// What the reader threads share.
struct Shared {
    socks: Vec<TcpStream>,
    eof: Vec<AtomicBool>,
    bytes: AtomicU64,
    reads: AtomicU64,
    end: Instant,
}

impl Shared {
    fn done(&self) -> bool {
        Instant::now() >= self.end || self.eof.iter().all(|e| e.load(Ordering::Relaxed))
    }

    /// One read of flow `i`; `Some(n)` when it returned data.
    fn read(&self, i: usize, buf: &mut [u8]) -> Option<usize> {
        match (&self.socks[i]).read(buf) {
            Ok(0) => {
                self.eof[i].store(true, Ordering::Relaxed);
                None
            }
            Ok(n) => {
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                self.reads.fetch_add(1, Ordering::Relaxed);
                Some(n)
            }
            Err(e) => {
                if !matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) {
                    eprintln!("read: {e}");
                    self.eof[i].store(true, Ordering::Relaxed);
                }
                None
            }
        }
    }
}

/// Pinned to `cpu`, blocking reads of thread `t`'s share of the flows.
fn read_pinned(sh: &Shared, t: usize, threads: usize, cpu: usize) {
    let _ = podstat_tests::proc::pin_thread(cpu);
    let mut buf = vec![0u8; 64 * 1024];
    let mine: Vec<usize> = (t..sh.socks.len()).step_by(threads).collect();
    for &i in &mine {
        let _ = sh.socks[i].set_read_timeout(Some(Duration::from_millis(200)));
    }
    while !sh.done() && mine.iter().any(|&i| !sh.eof[i].load(Ordering::Relaxed)) {
        for &i in &mine {
            let _ = sh.read(i, &mut buf);
        }
    }
}

/// Non-blocking reads of every flow; with `hop`, moves to the next CPU every `hop` reads.
fn read_shared(sh: &Shared, t: usize, hop: Option<u64>) {
    let ncpu = cpus();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cpu = t % ncpu;
    let mut n_reads = 0u64;
    while !sh.done() {
        let mut got = false;
        for i in 0..sh.socks.len() {
            if sh.read(i, &mut buf).is_some() {
                got = true;
                n_reads += 1;
                if let Some(every) = hop
                    && n_reads.is_multiple_of(every)
                {
                    cpu = (cpu + 1) % ncpu;
                    let _ = podstat_tests::proc::pin_thread(cpu);
                }
            }
        }
        if !got {
            thread::yield_now();
        }
    }
}

fn recv(args: &[String]) {
    let port: u16 = arg(args, 2);
    let flows: usize = arg(args, 3);
    let threads: usize = arg(args, 4);
    let secs: u64 = arg(args, 5);
    let mode: String = arg(args, 6);
    let pinned: Option<usize> = mode.strip_prefix("pin").and_then(|c| c.parse().ok());
    // `hop<N>`: move to the next CPU every N reads (`hop` alone: every 64).
    let hop: Option<u64> = mode.strip_prefix("hop").map(|n| {
        if n.is_empty() {
            64
        } else {
            n.parse::<u64>().unwrap_or_else(|_| usage()).max(1)
        }
    });
    if pinned.is_none() && hop.is_none() && mode != "free" {
        usage();
    }
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("bind {port}: {e}");
        std::process::exit(1)
    });
    let socks: Vec<TcpStream> = (0..flows)
        .map(|_| {
            listener.accept().map_or_else(
                |e| {
                    eprintln!("accept: {e}");
                    std::process::exit(1)
                },
                |(s, _)| s,
            )
        })
        .collect();
    if pinned.is_none() {
        for s in &socks {
            let _ = s.set_nonblocking(true);
        }
    }
    let shared = Shared {
        eof: (0..flows).map(|_| AtomicBool::new(false)).collect(),
        socks,
        bytes: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        end: Instant::now() + Duration::from_secs(secs),
    };
    thread::scope(|s| {
        for t in 0..threads {
            let sh = &shared;
            s.spawn(move || match pinned {
                Some(cpu) => read_pinned(sh, t, threads, cpu),
                None => read_shared(sh, t, hop),
            });
        }
    });
    println!(
        "bytes={} reads={}",
        shared.bytes.load(Ordering::Relaxed),
        shared.reads.load(Ordering::Relaxed)
    );
}

/// `usend ADDR MBYTES SECS CPU`: 1400-byte UDP datagrams to ADDR until MBYTES or SECS.
fn usend(args: &[String]) {
    let addr: String = arg(args, 2);
    let mbytes: u64 = arg(args, 3);
    let secs: u64 = arg(args, 4);
    let cpu: i64 = arg(args, 5);
    if let Ok(c) = usize::try_from(cpu) {
        let _ = podstat_tests::proc::pin_thread(c);
    }
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| {
        eprintln!("bind: {e}");
        std::process::exit(1)
    });
    let buf = vec![0x5au8; 1400];
    let limit = mbytes * 1024 * 1024;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while sent < limit && Instant::now() < end {
        match sock.send_to(&buf, &addr) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                eprintln!("send after {sent} bytes: {e}");
                break;
            }
        }
    }
    println!("sent={sent}");
}

/// `urecv PORT SECS CPU`: an unconnected UDP socket read by one thread pinned to CPU, until
/// SECS pass or nothing came for a second after the first datagram.
fn urecv(args: &[String]) {
    let port: u16 = arg(args, 2);
    let secs: u64 = arg(args, 3);
    let cpu: usize = arg(args, 4);
    let _ = podstat_tests::proc::pin_thread(cpu);
    let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("bind {port}: {e}");
        std::process::exit(1)
    });
    let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 2048];
    let (mut bytes, mut got_any) = (0u64, false);
    while Instant::now() < end {
        match sock.recv(&mut buf) {
            Ok(n) => {
                bytes += n as u64;
                got_any = true;
            }
            Err(_) if got_any => break,
            Err(_) => {}
        }
    }
    println!("bytes={bytes}");
}

/// `SO_INCOMING_CPU` of `fd`: the CPU that processed the socket's last packet (-1: none).
fn incoming_cpu(fd: std::os::fd::RawFd) -> i32 {
    let mut v: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `v` and `len` are valid for the int-sized option getsockopt writes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    if r == 0 { v } else { -1 }
}

/// The CPU this thread runs on.
fn current_cpu() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::sched_getcpu() }
}

fn orecv(args: &[String]) {
    use std::{collections::BTreeMap, os::fd::AsRawFd as _};
    let proto: String = arg(args, 2);
    let port: u16 = arg(args, 3);
    let secs: u64 = arg(args, 4);
    let cpu: usize = arg(args, 5);
    let _ = podstat_tests::proc::pin_thread(cpu);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tally: BTreeMap<(i32, i32), u64> = BTreeMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    let mut count = |fd, tally: &mut BTreeMap<(i32, i32), u64>| {
        reads += 1;
        *tally.entry((current_cpu(), incoming_cpu(fd))).or_default() += 1;
    };
    match proto.as_str() {
        "tcp" => {
            let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
                eprintln!("bind {port}: {e}");
                std::process::exit(1)
            });
            let (mut s, _) = listener.accept().unwrap_or_else(|e| {
                eprintln!("accept: {e}");
                std::process::exit(1)
            });
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            while Instant::now() < end {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => count(s.as_raw_fd(), &mut tally),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => {
                        eprintln!("read: {e}");
                        break;
                    }
                }
            }
        }
        "udp" => {
            let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
                eprintln!("bind {port}: {e}");
                std::process::exit(1)
            });
            let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
            let mut connected = false;
            while Instant::now() < end {
                match sock.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        count(sock.as_raw_fd(), &mut tally);
                        if !connected {
                            if let Err(e) = sock.connect(from) {
                                eprintln!("connect {from}: {e}");
                                std::process::exit(1);
                            }
                            connected = true;
                        }
                    }
                    Err(_) if connected => break,
                    Err(_) => {}
                }
            }
        }
        _ => usage(),
    }
    let pairs: Vec<String> = tally
        .iter()
        .map(|((r, i), n)| format!("{r}:{i}:{n}"))
        .collect();
    println!("reads={reads} pairs={}", pairs.join(","));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("send") => send(&args),
        Some("recv") => recv(&args),
        Some("usend") => usend(&args),
        Some("urecv") => urecv(&args),
        Some("orecv") => orecv(&args),
        _ => usage(),
    }
}
