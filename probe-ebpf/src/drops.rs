//! Packet drops: `skb:kfree_skb`.
//!
//! Kernel ≥ 5.17 prototype (include/trace/events/skb.h):
//!   `TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`
//! (`rx_sk` since 6.11; not read here, so 5.17+ works). Since 6.x consumed skbs go to
//! `skb:consume_skb`, so every hit here is a drop.
//!
//! Every drop is counted in the per-CPU `DROPS` map by (netns, device, reason, protocol, call
//! site): exact counts whatever the rate. A sample goes to the ring buffer as an event, limited
//! by a per-CPU token bucket; events refused by the bucket are counted as suppressed, events
//! the full ring refuses as lost — delivered + suppressed + lost = drops seen.
//!
//! The namespace comes from the skb's device, else its socket — never from `current`: drops
//! happen in softirq context on whatever task was running.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use probe_common::{
    Counter, DROP_SNAP_LEN, DropKey, EventKind, LEGACY_DROP_REASON, LastDrop,
    NET_CONTEXT_MAX_AGE_NS, NET_STAT_DROPS_MAP_FULL, NET_STAT_DROPS_SEEN, PacketDropEvent,
};

use crate::{
    kread::{field, field_ptr},
    maps::{
        DROP_RATE, DROPS, EVENTS, LAST_DROP, count_lost, count_suppressed, net_context, net_stat,
        net_stat_add, set_net_context,
    },
    net_config, net_offsets,
    netns::{dev_netns_cookie, network_header, sk_cgroup_id, sk_netns_cookie},
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn skb_kfree_skb(ctx: BtfTracePointContext) -> u32 {
    let reason: u32 = ctx.arg(2);
    let _ = unsafe { try_kfree_skb(&ctx, reason) };
    0
}

/// The same for kernels before 5.17, whose tracepoint passes no reason (the verifier refuses
/// a read of a third argument there): every drop is `LEGACY_DROP_REASON`, and the call site
/// still tells the causes apart (a fragment-queue overflow is a drop inside `ip_defrag`).
/// The loader attaches exactly one of the two.
#[btf_tracepoint(function = "kfree_skb")]
pub fn skb_kfree_skb_legacy(ctx: BtfTracePointContext) -> u32 {
    let _ = unsafe { try_kfree_skb(&ctx, LEGACY_DROP_REASON) };
    0
}

/// What one drop costs, cheapest first (the figure is in the README's Performance section):
/// - the namespace from BTF-checked loads (device, else socket); the clock is read only for
///   queued fragments (their context has an age) and for samples;
/// - no packet byte is read for the count (the key's protocol is `skb->protocol`; the IP
///   header is copied only into samples);
/// - the count goes to a per-CPU "last key" slot when the key is the same as the previous
///   drop's on this CPU (a storm is one key), and only a different key touches the hash:
///   the slot's previous key and count are then added to `DROPS`. Userspace reads `DROPS`
///   first and the slots after, and the slot is rewritten before its old count is added to
///   `DROPS`: a concurrent read can miss a count for one read (it shows in the next), never
///   count it twice;
/// - the token bucket that samples drops reads the clock only when it has tokens, or every
///   64th refused drop to refill.
#[inline(always)]
unsafe fn try_kfree_skb(ctx: &BtfTracePointContext, reason: u32) -> Result<(), i64> {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let o = net_offsets();
    let c = net_config();
    net_stat(NET_STAT_DROPS_SEEN);

    let dev = unsafe { field_ptr(skb, o.skb_dev) };
    // The socket is only needed when the device does not name the namespace, and for
    // samples: read it lazily.
    let read_sk = || unsafe { field_ptr(skb, o.skb_sk) };
    let frag_reason = c.frag_reasons.contains(&reason);
    let (netns, ifindex, netns_cookie) = match unsafe { dev_netns_cookie(&o, &c, dev) } {
        Some(v) => v,
        None => match unsafe { sk_netns_cookie(&o, &c, read_sk()) } {
            Some((ns, cookie)) => (ns, 0, cookie),
            // A queued fragment: dev and sk are reused by the queue (see NetContext).
            None if frag_reason => {
                let now = unsafe { bpf_ktime_get_boot_ns() };
                net_context(now, NET_CONTEXT_MAX_AGE_NS).unwrap_or((0, 0, 0))
            }
            None => (0, 0, 0),
        },
    };
    // Only fragment-queue drops refresh the context (an expired queue's head, freed with its
    // device, just before the rest of the queue): under a flood of unrelated drops the context
    // must not drift to the flooded namespace.
    if netns != 0 && frag_reason {
        set_net_context(netns, ifindex, netns_cookie, unsafe {
            bpf_ktime_get_boot_ns()
        });
    }
    let l3_proto = u16::from_be(unsafe { field::<u16>(skb, o.skb_protocol) });
    let len = unsafe { field::<u32>(skb, o.skb_len) };
    let key = DropKey {
        netns,
        ifindex,
        reason,
        l3_proto,
        l4_proto: 0,
        _pad: 0,
        location,
        netns_cookie,
    };
    count_drop(&key, len as u64);

    let Some(now) = take_token(c.drop_events_per_sec, c.drop_events_burst) else {
        count_suppressed(EventKind::PacketDrop as u32);
        return Ok(());
    };
    let Some(mut entry) = EVENTS.reserve::<PacketDropEvent>(0) else {
        count_lost(EventKind::PacketDrop as u32);
        return Ok(());
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.header.kind = EventKind::PacketDrop as u32;
    ev.header.size = core::mem::size_of::<PacketDropEvent>() as u32;
    ev.header.boot_ns = now;
    ev.key = key;
    ev.sk_cgroup_id = unsafe { sk_cgroup_id(&o, read_sk()) };
    ev.len = len;
    ev.snap_len = 0;
    if let Some(nh) = unsafe { network_header(&o, skb) } {
        // Copy what the linear area holds; a failed read (short packet) leaves snap_len 0.
        let ok = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                ev.data.as_mut_ptr().cast(),
                DROP_SNAP_LEN as u32,
                nh.cast(),
            )
        };
        if ok == 0 {
            // skb->len counts from skb->data, which may already be past the network header.
            let data = unsafe { field::<u64>(skb, o.skb_data) };
            let pulled = data.saturating_sub(nh as u64).min(0xffff);
            ev.snap_len = (len as u64 + pulled).min(DROP_SNAP_LEN as u64) as u32;
        }
    }
    entry.submit(0);
    Ok(())
}

