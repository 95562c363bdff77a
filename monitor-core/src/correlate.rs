//! The correlator: a pure state machine from typed [`Event`]s to [`Finding`]s. No I/O, no clock
//! (time comes from event timestamps and [`EventKind::Tick`]), deterministic output order, so a
//! replayed trace gives exactly the live findings.
//!
//! Attribution (DESIGN.md §4), strongest evidence first:
//! - `sendfile`: `sendfile(out = socket, in = document)` sends the document on a connection, so
//!   it belongs to that connection's current request;
//! - `flow`: document bytes read on a thread that then writes to a socket (attributes reads that
//!   had no request in scope);
//! - `thread`: the read happened on the thread that read the current request head (thread per
//!   request, prefork workers, pool threads);
//! - `fingerprint`: the first bytes of the document (hashed in the kernel) are the first bytes
//!   of a response body written on a connection (hashed by [`crate::fingerprint`]): the document
//!   was read on a helper thread (async runtimes' blocking pools) or by an event loop serving
//!   several connections at once;
//! - none: `unattributed`.
//!
//! Event loops. A thread that reads a second request head while the response to its first one
//! (on another connection) has not started is serving several requests at once: its "current
//! request" means nothing, so from then on its reads get no thread scope. They wait, like reads
//! on helper threads, for a response body carrying their fingerprint (or for the idle horizon,
//! and are then `unattributed`).
//!
//! Each connection speaks HTTP or FastCGI, decided from its first bytes
//! ([`crate::fastcgi::Protocol`]); FastCGI requests are handled in [`fastcgi`] and become
//! requests through the same path as HTTP heads.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use serde::Serialize;

use crate::{
    events::{Event, EventKind, FoundFd},
    http::{
        self,
        stream::{Desync, Item, RequestStream},
    },
    identity::{
        self, Identity, IdentityConfig, IdentityProblem, IdentitySource,
        session::{self, Sessions},
    },
    idmap::IdMap,
    paths,
};

mod fastcgi;

