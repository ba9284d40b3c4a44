//! Network namespace inode → the container or pod that owns it.
//!
//! Packet drops happen in softirq context where the current task is unrelated, so network
//! events carry the device's netns inode (`net->ns.inum`) instead of a cgroup. The owner of a
//! netns is found from the processes of containers: a scan reads, for every process, the
//! inode of `/proc/<pid>/ns/net` and its cgroup (in the hierarchy that holds every container,
//! the memory one), which names its container. All containers of a Kubernetes pod share the
//! pod's netns, so a netns shared by several containers of one pod maps to the pod alone; a
//! netns shared across pods or by unrelated containers (host networking) maps to nothing rather
//! than to a wrong workload. The host's own netns (that of pid 1, else ours) is never
//! attributed.
//!
//! Each scan rebuilds the index, so it follows the live containers and never grows beyond
//! them (and a configured cap).
//!
//! The namespaces and their processes come from the one discovery the topology uses too
//! ([`crate::net::netns::discover`]: every process's `/proc/<pid>/ns/net` and every nsfs bind
//! mount in mountinfo), so both see the same namespaces. A namespace held only by a bind mount
//! that libnetwork names for a network (`<exec-root>/netns/1-<network id prefix>`, an overlay
//! network's namespace, whatever the dockerd's `--exec-root`) is returned as a Docker network
//! candidate; the caller asks the dockerd sockets which network has that id prefix.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::Path,
};

use crate::{
    container,
    net::netns::{Discovered, DiscoveryConfig, discover},
};

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
    /// The cgroup path of every container seen (memory hierarchy), at most `cap`: what the
    /// pressure collector reads memory files of.
    pub container_paths: Vec<String>,
    /// Namespaces without containers whose bind mount names a Docker network:
    /// inode → network id prefix.
    pub networks: HashMap<u32, String>,
}

/// The network id prefix a libnetwork namespace bind mount names: `…/netns/1-<prefix>`
/// (an overlay network's namespace; `1` is the overlay driver's namespace version).
pub(crate) fn network_prefix(mount: &Path) -> Option<&str> {
    let dir = mount.parent()?.file_name()?;
    if dir != "netns" {
        return None;
    }
    let p = mount.file_name()?.to_str()?.strip_prefix("1-")?;
    (p.len() >= 6 && p.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(p)
}

/// One discovery (processes and nsfs mounts under `proc_root`), then [`scan_found`].
pub(crate) fn scan(root: &Path, proc_root: &Path, cap: usize) -> NetnsScan {
    let cfg = DiscoveryConfig {
        proc_root: proc_root.to_path_buf(),
        ..Default::default()
    };
    match discover(&cfg) {
        Ok(found) => scan_found(root, proc_root, &found, cap),
        Err(e) => {
            tracing::debug!(error = %e, "netns discovery failed");
            NetnsScan::default()
        }
    }
}

/// Finds the container of every process of every discovered namespace (its cgroup path in
/// the hierarchy mounted at `root`) and groups containers by network namespace.
///
/// Walking processes rather than the cgroup tree keeps a scan proportional to what runs: a
/// node's cgroup tree holds thousands of directories (many of them empty leftovers of
/// containers that exited), its processes a few hundred.
pub(crate) fn scan_found(
    root: &Path,
    proc_root: &Path,
    found: &BTreeMap<u32, Discovered>,
    cap: usize,
) -> NetnsScan {
    // pid 1's netns is the host's when we see the host's pids (a DaemonSet with hostPID).
    // When pid 1 is out of reach (a supervisor with more capabilities than ours: EACCES), our
    // own netns stands in: fathom runs with host networking.
    let host = netns_of(proc_root, 1).or_else(|| {
        let ino = std::fs::metadata(proc_root.join("self/ns/net")).ok()?.ino();
        u32::try_from(ino).ok()
    });
    // Which line of /proc/<pid>/cgroup names the path in `root`'s hierarchy.
    let v2 = root.join("cgroup.controllers").exists();
    let mut by_ns: HashMap<u32, Vec<String>> = HashMap::new();
    let mut containers = std::collections::HashSet::new();
    let mut out = NetnsScan::default();
    for (visited, (&ns, d)) in found.iter().enumerate() {
        if visited > MAX_DIRS {
            tracing::warn!("netns scan stopped after {MAX_DIRS} namespaces");
            break;
        }
        let mut any_container = false;
        for &pid in &d.pids {
            let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
            else {
                continue;
            };
            let Some(path) = cgroup_path(&text, v2) else {
                continue;
            };
            // The container's own cgroup (podman nests its processes in `/container` below it).
            let Some(c) = container::parse(path).container else {
                continue;
            };
            let cpath: String = path
                .split('/')
                .filter(|p| !p.is_empty())
                .take(c.component + 1)
                .fold(String::new(), |acc, p| acc + "/" + p);
            containers.insert(cpath.clone());
            any_container = true;
            if Some(ns) == host {
                continue;
            }
            let paths = by_ns.entry(ns).or_default();
            if paths.len() < 64 && !paths.contains(&cpath) {
                paths.push(cpath);
            }
        }
        if !any_container
            && Some(ns) != host
            && out.networks.len() < cap
            && let Some(p) = d.bind_mounts.iter().find_map(|m| network_prefix(m))
        {
            out.networks.insert(ns, p.to_string());
        }
    }

    out.containers = containers.len();
    out.container_paths = containers.into_iter().take(cap).collect();
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

/// The path of a `/proc/<pid>/cgroup` text in the v2 hierarchy (`0::/path`) or in the v1
/// hierarchy carrying the memory controller (`N:memory:/path`, possibly co-mounted).
fn cgroup_path(text: &str, v2: bool) -> Option<&str> {
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if v2 {
            id == "0" && ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == "memory")
        };
        hit.then_some(path)
    })
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

