//! The zero series of `fathom_oom_kills_total`: one per container and scope a kill of it can
//! have, for every container fathom finds in the cgroup hierarchies — `scope="container"`
//! (its own limit) and, inside a pod, `scope="pod"` (the pod's limit). Host-scope kills and
//! plain cgroups (systemd services …) get no zero series: their set is unbounded and they are
//! not what the shipped alerts watch. Series per pod: 2 × its containers.
//!
//! How fathom learns a container: a walk of the hierarchies at scrape time, at most once per
//! [`RESCAN`] (a few ms for thousands of cgroups). A container is therefore known from the
//! first scrape after its cgroup appears (runtimes create the cgroup before the process runs);
//! a container OOM-killed before that scrape has no zero series, and its series is instead
//! exported at 0 by its first scrape and with its count from the next one on
//! ([`super::store`]). No inotify: a watch per cgroup directory costs a descriptor-like kernel
//! object each and does not help a kill that comes before the next scrape anyway.
//!
//! Labels are those a kill would get: ids from the path, names from the attribution where a
//! runtime has answered ([`crate::attribution::Attributor::by_cgroup_path`]).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use super::labels::{CgroupPathLabels, WorkloadLabels};
use crate::{
    attribution::Attributor,
    cgroup::Hierarchies,
    container::{self, Scope},
};

/// Shortest time between two walks.
pub const RESCAN: Duration = Duration::from_secs(1);
/// Deepest cgroup level walked (kubepods.slice/…/pod/container is 4).
const MAX_DEPTH: usize = 8;

/// Zero-series keys: workload labels and scope.
pub type ZeroKey = (WorkloadLabels, &'static str);

/// Finds the containers of this host (see the module docs).
pub struct CgroupScan {
    roots: Vec<PathBuf>,
    attributor: Option<Attributor>,
    labels: CgroupPathLabels,
    workload_labels: bool,
    cache: Mutex<Option<(Instant, Vec<ZeroKey>)>>,
}

impl CgroupScan {
    pub fn new(h: &Hierarchies, attributor: Option<Attributor>, workload_labels: bool) -> Self {
        let mut roots: Vec<PathBuf> = h.unified.iter().chain(h.memory.iter()).cloned().collect();
        roots.dedup();
        Self {
            roots,
            attributor,
            labels: CgroupPathLabels::new(h.clone()),
            workload_labels,
            cache: Mutex::new(None),
        }
    }

    /// The zero-series keys now (cached for [`RESCAN`]).
    pub fn keys(&self, now: Instant) -> Vec<ZeroKey> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, keys)) = c.as_ref()
            && now.saturating_duration_since(*at) < RESCAN
        {
            return keys.clone();
        }
        let keys = self.scan();
        *c = Some((now, keys.clone()));
        keys
    }

    fn scan(&self) -> Vec<ZeroKey> {
        let mut paths = BTreeSet::new();
        for root in &self.roots {
            walk(root, root, 0, &mut paths);
        }
        let mut keys = BTreeSet::new();
        for rel in paths {
            if container::scope_of(&rel) != Scope::Container {
                continue;
            }
            let in_pod = container::parse(&rel).pod.is_some();
            let labels = if self.workload_labels {
                let w = match &self.attributor {
                    Some(a) => a.by_cgroup_path(&rel),
                    None => crate::attribution::Workload::from_path(&rel),
                };
                self.labels.labels_of(&rel, &w)
            } else {
                WorkloadLabels::default()
            };
            if in_pod {
                keys.insert((labels.clone(), Scope::Pod.as_str()));
            }
            keys.insert((labels, Scope::Container.as_str()));
        }
        keys.into_iter().collect()
    }
}

/// Collects every cgroup directory below `dir` as a path relative to `root` ("/a/b").
fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        if let Ok(rel) = p.strip_prefix(root) {
            out.insert(format!("/{}", rel.display()));
        }
        walk(root, &p, depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    #[test]
    fn containers_get_container_and_pod_scopes_plain_cgroups_none() {
        let dir = std::env::temp_dir().join(format!("fathom-zeros-{}", std::process::id()));
        let pod = dir.join(format!("kubepods/burstable/pod{UID}"));
        std::fs::create_dir_all(pod.join(ID)).unwrap();
        std::fs::create_dir_all(dir.join(format!("system.slice/docker-{ID}.scope"))).unwrap();
        std::fs::create_dir_all(dir.join("system.slice/nginx.service")).unwrap();
        let h = Hierarchies {
            unified: Some(dir.clone()),
            memory: Some(dir.clone()),
        };
        let keys = CgroupScan::new(&h, None, true).keys(Instant::now());
        std::fs::remove_dir_all(&dir).unwrap();
        let show: Vec<(String, String, &str)> = keys
            .iter()
            .map(|(l, s)| (l.pod.clone(), l.container.clone(), *s))
            .collect();
        assert_eq!(
            show,
            vec![
                (String::new(), ID.to_string(), "container"),
                (UID.to_string(), ID.to_string(), "container"),
                (UID.to_string(), ID.to_string(), "pod"),
            ],
            "{keys:?}"
        );
    }
}
