//! Links of one network namespace (rtnetlink `RTM_GETLINK` dump), VXLAN configuration, and
//! which underlay device a VXLAN encapsulates onto.
//!
//! Everything here runs inside the namespace (in a [`super::netns::run_in_netns`] thread) over
//! an [`Rtnl`] socket created there.
//!
//! Underlay resolution, in order (the first that applies wins):
//! 1. `IFLA_VXLAN_LINK` (`ip link add … type vxlan … dev X`): the kernel binds the device to X.
//! 2. Otherwise the device the route to the remote / multicast group goes through
//!    (`ip route get <remote>`), which is where the kernel's `vxlan_xmit_one` sends the outer
//!    packet for the default destination.
//! 3. Otherwise the device that owns the `local` address.
//! 4. Otherwise none: e.g. `external` / `collect_metadata` devices (Cilium) or FDB-only devices
//!    (Docker overlay), whose underlay is chosen per packet.
//!
//! A VXLAN device keeps its UDP socket — and so its underlay — in the namespace it was
//! *created* in, also after being moved (Docker creates overlay VXLANs in the host namespace
//! and moves them into the sandbox). The kernel then reports `IFLA_LINK_NETNSID`, an id local
//! to the device's current namespace; it is mapped back to a namespace inode with
//! `RTM_GETNSID` over the fds of the known namespaces, and steps 1–3 apply in that namespace.
//!
//! Remotes: besides the device-level underlay, every remote VTEP of a device is listed with
//! the path its outer packets take (see [`super::fdb`] and [`super::routes`]): the `dst`s of
//! its FDB entries (which include the default `remote`), and for `external` devices the
//! remotes of the lightweight-tunnel routes through it. Their routes are looked up in the
//! link namespace, with the `dev` as output interface when one was given (`vxlan_xmit_one`
//! routes with `oif = rdst->remote_ifindex`).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::Serialize;
use tracing::trace;

use super::fdb::{FdbEntry, dump_fdb};
use super::routes::{EncapRoute, RouteTo, dump_encap_routes, route_get};
use super::rtnl::Rtnl;
use super::{NetError, NetnsInode};

/// Where a remote VTEP of a device was learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteSource {
    /// A bridge FDB entry's `dst` (includes the default `remote`).
    Fdb,
    /// A lightweight-tunnel route through an external device (`encap ip … dst R`).
    EncapRoute,
}

/// One remote VTEP of a VXLAN device and the route its outer packets take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteSpec {
    pub addr: IpAddr,
    pub source: RemoteSource,
    /// Inner MACs the FDB sends to this remote (all zeros = the default destination).
    #[serde(skip)]
    pub macs: Vec<[u8; 6]>,
    /// VNIs used towards this remote (encap route ids, FDB `vni`), sorted.
    pub vnis: Vec<u32>,
    /// The route in the link namespace; None when unknown or unroutable.
    pub route: Option<RouteTo>,
}

impl RemoteSpec {
    /// Whether the device's default destination (all-zeros FDB entry) includes this remote.
    pub fn is_default(&self) -> bool {
        self.macs.contains(&[0; 6])
    }
}

/// The remotes of device `ifindex` from its FDB entries and the encap routes through it,
/// one per address, in address order.
pub fn remotes_of(ifindex: u32, fdb: &[FdbEntry], encap: &[EncapRoute]) -> Vec<RemoteSpec> {
    let mut out: std::collections::BTreeMap<IpAddr, RemoteSpec> = Default::default();
    for e in fdb.iter().filter(|e| e.ifindex == ifindex) {
        let r = out.entry(e.dst).or_insert_with(|| RemoteSpec {
            addr: e.dst,
            source: RemoteSource::Fdb,
            macs: Vec::new(),
            vnis: Vec::new(),
            route: None,
        });
        if !r.macs.contains(&e.mac) {
            r.macs.push(e.mac);
        }
        if let Some(v) = e.vni
            && !r.vnis.contains(&v)
        {
            r.vnis.push(v);
        }
    }
    for e in encap.iter().filter(|e| e.oif == ifindex) {
        let r = out.entry(e.remote).or_insert_with(|| RemoteSpec {
            addr: e.remote,
            source: RemoteSource::EncapRoute,
            macs: Vec::new(),
            vnis: Vec::new(),
            route: None,
        });
        if let Some(v) = e.vni
            && !r.vnis.contains(&v)
        {
            r.vnis.push(v);
        }
    }
    let mut v: Vec<RemoteSpec> = out.into_values().collect();
    for r in &mut v {
        r.vnis.sort_unstable();
        r.macs.sort_unstable();
    }
    v
}

