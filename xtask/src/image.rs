//! `cargo xtask image`: a container image of `fathom`, built without a registry or a
//! container runtime.
//!
//! The image is a docker-archive tarball (the format of `docker save`), which `docker load`
//! and `ctr image import` accept:
//!
//! ```text
//! <layer sha256>/layer.tar   the root filesystem (uncompressed tar)
//! <config sha256>.json       the image config: entrypoint, labels, rootfs diff_ids
//! manifest.json              [{"Config", "RepoTags", "Layers"}]
//! ```
//!
//! The single layer holds `/fathom`, exactly the shared libraries `ldd` reports for it (at the
//! paths it reports, the dynamic loader included) and empty mount-point directories. No shell,
//! no CA certificates: fathom talks to the kernel and to runtime sockets only.
//!
//! Everything is deterministic: entries sorted, mtime 0, uid/gid 0, no user or host names,
//! `created` taken from the HEAD commit. The same binary, libraries and checkout give the same
//! bytes, hence the same image id.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, BufWriter, Read as _, Seek as _, Write},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Where `fathom` sits in the image (the entrypoint).
pub const BINARY_PATH: &str = "fathom";

/// Empty directories every image gets: mount points the runtime fills in (`/proc`, `/sys`,
/// `/dev`, `/run` for the runtime-socket and netns mounts, `/etc` for resolv.conf / hosts),
/// and `/tmp`.
const BASE_DIRS: &[&str] = &["dev", "etc", "proc", "run", "sys", "tmp"];

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The `fathom` binary to ship (dynamically or statically linked).
    pub binary: PathBuf,
    /// `name:tag` written to the archive's `RepoTags`.
    pub tag: String,
    /// Image config labels (`org.opencontainers.image.*`).
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 time in the image config's `created` and history.
    pub created: String,
}

/// A written image tarball.
#[derive(Debug, Clone)]
pub struct Image {
    pub path: PathBuf,
    pub tag: String,
    /// `sha256:<hex>` of the config: the id `docker images --no-trunc` shows.
    pub id: String,
    /// Regular files in the layer, without the leading `/` (`fathom`, the libraries).
    pub files: Vec<String>,
    /// Size of the tarball in bytes.
    pub size: u64,
}

/// `fathom:<version>`, the default tag.
pub fn default_tag(version: &str) -> String {
    format!("fathom:{version}")
}

/// Checks a `name[:tag]` reference (lower-case name components, optional registry host with
/// port, tag of `[A-Za-z0-9_.-]`, at most 128 characters) and adds `:latest` when there is no
/// tag, as `docker tag` would.
pub fn normalize_tag(reference: &str) -> Result<String> {
    let (name, tag) = match reference.rsplit_once(':') {
        // A ':' before the last '/' is a registry port, not a tag.
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (reference, "latest"),
    };
    let name_ok = !name.is_empty()
        && name.split('/').enumerate().all(|(i, part)| {
            let allowed = |c: char| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, '.' | '_' | '-')
                    || (i == 0 && c == ':')
            };
            !part.is_empty() && part.chars().all(allowed)
        });
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok || !tag_ok {
        bail!(
            "invalid image reference {reference:?} (expected e.g. fathom:0.1.0 or registry.example.com/fathom/fathom:0.1.0)"
        );
    }
    Ok(format!("{name}:{tag}"))
}

/// The shared libraries `ldd` reports for `binary`, dynamic loader included, as absolute paths
/// (sorted, no duplicates). Empty for a statically linked binary. Fails when one is missing.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ldd (apt-get install libc-bin)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // glibc's ldd exits 1 for a static binary.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed ({}): {}",
            binary.display(),
            out.status,
            stderr.trim()
        );
    }
    parse_ldd(&stdout)
}

/// Parses `ldd` output: `name => /path (0x…)`, `/path/ld.so (0x…)`; `linux-vdso.so.1 (0x…)`
/// (no file) is skipped, `name => not found` is an error.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: missing library: {line}");
        }
        if line == "statically linked" {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    Ok(libs.into_iter().collect())
}

