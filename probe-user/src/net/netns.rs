//! Network namespace discovery, handles to enter them, and running code inside them.
//!
//! Sources, rescanned periodically by [`NetnsRegistry::refresh`]:
//! - `/proc/<pid>/ns/net` of every process (thread-group leaders only: `/proc/<pid>/task/*`
//!   is not walked, so our own short-lived `setns` worker threads never show up);
//! - every nsfs bind mount of a network namespace, wherever it is mounted: the `nsfs` entries
//!   (root `net:[<inode>]`) of our own `/proc/self/mountinfo` and of pid 1's (the host's mount
//!   namespace when fathom shares the host's pids; its mount points are then reached through
//!   `/proc/1/root`). That finds `ip netns add`'s `/run/netns/*`, Docker's
//!   `<exec-root>/netns/*` for any `--exec-root` (overlay namespaces `1-<network id>`, sandboxes),
//!   and a CNI's own directory. A bind mount keeps a namespace alive with no process in it
//!   (Docker overlay sandboxes, pods between restarts);
//! - the well-known bind-mount directories (`/run/netns`, `/run/docker/netns`), for a
//!   mount namespace whose mountinfo does not show them (a hostPath without propagation).
//!
//! Identity is the nsfs inode (= the kernel's `net->ns.inum`). A bind-mount directory can also
//! hold plain files whose mount is gone (e.g. after a crash); those are recognised by their
//! device not being nsfs's and ignored.
//!
//! Entering: [`NetnsHandle::open`] returns an fd on the namespace, opened from one of its
//! sources and cached. An open fd (like any socket created inside the namespace) pins the
//! namespace: the registry therefore drops a handle, and with it the fd, as soon as a rescan
//! finds no process and no bind mount left for it, so fathom delays a namespace's destruction
//! by at most one rescan period.
//!
//! Why a dedicated thread: `setns(2)` changes the namespace of the calling *thread* only.
//! Doing it on a tokio worker (or a `spawn_blocking` thread, which tokio reuses) would leave
//! that thread in the wrong namespace for every later task. [`run_in_netns`] spawns a fresh
//! thread, `setns`es it and lets it die afterwards.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sched::{CloneFlags, setns};
use serde::Serialize;
use tracing::{debug, trace};

use super::{NetError, NetnsInode};

/// Where to look for network namespaces.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// procfs mount (`/proc`; a DaemonSet may mount the host's elsewhere).
    pub proc_root: PathBuf,
    /// Directories holding nsfs bind mounts. Missing directories are fine.
    pub bind_mount_dirs: Vec<PathBuf>,
    /// Also take every nsfs mount listed in the mountinfo of our own and of pid 1's mount
    /// namespace (on by default).
    pub scan_mountinfo: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            proc_root: PathBuf::from("/proc"),
            // /var/run is normally a symlink to /run; duplicates are removed by canonical path.
            bind_mount_dirs: [
                "/run/netns",
                "/var/run/netns",
                "/run/docker/netns",
                "/var/run/docker/netns",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            scan_mountinfo: true,
        }
    }
}

/// One nsfs mount of a network namespace, as a mountinfo line lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsfsMount {
    pub inode: NetnsInode,
    /// Mount point, as seen in the mount namespace of the mountinfo's process.
    pub mount_point: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` = space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The network-namespace nsfs mounts of a `/proc/<pid>/mountinfo` text (proc(5): `id parent
/// maj:min root mount-point options [optional…] - fstype source super-options`; for nsfs the
/// root is `net:[<inode>]`). Other namespace kinds (`mnt:[…]`, `uts:[…]`) are skipped.
pub fn parse_mountinfo_nsfs(text: &str) -> Vec<NsfsMount> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split(' ').next()? != "nsfs" {
                return None;
            }
            let mut f = pre.split(' ');
            let root = f.nth(3)?;
            let mount_point = f.next()?;
            Some(NsfsMount {
                inode: parse_ns_link(root)?,
                mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            })
        })
        .collect()
}

