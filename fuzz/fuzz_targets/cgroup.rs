//! The cgroup cpu files (`cpu.stat`, `cpu.stat.local`, `cpu.max`, `cpu.cfs_quota_us`,
//! `cpu.cfs_period_us`, single numbers, `cpu.pressure`) and cgroup paths (classify), all on
//! the same input. Properties: what a parser reads, rendered the way the kernel writes it,
//! reads back the same without errors; classify only yields well-formed ids.
#![no_main]

use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use podstat::cgroup::{
    CgroupKind, CgroupVersion, CpuStat, ErrorCounts, classify,
    parse::{
        parse_cfs_quota_period, parse_cfs_quota_us, parse_cpu_max, parse_cpu_stat,
        parse_cpu_stat_local, parse_pressure, parse_u64, shares_to_weight,
    },
};

/// The fields of `s` that are set, as `key value` lines of `version`'s cpu.stat.
fn render(s: &CpuStat, version: CgroupVersion) -> String {
    let usec = |x: u64| x / 1000;
    let fields: Vec<(&str, Option<u64>)> = match version {
        CgroupVersion::V2 => vec![
            ("usage_usec", s.usage_ns.map(usec)),
            ("user_usec", s.user_ns.map(usec)),
            ("system_usec", s.system_ns.map(usec)),
            ("core_sched.force_idle_usec", s.force_idle_ns.map(usec)),
            ("nr_periods", s.nr_periods),
            ("nr_throttled", s.nr_throttled),
            ("throttled_usec", s.throttled_ns.map(usec)),
            ("nr_bursts", s.nr_bursts),
            ("burst_usec", s.burst_ns.map(usec)),
        ],
        CgroupVersion::V1 => vec![
            ("nr_periods", s.nr_periods),
            ("nr_throttled", s.nr_throttled),
            ("throttled_time", s.throttled_ns),
            ("nr_bursts", s.nr_bursts),
            ("burst_time", s.burst_ns),
        ],
    };
    let mut out = String::new();
    for (k, v) in fields {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} {v}");
        }
    }
    out
}

fn lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// A UUID (`8-4-4-4-12` lowercase hex) or 32 lowercase hex digits.
fn uid_shaped(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    (lens == [8, 4, 4, 4, 12] || lens == [32]) && groups.iter().all(|g| g.bytes().all(lower_hex))
}

fuzz_target!(|data: &[u8]| {
    // The kernel's files are text; the readers refuse what is not UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for version in [CgroupVersion::V1, CgroupVersion::V2] {
        let mut errors = ErrorCounts::default();
        let stat = parse_cpu_stat(text, version, &mut errors);
        let mut again_errors = ErrorCounts::default();
        let again = parse_cpu_stat(&render(&stat, version), version, &mut again_errors);
        assert_eq!(again, stat, "{version:?} cpu.stat does not read back");
        assert_eq!(
            again_errors.total(),
            0,
            "{version:?} cpu.stat re-read has errors"
        );
    }

    let mut errors = ErrorCounts::default();
    let _ = parse_cpu_stat_local(text, &mut errors);
    if let Some(max) = parse_cpu_max(text, &mut errors) {
        let quota = max
            .quota_us
            .map_or_else(|| "max".to_owned(), |q| q.to_string());
        let again = parse_cpu_max(&format!("{quota} {}\n", max.period_us), &mut errors);
        assert_eq!(again, Some(max), "cpu.max does not read back");
    }
    let _ = parse_cfs_quota_us(text, &mut errors);
    // The quota and period files split at the first newline.
    let (quota, period) = text.split_once('\n').unwrap_or((text, ""));
    let _ = parse_cfs_quota_period(quota, period, &mut errors);
    if let Some(shares) = parse_u64(text, &mut errors) {
        let w = shares_to_weight(shares);
        assert!((1..=10_000).contains(&w), "weight {w} of {shares} shares");
    }
    let pressure = parse_pressure(text, &mut errors);
    let mut rendered = String::new();
    for (kind, total) in [
        ("some", pressure.some_total_us),
        ("full", pressure.full_total_us),
    ] {
        if let Some(t) = total {
            let _ = writeln!(
                rendered,
                "{kind} avg10=0.00 avg60=0.00 avg300=0.00 total={t}"
            );
        }
    }
    let mut again_errors = ErrorCounts::default();
    assert_eq!(parse_pressure(&rendered, &mut again_errors), pressure);
    assert_eq!(again_errors.total(), 0);

    match classify(text) {
        CgroupKind::Container {
            pod_uid,
            container_id,
            ..
        } => {
            assert_eq!(container_id.len(), 64, "container id {container_id:?}");
            assert!(
                container_id.bytes().all(lower_hex),
                "container id {container_id:?}"
            );
            assert!(uid_shaped(&pod_uid), "pod uid {pod_uid:?}");
        }
        CgroupKind::Pod { pod_uid, .. } => assert!(uid_shaped(&pod_uid), "pod uid {pod_uid:?}"),
        _ => {}
    }
});
