//! Reads one cgroup's cpu files into a [`CgroupSample`].
//!
//! | field                | v2                         | v1                                             |
//! |----------------------|----------------------------|------------------------------------------------|
//! | `stat`               | `cpu.stat`                 | `cpu.stat`, usage from `<cpuacct>/cpuacct.usage` |
//! | `local_throttled_ns` | `cpu.stat.local` (6.8+)    | —                                              |
//! | `max`                | `cpu.max`                  | `cpu.cfs_quota_us` + `cpu.cfs_period_us`        |
//! | `burst_us`           | `cpu.max.burst` (5.14+)    | `cpu.cfs_burst_us` (5.14+)                      |
//! | `weight`             | `cpu.weight`               | `cpu.shares` → [`shares_to_weight`]             |
//! | `pressure`           | `cpu.pressure` (PSI)       | `cpu.pressure` if the kernel offers it          |
//!
//! `cpu.stat` is required: if it is gone the cgroup vanished ([`ErrorReason::Vanished`], no
//! sample). Every other file is optional: missing (ENOENT; EOPNOTSUPP for `cpu.pressure` with
//! PSI off) means `None`, any other read error is [`ErrorReason::Unreadable`] for that field.

use std::{fs::File, io, io::Read as _, path::Path};

use super::{
    discover::Discovered,
    error::{ErrorCounts, ErrorReason},
    layout::{CgroupVersion, Layout},
    parse::{
        CpuMax, CpuStat, Pressure, parse_cfs_quota_us, parse_cpu_max, parse_cpu_stat,
        parse_cpu_stat_local, parse_pressure, parse_u64, shares_to_weight,
    },
};

/// Everything read from one cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupSample {
    pub stat: CpuStat,
    /// v2 `cpu.stat.local` `throttled_usec`, in ns: time its run queues were throttled, by its
    /// own limit or an ancestor's.
    pub local_throttled_ns: Option<u64>,
    pub max: Option<CpuMax>,
    pub burst_us: Option<u64>,
    /// On the v2 scale [1, 10000]; v1 shares are converted.
    pub weight: Option<u64>,
    pub pressure: Option<Pressure>,
}

/// Reads `path` into `buf` (cleared first), reusing its allocation.
/// Reads a whole small file into `buf`, reusing its allocation. Unlike `read_to_string` it does
/// not stat the file for a size hint: cgroup files report size 0 or 4096 anyway, so that is a
/// wasted syscall (two, with the seek) per file per scrape. A short read ends the file, as it
/// does for kernfs seq files and regular files.
fn read_into(path: &Path, buf: &mut String) -> io::Result<()> {
    const CHUNK: usize = 4096;
    let mut bytes = std::mem::take(buf).into_bytes();
    bytes.clear();
    let result = (|| {
        let mut f = File::open(path)?;
        loop {
            let start = bytes.len();
            bytes.resize(start + CHUNK, 0);
            let n = f.read(&mut bytes[start..])?;
            bytes.truncate(start + n);
            if n < CHUNK {
                return Ok(());
            }
            if bytes.len() > 1 << 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "cgroup file larger than 1 MiB",
                ));
            }
        }
    })();
    match String::from_utf8(bytes) {
        Ok(s) => {
            *buf = s;
            result
        }
        Err(e) => {
            let mut bytes = e.into_bytes();
            bytes.clear();
            *buf = String::from_utf8(bytes).unwrap_or_default();
            result.and(Err(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8")))
        }
    }
}

/// Whether the optional counter files exist on this host, learnt from the first cgroup read
/// (they depend on the kernel and its boot options, not on the cgroup). `None`: not known yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presence {
    /// `cpu.pressure` (PSI; absent on cgroup v1 hierarchies and with `psi=0`).
    pub pressure: Option<bool>,
    /// `cpu.stat.local` (v2, kernel 6.8+).
    pub stat_local: Option<bool>,
}

