//! The kernels to boot: Debian `cloud-amd64` kernel packages (small, built-in virtio and
//! serial console, BTF), fetched with `apt-get download` through a private APT configuration
//! under `target/vm/apt/` — its own sources, lists, cache and (empty) dpkg status, signed by
//! the host's Debian archive keyring — so the host's APT setup is left as it is.
//!
//! Per series (`5.10`, `6.1`, …) the newest package of any suite below is taken: bullseye has
//! 5.10, bookworm 6.1, trixie 6.12, bookworm-backports 6.12, trixie-backports 6.16 and later.
//! Only the `vmlinuz` (and the kernel's config, for reference) is kept, in
//! `target/vm/kernels/<series>/`, and reused until `--refresh`.

use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::cmd;

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// (archive, suite) searched for kernels.
const SUITES: &[(&str, &str)] = &[
    (MIRROR, "bullseye"),
    (SECURITY_MIRROR, "bullseye-security"),
    (MIRROR, "bookworm"),
    (SECURITY_MIRROR, "bookworm-security"),
    (MIRROR, "bookworm-backports"),
    (MIRROR, "trixie"),
    (SECURITY_MIRROR, "trixie-security"),
    (MIRROR, "trixie-backports"),
];
const FLAVOUR: &str = "cloud-amd64";

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// What the user asked for: the series (`6.1`) or the file's name.
    pub label: String,
    pub vmlinuz: PathBuf,
    /// The Debian package and its version (none for a file).
    pub package: Option<(String, String)>,
    /// Taken from target/vm/kernels/ rather than downloaded in this run.
    pub cached: bool,
}

impl Kernel {
    /// `package version`, or `local file`, for messages.
    pub fn origin(&self) -> String {
        match &self.package {
            Some((p, v)) if self.cached => format!("{p} {v} (cached)"),
            Some((p, v)) => format!("{p} {v}"),
            None => format!("local file {}", self.vmlinuz.display()),
        }
    }
}

/// The private APT configuration (created on first use; lists fetched at most once per run).
pub struct Apt {
    root: PathBuf,
    ready: bool,
    updated: bool,
}

