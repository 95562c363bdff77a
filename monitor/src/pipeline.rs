//! correlate -> judge -> sinks, shared by live runs and replay so both give the same alerts.
use std::collections::BTreeMap;

use crate::{
    correlate::{Correlator, Finding},
    events::Event,
    judge::{Judge, Verdict},
    sinks::alerts::AlertSink,
};

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
    pub counts: Counts,
}

impl Pipeline {
    pub fn new(correlator: Correlator, judge: Judge, alerts: AlertSink) -> Self {
        Self {
            correlator,
            judge,
            alerts,
            findings: Vec::new(),
            counts: Counts::default(),
        }
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
                    let judgement = self.judge.judge(&access);
                    *self
                        .counts
                        .by_verdict
                        .entry(judgement.verdict.as_str())
                        .or_default() += 1;
                    if judgement.verdict == Verdict::Violation {
                        tracing::warn!(
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
