//! Helpers shared by the integration tests that load fathom's programs in-process (through the
//! `fathom` library) and read their maps directly.
#![allow(dead_code)]

use std::collections::BTreeMap;

use fathom::{loader, net_counters};
use probe_common::VxlanCounters;

/// Loads and attaches every program; a program that does not attach fails the test (these
/// hooks exist on every kernel fathom supports).
pub fn load() -> loader::Loaded {
    let l = loader::load_with(&loader::LoadOptions::default()).expect("load programs");
    for s in &l.status {
        assert!(s.attached, "{} not attached: {:?}", s.name, s.error);
    }
    l
}

/// VXLAN counters of one namespace and direction, summed over its devices.
pub fn vxlan_sum(l: &loader::Loaded, netns: u64, dir: u32) -> VxlanCounters {
    let mut s = VxlanCounters::default();
    for (k, c) in net_counters::vxlan_devices(&l.ebpf).unwrap() {
        if k.netns as u64 == netns && k.direction == dir {
            s.packets += c.packets;
            s.bytes += c.bytes;
            s.oversize += c.oversize;
            s.no_path += c.no_path;
        }
    }
    s
}

pub type Snmp = BTreeMap<String, u64>;

/// Growth of one /proc/net/snmp counter.
pub fn delta(after: &Snmp, before: &Snmp, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}
