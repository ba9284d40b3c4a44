//! `fathom serve`: the Prometheus exporter a privileged DaemonSet runs on every node.
//!
//! Order of start-up, so that failures are cheap and clear: bind the listen address first (a
//! taken port fails before anything touches the kernel), then load and attach the programs
//! ([`Pipeline`]), then serve HTTP while a task feeds the event stream into [`Metrics`].
//!
//! Endpoints: `/metrics` (Prometheus text 0.0.4, or OpenMetrics when the `Accept` header asks
//! for it; kernel maps are read while encoding, fragment-queue memory just before), `/healthz`
//! (the process answers), `/readyz` (every readiness check passes: the programs are loaded and
//! the event loop runs; later components add their own checks).
//!
//! SIGTERM / SIGINT: stop accepting, let in-flight scrapes finish (at most
//! [`SHUTDOWN_GRACE`]), stop the event loop, drop the programs (which detaches them), exit 0.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinHandle,
};
use tracing::{error, info, warn};

pub mod http;
pub mod web_config;

use crate::{
    READY_MARKER,
    loader::LoadOptions,
    metrics::{
        Format, Metrics, MetricsOptions, MetricsSink, NetworkSources, labels::CgroupPathLabels,
    },
    pipeline::{Event, EventSink, Kernel, Pipeline, PipelineError, SinkError},
};

/// Default listen address: all interfaces, because Prometheus scrapes a DaemonSet pod by its
/// pod IP. 9717 is not used by any exporter we know of.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9717";

/// Default lifetime of a gone workload's series after its last change: five scrape intervals
/// of the usual 1 min, so the final value is scraped several times before it disappears.
pub const DEFAULT_SERIES_TTL: Duration = Duration::from_secs(300);

/// How long in-flight requests may take after SIGTERM. A scrape takes milliseconds; what
/// hits this is a client that sent half a request and stalls (hyper waits for the rest). 1 s
/// keeps the whole stop well under the 2 s a DaemonSet rollout allows.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub node_name: String,
    pub series_ttl: Duration,
    /// `false`: drop namespace/pod/container/cgroup labels (very large nodes).
    pub workload_labels: bool,
    /// Make the kernel count program run time while fathom runs (`BPF_ENABLE_STATS`).
    pub bpf_stats: bool,
    pub btf_path: String,
    /// Runtime sockets and cache bounds of the attribution layer.
    pub attribution: crate::attribution::AttributionConfig,
    /// Drop-sample rate limit (per CPU) and burst.
    pub drop_events_per_sec: u64,
    pub drop_events_burst: u64,
    /// TLS and basic auth (`--web.config.file`), checked at start; read again by the server
    /// when its files change.
    pub web: Option<web_config::WebConfig>,
    /// Connection cap and timeouts; the cap is lowered to a quarter of `RLIMIT_NOFILE`.
    pub http_limits: http::Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The OS error is part of the message, not a `source`: the error chain says it once.
    #[error("cannot listen on {addr}: {error}{hint}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    WebConfig(#[from] web_config::WebConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the event loop ended unexpectedly")]
    EventLoopEnded,
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

impl ServeError {
    /// Errors the user fixes by changing how fathom is started (exit code 2).
    pub fn is_prerequisite(&self) -> bool {
        match self {
            ServeError::Listen { .. } | ServeError::WebConfig(_) => true,
            ServeError::Pipeline(p) => p.is_prerequisite(),
            _ => false,
        }
    }
}

/// Named readiness checks; `/readyz` is 200 only when all pass.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<&'static str, Result<String, String>>>,
}

impl Readiness {
    /// Sets a check: `Ok(detail)` passes, `Err(why)` fails.
    pub fn set(&self, name: &'static str, state: Result<String, String>) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, state);
    }

