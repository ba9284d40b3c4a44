//! Reading the network programs' in-kernel aggregates (per-CPU maps summed over CPUs) and
//! maintaining the `VXLAN_DEVS` map they consult.
//!
//! The maps stay in the kernel; readers take a snapshot when asked (at scrape time, at the
//! end of a capture), so counts are exact whatever the packet rate.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};
use probe_common::{
    Counter, DevKey, DropKey, ExpireKey, LastDrop, NET_STAT_DROPS_MAP_FULL, NET_STAT_DROPS_SEEN,
    NET_STAT_SLOTS, VXLAN_DEV_EXTERNAL, VXLAN_STAT_COUNTS_MAP_FULL, VXLAN_STAT_NO_DEV,
    VXLAN_STAT_NO_TUNNEL_KEY, VXLAN_STAT_SLOTS, VXLAN_STAT_UNKNOWN_DEV, VxlanCountKey,
    VxlanCounters, VxlanDev, VxlanPath, VxlanPathKey,
};

#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("reading BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing BPF map {name}: {source}")]
    Io {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> CountersError {
    move |source| CountersError::Map { name, source }
}

fn map<'a>(ebpf: &'a aya::Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, CountersError> {
    ebpf.map(name).ok_or(CountersError::MissingMap(name))
}

/// `DROPS` plus each CPU's `LAST_DROP` slot: packets and bytes per (netns, cookie, device,
/// reason, protocol, location). `DROPS` is read first: the kernel rewrites a slot before it
/// adds the slot's old count to `DROPS`, so a read racing with that can miss a count (the next
/// read has it) but never counts one twice.
pub fn drops(ebpf: &aya::Ebpf) -> Result<HashMap<DropKey, Counter>, CountersError> {
    let m: PerCpuHashMap<&MapData, DropKey, Counter> =
        PerCpuHashMap::try_from(map(ebpf, "DROPS")?).map_err(map_err("DROPS"))?;
    let mut out: HashMap<DropKey, Counter> = HashMap::new();
    for item in m.iter() {
        let (k, per_cpu) = item.map_err(map_err("DROPS"))?;
        let mut sum = Counter::default();
        for c in per_cpu.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        out.insert(k, sum);
    }
    // Objects built before the fast path have no slot.
    if let Some(last) = ebpf.map("LAST_DROP") {
        let last: PerCpuArray<&MapData, LastDrop> =
            PerCpuArray::try_from(last).map_err(map_err("LAST_DROP"))?;
        let slots = last.get(&0, 0).map_err(map_err("LAST_DROP"))?;
        add_last_drops(&mut out, slots.iter());
    }
    Ok(out)
}

/// Adds the per-CPU last-key slots to a `DROPS` snapshot.
pub fn add_last_drops<'a>(
    out: &mut HashMap<DropKey, Counter>,
    slots: impl Iterator<Item = &'a LastDrop>,
) {
    for s in slots {
        if s.count.packets == 0 {
            continue;
        }
        let e = out.entry(s.key).or_default();
        e.packets += s.count.packets;
        e.bytes += s.count.bytes;
    }
}

/// `EXPIRED`: fragment queues that timed out per (netns, cookie, family).
pub fn expired(ebpf: &aya::Ebpf) -> Result<HashMap<ExpireKey, u64>, CountersError> {
    let m: PerCpuHashMap<&MapData, ExpireKey, u64> =
        PerCpuHashMap::try_from(map(ebpf, "EXPIRED")?).map_err(map_err("EXPIRED"))?;
    let mut out = HashMap::new();
    for item in m.iter() {
        let (k, per_cpu) = item.map_err(map_err("EXPIRED"))?;
        out.insert(k, per_cpu.iter().sum::<u64>());
    }
    Ok(out)
}

/// `VXLAN_COUNTS`: VXLAN frames per (netns, device, VNI, direction) from the tc programs.
pub fn vxlan_counts(
    ebpf: &aya::Ebpf,
) -> Result<HashMap<VxlanCountKey, VxlanCounters>, CountersError> {
    let m: PerCpuHashMap<&MapData, VxlanCountKey, VxlanCounters> =
        PerCpuHashMap::try_from(map(ebpf, "VXLAN_COUNTS")?).map_err(map_err("VXLAN_COUNTS"))?;
    let mut out = HashMap::new();
    for item in m.iter() {
        let (k, per_cpu) = item.map_err(map_err("VXLAN_COUNTS"))?;
        let mut s = VxlanCounters::default();
        for c in per_cpu.iter() {
            s.packets += c.packets;
            s.bytes += c.bytes;
            s.oversize += c.oversize;
            s.no_path += c.no_path;
        }
        out.insert(k, s);
    }
    Ok(out)
}

