//! The [`Topology`] service: keeps a current picture of every network namespace, its links
//! and its VXLAN devices (with underlay and MTU verdict), and announces changes.
//!
//! One tokio task owns the state. It is woken by:
//! - `RTNLGRP_LINK` notifications, one subscribed socket per namespace (created inside it),
//!   debounced, after which only the namespaces that changed are dumped again (plus those
//!   whose VXLANs resolved their underlay through a namespace that changed);
//! - a periodic rescan of namespaces (default 2 s): new ones are subscribed then dumped
//!   (subscribe first so no change falls between the two), vanished ones are dropped along
//!   with their sockets and fds, which would otherwise keep them alive;
//! - a slow full re-dump (default 30 s) that catches route changes, which are not subscribed
//!   to but move route-resolved underlays;
//! - a fast re-dump (default 1 s) of only the namespaces holding VXLAN devices and their link
//!   namespaces: FDB entries, routes and cached path-MTU exceptions change at run time
//!   without link notifications (PMTU exceptions notify nothing at all), and the verdict must
//!   follow within a second or two. Hosts without VXLAN devices pay nothing for it.
//!
//! At idle this costs one `/proc` scan per rescan period and nothing else. Namespace work runs
//! on dedicated `setns` threads (see [`super::netns`]), never on tokio's threads.
//!
//! Snapshots are immutable `Arc`s; events go through a broadcast channel. A snapshot and the
//! events that led to it are published under one lock, so
//! [`Topology::subscribe_with_snapshot`] gives a state and exactly the changes after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_sys::Socket;
use serde::Serialize;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::fragmem::{FragMem, SnmpSnapshot, read_fragmem_here, read_snmp_here};
use super::links::{
    Link, PendingUnderlay, RemoteSource, UnderlayFamily, UnderlaySource, collect_links,
    resolve_by_address, resolve_remote_routes,
};
use super::mtu::{self, MtuMismatch, RemotePathMtu, VxlanMtu};
use super::netns::{
    DiscoveryConfig, NetnsHandle, NetnsInfo, NetnsRegistry, run_in_each_netns_async,
};
use super::rtnl::{Rtnl, subscribe_links};
use super::{NetError, NetnsInode};

/// Tuning of the [`Topology`] service.
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    pub discovery: DiscoveryConfig,
    /// How often namespaces are rediscovered.
    pub rediscover_every: Duration,
    /// How often every namespace's links are dumped again regardless of notifications.
    pub full_refresh_every: Duration,
    /// How often namespaces with VXLAN devices (and their link namespaces) are dumped again
    /// for FDB, route and path-MTU changes.
    pub vxlan_paths_every: Duration,
    /// How long to wait after a link notification for more before dumping.
    pub debounce: Duration,
    /// Maximum age of cached [`Topology::fragmem`] readings.
    pub fragmem_max_age: Duration,
    /// Capacity of the event channel (slow subscribers see `Lagged`).
    pub event_capacity: usize,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            discovery: DiscoveryConfig::default(),
            rediscover_every: Duration::from_secs(2),
            full_refresh_every: Duration::from_secs(30),
            vxlan_paths_every: Duration::from_secs(1),
            debounce: Duration::from_millis(50),
            fragmem_max_age: Duration::from_secs(1),
            event_capacity: 1024,
        }
    }
}

/// A VXLAN's resolved underlay device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Underlay {
    pub netns: NetnsInode,
    pub ifindex: u32,
    pub name: String,
    pub mtu: u32,
    pub source: UnderlaySource,
}

/// A VXLAN device with everything needed to judge its MTU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanDevice {
    pub netns: NetnsInode,
    pub device: String,
    pub ifindex: u32,
    pub vni: u32,
    pub mtu: u32,
    pub up: bool,
    pub dst_port: u16,
    pub family: UnderlayFamily,
    /// Encapsulation overhead: 50 (IPv4 underlay) or 70 (IPv6).
    pub overhead: u32,
    pub remote: Option<IpAddr>,
    pub local: Option<IpAddr>,
    pub external: bool,
    /// None when it could not be determined (see [`super::links`]).
    pub underlay: Option<Underlay>,
    /// Every remote VTEP with the path its outer packets take (FDB `dst`s, encap routes).
    pub remotes: Vec<VxlanRemote>,
}

