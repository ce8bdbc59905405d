//! A small, dependency-free reader for the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF cannot emit CO-RE relocations, so the agent resolves the kernel struct field
//! offsets its probes need here, at load time, and hands them to the eBPF programs as
//! read-only globals. aya's own `Btf` keeps its type accessors private, hence this module.
//!
//! Why hand-written and not a crate (measured 2026-12-02 on this repository's 6.18 test host,
//! `/sys/kernel/btf/vmlinux`, the 14 member lookups podstat makes, three runs each, a scratch
//! binary per reader; both gave identical offsets):
//! - `btfparse` 1.3.9 (Apache-2.0) builds the whole type graph: 2.7–3.5 s and +54 MiB peak RSS,
//!   against 46–55 ms and +15 MiB here. The DaemonSet limits the agent to 64 MiB, and a
//!   3 s start on every node restart is not acceptable; its error type is also not a
//!   `std::error::Error`.
//! - `btf-rs` is LGPL-2.1-or-later. The agent ships as one static musl binary `FROM scratch`
//!   under MIT OR Apache-2.0, and LGPL's relinking terms would then apply to every image.
//!
//! This reader is a parser of one file format plus the lookups podstat needs; its property
//! tests and the kernel matrix (five kernels) check it.
//!
//! Format: Linux `include/uapi/linux/btf.h` (v6.18),
//! <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/btf.h>, and
//! `Documentation/bpf/btf.rst`. Only little-endian BTF is read (that is what every
//! architecture podstat supports produces).

use std::{
    collections::HashMap,
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

/// `BTF_MAGIC`, as it appears in a little-endian blob.
const MAGIC: u16 = 0xeb9f;
/// Size of `struct btf_header` (version 1); `hdr_len` may be larger.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`.
const TYPE_LEN: usize = 12;
/// Bound on typedef/modifier chains and anonymous-member nesting, so that cyclic
/// (malformed) input cannot loop or recurse without end. Real kernels need fewer than 10.
const MAX_DEPTH: usize = 64;
/// BTF does not record the size of a pointer. podstat supports 64-bit kernels only.
const POINTER_SIZE: u32 = 8;

/// Errors from reading BTF or looking a name up in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("kernel BTF has no struct, union or enum named `{0}`")]
    NoType(String),
    #[error("kernel type `{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("kernel enum `{enum_name}` has no enumerator `{enumerator}`")]
    NoEnumerator {
        enum_name: String,
        enumerator: String,
    },
    #[error("member `{member}` of kernel type `{ty}` is a bitfield, which has no byte offset")]
    Bitfield { ty: String, member: String },
    #[error("member `{member}` of kernel type `{ty}` is not an array")]
    NotArray { ty: String, member: String },
}

/// The kind-specific part of one BTF type, reduced to what the lookups need.
#[derive(Debug, Clone)]
enum Kind {
    /// Type id 0.
    Void,
    /// `BTF_KIND_INT`: byte size, and the bit offset/width from the trailing `u32`.
    Int {
        size: u32,
        bit_offset: u32,
        bits: u32,
    },
    Ptr,
    Array {
        elem: u32,
        nelems: u32,
    },
    /// `BTF_KIND_STRUCT` / `BTF_KIND_UNION`; `members` indexes `KernelBtf::members`.
    Composite {
        size: u32,
        kind_flag: bool,
        members: Range<u32>,
    },
    /// `BTF_KIND_ENUM` / `BTF_KIND_ENUM64`; `values` indexes `KernelBtf::enumerators`.
    Enum {
        size: u32,
        values: Range<u32>,
    },
    Fwd,
    /// `TYPEDEF`, `VOLATILE`, `CONST`, `RESTRICT`, `TYPE_TAG`: transparent for layout purposes.
    Alias(u32),
    Float {
        size: u32,
    },
    /// `BTF_KIND_FUNC`: only its name matters (an fentry attach point).
    Func,
    /// `FUNC_PROTO`, `VAR`, `DATASEC`, `DECL_TAG`: never part of a struct's layout.
    Other,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// The raw `offset` field; its meaning depends on the parent's `kind_flag`.
    offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct Enumerator {
    name_off: u32,
    value: i64,
}

/// Where a member path led: its absolute bit offset, its type, and whether it is a bitfield.
#[derive(Debug, Clone, Copy)]
struct Found {
    bit_offset: u64,
    type_id: u32,
    bitfield: bool,
}

/// The kernel's types and strings, parsed once, with name indexes for cheap lookups.
#[derive(Debug)]
pub struct KernelBtf {
    /// Indexed by type id; `types[0]` is void.
    types: Vec<Type>,
    members: Vec<Member>,
    enumerators: Vec<Enumerator>,
    strings: Vec<u8>,
    /// Struct/union name → id of the first complete definition (with members if any has).
    composites: HashMap<Box<str>, u32>,
    /// Enum name → id of the first definition with enumerators.
    enums: HashMap<Box<str>, u32>,
    /// Names of `BTF_KIND_FUNC` types (fentry/fexit attach points).
    funcs: HashMap<Box<str>, u32>,
}

/// A bounds-checked little-endian cursor over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let end = self
            .pos
            .checked_add(4)
            .filter(|&end| end <= self.bytes.len());
        let word = end
            .and_then(|end| self.bytes.get(self.pos..end))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .ok_or_else(|| {
                BtfError::Malformed(format!("type section truncated at byte {}", self.pos))
            })?;
        self.pos += 4;
        Ok(u32::from_le_bytes(word))
    }

    fn skip(&mut self, count: usize, each: usize, what: &str) -> Result<(), BtfError> {
        let end = count
            .checked_mul(each)
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                BtfError::Malformed(format!("{what} runs past the end of the type section"))
            })?;
        self.pos = end;
        Ok(())
    }
}

fn header_u32(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| BtfError::Malformed("header truncated".into()))
}

/// The `[start, start + len)` byte range of a section, checked against the blob.
fn section(
    bytes: &[u8],
    hdr_len: u32,
    off: u32,
    len: u32,
    what: &str,
) -> Result<Range<usize>, BtfError> {
    let start = u64::from(hdr_len) + u64::from(off);
    let end = start + u64::from(len);
    if end > bytes.len() as u64 {
        return Err(BtfError::Malformed(format!(
            "{what} section [{start}, {end}) runs past the end of the {}-byte blob",
            bytes.len()
        )));
    }
    // Both fit in usize: they are at most bytes.len().
    Ok(usize::try_from(start).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(usize::MAX))
}

fn range(start: usize, len: usize) -> Result<Range<u32>, BtfError> {
    let too_many = || BtfError::Malformed("more than 2^32 members".into());
    let start = u32::try_from(start).map_err(|_| too_many())?;
    let len = u32::try_from(len).map_err(|_| too_many())?;
    Ok(start..start.checked_add(len).ok_or_else(too_many)?)
}

