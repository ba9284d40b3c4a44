//! Bounded cardinality: the series of a pod whose cgroup is gone disappears once the TTL has
//! passed since its last change, while the counter of a live pod keeps increasing
//! monotonically across scrapes.

use std::time::{Duration, Instant};

use fathom_tests::{
    require_root,
    runc::{OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, pod_uid},
    serve::{FathomServe, value_of},
};

const OOM_KILLS: &str = "fathom_oom_kills_total";
const TTL: Duration = Duration::from_secs(4);

/// A pod with one container idling in `sleep` under a 32 MiB limit.
fn pod(tag: &str) -> (String, RuncContainer) {
    let (uid, id) = (pod_uid(), container_id_64hex());
    let bundle = OciBundle::new()
        .memory_limit(32 << 20)
        .cgroups_path(&kube_cgroups_path(&uid, &id));
    let ctr = RuncContainer::run_detached(bundle, &format!("fathom-ttl-{tag}-{}", &id[..12]));
    (uid, ctr)
}

/// Runs the allocator inside the container until the kernel OOM-kills it.
fn oom_in(ctr: &RuncContainer) {
    let before = ctr.oom_kill_count();
    let out = ctr.exec(&["/alloc", "100"]);
    assert!(!out.status.success(), "alloc must be killed: {out:?}");
    assert_eq!(ctr.oom_kill_count(), before + 1, "one more kernel OOM kill");
}

/// The pod's series value at this scrape.
fn kills(fathom: &FathomServe, uid: &str) -> Option<f64> {
    value_of(
        &fathom.samples(),
        OOM_KILLS,
        &[("pod", uid), ("scope", "container")],
    )
}

fn wait_value(fathom: &FathomServe, uid: &str, want: f64) {
    let ok = fathom_tests::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        kills(fathom, uid) == Some(want)
    });
    assert!(ok, "pod {uid} never reached {want}:\n{}", fathom.scrape());
}

#[test]
fn a_gone_pods_series_expires_after_the_ttl_while_a_live_pod_keeps_counting() {
    require_root!();
    let ttl = format!("{}s", TTL.as_secs());
    let fathom = FathomServe::start(&["--series-ttl", &ttl]);
    let (uid_a, ctr_a) = pod("a");
    let (uid_b, ctr_b) = pod("b");

    let a_changed = Instant::now();
    oom_in(&ctr_a);
    wait_value(&fathom, &uid_a, 1.0);
    oom_in(&ctr_b);
    wait_value(&fathom, &uid_b, 1.0);

    // Pod A goes away (container, pod cgroup and all).
    drop(ctr_a);
    let gone = Instant::now();

    oom_in(&ctr_b);
    let mut b_last = 1.0;
    let mut a_disappeared = None;
    let deadline = gone + TTL + Duration::from_secs(10);
    while Instant::now() < deadline {
        let at = Instant::now();
        let samples = fathom.samples();
        let a = value_of(
            &samples,
            OOM_KILLS,
            &[("pod", uid_a.as_str()), ("scope", "container")],
        );
        let b = value_of(
            &samples,
            OOM_KILLS,
            &[("pod", uid_b.as_str()), ("scope", "container")],
        )
        .unwrap_or_else(|| panic!("the live pod's series vanished at {:?}", at - gone));
        assert!(
            b >= b_last,
            "counter of the live pod went back: {b_last} → {b}"
        );
        b_last = b;
        match a {
            // Its last change was after `a_changed`: it must live at least until then + TTL.
            None => assert!(
                at >= a_changed + TTL,
                "pod A's series expired {:?} after its kill, before the TTL of {TTL:?}",
                at - a_changed
            ),
            Some(v) => assert_eq!(v, 1.0, "pod A's counter while it lives"),
        }
        if a.is_none() && b_last == 2.0 {
            a_disappeared = Some(at);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let when = a_disappeared.unwrap_or_else(|| {
        panic!(
            "pod A's series still there {:?} after its cgroup was removed (TTL {TTL:?}), or pod B did not reach 2 ({b_last}):\n{}",
            gone.elapsed(),
            fathom.scrape()
        )
    });
    eprintln!(
        "pod A's series expired {:?} after its kill, {:?} after its cgroup went",
        when - a_changed,
        when - gone
    );

    // Gone for good, and the live pod is still there at 2.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kills(&fathom, &uid_a), None);
    assert_eq!(kills(&fathom, &uid_b), Some(2.0));
}

/// `ip netns del` right after a burst of queue overflows: the next scrape shows the whole
/// burst (fathom deletes a gone namespace's kernel keys only after a scrape read them), and
/// the series is gone once the TTL has passed.
#[test]
fn a_namespace_deleted_right_after_its_drops_shows_them_then_expires() {
    use fathom_tests::{netns::NetNs, traffic::udp_send};
    require_root!();
    let ttl = format!("{}s", TTL.as_secs());
    let fathom = FathomServe::start(&["--series-ttl", &ttl]);
    let ns = NetNs::new();
    let inode = ns.inode().to_string();
    let ours = [("netns", inode.as_str()), ("cause", "queue_overflow")];
    const REASM: &str = "fathom_ip_reassembly_failures_total";
    // Known first (its zero series), as a pod that lived a while.
    assert!(
        fathom_tests::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            value_of(&fathom.samples(), REASM, &ours) == Some(0.0)
        }),
        "no zero series for netns {inode}:\n{}",
        fathom.scrape()
    );
    ns.lo_up();
    ns.exec_ok(&["ip", "link", "set", "lo", "mtu", "1500"]);
    ns.sysctl("net.ipv4.ipfrag_low_thresh", "0");
    ns.sysctl("net.ipv4.ipfrag_high_thresh", "1024");
    let before = ns.snmp().get("Ip.ReasmFails").copied().unwrap_or(0);
    udp_send(
        &ns,
        "127.0.0.1:5000",
        3000,
        300,
        Some(libc::IP_PMTUDISC_DONT),
    );
    std::thread::sleep(Duration::from_millis(300));
    let burst = (ns.snmp().get("Ip.ReasmFails").copied().unwrap_or(0) - before) as f64;
    assert!(burst >= 300.0, "ReasmFails rose by {burst}");
    drop(ns);
    let gone = Instant::now();
    assert_eq!(
        value_of(&fathom.samples(), REASM, &ours),
        Some(burst),
        "the next scrape after `ip netns del` shows the burst"
    );
    // Still there once the topology has seen it go (rescans every 2 s), then expired.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(value_of(&fathom.samples(), REASM, &ours), Some(burst));
    let expired = fathom_tests::wait_until(
        TTL + Duration::from_secs(20),
        Duration::from_millis(200),
        || value_of(&fathom.samples(), REASM, &ours).is_none(),
    );
    assert!(
        expired,
        "netns {inode}'s series still there {:?} after it went (TTL {TTL:?}):\n{}",
        gone.elapsed(),
        fathom.scrape()
    );
    assert!(gone.elapsed() >= TTL, "expired before the TTL");
}
