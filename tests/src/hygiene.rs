//! Finding (and removing) what crashed test processes left behind.
//!
//! Guards clean up on drop, also while unwinding from a panic. Only a process that dies
//! without unwinding (SIGKILL, abort, `panic = "abort"`) leaves things behind. Every resource
//! name made by these helpers carries the creating pid, so leftovers of dead processes can be
//! told apart from resources of tests running right now.
//!
//! Caveat: a pid is judged in *this* pid namespace; do not sweep from inside a container that
//! shares cgroupfs with test processes outside it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cgroup::{all_hierarchy_roots, remove_cgroup_tree};

/// One leftover resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A top-level `fathom-test-<pid>-…` cgroup directory in some hierarchy.
    Cgroup(PathBuf),
    /// A `fathom-<pid>-…` network namespace.
    NetNs(String),
    /// A `fathom-runc-<pid>-…` runc state root or `fathom-bundle-<pid>-…` bundle in the temp dir.
    TempDir(PathBuf),
}

/// The pid embedded after `prefix` in `name` (`<prefix><pid>-…`).
fn pid_after(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn is_stale(pid: Option<u32>, include_live: bool) -> bool {
    match pid {
        Some(p) => include_live || !crate::pid_alive(p),
        None => false,
    }
}

/// Every resource these helpers name, whose creating process is dead (or all of them with
/// `include_live`, e.g. to list what tests running now hold).
pub fn leftovers(include_live: bool) -> Vec<Leftover> {
    let mut out = Vec::new();
    for root in all_hierarchy_roots() {
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_stale(pid_after(&name, crate::CGROUP_PREFIX), include_live) {
                    out.push(Leftover::Cgroup(e.path()));
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_stale(pid_after(&name, "fathom-"), include_live) {
                out.push(Leftover::NetNs(name));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = pid_after(&name, "fathom-runc-").or(pid_after(&name, "fathom-bundle-"));
            if is_stale(pid, include_live) {
                out.push(Leftover::TempDir(e.path()));
            }
        }
    }
    out
}

/// Removes every leftover of dead test processes: kills and deletes runc containers in stale
/// state roots, kills processes in stale cgroups and removes them, deletes stale netns and temp
/// dirs. Returns what it found. Never touches resources of live processes.
pub fn sweep_stale() -> Vec<Leftover> {
    let found = leftovers(false);
    // Containers first (their state roots tell runc what to kill).
    for l in &found {
        if let Leftover::TempDir(d) = l
            && d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("fathom-runc-"))
        {
            delete_all_containers(d);
        }
    }
    for l in &found {
        match l {
            Leftover::Cgroup(p) => {
                if let Err(e) = remove_cgroup_tree(p, Duration::from_secs(5)) {
                    eprintln!("fathom-tests: sweeping {}: {e:#}", p.display());
                }
            }
            Leftover::NetNs(n) => {
                let _ = Command::new("ip")
                    .args(["netns", "del", n])
                    .stderr(Stdio::null())
                    .status();
            }
            Leftover::TempDir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    found
}

fn delete_all_containers(root: &Path) {
    let Ok(o) = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id])
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pid_parsing() {
        assert_eq!(
            pid_after("fathom-test-123-4-abcdef", "fathom-test-"),
            Some(123)
        );
        assert_eq!(pid_after("fathom-runc-77-AbC123", "fathom-runc-"), Some(77));
        assert_eq!(pid_after("fathom-test-x", "fathom-test-"), None);
        assert_eq!(pid_after("other", "fathom-"), None);
    }
}
