//! The hardened endpoint of `fathom serve`, against real clients:
//! - TLS and basic auth from a `--web.config.file` (exporter-toolkit format), checked with
//!   curl and with a real Prometheus scraping over HTTPS with basic auth;
//! - thousands of idle and half-request connections: a new client still gets `/metrics`,
//!   fathom's descriptors and RSS stay bounded and it logs no error.

use std::{io::Write as _, net::TcpStream, path::PathBuf, process::Command, time::Duration};

use fathom_tests::{
    TempDir,
    prometheus::{JOB, PrometheusServer, ScrapeOptions},
    require_root,
    serve::{FathomServe, http_get},
};

/// A self-signed certificate for 127.0.0.1 and `fathom` (openssl), and a web config naming
/// it with one basic-auth user.
struct WebDir {
    dir: TempDir,
}

const USER: &str = "prom";
const PASSWORD: &str = "s3cret-passw0rd";

impl WebDir {
    fn new(tls: bool, auth: bool) -> Self {
        let dir = TempDir::new("fathom-web-").unwrap();
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=fathom",
                "-addext",
                "subjectAltName=DNS:fathom,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(dir.path().join("tls.key"))
            .arg("-out")
            .arg(dir.path().join("tls.crt"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cfg = String::new();
        if tls {
            // Relative paths: relative to the config file, as the exporter toolkit reads them.
            cfg.push_str("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n");
        }
        if auth {
            let hash = bcrypt::hash(PASSWORD, 4).unwrap();
            cfg.push_str(&format!("basic_auth_users:\n  {USER}: '{hash}'\n"));
        }
        std::fs::write(dir.path().join("web-config.yml"), cfg).unwrap();
        WebDir { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("web-config.yml")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
}

/// `curl -s -o /dev/null -w %{http_code}` with extra args; "000" when no HTTP answer came.
fn curl_status(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn curl_body(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_and_basic_auth_from_the_web_config_with_curl_and_prometheus() {
    require_root!();
    let web = WebDir::new(true, true);
    let config = web.config();
    let fathom = FathomServe::start(&["--web.config.file", config.to_str().unwrap()]);
    let url = format!("https://{}/metrics", fathom.addr());
    let ca = web.ca();
    let ca = ca.to_str().unwrap();
    let creds = format!("{USER}:{PASSWORD}");

    let body = curl_body(&["--cacert", ca, "-u", &creds, &url]);
    assert!(body.contains("fathom_build_info"), "{body}");
    assert_eq!(
        curl_status(&["--cacert", ca, &url]),
        "401",
        "no credentials"
    );
    assert_eq!(
        curl_status(&["--cacert", ca, "-u", &format!("{USER}:wrong"), &url]),
        "401",
        "wrong password"
    );
    assert_eq!(
        curl_status(&["--cacert", ca, "-u", &format!("nobody:{PASSWORD}"), &url]),
        "401",
        "unknown user"
    );
    // Probes need no credentials (kubelet); plain HTTP gets no HTTP answer at all.
    let health = format!("https://{}/healthz", fathom.addr());
    assert_eq!(curl_status(&["--cacert", ca, &health]), "200");
    assert_eq!(
        curl_status(&[&format!("http://{}/metrics", fathom.addr())]),
        "000",
        "plain HTTP on the TLS port"
    );

    let prom = PrometheusServer::start_with(
        &[fathom.addr()],
        &ScrapeOptions {
            https_ca_file: Some(web.ca()),
            basic_auth: Some((USER.into(), PASSWORD.into())),
            ..Default::default()
        },
    );
    prom.wait_for_series(
        &format!("fathom_build_info{{job=\"{JOB}\"}}"),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", prom.log()));
    let up = prom.query(&format!("up{{job=\"{JOB}\"}}")).unwrap();
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
}

#[test]
fn a_bad_web_config_is_one_line_and_exit_2() {
    let dir = TempDir::new("fathom-web-bad-").unwrap();
    let p = dir.path().join("web.yml");
    std::fs::write(&p, "basic_auth_users:\n  prom: plaintext\n").unwrap();
    let out = Command::new(fathom_tests::fathom::fathom_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--web.config.file"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a bcrypt hash"), "{err}");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Raises our own descriptor limit so the flood can be made.
fn raise_own_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

#[test]
fn thousands_of_idle_and_slow_connections_cannot_silence_it() {
    require_root!();
    const CAP: usize = 64;
    let limit = raise_own_nofile();
    let flood = 3000.min((limit as usize).saturating_sub(200));
    assert!(
        flood >= 1000,
        "descriptor limit {limit} too low for the flood"
    );
    let cap = CAP.to_string();
    let mut fathom = FathomServe::start(&["--web.max-connections", &cap]);
    let (pid, addr) = (fathom.pid(), fathom.addr());
    assert_eq!(fathom.get("/metrics").status, 200);
    let (fds0, rss0) = (fd_count(pid), rss_kib(pid));

    // Half idle (connect, say nothing), half slow (half a request, then nothing).
    let mut conns = Vec::with_capacity(flood);
    for i in 0..flood {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            continue;
        };
        if i % 2 == 1 {
            let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: slow");
        }
        conns.push(c);
    }
    assert!(
        conns.len() >= flood / 2,
        "only {} connections made",
        conns.len()
    );
    // A new client gets its answer, several times, while the flood holds its sockets.
    for _ in 0..5 {
        let r = http_get(addr, "/metrics", &[], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("/metrics under the flood: {e:#}"));
        assert_eq!(r.status, 200);
        assert!(r.body.contains("fathom_build_info"));
        let r = http_get(addr, "/readyz", &[], Duration::from_secs(10)).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let (fds1, rss1) = (fd_count(pid), rss_kib(pid));
    assert!(
        fds1 <= fds0 + CAP + 16,
        "fathom holds {fds1} descriptors (was {fds0}, cap {CAP})"
    );
    assert!(
        rss1 <= rss0 + 64 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    drop(conns);
    // Its own /proc scans went on: a topology rescan (every 2 s) passes without an error.
    std::thread::sleep(Duration::from_secs(3));
    let stderr = fathom.process().stderr();
    assert!(
        !stderr.contains("Too many open files") && !stderr.contains(" ERROR "),
        "{stderr}"
    );
}
