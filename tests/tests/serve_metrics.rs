//! `fathom serve` end to end: real OOM kills (a runc container in a Kubernetes-style cgroup, a
//! plain cgroup) scraped from `/metrics` with their exact series and values; the exposition
//! passes `promtool check metrics` without a warning; the self-metrics tell what is attached,
//! lost, suppressed and what the programs cost.

use std::time::{Duration, Instant};

use fathom_tests::{
    TestCgroup,
    cgroup::{spawn_in_cgroup, unique_root_name},
    progs::alloc_binary,
    require_root,
    runc::{OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, pod_uid},
    serve::{FathomServe, Sample, find, promtool_check_metrics, value_of},
};

const OOM_KILLS: &str = "fathom_oom_kills_total";
/// Event delivery and a scrape take milliseconds; this only bounds a hung test.
const EVENT: Duration = Duration::from_secs(30);

/// Scrapes until `pred` holds for the samples (→ them), panicking after `timeout`.
fn scrape_until(
    f: &FathomServe,
    timeout: Duration,
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
            "condition not met after {timeout:?}; last scrape:\n{}",
            f.scrape()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

#[test]
fn oom_in_a_runc_container_is_one_series_with_its_pod_and_container() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    // Before any kill the family is declared but has no series of ours; the text is clean.
    assert_promtool_clean(&fathom.scrape());

    let (uid, id) = (pod_uid(), container_id_64hex());
    let bundle = OciBundle::new()
        .args(&["/alloc", "100"])
        .memory_limit(32 << 20)
        .cgroups_path(&kube_cgroups_path(&uid, &id));
    let ctr = RuncContainer::run_detached(bundle, &format!("fathom-serve-{}", &id[..12]));
    // The container's own limit: scope="container". (Its scope="pod" series is a zero series,
    // there from the first scrape that found the container's cgroup.)
    let ours = [("pod", uid.as_str()), ("scope", "container")];
    let samples = scrape_until(&fathom, EVENT, |s| {
        value_of(s, OOM_KILLS, &ours).is_some_and(|v| v >= 1.0)
    });
    let series = find(&samples, OOM_KILLS, &ours);
    assert_eq!(series.len(), 1, "{series:?}");
    let labels: Vec<(&str, &str)> = series[0]
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("cgroup", ""),
            ("container", id.as_str()),
            ("namespace", ""),
            ("pod", uid.as_str()),
            ("scope", "container"),
        ],
        "exact label set"
    );
    assert_eq!(series[0].value, 1.0);
    assert_eq!(
        ctr.oom_kill_count(),
        1,
        "the kernel saw exactly one kill too"
    );

    // Exactly once: later scrapes do not count it again.
    std::thread::sleep(Duration::from_secs(1));
    let text = fathom.scrape();
    let again = fathom_tests::serve::parse_exposition(&text);
    assert_eq!(value_of(&again, OOM_KILLS, &ours), Some(1.0));
    assert_promtool_clean(&text);
}

#[test]
fn oom_in_a_plain_cgroup_is_named_by_its_path_with_empty_pod_labels() {
    require_root!();
    let fathom = FathomServe::start(&["--bpf-stats", "--node-name", "node-under-test"]);
    let cg = TestCgroup::create(&format!("{}/job", unique_root_name()));
    cg.set_memory_limit(32 << 20);
    let mut cmd = std::process::Command::new(alloc_binary());
    cmd.arg("100");
    let mut child = spawn_in_cgroup(&cg, cmd);
    let _ = child.wait();
    let path = format!("/{}", cg.rel_path());
    let ours = [("cgroup", path.as_str())];
    // A series born with its count is scraped at 0 once first (README: first increments).
    let samples = scrape_until(&fathom, EVENT, |s| {
        find(s, OOM_KILLS, &ours).iter().any(|x| x.value >= 1.0)
    });
    assert_eq!(
        value_of(
            &samples,
            OOM_KILLS,
            &[
                ("cgroup", path.as_str()),
                ("namespace", ""),
                ("pod", ""),
                ("container", ""),
                ("scope", "cgroup"),
            ]
        ),
        Some(1.0),
        "host-level workloads carry empty pod labels, not made-up ones"
    );

    // Self-metrics.
    assert_eq!(
        value_of(
            &samples,
            "fathom_program_attached",
            &[("program", "oom_mark_victim")]
        ),
        Some(1.0)
    );
    for family in ["fathom_events_lost_total", "fathom_events_suppressed_total"] {
        assert!(
            value_of(&samples, family, &[("stream", "oom_kill")]).is_some(),
            "{family}{{stream=\"oom_kill\"}} missing"
        );
    }
    assert_eq!(
        value_of(&samples, "fathom_bpf_stats_enabled", &[]),
        Some(1.0)
    );
    // --bpf-stats held BPF_ENABLE_STATS open while the kill ran the program.
    let runs = value_of(
        &samples,
        "fathom_bpf_program_runs_total",
        &[("program", "oom_mark_victim")],
    )
    .expect("runs of oom_mark_victim");
    assert!(runs >= 1.0, "oom_mark_victim ran {runs} times");
    let secs = value_of(
        &samples,
        "fathom_bpf_program_run_seconds_total",
        &[("program", "oom_mark_victim")],
    )
    .expect("run time of oom_mark_victim");
    assert!(secs > 0.0 && secs < 1.0, "run time {secs} s");
    let info = find(
        &samples,
        "fathom_build_info",
        &[("node", "node-under-test")],
    );
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].value, 1.0);
    assert!(!info[0].labels["version"].is_empty());
}

#[test]
fn without_workload_labels_kills_are_counted_per_scope_only() {
    require_root!();
    let fathom = FathomServe::start(&["--no-workload-labels"]);
    let cg = TestCgroup::create(&format!("{}/job", unique_root_name()));
    cg.set_memory_limit(32 << 20);
    let mut cmd = std::process::Command::new(alloc_binary());
    cmd.arg("100");
    let _ = spawn_in_cgroup(&cg, cmd).wait();
    // Other tests may kill in parallel: this instance counts theirs too, so at least 1.
    let samples = scrape_until(&fathom, EVENT, |s| {
        value_of(s, OOM_KILLS, &[("scope", "cgroup")]).is_some_and(|v| v >= 1.0)
    });
    for s in find(&samples, OOM_KILLS, &[]) {
        for l in ["namespace", "pod", "container", "cgroup"] {
            assert_eq!(s.labels[l], "", "{l} must be empty: {s:?}");
        }
    }
}

#[test]
fn openmetrics_is_served_when_asked_for() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let plain = fathom.get("/metrics");
    assert!(
        plain
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"),
        "{plain:?}"
    );
    let om = fathom_tests::serve::http_get(
        fathom.addr(),
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "{om:?}"
    );
    assert!(om.body.trim_end().ends_with("# EOF"), "{}", om.body);
    assert!(
        om.body.contains("# TYPE fathom_oom_kills counter"),
        "{}",
        om.body
    );
}
