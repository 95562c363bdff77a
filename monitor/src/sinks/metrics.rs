//! Prometheus metrics, and the `/metrics` endpoint that serves them.
//!
//! Two audiences: the SOC alerts on cross-user reads, and the SRE on the moments Vigie was blind
//! (events lost, no target attached, probes missing). Labels are bounded by design: event kinds,
//! loss reasons, verdicts and identity sources only. User names, document paths and request
//! targets never become labels: they would explode the series count and copy personal data into
//! the monitoring stack. Those are in the alert lines.
//!
//! The catalogue is built once in [`Metrics::new`] (`vigie reference metrics` prints it for
//! `docs/src/reference/metrics.md`). Series that an alert rule watches with `increase()` start
//! at 0, so the first violation or loss after a restart is a visible increase rather than a
//! series that appears already at 1.
//!
//! The endpoint is a minimal HTTP/1.1 responder on a tokio listener: `GET /metrics` and
//! `GET /healthz`, request heads bounded in size and time, one response per connection.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use monitor_core::http::stream::Desync;
use monitor_core::{identity::IdentitySource, judge::Verdict};
use prometheus::{
    CounterVec, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder, core::Collector, proto::MetricType,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Label value for requests that carried no usable identity.
pub const NO_IDENTITY: &str = "none";

/// Largest request head read from a scraper; anything longer is refused.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not sent its head by then is dropped (slow or idle connections).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("building the metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
    #[error("metrics address {0:?} is not an IP:port")]
    Address(String),
    #[error("cannot listen for metrics on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Every metric Vigie exports. Cheap to update from the live loop (atomics); shared with the
/// HTTP task behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Every family registered, for [`Metrics::catalogue`] (the registry gathers only
    /// families that have a series).
    collectors: Vec<Box<dyn Collector>>,
    events: IntCounterVec,
    events_lost: IntCounterVec,
    decode_errors: IntCounter,
    desyncs: IntCounterVec,
    accesses: IntCounterVec,
    /// `accesses`' series, in [`Verdict::ALL`]'s order: looked up once, not per access.
    accesses_by_verdict: Vec<IntCounter>,
    violations: IntCounterVec,
    enumerations: IntCounterVec,
    incidents: IntCounterVec,
    webhook_calls: IntCounterVec,
    requests: IntCounterVec,
    alerts_written: IntCounter,
    targets: IntGauge,
    probes_attached: IntGauge,
    probes_expected: IntGauge,
    latency: Histogram,
    ring_fill: Histogram,
    ring_size: IntGauge,
    ownership_lookups: IntCounterVec,
    ownership_latency: HistogramVec,
    tracked: IntGaugeVec,
    probe_runs: IntCounterVec,
    probe_run_seconds: CounterVec,
    tls_libraries: IntGaugeVec,
    tls_records: IntCounterVec,
    tls_unreadable_connections: IntCounter,
    http2_connections: IntCounter,
}

/// Outcomes of an ownership lookup (`vigie_ownership_lookups_total{outcome}`).
pub const OWNERSHIP_OUTCOMES: [&str; 5] = ["found", "not_found", "cached", "timeout", "failed"];

/// The label value of an identity source: its name in the alert schema (`trusted_header`, ...).
pub fn source_label(source: Option<IdentitySource>) -> String {
    source
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| NO_IDENTITY.to_owned())
}

fn counter_vec(
    r: &Catalogue,
    name: &str,
    help: &str,
    label: &str,
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
    r.register(&c)?;
    Ok(c)
}

fn counter(r: &Catalogue, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(&c)?;
    Ok(c)
}

fn gauge(r: &Catalogue, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(&g)?;
    Ok(g)
}

fn histogram(
    r: &Catalogue,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(&h)?;
    Ok(h)
}

/// The registry being built, and a handle on each collector registered in it.
#[derive(Default)]
struct Catalogue {
    registry: Registry,
    collectors: std::cell::RefCell<Vec<Box<dyn Collector>>>,
}

impl Catalogue {
    fn register<C: Collector + Clone + 'static>(&self, c: &C) -> prometheus::Result<()> {
        self.registry.register(Box::new(c.clone()))?;
        self.collectors.borrow_mut().push(Box::new(c.clone()));
        Ok(())
    }
}

