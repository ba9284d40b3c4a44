//! Every map the programs share with userspace, in one place.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// Ring buffer of event records (`probe_common::EventHeader` first). 1 MiB: an OOM record is
/// ~3 KiB, so a few hundred kills fit even when userspace is briefly descheduled.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Records that could not be reserved in [`EVENTS`], indexed by `EventKind`.
#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(8, 0);

#[inline(always)]
pub fn count_lost(kind: u32) {
    if let Some(slot) = EVENTS_LOST.get_ptr_mut(kind) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *slot += 1 };
    }
}
