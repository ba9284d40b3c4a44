//! Zero-copy, panic-free parsing of dropped-packet samples.
//!
//! The `skb:kfree_skb` program copies the first bytes (≤ 128) of a dropped packet starting at
//! its **network** header, so a sample begins with an IPv4 or IPv6 header, never with
//! Ethernet. [`parse`] reads the sample in place (every access goes through `slice::get`, so
//! truncated or garbage input yields `None` or a partial summary, never a panic) and extracts
//! what drop analysis needs:
//!
//! - addresses, upper-layer protocol and total length of the IP packet;
//! - fragmentation: IPv4 flags/offset/id, or the IPv6 Fragment extension header (found by
//!   walking hop-by-hop, routing, destination-options and AH headers, with a bounded number of
//!   steps);
//! - TCP/UDP (and SCTP, DCCP, UDP-Lite) ports, only when the packet carries the L4 header,
//!   i.e. it is not a fragment or it is the first fragment (offset 0);
//! - VXLAN (RFC 7348): when the UDP destination port is one of the configured VXLAN ports
//!   ([`DEFAULT_VXLAN_PORTS`]: 4789 is IANA's, 8472 is the Linux default and flannel's), the
//!   VNI and a summary of the inner IP packet (through the inner Ethernet header, with up to
//!   two VLAN tags). Inner packets are never searched for VXLAN again.
//!
//! A sample is only a prefix of the packet: `total_len` comes from the header, not from the
//! sample length, and a summary may lack ports or the inner packet when the sample ends
//! before them.
//!
//! JSON (serde): `{"src","dst","protocol","src_port","dst_port","fragment":{"offset","more",
//! "id"},"vxlan":{"vni","vlan","inner":{...}}}`. `protocol` is `"tcp"`, `"udp"`, `"icmp"` or
//! `"icmpv6"` for those protocols and the protocol number otherwise. Absent (`None`) values
//! are omitted rather than written as `null`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// UDP destination ports recognised as VXLAN by default: 4789 (IANA, RFC 7348) and 8472 (the
/// Linux kernel's historical default, used by flannel).
pub const DEFAULT_VXLAN_PORTS: [u16; 2] = [4789, 8472];

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

// IPv6 extension headers (RFC 8200 §4; AH is RFC 4302).
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Bound on the extension headers walked; real packets carry a handful at most, and a
/// 128-byte sample cannot hold more than 16 of them anyway.
const MAX_IPV6_EXT_HEADERS: usize = 16;

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;
const VXLAN_HEADER: usize = 8;
/// VXLAN flags: the I bit says the VNI field is valid (RFC 7348 §5). Linux's vxlan driver
/// drops packets without it (drop reason `VXLAN_INVALID_HDR`); here such a header is not
/// treated as VXLAN.
const VXLAN_FLAG_I: u8 = 0x08;
const ETH_HEADER: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags skipped in the inner Ethernet frame (one 802.1Q tag, or an 802.1ad + 802.1Q pair).
const MAX_VLAN_TAGS: usize = 2;

/// What [`parse`] found in one sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PacketSummary {
    /// The outermost IP packet (the one the sample starts with).
    #[serde(flatten)]
    pub outer: IpSummary,
    /// Set when the outer packet is UDP to a VXLAN port with a valid VXLAN header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanSummary>,
}

/// One IP header and the ports of the L4 header after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpSummary {
    /// 4 or 6.
    #[serde(skip)]
    pub version: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol. For IPv6, the `Next Header` after the extension headers that were
    /// walked (for a truncated chain: the first header that could not be read).
    #[serde(serialize_with = "serialize_protocol")]
    pub protocol: u8,
    /// Set for every fragment, including the first one (offset 0, `more` set). For IPv6 also
    /// for "atomic fragments" (a Fragment header with offset 0 and M clear, RFC 6946).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragment: Option<FragInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Length of the whole IP packet according to its header (IPv6: payload length + 40,
    /// saturating). Note: GSO/BIG TCP packets inside the kernel may carry 0 here.
    #[serde(skip)]
    pub total_len: u16,
}

/// Fragmentation fields of an IPv4 header or an IPv6 Fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FragInfo {
    /// Offset of this fragment's data in the original payload, in bytes (a multiple of 8).
    pub offset: u16,
    /// More-fragments flag: set on every fragment but the last.
    pub more: bool,
    /// Identification (16 bits for IPv4, 32 bits for IPv6).
    pub id: u32,
}

