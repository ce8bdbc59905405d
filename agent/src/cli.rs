//! The command line. Collector switches (`--collector.<name>`, `--no-collector.<name>`) are
//! generated from [`crate::collector::COLLECTORS`].

use std::net::SocketAddr;

use clap::{
    Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches as _, Parser, Subcommand, ValueEnum,
};

use crate::{Paths, collector};

#[derive(Debug, Parser)]
#[command(
    name = "podstat",
    version,
    about = "Per-pod CPU throttling, run-queue latency and RX steering metrics for Kubernetes nodes",
    long_about = "podstat runs on every node (as a DaemonSet) and tells, per pod and container, why CPU time \
did not turn into throughput: CFS throttling, run-queue waiting, noisy neighbours and NIC receive steering. \
It reads cgroup files and eBPF aggregates at scrape time and serves them on a Prometheus endpoint.\n\n\
Start with `podstat check` to see what this host supports, then run `podstat agent`."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon: load the probes and serve /metrics until SIGTERM or Ctrl-C.
    Agent(AgentArgs),
    /// Report what this host supports (cgroup layout, controllers, BTF, BPF permission) and
    /// which collectors and probes would run, each with the reason. Exits 0 if everything
    /// enabled would run, 1 if something enabled would not. The probes are loaded for real,
    /// with their maps sized for a few cgroups (the `--probe.max-*` sizes are capacity, not
    /// support): run in the agent's pod, check shares the agent's memory limit.
    Check(CheckArgs),
    /// Live view of this node's pods and containers, refreshed every second: CPU used against
    /// the limit, throttled share of wall time, throttle pause p99, how far into the period
    /// the quota ran out (p50), threads runnable at throttle, run-queue latency p99,
    /// preemptions by other pods per second, and receive-steering locality.
    ///
    /// Keys (listed on screen): t throttled, c cpu, r run-queue p99, p preemptions, n name
    /// (sort); / filter by namespace, pod, container, uid or id (`ns/` for one namespace);
    /// Esc clears the filter; q quits. Reads this host's kernel (loads the probes itself when
    /// root) or a running agent (--from). `--once` prints one snapshot for scripts.
    Top(TopArgs),
    /// Observe one pod (by name, namespace/name, uid or cgroup path) for --duration, then
    /// explain in plain language, with a number for each claim, whether it is slow because of
    /// CPU throttling, noisy neighbours or receive steering, and what to change. Says so when
    /// nothing is wrong.
    #[command(long_about = crate::view::explain::long_about())]
    Explain(ExplainArgs),
}

/// Where the operator views read from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read a running agent's metrics (e.g. http://127.0.0.1:9977/metrics) instead of loading
    /// probes here: no second set of probes on a node that runs the DaemonSet.
    /// https:// needs --from.ca-file or --from.insecure-skip-verify; the port defaults to the
    /// scheme's (80, 443) and the path to /metrics.
    #[arg(long = "from", value_name = "URL", env = "PODSTAT_FROM")]
    pub from: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub host: HostArgs,
}

/// The `--help` heading of [`RemoteArgs`].
const REMOTE: &str = "Reading a running agent (--from)";

/// How `--from` reaches an agent served with `--web.config.file` (TLS, client certificates,
/// basic auth).
#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// PEM bundle of the CAs that sign the agent's certificate, for an https:// --from (the
    /// system's CAs: /etc/ssl/certs/ca-certificates.crt on Debian).
    #[arg(
        help_heading = REMOTE,
        long = "from.ca-file",
        value_name = "FILE",
        env = "PODSTAT_FROM_CA_FILE",
        requires = "from"
    )]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to show the agent, for a web config with client_auth_type
    /// RequireAndVerifyClientCert; with --from.key-file.
    #[arg(
        help_heading = REMOTE,
        long = "from.cert-file",
        value_name = "FILE",
        env = "PODSTAT_FROM_CERT_FILE",
        requires_all = ["from", "key_file"]
    )]
    pub cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of --from.cert-file.
    #[arg(
        help_heading = REMOTE,
        long = "from.key-file",
        value_name = "FILE",
        env = "PODSTAT_FROM_KEY_FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<std::path::PathBuf>,
    /// Do not verify the agent's certificate (the connection is encrypted, but anyone on the
    /// path can pose as the agent).
    #[arg(
        help_heading = REMOTE,
        long = "from.insecure-skip-verify",
        requires = "from",
        conflicts_with = "ca_file"
    )]
    pub insecure_skip_verify: bool,
    /// Basic-auth user for an agent whose web config has basic_auth_users. The password is
    /// read from --from.password-file, else from the environment variable
    /// PODSTAT_FROM_PASSWORD; never from the command line.
    #[arg(
        help_heading = REMOTE,
        long = "from.username",
        value_name = "USER",
        env = "PODSTAT_FROM_USERNAME",
        requires = "from"
    )]
    pub username: Option<String>,
    /// File holding the --from.username password (one line; a trailing newline is ignored).
    #[arg(
        help_heading = REMOTE,
        long = "from.password-file",
        value_name = "FILE",
        env = "PODSTAT_FROM_PASSWORD_FILE",
        requires = "username"
    )]
    pub password_file: Option<std::path::PathBuf>,
}

