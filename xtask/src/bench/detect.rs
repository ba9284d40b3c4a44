//! Time to detection of an overlay MTU mismatch (issue 9), per kind of VXLAN device: two
//! namespaces joined by a veth underlay and a mismatched VXLAN pair between them, with one
//! `fathom capture --kind vxlan` and one `fathom serve` already running. Per kind:
//! - **verdict**: device up → the `mtu_mismatch` event naming it (no traffic needed);
//! - **evidence**: first oversize frame sent → the `mtu_mismatch` event with `evidence`;
//! - **metric**: first oversize frame sent → `fathom_vxlan_oversize_packets_total` of the
//!   device above 0 on `/metrics`.
//!
//! The kinds: `dev` (flannel, Calico: bound to the underlay device, which is lowered below the
//! device's MTU + 50 once it is up — the kernel refuses a larger MTU on a bound device), `local/remote`
//! (no `dev`, MTU 1500 over 1500), and `FDB-only` like libnetwork's (no `dev`, no `remote`;
//! the peer VTEP is the `dst` of an all-zeros FDB entry). Polled every 10 ms: the figures'
//! resolution.

use std::{
    net::UdpSocket,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{
    fathom::{READY_MARKER, Serve},
    flood::{Netns, in_netns},
    process::Spawned,
    signals,
};
use crate::cmd;

/// Longest wait for one figure (reported as missing past it).
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(10);

#[derive(Clone, Debug, Default)]
pub struct Detection {
    pub kind: &'static str,
    pub verdict_ms: Option<f64>,
    pub evidence_ms: Option<f64>,
    pub metric_ms: Option<f64>,
}

impl Detection {
    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind, "verdict_ms": self.verdict_ms,
            "evidence_ms": self.evidence_ms, "metric_ms": self.metric_ms,
        })
    }
}

struct Kind {
    name: &'static str,
    /// `ip link add … type vxlan` arguments after the name, for (local, remote, underlay dev).
    args: fn(&str, &str, &str) -> Vec<String>,
    device_mtu: u32,
    /// The underlay veth's MTU (lowered to it once the devices are up; the verdict is then
    /// timed from the lowering).
    underlay_mtu: u32,
    /// An all-zeros FDB entry to the peer (libnetwork's way).
    fdb: bool,
}

const KINDS: [Kind; 3] = [
    Kind {
        name: "dev (flannel, Calico)",
        args: |l, r, d| {
            ["local", l, "remote", r, "dev", d]
                .map(str::to_owned)
                .to_vec()
        },
        device_mtu: 1450,
        underlay_mtu: 1400,
        fdb: false,
    },
    Kind {
        name: "local/remote",
        args: |l, r, _| ["local", l, "remote", r].map(str::to_owned).to_vec(),
        device_mtu: 1500,
        underlay_mtu: 1500,
        fdb: false,
    },
    Kind {
        name: "FDB-only (libnetwork)",
        args: |_, _, _| Vec::new(),
        device_mtu: 1500,
        underlay_mtu: 1500,
        fdb: true,
    },
];

fn ip(ns: &Netns, args: &[&str]) -> Result<()> {
    cmd::output(Command::new("ip").args(["-n", &ns.name]).args(args)).map(|_| ())
}

/// Polls `f` every [`POLL`] for at most [`WAIT`]; the time it took, if it came true.
fn time_until(t0: Instant, mut f: impl FnMut() -> Result<bool>) -> Result<Option<f64>> {
    while t0.elapsed() < WAIT {
        signals::check()?;
        if f()? {
            return Ok(Some(t0.elapsed().as_secs_f64() * 1000.0));
        }
        std::thread::sleep(POLL);
    }
    Ok(None)
}

/// The capture's `mtu_mismatch` events for `dev` in `netns`.
fn mismatch_events(capture: &Spawned, netns: u32, dev: &str) -> Vec<Value> {
    capture
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["kind"] == "mtu_mismatch"
                && v["device"] == dev
                && v["netns"].as_u64() == Some(netns.into())
        })
        .collect()
}

fn oversize_on_metrics(serve: &Serve, netns: u32, dev: &str) -> Result<bool> {
    let body = serve.metrics()?;
    let (ns, d) = (format!("netns=\"{netns}\""), format!("device=\"{dev}\""));
    Ok(body.lines().any(|l| {
        l.starts_with("fathom_vxlan_oversize_packets_total{")
            && l.contains(&ns)
            && l.contains(&d)
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
    }))
}

