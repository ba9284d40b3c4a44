//! Interpretation of the network programs' output: drop samples become `packet_drop` /
//! `reassembly_failure` events, and the in-kernel counters become per-namespace totals
//! (drops by reason, reassembly failures by cause, fragments and VXLAN traffic per device).
//! Shared by `capture` (events, closing summary) and the exporter.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use probe_common::{Counter, DIRECTION_TX, DropKey, ExpireKey, VxlanCounters};
use serde::Serialize;

use crate::{
    attribution::Workload,
    clock::BootClock,
    drop_reason::{self, DropReasons, IpVersion, ReasmCause},
    events::RawPacketDrop,
    kallsyms::Kallsyms,
    net::{MtuMismatch, TopologySnapshot},
    net_counters::DeviceKey,
    packet::{self, PacketSummary},
};

/// How a drop is classified (memoised per (reason, location)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropClass {
    pub reason: String,
    /// `function+0xoff`, when /proc/kallsyms could be read.
    pub location: Option<String>,
    pub reassembly: Option<(ReasmCause, IpVersion)>,
    pub vxlan: bool,
}

/// Turns raw drop keys and samples into named, classified records.
pub struct NetInterpreter {
    reasons: DropReasons,
    kallsyms: Option<Kallsyms>,
    clock: BootClock,
    classes: Mutex<HashMap<(u32, u64), DropClass>>,
}

fn l3_name(proto: u16) -> String {
    match proto {
        0x0800 => "ipv4".into(),
        0x86dd => "ipv6".into(),
        0x0806 => "arp".into(),
        0 => "none".into(),
        p => format!("0x{p:04x}"),
    }
}

/// One dropped packet, as printed by `fathom capture` (`"kind": "packet_drop"` or
/// `"reassembly_failure"`).
#[derive(Clone, Debug, Serialize)]
pub struct PacketDrop {
    pub time: String,
    pub kind: &'static str,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<ReasmCause>,
    pub location: Option<String>,
    pub netns: u32,
    pub device: Option<String>,
    pub ifindex: u32,
    pub protocol: String,
    pub len: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<PacketSummary>,
    /// cgroup v2 id of the socket that owned the packet, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_device: Option<bool>,
    /// Container / pod owning the namespace (or the socket), when known.
    #[serde(flatten)]
    pub workload: Workload,
    /// When the kernel dropped it (`time` as a number, for pcapng).
    #[serde(skip)]
    pub timestamp: jiff::Timestamp,
    /// The packet's first bytes from the network header on (for pcapng).
    #[serde(skip)]
    pub raw: bytes::Bytes,
}

/// A VXLAN device whose MTU is too large for its underlay (`"kind": "mtu_mismatch"`). Sent
/// when the device is seen mismatched, and again with `evidence` when its traffic shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MtuMismatchEvent {
    pub time: String,
    pub kind: &'static str,
    #[serde(flatten)]
    pub mismatch: MtuMismatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<MismatchEvidence>,
    #[serde(flatten)]
    pub workload: Workload,
}

/// Traffic that proves a mismatch: frames whose encapsulated packet exceeded the underlay MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MismatchEvidence {
    /// Since fathom started.
    pub oversize_packets: u64,
    /// Since the previous report of this device.
    pub oversize_packets_new: u64,
}

impl MtuMismatchEvent {
    pub fn new(
        mismatch: MtuMismatch,
        evidence: Option<MismatchEvidence>,
        workload: Workload,
    ) -> Self {
        Self {
            time: jiff::Timestamp::now().to_string(),
            kind: "mtu_mismatch",
            mismatch,
            evidence,
            workload,
        }
    }
}