/// nsfs mounts of our mount namespace and, when it is another one, of pid 1's (paths then
/// prefixed with `<proc>/1/root` so we can open them). Unreadable files give nothing.
fn mountinfo_nsfs(proc_root: &Path) -> Vec<NsfsMount> {
    let read = |pid: &str| std::fs::read_to_string(proc_root.join(pid).join("mountinfo")).ok();
    let mut out: Vec<NsfsMount> = read("self")
        .map(|t| parse_mountinfo_nsfs(&t))
        .unwrap_or_default();
    let mnt = |pid: &str| std::fs::read_link(proc_root.join(pid).join("ns/mnt")).ok();
    let own = mnt("self");
    if own.is_some() && mnt("1").is_some() && mnt("1") != own {
        let root = proc_root.join("1/root");
        for m in read("1")
            .map(|t| parse_mountinfo_nsfs(&t))
            .unwrap_or_default()
        {
            let rel = m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point);
            out.push(NsfsMount {
                inode: m.inode,
                mount_point: root.join(rel),
            });
        }
    }
    out
}

/// What one scan found for one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Thread-group ids whose `/proc/<pid>/ns/net` is this namespace, ascending.
    pub pids: Vec<u32>,
    /// nsfs bind mounts of this namespace.
    pub bind_mounts: Vec<PathBuf>,
}

/// Parses the target of a `/proc/<pid>/ns/net` link: `net:[4026531840]` → 4026531840.
pub fn parse_ns_link(target: &str) -> Option<NetnsInode> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// nsfs's device number (all namespace files live on one internal nsfs superblock).
fn nsfs_dev(proc_root: &Path) -> Result<u64, NetError> {
    let p = proc_root.join("self/ns/net");
    std::fs::metadata(&p)
        .map(|m| m.dev())
        .map_err(|source| NetError::Read { path: p, source })
}

/// The inode of `/proc/1/ns/net` (the host's namespace when we share the host's pid
/// namespace), falling back to our own.
pub fn host_netns_inode(proc_root: &Path) -> Option<NetnsInode> {
    ["1", "self"].iter().find_map(|pid| {
        let t = std::fs::read_link(proc_root.join(pid).join("ns/net")).ok()?;
        parse_ns_link(t.to_str()?)
    })
}

