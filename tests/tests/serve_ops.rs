//! Operating `fathom serve`: health and readiness endpoints, SIGTERM during scrapes (clean
//! exit 0 within 2 s), a taken port and missing prerequisites (one clear line, exit code 2).

use std::{
    io::Write,
    net::TcpStream,
    os::unix::process::CommandExt as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fathom_tests::{
    fathom::fathom_bin,
    require_root,
    serve::{FathomServe, http_get},
};

#[test]
fn healthz_and_readyz_answer_once_the_programs_are_attached() {
    require_root!();
    let fathom = FathomServe::start(&[]);
    let h = fathom.get("/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = fathom.get("/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("programs: ok: attached oom_mark_victim"),
        "{}",
        r.body
    );
    assert!(r.body.contains("events: ok"), "{}", r.body);
    assert_eq!(fathom.get("/nope").status, 404);
}

#[test]
fn sigterm_during_scrapes_exits_0_within_2s() {
    require_root!();
    let mut fathom = FathomServe::start(&[]);
    let addr = fathom.addr();

    // A connection that sent half a request and stalls: graceful shutdown must not wait
    // for it forever.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();

    // Scrapes back to back, so that the signal lands during one.
    let stop = Arc::new(AtomicBool::new(false));
    let complete = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, complete) = (stop.clone(), complete.clone());
        std::thread::spawn(move || {
            let mut broken = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http_get(addr, "/metrics", &[], Duration::from_secs(5)) {
                    Ok(r) if r.status == 200 => {
                        // A 200 is always a whole exposition, never a cut-off one.
                        if r.body.contains("fathom_build_info") {
                            complete.fetch_add(1, Ordering::Relaxed);
                        } else {
                            broken.push(r.body);
                        }
                    }
                    // Refused / reset once fathom stops accepting: expected.
                    _ => {}
                }
            }
            broken
        })
    };
    assert!(
        fathom_tests::wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            complete.load(Ordering::Relaxed) >= 20
        }),
        "scrapes are not being answered"
    );

    let t = Instant::now();
    let status = fathom.process().stop_with(Duration::from_secs(5));
    let took = t.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    stop.store(true, Ordering::Relaxed);
    let broken = scraper.join().unwrap();
    drop(stalled);

    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        fathom.process().stderr()
    );
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    assert!(broken.is_empty(), "truncated scrapes: {broken:?}");
    let err = fathom.process().stderr();
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fathom: ") && last.ends_with(" lost"),
        "closing line: {last:?}\n{err}"
    );
}

#[test]
fn a_second_instance_on_the_same_port_fails_with_one_line_and_exit_2() {
    require_root!();
    let first = FathomServe::start(&[]);
    let listen = first.addr().to_string();
    let t = Instant::now();
    let out = Command::new(fathom_bin())
        .args(["serve", "--listen", &listen])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("cannot listen on {listen}")) && err.contains("in use"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "fails fast, before loading"
    );
    // The first instance is unaffected.
    assert_eq!(first.get("/healthz").status, 200);
}

#[test]
fn serve_without_privileges_or_btf_exits_2_with_one_line() {
    require_root!();
    let out = Command::new(fathom_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("CAP_BPF"), "{err}");

    let out = Command::new(fathom_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--btf",
            "/nonexistent/vmlinux",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("BTF") && last.contains("/nonexistent/vmlinux"),
        "{err}"
    );
}
