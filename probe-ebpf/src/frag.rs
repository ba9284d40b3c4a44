//! Fragment-queue expiry: `timer:timer_expire_entry`, for the namespace of timed-out queues.
//!
//! Prototype (include/trace/events/timer.h, `struct timer_list *` since 4.15):
//!   `timer_expire_entry(struct timer_list *timer, unsigned long baseclk)`
//! It runs for every expiring timer_list of the node (not per packet); the program leaves
//! after one load unless `timer->function` is `ip_expire` (net/ipv4/ip_fragment.c) or
//! `ip6_frag_expire` (net/ipv6/reassembly.c), whose timer is embedded in the queue
//! (`struct inet_frag_queue.timer`, since 4.17's rhashtable rework; `fqdir` since 5.3).
//!
//! Why: a queue that times out is freed from the timer, not while a packet of its namespace
//! is processed. `ip_expire` counts ReasmFails and ReasmTimeout in `qp->q.fqdir->net`, then
//! frees the head (only when the first fragment arrived: `INET_FRAG_FIRST_IN`; its `dev` is
//! looked up again from `qp->iif` and can be NULL) and `inet_frag_putn` →
//! `inet_frag_destroy` → `inet_frag_rbtree_purge` frees the rest with
//! FRAG_REASM_TIMEOUT — skbs whose `dev` is their rb-tree node (sk_buff's `dev` shares
//! storage with `rbnode`). `ip6frag_expire_frag_queue` (include/net/ipv6_frag.h) does the
//! same for IPv6 (it counts only when the `iif` device still exists). Both bail out early,
//! counting nothing, when the queue is already `INET_FRAG_COMPLETE` or its `fqdir` is dead
//! (namespace teardown). So this program:
//! - counts one expiry per live queue in `EXPIRED` (namespace, family): the kernel's
//!   ReasmTimeout, also for queues whose first fragment never came (no drop names those);
//! - sets the per-CPU fragment context to the queue's namespace, which the drop program uses
//!   for the drops of that queue that follow on this CPU.
//!
//! The queue is reached by subtracting `inet_frag_queue.timer`'s offset from the timer
//! pointer: not a BTF-typed pointer any more, so its members are probe-read.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use probe_common::{ExpireKey, KernelOffsets, NetOffsets};

use crate::{
    kread::{field, read, read_ptr},
    maps::{EXPIRED, set_net_context},
    net_config, net_offsets,
};

/// include/net/inet_frag.h.
const INET_FRAG_COMPLETE: u8 = 1 << 2;

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn reasm_expire(ctx: BtfTracePointContext) -> u32 {
    let timer: *const u8 = ctx.arg(0);
    let c = net_config();
    let o = net_offsets();
    let function = unsafe { field::<u64>(timer, o.timer_function) };
    let family = if function == 0 {
        return 0;
    } else if function == c.ip_expire_addr {
        4
    } else if function == c.ip6_frag_expire_addr {
        6
    } else {
        return 0;
    };
    let _ = unsafe { expired(&o, timer, family) };
    0
}

#[inline(always)]
unsafe fn expired(o: &NetOffsets, timer: *const u8, family: u32) -> Result<(), i64> {
    let q = (timer as usize).wrapping_sub(o.fq_timer as usize) as *const u8;
    let flags = unsafe { read::<u8>(q, o.fq_flags) }?;
    let fqdir = unsafe { read_ptr(q, o.fq_fqdir) }?;
    let net = unsafe { read_ptr(fqdir, o.fqdir_net) }?;
    let Some(netns) = (unsafe { probe_net_inum(o, net) }) else {
        return Ok(());
    };
    let cookie = if o.net_cookie == KernelOffsets::ABSENT {
        0
    } else {
        unsafe { read::<u64>(net, o.net_cookie) }.unwrap_or(0)
    };
    set_net_context(netns, 0, cookie, unsafe { bpf_ktime_get_boot_ns() });
    let dead = o.fqdir_dead != KernelOffsets::ABSENT
        && unsafe { read::<u8>(fqdir, o.fqdir_dead) }.unwrap_or(0) != 0;
    if flags & INET_FRAG_COMPLETE != 0 || dead {
        return Ok(());
    }
    let key = ExpireKey {
        netns,
        family,
        netns_cookie: cookie,
    };
    match EXPIRED.get_ptr_mut(key) {
        Some(v) => unsafe { *v += 1 },
        None => {
            let _ = EXPIRED.insert(key, 1u64, 0);
        }
    }
    Ok(())
}

/// [`crate::netns::net_inum`] through probe reads (the pointer is not BTF-typed here).
#[inline(always)]
unsafe fn probe_net_inum(o: &NetOffsets, net: *const u8) -> Option<u32> {
    const PROC_DYNAMIC_FIRST: u32 = 0xF000_0000;
    const NET_NS_INIT_INO: u32 = 0xEFFF_FFF9;
    const CLONE_NEWNET: u32 = 0x4000_0000;
    if net.is_null() {
        return None;
    }
    if o.net_ns_type != KernelOffsets::ABSENT
        && unsafe { read::<u32>(net, o.net_ns_type) }.ok()? != CLONE_NEWNET
    {
        return None;
    }
    let inum = unsafe { read::<u32>(net, o.net_ns_inum) }.ok()?;
    (inum >= PROC_DYNAMIC_FIRST || inum == NET_NS_INIT_INO).then_some(inum)
}
