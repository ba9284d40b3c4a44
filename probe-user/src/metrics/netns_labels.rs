//! Labels of per-network-namespace series — `namespace`, `pod`, `netns` — and when such a
//! series' namespace is gone.
//!
//! The network programs key their counts by the namespace's inode (`net->ns.inum`), never by
//! the task that happened to run (drops happen in softirq context). The pod is whatever owns
//! the namespace ([`NetnsOwners`], the attribution's netns index).
//!
//! `netns` is the inode in decimal. A pod has exactly one network namespace, so the label adds
//! no series to a pod's; it is what tells apart the namespaces that have no pod (the host's,
//! `ip netns` ones, containers outside Kubernetes), which all carry empty `namespace` / `pod`.
//! It is empty when the kernel could not tell the namespace (inode 0).
//!
//! Liveness: a series is anchored at its namespace ([`Anchor::Netns`]), which exists while
//! the topology service lists it (it is gone once no process and no bind mount holds it).
//! Without a topology, or before its first scan, every namespace counts as alive.
//!
//! Without workload labels (`--no-workload-labels`, very large nodes) all three labels are
//! empty and series are anchored at nothing: they are bounded by reasons, causes and device
//! names, and expire only once no kernel key feeds them.

use std::collections::HashMap;

use super::labels::Anchor;
use crate::{
    attribution::{Attributor, Workload},
    net::TopologySnapshot,
};

/// Who owns a network namespace.
pub trait NetnsOwners: Send + Sync + 'static {
    /// The container / pod owning the namespace; `None` for the host's and unowned ones.
    /// Runs at scrape time for every namespace with counts: must answer from memory.
    fn owner(&self, netns: u32) -> Option<Workload>;
}

impl NetnsOwners for Attributor {
    fn owner(&self, netns: u32) -> Option<Workload> {
        self.by_netns(netns)
    }
}

/// `namespace`, `pod` and `netns` of a per-namespace series. Empty strings: not a pod / not
/// known (never made up).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsLabels {
    /// Kubernetes namespace of the pod owning the network namespace.
    pub namespace: String,
    /// Pod name, or its UID while no runtime has named it.
    pub pod: String,
    /// Network namespace inode.
    pub netns: String,
}

impl NetnsLabels {
    /// `(name, value)` pairs in exposition order.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("netns", &self.netns),
        ]
    }
}

/// The `netns` label value of an inode: empty for 0 (unknown).
pub fn netns_label(inode: u32) -> String {
    if inode == 0 {
        String::new()
    } else {
        inode.to_string()
    }
}

/// `(namespace, pod)` of a workload: the pod's Kubernetes namespace and its name (else UID).
/// A container outside any pod has neither.
pub fn pod_labels(w: &Workload) -> (String, String) {
    let Some(pod) = &w.pod else {
        return (String::new(), String::new());
    };
    (
        pod.namespace.clone().unwrap_or_default(),
        pod.name
            .clone()
            .or_else(|| pod.uid.clone())
            .unwrap_or_default(),
    )
}

/// Labels namespaces for one scrape, asking the owners once per namespace.
pub struct NetnsLabeler<'a> {
    owners: &'a dyn NetnsOwners,
    host: Option<u32>,
    workload_labels: bool,
    /// Labels, and whether they are final (see [`Self::resolved`]).
    cache: HashMap<u32, (NetnsLabels, bool)>,
}

impl<'a> NetnsLabeler<'a> {
    /// `topology` names the host's namespace, which is never looked up (no pod owns it, and a
    /// miss would make the attribution rescan).
    pub fn new(
        owners: &'a dyn NetnsOwners,
        topology: Option<&TopologySnapshot>,
        workload_labels: bool,
    ) -> Self {
        Self {
            owners,
            host: topology.and_then(|t| t.host_netns),
            workload_labels,
            cache: HashMap::new(),
        }
    }

    /// Labels and anchor of a namespace's series.
    pub fn labels(&mut self, netns: u32) -> (NetnsLabels, Anchor) {
        if !self.workload_labels || netns == 0 {
            return (NetnsLabels::default(), Anchor::Host);
        }
        (self.lookup(netns).0.clone(), Anchor::Netns(netns))
    }

    /// Whether no workload owns the namespace (as far as the attribution knows now): its
    /// labels will not get better by waiting for a runtime's answer.
    pub fn unowned(&mut self, netns: u32) -> bool {
        !self.workload_labels
            || netns == 0
            || Some(netns) == self.host
            || self.owners.owner(netns).is_none()
    }

    /// Whether the namespace's labels are final: the host's, or owned by a container or a
    /// named pod (a pod known by its UID only may get its name from the runtime later).
    /// Unowned namespaces never resolve: callers wait a bounded time, then use what there is.
    pub fn resolved(&mut self, netns: u32) -> bool {
        !self.workload_labels || netns == 0 || self.lookup(netns).1
    }

    fn lookup(&mut self, netns: u32) -> &(NetnsLabels, bool) {
        let (owners, host) = (self.owners, self.host);
        self.cache.entry(netns).or_insert_with(|| {
            let (namespace, pod, resolved) = if Some(netns) == host {
                (String::new(), String::new(), true)
            } else {
                match owners.owner(netns) {
                    Some(w) => {
                        let named = w.pod.as_ref().is_none_or(|p| p.name.is_some());
                        let (namespace, pod) = pod_labels(&w);
                        (namespace, pod, named)
                    }
                    None => (String::new(), String::new(), false),
                }
            };
            let labels = NetnsLabels {
                namespace,
                pod,
                netns: netns_label(netns),
            };
            (labels, resolved)
        })
    }
}

/// The anchor of a namespace's series: the namespace, or nothing for "unknown" (0).
pub fn netns_anchor(netns: u32) -> Anchor {
    if netns == 0 {
        Anchor::Host
    } else {
        Anchor::Netns(netns)
    }
}

