//! From alerts to incidents: judged accesses in, incident ids and enumeration findings out.
//! Pure and deterministic like the correlator and the judge: time is the accesses' own
//! timestamps (never a clock), state is kept in ordered maps, so replay of a trace gives the
//! incidents of the live run.
//!
//! - **Incidents.** Alerts that name a user (violations, enumerations) are grouped by user and
//!   session handle: an alert within [`IncidentConfig::window_s`] of the incident's last alert
//!   joins it, a later one opens a new incident. Forged-token violations, which name no user, are
//!   grouped by client address. Every alert line carries its incident's id.
//! - **Enumeration.** A user reading documents of [`Rule::owners`] distinct other owners within
//!   [`Rule::window_s`] (violations only) is an `enumeration`: one finding when the threshold is
//!   crossed, then none until the user's window falls back under it.
//! - **Privileged bulk reads.** The same count over reads that were each `allowed` because the
//!   user (or a role) is privileged: what an agent's account bulk-reading documents looks like.
//!   A rule of its own, with its own threshold.
use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{
    client::Client,
    correlate::Access,
    judge::{Judgement, Verdict},
};

const NS: u64 = 1_000_000_000;

/// The rules of `[incidents]` (the daemon's section adds the session key file and the webhook).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentConfig {
    /// Alerts of one user and session this close together (seconds) are one incident.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Cross-user reads of many owners (`enumeration`); absent: off.
    #[serde(default = "default_enumeration")]
    pub enumeration: Option<Rule>,
    /// Privileged reads of many owners (`privileged_bulk`); absent: off.
    #[serde(default = "default_privileged_bulk")]
    pub privileged_bulk: Option<Rule>,
}

fn default_window_s() -> u64 {
    1800
}

fn default_enumeration() -> Option<Rule> {
    Some(Rule {
        owners: 5,
        window_s: 600,
    })
}

fn default_privileged_bulk() -> Option<Rule> {
    Some(Rule {
        owners: 20,
        window_s: 600,
    })
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            window_s: default_window_s(),
            enumeration: default_enumeration(),
            privileged_bulk: default_privileged_bulk(),
        }
    }
}

impl IncidentConfig {
    /// `(field, reason)` of the first bad setting.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.window_s == 0 {
            return Err(("incidents.window_s".into(), "must be positive".into()));
        }
        for (name, rule) in [
            ("enumeration", &self.enumeration),
            ("privileged_bulk", &self.privileged_bulk),
        ] {
            if let Some(r) = rule {
                if r.owners < 2 {
                    return Err((
                        format!("incidents.{name}.owners"),
                        "must be at least 2 (one other owner is a single violation)".into(),
                    ));
                }
                if r.window_s == 0 {
                    return Err((
                        format!("incidents.{name}.window_s"),
                        "must be positive".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A threshold of distinct owners within a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Distinct owners (other than the user) that make the finding.
    pub owners: usize,
    /// Length of the sliding window, seconds.
    pub window_s: u64,
}

/// Which rule an [`Enumeration`] crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Enumeration,
    PrivilegedBulk,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enumeration => "enumeration",
            Self::PrivilegedBulk => "privileged_bulk",
        }
    }
}

/// A user crossed a rule's threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enumeration {
    pub rule: RuleKind,
    pub user: String,
    /// Session handle of the read that crossed the threshold.
    pub session: Option<String>,
    pub client: Option<Client>,
    /// Distinct owners and documents read within the window.
    pub owners: usize,
    pub documents: usize,
    pub threshold: usize,
    pub window_s: u64,
    /// First and last read counted (monotonic ns, as accesses carry them).
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// Access ids of the reads counted, oldest first.
    pub access_ids: Vec<u64>,
}

/// What [`Incidents::observe`] makes of one judged access.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The incident the access's alert line belongs to (`None` for lines no incident groups:
    /// allowed, unattributed, unauthenticated without a client, unknown owner).
    pub incident: Option<IncidentRef>,
    /// Thresholds this access made a user cross, each with its incident.
    pub enumerations: Vec<(Enumeration, IncidentRef)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRef {
    pub id: String,
    /// The incident was opened by this line: page, call the hook.
    pub opened: bool,
}

#[derive(Debug, Clone)]
struct Read {
    ts_ns: u64,
    owner: String,
    document: String,
    access_id: u64,
}

#[derive(Debug, Default)]
struct Window {
    reads: VecDeque<Read>,
    /// How many of `reads` each owner has: the distinct owners without sorting the window at
    /// every read (that sort was a quarter of the daemon's CPU under a steady cross-user load).
    owners: HashMap<String, usize>,
    /// The threshold was crossed and the window has not fallen back under it.
    fired: bool,
}

