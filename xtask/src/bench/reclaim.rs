//! What the reclaim-stall programs cost (issue 12): the BPF run statistics of fathom's four
//! `vmscan` programs over the pods phase's OOM kills. Every victim reclaims before it is
//! killed (it touches far more than its limit), so the kills are a real workload of memcg
//! reclaim stalls: one stall is one `*_reclaim_begin` and one `*_reclaim_end` run.

use std::collections::HashMap;

use anyhow::Result;
use serde_json::{Value, json};

use super::bpf::{self, BpfStatsGuard, ProgInfo};

/// One program's runs and kernel time over the measured period.
#[derive(Clone, Debug, Default)]
pub struct ProgRuns {
    pub name: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ReclaimCost {
    pub programs: Vec<ProgRuns>,
    /// Stalls counted: runs of the `*_end` programs.
    pub stalls: u64,
    /// Kernel time of all four programs per stall.
    pub ns_per_stall: f64,
}

impl ReclaimCost {
    pub fn to_json(&self) -> Value {
        json!({
            "stalls": self.stalls,
            "ns_per_stall": self.ns_per_stall,
            "programs": self.programs.iter().map(|p| json!({
                "name": p.name, "runs": p.runs, "ns_per_run": p.ns_per_run,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Runs `work` with BPF statistics on and measures the reclaim programs of process `pid`.
pub fn measure<T>(pid: i32, work: impl FnOnce() -> Result<T>) -> Result<(T, ReclaimCost)> {
    let (ids, _) = bpf::objects_of(pid)?;
    let stats = BpfStatsGuard::enable()?;
    let before = bpf::programs()?;
    let out = work()?;
    let after = bpf::programs()?;
    drop(stats);
    Ok((out, cost(&ids, &before, &after)))
}

fn cost(
    ids: &[u32],
    before: &HashMap<u32, ProgInfo>,
    after: &HashMap<u32, ProgInfo>,
) -> ReclaimCost {
    let mut c = ReclaimCost::default();
    let mut total_ns = 0u64;
    for id in ids {
        let (Some(a), b) = (after.get(id), before.get(id)) else {
            continue;
        };
        if !a.name.contains("reclaim") {
            continue;
        }
        let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt);
        let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
        total_ns += ns;
        if a.name.ends_with("_end") {
            c.stalls += runs;
        }
        c.programs.push(ProgRuns {
            name: a.name.clone(),
            runs,
            ns_per_run: if runs == 0 {
                0.0
            } else {
                ns as f64 / runs as f64
            },
        });
    }
    c.programs.sort_by(|a, b| a.name.cmp(&b.name));
    c.ns_per_stall = if c.stalls == 0 {
        0.0
    } else {
        total_ns as f64 / c.stalls as f64
    };
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, runs: u64, ns: u64) -> ProgInfo {
        ProgInfo {
            name: name.into(),
            run_time_ns: ns,
            run_cnt: runs,
        }
    }

    #[test]
    fn a_stall_is_an_end_run_and_costs_all_four_programs() {
        let before = HashMap::from([(1, info("memcg_reclaim_begin", 10, 1000))]);
        let after = HashMap::from([
            (1, info("memcg_reclaim_begin", 110, 11_000)),
            (2, info("memcg_reclaim_end", 100, 20_000)),
            (3, info("skb_kfree_skb", 5, 500)),
        ]);
        let c = cost(&[1, 2, 3], &before, &after);
        assert_eq!(c.stalls, 100);
        assert_eq!(c.programs.len(), 2);
        assert_eq!(c.programs[0].ns_per_run, 100.0);
        assert_eq!(c.programs[1].ns_per_run, 200.0);
        assert_eq!(c.ns_per_stall, 300.0);
    }
}
