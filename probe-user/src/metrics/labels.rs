//! Workload labels of metric series, and where they come from.
//!
//! A [`LabelSource`] turns what the kernel reported into `namespace` / `pod` / `container` /
//! `cgroup` labels plus an [`Anchor`]: the thing whose existence keeps the series alive (see
//! [`super::store`]). [`CgroupPathLabels`] is the source that needs nothing but the cgroup
//! path the kernel recorded: it knows pod UIDs and container ids, not names. The Kubernetes
//! attribution (pod names, namespaces, container names) plugs in as another `LabelSource`.

use std::{path::Path, sync::Arc};

use crate::{cgroup::Hierarchies, container, oom::OomKill};

/// Labels naming the workload a series belongs to. Empty strings mean "not known" or "not a
/// container / pod" (host-level events): fathom never makes a value up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadLabels {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name, or the pod UID while no attribution knows the name.
    pub pod: String,
    /// Container name, or the container id while no attribution knows the name.
    pub container: String,
    /// The cgroup path, only for workloads that are no container or pod (systemd services,
    /// plain cgroups), which the other labels cannot name.
    pub cgroup: String,
}

impl WorkloadLabels {
    /// Label names, in the order of [`Self::values`].
    pub const NAMES: [&'static str; 4] = ["namespace", "pod", "container", "cgroup"];

    pub fn values(&self) -> [&str; 4] {
        [&self.namespace, &self.pod, &self.container, &self.cgroup]
    }
}

/// What keeps a series alive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// Never expires: host-level series and fixed label sets.
    Host,
    /// A cgroup directory (absolute path in a mounted hierarchy): the pod's cgroup for a pod,
    /// the container's for a container outside a pod, else the cgroup itself. Shared: every
    /// series of a workload holds one.
    Cgroup(Arc<Path>),
    /// A network namespace (its inode): exists while the network topology lists it (see
    /// [`super::netns_labels`]).
    Netns(u32),
}

impl Anchor {
    /// Looks at the filesystem: a cgroup anchor exists while its directory does. A network
    /// namespace cannot be found from its inode alone: only the topology knows, so here it
    /// counts as existing (never expire rather than expire a live namespace).
    pub fn exists(&self) -> bool {
        match self {
            Anchor::Host | Anchor::Netns(_) => true,
            Anchor::Cgroup(p) => p.is_dir(),
        }
    }
}

/// Maps kernel reports to workload labels. Implementations must be cheap: they run for every
/// event, and for every kernel map key at scrape time.
pub trait LabelSource: Send + Sync + 'static {
    /// Labels and anchor of an OOM kill's victim.
    fn oom_kill(&self, kill: &OomKill) -> (WorkloadLabels, Anchor);

    /// Labels and anchor of a memory cgroup (path in the memory hierarchy, "/a/b") with the
    /// names the attribution found for it (pressure series). By default the path itself.
    fn memory_cgroup(
        &self,
        path: &str,
        workload: &crate::attribution::Workload,
    ) -> (WorkloadLabels, Anchor) {
        let _ = workload;
        (
            WorkloadLabels {
                cgroup: path.to_string(),
                ..Default::default()
            },
            Anchor::Host,
        )
    }

    /// Whether an anchor this source handed out still exists.
    fn is_alive(&self, anchor: &Anchor) -> bool {
        anchor.exists()
    }
}

/// Labels from the cgroup path alone (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct CgroupPathLabels {
    hierarchies: Hierarchies,
}

impl CgroupPathLabels {
    pub fn new(hierarchies: Hierarchies) -> Self {
        Self { hierarchies }
    }

    /// For this host's cgroup mounts.
    pub fn detect() -> Self {
        Self::new(Hierarchies::detect())
    }

    /// Labels and anchor of a cgroup path relative to the root of `root`'s hierarchy.
    fn for_path(&self, path: &str, root: Option<&Path>) -> (WorkloadLabels, Anchor) {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() {
            return (WorkloadLabels::default(), Anchor::Host);
        }
        let w = container::parse(path);
        // The deepest component that still names the whole workload: the pod (a pod outlives
        // the restarts of its containers), else the container, else the cgroup itself.
        let anchor_depth = match (&w.pod, &w.container) {
            (Some(p), _) => p.component + 1,
            (None, Some(c)) => c.component + 1,
            (None, None) => parts.len(),
        };
        let anchor = match root {
            Some(r) => Anchor::Cgroup(
                parts[..anchor_depth]
                    .iter()
                    .fold(r.to_path_buf(), |p, c| p.join(c))
                    .into(),
            ),
            // No mount to check against: never expire rather than expire a live workload.
            None => Anchor::Host,
        };
        let labels = WorkloadLabels {
            namespace: String::new(),
            pod: w.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default(),
            container: w
                .container
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default(),
            cgroup: if w.pod.is_none() && w.container.is_none() {
                path.to_string()
            } else {
                String::new()
            },
        };
        (labels, anchor)
    }
}

