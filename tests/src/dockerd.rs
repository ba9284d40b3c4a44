//! A private dockerd for tests (own data root, exec root, socket and pidfile in a temp dir;
//! no iptables, no bridge, no ip_forward change) and containers run in it, each behind a guard.
//!
//! dockerd starts its own containerd below the exec root; dropping [`Dockerd`] stops both,
//! kills any shim left, unmounts what is still mounted below the directory and removes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cgroup::{ClaimedPath, all_hierarchy_roots, kill_cgroup_tree};
use crate::containerd::{HostPaths, kill_processes_mentioning, memcg_oom_kills, unmount_below};
use crate::image::TestImage;
use crate::{CgroupLayout, TempDir, run_checked, wait_until};

/// A dockerd with private directories and socket.
#[derive(Debug)]
pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
    host_paths: HostPaths,
    exec_root: PathBuf,
    /// The daemon's `--cgroup-parent` in every hierarchy (containers of services go there).
    cgroup_claims: Vec<ClaimedPath>,
}

/// How to start a [`Dockerd`]; `Default` = in the current network namespace, exec root
/// `<dir>/exec`, docker's default cgroup parent.
#[derive(Debug, Clone, Default)]
pub struct DockerdOptions {
    /// An nsfs path (`/run/netns/NAME`): the daemon runs in that network namespace.
    pub netns: Option<PathBuf>,
    /// Name of the exec root below the daemon's private directory (default `exec`).
    pub exec_root_name: Option<String>,
    /// Daemon-wide `--cgroup-parent` (absolute, should start with `fathom-test-<sfx>`);
    /// claimed before start and removed (processes killed) on drop.
    pub cgroup_parent: Option<String>,
    pub extra_args: Vec<String>,
}

