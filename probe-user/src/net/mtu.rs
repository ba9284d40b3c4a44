//! VXLAN MTU mismatch: pure logic, no I/O.
//!
//! A VXLAN device with MTU `m` emits outer packets of up to `m + overhead` bytes (plus the
//! inner Ethernet header accounted in the overhead). When that exceeds the underlay device's
//! MTU, the outer packet is fragmented (or, with a cached path MTU, the inner one is — see
//! platform.md), and under load the receiver's reassembly queue overflows silently. The kernel
//! prevents this only when the device is created with `dev` (`vxlan_dev_configure` and
//! `vxlan_change_mtu` cap it at `lower MTU - headroom`); it does not react when the underlay's
//! MTU is lowered later, nor for devices without `dev`, nor for a route `mtu` or a cached
//! path-MTU exception on the way to one remote.
//!
//! The verdict is per remote VTEP ([`check_remotes`]): remotes are grouped by underlay device
//! and path MTU, and each group the device's MTU does not fit is one report naming its
//! remotes (at most [`MAX_NAMED_REMOTES`], with the total).

use std::net::IpAddr;

use serde::Serialize;

use super::NetnsInode;

/// The largest VXLAN MTU that fits in one underlay packet.
pub fn max_mtu(underlay_mtu: u32, overhead: u32) -> u32 {
    underlay_mtu.saturating_sub(overhead)
}

/// Is a VXLAN device with `mtu` too large for its underlay?
pub fn is_mismatched(mtu: u32, underlay_mtu: u32, overhead: u32) -> bool {
    mtu > max_mtu(underlay_mtu, overhead)
}

/// A VXLAN device whose MTU exceeds its underlay MTU minus the encapsulation overhead.
/// This is also the body of the `"kind": "mtu_mismatch"` JSON event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct MtuMismatch {
    /// Inode of the VXLAN device's network namespace.
    pub netns: NetnsInode,
    /// VXLAN device name.
    pub device: String,
    pub ifindex: u32,
    pub vni: u32,
    /// The VXLAN device's MTU.
    pub mtu: u32,
    /// Underlay device name.
    pub underlay: String,
    pub underlay_mtu: u32,
    /// 50 (IPv4 underlay) or 70 (IPv6).
    pub overhead: u32,
    /// `underlay_mtu - overhead`: the largest MTU that would not fragment.
    pub max_mtu: u32,
    /// Namespace of the underlay device (the VXLAN's link namespace); None for the
    /// device-level verdict.
    pub underlay_netns: Option<NetnsInode>,
    /// The underlay device's own MTU (`underlay_mtu` is the path MTU: it can be lower).
    pub underlay_device_mtu: u32,
    /// What set `underlay_mtu`: `"device"` (the underlay device's MTU) or `"route"` (a route
    /// `mtu` or a cached path-MTU exception).
    pub limited_by: &'static str,
    /// Remote VTEPs whose path this is (sorted, at most [`MAX_NAMED_REMOTES`]); empty for the
    /// device-level verdict.
    pub remotes: Vec<IpAddr>,
    /// How many remotes share this path (≥ `remotes.len()`).
    pub remotes_total: u32,
}

/// Remotes named in one report; the rest are only counted (`remotes_total`).
pub const MAX_NAMED_REMOTES: usize = 16;

/// The path to one remote VTEP.
#[derive(Clone, Debug)]
pub struct RemotePathMtu<'a> {
    pub remote: IpAddr,
    pub underlay: &'a str,
    pub underlay_netns: NetnsInode,
    pub underlay_device_mtu: u32,
    pub route_mtu: Option<u32>,
    /// `min(route_mtu, underlay_device_mtu)`.
    pub path_mtu: u32,
}

/// Reports per (underlay, path MTU) group of `paths` the device's MTU does not fit, in
/// underlay-name then path-MTU order. When one underlay has groups with different path MTUs
/// the smallest is reported (with every remote of that underlay that does not fit).
pub fn check_remotes(v: &VxlanMtu<'_>, paths: &[RemotePathMtu<'_>]) -> Vec<MtuMismatch> {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<(&str, NetnsInode), Vec<&RemotePathMtu<'_>>> = BTreeMap::new();
    for p in paths {
        if is_mismatched(v.mtu, p.path_mtu, v.overhead) {
            groups
                .entry((p.underlay, p.underlay_netns))
                .or_default()
                .push(p);
        }
    }
    groups
        .into_values()
        .map(|mut ps| {
            ps.sort_by_key(|p| (p.path_mtu, p.remote));
            let worst = ps[0];
            let mut remotes: Vec<IpAddr> = ps.iter().map(|p| p.remote).collect();
            remotes.sort_unstable();
            let total = remotes.len() as u32;
            remotes.truncate(MAX_NAMED_REMOTES);
            MtuMismatch {
                netns: v.netns,
                device: v.device.to_string(),
                ifindex: v.ifindex,
                vni: v.vni,
                mtu: v.mtu,
                underlay: worst.underlay.to_string(),
                underlay_mtu: worst.path_mtu,
                overhead: v.overhead,
                max_mtu: max_mtu(worst.path_mtu, v.overhead),
                underlay_netns: Some(worst.underlay_netns),
                underlay_device_mtu: worst.underlay_device_mtu,
                limited_by: if worst.path_mtu < worst.underlay_device_mtu {
                    "route"
                } else {
                    "device"
                },
                remotes,
                remotes_total: total,
            }
        })
        .collect()
}

