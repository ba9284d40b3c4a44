//! The container image of `cargo xtask image`, run by a real dockerd the way
//! deploy/kubernetes/fathom.yaml runs it: the DaemonSet's args, env, capabilities, security
//! options, memory limit and hostPath mounts are read from the manifest and turned into
//! `docker run` options. A real memcg OOM kill in a Kubernetes-style cgroup of the host must
//! then show on the containerized exporter's `/metrics` with the pod and container of the
//! victim: the daemon sees the host's cgroups and pids from inside its container.
//!
//! Two containers from the same image, both with exactly the manifest's `securityContext`
//! (`privileged: false`, the listed capabilities), run side by side:
//! - in a private cgroup namespace, which is what a Kubernetes runtime gives a
//!   non-privileged container on a cgroup v2 node;
//! - in the host's cgroup namespace, what it gives one on a cgroup v1 node (and a privileged
//!   one everywhere).
//!
//! `privileged: true` (the Helm chart's option) cannot be tried here: this VM's capability
//! bounding set lacks CAP_SYS_RESOURCE, and runc refuses to start a container that asks for
//! every capability ("unable to apply caps: operation not permitted").
//!
//! Both are in their own network namespace with only `lo` (the pod network without a CNI):
//! the test talks to them on 127.0.0.1 inside that namespace, so the manifest's
//! `--listen 0.0.0.0:9717` is used as it is and nothing is reachable from outside.
//!
//! Where this host or this dockerd cannot do what a kubelet does, the test says so and
//! adapts (printed as `deploy_image: …`):
//! - dockerd 20.10 does not know CAP_BPF / CAP_PERFMON: they are left out, CAP_SYS_ADMIN
//!   (in the manifest too) allows what they allow;
//! - mount propagation: this host's mounts are private (no systemd), so `HostToContainer`
//!   (rslave) cannot be asked for; the bind mounts are plain;
//! - `DirectoryOrCreate` hostPaths (runtime sockets, /run/netns) are bound from empty private
//!   directories: the test creates nothing on the host and pins no other test's netns;
//! - SELinux options are skipped (no SELinux here).
//!
//! One deviation on purpose: `--series-ttl` is shortened (5m → 2s) so that the test can watch
//! a series outlive its TTL while the victim's pod cgroup exists, and go once it is removed.
//! That is judged under the hostPath /sys/fs/cgroup mount, so it fails when the container
//! sees its own cgroup tree instead of the host's (the OOM labels alone would not: fathom
//! reads the victim's cgroup path from the kernel).
//!
//! The same tarball is also imported with `ctr image import` into a private containerd.
//!
//! The image is built from the binary the suite tests (`FATHOM_BIN`, else target/debug/fathom)
//! with the same code `cargo xtask image` runs on target/release/fathom.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use fathom_tests::{
    TempDir, TestCgroup,
    cgroup::{spawn_in_cgroup, unique_root_name},
    containerd::Containerd,
    dockerd::{DockerContainer, DockerRun, Dockerd},
    fathom_bin,
    image::TestImage,
    progs::alloc_binary,
    require_root,
    runc::{container_id_64hex, kube_cgroups_path, pod_uid},
    serve::{HttpResponse, Sample, find, http_get, parse_exposition, value_of},
    unique_suffix, workspace_dir,
};
use serde_json::Value;

const OOM_KILLS: &str = "fathom_oom_kills_total";
/// Loading the programs takes well under a second here; this only bounds a hung test.
const READY: Duration = Duration::from_secs(30);
const EVENT: Duration = Duration::from_secs(30);
/// `--series-ttl` in the test (the manifest says 5m).
const SERIES_TTL: Duration = Duration::from_secs(2);

/// The DaemonSet object of deploy/kubernetes/fathom.yaml, as JSON (PyYAML does the parsing).
fn manifest_daemonset() -> Value {
    let path = workspace_dir().join("deploy/kubernetes/fathom.yaml");
    let out = fathom_tests::run_checked(
        Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml\n\
                 json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
            ])
            .arg(&path),
    )
    .unwrap_or_else(|e| {
        panic!(
            "reading {} (apt-get install python3-yaml): {e:#}",
            path.display()
        )
    });
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("PyYAML's JSON");
    docs.into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes/fathom.yaml")
}

