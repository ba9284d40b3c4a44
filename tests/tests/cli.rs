//! The `fathom` command line on bad input: one clear line and the documented exit codes.

use std::{os::unix::process::CommandExt as _, process::Command};

use fathom_tests::{fathom::fathom_bin, require_root};

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = Command::new(fathom_bin())
        .args(["capture", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn unusable_netns_or_pcap_path_is_one_line_before_anything_loads() {
    let out = Command::new(fathom_bin())
        .args(["capture", "--netns", "/nonexistent/ns/net"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/ns/net"), "{err}");

    require_root!();
    let out = Command::new(fathom_bin())
        .args([
            "capture",
            "--pcap",
            "/nonexistent-dir/x.pcapng",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot create /nonexistent-dir/x.pcapng") && !err.contains("ready"),
        "{err}"
    );
}

#[test]
fn without_privileges_it_says_what_is_missing_and_exits_2() {
    require_root!();
    // Drop to nobody: no capabilities at all.
    let out = Command::new(fathom_bin())
        .args(["capture", "--duration", "1s"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("CAP_BPF") && err.contains("root"), "{err}");
}

#[test]
fn missing_btf_is_one_clear_line() {
    require_root!();
    let out = Command::new(fathom_bin())
        .args([
            "capture",
            "--duration",
            "1s",
            "--btf",
            "/nonexistent/vmlinux",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains("BTF") && last.contains("/nonexistent/vmlinux"),
        "{err}"
    );
}

#[test]
fn capture_ends_after_duration_with_exit_0() {
    require_root!();
    let start = std::time::Instant::now();
    let out = Command::new(fathom_bin())
        .args(["capture", "--output", "json", "--duration", "2s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed().as_secs_f64() >= 2.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fathom: ready: attached oom_mark_victim"),
        "{err}"
    );
}

#[test]
fn sigterm_ends_capture_cleanly() {
    require_root!();
    let mut f = fathom_tests::FathomCapture::start(&[]);
    f.wait_ready(std::time::Duration::from_secs(30));
    let status = f.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        f.stderr()
    );
}

/// One line on stderr, exit code 2, and `want` in it.
fn refused(args: &[&str], env: Option<(&str, &str)>, want: &str) {
    let mut cmd = Command::new(fathom_bin());
    cmd.args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn netns_must_name_a_network_namespace() {
    refused(
        &["capture", "--netns", "/etc/passwd"],
        None,
        "--netns /etc/passwd: not a namespace file",
    );
    refused(
        &["capture", "--netns", "/proc/self/ns/pid"],
        None,
        "not a network namespace",
    );
    refused(
        &["capture", "--netns", "123"],
        None,
        "--netns 123: no network namespace with this inode",
    );
}

#[test]
fn a_network_namespace_by_inode_or_path_is_accepted() {
    require_root!();
    let ns = fathom_tests::netns::NetNs::new();
    let path = ns.path();
    for arg in [ns.inode().to_string(), path.display().to_string()] {
        let out = Command::new(fathom_bin())
            .args(["capture", "--duration", "1s", "--netns", &arg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "--netns {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn reason_must_be_a_drop_reason_of_the_running_kernel() {
    // The list comes from the running kernel's BTF.
    refused(
        &["capture", "--reason", "NOPE"],
        None,
        "--reason NOPE: the running kernel has no such drop reason; it knows: ",
    );
    let out = Command::new(fathom_bin())
        .args(["capture", "--reason", "NOPE"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NO_SOCKET") && err.contains("NOT_SPECIFIED"),
        "{err}"
    );
}

#[test]
fn a_fathom_log_that_does_not_parse_is_refused() {
    refused(
        &["capture", "--duration", "1s"],
        Some(("FATHOM_LOG", "garbage")),
        "FATHOM_LOG=garbage",
    );
    refused(
        &["capture", "--duration", "1s"],
        Some(("FATHOM_LOG", "fathom=loud")),
        "FATHOM_LOG=fathom=loud",
    );
}

#[test]
fn a_taken_listen_address_says_the_os_error_once() {
    require_root!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(fathom_bin())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("fathom: cannot listen"))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(line.matches("Address already in use").count(), 1, "{line}");
}