impl Window {
    /// Adds a read, forgets reads older than `window_ns` before it (and the oldest past
    /// `MAX_WINDOW_READS`); the distinct owners then.
    fn push(&mut self, read: Read, window_ns: u64) -> usize {
        let horizon = read.ts_ns.saturating_sub(window_ns);
        *self.owners.entry(read.owner.clone()).or_default() += 1;
        self.reads.push_back(read);
        // Accesses are judged roughly, not strictly, in time order: keep the deque sorted.
        let mut i = self.reads.len() - 1;
        while i > 0 && self.reads[i - 1].ts_ns > self.reads[i].ts_ns {
            self.reads.swap(i - 1, i);
            i -= 1;
        }
        while self.reads.front().is_some_and(|r| r.ts_ns < horizon)
            || self.reads.len() > MAX_WINDOW_READS
        {
            self.pop_front();
        }
        self.owners.len()
    }

    fn pop_front(&mut self) {
        let Some(read) = self.reads.pop_front() else {
            return;
        };
        if let Some(n) = self.owners.get_mut(&read.owner) {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(&read.owner);
            }
        }
    }
}

#[derive(Debug)]
struct Open {
    id: String,
    last_ts_ns: u64,
}

/// Most reads a user's window keeps: a bound on memory under a flood, far above any threshold
/// (the oldest are dropped first, which can only delay a finding, never invent one).
const MAX_WINDOW_READS: usize = 4096;

pub struct Incidents {
    cfg: IncidentConfig,
    windows: BTreeMap<(RuleKind, String), Window>,
    /// Open incidents by (user or client, session handle).
    open: BTreeMap<(String, Option<String>), Open>,
    /// Latest access time seen: what expires state.
    now_ns: u64,
}

impl Incidents {
    pub fn new(cfg: IncidentConfig) -> Self {
        Self {
            cfg,
            windows: BTreeMap::new(),
            open: BTreeMap::new(),
            now_ns: 0,
        }
    }

    /// Incidents and users tracked now (for the metrics gauges and tests).
    pub fn tracked(&self) -> (usize, usize) {
        (self.open.len(), self.windows.len())
    }

    /// Groups `access`'s alert into an incident and counts it toward the rules.
    pub fn observe(&mut self, access: &Access, judgement: &Judgement) -> Observed {
        let ts = access.first_ts_ns;
        if ts > self.now_ns {
            self.now_ns = ts;
            self.expire();
        }
        let request = access.request.as_ref();
        let user = request
            .and_then(|r| r.identity.as_ref())
            .map(|i| i.user.as_str());
        let session = request.and_then(|r| r.session.clone());
        let client = request.and_then(|r| r.client.clone());
        let mut out = Observed::default();
        let rule = match (judgement.verdict, judgement.rule) {
            (Verdict::Violation, _) => self.cfg.enumeration.map(|r| (RuleKind::Enumeration, r)),
            (Verdict::Allowed, "user_is_privileged" | "role_is_privileged") => self
                .cfg
                .privileged_bulk
                .map(|r| (RuleKind::PrivilegedBulk, r)),
            _ => None,
        };
        if judgement.verdict == Verdict::Violation {
            let key = match (user, client.as_ref().and_then(|c| c.ip)) {
                (Some(u), _) => Some(format!("user:{u}")),
                (None, Some(ip)) => Some(format!("client:{ip}")),
                (None, None) => None,
            };
            out.incident = key.map(|k| self.incident(k, session.clone(), ts, access.id));
        }
        if let (Some((kind, rule)), Some(user), Some(owner)) = (rule, user, &judgement.owner)
            && owner != user
        {
            let window = self.windows.entry((kind, user.to_owned())).or_default();
            let owners = window.push(
                Read {
                    ts_ns: ts,
                    owner: owner.clone(),
                    document: access.document.clone(),
                    access_id: access.id,
                },
                rule.window_s.saturating_mul(NS),
            );
            if owners < rule.owners {
                window.fired = false;
            } else if !window.fired {
                window.fired = true;
                let mut documents: Vec<&str> =
                    window.reads.iter().map(|r| r.document.as_str()).collect();
                documents.sort_unstable();
                documents.dedup();
                let found = Enumeration {
                    rule: kind,
                    user: user.to_owned(),
                    session: session.clone(),
                    client,
                    owners,
                    documents: documents.len(),
                    threshold: rule.owners,
                    window_s: rule.window_s,
                    first_ts_ns: window.reads.front().map_or(ts, |r| r.ts_ns),
                    last_ts_ns: window.reads.back().map_or(ts, |r| r.ts_ns),
                    access_ids: window.reads.iter().map(|r| r.access_id).collect(),
                };
                let incident = self.incident(format!("user:{user}"), session, ts, access.id);
                out.enumerations.push((found, incident));
            }
        }
        out
    }

