//! `cargo xtask`: toolchain setup, eBPF build, the test tiers and benchmarks.
//!
//! Every command installs what it needs that is missing, and is quick when it is there.

mod bench;
mod bench_ab;
#[path = "../../tests/src/bench_json.rs"]
mod bench_json;
mod bench_net;
mod fuzz;
mod image;
mod node;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "podstat's build, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker (built against the nightly's own
    /// LLVM), and with --test-deps the Debian packages the tests use.
    Setup {
        /// Also install the Debian packages the test suite needs (prometheus/promtool, stress-ng, ...).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the eBPF object and the agent (release) with the object embedded.
    Build,
    /// Build, then run `podstat agent` on this host's real cgroups (needs root); Ctrl-C stops it.
    /// Arguments after `--` go to `podstat agent`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: unit and golden tests, promtool, the fuzz targets (20 s each),
    /// then the privileged integration tests against the real kernel (needs root).
    Test {
        /// Only the unprivileged tiers (unit, golden, promtool, fuzzing).
        #[arg(long)]
        unprivileged: bool,
        /// Filter passed to the integration test harness.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Fuzz every parser of host or network input (the cargo-fuzz targets in fuzz/): build them
    /// (nightly, libFuzzer, AddressSanitizer; cargo-fuzz is installed if missing), then run
    /// each for --secs on a copy of its seed corpus fuzz/corpus/<target>. Fails if any target
    /// crashes, naming the crash input. `cargo xtask test` runs every target for 20 s.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Targets (fuzz/fuzz_targets/<name>.rs); all when none is given.
        targets: Vec<String>,
    },
    /// The kernel matrix: boot every kernel pinned in xtask/vm-kernels.toml (or the ones
    /// named, e.g. `6.1`) under qemu on pure cgroup v2 and run the podstat scenario in it.
    /// Downloads and caches the kernels (target/vm-cache). `cargo xtask test` runs it too.
    Vm {
        /// Kernel names from xtask/vm-kernels.toml; all when none is given.
        kernels: Vec<String>,
    },
    /// The agent's container image without docker: the static (musl) podstat FROM scratch, as
    /// the final stage of deploy/kubernetes/Dockerfile describes it, written as an OCI archive
    /// to target/podstat-image.oci.tar (push it with skopeo or crane, or `ctr images import`).
    Image {
        /// Only build the static binary (the Dockerfile's build stage uses this).
        #[arg(long)]
        binary_only: bool,
    },
    /// A real node in a VM: a Debian rootfs (mmdebstrap: systemd, containerd, runc, Prometheus;
    /// cached in target/node-cache) booted on a pinned kernel with systemd as PID 1 on pure
    /// cgroup v2, containerd's systemd cgroup driver, and the DaemonSet's pod run from
    /// deploy/kubernetes/daemonset.yaml through CRI beside workload pods. Not yet a tier of
    /// `cargo xtask test`: its scenario has not run to the end here (docs/testing.md).
    Node,
    /// Benchmarks, all in one run, each against a baseline measured in that run: scrape cost
    /// (300 pods x 3 containers of real cgroups) against plain loops reading the same files;
    /// per-event cost of every probe program against libbpf-tools runqlat during a
    /// context-switch storm, inside a pod and outside; end-to-end storm throughput with no
    /// probe, with an empty sched_switch program (the floor), with podstat and with runqlat;
    /// the scrape flood (agent CPU and latency at 1, 8 and 32 concurrent scrapers); pod churn;
    /// the run-queue bucketing alone against the comparison chain it replaced (socket filters
    /// under BPF_PROG_TEST_RUN, after checking their slots against userspace's).
    /// Needs root. Writes target/bench/report.md.
    Bench {
        /// Pods in the scrape benchmark (3 containers each).
        #[arg(long, default_value_t = 300)]
        pods: usize,
        /// Scrapes to time.
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
        /// Seconds per context-switch storm.
        #[arg(long, default_value_t = 10)]
        storm_secs: u64,
        /// Skip the scrape benchmark: only the probe's per-event and end-to-end costs.
        #[arg(long)]
        skip_scrape: bool,
        /// Skip the end-to-end benchmark (five rounds of four storms): for quick A/B runs of
        /// the per-event cost.
        #[arg(long)]
        skip_e2e: bool,
        /// Pods in the scrape flood (3 containers each).
        #[arg(long, default_value_t = 200)]
        flood_pods: usize,
        /// Seconds per flood (1, 8 and 32 concurrent scrapers, with and without the window).
        #[arg(long, default_value_t = 10)]
        flood_secs: u64,
        /// Another podstat binary (e.g. the main branch's release build) to flood with its
        /// defaults, as a baseline.
        #[arg(long, value_name = "BIN")]
        flood_baseline: Option<PathBuf>,
        /// Container cgroups in the churn part (RSS curve); 0 skips it.
        #[arg(long, default_value_t = 3000)]
        churn: usize,
    },
    /// The pod path's cost per context switch of two or more podstat binaries in one run (a
    /// change against its base): rounds of the `bench` storm in a pod, once per binary, the
    /// order rotated; ns per sched_switch and the ratio to the same run's runqlat, per round
    /// and as medians within the storm's two clusters of rounds.
    /// Needs root. Writes target/bench/ab.md.
    BenchAb {
        /// A binary to compare, as NAME=PATH; give two or more, the first is the baseline.
        /// Binaries older than --web.scrape-window need a wrapper script that drops that flag.
        #[arg(long = "binary", value_name = "NAME=PATH", required = true, value_parser = bench_ab::parse_binary)]
        binaries: Vec<(String, PathBuf)>,
        /// Rounds (each runs every binary once).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Seconds per storm.
        #[arg(long, default_value_t = 5)]
        storm_secs: u64,
        /// podstat's ns per sched_switch that splits the storm's two clusters (default: the
        /// middle of the widest gap between the rounds' figures).
        #[arg(long)]
        split_ns: Option<f64>,
    },
    /// Receive-path cost of the steering probes: iperf3 64-byte UDP and 1400-byte TCP over a
    /// veth pair between two network namespaces (RPS/RFS on, server in a pod cgroup), with no
    /// programs, an empty sock_recv_length program, the agent (read-time steering, duty-cycled
    /// as by default, and always attached) and the agent with --probe.net.per-packet,
    /// interleaved; ns per received packet of each net program (bpf_stats). Needs root.
    /// Writes target/bench/net.md.
    BenchNet {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Rounds (each: every arm, both workloads).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// --probe.net.sample-every of the read-time agent.
        #[arg(long, default_value_t = podstat_common::net::DEFAULT_SAMPLE_EVERY)]
        sample_every: u32,
        /// Only these arms, comma-separated, with `none` (every ratio is against it): none,
        /// floor, read, read_always, per_packet.
        #[arg(long, value_name = "A,B,...")]
        arms: Option<String>,
        /// No cost runs (bpf_stats), throughput runs only: more rounds in the same time.
        #[arg(long)]
        throughput_only: bool,
    },
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Prints a step header with the time since start; long tasks show their progress this way.
pub fn step(start: Instant, what: &str) {
    eprintln!("\n==> [{:>5.0}s] {what}", start.elapsed().as_secs_f64());
}

/// Runs a command, failing with its command line if it does not exit 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// `cargo` with the eBPF object required (build.rs fails instead of embedding nothing).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).env("PODSTAT_REQUIRE_EBPF", "1");
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs the task; a failure is printed as its chain of causes on one line, without the
/// backtrace anyhow adds under `RUST_BACKTRACE` (a CI log's tail is kept for the reason, and
/// every error here names what failed).
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match task(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the subcommand table: one arm per task"
)]
fn task(cli: Cli) -> anyhow::Result<()> {
    let start = Instant::now();
    match cli.cmd {
        Task::Setup { test_deps } => {
            setup::toolchain(start)?;
            if test_deps {
                setup::debian_packages(start, setup::TEST_PACKAGES)?;
            }
        }
        Task::Build => {
            setup::toolchain(start)?;
            step(start, "building podstat (release) with the eBPF object");
            run(cargo().args(["build", "--release", "-p", "podstat"]))?;
            eprintln!("built {}", root().join("target/release/podstat").display());
        }
        Task::Run { args } => {
            setup::toolchain(start)?;
            step(start, "building podstat (release) with the eBPF object");
            run(cargo().args(["build", "--release", "-p", "podstat"]))?;
            if !is_root() {
                eprintln!(
                    "warning: not root: cgroup files are readable, but the eBPF probes will not load"
                );
            }
            step(start, "running podstat agent (Ctrl-C to stop)");
            let bin = root().join("target/release/podstat");
            run(Command::new(&bin).arg("agent").args(&args))?;
        }
        Task::Test {
            unprivileged,
            filter,
        } => {
            let tally = test(start, unprivileged, filter.as_deref())?;
            eprintln!("\n==> done in {:.0}s", start.elapsed().as_secs_f64());
            // The closing line: every tier's results added up.
            tally.report();
            return Ok(());
        }
        Task::Fuzz { secs, targets } => {
            setup::toolchain(start)?;
            let failed = fuzz::fuzz(start, &fuzz::targets(&targets)?, secs)?;
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
        }
        Task::Vm { kernels } => {
            setup::toolchain(start)?;
            let kernels = vm::kernels(&kernels)?;
            let outcomes = vm::matrix(start, &kernels)?;
            let failed = vm::failed(&outcomes);
            eprintln!("\n==> done in {:.0}s", start.elapsed().as_secs_f64());
            if !failed.is_empty() {
                bail!("kernel matrix: {} failed", failed.join(" "));
            }
            return Ok(());
        }
        Task::Image { binary_only } => {
            setup::toolchain(start)?;
            image::image(start, binary_only)?;
        }
        Task::Node => {
            setup::toolchain(start)?;
            node::node(start)?;
        }
        Task::Bench {
            pods,
            scrapes,
            storm_secs,
            skip_scrape,
            skip_e2e,
            flood_pods,
            flood_secs,
            flood_baseline,
            churn,
        } => {
            prepare_bench(
                start,
                "building podstat, the bench scenario, the floor program's loader and the \
                 bucketing microbenchmark (release)",
                &[
                    "podstat-test-bench",
                    "podstat-test-floor",
                    "podstat-test-bucketing",
                ],
            )?;
            bench::all(
                start,
                &bench::Config {
                    pods,
                    scrapes,
                    storm_secs,
                    skip_scrape,
                    skip_e2e,
                    flood_pods,
                    flood_secs,
                    flood_baseline,
                    churn,
                },
            )?;
        }
        Task::BenchAb {
            binaries,
            rounds,
            storm_secs,
            split_ns,
        } => {
            prepare_bench(
                start,
                "building the bench scenario and the floor program's loader (release)",
                &["podstat-test-bench", "podstat-test-floor"],
            )?;
            bench_ab::run(
                start,
                &bench_ab::Config {
                    binaries,
                    rounds,
                    storm_secs,
                    split_ns,
                },
            )?;
        }
        Task::BenchNet {
            secs,
            rounds,
            sample_every,
            arms,
            throughput_only,
        } => {
            prepare_bench(
                start,
                "building podstat and the bench-net scenario (release)",
                &["podstat-test-bench-net", "podstat-test-floor"],
            )?;
            bench_net::all(
                start,
                &bench_net::Config {
                    secs,
                    rounds,
                    sample_every,
                    arms,
                    throughput_only,
                },
            )?;
        }
    }
    eprintln!("\n==> done in {:.0}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// What every benchmark task does first: the toolchain, the Debian packages the benchmarks
/// use, and a release build of podstat and the scenario binaries `bins` (`what` says which).
fn prepare_bench(start: Instant, what: &str, bins: &[&str]) -> anyhow::Result<()> {
    setup::toolchain(start)?;
    setup::debian_packages(start, setup::BENCH_PACKAGES)?;
    step(start, what);
    build_scenarios(bins)
}

/// Builds podstat and the scenario binaries `bins` of the tests crate, in release.
fn build_scenarios(bins: &[&str]) -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "-p", "podstat"]))?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "podstat-tests"]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    run(&mut cmd)
}

