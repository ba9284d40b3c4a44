//! Test cgroups: layout detection, a RAII guard that creates a (possibly nested) cgroup in the
//! memory hierarchy and in the cgroup2 hierarchy, and spawning processes inside it.
//!
//! Ownership of directories is tracked in a process-wide, ref-counted registry: a directory is
//! removed only by the last guard of *this process* that created or reused it, never when it
//! existed before any guard touched it. This lets several guards (cgroups, runc containers)
//! share intermediate directories such as `fathom-test-<sfx>/kubepods/burstable/pod<uid>`.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup v2: one hierarchy (usually /sys/fs/cgroup) with the memory controller.
    V2 { root: PathBuf },
    /// v1 controllers plus a controller-less cgroup2 mount (usually /sys/fs/cgroup/unified).
    /// `v1_root` is the mount point of the v1 **memory** hierarchy (/sys/fs/cgroup/memory).
    Hybrid { unified: PathBuf, v1_root: PathBuf },
    /// v1 only. `v1_root` is the mount point of the v1 memory hierarchy.
    V1 { v1_root: PathBuf },
}

#[derive(Debug, Clone)]
struct Mount {
    point: PathBuf,
    fstype: String,
    opts: Vec<String>,
}

/// Undo the octal escapes (`\040` etc.) of /proc/mounts fields.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// cgroup / cgroup2 mounts from /proc/mounts, first mount of each hierarchy only.
fn cgroup_mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mut out: Vec<Mount> = Vec::new();
    let mut seen_keys: Vec<String> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let fstype = f[2];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let opts: Vec<String> = f[3].split(',').map(str::to_string).collect();
        // Identify the hierarchy: cgroup2 is one hierarchy; a v1 one by its controllers/name=.
        let key = if fstype == "cgroup2" {
            "cgroup2".to_string()
        } else {
            let mut k: Vec<&str> = opts
                .iter()
                .map(String::as_str)
                .filter(|o| is_v1_hierarchy_opt(o))
                .collect();
            k.sort_unstable();
            k.join(",")
        };
        if seen_keys.contains(&key) {
            continue;
        }
        seen_keys.push(key);
        out.push(Mount {
            point: PathBuf::from(unescape_mount_field(f[1])),
            fstype: fstype.to_string(),
            opts,
        });
    }
    Ok(out)
}

/// Mount options of a v1 cgroup mount that are not controller / name= options.
fn is_v1_hierarchy_opt(o: &str) -> bool {
    !matches!(
        o,
        "rw" | "ro"
            | "nosuid"
            | "nodev"
            | "noexec"
            | "relatime"
            | "noatime"
            | "strictatime"
            | "nodiratime"
            | "xattr"
            | "noprefix"
            | "cpuset_v2_mode"
            | "clone_children"
    ) && !o.starts_with("release_agent=")
}

impl CgroupLayout {
    /// Detects the layout from /proc/mounts (not cached; see [`CgroupLayout::get`]).
    pub fn detect() -> Result<Self> {
        let mounts = cgroup_mounts()?;
        let v1_memory = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.opts.iter().any(|o| o == "memory"))
            .map(|m| m.point.clone());
        let v2 = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.point.clone());
        match (v2, v1_memory) {
            (Some(unified), Some(v1_root)) => Ok(CgroupLayout::Hybrid { unified, v1_root }),
            (None, Some(v1_root)) => Ok(CgroupLayout::V1 { v1_root }),
            (Some(root), None) => {
                let ctrls =
                    std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                if !ctrls.split_whitespace().any(|c| c == "memory") {
                    bail!(
                        "cgroup2 at {} has no memory controller and no v1 memory hierarchy is mounted",
                        root.display()
                    );
                }
                Ok(CgroupLayout::V2 { root })
            }
            (None, None) => bail!("no cgroup hierarchy mounted (see /proc/mounts)"),
        }
    }

    /// The layout of this host, detected once per process. Panics if none is usable.
    pub fn get() -> &'static CgroupLayout {
        static L: OnceLock<CgroupLayout> = OnceLock::new();
        L.get_or_init(|| CgroupLayout::detect().expect("detecting cgroup layout"))
    }

    /// Root of the hierarchy that has the memory controller.
    pub fn memory_root(&self) -> &Path {
        match self {
            CgroupLayout::V2 { root } => root,
            CgroupLayout::Hybrid { v1_root, .. } | CgroupLayout::V1 { v1_root } => v1_root,
        }
    }

    /// Root of the cgroup2 hierarchy, if one is mounted (the same as `memory_root` on pure v2).
    pub fn unified_root(&self) -> Option<&Path> {
        match self {
            CgroupLayout::V2 { root } => Some(root),
            CgroupLayout::Hybrid { unified, .. } => Some(unified),
            CgroupLayout::V1 { .. } => None,
        }
    }

    /// Is the memory controller a cgroup v2 one (memory.max, memory.events)?
    pub fn memory_is_v2(&self) -> bool {
        matches!(self, CgroupLayout::V2 { .. })
    }
}

