//! A memory cgroup's own pressure counters, read from its cgroup files when asked.
//!
//! cgroup v2 (`memory.*` in the cgroup2 directory): `memory.max`, `memory.current`,
//! `memory.peak` (Linux 5.19+), `memory.events` (`high`, `max`, `oom`, `oom_kill`, hierarchical:
//! a pod's counts include its containers'). cgroup v1 (`memory` hierarchy): `limit_in_bytes`,
//! `usage_in_bytes`, `max_usage_in_bytes`, `failcnt` + `memsw.failcnt` (failed charges against
//! the memory and the memory+swap limit, the counterpart of v2's `max`), `oom_control` (`oom_kill`, Linux 4.13+; v1 has no `oom` count).
//! PSI (`memory.pressure`, `some` / `full` `total=` in µs) lives in the cgroup2 directory on
//! every layout: on hybrid hosts in the cgroup2 directory of the same path, which exists when
//! the runtime joined cgroup2 too (runc, systemd and the kubelet do).

use std::path::{Path, PathBuf};

/// What one cgroup's files say. `None`: the file or key does not exist on this layout/kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupPressure {
    /// `None`: no limit ("max" / the v1 "unlimited" value).
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    /// Highest usage seen (v1 `max_usage_in_bytes`, v2 `memory.peak`).
    pub max_usage_bytes: Option<u64>,
    /// v2 `memory.events max`, v1 `memory.failcnt` + `memory.memsw.failcnt`.
    pub limit_hits: Option<u64>,
    /// v2 `memory.events high`.
    pub high_events: Option<u64>,
    /// v2 `memory.events oom` (the OOM killer was invoked, with or without a kill).
    pub oom_events: Option<u64>,
    /// v2 `memory.events oom_kill`, v1 `memory.oom_control oom_kill`.
    pub oom_kill_events: Option<u64>,
    pub psi: Option<Psi>,
}

/// `memory.pressure`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Psi {
    /// `some total=`: µs during which at least one task of the cgroup stalled on memory.
    pub some_total_us: u64,
    /// `full total=`: µs during which all its non-idle tasks stalled at once.
    pub full_total_us: u64,
    /// `some avg10=` / `avg60=`: the kernel's running averages, percent of wall time.
    pub some_avg10: f64,
    pub some_avg60: f64,
}

/// Where a memory cgroup's files are: its directory in the memory hierarchy, whether that is
/// cgroup2, and its cgroup2 directory for PSI (the same directory on pure v2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDirs {
    pub memory: PathBuf,
    pub memory_is_v2: bool,
    pub unified: Option<PathBuf>,
}

impl CgroupDirs {
    /// The directories of `path` (relative to the hierarchy roots, "/a/b").
    pub fn of(path: &str, memory_root: &Path, unified_root: Option<&Path>) -> Self {
        Self::of_layout(path, memory_root, is_v2(memory_root), unified_root)
    }

    /// [`Self::of`] with the memory hierarchy's version known ([`is_v2`] of its root): no
    /// file system access, for callers that take many cgroups at a time.
    pub fn of_layout(
        path: &str,
        memory_root: &Path,
        memory_is_v2: bool,
        unified_root: Option<&Path>,
    ) -> Self {
        let rel = path.trim_start_matches('/');
        let memory = memory_root.join(rel);
        let unified = if memory_is_v2 {
            Some(memory.clone())
        } else {
            unified_root.map(|u| u.join(rel))
        };
        Self {
            memory,
            memory_is_v2,
            unified,
        }
    }

    /// [`Self::read`] for a cgroup with a memory limit; `None` without one (or when the
    /// cgroup is gone): the limit is read first, and only then the rest.
    pub fn read_if_limited(&self) -> Option<CgroupPressure> {
        self.limit_bytes()?;
        Some(self.read())
    }

