//! What an ownership backend answers about one document, and the trace line that records it.
use serde::{Deserialize, Serialize};

/// An ownership backend, as named in `ownership.backends`, in alerts (`owner_source`) and in
/// the `backend` label of the lookup metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Path templates (`documents.owner_templates`): pure, computed from the config.
    Templates,
    /// A mapping file (`[ownership.mapping]`).
    Mapping,
    /// A read-only query to an SQLite database (`[ownership.sqlite]`).
    Sqlite,
    /// A read-only query to a PostgreSQL database (`[ownership.postgres]`).
    Postgres,
}

impl BackendKind {
    /// The backends whose answers come from outside the config, and are recorded in traces.
    pub const EXTERNAL: [BackendKind; 3] = [Self::Mapping, Self::Sqlite, Self::Postgres];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Templates => "templates",
            Self::Mapping => "mapping",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Why a lookup gave no answer. Stable strings: they appear in alerts (`ownership_error`) and
/// traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupError {
    /// No answer within `ownership.lookup_timeout_ms` (or the backend is still busy with an
    /// earlier lookup that timed out).
    Timeout,
    /// The database could not be opened or reached.
    Unavailable,
    /// The database refused the query (missing table, permission, read-only violation...).
    QueryFailed,
    /// The query answered something that is not an owner: several rows, a non-text owner, a
    /// name that is not a valid user name.
    BadResult,
    /// Replay only: the trace holds no fact for this lookup (a line was skipped or lost).
    NotRecorded,
}

impl LookupError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::QueryFailed => "query_failed",
            Self::BadResult => "bad_result",
            Self::NotRecorded => "not_recorded",
        }
    }
}

/// One backend's answer about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The backend knows the document's owner, and maybe principals it is shared with.
    Owner {
        owner: String,
        shared_with: Vec<String>,
        /// What matched, for explanations (the mapping entry's path).
        matched: Option<String>,
    },
    /// The backend does not know this document: the next backend is asked.
    NotFound,
    /// The lookup failed: ownership is unknown, and no later backend is asked.
    Failed(LookupError),
}

impl Answer {
    /// The label value of the lookup metric for this answer.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Owner { .. } => "found",
            Self::NotFound => "not_found",
            Self::Failed(LookupError::Timeout) => "timeout",
            Self::Failed(_) => "failed",
        }
    }
}

/// A backend's answer as recorded in a trace (`EventKind::OwnershipFact`): written by the live
/// run before the event whose accesses needed it, fed back to the resolver by replay, so that a
/// replay needs neither the database nor the mapping file to give the live verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fact {
    pub backend: BackendKind,
    /// The normalized document path the lookup was for.
    pub document: String,
    /// The owner; absent when the backend does not know the document or the lookup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// What matched (a mapping entry's path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// Why the lookup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<LookupError>,
}

impl Fact {
    pub fn new(backend: BackendKind, document: &str, answer: &Answer) -> Self {
        let mut fact = Self {
            backend,
            document: document.to_owned(),
            owner: None,
            shared_with: Vec::new(),
            matched: None,
            error: None,
        };
        match answer {
            Answer::Owner {
                owner,
                shared_with,
                matched,
            } => {
                fact.owner = Some(owner.clone());
                fact.shared_with.clone_from(shared_with);
                fact.matched.clone_from(matched);
            }
            Answer::NotFound => {}
            Answer::Failed(e) => fact.error = Some(*e),
        }
        fact
    }

    pub fn answer(&self) -> Answer {
        match (&self.error, &self.owner) {
            (Some(e), _) => Answer::Failed(*e),
            (None, Some(owner)) => Answer::Owner {
                owner: owner.clone(),
                shared_with: self.shared_with.clone(),
                matched: self.matched.clone(),
            },
            (None, None) => Answer::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_answers_and_json() {
        for answer in [
            Answer::Owner {
                owner: "bob".into(),
                shared_with: vec!["alice".into()],
                matched: Some("/d/bob/**".into()),
            },
            Answer::NotFound,
            Answer::Failed(LookupError::Timeout),
        ] {
            let fact = Fact::new(BackendKind::Sqlite, "/d/x.pdf", &answer);
            assert_eq!(fact.answer(), answer);
            let json = serde_json::to_string(&fact).unwrap();
            assert_eq!(serde_json::from_str::<Fact>(&json).unwrap(), fact);
        }
        let json = serde_json::to_string(&Fact::new(
            BackendKind::Postgres,
            "/d/1.pdf",
            &Answer::Owner {
                owner: "bob".into(),
                shared_with: vec![],
                matched: None,
            },
        ))
        .unwrap();
        assert_eq!(
            json,
            r#"{"backend":"postgres","document":"/d/1.pdf","owner":"bob"}"#
        );
        assert!(serde_json::from_str::<Fact>(r#"{"backend":"ldap","document":"/d"}"#).is_err());
    }
}
