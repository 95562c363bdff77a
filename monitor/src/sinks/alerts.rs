//! Alerts as JSON lines (schema `vigie.alert/1`, fields in `schema.rs`). One line per judged
//! access that is not allowed (all accesses with `audit`), one per coverage gap. Each line is
//! flushed: an alert that sits in a buffer is an alert the SOC has not seen.
use std::io::Write;

use monitor_core::{
    client::Client,
    correlate::{Access, Evidence, RequestInfo},
    identity::IdentitySource,
    incident::Enumeration,
    judge::{Judgement, Verdict},
    ownership::fact::{BackendKind, LookupError},
    walltime::WallClock,
};
use serde::Serialize;

use super::ALERT_SCHEMA as SCHEMA;

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
    /// Handle of the credential that carried the identity (never the credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    /// Who was on the other end: the connection's peer, or the client a trusted proxy names.
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a Client>,
    /// Alerts of one user and session within `incidents.window_s` share it.
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<&'a str>,
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

/// A user crossed an enumeration rule (`type` `enumeration` or `privileged_bulk`).
#[derive(Serialize)]
struct EnumerationAlert<'a> {
    schema: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a Client>,
    owners: usize,
    documents: usize,
    threshold: usize,
    window_s: u64,
    first_access: String,
    last_access: String,
    access_ids: &'a [u64],
    incident: &'a str,
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
    /// `vigie.alert/1` (`docs/src/reference/alerts.md`).
    #[default]
    Vigie,
    /// OCSF 1.3.0: File System Activity (Read) for accesses, Base Event for coverage gaps.
    Ocsf,
}

pub struct AlertSink {
    out: Box<dyn Write + Send>,
    /// Lines not written out yet: written at [`AlertSink::flush`] (the live loop's, after each
    /// batch of events) or once they pass [`FLUSH_AT`], rather than a write call per line.
    pending: Vec<u8>,
    clock: WallClock,
    audit: bool,
    written: u64,
    ocsf: Option<crate::sinks::ocsf::Ocsf>,
}

/// Pending alert bytes written out at once, whatever the batch.
const FLUSH_AT: usize = 64 * 1024;

impl AlertSink {
    pub fn new(out: Box<dyn Write + Send>, clock: WallClock, audit: bool) -> Self {
        Self {
            out,
            pending: Vec::new(),
            clock,
            audit,
            written: 0,
            ocsf: None,
        }
    }

    /// Writes the pending lines out.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all(&self.pending);
        // Not written twice, even in part, after an error.
        self.pending.clear();
        written?;
        self.out.flush()
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

    /// Writes the line of a judged access (nothing for an allowed one, unless auditing), in
    /// `incident` when it belongs to one.
    pub fn access(
        &mut self,
        access: &Access,
        judgement: &Judgement,
        incident: Option<&str>,
    ) -> std::io::Result<()> {
        if judgement.verdict == Verdict::Allowed && !self.audit {
            return Ok(());
        }
        if let Some(ocsf) = &self.ocsf {
            let line = ocsf.access(access, judgement, incident, &self.clock);
            return self.write_line(&line);
        }
        let line = self.access_line(access, judgement, incident);
        self.write_line(&line)
    }

    /// The `vigie.alert/1` line of an access, as JSON (the webhook's body carries it).
    pub fn access_json(
        &self,
        access: &Access,
        judgement: &Judgement,
        incident: Option<&str>,
    ) -> serde_json::Value {
        serde_json::to_value(self.access_line(access, judgement, incident))
            .unwrap_or(serde_json::Value::Null)
    }

    /// The `vigie.alert/1` line of an enumeration, as JSON.
    pub fn enumeration_json(&self, found: &Enumeration, incident: &str) -> serde_json::Value {
        serde_json::to_value(self.enumeration_line(found, incident))
            .unwrap_or(serde_json::Value::Null)
    }

