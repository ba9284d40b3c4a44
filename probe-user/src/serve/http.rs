//! The HTTP(S) server of `fathom serve`, hardened against clients that hold connections:
//!
//! - **Connection cap** ([`Limits::max_connections`], kept well below `RLIMIT_NOFILE`, which
//!   [`raise_nofile_limit`] raises to its hard limit at start): fathom's own work (`/proc`
//!   scans, namespace handles, BPF maps) always finds descriptors. At the cap, a new
//!   connection **evicts** the connection that has been quiet longest among those not inside
//!   a request: a flood of idle or slow clients cannot lock out Prometheus, it only makes the
//!   attackers' connections short-lived. Only when every connection is inside a request (each
//!   takes milliseconds) is the new one closed at once.
//! - **Header-read timeout** (hyper's, from the first byte of a request), **TLS handshake
//!   timeout** (the same bound), **idle timeout** (no byte either way for that long closes a
//!   kept-alive connection).
//! - **Bounded memory per connection**: hyper's read buffer is capped at [`MAX_BUF`], 100
//!   headers at most, and only `GET` of a few small routes exists.
//! - Optional **TLS** (rustls) and **basic auth** (bcrypt) from [`WebConfig`]; `/healthz` and
//!   `/readyz` answer without credentials (kubelet probes), `/metrics` needs them. The config
//!   is read again when its files change ([`WebWatch`]: checked on new connections and
//!   requests, at most once per [`RELOAD_CHECK`]), so rotated certificates and passwords take
//!   effect without a restart.
//! - Its own books ([`HttpStats`]) are exported by [`crate::metrics::self_metrics::HttpMetrics`]:
//!   connections admitted, refused and evicted at the cap, open now, authentication and TLS
//!   handshake failures, web config reloads.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Notify, Semaphore, watch},
};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::web_config::{Reload, Stamp, WebConfig};

/// hyper's per-connection read buffer bound (its minimum is 8 KiB).
pub const MAX_BUF: usize = 16 * 1024;

/// Limits of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Whole request header, and the TLS handshake, within this.
    pub header_read_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// How often at most the web config's files are looked at for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Counts of the server, exported by [`crate::metrics::self_metrics::HttpMetrics`] as
/// `fathom_http_*` and `fathom_web_config_*`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Accepted connections let in under the cap (possibly after an eviction).
    pub admitted: AtomicU64,
    /// Open connections closed at the cap to make room for a new one.
    pub evicted: AtomicU64,
    /// Accepted connections closed at once at the cap: every open one was inside a request.
    pub refused: AtomicU64,
    /// Admitted connections whose task has not ended yet.
    pub open: AtomicU64,
    /// Requests answered 401 (credentials missing, malformed or wrong).
    pub auth_failures: AtomicU64,
    /// TLS handshakes that failed or timed out (not those cut by an eviction or the stop).
    pub tls_failures: AtomicU64,
    /// Changed web config files loaded.
    pub web_config_reloads: AtomicU64,
    /// Changed web config files that did not load (the previous config stayed in force).
    pub web_config_reload_failures: AtomicU64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The connection cap in force: the asked one, but at most a quarter of the descriptor limit.
pub fn effective_cap(asked: usize, nofile: u64) -> usize {
    asked.min((nofile / 4).max(16) as usize).max(1)
}

/// One open connection, as the eviction sees it.
struct Conn {
    last_activity: Arc<AtomicU64>,
    busy: Arc<AtomicBool>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, Conn>,
}

