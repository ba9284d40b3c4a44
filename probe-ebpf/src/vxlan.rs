//! VXLAN traffic per device and VNI, and the frames whose encapsulated packet will exceed
//! the path MTU of their remote: tc programs attached to VXLAN devices only (issue 11: no
//! fathom program runs for a packet that crosses no VXLAN device).
//!
//! Userspace attaches `vxlan_tc_egress` / `vxlan_tc_ingress` to every VXLAN device it finds,
//! in every namespace (TCX on Linux >= 6.6, a clsact filter before), after writing the device
//! into `VXLAN_DEVS`. Both return `TC_ACT_UNSPEC` (= `TCX_NEXT`): they never change a packet's
//! fate and let a CNI's own programs on the same device run after them.
//!
//! Kernel path (drivers/net/vxlan/vxlan_core.c, stable since 4.x; tc egress runs in
//! `__dev_queue_xmit` → `sch_handle_egress` before `ndo_start_xmit` = `vxlan_xmit`):
//! - a device with an FDB (libnetwork's FDB-only devices, flannel, Calico, `remote`):
//!   `vxlan_xmit` looks the inner destination MAC up (`vxlan_find_mac`), falling back to the
//!   all-zeros entry, and `vxlan_xmit_one` sends one outer packet per `dst` of that entry.
//!   Userspace maps each FDB MAC to the path MTU of its `dst` (`VXLAN_PATHS`, kind MAC) and
//!   puts the all-zeros entry's MTU into `VxlanDev::underlay_mtu`;
//! - an `external` (collect_md) device: `vxlan_xmit` takes remote and VNI from
//!   `skb_tunnel_info(skb)`, which covers both a metadata dst set by a BPF program and the
//!   lwtunnel state of a route `encap ip id N dst R` (`lwt_tun_info`). `bpf_skb_get_tunnel_key`
//!   reads the same `skb_tunnel_info`, so this program sees what `vxlan_xmit` will use.
//! - At ingress, `vxlan_rcv` has decapsulated the frame; on an external device it attached a
//!   metadata dst carrying the packet's VNI and source VTEP (`vxlan_rcv` → `udp_tun_rx_dst`).
//!
//! The outer IP packet is the inner frame (`skb->len`, Ethernet header included) plus VXLAN,
//! UDP and IP headers: `len + overhead - 14`. A GSO skb becomes `gso_segs` frames of at most
//! the device's MTU (+14): oversize exactly when `mtu + overhead` exceeds the path MTU.
//!
//! The device's namespace is read from `skb->dev->nd_net` with probe reads (a tc program's
//! context is the kernel's `struct sk_buff`; BTF offsets from userspace).

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_UNSPEC, bpf_tunnel_key},
    helpers::generated::bpf_skb_get_tunnel_key,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use probe_common::{
    DIRECTION_RX, DIRECTION_TX, DevKey, KernelOffsets, NetOffsets, VXLAN_DEV_EXTERNAL,
    VXLAN_PATH_IPV4, VXLAN_PATH_IPV6, VXLAN_PATH_MAC, VXLAN_STAT_COUNTS_MAP_FULL,
    VXLAN_STAT_NO_DEV, VXLAN_STAT_NO_TUNNEL_KEY, VXLAN_STAT_SLOTS, VXLAN_STAT_UNKNOWN_DEV,
    VxlanCountKey, VxlanCounters, VxlanPath, VxlanPathKey,
};

use crate::{kread::read, kread::read_ptr, maps::VXLAN_DEVS, net_offsets};

/// Path MTU per (device, FDB MAC) or (device, remote address), maintained by userspace.
#[map]
pub static VXLAN_PATHS: HashMap<VxlanPathKey, VxlanPath> = HashMap::with_max_entries(65536, 0);

/// Packets, bytes and oversize frames per (device, VNI, direction). Userspace folds VNIs
/// beyond its per-device cap into one series; a full map is counted in `VXLAN_STATS`.
#[map]
pub static VXLAN_COUNTS: PerCpuHashMap<VxlanCountKey, VxlanCounters> =
    PerCpuHashMap::with_max_entries(16384, 0);

/// Health of these programs (`VXLAN_STAT_*` slots).
#[map]
pub static VXLAN_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(VXLAN_STAT_SLOTS, 0);

#[classifier]
pub fn vxlan_tc_egress(ctx: TcContext) -> i32 {
    unsafe { count(&ctx, DIRECTION_TX) };
    TC_ACT_UNSPEC
}

#[classifier]
pub fn vxlan_tc_ingress(ctx: TcContext) -> i32 {
    unsafe { count(&ctx, DIRECTION_RX) };
    TC_ACT_UNSPEC
}

#[inline(always)]
fn stat(slot: u32) {
    if let Some(v) = VXLAN_STATS.get_ptr_mut(slot) {
        unsafe { *v += 1 };
    }
}

/// Namespace inode and cookie of `skb->dev`, probe-read (see `crate::netns::net_inum` for the
/// checks; the cookie is 0 where the kernel has none).
#[inline(always)]
unsafe fn skb_netns(o: &NetOffsets, skb: *const u8) -> Option<(u32, u64)> {
    const PROC_DYNAMIC_FIRST: u32 = 0xF000_0000;
    const NET_NS_INIT_INO: u32 = 0xEFFF_FFF9;
    let dev = unsafe { read_ptr(skb, o.skb_dev) }.ok()?;
    let net = unsafe { read_ptr(dev, o.dev_nd_net) }.ok()?;
    if o.net_ns_type != KernelOffsets::ABSENT {
        const CLONE_NEWNET: u32 = 0x4000_0000;
        if unsafe { read::<u32>(net, o.net_ns_type) }.ok()? != CLONE_NEWNET {
            return None;
        }
    }
    let inum = unsafe { read::<u32>(net, o.net_ns_inum) }.ok()?;
    if !(inum >= PROC_DYNAMIC_FIRST || inum == NET_NS_INIT_INO) {
        return None;
    }
    let cookie = if o.net_cookie == KernelOffsets::ABSENT {
        0
    } else {
        unsafe { read::<u64>(net, o.net_cookie) }.unwrap_or(0)
    };
    Some((inum, cookie))
}

