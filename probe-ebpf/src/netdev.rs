//! IP fragments per device: `net:net_dev_start_xmit` and `net:netif_receive_skb`.
//!
//! Prototypes (include/trace/events/net.h, stable since 4.x):
//!   `net_dev_start_xmit(const struct sk_buff *skb, const struct net_device *dev)`
//!   `netif_receive_skb(struct sk_buff *skb)`
//! At `net_dev_start_xmit` the skb is still the caller's (unlike `net_dev_xmit`, where veth
//! has handed it to the peer and vxlan reused it for the outer packet), so its network header
//! is valid. At `netif_receive_skb` the link-layer header has been pulled: `skb->data` is the
//! network header.
//!
//! Every fragment is counted (sum over a namespace's devices = FragCreates on the sender,
//! ReasmReqds on the receiver). VXLAN traffic is counted by the tc programs of
//! [`crate::vxlan`], attached to VXLAN devices only.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use probe_common::{
    DIRECTION_RX, DIRECTION_TX, IfCounters, IfKey, NET_STAT_IF_MAP_FULL, NetOffsets,
};

use crate::{
    kread::{field, field_ptr},
    maps::{IF_COUNTS, net_stat, set_net_context},
    net_config, net_offsets,
    netns::{dev_netns, ip_fragment_info, network_header},
};

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn net_dev_start_xmit(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    let o = net_offsets();
    let nh = unsafe { network_header(&o, skb) };
    unsafe { count(&o, skb, dev, nh, DIRECTION_TX) };
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let o = net_offsets();
    let dev = unsafe { field_ptr(skb, o.skb_dev) };
    let data = unsafe { field_ptr(skb, o.skb_data) };
    let nh = (!data.is_null()).then_some(data);
    unsafe { count(&o, skb, dev, nh, DIRECTION_RX) };
    0
}

#[inline(always)]
unsafe fn count(o: &NetOffsets, skb: *const u8, dev: *const u8, nh: Option<*const u8>, dir: u32) {
    let l3 = u16::from_be(unsafe { field::<u16>(skb, o.skb_protocol) });
    let frag = match nh {
        Some(nh) => unsafe { ip_fragment_info(l3, nh) },
        None => None,
    };
    if !matches!(frag, Some((true, _, _))) {
        return;
    }
    let c = net_config();
    let Some((netns, ifindex)) = (unsafe { dev_netns(o, &c, dev) }) else {
        return;
    };
    if dir == DIRECTION_RX {
        set_net_context(netns, ifindex, unsafe {
            aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns()
        });
    }
    let len = unsafe { field::<u32>(skb, o.skb_len) } as u64;
    let mut add = IfCounters::default();
    if let Some((true, first, _)) = frag {
        add.frag_packets = 1;
        add.frag_bytes = len;
        add.frag_first = first as u64;
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
        },
        None => {
            if IF_COUNTS.insert(key, add, 0).is_err() {
                net_stat(NET_STAT_IF_MAP_FULL);
            }
        }
    }
}