    /// The incident of `key` and `session` at `ts`: the open one, or a new one.
    fn incident(
        &mut self,
        key: String,
        session: Option<String>,
        ts: u64,
        access: u64,
    ) -> IncidentRef {
        let window = self.cfg.window_s.saturating_mul(NS);
        let slot = (key, session);
        if let Some(open) = self.open.get_mut(&slot)
            && ts.saturating_sub(open.last_ts_ns) <= window
        {
            open.last_ts_ns = open.last_ts_ns.max(ts);
            return IncidentRef {
                id: open.id.clone(),
                opened: false,
            };
        }
        let id = incident_id(&slot.0, slot.1.as_deref(), ts, access);
        self.open.insert(
            slot,
            Open {
                id: id.clone(),
                last_ts_ns: ts,
            },
        );
        IncidentRef { id, opened: true }
    }

    /// Forgets incidents and windows nothing can join any more.
    fn expire(&mut self) {
        let now = self.now_ns;
        let incident_window = self.cfg.window_s.saturating_mul(NS);
        self.open
            .retain(|_, o| now.saturating_sub(o.last_ts_ns) <= incident_window);
        let window_of = |kind: RuleKind| {
            match kind {
                RuleKind::Enumeration => self.cfg.enumeration,
                RuleKind::PrivilegedBulk => self.cfg.privileged_bulk,
            }
            .map_or(0, |r| r.window_s.saturating_mul(NS))
        };
        self.windows.retain(|(kind, _), w| {
            w.reads
                .back()
                .is_some_and(|r| now.saturating_sub(r.ts_ns) <= window_of(*kind))
        });
    }
}

