//! Walk of the cpu hierarchy: every pod and container cgroup, with its kernfs id.

use std::{fs, io, os::unix::fs::DirEntryExt as _, path::PathBuf};

use super::{
    classify::{CgroupKind, classify},
    error::{ErrorCounts, ErrorReason},
    layout::Layout,
};

/// A cgroup found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Path relative to the cpu hierarchy root, `/`-separated, no leading `/`.
    pub rel_path: String,
    /// Inode of the directory in the cpu hierarchy: on kernfs this is the cgroup id that eBPF
    /// sees (`bpf_get_current_cgroup_id`, `cgroup->kn->id`).
    pub id: u64,
    pub kind: CgroupKind,
}

/// What [`discover`] returns and how deep it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Also return cgroups that are neither pods nor containers (never the root itself).
    pub include_non_pod: bool,
    /// Deepest level visited; the root's children are at depth 1.
    pub max_depth: usize,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        DiscoverOptions {
            include_non_pod: false,
            max_depth: 10,
        }
    }
}

/// Walks `layout.cpu` and returns the pod and container cgroups (and the others when
/// `opts.include_non_pod`), sorted by `rel_path`.
///
/// A directory that vanishes during the walk is counted as [`ErrorReason::Vanished`], one that
/// cannot be read as [`ErrorReason::Unreadable`], a name that is not UTF-8 as
/// [`ErrorReason::Malformed`]; each is skipped. Symlinks are not followed. Unless
/// `include_non_pod` is set, the walk does not descend below container cgroups: everything there
/// belongs to the container.
pub fn discover(
    layout: &Layout,
    opts: &DiscoverOptions,
    errors: &mut ErrorCounts,
) -> Vec<Discovered> {
    let mut walker = Walker {
        opts,
        errors,
        path: layout.cpu.clone(),
        rel: String::with_capacity(256),
        out: Vec::new(),
    };
    walker.visit(1);
    let mut out = walker.out;
    out.sort_unstable_by(|a, b| a.rel_path.cmp(&b.rel_path));
    out
}

struct Walker<'a> {
    opts: &'a DiscoverOptions,
    errors: &'a mut ErrorCounts,
    /// Absolute path of the directory being listed; pushed and popped, never rebuilt.
    path: PathBuf,
    /// `rel_path` of the directory being listed.
    rel: String,
    out: Vec<Discovered>,
}

fn reason(e: &io::Error) -> ErrorReason {
    if e.kind() == io::ErrorKind::NotFound {
        ErrorReason::Vanished
    } else {
        ErrorReason::Unreadable
    }
}

