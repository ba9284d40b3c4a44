//! Per-namespace IP fragment reassembly state, read from procfs *inside* the namespace:
//! queue memory in use against its limits, and the kernel's own reassembly / fragmentation
//! counters — the source of fathom's per-namespace fragment totals (tx fragments =
//! `FragCreates`, tx datagrams = `FragOKs`, rx fragments = `ReasmReqds`, rx datagrams =
//! `ReasmOKs`, IPv4 + IPv6): they count what the namespace's own IP layer fragmented and
//! queued, never what its bridges forward or flood, and cost nothing per packet.
//!
//! Which namespace procfs answers for:
//! - `/proc/net/*` is a symlink to `/proc/self/net`, which shows the namespace of the
//!   process's *main* thread, not the reading thread: inside a `setns` worker read
//!   `/proc/thread-self/net/*` instead.
//! - `/proc/sys/net/*` resolves against the *reading thread's* namespace at open time
//!   (`net_ctl_header_lookup` uses `current->nsproxy->net_ns`), so it is correct as is.
//!
//! Kernel facts the numbers rely on:
//! - `FRAG: inuse N memory M` (sockstat) / `FRAG6:` (sockstat6): N = reassembly queues, M =
//!   bytes charged to the namespace's fragment queues (`frag_mem_limit(fqdir)`).
//! - A new fragment is refused (and counted in `ReasmFails`, dropped by `ip_defrag` with no
//!   drop reason of its own) while M exceeds `ipfrag_high_thresh`; queues are evicted down to
//!   `ipfrag_low_thresh`; an incomplete queue expires after `ipfrag_time` seconds
//!   (`ReasmTimeout`). All are per-namespace sysctls, initialised from init_net's values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::netns::{NetnsHandle, run_in_netns};
use super::{NetError, NetnsInode};

/// One family's fragment-queue memory and limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FragQueueMem {
    /// Reassembly queues in use.
    pub queues: u64,
    /// Bytes held by fragment queues.
    pub memory_bytes: u64,
    /// `ipfrag_high_thresh` / `ip6frag_high_thresh` (bytes).
    pub high_thresh: u64,
    /// `ipfrag_low_thresh` / `ip6frag_low_thresh` (bytes).
    pub low_thresh: u64,
    /// `ipfrag_time` / `ip6frag_time` (seconds).
    pub time_secs: u64,
}

impl FragQueueMem {
    /// Memory in use as a fraction of the high threshold (0 when the threshold is 0).
    pub fn fill_ratio(&self) -> f64 {
        if self.high_thresh == 0 {
            0.0
        } else {
            self.memory_bytes as f64 / self.high_thresh as f64
        }
    }
}

/// Fragment-queue memory of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FragMem {
    pub netns: NetnsInode,
    pub ipv4: FragQueueMem,
    /// None when IPv6 is disabled (no sockstat6 / ip6frag sysctls).
    pub ipv6: Option<FragQueueMem>,
    /// The namespace's fragmentation / reassembly counters, read in the same visit (None
    /// when /proc/net/snmp could not be read or parsed).
    pub counters: Option<FragCounters>,
}

/// `/proc/net/snmp` `Ip:` and `/proc/net/snmp6` `Ip6*` fragment counters of one namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FragCounters {
    pub ipv4: IpSnmp,
    /// None when IPv6 is disabled.
    pub ipv6: Option<IpSnmp>,
}

impl FragCounters {
    /// IPv4 + IPv6 sums: (tx fragments, tx datagrams fragmented, rx fragments, rx datagrams
    /// reassembled) = (FragCreates, FragOKs, ReasmReqds, ReasmOKs).
    pub fn totals(&self) -> FragTotals {
        let v6 = self.ipv6.unwrap_or_default();
        FragTotals {
            tx_fragments: self.ipv4.frag_creates + v6.frag_creates,
            tx_datagrams: self.ipv4.frag_oks + v6.frag_oks,
            rx_fragments: self.ipv4.reasm_reqds + v6.reasm_reqds,
            rx_datagrams: self.ipv4.reasm_oks + v6.reasm_oks,
        }
    }
}

/// See [`FragCounters::totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FragTotals {
    pub tx_fragments: u64,
    pub tx_datagrams: u64,
    pub rx_fragments: u64,
    pub rx_datagrams: u64,
}

