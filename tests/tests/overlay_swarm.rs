//! The overlay-MTU outage on a real two-node Docker Swarm (issue 9): two dockerd, each in a
//! network namespace of its own (node B with a non-default exec root), a veth underlay with
//! MTU 1500, attachable overlay networks with a global `--endpoint-mode dnsrr` service (one
//! task per node), and a real `fathom serve` asked about both daemons
//! (`--docker-socket A --docker-socket B`).
//!
//! A matched overlay (VXLAN MTU 1450) and a mismatched one (`mtu=1550` → VXLAN MTU 1500 over
//! the 1500 underlay), large UDP datagrams between the tasks in both directions; queue
//! overflow on the receiving node's namespace (where the VXLAN socket reassembles the outer
//! packets; the inner datagrams then time out in the receiving container's namespace) and in
//! the receiving container's namespace. Every involved namespace's counts are checked against
//! its own /proc/net/snmp (ReasmFails, ReasmTimeout, FragCreates, ReasmReqds) and the series
//! must name the overlay network, the service and the task's container.
//!
//! One test on one swarm (a swarm takes ~15 s to build and the nodes' namespaces are shared
//! by both overlays, so the stages must not overlap). Every check is run and reported as
//! `CHECK PASS|FAIL [owner] what`; the test fails at the end if any failed. `[owner]` says
//! whose part the check proves (swarm: discovery and Docker names; vxlan: MTU verdicts and
//! oversize counting; kernel: per-namespace reassembly and fragment counts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fathom_tests::{
    FathomCapture,
    netns::parse_snmp,
    require_root, run_checked,
    serve::{FathomServe, Sample, find},
    swarm::{OverlayNet, Service, Swarm},
    traffic::{UdpSink, in_netns_path, udp_send_path},
    wait_until,
};

const REASM: &str = "fathom_ip_reassembly_failures_total";
const FRAGMENTS: &str = "fathom_ip_fragments_total";
const QUEUE_LIMIT: &str = "fathom_ip_fragment_queue_limit_bytes";
const MISMATCH: &str = "fathom_overlay_mtu_mismatch";
const OVERSIZE: &str = "fathom_vxlan_oversize_packets_total";
const MTU: &str = "fathom_interface_mtu_bytes";
const SETTLE: Duration = Duration::from_secs(20);
/// Inner datagram payload: three fragments at MTU 1450 or 1500.
const DGRAM: usize = 4000;
const PORT: u16 = 5000;

/// Every check's outcome, printed as it is made.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, owner: &str, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            eprintln!("CHECK PASS [{owner}] {what}");
        } else {
            eprintln!("CHECK FAIL [{owner}] {what}: {detail}");
            self.failed.push(format!("[{owner}] {what}: {detail}"));
        }
    }

    fn eq(&mut self, owner: &str, what: &str, got: f64, want: f64) {
        self.check(
            owner,
            what,
            got == want,
            format!("fathom {got}, expected {want}"),
        );
    }
}

fn snmp_at(path: &Path) -> BTreeMap<String, u64> {
    let text = in_netns_path(path.to_path_buf(), || {
        std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp")
    });
    parse_snmp(&text)
}

fn sysctl_at(path: &Path, key: &str, value: &str) {
    run_checked(
        Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["sysctl", "-q", "-w", &format!("{key}={value}")]),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn inode(path: &Path) -> String {
    fathom_tests::inode_of(path)
        .expect("stat netns")
        .to_string()
}

fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).iter().map(|s| s.value).sum()
}

/// One involved namespace.
struct Ns {
    what: String,
    path: PathBuf,
    inode: String,
}

impl Ns {
    fn new(what: impl Into<String>, path: PathBuf) -> Self {
        let inode = inode(&path);
        Ns {
            what: what.into(),
            path,
            inode,
        }
    }
}

/// The kernel's and fathom's counts of every namespace at one moment.
struct Counts {
    snmp: Vec<BTreeMap<String, u64>>,
    fathom: Vec<[f64; 4]>,
}

