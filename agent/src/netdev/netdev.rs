//! The network devices under sysfs `class/net`, their receive queues' steering configuration
//! (`queues/rx-<n>/rps_cpus`, `rps_flow_cnt`), the IRQs that serve each queue, and
//! `net.core.rps_sock_flow_entries`. Attribute names from
//! <https://github.com/torvalds/linux/blob/v6.18/Documentation/ABI/testing/sysfs-class-net-queues>.

use std::{fs, path::Path};

use super::{
    irq::{self, DeviceIds, Interrupt, IrqAffinity},
    topology::parse_cpu_mask,
};
use crate::cgroup::{ErrorCounts, ErrorReason};

/// One receive queue's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxQueue {
    pub queue: u32,
    /// CPUs in `rps_cpus` (empty: RPS off). `None` when the kernel has no RPS (no file).
    pub rps_cpus: Option<Vec<u32>>,
    pub rps_flow_cnt: Option<u64>,
    /// IRQs serving this queue, with the CPUs each is affine to.
    pub irqs: Vec<IrqAffinity>,
}

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub ids: DeviceIds,
    pub ifindex: Option<u32>,
    pub queues: Vec<RxQueue>,
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// `net.core.rps_sock_flow_entries` (`<procfs>/sys/net/core/rps_sock_flow_entries`); `None`
/// on a kernel without RPS (no file) or when it does not parse.
pub fn rps_sock_flow_entries(procfs: &Path) -> Option<u64> {
    read_trim(&procfs.join("sys/net/core/rps_sock_flow_entries")).and_then(|s| s.parse().ok())
}

/// The bus ids of `dev_dir`'s device: its `device` link leads to the PCI function, or to the
/// virtio device whose parent is the PCI function.
fn bus_ids(dev_dir: &Path) -> (Option<String>, Option<String>) {
    let Ok(target) = fs::canonicalize(dev_dir.join("device")) else {
        return (None, None);
    };
    let base = target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    match base {
        Some(b) if b.starts_with("virtio") => {
            let parent_pci = target
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .map(str::to_owned);
            (parent_pci, Some(b))
        }
        Some(b) => (Some(b), None),
        None => (None, None),
    }
}