/// The host's paths, the cgroup scan, the probes and the metadata provider: the one argument
/// group `agent`, `check`, `top` and `explain` share.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub paths: Paths,
    #[command(flatten)]
    pub cgroup: collector::cgroup::Options,
    #[command(flatten)]
    pub sched: collector::sched::Options,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub metadata: crate::metadata::Options,
}

impl HostArgs {
    /// The agent's configuration for `enabled`, with the probes those collectors want when
    /// `load_probes`, and names from `metadata`.
    pub fn config(
        &self,
        enabled: &[&'static str],
        load_probes: bool,
        metadata: std::sync::Arc<crate::metadata::Store>,
    ) -> crate::agent::Config {
        crate::agent::Config {
            enabled: enabled.to_vec(),
            paths: self.paths.clone(),
            cgroup: self.cgroup.clone(),
            sched: self.sched.clone(),
            probes: load_probes.then(|| self.probe.wanted(enabled)),
            refresh_interval: self.probe.refresh_interval,
            metadata,
            drop_privileges: false,
        }
    }
}

/// Output of `top --once` and `explain`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ViewOutput {
    /// Plain text (a table for top, sentences for explain).
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print one snapshot (measured over --interval) and exit, for scripts.
    #[arg(long)]
    pub once: bool,
    /// Format of --once.
    #[arg(long = "output", value_enum, default_value_t = ViewOutput::Table)]
    pub output: ViewOutput,
    /// Initial sort (keys t, c, r, p, n change it on screen).
    #[arg(long, value_enum, default_value_t = crate::view::top::SortKey::Throttled)]
    pub sort: crate::view::top::SortKey,
    /// Only pods of this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Initial filter: substring of namespace, pod, container, pod uid or container id.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Refresh interval.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::util::parse_duration)]
    pub interval: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pod: its name (`pod` or `namespace/pod`, when a metadata provider names pods), its
    /// uid (or a unique prefix), or a pod or container cgroup path.
    #[arg(value_name = "POD|UID|CGROUP")]
    pub target: String,
    #[command(flatten)]
    pub source: SourceArgs,
    /// How long to observe before diagnosing.
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "10s", value_parser = crate::util::parse_duration)]
    pub duration: std::time::Duration,
    /// Text, or the same content as JSON.
    #[arg(long = "output", value_enum, default_value_t = ViewOutput::Table)]
    pub output: ViewOutput,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log level or tracing filter directive (e.g. `debug`, `podstat=debug,info`).
    #[arg(
        long = "log.level",
        global = true,
        default_value = "info",
        env = "PODSTAT_LOG"
    )]
    pub level: String,
    /// Log format: human-readable text, or one JSON object per line for log shippers.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(
        long = "web.listen-address",
        value_name = "ADDR",
        default_value = "0.0.0.0:9977",
        env = "PODSTAT_LISTEN_ADDRESS"
    )]
    pub listen: SocketAddr,
    /// Scrapes that arrive while a collection runs, or within this long after it ended, get
    /// that collection's result (encoded once per format and encoding): an HA pair of
    /// Prometheus servers costs one collection, and no client can make the agent collect back
    /// to back. `0` disables the window (scrapes that arrive during a collection still share it).
    #[arg(long = "web.scrape-window", value_name = "DURATION", default_value = "1s", value_parser = crate::util::parse_duration_or_zero)]
    pub scrape_window: std::time::Duration,
    /// Scrapes of /metrics served at once; more are answered 503. `0`: no limit.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub max_requests: usize,
    /// HTTP connections open at once; more are closed as soon as they are accepted. Keeps
    /// file descriptors for the collectors however many clients connect. `0`: no limit.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = 512)]
    pub max_connections: usize,
    /// TLS (server certificate, reloaded when it changes; client certificates) and basic auth
    /// for every endpoint, in the exporter-toolkit format node_exporter reads (see
    /// docs/deploying.md). Unknown keys are refused at start.
    #[arg(
        long = "web.config.file",
        value_name = "FILE",
        env = "PODSTAT_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<std::path::PathBuf>,
    /// With --web.config.file: /healthz and /readyz answer without a password or a client
    /// certificate (for the kubelet's probes); /metrics still needs them.
    #[arg(long = "web.health-open", requires = "web_config_file")]
    pub health_open: bool,
    /// Histograms in the protobuf exposition (what Prometheus asks for with native histograms
    /// on): `native` (one series each, every kernel bucket), `classic` (the buckets the text
    /// formats carry) or `both`. The text formats always carry the classic buckets.
    #[arg(long = "web.histograms", value_name = "KIND", value_enum, default_value_t = crate::exposition::Histograms::Native)]
    pub histograms: crate::exposition::Histograms,
    #[command(flatten)]
    pub host: HostArgs,
}

