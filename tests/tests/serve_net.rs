//! `fathom serve`'s network families end to end: real traffic in network namespaces the tests
//! create, scraped from `/metrics` and compared with the namespaces' own /proc/net/snmp —
//! fragment-queue overflow equals ReasmFails, UDP to a closed port equals the datagrams sent,
//! a mismatched VXLAN overlay is flagged and its oversize frames counted exactly — with the
//! series of a deleted namespace expiring after the TTL, and a whole exposition that passes
//! `promtool check metrics`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use fathom::metrics::network::NAMING_GRACE;
use fathom_tests::{
    NetNs, Side, VethPair,
    overlay::{OVERLAY_B, Overlay, VNI},
    require_root,
    serve::{FathomServe, Sample, find, parse_exposition, promtool_check_metrics, value_of},
    traffic::{UdpSink, udp_send},
};

const DROPS: &str = "fathom_packet_drops_total";
const REASM_FAILURES: &str = "fathom_ip_reassembly_failures_total";
const FRAGMENTS: &str = "fathom_ip_fragments_total";
const QUEUE_LIMIT: &str = "fathom_ip_fragment_queue_limit_bytes";
const MISMATCH: &str = "fathom_overlay_mtu_mismatch";
const OVERSIZE: &str = "fathom_vxlan_oversize_packets_total";
const VXLAN_PACKETS: &str = "fathom_vxlan_packets_total";
const MTU: &str = "fathom_interface_mtu_bytes";

/// Counts are in the kernel maps as soon as the packets are; what takes time is fathom's
/// topology noticing a new namespace (a rescan every 2 s). This only bounds a hung test.
const SETTLE: Duration = Duration::from_secs(20);

/// Scrapes until `pred` holds for the samples (→ them), panicking after `timeout`.
fn scrape_until(
    f: &FathomServe,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = f.samples();
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {timeout:?}; last scrape:\n{}",
            f.scrape()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sum of the samples named `name` with `labels` (0 when there is none).
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).iter().map(|s| s.value).sum()
}

fn assert_promtool_clean(text: &str) {
    let (rc, out) = promtool_check_metrics(text);
    assert_eq!(
        rc, 0,
        "promtool check metrics failed:\n{out}\n--- exposition ---\n{text}"
    );
    assert!(
        out.trim().is_empty(),
        "promtool warnings:\n{out}\n--- exposition ---\n{text}"
    );
}

/// The samples once fathom exports everything the kernel holds right now. Network namespace
/// inodes are reused, and the kernel keeps a deleted namespace's counts under its inode (tests
/// run in parallel, each deleting namespaces): a test's new namespace may start from them, so
/// tests compare growth. A namespace's counts are held back until it is named, at most
/// `NAMING_GRACE` after fathom first saw them.
fn settled(f: &FathomServe) -> Vec<Sample> {
    f.scrape();
    std::thread::sleep(NAMING_GRACE + Duration::from_millis(200));
    f.samples()
}

type Snmp = BTreeMap<String, u64>;
fn delta(after: &Snmp, before: &Snmp, key: &str) -> f64 {
    (after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)) as f64
}

