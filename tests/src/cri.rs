//! A private containerd with its CRI plugin, driven through CRI like a kubelet would, for the
//! end-to-end test. Everything lives under one `podstat-test-e2e-<pid>` directory: config,
//! socket, root and state; cgroups go below `/podstat-test-e2e-<pid>/kubepods/…`. The guard's
//! `Drop` removes the pods, stops containerd and its shims (by PID), unmounts what they left
//! and removes the directory and the cgroups, on success, failure and panic.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use podstat::metadata::cri::{
    Client,
    api::{
        ContainerConfig, ContainerMetadata, CreateContainerRequest, CreateContainerResponse,
        ExecSyncRequest, ExecSyncResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse,
        LinuxContainerConfig, LinuxContainerResources, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
        PodSandboxMetadata, RemovePodSandboxRequest, RemovePodSandboxResponse,
        RunPodSandboxRequest, RunPodSandboxResponse, StartContainerRequest, StartContainerResponse,
        StopPodSandboxRequest, StopPodSandboxResponse, VersionRequest, VersionResponse,
    },
};
use prost::Message;

use crate::Proc;

const SVC: &str = "/runtime.v1.RuntimeService/";

/// The image every test container runs: busybox-static, no registry needed.
pub const IMAGE: &str = "podstat-test.local/busybox:1";
/// The sandbox image (its entrypoint sleeps forever).
pub const PAUSE_IMAGE: &str = "podstat-test.local/pause:1";

/// A pod the test asked for.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    /// `cpu_quota` µs per 100 ms period; the container runs `sh -c script`.
    pub container: &'a str,
    pub quota_us: i64,
    pub script: &'a str,
}

/// A private containerd + runc.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The cgroup parent every pod goes below (relative to each hierarchy's root).
    pub cgroup_root: String,
    /// Our containerd, or none when connected to the node's own ([`Containerd::connect`]).
    daemon: Proc,
    owned: bool,
    rt: tokio::runtime::Runtime,
    client: Client,
    sandboxes: Vec<String>,
}

fn must_have(cmd: &str, package: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(cmd).is_file())
    });
    assert!(
        found,
        "`{cmd}` is missing: install the Debian package `{package}` (cargo xtask test does)"
    );
}

