//! VXLAN MTU mismatch: pure logic, no I/O.
//!
//! A VXLAN device with MTU `m` emits outer packets of up to `m + overhead` bytes (plus the
//! inner Ethernet header accounted in the overhead). When that exceeds the underlay device's
//! MTU, the outer packet is fragmented (or, with a cached path MTU, the inner one is — see
//! platform.md), and under load the receiver's reassembly queue overflows silently. The kernel
//! prevents this only when the device is created with `dev` (`vxlan_dev_configure` and
//! `vxlan_change_mtu` cap it at `lower MTU - headroom`); it does not react when the underlay's
//! MTU is lowered later, nor for devices without `dev`.

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
        ] {
            assert!(keys.contains(&k), "{k} missing from {v}");
        }
        assert_eq!(keys.len(), 9);
    }
}
