//! Which user owns a document: the pure part. Path templates such as
//! `/srv/portal/users/{owner}/**` (this file), the [`fact::Fact`]s that the ownership backends
//! (a mapping file, the portal's database: the `vigie` crate's resolver, which does that I/O)
//! record for replay, and the [`Ownership`] the judge is handed.
//!
//! Templates are matched against normalized absolute paths (see [`crate::paths::normalize`]),
//! component by component; nothing is globbed inside a component, so a template can never match
//! more than its text says.

pub mod fact;

use std::fmt;
use std::str::FromStr;

/// Who owns a document, as far as the ownership backends could tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    pub owner: Option<String>,
    /// Principals the document is shared with (delegation): they may read it too.
    pub shared_with: Vec<String>,
    /// The backend that decided: knew the owner, or failed.
    pub source: Option<fact::BackendKind>,
    /// What matched: the template, or the mapping entry's path.
    pub matched: Option<String>,
    /// The lookup failed: the owner is unknown, and no later backend was asked.
    pub error: Option<fact::LookupError>,
}

/// The placeholder segment naming the owner.
const OWNER: &str = "{owner}";

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this component.
    Literal(String),
    /// Matches any component and names the owner.
    Owner,
    /// `*`: matches exactly one component.
    One,
    /// `**` (last only): matches zero or more components.
    Rest,
}

/// A path template with exactly one `{owner}` segment, e.g. `/srv/portal/users/{owner}/**`.
///
/// Segment syntax: literal, `{owner}` (a whole segment, exactly once per template), `*` (exactly
/// one segment), `**` (zero or more segments; only as the last segment). Templates must be
/// absolute and already normalized (no empty, `.` or `..` segments, no trailing slash).
///
/// (De)serializes as its text, so it can sit directly in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathTemplate {
    text: String,
    segments: Vec<Segment>,
}

/// Why a template is rejected. Each carries the template text, for the configuration error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// Does not start with `/`.
    #[error("path template `{0}` is not absolute (must start with `/`)")]
    NotAbsolute(String),
    /// No `{owner}` segment: the template could not name anyone.
    #[error("path template `{0}` has no `{{owner}}` segment")]
    NoOwner(String),
    /// Several `{owner}` segments: which one names the owner would be ambiguous.
    #[error("path template `{0}` has more than one `{{owner}}` segment")]
    MultipleOwners(String),
    /// `**` before the last segment (it would make matching ambiguous and costly).
    #[error("path template `{0}` has `**` elsewhere than as its last segment")]
    MisplacedDoubleStar(String),
    /// `//` or a trailing `/`: a normalized path has neither, so it could never match.
    #[error("path template `{0}` has an empty segment (`//` or a trailing `/`)")]
    EmptySegment(String),
    /// A `.` or `..` segment: a normalized path has none, so it could never match.
    #[error("path template `{0}` has a `.` or `..` segment, which a normalized path never has")]
    DotSegment(String),
    /// `{`, `}` or `*` inside a segment: in-segment globbing is not supported, and reading
    /// them literally would surprise whoever wrote `*.pdf` or `{user}`.
    #[error(
        "path template `{0}` uses `{{`, `}}` or `*` inside a segment; only whole-segment \
         `{{owner}}`, `*` and `**` are supported"
    )]
    PartialWildcard(String),
}

