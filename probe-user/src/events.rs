//! Decoding of ring-buffer records into typed events.

use probe_common::{
    CGROUP_NAME_LEN, DropKey, EventHeader, EventKind, OOM_FLAG_CGROUP_TRUNCATED,
    OOM_FLAG_MEMCG_TRUNCATED, OOM_FLAG_MEMCG_VALID, OOM_FLAG_NO_MM, OomKillEvent, PacketDropEvent,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {got} bytes, expected at least {want}")]
    Truncated {
        kind: EventKind,
        got: usize,
        want: usize,
    },
}

/// A cgroup level as recorded in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLevel {
    pub id: u64,
    pub name: String,
}

/// A memory cgroup level with its page counter at kill time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcgLevel {
    pub id: u64,
    pub name: String,
    pub max_pages: u64,
    pub usage_pages: u64,
    /// `memory.oom.group` was set on it at kill time.
    pub oom_group: bool,
}

/// An OOM kill as recorded by the kernel, decoded but not yet interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOomKill {
    pub boot_ns: u64,
    pub victim_pid: u32,
    pub victim_tgid: u32,
    pub victim_comm: String,
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: String,
    pub victim_cgroup_id: u64,
    pub trigger_cgroup_id: u64,
    pub oom_score_adj: i32,
    pub has_mm: bool,
    pub rss_anon_pages: u64,
    pub rss_file_pages: u64,
    pub rss_shmem_pages: u64,
    pub total_vm_pages: u64,
    /// Victim's cgroup v2 chain, leaf first, root excluded.
    pub cgroup_chain: Vec<CgroupLevel>,
    pub cgroup_truncated: bool,
    /// Victim's memory cgroup chain, leaf first, root memcg last (when not truncated).
    /// Empty when the memory controller could not be read.
    pub memcg_chain: Vec<MemcgLevel>,
    pub memcg_truncated: bool,
}

/// One dropped packet as sampled by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPacketDrop {
    pub boot_ns: u64,
    pub key: DropKey,
    pub sk_cgroup_id: u64,
    pub len: u32,
    /// Packet bytes from the network header on (at most `DROP_SNAP_LEN`).
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    OomKill(Box<RawOomKill>),
    PacketDrop(Box<RawPacketDrop>),
}

/// Text up to the first NUL, lossily decoded.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read_record<T: Copy>(data: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if data.len() < want {
        return Err(DecodeError::Truncated {
            kind,
            got: data.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a #[repr(C)] plain-old-data record from probe-common for
    // which every bit pattern is valid; read_unaligned copes with the ring's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(data: &[u8]) -> Result<RawEvent, DecodeError> {
    if data.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(data.len()));
    }
    let kind_raw = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes"));
    let kind = EventKind::from_u32(kind_raw).ok_or(DecodeError::UnknownKind(kind_raw))?;
    match kind {
        EventKind::OomKill => {
            let ev: OomKillEvent = read_record(data, kind)?;
            Ok(RawEvent::OomKill(Box::new(decode_oom(&ev))))
        }
        EventKind::PacketDrop => {
            let ev: PacketDropEvent = read_record(data, kind)?;
            let snap = (ev.snap_len as usize).min(ev.data.len());
            Ok(RawEvent::PacketDrop(Box::new(RawPacketDrop {
                boot_ns: ev.header.boot_ns,
                key: ev.key,
                sk_cgroup_id: ev.sk_cgroup_id,
                len: ev.len,
                data: ev.data[..snap].to_vec(),
            })))
        }
    }
}

