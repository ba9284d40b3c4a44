//! A real two-node Docker Swarm on this machine (platform.md, "Added 2026-12-03"): two dockerd
//! (docker.io 20.10), each in a network namespace of its own started with
//! `nsenter --net=/run/netns/NAME dockerd …`, joined by a veth underlay; `docker swarm init` on
//! node A, `docker swarm join` on node B; attachable overlay networks and global services
//! (`--endpoint-mode dnsrr`: there is no IPVS here) from the busybox-static test image
//! (`docker load`ed on both nodes).
//!
//! Both nodes live in namespaces the test made, so docker_gwbridge, the daemons' iptables
//! state (none: `--iptables=false`) and ip_forward are per-namespace and go with them. Each
//! daemon has a private data root, pidfile, socket and a non-default exec root (node B's is
//! named `run-b`, so its overlay namespaces are at `<dir>/run-b/netns/1-<id>`, a path fathom
//! must find by itself). Guards undo everything, also on failure: services and networks are
//! removed, both nodes leave the swarm, the daemons are stopped (their containerd and shims
//! killed, their mounts below the private directories unmounted, their cgroup parents
//! removed), then the namespaces and the veth are deleted.
//!
//! A swarm takes ~10 s to build: [`Swarm::shared`] hands out one per test binary while any
//! test holds it.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::dockerd::{Dockerd, DockerdOptions};
use crate::image::test_image;
use crate::{CGROUP_PREFIX, NetNs, Side, VethPair, run_checked, short_suffix, unique_suffix};

/// Underlay addresses of node A and node B on the veth (namespaces are private: no clash).
pub const UNDERLAY_A: &str = "10.213.0.1";
pub const UNDERLAY_B: &str = "10.213.0.2";

/// One swarm node: a dockerd inside its own network namespace.
#[derive(Debug)]
pub struct SwarmNode {
    /// Dropped before `ns`: the daemon stops before its namespace is deleted.
    pub dockerd: Dockerd,
    pub ns: NetNs,
    /// Underlay address (on the veth).
    pub addr: String,
    /// Swarm node id (`docker info --format {{.Swarm.NodeID}}`).
    pub node_id: String,
    /// The daemon's `--cgroup-parent`.
    pub cgroup_parent: String,
}

impl SwarmNode {
    fn start(ns: NetNs, addr: &str, exec_root_name: &str) -> Result<Self> {
        let cgroup_parent = format!("/{CGROUP_PREFIX}{}", unique_suffix());
        let dockerd = Dockerd::try_start_with(DockerdOptions {
            netns: Some(ns.path()),
            exec_root_name: Some(exec_root_name.to_string()),
            cgroup_parent: Some(cgroup_parent.clone()),
            extra_args: Vec::new(),
        })?;
        Ok(SwarmNode {
            dockerd,
            ns,
            addr: addr.to_string(),
            node_id: String::new(),
            cgroup_parent,
        })
    }

    /// The docker CLI for this node.
    pub fn docker(&self) -> Command {
        self.dockerd.docker()
    }

    /// Runs `docker <args>`, returning trimmed stdout; errors carry stderr.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let o = run_checked(self.docker().args(args))?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// The daemon's socket (for `fathom --docker-socket`).
    pub fn socket(&self) -> PathBuf {
        self.dockerd.socket()
    }

    /// Overlay namespace libnetwork made on this node for `net`: `<exec-root>/netns/1-<id[:10]>`.
    pub fn overlay_netns_path(&self, net: &OverlayNet<'_>) -> PathBuf {
        self.dockerd
            .exec_root()
            .join("netns")
            .join(format!("1-{}", &net.id[..10]))
    }
}

/// Two nodes, A the manager, B a worker.
#[derive(Debug)]
pub struct Swarm {
    pub a: SwarmNode,
    pub b: SwarmNode,
    /// The underlay; deleted with the namespaces anyway.
    veth: VethPair,
    /// The test image's tag, loaded on both nodes.
    pub image: String,
}

static SHARED: Mutex<Weak<Swarm>> = Mutex::new(Weak::new());

