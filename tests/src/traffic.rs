//! Traffic generation inside a test's own network namespaces: a fresh thread `setns`es into
//! the namespace and uses ordinary sockets, so nothing leaves the namespaces the test made.

use std::{fs::File, net::UdpSocket, os::fd::AsRawFd as _, time::Duration};

use crate::NetNs;

/// Runs `f` on a new thread that has joined `ns`'s network namespace.
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_netns_path(ns.path(), f)
}

/// Runs `f` on a new thread that has joined the network namespace at `path` (a bind mount or
/// `/proc/<pid>/ns/net`).
pub fn in_netns_path<T: Send + 'static>(
    path: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: valid fd; CLONE_NEWNET only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("traffic thread panicked")
}

/// Sends `count` UDP datagrams of `size` payload bytes from inside `ns` to `dst` ("ip:port").
/// `pmtudisc` sets IP_MTU_DISCOVER: `IP_PMTUDISC_DONT` lets the kernel fragment datagrams
/// larger than the route MTU; `IP_PMTUDISC_PROBE` sends with DF and ignores cached path MTUs
/// (what keeps VXLAN fragmenting the *outer* packet, see platform.md); `None` = default.
pub fn udp_send(ns: &NetNs, dst: &str, size: usize, count: usize, pmtudisc: Option<libc::c_int>) {
    udp_send_path(ns.path(), dst, size, count, pmtudisc)
}

/// [`udp_send`] from the network namespace at `path`.
pub fn udp_send_path(
    path: std::path::PathBuf,
    dst: &str,
    size: usize,
    count: usize,
    pmtudisc: Option<libc::c_int>,
) {
    let dst = dst.to_string();
    in_netns_path(path, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
        if let Some(v) = pmtudisc {
            // SAFETY: valid socket and option buffer.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&v as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        }
        let buf = vec![0x5au8; size];
        for _ in 0..count {
            // ECONNREFUSED from an earlier ICMP port-unreachable is expected; keep sending.
            let _ = sock.send_to(&buf, &dst);
        }
    })
}

/// A UDP receiver bound inside `ns`; counts datagrams until dropped.
pub struct UdpSink {
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Returns the datagrams received by payload length.
    thread: Option<std::thread::JoinHandle<std::collections::BTreeMap<usize, u64>>>,
}

impl UdpSink {
    pub fn bind(ns: &NetNs, addr: &str) -> Self {
        Self::bind_path(ns.path(), addr)
    }

    /// [`Self::bind`] in the network namespace at `path` (`/proc/<pid>/ns/net`, a bind mount).
    pub fn bind_path(path: std::path::PathBuf, addr: &str) -> Self {
        let addr = addr.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = count.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: as in `in_netns`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let sock = UdpSocket::bind(&addr).expect("bind sink");
            // Room for a whole test burst (as root, past net.core.rmem_max).
            let size: libc::c_int = 16 << 20;
            // SAFETY: valid socket and option buffer.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut by_len = std::collections::BTreeMap::new();
            let mut n = 0u64;
            let mut take = |len: usize| {
                *by_len.entry(len).or_insert(0) += 1;
                n += 1;
                c.store(n, std::sync::atomic::Ordering::Relaxed);
            };
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(len) = sock.recv(&mut buf) {
                    take(len);
                }
            }
            // Asked to stop: what is queued already counts (the kernel may have delivered a
            // burst this thread has not been scheduled to read yet). Drain until the socket
            // stays empty for one read timeout.
            while let Ok(len) = sock.recv(&mut buf) {
                take(len);
            }
            by_len
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("sink bound");
        Self {
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops and returns the number of datagrams received, queued ones included.
    pub fn finish(self) -> u64 {
        self.finish_by_len().values().sum()
    }

    /// Stops and returns the datagrams received (queued ones included) by payload length:
    /// tells a test's burst apart from warm-up datagrams of another size.
    pub fn finish_by_len(mut self) -> std::collections::BTreeMap<usize, u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends hand-built IPv4 packets (header included; the kernel fills in the checksum and
/// total length) from inside `ns` through a raw socket — for fragments a normal socket would
/// never produce: incomplete sets, duplicates, out-of-order streams.
pub fn send_raw_ipv4(ns: &NetNs, packets: Vec<Vec<u8>>) {
    in_netns(ns, move || {
        // SAFETY: plain socket calls with valid buffers; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            for p in &packets {
                let mut dst: libc::sockaddr_in = std::mem::zeroed();
                dst.sin_family = libc::AF_INET as libc::sa_family_t;
                dst.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
                let rc = libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                assert!(rc >= 0, "sendto: {}", std::io::Error::last_os_error());
            }
            libc::close(fd);
        }
    })
}

/// An IPv4 UDP fragment: `payload_len` bytes of the datagram's payload starting at byte
/// `offset` (a multiple of 8), with More-Fragments set when `more`.
pub fn ipv4_fragment(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    offset: usize,
    payload_len: usize,
    more: bool,
) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut p = vec![0u8; 20 + payload_len];
    p[0] = 0x45;
    let total = (20 + payload_len) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    let frag = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    if offset == 0 && payload_len >= 8 {
        // A UDP header to a port nobody listens on (never delivered: the set is incomplete).
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&9u16.to_be_bytes());
        p[24..26].copy_from_slice(&((payload_len as u16).max(8)).to_be_bytes());
    }
    p
}