/// The namespaces a topology snapshot lists, indexed once per scrape.
#[derive(Debug)]
pub struct ListedNetns {
    /// `None` without a topology.
    listed: Option<std::collections::HashSet<u32>>,
    /// The topology has published its first scan.
    scanned: bool,
}

impl ListedNetns {
    pub fn new(topology: Option<&TopologySnapshot>) -> Self {
        Self {
            listed: topology.map(|t| t.netns.iter().map(|n| n.inode).collect()),
            scanned: topology.is_some_and(|t| t.generation > 0),
        }
    }

    /// The namespaces the topology lists (none before its first scan or without one).
    pub fn listed(&self) -> impl Iterator<Item = u32> + '_ {
        self.listed.iter().flatten().copied()
    }

    /// Whether the topology has published its first scan.
    pub fn scanned(&self) -> bool {
        self.scanned
    }

    /// Whether the topology knows the namespace (so it can name its devices). Without a
    /// topology nothing will ever be known better: true.
    pub fn lists(&self, netns: u32) -> bool {
        self.listed.as_ref().is_none_or(|l| l.contains(&netns))
    }

    /// Whether an anchor handed out for a network series still exists: a namespace while the
    /// topology lists it (every namespace before the first scan or without a topology),
    /// anything else as [`Anchor::exists`] says.
    pub fn alive(&self, anchor: &Anchor) -> bool {
        match anchor {
            Anchor::Netns(inode) => !self.scanned || self.lists(*inode),
            other => other.exists(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{
        attribution::PodInfo,
        net::{NetnsInfo, TopologySnapshot},
    };

    /// Owners from a fixed table; counts the questions.
    #[derive(Default)]
    pub(crate) struct FixedOwners {
        pub pods: HashMap<u32, Workload>,
        pub asked: Mutex<Vec<u32>>,
    }

    impl NetnsOwners for FixedOwners {
        fn owner(&self, netns: u32) -> Option<Workload> {
            self.asked.lock().unwrap().push(netns);
            self.pods.get(&netns).cloned()
        }
    }

    pub(crate) fn pod(uid: &str, name: Option<&str>, namespace: Option<&str>) -> Workload {
        Workload {
            container: None,
            pod: Some(PodInfo {
                uid: Some(uid.into()),
                name: name.map(Into::into),
                namespace: namespace.map(Into::into),
                qos: None,
            }),
        }
    }

    pub(crate) fn topology(host: u32, others: &[u32]) -> TopologySnapshot {
        let info = |inode, is_host| NetnsInfo {
            inode,
            is_host,
            names: vec![],
            bind_mounts: vec![],
            pids: vec![],
        };
        let mut netns = vec![info(host, true)];
        netns.extend(others.iter().map(|&i| info(i, false)));
        TopologySnapshot {
            generation: 1,
            host_netns: Some(host),
            netns,
            ..Default::default()
        }
    }

    #[test]
    fn pods_are_named_when_known_and_by_uid_otherwise() {
        let mut owners = FixedOwners::default();
        owners
            .pods
            .insert(7, pod("uid-7", Some("web-0"), Some("shop")));
        owners.pods.insert(8, pod("uid-8", None, None));
        let topo = topology(1, &[7, 8, 9]);
        let mut l = NetnsLabeler::new(&owners, Some(&topo), true);
        let (a, anchor) = l.labels(7);
        assert_eq!(
            (a.namespace.as_str(), a.pod.as_str(), a.netns.as_str()),
            ("shop", "web-0", "7")
        );
        assert_eq!(anchor, Anchor::Netns(7));
        assert_eq!(l.labels(8).0.pod, "uid-8");
        // No pod: empty pod labels, the namespace tells it apart.
        let (c, _) = l.labels(9);
        assert_eq!((c.pod.as_str(), c.netns.as_str()), ("", "9"));
        // The host's namespace is never asked about; unknown (0) is no namespace at all.
        assert_eq!(l.labels(1).0.netns, "1");
        assert_eq!(l.labels(0), (NetnsLabels::default(), Anchor::Host));
        l.labels(7);
        assert_eq!(*owners.asked.lock().unwrap(), vec![7, 8, 9], "once each");
        // Final: a named pod, the host. Not yet: a pod known by UID, no owner.
        assert!(l.resolved(7) && l.resolved(1) && l.resolved(0));
        assert!(!l.resolved(8) && !l.resolved(9));
    }

    #[test]
    fn without_workload_labels_everything_is_empty_and_never_expires() {
        let owners = FixedOwners::default();
        let mut l = NetnsLabeler::new(&owners, None, false);
        assert_eq!(l.labels(7), (NetnsLabels::default(), Anchor::Host));
        assert!(l.resolved(7));
        assert!(owners.asked.lock().unwrap().is_empty());
    }

    #[test]
    fn a_namespace_lives_while_the_topology_lists_it() {
        let topo = topology(1, &[7]);
        let listed = ListedNetns::new(Some(&topo));
        assert!(listed.alive(&Anchor::Netns(7)));
        assert!(!listed.alive(&Anchor::Netns(8)));
        assert!(listed.alive(&Anchor::Host));
        assert!(listed.lists(7) && !listed.lists(8));
        // Before the first scan nothing is listed, and nothing is known to be gone.
        let before = ListedNetns::new(Some(&TopologySnapshot::default()));
        assert!(!before.lists(8) && before.alive(&Anchor::Netns(8)));
        // Without a topology every namespace is as known as it will ever be.
        let none = ListedNetns::new(None);
        assert!(none.lists(8) && none.alive(&Anchor::Netns(8)));
        assert_eq!(netns_anchor(0), Anchor::Host);
    }
}
