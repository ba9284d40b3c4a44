//! A small, self-contained reader for raw BTF (BPF Type Format) blobs such as
//! `/sys/kernel/btf/vmlinux`.
//!
//! Only what fathom needs is exposed: member offsets/sizes of (nested) struct members, struct
//! sizes and enum values. The parser understands every BTF kind up to `ENUM64` (it has to skip
//! their trailing data), checks every length against the input, and never panics on malformed
//! input: [`Btf::from_bytes`] returns an error and the lookups return `None`.
//!
//! Format reference: the kernel's `Documentation/bpf/btf.rst` and `include/uapi/linux/btf.h`.
//! Only little-endian BTF is supported (the magic is checked).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Size of the original `struct btf_header`; newer kernels may append fields (`hdr_len` says).
const HEADER_LEN: usize = 24;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Bound on typedef/modifier chains, array nesting and anonymous-member nesting, so that
/// malformed (cyclic) BTF cannot make a lookup loop forever or overflow the stack.
const MAX_DEPTH: u32 = 32;
/// BTF does not record the pointer size; fathom only runs on 64-bit kernels.
const POINTER_SIZE: u32 = 8;
/// Bound on the members one lookup may visit (see [`Btf::find_member`]).
const MAX_MEMBER_VISITS: u32 = 1 << 16;

/// Errors from loading BTF. Every message is a single line.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file does not exist (for `/sys/kernel/btf/vmlinux`: the kernel was built without
    /// `CONFIG_DEBUG_INFO_BTF`).
    #[error("{}", not_found_message(.path))]
    NotFound { path: PathBuf },
    /// The BTF file exists but could not be read.
    #[error("cannot read BTF file {}: {err}", .path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// The data does not start with the little-endian BTF magic `0xeb9f`.
    #[error("not little-endian BTF data: magic is {0:#06x}, expected 0xeb9f")]
    BadMagic(u16),
    /// The header announces a BTF version this reader does not know.
    #[error("unsupported BTF version {0} (only version 1 is supported)")]
    UnsupportedVersion(u8),
    /// The data ends before a header, section or type record does.
    #[error("truncated BTF data: {0}")]
    Truncated(String),
    /// The data is structurally wrong (unknown kind, string offset out of range, ...).
    #[error("invalid BTF data: {0}")]
    Invalid(String),
}

fn not_found_message(path: &Path) -> String {
    if path.starts_with("/sys/kernel/btf") {
        format!(
            "{} not found: the running kernel lacks BTF type information \
             (it was built without CONFIG_DEBUG_INFO_BTF=y)",
            path.display()
        )
    } else {
        format!("BTF file {} not found", path.display())
    }
}

/// Where a member sits inside the outermost struct of a [`Btf::member`] lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset in bytes from the start of the outermost struct. For a bitfield: the byte that
    /// holds its first bit.
    pub offset: u32,
    /// Size in bytes of the member's type. For a bitfield: the number of bytes its bits span.
    pub size: u32,
    pub kind: MemberKind,
}

/// The member's type, after following typedefs and `const`/`volatile`/`restrict`/type tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberKind {
    Int,
    Pointer,
    /// `elem_struct` is the element's struct/union name when the element is a struct or union.
    Array {
        elem_size: u32,
        len: u32,
        elem_struct: Option<String>,
    },
    /// Struct name; for an anonymous struct reached through a typedef (e.g. `atomic64_t`), the
    /// typedef's name; empty for a plain anonymous struct.
    Struct(String),
    /// Union name, same naming rule as [`MemberKind::Struct`].
    Union(String),
    /// `ENUM` or `ENUM64`.
    Enum,
    /// Float, function pointer target, forward declaration, ...
    Other,
}

/// One `struct btf_type` record; `aux` indexes the kind's trailing data (see [`Btf`]).
#[derive(Clone, Copy, Debug)]
struct RawType {
    name_off: u32,
    info: u32,
    /// `size` for INT/ENUM/STRUCT/UNION/FLOAT/DATASEC/ENUM64, `type` for the others.
    size_or_type: u32,
    /// INT: the encoding word; ARRAY: index into `arrays`; STRUCT/UNION: index of the first
    /// member in `members`; ENUM/ENUM64: index of the first value in `enumerators`.
    aux: u32,
}

impl RawType {
    fn kind(&self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
    fn is_composite(&self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }
    fn is_enum(&self) -> bool {
        matches!(self.kind(), KIND_ENUM | KIND_ENUM64)
    }
}

#[derive(Clone, Copy, Debug)]
struct RawMember {
    name_off: u32,
    type_id: u32,
    /// Raw `offset` word: a bit offset, or (parent kind_flag set) bitfield size << 24 | offset.
    offset: u32,
}

#[derive(Clone, Copy, Debug)]
struct RawArray {
    elem: u32,
    nelems: u32,
}

#[derive(Clone, Copy, Debug)]
struct RawEnumerator {
    name_off: u32,
    value: i64,
}

/// Parsed BTF: all types (index = type id, id 0 is `void`), the string section and an index of
/// struct/union/enum/typedef names.
#[derive(Clone)]
pub struct Btf {
    types: Vec<RawType>,
    members: Vec<RawMember>,
    arrays: Vec<RawArray>,
    enumerators: Vec<RawEnumerator>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len().saturating_sub(1))
            .field("strings_len", &self.strings.len())
            .finish_non_exhaustive()
    }
}

/// Little-endian cursor over a byte slice that reports running off the end as an error.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// Checks that `len` more bytes are available without consuming them.
    fn ensure(&self, len: usize, id: usize) -> Result<(), BtfError> {
        match self.pos.checked_add(len) {
            Some(end) if end <= self.data.len() => Ok(()),
            _ => Err(BtfError::Truncated(format!(
                "type section ends inside type {id}"
            ))),
        }
    }

    fn u32(&mut self, id: usize) -> Result<u32, BtfError> {
        let bytes = self
            .pos
            .checked_add(4)
            .and_then(|end| self.data.get(self.pos..end))
            .ok_or_else(|| BtfError::Truncated(format!("type section ends inside type {id}")))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn skip(&mut self, len: usize, id: usize) -> Result<(), BtfError> {
        self.ensure(len, id)?;
        self.pos += len;
        Ok(())
    }
}