/// The cgroup namespace the container gets (the manifest cannot choose; the runtime does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Its own cgroup namespace (Kubernetes on cgroup v2 nodes).
    PrivateCgroupns,
    /// The host's cgroup namespace (Kubernetes on cgroup v1 nodes).
    HostCgroupns,
}

/// The manifest's fathom container as a docker run.
#[derive(Debug)]
struct DockerPod {
    args: Vec<String>,
    options: Vec<String>,
    memory_limit: u64,
    port: u16,
    grace: Duration,
    /// What could not be done as the manifest says, and why.
    notes: Vec<String>,
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `256Mi` → bytes (the binary suffixes and plain numbers).
fn quantity_bytes(q: &str) -> u64 {
    let (num, mult) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
        .unwrap_or((q, 1));
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("memory quantity {q:?}"))
        * mult
}

/// Translates the DaemonSet's pod spec into `docker run` options. `scratch` holds the empty
/// directories bound for `DirectoryOrCreate` volumes.
fn docker_pod(ds: &Value, variant: Variant, scratch: &Path, node: &str) -> DockerPod {
    let template = &ds["spec"]["template"];
    let pod = &template["spec"];
    let c = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "fathom"))
        .expect("a container named fathom");
    let mut options = Vec::new();
    let mut notes = Vec::new();
    let mut opt = |o: &[&str]| options.extend(o.iter().map(|s| s.to_string()));

    assert_eq!(pod["hostPID"], true, "fathom needs the host's pids");
    opt(&["--pid", "host"]);
    // The Dockerd helper runs every container with `--network none`: its own namespace.
    assert_ne!(
        pod["hostNetwork"], true,
        "this test runs the pod network (its own namespace) only"
    );
    let sc = &c["securityContext"];
    if let Some(uid) = sc["runAsUser"].as_u64() {
        opt(&["--user", &uid.to_string()]);
    }
    if sc["readOnlyRootFilesystem"] == true {
        opt(&["--read-only"]);
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        opt(&["--security-opt", "seccomp=unconfined"]);
    }
    let apparmor = &template["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/fathom"];
    if apparmor == "unconfined" || sc["appArmorProfile"]["type"] == "Unconfined" {
        opt(&["--security-opt", "apparmor=unconfined"]);
    }
    if !sc["seLinuxOptions"].is_null() {
        notes.push("seLinuxOptions skipped: no SELinux on this host".to_string());
    }
    assert_eq!(
        sc["privileged"], false,
        "the manifest is expected to be non-privileged (see the module comment)"
    );
    for cap in strs(&sc["capabilities"]["drop"]) {
        opt(&["--cap-drop", &cap]);
    }
    for cap in strs(&sc["capabilities"]["add"]) {
        opt(&["--cap-add", &cap]);
    }
    match variant {
        Variant::PrivateCgroupns => opt(&["--cgroupns", "private"]),
        Variant::HostCgroupns => opt(&["--cgroupns", "host"]),
    }

    let env = c["env"].as_array().cloned().unwrap_or_default();
    for e in env {
        let name = e["name"].as_str().expect("env name");
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            node.to_string()
        } else {
            panic!("env {e} is not supported by this test")
        };
        opt(&["--env", &format!("{name}={value}")]);
    }

    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().expect("volume name"), v))
        .collect();
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = m["name"].as_str().expect("mount name");
        let dst = m["mountPath"].as_str().expect("mountPath");
        let host = &volumes[name]["hostPath"];
        let path = host["path"].as_str().expect("only hostPath volumes");
        let src = match host["type"].as_str().unwrap_or("") {
            "Directory" => {
                assert!(Path::new(path).is_dir(), "hostPath {path} missing");
                path.to_string()
            }
            "DirectoryOrCreate" => {
                let d = scratch.join(name);
                std::fs::create_dir_all(&d).unwrap();
                notes.push(format!(
                    "{dst}: DirectoryOrCreate {path} bound from an empty private directory"
                ));
                d.display().to_string()
            }
            other => panic!("hostPath type {other:?} of {name} is not supported by this test"),
        };
        let mut spec = format!("type=bind,src={src},dst={dst}");
        if m["readOnly"] == true {
            spec.push_str(",readonly");
        }
        if let Some(p) = m["mountPropagation"].as_str() {
            notes.push(format!(
                "{dst}: mountPropagation {p} dropped (this host's mounts are private)"
            ));
        }
        opt(&["--mount", &spec]);
    }

    let mut args = strs(&c["args"]);
    let ttl = args
        .iter()
        .position(|a| a == "--series-ttl")
        .expect("the manifest sets --series-ttl");
    args[ttl + 1] = format!("{}s", SERIES_TTL.as_secs());
    notes.push(format!(
        "--series-ttl {} shortened to {}",
        c["args"][ttl + 1],
        args[ttl + 1]
    ));

    DockerPod {
        args,
        options,
        memory_limit: quantity_bytes(
            c["resources"]["limits"]["memory"]
                .as_str()
                .expect("a memory limit"),
        ),
        port: c["ports"][0]["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("containerPort"),
        grace: Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30)),
        notes,
    }
}

