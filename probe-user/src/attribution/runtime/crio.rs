//! CRI-O's inspect HTTP API, served on the same unix socket as its CRI gRPC service
//! (`GET /containers/<id>`, the endpoint `crio-status` uses): container name and labels,
//! without needing the CRI protobufs.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tracing::debug;

use super::RuntimeError;
use crate::{attribution::workload::ContainerMeta, container::Runtime};

/// An inspect answer is a few KiB; anything far larger is not CRI-O.
const MAX_BODY: usize = 1 << 20;

/// The fields of CRI-O's `ContainerInfo` (internal/server/inspect.go) used here.
#[derive(Debug, Deserialize)]
struct ContainerInfo {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

pub(crate) struct CrioClient {
    socket: PathBuf,
}

impl CrioClient {
    pub(crate) fn new(socket: PathBuf) -> Self {
        CrioClient { socket }
    }

    /// One connection per request: CRI-O is asked once per container per cache TTL.
    pub(crate) async fn inspect(&self, id: &str) -> Result<Option<ContainerMeta>, RuntimeError> {
        if !self.socket.exists() {
            return Err(RuntimeError::NoSocket(self.socket.clone()));
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let err = |e: &dyn std::fmt::Display| RuntimeError::Crio(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| err(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(&e))?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "cri-o connection");
            }
        });
        let req = Request::get(format!("/containers/{id}"))
            .header(hyper::header::HOST, "crio")
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(&e))?;
        let resp = send.send_request(req).await.map_err(|e| err(&e));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                conn.abort();
                return Err(e);
            }
        };
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| err(&*e))?
            .to_bytes();
        conn.abort();
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            // CRI-O answers unknown ids with 500 "can't find the container with id …".
            s if s.is_server_error()
                && String::from_utf8_lossy(&body).contains("can't find the container") =>
            {
                return Ok(None);
            }
            s => return Err(RuntimeError::Crio(format!("HTTP {s}"))),
        }
        let info: ContainerInfo = serde_json::from_slice(&body).map_err(|e| err(&e))?;
        Ok(Some(ContainerMeta::from_labels(
            Runtime::CriO,
            |k| info.labels.get(k).map(String::as_str),
            info.name.as_deref(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A stand-in CRI-O answering one request with `status` and `body`.
    async fn serve_once(sock: PathBuf, status: &'static str, body: &'static str) {
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                req.starts_with("GET /containers/abc123 HTTP/1.1\r\n"),
                "{req}"
            );
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
    }

    #[tokio::test]
    async fn inspect_against_a_stand_in() {
        let dir = std::env::temp_dir().join(format!("fathom-crio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("crio.sock");
        let c = CrioClient::new(sock.clone());
        assert!(matches!(
            c.inspect("abc123").await,
            Err(RuntimeError::NoSocket(_))
        ));

        serve_once(
            sock.clone(),
            "200 OK",
            r#"{"name":"k8s_app_web-0_shop_uid_0","pid":42,"labels":{"io.kubernetes.container.name":"app","io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"u-1"}}"#,
        )
        .await;
        let m = c.inspect("abc123").await.unwrap().unwrap();
        assert_eq!(m.runtime, Runtime::CriO);
        assert_eq!(m.name.as_deref(), Some("app"));
        assert_eq!(m.pod_name.as_deref(), Some("web-0"));
        assert_eq!(m.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(m.pod_uid.as_deref(), Some("u-1"));

        std::fs::remove_file(&sock).unwrap();
        serve_once(
            sock.clone(),
            "500 Internal Server Error",
            "can't find the container with id abc123",
        )
        .await;
        assert_eq!(c.inspect("abc123").await.unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