fn le_u32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

impl Btf {
    /// The running kernel's BTF.
    pub const VMLINUX: &'static str = "/sys/kernel/btf/vmlinux";

    /// Reads and parses a BTF file. A missing `/sys/kernel/btf/vmlinux` gives
    /// [`BtfError::NotFound`], whose message says that the kernel lacks BTF.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                BtfError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                BtfError::Io {
                    path: path.to_path_buf(),
                    err,
                }
            }
        })?;
        Self::from_bytes(&data)
    }

    /// Parses a raw little-endian BTF blob (header, type section, string section).
    pub fn from_bytes(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 2 {
            return Err(BtfError::Truncated(format!(
                "{} bytes, too short for a header",
                data.len()
            )));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        if data.len() < HEADER_LEN {
            return Err(BtfError::Truncated(format!(
                "{} bytes, too short for the {HEADER_LEN}-byte header",
                data.len()
            )));
        }
        let version = data[2];
        if version != BTF_VERSION {
            return Err(BtfError::UnsupportedVersion(version));
        }
        let hdr_len = le_u32(data, 4) as usize;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Invalid(format!(
                "header length {hdr_len} is below {HEADER_LEN}"
            )));
        }
        let body = data.get(hdr_len..).ok_or_else(|| {
            BtfError::Truncated(format!(
                "header length {hdr_len} exceeds data length {}",
                data.len()
            ))
        })?;
        let section = |off_at: usize, name: &str| -> Result<&[u8], BtfError> {
            let off = le_u32(data, off_at) as usize;
            let len = le_u32(data, off_at + 4) as usize;
            off.checked_add(len)
                .and_then(|end| body.get(off..end))
                .ok_or_else(|| {
                    BtfError::Truncated(format!(
                        "{name} section ({len} bytes at offset {off}) exceeds the {} bytes after the header",
                        body.len()
                    ))
                })
        };
        let type_data = section(8, "type")?;
        let strings = section(16, "string")?;
        if strings.first().is_some_and(|&b| b != 0) || strings.last().is_some_and(|&b| b != 0) {
            return Err(BtfError::Invalid(
                "string section must start and end with a NUL byte".into(),
            ));
        }

        let mut btf = Btf {
            types: Vec::with_capacity(type_data.len() / 24 + 1),
            members: Vec::new(),
            arrays: Vec::new(),
            enumerators: Vec::new(),
            strings: strings.to_vec(),
            by_name: HashMap::new(),
        };
        // Type id 0 is `void`.
        btf.types.push(RawType {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            aux: 0,
        });
        btf.parse_types(type_data)?;
        btf.build_index();
        Ok(btf)
    }

    fn parse_types(&mut self, type_data: &[u8]) -> Result<(), BtfError> {
        let mut r = Reader {
            data: type_data,
            pos: 0,
        };
        while r.pos < type_data.len() {
            let id = self.types.len();
            let name_off = r.u32(id)?;
            let info = r.u32(id)?;
            let size_or_type = r.u32(id)?;
            let mut t = RawType {
                name_off,
                info,
                size_or_type,
                aux: 0,
            };
            self.check_name(name_off, id)?;
            let vlen = t.vlen();
            match t.kind() {
                KIND_INT => t.aux = r.u32(id)?,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => {
                    let elem = r.u32(id)?;
                    let _index_type = r.u32(id)?;
                    let nelems = r.u32(id)?;
                    t.aux = self.arrays.len() as u32;
                    self.arrays.push(RawArray { elem, nelems });
                }
                KIND_STRUCT | KIND_UNION => {
                    // Check the whole member array first so a bogus vlen cannot over-allocate.
                    r.ensure(vlen * 12, id)?;
                    t.aux = self.members.len() as u32;
                    self.members.reserve(vlen);
                    for _ in 0..vlen {
                        let m = RawMember {
                            name_off: r.u32(id)?,
                            type_id: r.u32(id)?,
                            offset: r.u32(id)?,
                        };
                        self.check_name(m.name_off, id)?;
                        self.members.push(m);
                    }
                }
                KIND_ENUM => {
                    r.ensure(vlen * 8, id)?;
                    t.aux = self.enumerators.len() as u32;
                    self.enumerators.reserve(vlen);
                    for _ in 0..vlen {
                        let name_off = r.u32(id)?;
                        let raw = r.u32(id)?;
                        self.check_name(name_off, id)?;
                        // kind_flag set: signed values.
                        let value = if t.kind_flag() {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        self.enumerators.push(RawEnumerator { name_off, value });
                    }
                }
                KIND_ENUM64 => {
                    r.ensure(vlen * 12, id)?;
                    t.aux = self.enumerators.len() as u32;
                    self.enumerators.reserve(vlen);
                    for _ in 0..vlen {
                        let name_off = r.u32(id)?;
                        let lo = r.u32(id)?;
                        let hi = r.u32(id)?;
                        self.check_name(name_off, id)?;
                        // Unsigned values above i64::MAX wrap (same bits as the kernel's u64).
                        let value = ((u64::from(hi) << 32) | u64::from(lo)) as i64;
                        self.enumerators.push(RawEnumerator { name_off, value });
                    }
                }
                KIND_FUNC_PROTO => r.skip(vlen * 8, id)?,
                KIND_VAR | KIND_DECL_TAG => r.skip(4, id)?,
                KIND_DATASEC => r.skip(vlen * 12, id)?,
                kind => {
                    return Err(BtfError::Invalid(format!(
                        "type {id} has unknown kind {kind}"
                    )));
                }
            }
            self.types.push(t);
        }
        Ok(())
    }

    fn check_name(&self, name_off: u32, id: usize) -> Result<(), BtfError> {
        if name_off as usize >= self.strings.len() && name_off != 0 {
            return Err(BtfError::Invalid(format!(
                "type {id}: name offset {name_off} is outside the {}-byte string section",
                self.strings.len()
            )));
        }
        Ok(())
    }

    fn build_index(&mut self) {
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, t) in self.types.iter().enumerate() {
            if !matches!(
                t.kind(),
                KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_TYPEDEF
            ) || t.name_off == 0
            {
                continue;
            }
            let name = self.name(t.name_off);
            if name.is_empty() {
                continue;
            }
            match by_name.get_mut(name) {
                Some(ids) => ids.push(id as u32),
                None => {
                    by_name.insert(name.to_owned(), vec![id as u32]);
                }
            }
        }
        self.by_name = by_name;
    }

    /// The string at `off` (empty when out of range or not UTF-8).
    fn name(&self, off: u32) -> &str {
        let Some(tail) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&RawType> {
        self.types.get(id as usize)
    }

    fn type_members(&self, t: &RawType) -> &[RawMember] {
        let start = t.aux as usize;
        self.members
            .get(start..start + t.vlen())
            .unwrap_or_default()
    }

    fn type_enumerators(&self, t: &RawType) -> &[RawEnumerator] {
        let start = t.aux as usize;
        self.enumerators
            .get(start..start + t.vlen())
            .unwrap_or_default()
    }

    /// Follows typedef/const/volatile/restrict/type-tag links. Returns the final type id and
    /// the name of the last typedef passed (the name C code uses for anonymous structs).
    fn resolve(&self, mut id: u32) -> Option<(u32, Option<&str>)> {
        let mut typedef_name = None;
        for _ in 0..MAX_DEPTH {
            let t = self.get(id)?;
            match t.kind() {
                KIND_TYPEDEF => {
                    typedef_name = Some(self.name(t.name_off));
                    id = t.size_or_type;
                }
                KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some((id, typedef_name)),
            }
        }
        None
    }

    /// Size in bytes of a type (through modifiers and typedefs).
    fn type_size(&self, id: u32, depth: u32) -> Option<u32> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (id, _) = self.resolve(id)?;
        let t = self.get(id)?;
        match t.kind() {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT
            | KIND_DATASEC => Some(t.size_or_type),
            KIND_PTR => Some(POINTER_SIZE),
            KIND_ARRAY => {
                let a = self.arrays.get(t.aux as usize)?;
                self.type_size(a.elem, depth + 1)?.checked_mul(a.nelems)
            }
            _ => None,
        }
    }

    /// Name for a resolved struct/union: its own, else the typedef's it was reached through.
    fn composite_name(&self, t: &RawType, typedef_name: Option<&str>) -> String {
        let own = self.name(t.name_off);
        if own.is_empty() {
            typedef_name.unwrap_or("").to_owned()
        } else {
            own.to_owned()
        }
    }

    /// The struct/union with this name: a non-empty STRUCT first, then a non-empty UNION, then
    /// empty ones, then a typedef naming a struct/union (`typedef struct {...} name;`).
    fn find_composite(&self, name: &str) -> Option<u32> {
        let ids = self.by_name.get(name)?;
        let pick = |kind: u8, nonzero: bool| {
            ids.iter().copied().find(|&id| {
                self.get(id)
                    .is_some_and(|t| t.kind() == kind && (!nonzero || t.size_or_type != 0))
            })
        };
        pick(KIND_STRUCT, true)
            .or_else(|| pick(KIND_UNION, true))
            .or_else(|| pick(KIND_STRUCT, false))
            .or_else(|| pick(KIND_UNION, false))
            .or_else(|| {
                ids.iter().find_map(|&id| {
                    let t = self.get(id)?;
                    if t.kind() != KIND_TYPEDEF {
                        return None;
                    }
                    let (target, _) = self.resolve(id)?;
                    self.get(target)?.is_composite().then_some(target)
                })
            })
    }

    /// Enum types (ENUM/ENUM64) with this name, including `typedef enum {...} name;`.
    fn find_enums(&self, name: &str) -> Vec<&RawType> {
        let Some(ids) = self.by_name.get(name) else {
            return Vec::new();
        };
        let mut direct: Vec<&RawType> = ids
            .iter()
            .filter_map(|&id| self.get(id))
            .filter(|t| t.is_enum())
            .collect();
        if direct.is_empty() {
            direct = ids
                .iter()
                .filter_map(|&id| {
                    let t = self.get(id)?;
                    if t.kind() != KIND_TYPEDEF {
                        return None;
                    }
                    let target = self.get(self.resolve(id)?.0)?;
                    target.is_enum().then_some(target)
                })
                .collect();
        }
        direct
    }

    /// Finds member `name` in composite `id`, looking through anonymous struct/union members.
    /// Returns the member's bit offset from the start of `id`, the member, and its bitfield
    /// size in bits (0 when not encoded in the member's offset word).
    fn find_member(&self, id: u32, name: &str) -> Option<(u64, RawMember, u32)> {
        // Valid BTF nests anonymous members a few levels deep; the budget only stops
        // malformed, self-referencing type graphs from exploding.
        let mut budget = MAX_MEMBER_VISITS;
        self.find_member_in(id, name, 0, &mut budget)
    }

    fn find_member_in(
        &self,
        id: u32,
        name: &str,
        depth: u32,
        budget: &mut u32,
    ) -> Option<(u64, RawMember, u32)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let t = self.get(id)?;
        if !t.is_composite() {
            return None;
        }
        for m in self.type_members(t) {
            *budget = budget.checked_sub(1)?;
            let (bit_off, bits) = if t.kind_flag() {
                (m.offset & 0x00ff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let member_name = self.name(m.name_off);
            if member_name == name {
                return Some((u64::from(bit_off), *m, bits));
            }
            if member_name.is_empty() {
                let Some((inner, _)) = self.resolve(m.type_id) else {
                    continue;
                };
                if let Some((off, found, bits)) =
                    self.find_member_in(inner, name, depth + 1, budget)
                {
                    return Some((u64::from(bit_off) + off, found, bits));
                }
            }
        }
        None
    }

    /// Offset in bytes and size in bytes of a (possibly nested) member: a path like
    /// `["memory", "usage"]` follows embedded struct/union members (through
    /// typedef/const/volatile); members of anonymous structs/unions are found transparently
    /// (offsets accumulate). Returns `None` if absent.
    pub fn member(&self, struct_name: &str, path: &[&str]) -> Option<Member> {
        let (last, parents) = path.split_last()?;
        let mut id = self.find_composite(struct_name)?;
        let mut bits: u64 = 0;
        for name in parents {
            let (off, m, bitfield) = self.find_member(id, name)?;
            if bitfield != 0 {
                return None;
            }
            bits += off;
            let (inner, _) = self.resolve(m.type_id)?;
            if !self.get(inner)?.is_composite() {
                return None;
            }
            id = inner;
        }
        let (off, m, mut bitfield) = self.find_member(id, last)?;
        bits += off;
        let (target, typedef_name) = self.resolve(m.type_id)?;
        let t = self.get(target)?;
        if bitfield == 0 && t.kind() == KIND_INT {
            // Old bitfield encoding (struct kind_flag clear): bits and bit offset in the INT.
            let int_bits = t.aux & 0xff;
            let int_off = (t.aux >> 16) & 0xff;
            if int_off != 0 || int_bits != t.size_or_type.saturating_mul(8) {
                bits += u64::from(int_off);
                bitfield = int_bits;
            }
        }
        let offset = u32::try_from(bits / 8).ok()?;
        let size = if bitfield != 0 {
            ((bits % 8) as u32 + bitfield).div_ceil(8)
        } else {
            self.type_size(target, 0).unwrap_or(0)
        };
        let kind = match t.kind() {
            KIND_INT => MemberKind::Int,
            KIND_PTR => MemberKind::Pointer,
            KIND_ENUM | KIND_ENUM64 => MemberKind::Enum,
            KIND_STRUCT => MemberKind::Struct(self.composite_name(t, typedef_name)),
            KIND_UNION => MemberKind::Union(self.composite_name(t, typedef_name)),
            KIND_ARRAY => {
                let a = self.arrays.get(t.aux as usize)?;
                let elem_struct = self.resolve(a.elem).and_then(|(e, name)| {
                    let et = self.get(e)?;
                    et.is_composite().then(|| self.composite_name(et, name))
                });
                MemberKind::Array {
                    elem_size: self.type_size(a.elem, 0).unwrap_or(0),
                    len: a.nelems,
                    elem_struct,
                }
            }
            _ => MemberKind::Other,
        };
        Some(Member { offset, size, kind })
    }

    /// Byte offset of a (possibly nested) member, see [`Btf::member`].
    pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Option<u32> {
        self.member(struct_name, path).map(|m| m.offset)
    }

    /// Size in bytes of the struct or union with this name.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.get(self.find_composite(name)?).map(|t| t.size_or_type)
    }

    /// Value of `variant` in the enum (ENUM or ENUM64) named `enum_name`.
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Option<i64> {
        self.find_enums(enum_name).into_iter().find_map(|t| {
            self.type_enumerators(t)
                .iter()
                .find(|e| self.name(e.name_off) == variant)
                .map(|e| e.value)
        })
    }

    /// All variants of the enum (ENUM or ENUM64) named `enum_name`, in declaration order.
    pub fn enum_variants(&self, enum_name: &str) -> Option<Vec<(String, i64)>> {
        let t = *self.find_enums(enum_name).first()?;
        Some(
            self.type_enumerators(t)
                .iter()
                .map(|e| (self.name(e.name_off).to_owned(), e.value))
                .collect(),
        )
    }

    /// Value of the enumerator `name` in any enum, named or anonymous (e.g. `MM_ANONPAGES`).
    /// When several enums define it, the one with the lowest type id wins.
    pub fn enumerator_value(&self, name: &str) -> Option<i64> {
        // `enumerators` is filled in type-id order, so a linear scan keeps that precedence.
        self.enumerators
            .iter()
            .find(|e| self.name(e.name_off) == name)
            .map(|e| e.value)
    }
}

