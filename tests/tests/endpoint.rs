//! Bad input at the endpoint: oversized request heads, a client that sends its head a byte at
//! a time, HTTP/2 with prior knowledge, and thousands of idle connections. The agent answers
//! or closes each, keeps answering others, and its memory stays bounded (limits: README,
//! "Endpoint limits").

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{churn::vm_rss_kib, http_get, require_root, start_agent};

/// The agent's defaults (`server::HEAD_TIMEOUT`, `--web.max-connections`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 512;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// Reads until the peer closes (or 30 s pass); what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_scrapes(addr: SocketAddr, when: &str) {
    let r =
        http_get(addr, "/metrics", &[]).unwrap_or_else(|e| panic!("{when}: scrape failed: {e}"));
    assert_eq!(r.status, 200, "{when}: /metrics answered {}", r.status);
}

#[test]
fn oversized_request_head_is_answered_431_and_closed() {
    require_root();
    let (agent, addr) = start_agent(&[
        "--no-collector.sched",
        "--no-collector.throttle",
        "--no-collector.net",
    ]);
    let rss0 = vm_rss_kib(agent.pid());
    for _ in 0..20 {
        let mut s = connect(addr);
        let big = "a".repeat(1 << 20);
        // The agent may close before it has read all of it; a write error is fine.
        let _ = s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        );
        let reply = read_to_close(&mut s);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
            "a 1 MiB header got: {:?}",
            &reply[..reply.len().min(200)]
        );
    }
    assert_scrapes(addr, "after 20 oversized heads");
    let rss1 = vm_rss_kib(agent.pid());
    assert!(
        rss1 < rss0 + 8 * 1024,
        "RSS grew from {rss0} to {rss1} KiB reading 20 MiB of headers"
    );
}

#[test]
fn slow_client_is_closed_after_the_head_timeout_and_others_are_served() {
    require_root();
    let (_agent, addr) = start_agent(&[
        "--no-collector.sched",
        "--no-collector.throttle",
        "--no-collector.net",
    ]);
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let start = Instant::now();
    let slow = thread::spawn(move || {
        // One header byte every 500 ms: the head never ends.
        loop {
            if s.write_all(b"X").is_err() || start.elapsed() > Duration::from_secs(40) {
                return start.elapsed();
            }
            thread::sleep(Duration::from_millis(500));
        }
    });
    thread::sleep(Duration::from_secs(1));
    assert_scrapes(addr, "while a slow client dribbles its head");
    let closed_after = slow.join().expect("slow client thread");
    assert!(
        closed_after + Duration::from_secs(1) >= HEAD_TIMEOUT
            && closed_after < HEAD_TIMEOUT + Duration::from_secs(10),
        "the slow client's connection was closed after {closed_after:?} (head timeout {HEAD_TIMEOUT:?})"
    );
}

#[test]
fn http2_prior_knowledge_is_refused_not_hung() {
    require_root();
    let (_agent, addr) = start_agent(&[
        "--no-collector.sched",
        "--no-collector.throttle",
        "--no-collector.net",
    ]);
    let mut s = connect(addr);
    // The HTTP/2 connection preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("write");
    let start = Instant::now();
    let reply = read_to_close(&mut s);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the connection stayed open {:?} after an HTTP/2 preface",
        start.elapsed()
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 4") || reply.starts_with("HTTP/1.1 5"),
        "an HTTP/2 preface got: {reply:?}"
    );
    assert_scrapes(addr, "after an HTTP/2 preface");
}

#[test]
fn thousands_of_idle_connections_cost_bounded_memory_and_fds() {
    require_root();
    // Our own fd limit, for the clients.
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit reads the struct we pass; raising our own fd limit as root.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) },
        0,
        "raising RLIMIT_NOFILE"
    );
    let (agent, addr) = start_agent(&[
        "--no-collector.sched",
        "--no-collector.throttle",
        "--no-collector.net",
    ]);
    assert_scrapes(addr, "before");
    let rss0 = vm_rss_kib(agent.pid());
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).map_or(0, Iterator::count);
    let fds0 = fds();
    let mut idle = Vec::new();
    for i in 0..3000 {
        match TcpStream::connect(addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    thread::sleep(Duration::from_secs(2));
    let (rss1, fds1) = (vm_rss_kib(agent.pid()), fds());
    eprintln!("3000 idle connections: agent RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}");
    assert!(
        fds1 <= fds0 + MAX_CONNECTIONS + 8,
        "the agent holds {fds1} fds with 3000 idle connections (before: {fds0}, cap {MAX_CONNECTIONS})"
    );
    assert!(
        rss1 <= rss0 + 16 * 1024,
        "3000 idle connections grew the agent's RSS from {rss0} to {rss1} KiB"
    );
    // The idle ones are closed by the head timeout; then scrapes are served again.
    thread::sleep(HEAD_TIMEOUT + Duration::from_secs(2));
    assert!(
        fds() <= fds0 + 8,
        "idle connections still open after the head timeout: {} fds",
        fds()
    );
    assert_scrapes(addr, "after the idle connections timed out");
    drop(idle);
}