impl AgentArgs {
    /// How the endpoint is served, with the web config read and checked.
    pub fn server_options(
        &self,
    ) -> Result<crate::server::Options, crate::webconfig::WebConfigError> {
        let web = self
            .web_config_file
            .as_deref()
            .map(|p| crate::webconfig::WebConfig::load(p, self.health_open))
            .transpose()?;
        Ok(crate::server::Options {
            scrape_window: self.scrape_window,
            max_requests: self.max_requests,
            max_connections: self.max_connections,
            web: web.map(std::sync::Arc::new),
            health_open: self.health_open,
        })
    }
}

/// Sizing and refresh of the eBPF probes.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Pod and container cgroups the probes track at once; sizes the per-cgroup eBPF maps
    /// (about 2.1 KiB of kernel memory per cgroup, mostly its histograms). Beyond it, cgroups are not measured and
    /// podstat_bpf_map_full_total{map="known"} counts them.
    #[arg(long = "probe.max-cgroups", value_name = "N", default_value_t = podstat_common::kernel::DEFAULT_MAX_CGROUPS)]
    pub max_cgroups: u32,
    /// Threads in pod cgroups the run-queue probe keeps state for: in wakeup mode every thread
    /// from its first wait until it exits (48 bytes each; beyond it,
    /// podstat_bpf_map_full_total{map="wait_start"} counts); in sched_info mode only threads
    /// switched out while their pod is throttled (an LRU map: the oldest records make room).
    #[arg(long = "probe.max-waiting", value_name = "N", default_value_t = podstat_common::sched::DEFAULT_MAX_WAITING)]
    pub max_waiting: u32,
    /// Pairs of (preempted cgroup, preempting cgroup) from different pods the scheduler probe
    /// counts at once, to name the pods that take CPU from a pod (24 bytes each). Beyond it,
    /// podstat_bpf_map_full_total{map="preempt_pairs"} counts the preemptions not attributed.
    #[arg(long = "probe.max-preempt-pairs", value_name = "N", default_value_t = podstat_common::sched::DEFAULT_MAX_PREEMPT_PAIRS)]
    pub max_preempt_pairs: u32,
    /// How the run-queue latency probe measures: `sched-info` reads the kernel's own
    /// `task_struct.sched_info.last_queued` in sched_switch alone (CONFIG_SCHED_INFO, on every
    /// distribution kernel); `wakeup` adds sched_wakeup, sched_wakeup_new,
    /// sched_process_exit and sched_migrate_task programs and a per-task map; `auto` takes sched-info when the
    /// kernel has it. `podstat check` says which runs.
    #[arg(
        long = "probe.runqueue-mode",
        value_name = "MODE",
        default_value = "auto"
    )]
    pub runqueue_mode: crate::probe::RunqueueMode,
    /// How often the probes' list of pod cgroups is refreshed (new pods are measured from the
    /// next refresh on; a removed pod's series go at the next one). E.g. `5s`, `500ms`.
    #[arg(long = "probe.refresh-interval", value_name = "DURATION", default_value = "5s", value_parser = crate::util::parse_duration)]
    pub refresh_interval: std::time::Duration,
    /// Attach the steering probes to the hooks older kernels have (tcp_rcv_space_adjust,
    /// tcp_probe: TCP only) even where sock_recv_length and sk_data_ready (6.3+) exist.
    #[arg(long = "probe.net.legacy-hooks")]
    pub net_legacy_hooks: bool,
    /// The per-packet steering design, for deep dives: programs on every received packet
    /// (netif_receive_skb, sk_data_ready or tcp_probe) match each packet to its socket's
    /// reader, and count packets per receive queue and CPU. It costs a few hundred ns per
    /// packet on the CPUs doing the softirq work (docs/performance.md); off by default, when
    /// steering is read at read time from the socket's sk_incoming_cpu and queue counts come
    /// from the driver's queue statistics.
    #[arg(long = "probe.net.per-packet")]
    pub net_per_packet: bool,
    /// Read-time steering design: examine 1 read in N (per CPU, pseudo-random) and count it N
    /// times; a power of two, 1 examines every read. Ignored with --probe.net.per-packet.
    #[arg(long = "probe.net.sample-every", value_name = "N", default_value_t = podstat_common::net::DEFAULT_SAMPLE_EVERY, value_parser = parse_sample_every)]
    pub net_sample_every: u32,
    /// Read-time steering design: keep the read program attached for ON out of every EVERY
    /// (ON/EVERY, e.g. 500ms/4s; EVERY at most 64 times ON) and detach it in between, when reads
    /// cost nothing at all; each window's locality counts are extrapolated over the time it
    /// stands for, as timed (EVERY/ON on schedule), and exported when it closes. `always` keeps
    /// it attached. Ignored with --probe.net.per-packet.
    #[arg(long = "probe.net.duty-cycle", value_name = "ON/EVERY", default_value = crate::probe::duty::DEFAULT_DUTY_CYCLE)]
    pub net_duty_cycle: crate::probe::duty::DutyCycle,
}