/// A VXLAN header and what it encapsulates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanSummary {
    /// 24-bit VXLAN Network Identifier.
    pub vni: u32,
    /// VLAN id of the first 802.1Q/802.1ad tag of the inner Ethernet frame, if tagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The inner IP packet; `None` when the sample ends before its header or the inner frame
    /// is not IPv4/IPv6 (ARP, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner: Option<IpSummary>,
}

/// Name of the common protocols, as written in JSON; `None` for the others.
pub fn protocol_name(protocol: u8) -> Option<&'static str> {
    match protocol {
        IPPROTO_TCP => Some("tcp"),
        IPPROTO_UDP => Some("udp"),
        IPPROTO_ICMP => Some("icmp"),
        IPPROTO_ICMPV6 => Some("icmpv6"),
        _ => None,
    }
}

fn serialize_protocol<S: Serializer>(protocol: &u8, s: S) -> Result<S::Ok, S::Error> {
    match protocol_name(*protocol) {
        Some(name) => s.serialize_str(name),
        None => s.serialize_u8(*protocol),
    }
}

/// Parses a sample that starts at an IPv4 or IPv6 header.
///
/// Returns `None` when `data` does not start with a complete fixed IP header (20 bytes with a
/// valid IHL for IPv4, 40 bytes for IPv6). Anything after the fixed header that the sample
/// lacks (IPv4 options, extension headers, ports, VXLAN, the inner packet) is left out of the
/// summary. `vxlan_ports` are the UDP destination ports treated as VXLAN (usually
/// [`DEFAULT_VXLAN_PORTS`]).
pub fn parse(data: &[u8], vxlan_ports: &[u16]) -> Option<PacketSummary> {
    let (outer, l4) = parse_ip(data)?;
    let vxlan = match (l4, outer.dst_port) {
        // `l4` is only known for unfragmented packets and first fragments: later fragments
        // carry neither the UDP nor the VXLAN header.
        (Some(l4), Some(dport))
            if outer.protocol == IPPROTO_UDP && vxlan_ports.contains(&dport) =>
        {
            l4.checked_add(UDP_HEADER)
                .and_then(|off| data.get(off..))
                .and_then(parse_vxlan)
        }
        _ => None,
    };
    Some(PacketSummary { outer, vxlan })
}

/// Parses the IP header at the start of `data`. The second value is the offset of the L4
/// header when the packet carries one (not a non-first fragment, extension headers all walked).
fn parse_ip(data: &[u8]) -> Option<(IpSummary, Option<usize>)> {
    match data.first()? >> 4 {
        4 => parse_ipv4(data),
        6 => parse_ipv6(data),
        _ => None,
    }
}

fn parse_ipv4(data: &[u8]) -> Option<(IpSummary, Option<usize>)> {
    let hdr: &[u8; IPV4_MIN_HEADER] = data.get(..IPV4_MIN_HEADER)?.try_into().ok()?;
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER {
        return None;
    }
    let total_len = u16::from_be_bytes([hdr[2], hdr[3]]);
    let id = u16::from_be_bytes([hdr[4], hdr[5]]);
    let flags_frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    // Bit 0x4000 is DF (irrelevant here), 0x2000 MF; the low 13 bits count 8-byte units.
    let more = flags_frag & 0x2000 != 0;
    let offset = (flags_frag & 0x1fff) * 8;
    let fragment = (more || offset != 0).then_some(FragInfo {
        offset,
        more,
        id: u32::from(id),
    });
    let protocol = hdr[9];
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    // Options (IHL > 5) may be cut off by the sample; the ports are then simply unreadable.
    let l4 = (offset == 0).then_some(ihl);
    let (src_port, dst_port) = ports(data, protocol, l4);
    let summary = IpSummary {
        version: 4,
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        protocol,
        fragment,
        src_port,
        dst_port,
        total_len,
    };
    Some((summary, l4))
}

