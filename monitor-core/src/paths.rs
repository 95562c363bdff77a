//! File paths as captured from the kernel: conversion to text and lexical normalisation.
//!
//! Everything here is lexical: symbolic links are not followed and the filesystem is never
//! touched, because the paths describe another process's view at another time.

use std::fmt::Write as _;

/// Path bytes from the kernel as a `String`: valid UTF-8 kept, each invalid byte written as
/// `\xNN`, and each backslash doubled, so that distinct byte strings stay distinct and nothing is
/// silently replaced. (Without doubling, the file literally named `\xff` and the one named by the
/// single byte 0xFF would collide.)
#[must_use]
pub fn from_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        push_escaping_backslashes(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Appends `text` with every `\` doubled.
fn push_escaping_backslashes(out: &mut String, text: &str) {
    let mut pieces = text.split('\\');
    if let Some(first) = pieces.next() {
        out.push_str(first);
    }
    for piece in pieces {
        out.push_str("\\\\");
        out.push_str(piece);
    }
}

/// Lexical normalisation of an absolute path: collapses `//`, removes `.`, resolves `..`
/// (never above `/`, as the kernel does), no trailing slash (except `/`). `None` for a relative
/// or empty path.
#[must_use]
pub fn normalize(path: &str) -> Option<String> {
    if is_normal(path) {
        return Some(path.to_owned());
    }
    let rest = path.strip_prefix('/')?;
    let mut kept: Vec<&str> = Vec::new();
    for component in rest.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    let mut out = String::with_capacity(path.len());
    for name in &kept {
        out.push('/');
        out.push_str(name);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// [`normalize`] of an owned path, which is returned as is when already normal (the usual case:
/// no copy, no allocation; every document open goes through here).
#[must_use]
pub fn normalize_owned(path: String) -> Option<String> {
    if is_normal(&path) {
        Some(path)
    } else {
        normalize(&path)
    }
}

/// Whether [`normalize`] would return `path` unchanged: absolute, and no empty, `.` or `..`
/// component, no trailing slash (but `/` itself). One pass over the bytes.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    if b.len() == 1 {
        return true;
    }
    // Each component starts after a `/` and runs to the next `/` or the end.
    let mut start = 1;
    loop {
        let end = memchr::memchr(b'/', &b[start..]).map_or(b.len(), |i| start + i);
        match &b[start..end] {
            b"" | b"." | b".." => return false,
            _ => {}
        }
        if end == b.len() {
            return true;
        }
        start = end + 1;
    }
}

/// `path` made absolute against `base` (an absolute directory, e.g. the process's working
/// directory or the `openat` directory) when relative, then normalized. `None` when `path` is
/// empty, or relative while `base` is `None` or relative.
#[must_use]
pub fn resolve(base: Option<&str>, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return normalize(path);
    }
    if path.is_empty() {
        return None;
    }
    let base = base.filter(|b| b.starts_with('/'))?;
    normalize(&format!("{base}/{path}"))
}

/// The file a `FileOpen` names: the full path when the capture was too short, else `path`
/// resolved against `base`.
#[must_use]
pub fn of_open(path: &str, base: Option<&str>, full_path: Option<&str>) -> Option<String> {
    match full_path {
        Some(full) => Some(full.to_string()),
        None => resolve(base, path),
    }
}