/// Why a `--probe.net.sample-every` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a power of two from 1 to 65536")]
pub struct SampleEveryError(String);

/// `--probe.net.sample-every`: a power of two from 1 to 65536.
fn parse_sample_every(s: &str) -> Result<u32, SampleEveryError> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| n.is_power_of_two() && *n <= 65536)
        .ok_or_else(|| SampleEveryError(s.to_owned()))
}

impl ProbeArgs {
    /// What to load, given the enabled collectors.
    pub fn wanted(&self, enabled: &[&'static str]) -> crate::probe::Wanted {
        crate::probe::Wanted {
            sched: enabled.contains(&"sched"),
            throttle: enabled.contains(&"throttle"),
            net: enabled.contains(&"net"),
            net_legacy_hooks: self.net_legacy_hooks,
            net_per_packet: self.net_per_packet,
            net_sample_every: self.net_sample_every,
            net_duty: self.net_duty_cycle,
            max_cgroups: self.max_cgroups,
            max_waiting: self.max_waiting,
            max_preempt_pairs: self.max_preempt_pairs,
            runqueue: self.runqueue_mode,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the report as JSON.
    #[arg(long = "output", value_enum, default_value_t = CheckOutput::Text)]
    pub output: CheckOutput,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CheckOutput {
    Text,
    Json,
}

/// The parsed command line.
pub struct Parsed {
    pub cli: Cli,
    /// Names of the collectors that are on after `--collector.*` / `--no-collector.*`.
    pub enabled: Vec<&'static str>,
}

fn with_collector_flags(cmd: Command) -> Command {
    let mut cmd = cmd;
    for spec in collector::COLLECTORS {
        let on = format!("collector.{}", spec.name);
        let off = format!("no-collector.{}", spec.name);
        let default = if spec.default_enabled { "on" } else { "off" };
        cmd = cmd
            .arg(
                Arg::new(on.clone())
                    .long(on.clone())
                    .action(ArgAction::SetTrue)
                    .overrides_with(off.clone())
                    .help(format!(
                        "Enable the {} collector ({default} by default): {}",
                        spec.name, spec.reads
                    ))
                    .help_heading("Collectors"),
            )
            .arg(
                Arg::new(off.clone())
                    .long(off)
                    .action(ArgAction::SetTrue)
                    .overrides_with(on)
                    .help(format!("Disable the {} collector", spec.name))
                    .help_heading("Collectors"),
            );
    }
    cmd
}

/// The full clap command, with the generated collector flags on `agent` and `check`.
pub fn command() -> Command {
    <Cli as clap::CommandFactory>::command()
        .mut_subcommand("agent", with_collector_flags)
        .mut_subcommand("check", with_collector_flags)
}

fn enabled_from(m: &ArgMatches) -> Vec<&'static str> {
    collector::COLLECTORS
        .iter()
        .filter(|spec| {
            if m.get_flag(&format!("collector.{}", spec.name)) {
                true
            } else if m.get_flag(&format!("no-collector.{}", spec.name)) {
                false
            } else {
                spec.default_enabled
            }
        })
        .map(|spec| spec.name)
        .collect()
}

/// Parses `args` (the first is the program name).
///
/// # Errors
/// A clap error (usage, `--help`, `--version`), to be printed with `exit()`.
pub fn parse_from<I, T>(args: I) -> Result<Parsed, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let enabled = matches
        .subcommand()
        .filter(|(name, _)| matches!(*name, "agent" | "check"))
        .map(|(_, sub)| enabled_from(sub))
        .unwrap_or_default();
    Ok(Parsed { cli, enabled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn defaults_and_collector_switches() {
        let p = parse_from(["podstat", "agent"]).expect("parse");
        let Cmd::Agent(a) = &p.cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.listen.to_string(), "0.0.0.0:9977");
        let o = a.server_options().expect("no web config");
        assert_eq!(o.scrape_window, std::time::Duration::from_secs(1));
        assert_eq!((o.max_requests, o.max_connections), (40, 512));
        let p = parse_from(["podstat", "agent", "--web.scrape-window", "0"]).expect("parse");
        let Cmd::Agent(a) = &p.cli.command else {
            panic!("not agent")
        };
        assert_eq!(a.scrape_window, std::time::Duration::ZERO);
        assert_eq!(a.host.paths.cgroupfs.to_str(), Some("/sys/fs/cgroup"));
        assert!(p.enabled.contains(&"cgroup") && p.enabled.contains(&"sched"));

        let p = parse_from([
            "podstat",
            "agent",
            "--no-collector.sched",
            "--web.listen-address",
            "127.0.0.1:1",
        ])
        .expect("parse");
        assert_eq!(p.enabled, vec!["cgroup", "throttle", "net"]);
        let p = parse_from([
            "podstat",
            "agent",
            "--no-collector.sched",
            "--collector.sched",
        ])
        .expect("parse");
        assert!(p.enabled.contains(&"sched"), "the last switch wins");
    }

    /// The steering design: read time, sampled 1 in 16, by default; the per-packet design and
    /// the sampling period by flag; a period that is not a power of two is refused.
    #[test]
    fn net_design_flags() {
        let wanted = |args: &[&str]| {
            let mut v = vec!["podstat", "agent"];
            v.extend_from_slice(args);
            let p = parse_from(v).expect("parse");
            let Cmd::Agent(a) = &p.cli.command else {
                panic!("not agent")
            };
            a.host.probe.wanted(&p.enabled)
        };
        let w = wanted(&[]);
        assert!(!w.net_per_packet);
        assert_eq!(w.net_sample_every, 16);
        assert_eq!(w.net_duty.to_string(), "500ms/4s");
        let w = wanted(&["--probe.net.per-packet", "--probe.net.sample-every", "1"]);
        assert!(w.net_per_packet);
        assert_eq!(w.net_sample_every, 1);
        let w = wanted(&["--probe.net.duty-cycle", "always"]);
        assert!(!w.net_duty.cycles());
        let w = wanted(&["--probe.net.duty-cycle", "100ms/800ms"]);
        assert!((w.net_duty.scale() - 8.0).abs() < 1e-9);
        for bad in ["10ms/1s", "4s", "5ms/10ms"] {
            assert!(
                parse_from(["podstat", "agent", "--probe.net.duty-cycle", bad]).is_err(),
                "--probe.net.duty-cycle {bad} accepted"
            );
        }
        for bad in ["0", "3", "131072", "x"] {
            assert!(
                parse_from(["podstat", "agent", "--probe.net.sample-every", bad]).is_err(),
                "--probe.net.sample-every {bad} accepted"
            );
        }
    }

    #[test]
    fn help_mentions_every_flag() {
        let mut cmd = command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("agent")
            .expect("agent")
            .render_long_help()
            .to_string();
        for flag in [
            "--web.listen-address",
            "--path.cgroupfs",
            "--path.procfs",
            "--path.sysfs",
            "--collector.cgroup",
            "--no-collector.sched",
            "--log.format",
            "--web.scrape-window",
            "--web.max-requests",
            "--web.max-connections",
            "--web.config.file",
            "--web.health-open",
        ] {
            assert!(
                help.contains(flag),
                "{flag} missing from agent --help:\n{help}"
            );
        }
    }

    #[test]
    fn view_help_lists_keys_and_sources() {
        let mut cmd = command();
        cmd.build();
        for (sub, needles) in [
            (
                "top",
                &["--from", "--once", "q quits", "/ filter", "--namespace"][..],
            ),
            (
                "explain",
                &["--from", "--duration", "cgroup path", "--output"][..],
            ),
            (
                "top",
                &[
                    "--from.ca-file",
                    "--from.cert-file",
                    "--from.key-file",
                    "--from.insecure-skip-verify",
                    "--from.username",
                    "--from.password-file",
                    "PODSTAT_FROM_PASSWORD",
                ][..],
            ),
        ] {
            let help = cmd
                .find_subcommand_mut(sub)
                .expect(sub)
                .render_long_help()
                .to_string();
            for n in needles {
                assert!(help.contains(n), "{n} missing from {sub} --help:\n{help}");
            }
        }
        let p = parse_from(["podstat", "top", "--once", "--sort", "cpu"]).expect("parse");
        assert!(p.enabled.is_empty(), "no collector switches on the views");
        let Cmd::Top(t) = p.cli.command else {
            panic!("not top")
        };
        assert!(t.once && t.sort == crate::view::top::SortKey::Cpu);
    }

    /// The `--from.*` flags: with `--from`, a certificate with its key, a CA or no
    /// verification, and no password on the command line.
    #[test]
    fn remote_flags() {
        let parse = |args: &[&str]| {
            let mut v = vec!["podstat", "top", "--once"];
            v.extend_from_slice(args);
            parse_from(v)
        };
        let p = parse(&[
            "--from",
            "https://n:9977",
            "--from.ca-file",
            "ca.crt",
            "--from.cert-file",
            "c.crt",
            "--from.key-file",
            "c.key",
            "--from.username",
            "sre",
            "--from.password-file",
            "pw",
        ])
        .expect("parse");
        let Cmd::Top(t) = p.cli.command else {
            panic!("not top")
        };
        let r = &t.source.remote;
        assert_eq!(r.ca_file.as_deref(), Some(std::path::Path::new("ca.crt")));
        assert_eq!(r.username.as_deref(), Some("sre"));
        assert!(r.key_file.is_some() && r.password_file.is_some() && !r.insecure_skip_verify);
        for bad in [
            &["--from.ca-file", "ca.crt"][..],
            &["--from", "https://n", "--from.cert-file", "c.crt"],
            &["--from", "https://n", "--from.key-file", "c.key"],
            &["--from", "https://n", "--from.password-file", "pw"],
            &[
                "--from",
                "https://n",
                "--from.ca-file",
                "c",
                "--from.insecure-skip-verify",
            ],
            &[
                "--from",
                "https://n",
                "--from.username",
                "u",
                "--from.password",
                "x",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_listen_address_is_a_usage_error() {
        let err = parse_from(["podstat", "agent", "--web.listen-address", "nope"])
            .err()
            .expect("must fail");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
