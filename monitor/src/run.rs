//! The live pipeline: probes -> ring buffer (AsyncFd, no polling) -> decode -> `capture` (redact,
//! cut bodies, session stores, /proc facts) -> correlate -> judge -> alerts, until SIGINT/SIGTERM
//! or `--duration`. This module keeps the loop: targets, kernel feedback, loss, metrics.
use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use monitor_common::loss;
use monitor_core::{
    correlate::Correlator,
    decode::Decoder,
    events::{Comm, Event, EventKind, FoundFd},
    walltime::WallClock,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    capture::{Capture, CaptureSettings, tell_kernel},
    config::Config,
    loader::Probes,
    pipeline::Pipeline,
    procfs, runtime,
    sinks::{
        alerts::AlertSink,
        trace::{self, Rotation, TraceWriter},
    },
};

/// The probes, built by build.rs.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// How often the reader wakes without events: expires idle accesses, reports lost events.
const TICK: Duration = Duration::from_millis(100);

/// How often the reader drains the ring buffer when the probes did not wake it: the probes
/// submit silently until a quarter of the ring is pending (per-record wake-ups cost more than
/// the records), so this bounds how long a quiet event waits. Part of the alert latency.
pub const DRAIN: Duration = Duration::from_millis(4);

/// How long start-up waits for each ownership database to answer its first check.
const OWNERSHIP_PROBE_WAIT: Duration = Duration::from_secs(5);

pub struct RunOptions {
    pub config: Config,
    pub alerts: Option<PathBuf>,
    pub audit: bool,
    /// `vigie.alert/1` or OCSF.
    pub alerts_format: crate::sinks::alerts::AlertFormat,
    pub ready_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// Record every event the correlator consumes to trace files in this directory.
    pub record: Option<(PathBuf, Rotation)>,
}

/// What a run saw, printed at exit.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub seconds: f64,
    pub events: u64,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub decode_errors: u64,
    pub lost_by_reason: BTreeMap<&'static str, u64>,
    pub requests: u64,
    pub accesses_by_verdict: BTreeMap<&'static str, u64>,
    pub alerts: u64,
    pub targets_seen: usize,
}

