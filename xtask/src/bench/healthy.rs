//! Healthy traffic: what fathom costs on packets that can never show a failure (no drop, no
//! fragment). Two namespaces joined by a veth pair, and a VXLAN device over it; on each path a
//! TCP stream (iperf3, throughput) and UDP ping-pong of 64-byte datagrams (sockperf, latency),
//! first without fathom, then with `fathom serve` running. While fathom runs, the kernel's
//! BPF stats give each of its programs' runs and run time over the path's packets (the
//! path device's tx + rx packets in the client namespace).
//!
//! Everything is created under the bench's name prefix and removed by guards.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    bpf::{self, BpfStatsGuard},
    fathom::{FathomKernel, Serve},
    flood::Netns,
    signals,
};
use crate::cmd;

/// One traffic kind on one path, with fathom off and on.
#[derive(Clone, Debug, Default)]
pub struct Healthy {
    /// `veth` or `vxlan`.
    pub path: &'static str,
    /// `tcp_stream` or `udp_pingpong`.
    pub traffic: &'static str,
    /// Throughput (TCP, bits/s) or average round trip (UDP, µs), off and on.
    pub off: f64,
    pub on: f64,
    /// UDP: 99th percentile round trip (µs), off and on.
    pub p99_off: Option<f64>,
    pub p99_on: Option<f64>,
    /// Packets through the path device while fathom ran.
    pub packets: u64,
    /// fathom's programs that ran: (name, runs per packet, kernel ns per packet).
    pub programs: Vec<(String, f64, f64)>,
}

impl Healthy {
    pub fn runs_per_packet(&self) -> f64 {
        self.programs.iter().map(|p| p.1).sum()
    }

    pub fn ns_per_packet(&self) -> f64 {
        self.programs.iter().map(|p| p.2).sum()
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "path": self.path,
            "traffic": self.traffic,
            "unit": if self.traffic == "tcp_stream" { "bits_per_s" } else { "avg_round_trip_us" },
            "fathom_off": self.off,
            "fathom_on": self.on,
            "p99_round_trip_us_off": self.p99_off,
            "p99_round_trip_us_on": self.p99_on,
            "packets": self.packets,
            "program_runs_per_packet": self.runs_per_packet(),
            "kernel_ns_per_packet": self.ns_per_packet(),
            "programs": self.programs.iter().map(|(n, r, ns)| serde_json::json!({
                "program": n, "runs_per_packet": r, "ns_per_packet": ns})).collect::<Vec<_>>(),
        })
    }
}

/// Kills and reaps a helper process (iperf3 / sockperf server) on every way out.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ns_cmd(ns: &Netns, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name]).args(args);
    c
}

fn ip(ns: &Netns, args: &[&str]) -> Result<()> {
    cmd::output(Command::new("ip").args(["-n", &ns.name]).args(args)).map(|_| ())
}

