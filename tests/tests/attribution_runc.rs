//! Attribution of real OOM kills in runc containers placed in Kubernetes cgroup layouts
//! (cgroupfs and systemd drivers): the events a real `fathom capture` reports are fed to the
//! `Attributor`, which must name the right pod UID, QoS class and container id, resolve the
//! kernel's cgroup ids back to the paths, and map each container's netns to it.

use std::{collections::HashMap, path::Path, time::Duration};

use fathom::attribution::{AttributionConfig, Attributor, Hierarchy, Workload};
use fathom::container::{Qos, Runtime};
use fathom_tests::{
    FathomCapture, require_root,
    runc::{
        OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, kube_systemd_cgroups_path,
        pod_uid,
    },
    wait_until,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const READY: Duration = Duration::from_secs(30);
const EVENT: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn netns_inode(pid: u32) -> u32 {
    fathom_tests::inode_of(Path::new(&format!("/proc/{pid}/ns/net"))).expect("netns inode") as u32
}

fn pod_of(w: &Workload) -> (String, Option<Qos>) {
    let p = w.pod.as_ref().expect("pod");
    (p.uid.clone().expect("pod uid"), p.qos)
}

/// A kubepods path (cgroupfs or systemd driver) for a fresh pod and container.
fn kube_path(systemd: bool) -> (String, String, String) {
    let (uid, id) = (pod_uid(), container_id_64hex());
    let path = if systemd {
        kube_systemd_cgroups_path(&uid, &id)
    } else {
        kube_cgroups_path(&uid, &id)
    };
    (path, uid, id)
}

#[test]
fn runc_oom_events_in_kubepods_paths_name_pod_qos_and_container() {
    require_root!();
    let rt = runtime();
    let _g = rt.enter();
    let attr = Attributor::start(AttributionConfig::without_runtimes());
    let mut fathom = FathomCapture::start(&[]);
    fathom.wait_ready(READY);

    for systemd in [false, true] {
        let (path, uid, id) = kube_path(systemd);
        let c = RuncContainer::run_detached(
            OciBundle::new()
                .args(&["/alloc", "100", "--fork-child"])
                .memory_limit(32 * MIB)
                .cgroups_path(&path)
                .with_netns(true),
            &id,
        );
        let ev = fathom
            .next_event(EVENT, |v| {
                v["kind"] == "oom_kill" && v["memcg"]["id"] == c.memory_cgroup_id()
            })
            .unwrap_or_else(|| panic!("no oom_kill for {path}; stderr:\n{}", fathom.stderr()));

        // Path → workload, from the event's own memcg path.
        let ev_path = ev["memcg"]["path"].as_str().expect("memcg path");
        assert_eq!(ev_path, path);
        let w = attr.by_cgroup_path(ev_path);
        assert_eq!(pod_of(&w), (uid.clone(), Some(Qos::Burstable)), "{path}");
        let ctr = w.container.as_ref().expect("container");
        assert_eq!(ctr.id, id);
        let want_rt = if systemd {
            Runtime::Containerd
        } else {
            Runtime::Unknown
        };
        assert_eq!(ctr.runtime, want_rt, "{path}");
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["pod"]["qos"], "burstable");
        assert_eq!(json["container"]["id"], id.as_str());
        assert!(json["container"].get("name").is_none(), "{json}");

        // cgroup ids the kernel reported → the same paths.
        let memcg_id = ev["memcg"]["id"].as_u64().unwrap();
        assert_eq!(
            attr.by_cgroup_id(Hierarchy::Memory, memcg_id).as_deref(),
            Some(path.as_str())
        );
        if let Some(uid2) = c.unified_cgroup_id() {
            assert_eq!(
                attr.by_cgroup_id(Hierarchy::Unified, uid2).as_deref(),
                Some(path.as_str())
            );
            assert_eq!(ev["victim"]["cgroup_id"], uid2);
        }

        // The container's own netns → this container and pod.
        let ns = netns_inode(c.pid());
        rt.block_on(attr.rescan());
        let w = attr.by_netns(ns).expect("netns attributed");
        assert_eq!(
            w.container.as_ref().map(|c| c.id.as_str()),
            Some(id.as_str())
        );
        assert_eq!(pod_of(&w).0, uid);
        // The host's netns (ours) is never attributed.
        let host = fathom_tests::inode_of(Path::new("/proc/self/ns/net")).unwrap() as u32;
        assert_eq!(attr.by_netns(host), None);
        drop(c);
    }
    // Ids of removed cgroups do not resolve to stale paths once pruned.
    rt.block_on(attr.rescan());
    let s = attr.stats();
    assert_eq!(s.cgroup_ids, 0, "{s:?}");
}

