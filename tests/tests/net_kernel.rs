//! The network programs' in-kernel counts, read straight from their maps, against the test
//! namespaces' own /proc/net/snmp. Each test loads its own copy of the programs.

mod common;

use common::{delta, if_sum, load};
use fathom::{btf::Btf, loader, net_counters};
use fathom_tests::{
    NetNs, Side, VethPair, require_root,
    traffic::{UdpSink, udp_send},
};
use probe_common::{DIRECTION_RX, DIRECTION_TX};

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

#[test]
fn fragments_sent_and_received_equal_the_namespaces_snmp() {
    require_root!();
    let l = load();
    let (a, b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(Some(&a), Some(&b));
    veth.addr_up(Side::A, "10.201.7.1/24");
    veth.addr_up(Side::B, "10.201.7.2/24");
    let sink = UdpSink::bind(&b, "10.201.7.2:5000");
    let (sa, sb) = (a.snmp(), b.snmp());
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
    let tx = if_sum(&l, a.inode(), DIRECTION_TX);
    let rx = if_sum(&l, b.inode(), DIRECTION_RX);
    assert_eq!(received, 20);
    assert_eq!(delta(&sa2, &sa, "Ip.FragCreates"), 60);
    assert_eq!(tx.frag_packets, delta(&sa2, &sa, "Ip.FragCreates"));
    assert_eq!(tx.frag_first, delta(&sa2, &sa, "Ip.FragOKs"));
    assert_eq!(rx.frag_packets, delta(&sb2, &sb, "Ip.ReasmReqds"));
    assert_eq!(rx.frag_first, delta(&sb2, &sb, "Ip.ReasmOKs"));
}
