//! The shipped alert rules, as a real Prometheus (apt `prometheus` 2.42, 1 s scrape and
//! evaluation interval) evaluates them against a real `fathom serve`:
//! - a new pod's first OOM kills (a runc container with a memory limit, four real kills)
//!   fire `FathomOOMKillsRepeated`, and `increase()` over the window holding them equals
//!   memory.events `oom_kill`;
//! - a namespace's first queue-overflow burst (per-netns ipfrag thresholds no datagram fits
//!   in, fragments over its own loopback) fires `FathomReassemblyQueueOverflow`, and
//!   `increase()` equals the namespace's ReasmFails delta — for a namespace that existed before
//!   fathom started and for one created after.
//!
//! `increase()` is evaluated at the timestamp of the sample that holds the final count: no
//! extrapolation past it, and none before the series' first sample, which is 0 (what the
//! scrape-at-0 rule of fathom's counters guarantees; asserted too).

use std::{path::PathBuf, time::Duration};

use fathom_tests::{
    netns::NetNs,
    prometheus::{JOB, PrometheusServer, ScrapeOptions},
    require_root,
    runc::{OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, pod_uid},
    serve::FathomServe,
    traffic::udp_send,
    wait_until,
};
use serde_json::Value;

fn alerts_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yaml")
}

fn prometheus(fathom: &FathomServe) -> PrometheusServer {
    let prom = PrometheusServer::start_with(
        &[fathom.addr()],
        &ScrapeOptions {
            rule_files: vec![alerts_file()],
            ..Default::default()
        },
    );
    prom.wait_for_series(
        &format!("up{{job=\"{JOB}\"}} == 1"),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", prom.log()));
    prom
}

/// Waits until the newest sample of `selector` is `want`; returns that sample's timestamp.
fn sample_reaching(prom: &PrometheusServer, selector: &str, want: f64) -> f64 {
    let mut seen = String::new();
    let mut ts = None;
    let ok = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        let r = prom.query(selector).unwrap_or_default();
        seen = format!("{r:?}");
        if let [one] = r.as_slice()
            && one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) == Some(want)
        {
            ts = one["value"][0].as_f64();
            return true;
        }
        false
    });
    assert!(ok, "{selector} never reached {want}: {seen}");
    // The instant query's time is "now"; the sample's own timestamp is what we need.
    let t = prom
        .query(&format!("timestamp({selector})"))
        .unwrap()
        .first()
        .and_then(|v| v["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()))
        .or(ts)
        .expect("a timestamp");
    t
}

/// `increase(selector[5m])` at time `t`, and the series' samples in that window.
fn increase_at(prom: &PrometheusServer, selector: &str, t: f64) -> (f64, Vec<Value>) {
    let q = |promql: &str| {
        let v = prom
            .api(
                "query",
                &format!(
                    "query={}&time={t:.3}",
                    fathom_tests::prometheus::url_encode(promql)
                ),
            )
            .unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    let inc = q(&format!("increase({selector}[5m])"));
    let samples = q(&format!("{selector}[5m]"));
    let value = inc
        .first()
        .and_then(|v| v["value"][1].as_str()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no increase for {selector}: {inc:?}"));
    let values = samples
        .first()
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default();
    (value, values)
}

fn wait_firing(prom: &PrometheusServer, alert: &str, label: &str, value: &str) {
    let q = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\",{label}=\"{value}\"}}");
    prom.wait_for_series(&q, Duration::from_secs(60))
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nALERTS: {:?}",
                prom.query("ALERTS").unwrap_or_default()
            )
        });
}

#[test]
fn a_new_pods_first_oom_kills_fire_the_alert_and_increase_equals_the_kernels_count() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let prom = prometheus(&fathom);

    let (uid, id) = (pod_uid(), container_id_64hex());
    // Four allocations beyond the limit, one after the other: four kills of /alloc, the shell
    // survives and keeps the container (and its series) alive.
    let bundle = OciBundle::new()
        .args(&[
            "/bin/sh",
            "-c",
            "for i in 1 2 3 4; do /alloc 100; sleep 0.3; done; sleep 600",
        ])
        .memory_limit(32 << 20)
        .cgroups_path(&kube_cgroups_path(&uid, &id));
    let ctr = RuncContainer::run_detached(bundle, &format!("fathom-alert-{}", &id[..12]));
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || ctr
            .oom_kill_count()
            >= 4),
        "the kernel counted {} kills",
        ctr.oom_kill_count()
    );
    std::thread::sleep(Duration::from_secs(1));
    let kernel = ctr.oom_kill_count() as f64;
    assert_eq!(kernel, 4.0, "memory.events oom_kill");

    let sel = format!("fathom_oom_kills_total{{job=\"{JOB}\",pod=\"{uid}\",scope=\"container\"}}");
    let t = sample_reaching(&prom, &sel, kernel);
    let (inc, samples) = increase_at(&prom, &sel, t);
    assert_eq!(
        samples.first().and_then(|s| s[1].as_str()),
        Some("0"),
        "the series starts at 0: {samples:?}"
    );
    assert_eq!(
        inc, kernel,
        "increase() = memory.events oom_kill; samples {samples:?}"
    );
    wait_firing(&prom, "FathomOOMKillsRepeated", "pod", &uid);
}

/// Makes every fragment that reaches `ns` over its loopback a queue overflow; returns the
/// ReasmFails delta of a burst of `datagrams` 3000-byte datagrams.
fn overflow_burst(ns: &NetNs, datagrams: usize) -> u64 {
    ns.lo_up();
    ns.exec_ok(&["ip", "link", "set", "lo", "mtu", "1500"]);
    ns.sysctl("net.ipv4.ipfrag_low_thresh", "0");
    ns.sysctl("net.ipv4.ipfrag_high_thresh", "1024");
    let before = ns.snmp().get("Ip.ReasmFails").copied().unwrap_or(0);
    udp_send(
        ns,
        "127.0.0.1:5000",
        3000,
        datagrams,
        Some(libc::IP_PMTUDISC_DONT),
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = ns.snmp().get("Ip.ReasmFails").copied().unwrap_or(0);
    after - before
}

#[test]
fn a_namespaces_first_overflow_burst_fires_the_alert_old_and_new_namespaces() {
    require_root!();
    let old = NetNs::new();
    let fathom = FathomServe::start(&[]);
    let prom = prometheus(&fathom);
    let new = NetNs::new();
    for ns in [&old, &new] {
        let inode = ns.inode().to_string();
        let sel = format!(
            "fathom_ip_reassembly_failures_total{{job=\"{JOB}\",netns=\"{inode}\",cause=\"queue_overflow\"}}"
        );
        // Known before its first failure: the zero series is there.
        prom.wait_for_series(&format!("{sel} == 0"), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", fathom.scrape()));
        let kernel = overflow_burst(ns, 200);
        assert!(kernel >= 200, "ReasmFails rose by {kernel}");
        let t = sample_reaching(&prom, &sel, kernel as f64);
        let (inc, samples) = increase_at(&prom, &sel, t);
        assert_eq!(samples.first().and_then(|s| s[1].as_str()), Some("0"));
        assert_eq!(
            inc, kernel as f64,
            "increase() = ReasmFails delta; {samples:?}"
        );
        wait_firing(&prom, "FathomReassemblyQueueOverflow", "netns", &inode);
    }
}
