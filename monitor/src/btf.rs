//! Just enough of BTF (the kernel's type information, `/sys/kernel/btf/vmlinux`) to find the byte
//! offsets of a few struct members: one pass over the type section, no allocation per type.
//!
//! Why not a general parser: building the whole type graph of a 5 MiB vmlinux BTF (btfparse)
//! took 0.35 s of Vigie's 0.45 s start-up here, and 5 to 10 s under the software emulation of the
//! kernel matrix, for every start. The format is the kernel's stable ABI
//! (Documentation/bpf/btf.rst); the unit tests check every member offset of every struct of the
//! running kernel's BTF against btfparse.

/// `BTF_MAGIC`, as the kernel writes it (native endianness).
const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
const TYPE_LEN: usize = 12;

// Kinds (`BTF_KIND_*`) whose records are followed by more than the 12-byte `btf_type`.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// The highest kind this reader knows how to skip.
const KIND_MAX: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (bad magic)")]
    Magic,
    #[error("truncated or inconsistent BTF: {0}")]
    Truncated(&'static str),
    #[error("unknown BTF kind {kind} at type {id}")]
    UnknownKind { kind: u32, id: u32 },
}

/// Where a struct member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// At this byte offset.
    Bytes(u32),
    /// A bit field (or inside one): no byte offset to read it at.
    BitField,
}

/// A parsed BTF blob: the offset of each type record, by type id.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// `offsets[id - 1]`: where type `id`'s record starts in `types`.
    offsets: Vec<u32>,
}

