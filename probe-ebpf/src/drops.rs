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
    Counter, DROP_SNAP_LEN, DropKey, EventKind, LEGACY_DROP_REASON, NET_CONTEXT_MAX_AGE_NS,
    NET_STAT_DROPS_MAP_FULL, NET_STAT_DROPS_SEEN, PacketDropEvent,
};

use crate::{
    kread::{field, field_ptr},
    maps::{
        DROP_RATE, DROPS, EVENTS, count_lost, count_suppressed, net_context, net_stat,
        set_net_context,
    },
    net_config, net_offsets,
    netns::{dev_netns, ip_fragment_info, network_header, sk_cgroup_id, sk_netns},
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
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let (netns, ifindex) = match unsafe { dev_netns(&o, &c, dev) } {
        Some(v) => v,
        None => match unsafe { sk_netns(&o, &c, read_sk()) } {
            Some(ns) => (ns, 0),
            // A queued fragment: dev and sk are reused by the queue (see NetContext).
            None if c.frag_reasons.contains(&reason) => {
                net_context(now, NET_CONTEXT_MAX_AGE_NS).unwrap_or((0, 0))
            }
            None => (0, 0),
        },
    };
    // Only fragment-queue drops refresh the context (an expired queue's head, freed with its
    // device, just before the rest of the queue): under a flood of unrelated drops the context
    // must not drift to the flooded namespace.
    if netns != 0 && c.frag_reasons.contains(&reason) {
        set_net_context(netns, ifindex, now);
    }
    let l3_proto = u16::from_be(unsafe { field::<u16>(skb, o.skb_protocol) });
    let len = unsafe { field::<u32>(skb, o.skb_len) };
    let nh = unsafe { network_header(&o, skb) };
    let l4_proto = match nh {
        Some(nh) => unsafe { ip_fragment_info(l3_proto, nh) }.map_or(0, |(_, _, p)| p),
        None => 0,
    };
    let key = DropKey {
        netns,
        ifindex,
        reason,
        l3_proto,
        l4_proto,
        _pad: 0,
        location,
    };
    match DROPS.get_ptr_mut(key) {
        Some(v) => unsafe {
            (*v).packets += 1;
            (*v).bytes += len as u64;
        },
        None => {
            let v = Counter {
                packets: 1,
                bytes: len as u64,
            };
            if DROPS.insert(key, v, 0).is_err() {
                net_stat(NET_STAT_DROPS_MAP_FULL);
            }
        }
    }

    if !take_token(now, c.drop_events_per_sec, c.drop_events_burst) {
        count_suppressed(EventKind::PacketDrop as u32);
        return Ok(());
    }
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
    if let Some(nh) = nh {
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

/// Per-CPU token bucket: `rate` tokens per second up to `burst`.
#[inline(always)]
fn take_token(now: u64, rate: u64, burst: u64) -> bool {
    if rate == 0 {
        return false;
    }
    let Some(state) = DROP_RATE.get_ptr_mut(0) else {
        return false;
    };
    let state = unsafe { &mut *state };
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
        return false;
    }
    state.tokens -= 1;
    true
}
