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
//! 2. **Kernel cost**: `fathom serve` and a bpftrace one-liner doing the equivalent aggregation
//!    are attached at once, so both see the very same drops; with BPF stats on, run time and
//!    run count of each program come from `bpftool prog show` before and after the storm.
//! 3. **Flood**: fathom alone, the storm for ~10 s: datagrams sent vs fathom's in-kernel count
//!    for the namespace (and the kernel's own `Udp NoPorts`), and the ring buffer's books —
//!    records fathom's userspace consumed (ring consumer position), suppressed by the rate
//!    limit, lost to a full ring — against every `skb_kfree_skb` run; the daemon's CPU time
//!    and peak RSS meanwhile.
//! 4. **Startup**: spawn → ready line (programs attached) of `fathom serve` (and `/readyz`)
//!    and of `fathom capture`; SIGTERM → exit.
//! 5. **Pods**: 1,000 Kubernetes-style pod cgroups; a fresh `fathom serve`; its idle RSS and
//!    CPU; one real OOM kill per pod (→ one `fathom_oom_kills_total` series per pod); idle
//!    again; then `/metrics` scrape latency.
//!
//! Knobs (environment): `FATHOM_BENCH_FLOOD_SECS` (10), `FATHOM_BENCH_COST_SECS` (5),
//! `FATHOM_BENCH_BASELINE_SECS` (3), `FATHOM_BENCH_IDLE_SECS` (10), `FATHOM_BENCH_PODS`
//! (1000), `FATHOM_BENCH_SENDERS` (2 per CPU, at least 4), `FATHOM_BENCH_SCRAPES` (200),
//! `FATHOM_BENCH_STARTUP_RUNS` (3).

mod bpf;
mod fathom;
mod flood;
mod http;
mod pods;
mod process;
mod report;
mod signals;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use self::{
    bpf::BpfStatsGuard,
    fathom::{Counters, DROP_RECORD_BYTES, FathomKernel, Serve},
    flood::{Netns, PREFIX},
    pods::{Hierarchies, PodTree},
    process::Spawned,
    report::{Cost, DaemonFlood, Flood, Idle, Pods, Results, Scrape},
};
use crate::cmd;

/// The bpftrace side of the comparison: the equivalent in-kernel aggregation (drops by reason).
const BPFTRACE_PROGRAM: &str = "tracepoint:skb:kfree_skb { @[args->reason] = count(); }";
/// fathom's drop program.
const FATHOM_DROP_PROGRAM: &str = "skb_kfree_skb";
/// The family holding one series per pod.
const OOM_FAMILY: &str = "fathom_oom_kills_total";

