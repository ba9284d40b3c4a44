//! Loading and attaching the kernel programs.
//!
//! Offsets of the kernel structs the programs read come from the running kernel's BTF
//! (`offsets`), and are written into the programs' read-only `OFFSETS` global before the
//! verifier sees them. Each program is attached on its own: one that fails (hook missing on
//! this kernel) is reported and the others keep working.

use aya::{Ebpf, EbpfLoader, programs::BtfTracePoint};
use tracing::{info, warn};

use probe_common::{NetConfig, NetOffsets};

use crate::{btf::Btf, offsets};

/// The compiled kernel programs (built by build.rs from probe-ebpf).
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// How a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// BTF-enabled tracepoint (`tp_btf/<name>`); needs kernel BTF, no tracefs.
    BtfTracepoint(&'static str),
}

/// A kernel program fathom knows about.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    pub name: &'static str,
    pub hook: Hook,
    /// What the program observes, for status output.
    pub family: &'static str,
}

/// Every program, in attach order.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        name: "oom_mark_victim",
        hook: Hook::BtfTracepoint("mark_victim"),
        family: "oom",
    },
    ProgramSpec {
        name: "skb_kfree_skb",
        hook: Hook::BtfTracepoint("kfree_skb"),
        family: "net",
    },
    ProgramSpec {
        name: "net_dev_start_xmit",
        hook: Hook::BtfTracepoint("net_dev_start_xmit"),
        family: "net",
    },
    ProgramSpec {
        name: "netif_receive_skb",
        hook: Hook::BtfTracepoint("netif_receive_skb"),
        family: "net",
    },
    // Reclaim stalls (probe-ebpf/src/reclaim.rs): each begin/end pair only counts when both
    // halves attach; the tracepoints exist from before 5.10 on (memcg ones need CONFIG_MEMCG).
    ProgramSpec {
        name: "memcg_reclaim_begin",
        hook: Hook::BtfTracepoint("mm_vmscan_memcg_reclaim_begin"),
        family: "pressure",
    },
    ProgramSpec {
        name: "memcg_reclaim_end",
        hook: Hook::BtfTracepoint("mm_vmscan_memcg_reclaim_end"),
        family: "pressure",
    },
    ProgramSpec {
        name: "direct_reclaim_begin",
        hook: Hook::BtfTracepoint("mm_vmscan_direct_reclaim_begin"),
        family: "pressure",
    },
    ProgramSpec {
        name: "direct_reclaim_end",
        hook: Hook::BtfTracepoint("mm_vmscan_direct_reclaim_end"),
        family: "pressure",
    },
];

/// Settings for loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Kernel BTF to compute struct offsets from.
    pub btf_path: String,
    /// Drop events per second per CPU let into the ring buffer (the counts are always exact).
    pub drop_events_per_sec: u64,
    /// Burst allowance of that rate limit.
    pub drop_events_burst: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            btf_path: Btf::VMLINUX.to_string(),
            drop_events_per_sec: 100,
            drop_events_burst: 200,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub family: &'static str,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] crate::btf::BtfError),
    #[error("kernel BTF lacks what fathom needs: {0}")]
    Offsets(#[from] offsets::OffsetsError),
    #[error("cannot read kernel BTF for loading: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("no program could be attached: {0}")]
    NothingAttached(String),
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub status: Vec<ProgramStatus>,
    /// The kernel's symbols, read once while loading (None without the privilege to see
    /// kernel addresses); reused to name drop locations.
    pub kallsyms: Option<crate::kallsyms::Kallsyms>,
    /// Names of the kernel's drop reasons, read from the same BTF parse as the offsets.
    pub drop_reasons: crate::drop_reason::DropReasons,
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF memory to it (< 5.11). Newer
/// kernels account BPF memory to the memcg and the call may fail without CAP_SYS_RESOURCE.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("setrlimit(RLIMIT_MEMLOCK) failed; fine on kernels >= 5.11");
    }
}

