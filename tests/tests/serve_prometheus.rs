//! A real Prometheus server (apt `prometheus`, private TSDB, 1 s scrape interval) scrapes
//! `fathom serve`; after a real OOM kill in a runc container its HTTP API returns
//! `fathom_oom_kills_total` for the pod.

use std::time::Duration;

use fathom_tests::{
    prometheus::{JOB, PrometheusServer},
    require_root,
    runc::{OciBundle, RuncContainer, container_id_64hex, kube_cgroups_path, pod_uid},
    serve::FathomServe,
};

#[test]
fn prometheus_scrapes_the_oom_kill_of_a_pod() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let prom = PrometheusServer::start(&[fathom.addr()]);
    // The target is up: Prometheus parsed what fathom serves.
    let up = prom
        .wait_for_series(
            &format!("up{{job=\"{JOB}\"}} == 1"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", prom.log()));
    assert_eq!(up.len(), 1, "{up:?}");

    let (uid, id) = (pod_uid(), container_id_64hex());
    let bundle = OciBundle::new()
        .args(&["/alloc", "100"])
        .memory_limit(32 << 20)
        .cgroups_path(&kube_cgroups_path(&uid, &id));
    let _ctr = RuncContainer::run_detached(bundle, &format!("fathom-prom-{}", &id[..12]));

    let query =
        format!("fathom_oom_kills_total{{job=\"{JOB}\",pod=\"{uid}\",scope=\"container\"}} == 1");
    let result = prom
        .wait_for_series(&query, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\nfathom /metrics:\n{}", fathom.scrape()));
    assert_eq!(result.len(), 1, "{result:?}");
    let series = &result[0];
    assert_eq!(series["metric"]["container"], id.as_str(), "{series}");
    assert_eq!(series["metric"]["scope"], "container", "{series}");
    assert_eq!(
        series["metric"]["instance"],
        fathom.addr().to_string(),
        "{series}"
    );
    assert_eq!(series["value"][1], "1", "{series}");

    // The self-metrics made it too, with their types intact.
    let attached = prom
        .query(&format!(
            "fathom_program_attached{{job=\"{JOB}\",program=\"oom_mark_victim\"}}"
        ))
        .unwrap();
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(attached[0]["value"][1], "1");
    // OpenMetrics names the family without `_total`, the text format with it.
    let meta: String = ["fathom_oom_kills", "fathom_oom_kills_total"]
        .iter()
        .map(|m| prom.api("metadata", &format!("metric={m}")).unwrap()["data"].to_string())
        .collect();
    assert!(
        meta.to_string().contains("\"counter\""),
        "Prometheus must see a counter: {meta}"
    );
}
