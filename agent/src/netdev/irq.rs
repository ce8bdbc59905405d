//! `/proc/interrupts`, the receive queue each IRQ action serves, and
//! `/proc/irq/<n>/smp_affinity_list`.
//!
//! podstat's own parser, not the `procfs` crate's: procfs 0.18 has no parser for
//! `/proc/interrupts` (its `support.md` leaves the box unticked) nor for `/proc/irq/`. podstat
//! needs only the numbered IRQs and their action names (several per shared line), not the
//! per-CPU counts, under any procfs root (`--path.procfs`, fixture trees).

use std::{fs, path::Path};

use super::{Error, topology::parse_cpu_list};

/// A numbered IRQ line of `/proc/interrupts` and its action names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupt {
    pub irq: u32,
    /// The actions on this IRQ (`mlx5_comp3@pci:0000:3b:00.0`, `eth0-rx-0`); a shared line
    /// has several.
    pub actions: Vec<String>,
}

/// An IRQ with the CPUs it is affine to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqAffinity {
    pub irq: u32,
    /// `/proc/irq/<irq>/smp_affinity_list`; empty when it could not be read or parsed (counted).
    pub cpus: Vec<u32>,
}

/// Reads and parses `<procfs>/interrupts` (see [`parse_interrupts`]).
pub fn read_interrupts(procfs: &Path) -> Result<Vec<Interrupt>, Error> {
    let path = procfs.join("interrupts");
    let text = fs::read_to_string(&path).map_err(|source| Error::Read { path, source })?;
    Ok(parse_interrupts(&text))
}

