//! The built `fathom` binary under measurement: `fathom serve` on a loopback port (the daemon)
//! and `fathom capture` (the CLI), and the in-kernel state of a running instance read from the
//! outside: its programs' ids and its maps, found through the descriptors the process holds,
//! so other fathom instances on the machine (parallel test runs) are never mixed in.

use std::{
    collections::{BTreeMap, HashMap},
    mem::{offset_of, size_of},
    net::SocketAddr,
    path::Path,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use probe_common::{
    Counter, DropKey, EventKind, LastDrop, NET_STAT_DROPS_MAP_FULL, NET_STAT_DROPS_SEEN,
    PacketDropEvent,
};

use super::{
    bpf::{self, RingPositions},
    http,
    process::Spawned,
    signals,
};

/// What fathom prints on stderr once its programs are attached (`fathom::READY_MARKER`).
pub const READY_MARKER: &str = "fathom: ready";
/// Precedes the bound address in serve's ready line.
const SERVING: &str = "serving http://";
/// Loading, verifying and attaching; generous for slow machines (the time is reported).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM → exit (fathom promises 2 s).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running `fathom serve --listen 127.0.0.1:0`, stopped when dropped.
pub struct Serve {
    process: Spawned,
    pub addr: SocketAddr,
    /// Spawn → ready line (programs attached).
    pub ready: Duration,
    /// Spawn → first `/readyz` 200.
    pub readyz: Duration,
}

/// How a fathom process ended.
pub struct Stopped {
    pub status: ExitStatus,
    pub took: Duration,
    /// From the closing line `fathom: N events, M lost`.
    pub events: Option<u64>,
    pub lost: Option<u64>,
}

impl Serve {
    pub fn start(bin: &Path) -> Result<Self> {
        let started = Instant::now();
        let mut process = Spawned::spawn(
            "fathom serve",
            Command::new(bin).args(["serve", "--listen", "127.0.0.1:0"]),
            READY_MARKER,
            libc::SIGTERM,
        )?;
        let ready = process.wait_ready(READY_TIMEOUT)?;
        let out = process.output();
        let addr = out
            .find(SERVING)
            .and_then(|i| {
                let rest = &out[i + SERVING.len()..];
                rest[..rest.find('/')?].parse().ok()
            })
            .with_context(|| format!("no {SERVING:?} in fathom's ready line:\n{out}"))?;
        let deadline = started + READY_TIMEOUT;
        let readyz = loop {
            signals::check()?;
            if http::get(addr, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200) {
                break started.elapsed();
            }
            if Instant::now() >= deadline {
                bail!("fathom serve's /readyz not 200 after {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        Ok(Self {
            process,
            addr,
            ready,
            readyz,
        })
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// `GET /metrics`; fails unless 200.
    pub fn metrics(&self) -> Result<String> {
        let r = http::get(self.addr, "/metrics", Duration::from_secs(30))?;
        if r.status != 200 {
            bail!("GET /metrics answered {}", r.status);
        }
        Ok(r.body)
    }

    pub fn stop(mut self) -> Result<Stopped> {
        stopped(&mut self.process)
    }
}

fn stopped(p: &mut Spawned) -> Result<Stopped> {
    let (status, took) = p.stop(STOP_GRACE)?;
    let out = p.output();
    let closing = out.lines().rev().find_map(|l| parse_closing(l.trim()));
    Ok(Stopped {
        status,
        took,
        events: closing.map(|c| c.0),
        lost: closing.map(|c| c.1),
    })
}

/// `fathom: N events, M lost` → (N, M).
fn parse_closing(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("fathom: ")?;
    let (n, rest) = rest.split_once(" events, ")?;
    let m = rest.strip_suffix(" lost")?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// `fathom capture --count 0`: loads, attaches, prints the ready line and exits. Returns the
/// time from spawn to the ready line.
pub fn capture_startup(bin: &Path) -> Result<Duration> {
    let mut p = Spawned::spawn(
        "fathom capture",
        Command::new(bin).args(["capture", "--count", "0"]),
        READY_MARKER,
        libc::SIGTERM,
    )?;
    let ready = p.wait_ready(READY_TIMEOUT)?;
    let s = stopped(&mut p)?;
    if !s.status.success() {
        bail!(
            "fathom capture --count 0 failed ({}):\n{}",
            s.status,
            p.output()
        );
    }
    Ok(ready)
}

/// A running fathom's programs and maps.
pub struct FathomKernel {
    /// Program name → id.
    pub progs: BTreeMap<String, u32>,
    maps: HashMap<String, u32>,
    ring: RingPositions,
}

/// Size of one drop record in the ring: the kernel's 8-byte record header, rounded up to 8.
pub const DROP_RECORD_BYTES: u64 = (size_of::<PacketDropEvent>() as u64 + 8).next_multiple_of(8);

/// Counters of a running fathom at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `NET_STATS[DROPS_SEEN]`: every `skb_kfree_skb` run.
    pub drops_seen: u64,
    /// `NET_STATS[DROPS_MAP_FULL]`: drops not counted per key.
    pub drops_map_full: u64,
    /// `EVENTS_SUPPRESSED[PacketDrop]`: refused by the rate limit.
    pub suppressed: u64,
    /// `EVENTS_LOST[PacketDrop]`: refused by a full ring.
    pub lost: u64,
    /// Ring positions in bytes.
    pub ring_consumer: u64,
    pub ring_producer: u64,
    /// `DROPS` packets of one network namespace by (reason, IP protocol).
    pub netns_drops: BTreeMap<(u32, u16), u64>,
}

impl FathomKernel {
    pub fn of(pid: i32) -> Result<Self> {
        let (prog_ids, map_ids) = bpf::objects_of(pid)?;
        let all_progs = bpf::programs()?;
        let progs: BTreeMap<String, u32> = prog_ids
            .iter()
            .filter_map(|id| Some((all_progs.get(id)?.name.clone(), *id)))
            .collect();
        let names = bpf::map_names()?;
        let maps: HashMap<String, u32> = map_ids
            .iter()
            .filter_map(|id| Some((names.get(id)?.clone(), *id)))
            .collect();
        let events = *maps
            .get("EVENTS")
            .with_context(|| format!("fathom (pid {pid}) holds no EVENTS map"))?;
        Ok(Self {
            progs,
            maps,
            ring: RingPositions::open(events)?,
        })
    }

    fn map(&self, name: &str) -> Result<u32> {
        self.maps
            .get(bpf::kernel_name(name))
            .copied()
            .with_context(|| format!("fathom holds no {name} map"))
    }

    fn slot(&self, map: &str, index: u32) -> Result<u64> {
        let entries = bpf::dump(self.map(map)?)?;
        Ok(entries
            .iter()
            .find(|e| bpf::u32_at(&e.key, 0) == index)
            .map_or(0, |e| bpf::per_cpu_sum(e, 0)))
    }

    /// Reads every counter once (`netns`: the inode whose drops to break down).
    pub fn snapshot(&self, netns: u32) -> Result<Counters> {
        let drop_kind = EventKind::PacketDrop as u32;
        let mut c = Counters {
            drops_seen: self.slot("NET_STATS", NET_STAT_DROPS_SEEN)?,
            drops_map_full: self.slot("NET_STATS", NET_STAT_DROPS_MAP_FULL)?,
            suppressed: self.slot("EVENTS_SUPPRESSED", drop_kind)?,
            lost: self.slot("EVENTS_LOST", drop_kind)?,
            ..Counters::default()
        };
        for e in bpf::dump(self.map("DROPS")?)? {
            if e.key.len() != size_of::<DropKey>() {
                bail!(
                    "DROPS key is {} bytes, expected {}",
                    e.key.len(),
                    size_of::<DropKey>()
                );
            }
            if bpf::u32_at(&e.key, offset_of!(DropKey, netns)) != netns {
                continue;
            }
            let reason = bpf::u32_at(&e.key, offset_of!(DropKey, reason));
            let l3 = l3_at(&e.key);
            *c.netns_drops.entry((reason, l3)).or_default() +=
                bpf::per_cpu_sum(&e, offset_of!(Counter, packets));
        }
        // The drop program's per-CPU last-key slots hold the counts not yet in DROPS (read
        // after DROPS, as fathom does: a race can only miss a count, never add one twice).
        if let Ok(id) = self.map("LAST_DROP") {
            for e in bpf::dump(id)? {
                for v in &e.values {
                    if v.len() < size_of::<LastDrop>() {
                        bail!("LAST_DROP value is {} bytes", v.len());
                    }
                    let key = &v[..size_of::<DropKey>()];
                    if bpf::u32_at(key, offset_of!(DropKey, netns)) != netns {
                        continue;
                    }
                    let reason = bpf::u32_at(key, offset_of!(DropKey, reason));
                    let packets = bpf::u64_at(
                        v,
                        offset_of!(LastDrop, count) + offset_of!(Counter, packets),
                    );
                    *c.netns_drops.entry((reason, l3_at(key))).or_default() += packets;
                }
            }
        }
        (c.ring_consumer, c.ring_producer) = self.ring.read();
        Ok(c)
    }

    /// Snapshots until two in a row agree (the counters have settled after a storm), at most
    /// `within`; returns the last one and whether it settled.
    pub fn settled(&self, netns: u32, within: Duration) -> Result<(Counters, bool)> {
        let deadline = Instant::now() + within;
        let mut last = self.snapshot(netns)?;
        loop {
            signals::sleep(Duration::from_millis(200))?;
            let now = self.snapshot(netns)?;
            let drained = now.ring_consumer == now.ring_producer;
            if now == last && drained {
                return Ok((now, true));
            }
            if Instant::now() >= deadline {
                return Ok((now, false));
            }
            last = now;
        }
    }
}

/// `DropKey::l3_proto` of a key's bytes.
fn l3_at(key: &[u8]) -> u16 {
    let o = offset_of!(DropKey, l3_proto);
    u16::from_ne_bytes([key[o], key[o + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_line() {
        assert_eq!(parse_closing("fathom: 12 events, 3 lost"), Some((12, 3)));
        assert_eq!(parse_closing("fathom: ready: attached x"), None);
    }

    #[test]
    fn drop_record_size_is_aligned() {
        assert_eq!(DROP_RECORD_BYTES % 8, 0);
        assert!(DROP_RECORD_BYTES > size_of::<PacketDropEvent>() as u64);
    }
}
