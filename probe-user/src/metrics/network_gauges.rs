//! Network gauges from the topology service rather than the kernel maps:
//! - `fathom_ip_fragment_queue_bytes{namespace,pod,netns,family}` and
//!   `fathom_ip_fragment_queue_limit_bytes{namespace,pod,netns,family}`: memory held by a
//!   namespace's IP fragment queues (sockstat `FRAG:` / `FRAG6:` `memory`) against its
//!   `ipfrag_high_thresh` / `ip6frag_high_thresh`, above which every new fragment is dropped
//!   (`cause="queue_overflow"`). `family` is `ipv4` or `ipv6` (absent when IPv6 is off).
//! - `fathom_ip_fragments_total{namespace,pod,netns,direction}` (a counter): the namespace's
//!   own SNMP counters read in the same visit, IPv4 + IPv6 — `tx` = `FragCreates`, `rx` =
//!   `ReasmReqds` — as the kernel counts them since the namespace was created. No BPF
//!   program runs per packet for them, and fragments a namespace's bridge forwards or floods
//!   are not its own. `netns` is kept without workload labels (a sum over namespaces would
//!   go backwards when one goes); namespaces that never fragmented have no series.
//! - `fathom_interface_mtu_bytes{netns,device}` of every VXLAN device and of its underlay;
//! - `fathom_overlay_mtu_mismatch{netns,device,vni,underlay}`: 1 while the VXLAN device's MTU
//!   exceeds the path MTU to one of its remotes through that underlay minus the encapsulation
//!   overhead, else 0 — one series per underlay device the device's remotes are reached
//!   through (devices whose underlay is unknown are not judged and have no series);
//! - `fathom_overlay_mtu_mismatch_remotes{netns,device,vni,underlay}`: how many remote VTEPs
//!   through that underlay the device's MTU does not fit (their addresses are in the
//!   `mtu_mismatch` event and log line);
//! - `fathom_overlay_path_mtu_bytes{netns,device,underlay}`: the smallest path MTU (route
//!   `mtu`, cached PMTU exception or device MTU) to the device's remotes through that underlay.
//!
//! Gauges are encoded from the current state, so a gone namespace's or device's series simply
//! stops. Fragment memory has to be read inside each namespace (a `setns` worker thread),
//! which a synchronous collector cannot wait for: [`NetworkGauges::refresh`] reads it before
//! each scrape (async, bounded by [`FRAGMEM_TIMEOUT`], shared through the topology's 1 s cache)
//! and the collector encodes the latest reading.
//!
//! Without workload labels the fragment-queue gauges are node totals (sums over namespaces,
//! empty `namespace`/`pod`/`netns`); the MTU gauges keep `netns` (device names repeat across
//! namespaces, and VXLAN devices are few).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};
use tracing::warn;

use super::netns_labels::{
    ListedNetns, NetnsLabeler, NetnsLabels, NetnsOwners, netns_anchor, netns_label,
};
use crate::net::{Topology, TopologySnapshot, topology::FragMemMap};

/// Longest a scrape waits for the fragment-memory sweep before using the previous reading.
pub const FRAGMEM_TIMEOUT: Duration = Duration::from_secs(2);

