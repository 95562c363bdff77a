//! `vigie replay`: feed recorded traces through the same correlator and judge as the live run.
//! With the recorded config the alerts are byte-identical to the live ones; with `--config` it
//! is a what-if, and the verdicts that change are listed.
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{BufReader, Write},
    path::{Path, PathBuf},
};

use monitor_core::{
    correlate::{Access, Correlator, Finding},
    events::{Event, EventKind},
    judge::{Judge, Judgement, Verdict},
    trace::{self, EventLines, Line, OnCorrupt, TraceError, TraceHeader, config_digest},
    walltime::{WallClock, rfc3339},
};

use crate::{
    config::Config, ownership::resolver::Resolver, pipeline::Pipeline, sinks::alerts::AlertSink,
};

/// Reads the events of one or more trace files, in order.
pub struct TraceReader {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<EventLines<BufReader<File>>>,
    on_corrupt: OnCorrupt,
    pub header: TraceHeader<Config>,
    pub skipped_lines: u64,
    pub truncated_files: u64,
    /// Bytes of the files already finished (the current one counts its own).
    done_bytes: u64,
}

impl TraceReader {
    pub fn open(files: &[PathBuf], on_corrupt: OnCorrupt) -> Result<Self, TraceError> {
        let first = files.first().ok_or(TraceError::Empty)?;
        let (reader, header) = open_file(first)?;
        Ok(Self {
            files: files.to_vec(),
            next_file: 1,
            current: Some(EventLines::new(
                reader,
                first.display().to_string(),
                on_corrupt,
            )),
            on_corrupt,
            header,
            skipped_lines: 0,
            truncated_files: 0,
            done_bytes: 0,
        })
    }

    /// Total size of the input, for progress.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Bytes of events read so far, for progress.
    pub fn bytes_read(&self) -> u64 {
        self.done_bytes + self.current.as_ref().map_or(0, |c| c.bytes_read)
    }

    /// The next event, `Ok(None)` at the end of the last file.
    pub fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        loop {
            let Some(lines) = self.current.as_mut() else {
                return Ok(None);
            };
            match lines.next_line()? {
                Line::Event(ev) => return Ok(Some(ev)),
                Line::End => self.advance()?,
                Line::Truncated { bytes } => {
                    tracing::warn!(
                        "{}:{}: truncated last line ({bytes} bytes) ignored",
                        lines.path(),
                        lines.line_no
                    );
                    self.truncated_files += 1;
                    self.advance()?;
                }
                Line::Skipped { reason } => {
                    tracing::warn!(
                        "{}:{}: corrupt line skipped: {reason}",
                        lines.path(),
                        lines.line_no
                    );
                    self.skipped_lines += 1;
                }
            }
        }
    }

    fn advance(&mut self) -> Result<(), TraceError> {
        if let Some(done) = self.current.take() {
            self.done_bytes += done.bytes_read;
        }
        let Some(next) = self.files.get(self.next_file).cloned() else {
            return Ok(());
        };
        self.next_file += 1;
        let (reader, header) = open_file(&next)?;
        if header.config_digest != self.header.config_digest || header.clock != self.header.clock {
            tracing::warn!(
                "{}: recorded by another run (config {} vs {}): replaying it after the others anyway",
                next.display(),
                header.config_digest,
                self.header.config_digest
            );
        }
        self.current = Some(EventLines::new(
            reader,
            next.display().to_string(),
            self.on_corrupt,
        ));
        Ok(())
    }
}

fn open_file(path: &Path) -> Result<(BufReader<File>, TraceHeader<Config>), TraceError> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|source| TraceError::Io {
        path: p.clone(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let header = trace::read_header(&mut reader, &p)?;
    Ok((reader, header))
}

pub struct ReplayOptions {
    pub files: Vec<PathBuf>,
    /// Judge under this config instead of the recorded one (what-if).
    pub config: Option<PathBuf>,
    pub alerts: Option<PathBuf>,
    pub audit: bool,
    /// Only report accesses that started in this window (Unix nanoseconds).
    pub since_ns: Option<i128>,
    pub until_ns: Option<i128>,
    /// Only report accesses by these processes.
    pub pids: Vec<u32>,
    pub on_corrupt: OnCorrupt,
    /// Print the evidence chain of this access id instead of alerts.
    pub explain: Option<u64>,
    pub progress: bool,
}

/// Counts for the replay summary.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub events: u64,
    pub requests: u64,
    pub documents: usize,
    pub by_verdict: BTreeMap<&'static str, u64>,
    pub violations_by_user: BTreeMap<String, u64>,
    pub violations_by_document: BTreeMap<String, u64>,
    /// What-if: (when, who, what, recorded verdict, new verdict, rule).
    pub changed: Vec<String>,
    pub skipped_lines: u64,
    pub truncated_files: u64,
    pub seconds: f64,
}