fn test(start: Instant, unprivileged: bool, filter: Option<&str>) -> anyhow::Result<Tally> {
    setup::toolchain(start)?;
    setup::debian_packages(start, setup::TEST_PACKAGES)?;

    let mut tally = Tally::default();
    step(start, "unit and golden tests (cargo test)");
    tally.run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "podstat-tests",
        "--exclude",
        "podstat-ebpf",
    ]))?;

    step(start, "promtool check metrics on the golden exposition");
    let golden_dir = root().join("agent/tests/fixtures/golden");
    let mut goldens: Vec<PathBuf> = std::fs::read_dir(&golden_dir)
        .with_context(|| format!("listing {}", golden_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "prom"))
        .collect();
    goldens.sort();
    if goldens.is_empty() {
        bail!("no golden files in {}", golden_dir.display());
    }
    for golden in &goldens {
        let body =
            std::fs::read(golden).with_context(|| format!("reading {}", golden.display()))?;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("spawning promtool (Debian package prometheus)")?;
        std::io::Write::write_all(child.stdin.as_mut().context("promtool stdin")?, &body)?;
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // promtool's lint exits non-zero on findings; any output at all is a finding.
        if !out.status.success() || !said.trim().is_empty() {
            bail!("promtool check metrics on {}:\n{said}", golden.display());
        }
        eprintln!(
            "promtool: {} clean",
            golden.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
    }

    step(
        start,
        "promtool check rules and promtool test rules on deploy/prometheus",
    );
    promtool_rules(&mut tally)?;

    step(
        start,
        "dashboard and rules helpers; every dashboard query through promtool (tests/src, no root)",
    );
    tally.run(cargo().args(["test", "-p", "podstat-tests", "--lib"]))?;

    fuzz_tier(start, &mut tally)?;

    if unprivileged {
        return Ok(tally);
    }
    if !is_root() {
        bail!(
            "the privileged integration tests need root (real cgroups and eBPF); run as root, or pass --unprivileged"
        );
    }
    step(
        start,
        "building podstat with the eBPF object for the integration tests",
    );
    run(cargo().args(["build", "-p", "podstat"]))?;
    step(
        start,
        "privileged integration tests (real cgroups, real eBPF)",
    );
    let bin = root().join("target/debug/podstat");
    let mut cmd = cargo();
    // Integration tests only: the library's unit tests ran in the unprivileged tier.
    cmd.args([
        "test",
        "-p",
        "podstat-tests",
        "--test",
        "*",
        "--",
        "--test-threads=1",
    ])
    .env("PODSTAT_BIN", &bin);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    tally.run(&mut cmd)?;
    matrix_tier(start, &mut tally)?;
    node_tier(start, &mut tally)?;
    Ok(tally)
}

