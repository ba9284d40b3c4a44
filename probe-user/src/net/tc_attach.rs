//! Attaching the VXLAN tc programs (`vxlan_tc_egress`, `vxlan_tc_ingress`, probe-ebpf's
//! vxlan.rs) to every VXLAN device the topology lists, in every namespace, and detaching them
//! when a device goes.
//!
//! Why tc on the VXLAN devices: the kernel hands every frame that enters a VXLAN tunnel to
//! the device's tc egress hook (`__dev_queue_xmit` → `sch_handle_egress`, before `vxlan_xmit`)
//! and every decapsulated frame to its tc ingress hook (`vxlan_rcv` → `gro_cells_receive` →
//! `__netif_receive_skb_core` → `sch_handle_ingress`). Programs there run for VXLAN traffic
//! only, unlike per-packet tracepoints that run for every packet of the node.
//!
//! Hook mode, chosen once per process and logged:
//! - **TCX** (Linux >= 6.6, aya's plain `attach`): a BPF link per device and direction,
//!   placed first (`LinkOrder::first`) so that a CNI's own programs on the same device
//!   (Cilium's on `cilium_vxlan`) still see every packet after ours (ours return `TCX_NEXT`).
//!   Links are file descriptors of this process: they vanish when it dies, SIGKILL included.
//! - **netlink clsact** (older kernels): a `cls_bpf` filter in direct-action mode returning
//!   `TC_ACT_UNSPEC` (continue with the next filter). Filters outlive the process, so before
//!   attaching to a device, filters with our program names left by an earlier (killed) fathom
//!   are removed.
//!
//! `attach` resolves the device by name and the TCX link / netlink request target the
//! calling thread's namespace, so both run in a [`run_in_netns`] thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aya::Ebpf;
use aya::programs::links::LinkOrder;
use aya::programs::tc::{
    NlOptions, SchedClassifierLinkId, TcAttachOptions, qdisc_add_clsact, qdisc_detach_program,
};
use aya::programs::{SchedClassifier, TcAttachType};
use tracing::{debug, info, warn};

use super::NetnsInode;
use super::netns::{NetnsHandle, run_in_netns};
use super::topology::TopologySnapshot;
use crate::net_counters;

/// The egress program's name in the object.
pub const EGRESS_PROGRAM: &str = "vxlan_tc_egress";
/// The ingress program's name in the object.
pub const INGRESS_PROGRAM: &str = "vxlan_tc_ingress";

/// How the programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookMode {
    /// BPF links (TCX multi-prog), Linux >= 6.6.
    Tcx,
    /// cls_bpf filters on a clsact qdisc.
    NetlinkClsact,
}

