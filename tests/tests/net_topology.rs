//! `fathom::net` against the real kernel: namespace discovery, links and VXLAN underlays over
//! netlink, MTU mismatch events, and per-namespace fragment-queue memory and snmp counters.
//!
//! Every test builds its own namespaces ("hosts") joined by a veth underlay, with a VXLAN on
//! top, behind guards; the only traffic sent stays inside those namespaces. Run as root
//! (skipped otherwise). Other tests' namespaces may come and go meanwhile: assertions only look
//! at this test's own.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fathom::net::fragmem::{read_fragmem, read_snmp};
use fathom::net::netns::run_in_each_netns;
use fathom::net::{
    NetnsHandle, Topology, TopologyEvent, TopologySnapshot, UnderlaySource, run_in_netns,
};
use fathom_tests::{NetNs, Side, VethPair, require_root, short_suffix};
use tokio::sync::broadcast;

/// Two namespaces joined by a veth (10.201.0.1/24 in `a`, 10.201.0.2/24 in `b`). The
/// addresses only exist inside these namespaces.
struct Hosts {
    // Field order = drop order: the veth goes before its namespaces.
    veth: VethPair,
    a: NetNs,
    b: NetNs,
}

impl Hosts {
    fn new() -> Self {
        let a = NetNs::new();
        let b = NetNs::new();
        a.lo_up();
        b.lo_up();
        let veth = VethPair::new(Some(&a), Some(&b));
        veth.addr_up(Side::A, "10.201.0.1/24");
        veth.addr_up(Side::B, "10.201.0.2/24");
        Hosts { veth, a, b }
    }

    fn ino(ns: &NetNs) -> u32 {
        u32::try_from(ns.inode()).expect("netns inode fits u32")
    }

    /// `ip -n a link add <name> type vxlan id <vni> <args…> dstport 4789` + up.
    fn vxlan_in_a(&self, vni: u32, args: &[&str]) -> String {
        let name = format!("vx{}", short_suffix());
        let vni = vni.to_string();
        let mut cmd = vec!["ip", "link", "add", &name, "type", "vxlan", "id", &vni];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&["dstport", "4789"]);
        self.a.exec_ok(&cmd);
        self.a.exec_ok(&["ip", "link", "set", &name, "up"]);
        name
    }

    /// A VXLAN the kernel sized correctly: bound to the veth with `dev` (MTU 1500 − 50).
    fn vxlan_with_dev(&self) -> String {
        let dev = self.veth.name(Side::A).to_string();
        self.vxlan_in_a(4242, &["remote", "10.201.0.2", "dev", &dev])
    }

    /// A VXLAN without `dev`: the kernel leaves its MTU at 1500 over a 1500 underlay.
    /// (Two VXLANs in one namespace need different VNIs or ports.)
    fn vxlan_without_dev(&self, vni: u32) -> String {
        self.vxlan_in_a(vni, &["remote", "10.201.0.2", "local", "10.201.0.1"])
    }
}

/// Waits until a published snapshot satisfies `pred`.
async fn wait_snapshot(
    topo: &Topology,
    timeout: Duration,
    mut pred: impl FnMut(&TopologySnapshot) -> bool,
) -> Option<Arc<TopologySnapshot>> {
    let mut rx = topo.watch();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = rx.borrow_and_update().clone();
        if pred(&s) {
            return Some(s);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return None,
        }
    }
}

/// Waits for an event satisfying `pred`; returns it and every event seen before it.
async fn wait_event(
    rx: &mut broadcast::Receiver<TopologyEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&TopologyEvent) -> bool,
) -> (Option<TopologyEvent>, Vec<TopologyEvent>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if pred(&e) => return (Some(e), seen),
            Ok(Ok(e)) => seen.push(e),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                panic!("event receiver lagged by {n}")
            }
            _ => return (None, seen),
        }
    }
}

fn mismatch_for(e: &TopologyEvent, netns: u32, device: &str) -> bool {
    matches!(e, TopologyEvent::MtuMismatch(m) if m.netns == netns && m.device == device)
}

