//! `podstat check`: what this host supports, each with the reason.
//!
//! Every item has one of three outcomes, as in cilium/ebpf's feature probes: `ok`,
//! `unsupported` (conclusive: the host lacks it) or `inconclusive` (we could not tell, e.g.
//! a permission problem that a privileged run would not have).

use std::{fmt::Write as _, path::Path, process::ExitCode, sync::Arc};

use serde::Serialize;

use crate::{
    cgroup::Layout,
    cli::{CheckArgs, CheckOutput},
    collector::{COLLECTORS, Slot},
    probe::Status,
};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Unsupported,
    Inconclusive,
    Disabled,
    /// Nothing to measure on this host (hardware the probe watches is absent); not a failure.
    #[serde(rename = "n/a")]
    NotApplicable,
}

#[derive(Debug, Serialize)]
pub struct Item {
    pub area: &'static str,
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// Entries of each sized eBPF map when check loads the probes. Whether a program loads and
/// attaches does not depend on its maps' capacity, but their memory does: run with
/// `kubectl exec` in the agent's pod, check is charged to the same memory limit as the
/// running agent, and the full sizes of a second copy do not fit in the DaemonSet's limit
/// (the node scenario, `cargo xtask node`, saw map creation fail with ENOMEM).
const CHECK_MAP_ENTRIES: u32 = 64;

/// Linux capability numbers (include/uapi/linux/capability.h).
const CAPS: &[(u32, &str)] = &[
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

fn effective_caps(procfs: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(procfs.join("self/status")).ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Builds the report. Loads the probes for real: that is the only conclusive BPF test.
#[expect(clippy::too_many_lines, reason = "one report, item after item")]
pub fn report(args: &CheckArgs, enabled: &[&'static str]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut push = |area, name: String, outcome, detail: String| {
        items.push(Item {
            area,
            name,
            outcome,
            detail,
        });
    };

    match Layout::detect(&args.host.paths.cgroupfs) {
        Ok(layout) => {
            push(
                "cgroup",
                "mode".into(),
                Outcome::Ok,
                format!("{:?} at {}", layout.mode, layout.root.display()),
            );
            push(
                "cgroup",
                "cpu controller".into(),
                Outcome::Ok,
                format!(
                    "cgroup {:?} hierarchy at {}",
                    layout.cpu_version,
                    layout.cpu.display()
                ),
            );
            if let Some(acct) = &layout.cpuacct {
                push(
                    "cgroup",
                    "cpuacct controller".into(),
                    Outcome::Ok,
                    format!("v1 hierarchy at {}", acct.display()),
                );
            }
            if let Some(unified) = &layout.unified {
                push(
                    "cgroup",
                    "cgroup2 controllers".into(),
                    Outcome::Ok,
                    format!(
                        "{}: {}",
                        unified.display(),
                        if layout.v2_controllers.is_empty() {
                            "(none)".into()
                        } else {
                            layout.v2_controllers.join(" ")
                        }
                    ),
                );
            }
            for (name, path) in &layout.v1_hierarchies {
                push(
                    "cgroup",
                    format!("v1 {name}"),
                    Outcome::Ok,
                    path.display().to_string(),
                );
            }
        }
        Err(e) => push(
            "cgroup",
            "layout".into(),
            Outcome::Unsupported,
            crate::util::chain(&e),
        ),
    }

    let btf = args.host.paths.sysfs.join("kernel/btf/vmlinux");
    if btf.exists() {
        push(
            "kernel",
            "BTF".into(),
            Outcome::Ok,
            format!("{} present", btf.display()),
        );
    } else {
        push(
            "kernel",
            "BTF".into(),
            Outcome::Unsupported,
            format!(
                "{} missing: the eBPF probes need kernel BTF (CONFIG_DEBUG_INFO_BTF=y)",
                btf.display()
            ),
        );
    }
    push(
        "kernel",
        "release".into(),
        Outcome::Ok,
        crate::util::kernel_release(),
    );
    let (outcome, detail) = check_sched_ext(&args.host.paths.sysfs);
    push("kernel", "sched_ext".into(), outcome, detail);

    match effective_caps(&args.host.paths.procfs) {
        Some(caps) => {
            let have: Vec<&str> = CAPS
                .iter()
                .filter(|(bit, _)| caps & (1 << bit) != 0)
                .map(|(_, n)| *n)
                .collect();
            let bpf_ok = caps & (1 << 21) != 0 || (caps & (1 << 39) != 0 && caps & (1 << 38) != 0);
            push(
                "permission",
                "BPF".into(),
                if bpf_ok {
                    Outcome::Ok
                } else {
                    Outcome::Unsupported
                },
                if bpf_ok {
                    format!("effective capabilities include {}", have.join(", "))
                } else {
                    format!(
                        "needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN); effective: {}",
                        if have.is_empty() {
                            "none of them".into()
                        } else {
                            have.join(", ")
                        }
                    )
                },
            );
        }
        None => push(
            "permission",
            "BPF".into(),
            Outcome::Inconclusive,
            "cannot read CapEff from /proc/self/status".into(),
        ),
    }

    // The agent as `podstat agent` would start it, names left empty: the provider is asked
    // once below, on its own.
    // It drops its capabilities after attach as the agent does, so what follows (the
    // metadata provider, the collectors) runs as the agent would.
    let mut config = args
        .host
        .config(enabled, true, Arc::new(crate::metadata::Store::default()));
    config.drop_privileges = true;
    if let Some(wanted) = config.probes.as_mut() {
        wanted.shrink_maps(CHECK_MAP_ENTRIES);
    }
    let running = crate::agent::Agent::start(config);
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            push(
                "agent",
                "start".into(),
                Outcome::Inconclusive,
                crate::util::chain(&e),
            );
            return items;
        }
    };
    for (probe, status) in running.probes.status() {
        let (outcome, detail) = match status {
            Status::Attached(how) => (Outcome::Ok, format!("loaded and attached ({how})")),
            Status::Failed(why) if why.conclusive() => {
                (Outcome::Unsupported, crate::util::chain(why.as_ref()))
            }
            Status::Failed(why) => (Outcome::Inconclusive, crate::util::chain(why.as_ref())),
            Status::Absent(why) => (Outcome::NotApplicable, why.to_string()),
            Status::Disabled => (Outcome::Disabled, "its collector is off".to_string()),
            Status::NotNeeded(why) => (Outcome::NotApplicable, (*why).to_string()),
        };
        push("probe", probe.name().to_string(), outcome, detail);
    }

    let outcome = match &running.privilege {
        crate::privilege::Outcome::Dropped { .. } => Outcome::Ok,
        crate::privilege::Outcome::KeptBpf { .. } => Outcome::Unsupported,
        crate::privilege::Outcome::Failed(_) | crate::privilege::Outcome::NotAsked => {
            Outcome::Inconclusive
        }
    };
    push(
        "permission",
        "after attach".into(),
        outcome,
        running.privilege.to_string(),
    );

    let (outcome, detail) = check_metadata(&args.host.metadata);
    push("metadata", "provider".to_string(), outcome, detail);

    let gatherer = &running.gatherer;
    for spec in COLLECTORS {
        let slot = gatherer
            .slots()
            .iter()
            .find(|(n, _)| *n == spec.name)
            .map(|(_, s)| s);
        let (outcome, detail) = match slot {
            None => (
                Outcome::Disabled,
                format!("off (enable with --collector.{})", spec.name),
            ),
            Some(Slot::Ready(_)) => (Outcome::Ok, format!("would run: {}", spec.reads)),
            Some(Slot::Unsupported(why)) => (
                Outcome::Unsupported,
                format!("{} (needs {})", crate::util::chain(why), spec.requires),
            ),
        };
        push("collector", spec.name.to_string(), outcome, detail);
    }
    items
}

/// Which metadata provider the agent would use, and one real refresh from it.
/// sched_ext: a loaded BPF scheduler decides what cpu.max and cpu.weight mean. Not a failure:
/// `inconclusive` says the throttling figures may not apply.
fn check_sched_ext(sysfs: &Path) -> (Outcome, String) {
    match crate::cgroup::sched_ext::read(sysfs) {
        None => (
            Outcome::NotApplicable,
            "no sched_ext on this kernel (6.12+, CONFIG_SCHED_CLASS_EXT): CFS enforces cpu.max"
                .into(),
        ),
        Some(scx) if !scx.active() => (
            Outcome::Ok,
            "no BPF scheduler loaded (state disabled): CFS enforces cpu.max".into(),
        ),
        Some(scx) => (
            Outcome::Inconclusive,
            format!(
                "BPF scheduler {} loaded (state {}): cpu.max and cpu.weight mean only what it implements, and the throttling figures (cpu.stat nr_throttled, throttled_usec, the throttle probe) may not apply",
                scx.scheduler.as_deref().unwrap_or("(unnamed)"),
                scx.state
            ),
        ),
    }
}

fn check_metadata(opts: &crate::metadata::Options) -> (Outcome, String) {
    let provider = match crate::metadata::select(opts) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return (
                Outcome::Disabled,
                "none (no CRI socket, no service-account token, or --metadata.provider none): series carry pod_uid and container_id only".into(),
            );
        }
        Err(e) => return (Outcome::Unsupported, crate::util::chain(&e)),
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return (
            Outcome::Inconclusive,
            "could not start a runtime to ask it".into(),
        );
    };
    let (name, source) = (provider.name(), provider.source());
    let mut provider = provider;
    let result = rt.block_on(provider.fetch_within(opts.timeout));
    match result {
        Ok(snap) => (
            Outcome::Ok,
            format!(
                "{name} ({source}): {} pods, {} containers named",
                snap.pods.len(),
                snap.containers.len()
            ),
        ),
        Err(e) => (
            Outcome::Unsupported,
            format!("{name} ({source}): {}", crate::util::chain(&e)),
        ),
    }
}

