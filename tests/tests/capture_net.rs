//! `fathom capture` on network events: drops attributed to the container whose namespace they
//! happened in, MTU mismatches with evidence, filters and the closing summary.

use std::{path::PathBuf, process::Command, time::Duration};

use fathom_tests::{
    FathomCapture, NetNs, OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path,
    overlay::{OVERLAY_B, Overlay},
    pod_uid, require_root,
    traffic::{in_netns_path, udp_send, udp_send_path},
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);

#[test]
fn a_drop_in_a_containers_namespace_is_attributed_to_that_container() {
    require_root!();
    let mut fathom = FathomCapture::start(&["--kind", "drop", "--reason", "NO_SOCKET"]);
    fathom.wait_ready(READY);
    let (uid, id) = (pod_uid(), container_id_64hex());
    let bundle = OciBundle::new()
        .args(&["sleep", "3600"])
        .cgroups_path(&kube_cgroups_path(&uid, &id))
        .with_netns(true);
    let ctr = RuncContainer::run_detached(bundle, &format!("fathom-net-{}", &id[..12]));
    let netns = PathBuf::from(format!("/proc/{}/ns/net", ctr.pid()));
    let inode = fathom_tests::inode_of(&netns).unwrap();
    in_netns_path(netns.clone(), || {
        let ok = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(ok.success());
    });
    // The attribution layer learns new namespaces by scanning; keep dropping until the
    // event carries the container (bounded).
    let mut found: Option<Value> = None;
    for _ in 0..40 {
        udp_send_path(netns.clone(), "127.0.0.1:9", 16, 1, None);
        if let Some(ev) = fathom.next_event(Duration::from_millis(500), |v| {
            v["netns"] == inode && v["container"]["id"] == id.as_str()
        }) {
            found = Some(ev);
            break;
        }
    }
    let ev = found.unwrap_or_else(|| {
        panic!(
            "no attributed drop; seen: {:?}\nstderr:\n{}",
            fathom.history(),
            fathom.stderr()
        )
    });
    assert_eq!(ev["kind"], "packet_drop");
    assert_eq!(ev["reason"], "NO_SOCKET");
    assert_eq!(ev["pod"]["uid"], uid.as_str());
    assert_eq!(ev["packet"]["dst_port"], 9);
    assert!(
        ev["location"].as_str().unwrap_or_default().contains("udp"),
        "{ev}"
    );
    // Every event so far in that namespace was a NO_SOCKET drop (the reason filter).
    assert!(
        fathom
            .history()
            .iter()
            .all(|v| v["kind"] == "packet_drop" && v["reason"] == "NO_SOCKET")
    );
}

/// The start says what is watched: the line after "ready" counts the namespaces and VXLAN
/// devices and names a mismatched overlay that existed before the start.
#[test]
fn the_start_names_what_it_watches_with_an_existing_mismatch() {
    require_root!();
    let o = Overlay::new(Some(1500));
    let mut fathom = FathomCapture::start(&["--kind", "vxlan", "--duration", "1s"]);
    fathom.wait_ready(READY);
    let want = format!("{} (netns {}): MTU 1500 > 1450 via", o.vxlan, o.a.inode());
    let ok = fathom_tests::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        fathom.stderr().contains(&want)
    });
    let stderr = fathom.stderr();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("fathom: watching "))
        .unwrap_or_else(|| panic!("no inventory line; stderr:\n{stderr}"));
    assert!(ok && line.contains(&want), "{line}\nstderr:\n{stderr}");
    assert!(line.contains("MTU mismatch"), "{line}");
    // At least the host's and the overlay's two namespaces.
    let n: usize = line["fathom: watching ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(n >= 3, "{line}");
}

#[test]
fn a_mismatched_overlay_is_reported_then_proven_by_traffic() {
    require_root!();
    let mut fathom = FathomCapture::start(&["--kind", "vxlan"]);
    fathom.wait_ready(READY);
    let o = Overlay::new(Some(1500));
    let netns = o.a.inode();
    let is_ours = |v: &Value| {
        v["kind"] == "mtu_mismatch" && v["netns"] == netns && v["device"] == o.vxlan.as_str()
    };
    let first = fathom
        .next_event(Duration::from_secs(10), is_ours)
        .unwrap_or_else(|| panic!("no mismatch event; stderr:\n{}", fathom.stderr()));
    assert_eq!(first["mtu"], 1500);
    assert_eq!(first["max_mtu"], 1450);
    assert_eq!(first["underlay_mtu"], 1500);
    assert_eq!(first["vni"], 4242);
    assert!(first.get("evidence").is_none());

    udp_send(
        &o.a,
        &format!("{OVERLAY_B}:5000"),
        1472,
        30,
        Some(libc::IP_PMTUDISC_PROBE),
    );
    let proof = fathom
        .next_event(Duration::from_secs(10), |v| {
            is_ours(v) && v["evidence"]["oversize_packets"].as_u64() >= Some(30)
        })
        .unwrap_or_else(|| panic!("no evidence; seen {:?}", fathom.history()));
    assert!(proof["evidence"]["oversize_packets_new"].as_u64().unwrap() > 0);
}

#[test]
fn the_summary_counts_exactly_what_the_kernel_dropped() {
    require_root!();
    let mut fathom = FathomCapture::start(&["--kind", "oom", "--summary"]);
    fathom.wait_ready(READY);
    let ns = NetNs::new();
    ns.lo_up();
    let before = ns.snmp();
    udp_send(&ns, "127.0.0.1:9", 32, 77, None);
    let after = ns.snmp();
    let status = fathom.stop();
    assert!(status.success());
    let events = fathom.collect_for(Duration::from_millis(200));
    let all: Vec<&Value> = fathom.history().iter().chain(events.iter()).collect();
    // --kind oom: no drop samples printed, but the summary has the exact counts.
    assert!(all.iter().all(|v| v["kind"] != "packet_drop"));
    let summary = all
        .iter()
        .find(|v| v["kind"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {all:?}"));
    let dropped: u64 = summary["drops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["netns"] == ns.inode() && d["reason"] == "NO_SOCKET")
        .map(|d| d["packets"].as_u64().unwrap())
        .sum();
    let no_ports = after["Udp.NoPorts"] - before.get("Udp.NoPorts").copied().unwrap_or(0);
    assert_eq!(no_ports, 77);
    assert_eq!(dropped, 77);
}

#[test]
fn a_drop_in_the_hosts_own_namespace_names_it_and_its_device() {
    // Since Linux 6.17 the initial namespace has a fixed inode below the dynamic range; its
    // drops must still carry it (and the device), not netns 0.
    require_root!();
    let host = fathom_tests::inode_of(std::path::Path::new("/proc/self/ns/net")).unwrap();
    let mut fathom = FathomCapture::start(&[
        "--kind",
        "drop",
        "--reason",
        "NO_SOCKET",
        "--netns",
        &host.to_string(),
    ]);
    fathom.wait_ready(READY);
    // A port nobody listens on: bind it, let it go, send to it (host loopback only).
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut found = None;
    for _ in 0..10 {
        let _ = sender.send_to(b"fathom", ("127.0.0.1", port));
        found = fathom.next_event(Duration::from_millis(500), |v| {
            v["packet"]["dst_port"] == port
        });
        if found.is_some() {
            break;
        }
    }
    let ev = found.unwrap_or_else(|| {
        panic!(
            "no drop to port {port} in the host namespace {host}; seen {:?}",
            fathom.history()
        )
    });
    assert_eq!(ev["netns"], host);
    assert_eq!(ev["device"], "lo");
    assert_eq!(ev["ifindex"], 1);
}
