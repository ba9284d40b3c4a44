//! `cargo xtask bench`: what fathom costs, measured side by side with bpftrace in one run on
//! this machine, printed beside the targets and written to `target/bench/results.json`.
//!
//! Self-contained: it builds the release `fathom`, creates its own network namespace (the drop
//! storm's traffic stays on that namespace's loopback) and its own cgroups, and removes them on
//! every path out, Ctrl-C included; `kernel.bpf_stats_enabled` is restored after the one phase
//! that needs it. A slow machine gives slow figures, never a failure: targets are reported,
//! not enforced. Phases, in order:
//!
//! 1. **Baseline**: the storm's drop rate with no fathom running.
//! 2. **Kernel cost** ([`cost`]): run time per run of fathom's drop program and of a bpftrace
//!    one-liner doing the equivalent aggregation, from the kernel's BPF statistics: bpftrace
//!    alone, both on the very same drops (the headline), fathom alone.
//! 3. **Flood** ([`accounting`]): fathom alone, the storm for ~10 s: datagrams sent vs
//!    fathom's in-kernel count for the namespace (vs the kernel's own `Udp NoPorts`, and vs
//!    what `/metrics` serves), and the ring buffer's books — records fathom's userspace
//!    consumed (ring consumer position), suppressed by the rate limit, lost to a full ring —
//!    against every `skb_kfree_skb` run; the daemon's CPU time and peak RSS meanwhile.
//! 4. **Startup**: spawn → ready line (programs attached) of `fathom serve` (and `/readyz`)
//!    and of `fathom capture`; SIGTERM → exit.
//! 5. **Pods** ([`footprint`], [`pods`]): 1,000 Kubernetes-style pod cgroups; a fresh
//!    `fathom serve`; its idle RSS and CPU; one real OOM kill per pod (→ one
//!    `fathom_oom_kills_total` series per pod); idle again; then `/metrics` scrape latency.
//!
//! Exit code: 0 when every phase ran (whatever the figures), 1 when one could not, 130 when
//! interrupted (the partial results are printed and written all the same).
//!
//! Knobs (environment): `FATHOM_BENCH_FLOOD_SECS` (10), `FATHOM_BENCH_COST_SECS` (4, per
//! storm), `FATHOM_BENCH_BASELINE_SECS` (3), `FATHOM_BENCH_IDLE_SECS` (10),
//! `FATHOM_BENCH_PODS` (1000), `FATHOM_BENCH_SENDERS` (2 per CPU, at least 4),
//! `FATHOM_BENCH_SCRAPES` (200), `FATHOM_BENCH_STARTUP_RUNS` (3).

mod accounting;
mod bpf;
mod conn_flood;
mod cost;
mod detect;
mod fathom;
mod flood;
mod footprint;
mod healthy;
mod http;
mod pods;
mod process;
mod reclaim;
mod report;
mod signals;

use std::{collections::HashMap, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::json;

use self::{
    cost::{Bpftrace, Cost, Measured, measured_storm},
    fathom::{FathomKernel, Serve},
    flood::{Netns, PREFIX},
    pods::Hierarchies,
    report::Results,
};
use crate::cmd;

struct Config {
    flood: Duration,
    cost: Duration,
    baseline: Duration,
    idle: Duration,
    pods: usize,
    senders: usize,
    scrapes: usize,
    startup_runs: usize,
    healthy: u64,
}

impl Config {
    fn from_env() -> Result<Self> {
        fn var(name: &str, default: u64) -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a whole number")),
                Err(_) => Ok(default),
            }
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        Ok(Self {
            flood: Duration::from_secs(var("FATHOM_BENCH_FLOOD_SECS", 10)?.max(1)),
            cost: Duration::from_secs(var("FATHOM_BENCH_COST_SECS", 4)?.max(1)),
            baseline: Duration::from_secs(var("FATHOM_BENCH_BASELINE_SECS", 3)?),
            idle: Duration::from_secs(var("FATHOM_BENCH_IDLE_SECS", 10)?.max(1)),
            pods: var("FATHOM_BENCH_PODS", 1000)? as usize,
            senders: var("FATHOM_BENCH_SENDERS", (2 * cpus).max(4))?.max(1) as usize,
            scrapes: var("FATHOM_BENCH_SCRAPES", 200)?.max(1) as usize,
            startup_runs: var("FATHOM_BENCH_STARTUP_RUNS", 3)? as usize,
            healthy: var("FATHOM_BENCH_HEALTHY_SECS", 5)?,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "flood_s": self.flood.as_secs(), "cost_s": self.cost.as_secs(),
            "baseline_s": self.baseline.as_secs(), "idle_s": self.idle.as_secs(),
            "pods": self.pods, "senders": self.senders, "scrapes": self.scrapes,
            "startup_runs": self.startup_runs, "healthy_s": self.healthy,
        })
    }
}