/// Labels and creation time from the checkout at `root` (the HEAD commit), for `version`.
///
/// `org.opencontainers.image.revision` is HEAD's commit id, with `-dirty` when tracked files
/// differ from it; `source` is `remote.origin.url` without credentials (absent when there is
/// no remote); `created` is HEAD's commit time (1970-01-01 outside a git checkout), so
/// rebuilding the same commit gives the same image.
pub fn checkout_metadata(root: &Path, version: &str) -> (BTreeMap<String, String>, String) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let mut labels = BTreeMap::new();
    let mut label = |k: &str, v: &str| {
        labels.insert(format!("org.opencontainers.image.{k}"), v.to_string());
    };
    label("title", "fathom");
    label(
        "description",
        "eBPF observability for container hosts: OOM kills and overlay-network drops as \
         Prometheus metrics (fathom serve)",
    );
    label("licenses", env!("CARGO_PKG_LICENSE"));
    label("version", version);
    if let Some(rev) = git(&["rev-parse", "HEAD"]).filter(|r| !r.is_empty()) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        label(
            "revision",
            &format!("{rev}{}", if dirty { "-dirty" } else { "" }),
        );
    }
    if let Some(url) = git(&["config", "--get", "remote.origin.url"]).filter(|u| !u.is_empty()) {
        label("source", &strip_credentials(&url));
    }
    let created = git(&[
        "log",
        "-1",
        "--format=%cd",
        "--date=format-local:%Y-%m-%dT%H:%M:%SZ",
    ])
    .filter(|d| !d.is_empty())
    .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string());
    label("created", &created);
    (labels, created)
}

/// `https://user:token@host/x` → `https://host/x`; other forms unchanged.
fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        return format!("{scheme}://{host}");
    }
    url.to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// A tar header with nothing of the build machine in it.
fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .with_context(|| format!("tar path {path:?}"))?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Removes a file on drop unless disarmed (temporary files of a failed build).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The files of the layer: (path in the image without '/', file on this machine).
fn layer_files(spec: &ImageSpec) -> Result<Vec<(String, PathBuf)>> {
    let mut files = vec![(BINARY_PATH.to_string(), spec.binary.clone())];
    for lib in shared_libraries(&spec.binary)? {
        let rel = lib
            .strip_prefix("/")
            .with_context(|| format!("library path {} is not absolute", lib.display()))?;
        let rel = rel
            .to_str()
            .with_context(|| format!("library path {} is not UTF-8", lib.display()))?;
        files.push((rel.to_string(), lib.clone()));
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

/// Writes the layer tar to `out`; returns (its sha256 hex, its length, the files in it).
fn write_layer(spec: &ImageSpec, out: File) -> Result<(String, u64, Vec<String>)> {
    let files = layer_files(spec)?;
    let mut dirs: BTreeSet<String> = BASE_DIRS.iter().map(|d| d.to_string()).collect();
    for (rel, _) in &files {
        let mut p = Path::new(rel).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    let mut t = tar::Builder::new(Hashing {
        inner: BufWriter::new(out),
        hash: Sha256::new(),
        len: 0,
    });
    // Sorted: every parent comes before its children.
    for d in &dirs {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        let h = header(&format!("{d}/"), 0, mode, tar::EntryType::Directory)?;
        t.append(&h, io::empty())?;
    }
    for (rel, src) in &files {
        let f = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        let meta = f.metadata()?;
        // Execute bits as on this machine (the loader and libc are executable), nothing else.
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let h = header(rel, meta.len(), mode, tar::EntryType::Regular)?;
        t.append(&h, f)
            .with_context(|| format!("cannot add {} to the layer", src.display()))?;
    }
    let mut w = t.into_inner()?;
    w.flush()?;
    w.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok((
        hex(&w.hash.finalize()),
        w.len,
        files.into_iter().map(|(rel, _)| rel).collect(),
    ))
}

/// The image config JSON for a layer with this diff id.
fn config_json(spec: &ImageSpec, layer_digest: &str) -> Result<Vec<u8>> {
    let config = json!({
        "architecture": docker_arch(),
        "os": "linux",
        "created": spec.created,
        "config": {
            "Entrypoint": [format!("/{BINARY_PATH}")],
            "Cmd": ["serve"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            // fathom serve's default --listen port.
            "ExposedPorts": { "9717/tcp": {} },
            "Labels": spec.labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": spec.created, "created_by": "cargo xtask image" }],
    });
    Ok(serde_json::to_vec(&config)?)
}

/// Builds the image and writes the docker-archive tarball to `out` (atomically: a temporary
/// file next to it, renamed at the end). Creates `out`'s directory.
pub fn write(spec: &ImageSpec, out: &Path) -> Result<Image> {
    let tag = normalize_tag(&spec.tag)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = out
        .file_name()
        .with_context(|| format!("{} is not a file name", out.display()))?
        .to_string_lossy()
        .into_owned();
    let layer_tmp = dir.join(format!(".{name}.layer-{}", std::process::id()));
    let archive_tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _cleanup = (
        RemoveOnDrop(Some(layer_tmp.clone())),
        RemoveOnDrop(Some(archive_tmp.clone())),
    );

    let layer_file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&layer_tmp)
        .with_context(|| format!("cannot create {}", layer_tmp.display()))?;
    let (layer_digest, layer_len, files) = write_layer(spec, layer_file.try_clone()?)?;
    let config = config_json(spec, &layer_digest)?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_digest}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_digest}/layer.tar")],
    }]))?;

    let archive = File::create(&archive_tmp)
        .with_context(|| format!("cannot create {}", archive_tmp.display()))?;
    let mut t = tar::Builder::new(BufWriter::new(archive));
    t.append(
        &header(
            &format!("{layer_digest}/"),
            0,
            0o755,
            tar::EntryType::Directory,
        )?,
        io::empty(),
    )?;
    let mut layer = layer_file;
    layer.rewind()?;
    t.append(
        &header(
            &format!("{layer_digest}/layer.tar"),
            layer_len,
            0o644,
            tar::EntryType::Regular,
        )?,
        (&mut layer).take(layer_len),
    )?;
    for (path, data) in [
        (format!("{config_digest}.json"), &config),
        ("manifest.json".to_string(), &manifest),
    ] {
        let h = header(&path, data.len() as u64, 0o644, tar::EntryType::Regular)?;
        t.append(&h, &data[..])?;
    }
    let archive = t.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    archive.sync_all()?;
    let size = archive.metadata()?.len();
    drop(archive);
    std::fs::rename(&archive_tmp, out)
        .with_context(|| format!("cannot move the image to {}", out.display()))?;
    Ok(Image {
        path: out.to_path_buf(),
        tag,
        id: format!("sha256:{config_digest}"),
        files,
        size,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// (path → bytes) of every regular file in a tar.
    fn entries(bytes: &[u8]) -> (HashMap<String, Vec<u8>>, Vec<tar::Header>) {
        let mut a = tar::Archive::new(bytes);
        let mut files = HashMap::new();
        let mut headers = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            headers.push(e.header().clone());
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap();
            files.insert(p, buf);
        }
        (files, headers)
    }

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xtask-image-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd4a5e5000)\n\
             \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f70325a7000)\n\
             \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f703193e000)\n\
             \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f7031b20000)\n\
             \t/lib64/ld-linux-x86-64.so.2 (0x00007f70325da000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn tags_are_checked_and_completed() {
        assert_eq!(normalize_tag("fathom:0.1.0").unwrap(), "fathom:0.1.0");
        assert_eq!(normalize_tag("fathom").unwrap(), "fathom:latest");
        assert_eq!(
            normalize_tag("registry.example.com:5000/fathom/fathom").unwrap(),
            "registry.example.com:5000/fathom/fathom:latest"
        );
        assert_eq!(
            normalize_tag("registry.example.com:5000/fathom/fathom:v1-rc.2").unwrap(),
            "registry.example.com:5000/fathom/fathom:v1-rc.2"
        );
        for bad in [
            "",
            "Fathom:1",
            "fathom:",
            "fathom:a b",
            "a//b:1",
            "fathom:-x",
        ] {
            assert!(normalize_tag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn credentials_never_reach_the_source_label() {
        assert_eq!(
            strip_credentials("https://user:tok@github.com/o/fathom.git"),
            "https://github.com/o/fathom.git"
        );
        assert_eq!(
            strip_credentials("git@github.com:o/fathom.git"),
            "git@github.com:o/fathom.git"
        );
    }

    /// A real dynamically linked binary of this machine stands in for fathom: the layout, the
    /// digests, the libraries and determinism do not depend on which binary it is.
    #[test]
    fn archive_is_a_deterministic_docker_archive_with_the_binary_and_its_libraries() {
        let binary = std::env::current_exe().unwrap();
        let libs = shared_libraries(&binary).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        let dir = temp_dir();
        let mut labels = BTreeMap::new();
        labels.insert("org.opencontainers.image.version".into(), "9.9.9".into());
        let spec = ImageSpec {
            binary: binary.clone(),
            tag: "fathom-unit:1".into(),
            labels,
            created: "2026-01-02T03:04:05Z".into(),
        };
        let a = write(&spec, &dir.join("a.tar")).unwrap();
        let b = write(&spec, &dir.join("b.tar")).unwrap();
        let bytes = std::fs::read(&a.path).unwrap();
        assert_eq!(bytes, std::fs::read(&b.path).unwrap(), "not deterministic");
        assert_eq!(a.size, bytes.len() as u64);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "temporary files left: {leftovers:?}");

        let (files, headers) = entries(&bytes);
        for h in &headers {
            assert_eq!(
                (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
                (0, 0, 0)
            );
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"], json!(["fathom-unit:1"]));
        let cfg_name = manifest[0]["Config"].as_str().unwrap();
        assert_eq!(format!("{}.json", sha256_hex(&files[cfg_name])), cfg_name);
        assert_eq!(
            a.id,
            format!("sha256:{}", cfg_name.trim_end_matches(".json"))
        );
        let cfg: serde_json::Value = serde_json::from_slice(&files[cfg_name]).unwrap();
        let layer = &files[manifest[0]["Layers"][0].as_str().unwrap()];
        assert_eq!(
            cfg["rootfs"]["diff_ids"],
            json!([format!("sha256:{}", sha256_hex(layer))])
        );
        assert_eq!(cfg["config"]["Entrypoint"], json!(["/fathom"]));
        assert_eq!(cfg["config"]["Cmd"], json!(["serve"]));
        assert_eq!(
            cfg["config"]["Labels"]["org.opencontainers.image.version"],
            "9.9.9"
        );
        assert_eq!(cfg["created"], "2026-01-02T03:04:05Z");
        assert!(cfg["config"].get("User").is_none(), "runs as root");

        let (layer_files, layer_headers) = entries(layer);
        assert_eq!(layer_files["fathom"], std::fs::read(&binary).unwrap());
        let mut want: Vec<String> = libs
            .iter()
            .map(|l| l.to_string_lossy().trim_start_matches('/').to_string())
            .collect();
        want.push("fathom".into());
        want.sort();
        let regular: Vec<String> = layer_headers
            .iter()
            .filter(|h| h.entry_type() == tar::EntryType::Regular)
            .map(|h| h.path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(regular, want, "exactly the binary and its libraries");
        assert_eq!(a.files, want);
        for lib in &libs {
            let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
            assert_eq!(layer_files[&rel], std::fs::read(lib).unwrap(), "{rel}");
        }
        for d in ["proc/", "sys/", "dev/", "run/", "tmp/"] {
            assert!(layer_files.contains_key(d), "{d} missing");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkout_metadata_names_this_commit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let (labels, created) = checkout_metadata(root, "1.2.3");
        assert_eq!(labels["org.opencontainers.image.version"], "1.2.3");
        assert_eq!(labels["org.opencontainers.image.created"], created);
        assert_eq!(created.len(), "2026-01-02T03:04:05Z".len(), "{created}");
        if let Some(rev) = labels.get("org.opencontainers.image.revision") {
            assert!(
                rev.len() >= 40 && rev[..40].bytes().all(|b| b.is_ascii_hexdigit()),
                "{rev}"
            );
        }
    }
}
