//! Symbolisation of kernel text addresses through `/proc/kallsyms`.
//!
//! `skb:kfree_skb` reports `location`, the return address of the call that freed the skb
//! (`__builtin_return_address(0)` in `kfree_skb_reason()` / `sk_skb_reason_drop()`), so it
//! points *into* the function that dropped the packet. Resolving it to `function+offset`
//! tells drops apart that share a reason, e.g. fragment-queue overflow, which is
//! `NOT_SPECIFIED` at a location inside `ip_defrag`.
//!
//! `/proc/kallsyms` lines are `<hex address> <type> <name>[\t[<module>]]`. Only text symbols
//! (`t`/`T`) are kept; module symbols are named `name [module]`. The `__pfx_<fn>` symbols are
//! the 16-byte padding that `CONFIG_FUNCTION_PADDING_ALIGNMENT` (call-depth tracking, FineIBT)
//! puts in front of every function; they are skipped so that an address never resolves to a
//! padding stub (a return address cannot point there). Compiler-split parts such as
//! `ip_defrag.cold` are kept as they are: they are separate text ranges.
//!
//! A lookup resolves to the closest text symbol at or below the address. Non-text symbols and
//! the section end markers (`_etext`, `_einittext`, …) are kept as *boundaries* only, so that
//! an address past the end of kernel text does not resolve to the last function before it.
//!
//! Without privileges the kernel prints every address as zero (`kernel.kptr_restrict`, or not
//! root with `kptr_restrict=1`); [`Kallsyms::load`] reports that as [`KallsymsError::Restricted`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Default location of the kernel symbol table.
pub const PROC_KALLSYMS: &str = "/proc/kallsyms";

/// Prefix of the function-padding stubs (`__pfx_ip_defrag` precedes `ip_defrag`).
const PADDING_PREFIX: &str = "__pfx_";

/// Linker symbols that mark the end of a text section (`_etext`, `_einittext`,
/// `__entry_text_end`, ...). They are typed `T` but are boundaries, not functions.
fn is_end_marker(name: &str) -> bool {
    matches!(name, "_etext" | "_einittext") || name.ends_with("_text_end")
}

/// Errors from loading a symbol table. Every message is a single line.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read {}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// Every address read as zero: the kernel hides them from this process.
    #[error(
        "{} shows only zero addresses: kernel pointers are hidden \
         (run as root / with CAP_SYSLOG, and check sysctl kernel.kptr_restrict < 2)",
        .path.display()
    )]
    Restricted { path: PathBuf },
    /// The table holds no text symbol at all (wrong file, or empty).
    #[error("{} holds no kernel text symbols", .path.display())]
    Empty { path: PathBuf },
    /// A line is not `<hex address> <type> <name>`.
    #[error("{}: line {line}: malformed kallsyms entry", .path.display())]
    Malformed { path: PathBuf, line: usize },
}

/// One entry of the sorted table: a text symbol, or a boundary that ends the text before it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: u64,
    /// Byte range of the name in [`Kallsyms::names`]; empty for boundaries.
    name_start: u32,
    name_len: u32,
    is_text: bool,
    /// Global (`T`) rather than local (`t`): preferred among aliases at one address.
    global: bool,
}

/// A sorted kernel symbol table.
///
/// Names are stored back to back in one string (one allocation for ~60k names), which keeps
/// loading the real table well under 100 ms.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    entries: Vec<Entry>,
    names: String,
}

/// An address resolved to `name+offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// Function name, with ` [module]` appended for module symbols.
    pub name: &'a str,
    /// Distance in bytes from the start of the function.
    pub offset: u64,
}

impl fmt::Display for Symbol<'_> {
    /// `ip_defrag+0x1a3`, or `xt_foo [xt_foo]+0x10` for a module symbol.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.name, self.offset)
    }
}

impl Symbol<'_> {
    /// The function name without the ` [module]` suffix.
    pub fn function(&self) -> &str {
        strip_module(self.name)
    }
}

/// `name` without a trailing ` [module]`.
pub fn strip_module(name: &str) -> &str {
    match name.split_once(" [") {
        Some((function, _)) => function,
        None => name,
    }
}

impl Kallsyms {
    /// Loads `/proc/kallsyms`.
    pub fn load() -> Result<Self, KallsymsError> {
        Self::load_from(PROC_KALLSYMS)
    }