/// Per namespace and family: (bytes in use, high threshold).
type QueueSeries = BTreeMap<(NetnsLabels, &'static str), (u64, u64)>;

/// Fragment-queue memory per namespace and family, summed where labels coincide (only without
/// workload labels). Namespaces the topology no longer lists are left out.
fn queue_series(
    fragmem: &FragMemMap,
    topology: Option<&TopologySnapshot>,
    labeler: &mut NetnsLabeler<'_>,
) -> QueueSeries {
    let mut out = QueueSeries::new();
    let listed = ListedNetns::new(topology);
    for (&netns, mem) in fragmem.iter() {
        if !listed.alive(&netns_anchor(netns)) {
            continue;
        }
        let (labels, _) = labeler.labels(netns);
        let families = std::iter::once(("ipv4", mem.ipv4)).chain(mem.ipv6.map(|m| ("ipv6", m)));
        for (family, q) in families {
            let e = out.entry((labels.clone(), family)).or_default();
            e.0 += q.memory_bytes;
            e.1 += q.high_thresh;
        }
    }
    out
}

/// `fathom_ip_fragments_total` values: per namespace and direction, non-zero only.
fn fragment_series(
    fragmem: &FragMemMap,
    topology: Option<&TopologySnapshot>,
    labeler: &mut NetnsLabeler<'_>,
) -> BTreeMap<(NetnsLabels, &'static str), u64> {
    let mut out = BTreeMap::new();
    let listed = ListedNetns::new(topology);
    for (&netns, mem) in fragmem.iter() {
        let Some(c) = mem.counters else { continue };
        if !listed.alive(&netns_anchor(netns)) {
            continue;
        }
        let (mut labels, _) = labeler.labels(netns);
        labels.netns = netns_label(netns);
        let t = c.totals();
        for (dir, v) in [("tx", t.tx_fragments), ("rx", t.rx_fragments)] {
            if v > 0 {
                out.insert((labels.clone(), dir), v);
            }
        }
    }
    out
}

/// MTU of every VXLAN device and of every underlay, by (netns, device).
fn interface_mtus(t: &TopologySnapshot) -> BTreeMap<(u32, String), u32> {
    let mut out = BTreeMap::new();
    for v in &t.vxlans {
        out.insert((v.netns, v.device.clone()), v.mtu);
        if let Some(u) = &v.underlay {
            out.insert((u.netns, u.name.clone()), u.mtu);
        }
        for u in v.remotes.iter().filter_map(|r| r.underlay.as_ref()) {
            out.insert((u.netns, u.name.clone()), u.mtu);
        }
    }
    out
}

/// Per underlay device of a VXLAN device: (smallest path MTU, remotes the MTU does not fit,
/// mismatched). Underlays come from the remotes' routes, else the device-level underlay.
fn per_underlay(v: &crate::net::VxlanDevice) -> BTreeMap<String, (Option<u32>, u32, bool)> {
    let mut out: BTreeMap<String, (Option<u32>, u32, bool)> = BTreeMap::new();
    for r in &v.remotes {
        let (Some(u), Some(p)) = (&r.underlay, r.path_mtu) else {
            continue;
        };
        let e = out.entry(u.name.clone()).or_insert((None, 0, false));
        e.0 = Some(e.0.map_or(p, |x: u32| x.min(p)));
    }
    if out.is_empty()
        && let Some(u) = &v.underlay
    {
        out.insert(u.name.clone(), (Some(u.mtu), 0, false));
    }
    for m in v.mismatches() {
        let e = out.entry(m.underlay.clone()).or_insert((None, 0, false));
        e.1 = m.remotes_total;
        e.2 = true;
    }
    out
}

/// The topology-derived gauges (see the module docs).
pub struct NetworkGauges {
    topology: Option<Arc<Topology>>,
    owners: Arc<dyn NetnsOwners>,
    workload_labels: bool,
    fragmem: Mutex<Option<FragMemMap>>,
}

impl std::fmt::Debug for NetworkGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkGauges")
            .field("workload_labels", &self.workload_labels)
            .finish_non_exhaustive()
    }
}

impl NetworkGauges {
    pub fn new(
        topology: Option<Arc<Topology>>,
        owners: Arc<dyn NetnsOwners>,
        workload_labels: bool,
    ) -> Self {
        Self {
            topology,
            owners,
            workload_labels,
            fragmem: Mutex::new(None),
        }
    }

