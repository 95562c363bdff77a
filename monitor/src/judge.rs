//! The verdict on one access: who read, who owns, was it allowed. Pure.
use std::collections::BTreeSet;

use serde::Serialize;

use crate::{correlate::Access, ownership::OwnershipRules};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The user owns the document, or is privileged.
    Allowed,
    /// Cross-user read: the user is neither the owner nor privileged.
    Violation,
    /// The read belongs to a request that carried no usable identity.
    Unauthenticated,
    /// No request was in scope: the read cannot be tied to anyone.
    Unattributed,
    /// No ownership rule matches the document.
    UnknownOwner,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Self::Allowed,
        Self::Violation,
        Self::Unauthenticated,
        Self::Unattributed,
        Self::UnknownOwner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Violation => "violation",
            Self::Unauthenticated => "unauthenticated",
            Self::Unattributed => "unattributed",
            Self::UnknownOwner => "unknown_owner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub owner: Option<String>,
    /// Which rule decided, in words (stable strings, documented with the alert schema).
    pub rule: &'static str,
    /// The ownership template that matched, if any.
    pub template: Option<String>,
}

pub struct Judge {
    ownership: OwnershipRules,
    privileged: BTreeSet<String>,
}

impl Judge {
    pub fn new(ownership: OwnershipRules, privileged: impl IntoIterator<Item = String>) -> Self {
        Self {
            ownership,
            privileged: privileged.into_iter().collect(),
        }
    }

    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        Ok(Self::new(
            cfg.ownership()?,
            cfg.policy.privileged_users.iter().cloned(),
        ))
    }

    pub fn judge(&self, access: &Access) -> Judgement {
        let owned = self.ownership.owner_of(&access.document);
        let owner = owned.map(|(o, _)| o.to_string());
        let template = owned.map(|(_, t)| t.as_str().to_string());
        let (verdict, rule) = match &access.request {
            None => (Verdict::Unattributed, "no_request_in_scope"),
            Some(req) => match (&req.identity, &owner) {
                (None, _) => (Verdict::Unauthenticated, "request_without_identity"),
                (Some(_), None) => (Verdict::UnknownOwner, "no_ownership_rule_matches"),
                (Some(id), Some(owner)) if &id.user == owner => (Verdict::Allowed, "user_is_owner"),
                (Some(id), Some(_)) if self.privileged.contains(&id.user) => {
                    (Verdict::Allowed, "user_is_privileged")
                }
                (Some(_), Some(_)) => (Verdict::Violation, "cross_user_read"),
            },
        };
        Judgement {
            verdict,
            owner,
            rule,
            template,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{Evidence, RequestInfo},
        identity::{Identity, IdentitySource},
    };

    fn judge() -> Judge {
        let tpl = "/srv/users/{owner}/**".parse().unwrap();
        Judge::new(OwnershipRules::new(vec![tpl]), ["agent".to_string()])
    }

    fn access(user: Option<&str>, doc: &str, attributed: bool) -> Access {
        let request = attributed.then(|| RequestInfo {
            id: 1,
            method: "GET".into(),
            target: "/x".into(),
            identity: user.map(|u| Identity {
                user: u.into(),
                source: IdentitySource::TrustedHeader,
            }),
            identity_problem: None,
            head_truncated: false,
            status: None,
            tid: 1,
            fd: 4,
            ts_ns: 0,
        });
        Access {
            id: 1,
            pid: 1,
            tid: 1,
            comm: "p".into(),
            document: doc.into(),
            bytes: 10,
            first_ts_ns: 0,
            last_ts_ns: 0,
            evidence: vec![Evidence::Thread],
            request,
        }
    }

    #[test]
    fn verdicts() {
        let j = judge();
        let v = |u, d, a| j.judge(&access(u, d, a));
        assert_eq!(
            v(Some("alice"), "/srv/users/alice/a.pdf", true).verdict,
            Verdict::Allowed
        );
        let cross = v(Some("alice"), "/srv/users/bob/a.pdf", true);
        assert_eq!(
            (cross.verdict, cross.owner.as_deref()),
            (Verdict::Violation, Some("bob"))
        );
        assert_eq!(
            v(Some("agent"), "/srv/users/bob/a.pdf", true).rule,
            "user_is_privileged"
        );
        assert_eq!(
            v(None, "/srv/users/bob/a.pdf", true).verdict,
            Verdict::Unauthenticated
        );
        assert_eq!(
            v(Some("alice"), "/srv/users/bob/a.pdf", false).verdict,
            Verdict::Unattributed
        );
        assert_eq!(
            v(Some("alice"), "/srv/other/a.pdf", true).verdict,
            Verdict::UnknownOwner
        );
    }

    #[test]
    fn owner_is_reported_even_when_unattributed() {
        let j = judge().judge(&access(None, "/srv/users/bob/a.pdf", false));
        assert_eq!(j.owner.as_deref(), Some("bob"));
        assert_eq!(j.template.as_deref(), Some("/srv/users/{owner}/**"));
    }
}
