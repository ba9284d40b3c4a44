//! `fathom capture`: live events on a terminal (table) or as JSON lines.

use std::{io::Write, ops::ControlFlow, time::Duration};

use tokio::signal::unix::{SignalKind, signal};
use tracing::warn;

use crate::{
    READY_MARKER,
    loader::LoadOptions,
    oom::OomKill,
    pipeline::{Event, EventSink, Pipeline, SinkError},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line (see README, "JSON events").
    Json,
}

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub output: Output,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub btf_path: String,
}

/// Renders events to a writer.
pub struct Renderer<W: Write> {
    out: W,
    output: Output,
    header_done: bool,
}

impl<W: Write> Renderer<W> {
    pub fn new(out: W, output: Output) -> Self {
        Self {
            out,
            output,
            header_done: false,
        }
    }

    pub fn oom(&mut self, e: &OomKill) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                serde_json::to_writer(&mut self.out, e)?;
                writeln!(self.out)?;
            }
            Output::Table => {
                if !self.header_done {
                    writeln!(
                        self.out,
                        "{:<12} {:<9} {:>8} {:<16} {:<48} DETAILS",
                        "TIME", "KIND", "PID", "COMM", "WHERE"
                    )?;
                    self.header_done = true;
                }
                writeln!(self.out, "{}", table_row(e))?;
            }
        }
        self.out.flush()
    }
}

/// Human-readable byte count (binary units).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn table_row(e: &OomKill) -> String {
    let time = e.time.get(11..23).unwrap_or(&e.time);
    let place = match (&e.pod, &e.container) {
        (Some(p), Some(c)) => format!("pod {} ctr {}", short(&p.uid, 8), short(&c.id, 12)),
        (None, Some(c)) => format!("{} {}", c.runtime, short(&c.id, 12)),
        _ => e
            .memcg
            .as_ref()
            .and_then(|m| m.path.clone())
            .or_else(|| e.victim.cgroup_path.clone())
            .unwrap_or_else(|| "?".into()),
    };
    let limit = e
        .memcg
        .as_ref()
        .map(|m| {
            format!(
                "usage={}/{}",
                human_bytes(m.usage_bytes),
                m.limit_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "max".into())
            )
        })
        .unwrap_or_default();
    format!(
        "{:<12} {:<9} {:>8} {:<16} {:<48} {} domain={}:{} rss={} adj={} trigger={}({})",
        time,
        e.kind,
        e.victim.pid,
        e.victim.comm,
        place,
        limit,
        e.oom_domain.scope.as_str(),
        e.oom_domain.path,
        human_bytes(e.rss_bytes.anon + e.rss_bytes.file + e.rss_bytes.shmem),
        e.oom_score_adj,
        e.trigger.pid,
        e.trigger.comm,
    )
}

fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

/// Capture's sink: renders every event and counts them against `--count`.
struct RenderSink<W: Write> {
    renderer: Renderer<W>,
    count: Option<u64>,
    printed: u64,
}

impl<W: Write> EventSink for RenderSink<W> {
    fn handle(&mut self, event: Event) -> Result<ControlFlow<()>, SinkError> {
        let written = match &event {
            Event::OomKill(e) => self.renderer.oom(e),
        };
        match written {
            Ok(()) => self.printed += 1,
            // The reader went away (`fathom capture | head`): a normal end, not an error.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(ControlFlow::Break(()));
            }
            Err(err) => return Err(err.into()),
        }
        Ok(if self.count.is_some_and(|c| self.printed >= c) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

/// Runs the capture until the duration, the count, Ctrl-C or SIGTERM ends it.
pub async fn run(opts: CaptureOptions) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives while loading must still end us cleanly.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut pipeline = Pipeline::start(&LoadOptions {
        btf_path: opts.btf_path.clone(),
        ..LoadOptions::default()
    })?;
    eprintln!(
        "{READY_MARKER}: attached {}",
        pipeline.kernel().attached().join(", ")
    );

    let stdout = std::io::stdout();
    let mut sink = RenderSink {
        renderer: Renderer::new(stdout.lock(), opts.output),
        count: opts.count,
        printed: 0,
    };
    let stop = async {
        let deadline = async {
            match opts.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
            _ = deadline => {}
        }
    };
    if opts.count != Some(0) {
        pipeline.run(&mut sink, stop).await?;
    }
    let lost = pipeline.kernel().events_lost_total();
    if lost > 0 {
        warn!(lost, "events lost because the ring buffer was full");
    }
    eprintln!("fathom: {} events, {lost} lost", sink.printed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::BootClock, oom::OomInterpreter};

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(64 << 20), "64.0MiB");
        assert_eq!(human_bytes(1536), "1.5KiB");
    }

    #[test]
    fn renders_json_lines_and_a_table() {
        let mut ev = crate::events::tests::sample_record();
        ev.header.boot_ns = 1;
        let crate::events::RawEvent::OomKill(k) =
            crate::events::decode(&crate::events::tests::as_bytes(&ev)).unwrap()
        else {
            panic!("not an OOM record")
        };
        let mut interp = OomInterpreter::new(BootClock::new(), 4096, None, None);
        let e = interp.interpret(&k);

        let mut buf = Vec::new();
        Renderer::new(&mut buf, Output::Json).oom(&e).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["victim"]["pid"], 100);
        assert_eq!(v["memcg"]["path"], "/a/b");

        let mut buf = Vec::new();
        let mut r = Renderer::new(&mut buf, Output::Table);
        r.oom(&e).unwrap();
        r.oom(&e).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "one header, two rows: {text}");
        assert!(lines[0].starts_with("TIME"));
        assert!(lines[1].contains("oom_kill") && lines[1].contains("alloc"));
        assert!(lines[1].contains("usage=64.0MiB/64.0MiB"), "{}", lines[1]);
    }
}