    /// Writes the line of a user crossing an enumeration rule.
    pub fn enumeration(&mut self, found: &Enumeration, incident: &str) -> std::io::Result<()> {
        if let Some(ocsf) = &self.ocsf {
            let line = ocsf.enumeration(found, incident, &self.clock);
            return self.write_line(&line);
        }
        let line = self.enumeration_line(found, incident);
        self.write_line(&line)
    }

    fn enumeration_line<'a>(
        &self,
        found: &'a Enumeration,
        incident: &'a str,
    ) -> EnumerationAlert<'a> {
        EnumerationAlert {
            schema: SCHEMA,
            kind: found.rule.as_str(),
            time: self.clock.rfc3339(found.last_ts_ns),
            user: &found.user,
            session: found.session.as_deref(),
            client: found.client.as_ref(),
            owners: found.owners,
            documents: found.documents,
            threshold: found.threshold,
            window_s: found.window_s,
            first_access: self.clock.rfc3339(found.first_ts_ns),
            last_access: self.clock.rfc3339(found.last_ts_ns),
            access_ids: &found.access_ids,
            incident,
        }
    }

    fn access_line<'a>(
        &self,
        access: &'a Access,
        judgement: &'a Judgement,
        incident: Option<&'a str>,
    ) -> AccessAlert<'a> {
        let identity = access.request.as_ref().and_then(|r| r.identity.as_ref());
        AccessAlert {
            schema: SCHEMA,
            kind: "access",
            time: self.clock.rfc3339(access.first_ts_ns),
            verdict: judgement.verdict,
            user: identity.map(|i| i.user.as_str()),
            identity_source: identity.map(|i| i.source),
            session: access.request.as_ref().and_then(|r| r.session.as_deref()),
            client: access.request.as_ref().and_then(|r| r.client.as_ref()),
            incident,
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
        }
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
        let start = self.pending.len();
        if let Err(e) = serde_json::to_writer(&mut self.pending, line) {
            self.pending.truncate(start);
            return Err(std::io::Error::other(e));
        }
        self.pending.push(b'\n');
        self.written += 1;
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }
}

impl Drop for AlertSink {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!("alert lines not written: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose bytes the test can read, and that counts its write calls.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut inner = self.0.lock().unwrap();
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_of_lines_goes_out_in_one_write_at_flush_and_nothing_is_lost_at_drop() {
        let out = Shared::default();
        let clock = WallClock {
            realtime_offset_ns: 0,
        };
        let mut sink = AlertSink::new(Box::new(out.clone()), clock, false);
        sink.gap(1, "ringbuf_full", 3).unwrap();
        sink.gap(2, "ringbuf_full", 4).unwrap();
        assert_eq!(sink.written(), 2);
        assert!(
            out.0.lock().unwrap().0.is_empty(),
            "nothing before the flush"
        );
        sink.flush().unwrap();
        {
            let inner = out.0.lock().unwrap();
            assert_eq!(inner.1, 1, "one write for the batch");
            let text = String::from_utf8(inner.0.clone()).unwrap();
            assert_eq!(text.lines().count(), 2, "{text}");
            assert!(text.lines().all(|l| l.contains("ringbuf_full")), "{text}");
        }
        sink.gap(3, "ringbuf_full", 5).unwrap();
        drop(sink);
        let text = String::from_utf8(out.0.lock().unwrap().0.clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn a_large_batch_is_written_out_before_the_flush() {
        let out = Shared::default();
        let clock = WallClock {
            realtime_offset_ns: 0,
        };
        let mut sink = AlertSink::new(Box::new(out.clone()), clock, false);
        let mut n = 0;
        while out.0.lock().unwrap().0.is_empty() {
            sink.gap(n, "ringbuf_full", 1).unwrap();
            n += 1;
            assert!(n < 10_000, "never written out");
        }
        assert!(out.0.lock().unwrap().0.len() >= FLUSH_AT);
    }
}
