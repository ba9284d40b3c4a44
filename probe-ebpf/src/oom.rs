//! OOM kills: `oom:mark_victim`.
//!
//! Kernel ≥ 6.0 prototype (include/trace/events/oom.h):
//!   `TRACE_EVENT(mark_victim, TP_PROTO(struct task_struct *task, uid_t uid), ...)`
//! called from `mark_oom_victim()` in `__oom_kill_process()` for every task the OOM killer
//! kills (each member of a `memory.oom.group` too), after the victim is chosen and before its
//! mm is reaped — so its RSS and its memcg's page counter are still those of the kill.
//! (Kernels < 6.0 pass only the pid; not supported by this program.)
//!
//! Everything is read from the *victim* task, never from `current`: `current` is the task whose
//! allocation triggered the OOM and is reported separately as the trigger.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::bpf_ktime_get_boot_ns,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use probe_common::{
    CGROUP_MAX_DEPTH, CGROUP_NAME_LEN, EventKind, KernelOffsets, OOM_FLAG_CGROUP_TRUNCATED,
    OOM_FLAG_MEMCG_TRUNCATED, OOM_FLAG_MEMCG_VALID, OOM_FLAG_NO_MM, OomKillEvent,
};

use crate::{
    kread::{read, read_ptr, read_str},
    maps::{EVENTS, count_lost},
    offsets,
};

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim(ctx: BtfTracePointContext) -> u32 {
    let _ = unsafe { try_oom_mark_victim(&ctx) };
    0
}