impl Walker<'_> {
    /// Lists `self.path` (at `depth - 1`) and visits its subdirectories at `depth`.
    fn visit(&mut self, depth: usize) {
        if depth > self.opts.max_depth {
            return;
        }
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) => {
                self.errors.add(reason(&e));
                return;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.errors.add(reason(&e));
                    break;
                }
            };
            // cgroupfs fills d_type, so this needs no stat; symlinks are not followed.
            match entry.file_type() {
                Ok(t) if t.is_dir() => {}
                Ok(_) => continue,
                Err(e) => {
                    self.errors.add(reason(&e));
                    continue;
                }
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                self.errors.add(ErrorReason::Malformed);
                continue;
            };
            // d_ino from getdents: kernfs fills it with the node's inode number, the same as
            // `stat` gives (the kernfs id that eBPF sees), without a stat per directory.
            let id = entry.ino();

            let rel_len = self.rel.len();
            if rel_len > 0 {
                self.rel.push('/');
            }
            self.rel.push_str(name);
            self.path.push(name);

            let kind = classify(&self.rel);
            let descend = self.opts.include_non_pod || !kind.is_container();
            if self.opts.include_non_pod || kind != CgroupKind::Other {
                self.out.push(Discovered {
                    rel_path: self.rel.clone(),
                    id,
                    kind,
                });
            }
            if descend {
                self.visit(depth + 1);
            }

            self.path.pop();
            self.rel.truncate(rel_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _};

    use super::*;
    use crate::cgroup::{
        classify::{Driver, Qos, Runtime},
        test_util::{TempTree, fixture},
    };

    /// Shorthand for the expected kind.
    #[derive(Debug, Clone, Copy)]
    enum K {
        Pod(&'static str, Qos, Driver),
        Ctr(&'static str, &'static str, Qos, Driver, Runtime),
        Other,
    }

    impl K {
        fn kind(self) -> CgroupKind {
            match self {
                K::Pod(uid, qos, driver) => CgroupKind::Pod {
                    pod_uid: uid.to_owned(),
                    qos,
                    driver,
                },
                K::Ctr(uid, id, qos, driver, runtime) => CgroupKind::Container {
                    pod_uid: uid.to_owned(),
                    container_id: id.to_owned(),
                    qos,
                    driver,
                    runtime,
                },
                K::Other => CgroupKind::Other,
            }
        }
    }

    use crate::cgroup::test_util::ids::*;

    fn check(fixture_name: &str, opts: DiscoverOptions, want: &[(String, K)]) {
        let root = fixture(fixture_name);
        let layout = Layout::detect(&root).unwrap_or_else(|e| panic!("{fixture_name}: {e}"));
        let mut errors = ErrorCounts::default();
        let got = discover(&layout, &opts, &mut errors);
        assert_eq!(errors.total(), 0, "{fixture_name}: errors {errors:?}");
        let got_map: BTreeMap<&str, &CgroupKind> =
            got.iter().map(|d| (d.rel_path.as_str(), &d.kind)).collect();
        let want_kinds: Vec<(String, CgroupKind)> =
            want.iter().map(|(p, k)| (p.clone(), k.kind())).collect();
        let want_map: BTreeMap<&str, &CgroupKind> =
            want_kinds.iter().map(|(p, k)| (p.as_str(), k)).collect();
        assert_eq!(
            got_map, want_map,
            "{fixture_name} include_non_pod={}",
            opts.include_non_pod
        );
        assert_eq!(got.len(), want.len(), "{fixture_name}: duplicates");
        // Sorted, and each id is the directory's inode.
        assert!(
            got.windows(2).all(|w| w[0].rel_path < w[1].rel_path),
            "{fixture_name}: order"
        );
        for d in &got {
            let ino = fs::symlink_metadata(layout.cpu.join(&d.rel_path))
                .map_or_else(|e| panic!("{}: {e}", d.rel_path), |m| m.ino());
            assert_eq!(d.id, ino, "{}", d.rel_path);
        }
    }

    fn pods_only() -> DiscoverOptions {
        DiscoverOptions::default()
    }

    fn everything() -> DiscoverOptions {
        DiscoverOptions {
            include_non_pod: true,
            ..DiscoverOptions::default()
        }
    }

    #[test]
    fn discover_v2_systemd_containerd() {
        use Driver::Systemd as D;
        use Runtime::Containerd as R;
        let b = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a3d5f2e_1b4c_4d6e_9f0a_1b2c3d4e5f60.slice";
        let g = "kubepods.slice/kubepods-pod0f1e2d3c_4b5a_4968_8776_a5b4c3d2e1f0.slice";
        let e = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podc7b6a5d4_e3f2_4a1b_8c9d_0e1f2a3b4c5d.slice";
        let pods = [
            (b.to_owned(), K::Pod(UID_B, Qos::Burstable, D)),
            (
                format!("{b}/cri-containerd-{C1}.scope"),
                K::Ctr(UID_B, C1, Qos::Burstable, D, R),
            ),
            (
                format!("{b}/cri-containerd-{P1}.scope"),
                K::Ctr(UID_B, P1, Qos::Burstable, D, R),
            ),
            (g.to_owned(), K::Pod(UID_G, Qos::Guaranteed, D)),
            (
                format!("{g}/cri-containerd-{C2}.scope"),
                K::Ctr(UID_G, C2, Qos::Guaranteed, D, R),
            ),
            (e.to_owned(), K::Pod(UID_E, Qos::BestEffort, D)),
            (
                format!("{e}/cri-containerd-{C3}.scope"),
                K::Ctr(UID_E, C3, Qos::BestEffort, D, R),
            ),
        ];
        check("v2-systemd-containerd", pods_only(), &pods);
        let mut all = pods.to_vec();
        all.extend([
            ("kubepods.slice".to_owned(), K::Other),
            (
                "kubepods.slice/kubepods-burstable.slice".to_owned(),
                K::Other,
            ),
            (
                "kubepods.slice/kubepods-besteffort.slice".to_owned(),
                K::Other,
            ),
            ("system.slice".to_owned(), K::Other),
            ("system.slice/containerd.service".to_owned(), K::Other),
            ("init.scope".to_owned(), K::Other),
        ]);
        check("v2-systemd-containerd", everything(), &all);
    }

    #[test]
    fn discover_v2_cgroupfs_crio() {
        use Driver::Cgroupfs as D;
        use Runtime::CriO as R;
        let b = format!("kubepods/burstable/pod{UID_B}");
        let g = format!("kubepods/pod{UID_G}");
        let e = format!("kubepods/besteffort/pod{UID_E}");
        let pods = [
            (b.clone(), K::Pod(UID_B, Qos::Burstable, D)),
            (
                format!("{b}/crio-{C1}"),
                K::Ctr(UID_B, C1, Qos::Burstable, D, R),
            ),
            (g.clone(), K::Pod(UID_G, Qos::Guaranteed, D)),
            (
                format!("{g}/crio-{C2}"),
                K::Ctr(UID_G, C2, Qos::Guaranteed, D, R),
            ),
            (e.clone(), K::Pod(UID_E, Qos::BestEffort, D)),
            (
                format!("{e}/crio-{C3}"),
                K::Ctr(UID_E, C3, Qos::BestEffort, D, R),
            ),
        ];
        check("v2-cgroupfs-crio", pods_only(), &pods);
        let mut all = pods.to_vec();
        all.extend([
            ("kubepods".to_owned(), K::Other),
            ("kubepods/burstable".to_owned(), K::Other),
            ("kubepods/besteffort".to_owned(), K::Other),
            (format!("{b}/crio-conmon-{C1}"), K::Other),
            (format!("{g}/crio-{C2}/container"), K::Other),
            ("system.slice".to_owned(), K::Other),
            ("system.slice/crio.service".to_owned(), K::Other),
        ]);
        check("v2-cgroupfs-crio", everything(), &all);
    }

    #[test]
    fn discover_v1_cgroupfs_docker() {
        use Driver::Cgroupfs as D;
        use Runtime::Unknown as R;
        let b = format!("kubepods/burstable/pod{UID_B}");
        let g = format!("kubepods/pod{UID_G}");
        let e = format!("kubepods/besteffort/pod{UID_E}");
        let pods = [
            (b.clone(), K::Pod(UID_B, Qos::Burstable, D)),
            (format!("{b}/{C1}"), K::Ctr(UID_B, C1, Qos::Burstable, D, R)),
            (format!("{b}/{P1}"), K::Ctr(UID_B, P1, Qos::Burstable, D, R)),
            (g.clone(), K::Pod(UID_G, Qos::Guaranteed, D)),
            (
                format!("{g}/{C2}"),
                K::Ctr(UID_G, C2, Qos::Guaranteed, D, R),
            ),
            (e.clone(), K::Pod(UID_E, Qos::BestEffort, D)),
            (
                format!("{e}/{C3}"),
                K::Ctr(UID_E, C3, Qos::BestEffort, D, R),
            ),
        ];
        check("v1-cgroupfs-docker", pods_only(), &pods);
        let mut all = pods.to_vec();
        all.extend([
            ("kubepods".to_owned(), K::Other),
            ("kubepods/burstable".to_owned(), K::Other),
            ("kubepods/besteffort".to_owned(), K::Other),
            ("system.slice".to_owned(), K::Other),
            ("system.slice/docker.service".to_owned(), K::Other),
        ]);
        check("v1-cgroupfs-docker", everything(), &all);
    }

    #[test]
    fn discover_v1_combined_systemd_docker() {
        use Driver::Systemd as D;
        use Runtime::Docker as R;
        let b = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8a3d5f2e_1b4c_4d6e_9f0a_1b2c3d4e5f60.slice";
        let g = "kubepods.slice/kubepods-pod0f1e2d3c_4b5a_4968_8776_a5b4c3d2e1f0.slice";
        let e = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podc7b6a5d4_e3f2_4a1b_8c9d_0e1f2a3b4c5d.slice";
        let pods = [
            (b.to_owned(), K::Pod(UID_B, Qos::Burstable, D)),
            (
                format!("{b}/docker-{C1}.scope"),
                K::Ctr(UID_B, C1, Qos::Burstable, D, R),
            ),
            (g.to_owned(), K::Pod(UID_G, Qos::Guaranteed, D)),
            (
                format!("{g}/docker-{C2}.scope"),
                K::Ctr(UID_G, C2, Qos::Guaranteed, D, R),
            ),
            (e.to_owned(), K::Pod(UID_E, Qos::BestEffort, D)),
            (
                format!("{e}/docker-{C3}.scope"),
                K::Ctr(UID_E, C3, Qos::BestEffort, D, R),
            ),
        ];
        check("v1-cpu,cpuacct-systemd", pods_only(), &pods);
        let mut all = pods.to_vec();
        all.extend([
            ("kubepods.slice".to_owned(), K::Other),
            (
                "kubepods.slice/kubepods-burstable.slice".to_owned(),
                K::Other,
            ),
            (
                "kubepods.slice/kubepods-besteffort.slice".to_owned(),
                K::Other,
            ),
            ("system.slice".to_owned(), K::Other),
            ("system.slice/docker.service".to_owned(), K::Other),
        ]);
        check("v1-cpu,cpuacct-systemd", everything(), &all);
    }

    #[test]
    fn discover_hybrid_cgroupfs_containerd() {
        use Driver::Cgroupfs as D;
        use Runtime::Unknown as R;
        let b = format!("kubepods/burstable/pod{UID_B}");
        let g = format!("kubepods/pod{STATIC_UID}");
        let pods = [
            (b.clone(), K::Pod(UID_B, Qos::Burstable, D)),
            (format!("{b}/{C1}"), K::Ctr(UID_B, C1, Qos::Burstable, D, R)),
            (g.clone(), K::Pod(STATIC_UID, Qos::Guaranteed, D)),
            (
                format!("{g}/{C2}"),
                K::Ctr(STATIC_UID, C2, Qos::Guaranteed, D, R),
            ),
        ];
        check("hybrid-cgroupfs-containerd", pods_only(), &pods);
        let mut all = pods.to_vec();
        all.extend([
            ("kubepods".to_owned(), K::Other),
            ("kubepods/burstable".to_owned(), K::Other),
            ("kubepods/besteffort".to_owned(), K::Other),
            ("system.slice".to_owned(), K::Other),
            ("system.slice/containerd.service".to_owned(), K::Other),
        ]);
        check("hybrid-cgroupfs-containerd", everything(), &all);
    }

    #[test]
    fn max_depth_stops_the_walk() {
        let root = fixture("v2-cgroupfs-crio");
        let layout = Layout::detect(&root).unwrap_or_else(|e| panic!("{e}"));
        let cases = [(0, 0), (1, 0), (2, 1), (3, 4), (4, 6), (10, 6)];
        for (max_depth, want) in cases {
            let mut errors = ErrorCounts::default();
            let opts = DiscoverOptions {
                include_non_pod: false,
                max_depth,
            };
            assert_eq!(
                discover(&layout, &opts, &mut errors).len(),
                want,
                "max_depth {max_depth}"
            );
        }
    }

    #[test]
    fn vanished_root_is_counted_not_fatal() {
        let t = TempTree::new("discover-vanish");
        t.file("cgroup.controllers", "cpu\n");
        let layout = Layout::detect(t.path()).unwrap_or_else(|e| panic!("{e}"));
        let layout = Layout {
            cpu: t.path().join("gone"),
            ..layout
        };
        let mut errors = ErrorCounts::default();
        assert!(discover(&layout, &DiscoverOptions::default(), &mut errors).is_empty());
        assert_eq!(errors.get(ErrorReason::Vanished), 1);
    }

    #[test]
    fn symlinked_dirs_are_not_followed() {
        let t = TempTree::new("discover-symlink");
        t.file("cgroup.controllers", "cpu\n");
        t.file(&format!("kubepods/pod{UID_G}/cpu.stat"), "");
        // A loop would recurse forever if followed.
        t.symlink("..", &format!("kubepods/pod{UID_G}/loop"));
        let layout = Layout::detect(t.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut errors = ErrorCounts::default();
        let got = discover(&layout, &everything(), &mut errors);
        let paths: Vec<_> = got.iter().map(|d| d.rel_path.as_str()).collect();
        assert_eq!(paths, ["kubepods", &format!("kubepods/pod{UID_G}")]);
        assert_eq!(errors.total(), 0);
    }
}
