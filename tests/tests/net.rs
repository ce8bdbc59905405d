//! The receive-steering probes on the real kernel: two hosts in network namespaces
//! (`podstat-test-<pid>-tx`, `podstat-test-<pid>-rx`) joined by a 4-queue veth pair, RPS and RFS
//! on the receiving side, the receiver in a `podstat-test` pod cgroup, TCP traffic from
//! `podstat-test-net`. The agent runs in the receiver's network namespace (so the veth is its
//! device) with a sysfs mounted from there, and is scraped from a thread inside it.
//!
//! Both steering designs are tested: the per-packet one (`--probe.net.per-packet`) with the
//! assertions it always had, and the default read-time one, whose locality is also compared with
//! what the test's own reader gets from the kernel (`SO_INCOMING_CPU`) under two RPS settings.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    CgroupTree, NetPair, Proc, Sample, cpus, find, free_port,
    netns::{enter, scrape_in},
    require_root, test_ids, v1_hierarchies,
};

/// The traffic binary: `PODSTAT_TEST_NET` when set (a copy that a concurrent build of a shared
/// target directory cannot replace mid-run), else the one cargo built for these tests.
fn net_bin() -> String {
    std::env::var("PODSTAT_TEST_NET")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_podstat-test-net").to_owned())
}

/// The agent in the receiver's namespace with the flags every scenario here uses. The read
/// program's duty cycle is the default's ratio (attached 1/8 of the time, counted about 8 times)
/// on a shorter period, so that each 2 s traffic run spans a few windows; a
/// `--probe.net.duty-cycle` in `extra` is used instead.
fn start_agent_in(net: &NetPair, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["--no-collector.cgroup", "--probe.refresh-interval", "200ms"];
    if !extra.contains(&"--probe.net.duty-cycle") {
        args.extend_from_slice(&["--probe.net.duty-cycle", TEST_DUTY_CYCLE]);
    }
    args.extend_from_slice(extra);
    net.start_agent_in_rx(&args)
}

/// `--probe.net.duty-cycle` in these tests.
const TEST_DUTY_CYCLE: &str = "20ms/160ms";

/// The read-time migration tests keep the read program attached and examine every read. Their
/// hopping readers (8 spinning threads that move CPU every 2 reads, on 2 CPUs) delay every
/// other thread on the host: a 20 ms sleep in the root cgroup overslept by up to 850 ms during
/// one such run (2026-12-04), so the duty cycle's windows land where they can and a 2 s run
/// counted 0 or 1 examined reads in two of eight runs (95 MB received in one of them). What
/// these tests check is that migrations are counted; the duty cycle's scaling is what the
/// `SO_INCOMING_CPU` test checks, with the default's sampling, on a pinned reader.
const MIGRATION_SAMPLING: &[&str] = &[
    "--probe.net.duty-cycle",
    "always",
    "--probe.net.sample-every",
    "1",
];

/// The scrape after a traffic run, once the duty cycle's window open at its end has closed:
/// duty-cycled, the locality counts are exported as of the last closed window
/// (`podstat_probe_net_reader_windows_total`). Without that family (per packet, or always
/// attached) the counters are the kernel maps' and the first scrape is the one.
fn scrape_after(net: &NetPair, agent: SocketAddr) -> Vec<Sample> {
    let windows = |s: &[Sample]| {
        find(s, "podstat_probe_net_reader_windows_total", &[])
            .first()
            .map(|x| x.value)
    };
    let first = scrape_in(&net.rx, agent).expect("scrape after");
    let Some(at_end) = windows(&first) else {
        return first;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        thread::sleep(Duration::from_millis(50));
        let s = scrape_in(&net.rx, agent).expect("scrape after");
        if windows(&s).is_some_and(|n| n > at_end) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the duty cycle closed no window in the 10 s after the traffic (windows: {at_end})"
        );
    }
}

fn value(s: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    find(s, name, want).iter().map(|x| x.value).sum()
}

#[derive(Debug)]
struct Outcome {
    packets: f64,
    not_same_cpu: f64,
    migrations: f64,
}

impl Outcome {
    fn share_not_same_cpu(&self) -> f64 {
        self.not_same_cpu / self.packets.max(1.0)
    }