    /// Reads every namespace's fragment-queue memory (at most [`FRAGMEM_TIMEOUT`]); on failure
    /// the previous reading stays.
    pub async fn refresh(&self) {
        let Some(t) = &self.topology else { return };
        match tokio::time::timeout(FRAGMEM_TIMEOUT, t.fragmem()).await {
            Ok(Ok(m)) => *self.lock() = Some(m),
            Ok(Err(e)) => warn!(error = %e, "cannot read fragment-queue memory"),
            Err(_) => warn!(
                timeout = ?FRAGMEM_TIMEOUT,
                "reading fragment-queue memory timed out; exporting the previous reading"
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FragMemMap>> {
        self.fragmem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn encode_with(
        &self,
        encoder: &mut DescriptorEncoder,
        topology: Option<&TopologySnapshot>,
        fragmem: Option<&FragMemMap>,
    ) -> Result<(), std::fmt::Error> {
        let mut labeler = NetnsLabeler::new(&*self.owners, topology, self.workload_labels);
        let queues = fragmem
            .map(|f| queue_series(f, topology, &mut labeler))
            .unwrap_or_default();
        for (name, help, pick) in [
            (
                "fathom_ip_fragment_queue",
                "Memory held by the network namespace's IP fragment reassembly queues (sockstat FRAG / FRAG6 memory)",
                (|v: &(u64, u64)| v.0) as fn(&(u64, u64)) -> u64,
            ),
            (
                "fathom_ip_fragment_queue_limit",
                "ipfrag_high_thresh (ip6frag_high_thresh) of the network namespace: above it every new fragment is dropped (reassembly failure cause queue_overflow)",
                |v: &(u64, u64)| v.1,
            ),
        ] {
            let mut f =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), MetricType::Gauge)?;
            for ((ns, family), v) in &queues {
                ConstGauge::new(pick(v))
                    .encode(f.encode_family(&ns.with(&[("family", *family)]))?)?;
            }
        }

        let fragments = fragmem
            .map(|f| fragment_series(f, topology, &mut labeler))
            .unwrap_or_default();
        let mut f = encoder.encode_descriptor(
            "fathom_ip_fragments",
            "IPv4/IPv6 fragments the network namespace's IP layer made (tx: FragCreates) and queued for reassembly (rx: ReasmReqds), the kernel's own counters",
            None,
            MetricType::Counter,
        )?;
        for ((ns, dir), v) in &fragments {
            let [a, b, c] = ns.pairs();
            ConstCounter::new(*v).encode(f.encode_family(&[a, b, c, ("direction", *dir)])?)?;
        }

        let mut f = encoder.encode_descriptor(
            "fathom_interface_mtu",
            "MTU of VXLAN devices and of the underlay devices they encapsulate onto",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        if let Some(t) = topology {
            for ((netns, device), mtu) in interface_mtus(t) {
                ConstGauge::new(mtu).encode(f.encode_family(&[
                    ("netns", netns_label(netns).as_str()),
                    ("device", device.as_str()),
                ])?)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "fathom_overlay_mtu_mismatch",
            "1 while the VXLAN device's MTU exceeds its underlay's MTU minus the encapsulation overhead (50 bytes over IPv4, 70 over IPv6): full-size packets get fragmented; else 0",
            None,
            MetricType::Gauge,
        )?;
        let judged: Vec<_> = topology
            .map(|t| t.vxlans.iter().map(|v| (v, per_underlay(v))).collect())
            .unwrap_or_default();
        for (v, us) in &judged {
            for (u, (_, _, bad)) in us {
                ConstGauge::new(u32::from(*bad)).encode(f.encode_family(&[
                    ("netns", netns_label(v.netns).as_str()),
                    ("device", v.device.as_str()),
                    ("vni", v.vni.to_string().as_str()),
                    ("underlay", u.as_str()),
                ])?)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "fathom_overlay_mtu_mismatch_remotes",
            "Remote VTEPs reached through this underlay whose path MTU the VXLAN device's MTU plus encapsulation overhead exceeds (addresses in the mtu_mismatch event)",
            None,
            MetricType::Gauge,
        )?;
        for (v, us) in &judged {
            for (u, (_, n, _)) in us {
                ConstGauge::new(*n).encode(f.encode_family(&[
                    ("netns", netns_label(v.netns).as_str()),
                    ("device", v.device.as_str()),
                    ("vni", v.vni.to_string().as_str()),
                    ("underlay", u.as_str()),
                ])?)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "fathom_overlay_path_mtu",
            "Smallest path MTU (route mtu, cached path-MTU exception, or device MTU) from a VXLAN device to its remote VTEPs through this underlay",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (v, us) in &judged {
            for (u, (p, _, _)) in us {
                let Some(p) = p else { continue };
                ConstGauge::new(*p).encode(f.encode_family(&[
                    ("netns", netns_label(v.netns).as_str()),
                    ("device", v.device.as_str()),
                    ("underlay", u.as_str()),
                ])?)?;
            }
        }
        Ok(())
    }
}

impl Collector for NetworkGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topology = self.topology.as_ref().map(|t| t.snapshot());
        let fragmem = self.lock().clone();
        self.encode_with(&mut encoder, topology.as_deref(), fragmem.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::netns_labels::tests::{FixedOwners, pod, topology},
        net::{
            FragMem, FragQueueMem, UnderlayFamily, UnderlaySource, VxlanDevice, topology::Underlay,
        },
    };

    const HOST: u32 = 4026531840;
    const POD_NS: u32 = 4026532100;

    #[derive(Debug)]
    struct WithState(Arc<NetworkGauges>, Arc<TopologySnapshot>, FragMemMap);

    impl Collector for WithState {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode_with(&mut e, Some(&self.1), Some(&self.2))
        }
    }

    fn text(workload_labels: bool) -> String {
        let mut owners = FixedOwners::default();
        owners
            .pods
            .insert(POD_NS, pod("uid", Some("web-0"), Some("shop")));
        let gauges = Arc::new(NetworkGauges::new(None, Arc::new(owners), workload_labels));
        let mut t = topology(HOST, &[POD_NS]);
        let vx = |device: &str, mtu, underlay_mtu: Option<u32>| VxlanDevice {
            netns: HOST,
            device: device.into(),
            ifindex: 5,
            vni: 42,
            mtu,
            up: true,
            dst_port: 4789,
            family: UnderlayFamily::Ipv4,
            overhead: 50,
            remote: None,
            local: None,
            external: false,
            underlay: underlay_mtu.map(|m| Underlay {
                netns: HOST,
                ifindex: 2,
                name: "eth0".into(),
                mtu: m,
                source: UnderlaySource::Link,
            }),
            remotes: Vec::new(),
        };
        t.vxlans = vec![
            vx("vx0", 1500, Some(1500)),
            vx("vx1", 1450, Some(1500)),
            vx("vx2", 1500, None),
        ];
        let q = |memory_bytes, high_thresh| FragQueueMem {
            queues: 1,
            memory_bytes,
            high_thresh,
            low_thresh: 0,
            time_secs: 30,
        };
        let mut fragmem = BTreeMap::new();
        fragmem.insert(
            HOST,
            FragMem {
                netns: HOST,
                ipv4: q(0, 4 << 20),
                ipv6: Some(q(0, 4 << 20)),
                counters: None,
            },
        );
        fragmem.insert(
            POD_NS,
            FragMem {
                netns: POD_NS,
                ipv4: q(896, 1024),
                ipv6: None,
                counters: Some(crate::net::FragCounters {
                    ipv4: crate::net::IpSnmp {
                        frag_creates: 6,
                        reasm_reqds: 0,
                        ..Default::default()
                    },
                    ipv6: Some(crate::net::IpSnmp {
                        frag_creates: 2,
                        ..Default::default()
                    }),
                }),
            },
        );
        // A namespace the topology no longer lists.
        fragmem.insert(
            7,
            FragMem {
                netns: 7,
                ipv4: q(1, 2),
                ipv6: None,
                counters: Some(crate::net::FragCounters::default()),
            },
        );
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(WithState(gauges, Arc::new(t), Arc::new(fragmem))));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn fragment_queue_memory_per_namespace_and_family() {
        let text = text(true);
        for line in [
            r#"fathom_ip_fragment_queue_bytes{namespace="shop",pod="web-0",netns="4026532100",family="ipv4"} 896"#,
            r#"fathom_ip_fragment_queue_limit_bytes{namespace="shop",pod="web-0",netns="4026532100",family="ipv4"} 1024"#,
            r#"fathom_ip_fragment_queue_limit_bytes{namespace="",pod="",netns="4026531840",family="ipv6"} 4194304"#,
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        }
        assert!(!text.contains(r#"netns="7""#), "gone namespace: {text}");
        assert!(
            !text.contains(r#"netns="4026532100",family="ipv6""#),
            "IPv6 off: {text}"
        );
    }

    #[test]
    fn without_workload_labels_queue_memory_is_a_node_total() {
        let text = text(false);
        assert!(
            text.contains(
                "fathom_ip_fragment_queue_bytes{namespace=\"\",pod=\"\",netns=\"\",family=\"ipv4\"} 896\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "fathom_ip_fragment_queue_limit_bytes{namespace=\"\",pod=\"\",netns=\"\",family=\"ipv4\"} 4195328\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("fathom_ip_fragment_queue_bytes{").count(), 2);
    }

    #[test]
    fn fragments_are_the_namespaces_snmp_counters() {
        for (workload, line) in [
            (
                true,
                r#"fathom_ip_fragments_total{namespace="shop",pod="web-0",netns="4026532100",direction="tx"} 8"#,
            ),
            // netns stays: a sum over namespaces would go backwards when one goes.
            (
                false,
                r#"fathom_ip_fragments_total{namespace="",pod="",netns="4026532100",direction="tx"} 8"#,
            ),
        ] {
            let text = text(workload);
            assert!(
                text.contains(&format!(
                    "{line}
"
                )),
                "{line}
{text}"
            );
            // No series at 0 (rx here, the host without counters) or for a gone namespace.
            assert_eq!(
                text.matches("fathom_ip_fragments_total{").count(),
                1,
                "{text}"
            );
            assert!(
                text.contains("# TYPE fathom_ip_fragments_total counter"),
                "{text}"
            );
        }
    }

    #[test]
    fn vxlan_mtus_and_mismatches() {
        let text = text(true);
        for line in [
            r#"fathom_overlay_mtu_mismatch{netns="4026531840",device="vx0",vni="42",underlay="eth0"} 1"#,
            r#"fathom_overlay_mtu_mismatch{netns="4026531840",device="vx1",vni="42",underlay="eth0"} 0"#,
            r#"fathom_interface_mtu_bytes{netns="4026531840",device="vx0"} 1500"#,
            r#"fathom_interface_mtu_bytes{netns="4026531840",device="vx1"} 1450"#,
            r#"fathom_interface_mtu_bytes{netns="4026531840",device="vx2"} 1500"#,
            r#"fathom_interface_mtu_bytes{netns="4026531840",device="eth0"} 1500"#,
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}\n{text}");
        }
        assert!(
            !text.contains(r#"device="vx2",vni"#),
            "no underlay, no verdict: {text}"
        );
        assert_eq!(text.matches("fathom_interface_mtu_bytes{").count(), 4);
    }
}
