//! cgroup path → pod or container (classification), for both kubelet cgroup drivers and the
//! containerd, CRI-O and Docker naming schemes.
//!
//! The kubelet's `kubepods` cgroup may sit below other parents (a custom `--cgroup-root`, a test
//! harness), so the first path segment that names it starts the match:
//!
//! | driver   | `QoS`      | pod cgroup                                                     |
//! |----------|------------|----------------------------------------------------------------|
//! | systemd  | guaranteed | `kubepods.slice/kubepods-pod<uid>.slice`                       |
//! | systemd  | burstable  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice` |
//! | systemd  | besteffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice` |
//! | cgroupfs | guaranteed | `kubepods/pod<uid>`                                            |
//! | cgroupfs | burstable  | `kubepods/burstable/pod<uid>`                                  |
//! | cgroupfs | besteffort | `kubepods/besteffort/pod<uid>`                                 |
//!
//! With the systemd driver and a `--cgroup-root` such as `/kubelet`, systemd expands the slice
//! names (`kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/...`); any slice
//! whose stem is `kubepods` or ends in `-kubepods` is accepted, and the child slices must carry
//! that stem as their prefix.
//!
//! Container cgroups are the direct children of a pod cgroup:
//!
//! | driver   | containerd                 | CRI-O              | Docker               |
//! |----------|----------------------------|--------------------|----------------------|
//! | systemd  | `cri-containerd-<id>.scope`| `crio-<id>.scope`  | `docker-<id>.scope`  |
//! | cgroupfs | `<id>`                     | `crio-<id>`        | `<id>`               |
//!
//! A bare `<id>` (cgroupfs driver) is used by both containerd and Docker, so its runtime is
//! [`Runtime::Unknown`]; the metadata provider knows which runtime it talks to.
//! `crio-conmon-<id>` is CRI-O's monitor process, not a container, and anything below a container
//! cgroup (CRI-O/crun nest `.../crio-<id>.scope/container`) belongs to that container: both are
//! [`CgroupKind::Other`], so nothing is counted twice.
//!
//! Pod uids are validated: the UUID shape `8-4-4-4-12` (lowercase hex; `_` instead of `-` in
//! systemd names, turned back into `-`), or 32 lowercase hex digits (static pods, whose uid is a
//! hash of the manifest). Container ids are 64 lowercase hex digits. Anything else is `Other`, so
//! garbage never becomes a label value.

/// Kubernetes quality-of-service class of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// The kubelet cgroup driver that named the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }
}

/// The container runtime, as far as the cgroup name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A bare id (cgroupfs driver): containerd or Docker.
    Unknown,
}

impl Runtime {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        }
    }
}

/// What a cgroup is, from its path alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CgroupKind {
    Pod {
        pod_uid: String,
        qos: Qos,
        driver: Driver,
    },
    Container {
        pod_uid: String,
        container_id: String,
        qos: Qos,
        driver: Driver,
        runtime: Runtime,
    },
    /// Not a pod or container cgroup: `system.slice/containerd.service`, a QoS-level cgroup,
    /// a conmon scope, a cgroup nested inside a container.
    Other,
}

impl CgroupKind {
    /// The pod uid, if this is a pod or container cgroup.
    #[must_use]
    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            CgroupKind::Pod { pod_uid, .. } | CgroupKind::Container { pod_uid, .. } => {
                Some(pod_uid)
            }
            CgroupKind::Other => None,
        }
    }

    /// Whether cgroups below this one are all [`CgroupKind::Other`] (inside a container).
    #[must_use]
    pub fn is_container(&self) -> bool {
        matches!(self, CgroupKind::Container { .. })
    }
}

/// Classifies a cgroup by its path relative to the hierarchy root (no leading `/`; a leading or
/// trailing `/` is tolerated).
#[must_use]
pub fn classify(rel_path: &str) -> CgroupKind {
    let rel_path = rel_path.trim_matches('/');
    let mut segs = rel_path.split('/');
    // Find the kubepods segment; both drivers are tried on each segment.
    loop {
        let Some(seg) = segs.next() else {
            return CgroupKind::Other;
        };
        if seg == "kubepods" {
            return classify_cgroupfs(segs);
        }
        if let Some(stem) = seg.strip_suffix(".slice")
            && (stem == "kubepods" || stem.ends_with("-kubepods"))
        {
            return classify_systemd(stem, segs);
        }
    }
}

