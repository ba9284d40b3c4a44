//! Names of `skb:kfree_skb` drop reasons, and classification of IP reassembly failures.
//!
//! # Drop reasons
//! The tracepoint reports `reason` as a value of the kernel's `enum skb_drop_reason`. The
//! numbering changes between kernel versions (values are inserted in the middle of the enum;
//! e.g. `NO_SOCKET` is 2 on some kernels and 3 on others), so names are read from the running
//! kernel's BTF ([`DropReasons::from_btf`]), never hard-coded. Names are stored without the
//! `SKB_DROP_REASON_` prefix (`NOT_SPECIFIED`, `NO_SOCKET`, `FRAG_REASM_TIMEOUT`); the two
//! non-drop values `SKB_NOT_DROPPED_YET` / `SKB_CONSUMED` become `NOT_DROPPED_YET` /
//! `CONSUMED`, and the markers `SKB_DROP_REASON_MAX` / `SKB_DROP_REASON_SUBSYS_MASK` are left
//! out. Kernels before 5.17 have no such enum (and no reason in the tracepoint): the table is
//! then empty and every value is named `UNKNOWN_<value>`.
//!
//! Since 6.7 a reason's high 16 bits may name a subsystem (`enum skb_drop_reason_subsys`:
//! mac80211, openvswitch) whose own reason enums live in modules; such values are named
//! `<SUBSYSTEM>_<low 16 bits>` (e.g. `OPENVSWITCH_3`) when the subsystem is known.
//!
//! # Reassembly failures
//! [`classify_reassembly`] recognises drops that are IP reassembly failures (what the
//! `ReasmFails` SNMP counter counts) from the reason *and* the function that freed the skb
//! (the tracepoint's `location`, resolved with [`crate::kallsyms`]). This matters because
//! fragment-queue overflow has no reason of its own: when the per-netns fragment memory is
//! above `ipfrag_high_thresh`, `inet_frag_find()` refuses to create a queue, and
//! `ip_defrag()` / `ipv6_frag_rcv()` increment ReasmFails and call plain `kfree_skb()`, i.e.
//! reason `NOT_SPECIFIED` at a location inside `ip_defrag` / `ipv6_frag_rcv` (`ip_defrag`
//! then returns `-ENOMEM`). Drop tools that filter out `NOT_SPECIFIED` miss it entirely.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::btf::Btf;

/// Name of the drop-reason enum in kernel BTF.
pub const DROP_REASON_ENUM: &str = "skb_drop_reason";
/// Name of the drop-reason subsystem enum (kernels ≥ 6.7).
const SUBSYS_ENUM: &str = "skb_drop_reason_subsys";
const REASON_PREFIX: &str = "SKB_DROP_REASON_";
const SUBSYS_PREFIX: &str = "SKB_DROP_REASON_SUBSYS_";
/// `SKB_DROP_REASON_SUBSYS_SHIFT`: the subsystem lives in the high 16 bits.
const SUBSYS_SHIFT: u32 = 16;

/// Maps drop-reason values of the running kernel to names and back.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    by_value: HashMap<u32, String>,
    by_name: HashMap<String, u32>,
    /// Subsystem number → name (`MAC80211_UNUSABLE`, `OPENVSWITCH`), without `CORE`/`NUM`.
    subsystems: HashMap<u32, String>,
}

impl DropReasons {
    /// Reads `enum skb_drop_reason` (and `enum skb_drop_reason_subsys` when present) from
    /// kernel BTF. Before 5.17 the kernel has no drop reasons: the one value the drop
    /// program then records ([`probe_common::LEGACY_DROP_REASON`]) is `NOT_SPECIFIED`.
    pub fn from_btf(btf: &Btf) -> Self {
        let Some(pairs) = btf.enum_variants(DROP_REASON_ENUM) else {
            return Self::legacy();
        };
        let mut reasons = Self::from_pairs(pairs);
        for (name, value) in btf.enum_variants(SUBSYS_ENUM).unwrap_or_default() {
            let Some(sub) = name.strip_prefix(SUBSYS_PREFIX) else {
                continue;
            };
            // CORE (0) is the plain enum itself; NUM is a count, not a subsystem.
            match u32::try_from(value) {
                Ok(v) if v != 0 && sub != "NUM" => {
                    reasons.subsystems.insert(v, sub.to_owned());
                }
                _ => {}
            }
        }
        reasons
    }

