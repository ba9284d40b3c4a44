//! runc containers for tests: an OCI bundle builder (busybox-static rootfs + the `alloc`
//! helper) and a RAII guard around `runc run --detach` with a private state root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cgroup::{ClaimedPath, all_hierarchy_roots, kill_cgroup_tree, unique_root_name};
use crate::{TempDir, hex, random_bytes, run_checked};

/// Default memory limit of a bundle (test hygiene: a container never runs without one).
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;

/// busybox applets linked into the rootfs's /bin.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "sleep", "cat", "ls", "echo", "kill", "ps", "true", "false", "mkdir", "rm", "head", "dd",
    "grep", "env", "id", "hostname", "ip", "wget", "nc", "ping",
];

/// A random 64-hex-digit id, like containerd/docker container ids.
pub fn container_id_64hex() -> String {
    hex(&random_bytes(32))
}

/// A random version-4 UUID (like a Kubernetes pod UID), lower-case with dashes.
pub fn pod_uid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A Kubernetes cgroupfs-driver style path under a fresh test root:
/// `/fathom-test-<sfx>/kubepods/burstable/pod<pod_uid>/<container_id>`.
pub fn kube_cgroups_path(pod_uid: &str, container_id: &str) -> String {
    format!(
        "/{}/kubepods/burstable/pod{pod_uid}/{container_id}",
        unique_root_name()
    )
}

/// A Kubernetes systemd-driver style path (as a plain cgroupfs path; there is no systemd):
/// `/fathom-test-<sfx>/kubepods.slice/kubepods-burstable.slice/
///  kubepods-burstable-pod<uid with _>.slice/cri-containerd-<container_id>.scope`.
pub fn kube_systemd_cgroups_path(pod_uid: &str, container_id: &str) -> String {
    let u = pod_uid.replace('-', "_");
    format!(
        "/{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{container_id}.scope",
        unique_root_name()
    )
}

/// `runc spec` output (runc 1.1.5), the template for generated configs.
fn base_spec() -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "fathom-test",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }]
            },
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// An OCI bundle in a temporary directory (removed on drop): `rootfs/` holds /bin/busybox with
/// applet symlinks (sh, sleep, cat, …) and the static `alloc` helper at /alloc; `config.json`
/// is written when the container starts.
///
/// Defaults: args `sleep 3600`, memory limit [`DEFAULT_MEMORY_LIMIT`], a fresh
/// Kubernetes-style `cgroupsPath` ([`kube_cgroups_path`]), namespaces pid/ipc/uts/mount (no
/// network namespace: the host's is shared), writable rootfs, no terminal.
#[derive(Debug)]
pub struct OciBundle {
    dir: TempDir,
    spec: Value,
}

impl Default for OciBundle {
    fn default() -> Self {
        Self::new()
    }
}