fn fathom_counts(samples: &[Sample], ns: &Ns) -> [f64; 4] {
    let n = ns.inode.as_str();
    [
        sum(samples, REASM, &[("netns", n)]),
        sum(samples, REASM, &[("netns", n), ("cause", "timeout")]),
        sum(samples, FRAGMENTS, &[("netns", n), ("direction", "tx")]),
        sum(samples, FRAGMENTS, &[("netns", n), ("direction", "rx")]),
    ]
}

const KEYS: [&str; 4] = [
    "Ip.ReasmFails",
    "Ip.ReasmTimeout",
    "Ip.FragCreates",
    "Ip.ReasmReqds",
];
const WHAT: [&str; 4] = [
    "reassembly failures (all causes) = ReasmFails",
    "reassembly failures cause=timeout = ReasmTimeout",
    "tx fragments = FragCreates",
    "rx fragments = ReasmReqds",
];

fn counts(fathom: &FathomServe, nss: &[Ns]) -> Counts {
    let samples = fathom.samples();
    Counts {
        snmp: nss.iter().map(|n| snmp_at(&n.path)).collect(),
        fathom: nss.iter().map(|n| fathom_counts(&samples, n)).collect(),
    }
}

/// Kernel deltas since `before`, then waits (bounded) for fathom's deltas to equal them and
/// records one check per namespace and counter.
fn compare(c: &mut Checks, stage: &str, fathom: &FathomServe, nss: &[Ns], before: &Counts) {
    let now: Vec<BTreeMap<String, u64>> = nss.iter().map(|n| snmp_at(&n.path)).collect();
    let kernel: Vec<[f64; 4]> = now
        .iter()
        .zip(&before.snmp)
        .map(|(a, b)| {
            KEYS.map(|k| (a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0)) as f64)
        })
        .collect();
    let mut got = Vec::new();
    // Deltas as Prometheus's increase() takes them: a value below the last one is a counter
    // reset. That is what fathom shows when the kernel reuses a gone namespace's inode for a
    // new one (here a task container of an earlier stage): the gone one's series is removed
    // at the new one's first count, and the new one starts from 0 (scraped at 0 first).
    let mut base: Vec<[f64; 4]> = before.fathom.clone();
    let mut last: Vec<[f64; 4]> = before.fathom.clone();
    wait_until(SETTLE, Duration::from_millis(500), || {
        let samples = fathom.samples();
        got = nss
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let f = fathom_counts(&samples, n);
                for k in 0..4 {
                    if f[k] < last[i][k] {
                        base[i][k] = 0.0;
                    }
                    last[i][k] = f[k];
                }
                [0, 1, 2, 3].map(|k| f[k] - base[i][k])
            })
            .collect();
        got == kernel
    });
    for (i, n) in nss.iter().enumerate() {
        for k in 0..4 {
            c.eq(
                "kernel",
                &format!("{stage}: {} ({}): {}", n.what, n.inode, WHAT[k]),
                got[i][k],
                kernel[i][k],
            );
        }
        if got[i] != kernel[i] {
            // What fathom had under this inode, and what it logged of it (with
            // FATHOM_LOG=fathom=debug: discovery, inode reuse, key deletion).
            for s in fathom
                .samples()
                .iter()
                .filter(|s| s.labels.get("netns") == Some(&n.inode))
            {
                eprintln!("  series {} {:?} {}", s.name, s.labels, s.value);
            }
            for l in fathom.stderr().lines().filter(|l| l.contains(&n.inode)) {
                eprintln!("  log {l}");
            }
        }
    }
}

