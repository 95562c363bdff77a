//! correlate -> judge -> sinks, shared by live runs and replay so both give the same alerts.
use std::collections::BTreeMap;

use crate::{
    correlate::{Access, Correlator, Finding},
    events::Event,
    judge::{Judge, Judgement, Verdict},
    sinks::{alerts::AlertSink, metrics::Metrics},
};

/// Which accesses to report (replay's time window and pid filters).
pub type Filter = Box<dyn Fn(&Access) -> bool>;
/// Sees every reported access with its judgement (replay's summary, explain).
pub type Observer = Box<dyn FnMut(&Access, &Judgement)>;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counts {
    pub by_verdict: BTreeMap<&'static str, u64>,
    pub lost_events: u64,
}

pub struct Pipeline {
    correlator: Correlator,
    judge: Judge,
    alerts: AlertSink,
    findings: Vec<Finding>,
    filter: Option<Filter>,
    observer: Option<Observer>,
    /// Live runs only: verdict counts and latency need the live clock.
    metrics: Option<std::sync::Arc<Metrics>>,
    pub counts: Counts,
}

impl Pipeline {
    pub fn new(correlator: Correlator, judge: Judge, alerts: AlertSink) -> Self {
        Self {
            correlator,
            judge,
            alerts,
            findings: Vec::new(),
            filter: None,
            observer: None,
            metrics: None,
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

    pub fn handle(&mut self, ev: &Event) -> std::io::Result<()> {
        self.correlator.handle(ev, &mut self.findings);
        self.drain()
    }

    /// End of input: judge everything still open.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.correlator.flush(&mut self.findings);
        self.drain()
    }

    pub fn correlator(&self) -> &Correlator {
        &self.correlator
    }

    pub fn alerts_written(&self) -> u64 {
        self.alerts.written()
    }

    fn drain(&mut self) -> std::io::Result<()> {
        for finding in self.findings.drain(..) {
            match finding {
                Finding::Access(access) => {
                    if self.filter.as_ref().is_some_and(|keep| !keep(&access)) {
                        continue;
                    }
                    let judgement = self.judge.judge(&access);
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
                    self.alerts.access(&access, &judgement)?;
                    if let Some(m) = &self.metrics {
                        let source = access
                            .request
                            .as_ref()
                            .and_then(|r| r.identity.as_ref())
                            .map(|i| i.source);
                        m.judged(
                            judgement.verdict,
                            source,
                            access.last_ts_ns,
                            crate::procfs::monotonic_ns(),
                        );
                    }
                }
                Finding::Gap {
                    ts_ns,
                    reason,
                    count,
                } => {
                    self.counts.lost_events += count;
                    tracing::warn!(reason, count, "events lost in the kernel: Vigie was blind");
                    self.alerts.gap(ts_ns, &reason, count)?;
                }
            }
        }
        Ok(())
    }
}