fn decode_oom(ev: &OomKillEvent) -> RawOomKill {
    let depth = (ev.cgroup_depth as usize).min(ev.cgroup_chain.len());
    let cgroup_chain = ev.cgroup_chain[..depth]
        .iter()
        .map(|l| CgroupLevel {
            id: l.id,
            name: c_str(&l.name[..CGROUP_NAME_LEN]),
        })
        .collect();
    let memcg_chain = if ev.flags & OOM_FLAG_MEMCG_VALID != 0 {
        let depth = (ev.memcg_depth as usize).min(ev.memcg_chain.len());
        ev.memcg_chain[..depth]
            .iter()
            .map(|l| MemcgLevel {
                id: l.id,
                name: c_str(&l.name),
                max_pages: l.max_pages,
                usage_pages: l.usage_pages,
                oom_group: l.oom_group != 0,
            })
            .collect()
    } else {
        Vec::new()
    };
    // The kernel's per-CPU RSS counters can read slightly negative; clamp like
    // get_mm_counter() does for its reports.
    let pages = |v: i64| v.max(0) as u64;
    RawOomKill {
        boot_ns: ev.header.boot_ns,
        victim_pid: ev.victim_pid,
        victim_tgid: ev.victim_tgid,
        victim_comm: c_str(&ev.victim_comm),
        trigger_pid: ev.trigger_pid,
        trigger_tgid: ev.trigger_tgid,
        trigger_comm: c_str(&ev.trigger_comm),
        victim_cgroup_id: ev.victim_cgroup_id,
        trigger_cgroup_id: ev.trigger_cgroup_id,
        oom_score_adj: ev.oom_score_adj,
        has_mm: ev.flags & OOM_FLAG_NO_MM == 0,
        rss_anon_pages: pages(ev.rss_anon_pages),
        rss_file_pages: pages(ev.rss_file_pages),
        rss_shmem_pages: pages(ev.rss_shmem_pages),
        total_vm_pages: ev.total_vm_pages,
        cgroup_chain,
        cgroup_truncated: ev.flags & OOM_FLAG_CGROUP_TRUNCATED != 0,
        memcg_chain,
        memcg_truncated: ev.flags & OOM_FLAG_MEMCG_TRUNCATED != 0,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use probe_common::{CGROUP_MAX_DEPTH, CgroupLevel as KLevel, MemcgLevel as KMemcg};

    fn name(s: &str) -> [u8; CGROUP_NAME_LEN] {
        let mut n = [0u8; CGROUP_NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    /// A kernel-shaped record: victim in /a/b (v2), memcg chain b → a → root.
    pub(crate) fn sample_record() -> OomKillEvent {
        let empty = KLevel {
            id: 0,
            name: [0xAA; CGROUP_NAME_LEN], // garbage beyond depth must be ignored
        };
        let empty_m = KMemcg {
            id: 0,
            max_pages: 0,
            usage_pages: 0,
            oom_group: 0,
            _pad: 0,
            name: [0xAA; CGROUP_NAME_LEN],
        };
        let mut ev = OomKillEvent {
            header: EventHeader {
                kind: EventKind::OomKill as u32,
                size: size_of::<OomKillEvent>() as u32,
                boot_ns: 42,
            },
            victim_pid: 100,
            victim_tgid: 100,
            victim_comm: comm("alloc"),
            trigger_pid: 101,
            trigger_tgid: 100,
            trigger_comm: comm("alloc"),
            victim_cgroup_id: 7,
            trigger_cgroup_id: 7,
            oom_score_adj: -500,
            flags: OOM_FLAG_MEMCG_VALID,
            rss_anon_pages: 16_000,
            rss_file_pages: -3,
            rss_shmem_pages: 0,
            total_vm_pages: 60_000,
            cgroup_depth: 2,
            memcg_depth: 3,
            cgroup_chain: [empty; CGROUP_MAX_DEPTH],
            memcg_chain: [empty_m; CGROUP_MAX_DEPTH],
        };
        ev.cgroup_chain[0] = KLevel {
            id: 7,
            name: name("b"),
        };
        ev.cgroup_chain[1] = KLevel {
            id: 6,
            name: name("a"),
        };
        ev.memcg_chain[0] = KMemcg {
            id: 17,
            max_pages: 16384,
            usage_pages: 16380,
            oom_group: 1,
            _pad: 0,
            name: name("b"),
        };
        ev.memcg_chain[1] = KMemcg {
            id: 16,
            max_pages: u64::MAX >> 13,
            usage_pages: 20000,
            oom_group: 0,
            _pad: 0,
            name: name("a"),
        };
        ev.memcg_chain[2] = KMemcg {
            id: 1,
            max_pages: u64::MAX >> 13,
            usage_pages: 90000,
            oom_group: 0,
            _pad: 0,
            name: name("/"),
        };
        ev
    }

    pub(crate) fn as_bytes(ev: &OomKillEvent) -> Vec<u8> {
        // SAFETY: OomKillEvent is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts((ev as *const OomKillEvent).cast::<u8>(), size_of_val(ev))
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_oom_record() {
        let RawEvent::OomKill(k) = decode(&as_bytes(&sample_record())).unwrap() else {
            panic!("not an OOM kill")
        };
        assert_eq!(k.victim_pid, 100);
        assert_eq!(k.victim_comm, "alloc");
        assert_eq!(k.oom_score_adj, -500);
        assert_eq!(k.rss_file_pages, 0, "negative per-CPU drift clamps to 0");
        assert_eq!(
            k.cgroup_chain
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(k.memcg_chain.len(), 3);
        assert_eq!(k.memcg_chain[0].usage_pages, 16380);
        assert!(k.memcg_chain[0].oom_group && !k.memcg_chain[1].oom_group);
        assert!(!k.cgroup_truncated && !k.memcg_truncated && k.has_mm);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::Short(3)));
        let mut b = as_bytes(&sample_record());
        assert!(matches!(
            decode(&b[..100]),
            Err(DecodeError::Truncated { got: 100, .. })
        ));
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn depth_beyond_the_array_is_clamped() {
        let mut ev = sample_record();
        ev.cgroup_depth = 1000;
        ev.memcg_depth = 1000;
        let RawEvent::OomKill(k) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not an OOM kill")
        };
        assert_eq!(k.cgroup_chain.len(), CGROUP_MAX_DEPTH);
        assert_eq!(k.memcg_chain.len(), CGROUP_MAX_DEPTH);
    }

    #[test]
    fn invalid_memcg_gives_empty_chain() {
        let mut ev = sample_record();
        ev.flags = 0;
        let RawEvent::OomKill(k) = decode(&as_bytes(&ev)).unwrap() else {
            panic!("not an OOM kill")
        };
        assert!(k.memcg_chain.is_empty());
    }

    #[test]
    fn decodes_a_drop_record_and_clamps_snap_len() {
        let mut ev = PacketDropEvent {
            header: EventHeader {
                kind: EventKind::PacketDrop as u32,
                size: size_of::<PacketDropEvent>() as u32,
                boot_ns: 9,
            },
            key: DropKey {
                netns: 4026531840,
                ifindex: 1,
                reason: 3,
                l3_proto: 0x0800,
                l4_proto: 17,
                _pad: 0,
                location: 0xffff_ffff_8100_0000,
                netns_cookie: 0,
            },
            sk_cgroup_id: 0,
            len: 60,
            snap_len: 60,
            data: [7; probe_common::DROP_SNAP_LEN],
        };
        // SAFETY: repr(C) plain data without padding.
        let bytes = |ev: &PacketDropEvent| {
            unsafe {
                std::slice::from_raw_parts(
                    (ev as *const PacketDropEvent).cast::<u8>(),
                    size_of_val(ev),
                )
            }
            .to_vec()
        };
        let RawEvent::PacketDrop(d) = decode(&bytes(&ev)).unwrap() else {
            panic!("not a drop")
        };
        assert_eq!(d.data.len(), 60);
        assert_eq!(d.key.reason, 3);
        ev.snap_len = 10_000;
        let RawEvent::PacketDrop(d) = decode(&bytes(&ev)).unwrap() else {
            panic!("not a drop")
        };
        assert_eq!(d.data.len(), probe_common::DROP_SNAP_LEN);
    }

    #[test]
    fn c_str_stops_at_nul_and_survives_bad_utf8() {
        assert_eq!(c_str(b"ab\0cd"), "ab");
        assert_eq!(c_str(b"abc"), "abc");
        assert_eq!(c_str(&[0xff, 0x41, 0]), "\u{fffd}A");
    }
}
