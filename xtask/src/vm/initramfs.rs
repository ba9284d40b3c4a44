//! The guest's initramfs: one uncompressed `newc` cpio archive, the same for every kernel.
//!
//! It holds `/init` (`init.sh`) and `/vm.conf` (the scenario's numbers), busybox-static (the
//! shell and every tool `/init` uses), the release `fathom` with the shared libraries `ldd`
//! reports for it at the same paths (dynamic loader included), and two static helpers
//! compiled with `gcc -static`: `alloc` (memory hog) and `udpsend` (datagrams to a closed
//! port). The archive is written here rather than with cpio(1) so that `/dev/console` (which
//! `/init` inherits as stdin/stdout before devtmpfs is mounted) is a device node without
//! `mknod` on the host.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::guest::Scenario;

const INIT_SH: &str = include_str!("init.sh");
const ALLOC_C: &str = include_str!("alloc.c");
const UDPSEND_C: &str = include_str!("udpsend.c");
/// From the busybox-static package (installed by setup).
const BUSYBOX: &str = "/bin/busybox";
const CFLAGS: &[&str] = &["-static", "-O2", "-Wall", "-Werror"];

/// Writes `<dir>/initramfs.cpio` and returns its path.
pub fn build(fathom: &Path, dir: &Path, scenario: &Scenario) -> Result<PathBuf> {
    let helpers = dir.join("helpers");
    let alloc = compile(&helpers, "alloc", ALLOC_C)?;
    let udpsend = compile(&helpers, "udpsend", UDPSEND_C)?;

    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, INIT_SH.as_bytes());
    cpio.file("vm.conf", 0o644, scenario.conf().as_bytes());
    cpio.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    cpio.file("fathom", 0o755, &read(fathom)?);
    cpio.file("alloc", 0o755, &read(&alloc)?);
    cpio.file("udpsend", 0o755, &read(&udpsend)?);
    for lib in xtask::image::shared_libraries(fathom)? {
        let name = lib.to_string_lossy();
        // Stored at the path ldd names (symlinks followed: the file's content, its name).
        cpio.file(name.trim_start_matches('/'), 0o755, &read(&lib)?);
    }
    let path = dir.join("initramfs.cpio");
    fs::write(&path, cpio.finish()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Compiles `src` with `gcc -static` into `<dir>/<name>-<hash>/<name>`, unless it is there.
fn compile(dir: &Path, name: &str, src: &str) -> Result<PathBuf> {
    let hash = fnv1a(format!("{src}\0{}", CFLAGS.join(" ")).as_bytes());
    let out_dir = dir.join(format!("{name}-{hash:016x}"));
    let out = out_dir.join(name);
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let c_file = out_dir.join(format!("{name}.c"));
    fs::write(&c_file, src)?;
    let tmp = out_dir.join(format!(".{name}.tmp"));
    let o = Command::new("gcc")
        .args(CFLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(&c_file)
        .output()
        .context("cannot run gcc (apt-get install gcc libc6-dev)")?;
    if !o.status.success() {
        bail!(
            "gcc failed for {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    fs::rename(&tmp, &out)?;
    Ok(out)
}

/// FNV-1a: a stable hash for the helpers' cache names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// A `newc` (SVR4, no CRC) cpio archive, the format the kernel unpacks into its rootfs.
/// Parent directories are added on demand; owner root, mtime 0.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, path: &str) {
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let size = u32::try_from(data.len()).expect("initramfs member below 4 GiB");
        let namesize = u32::try_from(name.len() + 1).expect("short name");
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_archive_lists_with_cpio() {
        let mut c = Cpio::default();
        c.char_device("dev/console", 0o600, 5, 1);
        c.file("lib/x86_64-linux-gnu/libc.so.6", 0o755, b"elf");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = c.finish();
        // Every header starts on a 4-byte boundary and the archive ends with the trailer.
        assert!(bytes.len().is_multiple_of(4));
        assert_eq!(&bytes[..6], b"070701");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        // busybox-static (installed by setup) reads it back.
        let dir = std::env::temp_dir().join(format!("fathom-vm-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.cpio");
        fs::write(&archive, &bytes).unwrap();
        let out = Command::new(BUSYBOX)
            .args(["cpio", "-t", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "lib",
                "lib/x86_64-linux-gnu",
                "lib/x86_64-linux-gnu/libc.so.6",
                "init"
            ]
        );
    }
}