/// One scan of every source. Processes exiting during the scan are skipped silently.
pub fn discover(cfg: &DiscoveryConfig) -> Result<BTreeMap<NetnsInode, Discovered>, NetError> {
    let mut out: BTreeMap<NetnsInode, Discovered> = BTreeMap::new();
    let rd = std::fs::read_dir(&cfg.proc_root).map_err(|source| NetError::Read {
        path: cfg.proc_root.clone(),
        source,
    })?;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // readlink is enough (no open, no stat): the link text carries the inode.
        let t = match std::fs::read_link(e.path().join("ns/net")) {
            Ok(t) => t,
            Err(err) => {
                // Another user's process without CAP_SYS_PTRACE: its namespace stays unseen.
                // pid 1 of a sandbox can be more privileged than root here; not worth a word.
                if err.kind() == std::io::ErrorKind::PermissionDenied && pid != 1 {
                    crate::net::warn_permission_once(
                        "cannot read /proc/<pid>/ns/net of other users' processes (needs CAP_SYS_PTRACE): their network namespaces are not watched",
                    );
                }
                continue; // exited, or a kernel without /proc/<pid>/ns
            }
        };
        if let Some(ino) = t.to_str().and_then(parse_ns_link) {
            out.entry(ino).or_default().pids.push(pid);
        }
    }
    let dev = nsfs_dev(&cfg.proc_root)?;
    let mut seen_dirs = Vec::new();
    for dir in &cfg.bind_mount_dirs {
        let Ok(canon) = dir.canonicalize() else {
            continue;
        };
        if seen_dirs.contains(&canon) {
            continue;
        }
        seen_dirs.push(canon.clone());
        let Ok(rd) = std::fs::read_dir(&canon) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            // stat follows to the mounted nsfs inode; an unmounted leftover file is on tmpfs.
            let Ok(m) = std::fs::metadata(&path) else {
                continue;
            };
            if m.dev() != dev {
                trace!(path = %path.display(), "not an nsfs bind mount, ignored");
                continue;
            }
            if let Ok(ino) = NetnsInode::try_from(m.ino()) {
                out.entry(ino).or_default().bind_mounts.push(path);
            }
        }
    }
    if cfg.scan_mountinfo {
        for m in mountinfo_nsfs(&cfg.proc_root) {
            out.entry(m.inode)
                .or_default()
                .bind_mounts
                .push(m.mount_point);
        }
    }
    for d in out.values_mut() {
        d.pids.sort_unstable();
        // A mount seen through a directory and in mountinfo (or propagated twice) counts once.
        d.bind_mounts.sort();
        d.bind_mounts.dedup();
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct HandleState {
    found: Discovered,
    fd: Option<Arc<OwnedFd>>,
}

/// One network namespace: its identity, where it was found, and a cached fd to enter it.
///
/// A handle is one namespace for its whole life: its fd pins that namespace, so the inode
/// cannot pass to another one while the handle exists. The namespace's cookie (see
/// [`super::cookie`]) is read the first time a worker enters it.
#[derive(Debug)]
pub struct NetnsHandle {
    inode: NetnsInode,
    is_host: bool,
    proc_root: PathBuf,
    state: Mutex<HandleState>,
    cookie: OnceLock<u64>,
}

impl NetnsHandle {
    fn new(inode: NetnsInode, is_host: bool, proc_root: &Path, found: Discovered) -> Self {
        NetnsHandle {
            inode,
            is_host,
            proc_root: proc_root.to_path_buf(),
            state: Mutex::new(HandleState { found, fd: None }),
            cookie: OnceLock::new(),
        }
    }

    /// A handle on the namespace behind an nsfs path (`/run/netns/NAME`, `/proc/PID/ns/net`),
    /// outside any registry; the fd is opened now.
    pub fn from_path(path: &Path) -> Result<Self, NetError> {
        let f = File::open(path).map_err(|source| NetError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let m = f.metadata().map_err(|source| NetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if m.dev() != nsfs_dev(Path::new("/proc"))? {
            return Err(NetError::NotNetns {
                path: path.to_path_buf(),
            });
        }
        let inode = NetnsInode::try_from(m.ino()).map_err(|_| NetError::NotNetns {
            path: path.to_path_buf(),
        })?;
        let is_host = host_netns_inode(Path::new("/proc")) == Some(inode);
        let h = NetnsHandle::new(
            inode,
            is_host,
            Path::new("/proc"),
            Discovered {
                pids: Vec::new(),
                bind_mounts: vec![path.to_path_buf()],
            },
        );
        h.state.lock().expect("netns handle lock").fd = Some(Arc::new(OwnedFd::from(f)));
        Ok(h)
    }

    pub fn inode(&self) -> NetnsInode {
        self.inode
    }

    /// The namespace's cookie, once a worker has entered it (`None` before, and on kernels
    /// without cookies: before 5.14).
    pub fn cookie(&self) -> Option<u64> {
        self.cookie.get().copied()
    }

    /// Is this the host's namespace (that of pid 1)?
    pub fn is_host(&self) -> bool {
        self.is_host
    }

    /// Pids found in the namespace at the last scan.
    pub fn pids(&self) -> Vec<u32> {
        self.state
            .lock()
            .expect("netns handle lock")
            .found
            .pids
            .clone()
    }

    /// nsfs bind mounts found at the last scan.
    pub fn bind_mounts(&self) -> Vec<PathBuf> {
        self.state
            .lock()
            .expect("netns handle lock")
            .found
            .bind_mounts
            .clone()
    }

    /// Serialisable description.
    pub fn info(&self) -> NetnsInfo {
        let st = self.state.lock().expect("netns handle lock");
        NetnsInfo {
            inode: self.inode,
            cookie: self.cookie(),
            is_host: self.is_host,
            names: st
                .found
                .bind_mounts
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
            bind_mounts: st.found.bind_mounts.clone(),
            pids: st.found.pids.clone(),
        }
    }

    fn update(&self, found: Discovered) {
        self.state.lock().expect("netns handle lock").found = found;
    }

    /// An fd on the namespace: the cached one, or freshly opened from a bind mount or one of
    /// its processes. Each candidate is checked to still be this namespace (a pid may have
    /// been reused by a process elsewhere).
    pub fn open(&self) -> Result<Arc<OwnedFd>, NetError> {
        let mut st = self.state.lock().expect("netns handle lock");
        if let Some(fd) = &st.fd {
            return Ok(fd.clone());
        }
        let candidates = st.found.bind_mounts.iter().cloned().chain(
            st.found
                .pids
                .iter()
                .map(|p| self.proc_root.join(p.to_string()).join("ns/net")),
        );
        for path in candidates {
            let Ok(f) = File::open(&path) else { continue };
            match f.metadata() {
                Ok(m) if m.ino() == u64::from(self.inode) => {
                    let fd = Arc::new(OwnedFd::from(f));
                    st.fd = Some(fd.clone());
                    return Ok(fd);
                }
                _ => continue,
            }
        }
        Err(NetError::NetnsGone { inode: self.inode })
    }
}

/// A namespace as shown in snapshots and JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetnsInfo {
    pub inode: NetnsInode,
    /// The namespace's cookie (unique for the kernel's uptime, unlike the inode); `None`
    /// until fathom has entered it once, or on kernels before 5.14.
    pub cookie: Option<u64>,
    pub is_host: bool,
    /// File names of its bind mounts (`ip netns` names, Docker sandbox ids).
    pub names: Vec<String>,
    pub bind_mounts: Vec<PathBuf>,
    /// Processes in it (thread-group ids); the attribution layer maps these to pods.
    pub pids: Vec<u32>,
}

/// Namespaces added and removed by one [`NetnsRegistry::refresh`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsDiff {
    pub added: Vec<NetnsInode>,
    pub removed: Vec<NetnsInode>,
    /// True when any namespace's pids or bind mounts changed.
    pub members_changed: bool,
}

/// The set of namespaces currently known, updated by rescans.
#[derive(Debug)]
pub struct NetnsRegistry {
    cfg: DiscoveryConfig,
    host: Option<NetnsInode>,
    by_inode: BTreeMap<NetnsInode, Arc<NetnsHandle>>,
}

impl NetnsRegistry {
    pub fn new(cfg: DiscoveryConfig) -> Self {
        let host = host_netns_inode(&cfg.proc_root);
        NetnsRegistry {
            cfg,
            host,
            by_inode: BTreeMap::new(),
        }
    }

    /// Rescans every source. Handles of namespaces still present are kept (with their fds);
    /// handles of vanished ones are dropped, which releases their fds.
    pub fn refresh(&mut self) -> Result<NetnsDiff, NetError> {
        let found = discover(&self.cfg)?;
        let mut diff = NetnsDiff::default();
        self.by_inode.retain(|ino, _| {
            let keep = found.contains_key(ino);
            if !keep {
                diff.removed.push(*ino);
            }
            keep
        });
        for (ino, d) in found {
            match self.by_inode.get(&ino) {
                Some(h) => {
                    let changed = {
                        let st = h.state.lock().expect("netns handle lock");
                        st.found != d
                    };
                    if changed {
                        diff.members_changed = true;
                        h.update(d);
                    }
                }
                None => {
                    diff.added.push(ino);
                    let is_host = self.host == Some(ino);
                    self.by_inode.insert(
                        ino,
                        Arc::new(NetnsHandle::new(ino, is_host, &self.cfg.proc_root, d)),
                    );
                }
            }
        }
        if !diff.added.is_empty() || !diff.removed.is_empty() {
            diff.members_changed = true;
            debug!(added = ?diff.added, removed = ?diff.removed, "network namespaces changed");
        }
        Ok(diff)
    }

    pub fn get(&self, inode: NetnsInode) -> Option<Arc<NetnsHandle>> {
        self.by_inode.get(&inode).cloned()
    }

    /// Every known namespace, by inode.
    pub fn handles(&self) -> Vec<Arc<NetnsHandle>> {
        self.by_inode.values().cloned().collect()
    }

    pub fn host_inode(&self) -> Option<NetnsInode> {
        self.host
    }
}

/// Joins `ns` on the calling thread (one of our own workers); the first time, reads the
/// namespace's cookie too.
fn enter(ns: &NetnsHandle) -> Result<(), NetError> {
    let fd = ns.open()?;
    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetError::Setns {
        inode: ns.inode,
        source,
    })?;
    if ns.cookie.get().is_none()
        && let Some(c) = super::cookie::netns_cookie_here()
    {
        let _ = ns.cookie.set(c);
    }
    Ok(())
}

