//! Running the real `fathom` binary: `fathom capture --output json …` with its JSON event
//! stream parsed on a reader thread.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

/// Line fathom prints to stderr once every program is loaded and attached.
pub const READY_MARKER: &str = "fathom: ready";

/// Set this environment variable to echo fathom's stderr live into the test output.
pub const ECHO_STDERR_ENV: &str = "FATHOM_TESTS_ECHO_STDERR";

/// The fathom binary: `$FATHOM_BIN`, else `<target>/debug/fathom` (target = `$CARGO_TARGET_DIR`
/// or `<workspace>/target`). Panics with build instructions if it does not exist.
pub fn fathom_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FATHOM_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "FATHOM_BIN={} does not exist: build it with `cargo build -p probe-user` or run `cargo xtask test`",
            p.display()
        );
        return p;
    }
    let p = crate::target_dir().join("debug").join("fathom");
    assert!(
        p.is_file(),
        "{} does not exist: build it with `cargo build -p probe-user` or run `cargo xtask test` (or set FATHOM_BIN)",
        p.display()
    );
    p
}

type Shared<T> = Arc<(Mutex<T>, Condvar)>;

/// A running `fathom capture --output json` whose stdout lines are parsed as JSON events.
/// Dropping it sends SIGTERM, waits up to 3 s, then SIGKILLs; when the test is panicking the
/// captured stderr (and any non-JSON stdout) is printed to help debugging.
pub struct FathomCapture {
    child: Child,
    rx: Receiver<Value>,
    /// Received but not yet consumed by `next_event` / `events_until`.
    pending: VecDeque<Value>,
    /// Every event received so far, in order.
    history: Vec<Value>,
    stderr: Shared<String>,
    non_json: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl std::fmt::Debug for FathomCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FathomCapture")
            .field("pid", &self.child.id())
            .field("events", &self.history.len())
            .finish()
    }
}

impl FathomCapture {
    /// Spawns `fathom capture --output json <args…>`.
    pub fn start(args: &[&str]) -> Self {
        let mut full = vec!["capture", "--output", "json"];
        full.extend_from_slice(args);
        Self::spawn(&full)
    }

