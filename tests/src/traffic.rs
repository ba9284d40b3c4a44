//! Traffic generation inside a test's own network namespaces: a fresh thread `setns`es into
//! the namespace and uses ordinary sockets, so nothing leaves the namespaces the test made.

use std::{fs::File, net::UdpSocket, os::fd::AsRawFd as _, time::Duration};

use crate::NetNs;

/// Runs `f` on a new thread that has joined `ns`'s network namespace.
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
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
    let dst = dst.to_string();
    in_netns(ns, move || {
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
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl UdpSink {
    pub fn bind(ns: &NetNs, addr: &str) -> Self {
        let path = ns.path();
        let addr = addr.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: as in `in_netns`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let sock = UdpSocket::bind(&addr).expect("bind sink");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut n = 0u64;
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    n += 1;
                }
            }
            n
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("sink bound");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the number of datagrams received.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(0))
            .unwrap_or(0)
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
