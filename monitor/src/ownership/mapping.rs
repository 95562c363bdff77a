//! The mapping file: document (exact path or glob) -> owner, plus principals the document is
//! shared with (delegation). TOML, one `[[document]]` table per entry:
//!
//! ```toml
//! [[document]]
//! path = "/srv/portal/shared/budget-2026.pdf"   # an exact path
//! owner = "carol"
//! shared_with = ["alice", "dana"]               # optional
//!
//! [[document]]
//! path = "/srv/portal/users/bob/**"             # a glob
//! owner = "bob"
//! ```
//!
//! Exact paths are looked up first (a hash lookup, so a file of a million documents costs
//! nothing per access); then globs, in file order, the first that matches wins. In a glob, `*`
//! matches any characters within one path segment, `?` one character, and a final `**` any
//! number of segments. Paths are matched against normalized absolute paths, like templates.
use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use super::fact::Answer;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    document: Vec<EntryFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFormat {
    path: String,
    owner: String,
    #[serde(default)]
    shared_with: Vec<String>,
}

/// Why a mapping file is refused. The message names the entry and its field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "{path}: writable by group or others (mode {mode:04o}); whoever can write it decides who owns documents: chmod go-w"
    )]
    Insecure { path: String, mode: u32 },
    #[error("{0}")]
    Syntax(String),
    #[error("document[{index}].{field}: {reason}")]
    Entry {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    owner: String,
    shared_with: Vec<String>,
}

/// A parsed mapping file.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    entries: Vec<Entry>,
    exact: HashMap<String, usize>,
    globs: Vec<(Glob, usize)>,
}

impl Mapping {
    /// Reads and parses `path`, refusing a file that group or others can write.
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        use std::os::unix::fs::PermissionsExt as _;
        let shown = path.display().to_string();
        let read = |e: std::io::Error| MappingError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(MappingError::Insecure {
                path: shown,
                mode: mode & 0o7777,
            });
        }
        Self::parse(&std::fs::read_to_string(path).map_err(read)?)
    }

    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let file: FileFormat =
            toml::from_str(text).map_err(|e| MappingError::Syntax(e.to_string()))?;
        let mut mapping = Self::default();
        for (index, raw) in file.document.into_iter().enumerate() {
            let entry_error = |field, reason: String| MappingError::Entry {
                index,
                field,
                reason,
            };
            let pattern = Glob::parse(&raw.path).map_err(|r| entry_error("path", r))?;
            if !monitor_core::identity::valid_user_name(&raw.owner) {
                return Err(entry_error(
                    "owner",
                    format!("{:?} is not a valid user name", raw.owner),
                ));
            }
            for (i, who) in raw.shared_with.iter().enumerate() {
                if !monitor_core::identity::valid_user_name(who) {
                    return Err(MappingError::Entry {
                        index,
                        field: "shared_with",
                        reason: format!("[{i}] {who:?} is not a valid user name"),
                    });
                }
            }
            match pattern {
                None => {
                    if let Some(first) = mapping.exact.insert(raw.path.clone(), index) {
                        return Err(entry_error(
                            "path",
                            format!("{:?} is already mapped by document[{first}]", raw.path),
                        ));
                    }
                }
                Some(glob) => mapping.globs.push((glob, index)),
            }
            mapping.entries.push(Entry {
                path: raw.path,
                owner: raw.owner,
                shared_with: raw.shared_with,
            });
        }
        Ok(mapping)
    }

    /// The answer for a normalized absolute path.
    #[must_use]
    pub fn lookup(&self, document: &str) -> Answer {
        let index = self.exact.get(document).copied().or_else(|| {
            self.globs
                .iter()
                .find(|(glob, _)| glob.matches(document))
                .map(|(_, i)| *i)
        });
        match index.and_then(|i| self.entries.get(i)) {
            Some(entry) => Answer::Owner {
                owner: entry.owner.clone(),
                shared_with: entry.shared_with.clone(),
                matched: Some(entry.path.clone()),
            },
            None => Answer::NotFound,
        }
    }

    /// Entries in the file.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A path glob: whole segments, with `*` and `?` inside segments and a final `**`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    segments: Vec<String>,
    /// Ends with `**`: any number of further segments (zero included).
    rest: bool,
}

