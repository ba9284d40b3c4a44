//! Two "hosts" (network namespaces) joined by a veth underlay with a VXLAN overlay between
//! them — the topology of the overlay-MTU failure. Everything is removed on drop (deleting a
//! namespace deletes its devices).

use crate::{NetNs, Side, VethPair, short_suffix};

pub const VNI: u32 = 4242;
pub const UNDERLAY_A: &str = "10.201.9.1";
pub const UNDERLAY_B: &str = "10.201.9.2";
pub const OVERLAY_A: &str = "10.202.9.1";
pub const OVERLAY_B: &str = "10.202.9.2";

pub struct Overlay {
    pub a: NetNs,
    pub b: NetNs,
    pub veth: VethPair,
    /// The VXLAN device's name (same in both namespaces).
    pub vxlan: String,
}

impl Overlay {
    /// `overlay_mtu: None` = created with `dev`, so the kernel sizes it correctly (underlay
    /// MTU − 50). `Some(mtu)` = created without `dev` (the kernel then does not cap it) and set
    /// to `mtu`: 1500 over a 1500 underlay is the classic mismatch.
    pub fn new(overlay_mtu: Option<u32>) -> Self {
        let (a, b) = (NetNs::new(), NetNs::new());
        a.lo_up();
        b.lo_up();
        let veth = VethPair::new(Some(&a), Some(&b));
        veth.addr_up(Side::A, &format!("{UNDERLAY_A}/24"));
        veth.addr_up(Side::B, &format!("{UNDERLAY_B}/24"));
        let vxlan = format!("fvx{}", short_suffix());
        for (ns, side, local, remote, overlay) in [
            (&a, Side::A, UNDERLAY_A, UNDERLAY_B, OVERLAY_A),
            (&b, Side::B, UNDERLAY_B, UNDERLAY_A, OVERLAY_B),
        ] {
            let vni = VNI.to_string();
            let mut args = vec![
                "ip", "link", "add", &vxlan, "type", "vxlan", "id", &vni, "local", local, "remote",
                remote, "dstport", "4789",
            ];
            let dev = veth.name(side).to_string();
            if overlay_mtu.is_none() {
                args.extend(["dev", &dev]);
            }
            ns.exec_ok(&args);
            if let Some(mtu) = overlay_mtu {
                ns.exec_ok(&["ip", "link", "set", &vxlan, "mtu", &mtu.to_string()]);
            }
            ns.exec_ok(&["ip", "addr", "add", &format!("{overlay}/24"), "dev", &vxlan]);
            ns.exec_ok(&["ip", "link", "set", &vxlan, "up"]);
        }
        Self { a, b, veth, vxlan }
    }

    /// MTU of the VXLAN device in `a`.
    pub fn vxlan_mtu(&self) -> u32 {
        let o = self
            .a
            .exec_ok(&["cat", &format!("/sys/class/net/{}/mtu", self.vxlan)]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .expect("mtu")
    }
}
