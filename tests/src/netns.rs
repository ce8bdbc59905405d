//! Two hosts in network namespaces (`<name>-tx`, `<name>-rx`, named `podstat-test-*`) joined by
//! a 4-queue veth pair (`podstat-test-a` in tx, `podstat-test-b` in rx), RPS (and RFS) on the
//! receiver, optionally a sysfs of the receiver's namespace for the agent's `--path.sysfs`.
//! Everything, including the global `net.core.rps_sock_flow_entries`, is restored on drop.

use std::{
    fs,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Proc, Sample, agent_command, cpus, free_addr, http_get, proc::run};

const SOCK_FLOW: &str = "/proc/sys/net/core/rps_sock_flow_entries";

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// `nsenter --net=/run/netns/<ns>`, to which the caller adds the program. Not `ip netns exec`,
/// which would unmount the cgroup filesystems under `/sys`.
pub fn enter(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"));
    c
}

/// The namespaces, the veth pair and RPS/RFS; undone on drop.
pub struct NetPair {
    pub tx: String,
    pub rx: String,
    /// `<subnet>.1` on the sender's end, `<subnet>.2` on the receiver's.
    subnet: String,
    saved_sock_flow: String,
    sysfs: Option<PathBuf>,
}

impl NetPair {
    /// `name`: the namespaces' stem (`podstat-test-…`); `subnet`: three octets, e.g.
    /// `10.211.7`; `rfs`: configure RFS (rps_flow_cnt and rps_sock_flow_entries) besides RPS;
    /// `sysfs`: mount a sysfs of the receiver's namespace at `/tmp/<name>-sys`.
    pub fn new(name: &str, subnet: &str, rfs: bool, sysfs: bool) -> Self {
        assert!(
            name.starts_with("podstat-test-"),
            "namespace stem {name} must start with podstat-test-"
        );
        let saved_sock_flow =
            fs::read_to_string(SOCK_FLOW).unwrap_or_else(|e| panic!("reading {SOCK_FLOW}: {e}"));
        let mut net = Self {
            tx: format!("{name}-tx"),
            rx: format!("{name}-rx"),
            subnet: subnet.to_owned(),
            saved_sock_flow,
            sysfs: None,
        };
        ip(&["netns", "add", &net.tx]);
        ip(&["netns", "add", &net.rx]);
        ip(&[
            "-n",
            &net.tx,
            "link",
            "add",
            "podstat-test-a",
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
            "type",
            "veth",
            "peer",
            "name",
            "podstat-test-b",
            "netns",
            &net.rx,
            "numtxqueues",
            "4",
            "numrxqueues",
            "4",
        ]);
        for (ns, dev, addr) in [
            (&net.tx, "podstat-test-a", format!("{subnet}.1/24")),
            (&net.rx, "podstat-test-b", format!("{subnet}.2/24")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // RPS over every CPU and RFS on each receive queue of the receiving end; the global
        // socket flow table (restored in Drop).
        let mask = format!("{:x}", (1u64 << cpus().min(63)) - 1);
        let flows = if rfs { 4096 } else { 0 };
        let script = format!(
            "for q in /sys/class/net/podstat-test-b/queues/rx-*; do echo {mask} > $q/rps_cpus; echo {flows} > $q/rps_flow_cnt; done"
        );
        run(Command::new("ip").args(["netns", "exec", &net.rx, "sh", "-c", &script]));
        let entries = if rfs { "32768" } else { "0" };
        fs::write(SOCK_FLOW, entries).unwrap_or_else(|e| panic!("writing {SOCK_FLOW}: {e}"));
        if sysfs {
            let dir = PathBuf::from(format!("/tmp/{name}-sys"));
            fs::create_dir_all(&dir).expect("mkdir sysfs mount point");
            // Recorded first, so Drop removes the mount point even if the mount fails.
            net.sysfs = Some(dir.clone());
            run(enter(&net.rx)
                .args(["mount", "-t", "sysfs", "podstat-test-sysfs"])
                .arg(&dir));
        }
        net
    }

    /// Sets every receive queue's RPS mask on the receiver's end to the CPUs of `cpus` (RFS
    /// stays as configured).
    pub fn set_rps_cpus(&self, cpus: &[usize]) {
        let mask: u64 = cpus.iter().fold(0, |m, c| m | (1u64 << c));
        let script = format!(
            "for q in /sys/class/net/podstat-test-b/queues/rx-*; do echo {mask:x} > $q/rps_cpus; done"
        );
        run(Command::new("ip").args(["netns", "exec", &self.rx, "sh", "-c", &script]));
    }

    /// The receiver's address.
    pub fn rx_ip(&self) -> String {
        format!("{}.2", self.subnet)
    }

    /// The sysfs of the receiver's namespace, if mounted.
    pub fn sysfs(&self) -> Option<&Path> {
        self.sysfs.as_deref()
    }

    /// Starts `podstat agent` in the receiver's namespace (with `--path.sysfs` of its sysfs
    /// when mounted) and waits (at most 30 s) until it answers a scrape there.
    pub fn start_agent_in_rx(&self, extra: &[&str]) -> (Proc, SocketAddr) {
        let addr = free_addr();
        let mut args: Vec<&str> = Vec::new();
        let sysfs = self
            .sysfs
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(s) = &sysfs {
            args.extend(["--path.sysfs", s]);
        }
        args.extend_from_slice(extra);
        let child = agent_command(Some(&self.rx), addr, &args)
            .spawn()
            .expect("spawning podstat agent");
        let proc = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while scrape_in(&self.rx, addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent in {} did not answer within 30 s",
                self.rx
            );
            thread::sleep(Duration::from_millis(100));
        }
        (proc, addr)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = fs::write(SOCK_FLOW, self.saved_sock_flow.trim());
        if let Some(dir) = &self.sysfs {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
            let _ = fs::remove_dir(dir);
        }
        for ns in [&self.tx, &self.rx] {
            // Deleting the namespace destroys the veth end in it.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Scrapes `addr` from a thread inside network namespace `ns`.
///
/// # Errors
/// Entering the namespace, the GET.
pub fn scrape_in(ns: &str, addr: SocketAddr) -> std::io::Result<Vec<Sample>> {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let f = fs::File::open(&path)?;
            // SAFETY: setns on this (scoped, short-lived) thread only, with a valid fd.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = http_get(addr, "/metrics", &[("accept", crate::http::SCRAPE_ACCEPT)])?;
            crate::http::samples_of(&r)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("scrape thread panicked")))
    })
}
