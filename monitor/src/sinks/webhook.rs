//! The response hook: one HTTP POST (JSON) per new incident, so that the portal's admin API or a
//! SOAR can revoke the session or block the address. Sent from a thread of its own through a
//! bounded queue: the pipeline never waits on the receiver. Each call has a timeout and a bounded
//! number of retries; a call that still fails, or that finds the queue full, is counted and
//! logged, never retried forever.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

pub use crate::incidents::WebhookConfig;

/// Schema of the webhook's body: `incident` (id), `opened_by` (`violation`, `enumeration`,
/// `privileged_bulk`) and `alert`, the `vigie.alert/1` line that opened the incident.
pub const SCHEMA: &str = "vigie.incident/1";

/// What happened to the calls (for metrics and tests).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub retried: AtomicU64,
    /// Vigie is stopping: no more retries, and what is still queued after [`STOP_GRACE`] is
    /// dropped (counted), so that a dead receiver cannot hold up a stop.
    stopping: AtomicBool,
}

/// How long a stopping Vigie keeps sending what is queued (one attempt each).
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest pause between two attempts, however many retries are configured.
const MAX_PAUSE: Duration = Duration::from_secs(30);

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
        self.stats.stopping.store(true, Ordering::Relaxed);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `pause`, in short slices, returning early when Vigie starts stopping.
fn pause_unless_stopping(pause: Duration, stats: &WebhookStats) {
    let until = Instant::now() + pause;
    while !stats.stopping.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn send_loop(cfg: &WebhookConfig, rx: &mpsc::Receiver<Vec<u8>>, stats: &WebhookStats) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
        .http_status_as_error(true)
        .build()
        .into();
    let mut stop_deadline: Option<Instant> = None;
    while let Ok(body) = rx.recv() {
        let stopping = stats.stopping.load(Ordering::Relaxed);
        if stopping {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_GRACE);
            if Instant::now() >= deadline {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
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
                Err(e) if attempt < cfg.retries && !stats.stopping.load(Ordering::Relaxed) => {
                    tracing::debug!(error = %e, attempt, "webhook call failed, retrying");
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    pause_unless_stopping(pause, stats);
                    pause = pause.saturating_mul(2).min(MAX_PAUSE);
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

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    fn cfg(port: u16) -> WebhookConfig {
        WebhookConfig {
            url: format!("http://127.0.0.1:{port}/hook"),
            timeout_ms: 2000,
            retries: 10,
            retry_ms: 1000,
            queue: 4,
        }
    }

    #[test]
    fn delivers_a_body() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"{\"incident\":\"inc-1\"}") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let hook = Webhook::start(&cfg(port));
        hook.send(br#"{"incident":"inc-1"}"#.to_vec());
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json")
        );
        let stats = hook.stats.clone();
        drop(hook);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_dead_receiver_does_not_hold_up_a_stop_and_is_counted() {
        // Nothing listens there: every attempt is refused, and retries would take minutes.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let hook = Webhook::start(&cfg(port));
        for i in 0..6 {
            hook.send(format!("{{\"n\":{i}}}").into_bytes());
        }
        let stats = hook.stats.clone();
        // Returns once the queue is given up: no retry after the stop.
        drop(hook);
        let sent = stats.sent.load(Ordering::Relaxed);
        let failed = stats.failed.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        assert_eq!(sent, 0);
        // Six sent to a queue of four (plus the one being tried): at least one dropped at once,
        // each of the rest failed or dropped, none lost from the counts.
        assert_eq!(failed + dropped, 6, "failed {failed}, dropped {dropped}");
        assert!(dropped >= 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        for (url, field) in [
            ("https://x/y", "url"),
            ("not a url", "url"),
            ("http:///nohost", "url"),
        ] {
            let mut c = cfg(1);
            c.url = url.into();
            assert_eq!(c.check().unwrap_err().0, field, "{url}");
        }
        let mut c = cfg(1);
        c.timeout_ms = 0;
        assert_eq!(c.check().unwrap_err().0, "timeout_ms");
    }
}
