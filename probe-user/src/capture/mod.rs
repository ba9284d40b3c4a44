//! `fathom capture`: live events on a terminal (table) or as JSON lines, and on exit a
//! summary of the in-kernel counts gathered while it ran.

mod inventory;

use std::{io::Write, ops::ControlFlow, time::Duration};

use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tracing::warn;

use crate::{
    READY_MARKER,
    attribution::{AttributionConfig, Workload, WorkloadFilter},
    loader::LoadOptions,
    net_counters,
    netreport::{MtuMismatchEvent, NetTotals, PacketDrop},
    oom::OomKill,
    pcap::PcapWriter,
    pipeline::{Event, EventSink, Pipeline, PipelineConfig, SinkError},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line (see README, "JSON events").
    Json,
}

/// Families of events `--kind` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// OOM kills.
    Oom,
    /// Packet drops of every reason (reassembly failures included).
    Drop,
    /// IP fragmentation: reassembly failures.
    Frag,
    /// VXLAN: MTU mismatches and drops on VXLAN devices or of VXLAN packets.
    Vxlan,
    /// Memory pressure: memory cgroups stalling in reclaim above `--stall-threshold`.
    Pressure,
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub output: Output,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub btf_path: String,
    /// Event families to show (empty = all).
    pub kinds: Vec<Kind>,
    /// Drop reasons to show (names as in the JSON, e.g. NO_SOCKET; empty = all).
    pub reasons: Vec<String>,
    pub workload: WorkloadFilter,
    /// Print the in-kernel totals when the capture ends.
    pub summary: bool,
    /// Drop samples per second per CPU let into the ring buffer.
    pub drop_events_per_sec: u64,
    /// Burst allowance of that rate limit.
    pub drop_events_burst: u64,
    /// Runtime sockets and cache bounds of the attribution layer.
    pub attribution: AttributionConfig,
    /// Only network events of this network namespace (inode).
    pub netns: Option<u32>,
    /// Also write the dropped packets as pcapng here (`-`: to stdout, the events then go to
    /// stderr).
    pub pcap: Option<std::path::PathBuf>,
    /// `memory_pressure` events for memory cgroups stalling in reclaim at least this many
    /// seconds per second (0.1 = 100 ms/s).
    pub stall_threshold: f64,
}

/// Default of `--stall-threshold`: 100 ms of reclaim stall per second.
pub const DEFAULT_STALL_THRESHOLD: f64 = 0.1;

impl Default for CaptureOptions {
    fn default() -> Self {
        let load = LoadOptions::default();
        Self {
            output: Output::Table,
            duration: None,
            count: None,
            btf_path: load.btf_path,
            kinds: Vec::new(),
            reasons: Vec::new(),
            workload: WorkloadFilter::default(),
            summary: false,
            drop_events_per_sec: load.drop_events_per_sec,
            drop_events_burst: load.drop_events_burst,
            attribution: AttributionConfig::default(),
            netns: None,
            pcap: None,
            stall_threshold: DEFAULT_STALL_THRESHOLD,
        }
    }
}

