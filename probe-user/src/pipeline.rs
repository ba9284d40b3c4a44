//! The event pipeline shared by `fathom capture` and `fathom serve`.
//!
//! [`Pipeline::start`] loads and attaches the kernel programs ([`loader`]) and owns what comes
//! out of them:
//! - the ring buffer `EVENTS`, read by [`Pipeline::run`] on a tokio [`AsyncFd`]; each record
//!   is decoded ([`events`]) and interpreted ([`crate::oom`]) into a typed [`Event`] and handed
//!   to an [`EventSink`] (capture's renderer, serve's metrics);
//! - the [`Kernel`] handle: the loaded `aya::Ebpf` (maps and programs) behind a lock, with the
//!   per-program attach status. Collectors read counter maps through it at scrape time.
//!
//! Dropping the pipeline and every [`Kernel`] clone drops the `Ebpf` object, which detaches the
//! programs (their links are file descriptors owned by it).

use std::{
    collections::HashMap,
    future::Future,
    ops::ControlFlow,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use probe_common::EventKind;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::{
    attribution::{AttributionConfig, Attributor, Hierarchy, Workload},
    cgroup::{Hierarchies, Resolver},
    clock::BootClock,
    events::{self, RawEvent, RawPacketDrop},
    loader::{self, LoadError, LoadOptions, ProgramStatus},
    net::{Topology, TopologyEvent},
    net_counters,
    netreport::{MismatchEvidence, MtuMismatchEvent, NetInterpreter, PacketDrop},
    oom::{OomInterpreter, OomKill},
};

/// Name of the ring buffer of event records.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU array, indexed by `EventKind`: records the ring buffer had no room for.
pub const EVENTS_LOST_MAP: &str = "EVENTS_LOST";
/// Per-CPU array, indexed by `EventKind`: records a rate limit kept out of the ring buffer.
pub const EVENTS_SUPPRESSED_MAP: &str = "EVENTS_SUPPRESSED";
/// Slots of the per-kind arrays above (`max_entries` in probe-ebpf's maps.rs).
const KIND_SLOTS: u32 = 8;

/// Records handled per wake-up before the stop signal is looked at again, so that a flood of
/// events cannot delay a SIGTERM.
const MAX_BATCH: usize = 1024;

/// Something the kernel reported, decoded and interpreted.
#[derive(Clone, Debug)]
pub enum Event {
    OomKill(OomKill),
    /// A sampled packet drop (`kind` `packet_drop` or `reassembly_failure`).
    PacketDrop(PacketDrop),
    MtuMismatch(MtuMismatchEvent),
    /// A memory cgroup whose reclaim stall crossed the capture's threshold.
    MemoryPressure(crate::pressure::PressureEvent),
}

/// What the pipeline starts besides the kernel programs.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub load: LoadOptions,
    /// Container / pod attribution (runtime sockets, cache bounds).
    pub attribution: AttributionConfig,
    /// Watch network namespaces and links (VXLAN devices, MTU mismatches).
    pub topology: bool,
    /// How long an OOM event may wait for the container runtime to name its container.
    pub oom_name_wait: Duration,
    /// Delete the reclaim keys of memory cgroups that are gone (the exporter, which runs for
    /// months); a capture keeps them for its closing summary. (A gone network namespace's
    /// keys are deleted by the exporter's network collector, after a scrape read them.)
    pub forget_gone_memcgs: bool,
    /// Emit [`Event::MemoryPressure`] for memory cgroups stalling at least this many seconds
    /// per second in reclaim (`None`: no such events).
    pub pressure_threshold: Option<f64>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            attribution: AttributionConfig::default(),
            topology: true,
            oom_name_wait: Duration::from_millis(300),
            forget_gone_memcgs: false,
            pressure_threshold: None,
        }
    }
}

/// How often the reclaim totals are sampled (pressure history, `memory_pressure` events).
const PRESSURE_INTERVAL: Duration = Duration::from_secs(1);

/// A gone memory cgroup's `RECLAIM` keys are deleted once its stall has not grown for this
/// long (checked every minute; only where `forget_gone_memcgs` is set: the exporter).
const RECLAIM_FORGET_AFTER: Duration = Duration::from_secs(600);

/// `memory_pressure` events produced per sampling interval at most; the rest are counted as
/// suppressed (the largest stalls go first).
const PRESSURE_EVENTS_PER_INTERVAL: usize = 10;