/// Three containers in three pods (both drivers), OOM-killed three times each, the kills of a
/// round running concurrently: every event is attributed to the container it happened in.
#[test]
fn interleaved_repeated_ooms_have_no_cross_talk() {
    require_root!();
    let rt = runtime();
    let _g = rt.enter();
    let attr = Attributor::start(AttributionConfig::without_runtimes());
    let mut fathom = FathomCapture::start(&[]);
    fathom.wait_ready(READY);

    let specs: Vec<(String, String, String)> = [false, true, false].map(kube_path).into();
    let containers: Vec<RuncContainer> = specs
        .iter()
        .map(|(path, _, id)| {
            RuncContainer::run_detached(
                OciBundle::new()
                    // PID 1 stays small and alive; each exec'd allocator is the OOM victim.
                    .args(&["/alloc", "1", "--fork-child"])
                    .memory_limit(32 * MIB)
                    .cgroups_path(path)
                    .with_netns(true),
                id,
            )
        })
        .collect();
    for c in &containers {
        assert!(c.wait_stdout_line(Duration::from_secs(10)).is_some());
    }
    let by_memcg: HashMap<u64, usize> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.memory_cgroup_id(), i))
        .collect();

    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        std::thread::scope(|s| {
            for c in &containers {
                s.spawn(move || {
                    let o = c.exec(&["/alloc", "100"]);
                    assert!(!o.status.success(), "alloc survived in round {round}");
                });
            }
        });
    }
    for (i, c) in containers.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
                c.oom_kill_count() >= ROUNDS as u64
            }),
            "container {i}: {} OOM kills",
            c.oom_kill_count()
        );
    }

    let mut seen = [0usize; 3];
    let mut events: Vec<Value> = Vec::new();
    let deadline = std::time::Instant::now() + EVENT;
    while seen.iter().sum::<usize>() < 3 * ROUNDS && std::time::Instant::now() < deadline {
        let Some(ev) = fathom.next_event(Duration::from_secs(5), |v| {
            v["kind"] == "oom_kill"
                && v["memcg"]["id"]
                    .as_u64()
                    .is_some_and(|id| by_memcg.contains_key(&id))
        }) else {
            continue;
        };
        let i = by_memcg[&ev["memcg"]["id"].as_u64().unwrap()];
        seen[i] += 1;
        let (path, uid, id) = &specs[i];
        assert_eq!(ev["memcg"]["path"], path.as_str());
        let w = attr.by_cgroup_path(ev["memcg"]["path"].as_str().unwrap());
        assert_eq!(w.container.as_ref().unwrap().id, *id, "event {ev}");
        assert_eq!(pod_of(&w).0, *uid, "event {ev}");
        // The victim's v2 cgroup id resolves to the same container.
        if let Some(vid) = ev["victim"]["cgroup_id"].as_u64()
            && containers[i].unified_cgroup_id() == Some(vid)
        {
            let p = attr
                .by_cgroup_id(Hierarchy::Unified, vid)
                .expect("victim cgroup id");
            assert_eq!(attr.by_cgroup_path(&p).container.unwrap().id, *id);
        }
        events.push(ev);
    }
    assert_eq!(
        seen,
        [ROUNDS; 3],
        "events per container; stderr:\n{}",
        fathom.stderr()
    );

    // Each container's netns maps to it, and to no other.
    rt.block_on(attr.rescan());
    for (c, (_, uid, id)) in containers.iter().zip(&specs) {
        let w = attr
            .by_netns(netns_inode(c.pid()))
            .expect("netns attributed");
        assert_eq!(w.container.unwrap().id, *id);
        assert_eq!(w.pod.unwrap().uid.as_deref(), Some(uid.as_str()));
    }
}