impl FragTotals {
    /// Growth from `before` (a namespace fathom had not seen counts from 0). Saturating: a
    /// namespace whose inode was reused starts lower than the gone one did.
    pub fn since(&self, before: Option<&FragTotals>) -> FragTotals {
        let b = before.copied().unwrap_or_default();
        FragTotals {
            tx_fragments: self.tx_fragments.saturating_sub(b.tx_fragments),
            tx_datagrams: self.tx_datagrams.saturating_sub(b.tx_datagrams),
            rx_fragments: self.rx_fragments.saturating_sub(b.rx_fragments),
            rx_datagrams: self.rx_datagrams.saturating_sub(b.rx_datagrams),
        }
    }
}

/// Reassembly and fragmentation counters of one family (RFC 4293 names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IpSnmp {
    pub reasm_reqds: u64,
    pub reasm_oks: u64,
    pub reasm_fails: u64,
    pub reasm_timeout: u64,
    pub frag_oks: u64,
    pub frag_fails: u64,
    pub frag_creates: u64,
}

/// `/proc/net/snmp` `Ip:` (and `/proc/net/snmp6` `Ip6*`) counters of one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnmpSnapshot {
    pub netns: NetnsInode,
    pub ipv4: IpSnmp,
    pub ipv6: Option<IpSnmp>,
    /// Every non-negative counter of /proc/net/snmp as `"Proto.Name"` (e.g. `"Udp.InErrors"`).
    pub all: BTreeMap<String, u64>,
}

/// `PROTO: key value key value …` line of sockstat(6) → the value of `key`.
pub fn parse_sockstat(text: &str, proto: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (p, rest) = l.split_once(':')?;
        if p.trim() != proto {
            return None;
        }
        let toks: Vec<&str> = rest.split_whitespace().collect();
        toks.chunks(2)
            .find(|kv| kv.len() == 2 && kv[0] == key)
            .and_then(|kv| kv[1].parse().ok())
    })
}

/// `FRAG: inuse N memory M` (or `FRAG6:`) → `(N, M)`.
pub fn parse_sockstat_frag(text: &str, proto: &str) -> Option<(u64, u64)> {
    Some((
        parse_sockstat(text, proto, "inuse")?,
        parse_sockstat(text, proto, "memory")?,
    ))
}

/// The /proc/net/snmp format — pairs of `Proto: Name1 Name2 …` / `Proto: v1 v2 …` lines —
/// into `"Proto.Name" → value`. Negative values (`Tcp.MaxConn` = -1) are left out.
pub fn parse_snmp(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
            if let Ok(x) = val.parse::<u64>() {
                out.insert(format!("{p1}.{k}"), x);
            }
        }
    }
    out
}

