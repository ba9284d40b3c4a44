//! Types shared by fathom's kernel programs (`probe-ebpf`) and its userspace daemon
//! (`probe-user`).
//!
//! Every type here is `#[repr(C)]` with explicit padding so that the kernel and userspace agree
//! on the layout byte for byte; the `user` feature adds `aya::Pod` so userspace can put them in
//! maps and globals. Kernel struct offsets are *not* compiled in: userspace reads them from the
//! running kernel's BTF and hands them to the programs in [`KernelOffsets`].
#![no_std]

pub mod net;
pub mod oom;
pub mod pressure;

pub use net::*;
pub use oom::*;
pub use pressure::*;

/// Tag at the start of every ring-buffer record; tells userspace how to decode the rest.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    OomKill = 1,
    PacketDrop = 2,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::OomKill),
            2 => Some(Self::PacketDrop),
            _ => None,
        }
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Size of the whole record in bytes (header included), for forward compatibility.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns()` when the kernel produced the record.
    pub boot_ns: u64,
}

/// Byte offsets of the kernel struct members the programs read, computed by userspace from
/// `/sys/kernel/btf/vmlinux` at load time and written into the programs' read-only globals.
///
/// A value of [`KernelOffsets::ABSENT`] means "this member does not exist on this kernel"; the
/// programs then skip the read and leave the field zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    // struct task_struct
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    // struct css_set
    pub css_set_dfl_cgrp: u32,
    /// `offsetof(struct css_set, subsys) + memory_cgrp_id * sizeof(void *)`.
    pub css_set_memory_css: u32,
    // struct cgroup_subsys_state
    pub css_cgroup: u32,
    pub css_parent: u32,
    // struct cgroup
    pub cgroup_kn: u32,
    // struct kernfs_node
    pub kn_id: u32,
    pub kn_name: u32,
    /// `parent` before 6.15, `__parent` since.
    pub kn_parent: u32,
    // struct mem_cgroup (`memory` is a struct page_counter)
    pub memcg_memory_usage: u32,
    pub memcg_memory_max: u32,
    /// `mem_cgroup.oom_group` (a bool: `memory.oom.group`), ABSENT when unknown.
    pub memcg_oom_group: u32,
    // struct signal_struct
    pub signal_oom_score_adj: u32,
    // struct mm_struct
    pub mm_total_vm: u32,
    /// Offset of the counter value of `rss_stat[0]` inside mm_struct.
    pub mm_rss_base: u32,
    /// Distance between consecutive `rss_stat` entries.
    pub mm_rss_stride: u32,
    /// Indexes of enum MM_* counters (`MM_FILEPAGES`, `MM_ANONPAGES`, `MM_SHMEMPAGES`).
    pub mm_rss_file_idx: u32,
    pub mm_rss_anon_idx: u32,
    pub mm_rss_shmem_idx: u32,
    /// 1 when the kernel has a memory controller (CONFIG_MEMCG) we can read.
    pub memcg_enabled: u32,
}

impl KernelOffsets {
    pub const ABSENT: u32 = u32::MAX;

    pub const fn zeroed() -> Self {
        Self {
            task_pid: 0,
            task_tgid: 0,
            task_comm: 0,
            task_cgroups: 0,
            task_signal: 0,
            task_mm: 0,
            css_set_dfl_cgrp: 0,
            css_set_memory_css: 0,
            css_cgroup: 0,
            css_parent: 0,
            cgroup_kn: 0,
            kn_id: 0,
            kn_name: 0,
            kn_parent: 0,
            memcg_memory_usage: 0,
            memcg_memory_max: 0,
            memcg_oom_group: 0,
            signal_oom_score_adj: 0,
            mm_total_vm: 0,
            mm_rss_base: 0,
            mm_rss_stride: 0,
            mm_rss_file_idx: 0,
            mm_rss_anon_idx: 0,
            mm_rss_shmem_idx: 0,
            memcg_enabled: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::EventHeader {}
}