impl KernelBtf {
    /// Reads and parses a raw BTF file, e.g. `<sysfs>/kernel/btf/vmlinux`.
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        let bytes = fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses little-endian raw BTF (magic `0xeB9F`).
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let magic = bytes
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| BtfError::Malformed("shorter than the magic number".into()))?;
        if magic == MAGIC.swap_bytes() {
            return Err(BtfError::Malformed(
                "big-endian BTF is not supported".into(),
            ));
        }
        if magic != MAGIC {
            return Err(BtfError::Malformed(format!("bad magic {magic:#06x}")));
        }
        let version = bytes.get(2).copied().unwrap_or_default();
        if version != 1 {
            return Err(BtfError::Malformed(format!(
                "unsupported version {version}"
            )));
        }
        let hdr_len = header_u32(bytes, 4)?;
        if (hdr_len as usize) < HEADER_LEN {
            return Err(BtfError::Malformed(format!(
                "header length {hdr_len} < {HEADER_LEN}"
            )));
        }
        let types = section(
            bytes,
            hdr_len,
            header_u32(bytes, 8)?,
            header_u32(bytes, 12)?,
            "type",
        )?;
        let strings = section(
            bytes,
            hdr_len,
            header_u32(bytes, 16)?,
            header_u32(bytes, 20)?,
            "string",
        )?;

        // As the kernel requires (btf_parse_str_sec): the section starts with the empty
        // name and ends with a NUL, so every in-bounds name offset is terminated.
        if bytes[strings.clone()].first() != Some(&0) || bytes[strings.clone()].last() != Some(&0) {
            return Err(BtfError::Malformed(
                "string section does not start and end with NUL".into(),
            ));
        }
        let mut btf = Self {
            types: Vec::with_capacity(types.len() / 16),
            members: Vec::new(),
            enumerators: Vec::new(),
            strings: bytes[strings].to_vec(),
            composites: HashMap::new(),
            enums: HashMap::new(),
            funcs: HashMap::new(),
        };
        btf.types.push(Type {
            name_off: 0,
            kind: Kind::Void,
        });
        btf.parse_types(&bytes[types])?;
        btf.index()?;
        Ok(btf)
    }

    fn parse_types(&mut self, section: &[u8]) -> Result<(), BtfError> {
        let mut r = Reader {
            bytes: section,
            pos: 0,
        };
        while r.pos < section.len() {
            let id = self.types.len();
            let name_off = r.u32()?;
            let info = r.u32()?;
            let size_or_type = r.u32()?;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let kind = match (info >> 24) & 0x1f {
                1 => {
                    let enc = r.u32()?;
                    Kind::Int {
                        size: size_or_type,
                        bit_offset: (enc >> 16) & 0xff,
                        bits: enc & 0xff,
                    }
                }
                2 => Kind::Ptr,
                3 => {
                    let elem = r.u32()?;
                    let _index_type = r.u32()?;
                    let nelems = r.u32()?;
                    Kind::Array { elem, nelems }
                }
                4 | 5 => {
                    let start = self.members.len();
                    for _ in 0..vlen {
                        self.members.push(Member {
                            name_off: r.u32()?,
                            type_id: r.u32()?,
                            offset: r.u32()?,
                        });
                    }
                    Kind::Composite {
                        size: size_or_type,
                        kind_flag,
                        members: range(start, vlen)?,
                    }
                }
                6 => self.parse_enum(&mut r, vlen, kind_flag, false, size_or_type)?,
                7 => Kind::Fwd,
                8 | 9 | 10 | 11 | 18 => Kind::Alias(size_or_type),
                12 => Kind::Func,
                13 => {
                    r.skip(vlen, 8, "FUNC_PROTO parameters")?;
                    Kind::Other
                }
                14 | 17 => {
                    r.skip(1, 4, "VAR/DECL_TAG data")?;
                    Kind::Other
                }
                15 => {
                    r.skip(vlen, 12, "DATASEC entries")?;
                    Kind::Other
                }
                16 => Kind::Float { size: size_or_type },
                19 => self.parse_enum(&mut r, vlen, kind_flag, true, size_or_type)?,
                k => {
                    return Err(BtfError::Malformed(format!(
                        "type id {id}: unknown kind {k} at type-section byte {}",
                        r.pos - TYPE_LEN
                    )));
                }
            };
            self.types.push(Type { name_off, kind });
        }
        Ok(())
    }

    /// The enumerators of an `ENUM` (`name_off, val`) or, if `wide`, an `ENUM64`
    /// (`name_off, val_lo32, val_hi32`). `kind_flag` marks a signed enum; unsigned 32-bit
    /// values are zero-extended, and unsigned 64-bit values above `i64::MAX` keep their bits.
    fn parse_enum(
        &mut self,
        r: &mut Reader<'_>,
        vlen: usize,
        kind_flag: bool,
        wide: bool,
        size: u32,
    ) -> Result<Kind, BtfError> {
        let start = self.enumerators.len();
        for _ in 0..vlen {
            let name_off = r.u32()?;
            let lo = r.u32()?;
            #[expect(clippy::cast_possible_wrap, reason = "reinterpreting the bits")]
            let value = if wide {
                ((u64::from(r.u32()?) << 32) | u64::from(lo)) as i64
            } else if kind_flag {
                i64::from(lo as i32)
            } else {
                i64::from(lo)
            };
            self.enumerators.push(Enumerator { name_off, value });
        }
        Ok(Kind::Enum {
            size,
            values: range(start, vlen)?,
        })
    }

    /// Builds the name indexes. Several types can share a name in vmlinux; the first complete
    /// definition wins, and one with members beats an empty one.
    fn index(&mut self) -> Result<(), BtfError> {
        let mut composites: HashMap<Box<str>, u32> = HashMap::new();
        let mut enums: HashMap<Box<str>, u32> = HashMap::new();
        let mut funcs: HashMap<Box<str>, u32> = HashMap::new();
        for (id, ty) in self.types.iter().enumerate() {
            let (map, has_members) = match &ty.kind {
                Kind::Composite { members, .. } => (&mut composites, !members.is_empty()),
                Kind::Enum { values, .. } => (&mut enums, !values.is_empty()),
                Kind::Func => (&mut funcs, true),
                _ => continue,
            };
            if ty.name_off == 0 {
                continue; // anonymous
            }
            let name = self.name(ty.name_off)?;
            let id = u32::try_from(id)
                .map_err(|_| BtfError::Malformed("more than 2^32 types".into()))?;
            match map.get_mut(name) {
                None => {
                    map.insert(name.into(), id);
                }
                Some(prev) if has_members && !self.has_members(*prev) => *prev = id,
                Some(_) => {}
            }
        }
        self.composites = composites;
        self.enums = enums;
        self.funcs = funcs;
        Ok(())
    }

    fn has_members(&self, id: u32) -> bool {
        match self.types.get(id as usize).map(|t| &t.kind) {
            Some(Kind::Composite { members, .. }) => !members.is_empty(),
            Some(Kind::Enum { values, .. }) => !values.is_empty(),
            _ => false,
        }
    }
}

/// Name lookups.
impl KernelBtf {
    /// Byte offset of a (possibly nested) member: `offset_of("task_struct", "cgroups")`,
    /// `offset_of("task_group", "cfs_bandwidth.period")`.
    ///
    /// Dotted paths descend into named struct/union members (through typedefs and
    /// const/volatile/restrict/type tags). Members of anonymous structs/unions are found as
    /// if they were direct members (C semantics), at any depth. A bitfield is an error.
    pub fn offset_of(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let found = self.find(ty, path)?;
        if found.bitfield || found.bit_offset % 8 != 0 {
            return Err(BtfError::Bitfield {
                ty: ty.to_owned(),
                member: path.to_owned(),
            });
        }
        u32::try_from(found.bit_offset / 8).map_err(|_| {
            BtfError::Malformed(format!("offset of `{ty}.{path}` does not fit in 32 bits"))
        })
    }

