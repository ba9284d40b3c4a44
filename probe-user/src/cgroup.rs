//! cgroup hierarchies of this host and cgroup id → path resolution.
//!
//! A cgroup id as the kernel reports it (`kn->id`, `bpf_get_current_cgroup_id()`) is the inode
//! number of the cgroup's directory on 64-bit kernels. Ids are resolved by walking the
//! hierarchy once and caching id → path; a miss triggers a rescan (rate-limited, so ids of
//! cgroups that are already gone do not cause a walk per event). The cache is rebuilt from
//! scratch on every scan, so its size follows the number of live cgroups.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where this host's cgroup hierarchies are mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The cgroup2 (default) hierarchy: /sys/fs/cgroup on pure v2 hosts,
    /// /sys/fs/cgroup/unified on hybrid hosts.
    pub unified: Option<PathBuf>,
    /// The hierarchy carrying the memory controller: v1 `memory` mount, or the cgroup2 mount
    /// when memory is a v2 controller.
    pub memory: Option<PathBuf>,
}

impl Hierarchies {
    /// Reads /proc/self/mounts.
    pub fn detect() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut h = Self::from_mounts(&mounts);
        // A v2 hierarchy carries memory only if the controller is available there.
        if h.memory.is_none()
            && let Some(u) = &h.unified
        {
            let ctrl = std::fs::read_to_string(u.join("cgroup.controllers")).unwrap_or_default();
            if ctrl.split_whitespace().any(|c| c == "memory") {
                h.memory = Some(u.clone());
            }
        }
        h
    }

    /// Parses a mounts table (format of /proc/self/mounts). Does not look at the filesystem.
    pub fn from_mounts(mounts: &str) -> Self {
        let mut h = Self::default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let (dir, fstype, opts) = (f[1], f[2], f[3]);
            match fstype {
                "cgroup2" if h.unified.is_none() => h.unified = Some(PathBuf::from(dir)),
                "cgroup" if opts.split(',').any(|o| o == "memory") => {
                    h.memory = Some(PathBuf::from(dir))
                }
                _ => {}
            }
        }
        h
    }
}

/// Resolves the ids of one hierarchy to paths relative to its root ("/a/b").
#[derive(Debug)]
pub struct Resolver {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl Resolver {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            by_id: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_millis(200),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of cached ids (= live cgroups at the last scan).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Path of cgroup `id`, rescanning the hierarchy on a miss.
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if due {
            self.rescan();
        }
        self.by_id.get(&id).cloned()
    }

    /// Rebuilds the cache from the filesystem.
    pub fn rescan(&mut self) {
        let mut map = HashMap::new();
        walk(&self.root, "", &mut map);
        self.by_id = map;
        self.last_scan = Some(Instant::now());
    }
}

fn walk(dir: &Path, rel: &str, out: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    out.insert(
        meta.ino(),
        if rel.is_empty() {
            "/".to_string()
        } else {
            rel.to_string()
        },
    );
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        // cgroup directories only; control files are regular files.
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(name) = e.file_name().to_str()
        {
            walk(&e.path(), &format!("{rel}/{name}"), out);
        }
    }
}

/// Joins kernel-recorded cgroup names (leaf first) into a path ("/" for none).
pub fn path_from_leaf_first<'a>(names: impl DoubleEndedIterator<Item = &'a str>) -> String {
    let mut p = String::new();
    for n in names.rev() {
        p.push('/');
        p.push_str(n);
    }
    if p.is_empty() { "/".to_string() } else { p }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mounts() {
        let m = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                 cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                 cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let h = Hierarchies::from_mounts(m);
        assert_eq!(
            h.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            h.memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn pure_v2_and_v1_only_mounts() {
        let h = Hierarchies::from_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n");
        assert_eq!(h.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(h.memory, None); // decided by detect() from cgroup.controllers
        let h = Hierarchies::from_mounts(
            "cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\nbad line\n",
        );
        assert_eq!(h.unified, None);
        assert_eq!(
            h.memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn joins_leaf_first_names() {
        assert_eq!(path_from_leaf_first(["c", "b", "a"].into_iter()), "/a/b/c");
        assert_eq!(path_from_leaf_first(std::iter::empty()), "/");
    }

    #[test]
    fn resolves_directory_inodes() {
        let dir = std::env::temp_dir().join(format!("fathom-resolver-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let ino = std::fs::metadata(dir.join("a/b")).unwrap().ino();
        let mut r = Resolver::new(&dir);
        assert_eq!(r.resolve(ino).as_deref(), Some("/a/b"));
        let root = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(r.resolve(root).as_deref(), Some("/"));
        // A new directory is found by the rescan a miss triggers (once the rate limit allows).
        std::fs::create_dir(dir.join("a/c")).unwrap();
        let ino_c = std::fs::metadata(dir.join("a/c")).unwrap().ino();
        r.min_rescan = Duration::ZERO;
        assert_eq!(r.resolve(ino_c).as_deref(), Some("/a/c"));
        // Gone directories leave the cache on the next scan.
        std::fs::remove_dir(dir.join("a/c")).unwrap();
        r.rescan();
        assert_eq!(r.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