impl HookMode {
    /// The mode this kernel supports (aya's rule: TCX from 6.6).
    pub fn detect() -> Self {
        match aya::util::KernelVersion::current() {
            Ok(v) if v >= aya::util::KernelVersion::new(6, 6, 0) => HookMode::Tcx,
            _ => HookMode::NetlinkClsact,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HookMode::Tcx => "tcx",
            HookMode::NetlinkClsact => "netlink-clsact",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TcAttachError {
    #[error("program {0} is missing from the object or not a tc classifier")]
    MissingProgram(&'static str),
    #[error("updating the VXLAN maps: {0}")]
    Maps(#[from] net_counters::CountersError),
}

#[derive(Debug)]
struct Attached {
    name: String,
    /// The namespace's cookie when attached (`None` when unknown): a device in a namespace
    /// that reused the inode can have the same ifindex and name, and needs programs of its own.
    cookie: Option<u64>,
    egress: Option<SchedClassifierLinkId>,
    ingress: Option<SchedClassifierLinkId>,
}

/// The VXLAN devices the programs are attached to.
#[derive(Debug)]
pub struct VxlanHooks {
    mode: HookMode,
    attached: BTreeMap<(NetnsInode, u32), Attached>,
    /// Devices whose attach failed, with the reason (retried at every sync).
    pub failures: BTreeMap<(NetnsInode, u32), String>,
    announced: bool,
}

impl Default for VxlanHooks {
    fn default() -> Self {
        Self::new(HookMode::detect())
    }
}

impl VxlanHooks {
    pub fn new(mode: HookMode) -> Self {
        Self {
            mode,
            attached: BTreeMap::new(),
            failures: BTreeMap::new(),
            announced: false,
        }
    }

    pub fn mode(&self) -> HookMode {
        self.mode
    }

    /// (netns, ifindex) of the devices with programs attached.
    pub fn attached(&self) -> Vec<(NetnsInode, u32)> {
        self.attached.keys().copied().collect()
    }

    /// Writes the devices and paths of `snap` into the kernel maps, then attaches the
    /// programs to devices that have none and detaches them from devices that are gone.
    /// `handle` gives a namespace's handle (to enter it).
    pub fn sync(
        &mut self,
        ebpf: &mut Ebpf,
        snap: &TopologySnapshot,
        handle: impl Fn(NetnsInode) -> Option<Arc<NetnsHandle>>,
    ) -> Result<(), TcAttachError> {
        let entries = snap.vxlan_map_entries();
        // Maps first: a program that runs before its device is in VXLAN_DEVS only counts the
        // frame as "unknown device".
        net_counters::set_vxlan_devices(ebpf, &net_counters::vxlan_map_from(&entries))?;
        net_counters::set_vxlan_paths(ebpf, &net_counters::vxlan_paths_from(&entries))?;
        let cookie = |ns: NetnsInode| snap.netns(ns).and_then(|n| n.cookie);
        let want: HashMap<(NetnsInode, u32), &str> = snap
            .vxlans
            .iter()
            .map(|v| ((v.netns, v.ifindex), v.device.as_str()))
            .collect();
        let gone: Vec<_> = self
            .attached
            .iter()
            .filter(|(k, a)| {
                want.get(k).is_none_or(|n| *n != a.name)
                    || matches!((a.cookie, cookie(k.0)), (Some(was), Some(now)) if was != now)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(a) = self.attached.remove(&k) {
                self.detach(ebpf, k, a, &handle);
            }
        }
        self.failures.retain(|k, _| want.contains_key(k));
        for (k, name) in want {
            if self.attached.contains_key(&k) {
                continue;
            }
            let Some(h) = handle(k.0) else {
                continue;
            };
            match self.attach(ebpf, &h, k.1, name) {
                Ok(mut a) => {
                    a.cookie = cookie(k.0);
                    if !self.announced {
                        self.announced = true;
                        info!(
                            mode = self.mode.as_str(),
                            "VXLAN counting: tc programs on VXLAN devices only ({})",
                            match self.mode {
                                HookMode::Tcx => "TCX links, first in each device's chain",
                                HookMode::NetlinkClsact =>
                                    "clsact cls_bpf filters; stale ones of an earlier run removed",
                            }
                        );
                    }
                    debug!(netns = k.0, device = name, "VXLAN tc programs attached");
                    self.failures.remove(&k);
                    self.attached.insert(k, a);
                }
                Err(e) => {
                    if self.failures.get(&k) != Some(&e) {
                        warn!(netns = k.0, device = name, error = %e, "VXLAN tc programs not attached");
                    }
                    self.failures.insert(k, e);
                }
            }
        }
        Ok(())
    }

    fn attach(
        &self,
        ebpf: &mut Ebpf,
        ns: &NetnsHandle,
        ifindex: u32,
        name: &str,
    ) -> Result<Attached, String> {
        let mode = self.mode;
        let mut out = Attached {
            name: name.to_string(),
            cookie: None,
            egress: None,
            ingress: None,
        };
        for (prog_name, dir) in [
            (EGRESS_PROGRAM, TcAttachType::Egress),
            (INGRESS_PROGRAM, TcAttachType::Ingress),
        ] {
            let prog = classifier(ebpf, prog_name).map_err(|e| e.to_string())?;
            let id = run_in_netns(ns, || {
                attach_here(prog, prog_name, dir, ifindex, name, mode)
            })
            .map_err(|e| e.to_string())??;
            match dir {
                TcAttachType::Egress => out.egress = Some(id),
                _ => out.ingress = Some(id),
            }
        }
        Ok(out)
    }

    fn detach(
        &self,
        ebpf: &mut Ebpf,
        k: (NetnsInode, u32),
        a: Attached,
        handle: &impl Fn(NetnsInode) -> Option<Arc<NetnsHandle>>,
    ) {
        let ns = handle(k.0);
        for (prog_name, id) in [(EGRESS_PROGRAM, a.egress), (INGRESS_PROGRAM, a.ingress)] {
            let Some(id) = id else { continue };
            let Ok(prog) = classifier(ebpf, prog_name) else {
                continue;
            };
            let Ok(link) = prog.take_link(id) else {
                continue;
            };
            match (self.mode, &ns) {
                // Closing a TCX link detaches it wherever this runs; a device that is gone
                // took its links with it already.
                (HookMode::Tcx, _) => drop(link),
                (HookMode::NetlinkClsact, Some(ns)) => {
                    if let Err(e) = run_in_netns(ns, move || drop(link)) {
                        debug!(netns = k.0, error = %e, "VXLAN tc filter not detached");
                    }
                }
                // The namespace is gone and its devices with it. Dropping the link here would
                // send the netlink delete (by ifindex) to *this* namespace: forget it instead.
                (HookMode::NetlinkClsact, None) => std::mem::forget(link),
            }
        }
        debug!(netns = k.0, device = %a.name, "VXLAN tc programs detached");
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, TcAttachError> {
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(TcAttachError::MissingProgram(name))
}

/// In the device's namespace: checks the name still means `ifindex`, then attaches.
fn attach_here(
    prog: &mut SchedClassifier,
    prog_name: &str,
    dir: TcAttachType,
    ifindex: u32,
    name: &str,
    mode: HookMode,
) -> Result<SchedClassifierLinkId, String> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated string.
    let now = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if now != ifindex {
        return Err(format!(
            "device {name} is no longer ifindex {ifindex} (now {now})"
        ));
    }
    let opts = match mode {
        HookMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
        HookMode::NetlinkClsact => {
            // EEXIST when the qdisc is there already: fine.
            let _ = qdisc_add_clsact(name);
            // Filters of a fathom that was killed (netlink filters outlive their process).
            let _ = qdisc_detach_program(name, dir, prog_name);
            TcAttachOptions::Netlink(NlOptions::default())
        }
    };
    prog.attach_with_options(name, dir, opts)
        .map_err(|e| crate::loader::error_chain(&e))
}