    /// Flow migrations per packet counted (a pinned reader's single migration floor: 1).
    fn migration_rate(&self, floor: f64) -> f64 {
        self.migrations.max(floor) / self.packets.max(1.0)
    }
}

/// Hopping readers migrate their flows, a pinned one does not: at least 20 migrations, at a
/// rate per packet ten times the pinned reader's (counting it as at least 1). Rates, because
/// the sender sends for 2 s and a loaded host delivers fewer packets to the hopping run (a CI
/// run beside other work: 49 migrations in 1 712 packets, against 0 in 12 928).
fn assert_hopping_migrates(pinned: &Outcome, hopping: &Outcome, what: &str) {
    assert!(
        hopping.migrations >= 20.0
            && hopping.migration_rate(0.0) > 10.0 * pinned.migration_rate(1.0),
        "{what}: hopping readers' {} migrations in {} packets are not clearly above the pinned \
         reader's {} in {}",
        hopping.migrations,
        hopping.packets,
        pinned.migrations,
        pinned.packets
    );
}

/// One traffic run: the receiver in `cgroup` reads `flows` flows with `threads` threads in
/// `mode`; the sender, pinned to CPU 0, sends 2 s or 400 MiB. Returns the pod's deltas.
fn scenario(
    net: &NetPair,
    tree: &CgroupTree,
    cgroup: &str,
    agent: SocketAddr,
    labels: &[(&str, &str)],
    (flows, threads, mode): (usize, usize, &str),
) -> Outcome {
    let port = free_port().to_string();
    let before = scrape_in(&net.rx, agent).expect("scrape before");
    let mut rx_cmd = enter(&net.rx);
    rx_cmd.args([
        &net_bin(),
        "recv",
        &port,
        &flows.to_string(),
        &threads.to_string(),
        "8",
        mode,
    ]);
    let mut receiver = Proc(Some(tree.spawn(cgroup, &mut rx_cmd)));
    let sent = enter(&net.tx)
        .args([
            &net_bin(),
            "send",
            &format!("{}:{port}", net.rx_ip()),
            &flows.to_string(),
            "400",
            "2",
            "0",
        ])
        .output()
        .expect("running the sender");
    assert!(
        sent.status.success(),
        "sender failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let status = receiver.stop(0, Duration::from_secs(15));
    assert!(
        status.is_some(),
        "receiver did not end within 15 s after the sender"
    );
    let after = scrape_after(net, agent);
    let d = |name: &str, extra: &[(&str, &str)]| {
        let mut want = labels.to_vec();
        want.extend_from_slice(extra);
        value(&after, name, &want) - value(&before, name, &want)
    };
    let same = d(
        "podstat_net_rx_steering_packets_total",
        &[("locality", "same_cpu")],
    );
    let packets = d("podstat_net_rx_steering_packets_total", &[]);
    let out = Outcome {
        packets,
        not_same_cpu: packets - same,
        migrations: d("podstat_net_flow_migrations_total", &[]),
    };
    eprintln!(
        "{mode} ({flows} flows, {threads} threads): {} {} ({:.1}% not same_cpu)",
        String::from_utf8_lossy(&sent.stdout).trim(),
        String::from_utf8_lossy(&sent.stderr).trim(),
        100.0 * out.share_not_same_cpu()
    );
    eprintln!("  {out:?}");
    out
}

/// UDP datagrams to one reader pinned to CPU 1 in `cgroup`; the pod's deltas.
fn udp_scenario(
    net: &NetPair,
    tree: &CgroupTree,
    cgroup: &str,
    agent: SocketAddr,
    labels: &[(&str, &str)],
) -> Outcome {
    let port = free_port().to_string();
    let before = scrape_in(&net.rx, agent).expect("scrape before");
    let mut rx_cmd = enter(&net.rx);
    rx_cmd.args([&net_bin(), "urecv", &port, "8", "1"]);
    let mut receiver = Proc(Some(tree.spawn(cgroup, &mut rx_cmd)));
    thread::sleep(Duration::from_millis(300));
    let sent = enter(&net.tx)
        .args([
            &net_bin(),
            "usend",
            &format!("{}:{port}", net.rx_ip()),
            "100",
            "2",
            "0",
        ])
        .output()
        .expect("running the UDP sender");
    assert!(
        sent.status.success(),
        "UDP sender failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        receiver.stop(0, Duration::from_secs(15)).is_some(),
        "UDP receiver did not end"
    );
    let after = scrape_after(net, agent);
    let d = |name: &str, extra: &[(&str, &str)]| {
        let mut want = labels.to_vec();
        want.extend_from_slice(extra);
        value(&after, name, &want) - value(&before, name, &want)
    };
    let packets = d("podstat_net_rx_steering_packets_total", &[]);
    let out = Outcome {
        packets,
        not_same_cpu: packets
            - d(
                "podstat_net_rx_steering_packets_total",
                &[("locality", "same_cpu")],
            ),
        migrations: d("podstat_net_flow_migrations_total", &[]),
    };
    eprintln!(
        "udp (1 flow, reader pinned): {} ({:.1}% not same_cpu)\n  {out:?}",
        String::from_utf8_lossy(&sent.stdout).trim(),
        100.0 * out.share_not_same_cpu()
    );
    out
}

/// The per-packet design (`--probe.net.per-packet`): every packet matched to its socket's
/// reader, unconnected UDP included.
#[test]
#[expect(
    clippy::float_cmp,
    reason = "the gauges compared are small integers, exact in f64"
)]
fn steering_locality_and_flow_migrations_per_pod() {
    require_root();
    assert!(
        cpus() >= 2,
        "this test needs at least 2 CPUs to tell CPUs apart"
    );
    let net = NetPair::new(
        &format!("podstat-test-{}", std::process::id()),
        "10.211.7",
        true,
        true,
    );
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-net", std::process::id());
    let (uid, cid) = test_ids(41);
    let cg = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&cg);
    let (_agent, addr) = start_agent_in(&net, &["--probe.net.per-packet"]);
    thread::sleep(Duration::from_millis(500)); // one tracker refresh
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];

    // Scenario 1: one reader pinned to CPU 1, one flow, RFS on.
    let pinned = scenario(&net, &tree, &cg, addr, &labels, (1, 1, "pin1"));
    // Scenario 2: eight threads share four flows and each moves to the other CPU every two
    // reads (RFS chases them; the flow's packets keep landing where the reader just was).
    let hopping = scenario(&net, &tree, &cg, addr, &labels, (4, 8, "hop2"));

    let udp = udp_scenario(&net, &tree, &cg, addr, &labels);

    let s = scrape_in(&net.rx, addr).expect("final scrape");
    let text: Vec<String> = s
        .iter()
        .filter(|x| x.name.starts_with("podstat_net_") || x.name == "podstat_probe_attached")
        .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
        .collect();
    let text = text.join("\n");
    assert!(
        pinned.packets > 100.0,
        "scenario 1 counted only {} packets for the pod:\n{text}",
        pinned.packets
    );
    assert!(
        hopping.packets > 100.0,
        "scenario 2 counted only {} packets for the pod:\n{text}",
        hopping.packets
    );
    // UDP: an unconnected socket has no flow hash of its own, so sk_data_ready counts it.
    assert!(
        udp.packets > 100.0,
        "UDP: only {} datagrams counted for the pod:\n{text}",
        udp.packets
    );
    assert_eq!(udp.migrations, 0.0, "UDP: one pinned reader migrated");
    assert!(
        pinned.share_not_same_cpu() < 0.2,
        "scenario 1 (pinned reader, RFS): {:.1}% of packets not on the reader's CPU, expected most on it",
        100.0 * pinned.share_not_same_cpu()
    );
    assert!(
        pinned.migrations <= 5.0,
        "scenario 1: {} flow migrations for one pinned reader",
        pinned.migrations
    );
    assert!(
        hopping.share_not_same_cpu() > pinned.share_not_same_cpu() + 0.1,
        "scenario 2's not-same_cpu share {:.3} is not clearly above scenario 1's {:.3}",
        hopping.share_not_same_cpu(),
        pinned.share_not_same_cpu()
    );
    assert_hopping_migrates(&pinned, &hopping, "per-packet hooks");

    assert_node_side(&s, &text);
    eprintln!("{text}");
}