struct Config {
    flood: Duration,
    cost: Duration,
    baseline: Duration,
    idle: Duration,
    pods: usize,
    senders: usize,
    scrapes: usize,
    startup_runs: usize,
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
            cost: Duration::from_secs(var("FATHOM_BENCH_COST_SECS", 5)?.max(1)),
            baseline: Duration::from_secs(var("FATHOM_BENCH_BASELINE_SECS", 3)?),
            idle: Duration::from_secs(var("FATHOM_BENCH_IDLE_SECS", 10)?.max(1)),
            pods: var("FATHOM_BENCH_PODS", 1000)? as usize,
            senders: var("FATHOM_BENCH_SENDERS", (2 * cpus).max(4))?.max(1) as usize,
            scrapes: var("FATHOM_BENCH_SCRAPES", 200)?.max(1) as usize,
            startup_runs: var("FATHOM_BENCH_STARTUP_RUNS", 3)? as usize,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "flood_s": self.flood.as_secs(), "cost_s": self.cost.as_secs(),
            "baseline_s": self.baseline.as_secs(), "idle_s": self.idle.as_secs(),
            "pods": self.pods, "senders": self.senders, "scrapes": self.scrapes,
            "startup_runs": self.startup_runs,
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
    if let Err(e) = &outcome
        && !interrupted
    {
        r.errors.push(format!("{e:#}"));
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

    if !cfg.baseline.is_zero() {
        step(&format!(
            "baseline: {} senders for {:?}, no fathom",
            cfg.senders, cfg.baseline
        ));
        let storm = flood::storm(&ns, cfg.senders, cfg.baseline, || Ok(()))?;
        r.rate_without_fathom = Some(storm.rate());
    }

    step("starting fathom serve");
    let d1 = Serve::start(bin)?;
    r.startup.serve_ready.push(d1.ready);
    r.startup.serve_readyz.push(d1.readyz);
    let fk = FathomKernel::of(d1.pid())?;

    step(&format!(
        "kernel cost: fathom and bpftrace attached together, storm for {:?}",
        cfg.cost
    ));
    let cost = kernel_cost(cfg, &ns, &fk);
    r.cost = record(r, "kernel cost", cost)?;

    step(&format!("flood: fathom alone, storm for {:?}", cfg.flood));
    let outcome = flood_phase(cfg, &ns, &d1, &fk, &reasons);
    if let Some((f, d)) = record(r, "flood", outcome)? {
        r.flood = Some(f);
        r.daemon_flood = Some(d);
    }
    drop(fk);
    let stopped = d1.stop()?;
    r.startup.serve_stop.push(stopped.took);
    r.closing_line = stopped.events.zip(stopped.lost);

    step(&format!(
        "startup: {} x serve, {} x capture",
        cfg.startup_runs, cfg.startup_runs
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

    if cfg.pods > 0 {
        step(&format!(
            "pods: {} pod cgroups, OOM kills, idle, scrapes",
            cfg.pods
        ));
        let outcome = pods_phase(cfg, bin, hier, &name, r);
        record(r, "pods", outcome)?;
    }
    Ok(())
}

/// Phase 2: fathom's drop program vs bpftrace's, in the same storm.
fn kernel_cost(cfg: &Config, ns: &Netns, fk: &FathomKernel) -> Result<Cost> {
    let fathom_prog = *fk
        .progs
        .get(FATHOM_DROP_PROGRAM)
        .with_context(|| format!("fathom has no {FATHOM_DROP_PROGRAM} program loaded"))?;
    let mut bt = Spawned::spawn(
        "bpftrace",
        Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]),
        "Attaching",
        libc::SIGINT,
    )?;
    bt.wait_ready(Duration::from_secs(60))?;
    // "Attaching…" comes before the attach: wait for the perf event to carry the program.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bt_prog = loop {
        if let Some(id) = bpf::perf_tracepoint_progs(bt.pid(), "kfree_skb")?.first() {
            break *id;
        }
        if Instant::now() >= deadline {
            bail!("bpftrace did not attach to skb:kfree_skb:\n{}", bt.output());
        }
        signals::sleep(Duration::from_millis(50))?;
    };

    let stats = BpfStatsGuard::enable()?;
    if stats.previous() != "0" {
        eprintln!(
            "bench: kernel.bpf_stats_enabled was already {}; other programs pay for it too",
            stats.previous()
        );
    }
    let before = bpf::programs()?;
    let storm = flood::storm(ns, cfg.senders, cfg.cost, || Ok(()))?;
    let after = bpf::programs()?;
    drop(stats);
    bt.stop(Duration::from_secs(10))?;

