//! correlate -> ownership -> judge -> sinks, shared by live runs and replay so both give the
//! same alerts.
//!
//! Live, each event is recorded (when recording) after the correlator consumed it and the
//! ownership of the documents it completed was resolved, so that the facts those lookups
//! produced precede it in the trace; replay reads them first and judges alike.
use std::collections::BTreeMap;

use monitor_core::{
    correlate::{Access, BodySpan, Correlator, Finding},
    events::{Event, EventKind},
    incident::Incidents,
    judge::{Judge, Judgement, Verdict},
};

use crate::{
    ownership::resolver::{Ownership, Resolver, UsedFact},
    sinks::{
        alerts::AlertSink, metrics::Metrics, trace::TraceWriter, trail::TrailWriter,
        webhook::Webhook,
    },
};

/// Which accesses to report (replay's time window and pid filters).
pub type Filter = Box<dyn Fn(&Access) -> bool>;
/// Sees every reported access with its judgement (replay's summary, explain).
pub type Observer = Box<dyn FnMut(&Access, &Judgement)>;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counts {
    pub by_verdict: BTreeMap<&'static str, u64>,
    /// Enumeration findings by rule.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub enumerations: BTreeMap<&'static str, u64>,
    pub lost_events: u64,
}

/// Findings of one event scanned for an earlier access to the same document; past this, indexed.
const MEMO_SCAN: usize = 16;

/// A finding, with the ownership of its document once resolved.
#[allow(
    clippy::large_enum_variant,
    reason = "moved once into a Vec drained at once, like `Finding`: boxing would only add an allocation per access"
)]
enum Pending {
    Access(Access, Ownership),
    Gap {
        ts_ns: u64,
        reason: String,
        count: u64,
    },
}

pub struct Pipeline {
    correlator: Correlator,
    judge: Judge,
    resolver: Resolver,
    alerts: AlertSink,
    findings: Vec<Finding>,
    pending: Vec<Pending>,
    /// Facts the current event's ownership rests on.
    used: Vec<UsedFact>,
    /// Documents of the current batch of findings (large batches only): each document is
    /// resolved once per event, so the facts written before the event are the ones used.
    memo: std::collections::HashMap<String, usize>,
    /// Live runs recording a trace.
    trace: Option<TraceWriter>,
    /// Live runs keeping an audit trail.
    trail: Option<TrailWriter>,
    filter: Option<Filter>,
    observer: Option<Observer>,
    /// Live runs only: verdict counts and latency need the live clock.
    metrics: Option<std::sync::Arc<Metrics>>,
    /// Incident grouping and enumeration rules (pure: replay sets them up alike). The
    /// configuration's defaults until [`Pipeline::set_incidents`].
    incidents: Incidents,
    /// Live runs only: the response hook, called once per new incident.
    webhook: Option<Webhook>,
    pub counts: Counts,
}

impl Pipeline {
    pub fn new(
        correlator: Correlator,
        judge: Judge,
        resolver: Resolver,
        alerts: AlertSink,
    ) -> Self {
        Self {
            correlator,
            judge,
            resolver,
            alerts,
            findings: Vec::new(),
            pending: Vec::new(),
            used: Vec::new(),
            memo: std::collections::HashMap::new(),
            trace: None,
            trail: None,
            filter: None,
            observer: None,
            metrics: None,
            incidents: Incidents::new(monitor_core::incident::IncidentConfig::default()),
            webhook: None,
            counts: Counts::default(),
        }
    }