#[cfg(test)]
pub(crate) mod bpftool_raw {
    //! Parser for `bpftool btf dump file ... format raw`, an independent source of truth for
    //! the tests.

    use std::collections::HashMap;
    use std::process::Command;

    pub const BPFTOOL: &str = "/usr/sbin/bpftool";

    #[derive(Debug, Default)]
    pub struct DumpType {
        pub kind: String,
        pub name: String,
        pub size: Option<u64>,
        /// TYPEDEF/CONST/VOLATILE/PTR/ARRAY...: the referenced type.
        pub type_id: Option<u32>,
        pub nr_elems: Option<u64>,
        /// STRUCT/UNION: (name, type_id, bits_offset, bitfield_size).
        pub members: Vec<(String, u32, u64, u64)>,
        /// ENUM/ENUM64: (name, value).
        pub values: Vec<(String, i128)>,
    }

    pub struct Dump {
        pub types: HashMap<u32, DumpType>,
    }

    fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_end_matches(','))
    }

    fn num(s: &str) -> i128 {
        s.trim_end_matches(['U', 'L'])
            .parse()
            .unwrap_or_else(|e| panic!("bad number {s:?} in bpftool output: {e}"))
    }

    /// Runs bpftool on the file and parses its raw dump. Panics with a clear message if
    /// bpftool is missing or fails.
    pub fn dump(path: &str) -> Dump {
        let out = Command::new(BPFTOOL)
            .args(["btf", "dump", "file", path, "format", "raw"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {BPFTOOL} ({e}): install the `bpftool` package \
                     (the project's test setup provides it)"
                )
            });
        assert!(
            out.status.success(),
            "bpftool btf dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&String::from_utf8(out.stdout).expect("bpftool output is UTF-8"))
    }

    pub fn parse(text: &str) -> Dump {
        let mut types = HashMap::new();
        let mut current: Option<(u32, DumpType)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                if let Some((id, t)) = current.take() {
                    types.insert(id, t);
                }
                let (id, rest) = rest.split_once("] ").expect("type line");
                let (kind, rest) = rest.split_once(" '").expect("type kind");
                let (name, rest) = rest.split_once('\'').expect("type name");
                let t = DumpType {
                    kind: kind.to_owned(),
                    name: if name == "(anon)" { "" } else { name }.to_owned(),
                    size: field(rest, "size").map(|s| num(s) as u64),
                    type_id: field(rest, "type_id").map(|s| num(s) as u32),
                    nr_elems: field(rest, "nr_elems").map(|s| num(s) as u64),
                    ..Default::default()
                };
                current = Some((id.parse().expect("type id"), t));
            } else if let Some(rest) = line.strip_prefix("\t'") {
                let (_, t) = current.as_mut().expect("member line before any type");
                let (name, rest) = rest.split_once('\'').expect("member name");
                let name = if name == "(anon)" { "" } else { name }.to_owned();
                match t.kind.as_str() {
                    "STRUCT" | "UNION" => t.members.push((
                        name,
                        num(field(rest, "type_id").expect("member type_id")) as u32,
                        num(field(rest, "bits_offset").expect("member bits_offset")) as u64,
                        field(rest, "bitfield_size").map_or(0, |s| num(s) as u64),
                    )),
                    "ENUM" | "ENUM64" => t
                        .values
                        .push((name, num(field(rest, "val").expect("enum val")))),
                    _ => {}
                }
            }
        }
        if let Some((id, t)) = current.take() {
            types.insert(id, t);
        }
        Dump { types }
    }

    impl Dump {
        /// The STRUCT (or UNION) with this name and the largest size.
        pub fn composite(&self, name: &str) -> Option<u32> {
            self.types
                .iter()
                .filter(|(_, t)| (t.kind == "STRUCT" || t.kind == "UNION") && t.name == name)
                .max_by_key(|(id, t)| (t.size, std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)
        }

        pub fn resolve(&self, mut id: u32) -> u32 {
            loop {
                let t = &self.types[&id];
                match t.kind.as_str() {
                    "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                        id = t.type_id.unwrap()
                    }
                    _ => return id,
                }
            }
        }

        fn find(&self, id: u32, name: &str) -> Option<(u64, u32)> {
            let t = &self.types[&id];
            for (m, ty, off, _) in &t.members {
                if m == name {
                    return Some((*off, *ty));
                }
                if m.is_empty()
                    && let Some((o, ty)) = self.find(self.resolve(*ty), name)
                {
                    return Some((off + o, ty));
                }
            }
            None
        }

        /// (bit offset, member type id) of a nested member path, through anonymous members.
        pub fn member_bits(&self, struct_name: &str, path: &[&str]) -> Option<(u64, u32)> {
            let mut id = self.composite(struct_name)?;
            let mut bits = 0;
            let mut ty = 0;
            for (i, name) in path.iter().enumerate() {
                let (off, t) = self.find(id, name)?;
                bits += off;
                ty = t;
                if i + 1 < path.len() {
                    id = self.resolve(t);
                }
            }
            Some((bits, ty))
        }

        /// Byte offset of a nested member path.
        pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Option<u32> {
            let (bits, _) = self.member_bits(struct_name, path)?;
            assert_eq!(bits % 8, 0, "{struct_name}.{path:?} is not byte aligned");
            Some((bits / 8) as u32)
        }

        /// Value of an enumerator in any enum.
        pub fn enumerator(&self, name: &str) -> Option<i128> {
            let mut ids: Vec<_> = self.types.keys().copied().collect();
            ids.sort_unstable();
            ids.iter().find_map(|id| {
                self.types[id]
                    .values
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| *v)
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod enc {
    //! Tiny BTF encoder for hand-made test blobs.

    use super::*;

    /// Tiny BTF encoder for hand-made test blobs. Type ids are handed out in call order,
    /// starting at 1.
    #[derive(Default)]
    pub(crate) struct Enc {
        strings: Vec<u8>,
        types: Vec<u8>,
        next_id: u32,
    }

    pub(crate) fn info(kind: u8, vlen: usize, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen as u32
    }

    impl Enc {
        pub(crate) fn new() -> Self {
            Enc {
                strings: vec![0],
                types: Vec::new(),
                next_id: 1,
            }
        }

        pub(crate) fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        pub(crate) fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        pub(crate) fn ty(&mut self, name: &str, info: u32, size_or_type: u32) -> u32 {
            let name_off = self.s(name);
            self.words(&[name_off, info, size_or_type]);
            self.next_id += 1;
            self.next_id - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            self.int_bits(name, size, 0, size * 8)
        }

        pub(crate) fn int_bits(&mut self, name: &str, size: u32, bit_off: u32, bits: u32) -> u32 {
            let id = self.ty(name, info(KIND_INT, 0, false), size);
            self.words(&[(bit_off << 16) | bits]);
            id
        }

        pub(crate) fn modifier(&mut self, kind: u8, name: &str, target: u32) -> u32 {
            self.ty(name, info(kind, 0, false), target)
        }

        pub(crate) fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.modifier(KIND_TYPEDEF, name, target)
        }

        pub(crate) fn ptr(&mut self, target: u32) -> u32 {
            self.modifier(KIND_PTR, "", target)
        }

        pub(crate) fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.ty("", info(KIND_ARRAY, 0, false), 0);
            self.words(&[elem, index, n]);
            id
        }

        /// Members: (name, type, bit offset, bitfield size); a non-zero bitfield size anywhere
        /// selects the kind_flag encoding.
        pub(crate) fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            m: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kf = m.iter().any(|x| x.3 != 0);
            let id = self.ty(name, info(kind, m.len(), kf), size);
            for &(n, t, off, bits) in m {
                let n = self.s(n);
                let off = if kf { (bits << 24) | off } else { off };
                self.words(&[n, t, off]);
            }
            id
        }

        pub(crate) fn strukt(&mut self, name: &str, size: u32, m: &[(&str, u32, u32)]) -> u32 {
            let m: Vec<_> = m.iter().map(|&(n, t, o)| (n, t, o, 0)).collect();
            self.composite(KIND_STRUCT, name, size, &m)
        }

        pub(crate) fn union(&mut self, name: &str, size: u32, m: &[(&str, u32, u32)]) -> u32 {
            let m: Vec<_> = m.iter().map(|&(n, t, o)| (n, t, o, 0)).collect();
            self.composite(KIND_UNION, name, size, &m)
        }

        pub(crate) fn enum32(&mut self, name: &str, signed: bool, v: &[(&str, i32)]) -> u32 {
            let id = self.ty(name, info(KIND_ENUM, v.len(), signed), 4);
            for &(n, val) in v {
                let n = self.s(n);
                self.words(&[n, val as u32]);
            }
            id
        }

        pub(crate) fn enum64(&mut self, name: &str, signed: bool, v: &[(&str, u64)]) -> u32 {
            let id = self.ty(name, info(KIND_ENUM64, v.len(), signed), 8);
            for &(n, val) in v {
                let n = self.s(n);
                self.words(&[n, val as u32, (val >> 32) as u32]);
            }
            id
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.push(BTF_VERSION);
            out.push(0);
            let len = self.types.len() as u32;
            for w in [24, 0, len, len, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::enc::{Enc, info};
    use super::*;

    /// A blob exercising every kind, nesting, anonymous members, typedef chains and bitfields.
    fn sample() -> Vec<u8> {
        let mut e = Enc::new();
        let int = e.int("int", 4); // 1
        let long = e.int("long", 8); // 2
        let char_ = e.int("char", 1); // 3
        let u64_t = e.modifier(KIND_TYPEDEF, "u64", long); // 4
        let cu64 = e.modifier(KIND_CONST, "", u64_t); // 5
        let vcu64 = e.modifier(KIND_VOLATILE, "", cu64); // 6
        let ptr = e.modifier(KIND_PTR, "", char_); // 7
        let comm = e.array(char_, int, 16); // 8
        // typedef struct { long counter; } atomic64_t; typedef atomic64_t atomic_long_t;
        let anon_counter = e.strukt("", 8, &[("counter", long, 0)]); // 9
        let atomic64 = e.modifier(KIND_TYPEDEF, "atomic64_t", anon_counter); // 10
        let atomic_long = e.modifier(KIND_TYPEDEF, "atomic_long_t", atomic64); // 11
        let page_counter = e.strukt(
            "page_counter",
            24,
            &[
                ("usage", atomic_long, 0),
                ("max", long, 64),
                ("low", long, 128),
            ],
        ); // 12
        let pc_t = e.modifier(KIND_TYPEDEF, "page_counter_t", page_counter); // 13
        let c_pc = e.modifier(KIND_CONST, "", pc_t); // 14
        // struct { u32 ino; u32 generation; } inside union kernfs_node_id.
        let ino_gen = e.strukt("", 8, &[("ino", int, 0), ("generation", int, 32)]); // 15
        let kn_id = e.union("kernfs_node_id", 8, &[("", ino_gen, 0), ("id", u64_t, 0)]); // 16
        let flags = e.composite(
            KIND_STRUCT,
            "flags",
            4,
            &[("a", int, 0, 1), ("b", int, 1, 3), ("c", int, 7, 9)],
        ); // 17
        let old_bits = e.int_bits("", 4, 2, 5); // 18: legacy bitfield encoding
        let legacy = e.strukt("legacy", 4, &[("x", old_bits, 8)]); // 19
        let fwd = e.ty("thing", info(KIND_FWD, 0, false), 0); // 20
        let arr_pc = e.array(pc_t, int, 3); // 21
        let anon_union = e.union("", 8, &[("ptr", ptr, 0), ("val", vcu64, 0)]); // 22
        let anon_inner = e.strukt("", 32, &[("memory", c_pc, 0), ("", anon_union, 192)]); // 23
        let thing = e.strukt(
            "thing",
            144,
            &[
                ("pid", int, 0),
                ("comm", comm, 32),
                ("", anon_inner, 192),
                ("kid", kn_id, 448),
                ("flags", flags, 512),
                ("old", legacy, 544),
                ("counters", arr_pc, 576),
            ],
        ); // 24
        assert_eq!(thing, 24);
        let _ = fwd;
        e.enum32("colour", true, &[("RED", 0), ("GREEN", 1), ("BLUE", -2)]); // 25
        e.enum32(
            "",
            false,
            &[("MM_FILEPAGES", 0), ("MM_ANONPAGES", 1), ("BIG", -1)],
        ); // 26
        e.enum64(
            "wide",
            false,
            &[("SMALL", 1), ("HUGE", 1 << 40), ("ALL", u64::MAX)],
        ); // 27
        e.enum64("swide", true, &[("NEG", (-5i64) as u64)]); // 28
        let anon_enum = e.enum32("", false, &[("ANON_A", 7)]); // 29
        e.modifier(KIND_TYPEDEF, "anon_enum_t", anon_enum); // 30
        // Kinds that only need to be skipped.
        let proto = e.ty("", info(KIND_FUNC_PROTO, 2, false), int); // 31
        e.words(&[0, int, 0, ptr]);
        e.ty("do_thing", info(KIND_FUNC, 0, false), proto); // 32
        let var = e.ty("a_var", info(KIND_VAR, 0, false), int); // 33
        e.words(&[1]);
        e.ty(".data", info(KIND_DATASEC, 1, false), 4); // 34
        e.words(&[var, 0, 4]);
        e.ty("double", info(KIND_FLOAT, 0, false), 8); // 35
        e.ty("tag", info(KIND_DECL_TAG, 0, false), thing); // 36
        e.words(&[u32::MAX]);
        e.ty("user", info(KIND_TYPE_TAG, 0, false), int); // 37
        e.modifier(KIND_RESTRICT, "", ptr); // 38
        // A zero-sized struct with the same name as a real one must not win.
        e.strukt("page_counter", 0, &[]); // 39
        // A second definition after the FWD: lookups still pick the full STRUCT.
        e.build()
    }

    #[test]
    fn parses_every_kind() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.types.len(), 40);
        assert_eq!(btf.struct_size("thing"), Some(144));
        assert_eq!(btf.struct_size("page_counter"), Some(24));
        assert_eq!(btf.struct_size("kernfs_node_id"), Some(8));
        assert_eq!(
            btf.struct_size("atomic64_t"),
            Some(8),
            "typedef of anon struct"
        );
        assert_eq!(btf.struct_size("nope"), None);
        assert_eq!(btf.struct_size("colour"), None);
    }

    #[test]
    fn direct_members() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        let pid = btf.member("thing", &["pid"]).unwrap();
        assert_eq!(
            pid,
            Member {
                offset: 0,
                size: 4,
                kind: MemberKind::Int
            }
        );
        let comm = btf.member("thing", &["comm"]).unwrap();
        assert_eq!(
            comm,
            Member {
                offset: 4,
                size: 16,
                kind: MemberKind::Array {
                    elem_size: 1,
                    len: 16,
                    elem_struct: None
                }
            }
        );
        let counters = btf.member("thing", &["counters"]).unwrap();
        assert_eq!(counters.offset, 72);
        assert_eq!(counters.size, 72);
        assert_eq!(
            counters.kind,
            MemberKind::Array {
                elem_size: 24,
                len: 3,
                elem_struct: Some("page_counter".into())
            }
        );
        assert_eq!(btf.member("thing", &["missing"]), None);
        assert_eq!(btf.member("thing", &[]), None);
        assert_eq!(btf.member("nope", &["pid"]), None);
    }

    #[test]
    fn anonymous_and_nested_members() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        // memory sits in an anonymous struct at byte 24; typedef + const in between.
        let memory = btf.member("thing", &["memory"]).unwrap();
        assert_eq!(memory.offset, 24);
        assert_eq!(memory.size, 24);
        assert_eq!(memory.kind, MemberKind::Struct("page_counter".into()));
        let usage = btf.member("thing", &["memory", "usage"]).unwrap();
        assert_eq!(usage.offset, 24);
        assert_eq!(usage.size, 8);
        assert_eq!(usage.kind, MemberKind::Struct("atomic64_t".into()));
        assert_eq!(
            btf.member_offset("thing", &["memory", "usage", "counter"]),
            Some(24)
        );
        assert_eq!(btf.member_offset("thing", &["memory", "max"]), Some(32));
        // Anonymous union inside the anonymous struct: 24 + 192/8.
        let ptr = btf.member("thing", &["ptr"]).unwrap();
        assert_eq!(
            (ptr.offset, ptr.size, ptr.kind),
            (48, 8, MemberKind::Pointer)
        );
        let val = btf.member("thing", &["val"]).unwrap();
        assert_eq!((val.offset, val.size, val.kind), (48, 8, MemberKind::Int));
        // Union with an anonymous struct member.
        let kid = btf.member("thing", &["kid"]).unwrap();
        assert_eq!(kid.kind, MemberKind::Union("kernfs_node_id".into()));
        assert_eq!((kid.offset, kid.size), (56, 8));
        assert_eq!(btf.member_offset("thing", &["kid", "id"]), Some(56));
        assert_eq!(btf.member_offset("thing", &["kid", "generation"]), Some(60));
        assert_eq!(
            btf.member_offset("kernfs_node_id", &["generation"]),
            Some(4)
        );
        // Members of a non-composite cannot be followed.
        assert_eq!(btf.member("thing", &["pid", "x"]), None);
        assert_eq!(btf.member("thing", &["comm", "x"]), None);
    }

    #[test]
    fn bitfields() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        let f = |p: &[&str]| {
            let m = btf.member("thing", p).unwrap();
            (m.offset, m.size)
        };
        // flags at byte 64: a = bit 0 (1 bit), b = bits 1..4, c = bits 7..16.
        assert_eq!(f(&["flags", "a"]), (64, 1));
        assert_eq!(f(&["flags", "b"]), (64, 1));
        assert_eq!(f(&["flags", "c"]), (64, 2));
        // Legacy encoding: member bit offset 8 + INT offset 2, 5 bits → byte 68 + 1.
        assert_eq!(f(&["old", "x"]), (69, 1));
        assert_eq!(btf.member("legacy", &["x"]).unwrap().kind, MemberKind::Int);
    }

    #[test]
    fn enums() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.enum_value("colour", "GREEN"), Some(1));
        assert_eq!(btf.enum_value("colour", "BLUE"), Some(-2));
        assert_eq!(btf.enum_value("colour", "PINK"), None);
        assert_eq!(btf.enum_value("nope", "RED"), None);
        assert_eq!(
            btf.enum_variants("colour").unwrap(),
            vec![("RED".into(), 0), ("GREEN".into(), 1), ("BLUE".into(), -2)]
        );
        assert_eq!(btf.enum_variants("nope"), None);
        // Unsigned 32-bit enum: 0xffffffff stays positive.
        assert_eq!(btf.enumerator_value("BIG"), Some(0xffff_ffff));
        assert_eq!(btf.enumerator_value("MM_ANONPAGES"), Some(1));
        assert_eq!(btf.enumerator_value("RED"), Some(0));
        assert_eq!(btf.enumerator_value("NOPE"), None);
        // ENUM64.
        assert_eq!(btf.enum_value("wide", "HUGE"), Some(1 << 40));
        assert_eq!(
            btf.enum_value("wide", "ALL"),
            Some(-1),
            "u64::MAX wraps to the same bits"
        );
        assert_eq!(btf.enum_value("swide", "NEG"), Some(-5));
        assert_eq!(btf.enumerator_value("SMALL"), Some(1));
        // typedef enum { ... } anon_enum_t;
        assert_eq!(btf.enum_value("anon_enum_t", "ANON_A"), Some(7));
        // A member of enum type.
        assert_eq!(btf.enum_variants("wide").unwrap().len(), 3);
    }

    #[test]
    fn bad_magic() {
        let mut data = sample();
        data[0] = 0xeb;
        data[1] = 0x9f; // big-endian magic
        match Btf::from_bytes(&data) {
            Err(e @ BtfError::BadMagic(0x9feb)) => {
                assert!(e.to_string().contains("0xeb9f"), "{e}");
            }
            other => panic!("expected BadMagic, got {other:?}"),
        }
        assert!(matches!(
            Btf::from_bytes(b"hello world, not btf at all"),
            Err(BtfError::BadMagic(_))
        ));
        let mut v2 = sample();
        v2[2] = 2;
        assert!(matches!(
            Btf::from_bytes(&v2),
            Err(BtfError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let data = sample();
        for len in 0..data.len() {
            let err = Btf::from_bytes(&data[..len]).unwrap_err();
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        // Header claims more types than there are: type records cut short.
        let mut e = Enc::new();
        e.int("", 4);
        let mut blob = e.build();
        let types_end = 24 + 16;
        blob.truncate(types_end - 2);
        // Re-point the header at a shorter type section and the strings right after it.
        blob[12..16].copy_from_slice(&14u32.to_le_bytes());
        blob[16..20].copy_from_slice(&14u32.to_le_bytes());
        blob[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            Btf::from_bytes(&blob),
            Err(BtfError::Truncated(_))
        ));
    }

    #[test]
    fn corrupt_input_never_panics() {
        let data = sample();
        // Deterministic pseudo-random byte flips, then every query on whatever parses.
        let mut seed: u64 = 0x1234_5678_9abc_def0;
        for _ in 0..3000 {
            let mut d = data.clone();
            for _ in 0..3 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % d.len();
                d[at] = (seed >> 20) as u8;
            }
            if let Ok(btf) = Btf::from_bytes(&d) {
                for p in [
                    &["memory", "usage"][..],
                    &["kid", "id"],
                    &["flags", "c"],
                    &["counters"],
                ] {
                    let _ = btf.member("thing", p);
                }
                let _ = btf.struct_size("page_counter");
                let _ = btf.enum_variants("wide");
                let _ = btf.enumerator_value("MM_ANONPAGES");
            }
        }
    }

    #[test]
    fn cycles_terminate() {
        let mut e = Enc::new();
        // 1: typedef loop → 2 → 1; 3: struct containing itself as an anonymous member.
        e.modifier(KIND_TYPEDEF, "loop_a", 2);
        e.modifier(KIND_TYPEDEF, "loop_b", 1);
        e.strukt("selfish", 8, &[("", 3, 0), ("", 1, 0)]);
        e.strukt("holder", 8, &[("l", 1, 0), ("s", 3, 0)]);
        // 5..=36: a chain of structs each holding the next twice, anonymously (2^32 paths).
        for i in 5..=36u32 {
            e.strukt(&format!("fan{i}"), 8, &[("", i + 1, 0), ("", i + 1, 0)]);
        }
        let btf = Btf::from_bytes(&e.build()).unwrap();
        assert_eq!(btf.member("selfish", &["x"]), None);
        assert_eq!(btf.member("holder", &["l", "x"]), None);
        assert_eq!(btf.member("holder", &["s", "nothing"]), None);
        assert_eq!(btf.struct_size("loop_a"), None);
        assert_eq!(btf.member("fan5", &["x"]), None);
        let l = btf.member("holder", &["l"]);
        assert!(l.is_none() || l.unwrap().offset == 0);
    }

    #[test]
    fn invalid_string_offset_and_kind() {
        let mut e = Enc::new();
        e.words(&[9999, info(KIND_INT, 0, false), 4, 32]);
        assert!(matches!(
            Btf::from_bytes(&e.build()),
            Err(BtfError::Invalid(_))
        ));
        let mut e = Enc::new();
        e.words(&[0, info(25, 0, false), 4]);
        assert!(matches!(
            Btf::from_bytes(&e.build()),
            Err(BtfError::Invalid(_))
        ));
        // Huge vlen with a short section: an error, not a huge allocation.
        let mut e = Enc::new();
        e.words(&[0, info(KIND_STRUCT, 0xffff, false), 4]);
        assert!(matches!(
            Btf::from_bytes(&e.build()),
            Err(BtfError::Truncated(_))
        ));
    }

    #[test]
    fn empty_btf() {
        let e = Enc::new();
        let btf = Btf::from_bytes(&e.build()).unwrap();
        assert_eq!(btf.struct_size("x"), None);
        assert_eq!(btf.enumerator_value("x"), None);
    }

    #[test]
    fn missing_file_messages() {
        let err = Btf::from_file("/sys/kernel/btf/definitely-not-here").unwrap_err();
        assert!(matches!(err, BtfError::NotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains("CONFIG_DEBUG_INFO_BTF"), "{msg}");
        assert!(msg.contains("lacks BTF"), "{msg}");
        let err = Btf::from_file("/nonexistent/file.btf").unwrap_err();
        assert!(matches!(err, BtfError::NotFound { .. }));
        assert!(err.to_string().contains("/nonexistent/file.btf"));
        let err = Btf::from_file("/").unwrap_err();
        assert!(matches!(err, BtfError::Io { .. }), "{err:?}");
    }

    /// Checks task_struct.pid and .comm against bpftool's raw dump of the running kernel's
    /// BTF. fathom needs BTF, so a kernel without it fails this test (as it fails fathom).
    /// How long parsing takes is a benchmark figure, not an assertion here.
    #[test]
    fn vmlinux_matches_bpftool() {
        assert!(
            Path::new(Btf::VMLINUX).exists(),
            "{} does not exist: this kernel has no BTF, which fathom requires",
            Btf::VMLINUX
        );
        let btf = Btf::from_file(Btf::VMLINUX).unwrap();
        eprintln!("parsed {} ({btf:?})", Btf::VMLINUX);
        let dump = bpftool_raw::dump(Btf::VMLINUX);
        let ts = dump
            .composite("task_struct")
            .expect("bpftool shows STRUCT 'task_struct'");
        let ts = &dump.types[&ts];
        assert_eq!(btf.struct_size("task_struct"), ts.size.map(|s| s as u32));
        for name in ["pid", "comm"] {
            let (_, ty, bits, bitfield) = ts
                .members
                .iter()
                .find(|m| m.0 == name)
                .unwrap_or_else(|| panic!("bpftool shows no task_struct.{name}"));
            assert_eq!(*bitfield, 0);
            let m = btf.member("task_struct", &[name]).unwrap();
            assert_eq!(u64::from(m.offset) * 8, *bits, "task_struct.{name}");
            let ty = &dump.types[&dump.resolve(*ty)];
            match name {
                "pid" => {
                    assert_eq!(m.kind, MemberKind::Int);
                    assert_eq!(u64::from(m.size), ty.size.unwrap());
                }
                _ => {
                    assert_eq!(ty.kind, "ARRAY");
                    assert_eq!(
                        m.kind,
                        MemberKind::Array {
                            elem_size: 1,
                            len: ty.nr_elems.unwrap() as u32,
                            elem_struct: None
                        }
                    );
                    assert_eq!(m.size, 16);
                }
            }
        }
    }
}