impl NetInterpreter {
    pub fn new(reasons: DropReasons, kallsyms: Option<Kallsyms>, clock: BootClock) -> Self {
        Self {
            reasons,
            kallsyms,
            clock,
            classes: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the reason names from the running kernel's BTF and the symbols from
    /// /proc/kallsyms (without them, locations stay unnamed and queue overflows cannot be
    /// told apart from other NOT_SPECIFIED drops).
    pub fn from_system(btf: &crate::btf::Btf) -> Self {
        let kallsyms = match Kallsyms::load() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "drop locations will not be symbolised");
                None
            }
        };
        Self::new(DropReasons::from_btf(btf), kallsyms, BootClock::new())
    }

    pub fn reasons(&self) -> &DropReasons {
        &self.reasons
    }

    pub fn classify(&self, reason: u32, location: u64) -> DropClass {
        let mut cache = self.classes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&(reason, location)) {
            return c.clone();
        }
        let name = self.reasons.name(reason).into_owned();
        let sym = self.kallsyms.as_ref().and_then(|k| k.lookup(location));
        let function = sym.as_ref().map(|s| s.function().to_string());
        let c = DropClass {
            reassembly: drop_reason::classify_reassembly(&name, function.as_deref()),
            vxlan: drop_reason::is_vxlan_reason(&name),
            location: sym.map(|s| s.to_string()),
            reason: name,
        };
        // Bounded: (reason, call site) pairs are finite in a kernel.
        if cache.len() < 65536 {
            cache.insert((reason, location), c.clone());
        }
        c
    }

    /// Names a drop sample; `topology` supplies device names.
    pub fn drop_event(&self, d: &RawPacketDrop, topology: Option<&TopologySnapshot>) -> PacketDrop {
        let class = self.classify(d.key.reason, d.key.location);
        let packet = packet::parse(&d.data, &packet::DEFAULT_VXLAN_PORTS);
        let device = topology
            .and_then(|t| t.link(d.key.netns, d.key.ifindex))
            .map(|l| l.name.clone());
        let vxlan_device = topology
            .and_then(|t| t.vxlan(d.key.netns, d.key.ifindex))
            .map(|_| true);
        let cause = class.reassembly.map(|(c, _)| c);
        let timestamp = self.clock.to_timestamp(d.boot_ns);
        PacketDrop {
            time: timestamp.to_string(),
            timestamp,
            raw: bytes::Bytes::copy_from_slice(&d.data),
            kind: if cause.is_some() {
                "reassembly_failure"
            } else {
                "packet_drop"
            },
            reason: class.reason,
            cause,
            location: class.location,
            netns: d.key.netns,
            device,
            ifindex: d.key.ifindex,
            protocol: l3_name(d.key.l3_proto),
            len: d.len,
            packet,
            socket_cgroup_id: (d.sk_cgroup_id != 0).then_some(d.sk_cgroup_id),
            vxlan_device,
            workload: Workload::default(),
        }
    }

    /// Aggregates counter snapshots into totals, timeouts from the drops (see
    /// [`counts_as_failure`]): for kernels where the expiry program is not attached.
    pub fn totals(
        &self,
        drops: &HashMap<DropKey, Counter>,
        vxlan_devices: &HashMap<DeviceKey, VxlanCounters>,
        topology: Option<&TopologySnapshot>,
    ) -> NetTotals {
        self.totals_with(drops, vxlan_devices, None, topology)
    }

    /// Aggregates counter snapshots into totals. With `expired` (the `EXPIRED` map, while the
    /// expiry program is attached) timeouts are its counts — one per expired queue in the
    /// queue's namespace, as ReasmTimeout — and timed-out fragments' drops are no failures.
    pub fn totals_with(
        &self,
        drops: &HashMap<DropKey, Counter>,
        vxlan_devices: &HashMap<DeviceKey, VxlanCounters>,
        expired: Option<&HashMap<ExpireKey, u64>>,
        topology: Option<&TopologySnapshot>,
    ) -> NetTotals {
        let dev_name = |netns: u32, ifindex: u32| -> Option<String> {
            topology
                .and_then(|t| t.link(netns, ifindex))
                .map(|l| l.name.clone())
        };
        let mut by_reason: BTreeMap<(u32, String), (u64, u64)> = BTreeMap::new();
        let mut reasm: BTreeMap<(u32, ReasmCause, IpVersion), u64> = BTreeMap::new();
        let mut vxlan_drops: BTreeMap<(u32, u32, String), u64> = BTreeMap::new();
        for (k, c) in drops {
            let class = self.classify(k.reason, k.location);
            let e = by_reason
                .entry((k.netns, class.reason.clone()))
                .or_default();
            e.0 += c.packets;
            e.1 += c.bytes;
            if let Some((cause, v)) = class.reassembly
                && !(expired.is_some() && cause == ReasmCause::Timeout)
                && counts_as_failure(cause, class.location.as_deref())
            {
                let v = v.or(match k.l3_proto {
                    0x0800 => IpVersion::V4,
                    0x86dd => IpVersion::V6,
                    _ => IpVersion::Unknown,
                });
                *reasm.entry((k.netns, cause, v)).or_default() += c.packets;
            }
            let on_vxlan = topology.is_some_and(|t| t.vxlan(k.netns, k.ifindex).is_some());
            if class.vxlan || on_vxlan {
                *vxlan_drops
                    .entry((k.netns, k.ifindex, class.reason.clone()))
                    .or_default() += c.packets;
            }
        }
        for (k, n) in expired.into_iter().flatten() {
            let v = if k.family == 6 {
                IpVersion::V6
            } else {
                IpVersion::V4
            };
            *reasm.entry((k.netns, ReasmCause::Timeout, v)).or_default() += n;
        }
        // Fragments are the namespaces' SNMP counters ([`fragments_from_snmp`]).
        let fragments = Vec::new();
        let mut vxlan = Vec::new();
        for (k, c) in vxlan_devices {
            if c.packets == 0 {
                continue;
            }
            let direction = if k.direction == DIRECTION_TX {
                "tx"
            } else {
                "rx"
            };
            let vni = topology
                .and_then(|t| t.vxlan(k.netns, k.ifindex))
                .map(|v| v.vni);
            vxlan.push(VxlanTotal {
                netns: k.netns,
                device: dev_name(k.netns, k.ifindex),
                ifindex: k.ifindex,
                vni,
                direction,
                packets: c.packets,
                bytes: c.bytes,
                oversize: c.oversize,
            });
        }
        vxlan.sort_by(|a, b| {
            (a.netns, a.ifindex, a.direction).cmp(&(b.netns, b.ifindex, b.direction))
        });
        NetTotals {
            drops: by_reason
                .into_iter()
                .map(|((netns, reason), (packets, bytes))| DropTotal {
                    netns,
                    reason,
                    packets,
                    bytes,
                })
                .collect(),
            reassembly_failures: reasm
                .into_iter()
                .map(|((netns, cause, version), packets)| ReasmTotal {
                    netns,
                    cause,
                    version,
                    packets,
                })
                .collect(),
            fragments,
            vxlan,
            vxlan_drops: vxlan_drops
                .into_iter()
                .map(|((netns, ifindex, reason), packets)| VxlanDropTotal {
                    netns,
                    device: dev_name(netns, ifindex),
                    ifindex,
                    vni: topology
                        .and_then(|t| t.vxlan(netns, ifindex))
                        .map(|v| v.vni),
                    reason,
                    packets,
                })
                .collect(),
        }
    }
}