fn ifindex_in(ns: &NetNs, dev: &str) -> u32 {
    let o = ns.exec_ok(&["ip", "-o", "link", "show", "dev", dev]);
    String::from_utf8_lossy(&o.stdout)
        .split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .expect("ifindex from ip -o link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sees_both_namespaces_the_vxlan_and_its_underlay() {
    require_root!();
    let h = Hosts::new();
    let vx = h.vxlan_with_dev();
    // A process inside b: its pid must be attributed to b.
    let mut sleeper = h.b.command(&["sleep", "30"]).spawn().expect("spawn sleep");
    let (ia, ib) = (Hosts::ino(&h.a), Hosts::ino(&h.b));
    let vx_ifindex = ifindex_in(&h.a, &vx);

    let topo = Topology::start();
    let snap = wait_snapshot(&topo, Duration::from_secs(5), |s| {
        s.vxlan(ia, vx_ifindex).is_some()
            && s.netns(ib).is_some_and(|n| n.pids.contains(&sleeper.id()))
    })
    .await;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let snap = snap.unwrap_or_else(|| panic!("vxlan / pids not seen: {:#?}", topo.snapshot()));

    let na = snap.netns(ia).expect("netns a");
    assert!(na.names.iter().any(|n| n == h.a.name()), "{na:?}");
    assert!(!na.is_host);
    assert!(snap.host_netns.is_some());
    assert!(snap.netns(snap.host_netns.unwrap()).unwrap().is_host);
    assert!(
        snap.netns(snap.host_netns.unwrap())
            .unwrap()
            .pids
            .contains(&std::process::id())
    );

    let v = snap.vxlan(ia, vx_ifindex).unwrap();
    assert_eq!(v.device, vx);
    assert_eq!(v.vni, 4242);
    assert_eq!(v.dst_port, 4789);
    assert_eq!(v.overhead, 50);
    assert_eq!(
        v.mtu, 1450,
        "kernel caps a vxlan created with dev at lower MTU - 50"
    );
    let u = v.underlay.as_ref().expect("underlay resolved");
    assert_eq!(u.name, h.veth.name(Side::A));
    assert_eq!(u.ifindex, h.veth.ifindex(Side::A));
    assert_eq!(u.netns, ia);
    assert_eq!(u.mtu, 1500);
    assert_eq!(u.source, UnderlaySource::Link);
    assert_eq!(v.max_mtu(), Some(1450));
    assert!(v.mismatch().is_none());
    assert!(
        !snap.mismatches.iter().any(|m| m.netns == ia),
        "{:?}",
        snap.mismatches
    );

    let vb = snap
        .link_by_name(ib, h.veth.name(Side::B))
        .expect("veth end in b");
    assert_eq!(vb.kind.as_deref(), Some("veth"));
    assert_eq!(vb.mtu, 1500);
    assert!(snap.link_by_name(ib, "lo").is_some());
    assert!(snap.link_by_name(ia, h.veth.name(Side::B)).is_none());

    let e = snap
        .vxlan_map_entries()
        .into_iter()
        .find(|e| e.netns_inode == ia && e.ifindex == vx_ifindex)
        .unwrap();
    assert_eq!((e.underlay_mtu, e.overhead, e.vni), (1500, 50, 4242));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_is_reported_within_3s_once_and_cleared() {
    require_root!();
    let topo = Topology::start();
    topo.ready().await.unwrap();
    let mut rx = topo.subscribe();

    let h = Hosts::new();
    let ia = Hosts::ino(&h.a);
    let created = Instant::now();
    let vx = h.vxlan_without_dev(4242);

    let (ev, _) = wait_event(&mut rx, Duration::from_secs(3), |e| {
        mismatch_for(e, ia, &vx)
    })
    .await;
    let Some(TopologyEvent::MtuMismatch(m)) = ev else {
        panic!(
            "no MtuMismatch within 3 s of creating {vx}; snapshot: {:#?}",
            topo.snapshot().vxlans
        );
    };
    eprintln!("mismatch reported {:?} after creation", created.elapsed());
    assert_eq!(m.vni, 4242);
    assert_eq!(m.mtu, 1500);
    assert_eq!(m.underlay, h.veth.name(Side::A));
    assert_eq!(m.underlay_mtu, 1500);
    assert_eq!(m.overhead, 50);
    assert_eq!(m.max_mtu, 1450);
    assert_eq!(m.ifindex, ifindex_in(&h.a, &vx));

    // The JSON body of a `mtu_mismatch` event.
    let j = serde_json::to_value(TopologyEvent::MtuMismatch(m.clone())).unwrap();
    assert_eq!(j["kind"], "mtu_mismatch");
    for k in [
        "netns",
        "device",
        "ifindex",
        "vni",
        "mtu",
        "underlay",
        "underlay_mtu",
        "overhead",
        "max_mtu",
    ] {
        assert!(j.get(k).is_some(), "{k} missing in {j}");
    }
    assert_eq!(j["device"], vx.as_str());
    assert_eq!(j["netns"], ia);

    // Found through the route to the remote (no `dev`).
    let snap = topo.snapshot();
    let v = snap.vxlan(ia, m.ifindex).unwrap();
    assert_eq!(v.underlay.as_ref().unwrap().source, UnderlaySource::Route);
    assert!(snap.mismatches.contains(&m));

    // Not repeated while nothing changes (two rescan periods).
    let (again, _) = wait_event(&mut rx, Duration::from_millis(4500), |e| {
        mismatch_for(e, ia, &vx)
    })
    .await;
    assert!(again.is_none(), "mismatch reported twice: {again:?}");

    // Fixing the MTU clears it.
    h.a.exec_ok(&["ip", "link", "set", &vx, "mtu", "1450"]);
    let (cleared, seen) = wait_event(
        &mut rx,
        Duration::from_secs(3),
        |e| matches!(e, TopologyEvent::MtuMismatchCleared(c) if c.netns == ia && c.device == vx),
    )
    .await;
    assert!(cleared.is_some(), "not cleared; events: {seen:?}");
    assert!(
        !topo.snapshot().mismatches.iter().any(|m| m.netns == ia),
        "still listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_mtu_changes_are_picked_up() {
    require_root!();
    let h = Hosts::new();
    let ia = Hosts::ino(&h.a);
    let veth_a = h.veth.name(Side::A).to_string();
    // Raise the underlay first so the kernel lets the vxlan (with dev) have a large MTU.
    h.veth.set_mtu(Side::A, 9000).set_mtu(Side::B, 9000);
    let vx = h.vxlan_with_dev();
    let vx_ifindex = ifindex_in(&h.a, &vx);
    h.a.exec_ok(&["ip", "link", "set", &vx, "mtu", "8950"]);

    let topo = Topology::start();
    let snap = wait_snapshot(&topo, Duration::from_secs(5), |s| {
        s.vxlan(ia, vx_ifindex)
            .is_some_and(|v| v.mtu == 8950 && v.underlay.as_ref().is_some_and(|u| u.mtu == 9000))
    })
    .await;
    assert!(snap.is_some(), "{:#?}", topo.snapshot().vxlans);
    assert!(!topo.snapshot().mismatches.iter().any(|m| m.netns == ia));
    let mut rx = topo.subscribe();

    // Lowering the underlay does not touch the vxlan: now 8950 > 1500 - 50.
    let t = Instant::now();
    h.veth.set_mtu(Side::A, 1500);
    let (ev, seen) = wait_event(&mut rx, Duration::from_secs(3), |e| {
        mismatch_for(e, ia, &vx)
    })
    .await;
    let Some(TopologyEvent::MtuMismatch(m)) = ev else {
        panic!("no mismatch after lowering {veth_a}: {seen:?}");
    };
    eprintln!("underlay MTU change seen after {:?}", t.elapsed());
    assert_eq!(
        (m.mtu, m.underlay_mtu, m.max_mtu),
        (8950, 1500, 1450),
        "{m:?}"
    );
    assert!(
        seen.iter()
            .chain(std::iter::once(&TopologyEvent::MtuMismatch(m.clone())))
            .any(|e| matches!(e, TopologyEvent::VxlanChanged(v)
                if v.ifindex == vx_ifindex && v.underlay.as_ref().is_some_and(|u| u.mtu == 1500))),
        "no VxlanChanged with the new underlay MTU: {seen:?}"
    );

    // With `dev`, the kernel refuses a vxlan MTU above lower MTU - 50 from now on
    // (`vxlan_change_mtu`); bringing it down to that clears the report.
    assert!(
        !h.a.exec(&["ip", "link", "set", &vx, "mtu", "1460"])
            .status
            .success()
    );
    h.a.exec_ok(&["ip", "link", "set", &vx, "mtu", "1450"]);
    let (ev, seen) = wait_event(
        &mut rx,
        Duration::from_secs(3),
        |e| matches!(e, TopologyEvent::MtuMismatchCleared(c) if c.netns == ia && c.device == vx),
    )
    .await;
    assert!(ev.is_some(), "not cleared: {seen:?}");
    assert!(
        !seen.iter().any(|e| mismatch_for(e, ia, &vx)),
        "reported again: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_moved_to_another_namespace_keeps_its_underlay() {
    require_root!();
    let h = Hosts::new();
    let (ia, ib) = (Hosts::ino(&h.a), Hosts::ino(&h.b));
    // Created in a (where its UDP socket stays), then moved into b — as Docker does for
    // overlay networks. One bound with `dev`, one resolved by route.
    let with_dev = h.vxlan_with_dev();
    let by_route = h.vxlan_without_dev(4243);
    for vx in [&with_dev, &by_route] {
        h.a.exec_ok(&["ip", "link", "set", vx, "netns", h.b.name()]);
        h.b.exec_ok(&["ip", "link", "set", vx, "up"]);
    }
    let topo = Topology::start();
    let ok = wait_snapshot(&topo, Duration::from_secs(5), |s| {
        [&with_dev, &by_route].iter().all(|n| {
            s.vxlans
                .iter()
                .any(|v| v.netns == ib && &&v.device == n && v.underlay.is_some())
        })
    })
    .await;
    let snap = ok.unwrap_or_else(|| panic!("{:#?}", topo.snapshot().vxlans));
    for (n, src) in [
        (&with_dev, UnderlaySource::Link),
        (&by_route, UnderlaySource::Route),
    ] {
        let v = snap
            .vxlans
            .iter()
            .find(|v| v.netns == ib && &v.device == n)
            .unwrap();
        let u = v.underlay.as_ref().unwrap();
        assert_eq!(u.netns, ia, "{n}: underlay stays in the creating namespace");
        assert_eq!(u.name, h.veth.name(Side::A), "{n}");
        assert_eq!(u.source, src, "{n}");
    }
    // by_route kept MTU 1500 over the 1500 veth in a.
    assert!(
        snap.mismatches
            .iter()
            .any(|m| m.netns == ib && m.device == by_route && m.underlay_mtu == 1500)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmem_reads_each_namespace_own_limits() {
    require_root!();
    let h = Hosts::new();
    let (ia, ib) = (Hosts::ino(&h.a), Hosts::ino(&h.b));
    let host_high: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/ipfrag_high_thresh")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Distinct from the host's and from each other (above the default low threshold).
    let high_a = host_high + 4096 * 3;
    let high_b = host_high + 4096 * 5;
    h.a.sysctl("net.ipv4.ipfrag_high_thresh", &high_a.to_string());
    h.a.sysctl("net.ipv4.ipfrag_time", "7");
    h.a.sysctl("net.ipv6.ip6frag_high_thresh", &(high_a + 1).to_string());
    h.b.sysctl("net.ipv4.ipfrag_high_thresh", &high_b.to_string());

    let topo = Topology::start();
    wait_snapshot(&topo, Duration::from_secs(5), |s| {
        s.netns(ia).is_some() && s.netns(ib).is_some()
    })
    .await
    .expect("namespaces seen");
    // One sweep thread enters both namespaces in turn.
    let all = topo.fragmem().await.unwrap();
    let (fa, fb) = (all[&ia], all[&ib]);
    assert_eq!(fa.ipv4.high_thresh, high_a);
    assert_ne!(fa.ipv4.high_thresh, host_high);
    assert_eq!(fa.ipv4.time_secs, 7);
    assert_eq!(fa.ipv6.expect("ipv6 enabled").high_thresh, high_a + 1);
    assert_eq!(fb.ipv4.high_thresh, high_b);
    assert_eq!(fb.ipv4.time_secs, 30);
    assert_eq!(fa.ipv4.queues, 0);
    assert_eq!(fa.ipv4.memory_bytes, 0);
    let host = all[&topo.snapshot().host_netns.unwrap()];
    assert_eq!(host.ipv4.high_thresh, host_high);

    // Cached for at most 1 s.
    h.a.sysctl("net.ipv4.ipfrag_high_thresh", &(high_a + 4096).to_string());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fa = topo.fragmem_of(ia).await.unwrap().unwrap();
    assert_eq!(fa.ipv4.high_thresh, high_a + 4096);

    // The standalone reader agrees.
    let ha = NetnsHandle::from_path(&h.a.path()).unwrap();
    assert_eq!(ha.inode(), ia);
    assert_eq!(read_fragmem(&ha).unwrap().ipv4.high_thresh, high_a + 4096);
}

/// Sends `n` UDP datagrams of `size` bytes from inside `ns` (fragmented when > MTU).
fn udp_burst(ns: &NetnsHandle, dst: &str, size: usize, n: usize) {
    let dst = dst.to_string();
    run_in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..n {
            s.send_to(&vec![0u8; size], &dst).unwrap();
        }
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snmp_snapshot_matches_ip_netns_exec() {
    require_root!();
    let h = Hosts::new();
    let ha = NetnsHandle::from_path(&h.a.path()).unwrap();
    let hb = NetnsHandle::from_path(&h.b.path()).unwrap();
    // Fragments from a to b (3000-byte datagrams over MTU 1500) so counters are non-zero.
    // Port 9 on b has no listener: the reassembled datagrams are simply refused.
    udp_burst(&ha, "10.201.0.2:9", 3000, 5);
    let settled =
        fathom_tests::wait_until(Duration::from_secs(3), Duration::from_millis(50), || {
            read_snmp(&hb).unwrap().ipv4.reasm_oks >= 5
        });
    assert!(
        settled,
        "reassembly did not complete: {:?}",
        read_snmp(&hb).unwrap().ipv4
    );

    for (handle, ns) in [(&ha, &h.a), (&hb, &h.b)] {
        let ours = read_snmp(handle).unwrap();
        let theirs = ns.snmp();
        let ip = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .filter(|(k, _)| k.starts_with("Ip."))
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vec<_>>()
        };
        assert_eq!(ip(&ours.all), ip(&theirs), "netns {}", ns.name());
        assert_eq!(ours.ipv4.frag_creates, theirs["Ip.FragCreates"]);
        assert_eq!(ours.ipv4.reasm_reqds, theirs["Ip.ReasmReqds"]);
    }
    let a = read_snmp(&ha).unwrap().ipv4;
    let b = read_snmp(&hb).unwrap().ipv4;
    assert!(a.frag_oks >= 5 && a.frag_creates >= 10, "{a:?}");
    assert!(b.reasm_reqds >= 10 && b.reasm_oks >= 5, "{b:?}");
    assert_eq!(a.reasm_reqds, 0, "a only sent");

    // Through the service, and through one thread entering both in turn.
    let topo = Topology::start();
    let ia = Hosts::ino(&h.a);
    wait_snapshot(&topo, Duration::from_secs(5), |s| s.netns(ia).is_some())
        .await
        .unwrap();
    assert_eq!(topo.snmp(ia).await.unwrap().ipv4, a);
    let both = run_in_each_netns(&[Arc::new(ha), Arc::new(hb)], |h| {
        fathom::net::fragmem::read_snmp_here(h.inode())
            .unwrap()
            .ipv4
    })
    .unwrap();
    assert_eq!(both[0].1.as_ref().unwrap(), &a);
    assert_eq!(both[1].1.as_ref().unwrap(), &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_in_netns_enters_only_the_worker_thread() {
    require_root!();
    let ns = NetNs::new();
    let h = NetnsHandle::from_path(&ns.path()).unwrap();
    let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inside = run_in_netns(&h, || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    })
    .unwrap();
    assert_eq!(inside.to_str().unwrap(), format!("net:[{}]", ns.inode()));
    assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), own);
    // Borrowing closures work (scoped thread).
    let mut names = Vec::new();
    run_in_netns(&h, || {
        names.extend(
            std::fs::read_dir("/sys/class/net")
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned()),
        )
    })
    .unwrap();
    // sysfs shows the namespace of whoever mounted it, not the thread's: only check it ran.
    assert!(!names.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_without_bind_mount_come_and_go_and_are_not_pinned() {
    require_root!();
    let topo = Topology::start();
    topo.ready().await.unwrap();
    let mut rx = topo.subscribe();
    // A namespace that only a process holds (no `ip netns` bind mount).
    let mut child = std::process::Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .expect("unshare");
    let pid = child.id();
    let mut ino = None;
    assert!(fathom_tests::wait_until(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || {
            ino = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|t| fathom::net::netns::parse_ns_link(t.to_str()?))
                .filter(|i| Some(*i) != topo.snapshot().host_netns);
            ino.is_some()
        }
    ));
    let ino = ino.unwrap();
    let (added, _) = wait_event(
        &mut rx,
        Duration::from_secs(3),
        |e| matches!(e, TopologyEvent::NetnsAdded { netns } if *netns == ino),
    )
    .await;
    assert!(added.is_some());
    let s = topo.snapshot();
    let n = s.netns(ino).unwrap();
    assert_eq!(n.pids, vec![pid]);
    assert!(n.bind_mounts.is_empty());
    assert!(s.link_by_name(ino, "lo").is_some());

    let _ = child.kill();
    let _ = child.wait();
    let (removed, _) = wait_event(
        &mut rx,
        Duration::from_secs(3),
        |e| matches!(e, TopologyEvent::NetnsRemoved { netns } if *netns == ino),
    )
    .await;
    assert!(removed.is_some());
    assert!(topo.snapshot().netns(ino).is_none());
    // No fd of ours still points at it (it would keep the namespace alive).
    let target = format!("net:[{ino}]");
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            assert_ne!(
                t.to_string_lossy(),
                target,
                "fd {:?} pins it",
                e.file_name()
            );
        }
    }
}
