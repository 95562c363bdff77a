//! The verdict on one access: who read, who owns, was it allowed. Pure.
use std::collections::BTreeSet;

use serde::Serialize;

use crate::{
    correlate::Access,
    identity::IdentityProblem,
    ownership::{
        Ownership,
        fact::{BackendKind, LookupError},
    },
};

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
    /// What named the owner: the ownership template, or the mapping entry's path.
    pub template: Option<String>,
    /// The ownership backend that decided (knew the owner, or failed).
    pub owner_source: Option<BackendKind>,
    /// Principals the document is shared with.
    pub shared_with: Vec<String>,
    /// Why the ownership lookup failed (verdict `unknown_owner`).
    pub ownership_error: Option<LookupError>,
}

pub struct Judge {
    privileged: BTreeSet<String>,
    privileged_roles: BTreeSet<String>,
    /// `policy.alert_forged_tokens`.
    alert_forged_tokens: bool,
}

impl Judge {
    /// A judge with these privileged users, no privileged roles, and forged-token alerts on
    /// (the configuration's defaults). Who owns what comes with each access, from the
    /// ownership resolver.
    pub fn new(privileged: impl IntoIterator<Item = String>) -> Self {
        Self {
            privileged: privileged.into_iter().collect(),
            privileged_roles: BTreeSet::new(),
            alert_forged_tokens: true,
        }
    }

    /// Roles that make a principal privileged.
    #[must_use]
    pub fn with_privileged_roles(mut self, roles: impl IntoIterator<Item = String>) -> Self {
        self.privileged_roles = roles.into_iter().collect();
        self
    }

    /// Whether reads by forged or expired tokens are violations (`policy.alert_forged_tokens`).
    #[must_use]
    pub fn with_forged_token_alerts(mut self, on: bool) -> Self {
        self.alert_forged_tokens = on;
        self
    }

    /// The rule for a request without identity: a forged or expired bearer token is an attack
    /// when it reached a document, whoever owns it.
    fn without_identity(&self, problem: Option<IdentityProblem>) -> (Verdict, &'static str) {
        match problem {
            Some(p) if self.alert_forged_tokens && p.is_forged_token() => {
                (Verdict::Violation, "forged_token")
            }
            Some(IdentityProblem::JwtExpired) if self.alert_forged_tokens => {
                (Verdict::Violation, "expired_token")
            }
            _ => (Verdict::Unauthenticated, "request_without_identity"),
        }
    }