/// Loads the object with offsets from `btf_path` and attaches every program it can.
pub fn load_and_attach(btf_path: &str) -> Result<Loaded, LoadError> {
    load_with(&LoadOptions {
        btf_path: btf_path.to_string(),
        ..LoadOptions::default()
    })
}

/// Loads the object as `opts` says and attaches every program it can.
pub fn load_with(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    raise_memlock();
    let btf = Btf::from_file(&opts.btf_path)?;
    let offs = offsets::kernel_offsets(&btf)?;
    tracing::debug!(?offs, "kernel offsets from BTF");
    // The network programs need their own members; without them only they are skipped.
    let net_offs = offsets::net_offsets(&btf);
    if let Err(e) = &net_offs {
        warn!(error = %e, "network programs disabled");
    }
    let kallsyms = match crate::kallsyms::Kallsyms::load() {
        Ok(k) => Some(k),
        Err(e) => {
            warn!(error = %e, "kernel symbols unavailable: drop locations stay unnamed");
            None
        }
    };
    let reason = |name: &str| {
        btf.enum_value("skb_drop_reason", &format!("SKB_DROP_REASON_{name}"))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(u32::MAX)
    };
    let net_config = NetConfig {
        drop_events_per_sec: opts.drop_events_per_sec,
        drop_events_burst: opts.drop_events_burst.max(1),
        frag_reasons: [
            reason("FRAG_REASM_TIMEOUT"),
            reason("FRAG_TOO_FAR"),
            reason("DUP_FRAG"),
            u32::MAX,
        ],
        vxlan_xmit_addr: kallsyms.as_ref().map_or(0, vxlan_xmit_address),
    };
    let aya_btf = aya::Btf::parse_file(&opts.btf_path, aya::Endianness::default())?;
    let net_offs_value = net_offs.as_ref().copied().unwrap_or(NetOffsets::zeroed());
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .override_global("OFFSETS", &offs, true)
        .override_global("NET_OFFSETS", &net_offs_value, true)
        .override_global("NET_CONFIG", &net_config, true)
        .load(PROBE_OBJECT)?;

    let mut status = Vec::new();
    for spec in PROGRAMS {
        let variant = object_program(&btf, spec);
        let result = match (&net_offs, spec.family) {
            (Err(e), "net") => Err(format!("kernel BTF lacks what it needs: {e}")),
            _ => match unsupported_reason(&btf, spec) {
                Some(why) => Err(why),
                None => attach_one(&mut ebpf, spec, variant, &aya_btf),
            },
        };
        match &result {
            Ok(()) if variant != spec.name => info!(
                program = spec.name,
                variant,
                "attached; this kernel (< 5.17) passes no drop reasons: every drop is \
                 NOT_SPECIFIED, told apart by its call site"
            ),
            Ok(()) => info!(program = spec.name, "attached"),
            Err(e) => warn!(program = spec.name, error = %e, "not attached"),
        }
        status.push(ProgramStatus {
            name: spec.name,
            family: spec.family,
            attached: result.is_ok(),
            error: result.err(),
        });
    }
    if !status.iter().any(|s| s.attached) {
        let why = status
            .iter()
            .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(LoadError::NothingAttached(why));
    }
    Ok(Loaded {
        ebpf,
        status,
        kallsyms,
        drop_reasons: crate::drop_reason::DropReasons::from_btf(&btf),
    })
}

/// `vxlan_xmit`'s address, when VXLAN is built in or its module is loaded (0 otherwise: the
/// per-packet programs then look every device up).
fn vxlan_xmit_address(k: &crate::kallsyms::Kallsyms) -> u64 {
    k.address_of("vxlan_xmit")
        .or_else(|| k.address_of("vxlan_xmit [vxlan]"))
        .unwrap_or(0)
}