fn server(ns: &Netns, args: &[&str]) -> Result<Killed> {
    let child = ns_cmd(ns, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", args[0]))?;
    let k = Killed(child);
    signals::sleep(Duration::from_millis(400))?;
    Ok(k)
}

/// tx + rx packets of `dev` in `ns`.
fn packets(ns: &Netns, dev: &str) -> Result<u64> {
    let mut n = 0;
    for f in ["tx_packets", "rx_packets"] {
        let p = format!("/sys/class/net/{dev}/statistics/{f}");
        n += cmd::output(&mut ns_cmd(ns, &["cat", &p]))?
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{p} in {}", ns.name))?;
    }
    Ok(n)
}

/// iperf3 throughput (bits/s received) for `secs`.
fn tcp_stream(a: &Netns, b: &Netns, dst: &str, secs: u64) -> Result<f64> {
    let _s = server(b, &["iperf3", "-s", "-1", "-B", dst, "-p", "5211"])?;
    let out = cmd::output(&mut ns_cmd(
        a,
        &[
            "iperf3",
            "-c",
            dst,
            "-p",
            "5211",
            "-t",
            &secs.to_string(),
            "-J",
        ],
    ))?;
    let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")
}

/// sockperf ping-pong of 64-byte UDP datagrams: (average, p99) round trip in µs.
fn udp_pingpong(a: &Netns, b: &Netns, dst: &str, secs: u64) -> Result<(f64, f64)> {
    let _s = server(b, &["sockperf", "sr", "-i", dst, "-p", "11211"])?;
    let out = cmd::output(&mut ns_cmd(
        a,
        &[
            "sockperf",
            "pp",
            "-i",
            dst,
            "-p",
            "11211",
            "-m",
            "64",
            "-t",
            &secs.to_string(),
        ],
    ))?;
    parse_sockperf(&out).with_context(|| format!("sockperf output:\n{out}"))
}

/// `avg-latency=12.345` (round trip / 2 in sockperf's "latency"; doubled here) and
/// `percentile 99.000 =   20.123`.
pub fn parse_sockperf(out: &str) -> Option<(f64, f64)> {
    let avg = out.lines().find_map(|l| {
        let rest = &l[l.find("avg-latency=")? + "avg-latency=".len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse::<f64>()
            .ok()
    })?;
    let p99 = out.lines().find_map(|l| {
        let i = l.find("percentile 99.000")?;
        l[i..].split('=').nth(1)?.trim().parse::<f64>().ok()
    })?;
    Some((avg * 2.0, p99 * 2.0))
}

struct Paths {
    a: Netns,
    b: Netns,
}

fn build(prefix: &str) -> Result<Paths> {
    let a = Netns::create(&format!("{prefix}ha"))?;
    let b = Netns::create(&format!("{prefix}hb"))?;
    cmd::output(Command::new("ip").args([
        "link", "add", "fbh0", "netns", &a.name, "type", "veth", "peer", "name", "fbh1", "netns",
        &b.name,
    ]))?;
    ip(&a, &["addr", "add", "10.252.0.1/24", "dev", "fbh0"])?;
    ip(&b, &["addr", "add", "10.252.0.2/24", "dev", "fbh1"])?;
    ip(&a, &["link", "set", "fbh0", "up"])?;
    ip(&b, &["link", "set", "fbh1", "up"])?;
    for (ns, dev, local, remote, addr) in [
        (&a, "fbh0", "10.252.0.1", "10.252.0.2", "10.253.0.1/24"),
        (&b, "fbh1", "10.252.0.2", "10.252.0.1", "10.253.0.2/24"),
    ] {
        ip(
            ns,
            &[
                "link", "add", "fbvx", "type", "vxlan", "id", "4244", "local", local, "remote",
                remote, "dstport", "4789", "dev", dev,
            ],
        )?;
        ip(ns, &["addr", "add", addr, "dev", "fbvx"])?;
        ip(ns, &["link", "set", "fbvx", "up"])?;
    }
    Ok(Paths { a, b })
}

const PATHS: [(&str, &str, &str); 2] = [
    ("veth", "fbh0", "10.252.0.2"),
    ("vxlan", "fbvx", "10.253.0.2"),
];

/// Runs every path and traffic kind off, then on.
pub fn run(bin: &Path, prefix: &str, secs: u64) -> Result<Vec<Healthy>> {
    for tool in ["iperf3", "sockperf"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed (cargo xtask setup installs it)");
        }
    }
    let p = build(prefix)?;
    let mut out: Vec<Healthy> = Vec::new();
    for (path, _, dst) in PATHS {
        let off = tcp_stream(&p.a, &p.b, dst, secs)?;
        out.push(Healthy {
            path,
            traffic: "tcp_stream",
            off,
            ..Healthy::default()
        });
        let (avg, p99) = udp_pingpong(&p.a, &p.b, dst, secs)?;
        out.push(Healthy {
            path,
            traffic: "udp_pingpong",
            off: avg,
            p99_off: Some(p99),
            ..Healthy::default()
        });
    }
    let _stats = BpfStatsGuard::enable()?;
    let serve = Serve::start(bin)?;
    let kernel = FathomKernel::of(serve.pid())?;
    let ids: BTreeMap<String, u32> = kernel.progs.clone();
    for h in out.iter_mut() {
        let (_, dev, dst) = PATHS
            .iter()
            .find(|x| x.0 == h.path)
            .copied()
            .unwrap_or(PATHS[0]);
        let before = bpf::programs()?;
        let pk0 = packets(&p.a, dev)?;
        if h.traffic == "tcp_stream" {
            h.on = tcp_stream(&p.a, &p.b, dst, secs)?;
        } else {
            let (avg, p99) = udp_pingpong(&p.a, &p.b, dst, secs)?;
            h.on = avg;
            h.p99_on = Some(p99);
        }
        let after = bpf::programs()?;
        h.packets = packets(&p.a, dev)?.saturating_sub(pk0).max(1);
        for (name, id) in &ids {
            let (Some(a), Some(b)) = (after.get(id), before.get(id)) else {
                continue;
            };
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            let ns = a.run_time_ns.saturating_sub(b.run_time_ns);
            if runs > 0 {
                let pk = h.packets as f64;
                h.programs
                    .push((name.clone(), runs as f64 / pk, ns as f64 / pk));
            }
        }
    }
    serve.stop()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_summary() {
        let out = "sockperf: ====> avg-latency=10.512 (std-dev=2.130, mean-ad=1.0)\n\
                   sockperf: ---> percentile 99.999 =   80.000\n\
                   sockperf: ---> percentile 99.000 =   20.250\n";
        assert_eq!(parse_sockperf(out), Some((21.024, 40.5)));
        assert_eq!(parse_sockperf("nothing"), None);
    }
}