impl Glob {
    /// `Ok(None)` for an exact path (no wildcard).
    fn parse(path: &str) -> Result<Option<Self>, String> {
        let Some(body) = path.strip_prefix('/') else {
            return Err(format!("{path:?} is not an absolute path"));
        };
        if body.is_empty() {
            return Err("`/` is not a document".into());
        }
        let mut segments: Vec<String> = body.split('/').map(str::to_owned).collect();
        for s in &segments {
            match s.as_str() {
                "" => {
                    return Err(format!(
                        "{path:?} has an empty segment (`//` or a trailing `/`)"
                    ));
                }
                "." | ".." => {
                    return Err(format!(
                        "{path:?} has a `.` or `..` segment, which a normalized path never has"
                    ));
                }
                _ if s.contains(['{', '}']) => {
                    return Err(format!(
                        "{path:?}: `{{` and `}}` are not glob syntax (an `{{owner}}` segment \
                         belongs in documents.owner_templates)"
                    ));
                }
                _ => {}
            }
        }
        let rest = segments.last().is_some_and(|s| s == "**");
        if rest {
            segments.pop();
        }
        if segments.iter().any(|s| s.contains("**")) {
            return Err(format!(
                "{path:?}: `**` is only allowed as the whole last segment"
            ));
        }
        if !rest && !segments.iter().any(|s| s.contains(['*', '?'])) {
            return Ok(None);
        }
        Ok(Some(Self { segments, rest }))
    }

    fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        let mut components = body.split('/');
        for segment in &self.segments {
            match components.next() {
                Some(c) if is_normal(c) && segment_matches(segment.as_bytes(), c.as_bytes()) => {}
                _ => return false,
            }
        }
        if self.rest {
            components.all(is_normal)
        } else {
            components.next().is_none()
        }
    }
}

fn is_normal(component: &str) -> bool {
    !matches!(component, "" | "." | "..")
}