/// `segs` are the segments after `kubepods`.
fn classify_cgroupfs<'a>(mut segs: impl Iterator<Item = &'a str>) -> CgroupKind {
    let Some(mut seg) = segs.next() else {
        return CgroupKind::Other;
    };
    let qos = match seg {
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        _ => Qos::Guaranteed,
    };
    if qos != Qos::Guaranteed {
        let Some(next) = segs.next() else {
            return CgroupKind::Other;
        };
        seg = next;
    }
    let Some(pod_uid) = seg.strip_prefix("pod").and_then(|u| pod_uid(u, '-')) else {
        return CgroupKind::Other;
    };
    let driver = Driver::Cgroupfs;
    let Some(ctr) = segs.next() else {
        return CgroupKind::Pod {
            pod_uid,
            qos,
            driver,
        };
    };
    if segs.next().is_some() {
        return CgroupKind::Other;
    }
    let (runtime, id) = if let Some(id) = ctr.strip_prefix("crio-") {
        (Runtime::CriO, id)
    } else {
        (Runtime::Unknown, ctr)
    };
    container(pod_uid, id, qos, driver, runtime)
}

/// `stem` is the kubepods slice name without `.slice`; `segs` are the segments after it.
fn classify_systemd<'a>(stem: &str, mut segs: impl Iterator<Item = &'a str>) -> CgroupKind {
    let Some(mut seg) = segs.next() else {
        return CgroupKind::Other;
    };
    // `<stem>-burstable.slice`, `<stem>-besteffort.slice`, or directly `<stem>-pod<uid>.slice`.
    let Some(rest) = seg
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".slice"))
    else {
        return CgroupKind::Other;
    };
    let (qos, pod_part) = match rest {
        "burstable" | "besteffort" => {
            let qos = if rest == "burstable" {
                Qos::Burstable
            } else {
                Qos::BestEffort
            };
            let Some(next) = segs.next() else {
                return CgroupKind::Other;
            };
            seg = next;
            // `<stem>-<qos>-pod<uid>.slice`
            let Some(p) = seg
                .strip_prefix(stem)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_prefix(rest))
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".slice"))
            else {
                return CgroupKind::Other;
            };
            (qos, p)
        }
        _ => (Qos::Guaranteed, rest),
    };
    let Some(pod_uid) = pod_part.strip_prefix("pod").and_then(|u| pod_uid(u, '_')) else {
        return CgroupKind::Other;
    };
    let driver = Driver::Systemd;
    let Some(ctr) = segs.next() else {
        return CgroupKind::Pod {
            pod_uid,
            qos,
            driver,
        };
    };
    if segs.next().is_some() {
        return CgroupKind::Other;
    }
    let Some(scope) = ctr.strip_suffix(".scope") else {
        return CgroupKind::Other;
    };
    let (runtime, id) = if let Some(id) = scope.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = scope.strip_prefix("crio-") {
        (Runtime::CriO, id)
    } else if let Some(id) = scope.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else {
        return CgroupKind::Other;
    };
    container(pod_uid, id, qos, driver, runtime)
}