/// Runs `f` in a new thread that first joins `ns`'s network namespace, and waits for it.
/// Blocking: call it from a blocking context (a plain thread, `spawn_blocking`), or use
/// [`run_in_netns_async`] from async code. Inside `f`, read per-netns procfs files through
/// `/proc/thread-self/net/…`: `/proc/net` is `/proc/self/net`, i.e. the namespace of the
/// process's *main* thread.
pub fn run_in_netns<T: Send>(
    ns: &NetnsHandle,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("fathom-netns-{}", ns.inode))
            .spawn_scoped(s, || {
                enter(ns)?;
                Ok(f())
            })
            .map_err(NetError::Spawn)?;
        h.join().map_err(|_| NetError::WorkerPanicked)?
    })
}

/// Per-namespace results of a sweep, in the order given.
pub type SweepResults<T> = Vec<(NetnsInode, Result<T, NetError>)>;

/// Runs `f` once per namespace, in one new thread that `setns`es into each in turn (one
/// thread for a whole sweep instead of one per namespace). A namespace that cannot be entered
/// yields its error and the sweep goes on.
pub fn run_in_each_netns<T: Send>(
    namespaces: &[Arc<NetnsHandle>],
    mut f: impl FnMut(&NetnsHandle) -> T + Send,
) -> Result<SweepResults<T>, NetError> {
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("fathom-netns-sweep".into())
            .spawn_scoped(s, || sweep(namespaces, &mut f))
            .map_err(NetError::Spawn)?;
        h.join().map_err(|_| NetError::WorkerPanicked)
    })
}

