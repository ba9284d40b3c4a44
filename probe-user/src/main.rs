//! The `fathom` command line.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use fathom::{EXIT_PREREQUISITE, btf::Btf, capture, privileges};

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
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Kernel BTF to read struct offsets from.
        #[arg(long, default_value = Btf::VMLINUX, hide = true)]
        btf: String,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FATHOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);

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
            btf,
        } => rt.block_on(capture::run(capture::CaptureOptions {
            output,
            duration,
            count,
            btf_path: btf,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let prerequisite = e
                .downcast_ref::<fathom::loader::LoadError>()
                .is_some_and(|l| matches!(l, fathom::loader::LoadError::Btf(_)));
            eprintln!("fathom: {}", fathom::loader::error_chain(e.as_ref()));
            if prerequisite {
                ExitCode::from(EXIT_PREREQUISITE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