impl CgroupPathLabels {
    /// The labels an OOM kill of a process in cgroup `path` (relative to its hierarchy's
    /// root) would get, with the names the attribution found (for zero series).
    pub fn labels_of(&self, path: &str, w: &crate::attribution::Workload) -> WorkloadLabels {
        let mut labels = self.for_path(path, None).0;
        with_names(&mut labels, w);
        labels
    }
}

impl LabelSource for CgroupPathLabels {
    fn oom_kill(&self, kill: &OomKill) -> (WorkloadLabels, Anchor) {
        // The same path `oom` attributes the kill by: the cgroup v2 path when the victim sits
        // below the v2 root, else (hybrid hosts where runtimes only join v1 controllers) its
        // memory cgroup's path.
        let memcg_path = kill.memcg.as_ref().and_then(|m| m.path.as_deref());
        let (mut labels, anchor) = match (kill.victim.cgroup_path.as_deref(), memcg_path) {
            (Some(p), _) if p != "/" => self.for_path(p, self.hierarchies.unified.as_deref()),
            (_, Some(p)) => self.for_path(p, self.hierarchies.memory.as_deref()),
            _ => (WorkloadLabels::default(), Anchor::Host),
        };
        with_names(&mut labels, &kill.workload);
        (labels, anchor)
    }

    fn memory_cgroup(
        &self,
        path: &str,
        workload: &crate::attribution::Workload,
    ) -> (WorkloadLabels, Anchor) {
        let (mut labels, anchor) = self.for_path(path, self.hierarchies.memory.as_deref());
        with_names(&mut labels, workload);
        (labels, anchor)
    }
}

/// Replaces ids by the names the attribution layer found (the same convention as the network
/// families: pod name, else UID; container name, else id).
fn with_names(labels: &mut WorkloadLabels, w: &crate::attribution::Workload) {
    if let Some(p) = &w.pod {
        if let Some(ns) = &p.namespace {
            labels.namespace.clone_from(ns);
        }
        if let Some(name) = &p.name {
            labels.pod.clone_from(name);
        }
    }
    if let Some(c) = &w.container
        && let Some(name) = &c.name
    {
        labels.container.clone_from(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    fn source() -> CgroupPathLabels {
        CgroupPathLabels::new(Hierarchies {
            unified: Some("/cg/unified".into()),
            memory: Some("/cg/memory".into()),
        })
    }

    #[test]
    fn kubernetes_container_is_anchored_at_its_pod() {
        let (l, a) = source().for_path(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(Path::new("/cg/memory")),
        );
        assert_eq!(l.pod, UID);
        assert_eq!(l.container, ID);
        assert_eq!(l.namespace, "");
        assert_eq!(l.cgroup, "", "a container's path is no label");
        assert_eq!(
            a,
            Anchor::Cgroup(Path::new(&format!("/cg/memory/kubepods/burstable/pod{UID}")).into())
        );
    }

    #[test]
    fn docker_container_is_anchored_at_itself() {
        let (l, a) = source().for_path(
            &format!("/system.slice/docker-{ID}.scope"),
            Some(Path::new("/r")),
        );
        assert_eq!((l.pod.as_str(), l.container.as_str()), ("", ID));
        assert_eq!(
            a,
            Anchor::Cgroup(Path::new(&format!("/r/system.slice/docker-{ID}.scope")).into())
        );
    }

    #[test]
    fn plain_cgroups_carry_their_path_and_the_root_is_the_host() {
        let (l, a) = source().for_path("/system.slice/nginx.service", Some(Path::new("/r")));
        assert_eq!(l.cgroup, "/system.slice/nginx.service");
        assert_eq!((l.pod.as_str(), l.container.as_str()), ("", ""));
        assert_eq!(
            a,
            Anchor::Cgroup(Path::new("/r/system.slice/nginx.service").into())
        );
        assert_eq!(
            source().for_path("/", Some(Path::new("/r"))),
            (WorkloadLabels::default(), Anchor::Host)
        );
        // Without a mount there is nothing to check: never expire.
        assert_eq!(source().for_path("/a", None).1, Anchor::Host);
    }

    #[test]
    fn anchors_exist_while_their_directory_does() {
        assert!(Anchor::Host.exists());
        assert!(Anchor::Cgroup(Path::new("/").into()).exists());
        assert!(!Anchor::Cgroup(Path::new("/nonexistent/fathom").into()).exists());
    }
}