    /// The table of a kernel without drop reasons.
    pub fn legacy() -> Self {
        Self::from_pairs(vec![(
            "NOT_SPECIFIED".to_owned(),
            probe_common::LEGACY_DROP_REASON.into(),
        )])
    }

    /// Builds the table from `(enumerator name, value)` pairs as BTF lists them (with or
    /// without the `SKB_DROP_REASON_` prefix). Negative values and values above `u32::MAX`
    /// are ignored; on duplicate values the first name wins.
    pub fn from_pairs(pairs: Vec<(String, i64)>) -> Self {
        let mut by_value = HashMap::with_capacity(pairs.len());
        let mut by_name = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            let Ok(value) = u32::try_from(value) else {
                continue;
            };
            let short = short_name(&name);
            // Markers, not reasons: MAX bounds the enum, SUBSYS_MASK masks the subsystem.
            if matches!(short, "MAX" | "SUBSYS_MASK") {
                continue;
            }
            by_value.entry(value).or_insert_with(|| short.to_owned());
            by_name.entry(short.to_owned()).or_insert(value);
        }
        Self {
            by_value,
            by_name,
            subsystems: HashMap::new(),
        }
    }

    /// Name of `value`, or `UNKNOWN_<value>` when the running kernel does not define it.
    pub fn name(&self, value: u32) -> Cow<'_, str> {
        if let Some(name) = self.by_value.get(&value) {
            return Cow::Borrowed(name);
        }
        match self.subsystems.get(&(value >> SUBSYS_SHIFT)) {
            Some(sub) => Cow::Owned(format!("{sub}_{}", value & 0xffff)),
            None => Cow::Owned(format!("UNKNOWN_{value}")),
        }
    }

    /// Value of the reason `name` (with or without the `SKB_DROP_REASON_` prefix).
    pub fn value(&self, name: &str) -> Option<u32> {
        self.by_name.get(short_name(name)).copied()
    }

    /// Number of reasons known (including `NOT_DROPPED_YET` and `CONSUMED`).
    pub fn len(&self) -> usize {
        self.by_value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }

    /// All `(value, name)` pairs, ordered by value.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        let mut all: Vec<(u32, &str)> = self
            .by_value
            .iter()
            .map(|(v, n)| (*v, n.as_str()))
            .collect();
        all.sort_unstable_by_key(|(v, _)| *v);
        all.into_iter()
    }
}

/// `name` without `SKB_DROP_REASON_`; `SKB_NOT_DROPPED_YET` / `SKB_CONSUMED` (the two values
/// without that prefix) become `NOT_DROPPED_YET` / `CONSUMED`. Other `SKB_` names are real
/// reasons that keep it (`SKB_DROP_REASON_SKB_CSUM` → `SKB_CSUM`).
fn short_name(name: &str) -> &str {
    if let Some(short) = name.strip_prefix(REASON_PREFIX) {
        return short;
    }
    match name {
        "SKB_NOT_DROPPED_YET" => "NOT_DROPPED_YET",
        "SKB_CONSUMED" => "CONSUMED",
        _ => name,
    }
}

/// Kind of IP reassembly failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasmCause {
    /// No queue could be created: fragment memory of the netns is above `ipfrag_high_thresh`.
    QueueOverflow,
    /// The queue expired before all fragments arrived (`ipfrag_time`, 30 s by default).
    Timeout,
    /// IPv4: more than `ipfrag_max_dist` other fragments arrived from the same source while
    /// this queue was incomplete; the queue is reset (`ip_frag_reinit`).
    TooFar,
    /// The fragment duplicates one already queued, or the packet is already reassembled.
    Duplicate,
    /// Any other failure inside the reassembly code (overlapping or malformed fragments, memory
    /// allocation failures, ...).
    Other,
}

impl ReasmCause {
    /// The serde name (`queue_overflow`, `timeout`, `too_far`, `duplicate`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueOverflow => "queue_overflow",
            Self::Timeout => "timeout",
            Self::TooFar => "too_far",
            Self::Duplicate => "duplicate",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for ReasmCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IP version of a reassembly failure, as far as the dropping function tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpVersion {
    V4,
    V6,
    /// The location is shared by IPv4 and IPv6 (`inet_frag_*`) or unknown: take the version
    /// from the packet's L3 protocol ([`IpVersion::or`]).
    Unknown,
}

impl IpVersion {
    /// From an IP header's version field (4 or 6).
    pub fn from_header_version(version: u8) -> Self {
        match version {
            4 => Self::V4,
            6 => Self::V6,
            _ => Self::Unknown,
        }
    }