/// A fathom container and how to reach it (inside its own network namespace).
struct Fathom<'d> {
    variant: Variant,
    container: DockerContainer<'d>,
    pid: u32,
    port: u16,
    grace: Duration,
}

impl<'d> Fathom<'d> {
    /// Runs the pod. Capabilities this dockerd does not know (20.10: CAP_BPF, CAP_PERFMON) are
    /// left out when CAP_SYS_ADMIN, which allows the same, is in the set; anything else fails.
    fn start(
        dockerd: &'d Dockerd,
        image: &str,
        pod: DockerPod,
        variant: Variant,
        cgroup_parent: &str,
    ) -> Self {
        let DockerPod {
            args,
            mut options,
            memory_limit,
            port,
            grace,
            notes,
        } = pod;
        for n in &notes {
            eprintln!("deploy_image: {variant:?}: {n}");
        }
        let sys_admin = options.windows(2).any(|w| w == ["--cap-add", "SYS_ADMIN"]);
        let mut attempt = 0;
        let container = loop {
            attempt += 1;
            let spec = DockerRun {
                name: format!("fathom-{variant:?}-{}-{attempt}", unique_suffix()).to_lowercase(),
                image: image.to_string(),
                cgroup_parent: cgroup_parent.to_string(),
                memory_limit,
                labels: vec![("app.kubernetes.io/name".into(), "fathom".into())],
                args: args.clone(),
            };
            match dockerd.try_run_with_options(spec, &options) {
                Ok(c) => break c,
                Err(e) => {
                    let msg = format!("{e:#}");
                    let unknown = msg
                        .split("unknown capability: \"CAP_")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .map(str::to_string);
                    match unknown {
                        Some(cap) if sys_admin && attempt < 5 => {
                            eprintln!(
                                "deploy_image: {variant:?}: this dockerd does not know CAP_{cap}; \
                                 left out (CAP_SYS_ADMIN allows what it allows)"
                            );
                            let i = options
                                .windows(2)
                                .position(|w| w[0] == "--cap-add" && w[1] == cap)
                                .unwrap_or_else(|| panic!("{cap} not among the options: {msg}"));
                            options.drain(i..i + 2);
                        }
                        _ => panic!("docker run ({variant:?}): {msg}"),
                    }
                }
            }
        };
        let pid: u32 = container
            .inspect("{{.State.Pid}}")
            .parse()
            .unwrap_or_else(|_| panic!("no pid; logs:\n{}", container.logs()));
        Fathom {
            variant,
            container,
            pid,
            port,
            grace,
        }
    }