/// The namespaces one overlay involves: both nodes', both overlay namespaces, both tasks'.
fn namespaces(s: &Swarm, net: &OverlayNet<'_>, svc: &Service<'_>) -> Vec<Ns> {
    vec![
        Ns::new("node A", s.a.ns.path()),
        Ns::new("node B", s.b.ns.path()),
        Ns::new("overlay ns on A", s.a.overlay_netns_path(net)),
        Ns::new("overlay ns on B", s.b.overlay_netns_path(net)),
        Ns::new("task container on A", svc.task_on(&s.a).netns_path()),
        Ns::new("task container on B", svc.task_on(&s.b).netns_path()),
    ]
}

/// Names, devices and the MTU verdict of one overlay, as fathom shows them.
fn check_names_and_verdict(
    c: &mut Checks,
    stage: &str,
    fathom: &FathomServe,
    s: &Swarm,
    net: &OverlayNet<'_>,
    svc: &Service<'_>,
    vxlan_mtu: f64,
) {
    // The underlay is 1500: a VXLAN MTU above 1450 does not fit.
    let mismatched = vxlan_mtu + 50.0 > 1500.0;
    for node in [&s.a, &s.b] {
        let ovl = inode(&node.overlay_netns_path(net));
        let (dev, _vni) = net.vxlan_on(node).expect("the overlay's VXLAN device");
        let on = if node.node_id == s.a.node_id {
            "A"
        } else {
            "B"
        };
        let task = svc.task_on(node);
        let ctr = task.netns_inode().to_string();
        let mut samples = Vec::new();
        wait_until(SETTLE, Duration::from_millis(500), || {
            samples = fathom.samples();
            !find(&samples, MTU, &[("netns", &ovl), ("device", &dev)]).is_empty()
                && !find(
                    &samples,
                    QUEUE_LIMIT,
                    &[("netns", &ovl), ("network", &net.name)],
                )
                .is_empty()
                && !find(
                    &samples,
                    QUEUE_LIMIT,
                    &[
                        ("netns", &ctr),
                        ("container", &task.container_name),
                        ("service", &svc.name),
                    ],
                )
                .is_empty()
                && (!mismatched
                    || !find(&samples, MISMATCH, &[("netns", &ovl), ("device", &dev)]).is_empty())
        });
        let mtu = find(&samples, MTU, &[("netns", &ovl), ("device", &dev)]);
        c.check(
            "swarm",
            &format!("{stage}: the VXLAN device {dev} in node {on}'s overlay namespace is seen, MTU {vxlan_mtu}"),
            mtu.first().is_some_and(|m| m.value == vxlan_mtu),
            format!("{:?}", mtu.first().map(|m| m.value)),
        );
        let named = find(&samples, QUEUE_LIMIT, &[("netns", &ovl)]);
        c.check(
            "swarm",
            &format!(
                "{stage}: node {on}'s overlay namespace series carry network={}",
                net.name
            ),
            named
                .iter()
                .any(|m| m.labels.get("network") == Some(&net.name)),
            format!("{:?}", named.first().map(|m| &m.labels)),
        );
        let named = find(&samples, QUEUE_LIMIT, &[("netns", &ctr)]);
        c.check(
            "swarm",
            &format!(
                "{stage}: task container on {on}: container={} service={}",
                task.container_name, svc.name
            ),
            named.iter().any(|m| {
                m.labels.get("container") == Some(&task.container_name)
                    && m.labels.get("service") == Some(&svc.name)
            }),
            format!("{:?}", named.first().map(|m| &m.labels)),
        );
        let verdict = find(&samples, MISMATCH, &[("netns", &ovl), ("device", &dev)]);
        if mismatched {
            c.check(
                "vxlan",
                &format!("{stage}: MTU mismatch reported for {dev} on node {on}"),
                verdict.iter().any(|m| m.value == 1.0),
                format!(
                    "{:?}",
                    verdict
                        .iter()
                        .map(|m| (&m.labels, m.value))
                        .collect::<Vec<_>>()
                ),
            );
        } else {
            c.check(
                "vxlan",
                &format!("{stage}: no MTU mismatch for {dev} on node {on}"),
                verdict.iter().all(|m| m.value == 0.0),
                format!(
                    "{:?}",
                    verdict
                        .iter()
                        .map(|m| (&m.labels, m.value))
                        .collect::<Vec<_>>()
                ),
            );
        }
    }
}

