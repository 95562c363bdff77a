//! Go targets: finding, in a Go binary's own tables, where its threads keep the goroutine they
//! run, so that the probes can stamp every event with the goroutine id (see
//! `monitor_common::go`). Go moves goroutines between OS threads at every blocking point: for a
//! Go process the goroutine, not the thread, is what serves one request.
//!
//! What is read, all from the ELF file:
//! - the Go version, from `.go.buildinfo` (the format of Go 1.18 and later; for the report);
//! - the offset of the current `*g` from the thread pointer: Go's own TLS slot, `-8(FS)` on
//!   linux/amd64, unless the binary has a TLS segment (cgo, external linking), where the slot
//!   is the `runtime.tlsg` symbol in the executable's static TLS block;
//! - the offset of `goid` in `runtime.g`, from the binary's DWARF (kept unless built with
//!   `-ldflags=-w` or stripped), else from [`KNOWN_GOID_OFFSETS`] for a version checked there.
//!
//! A binary where any of these is missing is reported and left to content evidence: a guessed
//! offset would read some other field and bind reads to the wrong request.
use std::borrow::Cow;

use object::{
    Endianness, Object, ObjectSection, ObjectSymbol, SectionKind,
    elf::PT_TLS,
    read::{
        CompressionFormat,
        elf::{ElfFile64, ProgramHeader as _},
    },
};

pub use monitor_common::go::GoLayout;

/// `goid` offsets in `runtime.g` of Go releases checked against their DWARF (linux/amd64), for
/// binaries built without DWARF: (version prefix, offset).
pub const KNOWN_GOID_OFFSETS: &[(&str, u64)] = &[("go1.19.", 152)];

/// What Vigie can know about a target's executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoBinary {
    /// Not a Go program (no `.go.buildinfo`).
    NotGo,
    /// A Go program whose goroutines the probes can follow.
    Tracked {
        version: String,
        layout: GoLayout,
        /// Where the `goid` offset came from (`dwarf` or `known version`).
        source: &'static str,
    },
    /// A Go program whose goroutines cannot be followed, and why: its reads need evidence that
    /// names the request (flow, sendfile, content).
    Unsupported {
        version: Option<String>,
        reason: String,
    },
}

impl std::fmt::Display for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotGo => write!(f, "not a Go program"),
            Self::Tracked {
                version,
                layout,
                source,
            } => write!(
                f,
                "{version}: goroutines followed (current g at fs{:+}, goid at +{} from {source})",
                layout.g_tls, layout.goid
            ),
            Self::Unsupported { version, reason } => write!(
                f,
                "{}: goroutines not followed ({reason}); its reads need flow or content evidence",
                version.as_deref().unwrap_or("Go, version unknown")
            ),
        }
    }
}

/// Which targets are Go programs whose goroutines the probes follow. Each executable is read
/// once (by device and inode: every process of one binary shares the answer) and reported once
/// in the log.
#[derive(Debug, Default)]
pub struct GoTargets {
    /// `correlation.goroutines`, and the kernel gave `task_struct.thread.fsbase`.
    enabled: bool,
    by_inode: std::collections::HashMap<(u64, u64), GoBinary>,
}

impl GoTargets {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            by_inode: std::collections::HashMap::new(),
        }
    }

    /// For target `pid` running a Go binary: its version, and the layout when its goroutines
    /// can be followed. `None`: not Go (or its executable is unreadable, which is logged).
    pub fn inspect(&mut self, pid: u32) -> Option<(String, Option<GoLayout>)> {
        use std::os::unix::fs::MetadataExt as _;
        let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let meta = std::fs::metadata(&exe).ok()?;
        let key = (meta.dev(), meta.ino());
        if !self.by_inode.contains_key(&key) {
            let shown = std::fs::read_link(&exe).unwrap_or_else(|_| exe.clone());
            let found = match analyze_file(&exe) {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(pid, exe = %shown.display(), "cannot read the executable to tell whether it is Go: {e}");
                    return None;
                }
            };
            match &found {
                GoBinary::NotGo => {}
                GoBinary::Tracked { .. } if self.enabled => {
                    tracing::info!(pid, exe = %shown.display(), "Go target: {found}");
                }
                GoBinary::Tracked { version, .. } => tracing::warn!(
                    pid,
                    exe = %shown.display(),
                    "Go target: {version}: goroutines not followed (correlation.goroutines = false, or no task_struct.thread.fsbase on this kernel); its reads need flow or content evidence"
                ),
                GoBinary::Unsupported { .. } => {
                    tracing::warn!(pid, exe = %shown.display(), "Go target: {found}");
                }
            }
            self.by_inode.insert(key, found);
        }
        match self.by_inode.get(&key)? {
            GoBinary::NotGo => None,
            GoBinary::Tracked {
                version, layout, ..
            } => Some((version.clone(), self.enabled.then_some(*layout))),
            GoBinary::Unsupported { version, .. } => Some((
                version
                    .clone()
                    .unwrap_or_else(|| "go (version unknown)".into()),
                None,
            )),
        }
    }
}

