//! Byte offsets of the kernel struct members fathom's eBPF programs read, computed from the
//! running kernel's BTF (see [`probe_common::KernelOffsets`] for what each field means).
//!
//! Layout differences handled here:
//! - `kernfs_node.parent` was renamed `__parent` in 6.15;
//! - `kernfs_node.id` is a `u64` (5.5+) or `union kernfs_node_id` (older; its 64-bit `id`
//!   member sits at offset 0 of the union);
//! - `mm_struct.rss_stat` is `struct percpu_counter[NR_MM_COUNTERS]` (6.2+) or
//!   `struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }` (older);
//! - most `mm_struct` members sit in an anonymous struct (6.x);
//! - without CONFIG_MEMCG there is no `memory_cgrp_id`: the memcg fields are then
//!   [`KernelOffsets::ABSENT`] and `memcg_enabled` is 0.

use probe_common::{KernelOffsets, NetOffsets};

use crate::btf::{Btf, MemberKind};

/// Why the offsets could not be computed. Every message is a single line.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// A member, struct or enumerator fathom needs is not in the kernel's BTF.
    #[error("kernel BTF has no {0}, which fathom needs")]
    Missing(&'static str),
    /// The member exists but its type is not one of the known layouts.
    #[error("unexpected kernel BTF layout: {0}")]
    Unexpected(String),
}

fn offset(btf: &Btf, s: &str, path: &[&str], what: &'static str) -> Result<u32, OffsetsError> {
    btf.member_offset(s, path)
        .ok_or(OffsetsError::Missing(what))
}

fn enumerator_index(btf: &Btf, name: &'static str, len: u32) -> Result<u32, OffsetsError> {
    let v = btf
        .enumerator_value(name)
        .ok_or(OffsetsError::Missing(name))?;
    u32::try_from(v).ok().filter(|&i| i < len).ok_or_else(|| {
        OffsetsError::Unexpected(format!(
            "{name} = {v} is outside mm_struct.rss_stat's {len} entries"
        ))
    })
}

/// `kernfs_node.id`: `u64 id` (5.5+), or `union kernfs_node_id { struct { u32 ino; u32
/// generation; }; u64 id; }` whose `id` is the 64-bit cgroup id.
fn kernel_offsets_kn_id(btf: &Btf) -> Result<u32, OffsetsError> {
    let kn_id = btf
        .member("kernfs_node", &["id"])
        .ok_or(OffsetsError::Missing("kernfs_node.id"))?;
    if kn_id.size != 8 {
        return Err(OffsetsError::Unexpected(format!(
            "kernfs_node.id is {} bytes, expected 8",
            kn_id.size
        )));
    }
    Ok(match kn_id.kind {
        MemberKind::Union(_) => btf
            .member_offset("kernfs_node", &["id", "id"])
            .unwrap_or(kn_id.offset),
        _ => kn_id.offset,
    })
}