/// Which events the options let through.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub kinds: Vec<Kind>,
    pub reasons: Vec<String>,
    pub workload: WorkloadFilter,
    /// Network namespace inode: only network events of it.
    pub netns: Option<u32>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        let want = |k: Kind| self.kinds.is_empty() || self.kinds.contains(&k);
        let kind_ok = match event {
            Event::OomKill(_) => want(Kind::Oom),
            Event::PacketDrop(d) => {
                want(Kind::Drop)
                    || (want(Kind::Frag) && d.cause.is_some())
                    || (want(Kind::Vxlan)
                        && (d.vxlan_device == Some(true)
                            || crate::drop_reason::is_vxlan_reason(&d.reason)
                            || d.packet.as_ref().is_some_and(|p| p.vxlan.is_some())))
            }
            Event::MtuMismatch(_) => want(Kind::Vxlan),
            Event::MemoryPressure(_) => want(Kind::Pressure),
        };
        if !kind_ok {
            return false;
        }
        if let Some(want) = self.netns {
            let netns = match event {
                Event::OomKill(_) | Event::MemoryPressure(_) => None,
                Event::PacketDrop(d) => Some(d.netns),
                Event::MtuMismatch(m) => Some(m.mismatch.netns),
            };
            if netns != Some(want) {
                return false;
            }
        }
        if !self.reasons.is_empty() {
            match event {
                Event::PacketDrop(d) => {
                    if !self
                        .reasons
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(&d.reason))
                    {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        self.workload.is_empty() || self.workload.matches(workload_of(event))
    }
}

fn workload_of(event: &Event) -> &Workload {
    match event {
        Event::OomKill(e) => &e.workload,
        Event::PacketDrop(e) => &e.workload,
        Event::MtuMismatch(e) => &e.workload,
        Event::MemoryPressure(e) => &e.workload,
    }
}

/// Renders events to a writer.
pub struct Renderer<W: Write> {
    out: W,
    output: Output,
    header_done: bool,
}

/// How long `capture` waits for the first topology scan before it reports ready.
const TOPOLOGY_WAIT: Duration = Duration::from_secs(15);

const TABLE_HEADER: &str =
    "TIME         KIND               WHERE                                    DETAILS";

impl<W: Write> Renderer<W> {
    pub fn new(out: W, output: Output) -> Self {
        Self {
            out,
            output,
            header_done: false,
        }
    }

    fn write<T: Serialize>(
        &mut self,
        value: &T,
        row: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                serde_json::to_writer(&mut self.out, value)?;
                writeln!(self.out)?;
            }
            Output::Table => {
                if !self.header_done {
                    writeln!(self.out, "{TABLE_HEADER}")?;
                    self.header_done = true;
                }
                writeln!(self.out, "{}", row())?;
            }
        }
        self.out.flush()
    }

    pub fn oom(&mut self, e: &OomKill) -> std::io::Result<()> {
        self.write(e, || oom_row(e))
    }

    pub fn drop(&mut self, e: &PacketDrop) -> std::io::Result<()> {
        self.write(e, || drop_row(e))
    }

    pub fn mismatch(&mut self, e: &MtuMismatchEvent) -> std::io::Result<()> {
        self.write(e, || mismatch_row(e))
    }

    pub fn event(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::OomKill(e) => self.oom(e),
            Event::PacketDrop(e) => self.drop(e),
            Event::MtuMismatch(e) => self.mismatch(e),
            Event::MemoryPressure(e) => self.write(e, || pressure_row(e)),
        }
    }

    /// The closing summary: one `"kind": "summary"` JSON line, or a few tables.
    pub fn summary(&mut self, s: &Summary) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                serde_json::to_writer(&mut self.out, s)?;
                writeln!(self.out)?;
            }
            Output::Table => {
                let t = &s.totals;
                writeln!(self.out, "\nSUMMARY (in-kernel counts while capturing)")?;
                writeln!(
                    self.out,
                    "{:<12} {:<28} {:>12} {:>14}",
                    "NETNS", "DROP REASON", "PACKETS", "BYTES"
                )?;
                for d in &t.drops {
                    writeln!(
                        self.out,
                        "{:<12} {:<28} {:>12} {:>14}",
                        d.netns, d.reason, d.packets, d.bytes
                    )?;
                }
                if !t.reassembly_failures.is_empty() {
                    writeln!(
                        self.out,
                        "{:<12} {:<28} {:>12}",
                        "NETNS", "REASSEMBLY FAILURE", "COUNT"
                    )?;
                    for r in &t.reassembly_failures {
                        writeln!(
                            self.out,
                            "{:<12} {:<28} {:>12}",
                            r.netns,
                            format!("{} ({})", r.cause, r.version),
                            r.packets
                        )?;
                    }
                }
                if !t.fragments.is_empty() {
                    writeln!(
                        self.out,
                        "{:<12} {:<16} {:<4} {:>12} {:>12}",
                        "NETNS", "DEVICE", "DIR", "FRAGMENTS", "DATAGRAMS"
                    )?;
                    for f in &t.fragments {
                        let dev = f
                            .device
                            .clone()
                            .unwrap_or_else(|| format!("if{}", f.ifindex));
                        writeln!(
                            self.out,
                            "{:<12} {:<16} {:<4} {:>12} {:>12}",
                            f.netns, dev, f.direction, f.packets, f.datagrams
                        )?;
                    }
                }
                if !t.vxlan.is_empty() {
                    writeln!(
                        self.out,
                        "{:<12} {:<16} {:>8} {:<4} {:>12} {:>10}",
                        "NETNS", "VXLAN", "VNI", "DIR", "PACKETS", "OVERSIZE"
                    )?;
                    for v in &t.vxlan {
                        let dev = v
                            .device
                            .clone()
                            .unwrap_or_else(|| format!("if{}", v.ifindex));
                        let vni = v.vni.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
                        writeln!(
                            self.out,
                            "{:<12} {:<16} {:>8} {:<4} {:>12} {:>10}",
                            v.netns, dev, vni, v.direction, v.packets, v.oversize
                        )?;
                    }
                }
                writeln!(
                    self.out,
                    "events: {} shown, {} suppressed by the rate limit, {} lost (ring full)",
                    s.events_shown, s.events_suppressed, s.events_lost
                )?;
                let p = &s.pressure_events;
                writeln!(
                    self.out,
                    "memory_pressure events: {} delivered, {} suppressed by the rate limit, {} lost",
                    p.delivered, p.suppressed, p.lost
                )?;
            }
        }
        self.out.flush()
    }
}

