//! Memory reclaim stalls per memory cgroup: the key and value of the `RECLAIM` per-CPU hash
//! the reclaim programs (`probe-ebpf/src/reclaim.rs`) fill and userspace reads at scrape time.
//!
//! Durations go into log2 buckets of 1.024 µs units: bucket `i` counts stalls shorter than
//! `1024 << i` ns (and at least `1024 << (i - 1)` ns for `i > 0`); the last bucket takes
//! everything longer. Bucket 0 is `< 1.024 µs`, bucket 23 `>= 4.29 s`.

/// Buckets per series (see the module docs).
pub const RECLAIM_BUCKETS: usize = 24;

/// `ReclaimKey::kind`: memory-cgroup reclaim (`vmscan:mm_vmscan_memcg_reclaim_*`), the
/// allocating task reclaiming because its cgroup is at `memory.max` / `memory.high`.
pub const RECLAIM_KIND_MEMCG: u32 = 0;
/// `ReclaimKey::kind`: direct reclaim (`vmscan:mm_vmscan_direct_reclaim_*`): the page
/// allocator reclaiming because the *node* is short of memory, charged to the allocating
/// task's memory cgroup.
pub const RECLAIM_KIND_DIRECT: u32 = 1;

/// Slots of the `RECLAIM_STATS` per-CPU array (health of the reclaim programs).
/// A stall that ended but could not be counted because `RECLAIM` was full.
pub const RECLAIM_STAT_MAP_FULL: u32 = 0;
/// An end without a recorded begin (the begin program was not attached yet, or its start
/// entry was evicted from the LRU): not counted, since its duration is unknown.
pub const RECLAIM_STAT_UNMATCHED_END: u32 = 1;
pub const RECLAIM_STAT_SLOTS: u32 = 2;

/// Per-CPU hash key: whose memory cgroup stalled, in which kind of reclaim.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReclaimKey {
    /// kernfs id (directory inode) of the task's memory cgroup — the v1 `memory` hierarchy's
    /// on hybrid / v1 hosts, the cgroup2 one on pure v2; 0 when the kernel has no memcg.
    pub memcg_id: u64,
    /// `RECLAIM_KIND_*`.
    pub kind: u32,
    pub _pad: u32,
}

/// Stalls of one key on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimStall {
    /// Completed stalls (begin … end pairs).
    pub count: u64,
    /// Their summed duration in ns.
    pub total_ns: u64,
    /// Log2 histogram of their durations (see the module docs).
    pub buckets: [u64; RECLAIM_BUCKETS],
    /// Never written: room behind `buckets` so that the kernel program's bucket index,
    /// masked with [`RECLAIM_BUCKET_MASK`], stays inside the map value for every verifier
    /// (see `probe-ebpf/src/reclaim.rs`).
    pub _spare: [u64; RECLAIM_BUCKET_MASK + 1 - RECLAIM_BUCKETS],
}

/// Mask the kernel program applies to a bucket index: a power of two minus one, at least
/// `RECLAIM_BUCKETS - 1`.
pub const RECLAIM_BUCKET_MASK: usize = 31;

impl ReclaimStall {
    pub const fn zeroed() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            buckets: [0; RECLAIM_BUCKETS],
            _spare: [0; RECLAIM_BUCKET_MASK + 1 - RECLAIM_BUCKETS],
        }
    }
}

/// Bucket of a stall of `ns` nanoseconds. Branches instead of `leading_zeros`: the BPF target
/// has no count-leading-zeros instruction, and this stays a handful of compares.
#[inline(always)]
pub fn reclaim_bucket(ns: u64) -> usize {
    let mut v = ns >> 10;
    let mut bits = 0usize;
    if v >= 1 << 16 {
        v >>= 16;
        bits += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        bits += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        bits += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        bits += 2;
    }
    if v >= 1 << 1 {
        v >>= 1;
        bits += 1;
    }
    // `bits` is now floor(log2(v)) for v >= 1; the bucket is the bit length of `ns >> 10`.
    let len = bits + v as usize;
    if len >= RECLAIM_BUCKETS {
        RECLAIM_BUCKETS - 1
    } else {
        len
    }
}

/// Upper bound (exclusive) of bucket `i` in seconds; `f64::INFINITY` for the last one.
pub fn reclaim_bucket_upper_seconds(i: usize) -> f64 {
    if i + 1 >= RECLAIM_BUCKETS {
        f64::INFINITY
    } else {
        (1024u64 << i) as f64 / 1e9
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ReclaimKey {}
    unsafe impl aya::Pod for super::ReclaimStall {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_bit_length_of_microsecond_units() {
        assert_eq!(reclaim_bucket(0), 0);
        assert_eq!(reclaim_bucket(1023), 0);
        assert_eq!(reclaim_bucket(1024), 1);
        assert_eq!(reclaim_bucket(2047), 1);
        assert_eq!(reclaim_bucket(2048), 2);
        for i in 1..RECLAIM_BUCKETS - 1 {
            let lo = 1024u64 << (i - 1);
            assert_eq!(reclaim_bucket(lo), i, "lower edge of {i}");
            assert_eq!(reclaim_bucket((1024u64 << i) - 1), i, "upper edge of {i}");
            assert!((lo as f64 / 1e9) < reclaim_bucket_upper_seconds(i));
        }
        assert_eq!(reclaim_bucket(u64::MAX), RECLAIM_BUCKETS - 1);
        assert_eq!(reclaim_bucket(10_000_000_000), RECLAIM_BUCKETS - 1);
        assert!(reclaim_bucket_upper_seconds(RECLAIM_BUCKETS - 1).is_infinite());
    }
}
