//! VXLAN traffic per device: `net:net_dev_start_xmit` and `net:netif_receive_skb`.
//! (Fragments are no longer counted here: per-namespace fragment totals are the kernel's own
//! SNMP counters, read by userspace, and reassembly failures come from `skb:kfree_skb` and
//! the fragment-queue timers, see `frag.rs`.)
//!
//! Prototypes (include/trace/events/net.h, stable since 4.x):
//!   `net_dev_start_xmit(const struct sk_buff *skb, const struct net_device *dev)`
//!   `netif_receive_skb(struct sk_buff *skb)`
//! At `net_dev_start_xmit` the skb is still the caller's (unlike `net_dev_xmit`, where veth
//! has handed it to the peer and vxlan reused it for the outer packet), so its network header
//! is valid. At `netif_receive_skb` the link-layer header has been pulled: `skb->data` is the
//! network header.
//!
//! VXLAN devices (listed by userspace in `VXLAN_DEVS` from
//! netlink) also get packet/byte counts and, on transmit, the frames whose encapsulated
//! packet will exceed the underlay MTU — they will be fragmented.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use probe_common::{
    DIRECTION_RX, DIRECTION_TX, DevKey, IfCounters, IfKey, KernelOffsets, NET_STAT_IF_MAP_FULL,
    NetConfig, NetOffsets,
};

use crate::{
    kread::{field, field_ptr, read},
    maps::{IF_COUNTS, VXLAN_DEVS, net_stat},
    net_config, net_offsets,
    netns::dev_netns,
};

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn net_dev_start_xmit(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    let o = net_offsets();
    unsafe { count(&o, skb, dev, DIRECTION_TX) };
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let o = net_offsets();
    let dev = unsafe { field_ptr(skb, o.skb_dev) };
    unsafe { count(&o, skb, dev, DIRECTION_RX) };
    0
}

#[inline(always)]
unsafe fn count(o: &NetOffsets, skb: *const u8, dev: *const u8, dir: u32) {
    let c = net_config();
    // Cheap exit for the common case: not a VXLAN device (told by its transmit function, two
    // reads instead of a namespace lookup and a map lookup).
    if unsafe { surely_not_vxlan(o, &c, dev) } {
        return;
    }
    let Some((netns, ifindex)) = (unsafe { dev_netns(o, &c, dev) }) else {
        return;
    };
    let dev_key = DevKey { netns, ifindex };
    let vxlan = unsafe { VXLAN_DEVS.get(dev_key) };
    if vxlan.is_none() {
        return;
    }
    let len = unsafe { field::<u32>(skb, o.skb_len) } as u64;
    let mut add = IfCounters::default();
    if let Some(v) = vxlan {
        add.vxlan_packets = 1;
        add.vxlan_bytes = len;
        // underlay_mtu 0: userspace could not find the underlay; no verdict.
        if dir == DIRECTION_TX && v.underlay_mtu != 0 {
            add.vxlan_oversize =
                unsafe { oversize_frames(o, skb, dev, len, v.underlay_mtu, v.overhead) };
        }
    }
    let key = IfKey {
        netns,
        ifindex,
        direction: dir,
        _pad: 0,
    };
    match IF_COUNTS.get_ptr_mut(key) {
        Some(c) => unsafe {
            (*c).frag_packets += add.frag_packets;
            (*c).frag_bytes += add.frag_bytes;
            (*c).frag_first += add.frag_first;
            (*c).vxlan_packets += add.vxlan_packets;
            (*c).vxlan_bytes += add.vxlan_bytes;
            (*c).vxlan_oversize += add.vxlan_oversize;
        },
        None => {
            if IF_COUNTS.insert(key, add, 0).is_err() {
                net_stat(NET_STAT_IF_MAP_FULL);
            }
        }
    }
}

/// True when `dev` is known not to be a VXLAN device: its `ndo_start_xmit` is not
/// `vxlan_xmit`. False when that cannot be told (address or offsets unknown).
#[inline(always)]
unsafe fn surely_not_vxlan(o: &NetOffsets, c: &NetConfig, dev: *const u8) -> bool {
    if c.vxlan_xmit_addr == 0
        || o.dev_netdev_ops == KernelOffsets::ABSENT
        || o.ops_ndo_start_xmit == KernelOffsets::ABSENT
    {
        return false;
    }
    let ops = unsafe { field_ptr(dev, o.dev_netdev_ops) };
    if ops.is_null() {
        return false;
    }
    let xmit = unsafe { field::<u64>(ops, o.ops_ndo_start_xmit) };
    xmit != 0 && xmit != c.vxlan_xmit_addr
}

/// Frames of this transmit whose outer packet exceeds the underlay MTU. The outer IP packet is
/// the inner frame (skb->len, Ethernet header included) plus VXLAN, UDP and IP headers, i.e.
/// `len + overhead - 14`. A GSO skb becomes `gso_segs` frames of at most the VXLAN device's
/// MTU (+14) each, so it is oversize exactly when `mtu + overhead` exceeds the underlay MTU.
#[inline(always)]
unsafe fn oversize_frames(
    o: &NetOffsets,
    skb: *const u8,
    dev: *const u8,
    len: u64,
    underlay_mtu: u32,
    overhead: u32,
) -> u64 {
    let head = unsafe { field_ptr(skb, o.skb_head) };
    let end = unsafe { field::<u32>(skb, o.skb_end) };
    let shinfo = head.wrapping_add(end as usize);
    let gso_size = if head.is_null() {
        0
    } else {
        unsafe { read::<u16>(shinfo, o.shinfo_gso_size) }.unwrap_or(0)
    };
    if gso_size == 0 {
        return (len + overhead as u64 - 14 > underlay_mtu as u64) as u64;
    }
    let segs = unsafe { read::<u16>(shinfo, o.shinfo_gso_segs) }.unwrap_or(1) as u64;
    let mtu = unsafe { field::<u32>(dev, o.dev_mtu) } as u64;
    if mtu + overhead as u64 > underlay_mtu as u64 {
        segs
    } else {
        0
    }
}
