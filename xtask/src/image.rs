//! `cargo xtask image`: the agent's container image without docker and without a base image:
//! the static (musl) `podstat` on `scratch`, one gzip layer, written as an OCI image layout in
//! a tar archive (target/podstat-image.oci.tar) that `skopeo copy oci-archive:…`, `crane push`
//! and `ctr images import` all read.
//!
//! The JSON documents are oci-spec's types; the layer and the archive are written with `tar`,
//! `flate2` and `sha2`. No crate assembles an image layout from files (the ones that do, such
//! as ocipkg, pull in an HTTP client and a registry API), so the few lines that put the blobs
//! together are here.
//!
//! The image is the final stage of `deploy/kubernetes/Dockerfile`, read from that file: its
//! labels, `USER`, `EXPOSE`, `ENTRYPOINT` and `CMD`, and what it copies (the static binary
//! and `deploy/kubernetes/rootfs/`). A docker build and this build make the same image.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use oci_spec::image::{
    ConfigBuilder, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::{root, step};

/// Where the archive goes.
pub fn archive_path() -> PathBuf {
    root().join("target/podstat-image.oci.tar")
}

/// The name the archive gives the image (`io.containerd.image.name`, what `ctr images import`
/// tags it as): a local name, never pulled from anywhere.
pub fn image_name() -> String {
    format!("podstat.local/podstat:{}", env!("CARGO_PKG_VERSION"))
}

/// The final stage of the Dockerfile, as far as the image config is concerned.
#[derive(Debug, Default, PartialEq)]
struct Stage {
    labels: BTreeMap<String, String>,
    user: String,
    expose: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// `COPY` lines: (from another stage, source, destination).
    copies: Vec<(bool, String, String)>,
}

/// The Dockerfile's instructions, with `\` continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        if let Some(more) = t.strip_suffix('\\') {
            cur.push_str(more);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let full = std::mem::take(&mut cur);
        let (op, rest) = full.split_once(' ').unwrap_or((&full, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
    }
    out
}