/// Returns the process exit code: 0 when every phase ran (whatever the figures), 1 when a
/// phase could not run, 130 when interrupted.
pub fn run(root: &Path) -> Result<u8> {
    signals::install();
    let cfg = Config::from_env()?;
    let code = crate::build(root, true)?;
    if code != 0 {
        return Ok(code);
    }
    if signals::interrupted() {
        eprintln!("bench: interrupted");
        return Ok(130);
    }
    let bin = crate::target_dir(root).join("release/fathom");
    let mut r = Results {
        machine: machine(root, &bin),
        config: cfg.to_json(),
        ..Results::default()
    };
    let outcome = phases(&cfg, &bin, &mut r);
    // Every guard has run by now: the namespace, cgroups, sysctl and processes are gone.
    let interrupted = signals::interrupted()
        || outcome
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<signals::Interrupted>().is_some());
    match &outcome {
        Err(_) if interrupted => r.errors.push("interrupted (Ctrl-C / SIGTERM)".into()),
        Err(e) => r.errors.push(format!("{e:#}")),
        Ok(()) => {}
    }
    r.complete = outcome.is_ok() && r.errors.is_empty();
    r.print();
    let dir = crate::target_dir(root).join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&r.to_json())? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("\nresults: {}", path.display());
    if interrupted {
        eprintln!("bench: interrupted; everything it created was removed");
        return Ok(130);
    }
    Ok(if r.complete { 0 } else { 1 })
}

fn step(what: &str) {
    println!("bench: {what}");
}

/// A phase's outcome: a failure is recorded and the run goes on, except an interruption.
fn record<T>(r: &mut Results, what: &str, outcome: Result<T>) -> Result<Option<T>> {
    match outcome {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.downcast_ref::<signals::Interrupted>().is_some() => Err(e),
        Err(e) => {
            eprintln!("bench: {what} failed: {e:#}");
            r.errors.push(format!("{what}: {e:#}"));
            Ok(None)
        }
    }
}

fn phases(cfg: &Config, bin: &Path, r: &mut Results) -> Result<()> {
    let hier = Hierarchies::detect()?;
    flood::remove_stale_netns();
    pods::remove_stale(&hier);
    let name = format!("{PREFIX}{}", std::process::id());
    let ns = Netns::create(&name)?;
    let reasons = bpf::drop_reason_names();
    let storm = |what: &str, d: Duration| {
        step(&format!("{what}: {} senders for {d:?}", cfg.senders));
    };

    if !cfg.baseline.is_zero() {
        storm("baseline storm, no fathom", cfg.baseline);
        r.rate_without_fathom =
            Some(flood::storm(&ns, cfg.senders, cfg.baseline, || Ok(()))?.rate());
    }

    step("kernel cost: starting bpftrace");
    let bt = record(r, "bpftrace", Bpftrace::start())?;
    let mut bt_alone = None;
    if bt.is_some() {
        storm("kernel cost 1/3, bpftrace alone", cfg.cost);
        let m = measured_storm(&ns, cfg.senders, cfg.cost);
        bt_alone = record(r, "kernel cost (bpftrace alone)", m)?;
    }
    let outcome = daemon_under_storms(cfg, bin, &ns, &reasons, bt, bt_alone, r);
    record(r, "fathom serve under the storm", outcome)?;

    step(&format!(
        "startup: {n} x fathom serve, {n} x fathom capture",
        n = cfg.startup_runs
    ));
    let outcome = (|| {
        for _ in 0..cfg.startup_runs {
            let s = Serve::start(bin)?;
            r.startup.serve_ready.push(s.ready);
            r.startup.serve_readyz.push(s.readyz);
            let stopped = s.stop()?;
            r.startup.serve_stop.push(stopped.took);
            r.startup.capture_ready.push(fathom::capture_startup(bin)?);
        }
        Ok(())
    })();
    record(r, "startup", outcome)?;

    if cfg.healthy > 0 {
        step(&format!(
            "healthy traffic: veth and VXLAN, TCP stream and UDP ping-pong, {} s each, fathom off then on",
            cfg.healthy
        ));
        let outcome = healthy::run(bin, &name, cfg.healthy);
        if let Some(h) = record(r, "healthy traffic", outcome)? {
            r.healthy = h;
        }
    }

    step("time to detect an overlay MTU mismatch, per kind of VXLAN device");
    if let Some(d) = record(r, "detection", detect::run(bin, &name))? {
        r.detection = d;
    }

    if cfg.pods > 0 {
        step(&format!(
            "pods: {} pod cgroups, a fresh fathom serve, idle {:?}, one OOM kill per pod, \
             idle, {} scrapes",
            cfg.pods, cfg.idle, cfg.scrapes
        ));
        let settings = footprint::Settings {
            pods: cfg.pods,
            idle: cfg.idle,
            scrapes: cfg.scrapes,
        };
        let outcome = footprint::pods_phase(&settings, bin, hier, &name, r);
        record(r, "pods", outcome)?;
    }
    Ok(())
}