impl FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| TemplateError::NotAbsolute(text.to_owned()))?;
        if rest.is_empty() {
            // `/` alone: not an empty segment, just no owner.
            return Err(TemplateError::NoOwner(text.to_owned()));
        }
        let segments = rest
            .split('/')
            .map(|s| parse_segment(s).map_err(|make| make(text.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        check_structure(&segments).map_err(|make| make(text.to_owned()))?;
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }
}

/// A template error without its text yet: the variant's constructor.
type ErrorKind = fn(String) -> TemplateError;

/// Classifies one segment of the template text.
fn parse_segment(s: &str) -> Result<Segment, ErrorKind> {
    match s {
        "" => Err(TemplateError::EmptySegment),
        "." | ".." => Err(TemplateError::DotSegment),
        OWNER => Ok(Segment::Owner),
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        _ if s.contains(['{', '}', '*']) => Err(TemplateError::PartialWildcard),
        _ => Ok(Segment::Literal(s.to_owned())),
    }
}

/// Exactly one `{owner}`, and `**` only last.
fn check_structure(segments: &[Segment]) -> Result<(), ErrorKind> {
    if let Some((_, init)) = segments.split_last()
        && init.contains(&Segment::Rest)
    {
        return Err(TemplateError::MisplacedDoubleStar);
    }
    match segments.iter().filter(|s| **s == Segment::Owner).count() {
        0 => Err(TemplateError::NoOwner),
        1 => Ok(()),
        _ => Err(TemplateError::MultipleOwners),
    }
}

impl TryFrom<String> for PathTemplate {
    type Error = TemplateError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<PathTemplate> for String {
    fn from(template: PathTemplate) -> Self {
        template.text
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PathTemplate {
    /// The owner named by `normalized_path` under this template, borrowed from the path.
    ///
    /// `None` when the path does not match, or is not a normalized absolute path (an empty,
    /// `.` or `..` component would let `*`, `**` or `{owner}` match something the template's
    /// author never meant).
    #[must_use]
    pub fn owner_of<'p>(&self, normalized_path: &'p str) -> Option<&'p str> {
        let mut components = components(normalized_path)?;
        let mut owner = None;
        for segment in &self.segments {
            if *segment == Segment::Rest {
                return if components.all(is_normal_component) {
                    owner
                } else {
                    None
                };
            }
            let component = components.next().filter(|c| is_normal_component(c))?;
            match segment {
                Segment::Literal(literal) if literal == component => {}
                Segment::Owner => owner = Some(component),
                Segment::One => {}
                Segment::Literal(_) | Segment::Rest => return None,
            }
        }
        if components.next().is_some() {
            return None;
        }
        owner
    }

    /// The template text, as configured.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Components of an absolute path (none for `/`); `None` for a relative path.
fn components(path: &str) -> Option<impl Iterator<Item = &str>> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split('/').filter(move |_| !rest.is_empty()))
}

/// A component a normalized path can have: not empty, `.` or `..`.
fn is_normal_component(component: &str) -> bool {
    !matches!(component, "" | "." | "..")
}

/// An ordered list of templates: the first that matches decides the owner.
#[derive(Debug, Clone, Default)]
pub struct OwnershipRules {
    templates: Vec<PathTemplate>,
}

impl OwnershipRules {
    /// Rules trying `templates` in order.
    #[must_use]
    pub fn new(templates: Vec<PathTemplate>) -> Self {
        Self { templates }
    }

    /// Owner of a normalized absolute path by the first matching template, with the template
    /// that matched.
    #[must_use]
    pub fn owner_of<'a>(&'a self, path: &'a str) -> Option<(&'a str, &'a PathTemplate)> {
        self.templates
            .iter()
            .find_map(|template| template.owner_of(path).map(|owner| (owner, template)))
    }

    /// The ownership the templates give `path` (the first that matches), if any.
    #[must_use]
    pub fn ownership(&self, path: &str) -> Option<Ownership> {
        self.owner_of(path).map(|(owner, template)| Ownership {
            owner: Some(owner.to_owned()),
            source: Some(fact::BackendKind::Templates),
            matched: Some(template.as_str().to_owned()),
            ..Ownership::default()
        })
    }

    /// The templates, in matching order.
    #[must_use]
    pub fn templates(&self) -> &[PathTemplate] {
        &self.templates
    }

    /// True when there is no template: no document has an owner.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> PathTemplate {
        text.parse()
            .unwrap_or_else(|e| panic!("template {text} rejected: {e}"))
    }

    #[test]
    fn owner_with_double_star() {
        let template = t("/srv/portal/users/{owner}/**");
        assert_eq!(
            template.owner_of("/srv/portal/users/alice/a.pdf"),
            Some("alice")
        );
        assert_eq!(
            template.owner_of("/srv/portal/users/bob/x/y/z.txt"),
            Some("bob")
        );
        assert_eq!(template.owner_of("/srv/portal/users/carol"), Some("carol"));
        assert_eq!(template.owner_of("/srv/portal/users"), None);
        assert_eq!(template.owner_of("/srv/portal/other/alice/a.pdf"), None);
        assert_eq!(template.owner_of("/srv/portal/users2/alice/a.pdf"), None);
        assert_eq!(template.owner_of("/"), None);
    }

    #[test]
    fn exact_template_without_double_star() {
        let template = t("/home/{owner}");
        assert_eq!(template.owner_of("/home/alice"), Some("alice"));
        assert_eq!(template.owner_of("/home/alice/x"), None);
        assert_eq!(template.owner_of("/home"), None);
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        let template = t("/srv/*/users/{owner}/*");
        assert_eq!(
            template.owner_of("/srv/site1/users/alice/a.pdf"),
            Some("alice")
        );
        assert_eq!(template.owner_of("/srv/users/alice/a.pdf"), None);
        assert_eq!(template.owner_of("/srv/a/b/users/alice/a.pdf"), None);
        assert_eq!(template.owner_of("/srv/site1/users/alice"), None);
        assert_eq!(template.owner_of("/srv/site1/users/alice/d/a.pdf"), None);
    }

    #[test]
    fn owner_in_the_middle() {
        let template = t("/data/{owner}/docs/**");
        assert_eq!(
            template.owner_of("/data/alice/docs/2024/report.pdf"),
            Some("alice")
        );
        assert_eq!(template.owner_of("/data/alice/docs"), Some("alice"));
        assert_eq!(template.owner_of("/data/alice/private/x"), None);
        assert_eq!(template.owner_of("/data/alice"), None);
    }

    #[test]
    fn owner_may_be_last_before_nothing() {
        let template = t("/{owner}/**");
        assert_eq!(template.owner_of("/alice/x"), Some("alice"));
        assert_eq!(template.owner_of("/"), None);
    }

    #[test]
    fn non_normalized_paths_never_match() {
        let template = t("/data/{owner}/**");
        for path in [
            "/data/../x",
            "/data/./x",
            "/data//x",
            "/data/alice/",
            "/data/alice/../../etc",
            "data/alice/x",
            "",
        ] {
            assert_eq!(template.owner_of(path), None, "{path}");
        }
        let star = t("/data/*/{owner}");
        assert_eq!(star.owner_of("/data/../alice"), None);
    }

    #[test]
    fn owner_is_borrowed_from_the_path_and_may_be_escaped() {
        let path = crate::paths::from_bytes(b"/home/\xffbob/f");
        let template = t("/home/{owner}/**");
        assert_eq!(template.owner_of(&path), Some("\\xffbob"));
    }

    #[test]
    fn first_template_wins() {
        let rules = OwnershipRules::new(vec![
            t("/srv/shared/{owner}/public/**"),
            t("/srv/{owner}/**"),
            t("/srv/*/{owner}/**"),
        ]);
        let (owner, template) = rules.owner_of("/srv/shared/alice/public/a").unwrap();
        assert_eq!(
            (owner, template.as_str()),
            ("alice", "/srv/shared/{owner}/public/**")
        );
        let (owner, template) = rules.owner_of("/srv/shared/alice/private/a").unwrap();
        assert_eq!((owner, template.as_str()), ("shared", "/srv/{owner}/**"));
        assert_eq!(rules.owner_of("/etc/passwd"), None);
        assert_eq!(rules.templates().len(), 3);
        assert!(!rules.is_empty());
    }

    #[test]
    fn empty_rules_match_nothing() {
        let rules = OwnershipRules::default();
        assert!(rules.is_empty());
        assert_eq!(rules.owner_of("/srv/alice/x"), None);
    }

    #[test]
    fn errors_for_bad_templates() {
        let cases = [
            ("srv/{owner}", TemplateError::NotAbsolute as ErrorKind),
            ("", TemplateError::NotAbsolute),
            ("/srv/docs/**", TemplateError::NoOwner),
            ("/", TemplateError::NoOwner),
            ("/{owner}/{owner}", TemplateError::MultipleOwners),
            ("/srv/**/{owner}", TemplateError::MisplacedDoubleStar),
            ("/**/**/{owner}", TemplateError::MisplacedDoubleStar),
            ("/srv//{owner}", TemplateError::EmptySegment),
            ("/srv/{owner}/", TemplateError::EmptySegment),
            ("/srv/./{owner}", TemplateError::DotSegment),
            ("/srv/../{owner}", TemplateError::DotSegment),
            ("/srv/x{owner}", TemplateError::PartialWildcard),
            ("/srv/{owner}.d", TemplateError::PartialWildcard),
            ("/srv/{user}/{owner}", TemplateError::PartialWildcard),
            ("/srv/{owner}/*.pdf", TemplateError::PartialWildcard),
            ("/srv/{owner}/***", TemplateError::PartialWildcard),
        ];
        for (text, expected) in cases {
            assert_eq!(
                text.parse::<PathTemplate>().err(),
                Some(expected(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_template() {
        let e = "/srv/**/{owner}".parse::<PathTemplate>().unwrap_err();
        assert!(e.to_string().contains("`/srv/**/{owner}`"), "{e}");
        let e = "/srv/docs".parse::<PathTemplate>().unwrap_err();
        assert!(e.to_string().contains("{owner}"), "{e}");
    }

    #[test]
    fn text_round_trips() {
        let template = t("/srv/{owner}/**");
        assert_eq!(template.as_str(), "/srv/{owner}/**");
        assert_eq!(template.to_string(), "/srv/{owner}/**");
        assert_eq!(String::from(template.clone()), "/srv/{owner}/**");
        assert_eq!(
            PathTemplate::try_from("/srv/{owner}/**".to_owned()),
            Ok(template)
        );
    }

    #[test]
    fn deserializes_from_text() {
        use serde::Deserialize as _;
        use serde::de::value::{Error, StringDeserializer};
        let ok =
            PathTemplate::deserialize(StringDeserializer::<Error>::new("/u/{owner}/**".into()));
        assert_eq!(
            ok.map(|t| t.owner_of("/u/alice/f").map(str::to_owned)),
            Ok(Some("alice".into()))
        );
        let bad = PathTemplate::deserialize(StringDeserializer::<Error>::new("/u/**/x".into()));
        assert!(bad.is_err());
    }
}
