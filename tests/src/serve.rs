//! `fathom serve` under test: a guard around the running exporter on a free loopback port, a
//! minimal HTTP/1.1 client (std only), the Prometheus text-format parser the assertions use,
//! and `promtool check metrics`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::fathom::FathomCapture;

/// How long `fathom serve` may take to load its programs and print the ready line.
pub const SERVE_READY: Duration = Duration::from_secs(30);

/// Marker in the ready line that precedes the bound address.
const SERVING: &str = "serving http";

/// A running `fathom serve --listen 127.0.0.1:0 …`. The kernel picks the port (no race with
/// other tests); it is read back from the ready line. Dropping it stops fathom (SIGTERM, then
/// SIGKILL after 3 s) and prints its stderr when the test is panicking.
#[derive(Debug)]
pub struct FathomServe {
    process: FathomCapture,
    addr: SocketAddr,
}

impl FathomServe {
    /// Starts `fathom serve --listen 127.0.0.1:0 <args…>` and waits until it serves.
    pub fn start(args: &[&str]) -> Self {
        let mut full = vec!["serve", "--listen", "127.0.0.1:0"];
        full.extend_from_slice(args);
        Self::start_raw(&full)
    }

    /// Starts `fathom <args…>` (which must run `serve`) and waits until it serves.
    pub fn start_raw(args: &[&str]) -> Self {
        let mut process = FathomCapture::spawn(args);
        process.wait_ready(SERVE_READY);
        let stderr = process.stderr();
        let addr = parse_serving_addr(&stderr)
            .unwrap_or_else(|| panic!("no {SERVING:?} in fathom's ready line; stderr:\n{stderr}"));
        FathomServe { process, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What fathom printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The underlying process guard (stderr, exit status, stop).
    pub fn process(&mut self) -> &mut FathomCapture {
        &mut self.process
    }

    /// `GET <path>`.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, &[], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {path} from fathom at {}: {e:#}", self.addr))
    }

    /// `GET /metrics` (Prometheus text format); panics unless the answer is 200.
    pub fn scrape(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        r.body
    }

    /// `GET /metrics`, parsed.
    pub fn samples(&self) -> Vec<Sample> {
        parse_exposition(&self.scrape())
    }
}

/// The address in `… serving http://<addr>/metrics` (or `https://`).
pub fn parse_serving_addr(stderr: &str) -> Option<SocketAddr> {
    let rest = &stderr[stderr.find(SERVING)? + SERVING.len()..];
    let rest = rest.strip_prefix("s").unwrap_or(rest).strip_prefix("://")?;
    rest[..rest.find('/')?].parse().ok()
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close` (the body is whatever comes until EOF,
/// de-chunked if needed). `headers` are extra request headers.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            bail!("truncated body: {} of {len} bytes", body.len());
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// True when every `(name, value)` of `want` is among the labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Parses Prometheus text format (also the sample lines of OpenMetrics). Comments and blank
/// lines are skipped; panics on a line it cannot read, naming it.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line {l:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        // `key="value"` pairs separated by commas; values escape \\, \" and \n.
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = r.split_once('=')?;
            let mut chars = after_key.strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            r = &after_key[1 + end + 1..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The samples named `name` whose labels include `labels`.
pub fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .collect()
}

/// The value of the one sample named `name` with `labels` (panics if several match).
pub fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = find(samples, name, labels);
    assert!(
        found.len() <= 1,
        "{} samples of {name} match {labels:?}: {found:?}",
        found.len()
    );
    found.first().map(|s| s.value)
}

/// `promtool check metrics` on `text`: (exit code, everything promtool printed). Exit code 0
/// with no output means no parse error and no lint warning.
pub fn promtool_check_metrics(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (apt install prometheus)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let text = "# HELP x_total h\n# TYPE x_total counter\n\
                    x_total{a=\"1\",b=\"q\\\"uo,te}\",c=\"\"} 3\n\
                    y 0.5\n\
                    z{} +Inf\n";
        let s = parse_exposition(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].labels["b"], "q\"uo,te}");
        assert_eq!(s[0].labels["c"], "");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(value_of(&s, "y", &[]), Some(0.5));
        assert!(s[2].value.is_infinite());
        assert_eq!(find(&s, "x_total", &[("a", "1")]).len(), 1);
        assert!(find(&s, "x_total", &[("a", "2")]).is_empty());
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse_response(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok").is_err());
    }

    #[test]
    fn finds_the_serving_address() {
        let e = "x\nfathom: ready: attached a, b; serving http://127.0.0.1:4321/metrics\n";
        assert_eq!(
            parse_serving_addr(e),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(parse_serving_addr("fathom: ready: attached a"), None);
    }
}