/// A remote VTEP of a VXLAN device and the path MTU towards it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanRemote {
    pub remote: IpAddr,
    pub source: RemoteSource,
    /// Whether the device's default destination (all-zeros FDB entry) includes it.
    pub default: bool,
    /// Inner MACs the FDB sends to it.
    #[serde(skip)]
    pub macs: Vec<[u8; 6]>,
    /// VNIs towards it (encap route ids / FDB `vni`).
    pub vnis: Vec<u32>,
    /// The output device of the route to it, in the link namespace; None when unroutable.
    pub underlay: Option<Underlay>,
    /// `RTAX_MTU` of that route: a route `mtu` or a cached path-MTU exception.
    pub route_mtu: Option<u32>,
    /// What outer packets to it are fragmented against: `min(route_mtu, device MTU)`.
    pub path_mtu: Option<u32>,
}

impl VxlanDevice {
    /// `underlay_mtu - overhead`, when the underlay is known.
    pub fn max_mtu(&self) -> Option<u32> {
        self.underlay
            .as_ref()
            .map(|u| mtu::max_mtu(u.mtu, self.overhead))
    }

    /// The device-level report (its `dev` / default-route underlay), if this device's MTU is
    /// too large for it. See [`Self::mismatches`] for the per-remote verdict.
    pub fn mismatch(&self) -> Option<MtuMismatch> {
        mtu::check(&self.mtu_inputs())
    }

    fn mtu_inputs(&self) -> VxlanMtu<'_> {
        VxlanMtu {
            netns: self.netns,
            device: &self.device,
            ifindex: self.ifindex,
            vni: self.vni,
            mtu: self.mtu,
            overhead: self.overhead,
            underlay: self.underlay.as_ref().map(|u| (u.name.as_str(), u.mtu)),
        }
    }

    /// The verdict, per underlay: when remotes with a known path exist, one report per
    /// (underlay device, path MTU) whose remotes the device's MTU does not fit, naming them;
    /// otherwise the device-level report.
    pub fn mismatches(&self) -> Vec<MtuMismatch> {
        let paths: Vec<RemotePathMtu<'_>> = self
            .remotes
            .iter()
            .filter_map(|r| {
                let u = r.underlay.as_ref()?;
                Some(RemotePathMtu {
                    remote: r.remote,
                    underlay: &u.name,
                    underlay_netns: u.netns,
                    underlay_device_mtu: u.mtu,
                    route_mtu: r.route_mtu,
                    path_mtu: r.path_mtu?,
                })
            })
            .collect();
        if paths.is_empty() {
            return self.mismatch().into_iter().collect();
        }
        mtu::check_remotes(&self.mtu_inputs(), &paths)
    }
}

/// One entry for the kernel's VXLAN map, keyed `{netns_inode, ifindex}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanMapEntry {
    pub netns_inode: NetnsInode,
    pub ifindex: u32,
    /// 0 when the underlay is unknown.
    pub underlay_mtu: u32,
    pub overhead: u32,
    pub vni: u32,
    /// The device's own MTU.
    pub mtu: u32,
    pub external: bool,
    /// Path MTU per FDB MAC / remote address (`VXLAN_PATHS`): (kind, address bytes, MTU).
    pub paths: Vec<(u32, [u8; 16], u32)>,
}

/// The `VXLAN_PATHS` entries and default path MTU of one device (see probe-ebpf's vxlan.rs).
fn path_entries(v: &VxlanDevice) -> (u32, Vec<(u32, [u8; 16], u32)>) {
    let mut out = Vec::new();
    let mut default: Option<u32> = None;
    for r in &v.remotes {
        let Some(mtu) = r.path_mtu else { continue };
        for m in &r.macs {
            let mut a = [0u8; 16];
            a[..6].copy_from_slice(m);
            // One MAC may go to several remotes (flooding entries): the smallest path wins.
            match out
                .iter_mut()
                .find(|(k, x, _): &&mut (u32, [u8; 16], u32)| {
                    *k == probe_common::VXLAN_PATH_MAC && *x == a
                }) {
                Some(e) => e.2 = e.2.min(mtu),
                None => out.push((probe_common::VXLAN_PATH_MAC, a, mtu)),
            }
        }
        if r.default {
            default = Some(default.map_or(mtu, |d| d.min(mtu)));
        }
        let (kind, a) = match r.remote {
            IpAddr::V4(ip) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&ip.octets());
                (probe_common::VXLAN_PATH_IPV4, a)
            }
            IpAddr::V6(ip) => (probe_common::VXLAN_PATH_IPV6, ip.octets()),
        };
        out.push((kind, a, mtu));
    }
    // Without FDB remotes, a device created with `dev` sends by its underlay.
    let default = default
        .or_else(|| v.underlay.as_ref().map(|u| u.mtu))
        .unwrap_or(0);
    (default, out)
}