/// Milliseconds since `epoch` (monotonic), for the activity stamps.
fn millis(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A transport that stamps each read and write.
struct Stamped<T> {
    inner: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(millis(self.epoch), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.last.store(millis(self.epoch), Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Basic-auth checking with a small cache of accepted `Authorization` values (bcrypt costs
/// tens of milliseconds by design; Prometheus sends the same header every scrape). Failed
/// attempts are verified one at a time, so guessing cannot take every core.
struct Auth {
    users: std::collections::BTreeMap<String, String>,
    accepted: Mutex<std::collections::HashSet<String>>,
    one_at_a_time: Semaphore,
}

const AUTH_CACHE: usize = 64;

impl Auth {
    async fn check(self: &Arc<Self>, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        if self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(value)
        {
            return true;
        }
        let Some(b64) = value.strip_prefix("Basic ") else {
            return false;
        };
        use base64::Engine as _;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Ok(raw) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, password)) = raw.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user).cloned() else {
            return false;
        };
        let Ok(_permit) = self.one_at_a_time.acquire().await else {
            return false;
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if ok {
            let mut cache = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= AUTH_CACHE {
                cache.clear();
            }
            cache.insert(value.to_owned());
        }
        ok
    }
}

fn unauthorized() -> Response<Body> {
    let mut r = Response::new(Body::from("Unauthorized\n"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"fathom\""),
    );
    r
}

/// What connections use of the web config in force.
struct Live {
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<Arc<Auth>>,
}

impl Live {
    /// `previous`: the users' check in force, kept (with its cache) when the users and
    /// hashes are the same, as on a certificate rotation.
    fn new(web: Option<&WebConfig>, previous: Option<&Arc<Auth>>) -> Self {
        let tls = web
            .and_then(|w| w.tls.clone())
            .map(tokio_rustls::TlsAcceptor::from);
        let auth = web.filter(|w| !w.users.is_empty()).map(|w| match previous {
            Some(p) if p.users == w.users => p.clone(),
            _ => Arc::new(Auth {
                users: w.users.clone(),
                accepted: Mutex::default(),
                one_at_a_time: Semaphore::new(1),
            }),
        });
        Live { tls, auth }
    }
}

/// The web config in force, read again when its files change.
struct WebWatch {
    state: Mutex<WatchState>,
    stats: Arc<HttpStats>,
}

struct WatchState {
    config: Option<WebConfig>,
    /// The files of the last load attempt, as they were then.
    last_attempt: Stamp,
    checked: Instant,
    live: Arc<Live>,
}

impl WebWatch {
    fn new(config: Option<WebConfig>, stats: Arc<HttpStats>) -> Self {
        let live = Arc::new(Live::new(config.as_ref(), None));
        WebWatch {
            state: Mutex::new(WatchState {
                last_attempt: config.as_ref().map(WebConfig::stamp).unwrap_or_default(),
                config,
                checked: Instant::now(),
                live,
            }),
            stats,
        }
    }

    /// The config in force, after reloading it if [`RELOAD_CHECK`] has passed since the
    /// last look and its files changed. (A few `stat`s; the files are small and local.)
    fn current(&self) -> Arc<Live> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            if let Some(config) = &st.config {
                match config.reload_if_changed(&mut st.last_attempt) {
                    Reload::Unchanged => {}
                    Reload::Reloaded(new) => {
                        let live = Live::new(Some(&new), st.live.auth.as_ref());
                        info!(
                            path = %new.path().unwrap_or(std::path::Path::new("")).display(),
                            tls = new.tls.is_some(),
                            users = new.users.len(),
                            "web config reloaded"
                        );
                        st.live = Arc::new(live);
                        st.config = Some(*new);
                        self.stats
                            .web_config_reloads
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Reload::Failed(e) => {
                        warn!(error = %e, "web config reload failed; keeping the previous one");
                        self.stats
                            .web_config_reload_failures
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        st.live.clone()
    }
}

/// How a TLS handshake ended.
enum Handshake<S> {
    Done(S),
    Failed(std::io::Error),
    TimedOut,
    /// Evicted or stopping: not the client's failure.
    Closed,
}

/// Serves `app` on `listener` until `stop` turns true, then closes idle connections and
/// returns once the open requests are done (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    web: Option<WebConfig>,
    limits: Limits,
    stats: Arc<HttpStats>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let web = Arc::new(WebWatch::new(web, stats.clone()));
    let conns = Arc::new(Mutex::new(Conns::default()));
    let epoch = Instant::now();
    let stopping = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE / ENFILE / ECONNABORTED: transient; back off a little so a
                    // descriptor shortage does not spin.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let last = Arc::new(AtomicU64::new(millis(epoch)));
        let busy = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        let id = {
            let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
            if c.open.len() >= limits.max_connections {
                let victim = c
                    .open
                    .iter()
                    .filter(|(_, v)| !v.busy.load(Ordering::Relaxed))
                    .min_by_key(|(_, v)| v.last_activity.load(Ordering::Relaxed))
                    .map(|(k, _)| *k);
                match victim.and_then(|k| c.open.remove(&k)) {
                    Some(v) => {
                        v.close.notify_one();
                        stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        drop(tcp);
                        continue;
                    }
                }
            }
            let id = c.next_id;
            c.next_id += 1;
            c.open.insert(
                id,
                Conn {
                    last_activity: last.clone(),
                    busy: busy.clone(),
                    close: close.clone(),
                },
            );
            id
        };
        stats.admitted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let io = Stamped {
            inner: tcp,
            last: last.clone(),
            epoch,
        };
        let ctx = ConnCtx {
            app: app.clone(),
            web: web.clone(),
            busy,
            last,
            epoch,
            close,
            stopping: stopping.clone(),
            limits,
            stats: stats.clone(),
        };
        // The certificate of the config in force when the connection came.
        let tls = web.current().tls.clone();
        let conns = conns.clone();
        tasks.spawn(async move {
            match tls {
                None => ctx.run(io).await,
                Some(acceptor) => {
                    let hs = tokio::select! {
                        r = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io)) => match r {
                            Ok(Ok(s)) => Handshake::Done(s),
                            Ok(Err(e)) => Handshake::Failed(e),
                            Err(_) => Handshake::TimedOut,
                        },
                        _ = ctx.close.notified() => Handshake::Closed,
                    };
                    match hs {
                        Handshake::Done(s) => ctx.run(s).await,
                        Handshake::Failed(e) => {
                            ctx.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Handshake::TimedOut => {
                            ctx.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, "TLS handshake timed out");
                        }
                        Handshake::Closed => debug!(%peer, "closed during the TLS handshake"),
                    }
                }
            }
            conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .open
                .remove(&id);
            ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
        });
        // Reap finished tasks so the set does not grow with every connection ever made.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    stopping.notify_waiters();
    // Ask every connection to finish (idle ones close at once).
    for c in conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .open
        .values()
    {
        c.close.notify_one();
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` is true (the watch guard does not leave this future: it is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

struct ConnCtx {
    app: Router,
    web: Arc<WebWatch>,
    busy: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    epoch: Instant,
    close: Arc<Notify>,
    stopping: Arc<Notify>,
    limits: Limits,
    stats: Arc<HttpStats>,
}

impl ConnCtx {
    async fn run<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(&self, io: I) {
        let app = self.app.clone();
        let web = self.web.clone();
        let busy = self.busy.clone();
        let stats = self.stats.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            // The users of the config in force now (a kept-alive connection sees a new
            // password as soon as a new connection would).
            let auth = web.current().auth.clone();
            let busy = busy.clone();
            let stats = stats.clone();
            async move {
                busy.store(true, Ordering::Relaxed);
                let open_path = matches!(req.uri().path(), "/healthz" | "/readyz");
                let authorized = match &auth {
                    Some(a) if !open_path => {
                        let v = req
                            .headers()
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok());
                        a.check(v).await
                    }
                    _ => true,
                };
                let resp = if authorized {
                    match app.oneshot(req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                } else {
                    stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    unauthorized()
                };
                busy.store(false, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Some(self.limits.header_read_timeout))
            .max_buf_size(MAX_BUF)
            .max_headers(100)
            .serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle_ms = self.limits.idle_timeout.as_millis() as u64;
        let mut closing = false;
        loop {
            let since = millis(self.epoch).saturating_sub(self.last.load(Ordering::Relaxed));
            let wait = Duration::from_millis(idle_ms.saturating_sub(since).max(10));
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.close.notified(), if !closing => {
                    // Evicted or stopping: an idle connection ends now, one inside a request
                    // after its response.
                    if !self.busy.load(Ordering::Relaxed) {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = self.stopping.notified(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep(wait) => {
                    let since = millis(self.epoch).saturating_sub(self.last.load(Ordering::Relaxed));
                    if since >= idle_ms && !self.busy.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_well_below_the_descriptor_limit() {
        assert_eq!(effective_cap(256, 1024), 256);
        assert_eq!(effective_cap(256, 512), 128);
        assert_eq!(effective_cap(10_000, 1_048_576), 10_000);
        assert_eq!(effective_cap(0, 1024), 1);
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
            l
        };
        let now = raise_nofile_limit();
        assert!(now >= before.rlim_cur);
        assert!(now <= before.rlim_max);
    }
}
