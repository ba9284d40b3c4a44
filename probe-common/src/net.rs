//! Network records and counter keys: packet drops (`skb:kfree_skb`), IP fragments and VXLAN
//! traffic (`net:net_dev_start_xmit`, `net:netif_receive_skb`).

use crate::EventHeader;

/// Byte offsets for the network programs, from the running kernel's BTF (see
/// `KernelOffsets` for the convention). Kept apart from the OOM offsets so that a kernel
/// lacking one of these members loses only the network programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOffsets {
    // struct sk_buff
    pub skb_len: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_end: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    // struct net_device
    pub dev_ifindex: u32,
    /// `nd_net.net` (possible_net_t).
    pub dev_nd_net: u32,
    pub dev_mtu: u32,
    // struct net
    pub net_ns_inum: u32,
    /// `ns.ns_type` (6.18+: CLONE_NEWNET for a struct net), ABSENT on older kernels.
    pub net_ns_type: u32,
    // struct sock
    /// `__sk_common.skc_net.net`.
    pub sk_net: u32,
    /// `sk_cgrp_data.cgroup` (cgroup v2 of the socket's creator), ABSENT without
    /// CONFIG_SOCK_CGROUP_DATA.
    pub sk_cgroup: u32,
    // struct cgroup / kernfs_node (same as KernelOffsets; repeated so the network programs
    // do not depend on the OOM offsets)
    pub cgroup_kn: u32,
    pub kn_id: u32,
    // struct skb_shared_info (at skb->head + skb->end)
    pub shinfo_gso_size: u32,
    pub shinfo_gso_segs: u32,
    /// `net_device.netdev_ops`, ABSENT if unknown.
    pub dev_netdev_ops: u32,
    /// `net_device_ops.ndo_start_xmit`, ABSENT if unknown.
    pub ops_ndo_start_xmit: u32,
    pub _pad: u32,
    /// `net.net_cookie` (u64, Linux >= 5.14), ABSENT before: keys then carry cookie 0.
    pub net_cookie: u32,
    // Fragment-queue expiry (`timer:timer_expire_entry` filtered by the timer function):
    /// `timer_list.function`.
    pub timer_function: u32,
    /// `inet_frag_queue.timer`: the queue is `timer - fq_timer`.
    pub fq_timer: u32,
    /// `inet_frag_queue.flags` (u8: INET_FRAG_COMPLETE = 4).
    pub fq_flags: u32,
    /// `inet_frag_queue.fqdir` (5.3+; ABSENT: no expiry program).
    pub fq_fqdir: u32,
    /// `fqdir.net`.
    pub fqdir_net: u32,
    /// `fqdir.dead` (bool), ABSENT when the kernel has none.
    pub fqdir_dead: u32,
    pub _pad2: u32,
}

impl NetOffsets {
    pub const fn zeroed() -> Self {
        Self {
            skb_len: 0,
            skb_head: 0,
            skb_data: 0,
            skb_end: 0,
            skb_network_header: 0,
            skb_protocol: 0,
            skb_dev: 0,
            skb_sk: 0,
            dev_ifindex: 0,
            dev_nd_net: 0,
            dev_mtu: 0,
            net_ns_inum: 0,
            net_ns_type: 0,
            sk_net: 0,
            sk_cgroup: 0,
            cgroup_kn: 0,
            kn_id: 0,
            shinfo_gso_size: 0,
            shinfo_gso_segs: 0,
            dev_netdev_ops: 0,
            ops_ndo_start_xmit: 0,
            _pad: 0,
            net_cookie: 0,
            timer_function: 0,
            fq_timer: 0,
            fq_flags: 0,
            fq_fqdir: 0,
            fqdir_net: 0,
            fqdir_dead: 0,
            _pad2: 0,
        }
    }
}

/// Run-time settings of the network programs, written by userspace at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Drop events per second per CPU allowed into the ring buffer (token bucket rate).
    pub drop_events_per_sec: u64,
    /// Token bucket depth.
    pub drop_events_burst: u64,
    /// Values of the fragment-queue drop reasons (FRAG_REASM_TIMEOUT, FRAG_TOO_FAR, DUP_FRAG;
    /// u32::MAX when absent). Queued fragments have no usable `dev`/`sk` (both fields are
    /// reused by the queue), so their namespace is taken from the fragment-path context of
    /// the same CPU (see `NetContext`).
    pub frag_reasons: [u32; 4],
    /// Addresses of the fragment-queue timer functions (/proc/kallsyms), 0 when unknown:
    /// `ip_expire` (IPv4) and `ip6_frag_expire` (IPv6). `timer:timer_expire_entry` runs
    /// for every timer; only these two are looked at further.
    pub ip_expire_addr: u64,
    pub ip6_frag_expire_addr: u64,
}

