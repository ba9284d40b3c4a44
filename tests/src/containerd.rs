//! A private containerd for tests (own config, root, state and socket in a temp dir) and
//! containers run in it with `ctr`, each behind a guard.
//!
//! Dropping a [`CtrContainer`] kills and deletes its task and container and removes its cgroup
//! directories; dropping [`Containerd`] stops the daemon, kills the shims it left (they outlive
//! the daemon by design), unmounts what is still mounted below its directory and removes it.
//! Containers borrow the daemon, so they are always dropped first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cgroup::{ClaimedPath, all_hierarchy_roots, kill_cgroup_tree};
use crate::image::TestImage;
use crate::{CgroupLayout, TempDir, run_checked, wait_until};

/// A containerd daemon with a private root, state and socket.
#[derive(Debug)]
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    host_dirs: HostPaths,
}

/// Paths outside the private directory that a daemon creates whatever its configuration
/// (containerd 1.6 puts shim sockets in /run/containerd/s; dockerd 20.10 creates
/// /run/docker/plugins and its trust key /etc/docker/key.json). Those that did not exist
/// before the daemon started are removed after it stopped — directories only when empty,
/// so a daemon of a parallel test keeps what it uses.
#[derive(Debug, Default)]
pub struct HostPaths(Vec<PathBuf>);

impl HostPaths {
    /// Remembers which of `paths` (listed shallow → deep) do not exist yet.
    pub fn absent(paths: &[&str]) -> Self {
        HostPaths(
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
        )
    }

