//! Kernel cost per event: the mean run time of fathom's drop program (`skb_kfree_skb`, tp_btf)
//! and of a bpftrace one-liner doing the equivalent in-kernel aggregation (drops counted by
//! reason in a per-CPU map), from the kernel's own BPF run statistics: `run_time_ns` and
//! `run_cnt` of `bpftool prog show`, before and after a storm, with `kernel.bpf_stats_enabled`
//! on for that storm only (the guard restores it).
//!
//! Three storms of the same length and senders: bpftrace alone, both attached at once (the
//! headline: both programs run on the very same drops, one after the other), fathom alone.
//! The two "alone" figures show whether running side by side changed either.

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    bpf::{self, BpfStatsGuard},
    flood::{self, Netns, Storm},
    process::Spawned,
    signals,
};

/// The bpftrace side: the equivalent aggregation (drops by reason).
pub const BPFTRACE_PROGRAM: &str = "tracepoint:skb:kfree_skb { @[args->reason] = count(); }";
/// fathom's drop program.
pub const FATHOM_DROP_PROGRAM: &str = "skb_kfree_skb";

/// Run time and runs of one program over one storm.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgCost {
    pub ns_per_run: f64,
    pub runs: u64,
    pub total_ns: u64,
}

/// Every program's cost over one storm, by program id.
pub struct Measured {
    pub storm: Storm,
    pub progs: HashMap<u32, ProgCost>,
    /// Names of programs that ran (for spotting other kfree_skb hooks).
    pub names: HashMap<u32, String>,
}

impl Measured {
    pub fn of(&self, id: u32) -> Option<ProgCost> {
        self.progs.get(&id).copied().filter(|c| c.runs > 0)
    }
}

/// One storm with BPF stats on; the run statistics of every program over it.
pub fn measured_storm(ns: &Netns, senders: usize, d: Duration) -> Result<Measured> {
    let stats = BpfStatsGuard::enable()?;
    if stats.previous() != "0" {
        eprintln!(
            "bench: kernel.bpf_stats_enabled was already {}: someone else measures too",
            stats.previous()
        );
    }
    let before = bpf::programs()?;
    let storm = flood::storm(ns, senders, d, || Ok(()))?;
    let after = bpf::programs()?;
    drop(stats);
    let mut progs = HashMap::new();
    let mut names = HashMap::new();
    for (id, a) in &after {
        let (t0, c0) = before
            .get(id)
            .map_or((0, 0), |b| (b.run_time_ns, b.run_cnt));
        let (t, c) = (
            a.run_time_ns.saturating_sub(t0),
            a.run_cnt.saturating_sub(c0),
        );
        progs.insert(
            *id,
            ProgCost {
                ns_per_run: if c == 0 {
                    f64::NAN
                } else {
                    t as f64 / c as f64
                },
                runs: c,
                total_ns: t,
            },
        );
        if c > 0 {
            names.insert(*id, a.name.clone());
        }
    }
    Ok(Measured {
        storm,
        progs,
        names,
    })
}

/// A running `bpftrace -e BPFTRACE_PROGRAM` and its program's id.
pub struct Bpftrace {
    process: Spawned,
    pub prog: u32,
}

impl Bpftrace {
    pub fn start() -> Result<Self> {
        let mut process = Spawned::spawn(
            "bpftrace",
            Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]),
            "Attaching",
            // bpftrace prints its maps and detaches on SIGINT.
            libc::SIGINT,
        )?;
        process.wait_ready(Duration::from_secs(60))?;
        // "Attaching…" comes before the attach: wait for the perf event to carry the program.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(prog) = bpf::perf_tracepoint_progs(process.pid(), "kfree_skb")?.first() {
                return Ok(Self {
                    process,
                    prog: *prog,
                });
            }
            if Instant::now() >= deadline {
                bail!(
                    "bpftrace did not attach to skb:kfree_skb:\n{}",
                    process.output()
                );
            }
            signals::sleep(Duration::from_millis(50))?;
        }
    }

    pub fn stop(mut self) -> Result<()> {
        self.process.stop(Duration::from_secs(10))?;
        Ok(())
    }
}

/// The figures of the three storms.
#[derive(Clone, Debug, Default)]
pub struct Cost {
    pub seconds_each: f64,
    pub senders: usize,
    /// Both attached, same drops: (fathom, bpftrace).
    pub together: Option<(ProgCost, ProgCost)>,
    pub fathom_alone: Option<ProgCost>,
    pub bpftrace_alone: Option<ProgCost>,
    /// Every fathom program's run time per drop, fathom alone.
    pub fathom_all_ns_per_drop: Option<f64>,
    /// (program, ns per run, runs per drop), fathom alone.
    pub per_program: Vec<(String, f64, f64)>,
    /// Programs not ours that ran as often as a kfree_skb hook (other tools, parallel runs).
    pub others: Vec<String>,
}

impl Cost {
    /// Headline figures: the side-by-side storm when there was one, else the lone ones.
    pub fn fathom(&self) -> Option<ProgCost> {
        self.together.map(|t| t.0).or(self.fathom_alone)
    }

    pub fn bpftrace(&self) -> Option<ProgCost> {
        self.together.map(|t| t.1).or(self.bpftrace_alone)
    }

    pub fn ratio(&self) -> Option<f64> {
        Some(self.fathom()?.ns_per_run / self.bpftrace()?.ns_per_run)
    }

    pub fn alone_ratio(&self) -> Option<f64> {
        Some(self.fathom_alone?.ns_per_run / self.bpftrace_alone?.ns_per_run)
    }

    /// Assembles the figures; `fathom_progs` are (name, id) of fathom's programs.
    pub fn from_storms(
        fathom_progs: &[(String, u32)],
        bpftrace_prog: Option<u32>,
        bt_alone: Option<&Measured>,
        together: Option<&Measured>,
        fathom_alone: Option<&Measured>,
    ) -> Self {
        let drop_id = fathom_progs
            .iter()
            .find(|(n, _)| n == FATHOM_DROP_PROGRAM)
            .map(|(_, id)| *id);
        let any = bt_alone.or(together).or(fathom_alone);
        let mut c = Cost {
            seconds_each: any.map_or(0.0, |m| m.storm.elapsed.as_secs_f64()),
            senders: any.map_or(0, |m| m.storm.senders),
            ..Cost::default()
        };
        if let (Some(m), Some(f), Some(b)) = (together, drop_id, bpftrace_prog) {
            c.together = m.of(f).zip(m.of(b));
        }
        c.bpftrace_alone = bt_alone.zip(bpftrace_prog).and_then(|(m, b)| m.of(b));
        if let (Some(m), Some(f)) = (fathom_alone, drop_id) {
            c.fathom_alone = m.of(f);
            if let Some(drops) = c.fathom_alone.map(|d| d.runs) {
                let mut all = 0;
                for (name, id) in fathom_progs {
                    let p = m.of(*id).unwrap_or_default();
                    all += p.total_ns;
                    c.per_program
                        .push((name.clone(), p.ns_per_run, p.runs as f64 / drops as f64));
                }
                c.fathom_all_ns_per_drop = Some(all as f64 / drops as f64);
                // Another kfree_skb hook runs once per drop, like ours.
                let ours: Vec<u32> = fathom_progs.iter().map(|(_, id)| *id).collect();
                c.others = m
                    .names
                    .iter()
                    .filter(|(id, _)| !ours.contains(id))
                    .filter(|(id, _)| m.of(**id).is_some_and(|p| p.runs >= drops))
                    .map(|(id, name)| format!("{name} (id {id})"))
                    .collect();
            }
        }
        c
    }
}
