//! The attribution answer: which container and which Kubernetes pod a cgroup (or network
//! namespace) belongs to, as serialised into events (`"container"` / `"pod"` objects whose
//! unknown fields are omitted), and how the cgroup path and a runtime's answer combine into it.

use serde::Serialize;

use crate::container::{self, Qos, Runtime};

/// A container as events report it: `{"id", "runtime", "name"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// The runtime's container id (64 hex digits for docker, containerd, CRI-O, podman).
    pub id: String,
    /// The runtime that answered for this id; without an answer, what the path suggests
    /// ([`Runtime::Unknown`] for a bare id under a Kubernetes pod).
    pub runtime: Runtime,
    /// The Kubernetes container name, else the runtime's own name (docker `--name`,
    /// nerdctl's name label). Absent until a runtime has answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Docker Swarm service, task and node (from the container's `com.docker.swarm.*` labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmInfo>,
    /// Docker Compose project and service (`com.docker.compose.project` / `.service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<ComposeInfo>,
}

/// A Swarm task's identity: `{"service", "task", "node_id"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SwarmInfo {
    /// `com.docker.swarm.service.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `com.docker.swarm.task.name` (`<service>.<slot or node id>.<task id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// `com.docker.swarm.node.id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// A Compose service's identity: `{"project", "service"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ComposeInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A Docker network owning a network namespace (libnetwork's overlay namespace
/// `<exec-root>/netns/1-<network id prefix>`): `{"id", "name", "driver"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkInfo {
    /// Full network id as the daemon gives it.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// A Kubernetes pod as events report it: `{"uid", "name", "namespace", "qos"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    /// Pod UID from the cgroup path (`pod<uid>` / `…-pod<uid_>.slice`) or the runtime's
    /// `io.kubernetes.pod.uid` label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `io.kubernetes.pod.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `io.kubernetes.pod.namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// QoS class from the kubelet's cgroup layout; absent when the path is not a kubepods one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// Container and pod of a cgroup. `#[serde(flatten)]` it into an event to get top-level
/// `"container"` and `"pod"` keys; both are omitted when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodInfo>,
    /// The Docker network whose namespace this is (network events of an overlay namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInfo>,
}

impl Workload {
    /// What the cgroup path alone says (no runtime, no caches): pure and cheap.
    pub fn from_path(path: &str) -> Self {
        let w = container::parse(path);
        Workload {
            container: w.container.map(|c| ContainerInfo {
                id: c.id,
                runtime: c.runtime,
                name: None,
                swarm: None,
                compose: None,
            }),
            pod: w.pod.map(|p| PodInfo {
                uid: Some(p.uid),
                name: None,
                namespace: None,
                qos: Some(p.qos),
            }),
            network: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.container.is_none() && self.pod.is_none() && self.network.is_none()
    }

    /// The Swarm service, else the Compose service, of the container: the `service` label
    /// of network series. `None` when the container has neither.
    pub fn service(&self) -> Option<&str> {
        let c = self.container.as_ref()?;
        c.swarm
            .as_ref()
            .and_then(|s| s.service.as_deref())
            .or_else(|| c.compose.as_ref().and_then(|p| p.service.as_deref()))
    }

    /// Adds what a runtime said about the container. The path stays authoritative for the
    /// pod UID and QoS (the kubelet wrote it); names come from the runtime's labels.
    pub(crate) fn merge_meta(&mut self, meta: &ContainerMeta) {
        if let Some(c) = &mut self.container {
            c.runtime = meta.runtime;
            if meta.name.is_some() {
                c.name.clone_from(&meta.name);
            }
            c.swarm.clone_from(&meta.swarm);
            c.compose.clone_from(&meta.compose);
        }
        if meta.pod_name.is_none() && meta.pod_namespace.is_none() && meta.pod_uid.is_none() {
            return;
        }
        let pod = self.pod.get_or_insert_with(PodInfo::default);
        if pod.uid.is_none() {
            pod.uid.clone_from(&meta.pod_uid);
        }
        pod.merge_names(&PodNames {
            name: meta.pod_name.clone(),
            namespace: meta.pod_namespace.clone(),
        });
    }
}

impl PodInfo {
    pub(crate) fn merge_names(&mut self, names: &PodNames) {
        if self.name.is_none() {
            self.name.clone_from(&names.name);
        }
        if self.namespace.is_none() {
            self.namespace.clone_from(&names.namespace);
        }
    }
}

/// Pod names remembered per pod UID, so a pod-level cgroup (an OOM domain, a pod's netns)
/// gets names once any of its containers has been looked up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodNames {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// What a container runtime knows about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub runtime: Runtime,
    /// Kubernetes container name, else the runtime's own container name.
    pub name: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub swarm: Option<SwarmInfo>,
    pub compose: Option<ComposeInfo>,
}

/// Labels dockerd's Swarm executor puts on a task's container.
pub(crate) const LABEL_SWARM_SERVICE: &str = "com.docker.swarm.service.name";
pub(crate) const LABEL_SWARM_TASK: &str = "com.docker.swarm.task.name";
pub(crate) const LABEL_SWARM_NODE: &str = "com.docker.swarm.node.id";
/// Labels Docker Compose puts on the containers it creates.
pub(crate) const LABEL_COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub(crate) const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// Kubernetes labels every CRI runtime (containerd CRI, CRI-O, cri-dockerd) puts on containers.
pub(crate) const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub(crate) const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub(crate) const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub(crate) const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// nerdctl's name for containers it runs on containerd.
pub(crate) const LABEL_NERDCTL_NAME: &str = "nerdctl/name";