/// Key of an access that does not depend on the config's ids.
fn access_key(a: &Access) -> (u32, u32, String, u64) {
    (a.pid, a.tid, a.document.clone(), a.first_ts_ns)
}

fn user_of(a: &Access) -> String {
    a.request
        .as_ref()
        .and_then(|r| r.identity.as_ref())
        .map_or_else(|| "-".to_string(), |i| i.user.clone())
}

pub fn replay(opts: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let started = std::time::Instant::now();
    let mut reader = TraceReader::open(&opts.files, opts.on_corrupt)?;
    let clock = reader.header.clock;
    // The config as the live run resolved it. It is not normalised again: nothing in it is needed
    // from this host (bearer signatures were checked at capture time and carry their mark).
    let recorded = reader.header.config.clone();
    let correlator = |c: &Config| {
        Correlator::new(
            c.correlator()
                .with_realtime_offset_ns(clock.realtime_offset_ns),
        )
    };
    let config = match &opts.config {
        Some(path) => Config::load(path)?,
        None => recorded.clone(),
    };
    let what_if = opts.config.is_some() && config_digest(&config) != config_digest(&recorded);
    let out: Box<dyn Write + Send> = match (&opts.alerts, opts.explain) {
        (_, Some(_)) => Box::new(std::io::sink()),
        (Some(path), None) => Box::new(crate::sinks::alerts::open_alert_file(path)?),
        (None, None) => Box::new(std::io::stdout()),
    };
    // Ownership backends configured as recorded answer from the trace's facts: no database or
    // mapping file is needed. A what-if that changes a backend asks it for real.
    let mut resolver = config.replay_resolver(&recorded)?;
    if what_if {
        resolver.start(std::time::Duration::from_secs(5))?;
    }
    let mut pipeline = Pipeline::new(
        correlator(&config),
        config.judge(),
        resolver,
        AlertSink::new(out, clock, opts.audit),
    );
    // The incidents of the live run: same rules, same accesses, same timestamps. The webhook
    // is not called: those incidents were acted on live.
    pipeline.set_incidents(monitor_core::incident::Incidents::new(
        config.incidents.rules(),
    ));
    let since = opts.since_ns;
    let until = opts.until_ns;
    let pids = opts.pids.clone();
    pipeline.set_filter(Box::new(move |a: &Access| {
        let t = clock.unix_ns(a.first_ts_ns);
        since.is_none_or(|s| t >= s)
            && until.is_none_or(|u| t < u)
            && (pids.is_empty() || pids.contains(&a.pid))
    }));
    // Shadow run under the recorded config, for the what-if comparison.
    let mut shadow = match what_if {
        true => Some(Shadow {
            correlator: correlator(&recorded),
            judge: recorded.judge(),
            resolver: recorded.replay_resolver(&recorded)?,
        }),
        false => None,
    };
    let mut recorded_verdicts: HashMap<(u32, u32, String, u64), Verdict> = HashMap::new();
    let mut findings = Vec::new();
    let mut summary = ReplaySummary::default();
    let mut documents = std::collections::HashSet::new();
    let mut explained: Option<(Access, Judgement)> = None;
    let explain = opts.explain;
    let collected = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(Access, Judgement)>::new()));
    {
        let collected = collected.clone();
        pipeline.set_observer(Box::new(move |a: &Access, j: &Judgement| {
            collected.borrow_mut().push((a.clone(), j.clone()));
        }));
    }
    let progress = progress_bar(opts.progress, reader.total_bytes());
    // One pass; the end of the input is one more step, judging what is still open.
    let mut at_end = false;
    while !at_end {
        match reader.next_event()? {
            Some(ev) => {
                summary.events += 1;
                if summary.events % 65_536 == 0
                    && let Some(pb) = &progress
                {
                    pb.set_position(reader.bytes_read());
                }
                pipeline.handle(&ev)?;
                // The shadow judges the same access at the same event, before it is observed.
                if let Some(shadow) = shadow.as_mut() {
                    match &ev.kind {
                        EventKind::OwnershipFact(fact) => shadow.resolver.learn(fact.clone()),
                        _ => shadow.correlator.handle(&ev, &mut findings),
                    }
                    shadow.record_verdicts(&mut findings, &mut recorded_verdicts);
                }
            }
            None => {
                at_end = true;
                pipeline.finish()?;
                if let Some(shadow) = shadow.as_mut() {
                    shadow.correlator.flush(&mut findings);
                    shadow.record_verdicts(&mut findings, &mut recorded_verdicts);
                }
            }
        }
        drain_observed(
            &collected,
            &mut summary,
            &mut documents,
            &mut recorded_verdicts,
            what_if,
            clock,
            explain,
            &mut explained,
        );
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    summary.requests = pipeline.correlator().stats().requests;
    summary.documents = documents.len();
    summary.skipped_lines = reader.skipped_lines;
    summary.truncated_files = reader.truncated_files;
    summary.seconds = started.elapsed().as_secs_f64();
    if let Some(id) = opts.explain {
        let Some((access, judgement)) = explained else {
            anyhow::bail!("no access with id {id} in this trace (ids are the alerts' `access_id`)");
        };
        explain_access(opts, &access, &judgement, clock)?;
    }
    Ok(summary)
}

