//! cgroup id → path for one mounted hierarchy, with a bounded cache.
//!
//! A cgroup id (`kernfs_node->id`, what `bpf_get_current_cgroup_id()` and the OOM program
//! report) is the inode number of the cgroup's directory, and it is also the payload of the
//! cgroup filesystem's NFS-style file handle (`FILEID_KERNFS`, type 0xfe, 8 bytes). So an id is
//! resolved directly with `open_by_handle_at(2)` on the hierarchy's root plus a `readlink` of
//! the resulting fd: one lookup in the kernel's in-memory kernfs idr, no directory walk and no
//! disk I/O, which is why it may run on the event path. Ids are not reused while the system is
//! up (kernfs ids carry a generation in their upper 32 bits), so a cached id → path stays right
//! until the cgroup is renamed or removed; [`CgroupIds::prune`] drops those.
//!
//! Where handles do not work (a hierarchy mounted from a filesystem without export ops, no
//! CAP_DAC_READ_SEARCH, old kernels) the ids are found by walking the hierarchy in the
//! background, for the requested ids only, so the cache never holds more than its bound.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    num::NonZeroUsize,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lru::LruCache;
use tracing::debug;

/// `FILEID_KERNFS` from include/linux/exportfs.h.
const FILEID_KERNFS: libc::c_int = 0xfe;

/// How long "no such cgroup" is remembered, so events from a cgroup that is already gone do
/// not cost a lookup each.
const MISSING_TTL: Duration = Duration::from_secs(10);

/// `struct file_handle` with room for the 8-byte kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    id: u64,
}

/// Result of a direct lookup.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Direct {
    Found(String),
    /// The kernel says no cgroup has this id (any more).
    Missing,
    /// Handles are not usable here: fall back to walking.
    Unsupported,
}

