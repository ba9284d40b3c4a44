//! The network programs' in-kernel counts, read straight from their maps, against the test
//! namespaces' own /proc/net/snmp; and what the programs cost on healthy traffic (run counts
//! from the kernel's BPF stats). Each test loads its own copy of the programs.

mod common;

use common::{delta, load};
use fathom::{btf::Btf, loader, net_counters};
use fathom_tests::{
    NetNs, Side, VethPair, require_root,
    traffic::{UdpSink, udp_send},
};

fn drop_reason(name: &str) -> u32 {
    let btf = Btf::from_file(Btf::VMLINUX).unwrap();
    btf.enum_value("skb_drop_reason", &format!("SKB_DROP_REASON_{name}"))
        .unwrap_or_else(|| panic!("no drop reason {name}")) as u32
}

fn drops_in(l: &loader::Loaded, netns: u64, reason: u32) -> u64 {
    net_counters::drops(&l.ebpf)
        .unwrap()
        .iter()
        .filter(|(k, _)| k.netns as u64 == netns && k.reason == reason)
        .map(|(_, c)| c.packets)
        .sum()
}

#[test]
fn udp_to_a_closed_port_counts_no_socket_drops_in_the_namespace() {
    require_root!();
    let l = load();
    let ns = NetNs::new();
    ns.lo_up();
    let before = ns.snmp();
    udp_send(&ns, "127.0.0.1:9", 64, 50, None);
    let after = ns.snmp();
    let no_socket = drops_in(&l, ns.inode(), drop_reason("NO_SOCKET"));
    assert_eq!(delta(&after, &before, "Udp.NoPorts"), 50);
    assert_eq!(no_socket, 50, "NO_SOCKET drops in {}", ns.name());
}

/// Fragment totals are the namespaces' own SNMP counters read inside each namespace (no
/// program counts them): fathom's sweep equals what `ip netns exec … cat /proc/net/snmp`
/// shows, namespace by namespace.
#[test]
fn fragments_sent_and_received_equal_the_namespaces_snmp() {
    require_root!();
    let (a, b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(Some(&a), Some(&b));
    veth.addr_up(Side::A, "10.201.7.1/24");
    veth.addr_up(Side::B, "10.201.7.2/24");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let topo = rt.block_on(async { fathom::net::Topology::start() });
    let ok = fathom_tests::wait_until(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || {
            let snap = rt.block_on(topo.rescan()).expect("rescan");
            [&a, &b]
                .iter()
                .all(|n| snap.netns.iter().any(|x| x.inode as u64 == n.inode()))
        },
    );
    assert!(ok, "topology never saw the namespaces");
    let sink = UdpSink::bind(&b, "10.201.7.2:5000");
    let (sa, sb) = (a.snmp(), b.snmp());
    let start = rt.block_on(topo.fragmem_now()).unwrap();
    udp_send(
        &a,
        "10.201.7.2:5000",
        3000,
        20,
        Some(libc::IP_PMTUDISC_DONT),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let received = sink.finish();
    let (sa2, sb2) = (a.snmp(), b.snmp());
    let end = rt.block_on(topo.fragmem_now()).unwrap();
    let f = fathom::netreport::fragments_from_snmp(&start, &end);
    let get = |ns: u64, dir: &str| {
        f.iter()
            .find(|x| x.netns as u64 == ns && x.direction == dir)
            .map(|x| (x.packets, x.datagrams))
            .unwrap_or((0, 0))
    };
    assert_eq!(received, 20);
    assert_eq!(delta(&sa2, &sa, "Ip.FragCreates"), 60);
    assert_eq!(
        get(a.inode(), "tx"),
        (
            delta(&sa2, &sa, "Ip.FragCreates"),
            delta(&sa2, &sa, "Ip.FragOKs")
        )
    );
    assert_eq!(
        get(b.inode(), "rx"),
        (
            delta(&sb2, &sb, "Ip.ReasmReqds"),
            delta(&sb2, &sb, "Ip.ReasmOKs")
        )
    );
    assert_eq!(get(a.inode(), "rx"), (0, 0));
    assert_eq!(get(b.inode(), "tx"), (0, 0));
}

/// The mechanism behind "no cost on healthy traffic": UDP datagrams and a TCP stream over a
/// veth between two namespaces run none of fathom's per-packet programs except while VXLAN
/// devices are involved; the fragment-queue timer program runs per expiring timer of the
/// node, not per packet. Run counts come from the kernel (BPF_ENABLE_STATS).
#[test]
fn healthy_traffic_over_veth_runs_no_fragment_program() {
    require_root!();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let l = load();
    let (a, b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(Some(&a), Some(&b));
    veth.addr_up(Side::A, "10.201.8.1/24");
    veth.addr_up(Side::B, "10.201.8.2/24");
    let runs = |name: &str| {
        l.ebpf
            .program(name)
            .and_then(|p| p.info().ok())
            .map(|i| i.run_count())
            .unwrap_or_else(|| panic!("{name} has no info"))
    };
    let sink = UdpSink::bind(&b, "10.201.8.2:5000");
    let before = runs("reasm_expire");
    const DATAGRAMS: u64 = 20_000;
    udp_send(&a, "10.201.8.2:5000", 64, DATAGRAMS as usize, None);
    // A TCP stream, 16 MiB.
    let listener = fathom_tests::traffic::in_netns(&b, || {
        std::net::TcpListener::bind("10.201.8.2:5001").unwrap()
    });
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            match std::io::Read::read(&mut c, &mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k as u64,
            }
        }
    });
    fathom_tests::traffic::in_netns(&a, || {
        let mut c = std::net::TcpStream::connect("10.201.8.2:5001").unwrap();
        let buf = vec![7u8; 1 << 16];
        for _ in 0..256 {
            std::io::Write::write_all(&mut c, &buf).unwrap();
        }
    });
    assert_eq!(server.join().unwrap(), 16 << 20);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(sink.finish() > 0);
    let timer_runs = runs("reasm_expire") - before;
    // Timers of the whole node, not packets: far fewer runs than the ~30,000 packets.
    assert!(
        timer_runs < DATAGRAMS / 20,
        "reasm_expire ran {timer_runs} times for {DATAGRAMS} datagrams and a TCP stream"
    );
    // No per-packet tracepoint program is left in the object: VXLAN traffic is counted by
    // tc programs on VXLAN devices only (net_vxlan_kinds checks their run counts stay put on
    // a veth), fragments come from SNMP.
    for p in ["net_dev_start_xmit", "netif_receive_skb"] {
        assert!(l.ebpf.program(p).is_none(), "{p} is still in the object");
    }
}