/// Fills every field of [`KernelOffsets`] from `btf` (normally the running kernel's
/// `/sys/kernel/btf/vmlinux`).
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, OffsetsError> {
    let mut o = KernelOffsets::zeroed();

    o.task_pid = offset(btf, "task_struct", &["pid"], "task_struct.pid")?;
    o.task_tgid = offset(btf, "task_struct", &["tgid"], "task_struct.tgid")?;
    o.task_comm = offset(btf, "task_struct", &["comm"], "task_struct.comm")?;
    o.task_cgroups = offset(btf, "task_struct", &["cgroups"], "task_struct.cgroups")?;
    o.task_signal = offset(btf, "task_struct", &["signal"], "task_struct.signal")?;
    o.task_mm = offset(btf, "task_struct", &["mm"], "task_struct.mm")?;

    o.css_set_dfl_cgrp = offset(btf, "css_set", &["dfl_cgrp"], "css_set.dfl_cgrp")?;
    o.css_cgroup = offset(
        btf,
        "cgroup_subsys_state",
        &["cgroup"],
        "cgroup_subsys_state.cgroup",
    )?;
    o.css_parent = offset(
        btf,
        "cgroup_subsys_state",
        &["parent"],
        "cgroup_subsys_state.parent",
    )?;
    o.cgroup_kn = offset(btf, "cgroup", &["kn"], "cgroup.kn")?;

    o.kn_id = kernel_offsets_kn_id(btf)?;
    o.kn_name = offset(btf, "kernfs_node", &["name"], "kernfs_node.name")?;
    o.kn_parent = btf
        .member_offset("kernfs_node", &["parent"])
        .or_else(|| btf.member_offset("kernfs_node", &["__parent"]))
        .ok_or(OffsetsError::Missing("kernfs_node.parent (or __parent)"))?;

    o.signal_oom_score_adj = offset(
        btf,
        "signal_struct",
        &["oom_score_adj"],
        "signal_struct.oom_score_adj",
    )?;

    o.mm_total_vm = offset(btf, "mm_struct", &["total_vm"], "mm_struct.total_vm")?;
    let rss = btf
        .member("mm_struct", &["rss_stat"])
        .ok_or(OffsetsError::Missing("mm_struct.rss_stat"))?;
    let entries = match &rss.kind {
        // 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS];
        MemberKind::Array {
            elem_size,
            len,
            elem_struct: Some(elem),
        } if elem == "percpu_counter" => {
            o.mm_rss_base =
                rss.offset + offset(btf, "percpu_counter", &["count"], "percpu_counter.count")?;
            o.mm_rss_stride = *elem_size;
            *len
        }
        // Older: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; } rss_stat;
        MemberKind::Struct(name) if !name.is_empty() => {
            let count = btf
                .member(name, &["count"])
                .ok_or(OffsetsError::Missing("mm_rss_stat.count"))?;
            let MemberKind::Array { elem_size, len, .. } = count.kind else {
                return Err(OffsetsError::Unexpected(format!(
                    "{name}.count is not an array ({:?})",
                    count.kind
                )));
            };
            o.mm_rss_base = rss.offset + count.offset;
            o.mm_rss_stride = elem_size;
            len
        }
        other => {
            return Err(OffsetsError::Unexpected(format!(
                "mm_struct.rss_stat is neither percpu_counter[] nor struct mm_rss_stat ({other:?})"
            )));
        }
    };
    if o.mm_rss_stride == 0 {
        return Err(OffsetsError::Unexpected(
            "mm_struct.rss_stat entries have size 0".into(),
        ));
    }
    o.mm_rss_file_idx = enumerator_index(btf, "MM_FILEPAGES", entries)?;
    o.mm_rss_anon_idx = enumerator_index(btf, "MM_ANONPAGES", entries)?;
    o.mm_rss_shmem_idx = enumerator_index(btf, "MM_SHMEMPAGES", entries)?;

    match btf.enum_value("cgroup_subsys_id", "memory_cgrp_id") {
        None => {
            // CONFIG_MEMCG=n: nothing to read.
            o.memcg_enabled = 0;
            o.css_set_memory_css = KernelOffsets::ABSENT;
            o.memcg_memory_usage = KernelOffsets::ABSENT;
            o.memcg_memory_max = KernelOffsets::ABSENT;
            o.memcg_oom_group = KernelOffsets::ABSENT;
        }
        Some(memory_cgrp_id) => {
            let subsys = btf
                .member("css_set", &["subsys"])
                .ok_or(OffsetsError::Missing("css_set.subsys"))?;
            let MemberKind::Array { elem_size, len, .. } = subsys.kind else {
                return Err(OffsetsError::Unexpected(format!(
                    "css_set.subsys is not an array ({:?})",
                    subsys.kind
                )));
            };
            let idx = u32::try_from(memory_cgrp_id)
                .ok()
                .filter(|&i| i < len)
                .ok_or_else(|| {
                    OffsetsError::Unexpected(format!(
                        "memory_cgrp_id = {memory_cgrp_id} is outside css_set.subsys's {len} entries"
                    ))
                })?;
            o.css_set_memory_css = subsys.offset + idx * elem_size;
            // `usage` is an atomic_long_t whose `counter` is at +0.
            o.memcg_memory_usage = offset(
                btf,
                "mem_cgroup",
                &["memory", "usage"],
                "mem_cgroup.memory.usage",
            )?;
            o.memcg_memory_max = offset(
                btf,
                "mem_cgroup",
                &["memory", "max"],
                "mem_cgroup.memory.max",
            )?;
            // `bool oom_group` (4.19+); without it no kill is reported as a group kill.
            o.memcg_oom_group = btf
                .member_offset("mem_cgroup", &["oom_group"])
                .unwrap_or(KernelOffsets::ABSENT);
            o.memcg_enabled = 1;
        }
    }

    Ok(o)
}