/// What `--summary` prints at the end (`"kind": "summary"`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    #[serde(flatten)]
    pub totals: NetTotals,
    /// Events printed (after filters).
    pub events_shown: u64,
    /// Drop samples the per-CPU rate limit kept out of the ring (their drops are counted).
    pub events_suppressed: u64,
    /// Events the full ring buffer refused.
    pub events_lost: u64,
    /// `memory_pressure` events: produced and handed to the output (then filtered like every
    /// event), refused by the per-second limit, lost (made in userspace: never).
    pub pressure_events: PressureEventTotals,
}

/// See [`Summary::pressure_events`].
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PressureEventTotals {
    pub delivered: u64,
    pub suppressed: u64,
    pub lost: u64,
}

/// Human-readable byte count (binary units).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

/// The place column's width: a label never makes a row wider (ends in `~` when cut).
const PLACE_WIDTH: usize = 40;

fn fit(s: String) -> String {
    if s.chars().count() <= PLACE_WIDTH {
        return s;
    }
    let mut t: String = s.chars().take(PLACE_WIDTH - 1).collect();
    t.push('~');
    t
}

/// `namespace/pod container` with names when known, short ids otherwise; a Swarm task as
/// `<service> task <task id prefix>`, a Docker network's namespace as `net <name>`. At most
/// [`PLACE_WIDTH`] characters.
pub fn workload_label(w: &Workload) -> Option<String> {
    workload_label_full(w).map(fit)
}

fn workload_label_full(w: &Workload) -> Option<String> {
    if let Some(n) = &w.network
        && w.container.is_none()
        && w.pod.is_none()
    {
        return Some(format!(
            "net {}",
            n.name.as_deref().unwrap_or(short(&n.id, 12))
        ));
    }
    if let Some(c) = &w.container
        && w.pod.is_none()
        && let Some(svc) = c.swarm.as_ref().and_then(|s| s.service.as_deref())
    {
        let task = c
            .swarm
            .as_ref()
            .and_then(|s| s.task.as_deref())
            .and_then(|t| t.rsplit('.').next())
            .map(|t| format!(" task {}", short(t, 8)))
            .unwrap_or_default();
        return Some(format!("{svc}{task}"));
    }
    let pod = w
        .pod
        .as_ref()
        .map(|p| match (&p.namespace, &p.name, &p.uid) {
            (Some(ns), Some(n), _) => format!("{ns}/{n}"),
            (None, Some(n), _) => n.clone(),
            (_, None, Some(uid)) => format!("pod {}", short(uid, 8)),
            _ => "pod ?".to_string(),
        });
    let ctr = w.container.as_ref().map(|c| match &c.name {
        Some(n) => n.clone(),
        None => format!("{} {}", c.runtime.as_str(), short(&c.id, 12)),
    });
    match (pod, ctr) {
        (Some(p), Some(c)) => Some(format!("{p} {c}")),
        (Some(p), None) => Some(p),
        (None, Some(c)) => Some(c),
        (None, None) => None,
    }
}

fn time_col(t: &str) -> &str {
    t.get(11..23).unwrap_or(t)
}

fn oom_row(e: &OomKill) -> String {
    let place = workload_label(&e.workload).unwrap_or_else(|| {
        e.memcg
            .as_ref()
            .and_then(|m| m.path.clone())
            .or_else(|| e.victim.cgroup_path.clone())
            .unwrap_or_else(|| "?".into())
    });
    let limit = e
        .memcg
        .as_ref()
        .map(|m| {
            format!(
                "usage={}/{} ",
                human_bytes(m.usage_bytes),
                m.limit_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "max".into())
            )
        })
        .unwrap_or_default();
    let group = e
        .oom_group
        .as_ref()
        .map(|g| format!(" group={}", g.path))
        .unwrap_or_default();
    format!(
        "{:<12} {:<18} {:<40} pid={} comm={} {}domain={}:{}{group} rss={} adj={} trigger={}({})",
        time_col(&e.time),
        e.kind,
        place,
        e.victim.pid,
        e.victim.comm,
        limit,
        e.oom_domain.scope.as_str(),
        e.oom_domain.path,
        human_bytes(e.rss_bytes.anon + e.rss_bytes.file + e.rss_bytes.shmem),
        e.oom_score_adj,
        e.trigger.pid,
        e.trigger.comm,
    )
}

