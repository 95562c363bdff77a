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
//! - `goroutine`: in a Go target whose goroutines the probes follow, the same with the goroutine
//!   in place of the thread (Go moves goroutines between threads; a goroutine keeps its scope
//!   in a process that lost thread scope);
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
//! Thread scope and flow are trusted per process ([`trust`]): at the first sign of M:N
//! scheduling (a runtime recognised at exec, a thread interleaving requests, a request whose
//! events come from several threads) a process loses them for good. Its reads are then grouped
//! by open file (later chunks read by other pool threads join the access of the first one) and
//! wait for `sendfile` or for a response body carrying their fingerprint, matched across all
//! of the process's threads. A body whose fingerprint matches reads of different documents is
//! ambiguous: it names none of them, and they end `unattributed`.
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
mod http2;
pub mod trust;

use trust::{Distrust, ScopeTrust};

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
    /// Proxies whose forwarded headers name the client (`[clients]`).
    pub proxies: crate::client::TrustedProxies,
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
    /// Thread scope's equivalent in a Go target: the read was made by the goroutine that read
    /// the request's head.
    Goroutine,
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
    /// The connection's peer, from the kernel at accept (absent for connections accepted before
    /// Vigie started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<crate::client::Endpoint>,
    /// The client: the peer, or whom a trusted proxy or FastCGI front server names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<crate::client::Client>,
    /// Handle of the credential that carried the identity ([`identity::handle`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
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
    /// Processes that lost thread scope (signs of M:N scheduling, see [`trust`]).
    pub distrusted_processes: u64,
    /// Response bodies whose fingerprint matched reads of more than one document: attributed
    /// to none of them.
    pub ambiguous_fingerprints: u64,
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
    /// HTTP/2 streams of this connection, once it spoke HTTP/2.
    http2: Option<Box<http2::Http2Conn>>,
    /// Who connected, from the kernel at accept.
    peer: Option<crate::client::Endpoint>,
}

