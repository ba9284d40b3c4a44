//! Memory pressure per container, pod and cgroup (see [`crate::pressure`]):
//! - `fathom_memory_reclaim_stall_seconds{…,kind}`: histogram of reclaim stalls from the
//!   kernel's `RECLAIM` map (`kind` = `memcg`: the cgroup's own limit; `direct`: the node was
//!   short of memory), every memory cgroup that stalled;
//! - from the cgroup files, for every tracked cgroup with a memory limit:
//!   `fathom_memory_limit_hits_total`, `fathom_memory_high_events_total`,
//!   `fathom_memory_oom_events_total`, `fathom_memory_oom_kill_events_total`,
//!   `fathom_memory_pressure_stall_seconds_total{kind=some|full}` (PSI), and the gauges
//!   `fathom_memory_limit_bytes`, `fathom_memory_usage_bytes`, `fathom_memory_max_usage_bytes`;
//! - `fathom_memory_reclaim_uncounted_total{reason}`: stalls the kernel could not count.
//!
//! Counters go through [`CumulativeCounters`]: monotonic while a series lives, expiring like
//! the OOM series once the workload's cgroup is gone and `series_ttl` passed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use probe_common::{RECLAIM_BUCKETS, reclaim_bucket_upper_seconds};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, exemplar::Exemplar, gauge::ConstGauge},
};
use tracing::{debug, warn};

use super::{
    labels::{Anchor, LabelSource, WorkloadLabels},
    store::CumulativeCounters,
};
use crate::{
    attribution::{Attributor, Hierarchy},
    cgroup::Hierarchies,
    pipeline::Kernel,
    pressure::{
        files::CgroupDirs,
        kernel::{self, ReclaimStats},
        tracked::Tracked,
    },
};

/// Memory cgroups read at scrape time at most.
const MAX_TRACKED: usize = 4096;

/// Histogram slots after the buckets.
const SLOT_COUNT: u8 = RECLAIM_BUCKETS as u8;
const SLOT_SUM_NS: u8 = RECLAIM_BUCKETS as u8 + 1;

/// File counters (slot of the `files` store).
const LIMIT_HITS: u8 = 0;
const HIGH: u8 = 1;
const OOM: u8 = 2;
const OOM_KILL: u8 = 3;
const PSI_SOME_US: u8 = 4;
const PSI_FULL_US: u8 = 5;

type StallKey = (u64, u32, u8);
type StallLabels = (WorkloadLabels, &'static str, u8);

struct Gauge {
    labels: WorkloadLabels,
    limit: u64,
    usage: Option<u64>,
    max_usage: Option<u64>,
}

struct State {
    tracked: Tracked,
    stalls: CumulativeCounters<StallKey, StallLabels>,
    files: CumulativeCounters<(String, u8), (WorkloadLabels, u8)>,
    gauges: Vec<Gauge>,
    uncounted: ReclaimStats,
}

/// See the module docs.
pub struct MemoryPressure {
    kernel: Kernel,
    attributor: Attributor,
    labels: Arc<dyn LabelSource>,
    workload_labels: bool,
    hier: Hierarchies,
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryPressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPressure").finish_non_exhaustive()
    }
}

