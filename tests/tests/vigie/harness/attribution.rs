//! Attribution under load: a deterministic mix of own and cross-user requests from every demo
//! user at once, the accesses it must produce, and the score of what Vigie alerted (one scoring
//! for every portal: the demo portal's models, Go, Node.js, FastCGI).

use std::{collections::BTreeMap, fmt, path::Path};

use serde_json::Value;
use vigie_tests::{
    client::KeepAlive,
    portal::{DOCUMENTS, USERS},
};

use super::verdicts;

/// An access alert as (verdict, user, owner, document).
pub type Access = (String, String, String, String);

/// Every user's keep-alive connections, each making `requests` requests picked by a small
/// deterministic generator (`seed`: user multiplier and offset, connection multiplier), about
/// half of them cross-user.
pub struct Mix {
    pub connections: usize,
    pub requests: usize,
    pub seed: (u64, u64, u64),
    /// Also check each body against the generated document.
    pub check_bodies: bool,
}

impl Mix {
    /// The requests one connection makes: (owner, document).
    pub fn plan(&self, user_index: usize, conn: usize) -> Vec<(&'static str, &'static str)> {
        let (user_mul, user_offset, conn_mul) = self.seed;
        let mut state = (user_index as u64 + user_offset) * user_mul + conn as u64 * conn_mul;
        (0..self.requests)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let r = (state >> 33) as usize;
                let owner = if r.is_multiple_of(2) {
                    USERS[user_index]
                } else {
                    USERS[(user_index + 1 + r / 2 % (USERS.len() - 1)) % USERS.len()]
                };
                (owner, DOCUMENTS[r / 7 % DOCUMENTS.len()])
            })
            .collect()
    }

    /// Runs every user's connections at once against `addr` (`X-Remote-User` identity), every
    /// request answered 200; returns the accesses expected of documents under `users`.
    pub fn run(&self, addr: &str, users: &Path) -> BTreeMap<Access, usize> {
        std::thread::scope(|s| {
            for (i, user) in USERS.iter().enumerate() {
                for conn in 0..self.connections {
                    s.spawn(move || {
                        let mut c = KeepAlive::connect(addr).expect("connecting");
                        for (owner, doc) in self.plan(i, conn) {
                            let (status, body) = c
                                .get(&format!("/docs/{owner}/{doc}"), &[("X-Remote-User", user)])
                                .expect("request");
                            assert_eq!(status, 200);
                            if self.check_bodies {
                                assert_eq!(body, vigie_tests::portal::document_content(owner, doc));
                            }
                        }
                    });
                }
            }
        });
        let mut expected = BTreeMap::new();
        for (i, user) in USERS.iter().enumerate() {
            for conn in 0..self.connections {
                for (owner, doc) in self.plan(i, conn) {
                    let verdict = if owner == *user {
                        "allowed"
                    } else {
                        "violation"
                    };
                    let path = users.join(owner).join(doc).display().to_string();
                    *expected
                        .entry((verdict.into(), (*user).into(), owner.into(), path))
                        .or_insert(0) += 1;
                }
            }
        }
        expected
    }
}

/// What Vigie's access alerts got right against the expected accesses (multisets).
pub struct Score {
    pub expected: usize,
    /// Alerts matching an expected access.
    pub right: usize,
    /// Alerts naming a request that did not make that access: a wrong user, or the right
    /// user's verdict on a document they did not read. Must be 0.
    pub wrong: usize,
    /// `unattributed` alerts: evidence did not single out a request.
    pub unattributed: usize,
    /// Expected accesses without a matching alert.
    pub missed: usize,
    /// Every access alert, counted.
    pub found: BTreeMap<Access, usize>,
    /// The alerts counted by their evidence list, for the report.
    pub by_evidence: BTreeMap<String, usize>,
}

impl Score {
    pub fn of(expected: &BTreeMap<Access, usize>, alerts: &[Value]) -> Self {
        let mut found = BTreeMap::new();
        for v in verdicts(alerts) {
            *found.entry(v).or_insert(0) += 1;
        }
        let (mut right, mut wrong, mut unattributed) = (0, 0, 0);
        for (k, &n) in &found {
            if k.0 == "unattributed" {
                unattributed += n;
                continue;
            }
            let e = expected.get(k).copied().unwrap_or(0);
            right += n.min(e);
            wrong += n.saturating_sub(e);
        }
        let total = expected.values().sum::<usize>();
        Self {
            expected: total,
            right,
            wrong,
            unattributed,
            missed: total - right,
            found,
            by_evidence: evidence_counts(alerts),
        }
    }

    /// Right among attributed alerts (1 when nothing was attributed).
    pub fn precision(&self) -> f64 {
        if self.right + self.wrong == 0 {
            return 1.0;
        }
        self.right as f64 / (self.right + self.wrong) as f64
    }

    /// Expected accesses found (1 when none was expected).
    pub fn recall(&self) -> f64 {
        self.right as f64 / self.expected.max(1) as f64
    }

    /// The alerts beyond what was expected, for a failure message.
    pub fn wrong_ones(&self, expected: &BTreeMap<Access, usize>) -> Vec<(&Access, usize)> {
        self.found
            .iter()
            .filter(|(k, n)| k.0 != "unattributed" && **n > expected.get(*k).copied().unwrap_or(0))
            .map(|(k, n)| (k, *n))
            .collect()
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accesses: {} right, {} wrong, {} unattributed, {} missed; precision {:.3}, \
             recall {:.3}; evidence {:?}",
            self.expected,
            self.right,
            self.wrong,
            self.unattributed,
            self.missed,
            self.precision(),
            self.recall(),
            self.by_evidence
        )
    }
}

/// Alerts counted by their evidence list (`["fingerprint"]`, `["goroutine"]`, ...).
fn evidence_counts(alerts: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in alerts.iter().filter_map(|a| a["evidence"].as_array()) {
        *counts.entry(format!("{e:?}")).or_default() += 1;
    }
    counts
}
