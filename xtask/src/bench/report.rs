//! The bench's results: what each phase measured, the table printed beside the targets, and
//! `target/bench/results.json` (stable keys, so that runs can be compared; a figure a phase
//! could not measure is `null`, with the reason in `errors`).

use std::time::Duration;

use serde_json::{Value, json};

use super::cost::{self, Cost, ProgCost};

/// Targets from the benchmark issue; printed beside the figures, never used to pass or fail.
pub const TARGET_COST_RATIO: f64 = 0.5;
pub const TARGET_IDLE_RSS: u64 = 30 << 20;
pub const TARGET_IDLE_CPU: f64 = 0.01;
pub const TARGET_SCRAPE_MS: f64 = 20.0;

#[derive(Clone, Debug, Default)]
pub struct Flood {
    pub seconds: f64,
    pub senders: usize,
    /// Datagrams the bench sent.
    pub sent: u64,
    pub send_errors: u64,
    /// fathom's in-kernel count (`DROPS`) of UDP drops in the bench's namespace.
    pub counted: u64,
    /// The same for every IP protocol.
    pub counted_all_protocols: u64,
    /// `fathom_packet_drops_total` of the namespace served on `/metrics` (cumulative since
    /// the daemon started); `None` when the exporter has no such series.
    pub exported: Option<u64>,
    /// The daemon's own map total for the namespace, which `exported` must equal.
    pub kernel_total: u64,
    /// (reason, count) of those.
    pub by_reason: Vec<(String, u64)>,
    /// The namespace's own `Udp NoPorts` delta.
    pub kernel_no_ports: u64,
    /// Every `skb_kfree_skb` run on the host in the window (the ring's input).
    pub kfree_skb_hits: u64,
    /// Ring records fathom's userspace consumed (consumer position delta).
    pub delivered: u64,
    /// Ring records the program reserved (producer position delta).
    pub reserved: u64,
    /// The ring's byte deltas were not whole drop records (another kind of event came).
    pub ring_mixed: bool,
    pub suppressed: u64,
    pub lost: u64,
    pub map_full: u64,
    /// The counters stopped moving after the storm (no background traffic kept them going).
    pub settled: bool,
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    pub fn exact(&self) -> bool {
        self.counted == self.sent
    }

    pub fn accounted(&self) -> bool {
        !self.ring_mixed && self.delivered + self.suppressed + self.lost == self.kfree_skb_hits
    }
}

#[derive(Clone, Debug, Default)]
pub struct DaemonFlood {
    pub cpu_s: f64,
    pub cpu_s_per_million: f64,
    /// VmHWM at the end of the flood (peak since start).
    pub peak_rss: u64,
    /// Largest VmRSS sampled every 100 ms during the flood.
    pub peak_rss_sampled: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Idle {
    pub seconds: f64,
    pub rss: u64,
    /// Of which anonymous (heap) and file-backed (the binary, libraries).
    pub rss_anon: u64,
    pub rss_file: u64,
    pub cpu_fraction: f64,
    /// The same, per 5 s window.
    pub cpu_fraction_windows: Vec<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct Pods {
    pub pods: usize,
    pub cgroups: usize,
    pub create_s: f64,
    pub killed: u64,
    pub survived: u64,
    pub kernel_oom_kills: u64,
    pub kill_s: f64,
    /// Our pods' `fathom_oom_kills_total` series found in `/metrics`.
    pub series: u64,
    /// Seconds from the last kill until every series was there.
    pub series_wait_s: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub scrapes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub bytes: usize,
    pub series: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Startup {
    /// Spawn → `fathom: ready` of `fathom serve`.
    pub serve_ready: Vec<Duration>,
    /// Spawn → first `/readyz` 200.
    pub serve_readyz: Vec<Duration>,
    /// Spawn → `fathom: ready` of `fathom capture --count 0`.
    pub capture_ready: Vec<Duration>,
    /// SIGTERM → exit of `fathom serve`.
    pub serve_stop: Vec<Duration>,
    /// `fathom serve` ready with the pods' cgroups present.
    pub serve_ready_with_pods: Option<Duration>,
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub machine: Value,
    pub config: Value,
    pub rate_without_fathom: Option<f64>,
    pub cost: Option<Cost>,
    pub flood: Option<Flood>,
    pub daemon_flood: Option<DaemonFlood>,
    pub idle_before_kills: Option<Idle>,
    pub idle: Option<Idle>,
    pub pods: Option<Pods>,
    pub scrape: Option<Scrape>,
    /// `fathom serve` under a flood of idle and half-request connections.
    pub conn_flood: Option<super::conn_flood::ConnFlood>,
    /// Time to detect an overlay MTU mismatch, per kind of VXLAN device.
    pub detection: Vec<super::detect::Detection>,
    /// The reclaim programs over the pods' OOM kills.
    pub reclaim: Option<super::reclaim::ReclaimCost>,
    pub startup: Startup,
    /// Healthy traffic, fathom off and on (see `healthy`).
    pub healthy: Vec<super::healthy::Healthy>,
    /// The flood daemon's closing line `fathom: N events, M lost` (its whole life).
    pub closing_line: Option<(u64, u64)>,
    pub errors: Vec<String>,
    pub complete: bool,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len().checked_sub(1)? / 2).copied()
}

/// The `q` quantile (nearest rank) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn percents(v: &[f64]) -> String {
    v.iter()
        .map(|f| format!("{:.2}", f * 100.0))
        .collect::<Vec<_>>()
        .join(" / ")
        + " %"
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.0} k/s", r / 1e3)
    }
}

