//! Container runtime clients: ask containerd, CRI-O and Docker what they know about a
//! container id (names and Kubernetes labels).
//!
//! Every call is bounded by a timeout. A runtime whose socket does not exist is skipped
//! without a connection attempt, so a host without that runtime costs one `stat` per lookup.
//! Connections are opened on first use and dropped on any error (the daemon may have been
//! restarted), never held across a daemon restart.

mod containerd;
mod crio;
mod docker;

use std::{path::PathBuf, time::Duration};

use tracing::debug;

pub(crate) use self::{containerd::ContainerdClient, crio::CrioClient, docker::DockerClient};
use super::{meta_cache::Answer, workload::ContainerMeta};
use crate::container::Runtime;

/// Why a runtime could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("socket {0} does not exist")]
    NoSocket(PathBuf),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("containerd: connecting: {0}")]
    ContainerdConnect(#[from] containerd_client::tonic::transport::Error),
    #[error("containerd: {0}")]
    Containerd(#[from] containerd_client::tonic::Status),
    #[error("cri-o: {0}")]
    Crio(String),
}

/// A lookup request: the container id and what its cgroup path suggests.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub id: String,
    /// Runtime named by the path (`docker-…scope`, `crio-…`), asked first.
    pub hint: Runtime,
    /// Parent component of a bare id (`/<namespace>/<id>`): a containerd namespace candidate.
    pub parent: Option<String>,
    /// Pod UID the path names: the pod whose names the answer's labels give.
    pub pod_uid: Option<String>,
}

pub(crate) struct Runtimes {
    containerd: Option<ContainerdClient>,
    crio: Option<CrioClient>,
    /// One client per dockerd socket.
    docker: Vec<DockerClient>,
    timeout: Duration,
}

impl Runtimes {
    pub(crate) fn new(
        containerd: Option<ContainerdClient>,
        crio: Option<CrioClient>,
        docker: Vec<DockerClient>,
        timeout: Duration,
    ) -> Self {
        Runtimes {
            containerd,
            crio,
            docker,
            timeout,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.containerd.is_none() && self.crio.is_none() && self.docker.is_empty()
    }

    /// Asks the hinted runtime first, then the others (a bare id under a custom cgroup parent
    /// can belong to any of them); the first that knows the id wins.
    pub(crate) async fn lookup(&self, req: &Request) -> Answer {
        let mut order = vec![Runtime::Containerd, Runtime::CriO, Runtime::Docker];
        if let Some(i) = order.iter().position(|r| *r == req.hint) {
            let r = order.remove(i);
            order.insert(0, r);
        }
        let mut all_answered = true;
        let mut any_answered = false;
        for rt in order {
            if rt == Runtime::Docker {
                // Every dockerd: the first that knows the id answers.
                for c in &self.docker {
                    match self.bounded(c.inspect(&req.id)).await {
                        Ok(Some(meta)) => return Answer::Found(meta.into()),
                        Ok(None) => any_answered = true,
                        Err(RuntimeError::NoSocket(_)) => {}
                        Err(e) => {
                            debug!(id = %req.id, runtime = "docker", error = %e, "runtime lookup failed");
                            all_answered = false;
                        }
                    }
                }
                continue;
            }
            let r = match rt {
                Runtime::Containerd => match &self.containerd {
                    Some(c) => {
                        self.bounded(c.inspect(&req.id, req.parent.as_deref()))
                            .await
                    }
                    None => continue,
                },
                Runtime::CriO => match &self.crio {
                    Some(c) => self.bounded(c.inspect(&req.id)).await,
                    None => continue,
                },
                Runtime::Docker | Runtime::Podman | Runtime::Unknown => continue,
            };
            match r {
                Ok(Some(meta)) => return Answer::Found(meta.into()),
                Ok(None) => any_answered = true,
                // A missing socket means "this runtime is not on this host": not a failure.
                Err(RuntimeError::NoSocket(_)) => {}
                Err(e) => {
                    debug!(id = %req.id, runtime = rt.as_str(), error = %e, "runtime lookup failed");
                    all_answered = false;
                }
            }
        }
        if any_answered && all_answered {
            Answer::NotFound
        } else {
            Answer::Unavailable
        }
    }

    /// The Docker network with this id prefix, from the first dockerd that has one.
    pub(crate) async fn docker_network(&self, prefix: &str) -> Option<super::NetworkInfo> {
        for c in &self.docker {
            match tokio::time::timeout(self.timeout, c.network(prefix)).await {
                Ok(Ok(Some(n))) => return Some(n),
                Ok(Ok(None)) | Ok(Err(RuntimeError::NoSocket(_))) => {}
                Ok(Err(e)) => debug!(prefix, error = %e, "docker network lookup failed"),
                Err(_) => debug!(prefix, "docker network lookup timed out"),
            }
        }
        None
    }

    async fn bounded(
        &self,
        f: impl Future<Output = Result<Option<ContainerMeta>, RuntimeError>>,
    ) -> Result<Option<ContainerMeta>, RuntimeError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or(Err(RuntimeError::Timeout(self.timeout)))
    }
}
