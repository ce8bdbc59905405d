//! The pod-scoped label set, and how a cgroup gets its names from the metadata snapshot.

use std::fmt;

use prometheus_client::encoding::{EncodeLabel as _, EncodeLabelSet, LabelSetEncoder};

use crate::{
    cgroup::{CgroupKind, Discovered},
    metadata::{Snapshot, Store},
};

/// The pod-scoped label set shared by every per-pod metric.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    pub container_id: String,
    pub qos: &'static str,
    /// Only for non-pod cgroups (`--collector.cgroup.non-pod`): the path below the root.
    pub cgroup: Option<String>,
}

impl EncodeLabelSet for Target {
    fn encode(&self, enc: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for (k, v) in [
            ("namespace", self.namespace.as_str()),
            ("pod", self.pod.as_str()),
            ("container", self.container.as_str()),
            ("pod_uid", self.pod_uid.as_str()),
            ("container_id", self.container_id.as_str()),
            ("qos", self.qos),
        ] {
            (k, v).encode(enc.encode_label())?;
        }
        if let Some(path) = &self.cgroup {
            ("cgroup", path.as_str()).encode(enc.encode_label())?;
        }
        Ok(())
    }
}

impl Target {
    /// Labels for a discovered cgroup; the names are filled in by [`label`].
    pub fn from_kind(d: &Discovered) -> Self {
        match &d.kind {
            CgroupKind::Pod { pod_uid, qos, .. } => Self {
                pod_uid: pod_uid.clone(),
                qos: qos.as_str(),
                ..Self::default()
            },
            CgroupKind::Container {
                pod_uid,
                container_id,
                qos,
                ..
            } => Self {
                pod_uid: pod_uid.clone(),
                container_id: container_id.clone(),
                qos: qos.as_str(),
                ..Self::default()
            },
            CgroupKind::Other => Self {
                cgroup: Some(format!("/{}", d.rel_path)),
                ..Self::default()
            },
        }
    }
}

/// What [`label`] found out about a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Everything the target needs was known (or it needs nothing).
    Known,
    /// The pod or container id is not (yet) in the snapshot.
    Unknown,
    /// The provider says this container is a pod sandbox.
    Sandbox,
}

/// Fills the names of `t` from `snap`. The uid and id labels are never changed.
pub fn label(snap: &Snapshot, t: &mut Target) -> Lookup {
    if t.pod_uid.is_empty() {
        return Lookup::Known;
    }
    if !t.container_id.is_empty() && snap.sandboxes.contains(&t.container_id) {
        return Lookup::Sandbox;
    }
    let mut found = Lookup::Known;
    match snap.pods.get(&t.pod_uid) {
        Some(p) => {
            t.namespace.clone_from(&p.namespace);
            t.pod.clone_from(&p.name);
        }
        None => found = Lookup::Unknown,
    }
    if !t.container_id.is_empty() {
        match snap.containers.get(&t.container_id) {
            Some(name) => t.container.clone_from(name),
            None => found = Lookup::Unknown,
        }
    }
    found
}

/// Labels every row from the store's snapshot and drops the sandboxes the provider names
/// (unless `keep_sandboxes`). An id the snapshot lacks asks the provider for an early refresh.
pub fn label_all<T>(
    store: &Store,
    rows: &mut Vec<T>,
    keep_sandboxes: bool,
    target: fn(&mut T) -> &mut Target,
) {
    let snap = store.snapshot();
    let mut unknown = false;
    rows.retain_mut(|row| match label(&snap, target(row)) {
        Lookup::Known => true,
        Lookup::Unknown => {
            unknown = true;
            true
        }
        Lookup::Sandbox => keep_sandboxes,
    });
    if unknown {
        store.saw_unknown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::PodMeta;

    fn target(uid: &str, cid: &str) -> Target {
        Target {
            pod_uid: uid.into(),
            container_id: cid.into(),
            qos: "burstable",
            ..Target::default()
        }
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.pods.insert(
            "u1".into(),
            PodMeta {
                namespace: "shop".into(),
                name: "checkout-7d9".into(),
            },
        );
        s.containers.insert("c1".into(), "app".into());
        s.sandboxes.insert("s1".into());
        s
    }

    #[test]
    fn label_fills_names_and_reports_what_it_lacks() {
        let s = snapshot();
        let cases = [
            // (uid, cid, lookup, namespace, pod, container)
            ("u1", "c1", Lookup::Known, "shop", "checkout-7d9", "app"),
            ("u1", "", Lookup::Known, "shop", "checkout-7d9", ""),
            ("u1", "c9", Lookup::Unknown, "shop", "checkout-7d9", ""),
            ("u9", "c1", Lookup::Unknown, "", "", "app"),
            ("u9", "", Lookup::Unknown, "", "", ""),
            ("u1", "s1", Lookup::Sandbox, "", "", ""),
            ("", "", Lookup::Known, "", "", ""),
        ];
        for (uid, cid, lookup, ns, pod, ctr) in cases {
            let mut t = target(uid, cid);
            assert_eq!(label(&s, &mut t), lookup, "{uid}/{cid}");
            assert_eq!(
                (t.namespace.as_str(), t.pod.as_str(), t.container.as_str()),
                (ns, pod, ctr),
                "{uid}/{cid}"
            );
            // uid labels are never lost
            assert_eq!((t.pod_uid.as_str(), t.container_id.as_str()), (uid, cid));
        }
    }

    #[test]
    fn label_all_drops_sandboxes_unless_kept() {
        let store = Store::default();
        store.replace(snapshot());
        let rows = vec![target("u1", "c1"), target("u1", "s1"), target("u1", "")];
        let mut a = rows.clone();
        label_all(&store, &mut a, false, |t| t);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].container, "app");
        let mut b = rows;
        label_all(&store, &mut b, true, |t| t);
        assert_eq!(b.len(), 3);
    }
}
