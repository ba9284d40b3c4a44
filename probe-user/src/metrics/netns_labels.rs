//! Labels of per-network-namespace series — `namespace`, `pod`, `netns`, `container`,
//! `service`, `network` — and when such a series' namespace is gone.
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
//! Outside Kubernetes, `container` is the container's runtime name (docker `--name`, a Swarm
//! task's `<service>.<slot>.<task id>`), `service` its Swarm service (else its Compose
//! service), and `network` the Docker network whose namespace it is (libnetwork's overlay
//! namespace, where the VXLAN device and the bridge live). All three are functions of the
//! namespace: they add no series to the `netns` label's, so cardinality stays one set of
//! series per namespace. A pod's namespace leaves `container` and `service` empty (the pod
//! names it).
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
    /// Name of the container owning the namespace when it is in no pod (Docker, Swarm).
    pub container: String,
    /// Swarm service (else Compose service) of that container.
    pub service: String,
    /// Docker network owning the namespace (an overlay network's namespace).
    pub network: String,
}

impl NetnsLabels {
    /// `(name, value)` pairs in exposition order.
    /// `namespace`, `pod`, `netns` (always present).
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("netns", &self.netns),
        ]
    }

    /// Every label of the series: [`Self::pairs`], then `container`, `service`, `network`
    /// where they have a value (an empty label is no label to Prometheus, and leaving them
    /// out keeps the series of pods and plain namespaces as they were), then `extra`.
    pub fn with<'a>(&'a self, extra: &[(&'static str, &'a str)]) -> Vec<(&'static str, &'a str)> {
        let mut v = Vec::with_capacity(6 + extra.len());
        v.extend(self.pairs());
        for (k, val) in [
            ("container", &self.container),
            ("service", &self.service),
            ("network", &self.network),
        ] {
            if !val.is_empty() {
                v.push((k, val.as_str()));
            }
        }
        v.extend_from_slice(extra);
        v
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

/// `(container, service, network)` of a workload outside Kubernetes: the container's name and
/// Swarm / Compose service, the Docker network; empty for pods and unknowns.
pub fn docker_labels(w: &Workload) -> (String, String, String) {
    let network = w
        .network
        .as_ref()
        .map(|n| n.name.clone().unwrap_or_else(|| n.id.clone()))
        .unwrap_or_default();
    if w.pod.is_some() {
        return (String::new(), String::new(), network);
    }
    let container = w
        .container
        .as_ref()
        .and_then(|c| c.name.clone())
        .unwrap_or_default();
    let service = w.service().unwrap_or_default().to_string();
    (container, service, network)
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
            let mut labels = NetnsLabels {
                netns: netns_label(netns),
                ..Default::default()
            };
            let resolved = if Some(netns) == host {
                true
            } else {
                match owners.owner(netns) {
                    Some(w) => {
                        // A pod once named; a container outside pods once its runtime named it.
                        let named = match (&w.pod, &w.container) {
                            (Some(p), _) => p.name.is_some(),
                            (None, Some(c)) => c.name.is_some(),
                            (None, None) => true,
                        };
                        (labels.namespace, labels.pod) = pod_labels(&w);
                        (labels.container, labels.service, labels.network) = docker_labels(&w);
                        named
                    }
                    None => false,
                }
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
    /// Inode → cookie (when the topology knows it); `None` without a topology.
    listed: Option<std::collections::HashMap<u32, Option<u64>>>,
    /// The topology has published its first scan.
    scanned: bool,
}

impl ListedNetns {
    pub fn new(topology: Option<&TopologySnapshot>) -> Self {
        Self {
            listed: topology.map(|t| t.netns.iter().map(|n| (n.inode, n.cookie)).collect()),
            scanned: topology.is_some_and(|t| t.generation > 0),
        }
    }

    /// The namespaces the topology lists (none before its first scan or without one).
    pub fn listed(&self) -> impl Iterator<Item = u32> + '_ {
        self.listed.iter().flat_map(|l| l.keys()).copied()
    }

    /// The cookie of the namespace the topology lists under `netns`, when it knows it: the
    /// namespace that holds the inode now.
    pub fn cookie(&self, netns: u32) -> Option<u64> {
        self.listed.as_ref()?.get(&netns).copied().flatten()
    }

    /// Whether the topology has published its first scan.
    pub fn scanned(&self) -> bool {
        self.scanned
    }

    /// Whether the topology knows the namespace (so it can name its devices). Without a
    /// topology nothing will ever be known better: true.
    pub fn lists(&self, netns: u32) -> bool {
        self.listed.as_ref().is_none_or(|l| l.contains_key(&netns))
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
            network: None,
        }
    }

    pub(crate) fn topology(host: u32, others: &[u32]) -> TopologySnapshot {
        let info = |inode, is_host| NetnsInfo {
            inode,
            cookie: None,
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

#[cfg(test)]
mod docker_tests {
    use super::tests::{FixedOwners, topology};
    use super::*;
    use crate::{
        attribution::{ContainerInfo, NetworkInfo, SwarmInfo},
        container::Runtime,
    };

    fn task(name: Option<&str>) -> Workload {
        Workload {
            container: Some(ContainerInfo {
                id: "ab".repeat(32),
                runtime: Runtime::Docker,
                name: name.map(Into::into),
                swarm: Some(SwarmInfo {
                    service: Some("web".into()),
                    task: Some("web.n0de.t4sk".into()),
                    node_id: Some("n0de".into()),
                }),
                compose: None,
            }),
            pod: None,
            network: None,
        }
    }

    #[test]
    fn docker_containers_and_networks_are_named_and_empty_labels_left_out() {
        let mut owners = FixedOwners::default();
        owners.pods.insert(10, task(Some("web.n0de.t4sk")));
        owners.pods.insert(11, task(None));
        owners.pods.insert(
            12,
            Workload {
                network: Some(NetworkInfo {
                    id: "dolsmd8pb0xyz".into(),
                    name: Some("ov".into()),
                    driver: Some("overlay".into()),
                }),
                ..Default::default()
            },
        );
        let topo = topology(1, &[10, 11, 12]);
        let mut l = NetnsLabeler::new(&owners, Some(&topo), true);
        let (t, _) = l.labels(10);
        assert_eq!(
            t.with(&[("reason", "X")]),
            vec![
                ("namespace", ""),
                ("pod", ""),
                ("netns", "10"),
                ("container", "web.n0de.t4sk"),
                ("service", "web"),
                ("reason", "X"),
            ]
        );
        assert!(l.resolved(10));
        assert!(!l.resolved(11), "a container not named by its runtime yet");
        let (n, _) = l.labels(12);
        assert_eq!(n.network, "ov");
        assert_eq!((n.container.as_str(), n.service.as_str()), ("", ""));
        assert!(l.resolved(12));
        let (h, _) = l.labels(1);
        assert_eq!(
            h.with(&[]),
            vec![("namespace", ""), ("pod", ""), ("netns", "1")]
        );
    }
}