fn parse_ipv6(data: &[u8]) -> Option<(IpSummary, Option<usize>)> {
    let hdr: &[u8; IPV6_HEADER] = data.get(..IPV6_HEADER)?.try_into().ok()?;
    let payload_len = u16::from_be_bytes([hdr[4], hdr[5]]);
    let src: [u8; 16] = hdr[8..24].try_into().ok()?;
    let dst: [u8; 16] = hdr[24..40].try_into().ok()?;

    let mut next = hdr[6];
    let mut off = IPV6_HEADER;
    let mut fragment = None;
    let mut l4 = None;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // Next Header, Hdr Ext Len in 8-octet units not counting the first 8.
                let Some(&[nh, len]) = data.get(off..off.saturating_add(2)) else {
                    break;
                };
                next = nh;
                off = off.saturating_add((usize::from(len) + 1) * 8);
            }
            IPV6_AH => {
                // AH's Payload Len is in 4-octet units, minus 2 (RFC 4302 §2.2).
                let Some(&[nh, len]) = data.get(off..off.saturating_add(2)) else {
                    break;
                };
                next = nh;
                off = off.saturating_add((usize::from(len) + 2) * 4);
            }
            IPV6_FRAGMENT => {
                // Next Header, reserved, 13-bit offset (8-octet units) + 2 reserved bits + M,
                // 32-bit Identification. Always 8 bytes.
                let Some(fh) = data.get(off..off.saturating_add(8)) else {
                    break;
                };
                let Ok(fh) = <&[u8; 8]>::try_from(fh) else {
                    break;
                };
                let word = u16::from_be_bytes([fh[2], fh[3]]);
                let frag = FragInfo {
                    offset: word & 0xfff8,
                    more: word & 1 != 0,
                    id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
                };
                fragment = Some(frag);
                next = fh[0];
                off = off.saturating_add(8);
                if frag.offset != 0 {
                    // A later fragment: what follows is payload, not headers. `next` still
                    // names the original packet's upper-layer protocol.
                    break;
                }
            }
            _ => {
                // Upper-layer header (or No Next Header / ESP, which have no ports).
                l4 = Some(off);
                break;
            }
        }
    }
    let (src_port, dst_port) = ports(data, next, l4);
    let summary = IpSummary {
        version: 6,
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        protocol: next,
        fragment,
        src_port,
        dst_port,
        total_len: payload_len.saturating_add(IPV6_HEADER as u16),
    };
    Some((summary, l4))
}

/// Source and destination port of an L4 header at `l4` for the protocols that start with
/// them; each is `None` when the sample ends before it.
fn ports(data: &[u8], protocol: u8, l4: Option<usize>) -> (Option<u16>, Option<u16>) {
    let has_ports = matches!(
        protocol,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_DCCP | IPPROTO_UDPLITE
    );
    match l4 {
        Some(l4) if has_ports => (
            be16(data, l4),
            l4.checked_add(2).and_then(|o| be16(data, o)),
        ),
        _ => (None, None),
    }
}