/// `memory_pressure` events produced (delivered to the sink) and refused by the rate limit.
/// They are made in userspace, so none is ever lost to a full ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PressureEventCounts {
    pub delivered: u64,
    pub suppressed: u64,
}

/// How often mismatched VXLAN devices are checked for traffic that proves the mismatch.
const EVIDENCE_INTERVAL: Duration = Duration::from_secs(2);

/// How long an MTU-mismatch event waits for its namespace's owner (a Docker network, a pod)
/// to be named: the topology sees a new overlay namespace's device before the runtime has
/// been asked whose it is. Named (or host) namespaces report at once.
const MISMATCH_NAME_WAIT: Duration = Duration::from_secs(2);

/// Heap trimming period, in evidence ticks (one minute).
const TRIM_EVERY_TICKS: u64 = 30;

/// Errors a sink may return; the pipeline stops and passes them on.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A consumer of [`Event`]s.
pub trait EventSink {
    /// Handles one event. `Break` ends [`Pipeline::run`] (e.g. `--count` reached, stdout gone).
    fn handle(&mut self, event: Event) -> Result<ControlFlow<()>, SinkError>;
}

/// Why [`Pipeline::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop future completed (signal, deadline).
    Stopped,
    /// The sink asked to stop.
    SinkDone,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the BPF object has no {0} map")]
    MissingMap(&'static str),
    #[error("cannot use the {name} map: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot poll the event ring buffer: {0}")]
    Ring(#[source] std::io::Error),
    #[error("event sink failed: {0}")]
    Sink(#[source] SinkError),
}

impl PipelineError {
    /// Errors the user fixes by changing how fathom is started (exit code 2): no kernel BTF.
    pub fn is_prerequisite(&self) -> bool {
        matches!(self, PipelineError::Load(LoadError::Btf(_)))
    }
}

/// `EventKind` as a metric label / log field: `OomKill` → `oom_kill`. Derived from the
/// variant's name so a new kind gets its stream name without touching this file.
pub fn stream_name(kind: EventKind) -> String {
    let name = format!("{kind:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Every event kind this build knows, in slot order.
pub fn event_kinds() -> impl Iterator<Item = EventKind> {
    (0..KIND_SLOTS).filter_map(EventKind::from_u32)
}

/// A per-stream counter read from one of the per-kind arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCount {
    pub stream: String,
    pub count: u64,
}

/// Kernel's run-time statistics of one program (`bpf_prog_info.run_time_ns` / `run_cnt`).
/// They only advance while BPF stats are enabled (sysctl `kernel.bpf_stats_enabled` or an
/// open `BPF_ENABLE_STATS` descriptor, see `serve --bpf-stats`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramRunStats {
    pub program: &'static str,
    pub run_time: Duration,
    pub run_count: u64,
}

struct KernelInner {
    ebpf: Mutex<Ebpf>,
    status: Vec<ProgramStatus>,
    /// Ring-buffer records read by the pipeline, indexed by `EventKind`.
    delivered: [std::sync::atomic::AtomicU64; KIND_SLOTS as usize],
}

/// Shared handle to the loaded programs and maps. Cheap to clone; the lock is held only while
/// a map is read, so scrapes and the event loop never wait on each other for long.
#[derive(Clone)]
pub struct Kernel(Arc<KernelInner>);

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("status", &self.0.status)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    fn new(ebpf: Ebpf, status: Vec<ProgramStatus>) -> Self {
        Self(Arc::new(KernelInner {
            ebpf: Mutex::new(ebpf),
            status,
            delivered: Default::default(),
        }))
    }

    fn count_delivered(&self, kind: EventKind) {
        if let Some(c) = self.0.delivered.get(kind as usize) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records the pipeline read from the ring buffer, per stream (with lost and suppressed,
    /// every record the kernel produced or refused is accounted for).
    pub fn events_delivered(&self) -> Vec<StreamCount> {
        event_kinds()
            .map(|kind| StreamCount {
                stream: stream_name(kind),
                count: self
                    .0
                    .delivered
                    .get(kind as usize)
                    .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed)),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Ebpf> {
        // A panic while holding the lock cannot leave a map half-read in a harmful way.
        self.0.ebpf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attach status of every program fathom knows, in attach order.
    pub fn status(&self) -> &[ProgramStatus] {
        &self.0.status
    }

    /// Names of the attached programs.
    pub fn attached(&self) -> Vec<&'static str> {
        self.0
            .status
            .iter()
            .filter(|s| s.attached)
            .map(|s| s.name)
            .collect()
    }

    /// Runs `f` with the loaded object, e.g. to read a counter map at scrape time.
    pub fn with_ebpf<R>(&self, f: impl FnOnce(&Ebpf) -> R) -> R {
        f(&self.lock())
    }

    /// Runs `f` with the loaded object mutably, e.g. to update a map userspace maintains.
    pub fn with_ebpf_mut<R>(&self, f: impl FnOnce(&mut Ebpf) -> R) -> R {
        f(&mut self.lock())
    }

    /// Per-stream sums of a per-CPU array indexed by `EventKind`. `None` when the object has no
    /// such map (an older object without rate limits has no `EVENTS_SUPPRESSED`).
    pub fn stream_counts(&self, map: &str) -> Option<Vec<StreamCount>> {
        self.with_ebpf(|ebpf| {
            let arr = PerCpuArray::<&MapData, u64>::try_from(ebpf.map(map)?).ok()?;
            Some(
                event_kinds()
                    .map(|kind| StreamCount {
                        stream: stream_name(kind),
                        count: arr
                            .get(&(kind as u32), 0)
                            .map(|v| v.iter().sum())
                            .unwrap_or(0),
                    })
                    .collect(),
            )
        })
    }

    /// Records lost because the ring buffer was full, per stream.
    pub fn events_lost(&self) -> Vec<StreamCount> {
        self.stream_counts(EVENTS_LOST_MAP).unwrap_or_default()
    }

    /// Total of [`Self::events_lost`].
    pub fn events_lost_total(&self) -> u64 {
        self.events_lost().iter().map(|s| s.count).sum()
    }

    /// Records kept out of the ring buffer by a rate limit, per stream (zeros when the object
    /// has no rate-limited stream).
    pub fn events_suppressed(&self) -> Vec<StreamCount> {
        self.stream_counts(EVENTS_SUPPRESSED_MAP)
            .unwrap_or_else(|| {
                event_kinds()
                    .map(|kind| StreamCount {
                        stream: stream_name(kind),
                        count: 0,
                    })
                    .collect()
            })
    }

    /// The kernel's run statistics of every loaded program.
    pub fn program_stats(&self) -> Vec<ProgramRunStats> {
        self.with_ebpf(|ebpf| {
            self.0
                .status
                .iter()
                .filter_map(|s| {
                    // Programs that failed to load have no fd and no info: skip them.
                    let info = ebpf.program(s.name)?.info().ok()?;
                    Some(ProgramRunStats {
                        program: s.name,
                        run_time: info.run_time(),
                        run_count: info.run_count(),
                    })
                })
                .collect()
        })
    }
}

/// The loaded programs and the ring-buffer reader, with the services that interpret what
/// they report: attribution, the network topology, drop classification.
pub struct Pipeline {
    kernel: Kernel,
    ring: AsyncFd<RingBuf<MapData>>,
    oom: OomInterpreter,
    net: Arc<NetInterpreter>,
    topology: Option<Arc<Topology>>,
    attributor: Attributor,
    oom_name_wait: Duration,
    forget_gone_memcgs: bool,
    /// Oversize counts last reported per mismatched VXLAN device.
    evidence: HashMap<(u32, u32), u64>,
    /// Mismatches whose namespace is not named yet, with the time to report them anyway.
    unnamed_mismatches: Vec<(tokio::time::Instant, crate::net::MtuMismatch)>,
    /// The VXLAN devices the VXLAN tc programs are attached to.
    vxlan_hooks: std::sync::Mutex<crate::net::tc_attach::VxlanHooks>,
    pressure: crate::pressure::Tracker,
    pressure_threshold: Option<f64>,
    pressure_events: PressureEventCounts,
    pressure_ticks: u64,
}

impl Pipeline {
    /// Loads and attaches the programs as `opts` says, with the default services.
    pub fn start(opts: &LoadOptions) -> Result<Self, PipelineError> {
        Self::start_with(&PipelineConfig {
            load: opts.clone(),
            ..PipelineConfig::default()
        })
    }

    /// Loads and attaches the programs and starts the services `cfg` asks for. Must run inside
    /// a tokio runtime.
    pub fn start_with(cfg: &PipelineConfig) -> Result<Self, PipelineError> {
        let opts = &cfg.load;
        let mut loaded = loader::load_with(opts)?;
        let map = loaded
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(PipelineError::MissingMap(EVENTS_MAP))?;
        let ring = RingBuf::try_from(map).map_err(|source| PipelineError::Map {
            name: EVENTS_MAP,
            source,
        })?;
        // SAFETY: the ring buffer's fd stays open as long as the AsyncFd owns the RingBuf, and
        // it is deregistered (AsyncFd's Drop) before the RingBuf closes it.
        // `register_with_interest` is what tokio >= 1.54 offers instead of the deprecated
        // `with_interest`.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| PipelineError::Ring(e.into_parts().1))?;
        let hier = Hierarchies::detect();
        let pressure = crate::pressure::Tracker::new(hier.clone());
        let oom = OomInterpreter::new(
            BootClock::new(),
            page_size(),
            hier.unified.clone().map(Resolver::new),
            hier.memory.clone().map(Resolver::new),
        );
        let net = Arc::new(NetInterpreter::new(
            std::mem::take(&mut loaded.drop_reasons),
            loaded.kallsyms.take(),
            BootClock::new(),
        ));
        // Loading parsed the kernel's BTF (several MiB, twice) and the symbol table; give the
        // freed heap back so an idle daemon's RSS is what it keeps, not what it once needed.
        trim_heap();
        let topology = cfg.topology.then(|| Arc::new(Topology::start()));
        Ok(Self {
            kernel: Kernel::new(loaded.ebpf, loaded.status),
            ring,
            oom,
            net,
            topology,
            attributor: Attributor::start(cfg.attribution.clone()),
            oom_name_wait: cfg.oom_name_wait,
            forget_gone_memcgs: cfg.forget_gone_memcgs,
            evidence: HashMap::new(),
            unnamed_mismatches: Vec::new(),
            vxlan_hooks: Default::default(),
            pressure,
            pressure_threshold: cfg.pressure_threshold,
            pressure_events: PressureEventCounts::default(),
            pressure_ticks: 0,
        })
    }

    /// `memory_pressure` events delivered and suppressed so far.
    pub fn pressure_events(&self) -> PressureEventCounts {
        self.pressure_events
    }

    /// Samples the reclaim totals; with a threshold, the events of cgroups over it.
    fn pressure_tick(&mut self) -> Vec<Event> {
        let Ok(stalls) = self.kernel.with_ebpf(crate::pressure::kernel::stalls) else {
            return Vec::new();
        };
        let now = std::time::Instant::now();
        self.pressure.sample(now, &stalls);
        self.pressure_ticks += 1;
        if self.forget_gone_memcgs && self.pressure_ticks.is_multiple_of(60) {
            let gone = self
                .pressure
                .gone_quiet(&stalls, now, RECLAIM_FORGET_AFTER, |id| {
                    self.attributor
                        .by_cgroup_id(Hierarchy::Memory, id)
                        .is_some()
                });
            if !gone.is_empty()
                && let Err(e) = self
                    .kernel
                    .with_ebpf_mut(|ebpf| crate::pressure::kernel::forget_memcgs(ebpf, &gone))
            {
                warn!(error = %e, "cannot remove gone memory cgroups' reclaim keys");
            }
        }
        let Some(threshold) = self.pressure_threshold else {
            return Vec::new();
        };
        let over = self.pressure.over_threshold(threshold);
        let mut out = Vec::new();
        for (i, (id, stall, interval)) in over.into_iter().enumerate() {
            if i >= PRESSURE_EVENTS_PER_INTERVAL {
                self.pressure_events.suppressed += 1;
                continue;
            }
            let path = self
                .attributor
                .by_cgroup_id(Hierarchy::Memory, id)
                .unwrap_or_default();
            let files = self
                .pressure
                .dirs(&path)
                .filter(|_| !path.is_empty() && path != "/")
                .map(|d| d.read())
                .unwrap_or_default();
            let workload = if path.is_empty() {
                Workload::default()
            } else {
                self.attributor.by_cgroup_path(&path)
            };
            self.pressure_events.delivered += 1;
            out.push(Event::MemoryPressure(crate::pressure::PressureEvent {
                time: jiff::Timestamp::now().to_string(),
                kind: "memory_pressure",
                cgroup: path,
                cgroup_id: id,
                stall_per_second: stall.as_secs_f64() / interval.as_secs_f64(),
                stall_seconds: stall.as_secs_f64(),
                interval_seconds: interval.as_secs_f64(),
                limit_bytes: files.limit_bytes,
                usage_bytes: files.usage_bytes,
                limit_hits: files.limit_hits,
                workload,
            }));
        }
        out
    }

    /// Drop classification and naming, shared with collectors.
    pub fn net_interpreter(&self) -> Arc<NetInterpreter> {
        self.net.clone()
    }

    /// The network topology service, when enabled.
    pub fn topology(&self) -> Option<Arc<Topology>> {
        self.topology.clone()
    }

    /// The attribution service (cheap to clone).
    pub fn attributor(&self) -> &Attributor {
        &self.attributor
    }

    /// Loads the topology's VXLAN devices and paths into the kernel's maps and attaches the
    /// VXLAN tc programs to new devices (detaching them from gone ones).
    fn sync_vxlan_map(&self) {
        let Some(t) = &self.topology else { return };
        let mut hooks = self.vxlan_hooks.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self
            .kernel
            .with_ebpf_mut(|ebpf| t.sync_vxlan_hooks(ebpf, &mut hooks))
        {
            warn!(error = %e, "cannot update the VXLAN device maps");
        }
    }

    fn mismatch_event(
        &self,
        m: crate::net::MtuMismatch,
        evidence: Option<MismatchEvidence>,
    ) -> Event {
        let workload = self.attributor.by_netns(m.netns).unwrap_or_default();
        Event::MtuMismatch(MtuMismatchEvent::new(m, evidence, workload))
    }

    /// The event of a new mismatch, or `None` while its namespace waits to be named (see
    /// [`MISMATCH_NAME_WAIT`]; [`Self::named_mismatches`] reports it later).
    fn new_mismatch(&mut self, m: crate::net::MtuMismatch) -> Option<Event> {
        let host = self.topology.as_ref().and_then(|t| t.snapshot().host_netns) == Some(m.netns);
        if host || self.attributor.by_netns(m.netns).is_some() {
            return Some(self.mismatch_event(m, None));
        }
        self.unnamed_mismatches
            .push((tokio::time::Instant::now() + MISMATCH_NAME_WAIT, m));
        None
    }

    /// The waiting mismatches that are named now or have waited long enough.
    fn named_mismatches(&mut self) -> Vec<Event> {
        let now = tokio::time::Instant::now();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unnamed_mismatches)
            .into_iter()
            .partition(|(deadline, m)| {
                *deadline <= now || self.attributor.by_netns(m.netns).is_some()
            });
        self.unnamed_mismatches = waiting;
        ready
            .into_iter()
            .map(|(_, m)| self.mismatch_event(m, None))
            .collect()
    }

    /// Mismatched devices whose oversize count grew since the last report.
    fn mismatch_evidence(&mut self) -> Vec<Event> {
        let Some(t) = &self.topology else {
            return Vec::new();
        };
        let snap = t.snapshot();
        if snap.mismatches.is_empty() {
            return Vec::new();
        }
        let Ok(ifs) = self.kernel.with_ebpf(net_counters::vxlan_devices) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in &snap.mismatches {
            // The namespace that holds the inode now (a gone one's device may have had the
            // same ifindex): the cookie the topology read, where it has one.
            let cookie = snap.netns(m.netns).and_then(|n| n.cookie);
            let oversize: u64 = ifs
                .iter()
                .filter(|(k, _)| {
                    k.netns == m.netns
                        && k.ifindex == m.ifindex
                        && cookie.is_none_or(|c| k.netns_cookie == 0 || k.netns_cookie == c)
                })
                .map(|(_, c)| c.oversize)
                .sum();
            let last = self
                .evidence
                .get(&(m.netns, m.ifindex))
                .copied()
                .unwrap_or(0);
            if oversize > last {
                self.evidence.insert((m.netns, m.ifindex), oversize);
                out.push((m.clone(), oversize, oversize - last));
            }
        }
        out.into_iter()
            .map(|(m, total, new)| {
                self.mismatch_event(
                    m,
                    Some(MismatchEvidence {
                        oversize_packets: total,
                        oversize_packets_new: new,
                    }),
                )
            })
            .collect()
    }

    /// Names a drop and attributes it by network namespace, else by the socket's cgroup.
    fn packet_drop(&self, d: &RawPacketDrop) -> PacketDrop {
        let snap = self.topology.as_ref().map(|t| t.snapshot());
        let mut e = self.net.drop_event(d, snap.as_deref());
        e.workload = self
            .attributor
            .by_netns(d.key.netns)
            .or_else(|| {
                (d.sk_cgroup_id != 0)
                    .then(|| {
                        self.attributor
                            .by_cgroup_id(Hierarchy::Unified, d.sk_cgroup_id)
                    })
                    .flatten()
                    .map(|p| self.attributor.by_cgroup_path(&p))
            })
            .unwrap_or_default();
        e
    }

    /// Completes an OOM kill's workload with runtime names, waiting a bounded time.
    async fn name_oom(&self, mut k: OomKill) -> OomKill {
        if let Some(path) = k.attribution_path.clone() {
            let w: Workload = self
                .attributor
                .resolve_cgroup_path(&path, self.oom_name_wait)
                .await;
            if !w.is_empty() {
                k.workload = w;
            }
        }
        k
    }

    /// The victim memcg's pressure just before the kill (read as the event arrives).
    fn oom_pressure(&self, mut k: OomKill) -> OomKill {
        let current = self.kernel.with_ebpf(crate::pressure::kernel::stalls).ok();
        k.pressure = self
            .pressure
            .before_kill(&k, current.as_ref(), std::time::Instant::now())
            .map(Box::new);
        k
    }

    /// The shared handle to the loaded programs and maps.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Reads events into `sink` until `stop` completes, the sink breaks, or reading fails.
    /// Records that cannot be decoded are logged and skipped.
    pub async fn run<S: EventSink + ?Sized>(
        &mut self,
        sink: &mut S,
        stop: impl Future<Output = ()>,
    ) -> Result<RunEnd, PipelineError> {
        tokio::pin!(stop);
        // Topology: report what is already known, then follow changes.
        let mut topo_rx = match &self.topology {
            Some(t) => {
                let (snap, rx) = t.subscribe_with_snapshot();
                self.sync_vxlan_map();
                for m in snap.mismatches.clone() {
                    let Some(ev) = self.new_mismatch(m) else {
                        continue;
                    };
                    if sink.handle(ev).map_err(PipelineError::Sink)?.is_break() {
                        return Ok(RunEnd::SinkDone);
                    }
                }
                Some(rx)
            }
            None => None,
        };
        let mut evidence_tick = tokio::time::interval(EVIDENCE_INTERVAL);
        let mut pressure_tick = tokio::time::interval(PRESSURE_INTERVAL);
        pressure_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut naming_tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks: u64 = 0;
        evidence_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A stop request wins over pending records: SIGTERM must end us promptly.
                biased;
                _ = &mut stop => {
                    // Mismatches still waiting for a name are reported as they are.
                    for (_, m) in std::mem::take(&mut self.unnamed_mismatches) {
                        let ev = self.mismatch_event(m, None);
                        if sink.handle(ev).map_err(PipelineError::Sink)?.is_break() {
                            break;
                        }
                    }
                    return Ok(RunEnd::Stopped);
                }
                ev = recv_topology(&mut topo_rx) => {
                    let mut out = Vec::new();
                    match ev {
                        Some(Ok(TopologyEvent::VxlanAdded(_)))
                        | Some(Ok(TopologyEvent::VxlanRemoved(_)))
                        | Some(Ok(TopologyEvent::VxlanChanged(_))) => self.sync_vxlan_map(),
                        Some(Ok(TopologyEvent::MtuMismatch(m))) => {
                            self.sync_vxlan_map();
                            out.extend(self.new_mismatch(m));
                        }
                        Some(Ok(TopologyEvent::NetnsRemoved { netns })) => {
                            self.evidence.retain(|(ns, _), _| *ns != netns);
                        }
                        Some(Ok(_)) => {}
                        // Missed events: the snapshot is still right; resynchronise the map.
                        Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => self.sync_vxlan_map(),
                        Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) | None => topo_rx = None,
                    }
                    for ev in out {
                        if sink.handle(ev).map_err(PipelineError::Sink)?.is_break() {
                            return Ok(RunEnd::SinkDone);
                        }
                    }
                }
                _ = evidence_tick.tick() => {
                    ticks += 1;
                    // Bursts (a scrape of many series, a flood of samples) leave free heap
                    // behind; hand it back now and then.
                    if ticks.is_multiple_of(TRIM_EVERY_TICKS) {
                        trim_heap();
                    }
                    for ev in self.mismatch_evidence() {
                        if sink.handle(ev).map_err(PipelineError::Sink)?.is_break() {
                            return Ok(RunEnd::SinkDone);
                        }
                    }
                }
                _ = naming_tick.tick(), if !self.unnamed_mismatches.is_empty() => {
                    for ev in self.named_mismatches() {
                        if sink.handle(ev).map_err(PipelineError::Sink)?.is_break() {
                            return Ok(RunEnd::SinkDone);
                        }
                    }
                }
                _ = pressure_tick.tick() => {
                    for ev in self.pressure_tick() {
                        if sink.handle(ev).map_err(PipelineError::Sink)?.is_break() {
                            return Ok(RunEnd::SinkDone);
                        }
                    }
                }
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.map_err(PipelineError::Ring)?;
                    let rb = guard.get_inner_mut();
                    let mut batch = Vec::new();
                    let mut handled = 0;
                    let mut drained = false;
                    while handled < MAX_BATCH {
                        let Some(item) = rb.next() else {
                            drained = true;
                            break;
                        };
                        handled += 1;
                        // Copied out at once: the kernel reuses the record when `item` drops.
                        if let Some(raw) = decode(&item) {
                            self.kernel.count_delivered(match &raw {
                                RawEvent::OomKill(_) => EventKind::OomKill,
                                RawEvent::PacketDrop(_) => EventKind::PacketDrop,
                            });
                            batch.push(raw);
                        }
                    }
                    // Epoll readiness is edge-triggered: only clear it once the ring is empty,
                    // otherwise the next `readable_mut` returns at once for the rest.
                    if drained {
                        guard.clear_ready();
                    }
                    drop(guard);
                    for raw in batch {
                        let event = match raw {
                            RawEvent::OomKill(k) => {
                                let k = self.oom.interpret(&k);
                                let k = self.oom_pressure(k);
                                Event::OomKill(self.name_oom(k).await)
                            }
                            RawEvent::PacketDrop(d) => Event::PacketDrop(self.packet_drop(&d)),
                        };
                        if sink.handle(event).map_err(PipelineError::Sink)?.is_break() {
                            return Ok(RunEnd::SinkDone);
                        }
                    }
                }
            }
        }
    }
}