/// The body of a sweep; only ever called on a thread of our own that dies afterwards.
fn sweep<T>(
    namespaces: &[Arc<NetnsHandle>],
    f: &mut impl FnMut(&NetnsHandle) -> T,
) -> SweepResults<T> {
    namespaces
        .iter()
        .map(|ns| (ns.inode, enter(ns).map(|()| f(ns))))
        .collect()
}

/// [`run_in_netns`] for async callers: the dedicated thread is awaited without blocking the
/// runtime.
pub async fn run_in_netns_async<T: Send + 'static>(
    ns: Arc<NetnsHandle>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("fathom-netns-{}", ns.inode))
        .spawn(move || {
            let r = enter(&ns).map(|()| f());
            let _ = tx.send(r);
        })
        .map_err(NetError::Spawn)?;
    rx.await.map_err(|_| NetError::WorkerPanicked)?
}

/// [`run_in_each_netns`] for async callers.
pub async fn run_in_each_netns_async<T: Send + 'static>(
    namespaces: Vec<Arc<NetnsHandle>>,
    mut f: impl FnMut(&NetnsHandle) -> T + Send + 'static,
) -> Result<SweepResults<T>, NetError> {
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fathom-netns-sweep".into())
        .spawn(move || {
            let _ = tx.send(sweep(&namespaces, &mut f));
        })
        .map_err(NetError::Spawn)?;
    rx.await.map_err(|_| NetError::WorkerPanicked)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_ns_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("net:[1]"), Some(1));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
        assert_eq!(parse_ns_link("net:[4026531840"), None);
        assert_eq!(parse_ns_link("net:[99999999999]"), None, "beyond u32");
    }

    #[test]
    fn parses_nsfs_mountinfo_lines() {
        let t = "\
26 1 0:22 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
631 26 0:4 net:[4026532710] /run/netns/blue rw shared:5 - nsfs nsfs rw
640 30 0:4 net:[4026532801] /tmp/fathom-dockerd-1-x/run-b/netns/1-dolsmd8pb0 rw - nsfs nsfs rw
641 30 0:4 mnt:[4026532802] /tmp/mnt-ns rw - nsfs nsfs rw
642 30 0:4 net:[4026532803] /tmp/with\\040space rw shared:9 master:2 - nsfs nsfs rw
";
        let m = parse_mountinfo_nsfs(t);
        assert_eq!(
            m,
            vec![
                NsfsMount {
                    inode: 4026532710,
                    mount_point: "/run/netns/blue".into()
                },
                NsfsMount {
                    inode: 4026532801,
                    mount_point: "/tmp/fathom-dockerd-1-x/run-b/netns/1-dolsmd8pb0".into()
                },
                NsfsMount {
                    inode: 4026532803,
                    mount_point: "/tmp/with space".into()
                },
            ]
        );
        assert!(parse_mountinfo_nsfs("garbage\n1 2 3\n").is_empty());
    }

    #[test]
    fn discovers_own_namespace_with_own_pid() {
        let found = discover(&DiscoveryConfig::default()).unwrap();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let own = parse_ns_link(own.to_str().unwrap()).unwrap();
        let d = found.get(&own).expect("own netns discovered");
        assert!(d.pids.contains(&std::process::id()));
    }
}