impl Apt {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            ready: false,
            updated: false,
        }
    }

    fn config_file(&self) -> PathBuf {
        self.root.join("apt.conf")
    }

    /// Writes the configuration; with `update`, or when there are no lists yet, fetches them.
    fn prepare(&mut self, update: bool) -> Result<()> {
        if !self.ready {
            self.write_config()?;
            self.ready = true;
        }
        let lists = self.root.join("state/lists");
        let have_lists = fs::read_dir(&lists)
            .map(|d| d.filter_map(Result::ok).any(|e| e.path().is_file()))
            .unwrap_or(false);
        if !self.updated && (update || !have_lists) {
            println!("vm: fetching Debian package lists (private APT configuration)");
            cmd::run_logged(&mut self.command("apt-get", &["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    fn write_config(&self) -> Result<()> {
        let r = &self.root;
        for d in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(r.join(d))
                .with_context(|| format!("cannot create {}", r.join(d).display()))?;
        }
        let status = r.join("dpkg-status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let conf = format!(
            "// `cargo xtask vm`: a private APT setup that only downloads kernel packages.\n\
             Dir::Etc \"{etc}/\";\n\
             Dir::State \"{state}/\";\n\
             Dir::State::status \"{status}\";\n\
             Dir::Cache \"{cache}/\";\n\
             // No binary caches: 170 MB for these lists, rebuilt in a second when needed.\n\
             Dir::Cache::pkgcache \"\";\n\
             Dir::Cache::srcpkgcache \"\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             Acquire::Languages \"none\";\n\
             Acquire::GzipIndexes \"true\";\n\
             Acquire::CompressionTypes::Order {{ \"gz\"; }};\n\
             // apt-get download writes into our own directory: no need for the _apt user.\n\
             APT::Sandbox::User \"root\";\n",
            etc = r.join("etc").display(),
            state = r.join("state").display(),
            status = status.display(),
            cache = r.join("cache").display(),
        );
        fs::write(self.config_file(), conf)?;
        let sources: String = SUITES
            .iter()
            .map(|(archive, suite)| format!("deb [signed-by={KEYRING}] {archive} {suite} main\n"))
            .collect();
        fs::write(r.join("etc/sources.list"), sources)?;
        Ok(())
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args).env("APT_CONFIG", self.config_file());
        c
    }

    /// The newest package of `series` (`6.1`) with the kernel image, from any suite.
    fn newest(&mut self, series: &str) -> Result<String> {
        let pattern = format!(
            "^linux-(image|binary)-{}\\.[0-9].*-{FLAVOUR}$",
            series.replace('.', "\\.")
        );
        let out = cmd::output(
            &mut self.command("apt-cache", &["search", "--names-only", pattern.as_str()]),
        )?;
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        newest_package(&names, series)
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "no linux-image-{series}.*-{FLAVOUR} package in {} (run with --refresh \
                     if it is newer than the cached lists)",
                    SUITES
                        .iter()
                        .map(|(_, s)| *s)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// The kernel `spec` names: a series (downloaded unless cached) or a file.
pub fn get(apt: &mut Apt, kernels_dir: &Path, spec: &str, refresh: bool) -> Result<Kernel> {
    if spec.contains('/') || Path::new(spec).is_file() {
        let path = Path::new(spec);
        if !path.is_file() {
            bail!("{spec}: no such file");
        }
        return Ok(Kernel {
            label: spec.to_owned(),
            vmlinuz: fs::canonicalize(path)?,
            package: None,
            cached: false,
        });
    }
    if !is_series(spec) {
        bail!("expected a kernel series such as 6.1 or the path of a vmlinuz file, not {spec:?}");
    }
    let dir = kernels_dir.join(spec);
    let vmlinuz = dir.join("vmlinuz");
    let meta = dir.join("kernel.json");
    if !refresh
        && vmlinuz.is_file()
        && let Ok(text) = fs::read_to_string(&meta)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        let field = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
        return Ok(Kernel {
            label: spec.to_owned(),
            vmlinuz,
            package: Some((field("package"), field("version"))),
            cached: true,
        });
    }

    apt.prepare(refresh)?;
    let package = apt.newest(spec)?;
    let download = dir.join("download");
    if download.exists() {
        fs::remove_dir_all(&download)?;
    }
    fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    println!("vm: downloading {package}");
    cmd::run_logged(
        apt.command("apt-get", &["download", "-q", package.as_str()])
            .current_dir(&download),
    )?;
    let deb = fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let version = cmd::output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
        .trim()
        .to_owned();
    extract_kernel(&deb, &download, &dir)?;
    fs::remove_dir_all(&download)?;
    fs::write(
        &meta,
        serde_json::to_string_pretty(&json!({"package": package, "version": version}))? + "\n",
    )?;
    Ok(Kernel {
        label: spec.to_owned(),
        vmlinuz,
        package: Some((package, version)),
        cached: false,
    })
}

/// `6.1`, `5.10`: digits, a dot, digits.
fn is_series(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Moves the deb's kernel image (and config) to `dir/vmlinuz` (`dir/config`). Kernels up to 6.x
/// ship `/boot/vmlinuz-<release>`; the 7.x `linux-binary-*` packages
/// `/usr/lib/modules/<release>/vmlinuz`.
fn extract_kernel(deb: &Path, scratch: &Path, dir: &Path) -> Result<()> {
    let listing = cmd::output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let members = kernel_members(&listing);
    if !members.iter().any(|(_, kind)| *kind == "vmlinuz") {
        bail!("{} holds no vmlinuz", deb.display());
    }
    let unpacked = scratch.join("unpacked");
    fs::create_dir_all(&unpacked)?;
    // dpkg-deb --fsys-tarfile | tar -x <members>: only these files, not the modules.
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let tar_status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&unpacked)
        .args(members.iter().map(|(m, _)| m.as_str()))
        .stdin(dpkg.stdout.take().expect("piped"))
        .status()
        .context("cannot run tar")?;
    let dpkg_status = dpkg.wait()?;
    if !tar_status.success() || !dpkg_status.success() {
        bail!(
            "cannot extract the kernel from {} (dpkg-deb {dpkg_status}, tar {tar_status})",
            deb.display()
        );
    }
    for (member, kind) in &members {
        let to = dir.join(kind);
        fs::rename(unpacked.join(member), &to)
            .with_context(|| format!("cannot move {member} to {}", to.display()))?;
    }
    Ok(())
}

/// (`./member`, `vmlinuz` | `config`) of the regular files in a `dpkg-deb --contents` listing.
fn kernel_members(listing: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for line in listing.lines() {
        if !line.starts_with('-') {
            continue;
        }
        let Some(name) = line.split_whitespace().last() else {
            continue;
        };
        let path = name.trim_start_matches("./");
        let kind = if path.starts_with("boot/vmlinuz-")
            || (path.starts_with("usr/lib/modules/") && path.ends_with("/vmlinuz"))
        {
            "vmlinuz"
        } else if path.starts_with("boot/config-")
            || (path.starts_with("usr/lib/modules/") && path.ends_with("/config"))
        {
            "config"
        } else {
            continue;
        };
        if out.iter().all(|(_, k)| *k != kind) {
            out.push((name.to_owned(), kind));
        }
    }
    out
}

/// Of `linux-image-<version>-cloud-amd64` / `linux-binary-<version>-cloud-amd64` names, the
/// one with the highest version of `series`; `linux-binary-*` (the image itself, 7.x) over
/// `linux-image-*` (then only a meta-package) of the same version.
fn newest_package<'a>(names: &[&'a str], series: &str) -> Option<&'a str> {
    let version_of = |name: &'a str| -> Option<(&'a str, bool)> {
        let (rest, binary) = match name.strip_prefix("linux-binary-") {
            Some(rest) => (rest, true),
            None => (name.strip_prefix("linux-image-")?, false),
        };
        let version = rest.strip_suffix(&format!("-{FLAVOUR}"))?;
        let after = version.strip_prefix(series)?.strip_prefix('.')?;
        after
            .starts_with(|c: char| c.is_ascii_digit())
            .then_some((version, binary))
    };
    names
        .iter()
        .filter_map(|&n| version_of(n).map(|(v, binary)| (n, v, binary)))
        .max_by(|a, b| natural_cmp(a.1, b.1).then(a.2.cmp(&b.2)))
        .map(|(n, _, _)| n)
}

