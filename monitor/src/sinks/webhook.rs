//! The response hook: one HTTP POST (JSON) per new incident, so that the portal's admin API or a
//! SOAR can revoke the session or block the address. Sent from a thread of its own through a
//! bounded queue: the pipeline never waits on the receiver. Each call has a timeout and a bounded
//! number of retries; a call that still fails, or that finds the queue full, is counted and
//! logged, never retried forever.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Schema of the webhook's body: `incident` (id), `opened_by` (`violation`, `enumeration`,
/// `privileged_bulk`) and `alert`, the `vigie.alert/1` line that opened the incident.
pub const SCHEMA: &str = "vigie.incident/1";

/// `[incidents.webhook]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path` (plain HTTP: the receiver is local, or behind a local relay).
    pub url: String,
    /// Per attempt: connect, send and read the answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first one, with a doubling pause (`retry_ms`, then twice that...).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Incidents waiting to be sent; past this, new ones are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_retries() -> u32 {
    3
}
fn default_retry_ms() -> u64 {
    500
}
fn default_queue() -> usize {
    256
}

impl WebhookConfig {
    /// `(field, reason)` of the first bad setting.
    pub fn check(&self) -> Result<(), (String, String)> {
        let parsed = self
            .url
            .parse::<ureq::http::Uri>()
            .map_err(|e| ("url".to_string(), format!("{:?}: {e}", self.url)))?;
        if parsed.scheme_str() != Some("http") || parsed.host().is_none() {
            return Err((
                "url".into(),
                format!("{:?}: an http://host[:port]/path URL is required", self.url),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(("timeout_ms".into(), "must be 1 to 60000".into()));
        }
        if self.retries > 10 {
            return Err(("retries".into(), "must be at most 10".into()));
        }
        if self.queue == 0 {
            return Err(("queue".into(), "must be positive".into()));
        }
        Ok(())
    }
}

/// What happened to the calls (for metrics and tests).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub retried: AtomicU64,
}

/// The sending side, kept by the pipeline.
pub struct Webhook {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<WebhookStats>,
}

impl Webhook {
    pub fn start(cfg: &WebhookConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(cfg.queue);
        let stats = Arc::new(WebhookStats::default());
        let cfg = cfg.clone();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("vigie-webhook".into())
            .spawn(move || send_loop(&cfg, &rx, &thread_stats))
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the webhook thread: incidents will not be sent");
        }
        Self {
            tx: thread.is_some().then_some(tx),
            thread,
            stats,
        }
    }

    /// Queues one incident's body; never blocks.
    pub fn send(&self, body: Vec<u8>) {
        let queued = self.tx.as_ref().is_some_and(|tx| tx.try_send(body).is_ok());
        if !queued {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("webhook queue full (or its thread gone): incident not sent");
        }
    }
}

impl Drop for Webhook {
    /// Sends what is queued (each call bounded by its timeout and retries), then stops.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send_loop(cfg: &WebhookConfig, rx: &mpsc::Receiver<Vec<u8>>, stats: &WebhookStats) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
        .http_status_as_error(true)
        .build()
        .into();
    while let Ok(body) = rx.recv() {
        let mut pause = Duration::from_millis(cfg.retry_ms);
        let mut attempt = 0;
        loop {
            let result = agent
                .post(&cfg.url)
                .header("content-type", "application/json")
                .send(&body[..]);
            match result {
                Ok(_) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if attempt < cfg.retries => {
                    tracing::debug!(error = %e, attempt, "webhook call failed, retrying");
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, url = cfg.url, "webhook call failed, incident not sent");
                    break;
                }
            }
        }
    }
}
