//! Memory pressure before the kill: reclaim stalls from the kernel, limit pressure from the
//! cgroup files, and what preceded an OOM kill.
//!
//! - [`kernel`]: the reclaim programs' `RECLAIM` map (stall histogram per memory cgroup and
//!   kind, exact at any rate) and their health counters;
//! - [`files`]: one cgroup's `memory.events` / `memory.failcnt`, limits, peak usage and PSI
//!   `memory.pressure`, read when asked;
//! - [`history`]: the kernel's stall totals sampled once a second, for "stall in the last
//!   10 s / 60 s";
//! - [`tracked`]: which cgroups the scrape-time collector reads (containers the attribution's
//!   process scan found, their pods, and cgroups that reclaimed), bounded and sticky while
//!   their directory exists;
//! - [`Tracker`]: what the pipeline owns: it samples the history, builds the `pressure` of an
//!   OOM kill event ([`OomPressure`]) and the `memory_pressure` capture events.

pub mod files;
pub mod history;
pub mod kernel;
pub mod tracked;

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{attribution::Workload, cgroup::Hierarchies, oom::OomKill};

use self::{files::CgroupDirs, history::StallHistory};

/// Memory cgroups whose recent stall is remembered at most.
const MAX_HISTORY: usize = 8192;

/// The victim's memory cgroup just before the kill (`"pressure"` of an `oom_kill` event).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OomPressure {
    /// The memory cgroup these figures describe (the victim's).
    pub cgroup: String,
    /// Reclaim stall of the cgroup's tasks in the 10 s / 60 s before the event was read, from
    /// the kernel (memcg + direct reclaim). `null` when the reclaim programs are not attached.
    pub stall_10s_seconds: Option<f64>,
    pub stall_60s_seconds: Option<f64>,
    /// All reclaim stall counted since fathom started.
    pub stall_total_seconds: Option<f64>,
    /// Times usage hit the limit since the cgroup was created (v2 `memory.events max`, v1
    /// `memory.failcnt`).
    pub limit_hits: Option<u64>,
    /// Highest usage seen (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`, Linux 5.19+).
    pub max_usage_bytes: Option<u64>,
    /// v2 `memory.events high` and `oom` (the OOM killer ran; `oom_kill` counts kills).
    pub high_events: Option<u64>,
    pub oom_events: Option<u64>,
    /// PSI of the cgroup2 directory: `some` running averages (percent) and totals (seconds).
    pub psi_some_avg10: Option<f64>,
    pub psi_some_avg60: Option<f64>,
    pub psi_some_total_seconds: Option<f64>,
    pub psi_full_total_seconds: Option<f64>,
}

// `OomKill` is `Eq`; these floats are finite figures (never NaN), so equality is total.
impl Eq for OomPressure {}

/// A container whose reclaim stall crossed the capture's threshold in the last second
/// (`"kind": "memory_pressure"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PressureEvent {
    pub time: String,
    pub kind: &'static str,
    /// Memory cgroup path ("/a/b"; empty when fathom could not resolve its id yet) and id.
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Reclaim stall per second of wall time over the interval (`0.25` = 250 ms/s).
    pub stall_per_second: f64,
    pub stall_seconds: f64,
    pub interval_seconds: f64,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub limit_hits: Option<u64>,
    #[serde(flatten)]
    pub workload: Workload,
}

/// See the module docs.
#[derive(Debug)]
pub struct Tracker {
    hier: Hierarchies,
    history: StallHistory,
    last_sample: Option<Instant>,
}

impl Tracker {
    pub fn new(hier: Hierarchies) -> Self {
        Self {
            hier,
            history: StallHistory::new(MAX_HISTORY),
            last_sample: None,
        }
    }

    /// Records the kernel's current totals (once a second).
    pub fn sample(&mut self, now: Instant, stalls: &HashMap<(u64, u32), kernel::Stalls>) {
        self.history.sample(now, &kernel::stall_ns_by_memcg(stalls));
        self.last_sample = Some(now);
    }

    /// Memory cgroups of `stalls` whose stall has not grown for `quiet` and that `exists`
    /// says are gone: their kernel keys can go (a long-running exporter must not let the map
    /// fill with the keys of deleted cgroups). Their series, unchanged that long, keep their
    /// value until they expire.
    pub fn gone_quiet(
        &self,
        stalls: &HashMap<(u64, u32), kernel::Stalls>,
        now: Instant,
        quiet: Duration,
        exists: impl Fn(u64) -> bool,
    ) -> std::collections::HashSet<u64> {
        stalls
            .keys()
            .map(|(id, _)| *id)
            .filter(|id| {
                self.history
                    .last_change(*id)
                    .is_some_and(|t| now.saturating_duration_since(t) >= quiet)
                    && !exists(*id)
            })
            .collect()
    }