/// The topology at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TopologySnapshot {
    /// Increments with every published change; 0 before the first scan completed.
    pub generation: u64,
    pub host_netns: Option<NetnsInode>,
    pub netns: Vec<NetnsInfo>,
    pub links: BTreeMap<NetnsInode, Vec<Link>>,
    pub vxlans: Vec<VxlanDevice>,
    pub mismatches: Vec<MtuMismatch>,
    /// Namespaces whose links could not be read, with the reason.
    pub errors: BTreeMap<NetnsInode, String>,
}

impl TopologySnapshot {
    pub fn netns(&self, inode: NetnsInode) -> Option<&NetnsInfo> {
        self.netns.iter().find(|n| n.inode == inode)
    }

    pub fn link(&self, netns: NetnsInode, ifindex: u32) -> Option<&Link> {
        self.links
            .get(&netns)?
            .iter()
            .find(|l| l.ifindex == ifindex)
    }

    pub fn link_by_name(&self, netns: NetnsInode, name: &str) -> Option<&Link> {
        self.links.get(&netns)?.iter().find(|l| l.name == name)
    }

    pub fn vxlan(&self, netns: NetnsInode, ifindex: u32) -> Option<&VxlanDevice> {
        self.vxlans
            .iter()
            .find(|v| v.netns == netns && v.ifindex == ifindex)
    }

    /// Entries for the kernel's `{netns_inode, ifindex} → {underlay_mtu, overhead, vni}` map.
    pub fn vxlan_map_entries(&self) -> Vec<VxlanMapEntry> {
        self.vxlans
            .iter()
            .map(|v| {
                let (default, paths) = path_entries(v);
                VxlanMapEntry {
                    netns_inode: v.netns,
                    ifindex: v.ifindex,
                    underlay_mtu: default,
                    overhead: v.overhead,
                    vni: v.vni,
                    mtu: v.mtu,
                    external: v.external,
                    paths,
                }
            })
            .collect()
    }

    fn same_content(&self, other: &TopologySnapshot) -> bool {
        self.host_netns == other.host_netns
            && self.netns == other.netns
            && self.links == other.links
            && self.vxlans == other.vxlans
            && self.errors == other.errors
    }
}

/// A change in the topology. Serialises with a `"kind"` tag, e.g.
/// `{"kind": "mtu_mismatch", "netns": …, "device": …, …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TopologyEvent {
    NetnsAdded {
        netns: NetnsInode,
    },
    NetnsRemoved {
        netns: NetnsInode,
    },
    VxlanAdded(VxlanDevice),
    /// The device's last known state.
    VxlanRemoved(VxlanDevice),
    /// Its new state (MTU, underlay, VNI, … changed).
    VxlanChanged(VxlanDevice),
    /// A device is mismatched: emitted when it appears mismatched, becomes mismatched, or its
    /// mismatch figures change; not repeated while nothing changes.
    MtuMismatch(MtuMismatch),
    /// A previously reported mismatch is gone (fixed, or the device was removed); carries the
    /// last report.
    MtuMismatchCleared(MtuMismatch),
}

/// Fragment-queue memory per namespace.
pub type FragMemMap = Arc<BTreeMap<NetnsInode, FragMem>>;

enum Command {
    Rescan(oneshot::Sender<()>),
}

struct Shared {
    cfg: TopologyConfig,
    snapshot: watch::Sender<Arc<TopologySnapshot>>,
    events: broadcast::Sender<TopologyEvent>,
    /// Held while publishing a snapshot with its events, and while subscribing with a
    /// snapshot, so the two are consistent.
    publish: Mutex<()>,
    registry: Arc<Mutex<NetnsRegistry>>,
    fragmem: tokio::sync::Mutex<Option<(Instant, FragMemMap)>>,
}