/// A stable id: the same alerts give the same id in replay; another run's incidents (other
/// times) get other ids.
fn incident_id(key: &str, session: Option<&str>, ts: u64, access: u64) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(session.unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(ts.to_le_bytes());
    h.update(access.to_le_bytes());
    let d = h.finalize();
    let hex: String = d[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("inc-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::RequestInfo,
        identity::{Identity, IdentitySource},
    };

    fn access(id: u64, ts_s: u64, user: Option<&str>, session: Option<&str>, doc: &str) -> Access {
        Access {
            id,
            pid: 1,
            tid: 1,
            comm: "portal".into(),
            document: doc.into(),
            bytes: 10,
            first_ts_ns: ts_s * NS,
            last_ts_ns: ts_s * NS,
            evidence: Vec::new(),
            unattributed: None,
            request: Some(RequestInfo {
                id,
                method: "GET".into(),
                target: doc.into(),
                identity: user.map(|u| Identity {
                    user: u.into(),
                    source: IdentitySource::Jwt,
                    roles: Vec::new(),
                }),
                identity_problem: None,
                head_truncated: false,
                status: None,
                tid: 1,
                fd: 5,
                ts_ns: ts_s * NS,
                peer: None,
                client: None,
                session: session.map(Into::into),
            }),
        }
    }

    fn judged(verdict: Verdict, rule: &'static str, owner: &str) -> Judgement {
        Judgement {
            verdict,
            owner: Some(owner.into()),
            rule,
            template: None,
            owner_source: None,
            shared_with: Vec::new(),
            ownership_error: None,
        }
    }

    fn violation(owner: &str) -> Judgement {
        judged(Verdict::Violation, "cross_user_read", owner)
    }

    #[test]
    fn enumeration_fires_once_when_the_threshold_is_crossed() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let mut found = Vec::new();
        let mut ids = Vec::new();
        // 8 owners, two documents each, within a minute: crossed at the 5th owner, once.
        for i in 0..16u64 {
            let owner = format!("u{}", i / 2);
            let a = access(
                i + 1,
                100 + i,
                Some("mallory"),
                Some("jti:x"),
                &format!("/d/{owner}/{i}"),
            );
            let o = inc.observe(&a, &violation(&owner));
            ids.push(o.incident.clone().unwrap().id);
            found.extend(o.enumerations.into_iter().map(|(e, i)| (a.id, e, i)));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        let (at, e, incident) = &found[0];
        assert_eq!(*at, 9, "the first read of the fifth owner");
        assert_eq!((e.owners, e.documents, e.threshold), (5, 9, 5));
        assert_eq!(e.first_ts_ns, 100 * NS);
        assert_eq!(e.last_ts_ns, 108 * NS);
        assert_eq!(e.access_ids, (1..=9).collect::<Vec<_>>());
        // All the lines, and the enumeration, are one incident, opened by the first line.
        assert!(ids.iter().all(|i| *i == ids[0]));
        assert_eq!(incident.id, ids[0]);
        assert!(!incident.opened);
    }

    #[test]
    fn the_window_slides_and_re_arms() {
        let cfg = IncidentConfig {
            enumeration: Some(Rule {
                owners: 3,
                window_s: 10,
            }),
            ..IncidentConfig::default()
        };
        let mut inc = Incidents::new(cfg);
        let count = |inc: &mut Incidents, id: u64, ts: u64, owner: &str| {
            inc.observe(
                &access(id, ts, Some("eve"), None, &format!("/d/{owner}")),
                &violation(owner),
            )
            .enumerations
            .len()
        };
        // Three owners but spread over more than the window: nothing.
        assert_eq!(count(&mut inc, 1, 0, "a"), 0);
        assert_eq!(count(&mut inc, 2, 6, "b"), 0);
        assert_eq!(count(&mut inc, 3, 12, "c"), 0);
        // Within the window now (b, c, d): found; more owners do not find it again.
        assert_eq!(count(&mut inc, 4, 14, "d"), 1);
        assert_eq!(count(&mut inc, 5, 15, "e"), 0);
        // The window empties, then fills again: a second finding.
        assert_eq!(count(&mut inc, 6, 40, "f"), 0);
        assert_eq!(count(&mut inc, 7, 41, "g"), 0);
        assert_eq!(count(&mut inc, 8, 42, "h"), 1);
    }

    #[test]
    fn privileged_bulk_reads_are_a_rule_of_their_own() {
        let cfg = IncidentConfig {
            privileged_bulk: Some(Rule {
                owners: 3,
                window_s: 60,
            }),
            ..IncidentConfig::default()
        };
        let mut inc = Incidents::new(cfg);
        let mut found = Vec::new();
        for (i, owner) in ["a", "b", "c", "d"].iter().enumerate() {
            let a = access(i as u64 + 1, 5, Some("agent"), None, &format!("/d/{owner}"));
            let o = inc.observe(&a, &judged(Verdict::Allowed, "user_is_privileged", owner));
            // Allowed lines belong to no incident until a rule finds them.
            assert_eq!(o.incident, None);
            found.extend(o.enumerations);
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.rule, RuleKind::PrivilegedBulk);
        assert!(found[0].1.opened);
        // Owners reading their own documents never count.
        let mut inc = Incidents::new(IncidentConfig::default());
        for i in 0..50 {
            let a = access(i, 5, Some("alice"), None, &format!("/d/alice/{i}"));
            let o = inc.observe(&a, &judged(Verdict::Allowed, "user_is_owner", "alice"));
            assert!(o.enumerations.is_empty() && o.incident.is_none());
        }
    }

    #[test]
    fn incidents_split_by_session_and_by_quiet_time() {
        let mut inc = Incidents::new(IncidentConfig::default());
        let id = |inc: &mut Incidents, n: u64, ts: u64, session: &str| {
            inc.observe(
                &access(n, ts, Some("eve"), Some(session), "/d/bob/1"),
                &violation("bob"),
            )
            .incident
            .unwrap()
        };
        let first = id(&mut inc, 1, 10, "s:1");
        assert!(first.opened);
        let again = id(&mut inc, 2, 20, "s:1");
        assert_eq!(
            (again.id.as_str(), again.opened),
            (first.id.as_str(), false)
        );
        let other_session = id(&mut inc, 3, 30, "s:2");
        assert!(other_session.opened && other_session.id != first.id);
        // Quiet for longer than the window: a new incident.
        let later = id(&mut inc, 4, 30 + 1801, "s:1");
        assert!(later.opened && later.id != first.id);
        assert_eq!(inc.tracked().0, 1, "the other session's incident expired");
    }

    #[test]
    fn same_input_same_ids() {
        let run = || {
            let mut inc = Incidents::new(IncidentConfig::default());
            (0..20u64)
                .map(|i| {
                    let owner = format!("o{i}");
                    let o = inc.observe(&access(i, i, Some("eve"), None, "/d"), &violation(&owner));
                    (o.incident, o.enumerations)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut cfg = IncidentConfig {
            enumeration: Some(Rule {
                owners: 1,
                window_s: 5,
            }),
            ..IncidentConfig::default()
        };
        assert_eq!(cfg.check().unwrap_err().0, "incidents.enumeration.owners");
        cfg.enumeration = None;
        cfg.window_s = 0;
        assert_eq!(cfg.check().unwrap_err().0, "incidents.window_s");
    }
}