fn drop_row(e: &PacketDrop) -> String {
    let place = workload_label(&e.workload).unwrap_or_else(|| {
        format!(
            "netns {} {}",
            e.netns,
            e.device.clone().unwrap_or_else(|| if e.ifindex == 0 {
                "-".into()
            } else {
                format!("if{}", e.ifindex)
            })
        )
    });
    let what = match &e.packet {
        Some(p) => {
            let ports = match (p.outer.src_port, p.outer.dst_port) {
                (Some(s), Some(d)) => format!(" {}:{s} > {}:{d}", p.outer.src, p.outer.dst),
                _ => format!(" {} > {}", p.outer.src, p.outer.dst),
            };
            let vx = p
                .vxlan
                .as_ref()
                .map(|v| {
                    let inner = v
                        .inner
                        .as_ref()
                        .map(|i| format!(" inner {} > {}", i.src, i.dst))
                        .unwrap_or_default();
                    format!(" vni={}{inner}", v.vni)
                })
                .unwrap_or_default();
            format!("{ports}{vx}")
        }
        None => String::new(),
    };
    let cause = e.cause.map(|c| format!(" cause={c}")).unwrap_or_default();
    format!(
        "{:<12} {:<18} {:<40} reason={}{cause} at={} len={}{what}",
        time_col(&e.time),
        e.kind,
        place,
        e.reason,
        e.location.as_deref().unwrap_or("?"),
        e.len,
    )
}

fn pressure_row(e: &crate::pressure::PressureEvent) -> String {
    let place = workload_label(&e.workload).unwrap_or_else(|| {
        if e.cgroup.is_empty() {
            format!("memcg {}", e.cgroup_id)
        } else {
            e.cgroup.clone()
        }
    });
    let usage = match (e.usage_bytes, e.limit_bytes) {
        (Some(u), Some(l)) => format!(" usage={}/{}", human_bytes(u), human_bytes(l)),
        (Some(u), None) => format!(" usage={}/max", human_bytes(u)),
        _ => String::new(),
    };
    let hits = e
        .limit_hits
        .map(|h| format!(" limit_hits={h}"))
        .unwrap_or_default();
    format!(
        "{:<12} {:<18} {:<40} stall={:.0}ms/s ({:.3}s in {:.1}s){usage}{hits}",
        time_col(&e.time),
        e.kind,
        place,
        e.stall_per_second * 1000.0,
        e.stall_seconds,
        e.interval_seconds,
    )
}

fn mismatch_row(e: &MtuMismatchEvent) -> String {
    let m = &e.mismatch;
    let place =
        workload_label(&e.workload).unwrap_or_else(|| format!("netns {} {}", m.netns, m.device));
    let evidence = e
        .evidence
        .map(|ev| {
            format!(
                " oversize={} (+{})",
                ev.oversize_packets, ev.oversize_packets_new
            )
        })
        .unwrap_or_default();
    format!(
        "{:<12} {:<18} {:<40} {} vni={} mtu={} > {} (underlay {} mtu {} - {}){evidence}",
        time_col(&e.time),
        e.kind,
        place,
        m.device,
        m.vni,
        m.mtu,
        m.max_mtu,
        m.underlay,
        m.underlay_mtu,
        m.overhead,
    )
}

/// Capture's sink: filters, renders (and writes dropped packets to the pcapng file), and
/// counts events against `--count`.
struct RenderSink {
    renderer: Renderer<Out>,
    pcap: Option<PcapWriter<Out>>,
    filter: EventFilter,
    count: Option<u64>,
    printed: u64,
}

impl RenderSink {
    fn output(&mut self, event: &Event) -> std::io::Result<()> {
        self.renderer.event(event)?;
        if let (Some(pcap), Event::PacketDrop(d)) = (self.pcap.as_mut(), event) {
            pcap.write(d)?;
        }
        Ok(())
    }
}