/// The kernel reuses a deleted namespace's inode within seconds. Namespaces are created,
/// given a different number of drops each and deleted until one inode has served two of them:
/// the drop keys carry each namespace's cookie, which equals what `SO_NETNS_COOKIE` answers
/// inside it, and every namespace's count stays its own.
#[test]
fn counts_of_namespaces_sharing_a_reused_inode_stay_apart() {
    require_root!();
    let l = load();
    let no_socket = drop_reason("NO_SOCKET");
    // (inode, cookie, datagrams sent)
    let mut made: Vec<(u64, u64, u64)> = Vec::new();
    let mut reused = None;
    for i in 0..300u64 {
        let ns = NetNs::new();
        ns.lo_up();
        let cookie = fathom_tests::traffic::in_netns(&ns, || {
            fathom::net::cookie::netns_cookie_here().expect("SO_NETNS_COOKIE")
        });
        let n = 3 + i % 5;
        udp_send(&ns, "127.0.0.1:9", 16, n as usize, None);
        let inode = ns.inode();
        if made.iter().any(|m| m.0 == inode) {
            reused = Some(inode);
        }
        made.push((inode, cookie, n));
        drop(ns);
        if reused.is_some() {
            break;
        }
        // Namespaces are freed by a kernel worker shortly after the last reference goes.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let inode = reused.expect("no inode was reused in 300 namespaces");
    let drops = net_counters::drops(&l.ebpf).unwrap();
    let counted = |inode: u64, cookie: u64| -> u64 {
        drops
            .iter()
            .filter(|(k, _)| {
                k.netns as u64 == inode && k.netns_cookie == cookie && k.reason == no_socket
            })
            .map(|(_, c)| c.packets)
            .sum()
    };
    let sharing: Vec<_> = made.iter().filter(|m| m.0 == inode).collect();
    assert!(sharing.len() >= 2);
    assert_ne!(sharing[0].1, sharing[1].1, "cookies must differ");
    for (inode, cookie, n) in &made {
        assert_eq!(
            counted(*inode, *cookie),
            *n,
            "netns {inode} cookie {cookie}: {made:?}"
        );
    }
}