pub(crate) struct CgroupIds {
    root: PathBuf,
    root_fd: Option<OwnedFd>,
    handles_work: AtomicBool,
    paths: Mutex<LruCache<u64, String>>,
    missing: Mutex<LruCache<u64, Instant>>,
    /// Ids waiting for a background walk (bounded by the same capacity as `missing`).
    walk_wanted: Mutex<HashSet<u64>>,
    walk_cap: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not disable attribution: the caches stay consistent per call.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CgroupIds {
    pub(crate) fn new(root: PathBuf, capacity: usize) -> Self {
        let root_fd = open_dir(&root);
        // Handles work when the root's own id comes back as the root. Filesystems other than
        // cgroupfs refuse the kernfs handle type, some with ESTALE, which would otherwise read
        // as "no such cgroup" for every id.
        let handles_work = root_fd.as_ref().is_some_and(|fd| {
            std::fs::metadata(&root).is_ok_and(|m| {
                open_by_kernfs_id(fd, m.ino())
                    .ok()
                    .and_then(|f| fd_path(&f, &root))
                    .is_some_and(|p| p == "/")
            })
        });
        let cap = NonZeroUsize::new(capacity.max(1)).expect("nonzero");
        let missing_cap = NonZeroUsize::new((capacity / 4).max(16)).expect("nonzero");
        CgroupIds {
            handles_work: AtomicBool::new(handles_work),
            root,
            root_fd,
            paths: Mutex::new(LruCache::new(cap)),
            missing: Mutex::new(LruCache::new(missing_cap)),
            walk_wanted: Mutex::new(HashSet::new()),
            walk_cap: missing_cap.get(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Cached path of `id`, `Some(None)` when it is known to be missing, `None` when unknown.
    pub(crate) fn cached(&self, id: u64) -> Option<Option<String>> {
        if let Some(p) = lock(&self.paths).get(&id) {
            return Some(Some(p.clone()));
        }
        let mut missing = lock(&self.missing);
        match missing.get(&id) {
            Some(t) if t.elapsed() < MISSING_TTL => Some(None),
            Some(_) => {
                missing.pop(&id);
                None
            }
            None => None,
        }
    }

    pub(crate) fn handles_work(&self) -> bool {
        self.handles_work.load(Ordering::Relaxed)
    }

    /// Resolves `id` through its file handle and caches the answer.
    pub(crate) fn lookup_direct(&self, id: u64) -> Direct {
        let Some(root_fd) = self.root_fd.as_ref().filter(|_| self.handles_work()) else {
            return Direct::Unsupported;
        };
        let r = match open_by_kernfs_id(root_fd, id) {
            Ok(fd) => match fd_path(&fd, &self.root) {
                Some(p) => Direct::Found(p),
                // Removed between open and readlink, or outside our view of the mount.
                None => Direct::Missing,
            },
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => Direct::Missing,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Direct::Missing,
            Err(e) => {
                debug!(root = %self.root.display(), error = %e,
                       "cgroup file handles unusable; resolving ids by walking");
                self.handles_work.store(false, Ordering::Relaxed);
                Direct::Unsupported
            }
        };
        match &r {
            Direct::Found(p) => self.insert(id, p.clone()),
            Direct::Missing => self.mark_missing(id),
            Direct::Unsupported => {}
        }
        r
    }

    pub(crate) fn insert(&self, id: u64, path: String) {
        lock(&self.missing).pop(&id);
        lock(&self.paths).put(id, path);
    }

    fn mark_missing(&self, id: u64) {
        lock(&self.missing).put(id, Instant::now());
    }

    /// Queues `id` for the next walk; false when the queue is full (the id is retried on its
    /// next miss).
    pub(crate) fn want_walk(&self, id: u64) -> bool {
        let mut w = lock(&self.walk_wanted);
        if w.len() >= self.walk_cap && !w.contains(&id) {
            return false;
        }
        w.insert(id);
        true
    }

    pub(crate) fn walk_pending(&self) -> bool {
        !lock(&self.walk_wanted).is_empty()
    }

    /// Walks the hierarchy for the queued ids and `extra` (blocking; run it off the async
    /// threads). Every id walked for is cached afterwards, as a path or as missing.
    pub(crate) fn walk_for_wanted(&self, extra: Option<u64>) {
        let mut wanted: HashSet<u64> = std::mem::take(&mut *lock(&self.walk_wanted));
        wanted.extend(extra);
        if wanted.is_empty() {
            return;
        }
        let found = walk_for(&self.root, &wanted);
        for id in &wanted {
            match found.get(id) {
                Some(p) => self.insert(*id, p.clone()),
                None => self.mark_missing(*id),
            }
        }
    }

    /// Drops cached ids whose directory is gone or now has another inode (renamed cgroups),
    /// and expired "missing" marks.
    pub(crate) fn prune(&self) {
        let entries: Vec<(u64, String)> = lock(&self.paths)
            .iter()
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        let stale: Vec<u64> = entries
            .into_iter()
            .filter(|(id, p)| {
                std::fs::metadata(self.root.join(p.trim_start_matches('/')))
                    .map(|m| m.ino() != *id)
                    .unwrap_or(true)
            })
            .map(|(id, _)| id)
            .collect();
        {
            let mut paths = lock(&self.paths);
            for id in &stale {
                paths.pop(id);
            }
        }
        let mut missing = lock(&self.missing);
        let expired: Vec<u64> = missing
            .iter()
            .filter(|(_, t)| t.elapsed() >= MISSING_TTL)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            missing.pop(&id);
        }
    }

    /// (cached paths, cached "missing" marks).
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (lock(&self.paths).len(), lock(&self.missing).len())
    }
}

fn open_dir(p: &Path) -> Option<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    // SAFETY: valid NUL-terminated path; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: `fd` is a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_by_kernfs_id(root: &OwnedFd, id: u64) -> std::io::Result<OwnedFd> {
    let mut h = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `h` is a valid `struct file_handle` with `handle_bytes` bytes of payload; the
    // kernel only reads it. O_PATH: we only want the name, not to read the directory.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            &mut h as *mut KernfsHandle,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Path of an open cgroup directory relative to `root` ("/" for the root itself).
fn fd_path(fd: &OwnedFd, root: &Path) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let s = link.to_str()?;
    if s.ends_with(" (deleted)") {
        return None;
    }
    relative_to(Path::new(s), root)
}

fn relative_to(p: &Path, root: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    let rel = rel.to_str()?;
    Some(if rel.is_empty() {
        "/".to_string()
    } else {
        format!("/{rel}")
    })
}

/// Walks `root` looking for the directories whose inode is in `wanted`; stops early when all
/// are found.
fn walk_for(root: &Path, wanted: &HashSet<u64>) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), "/".to_string())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if wanted.contains(&meta.ino()) {
            found.insert(meta.ino(), rel.clone());
            if found.len() == wanted.len() {
                break;
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Some(name) = e.file_name().to_str()
            {
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((e.path(), child));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fathom-cgids-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        d
    }

    #[test]
    fn relative_paths() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            relative_to(Path::new("/sys/fs/cgroup/unified/a/b"), root).as_deref(),
            Some("/a/b")
        );
        assert_eq!(relative_to(root, root).as_deref(), Some("/"));
        assert_eq!(relative_to(Path::new("/elsewhere"), root), None);
    }

    /// On an ordinary filesystem kernfs handles do not apply: the walk fallback answers.
    #[test]
    fn walk_fallback_and_bounds() {
        let d = tmp("walk");
        let ids = CgroupIds::new(d.clone(), 2);
        let ino_b = std::fs::metadata(d.join("a/b")).unwrap().ino();
        // Not a cgroupfs: the self-check at construction found handles unusable.
        assert!(!ids.handles_work());
        assert_eq!(ids.lookup_direct(ino_b), Direct::Unsupported);
        assert!(ids.want_walk(ino_b));
        assert!(ids.walk_pending());
        ids.walk_for_wanted(None);
        assert_eq!(ids.cached(ino_b), Some(Some("/a/b".to_string())));
        let ino_a = std::fs::metadata(d.join("a")).unwrap().ino();
        let ino_root = std::fs::metadata(&d).unwrap().ino();
        ids.want_walk(ino_a);
        ids.want_walk(ino_root);
        ids.want_walk(u64::MAX);
        ids.walk_for_wanted(None);
        // Capacity 2: the least recently used entry went.
        assert_eq!(ids.sizes().0, 2);
        assert_eq!(ids.cached(ino_root), Some(Some("/".to_string())));
        assert_eq!(ids.cached(u64::MAX), Some(None));
        // Removed directories leave on prune.
        std::fs::remove_dir(d.join("a/b")).unwrap();
        ids.insert(ino_b, "/a/b".into());
        ids.prune();
        assert_eq!(ids.cached(ino_b), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