impl MemoryPressure {
    pub fn new(
        kernel: Kernel,
        attributor: Attributor,
        labels: Arc<dyn LabelSource>,
        hier: Hierarchies,
        ttl: Duration,
        workload_labels: bool,
    ) -> Self {
        Self {
            kernel,
            attributor,
            labels,
            workload_labels,
            hier,
            state: Mutex::new(State {
                tracked: Tracked::new(MAX_TRACKED),
                stalls: CumulativeCounters::new(ttl),
                files: CumulativeCounters::new(ttl),
                gauges: Vec::new(),
                uncounted: ReclaimStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn labels_of(&self, path: &str) -> (WorkloadLabels, Anchor) {
        if !self.workload_labels {
            return (WorkloadLabels::default(), Anchor::Host);
        }
        let w = self.attributor.by_cgroup_path(path);
        self.labels.memory_cgroup(path, &w)
    }

    /// Reads the kernel map and the tracked cgroups' files into the stores.
    fn update(&self, now: Instant) {
        let kernel = self.kernel.with_ebpf(|ebpf| {
            Ok::<_, crate::net_counters::CountersError>((
                kernel::stalls(ebpf)?,
                kernel::reclaim_stats(ebpf)?,
            ))
        });
        let mut st = self.lock();
        match kernel {
            Ok((stalls, stats)) => {
                st.uncounted = stats;
                let mut readings = Vec::with_capacity(stalls.len() * (RECLAIM_BUCKETS + 2));
                for ((id, kind), s) in &stalls {
                    let path = self.attributor.by_cgroup_id(Hierarchy::Memory, *id);
                    let (labels, anchor) = match path.as_deref() {
                        Some(p) => {
                            st.tracked.add(p);
                            self.labels_of(p)
                        }
                        // Not resolvable (yet): counted without workload labels.
                        None => (WorkloadLabels::default(), Anchor::Host),
                    };
                    let kind_name = kernel::kind_name(*kind);
                    let mut push = |slot: u8, v: u64| {
                        readings.push((
                            (*id, *kind, slot),
                            v,
                            (labels.clone(), kind_name, slot),
                            anchor.clone(),
                        ))
                    };
                    for (i, b) in s.buckets.iter().enumerate() {
                        push(i as u8, *b);
                    }
                    push(SLOT_COUNT, s.count);
                    push(SLOT_SUM_NS, s.total_ns);
                }
                st.stalls.observe(readings, now);
            }
            Err(e) => warn!(error = %e, "cannot read the reclaim stall map"),
        }

        for p in self.attributor.container_cgroups() {
            st.tracked.add(&p);
        }
        let Some(memory_root) = self.hier.memory.clone() else {
            return;
        };
        let unified_root = self.hier.unified.clone();
        let dirs = |p: &str| CgroupDirs::of(p, &memory_root, unified_root.as_deref());
        st.tracked.retain(|p| dirs(p).memory.is_dir());
        let mut readings = Vec::new();
        let mut gauges = Vec::new();
        let paths: Vec<String> = st.tracked.paths().map(str::to_string).collect();
        for p in paths {
            let d = dirs(&p);
            // One read first: cgroups without a limit are not reported.
            if d.limit_bytes().is_none() {
                continue;
            }
            let f = d.read();
            let Some(limit) = f.limit_bytes else { continue };
            let (labels, anchor) = self.labels_of(&p);
            let counters = [
                (LIMIT_HITS, f.limit_hits),
                (HIGH, f.high_events),
                (OOM, f.oom_events),
                (OOM_KILL, f.oom_kill_events),
                (PSI_SOME_US, f.psi.map(|x| x.some_total_us)),
                (PSI_FULL_US, f.psi.map(|x| x.full_total_us)),
            ];
            for (slot, v) in counters {
                if let Some(v) = v {
                    readings.push(((p.clone(), slot), v, (labels.clone(), slot), anchor.clone()));
                }
            }
            if self.workload_labels {
                gauges.push(Gauge {
                    labels,
                    limit,
                    usage: f.usage_bytes,
                    max_usage: f.max_usage_bytes,
                });
            }
        }
        st.files.observe(readings, now);
        st.gauges = gauges;
        let live = |a: &Anchor| self.labels.is_alive(a);
        let expired = st.stalls.expire(now, &live) + st.files.expire(now, &live);
        if expired > 0 {
            debug!(expired, "memory pressure series of gone workloads expired");
        }
    }
}

fn workload_pairs(l: &WorkloadLabels) -> [(&'static str, &str); 4] {
    let [a, b, c, d] = l.values();
    [
        ("namespace", a),
        ("pod", b),
        ("container", c),
        ("cgroup", d),
    ]
}

impl Collector for MemoryPressure {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.update(Instant::now());
        let st = self.lock();

        let mut f = encoder.encode_descriptor(
            "fathom_memory_reclaim_stall_seconds",
            "Time tasks stalled in memory reclaim, charged to their memory cgroup (kind: memcg = the cgroup's own limit, direct = the node short of memory), from the vmscan tracepoints",
            None,
            MetricType::Histogram,
        )?;
        // Group the store's (labels, kind, slot) series into one histogram each.
        let mut hist: Vec<((WorkloadLabels, &'static str), [u64; RECLAIM_BUCKETS + 2])> =
            Vec::new();
        for ((labels, kind, slot), v) in st.stalls.store().snapshot() {
            let key = (labels, kind);
            match hist.last_mut() {
                Some((k, slots)) if *k == key => slots[slot as usize] = v,
                _ => {
                    let mut slots = [0u64; RECLAIM_BUCKETS + 2];
                    slots[slot as usize] = v;
                    hist.push((key, slots));
                }
            }
        }
        for ((labels, kind), slots) in &hist {
            let [a, b, c, d] = workload_pairs(labels);
            let set = [a, b, c, d, ("kind", *kind)];
            let buckets: Vec<(f64, u64)> = (0..RECLAIM_BUCKETS)
                .map(|i| (reclaim_bucket_upper_seconds(i), slots[i]))
                .collect();
            f.encode_family(&set)?.encode_histogram::<NoLabelSet>(
                slots[SLOT_SUM_NS as usize] as f64 / 1e9,
                slots[SLOT_COUNT as usize],
                &buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }

        let snapshot = st.files.store().snapshot();
        for (name, slot, help) in [
            (
                "fathom_memory_limit_hits",
                LIMIT_HITS,
                "Times the cgroup's memory usage hit its limit (cgroup v2 memory.events max; v1 memory.failcnt: failed charges), for containers, pods and cgroups with a memory limit",
            ),
            (
                "fathom_memory_high_events",
                HIGH,
                "Times usage went over memory.high and the cgroup was throttled into reclaim (cgroup v2 memory.events high)",
            ),
            (
                "fathom_memory_oom_events",
                OOM,
                "Times the cgroup's OOM killer ran (cgroup v2 memory.events oom), whether or not it killed",
            ),
            (
                "fathom_memory_oom_kill_events",
                OOM_KILL,
                "Processes the kernel OOM-killed in the cgroup, by its own count (memory.events oom_kill; v1 memory.oom_control oom_kill)",
            ),
        ] {
            let mut f = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((labels, s), v) in &snapshot {
                if *s == slot {
                    ConstCounter::new(*v).encode(f.encode_family(&workload_pairs(labels))?)?;
                }
            }
        }
        let mut f = encoder.encode_descriptor(
            "fathom_memory_pressure_stall_seconds",
            "PSI memory stall of the cgroup (memory.pressure total; some: at least one task stalled, full: all non-idle tasks stalled at once)",
            None,
            MetricType::Counter,
        )?;
        for ((labels, s), v) in &snapshot {
            let kind = match *s {
                PSI_SOME_US => "some",
                PSI_FULL_US => "full",
                _ => continue,
            };
            let [a, b, c, d] = workload_pairs(labels);
            ConstCounter::new(*v as f64 / 1e6).encode(f.encode_family(&[
                a,
                b,
                c,
                d,
                ("kind", kind),
            ])?)?;
        }

        type Get = fn(&Gauge) -> Option<u64>;
        for (name, help, get) in [
            (
                "fathom_memory_limit_bytes",
                "The cgroup's memory limit (memory.max / memory.limit_in_bytes), for cgroups with one",
                (|g| Some(g.limit)) as Get,
            ),
            (
                "fathom_memory_usage_bytes",
                "The cgroup's memory usage (memory.current / memory.usage_in_bytes)",
                (|g| g.usage) as Get,
            ),
            (
                "fathom_memory_max_usage_bytes",
                "Highest memory usage the cgroup reached (memory.peak, Linux 5.19+; v1 memory.max_usage_in_bytes)",
                (|g| g.max_usage) as Get,
            ),
        ] {
            let mut f = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in &st.gauges {
                if let Some(v) = get(g) {
                    ConstGauge::new(v as i64)
                        .encode(f.encode_family(&workload_pairs(&g.labels))?)?;
                }
            }
        }

        let mut f = encoder.encode_descriptor(
            "fathom_memory_reclaim_uncounted",
            "Reclaim stalls the kernel programs could not count (map_full: the RECLAIM map was full; unmatched_end: an end without its begin, e.g. right after attaching)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(st.uncounted.map_full)
            .encode(f.encode_family(&[("reason", "map_full")])?)?;
        ConstCounter::new(st.uncounted.unmatched_end)
            .encode(f.encode_family(&[("reason", "unmatched_end")])?)?;
        Ok(())
    }
}