fn oversize(samples: &[Sample], s: &Swarm, net: &OverlayNet<'_>) -> [f64; 2] {
    [&s.a, &s.b].map(|n| {
        let ovl = inode(&n.overlay_netns_path(net));
        sum(samples, OVERSIZE, &[("netns", &ovl)])
    })
}

/// Sends `count` datagrams from the task on `from` to the task on `to` and returns how
/// many arrived.
fn send(svc: &Service<'_>, s: &Swarm, from_a: bool, count: usize) -> u64 {
    let (from, to) = if from_a { (&s.a, &s.b) } else { (&s.b, &s.a) };
    let (src, dst) = (svc.task_on(from), svc.task_on(to));
    let sink = UdpSink::bind_path(dst.netns_path(), &format!("0.0.0.0:{PORT}"));
    udp_send_path(
        src.netns_path(),
        &format!("{}:{PORT}", dst.overlay_ip),
        DGRAM,
        count,
        Some(libc::IP_PMTUDISC_DONT),
    );
    std::thread::sleep(Duration::from_millis(500));
    sink.finish_by_len().get(&DGRAM).copied().unwrap_or(0)
}

/// Small datagrams until one gets through (ARP and the overlay's FDB settled).
fn warm_up(svc: &Service<'_>, s: &Swarm) {
    for from_a in [true, false] {
        let (from, to) = if from_a { (&s.a, &s.b) } else { (&s.b, &s.a) };
        let (src, dst) = (svc.task_on(from), svc.task_on(to));
        let sink = UdpSink::bind_path(dst.netns_path(), &format!("0.0.0.0:{PORT}"));
        let ok = wait_until(SETTLE, Duration::from_millis(200), || {
            udp_send_path(
                src.netns_path(),
                &format!("{}:{PORT}", dst.overlay_ip),
                8,
                1,
                None,
            );
            sink.received() > 0
        });
        assert!(ok, "the overlay never carried a datagram between the tasks");
        sink.finish();
    }
}