impl OciBundle {
    /// A bundle with the default rootfs. Panics on failure.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("OciBundle::new: {e:#}"))
    }

    pub fn try_new() -> Result<Self> {
        let dir = TempDir::new(&format!("fathom-bundle-{}-", std::process::id()))?;
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(crate::progs::busybox_binary(), rootfs.join("bin/busybox"))
            .context("copying busybox")?;
        for a in BUSYBOX_APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
        }
        std::fs::copy(crate::alloc_binary(), rootfs.join("alloc")).context("copying alloc")?;
        std::fs::write(rootfs.join("etc/hostname"), "fathom-test\n")?;
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        let mut b = OciBundle {
            dir,
            spec: base_spec(),
        };
        b.spec["linux"]["cgroupsPath"] =
            Value::from(kube_cgroups_path(&pod_uid(), &container_id_64hex()));
        b.spec["linux"]["resources"]["memory"] = json!({ "limit": DEFAULT_MEMORY_LIMIT });
        b.spec["process"]["args"] = json!(["sleep", "3600"]);
        Ok(b)
    }

    /// Sets `process.args`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.spec["process"]["args"] = json!(args);
        self
    }

    /// Appends `KEY=VALUE` to `process.env`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        if let Some(a) = self.spec["process"]["env"].as_array_mut() {
            a.push(Value::from(format!("{key}={value}")));
        }
        self
    }

    /// Sets `linux.resources.memory.limit` (bytes).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.spec["linux"]["resources"]["memory"]["limit"] = Value::from(bytes);
        self
    }

    /// Sets `linux.cgroupsPath` (absolute, e.g. from [`kube_cgroups_path`]). Paths should start
    /// with a unique `fathom-test-<sfx>` component so nothing is shared with other tests.
    pub fn cgroups_path(mut self, path: &str) -> Self {
        assert!(
            path.starts_with('/'),
            "cgroupsPath must be absolute: {path}"
        );
        self.spec["linux"]["cgroupsPath"] = Value::from(path);
        self
    }

    /// With `true`, the container gets a new, empty network namespace (only `lo`, down).
    pub fn with_netns(mut self, netns: bool) -> Self {
        let ns = self.spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces array");
        ns.retain(|n| n["type"] != "network");
        if netns {
            ns.push(json!({ "type": "network" }));
        }
        self
    }

    /// Copies a host file into the rootfs at `dest` (absolute path inside the container).
    pub fn add_file(self, src: &Path, dest: &str) -> Self {
        let d = self.rootfs().join(dest.trim_start_matches('/'));
        if let Some(p) = d.parent() {
            std::fs::create_dir_all(p).expect("mkdir in rootfs");
        }
        std::fs::copy(src, &d)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), d.display()));
        self
    }

    /// The whole runtime spec, for anything the builder methods do not cover.
    pub fn spec_mut(&mut self) -> &mut Value {
        &mut self.spec
    }

    pub fn spec(&self) -> &Value {
        &self.spec
    }

    /// Bundle directory (holds config.json, rootfs/, and the container's stdout/stderr files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// `linux.cgroupsPath`.
    pub fn get_cgroups_path(&self) -> String {
        self.spec["linux"]["cgroupsPath"]
            .as_str()
            .expect("cgroupsPath set")
            .to_string()
    }

    /// `linux.resources.memory.limit`.
    pub fn get_memory_limit(&self) -> Option<u64> {
        self.spec["linux"]["resources"]["memory"]["limit"].as_u64()
    }

    /// File receiving the container process's stdout.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout")
    }

    /// File receiving the container process's stderr (and runc's own errors).
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }

    /// Writes config.json.
    pub fn write_config(&self) -> Result<()> {
        let p = self.dir.path().join("config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&self.spec)?)
            .with_context(|| format!("writing {}", p.display()))
    }
}

/// A container started with `runc run --detach` under a private `--root`. Dropping it kills
/// and deletes the container, removes the cgroup directories runc left behind in every
/// hierarchy (deepest first; runc only removes the leaf), the state root and the bundle.
#[derive(Debug)]
pub struct RuncContainer {
    id: String,
    state_root: TempDir,
    /// One per mounted hierarchy; first memory, then the cgroup2 one (if any), then the rest.
    claims: Vec<ClaimedPath>,
    memory_leaf: PathBuf,
    unified_leaf: Option<PathBuf>,
    // Declared last: dropped after the cleanup in Drop.
    bundle: OciBundle,
}

impl RuncContainer {
    /// Starts `bundle` as container `id` (must be unique: use a suffix or
    /// [`container_id_64hex`]). Panics on failure, after cleaning up.
    pub fn run_detached(bundle: OciBundle, id: &str) -> Self {
        Self::try_run_detached(bundle, id)
            .unwrap_or_else(|e| panic!("RuncContainer::run_detached({id}): {e:#}"))
    }