/// Next topology event, or never when there is no topology.
async fn recv_topology(
    rx: &mut Option<tokio::sync::broadcast::Receiver<TopologyEvent>>,
) -> Option<Result<TopologyEvent, tokio::sync::broadcast::error::RecvError>> {
    match rx {
        Some(rx) => Some(rx.recv().await),
        None => std::future::pending().await,
    }
}

/// Decodes one ring-buffer record; undecodable ones are logged and skipped.
fn decode(record: &[u8]) -> Option<RawEvent> {
    match events::decode(record) {
        Ok(ev) => Some(ev),
        Err(err) => {
            warn!(error = %err, "undecodable event");
            None
        }
    }
}

/// Decodes and interprets an OOM record (no attribution): for tests.
#[cfg(test)]
fn to_event(oom: &mut OomInterpreter, record: &[u8]) -> Option<Event> {
    match decode(record)? {
        RawEvent::OomKill(k) => Some(Event::OomKill(oom.interpret(&k))),
        RawEvent::PacketDrop(_) => None,
    }
}

/// Returns free heap pages to the kernel (glibc's `malloc_trim`; a no-op elsewhere).
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_snake_case() {
        assert_eq!(stream_name(EventKind::OomKill), "oom_kill");
        assert!(event_kinds().any(|k| k == EventKind::OomKill));
        for k in event_kinds() {
            let s = stream_name(k);
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }

    #[test]
    fn oom_records_become_oom_events_and_garbage_is_skipped() {
        let mut oom = OomInterpreter::new(BootClock::new(), 4096, None, None);
        let rec = crate::events::tests::as_bytes(&crate::events::tests::sample_record());
        let Some(Event::OomKill(k)) = to_event(&mut oom, &rec) else {
            panic!("no OOM event");
        };
        assert_eq!(k.victim.pid, 100);
        assert!(to_event(&mut oom, &[1, 2, 3]).is_none());
    }
}