    /// Memory cgroups whose stall in the interval ending at the latest sample is at least
    /// `threshold` per second: (id, stall, interval).
    pub fn over_threshold(&self, threshold: f64) -> Vec<(u64, Duration, Duration)> {
        let Some(now) = self.last_sample else {
            return Vec::new();
        };
        let mut v: Vec<_> = self
            .history
            .latest_growth(now)
            .into_iter()
            .filter(|(_, ns, dt)| {
                !dt.is_zero() && (*ns as f64 / 1e9) / dt.as_secs_f64() >= threshold
            })
            .map(|(id, ns, dt)| (id, Duration::from_nanos(ns), dt))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Directories of a memory-cgroup path.
    pub fn dirs(&self, memcg_path: &str) -> Option<CgroupDirs> {
        let m = self.hier.memory.as_deref()?;
        Some(CgroupDirs::of(memcg_path, m, self.hier.unified.as_deref()))
    }

    /// The pressure of `kill`'s victim memcg just before the kill. `current`: the kernel's
    /// stall totals read now (`None`: the reclaim programs are not loaded).
    pub fn before_kill(
        &self,
        kill: &OomKill,
        current: Option<&HashMap<(u64, u32), kernel::Stalls>>,
        now: Instant,
    ) -> Option<OomPressure> {
        let memcg = kill.memcg.as_ref()?;
        let path = memcg.path.clone()?;
        let id = memcg.id;
        let mut p = OomPressure {
            cgroup: path.clone(),
            ..Default::default()
        };
        if let Some(current) = current {
            let total = kernel::stall_ns_by_memcg(current).get(&id).copied();
            // Not in the history: the cgroup's first stall came after the latest sample (the
            // map is fathom's own, so all of it is recent), or it never stalled.
            let window = |w: Duration| {
                let d = self
                    .history
                    .stall_in(id, w, now, total)
                    .unwrap_or(Duration::from_nanos(total.unwrap_or(0)));
                Some(d.as_secs_f64())
            };
            p.stall_10s_seconds = window(Duration::from_secs(10));
            p.stall_60s_seconds = window(history::WINDOW);
            p.stall_total_seconds = Some(total.unwrap_or(0) as f64 / 1e9);
        }
        if let Some(d) = self.dirs(&path) {
            let f = d.read();
            p.limit_hits = f.limit_hits;
            p.max_usage_bytes = f.max_usage_bytes;
            p.high_events = f.high_events;
            p.oom_events = f.oom_events;
            // PSI of the v2 directory the victim sits in when that is not the root (hybrid
            // hosts whose runtime left cgroup2 alone have only the host's).
            let psi = match (&kill.victim.cgroup_path, d.memory_is_v2) {
                (_, true) => f.psi,
                (Some(v2), false) if v2 != "/" => self
                    .hier
                    .unified
                    .as_ref()
                    .map(|u| PathBuf::from(u).join(v2.trim_start_matches('/')))
                    .and_then(|dir| std::fs::read_to_string(dir.join("memory.pressure")).ok())
                    .and_then(|t| files::parse_psi(&t)),
                _ => None,
            };
            if let Some(psi) = psi {
                p.psi_some_avg10 = Some(psi.some_avg10);
                p.psi_some_avg60 = Some(psi.some_avg60);
                p.psi_some_total_seconds = Some(psi.some_total_us as f64 / 1e6);
                p.psi_full_total_seconds = Some(psi.full_total_us as f64 / 1e6);
            }
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalls(v: &[(u64, u64)]) -> HashMap<(u64, u32), kernel::Stalls> {
        v.iter()
            .map(|&(id, ns)| {
                let s = kernel::Stalls {
                    count: 1,
                    total_ns: ns,
                    ..Default::default()
                };
                ((id, probe_common::RECLAIM_KIND_MEMCG), s)
            })
            .collect()
    }

    #[test]
    fn only_gone_and_quiet_cgroups_are_forgotten_and_thresholds_pick_the_stalling() {
        let mut t = Tracker::new(Hierarchies::default());
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        t.sample(t0, &stalls(&[(1, 0), (2, 0), (3, 0)]));
        // 1 keeps stalling (500 ms/s), 2 and 3 are quiet; 3 is gone.
        t.sample(t0 + s, &stalls(&[(1, 500_000_000), (2, 0), (3, 0)]));
        let over = t.over_threshold(0.1);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].0, 1);
        assert_eq!(over[0].1, Duration::from_millis(500));
        let now = t0 + s * 700;
        let cur = stalls(&[(1, 500_000_000), (2, 0), (3, 0)]);
        let gone = t.gone_quiet(&cur, now, Duration::from_secs(600), |id| id != 3);
        assert_eq!(gone, [3].into_iter().collect());
        let gone = t.gone_quiet(&cur, t0 + s * 10, Duration::from_secs(600), |_| false);
        assert!(gone.is_empty(), "not quiet long enough");
    }
}
