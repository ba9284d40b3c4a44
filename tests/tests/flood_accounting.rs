//! Under a drop flood nothing is unaccounted: the in-kernel count equals the packets sent
//! (and the namespace's own Udp.NoPorts), and every drop the program saw was either delivered
//! as an event, suppressed by the rate limit, or lost to a full ring — counted, never silent.
//! (The benchmark, `cargo xtask bench`, measures rates; this test only checks exactness.)

use aya::{
    maps::{MapData, RingBuf},
    programs::BtfTracePoint,
};
use fathom::{events, loader, net_counters};
use fathom_tests::{NetNs, require_root, traffic::udp_send};
use probe_common::EventKind;

#[test]
fn every_drop_is_counted_and_every_sample_accounted_for() {
    require_root!();
    // A low rate and a small burst so that most samples are suppressed.
    let mut l = loader::load_with(&loader::LoadOptions {
        drop_events_per_sec: 50,
        drop_events_burst: 10,
        ..loader::LoadOptions::default()
    })
    .expect("load");
    let ring = l.ebpf.take_map("EVENTS").expect("EVENTS");
    let mut ring = RingBuf::<MapData>::try_from(ring).expect("ring");

    let ns = NetNs::new();
    ns.lo_up();
    let before = ns.snmp();
    const SENDERS: usize = 4;
    const EACH: usize = 5000;
    std::thread::scope(|s| {
        for _ in 0..SENDERS {
            s.spawn(|| udp_send(&ns, "127.0.0.1:9", 16, EACH, None));
        }
    });
    let after = ns.snmp();

    // Stop counting before reading, so the identity is checked on a still picture.
    let prog: &mut BtfTracePoint = l
        .ebpf
        .program_mut("skb_kfree_skb")
        .unwrap()
        .try_into()
        .unwrap();
    prog.unload().expect("detach skb_kfree_skb");

    let sent = (SENDERS * EACH) as u64;
    let no_ports = after["Udp.NoPorts"] - before.get("Udp.NoPorts").copied().unwrap_or(0);
    assert_eq!(no_ports, sent, "the kernel itself saw every datagram");

    let drops = net_counters::drops(&l.ebpf).unwrap();
    let in_ns: u64 = drops
        .iter()
        .filter(|(k, _)| k.netns as u64 == ns.inode())
        .map(|(_, c)| c.packets)
        .sum();
    assert_eq!(in_ns, sent, "in-kernel count for the namespace");

    let mut delivered = 0u64;
    while let Some(item) = ring.next() {
        if matches!(events::decode(&item), Ok(events::RawEvent::PacketDrop(_))) {
            delivered += 1;
        }
    }
    let stats = net_counters::net_stats(&l.ebpf).unwrap();
    let suppressed =
        net_counters::events_suppressed(&l.ebpf).unwrap()[EventKind::PacketDrop as usize];
    let lost = net_counters::events_lost(&l.ebpf).unwrap()[EventKind::PacketDrop as usize];
    assert!(stats.drops_seen >= sent);
    assert!(suppressed > 0, "the rate limit must have refused samples");
    assert_eq!(stats.drops_map_full, 0);
    assert_eq!(
        delivered + suppressed + lost,
        stats.drops_seen,
        "delivered {delivered} + suppressed {suppressed} + lost {lost}"
    );
}