struct Live {
    cfg: Config,
    probes: Probes,
    pipeline: Pipeline,
    targets: HashSet<u32>,
    seen: HashSet<u32>,
    lost: [u64; loss::COUNT as usize],
    /// Redaction, body cuts, session stores, /proc facts: between the decoder and the pipeline.
    capture: Capture,
    /// Scratch for the events the capture stage passes on, and the decoder's.
    passed: Vec<Event>,
    decoded: Vec<Event>,
    summary: Summary,
    decoder: Decoder,
    metrics: Option<std::sync::Arc<crate::sinks::metrics::Metrics>>,
    ring_usage: Option<crate::loader::RingUsage>,
    /// Why the run ended, for the trail's stop record.
    stop_reason: &'static str,
    /// Ship the trail off the host (`[trail.syslog]`, `[trail.postgres]`).
    shippers: Vec<crate::sinks::ship::Shipper>,
    /// TLS libraries of targets: hooked, or reported unreadable.
    tls: crate::tls::TlsHooks,
    /// TLS plaintext records (reads, writes) from the uprobes.
    tls_records: [u64; 2],
    go: crate::golang::GoTargets,
    /// The kernel's last loss ([`monitor_common::Header::last_loss_ns`]) on the last record.
    last_loss: u64,
    /// What adopted processes showed in `/proc`, waiting for its place among kernel events.
    adoptions: crate::adoption::Adoptions,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Summary> {
    if PROBES.is_empty() {
        anyhow::bail!("this binary was built with VIGIE_SKIP_EBPF_BUILD=1 and has no probes");
    }
    let cfg = opts.config;
    let metrics = crate::sinks::metrics::start(&cfg).await?;
    let mut probes = Probes::load(&cfg, PROBES)?;
    log_report(&probes.report);
    // SAFETY: the ring buffer owns its fd and keeps it open until the AsyncFd drops it.
    let ring =
        unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with the runtime: {e}"))?;
    let clock = WallClock {
        realtime_offset_ns: procfs::realtime_offset_ns(),
    };
    let out: Box<dyn Write + Send> = match &opts.alerts {
        Some(path) => Box::new(crate::sinks::alerts::open_alert_file(path)?),
        None => Box::new(std::io::stdout()),
    };
    let pipeline = Pipeline::new(
        Correlator::new(
            cfg.correlator()
                .with_realtime_offset_ns(clock.realtime_offset_ns),
        ),
        cfg.judge(),
        cfg.resolver()?,
        AlertSink::new(out, clock, opts.audit).with_format(opts.alerts_format),
    );
    let capture = Capture::new(CaptureSettings::from_config(&cfg)?)?;
    // Goroutines are followed where the kernel tells where a thread's TLS is, unless turned off.
    let go =
        crate::golang::GoTargets::new(cfg.correlation.goroutines && probes.task_fsbase.is_some());
    let mut live = Live {
        cfg,
        probes,
        pipeline,
        targets: HashSet::new(),
        seen: HashSet::new(),
        lost: [0; loss::COUNT as usize],
        capture,
        passed: Vec::new(),
        decoded: Vec::new(),
        summary: Summary::default(),
        decoder: Decoder::new(),
        metrics,
        ring_usage: None,
        tls: crate::tls::TlsHooks::new(),
        tls_records: [0; 2],
        go,
        stop_reason: "end",
        shippers: Vec::new(),
        last_loss: 0,
        adoptions: crate::adoption::Adoptions::default(),
    };
    live.init_metrics(&ring);
    live.pipeline
        .set_incidents(monitor_core::incident::Incidents::new(
            live.cfg.incidents.rules(),
        ));
    if let Some(hook) = &live.cfg.incidents.webhook {
        live.pipeline
            .set_webhook(crate::sinks::webhook::Webhook::start(hook));
    }
    if (live.cfg.trail.syslog.is_some() || live.cfg.trail.postgres.is_some())
        && live.cfg.trail.dir.is_none()
    {
        anyhow::bail!(
            "invalid `trail.syslog` or `trail.postgres`: they ship the trail's records, so they need a trail (`trail.dir` or --trail)"
        );
    }
    if let Some(dir) = live.cfg.trail.dir.clone() {
        let trail = open_trail(&live.cfg, &dir, clock)?;
        tracing::info!(file = %trail.current_file().display(), key_id = trail.key_id(), "audit trail");
        live.pipeline.set_trail(trail);
        // Read once here; like the signing key, never logged.
        let pseudonyms = crate::config::pseudonymiser(&live.cfg.trail)
            .map_err(|(field, why)| anyhow::anyhow!("{field}: {why}"))?;
        if let Some(syslog) = &live.cfg.trail.syslog {
            live.shippers.push(
                crate::sinks::ship::syslog::start(
                    &dir,
                    syslog,
                    crate::sinks::ocsf::hostname(),
                    pseudonyms.clone(),
                )
                .context("starting the trail's syslog shipping")?,
            );
        }
        if let Some(pg) = &live.cfg.trail.postgres {
            live.shippers.push(
                crate::sinks::ship::postgres::start(&dir, pg, pseudonyms.clone())
                    .context("starting the trail's PostgreSQL shipping")?,
            );
        }
    }
    if let Some((dir, rotation)) = &opts.record {
        let header = trace::header(&live.cfg, clock);
        let writer = TraceWriter::create(dir, header, *rotation)
            .with_context(|| format!("creating trace files in {}", dir.display()))?;
        tracing::info!(file = %writer.files()[0].display(), "recording");
        live.pipeline.set_trace(writer);
    }
    let started = Instant::now();
    // Attached first, then targets: nothing a target does after this point is missed.
    for pid in procfs::initial_targets(&live.cfg) {
        live.adopt(pid)?;
    }
    // A worker forked between that scan of /proc and its parent becoming a target was seen by
    // neither (its fork came before the probe would follow it): look again until none is new.
    loop {
        let missed: Vec<u32> = procfs::initial_targets(&live.cfg)
            .into_iter()
            .filter(|p| !live.seen.contains(p) && !live.probes.is_target(*p))
            .collect();
        if missed.is_empty() {
            break;
        }
        for pid in missed {
            tracing::debug!(pid, "forked while its parent was adopted");
            live.adopt(pid)?;
        }
    }
    // Classic TLS uprobes (a kernel without uprobe.multi) cannot be attached after the drop:
    // the system's libssl is hooked now, for the targets that start later.
    if live.probes.tls_classic() {
        live.tls.attach_system(&mut live.probes);
    }
    match live.probes.tls_way() {
        Some(way) => tracing::info!(way, "TLS hooks"),
        None => tracing::warn!("TLS not readable: no TLS program could be loaded"),
    }
    tracing::info!(targets = ?live.targets, names = ?live.cfg.exec_names(), "watching");
    // Handlers before announcing readiness: a SIGINT right after must detach and flush, not kill.
    let signals = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    // Before the drop: raising the priority needs CAP_SYS_NICE.
    match crate::privilege::set_nice(live.cfg.kernel.reader_nice) {
        Ok(Some(nice)) => tracing::info!(nice, "reader priority set"),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "could not set the reader's nice value to {} (kernel.reader_nice): {e}; alerts may wait behind the portal on saturated CPUs",
            live.cfg.kernel.reader_nice
        ),
    }
    // Everything that needed privilege is done: loading, attaching, mounting, binding.
    match crate::privilege::drop_after_attach() {
        Ok(kept) => {
            tracing::info!(kept = ?crate::privilege::describe(kept), "capabilities dropped")
        }
        Err(e) => tracing::warn!("could not drop capabilities: {e}"),
    }
    // After the drop: the database lookup threads start here, with the reduced set. A query
    // the database refuses stops Vigie; a database that is down is a warning.
    live.pipeline
        .resolver_mut()
        .start(OWNERSHIP_PROBE_WAIT)
        .context("invalid configuration")?;
    // Parsing the kernel's BTF left tens of MiB of freed heap behind: give it back, so the
    // daemon's resident size is what it uses (77.9 -> 23.9 MiB measured in the bench).
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    if let Some(path) = &opts.ready_file {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .context("writing the ready file")?;
    }
    live.serve(ring, signals, opts.duration).await?;
    live.summary.seconds = started.elapsed().as_secs_f64();
    live.finish()
}

