//! `--namespace`, `--pod` and `--container` selection of events by their attributed workload.

use super::Workload;

/// Which workloads to keep. Every criterion given must match; none given keeps everything.
/// An event whose workload is not known (yet) does not match a criterion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFilter {
    /// Kubernetes namespace, exactly.
    pub namespace: Option<String>,
    /// Pod name or UID, exactly.
    pub pod: Option<String>,
    /// Container name exactly, or a prefix (at least 4 characters) of its id, as `docker`
    /// accepts.
    pub container: Option<String>,
}

/// Shortest id prefix accepted, so that `--container a` does not match one id in 16.
const MIN_ID_PREFIX: usize = 4;

impl WorkloadFilter {
    pub fn is_empty(&self) -> bool {
        self.namespace.is_none() && self.pod.is_none() && self.container.is_none()
    }

    pub fn matches(&self, w: &Workload) -> bool {
        let pod = w.pod.as_ref();
        if let Some(ns) = &self.namespace
            && pod.and_then(|p| p.namespace.as_deref()) != Some(ns.as_str())
        {
            return false;
        }
        if let Some(want) = &self.pod
            && !pod.is_some_and(|p| {
                p.name.as_deref() == Some(want.as_str()) || p.uid.as_deref() == Some(want.as_str())
            })
        {
            return false;
        }
        if let Some(want) = &self.container
            && !w.container.as_ref().is_some_and(|c| {
                c.name.as_deref() == Some(want.as_str())
                    || (want.len() >= MIN_ID_PREFIX && c.id.starts_with(want.as_str()))
            })
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::{ContainerInfo, PodInfo},
        container::Runtime,
    };

    fn w() -> Workload {
        Workload {
            container: Some(ContainerInfo {
                id: "abcdef0123".into(),
                runtime: Runtime::Containerd,
                name: Some("app".into()),
                swarm: None,
                compose: None,
            }),
            pod: Some(PodInfo {
                uid: Some("u-1".into()),
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                qos: None,
            }),
            network: None,
        }
    }

    fn f(ns: Option<&str>, pod: Option<&str>, c: Option<&str>) -> WorkloadFilter {
        WorkloadFilter {
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
            container: c.map(Into::into),
        }
    }

    #[test]
    fn criteria_combine() {
        assert!(WorkloadFilter::default().matches(&Workload::default()));
        assert!(f(Some("shop"), None, None).matches(&w()));
        assert!(!f(Some("other"), None, None).matches(&w()));
        assert!(f(None, Some("web-0"), None).matches(&w()));
        assert!(f(None, Some("u-1"), None).matches(&w()));
        assert!(f(Some("shop"), Some("web-0"), Some("app")).matches(&w()));
        assert!(f(None, None, Some("abcd")).matches(&w()));
        assert!(
            !f(None, None, Some("abc")).matches(&w()),
            "too short a prefix"
        );
        assert!(!f(Some("shop"), None, None).matches(&Workload::default()));
        assert!(!f(None, None, Some("app")).matches(&Workload::default()));
    }
}
