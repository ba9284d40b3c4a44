//! Attribution: cgroup ids, cgroup paths and network namespaces → container and Kubernetes
//! pod, with names from the container runtimes.
//!
//! [`Attributor`] owns every cache involved and the background tasks that fill them:
//! - cgroup id → path per hierarchy ([`cgroup_ids`]): direct kernfs file-handle lookups,
//!   a walk where handles do not work, a bounded LRU pruned on each rescan;
//! - container id → runtime metadata ([`meta_cache`], [`runtime`]): containerd, CRI-O and
//!   Docker asked asynchronously, time-bounded, with positive and negative TTLs;
//! - pod UID → pod names, learnt from any container of the pod;
//! - netns inode → container / pod ([`netns`]), rebuilt by a periodic scan.
//!
//! [`WorkloadFilter`] selects events by namespace, pod and container for `fathom capture`.
//!
//! The event path never waits for I/O: `by_*` answer from memory (the path parser needs none)
//! and schedule what is missing; `resolve_*` let a caller that can afford it (capture, before
//! printing a fresh event) wait a bounded time for those lookups. Every cache has a size bound
//! from [`AttributionConfig`], so container churn cannot grow memory.

mod cgroup_ids;
mod filter;
mod meta_cache;
mod netns;
pub mod runtime;
mod workload;

use std::{
    num::NonZeroUsize,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lru::LruCache;
use tokio::{runtime::Handle, sync::Semaphore};
use tracing::{debug, warn};

use self::{
    cgroup_ids::{CgroupIds, Direct},
    meta_cache::{Answer, MetaCache, Ttls},
    netns::NetnsOwner,
    runtime::{ContainerdClient, CrioClient, DockerClient, Request, Runtimes},
    workload::PodNames,
};
pub use self::{
    filter::WorkloadFilter,
    workload::{
        ComposeInfo, ContainerInfo, ContainerMeta, NetworkInfo, PodInfo, SwarmInfo, Workload,
    },
};
use crate::{
    cgroup::Hierarchies,
    container::{self, Runtime},
};

/// Which mounted hierarchy a cgroup id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hierarchy {
    /// cgroup2 (`bpf_get_current_cgroup_id()`, socket cgroups, `task->cgroups->dfl_cgrp`).
    Unified,
    /// The hierarchy carrying the memory controller (v1 `memory`, or cgroup2 on pure v2).
    Memory,
}

