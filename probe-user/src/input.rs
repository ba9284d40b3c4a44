//! Checks of command-line input that need the running system: a `--netns` must name a network
//! namespace that exists, a `--reason` a drop reason the running kernel defines, `FATHOM_LOG`
//! must parse. Each failure is one line for the user (exit code 2, said by `main`).

use std::{os::unix::fs::MetadataExt as _, path::Path};

use crate::{
    btf::Btf,
    drop_reason::DropReasons,
    net::netns::{DiscoveryConfig, discover},
};

/// `NSFS_MAGIC` from `include/uapi/linux/magic.h`: the filesystem of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` = `_IO(0xb7, 0x3)` (`include/uapi/linux/nsfs.h`, Linux ≥ 4.11).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// `--netns`: an inode number of a network namespace fathom can find (a process's
/// `/proc/PID/ns/net` or a bind mount in /run/netns, /run/docker/netns), or a path to an nsfs
/// file of a network namespace. Returns the namespace's inode.
pub fn resolve_netns(arg: &str) -> Result<u32, String> {
    if let Ok(ino) = arg.parse::<u64>() {
        let ino32 = u32::try_from(ino)
            .map_err(|_| format!("--netns {arg}: no network namespace has this inode"))?;
        let found = discover(&DiscoveryConfig::default())
            .map_err(|e| format!("--netns {arg}: cannot list network namespaces: {e}"))?;
        return if found.contains_key(&ino32) {
            Ok(ino32)
        } else {
            Err(format!(
                "--netns {arg}: no network namespace with this inode (looked at /proc/*/ns/net and the bind mounts in /run/netns, /run/docker/netns)"
            ))
        };
    }
    netns_file_inode(Path::new(arg)).map_err(|why| format!("--netns {arg}: {why}"))
}

/// The inode of an nsfs file that is a network namespace.
fn netns_file_inode(path: &Path) -> Result<u32, String> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: fstatfs writes into the zeroed struct we own; the fd is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if st.f_type as i64 != NSFS_MAGIC {
        return Err(
            "not a namespace file (give an inode, /run/netns/NAME or /proc/PID/ns/net)".into(),
        );
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* type.
    let ty = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if ty < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if ty != libc::CLONE_NEWNET {
        return Err("a namespace, but not a network namespace".into());
    }
    let ino = f.metadata().map_err(|e| e.to_string())?.ino();
    u32::try_from(ino).map_err(|_| format!("inode {ino} out of range"))
}

/// `--reason`: every name must be a drop reason of the running kernel's BTF (with or without
/// `SKB_DROP_REASON_`, any case). Returns them upper-cased without the prefix. When the BTF
/// cannot be read the names pass unchanged (the loader then says why it cannot start).
pub fn check_reasons(names: &[String], btf_path: &str) -> Result<Vec<String>, String> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let Ok(btf) = Btf::from_file(btf_path) else {
        return Ok(names.to_vec());
    };
    check_reasons_in(names, &DropReasons::from_btf(&btf))
}

fn check_reasons_in(names: &[String], reasons: &DropReasons) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let up = n.to_ascii_uppercase();
        let short = up
            .strip_prefix("SKB_DROP_REASON_")
            .unwrap_or(&up)
            .to_owned();
        if reasons.value(&short).is_none() {
            let known: Vec<&str> = reasons.iter().map(|(_, name)| name).collect();
            return Err(format!(
                "--reason {n}: the running kernel has no such drop reason; it knows: {}",
                known.join(", ")
            ));
        }
        out.push(short);
    }
    Ok(out)
}

/// The log filter from `FATHOM_LOG` (`info` when unset or empty); a value that does not parse
/// is an error naming it.
pub fn log_filter(value: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(tracing_subscriber::EnvFilter::new("info")),
        Some(v) => {
            const HINT: &str = "(e.g. FATHOM_LOG=debug or FATHOM_LOG=fathom=debug,warn)";
            // tracing reads a bare word as "everything of that target": `garbage` would be
            // accepted and silence every log line. A bare directive must be a level here.
            for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let bare = !d.contains(['=', '[', '{']);
                if bare
                    && d.parse::<tracing_subscriber::filter::LevelFilter>()
                        .is_err()
                {
                    return Err(format!(
                        "FATHOM_LOG={v}: {d:?} is neither a level (off, error, warn, info, debug, trace) nor target=level {HINT}"
                    ));
                }
            }
            tracing_subscriber::EnvFilter::builder()
                .parse(v)
                .map_err(|e| format!("FATHOM_LOG={v}: {e} {HINT}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_checked_against_the_table() {
        let r = DropReasons::from_pairs(vec![
            ("SKB_DROP_REASON_NO_SOCKET".into(), 3),
            ("SKB_DROP_REASON_FRAG_REASM_TIMEOUT".into(), 40),
        ]);
        assert_eq!(
            check_reasons_in(
                &[
                    "no_socket".into(),
                    "SKB_DROP_REASON_FRAG_REASM_TIMEOUT".into()
                ],
                &r
            ),
            Ok(vec!["NO_SOCKET".into(), "FRAG_REASM_TIMEOUT".into()])
        );
        let e = check_reasons_in(&["NOPE".into()], &r).unwrap_err();
        assert!(
            e.contains("--reason NOPE") && e.contains("NO_SOCKET, FRAG_REASM_TIMEOUT"),
            "{e}"
        );
    }

    #[test]
    fn non_namespace_files_are_refused() {
        let e = resolve_netns("/proc/self/status").unwrap_err();
        assert!(e.contains("not a namespace file"), "{e}");
        let e = resolve_netns("/proc/self/ns/pid").unwrap_err();
        assert!(e.contains("not a network namespace"), "{e}");
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        assert_eq!(resolve_netns("/proc/self/ns/net"), Ok(own));
    }

    #[test]
    fn log_filters_parse_or_say_why() {
        assert!(log_filter(None).is_ok());
        assert!(log_filter(Some("fathom=debug,warn")).is_ok());
        assert!(log_filter(Some("debug")).is_ok());
        let e = log_filter(Some("garbage")).unwrap_err();
        assert!(
            e.starts_with("FATHOM_LOG=garbage: \"garbage\" is neither"),
            "{e}"
        );
        let e = log_filter(Some("fathom=loud")).unwrap_err();
        assert!(e.starts_with("FATHOM_LOG=fathom=loud: "), "{e}");
    }
}