unsafe fn try_oom_mark_victim(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let task: *const u8 = ctx.arg(0);
    let Some(mut entry) = EVENTS.reserve::<OomKillEvent>(0) else {
        count_lost(EventKind::OomKill as u32);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    unsafe { fill(ev, task) };
    entry.submit(0);
    Ok(())
}

/// Fills every field of `*ev` (ring-buffer memory is not zeroed).
#[inline(always)]
unsafe fn fill(ev: *mut OomKillEvent, task: *const u8) {
    let o = offsets();
    let ev = unsafe { &mut *ev };
    ev.header.kind = EventKind::OomKill as u32;
    ev.header.size = core::mem::size_of::<OomKillEvent>() as u32;
    ev.header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.flags = 0;

    // Victim identity.
    ev.victim_pid = unsafe { read::<i32>(task, o.task_pid) }.unwrap_or(0) as u32;
    ev.victim_tgid = unsafe { read::<i32>(task, o.task_tgid) }.unwrap_or(0) as u32;
    ev.victim_comm = unsafe { read::<[u8; 16]>(task, o.task_comm) }.unwrap_or([0; 16]);

    // Trigger = the task running now (it was allocating when the limit was hit).
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.trigger_pid = pid_tgid as u32;
    ev.trigger_tgid = (pid_tgid >> 32) as u32;
    ev.trigger_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.trigger_cgroup_id = unsafe { bpf_get_current_cgroup_id() };

    // oom_score_adj is a `short` in signal_struct.
    ev.oom_score_adj = match unsafe { read_ptr(task, o.task_signal) } {
        Ok(signal) => unsafe { read::<i16>(signal, o.signal_oom_score_adj) }.unwrap_or(0) as i32,
        Err(_) => 0,
    };

    // Memory of the victim. The RSS counters are read like the kernel's own OOM report
    // (get_mm_counter: the percpu_counter's approximate count).
    match unsafe { read_ptr(task, o.task_mm) } {
        Ok(mm) if !mm.is_null() => {
            ev.total_vm_pages = unsafe { read::<u64>(mm, o.mm_total_vm) }.unwrap_or(0);
            let rss = |idx: u32| -> i64 {
                let off = o
                    .mm_rss_base
                    .wrapping_add(idx.wrapping_mul(o.mm_rss_stride));
                unsafe { read::<i64>(mm, off) }.unwrap_or(0)
            };
            ev.rss_anon_pages = rss(o.mm_rss_anon_idx);
            ev.rss_file_pages = rss(o.mm_rss_file_idx);
            ev.rss_shmem_pages = rss(o.mm_rss_shmem_idx);
        }
        _ => {
            ev.flags |= OOM_FLAG_NO_MM;
            ev.total_vm_pages = 0;
            ev.rss_anon_pages = 0;
            ev.rss_file_pages = 0;
            ev.rss_shmem_pages = 0;
        }
    }

    let cgroups = unsafe { read_ptr(task, o.task_cgroups) }.unwrap_or(core::ptr::null());

    // cgroup v2 path: walk kernfs parents from the victim's default-hierarchy cgroup.
    ev.victim_cgroup_id = 0;
    ev.cgroup_depth = 0;
    let dfl = unsafe { read_ptr(cgroups, o.css_set_dfl_cgrp) }.unwrap_or(core::ptr::null());
    let mut kn = unsafe { read_ptr(dfl, o.cgroup_kn) }.unwrap_or(core::ptr::null());
    if !kn.is_null() {
        ev.victim_cgroup_id = unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0);
        ev.flags |= OOM_FLAG_CGROUP_TRUNCATED;
        for i in 0..CGROUP_MAX_DEPTH {
            let parent = unsafe { read_ptr(kn, o.kn_parent) }.unwrap_or(core::ptr::null());
            if parent.is_null() {
                // `kn` is the hierarchy root: not recorded.
                ev.flags &= !OOM_FLAG_CGROUP_TRUNCATED;
                break;
            }
            let level = &mut ev.cgroup_chain[i];
            level.id = unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0);
            let name = unsafe { read_ptr(kn, o.kn_name) }.unwrap_or(core::ptr::null());
            unsafe { read_str(name, level.name.as_mut_ptr(), CGROUP_NAME_LEN) };
            ev.cgroup_depth = i as u32 + 1;
            kn = parent;
        }
    }

    // Memory cgroup chain, leaf first, root last: ids, names and page counters at kill time.
    // `struct mem_cgroup` starts with its `struct cgroup_subsys_state css`, so the css pointer
    // is the memcg pointer and parents are found through css->parent.
    ev.memcg_depth = 0;
    if o.memcg_enabled != 0 {
        let mut css =
            unsafe { read_ptr(cgroups, o.css_set_memory_css) }.unwrap_or(core::ptr::null());
        if !css.is_null() {
            ev.flags |= OOM_FLAG_MEMCG_VALID | OOM_FLAG_MEMCG_TRUNCATED;
        }
        for i in 0..CGROUP_MAX_DEPTH {
            if css.is_null() {
                ev.flags &= !OOM_FLAG_MEMCG_TRUNCATED;
                break;
            }
            let level = &mut ev.memcg_chain[i];
            let cgrp = unsafe { read_ptr(css, o.css_cgroup) }.unwrap_or(core::ptr::null());
            let kn = unsafe { read_ptr(cgrp, o.cgroup_kn) }.unwrap_or(core::ptr::null());
            level.id = unsafe { read::<u64>(kn, o.kn_id) }.unwrap_or(0);
            let name = unsafe { read_ptr(kn, o.kn_name) }.unwrap_or(core::ptr::null());
            unsafe { read_str(name, level.name.as_mut_ptr(), CGROUP_NAME_LEN) };
            level.max_pages = unsafe { read::<u64>(css, o.memcg_memory_max) }.unwrap_or(0);
            level.usage_pages = unsafe { read::<u64>(css, o.memcg_memory_usage) }.unwrap_or(0);
            // Read straight into a zeroed byte (the helper zeroes it again on failure): the
            // `Result` of `read::<u8>` made LLVM mask a pointer register, which the verifier
            // refuses.
            let mut group: u8 = 0;
            if o.memcg_oom_group != KernelOffsets::ABSENT {
                unsafe {
                    aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                        (&mut group as *mut u8).cast(),
                        1,
                        css.wrapping_add(o.memcg_oom_group as usize).cast(),
                    )
                };
            }
            level.oom_group = group as u32;
            ev.memcg_depth = i as u32 + 1;
            css = unsafe { read_ptr(css, o.css_parent) }.unwrap_or(core::ptr::null());
        }
        if css.is_null() {
            ev.flags &= !OOM_FLAG_MEMCG_TRUNCATED;
        }
    }
}