/// True when `path` is `root` or below it, component-wise (`/srv/docs2` is not under
/// `/srv/docs`). Both must be normalized absolute paths; a trailing slash on `root` is
/// tolerated. Relative paths are never under anything.
#[must_use]
pub fn is_under(path: &str, root: &str) -> bool {
    if !path.starts_with('/') || !root.starts_with('/') {
        return false;
    }
    let root = root.trim_end_matches('/');
    // The root directory `/` trims to "" and then every absolute path is below it.
    path.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `path` with its leading `from` directory replaced by `to`, when `path` is under `from`
/// (component-wise, see [`is_under`]).
#[must_use]
pub fn rebase(path: &str, from: &str, to: &str) -> Option<String> {
    if !is_under(path, from) {
        return None;
    }
    let rest = &path[from.trim_end_matches('/').len()..];
    Some(format!("{}{rest}", to.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_swaps_a_whole_leading_directory() {
        let r = |p| rebase(p, "/data/docs", "/srv/portal/current/docs");
        assert_eq!(r("/data/docs").as_deref(), Some("/srv/portal/current/docs"));
        assert_eq!(
            r("/data/docs/bob/x.pdf").as_deref(),
            Some("/srv/portal/current/docs/bob/x.pdf")
        );
        assert_eq!(r("/data/docs2/bob/x.pdf"), None);
        assert_eq!(r("relative/x"), None);
    }

    fn norm(p: &str) -> Option<String> {
        normalize(p)
    }

    #[test]
    fn the_shortcut_for_normal_paths_agrees_with_the_full_normalisation() {
        // Every string of up to 7 bytes over `/`, `.` and `a`.
        let mut paths = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..7 {
            let mut next = Vec::new();
            for p in &frontier {
                for c in ['/', '.', 'a'] {
                    next.push(format!("{p}{c}"));
                }
            }
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        for p in paths {
            let full = {
                // The normalisation without the shortcut.
                p.strip_prefix('/').map(|rest| {
                    let mut kept: Vec<&str> = Vec::new();
                    for c in rest.split('/') {
                        match c {
                            "" | "." => {}
                            ".." => {
                                kept.pop();
                            }
                            name => kept.push(name),
                        }
                    }
                    let joined: String = kept.iter().map(|n| format!("/{n}")).collect();
                    if joined.is_empty() {
                        "/".to_string()
                    } else {
                        joined
                    }
                })
            };
            assert_eq!(normalize(&p), full, "{p:?}");
            assert_eq!(normalize_owned(p.clone()), full, "{p:?}");
            assert_eq!(is_normal(&p), full.as_deref() == Some(p.as_str()), "{p:?}");
        }
    }

    #[test]
    fn from_bytes_keeps_utf8() {
        assert_eq!(from_bytes(b"/srv/docs/a.pdf"), "/srv/docs/a.pdf");
        assert_eq!(
            from_bytes("/home/élodie/€.txt".as_bytes()),
            "/home/élodie/€.txt"
        );
        assert_eq!(from_bytes(b""), "");
    }

    #[test]
    fn from_bytes_escapes_invalid_bytes() {
        assert_eq!(from_bytes(b"/a/\xff\xfe.txt"), "/a/\\xff\\xfe.txt");
        // Truncated UTF-8 sequence (é is C3 A9) then valid text.
        assert_eq!(from_bytes(b"/caf\xc3/x"), "/caf\\xc3/x");
        assert_eq!(from_bytes(b"\x80"), "\\x80");
        assert_eq!(from_bytes(b"/a\x00b"), "/a\u{0}b");
    }

    #[test]
    fn from_bytes_is_injective_on_backslashes() {
        assert_eq!(from_bytes(b"/a\\b"), "/a\\\\b");
        assert_ne!(from_bytes(b"/\\xff"), from_bytes(b"/\xff"));
        assert_ne!(from_bytes(b"\\\xff"), from_bytes(b"\\\\xff"));
    }

    #[test]
    fn normalize_resolves_dot_dot() {
        assert_eq!(
            norm("/docs/alice/../bob/x.pdf").as_deref(),
            Some("/docs/bob/x.pdf")
        );
        assert_eq!(norm("/../../etc/passwd").as_deref(), Some("/etc/passwd"));
        assert_eq!(norm("/a/b/../../..").as_deref(), Some("/"));
        assert_eq!(norm("/a/..b/c").as_deref(), Some("/a/..b/c"));
        assert_eq!(norm("/a/.../c").as_deref(), Some("/a/.../c"));
    }

    #[test]
    fn normalize_collapses_slashes_and_dots() {
        assert_eq!(norm("//a///b/./c/").as_deref(), Some("/a/b/c"));
        assert_eq!(norm("/").as_deref(), Some("/"));
        assert_eq!(norm("//").as_deref(), Some("/"));
        assert_eq!(norm("/./.").as_deref(), Some("/"));
        assert_eq!(norm("/a/.hidden/").as_deref(), Some("/a/.hidden"));
    }

    #[test]
    fn normalize_rejects_relative_and_empty() {
        assert_eq!(norm(""), None);
        assert_eq!(norm("a/b"), None);
        assert_eq!(norm("./a"), None);
        assert_eq!(norm("../a"), None);
    }

    #[test]
    fn normalize_escaped_bytes() {
        let p = from_bytes(b"/srv/\xff/../x\xfe");
        assert_eq!(norm(&p).as_deref(), Some("/srv/x\\xfe"));
    }

    #[test]
    fn resolve_relative_against_base() {
        assert_eq!(
            resolve(Some("/srv/www"), "docs/a.pdf").as_deref(),
            Some("/srv/www/docs/a.pdf")
        );
        assert_eq!(
            resolve(Some("/srv/www/"), "../etc/x").as_deref(),
            Some("/srv/etc/x")
        );
        assert_eq!(resolve(Some("/"), "../../x").as_deref(), Some("/x"));
        assert_eq!(resolve(Some("/srv"), ".").as_deref(), Some("/srv"));
        assert_eq!(resolve(Some("/a/./b//"), "c").as_deref(), Some("/a/b/c"));
    }

    #[test]
    fn resolve_absolute_ignores_base() {
        assert_eq!(
            resolve(Some("/srv"), "/etc//passwd").as_deref(),
            Some("/etc/passwd")
        );
        assert_eq!(resolve(None, "/x/../y").as_deref(), Some("/y"));
        assert_eq!(resolve(Some("relative"), "/y").as_deref(), Some("/y"));
    }

    #[test]
    fn resolve_without_usable_base() {
        assert_eq!(resolve(None, "a"), None);
        assert_eq!(resolve(Some("relative/dir"), "a"), None);
        assert_eq!(resolve(Some(""), "a"), None);
        assert_eq!(resolve(Some("/srv"), ""), None);
        assert_eq!(resolve(None, ""), None);
    }

    #[test]
    fn is_under_component_wise() {
        assert!(is_under("/srv/docs", "/srv/docs"));
        assert!(is_under("/srv/docs/a.pdf", "/srv/docs"));
        assert!(is_under("/srv/docs/a/b", "/srv/docs/"));
        assert!(!is_under("/srv/docs2", "/srv/docs"));
        assert!(!is_under("/srv/docs2/a", "/srv/docs"));
        assert!(!is_under("/srv", "/srv/docs"));
        assert!(!is_under("/srv/doc", "/srv/docs"));
    }

    #[test]
    fn is_under_root_and_relative() {
        assert!(is_under("/", "/"));
        assert!(is_under("/etc/passwd", "/"));
        assert!(!is_under("etc/passwd", "/"));
        assert!(!is_under("srv/docs/a", "srv/docs"));
        assert!(!is_under("/srv/docs", ""));
        assert!(!is_under("", "/"));
    }
}