/// Looks up the route to each remote of `cfg` in the socket's namespace (its link namespace).
pub fn resolve_remote_routes(rtnl: &mut Rtnl, cfg: &mut VxlanConfig) -> Result<(), NetError> {
    for r in &mut cfg.remotes {
        r.route = route_get(rtnl, r.addr, cfg.link)?;
    }
    Ok(())
}

/// The address family of a VXLAN's outer (underlay) packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayFamily {
    Ipv4,
    Ipv6,
}

impl UnderlayFamily {
    /// Bytes VXLAN adds in front of the inner IP packet: outer IP header (20 / 40) + UDP (8) +
    /// VXLAN header (8) + the inner Ethernet header (14). The kernel uses the same numbers
    /// (`VXLAN_HEADROOM` = 50, `VXLAN6_HEADROOM` = 70) to cap the MTU of a device created
    /// with `dev`.
    pub fn overhead(self) -> u32 {
        match self {
            UnderlayFamily::Ipv4 => 50,
            UnderlayFamily::Ipv6 => 70,
        }
    }
}

/// How a VXLAN's underlay device was determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderlaySource {
    /// `IFLA_VXLAN_LINK` (`dev` at creation).
    Link,
    /// The route to the remote / group address.
    Route,
    /// The device owning the `local` address.
    LocalAddress,
}

/// A VXLAN's underlay device: (namespace, ifindex) and how it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct UnderlayRef {
    pub netns: NetnsInode,
    pub ifindex: u32,
    pub source: UnderlaySource,
}

/// VXLAN attributes of a link (`IFLA_INFO_DATA` of kind `vxlan`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanConfig {
    pub vni: u32,
    /// `IFLA_VXLAN_LINK`: the ifindex given with `dev`, in the underlay namespace.
    pub link: Option<u32>,
    /// Default destination: unicast remote or multicast group (`IFLA_VXLAN_GROUP{,6}`).
    pub remote: Option<IpAddr>,
    /// Source address (`IFLA_VXLAN_LOCAL{,6}`).
    pub local: Option<IpAddr>,
    /// UDP destination port (`IFLA_VXLAN_PORT`; the kernel's default is 8472 when
    /// `dstport` is not given, IANA's is 4789).
    pub dst_port: u16,
    /// From the remote / local addresses; IPv4 when neither is set (the kernel's default).
    pub family: UnderlayFamily,
    /// `external` / `collect_metadata`: destinations come per packet from the tunnel metadata.
    pub external: bool,
    /// Resolved underlay, if any (see the module docs).
    pub underlay: Option<UnderlayRef>,
    /// The namespace the device's socket lives in (where it was created), when known.
    pub link_netns: Option<NetnsInode>,
    /// Remote VTEPs with their routes (see the module docs).
    pub remotes: Vec<RemoteSpec>,
}

/// One link of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    /// `IFLA_INFO_KIND` (`veth`, `vxlan`, `bridge`, …); none for physical devices and `lo`.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// `IFLA_LINK`: the lower / peer device's ifindex (in `link_netnsid`'s namespace if set).
    pub parent_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace id (local to this namespace) of the peer / lower
    /// device, for veth peers and moved tunnels.
    pub link_netnsid: Option<i32>,
    pub vxlan: Option<VxlanConfig>,
}