/// Renders the report as an aligned table.
pub fn render_text(items: &[Item]) -> String {
    let w = items
        .iter()
        .map(|i| i.area.len() + 1 + i.name.len())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    for i in items {
        let label = format!("{} {}", i.area, i.name);
        let outcome = match i.outcome {
            Outcome::Ok => "ok",
            Outcome::Unsupported => "UNSUPPORTED",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Disabled => "disabled",
            Outcome::NotApplicable => "n/a",
        };
        let _ = writeln!(out, "{label:<w$}  {outcome:<12}  {}", i.detail);
    }
    out
}

/// `podstat check`.
///
/// # Errors
/// Only if writing JSON fails.
pub fn run(args: &CheckArgs, enabled: &[&'static str]) -> anyhow::Result<ExitCode> {
    let items = report(args, enabled);
    match args.output {
        CheckOutput::Text => print!("{}", render_text(&items)),
        CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&items)?),
    }
    let failed = items
        .iter()
        .any(|i| matches!(i.area, "collector" | "probe") && i.outcome == Outcome::Unsupported)
        || items
            .iter()
            .any(|i| i.area == "cgroup" && i.outcome == Outcome::Unsupported);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn sysfs(host: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hosts")
            .join(host)
            .join("sys")
    }

    #[test]
    fn sched_ext_says_when_throttling_figures_may_not_apply() {
        let (o, d) = check_sched_ext(&sysfs("v2-systemd-containerd"));
        assert_eq!(o, Outcome::Inconclusive);
        assert!(
            d.contains("rusty_1.0.14") && d.contains("may not apply"),
            "{d}"
        );
        assert_eq!(check_sched_ext(&sysfs("sched-ext-disabled")).0, Outcome::Ok);
        assert_eq!(
            check_sched_ext(&sysfs("net-mlx5")).0,
            Outcome::NotApplicable
        );
    }
}