/// Remote and VNI of an external device's packet (`skb_tunnel_info`), as a path key.
///
/// `bpf_skb_get_tunnel_key` (net/core/filter.c) was written for received packets: it returns
/// the tunnel's *source* as `remote_ipv4/6` and, since Linux 5.19 ("bpf: Add source ip in
/// "struct bpf_tunnel_key""), its *destination* as `local_ipv4/6`. On transmit the remote
/// VTEP is the destination, so egress reads `local_*` and ingress `remote_*`. Kernels before
/// 5.19 refuse this struct size: no tunnel key there (counted in `VXLAN_STATS`).
#[inline(always)]
unsafe fn tunnel_key(ctx: &TcContext, key: &mut VxlanPathKey, dir: u32) -> Option<u32> {
    let mut k: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    let skb = ctx.skb.skb.cast();
    if unsafe { bpf_skb_get_tunnel_key(skb, &mut k, size, 0) } == 0 {
        key.kind = VXLAN_PATH_IPV4;
        // Host byte order in the helper's output (`be32_to_cpu`).
        let ip = if dir == DIRECTION_TX {
            unsafe { k.__bindgen_anon_3.local_ipv4 }
        } else {
            unsafe { k.__bindgen_anon_1.remote_ipv4 }
        };
        key.addr[..4].copy_from_slice(&ip.to_be_bytes());
        return Some(k.tunnel_id);
    }
    if unsafe { bpf_skb_get_tunnel_key(skb, &mut k, size, BPF_F_TUNINFO_IPV6 as u64) } == 0 {
        key.kind = VXLAN_PATH_IPV6;
        // The IPv6 words are copied as they are (network byte order).
        let w = if dir == DIRECTION_TX {
            unsafe { k.__bindgen_anon_3.local_ipv6 }
        } else {
            unsafe { k.__bindgen_anon_1.remote_ipv6 }
        };
        key.addr[..4].copy_from_slice(&w[0].to_ne_bytes());
        key.addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
        key.addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
        key.addr[12..].copy_from_slice(&w[3].to_ne_bytes());
        return Some(k.tunnel_id);
    }
    None
}

#[inline(always)]
unsafe fn count(ctx: &TcContext, dir: u32) {
    let o = net_offsets();
    let raw = ctx.skb.skb;
    let skb = raw as *const u8;
    let ifindex = unsafe { (*raw).ifindex };
    let Some((netns, netns_cookie)) = (unsafe { skb_netns(&o, skb) }) else {
        stat(VXLAN_STAT_NO_DEV);
        return;
    };
    let Some(dev) = (unsafe { VXLAN_DEVS.get(DevKey { netns, ifindex }) }).copied() else {
        stat(VXLAN_STAT_UNKNOWN_DEV);
        return;
    };
    let external = dev.flags & VXLAN_DEV_EXTERNAL != 0;
    let mut pk = VxlanPathKey {
        netns,
        ifindex,
        kind: 0,
        _pad: 0,
        addr: [0; 16],
    };
    let mut vni = dev.vni;
    if external {
        match unsafe { tunnel_key(ctx, &mut pk, dir) } {
            Some(v) => vni = v,
            None => stat(VXLAN_STAT_NO_TUNNEL_KEY),
        }
    } else if dir == DIRECTION_TX
        && let Ok(mac) = ctx.load::<[u8; 6]>(0)
    {
        pk.kind = VXLAN_PATH_MAC;
        pk.addr[..6].copy_from_slice(&mac);
    }
    let len = ctx.len() as u64;
    let gso_size = unsafe { (*raw).gso_size };
    let frames = if gso_size != 0 {
        (unsafe { (*raw).gso_segs } as u64).max(1)
    } else {
        1
    };
    let mut add = VxlanCounters {
        packets: frames,
        bytes: len,
        oversize: 0,
        no_path: 0,
    };
    if dir == DIRECTION_TX {
        let own = if pk.kind != 0 {
            unsafe { VXLAN_PATHS.get(pk) }.map(|p| p.path_mtu)
        } else {
            None
        };
        // A MAC without an FDB entry of its own goes to the all-zeros entry (`vxlan_xmit`).
        let path_mtu = match own {
            Some(m) => m,
            None if !external => dev.underlay_mtu,
            None => 0,
        } as u64;
        if path_mtu == 0 {
            add.no_path = frames;
        } else if gso_size == 0 {
            add.oversize = (len + dev.overhead as u64 - 14 > path_mtu) as u64;
        } else if dev.mtu as u64 + dev.overhead as u64 > path_mtu {
            add.oversize = frames;
        }
    }
    let key = VxlanCountKey {
        netns,
        ifindex,
        vni,
        direction: dir,
        netns_cookie,
    };
    match VXLAN_COUNTS.get_ptr_mut(key) {
        Some(c) => unsafe {
            (*c).packets += add.packets;
            (*c).bytes += add.bytes;
            (*c).oversize += add.oversize;
            (*c).no_path += add.no_path;
        },
        None => {
            if VXLAN_COUNTS.insert(key, add, 0).is_err() {
                stat(VXLAN_STAT_COUNTS_MAP_FULL);
            }
        }
    }
}