/// Settings the correlator needs: a slice of the configuration, built by the `vigie` crate
/// (`Config::correlator`). Without a wall clock until
/// [`CorrelatorConfig::with_realtime_offset_ns`] gives it one.
#[derive(Debug, Clone)]
pub struct CorrelatorConfig {
    pub roots: Vec<String>,
    pub identity: IdentityConfig,
    /// Longest request head reassembled per connection (`capture.max_head_bytes`).
    pub max_head: usize,
    pub idle_flush_ns: u64,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` of the run that produced the events (the alert
    /// sink's `WallClock`): gives each request its wall time, for token expiry, from the event
    /// stream alone. `None`: expiry is not checked.
    pub realtime_offset_ns: Option<i64>,
}

impl CorrelatorConfig {
    /// The wall clock of the events (live: measured at start; replay: from the trace header).
    #[must_use]
    pub fn with_realtime_offset_ns(mut self, offset_ns: i64) -> Self {
        self.realtime_offset_ns = Some(offset_ns);
        self
    }

    /// Unix seconds at monotonic `ts_ns`, when the clock is known.
    fn unix_seconds(&self, ts_ns: u64) -> Option<i64> {
        let ns = i128::from(ts_ns) + i128::from(self.realtime_offset_ns?);
        i64::try_from(ns.div_euclid(1_000_000_000)).ok()
    }
}

/// How a document access was tied to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    Sendfile,
    Flow,
    Thread,
    Fingerprint,
}

/// The request an access was attributed to, as known when the access was judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestInfo {
    pub id: u64,
    pub method: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_problem: Option<IdentityProblem>,
    /// The head did not fit the capture: headers past it were not seen.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub head_truncated: bool,
    /// Status of the response, when its head was seen before the access was judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Thread that read the request head, and the connection's fd.
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
}

/// One document read by one request (or by no request), ready to be judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    pub id: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: crate::events::Comm,
    /// Absolute, normalized path.
    pub document: String,
    /// Bytes read or sent from the document within this request.
    pub bytes: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// Strongest first; empty when unattributed.
    pub evidence: Vec<Evidence>,
    pub request: Option<RequestInfo>,
    /// Unattributed because the connection this thread served could not be followed exactly:
    /// why (the judge's rule; `None`: simply no request in scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed: Option<Desync>,
}

/// What the correlator reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "findings are moved once into a Vec that is drained at once: boxing would only add an allocation per access"
)]
pub enum Finding {
    Access(Access),
    /// Events were lost in the kernel: Vigie was blind for a moment.
    Gap {
        ts_ns: u64,
        reason: String,
        count: u64,
    },
}

/// How much state the correlator holds right now: what must return to near zero once a
/// portal's connections close (the `vigie_correlator_tracked` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tracked {
    /// Connections with HTTP state (accepted, or found in `/proc`, and not closed).
    pub connections: usize,
    /// Requests still current on their connection or in scope of their thread.
    pub requests: usize,
    /// Threads with a request in scope.
    pub threads: usize,
    /// Document reads not judged yet.
    pub open_accesses: usize,
    /// Open document fds.
    pub documents: usize,
    /// Session cookies bound to users (`identity.session`).
    pub sessions: usize,
}

/// Counters for summaries and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub events: u64,
    pub requests: u64,
    pub invalid_heads: u64,
    pub truncated_heads: u64,
    pub accesses: u64,
    pub repeated_reads: u64,
    /// Requests whose bearer token was forged (`alg: none`, bad signature), expired, or
    /// malformed (including no usable user claim), as reported in `identity_problem`.
    pub forged_tokens: u64,
    pub expired_tokens: u64,
    pub malformed_tokens: u64,
    /// Times a FastCGI stream was lost (a record header malformed or not captured).
    pub fastcgi_desyncs: u64,
    /// Times a connection's stream could not be followed exactly, by reason (FastCGI's
    /// included): reads on it were `unattributed` until the next request.
    pub desyncs: BTreeMap<Desync, u64>,
    /// Requests read behind another of their connection that had no response yet.
    pub pipelined_requests: u64,
    /// Requests by the source of their identity (`None`: no usable identity). A short list:
    /// one entry per configured source at most, plus `None`.
    pub requests_by_identity: Vec<(Option<IdentitySource>, u64)>,
}

#[derive(Debug, Default)]
struct Conn {
    /// The HTTP request stream (created at the first read: joined connections start lost).
    stream: Option<RequestStream>,
    /// Requests not answered yet, oldest first: HTTP/1.1 answers them in order, so the front
    /// is the one being answered (each response, its `sendfile` and writes are its).
    queue: VecDeque<u64>,
    /// Bytes of the front request's response still to be written, when its head said
    /// (`Content-Length`, or no body); `None` while unknown.
    response_left: Option<u64>,
    /// The stream was lost: why (until its next request).
    desync: Option<Desync>,
    protocol: crate::fastcgi::Protocol,
    /// FastCGI requests of this connection, once it spoke FastCGI.
    fastcgi: Option<Box<fastcgi::FastCgiConn>>,
}

impl Conn {
    /// Accepted under our eyes: the first bytes decide the protocol, and the first request
    /// starts at the first byte.
    fn accepted(max_head: usize) -> Self {
        Self {
            protocol: crate::fastcgi::Protocol::Fresh,
            stream: Some(RequestStream::new(max_head)),
            ..Self::default()
        }
    }

    /// The request being answered.
    fn current(&self) -> Option<u64> {
        self.queue.front().copied()
    }
}

#[derive(Debug)]
struct Request {
    info: RequestInfo,
    pid: u32,
    /// Still the current request of its connection.
    on_conn: bool,
    /// Still in scope of the thread that read it.
    on_thread: bool,
    /// A response was written on its connection.
    responded: bool,
    /// The portal's login request: its (bounded) form body names the user its response's
    /// session cookie is bound to.
    login: Option<Vec<u8>>,
    /// The session cookie it carried (hashed by the redactor), if sessions are configured.
    session_id: Option<Vec<u8>>,
    /// Documents already reported for this request (one finding per request and document).
    reported: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Request(u64),
    /// Read with no request in scope, on this thread.
    Thread(u32),
}

#[derive(Debug)]
struct OpenAccess {
    access: Access,
    owner: Owner,
    fd: i32,
    /// Fingerprint of the first bytes read (from the kernel).
    fp: Option<u64>,
    /// Its fd was closed: complete, waiting only for its request's response status.
    closed: bool,
    /// The document was mapped (`mmap`): it is read through the mapping, which outlives a close
    /// of the fd, so the close does not end the access.
    mapped: bool,
}

pub struct Correlator {
    cfg: CorrelatorConfig,
    next_request: u64,
    next_access: u64,
    conns: IdMap<(u32, i32), Conn>,
    /// tid -> (pid, request in scope)
    threads: IdMap<u32, (u32, u64)>,
    /// Event-loop threads (tid -> pid): they serve several requests at once, so their reads
    /// get no thread scope.
    multiplexed: IdMap<u32, u32>,
    /// Threads that read from sockets (tid -> pid): connection threads, whose reads with no
    /// request in scope go to their own connections only, never by content to another thread's.
    socket_threads: IdMap<u32, u32>,
    /// Threads whose connection was lost (tid -> (pid, why)), until they read a request: the
    /// reason their reads are unattributed.
    lost_threads: IdMap<u32, (u32, Desync)>,
    /// Open document fds and their paths (shared: every read of the fd takes one).
    docs: IdMap<(u32, i32), Arc<str>>,
    requests: IdMap<u64, Request>,
    /// Open accesses by id: a BTreeMap so expiry and flush emit in a deterministic order.
    open: BTreeMap<u64, OpenAccess>,
    /// Open accesses still taking reads, by owner: at most one per document. An owner has one
    /// or a few, found by comparing their paths, so a read hashes and copies no path.
    index: IdMap<Owner, Vec<u64>>,
    /// Session cookies bound by logins (`identity.session`).
    sessions: Sessions,
    stats: Stats,
}

/// Most bytes of a login request body kept (the form naming the user).
const LOGIN_BODY_CAP: usize = 4096;

impl Correlator {
    pub fn new(cfg: CorrelatorConfig) -> Self {
        Self {
            cfg,
            next_request: 1,
            next_access: 1,
            conns: IdMap::default(),
            threads: IdMap::default(),
            multiplexed: IdMap::default(),
            socket_threads: IdMap::default(),
            lost_threads: IdMap::default(),
            docs: IdMap::default(),
            requests: IdMap::default(),
            open: BTreeMap::new(),
            index: IdMap::default(),
            sessions: Sessions::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether session `id` (hashed cookie value) is bound to a user.
    pub fn knows_session(&self, id: &[u8]) -> bool {
        self.sessions.contains(id)
    }

    pub fn tracked(&self) -> Tracked {
        Tracked {
            connections: self.conns.len(),
            requests: self.requests.len(),
            threads: self.threads.len(),
            open_accesses: self.open.len(),
            documents: self.docs.len(),
            sessions: self.sessions.len(),
        }
    }

    /// Document fds `pid` holds, as far as the events told (ascending).
    pub fn documents_of(&self, pid: u32) -> Vec<i32> {
        let mut fds: Vec<i32> = self
            .docs
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, fd)| *fd)
            .collect();
        fds.sort_unstable();
        fds
    }

    /// Feeds one event; findings it completes are appended to `out`.
    pub fn handle(&mut self, ev: &Event, out: &mut Vec<Finding>) {
        self.stats.events += 1;
        let pid = ev.pid;
        match &ev.kind {
            EventKind::ProcessExec => {}
            EventKind::ProcessFork { child_pid } => {
                // The child's fd table is a copy of the parent's: so are its open documents.
                let inherited: Vec<(i32, Arc<str>)> = self
                    .docs
                    .iter()
                    .filter(|((p, _), _)| *p == pid)
                    .map(|((_, fd), path)| (*fd, path.clone()))
                    .collect();
                for (fd, path) in inherited {
                    self.docs.insert((*child_pid, fd), path);
                }
            }
            EventKind::ProcessExit => self.on_exit(pid, out),
            EventKind::ThreadExit => self.on_thread_exit(pid, ev.tid, out),
            EventKind::FdFound { fd, found } => match found {
                FoundFd::Document { path } => self.track_document(pid, *fd, Some(path.clone())),
                FoundFd::Socket => {
                    self.conns.entry((pid, *fd)).or_default();
                }
            },
            EventKind::FileOpen {
                fd,
                path,
                base,
                full_path,
                ..
            } => {
                let opened = paths::of_open(path, base.as_deref(), full_path.as_deref());
                self.track_document(pid, *fd, opened);
            }
            EventKind::FileRead { fd, bytes, fp } => {
                if let Some(path) = self.docs.get(&(pid, *fd)).cloned() {
                    let scope = self.read_scope(pid, ev.tid);
                    let evidence = scope.map(|_| Evidence::Thread);
                    self.record_access(ev, *fd, path, *bytes, *fp, scope, evidence);
                }
            }
            // A mapping is a read with the same evidence rules (thread scope, or flow to the
            // write that follows on this thread), judged when its request ends, not at close.
            EventKind::FileMap { fd, bytes } => {
                if let Some(path) = self.docs.get(&(pid, *fd)).cloned() {
                    let scope = self.read_scope(pid, ev.tid);
                    let evidence = scope.map(|_| Evidence::Thread);
                    // No fingerprint: the kernel sees no bytes of a mapping.
                    if let Some(id) =
                        self.record_access(ev, *fd, path, *bytes, None, scope, evidence)
                        && let Some(open) = self.open.get_mut(&id)
                    {
                        open.mapped = true;
                    }
                }
            }
            EventKind::SendFile {
                out_fd,
                in_fd,
                bytes,
            } => {
                if let Some(path) = self.docs.get(&(pid, *in_fd)).cloned() {
                    let on_conn = self.conns.get(&(pid, *out_fd)).and_then(Conn::current);
                    let (scope, evidence) = match on_conn {
                        Some(req) => (Some(req), Some(Evidence::Sendfile)),
                        None => {
                            let scope = self.thread_scope(pid, ev.tid);
                            (scope, scope.map(|_| Evidence::Thread))
                        }
                    };
                    self.record_access(ev, *in_fd, path, *bytes, None, scope, evidence);
                }
                self.response_bytes(pid, *out_fd, *bytes, out);
            }
            EventKind::FileClose { fd } => {
                self.docs.remove(&(pid, *fd));
                // A read no request was in scope for, with a fingerprint, waits for its content
                // to go out on a connection (until the idle horizon); later reads of the same
                // document are other accesses. Every other access of the fd is complete.
                self.keep_for_fingerprint(|a| a.access.pid == pid && a.fd == *fd);
                // A read for a request still waiting for its response waits for its status
                // (a 403 after reading someone else's document is still a read, and the alert
                // says so); the response's first write, or the request's end, judges it.
                let requests = &self.requests;
                let awaits_status = |a: &OpenAccess| match a.owner {
                    Owner::Request(req) => requests
                        .get(&req)
                        .is_some_and(|r| r.on_conn && !r.responded),
                    Owner::Thread(_) => false,
                };
                let mut done = Vec::new();
                for (id, a) in self.open.iter_mut() {
                    // A mapping outlives the close of its fd: it ends with its request, by flow,
                    // or at the idle horizon.
                    if a.access.pid != pid || a.fd != *fd || a.awaits_fingerprint() || a.mapped {
                        continue;
                    }
                    if awaits_status(a) {
                        a.closed = true;
                    } else {
                        done.push(*id);
                    }
                }
                self.finish_where(out, |a| done.contains(&a.access.id));
            }
            EventKind::SockAccept { fd } => {
                self.drop_conn(pid, *fd, out);
                self.conns
                    .insert((pid, *fd), Conn::accepted(self.cfg.max_head));
            }
            EventKind::SockRead { fd, bytes, data } => {
                self.socket_threads.insert(ev.tid, pid);
                self.on_sock_read(ev, *fd, *bytes, &data.0, out)
            }
            EventKind::SockWrite {
                fd,
                bytes,
                data,
                body_fp,
            } => {
                if self
                    .conns
                    .get(&(pid, *fd))
                    .is_some_and(|c| c.fastcgi.is_some())
                {
                    self.on_fastcgi_write(ev, *fd, *bytes, &data.0, out);
                } else {
                    self.on_sock_write(ev, *fd, *bytes, &data.0, *body_fp, out);
                }
            }
            EventKind::SockClose { fd } => self.drop_conn(pid, *fd, out),
            EventKind::SessionFound { session, user } => {
                if let Some(s) = &self.cfg.identity.session {
                    self.sessions.bind(s, session.as_bytes(), user, ev.ts_ns);
                }
            }
            EventKind::Lost { reason, count } => {
                // A lost event may be a request head we never saw: rather than attribute later
                // reads to a stale request, forget every scope (reads become unattributed).
                // In request order, not the maps' (random) order: replay must emit the same
                // findings in the same order.
                for (tid, (p, _)) in self.threads.iter() {
                    self.lost_threads.insert(*tid, (*p, Desync::EventsLost));
                }
                *self.stats.desyncs.entry(Desync::EventsLost).or_default() += 1;
                let mut scoped: Vec<u64> = self.threads.drain().map(|(_, (_, req))| req).collect();
                scoped.sort_unstable();
                for req in scoped {
                    self.release(req, Release::Thread, out);
                }
                let mut current: Vec<u64> = self
                    .conns
                    .values_mut()
                    .flat_map(|c| {
                        c.response_left = None;
                        if let Some(stream) = c.stream.as_mut() {
                            stream.lose();
                            c.desync = Some(Desync::EventsLost);
                        }
                        std::mem::take(&mut c.queue)
                    })
                    .collect();
                current.sort_unstable();
                for req in current {
                    self.release(req, Release::Conn, out);
                }
                // A lost read may have been part of a FastCGI stream.
                for conn in self.conns.values_mut() {
                    if let Some(f) = conn.fastcgi.as_mut() {
                        f.lose_sync();
                    }
                }
                out.push(Finding::Gap {
                    ts_ns: ev.ts_ns,
                    reason: reason.clone(),
                    count: *count,
                });
            }
            // For the ownership resolver (the pipeline keeps them from the correlator).
            EventKind::OwnershipFact(_) => {}
            EventKind::Tick => {
                let horizon = ev.ts_ns.saturating_sub(self.cfg.idle_flush_ns);
                self.finish_where(out, |a| a.access.last_ts_ns < horizon);
            }
        }
    }

    /// End of the stream: every open access is judged.
    pub fn flush(&mut self, out: &mut Vec<Finding>) {
        self.finish_where(out, |_| true);
    }

    fn track_document(&mut self, pid: u32, fd: i32, path: Option<String>) {
        let path = path.and_then(paths::normalize_owned);
        match path {
            Some(p) if self.cfg.roots.iter().any(|r| paths::is_under(&p, r)) => {
                self.docs.insert((pid, fd), p.into());
            }
            _ => {
                self.docs.remove(&(pid, fd));
            }
        }
    }

    fn is_multiplexed(&self, pid: u32, tid: u32) -> bool {
        self.multiplexed.get(&tid) == Some(&pid)
    }

    /// The open accesses matching `pred` that await a fingerprint go on waiting for it, but are
    /// no longer indexed: a later read of the same document (on a reused fd or thread id) starts
    /// an access of its own.
    fn keep_for_fingerprint(&mut self, pred: impl Fn(&OpenAccess) -> bool) {
        let waiting: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, a)| a.awaits_fingerprint() && pred(a))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.unindex(id);
        }
    }

    /// Forgets where open access `id` is indexed, so that later reads start a new access.
    fn unindex(&mut self, id: u64) {
        if let Some(open) = self.open.get(&id)
            && let Some(ids) = self.index.get_mut(&open.owner)
        {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.index.remove(&open.owner);
            }
        }
    }

    /// The open access of `owner` still taking reads of `document`.
    fn indexed(&self, owner: &Owner, document: &str) -> Option<u64> {
        self.index.get(owner)?.iter().copied().find(|id| {
            self.open
                .get(id)
                .is_some_and(|o| o.access.document == document)
        })
    }

    /// The request a document read on this thread belongs to by thread scope: none on an
    /// event loop, where "the thread's current request" means nothing.
    fn read_scope(&self, pid: u32, tid: u32) -> Option<u64> {
        if self.is_multiplexed(pid, tid) {
            None
        } else {
            self.thread_scope(pid, tid)
        }
    }

    /// Why a read by `tid` has no request in scope, when Vigie knows.
    fn unattributed_reason(&self, pid: u32, tid: u32) -> Option<Desync> {
        match self.lost_threads.get(&tid) {
            Some(&(p, why)) if p == pid => Some(why),
            _ => None,
        }
    }

    fn thread_scope(&self, pid: u32, tid: u32) -> Option<u64> {
        match self.threads.get(&tid) {
            Some(&(p, req)) if p == pid => Some(req),
            _ => None,
        }
    }

    /// Adds a read to its open access (a new one if needed) and returns the access id; `None`
    /// when the request already reported this document.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call per event kind, each passing what its event carries"
    )]
    fn record_access(
        &mut self,
        ev: &Event,
        fd: i32,
        path: Arc<str>,
        bytes: u64,
        fp: Option<u64>,
        scope: Option<u64>,
        evidence: Option<Evidence>,
    ) -> Option<u64> {
        let owner = match scope {
            Some(req) => {
                if let Some(r) = self.requests.get(&req)
                    && r.reported.iter().any(|d| **d == *path)
                {
                    self.stats.repeated_reads += 1;
                    return None;
                }
                Owner::Request(req)
            }
            None => Owner::Thread(ev.tid),
        };
        let unattributed = match owner {
            Owner::Thread(tid) => self.unattributed_reason(ev.pid, tid),
            Owner::Request(_) => None,
        };
        if let Some(id) = self.indexed(&owner, &path)
            && let Some(open) = self.open.get_mut(&id)
        {
            open.access.bytes = open.access.bytes.saturating_add(bytes);
            open.access.last_ts_ns = ev.ts_ns;
            open.fd = fd;
            open.fp = open.fp.or(fp);
            if let Some(e) = evidence
                && !open.access.evidence.contains(&e)
            {
                open.access.evidence.push(e);
                open.access.evidence.sort();
            }
            return Some(id);
        }
        let id = self.next_access;
        self.next_access += 1;
        self.index.entry(owner.clone()).or_default().push(id);
        let access = Access {
            id,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm.clone(),
            document: path.to_string(),
            bytes,
            first_ts_ns: ev.ts_ns,
            last_ts_ns: ev.ts_ns,
            evidence: evidence.into_iter().collect(),
            request: None,
            unattributed,
        };
        self.open.insert(
            id,
            OpenAccess {
                access,
                owner,
                fd,
                fp,
                closed: false,
                mapped: false,
            },
        );
        Some(id)
    }

    fn on_sock_read(
        &mut self,
        ev: &Event,
        fd: i32,
        bytes: u64,
        data: &[u8],
        out: &mut Vec<Finding>,
    ) {
        let key = (ev.pid, fd);
        let conn = self.conns.entry(key).or_default();
        if conn.protocol.observe(data) == crate::fastcgi::Protocol::FastCgi {
            return self.on_fastcgi_read(ev, fd, bytes, data, out);
        }
        let max_head = self.cfg.max_head;
        let mut stream = conn
            .stream
            .take()
            .unwrap_or_else(|| RequestStream::joined(max_head));
        let mut items = Vec::new();
        stream.feed(data, bytes.max(data.len() as u64), &mut items);
        for item in items {
            match item {
                Item::Head(head) => {
                    // Behind a request that has no response yet: HTTP/1.1 answers in order, so
                    // this one waits its turn (pipelining).
                    let pipelined = self.conns.get(&key).is_some_and(|c| {
                        c.queue
                            .iter()
                            .any(|r| self.requests.get(r).is_some_and(|r| !r.responded))
                    });
                    self.new_request(ev, fd, &head, false, pipelined, out);
                }
                Item::Body(body) => {
                    // The body of the request just read: the last one queued.
                    let last = self.conns.get(&key).and_then(|c| c.queue.back().copied());
                    if let Some(login) = last
                        .and_then(|req| self.requests.get_mut(&req))
                        .and_then(|r| r.login.as_mut())
                    {
                        let room = LOGIN_BODY_CAP.saturating_sub(login.len());
                        login.extend_from_slice(&body[..room.min(body.len())]);
                    }
                }
                Item::Desync(why) => {
                    match why {
                        Desync::InvalidHead => self.stats.invalid_heads += 1,
                        Desync::HeadTooLarge => self.stats.truncated_heads += 1,
                        _ => {}
                    }
                    self.desync(ev, fd, why);
                    self.end_answered(ev, fd, out);
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.stream = Some(stream);
        }
    }

    /// Connection `fd` (read by `ev`'s thread) can no longer be followed exactly. Requests
    /// already read whole and not answered stay queued (the server answers them); reads with
    /// no request in scope on the thread are `unattributed` with `why`, until its next request.
    fn desync(&mut self, ev: &Event, fd: i32, why: Desync) {
        *self.stats.desyncs.entry(why).or_default() += 1;
        if let Some(conn) = self.conns.get_mut(&(ev.pid, fd)) {
            conn.desync = Some(why);
        }
        self.lost_threads.insert(ev.tid, (ev.pid, why));
    }

    /// After a desync: when no request of connection `fd` is left unanswered, the thread and
    /// the connection have no request any more (whatever the peer sent, the previous request
    /// is over).
    fn end_answered(&mut self, ev: &Event, fd: i32, out: &mut Vec<Finding>) {
        let unanswered = self.conns.get(&(ev.pid, fd)).is_some_and(|c| {
            c.queue
                .iter()
                .any(|r| self.requests.get(r).is_some_and(|r| !r.responded))
        });
        if !unanswered {
            self.end_scope(ev.pid, ev.tid, fd, out);
        }
    }

    /// A new request read on `fd` by `ev`'s thread: it becomes the current request of both,
    /// or, `pipelined` behind requests of the connection not answered yet, it waits in the
    /// connection's queue for their responses. Returns its id.
    fn new_request(
        &mut self,
        ev: &Event,
        fd: i32,
        head: &http::RequestHead,
        truncated: bool,
        pipelined: bool,
        out: &mut Vec<Finding>,
    ) -> u64 {
        self.stats.requests += 1;
        let session_cfg = self.cfg.identity.session.as_ref();
        let session_id = session_cfg.and_then(|s| {
            session::cookie_values(head.header_values("cookie"), &s.cookie)
                .next()
                .map(<[u8]>::to_vec)
        });
        let who = if truncated {
            identity::Identified {
                identity: None,
                problem: None,
            }
        } else {
            let now = self.cfg.unix_seconds(ev.ts_ns);
            let sessions = &mut self.sessions;
            identity::identify_with_sessions(head, &self.cfg.identity, now, &mut |id| {
                session_cfg.and_then(|s| sessions.user(s, id, ev.ts_ns))
            })
        };
        let path = head.target.split(['?', '#']).next().unwrap_or_default();
        let login = session_cfg
            .filter(|s| head.method == "POST" && path == s.login_path)
            .map(|_| Vec::new());
        // Logging out ends the session; this request itself was still made as its user.
        if let Some(s) = session_cfg
            && s.logout_path.as_deref() == Some(path)
            && let Some(id) = &session_id
        {
            self.sessions.unbind(id);
        }
        match who.problem {
            Some(p) if p.is_forged_token() => self.stats.forged_tokens += 1,
            Some(IdentityProblem::JwtExpired) => self.stats.expired_tokens += 1,
            Some(IdentityProblem::JwtMalformed | IdentityProblem::JwtNoUserClaim) => {
                self.stats.malformed_tokens += 1;
            }
            _ => {}
        }
        let source = who.identity.as_ref().map(|i| i.source);
        match self
            .stats
            .requests_by_identity
            .iter_mut()
            .find(|(s, _)| *s == source)
        {
            Some((_, n)) => *n += 1,
            None => self.stats.requests_by_identity.push((source, 1)),
        }
        let id = self.next_request;
        self.next_request += 1;
        if let Some(conn) = self.conns.get_mut(&(ev.pid, fd)) {
            conn.desync = None;
        }
        if pipelined {
            self.stats.pipelined_requests += 1;
            self.requests.insert(
                id,
                Request {
                    info: RequestInfo {
                        id,
                        method: head.method.clone(),
                        target: head.target.clone(),
                        identity: who.identity,
                        identity_problem: who.problem,
                        head_truncated: truncated,
                        status: None,
                        tid: ev.tid,
                        fd,
                        ts_ns: ev.ts_ns,
                    },
                    pid: ev.pid,
                    on_conn: true,
                    // In scope of a thread once the requests before it are answered.
                    on_thread: false,
                    responded: false,
                    login,
                    session_id,
                    reported: Vec::new(),
                },
            );
            self.conns
                .entry((ev.pid, fd))
                .or_default()
                .queue
                .push_back(id);
            return id;
        }
        if self
            .lost_threads
            .get(&ev.tid)
            .is_some_and(|(p, _)| *p == ev.pid)
        {
            self.lost_threads.remove(&ev.tid);
        }
        // Its previous request, on another connection, still waits for its response: this
        // thread serves several requests at once.
        if let Some(&(p, prev)) = self.threads.get(&ev.tid)
            && p == ev.pid
            && let Some(r) = self.requests.get(&prev)
            && r.info.fd != fd
            && r.on_conn
            && !r.responded
        {
            self.multiplexed.insert(ev.tid, ev.pid);
        }
        self.end_scope(ev.pid, ev.tid, fd, out);
        let info = RequestInfo {
            id,
            method: head.method.clone(),
            target: head.target.clone(),
            identity: who.identity,
            identity_problem: who.problem,
            head_truncated: truncated,
            status: None,
            tid: ev.tid,
            fd,
            ts_ns: ev.ts_ns,
        };
        self.requests.insert(
            id,
            Request {
                info,
                pid: ev.pid,
                on_conn: true,
                on_thread: true,
                responded: false,
                login,
                session_id,
                reported: Vec::new(),
            },
        );
        let conn = self.conns.entry((ev.pid, fd)).or_default();
        conn.queue.push_back(id);
        conn.response_left = None;
        self.threads.insert(ev.tid, (ev.pid, id));
        // Reads this thread made with no request in scope are judged now, unattributed; an
        // event loop's wait for their fingerprint.
        if !self.is_multiplexed(ev.pid, ev.tid) {
            let tid = ev.tid;
            self.finish_where(out, |a| a.owner == Owner::Thread(tid));
        }
        id
    }

    /// The thread and the connection move on: their current requests end.
    fn end_scope(&mut self, pid: u32, tid: u32, fd: i32, out: &mut Vec<Finding>) {
        let queued = self
            .conns
            .get_mut(&(pid, fd))
            .map(|c| std::mem::take(&mut c.queue))
            .unwrap_or_default();
        for req in queued {
            self.release(req, Release::Conn, out);
        }
        if let Some(&(p, req)) = self.threads.get(&tid)
            && p == pid
        {
            self.threads.remove(&tid);
            self.release(req, Release::Thread, out);
        }
    }

    fn on_sock_write(
        &mut self,
        ev: &Event,
        fd: i32,
        bytes: u64,
        data: &[u8],
        body_fp: Option<u64>,
        out: &mut Vec<Finding>,
    ) {
        let key = (ev.pid, fd);
        let Some(mut req) = self.conns.get(&key).and_then(Conn::current) else {
            return;
        };
        let status = http::response_status(data);
        let interim = status.is_some_and(|s| s < 200);
        // A second final status line while requests wait behind the one answered: its
        // response is over and this is the next one's (its end was not known by length).
        if status.is_some()
            && !interim
            && self.requests.get(&req).is_some_and(|r| r.responded)
            && self.conns.get(&key).is_some_and(|c| c.queue.len() > 1)
        {
            self.answered(ev.pid, fd, out);
            let Some(next) = self.conns.get(&key).and_then(Conn::current) else {
                return;
            };
            req = next;
        }
        let mut body_left = None;
        if let Some(r) = self.requests.get_mut(&req) {
            let first = !r.responded && !interim;
            if first {
                r.responded = true;
                body_left = response_length(data, &r.info.method, bytes);
            }
            if r.info.status.is_none() && !interim {
                r.info.status = status;
            }
            if first && let Some(s) = &self.cfg.identity.session {
                learn_session(&mut self.sessions, s, r, data, ev.ts_ns);
            }
            if first {
                self.finish_where(out, |a| a.closed && a.owner == Owner::Request(req));
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.response_left = body_left;
                }
                if body_left.is_none() && self.conns.get(&key).is_some_and(|c| c.queue.len() > 1) {
                    // Where this response ends is unknown, so which response a later write,
                    // `sendfile` or read serves is too: nothing more on this connection is
                    // anybody's until it reads again.
                    self.claim(ev, req, body_fp);
                    self.pipeline_lost(ev.pid, fd, out);
                    return;
                }
            }
        }
        self.claim(ev, req, body_fp);
        if body_left.is_none() {
            self.response_bytes(ev.pid, fd, bytes, out);
        } else if body_left == Some(0) {
            self.response_done(ev.pid, fd, out);
        }
    }

    /// Pipelined requests whose responses can no longer be told apart (a response of unknown
    /// length with requests queued behind it): they all end, the connection and the threads
    /// serving them have no request in scope (`pipeline_ambiguous`) until the next request.
    fn pipeline_lost(&mut self, pid: u32, fd: i32, out: &mut Vec<Finding>) {
        *self
            .stats
            .desyncs
            .entry(Desync::PipelineAmbiguous)
            .or_default() += 1;
        let Some(conn) = self.conns.get_mut(&(pid, fd)) else {
            return;
        };
        conn.response_left = None;
        conn.desync = Some(Desync::PipelineAmbiguous);
        let queued = std::mem::take(&mut conn.queue);
        let mut serving: Vec<(u32, u64)> = self
            .threads
            .iter()
            .filter(|(_, (p, r))| *p == pid && queued.contains(r))
            .map(|(tid, (_, r))| (*tid, *r))
            .collect();
        serving.sort_unstable();
        for (tid, req) in serving {
            self.threads.remove(&tid);
            self.lost_threads
                .insert(tid, (pid, Desync::PipelineAmbiguous));
            self.release(req, Release::Thread, out);
        }
        for req in queued {
            self.release(req, Release::Conn, out);
        }
    }

    /// `bytes` more of the current response went out on connection `fd`: when its length is
    /// known and reached, it is answered.
    fn response_bytes(&mut self, pid: u32, fd: i32, bytes: u64, out: &mut Vec<Finding>) {
        let Some(conn) = self.conns.get_mut(&(pid, fd)) else {
            return;
        };
        let Some(left) = conn.response_left.as_mut() else {
            return;
        };
        *left = left.saturating_sub(bytes);
        if *left == 0 {
            self.response_done(pid, fd, out);
        }
    }

    /// The current response on `fd` is complete. With requests queued behind it, the next one
    /// is answered now (even its reads before its status line are its own); alone, it stays
    /// current until the next request, as on any keep-alive connection.
    fn response_done(&mut self, pid: u32, fd: i32, out: &mut Vec<Finding>) {
        if self
            .conns
            .get(&(pid, fd))
            .is_some_and(|c| c.queue.len() > 1)
        {
            self.answered(pid, fd, out);
        }
    }

    /// The front request of connection `fd` is answered: it leaves the queue, and the next one
    /// takes its place, in the scope of the thread that served it.
    fn answered(&mut self, pid: u32, fd: i32, out: &mut Vec<Finding>) {
        let Some(conn) = self.conns.get_mut(&(pid, fd)) else {
            return;
        };
        conn.response_left = None;
        let Some(done) = conn.queue.pop_front() else {
            return;
        };
        let next = conn.current();
        let serving = self
            .threads
            .iter()
            .find(|(_, (p, r))| *p == pid && *r == done)
            .map(|(tid, _)| *tid);
        self.release(done, Release::Conn, out);
        if let Some(tid) = serving {
            self.threads.remove(&tid);
            self.release(done, Release::Thread, out);
            if let Some(next) = next
                && let Some(r) = self.requests.get_mut(&next)
            {
                r.on_thread = true;
                self.threads.insert(tid, (pid, next));
            }
        }
    }

    /// Reads with no request in scope that a write of request `req`'s response (by `ev`'s
    /// thread, its body starting with bytes of fingerprint `body_fp`) tells the request of.
    fn claim(&mut self, ev: &Event, req: u64, body_fp: Option<u64>) {
        let multiplexed = self.is_multiplexed(ev.pid, ev.tid);
        // Reads with no request in scope that this write tells the request of:
        // - flow: this thread's, when it serves one request at a time (all of them);
        // - fingerprint: a helper thread's (one that never reads sockets: a blocking pool), or
        //   this event loop's own, whose first bytes open this response body (the oldest one:
        //   the same document read twice for two requests goes once to each response). A
        //   connection thread's unscoped read (its request head unseen) is never claimed by
        //   another connection's response that happens to carry the same document.
        let mut moved: Vec<(u64, Vec<Evidence>)> = Vec::new();
        let mut by_content: Option<u64> = None;
        for (id, a) in &self.open {
            let Owner::Thread(tid) = a.owner else {
                continue;
            };
            if a.access.pid != ev.pid {
                continue;
            }
            let same_thread = tid == ev.tid;
            let content = body_fp.is_some() && a.fp == body_fp;
            if same_thread && !multiplexed {
                let mut evidence = vec![Evidence::Flow];
                if content {
                    evidence.push(Evidence::Fingerprint);
                }
                moved.push((*id, evidence));
            } else if content
                && by_content.is_none()
                && (same_thread || self.socket_threads.get(&tid) != Some(&ev.pid))
            {
                by_content = Some(*id);
            }
        }
        if let Some(id) = by_content {
            let same_thread = self
                .open
                .get(&id)
                .is_some_and(|a| a.owner == Owner::Thread(ev.tid));
            let mut evidence = vec![Evidence::Fingerprint];
            if same_thread {
                evidence.insert(0, Evidence::Flow);
            }
            moved.push((id, evidence));
        }
        moved.sort_unstable_by_key(|(id, _)| *id);
        for (id, evidence) in moved {
            self.attach(id, req, evidence);
        }
    }

    /// Moves open access `id` (read with no request in scope) to request `req`.
    fn attach(&mut self, id: u64, req: u64, evidence: Vec<Evidence>) {
        self.unindex(id);
        let Some(mut open) = self.open.remove(&id) else {
            return;
        };
        if let Some(r) = self.requests.get(&req)
            && r.reported.contains(&open.access.document)
        {
            self.stats.repeated_reads += 1;
            return;
        }
        let owner = Owner::Request(req);
        if let Some(existing) = self
            .indexed(&owner, &open.access.document)
            .and_then(|i| self.open.get_mut(&i))
        {
            existing.access.bytes = existing.access.bytes.saturating_add(open.access.bytes);
            existing.access.evidence.extend(evidence);
            existing.access.evidence.sort();
            existing.access.evidence.dedup();
            return;
        }
        open.owner = owner.clone();
        open.access.evidence = evidence;
        open.access.unattributed = None;
        self.index.entry(owner).or_default().push(id);
        self.open.insert(id, open);
    }

    fn drop_conn(&mut self, pid: u32, fd: i32, out: &mut Vec<Finding>) {
        if let Some(conn) = self.conns.remove(&(pid, fd)) {
            for req in conn.queue {
                self.release(req, Release::Conn, out);
            }
        }
    }

    fn release(&mut self, req: u64, what: Release, out: &mut Vec<Finding>) {
        let Some(r) = self.requests.get_mut(&req) else {
            return;
        };
        match what {
            Release::Conn => r.on_conn = false,
            Release::Thread => r.on_thread = false,
        }
        // Once the thread has moved on, what it read for this request is complete.
        if !r.on_thread || !r.on_conn {
            self.finish_where(out, |a| a.owner == Owner::Request(req));
        }
        if let Some(r) = self.requests.get(&req)
            && !r.on_conn
            && !r.on_thread
        {
            self.requests.remove(&req);
        }
    }

    fn on_exit(&mut self, pid: u32, out: &mut Vec<Finding>) {
        self.finish_where(out, |a| a.access.pid == pid);
        // Sorted: the maps' order is random, and replay must emit findings in the same order.
        let mut fds: Vec<i32> = self
            .conns
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, fd)| *fd)
            .collect();
        fds.sort_unstable();
        for fd in fds {
            self.drop_conn(pid, fd, out);
        }
        let mut tids: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, (p, _))| *p == pid)
            .map(|(t, _)| *t)
            .collect();
        tids.sort_unstable();
        for tid in tids {
            if let Some((_, req)) = self.threads.remove(&tid) {
                self.release(req, Release::Thread, out);
            }
        }
        self.docs.retain(|(p, _), _| *p != pid);
        self.requests.retain(|_, r| r.pid != pid);
        self.multiplexed.retain(|_, p| *p != pid);
        self.socket_threads.retain(|_, p| *p != pid);
    }

    /// A thread is gone: its request scope ends (else every thread-per-connection request would
    /// be kept forever), and what it read with no request in scope can no longer flow to a
    /// connection: judged now, unattributed.
    fn on_thread_exit(&mut self, pid: u32, tid: u32, out: &mut Vec<Finding>) {
        if self.socket_threads.get(&tid) == Some(&pid) {
            self.socket_threads.remove(&tid);
        }
        if let Some(&(p, req)) = self.threads.get(&tid)
            && p == pid
        {
            self.threads.remove(&tid);
            self.release(req, Release::Thread, out);
        }
        if self.multiplexed.get(&tid) == Some(&pid) {
            self.multiplexed.remove(&tid);
        }
        // Its reads with a fingerprint may still go out on a connection from another thread:
        // they wait for it (unindexed, so that a reused thread id starts new accesses).
        self.keep_for_fingerprint(|a| a.owner == Owner::Thread(tid) && a.access.pid == pid);
        self.finish_where(out, |a| {
            a.owner == Owner::Thread(tid) && a.access.pid == pid && !a.awaits_fingerprint()
        });
    }

    /// Judges (emits) every open access matching `pred`, in access order.
    fn finish_where(&mut self, out: &mut Vec<Finding>, pred: impl Fn(&OpenAccess) -> bool) {
        let done: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, a)| pred(a))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.unindex(id);
            let Some(open) = self.open.remove(&id) else {
                continue;
            };
            let mut access = open.access;
            if let Owner::Request(req) = open.owner
                && let Some(r) = self.requests.get_mut(&req)
            {
                access.request = Some(r.info.clone());
                r.reported.push(access.document.clone());
            }
            self.stats.accesses += 1;
            out.push(Finding::Access(access));
        }
    }
}

/// Bytes of a response still to be written after its first write (`bytes` long, `head`
/// captured), when its head says how long it is: `Content-Length`, or no body at all (`HEAD`,
/// 204, 304). `None` when unknown (chunked, until close, or a head past the capture).
fn response_length(head: &[u8], method: &str, bytes: u64) -> Option<u64> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i as u64 + 4)?;
    let body = if method.eq_ignore_ascii_case("HEAD") {
        0
    } else {
        http::response_body_length(head)?
    };
    Some((end + body).saturating_sub(bytes))
}

/// What the first write of `r`'s response says about sessions: a successful login binds the
/// session cookie it sets to the user of its form; a new session id set on a request with an
/// identity (the portal renewing the id) is bound to that user; a cleared cookie ends the
/// request's session.
fn learn_session(
    sessions: &mut Sessions,
    cfg: &identity::SessionConfig,
    r: &Request,
    head: &[u8],
    ts_ns: u64,
) {
    let succeeded = r.info.status.is_some_and(|s| (200..400).contains(&s));
    for value in http::response_header_values(head, "set-cookie") {
        match session::set_cookie(value, &cfg.cookie) {
            Some(Some(id)) if succeeded => {
                let user = match &r.login {
                    Some(body) => session::form_user(body, &cfg.user_field),
                    None => r.info.identity.as_ref().map(|i| i.user.clone()),
                };
                if let Some(user) = user {
                    sessions.bind(cfg, &id, &user, ts_ns);
                }
            }
            Some(None) => {
                if let Some(id) = &r.session_id {
                    sessions.unbind(id);
                }
            }
            _ => {}
        }
    }
}

impl OpenAccess {
    /// Read with no request in scope, and its content can still be recognised in a response.
    fn awaits_fingerprint(&self) -> bool {
        matches!(self.owner, Owner::Thread(_)) && self.fp.is_some()
    }
}

#[derive(Clone, Copy)]
enum Release {
    Conn,
    Thread,
}

#[cfg(test)]
mod tests;
