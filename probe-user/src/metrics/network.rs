//! The network counter families, read from the kernel's per-CPU maps at scrape time:
//! - `fathom_packet_drops_total{namespace,pod,netns,reason}` (`DROPS`, summed over device,
//!   protocol and location);
//! - `fathom_ip_reassembly_failures_total{namespace,pod,netns,cause}` (`DROPS` entries the
//!   [`NetInterpreter`] classifies as reassembly failures, counted as
//!   [`counts_as_failure`] says: timeouts once per expired queue, like the kernel's
//!   ReasmTimeout / ReasmFails); while the expiry program is attached, `timeout` is its
//!   `EXPIRED` count instead (one per expired queue, in the queue's namespace);
//! - (`fathom_ip_fragments_total` is the namespaces' SNMP counters: see `network_gauges`);
//! - `fathom_vxlan_packets_total{netns,device,vni,direction}`,
//!   `fathom_vxlan_oversize_packets_total{netns,device,vni}` (`VXLAN_COUNTS` of the tc
//!   programs on VXLAN devices: the packet's own VNI — the tunnel key's on `external`
//!   devices —, oversize against the path MTU of the packet's own remote) and
//!   `fathom_vxlan_drops_total{netns,device,vni,reason}` (`DROPS` on a VXLAN device or with a
//!   VXLAN reason). At most [`VNI_CAP`] VNIs per device get their own series (the first
//!   seen); later ones share `vni="other"` and are counted in
//!   `fathom_vxlan_vni_folded_packets_total{netns,device}`.
//!
//! Both maps are read once per scrape, each kernel key is labelled (namespace owner from
//! [`NetnsOwners`], device names and VNIs from the topology snapshot, else `if<index>`) and fed
//! to a [`CumulativeCounters`] keyed by the kernel key, so a series never goes backwards when
//! labels change or several keys share one series. VXLAN series keep `netns` even without
//! workload labels: device names repeat across namespaces, and VXLAN devices are few.
//!
//! Zero series: `fathom_ip_reassembly_failures_total` exists at 0 for `queue_overflow` and
//! `timeout` in every namespace the topology lists (2 series per namespace), so the first
//! failure of a namespace moves a series Prometheus has already seen (see [`super::store`]).
//!
//! Nothing counted is lost when a namespace goes: fathom serve does not let the pipeline delete
//! a removed namespace's kernel keys. A scrape reads them, and only then deletes the keys of
//! namespaces the topology listed before and lists no more ([`net_counters::forget_netns`]);
//! the series keep their last value until they expire after the TTL.
//!
//! A namespace's labels come from services that learn about it a little after its first
//! packet (the topology rescans every 2 s, the attribution asks the runtime for pod names).
//! Counts of a namespace seen for the first time are therefore held back until the topology
//! lists it with final labels (or with no owner at all) or [`NAMING_GRACE`] has passed,
//! whichever is first: its series then start with
//! everything counted so far under the right names, instead of an `if<index>` / UID series
//! that stops growing beside the named one. Labels that change later anyway (a renamed
//! device) start a new series with the growth after the change; the old one expires after the
//! TTL once nothing feeds it ([`CumulativeCounters::expire`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use probe_common::{Counter, DIRECTION_TX, DropKey, ExpireKey, VxlanCountKey, VxlanCounters};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};
use tracing::{debug, warn};

use super::{
    labels::Anchor,
    netns_identity::{Gone, NetnsIdentity},
    netns_labels::{
        ListedNetns, NetnsLabeler, NetnsLabels, NetnsOwners, netns_anchor, netns_label,
    },
    store::CumulativeCounters,
};
use crate::{
    drop_reason::ReasmCause,
    net::{Topology, TopologySnapshot},
    net_counters,
    netreport::{NetInterpreter, counts_as_failure},
    pipeline::Kernel,
};

/// VNIs per VXLAN device with a series of their own; the rest are folded into `vni="other"`.
pub const VNI_CAP: usize = 64;

/// The `vni` label of folded VNIs.
pub const VNI_OTHER: &str = "other";

/// Longest the counts of a newly seen namespace wait for its final labels (two topology
/// rescans and a runtime lookup).
pub const NAMING_GRACE: Duration = Duration::from_secs(5);

/// `netns`, `device`, `vni` of a VXLAN series (`vni` empty when the topology no longer knows
/// the device).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VxlanLabels {
    pub netns: String,
    pub device: String,
    pub vni: String,
}

impl VxlanLabels {
    fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("netns", &self.netns),
            ("device", &self.device),
            ("vni", &self.vni),
        ]
    }
}