/// Mount points of every mounted cgroup hierarchy (each v1 hierarchy, including named ones
/// such as `name=systemd`, and cgroup2). runc creates a container's cgroup in all of them.
pub fn all_hierarchy_roots() -> Vec<PathBuf> {
    cgroup_mounts()
        .map(|ms| ms.into_iter().map(|m| m.point).collect())
        .unwrap_or_default()
}

/// A fresh top-level cgroup directory name, `fathom-test-<unique_suffix>`.
pub fn unique_root_name() -> String {
    format!("{}{}", crate::CGROUP_PREFIX, crate::unique_suffix())
}

// ---------------------------------------------------------------------------------------------
// Ownership registry

/// Directories created by this process's guards → number of guards using them.
fn registry() -> &'static Mutex<HashMap<PathBuf, usize>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, usize>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_registry() -> std::sync::MutexGuard<'static, HashMap<PathBuf, usize>> {
    // A panic while holding the lock must not stop other guards from cleaning up.
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// Owned directories of one relative path in one hierarchy, shallow → deep.
#[derive(Debug)]
pub(crate) struct ClaimedPath {
    pub(crate) leaf: PathBuf,
    /// Directories this claim holds a reference on (shallow → deep). Pre-existing directories
    /// not created by any guard of this process are not in here and are never removed.
    owned: Vec<PathBuf>,
}

/// Splits a cgroup path (with or without leading '/') into its components, rejecting '..'.
fn components(rel: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() {
        bail!("empty cgroup path {rel:?}");
    }
    if parts.iter().any(|c| *c == "." || *c == "..") {
        bail!("cgroup path {rel:?} must not contain . or ..");
    }
    Ok(parts)
}

impl ClaimedPath {
    /// Takes a reference on every directory of `root/rel` that either does not exist yet or
    /// was created by another guard of this process. Creates nothing (see [`Self::mkdirs`]).
    pub(crate) fn claim(root: &Path, rel: &str) -> Result<Self> {
        let parts = components(rel)?;
        let mut reg = lock_registry();
        let mut owned = Vec::new();
        let mut p = root.to_path_buf();
        for c in parts {
            p.push(c);
            if let Some(n) = reg.get_mut(&p) {
                *n += 1;
                owned.push(p.clone());
            } else if !p.exists() {
                reg.insert(p.clone(), 1);
                owned.push(p.clone());
            }
        }
        Ok(ClaimedPath { leaf: p, owned })
    }

    /// Creates the missing directories from `root` down to the leaf; `before_mkdir(parent)` runs
    /// before each directory is created.
    pub(crate) fn mkdirs(
        &self,
        root: &Path,
        mut before_mkdir: impl FnMut(&Path) -> Result<()>,
    ) -> Result<()> {
        let rel = self.leaf.strip_prefix(root).context("leaf outside root")?;
        let mut p = root.to_path_buf();
        for c in rel.components() {
            let parent = p.clone();
            p.push(c);
            if p.is_dir() {
                continue;
            }
            before_mkdir(&parent)?;
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("mkdir {}", p.display())),
            }
        }
        Ok(())
    }

    /// Drops this claim's references deepest first; a directory whose count reaches zero is
    /// emptied of processes and removed (with any sub-cgroups left inside it).
    pub(crate) fn release(&mut self) {
        let mut reg = lock_registry();
        while let Some(p) = self.owned.pop() {
            let last = match reg.get_mut(&p) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    reg.remove(&p);
                    true
                }
                None => true,
            };
            if last
                && p.exists()
                && let Err(e) = remove_cgroup_tree(&p, Duration::from_secs(5))
            {
                eprintln!("fathom-tests: cleaning cgroup {}: {e:#}", p.display());
            }
        }
    }
}