    /// The verdict on `access`, whose document is owned as `ownership` says (taken by value:
    /// its strings move into the judgement).
    pub fn judge(&self, access: &Access, ownership: Ownership) -> Judgement {
        let owner = ownership.owner;
        let (verdict, rule) = match &access.request {
            None => (
                Verdict::Unattributed,
                access
                    .unattributed
                    .map_or("no_request_in_scope", crate::http::stream::Desync::as_str),
            ),
            Some(req) => match (&req.identity, &owner) {
                (None, _) => self.without_identity(req.identity_problem),
                (Some(_), None) => match ownership.error {
                    Some(LookupError::Timeout) => {
                        (Verdict::UnknownOwner, "ownership_lookup_timeout")
                    }
                    Some(_) => (Verdict::UnknownOwner, "ownership_lookup_failed"),
                    None => (Verdict::UnknownOwner, "no_ownership_rule_matches"),
                },
                (Some(id), Some(owner)) if &id.user == owner => (Verdict::Allowed, "user_is_owner"),
                (Some(id), Some(_)) if ownership.shared_with.contains(&id.user) => {
                    (Verdict::Allowed, "user_is_delegated")
                }
                (Some(id), Some(_)) if self.privileged.contains(&id.user) => {
                    (Verdict::Allowed, "user_is_privileged")
                }
                (Some(id), Some(_))
                    if id.roles.iter().any(|r| self.privileged_roles.contains(r)) =>
                {
                    (Verdict::Allowed, "role_is_privileged")
                }
                (Some(_), Some(_)) => (Verdict::Violation, "cross_user_read"),
            },
        };
        Judgement {
            verdict,
            owner,
            rule,
            template: ownership.matched,
            owner_source: ownership.source,
            shared_with: ownership.shared_with,
            ownership_error: ownership.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{Evidence, RequestInfo},
        identity::{Identity, IdentitySource},
        ownership::OwnershipRules,
    };

    /// Judges with ownership from the template `/srv/users/{owner}/**`.
    struct Templated(Judge, OwnershipRules);

    impl Templated {
        fn judge(&self, access: &Access) -> Judgement {
            let ownership = self.1.ownership(&access.document).unwrap_or_default();
            self.0.judge(access, ownership)
        }

        fn with_privileged_roles(self, roles: impl IntoIterator<Item = String>) -> Self {
            Self(self.0.with_privileged_roles(roles), self.1)
        }

        fn with_forged_token_alerts(self, on: bool) -> Self {
            Self(self.0.with_forged_token_alerts(on), self.1)
        }
    }

    fn judge() -> Templated {
        let tpl = "/srv/users/{owner}/**".parse().unwrap();
        Templated(
            Judge::new(["agent".to_string()]),
            OwnershipRules::new(vec![tpl]),
        )
    }

    fn access(user: Option<&str>, doc: &str, attributed: bool) -> Access {
        let request = attributed.then(|| RequestInfo {
            id: 1,
            method: "GET".into(),
            target: "/x".into(),
            identity: user.map(|u| Identity {
                user: u.into(),
                source: IdentitySource::TrustedHeader,
                roles: Vec::new(),
            }),
            identity_problem: None,
            head_truncated: false,
            status: None,
            tid: 1,
            fd: 4,
            ts_ns: 0,
            peer: None,
            client: None,
            session: None,
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
            unattributed: None,
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

    fn with_jwt(access: &mut Access, roles: &[&str], problem: Option<IdentityProblem>) {
        let req = access.request.as_mut().unwrap();
        if let Some(id) = req.identity.as_mut() {
            id.source = IdentitySource::Jwt;
            id.roles = roles.iter().map(|r| (*r).to_string()).collect();
        }
        req.identity_problem = problem;
    }

    #[test]
    fn privileged_roles() {
        let j = judge().with_privileged_roles(["agent".to_string(), "auditor".to_string()]);
        let mut a = access(Some("dana"), "/srv/users/bob/a.pdf", true);
        with_jwt(&mut a, &["reader", "auditor"], None);
        let got = j.judge(&a);
        assert_eq!(
            (got.verdict, got.rule),
            (Verdict::Allowed, "role_is_privileged")
        );
        with_jwt(&mut a, &["reader"], None);
        assert_eq!(j.judge(&a).rule, "cross_user_read");
        // A role named like a privileged user is not a privileged user, nor the reverse.
        let j = judge();
        with_jwt(&mut a, &["agent"], None);
        assert_eq!(j.judge(&a).verdict, Verdict::Violation);
        // The owner rule comes first.
        let mut own = access(Some("bob"), "/srv/users/bob/a.pdf", true);
        with_jwt(&mut own, &["agent"], None);
        let j = judge().with_privileged_roles(["agent".to_string()]);
        assert_eq!(j.judge(&own).rule, "user_is_owner");
    }

    #[test]
    fn forged_and_expired_tokens() {
        let on = judge();
        let off = judge().with_forged_token_alerts(false);
        for (problem, rule) in [
            (IdentityProblem::JwtAlgNone, "forged_token"),
            (IdentityProblem::JwtBadSignature, "forged_token"),
            (IdentityProblem::JwtExpired, "expired_token"),
        ] {
            for doc in ["/srv/users/bob/a.pdf", "/srv/other/a.pdf"] {
                let mut a = access(None, doc, true);
                with_jwt(&mut a, &[], Some(problem));
                let got = on.judge(&a);
                assert_eq!(
                    (got.verdict, got.rule),
                    (Verdict::Violation, rule),
                    "{problem:?}"
                );
                let got = off.judge(&a);
                assert_eq!(
                    (got.verdict, got.rule),
                    (Verdict::Unauthenticated, "request_without_identity")
                );
            }
        }
        for problem in [
            IdentityProblem::JwtMalformed,
            IdentityProblem::JwtNoUserClaim,
            IdentityProblem::InvalidBasic,
        ] {
            let mut a = access(None, "/srv/users/bob/a.pdf", true);
            with_jwt(&mut a, &[], Some(problem));
            assert_eq!(on.judge(&a).rule, "request_without_identity");
        }
        // Another source named the user: judged as that user, the problem only reported.
        let mut a = access(Some("bob"), "/srv/users/bob/a.pdf", true);
        with_jwt(&mut a, &[], Some(IdentityProblem::JwtBadSignature));
        assert_eq!(on.judge(&a).rule, "user_is_owner");
        // Unattributed reads have no request, hence no token.
        let a = access(None, "/srv/users/bob/a.pdf", false);
        assert_eq!(on.judge(&a).verdict, Verdict::Unattributed);
    }

    #[test]
    fn owner_is_reported_even_when_unattributed() {
        let j = judge().judge(&access(None, "/srv/users/bob/a.pdf", false));
        assert_eq!(j.owner.as_deref(), Some("bob"));
        assert_eq!(j.template.as_deref(), Some("/srv/users/{owner}/**"));
        assert_eq!(j.owner_source, Some(BackendKind::Templates));
    }

    fn owned_by(owner: Option<&str>, shared: &[&str], error: Option<LookupError>) -> Ownership {
        Ownership {
            owner: owner.map(str::to_owned),
            shared_with: shared.iter().map(|s| (*s).to_owned()).collect(),
            source: Some(BackendKind::Sqlite),
            matched: None,
            error,
        }
    }

    #[test]
    fn delegated_principals_and_failed_lookups() {
        let j = Judge::new(["agent".to_string()]);
        let read = |user: Option<&str>, o: &Ownership| {
            let got = j.judge(&access(user, "/srv/docs/1.pdf", true), o.clone());
            (got.verdict, got.rule, got.owner)
        };
        let shared = owned_by(Some("bob"), &["alice"], None);
        let bob = Some("bob".to_string());
        assert_eq!(
            read(Some("alice"), &shared),
            (Verdict::Allowed, "user_is_delegated", bob.clone())
        );
        assert_eq!(
            read(Some("bob"), &shared),
            (Verdict::Allowed, "user_is_owner", bob.clone())
        );
        // Not delegated: the alert still names the owner.
        assert_eq!(
            read(Some("carol"), &shared),
            (Verdict::Violation, "cross_user_read", bob.clone())
        );
        assert_eq!(read(Some("agent"), &shared).1, "user_is_privileged");
        assert_eq!(read(None, &shared).0, Verdict::Unauthenticated);
        let got = j.judge(
            &access(Some("alice"), "/srv/docs/1.pdf", true),
            shared.clone(),
        );
        assert_eq!(
            (got.owner_source, got.shared_with),
            (Some(BackendKind::Sqlite), vec!["alice".to_string()])
        );
        let timeout = owned_by(None, &[], Some(LookupError::Timeout));
        assert_eq!(
            read(Some("alice"), &timeout),
            (Verdict::UnknownOwner, "ownership_lookup_timeout", None)
        );
        for e in [
            LookupError::Unavailable,
            LookupError::QueryFailed,
            LookupError::BadResult,
        ] {
            let failed = owned_by(None, &[], Some(e));
            assert_eq!(
                read(Some("alice"), &failed),
                (Verdict::UnknownOwner, "ownership_lookup_failed", None)
            );
            assert_eq!(
                j.judge(&access(Some("alice"), "/d", true), failed.clone())
                    .ownership_error,
                Some(e)
            );
            // Identity problems and missing requests are judged first, as before.
            assert_eq!(read(None, &failed).0, Verdict::Unauthenticated);
        }
        let unknown = Ownership::default();
        assert_eq!(read(Some("alice"), &unknown).1, "no_ownership_rule_matches");
    }
}