/// Per-namespace fragment totals between two sweeps of the namespaces' SNMP counters
/// (`Topology::fragmem`): tx = FragCreates (datagrams FragOKs), rx = ReasmReqds (datagrams
/// ReasmOKs), IPv4 + IPv6. A namespace missing from `start` counts from 0 (it is new: its
/// counters started at 0). `device` is none and `bytes` unknown: the kernel counts per
/// namespace, not per device.
pub fn fragments_from_snmp(
    start: &crate::net::topology::FragMemMap,
    end: &crate::net::topology::FragMemMap,
) -> Vec<FragmentTotal> {
    let mut out = Vec::new();
    for (&netns, mem) in end.iter() {
        let Some(c) = mem.counters else { continue };
        let before = start
            .get(&netns)
            .and_then(|m| m.counters)
            .map(|c| c.totals());
        let d = c.totals().since(before.as_ref());
        for (direction, packets, datagrams) in [
            ("rx", d.rx_fragments, d.rx_datagrams),
            ("tx", d.tx_fragments, d.tx_datagrams),
        ] {
            if packets > 0 {
                out.push(FragmentTotal {
                    netns,
                    device: None,
                    ifindex: 0,
                    direction,
                    packets,
                    bytes: None,
                    datagrams,
                });
            }
        }
    }
    out
}

