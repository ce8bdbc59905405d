//! What the kubelet sends the runtime for a pod, for the node scenario: a pod spec (from
//! `deploy/kubernetes/daemonset.yaml`, or a workload written in the same shape) translated into
//! CRI's `PodSandboxConfig` and `ContainerConfig` the way the kubelet translates it, with the
//! systemd cgroup driver's slices, the QoS class from the requests and limits, the host
//! namespaces, the `hostPath` volumes (their `type` checked first, as the kubelet does), the
//! security context with the kubelet's default masked and read-only `/proc` paths, and the
//! environment. Anything in the spec this translation does not know is a panic, so a manifest
//! change cannot be silently dropped.

use std::{os::unix::fs::FileTypeExt as _, path::Path};

use podstat::metadata::cri::api::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, MountPropagation, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, SecurityProfile,
    security_profile::ProfileType,
};
use serde_json::Value;

/// The kubelet's `/proc` paths masked and made read-only in every unprivileged container
/// (kubernetes `pkg/securitycontext/util.go`, defaultMaskedPaths and defaultReadonlyPaths).
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The kubelet's QoS classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The class of a pod with these containers' `resources` (kubernetes `GetPodQOS`).
    pub fn of(containers: &[&Value]) -> Self {
        let mut any = false;
        let mut all_equal = true;
        for c in containers {
            let r = &c["resources"];
            for res in ["cpu", "memory"] {
                let req = r["requests"][res].as_str();
                let lim = r["limits"][res].as_str();
                any |= req.is_some() || lim.is_some();
                // A limit alone sets the request to it.
                let req = req.or(lim);
                if lim.is_none() || req.map(quantity) != lim.map(quantity) {
                    all_equal = false;
                }
            }
        }
        match (any, all_equal) {
            (false, _) => Self::BestEffort,
            (true, true) => Self::Guaranteed,
            (true, false) => Self::Burstable,
        }
    }

    /// The pod's slice under the systemd driver, as the kubelet passes it in
    /// `cgroup_parent`: `kubepods-burstable-pod<uid with _>.slice` (Guaranteed pods go
    /// directly below kubepods.slice).
    pub fn slice(self, uid: &str) -> String {
        let uid = uid.replace('-', "_");
        match self {
            Self::Guaranteed => format!("kubepods-pod{uid}.slice"),
            Self::Burstable => format!("kubepods-burstable-pod{uid}.slice"),
            Self::BestEffort => format!("kubepods-besteffort-pod{uid}.slice"),
        }
    }

    /// The pod's cgroup below /sys/fs/cgroup, where systemd puts that slice.
    pub fn cgroup_dir(self, uid: &str) -> String {
        let slice = self.slice(uid);
        match self {
            Self::Guaranteed => format!("kubepods.slice/{slice}"),
            Self::Burstable => format!("kubepods.slice/kubepods-burstable.slice/{slice}"),
            Self::BestEffort => format!("kubepods.slice/kubepods-besteffort.slice/{slice}"),
        }
    }
}

/// A resource quantity in its base unit times 1000 for CPU-style values ("20m" → 20, "1" →
/// 1000) and in bytes for the binary and decimal suffixes ("32Mi" → 33554432).
///
/// # Panics
/// On a quantity this does not parse.
pub fn quantity(q: &str) -> u64 {
    let (num, mult): (&str, f64) = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("m", 1.0),
    ]
    .iter()
    .find_map(|(suf, m)| q.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((q, 1000.0));
    let n: f64 = num
        .parse()
        .unwrap_or_else(|e| panic!("quantity {q:?}: {e}"));
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "quantities are small and non-negative"
    )]
    let v = (n * mult).round() as u64;
    v
}

/// The pod's identity and where the runtime should put its logs.
pub struct PodMeta<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    /// The node's name (for `fieldRef: spec.nodeName`).
    pub node: &'a str,
}