impl Containerd {
    /// Starts containerd with the CRI plugin (cgroupfs driver, host-network pods) and imports
    /// the test images. Panics with containerd's log if it does not come up within 30 s.
    pub fn start() -> Self {
        for (cmd, pkg) in [
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("runc", "runc"),
            ("busybox", "busybox-static"),
            ("containerd-shim-runc-v2", "containerd"),
        ] {
            must_have(cmd, pkg);
        }
        let tag = format!("podstat-test-e2e-{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the containerd directory");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let d = dir.display();
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"
"#
            ),
        )
        .expect("writing containerd's config");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut me = Self {
            cgroup_root: tag,
            client: Client::new(socket.clone()),
            dir,
            socket,
            daemon: Proc(Some(child)),
            owned: true,
            rt,
            sandboxes: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = me.socket.exists()
                && me
                    .call::<_, VersionResponse>("Version", &VersionRequest::default())
                    .is_ok();
            if ok {
                break;
            }
            if let Some(c) = me.daemon.0.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("containerd exited with {status}:\n{}", me.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI did not answer within 30 s:\n{}",
                me.log_tail()
            );
            thread::sleep(Duration::from_millis(200));
        }
        me.import_images();
        me
    }

    /// The node's own containerd at `socket` (its CRI answering within `within`), for the
    /// node scenario; `dir` holds the pods' logs and the images built here. `Drop` removes
    /// the pods this guard ran and nothing else.
    pub fn connect(socket: PathBuf, dir: PathBuf, within: Duration) -> Self {
        fs::create_dir_all(&dir).expect("creating the scenario directory");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut me = Self {
            cgroup_root: String::new(),
            client: Client::new(socket.clone()),
            dir,
            socket,
            daemon: Proc(None),
            owned: false,
            rt,
            sandboxes: Vec::new(),
        };
        let deadline = Instant::now() + within;
        loop {
            match me.call::<_, VersionResponse>("Version", &VersionRequest::default()) {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "containerd's CRI at {} did not answer within {within:?}: {e}",
                    me.socket.display()
                ),
            }
            thread::sleep(Duration::from_millis(200));
        }
        me
    }

    pub fn log_tail(&self) -> String {
        if !self.owned {
            return "(the node's containerd: see its journal)".into();
        }
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// One RuntimeService call, bounded to 2 minutes: the kubelet's default
    /// `--runtime-request-timeout` (CreateContainer unpacks the image, which under the node's
    /// software emulation takes longer than 30 s).
    pub fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, String> {
        self.call_path(&format!("{SVC}{method}"), req)
    }

    fn call_path<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, String> {
        let client = &mut self.client;
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_mins(2), client.unary(path, req)).await
            })
            .map_err(|_| format!("{path}: timed out"))?
            .map_err(|e| podstat::util::chain(&e))
    }

    /// Builds two single-layer OCI images from the host's busybox-static and imports them
    /// ([`IMAGE`] for the workloads and [`PAUSE_IMAGE`] for the sandboxes).
    pub fn import_images(&mut self) {
        let work = self.dir.join("image");
        let layer_dir = work.join("layer");
        fs::create_dir_all(layer_dir.join("bin")).expect("image dirs");
        fs::create_dir_all(layer_dir.join("tmp")).expect("image dirs");
        fs::copy("/bin/busybox", layer_dir.join("bin/busybox")).expect("copying /bin/busybox");
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", layer_dir.join("bin").join(applet))
                .expect("symlink");
        }
        let oci = work.join("oci");
        let blobs = oci.join("blobs/sha256");
        fs::create_dir_all(&blobs).expect("blobs dir");
        let layer_tar = work.join("layer.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&layer_dir)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&layer_tar)
            .arg("."));
        let layer = fs::read(&layer_tar).expect("layer.tar");
        let layer_digest = put_blob(&blobs, &layer);
        let mut manifests = String::new();
        for (name, entrypoint) in [
            (IMAGE, r#"["/bin/sh"]"#),
            (PAUSE_IMAGE, r#"["/bin/sleep","2147483647"]"#),
        ] {
            let config = format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":{entrypoint},"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_digest}"]}}}}"#
            );
            let config_digest = put_blob(&blobs, config.as_bytes());
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_digest}","size":{}}}]}}"#,
                config.len(),
                layer.len()
            );
            let manifest_digest = put_blob(&blobs, manifest.as_bytes());
            if !manifests.is_empty() {
                manifests.push(',');
            }
            let _ = write!(
                manifests,
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"1"}}}}"#,
                manifest.len()
            );
        }
        fs::write(
            oci.join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{manifests}]}}"#),
        )
        .expect("index.json");
        fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        let tar = work.join("images.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&oci)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        self.import_archive(&tar, &[IMAGE, PAUSE_IMAGE]);
    }

    /// `ctr images import` of an OCI archive into the CRI's namespace, then waits until the
    /// CRI plugin knows every one of `images`.
    pub fn import_archive(&mut self, tar: &Path, images: &[&str]) {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "import", "--no-unpack"])
            .arg(tar));
        // The CRI plugin learns about imported images from events, a moment later.
        let deadline = Instant::now() + Duration::from_secs(20);
        for &image in images {
            loop {
                let status: Result<ImageStatusResponse, String> = self.call_path(
                    "/runtime.v1.ImageService/ImageStatus",
                    &ImageStatusRequest {
                        image: Some(ImageSpec {
                            image: image.into(),
                            ..ImageSpec::default()
                        }),
                        ..ImageStatusRequest::default()
                    },
                );
                if status.as_ref().is_ok_and(|s| s.image.is_some()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the CRI plugin does not know {image} 20 s after the import: {status:?}"
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Runs a host-network pod with one container (cgroupfs parent
    /// `/<cgroup_root>/kubepods/burstable/pod<uid>`); returns (sandbox id, container id).
    pub fn run_pod(&mut self, spec: &PodSpec<'_>) -> (String, String) {
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.into(),
                uid: spec.uid.into(),
                namespace: spec.namespace.into(),
                attempt: 0,
            }),
            // Host-network pods share the host's UTS namespace: no hostname of their own.
            hostname: String::new(),
            log_directory: self.dir.join("logs").join(spec.uid).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/kubepods/burstable/pod{}", self.cgroup_root, spec.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let container = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.container.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..ImageSpec::default()
            }),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), spec.script.into()],
            log_path: format!("{}.log", spec.container),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: spec.quota_us,
                    cpu_shares: 102,
                    ..LinuxContainerResources::default()
                }),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        self.run_pod_with(sandbox_config, container)
    }

    /// Runs a pod as the kubelet does: `RunPodSandbox`, `CreateContainer`, `StartContainer`;
    /// returns (sandbox id, container id). Panics with containerd's log (when it is ours).
    pub fn run_pod_with(
        &mut self,
        sandbox_config: PodSandboxConfig,
        container: ContainerConfig,
    ) -> (String, String) {
        let sandbox: RunPodSandboxResponse = self
            .call(
                "RunPodSandbox",
                &RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                    ..RunPodSandboxRequest::default()
                },
            )
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox {:?}: {e}\ncontainerd log:\n{}",
                    sandbox_config.metadata,
                    self.log_tail()
                )
            });
        self.sandboxes.push(sandbox.pod_sandbox_id.clone());
        let created: CreateContainerResponse = self
            .call(
                "CreateContainer",
                &CreateContainerRequest {
                    pod_sandbox_id: sandbox.pod_sandbox_id.clone(),
                    config: Some(container),
                    sandbox_config: Some(sandbox_config),
                },
            )
            .unwrap_or_else(|e| {
                panic!("CreateContainer: {e}\ncontainerd log:\n{}", self.log_tail())
            });
        let _: StartContainerResponse = self
            .call(
                "StartContainer",
                &StartContainerRequest {
                    container_id: created.container_id.clone(),
                },
            )
            .unwrap_or_else(|e| {
                panic!("StartContainer: {e}\ncontainerd log:\n{}", self.log_tail())
            });
        (sandbox.pod_sandbox_id, created.container_id)
    }

    /// `ExecSync`: runs `cmd` in a running container, as `kubectl exec` would; (exit code,
    /// stdout, stderr).
    pub fn exec_sync(
        &mut self,
        container_id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> (i32, Vec<u8>, Vec<u8>) {
        let r: ExecSyncResponse = self
            .call(
                "ExecSync",
                &ExecSyncRequest {
                    container_id: container_id.into(),
                    cmd: cmd.iter().map(|c| (*c).to_owned()).collect(),
                    timeout: timeout_secs,
                },
            )
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {container_id}: {e}"));
        (r.exit_code, r.stdout, r.stderr)
    }

    /// Every cgroup and cgroup2 mount of this host (the runtime creates pods in each).
    fn hierarchies() -> Vec<PathBuf> {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                    .then(|| PathBuf::from(f[1]))
            })
            .collect()
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(data).expect("writing to sha256sum");
    }
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

