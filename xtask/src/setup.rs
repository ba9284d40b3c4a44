//! `cargo xtask setup`: make this machine able to build and test fathom. Runs before every
//! command, so each step checks first and only acts when something is missing; when everything
//! is there it costs a handful of cheap process spawns.

use std::{
    collections::HashSet,
    fs,
    io::ErrorKind,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages building fathom needs.
const BUILD_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    // containerd-client generates its gRPC code from .proto files at build time.
    "protobuf-compiler",
];

/// Debian packages the tests and the bench use (on top of [`BUILD_PACKAGES`]).
const APT_PACKAGES: &[&str] = &[
    "runc",
    "busybox-static",
    "bpftool",
    "bpftrace",
    "prometheus",
    "containerd",
    "docker.io",
    "iproute2",
    "kmod",
    // An independent reader of the pcapng files `fathom capture --pcap` writes.
    "tcpdump",
    // tests/tests/deploy_image.rs reads deploy/kubernetes/fathom.yaml.
    "python3-yaml",
    // cargo xtask bench: healthy-traffic latency (sockperf) and throughput (iperf3) with
    // fathom on and off.
    "sockperf",
    "iperf3",
];

/// Daemons that package installs may start; tests start their own private instances.
const DAEMONS: &[&str] = &["dockerd", "containerd"];

/// (fstype, source, mount point)
const MOUNTS: &[(&str, &str, &str)] = &[
    ("tracefs", "nodev", "/sys/kernel/tracing"),
    ("bpf", "bpf", "/sys/fs/bpf"),
];

/// What a command needs installed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Building and running fathom: the toolchain, bpf-linker, build packages, mounts.
    Run,
    /// Everything the tests, the bench and the qemu runs use as well.
    Everything,
}

/// Runs every step `need` asks for; returns how many actions were taken (0 when all was in
/// place) and prints how long setup took when it did anything.
pub fn run(need: Need) -> Result<usize> {
    let start = Instant::now();
    let actions = steps(need)?;
    if actions > 0 {
        eprintln!("setup: done in {:.0} s", start.elapsed().as_secs_f64());
    }
    Ok(actions)
}

fn steps(need: Need) -> Result<usize> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("setup: must run as root (it installs packages and mounts tracefs/bpffs)");
        std::process::exit(2);
    }
    ensure_cargo_bin_on_path()?;
    let mut actions = 0;
    actions += usize::from(nightly()?);
    actions += usize::from(install_packages(BUILD_PACKAGES)?);
    if need == Need::Everything {
        actions += usize::from(apt_packages()?);
    }
    actions += usize::from(bpf_linker()?);
    for &(fstype, source, target) in MOUNTS {
        actions += usize::from(mount(fstype, source, target)?);
    }
    Ok(actions)
}

fn action(msg: impl std::fmt::Display) {
    println!("setup: {msg}");
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// `cargo install` puts bpf-linker in $CARGO_HOME/bin; make sure we and our children find it.
fn ensure_cargo_bin_on_path() -> Result<()> {
    let bin = cargo_home()?.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return Ok(());
    }
    let new = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))?;
    // SAFETY: called before this process starts any thread.
    unsafe { std::env::set_var("PATH", new) };
    Ok(())
}