    let delta = |id: u32| -> (u64, u64) {
        let (a, b) = (after.get(&id), before.get(&id));
        let get = |p: Option<&bpf::ProgInfo>| p.map_or((0, 0), |p| (p.run_time_ns, p.run_cnt));
        let ((ta, ca), (tb, cb)) = (get(a), get(b));
        (ta.saturating_sub(tb), ca.saturating_sub(cb))
    };
    let per_run = |(t, c): (u64, u64)| {
        if c == 0 {
            f64::NAN
        } else {
            t as f64 / c as f64
        }
    };
    let (f, b) = (delta(fathom_prog), delta(bt_prog));
    if f.1 == 0 || b.1 == 0 {
        bail!(
            "no runs counted (fathom {}, bpftrace {}): did the storm reach the hook?",
            f.1,
            b.1
        );
    }
    let mut per_program = Vec::new();
    let mut all_ns = 0;
    for (name, id) in &fk.progs {
        let d = delta(*id);
        all_ns += d.0;
        per_program.push((name.clone(), per_run(d), d.1));
    }
    let ours = [fathom_prog, bt_prog];
    let others_on_kfree_skb = after
        .iter()
        .filter(|(id, p)| {
            !ours.contains(id) && (p.name == FATHOM_DROP_PROGRAM || p.name == "kfree_skb")
        })
        .count();
    if others_on_kfree_skb > 0 {
        eprintln!(
            "bench: {others_on_kfree_skb} other program(s) named like a kfree_skb hook are loaded \
             (parallel runs?); they slow the storm, not the figures per run"
        );
    }
    Ok(Cost {
        seconds: storm.elapsed.as_secs_f64(),
        sent: storm.sent,
        fathom_ns: per_run(f),
        fathom_runs: f.1,
        bpftrace_ns: per_run(b),
        bpftrace_runs: b.1,
        fathom_all_ns_per_drop: all_ns as f64 / f.1 as f64,
        per_program,
        others_on_kfree_skb,
    })
}