/// Health of the VXLAN tc programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanStats {
    /// Frames not counted per VNI because `VXLAN_COUNTS` was full.
    pub counts_map_full: u64,
    /// Frames on a device not (yet / any more) in `VXLAN_DEVS`.
    pub unknown_device: u64,
    /// Frames of external devices without a readable tunnel key.
    pub no_tunnel_key: u64,
    /// Frames whose device or namespace could not be read.
    pub no_device: u64,
}

pub fn vxlan_stats(ebpf: &aya::Ebpf) -> Result<VxlanStats, CountersError> {
    let v = per_cpu_array_sum(ebpf, "VXLAN_STATS", VXLAN_STAT_SLOTS)?;
    Ok(VxlanStats {
        counts_map_full: v[VXLAN_STAT_COUNTS_MAP_FULL as usize],
        unknown_device: v[VXLAN_STAT_UNKNOWN_DEV as usize],
        no_tunnel_key: v[VXLAN_STAT_NO_TUNNEL_KEY as usize],
        no_device: v[VXLAN_STAT_NO_DEV as usize],
    })
}

/// A VXLAN device and direction (of the namespace with that cookie: inodes are reused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub netns: u32,
    pub ifindex: u32,
    /// `DIRECTION_RX` or `DIRECTION_TX`.
    pub direction: u32,
    pub netns_cookie: u64,
}

/// `VXLAN_COUNTS` summed over VNIs: frames per VXLAN device and direction.
pub fn vxlan_devices(ebpf: &aya::Ebpf) -> Result<HashMap<DeviceKey, VxlanCounters>, CountersError> {
    let mut out: HashMap<DeviceKey, VxlanCounters> = HashMap::new();
    for (k, c) in vxlan_counts(ebpf)? {
        let e = out
            .entry(DeviceKey {
                netns: k.netns,
                ifindex: k.ifindex,
                direction: k.direction,
                netns_cookie: k.netns_cookie,
            })
            .or_default();
        e.packets += c.packets;
        e.bytes += c.bytes;
        e.oversize += c.oversize;
        e.no_path += c.no_path;
    }
    Ok(out)
}

fn per_cpu_array_sum(
    ebpf: &aya::Ebpf,
    name: &'static str,
    slots: u32,
) -> Result<Vec<u64>, CountersError> {
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map(ebpf, name)?).map_err(map_err(name))?;
    (0..slots)
        .map(|i| {
            m.get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .map_err(map_err(name))
        })
        .collect()
}

/// Health of the network programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Drops seen by `skb_kfree_skb` (whether or not counted in `DROPS`).
    pub drops_seen: u64,
    /// Drops not counted per key because `DROPS` was full.
    pub drops_map_full: u64,
}

pub fn net_stats(ebpf: &aya::Ebpf) -> Result<NetStats, CountersError> {
    let v = per_cpu_array_sum(ebpf, "NET_STATS", NET_STAT_SLOTS)?;
    Ok(NetStats {
        drops_seen: v[NET_STAT_DROPS_SEEN as usize],
        drops_map_full: v[NET_STAT_DROPS_MAP_FULL as usize],
    })
}

/// Events refused by a rate limit, indexed by `EventKind`.
pub fn events_suppressed(ebpf: &aya::Ebpf) -> Result<Vec<u64>, CountersError> {
    per_cpu_array_sum(ebpf, "EVENTS_SUPPRESSED", 8)
}

/// Events lost to a full ring buffer, indexed by `EventKind`.
pub fn events_lost(ebpf: &aya::Ebpf) -> Result<Vec<u64>, CountersError> {
    per_cpu_array_sum(ebpf, "EVENTS_LOST", 8)
}

/// Deletes the keys of a gone network namespace: inode `netns` with `cookie` (every cookie
/// when `None`) in `DROPS`, `EXPIRED`, `VXLAN_COUNTS` and the `LAST_DROP` slots; keys without
/// a cookie (kernels before 5.14) only when `inode_free`, no namespace holding the inode now. A new namespace that already reuses the inode keeps its counts.
pub fn forget_netns(
    ebpf: &mut aya::Ebpf,
    netns: u32,
    cookie: Option<u64>,
    inode_free: bool,
) -> Result<usize, CountersError> {
    let of = |ns: u32, c: u64| ns == netns && cookie.is_none_or(|want| want == c);
    let n = remove_keys::<DropKey, Counter>(ebpf, "DROPS", |k| of(k.netns, k.netns_cookie))?
        + remove_keys::<ExpireKey, u64>(ebpf, "EXPIRED", |k| of(k.netns, k.netns_cookie))?
        + remove_keys::<VxlanCountKey, VxlanCounters>(ebpf, "VXLAN_COUNTS", |k| {
            of(k.netns, k.netns_cookie) && (k.netns_cookie != 0 || inode_free)
        })?;
    // Without cookies (kernels before 5.14) a slot still holding the namespace would flush
    // into DROPS later and bring the key back, to be counted a second time: the slot is
    // cleared, by rewriting every CPU's slot from a copy read just before (a drop counted on
    // another CPU in between is lost). With cookies nothing is written: the serving side
    // retires the gone namespace's cookie and leaves out, and deletes again, any key of it
    // that comes back.
    if cookie.is_none()
        && let Some(m) = ebpf.map_mut("LAST_DROP")
    {
        let mut last: PerCpuArray<&mut MapData, LastDrop> =
            PerCpuArray::try_from(m).map_err(map_err("LAST_DROP"))?;
        let slots = last.get(&0, 0).map_err(map_err("LAST_DROP"))?;
        if slots.iter().any(|s| of(s.key.netns, s.key.netns_cookie)) {
            let cleared: Vec<LastDrop> = slots
                .iter()
                .map(|s| {
                    if of(s.key.netns, s.key.netns_cookie) {
                        LastDrop::default()
                    } else {
                        *s
                    }
                })
                .collect();
            let values =
                aya::maps::PerCpuValues::try_from(cleared).map_err(|source| CountersError::Io {
                    name: "LAST_DROP",
                    source,
                })?;
            last.set(0, values, 0).map_err(map_err("LAST_DROP"))?;
        }
    }
    Ok(n)
}