    pub fn set_filter(&mut self, filter: Filter) {
        self.filter = Some(filter);
    }

    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Counts verdicts in `metrics`, with the latency from an access's last syscall to its
    /// alert being written (on the live monotonic clock: not for replay).
    pub fn set_metrics(&mut self, metrics: std::sync::Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    /// Groups alerts into incidents and applies the enumeration rules (live and replay alike).
    pub fn set_incidents(&mut self, incidents: Incidents) {
        self.incidents = incidents;
    }

    /// Calls `webhook` once per new incident (live runs).
    pub fn set_webhook(&mut self, webhook: Webhook) {
        self.webhook = Some(webhook);
    }

    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// Records every event handled, with the ownership facts before it (live runs).
    pub fn set_trace(&mut self, trace: TraceWriter) {
        self.trace = Some(trace);
    }

    /// Writes every judged access and coverage gap to the audit trail (live runs).
    pub fn set_trail(&mut self, trail: TrailWriter) {
        self.trail = Some(trail);
    }

    pub fn trail_mut(&mut self) -> Option<&mut TrailWriter> {
        self.trail.as_mut()
    }

    pub fn trace_mut(&mut self) -> Option<&mut TraceWriter> {
        self.trace.as_mut()
    }

    pub fn resolver_mut(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    pub fn handle(&mut self, ev: &Event) -> std::io::Result<()> {
        if let EventKind::OwnershipFact(fact) = &ev.kind {
            // Replay: what a lookup answered live, for the accesses of the next events.
            self.resolver.learn(fact.clone());
            return Ok(());
        }
        // Spans of the previous event no one took (replay) go.
        self.correlator.take_spans();
        self.correlator.handle(ev, &mut self.findings);
        self.resolve();
        if let Some(trace) = self.trace.as_mut() {
            trace.record_with_facts(&self.used, Some(ev))?;
        }
        self.drain()
    }

    /// End of input: judge everything still open.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.correlator.flush(&mut self.findings);
        self.resolve();
        if let Some(trace) = self.trace.as_mut() {
            trace.record_with_facts(&self.used, None)?;
            trace.flush()?;
        }
        self.drain()?;
        self.alerts.flush()
    }

    /// Writes out the alert lines of the events handled so far (the live loop, after each
    /// batch: one write for the batch, not one per line).
    pub fn flush_alerts(&mut self) -> std::io::Result<()> {
        self.alerts.flush()
    }

    /// Keeps the findings to report, each access with the ownership of its document (asked
    /// once per document and event: the facts written before the event are the ones used).
    fn resolve(&mut self) {
        self.used.clear();
        if self.findings.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let first = self.pending.len();
        if !self.memo.is_empty() {
            // Not `clear`: that would keep (and sweep at each event) a large batch's capacity.
            self.memo = std::collections::HashMap::new();
        }
        for finding in self.findings.drain(..) {
            match finding {
                Finding::Access(access) => {
                    if self.filter.as_ref().is_some_and(|keep| !keep(&access)) {
                        continue;
                    }
                    // A few findings per event are the rule (scan them); a process exit or a
                    // loss can flush thousands (index them).
                    let batch = self.pending.len() - first;
                    if batch == MEMO_SCAN {
                        for (i, p) in self.pending[first..].iter().enumerate() {
                            if let Pending::Access(a, _) = p {
                                self.memo.entry(a.document.clone()).or_insert(first + i);
                            }
                        }
                    }
                    let earlier = if batch < MEMO_SCAN {
                        self.pending[first..].iter().position(
                            |p| matches!(p, Pending::Access(a, _) if a.document == access.document),
                        ).map(|i| first + i)
                    } else {
                        self.memo.get(&access.document).copied()
                    };
                    let ownership = match earlier.map(|i| &self.pending[i]) {
                        Some(Pending::Access(_, o)) => o.clone(),
                        _ => self.resolver.resolve(&access.document, now, &mut self.used),
                    };
                    if batch >= MEMO_SCAN {
                        self.memo
                            .entry(access.document.clone())
                            .or_insert(self.pending.len());
                    }
                    self.pending.push(Pending::Access(access, ownership));
                }
                Finding::Gap {
                    ts_ns,
                    reason,
                    count,
                } => self.pending.push(Pending::Gap {
                    ts_ns,
                    reason,
                    count,
                }),
            }
        }
    }

    pub fn correlator(&self) -> &Correlator {
        &self.correlator
    }

    /// The body spans the correlator learnt from the last event (see [`BodySpan`]), for the
    /// probes (live runs). Replay never asks: the next event drops them.
    pub fn take_spans(&mut self) -> std::vec::Drain<'_, BodySpan> {
        self.correlator.take_spans()
    }

