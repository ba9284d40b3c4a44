//! The bridge forwarding database of VXLAN devices (`bridge fdb show dev vx…`): which remote
//! VTEP each inner MAC goes to. An `RTM_GETNEIGH` dump with family `AF_BRIDGE`; VXLAN
//! entries carry the remote as `NDA_DST` (`vxlan_fdb_info`), possibly `NDA_VNI`.
//!
//! How the kernel uses it (`vxlan_xmit`, drivers/net/vxlan/vxlan_core.c): the inner
//! destination MAC is looked up (`vxlan_find_mac`); without an entry the all-zeros entry is
//! used (the default destination: `remote` at creation, or `bridge fdb append 00:00:00:00:00:00
//! dev vx dst …` entries as libnetwork and flannel write them); every `dst` of that entry gets
//! a copy. Runs in the namespace the VXLAN device is in now (the FDB belongs to the device).

use std::net::IpAddr;

use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::NetError;
use super::rtnl::Rtnl;

/// One FDB entry of a device with a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The device the entry belongs to (the VXLAN device).
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: IpAddr,
    /// `NDA_VNI` when the entry overrides the device's VNI.
    pub vni: Option<u32>,
}

/// Decodes one `RTM_NEWNEIGH` of family `AF_BRIDGE`; `None` without a MAC or an IP `dst`.
pub fn parse_fdb(m: &NeighbourMessage) -> Option<FdbEntry> {
    if m.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    let mut vni = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                let mut x = [0u8; 6];
                x.copy_from_slice(b);
                mac = Some(x);
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                dst = Some(IpAddr::V4(*a));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                dst = Some(IpAddr::V6(*a));
            }
            // The crate decodes NDA_DST by the message's family; for AF_BRIDGE it keeps the
            // raw bytes: 4 for an IPv4 remote, 16 for IPv6 (`vxlan_nla_put_addr`).
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = match b.len() {
                    4 => Some(IpAddr::from(<[u8; 4]>::try_from(&b[..]).ok()?)),
                    16 => Some(IpAddr::from(<[u8; 16]>::try_from(&b[..]).ok()?)),
                    _ => None,
                };
            }
            NeighbourAttribute::Vni(v) => vni = Some(*v),
            _ => {}
        }
    }
    Some(FdbEntry {
        ifindex: m.header.ifindex,
        mac: mac?,
        dst: dst?,
        vni,
    })
}

/// Every FDB entry with a remote in the socket's namespace.
pub fn dump_fdb(rtnl: &mut Rtnl) -> Result<Vec<FdbEntry>, NetError> {
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Bridge;
    let replies = rtnl.dump("fdb dump", RouteNetlinkMessage::GetNeighbour(req))?;
    Ok(replies
        .iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewNeighbour(m) => parse_fdb(m),
            _ => None,
        })
        .collect())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn parses_vxlan_fdb_entries_only() {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = 7;
        m.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(vec![0, 0, 0, 0, 0, 0]),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 0, 0, 2))),
        ];
        let e = parse_fdb(&m).unwrap();
        assert_eq!(e.ifindex, 7);
        assert_eq!(e.mac, [0; 6]);
        assert_eq!(e.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(e.vni, None);
        // As the crate decodes AF_BRIDGE messages: raw bytes.
        m.attributes[1] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![10, 0, 0, 3]));
        assert_eq!(
            parse_fdb(&m).unwrap().dst,
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))
        );
        // A bridge port's local entry has no dst: not a tunnel entry.
        m.attributes.pop();
        assert!(parse_fdb(&m).is_none());
        // ARP neighbours are not FDB entries.
        m.header.family = AddressFamily::Inet;
        assert!(parse_fdb(&m).is_none());
        assert_eq!(
            format_mac(&[0x02, 0x42, 0xa, 0, 0, 0xff]),
            "02:42:0a:00:00:ff"
        );
    }
}