impl NetConfig {
    pub const fn zeroed() -> Self {
        Self {
            drop_events_per_sec: 0,
            drop_events_burst: 0,
            frag_reasons: [u32::MAX; 4],
            ip_expire_addr: 0,
            ip6_frag_expire_addr: 0,
        }
    }
}

/// `DROPS` map key: one series per namespace, device, reason, protocol and call site.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// Network-namespace inode (`net->ns.inum`); 0 when unknown.
    pub netns: u32,
    /// `skb->dev->ifindex`; 0 when the skb has no device.
    pub ifindex: u32,
    /// `enum skb_drop_reason` value of the running kernel (names come from its BTF).
    pub reason: u32,
    /// `skb->protocol` in host byte order (ETH_P_IP = 0x0800, …).
    pub l3_proto: u16,
    /// Always 0 since the IP header is read only for samples (the drop event's `packet`
    /// has the protocol); kept so the key layout stays compatible.
    pub l4_proto: u8,
    pub _pad: u8,
    /// Kernel address that freed the skb (tracepoint `location`); symbolised by userspace.
    pub location: u64,
    /// `net->net_cookie` of the namespace (0 when unknown or before Linux 5.14): tells a
    /// namespace from a later one that got the same inode number.
    pub netns_cookie: u64,
}

/// `EXPIRED` map key: fragment queues that timed out, per namespace and family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExpireKey {
    pub netns: u32,
    /// 4 or 6.
    pub family: u32,
    pub netns_cookie: u64,
}

/// Per CPU: the drop key seen last and what was counted for it since (the fast path of the
/// drop program). Userspace adds it to `DROPS` when reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastDrop {
    pub key: DropKey,
    pub count: Counter,
}

/// Packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

pub const DIRECTION_RX: u32 = 0;
pub const DIRECTION_TX: u32 = 1;

/// `VXLAN_DEVS` map key (written by userspace from netlink).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DevKey {
    pub netns: u32,
    pub ifindex: u32,
}

/// What the kernel needs to know about a VXLAN device (`VXLAN_DEVS`, written by userspace
/// before the device's tc programs are attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanDev {
    /// Path MTU of the device's default destination (the all-zeros FDB entry, or the
    /// underlay of a device created with `dev`); 0 when unknown. Used when a frame's own
    /// remote is not in `VXLAN_PATHS`.
    pub underlay_mtu: u32,
    /// 50 (IPv4 underlay) or 70 (IPv6), inner Ethernet header included.
    pub overhead: u32,
    /// The configured VNI (0 for `external` devices: the VNI comes with each packet).
    pub vni: u32,
    /// `VXLAN_DEV_*` flags.
    pub flags: u32,
    /// The VXLAN device's own MTU (a GSO frame's segments are at most this + 14 bytes).
    pub mtu: u32,
    pub _pad: u32,
}

/// [`VxlanDev::flags`]: `external` / collect_md: remote and VNI come from the tunnel key.
pub const VXLAN_DEV_EXTERNAL: u32 = 1;

/// [`VxlanPathKey::kind`]: `addr[..6]` is an inner destination MAC of the device's FDB.
pub const VXLAN_PATH_MAC: u32 = 1;
/// [`VxlanPathKey::kind`]: `addr[..4]` is a remote VTEP's IPv4 address (tunnel key).
pub const VXLAN_PATH_IPV4: u32 = 2;
/// [`VxlanPathKey::kind`]: `addr` is a remote VTEP's IPv6 address (tunnel key).
pub const VXLAN_PATH_IPV6: u32 = 3;

/// `VXLAN_PATHS` key: how a frame on a VXLAN device finds its remote's path MTU. FDB-driven
/// devices pick the remote by the inner destination MAC (`vxlan_xmit` → `vxlan_find_mac`,
/// the all-zeros entry when there is none), so userspace maps each FDB MAC to the path MTU
/// of that entry's `dst`; external devices carry the remote in the tunnel key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VxlanPathKey {
    pub netns: u32,
    pub ifindex: u32,
    /// `VXLAN_PATH_*`.
    pub kind: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// `VXLAN_PATHS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanPath {
    /// Path MTU of the route to the remote in the device's link namespace (route `mtu`
    /// metric and cached PMTU exceptions honoured).
    pub path_mtu: u32,
    pub _pad: u32,
}