/// The recorded config's run, for the what-if comparison.
struct Shadow {
    correlator: Correlator,
    judge: Judge,
    resolver: Resolver,
}

impl Shadow {
    /// The shadow's verdicts, keyed so the what-if can compare them.
    fn record_verdicts(
        &mut self,
        findings: &mut Vec<Finding>,
        verdicts: &mut HashMap<(u32, u32, String, u64), Verdict>,
    ) {
        let now = std::time::Instant::now();
        for f in findings.drain(..) {
            if let Finding::Access(a) = f {
                let ownership = self.resolver.resolve(&a.document, now, &mut Vec::new());
                verdicts.insert(access_key(&a), self.judge.judge(&a, ownership).verdict);
            }
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the accumulators of one replay loop"
)]
fn drain_observed(
    collected: &std::rc::Rc<std::cell::RefCell<Vec<(Access, Judgement)>>>,
    summary: &mut ReplaySummary,
    documents: &mut std::collections::HashSet<String>,
    recorded: &mut HashMap<(u32, u32, String, u64), Verdict>,
    what_if: bool,
    clock: WallClock,
    explain: Option<u64>,
    explained: &mut Option<(Access, Judgement)>,
) {
    for (access, judgement) in collected.borrow_mut().drain(..) {
        *summary
            .by_verdict
            .entry(judgement.verdict.as_str())
            .or_default() += 1;
        documents.insert(access.document.clone());
        if judgement.verdict == Verdict::Violation {
            *summary
                .violations_by_user
                .entry(user_of(&access))
                .or_default() += 1;
            *summary
                .violations_by_document
                .entry(access.document.clone())
                .or_default() += 1;
        }
        if what_if {
            // The shadow judges the same access at the same event, so it is already known.
            if let Some(before) = recorded.remove(&access_key(&access))
                && before != judgement.verdict
            {
                summary.changed.push(format!(
                    "{} {} read {} (owner {}): {} -> {} ({})",
                    rfc3339(clock.unix_ns(access.first_ts_ns)),
                    user_of(&access),
                    access.document,
                    judgement.owner.as_deref().unwrap_or("-"),
                    before.as_str(),
                    judgement.verdict.as_str(),
                    judgement.rule
                ));
            }
        }
        if explain == Some(access.id) {
            *explained = Some((access, judgement));
        }
    }
}

fn progress_bar(wanted: bool, total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("replaying {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(pb)
}

impl ReplaySummary {
    pub fn print(&self, to: &mut impl Write) -> std::io::Result<()> {
        let rate = if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        };
        writeln!(
            to,
            "replay: {} events in {:.2}s ({rate:.0} events/s)",
            self.events, self.seconds
        )?;
        writeln!(
            to,
            "replay: {} requests, {} documents, accesses by verdict {:?}",
            self.requests, self.documents, self.by_verdict
        )?;
        for (title, map) in [
            ("users", &self.violations_by_user),
            ("documents", &self.violations_by_document),
        ] {
            let mut top: Vec<_> = map.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            if !top.is_empty() {
                writeln!(to, "replay: top {title} by violations:")?;
                for (name, n) in top.into_iter().take(5) {
                    writeln!(to, "  {n:>6}  {name}")?;
                }
            }
        }
        if self.skipped_lines > 0 || self.truncated_files > 0 {
            writeln!(
                to,
                "replay: {} corrupt lines skipped, {} files with a truncated last line",
                self.skipped_lines, self.truncated_files
            )?;
        }
        Ok(())
    }

    /// The what-if report (empty when replaying under the recorded config).
    pub fn print_changes(&self, to: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            to,
            "what-if: {} verdict(s) differ from the recorded config",
            self.changed.len()
        )?;
        for line in &self.changed {
            writeln!(to, "  {line}")?;
        }
        Ok(())
    }
}