    /// The first of several candidate member paths that exists (kernels rename fields:
    /// `h_nr_running` became `h_nr_queued` in 6.14), and its offset.
    ///
    /// Only "no such member" moves on to the next candidate; any other error (a bitfield,
    /// a missing type) is returned as is.
    pub fn offset_of_any<'a>(
        &self,
        ty: &str,
        paths: &[&'a str],
    ) -> Result<(&'a str, u32), BtfError> {
        for &path in paths {
            match self.offset_of(ty, path) {
                Ok(offset) => return Ok((path, offset)),
                Err(BtfError::NoMember { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(BtfError::NoMember {
            ty: ty.to_owned(),
            member: paths.join(" | "),
        })
    }

    /// Bit offset of a member, bitfields included (`cfs_rq.throttled` is `int` before 6.x and a
    /// one-bit `bool` bitfield in 6.18).
    pub fn bit_offset_of(&self, ty: &str, path: &str) -> Result<u64, BtfError> {
        self.find(ty, path).map(|f| f.bit_offset)
    }

    /// Whether `ty` has a member at `path` (bitfields included).
    pub fn has_member(&self, ty: &str, path: &str) -> bool {
        self.find(ty, path).is_ok()
    }

    /// Size in bytes of the struct or union `ty`.
    pub fn size_of(&self, ty: &str) -> Result<u32, BtfError> {
        let id = self.composite(ty)?;
        match self.kind(id)? {
            Kind::Composite { size, .. } => Ok(size),
            _ => Err(BtfError::NoType(ty.to_owned())),
        }
    }

    /// Value of an enumerator: `enum_value("cgroup_subsys_id", "cpu_cgrp_id")`. Unsigned
    /// 64-bit values above `i64::MAX` keep their bit pattern.
    pub fn enum_value(&self, enum_name: &str, enumerator: &str) -> Result<i64, BtfError> {
        let id = *self
            .enums
            .get(enum_name)
            .ok_or_else(|| BtfError::NoType(enum_name.to_owned()))?;
        let Kind::Enum { values, .. } = self.kind(id)? else {
            return Err(BtfError::NoType(enum_name.to_owned()));
        };
        for e in Self::slice(&self.enumerators, &values)? {
            if self.name(e.name_off)? == enumerator {
                return Ok(e.value);
            }
        }
        Err(BtfError::NoEnumerator {
            enum_name: enum_name.to_owned(),
            enumerator: enumerator.to_owned(),
        })
    }

    /// Whether a FUNC named `name` exists: an fentry attach point. Static functions that
    /// were inlined everywhere have none.
    pub fn has_func(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    /// Element size and element count of an array member, e.g.
    /// `array_of("css_set", "subsys")` → `(8, CGROUP_SUBSYS_COUNT)`.
    pub fn array_of(&self, ty: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let found = self.find(ty, path)?;
        match self.kind(self.strip(found.type_id)?)? {
            Kind::Array { elem, nelems } => Ok((self.size(elem)?, nelems)),
            _ => Err(BtfError::NotArray {
                ty: ty.to_owned(),
                member: path.to_owned(),
            }),
        }
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> Result<&str, BtfError> {
        let tail = self.strings.get(off as usize..).ok_or_else(|| {
            BtfError::Malformed(format!("name offset {off} outside the string section"))
        })?;
        let len = tail.iter().position(|&b| b == 0).ok_or_else(|| {
            BtfError::Malformed(format!("string at offset {off} is not NUL-terminated"))
        })?;
        std::str::from_utf8(&tail[..len])
            .map_err(|_| BtfError::Malformed(format!("string at offset {off} is not UTF-8")))
    }

    fn kind(&self, id: u32) -> Result<Kind, BtfError> {
        self.types
            .get(id as usize)
            .map(|t| t.kind.clone())
            .ok_or_else(|| BtfError::Malformed(format!("reference to missing type id {id}")))
    }

    fn slice<'s, T>(items: &'s [T], range: &Range<u32>) -> Result<&'s [T], BtfError> {
        items
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| BtfError::Malformed("member range out of bounds".into()))
    }

    /// Follows typedefs and modifiers to the underlying type.
    fn strip(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.kind(id)? {
                Kind::Alias(target) => id = target,
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed(format!(
            "typedef/modifier chain longer than {MAX_DEPTH} at type id {id}"
        )))
    }

    /// Size in bytes of any sized type.
    fn size(&self, id: u32) -> Result<u32, BtfError> {
        let mut id = id;
        let mut multiplier: u32 = 1;
        for _ in 0..MAX_DEPTH {
            let size = match self.kind(self.strip(id)?)? {
                Kind::Int { size, .. }
                | Kind::Composite { size, .. }
                | Kind::Enum { size, .. }
                | Kind::Float { size } => size,
                Kind::Ptr => POINTER_SIZE,
                Kind::Array { elem, nelems } => {
                    multiplier = multiplier.checked_mul(nelems).ok_or_else(|| {
                        BtfError::Malformed(format!("array type id {id} is too large"))
                    })?;
                    id = elem;
                    continue;
                }
                Kind::Void | Kind::Fwd | Kind::Alias(_) | Kind::Func | Kind::Other => {
                    return Err(BtfError::Malformed(format!("type id {id} has no size")));
                }
            };
            return size
                .checked_mul(multiplier)
                .ok_or_else(|| BtfError::Malformed(format!("array of type id {id} is too large")));
        }
        Err(BtfError::Malformed(format!(
            "array nesting deeper than {MAX_DEPTH}"
        )))
    }

    /// The struct/union named `ty`.
    fn composite(&self, ty: &str) -> Result<u32, BtfError> {
        self.composites
            .get(ty)
            .copied()
            .ok_or_else(|| BtfError::NoType(ty.to_owned()))
    }

    /// Resolves a dotted member path in the struct/union `ty`.
    fn find(&self, ty: &str, path: &str) -> Result<Found, BtfError> {
        let no_member = || BtfError::NoMember {
            ty: ty.to_owned(),
            member: path.to_owned(),
        };
        let mut found = Found {
            bit_offset: 0,
            type_id: self.composite(ty)?,
            bitfield: false,
        };
        for component in path.split('.') {
            if component.is_empty() || found.bitfield {
                return Err(no_member());
            }
            let inner = self
                .find_member(self.strip(found.type_id)?, component, 0)?
                .ok_or_else(no_member)?;
            found = Found {
                bit_offset: found.bit_offset + inner.bit_offset,
                ..inner
            };
        }
        Ok(found)
    }

    /// Looks `name` up among the members of `id` (if it is a struct/union), descending into
    /// anonymous struct/union members. Offsets are relative to `id`.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed(format!(
                "anonymous members nested deeper than {MAX_DEPTH}"
            )));
        }
        let Kind::Composite {
            kind_flag, members, ..
        } = self.kind(id)?
        else {
            return Ok(None);
        };
        for m in Self::slice(&self.members, &members)? {
            // With kind_flag, the top 8 bits of `offset` are the bitfield size.
            let (bit_offset, bitfield_size) = if kind_flag {
                (m.offset & 0x00ff_ffff, m.offset >> 24)
            } else {
                (m.offset, 0)
            };
            let bit_offset = u64::from(bit_offset);
            if m.name_off == 0 || self.name(m.name_off)?.is_empty() {
                let inner_id = self.strip(m.type_id)?;
                if let Some(inner) = self.find_member(inner_id, name, depth + 1)? {
                    return Ok(Some(Found {
                        bit_offset: bit_offset + inner.bit_offset,
                        ..inner
                    }));
                }
            } else if self.name(m.name_off)? == name {
                // Without kind_flag, a bitfield is an INT whose width or offset says so.
                let int_bitfield = match self.kind(self.strip(m.type_id)?)? {
                    Kind::Int {
                        size,
                        bit_offset,
                        bits,
                    } => bit_offset != 0 || u64::from(bits) != u64::from(size) * 8,
                    _ => false,
                };
                return Ok(Some(Found {
                    bit_offset,
                    type_id: m.type_id,
                    bitfield: bitfield_size != 0 || int_bitfield || bit_offset % 8 != 0,
                }));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        collections::HashMap,
        process::Command,
        sync::OnceLock,
        time::{Duration, Instant},
    };

    use proptest::prelude::*;

    use super::*;

    // BTF kinds, as numbered in include/uapi/linux/btf.h.
    const INT: u32 = 1;
    const PTR: u32 = 2;
    const ARRAY: u32 = 3;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const ENUM: u32 = 6;
    const FWD: u32 = 7;
    const TYPEDEF: u32 = 8;
    const VOLATILE: u32 = 9;
    const CONST: u32 = 10;
    const FUNC: u32 = 12;
    const FUNC_PROTO: u32 = 13;
    const VAR: u32 = 14;
    const DATASEC: u32 = 15;
    const FLOAT: u32 = 16;
    const DECL_TAG: u32 = 17;
    const TYPE_TAG: u32 = 18;
    const ENUM64: u32 = 19;

    /// Builds a raw little-endian BTF blob, type by type.
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Blob {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = u32::try_from(self.strings.len()).expect("small blob");
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn raw(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }

        /// One `btf_type` plus its kind-specific words; returns its id.
        fn ty(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            flag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.str(name);
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
            self.raw(&[name_off, info, size_or_type]);
            self.raw(extra);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            self.ty(name, INT, 0, false, size, &[bits])
        }

        /// A struct or union; members are `(name, type, offset word)`.
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(m, ty, off) in members {
                extra.extend([self.str(m), ty, off]);
            }
            let vlen = u32::try_from(members.len()).expect("few members");
            self.ty(name, kind, vlen, flag, size, &extra)
        }

        #[expect(
            clippy::cast_sign_loss,
            clippy::cast_possible_truncation,
            reason = "encoding the bits"
        )]
        fn enumeration(
            &mut self,
            name: &str,
            signed: bool,
            wide: bool,
            values: &[(&str, i64)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(e, v) in values {
                extra.push(self.str(e));
                extra.push(v as u32);
                if wide {
                    extra.push(((v as u64) >> 32) as u32);
                }
            }
            let vlen = u32::try_from(values.len()).expect("few values");
            let (kind, size) = if wide { (ENUM64, 8) } else { (ENUM, 4) };
            self.ty(name, kind, vlen, signed, size, &extra)
        }

        fn bytes(&self) -> Vec<u8> {
            let type_len = u32::try_from(self.types.len()).expect("small blob");
            let str_len = u32::try_from(self.strings.len()).expect("small blob");
            let mut out = vec![0x9f, 0xeb, 1, 0];
            for w in [24, 0, type_len, type_len, str_len] {
                out.extend_from_slice(&u32::to_le_bytes(w));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// The scheduler types the probes need, as an old or stripped-down kernel has them: the
    /// cgroup chain, `pid` and `__state`, and no `sched_info`, `cfs_rq` or `rq`.
    pub(crate) fn minimal_btf_without_sched_info() -> KernelBtf {
        let mut b = Blob::new();
        let int = b.int("int", 4, 32);
        let u64_t = b.int("unsigned long long", 8, 64);
        let void_ptr = b.ty("", PTR, 0, false, 0, &[]);
        b.enumeration(
            "cgroup_subsys_id",
            false,
            false,
            &[
                ("cpuset_cgrp_id", 0),
                ("cpu_cgrp_id", 1),
                ("CGROUP_SUBSYS_COUNT", 2),
            ],
        );
        let subsys = b.ty("", ARRAY, 0, false, 0, &[void_ptr, int, 2]);
        b.composite(STRUCT, "css_set", 16, false, &[("subsys", subsys, 0)]);
        b.composite(
            STRUCT,
            "cgroup_subsys_state",
            8,
            false,
            &[("cgroup", void_ptr, 0)],
        );
        b.composite(STRUCT, "cgroup", 16, false, &[("kn", void_ptr, 64)]);
        b.composite(STRUCT, "kernfs_node", 16, false, &[("id", u64_t, 64)]);
        b.composite(
            STRUCT,
            "task_struct",
            64,
            false,
            &[
                ("__state", int, 0),
                ("on_rq", int, 128),
                ("pid", int, 256),
                ("cgroups", void_ptr, 384),
            ],
        );
        KernelBtf::parse(&b.bytes()).expect("parsing the minimal blob")
    }

    /// The member `offset` word of a bitfield in a `kind_flag` struct.
    fn bitfield(bits: u32, bit_offset: u32) -> u32 {
        (bits << 24) | bit_offset
    }

    /// A blob exercising every kind and every lookup rule. The C it stands for:
    ///
    /// ```c
    /// typedef int u32_t; typedef const u32_t cu32;
    /// struct node;                                  // FWD first,
    /// struct node {};                               // then an empty one,
    /// struct node { int a; cu32 expires; };         // then the complete one: this one wins.
    /// typedef struct node node_t;
    /// struct outer {                                // kind_flag = 1
    ///     int id;                                   // @0
    ///     union { int raw; struct { int lo, hi; }; };   // @8
    ///     volatile node_t tm;                       // @16
    ///     int bits : 3;                             // @24, bitfield
    ///     int arr[2];                               // @28
    /// };                                            // size 40
    /// struct plain { int nb : 5; int x; };          // kind_flag = 0: bitfield in the INT
    /// ```
    fn sample() -> Vec<u8> {
        let mut b = Blob::new();
        let int = b.int("int", 4, 32);
        let u32_t = b.ty("u32_t", TYPEDEF, 0, false, int, &[]);
        let c = b.ty("", CONST, 0, false, u32_t, &[]);
        let cu32 = b.ty("cu32", TYPEDEF, 0, false, c, &[]);
        b.ty("node", FWD, 0, false, 0, &[]);
        b.composite(STRUCT, "node", 0, false, &[]);
        let node = b.composite(
            STRUCT,
            "node",
            8,
            false,
            &[("a", int, 0), ("expires", cu32, 32)],
        );
        let node_t = b.ty("node_t", TYPEDEF, 0, false, node, &[]);
        let vol = b.ty("", VOLATILE, 0, false, node_t, &[]);
        let anon_s = b.composite(STRUCT, "", 8, false, &[("lo", int, 0), ("hi", int, 32)]);
        let anon_u = b.composite(UNION, "", 8, false, &[("raw", int, 0), ("", anon_s, 0)]);
        let arr = b.ty("", ARRAY, 0, false, 0, &[int, int, 2]);
        b.composite(
            STRUCT,
            "outer",
            40,
            true,
            &[
                ("id", int, 0),
                ("", anon_u, 64),
                ("tm", vol, 128),
                ("bits", int, bitfield(3, 192)),
                ("arr", arr, 224),
            ],
        );
        let int5 = b.int("int", 4, 5);
        b.composite(
            STRUCT,
            "plain",
            8,
            false,
            &[("nb", int5, 0), ("x", int, 32)],
        );
        b.enumeration(
            "big",
            false,
            true,
            &[("SMALL", 1), ("HUGE", 0x1_0000_0002), ("ALL", -1)],
        );
        b.enumeration("sig", true, false, &[("NEG", -3)]);
        b.enumeration("uns", false, false, &[("NEG", -3)]);
        b.enumeration("empty", false, false, &[]);
        // The remaining kinds, so the parser has to step over their trailing data.
        let ptr = b.ty("", PTR, 0, false, node, &[]);
        let proto = b.ty("", FUNC_PROTO, 2, false, int, &[0, ptr, 0, int]);
        let func = b.ty("do_thing", FUNC, 0, false, proto, &[]);
        b.ty("tag", DECL_TAG, 0, false, func, &[u32::MAX]);
        b.ty("double", FLOAT, 0, false, 8, &[]);
        b.ty("user", TYPE_TAG, 0, false, int, &[]);
        let var = b.ty("counter", VAR, 0, false, int, &[1]);
        b.ty(".data", DATASEC, 1, false, 4, &[var, 0, 4]);
        b.bytes()
    }

    /// What a lookup should give: an offset, or the name of the error variant.
    #[derive(Debug, PartialEq)]
    enum Want {
        Off(u32),
        Err(&'static str),
    }

    fn variant(e: &BtfError) -> &'static str {
        match e {
            BtfError::Io { .. } => "Io",
            BtfError::Malformed(_) => "Malformed",
            BtfError::NoType(_) => "NoType",
            BtfError::NoMember { .. } => "NoMember",
            BtfError::NoEnumerator { .. } => "NoEnumerator",
            BtfError::Bitfield { .. } => "Bitfield",
            BtfError::NotArray { .. } => "NotArray",
        }
    }

    fn got<T: Into<i64>>(r: Result<T, BtfError>) -> Result<i64, &'static str> {
        r.map(Into::into).map_err(|e| variant(&e))
    }

    #[test]
    fn fuzz_seed() {
        crate::util::fuzz_seed("btf", "sample", &sample());
    }

    #[test]
    fn offset_of_sample() {
        use Want::{Err, Off};
        let btf = KernelBtf::parse(&sample()).expect("sample parses");
        let cases = [
            ("outer", "id", Off(0)),
            ("outer", "raw", Off(8)), // member of an anonymous union
            ("outer", "lo", Off(8)),  // anonymous struct inside it
            ("outer", "hi", Off(12)),
            ("outer", "tm", Off(16)),
            ("outer", "tm.a", Off(16)), // through volatile → typedef
            ("outer", "tm.expires", Off(20)),
            ("outer", "arr", Off(28)),
            ("outer", "bits", Err("Bitfield")), // kind_flag bitfield
            ("plain", "nb", Err("Bitfield")),   // INT-encoded bitfield
            ("plain", "x", Off(4)),
            ("node", "expires", Off(4)), // FWD and empty `node` skipped
            ("outer", "nope", Err("NoMember")),
            ("outer", "tm.nope", Err("NoMember")),
            ("outer", "id.x", Err("NoMember")), // an int has no members
            ("outer", "bits.x", Err("NoMember")),
            ("outer", "", Err("NoMember")), // "" must not match anonymous members
            ("outer", "tm.", Err("NoMember")),
            ("outer", ".id", Err("NoMember")),
            ("missing", "x", Err("NoType")),
            ("cu32", "x", Err("NoType")), // typedef names are not struct names
            ("big", "x", Err("NoType")),
        ];
        for (ty, path, want) in cases {
            let result = match btf.offset_of(ty, path) {
                Ok(off) => Off(off),
                Result::Err(e) => Err(variant(&e)),
            };
            assert_eq!(result, want, "offset_of({ty:?}, {path:?})");
            let exists = !matches!(want, Err("NoMember" | "NoType"));
            assert_eq!(
                btf.has_member(ty, path),
                exists,
                "has_member({ty:?}, {path:?})"
            );
        }
    }

    #[test]
    fn other_lookups_sample() {
        let btf = KernelBtf::parse(&sample()).expect("sample parses");
        let sizes = [
            ("outer", Ok(40)),
            ("node", Ok(8)),
            ("plain", Ok(8)),
            ("u32_t", Err("NoType")),
        ];
        for (ty, want) in sizes {
            assert_eq!(got(btf.size_of(ty)), want, "size_of({ty:?})");
        }
        let enums = [
            ("big", "SMALL", Ok(1)),
            ("big", "HUGE", Ok(0x1_0000_0002)), // needs the high word
            ("big", "ALL", Ok(-1)),             // u64::MAX keeps its bits
            ("sig", "NEG", Ok(-3)),             // signed ENUM: sign-extended
            ("uns", "NEG", Ok(0xffff_fffd)),    // unsigned ENUM: zero-extended
            ("big", "NOPE", Err("NoEnumerator")),
            ("empty", "X", Err("NoEnumerator")),
            ("node", "a", Err("NoType")),
        ];
        for (e, name, want) in enums {
            assert_eq!(
                got(btf.enum_value(e, name)),
                want,
                "enum_value({e:?}, {name:?})"
            );
        }
        for (name, want) in [
            ("do_thing", true),
            ("do_thin", false),
            ("node", false),
            ("counter", false),
        ] {
            assert_eq!(btf.has_func(name), want, "has_func({name:?})");
        }
        let bits = [
            ("outer", "bits", Ok(192)), // the bitfield `offset_of` refuses
            ("plain", "nb", Ok(0)),
            ("outer", "tm.expires", Ok(160)),
            ("outer", "hi", Ok(96)),
            ("outer", "nope", Err("NoMember")),
        ];
        for (ty, path, want) in bits {
            let result = btf.bit_offset_of(ty, path).map_err(|e| variant(&e));
            assert_eq!(result, want, "bit_offset_of({ty:?}, {path:?})");
        }
        assert_eq!(btf.array_of("outer", "arr").ok(), Some((4, 2)));
        assert_eq!(
            btf.array_of("outer", "id").map_err(|e| variant(&e)),
            Err("NotArray")
        );
        assert_eq!(
            btf.array_of("outer", "nope").map_err(|e| variant(&e)),
            Err("NoMember")
        );

        assert_eq!(
            btf.offset_of_any("outer", &["old", "hi"]).ok(),
            Some(("hi", 12))
        );
        assert_eq!(
            btf.offset_of_any("outer", &["id", "hi"]).ok(),
            Some(("id", 0))
        );
        assert_eq!(
            btf.offset_of_any("outer", &["bits", "id"])
                .map_err(|e| variant(&e)),
            Err("Bitfield")
        );
        let none = btf
            .offset_of_any("outer", &["old", "older"])
            .expect_err("neither exists");
        assert_eq!(
            none.to_string(),
            "kernel type `outer` has no member `old | older`"
        );
        assert_eq!(
            btf.offset_of_any("gone", &["x"]).map_err(|e| variant(&e)),
            Err("NoType")
        );
    }

    #[test]
    fn errors_name_type_and_member() {
        let btf = KernelBtf::parse(&sample()).expect("sample parses");
        let cases = [
            (btf.offset_of("outer", "tm.nope"), "`outer`", "`tm.nope`"),
            (btf.offset_of("outer", "bits"), "`outer`", "`bits`"),
            (btf.offset_of("missing", "x"), "`missing`", ""),
            (btf.enum_value("big", "NOPE").map(|_| 0), "`big`", "`NOPE`"),
            (btf.array_of("outer", "id").map(|_| 0), "`outer`", "`id`"),
        ];
        for (result, ty, member) in cases {
            let msg = result.expect_err("lookup fails").to_string();
            assert!(
                msg.contains(ty) && msg.contains(member),
                "{msg:?} should name {ty} and {member}"
            );
        }
        let missing = Path::new("/nonexistent/btf/vmlinux");
        let err = KernelBtf::load(missing).expect_err("no such file");
        assert_eq!(variant(&err), "Io");
        assert!(
            err.to_string().contains("/nonexistent/btf/vmlinux"),
            "{err}"
        );
    }

    /// Rewrites the little-endian u32 at `at`.
    fn patch(mut bytes: Vec<u8>, at: usize, value: u32) -> Vec<u8> {
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        bytes
    }

    #[test]
    fn malformed_headers_and_types() {
        let good = sample();
        let type_len = u32::from_le_bytes(good[12..16].try_into().expect("4 bytes"));
        let mut big_endian = good.clone();
        big_endian.swap(0, 1);
        let mut unknown_kind = Blob::new();
        unknown_kind.ty("x", 20, 0, false, 0, &[]);
        let mut kind_zero = Blob::new();
        kind_zero.ty("x", 0, 0, false, 0, &[]);
        let mut bad_name = Blob::new();
        bad_name.raw(&[9999, STRUCT << 24, 4]);
        let mut unterminated = sample();
        unterminated.pop(); // the final NUL of the string section
        let str_len = u32::try_from(unterminated.len()).expect("small") - 24 - type_len;
        let unterminated = patch(unterminated, 20, str_len);
        let cases: [(&str, Vec<u8>); 11] = [
            ("empty", Vec::new()),
            ("magic only", good[..2].to_vec()),
            ("bad magic", patch(good.clone(), 0, 0x0001_1234)),
            ("big-endian", big_endian),
            ("version 2", {
                let mut b = good.clone();
                b[2] = 2;
                b
            }),
            ("short hdr_len", patch(good.clone(), 4, 16)),
            ("types past end", patch(good.clone(), 12, type_len + 4)),
            (
                "types cut mid-member",
                patch(good.clone(), 12, type_len - 4),
            ),
            ("unknown kind 20", unknown_kind.bytes()),
            ("kind 0", kind_zero.bytes()),
            ("unterminated name", unterminated),
        ];
        for (what, bytes) in cases {
            let result = KernelBtf::parse(&bytes);
            assert!(
                matches!(result, Err(BtfError::Malformed(_))),
                "{what}: {result:?}"
            );
        }
        // A bad name offset is caught when the name index is built.
        let result = KernelBtf::parse(&bad_name.bytes());
        assert!(
            matches!(result, Err(BtfError::Malformed(_))),
            "bad name offset: {result:?}"
        );
    }

    #[test]
    fn malformed_references_fail_at_lookup() {
        let mut b = Blob::new();
        let int = b.int("int", 4, 32);
        // typedef a → typedef b → typedef a
        let a = b.ty("a", TYPEDEF, 0, false, 3, &[]);
        b.ty("b", TYPEDEF, 0, false, a, &[]);
        b.composite(STRUCT, "cyc", 4, false, &[("m", a, 0)]);
        // An anonymous member whose type is the struct itself.
        let me = b.next_id;
        b.composite(STRUCT, "self", 4, false, &[("", me, 0), ("x", int, 0)]);
        b.composite(STRUCT, "dangling", 4, false, &[("m", 999, 0)]);
        let arr = b.ty("", ARRAY, 0, false, 0, &[999, int, 2]);
        b.composite(STRUCT, "badarr", 4, false, &[("m", arr, 0)]);
        let btf = KernelBtf::parse(&b.bytes()).expect("structurally valid");
        let cases = [
            btf.offset_of("cyc", "m"),
            btf.offset_of("cyc", "m.x"),
            btf.offset_of("self", "x"),
            btf.offset_of("dangling", "m"),
            btf.array_of("badarr", "m").map(|(size, _)| size),
        ];
        for (i, result) in cases.into_iter().enumerate() {
            assert!(
                matches!(result, Err(BtfError::Malformed(_))),
                "case {i}: {result:?}"
            );
        }
    }

    /// Runs every kind of lookup; used to check that nothing panics on odd input.
    fn exercise(btf: &KernelBtf) {
        for (ty, path) in [
            ("outer", "tm.expires"),
            ("outer", "hi"),
            ("node", "a"),
            ("task_struct", "cgroups"),
        ] {
            let _ = btf.offset_of(ty, path);
            let _ = btf.array_of(ty, path);
            let _ = btf.size_of(ty);
        }
        let _ = btf.enum_value("big", "HUGE");
        let _ = btf.offset_of_any("cfs_rq", &["h_nr_running", "h_nr_queued"]);
        let _ = btf.has_func("do_thing");
    }

    /// This machine's kernel BTF, read once; `None` (with the reason printed) if unreadable.
    fn vmlinux() -> Option<&'static [u8]> {
        static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
        BYTES
            .get_or_init(|| match fs::read(VMLINUX) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    eprintln!("skipping: cannot read {VMLINUX}: {e}");
                    None
                }
            })
            .as_deref()
    }

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    proptest! {
        #[test]
        fn parse_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(btf) = KernelBtf::parse(&bytes) {
                exercise(&btf);
            }
        }

        #[test]
        fn parse_valid_header_random_types_never_panics(
            types in proptest::collection::vec(any::<u32>(), 0..64),
            strings in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = Blob::new();
            b.raw(&types);
            b.strings = strings;
            if let Ok(btf) = KernelBtf::parse(&b.bytes()) {
                exercise(&btf);
            }
        }

        #[test]
        fn parse_mutated_sample_never_panics(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = sample();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(btf) = KernelBtf::parse(&bytes) {
                exercise(&btf);
            }
        }
    }

    proptest! {
        // Each case parses megabytes in a debug build; a few cases are enough.
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn parse_truncated_vmlinux_never_panics(cut in any::<prop::sample::Index>()) {
            let Some(full) = vmlinux() else { return Ok(()) };
            // As is: the header's section lengths now run past the end.
            let end = cut.index(full.len());
            prop_assert!(KernelBtf::parse(&full[..end]).is_err());
            // The header kept consistent, the type section cut short: the cut lands inside a
            // type, and the string section is intact.
            let word = |at: usize| u32::from_le_bytes(full[at..at + 4].try_into().expect("4 bytes"));
            let type_len = u32::try_from(cut.index(word(12) as usize)).expect("fits");
            if let Ok(btf) = KernelBtf::parse(&patch(full.to_vec(), 12, type_len)) {
                exercise(&btf);
            }
            // All types, but a string section cut short (and NUL-terminated): names point
            // past its end.
            let str_len = cut.index(word(20) as usize).max(1);
            let mut short = patch(full.to_vec(), 20, u32::try_from(str_len).expect("fits"));
            let last = (word(4) + word(16)) as usize + str_len - 1;
            short[last] = 0;
            if let Ok(btf) = KernelBtf::parse(&short) {
                exercise(&btf);
            }
        }
    }

    /// One type as `bpftool btf dump file … format raw` prints it.
    #[derive(Debug, Default)]
    struct RawType {
        kind: String,
        name: String,
        type_id: u32,
        size: u32,
        nelems: u32,
        int_bits: u32,
        int_offset: u32,
        /// `(name, type_id, bits_offset, bitfield_size)`.
        members: Vec<(String, u32, u64, u32)>,
        enumerators: Vec<(String, i64)>,
    }

    /// An independent reading of the kernel's BTF: bpftool's decoding of it, as text.
    struct Oracle {
        types: Vec<RawType>,
        /// Same rule as `KernelBtf`: first struct/union with members, else the first one.
        composites: HashMap<String, usize>,
        enums: HashMap<String, usize>,
    }

    fn field<T: std::str::FromStr>(words: &str, key: &str) -> Option<T> {
        words
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.trim_end_matches(',').parse().ok())
    }

    /// `'name' rest` → `(name, rest)`; names may contain spaces.
    fn quoted(line: &str) -> Option<(&str, &str)> {
        let start = line.find('\'')? + 1;
        let len = line[start..].find('\'')?;
        Some((&line[start..start + len], &line[start + len + 1..]))
    }

    impl Oracle {
        /// `None` when bpftool is missing or cannot read the file.
        fn load() -> Option<Self> {
            let output = ["bpftool", "/usr/sbin/bpftool"].iter().find_map(|bin| {
                Command::new(bin)
                    .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
            })?;
            Some(Self::parse(&String::from_utf8_lossy(&output.stdout)))
        }

        fn parse(text: &str) -> Self {
            let mut types = vec![RawType::default()]; // id 0: void
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix('[') {
                    let (id, rest) = rest.split_once("] ").expect("`[id] KIND`");
                    assert_eq!(id.parse::<usize>().ok(), Some(types.len()), "ids in order");
                    let (kind, rest) = rest.split_once(' ').expect("kind");
                    let (name, rest) = quoted(rest).expect("quoted name");
                    types.push(RawType {
                        kind: kind.to_owned(),
                        name: if name == "(anon)" {
                            String::new()
                        } else {
                            name.to_owned()
                        },
                        type_id: field(rest, "type_id=").unwrap_or(0),
                        size: field(rest, "size=").unwrap_or(0),
                        nelems: field(rest, "nr_elems=").unwrap_or(0),
                        int_bits: field(rest, "nr_bits=").unwrap_or(0),
                        int_offset: field(rest, "bits_offset=").unwrap_or(0),
                        ..RawType::default()
                    });
                } else if let (Some(t), Some((name, rest))) = (types.last_mut(), quoted(line)) {
                    let name = if name == "(anon)" {
                        String::new()
                    } else {
                        name.to_owned()
                    };
                    match t.kind.as_str() {
                        "STRUCT" | "UNION" => t.members.push((
                            name,
                            field(rest, "type_id=").expect("member type"),
                            field(rest, "bits_offset=").expect("member offset"),
                            field(rest, "bitfield_size=").unwrap_or(0),
                        )),
                        "ENUM" | "ENUM64" => {
                            let v = rest.trim().strip_prefix("val=").expect("val=");
                            let v = v.trim_end_matches("ULL").trim_end_matches("LL");
                            #[expect(clippy::cast_possible_wrap, reason = "keep the bits")]
                            let v = v
                                .parse::<i64>()
                                .unwrap_or_else(|_| v.parse::<u64>().expect("number") as i64);
                            t.enumerators.push((name, v));
                        }
                        _ => {}
                    }
                }
            }
            let mut composites = HashMap::new();
            let mut enums = HashMap::new();
            for (id, t) in types.iter().enumerate() {
                let (map, full) = match t.kind.as_str() {
                    "STRUCT" | "UNION" => (&mut composites, !t.members.is_empty()),
                    "ENUM" | "ENUM64" => (&mut enums, !t.enumerators.is_empty()),
                    _ => continue,
                };
                if t.name.is_empty() {
                    continue;
                }
                let prev = map.entry(t.name.clone()).or_insert(id);
                let prev_full =
                    !types[*prev].members.is_empty() || !types[*prev].enumerators.is_empty();
                if full && !prev_full {
                    *prev = id;
                }
            }
            Self {
                types,
                composites,
                enums,
            }
        }

        fn strip(&self, mut id: u32) -> u32 {
            while matches!(
                self.types[id as usize].kind.as_str(),
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
            ) {
                id = self.types[id as usize].type_id;
            }
            id
        }

        /// `(bits offset, type id, is bitfield)` of `name` in struct/union `id`.
        fn member(&self, id: u32, name: &str) -> Option<(u64, u32, bool)> {
            for (m, ty, bits, bitfield) in &self.types[id as usize].members {
                if m.is_empty() {
                    if let Some((inner, ty, bf)) = self.member(self.strip(*ty), name) {
                        return Some((bits + inner, ty, bf));
                    }
                } else if m == name {
                    let t = &self.types[self.strip(*ty) as usize];
                    let int_bf = t.kind == "INT" && (t.int_offset != 0 || t.int_bits != t.size * 8);
                    return Some((*bits, *ty, *bitfield != 0 || int_bf || bits % 8 != 0));
                }
            }
            None
        }

        /// Names of the members of struct/union `id`, including those reached through
        /// anonymous members.
        fn names(&self, id: u32, out: &mut Vec<String>) {
            for (m, ty, ..) in &self.types[id as usize].members {
                if m.is_empty() {
                    self.names(self.strip(*ty), out);
                } else {
                    out.push(m.clone());
                }
            }
        }

        /// Size in bytes of a sized type.
        fn size(&self, id: u32) -> u32 {
            let t = &self.types[self.strip(id) as usize];
            match t.kind.as_str() {
                "PTR" => 8,
                "ARRAY" => t.nelems * self.size(t.type_id),
                _ => t.size,
            }
        }

        /// `(element size, length)` if `path` in `ty` is an array.
        fn array_of(&self, ty: &str, path: &str) -> Option<(u32, u32)> {
            let mut id = u32::try_from(*self.composites.get(ty)?).expect("id");
            for part in path.split('.') {
                id = self.member(self.strip(id), part)?.1;
            }
            let t = &self.types[self.strip(id) as usize];
            (t.kind == "ARRAY").then(|| (self.size(t.type_id), t.nelems))
        }

        /// Byte offset of `path` in `ty`, or the error variant `KernelBtf` should give.
        fn offset_of(&self, ty: &str, path: &str) -> Result<u32, &'static str> {
            let mut id = u32::try_from(*self.composites.get(ty).ok_or("NoType")?).expect("id");
            let (mut total, mut bitfield) = (0, false);
            for part in path.split('.') {
                let (bits, ty, bf) = self.member(self.strip(id), part).ok_or("NoMember")?;
                (total, id, bitfield) = (total + bits, ty, bf);
            }
            if bitfield {
                Err("Bitfield")
            } else {
                Ok(u32::try_from(total / 8).expect("fits"))
            }
        }
    }

    fn kernel() -> Option<&'static KernelBtf> {
        static BTF: OnceLock<Option<KernelBtf>> = OnceLock::new();
        BTF.get_or_init(|| vmlinux().map(|b| KernelBtf::parse(b).expect("kernel BTF parses")))
            .as_ref()
    }

    fn oracle() -> Option<&'static Oracle> {
        static ORACLE: OnceLock<Option<Oracle>> = OnceLock::new();
        ORACLE
            .get_or_init(|| {
                let oracle = Oracle::load();
                if oracle.is_none() {
                    eprintln!("bpftool unavailable: checking invariants only, not values");
                }
                oracle
            })
            .as_ref()
    }

    /// The offsets podstat's probes need, on this machine's kernel. With bpftool present,
    /// each is compared with bpftool's own decoding of the same BTF (no hard-coded numbers:
    /// they differ between kernel builds). Without it, only invariants are checked: every
    /// lookup succeeds and lands inside its struct.
    #[test]
    fn real_kernel_offsets() {
        let Some(btf) = kernel() else { return };
        let cases = [
            ("task_struct", "cgroups"),
            ("task_struct", "pid"),
            ("task_struct", "__state"),
            ("css_set", "subsys"),
            ("cgroup_subsys_state", "cgroup"),
            ("cgroup", "kn"),
            ("kernfs_node", "id"),
            ("cfs_rq", "tg"),
            ("task_group", "cfs_bandwidth"),
            ("task_group", "cfs_bandwidth.period"),
            ("cfs_bandwidth", "period"),
            ("cfs_bandwidth", "period_timer"),
            ("cfs_bandwidth", "period_timer.node.expires"),
            ("hrtimer", "node.expires"),
        ];
        for (ty, path) in cases {
            let off = btf
                .offset_of(ty, path)
                .unwrap_or_else(|e| panic!("{ty}.{path}: {e}"));
            let size = btf.size_of(ty).unwrap_or_else(|e| panic!("{ty}: {e}"));
            assert!(
                off < size,
                "{ty}.{path} at {off} is outside {ty} ({size} bytes)"
            );
            if let Some(oracle) = oracle() {
                assert_eq!(
                    Ok(off),
                    oracle.offset_of(ty, path),
                    "{ty}.{path} vs bpftool"
                );
            }
        }
        // Nested paths add up.
        let nested = btf.offset_of("task_group", "cfs_bandwidth.period").ok();
        let sum = btf
            .offset_of("task_group", "cfs_bandwidth")
            .ok()
            .zip(btf.offset_of("cfs_bandwidth", "period").ok());
        assert_eq!(nested, sum.map(|(a, b)| a + b));

        let (which, off) = btf
            .offset_of_any("cfs_rq", &["h_nr_running", "h_nr_queued"])
            .expect("one exists");
        assert!(off < btf.size_of("cfs_rq").expect("cfs_rq"));
        if let Some(oracle) = oracle() {
            assert_eq!(Ok(off), oracle.offset_of("cfs_rq", which));
        }

        let cpu = btf
            .enum_value("cgroup_subsys_id", "cpu_cgrp_id")
            .expect("cpu_cgrp_id");
        let count = btf
            .enum_value("cgroup_subsys_id", "CGROUP_SUBSYS_COUNT")
            .expect("count");
        assert!((0..count).contains(&cpu));
        let (elem, len) = btf.array_of("css_set", "subsys").expect("css_set.subsys");
        assert_eq!(
            (elem, i64::from(len)),
            (POINTER_SIZE, count),
            "one css pointer per subsystem"
        );
        if let Some(oracle) = oracle() {
            let e = &oracle.types[oracle.enums["cgroup_subsys_id"]].enumerators;
            assert!(e.contains(&("cpu_cgrp_id".to_owned(), cpu)));
        }

        for func in ["throttle_cfs_rq", "unthrottle_cfs_rq"] {
            assert!(btf.has_func(func), "no BTF FUNC {func}");
        }
        assert!(!btf.has_func("podstat_no_such_function"));
    }

    /// Every named member of every named struct/union, every enumerator and every size in
    /// the kernel, against bpftool's decoding. Skipped (with a message) without bpftool.
    #[test]
    fn real_kernel_matches_bpftool_everywhere() {
        let (Some(btf), Some(oracle)) = (kernel(), oracle()) else {
            return;
        };
        let mut checked = 0;
        for (name, &id) in &oracle.composites {
            let want = oracle.types[id].size;
            assert_eq!(btf.size_of(name).ok(), Some(want), "size_of({name})");
            let mut members = Vec::new();
            oracle.names(u32::try_from(id).expect("id"), &mut members);
            for member in &members {
                let got = btf.offset_of(name, member).map_err(|e| variant(&e));
                assert_eq!(
                    got,
                    oracle.offset_of(name, member),
                    "offset_of({name}, {member})"
                );
                if let Some(want) = oracle.array_of(name, member) {
                    assert_eq!(
                        btf.array_of(name, member).ok(),
                        Some(want),
                        "array_of({name}, {member})"
                    );
                }
                checked += 1;
            }
        }
        for (name, &id) in &oracle.enums {
            for (e, value) in &oracle.types[id].enumerators {
                assert_eq!(
                    btf.enum_value(name, e).ok(),
                    Some(*value),
                    "enum_value({name}, {e})"
                );
                checked += 1;
            }
        }
        for t in oracle.types.iter().filter(|t| t.kind == "FUNC") {
            assert!(btf.has_func(&t.name), "has_func({})", t.name);
            checked += 1;
        }
        assert!(
            checked > 10_000,
            "only {checked} lookups: is the bpftool output parsed?"
        );
    }

    /// The agent parses vmlinux BTF at startup; even a debug build must be quick. About 0.5 s
    /// here when the machine is quiet; the bound leaves room for a shared, loaded machine.
    #[test]
    fn real_kernel_parse_is_fast() {
        let Some(bytes) = vmlinux() else { return };
        let start = Instant::now();
        let btf = KernelBtf::parse(bytes).expect("kernel BTF parses");
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(3), "parsing took {elapsed:?}");
        assert!(btf.has_func("schedule"));
    }
}
