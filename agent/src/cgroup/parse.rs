//! Parsers for the cgroup cpu files, pure functions on `&str`.
//!
//! They are tolerant: a key this code does not know is counted as
//! [`ErrorReason::UnknownField`] and skipped, a value that is not a number is counted as
//! [`ErrorReason::Malformed`] and only that field is left `None`. They never panic.
//!
//! Times in [`CpuStat`] are kept in **nanoseconds** for both versions: cgroup v1 reports
//! `throttled_time` and `burst_time` in ns and v2 reports `*_usec`, so ns keeps v1's precision
//! and v2's values are multiplied by 1000 (a value that would overflow `u64` is Malformed).

use super::{
    error::{ErrorCounts, ErrorReason},
    layout::CgroupVersion,
};

/// `cpu.stat` (plus `cpuacct.usage` on v1) in common units.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct CpuStat {
    /// v2 `usage_usec`; v1 `cpuacct.usage` (filled in by the reader).
    pub usage_ns: Option<u64>,
    /// v2 `user_usec`.
    pub user_ns: Option<u64>,
    /// v2 `system_usec`.
    pub system_ns: Option<u64>,
    /// Enforcement periods that elapsed while the cgroup had runnable tasks.
    pub nr_periods: Option<u64>,
    /// Periods in which the quota ran out.
    pub nr_throttled: Option<u64>,
    /// v2 `throttled_usec`, v1 `throttled_time`: throttled time summed over CPUs.
    pub throttled_ns: Option<u64>,
    /// Periods in which the cgroup used burst quota.
    pub nr_bursts: Option<u64>,
    /// v2 `burst_usec`, v1 `burst_time`.
    pub burst_ns: Option<u64>,
    /// v2 `core_sched.force_idle_usec` (core scheduling).
    pub force_idle_ns: Option<u64>,
}

/// `cpu.max` (v2) or `cpu.cfs_quota_us` + `cpu.cfs_period_us` (v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// Runtime allowed per period in µs; `None` means unlimited (`max`, or `-1` on v1).
    pub quota_us: Option<u64>,
    /// Period length in µs.
    pub period_us: u64,
}

/// Cumulative totals from `cpu.pressure` (PSI), in µs.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// `some`: time at least one task was runnable but waiting for a CPU.
    pub some_total_us: Option<u64>,
    /// `full`: time all non-idle tasks were waiting (kernel 5.13+ reports it for cgroups).
    pub full_total_us: Option<u64>,
}

/// Which field of [`CpuStat`] a key fills, and the factor to nanoseconds.
fn cpu_stat_field<'s>(
    stat: &'s mut CpuStat,
    key: &str,
    version: CgroupVersion,
) -> Option<(&'s mut Option<u64>, u64)> {
    Some(match (version, key) {
        (CgroupVersion::V2, "usage_usec") => (&mut stat.usage_ns, 1000),
        (CgroupVersion::V2, "user_usec") => (&mut stat.user_ns, 1000),
        (CgroupVersion::V2, "system_usec") => (&mut stat.system_ns, 1000),
        (CgroupVersion::V2, "core_sched.force_idle_usec") => (&mut stat.force_idle_ns, 1000),
        (_, "nr_periods") => (&mut stat.nr_periods, 1),
        (_, "nr_throttled") => (&mut stat.nr_throttled, 1),
        (_, "nr_bursts") => (&mut stat.nr_bursts, 1),
        (CgroupVersion::V2, "throttled_usec") => (&mut stat.throttled_ns, 1000),
        (CgroupVersion::V2, "burst_usec") => (&mut stat.burst_ns, 1000),
        (CgroupVersion::V1, "throttled_time") => (&mut stat.throttled_ns, 1),
        (CgroupVersion::V1, "burst_time") => (&mut stat.burst_ns, 1),
        _ => return None,
    })
}