/// Step 1: a nightly toolchain with rust-src (aya-build compiles the eBPF crate with
/// `-Z build-std=core`).
fn nightly() -> Result<bool> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    let have_nightly = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            // `nightly-<host>`, not a dated `nightly-2026-05-19-<host>`.
            name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    if !have_nightly {
        action("installing the nightly toolchain with rust-src");
        cmd::run_logged(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(true);
    }
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed
        .lines()
        .map(str::trim)
        .any(|c| c == "rust-src" || c.starts_with("rust-src-"))
    {
        return Ok(false);
    }
    action("adding rust-src to the nightly toolchain");
    cmd::run_logged(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    Ok(true)
}

/// Step 2: bpf-linker, built against the nightly toolchain's own libLLVM (Debian 12 has no
/// LLVM as new as nightly's).
fn bpf_linker() -> Result<bool> {
    let problem = match Command::new("bpf-linker").arg("--version").output() {
        Err(e) if e.kind() == ErrorKind::NotFound => "not installed".to_owned(),
        Err(e) => format!("cannot run ({e})"),
        Ok(out) if !out.status.success() => format!(
            "fails to run ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout);
            if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
                return Ok(false);
            }
            format!("is {}", version.trim())
        }
    };

    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let verbose = cmd::output(Command::new("rustc").args(["+nightly", "--version", "--verbose"]))?;
    let llvm_version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .context("`rustc +nightly --version --verbose` shows no LLVM version")?;
    let llvm_major = llvm_version.split('.').next().unwrap_or(llvm_version);
    let lib = libllvm_file(&libdir)?;

    // A prefix whose lib/ holds libLLVM.so and the library's own (SONAME) name, both pointing at
    // nightly's copy. bpf-linker links it dynamically and records <prefix>/lib as its RUNPATH, so
    // the prefix must outlive the build: keep it beside the installed binary.
    let prefix = cargo_home()?.join(format!("fathom-llvm-{llvm_version}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = prefix_lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        symlink(libdir.join(&lib), &link)
            .with_context(|| format!("cannot create {}", link.display()))?;
    }

    action(format!(
        "bpf-linker {problem}; building {BPF_LINKER_VERSION} against nightly's LLVM \
         {llvm_version} (about a minute)"
    ));
    let started = Instant::now();
    cmd::run_logged(
        cmd::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            // --force: a same-version install whose libLLVM went away must be rebuilt too.
            .args(["--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix)
            // Away from the workspace, so that its .cargo/config.toml does not apply.
            .current_dir(&prefix),
    )?;
    let out = cmd::output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run from PATH")?;
    action(format!(
        "installed {} in {:.0} s",
        out.trim(),
        started.elapsed().as_secs_f64()
    ));
    Ok(true)
}

/// The file name of nightly's `libLLVM.so.<ver>-rust-<ver>-nightly`.
fn libllvm_file(libdir: &Path) -> Result<String> {
    let mut found: Vec<String> = fs::read_dir(libdir)
        .with_context(|| format!("cannot read {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))
}

/// Step 3: Debian packages.
fn apt_packages() -> Result<bool> {
    install_packages(APT_PACKAGES)
}

/// Installs those of `packages` that are missing (no service starts meanwhile; daemons the
/// install started anyway are stopped). Returns whether it had to. Also used by commands
/// that need a package only for themselves (`cargo xtask vm`: qemu).
pub fn install_packages(packages: &[&str]) -> Result<bool> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(false);
    }
    action(format!("installing {}", missing.join(" ")));
    let started = Instant::now();
    let before = daemon_pids();
    {
        let _policy = NoServiceStart::new()?;
        cmd::run_logged(Command::new("apt-get").args(["update", "-q"]))?;
        cmd::run_logged(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    for (pid, name) in daemon_pids().difference(&before) {
        stop(*pid);
        action(format!(
            "stopped {name} (pid {pid}) that the package install started"
        ));
    }
    let still = missing_packages(packages)?;
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    action(format!(
        "packages installed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(true)
}

fn missing_packages<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    // dpkg-query exits 1 when it knows nothing of a package: read stdout whatever the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .output()
        .context("cannot run dpkg-query (setup supports Debian-based systems only)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: HashSet<&str> = stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            // Status is "<want> <flag> <state>"; state "installed" is the only good one.
            (words.next_back()? == "installed").then_some(name)
        })
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

/// While it lives, /usr/sbin/policy-rc.d tells maintainer scripts not to start services
/// (docker.io's postinst would otherwise start dockerd through its init script).
struct NoServiceStart {
    created: bool,
}

impl NoServiceStart {
    const PATH: &str = "/usr/sbin/policy-rc.d";
    const MARKER: &str = "# fathom xtask: no services during package installs";

    fn new() -> Result<Self> {
        match fs::read_to_string(Self::PATH) {
            // Ours, left over from an interrupted run: remove it when done.
            Ok(text) if text.contains(Self::MARKER) => return Ok(Self { created: true }),
            // The machine's own policy: leave it alone.
            Ok(_) => return Ok(Self { created: false }),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("cannot read {}", Self::PATH)),
        }
        fs::write(
            Self::PATH,
            format!("#!/bin/sh\n{}\nexit 101\n", Self::MARKER),
        )
        .with_context(|| format!("cannot write {}", Self::PATH))?;
        fs::set_permissions(Self::PATH, fs::Permissions::from_mode(0o755))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(Self::PATH);
        }
    }
}

/// (pid, name) of running DAEMONS.
fn daemon_pids() -> HashSet<(i32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        let comm = comm.trim();
        DAEMONS.contains(&comm).then(|| (pid, comm.to_owned()))
    })
    .collect()
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(pid: i32) {
    // Gone, or a zombie waiting for its parent (init) to reap it.
    let gone = || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with(['Z', 'X']))
        })
    };
    // SAFETY: kill(2) with a pid we just read from /proc; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    if !gone() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Step 4: a filesystem mounted at `target`.
fn mount(fstype: &str, source: &str, target: &str) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split(' ').skip(1);
        f.next() == Some(target) && f.next() == Some(fstype)
    });
    if mounted {
        return Ok(false);
    }
    cmd::run(Command::new("mount").args(["-t", fstype, source, target]))?;
    action(format!("mounted {fstype} at {target}"));
    Ok(true)
}