/// Sockets, timeouts and cache bounds. `Default` gives the production settings.
#[derive(Clone, Debug)]
pub struct AttributionConfig {
    /// containerd's gRPC socket; `None` disables containerd lookups.
    pub containerd_socket: Option<PathBuf>,
    /// Docker Engine API socket; `None` disables Docker lookups.
    pub docker_socket: Option<PathBuf>,
    /// Further dockerd sockets (several daemons on one host, e.g. Swarm nodes in network
    /// namespaces); each is asked like the first.
    pub more_docker_sockets: Vec<PathBuf>,
    /// CRI-O's socket; `None` disables CRI-O lookups.
    pub crio_socket: Option<PathBuf>,
    /// containerd namespaces searched first (after one the cgroup path names); the others the
    /// daemon lists are searched after them.
    pub containerd_namespaces: Vec<String>,
    /// containerd namespaces never searched (`moby`: dockerd's, answered by Docker's API).
    pub containerd_skip_namespaces: Vec<String>,
    /// Bound of one call to one runtime.
    pub lookup_timeout: Duration,
    pub found_ttl: Duration,
    /// Negative caching: how long "no runtime knows this id" is believed.
    pub not_found_ttl: Duration,
    /// How long to wait before asking again when no runtime could answer.
    pub unavailable_ttl: Duration,
    /// Containers whose runtime answers are kept (LRU).
    pub max_containers: usize,
    /// Pods whose names are kept (LRU).
    pub max_pods: usize,
    /// cgroup id → path entries kept per hierarchy (LRU).
    pub max_cgroup_ids: usize,
    /// Network namespaces indexed at most.
    pub max_netns: usize,
    /// Runtime lookups queued or running at most; further misses are retried on a later event.
    pub max_pending_lookups: usize,
    /// Runtime lookups running at once.
    pub max_concurrent_lookups: usize,
    /// Period of the netns scan and the cgroup id cache pruning.
    pub rescan_interval: Duration,
    /// Shortest time between two scans triggered by netns misses.
    pub min_rescan_interval: Duration,
    /// cgroup mounts; `None` = detect from /proc/self/mounts.
    pub hierarchies: Option<Hierarchies>,
    /// procfs mount used for `/proc/<pid>/ns/net`.
    pub proc_root: PathBuf,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            containerd_socket: Some("/run/containerd/containerd.sock".into()),
            docker_socket: Some("/var/run/docker.sock".into()),
            more_docker_sockets: Vec::new(),
            crio_socket: Some("/run/crio/crio.sock".into()),
            containerd_namespaces: vec!["k8s.io".into()],
            containerd_skip_namespaces: vec!["moby".into()],
            lookup_timeout: Duration::from_millis(500),
            found_ttl: Duration::from_secs(600),
            not_found_ttl: Duration::from_secs(30),
            unavailable_ttl: Duration::from_secs(5),
            max_containers: 4096,
            max_pods: 2048,
            max_cgroup_ids: 8192,
            max_netns: 8192,
            max_pending_lookups: 1024,
            max_concurrent_lookups: 8,
            rescan_interval: Duration::from_secs(5),
            min_rescan_interval: Duration::from_millis(500),
            hierarchies: None,
            proc_root: "/proc".into(),
        }
    }
}

impl AttributionConfig {
    /// No runtime sockets: path-derived attribution only.
    pub fn without_runtimes() -> Self {
        AttributionConfig {
            containerd_socket: None,
            docker_socket: None,
            crio_socket: None,
            ..Default::default()
        }
    }
}

/// Cache sizes and counters, for tests and self-metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributionStats {
    /// cgroup id → path entries, all hierarchies.
    pub cgroup_ids: usize,
    /// Remembered "no such cgroup id" marks, all hierarchies.
    pub cgroup_ids_missing: usize,
    /// Containers with a runtime answer (or one in flight).
    pub containers: usize,
    pub pods: usize,
    pub netns: usize,
    /// Runtime lookups started / that found the container / that no runtime could answer.
    pub lookups: u64,
    pub lookups_found: u64,
    pub lookups_unavailable: u64,
    /// Misses not scheduled because `max_pending_lookups` were queued already.
    pub lookups_shed: u64,
    /// Netns scans completed.
    pub netns_scans: u64,
}

