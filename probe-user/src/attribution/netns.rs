//! Network namespace inode → the container or pod that owns it.
//!
//! Packet drops happen in softirq context where the current task is unrelated, so network
//! events carry the device's netns inode (`net->ns.inum`) instead of a cgroup. The owner of a
//! netns is found from the processes of known containers: a scan walks the hierarchy that
//! holds every container (the memory one), takes one process of each container cgroup and
//! reads the inode of its `/proc/<pid>/ns/net`. All containers of a Kubernetes pod share the
//! pod's netns, so a netns shared by several containers of one pod maps to the pod alone; a
//! netns shared across pods or by unrelated containers (host networking) maps to nothing rather
//! than to a wrong workload. The host's own netns (that of pid 1, else ours) is never
//! attributed.
//!
//! Each scan rebuilds the index, so it follows the live containers and never grows beyond
//! them (and a configured cap).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::container;

/// Directories visited per scan at most, so a pathological hierarchy cannot stall the task.
const MAX_DIRS: usize = 200_000;

/// Who owns one network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NetnsOwner {
    /// Cgroup path of one container in the netns (names come from its runtime answer).
    pub path: String,
    /// More than one container shares the netns (a pod): report the pod only.
    pub shared: bool,
}

/// Result of one scan.
#[derive(Debug, Default)]
pub(crate) struct NetnsScan {
    pub owners: HashMap<u32, NetnsOwner>,
    /// Namespaces seen with containers of different pods / unrelated containers.
    pub ambiguous: usize,
    pub containers: usize,
}

/// Scans container cgroups below `root` (a hierarchy mount) using `/proc` at `proc_root`.
pub(crate) fn scan(root: &Path, proc_root: &Path, cap: usize) -> NetnsScan {
    // pid 1's netns is the host's when we see the host's pids (a DaemonSet with hostPID).
    // When pid 1 is out of reach (a supervisor with more capabilities than ours: EACCES), our
    // own netns stands in: fathom runs with host networking.
    let host = netns_of(proc_root, 1).or_else(|| {
        let ino = std::fs::metadata(proc_root.join("self/ns/net")).ok()?.ino();
        u32::try_from(ino).ok()
    });
    // netns → container cgroup paths in it.
    let mut by_ns: HashMap<u32, Vec<String>> = HashMap::new();
    let mut containers = 0;
    let mut visited = 0;
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        visited += 1;
        if visited > MAX_DIRS {
            tracing::warn!(root = %root.display(), "netns scan stopped after {MAX_DIRS} cgroups");
            break;
        }
        let is_container_leaf = container::parse(&rel)
            .container
            .is_some_and(|c| c.component + 1 == rel.split('/').filter(|p| !p.is_empty()).count());
        if is_container_leaf {
            containers += 1;
            if let Some(ns) = first_pid(&dir).and_then(|pid| netns_of(proc_root, pid))
                && Some(ns) != host
            {
                let paths = by_ns.entry(ns).or_default();
                if paths.len() < 64 {
                    paths.push(rel.clone());
                }
            }
            // Sub-cgroups of a container (podman's `/container`) are the same container.
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Some(name) = e.file_name().to_str()
            {
                stack.push((e.path(), format!("{rel}/{name}")));
            }
        }
    }

    let mut out = NetnsScan {
        containers,
        ..Default::default()
    };
    for (ns, paths) in by_ns {
        if out.owners.len() >= cap {
            break;
        }
        match owner_of(&paths) {
            Some(o) => {
                out.owners.insert(ns, o);
            }
            None => out.ambiguous += 1,
        }
    }
    out
}

/// One container → it; several containers all in the same pod → the pod; else ambiguous.
fn owner_of(paths: &[String]) -> Option<NetnsOwner> {
    let first = paths.first()?;
    if paths.len() == 1 {
        return Some(NetnsOwner {
            path: first.clone(),
            shared: false,
        });
    }
    let pod_uid = |p: &str| container::parse(p).pod.map(|p| p.uid);
    let uid = pod_uid(first)?;
    paths
        .iter()
        .all(|p| pod_uid(p).as_deref() == Some(uid.as_str()))
        .then(|| NetnsOwner {
            path: first.clone(),
            shared: true,
        })
}

/// A process in `dir` or, when it has none (processes live in leaves on cgroup v2), in its
/// sub-cgroups.
fn first_pid(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| first_pid(&e.path()))
}

pub(crate) fn netns_of(proc_root: &Path, pid: u32) -> Option<u32> {
    let ino = std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net"))
        .ok()?
        .ino();
    u32::try_from(ino).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn owners_of_shared_namespaces() {
        let c = |pod: &str, n| format!("/kubepods/pod{pod}/{}", id(n));
        let one = owner_of(&[c(UID, 1)]).unwrap();
        assert!(!one.shared);
        let pod = owner_of(&[c(UID, 1), c(UID, 2)]).unwrap();
        assert!(pod.shared);
        assert_eq!(owner_of(&[c(UID, 1), c("other", 2)]), None);
        assert_eq!(
            owner_of(&[format!("/docker/{}", id(1)), format!("/docker/{}", id(2))]),
            None
        );
    }

    /// A fake cgroup tree and /proc: containers are found, the host netns is not attributed.
    #[test]
    fn scan_fake_tree() {
        let d = std::env::temp_dir().join(format!("fathom-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (cg, proc_) = (d.join("cg"), d.join("proc"));
        let c1 = cg.join(format!("kubepods/pod{UID}/{}", id(1)));
        let c2 = cg.join(format!("docker/{}", id(2)));
        for c in [&c1, &c2] {
            std::fs::create_dir_all(c).unwrap();
        }
        std::fs::write(c1.join("cgroup.procs"), "100\n").unwrap();
        // c2 keeps its process in a sub-cgroup.
        std::fs::create_dir_all(c2.join("init")).unwrap();
        std::fs::write(c2.join("cgroup.procs"), "").unwrap();
        std::fs::write(c2.join("init/cgroup.procs"), "200\n").unwrap();
        for (pid, target) in [(1, "host"), (100, "a"), (200, "host")] {
            let ns = proc_.join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&ns).unwrap();
            let f = d.join(format!("ns-{target}"));
            if !f.exists() {
                std::fs::write(&f, "").unwrap();
            }
            std::os::unix::fs::symlink(&f, ns.join("net")).unwrap();
        }
        let s = scan(&cg, &proc_, 16);
        assert_eq!(s.containers, 2);
        assert_eq!(s.owners.len(), 1, "{s:?}");
        let ino_a = std::fs::metadata(d.join("ns-a")).unwrap().ino() as u32;
        assert_eq!(
            s.owners[&ino_a].path,
            format!("/kubepods/pod{UID}/{}", id(1))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