pub(crate) fn netns_of(proc_root: &Path, pid: u32) -> Option<u32> {
    let ino = std::fs::metadata(proc_root.join(pid.to_string()).join("ns/net"))
        .ok()?
        .ino();
    u32::try_from(ino).ok()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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

    #[test]
    fn network_prefixes_of_libnetwork_mounts() {
        fn p(s: &str) -> Option<&str> {
            network_prefix(Path::new(s))
        }
        assert_eq!(p("/run/docker/netns/1-dolsmd8pb0"), Some("dolsmd8pb0"));
        assert_eq!(p("/tmp/d/run-b/netns/1-abcdef1234"), Some("abcdef1234"));
        assert_eq!(p("/run/docker/netns/ingress_sbox"), None);
        assert_eq!(
            p("/run/docker/netns/5f3d4aef6cfc"),
            None,
            "a container sandbox"
        );
        assert_eq!(p("/run/netns/1-abcdef1234"), Some("abcdef1234"));
        assert_eq!(p("/elsewhere/1-abcdef1234"), None);
    }

    #[test]
    fn cgroup_lines() {
        let hybrid = "12:memory:/kubepods/x\n1:name=systemd:/\n0::/kubepods/x\n";
        assert_eq!(cgroup_path(hybrid, false), Some("/kubepods/x"));
        assert_eq!(cgroup_path(hybrid, true), Some("/kubepods/x"));
        assert_eq!(cgroup_path("4:cpu,memory:/a\n", false), Some("/a"));
        assert_eq!(cgroup_path("0::/b\n", false), None);
        assert_eq!(cgroup_path("garbage", true), None);
    }

    /// A fake /proc: containers are found through their processes, the host netns is not
    /// attributed, podman's nested cgroup names its container.
    #[test]
    fn scan_fake_proc() {
        let d = std::env::temp_dir().join(format!("fathom-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (cg, proc_) = (d.join("cg"), d.join("proc"));
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "memory\n").unwrap();
        let c1 = format!("/kubepods/pod{UID}/{}", id(1));
        let c2 = format!("/machine.slice/libpod-{}.scope", id(2));
        for (pid, target, path) in [
            (1, "host", "/".to_string()),
            (100, "a", c1.clone()),
            (101, "a", c1.clone()),
            (200, "host", format!("/docker/{}", id(3))),
            (300, "b", format!("{c2}/container")),
            (400, "c", "/system.slice/foo.service".to_string()),
        ] {
            let dir = proc_.join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            let f = d.join(format!("ns-{target}"));
            if !f.exists() {
                std::fs::write(&f, "").unwrap();
            }
            std::os::unix::fs::symlink(&f, dir.join("ns/net")).unwrap();
            std::fs::write(dir.join("cgroup"), format!("0::{path}\n")).unwrap();
        }
        let mut found: BTreeMap<u32, Discovered> = BTreeMap::new();
        for e in std::fs::read_dir(&proc_).unwrap().flatten() {
            let pid: u32 = e.file_name().to_str().unwrap().parse().unwrap();
            let ino = std::fs::metadata(e.path().join("ns/net")).unwrap().ino() as u32;
            found.entry(ino).or_default().pids.push(pid);
        }
        // A namespace held only by libnetwork's bind mount of an overlay network.
        found.entry(7).or_default().bind_mounts =
            vec![PathBuf::from("/x/run-b/netns/1-dolsmd8pb0")];
        let s = scan_found(&cg, &proc_, &found, 16);
        assert_eq!(s.networks.get(&7).map(String::as_str), Some("dolsmd8pb0"));
        assert_eq!(s.containers, 3, "{s:?}");
        assert_eq!(s.owners.len(), 2, "{s:?}");
        let ino = |t: &str| std::fs::metadata(d.join(format!("ns-{t}"))).unwrap().ino() as u32;
        assert_eq!(s.owners[&ino("a")].path, c1);
        assert!(!s.owners[&ino("a")].shared, "one container, two processes");
        assert_eq!(s.owners[&ino("b")].path, c2);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