/// The per-packet design on the hooks older kernels have (tcp_rcv_space_adjust, tcp_probe),
/// forced on this kernel, with RFS off: no flow hash is recorded for the socket, so the
/// per-socket path counts.
#[test]
#[expect(
    clippy::float_cmp,
    reason = "the gauges compared are small integers, exact in f64"
)]
fn legacy_hooks_count_tcp_steering_without_rfs() {
    require_root();
    let net = NetPair::new(
        &format!("podstat-test-{}", std::process::id()),
        "10.211.7",
        false,
        true,
    );
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-netlegacy", std::process::id());
    let (uid, cid) = test_ids(42);
    let cg = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&cg);
    let (_agent, addr) = start_agent_in(
        &net,
        &["--probe.net.per-packet", "--probe.net.legacy-hooks"],
    );
    thread::sleep(Duration::from_millis(500));
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    let pinned = scenario(&net, &tree, &cg, addr, &labels, (1, 1, "pin1"));
    let hopping = scenario(&net, &tree, &cg, addr, &labels, (2, 4, "hop2"));
    assert!(
        pinned.packets > 100.0 && hopping.packets > 100.0,
        "tcp_probe/tcp_rcv_space_adjust counted too little: {pinned:?} {hopping:?}"
    );
    assert_eq!(pinned.migrations, 0.0, "one pinned reader migrated");
    assert_hopping_migrates(&pinned, &hopping, "legacy hooks");
    let s = scrape_in(&net.rx, addr).expect("scrape");
    for probe in ["net_reader", "net_softirq"] {
        assert_eq!(
            value(&s, "podstat_probe_attached", &[("probe", probe)]),
            1.0,
            "{probe} with legacy hooks"
        );
    }
}