/// Reads the executable behind `path` (e.g. `/proc/<pid>/exe`).
pub fn analyze_file(path: &std::path::Path) -> std::io::Result<GoBinary> {
    // Most targets are not Go: their executable (tens of MB with debug information) is not read
    // whole for that, only its ELF headers.
    if !is_go_file(path)? {
        return Ok(GoBinary::NotGo);
    }
    let data = std::fs::read(path)?;
    Ok(analyze(&data))
}

/// Whether the ELF file at `path` has Go's build information (`.go.buildinfo`), reading only its
/// headers and section names. Not ELF: `false`.
pub fn is_go_file(path: &std::path::Path) -> std::io::Result<bool> {
    let file = std::fs::File::open(path)?;
    let cache = object::ReadCache::new(file);
    Ok(ElfFile64::<Endianness, _>::parse(&cache)
        .is_ok_and(|elf| elf.section_by_name(".go.buildinfo").is_some()))
}

/// Analyzes an executable's bytes. Never fails: what it cannot read makes the binary
/// [`GoBinary::NotGo`] (not ELF, no build info) or [`GoBinary::Unsupported`].
pub fn analyze(data: &[u8]) -> GoBinary {
    let Ok(elf) = ElfFile64::<Endianness>::parse(data) else {
        return GoBinary::NotGo;
    };
    let Some(info) = elf.section_by_name(".go.buildinfo") else {
        return GoBinary::NotGo;
    };
    let version = info.data().ok().and_then(build_version);
    let unsupported = |reason: &str| GoBinary::Unsupported {
        version: version.clone(),
        reason: reason.to_string(),
    };
    if elf.architecture() != object::Architecture::X86_64 {
        return unsupported("only linux/amd64 binaries are supported");
    }
    let Some(g_tls) = g_tls_offset(&elf) else {
        return unsupported("unexpected TLS layout (no `runtime.tlsg` in its TLS segment)");
    };
    let (goid, source) = match dwarf_goid_offset(&elf) {
        Ok(Some(off)) => (off, "dwarf"),
        Ok(None) | Err(_) => {
            let known = version.as_deref().and_then(|v| {
                KNOWN_GOID_OFFSETS
                    .iter()
                    .find(|(prefix, _)| v.starts_with(prefix))
                    .map(|(_, off)| *off)
            });
            match known {
                Some(off) => (off, "known version"),
                None => {
                    return unsupported(
                        "no DWARF (built with -ldflags=-w or stripped) and not a version whose runtime.g layout Vigie knows",
                    );
                }
            }
        }
    };
    GoBinary::Tracked {
        version: version.unwrap_or_else(|| "go (version unknown)".into()),
        layout: GoLayout { g_tls, goid },
        source,
    }
}

/// The Go version in a `.go.buildinfo` section of Go 1.18 or later: a 32-byte header (magic,
/// pointer size, flags with bit 1 "strings inline"), then the version as a varint-prefixed
/// string. Older layouts (pointers to strings) give `None`.
pub fn build_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !section.starts_with(MAGIC) || section.len() < 32 {
        return None;
    }
    let flags = section[MAGIC.len() + 1];
    if flags & 2 == 0 {
        return None;
    }
    let rest = &section[32..];
    let (len, used) = uvarint(rest)?;
    let len = usize::try_from(len).ok()?;
    let bytes = rest.get(used..used.checked_add(len)?)?;
    let v = std::str::from_utf8(bytes).ok()?;
    v.starts_with("go").then(|| v.to_string())
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Offset from the thread pointer (FS base) of the slot holding the current `*g`. Without a TLS
/// segment, Go's runtime sets FS itself so that the slot is at -8 (`runtime.settls`). With one,
/// the executable's TLS block ends at the thread pointer (x86_64 TLS variant II), so the slot is
/// `runtime.tlsg`'s offset in the block minus the block's aligned size.
fn g_tls_offset(elf: &ElfFile64<'_, Endianness>) -> Option<i64> {
    let endian = elf.endian();
    let tls = elf
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == PT_TLS);
    let Some(tls) = tls else {
        return Some(-8);
    };
    let memsz = tls.p_memsz(endian);
    let align = tls.p_align(endian).max(1);
    let block = i64::try_from(memsz.div_ceil(align).checked_mul(align)?).ok()?;
    let tlsg = elf
        .symbols()
        .find(|s| s.name() == Ok("runtime.tlsg"))
        .map(|s| s.address());
    let slot = match tlsg {
        Some(off) => i64::try_from(off).ok()?,
        // The runtime's slot alone in the segment.
        None if memsz == 8 => 0,
        None => return None,
    };
    Some(slot - block)
}