/// The network topology service. Dropping it stops the background task and releases every
/// namespace fd and netlink socket it held.
pub struct Topology {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Topology {
    /// Starts the service with default settings. Must be called inside a tokio runtime.
    /// The first scan runs in the background: see [`Topology::ready`].
    pub fn start() -> Topology {
        Self::start_with(TopologyConfig::default())
    }

    pub fn start_with(cfg: TopologyConfig) -> Topology {
        let registry = Arc::new(Mutex::new(NetnsRegistry::new(cfg.discovery.clone())));
        let (snapshot, _) = watch::channel(Arc::new(TopologySnapshot::default()));
        let (events, _) = broadcast::channel(cfg.event_capacity.max(1));
        let shared = Arc::new(Shared {
            cfg,
            snapshot,
            events,
            publish: Mutex::new(()),
            registry: registry.clone(),
            fragmem: tokio::sync::Mutex::new(None),
        });
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (dirty_tx, dirty_rx) = mpsc::unbounded_channel();
        let refresher = Refresher {
            shared: shared.clone(),
            registry,
            links: BTreeMap::new(),
            errors: BTreeMap::new(),
            watchers: Watchers::default(),
            dirty_tx,
            prev_vxlans: BTreeMap::new(),
            prev_mismatch: BTreeMap::new(),
            pending_events: Vec::new(),
            generation: 0,
        };
        let task = tokio::spawn(refresher.run(cmd_rx, dirty_rx));
        Topology { shared, cmd, task }
    }

    /// A handle to enter namespace `inode`, while it is known.
    pub fn netns_handle(&self, inode: NetnsInode) -> Option<Arc<NetnsHandle>> {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(inode)
    }

    /// Writes the current snapshot's VXLAN devices into the kernel maps and attaches / detaches
    /// the VXLAN tc programs accordingly (see [`super::tc_attach`]).
    pub fn sync_vxlan_hooks(
        &self,
        ebpf: &mut aya::Ebpf,
        hooks: &mut super::tc_attach::VxlanHooks,
    ) -> Result<(), super::tc_attach::TcAttachError> {
        let snap = self.snapshot();
        hooks.sync(ebpf, &snap, |ino| self.netns_handle(ino))
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<TopologySnapshot> {
        self.shared.snapshot.borrow().clone()
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TopologyEvent> {
        self.shared.events.subscribe()
    }

    /// The current snapshot and a receiver of exactly the changes after it.
    pub fn subscribe_with_snapshot(
        &self,
    ) -> (Arc<TopologySnapshot>, broadcast::Receiver<TopologyEvent>) {
        let _g = self.shared.publish.lock().expect("publish lock");
        (self.snapshot(), self.shared.events.subscribe())
    }

    /// A receiver that is notified whenever a new snapshot is published.
    pub fn watch(&self) -> watch::Receiver<Arc<TopologySnapshot>> {
        self.shared.snapshot.subscribe()
    }

    /// Waits until the first scan has been published.
    pub async fn ready(&self) -> Result<Arc<TopologySnapshot>, NetError> {
        let mut rx = self.shared.snapshot.subscribe();
        let s = rx
            .wait_for(|s| s.generation > 0)
            .await
            .map_err(|_| NetError::Stopped)?;
        Ok(s.clone())
    }

    /// Rediscovers namespaces and dumps every namespace's links now, and waits for the result
    /// to be published.
    pub async fn rescan(&self) -> Result<Arc<TopologySnapshot>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Rescan(tx))
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?;
        Ok(self.snapshot())
    }

    fn handles(&self) -> Vec<Arc<NetnsHandle>> {
        self.shared
            .registry
            .lock()
            .expect("registry lock")
            .handles()
    }