/// `*` (any run) and `?` (one byte) within one segment; iterative, with one backtrack point.
fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[document]]
        path = "/srv/portal/users/bob/health-record.pdf"
        owner = "bob"
        shared_with = ["alice"]

        [[document]]
        path = "/srv/portal/users/bob/**"
        owner = "bob"

        [[document]]
        path = "/srv/portal/shared/*-2026.pdf"
        owner = "carol"
        shared_with = ["alice", "dana"]

        [[document]]
        path = "/srv/portal/users/*/scan-??.png"
        owner = "scanner"
    "#;

    fn owner(m: &Mapping, path: &str) -> Option<(String, Vec<String>, String)> {
        match m.lookup(path) {
            Answer::Owner {
                owner,
                shared_with,
                matched,
            } => Some((owner, shared_with, matched.unwrap())),
            Answer::NotFound => None,
            Answer::Failed(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn exact_paths_then_globs_in_order() {
        let m = Mapping::parse(FILE).unwrap();
        assert_eq!(m.len(), 4);
        let (o, shared, matched) = owner(&m, "/srv/portal/users/bob/health-record.pdf").unwrap();
        assert_eq!(
            (o.as_str(), shared, matched.as_str()),
            (
                "bob",
                vec!["alice".to_string()],
                "/srv/portal/users/bob/health-record.pdf"
            )
        );
        let (o, shared, matched) = owner(&m, "/srv/portal/users/bob/notes.txt").unwrap();
        assert_eq!(
            (o.as_str(), shared.len(), matched.as_str()),
            ("bob", 0, "/srv/portal/users/bob/**")
        );
        assert_eq!(owner(&m, "/srv/portal/users/bob/a/b/c").unwrap().0, "bob");
        assert_eq!(owner(&m, "/srv/portal/users/bob").unwrap().0, "bob");
        let (o, shared, _) = owner(&m, "/srv/portal/shared/budget-2026.pdf").unwrap();
        assert_eq!((o.as_str(), shared.len()), ("carol", 2));
        assert_eq!(
            owner(&m, "/srv/portal/shared/-2026.pdf").unwrap().0,
            "carol"
        );
        assert_eq!(owner(&m, "/srv/portal/shared/budget-2025.pdf"), None);
        assert_eq!(owner(&m, "/srv/portal/shared/x/budget-2026.pdf"), None);
        assert_eq!(
            owner(&m, "/srv/portal/users/alice/scan-01.png").unwrap().0,
            "scanner"
        );
        assert_eq!(owner(&m, "/srv/portal/users/alice/scan-001.png"), None);
        assert_eq!(owner(&m, "/srv/portal/users/alice/notes.txt"), None);
        // Not normalized: never matches.
        assert_eq!(owner(&m, "/srv/portal/users/bob/../alice/x"), None);
        assert_eq!(owner(&m, "relative/bob"), None);
    }

    #[test]
    fn segment_wildcards() {
        for (p, t, ok) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abcd", false),
            ("*.pdf", "x.pdf", true),
            ("*.pdf", "x.pdf.txt", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b", "xaxxb", true),
            ("*a*b", "xaxxbx", false),
            ("**", "anything", true),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(segment_matches(p.as_bytes(), t.as_bytes()), ok, "{p} {t}");
        }
    }

    #[test]
    fn bad_entries_name_the_entry_and_field() {
        let cases = [
            ("path = \"relative\"\nowner = \"a\"", "document[0].path"),
            ("path = \"/a//b\"\nowner = \"a\"", "document[0].path"),
            ("path = \"/a/../b\"\nowner = \"a\"", "document[0].path"),
            ("path = \"/a/**/b\"\nowner = \"a\"", "document[0].path"),
            ("path = \"/a/x**\"\nowner = \"a\"", "document[0].path"),
            ("path = \"/a/{owner}/**\"\nowner = \"a\"", "owner_templates"),
            ("path = \"/a/b\"\nowner = \"\"", "document[0].owner"),
            ("path = \"/a/b\"\nowner = \" a\"", "document[0].owner"),
            (
                "path = \"/a/b\"\nowner = \"a\"\nshared_with = [\"ok\", \"\\u0007\"]",
                "document[0].shared_with: [1]",
            ),
        ];
        for (body, expected) in cases {
            let e = Mapping::parse(&format!("[[document]]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{body}: {e}");
        }
        let dup = "[[document]]\npath = \"/a\"\nowner = \"x\"\n[[document]]\npath = \"/a\"\nowner = \"y\"\n";
        let e = Mapping::parse(dup).unwrap_err().to_string();
        assert!(
            e.starts_with("document[1].path") && e.contains("document[0]"),
            "{e}"
        );
        let e = Mapping::parse("[[document]]\npath = \"/a\"\n").unwrap_err();
        assert!(
            matches!(e, MappingError::Syntax(ref m) if m.contains("owner")),
            "{e}"
        );
        let e = Mapping::parse("[[document]]\npath = \"/a\"\nowner = \"x\"\nowners = 1\n");
        assert!(e.unwrap_err().to_string().contains("owners"));
        assert!(Mapping::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_mapping_file_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("vigie-mapping-{}.toml", std::process::id()));
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = Mapping::load(&path).unwrap_err();
        assert!(
            matches!(e, MappingError::Insecure { mode: 0o664, .. }),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Mapping::load(&path).unwrap().len(), 4);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            Mapping::load(&path).unwrap_err(),
            MappingError::Read { .. }
        ));
    }
}
