//! CPU lists and masks as sysfs and procfs print them, the online CPUs, and where each CPU sits
//! (last-level cache and NUMA node), which the `net` collector exports and the steering probe's
//! locality classes use.
//!
//! The kernel prints lists with `%*pbl` (`0-3,8`) and masks with `%*pb` (`00000000,0000000f`),
//! <https://github.com/torvalds/linux/blob/v6.18/lib/vsprintf.c> (`bitmap_list_string`,
//! `bitmap_string`).

use std::{collections::BTreeMap, fs, path::Path};

use super::ParseError;

/// The highest CPU number a list may name. Kernels build with at most 8,192 CPUs
/// (`CONFIG_NR_CPUS`); the cap bounds what a list can make us allocate. It is on the CPU, not on
/// a range's width, so that two ranges that meet (`0-10000,7290-65535`) and the one range
/// they make (`0-65535`) are both accepted or both refused.
pub const MAX_CPU: u32 = 65_535;

/// Parses a CPU list (`0-3,8,10-11`), as in `smp_affinity_list`, `online`, `cpulist`. A CPU
/// above [`MAX_CPU`] is an error.
pub fn parse_cpu_list(s: &str) -> Result<Vec<u32>, ParseError> {
    let bad = || ParseError::CpuList(s.to_owned());
    let t = s.trim();
    let mut cpus = Vec::new();
    if t.is_empty() {
        return Ok(cpus);
    }
    for part in t.split(',') {
        // A single CPU is the range from it to itself.
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        if b < a || b > MAX_CPU {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

/// Parses a hex CPU mask in the kernel's `%*pb` form (`00000000,0000000f`), as in `rps_cpus`.
pub fn parse_cpu_mask(s: &str) -> Result<Vec<u32>, ParseError> {
    let bad = || ParseError::CpuMask(s.to_owned());
    let mut cpus = Vec::new();
    let mut bit = 0u32;
    for word in s.trim().rsplit(',') {
        let digits = word.trim();
        if digits.is_empty() || digits.len() > 8 {
            return Err(bad());
        }
        let v = u32::from_str_radix(digits, 16).map_err(|_| bad())?;
        for b in 0..32 {
            if v & (1 << b) != 0 {
                cpus.push(bit + b);
            }
        }
        bit += 32;
    }
    Ok(cpus)
}

/// The online CPUs (`devices/system/cpu/online`), or the `cpu<n>` directories.
pub fn online_cpus(sysfs: &Path) -> Vec<u32> {
    let cpu_dir = sysfs.join("devices/system/cpu");
    if let Some(list) = fs::read_to_string(cpu_dir.join("online"))
        .ok()
        .and_then(|s| parse_cpu_list(&s).ok())
    {
        return list;
    }
    let mut cpus: Vec<u32> = fs::read_dir(&cpu_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|s| s.strip_prefix("cpu"))
                        .and_then(|s| s.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    cpus.sort_unstable();
    cpus
}

/// Per-CPU placement: last-level cache and NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPlace {
    pub cpu: u32,
    /// The LLC, named by the lowest CPU that shares it (`shared_cpu_list` of the highest-level
    /// unified cache); the CPU itself when sysfs shows no cache.
    pub llc: u32,
    /// The NUMA node (`/sys/devices/system/node/node<n>/cpulist`); 0 without NUMA.
    pub node: u32,
}

/// The CPU topology from sysfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub cpus: Vec<CpuPlace>,
}

impl Topology {
    /// Reads the online CPUs' LLC and NUMA node under `sysfs`. What sysfs does not show takes
    /// the defaults above (no cache: the CPU itself; no node: 0), so this never fails.
    pub fn read(sysfs: &Path) -> Self {
        let cpu_dir = sysfs.join("devices/system/cpu");
        let online = online_cpus(sysfs);
        let mut node_of = BTreeMap::new();
        if let Ok(dir) = fs::read_dir(sysfs.join("devices/system/node")) {
            for e in dir.filter_map(Result::ok) {
                let name = e.file_name();
                let Some(n) = name
                    .to_str()
                    .and_then(|s| s.strip_prefix("node"))
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let list = fs::read_to_string(e.path().join("cpulist")).unwrap_or_default();
                for cpu in parse_cpu_list(&list).unwrap_or_default() {
                    node_of.insert(cpu, n);
                }
            }
        }
        let cpus = online
            .iter()
            .map(|&cpu| CpuPlace {
                cpu,
                llc: llc_of(&cpu_dir.join(format!("cpu{cpu}/cache"))).unwrap_or(cpu),
                node: node_of.get(&cpu).copied().unwrap_or(0),
            })
            .collect();
        Self { cpus }
    }

    pub fn get(&self, cpu: u32) -> Option<&CpuPlace> {
        self.cpus.iter().find(|p| p.cpu == cpu)
    }
}

/// The lowest CPU sharing the highest-level unified (or data) cache under `cache_dir`.
fn llc_of(cache_dir: &Path) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None;
    for e in fs::read_dir(cache_dir).ok()?.filter_map(Result::ok) {
        if !e.file_name().to_string_lossy().starts_with("index") {
            continue;
        }
        let p = e.path();
        let kind = fs::read_to_string(p.join("type")).unwrap_or_default();
        if !matches!(kind.trim(), "Unified" | "Data") {
            continue;
        }
        let Some(level) = fs::read_to_string(p.join("level"))
            .ok()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let Some(first) = fs::read_to_string(p.join("shared_cpu_list"))
            .ok()
            .and_then(|l| parse_cpu_list(&l).ok())
            .and_then(|l| l.into_iter().min())
        else {
            continue;
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, first));
        }
    }
    best.map(|(_, first)| first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_meet_parse_as_their_merged_form_does() {
        let both = parse_cpu_list("0-10000,7290-65535").expect("within MAX_CPU");
        let mut merged = both.clone();
        merged.sort_unstable();
        merged.dedup();
        assert_eq!(merged, parse_cpu_list("0-65535").expect("the merged form"));
    }

    #[test]
    fn cpu_lists_and_masks() {
        for (s, want) in [
            ("0-3,8,10-11", Some(vec![0, 1, 2, 3, 8, 10, 11])),
            ("5\n", Some(vec![5])),
            ("", Some(vec![])),
            ("3-1", None),
            ("x", None),
            ("65535", Some(vec![65_535])),
            ("65536", None),
            ("0-65536", None),
            // The fuzzer's procfs crash: two ranges within the old width cap that meet in a
            // range beyond it, so the list parsed and its merged form did not.
            ("000000-10000,7290-65537", None),
        ] {
            let got = parse_cpu_list(s);
            assert_eq!(got.clone().ok(), want, "{s:?}");
            if want.is_none() {
                assert_eq!(got, Err(ParseError::CpuList(s.to_owned())), "{s:?}");
            }
        }
        for (s, want) in [
            ("0\n", Some(vec![])),
            ("f", Some(vec![0, 1, 2, 3])),
            ("00000001,00000000", Some(vec![32])),
            ("00000000,00000000,00000005", Some(vec![0, 2])),
            ("g", None),
        ] {
            let got = parse_cpu_mask(s);
            assert_eq!(got.clone().ok(), want, "{s:?}");
            if want.is_none() {
                assert_eq!(got, Err(ParseError::CpuMask(s.to_owned())), "{s:?}");
            }
        }
    }

    #[test]
    fn topology_of_a_two_socket_fixture() {
        let sys = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hosts/net-mlx5/sys"
        ));
        let t = Topology::read(sys);
        let got: Vec<(u32, u32, u32)> = t.cpus.iter().map(|p| (p.cpu, p.llc, p.node)).collect();
        assert_eq!(got, vec![(0, 0, 0), (1, 0, 0), (2, 2, 1), (3, 2, 1)]);
    }

    /// The running host's topology: every online CPU placed, LLCs and nodes are CPUs/nodes
    /// that exist.
    #[test]
    fn topology_of_this_host() {
        let t = Topology::read(Path::new("/sys"));
        let online = online_cpus(Path::new("/sys"));
        assert_eq!(t.cpus.len(), online.len());
        for p in &t.cpus {
            assert!(online.contains(&p.llc), "{p:?}");
        }
    }
}
