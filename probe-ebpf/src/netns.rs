//! Network namespace and device of an skb, read defensively.
//!
//! `skb->dev` is not always a device pointer when an skb is freed: UDP reuses the field as
//! `dev_scratch`, and queued IP fragments share it with their rb-tree node. Every load is
//! therefore fault-safe (BTF-checked loads the JIT guards, see [`crate::kread::field`], or
//! probe reads for raw bytes), and a `struct net` is only trusted when it looks like one: its
//! `ns.inum` is a proc inode (≥ PROC_DYNAMIC_FIRST = 0xF0000000, or the initial namespace's
//! fixed NET_NS_INIT_INO = 0xEFFFFFF9 since 6.17) and, where the kernel has
//! `ns_common.ns_type` (6.18+), that is CLONE_NEWNET.

use probe_common::{KernelOffsets, NetConfig, NetOffsets};

use crate::kread::{field, field_ptr, read, read_ptr};

/// Inode of the namespace `net` points to, if it really is a `struct net`.
#[inline(always)]
pub unsafe fn net_inum(o: &NetOffsets, _c: &NetConfig, net: *const u8) -> Option<u32> {
    const PROC_DYNAMIC_FIRST: u32 = 0xF000_0000;
    // Since Linux 6.17 the initial namespaces have fixed inode numbers just below the dynamic
    // range (include/uapi/linux/nsfs.h; seen under qemu: init_net is 4026531840 on 6.16,
    // 4026531833 on 6.17 and later). Without it every packet of the host's own namespace
    // would lose its namespace and device.
    const NET_NS_INIT_INO: u32 = 0xEFFF_FFF9;
    const CLONE_NEWNET: u32 = 0x4000_0000;
    if net.is_null() {
        return None;
    }
    if o.net_ns_type != KernelOffsets::ABSENT {
        let t = unsafe { field::<u32>(net, o.net_ns_type) };
        if t != CLONE_NEWNET {
            return None;
        }
    }
    let inum = unsafe { field::<u32>(net, o.net_ns_inum) };
    (inum >= PROC_DYNAMIC_FIRST || inum == NET_NS_INIT_INO).then_some(inum)
}

/// `net->net_cookie` (0 when the kernel has none: before 5.14). Only call with a pointer
/// [`net_inum`] accepted.
#[inline(always)]
pub unsafe fn net_cookie(o: &NetOffsets, net: *const u8) -> u64 {
    if o.net_cookie == KernelOffsets::ABSENT {
        return 0;
    }
    unsafe { field::<u64>(net, o.net_cookie) }
}

/// (netns inode, ifindex, netns cookie) of a net_device pointer.
#[inline(always)]
pub unsafe fn dev_netns_cookie(
    o: &NetOffsets,
    c: &NetConfig,
    dev: *const u8,
) -> Option<(u32, u32, u64)> {
    if dev.is_null() {
        return None;
    }
    let net = unsafe { field_ptr(dev, o.dev_nd_net) };
    let inum = unsafe { net_inum(o, c, net) }?;
    let ifindex = unsafe { field::<i32>(dev, o.dev_ifindex) };
    (ifindex > 0).then(|| (inum, ifindex as u32, unsafe { net_cookie(o, net) }))
}

/// (inode, cookie) of a socket's namespace.
#[inline(always)]
pub unsafe fn sk_netns_cookie(o: &NetOffsets, c: &NetConfig, sk: *const u8) -> Option<(u32, u64)> {
    if sk.is_null() {
        return None;
    }
    let net = unsafe { field_ptr(sk, o.sk_net) };
    let inum = unsafe { net_inum(o, c, net) }?;
    Some((inum, unsafe { net_cookie(o, net) }))
}

/// Namespace of a socket.
#[allow(dead_code)]
#[inline(always)]
pub unsafe fn sk_netns(o: &NetOffsets, c: &NetConfig, sk: *const u8) -> Option<u32> {
    if sk.is_null() {
        return None;
    }
    let net = unsafe { field_ptr(sk, o.sk_net) };
    unsafe { net_inum(o, c, net) }
}

/// cgroup v2 id of the socket's owner (`sk->sk_cgrp_data.cgroup->kn->id`), 0 if unknown.
#[inline(always)]
pub unsafe fn sk_cgroup_id(o: &NetOffsets, sk: *const u8) -> u64 {
    if sk.is_null() || o.sk_cgroup == KernelOffsets::ABSENT {
        return 0;
    }
    let Ok(cgrp) = (unsafe { read_ptr(sk, o.sk_cgroup) }) else {
        return 0;
    };
    let Ok(kn) = (unsafe { read_ptr(cgrp, o.cgroup_kn) }) else {
        return 0;
    };
    unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0)
}

/// Where an skb's network header starts, if set (`skb->head + skb->network_header`).
#[inline(always)]
pub unsafe fn network_header(o: &NetOffsets, skb: *const u8) -> Option<*const u8> {
    let head = unsafe { field_ptr(skb, o.skb_head) };
    let nh = unsafe { field::<u16>(skb, o.skb_network_header) };
    // (u16)~0U marks "not set".
    if head.is_null() || nh == u16::MAX {
        return None;
    }
    Some(head.wrapping_add(nh as usize))
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

#[allow(dead_code)]
/// Fragment facts of an IP header: (is a fragment, is the first fragment, IP protocol).
#[inline(always)]
pub unsafe fn ip_fragment_info(l3: u16, nh: *const u8) -> Option<(bool, bool, u8)> {
    match l3 {
        ETH_P_IP => {
            // iphdr: frag_off at 6 (big endian: flags 3 bits | offset 13 bits), protocol at 9.
            let hdr = unsafe { read::<[u8; 10]>(nh, 0) }.ok()?;
            if hdr[0] >> 4 != 4 {
                return None;
            }
            let frag_off = u16::from_be_bytes([hdr[6], hdr[7]]);
            let more = frag_off & 0x2000 != 0;
            let offset = frag_off & 0x1fff;
            Some((more || offset != 0, offset == 0, hdr[9]))
        }
        ETH_P_IPV6 => {
            // ipv6hdr: nexthdr at 6; a fragment header (44) directly after the fixed header
            // carries the offset at +2 (13 bits, then 2 reserved bits and M).
            let hdr = unsafe { read::<[u8; 44]>(nh, 0) }.ok()?;
            if hdr[0] >> 4 != 6 {
                return None;
            }
            if hdr[6] != 44 {
                return Some((false, false, hdr[6]));
            }
            let off_m = u16::from_be_bytes([hdr[42], hdr[43]]);
            Some((true, off_m >> 3 == 0, hdr[40]))
        }
        _ => None,
    }
}