/// The receive queues under `dev_dir/queues`, by queue number. A malformed `rps_cpus` is
/// counted and read as absent.
fn rx_queues(dev_dir: &Path, errors: &mut ErrorCounts) -> Vec<RxQueue> {
    let mut queues = Vec::new();
    let Ok(qdir) = fs::read_dir(dev_dir.join("queues")) else {
        return queues;
    };
    for e in qdir.filter_map(Result::ok) {
        let fname = e.file_name();
        let Some(q) = fname
            .to_str()
            .and_then(|s| s.strip_prefix("rx-"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let rps_cpus = read_trim(&e.path().join("rps_cpus")).and_then(|m| {
            parse_cpu_mask(&m)
                .inspect_err(|_| errors.add(ErrorReason::Malformed))
                .ok()
        });
        let rps_flow_cnt = read_trim(&e.path().join("rps_flow_cnt")).and_then(|s| s.parse().ok());
        queues.push(RxQueue {
            queue: q,
            rps_cpus,
            rps_flow_cnt,
            irqs: Vec::new(),
        });
    }
    queues.sort_by_key(|q| q.queue);
    queues
}

/// Reads the devices under `sysfs/class/net` (all but `lo`) with their receive queues, and
/// matches IRQs from `interrupts` to queues ([`irq::irq_queue`]); affinities from
/// `procfs/irq/<n>/smp_affinity_list`, counted and left empty when unreadable or malformed.
pub fn read_devices(
    sysfs: &Path,
    procfs: &Path,
    interrupts: &[Interrupt],
    errors: &mut ErrorCounts,
) -> Vec<Device> {
    let class = sysfs.join("class/net");
    let Ok(dir) = fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let mut devices = Vec::new();
    for name in names {
        let dev_dir = class.join(&name);
        let (pci, virtio) = bus_ids(&dev_dir);
        let ids = DeviceIds {
            name: name.clone(),
            pci,
            virtio,
        };
        let ifindex = read_trim(&dev_dir.join("ifindex")).and_then(|s| s.parse().ok());
        let mut queues = rx_queues(&dev_dir, errors);
        for int in interrupts {
            for action in &int.actions {
                let Some(q) = irq::irq_queue(action, &ids) else {
                    continue;
                };
                let Some(queue) = queues.iter_mut().find(|x| x.queue == q) else {
                    continue;
                };
                let cpus = irq::read_affinity(procfs, int.irq).unwrap_or_else(|e| {
                    errors.add(e.reason());
                    Vec::new()
                });
                queue.irqs.push(IrqAffinity { irq: int.irq, cpus });
            }
        }
        devices.push(Device {
            ids,
            ifindex,
            queues,
        });
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroup::test_util::TempTree, netdev::test_util::mlx5_host};

    /// The fixture host: an mlx5 function with four channels (IRQs by completion vector, the
    /// async vector and the other function's vectors left out) and a veth with RPS and RFS on.
    #[test]
    fn devices_of_the_mlx5_fixture() {
        type Queue = (u32, Option<Vec<u32>>, Option<u64>, Vec<(u32, Vec<u32>)>);
        let (sys, proc) = (mlx5_host().join("sys"), mlx5_host().join("proc"));
        let interrupts = irq::read_interrupts(&proc).expect("fixture interrupts");
        let mut errors = ErrorCounts::default();
        let devices = read_devices(&sys, &proc, &interrupts, &mut errors);
        assert_eq!(errors.total(), 0);
        let summary = |d: &Device| -> Vec<Queue> {
            d.queues
                .iter()
                .map(|q| {
                    let irqs = q.irqs.iter().map(|i| (i.irq, i.cpus.clone())).collect();
                    (q.queue, q.rps_cpus.clone(), q.rps_flow_cnt, irqs)
                })
                .collect()
        };
        let names: Vec<&str> = devices.iter().map(|d| d.ids.name.as_str()).collect();
        assert_eq!(names, ["enp59s0f0np0", "veth-fx0"]);
        let mlx = &devices[0];
        assert_eq!(mlx.ids.pci.as_deref(), Some("0000:3b:00.0"));
        assert_eq!(mlx.ids.virtio, None);
        assert_eq!(mlx.ifindex, Some(90_002));
        assert_eq!(
            summary(mlx),
            vec![
                (0, Some(vec![]), Some(0), vec![(98, vec![0])]),
                (1, Some(vec![]), Some(0), vec![(99, vec![1])]),
                (2, Some(vec![]), Some(0), vec![(100, vec![2, 3])]),
                (3, Some(vec![]), Some(0), vec![(101, vec![3])]),
            ]
        );
        let veth = &devices[1];
        assert_eq!(
            (veth.ids.pci.as_deref(), veth.ifindex),
            (None, Some(90_003))
        );
        assert_eq!(
            summary(veth),
            vec![
                (0, Some(vec![2, 3]), Some(4096), vec![]),
                (1, Some(vec![0, 1]), Some(4096), vec![]),
            ]
        );
        assert_eq!(rps_sock_flow_entries(&proc), Some(32_768));
        assert_eq!(rps_sock_flow_entries(&sys), None);
    }

    /// An IRQ without an affinity file and a malformed RPS mask are counted, and the walk goes
    /// on.
    #[test]
    fn unreadable_and_malformed_files_are_counted() {
        let tmp = TempTree::new("netdev-devices");
        tmp.file("sys/class/net/eth0/queues/rx-0/rps_cpus", "zz\n");
        let interrupts = vec![Interrupt {
            irq: 40,
            actions: vec!["eth0-rx-0".to_owned()],
        }];
        let mut errors = ErrorCounts::default();
        let devices = read_devices(
            &tmp.path().join("sys"),
            &tmp.path().join("proc"),
            &interrupts,
            &mut errors,
        );
        assert_eq!(errors.get(ErrorReason::Malformed), 1);
        assert_eq!(errors.get(ErrorReason::Unreadable), 1);
        assert_eq!(devices.len(), 1);
        assert_eq!(
            devices[0].queues,
            vec![RxQueue {
                queue: 0,
                rps_cpus: None,
                rps_flow_cnt: None,
                irqs: vec![IrqAffinity {
                    irq: 40,
                    cpus: vec![]
                }],
            }]
        );
    }
}