/// Fills [`NetOffsets`] for the network programs. Separate from [`kernel_offsets`] so that a
/// kernel lacking one of these members only loses the network programs.
pub fn net_offsets(btf: &Btf) -> Result<NetOffsets, OffsetsError> {
    let mut o = NetOffsets::zeroed();
    o.skb_len = offset(btf, "sk_buff", &["len"], "sk_buff.len")?;
    o.skb_head = offset(btf, "sk_buff", &["head"], "sk_buff.head")?;
    o.skb_data = offset(btf, "sk_buff", &["data"], "sk_buff.data")?;
    o.skb_end = offset(btf, "sk_buff", &["end"], "sk_buff.end")?;
    // `end` is an offset from `head` (sk_buff_data_t = unsigned int) on 64-bit kernels.
    let end = btf
        .member("sk_buff", &["end"])
        .ok_or(OffsetsError::Missing("sk_buff.end"))?;
    if end.size != 4 {
        return Err(OffsetsError::Unexpected(format!(
            "sk_buff.end is {} bytes (a pointer?), expected a 4-byte offset",
            end.size
        )));
    }
    o.skb_network_header = offset(
        btf,
        "sk_buff",
        &["network_header"],
        "sk_buff.network_header",
    )?;
    o.skb_protocol = offset(btf, "sk_buff", &["protocol"], "sk_buff.protocol")?;
    o.skb_dev = offset(btf, "sk_buff", &["dev"], "sk_buff.dev")?;
    o.skb_sk = offset(btf, "sk_buff", &["sk"], "sk_buff.sk")?;
    o.dev_ifindex = offset(btf, "net_device", &["ifindex"], "net_device.ifindex")?;
    o.dev_nd_net = offset(btf, "net_device", &["nd_net", "net"], "net_device.nd_net")?;
    o.dev_mtu = offset(btf, "net_device", &["mtu"], "net_device.mtu")?;
    o.net_ns_inum = offset(btf, "net", &["ns", "inum"], "net.ns.inum")?;
    o.net_ns_type = btf
        .member_offset("net", &["ns", "ns_type"])
        .unwrap_or(KernelOffsets::ABSENT);
    o.sk_net = offset(
        btf,
        "sock",
        &["__sk_common", "skc_net", "net"],
        "sock.__sk_common.skc_net",
    )?;
    o.sk_cgroup = btf
        .member_offset("sock", &["sk_cgrp_data", "cgroup"])
        .unwrap_or(KernelOffsets::ABSENT);
    o.cgroup_kn = offset(btf, "cgroup", &["kn"], "cgroup.kn")?;
    o.kn_id = kernel_offsets_kn_id(btf)?;
    o.shinfo_gso_size = offset(
        btf,
        "skb_shared_info",
        &["gso_size"],
        "skb_shared_info.gso_size",
    )?;
    o.dev_netdev_ops = btf
        .member_offset("net_device", &["netdev_ops"])
        .unwrap_or(KernelOffsets::ABSENT);
    o.ops_ndo_start_xmit = btf
        .member_offset("net_device_ops", &["ndo_start_xmit"])
        .unwrap_or(KernelOffsets::ABSENT);
    o.shinfo_gso_segs = offset(
        btf,
        "skb_shared_info",
        &["gso_segs"],
        "skb_shared_info.gso_segs",
    )?;
    // The namespace's cookie (Linux >= 5.14), else keys carry 0.
    o.net_cookie = btf
        .member_offset("net", &["net_cookie"])
        .unwrap_or(KernelOffsets::ABSENT);
    // Fragment-queue expiry: optional, the expiry program is not attached without them
    // (`expiry_offsets_known`).
    let opt = |s: &str, p: &[&str]| btf.member_offset(s, p).unwrap_or(KernelOffsets::ABSENT);
    o.timer_function = opt("timer_list", &["function"]);
    o.fq_timer = opt("inet_frag_queue", &["timer"]);
    o.fq_flags = opt("inet_frag_queue", &["flags"]);
    o.fq_fqdir = opt("inet_frag_queue", &["fqdir"]);
    o.fqdir_net = opt("fqdir", &["net"]);
    o.fqdir_dead = opt("fqdir", &["dead"]);
    Ok(o)
}