    /// Loads a kallsyms-format file.
    pub fn load_from(path: impl AsRef<Path>) -> Result<Self, KallsymsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| KallsymsError::Io {
            path: path.to_owned(),
            err,
        })?;
        Self::parse_text(&text, path)
    }

    fn parse_text(text: &str, path: &Path) -> Result<Self, KallsymsError> {
        let mut entries = Vec::with_capacity(text.len() / 40);
        let mut names = String::with_capacity(text.len() / 2);
        let mut any_nonzero = false;
        let mut any_line = false;
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            any_line = true;
            let malformed = || KallsymsError::Malformed {
                path: path.to_owned(),
                line: index + 1,
            };
            // `<addr> <type> <name>` with an optional `\t[module]` (split on any whitespace:
            // the module column is tab-separated).
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed());
            };
            let module = fields.next();
            let addr = u64::from_str_radix(addr, 16).map_err(|_| malformed())?;
            let kind = match kind.as_bytes() {
                [k] => *k,
                _ => return Err(malformed()),
            };
            any_nonzero |= addr != 0;
            let is_text = matches!(kind, b't' | b'T') && !is_end_marker(name);
            if is_text && name.starts_with(PADDING_PREFIX) {
                continue;
            }
            let (name_start, name_len) = if is_text {
                let start = names.len();
                names.push_str(name);
                if let Some(module) = module {
                    names.push(' ');
                    names.push_str(module);
                }
                // The kernel's table is a few MiB: these never truncate in practice, and a
                // (theoretical) overflow would only garble names, never panic.
                (start as u32, (names.len() - start) as u32)
            } else {
                (0, 0)
            };
            entries.push(Entry {
                addr,
                name_start,
                name_len,
                is_text,
                global: kind == b'T',
            });
        }
        if any_line && !any_nonzero {
            return Err(KallsymsError::Restricted {
                path: path.to_owned(),
            });
        }
        // Aliases at one address: text before boundaries (a data symbol that happens to share
        // a function's address must not hide it), then global before local, then file order
        // (the sort is stable).
        entries.sort_by_key(|e| (e.addr, !e.is_text, !e.global));
        entries.dedup_by_key(|e| e.addr);
        if !entries.iter().any(|e| e.is_text) {
            return Err(KallsymsError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { entries, names })
    }

    /// Number of distinct text symbols.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.is_text).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The function containing `addr`: the closest text symbol at or below it. `None` below
    /// the first symbol, or when the closest entry is a non-text boundary (past `_etext`, in
    /// data, ...).
    pub fn lookup(&self, addr: u64) -> Option<Symbol<'_>> {
        // Index of the first entry above `addr`; the one before it is at or below `addr`.
        let above = self.entries.partition_point(|e| e.addr <= addr);
        let entry = self.entries.get(above.checked_sub(1)?)?;
        if !entry.is_text {
            return None;
        }
        Some(Symbol {
            name: self.name(entry)?,
            offset: addr - entry.addr,
        })
    }

    /// Address of the text symbol `name` (as stored: `name [module]` for module symbols).
    /// A linear scan: meant for tests and one-off look-ups.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.is_text && self.name(e) == Some(name))
            .map(|e| e.addr)
    }

    fn name(&self, e: &Entry) -> Option<&str> {
        let start = e.name_start as usize;
        self.names
            .get(start..start.checked_add(e.name_len as usize)?)
    }
}

impl FromStr for Kallsyms {
    type Err = KallsymsError;

    /// Parses kallsyms-format text (for tests and saved tables).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse_text(text, Path::new("<string>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000f70 T __irqentry_text_end
ffffffff81000f70 t after_irqentry
ffffffff81ff9610 t __pfx_ip_defrag
ffffffff81ff9620 T ip_defrag
ffffffff81ff9a00 t ip_frag_queue
ffffffff81ff9a00 t ip_frag_queue_alias
ffffffff812439cf t ip_defrag.cold
ffffffff8220bb08 T _etext
ffffffff82400000 D __start_rodata
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0a00000 T ipv6_frag_rcv\t[ipv6]
ffffffffc0a00400 t ip6_frag_queue\t[ipv6]
ffffffffc0a00800 r __ksymtab_foo\t[ipv6]
";

    fn table() -> Kallsyms {
        TABLE.parse().unwrap()
    }