    pub fn try_run_detached(bundle: OciBundle, id: &str) -> Result<Self> {
        let limit = bundle.get_memory_limit();
        if limit.is_none() {
            bail!("bundle has no memory limit (test hygiene: only memcg OOMs)");
        }
        let cg = bundle.get_cgroups_path();
        let layout = crate::CgroupLayout::get();
        let mem_root = layout.memory_root().to_path_buf();
        let memory_leaf = mem_root.join(cg.trim_start_matches('/'));
        let unified_leaf = layout
            .unified_root()
            .map(|u| u.join(cg.trim_start_matches('/')));
        if memory_leaf.exists() {
            bail!(
                "{} exists already: use a unique cgroupsPath",
                memory_leaf.display()
            );
        }
        // Claim the path in every hierarchy before runc creates it, so Drop removes exactly
        // what did not exist before.
        let mut roots = all_hierarchy_roots();
        roots.sort_by_key(|r| (r != &mem_root, Some(r.as_path()) != layout.unified_root()));
        let mut claims = Vec::new();
        for r in &roots {
            claims.push(ClaimedPath::claim(r, &cg)?);
        }
        bundle.write_config()?;
        let c = RuncContainer {
            id: id.to_string(),
            state_root: TempDir::new(&format!("fathom-runc-{}-", std::process::id()))?,
            claims,
            memory_leaf,
            unified_leaf,
            bundle,
        };
        let stdout = std::fs::File::create(c.bundle.stdout_path())?;
        let stderr = std::fs::File::create(c.bundle.stderr_path())?;
        // With --detach and no terminal, runc hands its own stdio to the container: files, so
        // nothing keeps a pipe of ours open.
        let status = c
            .runc()
            .arg("--log")
            .arg(c.bundle.dir().join("runc.log"))
            .args(["run", "--detach", "--bundle"])
            .arg(c.bundle.dir())
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .context("running runc (apt install runc)")?;
        if !status.success() {
            bail!(
                "runc run failed ({status}): {} {}",
                std::fs::read_to_string(c.bundle.stderr_path()).unwrap_or_default(),
                std::fs::read_to_string(c.bundle.dir().join("runc.log")).unwrap_or_default()
            );
        }
        Ok(c)
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(self.state_root.path());
        cmd
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn bundle(&self) -> &OciBundle {
        &self.bundle
    }

    /// runc's private state root (`--root`).
    pub fn state_root(&self) -> &Path {
        self.state_root.path()
    }

    /// `runc state <id>` as JSON.
    pub fn state(&self) -> Result<Value> {
        let out = run_checked(self.runc().args(["state", &self.id]))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `status` from `runc state` ("created", "running", "paused", "stopped").
    pub fn status(&self) -> String {
        self.state()
            .ok()
            .and_then(|s| s["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Host pid of the container's init process (from `runc state`).
    pub fn pid(&self) -> u32 {
        let s = self.state().expect("runc state");
        s["pid"].as_u64().expect("pid in runc state") as u32
    }

    /// `runc exec <id> <args…>` (no tty), waiting for it to finish.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.runc()
            .arg("exec")
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawning runc exec")
    }

    /// Contents of the container's stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.bundle.stdout_path()).unwrap_or_default()
    }

    /// Contents of the container's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.bundle.stderr_path()).unwrap_or_default()
    }

    /// Waits until the container's stdout has at least one complete line; returns the first.
    pub fn wait_stdout_line(&self, timeout: Duration) -> Option<String> {
        let mut line = None;
        crate::wait_until(timeout, Duration::from_millis(10), || {
            let s = self.stdout();
            if let Some(i) = s.find('\n') {
                line = Some(s[..i].to_string());
                true
            } else {
                false
            }
        });
        line
    }

    /// `linux.cgroupsPath` of the container.
    pub fn cgroups_path(&self) -> String {
        self.bundle.get_cgroups_path()
    }

    /// The container's cgroup directory in the memory hierarchy.
    pub fn memory_path(&self) -> &Path {
        &self.memory_leaf
    }

    /// The container's cgroup directory in the cgroup2 hierarchy (None on v1-only hosts).
    pub fn unified_path(&self) -> Option<&Path> {
        self.unified_leaf.as_deref()
    }

    /// Inode of the memory cgroup directory.
    pub fn memory_cgroup_id(&self) -> u64 {
        crate::inode_of(&self.memory_leaf).expect("stat container memory cgroup")
    }

    /// Inode of the cgroup2 directory (`bpf_get_current_cgroup_id()` of its tasks), if runc
    /// created one.
    pub fn unified_cgroup_id(&self) -> Option<u64> {
        self.unified_leaf
            .as_deref()
            .and_then(|p| crate::inode_of(p).ok())
    }

    /// Host pids in the container's memory cgroup.
    pub fn host_pids(&self) -> Vec<u32> {
        crate::cgroup::read_procs(&self.memory_leaf)
    }

    /// OOM kills in the container's memory cgroup.
    pub fn oom_kill_count(&self) -> u64 {
        let file = if crate::CgroupLayout::get().memory_is_v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        crate::cgroup::read_keyed(&self.memory_leaf.join(file), "oom_kill").unwrap_or(0)
    }

    fn cleanup(&mut self) {
        // Errors are expected here (container already stopped/deleted) and ignored.
        let _ = self
            .runc()
            .args(["kill", &self.id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = crate::wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
            self.host_pids().is_empty()
        });
        let out = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stdin(Stdio::null())
            .output();
        if let Ok(o) = &out {
            let err = String::from_utf8_lossy(&o.stderr);
            if !o.status.success() && !err.contains("does not exist") {
                eprintln!("fathom-tests: runc delete {}: {}", self.id, err.trim());
            }
        }
        for c in &self.claims {
            if let Err(e) = kill_cgroup_tree(&c.leaf, Duration::from_secs(5)) {
                eprintln!("fathom-tests: container {}: {e:#}", self.id);
            }
        }
        for c in &mut self.claims {
            c.release();
        }
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        self.cleanup();
        if std::thread::panicking() {
            let (o, e) = (self.stdout(), self.stderr());
            if !o.is_empty() || !e.is_empty() {
                eprintln!(
                    "--- container {} stdout ---\n{o}--- stderr ---\n{e}--- end ---",
                    self.id
                );
            }
        }
    }
}