impl Drop for ClaimedPath {
    fn drop(&mut self) {
        self.release();
    }
}

// ---------------------------------------------------------------------------------------------
// Killing and removing

/// Pids listed in `dir/cgroup.procs` (empty if unreadable).
pub fn read_procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `dir` and all cgroup directories below it, deepest first.
fn subtree_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    walk(dir, &mut out);
    out
}

/// Kills every process in `dir` and its sub-cgroups (cgroup.kill where the kernel has it, else
/// SIGKILL to every pid in cgroup.procs), until all are empty or `timeout` passes.
/// Never signals the calling process itself.
pub fn kill_cgroup_tree(dir: &Path, timeout: Duration) -> Result<()> {
    let me = std::process::id();
    let deadline = Instant::now() + timeout;
    let kill_file = dir.join("cgroup.kill");
    loop {
        let dirs = subtree_deepest_first(dir);
        let mut left: Vec<u32> = dirs
            .iter()
            .flat_map(|d| read_procs(d))
            .filter(|p| *p != me)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        // cgroup.kill (v2, kernel >= 5.14) kills the whole subtree atomically, but must not be
        // used when we are inside it ourselves.
        let self_inside = dirs.iter().any(|d| read_procs(d).contains(&me));
        if kill_file.exists() && !self_inside {
            let _ = std::fs::write(&kill_file, "1");
        }
        for pid in &left {
            // SAFETY: kill(2) with a pid read from cgroup.procs.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        if Instant::now() >= deadline {
            left.sort_unstable();
            bail!(
                "processes {left:?} still in {} after {timeout:?}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills all processes in `dir`'s subtree, then removes its directories deepest first.
/// Retries `rmdir` on EBUSY (a dying task can keep a cgroup busy for a moment).
pub fn remove_cgroup_tree(dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    kill_cgroup_tree(dir, timeout)?;
    for d in subtree_deepest_first(dir) {
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline => {
                    // EBUSY: a task still exiting, or someone moved a task in: kill again.
                    let _ = e;
                    let _ = kill_cgroup_tree(&d, Duration::from_millis(100));
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).with_context(|| format!("rmdir {}", d.display())),
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TestCgroup

/// A cgroup created for a test, in the memory hierarchy and (when it is separate) in the
/// cgroup2 hierarchy, under the same relative path. Dropping it kills everything inside and
/// removes every directory it created (deepest first), never pre-existing ones.
#[derive(Debug)]
pub struct TestCgroup {
    rel: String,
    layout: CgroupLayout,
    memory: ClaimedPath,
    /// Separate cgroup2 hierarchy (hybrid layout only).
    unified: Option<ClaimedPath>,
}

impl TestCgroup {
    /// Creates `rel_path` (relative to the hierarchy roots, may be nested, e.g.
    /// `fathom-test-<sfx>/kubepods/burstable/pod<uid>/<id>`) in the memory hierarchy and in the
    /// separate cgroup2 hierarchy if there is one. On pure v2, `+memory` is enabled in
    /// `cgroup.subtree_control` of every ancestor. The leaf must not exist yet.
    /// Panics on failure (after undoing what it did).
    pub fn create(rel_path: &str) -> Self {
        Self::try_create(rel_path)
            .unwrap_or_else(|e| panic!("TestCgroup::create({rel_path}): {e:#}"))
    }

    /// A fresh single-level cgroup `fathom-test-<unique_suffix>`.
    pub fn create_unique() -> Self {
        Self::create(&unique_root_name())
    }

    /// Fallible [`TestCgroup::create`].
    pub fn try_create(rel_path: &str) -> Result<Self> {
        let layout = CgroupLayout::get().clone();
        let rel = components(rel_path)?.join("/");
        let mem_root = layout.memory_root().to_path_buf();
        if mem_root.join(&rel).exists() {
            bail!(
                "{} already exists: use a unique path",
                mem_root.join(&rel).display()
            );
        }
        let memory = ClaimedPath::claim(&mem_root, &rel)?;
        let unified = match &layout {
            CgroupLayout::Hybrid { unified, .. } => Some(ClaimedPath::claim(unified, &rel)?),
            _ => None,
        };
        // From here on, Drop undoes partial work.
        let cg = TestCgroup {
            rel,
            layout,
            memory,
            unified,
        };
        let v2 = cg.layout.memory_is_v2();
        cg.memory.mkdirs(&mem_root, |parent| {
            if v2 {
                enable_memory_controller(parent)
            } else {
                Ok(())
            }
        })?;
        if let (Some(u), Some(root)) = (&cg.unified, cg.layout.unified_root()) {
            u.mkdirs(root, |_| Ok(()))?;
        }
        Ok(cg)
    }

    /// The relative path as given (without leading '/').
    pub fn rel_path(&self) -> &str {
        &self.rel
    }

    /// Directory in the memory hierarchy.
    pub fn memory_path(&self) -> &Path {
        &self.memory.leaf
    }

    /// Directory in the cgroup2 hierarchy (same as `memory_path` on pure v2; None on v1-only).
    pub fn unified_path(&self) -> Option<&Path> {
        match &self.unified {
            Some(u) => Some(&u.leaf),
            None if self.layout.memory_is_v2() => Some(&self.memory.leaf),
            None => None,
        }
    }

    /// Every directory this guard manages (memory, then unified if separate).
    pub fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.memory.leaf.as_path()];
        if let Some(u) = &self.unified {
            v.push(&u.leaf);
        }
        v
    }

    /// The cgroup layout the guard was created with.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// Is the memory controller cgroup v2?
    pub fn memory_is_v2(&self) -> bool {
        self.layout.memory_is_v2()
    }

    /// Inode of the memory cgroup dir (= the kernfs id a BPF program reads from the v1 memcg,
    /// or the cgroup id on pure v2).
    pub fn memory_cgroup_id(&self) -> u64 {
        crate::inode_of(self.memory_path()).expect("stat memory cgroup")
    }

    /// Inode of the cgroup2 dir (= `bpf_get_current_cgroup_id()` for tasks inside).
    pub fn unified_cgroup_id(&self) -> Option<u64> {
        self.unified_path()
            .map(|p| crate::inode_of(p).expect("stat unified cgroup"))
    }

    /// Sets the memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`). Swap is left alone.
    pub fn set_memory_limit(&self, bytes: u64) {
        let file = if self.memory_is_v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let p = self.memory_path().join(file);
        std::fs::write(&p, bytes.to_string())
            .unwrap_or_else(|e| panic!("writing {bytes} to {}: {e}", p.display()));
    }

    /// The memory limit in bytes, or None when unlimited.
    pub fn memory_limit(&self) -> Option<u64> {
        let file = if self.memory_is_v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let s = std::fs::read_to_string(self.memory_path().join(file)).ok()?;
        let s = s.trim();
        if s == "max" {
            return None;
        }
        let v: u64 = s.parse().ok()?;
        // v1 reports "unlimited" as PAGE_COUNTER_MAX pages (≈ 2^63 rounded to a page).
        if v >= (1u64 << 62) { None } else { Some(v) }
    }

    /// Current memory usage (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub fn memory_usage(&self) -> u64 {
        let file = if self.memory_is_v2() {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_u64(&self.memory_path().join(file)).unwrap_or(0)
    }

    /// Moves `pid` into this cgroup in every hierarchy managed.
    pub fn add_pid(&self, pid: u32) {
        for p in self.paths() {
            let f = p.join("cgroup.procs");
            std::fs::write(&f, pid.to_string())
                .unwrap_or_else(|e| panic!("writing {pid} to {}: {e}", f.display()));
        }
    }

    /// Pids in the memory cgroup (not its descendants).
    pub fn procs(&self) -> Vec<u32> {
        read_procs(self.memory_path())
    }

    /// Pids in the cgroup2 cgroup (not its descendants), if there is one.
    pub fn unified_procs(&self) -> Option<Vec<u32>> {
        self.unified_path().map(read_procs)
    }

    /// Number of OOM kills in this memory cgroup: v2 `memory.events` `oom_kill` (includes
    /// descendants), v1 `memory.oom_control` `oom_kill`.
    pub fn oom_kill_count(&self) -> u64 {
        let file = if self.memory_is_v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read_keyed(&self.memory_path().join(file), "oom_kill").unwrap_or(0)
    }

    /// Kills every process in the cgroup (all hierarchies, with sub-cgroups), waiting up to 5 s.
    pub fn kill_all(&self) -> Result<()> {
        let mut res = Ok(());
        for p in self.paths() {
            if let Err(e) = kill_cgroup_tree(p, Duration::from_secs(5)) {
                res = Err(e);
            }
        }
        res
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all() {
            eprintln!("fathom-tests: TestCgroup {}: {e:#}", self.rel);
        }
        // Explicit order: unified first, then memory (fields would drop in declaration order).
        if let Some(u) = &mut self.unified {
            u.release();
        }
        self.memory.release();
    }
}

/// Writes `+memory` into `dir/cgroup.subtree_control` unless it is already enabled.
fn enable_memory_controller(dir: &Path) -> Result<()> {
    let f = dir.join("cgroup.subtree_control");
    let cur = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
    if cur.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(&f, "+memory").with_context(|| format!("enabling +memory in {}", f.display()))
}

/// Parses a file holding one integer.
pub fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Value of `key` in a "key value" per line file (memory.events, memory.stat, oom_control).
pub fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

// ---------------------------------------------------------------------------------------------
// Spawning inside a cgroup

/// Spawns `cmd` with the child already inside `cg` in every hierarchy (it writes "0" into each
/// `cgroup.procs` between fork and exec), so everything it allocates is charged to `cg`.
/// Panics if `cg` has no memory limit (test hygiene: only memcg OOMs).
///
/// Returns a [`ChildGuard`] (derefs to [`Child`]) that kills and reaps the child on drop, so
/// no zombie is left whatever the test does.
pub fn spawn_in_cgroup(cg: &TestCgroup, mut cmd: Command) -> ChildGuard {
    assert!(
        cg.memory_limit().is_some(),
        "set_memory_limit() on {} before spawning into it (test hygiene: only memcg OOMs)",
        cg.rel_path()
    );
    let files: Vec<CString> = cg
        .paths()
        .iter()
        .map(|p| CString::new(p.join("cgroup.procs").as_os_str().as_bytes()).expect("no NUL"))
        .collect();
    // SAFETY: the closure only calls async-signal-safe functions (open/write/close) on
    // memory allocated before fork.
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if r != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?} in cgroup {}: {e}", cg.rel_path()));
    ChildGuard(Some(child))
}

/// A [`Child`] that is SIGKILLed (if still running) and reaped on drop.
/// Derefs to `Child`: use `.id()`, `.wait()`, `.try_wait()`, `.stdout.take()` as usual.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Wraps a child spawned some other way.
    pub fn new(child: Child) -> Self {
        ChildGuard(Some(child))
    }

    /// Gives up the guard: the caller is responsible for the child again.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("child present")
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("child present")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(unescape_mount_field(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_field(r"/plain"), "/plain");
        assert_eq!(unescape_mount_field(r"/x\\"), r"/x\\");
    }

    #[test]
    fn components_reject_dotdot() {
        assert!(components("a/../b").is_err());
        assert_eq!(components("/a//b/").unwrap(), vec!["a", "b"]);
        assert!(components("/").is_err());
    }
}