impl Live {
    /// Starts watching a running process: kernel filter, fds it already holds.
    ///
    /// What takes time (finding its TLS library and hooking it, reading a Go executable) is
    /// done first: from the moment it is a target, the kernel reports the process into the ring
    /// buffer, which nobody drains until the adoption is over. What `/proc` shows then waits
    /// for its place among the kernel's events (`adoption`).
    fn adopt(&mut self, pid: u32) -> anyhow::Result<()> {
        self.tls.scan(&mut self.probes, pid);
        let go = self.go.inspect(pid);
        let start = procfs::monotonic_ns();
        match go.as_ref().and_then(|(_, layout)| layout.as_ref()) {
            Some(layout) => self.probes.add_go_target(pid, layout)?,
            None => self.probes.add_target(pid)?,
        }
        self.targets.insert(pid);
        self.seen.insert(pid);
        let mut sockets = Vec::new();
        let roots = self.probes.roots.all();
        let described = procfs::describe(pid, &roots, start);
        let end = procfs::monotonic_ns();
        for mut ev in described {
            self.probes.roots.rename(&mut ev);
            if let EventKind::FdFound { fd, ref found } = ev.kind {
                if matches!(found, FoundFd::Socket) {
                    sockets.push(fd);
                }
                ev.ts_ns = end;
            }
            tell_kernel(&mut self.probes, &ev)?;
            // After `describe`'s exec event, which starts the process afresh, and before the
            // fds: the correlator is told that the process is Go either way (its threads scope
            // nothing), with whether its goroutines are followed.
            let exec = matches!(ev.kind, EventKind::ProcessExec);
            self.adoptions.push(ev);
            if exec && let Some((version, layout)) = &go {
                self.adoptions
                    .push(go_runtime(pid, start, version.clone(), layout.is_some()));
            }
        }
        if self.probes.syscalls_by_btf() {
            // A read already in progress returns without passing the fexit program, and no
            // exit tracepoint would take a stash: its request is not seen (README, status).
            if !sockets.is_empty() {
                tracing::debug!(
                    pid,
                    "reads in progress at adoption are not seen with BTF syscall hooks"
                );
            }
        } else {
            self.stash_sleeping_reads(pid, &sockets);
        }
        Ok(())
    }

    /// Feeds the adoption events that hold at `ts_ns` or before.
    fn release_adoptions(&mut self, ts_ns: u64) -> anyhow::Result<()> {
        self.feed_adoptions(|a, due| a.release(ts_ns, due))
    }

    /// Feeds the adoption events `take` hands out (none while no adoption waits).
    fn feed_adoptions(
        &mut self,
        take: impl FnOnce(&mut crate::adoption::Adoptions, &mut Vec<Event>),
    ) -> anyhow::Result<()> {
        if self.adoptions.is_empty() {
            return Ok(());
        }
        let mut due = Vec::new();
        take(&mut self.adoptions, &mut due);
        for ev in &due {
            self.capture.adopted(ev);
            self.feed(ev)?;
        }
        Ok(())
    }

