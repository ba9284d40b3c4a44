//! Helpers shared by the integration tests that load fathom's programs in-process (through the
//! `fathom` library) and read their maps directly.
#![allow(dead_code)]

use std::collections::BTreeMap;

use fathom::{loader, net_counters};
use probe_common::IfCounters;

/// Loads and attaches every program; a program that does not attach fails the test (these
/// hooks exist on every kernel fathom supports).
pub fn load() -> loader::Loaded {
    let l = loader::load_with(&loader::LoadOptions::default()).expect("load programs");
    for s in &l.status {
        assert!(s.attached, "{} not attached: {:?}", s.name, s.error);
    }
    l
}

/// Fragment and VXLAN counters of one namespace and direction, summed over its devices.
pub fn if_sum(l: &loader::Loaded, netns: u64, dir: u32) -> IfCounters {
    let mut s = IfCounters::default();
    for (k, c) in net_counters::interfaces(&l.ebpf).unwrap() {
        if k.netns as u64 == netns && k.direction == dir {
            s.frag_packets += c.frag_packets;
            s.frag_bytes += c.frag_bytes;
            s.frag_first += c.frag_first;
            s.vxlan_packets += c.vxlan_packets;
            s.vxlan_bytes += c.vxlan_bytes;
            s.vxlan_oversize += c.vxlan_oversize;
        }
    }
    s
}

pub type Snmp = BTreeMap<String, u64>;

/// Growth of one /proc/net/snmp counter.
pub fn delta(after: &Snmp, before: &Snmp, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}