    /// Whether every check passes, and one line per check.
    pub fn report(&self) -> (bool, String) {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let mut ok = !checks.is_empty();
        let mut text = String::new();
        for (name, state) in checks.iter() {
            match state {
                Ok(detail) => text.push_str(&format!("{name}: ok: {detail}\n")),
                Err(why) => {
                    ok = false;
                    text.push_str(&format!("{name}: not ready: {why}\n"));
                }
            }
        }
        (ok, text)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The HTTP routes.
fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    s.metrics.refresh().await;
    match s.metrics.encode(format) {
        Ok(body) => {
            if body.len() >= TRIM_AFTER_BODY_BYTES {
                trim_soon();
            }
            ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
        }
        Err(e) => {
            error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

/// A scrape this large (a node with hundreds of limited pods) leaves megabytes of freed heap in
/// the serving thread's malloc arena, which glibc keeps until a trim (measured: 35 MiB anon
/// with 1,000 pods, 6 MiB of it live). The periodic trim runs every minute.
const TRIM_AFTER_BODY_BYTES: usize = 1 << 20;

/// Hands freed heap back a second after a large scrape (once, however many scrapes overlap).
fn trim_soon() {
    static PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        PENDING.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(crate::pipeline::trim_heap).await;
    });
}

async fn readyz_handler(State(s): State<AppState>) -> Response {
    let (ok, text) = s.readiness.report();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, text).into_response()
}

/// Feeds metrics and counts events for the closing line.
struct CountingSink {
    metrics: MetricsSink,
    events: Arc<AtomicU64>,
}

impl EventSink for CountingSink {
    fn handle(&mut self, event: Event) -> Result<std::ops::ControlFlow<()>, SinkError> {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.metrics.handle(event)
    }
}

/// The node name when `--node-name` / `NODE_NAME` are not given: the kernel's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the exporter until SIGTERM / SIGINT (→ `Ok`) or a failure.
pub async fn run(opts: ServeOptions) -> Result<(), ServeError> {
    // Handlers first: a SIGTERM that arrives while loading must still end us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: opts.listen,
            hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                " (another fathom serve may be running; pick a free port with --listen)"
            } else {
                ""
            },
            error: source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Http)?;
    // Descriptors for fathom's own work first: clients get at most a quarter of them.
    let nofile = http::raise_nofile_limit();
    let mut limits = opts.http_limits;
    limits.max_connections = http::effective_cap(limits.max_connections, nofile);
    info!(
        nofile,
        max_connections = limits.max_connections,
        "descriptor limit and HTTP connection cap"
    );
    let http_stats = Arc::new(http::HttpStats::default());

    let mut pipeline = Pipeline::start_with(&crate::pipeline::PipelineConfig {
        load: LoadOptions {
            btf_path: opts.btf_path.clone(),
            drop_events_per_sec: opts.drop_events_per_sec,
            drop_events_burst: opts.drop_events_burst,
        },
        attribution: opts.attribution.clone(),
        // A gone memory cgroup's reclaim keys go after 10 quiet minutes. (The network
        // collector deletes a gone namespace's keys itself, after a scrape has read them:
        // metrics::network.)
        forget_gone_memcgs: true,
        ..crate::pipeline::PipelineConfig::default()
    })?;
    let kernel: Kernel = pipeline.kernel().clone();

    // Kept open while serving: the kernel counts run time as long as one such descriptor is
    // open, and stops by itself when fathom exits, even on SIGKILL. The sysctl
    // kernel.bpf_stats_enabled is left untouched.
    let stats_fd = if opts.bpf_stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(error = %e, "cannot enable BPF run-time stats (kernel >= 5.8 needed)");
                None
            }
        }
    } else {
        None
    };

    let metrics_opts = MetricsOptions {
        series_ttl: opts.series_ttl,
        workload_labels: opts.workload_labels,
        node_name: opts.node_name.clone(),
        bpf_stats_enabled_by_us: stats_fd.is_some(),
    };
    let mut metrics = Metrics::new(
        kernel.clone(),
        Arc::new(CgroupPathLabels::detect()),
        &metrics_opts,
    );
    // The pipeline's services outlive it through these handles: the event loop drops the
    // pipeline on stop, scrapes may still be finishing.
    metrics.add_network(
        kernel.clone(),
        NetworkSources {
            interpreter: pipeline.net_interpreter(),
            topology: pipeline.topology(),
            owners: Arc::new(pipeline.attributor().clone()),
        },
        &metrics_opts,
    );
    metrics.add_oom_zeros(Some(pipeline.attributor().clone()), &metrics_opts);
    metrics.add_pressure(
        kernel.clone(),
        pipeline.attributor().clone(),
        Arc::new(CgroupPathLabels::detect()),
        &metrics_opts,
    );
    // The HTTP server's own books (connections, auth and TLS failures, web config reloads).
    metrics.register(crate::metrics::self_metrics::HttpMetrics::new(
        http_stats.clone(),
        limits.max_connections,
    ));
    let metrics = Arc::new(metrics);
    let readiness = Arc::new(Readiness::default());
    let attached = kernel.attached().join(", ");
    let missing: Vec<String> = kernel
        .status()
        .iter()
        .filter(|s| !s.attached)
        .map(|s| s.name.to_string())
        .collect();
    readiness.set(
        "programs",
        Ok(if missing.is_empty() {
            format!("attached {attached}")
        } else {
            format!("attached {attached}; not attached {}", missing.join(", "))
        }),
    );
    readiness.set("events", Ok("reading the ring buffer".into()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let events = Arc::new(AtomicU64::new(0));
    let mut sink = CountingSink {
        metrics: MetricsSink(metrics.clone()),
        events: events.clone(),
    };
    let mut ev_stop = stop_rx.clone();
    let ev_readiness = readiness.clone();
    let mut event_loop: Option<JoinHandle<Result<(), ServeError>>> =
        Some(tokio::spawn(async move {
            let stop = async move {
                let _ = ev_stop.wait_for(|s| *s).await;
            };
            let result = pipeline.run(&mut sink, stop).await;
            ev_readiness.set("events", Err("the event loop stopped".into()));
            // Dropping the pipeline here (the ring buffer; the programs go with the last
            // Kernel handle) happens on every path.
            drop(pipeline);
            result.map(|_| ()).map_err(ServeError::from)
        }));

    let app = router(metrics, readiness.clone());
    let scheme = match &opts.web {
        Some(w) if w.tls.is_some() => "https",
        _ => "http",
    };
    let mut server: Option<JoinHandle<std::io::Result<()>>> = Some(tokio::spawn(http::serve(
        listener,
        app,
        opts.web.clone(),
        limits,
        http_stats,
        stop_rx.clone(),
    )));

    eprintln!("{READY_MARKER}: attached {attached}; serving {scheme}://{local}/metrics");
    info!(%local, node = %opts.node_name, "serving metrics");

    let outcome = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: stopping"); Ok(()) }
        _ = sigint.recv() => { info!("SIGINT: stopping"); Ok(()) }
        r = event_loop.as_mut().expect("running") => {
            event_loop = None;
            Err(match r {
                Ok(Ok(())) => ServeError::EventLoopEnded,
                Ok(Err(e)) => e,
                Err(join) => ServeError::Http(std::io::Error::other(join)),
            })
        }
        r = server.as_mut().expect("running") => {
            server = None;
            Err(ServeError::Http(match r {
                Ok(Ok(())) => std::io::Error::other("the server stopped"),
                Ok(Err(e)) => e,
                Err(join) => std::io::Error::other(join),
            }))
        }
    };

    readiness.set("shutdown", Err("stopping".into()));
    let _ = stop_tx.send(true);
    if let Some(mut s) = server
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut s).await.is_err()
    {
        warn!(grace = ?SHUTDOWN_GRACE, "requests still open after the grace period; closing them");
        s.abort();
    }
    // The loop looks at the stop signal between batches: this is quick.
    if let Some(mut e) = event_loop
        && tokio::time::timeout(Duration::from_millis(300), &mut e)
            .await
            .is_err()
    {
        e.abort();
    }
    let lost = kernel.events_lost_total();
    drop(stats_fd);
    eprintln!(
        "fathom: {} events, {lost} lost",
        events.load(Ordering::Relaxed)
    );
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_check() {
        let r = Readiness::default();
        assert!(!r.report().0, "no checks yet: not ready");
        r.set("programs", Ok("attached x".into()));
        r.set("events", Ok("reading".into()));
        let (ok, text) = r.report();
        assert!(ok, "{text}");
        r.set("events", Err("stopped".into()));
        let (ok, text) = r.report();
        assert!(!ok);
        assert!(text.contains("events: not ready: stopped"), "{text}");
    }

    #[test]
    fn default_listen_parses() {
        let a: SocketAddr = DEFAULT_LISTEN.parse().unwrap();
        assert_eq!(a.port(), 9717);
    }
}
