//! The drop storm: UDP datagrams to a closed port on the loopback of a network namespace the
//! bench creates. With nothing listening, `__udp4_lib_rcv` frees every datagram with
//! `SKB_DROP_REASON_NO_SOCKET` (a `skb:kfree_skb` hit), in the sender's own softirq: the storm
//! is as fast as the senders, and every packet sent is exactly one drop in that namespace
//! (a full backlog would drop it too, with its own reason, in the same namespace).
//!
//! Senders are threads that `setns` into the namespace before opening their socket, and send
//! batches with `sendmmsg` on an unconnected socket (so ICMP port-unreachable replies do not
//! turn into send errors). Only the namespace's loopback carries the traffic.

use std::{
    fs::{self, File},
    os::{
        fd::AsRawFd as _,
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{process, signals};
use crate::cmd;

/// Prefix of everything the bench creates; the suffix is the bench's pid.
pub const PREFIX: &str = "fathom-bench-";
/// A closed port: nothing listens in a fresh namespace.
const PORT: u16 = 9;
const BATCH: usize = 64;
const PAYLOAD: usize = 16;

/// A network namespace (`ip netns add`) with a process living in it, deleted on drop. The
/// process makes it an ordinary workload namespace (a pod's has its pause process): fathom's
/// exporter names and exports namespaces it finds through processes.
pub struct Netns {
    pub name: String,
    /// `net->ns.inum`, what fathom keys drops by.
    pub inode: u32,
    holder: Option<Child>,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        cmd::output(Command::new("ip").args(["netns", "add", name]))?;
        // The guard exists from here on: a failure below still deletes the namespace.
        let mut ns = Netns {
            name: name.to_owned(),
            inode: 0,
            holder: None,
        };
        cmd::output(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        ns.inode = fs::metadata(ns.path())
            .with_context(|| format!("cannot stat {}", ns.path().display()))?
            .ino() as u32;
        let f = File::open(ns.path())
            .with_context(|| format!("cannot open {}", ns.path().display()))?;
        let fd = f.as_raw_fd();
        let mut holder = Command::new("sleep");
        holder
            .arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: setns and prctl are async-signal-safe; `fd` stays open across the fork.
        unsafe {
            holder.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        ns.holder = Some(
            holder
                .spawn()
                .context("cannot start a process in the netns")?,
        );
        drop(f);
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace's own `Udp: NoPorts` (datagrams to no socket), from /proc/net/snmp.
    pub fn udp_no_ports(&self) -> Result<u64> {
        let snmp = in_netns(self.path(), || {
            fs::read_to_string("/proc/thread-self/net/snmp").context("cannot read net/snmp")
        })??;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            bail!("no Udp lines in net/snmp");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "NoPorts")
            .and_then(|(_, v)| v.parse().ok())
            .context("no Udp NoPorts in net/snmp")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        if let Err(e) = cmd::output(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// Runs `f` on a thread that joined the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    thread::spawn(move || -> Result<T> {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &PathBuf) -> Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// What a storm achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Storm {
    /// Datagrams the kernel accepted (sum of `sendmmsg` results).
    pub sent: u64,
    /// Failed `sendmmsg` calls (ENOBUFS and the like; nothing was sent by them).
    pub send_errors: u64,
    pub elapsed: Duration,
    pub senders: usize,
}

impl Storm {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Floods `ns` with `senders` threads for `duration`; `during` runs on this thread about
/// every 100 ms meanwhile (sampling). A signal stops the storm and returns `Interrupted`.
pub fn storm(
    ns: &Netns,
    senders: usize,
    duration: Duration,
    mut during: impl FnMut() -> Result<()>,
) -> Result<Storm> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(senders + 1));
    let threads: Vec<_> = (0..senders)
        .map(|_| {
            let (path, stop, start) = (ns.path(), stop.clone(), start.clone());
            thread::spawn(move || sender(&path, &stop, &start))
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut failure = None;
    while began.elapsed() < duration && !signals::interrupted() {
        thread::sleep((duration - began.elapsed().min(duration)).min(Duration::from_millis(100)));
        if let Err(e) = during() {
            failure = Some(e);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = began.elapsed();
    let mut storm = Storm {
        elapsed,
        senders,
        ..Storm::default()
    };
    for t in threads {
        let (sent, errors) = t
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
        storm.sent += sent;
        storm.send_errors += errors;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    signals::check()?;
    Ok(storm)
}

/// One sender: (datagrams sent, failed calls).
fn sender(path: &PathBuf, stop: &AtomicBool, start: &Barrier) -> Result<(u64, u64)> {
    let joined = enter(path);
    // Wait even on failure, so the barrier never hangs the others.
    let sock = joined.and_then(|()| {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    });
    start.wait();
    let fd = sock?;
    let payload = [0u8; PAYLOAD];
    // SAFETY: sockaddr_in is plain data; zero is a valid value.
    let mut dst: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    dst.sin_family = libc::AF_INET as libc::sa_family_t;
    dst.sin_port = PORT.to_be();
    dst.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            // SAFETY: mmsghdr is plain data; zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (&raw mut dst).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let (mut sent, mut errors) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` points at `dst`, `iov` and `payload`, which outlive the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            errors += 1;
            thread::yield_now();
        }
    }
    // SAFETY: closing our own socket.
    unsafe { libc::close(fd) };
    Ok((sent, errors))
}

/// Removes namespaces left by bench runs that were killed outright (their pid is gone).
pub fn remove_stale_netns() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !process::alive(pid) {
            eprintln!("bench: removing netns {name} left by an earlier run");
            let _ = cmd::output(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}