    /// A thread of an adopted process that sleeps in a read on a socket entered that read
    /// before the probes were attached: its exit would find no stash, and the request head it
    /// returns would be missed (a keep-alive connection idle across a Vigie restart would lose
    /// its next request). Such threads get the stash the entry probe would have left.
    ///
    /// Only a stash that provably went in while the thread sat in that very read is kept: same
    /// syscall and arguments before and after the insert, and no voluntary context switch in
    /// between (a thread that left the read and slept again would have one). A stale stash
    /// would be consumed by the exit of some later syscall and capture whatever the buffer then
    /// held, so when in doubt it is taken back: the request is then missed, never misread.
    /// (Taken back only if it is still ours: marked [`monitor_common::Stash::ADOPTED`], so a
    /// stash the entry probe wrote for the thread's next read is never removed.)
    fn stash_sleeping_reads(&mut self, pid: u32, sockets: &[i32]) {
        for tid in procfs::threads_of(pid) {
            let Some(switches) = procfs::voluntary_switches(pid, tid) else {
                continue;
            };
            let Some(before) = procfs::sleeping_syscall(pid, tid) else {
                continue;
            };
            let Some(op) = crate::loader::socket_read_op(before.nr) else {
                continue;
            };
            let fd = i32::try_from(before.args[0]).unwrap_or(-1);
            if !sockets.contains(&fd) {
                continue;
            }
            let stash = monitor_common::Stash {
                op,
                kind: u32::from(monitor_common::fd_kind::SOCKET),
                fd,
                fd2: monitor_common::Stash::ADOPTED,
                ptr: before.args[1],
                arg: before.args[2],
            };
            match self.probes.stash_for(pid, tid, &stash) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(pid, tid, "cannot stash a sleeping read: {e}");
                    continue;
                }
            }
            let still = procfs::sleeping_syscall(pid, tid) == Some(before)
                && procfs::voluntary_switches(pid, tid) == Some(switches);
            if still {
                tracing::debug!(pid, tid, fd, "adopted a read in progress");
            } else if let Err(e) = self.probes.unstash(pid, tid, &stash) {
                tracing::warn!(pid, tid, "cannot take back a stale stash: {e}");
            }
        }
    }

    /// A Go target after an exec (the probe made it a plain target again): its events carry
    /// the goroutine id from now on, when its binary says where to find it. The correlator is
    /// told that the process is Go either way: its threads scope nothing.
    fn follow_goroutines(&mut self, pid: u32) -> anyhow::Result<()> {
        let Some((version, layout)) = self.go.inspect(pid) else {
            return Ok(());
        };
        if let Some(layout) = &layout {
            self.probes.add_go_target(pid, layout)?;
        }
        self.feed(&go_runtime(
            pid,
            procfs::monotonic_ns(),
            version,
            layout.is_some(),
        ))
    }

    fn feed(&mut self, ev: &Event) -> anyhow::Result<()> {
        if let EventKind::RuntimeFound { runtime } = &ev.kind {
            tracing::info!(
                pid = ev.pid,
                ?runtime,
                "M:N runtime: no thread scope for this process, content evidence only"
            );
        }
        self.summary.events += 1;
        *self
            .summary
            .events_by_kind
            .entry(kind_name(&ev.kind))
            .or_default() += 1;
        // The pipeline records the event (after the ownership facts it needed), then alerts.
        self.pipeline
            .handle(ev)
            .context("writing alerts or the trace")?;
        // Where a response body ends, for the probes to count its writes rather than send them.
        // A span the map refuses only means those writes are sent one by one.
        let spans = self.pipeline.take_spans();
        if !self.cfg.capture.count_body_writes {
            return Ok(());
        }
        for span in spans {
            let body = monitor_common::sockets::BodySpan {
                start: span.start,
                end: span.end,
            };
            if let Err(e) = self.probes.set_body_span(span.pid, span.fd, &body) {
                tracing::debug!("body span not given to the probes: {e}");
            }
        }
        Ok(())
    }

    async fn serve(
        &mut self,
        mut ring: AsyncFd<RingBuf<MapData>>,
        (mut sigint, mut sigterm): (Signal, Signal),
        duration: Option<Duration>,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        let mut drain = tokio::time::interval(DRAIN);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.observe_ring_fill();
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                }
                _ = drain.tick() => self.drain(ring.get_mut())?,
                _ = tick.tick() => {
                    self.drain(ring.get_mut())?;
                    self.tls.tick(&mut self.probes);
                    self.report_loss(false)?;
                    self.publish_metrics();
                    if let Some(trace) = self.pipeline.trace_mut() {
                        trace.flush().context("writing the trace")?;
                    }
                    if let Some(trail) = self.pipeline.trail_mut() {
                        trail.tick(crate::sinks::trail::wall_now()).context("writing the audit trail")?;
                    }
                    self.feed(&Event { ts_ns: procfs::monotonic_ns(), pid: 0, tid: 0, comm: Comm::default(), goid: None, kind: EventKind::Tick })?;
                }
                _ = sigint.recv() => { tracing::info!("SIGINT: detaching"); self.stop_reason = "sigint"; break; }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching"); self.stop_reason = "sigterm"; break; }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    tracing::info!("duration reached: detaching");
                    self.stop_reason = "duration";
                    break;
                }
            }
            // The batch's alert lines, in one write.
            self.pipeline.flush_alerts().context("writing alerts")?;
        }
        // What the kernel wrote before we stopped still counts.
        self.drain(ring.get_mut())?;
        self.report_loss(false)
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        loop {
            let mut decoded = std::mem::take(&mut self.decoded);
            let result = match ring.next() {
                Some(item) => {
                    // A record stamped with a new loss time comes after a gap: what the lost
                    // events could have changed is forgotten before it is handled.
                    if let Some(at) = monitor_core::decode::last_loss(&item)
                        && at != self.last_loss
                    {
                        self.last_loss = at;
                        self.report_loss(true)?;
                    }
                    match monitor_core::decode::peek(&item) {
                        Some((monitor_common::kind::CODE_MAP, pid, _)) => {
                            drop(item);
                            self.decoded = decoded;
                            self.tls.code_mapped(&mut self.probes, pid);
                            continue;
                        }
                        Some((_, _, monitor_common::op::SSL_READ)) => self.tls_records[0] += 1,
                        Some((_, _, monitor_common::op::SSL_WRITE)) => self.tls_records[1] += 1,
                        _ => {}
                    }
                    self.decoder.next(&item, &mut decoded)
                }
                None => {
                    self.decoded = decoded;
                    // Nothing older can still come: the adoption events due by now go in.
                    let due = procfs::monotonic_ns().saturating_sub(crate::adoption::GRACE_NS);
                    return self.release_adoptions(due);
                }
            };
            match result {
                Ok(()) => {
                    // Request lines split across reads are passed on whole, once the capture
                    // stage kept out what Vigie cannot read.
                    let mut passed = std::mem::take(&mut self.passed);
                    for ev in decoded.drain(..) {
                        self.feed_adoptions(|a, due| a.before(&ev, due))?;
                        let decoder = &mut self.decoder;
                        self.capture
                            .admit(ev, &mut passed, |dropped| decoder.recycle(dropped));
                    }
                    self.decoded = decoded;
                    for ev in passed.drain(..) {
                        self.pass(ev)?;
                    }
                    self.passed = passed;
                }
                Err(e) => {
                    self.summary.decode_errors += 1;
                    tracing::warn!("undecodable record: {e}");
                }
            }
        }
    }

    /// Redacts, enriches and feeds one event.
    fn pass(&mut self, mut ev: Event) -> anyhow::Result<()> {
        for found in self.before_feed(&mut ev)? {
            self.feed(&found)?;
            self.after_feed(&found)?;
        }
        self.feed(&ev)?;
        self.after_feed(&ev)?;
        self.decoder.recycle(ev);
        Ok(())
    }

    /// The capture stage's work on `ev` (see [`Capture::prepare`]), then the targets' own: a
    /// process that exec'd a program selected by name is checked against the selectors.
    /// Returns the events to feed before `ev`.
    fn before_feed(&mut self, ev: &mut Event) -> anyhow::Result<Vec<Event>> {
        let correlator = self.pipeline.correlator();
        let first = self.capture.prepare(ev, &self.probes.roots, |hashed| {
            correlator.knows_session(hashed)
        });
        if matches!(ev.kind, EventKind::ProcessExec) && !self.targets.contains(&ev.pid) {
            // Matched by name in the kernel: an executable selector must also match the path.
            let by_name = self.cfg.targets.names.iter().any(|n| *n == *ev.comm);
            if !by_name && !procfs::matches(&self.cfg, ev.pid) {
                self.probes.remove_target(ev.pid)?;
                return Ok(first);
            }
            self.targets.insert(ev.pid);
            self.seen.insert(ev.pid);
            tracing::info!(pid = ev.pid, comm = %ev.comm, "new target (exec)");
        }
        Ok(first)
    }

    fn after_feed(&mut self, ev: &Event) -> anyhow::Result<()> {
        match &ev.kind {
            EventKind::ProcessFork { child_pid } => {
                self.targets.insert(*child_pid);
                self.seen.insert(*child_pid);
                // The child inherited the parent's document fds: tell the probes before it reads.
                for fd in self.pipeline.correlator().documents_of(*child_pid) {
                    self.probes.set_fd_kind(*child_pid, fd, true)?;
                }
                tracing::debug!(parent = ev.pid, child = child_pid, "new target (fork)");
            }
            EventKind::ProcessExec if self.targets.contains(&ev.pid) => {
                // A new program: a Go one, or one linking a TLS library (those come with the
                // dynamic loader's mappings, `kind::CODE_MAP`).
                self.tls.scan(&mut self.probes, ev.pid);
                if let Some(found) = runtime::found(ev) {
                    self.feed(&found)?;
                }
                // The exec probe made it a plain target again: a new program.
                self.follow_goroutines(ev.pid)?;
                // fds that survived exec.
                for mut found in procfs::found_fds(ev, &self.probes.roots.all()) {
                    self.probes.roots.rename(&mut found);
                    tell_kernel(&mut self.probes, &found)?;
                    self.feed(&found)?;
                }
            }
            EventKind::ProcessExit => {
                self.targets.remove(&ev.pid);
            }
            _ => {}
        }
        Ok(())
    }

    /// Feeds a `Lost` event per reason the kernel counted losses for since the last call.
    /// `in_band`: a record said that events were lost before it; should the counters not show
    /// it yet, a gap is reported all the same.
    fn report_loss(&mut self, in_band: bool) -> anyhow::Result<()> {
        let now = self.probes.lost()?;
        // TLS plaintext with no socket to tie it to (a library used with memory BIOs, as
        // asyncio does): no stream Vigie follows lost a byte, so no gap for the redactor or
        // the correlator; such a connection's ciphertext is caught by the connection gate.
        let gap = |i: usize| i != loss::TLS_NO_FD as usize;
        let changed = (0..now.len()).any(|i| gap(i) && now[i] != self.lost[i]);
        if changed || in_band {
            // What was held goes first: it was read before whatever was lost.
            self.pass_held()?;
            // A lost read may have been part of a FastCGI stream: both the redactor and the
            // correlator (at the `Lost` event below) wait for a point to resume.
            self.capture.lost();
        }
        for (reason, (&total, before)) in now.iter().zip(self.lost).enumerate() {
            let delta = total.saturating_sub(before);
            if delta > 0 {
                let name = loss::name(reason as u32);
                *self.summary.lost_by_reason.entry(name).or_default() += delta;
                if !gap(reason) {
                    continue;
                }
                self.feed(&lost(name, delta))?;
            }
        }
        if in_band && !changed {
            self.feed(&lost(loss::name(u32::MAX), 1))?;
        }
        self.lost = now;
        Ok(())
    }

    /// Passes on every request line still held (events were lost, or the run ends).
    fn pass_held(&mut self) -> anyhow::Result<()> {
        let mut pending = Vec::new();
        self.decoder.flush(&mut pending);
        let mut held = Vec::new();
        self.capture.flush(pending, &mut held);
        for ev in held {
            self.pass(ev)?;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<Summary> {
        self.release_adoptions(u64::MAX)?;
        self.pass_held()?;
        // Also writes the last ownership facts and flushes the trace.
        self.pipeline
            .finish()
            .context("writing alerts or the trace")?;
        if let Some(trail) = self.pipeline.trail_mut() {
            trail
                .stop(self.stop_reason, crate::sinks::trail::wall_now())
                .context("writing the audit trail")?;
        }
        for shipper in &self.shippers {
            shipper.request_stop();
        }
        for shipper in self.shippers.drain(..) {
            shipper.finish();
        }
        let mut s = self.summary;
        s.requests = self.pipeline.correlator().stats().requests;
        s.accesses_by_verdict = self.pipeline.counts.by_verdict.clone();
        s.alerts = self.pipeline.alerts_written();
        s.targets_seen = self.seen.len();
        let rate = if s.seconds > 0.0 {
            s.events as f64 / s.seconds
        } else {
            0.0
        };
        let lost: u64 = s.lost_by_reason.values().sum();
        eprintln!(
            "vigie: {:.1}s, {} events ({rate:.0}/s), {lost} lost, {} decode errors, {} targets, {} requests, accesses {:?}, {} alert lines",
            s.seconds,
            s.events,
            s.decode_errors,
            s.targets_seen,
            s.requests,
            s.accesses_by_verdict,
            s.alerts
        );
        eprintln!("vigie: events by kind {:?}", s.events_by_kind);
        Ok(s)
    }
}

/// Opens the audit trail: the key is read here, once, and only its id is ever logged.
fn open_trail(
    cfg: &Config,
    dir: &std::path::Path,
    clock: WallClock,
) -> anyhow::Result<crate::sinks::trail::TrailWriter> {
    use crate::sinks::trail::{ConfigDigest, TrailPolicy, TrailWriter, load_key, wall_now};
    let t = &cfg.trail;
    let key_file = t
        .key_file
        .as_deref()
        .context("trail.key_file is required with trail.dir")?;
    let key = load_key(key_file).context("trail.key_file")?;
    let policy = TrailPolicy {
        checkpoint_interval: Duration::from_secs(t.checkpoint_interval_secs),
        max_file_bytes: t.max_file_mb.max(1) << 20,
        retention: t
            .retention_days
            .map(|d| Duration::from_secs(u64::from(d) * 86_400)),
    };
    TrailWriter::open(dir, key, policy, clock, &ConfigDigest::of(cfg), wall_now())
        .with_context(|| format!("opening the audit trail in {}", dir.display()))
}

/// `vigie probes`: the start-up report without a run. Without root, the plan only (nothing is
/// loaded, so nothing is verified).
pub fn probes_command(
    json: bool,
    hooks: crate::config::HookChoice,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::attach::{self, AttachReport};
    if PROBES.is_empty() {
        anyhow::bail!("this binary was built with VIGIE_SKIP_EBPF_BUILD=1 and has no probes");
    }
    let print = |report: &AttachReport| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(report)?);
        } else {
            println!("{report}");
        }
        Ok(())
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut cfg = Config::default();
        cfg.kernel.hooks = hooks;
        return match Probes::load(&cfg, PROBES) {
            Ok(mut probes) => {
                // The TLS hooks go on each library a target maps; shown here on the system's.
                if let Some(lib) = crate::tls::system_libssl() {
                    let shown = lib.display().to_string();
                    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&lib)?);
                    probes.attach_tls(&lib, &shown, inode);
                }
                print(&probes.report)?;
                Ok(std::process::ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("vigie: {e}");
                Ok(std::process::ExitCode::FAILURE)
            }
        };
    }
    let facts = crate::kernel::KernelFacts::read();
    match attach::plan(&facts, attach::table(), hooks) {
        Ok(planned) => {
            print(&AttachReport::of_plan(facts, &planned))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!("vigie: this kernel cannot run Vigie's probes: {refusal} [{facts}]");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// The start-up report in the log: the kernel facts, then one line per program with its hooks,
/// why it is there and whether it ran when made to; a warning for each hook not attached.
fn log_report(report: &crate::attach::AttachReport) {
    tracing::info!("{}", report.facts);
    let mut programs: Vec<&str> = report.hooks.iter().map(|h| h.program).collect();
    programs.dedup();
    for program in programs {
        let hooks: Vec<_> = report
            .hooks
            .iter()
            .filter(|h| h.program == program && h.status == "attached")
            .collect();
        let Some(first) = hooks.first() else {
            continue;
        };
        // `tracepoint syscalls/sys_enter_read, sys_enter_pread64, ...`: the common prefix once.
        let prefix = first.hook.rsplit_once(['/', ' ']).map_or("", |(p, _)| p);
        let names: Vec<&str> = hooks
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let rest = h
                    .hook
                    .strip_prefix(prefix)
                    .filter(|_| i > 0 && !prefix.is_empty());
                match rest.and_then(|r| r.strip_prefix(['/', ' '])) {
                    Some(name) => name,
                    None => h.hook.as_str(),
                }
            })
            .collect();
        let fired = match first.fired {
            Some(n) => format!("; ran {n}x when made to ({})", first.fire_check),
            None => String::new(),
        };
        tracing::info!(
            "attached {program} on {}: {}{fired}",
            names.join(", "),
            first.reason
        );
    }
    for h in &report.hooks {
        match h.status {
            "skipped" => tracing::warn!("not attached: {} ({}): {}", h.hook, h.program, h.reason),
            "replaced" => tracing::info!("replaced: {} ({}): {}", h.hook, h.program, h.reason),
            _ => {}
        }
    }
    if let Some(why) = &report.fire_check_unavailable {
        tracing::warn!("fire check not run: {why}");
    }
    tracing::info!("{}", report.goroutines);
    tracing::info!("probes: {}", report.summary());
}

