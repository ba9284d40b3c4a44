//! The `fathom` command line.

use std::{process::ExitCode, time::Duration};

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use fathom::{EXIT_PREREQUISITE, btf::Btf, capture, privileges, serve};

#[derive(Parser, Debug)]
#[command(
    name = "fathom",
    version,
    about = "eBPF observability for container hosts: OOM kills and overlay-network drops, attributed to containers and pods"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// containerd socket asked for container and pod names ("" disables).
    #[arg(long, global = true, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: String,
    /// Docker Engine API socket asked for container, Swarm and network names; repeat for
    /// several dockerd on one host ("" disables).
    #[arg(long, global = true, default_value = "/var/run/docker.sock")]
    docker_socket: Vec<String>,
    /// CRI-O socket asked for container and pod names ("" disables).
    #[arg(long, global = true, default_value = "/run/crio/crio.sock")]
    crio_socket: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show events live: a table on the terminal or JSON lines.
    Capture {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: capture::Output,
        /// Stop after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Stop after this many events (after filters).
        #[arg(long)]
        count: Option<u64>,
        /// Only these event families (repeat or comma-separate): oom, drop, frag, vxlan,
        /// pressure.
        #[arg(long, value_enum, value_delimiter = ',')]
        kind: Vec<capture::Kind>,
        /// Only drops with these reasons, as the kernel names them (e.g. NO_SOCKET,
        /// FRAG_REASM_TIMEOUT; repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        reason: Vec<String>,
        /// Only events of pods in this Kubernetes namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only events of this pod (name or UID).
        #[arg(long)]
        pod: Option<String>,
        /// Only events of this container (name, or id prefix of at least 4 characters).
        #[arg(long)]
        container: Option<String>,
        /// Only network events of this network namespace: its inode (as in the events'
        /// "netns") or a path to it (/run/netns/NAME, /proc/PID/ns/net). OOM kills have no
        /// namespace and are left out.
        #[arg(long)]
        netns: Option<String>,
        /// Also write the dropped packets (those shown) to this pcapng file, for Wireshark or
        /// tcpdump; each packet's comment names reason, place and pod. `-` writes it to
        /// stdout and moves the events to stderr: `fathom capture --pcap - | wireshark -k -i -`.
        #[arg(long, short = 'w', value_name = "FILE")]
        pcap: Option<std::path::PathBuf>,
        /// When the capture ends, print the in-kernel totals gathered meanwhile (drops by
        /// reason, reassembly failures by cause, fragments and VXLAN traffic per device).
        #[arg(long)]
        summary: bool,
        /// Drop samples per second and CPU shown at most (the totals stay exact).
        #[arg(long, default_value_t = 100)]
        drop_events_per_sec: u64,
        /// Burst allowance of that rate limit.
        #[arg(long, default_value_t = 200, hide = true)]
        drop_events_burst: u64,
        /// memory_pressure events for memory cgroups stalling in reclaim at least this much
        /// per second: `100ms/s`, `0.1` (seconds per second) or `10%`.
        #[arg(long, value_parser = parse_stall_threshold, default_value = "100ms/s")]
        stall_threshold: f64,
        /// Kernel BTF to read struct offsets from.
        #[arg(long, default_value = Btf::VMLINUX, hide = true)]
        btf: String,
    },
    /// Export metrics for Prometheus (what the DaemonSet runs): /metrics, /healthz, /readyz.
    Serve {
        /// Address and port to serve on (all interfaces by default: Prometheus scrapes the pod
        /// IP). Port 0 picks a free port; the ready line on stderr names it.
        #[arg(long, default_value = serve::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Node name on fathom_build_info [default: $NODE_NAME, else the hostname].
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// How long the series of a gone pod / container / cgroup stay after their last
        /// change (e.g. 5m, 90s).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        series_ttl: Duration,
        /// Leave out the namespace/pod/container/cgroup labels (one series per scope; for
        /// very large nodes).
        #[arg(long)]
        no_workload_labels: bool,
        /// Make the kernel count program run time while fathom runs, for
        /// fathom_bpf_program_run_seconds_total / _runs_total (adds two clock reads per run;
        /// the sysctl kernel.bpf_stats_enabled is not touched).
        #[arg(long)]
        bpf_stats: bool,
        /// Drop samples per second and CPU read from the kernel (they feed no metric; the
        /// counts are exact without them).
        #[arg(long, default_value_t = 100, hide = true)]
        drop_events_per_sec: u64,
        /// Burst allowance of that rate limit.
        #[arg(long, default_value_t = 200, hide = true)]
        drop_events_burst: u64,
        /// TLS and basic auth: a Prometheus exporter web configuration file
        /// (tls_server_config.cert_file / key_file, basic_auth_users with bcrypt hashes).
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<std::path::PathBuf>,
        /// Most client connections at once (at most a quarter of the descriptor limit); at
        /// the cap a new connection evicts the one quiet longest.
        #[arg(long = "web.max-connections", default_value_t = 256)]
        web_max_connections: usize,
        /// Kernel BTF to read struct offsets from.
        #[arg(long, default_value = Btf::VMLINUX, hide = true)]
        btf: String,
    },
}

