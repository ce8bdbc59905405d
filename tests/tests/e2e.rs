//! End to end, as a cluster would run it: real pods from containerd's CRI (runc, cgroupfs
//! driver, CPU quotas), the podstat agent naming them through the CRI provider and serving
//! over TLS with basic auth (`--web.config.file`), two real Prometheus servers scraping it
//! every 2 s over HTTPS (`tls_config.ca_file`, `basic_auth`) and evaluating the shipped rules
//! (one with native histograms on, which scrapes protobuf; one without, which scrapes
//! OpenMetrics text with classic buckets), and every query of the shipped Grafana dashboard
//! asked of both. Plain-HTTP scrapes are the other tests' (endpoint.rs, agent.rs, …).
//!
//! Everything is torn down by guards (pods, containerd and its shims, Prometheus, the agent,
//! cgroups, directories), on success, failure and panic.

use std::{
    fs,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use podstat_tests::{
    cri::{Containerd, PodSpec},
    dashboard, free_port,
    prometheus::{Prometheus, label},
    require_root, start_secure_agent,
    tls::Secure,
};
use serde_json::Value;

const NAMESPACE: &str = "podstat-e2e";
const ALERT: &str = "PodstatContainerCPUThrottled";

/// A uid in Kubernetes' format, unique to this run.
fn uid(n: u32) -> String {
    let pid = std::process::id();
    format!("{pid:08x}-e2e0-4000-8000-{n:012x}")
}

#[test]
fn cri_pods_prometheus_alert_and_dashboard() {
    require_root();
    let mut ctr = Containerd::start();
    let busy_uid = uid(1);
    let idle_uid = uid(2);
    // 4 busy shells against 0.2 cores: throttled for most of every period. It also reads a
    // loopback TCP stream it sends itself (host network), for the steering panels.
    let port = free_port();
    let burn = format!(
        "for i in 1 2 3 4; do (while :; do :; done) & done; \
         (while :; do busybox nc -l -p {port} > /dev/null; done) & \
         (sleep 1; while :; do busybox yes podstat-e2e | busybox nc 127.0.0.1 {port}; sleep 1; done) & \
         wait"
    );
    let (_, burner_cid) = ctr.run_pod(&PodSpec {
        namespace: NAMESPACE,
        name: "burner",
        uid: &busy_uid,
        container: "burn",
        quota_us: 20_000,
        script: &burn,
    });
    // Idle with a tiny limit (0.01 cores): wakes once a second for a moment.
    let (_, idler_cid) = ctr.run_pod(&PodSpec {
        namespace: NAMESPACE,
        name: "idler",
        uid: &idle_uid,
        container: "idle",
        quota_us: 1_000,
        script: "while :; do sleep 1; done",
    });
    // One busy thread at a 1-core limit (runnable all the time, never throttled): a neighbour
    // the burner's waiting tasks wait behind, so the "waiting time by neighbour pod" panel has
    // data. Without it the burner waited only behind its own tasks and the system in some runs;
    // at a 0.5-core limit the neighbour, throttled half of each period, still missed once.
    let neighbour_uid = uid(3);
    let _ = ctr.run_pod(&PodSpec {
        namespace: NAMESPACE,
        name: "neighbour",
        uid: &neighbour_uid,
        container: "spin",
        quota_us: 100_000,
        script: "while :; do :; done",
    });
    let socket = ctr.socket.display().to_string();
    let secure = Secure::new("e2e-web");
    let (_agent, agent_addr) = start_secure_agent(
        &secure,
        &[
            "--metadata.provider",
            "cri",
            "--metadata.cri-socket",
            &socket,
            "--metadata.refresh-interval",
            "5s",
            "--probe.refresh-interval",
            "1s",
        ],
    );
    // Both at once: they scrape the same agent through the same minutes.
    let native = Prometheus::start_with(agent_addr, true, Some(&secure));
    let classic = Prometheus::start_with(agent_addr, false, Some(&secure));
    for (prom, kind) in [(&native, "native"), (&classic, "classic")] {
        check(prom, kind, &secure, agent_addr, &burner_cid, &idler_cid);
    }
    drop(native);
    drop(classic);
    drop(ctr);
}

/// What each Prometheus must see: the CRI names, its kind of histograms, the throttling alert
/// for the busy pod and none for the idle one, and data for every dashboard query.
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn check(
    prom: &Prometheus,
    kind: &str,
    secure: &Secure,
    agent_addr: SocketAddr,
    burner_cid: &str,
    idler_cid: &str,
) {
    // The agent names the pods from CRI.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let named = prom.query(&format!(
            "podstat_cpu_usage_seconds_total{{namespace=\"{NAMESPACE}\",container!=\"\"}}"
        ));
        let pods: Vec<(&str, &str, &str)> = named
            .iter()
            .map(|v| {
                (
                    label(v, "pod"),
                    label(v, "container"),
                    label(v, "container_id"),
                )
            })
            .collect();
        if pods.contains(&("burner", "burn", burner_cid))
            && pods.contains(&("idler", "idle", idler_cid))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no CRI-named series for both pods after 30 s: {pods:?}\nup: {:?}\nprometheus log:\n{}\nagent scrape:\n{}",
            prom.query("up"),
            prom.log(),
            secure
                .get(agent_addr, "/metrics", &[])
                .map_or_else(|e| e.to_string(), |r| r.text())
        );
        thread::sleep(Duration::from_secs(1));
    }
    // Native histograms from protobuf, or classic buckets from text; not both.
    let hist = "podstat_runqueue_latency_seconds{pod=\"burner\",container=\"burn\"}";
    let bucket = "podstat_runqueue_latency_seconds_bucket{pod=\"burner\",container=\"burn\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (h, b) = (prom.query(hist), prom.query(bucket));
        let ok = if kind == "native" {
            !h.is_empty() && h.iter().all(|v| v.get("histogram").is_some()) && b.is_empty()
        } else {
            h.is_empty() && !b.is_empty()
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} Prometheus: {hist} = {h:?}, {bucket} = {} series",
            b.len()
        );
        thread::sleep(Duration::from_secs(1));
    }

    // No series for the sandboxes (CRI names them).
    let sandboxes = prom.query(&format!(
        "podstat_cpu_usage_seconds_total{{namespace=\"{NAMESPACE}\",container=\"\",container_id!=\"\"}}"
    ));
    assert!(
        sandboxes.is_empty(),
        "sandbox containers exported: {sandboxes:?}"
    );

    // The throttling alert fires for the busy container, named from CRI, and not for the idle one.
    // The rules' 5-minute windows fill from Prometheus' start, so a share of wall time reads
    // low at first (rate divides by the window): on a loaded machine, where the busy pod gets
    // less of its quota, it takes longer to cross the threshold.
    let deadline = Instant::now() + Duration::from_mins(4);
    let firing = loop {
        let firing = prom.firing(ALERT);
        if firing
            .iter()
            .any(|v| label(v, "pod") == "burner" && label(v, "namespace") == NAMESPACE)
        {
            break firing;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} Prometheus: {ALERT} did not fire for podstat-e2e/burner within 240 s; alerts: {:?}\nburner wall share now: {:?}, eBPF: {:?}, cgroup: {:?}\nburner wall share (min over 2m): {:?}\nup (min over 2m): {:?}\nscrape duration (max over 2m): {:?}\nprometheus log:\n{}",
            prom.query(&format!("ALERTS{{alertname=\"{ALERT}\",pod=\"burner\"}}")),
            prom.query("podstat:cpu_throttled_wall_share:rate5m{pod=\"burner\",container!=\"\"}"),
            prom.query("podstat:cpu_throttled_wall_share_ebpf:rate5m{pod=\"burner\",container!=\"\"}"),
            prom.query("podstat:cpu_throttled_wall_share_cgroup:rate5m{pod=\"burner\",container!=\"\"}"),
            prom.query("min_over_time(podstat:cpu_throttled_wall_share:rate5m{pod=\"burner\",container!=\"\"}[2m])"),
            prom.query("min_over_time(up[2m])"),
            prom.query("max_over_time(scrape_duration_seconds[2m])"),
            prom.log()
        );
        thread::sleep(Duration::from_secs(2));
    };
    let burner = firing
        .iter()
        .find(|v| label(v, "pod") == "burner")
        .expect("burner alert");
    assert_eq!(label(burner, "container"), "burn", "{burner}");
    // Let the idle pod have the same time to (wrongly) trip it: the rules' windows and the
    // shortened `for:` have run their course once the busy one fired.
    thread::sleep(Duration::from_secs(10));
    let idle_alerts: Vec<Value> = prom
        .query("ALERTS")
        .into_iter()
        .filter(|v| label(v, "pod") == "idler")
        .collect();
    let idle_stats = prom.query("rate(podstat_cpu_throttled_periods_total{pod=\"idler\",container=\"idle\"}[1m]) / rate(podstat_cpu_periods_total{pod=\"idler\",container=\"idle\"}[1m])");
    eprintln!("idle pod: throttled periods / periods = {idle_stats:?}");
    assert!(
        idle_alerts.is_empty(),
        "{kind} Prometheus: alerts for the idle pod: {idle_alerts:?}"
    );

    // Every dashboard query returns data.
    let json = fs::read_to_string(dashboard::dashboard_path()).expect("reading the dashboard");
    let instance = agent_addr.to_string();
    let queries = dashboard::dashboard_queries(
        &json,
        &[
            ("datasource", "prometheus"),
            ("node", &instance),
            ("instance", &instance),
            ("namespace", NAMESPACE),
            ("pod", "burner"),
            ("container", "burn"),
        ],
    );
    assert!(!queries.is_empty(), "the dashboard has no queries");
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        if prom.query(expr).is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    eprintln!(
        "{kind} Prometheus, dashboard: {} of {} queries returned data",
        queries.len() - empty.len(),
        queries.len()
    );
    assert!(
        empty.is_empty(),
        "{kind} Prometheus: dashboard queries with no data:\n{}",
        empty.join("\n")
    );
}
