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
//! never go backwards while a series lives ([`store`]).
//!
//! Adding a family (e.g. packet drops from the `DROPS` per-CPU hash):
//! 1. a file here with a struct holding a [`Kernel`], the `Arc<dyn LabelSource>` and a
//!    `Mutex<CumulativeCounters<MapKey, Labels>>`;
//! 2. its `Collector::encode` reads the map (sum over CPUs per key), maps each key to labels
//!    and an anchor, calls `observe`, `expire`s, and encodes the store's snapshot (gauges such
//!    as queue bytes are encoded straight from the map instead);
//! 3. one `register_collector` line in [`Metrics::new`], and a row in the README's table.

pub mod labels;
pub mod oom;
pub mod self_metrics;
pub mod store;

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use prometheus_client::{collector::Collector, registry::Registry};

use crate::pipeline::{Event, EventSink, Kernel, SinkError};

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
    /// `false`: no namespace/pod/container/cgroup labels (very large nodes).
    pub workload_labels: bool,
    /// This node's name, on `fathom_build_info`.
    pub node_name: String,
    /// fathom holds a `BPF_ENABLE_STATS` descriptor.
    pub bpf_stats_enabled_by_us: bool,
}

/// The registry with every family, and the event sink feeding the event-driven ones.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    oom: Arc<oom::OomKills>,
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
        Self { registry, oom }
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
            Event::PacketDrop(_) | Event::MtuMismatch(_) => {}
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
