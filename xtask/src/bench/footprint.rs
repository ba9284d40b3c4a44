//! The daemon with 1,000 pods: a fresh `fathom serve` started after the pods' cgroups exist;
//! its idle RSS and CPU; one real OOM kill per pod (one `fathom_oom_kills_total` series each);
//! idle again with the series in memory; then `/metrics` scrape latency over those series.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    fathom::Serve,
    pods::{Hierarchies, PodTree},
    process::{self, CpuMeter},
    report::{self, Idle, Pods, Results, Scrape},
    signals,
};

/// The family holding one series per pod.
const OOM_FAMILY: &str = "fathom_oom_kills_total";
/// How long the series may take to appear after the kills (reported, not failed on).
const SERIES_WAIT: Duration = Duration::from_secs(60);

pub struct Settings {
    pub pods: usize,
    pub idle: Duration,
    pub scrapes: usize,
}

pub fn pods_phase(
    s: &Settings,
    bin: &Path,
    hier: Hierarchies,
    name: &str,
    r: &mut Results,
) -> Result<()> {
    let started = Instant::now();
    let tree = PodTree::create(hier, name, s.pods)?;
    let mut p = Pods {
        pods: tree.pods.len(),
        cgroups: tree.cgroup_count(),
        create_s: started.elapsed().as_secs_f64(),
        ..Pods::default()
    };
    let d = Serve::start(bin)?;
    r.startup.serve_ready_with_pods = Some(d.ready);
    r.idle_before_kills = Some(idle(d.pid(), s.idle)?);

    let (kills, reclaim) = super::reclaim::measure(d.pid(), || tree.kill_all())?;
    r.reclaim = Some(reclaim);
    p.killed = kills.killed;
    p.survived = kills.survived;
    p.kernel_oom_kills = kills.kernel_oom_kills;
    p.kill_s = kills.elapsed.as_secs_f64();
    let waited = Instant::now();
    loop {
        // Counted kills only: every container also has zero series from the start.
        p.series = counted_pod_series(&d.metrics()?, &tree.uid_prefix);
        if p.series >= kills.kernel_oom_kills || waited.elapsed() >= SERIES_WAIT {
            break;
        }
        signals::sleep(Duration::from_millis(200))?;
    }
    p.series_wait_s = waited.elapsed().as_secs_f64();
    r.pods = Some(p);

    r.idle = Some(idle(d.pid(), s.idle)?);

    for _ in 0..3 {
        d.metrics()?;
    }
    let mut lat = Vec::with_capacity(s.scrapes);
    let mut body = String::new();
    for _ in 0..s.scrapes {
        signals::check()?;
        let t = Instant::now();
        body = d.metrics()?;
        lat.push(report::ms(t.elapsed()));
    }
    lat.sort_by(f64::total_cmp);
    r.scrape = Some(Scrape {
        scrapes: lat.len(),
        p50_ms: report::quantile(&lat, 0.5),
        p99_ms: report::quantile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        bytes: body.len(),
        series: pod_series(&body, &tree.uid_prefix),
    });
    // With the pods' series in place: RSS and scrapes under a connection flood.
    r.conn_flood = Some(super::conn_flood::measure(&d)?);
    let stopped = d.stop()?;
    r.startup.serve_stop.push(stopped.took);
    drop(tree);
    Ok(())
}

/// Length of the windows an idle period's CPU share is also given in (a trend shows).
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// CPU share and RSS of `pid` over `secs` of doing nothing (after 2 s to settle), overall and
/// per window of [`IDLE_WINDOW`].
fn idle(pid: i32, secs: Duration) -> Result<Idle> {
    signals::sleep(Duration::from_secs(2))?;
    let t0 = Instant::now();
    let whole = CpuMeter::start(pid)?;
    let mut windows = Vec::new();
    while t0.elapsed() < secs {
        let (w0, cpu) = (Instant::now(), CpuMeter::start(pid)?);
        signals::sleep(IDLE_WINDOW.min(secs - t0.elapsed().min(secs)))?;
        windows.push(cpu.seconds()? / w0.elapsed().as_secs_f64());
    }
    let cpu_s = whole.seconds()?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Idle {
        seconds,
        rss: process::status_bytes(pid, "VmRSS")?,
        rss_anon: process::status_bytes(pid, "RssAnon")?,
        rss_file: process::status_bytes(pid, "RssFile")?,
        cpu_fraction: cpu_s / seconds,
        cpu_fraction_windows: windows,
    })
}

/// Series of `fathom_oom_kills_total` of the bench's pods that have counted a kill (not the
/// zero series every container has from the first scrape on).
pub fn counted_pod_series(exposition: &str, uid_prefix: &str) -> u64 {
    let ours = format!("pod=\"{uid_prefix}");
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(OOM_FAMILY)
                .is_some_and(|rest| rest.starts_with('{'))
                && l.contains(&ours)
                && !l.ends_with(" 0")
        })
        .count() as u64
}

/// Series of `fathom_oom_kills_total` whose pod label is one of the bench's pods (with the
/// zero series: 2 per container).
pub fn pod_series(exposition: &str, uid_prefix: &str) -> u64 {
    let ours = format!("pod=\"{uid_prefix}");
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(OOM_FAMILY)
                .is_some_and(|rest| rest.starts_with('{'))
                && l.contains(&ours)
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_series_counts_only_ours() {
        let text = "\
# TYPE fathom_oom_kills counter
fathom_oom_kills_total{cgroup=\"\",container=\"a\",namespace=\"\",pod=\"fb00002a-0000-4000-8000-000000000001\",scope=\"container\"} 1
fathom_oom_kills_total{cgroup=\"\",container=\"b\",namespace=\"\",pod=\"other\",scope=\"container\"} 1
fathom_oom_kills_created{pod=\"fb00002a-x\"} 1
";
        assert_eq!(pod_series(text, "fb00002a"), 1);
        let zero = format!(
            "{text}fathom_oom_kills_total{{cgroup=\"\",container=\"a\",namespace=\"\",pod=\"fb00002a-0000-4000-8000-000000000001\",scope=\"pod\"}} 0\n"
        );
        assert_eq!(pod_series(&zero, "fb00002a"), 2);
        assert_eq!(counted_pod_series(&zero, "fb00002a"), 1);
    }
}
