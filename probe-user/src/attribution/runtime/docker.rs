//! Docker Engine API (bollard) over the daemon's unix socket: container name and labels, and
//! the network behind an id prefix (libnetwork names an overlay network's namespace
//! `1-<first 10 characters of the network id>`).

use std::path::PathBuf;

use bollard::{API_DEFAULT_VERSION, Docker, errors::Error};
use tokio::sync::Mutex;

use super::RuntimeError;
use crate::{
    attribution::workload::{ContainerMeta, NetworkInfo},
    container::Runtime,
};

pub(crate) struct DockerClient {
    socket: PathBuf,
    /// Connected and version-negotiated client; reset on errors.
    conn: Mutex<Option<Docker>>,
}

impl DockerClient {
    pub(crate) fn new(socket: PathBuf) -> Self {
        DockerClient {
            socket,
            conn: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<Docker, RuntimeError> {
        let mut conn = self.conn.lock().await;
        if let Some(d) = conn.as_ref() {
            return Ok(d.clone());
        }
        if !self.socket.exists() {
            return Err(RuntimeError::NoSocket(self.socket.clone()));
        }
        let path = self.socket.to_string_lossy();
        // The request timeout is enforced by the caller; this one only bounds bollard's own.
        let d = Docker::connect_with_unix(&path, 5, API_DEFAULT_VERSION)?
            // Daemons refuse API versions newer than theirs (dockerd 20.10 speaks 1.41) and,
            // since Docker 29, older than 1.44: use the daemon's own version.
            .negotiate_version()
            .await?;
        *conn = Some(d.clone());
        Ok(d)
    }

    pub(crate) async fn inspect(&self, id: &str) -> Result<Option<ContainerMeta>, RuntimeError> {
        let d = self.client().await?;
        match d.inspect_container(id, None).await {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
                Ok(Some(ContainerMeta::from_labels(
                    Runtime::Docker,
                    |k| labels.and_then(|l| l.get(k)).map(String::as_str),
                    c.name.as_deref(),
                )))
            }
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => {
                *self.conn.lock().await = None;
                Err(e.into())
            }
        }
    }

    /// The network whose id starts with `prefix` (the daemon resolves unique id prefixes,
    /// `GET /networks/{prefix}`); `None` when this daemon has none.
    pub(crate) async fn network(&self, prefix: &str) -> Result<Option<NetworkInfo>, RuntimeError> {
        let d = self.client().await?;
        match d.inspect_network(prefix, None).await {
            Ok(n) => Ok(n
                .id
                .filter(|id| id.starts_with(prefix))
                .map(|id| NetworkInfo {
                    id,
                    name: n.name,
                    driver: n.driver,
                })),
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => {
                *self.conn.lock().await = None;
                Err(e.into())
            }
        }
    }
}
