//! A container image built locally, without network: a docker-archive tarball (the format of
//! `docker save`, accepted by `docker load` and `ctr image import`) whose single layer holds
//! busybox-static with its applets and the static `alloc` helper.
//!
//! Layout written by hand: `manifest.json` (config + layer list + tag), the image config JSON
//! named by its sha256, and `<layer-digest>/layer.tar`. Everything is deterministic (mtime 0,
//! uid 0), so the image id is stable across runs and the tarball is cached in the target dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// busybox applets linked in the image's /bin.
const APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "ls", "echo", "kill", "ps", "true", "false", "head", "grep", "env",
];

/// A built image tarball and its tag.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The docker-archive tarball.
    pub tar: PathBuf,
    /// `fathom-test/alloc:<hash>` (docker); containerd names it `docker.io/fathom-test/alloc:<hash>`.
    pub tag: String,
}

impl TestImage {
    /// The reference containerd gives the image after `ctr image import`.
    pub fn containerd_ref(&self) -> String {
        format!("docker.io/{}", self.tag)
    }
}

fn sha256_hex(b: &[u8]) -> String {
    crate::hex(&Sha256::digest(b))
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("short path");
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

fn add_file(t: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let h = header(path, data.len() as u64, mode, tar::EntryType::Regular);
    t.append(&h, data).with_context(|| format!("tar {path}"))
}

fn add_dir(t: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let h = header(path, 0, 0o755, tar::EntryType::Directory);
    t.append(&h, std::io::empty())
        .with_context(|| format!("tar {path}"))
}

/// The root filesystem layer as an uncompressed tar.
fn layer_tar() -> Result<Vec<u8>> {
    let mut t = tar::Builder::new(Vec::new());
    for d in ["bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "run/"] {
        add_dir(&mut t, d)?;
    }
    let busybox = std::fs::read(crate::progs::busybox_binary()).context("reading busybox")?;
    add_file(&mut t, "bin/busybox", &busybox, 0o755)?;
    for a in APPLETS {
        let mut h = header(&format!("bin/{a}"), 0, 0o777, tar::EntryType::Symlink);
        h.set_link_name("busybox")?;
        h.set_cksum();
        t.append(&h, std::io::empty())?;
    }
    let alloc = std::fs::read(crate::alloc_binary()).context("reading alloc")?;
    add_file(&mut t, "alloc", &alloc, 0o755)?;
    add_file(&mut t, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)?;
    add_file(&mut t, "etc/group", b"root:x:0:\n", 0o644)?;
    Ok(t.into_inner()?)
}

/// Builds the docker-archive tarball bytes and returns them with the tag.
pub fn build_image_tar() -> Result<(Vec<u8>, String)> {
    let layer = layer_tar()?;
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sleep", "3600"],
            "WorkingDir": "/"
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "fathom-tests image builder" }]
    }))?;
    let config_digest = sha256_hex(&config);
    let tag = format!("fathom-test/alloc:{}", &config_digest[..16]);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_digest}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_digest}/layer.tar")]
    }]))?;
    let mut t = tar::Builder::new(Vec::new());
    add_dir(&mut t, &format!("{layer_digest}/"))?;
    add_file(&mut t, &format!("{layer_digest}/layer.tar"), &layer, 0o644)?;
    add_file(&mut t, &format!("{config_digest}.json"), &config, 0o644)?;
    add_file(&mut t, "manifest.json", &manifest, 0o644)?;
    Ok((t.into_inner()?, tag))
}

fn images_dir() -> PathBuf {
    crate::target_dir().join("fathom-tests-images")
}

/// Writes the image tarball into `dir` (atomically: temp name, then rename).
pub fn write_image_tar(dir: &Path) -> Result<TestImage> {
    let (bytes, tag) = build_image_tar()?;
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let name = format!("alloc-image-{}.tar", tag.rsplit(':').next().unwrap_or("x"));
    let out = dir.join(&name);
    if !out.is_file() {
        let tmp = dir.join(format!(".{name}-{}", crate::unique_suffix()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &out)?;
    }
    Ok(TestImage { tar: out, tag })
}

/// The test image, built once per process into `<target>/fathom-tests-images/`.
pub fn test_image() -> TestImage {
    static I: OnceLock<TestImage> = OnceLock::new();
    I.get_or_init(|| {
        write_image_tar(&images_dir()).unwrap_or_else(|e| panic!("building test image: {e:#}"))
    })
    .clone()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn archive_layout_and_digests() {
        let (bytes, tag) = build_image_tar().unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut files = std::collections::HashMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
            files.insert(p, buf);
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], tag);
        let cfg_name = manifest[0]["Config"].as_str().unwrap();
        let cfg = &files[cfg_name];
        assert_eq!(format!("{}.json", sha256_hex(cfg)), cfg_name);
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        let layer = &files[layer_name];
        let cfg: serde_json::Value = serde_json::from_slice(cfg).unwrap();
        assert_eq!(
            cfg["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(layer))
        );
        // Deterministic: same bytes twice.
        assert_eq!(build_image_tar().unwrap().0, bytes);
        let mut l = tar::Archive::new(&layer[..]);
        let names: Vec<String> = l
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in ["bin/busybox", "bin/sh", "alloc"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}
