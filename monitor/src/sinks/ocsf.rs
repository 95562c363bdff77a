//! Alerts as OCSF events (Open Cybersecurity Schema Framework, schema 1.3.0), for SIEMs that
//! ingest OCSF natively (`vigie run --alerts-format ocsf`).
//!
//! - A judged access is a **File System Activity** (`class_uid` 1001, category System Activity)
//!   with activity **Read** (`activity_id` 2, `type_uid` 100102): the actor is the portal process
//!   and the user its request was authenticated as, the file is the document and its owner.
//! - A coverage gap (events lost) has no OCSF class of its own: it is a **Base Event**
//!   (`class_uid` 0) with activity Other, so that the SIEM sees Vigie's blind spots in the same
//!   stream.
//!
//! What OCSF has no attribute for (verdict, rule, evidence, the HTTP request) is kept under
//! `unmapped`, with the names of the `vigie.alert/1` schema. The mapping is documented in
//! `docs/src/operators/ocsf.md`.
use monitor_core::{
    correlate::Access,
    judge::{Judgement, Verdict},
    walltime::WallClock,
};
use serde_json::{Value, json};

use super::ALERT_SCHEMA as SCHEMA;

pub const OCSF_VERSION: &str = "1.3.0";

/// OCSF severity for a verdict: what a SOC analyst should look at first.
fn severity(verdict: Verdict) -> (u8, &'static str) {
    match verdict {
        Verdict::Violation => (4, "High"),
        Verdict::Unauthenticated => (3, "Medium"),
        Verdict::Unattributed | Verdict::UnknownOwner => (2, "Low"),
        Verdict::Allowed => (1, "Informational"),
    }
}

