//! The flood: fathom alone under the storm for ~10 s, and its books checked from the outside.
//!
//! - **Exact count**: datagrams the senders got through `sendmmsg` vs fathom's in-kernel
//!   count of UDP drops in the bench's namespace (`DROPS`, summed over CPUs and keys), with
//!   the namespace's own `Udp NoPorts` as a third witness; and what `/metrics` serves for the
//!   namespace (`fathom_packet_drops_total{netns=…}`) vs the map it is read from.
//! - **Ring books**: every `skb_kfree_skb` run (`NET_STATS[DROPS_SEEN]`, host-wide: other
//!   drops on the machine count too) must end up delivered (records fathom's userspace took
//!   out of the ring: consumer position delta / record size), suppressed (rate limit) or lost
//!   (ring full).
//! - **Daemon**: CPU time (per million drops) and peak RSS of `fathom serve` meanwhile.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    fathom::{Counters, DROP_RECORD_BYTES, FathomKernel, Serve},
    flood::{self, Netns},
    process::{self, CpuMeter},
    report::{DaemonFlood, Flood},
    signals,
};

pub fn flood_phase(
    ns: &Netns,
    senders: usize,
    duration: Duration,
    d: &Serve,
    fk: &FathomKernel,
    reasons: &HashMap<u32, String>,
) -> Result<(Flood, DaemonFlood)> {
    let pid = d.pid();
    let (before, _) = fk.settled(ns.inode, Duration::from_secs(5))?;
    let no_ports_before = ns.udp_no_ports()?;
    let cpu = CpuMeter::start(pid)?;
    let mut peak_sampled = 0;
    let storm = flood::storm(ns, senders, duration, || {
        peak_sampled = peak_sampled.max(process::status_bytes(pid, "VmRSS")?);
        Ok(())
    })?;
    let (after, settled) = fk.settled(ns.inode, Duration::from_secs(10))?;
    let cpu_s = cpu.seconds()?;
    let peak_rss = process::status_bytes(pid, "VmHWM")?;
    let kernel_no_ports = ns.udp_no_ports()? - no_ports_before;
    let netns_all = |c: &Counters| c.netns_drops.values().sum::<u64>();
    let counted_all = netns_all(&after) - netns_all(&before);
    // What the exporter serves for the namespace, end to end (kernel map → scrape): the
    // cumulative count since this daemon loaded its programs, i.e. its own map's total. A new
    // namespace's series is held back until it is named: wait for it, within limits.
    let kernel_total = netns_all(&after);
    let deadline = Instant::now() + EXPORT_WAIT;
    let exported = loop {
        let now = exported_drops(&d.metrics()?, ns.inode);
        if now == Some(kernel_total) || Instant::now() >= deadline {
            break now;
        }
        signals::sleep(Duration::from_millis(250))?;
    };

    let (udp_before, udp_after) = (udp_by_reason(&before), udp_by_reason(&after));
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
        counted_all_protocols: counted_all,
        exported,
        kernel_total,
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
        cpu_s,
        cpu_s_per_million: cpu_s / (hits.max(1) as f64 / 1e6),
        peak_rss,
        peak_rss_sampled: peak_sampled,
    };
    Ok((flood, daemon))
}

/// The exporter's family of drops by namespace (labels `namespace,pod,netns,reason`).
const DROPS_FAMILY: &str = "fathom_packet_drops_total";
/// How long the exported count may take to catch up with the kernel's.
const EXPORT_WAIT: Duration = Duration::from_secs(15);

/// Sum of the exporter's drop series of namespace `inode`; `None` when it has none (an
/// exporter without the family, or one that has not named the namespace yet).
fn exported_drops(exposition: &str, inode: u32) -> Option<u64> {
    let ours = format!("netns=\"{inode}\"");
    let mut found = None;
    for l in exposition.lines() {
        let Some(rest) = l.strip_prefix(DROPS_FAMILY) else {
            continue;
        };
        if !rest.starts_with('{') || !rest.contains(&ours) {
            continue;
        }
        let v = l.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0) += v as u64;
    }
    found
}

/// The namespace's IPv4 drops by reason (the storm's datagrams; the count keys no longer
/// carry the IP protocol: the drop program reads the header only for samples).
fn udp_by_reason(c: &Counters) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for ((reason, l3), n) in &c.netns_drops {
        if *l3 == 0x0800 {
            *m.entry(*reason).or_default() += n;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_drops_of_one_namespace() {
        let text = "\
# TYPE fathom_packet_drops counter
fathom_packet_drops_total{namespace=\"\",pod=\"\",netns=\"4026532\",reason=\"NO_SOCKET\"} 120
fathom_packet_drops_total{namespace=\"\",pod=\"\",netns=\"4026532\",reason=\"OTHERHOST\"} 3
fathom_packet_drops_total{namespace=\"\",pod=\"\",netns=\"1\",reason=\"NO_SOCKET\"} 7
";
        assert_eq!(exported_drops(text, 4026532), Some(123));
        assert_eq!(exported_drops(text, 99), None);
    }
}
