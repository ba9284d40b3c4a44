//! Names from a real containerd (private daemon, image imported from a tarball the test
//! builds): an OOM kill in a container run with Kubernetes labels is attributed to its pod
//! name, namespace and container name; containers in other containerd namespaces are found;
//! a daemon that goes away leaves path-derived answers, no errors and no hangs.

use std::{path::Path, time::Duration};

use fathom::attribution::{AttributionConfig, Attributor};
use fathom::container::{Qos, Runtime};
use fathom_tests::{
    FathomCapture,
    cgroup::unique_root_name,
    containerd::{Containerd, CtrRun},
    image::test_image,
    require_root,
    runc::{container_id_64hex, pod_uid},
};

const MIB: u64 = 1 << 20;
const LOOKUP: Duration = Duration::from_secs(5);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn config(ctd: &Containerd) -> AttributionConfig {
    AttributionConfig {
        containerd_socket: Some(ctd.socket()),
        ..AttributionConfig::without_runtimes()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn containerd_oom_event_gets_pod_and_container_names_from_labels() {
    require_root!();
    let rt = runtime();
    let _g = rt.enter();
    let image = test_image();
    let ctd = Containerd::start();
    ctd.import("k8s.io", &image);
    let attr = Attributor::start(config(&ctd));
    let socket = ctd.socket().display().to_string();
    let mut fathom = FathomCapture::start(&["--containerd-socket", &socket, "--docker-socket", ""]);
    fathom.wait_ready(Duration::from_secs(30));

    let (uid, id) = (pod_uid(), container_id_64hex());
    let path = format!("/{}/kubepods/burstable/pod{uid}/{id}", unique_root_name());
    let c = ctd.run(CtrRun {
        namespace: "k8s.io".into(),
        image: image.containerd_ref(),
        id: id.clone(),
        cgroup: path.clone(),
        memory_limit: 32 * MIB,
        labels: labels(&[
            ("io.kubernetes.pod.name", "web-0"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", &uid),
            ("io.kubernetes.container.name", "alloc"),
        ]),
        args: ["/alloc", "100", "--fork-child"].map(String::from).into(),
    });
    let ev = fathom
        .next_event(Duration::from_secs(60), |v| {
            v["kind"] == "oom_kill" && v["memcg"]["path"] == path.as_str()
        })
        .unwrap_or_else(|| {
            panic!(
                "no oom_kill for {path} (kills {}); stderr:\n{}",
                c.oom_kill_count(),
                fathom.stderr()
            )
        });

    // The event itself carries the names fathom asked containerd for.
    assert_eq!(ev["container"]["name"], "alloc", "{ev}");
    assert_eq!(ev["container"]["runtime"], "containerd");
    assert_eq!(ev["pod"]["name"], "web-0");
    assert_eq!(ev["pod"]["namespace"], "shop");
    assert_eq!(ev["pod"]["uid"], uid.as_str());

    let w = rt.block_on(attr.resolve_cgroup_path(ev["memcg"]["path"].as_str().unwrap(), LOOKUP));
    let json = serde_json::to_value(&w).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "container": {"id": id, "runtime": "containerd", "name": "alloc"},
            "pod": {"uid": uid, "name": "web-0", "namespace": "shop", "qos": "burstable"}
        })
    );

    // The pod's own cgroup (an OOM domain at pod level) gets the names learnt from its
    // container.
    let pod_path = path.rsplit_once('/').unwrap().0;
    let pod = attr.by_cgroup_path(pod_path).pod.unwrap();
    assert_eq!(
        (pod.name.as_deref(), pod.namespace.as_deref(), pod.qos),
        (Some("web-0"), Some("shop"), Some(Qos::Burstable))
    );

    // The container's netns (ctr gives each container its own) → the named container.
    let pid = c.host_pids()[0];
    let ns = fathom_tests::inode_of(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap() as u32;
    rt.block_on(attr.rescan());
    let w = attr.by_netns(ns).expect("netns attributed");
    assert_eq!(w.container.unwrap().name.as_deref(), Some("alloc"));
    assert_eq!(w.pod.unwrap().name.as_deref(), Some("web-0"));
    let s = attr.stats();
    assert_eq!((s.lookups, s.lookups_found), (1, 1), "{s:?}");
}

/// A container in a namespace that is neither preferred nor named by the path is found by
/// listing namespaces; a plain `/<namespace>/<id>` layout is tried in that namespace first.
#[test]
fn containerd_other_namespaces_and_daemon_going_away() {
    require_root!();
    let rt = runtime();
    let _g = rt.enter();
    let image = test_image();
    let mut ctd = Containerd::start();
    let ns = format!("fathom-{}", fathom_tests::short_suffix());
    ctd.import(&ns, &image);
    let attr = Attributor::start(AttributionConfig {
        not_found_ttl: Duration::from_millis(200),
        unavailable_ttl: Duration::from_millis(200),
        ..config(&ctd)
    });

    let root = unique_root_name();
    let (id1, id2) = (container_id_64hex(), container_id_64hex());
    let run = |id: &str, cgroup: String, name: &str| CtrRun {
        namespace: ns.clone(),
        image: image.containerd_ref(),
        id: id.to_string(),
        cgroup,
        memory_limit: 32 * MIB,
        labels: labels(&[("nerdctl/name", name)]),
        args: ["/alloc", "1"].map(String::from).into(),
    };
    let c1 = ctd.run(run(&id1, format!("/{root}/{ns}/{id1}"), "first"));
    let c2 = ctd.run(run(&id2, format!("/{root}/custom/{id2}"), "second"));
    for (c, name) in [(&c1, "first"), (&c2, "second")] {
        let w = rt.block_on(attr.resolve_cgroup_path(c.cgroup_path(), LOOKUP));
        let ctr = w.container.unwrap();
        assert_eq!(
            (ctr.runtime, ctr.name.as_deref()),
            (Runtime::Containerd, Some(name))
        );
        assert!(w.pod.is_none());
    }

    // An id no runtime knows: negative answer, no name, quickly.
    let unknown = format!("/{root}/{ns}/{}", container_id_64hex());
    let w = rt.block_on(attr.resolve_cgroup_path(&unknown, LOOKUP));
    assert_eq!(w.container.unwrap().name, None);

    // The daemon goes away: cached names stay, new ids get path-derived answers, in time.
    drop((c1, c2));
    ctd.stop();
    let t = std::time::Instant::now();
    let other = format!("/{root}/{ns}/{}", container_id_64hex());
    let w = rt.block_on(attr.resolve_cgroup_path(&other, LOOKUP));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(w.container.unwrap().runtime, Runtime::Containerd);
    let w = attr.by_cgroup_path(&format!("/{root}/{ns}/{id1}"));
    assert_eq!(w.container.unwrap().name.as_deref(), Some("first"));
}