/// OCSF `src_endpoint` (Network Endpoint) of a client: `ip` and `port`, or `type` `unix` for a
/// unix socket peer (no address).
fn src_endpoint(c: &monitor_core::client::Client) -> Value {
    let mut e = json!({});
    if let Some(ip) = c.ip {
        e["ip"] = json!(ip.to_string());
    }
    if let Some(port) = c.port {
        e["port"] = json!(port);
    }
    if c.family == "unix" {
        e["type"] = json!("unix");
    }
    if !c.proxies.is_empty() {
        e["intermediate_ips"] = json!(
            c.proxies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }
    e
}

/// Writes OCSF events for one host.
#[derive(Debug, Clone)]
pub struct Ocsf {
    hostname: String,
}

/// This machine's name (`uname -n`), or empty when unknown.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

impl Ocsf {
    pub fn new(hostname: String) -> Self {
        Self { hostname }
    }

    fn metadata(&self, event_code: &str, uid: Option<String>) -> Value {
        let mut m = json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "Vigie",
                "vendor_name": "Vigie",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "event_code": event_code,
            "log_name": SCHEMA,
        });
        if let Some(uid) = uid {
            m["uid"] = Value::String(uid);
        }
        m
    }

    fn device(&self) -> Value {
        json!({ "hostname": self.hostname, "type_id": 0, "type": "Unknown" })
    }

    /// A judged document read as a File System Activity: Read.
    pub fn access(
        &self,
        access: &Access,
        judgement: &Judgement,
        incident: Option<&str>,
        clock: &WallClock,
    ) -> Value {
        let identity = access.request.as_ref().and_then(|r| r.identity.as_ref());
        let (severity_id, severity) = severity(judgement.verdict);
        let time_ms = clock.unix_ns(access.first_ts_ns).div_euclid(1_000_000);
        let mut actor = json!({
            "process": {
                "pid": access.pid,
                "tid": access.tid,
                "name": access.comm,
            },
        });
        if let Some(id) = identity {
            actor["user"] = json!({ "name": id.user });
        }
        let name = access
            .document
            .rsplit('/')
            .next()
            .unwrap_or(&access.document);
        let mut file =
            json!({ "path": access.document, "name": name, "type_id": 1, "type": "Regular File" });
        if let Some(owner) = &judgement.owner {
            file["owner"] = json!({ "name": owner });
        }
        let message = match (judgement.verdict, identity, &judgement.owner) {
            (Verdict::Violation, Some(id), Some(owner)) => {
                format!(
                    "cross-user document read: {} read a document of {owner}",
                    id.user
                )
            }
            (v, _, _) => format!("document read: {}", v.as_str()),
        };
        let mut event = json!({
            "class_uid": 1001,
            "class_name": "File System Activity",
            "category_uid": 1,
            "category_name": "System Activity",
            "activity_id": 2,
            "activity_name": "Read",
            "type_uid": 100102,
            "type_name": "File System Activity: Read",
            "time": time_ms,
            "timezone_offset": 0,
            "severity_id": severity_id,
            "severity": severity,
            "status_id": 1,
            "status": "Success",
            "message": message,
            "metadata": self.metadata(judgement.verdict.as_str(), Some(access.id.to_string())),
            "device": self.device(),
            "actor": actor,
            "file": file,
            "unmapped": {
                "schema": SCHEMA,
                "verdict": judgement.verdict,
                "rule": judgement.rule,
                "owner_source": judgement.owner_source,
                "identity_source": identity.map(|i| i.source),
                "evidence": access.evidence,
                "bytes": access.bytes,
                "access_id": access.id,
                "request": access.request,
            },
        });
        if !judgement.shared_with.is_empty() {
            event["unmapped"]["shared_with"] = json!(judgement.shared_with);
        }
        if let Some(e) = judgement.ownership_error {
            event["unmapped"]["ownership_error"] = json!(e);
        }
        let request = access.request.as_ref();
        if let Some(endpoint) = request.and_then(|r| r.client.as_ref()).map(src_endpoint) {
            event["src_endpoint"] = endpoint;
        }
        if let Some(session) = request.and_then(|r| r.session.as_ref()) {
            // OCSF's actor.session: uid is the session's identifier, here its handle.
            event["actor"]["session"] = json!({ "uid": session });
        }
        if let Some(id) = incident {
            event["unmapped"]["incident"] = json!(id);
        }
        event
    }

    /// A user crossed an enumeration rule: a Detection Finding would need a finding object
    /// OCSF 1.3 ties to a product's analytic; a Base Event with the counts in `unmapped` is
    /// what SIEMs take without a custom class.
    pub fn enumeration(
        &self,
        found: &monitor_core::incident::Enumeration,
        incident: &str,
        clock: &WallClock,
    ) -> Value {
        let mut event = json!({
            "class_uid": 0,
            "class_name": "Base Event",
            "category_uid": 0,
            "category_name": "Uncategorized",
            "activity_id": 99,
            "activity_name": "Other",
            "type_uid": 99,
            "type_name": "Base Event: Other",
            "time": clock.unix_ns(found.last_ts_ns).div_euclid(1_000_000),
            "timezone_offset": 0,
            "severity_id": 4,
            "severity": "High",
            "status_id": 1,
            "status": "Success",
            "message": format!(
                "{}: {} read documents of {} owners within {} s",
                found.rule.as_str(), found.user, found.owners, found.window_s
            ),
            "metadata": self.metadata(found.rule.as_str(), None),
            "device": self.device(),
            "actor": { "user": { "name": found.user } },
            "unmapped": {
                "schema": SCHEMA,
                "type": found.rule.as_str(),
                "owners": found.owners,
                "documents": found.documents,
                "threshold": found.threshold,
                "window_s": found.window_s,
                "first_access": clock.rfc3339(found.first_ts_ns),
                "last_access": clock.rfc3339(found.last_ts_ns),
                "access_ids": found.access_ids,
                "incident": incident,
            },
        });
        if let Some(c) = &found.client {
            event["src_endpoint"] = src_endpoint(c);
        }
        if let Some(s) = &found.session {
            event["actor"]["session"] = json!({ "uid": s });
        }
        event
    }

    /// Events lost in the kernel: a Base Event, activity Other.
    pub fn gap(&self, ts_ns: u64, reason: &str, count: u64, clock: &WallClock) -> Value {
        json!({
            "class_uid": 0,
            "class_name": "Base Event",
            "category_uid": 0,
            "category_name": "Uncategorized",
            "activity_id": 99,
            "activity_name": "Other",
            "type_uid": 99,
            "type_name": "Base Event: Other",
            "time": clock.unix_ns(ts_ns).div_euclid(1_000_000),
            "timezone_offset": 0,
            "severity_id": 3,
            "severity": "Medium",
            "status_id": 2,
            "status": "Failure",
            "message": format!("{count} events lost in the kernel ({reason}): Vigie was blind"),
            "metadata": self.metadata("coverage_gap", None),
            "device": self.device(),
            "unmapped": {
                "schema": SCHEMA,
                "type": "coverage_gap",
                "reason": reason,
                "lost_events": count,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::{
        correlate::{Evidence, RequestInfo},
        identity::{Identity, IdentitySource},
    };

    fn clock() -> WallClock {
        WallClock {
            realtime_offset_ns: 1_795_884_086_000_000_000,
        }
    }

    fn violation() -> (Access, Judgement) {
        let access = Access {
            id: 7,
            pid: 100,
            tid: 101,
            comm: "portal-conn".into(),
            document: "/srv/users/bob/health-record.pdf".into(),
            bytes: 9500,
            first_ts_ns: 1_500_000_000,
            last_ts_ns: 1_600_000_000,
            evidence: vec![Evidence::Thread],
            request: Some(RequestInfo {
                id: 2,
                method: "GET".into(),
                target: "/docs/bob/health-record.pdf".into(),
                identity: Some(Identity {
                    user: "alice".into(),
                    source: IdentitySource::TrustedHeader,
                    roles: Vec::new(),
                }),
                identity_problem: None,
                head_truncated: false,
                status: Some(200),
                tid: 101,
                fd: 5,
                ts_ns: 1_400_000_000,
                peer: None,
                client: None,
                session: None,
            }),
            unattributed: None,
        };
        let judgement = Judgement {
            verdict: Verdict::Violation,
            owner: Some("bob".into()),
            rule: "cross_user_read",
            template: Some("/srv/users/{owner}/**".into()),
            owner_source: Some(monitor_core::ownership::fact::BackendKind::Templates),
            shared_with: Vec::new(),
            ownership_error: None,
        };
        (access, judgement)
    }

    #[test]
    fn violation_is_a_file_system_read() {
        let (access, judgement) = violation();
        let ev = Ocsf::new("web-1".into()).access(&access, &judgement, None, &clock());
        assert_eq!(ev["class_uid"], 1001);
        assert_eq!(ev["category_uid"], 1);
        assert_eq!(ev["activity_id"], 2);
        assert_eq!(ev["type_uid"], 100102);
        assert_eq!(ev["time"], 1_795_884_087_500u64);
        assert_eq!(ev["severity_id"], 4);
        assert_eq!(ev["metadata"]["version"], "1.3.0");
        assert_eq!(ev["metadata"]["product"]["name"], "Vigie");
        assert_eq!(ev["metadata"]["uid"], "7");
        assert_eq!(ev["metadata"]["event_code"], "violation");
        assert_eq!(ev["device"]["hostname"], "web-1");
        assert_eq!(
            ev["actor"],
            json!({"user": {"name": "alice"}, "process": {"pid": 100, "tid": 101, "name": "portal-conn"}})
        );
        assert_eq!(
            ev["file"],
            json!({"path": "/srv/users/bob/health-record.pdf", "name": "health-record.pdf",
                   "type_id": 1, "type": "Regular File", "owner": {"name": "bob"}})
        );
        assert_eq!(
            ev["message"],
            "cross-user document read: alice read a document of bob"
        );
        let u = &ev["unmapped"];
        assert_eq!(u["verdict"], "violation");
        assert_eq!(u["rule"], "cross_user_read");
        assert_eq!(u["identity_source"], "trusted_header");
        assert_eq!(u["evidence"], json!(["thread"]));
        assert_eq!(u["bytes"], 9500);
        assert_eq!(u["request"]["target"], "/docs/bob/health-record.pdf");
    }

    #[test]
    fn client_session_and_incident_are_mapped() {
        let (mut access, judgement) = violation();
        let head = monitor_core::http::RequestHead {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: vec![("x-forwarded-for".into(), b"198.51.100.7".to_vec())],
            head_len: 0,
            content_length: None,
            chunked: false,
            keep_alive: true,
        };
        let proxy = monitor_core::client::Endpoint::Ipv4 {
            ip: "10.0.0.1".parse().unwrap(),
            port: 40000,
        };
        let trusted =
            monitor_core::client::TrustedProxies::parse(&monitor_core::client::ClientConfig {
                trusted_proxies: vec!["10.0.0.0/8".into()],
            })
            .unwrap();
        let req = access.request.as_mut().unwrap();
        req.peer = Some(proxy);
        req.client = monitor_core::client::client_of(Some(&proxy), &head, &trusted);
        req.session = Some("jti:abc".into());
        let ev = Ocsf::new("h".into()).access(&access, &judgement, Some("inc-1"), &clock());
        assert_eq!(
            ev["src_endpoint"],
            json!({"ip": "198.51.100.7", "intermediate_ips": ["10.0.0.1"]})
        );
        assert_eq!(ev["actor"]["session"], json!({"uid": "jti:abc"}));
        assert_eq!(ev["unmapped"]["incident"], "inc-1");
        assert_eq!(ev["unmapped"]["request"]["peer"]["ip"], "10.0.0.1");
    }

    #[test]
    fn unattributed_read_has_no_user() {
        let (mut access, mut judgement) = violation();
        access.request = None;
        access.evidence.clear();
        judgement.verdict = Verdict::Unattributed;
        judgement.rule = "no_request_in_scope";
        let ev = Ocsf::new("h".into()).access(&access, &judgement, None, &clock());
        assert_eq!(ev["actor"].get("user"), None);
        assert_eq!(ev["severity_id"], 2);
        assert_eq!(ev["unmapped"]["request"], Value::Null);
        assert_eq!(ev["message"], "document read: unattributed");
    }

    #[test]
    fn gap_is_a_base_event() {
        let ev = Ocsf::new("h".into()).gap(2_000_000_000, "ringbuf_full", 12, &clock());
        assert_eq!(ev["class_uid"], 0);
        assert_eq!(ev["activity_id"], 99);
        assert_eq!(ev["type_uid"], 99);
        assert_eq!(ev["time"], 1_795_884_088_000u64);
        assert_eq!(ev["unmapped"]["reason"], "ringbuf_full");
        assert_eq!(ev["unmapped"]["lost_events"], 12);
        assert_eq!(ev["metadata"]["event_code"], "coverage_gap");
    }
}