#[test]
fn swarm_overlays_named_and_counted_like_the_kernel() {
    require_root!();
    let s = Swarm::shared();
    let (sa, sb) = (
        s.a.socket().display().to_string(),
        s.b.socket().display().to_string(),
    );
    let fathom = FathomServe::start(&[
        "--docker-socket",
        &sa,
        "--docker-socket",
        &sb,
        "--containerd-socket",
        "",
        "--crio-socket",
        "",
    ]);
    // Events as `fathom capture` prints them, from the same daemons.
    let mut capture = FathomCapture::start(&[
        "--docker-socket",
        &sa,
        "--docker-socket",
        &sb,
        "--containerd-socket",
        "",
        "--crio-socket",
        "",
    ]);
    capture.wait_ready(Duration::from_secs(60));
    let mut c = Checks::default();
    const N: usize = 100;

    // ---- matched overlay: VXLAN MTU 1450 over the 1500 underlay -------------------------
    {
        let net = s.overlay(None);
        let svc = s.global_service(&net);
        warm_up(&svc, &s);
        check_names_and_verdict(&mut c, "matched", &fathom, &s, &net, &svc, 1450.0);
        let nss = namespaces(&s, &net, &svc);
        let before = counts(&fathom, &nss);
        let ov0 = oversize(&fathom.samples(), &s, &net);
        let ab = send(&svc, &s, true, N);
        let ba = send(&svc, &s, false, N);
        c.check(
            "test",
            "matched: every datagram A→B arrived",
            ab == N as u64,
            ab,
        );
        c.check(
            "test",
            "matched: every datagram B→A arrived",
            ba == N as u64,
            ba,
        );
        compare(&mut c, "matched", &fathom, &nss, &before);
        let ov = oversize(&fathom.samples(), &s, &net);
        c.eq(
            "vxlan",
            "matched: no oversize frames on node A",
            ov[0] - ov0[0],
            0.0,
        );
        c.eq(
            "vxlan",
            "matched: no oversize frames on node B",
            ov[1] - ov0[1],
            0.0,
        );
    }

    // ---- mismatched overlay: mtu=1550 → VXLAN MTU 1500 over the 1500 underlay ------------
    {
        let net = s.overlay(Some(1550));
        let svc = s.global_service(&net);
        warm_up(&svc, &s);
        check_names_and_verdict(&mut c, "mismatched", &fathom, &s, &net, &svc, 1500.0);
        let nss = namespaces(&s, &net, &svc);

        // Both directions with healthy queues: every datagram arrives; each carries two
        // full-size inner fragments whose encapsulated packets (1550) exceed the underlay.
        let before = counts(&fathom, &nss);
        let ov0 = oversize(&fathom.samples(), &s, &net);
        let ab = send(&svc, &s, true, N);
        let ba = send(&svc, &s, false, N);
        c.check(
            "test",
            "mismatched: every datagram A→B arrived",
            ab == N as u64,
            ab,
        );
        c.check(
            "test",
            "mismatched: every datagram B→A arrived",
            ba == N as u64,
            ba,
        );
        let before_ov = ov0;
        let mut ov = [0.0; 2];
        wait_until(SETTLE, Duration::from_millis(500), || {
            ov = oversize(&fathom.samples(), &s, &net);
            ov[0] - before_ov[0] >= (2 * N) as f64 && ov[1] - before_ov[1] >= (2 * N) as f64
        });
        c.eq(
            "vxlan",
            "mismatched: oversize frames A→B (2 per datagram) on node A",
            ov[0] - before_ov[0],
            (2 * N) as f64,
        );
        c.eq(
            "vxlan",
            "mismatched: oversize frames B→A (2 per datagram) on node B",
            ov[1] - before_ov[1],
            (2 * N) as f64,
        );
        compare(&mut c, "mismatched, healthy queues", &fathom, &nss, &before);

        // Queue overflow on the receiving node (B): its namespace reassembles the outer
        // packets; the inner datagrams' last fragments (not fragmented outside) then time out
        // in the receiving container's namespace.
        let node_b = s.b.ns.path();
        let ctr_b = svc.task_on(&s.b).netns_path();
        for p in [&node_b, &ctr_b] {
            sysctl_at(p, "net.ipv4.ipfrag_time", "1");
        }
        sysctl_at(&node_b, "net.ipv4.ipfrag_low_thresh", "0");
        sysctl_at(&node_b, "net.ipv4.ipfrag_high_thresh", "1");
        let before = counts(&fathom, &nss);
        let got = send(&svc, &s, true, N);
        std::thread::sleep(Duration::from_secs(3)); // past ipfrag_time: queues expire
        let k = |i: usize, key: &str| (snmp_at(&nss[i].path)[key] - before.snmp[i][key]) as i64;
        c.check(
            "test",
            "node B overflow: node B's ReasmFails rose and datagrams were lost",
            k(1, "Ip.ReasmFails") > 0 && got < N as u64,
            format!(
                "ReasmFails +{}, {got} of {N} arrived",
                k(1, "Ip.ReasmFails")
            ),
        );
        c.check(
            "test",
            "node B overflow: the receiving container's ReasmTimeout rose (cascade)",
            k(5, "Ip.ReasmTimeout") > 0,
            format!("+{}", k(5, "Ip.ReasmTimeout")),
        );
        compare(
            &mut c,
            "node B queue overflow (A→B)",
            &fathom,
            &nss,
            &before,
        );
        sysctl_at(&node_b, "net.ipv4.ipfrag_high_thresh", "4194304");
        sysctl_at(&node_b, "net.ipv4.ipfrag_time", "30");

        // Queue overflow in the receiving container's namespace (task on A), B→A.
        let ctr_a = svc.task_on(&s.a).netns_path();
        sysctl_at(&ctr_a, "net.ipv4.ipfrag_time", "1");
        sysctl_at(&ctr_a, "net.ipv4.ipfrag_low_thresh", "0");
        sysctl_at(&ctr_a, "net.ipv4.ipfrag_high_thresh", "1");
        // Events of this stage only (an earlier stage's namespace may have had this inode).
        capture.collect_for(Duration::from_millis(500));
        let events_before = capture.history().len();
        let before = counts(&fathom, &nss);
        let got = send(&svc, &s, false, N);
        std::thread::sleep(Duration::from_secs(3));
        let fails = snmp_at(&ctr_a)["Ip.ReasmFails"] - before.snmp[4]["Ip.ReasmFails"];
        c.check(
            "test",
            "container A overflow: its ReasmFails rose and datagrams were lost",
            fails > 0 && got < N as u64,
            format!("ReasmFails +{fails}, {got} of {N} arrived"),
        );
        compare(
            &mut c,
            "container A queue overflow (B→A)",
            &fathom,
            &nss,
            &before,
        );
        let samples = fathom.samples();
        let ino = inode(&ctr_a);
        let task = svc.task_on(&s.a);
        let named = find(&samples, REASM, &[("netns", &ino)]);
        c.check(
            "swarm",
            "container A overflow: the failures name the task's container and service",
            !named.is_empty()
                && named.iter().all(|m| {
                    m.labels.get("container") == Some(&task.container_name)
                        && m.labels.get("service") == Some(&svc.name)
                }),
            format!("{:?}", named.iter().map(|m| &m.labels).collect::<Vec<_>>()),
        );

        // The same names on events.
        let ino: u64 = ino.parse().unwrap();
        let ovl: Vec<u64> = [&s.a, &s.b]
            .map(|n| inode(&n.overlay_netns_path(&net)).parse().unwrap())
            .to_vec();
        capture.collect_for(Duration::from_secs(2));
        let events = &capture.history()[events_before..];
        let ctr_events: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["netns"].as_u64() == Some(ino))
            .collect();
        c.check(
            "swarm",
            "container A overflow: its events carry the container name and Swarm service/task/node",
            !ctr_events.is_empty()
                && ctr_events.iter().all(|e| {
                    e["container"]["name"] == task.container_name.as_str()
                        && e["container"]["swarm"]["service"] == svc.name.as_str()
                        && e["container"]["swarm"]["task"] == task.task_name.as_str()
                        && e["container"]["swarm"]["node_id"] == s.a.node_id.as_str()
                }),
            format!(
                "{} events, {} with the container's name, first: {:?}",
                ctr_events.len(),
                ctr_events
                    .iter()
                    .filter(|e| e["container"]["name"] == task.container_name.as_str())
                    .count(),
                ctr_events.first().map(|e| (&e["kind"], &e["container"]))
            ),
        );
        let mismatch: Vec<&serde_json::Value> = capture
            .history()
            .iter()
            .filter(|e| e["kind"] == "mtu_mismatch")
            .filter(|e| e["netns"].as_u64().is_some_and(|n| ovl.contains(&n)))
            .collect();
        c.check(
            "vxlan",
            "mismatched: an mtu_mismatch event for each node's overlay namespace, naming the network",
            mismatch.len() >= 2
                && mismatch.iter().all(|e| e["network"]["name"] == net.name.as_str()),
            format!("{:?}", mismatch.iter().map(|e| (&e["netns"], &e["network"])).collect::<Vec<_>>()),
        );
    }
    capture.stop();

    eprintln!("CHECKS: {} passed, {} failed", c.passed, c.failed.len());
    assert!(
        c.failed.is_empty(),
        "{} check(s) failed:\n{}",
        c.failed.len(),
        c.failed.join("\n")
    );
}