    /// Spawns `fathom <args…>` (any subcommand) with the same stdout/stderr handling.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_program(&fathom_bin(), args)
    }

    /// Spawns any program with fathom's stdout/stderr handling (used by the self-tests with a
    /// stand-in script).
    pub fn spawn_program(bin: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");

        let (tx, rx) = channel();
        let non_json = Arc::new(Mutex::new(Vec::new()));
        let nj = non_json.clone();
        let t_out = std::thread::Builder::new()
            .name("fathom-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) => {
                            if tx.send(v).is_err() {
                                break;
                            }
                        }
                        Err(_) => nj.lock().unwrap_or_else(|p| p.into_inner()).push(line),
                    }
                }
            })
            .expect("spawning reader thread");

        let stderr: Shared<String> = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let se = stderr.clone();
        let echo = std::env::var_os(ECHO_STDERR_ENV).is_some();
        let t_err = std::thread::Builder::new()
            .name("fathom-stderr".into())
            .spawn(move || {
                let mut r = BufReader::new(stderr_pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let s = String::from_utf8_lossy(&buf);
                            if echo {
                                eprint!("[fathom] {s}");
                            }
                            let (m, cv) = &*se;
                            m.lock().unwrap_or_else(|p| p.into_inner()).push_str(&s);
                            cv.notify_all();
                        }
                    }
                }
                // EOF: wake waiters so they notice the exit.
                se.1.notify_all();
            })
            .expect("spawning stderr thread");

        FathomCapture {
            child,
            rx,
            pending: VecDeque::new(),
            history: Vec::new(),
            stderr,
            non_json,
            threads: vec![t_out, t_err],
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything fathom wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// stdout lines that were not JSON.
    pub fn non_json_stdout(&self) -> Vec<String> {
        self.non_json
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Exit status if fathom has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits until stderr contains [`READY_MARKER`]. Fails if fathom exits first or on timeout.
    pub fn try_wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let (m, cv) = &*self.stderr;
                let g = m.lock().unwrap_or_else(|p| p.into_inner());
                if g.contains(READY_MARKER) {
                    return Ok(());
                }
                // Short waits so an exit is noticed even when stderr stays silent.
                let _ = cv.wait_timeout(g, Duration::from_millis(50));
            }
            if let Some(st) = self.try_wait() {
                // Give the reader a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                if self.stderr().contains(READY_MARKER) {
                    return Ok(());
                }
                bail!(
                    "fathom exited ({st}) before printing {READY_MARKER:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "fathom not ready after {timeout:?} (no {READY_MARKER:?} on stderr); stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// [`Self::try_wait_ready`], panicking on failure.
    pub fn wait_ready(&mut self, timeout: Duration) {
        if let Err(e) = self.try_wait_ready(timeout) {
            panic!("{e:#}");
        }
    }

    fn recv(&mut self, deadline: Instant) -> Option<Value> {
        let now = Instant::now();
        let wait = deadline.saturating_duration_since(now);
        match self.rx.recv_timeout(wait) {
            Ok(v) => {
                self.history.push(v.clone());
                Some(v)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                // stdout closed (fathom exited): behave like a timeout without sleeping on.
                let rest = deadline.saturating_duration_since(Instant::now());
                if !rest.is_zero() {
                    std::thread::sleep(rest.min(Duration::from_millis(10)));
                }
                None
            }
        }
    }

    /// The first not-yet-consumed event matching `pred`, waiting up to `timeout`. Events that
    /// do not match stay available to later calls (and are in [`Self::history`]).
    pub fn next_event(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.recv(deadline) {
                Some(v) if pred(&v) => return Some(v),
                Some(v) => self.pending.push_back(v),
                None if self.rx_closed() => break,
                None => {}
            }
        }
        None
    }

    fn rx_closed(&mut self) -> bool {
        self.try_wait().is_some() && self.threads.first().is_some_and(|t| t.is_finished())
    }

    /// All not-yet-consumed events up to and including the first one matching `pred`, waiting
    /// up to `timeout` (on timeout: everything received). Consumes what it returns.
    pub fn events_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.pending.pop_front() {
            let hit = pred(&v);
            out.push(v);
            if hit {
                return out;
            }
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.recv(deadline) {
                Some(v) => {
                    let hit = pred(&v);
                    out.push(v);
                    if hit {
                        return out;
                    }
                }
                None if self.rx_closed() => break,
                None => {}
            }
        }
        out
    }

    /// Every not-yet-consumed event arriving within `dur` (consumes them).
    pub fn collect_for(&mut self, dur: Duration) -> Vec<Value> {
        self.events_until(dur, |_| false)
    }

    /// Every event received so far (consumed or not), in arrival order. Call
    /// [`Self::collect_for`] or [`Self::next_event`] first to pull in what is in flight.
    pub fn history(&self) -> &[Value] {
        &self.history
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns the exit status; events that
    /// arrived before the exit stay available.
    pub fn stop_with(&mut self, grace: Duration) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let exited = crate::wait_until(grace, Duration::from_millis(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
        }
        let st = self.child.wait().expect("waiting for fathom");
        self.exit = Some(st);
        // Pull in everything that was printed before exit.
        while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(200)) {
            self.history.push(v.clone());
            self.pending.push_back(v);
        }
        st
    }

    /// [`Self::stop_with`] with a 3 s grace period.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(Duration::from_secs(3))
    }
}

impl Drop for FathomCapture {
    fn drop(&mut self) {
        let st = self.stop();
        for t in self.threads.drain(..) {
            // The pipes are closed once fathom (and anything it spawned holding them) is gone.
            if t.is_finished() {
                let _ = t.join();
            }
        }
        if std::thread::panicking() {
            let nj = self.non_json_stdout();
            eprintln!(
                "--- fathom (pid {}, {st}) stderr ---\n{}{}--- {} event(s) received ---",
                self.child.id(),
                self.stderr(),
                if nj.is_empty() {
                    String::new()
                } else {
                    format!("--- non-JSON stdout ---\n{}\n", nj.join("\n"))
                },
                self.history.len()
            );
        }
    }
}
