//! A small parser for raw BTF blobs (the kernel's `.BTF` section, `/sys/kernel/btf/vmlinux`).
//!
//! Only what introspection needs: named struct/union lookup, sizes, and byte offsets of
//! member paths such as `"thread.fsbase"` or `"d_name.len"` (found through anonymous
//! structs and unions), array lengths and pointees. The blob is untrusted: every read is
//! bounds-checked and every chain (typedef/const/array/anonymous nesting) has a depth cap, so
//! a malformed blob gives an error, never a panic or a loop.

use std::collections::HashMap;

/// BTF magic number, little-endian.
pub const BTF_MAGIC: u16 = 0xeb9f;

/// Most types a blob may declare (vmlinux has ~100k).
const MAX_TYPES: usize = 1 << 22;
/// Deepest typedef/modifier/array/anonymous-member chain followed.
const MAX_DEPTH: usize = 32;
/// Most structs/unions visited while searching anonymous members for one path element.
const MAX_VISITS: usize = 4096;

/// Why a blob or a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    /// Blob shorter than its header or sections claim.
    #[error("BTF truncated: {0}")]
    Truncated(&'static str),
    /// Wrong magic (big-endian blobs are not supported).
    #[error("bad BTF magic {0:#06x}")]
    BadMagic(u16),
    /// Header fields inconsistent.
    #[error("bad BTF header: {0}")]
    BadHeader(&'static str),
    /// A type record has an unknown kind.
    #[error("type {id}: unknown kind {kind}")]
    UnknownKind {
        /// Type id being decoded.
        id: u32,
        /// Raw kind.
        kind: u32,
    },
    /// Too many types.
    #[error("too many BTF types")]
    TooManyTypes,
    /// No struct or union with that name.
    #[error("no struct or union named {0:?}")]
    NoSuchStruct(String),
    /// The member path does not exist.
    #[error("{ty}: no member {path:?}")]
    NoSuchMember {
        /// Struct name (or type id) searched.
        ty: String,
        /// Path asked for.
        path: String,
    },
    /// A type id outside the table.
    #[error("type id {0} out of range")]
    BadTypeId(u32),
    /// The type has no size (void, function, forward declaration).
    #[error("type {0} has no size")]
    NoSize(u32),
    /// A chain of types was longer than the cap or cyclic.
    #[error("type {0}: reference chain too deep or cyclic")]
    TooDeep(u32),
    /// An array index in a path was past the array's end or not a number.
    #[error("bad array index in {0:?}")]
    BadIndex(String),
}

/// BTF type kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(k: u32) -> Option<Kind> {
        Some(match k {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// Kinds that only qualify or rename another type.
    fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct RawMember {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct.
    bit_offset: u32,
    /// Bitfield width, 0 when not a bitfield.
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: Kind,
    /// `size` for sized kinds, referenced `type` for others.
    size_or_type: u32,
    /// Int: encoding word. Array: element type.
    extra: u32,
    /// Array: element count.
    nelems: u32,
    /// Struct/union members: range into `Btf::members`.
    members: std::ops::Range<usize>,
}

impl Type {
    /// Type id 0.
    fn void() -> Type {
        Type {
            name_off: 0,
            kind: Kind::Void,
            size_or_type: 0,
            extra: 0,
            nelems: 0,
            members: 0..0,
        }
    }
}

/// A member found by [`Btf::member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outer struct (bit offset / 8 for bitfields).
    pub offset_bytes: u64,
    /// Size in bytes of the member's type (for bitfields, of the storage type).
    pub size: u64,
    /// The member's type id (unresolved: may be a typedef).
    pub type_id: u32,
    /// Bit position inside the byte at `offset_bytes` (bitfields only, else 0).
    pub bit_shift: u32,
    /// Bitfield width in bits, 0 when the member is not a bitfield.
    pub bit_size: u32,
}

/// A parsed BTF blob.
#[derive(Debug, Clone)]
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
    members: Vec<RawMember>,
    strings: Vec<u8>,
    /// Struct/union name to the first complete definition.
    by_name: HashMap<String, u32>,
    /// Every enumerator: name offset and value (C enumerator names are global).
    enumerators: Vec<(u32, i64)>,
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn to_usize(v: u32) -> usize {
    // u32 always fits usize on the 64-bit hosts this crate targets.
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl Btf {
    /// Types of a kernel without BTF: none (only `void`). Enough for the address layout
    /// ([`crate::kernel::Kernel`]), which falls back to defaults where it would use types.
    pub fn empty() -> Btf {
        Btf {
            types: vec![Type::void()],
            members: Vec::new(),
            strings: vec![0],
            by_name: HashMap::new(),
            enumerators: Vec::new(),
        }
    }

    /// Parses a raw little-endian BTF blob.
    pub fn parse(blob: &[u8]) -> Result<Btf, BtfError> {
        let magic = rd_u16(blob, 0).ok_or(BtfError::Truncated("header"))?;
        if magic != BTF_MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = to_usize(rd_u32(blob, 4).ok_or(BtfError::Truncated("header"))?);
        let field = |o| {
            rd_u32(blob, o)
                .map(to_usize)
                .ok_or(BtfError::Truncated("header"))
        };
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        if hdr_len < 24 {
            return Err(BtfError::BadHeader("hdr_len < 24"));
        }
        let section = |off: usize, len: usize, what| {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::BadHeader("offset overflow"))?;
            let end = start
                .checked_add(len)
                .ok_or(BtfError::BadHeader("length overflow"))?;
            blob.get(start..end).ok_or(BtfError::Truncated(what))
        };
        let tsec = section(type_off, type_len, "type section")?;
        let strings = section(str_off, str_len, "string section")?.to_vec();

        let mut types = vec![Type::void()];
        let mut members = Vec::new();
        let mut enumerators = Vec::new();
        let mut pos = 0usize;
        while pos < tsec.len() {
            if types.len() >= MAX_TYPES {
                return Err(BtfError::TooManyTypes);
            }
            let id = u32::try_from(types.len()).map_err(|_| BtfError::TooManyTypes)?;
            let word = |o: usize| rd_u32(tsec, pos + o).ok_or(BtfError::Truncated("type record"));
            let name_off = word(0)?;
            let info = word(4)?;
            let size_or_type = word(8)?;
            let vlen = to_usize(info & 0xffff);
            let raw_kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let kind =
                Kind::from_raw(raw_kind).ok_or(BtfError::UnknownKind { id, kind: raw_kind })?;
            pos += 12;
            let mut ty = Type {
                name_off,
                kind,
                size_or_type,
                extra: 0,
                nelems: 0,
                members: 0..0,
            };
            let trailing = match kind {
                Kind::Int => {
                    ty.extra = rd_u32(tsec, pos).ok_or(BtfError::Truncated("int"))?;
                    4
                }
                Kind::Array => {
                    ty.extra = rd_u32(tsec, pos).ok_or(BtfError::Truncated("array"))?;
                    ty.nelems = rd_u32(tsec, pos + 8).ok_or(BtfError::Truncated("array"))?;
                    12
                }
                Kind::Struct | Kind::Union => {
                    let start = members.len();
                    for i in 0..vlen {
                        let o = pos + i * 12;
                        let m = |k| rd_u32(tsec, o + k).ok_or(BtfError::Truncated("member"));
                        let (m_name, m_type, m_off) = (m(0)?, m(4)?, m(8)?);
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (m_off & 0x00ff_ffff, m_off >> 24)
                        } else {
                            (m_off, 0)
                        };
                        members.push(RawMember {
                            name_off: m_name,
                            type_id: m_type,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    ty.members = start..members.len();
                    vlen * 12
                }
                Kind::Enum => {
                    for i in 0..vlen {
                        let o = pos + i * 8;
                        let (Some(n), Some(v)) = (rd_u32(tsec, o), rd_u32(tsec, o + 4)) else {
                            return Err(BtfError::Truncated("enum"));
                        };
                        // Signed or not (kind_flag), every kernel enumerator this crate
                        // asks for is small and positive.
                        enumerators.push((n, i64::from(v)));
                    }
                    vlen * 8
                }
                Kind::Enum64 => {
                    for i in 0..vlen {
                        let o = pos + i * 12;
                        let (Some(n), Some(lo), Some(hi)) =
                            (rd_u32(tsec, o), rd_u32(tsec, o + 4), rd_u32(tsec, o + 8))
                        else {
                            return Err(BtfError::Truncated("enum64"));
                        };
                        let v = (u64::from(hi) << 32) | u64::from(lo);
                        enumerators.push((n, i64::from_ne_bytes(v.to_ne_bytes())));
                    }
                    vlen * 12
                }
                Kind::FuncProto => vlen * 8,
                Kind::Var => 4,
                Kind::Datasec => vlen * 12,
                Kind::DeclTag => 4,
                Kind::Void
                | Kind::Ptr
                | Kind::Fwd
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::Float
                | Kind::TypeTag => 0,
            };
            pos = pos
                .checked_add(trailing)
                .filter(|&p| p <= tsec.len())
                .ok_or(BtfError::Truncated("type record"))?;
            types.push(ty);
        }

        let mut btf = Btf {
            types,
            members,
            strings,
            by_name: HashMap::new(),
            enumerators,
        };
        let mut by_name = HashMap::new();
        for (idx, t) in btf.types.iter().enumerate() {
            if !matches!(t.kind, Kind::Struct | Kind::Union) || t.name_off == 0 {
                continue;
            }
            let Some(name) = btf.str_at(t.name_off) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let Ok(id) = u32::try_from(idx) else { break };
            by_name.entry(name.to_owned()).or_insert(id);
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// The string at `off` in the string section (NUL-terminated), if valid UTF-8.
    fn str_at(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(to_usize(off)..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(to_usize(id)).ok_or(BtfError::BadTypeId(id))
    }

    /// Number of type ids, including `void` (id 0).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// Kind of a type.
    pub fn kind(&self, id: u32) -> Result<Kind, BtfError> {
        Ok(self.ty(id)?.kind)
    }

    /// Name of a type (`""` for anonymous types).
    pub fn name(&self, id: u32) -> Result<&str, BtfError> {
        Ok(self.str_at(self.ty(id)?.name_off).unwrap_or(""))
    }

    /// The value of the enumerator `name` (`"PG_dirty"`), of whichever enum has it.
    pub fn enumerator(&self, name: &str) -> Option<i64> {
        self.enumerators
            .iter()
            .find(|(n, _)| self.str_at(*n) == Some(name))
            .map(|&(_, v)| v)
    }

    /// Id of the struct or union named `name` (`"task_struct"`, `"thread_union"`).
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Follows typedef/const/volatile/restrict/type-tag links to the underlying type.
    pub fn resolve(&self, id: u32) -> Result<u32, BtfError> {
        let mut cur = id;
        for _ in 0..MAX_DEPTH {
            let t = self.ty(cur)?;
            if !t.kind.is_modifier() {
                return Ok(cur);
            }
            cur = t.size_or_type;
        }
        Err(BtfError::TooDeep(id))
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, id: u32) -> Result<u64, BtfError> {
        self.size_of_depth(id, 0)
    }

    fn size_of_depth(&self, id: u32, depth: usize) -> Result<u64, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep(id));
        }
        let rid = self.resolve(id)?;
        let t = self.ty(rid)?;
        match t.kind {
            Kind::Int
            | Kind::Struct
            | Kind::Union
            | Kind::Enum
            | Kind::Enum64
            | Kind::Float
            | Kind::Datasec => Ok(u64::from(t.size_or_type)),
            Kind::Ptr => Ok(8),
            Kind::Array => {
                let elem = self.size_of_depth(t.extra, depth + 1)?;
                elem.checked_mul(u64::from(t.nelems))
                    .ok_or(BtfError::NoSize(rid))
            }
            _ => Err(BtfError::NoSize(rid)),
        }
    }

    /// Element count of an array type (after typedefs), or `None` if it is not an array.
    pub fn array_len(&self, id: u32) -> Option<u64> {
        let t = self.ty(self.resolve(id).ok()?).ok()?;
        (t.kind == Kind::Array).then_some(u64::from(t.nelems))
    }

    /// Element type of an array type (after typedefs).
    pub fn array_elem(&self, id: u32) -> Option<u32> {
        let t = self.ty(self.resolve(id).ok()?).ok()?;
        (t.kind == Kind::Array).then_some(t.extra)
    }

    /// Pointee of a pointer type (after typedefs).
    pub fn pointee(&self, id: u32) -> Option<u32> {
        let t = self.ty(self.resolve(id).ok()?).ok()?;
        (t.kind == Kind::Ptr).then_some(t.size_or_type)
    }

    /// Looks up `path` (`"a.b.c"`, `"pivot[3]"`) in the struct or union named `struct_name`.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member, BtfError> {
        let id = self
            .struct_id(struct_name)
            .ok_or_else(|| BtfError::NoSuchStruct(struct_name.to_owned()))?;
        self.member_of(id, path).map_err(|e| match e {
            BtfError::NoSuchMember { path, .. } => BtfError::NoSuchMember {
                ty: struct_name.to_owned(),
                path,
            },
            other => other,
        })
    }

    /// Like [`Btf::member`], starting from a type id.
    pub fn member_of(&self, type_id: u32, path: &str) -> Result<Member, BtfError> {
        let missing = || BtfError::NoSuchMember {
            ty: format!("type {type_id}"),
            path: path.to_owned(),
        };
        let mut cur = type_id;
        let mut bit_offset: u64 = 0;
        let mut bit_size: u32 = 0;
        if path.is_empty() {
            return Err(missing());
        }
        for part in path.split('.') {
            let (name, indices) = split_indices(part).ok_or_else(missing)?;
            let mut budget = MAX_VISITS;
            let (m_type, m_bits, m_bitsize) = self
                .find_in(cur, name, 0, &mut budget)?
                .ok_or_else(missing)?;
            bit_offset = bit_offset
                .checked_add(m_bits)
                .ok_or(BtfError::TooDeep(type_id))?;
            bit_size = m_bitsize;
            cur = m_type;
            for idx in indices {
                let idx = idx.ok_or_else(|| BtfError::BadIndex(path.to_owned()))?;
                let len = self
                    .array_len(cur)
                    .ok_or_else(|| BtfError::BadIndex(path.to_owned()))?;
                // Flexible arrays (length 0) may be indexed freely.
                if len != 0 && idx >= len {
                    return Err(BtfError::BadIndex(path.to_owned()));
                }
                let elem = self
                    .array_elem(cur)
                    .ok_or_else(|| BtfError::BadIndex(path.to_owned()))?;
                let step = self
                    .size_of(elem)?
                    .checked_mul(idx)
                    .and_then(|b| b.checked_mul(8))
                    .ok_or_else(|| BtfError::BadIndex(path.to_owned()))?;
                bit_offset = bit_offset
                    .checked_add(step)
                    .ok_or_else(|| BtfError::BadIndex(path.to_owned()))?;
                cur = elem;
                bit_size = 0;
            }
        }
        let size = self.size_of(cur)?;
        Ok(Member {
            offset_bytes: bit_offset / 8,
            size,
            type_id: cur,
            bit_shift: if bit_size != 0 {
                u32::try_from(bit_offset % 8).unwrap_or(0)
            } else {
                0
            },
            bit_size,
        })
    }

    /// Finds member `name` directly in `id` (a struct/union, after typedefs) or inside its
    /// anonymous struct/union members. Returns (type, bit offset, bitfield size).
    fn find_in(
        &self,
        id: u32,
        name: &str,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Option<(u32, u64, u32)>, BtfError> {
        if depth > MAX_DEPTH || *budget == 0 {
            return Err(BtfError::TooDeep(id));
        }
        *budget -= 1;
        let rid = self.resolve(id)?;
        let t = self.ty(rid)?;
        if !matches!(t.kind, Kind::Struct | Kind::Union) {
            return Ok(None);
        }
        let ms = self
            .members
            .get(t.members.clone())
            .ok_or(BtfError::BadTypeId(rid))?;
        for m in ms {
            let m_name = self.str_at(m.name_off).unwrap_or("");
            if m_name == name {
                let (bits, size) = self.int_bitfield(m)?;
                return Ok(Some((m.type_id, u64::from(m.bit_offset) + bits, size)));
            }
        }
        for m in ms {
            let m_name = self.str_at(m.name_off).unwrap_or("");
            if !m_name.is_empty() {
                continue;
            }
            if let Some((ty, bits, size)) = self.find_in(m.type_id, name, depth + 1, budget)? {
                return Ok(Some((ty, u64::from(m.bit_offset) + bits, size)));
            }
        }
        Ok(None)
    }

    /// Old-style bitfields (struct without kind_flag) keep the bit position in the INT
    /// type's encoding. Returns (extra bit offset, bitfield size).
    fn int_bitfield(&self, m: &RawMember) -> Result<(u64, u32), BtfError> {
        if m.bitfield_size != 0 {
            return Ok((0, m.bitfield_size));
        }
        let rid = self.resolve(m.type_id)?;
        let t = self.ty(rid)?;
        if t.kind == Kind::Int {
            let nr_bits = t.extra & 0xff;
            let off = (t.extra >> 16) & 0xff;
            if u64::from(nr_bits) != u64::from(t.size_or_type) * 8 || off != 0 {
                return Ok((u64::from(off), nr_bits));
            }
        }
        Ok((0, 0))
    }
}

/// Splits `"slot[3][1]"` into `("slot", [Some(3), Some(1)])`. `None` for a bad index.
fn split_indices(part: &str) -> Option<(&str, Vec<Option<u64>>)> {
    let Some(open) = part.find('[') else {
        return Some((part, Vec::new()));
    };
    let name = &part[..open];
    let mut rest = &part[open..];
    let mut idx = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let num = &inner[..close];
        idx.push(if let Some(hex) = num.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).ok()
        } else {
            num.parse().ok()
        });
        rest = &inner[close + 1..];
    }
    Some((name, idx))
}

/// Builds BTF blobs for tests (here and in other modules).
#[cfg(test)]
pub(crate) mod build {
    /// Incrementally assembled blob.
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        pub fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = u32::try_from(self.strings.len()).expect("small");
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn w(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        fn head(&mut self, name: &str, kind: u32, kflag: bool, vlen: u32, st: u32) -> u32 {
            let n = self.s(name);
            self.w(n);
            self.w((kind << 24) | (u32::from(kflag) << 31) | vlen);
            self.w(st);
            let id = self.next_id;
            self.next_id += 1;
            id
        }
        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, 1, false, 0, size);
            self.w(size * 8);
            id
        }
        pub fn int_bits(&mut self, name: &str, size: u32, off: u32, bits: u32) -> u32 {
            let id = self.head(name, 1, false, 0, size);
            self.w((off << 16) | bits);
            id
        }
        pub fn ptr(&mut self, to: u32) -> u32 {
            self.head("", 2, false, 0, to)
        }
        pub fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", 3, false, 0, 0);
            self.w(elem);
            self.w(index);
            self.w(n);
            id
        }
        pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, 8, false, 0, to)
        }
        pub fn modifier(&mut self, kind: u32, to: u32) -> u32 {
            self.head("", kind, false, 0, to)
        }
        /// members: (name, type, bit offset, bitfield size); kind 4 struct, 5 union.
        pub fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kflag = members.iter().any(|m| m.3 != 0);
            let vlen = u32::try_from(members.len()).expect("small");
            let id = self.head(name, kind, kflag, vlen, size);
            for &(n, t, off, bits) in members {
                let n = self.s(n);
                self.w(n);
                self.w(t);
                self.w(if kflag { (bits << 24) | off } else { off });
            }
            id
        }
        pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let m: Vec<_> = members.iter().map(|&(n, t, o)| (n, t, o, 0)).collect();
            self.composite(4, name, size, &m)
        }
        pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let vlen = u32::try_from(values.len()).expect("small");
            let id = self.head(name, 6, false, vlen, 4);
            for &(n, v) in values {
                let n = self.s(n);
                self.w(n);
                self.w(u32::from_ne_bytes(v.to_ne_bytes()));
            }
            id
        }
        pub fn func_proto(&mut self, ret: u32, params: &[u32]) -> u32 {
            let vlen = u32::try_from(params.len()).expect("small");
            let id = self.head("", 13, false, vlen, ret);
            for &p in params {
                self.w(0);
                self.w(p);
            }
            id
        }
        pub fn raw_type_bytes(&mut self, bytes: &[u8]) {
            self.types.extend_from_slice(bytes);
        }
        pub fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&super::BTF_MAGIC.to_le_bytes());
            out.push(1);
            out.push(0);
            let tl = u32::try_from(self.types.len()).expect("small");
            let sl = u32::try_from(self.strings.len()).expect("small");
            for v in [24u32, 0, tl, tl, sl] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::Builder;
    use super::*;

    /// A tiny kernel-like type graph.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8); // 1
        let uint = b.int("unsigned int", 4); // 2
        let u64t = b.typedef("u64", ulong); // 3
        let cu64 = b.modifier(10, u64t); // 4 const u64
        let vcu64 = b.modifier(9, cu64); // 5 volatile const u64
        let thread = b.strukt(
            "thread_struct",
            16,
            &[("sp", ulong, 0), ("fsbase", vcu64, 64)],
        ); // 6
           // anonymous struct { u32 len; u32 hash; } inside anonymous union with u64 hash_len
        let anon_s = b.strukt("", 8, &[("hash", uint, 0), ("len", uint, 32)]); // 7
        let anon_u = b.composite(5, "", 8, &[("", anon_s, 0, 0), ("hash_len", u64t, 0, 0)]); // 8
        let uchar = b.int("unsigned char", 1); // 9
        let ptr_uchar = b.ptr(uchar); // 10
        let qstr = b.strukt("qstr", 16, &[("", anon_u, 0), ("name", ptr_uchar, 64)]); // 11
        let arr = b.array(uchar, uint, 16); // 12
        let arr2 = b.array(arr, uint, 3); // 13
        let flags = b.composite(
            4,
            "bits",
            4,
            &[("a", uint, 0, 3), ("b", uint, 3, 5), ("c", uint, 13, 1)],
        ); // 14
        b.strukt(
            "task_struct",
            200,
            &[
                ("comm", arr, 0),
                ("thread", thread, 128),
                ("name", qstr, 256),
                ("grid", arr2, 384),
                ("bits", flags, 768),
            ],
        ); // 15
        b.composite(5, "thread_union", 16384, &[("stack", arr, 0, 0)]); // 16
        b.finish()
    }

    #[test]
    fn parses_and_finds_nested_members() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.type_count(), 17);
        let m = btf.member("task_struct", "thread.fsbase").expect("fsbase");
        assert_eq!((m.offset_bytes, m.size), (16 + 8, 8));
        let m = btf.member("task_struct", "name.len").expect("len");
        assert_eq!((m.offset_bytes, m.size), (32 + 4, 4));
        let m = btf
            .member("task_struct", "name.hash_len")
            .expect("hash_len");
        assert_eq!((m.offset_bytes, m.size), (32, 8));
        let m = btf.member("task_struct", "name.name").expect("name");
        assert_eq!((m.offset_bytes, m.size), (40, 8));
        assert_eq!(
            btf.pointee(m.type_id).map(|t| btf.name(t).ok()),
            Some(Some("unsigned char"))
        );
        let m = btf.member("task_struct", "comm").expect("comm");
        assert_eq!((m.offset_bytes, m.size), (0, 16));
        assert_eq!(btf.array_len(m.type_id), Some(16));
        let m = btf.member("task_struct", "grid[2][5]").expect("grid");
        assert_eq!((m.offset_bytes, m.size), (48 + 32 + 5, 1));
        assert_eq!(
            btf.size_of(btf.struct_id("thread_union").expect("tu")).ok(),
            Some(16384)
        );
    }

    #[test]
    fn decodes_bitfields() {
        let btf = Btf::parse(&sample()).expect("parse");
        let b = btf.member("task_struct", "bits.b").expect("b");
        assert_eq!((b.offset_bytes, b.bit_shift, b.bit_size), (96, 3, 5));
        let c = btf.member("task_struct", "bits.c").expect("c");
        assert_eq!((c.offset_bytes, c.bit_shift, c.bit_size), (97, 5, 1));
        let mut bld = Builder::new();
        let uint = bld.int("unsigned int", 4);
        let old = bld.int_bits("unsigned int", 4, 4, 2);
        bld.strukt("old", 4, &[("x", uint, 0), ("y", old, 0)]);
        let btf = Btf::parse(&bld.finish()).expect("parse");
        let y = btf.member("old", "y").expect("y");
        assert_eq!((y.offset_bytes, y.bit_shift, y.bit_size), (0, 4, 2));
        let x = btf.member("old", "x").expect("x");
        assert_eq!(x.bit_size, 0);
    }

    #[test]
    fn reports_missing_things() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert!(matches!(
            btf.member("nope", "x"),
            Err(BtfError::NoSuchStruct(_))
        ));
        assert!(matches!(
            btf.member("task_struct", "thread.nope"),
            Err(BtfError::NoSuchMember { .. })
        ));
        assert!(matches!(
            btf.member("task_struct", "comm[16]"),
            Err(BtfError::BadIndex(_))
        ));
        assert!(matches!(
            btf.member("task_struct", "comm[x]"),
            Err(BtfError::BadIndex(_))
        ));
        assert!(btf.member("task_struct", "").is_err());
        assert!(btf.member("task_struct", "comm.x").is_err());
    }

    #[test]
    fn handles_other_kinds() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let e = b.enumeration("maple_type", &[("maple_dense", 0), ("maple_leaf_64", 1)]);
        let fp = b.func_proto(int, &[int, e]);
        let p = b.ptr(fp);
        b.strukt("ops", 16, &[("f", p, 0), ("t", e, 64)]);
        b.enumeration("pageflags", &[("PG_locked", 0), ("PG_dirty", 3)]);
        let btf = Btf::parse(&b.finish()).expect("parse");
        assert_eq!(btf.enumerator("PG_dirty"), Some(3));
        assert_eq!(btf.enumerator("maple_leaf_64"), Some(1));
        assert_eq!(btf.enumerator("PG_nope"), None);
        let m = btf.member("ops", "t").expect("t");
        assert_eq!((m.offset_bytes, m.size), (8, 4));
        assert_eq!(btf.kind(fp), Ok(Kind::FuncProto));
        assert!(matches!(btf.size_of(fp), Err(BtfError::NoSize(_))));
        assert!(matches!(btf.size_of(0), Err(BtfError::NoSize(0))));
        assert!(matches!(btf.size_of(999), Err(BtfError::BadTypeId(999))));
    }

    #[test]
    fn rejects_bad_blobs_without_panicking() {
        let good = sample();
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Truncated(_))));
        assert!(matches!(
            Btf::parse(&[0x9f, 0xeb, 1, 0]),
            Err(BtfError::Truncated(_))
        ));
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(matches!(Btf::parse(&bad), Err(BtfError::BadMagic(_))));
        // Huge section lengths.
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
        // hdr_len too small.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
        // Every truncation and every single-byte corruption: must not panic.
        for len in 0..good.len() {
            let _ = Btf::parse(&good[..len]);
        }
        for i in 0..good.len() {
            for v in [0u8, 0xff, 0x1f, 0x80] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(btf) = Btf::parse(&b) {
                    let _ = btf.member("task_struct", "name.len");
                    let _ = btf.member("task_struct", "grid[2][5]");
                    for id in 0..40 {
                        let _ = btf.size_of(id);
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut b = Builder::new();
        b.raw_type_bytes(&[0, 0, 0, 0, 0, 0, 0, 30, 0, 0, 0, 0]);
        assert!(matches!(
            Btf::parse(&b.finish()),
            Err(BtfError::UnknownKind { id: 1, kind: 30 })
        ));
    }

    #[test]
    fn cyclic_chains_terminate() {
        let mut b = Builder::new();
        // typedef 1 -> 2, typedef 2 -> 1
        b.typedef("a", 2);
        b.typedef("b", 1);
        // array of itself
        b.array(3, 0, 2);
        // struct whose anonymous member is itself
        b.composite(4, "selfish", 8, &[("", 4, 0, 0)]);
        // two anonymous members that are the struct itself: exponential without a budget
        b.composite(4, "twice", 8, &[("", 5, 0, 0), ("", 5, 0, 0)]);
        let btf = Btf::parse(&b.finish()).expect("parse");
        assert!(matches!(btf.resolve(1), Err(BtfError::TooDeep(1))));
        assert!(matches!(btf.size_of(3), Err(BtfError::TooDeep(_))));
        assert!(btf.member("selfish", "x").is_err());
        assert!(btf.member("twice", "x").is_err());
    }
}