/// Phases 2 (the rest) and 3, with one `fathom serve`: the side-by-side and fathom-alone
/// storms, then the flood.
fn daemon_under_storms(
    cfg: &Config,
    bin: &Path,
    ns: &Netns,
    reasons: &HashMap<u32, String>,
    bt: Option<Bpftrace>,
    bt_alone: Option<Measured>,
    r: &mut Results,
) -> Result<()> {
    let storm = |what: &str, d: Duration| {
        step(&format!("{what}: {} senders for {d:?}", cfg.senders));
    };
    step("starting fathom serve");
    let d1 = Serve::start(bin)?;
    r.startup.serve_ready.push(d1.ready);
    r.startup.serve_readyz.push(d1.readyz);
    let fk = FathomKernel::of(d1.pid())?;
    let fathom_progs: Vec<(String, u32)> =
        fk.progs.iter().map(|(n, id)| (n.clone(), *id)).collect();

    let bt_prog = bt.as_ref().map(|b| b.prog);
    let mut together = None;
    if let Some(bt) = bt {
        storm(
            "kernel cost 2/3, fathom and bpftrace on the same drops",
            cfg.cost,
        );
        let m = measured_storm(ns, cfg.senders, cfg.cost);
        together = record(r, "kernel cost (side by side)", m)?;
        let stopped = bt.stop();
        record(r, "stopping bpftrace", stopped)?;
    }
    storm("kernel cost 3/3, fathom alone", cfg.cost);
    let m = measured_storm(ns, cfg.senders, cfg.cost);
    let fathom_alone = record(r, "kernel cost (fathom alone)", m)?;
    let cost = Cost::from_storms(
        &fathom_progs,
        bt_prog,
        bt_alone.as_ref(),
        together.as_ref(),
        fathom_alone.as_ref(),
    );
    if !cost.others.is_empty() {
        eprintln!(
            "bench: other programs run on every drop ({}): parallel runs or tools slow the \
             storm, not the figures per run",
            cost.others.join(", ")
        );
    }
    r.cost = Some(cost);

    storm("flood, fathom alone", cfg.flood);
    let outcome = accounting::flood_phase(ns, cfg.senders, cfg.flood, &d1, &fk, reasons);
    if let Some((f, d)) = record(r, "flood", outcome)? {
        r.flood = Some(f);
        r.daemon_flood = Some(d);
    }
    drop(fk);
    let stopped = d1.stop()?;
    r.startup.serve_stop.push(stopped.took);
    r.closing_line = stopped.events.zip(stopped.lost);
    Ok(())
}

/// What the figures were measured on.
fn machine(root: &Path, bin: &Path) -> serde_json::Value {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024);
    let git = |args: &[&str]| {
        cmd::output(Command::new("git").args(args).current_dir(root))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let version = cmd::output(Command::new(bin).arg("--version"))
        .map(|s| s.trim().trim_start_matches("fathom ").to_owned())
        .unwrap_or_default();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "memory_bytes": mem,
        "fathom": version,
        "git_commit": git(&["rev-parse", "--short", "HEAD"]),
        "git_dirty": dirty,
        "unix_time": secs,
        "bpftool": first_line(Command::new("bpftool").arg("version")),
        "bpftrace": first_line(Command::new("bpftrace").arg("--version")),
    })
}

fn first_line(cmd: &mut Command) -> Option<String> {
    cmd::output(cmd).ok()?.lines().next().map(str::to_owned)
}