/// Decodes one `RTM_NEWLINK` message. Returns `None` for messages without a name.
pub fn parse_link(msg: &LinkMessage) -> Option<Link> {
    let mut link = Link {
        ifindex: msg.header.index,
        name: String::new(),
        mtu: 0,
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        parent_ifindex: None,
        link_netnsid: None,
        vxlan: None,
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Link(l) => link.parent_ifindex = Some(*l),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(parse_vxlan(attrs));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// Decodes VXLAN attributes. The kernel dumps `GROUP`/`GROUP6` only for a non-zero default
/// destination and `LOCAL`/`LOCAL6` only for a non-zero source (`vxlan_fill_info`).
pub fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanConfig {
    let mut c = VxlanConfig {
        vni: 0,
        link: None,
        remote: None,
        local: None,
        dst_port: 8472,
        family: UnderlayFamily::Ipv4,
        external: false,
        underlay: None,
        link_netns: None,
        remotes: Vec::new(),
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => c.vni = *v,
            // 0 means "no device" in requests; the kernel omits it then, but be tolerant.
            InfoVxlan::Link(l) if *l != 0 => c.link = Some(*l),
            InfoVxlan::Group(g) => c.remote = Some(IpAddr::V4(*g)),
            InfoVxlan::Group6(g) => c.remote = Some(IpAddr::V6(*g)),
            InfoVxlan::Local(l) => c.local = Some(IpAddr::V4(*l)),
            InfoVxlan::Local6(l) => c.local = Some(IpAddr::V6(*l)),
            InfoVxlan::Port(p) => c.dst_port = *p,
            InfoVxlan::CollectMetadata(m) => c.external = *m,
            _ => {}
        }
    }
    if matches!(c.remote, Some(IpAddr::V6(_))) || matches!(c.local, Some(IpAddr::V6(_))) {
        c.family = UnderlayFamily::Ipv6;
    }
    c
}

/// Dumps every link of the socket's namespace.
pub fn dump_links(rtnl: &mut Rtnl) -> Result<Vec<Link>, NetError> {
    let mut req = LinkMessage::default();
    // Skip the per-link statistics blocks: they are most of a dump's size and unused here.
    req.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let replies = rtnl.dump("link dump", RouteNetlinkMessage::GetLink(req))?;
    let mut links: Vec<Link> = replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => parse_link(l),
            _ => None,
        })
        .collect();
    links.sort_by_key(|l| l.ifindex);
    Ok(links)
}

/// The output interface of the route to `dst` (`ip route get dst`), if there is one.
pub fn route_oif(rtnl: &mut Rtnl, dst: IpAddr) -> Result<Option<u32>, NetError> {
    let mut m = RouteMessage::default();
    let (family, len) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    m.header.address_family = family;
    m.header.destination_prefix_length = len;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let replies = match rtnl.request("route get", RouteNetlinkMessage::GetRoute(m)) {
        Ok(r) => r,
        // No route (ENETUNREACH / EHOSTUNREACH) is an answer, not a failure.
        Err(NetError::Netlink { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(replies.iter().find_map(|r| match r {
        RouteNetlinkMessage::NewRoute(m) => m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }),
        _ => None,
    }))
}

/// The ifindex of the device that holds address `addr`, if any.
pub fn address_owner(rtnl: &mut Rtnl, addr: IpAddr) -> Result<Option<u32>, NetError> {
    let replies = rtnl.dump(
        "address dump",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    Ok(replies.iter().find_map(|r| match r {
        RouteNetlinkMessage::NewAddress(m) => m
            .attributes
            .iter()
            .any(|a| {
                matches!(a, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == addr)
            })
            .then_some(m.header.index),
        _ => None,
    }))
}

/// Maps a namespace id local to the socket's namespace (`IFLA_LINK_NETNSID`) to the inode of
/// one of `candidates` by asking the kernel for each candidate's id (`RTM_GETNSID` with
/// `NETNSA_FD`). Only ids that already exist are reported; nothing is allocated.
pub fn nsid_to_inode(
    rtnl: &mut Rtnl,
    nsid: i32,
    candidates: &[(NetnsInode, Arc<OwnedFd>)],
) -> Option<NetnsInode> {
    candidates.iter().find_map(|(ino, fd)| {
        let mut m = NsidMessage::default();
        let raw = u32::try_from(fd.as_raw_fd()).ok()?;
        m.attributes.push(NsidAttribute::Fd(raw));
        let replies = rtnl
            .request("nsid get", RouteNetlinkMessage::GetNsId(m))
            .ok()?;
        let id = replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewNsId(m) => m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(i) => Some(*i),
                _ => None,
            }),
            _ => None,
        })?;
        (id == nsid).then_some(*ino)
    })
}

/// Steps 2–3 of the module docs, in the socket's namespace (`netns`): the route to the remote,
/// else the owner of the local address.
pub fn resolve_by_address(
    rtnl: &mut Rtnl,
    netns: NetnsInode,
    cfg: &VxlanConfig,
) -> Result<Option<UnderlayRef>, NetError> {
    if let Some(remote) = cfg.remote
        && let Some(ifindex) = route_oif(rtnl, remote)?
    {
        return Ok(Some(UnderlayRef {
            netns,
            ifindex,
            source: UnderlaySource::Route,
        }));
    }
    if let Some(local) = cfg.local
        && let Some(ifindex) = address_owner(rtnl, local)?
    {
        return Ok(Some(UnderlayRef {
            netns,
            ifindex,
            source: UnderlaySource::LocalAddress,
        }));
    }
    Ok(None)
}

