//! The Prometheus metrics of `fathom serve`.
//!
//! Every family is a prometheus-client [`Collector`] that produces its samples when scraped:
//! - counts the kernel aggregates (per-CPU maps) are read from the maps at scrape time through
//!   [`Kernel::with_ebpf`], never copied around between scrapes;
//! - counts only the event stream carries (OOM kills) are kept in a [`store::CounterStore`]
//!   fed by [`Metrics`] acting as the pipeline's [`EventSink`].
//!
//! Series of workloads (pods, containers, cgroups) are labelled by a pluggable
//! [`labels::LabelSource`] and expire after `series_ttl` once the workload is gone; counters
//! never go backwards while a series lives ([`store`]). Network series are labelled by the
//! owner of their network namespace ([`netns_labels`]) and expire once the namespace is gone.
//!
//! Families: [`oom`] (OOM kills, from events), [`network`] (drops, reassembly failures,
//! VXLAN traffic: the `DROPS`, `EXPIRED` and `VXLAN_COUNTS` maps), [`network_gauges`] (fragment
//! queue memory, interface MTUs, overlay MTU mismatches: the topology service),
//! [`self_metrics`].
//!
//! Adding a family (e.g. from another per-CPU hash):
//! 1. a file here with a struct holding a [`Kernel`], what labels its keys and a
//!    `Mutex<CumulativeCounters<MapKey, Labels>>` (see [`network`]);
//! 2. its `Collector::encode` reads the map (sum over CPUs per key), maps each key to labels
//!    and an anchor, calls `observe`, `expire`s, and encodes the store's snapshot (gauges such
//!    as queue bytes are encoded straight from the current state instead);
//! 3. one `register_collector` line in [`Metrics::new`] (or [`Metrics::add_network`]), and a
//!    row in the README's table. What cannot be read without waiting (procfs inside another
//!    namespace) is fetched by [`Metrics::refresh`] before the scrape encodes.

pub mod labels;
pub mod netns_identity;
pub mod netns_labels;
pub mod network;
pub mod network_gauges;
pub mod oom;
pub mod oom_zeros;
pub mod pressure;
pub mod self_metrics;
pub mod store;

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use prometheus_client::{collector::Collector, registry::Registry};

use crate::{
    net::Topology,
    netreport::NetInterpreter,
    pipeline::{Event, EventSink, Kernel, SinkError},
};

/// Exposition formats `/metrics` can answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// Prometheus text 0.0.4 (curl, promtool, older scrapers).
    PrometheusText,
}

impl Format {
    /// Picks the format from an HTTP `Accept` header: OpenMetrics only when asked for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Settings of the exported metrics.
#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// How long a gone workload's series stays after its last change.
    pub series_ttl: Duration,
    /// `false`: no namespace/pod/container/cgroup/netns labels (very large nodes).
    pub workload_labels: bool,
    /// This node's name, on `fathom_build_info`.
    pub node_name: String,
    /// fathom holds a `BPF_ENABLE_STATS` descriptor.
    pub bpf_stats_enabled_by_us: bool,
}

/// What the network families need besides the kernel maps (the pipeline's services).
pub struct NetworkSources {
    /// Drop reason names and reassembly classification.
    pub interpreter: Arc<NetInterpreter>,
    /// Namespaces, device names, VXLAN devices, fragment memory; `None`: no device names, no
    /// gauges, and network series expire only once no kernel key feeds them.
    pub topology: Option<Arc<Topology>>,
    /// Network namespace → pod (the attribution).
    pub owners: Arc<dyn netns_labels::NetnsOwners>,
}

/// The registry with every family, and the event sink feeding the event-driven ones.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    oom: Arc<oom::OomKills>,
    /// Read before each scrape: see [`Self::refresh`].
    network_gauges: Option<Arc<network_gauges::NetworkGauges>>,
}

impl Metrics {
    pub fn new(
        kernel: Kernel,
        labels: Arc<dyn labels::LabelSource>,
        opts: &MetricsOptions,
    ) -> Self {
        let oom = Arc::new(oom::OomKills::new(
            opts.series_ttl,
            labels,
            opts.workload_labels,
        ));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(oom.clone()));
        registry.register_collector(Box::new(self_metrics::SelfMetrics::new(
            kernel,
            opts.node_name.clone(),
            opts.bpf_stats_enabled_by_us,
        )));
        Self {
            registry,
            oom,
            network_gauges: None,
        }
    }

    /// Exports `fathom_oom_kills_total` at 0 for every container in the cgroup hierarchies
    /// ([`oom_zeros`]), named as the attribution names them.
    pub fn add_oom_zeros(
        &self,
        attributor: Option<crate::attribution::Attributor>,
        opts: &MetricsOptions,
    ) {
        self.oom.set_zero_source(oom_zeros::CgroupScan::new(
            &crate::cgroup::Hierarchies::detect(),
            attributor,
            opts.workload_labels,
        ));
    }

    /// Adds the network families ([`network`], [`network_gauges`]).
    pub fn add_network(&mut self, kernel: Kernel, sources: NetworkSources, opts: &MetricsOptions) {
        self.registry
            .register_collector(Box::new(network::NetworkCounters::new(
                kernel,
                sources.interpreter,
                sources.topology.clone(),
                sources.owners.clone(),
                opts.series_ttl,
                opts.workload_labels,
            )));
        let gauges = Arc::new(network_gauges::NetworkGauges::new(
            sources.topology,
            sources.owners,
            opts.workload_labels,
        ));
        self.registry.register_collector(Box::new(gauges.clone()));
        self.network_gauges = Some(gauges);
    }

    /// Adds the memory pressure families ([`pressure`]): reclaim stalls from the kernel,
    /// limit pressure from the cgroup files of the containers `attributor` finds.
    pub fn add_pressure(
        &mut self,
        kernel: Kernel,
        attributor: crate::attribution::Attributor,
        labels: Arc<dyn labels::LabelSource>,
        opts: &MetricsOptions,
    ) {
        let p = Arc::new(pressure::MemoryPressure::new(
            kernel,
            attributor,
            labels,
            crate::cgroup::Hierarchies::detect(),
            opts.series_ttl,
            opts.workload_labels,
        ));
        p.start_sampling();
        self.registry.register_collector(Box::new(p));
    }

    /// Fetches what collectors cannot read synchronously (fragment-queue memory, read inside
    /// each namespace); call before [`Self::encode`]. Bounded in time; on failure the previous
    /// values are encoded.
    pub async fn refresh(&self) {
        if let Some(g) = &self.network_gauges {
            g.refresh().await;
        }
    }

    /// Registers another family (see the module docs).
    pub fn register(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// Counts an event in the families it feeds.
    pub fn record(&self, event: &Event) {
        match event {
            Event::OomKill(k) => self.oom.record(k),
            // Network families read the in-kernel counters at scrape time: the samples and
            // mismatch events carry nothing the counters do not.
            Event::PacketDrop(_) | Event::MtuMismatch(_) | Event::MemoryPressure(_) => {}
        }
    }

    /// Encodes every family (expiring gone workloads' series first).
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

/// Feeds the pipeline's events into shared [`Metrics`].
#[derive(Clone, Debug)]
pub struct MetricsSink(pub Arc<Metrics>);

impl EventSink for MetricsSink {
    fn handle(&mut self, event: Event) -> Result<ControlFlow<()>, SinkError> {
        self.0.record(&event);
        Ok(ControlFlow::Continue(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(Format::from_accept(None), Format::PrometheusText);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::PrometheusText
        );
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
    }
}