#[test]
fn reassembly_failures_in_a_test_netns_are_exported_per_cause() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let (a, b) = (NetNs::new(), NetNs::new());
    let veth = VethPair::new(Some(&a), Some(&b));
    veth.addr_up(Side::A, "10.201.20.1/24");
    veth.addr_up(Side::B, "10.201.20.2/24");
    // A fragment-memory limit no datagram fits in: every fragment that cannot be queued is
    // dropped inside ip_defrag (reason NOT_SPECIFIED) and counted in ReasmFails.
    b.sysctl("net.ipv4.ipfrag_low_thresh", "0");
    b.sysctl("net.ipv4.ipfrag_high_thresh", "1024");
    let (ns_a, ns_b) = (a.inode().to_string(), b.inode().to_string());
    let overflow = [
        ("namespace", ""),
        ("pod", ""),
        ("netns", ns_b.as_str()),
        ("cause", "queue_overflow"),
    ];
    let (tx_a, rx_b) = (
        [("netns", ns_a.as_str()), ("direction", "tx")],
        [("netns", ns_b.as_str()), ("direction", "rx")],
    );
    let base = settled(&fathom);
    let base_overflow = value_of(&base, REASM_FAILURES, &overflow).unwrap_or(0.0);
    let base_failures_a = sum(&base, REASM_FAILURES, &[("netns", ns_a.as_str())]);
    let (base_tx, base_rx) = (sum(&base, FRAGMENTS, &tx_a), sum(&base, FRAGMENTS, &rx_b));
    let (sa, sb) = (a.snmp(), b.snmp());
    udp_send(
        &a,
        "10.201.20.2:5000",
        3000,
        200,
        Some(libc::IP_PMTUDISC_DONT),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (sa2, sb2) = (a.snmp(), b.snmp());
    let fails = delta(&sb2, &sb, "Ip.ReasmFails");
    assert!(fails > 100.0, "the limit must bite: ReasmFails +{fails}");

    let (frag_creates, reasm_reqds) = (
        delta(&sa2, &sa, "Ip.FragCreates"),
        delta(&sb2, &sb, "Ip.ReasmReqds"),
    );
    // Each namespace's counts appear once fathom has named it (see `settled`): wait for both.
    let samples = scrape_until(&fathom, SETTLE, "overflows and fragments", |s| {
        value_of(s, REASM_FAILURES, &overflow).is_some_and(|v| v - base_overflow >= fails)
            && sum(s, FRAGMENTS, &tx_a) - base_tx >= frag_creates
            && sum(s, FRAGMENTS, &rx_b) - base_rx >= reasm_reqds
    });
    assert_eq!(
        value_of(&samples, REASM_FAILURES, &overflow),
        Some(base_overflow + fails),
        "queue_overflow grew by exactly ReasmFails"
    );
    // The receiver's failures are overflows only (its other series are zero series), and the
    // sender has none.
    assert_eq!(
        find(&samples, REASM_FAILURES, &[("netns", ns_b.as_str())])
            .iter()
            .filter(|s| s.value > 0.0)
            .count(),
        1,
        "{samples:?}"
    );
    assert_eq!(
        sum(&samples, REASM_FAILURES, &[("netns", ns_a.as_str())]),
        base_failures_a
    );
    // Every failure is also a packet drop of the receiver (NOT_SPECIFIED: the overflow has no
    // reason of its own).
    let not_specified = value_of(
        &samples,
        DROPS,
        &[("netns", ns_b.as_str()), ("reason", "NOT_SPECIFIED")],
    )
    .unwrap_or(0.0);
    assert!(not_specified >= fails, "{not_specified} < {fails}");
    // Fragments, whatever device names the series carry: the namespaces' own counts.
    assert_eq!(sum(&samples, FRAGMENTS, &tx_a) - base_tx, frag_creates);
    assert_eq!(sum(&samples, FRAGMENTS, &rx_b) - base_rx, reasm_reqds);

    // The limit that bit, read inside the receiver's namespace once fathom knows it.
    let limit = [("netns", ns_b.as_str()), ("family", "ipv4")];
    let samples = scrape_until(&fathom, SETTLE, "the receiver's queue limit", |s| {
        value_of(s, QUEUE_LIMIT, &limit).is_some()
    });
    assert_eq!(value_of(&samples, QUEUE_LIMIT, &limit), Some(1024.0));
    assert!(
        value_of(&samples, "fathom_ip_fragment_queue_bytes", &limit).is_some(),
        "queue bytes next to the limit"
    );
    // Fragments are the namespaces' own SNMP counters: by namespace and direction, with no
    // device label (a bridge's forwarded fragments are no namespace's own).
    assert!(
        find(&samples, FRAGMENTS, &[("netns", ns_b.as_str())])
            .iter()
            .all(|s| !s.labels.contains_key("device")),
        "{samples:?}"
    );
    let text = fathom.scrape();
    assert_promtool_clean(&text);
    // Exactly once: later scrapes do not count anything again.
    assert_eq!(
        value_of(&parse_exposition(&text), REASM_FAILURES, &overflow),
        Some(base_overflow + fails)
    );
}