/// A VXLAN whose underlay lives in another namespace and still needs route / address lookups
/// there (its remotes' routes; its underlay too without `IFLA_VXLAN_LINK`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUnderlay {
    pub ifindex: u32,
    pub underlay_netns: NetnsInode,
}

/// The links of one namespace, with VXLAN underlays resolved where possible in this
/// namespace. Returns the links and the VXLANs whose lookup must happen in another namespace.
pub fn collect_links(
    netns: NetnsInode,
    candidates: &[(NetnsInode, Arc<OwnedFd>)],
) -> Result<(Vec<Link>, Vec<PendingUnderlay>), NetError> {
    let mut rtnl = Rtnl::new()?;
    let mut links = dump_links(&mut rtnl)?;
    let mut pending = Vec::new();
    let any_vxlan = links.iter().any(|l| l.vxlan.is_some());
    let fdb = if any_vxlan {
        dump_fdb(&mut rtnl)?
    } else {
        Vec::new()
    };
    let encap = if links
        .iter()
        .any(|l| l.vxlan.as_ref().is_some_and(|v| v.external))
    {
        dump_encap_routes(&mut rtnl)?
    } else {
        Vec::new()
    };
    for l in &mut links {
        let Some(cfg) = l.vxlan.as_mut() else {
            continue;
        };
        cfg.remotes = remotes_of(l.ifindex, &fdb, &encap);
        let under_ns = match l.link_netnsid {
            None => netns,
            Some(id) => match nsid_to_inode(&mut rtnl, id, candidates) {
                Some(ino) => ino,
                None => {
                    trace!(device = %l.name, nsid = id, "underlay namespace not known");
                    continue;
                }
            },
        };
        cfg.link_netns = Some(under_ns);
        if let Some(ifindex) = cfg.link {
            cfg.underlay = Some(UnderlayRef {
                netns: under_ns,
                ifindex,
                source: UnderlaySource::Link,
            });
        }
        if under_ns == netns {
            if cfg.link.is_none() {
                cfg.underlay = resolve_by_address(&mut rtnl, netns, cfg)?;
            }
            resolve_remote_routes(&mut rtnl, cfg)?;
        } else {
            pending.push(PendingUnderlay {
                ifindex: l.ifindex,
                underlay_netns: under_ns,
            });
        }
    }
    Ok((links, pending))
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn vxlan_family_and_defaults() {
        let c = parse_vxlan(&[InfoVxlan::Id(4242), InfoVxlan::Port(4789)]);
        assert_eq!(c.vni, 4242);
        assert_eq!(c.dst_port, 4789);
        assert_eq!(c.family, UnderlayFamily::Ipv4);
        assert_eq!(c.family.overhead(), 50);
        assert_eq!(c.link, None);

        let c = parse_vxlan(&[
            InfoVxlan::Id(1),
            InfoVxlan::Group6(Ipv6Addr::LOCALHOST),
            InfoVxlan::Link(7),
        ]);
        assert_eq!(c.family, UnderlayFamily::Ipv6);
        assert_eq!(c.family.overhead(), 70);
        assert_eq!(c.link, Some(7));
        assert_eq!(c.dst_port, 8472, "kernel default port when not dumped");

        let c = parse_vxlan(&[InfoVxlan::Local6(Ipv6Addr::LOCALHOST), InfoVxlan::Link(0)]);
        assert_eq!(c.family, UnderlayFamily::Ipv6);
        assert_eq!(c.link, None);

        let c = parse_vxlan(&[
            InfoVxlan::Group(Ipv4Addr::new(10, 0, 0, 2)),
            InfoVxlan::Local(Ipv4Addr::new(10, 0, 0, 1)),
            InfoVxlan::CollectMetadata(true),
        ]);
        assert_eq!(c.family, UnderlayFamily::Ipv4);
        assert!(c.external);
        assert_eq!(c.remote, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
    }

    #[test]
    fn parses_link_message() {
        let mut m = LinkMessage::default();
        m.header.index = 5;
        m.header.flags = LinkFlags::Up;
        m.attributes = vec![
            LinkAttribute::IfName("vx0".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(netlink_packet_route::link::InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Id(42)])),
            ]),
        ];
        let l = parse_link(&m).unwrap();
        assert_eq!(l.ifindex, 5);
        assert_eq!(l.name, "vx0");
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.kind.as_deref(), Some("vxlan"));
        assert!(l.up);
        assert_eq!(l.vxlan.unwrap().vni, 42);
        assert!(parse_link(&LinkMessage::default()).is_none());
    }
}