/// One metric family of the catalogue, as `vigie reference metrics` documents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricDoc {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

/// Raises a counter to `total` (a cumulative count kept elsewhere). Counters only go up: a
/// smaller total, which cannot happen within a run, changes nothing.
fn raise_to(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl Metrics {
    /// The whole catalogue. `sources` are the configured identity sources: the only values the
    /// `identity_source` label can take, besides `none`.
    pub fn new(sources: &[IdentitySource]) -> Result<Self, MetricsError> {
        let r = Catalogue::default();
        let build = IntGaugeVec::new(
            Opts::new(
                "vigie_build_info",
                "Always 1; the labels say which Vigie is running.",
            ),
            &["version"],
        )?;
        r.register(&build)?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let start = IntGauge::new(
            "vigie_start_time_seconds",
            "When this Vigie process started, in seconds since the Unix epoch.",
        )?;
        r.register(&start)?;
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        let mut m = Self {
            events: counter_vec(
                &r,
                "vigie_events_total",
                "Events fed to the correlator, by kind (from the probes, or from /proc at adoption).",
                "kind",
            )?,
            events_lost: counter_vec(
                &r,
                "vigie_events_lost_total",
                "Events lost before reaching Vigie, by reason. Any increase means Vigie was blind.",
                "reason",
            )?,
            decode_errors: counter(
                &r,
                "vigie_decode_errors_total",
                "Ring buffer records that could not be decoded (dropped).",
            )?,
            desyncs: counter_vec(
                &r,
                "vigie_stream_desyncs_total",
                "Times a connection's request stream could not be followed exactly, by reason \
                 (invalid_head, head_too_large, read_not_captured, bad_chunked_body, events_lost, \
                 fastcgi_desync, pipeline_ambiguous, http2_lost): reads on it were unattributed until its \
                 next request (an HTTP/2 connection: for good).",
                "reason",
            )?,
            accesses: counter_vec(
                &r,
                "vigie_document_accesses_total",
                "Judged document accesses (one per request and document), by verdict.",
                "verdict",
            )?,
            violations: counter_vec(
                &r,
                "vigie_violations_total",
                "Cross-user document reads, by the identity source of the reading request.",
                "identity_source",
            )?,
            enumerations: counter_vec(
                &r,
                "vigie_enumerations_total",
                "Users found reading documents of many owners in a window, by rule (enumeration, privileged_bulk).",
                "rule",
            )?,
            incidents: counter_vec(
                &r,
                "vigie_incidents_total",
                "Incidents opened (alerts of one user and session grouped), by what opened them: violation, enumeration, privileged_bulk.",
                "opened_by",
            )?,
            webhook_calls: counter_vec(
                &r,
                "vigie_webhook_calls_total",
                "Incident webhook calls, by outcome: sent, failed (after the retries), dropped (queue full).",
                "outcome",
            )?,
            requests: counter_vec(
                &r,
                "vigie_requests_total",
                "HTTP requests seen, by the source of their identity (none: no usable identity).",
                "identity_source",
            )?,
            alerts_written: counter(
                &r,
                "vigie_alerts_written_total",
                "Alert lines written (access alerts and coverage gaps).",
            )?,
            targets: gauge(&r, "vigie_targets", "Target processes watched now.")?,
            probes_attached: gauge(
                &r,
                "vigie_probes_attached",
                "Kernel hooks with a Vigie probe attached; a program seen not to run at start-up does not count.",
            )?,
            probes_expected: gauge(
                &r,
                "vigie_probes_expected",
                "Kernel hooks the attach table chose on this kernel (`vigie probes` lists them).",
            )?,
            latency: histogram(
                &r,
                "vigie_pipeline_latency_seconds",
                "From the last syscall of a document access to its verdict being written. Includes \
                 waiting for the request to end (or idle_flush_ms for fds kept open).",
                // Dense around the 10 ms alert-latency target, then doubling up to ~33 s.
                [0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.010, 0.020, 0.050]
                    .into_iter()
                    .chain(prometheus::exponential_buckets(0.1, 2.0, 9)?)
                    .collect(),
            )?,
            ring_fill: histogram(
                &r,
                "vigie_ringbuf_fill_ratio",
                "Fill of the kernel ring buffer (0 to 1) each time the reader wakes up, before it \
                 drains. Near 1 means events are about to be lost.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99],
            )?,
            ring_size: gauge(
                &r,
                "vigie_ringbuf_size_bytes",
                "Size of the kernel ring buffer.",
            )?,
            ownership_lookups: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "vigie_ownership_lookups_total",
                        "Ownership lookups in the mapping file and databases, by backend and \
                         outcome (cached: answered from the cache; timeout and failed: the \
                         access was judged unknown_owner).",
                    ),
                    &["backend", "outcome"],
                )?;
                r.register(&c)?;
                c
            },
            ownership_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "vigie_ownership_lookup_seconds",
                        "Time of one ownership lookup that was not answered from the cache \
                         (the ring buffer is not drained meanwhile).",
                    )
                    .buckets(vec![
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02,
                        0.05, 0.1, 0.2, 0.5, 1.0,
                    ]),
                    &["backend"],
                )?;
                r.register(&h)?;
                h
            },
            tracked: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "vigie_correlator_tracked",
                        "State the correlator holds now, by kind: connections, requests, threads \
                         (with a request in scope), open_accesses (reads not judged yet), \
                         documents (open document fds). Returns to near zero when the portal is idle.",
                    ),
                    &["kind"],
                )?;
                r.register(&g)?;
                g
            },
            tls_libraries: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "vigie_tls_libraries",
                        "TLS library files mapped by targets: `hooked` (OpenSSL, plaintext read \
                         with uprobes) or `unreadable` (GnuTLS, NSS, Java, Go, ...: their HTTPS \
                         is not judged).",
                    ),
                    &["state"],
                )?;
                r.register(&g)?;
                g
            },
            tls_records: counter_vec(
                &r,
                "vigie_tls_records_total",
                "TLS plaintext records captured from targets' TLS libraries, by direction \
                 (read: requests, write: responses).",
                "direction",
            )?,
            tls_unreadable_connections: counter(
                &r,
                "vigie_tls_unreadable_connections_total",
                "Connections of targets that began with a TLS handshake Vigie could not read the \
                 plaintext of (TLS library not hooked): their requests are not seen.",
            )?,
            http2_connections: counter(
                &r,
                "vigie_http2_connections_total",
                "Connections of targets that spoke HTTP/2 (over TLS or in clear, prior knowledge), \
                 followed stream by stream; those lost for good are counted in \
                 vigie_stream_desyncs_total{reason=\"http2_lost\"}.",
            )?,
            probe_runs: counter_vec(
                &r,
                "vigie_probe_runs_total",
                "Runs of each eBPF program (every process's hooked syscalls, targets or not), \
                 counted only while the kernel's BPF statistics are on (kernel.bpf_stats_enabled).",
                "program",
            )?,
            probe_run_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "vigie_probe_run_seconds_total",
                        "Time spent in each eBPF program, counted only while the kernel's BPF \
                         statistics are on. Excludes the tracepoint's own cost around the program.",
                    ),
                    &["program"],
                )?;
                r.register(&c)?;
                c
            },
            accesses_by_verdict: Vec::new(),
            registry: r.registry,
            collectors: r.collectors.into_inner(),
        };
        m.accesses_by_verdict = Verdict::ALL
            .iter()
            .map(|v| m.accesses.with_label_values(&[v.as_str()]))
            .collect();
        for reason in 0..monitor_common::loss::COUNT {
            m.events_lost
                .with_label_values(&[monitor_common::loss::name(reason)])
                .reset();
        }
        for state in ["hooked", "unreadable"] {
            m.tls_libraries.with_label_values(&[state]).set(0);
        }
        for direction in ["read", "write"] {
            m.tls_records.with_label_values(&[direction]).reset();
        }
        for verdict in Verdict::ALL {
            m.accesses.with_label_values(&[verdict.as_str()]).reset();
        }
        for why in Desync::ALL {
            m.desyncs.with_label_values(&[why.as_str()]).reset();
        }
        for source in sources {
            let label = source_label(Some(*source));
            m.violations.with_label_values(&[&label]).reset();
            m.requests.with_label_values(&[&label]).reset();
        }
        for rule in ["enumeration", "privileged_bulk"] {
            m.enumerations.with_label_values(&[rule]).reset();
        }
        for by in ["violation", "enumeration", "privileged_bulk"] {
            m.incidents.with_label_values(&[by]).reset();
        }
        for outcome in ["sent", "failed", "dropped"] {
            m.webhook_calls.with_label_values(&[outcome]).reset();
        }
        // Forged or expired bearer tokens make violations without an identity.
        m.violations.with_label_values(&[NO_IDENTITY]).reset();
        m.requests.with_label_values(&[NO_IDENTITY]).reset();
        m.set_tracked(&monitor_core::correlate::Tracked::default());
        Ok(m)
    }

    /// Every family registered, with its type, labels and help: the source of the metrics
    /// reference page.
    pub fn catalogue(&self) -> Vec<MetricDoc> {
        let mut out = Vec::new();
        for c in &self.collectors {
            for (desc, family) in c.desc().into_iter().zip(c.collect()) {
                out.push(MetricDoc {
                    name: desc.fq_name.clone(),
                    kind: match family.get_field_type() {
                        MetricType::COUNTER => "counter",
                        MetricType::GAUGE => "gauge",
                        MetricType::HISTOGRAM => "histogram",
                        MetricType::SUMMARY => "summary",
                        MetricType::UNTYPED => "untyped",
                    },
                    labels: desc.variable_labels.clone(),
                    help: desc.help.clone(),
                });
            }
        }
        out
    }

    /// A verdict was written for an access whose last syscall happened at `last_ts_ns`; `now_ns`
    /// is on the same clock (CLOCK_MONOTONIC).
    /// Counts a judged access, and its alert latency from the access's last event to now (the
    /// metrics are live-only: the pipeline itself reads no clock).
    pub fn judged_now(&self, verdict: Verdict, source: Option<IdentitySource>, last_ts_ns: u64) {
        self.judged(verdict, source, last_ts_ns, crate::procfs::monotonic_ns());
    }

    pub fn judged(
        &self,
        verdict: Verdict,
        source: Option<IdentitySource>,
        last_ts_ns: u64,
        now_ns: u64,
    ) {
        match Verdict::ALL
            .iter()
            .position(|v| *v == verdict)
            .and_then(|i| self.accesses_by_verdict.get(i))
        {
            Some(counter) => counter.inc(),
            None => self.accesses.with_label_values(&[verdict.as_str()]).inc(),
        }
        if verdict == Verdict::Violation {
            self.violations
                .with_label_values(&[&source_label(source)])
                .inc();
        }
        let seconds = now_ns.saturating_sub(last_ts_ns) as f64 / 1e9;
        self.latency.observe(seconds);
    }

    /// A user crossed `rule`'s threshold (`enumeration`, `privileged_bulk`).
    pub fn enumeration(&self, rule: &str) {
        self.enumerations.with_label_values(&[rule]).inc();
    }

    /// An incident was opened by a line of kind `by` (`violation`, `enumeration`,
    /// `privileged_bulk`).
    pub fn incident_opened(&self, by: &str) {
        self.incidents.with_label_values(&[by]).inc();
    }

    /// Webhook outcomes so far (the webhook thread counts them; published with the run's
    /// counters).
    pub fn set_webhook_calls(&self, sent: u64, failed: u64, dropped: u64) {
        for (outcome, n) in [("sent", sent), ("failed", failed), ("dropped", dropped)] {
            let c = self.webhook_calls.with_label_values(&[outcome]);
            let now = c.get();
            if n > now {
                c.inc_by(n - now);
            }
        }
    }

    /// Events so far, by kind (cumulative, as in the run summary).
    pub fn sync_events(&self, by_kind: &BTreeMap<&'static str, u64>) {
        for (kind, total) in by_kind {
            raise_to(&self.events.with_label_values(&[kind]), *total);
        }
    }

    /// Kernel loss counters (cumulative, indexed by `monitor_common::loss` reason).
    pub fn sync_lost(&self, totals: &[u64]) {
        for (reason, total) in totals.iter().enumerate() {
            let name = monitor_common::loss::name(u32::try_from(reason).unwrap_or(u32::MAX));
            raise_to(&self.events_lost.with_label_values(&[name]), *total);
        }
    }

    pub fn sync_decode_errors(&self, total: u64) {
        raise_to(&self.decode_errors, total);
    }

    /// Stream desyncs so far, by reason (the correlator's cumulative counts).
    pub fn sync_desyncs(&self, by_reason: &std::collections::BTreeMap<Desync, u64>) {
        for (why, total) in by_reason {
            raise_to(&self.desyncs.with_label_values(&[why.as_str()]), *total);
        }
    }

    /// Requests so far by identity source (the correlator's cumulative counts).
    pub fn sync_requests(&self, by_source: &[(Option<IdentitySource>, u64)]) {
        for (source, total) in by_source {
            raise_to(
                &self.requests.with_label_values(&[&source_label(*source)]),
                *total,
            );
        }
    }

    /// TLS: libraries hooked and unreadable, plaintext records (read, write), unreadable TLS
    /// connections and HTTP/2 connections, all cumulative.
    pub fn sync_tls(
        &self,
        hooked: u64,
        unreadable: u64,
        records: [u64; 2],
        connections: u64,
        http2: u64,
    ) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.tls_libraries
            .with_label_values(&["hooked"])
            .set(g(hooked));
        self.tls_libraries
            .with_label_values(&["unreadable"])
            .set(g(unreadable));
        for (direction, total) in ["read", "write"].into_iter().zip(records) {
            let c = self.tls_records.with_label_values(&[direction]);
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
        raise_to(&self.tls_unreadable_connections, connections);
        raise_to(&self.http2_connections, http2);
    }

    pub fn sync_alerts_written(&self, total: u64) {
        raise_to(&self.alerts_written, total);
    }

    pub fn set_targets(&self, n: usize) {
        self.targets.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_probes(&self, attached: usize, expected: usize) {
        self.probes_attached
            .set(i64::try_from(attached).unwrap_or(i64::MAX));
        self.probes_expected
            .set(i64::try_from(expected).unwrap_or(i64::MAX));
    }

    /// The correlator's state sizes (bounded labels: the kinds of [`Tracked`]).
    pub fn set_tracked(&self, t: &monitor_core::correlate::Tracked) {
        for (kind, n) in [
            ("connections", t.connections),
            ("requests", t.requests),
            ("threads", t.threads),
            ("open_accesses", t.open_accesses),
            ("documents", t.documents),
            ("sessions", t.sessions),
        ] {
            self.tracked
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The programs' cumulative run statistics (from the kernel, per program).
    pub fn sync_probe_stats(&self, stats: &[crate::loader::ProgramStats]) {
        for s in stats {
            raise_to(&self.probe_runs.with_label_values(&[s.program]), s.runs);
            let c = self.probe_run_seconds.with_label_values(&[s.program]);
            let total = s.run_ns as f64 / 1e9;
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
    }

    pub fn set_ring_size(&self, bytes: u64) {
        self.ring_size.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn observe_ring_fill(&self, ratio: f64) {
        self.ring_fill.observe(ratio);
    }

    /// The text exposition format (version 0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// Builds the metrics and starts serving them on the configured address, or returns `None`
/// when metrics are disabled. Called before the probes load, so that a taken port stops Vigie
/// at once with a clear message.
pub async fn start(cfg: &crate::config::Config) -> Result<Option<Arc<Metrics>>, MetricsError> {
    if !cfg.metrics.enabled {
        tracing::info!("metrics disabled");
        return Ok(None);
    }
    // Config::normalize refuses such an address first; never fall back to another one.
    let addr = cfg
        .metrics
        .socket_addr()
        .ok_or_else(|| MetricsError::Address(cfg.metrics.addr.clone()))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| MetricsError::Bind { addr, error })?;
    let metrics = Arc::new(Metrics::new(&cfg.identity.sources)?);
    tracing::info!(%addr, "serving metrics on /metrics");
    tokio::spawn(serve(listener, metrics.clone()));
    Ok(Some(metrics))
}

/// Serves `/metrics` and `/healthz` until the runtime stops.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond(stream, &metrics).await {
                        tracing::debug!("metrics connection: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of fds, typically: wait instead of spinning on the error.
                tracing::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let response = match head {
        Ok(Ok(Some(head))) => route(&head, metrics),
        Ok(Ok(None)) => Response::text(431, "Request Header Fields Too Large", "head too large\n"),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head; `None` when it does not fit [`MAX_REQUEST_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // The client closed mid-head: answer what we have (`curl` always sends a full head).
            return Ok(Some(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    /// Extra header lines, each ending in CRLF.
    extra: &'static str,
    body: Vec<u8>,
    /// HEAD: the headers announce the body, which is not sent.
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The answer to one request head.
fn route(head: &[u8], metrics: &Metrics) -> Response {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request line\n");
    };
    if !version.starts_with(b"HTTP/1.") || parts.next().is_some() {
        return Response::text(400, "Bad Request", "bad request line\n");
    }
    let head_only = method == b"HEAD";
    if method != b"GET" && !head_only {
        let mut r = Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
        r.extra = "Allow: GET, HEAD\r\n";
        return r;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let mut response = match path {
        b"/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: prometheus::TEXT_FORMAT,
            extra: "",
            body: metrics.encode(),
            head_only: false,
        },
        b"/healthz" => Response::text(200, "OK", "ok\n"),
        _ => Response::text(404, "Not Found", "try /metrics\n"),
    };
    response.head_only = head_only;
    response
}

impl crate::ownership::resolver::LookupMetrics for Metrics {
    /// Lookup series at 0 for these backends, so the first failure is a visible increase.
    fn init_ownership(&self, backends: &[monitor_core::ownership::fact::BackendKind]) {
        for b in backends {
            for outcome in OWNERSHIP_OUTCOMES {
                self.ownership_lookups
                    .with_label_values(&[b.as_str(), outcome])
                    .reset();
            }
        }
    }

    /// One ownership lookup; `seconds` when it was not answered from the cache.
    fn ownership_lookup(&self, backend: &str, outcome: &str, seconds: Option<f64>) {
        self.ownership_lookups
            .with_label_values(&[backend, outcome])
            .inc();
        if let Some(s) = seconds {
            self.ownership_latency
                .with_label_values(&[backend])
                .observe(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&[IdentitySource::TrustedHeader, IdentitySource::Basic]).unwrap()
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    /// The value of one series in the exposition text.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn watched_series_start_at_zero() {
        let t = text(&metrics());
        for series in [
            r#"vigie_events_lost_total{reason="ringbuf_full"}"#,
            r#"vigie_stream_desyncs_total{reason="pipeline_ambiguous"}"#,
            r#"vigie_stream_desyncs_total{reason="head_too_large"}"#,
            r#"vigie_events_lost_total{reason="stash_full"}"#,
            r#"vigie_events_lost_total{reason="fd_map_full"}"#,
            r#"vigie_document_accesses_total{verdict="violation"}"#,
            r#"vigie_document_accesses_total{verdict="unknown_owner"}"#,
            r#"vigie_violations_total{identity_source="trusted_header"}"#,
            r#"vigie_violations_total{identity_source="basic"}"#,
            r#"vigie_violations_total{identity_source="none"}"#,
            r#"vigie_requests_total{identity_source="none"}"#,
            "vigie_targets",
            "vigie_probes_attached",
            r#"vigie_correlator_tracked{kind="connections"}"#,
            r#"vigie_correlator_tracked{kind="requests"}"#,
            r#"vigie_correlator_tracked{kind="threads"}"#,
            r#"vigie_correlator_tracked{kind="open_accesses"}"#,
            r#"vigie_correlator_tracked{kind="documents"}"#,
            r#"vigie_correlator_tracked{kind="sessions"}"#,
        ] {
            assert_eq!(value(&t, series), Some(0.0), "{series} in\n{t}");
        }
        assert_eq!(
            value(
                &t,
                &format!(
                    r#"vigie_build_info{{version="{}"}}"#,
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
    }

    #[test]
    fn identity_source_labels_are_the_alert_schema_names() {
        assert_eq!(
            source_label(Some(IdentitySource::TrustedHeader)),
            "trusted_header"
        );
        assert_eq!(source_label(Some(IdentitySource::Basic)), "basic");
        assert_eq!(source_label(Some(IdentitySource::Jwt)), "jwt");
        assert_eq!(source_label(None), "none");
    }

    #[test]
    fn judged_accesses_count_by_verdict_and_source() {
        let m = metrics();
        m.judged(
            Verdict::Violation,
            Some(IdentitySource::Basic),
            1_000_000_000,
            1_250_000_000,
        );
        m.judged(Verdict::Allowed, Some(IdentitySource::Basic), 0, 0);
        let t = text(&m);
        assert_eq!(
            value(&t, r#"vigie_violations_total{identity_source="basic"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(
                &t,
                r#"vigie_violations_total{identity_source="trusted_header"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(&t, r#"vigie_document_accesses_total{verdict="violation"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&t, r#"vigie_document_accesses_total{verdict="allowed"}"#),
            Some(1.0)
        );
        assert_eq!(value(&t, "vigie_pipeline_latency_seconds_count"), Some(2.0));
        assert_eq!(value(&t, "vigie_pipeline_latency_seconds_sum"), Some(0.25));
        assert_eq!(
            value(&t, r#"vigie_pipeline_latency_seconds_bucket{le="0.4"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&t, r#"vigie_pipeline_latency_seconds_bucket{le="0.2"}"#),
            Some(1.0)
        );
        // Fine buckets around the 10 ms target.
        assert_eq!(
            value(&t, r#"vigie_pipeline_latency_seconds_bucket{le="0.00025"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&t, r#"vigie_pipeline_latency_seconds_bucket{le="0.01"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn cumulative_totals_only_go_up() {
        let m = metrics();
        m.sync_lost(&[3, 0, 1]);
        m.sync_lost(&[5, 0, 1]);
        m.sync_lost(&[4, 0, 1]);
        let mut kinds = BTreeMap::new();
        kinds.insert("file_read", 7);
        m.sync_events(&kinds);
        m.sync_requests(&[(None, 2), (Some(IdentitySource::TrustedHeader), 9)]);
        let t = text(&m);
        assert_eq!(
            value(&t, r#"vigie_events_lost_total{reason="ringbuf_full"}"#),
            Some(5.0)
        );
        assert_eq!(
            value(&t, r#"vigie_events_lost_total{reason="fd_map_full"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&t, r#"vigie_events_total{kind="file_read"}"#),
            Some(7.0)
        );
        assert_eq!(
            value(&t, r#"vigie_requests_total{identity_source="none"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(
                &t,
                r#"vigie_requests_total{identity_source="trusted_header"}"#
            ),
            Some(9.0)
        );
    }

    /// One exchange with a real listener: what a client sending `request` gets back.
    async fn exchange(request: &[u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(metrics())));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        server.abort();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_over_tcp_and_bounds_heads() {
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nConnection: close\r\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(body.contains("vigie_events_lost_total{reason=\"ringbuf_full\"} 0\n"));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        let refused = exchange(huge.as_bytes()).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
    }

    fn status(response: &Response) -> u16 {
        response.status
    }

    #[test]
    fn routes() {
        let m = metrics();
        let ok = route(b"GET /metrics HTTP/1.1\r\nHost: x", &m);
        assert_eq!(status(&ok), 200);
        assert!(
            String::from_utf8_lossy(&ok.body).contains("# TYPE vigie_events_lost_total counter")
        );
        assert_eq!(ok.content_type, "text/plain; version=0.0.4");
        assert_eq!(status(&route(b"GET /metrics?x=1 HTTP/1.0", &m)), 200);
        assert_eq!(status(&route(b"GET /healthz HTTP/1.1", &m)), 200);
        assert_eq!(status(&route(b"GET / HTTP/1.1", &m)), 404);
        assert_eq!(status(&route(b"POST /metrics HTTP/1.1", &m)), 405);
        assert_eq!(status(&route(b"GET /metrics", &m)), 400);
        assert_eq!(status(&route(b"\x16\x03\x01 garbage", &m)), 400);
        let head = route(b"HEAD /metrics HTTP/1.1", &m).to_bytes();
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(!head.contains("Content-Length: 0\r\n"), "{head}");
    }
}