/// `key="value" key2=value2` (the LABEL syntax), values unquoted.
fn key_values(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .with_context(|| format!("expected key=value in {s:?}"))?;
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let end = q
                .find('"')
                .with_context(|| format!("unterminated quote in {s:?}"))?;
            (q[..end].to_owned(), &q[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.push((key.trim().to_owned(), value));
        rest = after.trim();
    }
    Ok(out)
}

fn final_stage(text: &str) -> anyhow::Result<Stage> {
    let all = instructions(text);
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .context("no FROM in the Dockerfile")?;
    if all[last_from].1 != "scratch" {
        bail!(
            "the Dockerfile's final stage is FROM {}, not FROM scratch",
            all[last_from].1
        );
    }
    let json = |op: &str, v: &str| -> anyhow::Result<Vec<String>> {
        serde_json::from_str(v).with_context(|| format!("{op} {v}: not a JSON array"))
    };
    let mut st = Stage::default();
    for (op, arg) in &all[last_from + 1..] {
        match op.as_str() {
            "LABEL" => st.labels.extend(key_values(arg)?),
            "USER" => arg.clone_into(&mut st.user),
            "EXPOSE" => st.expose.extend(arg.split_whitespace().map(str::to_owned)),
            "ENTRYPOINT" => st.entrypoint = json(op, arg)?,
            "CMD" => st.cmd = json(op, arg)?,
            "COPY" => {
                let words: Vec<&str> = arg.split_whitespace().collect();
                let from = words.iter().any(|w| w.starts_with("--from="));
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let [src, dst] = paths.as_slice() else {
                    bail!("COPY {arg}: expected one source and one destination");
                };
                st.copies.push((from, (*src).to_owned(), (*dst).to_owned()));
            }
            other => bail!("the final stage has {other}, which cargo xtask image does not build"),
        }
    }
    Ok(st)
}

fn hex(d: &[u8]) -> String {
    use std::fmt::Write as _;
    d.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The uncompressed layer: the static binary at the stage's destination and the files of
/// every local `COPY` source, owned by 0:0, world-readable, with a fixed mtime.
fn layer(stage: &Stage, binary: &Path, mtime: u64) -> anyhow::Result<Vec<u8>> {
    let mut entries: BTreeMap<String, (u32, Option<Vec<u8>>)> = BTreeMap::new();
    let add_parents = |entries: &mut BTreeMap<String, (u32, Option<Vec<u8>>)>, p: &str| {
        let mut acc = String::new();
        for part in p.trim_matches('/').split('/').filter(|s| !s.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            entries.entry(acc.clone()).or_insert((0o755, None));
        }
    };
    for (from, src, dst) in &stage.copies {
        if *from {
            let dst = dst.trim_start_matches('/');
            if let Some((parent, _)) = dst.rsplit_once('/') {
                add_parents(&mut entries, parent);
            }
            let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
            entries.insert(dst.to_owned(), (0o755, Some(data)));
            continue;
        }
        let src_dir = root().join(src);
        if !src_dir.is_dir() {
            bail!("COPY {src}: only directories are copied from the context");
        }
        let mut stack = vec![src_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
                let p = e?.path();
                let rel = p
                    .strip_prefix(&src_dir)
                    .context("rel")?
                    .display()
                    .to_string();
                let at = format!("{}/{rel}", dst.trim_matches('/'));
                let at = at.trim_start_matches('/').to_owned();
                if p.is_dir() {
                    add_parents(&mut entries, &at);
                    stack.push(p);
                } else {
                    if let Some((parent, _)) = at.rsplit_once('/') {
                        add_parents(&mut entries, parent);
                    }
                    entries.insert(at, (0o644, Some(fs::read(&p)?)));
                }
            }
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, (mode, data)) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_mode(*mode);
        if let Some(d) = data {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(d.len() as u64);
            tar.append_data(&mut h, path, d.as_slice())?;
        } else {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
        }
    }
    Ok(tar.into_inner()?)
}

/// The commit and its time (for `org.opencontainers.image.revision` and `created`), so the
/// same commit builds the same image.
fn revision() -> (String, String, u64) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let rev = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let iso = git(&["log", "-1", "--format=%cI"]).unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let epoch = git(&["log", "-1", "--format=%ct"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (rev, iso, epoch)
}

/// What was built, for the report.
pub struct Built {
    pub archive: PathBuf,
    pub archive_bytes: u64,
    pub layer_bytes: u64,
    pub binary_bytes: u64,
}

/// `n` bytes in MiB, for messages.
pub fn mib(n: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
    let m = n as f64 / 1024.0 / 1024.0;
    format!("{m:.1} MiB")
}

/// Writes the OCI archive for `binary` (the static podstat).
#[expect(
    clippy::too_many_lines,
    reason = "the blobs in the order the layout needs them"
)]
pub fn write(binary: &Path) -> anyhow::Result<Built> {
    let dockerfile = root().join("deploy/kubernetes/Dockerfile");
    let text = fs::read_to_string(&dockerfile)
        .with_context(|| format!("reading {}", dockerfile.display()))?;
    let stage = final_stage(&text).with_context(|| format!("in {}", dockerfile.display()))?;
    let (rev, created, epoch) = revision();
    let tar = layer(&stage, binary, epoch)?;
    let diff_id = sha256_hex(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    let gz = gz.finish()?;
    let layer_digest = sha256_hex(&gz);

    let mut labels = stage.labels.clone();
    labels.insert("org.opencontainers.image.created".into(), created.clone());
    if !rev.is_empty() {
        labels.insert("org.opencontainers.image.revision".into(), rev);
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .created(created)
        .config(
            ConfigBuilder::default()
                .user(stage.user.clone())
                .exposed_ports(stage.expose.clone())
                .entrypoint(stage.entrypoint.clone())
                .cmd(stage.cmd.clone())
                .labels(
                    labels
                        .clone()
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{diff_id}")])
                .build()?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created_by("cargo xtask image (deploy/kubernetes/Dockerfile, final stage)")
                .build()?,
        ])
        .build()?;
    // Through serde_json's sorted maps, so the digest does not depend on HashMap order.
    let config_json = serde_json::to_vec(&serde_json::to_value(&config)?)?;
    let config_digest = sha256_hex(&config_json);
    let digest = |h: &str| -> anyhow::Result<Sha256Digest> { Ok(h.parse()?) };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(digest(&config_digest)?)
                .size(config_json.len() as u64)
                .build()?,
        )
        .layers(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::ImageLayerGzip)
                .digest(digest(&layer_digest)?)
                .size(gz.len() as u64)
                .build()?,
        ])
        .annotations(
            labels
                .into_iter()
                .filter(|(k, _)| k.starts_with("org.opencontainers.image."))
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    let manifest_json = serde_json::to_vec(&serde_json::to_value(&manifest)?)?;
    let manifest_digest = sha256_hex(&manifest_json);
    let name = image_name();
    let tag = name.rsplit(':').next().unwrap_or("latest").to_owned();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(digest(&manifest_digest)?)
                .size(manifest_json.len() as u64)
                .platform(
                    oci_spec::image::PlatformBuilder::default()
                        .architecture(oci_spec::image::Arch::Amd64)
                        .os(oci_spec::image::Os::Linux)
                        .build()?,
                )
                .annotations(std::collections::HashMap::from([
                    ("io.containerd.image.name".to_owned(), name),
                    ("org.opencontainers.image.ref.name".to_owned(), tag),
                ]))
                .build()?,
        ])
        .build()?;
    let index_json = serde_json::to_vec(&serde_json::to_value(&index)?)?;
    let layout = serde_json::to_vec(
        &OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()?,
    )?;

    let mut out = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| -> anyhow::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(epoch);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut h, path, data)?;
        Ok(())
    };
    put("oci-layout", &layout)?;
    put("index.json", &index_json)?;
    put(&format!("blobs/sha256/{config_digest}"), &config_json)?;
    put(&format!("blobs/sha256/{manifest_digest}"), &manifest_json)?;
    put(&format!("blobs/sha256/{layer_digest}"), &gz)?;
    let bytes = out.into_inner()?;
    let archive = archive_path();
    fs::create_dir_all(archive.parent().context("target dir")?)?;
    fs::write(&archive, &bytes).with_context(|| format!("writing {}", archive.display()))?;
    Ok(Built {
        archive,
        archive_bytes: bytes.len() as u64,
        layer_bytes: gz.len() as u64,
        binary_bytes: fs::metadata(binary)?.len(),
    })
}

