//! Memory pressure per container, pod and cgroup (see [`crate::pressure`]):
//! - `fathom_memory_reclaim_stall_seconds{…,kind}`: histogram of reclaim stalls from the
//!   kernel's `RECLAIM` map (`kind` = `memcg`: the cgroup's own limit; `direct`: the node was
//!   short of memory), every memory cgroup that stalled;
//! - from the cgroup files, read in the background every [`FILES_EVERY`] (a scrape serves the
//!   last reading), for every tracked cgroup with a memory limit:
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
        files::{self, CgroupDirs},
        kernel::{self, ReclaimStats},
        tracked::Tracked,
    },
};

/// Memory cgroups whose files are read at most.
const MAX_TRACKED: usize = 4096;

/// How often the tracked cgroups' files are read, in the background: a scrape serves the last
/// reading instead of opening ~7 files per cgroup (with 2,000 limited cgroups that was most
/// of a 90 ms scrape here; read every 10 s it is ~0.4 % of a core). cAdvisor's housekeeping
/// reads cgroups on the same order of interval.
pub const FILES_EVERY: Duration = Duration::from_secs(10);

/// The kernel's buckets (bit lengths of microsecond units: upper bounds 1.024 µs · 2^i)
/// whose upper bound is an exported `le`, one in two — 32.8 µs, 131 µs, 524 µs, 2.1 ms,
/// 8.4 ms, 33.6 ms, 134 ms, 537 ms, 2.15 s — then `+Inf`. Ten buckets instead of the kernel's
/// 24: a histogram per container is 12 series, not 26 (a node with 1,000 limited pods
/// exported 7 MiB per scrape with all 24).
const EXPORTED_UPPER: [usize; 9] = [5, 7, 9, 11, 13, 15, 17, 19, 21];
const EXPORTED_BUCKETS: usize = EXPORTED_UPPER.len() + 1;

/// Histogram slots after the buckets.
const SLOT_COUNT: u8 = EXPORTED_BUCKETS as u8;
const SLOT_SUM_NS: u8 = EXPORTED_BUCKETS as u8 + 1;
const HISTOGRAM_SLOTS: usize = EXPORTED_BUCKETS + 2;

/// The kernel's bucket counts folded into the exported buckets (per bucket, not cumulative).
fn exported_buckets(kernel: &[u64; RECLAIM_BUCKETS]) -> [u64; EXPORTED_BUCKETS] {
    let mut out = [0u64; EXPORTED_BUCKETS];
    for (i, n) in kernel.iter().enumerate() {
        let j = EXPORTED_UPPER
            .iter()
            .position(|&u| i <= u)
            .unwrap_or(EXPORTED_BUCKETS - 1);
        out[j] += n;
    }
    out
}

/// Upper bound of exported bucket `j` in seconds.
fn exported_upper_seconds(j: usize) -> f64 {
    EXPORTED_UPPER
        .get(j)
        .map_or(f64::INFINITY, |&i| reclaim_bucket_upper_seconds(i))
}

/// File counters (slot of the `files` store).
const LIMIT_HITS: u8 = 0;
const HIGH: u8 = 1;
const OOM: u8 = 2;
const OOM_KILL: u8 = 3;
const PSI_SOME_US: u8 = 4;
const PSI_FULL_US: u8 = 5;

