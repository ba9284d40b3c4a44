//! containerd's gRPC API (containerd-client): container labels, searched across namespaces.
//!
//! containerd keeps containers per namespace (`k8s.io` for the CRI plugin, `default` for ctr,
//! `moby` for dockerd's own containers, anything else for other clients) and a Get must name
//! one. The namespace a cgroupfs path names (`/<namespace>/<id>`) is tried first, then the
//! configured ones, then every other namespace the daemon lists (refreshed every 30 s).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use containerd_client::{
    services::v1::{
        GetContainerRequest, ListNamespacesRequest, containers_client::ContainersClient,
        namespaces_client::NamespacesClient,
    },
    tonic::{Code, Request, transport::Channel},
};
use tokio::sync::Mutex;

use super::RuntimeError;
use crate::{attribution::workload::ContainerMeta, container::Runtime};

/// gRPC metadata key naming the namespace of a request (containerd pkg/namespaces/grpc.go).
const NAMESPACE_HEADER: &str = "containerd-namespace";
const NAMESPACE_LIST_TTL: Duration = Duration::from_secs(30);

pub(crate) struct ContainerdClient {
    socket: PathBuf,
    /// Searched first, in order (after a namespace the path names).
    preferred: Vec<String>,
    /// Never searched: dockerd's `moby` namespace holds docker's containers without their
    /// names; Docker's own API answers for those.
    skip: Vec<String>,
    channel: Mutex<Option<Channel>>,
    namespaces: Mutex<Option<(Instant, Vec<String>)>>,
}

fn with_namespace<T>(msg: T, ns: &str) -> Option<Request<T>> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert(NAMESPACE_HEADER, ns.parse().ok()?);
    Some(req)
}

impl ContainerdClient {
    pub(crate) fn new(socket: PathBuf, preferred: Vec<String>, skip: Vec<String>) -> Self {
        ContainerdClient {
            socket,
            preferred,
            skip,
            channel: Mutex::new(None),
            namespaces: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, RuntimeError> {
        let mut ch = self.channel.lock().await;
        if let Some(c) = ch.as_ref() {
            return Ok(c.clone());
        }
        if !self.socket.exists() {
            return Err(RuntimeError::NoSocket(self.socket.clone()));
        }
        let c = containerd_client::connect(&self.socket).await?;
        *ch = Some(c.clone());
        Ok(c)
    }

    async fn reset(&self) {
        *self.channel.lock().await = None;
        *self.namespaces.lock().await = None;
    }

    async fn listed_namespaces(&self, ch: &Channel) -> Result<Vec<String>, RuntimeError> {
        let mut cached = self.namespaces.lock().await;
        if let Some((at, list)) = cached.as_ref()
            && at.elapsed() < NAMESPACE_LIST_TTL
        {
            return Ok(list.clone());
        }
        let resp = NamespacesClient::new(ch.clone())
            .list(ListNamespacesRequest::default())
            .await?;
        let list: Vec<String> = resp
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect();
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Namespaces to search, in order, without duplicates or skipped ones.
    fn search_order(&self, hint: Option<&str>, listed: &[String]) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        let hint = hint.filter(|h| listed.iter().any(|l| l == h));
        for ns in hint
            .into_iter()
            .chain(self.preferred.iter().map(String::as_str))
            .chain(listed.iter().map(String::as_str))
        {
            if !self.skip.iter().any(|s| s == ns) && !order.iter().any(|o| o == ns) {
                order.push(ns.to_string());
            }
        }
        order
    }

    pub(crate) async fn inspect(
        &self,
        id: &str,
        namespace_hint: Option<&str>,
    ) -> Result<Option<ContainerMeta>, RuntimeError> {
        let r = self.try_inspect(id, namespace_hint).await;
        if matches!(
            r,
            Err(RuntimeError::Containerd(_) | RuntimeError::ContainerdConnect(_))
        ) {
            self.reset().await;
        }
        r
    }

    async fn try_inspect(
        &self,
        id: &str,
        namespace_hint: Option<&str>,
    ) -> Result<Option<ContainerMeta>, RuntimeError> {
        let ch = self.channel().await?;
        let listed = self.listed_namespaces(&ch).await?;
        let mut client = ContainersClient::new(ch);
        for ns in self.search_order(namespace_hint, &listed) {
            let Some(req) = with_namespace(GetContainerRequest { id: id.to_string() }, &ns) else {
                continue;
            };
            match client.get(req).await {
                Ok(resp) => {
                    let Some(c) = resp.into_inner().container else {
                        continue;
                    };
                    return Ok(Some(ContainerMeta::from_labels(
                        Runtime::Containerd,
                        |k| c.labels.get(k).map(String::as_str),
                        None,
                    )));
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_search_order() {
        let c = ContainerdClient::new(
            "/nonexistent".into(),
            vec!["k8s.io".into()],
            vec!["moby".into()],
        );
        let listed: Vec<String> = ["default", "moby", "k8s.io", "buildkit"]
            .map(String::from)
            .into();
        assert_eq!(
            c.search_order(Some("default"), &listed),
            ["default", "k8s.io", "buildkit"]
        );
        // A parent directory that is not a namespace is not asked about.
        assert_eq!(
            c.search_order(Some("fathom-test-1"), &listed),
            ["k8s.io", "default", "buildkit"]
        );
        assert_eq!(
            c.search_order(Some("moby"), &listed),
            ["k8s.io", "default", "buildkit"]
        );
    }
}