/// Why a program cannot work on this kernel although its hook exists, if it cannot.
fn unsupported_reason(btf: &Btf, spec: &ProgramSpec) -> Option<String> {
    match spec.name {
        // Before the tracepoint carried the victim's task_struct (it gained total_vm, RSS, … at the
        // same time: "mm: update mark_victim tracepoints fields", Linux 6.9, backported to some
        // stable series) it passed only a pid, which this tp_btf program cannot turn into a task.
        "oom_mark_victim" if btf.member("trace_event_raw_mark_victim", &["total_vm"]).is_none() => {
            Some(
                "oom:mark_victim passes only a pid on this kernel (needs Linux >= 6.9 or a stable kernel with that tracepoint update); OOM kills are not reported"
                    .to_string(),
            )
        }
        _ => None,
    }
}

/// Whether `skb:kfree_skb` passes a drop reason. It became the tracepoint's third argument in
/// Linux 5.17 ("net: skb: introduce kfree_skb_reason()", which added `reason` to the
/// tracepoint's record at the same time); before, the verifier refuses a read of it
/// ("func 'kfree_skb' doesn't have 3-th argument"), e.g. on 5.10 and 5.15.
fn kfree_skb_has_reason(btf: &Btf) -> bool {
    btf.member("trace_event_raw_kfree_skb", &["reason"])
        .is_some()
}

/// The program of the object that implements `spec` on this kernel: `skb_kfree_skb` has a
/// variant for kernels without drop reasons.
fn object_program(btf: &Btf, spec: &ProgramSpec) -> &'static str {
    match spec.name {
        "skb_kfree_skb" if !kfree_skb_has_reason(btf) => "skb_kfree_skb_legacy",
        name => name,
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    object_program: &str,
    btf: &aya::Btf,
) -> Result<(), String> {
    let prog = ebpf
        .program_mut(object_program)
        .ok_or_else(|| format!("program {object_program} missing from the object"))?;
    match spec.hook {
        Hook::BtfTracepoint(tp) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
            p.load(tp, btf).map_err(|e| error_chain(&e))?;
            p.attach().map_err(|e| error_chain(&e))?;
        }
    }
    Ok(())
}

/// An error with its sources on one line (aya puts the verifier log in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::enc::Enc;

    fn spec(name: &str) -> &'static ProgramSpec {
        PROGRAMS.iter().find(|p| p.name == name).unwrap()
    }

    /// The tracepoints' records as BTF has them, before and after the kernel versions that
    /// changed what they pass.
    fn btf(new: bool) -> Btf {
        let mut e = Enc::new();
        let ptr = e.int("long", 8);
        let short = e.int("short", 2);
        let mut kfree = vec![
            ("skbaddr", ptr, 64),
            ("location", ptr, 128),
            ("protocol", short, 192),
        ];
        let mut victim = vec![("pid", short, 64)];
        if new {
            kfree.push(("reason", short, 224));
            victim.push(("total_vm", ptr, 128));
        }
        e.strukt("trace_event_raw_kfree_skb", 40, &kfree);
        e.strukt("trace_event_raw_mark_victim", 64, &victim);
        Btf::from_bytes(&e.build()).unwrap()
    }

    #[test]
    fn refuses_programs_whose_tracepoint_lacks_what_they_read() {
        let old = btf(false);
        // Drops: the variant without reasons instead of a refusal.
        assert_eq!(unsupported_reason(&old, spec("skb_kfree_skb")), None);
        assert_eq!(
            object_program(&old, spec("skb_kfree_skb")),
            "skb_kfree_skb_legacy"
        );
        let why = unsupported_reason(&old, spec("oom_mark_victim")).unwrap();
        assert!(why.contains("needs Linux >= 6.9"), "{why}");
        assert_eq!(unsupported_reason(&old, spec("net_dev_start_xmit")), None);

        let new = btf(true);
        for p in PROGRAMS {
            assert_eq!(unsupported_reason(&new, p), None, "{}", p.name);
            assert_eq!(object_program(&new, p), p.name);
        }
    }
}