/// The DaemonSet on a node (`cargo xtask node`) as a tier of `cargo xtask test`: one result.
fn node_tier(start: Instant, tally: &mut Tally) -> anyhow::Result<()> {
    step(
        start,
        "the DaemonSet on a node in qemu (cargo xtask node: systemd, cgroup v2, containerd)",
    );
    let outcome = node::node(start);
    let failed: Vec<String> = outcome
        .as_ref()
        .err()
        .map(|e| vec![format!("node: {e:#}")])
        .unwrap_or_default();
    tally.results(1, &failed, || failed.join("\n"))
}

/// Seconds per fuzz target in `cargo xtask test`: 9 targets make three minutes.
const FUZZ_TIER_SECS: u64 = 20;

/// The fuzz targets as a tier of `cargo xtask test`: each for [`FUZZ_TIER_SECS`] on a copy of
/// its seed corpus, one result per target.
fn fuzz_tier(start: Instant, tally: &mut Tally) -> anyhow::Result<()> {
    step(
        start,
        &format!("fuzzing every parser of host or network input ({FUZZ_TIER_SECS} s per target)"),
    );
    let targets = fuzz::all_targets()?;
    let failed = fuzz::fuzz(start, &targets, FUZZ_TIER_SECS).inspect_err(|_| tally.report())?;
    tally.results(targets.len(), &failed, || failed.join("\n"))
}

