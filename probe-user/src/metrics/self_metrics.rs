//! fathom's own health: which programs are attached, what the kernel could not deliver or
//! count, what the programs cost, and which build runs where. Everything is read at scrape
//! time. [`HttpMetrics`]: the books of `fathom serve`'s HTTP server
//! ([`crate::serve::http::HttpStats`]).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::{
    net_counters,
    pipeline::{Kernel, StreamCount},
    serve::http::HttpStats,
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

/// The server's counts as Prometheus families, all present from the start (at 0).
#[derive(Debug)]
pub struct HttpMetrics {
    stats: Arc<HttpStats>,
    max_connections: usize,
}

impl HttpMetrics {
    /// `max_connections`: the cap in force (after [`crate::serve::http::effective_cap`]).
    pub fn new(stats: Arc<HttpStats>, max_connections: usize) -> Self {
        Self {
            stats,
            max_connections,
        }
    }
}

impl Collector for HttpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "fathom_http_connections",
            "Client connections accepted, by what the connection cap (--web.max-connections) did with them: admitted, or refused (closed at once because every open connection was inside a request)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("admitted", get(&s.admitted)), ("refused", get(&s.refused))] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        for (name, help, n) in [
            (
                "fathom_http_connections_evicted",
                "Open connections closed at the connection cap to make room for a new one (the one quiet longest among those not inside a request)",
                get(&s.evicted),
            ),
            (
                "fathom_http_auth_failures",
                "Requests answered 401 Unauthorized: basic-auth credentials missing, malformed or wrong (only /metrics needs them)",
                get(&s.auth_failures),
            ),
            (
                "fathom_http_tls_handshake_failures",
                "TLS handshakes that failed (e.g. plain HTTP on the TLS port, a client that rejects the certificate) or did not finish within the 10 s header timeout",
                get(&s.tls_failures),
            ),
            (
                "fathom_web_config_reloads",
                "Times the --web.config.file, or a certificate or key it names, changed and was loaded again",
                get(&s.web_config_reloads),
            ),
            (
                "fathom_web_config_reload_failures",
                "Times a changed --web.config.file, certificate or key did not load (or would switch TLS or basic auth on or off): the previous config stays in force, the log says why",
                get(&s.web_config_reload_failures),
            ),
        ] {
            ConstCounter::new(n).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstGauge::new(i64::try_from(get(&s.open)).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "fathom_http_connections_open",
                "Client connections open now (evicted ones until they have closed)",
                None,
                MetricType::Gauge,
            )?,
        )?;
        ConstGauge::new(i64::try_from(self.max_connections).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "fathom_http_connections_limit",
                "The connection cap in force: --web.max-connections, at most a quarter of the descriptor limit",
                None,
                MetricType::Gauge,
            )?,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_at_zero_from_the_start() {
        let mut registry = prometheus_client::registry::Registry::default();
        let stats = Arc::new(HttpStats::default());
        registry.register_collector(Box::new(HttpMetrics::new(stats.clone(), 64)));
        let text = |r: &prometheus_client::registry::Registry| {
            let mut out = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut out, r).unwrap();
            out
        };
        let out = text(&registry);
        for line in [
            "fathom_http_connections_total{outcome=\"admitted\"} 0",
            "fathom_http_connections_total{outcome=\"refused\"} 0",
            "fathom_http_connections_evicted_total 0",
            "fathom_http_auth_failures_total 0",
            "fathom_http_tls_handshake_failures_total 0",
            "fathom_web_config_reloads_total 0",
            "fathom_web_config_reload_failures_total 0",
            "fathom_http_connections_open 0",
            "fathom_http_connections_limit 64",
            "# TYPE fathom_http_auth_failures_total counter",
            "# TYPE fathom_http_connections_open gauge",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
        }
        stats.auth_failures.fetch_add(3, Ordering::Relaxed);
        stats.open.fetch_add(2, Ordering::Relaxed);
        let out = text(&registry);
        assert!(
            out.contains("\nfathom_http_auth_failures_total 3\n"),
            "{out}"
        );
        assert!(out.contains("\nfathom_http_connections_open 2\n"), "{out}");
    }
}
