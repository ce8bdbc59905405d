//! Which cgroup hierarchies exist under `--path.cgroupfs`, and which one holds the cpu controller.
//!
//! Detection looks at the directory tree only (never at `/proc/mounts`), so a fixture tree can
//! stand in for the host:
//! - `<root>/cgroup.controllers` exists: the root is a cgroup2 mount, [`Mode::Unified`].
//! - Otherwise every subdirectory of the root that holds `cgroup.procs` is a mount. One that also
//!   holds `cgroup.controllers` is a cgroup2 mount (`<root>/unified` on systemd hosts), which makes
//!   the host [`Mode::Hybrid`]. The others are v1 hierarchies, named by their directory; the name
//!   split on `,` gives the controllers (`cpu,cpuacct`, `cpuset`, `net_cls,net_prio`; `systemd`
//!   names a controller-less `name=systemd` hierarchy, which matches nothing we look for).
//!   Symlinks such as `cpu -> cpu,cpuacct` are resolved and each hierarchy is listed once.
//! - The cpu hierarchy is the v1 one with `cpu`; if no v1 hierarchy has it but the cgroup2 mount
//!   lists `cpu` in its `cgroup.controllers`, cpu is read from cgroup2.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::error::CgroupError;

/// cgroup interface version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// cgroup2 only, mounted at the root.
    Unified,
    /// cgroup v1 only.
    Legacy,
    /// cgroup v1 hierarchies plus a cgroup2 mount below the root (usually `<root>/unified`).
    Hybrid,
}

/// The cgroup hierarchies found under the cgroupfs root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The `--path.cgroupfs` value, e.g. `/sys/fs/cgroup`.
    pub root: PathBuf,
    pub mode: Mode,
    /// Root of the hierarchy that holds the cpu controller.
    pub cpu: PathBuf,
    pub cpu_version: CgroupVersion,
    /// v1 only: the hierarchy with cpuacct (equal to `cpu` for a combined `cpu,cpuacct` mount).
    pub cpuacct: Option<PathBuf>,
    /// The cgroup2 mount if any (the root itself in [`Mode::Unified`]).
    pub unified: Option<PathBuf>,
    /// v1 hierarchies as `(name, path)`, sorted by name, each listed once (symlinks resolved,
    /// `path` is `<root>/<name>` with the real directory name).
    pub v1_hierarchies: Vec<(String, PathBuf)>,
    /// Controllers listed in `<unified>/cgroup.controllers` (empty without cgroup2).
    pub v2_controllers: Vec<String>,
}

const CONTROLLERS: &str = "cgroup.controllers";
const PROCS: &str = "cgroup.procs";

impl Layout {
    /// Detects the hierarchy layout under `cgroupfs_root`.
    ///
    /// # Errors
    /// [`CgroupError::Read`] if the root or a `cgroup.controllers` file cannot be read,
    /// [`CgroupError::NoCpuController`] if no hierarchy offers the cpu controller.
    pub fn detect(cgroupfs_root: &Path) -> Result<Layout, CgroupError> {
        let root = cgroupfs_root.to_path_buf();
        let root_controllers = root.join(CONTROLLERS);
        if root_controllers.is_file() {
            let v2_controllers = read_controllers(&root_controllers)?;
            if !has(&v2_controllers, "cpu") {
                return Err(CgroupError::NoCpuController { root });
            }
            return Ok(Layout {
                mode: Mode::Unified,
                cpu: root.clone(),
                cpu_version: CgroupVersion::V2,
                cpuacct: None,
                unified: Some(root.clone()),
                v1_hierarchies: Vec::new(),
                v2_controllers,
                root,
            });
        }

        let mounts = list_mounts(&root)?;
        let mut v1_hierarchies = Vec::new();
        let mut unified: Option<PathBuf> = None;
        for m in mounts {
            if m.path.join(CONTROLLERS).is_file() {
                // Prefer `<root>/unified` should there be several cgroup2 mounts.
                if unified.is_none() || m.name == "unified" {
                    unified = Some(m.path);
                }
            } else {
                v1_hierarchies.push((m.name, m.path));
            }
        }
        let v2_controllers = match &unified {
            Some(u) => read_controllers(&u.join(CONTROLLERS))?,
            None => Vec::new(),
        };
        let mode = if unified.is_some() {
            Mode::Hybrid
        } else {
            Mode::Legacy
        };

        let v1_with = |controller: &str| {
            v1_hierarchies
                .iter()
                .find(|(name, _)| name.split(',').any(|c| c == controller))
                .map(|(_, p)| p.clone())
        };
        let (cpu, cpu_version, cpuacct) = if let Some(cpu) = v1_with("cpu") {
            (cpu, CgroupVersion::V1, v1_with("cpuacct"))
        } else if let Some(u) = unified.as_ref().filter(|_| has(&v2_controllers, "cpu")) {
            (u.clone(), CgroupVersion::V2, None)
        } else {
            return Err(CgroupError::NoCpuController { root });
        };

        Ok(Layout {
            root,
            mode,
            cpu,
            cpu_version,
            cpuacct,
            unified,
            v1_hierarchies,
            v2_controllers,
        })
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|c| c == want)
}

