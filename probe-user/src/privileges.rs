//! Checks that the process may load and attach BPF programs before trying.

/// Capability numbers (include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Parses the `CapEff:` line of /proc/self/status.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// `None` when the capabilities suffice (CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON), else a
/// one-line description of what is missing.
pub fn missing(caps: u64) -> Option<String> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    let mut need = Vec::new();
    if !has(CAP_BPF) {
        need.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        need.push("CAP_PERFMON");
    }
    Some(format!(
        "fathom needs root (or CAP_BPF and CAP_PERFMON); missing {}: run it with sudo or as a privileged container",
        need.join(" and ")
    ))
}

/// Checks the running process; `Err` carries the one-line message for the user.
pub fn check() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let caps = effective_caps(&status).ok_or("no CapEff line in /proc/self/status")?;
    match missing(caps) {
        None => Ok(()),
        Some(msg) => Err(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(s), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn root_and_bpf_perfmon_suffice() {
        assert_eq!(missing(0x1ff_ffff_ffff), None);
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
    }

    #[test]
    fn names_what_is_missing() {
        let m = missing(1 << CAP_BPF).unwrap();
        assert!(m.contains("missing CAP_PERFMON"), "{m}");
        let m = missing(0).unwrap();
        assert!(m.contains("CAP_BPF and CAP_PERFMON"), "{m}");
    }
}