/// The kernel gives a deleted namespace's inode to the next one within seconds, and its
/// cookies (unique, in every drop key) come from per-CPU batches: the namespace that reuses
/// an inode can have the *smaller* cookie. Namespaces are made alternately on each CPU, each
/// given its own number of drops, exported and deleted, until an inode is reused with a
/// smaller cookie; every namespace's series must show its own drops only (the old one's
/// series is replaced: a counter reset for Prometheus). On a real Swarm the first rule
/// ("a newer namespace has the larger cookie") left a task container's 300 overflows out.
#[test]
fn a_reused_inode_counts_the_new_namespace_whatever_its_cookie() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "needs two CPUs to get cookies from two batches");
    let mut made: Vec<(u64, u64)> = Vec::new();
    for i in 0..40usize {
        let ns = NetNs::new_on_cpu(i % cpus);
        ns.lo_up();
        let cookie = fathom_tests::traffic::in_netns(&ns, || {
            fathom::net::cookie::netns_cookie_here().expect("SO_NETNS_COOKIE")
        });
        let inode = ns.inode();
        let n = 3 + i;
        udp_send(&ns, "127.0.0.1:9", 16, n, None);
        let netns = inode.to_string();
        let ours = [
            ("namespace", ""),
            ("pod", ""),
            ("netns", netns.as_str()),
            ("reason", "NO_SOCKET"),
        ];
        let mut got = None;
        let exported = fathom_tests::wait_until(SETTLE, Duration::from_millis(250), || {
            got = value_of(&fathom.samples(), DROPS, &ours);
            got == Some(n as f64)
        });
        let reused_smaller = made.iter().any(|&(ino, c)| ino == inode && cookie < c);
        assert!(
            exported,
            "namespace {i} (inode {inode}, cookie {cookie}, {n} drops; earlier (inode, cookie): \
             {made:?}): fathom shows {got:?}"
        );
        made.push((inode, cookie));
        if reused_smaller {
            return;
        }
        drop(ns);
        // fathom's handle pins the namespace until its next rescan (every 2 s): only then
        // can the inode pass to the next one.
        std::thread::sleep(Duration::from_millis(2500));
    }
    panic!("no inode was reused with a smaller cookie in 40 namespaces: {made:?}");
}

#[test]
fn udp_to_a_closed_port_is_counted_as_no_socket_drops_of_its_namespace() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let ns = NetNs::new();
    ns.lo_up();
    let inode = ns.inode().to_string();
    let ours = [
        ("namespace", ""),
        ("pod", ""),
        ("netns", inode.as_str()),
        ("reason", "NO_SOCKET"),
    ];
    let base = value_of(&settled(&fathom), DROPS, &ours).unwrap_or(0.0);
    let before = ns.snmp();
    udp_send(&ns, "127.0.0.1:9", 64, 50, None);
    assert_eq!(delta(&ns.snmp(), &before, "Udp.NoPorts"), 50.0);
    let samples = scrape_until(&fathom, SETTLE, "50 NO_SOCKET drops", |s| {
        value_of(s, DROPS, &ours).is_some_and(|v| v - base >= 50.0)
    });
    assert_eq!(value_of(&samples, DROPS, &ours), Some(base + 50.0));
}

#[test]
fn a_mismatched_overlay_is_flagged_and_its_oversize_frames_counted() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let o = Overlay::new(Some(1500));
    let ns_a = o.a.inode().to_string();
    let vni = VNI.to_string();
    let device = [("netns", ns_a.as_str()), ("device", o.vxlan.as_str())];
    let mismatch = [
        device[0],
        device[1],
        ("vni", vni.as_str()),
        ("underlay", o.veth.name(Side::A)),
    ];
    let samples = scrape_until(&fathom, SETTLE, "the mismatch flagged", |s| {
        value_of(s, MISMATCH, &mismatch).is_some()
    });
    assert_eq!(value_of(&samples, MISMATCH, &mismatch), Some(1.0));
    assert_eq!(value_of(&samples, MTU, &device), Some(1500.0));
    assert_eq!(
        value_of(
            &samples,
            MTU,
            &[("netns", ns_a.as_str()), ("device", o.veth.name(Side::A))]
        ),
        Some(1500.0),
        "the underlay's MTU"
    );

    // Small datagrams until one arrives (ARP resolved on both layers) and fathom counts the
    // VXLAN device's frames (the kernel knows the device: its oversize verdicts start).
    let sink = UdpSink::bind(&o.b, &format!("{OVERLAY_B}:5000"));
    let tx = [
        device[0],
        device[1],
        ("vni", vni.as_str()),
        ("direction", "tx"),
    ];
    let ok = fathom_tests::wait_until(SETTLE, Duration::from_millis(200), || {
        udp_send(&o.a, &format!("{OVERLAY_B}:5000"), 8, 1, None);
        sink.received() > 0 && value_of(&fathom.samples(), VXLAN_PACKETS, &tx).is_some()
    });
    assert!(
        ok,
        "the overlay never carried a counted frame:\n{}",
        fathom.scrape()
    );
    let oversize = [device[0], device[1], ("vni", vni.as_str())];
    // Zero unless the namespace's inode is a reused one (see `settled`): small frames are
    // not oversize.
    let before = value_of(&fathom.samples(), OVERSIZE, &oversize).unwrap_or(0.0);

    // 1472-byte datagrams fill the 1500 overlay MTU; IP_PMTUDISC_PROBE keeps the kernel from
    // using the path MTU VXLAN caches, so every encapsulated packet (1550 bytes) exceeds the
    // 1500 underlay.
    const SENT: usize = 50;
    udp_send(
        &o.a,
        &format!("{OVERLAY_B}:5000"),
        1472,
        SENT,
        Some(libc::IP_PMTUDISC_PROBE),
    );
    scrape_until(&fathom, SETTLE, "oversize frames counted", |s| {
        value_of(s, OVERSIZE, &oversize).is_some_and(|v| v - before >= SENT as f64)
    });
    std::thread::sleep(Duration::from_millis(300));
    let text = fathom.scrape();
    let samples = parse_exposition(&text);
    assert_eq!(
        value_of(&samples, OVERSIZE, &oversize),
        Some(before + SENT as f64),
        "exactly the datagrams sent"
    );
    assert_eq!(value_of(&samples, MISMATCH, &mismatch), Some(1.0));
    assert_promtool_clean(&text);
}

