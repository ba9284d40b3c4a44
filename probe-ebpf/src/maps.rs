//! Every map the programs share with userspace, in one place.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use probe_common::{
    Counter, DevKey, DropKey, ExpireKey, LastDrop, NET_STAT_SLOTS, NetContext, RECLAIM_STAT_SLOTS,
    ReclaimKey, ReclaimStall, VxlanDev,
};

/// Ring buffer of event records (`probe_common::EventHeader` first). 1 MiB: an OOM record is
/// ~3 KiB, a drop sample ~200 B.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Records that could not be reserved in [`EVENTS`] (ring full), indexed by `EventKind`.
#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

/// Records not produced because a rate limit refused them, indexed by `EventKind`.
#[map]
pub static EVENTS_SUPPRESSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

/// Drops by (netns, device, reason, protocol, call site).
#[map]
pub static DROPS: PerCpuHashMap<DropKey, Counter> = PerCpuHashMap::with_max_entries(16384, 0);

/// Per CPU: the drop key counted last and its count since (the drop program's fast path;
/// userspace adds it to `DROPS`).
#[map]
pub static LAST_DROP: PerCpuArray<LastDrop> = PerCpuArray::with_max_entries(1, 0);

/// Fragment queues that timed out, per namespace and family (one per `ip_expire` /
/// `ip6_frag_expire` run on a live queue: what the kernel counts as ReasmTimeout).
#[map]
pub static EXPIRED: PerCpuHashMap<ExpireKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// VXLAN devices and their underlay MTU, maintained by userspace from netlink.
#[map]
pub static VXLAN_DEVS: HashMap<DevKey, VxlanDev> = HashMap::with_max_entries(4096, 0);

/// Health counters of the network programs (`NET_STAT_*` slots).
#[map]
pub static NET_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NET_STAT_SLOTS, 0);

/// Per-CPU fragment-path context (see `probe_common::NetContext`).
#[map]
pub static NET_CONTEXT: PerCpuArray<NetContext> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn set_net_context(netns: u32, ifindex: u32, cookie: u64, now: u64) {
    if let Some(c) = NET_CONTEXT.get_ptr_mut(0) {
        unsafe {
            (*c).netns = netns;
            (*c).ifindex = ifindex;
            (*c).boot_ns = now;
            (*c).netns_cookie = cookie;
        }
    }
}

/// The context's (netns, ifindex, cookie) if recorded on this CPU within `max_age_ns` of
/// `now`.
#[inline(always)]
pub fn net_context(now: u64, max_age_ns: u64) -> Option<(u32, u32, u64)> {
    let c = NET_CONTEXT.get(0)?;
    (c.netns != 0 && now.saturating_sub(c.boot_ns) <= max_age_ns).then_some((
        c.netns,
        c.ifindex,
        c.netns_cookie,
    ))
}

/// Per-CPU token bucket state of the drop-event rate limit.
#[repr(C)]
pub struct RateState {
    pub tokens: u64,
    pub last_ns: u64,
    /// Drops refused while empty (the clock is read on every 64th).
    pub refused: u64,
}

#[map]
pub static DROP_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(v) = map.get_ptr_mut(slot) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
pub fn count_lost(kind: u32) {
    bump(&EVENTS_LOST, kind);
}

#[inline(always)]
pub fn count_suppressed(kind: u32) {
    bump(&EVENTS_SUPPRESSED, kind);
}

#[inline(always)]
pub fn net_stat(slot: u32) {
    bump(&NET_STATS, slot);
}

#[inline(always)]
pub fn net_stat_add(slot: u32, n: u64) {
    if let Some(v) = NET_STATS.get_ptr_mut(slot) {
        unsafe { *v += n };
    }
}

/// Reclaim stalls by (memory cgroup, kind): count, total and log2 histogram of durations.
#[map]
pub static RECLAIM: PerCpuHashMap<ReclaimKey, ReclaimStall> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Start of the reclaim a thread is in, per kind (kept apart so that one kind nested in the
/// other cannot overwrite the outer start).
#[repr(C)]
pub struct ReclaimStartKey {
    pub tid: u32,
    pub kind: u32,
}

/// `bpf_ktime_get_ns()` at the begin tracepoint, per (thread, kind).
#[map]
pub static RECLAIM_START: LruHashMap<ReclaimStartKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// Health counters of the reclaim programs (`RECLAIM_STAT_*` slots).
#[map]
pub static RECLAIM_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RECLAIM_STAT_SLOTS, 0);

#[inline(always)]
pub fn reclaim_stat(slot: u32) {
    bump(&RECLAIM_STATS, slot);
}