/// Reads an optional file: `Some(())` with the content in `buf`, `None` if absent or unreadable
/// (the latter counted).
fn read_optional(path: &Path, buf: &mut String, errors: &mut ErrorCounts) -> Option<()> {
    match read_into(path, buf) {
        Ok(()) => Some(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        // PSI disabled (`psi=0`): the file exists but reading it fails with EOPNOTSUPP.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => None,
        Err(_) => {
            errors.add(ErrorReason::Unreadable);
            None
        }
    }
}

/// The configured limits of a cgroup: they change rarely (a resize), so the collector may cache
/// them for a while and read only the counters on every scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max: Option<CpuMax>,
    pub burst_us: Option<u64>,
    pub weight: Option<u64>,
}

/// Reads one cgroup's files into a sample: the counters ([`read_counters`]) and the limits
/// ([`read_limits`]). `None` if the cgroup vanished or its `cpu.stat` is unreadable (counted).
pub fn read_sample(
    layout: &Layout,
    d: &Discovered,
    buf: &mut String,
    errors: &mut ErrorCounts,
) -> Option<CgroupSample> {
    let mut sample = read_counters(layout, d, buf, errors, &mut Presence::default())?;
    let limits = read_limits(layout, d, buf, errors);
    sample.max = limits.max;
    sample.burst_us = limits.burst_us;
    sample.weight = limits.weight;
    Some(sample)
}

/// The counters: `cpu.stat`, v2 `cpu.stat.local`, `cpu.pressure`, v1 `cpuacct.usage`. The
/// limit fields of the result are `None`.
pub fn read_counters(
    layout: &Layout,
    d: &Discovered,
    buf: &mut String,
    errors: &mut ErrorCounts,
    presence: &mut Presence,
) -> Option<CgroupSample> {
    let version = layout.cpu_version;
    let mut path = layout.cpu.join(&d.rel_path);
    path.push("cpu.stat");
    if let Err(e) = read_into(&path, buf) {
        errors.add(if e.kind() == io::ErrorKind::NotFound {
            ErrorReason::Vanished
        } else {
            ErrorReason::Unreadable
        });
        return None;
    }
    let mut sample = CgroupSample {
        stat: parse_cpu_stat(buf, version, errors),
        ..CgroupSample::default()
    };
    if version == CgroupVersion::V2 && presence.stat_local != Some(false) {
        path.set_file_name("cpu.stat.local");
        let found = read_optional(&path, buf, errors).is_some();
        if found {
            sample.local_throttled_ns = parse_cpu_stat_local(buf, errors);
        }
        presence.stat_local.get_or_insert(found);
    }
    if presence.pressure != Some(false) {
        path.set_file_name("cpu.pressure");
        let found = read_optional(&path, buf, errors).is_some();
        if found {
            sample.pressure = Some(parse_pressure(buf, errors));
        }
        presence.pressure.get_or_insert(found);
    }
    if version == CgroupVersion::V1
        && let Some(cpuacct) = &layout.cpuacct
    {
        let mut usage = cpuacct.join(&d.rel_path);
        usage.push("cpuacct.usage");
        if read_optional(&usage, buf, errors).is_some() {
            sample.stat.usage_ns = parse_u64(buf, errors);
        }
    }
    Some(sample)
}