/// A pod translated for CRI: the sandbox and each container (with its name).
pub struct Translated {
    pub qos: Qos,
    pub sandbox: PodSandboxConfig,
    pub containers: Vec<ContainerConfig>,
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .unwrap_or_else(|| panic!("{x} is not a string"))
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Panics if `obj` has a key outside `known`: a field the translation would drop.
fn only(obj: &Value, known: &[&str], what: &str) {
    if let Some(m) = obj.as_object() {
        for k in m.keys() {
            assert!(
                known.contains(&k.as_str()),
                "{what}.{k} is not translated to CRI by tests/src/kubelet.rs; add it there"
            );
        }
    }
}

/// Translates a pod `spec` (a DaemonSet's `spec.template.spec`) as the kubelet would, with
/// `image` replacing every container's image (as `kustomize edit set image` does).
///
/// # Panics
/// On a field it does not translate, or a `hostPath` whose `type` does not match the node.
#[expect(
    clippy::too_many_lines,
    reason = "one field after the other, in the spec's order"
)]
pub fn translate(spec: &Value, meta: &PodMeta<'_>, image: &str) -> Translated {
    only(
        spec,
        &[
            "serviceAccountName",
            "automountServiceAccountToken",
            "hostPID",
            "hostNetwork",
            "dnsPolicy",
            "priorityClassName",
            "terminationGracePeriodSeconds",
            "tolerations",
            "securityContext",
            "containers",
            "volumes",
        ],
        "spec",
    );
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .expect("spec.containers")
        .iter()
        .collect();
    let qos = Qos::of(&containers);
    let host = |k: &str| spec[k].as_bool().unwrap_or(false);
    let node_or = |on: bool, otherwise: NamespaceMode| {
        if on { NamespaceMode::Node } else { otherwise }.into()
    };
    let namespaces = NamespaceOption {
        network: node_or(host("hostNetwork"), NamespaceMode::Pod),
        pid: node_or(host("hostPID"), NamespaceMode::Container),
        ipc: NamespaceMode::Pod.into(),
        ..NamespaceOption::default()
    };
    let pod_sc = &spec["securityContext"];
    only(pod_sc, &["seccompProfile"], "spec.securityContext");
    let seccomp = match pod_sc["seccompProfile"]["type"].as_str() {
        None | Some("RuntimeDefault") => ProfileType::RuntimeDefault,
        Some("Unconfined") => ProfileType::Unconfined,
        Some(other) => panic!("seccompProfile.type {other} is not translated"),
    };
    let log_directory = format!(
        "/var/log/pods/{}_{}_{}",
        meta.namespace, meta.name, meta.uid
    );
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: meta.name.into(),
            uid: meta.uid.into(),
            namespace: meta.namespace.into(),
            attempt: 0,
        }),
        // Host-network pods keep the node's UTS namespace and name.
        hostname: if host("hostNetwork") {
            String::new()
        } else {
            meta.name.into()
        },
        log_directory,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: qos.slice(meta.uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces.clone()),
                seccomp: Some(SecurityProfile {
                    profile_type: seccomp.into(),
                    localhost_ref: String::new(),
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    };
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for c in containers {
        only(
            c,
            &[
                "name",
                "image",
                "imagePullPolicy",
                "command",
                "args",
                "env",
                "ports",
                "readinessProbe",
                "livenessProbe",
                "resources",
                "securityContext",
                "volumeMounts",
            ],
            "container",
        );
        let name = c["name"].as_str().expect("container name");
        let envs = c["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let value = if let Some(v) = e["value"].as_str() {
                    v.to_owned()
                } else {
                    match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                        Some("spec.nodeName") => meta.node.to_owned(),
                        Some("metadata.name") => meta.name.to_owned(),
                        Some("metadata.namespace") => meta.namespace.to_owned(),
                        other => panic!("env {e}: valueFrom {other:?} is not translated"),
                    }
                };
                KeyValue {
                    key: e["name"].as_str().expect("env name").into(),
                    value: value.into_bytes(),
                }
            })
            .collect();
        let mounts = c["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                only(
                    m,
                    &["name", "mountPath", "readOnly", "mountPropagation"],
                    "volumeMount",
                );
                let vname = m["name"].as_str().expect("volumeMount name");
                let vol = volumes
                    .iter()
                    .find(|v| v["name"] == vname)
                    .unwrap_or_else(|| panic!("volumeMount {vname}: no such volume"));
                let hp = &vol["hostPath"];
                let path = hp["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("volume {vname}: only hostPath is translated"));
                // The kubelet checks the type before it asks for the container.
                let md = std::fs::metadata(path);
                let ok = match hp["type"].as_str() {
                    None | Some("") => true,
                    Some("Directory") => md.as_ref().is_ok_and(std::fs::Metadata::is_dir),
                    Some("File") => md.as_ref().is_ok_and(std::fs::Metadata::is_file),
                    Some("Socket") => md.as_ref().is_ok_and(|m| m.file_type().is_socket()),
                    Some(t) => panic!("volume {vname}: hostPath type {t} is not translated"),
                };
                assert!(
                    ok,
                    "volume {vname}: hostPath {path} is not a {:?} on this node (the kubelet refuses the pod): {md:?}",
                    hp["type"]
                );
                let propagation = match m["mountPropagation"].as_str() {
                    None | Some("None") => MountPropagation::PropagationPrivate,
                    Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                    Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                    Some(p) => panic!("mountPropagation {p} is not translated"),
                };
                Mount {
                    container_path: m["mountPath"].as_str().expect("mountPath").into(),
                    host_path: path.into(),
                    readonly: m["readOnly"].as_bool().unwrap_or(false),
                    propagation: propagation.into(),
                    ..Mount::default()
                }
            })
            .collect();
        let sc = &c["securityContext"];
        only(
            sc,
            &[
                "runAsUser",
                "runAsNonRoot",
                "privileged",
                "allowPrivilegeEscalation",
                "readOnlyRootFilesystem",
                "capabilities",
            ],
            "securityContext",
        );
        let privileged = sc["privileged"].as_bool().unwrap_or(false);
        if sc["runAsNonRoot"].as_bool() == Some(true) {
            assert_ne!(sc["runAsUser"].as_i64(), Some(0), "runAsNonRoot with uid 0");
        }
        let security = LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: strs(&sc["capabilities"]["add"]),
                drop_capabilities: strs(&sc["capabilities"]["drop"]),
                ..Capability::default()
            }),
            privileged,
            namespace_options: Some(namespaces.clone()),
            run_as_user: sc["runAsUser"].as_i64().map(|value| Int64Value { value }),
            readonly_rootfs: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            // The kubelet sets no_new_privs unless escalation is allowed (default: allowed).
            no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
            masked_paths: if privileged {
                Vec::new()
            } else {
                MASKED.iter().map(|p| (*p).to_owned()).collect()
            },
            readonly_paths: if privileged {
                Vec::new()
            } else {
                READONLY.iter().map(|p| (*p).to_owned()).collect()
            },
            seccomp: Some(SecurityProfile {
                profile_type: seccomp.into(),
                localhost_ref: String::new(),
            }),
            ..LinuxContainerSecurityContext::default()
        };
        let r = &c["resources"];
        let milli = |k: &str| r[k]["cpu"].as_str().map(quantity);
        let req_cpu = milli("requests").or_else(|| milli("limits"));
        // kubelet: shares = request * 1024 / 1000 (at least 2); quota = limit * period / 1000.
        let shares = req_cpu.map_or(2, |m| (m * 1024 / 1000).max(2));
        let quota = milli("limits").map_or(0, |m| m * 100_000 / 1000);
        let memory = r["limits"]["memory"].as_str().map_or(0, quantity);
        let as_i64 = |v: u64| i64::try_from(v).expect("fits i64");
        out.push(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..ImageSpec::default()
            }),
            command: strs(&c["command"]),
            args: strs(&c["args"]),
            envs,
            mounts,
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: as_i64(quota),
                    cpu_shares: as_i64(shares),
                    memory_limit_in_bytes: as_i64(memory),
                    ..LinuxContainerResources::default()
                }),
                security_context: Some(security),
            }),
            ..ContainerConfig::default()
        });
    }
    Translated {
        qos,
        sandbox,
        containers: out,
    }
}

