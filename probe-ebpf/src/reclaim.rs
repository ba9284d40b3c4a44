//! Memory reclaim stalls: how long tasks spend reclaiming memory, per memory cgroup.
//!
//! Tracepoints (include/trace/events/vmscan.h; long-standing — the memcg pair since the
//! 2.6.3x series — though their arguments changed over time, e.g. `may_writepage` was dropped
//! from the begin events; none of the arguments is read, only the pairing and the clock.
//! Attached and checked on 6.18; the qemu kernels are not checked for them yet):
//! - `mm_vmscan_memcg_reclaim_begin(int order, gfp_t gfp_flags)` / `_end(unsigned long
//!   nr_reclaimed)`: around `try_to_free_mem_cgroup_pages()` (mm/vmscan.c, CONFIG_MEMCG). It
//!   runs in the allocating task when a charge hits `memory.max` (`try_charge_memcg()`, 5.16+;
//!   `try_charge()` before), on return to user space over `memory.high` (`reclaim_high()` from
//!   `mem_cgroup_handle_over_high()`), and when `memory.max` / `memory.high` /
//!   `memory.reclaim` (v1: `limit_in_bytes`, `force_empty`) are written — then in the writer.
//!   `high_work_func()` runs `reclaim_high()` from a kworker: that reclaim is charged to the
//!   kworker's (root) memcg, as the kernel's own PSI accounting charges it to the kworker.
//! - `mm_vmscan_direct_reclaim_begin` / `_end`: around `try_to_free_pages()` in the page
//!   allocator's slow path (`__perform_reclaim()`), when the node itself is short of memory.
//!
//! Both are charged to the memory cgroup of `current` — the task that stalled — read as
//! `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id` with the OOM program's BTF offsets:
//! the v1 `memory` hierarchy's cgroup on hybrid/v1 hosts, the cgroup2 one on pure v2. The
//! begin program stores the start time per thread and kind; the end program adds the duration
//! to a per-CPU histogram of the cgroup, so counts are exact at any rate. Ends without a begin
//! and stalls the full map refused are counted in `RECLAIM_STATS`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use probe_common::{
    RECLAIM_BUCKET_MASK, RECLAIM_KIND_DIRECT, RECLAIM_KIND_MEMCG, RECLAIM_STAT_MAP_FULL,
    RECLAIM_STAT_UNMATCHED_END, ReclaimKey, ReclaimStall, reclaim_bucket,
};

use crate::{
    kread::{read, read_ptr},
    maps::{RECLAIM, RECLAIM_START, ReclaimStartKey, reclaim_stat},
    offsets,
};

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_reclaim_begin(_ctx: BtfTracePointContext) -> u32 {
    begin(RECLAIM_KIND_MEMCG);
    0
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_reclaim_end(_ctx: BtfTracePointContext) -> u32 {
    end(RECLAIM_KIND_MEMCG);
    0
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn direct_reclaim_begin(_ctx: BtfTracePointContext) -> u32 {
    begin(RECLAIM_KIND_DIRECT);
    0
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn direct_reclaim_end(_ctx: BtfTracePointContext) -> u32 {
    end(RECLAIM_KIND_DIRECT);
    0
}

#[inline(always)]
fn start_key(kind: u32) -> ReclaimStartKey {
    ReclaimStartKey {
        tid: bpf_get_current_pid_tgid() as u32,
        kind,
    }
}

#[inline(always)]
fn begin(kind: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    // LRU: a thread that never reaches its end (cannot happen for these paired calls, but a
    // program attached between one thread's begin and end can miss halves) ages out.
    let _ = RECLAIM_START.insert(start_key(kind), now, 0);
}

#[inline(always)]
fn end(kind: u32) {
    let key = start_key(kind);
    let Some(start) = (unsafe { RECLAIM_START.get(&key) }).copied() else {
        reclaim_stat(RECLAIM_STAT_UNMATCHED_END);
        return;
    };
    let _ = RECLAIM_START.remove(&key);
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    let key = ReclaimKey {
        memcg_id: unsafe { current_memcg_id() },
        kind,
        _pad: 0,
    };
    // The bucket as an index every verifier can bound: a mask, not a bounds check, on a
    // value LLVM cannot see through (it would drop the mask, knowing the range). The
    // verifiers of 5.10 and 6.1 walked an impossible branch of `buckets.get_mut(bucket)`
    // with contradictory bounds and refused the program (`R0 invalid mem access 'scalar'`,
    // seen under `cargo xtask vm`); `_spare` keeps every masked index inside the value.
    let bucket = reclaim_bucket(ns);
    let bucket = unsafe { core::ptr::read_volatile(&bucket) } & RECLAIM_BUCKET_MASK;
    let v = match RECLAIM.get_ptr_mut(key) {
        Some(v) => v,
        None => {
            // Inserted from .rodata, not built on the stack (the value is 272 bytes): the
            // borrow is the point.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let inserted = RECLAIM.insert(key, &ZERO_STALL, 0);
            if inserted.is_err() {
                reclaim_stat(RECLAIM_STAT_MAP_FULL);
                return;
            }
            match RECLAIM.get_ptr_mut(key) {
                Some(v) => v,
                None => {
                    reclaim_stat(RECLAIM_STAT_MAP_FULL);
                    return;
                }
            }
        }
    };
    unsafe {
        (*v).count += 1;
        (*v).total_ns += ns;
        *((*v).buckets.as_mut_ptr().wrapping_add(bucket)) += 1;
    }
}

static ZERO_STALL: ReclaimStall = ReclaimStall::zeroed();

/// kernfs id of `current`'s memory cgroup (0 without a memory controller).
#[inline(always)]
unsafe fn current_memcg_id() -> u64 {
    let o = offsets();
    if o.memcg_enabled == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let cgroups = unsafe { read_ptr(task, o.task_cgroups) }.unwrap_or(core::ptr::null());
    let css = unsafe { read_ptr(cgroups, o.css_set_memory_css) }.unwrap_or(core::ptr::null());
    let cgrp = unsafe { read_ptr(css, o.css_cgroup) }.unwrap_or(core::ptr::null());
    let kn = unsafe { read_ptr(cgrp, o.cgroup_kn) }.unwrap_or(core::ptr::null());
    unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0)
}