/// Phase 3: fathom alone under the storm.
fn flood_phase(
    cfg: &Config,
    ns: &Netns,
    d: &Serve,
    fk: &FathomKernel,
    reasons: &std::collections::HashMap<u32, String>,
) -> Result<(Flood, DaemonFlood)> {
    let pid = d.pid();
    let (before, _) = fk.settled(ns.inode, Duration::from_secs(5))?;
    let no_ports_before = ns.udp_no_ports()?;
    let cpu_before = process::cpu_seconds(pid)?;
    let mut peak_sampled = 0;
    let storm = flood::storm(ns, cfg.senders, cfg.flood, || {
        peak_sampled = peak_sampled.max(process::status_bytes(pid, "VmRSS")?);
        Ok(())
    })?;
    let (after, settled) = fk.settled(ns.inode, Duration::from_secs(10))?;
    let cpu = process::cpu_seconds(pid)? - cpu_before;
    let peak_rss = process::status_bytes(pid, "VmHWM")?;
    let kernel_no_ports = ns.udp_no_ports()? - no_ports_before;

    let udp = |c: &Counters| -> BTreeMap<u32, u64> {
        let mut m = BTreeMap::new();
        for ((reason, l4), n) in &c.netns_drops {
            if *l4 == libc::IPPROTO_UDP as u8 {
                *m.entry(*reason).or_default() += n;
            }
        }
        m
    };
    let (udp_before, udp_after) = (udp(&before), udp(&after));
    let by_reason: Vec<(String, u64)> = udp_after
        .iter()
        .map(|(reason, n)| {
            let name = reasons
                .get(reason)
                .cloned()
                .unwrap_or_else(|| reason.to_string());
            (name, n - udp_before.get(reason).copied().unwrap_or(0))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let consumed = after.ring_consumer - before.ring_consumer;
    let produced = after.ring_producer - before.ring_producer;
    let hits = after.drops_seen - before.drops_seen;
    let flood = Flood {
        seconds: storm.elapsed.as_secs_f64(),
        senders: storm.senders,
        sent: storm.sent,
        send_errors: storm.send_errors,
        counted: by_reason.iter().map(|(_, n)| n).sum(),
        by_reason,
        kernel_no_ports,
        kfree_skb_hits: hits,
        delivered: consumed / DROP_RECORD_BYTES,
        reserved: produced / DROP_RECORD_BYTES,
        ring_mixed: consumed % DROP_RECORD_BYTES != 0 || produced % DROP_RECORD_BYTES != 0,
        suppressed: after.suppressed - before.suppressed,
        lost: after.lost - before.lost,
        map_full: after.drops_map_full - before.drops_map_full,
        settled,
    };
    let daemon = DaemonFlood {
        cpu_s: cpu,
        cpu_s_per_million: cpu / (hits.max(1) as f64 / 1e6),
        peak_rss,
        peak_rss_sampled: peak_sampled,
    };
    Ok((flood, daemon))
}

/// Phase 5: a fresh daemon with 1,000 pods: idle footprint, then one OOM kill per pod, idle
/// again, then scrape latency over the pods' series.
fn pods_phase(
    cfg: &Config,
    bin: &Path,
    hier: Hierarchies,
    name: &str,
    r: &mut Results,
) -> Result<()> {
    let started = Instant::now();
    let tree = PodTree::create(hier, name, cfg.pods)?;
    let mut p = Pods {
        pods: tree.pods.len(),
        cgroups: tree.cgroup_count(),
        create_s: started.elapsed().as_secs_f64(),
        ..Pods::default()
    };
    let d = Serve::start(bin)?;
    r.startup.serve_ready_with_pods = Some(d.ready);
    r.idle_before_kills = Some(idle(d.pid(), cfg.idle)?);

    let kills = tree.kill_all()?;
    p.killed = kills.killed;
    p.survived = kills.survived;
    p.kernel_oom_kills = kills.kernel_oom_kills;
    p.kill_s = kills.elapsed.as_secs_f64();
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(60);
    loop {
        p.series = pod_series(&d.metrics()?, &tree.uid_prefix);
        if p.series >= kills.kernel_oom_kills || Instant::now() >= deadline {
            break;
        }
        signals::sleep(Duration::from_millis(500))?;
    }
    p.series_wait_s = waited.elapsed().as_secs_f64();
    r.pods = Some(p);

    r.idle = Some(idle(d.pid(), cfg.idle)?);

    for _ in 0..3 {
        d.metrics()?;
    }
    let mut lat = Vec::with_capacity(cfg.scrapes);
    let mut body = String::new();
    for _ in 0..cfg.scrapes {
        signals::check()?;
        let t = Instant::now();
        body = d.metrics()?;
        lat.push(report::ms(t.elapsed()));
    }
    lat.sort_by(f64::total_cmp);
    r.scrape = Some(Scrape {
        scrapes: lat.len(),
        p50_ms: report::quantile(&lat, 0.5),
        p99_ms: report::quantile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        bytes: body.len(),
        series: pod_series(&body, &tree.uid_prefix),
    });
    let stopped = d.stop()?;
    r.startup.serve_stop.push(stopped.took);
    drop(tree);
    Ok(())
}

/// CPU share and RSS of `pid` over `secs` of doing nothing (after 2 s to settle).
fn idle(pid: i32, secs: Duration) -> Result<Idle> {
    signals::sleep(Duration::from_secs(2))?;
    let (t0, c0) = (Instant::now(), process::cpu_seconds(pid)?);
    signals::sleep(secs)?;
    let cpu = process::cpu_seconds(pid)? - c0;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Idle {
        seconds,
        rss: process::status_bytes(pid, "VmRSS")?,
        cpu_fraction: cpu / seconds,
    })
}

/// Series of `fathom_oom_kills_total` whose pod label is one of the bench's pods.
fn pod_series(exposition: &str, uid_prefix: &str) -> u64 {
    let ours = format!("pod=\"{uid_prefix}");
    exposition
        .lines()
        .filter(|l| {
            l.starts_with(OOM_FAMILY) && l[OOM_FAMILY.len()..].starts_with('{') && l.contains(&ours)
        })
        .count() as u64
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
        "bpftool": cmd::output(Command::new("bpftool").arg("version")).ok().and_then(|s| s.lines().next().map(str::to_owned)),
        "bpftrace": cmd::output(Command::new("bpftrace").arg("--version")).ok().map(|s| s.trim().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_series_counts_only_ours() {
        let text = "\
# TYPE fathom_oom_kills counter
fathom_oom_kills_total{cgroup=\"\",container=\"a\",namespace=\"\",pod=\"fb00002a-0000-4000-8000-000000000001\",scope=\"container\"} 1
fathom_oom_kills_total{cgroup=\"\",container=\"b\",namespace=\"\",pod=\"other\",scope=\"container\"} 1
fathom_oom_kills_created{pod=\"fb00002a-x\"} 1
";
        assert_eq!(pod_series(text, "fb00002a"), 1);
    }
}