/// Splits `key value` lines; blank lines are skipped, a line that is not exactly two fields is
/// counted as Malformed.
fn key_values<'a>(
    text: &'a str,
    errors: &mut ErrorCounts,
    mut f: impl FnMut(&'a str, &'a str, &mut ErrorCounts),
) {
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        match (it.next(), it.next(), it.next()) {
            (None, _, _) => {}
            (Some(k), Some(v), None) => f(k, v, errors),
            _ => errors.add(ErrorReason::Malformed),
        }
    }
}

/// Parses a decimal `u64` and scales it, counting Malformed on failure or overflow.
fn number(value: &str, scale: u64, errors: &mut ErrorCounts) -> Option<u64> {
    let n = value.parse::<u64>().ok().and_then(|n| n.checked_mul(scale));
    if n.is_none() {
        errors.add(ErrorReason::Malformed);
    }
    n
}

/// Parses `cpu.stat` of the given version into nanoseconds and counts.
pub fn parse_cpu_stat(text: &str, version: CgroupVersion, errors: &mut ErrorCounts) -> CpuStat {
    let mut stat = CpuStat::default();
    key_values(text, errors, |key, value, errors| {
        match cpu_stat_field(&mut stat, key, version) {
            Some((slot, scale)) => *slot = number(value, scale, errors),
            // v1 `wait_sum` (schedstats), fields of newer kernels.
            None => errors.add(ErrorReason::UnknownField),
        }
    });
    stat
}

/// Parses v2 `cpu.stat.local` (kernel 6.8+): `throttled_usec`, returned in nanoseconds.
pub fn parse_cpu_stat_local(text: &str, errors: &mut ErrorCounts) -> Option<u64> {
    let mut throttled = None;
    key_values(text, errors, |key, value, errors| {
        if key == "throttled_usec" {
            throttled = number(value, 1000, errors);
        } else {
            errors.add(ErrorReason::UnknownField);
        }
    });
    throttled
}

/// Parses v2 `cpu.max`: `max 100000` or `50000 100000`.
pub fn parse_cpu_max(text: &str, errors: &mut ErrorCounts) -> Option<CpuMax> {
    let mut it = text.split_ascii_whitespace();
    let parsed = match (it.next(), it.next(), it.next()) {
        (Some(quota), Some(period), None) => {
            let quota_us = if quota == "max" {
                Some(None)
            } else {
                quota.parse::<u64>().ok().map(Some)
            };
            match (quota_us, period.parse::<u64>()) {
                (Some(quota_us), Ok(period_us)) => Some(CpuMax {
                    quota_us,
                    period_us,
                }),
                _ => None,
            }
        }
        _ => None,
    };
    if parsed.is_none() {
        errors.add(ErrorReason::Malformed);
    }
    parsed
}

/// Parses v1 `cpu.cfs_quota_us` (a signed number, `-1` = unlimited) to the quota in µs.
/// `Some(None)` is unlimited; `None` is malformed (counted).
pub fn parse_cfs_quota_us(text: &str, errors: &mut ErrorCounts) -> Option<Option<u64>> {
    match text.trim().parse::<i64>() {
        Ok(q) if q < 0 => Some(None),
        Ok(q) => Some(u64::try_from(q).ok()),
        Err(_) => {
            errors.add(ErrorReason::Malformed);
            None
        }
    }
}

/// Parses v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` into a [`CpuMax`].
pub fn parse_cfs_quota_period(
    quota_text: &str,
    period_text: &str,
    errors: &mut ErrorCounts,
) -> Option<CpuMax> {
    let quota_us = parse_cfs_quota_us(quota_text, errors)?;
    let period_us = parse_u64(period_text, errors)?;
    Some(CpuMax {
        quota_us,
        period_us,
    })
}

/// Parses a file holding one unsigned number: `cpu.max.burst`, `cpu.cfs_burst_us`,
/// `cpu.cfs_period_us`, `cpu.weight`, `cpu.shares`, `cpuacct.usage`.
pub fn parse_u64(text: &str, errors: &mut ErrorCounts) -> Option<u64> {
    number(text.trim(), 1, errors)
}

