//! What a pinned kernel of `xtask/vm-kernels.toml` must report, for the guests of the kernel
//! matrix (`podstat-test-vm`) and of the node (`podstat-test-node`): the expectations file
//! xtask writes, and `podstat check`'s probes compared with it.
//!
//! ```text
//! release 6.1.0-50-cloud-amd64
//! probe sched_switch ok tp_btf
//! probe cfs_throttle ok fexit
//! probe some_probe unsupported
//! ```

use std::{collections::BTreeMap, fs, path::Path};

const CGROUP: &str = "/sys/fs/cgroup";

/// What `podstat check` must say about one probe on this kernel.
#[derive(Debug)]
pub struct Expect {
    /// `ok`, `unsupported` or `n/a` (as check prints them).
    pub outcome: String,
    /// For `ok`: how it attached, as in check's `loaded and attached (HOW)`.
    pub how: Option<String>,
}

/// Reads the expectations file (format in the module doc): the release and every probe.
///
/// # Panics
/// If the file cannot be read or a line is malformed.
pub fn read_expectations(path: &Path) -> (String, BTreeMap<String, Expect>) {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading expectations {}: {e}", path.display()));
    let mut release = String::new();
    let mut probes = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["release", r] => (*r).clone_into(&mut release),
            ["probe", name, outcome, how @ ..] => {
                probes.insert(
                    (*name).to_owned(),
                    Expect {
                        outcome: (*outcome).to_owned(),
                        how: how.first().map(|h| (*h).to_owned()),
                    },
                );
            }
            _ => panic!("bad expectation line {line:?} in {}", path.display()),
        }
    }
    assert!(
        !release.is_empty(),
        "no `release` line in {}",
        path.display()
    );
    assert!(!probes.is_empty(), "no `probe` lines in {}", path.display());
    (release, probes)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("reading /proc/sys/kernel/osrelease")
        .trim()
        .to_owned()
}

/// Pure cgroup v2: cgroup2 at /sys/fs/cgroup, no v1 hierarchy, the cpu controller available.
///
/// # Panics
/// If any of that does not hold.
pub fn assert_pure_v2() {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    let v1: Vec<&str> = mounts
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("cgroup"))
        .collect();
    assert!(v1.is_empty(), "v1 cgroup hierarchies mounted: {v1:?}");
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(CGROUP)
                && l.split_whitespace().nth(2) == Some("cgroup2")),
        "no cgroup2 at {CGROUP}:\n{mounts}"
    );
    let controllers = fs::read_to_string(format!("{CGROUP}/cgroup.subtree_control"))
        .expect("reading the root's cgroup.subtree_control");
    assert!(
        controllers.split_whitespace().any(|c| c == "cpu"),
        "the cpu controller is not enabled for the root's children: {controllers:?}"
    );
}

/// How a probe attached: the first word in check's `loaded and attached (HOW …)`.
pub fn attach_mode(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("loaded and attached (")?;
    rest.split([' ', ')']).next()
}

/// Compares every probe in `podstat check --output json`'s output (`stdout`, `stderr` and
/// whether it exited 0) with the expectations; `tag` prefixes the table it prints. Returns
/// the probes that attached.
///
/// # Panics
/// If check printed no JSON or disagrees with the expectations, listing every disagreement.
pub fn compare_check(
    tag: &str,
    stdout: &[u8],
    stderr: &[u8],
    success: bool,
    expect: &BTreeMap<String, Expect>,
) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    let items: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "podstat check printed no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(stderr)
        )
    });
    let items = items.as_array().expect("check's JSON is an array");
    let field = |i: &serde_json::Value, k: &str| i[k].as_str().unwrap_or_default().to_owned();
    let mut failures = Vec::new();
    let mut attached = Vec::new();
    let mut seen = Vec::new();
    println!("{tag}: probe               expected            podstat check");
    for item in items.iter().filter(|i| i["area"] == "probe") {
        let (name, outcome, detail) = (
            field(item, "name"),
            field(item, "outcome"),
            field(item, "detail"),
        );
        seen.push(name.clone());
        let Some(want) = expect.get(&name) else {
            failures.push(format!(
                "probe {name} ({outcome}: {detail}) has no expectation for this kernel in xtask/vm-kernels.toml"
            ));
            continue;
        };
        let want_text = format!("{} {}", want.outcome, want.how.as_deref().unwrap_or(""));
        println!("{tag}: {name:<19} {want_text:<19} {outcome}: {detail}");
        if outcome != want.outcome {
            failures.push(format!(
                "probe {name}: expected {}, podstat check says {outcome}: {detail}",
                want.outcome
            ));
        } else if let Some(how) = &want.how
            && attach_mode(&detail) != Some(how.as_str())
        {
            failures.push(format!(
                "probe {name}: expected to attach by {how}, podstat check says: {detail}"
            ));
        }
        if outcome == "ok" {
            attached.push(name);
        }
    }
    for name in expect.keys().filter(|n| !seen.contains(n)) {
        failures.push(format!(
            "probe {name} is expected on this kernel but podstat check does not report it"
        ));
    }
    // check fails only for what is unsupported; `n/a` (no hardware to watch) is not a failure.
    let should_pass = expect.values().all(|e| e.outcome != "unsupported");
    if success != should_pass {
        failures.push(format!(
            "podstat check exited with success = {success}, expected {should_pass}"
        ));
    }
    assert!(
        failures.is_empty(),
        "podstat check disagrees with the expectations:\n  {}\n{text}",
        failures.join("\n  ")
    );
    attached
}
