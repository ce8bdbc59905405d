//! The shipped Prometheus rules, for tests that load them into a real Prometheus.

use std::path::PathBuf;

/// `deploy/prometheus/podstat.rules.yaml`.
pub fn rules_path() -> PathBuf {
    crate::deploy::deploy_dir().join("prometheus/podstat.rules.yaml")
}

/// The rules file with every alert's `for:` replaced by `for_` (e.g. `"10s"`), so that a test
/// with a scrape and evaluation interval of a few seconds sees alerts fire within a minute.
/// Every `for:` in the file is a line of its own, `        for: <duration>`; the rate windows
/// (`[5m]`) stay: they need only two samples.
///
/// # Panics
/// If `for_` is not a plain Prometheus duration, or the file has no `for:` line.
pub fn rules_with_for(rules_yaml: &str, for_: &str) -> String {
    assert!(
        !for_.is_empty()
            && for_
                .chars()
                .all(|c| c.is_ascii_digit() || "smhdwy".contains(c)),
        "{for_:?} is not a Prometheus duration like 10s"
    );
    let mut replaced = 0;
    let mut out = String::with_capacity(rules_yaml.len());
    for line in rules_yaml.lines() {
        let body = line.trim_start();
        if body.starts_with("for: ") {
            let indent = &line[..line.len() - body.len()];
            out.push_str(indent);
            out.push_str("for: ");
            out.push_str(for_);
            replaced += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(replaced > 0, "no `for:` line in the rules");
    out
}

/// A rules file that sets the throttling alert's threshold for one namespace (the per-namespace
/// override of README "Alerts"), to load next to the shipped rules.
///
/// # Panics
/// If the namespace is not a Kubernetes name or the threshold is not positive.
pub fn namespace_threshold_rules(namespace: &str, threshold: f64) -> String {
    assert!(
        !namespace.is_empty()
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{namespace:?} is not a namespace name"
    );
    assert!(
        threshold.is_finite() && threshold > 0.0,
        "threshold {threshold}"
    );
    format!(
        "groups:\n  - name: podstat.thresholds.test\n    rules:\n      \
         - record: podstat:cpu_throttled_wall_share:alert_threshold_namespace\n        \
         expr: vector({threshold})\n        labels:\n          namespace: {namespace}\n"
    )
}

/// Runs `promtool check rules` on a rules file given as text (written to a temporary
/// `podstat-test-*` file and removed); `Err` carries what promtool said.
///
/// # Panics
/// If the file cannot be written or promtool cannot be started.
pub fn promtool_check_rules(rules_yaml: &str) -> Result<(), String> {
    let path = std::env::temp_dir().join(format!(
        "podstat-test-rules-{}-{:x}.yaml",
        std::process::id(),
        rules_yaml.len()
    ));
    std::fs::write(&path, rules_yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("running promtool (Debian package prometheus; `cargo xtask test` installs it)");
    let _ = std::fs::remove_file(&path);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_threshold_rules_pass_promtool() {
        let rules = namespace_threshold_rules("podstat-test-e2e", 0.1);
        if let Err(said) = promtool_check_rules(&rules) {
            panic!("promtool check rules:\n{rules}\n{said}");
        }
        assert!(rules.contains("vector(0.1)") && rules.contains("namespace: podstat-test-e2e"));
        assert!(
            promtool_check_rules("groups: [{name: x, rules: [{record: y, expr: 'rate('}]}]")
                .is_err()
        );
    }

    #[test]
    fn every_for_is_replaced_and_nothing_else() {
        let path = rules_path();
        let rules = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let short = rules_with_for(&rules, "10s");
        let fors = |s: &str| {
            s.lines()
                .filter(|l| l.trim_start().starts_with("for:"))
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        };
        let alerts = rules.matches("- alert: ").count();
        assert_eq!(fors(&rules).len(), alerts, "one `for:` per alert");
        assert_eq!(fors(&short), vec!["for: 10s".to_owned(); alerts]);
        assert_eq!(rules.lines().count(), short.lines().count());
        assert!(!short.contains("for: 15m"));
    }
}
