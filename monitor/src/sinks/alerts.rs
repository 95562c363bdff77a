//! Alerts as JSON lines (schema `vigie.alert/1`, documented in the README). One line per judged
//! access that is not allowed (all accesses with `audit`), one per coverage gap. Each line is
//! flushed: an alert that sits in a buffer is an alert the SOC has not seen.
use std::io::Write;

use monitor_core::{
    correlate::{Access, Evidence, RequestInfo},
    identity::IdentitySource,
    judge::{Judgement, Verdict},
    walltime::WallClock,
};
use serde::Serialize;

use super::ALERT_SCHEMA as SCHEMA;
use crate::ownership::fact::{BackendKind, LookupError};

/// Opens an alerts file for appending, creating it 0600: alerts name users and their documents.
pub fn open_alert_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("opening alerts file {}: {e}", path.display()),
            )
        })
}

#[derive(Serialize)]
struct AccessAlert<'a> {
    schema: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    verdict: Verdict,
    user: Option<&'a str>,
    identity_source: Option<IdentitySource>,
    owner: Option<&'a str>,
    /// The ownership backend that decided (knew the owner, or failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_source: Option<BackendKind>,
    /// Principals the document is shared with (only when there are some).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    shared_with: &'a [String],
    document: &'a str,
    pid: u32,
    tid: u32,
    comm: &'a str,
    request: Option<&'a RequestInfo>,
    evidence: &'a [Evidence],
    bytes: u64,
    rule: &'static str,
    /// Why the ownership lookup failed (verdict `unknown_owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    ownership_error: Option<LookupError>,
    access_id: u64,
    /// The portal answered the request with an error (4xx/5xx) after the document was read:
    /// the read happened all the same, but the document may not have been sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    refused_after_read: bool,
}

#[derive(Serialize)]
struct GapAlert<'a> {
    schema: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    reason: &'a str,
    lost_events: u64,
}

/// How alert lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AlertFormat {
    /// `vigie.alert/1`, documented in the README.
    #[default]
    Vigie,
    /// OCSF 1.3.0: File System Activity (Read) for accesses, Base Event for coverage gaps.
    Ocsf,
}

pub struct AlertSink {
    out: Box<dyn Write + Send>,
    clock: WallClock,
    audit: bool,
    written: u64,
    ocsf: Option<crate::sinks::ocsf::Ocsf>,
}

impl AlertSink {
    pub fn new(out: Box<dyn Write + Send>, clock: WallClock, audit: bool) -> Self {
        Self {
            out,
            clock,
            audit,
            written: 0,
            ocsf: None,
        }
    }

    /// Writes lines in `format` instead of `vigie.alert/1`.
    pub fn with_format(mut self, format: AlertFormat) -> Self {
        self.ocsf = (format == AlertFormat::Ocsf)
            .then(|| crate::sinks::ocsf::Ocsf::new(crate::sinks::ocsf::hostname()));
        self
    }

    /// Alert lines written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn access(&mut self, access: &Access, judgement: &Judgement) -> std::io::Result<()> {
        if judgement.verdict == Verdict::Allowed && !self.audit {
            return Ok(());
        }
        if let Some(ocsf) = &self.ocsf {
            let line = ocsf.access(access, judgement, &self.clock);
            return self.write_line(&line);
        }
        let identity = access.request.as_ref().and_then(|r| r.identity.as_ref());
        let line = AccessAlert {
            schema: SCHEMA,
            kind: "access",
            time: self.clock.rfc3339(access.first_ts_ns),
            verdict: judgement.verdict,
            user: identity.map(|i| i.user.as_str()),
            identity_source: identity.map(|i| i.source),
            owner: judgement.owner.as_deref(),
            owner_source: judgement.owner_source,
            shared_with: &judgement.shared_with,
            document: &access.document,
            pid: access.pid,
            tid: access.tid,
            comm: &access.comm,
            request: access.request.as_ref(),
            evidence: &access.evidence,
            bytes: access.bytes,
            rule: judgement.rule,
            ownership_error: judgement.ownership_error,
            access_id: access.id,
            refused_after_read: access
                .request
                .as_ref()
                .and_then(|r| r.status)
                .is_some_and(|s| s >= 400),
        };
        self.write_line(&line)
    }

    pub fn gap(&mut self, ts_ns: u64, reason: &str, count: u64) -> std::io::Result<()> {
        if let Some(ocsf) = &self.ocsf {
            let line = ocsf.gap(ts_ns, reason, count, &self.clock);
            return self.write_line(&line);
        }
        let line = GapAlert {
            schema: SCHEMA,
            kind: "coverage_gap",
            time: self.clock.rfc3339(ts_ns),
            reason,
            lost_events: count,
        };
        self.write_line(&line)
    }

    fn write_line(&mut self, line: &impl Serialize) -> std::io::Result<()> {
        let mut buf = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        self.out.write_all(&buf)?;
        self.out.flush()?;
        self.written += 1;
        Ok(())
    }
}
