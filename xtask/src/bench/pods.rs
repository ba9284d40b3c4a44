//! A thousand Kubernetes-style pods for the footprint and scrape figures: cgroups laid out as
//! the kubelet's cgroupfs driver does (`<bench>/kubepods/burstable/pod<uid>/<64-hex id>`), in
//! the memory hierarchy (v1 `memory` or cgroup2 with the memory controller) and in cgroup2,
//! and a real OOM kill in each container, so that `fathom serve` has one
//! `fathom_oom_kills_total` series per pod: the series are real, nothing is injected.
//!
//! The victim of each kill is a child forked by the bench: between fork and exec it joins the
//! container's cgroups and touches more anonymous memory than the 8 MiB limit allows, so the
//! memcg OOM killer kills it (it never reaches exec). Everything under the bench root is
//! removed on drop, processes first, directories deepest first.

use std::{
    ffi::CString,
    fs,
    io::ErrorKind,
    os::unix::process::CommandExt as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{flood::PREFIX, process, signals};

/// Memory limit of each container: small, so each kill is cheap.
const LIMIT_BYTES: u64 = 8 << 20;
/// What each victim touches: well past the limit.
const TOUCH_BYTES: usize = 64 << 20;
/// Victims in flight at once (the kernel serializes OOM kills anyway).
const PARALLEL: usize = 4;

/// The cgroup mounts the pods live in.
#[derive(Clone, Debug)]
pub struct Hierarchies {
    /// The cgroup2 mount.
    pub v2: Option<PathBuf>,
    /// The v1 memory mount.
    pub v1_memory: Option<PathBuf>,
}

impl Hierarchies {
    pub fn detect() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts").context("cannot read mounts")?;
        let mut h = Hierarchies {
            v2: None,
            v1_memory: None,
        };
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            match f[2] {
                "cgroup2" if h.v2.is_none() => h.v2 = Some(f[1].into()),
                "cgroup" if h.v1_memory.is_none() && f[3].split(',').any(|o| o == "memory") => {
                    h.v1_memory = Some(f[1].into())
                }
                _ => {}
            }
        }
        if h.v2.is_none() && h.v1_memory.is_none() {
            bail!("no cgroup2 and no v1 memory hierarchy mounted");
        }
        Ok(h)
    }

    /// Where memory limits go: the v1 memory hierarchy, else cgroup2 (`false` when neither
    /// carries the memory controller).
    fn limits(&self) -> Option<(&Path, bool)> {
        if let Some(m) = &self.v1_memory {
            return Some((m, false));
        }
        let v2 = self.v2.as_deref()?;
        let ctrl = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        ctrl.split_whitespace()
            .any(|c| c == "memory")
            .then_some((v2, true))
    }

    fn all(&self) -> impl Iterator<Item = &Path> {
        self.v2
            .iter()
            .chain(self.v1_memory.iter())
            .map(PathBuf::as_path)
    }
}

/// One pod with one container.
pub struct Pod {
    pub uid: String,
    /// Path of the container's cgroup relative to a hierarchy's mount.
    rel: String,
}

/// The bench's pods, removed on drop.
pub struct PodTree {
    h: Hierarchies,
    /// Bench roots created so far (one per hierarchy).
    roots: Vec<PathBuf>,
    pub pods: Vec<Pod>,
    /// Pod uids start with this (`fb<pid>`), to find our series among others.
    pub uid_prefix: String,
}

/// Outcome of the OOM kills.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kills {
    /// Victims that died of SIGKILL.
    pub killed: u64,
    /// Victims that did not (limit not enforced?).
    pub survived: u64,
    /// Sum of the containers' own `oom_kill` counters (memory.events / memory.oom_control).
    pub kernel_oom_kills: u64,
    pub elapsed: Duration,
}

impl PodTree {
    /// Creates `n` pods under `/<name>/kubepods/burstable/` in every hierarchy.
    pub fn create(h: Hierarchies, name: &str, n: usize) -> Result<Self> {
        let (limit_root, limit_v2) = h
            .limits()
            .context("no hierarchy carries the memory controller")?;
        let limit_root = limit_root.to_path_buf();
        let tag = std::process::id() & 0xff_ffff;
        let mut tree = PodTree {
            h: h.clone(),
            roots: Vec::new(),
            pods: Vec::new(),
            uid_prefix: format!("fb{tag:06x}"),
        };
        let base = format!("{name}/kubepods/burstable");
        for mount in h.all() {
            let root = mount.join(name);
            mkdir(&root)?;
            tree.roots.push(root);
            mkdir(&mount.join(format!("{name}/kubepods")))?;
            mkdir(&mount.join(&base))?;
        }
        if limit_v2 {
            // cgroup2 limits need the controller enabled on the way down.
            for dir in [name.to_owned(), format!("{name}/kubepods"), base.clone()] {
                enable_memory(&limit_root.join(dir))?;
            }
        }
        for i in 0..n {
            signals::check()?;
            let uid = format!(
                "{}-{:04x}-4000-8000-{:012x}",
                tree.uid_prefix,
                i >> 16,
                i as u64
            );
            let container_id = format!("{:016x}{:048x}", 0xfb00_0000_0000_0000u64 | tag as u64, i);
            let pod_rel = format!("{base}/pod{uid}");
            let rel = format!("{pod_rel}/{container_id}");
            for mount in h.all() {
                mkdir(&mount.join(&pod_rel))?;
                mkdir(&mount.join(&rel))?;
            }
            let ctr = limit_root.join(&rel);
            if limit_v2 {
                enable_memory(&limit_root.join(&pod_rel))?;
                write(&ctr.join("memory.max"), &LIMIT_BYTES.to_string())?;
                let _ = fs::write(ctr.join("memory.swap.max"), "0");
            } else {
                write(&ctr.join("memory.limit_in_bytes"), &LIMIT_BYTES.to_string())?;
                let _ = fs::write(
                    ctr.join("memory.memsw.limit_in_bytes"),
                    LIMIT_BYTES.to_string(),
                );
            }
            tree.pods.push(Pod { uid, rel });
        }
        Ok(tree)
    }

