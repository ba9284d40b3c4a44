//! Child processes of the bench (`fathom serve`, `fathom capture`, `bpftrace`) behind a guard
//! that stops them on every path, and what /proc says about a process's CPU time and memory.
//!
//! Children run in their own process group, so a Ctrl-C reaches only us and we stop them in
//! order; `PR_SET_PDEATHSIG` ends them if we are killed outright.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, Sender, channel},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::signals;

/// A running child with its output collected, stopped when dropped.
pub struct Spawned {
    name: String,
    child: Child,
    started: Instant,
    marker: &'static str,
    stop_signal: libc::c_int,
    output: Arc<Mutex<String>>,
    ready: Receiver<Instant>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl Spawned {
    /// Starts `cmd`; a line of its stdout or stderr containing `marker` makes it ready.
    /// `stop_signal` asks it to stop cleanly (SIGTERM for fathom, SIGINT for bpftrace).
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        marker: &'static str,
        stop_signal: libc::c_int,
    ) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, ready) = channel();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(reader(out, output.clone(), tx.clone(), marker));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(reader(err, output.clone(), tx, marker));
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            started,
            marker,
            stop_signal,
            output,
            ready,
            readers,
            exit: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the ready marker; returns the time from spawn to the marker.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            signals::check()?;
            match self.ready.recv_timeout(Duration::from_millis(50)) {
                Ok(at) => return Ok(at - self.started),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait()?;
                    self.exit = Some(st);
                    bail!(
                        "{} exited ({st}) before printing {:?}:\n{}",
                        self.name,
                        self.marker,
                        indent(&self.output())
                    );
                }
            }
            if let Some(st) = self.child.try_wait()? {
                // Let the readers collect the last lines before reporting.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                self.exit = Some(st);
                bail!(
                    "{} exited ({st}) before printing {:?}:\n{}",
                    self.name,
                    self.marker,
                    indent(&self.output())
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?}; output so far:\n{}",
                    self.name,
                    indent(&self.output())
                );
            }
        }
    }

    /// Everything it printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends the stop signal and waits (SIGKILL after `grace`). Returns the exit status and how
    /// long the stop took.
    pub fn stop(&mut self, grace: Duration) -> Result<(ExitStatus, Duration)> {
        if let Some(st) = self.exit {
            return Ok((st, Duration::ZERO));
        }
        let asked = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), self.stop_signal) };
        let deadline = asked + grace;
        let st = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "bench: {} did not stop within {grace:?}; killing it",
                    self.name
                );
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(5));
        };
        let took = asked.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.exit = Some(st);
        Ok((st, took))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.stop(Duration::from_secs(3));
        }
    }
}

fn reader(
    stream: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    ready: Sender<Instant>,
    marker: &'static str,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut seen = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            {
                let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
                out.push_str(&line);
                out.push('\n');
            }
            // After the line is in `output`: whoever waits for readiness reads it next.
            if !seen && line.contains(marker) {
                seen = true;
                let _ = ready.send(at);
            }
        }
    })
}

pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// CPU time a process uses over an interval, from two sources: per-thread run time in
/// /proc/PID/task/TID/schedstat (nanoseconds, but a thread that exits in between takes its
/// share along) and utime + stime of /proc/PID/stat (every thread, dead ones included, but in
/// 10 ms ticks). Each can only undercount, so the larger of the two is reported.
pub struct CpuMeter {
    pid: i32,
    start: Option<HashMap<i32, u64>>,
    start_ticks_s: f64,
}

impl CpuMeter {
    pub fn start(pid: i32) -> Result<Self> {
        Ok(Self {
            pid,
            start: thread_cpu_ns(pid),
            start_ticks_s: stat_cpu_seconds(pid)?,
        })
    }

    /// CPU seconds since `start`.
    pub fn seconds(&self) -> Result<f64> {
        let ticks = stat_cpu_seconds(self.pid)? - self.start_ticks_s;
        let precise = match (&self.start, thread_cpu_ns(self.pid)) {
            (Some(start), Some(now)) => {
                now.iter()
                    .map(|(tid, ns)| ns.saturating_sub(start.get(tid).copied().unwrap_or(0)))
                    .sum::<u64>() as f64
                    / 1e9
            }
            _ => 0.0,
        };
        Ok(precise.max(ticks))
    }
}

/// On-CPU nanoseconds of every thread of `pid`; `None` without schedstat.
fn thread_cpu_ns(pid: i32) -> Option<HashMap<i32, u64>> {
    let mut out = HashMap::new();
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may exit between readdir and read: skip it.
        let Ok(text) = fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        out.insert(tid, text.split_whitespace().next()?.parse().ok()?);
    }
    (!out.is_empty()).then_some(out)
}

/// User + system CPU time of a process (all its threads, dead ones included), in seconds.
fn stat_cpu_seconds(pid: i32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("unexpected /proc/PID/stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: i32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Whether a process with this pid exists (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with(['Z', 'X']))
    })
}