    /// `self`, or `fallback` when `self` is [`IpVersion::Unknown`].
    pub fn or(self, fallback: IpVersion) -> IpVersion {
        match self {
            Self::Unknown => fallback,
            known => known,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V6 => "v6",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for IpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bare function name of a location symbol: without `+0x…` offset, ` [module]` suffix and
/// compiler suffixes (`.cold`, `.isra.0`, `.constprop.0`, `.part.0`, `.llvm.…`; C identifiers
/// cannot contain a dot, so everything from the first dot on is such a suffix). The kernel
/// moves unlikely branches, such as error paths that free an skb, into `<fn>.cold`.
pub fn base_function(symbol: &str) -> &str {
    let s = symbol.split('+').next().unwrap_or(symbol);
    let s = s.split(" [").next().unwrap_or(s);
    let s = s.split('.').next().unwrap_or(s);
    s.trim()
}

/// Whether `function` (a bare name, see [`base_function`]) is part of IP reassembly, and for
/// which IP version.
///
/// IPv4 (`net/ipv4/ip_fragment.c`): `ip_defrag` (entry point, also used by netfilter's
/// `nf_defrag_ipv4`), `ip_frag_queue`, `ip_frag_reasm`, `ip_expire`, `ip_frag_reinit`.
/// IPv6 (`net/ipv6/reassembly.c`, `include/net/ipv6_frag.h`, netfilter's
/// `nf_conntrack_reasm.c`): `ipv6_frag_rcv`, `ip6_frag_queue`, `ip6_frag_reasm`,
/// `ip6_frag_expire`, `ip6frag_*`, `nf_ct_frag6_*`. Shared (`net/ipv4/inet_fragment.c`):
/// `inet_frag_*` / `inet_frags_*` → [`IpVersion::Unknown`].
pub fn reassembly_function(function: &str) -> Option<IpVersion> {
    match function {
        "ip_defrag" | "ip_frag_queue" | "ip_frag_reasm" | "ip_expire" | "ip_frag_reinit" => {
            Some(IpVersion::V4)
        }
        "ipv6_frag_rcv" | "ip6_frag_queue" | "ip6_frag_reasm" | "ip6_frag_expire" => {
            Some(IpVersion::V6)
        }
        f if f.starts_with("ip6frag_") || f.starts_with("nf_ct_frag6_") => Some(IpVersion::V6),
        f if f.starts_with("inet_frag") => Some(IpVersion::Unknown),
        _ => None,
    }
}

/// Is this drop an IP reassembly failure, and of which kind?
///
/// `reason` is a drop-reason name (with or without the `SKB_DROP_REASON_` prefix);
/// `location_symbol` is the symbol of the tracepoint's `location` (`ip_defrag`,
/// `ip_defrag+0x1a3`, `ipv6_frag_rcv [ipv6]`, `ip_defrag.cold` are all understood), `None`
/// when it could not be resolved.
///
/// - `FRAG_REASM_TIMEOUT` → [`ReasmCause::Timeout`] (seen at `ip_expire`; queued fragments
///   freed by `inet_frag_rbtree_purge` on queue destruction carry it too),
///   `FRAG_TOO_FAR` → [`ReasmCause::TooFar`] (at `inet_frag_rbtree_purge`, called by
///   `ip_frag_reinit`), `DUP_FRAG` → [`ReasmCause::Duplicate`] — wherever they happen;
/// - `NOT_SPECIFIED` or `NOMEM` at `ip_defrag` / `ipv6_frag_rcv` →
///   [`ReasmCause::QueueOverflow`] (see the module docs);
/// - any other drop reason at a reassembly function → [`ReasmCause::Other`];
/// - everything else → `None`.
///
/// The version comes from the location; it is [`IpVersion::Unknown`] for the shared
/// `inet_frag_*` code or an unresolved location.
///
/// Caveats: (1) `ip_frag_queue()` / `ip6_frag_queue()` are static and usually inlined into
/// `ip_defrag()` / `ipv6_frag_rcv()`; their error path frees the skb with `NOT_SPECIFIED`
/// too (overlapping fragments, which also count `ReasmOverlaps`; a fragment beyond the
/// final length; `pskb_pull` failures), so those rare failures are counted as overflow when
/// inlined. (2) One failure can free several skbs (a timed-out or reset queue frees every
/// fragment it held), so counts of drops are not counts of `ReasmFails`.
pub fn classify_reassembly(
    reason: &str,
    location_symbol: Option<&str>,
) -> Option<(ReasmCause, IpVersion)> {
    let reason = short_name(reason);
    let function = location_symbol.map(base_function);
    let site = function.and_then(reassembly_function);
    let version = site.unwrap_or(IpVersion::Unknown);
    let cause = match reason {
        "FRAG_REASM_TIMEOUT" => ReasmCause::Timeout,
        "FRAG_TOO_FAR" => ReasmCause::TooFar,
        "DUP_FRAG" => ReasmCause::Duplicate,
        // Not drops: these never reach `skb:kfree_skb` (CONSUMED goes to `skb:consume_skb`),
        // but a bogus value must not be counted as a failure.
        "CONSUMED" | "NOT_DROPPED_YET" => return None,
        _ => {
            site?;
            match (reason, function) {
                ("NOT_SPECIFIED" | "NOMEM", Some("ip_defrag" | "ipv6_frag_rcv")) => {
                    ReasmCause::QueueOverflow
                }
                _ => ReasmCause::Other,
            }
        }
    };
    Some((cause, version))
}

/// Whether a drop-reason name (with or without the `SKB_DROP_REASON_` prefix) is a VXLAN or
/// IP-tunnel decapsulation drop: `VXLAN_*` (`VXLAN_INVALID_HDR`, `VXLAN_VNI_NOT_FOUND`,
/// `VXLAN_NO_REMOTE`, `VXLAN_ENTRY_EXISTS`, ...) or `IP_TUNNEL_ECN` (the outer ECN marking
/// cannot be combined with the inner one, `INET_ECN_decapsulate`).
pub fn is_vxlan_reason(name: &str) -> bool {
    let name = short_name(name);
    name.starts_with("VXLAN_") || name == "IP_TUNNEL_ECN"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic() -> DropReasons {
        let pairs = [
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NO_SOCKET", 3),
            ("SKB_DROP_REASON_SKB_CSUM", 75),
            ("SKB_DROP_REASON_DUP_FRAG", 94),
            ("SKB_DROP_REASON_FRAG_REASM_TIMEOUT", 95),
            ("SKB_DROP_REASON_FRAG_TOO_FAR", 96),
            ("SKB_DROP_REASON_ALIAS_OF_TOO_FAR", 96),
            ("SKB_DROP_REASON_NEGATIVE", -1),
            ("SKB_DROP_REASON_HUGE", 1 << 40),
            ("SKB_DROP_REASON_MAX", 128),
            ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff_0000),
        ];
        DropReasons::from_pairs(pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect())
    }

    #[test]
    fn a_kernel_without_reasons_names_the_legacy_value_not_specified() {
        let r = DropReasons::legacy();
        assert_eq!(r.name(probe_common::LEGACY_DROP_REASON), "NOT_SPECIFIED");
        // So a drop in ip_defrag is still a queue overflow there.
        assert_eq!(
            classify_reassembly(
                &r.name(probe_common::LEGACY_DROP_REASON),
                Some("ip_defrag+0x2c")
            ),
            Some((ReasmCause::QueueOverflow, IpVersion::V4))
        );
    }

    #[test]
    fn names_and_values() {
        let r = synthetic();
        assert_eq!(r.name(2), "NOT_SPECIFIED");
        assert_eq!(r.name(3), "NO_SOCKET");
        assert_eq!(r.name(1), "CONSUMED");
        assert_eq!(r.name(0), "NOT_DROPPED_YET");
        assert_eq!(
            r.name(96),
            "FRAG_TOO_FAR",
            "first name wins on duplicate values"
        );
        assert!(matches!(r.name(3), Cow::Borrowed(_)));
        assert_eq!(r.name(128), "UNKNOWN_128", "MAX is not a reason");
        assert_eq!(r.name(0xffff_0000), "UNKNOWN_4294901760");
        assert_eq!(r.value("NO_SOCKET"), Some(3));
        assert_eq!(r.value("SKB_DROP_REASON_NO_SOCKET"), Some(3));
        assert_eq!(r.value("ALIAS_OF_TOO_FAR"), Some(96));
        assert_eq!(r.value("MAX"), None);
        assert_eq!(r.value("NEGATIVE"), None);
        assert_eq!(r.value("HUGE"), None);
        assert_eq!(r.value("NOPE"), None);
        assert_eq!(r.name(75), "SKB_CSUM");
        assert_eq!(r.value("SKB_CSUM"), Some(75));
        assert_eq!(r.value("CSUM"), None);
        assert_eq!(r.len(), 8);
        let values: Vec<u32> = r.iter().map(|(v, _)| v).collect();
        assert_eq!(values, [0, 1, 2, 3, 75, 94, 95, 96]);
    }

    #[test]
    fn empty_table_and_subsystems() {
        let mut r = DropReasons::from_pairs(Vec::new());
        assert!(r.is_empty());
        assert_eq!(r.name(7), "UNKNOWN_7");
        r.subsystems.insert(2, "OPENVSWITCH".into());
        assert_eq!(r.name((2 << 16) | 3), "OPENVSWITCH_3");
        assert_eq!(r.name((5 << 16) | 3), format!("UNKNOWN_{}", (5 << 16) | 3));
    }

    #[test]
    fn base_function_strips_decorations() {
        for (sym, base) in [
            ("ip_defrag", "ip_defrag"),
            ("ip_defrag+0x1a3", "ip_defrag"),
            ("ip_defrag.cold", "ip_defrag"),
            ("ip_defrag.cold+0x4", "ip_defrag"),
            ("ipv6_frag_rcv [ipv6]", "ipv6_frag_rcv"),
            ("ipv6_frag_rcv [ipv6]+0x20", "ipv6_frag_rcv"),
            (
                "nf_ct_frag6_gather.isra.0 [nf_defrag_ipv6]",
                "nf_ct_frag6_gather",
            ),
            ("", ""),
        ] {
            assert_eq!(base_function(sym), base, "{sym}");
        }
    }

    #[test]
    fn classification_table() {
        use IpVersion::*;
        use ReasmCause::*;
        type Case = (
            &'static str,
            Option<&'static str>,
            Option<(ReasmCause, IpVersion)>,
        );
        let cases: &[Case] = &[
            // Reasons that identify the failure themselves.
            ("FRAG_REASM_TIMEOUT", Some("ip_expire"), Some((Timeout, V4))),
            (
                "FRAG_REASM_TIMEOUT",
                Some("ip6_frag_expire [ipv6]"),
                Some((Timeout, V6)),
            ),
            (
                "FRAG_REASM_TIMEOUT",
                Some("inet_frag_rbtree_purge"),
                Some((Timeout, Unknown)),
            ),
            ("FRAG_REASM_TIMEOUT", None, Some((Timeout, Unknown))),
            (
                "FRAG_TOO_FAR",
                Some("inet_frag_rbtree_purge+0x5c"),
                Some((TooFar, Unknown)),
            ),
            ("DUP_FRAG", Some("ip_defrag+0x2f0"), Some((Duplicate, V4))),
            ("DUP_FRAG", Some("ip6_frag_queue"), Some((Duplicate, V6))),
            (
                "SKB_DROP_REASON_DUP_FRAG",
                Some("nf_ct_frag6_gather"),
                Some((Duplicate, V6)),
            ),
            // Queue overflow: NOT_SPECIFIED / NOMEM at the entry points.
            (
                "NOT_SPECIFIED",
                Some("ip_defrag+0x1a3"),
                Some((QueueOverflow, V4)),
            ),
            (
                "NOT_SPECIFIED",
                Some("ip_defrag.cold"),
                Some((QueueOverflow, V4)),
            ),
            ("NOMEM", Some("ip_defrag"), Some((QueueOverflow, V4))),
            (
                "NOT_SPECIFIED",
                Some("ipv6_frag_rcv [ipv6]"),
                Some((QueueOverflow, V6)),
            ),
            (
                "NOT_SPECIFIED",
                Some("ipv6_frag_rcv"),
                Some((QueueOverflow, V6)),
            ),
            // Other failures inside the reassembly code.
            ("NOT_SPECIFIED", Some("ip_frag_queue"), Some((Other, V4))),
            ("NOMEM", Some("ip_frag_reasm"), Some((Other, V4))),
            ("PKT_TOO_SMALL", Some("ip_defrag"), Some((Other, V4))),
            ("NOT_SPECIFIED", Some("ip6_frag_reasm"), Some((Other, V6))),
            (
                "NOT_SPECIFIED",
                Some("ip6frag_expire_frag_queue"),
                Some((Other, V6)),
            ),
            (
                "NOT_SPECIFIED",
                Some("nf_ct_frag6_gather [nf_defrag_ipv6]"),
                Some((Other, V6)),
            ),
            (
                "NOMEM",
                Some("inet_frag_reasm_prepare"),
                Some((Other, Unknown)),
            ),
            ("UNKNOWN_200", Some("ip_frag_reinit"), Some((Other, V4))),
            // Not reassembly.
            ("NOT_SPECIFIED", Some("tcp_v4_rcv"), None),
            ("NOT_SPECIFIED", None, None),
            ("NO_SOCKET", Some("__udp4_lib_rcv+0x4d1"), None),
            ("NOMEM", Some("ip_defragment_lookalike"), None),
            ("CONSUMED", Some("ip_frag_reasm"), None),
            ("NOT_DROPPED_YET", Some("ip_defrag"), None),
            ("VXLAN_INVALID_HDR", Some("vxlan_rcv [vxlan]"), None),
        ];
        for (reason, loc, want) in cases {
            assert_eq!(
                classify_reassembly(reason, *loc),
                *want,
                "{reason} at {loc:?}"
            );
        }
    }

    #[test]
    fn vxlan_reasons() {
        for yes in [
            "VXLAN_INVALID_HDR",
            "VXLAN_VNI_NOT_FOUND",
            "VXLAN_NO_REMOTE",
            "VXLAN_ENTRY_EXISTS",
            "SKB_DROP_REASON_VXLAN_INVALID_HDR",
            "IP_TUNNEL_ECN",
        ] {
            assert!(is_vxlan_reason(yes), "{yes}");
        }
        for no in ["NOT_SPECIFIED", "TUNNEL_TXINFO", "NO_SOCKET", "", "VXLAN"] {
            assert!(!is_vxlan_reason(no), "{no}");
        }
    }

    #[test]
    fn serde_names() {
        let causes = [
            ReasmCause::QueueOverflow,
            ReasmCause::Timeout,
            ReasmCause::TooFar,
            ReasmCause::Duplicate,
            ReasmCause::Other,
        ];
        for c in causes {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(
            serde_json::to_string(&causes[..4]).unwrap(),
            r#"["queue_overflow","timeout","too_far","duplicate"]"#
        );
        assert_eq!(serde_json::to_value(IpVersion::V6).unwrap(), "v6");
        assert_eq!(
            IpVersion::Unknown.or(IpVersion::from_header_version(4)),
            IpVersion::V4
        );
        assert_eq!(IpVersion::V6.or(IpVersion::V4), IpVersion::V6);
        assert_eq!(IpVersion::from_header_version(5), IpVersion::Unknown);
    }

    /// The running kernel's BTF: names exist and round-trip (values are not assumed).
    #[test]
    fn real_btf_reasons() {
        let path = "/sys/kernel/btf/vmlinux";
        if !std::path::Path::new(path).exists() {
            eprintln!("skipped: {path} missing");
            return;
        }
        let btf = Btf::from_file(path).expect("read vmlinux BTF");
        let r = DropReasons::from_btf(&btf);
        assert!(r.len() > 20, "{} reasons", r.len());
        for name in [
            "NOT_SPECIFIED",
            "NO_SOCKET",
            "FRAG_REASM_TIMEOUT",
            "DUP_FRAG",
            "FRAG_TOO_FAR",
        ] {
            let v = r.value(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(r.name(v), name);
        }
        for (v, name) in r.iter() {
            assert_eq!(r.value(name), Some(v), "{name}");
            assert!(!name.starts_with(REASON_PREFIX), "{name}");
        }
        assert_eq!(r.value("MAX"), None);
        if btf.enum_variants(SUBSYS_ENUM).is_some() {
            assert!(r.subsystems.values().any(|s| s == "OPENVSWITCH"));
            assert!(!r.subsystems.contains_key(&0));
        }
    }
}