/// Removes the keys of per-CPU hash `name` that `doomed` selects; returns how many.
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    doomed: impl Fn(&K) -> bool,
) -> Result<usize, CountersError> {
    let m = ebpf.map_mut(name).ok_or(CountersError::MissingMap(name))?;
    let mut m: PerCpuHashMap<&mut MapData, K, V> =
        PerCpuHashMap::try_from(m).map_err(map_err(name))?;
    let keys: Vec<K> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| doomed(k))
        .collect();
    Ok(keys.iter().filter(|k| m.remove(k).is_ok()).count())
}

/// Replaces the contents of `VXLAN_PATHS` with `paths`.
pub fn set_vxlan_paths(
    ebpf: &mut aya::Ebpf,
    paths: &HashMap<VxlanPathKey, VxlanPath>,
) -> Result<(), CountersError> {
    let m = ebpf
        .map_mut("VXLAN_PATHS")
        .ok_or(CountersError::MissingMap("VXLAN_PATHS"))?;
    let mut m: BpfHashMap<&mut MapData, VxlanPathKey, VxlanPath> =
        BpfHashMap::try_from(m).map_err(map_err("VXLAN_PATHS"))?;
    let stale: Vec<VxlanPathKey> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !paths.contains_key(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    for (k, v) in paths {
        if m.get(k, 0).ok().as_ref() != Some(v) {
            m.insert(k, v, 0).map_err(map_err("VXLAN_PATHS"))?;
        }
    }
    Ok(())
}

/// The `VXLAN_PATHS` contents for a topology's VXLAN devices.
pub fn vxlan_paths_from(
    entries: &[crate::net::topology::VxlanMapEntry],
) -> HashMap<VxlanPathKey, VxlanPath> {
    let mut out = HashMap::new();
    for e in entries {
        for (kind, addr, mtu) in &e.paths {
            out.insert(
                VxlanPathKey {
                    netns: e.netns_inode,
                    ifindex: e.ifindex,
                    kind: *kind,
                    _pad: 0,
                    addr: *addr,
                },
                VxlanPath {
                    path_mtu: *mtu,
                    _pad: 0,
                },
            );
        }
    }
    out
}

/// Replaces the contents of `VXLAN_DEVS` with `devs`.
pub fn set_vxlan_devices(
    ebpf: &mut aya::Ebpf,
    devs: &HashMap<DevKey, VxlanDev>,
) -> Result<(), CountersError> {
    let m = ebpf
        .map_mut("VXLAN_DEVS")
        .ok_or(CountersError::MissingMap("VXLAN_DEVS"))?;
    let mut m: BpfHashMap<&mut MapData, DevKey, VxlanDev> =
        BpfHashMap::try_from(m).map_err(map_err("VXLAN_DEVS"))?;
    let stale: Vec<DevKey> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !devs.contains_key(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    for (k, v) in devs {
        m.insert(k, v, 0).map_err(map_err("VXLAN_DEVS"))?;
    }
    Ok(())
}

/// The kernel map's contents for a topology's VXLAN devices (devices whose underlay is
/// unknown get `underlay_mtu` 0: counted, but no oversize verdict).
pub fn vxlan_map_from(
    entries: &[crate::net::topology::VxlanMapEntry],
) -> HashMap<DevKey, VxlanDev> {
    entries
        .iter()
        .map(|e| {
            (
                DevKey {
                    netns: e.netns_inode,
                    ifindex: e.ifindex,
                },
                VxlanDev {
                    underlay_mtu: e.underlay_mtu,
                    overhead: e.overhead,
                    vni: e.vni,
                    flags: if e.external { VXLAN_DEV_EXTERNAL } else { 0 },
                    mtu: e.mtu,
                    _pad: 0,
                },
            )
        })
        .collect()
}