pub fn run(bin: &Path, prefix: &str) -> Result<Vec<Detection>> {
    let mut capture = Spawned::spawn(
        "fathom capture",
        Command::new(bin).args(["capture", "--output", "json", "--kind", "vxlan"]),
        READY_MARKER,
        libc::SIGTERM,
    )?;
    capture.wait_ready(Duration::from_secs(60))?;
    let serve = Serve::start(bin)?;
    let mut out = Vec::new();
    // Each kind's namespaces go before the next kind's are made: the kernel usually gives the
    // next ones the same inodes, and their devices the same ifindex — what fathom must keep
    // apart (VXLAN counts carry the namespace's cookie).
    for (i, k) in KINDS.iter().enumerate() {
        let a = Netns::create(&format!("{prefix}d{i}a"))?;
        let b = Netns::create(&format!("{prefix}d{i}b"))?;
        let (ua, ub) = (format!("fbd{i}a"), format!("fbd{i}b"));
        cmd::output(Command::new("ip").args([
            "link", "add", &ua, "netns", &a.name, "type", "veth", "peer", "name", &ub, "netns",
            &b.name,
        ]))?;
        let (la, lb) = (format!("10.251.{i}.1"), format!("10.251.{i}.2"));
        for (ns, u, l) in [(&a, &ua, &la), (&b, &ub, &lb)] {
            ip(ns, &["addr", "add", &format!("{l}/24"), "dev", u])?;
            ip(ns, &["link", "set", u, "up"])?;
        }
        let dev = format!("fbdvx{i}");
        let mtu = k.device_mtu.to_string();
        let mut up_at = Instant::now();
        for (ns, u, l, r, inner) in [
            (&a, &ua, &la, &lb, format!("10.250.{i}.1/24")),
            (&b, &ub, &lb, &la, format!("10.250.{i}.2/24")),
        ] {
            let mut add = vec![
                "link",
                "add",
                dev.as_str(),
                "type",
                "vxlan",
                "id",
                "4300",
                "dstport",
                "4789",
            ];
            let extra = (k.args)(l, r, u);
            add.extend(extra.iter().map(String::as_str));
            ip(ns, &add)?;
            ip(ns, &["link", "set", &dev, "mtu", &mtu])?;
            ip(ns, &["addr", "add", &inner, "dev", &dev])?;
            if k.fdb {
                cmd::output(Command::new("bridge").args([
                    "-n",
                    &ns.name,
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    &dev,
                    "dst",
                    r,
                ]))?;
            }
            up_at = Instant::now();
            ip(ns, &["link", "set", &dev, "up"])?;
        }
        // Lowered after the devices exist, as an operator (or a cloud's path) does it.
        if k.underlay_mtu != 1500 {
            up_at = Instant::now();
            for (ns, u) in [(&a, &ua), (&b, &ub)] {
                ip(ns, &["link", "set", u, "mtu", &k.underlay_mtu.to_string()])?;
            }
        }
        let mut d = Detection {
            kind: k.name,
            ..Detection::default()
        };
        d.verdict_ms = time_until(up_at, || {
            Ok(!mismatch_events(&capture, a.inode, &dev).is_empty())
        })?;
        // Oversize: an inner packet of the device's MTU, whose encapsulation does not fit.
        let dst = format!("10.250.{i}.2:9");
        let size = k.device_mtu as usize - 28;
        let t0 = Instant::now();
        in_netns(a.path(), move || -> Result<()> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            let buf = vec![0u8; size];
            for _ in 0..20 {
                // ICMP port unreachable from the peer comes back as an error: ignored.
                let _ = s.send_to(&buf, &dst);
            }
            Ok(())
        })??;
        let mut evidence = None;
        let mut metric = None;
        while t0.elapsed() < WAIT && (evidence.is_none() || metric.is_none()) {
            signals::check()?;
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            if evidence.is_none()
                && mismatch_events(&capture, a.inode, &dev)
                    .iter()
                    .any(|v| v["evidence"]["oversize_packets"].as_u64() > Some(0))
            {
                evidence = Some(ms);
                // Sooner than the capture's 2 s evidence tick makes likely: seen twice for the
                // FDB-only kind after an inode reuse, not explained yet; what it showed.
                if ms < 500.0 {
                    for v in mismatch_events(&capture, a.inode, &dev) {
                        eprintln!("bench: early evidence for {dev}: {v}");
                    }
                }
            }
            if metric.is_none() && oversize_on_metrics(&serve, a.inode, &dev)? {
                metric = Some(ms);
            }
            std::thread::sleep(POLL);
        }
        d.evidence_ms = evidence;
        d.metric_ms = metric;
        out.push(d);
        drop((a, b));
    }
    serve.stop()?;
    let (status, _) = capture.stop(Duration::from_secs(5))?;
    if !status.success() {
        bail!("fathom capture ended with {status}:\n{}", capture.output());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_mismatched_by_construction() {
        for k in &KINDS {
            assert!(k.device_mtu + 50 > k.underlay_mtu, "{}", k.name);
        }
    }
}