/// The /proc/net/snmp6 format — one `Name value` per line — into `Name → value`.
pub fn parse_snmp6(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn counters(m: &BTreeMap<String, u64>, prefix: &str) -> Result<IpSnmp, NetError> {
    let get = |name: &str| {
        let key = format!("{prefix}{name}");
        m.get(&key).copied().ok_or_else(|| NetError::Parse {
            what: "snmp counters",
            detail: format!("{key} missing"),
        })
    };
    Ok(IpSnmp {
        reasm_reqds: get("ReasmReqds")?,
        reasm_oks: get("ReasmOKs")?,
        reasm_fails: get("ReasmFails")?,
        reasm_timeout: get("ReasmTimeout")?,
        frag_oks: get("FragOKs")?,
        frag_fails: get("FragFails")?,
        frag_creates: get("FragCreates")?,
    })
}

/// `Ip.*` counters out of a [`parse_snmp`] map.
pub fn ip_snmp(m: &BTreeMap<String, u64>) -> Result<IpSnmp, NetError> {
    counters(m, "Ip.")
}

/// `Ip6*` counters out of a [`parse_snmp6`] map.
pub fn ip6_snmp(m: &BTreeMap<String, u64>) -> Result<IpSnmp, NetError> {
    counters(m, "Ip6")
}

fn read(path: &Path) -> Result<String, NetError> {
    std::fs::read_to_string(path).map_err(|source| NetError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64, NetError> {
    let t = read(path)?;
    t.trim().parse().map_err(|_| NetError::Parse {
        what: "sysctl value",
        detail: format!("{}: {:?}", path.display(), t.trim()),
    })
}

fn thread_net(file: &str) -> PathBuf {
    Path::new("/proc/thread-self/net").join(file)
}

fn sysctl_family(prefix: &str, sockstat: &str, proto: &str) -> Result<FragQueueMem, NetError> {
    let text = read(&thread_net(sockstat))?;
    let (queues, memory_bytes) =
        parse_sockstat_frag(&text, proto).ok_or_else(|| NetError::Parse {
            what: sockstat_name(sockstat),
            detail: format!("no `{proto}: inuse N memory M` line"),
        })?;
    Ok(FragQueueMem {
        queues,
        memory_bytes,
        high_thresh: read_u64(&PathBuf::from(format!("{prefix}_high_thresh")))?,
        low_thresh: read_u64(&PathBuf::from(format!("{prefix}_low_thresh")))?,
        time_secs: read_u64(&PathBuf::from(format!("{prefix}_time")))?,
    })
}

fn sockstat_name(file: &str) -> &'static str {
    if file == "sockstat6" {
        "sockstat6"
    } else {
        "sockstat"
    }
}

/// Reads the fragment-queue memory of the **calling thread's** namespace (call it inside
/// [`run_in_netns`]); `netns` only labels the result.
pub fn read_fragmem_here(netns: NetnsInode) -> Result<FragMem, NetError> {
    let ipv4 = sysctl_family("/proc/sys/net/ipv4/ipfrag", "sockstat", "FRAG")?;
    let ipv6 = if Path::new("/proc/sys/net/ipv6/ip6frag_high_thresh").exists() {
        Some(sysctl_family(
            "/proc/sys/net/ipv6/ip6frag",
            "sockstat6",
            "FRAG6",
        )?)
    } else {
        None
    };
    let counters = match read_snmp_here(netns) {
        Ok(s) => Some(FragCounters {
            ipv4: s.ipv4,
            ipv6: s.ipv6,
        }),
        Err(e) => {
            tracing::debug!(netns, error = %e, "snmp counters not read");
            None
        }
    };
    Ok(FragMem {
        netns,
        ipv4,
        ipv6,
        counters,
    })
}

/// Reads /proc/net/snmp (and snmp6) of the **calling thread's** namespace.
pub fn read_snmp_here(netns: NetnsInode) -> Result<SnmpSnapshot, NetError> {
    let all = parse_snmp(&read(&thread_net("snmp"))?);
    let ipv4 = ip_snmp(&all)?;
    let ipv6 = match std::fs::read_to_string(thread_net("snmp6")) {
        Ok(t) => Some(ip6_snmp(&parse_snmp6(&t))?),
        Err(_) => None, // IPv6 disabled
    };
    Ok(SnmpSnapshot {
        netns,
        ipv4,
        ipv6,
        all,
    })
}

/// Fragment-queue memory of `ns` (enters it in a dedicated thread).
pub fn read_fragmem(ns: &NetnsHandle) -> Result<FragMem, NetError> {
    let ino = ns.inode();
    run_in_netns(ns, || read_fragmem_here(ino))?
}

/// /proc/net/snmp counters of `ns` (enters it in a dedicated thread).
pub fn read_snmp(ns: &NetnsHandle) -> Result<SnmpSnapshot, NetError> {
    let ino = ns.inode();
    run_in_netns(ns, || read_snmp_here(ino))?
}

#[cfg(test)]
mod unit {
    use super::*;

    const SOCKSTAT: &str = "sockets: used 190\n\
        TCP: inuse 4 orphan 0 tw 1 alloc 6 mem 1\n\
        UDP: inuse 3 mem 2\n\
        UDPLITE: inuse 0\n\
        RAW: inuse 0\n\
        FRAG: inuse 2 memory 8448\n";

    #[test]
    fn sockstat_frag() {
        assert_eq!(parse_sockstat_frag(SOCKSTAT, "FRAG"), Some((2, 8448)));
        assert_eq!(parse_sockstat(SOCKSTAT, "TCP", "alloc"), Some(6));
        assert_eq!(parse_sockstat(SOCKSTAT, "UDP", "mem"), Some(2));
        assert_eq!(parse_sockstat_frag(SOCKSTAT, "FRAG6"), None);
        let six = "TCP6: inuse 1\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\n\
                   FRAG6: inuse 0 memory 0\n";
        assert_eq!(parse_sockstat_frag(six, "FRAG6"), Some((0, 0)));
        // Truncated / malformed lines never panic.
        assert_eq!(parse_sockstat_frag("FRAG: inuse", "FRAG"), None);
        assert_eq!(parse_sockstat_frag("FRAG: inuse x memory 1", "FRAG"), None);
        assert_eq!(parse_sockstat_frag("", "FRAG"), None);
    }

    const SNMP: &str = "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors \
ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes \
ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 100 0 0 0 0 0 100 90 0 0 3 40 10 7 5 1 12 90
Icmp: InMsgs InErrors
Icmp: 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn
Tcp: 1 200 120000 -1
";

    #[test]
    fn snmp_ip_counters() {
        let m = parse_snmp(SNMP);
        let ip = ip_snmp(&m).unwrap();
        assert_eq!(
            ip,
            IpSnmp {
                reasm_reqds: 40,
                reasm_oks: 10,
                reasm_fails: 7,
                reasm_timeout: 3,
                frag_oks: 5,
                frag_fails: 1,
                frag_creates: 12,
            }
        );
        assert_eq!(m["Tcp.RtoMax"], 120000);
        assert!(!m.contains_key("Tcp.MaxConn"));
        assert!(ip_snmp(&parse_snmp("Ip: Forwarding\nIp: 1\n")).is_err());
        // Odd line counts and mismatched prefixes are skipped, not misparsed.
        assert!(parse_snmp("Ip: A B\n").is_empty());
        assert!(parse_snmp("Ip: A\nTcp: 1\n").is_empty());
    }

    #[test]
    fn snmp6_counters() {
        let t = "Ip6InReceives                   \t5\n\
                 Ip6ReasmTimeout                 \t1\n\
                 Ip6ReasmReqds                   \t9\n\
                 Ip6ReasmOKs                     \t2\n\
                 Ip6ReasmFails                   \t3\n\
                 Ip6FragOKs                      \t4\n\
                 Ip6FragFails                    \t0\n\
                 Ip6FragCreates                  \t8\n\
                 Icmp6InMsgs                     \t0\n\
                 garbage\n";
        let m = parse_snmp6(t);
        let ip6 = ip6_snmp(&m).unwrap();
        assert_eq!(ip6.reasm_reqds, 9);
        assert_eq!(ip6.reasm_timeout, 1);
        assert_eq!(ip6.frag_creates, 8);
        assert_eq!(m["Icmp6InMsgs"], 0);
    }

    #[test]
    fn fill_ratio() {
        let q = FragQueueMem {
            memory_bytes: 1024,
            high_thresh: 4096,
            ..Default::default()
        };
        assert_eq!(q.fill_ratio(), 0.25);
        assert_eq!(FragQueueMem::default().fill_ratio(), 0.0);
    }

    #[test]
    fn fragment_totals_sum_families_and_grow_from_a_baseline() {
        let c = FragCounters {
            ipv4: IpSnmp {
                frag_creates: 12,
                frag_oks: 4,
                reasm_reqds: 40,
                reasm_oks: 10,
                ..Default::default()
            },
            ipv6: Some(IpSnmp {
                frag_creates: 3,
                frag_oks: 1,
                reasm_reqds: 2,
                reasm_oks: 1,
                ..Default::default()
            }),
        };
        let t = c.totals();
        assert_eq!(
            t,
            FragTotals {
                tx_fragments: 15,
                tx_datagrams: 5,
                rx_fragments: 42,
                rx_datagrams: 11
            }
        );
        let before = FragTotals {
            tx_fragments: 10,
            tx_datagrams: 5,
            rx_fragments: 50,
            rx_datagrams: 0,
        };
        let d = t.since(Some(&before));
        assert_eq!((d.tx_fragments, d.tx_datagrams, d.rx_fragments), (5, 0, 0));
        assert_eq!(t.since(None), t);
    }

    #[test]
    fn reads_own_namespace() {
        // Readable without privileges: the calling thread's own namespace.
        let f = read_fragmem_here(0).unwrap();
        assert!(f.counters.is_some());
        assert!(f.ipv4.high_thresh > 0);
        assert!(f.ipv4.high_thresh >= f.ipv4.low_thresh);
        let s = read_snmp_here(0).unwrap();
        assert!(s.all.contains_key("Ip.Forwarding"));
    }
}
