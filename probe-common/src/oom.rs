//! The OOM-kill record written by `oom_mark_victim` (tp_btf `oom:mark_victim`).

use crate::EventHeader;

/// Deepest cgroup nesting recorded in the kernel (leaf first). Kubernetes layouts need 4;
/// deeper paths are marked truncated and userspace falls back to resolving the id.
pub const CGROUP_MAX_DEPTH: usize = 10;
/// Bytes kept of each cgroup directory name (kernfs allows 255; container ids with runtime
/// prefixes/suffixes need ~90).
pub const CGROUP_NAME_LEN: usize = 128;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Set in [`OomKillEvent::flags`] when the victim's cgroup v2 chain was deeper than
/// [`CGROUP_MAX_DEPTH`].
pub const OOM_FLAG_CGROUP_TRUNCATED: u32 = 1 << 0;
/// Set when the memory-cgroup chain was deeper than [`CGROUP_MAX_DEPTH`].
pub const OOM_FLAG_MEMCG_TRUNCATED: u32 = 1 << 1;
/// Set when the victim had no mm (kernel thread or exiting): RSS fields are zero.
pub const OOM_FLAG_NO_MM: u32 = 1 << 2;
/// Set when the memory-cgroup chain could be read.
pub const OOM_FLAG_MEMCG_VALID: u32 = 1 << 3;

/// One directory of a cgroup path as seen from the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupLevel {
    /// kernfs node id (= inode number of the cgroup directory on 64-bit kernels).
    pub id: u64,
    /// NUL-terminated directory name (empty for the hierarchy root).
    pub name: [u8; CGROUP_NAME_LEN],
}

/// One memory cgroup of the victim's chain, with its page counter at kill time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemcgLevel {
    pub id: u64,
    /// `memcg->memory.max` in pages (`PAGE_COUNTER_MAX` when unlimited).
    pub max_pages: u64,
    /// `memcg->memory.usage` in pages.
    pub usage_pages: u64,
    /// `memcg->oom_group` (`memory.oom.group`): an OOM kill below it kills the whole group.
    pub oom_group: u32,
    pub _pad: u32,
    pub name: [u8; CGROUP_NAME_LEN],
}

/// Everything recorded in the kernel about one OOM kill.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OomKillEvent {
    pub header: EventHeader,
    pub victim_pid: u32,
    pub victim_tgid: u32,
    pub victim_comm: [u8; COMM_LEN],
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: [u8; COMM_LEN],
    /// cgroup v2 id of the victim (`task->cgroups->dfl_cgrp->kn->id`).
    pub victim_cgroup_id: u64,
    /// cgroup v2 id of the task that was running when the kill was decided.
    pub trigger_cgroup_id: u64,
    /// `signal->oom_score_adj` (a `short` in the kernel).
    pub oom_score_adj: i32,
    /// `OOM_FLAG_*` bits.
    pub flags: u32,
    pub rss_anon_pages: i64,
    pub rss_file_pages: i64,
    pub rss_shmem_pages: i64,
    pub total_vm_pages: u64,
    /// Number of valid entries in `cgroup_chain` (the root is not recorded).
    pub cgroup_depth: u32,
    /// Number of valid entries in `memcg_chain` (the root memcg is recorded last when present).
    pub memcg_depth: u32,
    /// The victim's cgroup v2 path, leaf first.
    pub cgroup_chain: [CgroupLevel; CGROUP_MAX_DEPTH],
    /// The victim's memory cgroup and its ancestors, leaf first.
    pub memcg_chain: [MemcgLevel; CGROUP_MAX_DEPTH],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::OomKillEvent {}
}
