//! What the bench reads from the kernel about BPF objects, without the programs' cooperation:
//! program run statistics (`bpftool prog show --json`: `run_time_ns`, `run_cnt`), map contents
//! (`bpftool map dump --json`), which objects a process holds (/proc/PID/fdinfo), perf-event
//! attachments (`bpftool perf show --json`, how bpftrace attaches tracepoints), the drop-reason
//! names of the running kernel (its BTF), the `kernel.bpf_stats_enabled` sysctl behind a guard,
//! and the producer/consumer positions of a ring buffer (mmap of its control pages).

use std::{collections::HashMap, fs, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd;

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = cmd::output(Command::new("bpftool").arg("--json").args(args))?;
    let v: Value = serde_json::from_str(&out)
        .with_context(|| format!("bpftool {} printed no JSON", args.join(" ")))?;
    if let Some(e) = v.get("error") {
        bail!("bpftool {}: {e}", args.join(" "));
    }
    Ok(v)
}

/// One program as `bpftool prog show` describes it. The run statistics only advance while
/// `kernel.bpf_stats_enabled` is 1 (or someone holds a `BPF_ENABLE_STATS` descriptor).
#[derive(Clone, Debug, Default)]
pub struct ProgInfo {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded program by id: one bpftool call, so all programs are read at the same moment.
pub fn programs() -> Result<HashMap<u32, ProgInfo>> {
    let v = bpftool_json(&["prog", "show"])?;
    let mut out = HashMap::new();
    for p in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(id) = p["id"].as_u64() else { continue };
        out.insert(
            id as u32,
            ProgInfo {
                name: p["name"].as_str().unwrap_or("").to_owned(),
                // Absent while zero.
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Map names by id (the kernel keeps the first 15 bytes of a name).
pub fn map_names() -> Result<HashMap<u32, String>> {
    let v = bpftool_json(&["map", "show"])?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| Some((m["id"].as_u64()? as u32, m["name"].as_str()?.to_owned())))
        .collect())
}

/// A BPF object name as the kernel stores it: at most 15 bytes.
pub fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// (program ids, map ids) of the BPF objects process `pid` holds descriptors of.
pub fn objects_of(pid: i32) -> Result<(Vec<u32>, Vec<u32>)> {
    let (mut progs, mut maps) = (Vec::new(), Vec::new());
    let dir = format!("/proc/{pid}/fd");
    for e in fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let e = e?;
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let field = match target.as_ref() {
            "anon_inode:bpf-prog" => "prog_id:",
            "anon_inode:bpf-map" => "map_id:",
            _ => continue,
        };
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix(field)?.trim().parse::<u32>().ok());
        match (field, id) {
            ("prog_id:", Some(id)) => progs.push(id),
            (_, Some(id)) => maps.push(id),
            _ => {}
        }
    }
    progs.sort_unstable();
    progs.dedup();
    maps.sort_unstable();
    maps.dedup();
    Ok((progs, maps))
}

/// Program ids attached through perf events by `pid` to the tracepoint `tp` (bpftrace's way).
pub fn perf_tracepoint_progs(pid: i32, tp: &str) -> Result<Vec<u32>> {
    let v = bpftool_json(&["perf", "show"])?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["pid"].as_i64() == Some(pid.into()) && e["tracepoint"].as_str() == Some(tp))
        .filter_map(|e| Some(e["prog_id"].as_u64()? as u32))
        .collect())
}

/// A map entry: key bytes and one value per possible CPU (one value for a plain map).
pub struct Entry {
    pub key: Vec<u8>,
    pub values: Vec<Vec<u8>>,
}

/// Dumps map `id` (maps without BTF: bpftool prints bytes as hex strings).
pub fn dump(id: u32) -> Result<Vec<Entry>> {
    let v = bpftool_json(&["map", "dump", "id", &id.to_string()])?;
    let bytes = |v: &Value| -> Result<Vec<u8>> {
        v.as_array()
            .context("expected a byte array")?
            .iter()
            .map(|b| {
                let s = b.as_str().context("expected a hex byte")?;
                u8::from_str_radix(s.trim_start_matches("0x"), 16)
                    .with_context(|| format!("bad byte {s:?}"))
            })
            .collect()
    };
    let mut out = Vec::new();
    for e in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let key = bytes(&e["key"])?;
        let values = match e.get("values") {
            Some(per_cpu) => per_cpu
                .as_array()
                .context("expected per-CPU values")?
                .iter()
                .map(|c| bytes(&c["value"]))
                .collect::<Result<_>>()?,
            None => vec![bytes(&e["value"])?],
        };
        out.push(Entry { key, values });
    }
    Ok(out)
}