impl EventSink for RenderSink {
    fn handle(&mut self, event: Event) -> Result<ControlFlow<()>, SinkError> {
        if !self.filter.matches(&event) {
            return Ok(ControlFlow::Continue(()));
        }
        match self.output(&event) {
            Ok(()) => self.printed += 1,
            // The reader went away (`fathom capture | head`): a normal end, not an error.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(ControlFlow::Break(()));
            }
            Err(err) => return Err(err.into()),
        }
        Ok(if self.count.is_some_and(|c| self.printed >= c) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

type Out = Box<dyn Write>;

/// Where events and packets go: with `--pcap -` the packets take stdout and the events
/// move to stderr.
fn outputs(pcap: Option<&std::path::Path>) -> anyhow::Result<(Out, Option<PcapWriter<Out>>)> {
    use anyhow::Context;
    let Some(path) = pcap else {
        return Ok((Box::new(std::io::stdout().lock()), None));
    };
    if path.as_os_str() == "-" {
        let w = PcapWriter::new(Box::new(std::io::stdout().lock()) as Out)
            .context("writing pcapng to stdout")?;
        return Ok((Box::new(std::io::stderr()), Some(w)));
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let w = PcapWriter::new(Box::new(std::io::BufWriter::new(file)) as Out)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((Box::new(std::io::stdout().lock()), Some(w)))
}

/// Runs the capture until the duration, the count, Ctrl-C or SIGTERM ends it.
pub async fn run(opts: CaptureOptions) -> anyhow::Result<()> {
    // The output file first: a path that cannot be written fails before the programs load.
    let (out, pcap) = outputs(opts.pcap.as_deref())?;
    // Handlers first: a SIGTERM that arrives while loading must still end us cleanly.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut pipeline = Pipeline::start_with(&PipelineConfig {
        load: LoadOptions {
            btf_path: opts.btf_path.clone(),
            drop_events_per_sec: opts.drop_events_per_sec,
            drop_events_burst: opts.drop_events_burst,
        },
        attribution: opts.attribution.clone(),
        pressure_threshold: (opts.kinds.is_empty() || opts.kinds.contains(&Kind::Pressure))
            .then_some(opts.stall_threshold),
        ..PipelineConfig::default()
    })?;
    // The first topology scan names the devices of the namespaces that exist already; wait
    // for it (bounded) so that the first events carry them. It reads every namespace's links,
    // routes and FDB: on a busy node with many namespaces that took more than 5 s.
    if let Some(t) = pipeline.topology()
        && tokio::time::timeout(TOPOLOGY_WAIT, t.ready())
            .await
            .is_err()
    {
        warn!(
            "network topology not scanned within {} s; device names may be missing at first",
            TOPOLOGY_WAIT.as_secs()
        );
    }
    // A namespace asked for by --netns: its devices named before the first event (its `lo`,
    // ifindex 1 in every namespace, stands for its links), rescanning if the first scan
    // missed it (seen once on a busy host).
    if let (Some(t), Some(ns)) = (pipeline.topology(), opts.netns) {
        let named = async {
            while t.snapshot().link(ns, 1).is_none() {
                if t.rescan().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let _ = tokio::time::timeout(TOPOLOGY_WAIT, named).await;
    }
    // Fragment totals are the namespaces' own SNMP counters: read them before "ready", so
    // the summary has the growth after it.
    let frag_start = match (opts.summary, pipeline.topology()) {
        (true, Some(t)) => t.fragmem_now().await.ok(),
        _ => None,
    };
    eprintln!(
        "{READY_MARKER}: attached {}",
        pipeline.kernel().attached().join(", ")
    );
    let snapshot = pipeline.topology().map(|t| t.snapshot());
    eprintln!(
        "{}",
        inventory::Inventory::gather(snapshot.as_deref(), pipeline.attributor())
            .await
            .line()
    );

    let mut sink = RenderSink {
        renderer: Renderer::new(out, opts.output),
        pcap,
        filter: EventFilter {
            kinds: opts.kinds.clone(),
            reasons: opts.reasons.clone(),
            workload: opts.workload.clone(),
            netns: opts.netns,
        },
        count: opts.count,
        printed: 0,
    };
    let stop = async {
        let deadline = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
            _ = deadline => {}
        }
    };
    if opts.count != Some(0) {
        pipeline.run(&mut sink, stop).await?;
    }
    let kernel = pipeline.kernel();
    let lost = kernel.events_lost_total();
    if lost > 0 {
        warn!(lost, "events lost because the ring buffer was full");
    }
    if opts.summary {
        let expiry = kernel.attached().contains(&"reasm_expire");
        let mut totals =
            kernel.with_ebpf(|ebpf| -> Result<NetTotals, net_counters::CountersError> {
                let drops = net_counters::drops(ebpf)?;
                let ifs = net_counters::vxlan_devices(ebpf)?;
                let expired = if expiry {
                    Some(net_counters::expired(ebpf)?)
                } else {
                    None
                };
                let snap = pipeline.topology().map(|t| t.snapshot());
                Ok(pipeline.net_interpreter().totals_with(
                    &drops,
                    &ifs,
                    expired.as_ref(),
                    snap.as_deref(),
                ))
            })?;
        if let (Some(start), Some(t)) = (&frag_start, pipeline.topology()) {
            match t.fragmem_now().await {
                Ok(end) => {
                    totals.fragments = crate::netreport::fragments_from_snmp(start, &end);
                }
                Err(e) => warn!(error = %e, "fragment totals not read"),
            }
        }
        let suppressed = kernel.events_suppressed().iter().map(|s| s.count).sum();
        let p = pipeline.pressure_events();
        let summary = Summary {
            kind: "summary",
            totals,
            events_shown: sink.printed,
            events_suppressed: suppressed,
            events_lost: lost,
            pressure_events: PressureEventTotals {
                delivered: p.delivered,
                suppressed: p.suppressed,
                lost: 0,
            },
        };
        if let Err(e) = sink.renderer.summary(&summary)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(e.into());
        }
    }
    if let (Some(w), Some(path)) = (&sink.pcap, &opts.pcap) {
        let to = if path.as_os_str() == "-" {
            "stdout".to_string()
        } else {
            path.display().to_string()
        };
        eprintln!("fathom: {} packets written to {to}", w.written());
    }
    eprintln!("fathom: {} events, {lost} lost", sink.printed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::BootClock, oom::OomInterpreter};

    #[test]
    fn docker_labels_fit_the_place_column() {
        use crate::attribution::{ContainerInfo, NetworkInfo, SwarmInfo};
        let net = Workload {
            network: Some(NetworkInfo {
                id: "dolsmd8pb0abcdefghijklmno".into(),
                name: Some("backend".into()),
                driver: Some("overlay".into()),
            }),
            ..Default::default()
        };
        assert_eq!(workload_label(&net).as_deref(), Some("net backend"));
        let task = Workload {
            container: Some(ContainerInfo {
                id: "ab".repeat(32),
                runtime: crate::container::Runtime::Docker,
                name: Some("web.7s554dzr28lilgxhgukcujuhc.juyvyrgg3fhc4td8xu8437u54".into()),
                swarm: Some(SwarmInfo {
                    service: Some("web".into()),
                    task: Some("web.7s554dzr28lilgxhgukcujuhc.juyvyrgg3fhc4td8xu8437u54".into()),
                    node_id: None,
                }),
                compose: None,
            }),
            ..Default::default()
        };
        assert_eq!(workload_label(&task).as_deref(), Some("web task juyvyrgg"));
        let long = Workload {
            network: Some(NetworkInfo {
                id: "x".into(),
                name: Some("n".repeat(60)),
                driver: None,
            }),
            ..Default::default()
        };
        let l = workload_label(&long).unwrap();
        assert_eq!(l.chars().count(), PLACE_WIDTH);
        assert!(l.ends_with('~'));
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(64 << 20), "64.0MiB");
        assert_eq!(human_bytes(1536), "1.5KiB");
    }

    #[test]
    fn renders_json_lines_and_a_table() {
        let mut ev = crate::events::tests::sample_record();
        ev.header.boot_ns = 1;
        let crate::events::RawEvent::OomKill(k) =
            crate::events::decode(&crate::events::tests::as_bytes(&ev)).unwrap()
        else {
            panic!("not an OOM record")
        };
        let mut interp = OomInterpreter::new(BootClock::new(), 4096, None, None);
        let e = interp.interpret(&k);

        let mut buf = Vec::new();
        Renderer::new(&mut buf, Output::Json).oom(&e).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["victim"]["pid"], 100);
        assert_eq!(v["memcg"]["path"], "/a/b");

        let mut buf = Vec::new();
        let mut r = Renderer::new(&mut buf, Output::Table);
        r.oom(&e).unwrap();
        r.oom(&e).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "one header, two rows: {text}");
        assert!(lines[0].starts_with("TIME"));
        assert!(lines[1].contains("oom_kill") && lines[1].contains("alloc"));
        assert!(lines[1].contains("usage=64.0MiB/64.0MiB"), "{}", lines[1]);
    }
}
