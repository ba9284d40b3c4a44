//! cgroup path → container and Kubernetes pod, for the layouts of the common runtimes and both
//! cgroup drivers (cgroupfs and systemd). Pure string logic: never fails, never panics; an
//! unknown layout simply yields no container / pod and the path itself stays the identity.
//!
//! Layouts recognised (the Kubernetes part may sit below any prefix, e.g. a kind node's own
//! cgroup):
//! - cgroupfs:  `/kubepods[/burstable|/besteffort]/pod<uid>/<container>`
//! - systemd:   `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/<container>`,
//!   also with the kubelet's `--cgroup-root` prefix (`/kubelet.slice/kubelet-kubepods.slice/…`)
//! - containers: `<64-hex>` (raw, cgroupfs), `docker-<id>.scope`, `cri-containerd-<id>.scope`,
//!   `crio-<id>.scope`, `libpod-<id>.scope`, `/docker/<id>`, `/<containerd namespace>/<id>`,
//!   `libpod-<id>` (cgroupfs), podman's nested `libpod-<id>.scope/container` and nerdctl's
//!   `nerdctl-<id>.scope`.
//!
//! The runtime named here is what the *path* says; a bare id under an arbitrary parent is
//! reported as containerd (its `/<namespace>/<id>` layout) but may belong to any runtime run
//! with a custom cgroup parent. [`crate::attribution`] asks the runtimes and corrects it.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A bare id under a Kubernetes pod (cgroupfs driver): the runtime is not in the path.
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    pub runtime: Runtime,
    /// Index of the path component that names the container.
    pub component: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Pod UID with dashes (systemd's underscores converted back).
    pub uid: String,
    pub qos: Qos,
    /// Index of the path component that names the pod.
    pub component: usize,
}

/// What a cgroup path says about its workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub container: Option<ContainerRef>,
    pub pod: Option<PodRef>,
}