/// The limits: v2 `cpu.max`, `cpu.max.burst`, `cpu.weight`; v1 `cpu.cfs_quota_us`,
/// `cpu.cfs_period_us`, `cpu.cfs_burst_us`, `cpu.shares`. Missing files give `None` fields.
pub fn read_limits(
    layout: &Layout,
    d: &Discovered,
    buf: &mut String,
    errors: &mut ErrorCounts,
) -> Limits {
    let mut limits = Limits::default();
    let mut path = layout.cpu.join(&d.rel_path);
    path.push("cpu.max");
    let mut optional = |name: &str, buf: &mut String, errors: &mut ErrorCounts| {
        path.set_file_name(name);
        read_optional(&path, buf, errors)
    };
    match layout.cpu_version {
        CgroupVersion::V2 => {
            if optional("cpu.max", buf, errors).is_some() {
                limits.max = parse_cpu_max(buf, errors);
            }
            if optional("cpu.max.burst", buf, errors).is_some() {
                limits.burst_us = parse_u64(buf, errors);
            }
            if optional("cpu.weight", buf, errors).is_some() {
                limits.weight = parse_u64(buf, errors);
            }
        }
        CgroupVersion::V1 => {
            let quota = optional("cpu.cfs_quota_us", buf, errors)
                .and_then(|()| parse_cfs_quota_us(buf, errors));
            if let Some(quota_us) = quota
                && optional("cpu.cfs_period_us", buf, errors).is_some()
                && let Some(period_us) = parse_u64(buf, errors)
            {
                limits.max = Some(CpuMax {
                    quota_us,
                    period_us,
                });
            }
            if optional("cpu.cfs_burst_us", buf, errors).is_some() {
                limits.burst_us = parse_u64(buf, errors);
            }
            if optional("cpu.shares", buf, errors).is_some() {
                limits.weight = parse_u64(buf, errors).map(shares_to_weight);
            }
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::cgroup::{
        classify::CgroupKind,
        discover::{DiscoverOptions, discover},
        test_util::{TempTree, fixture, ids::*},
    };

    fn sample_at(fixture_name: &str, rel: &str) -> (Option<CgroupSample>, ErrorCounts) {
        let layout = Layout::detect(&fixture(fixture_name)).unwrap_or_else(|e| panic!("{e}"));
        let d = Discovered {
            rel_path: rel.to_owned(),
            id: 0,
            kind: CgroupKind::Other,
        };
        let mut errors = ErrorCounts::default();
        let mut buf = String::new();
        (read_sample(&layout, &d, &mut buf, &mut errors), errors)
    }

    fn max(quota_us: Option<u64>, period_us: u64) -> Option<CpuMax> {
        let m = CpuMax {
            quota_us,
            period_us,
        };
        (period_us > 0).then_some(m)
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of fixture expectations")]
    fn read_fixture_samples() {
        let sd_b = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a3d5f2e_1b4c_4d6e_9f0a_1b2c3d4e5f60.slice";
        let sd_g = "kubepods.slice/kubepods-pod0f1e2d3c_4b5a_4968_8776_a5b4c3d2e1f0.slice";
        let sd_e = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podc7b6a5d4_e3f2_4a1b_8c9d_0e1f2a3b4c5d.slice";
        // (fixture, rel_path, expected sample, (malformed, unknown_field))
        let cases: Vec<(&str, String, CgroupSample, (u64, u64))> = vec![
            (
                "v2-systemd-containerd",
                format!("{sd_b}/cri-containerd-{C1}.scope"),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(2_474_391_000),
                        user_ns: Some(1_598_222_000),
                        system_ns: Some(876_169_000),
                        nr_periods: Some(812),
                        nr_throttled: Some(97),
                        throttled_ns: Some(5_713_308_000),
                        nr_bursts: Some(0),
                        burst_ns: Some(0),
                        force_idle_ns: None,
                    },
                    local_throttled_ns: Some(5_102_119_000),
                    max: max(Some(50_000), 100_000),
                    burst_us: Some(0),
                    weight: Some(20),
                    pressure: Some(Pressure {
                        some_total_us: Some(6_013_842),
                        full_total_us: Some(5_789_120),
                    }),
                },
                (0, 0),
            ),
            (
                // Malformed nr_throttled and an unknown field; no burst/local/pressure files.
                "v2-systemd-containerd",
                format!("{sd_g}/cri-containerd-{C2}.scope"),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(91_224_801_000),
                        user_ns: Some(80_101_002_000),
                        system_ns: Some(11_123_799_000),
                        nr_periods: Some(30_211),
                        nr_throttled: None,
                        throttled_ns: Some(812_000),
                        nr_bursts: Some(0),
                        burst_ns: Some(0),
                        force_idle_ns: None,
                    },
                    local_throttled_ns: None,
                    max: max(Some(200_000), 100_000),
                    burst_us: None,
                    weight: Some(79),
                    pressure: None,
                },
                (1, 1),
            ),
            (
                "v2-systemd-containerd",
                sd_e.to_owned(),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(3_310_000),
                        user_ns: Some(2_100_000),
                        system_ns: Some(1_210_000),
                        nr_periods: Some(0),
                        nr_throttled: Some(0),
                        throttled_ns: Some(0),
                        nr_bursts: Some(0),
                        burst_ns: Some(0),
                        force_idle_ns: None,
                    },
                    local_throttled_ns: Some(0),
                    max: max(None, 100_000),
                    burst_us: Some(0),
                    weight: Some(1),
                    pressure: Some(Pressure {
                        some_total_us: Some(1_201),
                        full_total_us: Some(1_002),
                    }),
                },
                (0, 0),
            ),
            (
                // v1 with separate cpu and cpuacct mounts; wait_sum is an unknown field.
                "v1-cgroupfs-docker",
                format!("kubepods/burstable/pod{UID_B}/{C1}"),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(58_103_117_402),
                        nr_periods: Some(4310),
                        nr_throttled: Some(212),
                        throttled_ns: Some(18_227_650_419),
                        ..CpuStat::default()
                    },
                    local_throttled_ns: None,
                    max: max(Some(50_000), 100_000),
                    burst_us: None,
                    weight: Some(20),
                    pressure: None,
                },
                (0, 1),
            ),
            (
                // Malformed throttled_time.
                "v1-cgroupfs-docker",
                format!("kubepods/pod{UID_G}/{C2}"),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(7_001_002_003),
                        nr_periods: Some(100),
                        nr_throttled: Some(3),
                        throttled_ns: None,
                        ..CpuStat::default()
                    },
                    local_throttled_ns: None,
                    max: max(Some(100_000), 100_000),
                    burst_us: None,
                    weight: Some(39),
                    pressure: None,
                },
                (1, 0),
            ),
            (
                "v1-cpu,cpuacct-systemd",
                format!("{sd_b}/docker-{C1}.scope"),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(12_345_678_901),
                        nr_periods: Some(530),
                        nr_throttled: Some(41),
                        throttled_ns: Some(2_903_114_775),
                        nr_bursts: Some(2),
                        burst_ns: Some(15_000_000),
                        ..CpuStat::default()
                    },
                    local_throttled_ns: None,
                    max: max(Some(25_000), 100_000),
                    burst_us: Some(10_000),
                    weight: Some(10),
                    pressure: None,
                },
                (0, 0),
            ),
            (
                "hybrid-cgroupfs-containerd",
                format!("kubepods/burstable/pod{UID_B}/{C1}"),
                CgroupSample {
                    stat: CpuStat {
                        usage_ns: Some(4_400_000_000),
                        nr_periods: Some(60),
                        nr_throttled: Some(12),
                        throttled_ns: Some(901_000_000),
                        nr_bursts: Some(0),
                        burst_ns: Some(0),
                        ..CpuStat::default()
                    },
                    local_throttled_ns: None,
                    max: max(Some(30_000), 100_000),
                    burst_us: Some(0),
                    weight: Some(8),
                    pressure: None,
                },
                (0, 0),
            ),
        ];
        for (fx, rel, want, (malformed, unknown)) in cases {
            let (got, errors) = sample_at(fx, &rel);
            assert_eq!(got.as_ref(), Some(&want), "{fx} {rel}");
            assert_eq!(
                errors.get(ErrorReason::Malformed),
                malformed,
                "{fx} {rel}: malformed"
            );
            assert_eq!(
                errors.get(ErrorReason::UnknownField),
                unknown,
                "{fx} {rel}: unknown"
            );
            assert_eq!(errors.get(ErrorReason::Vanished), 0, "{fx} {rel}");
            assert_eq!(errors.get(ErrorReason::Unreadable), 0, "{fx} {rel}");
        }
    }

    #[test]
    fn every_discovered_fixture_cgroup_reads() {
        for fx in [
            "v2-systemd-containerd",
            "v2-cgroupfs-crio",
            "v1-cgroupfs-docker",
            "v1-cpu,cpuacct-systemd",
            "hybrid-cgroupfs-containerd",
        ] {
            let layout = Layout::detect(&fixture(fx)).unwrap_or_else(|e| panic!("{e}"));
            let mut errors = ErrorCounts::default();
            let found = discover(&layout, &DiscoverOptions::default(), &mut errors);
            assert!(!found.is_empty(), "{fx}");
            let mut buf = String::new();
            for d in &found {
                let s = read_sample(&layout, d, &mut buf, &mut errors);
                let s = s.unwrap_or_else(|| panic!("{fx} {}: no sample", d.rel_path));
                assert!(s.stat.usage_ns.is_some(), "{fx} {}: usage", d.rel_path);
                assert!(s.max.is_some(), "{fx} {}: max", d.rel_path);
                assert!(s.weight.is_some(), "{fx} {}: weight", d.rel_path);
            }
            assert_eq!(errors.get(ErrorReason::Vanished), 0, "{fx}");
            assert_eq!(errors.get(ErrorReason::Unreadable), 0, "{fx}");
        }
    }

    #[test]
    fn vanished_cgroup_is_counted() {
        let (got, errors) = sample_at("v2-systemd-containerd", "kubepods.slice/gone.slice");
        assert_eq!(got, None);
        assert_eq!(errors.get(ErrorReason::Vanished), 1);
        assert_eq!(errors.total(), 1);
    }

    #[test]
    fn unreadable_cpu_stat_is_counted() {
        // root ignores file modes; a directory named cpu.stat gives EISDIR on read instead.
        let t = TempTree::new("read-unreadable");
        t.file("cgroup.controllers", "cpu\n");
        t.file("a/cpu.stat/x", "");
        t.file("b/cpu.stat", "usage_usec 1\n");
        let path = t.path().join("b/cpu.stat");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000))
            .unwrap_or_else(|e| panic!("{e}"));
        let layout = Layout::detect(t.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut buf = String::new();
        for rel in ["a", "b"] {
            let d = Discovered {
                rel_path: rel.to_owned(),
                id: 0,
                kind: CgroupKind::Other,
            };
            let mut errors = ErrorCounts::default();
            let got = read_sample(&layout, &d, &mut buf, &mut errors);
            let readable_anyway = rel == "b" && got.is_some(); // running as root
            if !readable_anyway {
                assert_eq!(got, None, "{rel}");
                assert_eq!(errors.get(ErrorReason::Unreadable), 1, "{rel}");
            }
        }
    }

    #[test]
    fn v1_without_cpuacct_has_no_usage() {
        let t = TempTree::new("read-v1-no-cpuacct");
        t.file("cpu/cgroup.procs", "");
        t.file(
            "cpu/x/cpu.stat",
            "nr_periods 1\nnr_throttled 0\nthrottled_time 0\n",
        );
        t.file("cpu/x/cpu.shares", "1024\n");
        let layout = Layout::detect(t.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layout.cpuacct, None);
        let d = Discovered {
            rel_path: "x".to_owned(),
            id: 0,
            kind: CgroupKind::Other,
        };
        let mut errors = ErrorCounts::default();
        let got = read_sample(&layout, &d, &mut String::new(), &mut errors)
            .unwrap_or_else(|| panic!("no sample"));
        assert_eq!(got.stat.usage_ns, None);
        assert_eq!(got.stat.nr_periods, Some(1));
        assert_eq!(got.max, None);
        assert_eq!(got.weight, Some(39));
        assert_eq!(errors.total(), 0);
    }
}
