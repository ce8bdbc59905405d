//! `/proc/net/softnet_stat`: the receive softirq's counters per CPU.
//!
//! podstat's own parser, not the `procfs` crate's: procfs 0.18 (`procfs` and `procfs-core`) has
//! no parser for `/proc/net/softnet_stat` (its `support.md` leaves it out of the `/proc/net`
//! files it reads: arp, dev, route, snmp, snmp6, tcp, udp, unix), so there is nothing to reuse.
//! This one reads every column podstat exports, all three layouts (11, 13 and 15 columns), the
//! CPU from the row's own index column where the kernel prints one, and any procfs root
//! (`--path.procfs`, fixture trees).

use std::{fs, path::Path};

use super::Error;
use crate::cgroup::{ErrorCounts, ErrorReason};

/// One row of `/proc/net/softnet_stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Softnet {
    /// The CPU: the row's own index column (5.10+), else the row's position among the online
    /// CPUs (older kernels skip offline CPUs, so the row number is not the CPU number).
    pub cpu: u32,
    pub processed: u64,
    pub dropped: u64,
    pub time_squeeze: u64,
    pub received_rps: u64,
    pub flow_limit_count: u64,
}

/// What a missing `softnet_stat` means.
pub const MISSING: &str = "kernel without CONFIG_NET or procfs not mounted there";

/// `Ok` if `<procfs>/net/softnet_stat` exists; else the typed "not supported here".
pub fn available(procfs: &Path) -> Result<(), Error> {
    let path = procfs.join("net/softnet_stat");
    fs::metadata(&path)
        .map(drop)
        .map_err(|source| Error::NoSoftnet { path, source })
}

/// Reads and parses `<procfs>/net/softnet_stat` (see [`parse`]).
pub fn read(
    procfs: &Path,
    online: &[u32],
    errors: &mut ErrorCounts,
) -> Result<Vec<Softnet>, Error> {
    let path = procfs.join("net/softnet_stat");
    let text = fs::read_to_string(&path).map_err(|source| Error::Read { path, source })?;
    Ok(parse(&text, online, errors))
}

/// Parses `/proc/net/softnet_stat`. Column layout (hex, one row per online CPU), from
/// <https://github.com/torvalds/linux/blob/v6.18/net/core/net-procfs.c>:
/// `processed dropped time_squeeze 0 0 0 0 0 cpu_collision(0) received_rps flow_limit_count`
/// (11 columns up to 5.9), then `backlog_len cpu_index` (13 columns, 5.10+), then
/// `input_qlen process_qlen` (15 columns, 6.4+). `online` maps row positions to CPUs when there
/// is no index column. Malformed rows are counted and skipped.
pub fn parse(text: &str, online: &[u32], errors: &mut ErrorCounts) -> Vec<Softnet> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let cols: Result<Vec<u64>, _> = line
            .split_whitespace()
            .map(|c| u64::from_str_radix(c, 16))
            .collect();
        let Ok(cols) = cols else {
            errors.add(ErrorReason::Malformed);
            continue;
        };
        if cols.len() < 11 {
            errors.add(ErrorReason::Malformed);
            continue;
        }
        let cpu = if cols.len() >= 13 {
            u32::try_from(cols[12]).ok()
        } else {
            online.get(i).copied()
        };
        let Some(cpu) = cpu else {
            errors.add(ErrorReason::Malformed);
            continue;
        };
        rows.push(Softnet {
            cpu,
            processed: cols[0],
            dropped: cols[1],
            time_squeeze: cols[2],
            received_rps: cols[9],
            flow_limit_count: cols[10],
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netdev::test_util::{fixture, mlx5_host};

    #[test]
    fn softnet_layouts_of_several_kernels() {
        // (fixture, online CPUs, expected (cpu, processed, dropped, squeeze, rps, flow_limit))
        type Row = (u32, u64, u64, u64, u64, u64);
        let cases: &[(&str, &[u32], &[Row])] = &[
            (
                // 4.19: 11 columns; CPU 1 offline, so row 1 is CPU 2.
                "softnet_stat-4.19",
                &[0, 2, 3],
                &[
                    (0, 0x1a2b, 0, 3, 0x10, 0),
                    (2, 0xff, 1, 0, 0x20, 2),
                    (3, 0, 0, 0, 0, 0),
                ],
            ),
            (
                // 5.10: 13 columns, the last is the CPU; CPU 1 offline.
                "softnet_stat-5.10",
                &[],
                &[
                    (0, 0x0010_0000, 5, 7, 0x0101, 1),
                    (2, 0x2000, 0, 1, 0x1ff, 0),
                ],
            ),
            (
                // 6.18: 15 columns (input and process queue lengths at the end).
                "softnet_stat-6.18",
                &[],
                &[(0, 0xb6, 0, 0, 0, 0), (1, 0x2af6, 0, 0, 0, 0)],
            ),
        ];
        for (file, online, want) in cases {
            let mut errors = ErrorCounts::default();
            let got: Vec<Row> = parse(&fixture(file), online, &mut errors)
                .iter()
                .map(|s| {
                    (
                        s.cpu,
                        s.processed,
                        s.dropped,
                        s.time_squeeze,
                        s.received_rps,
                        s.flow_limit_count,
                    )
                })
                .collect();
            assert_eq!(&got, want, "{file}");
            assert_eq!(errors.total(), 0, "{file}");
        }
        let mut errors = ErrorCounts::default();
        let rows = parse("zz 00\n00000001 00000002\n", &[0, 1], &mut errors);
        assert!(rows.is_empty());
        assert_eq!(errors.get(ErrorReason::Malformed), 2);
    }

    /// The file is found under any procfs root; its absence is the typed "not supported".
    #[test]
    fn read_under_a_procfs_root() {
        let proc = &mlx5_host().join("proc");
        available(proc).expect("fixture has softnet_stat");
        let mut errors = ErrorCounts::default();
        let rows = read(proc, &[0, 1, 2, 3], &mut errors).expect("fixture softnet_stat");
        assert_eq!(rows.iter().map(|r| r.cpu).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(errors.total(), 0);

        let none = mlx5_host().join("no-such-procfs");
        let want = none.join("net/softnet_stat");
        match available(&none) {
            Err(Error::NoSoftnet { path, source }) => {
                assert_eq!(path, want);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected NoSoftnet, got {other:?}"),
        }
        match read(&none, &[], &mut errors) {
            Err(e @ Error::Read { .. }) => assert_eq!(e.reason(), ErrorReason::Unreadable),
            other => panic!("expected Read, got {other:?}"),
        }
    }
}