#[test]
fn a_correct_overlay_is_not_flagged() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let o = Overlay::new(None);
    let ns_a = o.a.inode().to_string();
    let ours = [("netns", ns_a.as_str()), ("device", o.vxlan.as_str())];
    let samples = scrape_until(&fathom, SETTLE, "the overlay judged", |s| {
        value_of(s, MISMATCH, &ours).is_some()
    });
    assert_eq!(value_of(&samples, MISMATCH, &ours), Some(0.0));
    assert_eq!(value_of(&samples, MTU, &ours), Some(1450.0));
}

#[test]
fn a_deleted_namespaces_series_expire_after_the_ttl() {
    require_root!();
    const TTL: Duration = Duration::from_secs(3);
    let fathom = FathomServe::start(&["--series-ttl", &format!("{}s", TTL.as_secs())]);
    let ns = NetNs::new();
    ns.lo_up();
    let inode = ns.inode().to_string();
    let ours = [("netns", inode.as_str()), ("reason", "NO_SOCKET")];
    let base = value_of(&settled(&fathom), DROPS, &ours).unwrap_or(0.0);
    udp_send(&ns, "127.0.0.1:9", 64, 10, None);
    let changed = Instant::now();
    scrape_until(&fathom, SETTLE, "the namespace's drops", |s| {
        value_of(s, DROPS, &ours) == Some(base + 10.0)
    });
    // Known to the topology (its queue memory is exported) before it goes.
    let queue = [("netns", inode.as_str()), ("family", "ipv4")];
    scrape_until(&fathom, SETTLE, "the namespace listed", |s| {
        value_of(s, QUEUE_LIMIT, &queue).is_some()
    });
    drop(ns);
    let gone = Instant::now();
    // Gone from the topology within its rescan period, then TTL after the last change.
    let samples = scrape_until(&fathom, TTL + SETTLE, "the series expired", |s| {
        value_of(s, DROPS, &ours).is_none()
    });
    let at = Instant::now();
    assert!(
        at >= changed + TTL,
        "expired {:?} after its last change, before the TTL of {TTL:?}",
        at - changed
    );
    eprintln!("expired {:?} after the namespace was deleted", at - gone);
    assert!(
        value_of(&samples, QUEUE_LIMIT, &queue).is_none(),
        "the gauges of a gone namespace stop at once"
    );
}

#[test]
fn without_workload_labels_namespaces_are_not_told_apart() {
    require_root!();
    let fathom = FathomServe::start(&["--no-workload-labels"]);
    let ns = NetNs::new();
    ns.lo_up();
    udp_send(&ns, "127.0.0.1:9", 64, 20, None);
    let blank = [
        ("namespace", ""),
        ("pod", ""),
        ("netns", ""),
        ("reason", "NO_SOCKET"),
    ];
    // Other tests drop packets in parallel: this instance counts theirs too.
    let samples = scrape_until(&fathom, SETTLE, "20 NO_SOCKET drops", |s| {
        value_of(s, DROPS, &blank).is_some_and(|v| v >= 20.0)
    });
    for family in [DROPS, REASM_FAILURES] {
        for s in find(&samples, family, &[]) {
            for l in ["namespace", "pod", "netns"] {
                assert_eq!(s.labels[l], "", "{l} must be empty: {s:?}");
            }
        }
    }
    // Fragment totals are each namespace's SNMP counters: summed over namespaces they would
    // fall when one goes, so they keep `netns` (workload labels stay empty).
    for s in find(&samples, FRAGMENTS, &[]) {
        for l in ["namespace", "pod"] {
            assert_eq!(s.labels[l], "", "{l} must be empty: {s:?}");
        }
    }
    assert_promtool_clean(&fathom.scrape());
}
