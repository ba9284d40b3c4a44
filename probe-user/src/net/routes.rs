//! Routes a VXLAN device's outer packets take: the path MTU to a remote VTEP (`ip route get`)
//! and, for `external` devices, the remotes and VNIs of lightweight-tunnel routes
//! (`ip route add PREFIX encap ip id 42 dst R dev vx`).
//!
//! The path MTU is what `vxlan_xmit_one` → `ip_tunnel_xmit`/`udp_tunnel_xmit_skb` fragment
//! against: `dst_mtu()` of the outer route, i.e. (ipv4_mtu) a cached PMTU exception if one has
//! not expired, else the route's `mtu` metric, else the output device's MTU. An `RTM_GETROUTE`
//! request with `RTA_DST` returns all of it: `rt_fill_info` puts the exception's PMTU (or the
//! route's metric) into `RTA_METRICS`/`RTAX_MTU`, and the output device as `RTA_OIF`.

use std::net::IpAddr;

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteIp6Tunnel, RouteIpTunnel, RouteLwTunnelEncap, RouteMessage,
    RouteMetric,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::NetError;
use super::rtnl::Rtnl;

/// The route to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RouteTo {
    pub oif: u32,
    /// `RTAX_MTU`: a route `mtu` or a cached path-MTU exception.
    pub mtu: Option<u32>,
}

/// The route to `dst` as the kernel would pick it (`ip route get dst [oif OIF]`).
pub fn route_get(
    rtnl: &mut Rtnl,
    dst: IpAddr,
    oif: Option<u32>,
) -> Result<Option<RouteTo>, NetError> {
    let mut m = RouteMessage::default();
    let (family, len) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    m.header.address_family = family;
    m.header.destination_prefix_length = len;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    if let Some(o) = oif {
        m.attributes.push(RouteAttribute::Oif(o));
    }
    let replies = match rtnl.request("route get", RouteNetlinkMessage::GetRoute(m)) {
        Ok(r) => r,
        Err(NetError::Netlink { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL | libc::ENODEV)
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(replies.iter().find_map(|r| match r {
        RouteNetlinkMessage::NewRoute(m) => parse_route_to(m),
        _ => None,
    }))
}

/// Output device and MTU metric of an `RTM_NEWROUTE` answer.
pub fn parse_route_to(m: &RouteMessage) -> Option<RouteTo> {
    let mut oif = None;
    let mut mtu = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    if let RouteMetric::Mtu(v) = x
                        && *v != 0
                    {
                        mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    Some(RouteTo { oif: oif?, mtu })
}

/// A lightweight-tunnel route through a device: `encap ip id VNI dst REMOTE dev OIF`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapRoute {
    pub oif: u32,
    pub remote: IpAddr,
    /// `LWTUNNEL_IP_ID`: the tunnel id, i.e. the VNI for VXLAN.
    pub vni: Option<u32>,
}

/// Decodes one route with an `ip`/`ip6` encapsulation; `None` for other routes.
pub fn parse_encap_route(m: &RouteMessage) -> Option<EncapRoute> {
    let mut oif = None;
    let mut remote = None;
    let mut vni = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Encap(es) => {
                for e in es {
                    match e {
                        RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(d)) => {
                            remote = Some(IpAddr::V4(*d));
                        }
                        RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(i))
                        | RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Id(i)) => {
                            vni = u32::try_from(*i).ok();
                        }
                        RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(d)) => {
                            remote = Some(IpAddr::V6(*d));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(EncapRoute {
        oif: oif?,
        remote: remote?,
        vni,
    })
}

/// Every IPv4 and IPv6 route with a tunnel encapsulation in the socket's namespace.
pub fn dump_encap_routes(rtnl: &mut Rtnl) -> Result<Vec<EncapRoute>, NetError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        for r in rtnl.dump("route dump", RouteNetlinkMessage::GetRoute(m))? {
            if let RouteNetlinkMessage::NewRoute(m) = r
                && let Some(e) = parse_encap_route(&m)
            {
                out.push(e);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn route_mtu_and_encap() {
        let mut m = RouteMessage::default();
        m.attributes = vec![
            RouteAttribute::Oif(4),
            RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)]),
        ];
        assert_eq!(
            parse_route_to(&m),
            Some(RouteTo {
                oif: 4,
                mtu: Some(1400)
            })
        );
        assert_eq!(parse_encap_route(&m), None);
        m.attributes.push(RouteAttribute::Encap(vec![
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(42)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(Ipv4Addr::new(10, 0, 0, 2))),
        ]));
        assert_eq!(
            parse_encap_route(&m),
            Some(EncapRoute {
                oif: 4,
                remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                vni: Some(42)
            })
        );
        m.attributes.remove(0);
        assert_eq!(parse_route_to(&m), None, "no output device");
    }
}
