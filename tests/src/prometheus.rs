//! A private Prometheus server (apt `prometheus`) for tests: listens on 127.0.0.1 only, keeps
//! its TSDB in a temporary directory, scrapes the given targets every second. Dropping the
//! guard stops it (SIGTERM, SIGKILL after 5 s) and removes the directory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::TempDir;
use crate::serve::http_get;

/// Job name of the scrape config.
pub const JOB: &str = "fathom";

/// A running `prometheus` with a 1 s scrape interval.
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

/// A free loopback port (bound and released: another process could take it in between,
/// which [`PrometheusServer::start`] survives by retrying).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What else the scrape config says: rule files, HTTPS with a CA, basic auth.
#[derive(Clone, Debug, Default)]
pub struct ScrapeOptions {
    /// Alerting / recording rule files (evaluated every second).
    pub rule_files: Vec<std::path::PathBuf>,
    /// Scrape over HTTPS, trusting this CA certificate (PEM).
    pub https_ca_file: Option<std::path::PathBuf>,
    /// The TLS server name to verify (the certificate's SAN).
    pub server_name: Option<String>,
    /// Basic-auth user and password.
    pub basic_auth: Option<(String, String)>,
}

impl ScrapeOptions {
    fn yaml(&self) -> String {
        let mut job = String::new();
        if let Some(ca) = &self.https_ca_file {
            job.push_str(&format!(
                "    scheme: https\n    tls_config:\n      ca_file: '{}'\n",
                ca.display()
            ));
            if let Some(n) = &self.server_name {
                job.push_str(&format!("      server_name: '{n}'\n"));
            }
        }
        if let Some((u, p)) = &self.basic_auth {
            job.push_str(&format!(
                "    basic_auth:\n      username: '{u}'\n      password: '{p}'\n"
            ));
        }
        job
    }

    fn rules_yaml(&self) -> String {
        if self.rule_files.is_empty() {
            return String::new();
        }
        let files: Vec<String> = self
            .rule_files
            .iter()
            .map(|f| format!("'{}'", f.display()))
            .collect();
        format!("rule_files: [{}]\n", files.join(", "))
    }
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (job [`JOB`]) and waits until it is ready.
    pub fn start(targets: &[SocketAddr]) -> Self {
        Self::start_with(targets, &ScrapeOptions::default())
    }

    /// As [`Self::start`], with rule files / TLS / basic auth.
    pub fn start_with(targets: &[SocketAddr], opts: &ScrapeOptions) -> Self {
        Self::try_start_with(targets, opts)
            .unwrap_or_else(|e| panic!("PrometheusServer::start: {e:#}"))
    }

    pub fn try_start(targets: &[SocketAddr]) -> Result<Self> {
        Self::try_start_with(targets, &ScrapeOptions::default())
    }

    pub fn try_start_with(targets: &[SocketAddr], opts: &ScrapeOptions) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start_once(targets, opts) {
                Ok(p) => return Ok(p),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    fn try_start_once(targets: &[SocketAddr], opts: &ScrapeOptions) -> Result<Self> {
        let dir = TempDir::new(&format!("fathom-prometheus-{}-", std::process::id()))?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             {}scrape_configs:\n  - job_name: {JOB}\n{}    static_configs:\n      - targets: [{}]\n",
            opts.rules_yaml(),
            opts.yaml(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running prometheus (apt install prometheus)")?;
        let mut p = PrometheusServer { child, addr, dir };
        p.wait_ready(Duration::from_secs(30))?;
        Ok(p)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http_get(self.addr, "/-/ready", &[], Duration::from_secs(1))
                && r.status == 200
            {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("prometheus exited ({st}):\n{}", self.log());
            }
            if Instant::now() >= deadline {
                bail!("prometheus not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<endpoint>?<query>` as JSON; fails unless `status` is `success`.
    pub fn api(&self, endpoint: &str, query: &str) -> Result<Value> {
        let r = http_get(
            self.addr,
            &format!("/api/v1/{endpoint}?{query}"),
            &[],
            Duration::from_secs(5),
        )?;
        let v: Value = serde_json::from_str(&r.body)
            .with_context(|| format!("HTTP {}: {}", r.status, r.body))?;
        if v["status"] != "success" {
            bail!("{endpoint}?{query}: {v}");
        }
        Ok(v)
    }

    /// Instant query: the `data.result` vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let v = self.api("query", &format!("query={}", url_encode(promql)))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `promql` until it returns at least one series (→ them) or `timeout` passes.
    pub fn wait_for_series(&self, promql: &str, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql)?;
            if !r.is_empty() {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                bail!("no series for {promql} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let exited = crate::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}--- end ---", self.log());
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("a_b{c=\"d\"}"), "a_b%7Bc%3D%22d%22%7D");
    }
}