type StallKey = (u64, u32, u8);
/// Labels are shared by a workload's series (one allocation per cgroup and scrape, not one
/// per bucket): with 1,000 pods the copies were most of the daemon's memory.
type Labels = Arc<WorkloadLabels>;
type StallLabels = (Labels, &'static str, u8);

struct Gauge {
    labels: Labels,
    limit: u64,
    usage: Option<u64>,
    max_usage: Option<u64>,
}

struct State {
    tracked: Tracked,
    stalls: CumulativeCounters<StallKey, StallLabels>,
    files: CumulativeCounters<(Arc<str>, u8), (Labels, u8)>,
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

    fn labels_of(&self, path: &str) -> (Labels, Anchor) {
        if !self.workload_labels {
            return (Labels::default(), Anchor::Host);
        }
        let w = self.attributor.by_cgroup_path(path);
        let (labels, anchor) = self.labels.memory_cgroup(path, &w);
        (Arc::new(labels), anchor)
    }

    /// Reads the kernel map into the stall store (at scrape time: one map read).
    fn update_kernel(&self, now: Instant) {
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
                let mut readings = Vec::with_capacity(stalls.len() * HISTOGRAM_SLOTS);
                for ((id, kind), s) in &stalls {
                    let path = self.attributor.by_cgroup_id(Hierarchy::Memory, *id);
                    let (labels, anchor) = match path.as_deref() {
                        Some(p) => {
                            st.tracked.add(p);
                            self.labels_of(p)
                        }
                        // Not resolvable (yet): counted without workload labels.
                        None => (Labels::default(), Anchor::Host),
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
                    for (j, b) in exported_buckets(&s.buckets).into_iter().enumerate() {
                        push(j as u8, b);
                    }
                    push(SLOT_COUNT, s.count);
                    push(SLOT_SUM_NS, s.total_ns);
                }
                st.stalls.observe(readings, now);
            }
            Err(e) => warn!(error = %e, "cannot read the reclaim stall map"),
        }

        let live = |a: &Anchor| self.labels.is_alive(a);
        let expired = st.stalls.expire(now, &live);
        if expired > 0 {
            debug!(expired, "reclaim stall series of gone workloads expired");
        }
    }

    /// Reads the tracked cgroups' files into the stores (see [`FILES_EVERY`]). The state is
    /// locked only to take the list and to store the readings, not while the files are read.
    fn update_files(&self, now: Instant) {
        let Some(memory_root) = self.hier.memory.clone() else {
            return;
        };
        let paths: Vec<String> = {
            let mut st = self.lock();
            for p in self.attributor.container_cgroups() {
                st.tracked.add(&p);
            }
            st.tracked.paths().map(str::to_string).collect()
        };
        let unified_root = self.hier.unified.clone();
        let v2 = files::is_v2(&memory_root);
        let dirs = |p: &str| CgroupDirs::of_layout(p, &memory_root, v2, unified_root.as_deref());
        let mut readings = Vec::new();
        let mut gauges = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        for p in paths {
            let d = dirs(&p);
            // Cgroups without a limit are not reported (one read); a gone one is untracked.
            let Some(f) = d.read_if_limited() else {
                if !d.memory.is_dir() {
                    gone.push(p);
                }
                continue;
            };
            let Some(limit) = f.limit_bytes else { continue };
            let p: Arc<str> = p.into();
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
        let mut st = self.lock();
        if !gone.is_empty() {
            let gone: std::collections::HashSet<String> = gone.into_iter().collect();
            st.tracked.retain(|p| !gone.contains(p));
        }
        st.files.observe(readings, now);
        st.gauges = gauges;
        let live = |a: &Anchor| self.labels.is_alive(a);
        let expired = st.files.expire(now, &live);
        if expired > 0 {
            debug!(expired, "memory pressure series of gone workloads expired");
        }
    }

    /// Reads the cgroup files now and then every [`FILES_EVERY`] on a thread of its own,
    /// for as long as the collector lives.
    pub fn start_sampling(self: &Arc<Self>) {
        self.update_files(Instant::now());
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("fathom-pressure".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FILES_EVERY);
                    let Some(p) = weak.upgrade() else { return };
                    p.update_files(Instant::now());
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the cgroup-file sampler: limit and PSI series stay as first read");
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
        self.update_kernel(Instant::now());
        let st = self.lock();

        let mut f = encoder.encode_descriptor(
            "fathom_memory_reclaim_stall_seconds",
            "Time tasks stalled in memory reclaim, charged to their memory cgroup (kind: memcg = the cgroup's own limit, direct = the node short of memory), from the vmscan tracepoints",
            None,
            MetricType::Histogram,
        )?;
        // Group the store's (labels, kind, slot) series into one histogram each (hashed:
        // sorting every slot's series by their labels was a third of a scrape), then order
        // the histograms.
        let mut grouped: HashMap<(Labels, &'static str), [u64; HISTOGRAM_SLOTS]> = HashMap::new();
        for ((labels, kind, slot), v) in st.stalls.store().iter() {
            grouped
                .entry((labels.clone(), *kind))
                .or_insert([0; HISTOGRAM_SLOTS])[*slot as usize] = v;
        }
        let mut hist: Vec<_> = grouped.into_iter().collect();
        hist.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((labels, kind), slots) in &hist {
            let [a, b, c, d] = workload_pairs(labels);
            let set = [a, b, c, d, ("kind", *kind)];
            let buckets: Vec<(f64, u64)> = (0..EXPORTED_BUCKETS)
                .map(|j| (exported_upper_seconds(j), slots[j]))
                .collect();
            f.encode_family(&set)?.encode_histogram::<NoLabelSet>(
                slots[SLOT_SUM_NS as usize] as f64 / 1e9,
                slots[SLOT_COUNT as usize],
                &buckets,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )?;
        }

        // In the store's order: sorting every series by its labels was most of a scrape with
        // thousands of cgroups (string compares), and Prometheus takes a family's series in
        // any order.
        let snapshot: Vec<(&(Labels, u8), u64)> = st.files.store().iter().collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_buckets_fold_into_the_exported_ones() {
        let mut k = [0u64; RECLAIM_BUCKETS];
        k[0] = 1; // < 1 µs
        k[5] = 2; // < 32.8 µs: still the first exported bucket
        k[6] = 4; // < 65.5 µs: the second
        k[21] = 8; // < 2.15 s: the last finite one
        k[22] = 16; // < 4.3 s
        k[23] = 32; // beyond
        let e = exported_buckets(&k);
        assert_eq!(e[0], 3);
        assert_eq!(e[1], 4);
        assert_eq!(e[EXPORTED_BUCKETS - 2], 8);
        assert_eq!(e[EXPORTED_BUCKETS - 1], 48);
        assert_eq!(e.iter().sum::<u64>(), k.iter().sum::<u64>());
        assert_eq!(exported_upper_seconds(0), reclaim_bucket_upper_seconds(5));
        assert!((exported_upper_seconds(0) - 32.768e-6).abs() < 1e-12);
        assert!(exported_upper_seconds(EXPORTED_BUCKETS - 1).is_infinite());
        // Increasing bounds, as Prometheus requires.
        for j in 1..EXPORTED_BUCKETS {
            assert!(exported_upper_seconds(j) > exported_upper_seconds(j - 1));
        }
    }
}