/// The offset of `goid` in `runtime.g`, from the binary's DWARF (`None`: no DWARF, or no such
/// member).
fn dwarf_goid_offset(elf: &ElfFile64<'_, Endianness>) -> Result<Option<u64>, gimli::Error> {
    if elf.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(elf
            .section_by_name(id.name())
            .filter(|s| s.kind() != SectionKind::UninitializedData)
            .and_then(|s| section_bytes(&s))
            .unwrap_or(Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        let mut in_g: Option<isize> = None;
        while let Some(entry) = entries.next_dfs()? {
            let depth = entry.depth();
            if let Some(d) = in_g
                && depth <= d
            {
                in_g = None;
            }
            let wanted = match entry.tag() {
                gimli::DW_TAG_structure_type if in_g.is_none() => "runtime.g",
                gimli::DW_TAG_member if in_g.is_some() => "goid",
                _ => continue,
            };
            let Some(name) = entry.attr_value(gimli::DW_AT_name) else {
                continue;
            };
            if dwarf.attr_string(&unit, name)?.slice() != wanted.as_bytes() {
                continue;
            }
            match in_g {
                None => in_g = Some(depth),
                Some(_) => {
                    return Ok(entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|v| v.udata_value()));
                }
            }
        }
    }
    Ok(None)
}

/// A section's bytes, inflated when Go compressed it (zlib, as an ELF compressed section or
/// the older `.zdebug` layout).
fn section_bytes<'a>(
    s: &object::read::elf::ElfSection64<'a, '_, Endianness>,
) -> Option<Cow<'a, [u8]>> {
    let c = s.compressed_data().ok()?;
    match c.format {
        CompressionFormat::None => Some(Cow::Borrowed(c.data)),
        CompressionFormat::Zlib => {
            let limit = usize::try_from(c.uncompressed_size).ok()?;
            miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(c.data, limit)
                .ok()
                .map(Cow::Owned)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_version_reads_the_inline_layout_and_refuses_others() {
        let mut s = b"\xff Go buildinf:\x08\x02".to_vec();
        s.resize(32, 0);
        s.push(8);
        s.extend_from_slice(b"go1.19.8");
        s.push(0);
        assert_eq!(build_version(&s).as_deref(), Some("go1.19.8"));
        // Go before 1.18: pointers, not strings.
        let mut old = s.clone();
        old[15] = 0;
        assert_eq!(build_version(&old), None);
        // Cut short, or a length past the end: no version, no panic.
        assert_eq!(build_version(&s[..36]), None);
        assert_eq!(build_version(&s[..20]), None);
        let mut long = s.clone();
        long[32] = 0xff;
        assert_eq!(build_version(&long), None);
    }

    #[test]
    fn a_non_elf_or_non_go_file_is_not_go() {
        assert_eq!(analyze(b"#!/bin/sh\necho hi\n"), GoBinary::NotGo);
        assert_eq!(analyze(&[]), GoBinary::NotGo);
        let me = std::fs::read("/proc/self/exe").expect("own executable");
        assert_eq!(analyze(&me), GoBinary::NotGo);
    }

    /// The Go portal of the end-to-end tests (`VIGIE_GO_PORTAL`, which `cargo xtask` builds):
    /// followed with the layout its DWARF gives; without its DWARF, with the same layout from
    /// the table of checked versions; and not at all when its version is not in the table.
    #[test]
    fn a_go_binary_is_followed_with_or_without_dwarf() {
        let Some(path) = std::env::var_os("VIGIE_GO_PORTAL") else {
            let msg = "SKIPPED a_go_binary_is_followed_with_or_without_dwarf: VIGIE_GO_PORTAL is not set (cargo xtask test sets it)";
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            assert!(
                std::env::var("VIGIE_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{msg}, and VIGIE_REQUIRE_PRIVILEGED=1 turns skips into failures"
            );
            return;
        };
        let data = std::fs::read(&path).expect("VIGIE_GO_PORTAL");
        let GoBinary::Tracked {
            version,
            layout,
            source: "dwarf",
        } = analyze(&data)
        else {
            panic!("{}", analyze(&data));
        };
        // Go's own TLS slot in a static binary.
        assert_eq!(layout.g_tls, -8);
        let stripped =
            std::env::temp_dir().join(format!("vigie-go-nodwarf-{}", std::process::id()));
        let status = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&path)
            .arg(&stripped)
            .status()
            .expect("objcopy");
        assert!(status.success());
        let mut bare = std::fs::read(&stripped).expect("stripped copy");
        let _ = std::fs::remove_file(&stripped);
        let known = KNOWN_GOID_OFFSETS
            .iter()
            .any(|(prefix, off)| version.starts_with(prefix) && *off == layout.goid);
        let found = analyze(&bare);
        if known {
            assert_eq!(
                found,
                GoBinary::Tracked {
                    version: version.clone(),
                    layout,
                    source: "known version"
                }
            );
        }
        // A version Vigie has not checked, and no DWARF: not followed.
        let magic = b"\xff Go buildinf:";
        let at = bare
            .windows(magic.len())
            .position(|w| w == magic)
            .expect(".go.buildinfo")
            + 33;
        assert_eq!(&bare[at..at + version.len()], version.as_bytes());
        bare[at + 2..at + 6].copy_from_slice(b"9.99");
        let GoBinary::Unsupported { reason, .. } = analyze(&bare) else {
            panic!("{}", analyze(&bare));
        };
        assert!(reason.contains("no DWARF"), "{reason}");
    }
}