/// The inputs [`check`] needs about one VXLAN device.
#[derive(Clone, Debug)]
pub struct VxlanMtu<'a> {
    pub netns: NetnsInode,
    pub device: &'a str,
    pub ifindex: u32,
    pub vni: u32,
    pub mtu: u32,
    pub overhead: u32,
    /// Underlay device name and MTU; `None` when the underlay is unknown (no verdict).
    pub underlay: Option<(&'a str, u32)>,
}

/// The mismatch report for one device, if it is mismatched.
pub fn check(v: &VxlanMtu<'_>) -> Option<MtuMismatch> {
    let (underlay, underlay_mtu) = v.underlay?;
    is_mismatched(v.mtu, underlay_mtu, v.overhead).then(|| MtuMismatch {
        netns: v.netns,
        device: v.device.to_string(),
        ifindex: v.ifindex,
        vni: v.vni,
        mtu: v.mtu,
        underlay: underlay.to_string(),
        underlay_mtu,
        overhead: v.overhead,
        max_mtu: max_mtu(underlay_mtu, v.overhead),
        underlay_netns: None,
        underlay_device_mtu: underlay_mtu,
        limited_by: "device",
        remotes: Vec::new(),
        remotes_total: 0,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    fn dev(mtu: u32, overhead: u32, underlay: Option<(&str, u32)>) -> VxlanMtu<'_> {
        VxlanMtu {
            netns: 4026532000,
            device: "vx0",
            ifindex: 3,
            vni: 4242,
            mtu,
            overhead,
            underlay,
        }
    }

    #[test]
    fn boundary_ipv4() {
        // 1450 over 1500 is exactly right; one byte more is a mismatch.
        assert!(check(&dev(1450, 50, Some(("eth0", 1500)))).is_none());
        let m = check(&dev(1451, 50, Some(("eth0", 1500)))).unwrap();
        assert_eq!(m.max_mtu, 1450);
        assert_eq!(m.mtu, 1451);
        assert_eq!(m.underlay, "eth0");
        assert_eq!(m.vni, 4242);
    }

    #[test]
    fn classic_1500_over_1500() {
        let m = check(&dev(1500, 50, Some(("veth0", 1500)))).unwrap();
        assert_eq!(
            (m.mtu, m.underlay_mtu, m.overhead, m.max_mtu),
            (1500, 1500, 50, 1450)
        );
    }

    #[test]
    fn boundary_ipv6() {
        assert!(check(&dev(1430, 70, Some(("eth0", 1500)))).is_none());
        assert!(check(&dev(1450, 70, Some(("eth0", 1500)))).is_some());
    }

    #[test]
    fn unknown_underlay_gives_no_verdict_and_tiny_underlay_saturates() {
        assert!(check(&dev(9000, 50, None)).is_none());
        assert_eq!(max_mtu(40, 50), 0);
        assert!(is_mismatched(68, 40, 50));
        assert!(!is_mismatched(8950, 9000, 50));
    }

    #[test]
    fn json_fields() {
        let m = check(&dev(1500, 50, Some(("veth0", 1500)))).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "netns",
            "device",
            "ifindex",
            "vni",
            "mtu",
            "underlay",
            "underlay_mtu",
            "overhead",
            "max_mtu",
            "underlay_netns",
            "underlay_device_mtu",
            "limited_by",
            "remotes",
            "remotes_total",
        ] {
            assert!(keys.contains(&k), "{k} missing from {v}");
        }
        assert_eq!(keys.len(), 14);
    }

    #[test]
    fn per_remote_groups_by_underlay_and_names_remotes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = |r: &'static str, u: &'static str, dev: u32, route: Option<u32>| RemotePathMtu {
            remote: ip(r),
            underlay: u,
            underlay_netns: 1,
            underlay_device_mtu: dev,
            route_mtu: route,
            path_mtu: route.map_or(dev, |m| m.min(dev)),
        };
        let v = dev(1450, 50, None);
        // Fits 1500 everywhere except one remote whose route says 1400 and a second underlay.
        let paths = [
            p("10.0.0.2", "eth0", 1500, None),
            p("10.0.0.3", "eth0", 1500, Some(1400)),
            p("10.1.0.2", "eth1", 1480, None),
            p("10.1.0.3", "eth1", 1480, None),
        ];
        let ms = check_remotes(&v, &paths);
        assert_eq!(ms.len(), 2, "{ms:?}");
        assert_eq!(ms[0].underlay, "eth0");
        assert_eq!(ms[0].remotes, vec![ip("10.0.0.3")]);
        assert_eq!((ms[0].underlay_mtu, ms[0].limited_by), (1400, "route"));
        assert_eq!(ms[0].max_mtu, 1350);
        assert_eq!(ms[1].underlay, "eth1");
        assert_eq!(ms[1].remotes_total, 2);
        assert_eq!(ms[1].limited_by, "device");
        assert!(check_remotes(&v, &paths[..1]).is_empty());
        // Naming is bounded.
        let many: Vec<_> = (0..40)
            .map(|i| RemotePathMtu {
                remote: IpAddr::from([10, 9, 0, i as u8]),
                underlay: "eth0",
                underlay_netns: 1,
                underlay_device_mtu: 1400,
                route_mtu: None,
                path_mtu: 1400,
            })
            .collect();
        let ms = check_remotes(&v, &many);
        assert_eq!(ms[0].remotes.len(), MAX_NAMED_REMOTES);
        assert_eq!(ms[0].remotes_total, 40);
    }
}