/// How much of a workload a cgroup is: used for `oom_domain.scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Container,
    Pod,
    Cgroup,
    Host,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Container => "container",
            Scope::Pod => "pod",
            Scope::Cgroup => "cgroup",
            Scope::Host => "host",
        }
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<prefix><64-hex>[.scope]` → the id.
fn strip_id<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    let rest = rest.strip_suffix(".scope").unwrap_or(rest);
    is_hex_id(rest).then_some(rest)
}

fn container_in(name: &str, parent: Option<&str>) -> Option<(String, Runtime)> {
    const PREFIXED: [(&str, Runtime); 6] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
        ("containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
    ];
    for (prefix, runtime) in PREFIXED {
        if let Some(id) = strip_id(name, prefix) {
            return Some((id.to_string(), runtime));
        }
    }
    if is_hex_id(name) {
        let runtime = match parent {
            Some("docker") => Runtime::Docker,
            Some(p) if p.starts_with("pod") || p.ends_with(".slice") => Runtime::Unknown,
            Some("libpod_parent") => Runtime::Podman,
            // containerd's cgroupfs layout without Kubernetes: /<namespace>/<id>.
            Some(_) => Runtime::Containerd,
            None => Runtime::Unknown,
        };
        return Some((name.to_string(), runtime));
    }
    None
}

/// `pod<uid>` (cgroupfs) or `<prefix>kubepods[-<qos>]-pod<uid_>.slice` (systemd) → (uid, qos
/// from the name when the systemd form carries it). The systemd prefix is empty by default and
/// `<root>-` when the kubelet runs with `--cgroup-root=/<root>` (kind nodes: `kubelet-`).
fn pod_in(name: &str) -> Option<(String, Option<Qos>)> {
    let (uid, qos) = if let Some(slice) = name.strip_suffix(".slice") {
        let i = slice.rfind("-pod")?;
        let (outer, uid) = (&slice[..i], &slice[i + "-pod".len()..]);
        let qos = if outer.ends_with("kubepods-burstable") {
            Qos::Burstable
        } else if outer.ends_with("kubepods-besteffort") {
            Qos::BestEffort
        } else if outer.ends_with("kubepods") {
            Qos::Guaranteed
        } else {
            return None;
        };
        (uid, Some(qos))
    } else {
        (name.strip_prefix("pod")?, None)
    };
    let uid = uid.replace('_', "-");
    let valid = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then_some((uid, qos))
}

fn qos_dir(name: &str) -> Option<Qos> {
    match name {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        n if n.ends_with("kubepods-burstable.slice") => Some(Qos::Burstable),
        n if n.ends_with("kubepods-besteffort.slice") => Some(Qos::BestEffort),
        _ => None,
    }
}

/// `kubepods` (cgroupfs) or `[<root>-]kubepods.slice` (systemd; see [`pod_in`]).
fn is_kubepods(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
}

/// Parses a cgroup path (absolute or relative to a hierarchy root).
pub fn parse(path: &str) -> Workload {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut w = Workload::default();

    // Kubernetes pod: the component after `kubepods[/qos]`.
    if let Some(k) = parts.iter().rposition(|p| is_kubepods(p)) {
        let mut i = k + 1;
        let mut qos = Qos::Guaranteed;
        if let Some(q) = parts.get(i).and_then(|p| qos_dir(p)) {
            qos = q;
            i += 1;
        }
        if let Some((uid, named_qos)) = parts.get(i).and_then(|p| pod_in(p)) {
            w.pod = Some(PodRef {
                uid,
                qos: named_qos.unwrap_or(qos),
                component: i,
            });
            if let Some(name) = parts.get(i + 1)
                && let Some((id, runtime)) = container_in(name, Some(parts[i]))
            {
                w.container = Some(ContainerRef {
                    id,
                    runtime,
                    component: i + 1,
                });
            }
            return w;
        }
    }

    // Plain containers: the deepest component naming one (podman nests `/container` below).
    for (i, name) in parts.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        if let Some((id, runtime)) = container_in(name, parent) {
            w.container = Some(ContainerRef {
                id,
                runtime,
                component: i,
            });
            break;
        }
    }
    w
}

/// Classifies a cgroup as the boundary of a container, of a pod, the host root, or another
/// cgroup.
pub fn scope_of(path: &str) -> Scope {
    let parts = path.split('/').filter(|p| !p.is_empty()).count();
    if parts == 0 {
        return Scope::Host;
    }
    let w = parse(path);
    match (&w.container, &w.pod) {
        (Some(c), _) if c.component + 1 == parts => Scope::Container,
        (None, Some(p)) if p.component + 1 == parts => Scope::Pod,
        _ => Scope::Cgroup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    #[test]
    fn kubepods_cgroupfs() {
        let w = parse(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        let p = w.pod.unwrap();
        assert_eq!((p.uid.as_str(), p.qos), (UID, Qos::Burstable));
        let c = w.container.unwrap();
        assert_eq!((c.id.as_str(), c.runtime), (ID, Runtime::Unknown));

        let w = parse(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(w.pod.unwrap().qos, Qos::Guaranteed);
        let w = parse(&format!("/kubepods/besteffort/pod{UID}"));
        assert_eq!(w.pod.unwrap().qos, Qos::BestEffort);
        assert!(w.container.is_none());
    }

    #[test]
    fn kubepods_systemd() {
        let uid_ = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        );
        let w = parse(&path);
        assert_eq!(w.pod.as_ref().unwrap().uid, UID);
        assert_eq!(w.pod.unwrap().qos, Qos::Burstable);
        assert_eq!(w.container.unwrap().runtime, Runtime::Containerd);
        assert_eq!(scope_of(&path), Scope::Container);

        let path = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope");
        let w = parse(&path);
        assert_eq!(w.pod.unwrap().qos, Qos::Guaranteed);
        assert_eq!(w.container.unwrap().runtime, Runtime::CriO);
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
        );
        assert_eq!(parse(&path).container.unwrap().runtime, Runtime::Docker);
    }

    #[test]
    fn kubepods_below_a_prefix() {
        let path = format!("/fathom-test-1/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(scope_of(&path), Scope::Container);
        let pod = format!("/fathom-test-1/kubepods/burstable/pod{UID}");
        assert_eq!(scope_of(&pod), Scope::Pod);
        assert_eq!(scope_of("/fathom-test-1/kubepods/burstable"), Scope::Cgroup);
    }

    #[test]
    fn plain_runtimes() {
        let c = parse(&format!("/docker/{ID}")).container.unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        let c = parse(&format!("/system.slice/docker-{ID}.scope"))
            .container
            .unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        let c = parse(&format!("/default/{ID}")).container.unwrap();
        assert_eq!(c.runtime, Runtime::Containerd);
        let c = parse(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
        ))
        .container
        .unwrap();
        assert_eq!((c.id.as_str(), c.runtime), (ID, Runtime::Podman));
        let c = parse(&format!("/machine.slice/libpod-{ID}.scope"))
            .container
            .unwrap();
        assert_eq!(c.runtime, Runtime::Podman);
    }

    #[test]
    fn unknown_layouts_yield_nothing() {
        for p in [
            "/",
            "",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/sshd.service",
            "/kubepods",
            "/kubepods/burstable/podX!/abc",
            "/docker/notanid",
            "/crio-conmon-xyz.scope",
        ] {
            let w = parse(p);
            assert!(w.container.is_none() && w.pod.is_none(), "{p}: {w:?}");
        }
        assert_eq!(scope_of("/"), Scope::Host);
        assert_eq!(scope_of("/system.slice"), Scope::Cgroup);
    }

    /// Paths as the runtimes create them (collected from real hosts: Docker 20.10-28 with both
    /// drivers, containerd 1.6/1.7 CRI, CRI-O 1.2x, podman 4 rootful/rootless, kind, k3s).
    #[test]
    fn real_samples_from_each_runtime() {
        let uid_ = UID.replace('-', "_");
        /// (path, (runtime, whether the id is `ID`) of the container, pod QoS).
        type Case = (String, Option<(Runtime, bool)>, Option<Qos>);
        let cases: Vec<Case> = vec![
            // Docker, cgroupfs and systemd drivers.
            (format!("/docker/{ID}"), Some((Runtime::Docker, true)), None),
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some((Runtime::Docker, true)),
                None,
            ),
            // containerd without Kubernetes (ctr: /<namespace>/<id>; nerdctl with systemd).
            (
                format!("/default/{ID}"),
                Some((Runtime::Containerd, true)),
                None,
            ),
            (
                format!("/system.slice/nerdctl-{ID}.scope"),
                Some((Runtime::Containerd, true)),
                None,
            ),
            // Kubernetes + containerd, cgroupfs (k3s, GKE COS) and systemd (kubeadm) drivers.
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                Some((Runtime::Unknown, true)),
                Some(Qos::BestEffort),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((Runtime::Containerd, true)),
                Some(Qos::BestEffort),
            ),
            // kind: the kubelet's --cgroup-root=/kubelet prefixes every systemd unit name.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((Runtime::Containerd, true)),
                Some(Qos::Burstable),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some((Runtime::Containerd, true)),
                Some(Qos::Guaranteed),
            ),
            // Old kind (cgroup v1): the node is itself a docker container.
            (
                format!(
                    "/docker/{ID}/kubepods/burstable/pod{UID}/{}",
                    ID.replace('0', "f")
                ),
                Some((Runtime::Unknown, false)),
                Some(Qos::Burstable),
            ),
            // CRI-O (systemd), its conmon scope (no container), cri-dockerd.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"
                ),
                Some((Runtime::CriO, true)),
                Some(Qos::Burstable),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{ID}.scope"
                ),
                None,
                Some(Qos::Burstable),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/docker-{ID}.scope"),
                Some((Runtime::Docker, true)),
                Some(Qos::Guaranteed),
            ),
            // podman: rootful systemd, rootless (nested /container), cgroupfs.
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Some((Runtime::Podman, true)),
                None,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Some((Runtime::Podman, true)),
                None,
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                Some((Runtime::Podman, true)),
                None,
            ),
        ];
        for (path, container, qos) in cases {
            let w = parse(&path);
            match (container, &w.container) {
                (Some((rt, same_id)), Some(c)) => {
                    assert_eq!(c.runtime, rt, "{path}");
                    assert_eq!(c.id == ID, same_id, "{path}");
                }
                (None, None) => {}
                (want, got) => panic!("{path}: want {want:?}, got {got:?}"),
            }
            assert_eq!(w.pod.as_ref().map(|p| p.qos), qos, "{path}");
            if let Some(p) = &w.pod {
                assert_eq!(p.uid, UID, "{path}");
            }
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for p in [
            "////",
            "/kubepods/",
            "/kubepods/pod",
            "/kubepods.slice/kubepods-.slice",
            "kubepods-pod.slice",
            "/\u{0}/\u{ffff}/kubepods/pod\u{e9}",
        ] {
            let _ = parse(p);
            let _ = scope_of(p);
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Pieces that real paths are made of, so random paths hit the interesting branches.
        fn component() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9_.@-]{0,12}",
                Just("kubepods".to_string()),
                Just("kubepods.slice".to_string()),
                Just("burstable".to_string()),
                Just("kubepods-besteffort.slice".to_string()),
                "pod[0-9a-f_-]{0,40}",
                "kubepods(-burstable|-besteffort)?-pod[0-9a-f_]{0,40}\\.slice",
                "(docker-|crio-|cri-containerd-|libpod-)?[0-9a-f]{60,66}(\\.scope)?",
                "\\PC{0,8}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Arbitrary bytes-as-text never panic, and whatever is found is well-formed.
            #[test]
            fn arbitrary_text_never_panics(p in "\\PC{0,200}") {
                let w = parse(&p);
                let _ = scope_of(&p);
                if let Some(c) = w.container { prop_assert_eq!(c.id.len(), 64); }
            }

            #[test]
            fn structured_paths_never_panic(parts in prop::collection::vec(component(), 0..8)) {
                let p = format!("/{}", parts.join("/"));
                let w = parse(&p);
                let n = p.split('/').filter(|c| !c.is_empty()).count();
                if let Some(c) = &w.container {
                    prop_assert!(c.component < n);
                    prop_assert!(is_hex_id(&c.id));
                }
                if let Some(pod) = &w.pod {
                    prop_assert!(pod.component < n);
                    prop_assert!(!pod.uid.contains('_'));
                }
                let _ = scope_of(&p);
            }

            /// Any prefix, any QoS, either driver: the pod UID, QoS and container id come back.
            #[test]
            fn kube_layouts_round_trip(
                prefix in prop::collection::vec("[a-z0-9-]{1,10}", 0..3),
                qos in prop_oneof![Just(Qos::Guaranteed), Just(Qos::Burstable), Just(Qos::BestEffort)],
                uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                id in "[0-9a-f]{64}",
                systemd in any::<bool>(),
            ) {
                let mut p = String::new();
                for c in &prefix { p.push('/'); p.push_str(c); }
                if systemd {
                    let u = uid.replace('-', "_");
                    match qos {
                        Qos::Guaranteed => p.push_str(&format!("/kubepods.slice/kubepods-pod{u}.slice")),
                        q => {
                            let q = q.as_str();
                            p.push_str(&format!("/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice"));
                        }
                    }
                    p.push_str(&format!("/cri-containerd-{id}.scope"));
                } else {
                    p.push_str("/kubepods");
                    if qos != Qos::Guaranteed { p.push('/'); p.push_str(qos.as_str()); }
                    p.push_str(&format!("/pod{uid}/{id}"));
                }
                let w = parse(&p);
                let pod = w.pod.expect("pod");
                prop_assert_eq!(&pod.uid, &uid);
                prop_assert_eq!(pod.qos, qos);
                prop_assert_eq!(w.container.expect("container").id, id);
                prop_assert_eq!(scope_of(&p), Scope::Container);
            }
        }
    }
}