    /// Removes the remembered paths, deepest first.
    pub fn remove(&mut self) {
        while let Some(p) = self.0.pop() {
            if p.is_dir() {
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

impl Containerd {
    /// Starts containerd and waits until it answers (`ctr version`). Panics on failure.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("Containerd::start: {e:#}"))
    }

    pub fn try_start() -> Result<Self> {
        let host_dirs = HostPaths::absent(&["/run/containerd", "/run/containerd/s"]);
        let dir = TempDir::new(&format!("fathom-containerd-{}-", std::process::id()))?;
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# The CRI plugin is not needed (ctr talks to the core services) and would open a streaming
# port and look for CNI configs.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd (apt install containerd)")?;
        let mut c = Containerd {
            dir,
            child: Some(child),
            host_dirs,
        };
        let ready = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            c.socket().exists()
                && c.ctr("default")
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        if !ready {
            let log = c.log();
            c.stop();
            bail!("containerd did not come up in 20 s; log:\n{log}");
        }
        Ok(c)
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address <socket> --namespace <namespace>`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(namespace);
        c
    }

    /// `ctr image import` of a docker-archive tarball into `namespace` (images are per
    /// namespace in containerd).
    pub fn import(&self, namespace: &str, image: &TestImage) {
        run_checked(
            self.ctr(namespace)
                .args(["image", "import"])
                .arg(&image.tar),
        )
        .unwrap_or_else(|e| panic!("ctr image import: {e:#}"));
    }

    /// `ctr run --detach` of `spec`. Panics on failure (after cleaning up).
    pub fn run(&self, spec: CtrRun) -> CtrContainer<'_> {
        self.try_run(spec)
            .unwrap_or_else(|e| panic!("ctr run: {e:#}"))
    }

    pub fn try_run(&self, spec: CtrRun) -> Result<CtrContainer<'_>> {
        let cg = spec.cgroup.clone();
        assert!(cg.starts_with('/'), "cgroup path must be absolute: {cg}");
        let layout = CgroupLayout::get();
        let memory_leaf = layout.memory_root().join(cg.trim_start_matches('/'));
        let mut claims = Vec::new();
        for r in all_hierarchy_roots() {
            claims.push(ClaimedPath::claim(&r, &cg)?);
        }
        let c = CtrContainer {
            daemon: self,
            namespace: spec.namespace.clone(),
            id: spec.id.clone(),
            cgroup: cg.clone(),
            memory_leaf,
            claims,
        };
        let mut cmd = self.ctr(&spec.namespace);
        // runc's state and ctr's IO fifos default to /run/containerd/{runc,fifo}: keep them in
        // the private directory too.
        cmd.args(["run", "--detach", "--null-io"])
            .arg("--runc-root")
            .arg(self.dir().join("runc"))
            .arg("--fifo-dir")
            .arg(self.dir().join("fifo"))
            .args(["--cgroup", &cg])
            .arg("--memory-limit")
            .arg(spec.memory_limit.to_string());
        for (k, v) in &spec.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        cmd.arg(&spec.image).arg(&spec.id).args(&spec.args);
        run_checked(&mut cmd)?;
        Ok(c)
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 10 s). Containers keep running in their
    /// shims; the socket disappears.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let done = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        kill_processes_mentioning(self.dir.path());
        unmount_below(self.dir.path());
        self.host_dirs.remove();
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}--- end ---", self.log());
        }
    }
}

/// What to run with `ctr run`.
#[derive(Debug, Clone)]
pub struct CtrRun {
    pub namespace: String,
    pub image: String,
    pub id: String,
    /// Absolute cgroup path (`--cgroup`); should start with a unique `fathom-test-<sfx>`.
    pub cgroup: String,
    pub memory_limit: u64,
    pub labels: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// A container (and its task) in a [`Containerd`].
#[derive(Debug)]
pub struct CtrContainer<'a> {
    daemon: &'a Containerd,
    namespace: String,
    id: String,
    cgroup: String,
    memory_leaf: PathBuf,
    claims: Vec<ClaimedPath>,
}

impl CtrContainer<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cgroup path given to `ctr run --cgroup`.
    pub fn cgroup_path(&self) -> &str {
        &self.cgroup
    }

    pub fn memory_path(&self) -> &Path {
        &self.memory_leaf
    }

    /// Host pids in the container's memory cgroup.
    pub fn host_pids(&self) -> Vec<u32> {
        crate::cgroup::read_procs(&self.memory_leaf)
    }

    /// OOM kills counted by the container's memory cgroup.
    pub fn oom_kill_count(&self) -> u64 {
        memcg_oom_kills(&self.memory_leaf)
    }

    /// `ctr task exec` (detached from its output), e.g. to start another allocator.
    pub fn exec(&self, args: &[&str]) -> Output {
        let exec_id = format!("x{}", crate::short_suffix());
        self.daemon
            .ctr(&self.namespace)
            .args(["task", "exec", "--exec-id", &exec_id])
            .arg("--fifo-dir")
            .arg(self.daemon.dir().join("fifo"))
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawning ctr task exec")
    }
}

impl Drop for CtrContainer<'_> {
    fn drop(&mut self) {
        let quiet = |mut c: Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        let mut kill = self.daemon.ctr(&self.namespace);
        kill.args(["task", "kill", "--signal", "SIGKILL", "--all", &self.id]);
        quiet(kill);
        let _ = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            self.host_pids().is_empty()
        });
        let mut del = self.daemon.ctr(&self.namespace);
        del.args(["task", "delete", "--force", &self.id]);
        quiet(del);
        let mut rm = self.daemon.ctr(&self.namespace);
        rm.args(["container", "delete", &self.id]);
        quiet(rm);
        for c in &self.claims {
            if let Err(e) = kill_cgroup_tree(&c.leaf, Duration::from_secs(5)) {
                eprintln!("fathom-tests: ctr container {}: {e:#}", self.id);
            }
        }
        for c in &mut self.claims {
            c.release();
        }
    }
}

/// `oom_kill` of a memory cgroup (v2 memory.events, v1 memory.oom_control).
pub fn memcg_oom_kills(memory_dir: &Path) -> u64 {
    let file = if CgroupLayout::get().memory_is_v2() {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    crate::cgroup::read_keyed(&memory_dir.join(file), "oom_kill").unwrap_or(0)
}

/// SIGKILLs every process whose command line mentions `dir` (shims and helpers a daemon
/// started with paths below its private directory), other than this process.
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    for _ in 0..50 {
        let mut found = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || !crate::pid_alive(pid) {
                continue;
            }
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmd.windows(needle.len()).any(|w| w == needle) {
                found = true;
                // SAFETY: kill(2) of a process that runs with our private paths.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount point at or below `dir` (deepest first): overlay rootfs
/// mounts, netns bind mounts, shm tmpfs a daemon left behind.
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: valid C string; MNT_DETACH never blocks on busy mounts.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