impl Swarm {
    /// Builds a swarm. Panics (after cleaning up) on failure.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("Swarm::new: {e:#}"))
    }

    /// The swarm of this test binary: built by the first caller, shared while any caller
    /// holds it, torn down when the last one drops it.
    pub fn shared() -> Arc<Swarm> {
        let mut g = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.upgrade() {
            return s;
        }
        let s = Arc::new(Swarm::new());
        *g = Arc::downgrade(&s);
        s
    }

    pub fn try_new() -> Result<Self> {
        let ns_a = NetNs::try_new()?;
        let ns_b = NetNs::try_new()?;
        ns_a.lo_up();
        ns_b.lo_up();
        let veth = VethPair::try_new(Some(&ns_a), Some(&ns_b))?;
        veth.addr_up(Side::A, &format!("{UNDERLAY_A}/24"));
        veth.addr_up(Side::B, &format!("{UNDERLAY_B}/24"));
        // Node A's exec root has dockerd's own subdirectory name; node B's is another one on
        // purpose (overlay namespaces then live outside any well-known directory).
        let a = SwarmNode::start(ns_a, UNDERLAY_A, "exec")?;
        let b = match SwarmNode::start(ns_b, UNDERLAY_B, "run-b") {
            Ok(b) => b,
            Err(e) => {
                drop(a);
                return Err(e);
            }
        };
        let mut s = Swarm {
            a,
            b,
            veth,
            image: test_image().tag,
        };
        s.form().context("forming the swarm")?;
        Ok(s)
    }

    fn form(&mut self) -> Result<()> {
        let image = test_image();
        for n in [&self.a, &self.b] {
            run_checked(n.docker().arg("load").arg("--input").arg(&image.tar))?;
        }
        let a = UNDERLAY_A;
        self.a.docker_ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            a,
            "--listen-addr",
            &format!("{a}:2377"),
            "--data-path-addr",
            a,
        ])?;
        let token = self.a.docker_ok(&["swarm", "join-token", "-q", "worker"])?;
        let b = UNDERLAY_B;
        self.b.docker_ok(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            b,
            "--listen-addr",
            &format!("{b}:2377"),
            "--data-path-addr",
            b,
            &format!("{a}:2377"),
        ])?;
        for n in [&mut self.a, &mut self.b] {
            n.node_id = n.docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])?;
        }
        // The manager sees both nodes ready.
        let ok = crate::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            self.a
                .docker_ok(&["node", "ls", "--format", "{{.Status}}"])
                .is_ok_and(|s| s.lines().filter(|l| *l == "Ready").count() == 2)
        });
        if !ok {
            bail!("the swarm's two nodes never became Ready");
        }
        Ok(())
    }

    /// The node with this swarm node id.
    pub fn node(&self, node_id: &str) -> &SwarmNode {
        if self.a.node_id == node_id {
            &self.a
        } else {
            &self.b
        }
    }

    /// Creates an attachable overlay network. `driver_mtu` is passed as
    /// `com.docker.network.driver.mtu` (dockerd 20.10 gives the VXLAN device 50 less:
    /// 1550 → 1500, an MTU that does not fit a 1500 underlay); `None` = docker's default
    /// (VXLAN MTU 1450, which fits).
    pub fn overlay(&self, driver_mtu: Option<u32>) -> OverlayNet<'_> {
        self.try_overlay(driver_mtu)
            .unwrap_or_else(|e| panic!("overlay network: {e:#}"))
    }

    pub fn try_overlay(&self, driver_mtu: Option<u32>) -> Result<OverlayNet<'_>> {
        let name = format!("fathom-ov-{}", short_suffix());
        // A subnet per network so two tests' networks never overlap.
        let k = crate::random_u64() % 200 + 20;
        let subnet = format!("10.214.{k}.0/24");
        let mut args = vec![
            "network".to_string(),
            "create".into(),
            "--driver".into(),
            "overlay".into(),
            "--attachable".into(),
            "--subnet".into(),
            subnet,
        ];
        if let Some(m) = driver_mtu {
            args.push("--opt".into());
            args.push(format!("com.docker.network.driver.mtu={m}"));
        }
        args.push(name.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.a.docker_ok(&argv)?;
        Ok(OverlayNet {
            swarm: self,
            name,
            id,
        })
    }

    /// A global service (one task on each node) on `net`, running `sleep 3600` from the
    /// test image, waited for until both tasks run.
    pub fn global_service<'s>(&'s self, net: &OverlayNet<'s>) -> Service<'s> {
        self.try_global_service(net)
            .unwrap_or_else(|e| panic!("service: {e:#}"))
    }

    pub fn try_global_service<'s>(&'s self, net: &OverlayNet<'s>) -> Result<Service<'s>> {
        let name = format!("fathom-svc-{}", short_suffix());
        let id = self.a.docker_ok(&[
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--mode",
            "global",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            &net.name,
            "--limit-memory",
            "64m",
            "--restart-condition",
            "none",
            "--no-resolve-image",
            &self.image,
            "/bin/sleep",
            "3600",
        ])?;
        let mut svc = Service {
            swarm: self,
            name,
            id,
            tasks: Vec::new(),
        };
        let mut last = String::new();
        let ok = crate::wait_until(
            Duration::from_secs(60),
            Duration::from_millis(250),
            || match svc.find_tasks(net) {
                Ok(t) if t.len() == 2 => {
                    svc.tasks = t;
                    true
                }
                Ok(t) => {
                    last = format!("{} task(s) running", t.len());
                    false
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            },
        );
        if !ok {
            let ps = self
                .a
                .docker_ok(&["service", "ps", "--no-trunc", &svc.name])
                .unwrap_or_default();
            bail!(
                "service {} never ran on both nodes ({last}):\n{ps}",
                svc.name
            );
        }
        Ok(svc)
    }
}

