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
    /// enabled would run, 1 if something enabled would not.
    Check(CheckArgs),
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
    #[command(flatten)]
    pub paths: Paths,
    #[command(flatten)]
    pub cgroup: collector::cgroup::Options,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// Sizing and refresh of the eBPF probes.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Pod and container cgroups the probes track at once; sizes the per-cgroup eBPF maps
    /// (about 0.6 KiB of kernel memory per cgroup). Beyond it, cgroups are not measured and
    /// podstat_bpf_map_full_total{map="known"} counts them.
    #[arg(long = "probe.max-cgroups", value_name = "N", default_value_t = podstat_common::sched::DEFAULT_MAX_CGROUPS)]
    pub max_cgroups: u32,
    /// Threads in pod cgroups the run-queue probe keeps state for (from their first wait until
    /// they exit; 48 bytes each). Beyond it, podstat_bpf_map_full_total{map="wait_start"} counts.
    #[arg(long = "probe.max-waiting", value_name = "N", default_value_t = podstat_common::sched::DEFAULT_MAX_WAITING)]
    pub max_waiting: u32,
    /// How often the probes' list of pod cgroups is refreshed (new pods are measured from the
    /// next refresh on; a removed pod's series go at the next one). E.g. `5s`, `500ms`.
    #[arg(long = "probe.refresh-interval", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub refresh_interval: std::time::Duration,
    /// Attach the steering probes to the hooks older kernels have (tcp_rcv_space_adjust,
    /// tcp_probe: TCP only) even where sock_recv_length and sk_data_ready (6.3+) exist.
    #[arg(long = "probe.net.legacy-hooks")]
    pub net_legacy_hooks: bool,
}

impl ProbeArgs {
    /// What to load, given the enabled collectors.
    pub fn wanted(&self, enabled: &[&'static str]) -> crate::probe::Wanted {
        crate::probe::Wanted {
            sched: enabled.contains(&"sched"),
            throttle: enabled.contains(&"throttle"),
            net: enabled.contains(&"net"),
            net_legacy_hooks: self.net_legacy_hooks,
            max_cgroups: self.max_cgroups,
            max_waiting: self.max_waiting,
        }
    }
}

/// Parses `250ms`, `5s`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s or 250ms"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s:?} must be between 1ms and 1h"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub paths: Paths,
    #[command(flatten)]
    pub cgroup: collector::cgroup::Options,
    #[command(flatten)]
    pub probe: ProbeArgs,
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
        assert_eq!(a.paths.cgroupfs.to_str(), Some("/sys/fs/cgroup"));
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
        ] {
            assert!(
                help.contains(flag),
                "{flag} missing from agent --help:\n{help}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(std::time::Duration::from_secs(5)));
        assert_eq!(
            parse_duration("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_duration("2"), Ok(std::time::Duration::from_secs(2)));
        for bad in ["", "0s", "-1s", "5h", "abc", "nanms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
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