impl Dockerd {
    /// Starts dockerd and waits until `docker version` answers. Panics on failure.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("Dockerd::start: {e:#}"))
    }

    pub fn try_start() -> Result<Self> {
        Self::try_start_with(DockerdOptions::default())
    }

    /// Starts a dockerd as `opts` say (in a network namespace, with its own exec root, cgroup
    /// parent and extra flags) and waits until `docker version` answers.
    pub fn try_start_with(opts: DockerdOptions) -> Result<Self> {
        let host_paths = HostPaths::absent(&[
            "/etc/docker",
            "/etc/docker/key.json",
            "/run/docker",
            "/run/docker/plugins",
            "/run/containerd",
            "/run/containerd/s",
        ]);
        let dir = TempDir::new(&format!("fathom-dockerd-{}-", std::process::id()))?;
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}\n")?;
        std::fs::create_dir_all(d.join("cli"))?;
        let exec_root = d.join(opts.exec_root_name.as_deref().unwrap_or("exec"));
        let mut cgroup_claims = Vec::new();
        if let Some(parent) = &opts.cgroup_parent {
            assert!(parent.starts_with('/'), "cgroup parent must be absolute");
            for r in all_hierarchy_roots() {
                cgroup_claims.push(ClaimedPath::claim(&r, parent)?);
            }
        }
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        // `nsenter --net` joins only the network namespace (`ip netns exec` would remount
        // /sys, and dockerd then dies with "Devices cgroup isn't mounted", platform.md).
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("dockerd");
                c
            }
            None => Command::new("dockerd"),
        };
        cmd.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--host")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            // An empty config file: never read /etc/docker/daemon.json of the host.
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            // Leave the host's firewall, bridges and forwarding alone.
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"]);
        if let Some(parent) = &opts.cgroup_parent {
            cmd.args(["--cgroup-parent", parent]);
        }
        let child = cmd
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd (apt install docker.io)")?;
        let mut dk = Dockerd {
            dir,
            child: Some(child),
            host_paths,
            exec_root,
            cgroup_claims,
        };
        let ready = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            dk.socket().exists()
                && dk
                    .docker()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        });
        if !ready {
            let log = dk.log();
            dk.stop();
            bail!("dockerd did not come up in 60 s; log:\n{log}");
        }
        Ok(dk)
    }

    /// The daemon's `--exec-root` (overlay namespaces are bind-mounted in `<it>/netns/`).
    pub fn exec_root(&self) -> &Path {
        &self.exec_root
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The docker CLI pointed at this daemon (its config dir private too).
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .stdin(Stdio::null());
        c
    }

    /// `docker load` of a docker-archive tarball.
    pub fn load(&self, image: &TestImage) {
        run_checked(self.docker().arg("load").arg("--input").arg(&image.tar))
            .unwrap_or_else(|e| panic!("docker load: {e:#}"));
    }

    /// `docker run --detach` of `spec`. Panics on failure (after cleaning up).
    pub fn run(&self, spec: DockerRun) -> DockerContainer<'_> {
        self.try_run(spec)
            .unwrap_or_else(|e| panic!("docker run: {e:#}"))
    }

    pub fn try_run(&self, spec: DockerRun) -> Result<DockerContainer<'_>> {
        self.try_run_with_options(spec, &[])
    }

    /// `docker run --detach` of `spec` with more `docker run` options (`--cap-add …`,
    /// `--mount …`), placed after the ones `spec` makes and before the image.
    pub fn try_run_with_options(
        &self,
        spec: DockerRun,
        options: &[String],
    ) -> Result<DockerContainer<'_>> {
        let parent = spec.cgroup_parent.clone();
        assert!(
            parent.starts_with('/'),
            "cgroup parent must be absolute: {parent}"
        );
        // Claim the parent in every hierarchy before dockerd creates `<parent>/<id>`, so the
        // guard removes exactly what did not exist before.
        let mut claims = Vec::new();
        for r in all_hierarchy_roots() {
            claims.push(ClaimedPath::claim(&r, &parent)?);
        }
        let mut c = DockerContainer {
            daemon: self,
            name: spec.name.clone(),
            id: String::new(),
            cgroup_parent: parent.clone(),
            claims,
        };
        let mut cmd = self.docker();
        cmd.args(["run", "--detach", "--name", &spec.name])
            .args(["--cgroup-parent", &parent])
            .args(["--memory", &spec.memory_limit.to_string()])
            .args(["--memory-swap", &spec.memory_limit.to_string()])
            // Own, empty network namespace (only lo): nothing touches the host network.
            .args(["--network", "none"]);
        for (k, v) in &spec.labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        cmd.args(options);
        cmd.arg(&spec.image).args(&spec.args);
        let out = run_checked(&mut cmd)?;
        c.id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(c)
    }

    /// Stops dockerd (SIGTERM, SIGKILL after 20 s); its containerd goes with it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let done = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self
                .docker()
                .args(["ps", "--all", "--quiet"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = self
                    .docker()
                    .args(["rm", "--force", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.stop();
        kill_processes_mentioning(self.dir.path());
        for c in &self.cgroup_claims {
            if let Err(e) = kill_cgroup_tree(&c.leaf, Duration::from_secs(5)) {
                eprintln!("fathom-tests: dockerd cgroup parent: {e:#}");
            }
        }
        for c in &mut self.cgroup_claims {
            c.release();
        }
        unmount_below(self.dir.path());
        self.host_paths.remove();
        if std::thread::panicking() {
            eprintln!("--- dockerd log (tail) ---");
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
            eprintln!("--- end ---");
        }
    }
}

/// What to run with `docker run`.
#[derive(Debug, Clone)]
pub struct DockerRun {
    pub name: String,
    pub image: String,
    /// Absolute `--cgroup-parent`; should start with a unique `fathom-test-<sfx>`.
    pub cgroup_parent: String,
    pub memory_limit: u64,
    pub labels: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// A container in a [`Dockerd`]; removed (with its cgroups) on drop.
#[derive(Debug)]
pub struct DockerContainer<'a> {
    daemon: &'a Dockerd,
    name: String,
    id: String,
    cgroup_parent: String,
    claims: Vec<ClaimedPath>,
}

impl DockerContainer<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<cgroup parent>/<id>` (cgroupfs driver).
    pub fn cgroup_path(&self) -> String {
        format!("{}/{}", self.cgroup_parent, self.id)
    }

    pub fn memory_path(&self) -> PathBuf {
        CgroupLayout::get()
            .memory_root()
            .join(self.cgroup_path().trim_start_matches('/'))
    }

    pub fn host_pids(&self) -> Vec<u32> {
        crate::cgroup::read_procs(&self.memory_path())
    }

    pub fn oom_kill_count(&self) -> u64 {
        memcg_oom_kills(&self.memory_path())
    }

    /// The daemon the container runs in.
    pub fn daemon(&self) -> &Dockerd {
        self.daemon
    }

    /// `docker logs` (stdout, then stderr).
    pub fn logs(&self) -> String {
        let o = self
            .daemon
            .docker()
            .args(["logs", &self.id])
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// `docker inspect --format <fmt>`.
    pub fn inspect(&self, format: &str) -> String {
        let o = self
            .daemon
            .docker()
            .args(["inspect", "--format", format, &self.id])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `docker exec --detach`.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.daemon
            .docker()
            .args(["exec", "--detach", &self.id])
            .args(args)
            .output()
            .expect("spawning docker exec")
    }
}

impl Drop for DockerContainer<'_> {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = self
                .daemon
                .docker()
                .args(["rm", "--force", &self.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for c in &self.claims {
            if let Err(e) = kill_cgroup_tree(&c.leaf, Duration::from_secs(5)) {
                eprintln!("fathom-tests: docker container {}: {e:#}", self.name);
            }
        }
        for c in &mut self.claims {
            c.release();
        }
    }
}