type DropSeries = (NetnsLabels, String);
type ReasmSeries = (NetnsLabels, &'static str);
type VxlanPacketSeries = (VxlanLabels, &'static str);
type VxlanDropSeries = (VxlanLabels, String);

/// One reading of a kernel key: key, cumulative value, labels, anchor.
type Reading<K, L> = (K, u64, L, Anchor);

/// One scrape's readings of every family.
#[derive(Debug, Default)]
struct Readings {
    drops: Vec<Reading<DropKey, DropSeries>>,
    reasm: Vec<Reading<DropKey, ReasmSeries>>,
    vxlan_packets: Vec<Reading<VxlanCountKey, VxlanPacketSeries>>,
    vxlan_oversize: Vec<Reading<VxlanCountKey, VxlanLabels>>,
    vxlan_drops: Vec<Reading<DropKey, VxlanDropSeries>>,
    vxlan_folded: Vec<Reading<VxlanCountKey, VxlanLabels>>,
}

/// Which VNIs of each device have a series of their own (see [`VNI_CAP`]).
#[derive(Debug, Default)]
struct VniSlots(HashMap<(u32, u32), HashSet<u32>>);

impl VniSlots {
    /// Whether `vni` of device (netns, ifindex) keeps its own label; claims a slot if free.
    fn own(&mut self, netns: u32, ifindex: u32, vni: u32) -> bool {
        let set = self.0.entry((netns, ifindex)).or_default();
        if set.contains(&vni) {
            return true;
        }
        if set.len() < VNI_CAP {
            set.insert(vni);
            return true;
        }
        false
    }

    fn retain(&mut self, present: &HashSet<(u32, u32)>) {
        self.0.retain(|k, _| present.contains(k));
    }
}

/// A device's name in the topology, else `if<index>`; empty for "no device" (0).
fn device_name(topology: Option<&TopologySnapshot>, netns: u32, ifindex: u32) -> String {
    if ifindex == 0 {
        return String::new();
    }
    topology
        .and_then(|t| t.link(netns, ifindex))
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("if{ifindex}"))
}

fn vxlan_labels(topology: Option<&TopologySnapshot>, netns: u32, ifindex: u32) -> VxlanLabels {
    VxlanLabels {
        netns: netns_label(netns),
        device: device_name(topology, netns, ifindex),
        vni: topology
            .and_then(|t| t.vxlan(netns, ifindex))
            .map(|v| v.vni.to_string())
            .unwrap_or_default(),
    }
}

/// `DropKey::reason` of the keys [`with_expiries`] adds: timed-out queues, not drops.
const EXPIRY_REASON: u32 = u32::MAX - 1;

/// The `DROPS` snapshot plus one key per `EXPIRED` entry (reason [`EXPIRY_REASON`], protocol
/// the family), so that expiries go through the same naming, readiness and TTL as drops.
fn with_expiries(
    drops: HashMap<DropKey, Counter>,
    expired: &HashMap<ExpireKey, u64>,
) -> HashMap<DropKey, Counter> {
    let mut out = drops;
    for (k, &n) in expired {
        let key = DropKey {
            netns: k.netns,
            reason: EXPIRY_REASON,
            l3_proto: if k.family == 6 { 0x86dd } else { 0x0800 },
            netns_cookie: k.netns_cookie,
            ..DropKey::default()
        };
        out.insert(
            key,
            Counter {
                packets: n,
                bytes: 0,
            },
        );
    }
    out
}

/// Labels every kernel key of one snapshot of the maps whose namespace is `ready`. With
/// `expiry`, timeouts come from the [`EXPIRY_REASON`] keys only.
#[allow(clippy::too_many_arguments)]
fn readings(
    interpreter: &NetInterpreter,
    drops: &HashMap<DropKey, Counter>,
    vxlan: &HashMap<VxlanCountKey, VxlanCounters>,
    topology: Option<&TopologySnapshot>,
    labeler: &mut NetnsLabeler<'_>,
    ready: &HashSet<u32>,
    slots: &mut VniSlots,
    expiry: bool,
) -> Readings {
    let mut r = Readings::default();
    // In VNI order, so that which VNIs keep their own series does not depend on hash order.
    let mut keys: Vec<&VxlanCountKey> = vxlan.keys().collect();
    keys.sort_by_key(|k| (k.netns, k.ifindex, k.vni, k.direction));
    for k in keys {
        if !ready.contains(&k.netns) {
            continue;
        }
        let c = vxlan[k];
        let mut labels = VxlanLabels {
            netns: netns_label(k.netns),
            device: device_name(topology, k.netns, k.ifindex),
            vni: k.vni.to_string(),
        };
        let anchor = netns_anchor(k.netns);
        if !slots.own(k.netns, k.ifindex, k.vni) {
            labels.vni = VNI_OTHER.to_string();
            let dev_labels = VxlanLabels {
                vni: String::new(),
                ..labels.clone()
            };
            r.vxlan_folded
                .push((*k, c.packets, dev_labels, anchor.clone()));
        }
        let dir = if k.direction == DIRECTION_TX {
            "tx"
        } else {
            "rx"
        };
        if k.direction == DIRECTION_TX {
            // Present (at 0) for every transmitting VXLAN device, so that "no oversize
            // frames" is a value, not a missing series.
            r.vxlan_oversize
                .push((*k, c.oversize, labels.clone(), anchor.clone()));
        }
        r.vxlan_packets.push((*k, c.packets, (labels, dir), anchor));
    }
    for (k, c) in drops {
        if !ready.contains(&k.netns) {
            continue;
        }
        let (labels, anchor) = labeler.labels(k.netns);
        if k.reason == EXPIRY_REASON {
            r.reasm.push((
                *k,
                c.packets,
                (labels, ReasmCause::Timeout.as_str()),
                anchor,
            ));
            continue;
        }
        let class = interpreter.classify(k.reason, k.location);
        if let Some((cause, _)) = class.reassembly
            && !(expiry && cause == ReasmCause::Timeout)
            && counts_as_failure(cause, class.location.as_deref())
        {
            r.reasm.push((
                *k,
                c.packets,
                (labels.clone(), cause.as_str()),
                anchor.clone(),
            ));
        }
        let on_vxlan = topology.is_some_and(|t| t.vxlan(k.netns, k.ifindex).is_some());
        if class.vxlan || on_vxlan {
            r.vxlan_drops.push((
                *k,
                c.packets,
                (
                    vxlan_labels(topology, k.netns, k.ifindex),
                    class.reason.clone(),
                ),
                netns_anchor(k.netns),
            ));
        }
        r.drops
            .push((*k, c.packets, (labels, class.reason), anchor));
    }
    r
}

/// The counters behind every family.
#[derive(Debug)]
struct State {
    drops: CumulativeCounters<DropKey, DropSeries>,
    reasm: CumulativeCounters<DropKey, ReasmSeries>,
    vxlan_packets: CumulativeCounters<VxlanCountKey, VxlanPacketSeries>,
    vxlan_oversize: CumulativeCounters<VxlanCountKey, VxlanLabels>,
    vxlan_drops: CumulativeCounters<DropKey, VxlanDropSeries>,
    vxlan_folded: CumulativeCounters<VxlanCountKey, VxlanLabels>,
    vni_slots: VniSlots,
    /// Sum of `no_path` over the VXLAN keys of the last reading.
    no_path_total: u64,
    /// When each namespace in the maps was first seen (see [`NAMING_GRACE`]), and whether its
    /// counts are exported. Once they are, they stay: a key left out of a reading would count
    /// in full again when it comes back.
    first_seen: HashMap<u32, (Instant, bool)>,
    /// Which namespace holds each inode, and which ones are gone (see [`NetnsIdentity`]).
    identity: NetnsIdentity,
    /// Namespaces retired by this scrape's reading: their keys go once it is read.
    retired: Vec<Gone>,
    ttl: Duration,
    /// Zero series of `fathom_ip_reassembly_failures_total` for this scrape.
    reasm_zeros: Vec<ReasmSeries>,
}

/// Causes whose series exist at 0 in every known namespace (what the shipped alerts watch).
pub const ZERO_CAUSES: [&str; 2] = ["queue_overflow", "timeout"];

impl State {
    fn new(ttl: Duration) -> Self {
        Self {
            first_seen: HashMap::new(),
            identity: NetnsIdentity::default(),
            retired: Vec::new(),
            ttl,
            reasm_zeros: Vec::new(),
            drops: CumulativeCounters::new(ttl),
            reasm: CumulativeCounters::new(ttl),
            vxlan_packets: CumulativeCounters::new(ttl),
            vxlan_oversize: CumulativeCounters::new(ttl),
            vxlan_drops: CumulativeCounters::new(ttl),
            vxlan_folded: CumulativeCounters::new(ttl),
            vni_slots: VniSlots::default(),
            no_path_total: 0,
        }
    }

    /// Namespace identity across inode reuse (see [`NetnsIdentity`]): when an inode passes to
    /// another namespace, the gone one's series are removed at once (the new one's start from
    /// 0 — Prometheus sees a counter reset, not a gone pod's counts continuing), and keys of
    /// namespaces that held the inode before are left out (and deleted after this scrape).
    fn track_cookies(
        &mut self,
        drops: &HashMap<DropKey, Counter>,
        vxlan: &HashMap<VxlanCountKey, VxlanCounters>,
        listed: &ListedNetns,
        now: Instant,
    ) -> (
        HashMap<DropKey, Counter>,
        HashMap<VxlanCountKey, VxlanCounters>,
    ) {
        let keys = drops
            .keys()
            .map(|k| (k.netns, k.netns_cookie))
            .chain(vxlan.keys().map(|k| (k.netns, k.netns_cookie)));
        let seen = self.identity.observe(keys, listed);
        for ns in seen.reused {
            debug!(netns = ns, "namespace inode reused");
            self.forget_netns(ns, now);
        }
        self.retired = seen.retired;
        let id = &self.identity;
        (
            drops
                .iter()
                .filter(|(k, _)| id.keeps(k.netns, k.netns_cookie))
                .map(|(k, v)| (*k, *v))
                .collect(),
            vxlan
                .iter()
                .filter(|(k, _)| id.keeps(k.netns, k.netns_cookie))
                .map(|(k, v)| (*k, *v))
                .collect(),
        )
    }

    /// Removes every series of namespace inode `ns` now.
    fn forget_netns(&mut self, ns: u32, now: Instant) {
        let label = netns_label(ns);
        let later = now + self.ttl;
        self.drops
            .store_mut()
            .expire_where(later, |(l, _), _| l.netns != label);
        self.reasm
            .store_mut()
            .expire_where(later, |(l, _), _| l.netns != label);
        self.vxlan_drops
            .store_mut()
            .expire_where(later, |(l, _), _| l.netns != label);
        self.vxlan_packets
            .store_mut()
            .expire_where(later, |(l, _), _| l.netns != label);
        self.vxlan_oversize
            .store_mut()
            .expire_where(later, |l, _| l.netns != label);
        self.vxlan_folded
            .store_mut()
            .expire_where(later, |l, _| l.netns != label);
        self.first_seen.remove(&ns);
    }

    /// The namespaces of this snapshot whose counts are exported: labels final, or first
    /// seen at least [`NAMING_GRACE`] ago. Once ready, a namespace stays ready while the maps
    /// hold it.
    fn ready(
        &mut self,
        drops: &HashMap<DropKey, Counter>,
        vxlan: &HashMap<VxlanCountKey, VxlanCounters>,
        listed: &ListedNetns,
        labeler: &mut NetnsLabeler<'_>,
        now: Instant,
    ) -> HashSet<u32> {
        let present: HashSet<u32> = drops
            .keys()
            .map(|k| k.netns)
            .chain(vxlan.keys().map(|k| k.netns))
            .collect();
        self.first_seen.retain(|ns, _| present.contains(ns));
        let identity = &self.identity;
        present
            .into_iter()
            .filter(|&ns| {
                let (first, ready) = self.first_seen.entry(ns).or_insert((now, false));
                *ready = *ready
                    || ns == 0
                    || now.saturating_duration_since(*first) >= NAMING_GRACE
                    || (listed.lists(ns) && (labeler.resolved(ns) || labeler.unowned(ns)))
                    // Gone after being listed: its labels will not get better.
                    || (identity.was_listed(ns) && !listed.lists(ns));
                *ready
            })
            .collect()
    }

    /// Feeds one scrape's readings, then expires series of gone namespaces and series no key
    /// feeds any more. Returns how many series expired.
    fn update(&mut self, r: Readings, now: Instant, alive: &impl Fn(&Anchor) -> bool) -> usize {
        self.drops.observe(r.drops, now);
        self.reasm.observe(r.reasm, now);
        self.vxlan_packets.observe(r.vxlan_packets, now);
        self.vxlan_oversize.observe(r.vxlan_oversize, now);
        self.vxlan_drops.observe(r.vxlan_drops, now);
        self.vxlan_folded.observe(r.vxlan_folded, now);
        self.drops.expire(now, alive)
            + self.vxlan_folded.expire(now, alive)
            + self.reasm.expire(now, alive)
            + self.vxlan_packets.expire(now, alive)
            + self.vxlan_oversize.expire(now, alive)
            + self.vxlan_drops.expire(now, alive)
    }

    /// Namespaces that are gone (listed before, not any more or under another cookie; or
    /// retired by this reading) and still have kernel keys; the caller deletes their keys
    /// after this scrape's reading.
    fn gone_with_keys(
        &mut self,
        drops: &HashMap<DropKey, Counter>,
        vxlan: &HashMap<VxlanCountKey, VxlanCounters>,
        listed: &ListedNetns,
        now: Instant,
    ) -> Vec<Gone> {
        let mut gone = std::mem::take(&mut self.retired);
        if !listed.scanned() {
            return gone;
        }
        gone.extend(self.identity.gone(listed));
        // A namespace that lived less than one topology rescan was never listed: once its
        // counts are exported and it stays unlisted for twice the naming grace, it is gone.
        let short_lived: Vec<u32> = self
            .first_seen
            .iter()
            .filter(|(ns, (first, ready))| {
                *ready
                    && **ns != 0
                    && !listed.lists(**ns)
                    && !self.identity.was_listed(**ns)
                    && now.saturating_duration_since(*first) >= 2 * NAMING_GRACE
            })
            .map(|(ns, _)| *ns)
            .collect();
        for ns in short_lived {
            self.first_seen.remove(&ns);
            gone.push(Gone {
                netns: ns,
                cookie: self.identity.retire_holder(ns),
                inode_free: true,
            });
        }
        let of = |g: &Gone, netns: u32, cookie: u64| {
            netns == g.netns && g.cookie.is_none_or(|c| c == cookie)
        };
        gone.retain(|g| {
            drops.keys().any(|k| of(g, k.netns, k.netns_cookie))
                || vxlan.keys().any(|k| {
                    of(g, k.netns, k.netns_cookie) && (k.netns_cookie != 0 || g.inode_free)
                })
        });
        gone
    }

    fn encode(&mut self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut f = encoder.encode_descriptor(
            "fathom_packet_drops",
            "Packets the kernel dropped (skb:kfree_skb), by network namespace and drop reason (names from the running kernel's enum skb_drop_reason)",
            None,
            MetricType::Counter,
        )?;
        for ((ns, reason), v) in self.drops.store_mut().scrape([]) {
            ConstCounter::new(v).encode(f.encode_family(&ns.with(&[("reason", &reason)]))?)?;
        }
        let mut f = encoder.encode_descriptor(
            "fathom_ip_reassembly_failures",
            "IP datagrams whose reassembly failed, by network namespace and cause (queue_overflow, timeout, too_far, duplicate, other); timeouts count once per expired datagram",
            None,
            MetricType::Counter,
        )?;
        for ((ns, cause), v) in self.reasm.store_mut().scrape(self.reasm_zeros.clone()) {
            ConstCounter::new(v).encode(f.encode_family(&ns.with(&[("cause", cause)]))?)?;
        }
        let mut f = encoder.encode_descriptor(
            "fathom_vxlan_packets",
            "Frames through a VXLAN device (tx: to be encapsulated, rx: decapsulated), by device and VNI",
            None,
            MetricType::Counter,
        )?;
        for ((vx, dir), v) in self.vxlan_packets.store_mut().scrape([]) {
            let [a, b, c] = vx.pairs();
            ConstCounter::new(v).encode(f.encode_family(&[a, b, c, ("direction", dir)])?)?;
        }
        let mut f = encoder.encode_descriptor(
            "fathom_vxlan_oversize_packets",
            "Frames sent through a VXLAN device whose encapsulated packet exceeds the path MTU to the frame's own remote VTEP: they are fragmented (or dropped with DF)",
            None,
            MetricType::Counter,
        )?;
        for (vx, v) in self.vxlan_oversize.store_mut().scrape([]) {
            ConstCounter::new(v).encode(f.encode_family(&vx.pairs())?)?;
        }
        let mut f = encoder.encode_descriptor(
            "fathom_vxlan_vni_folded_packets",
            "Frames of VNIs beyond the per-device cap of VNI series, counted under vni=\"other\" instead of their own VNI",
            None,
            MetricType::Counter,
        )?;
        for (vx, v) in self.vxlan_folded.store().snapshot() {
            ConstCounter::new(v).encode(f.encode_family(&[
                ("netns", vx.netns.as_str()),
                ("device", vx.device.as_str()),
            ])?)?;
        }
        let mut f = encoder.encode_descriptor(
            "fathom_vxlan_drops",
            "Packets dropped on a VXLAN device or with a VXLAN drop reason, by device, VNI and drop reason",
            None,
            MetricType::Counter,
        )?;
        for ((vx, reason), v) in self.vxlan_drops.store_mut().scrape([]) {
            let [a, b, c] = vx.pairs();
            ConstCounter::new(v).encode(f.encode_family(&[a, b, c, ("reason", &reason)])?)?;
        }
        Ok(())
    }
}

/// The labelled counters, fed with snapshots of the maps.
struct NetworkSeries {
    interpreter: Arc<NetInterpreter>,
    owners: Arc<dyn NetnsOwners>,
    workload_labels: bool,
    state: Mutex<State>,
}

impl std::fmt::Debug for NetworkSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkSeries")
            .field("workload_labels", &self.workload_labels)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl NetworkSeries {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds one snapshot of the maps into the counters; returns the gone namespaces whose
    /// kernel keys are to be deleted now that their counts are read.
    fn update(
        &self,
        drops: &HashMap<DropKey, Counter>,
        vxlan: &HashMap<VxlanCountKey, VxlanCounters>,
        topology: Option<&TopologySnapshot>,
        expiry: bool,
        now: Instant,
    ) -> Vec<Gone> {
        let mut labeler = NetnsLabeler::new(&*self.owners, topology, self.workload_labels);
        let listed = ListedNetns::new(topology);
        let mut state = self.lock();
        let (all_drops, all_vxlan) = (drops, vxlan);
        let (drops, vxlan) = state.track_cookies(all_drops, all_vxlan, &listed, now);
        let (drops, vxlan) = (&drops, &vxlan);
        let ready = state.ready(drops, vxlan, &listed, &mut labeler, now);
        state
            .vni_slots
            .retain(&vxlan.keys().map(|k| (k.netns, k.ifindex)).collect());
        let mut slots = std::mem::take(&mut state.vni_slots);
        let r = readings(
            &self.interpreter,
            drops,
            vxlan,
            topology,
            &mut labeler,
            &ready,
            &mut slots,
            expiry,
        );
        state.vni_slots = slots;
        state.no_path_total = vxlan.values().map(|c| c.no_path).sum();
        let expired = state.update(r, now, &|a: &Anchor| listed.alive(a));
        if expired > 0 {
            debug!(expired, "network series of gone namespaces expired");
        }
        let mut zeros = Vec::new();
        let mut seen = HashSet::new();
        for ns in listed.listed() {
            let (labels, _) = labeler.labels(ns);
            for cause in ZERO_CAUSES {
                let z = (labels.clone(), cause);
                if seen.insert(z.clone()) {
                    zeros.push(z);
                }
            }
        }
        state.reasm_zeros = zeros;
        state.gone_with_keys(all_drops, all_vxlan, &listed, now)
    }
}

/// The network counter families (see the module docs).
pub struct NetworkCounters {
    kernel: Kernel,
    topology: Option<Arc<Topology>>,
    series: NetworkSeries,
}

impl std::fmt::Debug for NetworkCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkCounters")
            .field("kernel", &self.kernel)
            .field("series", &self.series)
            .finish_non_exhaustive()
    }
}

