//! Network namespace and veth helpers (via iproute2), each removed on drop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Result, bail};

use crate::{run_checked, short_suffix, unique_suffix};

/// A named network namespace `fathom-<unique_suffix>` (`ip netns add`). Drop kills the
/// processes still inside it and runs `ip netns del`.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a new, empty namespace (only `lo`, down). Panics on failure.
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("NetNs::new: {e:#}"))
    }

    pub fn try_new() -> Result<Self> {
        let name = format!("fathom-{}", unique_suffix());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(NetNs { name })
    }

    /// Like [`NetNs::new`], created by a process pinned to `cpu` (`taskset`): the kernel
    /// hands out namespace cookies from per-CPU batches, so the CPU decides the cookie's range.
    pub fn new_on_cpu(cpu: usize) -> Self {
        let name = format!("fathom-{}", unique_suffix());
        run_checked(Command::new("taskset").args([
            "-c",
            &cpu.to_string(),
            "ip",
            "netns",
            "add",
            &name,
        ]))
        .unwrap_or_else(|e| panic!("NetNs::new_on_cpu: {e:#}"));
        NetNs { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that pins it: `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Namespace inode (`stat -L -c %i /run/netns/<name>`), the `ns.inum` BPF programs read.
    pub fn inode(&self) -> u64 {
        crate::inode_of(&self.path()).expect("stat netns")
    }

    /// Runs `ip netns exec <name> <args…>`, returning its output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawning ip netns exec")
    }

    /// [`Self::exec`], panicking unless the command exits 0.
    pub fn exec_ok(&self, args: &[&str]) -> Output {
        let o = self.exec(args);
        assert!(
            o.status.success(),
            "in netns {}: {args:?} failed ({}): {}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// A `Command` running `args` inside the namespace (for spawning long-running processes).
    /// The child joins the namespace before its exec, so once `spawn` returns it is inside
    /// (with `ip netns exec` it would still be on its way in, invisible to the drop guard).
    pub fn command(&self, args: &[&str]) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let ns = std::fs::File::open(self.path()).expect("open netns");
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        // SAFETY: setns(2) is a plain syscall, async-signal-safe between fork and exec; the
        // closure owns the namespace file, so the fd is open until the command is dropped.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// Brings `lo` up.
    pub fn lo_up(&self) -> &Self {
        self.exec_ok(&["ip", "link", "set", "lo", "up"]);
        self
    }

    /// `sysctl -w key=value` inside the namespace (per-netns sysctls such as
    /// `net.ipv4.ipfrag_high_thresh`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// The namespace's /proc/net/snmp as `"Ip.ReasmFails" → value` (negative values such as
    /// `Tcp.MaxConn` = -1 are left out).
    pub fn snmp(&self) -> BTreeMap<String, u64> {
        parse_snmp(&String::from_utf8_lossy(
            &self.exec_ok(&["cat", "/proc/net/snmp"]).stdout,
        ))
    }

    /// The namespace's /proc/net/netstat (`TcpExt.*`, `IpExt.*`), same format as [`Self::snmp`].
    pub fn netstat(&self) -> BTreeMap<String, u64> {
        parse_snmp(&String::from_utf8_lossy(
            &self.exec_ok(&["cat", "/proc/net/netstat"]).stdout,
        ))
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl NetNs {
    /// Pids of the processes inside the namespace (by namespace inode, like `ip netns pids`).
    fn members(inode: u64) -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|&pid| {
                crate::inode_of(std::path::Path::new(&format!("/proc/{pid}/ns/net")))
                    .is_ok_and(|i| i == inode)
            })
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes left inside would keep the namespace alive after `ip netns del`. Kill
        // until none is left (killed children turn into zombies, which have no namespace).
        if let Ok(inode) = crate::inode_of(&self.path()) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let pids = Self::members(inode);
                if pids.is_empty() || std::time::Instant::now() > deadline {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill(2) on a pid living in our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("fathom-tests: {e:#}");
        }
    }
}

/// Parses the /proc/net/snmp format: pairs of lines `Proto: Name1 Name2 …` /
/// `Proto: v1 v2 …` into `"Proto.Name" → value`.
pub fn parse_snmp(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, n)), Some((p2, v))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (k, val) in n.split_whitespace().zip(v.split_whitespace()) {
            if let Ok(x) = val.parse::<u64>() {
                out.insert(format!("{p1}.{k}"), x);
            }
        }
    }
    out
}

/// Which end of a [`VethPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// A veth pair `fva<sfx>` / `fvb<sfx>` with each end in a given namespace (None = the
/// current one). Drop deletes it (deleting either end removes both; deleting a namespace
/// also removes its end).
#[derive(Debug)]
pub struct VethPair {
    a: String,
    b: String,
    ns_a: Option<String>,
    ns_b: Option<String>,
}

impl VethPair {
    pub fn new(ns_a: Option<&NetNs>, ns_b: Option<&NetNs>) -> Self {
        Self::try_new(ns_a, ns_b).unwrap_or_else(|e| panic!("VethPair::new: {e:#}"))
    }

    pub fn try_new(ns_a: Option<&NetNs>, ns_b: Option<&NetNs>) -> Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            let sfx = short_suffix();
            let (a, b) = (format!("fva{sfx}"), format!("fvb{sfx}"));
            let mut cmd = Command::new("ip");
            cmd.args(["link", "add", &a]);
            if let Some(n) = ns_a {
                cmd.args(["netns", n.name()]);
            }
            cmd.args(["type", "veth", "peer", "name", &b]);
            if let Some(n) = ns_b {
                cmd.args(["netns", n.name()]);
            }
            match run_checked(&mut cmd) {
                Ok(_) => {
                    return Ok(VethPair {
                        a,
                        b,
                        ns_a: ns_a.map(|n| n.name().to_string()),
                        ns_b: ns_b.map(|n| n.name().to_string()),
                    });
                }
                Err(e) if e.to_string().contains("exists") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        bail!("could not find a free veth name: {last:?}")
    }

    pub fn name(&self, side: Side) -> &str {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    pub fn netns(&self, side: Side) -> Option<&str> {
        match side {
            Side::A => self.ns_a.as_deref(),
            Side::B => self.ns_b.as_deref(),
        }
    }

    /// Runs `ip [-n <ns of side>] <args…>`, panicking on failure.
    pub fn ip(&self, side: Side, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        if let Some(n) = self.netns(side) {
            cmd.args(["-n", n]);
        }
        cmd.args(args);
        run_checked(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Adds `cidr` (e.g. "10.201.0.1/24") to one end and brings it up.
    pub fn addr_up(&self, side: Side, cidr: &str) -> &Self {
        let dev = self.name(side).to_string();
        self.ip(side, &["addr", "add", cidr, "dev", &dev]);
        self.ip(side, &["link", "set", &dev, "up"]);
        self
    }

    /// Sets the MTU of one end.
    pub fn set_mtu(&self, side: Side, mtu: u32) -> &Self {
        let dev = self.name(side).to_string();
        self.ip(side, &["link", "set", &dev, "mtu", &mtu.to_string()]);
        self
    }

    /// Interface index of one end (in its namespace).
    pub fn ifindex(&self, side: Side) -> u32 {
        let dev = self.name(side).to_string();
        let o = self.ip(side, &["-o", "link", "show", "dev", &dev]);
        String::from_utf8_lossy(&o.stdout)
            .split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .expect("ifindex from ip -o link")
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        if let Some(n) = &self.ns_a {
            cmd.args(["-n", n]);
        }
        // Already gone when its namespace was deleted first: ignore errors.
        let _ = cmd
            .args(["link", "del", &self.a])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_snmp() {
        let t = "Ip: Forwarding DefaultTTL ReasmFails\nIp: 2 64 7\n\
                 Tcp: RtoAlgorithm MaxConn\nTcp: 1 -1\n";
        let m = parse_snmp(t);
        assert_eq!(m["Ip.ReasmFails"], 7);
        assert_eq!(m["Ip.DefaultTTL"], 64);
        assert_eq!(m["Tcp.RtoAlgorithm"], 1);
        assert!(!m.contains_key("Tcp.MaxConn"));
    }
}