/// The node side, seen from the receiver's namespace: the veth's queues, RPS/RFS settings,
/// ntuple, the packets per queue, and which probes attached.
#[expect(
    clippy::float_cmp,
    reason = "the gauges compared are small integers, exact in f64"
)]
fn assert_node_side(s: &[Sample], text: &str) {
    // Node side: the veth's queues, RPS/RFS settings, ntuple, and the packets per queue.
    let dev = [("device", "podstat-test-b")];
    let ncpu = f64::from(u32::try_from(cpus()).unwrap_or(u32::MAX));
    for q in ["0", "1", "2", "3"] {
        let want = [("device", "podstat-test-b"), ("queue", q)];
        assert_eq!(
            value(s, "podstat_net_rps_cpus", &want),
            ncpu,
            "rps_cpus of queue {q}:\n{text}"
        );
        assert_eq!(
            value(s, "podstat_net_rps_flow_entries", &want),
            4096.0,
            "rps_flow_cnt of queue {q}:\n{text}"
        );
    }
    // net.core.rps_sock_flow_entries exists only in the host's network namespace (init_net),
    // so an agent in the receiver's namespace has none to report (the golden test covers it).
    assert!(
        find(s, "podstat_net_rps_sock_flow_entries", &[]).is_empty(),
        "rps_sock_flow_entries reported from a namespace without the sysctl:\n{text}"
    );
    assert_eq!(
        find(s, "podstat_net_arfs_enabled", &dev).len(),
        1,
        "ntuple state of the veth (ethtool netlink):\n{text}"
    );
    assert!(
        value(s, "podstat_net_rx_queue_packets_total", &dev) > 100.0,
        "no packets counted on podstat-test-b's receive queues:\n{text}"
    );
    for (probe, want) in [
        ("net_reader", 1.0),
        ("net_softirq", 1.0),
        ("net_rx_queue", 1.0),
        ("arfs", 0.0),
    ] {
        assert_eq!(
            value(s, "podstat_probe_attached", &[("probe", probe)]),
            want,
            "probe {probe}:\n{text}"
        );
    }
}

/// The CPU topology the agent exports (`podstat_node_cpu_topology_info`): cpu → (llc, node).
fn topology(s: &[Sample]) -> BTreeMap<i32, (String, String)> {
    find(s, "podstat_node_cpu_topology_info", &[])
        .iter()
        .filter_map(|x| {
            Some((
                x.label("cpu").parse().ok()?,
                (x.label("llc").to_owned(), x.label("numa_node").to_owned()),
            ))
        })
        .collect()
}