/// `--stall-threshold`: `<duration>/s` (`100ms/s`), a percentage (`10%`) or a fraction of a
/// second per second (`0.1`). Must be > 0; it may exceed 1 s/s, since the stalls of a
/// cgroup's tasks add up.
fn parse_stall_threshold(arg: &str) -> Result<f64, String> {
    let a = arg.trim();
    let v = if let Some(d) = a.strip_suffix("/s") {
        humantime::parse_duration(d)
            .map_err(|e| format!("'{d}' is not a duration ({e}); e.g. 100ms/s"))?
            .as_secs_f64()
    } else if let Some(p) = a.strip_suffix('%') {
        p.parse::<f64>()
            .map_err(|_| format!("'{p}' is not a number; e.g. 10%"))?
            / 100.0
    } else {
        a.parse::<f64>()
            .map_err(|_| format!("'{a}' is not a threshold; e.g. 100ms/s, 10% or 0.1"))?
    };
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("'{a}' must be more than 0 (e.g. 100ms/s)"))
    }
}

/// Runtime sockets for attribution; an empty path disables that runtime.
fn attribution_config(
    containerd: &str,
    docker: &[String],
    crio: &str,
) -> fathom::attribution::AttributionConfig {
    let sock = |p: &str| (!p.is_empty()).then(|| std::path::PathBuf::from(p));
    let mut docker = docker.iter().filter_map(|p| sock(p));
    fathom::attribution::AttributionConfig {
        containerd_socket: sock(containerd),
        docker_socket: docker.next(),
        more_docker_sockets: docker.collect(),
        crio_socket: sock(crio),
        ..Default::default()
    }
}

fn init_logging(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Errors the user fixes by changing how fathom is started (exit code 2): no kernel BTF, a
/// listen address that is taken.
fn is_prerequisite(e: &anyhow::Error) -> bool {
    use fathom::{loader::LoadError, pipeline::PipelineError};
    e.chain().any(|cause| {
        cause
            .downcast_ref::<LoadError>()
            .is_some_and(|l| matches!(l, LoadError::Btf(_)))
            || cause
                .downcast_ref::<PipelineError>()
                .is_some_and(PipelineError::is_prerequisite)
            || cause
                .downcast_ref::<serve::ServeError>()
                .is_some_and(serve::ServeError::is_prerequisite)
    })
}

/// One line on stderr, exit code 2.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("fathom: {msg}");
    ExitCode::from(EXIT_PREREQUISITE as u8)
}

/// One glibc malloc arena for the whole process (set before any thread starts). With one
/// arena per thread, every tokio worker and the cgroup sampler kept megabytes of freed scrape
/// garbage that a trim of their arena seldom returned (measured: 28 MiB anon with 1,000
/// pods, 6 MiB of it in use); fathom's threads allocate little concurrently.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let log_env = std::env::var("FATHOM_LOG").ok();
    let filter = match fathom::input::log_filter(log_env.as_deref()) {
        Ok(f) => f,
        Err(msg) => return usage_error(&msg),
    };
    init_logging(cli.log_format, filter);
    // Input that names things of the running system is checked before anything loads.
    let mut cli = cli;
    let mut netns_ino = None;
    if let Command::Capture {
        netns, reason, btf, ..
    } = &mut cli.command
    {
        if let Some(arg) = netns {
            match fathom::input::resolve_netns(arg) {
                Ok(ino) => netns_ino = Some(ino),
                Err(msg) => return usage_error(&msg),
            }
        }
        match fathom::input::check_reasons(reason, btf) {
            Ok(r) => *reason = r,
            Err(msg) => return usage_error(&msg),
        }
    }

    if let Err(msg) = privileges::check() {
        eprintln!("fathom: {msg}");
        return ExitCode::from(EXIT_PREREQUISITE as u8);
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fathom: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Capture {
            output,
            duration,
            count,
            kind,
            reason,
            namespace,
            pod,
            container,
            netns,
            pcap,
            summary,
            drop_events_per_sec,
            drop_events_burst,
            stall_threshold,
            btf,
        } => rt.block_on(capture::run(capture::CaptureOptions {
            stall_threshold,
            netns: netns.and(netns_ino),
            pcap,
            output,
            duration,
            count,
            btf_path: btf,
            kinds: kind,
            reasons: reason,
            workload: fathom::attribution::WorkloadFilter {
                namespace,
                pod,
                container,
            },
            summary,
            drop_events_per_sec,
            drop_events_burst,
            attribution: attribution_config(
                &cli.containerd_socket,
                &cli.docker_socket,
                &cli.crio_socket,
            ),
        })),
        Command::Serve {
            listen,
            node_name,
            series_ttl,
            no_workload_labels,
            bpf_stats,
            drop_events_per_sec,
            drop_events_burst,
            web_config_file,
            web_max_connections,
            btf,
        } => {
            let web = match web_config_file
                .as_deref()
                .map(serve::web_config::WebConfig::load)
                .transpose()
            {
                Ok(w) => w,
                Err(e) => return usage_error(&e.to_string()),
            };
            rt.block_on(serve::run(serve::ServeOptions {
                listen,
                node_name: node_name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(serve::hostname),
                series_ttl,
                workload_labels: !no_workload_labels,
                bpf_stats,
                btf_path: btf,
                drop_events_per_sec,
                drop_events_burst,
                attribution: attribution_config(
                    &cli.containerd_socket,
                    &cli.docker_socket,
                    &cli.crio_socket,
                ),
                web,
                http_limits: serve::http::Limits {
                    max_connections: web_max_connections,
                    ..Default::default()
                },
            }))
            .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let prerequisite = is_prerequisite(&e);
            eprintln!("fathom: {}", fathom::loader::error_chain(e.as_ref()));
            if prerequisite {
                ExitCode::from(EXIT_PREREQUISITE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