    /// `GET path` on 127.0.0.1:<containerPort> inside the container's network namespace
    /// (from a thread that joins it, so the test process stays where it is).
    fn get(&self, path: &str) -> Result<HttpResponse> {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.pid))
            .with_context(|| format!("netns of pid {}", self.pid))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a descriptor we own; it moves only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                http_get(addr, path, &[], Duration::from_secs(10))
            })
            .join()
            .expect("HTTP thread")
        })
    }

    fn running(&self) -> bool {
        self.container.inspect("{{.State.Running}}") == "true"
    }

    /// Waits until /readyz answers 200 (the DaemonSet's readinessProbe); returns its body.
    fn wait_ready(&self) -> String {
        let deadline = Instant::now() + READY;
        loop {
            match self.get("/readyz") {
                Ok(r) if r.status == 200 => return r.body,
                last => {
                    assert!(
                        self.running(),
                        "{:?}: fathom exited ({}, OOM-killed: {}); logs:\n{}",
                        self.variant,
                        self.container.inspect("{{.State.ExitCode}}"),
                        self.container.inspect("{{.State.OOMKilled}}"),
                        self.container.logs()
                    );
                    assert!(
                        Instant::now() < deadline,
                        "{:?}: not ready after {READY:?} ({last:?}); logs:\n{}",
                        self.variant,
                        self.container.logs()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn scrape(&self) -> String {
        let r = self
            .get("/metrics")
            .unwrap_or_else(|e| panic!("{:?}: GET /metrics: {e:#}", self.variant));
        assert_eq!(r.status, 200, "{:?}: {r:?}", self.variant);
        r.body
    }

    fn scrape_until(&self, pred: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + EVENT;
        loop {
            let text = self.scrape();
            let s = parse_exposition(&text);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: condition not met after {EVENT:?}; last scrape:\n{text}\nlogs:\n{}",
                self.variant,
                self.container.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `docker stop` (SIGTERM, SIGKILL after the pod's grace period): fathom must exit 0 on
    /// its own, well within the grace period.
    fn stop(&self) {
        let t = Instant::now();
        fathom_tests::run_checked(
            self.container
                .daemon()
                .docker()
                .args(["stop", "--time", &self.grace.as_secs().to_string()])
                .arg(self.container.id()),
        )
        .expect("docker stop");
        let took = t.elapsed();
        let code = self.container.inspect("{{.State.ExitCode}}");
        assert_eq!(
            code,
            "0",
            "{:?}: exit code after SIGTERM; logs:\n{}",
            self.variant,
            self.container.logs()
        );
        assert!(
            took < Duration::from_secs(5),
            "{:?}: stopping took {took:?}",
            self.variant
        );
    }
}

impl Drop for Fathom<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- fathom ({:?}) container logs ---\n{}--- end ---",
                self.variant,
                self.container.logs()
            );
        }
    }
}

#[test]
fn daemonset_image_sees_host_oom_kills_from_its_container() {
    require_root!();
    // Dropped last: the image and the directories bound into the containers.
    let scratch = TempDir::new("fathom-deploy-image-").expect("temp dir");
    let version = env!("CARGO_PKG_VERSION");
    let (labels, created) = xtask::image::checkout_metadata(&workspace_dir(), version);
    let image = xtask::image::write(
        &xtask::image::ImageSpec {
            binary: fathom_bin(),
            tag: format!("fathom-test/fathom:{version}"),
            labels,
            created,
        },
        &scratch.path().join("fathom-image.tar"),
    )
    .expect("building the image");
    let ds = manifest_daemonset();
    let loadable = TestImage {
        tar: image.path.clone(),
        tag: image.tag.clone(),
    };
    // containerd (what a kubelet runs images with) takes the same tarball.
    let listed = containerd_import(&loadable);
    assert!(listed.contains("linux/"), "no platform: {listed}");

    let dockerd = Dockerd::start();
    dockerd.load(&loadable);
    let config: Value = serde_json::from_str(&String::from_utf8_lossy(
        &fathom_tests::run_checked(dockerd.docker().args([
            "image",
            "inspect",
            "--format",
            "{{json .Config}}",
            &image.tag,
        ]))
        .expect("docker image inspect")
        .stdout,
    ))
    .expect("image config");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/fathom"]));
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        version
    );

    // Each container in a cgroup parent of its own, removed with it (a failed `docker run`
    // empties its parent: never share one).
    let root = unique_root_name();
    let node = format!("node-{}", unique_suffix());
    let pods: Vec<Fathom> = [Variant::PrivateCgroupns, Variant::HostCgroupns]
        .into_iter()
        .map(|v| {
            let pod = docker_pod(&ds, v, &scratch.path().join(format!("{v:?}")), &node);
            let parent = format!("/{root}/{v:?}").to_lowercase();
            Fathom::start(&dockerd, &image.tag, pod, v, &parent)
        })
        .collect();
    for f in &pods {
        let ready = f.wait_ready();
        assert!(ready.contains("programs: ok"), "{:?}: {ready}", f.variant);
        let health = f.get("/healthz").expect("GET /healthz");
        assert_eq!(health.status, 200, "{:?}: {health:?}", f.variant);
        let samples = parse_exposition(&f.scrape());
        let attached = find(&samples, "fathom_program_attached", &[]);
        assert!(
            attached
                .iter()
                .any(|s| s.labels["program"] == "oom_mark_victim"),
            "{:?}: {attached:?}",
            f.variant
        );
        for s in &attached {
            assert_eq!(s.value, 1.0, "{:?}: not attached: {s:?}", f.variant);
        }
        assert_eq!(
            value_of(&samples, "fathom_build_info", &[("node", node.as_str())]),
            Some(1.0),
            "{:?}: NODE_NAME from the downward API",
            f.variant
        );
    }

    // One real OOM kill in a Kubernetes-style cgroup of the host.
    let (uid, id) = (pod_uid(), container_id_64hex());
    let victim = TestCgroup::create(&kube_cgroups_path(&uid, &id));
    victim.set_memory_limit(32 << 20);
    let mut cmd = Command::new(alloc_binary());
    cmd.arg("100");
    let _ = spawn_in_cgroup(&victim, cmd).wait();
    assert_eq!(victim.oom_kill_count(), 1, "the kernel killed exactly once");

    let ours = [("pod", uid.as_str()), ("scope", "container")];
    for f in &pods {
        let samples = f.scrape_until(|s| value_of(s, OOM_KILLS, &ours).is_some_and(|v| v >= 1.0));
        let series = find(&samples, OOM_KILLS, &ours);
        assert_eq!(series.len(), 1, "{:?}: {series:?}", f.variant);
        let labels: Vec<(&str, &str)> = series[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("cgroup", ""),
                ("container", id.as_str()),
                ("namespace", ""),
                ("pod", uid.as_str()),
                ("scope", "container"),
            ],
            "{:?}: the victim's pod and container, as on the host",
            f.variant
        );
        assert_eq!(series[0].value, 1.0, "{:?}", f.variant);
    }

    // Past the TTL the series stays while the pod's cgroup exists on the host...
    std::thread::sleep(SERIES_TTL + Duration::from_millis(500));
    for f in &pods {
        let samples = parse_exposition(&f.scrape());
        assert_eq!(
            value_of(&samples, OOM_KILLS, &ours),
            Some(1.0),
            "{:?}: expired although the pod's cgroup exists: fathom does not see the host's \
             cgroup tree",
            f.variant
        );
    }
    // ...and goes once it is removed (the last change is older than the TTL already).
    drop(victim);
    for f in &pods {
        f.scrape_until(|s| find(s, OOM_KILLS, &ours).is_empty());
    }

    for f in &pods {
        f.stop();
    }
}

/// What `ctr image import` made of the tarball in a private containerd (the kubelet's `k8s.io`
/// namespace): `ctr images ls` line of the image.
fn containerd_import(image: &TestImage) -> String {
    let containerd = Containerd::start();
    containerd.import("k8s.io", image);
    let reference = image.containerd_ref();
    let out = fathom_tests::run_checked(containerd.ctr("k8s.io").args(["images", "ls"]))
        .expect("ctr images ls");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference.as_str()))
        .unwrap_or_else(|| panic!("{reference} not imported:\n{listing}"))
        .to_string();
    let check = fathom_tests::run_checked(containerd.ctr("k8s.io").args(["images", "check"]))
        .expect("ctr images check");
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(reference.as_str()) && l.contains("complete")),
        "{reference} incomplete:\n{check}"
    );
    line
}