/// The correlator is told that `pid` runs Go, and whether its goroutines are followed.
fn go_runtime(pid: u32, ts_ns: u64, version: String, goroutines: bool) -> Event {
    Event {
        ts_ns,
        pid,
        tid: pid,
        comm: Comm::default(),
        goid: None,
        kind: EventKind::GoRuntime {
            version,
            goroutines,
        },
    }
}

/// A `Lost` event: `count` events lost in the kernel for `reason`, as of now.
fn lost(reason: &str, count: u64) -> Event {
    Event {
        ts_ns: procfs::monotonic_ns(),
        pid: 0,
        tid: 0,
        comm: Comm::default(),
        goid: None,
        kind: EventKind::Lost {
            reason: reason.to_string(),
            count,
        },
    }
}

pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::ProcessExec => "process_exec",
        EventKind::ProcessFork { .. } => "process_fork",
        EventKind::RuntimeFound { .. } => "runtime_found",
        EventKind::ProcessExit => "process_exit",
        EventKind::ThreadExit => "thread_exit",
        EventKind::FdFound { .. } => "fd_found",
        EventKind::FileOpen { .. } => "file_open",
        EventKind::FileRead { .. } => "file_read",
        EventKind::FileReadMore { .. } => "file_read_more",
        EventKind::FileMap { .. } => "file_map",
        EventKind::SendFile { .. } => "sendfile",
        EventKind::FileClose { .. } => "file_close",
        EventKind::SockAccept { .. } => "sock_accept",
        EventKind::SockRead { .. } => "sock_read",
        EventKind::SockWrite { .. } => "sock_write",
        EventKind::SockWriteMore { .. } => "sock_write_more",
        EventKind::SessionFound { .. } => "session_found",
        EventKind::GoRuntime { .. } => "go_runtime",
        EventKind::SockClose { .. } => "sock_close",
        EventKind::Unreadable { .. } => "unreadable",
        EventKind::Http2 { .. } => "http2",
        EventKind::Lost { .. } => "lost",
        EventKind::Tick => "tick",
        EventKind::OwnershipFact(_) => "ownership_fact",
    }
}