/// The locality class (index into `LOCALITIES`) of incoming CPU `i` to reader CPU `r`, as
/// podstat defines it; `None` when the kernel recorded no incoming CPU.
fn class_of(r: i32, i: i32, topo: &BTreeMap<i32, (String, String)>) -> Option<usize> {
    if i < 0 {
        return None;
    }
    if r == i {
        return Some(0);
    }
    Some(match (topo.get(&r), topo.get(&i)) {
        (Some(a), Some(b)) if a.0 == b.0 => 1,
        (Some(a), Some(b)) if a.1 == b.1 => 2,
        _ => 3,
    })
}

const LOCALITIES: [&str; 4] = ["same_cpu", "same_llc", "same_node", "remote_node"];

/// One run of the oracle reader (`podstat-test-net orecv`, pinned to `reader_cpu` in `cgroup`)
/// against a sender pinned to `sender_cpu`: podstat's locality shares for the pod, the reader's
/// own shares from `SO_INCOMING_CPU` after each read, and podstat's count.
fn oracle_run(
    net: &NetPair,
    tree: &CgroupTree,
    cgroup: &str,
    agent: SocketAddr,
    labels: &[(&str, &str)],
    (proto, reader_cpu, sender_cpu): (&str, usize, usize),
) -> ([f64; 4], [f64; 4], f64, f64) {
    let port = free_port().to_string();
    let before = scrape_in(&net.rx, agent).expect("scrape before");
    let topo = topology(&before);
    let mut rx_cmd = enter(&net.rx);
    rx_cmd.args([
        &net_bin(),
        "orecv",
        proto,
        &port,
        "8",
        &reader_cpu.to_string(),
    ]);
    let receiver = tree
        .place(cgroup, &mut rx_cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning the oracle reader");
    thread::sleep(Duration::from_millis(300));
    let dest = format!("{}:{port}", net.rx_ip());
    let cpu = sender_cpu.to_string();
    let mut send = enter(&net.tx);
    // 4000 MB: the 2 s bind, so the traffic is steady over the duty cycle's windows (400 MB
    // over TCP could be sent in a fraction of a second, one burst between two windows). Over
    // UDP, 100 MB ended after about 74 000 datagrams, often well before 2 s, so a run spanned
    // a few windows and its scaled count ranged 0.46-1.19x the reads (a CI run failed at
    // 0.456x).
    if proto == "tcp" {
        send.args([&net_bin(), "send", &dest, "1", "4000", "2", &cpu]);
    } else {
        send.args([&net_bin(), "usend", &dest, "4000", "2", &cpu]);
    }
    let sender = send.output().expect("running the sender");
    assert!(
        sender.status.success(),
        "{proto} sender failed: {}",
        String::from_utf8_lossy(&sender.stderr)
    );
    let out = receiver.wait_with_output().expect("oracle reader");
    assert!(out.status.success(), "oracle reader failed: {out:?}");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut oracle = [0.0; 4];
    let pairs = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pairs="))
        .unwrap_or_else(|| panic!("oracle printed no pairs: {line}"));
    for p in pairs.split(',').filter(|p| !p.is_empty()) {
        let v: Vec<i64> = p.split(':').filter_map(|x| x.parse().ok()).collect();
        let [r, i, n] = v[..] else {
            panic!("bad pair {p} in {line}")
        };
        let (r, i) = (
            i32::try_from(r).expect("cpu"),
            i32::try_from(i).expect("cpu"),
        );
        if let Some(c) = class_of(r, i, &topo) {
            #[expect(clippy::cast_precision_loss, reason = "read counts far below 2^53")]
            let n = n as f64;
            oracle[c] += n;
        }
    }
    let after = scrape_after(net, agent);
    let mut got = [0.0; 4];
    for (c, loc) in LOCALITIES.iter().enumerate() {
        let mut want = labels.to_vec();
        want.push(("locality", loc));
        got[c] = value(&after, "podstat_net_rx_steering_packets_total", &want)
            - value(&before, "podstat_net_rx_steering_packets_total", &want);
    }
    let counted: f64 = got.iter().sum();
    let norm = |v: [f64; 4]| {
        let t: f64 = v.iter().sum::<f64>().max(1.0);
        v.map(|x| x / t)
    };
    eprintln!(
        "{proto}, reader on CPU {reader_cpu}, sender on CPU {sender_cpu}: oracle {line}\n  podstat {got:?}"
    );
    (norm(got), norm(oracle), counted, oracle.iter().sum())
}

/// The read-time design's locality against the kernel's own record, read by the test's reader
/// itself: RFS off, RPS sending every packet first to the reader's CPU, then to another one;
/// TCP and (connected) UDP each time. podstat's share of each locality class must be within
/// 0.15 of the share of the reader's reads whose `SO_INCOMING_CPU` falls in that class, with
/// the read program duty-cycled ([`start_agent_in`]); its scaled count must estimate the
/// reader's own number of reads within a factor of 2.
#[test]
fn read_time_locality_agrees_with_so_incoming_cpu_under_two_rps_settings() {
    require_root();
    assert!(
        cpus() >= 2,
        "this test needs at least 2 CPUs to tell CPUs apart"
    );
    let net = NetPair::new(
        &format!("podstat-test-{}", std::process::id()),
        "10.211.7",
        false,
        true,
    );
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-netoracle", std::process::id());
    let (uid, cid) = test_ids(43);
    let cg = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&cg);
    let (_agent, addr) = start_agent_in(&net, &[]);
    thread::sleep(Duration::from_millis(500));
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    let (reader, other) = (1, 0);
    for (setting, rps_cpu, same) in [
        ("RPS to the reader's CPU", reader, true),
        ("RPS to another CPU", other, false),
    ] {
        net.set_rps_cpus(&[rps_cpu]);
        for proto in ["tcp", "udp"] {
            let (got, want, counted, reads) =
                oracle_run(&net, &tree, &cg, addr, &labels, (proto, reader, other));
            eprintln!(
                "{setting}, {proto}: counted {counted} for {reads} reads (ratio {:.3})",
                counted / reads.max(1.0)
            );
            assert!(
                (0.5..=2.0).contains(&(counted / reads.max(1.0))),
                "{setting}, {proto}: podstat's scaled count {counted} does not estimate the reader's {reads} reads"
            );
            // The setting did what it should (a check of the setup, read from the oracle).
            assert!(
                if same {
                    want[0] >= 0.85
                } else {
                    want[0] <= 0.15
                },
                "{setting}, {proto}: the reader's own SO_INCOMING_CPU shares {want:?} do not show the RPS setting"
            );
            assert!(
                counted > 100.0,
                "{setting}, {proto}: podstat counted only {counted} for the pod"
            );
            for (c, loc) in LOCALITIES.iter().enumerate() {
                assert!(
                    (got[c] - want[c]).abs() <= 0.15,
                    "{setting}, {proto}: podstat's {loc} share {:.3} vs SO_INCOMING_CPU's {:.3} (podstat {got:?}, oracle {want:?})",
                    got[c],
                    want[c]
                );
            }
        }
    }
    // The switching thread kept to the schedule it reports: its windows are 20 ms each (the
    // syscalls and a thread's wake-up on a busy host add a few ms).
    let s = scrape_in(&net.rx, addr).expect("final scrape");
    let total = |name: &str| value(&s, name, &[]);
    let windows = total("podstat_probe_net_reader_windows_total");
    let attached = total("podstat_probe_net_reader_attached_seconds_total");
    let per_window = attached / windows.max(1.0);
    eprintln!("{windows} windows closed, {per_window:.4} s attached in each on average");
    assert!(
        windows >= 20.0 && (0.015..=0.06).contains(&per_window),
        "duty cycle {TEST_DUTY_CYCLE}: {windows} windows, {attached} s attached in all"
    );
}

