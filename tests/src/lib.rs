//! Reusable, RAII-guarded helpers for fathom's real-kernel integration tests.
//!
//! Every helper that creates something on the host (a cgroup, a runc container, a network
//! namespace, a veth pair, a running `fathom`) returns a guard whose `Drop` undoes it, also
//! while a test is unwinding from a panic. Names carry a per-process, per-call unique suffix
//! (see [`unique_suffix`]) so tests can run in parallel, in several test binaries at once, and
//! next to other engineers' tests on the same machine.
//!
//! Test hygiene enforced here:
//! - every cgroup/container/netns is removed by its guard;
//! - [`spawn_in_cgroup`] refuses to start a process in a cgroup without a memory limit, and
//!   [`runc::OciBundle`] always sets one, so only memcg OOMs can happen;
//! - network helpers only touch namespaces they created.
//!
//! Most tests need root; see [`require_root!`].

pub mod cgroup;
pub mod containerd;
pub mod dockerd;
pub mod fathom;
pub mod hygiene;
pub mod image;
pub mod netns;
pub mod overlay;
pub mod progs;
pub mod prometheus;
pub mod runc;
pub mod serve;
pub mod traffic;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use cgroup::{CgroupLayout, ChildGuard, TestCgroup, spawn_in_cgroup};
pub use fathom::{FathomCapture, READY_MARKER, fathom_bin};
pub use netns::{NetNs, Side, VethPair};
pub use progs::alloc_binary;
pub use runc::{OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, pod_uid};

/// Prefix of every top-level cgroup directory created by these helpers
/// (`fathom-test-<unique_suffix>`).
pub const CGROUP_PREFIX: &str = "fathom-test-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `n` random bytes from the kernel (`getrandom(2)`).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer/length pair describes the unfilled tail of `buf`.
        let r = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr().cast(),
                n - filled,
                0, // blocking pool; never blocks after early boot
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("getrandom failed: {e}");
        }
        filled += r as usize;
    }
    buf
}

/// A random `u64`.
pub fn random_u64() -> u64 {
    let b = random_bytes(8);
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A short string unique per process and per call: `<pid>-<counter>-<6 random hex>`,
/// e.g. `48213-3-9f0c1a`. Only `[0-9a-f-]`, so it is safe in cgroup names, netns names,
/// container ids and file names. Too long for network interface names (15 chars max): use
/// [`short_suffix`] there.
pub fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = random_u64() & 0xff_ffff;
    format!("{}-{n}-{r:06x}", std::process::id())
}

/// A ≤ 6 character `[0-9a-z]` suffix, for interface names (`IFNAMSIZ` is 16 with the NUL).
/// Mixes pid, a per-process counter and randomness; collisions are unlikely but possible
/// (36^6 ≈ 2·10⁹), so creators that can detect `EEXIST` should retry with a fresh one.
pub fn short_suffix() -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Mix pid and counter into the random value so two processes with the same RNG output
    // (impossible in practice) still differ.
    let mut v = random_u64()
        ^ (u64::from(std::process::id())).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut s = String::with_capacity(6);
    for _ in 0..6 {
        s.push(ALPHABET[(v % 36) as usize] as char);
        v /= 36;
    }
    s
}

/// Polls `cond` every `poll` until it returns true (→ `true`) or `timeout` elapses (→ `false`).
/// `cond` is evaluated at least once, and once more at the deadline.
pub fn wait_until(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(poll.min(deadline - now));
    }
}

/// True when running as uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails the calling test when not running as root. Real-kernel tests need root, and a
/// privileged test that did not run must not count as passed: `cargo xtask test` runs as
/// root (CI too), and `cargo test` as another user fails these tests with this message.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "{} needs root: run the suite as root (`cargo xtask test`)",
            module_path!()
        );
    };
}

/// The workspace root (the parent of this crate's manifest dir).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_dir().join(p)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// A temporary directory removed (recursively) on drop. Created with `mkdtemp(3)` under
/// `$TMPDIR` (or /tmp), named `<prefix>XXXXXX`.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(prefix: &str) -> io::Result<Self> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStringExt;
        let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let mut bytes = CString::new(template.into_os_string().into_vec())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .into_bytes_with_nul();
        // SAFETY: `bytes` is a NUL-terminated, writable template buffer.
        let r = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if r.is_null() {
            return Err(io::Error::last_os_error());
        }
        bytes.pop(); // NUL
        Ok(TempDir {
            path: PathBuf::from(std::ffi::OsString::from_vec(bytes)),
            keep: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Do not remove the directory on drop (for post-mortem debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs a command, returning its output, or an error that includes the command line,
/// the exit status and stderr when it did not exit with 0.
pub fn run_checked(cmd: &mut std::process::Command) -> anyhow::Result<std::process::Output> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("spawning {cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if out.stdout.is_empty() {
                String::new()
            } else {
                format!(" / stdout: {}", String::from_utf8_lossy(&out.stdout).trim())
            }
        );
    }
    Ok(out)
}

/// `stat(2)` inode number of `path` (following symlinks).
pub fn inode_of(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

/// Is a process with this pid alive (exists and is not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the first field after the ")" that closes comm
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn suffixes_are_unique_and_short() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let s = short_suffix();
            assert!(s.len() <= 6, "{s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() && !b.is_ascii_uppercase())
            );
            assert!(seen.insert(s));
            let u = unique_suffix();
            assert!(u.starts_with(&format!("{}-", std::process::id())));
            assert!(seen.insert(u));
        }
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let t = Instant::now();
        assert!(!wait_until(
            Duration::from_millis(50),
            Duration::from_millis(10),
            || false
        ));
        assert!(t.elapsed() >= Duration::from_millis(50));
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                n += 1;
                n == 3
            }
        ));
    }

    #[test]
    fn tempdir_is_removed() {
        let p;
        {
            let d = TempDir::new("fathom-tests-unit-").unwrap();
            p = d.path().to_path_buf();
            std::fs::write(p.join("f"), b"x").unwrap();
            assert!(p.is_dir());
        }
        assert!(!p.exists());
    }
}