/// Second pass over the trace: the events behind one access, in order.
fn explain_access(
    opts: &ReplayOptions,
    access: &Access,
    judgement: &Judgement,
    clock: WallClock,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let user = user_of(access);
    writeln!(
        out,
        "access {}: {} read {} ({} bytes)",
        access.id, user, access.document, access.bytes
    )?;
    writeln!(
        out,
        "  process {} ({}), thread {}",
        access.pid, access.comm, access.tid
    )?;
    writeln!(
        out,
        "  verdict {} by rule {} ({})",
        judgement.verdict.as_str(),
        judgement.rule,
        ownership_words(judgement)
    )?;
    let evidence: Vec<&str> = access
        .evidence
        .iter()
        .map(|e| match e {
            monitor_core::correlate::Evidence::Sendfile => "sendfile",
            monitor_core::correlate::Evidence::Flow => "flow",
            monitor_core::correlate::Evidence::Thread => "thread",
            monitor_core::correlate::Evidence::Goroutine => "goroutine",
            monitor_core::correlate::Evidence::Fingerprint => "fingerprint",
        })
        .collect();
    writeln!(
        out,
        "  evidence: {}",
        if evidence.is_empty() {
            "none (no request in scope)".to_string()
        } else {
            evidence.join(", ")
        }
    )?;
    let req = access.request.as_ref();
    if let Some(r) = req {
        let source = r.identity.as_ref().map_or("none".to_string(), |i| {
            serde_json::to_value(i.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        });
        writeln!(
            out,
            "  request {}: {} {} on fd {} read by thread {}; identity {} (source {}){}{}",
            r.id,
            r.method,
            r.target,
            r.fd,
            r.tid,
            user,
            source,
            r.identity_problem
                .and_then(|p| serde_json::to_value(p).ok())
                .and_then(|v| v.as_str().map(|p| format!(", problem {p}")))
                .unwrap_or_default(),
            if r.head_truncated {
                ", head truncated"
            } else {
                ""
            }
        )?;
    }
    writeln!(out, "  events:")?;
    let mut reader = TraceReader::open(&opts.files, opts.on_corrupt)?;
    let (lo, hi) = (
        req.map_or(access.first_ts_ns, |r| r.ts_ns),
        access.last_ts_ns,
    );
    let mut doc_fds: Vec<i32> = Vec::new();
    let mut response_seen = false;
    let mut last_fact: Option<(u64, String)> = None;
    while let Some(ev) = reader.next_event()? {
        if let EventKind::OwnershipFact(f) = &ev.kind {
            // The last lookup of this document before the access was judged.
            if f.document == access.document && ev.ts_ns <= hi.saturating_add(1_000_000_000) {
                last_fact = Some((ev.ts_ns, describe(&ev.kind)));
            }
            continue;
        }
        if ev.pid != access.pid {
            continue;
        }
        let t = rfc3339(clock.unix_ns(ev.ts_ns));
        let on_conn = |fd: i32| req.is_some_and(|r| r.fd == fd);
        let show = match &ev.kind {
            EventKind::SockRead { fd, .. } => on_conn(*fd) && ev.ts_ns == lo,
            EventKind::FileOpen { fd, .. } if ev.ts_ns <= hi && ev.ts_ns >= lo => {
                doc_fds.push(*fd);
                true
            }
            EventKind::FdFound { fd, .. } => {
                doc_fds.push(*fd);
                false
            }
            EventKind::FileRead { fd, .. }
            | EventKind::FileReadMore { fd, .. }
            | EventKind::FileMap { fd, .. } => {
                doc_fds.contains(fd) && ev.tid == access.tid && (lo..=hi).contains(&ev.ts_ns)
            }
            EventKind::SendFile { .. } => (lo..=hi).contains(&ev.ts_ns) && ev.tid == access.tid,
            EventKind::SockWrite { fd, .. } if on_conn(*fd) && ev.ts_ns >= lo && !response_seen => {
                response_seen = true;
                true
            }
            // The close of the document's fd that ends this open of it: the first one after
            // the request began, however long after the last read (a slow or emulated machine
            // can put milliseconds between the end-of-file read and the close).
            EventKind::FileClose { fd } if ev.ts_ns >= lo && doc_fds.contains(fd) => {
                doc_fds.retain(|f| f != fd);
                true
            }
            _ => false,
        };
        if show {
            writeln!(out, "    {t} tid {} {}", ev.tid, describe(&ev.kind))?;
        }
    }
    if let Some((ts, fact)) = last_fact {
        writeln!(
            out,
            "  ownership lookup recorded at {}: {fact}",
            rfc3339(clock.unix_ns(ts))
        )?;
    }
    Ok(())
}

/// How the owner was found, for `--explain`.
fn ownership_words(j: &Judgement) -> String {
    use monitor_core::ownership::fact::BackendKind;
    let owner = j.owner.as_deref().unwrap_or("-");
    let mut words = match (j.owner_source, j.ownership_error) {
        (source, Some(error)) => format!(
            "owner unknown: the {} lookup failed ({})",
            source.map_or("ownership", BackendKind::as_str),
            error.as_str()
        ),
        (Some(BackendKind::Templates) | None, None) => format!(
            "owner {owner}, template {}",
            j.template.as_deref().unwrap_or("-")
        ),
        (Some(BackendKind::Mapping), None) => format!(
            "owner {owner}, mapping entry {}",
            j.template.as_deref().unwrap_or("-")
        ),
        (Some(source), None) => format!("owner {owner}, from {}", source.as_str()),
    };
    if !j.shared_with.is_empty() {
        words.push_str(&format!(", shared with {}", j.shared_with.join(", ")));
    }
    words
}

fn describe(kind: &EventKind) -> String {
    let head = |data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let end = text.find("\r\n\r\n").unwrap_or(text.len());
        text[..end].replace("\r\n", " | ")
    };
    match kind {
        EventKind::SockRead { fd, bytes, data } => {
            format!("read request on fd {fd} ({bytes} bytes): {}", head(&data.0))
        }
        EventKind::SockWrite {
            fd,
            bytes,
            data,
            body_fp,
            ..
        } => format!(
            "wrote response on fd {fd} ({bytes} bytes): {}{}",
            head(&data.0),
            body_fp.map_or(String::new(), |fp| format!(" [body fingerprint {fp:016x}]"))
        ),
        EventKind::FileOpen { fd, path, .. } => format!("opened {path} as fd {fd}"),
        EventKind::FileRead { fd, bytes, fp, .. } => format!(
            "read {bytes} bytes of the document (fd {fd}){}",
            fp.map_or(String::new(), |fp| format!(" [fingerprint {fp:016x}]"))
        ),
        EventKind::FileReadMore { fd, bytes, calls } => {
            format!("read {bytes} bytes more of the document (fd {fd}) in {calls} reads")
        }
        EventKind::SockWriteMore { fd, bytes, calls } => {
            format!("wrote {bytes} bytes more of the response body on fd {fd} in {calls} writes")
        }
        EventKind::FileMap { fd, bytes } => {
            format!("mapped {bytes} bytes of the document (fd {fd})")
        }
        EventKind::SendFile {
            out_fd,
            in_fd,
            bytes,
        } => format!("sendfile {bytes} bytes from fd {in_fd} to connection fd {out_fd}"),
        EventKind::FileClose { fd } => format!("closed fd {fd}"),
        EventKind::OwnershipFact(f) => match (&f.owner, f.error) {
            (_, Some(e)) => format!("{} lookup failed ({})", f.backend.as_str(), e.as_str()),
            (Some(owner), None) => format!("{} says the owner is {owner}", f.backend.as_str()),
            (None, None) => format!("{} does not know the document", f.backend.as_str()),
        },
        other => format!("{other:?}"),
    }
}

pub use monitor_core::walltime::parse_rfc3339;

#[cfg(test)]
mod tests;