/// The default read-time design with RFS on: a pinned reader, hopping readers and a connected
/// UDP reader, as in the per-packet test; no packet-side program attached.
#[test]
#[expect(
    clippy::float_cmp,
    reason = "the gauges compared are small integers, exact in f64"
)]
fn read_time_steering_locality_and_flow_migrations_per_pod() {
    require_root();
    assert!(
        cpus() >= 2,
        "this test needs at least 2 CPUs to tell CPUs apart"
    );
    let net = NetPair::new(
        &format!("podstat-test-{}", std::process::id()),
        "10.211.7",
        true,
        true,
    );
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-netread", std::process::id());
    let (uid, cid) = test_ids(44);
    let cg = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&cg);
    let (_agent, addr) = start_agent_in(&net, MIGRATION_SAMPLING);
    thread::sleep(Duration::from_millis(500));
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    let pinned = scenario(&net, &tree, &cg, addr, &labels, (1, 1, "pin1"));
    let hopping = scenario(&net, &tree, &cg, addr, &labels, (4, 8, "hop2"));
    let (_, _, udp, _) = oracle_run(&net, &tree, &cg, addr, &labels, ("udp", 1, 0));
    let s = scrape_in(&net.rx, addr).expect("final scrape");
    let text: Vec<String> = s
        .iter()
        .filter(|x| x.name.starts_with("podstat_net_") || x.name == "podstat_probe_attached")
        .map(|x| format!("{} {:?} {}", x.name, x.labels, x.value))
        .collect();
    let text = text.join("\n");
    assert!(
        pinned.packets > 100.0 && hopping.packets > 100.0,
        "too little counted: {pinned:?} {hopping:?}\n{text}"
    );
    assert!(udp > 100.0, "connected UDP: only {udp} counted:\n{text}");
    assert!(
        pinned.share_not_same_cpu() < 0.2,
        "pinned reader (RFS): {:.1}% not on the reader's CPU",
        100.0 * pinned.share_not_same_cpu()
    );
    assert!(
        pinned.migrations <= 5.0,
        "{} flow migrations for one pinned reader",
        pinned.migrations
    );
    assert!(
        hopping.share_not_same_cpu() > pinned.share_not_same_cpu() + 0.1,
        "hopping readers' not-same_cpu share {:.3} is not clearly above the pinned reader's {:.3}",
        hopping.share_not_same_cpu(),
        pinned.share_not_same_cpu()
    );
    assert_hopping_migrates(&pinned, &hopping, "read time");
    assert_eq!(
        value(&s, "podstat_probe_attached", &[("probe", "net_reader")]),
        1.0,
        "net_reader:\n{text}"
    );
    for probe in ["net_softirq", "net_rx_queue"] {
        assert!(
            find(&s, "podstat_probe_attached", &[("probe", probe)]).is_empty(),
            "{probe} is not needed in the read-time design, yet exported:\n{text}"
        );
    }
    eprintln!("{text}");
}

