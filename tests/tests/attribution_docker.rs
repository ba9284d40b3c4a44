//! Names from a real dockerd (private daemon, image loaded from a tarball the test builds):
//! an OOM kill in a container started with `--cgroup-parent` is attributed to the container's
//! docker name, and the runtime is corrected from what the path suggests to docker.

use std::{path::Path, time::Duration};

use fathom::attribution::{AttributionConfig, Attributor};
use fathom::container::Runtime;
use fathom_tests::{
    FathomCapture,
    cgroup::unique_root_name,
    dockerd::{DockerRun, Dockerd},
    image::test_image,
    require_root, short_suffix,
};

const MIB: u64 = 1 << 20;

#[test]
fn docker_oom_event_gets_the_container_name() {
    require_root!();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let image = test_image();
    let dockerd = Dockerd::start();
    dockerd.load(&image);
    let attr = Attributor::start(AttributionConfig {
        docker_socket: Some(dockerd.socket()),
        ..AttributionConfig::without_runtimes()
    });
    let socket = dockerd.socket().display().to_string();
    let mut fathom = FathomCapture::start(&["--docker-socket", &socket, "--containerd-socket", ""]);
    fathom.wait_ready(Duration::from_secs(30));

    let name = format!("oomy-{}", short_suffix());
    let c = dockerd.run(DockerRun {
        name: name.clone(),
        image: image.tag.clone(),
        cgroup_parent: format!("/{}/docker-tests", unique_root_name()),
        memory_limit: 32 * MIB,
        labels: vec![("team".into(), "fathom".into())],
        args: ["/alloc", "100", "--fork-child"].map(String::from).into(),
    });
    let path = c.cgroup_path();
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
    // The event itself carries the name fathom asked dockerd for.
    assert_eq!(ev["container"]["name"], name.as_str(), "{ev}");
    assert_eq!(ev["container"]["runtime"], "docker");
    assert_eq!(ev["container"]["id"], c.id());
    let ev_path = ev["memcg"]["path"].as_str().unwrap();
    // From the path alone a bare id under an arbitrary parent looks like containerd's layout.
    assert_eq!(
        attr.by_cgroup_path(ev_path).container.unwrap().runtime,
        Runtime::Containerd
    );
    let w = rt.block_on(attr.resolve_cgroup_path(ev_path, Duration::from_secs(5)));
    let json = serde_json::to_value(&w).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"container": {"id": c.id(), "runtime": "docker", "name": name}})
    );

    // Its netns (--network none: its own) → the named container.
    let pid: u32 = c.inspect("{{.State.Pid}}").parse().expect("pid");
    let ns = fathom_tests::inode_of(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap() as u32;
    rt.block_on(attr.rescan());
    let w = attr.by_netns(ns).expect("netns attributed");
    assert_eq!(w.container.unwrap().name.as_deref(), Some(name.as_str()));
}