impl NetworkCounters {
    /// `workload_labels = false` leaves namespace/pod/netns empty (very large nodes).
    pub fn new(
        kernel: Kernel,
        interpreter: Arc<NetInterpreter>,
        topology: Option<Arc<Topology>>,
        owners: Arc<dyn NetnsOwners>,
        ttl: Duration,
        workload_labels: bool,
    ) -> Self {
        Self {
            kernel,
            topology,
            series: NetworkSeries {
                interpreter,
                owners,
                workload_labels,
                state: Mutex::new(State::new(ttl)),
            },
        }
    }
}

impl Collector for NetworkCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Both maps under one lock of the object: one consistent-enough snapshot per scrape.
        let expiry = self.kernel.attached().contains(&"reasm_expire");
        let maps = self.kernel.with_ebpf(|ebpf| {
            let drops = net_counters::drops(ebpf)?;
            let drops = if expiry {
                with_expiries(drops, &net_counters::expired(ebpf)?)
            } else {
                drops
            };
            Ok::<_, net_counters::CountersError>((
                drops,
                if ebpf.map("VXLAN_COUNTS").is_some() {
                    net_counters::vxlan_counts(ebpf)?
                } else {
                    HashMap::new()
                },
            ))
        });
        match maps {
            Ok((drops, vxlan)) => {
                let topology = self.topology.as_ref().map(|t| t.snapshot());
                let gone =
                    self.series
                        .update(&drops, &vxlan, topology.as_deref(), expiry, Instant::now());
                // Read, then deleted: a gone namespace's last counts are in the series now,
                // and a new namespace reusing the inode starts from zero in the kernel.
                for g in gone {
                    match self.kernel.with_ebpf_mut(|ebpf| {
                        net_counters::forget_netns(ebpf, g.netns, g.cookie, g.inode_free)
                    }) {
                        Ok(n) => debug!(
                            netns = g.netns,
                            cookie = g.cookie,
                            keys = n,
                            "gone namespace's keys deleted"
                        ),
                        Err(e) => warn!(
                            netns = g.netns,
                            error = %e,
                            "cannot delete a gone namespace's keys"
                        ),
                    }
                }
            }
            // The last values stay exported: better than counters that vanish for a scrape.
            Err(e) => warn!(error = %e, "cannot read the network counters"),
        }
        self.series.lock().encode(&mut encoder)?;
        // What the VXLAN tc programs could not count per device and VNI, or not judge.
        let stats = self.kernel.with_ebpf(|ebpf| {
            ebpf.map("VXLAN_STATS")
                .is_some()
                .then(|| net_counters::vxlan_stats(ebpf).ok())
                .flatten()
        });
        let no_path: u64 = self.series.lock().no_path_total;
        if let Some(st) = stats {
            let mut f = encoder.encode_descriptor(
                "fathom_vxlan_uncounted_packets",
                "VXLAN frames the tc programs could not fully count: map_full (no room for a new device/VNI key: missing from fathom_vxlan_packets_total), unknown_device (device not yet in the map), no_tunnel_key (external device, no tunnel key: counted under the device's VNI), no_device (device unreadable), no_path (remote's path MTU unknown: not judged for oversize)",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("map_full", st.counts_map_full),
                ("unknown_device", st.unknown_device),
                ("no_tunnel_key", st.no_tunnel_key),
                ("no_device", st.no_device),
                ("no_path", no_path),
            ] {
                ConstCounter::new(n).encode(f.encode_family(&[("reason", reason)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use probe_common::DIRECTION_RX;

    use super::*;
    use crate::{
        clock::BootClock,
        drop_reason::DropReasons,
        kallsyms::Kallsyms,
        metrics::netns_labels::tests::{FixedOwners, pod, topology},
        net::{Link, UnderlayFamily, VxlanDevice},
    };

    const POD_NS: u32 = 4026532100;
    const HOST: u32 = 4026531840;
    const TTL: Duration = Duration::from_secs(10);

    fn interpreter() -> Arc<NetInterpreter> {
        let reasons = DropReasons::from_pairs(vec![
            ("SKB_DROP_REASON_NOT_SPECIFIED".into(), 2),
            ("SKB_DROP_REASON_NO_SOCKET".into(), 3),
            ("SKB_DROP_REASON_FRAG_REASM_TIMEOUT".into(), 40),
            ("SKB_DROP_REASON_VXLAN_INVALID_HDR".into(), 80),
        ]);
        let syms: Kallsyms = "ffffffff81000000 T ip_defrag\nffffffff81000800 T ip_expire\nffffffff81000a00 T inet_frag_rbtree_purge\nffffffff81001000 T udp_rcv\nffffffff81002000 T _etext\n"
            .parse()
            .unwrap();
        Arc::new(NetInterpreter::new(reasons, Some(syms), BootClock::new()))
    }

    fn key(netns: u32, ifindex: u32, reason: u32, location: u64) -> DropKey {
        DropKey {
            netns,
            ifindex,
            reason,
            l3_proto: 0x0800,
            l4_proto: 17,
            _pad: 0,
            location,
            netns_cookie: 0,
        }
    }

    fn packets(n: u64) -> Counter {
        Counter {
            packets: n,
            bytes: n * 100,
        }
    }

    /// The host with eth0 (2) and a VXLAN device vx0 (5, VNI 42), and a pod namespace.
    fn topo() -> TopologySnapshot {
        let mut t = topology(HOST, &[POD_NS]);
        let link = |ifindex, name: &str| Link {
            ifindex,
            name: name.into(),
            mtu: 1500,
            kind: None,
            up: true,
            parent_ifindex: None,
            link_netnsid: None,
            vxlan: None,
        };
        t.links.insert(HOST, vec![link(2, "eth0"), link(5, "vx0")]);
        t.links.insert(POD_NS, vec![link(3, "eth0")]);
        t.vxlans.push(VxlanDevice {
            netns: HOST,
            device: "vx0".into(),
            ifindex: 5,
            vni: 42,
            mtu: 1500,
            up: true,
            dst_port: 4789,
            family: UnderlayFamily::Ipv4,
            overhead: 50,
            remote: None,
            local: None,
            external: false,
            underlay: None,
            remotes: Vec::new(),
        });
        t
    }

    /// The series without a loaded kernel object, and encoding them.
    #[derive(Debug)]
    struct Series(Arc<NetworkSeries>);

    impl Collector for Series {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.lock().encode(&mut e)
        }
    }

    impl Series {
        fn update(
            &self,
            drops: &HashMap<DropKey, Counter>,
            vxlan: &HashMap<VxlanCountKey, VxlanCounters>,
            t: Option<&TopologySnapshot>,
            now: Instant,
        ) {
            self.0.update(drops, vxlan, t, false, now);
        }

        /// What a scraper sees from its second scrape on (a new series is scraped at 0 once
        /// first: see `store`).
        fn text(&self) -> String {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(Series(self.0.clone())));
            let mut out = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
            out.clear();
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
            out
        }
    }

    #[test]
    fn listed_namespaces_have_zero_reassembly_series_and_gone_ones_are_read_before_forgotten() {
        let mut owners = FixedOwners::default();
        owners
            .pods
            .insert(POD_NS, pod("uid", Some("web-0"), Some("shop")));
        let (c, _) = counters(owners, true);
        let t0 = Instant::now();
        let topo = topo();
        c.update(&HashMap::new(), &HashMap::new(), Some(&topo), t0);
        let text = c.text();
        for cause in ZERO_CAUSES {
            let line = format!(
                "fathom_ip_reassembly_failures_total{{namespace=\"shop\",pod=\"web-0\",netns=\"{POD_NS}\",cause=\"{cause}\"}} 0\n"
            );
            assert!(text.contains(&line), "{line}{text}");
        }
        // The namespace goes with 9 overflow drops in the map: they are read, then deleted.
        let drops = HashMap::from([(key(POD_NS, 3, 2, 0xffff_ffff_8100_0100), packets(9))]);
        let mut gone = topology(HOST, &[]);
        gone.generation = topo.generation + 1;
        let forget = c.0.update(&drops, &HashMap::new(), Some(&gone), false, t0);
        assert_eq!(
            forget,
            vec![Gone {
                netns: POD_NS,
                cookie: None,
                inode_free: true
            }]
        );
        let text = c.text();
        assert!(
            text.contains(&format!(
                "fathom_ip_reassembly_failures_total{{namespace=\"shop\",pod=\"web-0\",netns=\"{POD_NS}\",cause=\"queue_overflow\"}} 9\n"
            )),
            "{text}"
        );
        // No zero series for a namespace no longer listed.
        assert!(
            !text.contains(&format!("netns=\"{POD_NS}\",cause=\"timeout\"")),
            "{text}"
        );
    }

    fn counters(owners: FixedOwners, workload_labels: bool) -> (Series, Arc<FixedOwners>) {
        let owners = Arc::new(owners);
        let series = NetworkSeries {
            interpreter: interpreter(),
            owners: owners.clone(),
            workload_labels,
            state: Mutex::new(State::new(TTL)),
        };
        (Series(Arc::new(series)), owners)
    }

    #[test]
    fn drops_and_failures_are_summed_per_namespace_reason_and_cause() {
        let mut owners = FixedOwners::default();
        owners
            .pods
            .insert(POD_NS, pod("uid", Some("web-0"), Some("shop")));
        let (c, _) = counters(owners, true);
        let t = topo();
        let mut drops = HashMap::new();
        // Queue overflow on two devices: one series.
        drops.insert(key(POD_NS, 3, 2, 0xffff_ffff_8100_0100), packets(5));
        drops.insert(key(POD_NS, 0, 2, 0xffff_ffff_8100_0104), packets(2));
        // A timed-out datagram: its head freed in ip_expire counts, its other fragments
        // (purged with the same reason) do not.
        drops.insert(key(POD_NS, 3, 40, 0xffff_ffff_8100_0810), packets(1));
        drops.insert(key(POD_NS, 3, 40, 0xffff_ffff_8100_0a10), packets(3));
        drops.insert(key(HOST, 2, 3, 0xffff_ffff_8100_1004), packets(4));
        c.update(&drops, &HashMap::new(), Some(&t), Instant::now());
        let text = c.text();
        let has = |line: &str| assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        has(
            r#"fathom_packet_drops_total{namespace="shop",pod="web-0",netns="4026532100",reason="NOT_SPECIFIED"} 7"#,
        );
        has(
            r#"fathom_packet_drops_total{namespace="shop",pod="web-0",netns="4026532100",reason="FRAG_REASM_TIMEOUT"} 4"#,
        );
        has(
            r#"fathom_packet_drops_total{namespace="",pod="",netns="4026531840",reason="NO_SOCKET"} 4"#,
        );
        has(
            r#"fathom_ip_reassembly_failures_total{namespace="shop",pod="web-0",netns="4026532100",cause="queue_overflow"} 7"#,
        );
        has(
            r#"fathom_ip_reassembly_failures_total{namespace="shop",pod="web-0",netns="4026532100",cause="timeout"} 1"#,
        );
        // The pod's two series; the host's are its zero series.
        assert_eq!(
            text.matches("fathom_ip_reassembly_failures_total{namespace=\"shop\"")
                .count(),
            2
        );
    }

    #[test]
    fn vxlan_traffic_is_named_by_the_topology() {
        let (c, _) = counters(FixedOwners::default(), true);
        let t = topo();
        let mut vx = HashMap::new();
        vx.insert(
            vx_key(HOST, 5, 42, DIRECTION_TX),
            VxlanCounters {
                packets: 10,
                oversize: 4,
                ..Default::default()
            },
        );
        vx.insert(
            vx_key(HOST, 5, 42, DIRECTION_RX),
            VxlanCounters {
                packets: 8,
                ..Default::default()
            },
        );
        let mut drops = HashMap::new();
        drops.insert(key(HOST, 5, 80, 0xffff_ffff_8100_1004), packets(2));
        // The pod namespace has no owner: its counts wait for the grace period.
        let t0 = Instant::now();
        c.update(&drops, &vx, Some(&t), t0);
        c.update(&drops, &vx, Some(&t), t0 + NAMING_GRACE);
        let text = c.text();
        let has = |line: &str| assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        assert!(!text.contains("fathom_ip_fragments"), "{text}");
        has(
            r#"fathom_vxlan_packets_total{netns="4026531840",device="vx0",vni="42",direction="tx"} 10"#,
        );
        has(
            r#"fathom_vxlan_packets_total{netns="4026531840",device="vx0",vni="42",direction="rx"} 8"#,
        );
        has(r#"fathom_vxlan_oversize_packets_total{netns="4026531840",device="vx0",vni="42"} 4"#);
        assert_eq!(
            text.matches("fathom_vxlan_oversize_packets_total{").count(),
            1,
            "tx only"
        );
        has(
            r#"fathom_vxlan_drops_total{netns="4026531840",device="vx0",vni="42",reason="VXLAN_INVALID_HDR"} 2"#,
        );
        assert!(
            text.lines()
                .filter(|l| l.starts_with("fathom_ip_reassembly_failures_total{"))
                .all(|l| l.ends_with(" 0")),
            "only zero series: {text}"
        );
    }

    #[test]
    fn a_new_namespace_is_exported_once_listed_with_everything_counted_so_far() {
        const NEW: u32 = 4026532200;
        let mut owners = FixedOwners::default();
        owners
            .pods
            .insert(POD_NS, pod("uid", Some("web-0"), Some("shop")));
        let (c, _) = counters(owners, true);
        let t0 = Instant::now();
        let rx = |n| {
            let mut drops = HashMap::new();
            drops.insert(key(POD_NS, 3, 3, 0xffff_ffff_8100_1004), packets(1));
            drops.insert(key(NEW, 2, 3, 0xffff_ffff_8100_1004), packets(n));
            drops
        };
        // Not listed yet: the named pod's namespace is exported at once, the new one waits.
        c.update(&rx(3), &HashMap::new(), Some(&topo()), t0);
        let text = c.text();
        assert!(text.contains(r#"pod="web-0""#), "{text}");
        assert!(!text.contains(r#"netns="4026532200""#), "{text}");
        // Listed, devices named, but no owner (yet): still waiting within the grace period.
        let mut t = topo();
        t.netns.push(topology(HOST, &[NEW]).netns[1].clone());
        t.links.insert(
            NEW,
            vec![Link {
                ifindex: 2,
                name: "eth0".into(),
                mtu: 1500,
                kind: None,
                up: true,
                parent_ifindex: None,
                link_netnsid: None,
                vxlan: None,
            }],
        );
        // Listed, devices named, no owner: its labels will not get better by waiting, so
        // everything is exported at once.
        c.update(&rx(5), &HashMap::new(), Some(&t), t0 + NAMING_GRACE / 2);
        let text = c.text();
        assert!(
            text.contains(
                "fathom_packet_drops_total{namespace=\"\",pod=\"\",netns=\"4026532200\",reason=\"NO_SOCKET\"} 5\n"
            ),
            "everything counted so far: {text}"
        );
    }

    #[test]
    fn timeouts_are_the_expiry_counts_while_the_expiry_program_runs() {
        let mut owners = FixedOwners::default();
        owners
            .pods
            .insert(POD_NS, pod("uid", Some("web-0"), Some("shop")));
        let (c, _) = counters(owners, true);
        let mut drops = HashMap::new();
        // Timed-out fragments' drops (head and purged rest) are no failures then...
        drops.insert(key(POD_NS, 0, 40, 0xffff_ffff_8100_0810), packets(3));
        drops.insert(key(POD_NS, 0, 40, 0xffff_ffff_8100_0a10), packets(5));
        // ... the expired queues are (two, one of them without its first fragment).
        let expired = HashMap::from([(
            ExpireKey {
                netns: POD_NS,
                family: 4,
                netns_cookie: 77,
            },
            2u64,
        )]);
        let drops = with_expiries(drops, &expired);
        c.0.update(&drops, &HashMap::new(), Some(&topo()), true, Instant::now());
        let text = c.text();
        assert!(
            text.contains(
                "fathom_ip_reassembly_failures_total{namespace=\"shop\",pod=\"web-0\",netns=\"4026532100\",cause=\"timeout\"} 2\n"
            ),
            "{text}"
        );
        // The expiries are not drops.
        assert!(
            text.contains(
                "fathom_packet_drops_total{namespace=\"shop\",pod=\"web-0\",netns=\"4026532100\",reason=\"FRAG_REASM_TIMEOUT\"} 8\n"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("fathom_packet_drops_total{").count(),
            1,
            "{text}"
        );
    }

    /// A new namespace with a reused inode never adds to the gone one's counts, whichever
    /// cookie is larger: cookies are unique, not ordered (per-CPU batches), and on a real
    /// Swarm the first rule ("the newer namespace has the larger cookie") left a task
    /// container's 300 overflows out.
    #[test]
    fn a_new_namespace_with_a_reused_inode_never_adds_to_the_gone_ones_counts() {
        for (old, new) in [(10, 11), (4171, 88)] {
            reused_inode(old, new);
        }
    }

    fn reused_inode(old: u64, new: u64) {
        let mut owners = FixedOwners::default();
        owners.pods.insert(POD_NS, pod("uid", Some("web-0"), None));
        let (c, _) = counters(owners, true);
        let t0 = Instant::now();
        let k = |cookie| DropKey {
            netns_cookie: cookie,
            ..key(POD_NS, 3, 3, 0xffff_ffff_8100_1004)
        };
        let line = |n: u64| {
            format!(
                "fathom_packet_drops_total{{namespace=\"\",pod=\"web-0\",netns=\"4026532100\",reason=\"NO_SOCKET\"}} {n}\n"
            )
        };
        let reading = |drops: &[(u64, u64)], secs: u64| {
            let drops: HashMap<_, _> = drops.iter().map(|&(c, n)| (k(c), packets(n))).collect();
            c.0.update(
                &drops,
                &HashMap::new(),
                Some(&topo()),
                false,
                t0 + Duration::from_secs(secs),
            )
        };
        reading(&[(old, 5)], 0);
        assert!(c.text().contains(&line(5)), "{}", c.text());
        // The namespace is gone, a new one got its inode and dropped 2 packets; the gone
        // one's key is still in the map and grew once more.
        let forget = reading(&[(old, 6), (new, 2)], 1);
        let text = c.text();
        assert!(
            text.contains(&line(2)),
            "only the new namespace's ({old} → {new}): {text}"
        );
        // The old namespace's key is deleted after this reading, by its cookie only.
        assert_eq!(
            forget,
            vec![Gone {
                netns: POD_NS,
                cookie: Some(old),
                inode_free: false
            }]
        );
        // Later readings keep them apart.
        reading(&[(old, 9), (new, 3)], 2);
        assert!(c.text().contains(&line(3)), "{}", c.text());
    }

    #[test]
    fn a_namespace_once_exported_is_never_counted_twice() {
        let mut owners = FixedOwners::default();
        owners.pods.insert(POD_NS, pod("uid", Some("web-0"), None));
        let (c, _) = counters(owners, true);
        let t0 = Instant::now();
        let drops = |n| HashMap::from([(key(POD_NS, 3, 3, 0xffff_ffff_8100_1004), packets(n))]);
        c.update(&drops(5), &HashMap::new(), Some(&topo()), t0);
        // Briefly not listed (gone, or a rescan in between): its counts stay exported...
        let unlisted = topology(HOST, &[]);
        c.update(
            &drops(6),
            &HashMap::new(),
            Some(&unlisted),
            t0 + NAMING_GRACE / 2,
        );
        // ... so they are never taken for new ones.
        c.update(
            &drops(6),
            &HashMap::new(),
            Some(&unlisted),
            t0 + NAMING_GRACE,
        );
        c.update(&drops(7), &HashMap::new(), Some(&topo()), t0 + NAMING_GRACE);
        let text = c.text();
        assert!(
            text.contains(
                "fathom_packet_drops_total{namespace=\"\",pod=\"web-0\",netns=\"4026532100\",reason=\"NO_SOCKET\"} 7\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn series_of_a_gone_namespace_expire_after_the_ttl_and_live_ones_stay_monotonic() {
        let mut owners = FixedOwners::default();
        owners.pods.insert(POD_NS, pod("uid", Some("web-0"), None));
        let (c, _) = counters(owners, true);
        let t0 = Instant::now();
        let mut drops = HashMap::new();
        drops.insert(key(POD_NS, 3, 3, 0xffff_ffff_8100_1004), packets(5));
        drops.insert(key(HOST, 2, 3, 0xffff_ffff_8100_1004), packets(1));
        c.update(&drops, &HashMap::new(), Some(&topo()), t0);
        // The pod's namespace is gone; its kernel entry stays.
        let gone = topology(HOST, &[]);
        drops.insert(key(HOST, 2, 3, 0xffff_ffff_8100_1004), packets(3));
        c.update(&drops, &HashMap::new(), Some(&gone), t0 + TTL / 2);
        assert!(
            c.text().contains(r#"netns="4026532100""#),
            "not before the TTL"
        );
        c.update(&drops, &HashMap::new(), Some(&gone), t0 + TTL);
        c.update(&drops, &HashMap::new(), Some(&gone), t0 + TTL * 2);
        let text = c.text();
        assert!(!text.contains(r#"netns="4026532100""#), "{text}");
        assert!(
            text.contains(
                "fathom_packet_drops_total{namespace=\"\",pod=\"\",netns=\"4026531840\",reason=\"NO_SOCKET\"} 3\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn without_workload_labels_namespaces_share_series_but_vxlan_devices_keep_theirs() {
        let mut owners = FixedOwners::default();
        owners.pods.insert(POD_NS, pod("uid", Some("web-0"), None));
        let (c, owners) = counters(owners, false);
        let mut drops = HashMap::new();
        drops.insert(key(POD_NS, 3, 3, 0xffff_ffff_8100_1004), packets(5));
        drops.insert(key(HOST, 2, 3, 0xffff_ffff_8100_1004), packets(1));
        let mut vx = HashMap::new();
        vx.insert(
            vx_key(HOST, 5, 42, DIRECTION_TX),
            VxlanCounters {
                packets: 1,
                ..Default::default()
            },
        );
        c.update(&drops, &vx, Some(&topo()), Instant::now());
        let text = c.text();
        assert!(
            text.contains(
                "fathom_packet_drops_total{namespace=\"\",pod=\"\",netns=\"\",reason=\"NO_SOCKET\"} 6\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"fathom_vxlan_packets_total{netns="4026531840",device="vx0""#),
            "{text}"
        );
        assert!(owners.asked.lock().unwrap().is_empty());
    }

    fn vx_key(netns: u32, ifindex: u32, vni: u32, direction: u32) -> VxlanCountKey {
        VxlanCountKey {
            netns,
            ifindex,
            vni,
            direction,
            netns_cookie: 0,
        }
    }

    #[test]
    fn vnis_beyond_the_cap_fold_into_one_series_and_are_counted() {
        let (c, _) = counters(FixedOwners::default(), true);
        let mut vx = HashMap::new();
        for vni in 0..(VNI_CAP as u32 + 3) {
            vx.insert(
                vx_key(HOST, 5, 1000 + vni, DIRECTION_TX),
                VxlanCounters {
                    packets: 2,
                    oversize: 1,
                    ..Default::default()
                },
            );
        }
        c.update(&HashMap::new(), &vx, Some(&topo()), Instant::now());
        let text = c.text();
        let per_vni = text
            .lines()
            .filter(|l| l.starts_with("fathom_vxlan_packets_total{"))
            .count();
        assert_eq!(per_vni, VNI_CAP + 1, "{text}");
        // The lowest VNIs keep their series; the three highest share "other".
        assert!(text.contains(r#"fathom_vxlan_packets_total{netns="4026531840",device="vx0",vni="1000",direction="tx"} 2"#), "{text}");
        assert!(text.contains(r#"fathom_vxlan_packets_total{netns="4026531840",device="vx0",vni="other",direction="tx"} 6"#), "{text}");
        assert!(text.contains(r#"fathom_vxlan_oversize_packets_total{netns="4026531840",device="vx0",vni="other"} 3"#), "{text}");
        assert!(
            text.contains(
                r#"fathom_vxlan_vni_folded_packets_total{netns="4026531840",device="vx0"} 6"#
            ),
            "{text}"
        );
    }
}