    /// Reads every file (a handful of small reads from kernfs, no disk I/O).
    pub fn read(&self) -> CgroupPressure {
        let m = &self.memory;
        let mut p = if self.memory_is_v2 {
            let events = read(&m.join("memory.events"));
            let key = |k: &str| events.as_deref().and_then(|t| keyed(t, k));
            CgroupPressure {
                limit_bytes: read(&m.join("memory.max")).and_then(|t| limit(&t)),
                usage_bytes: read(&m.join("memory.current")).and_then(|t| number(&t)),
                max_usage_bytes: read(&m.join("memory.peak")).and_then(|t| number(&t)),
                limit_hits: key("max"),
                high_events: key("high"),
                oom_events: key("oom"),
                oom_kill_events: key("oom_kill"),
                psi: None,
            }
        } else {
            CgroupPressure {
                limit_bytes: read(&m.join("memory.limit_in_bytes")).and_then(|t| limit(&t)),
                usage_bytes: read(&m.join("memory.usage_in_bytes")).and_then(|t| number(&t)),
                max_usage_bytes: read(&m.join("memory.max_usage_in_bytes"))
                    .and_then(|t| number(&t)),
                // A v1 charge is tried against memory+swap first (with swap accounting), then
                // memory (mm/memcontrol.c try_charge_memcg); each failure counts at the one
                // counter that refused it, so the hits of both limits add up.
                limit_hits: read(&m.join("memory.failcnt"))
                    .and_then(|t| number(&t))
                    .map(|n| {
                        n + read(&m.join("memory.memsw.failcnt"))
                            .and_then(|t| number(&t))
                            .unwrap_or(0)
                    }),
                high_events: None,
                oom_events: None,
                oom_kill_events: read(&m.join("memory.oom_control"))
                    .and_then(|t| keyed(&t, "oom_kill")),
                psi: None,
            }
        };
        p.psi = self
            .unified
            .as_ref()
            .and_then(|u| read(&u.join("memory.pressure")))
            .and_then(|t| parse_psi(&t));
        p
    }

    /// Whether the cgroup has a memory limit (one read).
    pub fn limit_bytes(&self) -> Option<u64> {
        let f = if self.memory_is_v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        read(&self.memory.join(f)).and_then(|t| limit(&t))
    }
}

/// Whether a memory hierarchy root is cgroup2.
pub fn is_v2(memory_root: &Path) -> bool {
    memory_root.join("cgroup.controllers").exists()
}

/// A small kernfs file: open, read until EOF into a stack buffer, close (no `statx` for a size
/// hint as `fs::read_to_string` makes: these files report size 4096 and are a few lines).
/// Thousands of cgroups are read per scrape. Longer files (not read here) are cut at 1 KiB.
fn read(p: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(p).ok()?;
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    String::from_utf8(buf[..n].to_vec()).ok()
}

fn number(t: &str) -> Option<u64> {
    t.trim().parse().ok()
}

/// v2 "max" and v1's "unlimited" (`PAGE_COUNTER_MAX` pages, rounded: ≥ 2^62 here) are no
/// limit.
fn limit(t: &str) -> Option<u64> {
    let t = t.trim();
    if t == "max" {
        return None;
    }
    number(t).filter(|&v| v < 1 << 62)
}

/// `key value` lines (`memory.events`, `memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// `memory.pressure`: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.
pub fn parse_psi(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut seen_some = false;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let kind = it.next()?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        };
        let total: u64 = field("total")?.parse().ok()?;
        match kind {
            "some" => {
                seen_some = true;
                psi.some_total_us = total;
                psi.some_avg10 = field("avg10")?.parse().ok()?;
                psi.some_avg60 = field("avg60")?.parse().ok()?;
            }
            "full" => psi.full_total_us = total,
            _ => {}
        }
    }
    seen_some.then_some(psi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_psi_lines() {
        let t = "some avg10=56.07 avg60=24.11 avg300=6.07 total=17904143\n\
                 full avg10=50.00 avg60=20.00 avg300=5.00 total=15000000\n";
        let p = parse_psi(t).unwrap();
        assert_eq!(p.some_total_us, 17_904_143);
        assert_eq!(p.full_total_us, 15_000_000);
        assert_eq!(p.some_avg10, 56.07);
        assert_eq!(p.some_avg60, 24.11);
        // Kernels before 5.13 print no `full` line for the CPU resource; memory always has it,
        // but a `some` line alone still parses.
        let p = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!((p.some_total_us, p.full_total_us), (5, 0));
        assert_eq!(parse_psi(""), None);
        assert_eq!(parse_psi("garbage\n"), None);
    }

    #[test]
    fn parses_keyed_files_and_limits() {
        let events = "low 0\nhigh 3\nmax 1044217\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "max"), Some(1_044_217));
        assert_eq!(keyed(events, "oom"), Some(2));
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "nope"), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("9223372036854771712\n"), None, "v1 unlimited");
        assert_eq!(limit("67108864\n"), Some(64 << 20));
    }

    #[test]
    fn hybrid_layout_takes_psi_from_the_same_path_under_cgroup2() {
        let d = CgroupDirs::of(
            "/kubepods/x",
            Path::new("/nonexistent/memory"),
            Some(Path::new("/u")),
        );
        assert!(!d.memory_is_v2);
        assert_eq!(d.memory, Path::new("/nonexistent/memory/kubepods/x"));
        assert_eq!(d.unified.as_deref(), Some(Path::new("/u/kubepods/x")));
        assert_eq!(d.read(), CgroupPressure::default(), "nothing there");
    }
}