    /// Fragment-queue memory of every known namespace, read inside each (one worker thread
    /// for the whole sweep) and cached for `fragmem_max_age`. Namespaces that vanish during
    /// the sweep are left out.
    pub async fn fragmem(&self) -> Result<FragMemMap, NetError> {
        let mut cache = self.shared.fragmem.lock().await;
        if let Some((at, v)) = &*cache
            && at.elapsed() <= self.shared.cfg.fragmem_max_age
        {
            return Ok(v.clone());
        }
        let v = self.fragmem_now().await?;
        *cache = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// [`Self::fragmem`] read now, bypassing (and not filling) the cache: for readings that
    /// must postdate an event, such as a capture's closing fragment totals.
    pub async fn fragmem_now(&self) -> Result<FragMemMap, NetError> {
        let res = run_in_each_netns_async(self.handles(), |h| read_fragmem_here(h.inode())).await?;
        let mut map = BTreeMap::new();
        for (ino, r) in res {
            match r.and_then(|x| x) {
                Ok(f) => {
                    map.insert(ino, f);
                }
                Err(e) => {
                    if super::is_permission_error(&e.to_string()) {
                        super::warn_permission_once(
                            "cannot enter other network namespaces (needs CAP_SYS_ADMIN): their fragment-queue memory is not reported",
                        );
                    }
                    debug!(netns = ino, error = %e, "fragment memory not read")
                }
            }
        }
        Ok(Arc::new(map))
    }

    /// Fragment-queue memory of one namespace (through the same cache).
    pub async fn fragmem_of(&self, netns: NetnsInode) -> Result<Option<FragMem>, NetError> {
        Ok(self.fragmem().await?.get(&netns).copied())
    }

    /// /proc/net/snmp counters of one known namespace, read now (not cached).
    pub async fn snmp(&self, netns: NetnsInode) -> Result<SnmpSnapshot, NetError> {
        let h = self
            .shared
            .registry
            .lock()
            .expect("registry lock")
            .get(netns)
            .ok_or(NetError::NetnsGone { inode: netns })?;
        super::netns::run_in_netns_async(h, move || read_snmp_here(netns)).await?
    }
}

/// Link-notification watcher tasks, one per namespace; aborted on removal and on drop.
#[derive(Default)]
struct Watchers(HashMap<NetnsInode, JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for (_, h) in self.0.drain() {
            h.abort();
        }
    }
}

struct Refresher {
    shared: Arc<Shared>,
    registry: Arc<Mutex<NetnsRegistry>>,
    links: BTreeMap<NetnsInode, Vec<Link>>,
    errors: BTreeMap<NetnsInode, String>,
    watchers: Watchers,
    dirty_tx: mpsc::UnboundedSender<NetnsInode>,
    prev_vxlans: BTreeMap<(NetnsInode, u32), VxlanDevice>,
    prev_mismatch: BTreeMap<(NetnsInode, u32, String), MtuMismatch>,
    pending_events: Vec<TopologyEvent>,
    generation: u64,
}

impl Refresher {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        mut dirty_rx: mpsc::UnboundedReceiver<NetnsInode>,
    ) {
        let cfg = self.shared.cfg.clone();
        let mut rescan = tokio::time::interval(cfg.rediscover_every);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut full = tokio::time::interval_at(
            tokio::time::Instant::now() + cfg.full_refresh_every,
            cfg.full_refresh_every,
        );
        full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paths = tokio::time::interval(cfg.vxlan_paths_every);
        paths.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first snapshot is published only once every namespace has been discovered and
        // dumped: all three intervals tick at once at the start, and `select!` picks at
        // random, so a path refresh could publish first — generation 1 with no namespace,
        // which `ready()` took for the first scan (a capture then named no device: `if1`, and
        // its start listed 0 namespaces).
        rescan.tick().await;
        self.rediscover().await;
        self.publish();
        loop {
            tokio::select! {
                _ = rescan.tick() => self.rediscover().await,
                _ = paths.tick() => {
                    let set = self.vxlan_namespaces();
                    self.refresh_links(set).await;
                }
                _ = full.tick() => {
                    let all = self.known();
                    self.refresh_links(all).await;
                }
                Some(ino) = dirty_rx.recv() => {
                    // Debounce: a pod start or `ip link add` sends several notifications.
                    tokio::time::sleep(cfg.debounce).await;
                    let mut set = BTreeSet::from([ino]);
                    while let Ok(i) = dirty_rx.try_recv() {
                        set.insert(i);
                    }
                    let set = self.with_dependents(set);
                    self.refresh_links(set).await;
                }
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Rescan(done)) => {
                        self.rediscover().await;
                        let all = self.known();
                        self.refresh_links(all).await;
                        self.publish();
                        let _ = done.send(());
                        continue;
                    }
                    None => return,
                },
            }
            self.publish();
        }
    }

    /// Every namespace currently in the registry.
    fn known(&self) -> BTreeSet<NetnsInode> {
        let reg = self.registry.lock().expect("registry lock");
        reg.handles().iter().map(|h| h.inode()).collect()
    }

    /// Namespaces holding VXLAN devices, and the link namespaces of those devices.
    fn vxlan_namespaces(&self) -> BTreeSet<NetnsInode> {
        let mut set = BTreeSet::new();
        for (ns, links) in &self.links {
            for v in links.iter().filter_map(|l| l.vxlan.as_ref()) {
                set.insert(*ns);
                if let Some(l) = v.link_netns {
                    set.insert(l);
                }
            }
        }
        set
    }

    /// Adds namespaces whose VXLANs resolve their underlay or remotes' routes in one of `set`.
    fn with_dependents(&self, mut set: BTreeSet<NetnsInode>) -> BTreeSet<NetnsInode> {
        for (ns, links) in &self.links {
            let depends = links.iter().any(|l| {
                l.vxlan
                    .as_ref()
                    .is_some_and(|v| v.link_netns.is_some_and(|l| l != *ns && set.contains(&l)))
            });
            if depends {
                set.insert(*ns);
            }
        }
        set
    }

    async fn rediscover(&mut self) {
        let reg = self.registry.clone();
        let diff =
            match tokio::task::spawn_blocking(move || reg.lock().expect("registry lock").refresh())
                .await
            {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    warn!(error = %e, "network namespace discovery failed");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "network namespace discovery task failed");
                    return;
                }
            };
        for ino in &diff.removed {
            if let Some(h) = self.watchers.0.remove(ino) {
                h.abort();
            }
            self.links.remove(ino);
            self.errors.remove(ino);
            self.pending_events
                .push(TopologyEvent::NetnsRemoved { netns: *ino });
        }
        for ino in &diff.added {
            self.pending_events
                .push(TopologyEvent::NetnsAdded { netns: *ino });
        }
        // Namespaces without a live watcher: new ones, and those whose subscription failed or
        // whose watcher stopped (retried at every rescan).
        self.watchers.0.retain(|_, h| !h.is_finished());
        let handles: Vec<_> = {
            let reg = self.registry.lock().expect("registry lock");
            reg.handles()
                .into_iter()
                .filter(|h| !self.watchers.0.contains_key(&h.inode()))
                .collect()
        };
        if handles.is_empty() {
            return;
        }
        // Subscribe before dumping, so a change between the two is not missed.
        let mut dump: BTreeSet<NetnsInode> = diff.added.iter().copied().collect();
        match run_in_each_netns_async(handles, |_| subscribe_links()).await {
            Ok(socks) => {
                for (ino, r) in socks {
                    match r.and_then(|x| x) {
                        Ok(sock) => {
                            let h = tokio::spawn(watch_links(ino, sock, self.dirty_tx.clone()));
                            self.watchers.0.insert(ino, h);
                            dump.insert(ino);
                        }
                        Err(e) => debug!(netns = ino, error = %e, "no link notifications"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "subscribing to link notifications failed"),
        }
        self.refresh_links(dump).await;
    }

    /// Dumps the links of `set` and resolves VXLAN underlays.
    async fn refresh_links(&mut self, set: BTreeSet<NetnsInode>) {
        if set.is_empty() {
            return;
        }
        let (handles, candidates) = {
            let reg = self.registry.lock().expect("registry lock");
            let all = reg.handles();
            let cands: Vec<_> = all
                .iter()
                .filter_map(|h| h.open().ok().map(|fd| (h.inode(), fd)))
                .collect();
            let hs: Vec<_> = set.iter().filter_map(|i| reg.get(*i)).collect();
            (hs, cands)
        };
        let cands = Arc::new(candidates);
        let c2 = cands.clone();
        let results =
            match run_in_each_netns_async(handles, move |h| collect_links(h.inode(), &c2)).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "link dump sweep failed");
                    return;
                }
            };
        let mut pending: Vec<(NetnsInode, PendingUnderlay)> = Vec::new();
        for (ino, r) in results {
            match r.and_then(|x| x) {
                Ok((links, p)) => {
                    self.errors.remove(&ino);
                    self.links.insert(ino, links);
                    pending.extend(p.into_iter().map(|p| (ino, p)));
                }
                Err(NetError::NetnsGone { .. }) => {
                    self.links.remove(&ino);
                }
                Err(e) => {
                    if super::is_permission_error(&e.to_string()) {
                        super::warn_permission_once(
                            "cannot enter other network namespaces (needs CAP_SYS_ADMIN): their links and VXLAN devices are not watched",
                        );
                    }
                    debug!(netns = ino, error = %e, "links not read");
                    self.errors.insert(ino, e.to_string());
                }
            }
        }
        if !pending.is_empty() {
            self.resolve_pending(pending).await;
        }
    }

    /// Route / address lookups for VXLANs whose underlay namespace is another one.
    async fn resolve_pending(&mut self, pending: Vec<(NetnsInode, PendingUnderlay)>) {
        // (underlay netns) → [(vxlan netns, ifindex, config)]
        let mut by_ns: BTreeMap<NetnsInode, Vec<_>> = BTreeMap::new();
        for (ns, p) in pending {
            if let Some(cfg) = self
                .links
                .get(&ns)
                .and_then(|ls| ls.iter().find(|l| l.ifindex == p.ifindex))
                .and_then(|l| l.vxlan.clone())
            {
                by_ns
                    .entry(p.underlay_netns)
                    .or_default()
                    .push((ns, p.ifindex, cfg));
            }
        }
        let handles: Vec<_> = {
            let reg = self.registry.lock().expect("registry lock");
            by_ns.keys().filter_map(|i| reg.get(*i)).collect()
        };
        let by_ns = Arc::new(by_ns);
        let b2 = by_ns.clone();
        let Ok(results) = run_in_each_netns_async(handles, move |h| {
            let mut rtnl = Rtnl::new()?;
            let mut out = Vec::new();
            for (ns, ifindex, cfg) in b2.get(&h.inode()).into_iter().flatten() {
                let mut cfg = cfg.clone();
                if cfg.link.is_none() {
                    cfg.underlay = resolve_by_address(&mut rtnl, h.inode(), &cfg)?;
                }
                resolve_remote_routes(&mut rtnl, &mut cfg)?;
                out.push((*ns, *ifindex, cfg.underlay, cfg.remotes));
            }
            Ok::<_, NetError>(out)
        })
        .await
        else {
            return;
        };
        for (_, r) in results {
            let Ok(Ok(found)) = r else { continue };
            for (ns, ifindex, under, remotes) in found {
                if let Some(cfg) = self
                    .links
                    .get_mut(&ns)
                    .and_then(|ls| ls.iter_mut().find(|l| l.ifindex == ifindex))
                    .and_then(|l| l.vxlan.as_mut())
                {
                    cfg.underlay = under;
                    cfg.remotes = remotes;
                }
            }
        }
    }

    fn build(&self) -> TopologySnapshot {
        let (netns, host) = {
            let reg = self.registry.lock().expect("registry lock");
            (
                reg.handles().iter().map(|h| h.info()).collect::<Vec<_>>(),
                reg.host_inode(),
            )
        };
        let mut vxlans = Vec::new();
        for (ns, links) in &self.links {
            for l in links {
                let Some(cfg) = &l.vxlan else { continue };
                let underlay = cfg.underlay.and_then(|u| {
                    let ul = self
                        .links
                        .get(&u.netns)?
                        .iter()
                        .find(|x| x.ifindex == u.ifindex)?;
                    Some(Underlay {
                        netns: u.netns,
                        ifindex: u.ifindex,
                        name: ul.name.clone(),
                        mtu: ul.mtu,
                        source: u.source,
                    })
                });
                let remotes = cfg
                    .remotes
                    .iter()
                    .map(|r| {
                        let underlay = r.route.and_then(|rt| {
                            let netns = cfg.link_netns?;
                            let ul = self
                                .links
                                .get(&netns)?
                                .iter()
                                .find(|x| x.ifindex == rt.oif)?;
                            Some(Underlay {
                                netns,
                                ifindex: rt.oif,
                                name: ul.name.clone(),
                                mtu: ul.mtu,
                                source: UnderlaySource::Route,
                            })
                        });
                        let path_mtu = underlay.as_ref().map(|u| {
                            r.route
                                .and_then(|rt| rt.mtu)
                                .map_or(u.mtu, |m| m.min(u.mtu))
                        });
                        VxlanRemote {
                            remote: r.addr,
                            source: r.source,
                            default: r.is_default(),
                            macs: r.macs.clone(),
                            vnis: r.vnis.clone(),
                            underlay,
                            route_mtu: r.route.and_then(|rt| rt.mtu),
                            path_mtu,
                        }
                    })
                    .collect();
                vxlans.push(VxlanDevice {
                    netns: *ns,
                    device: l.name.clone(),
                    ifindex: l.ifindex,
                    vni: cfg.vni,
                    mtu: l.mtu,
                    up: l.up,
                    dst_port: cfg.dst_port,
                    family: cfg.family,
                    overhead: cfg.family.overhead(),
                    remote: cfg.remote,
                    local: cfg.local,
                    external: cfg.external,
                    underlay,
                    remotes,
                });
            }
        }
        let mismatches = vxlans.iter().flat_map(VxlanDevice::mismatches).collect();
        TopologySnapshot {
            generation: self.generation,
            host_netns: host,
            netns,
            links: self.links.clone(),
            vxlans,
            mismatches,
            errors: self.errors.clone(),
        }
    }

    /// Diffs against the previous state into events (VXLAN added / removed / changed,
    /// mismatch raised / changed / cleared).
    fn diff(&mut self, snap: &TopologySnapshot) -> Vec<TopologyEvent> {
        let mut events = std::mem::take(&mut self.pending_events);
        let now: BTreeMap<_, _> = snap
            .vxlans
            .iter()
            .map(|v| ((v.netns, v.ifindex), v.clone()))
            .collect();
        for (k, v) in &now {
            match self.prev_vxlans.get(k) {
                None => events.push(TopologyEvent::VxlanAdded(v.clone())),
                Some(p) if p != v => events.push(TopologyEvent::VxlanChanged(v.clone())),
                Some(_) => {}
            }
        }
        for (k, v) in &self.prev_vxlans {
            if !now.contains_key(k) {
                events.push(TopologyEvent::VxlanRemoved(v.clone()));
            }
        }
        let mism: BTreeMap<_, _> = snap
            .mismatches
            .iter()
            .map(|m| ((m.netns, m.ifindex, m.underlay.clone()), m.clone()))
            .collect();
        for (k, m) in &mism {
            if self.prev_mismatch.get(k) != Some(m) {
                let remotes = m
                    .remotes
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                info!(
                    netns = m.netns, device = %m.device, vni = m.vni, mtu = m.mtu,
                    underlay = %m.underlay, underlay_mtu = m.underlay_mtu, max_mtu = m.max_mtu,
                    remotes = %remotes, remotes_total = m.remotes_total,
                    "VXLAN MTU exceeds the path MTU to its remote(s) minus encapsulation overhead"
                );
                events.push(TopologyEvent::MtuMismatch(m.clone()));
            }
        }
        for (k, m) in &self.prev_mismatch {
            if !mism.contains_key(k) {
                events.push(TopologyEvent::MtuMismatchCleared(m.clone()));
            }
        }
        self.prev_vxlans = now;
        self.prev_mismatch = mism;
        events
    }

    fn publish(&mut self) {
        let mut snap = self.build();
        let events = self.diff(&snap);
        let first = self.generation == 0;
        if !first && events.is_empty() && snap.same_content(&self.shared.snapshot.borrow()) {
            return;
        }
        self.generation += 1;
        snap.generation = self.generation;
        let _g = self.shared.publish.lock().expect("publish lock");
        self.shared.snapshot.send_replace(Arc::new(snap));
        for e in events {
            // No receivers is fine.
            let _ = self.shared.events.send(e);
        }
    }
}

/// Waits for link notifications on one namespace's socket and reports the namespace dirty.
/// The messages themselves are not decoded: any change means "dump this namespace again",
/// which also covers an overrun (`ENOBUFS`: notifications were lost).
async fn watch_links(ino: NetnsInode, sock: Socket, dirty: mpsc::UnboundedSender<NetnsInode>) {
    // SAFETY: the socket's fd stays open and owned by the AsyncFd until it is dropped.
    let afd = match unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) } {
        Ok(a) => a,
        Err(e) => {
            warn!(netns = ino, error = %e, "cannot watch link notifications");
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                warn!(netns = ino, error = %e, "link notification socket failed");
                return;
            }
        };
        let mut changed = false;
        loop {
            match guard.try_io(|a| a.get_ref().recv(&mut &mut buf[..], 0)) {
                Ok(Ok(_)) => changed = true,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => changed = true,
                Ok(Err(e)) => {
                    warn!(netns = ino, error = %e, "reading link notifications failed");
                    return;
                }
                Err(_would_block) => break,
            }
        }
        if changed && dirty.send(ino).is_err() {
            return;
        }
    }
}
