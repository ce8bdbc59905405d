//! Offline checks of `deploy/kubernetes/` (no cluster here): every file parses, the
//! kustomizations name files that exist, the components' index-based patches hit what they
//! mean to, and the DaemonSet keeps the security properties README "Deploying" and
//! docs/deploying.md promise.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;

/// `deploy/` in the repository, or `PODSTAT_DEPLOY_DIR` (the node's guest, which has a copy
/// and no repository).
pub fn deploy_dir() -> PathBuf {
    std::env::var_os("PODSTAT_DEPLOY_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy"),
        PathBuf::from,
    )
}

/// Every YAML document of a file, as JSON values.
///
/// # Panics
/// If the file cannot be read or a document does not parse.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_norway::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            serde_json::to_value(v)
                .unwrap_or_else(|e| panic!("{}: not representable as JSON: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Applies an RFC 6902 patch (the ops kustomize components use: add, replace, remove).
///
/// # Panics
/// If an op's path does not exist in `doc`, naming the op.
pub fn json_patch(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("");
        let path = op["path"].as_str().unwrap_or("");
        let (parent, last) = path
            .rsplit_once('/')
            .unwrap_or_else(|| panic!("bad patch path in {op}"));
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("patch op {op}: {parent} does not exist"));
        match (kind, target) {
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add", Value::Array(a)) => {
                let i: usize = last.parse().expect("array index");
                a.insert(i, op["value"].clone());
            }
            ("replace", Value::Array(a)) => {
                let i: usize = last.parse().expect("array index");
                *a.get_mut(i)
                    .unwrap_or_else(|| panic!("patch op {op}: no index {i}")) = op["value"].clone();
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().expect("array index");
                assert!(i < a.len(), "patch op {op}: no index {i}");
                a.remove(i);
            }
            ("add" | "replace", Value::Object(o)) => {
                assert!(
                    kind == "add" || o.contains_key(last),
                    "patch op {op}: no key {last}"
                );
                o.insert(last.to_owned(), op["value"].clone());
            }
            ("remove", Value::Object(o)) => {
                assert!(o.remove(last).is_some(), "patch op {op}: no key {last}");
            }
            _ => panic!("unsupported patch op {op}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                files_under(&p, out);
            } else {
                out.push(p);
            }
        }
        out.sort();
    }

    fn k8s() -> PathBuf {
        deploy_dir().join("kubernetes")
    }

    fn daemonset() -> Value {
        yaml_docs(&k8s().join("daemonset.yaml")).remove(0)
    }

    fn container(ds: &Value) -> &Value {
        &ds["spec"]["template"]["spec"]["containers"][0]
    }

    fn strs(v: &Value) -> Vec<&str> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_yaml_file_parses_and_every_manifest_has_api_version_and_kind() {
        let mut files = Vec::new();
        files_under(&deploy_dir(), &mut files);
        let yaml: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        assert!(yaml.len() >= 10, "too few YAML files: {yaml:?}");
        for f in yaml {
            let docs = yaml_docs(f);
            assert!(!docs.is_empty(), "{}: empty", f.display());
            if f.starts_with(k8s()) {
                for d in &docs {
                    assert!(
                        d["apiVersion"].is_string() && d["kind"].is_string(),
                        "{}: a document without apiVersion or kind",
                        f.display()
                    );
                }
            }
        }
        let json = deploy_dir().join("grafana/podstat.json");
        let text = std::fs::read_to_string(&json).expect("reading the dashboard");
        serde_json::from_str::<Value>(&text).expect("the dashboard is valid JSON");
    }

    #[test]
    fn kustomizations_name_files_that_exist() {
        let mut files = Vec::new();
        files_under(&k8s(), &mut files);
        let kustomizations: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
            .collect();
        assert_eq!(kustomizations.len(), 3, "{kustomizations:?}");
        for k in kustomizations {
            let doc = yaml_docs(k).remove(0);
            let dir = k.parent().expect("dir");
            for key in ["resources", "components"] {
                for r in strs(&doc[key]) {
                    assert!(
                        dir.join(r).exists(),
                        "{}: {key} entry {r} does not exist",
                        k.display()
                    );
                }
            }
        }
        // Every manifest in the base is in the base kustomization.
        let base = yaml_docs(&k8s().join("kustomization.yaml")).remove(0);
        let listed: BTreeSet<&str> = strs(&base["resources"]).into_iter().collect();
        for f in std::fs::read_dir(k8s())
            .expect("listing")
            .filter_map(Result::ok)
        {
            let path = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            if path.extension().is_some_and(|x| x == "yaml") && name != "kustomization.yaml" {
                assert!(
                    listed.contains(name.as_str()),
                    "{name} is not in the kustomization"
                );
            }
        }
    }

    /// The components patch by index; this applies them and checks the result.
    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "each component's patch, checked in turn"
    )]
    fn component_patches_hit_what_they_mean() {
        let patch_of = |component: &str, kind: &str| -> Vec<Value> {
            let k = yaml_docs(
                &k8s()
                    .join("components")
                    .join(component)
                    .join("kustomization.yaml"),
            )
            .remove(0);
            let p = k["patches"]
                .as_array()
                .expect("patches")
                .iter()
                .find(|p| p["target"]["kind"] == kind)
                .unwrap_or_else(|| panic!("{component}: no {kind} patch"));
            let ops: Value = serde_json::to_value(
                serde_norway::from_str::<serde_norway::Value>(p["patch"].as_str().expect("patch"))
                    .expect("patch parses"),
            )
            .expect("json");
            ops.as_array().expect("ops").clone()
        };
        let mounts_and_volumes = |ds: &Value| -> (Vec<String>, Vec<String>) {
            let names = |v: &Value| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m["name"].as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            };
            (
                names(&container(ds)["volumeMounts"]),
                names(&ds["spec"]["template"]["spec"]["volumes"]),
            )
        };

        // The agent's own command line accepts the args of the base and of each component.
        let parses = |ds: &Value| {
            let args = strs(&container(ds)["args"]);
            if let Err(e) =
                podstat::cli::parse_from(std::iter::once("podstat").chain(args.iter().copied()))
            {
                panic!("podstat rejects the DaemonSet's args {args:?}:\n{e}");
            }
        };
        parses(&daemonset());

        // CRI-O: the socket volume, its mount and the flag all move to crio.sock.
        let mut ds = daemonset();
        json_patch(&mut ds, &patch_of("crio", "DaemonSet"));
        let sock = "/var/run/crio/crio.sock";
        let vols = &ds["spec"]["template"]["spec"]["volumes"];
        let vol = vols
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "cri-socket")
            .expect("cri-socket volume");
        assert_eq!(vol["hostPath"]["path"], sock);
        let mount = container(&ds)["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == "cri-socket")
            .expect("cri-socket mount");
        assert_eq!(mount["mountPath"], sock);
        let args = strs(&container(&ds)["args"]);
        assert!(
            args.contains(&"--metadata.cri-socket=/var/run/crio/crio.sock"),
            "{args:?}"
        );
        assert!(args.contains(&"--metadata.provider=cri"), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("containerd")), "{args:?}");
        parses(&ds);

        // kubelet: the provider flag, the token, no CRI socket at all.
        let mut ds = daemonset();
        json_patch(&mut ds, &patch_of("kubelet", "DaemonSet"));
        let args = strs(&container(&ds)["args"]);
        assert!(args.contains(&"--metadata.provider=kubelet"), "{args:?}");
        assert!(
            args.iter()
                .any(|a| a.starts_with("--metadata.kubelet-url=https://")),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a.contains("cri-socket")), "{args:?}");
        assert!(args.contains(&"agent"), "{args:?}");
        parses(&ds);
        let (mounts, volumes) = mounts_and_volumes(&ds);
        assert!(!mounts.contains(&"cri-socket".to_owned()), "{mounts:?}");
        assert!(!volumes.contains(&"cri-socket".to_owned()), "{volumes:?}");
        assert_eq!(mounts.len(), volumes.len());
        assert_eq!(
            ds["spec"]["template"]["spec"]["automountServiceAccountToken"],
            true
        );
        let mut sa = yaml_docs(&k8s().join("serviceaccount.yaml")).remove(0);
        assert_eq!(sa["automountServiceAccountToken"], false);
        json_patch(&mut sa, &patch_of("kubelet", "ServiceAccount"));
        assert_eq!(sa["automountServiceAccountToken"], true);
        // Its RBAC is exactly get on nodes/proxy.
        let rbac = yaml_docs(&k8s().join("components/kubelet/rbac.yaml"));
        let role = rbac
            .iter()
            .find(|d| d["kind"] == "ClusterRole")
            .expect("ClusterRole");
        assert_eq!(
            role["rules"],
            serde_json::json!([{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}])
        );
    }

    #[test]
    fn daemonset_is_not_privileged_and_adds_only_the_documented_capabilities() {
        let ds = daemonset();
        let c = container(&ds);
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
        let added: BTreeSet<&str> = strs(&sc["capabilities"]["add"]).into_iter().collect();
        assert_eq!(added, BTreeSet::from(["BPF", "PERFMON", "SYS_RESOURCE"]));

        // README's capability table lists the same set.
        let readme = std::fs::read_to_string(deploy_dir().join("../README.md")).expect("README");
        let section = readme
            .split("## Required capabilities")
            .nth(1)
            .expect("README has a Required capabilities section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let documented: BTreeSet<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `CAP_")?.split('`').next())
            .collect();
        assert_eq!(
            documented, added,
            "README capability table vs daemonset.yaml"
        );

        // Every host path is mounted read-only.
        let host: BTreeSet<&str> = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter(|v| v.get("hostPath").is_some())
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert!(!host.is_empty());
        for m in c["volumeMounts"].as_array().expect("mounts") {
            let name = m["name"].as_str().unwrap_or("");
            if host.contains(name) {
                assert_eq!(
                    m["readOnly"], true,
                    "hostPath mount {name} is not read-only"
                );
            }
        }
        // Requests and limits for both resources.
        for kind in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(c["resources"][kind][r].is_string(), "no {kind}.{r}");
            }
        }
        // The probes and the port agree with the agent's endpoints.
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["ports"][0]["containerPort"], 9977);
        assert_eq!(strs(&c["args"])[0], "agent");
    }

    #[test]
    fn dockerfile_builds_the_static_binary_and_ships_it_from_scratch() {
        let path = deploy_dir().join("kubernetes/Dockerfile");
        let text = std::fs::read_to_string(&path).expect("Dockerfile");
        let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert!(froms.len() >= 2, "not multi-stage");
        // The run stage is the static binary alone: no base image, no libc.
        assert_eq!(froms.last(), Some(&"FROM scratch"));
        assert!(
            text.contains("cargo xtask image --binary-only"),
            "does not build the documented way"
        );
        assert!(
            text.contains("target/x86_64-unknown-linux-musl/release/podstat"),
            "does not ship the static (musl) xtask build output"
        );
        assert!(text.contains("ENTRYPOINT [\"/usr/bin/podstat\"]"));
    }
}