impl Default for Swarm {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // Worker first, then the manager; errors are expected when a step already failed.
        for n in [&self.b, &self.a] {
            let _ = n
                .docker()
                .args(["swarm", "leave", "--force"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Fields drop next: node A (dockerd, then its namespace), node B, the veth.
        let _ = &self.veth;
    }
}

/// An overlay network of a [`Swarm`]; removed on drop.
#[derive(Debug)]
pub struct OverlayNet<'s> {
    swarm: &'s Swarm,
    pub name: String,
    /// Full network id (64 hex).
    pub id: String,
}

impl OverlayNet<'_> {
    /// The network's VXLAN device on `node` and its VNI, read in the node's overlay
    /// namespace (libnetwork creates it as `vx-<vni hex>-<id prefix>` in the node's namespace
    /// and renames it `vxlan0` when it moves it into the overlay namespace).
    pub fn vxlan_on(&self, node: &SwarmNode) -> Result<(String, u32)> {
        let ns = node.overlay_netns_path(self);
        let o = run_checked(
            Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .args(["ip", "-d", "-o", "link", "show", "type", "vxlan"]),
        )?;
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text
            .lines()
            .next()
            .with_context(|| format!("no vxlan device in {}", ns.display()))?;
        let dev = line
            .split(": ")
            .nth(1)
            .map(|d| d.split('@').next().unwrap_or(d).to_string())
            .with_context(|| format!("device name in {line}"))?;
        let vni = line
            .split_whitespace()
            .skip_while(|w| *w != "id")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("VNI in {line}"))?;
        Ok((dev, vni))
    }
}

impl Drop for OverlayNet<'_> {
    fn drop(&mut self) {
        let _ = self
            .swarm
            .a
            .docker()
            .args(["network", "rm", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One running task of a [`Service`]: its container on one node.
#[derive(Debug, Clone)]
pub struct Task {
    /// Swarm node id of the node it runs on.
    pub node_id: String,
    pub container_id: String,
    /// Container name (`<service>.<node id>.<task id>` for a global service).
    pub container_name: String,
    /// `com.docker.swarm.task.name`.
    pub task_name: String,
    /// Host pid of the container's init.
    pub pid: u32,
    /// Address on the overlay network.
    pub overlay_ip: String,
}

impl Task {
    /// The container's network namespace (`/proc/<pid>/ns/net`).
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    pub fn netns_inode(&self) -> u64 {
        crate::inode_of(&self.netns_path()).expect("stat task netns")
    }
}

/// A swarm service; removed on drop (its containers with it).
#[derive(Debug)]
pub struct Service<'s> {
    swarm: &'s Swarm,
    pub name: String,
    pub id: String,
    /// Both tasks, node A's first.
    pub tasks: Vec<Task>,
}

impl Service<'_> {
    fn find_tasks(&self, net: &OverlayNet<'_>) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        for n in [&self.swarm.a, &self.swarm.b] {
            let ids = n.docker_ok(&[
                "ps",
                "--quiet",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.swarm.service.id={}", self.id),
            ])?;
            for id in ids.split_whitespace() {
                let f = n.docker_ok(&[
                    "inspect",
                    "--format",
                    &format!(
                        "{{{{.State.Running}}}} {{{{.State.Pid}}}} {{{{.Name}}}} \
                         {{{{index .Config.Labels \"com.docker.swarm.task.name\"}}}} \
                         {{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                        net.name
                    ),
                    id,
                ])?;
                let v: Vec<&str> = f.split_whitespace().collect();
                if v.len() == 5 && v[0] == "true" {
                    out.push(Task {
                        node_id: n.node_id.clone(),
                        container_id: id.to_string(),
                        container_name: v[2].trim_start_matches('/').to_string(),
                        task_name: v[3].to_string(),
                        pid: v[1].parse().context("pid")?,
                        overlay_ip: v[4].to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The task on node A / node B.
    pub fn task_on(&self, node: &SwarmNode) -> &Task {
        self.tasks
            .iter()
            .find(|t| t.node_id == node.node_id)
            .expect("a task on every node")
    }
}

impl Drop for Service<'_> {
    fn drop(&mut self) {
        let _ = self
            .swarm
            .a
            .docker()
            .args(["service", "rm", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Wait until both nodes removed the containers, so the network can go next.
        for n in [&self.swarm.a, &self.swarm.b] {
            crate::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
                n.docker_ok(&[
                    "ps",
                    "--all",
                    "--quiet",
                    "--filter",
                    &format!("label=com.docker.swarm.service.id={}", self.id),
                ])
                .map(|s| s.is_empty())
                .unwrap_or(true)
            });
        }
    }
}

/// `ip -n <ns> <args>` output (for checks on a node's devices).
pub fn ip_in(ns: &NetNs, args: &[&str]) -> Output {
    let mut c = Command::new("ip");
    c.args(["-n", ns.name()]).args(args);
    run_checked(&mut c).unwrap_or_else(|e| panic!("{e:#}"))
}
