//! fathom's own health: which programs are attached, what the kernel could not deliver or
//! count, what the programs cost, and which build runs where. Everything is read at scrape
//! time.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::{
    net_counters,
    pipeline::{Kernel, StreamCount},
};

/// The sysctl that makes the kernel count program run time (`bpf_stats_enabled`).
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Self-metrics over the loaded programs.
#[derive(Debug)]
pub struct SelfMetrics {
    kernel: Kernel,
    version: &'static str,
    node: String,
    /// fathom holds a `BPF_ENABLE_STATS` descriptor (`serve --bpf-stats`).
    stats_enabled_by_us: bool,
}

impl SelfMetrics {
    pub fn new(kernel: Kernel, node: String, stats_enabled_by_us: bool) -> Self {
        Self {
            kernel,
            version: env!("CARGO_PKG_VERSION"),
            node,
            stats_enabled_by_us,
        }
    }

    fn bpf_stats_enabled(&self) -> bool {
        self.stats_enabled_by_us
            || std::fs::read_to_string(BPF_STATS_SYSCTL).is_ok_and(|s| s.trim() != "0")
    }
}

fn encode_streams(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: &[StreamCount],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for c in counts {
        ConstCounter::new(c.count)
            .encode(family.encode_family(&[("stream", c.stream.as_str())])?)?;
    }
    Ok(())
}

impl Collector for SelfMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "fathom_program_attached",
            "1 when the kernel program is attached, 0 when it could not be (see the logs for why)",
            None,
            MetricType::Gauge,
        )?;
        for s in self.kernel.status() {
            ConstGauge::new(i64::from(s.attached))
                .encode(family.encode_family(&[("program", s.name)])?)?;
        }

        encode_streams(
            &mut encoder,
            "fathom_events_delivered",
            "Event records read from the ring buffer (with lost and suppressed: every record accounted for)",
            &self.kernel.events_delivered(),
        )?;
        encode_streams(
            &mut encoder,
            "fathom_events_lost",
            "Event records the kernel dropped because the ring buffer was full",
            &self.kernel.events_lost(),
        )?;
        encode_streams(
            &mut encoder,
            "fathom_events_suppressed",
            "Event records a rate limit kept out of the ring buffer (the counters still count them)",
            &self.kernel.events_suppressed(),
        )?;

        let stats = self.kernel.program_stats();
        let mut family = encoder.encode_descriptor(
            "fathom_bpf_program_run",
            "Time the kernel spent running the program; advances only while BPF stats are enabled (fathom_bpf_stats_enabled)",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for s in &stats {
            ConstCounter::new(s.run_time.as_secs_f64())
                .encode(family.encode_family(&[("program", s.program)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "fathom_bpf_program_runs",
            "Times the kernel ran the program; advances only while BPF stats are enabled (fathom_bpf_stats_enabled)",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            ConstCounter::new(s.run_count)
                .encode(family.encode_family(&[("program", s.program)])?)?;
        }
        // Kernel-side counts lost because a counter map had no room for a new key.
        if let Ok(net) = self.kernel.with_ebpf(net_counters::net_stats) {
            let mut family = encoder.encode_descriptor(
                "fathom_bpf_map_full",
                "Counter updates the kernel programs could not make because the map had no room for a new key: those packets are missing from the network families",
                None,
                MetricType::Counter,
            )?;
            // (VXLAN_COUNTS' are in fathom_vxlan_uncounted_packets_total.)
            ConstCounter::new(net.drops_map_full)
                .encode(family.encode_family(&[("map", "DROPS")])?)?;
        }
        ConstGauge::new(i64::from(self.bpf_stats_enabled())).encode(encoder.encode_descriptor(
            "fathom_bpf_stats_enabled",
            "1 while the kernel counts BPF program run time (sysctl kernel.bpf_stats_enabled or fathom serve --bpf-stats)",
            None,
            MetricType::Gauge,
        )?)?;

        let mut family = encoder.encode_descriptor(
            "fathom_build_info",
            "Always 1; labels carry the fathom version and the node it runs on",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(
            family.encode_family(&[("version", self.version), ("node", self.node.as_str())])?,
        )?;
        Ok(())
    }
}