/// (figure, measured, target, verdict)
type Row = (String, String, String, String);

fn row(figure: &str, measured: String, target: &str, verdict: String) -> Row {
    (figure.into(), measured, target.into(), verdict)
}

fn missing(figure: &str, target: &str) -> Row {
    row(figure, "not measured".into(), target, "see errors".into())
}

fn met(ok: bool, how: String) -> String {
    if ok {
        format!("met ({how})")
    } else {
        format!("MISSED ({how})")
    }
}

impl Results {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let c = self.cost.clone().unwrap_or_default();
        let runs = |p: ProgCost| format!("{:.0} ns ({} runs)", p.ns_per_run, count(p.runs));
        match (c.fathom(), c.bpftrace(), c.ratio()) {
            (Some(f), Some(b), Some(ratio)) => {
                let how = if c.together.is_some() {
                    "same drops"
                } else {
                    "separate storms"
                };
                rows.push(row(
                    "kernel ns/event, fathom skb_kfree_skb",
                    runs(f),
                    "<= 0.5 x bpftrace",
                    met(
                        ratio <= TARGET_COST_RATIO,
                        format!("{ratio:.2} x bpftrace, {how}"),
                    ),
                ));
                rows.push(row(
                    "kernel ns/event, bpftrace kfree_skb count()",
                    runs(b),
                    "reference",
                    String::new(),
                ));
            }
            (Some(f), _, _) => rows.push(row(
                "kernel ns/event, fathom skb_kfree_skb",
                runs(f),
                "<= 0.5 x bpftrace",
                "no bpftrace figure (see errors)".into(),
            )),
            _ => rows.push(missing(
                "kernel ns/event, fathom vs bpftrace",
                "<= 0.5 x bpftrace",
            )),
        }
        if let (Some(f), Some(b), Some(ratio)) = (c.fathom_alone, c.bpftrace_alone, c.alone_ratio())
        {
            rows.push(row(
                "kernel ns/event, each alone: fathom / bpftrace",
                format!("{:.0} / {:.0} ns", f.ns_per_run, b.ns_per_run),
                "",
                format!("{ratio:.2} x"),
            ));
        }
        if let Some(all) = c.fathom_all_ns_per_drop {
            let xmit = c
                .per_program
                .iter()
                .filter(|(n, _, per)| n != cost::FATHOM_DROP_PROGRAM && *per > 0.0)
                .map(|(n, ns, per)| format!("{n} {ns:.0} ns x {per:.1}"))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(row(
                "kernel ns/drop, all fathom programs",
                format!("{all:.0} ns"),
                "",
                xmit,
            ));
        }
        match &self.flood {
            Some(f) => {
                rows.push(row(
                    "flood: drops generated (sent)",
                    format!("{} in {:.1} s", count(f.sent), f.seconds),
                    "",
                    format!("{} senders", f.senders),
                ));
                rows.push(row(
                    "flood: drop rate",
                    rate(f.rate()),
                    "as fast as possible",
                    self.rate_without_fathom
                        .map(|r| format!("{} without fathom", rate(r)))
                        .unwrap_or_default(),
                ));
                rows.push(row(
                    "flood: fathom in-kernel count (netns)",
                    count(f.counted),
                    "= sent, exactly",
                    if f.exact() {
                        "met (exact)".into()
                    } else {
                        let reasons = f
                            .by_reason
                            .iter()
                            .map(|(r, n)| format!("{r} {}", count(*n)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        format!(
                            "MISSED (off by {:+}: {reasons})",
                            f.counted as i128 - f.sent as i128
                        )
                    },
                ));
                rows.push(row(
                    "flood: exported on /metrics (netns)",
                    f.exported.map_or_else(|| "no series".into(), count),
                    "= kernel map",
                    match f.exported {
                        Some(e) if e == f.kernel_total => {
                            format!("met (= {} in the map since start)", count(f.kernel_total))
                        }
                        Some(e) => format!(
                            "MISSED (off by {:+} from the map's {})",
                            e as i128 - f.kernel_total as i128,
                            count(f.kernel_total)
                        ),
                        None => "no fathom_packet_drops_total series for the netns".into(),
                    },
                ));
                rows.push(row(
                    "flood: kernel's own Udp NoPorts",
                    count(f.kernel_no_ports),
                    "cross-check",
                    if f.kernel_no_ports == f.sent {
                        "= sent".into()
                    } else {
                        "!= sent".into()
                    },
                ));
                rows.push(row(
                    "flood: ring delivered/suppressed/lost",
                    format!(
                        "{} / {} / {}",
                        count(f.delivered),
                        count(f.suppressed),
                        count(f.lost)
                    ),
                    "sum = kfree_skb hits",
                    if f.ring_mixed {
                        "not checked (other events in the ring)".into()
                    } else {
                        met(
                            f.accounted(),
                            format!(
                                "{} hits, {} outside the netns",
                                count(f.kfree_skb_hits),
                                count(f.kfree_skb_hits.saturating_sub(f.counted))
                            ),
                        )
                    },
                ));
            }
            None => rows.push(missing("flood: exact counts", "exact")),
        }
        match &self.daemon_flood {
            Some(d) => {
                rows.push(row(
                    "daemon CPU per million drops (flood)",
                    format!("{:.3} s", d.cpu_s_per_million),
                    "",
                    format!("{:.2} s in total", d.cpu_s),
                ));
                rows.push(row(
                    "daemon peak RSS (VmHWM after the flood)",
                    mib(d.peak_rss),
                    "",
                    format!(
                        "largest VmRSS sampled during the flood {}",
                        mib(d.peak_rss_sampled)
                    ),
                ));
            }
            None => rows.push(missing("daemon CPU / RSS during the flood", "")),
        }
        let pods = self.pods.as_ref().map_or(0, |p| p.pods);
        match &self.idle {
            Some(i) => {
                rows.push(row(
                    &format!("daemon idle RSS, {pods} pods' cgroups + series"),
                    mib(i.rss),
                    "< 30 MiB",
                    met(
                        i.rss < TARGET_IDLE_RSS,
                        format!("anon {}, file {}", mib(i.rss_anon), mib(i.rss_file)),
                    ),
                ));
                rows.push(row(
                    &format!("daemon idle CPU, {pods} pods"),
                    format!("{:.3} % of a core", i.cpu_fraction * 100.0),
                    "< 1 % of a core",
                    met(
                        i.cpu_fraction < TARGET_IDLE_CPU,
                        format!(
                            "over {:.0} s; per 5 s: {}",
                            i.seconds,
                            percents(&i.cpu_fraction_windows)
                        ),
                    ),
                ));
            }
            None => rows.push(missing(
                "daemon idle RSS / CPU with 1,000 pods",
                "< 30 MiB, < 1 %",
            )),
        }
        let seen = |v: Option<f64>| v.map_or("not seen".to_string(), |v| format!("{v:.0} ms"));
        for d in &self.detection {
            rows.push(row(
                &format!("MTU mismatch detected, {} device", d.kind),
                format!(
                    "{} / {} / {}",
                    seen(d.verdict_ms),
                    seen(d.evidence_ms),
                    seen(d.metric_ms)
                ),
                "within a minute",
                format!(
                    "{}: verdict after the device is up / evidence event / metric after the first oversize frame",
                    if [d.verdict_ms, d.evidence_ms, d.metric_ms]
                        .iter()
                        .all(|v| v.is_some_and(|v| v < 60_000.0))
                    {
                        "met"
                    } else {
                        "MISSED"
                    }
                ),
            ));
        }
        match &self.reclaim {
            Some(c) => rows.push(row(
                &format!("kernel ns per reclaim stall, {pods} OOM-killed pods"),
                format!("{:.0} ns ({} stalls)", c.ns_per_stall, count(c.stalls)),
                "",
                c.programs
                    .iter()
                    .map(|p| format!("{} {:.0} ns x {}", p.name, p.ns_per_run, count(p.runs)))
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
            None => rows.push(missing("kernel ns per reclaim stall", "")),
        }
        if let Some(i) = &self.idle_before_kills {
            rows.push(row(
                &format!("daemon just started, {pods} pods' cgroups, no series"),
                format!("{:.3} % of a core, {}", i.cpu_fraction * 100.0, mib(i.rss)),
                "< 1 %, < 30 MiB",
                met(
                    i.cpu_fraction < TARGET_IDLE_CPU && i.rss < TARGET_IDLE_RSS,
                    format!(
                        "{:.0} s from 2 s after ready; per 5 s: {}",
                        i.seconds,
                        percents(&i.cpu_fraction_windows)
                    ),
                ),
            ));
        }
        match (&self.scrape, &self.pods) {
            (Some(s), Some(p)) => {
                rows.push(row(
                    &format!("/metrics scrape p50 / p99, {} pod series", s.series),
                    format!("{:.2} / {:.2} ms", s.p50_ms, s.p99_ms),
                    "< 20 ms",
                    met(
                        s.p99_ms < TARGET_SCRAPE_MS,
                        format!("{} scrapes, {} KiB", s.scrapes, s.bytes / 1024),
                    ),
                ));
                rows.push(row(
                    "OOM kills behind those series",
                    format!(
                        "{} (kernel: {})",
                        count(p.killed),
                        count(p.kernel_oom_kills)
                    ),
                    "",
                    format!("{:.1} s for all kills", p.kill_s),
                ));
            }
            _ => rows.push(missing(
                "/metrics scrape p50 / p99 at 1,000 pods",
                "< 20 ms",
            )),
        }
        if let Some(m) = median(&self.startup.serve_ready) {
            rows.push(row(
                "startup: serve start -> programs attached",
                format!("{:.0} ms", ms(m)),
                "",
                format!(
                    "median of {}; /readyz {:.0} ms",
                    self.startup.serve_ready.len(),
                    median(&self.startup.serve_readyz).map_or(f64::NAN, ms)
                ),
            ));
        }
        if let Some(m) = median(&self.startup.capture_ready) {
            rows.push(row(
                "startup: capture start -> programs attached",
                format!("{:.0} ms", ms(m)),
                "",
                format!("median of {}", self.startup.capture_ready.len()),
            ));
        }
        rows
    }

    fn healthy_rows(&self) -> Vec<Row> {
        self.healthy
            .iter()
            .map(|h| {
                let figure = format!("healthy {} {}: fathom off / on", h.path, h.traffic);
                let measured = if h.traffic == "tcp_stream" {
                    format!("{:.2} / {:.2} Gbit/s", h.off / 1e9, h.on / 1e9)
                } else {
                    format!(
                        "{:.1} / {:.1} us RTT (p99 {:.1} / {:.1})",
                        h.off,
                        h.on,
                        h.p99_off.unwrap_or(f64::NAN),
                        h.p99_on.unwrap_or(f64::NAN)
                    )
                };
                let progs = h
                    .programs
                    .iter()
                    .map(|(n, r, ns)| format!("{n} {r:.2}x {ns:.0} ns"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let runs = h.runs_per_packet();
                let how = format!(
                    "{runs:.2} runs, {:.0} kernel ns per packet{}",
                    h.ns_per_packet(),
                    if progs.is_empty() {
                        String::new()
                    } else {
                        format!(": {progs}")
                    }
                );
                row(
                    &figure,
                    measured,
                    "0 program runs per packet (veth)",
                    if h.path == "veth" {
                        met(runs < 0.01, how)
                    } else {
                        how
                    },
                )
            })
            .collect()
    }

    /// Prints the table (and the errors) on stdout.
    pub fn print(&self) {
        let mut rows = self.rows();
        rows.extend(self.healthy_rows());
        let w =
            |f: fn(&Row) -> &String| rows.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
        let (w0, w1, w2) = (w(|r| &r.0), w(|r| &r.1), w(|r| &r.2));
        println!();
        println!("fathom bench — {}", self.machine_line());
        println!(
            "{:<w0$}  {:>w1$}  {:<w2$}  result",
            "figure", "measured", "target"
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + 6 + 40));
        for (f, m, t, v) in &rows {
            println!("{f:<w0$}  {m:>w1$}  {t:<w2$}  {v}");
        }
        for e in &self.errors {
            println!("error: {e}");
        }
    }

    fn machine_line(&self) -> String {
        let m = &self.machine;
        format!(
            "kernel {}, {} CPUs ({}), fathom {}",
            m["kernel"].as_str().unwrap_or("?"),
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["fathom"].as_str().unwrap_or("?"),
        )
    }

    pub fn to_json(&self) -> Value {
        let cost = self.cost.as_ref();
        let flood = self.flood.as_ref();
        let daemon = self.daemon_flood.as_ref();
        let idle = self.idle.as_ref();
        let scrape = self.scrape.as_ref();
        let idle_json = |i: &Idle| {
            json!({
                "rss_bytes": i.rss,
                "rss_anon_bytes": i.rss_anon,
                "rss_file_bytes": i.rss_file,
                "cpu_fraction": i.cpu_fraction,
                "cpu_fraction_windows": i.cpu_fraction_windows,
                "seconds": i.seconds,
            })
        };
        let durations = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>();
        let programs = cost.map(|c| {
            c.per_program
                .iter()
                .map(|(n, ns, per)| json!({"program": n, "ns_per_run": ns, "runs_per_drop": per}))
                .collect::<Vec<_>>()
        });
        let by_reason = flood.map(|f| {
            f.by_reason
                .iter()
                .map(|(r, n)| (r.clone(), json!(n)))
                .collect::<serde_json::Map<_, _>>()
        });
        let closing = self
            .closing_line
            .map(|(events, lost)| json!({"events": events, "lost": lost}));
        json!({
            "kernel_ns_per_event": {
                "fathom": cost.and_then(Cost::fathom).map(|p| p.ns_per_run),
                "bpftrace": cost.and_then(Cost::bpftrace).map(|p| p.ns_per_run),
                "ratio": cost.and_then(Cost::ratio),
                "fathom_runs": cost.and_then(Cost::fathom).map(|p| p.runs),
                "bpftrace_runs": cost.and_then(Cost::bpftrace).map(|p| p.runs),
                "same_drops": cost.map(|c| c.together.is_some()),
                "alone": {
                    "fathom": cost.and_then(|c| c.fathom_alone).map(|p| p.ns_per_run),
                    "bpftrace": cost.and_then(|c| c.bpftrace_alone).map(|p| p.ns_per_run),
                    "ratio": cost.and_then(Cost::alone_ratio),
                },
                "fathom_all_programs_per_drop": cost.and_then(|c| c.fathom_all_ns_per_drop),
                "fathom_programs": programs,
                "storm_seconds_each": cost.map(|c| c.seconds_each),
                "senders": cost.map(|c| c.senders),
                "other_programs_on_every_drop": cost.map(|c| c.others.clone()),
            },
            "flood": {
                "generated": flood.map(|f| f.sent),
                "counted": flood.map(|f| f.counted),
                "delivered": flood.map(|f| f.delivered),
                "suppressed": flood.map(|f| f.suppressed),
                "lost": flood.map(|f| f.lost),
                "rate_per_s": flood.map(Flood::rate),
                "exact": flood.map(Flood::exact),
                "accounted": flood.map(Flood::accounted),
                "kfree_skb_hits": flood.map(|f| f.kfree_skb_hits),
                "reserved": flood.map(|f| f.reserved),
                "ring_had_other_events": flood.map(|f| f.ring_mixed),
                "kernel_udp_no_ports": flood.map(|f| f.kernel_no_ports),
                "counted_all_protocols": flood.map(|f| f.counted_all_protocols),
                "exported_since_start": flood.and_then(|f| f.exported),
                "counted_since_start": flood.map(|f| f.kernel_total),
                "counted_by_reason": by_reason,
                "drops_map_full": flood.map(|f| f.map_full),
                "send_errors": flood.map(|f| f.send_errors),
                "senders": flood.map(|f| f.senders),
                "seconds": flood.map(|f| f.seconds),
                "settled": flood.map(|f| f.settled),
                "rate_without_fathom_per_s": self.rate_without_fathom,
                "daemon_closing_line": closing,
            },
            "healthy": self.healthy.iter().map(|h| h.to_json()).collect::<Vec<_>>(),
            "daemon": {
                "cpu_s_per_million_events": daemon.map(|d| d.cpu_s_per_million),
                "peak_rss_bytes": daemon.map(|d| d.peak_rss),
                "idle_rss_bytes": idle.map(|i| i.rss),
                "idle_cpu_fraction": idle.map(|i| i.cpu_fraction),
                "flood_cpu_s": daemon.map(|d| d.cpu_s),
                "flood_peak_rss_sampled_bytes": daemon.map(|d| d.peak_rss_sampled),
                "idle_seconds": idle.map(|i| i.seconds),
                "idle_cpu_fraction_windows": idle.map(|i| i.cpu_fraction_windows.clone()),
                "idle_rss_anon_bytes": idle.map(|i| i.rss_anon),
                "idle_rss_file_bytes": idle.map(|i| i.rss_file),
                "idle_before_kills": self.idle_before_kills.as_ref().map(idle_json),
            },
            "scrape_ms": {
                "p50": scrape.map(|s| s.p50_ms),
                "p99": scrape.map(|s| s.p99_ms),
                "max": scrape.map(|s| s.max_ms),
                "scrapes": scrape.map(|s| s.scrapes),
                "body_bytes": scrape.map(|s| s.bytes),
                "pod_series": scrape.map(|s| s.series),
            },
            "pods": self.pods.as_ref().map(|p| json!({
                "pods": p.pods, "cgroups": p.cgroups, "create_s": p.create_s,
                "oom_killed": p.killed, "survived": p.survived,
                "kernel_oom_kills": p.kernel_oom_kills,
                "kill_s": p.kill_s, "series": p.series, "series_wait_s": p.series_wait_s,
            })),
            "connection_flood": self.conn_flood.as_ref().map(|c| c.to_json()),
            "reclaim": self.reclaim.as_ref().map(|c| c.to_json()),
            "detection": self.detection.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
            "startup_ms": median(&self.startup.serve_ready).map(ms),
            "startup": {
                "serve_ready_ms": durations(&self.startup.serve_ready),
                "serve_readyz_ms": durations(&self.startup.serve_readyz),
                "capture_ready_ms": durations(&self.startup.capture_ready),
                "serve_stop_ms": durations(&self.startup.serve_stop),
                "serve_ready_with_pods_ms": self.startup.serve_ready_with_pods.map(ms),
            },
            "targets": {
                "kernel_cost_ratio_max": TARGET_COST_RATIO,
                "idle_rss_bytes_max": TARGET_IDLE_RSS,
                "idle_cpu_fraction_max": TARGET_IDLE_CPU,
                "scrape_ms_max": TARGET_SCRAPE_MS,
            },
            "machine": self.machine,
            "config": self.config,
            "complete": self.complete,
            "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(median(&[d(3), d(1), d(2)]), Some(d(2)));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
    }

    #[test]
    fn an_empty_run_still_has_every_key() {
        let v = Results::default().to_json();
        for k in ["fathom", "bpftrace", "ratio"] {
            assert!(v["kernel_ns_per_event"].get(k).is_some(), "{k}");
        }
        for k in [
            "generated",
            "counted",
            "delivered",
            "suppressed",
            "lost",
            "rate_per_s",
        ] {
            assert!(v["flood"].get(k).is_some(), "{k}");
        }
        for k in [
            "cpu_s_per_million_events",
            "peak_rss_bytes",
            "idle_rss_bytes",
            "idle_cpu_fraction",
        ] {
            assert!(v["daemon"].get(k).is_some(), "{k}");
        }
        assert!(v["scrape_ms"].get("p50").is_some() && v["scrape_ms"].get("p99").is_some());
        assert!(v.get("startup_ms").is_some());
    }
}
