//! The host's network topology as userspace sees it: every network namespace, its links, its
//! VXLAN devices with their underlay, MTU mismatches and fragment-queue memory.
//!
//! The kernel programs count drops, fragments and VXLAN packets keyed by the network
//! namespace's inode (`net->ns.inum`) and an ifindex; this module supplies what those keys
//! mean and what the kernel cannot see cheaply from a tracepoint: which device a VXLAN
//! encapsulates onto, that device's MTU, the encapsulation overhead, and per-netns sysctls.
//!
//! - [`netns`]: discovery of namespaces (`/proc/<pid>/ns/net`, `ip netns` and Docker bind
//!   mounts), their pids, and [`netns::run_in_netns`] (blocking work in a dedicated thread that
//!   `setns`es first; tokio's threads never change namespace).
//! - [`rtnl`]: a small synchronous rtnetlink client (dumps and requests over a socket created in
//!   the calling thread's namespace).
//! - [`links`]: links per namespace, VXLAN configuration and underlay resolution.
//! - [`mtu`]: pure mismatch logic (`mtu > underlay_mtu - overhead`).
//! - [`fragmem`]: fragment-queue memory vs. `ipfrag_*` limits and the `Ip:` reassembly /
//!   fragmentation counters of `/proc/net/snmp`, read inside a namespace.
//! - [`fdb`], [`routes`]: VXLAN FDB entries (remote VTEPs by inner MAC), the route and path
//!   MTU to each remote, lightweight-tunnel routes of `external` devices.
//! - [`tc_attach`]: the VXLAN tc programs, attached to every VXLAN device in every namespace.
//! - [`topology`]: the [`Topology`] service: background refresh on netlink link events and
//!   periodic rediscovery, snapshots and change events.

pub mod cookie;
pub mod fdb;
pub mod fragmem;
pub mod links;
pub mod mtu;
pub mod netns;
pub mod routes;
pub mod rtnl;
pub mod tc_attach;
pub mod topology;

use std::io;
use std::path::PathBuf;

pub use fragmem::{FragCounters, FragMem, FragQueueMem, FragTotals, IpSnmp, SnmpSnapshot};
pub use links::{Link, UnderlayFamily, UnderlayRef, UnderlaySource, VxlanConfig};
pub use mtu::MtuMismatch;
pub use netns::{NetnsHandle, NetnsInfo, NetnsRegistry, run_in_netns};
pub use topology::{
    Topology, TopologyConfig, TopologyEvent, TopologySnapshot, Underlay, VxlanDevice, VxlanRemote,
};

/// A network namespace's identity: the inode of its nsfs file, equal to the kernel's
/// `net->ns.inum` (what the BPF programs read) and to `stat -L -c %i /proc/PID/ns/net`.
pub type NetnsInode = u32;

/// Errors of the network topology layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {inode} can no longer be entered (no process or bind mount left)")]
    NetnsGone { inode: NetnsInode },
    #[error("{path} is not a network namespace (not an nsfs file)")]
    NotNetns { path: PathBuf },
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("setns into network namespace {inode}: {source} (needs CAP_SYS_ADMIN)")]
    Setns {
        inode: NetnsInode,
        source: nix::Error,
    },
    #[error("netlink {op}: {source}")]
    Netlink { op: &'static str, source: io::Error },
    #[error("decoding a netlink message during {op}: {detail}")]
    NetlinkDecode { op: &'static str, detail: String },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("parsing {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("spawning a netns worker thread: {0}")]
    Spawn(io::Error),
    #[error("a netns worker thread panicked")]
    WorkerPanicked,
    #[error("the topology service has stopped")]
    Stopped,
}

/// Logs a missing-privilege consequence once per process (such failures repeat on every scan).
pub(crate) fn warn_permission_once(what: &'static str) {
    use std::{collections::HashSet, sync::Mutex};
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(what) {
        tracing::warn!("{what}");
    }
}

/// Whether an error message is EPERM / EACCES.
pub(crate) fn is_permission_error(msg: &str) -> bool {
    msg.contains("Operation not permitted")
        || msg.contains("Permission denied")
        || msg.contains("EPERM")
        || msg.contains("EACCES")
}