/// One `btf_type` record.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Where the kind-specific data after the record starts.
    data: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Btf<'a> {
    /// Indexes the type records of `raw` (one pass; the records are not decoded).
    pub fn parse(raw: &'a [u8]) -> Result<Self, BtfError> {
        let magic = raw
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Truncated("header"))?;
        if magic != MAGIC {
            return Err(BtfError::Magic);
        }
        let field = |i: usize| u32_at(raw, 4 + 4 * i).ok_or(BtfError::Truncated("header"));
        let hdr_len = field(0)? as usize;
        let (type_off, type_len) = (field(1)? as usize, field(2)? as usize);
        let (str_off, str_len) = (field(3)? as usize, field(4)? as usize);
        if hdr_len < HEADER_MIN {
            return Err(BtfError::Truncated("header length"));
        }
        let section = |off: usize, len: usize, what| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Truncated(what))?;
            raw.get(start..start.checked_add(len).ok_or(BtfError::Truncated(what))?)
                .ok_or(BtfError::Truncated(what))
        };
        let types = section(type_off, type_len, "type section")?;
        let strings = section(str_off, str_len, "string section")?;
        let mut offsets = Vec::new();
        let mut at = 0usize;
        while at < types.len() {
            let id = u32::try_from(offsets.len() + 1).map_err(|_| BtfError::Truncated("ids"))?;
            let t = Self::record(types, at).ok_or(BtfError::Truncated("type record"))?;
            let extra = match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen,
                k if k <= KIND_MAX && k != 0 => 0,
                kind => return Err(BtfError::UnknownKind { kind, id }),
            };
            offsets.push(u32::try_from(at).map_err(|_| BtfError::Truncated("type section"))?);
            at = t.data + extra;
        }
        if at != types.len() {
            return Err(BtfError::Truncated("last type record"));
        }
        Ok(Self {
            types,
            strings,
            offsets,
        })
    }

    fn record(types: &[u8], at: usize) -> Option<Type> {
        let name_off = u32_at(types, at)?;
        let info = u32_at(types, at + 4)?;
        let size_or_type = u32_at(types, at + 8)?;
        Some(Type {
            name_off,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type,
            data: at + TYPE_LEN,
        })
    }

    fn by_id(&self, id: u32) -> Option<Type> {
        let at = *self
            .offsets
            .get(usize::try_from(id).ok()?.checked_sub(1)?)?;
        Self::record(self.types, at as usize)
    }

    /// The NUL-terminated string at `off` (empty when out of range).
    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The ids of the structs named `names` (the first of each name; forward declarations are
    /// another kind), in one pass.
    pub fn struct_ids<'n>(&self, names: &[&'n str]) -> Vec<(&'n str, u32)> {
        let mut found: Vec<(&str, u32)> = Vec::new();
        for id in 1..=self.offsets.len() as u32 {
            let Some(t) = self.by_id(id) else { continue };
            if t.kind != KIND_STRUCT || t.name_off == 0 {
                continue;
            }
            let name = self.name(t.name_off);
            if let Some(n) = names.iter().find(|n| n.as_bytes() == name)
                && !found.iter().any(|(f, _)| f == n)
            {
                found.push((n, id));
            }
        }
        found
    }

    /// Every named struct as (name, id), for tests.
    pub fn structs(&self) -> impl Iterator<Item = (String, u32)> + '_ {
        (1..=self.offsets.len() as u32).filter_map(|id| {
            let t = self.by_id(id)?;
            (t.kind == KIND_STRUCT && t.name_off != 0).then(|| {
                (
                    String::from_utf8_lossy(self.name(t.name_off)).into_owned(),
                    id,
                )
            })
        })
    }

    /// Where member `name` of struct (or union) `id` is, looking inside anonymous struct and
    /// union members too (as C does). `None` when there is no such member.
    pub fn member(&self, id: u32, name: &str) -> Result<Option<Member>, BtfError> {
        self.find_member(id, name.as_bytes(), 0)
    }

    /// `depth` bounds the recursion into anonymous members on hostile input.
    fn find_member(&self, id: u32, member: &[u8], depth: u32) -> Result<Option<Member>, BtfError> {
        let t = self.by_id(id).ok_or(BtfError::Truncated("type id"))?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 32 {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let m = t.data + 12 * i;
            let (Some(name_off), Some(ty), Some(offset)) = (
                u32_at(self.types, m),
                u32_at(self.types, m + 4),
                u32_at(self.types, m + 8),
            ) else {
                return Err(BtfError::Truncated("member"));
            };
            // With kind_flag, the low 24 bits are the offset and the high 8 the bit field size.
            let (bits, bitfield) = if t.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            if name_off != 0 {
                if self.name(name_off) != member {
                    continue;
                }
                return Ok(Some(if bitfield != 0 || bits % 8 != 0 {
                    Member::BitField
                } else {
                    Member::Bytes(bits / 8)
                }));
            }
            match self.find_member(self.strip(ty), member, depth + 1)? {
                Some(Member::Bytes(inner)) if bits % 8 == 0 => {
                    return Ok(Some(Member::Bytes(bits / 8 + inner)));
                }
                Some(_) => return Ok(Some(Member::BitField)),
                None => {}
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.by_id(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type;
                }
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small BTF blob: `int`, `struct inner { int a; int b; }`, and `struct outer { int x;
    /// union { struct inner in; int y; }; int bits:3 (bit field, kind_flag); int z; }`.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0y\0bits\0z\0".to_vec();
        let s = |name: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{name}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut ty = |name_off: u32, kind: u32, vlen: u32, flag: bool, size: u32| {
            types.extend(name_off.to_ne_bytes());
            types.extend((kind << 24 | vlen | if flag { 1 << 31 } else { 0 }).to_ne_bytes());
            types.extend(size.to_ne_bytes());
        };
        let _ = &mut strings;
        // 1: int (+4 bytes of encoding)
        ty(s("int", &strings), KIND_INT, 0, false, 4);
        let mut raw_types = std::mem::take(&mut types);
        raw_types.extend(0x20u32.to_ne_bytes());
        let member = |v: &mut Vec<u8>, name: u32, ty: u32, off: u32| {
            v.extend(name.to_ne_bytes());
            v.extend(ty.to_ne_bytes());
            v.extend(off.to_ne_bytes());
        };
        // 2: struct inner { int a @0; int b @32 }
        let mut t = Vec::new();
        t.extend(s("inner", &strings).to_ne_bytes());
        t.extend((KIND_STRUCT << 24 | 2).to_ne_bytes());
        t.extend(8u32.to_ne_bytes());
        member(&mut t, s("a", &strings), 1, 0);
        member(&mut t, s("b", &strings), 1, 32);
        raw_types.extend(t);
        // 3: anonymous union { struct inner in @0; int y @0 }
        let mut t = Vec::new();
        t.extend(0u32.to_ne_bytes());
        t.extend((KIND_UNION << 24 | 2).to_ne_bytes());
        t.extend(8u32.to_ne_bytes());
        member(&mut t, s("in", &strings), 2, 0);
        member(&mut t, s("y", &strings), 1, 0);
        raw_types.extend(t);
        // 4: struct outer (kind_flag) { int x @0; union @64; int bits:3 @128; int z @160 }
        let mut t = Vec::new();
        t.extend(s("outer", &strings).to_ne_bytes());
        t.extend((1u32 << 31 | KIND_STRUCT << 24 | 4).to_ne_bytes());
        t.extend(24u32.to_ne_bytes());
        member(&mut t, s("x", &strings), 1, 0);
        member(&mut t, 0, 3, 64);
        member(&mut t, s("bits", &strings), 1, 3 << 24 | 128);
        member(&mut t, s("z", &strings), 1, 160);
        raw_types.extend(t);
        let mut out = Vec::new();
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1u8, 0]);
        out.extend(24u32.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend((raw_types.len() as u32).to_ne_bytes());
        out.extend((raw_types.len() as u32).to_ne_bytes());
        out.extend((strings.len() as u32).to_ne_bytes());
        out.extend(raw_types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_directly_and_inside_anonymous_unions() {
        let raw = blob();
        let btf = Btf::parse(&raw).unwrap();
        let ids = btf.struct_ids(&["outer", "inner", "missing"]);
        // A union is not a struct; a missing name is left out.
        assert_eq!(ids, [("inner", 2), ("outer", 4)]);
        assert_eq!(btf.member(2, "b"), Ok(Some(Member::Bytes(4))));
        assert_eq!(btf.member(4, "x"), Ok(Some(Member::Bytes(0))));
        assert_eq!(btf.member(4, "y"), Ok(Some(Member::Bytes(8))));
        assert_eq!(btf.member(4, "z"), Ok(Some(Member::Bytes(20))));
        assert_eq!(btf.member(4, "bits"), Ok(Some(Member::BitField)));
        assert_eq!(btf.member(4, "nope"), Ok(None));
        assert_eq!(btf.member(99, "x"), Err(BtfError::Truncated("type id")));
    }

    #[test]
    fn refuses_broken_blobs_without_panicking() {
        let raw = blob();
        assert_eq!(Btf::parse(&[]).err(), Some(BtfError::Truncated("header")));
        assert_eq!(Btf::parse(&[0u8; 64]).err(), Some(BtfError::Magic));
        for cut in 0..raw.len() {
            // Any prefix is refused or parsed; never a panic.
            let _ = Btf::parse(&raw[..cut]);
        }
        let mut bad_kind = raw.clone();
        bad_kind[24 + 7] = 30; // kind 30 in the first record's info
        assert!(matches!(
            Btf::parse(&bad_kind),
            Err(BtfError::UnknownKind { kind: 30, id: 1 })
        ));
    }

    /// Every member of every struct of this machine's kernel, against btfparse.
    #[test]
    fn agrees_with_btfparse_on_the_running_kernel() {
        use btfparse::{Offset, Readable, TypeInformation, TypeVariant};
        let Ok(raw) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("no /sys/kernel/btf/vmlinux here: nothing to compare");
            return;
        };
        struct Bytes<'a>(&'a [u8]);
        impl Readable for Bytes<'_> {
            fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
                let start = offset as usize;
                let src = self.0.get(start..start + buffer.len()).ok_or_else(|| {
                    btfparse::Error::new(btfparse::ErrorKind::IOError, "past the end")
                })?;
                buffer.copy_from_slice(src);
                Ok(())
            }
        }
        let ours = Btf::parse(&raw).unwrap();
        let theirs = TypeInformation::new(&Bytes(&raw)).unwrap();
        let mut first = std::collections::HashMap::new();
        for (name, id) in ours.structs() {
            first.entry(name).or_insert(id);
        }
        let mut checked = 0;
        for (id, t) in theirs.get() {
            let TypeVariant::Struct(s) = t else { continue };
            let Some(name) = s.name() else { continue };
            assert!(first.contains_key(name.as_str()), "{name}");
            for m in s.member_list() {
                let Some(member) = m.name() else { continue };
                let want = match theirs.offset_of(*id, &member) {
                    Ok((_, Offset::ByteOffset(off))) => Some(Member::Bytes(off)),
                    Ok((_, Offset::BitOffsetAndSize(..))) => Some(Member::BitField),
                    Err(_) => None,
                };
                assert_eq!(ours.member(*id, &member), Ok(want), "{name}.{member}");
                checked += 1;
            }
        }
        assert!(checked > 10_000, "only {checked} members compared");
    }
}