#[inline(always)]
fn same_key(a: &DropKey, b: &DropKey) -> bool {
    a.netns == b.netns
        && a.ifindex == b.ifindex
        && a.reason == b.reason
        && a.l3_proto == b.l3_proto
        && a.location == b.location
        && a.netns_cookie == b.netns_cookie
}

/// Counts one drop: in the per-CPU last-key slot, flushing the slot's previous key into
/// `DROPS` when the key changes (see [`try_kfree_skb`] for why the order is safe).
#[inline(always)]
fn count_drop(key: &DropKey, len: u64) {
    let Some(last) = LAST_DROP.get_ptr_mut(0) else {
        add_to_drops(key, 1, len);
        return;
    };
    let last = unsafe { &mut *last };
    if same_key(&last.key, key) {
        last.count.packets += 1;
        last.count.bytes += len;
        return;
    }
    let old: LastDrop = *last;
    last.key = *key;
    last.count = Counter {
        packets: 1,
        bytes: len,
    };
    if old.count.packets != 0 {
        add_to_drops(&old.key, old.count.packets, old.count.bytes);
    }
}

#[inline(always)]
fn add_to_drops(key: &DropKey, packets: u64, bytes: u64) {
    match DROPS.get_ptr_mut(key) {
        Some(v) => unsafe {
            (*v).packets += packets;
            (*v).bytes += bytes;
        },
        None => {
            let v = Counter { packets, bytes };
            if DROPS.insert(key, v, 0).is_err() {
                net_stat_add(NET_STAT_DROPS_MAP_FULL, packets);
            }
        }
    }
}

/// Per-CPU token bucket: `rate` tokens per second up to `burst`. Returns the time when a
/// token was taken. The clock is read only when a token may be there: with tokens left, or on
/// every 64th drop refused while empty (the refill is then at most 63 drops late).
#[inline(always)]
fn take_token(rate: u64, burst: u64) -> Option<u64> {
    if rate == 0 {
        return None;
    }
    let state = DROP_RATE.get_ptr_mut(0)?;
    let state = unsafe { &mut *state };
    if state.tokens == 0 {
        state.refused = state.refused.wrapping_add(1);
        if state.refused & 63 != 1 {
            return None;
        }
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let elapsed = now.saturating_sub(state.last_ns);
    // Refill in whole tokens; keep the remainder of the interval for the next refill.
    let per_token_ns = 1_000_000_000 / rate;
    let new_tokens = elapsed.checked_div(per_token_ns).unwrap_or(burst);
    if new_tokens > 0 {
        state.tokens = (state.tokens + new_tokens).min(burst);
        state.last_ns = if state.tokens >= burst {
            now
        } else {
            state.last_ns + new_tokens * per_token_ns
        };
    }
    if state.tokens == 0 {
        return None;
    }
    state.tokens -= 1;
    Some(now)
}