/// `VXLAN_COUNTS` key: per VXLAN device, VNI and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VxlanCountKey {
    pub netns: u32,
    pub ifindex: u32,
    /// The packet's VNI: the tunnel key's for external devices, else the device's.
    pub vni: u32,
    /// [`DIRECTION_RX`] or [`DIRECTION_TX`].
    pub direction: u32,
    /// The namespace's cookie (0 before Linux 5.14): the inode passes to new namespaces, whose
    /// device can have the same ifindex.
    pub netns_cookie: u64,
}

/// `VXLAN_COUNTS` value (inner frames as the tc programs see them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanCounters {
    pub packets: u64,
    pub bytes: u64,
    /// tx only: frames whose encapsulated packet exceeds the path MTU of their remote.
    pub oversize: u64,
    /// tx only: frames whose remote's path MTU was unknown (no verdict possible).
    pub no_path: u64,
}

/// Slots of the `VXLAN_STATS` per-CPU array (health of the VXLAN tc programs).
pub const VXLAN_STAT_COUNTS_MAP_FULL: u32 = 0;
/// Frames on a device the programs do not know (not yet / no longer in `VXLAN_DEVS`).
pub const VXLAN_STAT_UNKNOWN_DEV: u32 = 1;
/// Frames of an external device without a readable tunnel key.
pub const VXLAN_STAT_NO_TUNNEL_KEY: u32 = 2;
/// Frames whose device could not be read (namespace / ifindex).
pub const VXLAN_STAT_NO_DEV: u32 = 3;
pub const VXLAN_STAT_SLOTS: u32 = 4;

/// Per CPU: the namespace of the fragment queue whose timer is expiring on this CPU
/// (`timer:timer_expire_entry` of `ip_expire` / `ip6_frag_expire`: the queue's
/// `fqdir->net`), or of the last fragment-queue drop whose namespace was known. The queue's
/// fragments are freed synchronously right after, on the same CPU, by the timer function
/// (head, then `inet_frag_rbtree_purge` of the rest), so this names their namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetContext {
    pub netns: u32,
    pub ifindex: u32,
    pub boot_ns: u64,
    pub netns_cookie: u64,
}

/// How old a [`NetContext`] may be to be used.
pub const NET_CONTEXT_MAX_AGE_NS: u64 = 10_000_000;

/// The reason `skb_kfree_skb_legacy` records: kernels before 5.17 pass none. Userspace names
/// it `NOT_SPECIFIED` there (no `enum skb_drop_reason` to clash with).
pub const LEGACY_DROP_REASON: u32 = 0;

/// Bytes of the packet kept in a drop event, from the network header on.
pub const DROP_SNAP_LEN: usize = 128;

/// Slots of the `NET_STATS` per-CPU array.
pub const NET_STAT_DROPS_MAP_FULL: u32 = 0;
/// Slot 1 was the per-device fragment map's, gone with the per-packet programs.
pub const NET_STAT_DROPS_SEEN: u32 = 2;
pub const NET_STAT_SLOTS: u32 = 4;

/// One dropped packet (rate-limited sample of the `DROPS` counts).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PacketDropEvent {
    pub header: EventHeader,
    pub key: DropKey,
    /// cgroup v2 id of the socket that owned the skb (0 when none).
    pub sk_cgroup_id: u64,
    /// `skb->len`.
    pub len: u32,
    /// Valid bytes in `data`.
    pub snap_len: u32,
    /// Packet bytes starting at the network header.
    pub data: [u8; DROP_SNAP_LEN],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::NetOffsets {}
    unsafe impl aya::Pod for super::NetConfig {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DevKey {}
    unsafe impl aya::Pod for super::VxlanDev {}
    unsafe impl aya::Pod for super::VxlanPathKey {}
    unsafe impl aya::Pod for super::VxlanPath {}
    unsafe impl aya::Pod for super::VxlanCountKey {}
    unsafe impl aya::Pod for super::VxlanCounters {}
    unsafe impl aya::Pod for super::NetContext {}
    unsafe impl aya::Pod for super::ExpireKey {}
    unsafe impl aya::Pod for super::LastDrop {}
    unsafe impl aya::Pod for super::PacketDropEvent {}
}