/// The read-time design on the hook older kernels have (tcp_rcv_space_adjust, TCP only), forced
/// on this kernel, RFS off.
#[test]
#[expect(
    clippy::float_cmp,
    reason = "the gauges compared are small integers, exact in f64"
)]
fn read_time_legacy_hook_counts_tcp_steering() {
    require_root();
    let net = NetPair::new(
        &format!("podstat-test-{}", std::process::id()),
        "10.211.7",
        false,
        true,
    );
    let v1 = v1_hierarchies();
    let root = format!("podstat-test-{}-netreadlegacy", std::process::id());
    let (uid, cid) = test_ids(45);
    let cg = format!("{root}/kubepods/burstable/pod{uid}/{cid}");
    let mut tree = CgroupTree::new(&[&v1.cpu, &v1.cpuacct]);
    tree.mkdir(&cg);
    let mut args = vec!["--probe.net.legacy-hooks"];
    args.extend_from_slice(MIGRATION_SAMPLING);
    let (_agent, addr) = start_agent_in(&net, &args);
    thread::sleep(Duration::from_millis(500));
    let labels = [("pod_uid", uid.as_str()), ("container_id", cid.as_str())];
    let pinned = scenario(&net, &tree, &cg, addr, &labels, (1, 1, "pin1"));
    let hopping = scenario(&net, &tree, &cg, addr, &labels, (2, 4, "hop2"));
    assert!(
        pinned.packets > 100.0 && hopping.packets > 100.0,
        "tcp_rcv_space_adjust counted too little: {pinned:?} {hopping:?}"
    );
    assert!(
        pinned.migrations <= 5.0,
        "one pinned reader migrated {} times",
        pinned.migrations
    );
    assert_hopping_migrates(&pinned, &hopping, "read-time legacy hook");
    let s = scrape_in(&net.rx, addr).expect("scrape");
    let reader = find(&s, "podstat_probe_attached", &[("probe", "net_reader")]);
    assert!(
        reader
            .iter()
            .any(|x| x.value == 1.0 && x.label("via").starts_with("tp_btf/tcp_rcv_space_adjust")),
        "net_reader not on tcp_rcv_space_adjust: {reader:?}"
    );
}