/// `path` as JSON (the first document of a YAML file).
pub fn yaml(path: &Path) -> Value {
    crate::deploy::yaml_docs(path)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{} is empty", path.display()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities_and_qos_classes() {
        assert_eq!(quantity("20m"), 20);
        assert_eq!(quantity("1"), 1000);
        assert_eq!(quantity("0.5"), 500);
        assert_eq!(quantity("32Mi"), 32 << 20);
        assert_eq!(quantity("1G"), 1_000_000_000);
        let g = json!({"resources": {"requests": {"cpu": "200m", "memory": "64Mi"}, "limits": {"cpu": "0.2", "memory": "64Mi"}}});
        let b = json!({"resources": {"requests": {"cpu": "20m"}}});
        let l = json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}});
        let e = json!({"name": "x"});
        assert_eq!(Qos::of(&[&g]), Qos::Guaranteed);
        assert_eq!(
            Qos::of(&[&l]),
            Qos::Guaranteed,
            "limits alone set the requests"
        );
        assert_eq!(Qos::of(&[&b]), Qos::Burstable);
        assert_eq!(Qos::of(&[&e]), Qos::BestEffort);
        assert_eq!(Qos::of(&[&g, &e]), Qos::Burstable);
        assert_eq!(
            Qos::Burstable.cgroup_dir("a-b"),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda_b.slice"
        );
        assert_eq!(Qos::Guaranteed.slice("a-b"), "kubepods-poda_b.slice");
    }

    #[test]
    fn the_daemonset_translates_with_its_security_context() {
        let ds = yaml(&crate::deploy::deploy_dir().join("kubernetes/daemonset.yaml"));
        let mut spec = ds["spec"]["template"]["spec"].clone();
        // Host paths the unprivileged unit test can check on any machine.
        for v in spec["volumes"].as_array_mut().expect("volumes") {
            v["hostPath"]["path"] = json!("/");
            v["hostPath"]["type"] = json!("Directory");
        }
        let meta = PodMeta {
            namespace: "podstat",
            name: "podstat-x",
            uid: "u-1",
            node: "node-a",
        };
        let t = translate(&spec, &meta, "img:1");
        assert_eq!(t.qos, Qos::Burstable);
        let c = &t.containers[0];
        assert_eq!(c.args[0], "agent");
        let linux = c.linux.as_ref().expect("linux");
        let sc = linux.security_context.as_ref().expect("security context");
        let caps = sc.capabilities.as_ref().expect("caps");
        assert_eq!(caps.drop_capabilities, ["ALL"]);
        assert_eq!(caps.add_capabilities, ["BPF", "PERFMON", "SYS_RESOURCE"]);
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        let ns = sc.namespace_options.as_ref().expect("namespaces");
        assert_eq!(ns.pid, i32::from(NamespaceMode::Node));
        assert_eq!(ns.network, i32::from(NamespaceMode::Node));
        let res = linux.resources.as_ref().expect("resources");
        assert_eq!((res.cpu_shares, res.cpu_quota), (20, 20_000));
        assert_eq!(res.memory_limit_in_bytes, 64 << 20);
        assert!(c.mounts.iter().all(|m| m.readonly), "{:?}", c.mounts);
        assert!(
            c.envs
                .iter()
                .any(|e| e.key == "NODE_NAME" && e.value == b"node-a")
        );
        // A field the translation does not know is refused, not dropped.
        let mut extra = spec.clone();
        extra["containers"][0]["workingDir"] = json!("/");
        assert!(std::panic::catch_unwind(|| translate(&extra, &meta, "img:1")).is_err());
    }
}
