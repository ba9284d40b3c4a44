//! Reading the reclaim programs' in-kernel aggregates: `RECLAIM` (per-CPU hash keyed by memory
//! cgroup and kind) summed over CPUs, and the `RECLAIM_STATS` health counters.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use probe_common::{
    RECLAIM_BUCKETS, RECLAIM_KIND_DIRECT, RECLAIM_STAT_MAP_FULL, RECLAIM_STAT_UNMATCHED_END,
    ReclaimKey, ReclaimStall,
};
use std::collections::HashSet;

use crate::net_counters::CountersError;

/// `ReclaimKey::kind` as a label.
pub fn kind_name(kind: u32) -> &'static str {
    if kind == RECLAIM_KIND_DIRECT {
        "direct"
    } else {
        "memcg"
    }
}

/// One key's stalls, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalls {
    pub count: u64,
    pub total_ns: u64,
    pub buckets: [u64; RECLAIM_BUCKETS],
}

impl Default for Stalls {
    fn default() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            buckets: [0; RECLAIM_BUCKETS],
        }
    }
}

impl Stalls {
    pub fn add(&mut self, s: &ReclaimStall) {
        self.count += s.count;
        self.total_ns += s.total_ns;
        for (a, b) in self.buckets.iter_mut().zip(s.buckets.iter()) {
            *a += b;
        }
    }
}

/// `RECLAIM`: stalls per (memory cgroup id, kind). An empty map when the object has none.
pub fn stalls(ebpf: &aya::Ebpf) -> Result<HashMap<(u64, u32), Stalls>, CountersError> {
    const NAME: &str = "RECLAIM";
    let map = ebpf.map(NAME).ok_or(CountersError::MissingMap(NAME))?;
    let m: PerCpuHashMap<&MapData, ReclaimKey, ReclaimStall> =
        PerCpuHashMap::try_from(map).map_err(|source| CountersError::Map { name: NAME, source })?;
    let mut out: HashMap<(u64, u32), Stalls> = HashMap::new();
    for item in m.iter() {
        let (k, per_cpu) = item.map_err(|source| CountersError::Map { name: NAME, source })?;
        let s = out.entry((k.memcg_id, k.kind)).or_default();
        for c in per_cpu.iter() {
            s.add(c);
        }
    }
    Ok(out)
}

/// Stall time per memory cgroup id, both kinds together (ns).
pub fn stall_ns_by_memcg(stalls: &HashMap<(u64, u32), Stalls>) -> HashMap<u64, u64> {
    let mut out: HashMap<u64, u64> = HashMap::new();
    for ((id, _), s) in stalls {
        *out.entry(*id).or_default() += s.total_ns;
    }
    out
}

/// Health of the reclaim programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    /// Stalls not counted because `RECLAIM` was full.
    pub map_full: u64,
    /// Ends seen without their begin (not counted: unknown duration).
    pub unmatched_end: u64,
}

pub fn reclaim_stats(ebpf: &aya::Ebpf) -> Result<ReclaimStats, CountersError> {
    const NAME: &str = "RECLAIM_STATS";
    let map = ebpf.map(NAME).ok_or(CountersError::MissingMap(NAME))?;
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|source| CountersError::Map { name: NAME, source })?;
    let slot = |i: u32| -> Result<u64, CountersError> {
        m.get(&i, 0)
            .map(|v| v.iter().sum())
            .map_err(|source| CountersError::Map { name: NAME, source })
    };
    Ok(ReclaimStats {
        map_full: slot(RECLAIM_STAT_MAP_FULL)?,
        unmatched_end: slot(RECLAIM_STAT_UNMATCHED_END)?,
    })
}

/// Removes the `RECLAIM` keys of the memory cgroups in `gone`; returns how many.
pub fn forget_memcgs(ebpf: &mut aya::Ebpf, gone: &HashSet<u64>) -> Result<usize, CountersError> {
    const NAME: &str = "RECLAIM";
    let map = ebpf.map_mut(NAME).ok_or(CountersError::MissingMap(NAME))?;
    let mut m: PerCpuHashMap<&mut MapData, ReclaimKey, ReclaimStall> =
        PerCpuHashMap::try_from(map).map_err(|source| CountersError::Map { name: NAME, source })?;
    let keys: Vec<ReclaimKey> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| gone.contains(&k.memcg_id))
        .collect();
    Ok(keys.iter().filter(|k| m.remove(k).is_ok()).count())
}