/// Metrics: set up once, then published from the tick (cumulative counts kept by the run are
/// copied at most 100 ms late; verdicts are counted as they are written, by the pipeline).
impl Live {
    fn init_metrics(&mut self, ring: &AsyncFd<RingBuf<MapData>>) {
        let Some(m) = self.metrics.clone() else {
            return;
        };
        self.pipeline.set_metrics(m.clone());
        self.pipeline.resolver_mut().set_metrics(m.clone());
        m.set_probes(self.probes.attached(), self.probes.expected());
        m.set_ring_size(u64::from(self.cfg.kernel.ring_buffer_bytes));
        use std::os::fd::AsFd as _;
        match crate::loader::RingUsage::new(
            ring.get_ref().as_fd(),
            self.cfg.kernel.ring_buffer_bytes,
        ) {
            Ok(usage) => self.ring_usage = Some(usage),
            Err(e) => tracing::warn!("ring buffer fill will not be measured: {e}"),
        }
    }

    /// Before draining: how full the ring got while the reader was away.
    fn observe_ring_fill(&self) {
        if let (Some(m), Some(usage)) = (&self.metrics, &self.ring_usage) {
            m.observe_ring_fill(usage.fill_ratio());
        }
    }

    fn publish_metrics(&self) {
        let Some(m) = &self.metrics else {
            return;
        };
        m.sync_events(&self.summary.events_by_kind);
        m.sync_decode_errors(self.summary.decode_errors);
        m.sync_lost(&self.lost);
        m.sync_requests(&self.pipeline.correlator().stats().requests_by_identity);
        m.sync_desyncs(&self.pipeline.correlator().stats().desyncs);
        m.sync_alerts_written(self.pipeline.alerts_written());
        m.set_targets(self.targets.len());
        m.set_tracked(&self.pipeline.correlator().tracked());
        if let Some(hook) = self.pipeline.webhook() {
            use std::sync::atomic::Ordering::Relaxed;
            let s = &hook.stats;
            m.set_webhook_calls(
                s.sent.load(Relaxed),
                s.failed.load(Relaxed),
                s.dropped.load(Relaxed),
            );
        }
        m.set_probes(self.probes.attached(), self.probes.expected());
        m.sync_probe_stats(&self.probes.program_stats());
        let (tls_connections, http2_connections) = self.capture.connections();
        m.sync_tls(
            self.tls.hooked,
            self.tls.unreadable,
            self.tls_records,
            tls_connections,
            http2_connections,
        );
    }
}