/// The kernel matrix as a tier of `cargo xtask test`: one result per pinned kernel.
fn matrix_tier(start: Instant, tally: &mut Tally) -> anyhow::Result<()> {
    step(start, "kernel matrix in qemu (xtask/vm-kernels.toml)");
    let kernels = vm::kernels(&[])?;
    let outcomes = vm::matrix(start, &kernels).inspect_err(|_| tally.report())?;
    let failed = vm::failed(&outcomes);
    tally.results(outcomes.len(), &failed, || {
        format!("kernel matrix: {} failed", failed.join(" "))
    })
}

/// `promtool check rules` on every rules file in deploy/prometheus and `promtool test rules` on
/// every test file in deploy/prometheus/tests, each counted as one test in the tally. Any
/// failure fails the run, after all of them have run.
fn promtool_rules(tally: &mut Tally) -> anyhow::Result<()> {
    let dir = root().join("deploy/prometheus");
    let yaml_in = |d: &Path| -> anyhow::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .with_context(|| format!("listing {}", d.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        v.sort();
        if v.is_empty() {
            bail!("no YAML files in {}", d.display());
        }
        Ok(v)
    };
    let mut failed = Vec::new();
    let checks = yaml_in(&dir)?.into_iter().map(|f| ("check", f));
    let tests = yaml_in(&dir.join("tests"))?
        .into_iter()
        .map(|f| ("test", f));
    for (what, file) in checks.chain(tests) {
        let out = Command::new("promtool")
            .args([what, "rules"])
            .arg(&file)
            .current_dir(&dir)
            .output()
            .context("spawning promtool (Debian package prometheus)")?;
        let name = file
            .strip_prefix(&dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        if out.status.success() {
            eprintln!("promtool {what} rules {name}: ok");
            tally.passed += 1;
        } else {
            eprintln!(
                "promtool {what} rules {name}: FAILED\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            tally.failed += 1;
            failed.push(format!("promtool {what} rules {name}"));
        }
    }
    if !failed.is_empty() {
        tally.report();
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Adds up cargo test's `test result:` lines across the tiers, for one closing line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Runs a `cargo test`, echoing its output, and counts its results.
    fn run(&mut self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::io::{BufRead as _, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("cargo test stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |what: &str| -> u64 {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim()
                                .strip_suffix(what)
                                .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                        })
                        .unwrap_or(0)
                };
                self.passed += count(" passed");
                self.failed += count(" failed");
                self.ignored += count(" ignored");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            self.report();
            bail!("{cmd:?} failed with {status}");
        }
        Ok(())
    }

    /// Counts a tier of `ran` results of which `failed` failed; fails with `why` if any did.
    fn results<T>(
        &mut self,
        ran: usize,
        failed: &[T],
        why: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        self.passed += (ran - failed.len()) as u64;
        self.failed += failed.len() as u64;
        if !failed.is_empty() {
            self.report();
            bail!("{}", why());
        }
        Ok(())
    }

    fn report(&self) {
        println!(
            "\n{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        );
    }
}