/// Compares runs of digits as numbers and everything else bytewise: `6.1.0-56` >
/// `6.1.0-0.deb11.52`, `6.12.118+deb13` > `6.12.96+deb13`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_package_of_the_series() {
        let names = [
            "linux-image-6.1.0-0.deb11.52-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.12.118+deb13-cloud-amd64",
            "linux-image-6.1-cloud-amd64",
        ];
        assert_eq!(
            newest_package(&names, "6.1"),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let names = [
            "linux-image-6.12.96+deb13-cloud-amd64",
            "linux-image-6.12.118+deb13-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12.115+deb13.1-cloud-amd64",
        ];
        assert_eq!(
            newest_package(&names, "6.12"),
            Some("linux-image-6.12.118+deb13-cloud-amd64")
        );
        let names = [
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-binary-7.3.4+deb13-cloud-amd64",
        ];
        assert_eq!(
            newest_package(&names, "7.3"),
            Some("linux-binary-7.3.4+deb13-cloud-amd64")
        );
        assert_eq!(newest_package(&names, "7.2"), None);
    }

    #[test]
    fn series_are_major_dot_minor() {
        assert!(is_series("5.10") && is_series("6.1"));
        assert!(!is_series("6") && !is_series("6.1.2") && !is_series("6.x") && !is_series(""));
    }

    #[test]
    fn finds_the_kernel_in_a_deb_listing() {
        let listing = "\
drwxr-xr-x root/root         0 2025-11-01 10:00 ./boot/
-rw-r--r-- root/root   4107310 2025-11-01 10:00 ./boot/System.map-6.1.0-56-cloud-amd64
-rw-r--r-- root/root    224880 2025-11-01 10:00 ./boot/config-6.1.0-56-cloud-amd64
-rw-r--r-- root/root   7002560 2025-11-01 10:00 ./boot/vmlinuz-6.1.0-56-cloud-amd64
-rw-r--r-- root/root     12345 2025-11-01 10:00 ./usr/lib/modules/6.1.0-56-cloud-amd64/kernel/x.ko
";
        assert_eq!(
            kernel_members(listing),
            [
                ("./boot/config-6.1.0-56-cloud-amd64".to_owned(), "config"),
                ("./boot/vmlinuz-6.1.0-56-cloud-amd64".to_owned(), "vmlinuz"),
            ]
        );
        let listing = "-rw-r--r-- root/root 9000000 2026-01-01 10:00 ./usr/lib/modules/7.3.4+deb13-cloud-amd64/vmlinuz\n";
        assert_eq!(kernel_members(listing)[0].1, "vmlinuz");
    }
}
