//! A small, dependency-free reader for the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF cannot emit CO-RE relocations, so the agent resolves the kernel struct field
//! offsets its probes need here, at load time, and hands them to the eBPF programs as
//! read-only globals. aya's own `Btf` keeps its type accessors private, hence this module.
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