fn read_controllers(path: &Path) -> Result<Vec<String>, CgroupError> {
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

struct Mount {
    name: String,
    path: PathBuf,
}

/// Subdirectories of `root` holding `cgroup.procs`, deduplicated by their canonical path and
/// named by the real directory (the symlink target), sorted by name.
fn list_mounts(root: &Path) -> Result<Vec<Mount>, CgroupError> {
    let read_err = |source: io::Error| CgroupError::Read {
        path: root.to_path_buf(),
        source,
    };
    // (canonical path, name, path, is_symlink)
    let mut found: Vec<(PathBuf, String, PathBuf, bool)> = Vec::new();
    for entry in fs::read_dir(root).map_err(read_err)? {
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        if !path.join(PROCS).is_file() {
            continue;
        }
        let Ok(canonical) = fs::canonicalize(&path) else {
            continue;
        };
        let is_symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
        found.push((canonical, name, path, is_symlink));
    }
    // Real directories first, so the name of a hierarchy is its real directory name.
    found.sort_by(|a, b| a.3.cmp(&b.3).then_with(|| a.1.cmp(&b.1)));
    let mut mounts: Vec<(PathBuf, Mount)> = Vec::new();
    for (canonical, name, path, _) in found {
        if mounts.iter().any(|(c, _)| *c == canonical) {
            continue;
        }
        mounts.push((canonical, Mount { name, path }));
    }
    let mut mounts: Vec<Mount> = mounts.into_iter().map(|(_, m)| m).collect();
    mounts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::test_util::{TempTree, fixture};

    struct Case {
        fixture: &'static str,
        mode: Mode,
        cpu: &'static str,
        cpu_version: CgroupVersion,
        cpuacct: Option<&'static str>,
        unified: Option<&'static str>,
        v1: &'static [&'static str],
        v2_controllers: &'static [&'static str],
    }

    #[test]
    fn detect_fixtures() {
        let cases = [
            Case {
                fixture: "v2-systemd-containerd",
                mode: Mode::Unified,
                cpu: "",
                cpu_version: CgroupVersion::V2,
                cpuacct: None,
                unified: Some(""),
                v1: &[],
                v2_controllers: &[
                    "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc",
                ],
            },
            Case {
                fixture: "v2-cgroupfs-crio",
                mode: Mode::Unified,
                cpu: "",
                cpu_version: CgroupVersion::V2,
                cpuacct: None,
                unified: Some(""),
                v1: &[],
                v2_controllers: &["cpuset", "cpu", "io", "memory", "pids"],
            },
            Case {
                fixture: "v1-cgroupfs-docker",
                mode: Mode::Legacy,
                cpu: "cpu",
                cpu_version: CgroupVersion::V1,
                cpuacct: Some("cpuacct"),
                unified: None,
                v1: &["cpu", "cpuacct", "cpuset", "memory", "systemd"],
                v2_controllers: &[],
            },
            Case {
                fixture: "v1-cpu,cpuacct-systemd",
                mode: Mode::Legacy,
                cpu: "cpu,cpuacct",
                cpu_version: CgroupVersion::V1,
                cpuacct: Some("cpu,cpuacct"),
                unified: None,
                v1: &[
                    "cpu,cpuacct",
                    "cpuset",
                    "memory",
                    "net_cls,net_prio",
                    "pids",
                    "systemd",
                ],
                v2_controllers: &[],
            },
            Case {
                fixture: "hybrid-cgroupfs-containerd",
                mode: Mode::Hybrid,
                cpu: "cpu,cpuacct",
                cpu_version: CgroupVersion::V1,
                cpuacct: Some("cpu,cpuacct"),
                unified: Some("unified"),
                v1: &["cpu,cpuacct", "memory", "systemd"],
                v2_controllers: &[],
            },
        ];
        for c in cases {
            let root = fixture(c.fixture);
            let at = |rel: &str| {
                if rel.is_empty() {
                    root.clone()
                } else {
                    root.join(rel)
                }
            };
            let got = Layout::detect(&root)
                .unwrap_or_else(|e| panic!("{}: detect failed: {e}", c.fixture));
            let want = Layout {
                root: root.clone(),
                mode: c.mode,
                cpu: at(c.cpu),
                cpu_version: c.cpu_version,
                cpuacct: c.cpuacct.map(at),
                unified: c.unified.map(at),
                v1_hierarchies: c.v1.iter().map(|n| ((*n).to_owned(), at(n))).collect(),
                v2_controllers: c.v2_controllers.iter().map(|s| (*s).to_owned()).collect(),
            };
            assert_eq!(got, want, "{}", c.fixture);
        }
    }

    #[test]
    fn hybrid_with_cpu_on_cgroup2() {
        let t = TempTree::new("hybrid-cpu-v2");
        t.file("systemd/cgroup.procs", "1\n");
        t.file("memory/cgroup.procs", "");
        t.file("unified/cgroup.procs", "1\n");
        t.file("unified/cgroup.controllers", "cpu io\n");
        let got = Layout::detect(t.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.mode, Mode::Hybrid);
        assert_eq!(got.cpu, t.path().join("unified"));
        assert_eq!(got.cpu_version, CgroupVersion::V2);
        assert_eq!(got.cpuacct, None);
    }

    #[test]
    fn separate_cpu_and_cpuacct_symlinks_to_each_other_are_deduplicated() {
        // `cpuacct -> cpu` with no combined name: still one hierarchy.
        let t = TempTree::new("v1-link");
        t.file("cpu/cgroup.procs", "");
        t.symlink("cpu", "cpuacct");
        let got = Layout::detect(t.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.v1_hierarchies.len(), 1);
        assert_eq!(got.cpu, t.path().join("cpu"));
    }

    #[test]
    fn no_cpu_controller() {
        let cases: [(&str, &[(&str, &str)]); 4] = [
            ("empty", &[]),
            (
                "v2-no-cpu",
                &[("cgroup.controllers", "memory io\n"), ("cgroup.procs", "")],
            ),
            (
                "v1-no-cpu",
                &[("memory/cgroup.procs", ""), ("systemd/cgroup.procs", "")],
            ),
            (
                "hybrid-no-cpu",
                &[
                    ("systemd/cgroup.procs", ""),
                    ("unified/cgroup.procs", ""),
                    ("unified/cgroup.controllers", "memory\n"),
                ],
            ),
        ];
        for (name, files) in cases {
            let t = TempTree::new(name);
            for (p, content) in files {
                t.file(p, content);
            }
            match Layout::detect(t.path()) {
                Err(CgroupError::NoCpuController { root }) => assert_eq!(root, t.path(), "{name}"),
                other => panic!("{name}: expected NoCpuController, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_root_is_a_read_error() {
        let err = Layout::detect(Path::new("/nonexistent/podstat/cgroup"));
        assert!(matches!(err, Err(CgroupError::Read { .. })), "{err:?}");
    }
}