    pub fn alerts_written(&self) -> u64 {
        self.alerts.written()
    }

    /// A new incident: counted, and sent to the webhook with the line that opened it.
    fn incident_opened(&self, id: &str, by: &str, line: serde_json::Value) {
        if let Some(m) = &self.metrics {
            m.incident_opened(by);
        }
        if let Some(hook) = &self.webhook {
            let body = serde_json::json!({
                "schema": crate::sinks::webhook::SCHEMA,
                "incident": id,
                "opened_by": by,
                "alert": line,
            });
            if let Ok(bytes) = serde_json::to_vec(&body) {
                hook.send(bytes);
            }
        }
    }

    fn drain(&mut self) -> std::io::Result<()> {
        // Taken out and put back: the loop needs `self`, the vector keeps its capacity.
        let mut pending = std::mem::take(&mut self.pending);
        for p in pending.drain(..) {
            match p {
                Pending::Access(access, ownership) => {
                    let judgement = self.judge.judge(&access, ownership);
                    if let Some(observe) = self.observer.as_mut() {
                        observe(&access, &judgement);
                    }
                    *self
                        .counts
                        .by_verdict
                        .entry(judgement.verdict.as_str())
                        .or_default() += 1;
                    if judgement.verdict == Verdict::Violation {
                        // The alert line is the output; this is for debugging.
                        tracing::debug!(
                            user = access
                                .request
                                .as_ref()
                                .and_then(|r| r.identity.as_ref())
                                .map(|i| i.user.as_str()),
                            owner = judgement.owner.as_deref(),
                            document = access.document,
                            "cross-user document read"
                        );
                    }
                    // The trail first: it is the record that must survive a crash.
                    if let Some(trail) = self.trail.as_mut() {
                        trail
                            .access(&access, &judgement)
                            .map_err(std::io::Error::other)?;
                    }
                    let observed = self.incidents.observe(&access, &judgement);
                    let incident = observed.incident.as_ref();
                    self.alerts
                        .access(&access, &judgement, incident.map(|i| i.id.as_str()))?;
                    if let Some(i) = incident.filter(|i| i.opened) {
                        self.incident_opened(
                            &i.id,
                            "violation",
                            self.alerts.access_json(&access, &judgement, Some(&i.id)),
                        );
                    }
                    for (found, i) in &observed.enumerations {
                        *self
                            .counts
                            .enumerations
                            .entry(found.rule.as_str())
                            .or_default() += 1;
                        self.alerts.enumeration(found, &i.id)?;
                        if let Some(m) = &self.metrics {
                            m.enumeration(found.rule.as_str());
                        }
                        if i.opened {
                            self.incident_opened(
                                &i.id,
                                found.rule.as_str(),
                                self.alerts.enumeration_json(found, &i.id),
                            );
                        }
                    }
                    if let Some(m) = &self.metrics {
                        let source = access
                            .request
                            .as_ref()
                            .and_then(|r| r.identity.as_ref())
                            .map(|i| i.source);
                        m.judged_now(judgement.verdict, source, access.last_ts_ns);
                    }
                }
                Pending::Gap {
                    ts_ns,
                    reason,
                    count,
                } => {
                    self.counts.lost_events += count;
                    tracing::warn!(reason, count, "events lost in the kernel: Vigie was blind");
                    self.alerts.gap(ts_ns, &reason, count)?;
                    if let Some(trail) = self.trail.as_mut() {
                        trail
                            .gap(ts_ns, &reason, count)
                            .map_err(std::io::Error::other)?;
                    }
                }
            }
        }
        self.pending = pending;
        Ok(())
    }
}