    #[test]
    fn lookup_synthetic() {
        let k = table();
        let s = k.lookup(0xffffffff81ff9620 + 0x1a3).unwrap();
        assert_eq!((s.name, s.offset), ("ip_defrag", 0x1a3));
        assert_eq!(s.to_string(), "ip_defrag+0x1a3");
        assert_eq!(
            k.lookup(0xffffffff81ff9620).unwrap().to_string(),
            "ip_defrag+0x0"
        );
        // Global alias wins over the local one at the same address.
        assert_eq!(k.lookup(0xffffffff81000010).unwrap().name, "_stext");
        // An end marker shares its address with the next function: the function wins.
        assert_eq!(k.lookup(0xffffffff81000f71).unwrap().name, "after_irqentry");
        // Two local aliases: file order.
        assert_eq!(k.lookup(0xffffffff81ff9a08).unwrap().name, "ip_frag_queue");
        // The padding stub is skipped: its bytes belong to the previous function.
        let pad = k.lookup(0xffffffff81ff9614).unwrap();
        assert_eq!(pad.name, "ip_defrag.cold");
        assert_eq!(k.lookup(0xffffffff812439d0).unwrap().name, "ip_defrag.cold");
    }

    #[test]
    fn lookup_bounds_and_modules() {
        let k = table();
        assert_eq!(k.lookup(0), None);
        assert_eq!(k.lookup(0xffffffff80ffffff), None);
        // Past _etext / in rodata: no function.
        assert_eq!(k.lookup(0xffffffff8220bb07).unwrap().name, "ip_frag_queue");
        assert_eq!(k.lookup(0xffffffff8220bb08), None);
        assert_eq!(k.lookup(0xffffffff82400010), None);
        let s = k.lookup(0xffffffffc0a00410).unwrap();
        assert_eq!(s.to_string(), "ip6_frag_queue [ipv6]+0x10");
        assert_eq!(s.function(), "ip6_frag_queue");
        assert_eq!(
            k.lookup(0xffffffffc0201000).unwrap().name,
            "ftrace_trampoline [__builtin__ftrace]"
        );
        assert_eq!(
            k.lookup(0xffffffffc0a00900),
            None,
            "module rodata is a boundary"
        );
        assert_eq!(k.lookup(u64::MAX), None);
        assert_eq!(
            k.address_of("ipv6_frag_rcv [ipv6]"),
            Some(0xffffffffc0a00000)
        );
        assert_eq!(k.address_of("__pfx_ip_defrag"), None);
        assert_eq!(k.len(), 8);
    }

    #[test]
    fn restricted_empty_and_malformed() {
        let zeros = "0000000000000000 T startup_64\n0000000000000000 t ip_defrag\n";
        let err = zeros.parse::<Kallsyms>().unwrap_err();
        assert!(matches!(err, KallsymsError::Restricted { .. }));
        assert!(err.to_string().contains("kptr_restrict"), "{err}");
        assert!(matches!(
            "ffffffff82400000 D __start_rodata\n".parse::<Kallsyms>(),
            Err(KallsymsError::Empty { .. })
        ));
        assert!(matches!(
            "".parse::<Kallsyms>(),
            Err(KallsymsError::Empty { .. })
        ));
        for bad in [
            "zzzz T foo",
            "ffff T",
            "ffff TT foo",
            "1ffffffffffffffff T foo",
        ] {
            assert!(
                matches!(
                    bad.parse::<Kallsyms>(),
                    Err(KallsymsError::Malformed { line: 1, .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Kallsyms::load_from("/nonexistent/kallsyms"),
            Err(KallsymsError::Io { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(x % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let kinds = ["t", "T", "D", "b", "", "tt"];
                s.push_str(&format!(
                    "{:x} {} f{}\n",
                    x % 4096,
                    kinds[(x % 6) as usize],
                    x % 97
                ));
            }
            if let Ok(k) = s.parse::<Kallsyms>() {
                for a in [0, 1, x % 4096, u64::MAX] {
                    let _ = k.lookup(a).map(|s| s.to_string());
                }
            }
        }
    }

    /// Resolves the real `ip_defrag` back to itself. Needs root (non-zero addresses): run as
    /// another user it fails instead of passing without checking anything. How long loading
    /// takes is a benchmark figure (startup in `cargo xtask bench`), not an assertion.
    #[test]
    fn real_kallsyms_resolves_ip_defrag() {
        assert!(is_root(), "reading kallsyms addresses needs root");
        let k = Kallsyms::load().unwrap();
        assert!(k.len() > 10_000, "{} symbols", k.len());
        let addr = k
            .address_of("ip_defrag")
            .expect("ip_defrag in /proc/kallsyms");
        assert_eq!(k.lookup(addr).unwrap().to_string(), "ip_defrag+0x0");
        assert_eq!(k.lookup(addr + 0x10).unwrap().to_string(), "ip_defrag+0x10");
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}