/// `cargo xtask image`: builds the static binary, then (unless `binary_only`) the archive.
pub fn image(start: Instant, binary_only: bool) -> anyhow::Result<()> {
    let bins = crate::vm::build_static(start, &[("podstat", "podstat")])?;
    let binary = bins.join("podstat");
    if binary_only {
        eprintln!("built {}", binary.display());
        return Ok(());
    }
    step(
        start,
        "writing the OCI image (FROM scratch) from deploy/kubernetes/Dockerfile",
    );
    let b = write(&binary)?;
    eprintln!(
        "{}: {} ({} archive; layer {} compressed; podstat binary {})",
        b.archive.display(),
        image_name(),
        mib(b.archive_bytes),
        mib(b.layer_bytes),
        mib(b.binary_bytes)
    );
    eprintln!(
        "push:   skopeo copy oci-archive:{} docker://REGISTRY/podstat:{v}\n        crane push {} REGISTRY/podstat:{v}\nnode:   ctr -n k8s.io images import {}",
        b.archive.display(),
        b.archive.display(),
        b.archive.display(),
        v = env!("CARGO_PKG_VERSION"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_final_stage_is_scratch_with_the_static_binary_and_labels() {
        let text =
            fs::read_to_string(root().join("deploy/kubernetes/Dockerfile")).expect("Dockerfile");
        let st = final_stage(&text).expect("final stage");
        assert_eq!(st.entrypoint, ["/usr/bin/podstat"]);
        assert_eq!(st.cmd, ["agent"]);
        assert_eq!(st.user, "0:0");
        assert_eq!(st.expose, ["9977/tcp"]);
        assert_eq!(
            st.labels
                .get("org.opencontainers.image.version")
                .map(String::as_str),
            Some(env!("CARGO_PKG_VERSION")),
            "the Dockerfile's version label is not the workspace version"
        );
        for k in ["title", "description", "licenses", "source"] {
            assert!(
                st.labels
                    .contains_key(&format!("org.opencontainers.image.{k}")),
                "no {k} label"
            );
        }
        assert!(
            st.copies
                .iter()
                .any(|(from, _, dst)| *from && dst == "/usr/bin/podstat"),
            "{:?}",
            st.copies
        );
    }

    #[test]
    fn dockerfile_syntax_is_parsed_or_refused() {
        let ok = "FROM x AS b\nRUN y\nFROM scratch\n# c\nLABEL a=\"b c\" \\\n  d=e\nUSER 0:0\nENTRYPOINT [\"/p\"]\n";
        let st = final_stage(ok).expect("parsed");
        assert_eq!(st.labels.get("a").map(String::as_str), Some("b c"));
        assert_eq!(st.labels.get("d").map(String::as_str), Some("e"));
        assert_eq!(st.entrypoint, ["/p"]);
        assert!(
            final_stage("FROM debian\nUSER 0\n").is_err(),
            "a base image was accepted"
        );
        assert!(
            final_stage("FROM scratch\nRUN true\n").is_err(),
            "RUN in scratch accepted"
        );
        assert!(final_stage("FROM scratch\nENTRYPOINT /p\n").is_err());
        assert!(key_values("a=\"open").is_err());
    }

    #[test]
    fn the_layer_is_owned_by_root_world_readable_and_reproducible() {
        let text =
            fs::read_to_string(root().join("deploy/kubernetes/Dockerfile")).expect("Dockerfile");
        let st = final_stage(&text).expect("final stage");
        let bin = std::env::temp_dir().join(format!("podstat-test-image-{}", std::process::id()));
        fs::write(&bin, b"\x7fELF not really").expect("bin");
        let a = layer(&st, &bin, 7).expect("layer");
        let b = layer(&st, &bin, 7).expect("layer");
        let _ = fs::remove_file(&bin);
        assert_eq!(sha256_hex(&a), sha256_hex(&b), "not reproducible");
        let mut ar = tar::Archive::new(a.as_slice());
        let mut seen = BTreeMap::new();
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (0, 0));
            assert_eq!(h.mtime().expect("mtime"), 7);
            seen.insert(
                e.path().expect("path").display().to_string(),
                h.mode().expect("mode"),
            );
        }
        assert_eq!(seen.get("usr/bin/podstat"), Some(&0o755), "{seen:?}");
        assert_eq!(seen.get("etc/passwd"), Some(&0o644), "{seen:?}");
        assert!(seen.contains_key("usr/bin/"), "{seen:?}");
        // Every entry is readable (and directories enterable) by any uid.
        assert!(seen.values().all(|m| m & 0o004 != 0), "{seen:?}");
    }
}
