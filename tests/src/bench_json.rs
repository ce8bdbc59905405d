//! What the bench scenarios (`podstat-test-bench`, `podstat-test-bench-net`) print on stdout,
//! one JSON line per part (`{"setup": …}`, `{"scrape": …}`, `{"probe": …}`, `{"e2e": …}`,
//! `{"net": …}`), and what `cargo xtask bench` and `bench-net` read to render their reports.
//! Only serde here: xtask compiles this same file (`#[path]`), so the format is written once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the bench ran, for the report's prose.
#[derive(Serialize, Deserialize)]
pub struct Setup {
    pub containers_per_pod: usize,
    pub warmup: usize,
    pub e2e_rounds: usize,
    pub e2e_secs: u64,
    pub probe_refresh: String,
    pub tracker_wait_secs: f64,
}

/// Nearest-rank median and p99 of a series of timings.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct Summary {
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// 1. Scrape cost.
#[derive(Serialize, Deserialize)]
pub struct ScrapeResult {
    pub pods: usize,
    pub created_containers: usize,
    pub with_quota: usize,
    pub stat_files: usize,
    pub agent: Summary,
    pub floor: Summary,
    /// A plain loop over every file the collector reads on each scrape here (v1: cpu.stat and
    /// cpuacct.usage per cgroup): the I/O floor of this host's layout.
    pub floor_same: Summary,
    pub body_bytes: usize,
    /// The same scrape in OpenMetrics text and in protobuf (native histograms), bytes.
    #[serde(default)]
    pub openmetrics_bytes: usize,
    #[serde(default)]
    pub protobuf_bytes: usize,
    /// Lines mentioning `podstat_cpu_periods_total` (what `grep -c` counts).
    pub periods_lines: usize,
    /// Bench containers with a `podstat_cpu_periods_total` series.
    pub matched_containers: usize,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The agent's own `podstat_collector_duration_seconds{collector="cgroup"}`, last scrape.
    pub collect_ms: Option<f64>,
}

/// The scrape flood: `scrapers` concurrent clients scraping as fast as they are answered.
#[derive(Serialize, Deserialize)]
pub struct FloodRow {
    /// Which agent: `window 1s`, `window 0`, or `baseline` (another binary, its defaults).
    pub agent: String,
    pub scrapers: usize,
    pub secs: f64,
    /// Scrapes answered 200.
    pub answered: usize,
    /// Scrapes answered otherwise, or not at all.
    pub failed: usize,
    /// The agent's CPU time over the flood, divided by its wall time.
    pub cpu_cores: f64,
    pub latency: Summary,
}

/// The scrape flood over `pods` x 3 container cgroups.
#[derive(Serialize, Deserialize)]
pub struct FloodResult {
    pub pods: usize,
    pub containers: usize,
    pub rows: Vec<FloodRow>,
}

/// Pod churn: the agent's RSS as container cgroups are created and removed.
#[derive(Serialize, Deserialize)]
pub struct ChurnResult {
    /// (container cgroups churned so far, VmRSS KiB).
    pub rss: Vec<(usize, u64)>,
    pub leftover_series: usize,
    pub maps_before: BTreeMap<String, usize>,
    pub maps_after: BTreeMap<String, usize>,
}

/// One program's deltas over a storm.
#[derive(Serialize, Deserialize)]
pub struct ProbeRow {
    /// `podstat`, `runqlat` or `floor`.
    pub owner: String,
    /// The owner's `sched_switch` program.
    pub switch: bool,
    pub id: u64,
    pub name: String,
    pub events: u64,
    pub run_ns: u64,
}

/// One storm with podstat, runqlat and the floor attached: every program of each.
#[derive(Serialize, Deserialize)]
pub struct StormRows {
    pub secs: u64,
    pub rows: Vec<ProbeRow>,
    /// stress-ng's bogo-ops/s, when it printed them.
    pub storm_ops: Option<f64>,
}

impl StormRows {
    /// Programs of `owner` that ran during the storm.
    pub fn ran<'a>(&'a self, owner: &'a str) -> impl Iterator<Item = &'a ProbeRow> + 'a {
        self.rows
            .iter()
            .filter(move |x| x.owner == owner && x.events > 0)
    }

    /// `owner`'s `sched_switch` program: (run time, events), the events being the context
    /// switches of the storm.
    pub fn switch(&self, owner: &str) -> Option<(u64, u64)> {
        self.ran(owner)
            .find(|x| x.switch)
            .map(|x| (x.run_ns, x.events))
    }
}

/// 2. Per-event probe cost.
#[derive(Serialize, Deserialize)]
pub struct ProbeResult {
    /// The agent's `podstat_probe_attached{probe="sched_switch"…}` line: how it measured.
    pub attach: String,
    pub pod: StormRows,
    pub host: StormRows,
    /// `podstat_runqueue_latency_seconds_count` of the storm pod's container after the storm.
    pub runq_count: f64,
    pub container_id: String,
}

/// 3. End-to-end cost: bogo-ops/s of each round, per arm.
#[derive(Serialize, Deserialize, Default)]
pub struct E2eResult {
    pub off: Vec<f64>,
    pub floor: Vec<f64>,
    pub podstat: Vec<f64>,
    /// The agent's own CPU time during each podstat storm, in ms.
    pub agent_cpu_ms: Vec<f64>,
    pub runqlat: Vec<f64>,
}

/// One net program's totals over the runs with the agent.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct ProgTotals {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// `bench-net`: one iperf3 run.
#[derive(Serialize, Deserialize, Clone)]
pub struct NetRun {
    /// `udp64` (64-byte UDP datagrams) or `tcp1400` (1400-byte TCP segments).
    pub workload: String,
    /// `none` (no programs), `floor` (an empty `sock_recv_length` program), `read` (the agent,
    /// read-time steering, duty-cycled), `read_always` (the same always attached) or
    /// `per_packet` (the agent with `--probe.net.per-packet`).
    pub arm: String,
    pub round: usize,
    /// Whether `kernel.bpf_stats_enabled` was on (the cost runs; throughput runs have it off).
    pub stats: bool,
    pub secs: f64,
    /// Packets the receiving veth counted (`rx_packets` delta).
    pub rx_packets: u64,
    /// Packets delivered to the reader: UDP datagrams iperf3 received; TCP segments
    /// (= `rx_packets`, TCP delivers what arrives).
    pub delivered: f64,
    /// Received bits per second (iperf3).
    pub bits_per_second: f64,
    /// The arm's programs over the run (cost runs only), by program name.
    pub programs: BTreeMap<String, ProgTotals>,
}

/// `bench-net`: every run of the interleaved rounds.
#[derive(Serialize, Deserialize)]
pub struct NetResult {
    /// `--probe.net.sample-every` of the read-time agent.
    pub sample_every: u32,
    pub runs: Vec<NetRun>,
}

/// `podstat-test-bucketing`: ns per run of each bucketing program (`bucketing_floor`,
/// `bucketing_native`, `bucketing_chain`) on each input set, one figure per round.
#[derive(Serialize, Deserialize)]
pub struct BucketingResult {
    /// Runs per timed test run.
    pub repeat: u32,
    /// Values in the slot check that the kernel's slots matched userspace's, per program.
    pub checked: BTreeMap<String, usize>,
    pub sets: Vec<BucketingSet>,
}

/// One input set of the bucketing microbenchmark.
#[derive(Serialize, Deserialize)]
pub struct BucketingSet {
    pub name: String,
    /// What the durations stand for.
    pub what: String,
    /// Program name → ns per run in each round, in round order.
    pub ns: BTreeMap<String, Vec<f64>>,
}