fn put_blob(blobs: &Path, data: &[u8]) -> String {
    let digest = sha256(data);
    fs::write(blobs.join(&digest), data).expect("writing a blob");
    digest
}

/// PIDs of processes whose command line mentions `needle` (the shims name our socket).
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.sandboxes) {
            let stop = StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(e) = self.call::<_, StopPodSandboxResponse>("StopPodSandbox", &stop) {
                eprintln!("warning: {e}");
            }
            let remove = RemovePodSandboxRequest { pod_sandbox_id: id };
            if let Err(e) = self.call::<_, RemovePodSandboxResponse>("RemovePodSandbox", &remove) {
                eprintln!("warning: {e}");
            }
        }
        if !self.owned {
            return;
        }
        self.daemon.stop(libc::SIGTERM, Duration::from_secs(10));
        // Shims of our containerd carry its socket path (-address) on their command line.
        let ours = self.dir.display().to_string();
        for pid in pids_mentioning(&ours) {
            if pid != i32::try_from(std::process::id()).unwrap_or(0) {
                // SAFETY: plain syscall on a shim our containerd started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        thread::sleep(Duration::from_millis(200));
        // Mounts the runtime left below our directory, deepest first.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours_mounted: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&ours))
            .collect();
        ours_mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours_mounted {
            let Ok(c) = std::ffi::CString::new(m) else {
                continue;
            };
            // SAFETY: c is a valid C string naming a mount below our own directory.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
        // Our cgroup subtree in every hierarchy, deepest first.
        for h in Self::hierarchies() {
            let root = h.join(&self.cgroup_root);
            if root.exists() {
                remove_tree(&root);
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }
}
