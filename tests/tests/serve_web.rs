//! The hardened endpoint of `fathom serve`, against real clients:
//! - TLS and basic auth from a `--web.config.file` (exporter-toolkit format), checked with
//!   curl and with a real Prometheus scraping over HTTPS with basic auth;
//! - thousands of idle and half-request connections: a new client still gets `/metrics`,
//!   fathom's descriptors and RSS stay bounded and it logs no error;
//! - the server's own books (`fathom_http_*`): authentication and TLS failures, connections
//!   evicted and refused at the cap;
//! - the web config read again when its files change: a rotated certificate and password
//!   without a restart, a broken replacement keeping the previous config.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fathom_tests::{
    TempDir,
    prometheus::{JOB, PrometheusServer, ScrapeOptions},
    require_root,
    serve::{FathomServe, Sample, http_get, parse_exposition},
};

/// A self-signed certificate for 127.0.0.1 and `fathom` (openssl), and a web config naming
/// it with one basic-auth user.
struct WebDir {
    dir: TempDir,
}

const USER: &str = "prom";
const PASSWORD: &str = "s3cret-passw0rd";

/// Writes `tls.crt` and `tls.key` into `dir`: a new self-signed certificate (and key) for
/// 127.0.0.1 and `fathom` with subject `CN=<cn>`.
fn make_cert(dir: &Path, cn: &str) {
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
            &format!("/CN={cn}"),
            "-addext",
            "subjectAltName=DNS:fathom,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The web config text: TLS with `tls.crt` / `tls.key` beside it, basic auth for [`USER`].
fn web_config_text(tls: bool, auth: Option<&str>, cost: u32) -> String {
    let mut cfg = String::new();
    if tls {
        // Relative paths: relative to the config file, as the exporter toolkit reads them.
        cfg.push_str("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n");
    }
    if let Some(password) = auth {
        let hash = bcrypt::hash(password, cost).unwrap();
        cfg.push_str(&format!("basic_auth_users:\n  {USER}: '{hash}'\n"));
    }
    cfg
}

impl WebDir {
    fn new(tls: bool, auth: bool) -> Self {
        Self::with_cost(tls, auth, 4)
    }

    /// `cost`: of the bcrypt hash (each check of a wrong password takes that long).
    fn with_cost(tls: bool, auth: bool, cost: u32) -> Self {
        let dir = TempDir::new("fathom-web-").unwrap();
        make_cert(dir.path(), "fathom");
        let cfg = web_config_text(tls, auth.then_some(PASSWORD), cost);
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

/// The value of the one sample `name{labels}`; panics when there is none (every family of
/// the server's books exists from the start).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0].value
}

/// `GET /metrics` over HTTPS with the right credentials, parsed.
fn scrape_https(fathom: &FathomServe, ca: &Path, password: &str) -> Vec<Sample> {
    let url = format!("https://{}/metrics", fathom.addr());
    parse_exposition(&curl_body(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-u",
        &format!("{USER}:{password}"),
        &url,
    ]))
}

/// `GET /metrics` over plain HTTP with the right credentials, parsed.
fn scrape_http(fathom: &FathomServe) -> Vec<Sample> {
    let r = http_get(
        fathom.addr(),
        "/metrics",
        &[("Authorization", &basic(USER, PASSWORD))],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    parse_exposition(&r.body)
}

fn basic(user: &str, password: &str) -> String {
    // A tiny base64 encoder (the test crate has none), enough for an Authorization header.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[test]
fn the_base64_of_basic_auth_is_right() {
    assert_eq!(
        basic("Aladdin", "open sesame"),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    assert_eq!(basic("a", "b"), "Basic YTpi");
    assert_eq!(basic("ab", "c"), "Basic YWI6Yw==");
}

const BOOKS: [(&str, &[(&str, &str)]); 8] = [
    ("fathom_http_connections_total", &[("outcome", "admitted")]),
    ("fathom_http_connections_total", &[("outcome", "refused")]),
    ("fathom_http_connections_evicted_total", &[]),
    ("fathom_http_connections_open", &[]),
    ("fathom_http_auth_failures_total", &[]),
    ("fathom_http_tls_handshake_failures_total", &[]),
    ("fathom_web_config_reloads_total", &[]),
    ("fathom_web_config_reload_failures_total", &[]),
];

#[test]
fn wrong_passwords_and_failed_handshakes_are_counted_exactly() {
    require_root!();
    let web = WebDir::new(true, true);
    let config = web.config();
    let fathom = FathomServe::start(&["--web.config.file", config.to_str().unwrap()]);
    let ca = web.ca();
    let s = scrape_https(&fathom, &ca, PASSWORD);
    // Every family is there from the start, the counters at 0 (increase() sees a first event).
    for (name, labels) in BOOKS {
        let v = value(&s, name, labels);
        if name.ends_with("_total") && !labels.contains(&("outcome", "admitted")) {
            assert_eq!(v, 0.0, "{name}{labels:?}");
        }
    }
    assert_eq!(value(&s, "fathom_http_connections_limit", &[]), 256.0);

    let url = format!("https://{}/metrics", fathom.addr());
    let ca_s = ca.to_str().unwrap();
    const BAD: usize = 3;
    for i in 0..BAD {
        let creds = format!("{USER}:wrong-{i}");
        assert_eq!(curl_status(&["--cacert", ca_s, "-u", &creds, &url]), "401");
    }
    // Probes need no credentials and are no failure.
    let health = format!("https://{}/healthz", fathom.addr());
    assert_eq!(curl_status(&["--cacert", ca_s, &health]), "200");
    let s = scrape_https(&fathom, &ca, PASSWORD);
    assert_eq!(
        value(&s, "fathom_http_auth_failures_total", &[]),
        BAD as f64
    );
    assert_eq!(
        value(&s, "fathom_http_tls_handshake_failures_total", &[]),
        0.0
    );

    // Plain HTTP on the TLS port, and a client that does not trust the certificate.
    assert_eq!(
        curl_status(&[&format!("http://{}/metrics", fathom.addr())]),
        "000"
    );
    assert_eq!(curl_status(&[&url]), "000", "curl without the CA");
    let s = scrape_https(&fathom, &ca, PASSWORD);
    assert_eq!(
        value(&s, "fathom_http_tls_handshake_failures_total", &[]),
        2.0
    );
    assert_eq!(
        value(&s, "fathom_http_auth_failures_total", &[]),
        BAD as f64
    );
    // Scrapes, the probe, the 401s and the two failed handshakes were all admitted.
    assert!(
        value(
            &s,
            "fathom_http_connections_total",
            &[("outcome", "admitted")]
        ) >= 9.0
    );
    assert_eq!(value(&s, "fathom_web_config_reloads_total", &[]), 0.0);
}

/// A bcrypt cost whose check takes at least `at_least` here (fathom runs the same code, built
/// the same way), so that requests with a wrong password stay inside the request that long.
fn slow_bcrypt_cost(at_least: Duration) -> u32 {
    for cost in 6..=16 {
        let hash = bcrypt::hash("x", cost).unwrap();
        let t = Instant::now();
        let _ = bcrypt::verify("y", &hash);
        if t.elapsed() >= at_least {
            return cost;
        }
    }
    16
}

/// Whether the server closed `c` (EOF or reset) within `within`.
fn closed_by_server(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn connections_beyond_the_cap_are_counted_evicted_or_refused() {
    require_root!();
    const CAP: usize = 4;
    let cost = slow_bcrypt_cost(Duration::from_millis(1500));
    let web = WebDir::with_cost(false, true, cost);
    let config = web.config();
    let cap = CAP.to_string();
    let fathom = FathomServe::start(&[
        "--web.max-connections",
        &cap,
        "--web.config.file",
        config.to_str().unwrap(),
    ]);
    let addr = fathom.addr();
    // The first scrape checks (and caches) the right password.
    let s = scrape_http(&fathom);
    assert_eq!(value(&s, "fathom_http_connections_limit", &[]), CAP as f64);
    assert_eq!(value(&s, "fathom_http_connections_evicted_total", &[]), 0.0);
    std::thread::sleep(Duration::from_millis(300));

    // Idle clients beyond the cap: each new one evicts the one quiet longest.
    const IDLE: usize = CAP + 3;
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_by_server(&mut idle[0], Duration::from_secs(2)),
        "the oldest idle client was not evicted"
    );
    // The scrape's own connection evicts one more.
    let s = scrape_http(&fathom);
    assert_eq!(
        value(&s, "fathom_http_connections_evicted_total", &[]),
        (IDLE - CAP + 1) as f64
    );
    assert_eq!(
        value(
            &s,
            "fathom_http_connections_total",
            &[("outcome", "refused")]
        ),
        0.0
    );
    let open = value(&s, "fathom_http_connections_open", &[]);
    assert!((1.0..=(CAP + 4) as f64).contains(&open), "open {open}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));

    // Clients all inside a request (wrong passwords, checked one at a time, each slowly):
    // nothing can be evicted, so new connections are refused.
    let bad = basic(USER, "wrong");
    let mut busy: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    const REFUSED: usize = 2;
    for _ in 0..REFUSED {
        let mut c = TcpStream::connect(addr).unwrap();
        assert!(
            closed_by_server(&mut c, Duration::from_millis(500)),
            "not refused at once"
        );
    }
    // The busy ones get their 401s (one bcrypt check after the other).
    for c in &mut busy {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    drop(busy);
    std::thread::sleep(Duration::from_millis(300));
    let s = scrape_http(&fathom);
    assert_eq!(
        value(
            &s,
            "fathom_http_connections_total",
            &[("outcome", "refused")]
        ),
        REFUSED as f64
    );
    assert_eq!(
        value(&s, "fathom_http_auth_failures_total", &[]),
        CAP as f64
    );
}

/// A directory laid out as the kubelet writes a Secret volume: `..vN/` holds one version of
/// the files, `..data` points at the current one, and each file is a symlink through
/// `..data`; a new version is swapped in with one rename (all files change at once).
struct SecretVolume {
    dir: TempDir,
    version: u32,
}

impl SecretVolume {
    fn new() -> Self {
        let dir = TempDir::new("fathom-web-secret-").unwrap();
        for f in ["web-config.yml", "tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
        }
        SecretVolume { dir, version: 0 }
    }

    /// Swaps in a new version: `write` fills its directory.
    fn publish(&mut self, write: impl FnOnce(&Path)) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let v = self.dir.path().join(&name);
        std::fs::create_dir(&v).unwrap();
        write(&v);
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("web-config.yml")
    }

    /// The current certificate, copied (the symlinks move on).
    fn cert_copy(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::copy(self.dir.path().join("tls.crt"), &p).unwrap();
        p
    }
}

/// `openssl x509 -noout -subject -fingerprint -sha256` of PEM text.
fn cert_identity(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The identity of the certificate a new TLS connection to `addr` is shown.
fn presented_cert(addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "fathom",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    cert_identity(&out.stdout)
}

fn file_identity(path: &Path) -> String {
    cert_identity(&std::fs::read(path).unwrap())
}

/// Polls `f` every 200 ms until it holds; panics naming `what` after `within`.
fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rotated_certificate_and_password_are_served_without_a_restart() {
    require_root!();
    let mut vol = SecretVolume::new();
    vol.publish(|d| {
        make_cert(d, "fathom-v1");
        std::fs::write(
            d.join("web-config.yml"),
            web_config_text(true, Some(PASSWORD), 4),
        )
        .unwrap();
    });
    let config = vol.config();
    let mut fathom = FathomServe::start(&["--web.config.file", config.to_str().unwrap()]);
    let addr = fathom.addr();
    let v1 = vol.cert_copy("v1.crt");
    let id1 = file_identity(&v1);
    assert!(
        id1.contains("CN=fathom-v1") || id1.contains("CN = fathom-v1"),
        "{id1}"
    );
    assert_eq!(presented_cert(addr), id1);

    // cert-manager renews: a new key and certificate, and the password rotates too.
    const PASSWORD2: &str = "an0ther-s3cret";
    vol.publish(|d| {
        make_cert(d, "fathom-v2");
        std::fs::write(
            d.join("web-config.yml"),
            web_config_text(true, Some(PASSWORD2), 4),
        )
        .unwrap();
    });
    let v2 = vol.cert_copy("v2.crt");
    let id2 = file_identity(&v2);
    assert_ne!(id1, id2);
    wait_until(
        "the new certificate presented",
        Duration::from_secs(10),
        || presented_cert(addr) == id2,
    );
    let s = scrape_https(&fathom, &v2, PASSWORD2);
    assert_eq!(value(&s, "fathom_web_config_reloads_total", &[]), 1.0);
    assert_eq!(
        value(&s, "fathom_web_config_reload_failures_total", &[]),
        0.0
    );
    let url = format!("https://{}/metrics", addr);
    let v2_s = v2.to_str().unwrap();
    assert_eq!(
        curl_status(&["--cacert", v2_s, "-u", &format!("{USER}:{PASSWORD}"), &url]),
        "401",
        "the old password"
    );
    assert_eq!(
        curl_status(&[
            "--cacert",
            v1.to_str().unwrap(),
            "-u",
            &format!("{USER}:{PASSWORD2}"),
            &url
        ]),
        "000",
        "the old certificate is no longer served"
    );

    // A broken replacement: the certificate is not PEM. The previous config stays in force.
    let key2 = std::fs::read(vol.dir.path().join("tls.key")).unwrap();
    let cfg2 = std::fs::read(vol.config()).unwrap();
    vol.publish(|d| {
        std::fs::write(d.join("tls.crt"), "not a certificate\n").unwrap();
        std::fs::write(d.join("tls.key"), &key2).unwrap();
        std::fs::write(d.join("web-config.yml"), &cfg2).unwrap();
    });
    wait_until(
        "the reload failure counted",
        Duration::from_secs(10),
        || {
            let s = scrape_https(&fathom, &v2, PASSWORD2);
            value(&s, "fathom_web_config_reload_failures_total", &[]) == 1.0
        },
    );
    assert_eq!(
        presented_cert(addr),
        id2,
        "still the last working certificate"
    );
    // Reported once, not at every look (a look is at most once a second).
    std::thread::sleep(Duration::from_millis(2500));
    let s = scrape_https(&fathom, &v2, PASSWORD2);
    assert_eq!(
        value(&s, "fathom_web_config_reload_failures_total", &[]),
        1.0
    );
    assert_eq!(value(&s, "fathom_web_config_reloads_total", &[]), 1.0);
    let stderr = fathom.process().stderr();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("web config reload failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("tls.crt"),
        "{}",
        warnings[0]
    );

    // Fixed: the next good version is served.
    vol.publish(|d| {
        make_cert(d, "fathom-v3");
        std::fs::write(d.join("web-config.yml"), &cfg2).unwrap();
    });
    let id3 = file_identity(&vol.cert_copy("v3.crt"));
    wait_until(
        "the fixed certificate presented",
        Duration::from_secs(10),
        || presented_cert(addr) == id3,
    );
    let s = scrape_https(&fathom, &vol.cert_copy("v3-ca.crt"), PASSWORD2);
    assert_eq!(value(&s, "fathom_web_config_reloads_total", &[]), 2.0);
    assert_eq!(
        value(&s, "fathom_web_config_reload_failures_total", &[]),
        1.0
    );
    let stderr = fathom.process().stderr();
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("web config reloaded"))
            .count(),
        2,
        "{stderr}"
    );
}