/// Little-endian u64 at `off` (0 when out of range).
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Sum over CPUs of the u64 at `off` of each per-CPU value.
pub fn per_cpu_sum(e: &Entry, off: usize) -> u64 {
    e.values.iter().map(|v| u64_at(v, off)).sum()
}

/// `enum skb_drop_reason` value → name (`NO_SOCKET`, …), from the running kernel's BTF: the
/// numbers differ between kernels. Empty when bpftool or the BTF is not there.
pub fn drop_reason_names() -> HashMap<u32, String> {
    let Ok(text) = cmd::output(Command::new("bpftool").args([
        "btf",
        "dump",
        "file",
        "/sys/kernel/btf/vmlinux",
    ])) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with('[') {
            inside = line.contains("ENUM 'skb_drop_reason'");
            continue;
        }
        if !inside {
            continue;
        }
        // `	'SKB_DROP_REASON_NO_SOCKET' val=3`
        let mut parts = line.trim().splitn(2, ' ');
        let (Some(name), Some(val)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.trim_matches('\'');
        let name = name
            .strip_prefix("SKB_DROP_REASON_")
            .or_else(|| name.strip_prefix("SKB_"))
            .unwrap_or(name);
        if let Some(v) = val.strip_prefix("val=").and_then(|v| v.parse().ok()) {
            out.insert(v, name.to_owned());
        }
    }
    out
}

/// `kernel.bpf_stats_enabled` set for as long as the guard lives; the previous value comes
/// back on drop (on every path out of the phase that needs it, including Ctrl-C).
pub struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(Self::PATH)
            .with_context(|| format!("cannot read {} (kernel < 5.8?)", Self::PATH))?
            .trim()
            .to_owned();
        fs::write(Self::PATH, "1").with_context(|| format!("cannot write {}", Self::PATH))?;
        Ok(Self { previous })
    }

    pub fn previous(&self) -> &str {
        &self.previous
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(Self::PATH, &self.previous) {
            eprintln!(
                "bench: cannot restore {} to {}: {e}; run `sysctl kernel.bpf_stats_enabled={}`",
                Self::PATH,
                self.previous,
                self.previous
            );
        }
    }
}

/// Read-only view of a BPF ring buffer's consumer and producer positions (byte counters that
/// only grow). The consumer position is advanced by the process reading the ring: its delta is
/// what that process took out; the producer position counts what the programs reserved.
pub struct RingPositions {
    fd: libc::c_int,
    consumer: *mut libc::c_void,
    producer: *mut libc::c_void,
    page: usize,
}

impl RingPositions {
    /// Opens ring-buffer map `id` (BPF_MAP_GET_FD_BY_ID) and maps its two control pages.
    pub fn open(id: u32) -> Result<Self> {
        // union bpf_attr for BPF_MAP_GET_FD_BY_ID: { map_id: u32, next_id: u32, open_flags: u32 }.
        let mut attr = [0u32; 4];
        attr[0] = id;
        const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes from a valid buffer.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_FD_BY_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            bail!(
                "cannot open BPF map {id}: {}",
                std::io::Error::last_os_error()
            );
        }
        let fd = fd as libc::c_int;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // Page 0 holds consumer_pos, page 1 producer_pos (kernel/bpf/ringbuf.c); both may be
        // mapped read-only by anyone holding the map.
        let map = |offset: usize| {
            // SAFETY: a fresh shared read-only mapping of the map's fd; checked below.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    offset as libc::off_t,
                )
            }
        };
        let consumer = map(0);
        let producer = map(page);
        if consumer == libc::MAP_FAILED || producer == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: unmapping what was mapped and closing our own fd.
            unsafe {
                if consumer != libc::MAP_FAILED {
                    libc::munmap(consumer, page);
                }
                if producer != libc::MAP_FAILED {
                    libc::munmap(producer, page);
                }
                libc::close(fd);
            }
            bail!("cannot map the positions of ring buffer {id}: {err}");
        }
        Ok(Self {
            fd,
            consumer,
            producer,
            page,
        })
    }

    /// (consumer, producer) positions in bytes.
    pub fn read(&self) -> (u64, u64) {
        // SAFETY: both pages stay mapped while `self` lives; the kernel and the reader update
        // them with aligned 8-byte stores.
        unsafe {
            (
                std::ptr::read_volatile(self.consumer as *const u64),
                std::ptr::read_volatile(self.producer as *const u64),
            )
        }
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mappings and closing our own fd, once.
        unsafe {
            libc::munmap(self.consumer, self.page);
            libc::munmap(self.producer, self.page);
            libc::close(self.fd);
        }
    }
}