/// Whether the fragment-queue expiry program has every member it reads.
pub fn expiry_offsets_known(o: &NetOffsets) -> bool {
    [
        o.timer_function,
        o.fq_timer,
        o.fq_flags,
        o.fq_fqdir,
        o.fqdir_net,
    ]
    .iter()
    .all(|&v| v != KernelOffsets::ABSENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::bpftool_raw;
    use crate::btf::enc::Enc;

    /// Which generation of kernel layout the fake BTF mimics.
    #[derive(Clone, Copy)]
    struct Fake {
        /// 6.15+ (`__parent`, u64 id, percpu_counter rss_stat, anonymous mm struct) vs
        /// ~5.4 (`parent`, union kernfs_node_id, struct mm_rss_stat).
        new: bool,
        memcg: bool,
        pid: bool,
    }

    fn fake_kernel(f: Fake) -> Btf {
        let mut e = Enc::new();
        let int = e.int("int", 4); // 1
        let long = e.int("long", 8); // 2
        let char_ = e.int("char", 1); // 3
        let short = e.int("short", 2); // 4
        let u64_t = e.typedef("u64", long); // 5
        let pint = e.ptr(int); // 6: stands in for every pointer
        let comm = e.array(char_, int, 16); // 7
        let anon_counter = e.strukt("", 8, &[("counter", long, 0)]);
        let atomic64 = e.typedef("atomic64_t", anon_counter);
        let atomic_long = e.typedef("atomic_long_t", atomic64);

        let mut task = vec![
            ("state", long, 0),
            ("tgid", int, 1056 * 8),
            ("mm", pint, 900 * 8),
            ("comm", comm, 1700 * 8),
            ("signal", pint, 1800 * 8),
            ("cgroups", pint, 2300 * 8),
        ];
        if f.pid {
            task.push(("pid", int, 1052 * 8));
        }
        e.strukt("task_struct", 3000, &task);

        let subsys = e.array(pint, int, 12);
        e.strukt(
            "css_set",
            200,
            &[("subsys", subsys, 0), ("dfl_cgrp", pint, 112 * 8)],
        );
        e.strukt(
            "cgroup_subsys_state",
            200,
            &[("cgroup", pint, 0), ("parent", pint, 136 * 8)],
        );
        e.strukt("cgroup", 2000, &[("self", int, 0), ("kn", pint, 264 * 8)]);

        if f.new {
            e.strukt(
                "kernfs_node",
                136,
                &[
                    ("__parent", pint, 64),
                    ("name", pint, 128),
                    ("id", u64_t, 768),
                ],
            );
        } else {
            let ino_gen = e.strukt("", 8, &[("ino", int, 0), ("generation", int, 32)]);
            let kn_id = e.union("kernfs_node_id", 8, &[("", ino_gen, 0), ("id", u64_t, 0)]);
            e.strukt(
                "kernfs_node",
                128,
                &[
                    ("parent", pint, 64),
                    ("name", pint, 128),
                    ("id", kn_id, 640),
                ],
            );
        }

        if f.memcg {
            let pc = e.strukt(
                "page_counter",
                120,
                &[("usage", atomic_long, 0), ("max", long, 64 * 8)],
            );
            e.strukt(
                "mem_cgroup",
                4000,
                &[("css", int, 0), ("memory", pc, 256 * 8)],
            );
            e.enum32(
                "cgroup_subsys_id",
                false,
                &[
                    ("cpuset_cgrp_id", 0),
                    ("cpu_cgrp_id", 1),
                    ("memory_cgrp_id", 4),
                ],
            );
        }

        e.strukt(
            "signal_struct",
            1000,
            &[("nr_threads", int, 0), ("oom_score_adj", short, 700 * 8)],
        );

        e.enum32(
            "",
            false,
            &[
                ("MM_FILEPAGES", 0),
                ("MM_ANONPAGES", 1),
                ("MM_SWAPENTS", 2),
                ("MM_SHMEMPAGES", 3),
                ("NR_MM_COUNTERS", 4),
            ],
        );
        if f.new {
            let pcc = e.strukt(
                "percpu_counter",
                40,
                &[
                    ("lock", int, 0),
                    ("count", long, 64),
                    ("counters", pint, 256),
                ],
            );
            let arr = e.array(pcc, int, 4);
            let inner = e.strukt(
                "",
                1000,
                &[
                    ("mmap_base", long, 0),
                    ("total_vm", long, 200 * 8),
                    ("rss_stat", arr, 720 * 8),
                ],
            );
            e.strukt(
                "mm_struct",
                1100,
                &[("", inner, 0), ("cpu_bitmap", long, 1000 * 8)],
            );
        } else {
            let counts = e.array(atomic_long, int, 4);
            let rss = e.strukt("mm_rss_stat", 32, &[("count", counts, 0)]);
            e.strukt(
                "mm_struct",
                900,
                &[
                    ("mmap_base", long, 0),
                    ("total_vm", long, 168 * 8),
                    ("rss_stat", rss, 704 * 8),
                ],
            );
        }
        Btf::from_bytes(&e.build()).expect("fake kernel BTF parses")
    }

    #[test]
    fn new_kernel_layout() {
        let btf = fake_kernel(Fake {
            new: true,
            memcg: true,
            pid: true,
        });
        let o = kernel_offsets(&btf).unwrap();
        assert_eq!(
            (
                o.task_pid,
                o.task_tgid,
                o.task_comm,
                o.task_cgroups,
                o.task_signal,
                o.task_mm
            ),
            (1052, 1056, 1700, 2300, 1800, 900)
        );
        assert_eq!(o.css_set_dfl_cgrp, 112);
        assert_eq!(o.css_set_memory_css, 4 * 8);
        assert_eq!((o.css_cgroup, o.css_parent, o.cgroup_kn), (0, 136, 264));
        assert_eq!((o.kn_id, o.kn_name, o.kn_parent), (96, 16, 8));
        assert_eq!((o.memcg_memory_usage, o.memcg_memory_max), (256, 320));
        assert_eq!(o.signal_oom_score_adj, 700);
        assert_eq!(o.mm_total_vm, 200);
        assert_eq!((o.mm_rss_base, o.mm_rss_stride), (720 + 8, 40));
        assert_eq!(
            (o.mm_rss_file_idx, o.mm_rss_anon_idx, o.mm_rss_shmem_idx),
            (0, 1, 3)
        );
        assert_eq!(o.memcg_enabled, 1);
    }

    #[test]
    fn old_kernel_layout() {
        let btf = fake_kernel(Fake {
            new: false,
            memcg: true,
            pid: true,
        });
        let o = kernel_offsets(&btf).unwrap();
        assert_eq!((o.kn_id, o.kn_name, o.kn_parent), (80, 16, 8));
        assert_eq!(
            (o.mm_total_vm, o.mm_rss_base, o.mm_rss_stride),
            (168, 704, 8)
        );
        assert_eq!(
            (o.mm_rss_file_idx, o.mm_rss_anon_idx, o.mm_rss_shmem_idx),
            (0, 1, 3)
        );
        assert_eq!(o.memcg_enabled, 1);
    }

    #[test]
    fn no_memcg() {
        let btf = fake_kernel(Fake {
            new: true,
            memcg: false,
            pid: true,
        });
        let o = kernel_offsets(&btf).unwrap();
        assert_eq!(o.memcg_enabled, 0);
        assert_eq!(o.css_set_memory_css, KernelOffsets::ABSENT);
        assert_eq!(o.memcg_memory_usage, KernelOffsets::ABSENT);
        assert_eq!(o.memcg_memory_max, KernelOffsets::ABSENT);
        assert_eq!(o.task_pid, 1052);
    }

    #[test]
    fn missing_member_is_reported() {
        let btf = fake_kernel(Fake {
            new: true,
            memcg: true,
            pid: false,
        });
        let err = kernel_offsets(&btf).unwrap_err();
        assert!(
            matches!(err, OffsetsError::Missing("task_struct.pid")),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("task_struct.pid") && !msg.contains('\n'),
            "{msg}"
        );

        let empty = Btf::from_bytes(&Enc::new().build()).unwrap();
        assert!(matches!(
            kernel_offsets(&empty),
            Err(OffsetsError::Missing("task_struct.pid"))
        ));
    }

    /// Every offset must match what bpftool reads from the running kernel's BTF. Fails when
    /// the kernel has no BTF (fathom requires it) or bpftool is missing.
    #[test]
    fn running_kernel_matches_bpftool() {
        assert!(
            std::path::Path::new(Btf::VMLINUX).exists(),
            "{} does not exist: this kernel has no BTF, which fathom requires",
            Btf::VMLINUX
        );
        let btf = Btf::from_file(Btf::VMLINUX).unwrap();
        let got = kernel_offsets(&btf).unwrap();
        eprintln!("{got:#?}");

        let d = bpftool_raw::dump(Btf::VMLINUX);
        let off = |s: &str, p: &[&str]| {
            d.member_offset(s, p)
                .unwrap_or_else(|| panic!("bpftool shows no {s}.{}", p.join(".")))
        };
        let mut want = KernelOffsets::zeroed();
        want.task_pid = off("task_struct", &["pid"]);
        want.task_tgid = off("task_struct", &["tgid"]);
        want.task_comm = off("task_struct", &["comm"]);
        want.task_cgroups = off("task_struct", &["cgroups"]);
        want.task_signal = off("task_struct", &["signal"]);
        want.task_mm = off("task_struct", &["mm"]);
        want.css_set_dfl_cgrp = off("css_set", &["dfl_cgrp"]);
        want.css_cgroup = off("cgroup_subsys_state", &["cgroup"]);
        want.css_parent = off("cgroup_subsys_state", &["parent"]);
        want.cgroup_kn = off("cgroup", &["kn"]);
        want.kn_id = off("kernfs_node", &["id"]);
        want.kn_name = off("kernfs_node", &["name"]);
        want.kn_parent = d
            .member_offset("kernfs_node", &["parent"])
            .unwrap_or_else(|| off("kernfs_node", &["__parent"]));
        want.signal_oom_score_adj = off("signal_struct", &["oom_score_adj"]);
        want.mm_total_vm = off("mm_struct", &["total_vm"]);

        let (rss_bits, rss_ty) = d.member_bits("mm_struct", &["rss_stat"]).unwrap();
        let rss_ty = &d.types[&d.resolve(rss_ty)];
        if rss_ty.kind == "ARRAY" {
            let elem = &d.types[&d.resolve(rss_ty.type_id.unwrap())];
            assert_eq!(elem.name, "percpu_counter");
            want.mm_rss_base = (rss_bits / 8) as u32 + off("percpu_counter", &["count"]);
            want.mm_rss_stride = elem.size.unwrap() as u32;
        } else {
            assert_eq!(rss_ty.name, "mm_rss_stat");
            want.mm_rss_base = (rss_bits / 8) as u32 + off("mm_rss_stat", &["count"]);
            want.mm_rss_stride = 8;
        }
        let idx = |n: &str| d.enumerator(n).unwrap_or_else(|| panic!("no {n}")) as u32;
        want.mm_rss_file_idx = idx("MM_FILEPAGES");
        want.mm_rss_anon_idx = idx("MM_ANONPAGES");
        want.mm_rss_shmem_idx = idx("MM_SHMEMPAGES");

        let memcg_id = d
            .types
            .values()
            .find(|t| t.kind == "ENUM" && t.name == "cgroup_subsys_id")
            .and_then(|t| t.values.iter().find(|(n, _)| n == "memory_cgrp_id"))
            .map(|(_, v)| *v as u32);
        match memcg_id {
            Some(id) => {
                want.css_set_memory_css = off("css_set", &["subsys"]) + id * 8;
                want.memcg_memory_usage = off("mem_cgroup", &["memory", "usage"]);
                want.memcg_memory_max = off("mem_cgroup", &["memory", "max"]);
                want.memcg_oom_group = off("mem_cgroup", &["oom_group"]);
                want.memcg_enabled = 1;
            }
            None => {
                want.css_set_memory_css = KernelOffsets::ABSENT;
                want.memcg_memory_usage = KernelOffsets::ABSENT;
                want.memcg_memory_max = KernelOffsets::ABSENT;
                want.memcg_oom_group = KernelOffsets::ABSENT;
            }
        }
        assert_eq!(got, want);
    }
}
