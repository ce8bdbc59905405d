//! The agent under test: its binary, and `podstat agent` started on a free loopback port.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Proc, free_port, http_get, netns};

/// The agent binary under test (`cargo xtask test` and `cargo xtask bench` set `PODSTAT_BIN`).
pub fn podstat_bin() -> PathBuf {
    let bin = std::env::var_os("PODSTAT_BIN").map_or_else(|| {
        panic!("PODSTAT_BIN is not set: run the integration tests through `cargo xtask test`, which builds podstat with its eBPF object")
    }, PathBuf::from);
    assert!(
        bin.is_file(),
        "PODSTAT_BIN={} does not exist; run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `podstat agent --web.listen-address <addr> --log.level warn <extra>`, stdin null, run in
/// network namespace `netns` when given (through `nsenter --net`, see [`netns::enter`]).
/// Unless `extra` sets `--web.scrape-window`, it is `0`: a test (or the scrape bench) that
/// scrapes twice wants two collections, not the first one shared.
pub fn agent_command(netns: Option<&str>, addr: SocketAddr, extra: &[&str]) -> Command {
    let mut cmd = match netns {
        None => Command::new(podstat_bin()),
        Some(ns) => {
            let mut c = netns::enter(ns);
            c.arg(podstat_bin());
            c
        }
    };
    cmd.arg("agent")
        .arg("--web.listen-address")
        .arg(addr.to_string())
        .args(["--log.level", "warn"])
        .args(extra)
        .args(
            if extra.iter().any(|f| f.starts_with("--web.scrape-window")) {
                &[][..]
            } else {
                &["--web.scrape-window", "0"][..]
            },
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// Starts `podstat agent` on a free loopback port and waits until /healthz answers.
pub fn start_agent(extra: &[&str]) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let mut cmd = agent_command(None, addr, extra);
    let mut proc = Proc(Some(cmd.spawn().expect("spawning podstat agent")));
    wait_healthy(&mut proc, addr);
    (proc, addr)
}

/// Waits (at most 20 s) until the agent `proc` answers /healthz on `addr`; panics if it exits
/// first or does not answer in time.
pub fn wait_healthy(proc: &mut Proc, addr: SocketAddr) {
    wait_healthy_with(proc, addr, || http_get(addr, "/healthz", &[]));
}

/// Starts `podstat agent` behind `secure`'s web config (TLS and basic auth) on a free
/// loopback port, and waits until /healthz answers over TLS with the password.
pub fn start_secure_agent(secure: &crate::tls::Secure, extra: &[&str]) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let web = secure.web_config();
    let mut args = vec!["--web.config.file", web.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let mut proc = Proc(Some(
        agent_command(None, addr, &args)
            .spawn()
            .expect("spawning podstat agent"),
    ));
    wait_healthy_with(&mut proc, addr, || secure.get(addr, "/healthz", &[]));
    (proc, addr)
}

/// [`wait_healthy`], asking with `get`.
fn wait_healthy_with(
    proc: &mut Proc,
    addr: SocketAddr,
    get: impl Fn() -> std::io::Result<crate::Response>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = get()
            && r.status == 200
        {
            return;
        }
        if let Some(status) = proc.exited() {
            panic!("podstat agent exited during startup with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "podstat agent did not answer /healthz on {addr} within 20 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `/metrics` (at most 20 s) until it answers 200 with a body `ready` accepts.
///
/// # Errors
/// The agent exited, or was not ready in time: what it last answered.
pub fn wait_metrics(
    proc: &mut Proc,
    addr: SocketAddr,
    ready: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Some(s) = proc.exited() {
            return Err(format!("the agent exited with {s} before it was ready"));
        }
        match http_get(addr, "/metrics", &[]) {
            Ok(r) if r.status == 200 => {
                if ready(&r.text()) {
                    return Ok(());
                }
                last = "200 but not ready yet".into();
            }
            Ok(r) => last = format!("HTTP {}", r.status),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "the agent at {addr} was not ready after 20 s ({last})"
    ))
}
