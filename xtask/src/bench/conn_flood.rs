//! `fathom serve` under a flood of clients that hold connections: half connect and say
//! nothing, half send half a request and stall. Measured: descriptors and RSS of fathom before
//! and during the flood, and the latency of a new client's `/metrics` meanwhile (the endpoint
//! evicts the quietest idle connection at its cap, so it must keep answering).

use std::{io::Write as _, net::TcpStream, time::Duration, time::Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::{fathom::Serve, http, process, report, signals};

/// Connections the flood opens (our own descriptor limit permitting).
pub const CONNECTIONS: usize = 3000;

#[derive(Clone, Debug, Default)]
pub struct ConnFlood {
    pub connections: usize,
    pub fds_before: usize,
    pub fds_during: usize,
    pub rss_before: u64,
    pub rss_during: u64,
    pub scrape_p50_ms: f64,
    pub scrape_max_ms: f64,
    pub scrapes_failed: usize,
}

impl ConnFlood {
    pub fn to_json(&self) -> Value {
        json!({
            "connections": self.connections,
            "fds_before": self.fds_before, "fds_during": self.fds_during,
            "rss_before_bytes": self.rss_before, "rss_during_bytes": self.rss_during,
            "scrape_p50_ms": self.scrape_p50_ms, "scrape_max_ms": self.scrape_max_ms,
            "scrapes_failed": self.scrapes_failed,
        })
    }
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises our soft descriptor limit to the hard one; returns it.
fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

pub fn measure(d: &Serve) -> Result<ConnFlood> {
    let pid = d.pid();
    let mut r = ConnFlood {
        fds_before: fds(pid),
        rss_before: process::status_bytes(pid, "VmRSS")?,
        ..ConnFlood::default()
    };
    let n = CONNECTIONS.min((raise_nofile() as usize).saturating_sub(256));
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        signals::check()?;
        let Ok(mut c) = TcpStream::connect_timeout(&d.addr, Duration::from_secs(2)) else {
            continue;
        };
        if i % 2 == 1 {
            let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nUser-Agent: slow");
        }
        conns.push(c);
    }
    r.connections = conns.len();
    let mut lat = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        match http::get(d.addr, "/metrics", Duration::from_secs(10)) {
            Ok(resp) if resp.status == 200 => lat.push(report::ms(t.elapsed())),
            _ => r.scrapes_failed += 1,
        }
    }
    r.fds_during = fds(pid);
    r.rss_during = process::status_bytes(pid, "VmRSS")?;
    drop(conns);
    lat.sort_by(f64::total_cmp);
    r.scrape_p50_ms = report::quantile(&lat, 0.5);
    r.scrape_max_ms = lat.last().copied().unwrap_or(f64::NAN);
    Ok(r)
}