/// Converts v1 `cpu.shares` to the v2 `cpu.weight` scale.
///
/// `weight = 1 + ((shares - 2) * 9999) / 262142`, with shares clamped to the kernel's range
/// [2, 262144], so the result lies in [1, 10000]. This is the mapping runc, crun and the kubelet
/// use when they translate shares to weight (the default 1024 shares gives weight 39, not 100:
/// the two scales are not proportional, so compare weights within one version only).
#[must_use]
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Parses `cpu.pressure`: `some avg10=0.00 avg60=0.00 avg300=0.00 total=1234` and a `full` line.
pub fn parse_pressure(text: &str, errors: &mut ErrorCounts) -> Pressure {
    let mut p = Pressure::default();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(kind) = it.next() else { continue };
        let slot = match kind {
            "some" => &mut p.some_total_us,
            "full" => &mut p.full_total_us,
            _ => {
                errors.add(ErrorReason::UnknownField);
                continue;
            }
        };
        match it.find_map(|t| t.strip_prefix("total=")) {
            Some(total) => *slot = number(total, 1, errors),
            None => errors.add(ErrorReason::Malformed),
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;

    fn counts(e: &ErrorCounts) -> (u64, u64) {
        (
            e.get(ErrorReason::Malformed),
            e.get(ErrorReason::UnknownField),
        )
    }

    const V2_FULL: &str = "usage_usec 2474391\nuser_usec 1598222\nsystem_usec 876169\n\
        core_sched.force_idle_usec 0\nnr_periods 812\nnr_throttled 97\nthrottled_usec 5713308\n\
        nr_bursts 3\nburst_usec 42000\n";
    const V1_FULL: &str = "nr_periods 4310\nnr_throttled 212\nthrottled_time 18227650419\n\
        wait_sum 99887766\nnr_bursts 0\nburst_time 0\n";

    /// (name, input, version, expected, (malformed, `unknown_field`))
    type StatCase = (
        &'static str,
        &'static str,
        CgroupVersion,
        CpuStat,
        (u64, u64),
    );

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of cases")]
    fn cpu_stat_table() {
        let v2 = CpuStat {
            usage_ns: Some(2_474_391_000),
            user_ns: Some(1_598_222_000),
            system_ns: Some(876_169_000),
            force_idle_ns: Some(0),
            nr_periods: Some(812),
            nr_throttled: Some(97),
            throttled_ns: Some(5_713_308_000),
            nr_bursts: Some(3),
            burst_ns: Some(42_000_000),
        };
        let v1 = CpuStat {
            nr_periods: Some(4310),
            nr_throttled: Some(212),
            throttled_ns: Some(18_227_650_419),
            nr_bursts: Some(0),
            burst_ns: Some(0),
            ..CpuStat::default()
        };
        let usage_only = CpuStat {
            usage_ns: Some(1000),
            user_ns: Some(0),
            system_ns: Some(1000),
            ..CpuStat::default()
        };
        let cases: Vec<StatCase> = vec![
            ("v2 full", V2_FULL, CgroupVersion::V2, v2.clone(), (0, 0)),
            (
                "v2 root: usage only",
                "usage_usec 1\nuser_usec 0\nsystem_usec 1\n",
                CgroupVersion::V2,
                usage_only,
                (0, 0),
            ),
            ("v1 with wait_sum", V1_FULL, CgroupVersion::V1, v1, (0, 1)),
            (
                "v1 old kernel: no burst",
                "nr_periods 1\nnr_throttled 0\nthrottled_time 0\n",
                CgroupVersion::V1,
                CpuStat {
                    nr_periods: Some(1),
                    nr_throttled: Some(0),
                    throttled_ns: Some(0),
                    ..CpuStat::default()
                },
                (0, 0),
            ),
            ("empty", "", CgroupVersion::V2, CpuStat::default(), (0, 0)),
            (
                "blank lines",
                "\n\n  \n",
                CgroupVersion::V1,
                CpuStat::default(),
                (0, 0),
            ),
            (
                "bad number only spoils its field",
                "nr_periods 10\nnr_throttled abc\nthrottled_usec 5\n",
                CgroupVersion::V2,
                CpuStat {
                    nr_periods: Some(10),
                    throttled_ns: Some(5000),
                    ..CpuStat::default()
                },
                (1, 0),
            ),
            (
                "negative, missing value, extra field",
                "nr_periods -1\nnr_throttled\nthrottled_usec 1 2\nnr_bursts 7",
                CgroupVersion::V2,
                CpuStat {
                    nr_bursts: Some(7),
                    ..CpuStat::default()
                },
                (3, 0),
            ),
            (
                "usec overflow when scaled",
                "usage_usec 18446744073709551615\n",
                CgroupVersion::V2,
                CpuStat::default(),
                (1, 0),
            ),
            (
                "v1 keys in a v2 file are unknown",
                "throttled_time 5\nburst_time 1\nnr_periods 2\n",
                CgroupVersion::V2,
                CpuStat {
                    nr_periods: Some(2),
                    ..CpuStat::default()
                },
                (0, 2),
            ),
            (
                "v2 keys in a v1 file are unknown",
                "throttled_usec 5\nusage_usec 1\n",
                CgroupVersion::V1,
                CpuStat::default(),
                (0, 2),
            ),
            (
                "unknown future field",
                "nr_periods 3\nnr_new_thing 5\n",
                CgroupVersion::V2,
                CpuStat {
                    nr_periods: Some(3),
                    ..CpuStat::default()
                },
                (0, 1),
            ),
            (
                "CRLF and tabs",
                "nr_periods\t4\r\nnr_throttled 1\r\n",
                CgroupVersion::V1,
                CpuStat {
                    nr_periods: Some(4),
                    nr_throttled: Some(1),
                    ..CpuStat::default()
                },
                (0, 0),
            ),
        ];
        for (name, text, version, want, want_errs) in cases {
            let mut e = ErrorCounts::default();
            assert_eq!(parse_cpu_stat(text, version, &mut e), want, "{name}");
            assert_eq!(counts(&e), want_errs, "{name}: (malformed, unknown)");
        }
    }

    #[test]
    fn cpu_stat_local_table() {
        let cases = [
            ("throttled_usec 1500\n", Some(1_500_000), (0, 0)),
            ("", None, (0, 0)),
            ("throttled_usec x\n", None, (1, 0)),
            ("throttled_usec 2\nother 1\n", Some(2000), (0, 1)),
        ];
        for (text, want, errs) in cases {
            let mut e = ErrorCounts::default();
            assert_eq!(parse_cpu_stat_local(text, &mut e), want, "{text:?}");
            assert_eq!(counts(&e), errs, "{text:?}");
        }
    }

    #[test]
    fn cpu_max_table() {
        let m = |q: Option<u64>, p: u64| {
            Some(CpuMax {
                quota_us: q,
                period_us: p,
            })
        };
        let cases = [
            ("max 100000\n", m(None, 100_000)),
            ("50000 100000\n", m(Some(50_000), 100_000)),
            ("1000 1000", m(Some(1000), 1000)),
            ("max\n", None),
            ("", None),
            ("50000 max\n", None),
            ("-1 100000\n", None),
            ("1 2 3\n", None),
            ("MAX 100000\n", None),
        ];
        for (text, want) in cases {
            let mut e = ErrorCounts::default();
            assert_eq!(parse_cpu_max(text, &mut e), want, "{text:?}");
            assert_eq!(
                e.get(ErrorReason::Malformed),
                u64::from(want.is_none()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn cfs_quota_period_table() {
        let m = |q: Option<u64>, p: u64| {
            Some(CpuMax {
                quota_us: q,
                period_us: p,
            })
        };
        let cases = [
            ("-1\n", "100000\n", m(None, 100_000), 0),
            ("150000\n", "100000\n", m(Some(150_000), 100_000), 0),
            ("0\n", "100000\n", m(Some(0), 100_000), 0),
            ("-5\n", "100000\n", m(None, 100_000), 0),
            ("x\n", "100000\n", None, 1),
            ("-1\n", "-1\n", None, 1),
            ("", "", None, 1),
        ];
        for (q, p, want, malformed) in cases {
            let mut e = ErrorCounts::default();
            assert_eq!(parse_cfs_quota_period(q, p, &mut e), want, "{q:?} {p:?}");
            assert_eq!(e.get(ErrorReason::Malformed), malformed, "{q:?} {p:?}");
        }
    }

    #[test]
    fn u64_table() {
        let cases = [
            ("0\n", Some(0)),
            ("100\n", Some(100)),
            (" 42 \n", Some(42)),
            ("18446744073709551615\n", Some(u64::MAX)),
            ("18446744073709551616\n", None),
            ("-1\n", None),
            ("", None),
            ("1 2", None),
        ];
        for (text, want) in cases {
            let mut e = ErrorCounts::default();
            assert_eq!(parse_u64(text, &mut e), want, "{text:?}");
            assert_eq!(
                e.get(ErrorReason::Malformed),
                u64::from(want.is_none()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn shares_to_weight_table() {
        let cases = [
            (0, 1),
            (2, 1),
            (3, 1),
            (1024, 39),
            (2048, 79),
            (102, 4),
            (262_144, 10_000),
            (u64::MAX, 10_000),
        ];
        for (shares, want) in cases {
            assert_eq!(shares_to_weight(shares), want, "shares {shares}");
        }
    }

    #[test]
    fn pressure_table() {
        let p = |s: Option<u64>, f: Option<u64>| Pressure {
            some_total_us: s,
            full_total_us: f,
        };
        let cases = [
            (
                "some avg10=0.12 avg60=0.05 avg300=0.01 total=4827361\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=918273\n",
                p(Some(4_827_361), Some(918_273)),
                (0, 0),
            ),
            (
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                p(Some(0), None),
                (0, 0),
            ),
            ("", p(None, None), (0, 0)),
            ("some avg10=0.00\n", p(None, None), (1, 0)),
            ("some total=abc\nfull total=5\n", p(None, Some(5)), (1, 0)),
            ("half total=5\n", p(None, None), (0, 1)),
        ];
        for (text, want, errs) in cases {
            let mut e = ErrorCounts::default();
            assert_eq!(parse_pressure(text, &mut e), want, "{text:?}");
            assert_eq!(counts(&e), errs, "{text:?}");
        }
    }

    /// Renders a stat the way the kernel prints it (all fields present).
    fn render(s: &CpuStat, version: CgroupVersion) -> String {
        let v = |x: Option<u64>| x.unwrap_or_default();
        let mut out = String::new();
        match version {
            CgroupVersion::V2 => {
                for (k, x) in [
                    ("usage_usec", s.usage_ns),
                    ("user_usec", s.user_ns),
                    ("system_usec", s.system_ns),
                    ("core_sched.force_idle_usec", s.force_idle_ns),
                ] {
                    let _ = writeln!(out, "{k} {}", v(x) / 1000);
                }
                let _ = writeln!(out, "nr_periods {}", v(s.nr_periods));
                let _ = writeln!(out, "nr_throttled {}", v(s.nr_throttled));
                let _ = writeln!(out, "throttled_usec {}", v(s.throttled_ns) / 1000);
                let _ = writeln!(out, "nr_bursts {}", v(s.nr_bursts));
                let _ = writeln!(out, "burst_usec {}", v(s.burst_ns) / 1000);
            }
            CgroupVersion::V1 => {
                let _ = writeln!(out, "nr_periods {}", v(s.nr_periods));
                let _ = writeln!(out, "nr_throttled {}", v(s.nr_throttled));
                let _ = writeln!(out, "throttled_time {}", v(s.throttled_ns));
                let _ = writeln!(out, "nr_bursts {}", v(s.nr_bursts));
                let _ = writeln!(out, "burst_time {}", v(s.burst_ns));
            }
        }
        out
    }

    const MAX_USEC: u64 = u64::MAX / 1000;

    prop_compose! {
        fn v2_stat()(
            usec in proptest::array::uniform6(0..=MAX_USEC),
            counts in proptest::array::uniform3(any::<u64>()),
        ) -> CpuStat {
            CpuStat {
                usage_ns: Some(usec[0] * 1000),
                user_ns: Some(usec[1] * 1000),
                system_ns: Some(usec[2] * 1000),
                force_idle_ns: Some(usec[3] * 1000),
                throttled_ns: Some(usec[4] * 1000),
                burst_ns: Some(usec[5] * 1000),
                nr_periods: Some(counts[0]),
                nr_throttled: Some(counts[1]),
                nr_bursts: Some(counts[2]),
            }
        }
    }

    prop_compose! {
        fn v1_stat()(n in proptest::array::uniform5(any::<u64>())) -> CpuStat {
            CpuStat {
                nr_periods: Some(n[0]),
                nr_throttled: Some(n[1]),
                throttled_ns: Some(n[2]),
                nr_bursts: Some(n[3]),
                burst_ns: Some(n[4]),
                ..CpuStat::default()
            }
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,300}", v1 in any::<bool>()) {
            let version = if v1 { CgroupVersion::V1 } else { CgroupVersion::V2 };
            let mut e = ErrorCounts::default();
            let _ = parse_cpu_stat(&text, version, &mut e);
            let _ = parse_cpu_stat_local(&text, &mut e);
            let _ = parse_cpu_max(&text, &mut e);
            let _ = parse_cfs_quota_period(&text, &text, &mut e);
            let _ = parse_u64(&text, &mut e);
            let _ = parse_pressure(&text, &mut e);
        }

        #[test]
        fn parsers_never_panic_on_near_valid_lines(
            lines in proptest::collection::vec(
                "(usage_usec|nr_periods|throttled_time|throttled_usec|some|full|max|-1)[ \t]{0,2}(total=)?-?[0-9]{0,25}",
                0..12,
            ),
            v1 in any::<bool>(),
        ) {
            let text = lines.join("\n");
            let version = if v1 { CgroupVersion::V1 } else { CgroupVersion::V2 };
            let mut e = ErrorCounts::default();
            let _ = parse_cpu_stat(&text, version, &mut e);
            let _ = parse_cpu_max(&text, &mut e);
            let _ = parse_pressure(&text, &mut e);
        }

        #[test]
        fn v2_cpu_stat_round_trips(stat in v2_stat()) {
            let mut e = ErrorCounts::default();
            let got = parse_cpu_stat(&render(&stat, CgroupVersion::V2), CgroupVersion::V2, &mut e);
            prop_assert_eq!(got, stat);
            prop_assert_eq!(e.total(), 0);
        }

        #[test]
        fn v1_cpu_stat_round_trips(stat in v1_stat()) {
            let mut e = ErrorCounts::default();
            let got = parse_cpu_stat(&render(&stat, CgroupVersion::V1), CgroupVersion::V1, &mut e);
            prop_assert_eq!(got, stat);
            prop_assert_eq!(e.total(), 0);
        }

        #[test]
        fn shares_to_weight_in_range_and_monotonic(a in any::<u64>(), b in any::<u64>()) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let (wl, wh) = (shares_to_weight(lo), shares_to_weight(hi));
            prop_assert!((1..=10_000).contains(&wl));
            prop_assert!(wl <= wh);
        }
    }
}