impl ContainerMeta {
    /// From a runtime's label map; `fallback_name` is the runtime's own name for the container.
    pub(crate) fn from_labels<'a>(
        runtime: Runtime,
        mut label: impl FnMut(&str) -> Option<&'a str>,
        fallback_name: Option<&str>,
    ) -> Self {
        let mut get = |k: &str| {
            label(k)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let name = get(LABEL_CONTAINER_NAME)
            .or_else(|| get(LABEL_NERDCTL_NAME))
            .or_else(|| {
                fallback_name
                    .map(|n| n.trim_start_matches('/').to_string())
                    .filter(|n| !n.is_empty())
            });
        let swarm = SwarmInfo {
            service: get(LABEL_SWARM_SERVICE),
            task: get(LABEL_SWARM_TASK),
            node_id: get(LABEL_SWARM_NODE),
        };
        let compose = ComposeInfo {
            project: get(LABEL_COMPOSE_PROJECT),
            service: get(LABEL_COMPOSE_SERVICE),
        };
        ContainerMeta {
            runtime,
            name,
            pod_uid: get(LABEL_POD_UID),
            pod_name: get(LABEL_POD_NAME),
            pod_namespace: get(LABEL_POD_NAMESPACE),
            swarm: (swarm != SwarmInfo::default()).then_some(swarm),
            compose: (compose != ComposeInfo::default()).then_some(compose),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    #[test]
    fn json_omits_unknown_fields() {
        let w = Workload::from_path(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "container": {"id": ID, "runtime": "unknown"},
                "pod": {"uid": UID, "qos": "burstable"}
            })
        );
        let v = serde_json::to_value(Workload::from_path("/system.slice/sshd.service")).unwrap();
        assert_eq!(v, serde_json::json!({}));
    }

    #[test]
    fn runtime_answer_fills_names_and_corrects_runtime() {
        let labels: HashMap<&str, &str> = [
            (LABEL_POD_NAME, "web-0"),
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_CONTAINER_NAME, "app"),
            (LABEL_POD_UID, "other-uid"),
        ]
        .into();
        let meta = ContainerMeta::from_labels(
            Runtime::Containerd,
            |k| labels.get(k).copied(),
            Some("/ignored"),
        );
        let mut w = Workload::from_path(&format!("/kubepods/pod{UID}/{ID}"));
        w.merge_meta(&meta);
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "container": {"id": ID, "runtime": "containerd", "name": "app"},
                // The path's UID wins over a label.
                "pod": {"uid": UID, "name": "web-0", "namespace": "shop", "qos": "guaranteed"}
            })
        );
    }

    #[test]
    fn labels_make_a_pod_when_the_path_has_none() {
        let labels: HashMap<&str, &str> = [(LABEL_POD_NAME, "web-0")].into();
        let meta = ContainerMeta::from_labels(Runtime::Docker, |k| labels.get(k).copied(), None);
        let mut w = Workload::from_path(&format!("/docker/{ID}"));
        w.merge_meta(&meta);
        let pod = w.pod.unwrap();
        assert_eq!(pod.name.as_deref(), Some("web-0"));
        assert_eq!((pod.uid, pod.qos), (None, None));
    }

    #[test]
    fn swarm_and_compose_labels() {
        let labels: HashMap<&str, &str> = [
            (LABEL_SWARM_SERVICE, "web"),
            (LABEL_SWARM_TASK, "web.1.abc"),
            (LABEL_SWARM_NODE, "n0de"),
            (LABEL_COMPOSE_PROJECT, "shop"),
        ]
        .into();
        let meta = ContainerMeta::from_labels(
            Runtime::Docker,
            |k| labels.get(k).copied(),
            Some("/web.1.abc"),
        );
        let mut w = Workload::from_path(&format!("/docker/{ID}"));
        w.merge_meta(&meta);
        assert_eq!(w.service(), Some("web"));
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"container": {
                "id": ID, "runtime": "docker", "name": "web.1.abc",
                "swarm": {"service": "web", "task": "web.1.abc", "node_id": "n0de"},
                "compose": {"project": "shop"}
            }})
        );
        let labels: HashMap<&str, &str> = [(LABEL_COMPOSE_SERVICE, "db")].into();
        let meta = ContainerMeta::from_labels(Runtime::Docker, |k| labels.get(k).copied(), None);
        let mut w = Workload::from_path(&format!("/docker/{ID}"));
        w.merge_meta(&meta);
        assert_eq!(w.service(), Some("db"));
        assert!(w.container.unwrap().swarm.is_none());
    }

    #[test]
    fn docker_name_without_labels() {
        let meta = ContainerMeta::from_labels(Runtime::Docker, |_| None, Some("/oomy"));
        assert_eq!(meta.name.as_deref(), Some("oomy"));
        let meta = ContainerMeta::from_labels(Runtime::Docker, |_| Some(" "), Some("/"));
        assert_eq!(meta.name, None);
        let mut w = Workload::from_path(&format!("/docker/{ID}"));
        w.merge_meta(&meta);
        assert!(w.pod.is_none());
    }
}