fn be16(data: &[u8], off: usize) -> Option<u16> {
    match data.get(off..off.checked_add(2)?)? {
        &[a, b] => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

/// Parses a VXLAN header (and the encapsulated frame) at the start of `data`.
fn parse_vxlan(data: &[u8]) -> Option<VxlanSummary> {
    let hdr: &[u8; VXLAN_HEADER] = data.get(..VXLAN_HEADER)?.try_into().ok()?;
    if hdr[0] & VXLAN_FLAG_I == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]);
    let mut vlan = None;
    let mut inner = None;
    if let Some(frame) = data.get(VXLAN_HEADER..) {
        // Inner Ethernet: destination MAC, source MAC, EtherType; VLAN tags insert 4 bytes
        // (TPID + TCI) before the EtherType.
        let mut off = ETH_HEADER - 2;
        let mut ethertype = be16(frame, off);
        for _ in 0..MAX_VLAN_TAGS {
            match ethertype {
                Some(ETH_P_8021Q | ETH_P_8021AD) => {
                    if vlan.is_none() {
                        vlan = be16(frame, off + 2).map(|tci| tci & 0x0fff);
                    }
                    off += 4;
                    ethertype = be16(frame, off);
                }
                _ => break,
            }
        }
        let ip = frame.get(off + 2..).unwrap_or_default();
        inner = match ethertype {
            Some(ETH_P_IP) => parse_ipv4(ip).map(|(s, _)| s),
            Some(ETH_P_IPV6) => parse_ipv6(ip).map(|(s, _)| s),
            _ => None,
        };
    }
    Some(VxlanSummary { vni, vlan, inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: &[u16] = &DEFAULT_VXLAN_PORTS;

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, id: u16, payload: &[u8]) -> Vec<u8> {
        ipv4_opts(proto, src, dst, frag, id, &[], payload)
    }

    fn ipv4_opts(
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        frag: u16,
        id: u16,
        opts: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        assert_eq!(opts.len() % 4, 0);
        let hl = 20 + opts.len();
        let total = (hl + payload.len()) as u16;
        let mut p = vec![0x40 | (hl / 4) as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&[64, proto, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(opts);
        p.extend_from_slice(payload);
        p
    }

    fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p[12] = 0x50;
        p
    }

    fn vxlan(vni: u32, vlans: &[u16], ethertype: u16, inner: &[u8]) -> Vec<u8> {
        let mut p = vec![VXLAN_FLAG_I, 0, 0, 0];
        p.extend_from_slice(&(vni << 8).to_be_bytes());
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
        for (i, vid) in vlans.iter().enumerate() {
            let tpid = if i + 1 < vlans.len() {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            };
            p.extend_from_slice(&tpid.to_be_bytes());
            p.extend_from_slice(&(0x2000 | vid).to_be_bytes());
        }
        p.extend_from_slice(&ethertype.to_be_bytes());
        p.extend_from_slice(inner);
        p
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn ipv4_udp() -> Vec<u8> {
        ipv4(
            17,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            0x4000,
            7,
            &udp(5353, 53, b"hello"),
        )
    }

    fn ipv4_nonfirst_fragment() -> Vec<u8> {
        // offset 185 * 8 = 1480, MF set, id 0xbeef; payload is data, not a UDP header.
        ipv4(
            17,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            0x2000 | 185,
            0xbeef,
            &[0xff; 40],
        )
    }

    fn ipv6_fragment(offset_units: u16, more: bool) -> Vec<u8> {
        // hop-by-hop (8 bytes) → fragment → UDP
        let mut ext = vec![IPV6_FRAGMENT, 0, 1, 4, 0, 0, 0, 0];
        let word = (offset_units << 3) | u16::from(more);
        ext.extend_from_slice(&[IPPROTO_UDP, 0]);
        ext.extend_from_slice(&word.to_be_bytes());
        ext.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        ext.extend_from_slice(&udp(40000, 4789, &[0; 16]));
        ipv6(IPV6_HOPOPTS, v6("fd00::1"), v6("fd00::2"), &ext)
    }

    fn vxlan_ipv4() -> Vec<u8> {
        let inner = ipv4(
            17,
            [192, 168, 1, 1],
            [192, 168, 1, 2],
            0,
            1,
            &udp(1111, 2222, b"x"),
        );
        let vx = vxlan(4242, &[], ETH_P_IP, &inner);
        ipv4(
            17,
            [172, 16, 0, 1],
            [172, 16, 0, 2],
            0x2000,
            9,
            &udp(51000, 4789, &vx),
        )
    }

    fn vxlan_vlan_ipv6() -> Vec<u8> {
        let inner = ipv6(
            IPPROTO_TCP,
            v6("2001:db8::1"),
            v6("2001:db8::2"),
            &tcp(443, 55555),
        );
        let vx = vxlan(0xabcdef, &[100], ETH_P_IPV6, &inner);
        ipv4(
            17,
            [172, 16, 0, 1],
            [172, 16, 0, 2],
            0,
            9,
            &udp(51000, 8472, &vx),
        )
    }

    fn vxlan_qinq_ipv4() -> Vec<u8> {
        let inner = ipv4(6, [10, 1, 0, 1], [10, 1, 0, 2], 0, 1, &tcp(80, 8080));
        let vx = vxlan(7, &[10, 20], ETH_P_IP, &inner);
        ipv6(
            IPPROTO_UDP,
            v6("fd00::a"),
            v6("fd00::b"),
            &udp(1, 4789, &vx),
        )
    }

    fn samples() -> Vec<Vec<u8>> {
        vec![
            ipv4_udp(),
            ipv4_nonfirst_fragment(),
            ipv6_fragment(0, true),
            ipv6_fragment(181, false),
            vxlan_ipv4(),
            vxlan_vlan_ipv6(),
            vxlan_qinq_ipv4(),
            ipv4_opts(6, [1, 2, 3, 4], [5, 6, 7, 8], 0, 1, &[1; 8], &tcp(22, 2222)),
        ]
    }

    #[test]
    fn ipv4_udp_summary() {
        let s = parse(&ipv4_udp(), PORTS).unwrap();
        assert_eq!(s.outer.version, 4);
        assert_eq!(s.outer.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.outer.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s.outer.protocol, IPPROTO_UDP);
        assert_eq!(s.outer.fragment, None, "DF alone is not a fragment");
        assert_eq!((s.outer.src_port, s.outer.dst_port), (Some(5353), Some(53)));
        assert_eq!(s.outer.total_len, 20 + 8 + 5);
        assert_eq!(s.vxlan, None);
    }

    #[test]
    fn ipv4_options_are_skipped() {
        let p = ipv4_opts(6, [1, 2, 3, 4], [5, 6, 7, 8], 0, 1, &[1; 8], &tcp(22, 2222));
        let s = parse(&p, PORTS).unwrap();
        assert_eq!((s.outer.src_port, s.outer.dst_port), (Some(22), Some(2222)));
    }

    #[test]
    fn ipv4_bad_ihl_or_version() {
        let mut p = ipv4_udp();
        p[0] = 0x44;
        assert_eq!(parse(&p, PORTS), None);
        p[0] = 0x55;
        assert_eq!(parse(&p, PORTS), None);
        assert_eq!(parse(&[], PORTS), None);
    }

    #[test]
    fn ipv4_first_fragment_has_ports() {
        let p = ipv4(
            17,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            0x2000,
            0x42,
            &udp(1, 2, &[0; 8]),
        );
        let s = parse(&p, PORTS).unwrap();
        let f = s.outer.fragment.unwrap();
        assert_eq!((f.offset, f.more, f.id), (0, true, 0x42));
        assert_eq!((s.outer.src_port, s.outer.dst_port), (Some(1), Some(2)));
    }

    #[test]
    fn ipv4_nonfirst_fragment_has_no_ports() {
        let s = parse(&ipv4_nonfirst_fragment(), PORTS).unwrap();
        let f = s.outer.fragment.unwrap();
        assert_eq!((f.offset, f.more, f.id), (1480, true, 0xbeef));
        assert_eq!(s.outer.protocol, IPPROTO_UDP);
        assert_eq!((s.outer.src_port, s.outer.dst_port), (None, None));
        // Last fragment: MF clear, offset non-zero.
        let p = ipv4(17, [1, 1, 1, 1], [2, 2, 2, 2], 10, 3, &[0; 8]);
        let f = parse(&p, PORTS).unwrap().outer.fragment.unwrap();
        assert_eq!((f.offset, f.more), (80, false));
    }

    #[test]
    fn ipv4_nonfirst_fragment_to_vxlan_port_is_not_vxlan() {
        // Payload bytes that would look like UDP to 4789 + a VXLAN header if misread.
        let vx = vxlan(1, &[], ETH_P_IP, &[]);
        let p = ipv4(
            17,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            0x2000 | 1,
            3,
            &udp(1, 4789, &vx),
        );
        let s = parse(&p, PORTS).unwrap();
        assert_eq!(s.vxlan, None);
        assert_eq!(s.outer.dst_port, None);
    }

    #[test]
    fn ipv6_fragment_header_first_and_later() {
        let s = parse(&ipv6_fragment(0, true), &[]).unwrap();
        assert_eq!(s.outer.version, 6);
        assert_eq!(s.outer.src, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.outer.protocol, IPPROTO_UDP);
        let f = s.outer.fragment.unwrap();
        assert_eq!((f.offset, f.more, f.id), (0, true, 0x1234_5678));
        assert_eq!(
            (s.outer.src_port, s.outer.dst_port),
            (Some(40000), Some(4789))
        );
        assert_eq!(s.outer.total_len, 40 + 8 + 8 + 8 + 16);

        let s = parse(&ipv6_fragment(181, false), PORTS).unwrap();
        let f = s.outer.fragment.unwrap();
        assert_eq!((f.offset, f.more, f.id), (1448, false, 0x1234_5678));
        assert_eq!(s.outer.protocol, IPPROTO_UDP);
        assert_eq!((s.outer.src_port, s.outer.dst_port), (None, None));
        assert_eq!(s.vxlan, None);
    }

    #[test]
    fn ipv6_routing_dstopts_ah() {
        let mut ext = vec![IPV6_DSTOPTS, 0, 0, 0, 0, 0, 0, 0]; // routing, len 0
        ext.extend_from_slice(&[IPV6_AH, 1]); // dstopts, 16 bytes
        ext.extend_from_slice(&[0; 14]);
        ext.extend_from_slice(&[IPPROTO_TCP, 4]); // AH: (4 + 2) * 4 = 24 bytes
        ext.extend_from_slice(&[0; 22]);
        ext.extend_from_slice(&tcp(1234, 80));
        let p = ipv6(IPV6_ROUTING, v6("::1"), v6("::2"), &ext);
        let s = parse(&p, PORTS).unwrap();
        assert_eq!(s.outer.protocol, IPPROTO_TCP);
        assert_eq!(s.outer.fragment, None);
        assert_eq!((s.outer.src_port, s.outer.dst_port), (Some(1234), Some(80)));
    }

    #[test]
    fn ipv6_endless_extension_chain_is_bounded() {
        // 20 hop-by-hop headers pointing at each other: more than the walk allows.
        let mut ext = Vec::new();
        for _ in 0..20 {
            ext.extend_from_slice(&[IPV6_HOPOPTS, 0, 0, 0, 0, 0, 0, 0]);
        }
        let p = ipv6(IPV6_HOPOPTS, v6("::1"), v6("::2"), &ext);
        let s = parse(&p, PORTS).unwrap();
        assert_eq!(s.outer.protocol, IPV6_HOPOPTS);
        assert_eq!(s.outer.src_port, None);
    }

    #[test]
    fn vxlan_over_ipv4_first_fragment() {
        let s = parse(&vxlan_ipv4(), PORTS).unwrap();
        assert_eq!(s.outer.dst_port, Some(4789));
        assert!(s.outer.fragment.is_some());
        let vx = s.vxlan.unwrap();
        assert_eq!(vx.vni, 4242);
        assert_eq!(vx.vlan, None);
        let inner = vx.inner.unwrap();
        assert_eq!(inner.src, "192.168.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(inner.dst, "192.168.1.2".parse::<IpAddr>().unwrap());
        assert_eq!((inner.src_port, inner.dst_port), (Some(1111), Some(2222)));
        // Not a VXLAN port → no VXLAN.
        assert_eq!(parse(&vxlan_ipv4(), &[8472]).unwrap().vxlan, None);
    }

    #[test]
    fn vxlan_with_vlan_tag_and_inner_ipv6() {
        let vx = parse(&vxlan_vlan_ipv6(), PORTS).unwrap().vxlan.unwrap();
        assert_eq!(vx.vni, 0xabcdef);
        assert_eq!(vx.vlan, Some(100));
        let inner = vx.inner.unwrap();
        assert_eq!(inner.version, 6);
        assert_eq!(inner.protocol, IPPROTO_TCP);
        assert_eq!((inner.src_port, inner.dst_port), (Some(443), Some(55555)));
    }

    #[test]
    fn vxlan_qinq_over_ipv6() {
        let vx = parse(&vxlan_qinq_ipv4(), PORTS).unwrap().vxlan.unwrap();
        assert_eq!((vx.vni, vx.vlan), (7, Some(10)));
        assert_eq!(vx.inner.unwrap().dst_port, Some(8080));
    }

    #[test]
    fn vxlan_without_i_flag_or_non_ip_inner() {
        let mut p = vxlan_ipv4();
        p[28] = 0; // VXLAN flags
        assert_eq!(parse(&p, PORTS).unwrap().vxlan, None);
        let vx = vxlan(5, &[], 0x0806, &[0; 28]); // ARP
        let p = ipv4(17, [1, 1, 1, 1], [2, 2, 2, 2], 0, 1, &udp(9, 4789, &vx));
        let vx = parse(&p, PORTS).unwrap().vxlan.unwrap();
        assert_eq!((vx.vni, vx.inner), (5, None));
    }

    #[test]
    fn inner_packet_is_not_searched_for_vxlan() {
        let innermost = vxlan(99, &[], ETH_P_IP, &ipv4_udp());
        let inner = ipv4(
            17,
            [9, 9, 9, 9],
            [8, 8, 8, 8],
            0,
            1,
            &udp(1, 4789, &innermost),
        );
        let vx = vxlan(1, &[], ETH_P_IP, &inner);
        let p = ipv4(17, [1, 1, 1, 1], [2, 2, 2, 2], 0, 1, &udp(2, 4789, &vx));
        let vx = parse(&p, PORTS).unwrap().vxlan.unwrap();
        assert_eq!(vx.vni, 1);
        assert_eq!(vx.inner.unwrap().dst_port, Some(4789));
    }

    #[test]
    fn json_shape() {
        let s = parse(&vxlan_ipv4(), PORTS).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "src": "172.16.0.1", "dst": "172.16.0.2", "protocol": "udp",
                "src_port": 51000, "dst_port": 4789,
                "fragment": {"offset": 0, "more": true, "id": 9},
                "vxlan": {"vni": 4242, "inner": {
                    "src": "192.168.1.1", "dst": "192.168.1.2", "protocol": "udp",
                    "src_port": 1111, "dst_port": 2222
                }}
            })
        );
        let s = parse(&ipv4(47, [1, 1, 1, 1], [2, 2, 2, 2], 0, 1, &[0; 4]), PORTS).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"src": "1.1.1.1", "dst": "2.2.2.2", "protocol": 47})
        );
        let s = parse(&ipv6(58, v6("::1"), v6("::2"), &[128, 0, 0, 0]), PORTS).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap()["protocol"], "icmpv6");
    }

    /// Every prefix of every sample: never panics, `None` exactly when the fixed IP header is
    /// incomplete, and whatever is reported agrees with the full packet's summary.
    #[test]
    fn truncation_at_every_length() {
        for full in samples() {
            let whole = parse(&full, PORTS).unwrap();
            let fixed = if full[0] >> 4 == 4 { 20 } else { 40 };
            for len in 0..=full.len() {
                let got = parse(&full[..len], PORTS);
                let Some(got) = got else {
                    assert!(len < fixed, "None at {len} of {}", full.len());
                    continue;
                };
                assert!(len >= fixed);
                let (o, w) = (&got.outer, &whole.outer);
                assert_eq!((o.src, o.dst, o.total_len), (w.src, w.dst, w.total_len));
                for (a, b) in [(o.src_port, w.src_port), (o.dst_port, w.dst_port)] {
                    assert!(a.is_none() || a == b, "port {a:?} vs {b:?} at {len}");
                }
                assert!(o.fragment.is_none() || o.fragment == w.fragment);
                if let Some(vx) = &got.vxlan {
                    let wv = whole.vxlan.as_ref().unwrap();
                    assert_eq!(vx.vni, wv.vni);
                    assert!(vx.vlan.is_none() || vx.vlan == wv.vlan);
                    if let Some(inner) = &vx.inner {
                        let wi = wv.inner.as_ref().unwrap();
                        assert_eq!((inner.src, inner.dst), (wi.src, wi.dst));
                        assert!(inner.dst_port.is_none() || inner.dst_port == wi.dst_port);
                    }
                }
                if len == full.len() {
                    assert_eq!(got, whole);
                }
            }
        }
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random bytes, and valid samples with random bytes flipped: never panics.
    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let samples = samples();
        let mut parsed = 0;
        for i in 0..200_000 {
            let mut buf: Vec<u8> = if i % 2 == 0 {
                let len = (rng.next() % 160) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                // Steer half of these into the IPv4/IPv6 parsers.
                if let Some(first) = b.first_mut() {
                    *first = [0x45, 0x60, 0x4f, *first][(rng.next() % 4) as usize];
                }
                b
            } else {
                samples[(rng.next() % samples.len() as u64) as usize].clone()
            };
            for _ in 0..(rng.next() % 4) {
                if !buf.is_empty() {
                    let at = (rng.next() % buf.len() as u64) as usize;
                    buf[at] = rng.next() as u8;
                }
            }
            let cut = (rng.next() as usize) % (buf.len() + 1);
            if parse(&buf[..cut], PORTS).is_some() {
                parsed += 1;
            }
        }
        assert!(
            parsed > 10_000,
            "the fuzz loop should reach the parsers: {parsed}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            first in proptest::prelude::any::<u8>(),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            ports in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..3),
        ) {
            let mut data = vec![first];
            data.extend_from_slice(&rest);
            let _ = parse(&data, &ports);
            let _ = parse(&data, PORTS);
        }
    }
}