    /// Number of cgroup directories created (all hierarchies).
    pub fn cgroup_count(&self) -> usize {
        self.roots.len() * (3 + 2 * self.pods.len())
    }

    /// Kills one victim in every container.
    pub fn kill_all(&self) -> Result<Kills> {
        let started = Instant::now();
        let mut kills = Kills::default();
        for chunk in self.pods.chunks(PARALLEL) {
            signals::check()?;
            let children = chunk
                .iter()
                .map(|p| self.victim(p))
                .collect::<Result<Vec<_>>>()?;
            for mut c in children {
                let st = c.wait()?;
                if st.signal() == Some(libc::SIGKILL) {
                    kills.killed += 1;
                } else {
                    kills.survived += 1;
                }
            }
        }
        kills.elapsed = started.elapsed();
        let (limit_root, v2) = self.h.limits().context("no memory hierarchy")?;
        for p in &self.pods {
            let file = if v2 {
                "memory.events"
            } else {
                "memory.oom_control"
            };
            let text = fs::read_to_string(limit_root.join(&p.rel).join(file)).unwrap_or_default();
            kills.kernel_oom_kills += text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(kills)
    }

    /// Forks a process that joins `pod`'s container cgroups and allocates until killed.
    fn victim(&self, pod: &Pod) -> Result<std::process::Child> {
        let procs: Vec<CString> = self
            .h
            .all()
            .map(|m| {
                CString::new(
                    m.join(&pod.rel)
                        .join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .expect("paths have no NUL")
            })
            .collect();
        let mut cmd = Command::new("true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
        // (open, write, close, mmap) and touches memory it mapped itself; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let mem = libc::mmap(
                    std::ptr::null_mut(),
                    TOUCH_BYTES,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if mem == libc::MAP_FAILED {
                    return Err(std::io::Error::last_os_error());
                }
                for off in (0..TOUCH_BYTES).step_by(4096) {
                    std::ptr::write_volatile(mem.cast::<u8>().add(off), 1);
                }
                // Still alive: the limit did not hold; exec `true` and report it.
                Ok(())
            });
        }
        cmd.spawn()
            .with_context(|| format!("cannot start a victim in pod {}", pod.uid))
    }
}

impl Drop for PodTree {
    fn drop(&mut self) {
        for root in self.roots.drain(..).rev() {
            if let Err(e) = remove_tree(&root) {
                eprintln!("bench: {e:#}");
            }
        }
    }
}

fn mkdir(p: &Path) -> Result<()> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create cgroup {}", p.display())),
    }
}

fn write(p: &Path, v: &str) -> Result<()> {
    fs::write(p, v).with_context(|| format!("cannot write {v} to {}", p.display()))
}

fn enable_memory(dir: &Path) -> Result<()> {
    write(&dir.join("cgroup.subtree_control"), "+memory")
}

/// Kills what runs in a cgroup tree, then removes it deepest first. A cgroup whose last task
/// just died can refuse removal (EBUSY) for a moment: retried for a few seconds.
pub fn remove_tree(root: &Path) -> Result<()> {
    let mut dirs = Vec::new();
    collect_dirs(root, &mut dirs);
    for d in &dirs {
        for pid in fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2); these are the bench's own victims.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // Deepest first: children were pushed after their parent.
    for d in dirs.iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => bail!("cannot remove cgroup {}: {e}", d.display()),
            }
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Removes cgroup trees left by bench runs that were killed outright (their pid is gone).
pub fn remove_stale(h: &Hierarchies) {
    for mount in h.all() {
        let Ok(rd) = fs::read_dir(mount) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if !process::alive(pid) {
                eprintln!(
                    "bench: removing cgroup {} left by an earlier run",
                    e.path().display()
                );
                if let Err(err) = remove_tree(&e.path()) {
                    eprintln!("bench: {err:#}");
                }
            }
        }
    }
}