/// Parses `/proc/interrupts` for its numbered IRQs (NMI, LOC, ERR and the like are skipped).
/// The action names are what follows the per-CPU counts and the chip columns: the last field,
/// which may list several actions separated by ", ". Layout from
/// <https://github.com/torvalds/linux/blob/v6.18/kernel/irq/proc.c> (`show_interrupts`).
pub fn parse_interrupts(text: &str) -> Vec<Interrupt> {
    let mut lines = text.lines();
    let ncpus = lines.next().map_or(0, |h| h.split_whitespace().count());
    let mut out = Vec::new();
    for line in lines {
        let Some((irq, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.trim().parse::<u32>() else {
            continue; // NMI, LOC, ERR, ...
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // counts, then chip name, hwirq / type, then the action names.
        if fields.len() <= ncpus + 1 {
            continue;
        }
        // Action names are joined with ", "; take the comma-separated tail after the last
        // field that does not end with ','.
        let tail = &fields[ncpus..];
        let mut start = tail.len() - 1;
        while start > 0 && tail[start - 1].ends_with(',') {
            start -= 1;
        }
        let actions = tail[start..]
            .iter()
            .map(|n| n.trim_end_matches(',').to_owned())
            .collect();
        out.push(Interrupt { irq, actions });
    }
    out
}

/// Reads the CPUs `irq` is affine to (`<procfs>/irq/<irq>/smp_affinity_list`).
pub fn read_affinity(procfs: &Path, irq: u32) -> Result<Vec<u32>, Error> {
    let path = procfs.join(format!("irq/{irq}/smp_affinity_list"));
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(source) => return Err(Error::Read { path, source }),
    };
    parse_cpu_list(&text).map_err(|source| Error::Malformed { path, source })
}

/// What identifies a device in IRQ names besides its own name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIds {
    pub name: String,
    /// PCI address (`0000:3b:00.0`), for mlx5 (`mlx5_comp3@pci:0000:3b:00.0`).
    pub pci: Option<String>,
    /// The virtio device (`virtio1`), for virtio-net (`virtio1-input.0`).
    pub virtio: Option<String>,
}

/// The receive queue an IRQ action name serves on this device, for the common drivers'
/// naming: `<dev>-TxRx-<n>` (bnxt, ixgbe) with an optional driver prefix (`ice-<dev>-TxRx-<n>`,
/// `i40e-<dev>-TxRx-<n>`), `<dev>-rx-<n>`, `virtio<k>-input.<n>`, `mlx5_comp<n>@pci:<addr>`
/// (completion vector n serves channel n), `<dev>-Tx-Rx-<n>` (ena).
pub fn irq_queue(action: &str, dev: &DeviceIds) -> Option<u32> {
    let num = |s: &str| s.parse::<u32>().ok();
    if let Some(q) = dev.virtio.as_ref().and_then(|v| {
        action
            .strip_prefix(v.as_str())
            .and_then(|r| r.strip_prefix("-input."))
    }) {
        return num(q);
    }
    if let Some((n, at)) = action
        .strip_prefix("mlx5_comp")
        .and_then(|r| r.split_once('@'))
    {
        return (dev.pci.is_some() && at.strip_prefix("pci:") == dev.pci.as_deref())
            .then(|| num(n))
            .flatten();
    }
    // `<dev>-<kind>-<n>`, or `<driver>-<dev>-<kind>-<n>`.
    let after = action
        .strip_prefix(dev.name.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .or_else(|| {
            let needle = format!("-{}-", dev.name);
            let at = action.find(&needle)?;
            let prefix = &action[..at];
            (!prefix.is_empty() && !prefix.contains('-')).then(|| &action[at + needle.len()..])
        })?;
    let (kind, n) = after.rsplit_once('-')?;
    matches!(kind, "TxRx" | "Tx-Rx" | "rx" | "Rx" | "txrx" | "fp")
        .then(|| num(n))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::{ErrorReason, test_util::TempTree},
        netdev::{
            ParseError,
            test_util::{fixture, mlx5_host},
        },
    };

    /// IRQ naming of mlx5, ice, i40e, bnxt, virtio-net and ENA, from real `/proc/interrupts`
    /// files.
    #[test]
    fn interrupts_matched_to_queues_per_driver() {
        type Case = (&'static str, DeviceIds, Vec<(u32, u32)>);
        let dev = |name: &str, pci: Option<&str>, virtio: Option<&str>| DeviceIds {
            name: name.into(),
            pci: pci.map(Into::into),
            virtio: virtio.map(Into::into),
        };
        // (fixture, device, expected (irq, queue))
        let cases: Vec<Case> = vec![
            (
                "interrupts-mlx5",
                dev("enp59s0f0np0", Some("0000:3b:00.0"), None),
                vec![(98, 0), (99, 1), (100, 2), (101, 3)],
            ),
            (
                "interrupts-ice",
                dev("ens2f0", Some("0000:17:00.0"), None),
                vec![(120, 0), (121, 1), (122, 2)],
            ),
            (
                "interrupts-i40e",
                dev("eno1", Some("0000:1a:00.0"), None),
                vec![(60, 0), (61, 1)],
            ),
            (
                "interrupts-bnxt",
                dev("eth1", Some("0000:5e:00.0"), None),
                vec![(140, 0), (141, 1), (142, 2)],
            ),
            (
                "interrupts-virtio",
                dev("eth0", Some("0000:00:03.0"), Some("virtio1")),
                vec![(25, 0), (27, 1)],
            ),
            (
                "interrupts-ena",
                dev("ens5", Some("0000:00:05.0"), None),
                vec![(27, 0), (28, 1)],
            ),
        ];
        for (file, d, want) in cases {
            let irqs = parse_interrupts(&fixture(file));
            let mut got: Vec<(u32, u32)> = irqs
                .iter()
                .flat_map(|i| {
                    i.actions
                        .iter()
                        .filter_map(|n| irq_queue(n, &d).map(|q| (i.irq, q)))
                })
                .collect();
            got.sort_unstable();
            assert_eq!(got, want, "{file} for {}", d.name);
        }
        // A device whose name prefixes another's does not take its IRQs.
        let eth1 = dev("eth1", None, None);
        assert_eq!(irq_queue("eth10-TxRx-0", &eth1), None);
        assert_eq!(irq_queue("eth1-TxRx-3", &eth1), Some(3));
        assert_eq!(irq_queue("eth1-tx-3", &eth1), None);
        assert_eq!(irq_queue("i40e-eth1-TxRx-2", &eth1), Some(2));
        assert_eq!(irq_queue("i40e-0000:1a:00.0:misc", &eth1), None);
    }

    #[test]
    fn shared_interrupt_names_are_split() {
        let text = "           CPU0       CPU1\n  9:          0          0   IO-APIC    9-fasteoi   acpi\n 11:         1          2   IO-APIC   11-fasteoi   uhci_hcd:usb1, eth0-rx-0\nNMI:          0          0   Non-maskable interrupts\n";
        assert_eq!(
            parse_interrupts(text),
            vec![
                Interrupt {
                    irq: 9,
                    actions: vec!["acpi".to_owned()]
                },
                Interrupt {
                    irq: 11,
                    actions: vec!["uhci_hcd:usb1".to_owned(), "eth0-rx-0".to_owned()]
                },
            ]
        );
    }

    #[test]
    fn affinity_under_a_procfs_root() {
        let proc = &mlx5_host().join("proc");
        let irqs = read_interrupts(proc).expect("fixture interrupts");
        assert_eq!(
            irqs.iter().map(|i| i.irq).collect::<Vec<_>>(),
            [0, 97, 98, 99, 100, 101, 102, 103]
        );
        assert_eq!(read_affinity(proc, 100).expect("irq 100"), [2, 3]);
        match read_affinity(proc, 12_345) {
            Err(e @ Error::Read { .. }) => assert_eq!(e.reason(), ErrorReason::Unreadable),
            other => panic!("expected Read, got {other:?}"),
        }
        let tmp = TempTree::new("netdev-irq");
        tmp.file("irq/7/smp_affinity_list", "3-1\n");
        let got = read_affinity(tmp.path(), 7);
        match got {
            Err(Error::Malformed { path, source }) => {
                assert_eq!(path, tmp.path().join("irq/7/smp_affinity_list"));
                assert_eq!(source, ParseError::CpuList("3-1\n".to_owned()));
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }
}