/// Container / pod attribution with runtime names. Cheap to clone (an `Arc` inside); the
/// background tasks stop once every clone is dropped.
#[derive(Clone)]
pub struct Attributor {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: AttributionConfig,
    /// None outside a tokio runtime: path-only attribution, nothing scheduled.
    handle: Option<Handle>,
    unified: Option<Arc<CgroupIds>>,
    memory: Option<Arc<CgroupIds>>,
    runtimes: Arc<Runtimes>,
    meta: MetaCache,
    pods: Mutex<LruCache<String, PodNames>>,
    netns: RwLock<std::collections::HashMap<u32, NetnsOwner>>,
    /// Container cgroup paths (memory hierarchy) of the last scan.
    containers: RwLock<Vec<String>>,
    /// Namespaces of Docker networks (overlay namespaces), from the last scan.
    networks: RwLock<std::collections::HashMap<u32, NetworkInfo>>,
    /// Network id prefix → what the dockerd sockets said, and when (misses are asked again
    /// after `not_found_ttl`). Bounded like the netns index.
    network_answers: Mutex<LruCache<String, (Option<NetworkInfo>, Instant)>>,
    lookup_slots: Arc<Semaphore>,
    pending: AtomicUsize,
    scan_wanted: tokio::sync::Notify,
    scan_done: tokio::sync::watch::Sender<u64>,
    walk_running: AtomicBool,
    lookups: AtomicU64,
    lookups_found: AtomicU64,
    lookups_unavailable: AtomicU64,
    lookups_shed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Attributor {
    /// Builds the caches and, inside a tokio runtime, spawns the rescan task. Never fails:
    /// missing sockets or hierarchies only mean less attribution. Outside a runtime nothing
    /// is scheduled and only path-derived answers are given.
    pub fn start(cfg: AttributionConfig) -> Self {
        let hier = cfg.hierarchies.clone().unwrap_or_else(Hierarchies::detect);
        let unified = hier
            .unified
            .clone()
            .map(|r| Arc::new(CgroupIds::new(r, cfg.max_cgroup_ids)));
        // On pure v2 both names refer to one hierarchy: share its cache.
        let memory = match (&hier.memory, &unified) {
            (Some(m), Some(u)) if u.root() == m.as_path() => Some(u.clone()),
            (Some(m), _) => Some(Arc::new(CgroupIds::new(m.clone(), cfg.max_cgroup_ids))),
            (None, _) => None,
        };
        let runtimes = Runtimes::new(
            cfg.containerd_socket.clone().map(|s| {
                ContainerdClient::new(
                    s,
                    cfg.containerd_namespaces.clone(),
                    cfg.containerd_skip_namespaces.clone(),
                )
            }),
            cfg.crio_socket.clone().map(CrioClient::new),
            cfg.docker_socket
                .iter()
                .chain(&cfg.more_docker_sockets)
                .cloned()
                .map(DockerClient::new)
                .collect(),
            cfg.lookup_timeout,
        );
        let handle = Handle::try_current().ok();
        if handle.is_none() {
            warn!("attribution started outside a tokio runtime: runtime names disabled");
        }
        let ttls = Ttls {
            found: cfg.found_ttl,
            not_found: cfg.not_found_ttl,
            unavailable: cfg.unavailable_ttl,
            // Every runtime may take the full timeout, plus queueing behind other lookups.
            pending: cfg.lookup_timeout * 3 + Duration::from_secs(5),
        };
        let inner = Arc::new(Inner {
            meta: MetaCache::new(cfg.max_containers, ttls),
            pods: Mutex::new(LruCache::new(
                NonZeroUsize::new(cfg.max_pods.max(1)).expect("nonzero"),
            )),
            netns: RwLock::new(Default::default()),
            containers: RwLock::new(Vec::new()),
            networks: RwLock::new(Default::default()),
            network_answers: Mutex::new(LruCache::new(
                NonZeroUsize::new(cfg.max_netns.max(1)).expect("nonzero"),
            )),
            lookup_slots: Arc::new(Semaphore::new(cfg.max_concurrent_lookups.max(1))),
            pending: AtomicUsize::new(0),
            scan_wanted: tokio::sync::Notify::new(),
            scan_done: tokio::sync::watch::Sender::new(0),
            walk_running: AtomicBool::new(false),
            lookups: AtomicU64::new(0),
            lookups_found: AtomicU64::new(0),
            lookups_unavailable: AtomicU64::new(0),
            lookups_shed: AtomicU64::new(0),
            runtimes: Arc::new(runtimes),
            handle,
            unified,
            memory,
            cfg,
        });
        if let Some(h) = &inner.handle {
            h.spawn(rescan_loop(Arc::downgrade(&inner)));
        }
        Attributor { inner }
    }

    /// Container and pod of a cgroup path, with names when a runtime has answered already.
    /// Never blocks: a container not asked about yet (or whose answer expired) is looked up in
    /// the background and the path-derived answer is returned meanwhile.
    pub fn by_cgroup_path(&self, path: &str) -> Workload {
        let parsed = container::parse(path);
        let mut w = Workload::from_path(path);
        if let Some(c) = &parsed.container {
            let parent = c
                .component
                .checked_sub(1)
                .and_then(|i| path.split('/').filter(|p| !p.is_empty()).nth(i))
                .map(str::to_string);
            let pod_uid = parsed.pod.as_ref().map(|p| p.uid.clone());
            if let Some(meta) = self.container_meta(&c.id, c.runtime, parent, pod_uid) {
                w.merge_meta(&meta);
            }
        }
        if let Some(pod) = &mut w.pod
            && let Some(uid) = &pod.uid
            && let Some(names) = lock(&self.inner.pods).get(uid)
        {
            pod.merge_names(names);
        }
        w
    }

    /// Like [`Self::by_cgroup_path`], but first waits up to `timeout` for the runtime lookup of
    /// the path's container (starting it if needed). For a fresh event that should carry names.
    pub async fn resolve_cgroup_path(&self, path: &str, timeout: Duration) -> Workload {
        let w = self.by_cgroup_path(path);
        let id = match &w.container {
            Some(c) if c.name.is_none() && c.runtime != Runtime::Podman => c.id.clone(),
            _ => return w,
        };
        if let Some(mut done) = self.inner.meta.waiter(&id) {
            // Err = the lookup's sender was dropped: it completed.
            let _ = tokio::time::timeout(timeout, done.changed()).await;
            return self.by_cgroup_path(path);
        }
        w
    }

    /// Path (relative to the hierarchy root, "/a/b") of cgroup `id`. Answers from the cache,
    /// else through a kernfs file handle (a lookup in kernel memory, no disk or network I/O);
    /// where handles do not work, schedules a background walk and returns `None` for now.
    pub fn by_cgroup_id(&self, hierarchy: Hierarchy, id: u64) -> Option<String> {
        let ids = self.ids(hierarchy)?;
        if let Some(cached) = ids.cached(id) {
            return cached;
        }
        match ids.lookup_direct(id) {
            Direct::Found(p) => Some(p),
            Direct::Missing => None,
            Direct::Unsupported => {
                if ids.want_walk(id) {
                    self.schedule_walk();
                }
                None
            }
        }
    }

    /// Like [`Self::by_cgroup_id`], waiting up to `timeout` for a walk when one is needed.
    pub async fn resolve_cgroup_id(
        &self,
        hierarchy: Hierarchy,
        id: u64,
        timeout: Duration,
    ) -> Option<String> {
        let ids = self.ids(hierarchy)?.clone();
        if let Some(cached) = ids.cached(id) {
            return cached;
        }
        match ids.lookup_direct(id) {
            Direct::Found(p) => return Some(p),
            Direct::Missing => return None,
            Direct::Unsupported => {}
        }
        let walker = ids.clone();
        let walk = tokio::task::spawn_blocking(move || walker.walk_for_wanted(Some(id)));
        let _ = tokio::time::timeout(timeout, walk).await;
        ids.cached(id).flatten()
    }

    /// Container / pod owning network namespace `netns_inode`, from the last scan. A miss
    /// triggers an early scan (rate-limited); a netns shared by several pods or unrelated
    /// containers, and the host's, give `None`. When several containers of one pod share it,
    /// only the pod is given.
    pub fn by_netns(&self, netns_inode: u32) -> Option<Workload> {
        let owner = self
            .inner
            .netns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&netns_inode)
            .cloned();
        let Some(owner) = owner else {
            let network = self
                .inner
                .networks
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&netns_inode)
                .cloned();
            if let Some(n) = network {
                return Some(Workload {
                    network: Some(n),
                    ..Default::default()
                });
            }
            self.inner.scan_wanted.notify_one();
            return None;
        };
        let mut w = self.by_cgroup_path(&owner.path);
        if owner.shared && w.pod.is_some() {
            w.container = None;
        }
        Some(w)
    }

    /// Cgroup paths (in the memory hierarchy, "/a/b") of the containers the last scan found
    /// processes in.
    pub fn container_cgroups(&self) -> Vec<String> {
        self.inner
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a netns scan (and cgroup id pruning) now and returns when it is done. For callers
    /// that just created what they ask about; the periodic scan covers everything else.
    pub async fn rescan(&self) {
        scan_once(&self.inner).await;
    }

    pub fn stats(&self) -> AttributionStats {
        let i = &self.inner;
        let mut s = AttributionStats {
            containers: i.meta.len(),
            pods: lock(&i.pods).len(),
            netns: i.netns.read().unwrap_or_else(|p| p.into_inner()).len(),
            lookups: i.lookups.load(Ordering::Relaxed),
            lookups_found: i.lookups_found.load(Ordering::Relaxed),
            lookups_unavailable: i.lookups_unavailable.load(Ordering::Relaxed),
            lookups_shed: i.lookups_shed.load(Ordering::Relaxed),
            netns_scans: *i.scan_done.borrow(),
            ..Default::default()
        };
        for ids in self.all_ids() {
            let (p, m) = ids.sizes();
            s.cgroup_ids += p;
            s.cgroup_ids_missing += m;
        }
        s
    }

    fn ids(&self, h: Hierarchy) -> Option<&Arc<CgroupIds>> {
        match h {
            Hierarchy::Unified => self.inner.unified.as_ref(),
            Hierarchy::Memory => self.inner.memory.as_ref(),
        }
    }

    /// Distinct id caches (one on pure v2).
    fn all_ids(&self) -> Vec<&Arc<CgroupIds>> {
        let mut v: Vec<&Arc<CgroupIds>> = Vec::new();
        for ids in [&self.inner.unified, &self.inner.memory]
            .into_iter()
            .flatten()
        {
            if !v.iter().any(|x| Arc::ptr_eq(x, ids)) {
                v.push(ids);
            }
        }
        v
    }

    fn schedule_walk(&self) {
        let Some(h) = &self.inner.handle else {
            return;
        };
        if self.inner.walk_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        h.spawn_blocking(move || {
            // Ids queued while a walk runs are picked up by the next round of this loop.
            loop {
                for ids in [&inner.unified, &inner.memory].into_iter().flatten() {
                    ids.walk_for_wanted(None);
                }
                inner.walk_running.store(false, Ordering::Release);
                let more = [&inner.unified, &inner.memory]
                    .into_iter()
                    .flatten()
                    .any(|ids| ids.walk_pending());
                if !more || inner.walk_running.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        });
    }

    /// Cached runtime metadata for a container; schedules a lookup when there is none.
    fn container_meta(
        &self,
        id: &str,
        hint: Runtime,
        parent: Option<String>,
        pod_uid: Option<String>,
    ) -> Option<Arc<ContainerMeta>> {
        let i = &self.inner;
        // Podman has no daemon to ask; without runtimes or a runtime to spawn on, nothing to do.
        if hint == Runtime::Podman || i.runtimes.is_empty() {
            return None;
        }
        let Some(h) = &i.handle else {
            return None;
        };
        let (meta, claim) = i.meta.get(id);
        let Some(claim) = claim else {
            return meta;
        };
        if i.pending.fetch_add(1, Ordering::AcqRel) >= i.cfg.max_pending_lookups {
            i.pending.fetch_sub(1, Ordering::AcqRel);
            i.lookups_shed.fetch_add(1, Ordering::Relaxed);
            i.meta.abandon(id, claim);
            return meta;
        }
        let req = Request {
            id: id.to_string(),
            hint,
            parent,
            pod_uid,
        };
        let inner = Arc::downgrade(&self.inner);
        let runtimes = i.runtimes.clone();
        let slots = i.lookup_slots.clone();
        h.spawn(async move {
            let permit = slots.acquire_owned().await;
            let answer = runtimes.lookup(&req).await;
            drop(permit);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            inner.lookups.fetch_add(1, Ordering::Relaxed);
            match &answer {
                Answer::Found(m) => {
                    inner.lookups_found.fetch_add(1, Ordering::Relaxed);
                    if let Some(uid) = req.pod_uid.clone().or_else(|| m.pod_uid.clone()) {
                        let names = PodNames {
                            name: m.pod_name.clone(),
                            namespace: m.pod_namespace.clone(),
                        };
                        if names.name.is_some() || names.namespace.is_some() {
                            lock(&inner.pods).put(uid, names);
                        }
                    }
                }
                Answer::Unavailable => {
                    inner.lookups_unavailable.fetch_add(1, Ordering::Relaxed);
                }
                Answer::NotFound => {}
            }
            debug!(id = %req.id, ?answer, "runtime lookup");
            inner.meta.complete(&req.id, answer, claim);
        });
        meta
    }
}

/// Periodic work: netns scans (also on demand) and cgroup id cache pruning.
async fn rescan_loop(inner: Weak<Inner>) {
    let (interval, min_gap) = match inner.upgrade() {
        Some(i) => (i.cfg.rescan_interval, i.cfg.min_rescan_interval),
        None => return,
    };
    let mut last = Instant::now() - interval;
    loop {
        let Some(i) = inner.upgrade() else {
            return;
        };
        let since = last.elapsed();
        if since < min_gap {
            drop(i);
            tokio::time::sleep(min_gap - since).await;
            continue;
        }
        scan_once(&i).await;
        last = Instant::now();
        // Wait for the next period or an early request, without keeping `Inner` alive.
        let wanted = {
            let i2 = i.clone();
            drop(i);
            async move { i2.scan_wanted.notified().await }
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wanted => {}
        }
    }
}

async fn scan_once(inner: &Arc<Inner>) {
    let root = inner
        .memory
        .as_ref()
        .or(inner.unified.as_ref())
        .map(|ids| ids.root().to_path_buf());
    let proc_root = inner.cfg.proc_root.clone();
    let cap = inner.cfg.max_netns;
    let ids: Vec<Arc<CgroupIds>> = [&inner.unified, &inner.memory]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let scan = tokio::task::spawn_blocking(move || {
        for i in &ids {
            i.prune();
        }
        root.map(|r| netns::scan(&r, &proc_root, cap))
    })
    .await;
    match scan {
        Ok(Some(s)) => {
            debug!(
                netns = s.owners.len(),
                containers = s.containers,
                ambiguous = s.ambiguous,
                "netns scan"
            );
            // Ask the runtimes about every owner now, so a namespace's first events and series
            // already carry names (lookups are bounded by `max_pending_lookups`; cached ones
            // cost nothing).
            let paths: Vec<String> = s.owners.values().map(|o| o.path.clone()).collect();
            *inner.netns.write().unwrap_or_else(|p| p.into_inner()) = s.owners;
            *inner.containers.write().unwrap_or_else(|p| p.into_inner()) = s.container_paths;
            let a = Attributor {
                inner: inner.clone(),
            };
            for p in &paths {
                a.by_cgroup_path(p);
            }
            drop(a);
            let networks = docker_networks(inner, s.networks).await;
            *inner.networks.write().unwrap_or_else(|p| p.into_inner()) = networks;
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "netns scan task failed"),
    }
    inner.scan_done.send_modify(|n| *n += 1);
}

/// Names the namespaces of Docker networks (inode → network id prefix) by asking the dockerd
/// sockets, with answers cached per prefix.
async fn docker_networks(
    inner: &Arc<Inner>,
    prefixes: std::collections::HashMap<u32, String>,
) -> std::collections::HashMap<u32, NetworkInfo> {
    let mut out = std::collections::HashMap::new();
    for (ns, prefix) in prefixes {
        let cached = lock(&inner.network_answers).get(&prefix).cloned();
        let answer = match cached {
            Some((Some(n), _)) => Some(n),
            Some((None, at)) if at.elapsed() < inner.cfg.not_found_ttl => None,
            _ => {
                let n = inner.runtimes.docker_network(&prefix).await;
                debug!(prefix, network = ?n, "docker network lookup");
                lock(&inner.network_answers).put(prefix, (n.clone(), Instant::now()));
                n
            }
        };
        if let Some(n) = answer {
            out.insert(ns, n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c3f7e2a-41d5-4a6b-b0f2-8d1e5c7a3b90";

    fn cfg_without_hierarchies() -> AttributionConfig {
        AttributionConfig {
            hierarchies: Some(Hierarchies::default()),
            ..AttributionConfig::without_runtimes()
        }
    }

    #[test]
    fn shareable_across_tasks() {
        fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        send_sync_clone::<Attributor>();
    }

    #[test]
    fn works_outside_a_runtime() {
        let a = Attributor::start(cfg_without_hierarchies());
        let w = a.by_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(w.container.unwrap().id, ID);
        assert_eq!(a.by_cgroup_id(Hierarchy::Unified, 1), None);
        assert_eq!(a.by_netns(1), None);
    }

    /// Sockets that do not exist: answers stay path-derived, quickly, and nothing is retried
    /// until the "unavailable" TTL passes.
    #[tokio::test]
    async fn absent_sockets_answer_quickly() {
        let d = std::env::temp_dir().join(format!("fathom-attr-nosock-{}", std::process::id()));
        let a = Attributor::start(AttributionConfig {
            containerd_socket: Some(d.join("containerd.sock")),
            docker_socket: Some(d.join("docker.sock")),
            crio_socket: Some(d.join("crio.sock")),
            unavailable_ttl: Duration::from_secs(60),
            ..cfg_without_hierarchies()
        });
        let path = format!("/system.slice/docker-{ID}.scope");
        let t = Instant::now();
        let w = a.resolve_cgroup_path(&path, Duration::from_secs(2)).await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let c = w.container.unwrap();
        assert_eq!((c.runtime, c.name), (Runtime::Docker, None));
        let s = a.stats();
        assert_eq!((s.lookups, s.lookups_unavailable, s.containers), (1, 1, 1));
        for _ in 0..10 {
            a.by_cgroup_path(&path);
        }
        tokio::task::yield_now().await;
        assert_eq!(a.stats().lookups, 1, "unavailable answer is cached");
    }

    /// A hierarchy where kernfs handles do not work (here: a plain directory) is walked in
    /// the background instead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_resolve_by_walking_where_handles_do_not_work() {
        let d = std::env::temp_dir().join(format!("fathom-attr-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("kubepods/x")).unwrap();
        let ino =
            |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(d.join(p)).unwrap());
        let a = Attributor::start(AttributionConfig {
            hierarchies: Some(Hierarchies {
                unified: Some(d.clone()),
                memory: Some(d.clone()),
            }),
            ..AttributionConfig::without_runtimes()
        });
        let x = ino("kubepods/x");
        let got = a
            .resolve_cgroup_id(Hierarchy::Memory, x, Duration::from_secs(5))
            .await;
        assert_eq!(got.as_deref(), Some("/kubepods/x"));
        // by_cgroup_id schedules the walk and answers from the cache once it is done.
        let k = ino("kubepods");
        assert_eq!(a.by_cgroup_id(Hierarchy::Unified, k), None);
        let mut found = None;
        for _ in 0..100 {
            found = a.by_cgroup_id(Hierarchy::Unified, k);
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(found.as_deref(), Some("/kubepods"));
        // Same directory for both names: one cache.
        assert_eq!(a.stats().cgroup_ids, 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn pending_lookups_are_bounded() {
        let d = std::env::temp_dir().join(format!("fathom-attr-shed-{}", std::process::id()));
        let a = Attributor::start(AttributionConfig {
            docker_socket: Some(d.join("docker.sock")),
            max_pending_lookups: 3,
            ..cfg_without_hierarchies()
        });
        for i in 0..50u32 {
            a.by_cgroup_path(&format!("/docker/{i:064x}"));
        }
        let s = a.stats();
        assert_eq!(s.lookups_shed, 47, "{s:?}");
    }
}