impl Conn {
    /// Accepted under our eyes: the first bytes decide the protocol, and the first request
    /// starts at the first byte.
    fn accepted(max_head: usize, peer: Option<crate::client::Endpoint>) -> Self {
        Self {
            protocol: crate::fastcgi::Protocol::Fresh,
            stream: Some(RequestStream::new(max_head)),
            peer,
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
    /// Still in scope of the thread (or goroutine) that read it.
    on_thread: bool,
    /// That thread or goroutine.
    actor: Actor,
    /// A response was written on its connection.
    responded: bool,
    /// The `Content-Length` of its response, from the response head.
    body_length: Option<u64>,
    /// The portal's login request: its (bounded) form body names the user its response's
    /// session cookie is bound to.
    login: Option<Vec<u8>>,
    /// The session cookie it carried (hashed by the redactor), if sessions are configured.
    session_id: Option<Vec<u8>>,
    /// Documents already reported for this request (one finding per request and document).
    reported: Vec<String>,
}

impl Request {
    /// A request just read on its connection (`on_thread`: in scope of `actor` from now on),
    /// not answered yet.
    fn new(
        info: RequestInfo,
        pid: u32,
        actor: Actor,
        on_thread: bool,
        login: Option<Vec<u8>>,
        session_id: Option<Vec<u8>>,
    ) -> Self {
        Self {
            info,
            pid,
            on_conn: true,
            on_thread,
            actor,
            responded: false,
            body_length: None,
            login,
            session_id,
            reported: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Owner {
    Request(u64),
    /// Read with no request in scope, by this thread (a process with thread scope) or goroutine.
    Thread(Actor),
    /// Read by a process without thread scope, through open file `(pid, fd)`: every read of the
    /// open file, on any thread, joins one access.
    File(u32, i32),
}

/// What serves one request at a time, and so scopes requests: a thread, or in a Go target whose
/// goroutines the probes follow, a goroutine (Go moves goroutines between threads at every
/// blocking point; net/http serves each connection on one goroutine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Actor {
    Thread(u32),
    /// (pid, goid): goroutine ids are per process, never reused.
    Goroutine(u32, u64),
    /// A thread of a Go target on no goroutine's behalf (the runtime's own stack), or whose
    /// goroutine is not known: it scopes nothing, and nothing flows by it.
    Unscoped(u32),
}

impl Actor {
    fn scopes(self) -> bool {
        !matches!(self, Self::Unscoped(_))
    }

    /// The evidence a read in this actor's scope gives.
    fn evidence(self) -> Evidence {
        match self {
            Self::Goroutine(..) => Evidence::Goroutine,
            Self::Thread(_) | Self::Unscoped(_) => Evidence::Thread,
        }
    }
}

#[derive(Debug)]
struct OpenAccess {
    access: Access,
    owner: Owner,
    fd: i32,
    /// Fingerprint of the first bytes read (from the kernel).
    fp: Option<u64>,
    /// The document's size when `fp` was taken: a response body of another length is not it.
    size: Option<u64>,
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
    /// actor -> (pid, request in scope)
    threads: IdMap<Actor, (u32, u64)>,
    /// Event-loop threads (actor -> pid): they serve several requests at once, so their reads
    /// get no thread scope.
    multiplexed: IdMap<Actor, u32>,
    /// Threads that read from sockets (actor -> pid): connection threads, whose reads with no
    /// request in scope go to their own connections only, never by content to another thread's.
    socket_threads: IdMap<Actor, u32>,
    /// Threads (or goroutines) whose connection was lost (actor -> (pid, why)), until they
    /// read a request: the reason their reads are unattributed.
    lost_threads: IdMap<Actor, (u32, Desync)>,
    /// Go targets whose events carry goroutine ids: an event of theirs without one scopes
    /// nothing (its thread may be serving any goroutine).
    goroutine_pids: IdMap<u32, ()>,
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
    /// Which processes may be judged by thread scope.
    trust: ScopeTrust,
    /// Processes without thread scope: the access each open document file's reads join, and
    /// the request it went to once known (reads after it was judged are repeated reads).
    by_open: IdMap<(u32, i32), (u64, Option<u64>)>,
    /// Each thread's last [`EventKind::FileRead`] ((pid, tid) -> (fd, where it went)): the
    /// kernel's count of the reads that followed it ([`EventKind::FileReadMore`]) goes there.
    last_read: IdMap<(u32, u32), (i32, ReadWent)>,
    /// Body spans learnt from the last event, for the live pipeline to give the probes (see
    /// [`BodySpan`]); replay drops them.
    spans: Vec<BodySpan>,
    stats: Stats,
}

/// Where the body of the response being written on connection `fd` of `pid` lies in the
/// connection's output, in the probes' offsets ([`EventKind::SockWrite`]'s `at`): `start` is
/// its first byte, `end` one past its last. Learnt from a response head with a
/// `Content-Length`; the probes then count, rather than send, the writes that lie past the one
/// holding the body's first bytes and within `end` ([`EventKind::SockWriteMore`]): such a write
/// tells the correlator nothing but its length. A write that crosses `end` holds the next
/// response's head, and is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySpan {
    pub pid: u32,
    pub fd: i32,
    pub start: u64,
    pub end: u64,
}

/// Where a thread's last document read went, for the reads the kernel counted after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadWent {
    /// Open access `id`.
    Access(u64),
    /// Nowhere new: its request had reported the document already.
    Repeated,
    /// Not a document read (the fd is no document Vigie follows).
    Ignored,
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
            goroutine_pids: IdMap::default(),
            docs: IdMap::default(),
            requests: IdMap::default(),
            open: BTreeMap::new(),
            index: IdMap::default(),
            sessions: Sessions::new(),
            trust: ScopeTrust::default(),
            by_open: IdMap::default(),
            last_read: IdMap::default(),
            spans: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The body spans learnt since the last call (see [`BodySpan`]): hints for the probes,
    /// which change no finding.
    pub fn take_spans(&mut self) -> std::vec::Drain<'_, BodySpan> {
        self.spans.drain(..)
    }

    /// Whether session `id` (hashed cookie value) is bound to a user.
    pub fn knows_session(&self, id: &[u8]) -> bool {
        self.sessions.contains(id)
    }

    /// Why process `pid` lost thread scope, if it did.
    pub fn distrust(&self, pid: u32) -> Option<Distrust> {
        self.trust.why(pid)
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
        if ev.goid.is_some() {
            self.goroutine_pids.insert(pid, ());
        }
        let actor = self.actor(ev);
        match &ev.kind {
            // A new program: whatever the old one showed of its scheduling says nothing of it.
            EventKind::ProcessExec => {
                self.trust.forget(pid);
                self.goroutine_pids.remove(&pid);
            }
            // A Go target (it lost thread scope at its `RuntimeFound`): its goroutines, when
            // followed, scope requests instead, and its events without one scope nothing.
            EventKind::GoRuntime { .. } => {
                self.goroutine_pids.insert(pid, ());
            }
            EventKind::RuntimeFound { runtime } => {
                self.lose_trust(pid, Distrust::Runtime(*runtime));
            }
            EventKind::ProcessFork { child_pid } => {
                self.trust.fork(pid, *child_pid);
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
            EventKind::FileRead {
                fd,
                bytes,
                fp,
                size,
            } => {
                let went = match self.docs.get(&(pid, *fd)).cloned() {
                    Some(path) => {
                        let scope = self.read_scope(pid, actor);
                        let evidence = scope.map(|_| actor.evidence());
                        let content = fp.map(|fp| (fp, *size));
                        match self
                            .record_access(ev, actor, *fd, path, *bytes, content, scope, evidence)
                        {
                            Some(id) => ReadWent::Access(id),
                            None => ReadWent::Repeated,
                        }
                    }
                    None => ReadWent::Ignored,
                };
                self.last_read.insert((pid, ev.tid), (*fd, went));
            }
            EventKind::FileReadMore { fd, bytes, calls } => {
                self.more_reads(ev, *fd, *bytes, *calls);
            }
            // A mapping is a read with the same evidence rules (thread scope, or flow to the
            // write that follows on this thread), judged when its request ends, not at close.
            EventKind::FileMap { fd, bytes } => {
                if let Some(path) = self.docs.get(&(pid, *fd)).cloned() {
                    let scope = self.read_scope(pid, actor);
                    let evidence = scope.map(|_| actor.evidence());
                    // No fingerprint: the kernel sees no bytes of a mapping.
                    if let Some(id) =
                        self.record_access(ev, actor, *fd, path, *bytes, None, scope, evidence)
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
                    let conn = self.conns.get(&(pid, *out_fd));
                    let on_conn = conn.and_then(Conn::current);
                    let (scope, evidence) = match on_conn {
                        Some(req) => (Some(req), Some(Evidence::Sendfile)),
                        // Which of an HTTP/2 connection's streams it serves is not followed:
                        // neither the connection nor the thread says.
                        None if conn.is_some_and(|c| c.http2.is_some()) => (None, None),
                        None => {
                            let scope = self
                                .thread_scope(pid, actor)
                                .filter(|_| self.trusts(pid, actor));
                            (scope, scope.map(|_| actor.evidence()))
                        }
                    };
                    self.record_access(ev, actor, *in_fd, path, *bytes, None, scope, evidence);
                }
                self.response_bytes(pid, *out_fd, *bytes, out);
            }
            EventKind::FileClose { fd } => {
                self.docs.remove(&(pid, *fd));
                self.by_open.remove(&(pid, *fd));
                // A read attributed by thread scope, closed by another thread: the request's
                // events come from several threads. (Not a mapping, nor a read already closed:
                // their fd number may be another file's by now.)
                let split = self.open.values().any(|a| {
                    a.access.pid == pid
                        && a.fd == *fd
                        && !a.mapped
                        && !a.closed
                        && a.access.tid != ev.tid
                        && a.access.evidence == [Evidence::Thread]
                });
                if split {
                    self.lose_trust(pid, Distrust::SplitRequest);
                }
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
                    Owner::Thread(_) | Owner::File(..) => false,
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
            EventKind::SockAccept { fd, peer } => {
                self.drop_conn(pid, *fd, out);
                self.conns
                    .insert((pid, *fd), Conn::accepted(self.cfg.max_head, *peer));
            }
            EventKind::SockRead { fd, bytes, data } => {
                if actor.scopes() {
                    self.socket_threads.insert(actor, pid);
                }
                self.on_sock_read(ev, actor, *fd, *bytes, &data.0, out)
            }
            EventKind::SockWrite {
                fd,
                bytes,
                data,
                body_fp,
                at,
            } => {
                if self
                    .conns
                    .get(&(pid, *fd))
                    .is_some_and(|c| c.fastcgi.is_some())
                {
                    self.on_fastcgi_write(ev, *fd, *bytes, &data.0, out);
                } else {
                    self.on_sock_write(ev, actor, *fd, *bytes, &data.0, *body_fp, *at, out);
                }
            }
            // Writes inside a body, past its first bytes: each would have come as a write whose
            // data the capture stage cut (a body is never kept), with no fingerprint.
            EventKind::SockWriteMore { fd, bytes, .. } => {
                if self
                    .conns
                    .get(&(pid, *fd))
                    .is_some_and(|c| c.fastcgi.is_none())
                {
                    self.on_sock_write(ev, actor, *fd, *bytes, &[], None, None, out);
                }
            }
            EventKind::SockClose { fd } => self.drop_conn(pid, *fd, out),
            EventKind::Http2 { fd, item } => self.on_http2(ev, actor, *fd, item, out),
            EventKind::Unreadable { fd, .. } => {
                // This thread may now serve a request Vigie cannot see (an HTTP/2 stream, TLS
                // it cannot decrypt), interleaved with the ones it can: thread scope is no
                // longer evidence here, for good (as at the first sign of M:N scheduling).
                if actor.scopes() {
                    self.socket_threads.insert(actor, pid);
                }
                self.multiplexed.insert(actor, pid);
                self.end_scope(pid, actor, *fd, out);
            }
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
                // Or of an HTTP/2 connection: the live side loses it for good (its dynamic
                // tables are unknown) and says so with an `Http2` item; until then no stream
                // of it is anybody's.
                self.http2_events_lost(out);
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

    /// Reads the kernel counted after the thread's last `FileRead` of `fd`: one by one, each
    /// would have joined that read's access (same thread, same open file, nothing of the thread
    /// in between). They join it, and never start an access: a count carries no evidence of its
    /// own. An access judged since (the idle horizon, events lost) takes no more bytes: the
    /// reads are counted as repeated, as reads of a document already reported are.
    fn more_reads(&mut self, ev: &Event, fd: i32, bytes: u64, calls: u32) {
        let went = match self.last_read.get(&(ev.pid, ev.tid)) {
            Some(&(f, went)) if f == fd => went,
            _ => ReadWent::Ignored,
        };
        match went {
            ReadWent::Access(id) => match self.open.get_mut(&id) {
                Some(open) => {
                    open.access.bytes = open.access.bytes.saturating_add(bytes);
                    open.access.last_ts_ns = open.access.last_ts_ns.max(ev.ts_ns);
                }
                None => self.stats.repeated_reads += u64::from(calls),
            },
            ReadWent::Repeated => self.stats.repeated_reads += u64::from(calls),
            ReadWent::Ignored => {}
        }
    }

    /// End of the stream: every open access is judged.
    pub fn flush(&mut self, out: &mut Vec<Finding>) {
        self.finish_where(out, |_| true);
    }

    fn track_document(&mut self, pid: u32, fd: i32, path: Option<String>) {
        // A new open file on this fd number (its close may have gone unseen).
        self.by_open.remove(&(pid, fd));
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

    /// On an event loop (HTTP/2), a read of open file `fd` after its first one, which a
    /// response already claimed by content: the access it continues. Only a read that does not
    /// start like that first one (same document, fd still open, another fingerprint): the
    /// rest of the document, read on for the same response (nginx reads a large document a
    /// buffer at a time as its stream's window allows). A read from the document's start again
    /// (another stream reading a cached fd) is a new access of its own.
    fn continued_claim(
        &self,
        ev: &Event,
        actor: Actor,
        fd: i32,
        path: &str,
        content: Option<(u64, Option<u64>)>,
    ) -> Option<u64> {
        if !self.is_multiplexed(ev.pid, actor) {
            return None;
        }
        let fp = content.map(|(fp, _)| fp);
        self.open
            .iter()
            .find(|(_, a)| {
                a.access.pid == ev.pid
                    && a.fd == fd
                    && !a.closed
                    && matches!(a.owner, Owner::Request(_))
                    && *a.access.document == *path
                    && a.fp.is_some()
                    && fp.is_some()
                    && a.fp != fp
            })
            .map(|(id, _)| *id)
    }

    fn is_multiplexed(&self, pid: u32, actor: Actor) -> bool {
        self.multiplexed.get(&actor) == Some(&pid)
    }

    /// What `ev` was done by, for scoping: its goroutine when it carries one.
    fn actor(&self, ev: &Event) -> Actor {
        match ev.goid {
            Some(0) => Actor::Unscoped(ev.tid),
            Some(goid) => Actor::Goroutine(ev.pid, goid),
            None if self.goroutine_pids.contains_key(&ev.pid) => Actor::Unscoped(ev.tid),
            None => Actor::Thread(ev.tid),
        }
    }

    /// Whether `actor` of process `pid` may scope requests: a goroutine always (it serves one
    /// request at a time wherever it runs), a thread while its process has thread scope.
    fn trusts(&self, pid: u32, actor: Actor) -> bool {
        match actor {
            Actor::Goroutine(..) => true,
            Actor::Thread(_) => self.trust.trusts(pid),
            Actor::Unscoped(_) => false,
        }
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
    fn read_scope(&self, pid: u32, actor: Actor) -> Option<u64> {
        if self.is_multiplexed(pid, actor) || !self.trusts(pid, actor) {
            None
        } else {
            self.thread_scope(pid, actor)
        }
    }

    /// Why a read by `actor` has no request in scope, when Vigie knows.
    fn unattributed_reason(&self, pid: u32, actor: Actor) -> Option<Desync> {
        match self.lost_threads.get(&actor) {
            Some(&(p, why)) if p == pid => Some(why),
            _ => None,
        }
    }

    fn thread_scope(&self, pid: u32, actor: Actor) -> Option<u64> {
        match self.threads.get(&actor) {
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
        actor: Actor,
        fd: i32,
        path: Arc<str>,
        bytes: u64,
        content: Option<(u64, Option<u64>)>,
        scope: Option<u64>,
        evidence: Option<Evidence>,
    ) -> Option<u64> {
        if scope.is_none()
            && let Some(id) = self.continued_claim(ev, actor, fd, &path, content)
            && let Some(open) = self.open.get_mut(&id)
        {
            open.access.bytes = open.access.bytes.saturating_add(bytes);
            open.access.last_ts_ns = ev.ts_ns;
            return Some(id);
        }
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
            None if self.trusts(ev.pid, actor) => Owner::Thread(actor),
            None => {
                // Later reads of an open file join its first read's access, whichever thread
                // made them (a pool reading a document in chunks).
                if let Some(&(id, req)) = self.by_open.get(&(ev.pid, fd)) {
                    match self.open.get_mut(&id) {
                        Some(open) if *open.access.document == *path => {
                            open.access.bytes = open.access.bytes.saturating_add(bytes);
                            open.access.last_ts_ns = ev.ts_ns;
                            open.take_content(content);
                            return Some(id);
                        }
                        Some(_) => {}
                        // Judged already: more of what was reported.
                        None => {
                            if req.is_some() {
                                self.stats.repeated_reads += 1;
                            }
                            return None;
                        }
                    }
                }
                Owner::File(ev.pid, fd)
            }
        };
        let unattributed = match owner {
            Owner::Thread(actor) => self.unattributed_reason(ev.pid, actor),
            Owner::Request(_) | Owner::File(..) => None,
        };
        if let Some(id) = self.indexed(&owner, &path)
            && let Some(open) = self.open.get_mut(&id)
        {
            open.access.bytes = open.access.bytes.saturating_add(bytes);
            open.access.last_ts_ns = ev.ts_ns;
            open.fd = fd;
            open.take_content(content);
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
        if let Owner::File(p, f) = owner {
            self.by_open.insert((p, f), (id, None));
        }
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
                fp: content.map(|(fp, _)| fp),
                size: content.and_then(|(_, size)| size),
                closed: false,
                mapped: false,
            },
        );
        Some(id)
    }

    fn on_sock_read(
        &mut self,
        ev: &Event,
        actor: Actor,
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
                    let place = if pipelined {
                        Place::Queued
                    } else {
                        Place::Current
                    };
                    self.new_request(ev, actor, fd, &head, false, place, out);
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
                    self.desync(ev, actor, fd, why);
                    self.end_answered(ev, actor, fd, out);
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
    fn desync(&mut self, ev: &Event, actor: Actor, fd: i32, why: Desync) {
        *self.stats.desyncs.entry(why).or_default() += 1;
        if let Some(conn) = self.conns.get_mut(&(ev.pid, fd)) {
            conn.desync = Some(why);
        }
        if actor.scopes() {
            self.lost_threads.insert(actor, (ev.pid, why));
        }
    }

    /// After a desync: when no request of connection `fd` is left unanswered, the thread and
    /// the connection have no request any more (whatever the peer sent, the previous request
    /// is over).
    fn end_answered(&mut self, ev: &Event, actor: Actor, fd: i32, out: &mut Vec<Finding>) {
        let unanswered = self.conns.get(&(ev.pid, fd)).is_some_and(|c| {
            c.queue
                .iter()
                .any(|r| self.requests.get(r).is_some_and(|r| !r.responded))
        });
        if !unanswered {
            self.end_scope(ev.pid, actor, fd, out);
        }
    }

    /// A new request read on `fd` by `ev`'s thread: where `place` says (the current request of
    /// both; queued behind requests of the connection not answered yet; an HTTP/2 stream of
    /// its own). Returns its id.
    #[expect(
        clippy::too_many_arguments,
        reason = "what the HTTP and FastCGI paths each know of a new request"
    )]
    fn new_request(
        &mut self,
        ev: &Event,
        actor: Actor,
        fd: i32,
        head: &http::RequestHead,
        truncated: bool,
        place: Place,
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
        let peer = self.conns.get(&(ev.pid, fd)).and_then(|c| c.peer);
        let client = crate::client::client_of(peer.as_ref(), head, &self.cfg.proxies);
        let session = who
            .identity
            .as_ref()
            .and_then(|i| identity::handle::session_handle(i, head, session_id.as_deref()));
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
            peer,
            client,
            session,
        };
        if place == Place::Stream {
            // Neither the thread's nor the connection's current request: only evidence that
            // names the stream (its response body's content) ties a read to it.
            self.requests.insert(
                id,
                Request::new(info, ev.pid, actor, false, login, session_id),
            );
            return id;
        }
        if place == Place::Queued {
            self.stats.pipelined_requests += 1;
            // In scope of a thread once the requests before it are answered.
            self.requests.insert(
                id,
                Request::new(info, ev.pid, actor, false, login, session_id),
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
            .get(&actor)
            .is_some_and(|(p, _)| *p == ev.pid)
        {
            self.lost_threads.remove(&actor);
        }
        // Its previous request, on another connection, still waits for its response: this
        // thread serves several requests at once.
        if let Some(&(p, prev)) = self.threads.get(&actor)
            && p == ev.pid
            && let Some(r) = self.requests.get(&prev)
            && r.info.fd != fd
            && r.on_conn
            && !r.responded
        {
            self.multiplexed.insert(actor, ev.pid);
            self.lose_trust(ev.pid, Distrust::Interleaved);
        }
        if trust::is_virtual_thread_carrier(&ev.comm) {
            self.lose_trust(ev.pid, Distrust::VirtualThreads);
        }
        self.end_scope(ev.pid, actor, fd, out);
        self.requests.insert(
            id,
            Request::new(info, ev.pid, actor, actor.scopes(), login, session_id),
        );
        let conn = self.conns.entry((ev.pid, fd)).or_default();
        conn.queue.push_back(id);
        conn.response_left = None;
        if actor.scopes() {
            self.threads.insert(actor, (ev.pid, id));
        }
        // Reads this thread made with no request in scope are judged now, unattributed; an
        // event loop's wait for their fingerprint.
        if !self.is_multiplexed(ev.pid, actor) && self.trusts(ev.pid, actor) {
            self.finish_where(out, |a| a.owner == Owner::Thread(actor));
        }
        id
    }

    /// The thread and the connection move on: their current requests end.
    fn end_scope(&mut self, pid: u32, actor: Actor, fd: i32, out: &mut Vec<Finding>) {
        let queued = self
            .conns
            .get_mut(&(pid, fd))
            .map(|c| std::mem::take(&mut c.queue))
            .unwrap_or_default();
        for req in queued {
            self.release(req, Release::Conn, out);
        }
        if let Some(&(p, req)) = self.threads.get(&actor)
            && p == pid
        {
            self.threads.remove(&actor);
            self.release(req, Release::Thread, out);
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "an event's fields, as each caller has them unpacked"
    )]
    fn on_sock_write(
        &mut self,
        ev: &Event,
        actor: Actor,
        fd: i32,
        bytes: u64,
        data: &[u8],
        body_fp: Option<u64>,
        at: Option<u64>,
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
        // The response is written by another thread than the one that read the request.
        if self
            .requests
            .get(&req)
            .is_some_and(|r| r.pid == ev.pid && r.info.tid != ev.tid)
        {
            self.lose_trust(ev.pid, Distrust::SplitRequest);
        }
        if let Some(r) = self.requests.get_mut(&req) {
            let first = !r.responded && !interim;
            if first {
                let framing = http::ResponseFraming::of(data);
                r.responded = true;
                body_left = response_length(data, status, framing, &r.info.method, bytes);
                r.body_length = framing.first_content_length;
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
                    self.claim(ev, actor, req, body_fp);
                    self.pipeline_lost(ev.pid, fd, out);
                    return;
                }
                if let (Some(at), Some(left)) = (at, body_left)
                    && left > 0
                    && let Some(head) = memchr::memmem::find(data, b"\r\n\r\n")
                {
                    self.spans.push(BodySpan {
                        pid: ev.pid,
                        fd,
                        start: at.saturating_add(head as u64 + 4),
                        end: at.saturating_add(bytes).saturating_add(left),
                    });
                }
            }
        }
        self.claim(ev, actor, req, body_fp);
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
        let mut serving: Vec<(Actor, u64)> = self
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
                r.actor = tid;
                self.threads.insert(tid, (pid, next));
            }
        }
    }

    /// Reads with no request in scope that a write of request `req`'s response (by `ev`'s
    /// thread, its body starting with bytes of fingerprint `body_fp`) tells the request of.
    fn claim(&mut self, ev: &Event, actor: Actor, req: u64, body_fp: Option<u64>) {
        self.claim_by(ev, actor, req, body_fp, true);
    }

    /// [`Self::claim`]; without `flow`, content alone (an HTTP/2 stream: its thread wrote
    /// other streams' bodies in between, so that it wrote this one says nothing).
    fn claim_by(&mut self, ev: &Event, actor: Actor, req: u64, body_fp: Option<u64>, flow: bool) {
        let trusted = self.trusts(ev.pid, actor);
        let multiplexed = self.is_multiplexed(ev.pid, actor);
        // A body of a known length is not a document of another size.
        let length = self.requests.get(&req).and_then(|r| r.body_length);
        // Reads with no request in scope that this write tells the request of:
        // - flow: this thread's, when its process has thread scope and it serves one request at
        //   a time (all of them);
        // - fingerprint: reads whose first bytes open this response body (the oldest one: the
        //   same document read twice for two requests goes once to each response). In a
        //   process with thread scope, a helper thread's (one that never reads sockets: a
        //   blocking pool) or this event loop's own: a connection thread's unscoped read (its
        //   request head unseen) is never claimed by another connection's response that happens
        //   to carry the same document. In a process without it, any thread's.
        //   Reads of different documents with this fingerprint make it ambiguous: none moves.
        let mut moved: Vec<(u64, Vec<Evidence>)> = Vec::new();
        let mut by_content: Vec<u64> = Vec::new();
        for (id, a) in &self.open {
            if a.access.pid != ev.pid {
                continue;
            }
            let by = match a.owner {
                Owner::Thread(by) => Some(by),
                Owner::File(..) => None,
                Owner::Request(_) => continue,
            };
            let same_thread = by == Some(actor);
            let content = body_fp.is_some()
                && a.fp == body_fp
                && (length.is_none() || a.size.is_none() || a.size == length);
            if flow && same_thread && trusted && !multiplexed {
                let mut evidence = vec![Evidence::Flow];
                if content {
                    evidence.push(Evidence::Fingerprint);
                }
                moved.push((*id, evidence));
            } else if content
                && (!trusted
                    || by.is_none()
                    || same_thread
                    || by.is_some_and(|t| self.socket_threads.get(&t) != Some(&ev.pid)))
            {
                by_content.push(*id);
            }
        }
        let documents = |id: &u64| self.open.get(id).map(|a| a.access.document.as_str());
        let first = by_content.first().and_then(documents);
        if by_content.iter().any(|id| documents(id) != first) {
            self.stats.ambiguous_fingerprints += 1;
        } else if let Some(&id) = by_content.first() {
            let mut evidence = vec![Evidence::Fingerprint];
            if flow && trusted && actor_of(self.open.get(&id)) == Some(actor) {
                evidence.insert(0, Evidence::Flow);
            }
            moved.push((id, evidence));
        }
        moved.sort_unstable_by_key(|(id, _)| *id);
        for (id, evidence) in moved {
            self.attach(id, req, evidence);
        }
    }

    /// Process `pid` showed M:N scheduling: from now on its reads need evidence naming their
    /// request. What it read that only thread scope or flow could attribute, still open, goes
    /// back to waiting for such evidence (grouped by open file), rather than stay with a
    /// request the thread may not have been serving.
    fn lose_trust(&mut self, pid: u32, why: Distrust) {
        if !self.trust.lose(pid, why) {
            return;
        }
        self.stats.distrusted_processes += 1;
        let demoted: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, a)| {
                a.access.pid == pid
                    && match a.owner {
                        Owner::Thread(_) => true,
                        Owner::Request(_) => a.access.evidence == [Evidence::Thread],
                        Owner::File(..) => false,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in demoted {
            self.unindex(id);
            let Some(open) = self.open.get_mut(&id) else {
                continue;
            };
            let owner = Owner::File(pid, open.fd);
            open.owner = owner.clone();
            open.access.evidence.clear();
            self.by_open.entry((pid, open.fd)).or_insert((id, None));
            self.index.entry(owner).or_default().push(id);
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
        let file = (open.access.pid, open.fd);
        let joined = self.indexed(&owner, &open.access.document);
        // Later reads of the open file go where this one went.
        if let Some(entry) = self.by_open.get_mut(&file)
            && entry.0 == id
        {
            *entry = (joined.unwrap_or(id), Some(req));
        }
        if let Some(existing) = joined.and_then(|i| self.open.get_mut(&i)) {
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
            if let Some(h2) = conn.http2 {
                for req in h2.streams.into_values() {
                    self.release(req, Release::Conn, out);
                }
            }
            for req in conn.queue {
                // A goroutine serves one connection and ends with it (no event says so): its
                // scope ends here, or every connection's last request would be kept.
                if let Some(actor @ Actor::Goroutine(..)) = self.requests.get(&req).map(|r| r.actor)
                    && self.threads.get(&actor) == Some(&(pid, req))
                {
                    self.threads.remove(&actor);
                    self.release(req, Release::Thread, out);
                }
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
        self.last_read.retain(|(p, _), _| *p != pid);
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
        let mut actors: Vec<Actor> = self
            .threads
            .iter()
            .filter(|(_, (p, _))| *p == pid)
            .map(|(a, _)| *a)
            .collect();
        actors.sort_unstable();
        for actor in actors {
            if let Some((_, req)) = self.threads.remove(&actor) {
                self.release(req, Release::Thread, out);
            }
        }
        self.goroutine_pids.remove(&pid);
        self.docs.retain(|(p, _), _| *p != pid);
        self.requests.retain(|_, r| r.pid != pid);
        self.multiplexed.retain(|_, p| *p != pid);
        self.socket_threads.retain(|_, p| *p != pid);
        self.by_open.retain(|(p, _), _| *p != pid);
        self.trust.forget(pid);
    }

    /// A thread is gone: its request scope ends (else every thread-per-connection request would
    /// be kept forever), and what it read with no request in scope can no longer flow to a
    /// connection: judged now, unattributed.
    /// (A goroutine outlives the thread that ran it: a Go thread's exit ends no goroutine's
    /// scope.)
    fn on_thread_exit(&mut self, pid: u32, tid: u32, out: &mut Vec<Finding>) {
        self.last_read.remove(&(pid, tid));
        let thread = Actor::Thread(tid);
        if self.socket_threads.get(&thread) == Some(&pid) {
            self.socket_threads.remove(&thread);
        }
        if let Some(&(p, req)) = self.threads.get(&thread)
            && p == pid
        {
            self.threads.remove(&thread);
            self.release(req, Release::Thread, out);
        }
        if self.multiplexed.get(&thread) == Some(&pid) {
            self.multiplexed.remove(&thread);
        }
        let of_thread = |o: &Owner| matches!(o, Owner::Thread(Actor::Thread(t) | Actor::Unscoped(t)) if *t == tid);
        // Its reads with a fingerprint may still go out on a connection from another thread:
        // they wait for it (unindexed, so that a reused thread id starts new accesses).
        self.keep_for_fingerprint(|a| of_thread(&a.owner) && a.access.pid == pid);
        self.finish_where(out, |a| {
            of_thread(&a.owner) && a.access.pid == pid && !a.awaits_fingerprint()
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
/// captured, with its `status` and `framing` fields), when its head says how long it is:
/// `Content-Length`, or no body at all (`HEAD`, 1xx, 204, 304). `None` when unknown (chunked,
/// until close, or a head past the capture).
fn response_length(
    head: &[u8],
    status: Option<u16>,
    framing: http::ResponseFraming,
    method: &str,
    bytes: u64,
) -> Option<u64> {
    let end = memchr::memmem::find(head, b"\r\n\r\n").map(|i| i as u64 + 4)?;
    let status = status?;
    let body = if method.eq_ignore_ascii_case("HEAD") {
        0
    } else {
        framing.body_length(status)?
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
    /// The first fingerprint of the access is kept (the document's first bytes), with the size
    /// it was taken at.
    fn take_content(&mut self, content: Option<(u64, Option<u64>)>) {
        if self.fp.is_none()
            && let Some((fp, size)) = content
        {
            self.fp = Some(fp);
            self.size = size;
        }
    }

    /// Read with no request in scope, and its content can still be recognised in a response.
    fn awaits_fingerprint(&self) -> bool {
        matches!(self.owner, Owner::Thread(_) | Owner::File(..)) && self.fp.is_some()
    }
}

/// The thread (or goroutine) an open access waits on, when it waits for one.
fn actor_of(open: Option<&OpenAccess>) -> Option<Actor> {
    match open?.owner {
        Owner::Thread(by) => Some(by),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Release {
    Conn,
    Thread,
}

/// Where a new request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The current request of its connection and of the thread that read it.
    Current,
    /// Behind requests of its connection not answered yet (HTTP/1.1 pipelining).
    Queued,
    /// An HTTP/2 stream: in no thread's scope and no connection's queue.
    Stream,
}

#[cfg(test)]
mod tests;
