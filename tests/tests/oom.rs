//! OOM kills end to end: real memcg OOMs in cgroups and runc containers, seen by a real
//! `fathom capture` with its programs loaded into the running kernel.

use std::{process::Command, time::Duration};

use fathom_tests::{
    FathomCapture, TestCgroup,
    cgroup::spawn_in_cgroup,
    cgroup::unique_root_name,
    progs::alloc_binary,
    require_root,
    runc::{OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, pod_uid},
    wait_until,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const EVENT: Duration = Duration::from_secs(30);
const PAGE: u64 = 4096;
/// Pages a CPU may hold as pre-charged stock (mm/memcontrol.c MEMCG_CHARGE_BATCH): when other
/// CPUs are busy, usage at kill time can sit that far below the limit (seen: 57 pages).
const MEMCG_CHARGE_BATCH: u64 = 64;

fn capture() -> FathomCapture {
    let mut f = FathomCapture::start(&[]);
    f.wait_ready(READY);
    f
}

fn is_oom_in(memcg_path: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["kind"] == "oom_kill" && v["memcg"]["path"] == memcg_path
}

#[test]
fn oom_in_a_64mib_cgroup_is_reported_once_with_limit_and_usage() {
    require_root!();
    let mut fathom = capture();
    let cg = TestCgroup::create(&format!("{}/job", unique_root_name()));
    cg.set_memory_limit(64 << 20);
    let mut cmd = Command::new(alloc_binary());
    cmd.arg("200");
    let mut child = spawn_in_cgroup(&cg, cmd);
    let pid = child.id();
    let status = child.wait().expect("wait alloc");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "alloc must be OOM-killed"
    );

    let path = format!("/{}", cg.rel_path());
    let ev = fathom
        .next_event(EVENT, is_oom_in(&path))
        .unwrap_or_else(|| panic!("no oom_kill event for {path}; stderr:\n{}", fathom.stderr()));
    assert_eq!(ev["victim"]["pid"], pid);
    assert_eq!(ev["victim"]["tgid"], pid);
    assert_eq!(ev["victim"]["comm"], "alloc");
    assert_eq!(ev["memcg"]["limit_bytes"], 64u64 << 20);
    assert_eq!(ev["memcg"]["id"], cg.memory_cgroup_id());
    let usage = ev["memcg"]["usage_bytes"].as_u64().unwrap();
    assert!(
        (64u64 << 20) - usage <= MEMCG_CHARGE_BATCH * PAGE && usage <= 64 << 20,
        "usage {usage} not within a charge batch of the limit"
    );
    if let Some(id) = cg.unified_cgroup_id() {
        assert_eq!(ev["victim"]["cgroup_id"], id);
        assert_eq!(ev["victim"]["cgroup_path"], path.as_str());
    }
    assert_eq!(ev["oom_domain"]["path"], path.as_str());
    assert_eq!(ev["oom_domain"]["scope"], "cgroup");
    // The victim's resident memory is about what it allocated before the limit hit.
    let anon = ev["rss_bytes"]["anon"].as_u64().unwrap();
    assert!(anon > 48 << 20 && anon <= 64 << 20, "anon rss {anon}");
    assert!(ev["total_vm_bytes"].as_u64().unwrap() >= anon);
    assert_eq!(ev["trigger"]["pid"], pid);
    assert!(time_is_rfc3339(&ev["time"]));

    // Exactly one: no second event for this cgroup.
    let extra = fathom.collect_for(Duration::from_secs(1));
    assert!(
        !extra.iter().any(is_oom_in(&path)),
        "more than one event: {extra:?}"
    );
    assert_eq!(cg.oom_kill_count(), 1);
}

fn time_is_rfc3339(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' && s.ends_with('Z')
}

#[test]
fn oom_in_a_runc_container_carries_its_kubernetes_cgroup_path() {
    require_root!();
    let mut fathom = capture();
    let (uid, id) = (pod_uid(), container_id_64hex());
    let path = kube_cgroups_path(&uid, &id);
    let bundle = OciBundle::new()
        .args(&["/alloc", "100"])
        .memory_limit(32 << 20)
        .cgroups_path(&path);
    let ctr = RuncContainer::run_detached(bundle, &format!("fathom-oom-{}", &id[..12]));
    let ev = fathom
        .next_event(EVENT, is_oom_in(&path))
        .unwrap_or_else(|| panic!("no oom_kill for {path}; stderr:\n{}", fathom.stderr()));
    assert_eq!(ev["memcg"]["limit_bytes"], 32u64 << 20);
    assert_eq!(ev["victim"]["comm"], "alloc");
    assert_eq!(ev["victim"]["cgroup_path"], path.as_str());
    assert_eq!(ev["oom_domain"]["path"], path.as_str());
    assert_eq!(ev["oom_domain"]["scope"], "container");
    assert_eq!(ev["container"]["id"], id.as_str());
    assert_eq!(ev["pod"]["uid"], uid.as_str());
    assert_eq!(ev["pod"]["qos"], "burstable");
    assert_eq!(ctr.oom_kill_count(), 1);
}

#[test]
fn oom_of_a_child_process_names_the_child_while_pid1_survives() {
    require_root!();
    let mut fathom = capture();
    let (uid, id) = (pod_uid(), container_id_64hex());
    let path = kube_cgroups_path(&uid, &id);
    let bundle = OciBundle::new()
        .args(&["/alloc", "100", "--fork-child"])
        .memory_limit(32 << 20)
        .cgroups_path(&path);
    let ctr = RuncContainer::run_detached(bundle, &format!("fathom-child-{}", &id[..12]));
    let pid1 = ctr.pid();
    let ev = fathom
        .next_event(EVENT, is_oom_in(&path))
        .unwrap_or_else(|| panic!("no oom_kill for {path}; stderr:\n{}", fathom.stderr()));
    let victim = ev["victim"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(victim, pid1, "the child, not PID 1, was killed");
    assert_eq!(ev["victim"]["comm"], "alloc");
    assert_eq!(ev["container"]["id"], id.as_str());
    assert!(
        wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
            !fathom_tests::pid_alive(victim)
        }),
        "victim {victim} still alive"
    );
    assert!(fathom_tests::pid_alive(pid1), "PID 1 must survive");
    assert_eq!(ctr.status(), "running");
}

#[test]
fn pod_limit_lower_than_the_container_limit_makes_the_pod_the_oom_domain() {
    require_root!();
    let mut fathom = capture();
    let (uid, id) = (pod_uid(), container_id_64hex());
    let path = kube_cgroups_path(&uid, &id);
    let pod_path = path.rsplit_once('/').unwrap().0.to_string();
    let pod = TestCgroup::create(pod_path.trim_start_matches('/'));
    pod.set_memory_limit(32 << 20);
    let bundle = OciBundle::new()
        .args(&["/alloc", "100"])
        .memory_limit(64 << 20)
        .cgroups_path(&path);
    let _ctr = RuncContainer::run_detached(bundle, &format!("fathom-pod-{}", &id[..12]));
    let ev = fathom
        .next_event(EVENT, is_oom_in(&path))
        .unwrap_or_else(|| panic!("no oom_kill for {path}; stderr:\n{}", fathom.stderr()));
    assert_eq!(
        ev["memcg"]["limit_bytes"],
        64u64 << 20,
        "the container's own limit"
    );
    assert_eq!(ev["oom_domain"]["path"], pod_path.as_str());
    assert_eq!(ev["oom_domain"]["scope"], "pod");
    assert_eq!(ev["oom_domain"]["limit_bytes"], 32u64 << 20);
    assert_eq!(ev["pod"]["uid"], uid.as_str());
}