fn container(pod_uid: String, id: &str, qos: Qos, driver: Driver, runtime: Runtime) -> CgroupKind {
    // `crio-conmon-<id>` fails here too: `conmon-...` is not 64 hex digits.
    if !is_container_id(id) {
        return CgroupKind::Other;
    }
    CgroupKind::Container {
        pod_uid,
        container_id: id.to_owned(),
        qos,
        driver,
        runtime,
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(is_lower_hex)
}

/// Validates a pod uid written with `sep` between its groups (or a 32-digit static-pod uid) and
/// returns it in the canonical `-` form.
fn pod_uid(raw: &str, sep: char) -> Option<String> {
    let b = raw.as_bytes();
    let ok = match b.len() {
        32 => b.iter().copied().all(is_lower_hex),
        36 => b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == sep as u8
            } else {
                is_lower_hex(c)
            }
        }),
        _ => false,
    };
    if !ok {
        return None;
    }
    Some(if sep == '-' {
        raw.to_owned()
    } else {
        raw.replace(sep, "-")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8a3d5f2e-1b4c-4d6e-9f0a-1b2c3d4e5f60";
    const UID_: &str = "8a3d5f2e_1b4c_4d6e_9f0a_1b2c3d4e5f60";
    const STATIC_UID: &str = "2c4a5f0e8b0d1f3a7e6c9b8d7a6f5e4d";
    const ID: &str = "4f3e2d1c0b0a99887766554433221100ffeeddccbbaa00112233445566778899";

    fn pod(qos: Qos, driver: Driver) -> CgroupKind {
        CgroupKind::Pod {
            pod_uid: UID.to_owned(),
            qos,
            driver,
        }
    }

    fn ctr(qos: Qos, driver: Driver, runtime: Runtime) -> CgroupKind {
        CgroupKind::Container {
            pod_uid: UID.to_owned(),
            container_id: ID.to_owned(),
            qos,
            driver,
            runtime,
        }
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of cases")]
    fn classify_table() {
        use Driver::{Cgroupfs, Systemd};
        use Qos::{BestEffort, Burstable, Guaranteed};
        use Runtime::{Containerd, CriO, Docker, Unknown};

        let sd = |qos: Qos| match qos {
            Guaranteed => format!("kubepods.slice/kubepods-pod{UID_}.slice"),
            Burstable => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
            ),
            BestEffort => format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
            ),
        };
        let cf = |qos: Qos| match qos {
            Guaranteed => format!("kubepods/pod{UID}"),
            Burstable => format!("kubepods/burstable/pod{UID}"),
            BestEffort => format!("kubepods/besteffort/pod{UID}"),
        };

        let mut cases: Vec<(String, CgroupKind)> = Vec::new();
        for qos in [Guaranteed, Burstable, BestEffort] {
            // Pod level, both drivers, with and without parents above kubepods.
            cases.push((sd(qos), pod(qos, Systemd)));
            cases.push((cf(qos), pod(qos, Cgroupfs)));
            cases.push((format!("kubelet.slice/{}", sd(qos)), pod(qos, Systemd)));
            cases.push((format!("podstat-test-x/{}", cf(qos)), pod(qos, Cgroupfs)));
            // Container level, every runtime.
            for (scope, runtime) in [
                (format!("cri-containerd-{ID}.scope"), Containerd),
                (format!("crio-{ID}.scope"), CriO),
                (format!("docker-{ID}.scope"), Docker),
            ] {
                cases.push((format!("{}/{scope}", sd(qos)), ctr(qos, Systemd, runtime)));
                // Nested below a container → part of it.
                cases.push((format!("{}/{scope}/container", sd(qos)), CgroupKind::Other));
            }
            cases.push((format!("{}/{ID}", cf(qos)), ctr(qos, Cgroupfs, Unknown)));
            cases.push((format!("{}/crio-{ID}", cf(qos)), ctr(qos, Cgroupfs, CriO)));
            cases.push((
                format!("{}/crio-{ID}/container", cf(qos)),
                CgroupKind::Other,
            ));
            // conmon is not a container.
            cases.push((
                format!("{}/crio-conmon-{ID}.scope", sd(qos)),
                CgroupKind::Other,
            ));
            cases.push((format!("{}/crio-conmon-{ID}", cf(qos)), CgroupKind::Other));
            // Unknown scope kinds and bad ids.
            cases.push((format!("{}/unknown-{ID}.scope", sd(qos)), CgroupKind::Other));
            cases.push((
                format!("{}/cri-containerd-{ID}", sd(qos)),
                CgroupKind::Other,
            ));
            cases.push((
                format!("{}/cri-containerd-abc.scope", sd(qos)),
                CgroupKind::Other,
            ));
            cases.push((format!("{}/{}", cf(qos), &ID[..63]), CgroupKind::Other));
            cases.push((
                format!("{}/{}", cf(qos), ID.to_uppercase()),
                CgroupKind::Other,
            ));
        }

        let static_pod = CgroupKind::Pod {
            pod_uid: STATIC_UID.to_owned(),
            qos: Burstable,
            driver: Systemd,
        };
        let fixed: Vec<(String, CgroupKind)> = vec![
            // QoS levels and other non-pod cgroups.
            (String::new(), CgroupKind::Other),
            ("kubepods".into(), CgroupKind::Other),
            ("kubepods/burstable".into(), CgroupKind::Other),
            ("kubepods/besteffort".into(), CgroupKind::Other),
            ("kubepods.slice".into(), CgroupKind::Other),
            (
                "kubepods.slice/kubepods-burstable.slice".into(),
                CgroupKind::Other,
            ),
            (
                "kubepods.slice/kubepods-besteffort.slice".into(),
                CgroupKind::Other,
            ),
            ("system.slice/containerd.service".into(), CgroupKind::Other),
            ("system.slice/docker-0123.scope".into(), CgroupKind::Other),
            (
                format!("system.slice/cri-containerd-{ID}.scope"),
                CgroupKind::Other,
            ),
            (
                "user.slice/user-1000.slice/session-1.scope".into(),
                CgroupKind::Other,
            ),
            (format!("docker/{ID}"), CgroupKind::Other),
            // Leading and trailing slashes are tolerated.
            (format!("/{}/", cf(Burstable)), pod(Burstable, Cgroupfs)),
            // Static pod: 32-digit uid.
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice"
                ),
                static_pod,
            ),
            // Expanded systemd names with a custom cgroup root.
            (
                format!(
                    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                ctr(BestEffort, Systemd, Containerd),
            ),
            // Mismatched prefixes between levels.
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice"
                ),
                CgroupKind::Other,
            ),
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice"
                ),
                CgroupKind::Other,
            ),
            // Bad uids: wrong separator for the driver, wrong length, uppercase, not hex.
            (
                format!("kubepods.slice/kubepods-pod{UID}.slice"),
                CgroupKind::Other,
            ),
            (format!("kubepods/pod{UID_}"), CgroupKind::Other),
            (format!("kubepods/pod{}", &UID[..35]), CgroupKind::Other),
            (
                format!("kubepods/pod{}", UID.to_uppercase()),
                CgroupKind::Other,
            ),
            (
                "kubepods/podzzzzzzzz-1b4c-4d6e-9f0a-1b2c3d4e5f60".into(),
                CgroupKind::Other,
            ),
            ("kubepods/pod".into(), CgroupKind::Other),
            ("kubepods/burstable/pod".into(), CgroupKind::Other),
            ("kubepods/guaranteed/pod".into(), CgroupKind::Other),
            (
                "kubepods.slice/kubepods-pod.slice".into(),
                CgroupKind::Other,
            ),
            ("kubepods.slice/kubepods-.slice".into(), CgroupKind::Other),
            ("kubepods.slice/other.slice".into(), CgroupKind::Other),
            ("a//b".into(), CgroupKind::Other),
        ];
        cases.extend(fixed);

        for (path, want) in &cases {
            assert_eq!(&classify(path), want, "classify({path:?})");
        }
    }

    #[test]
    fn label_values() {
        let qos: Vec<_> = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort]
            .map(Qos::as_str)
            .into();
        assert_eq!(qos, ["guaranteed", "burstable", "besteffort"]);
        let rt: Vec<_> = [
            Runtime::Containerd,
            Runtime::CriO,
            Runtime::Docker,
            Runtime::Unknown,
        ]
        .map(Runtime::as_str)
        .into();
        assert_eq!(rt, ["containerd", "cri-o", "docker", "unknown"]);
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(s in "\\PC{0,200}") {
            let _ = classify(&s);
        }

        #[test]
        fn classify_only_yields_valid_ids(
            segs in proptest::collection::vec("(kubepods|kubepods\\.slice|burstable|pod[0-9a-f_-]{0,40}|[0-9a-f]{60,66}|crio-[0-9a-f]{64}|[a-z_.-]{0,20})", 0..7)
        ) {
            let path = segs.join("/");
            if let CgroupKind::Container { container_id, pod_uid, .. } = classify(&path) {
                proptest::prop_assert_eq!(container_id.len(), 64);
                proptest::prop_assert!(pod_uid.len() == 36 || pod_uid.len() == 32);
            }
        }
    }
}