/// Whether a classified drop is one reassembly *failure*. A timed-out queue frees its head
/// in `ip_expire` / `ip6_frag_expire` (one drop per failed datagram, what ReasmTimeout counts)
/// and its other fragments in `inet_frag_rbtree_purge` with the same reason: only the first
/// counts. Every other cause fails per fragment (an unqueueable fragment is one ReasmFails).
pub fn counts_as_failure(cause: ReasmCause, location: Option<&str>) -> bool {
    match cause {
        ReasmCause::Timeout => location.is_none_or(|l| l.contains("expire")),
        _ => true,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropTotal {
    pub netns: u32,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Reassembly failures by cause (see [`counts_as_failure`]: timeouts count once per expired
/// queue, the other causes once per dropped fragment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasmTotal {
    pub netns: u32,
    pub cause: ReasmCause,
    pub version: IpVersion,
    pub packets: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FragmentTotal {
    pub netns: u32,
    /// None: the namespace's SNMP counters have no device.
    pub device: Option<String>,
    pub ifindex: u32,
    pub direction: &'static str,
    pub packets: u64,
    /// None: SNMP counts no bytes.
    pub bytes: Option<u64>,
    /// Datagrams fragmented (tx, FragOKs) / reassembled (rx, ReasmOKs).
    pub datagrams: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanTotal {
    pub netns: u32,
    pub device: Option<String>,
    pub ifindex: u32,
    pub vni: Option<u32>,
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
    /// tx: frames whose encapsulated packet exceeds the underlay MTU.
    pub oversize: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanDropTotal {
    pub netns: u32,
    pub device: Option<String>,
    pub ifindex: u32,
    pub vni: Option<u32>,
    pub reason: String,
    pub packets: u64,
}

/// Everything the network counters say, aggregated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetTotals {
    pub drops: Vec<DropTotal>,
    pub reassembly_failures: Vec<ReasmTotal>,
    pub fragments: Vec<FragmentTotal>,
    pub vxlan: Vec<VxlanTotal>,
    pub vxlan_drops: Vec<VxlanDropTotal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp() -> NetInterpreter {
        let reasons = DropReasons::from_pairs(vec![
            ("SKB_DROP_REASON_NOT_SPECIFIED".into(), 2),
            ("SKB_DROP_REASON_NO_SOCKET".into(), 3),
            ("SKB_DROP_REASON_FRAG_REASM_TIMEOUT".into(), 40),
        ]);
        let syms: Kallsyms = "ffffffff81000000 T ip_defrag\nffffffff81000800 T ip_expire\nffffffff81001000 T udp_rcv\nffffffff81002000 T _etext\n"
            .parse()
            .unwrap();
        NetInterpreter::new(reasons, Some(syms), BootClock::new())
    }

    fn key(netns: u32, reason: u32, location: u64) -> DropKey {
        DropKey {
            netns,
            ifindex: 2,
            reason,
            l3_proto: 0x0800,
            l4_proto: 17,
            _pad: 0,
            location,
            netns_cookie: 0,
        }
    }

    #[test]
    fn overflow_is_not_specified_inside_ip_defrag() {
        let i = interp();
        let c = i.classify(2, 0xffff_ffff_8100_0123);
        assert_eq!(c.reason, "NOT_SPECIFIED");
        assert_eq!(c.location.as_deref(), Some("ip_defrag+0x123"));
        assert_eq!(
            c.reassembly,
            Some((ReasmCause::QueueOverflow, IpVersion::V4))
        );
        // The same reason elsewhere is an ordinary drop.
        assert_eq!(i.classify(2, 0xffff_ffff_8100_1010).reassembly, None);
    }

    #[test]
    fn totals_split_reasons_causes_and_namespaces() {
        let i = interp();
        let mut drops = HashMap::new();
        drops.insert(
            key(7, 2, 0xffff_ffff_8100_0100),
            Counter {
                packets: 5,
                bytes: 7500,
            },
        );
        drops.insert(
            key(7, 3, 0xffff_ffff_8100_1004),
            Counter {
                packets: 3,
                bytes: 90,
            },
        );
        drops.insert(
            key(8, 40, 0xffff_ffff_8100_0810),
            Counter {
                packets: 2,
                bytes: 3000,
            },
        );
        let ifs = HashMap::new();
        let t = i.totals(&drops, &ifs, None);
        assert_eq!(t.drops.len(), 3);
        // With the expiry counts, timeouts are those (per queue, in the queue's namespace),
        // not the timed-out fragments' drops.
        let expired = HashMap::from([(
            ExpireKey {
                netns: 9,
                family: 6,
                netns_cookie: 3,
            },
            4u64,
        )]);
        let te = i.totals_with(&drops, &ifs, Some(&expired), None);
        assert_eq!(
            te.reassembly_failures
                .iter()
                .filter(|r| r.cause == ReasmCause::Timeout)
                .map(|r| (r.netns, r.version, r.packets))
                .collect::<Vec<_>>(),
            vec![(9, IpVersion::V6, 4)]
        );
        assert_eq!(
            t.reassembly_failures,
            vec![
                ReasmTotal {
                    netns: 7,
                    cause: ReasmCause::QueueOverflow,
                    version: IpVersion::V4,
                    packets: 5
                },
                ReasmTotal {
                    netns: 8,
                    cause: ReasmCause::Timeout,
                    version: IpVersion::V4,
                    packets: 2
                },
            ]
        );
        assert!(t.fragments.is_empty(), "fragments come from SNMP");
        assert!(t.vxlan.is_empty());
    }

    #[test]
    fn drop_event_json_names_the_kind() {
        let i = interp();
        let mut data = vec![0u8; 28];
        data[0] = 0x45;
        data[2..4].copy_from_slice(&28u16.to_be_bytes());
        data[9] = 17;
        data[12..16].copy_from_slice(&[127, 0, 0, 1]);
        data[16..20].copy_from_slice(&[127, 0, 0, 1]);
        data[20..22].copy_from_slice(&40000u16.to_be_bytes());
        data[22..24].copy_from_slice(&9u16.to_be_bytes());
        let raw = RawPacketDrop {
            boot_ns: 1,
            key: key(7, 3, 0xffff_ffff_8100_1004),
            sk_cgroup_id: 0,
            len: 28,
            data,
        };
        let v = serde_json::to_value(i.drop_event(&raw, None)).unwrap();
        assert_eq!(v["kind"], "packet_drop");
        assert_eq!(v["reason"], "NO_SOCKET");
        assert_eq!(v["location"], "udp_rcv+0x4");
        assert_eq!(v["packet"]["dst_port"], 9);
        assert_eq!(v["protocol"], "ipv4");
        assert!(v.get("cause").is_none());
    }
}
