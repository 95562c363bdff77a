//! Scenario tests of the correlator: each reads like the syscalls a server model makes.
use super::*;
use crate::correlate::trust::Distrust;
use crate::{events::Payload, identity::IdentitySource};

const ROOT: &str = "/srv/users";

/// Builds an event stream with increasing timestamps and collects what the correlator finds.
struct Scenario {
    c: Correlator,
    ts: u64,
    found: Vec<Finding>,
    /// The goroutine the next events are made on (a Go target's), see [`Scenario::on_g`].
    goid: Option<u64>,
    /// Every event fed: when the scenario ends, the same stream with its reads counted as the
    /// probes count them must give the same findings (see [`counted_as_the_kernel_does`]).
    log: Vec<Event>,
}

impl Scenario {
    fn new() -> Self {
        Self::with_identity(IdentityConfig::default())
    }

    fn with_identity(identity: IdentityConfig) -> Self {
        let cfg = CorrelatorConfig {
            roots: vec![ROOT.into()],
            identity,
            max_head: 4096,
            idle_flush_ns: 500_000_000,
            realtime_offset_ns: None,
            proxies: Default::default(),
        };
        Self {
            c: Correlator::new(cfg),
            ts: 1_000,
            found: Vec::new(),
            goid: None,
            log: Vec::new(),
        }
    }

    fn ev(&mut self, pid: u32, tid: u32, kind: EventKind) -> &mut Self {
        self.ts += 1_000;
        let ev = Event {
            ts_ns: self.ts,
            pid,
            tid,
            comm: "portal".into(),
            goid: self.goid,
            kind,
        };
        self.c.handle(&ev, &mut self.found);
        self.log.push(ev);
        self
    }

    /// The next events are made by goroutine `goid` (0: the Go runtime's own stack; `None`: a
    /// thread with no known goroutine).
    fn on_g(&mut self, goid: Option<u64>) -> &mut Self {
        self.goid = goid;
        self
    }

    fn accept(&mut self, pid: u32, tid: u32, fd: i32) -> &mut Self {
        self.ev(pid, tid, EventKind::SockAccept { fd, peer: None })
    }

    fn request(&mut self, pid: u32, tid: u32, fd: i32, head: &str) -> &mut Self {
        let data = head.as_bytes().to_vec();
        self.ev(
            pid,
            tid,
            EventKind::SockRead {
                fd,
                bytes: data.len() as u64,
                data: Payload(data),
            },
        )
    }

    fn get_as(&mut self, pid: u32, tid: u32, fd: i32, user: &str, target: &str) -> &mut Self {
        self.request(
            pid,
            tid,
            fd,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-Remote-User: {user}\r\n\r\n"),
        )
    }

    fn open(&mut self, pid: u32, tid: u32, fd: i32, path: &str) -> &mut Self {
        self.ev(
            pid,
            tid,
            EventKind::FileOpen {
                fd,
                path: path.into(),
                dirfd: -100,
                truncated: false,
                base: Some("/srv".into()),
                full_path: None,
                flags: 0,
                exact: false,
            },
        )
    }

    fn read(&mut self, pid: u32, tid: u32, fd: i32, bytes: u64) -> &mut Self {
        self.ev(
            pid,
            tid,
            EventKind::FileRead {
                fd,
                bytes,
                fp: None,
                size: None,
            },
        )
    }

    fn close(&mut self, pid: u32, tid: u32, fd: i32) -> &mut Self {
        self.ev(pid, tid, EventKind::FileClose { fd })
    }

    /// `bytes` more of a response body written (cut by the capture stage: no data).
    fn body(&mut self, pid: u32, tid: u32, fd: i32, bytes: u64) -> &mut Self {
        self.ev(
            pid,
            tid,
            EventKind::SockWrite {
                fd,
                bytes,
                data: Payload(Vec::new()),
                body_fp: None,
                at: None,
            },
        )
    }

    fn respond(&mut self, pid: u32, tid: u32, fd: i32, status: u16) -> &mut Self {
        self.respond_fp(pid, tid, fd, status, None)
    }

    /// A document read whose first bytes have fingerprint `fp`.
    fn read_fp(&mut self, pid: u32, tid: u32, fd: i32, bytes: u64, fp: u64) -> &mut Self {
        self.ev(
            pid,
            tid,
            EventKind::FileRead {
                fd,
                bytes,
                fp: Some(fp),
                size: None,
            },
        )
    }

    /// A response (head and body start) whose body starts with bytes of fingerprint `body_fp`.
    fn respond_fp(
        &mut self,
        pid: u32,
        tid: u32,
        fd: i32,
        status: u16,
        body_fp: Option<u64>,
    ) -> &mut Self {
        let data = format!("HTTP/1.1 {status} X\r\nContent-Length: 3\r\n\r\n").into_bytes();
        self.ev(
            pid,
            tid,
            EventKind::SockWrite {
                fd,
                bytes: data.len() as u64,
                data: Payload(data),
                body_fp,
                at: None,
            },
        )
    }

    fn sock_close(&mut self, pid: u32, tid: u32, fd: i32) -> &mut Self {
        self.ev(pid, tid, EventKind::SockClose { fd })
    }

    fn tick(&mut self, after_ns: u64) -> &mut Self {
        self.ts += after_ns;
        let ev = Event {
            ts_ns: self.ts,
            pid: 0,
            tid: 0,
            comm: crate::events::Comm::default(),
            goid: None,
            kind: EventKind::Tick,
        };
        self.c.handle(&ev, &mut self.found);
        self.log.push(ev);
        self
    }

    fn finish(&mut self) -> Vec<Access> {
        self.c.flush(&mut self.found);
        self.found
            .drain(..)
            .filter_map(|f| match f {
                Finding::Access(a) => Some(a),
                Finding::Gap { .. } => None,
            })
            .collect()
    }
}

impl Drop for Scenario {
    /// Every scenario doubles as a test of the probes' counting: its stream, and the same
    /// stream with each thread's runs of document reads and of response body writes counted as
    /// the kernel counts them, give the same findings (verdicts, evidence, bytes, times), in the
    /// same order.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let cfg = self.c.cfg.clone();
        let (counted, _) = counted_as_the_kernel_does(&self.log, &cfg);
        assert_eq!(
            run(&cfg, &counted),
            run(&cfg, &self.log),
            "findings differ once reads and writes are counted; counted stream: {counted:#?}"
        );
    }
}

/// Every finding of `events`, fed in order, then flushed.
fn run(cfg: &CorrelatorConfig, events: &[Event]) -> Vec<Finding> {
    let mut c = Correlator::new(cfg.clone());
    let mut found = Vec::new();
    for ev in events {
        c.handle(ev, &mut found);
    }
    c.flush(&mut found);
    found
}

mod kernel_counts;
use kernel_counts::counted_as_the_kernel_does;

/// (user, document, evidence) of each access, for compact assertions.
fn summary(accesses: &[Access]) -> Vec<(Option<String>, String, Vec<Evidence>)> {
    accesses
        .iter()
        .map(|a| {
            let user = a
                .request
                .as_ref()
                .and_then(|r| r.identity.as_ref())
                .map(|i| i.user.clone());
            (user, a.document.clone(), a.evidence.clone())
        })
        .collect()
}

fn u(s: &str) -> Option<String> {
    Some(s.into())
}

#[test]
fn thread_per_request_read_then_close() {
    let mut s = Scenario::new();
    s.accept(1, 1, 5)
        .get_as(1, 2, 5, "alice", "/docs/bob/x.pdf");
    s.open(1, 2, 7, "/srv/users/bob/x.pdf")
        .read(1, 2, 7, 100)
        .read(1, 2, 7, 50)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x.pdf".into(),
            vec![Evidence::Thread]
        )]
    );
    assert_eq!(got[0].bytes, 150);
    let req = got[0].request.as_ref().unwrap();
    assert_eq!(
        (req.method.as_str(), req.target.as_str(), req.tid),
        ("GET", "/docs/bob/x.pdf", 2)
    );
    assert_eq!(
        req.identity.as_ref().unwrap().source,
        IdentitySource::TrustedHeader
    );
}

#[test]
fn access_is_judged_with_its_response_status() {
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/a")
        .open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1);
    assert!(s.found.is_empty(), "judged before the document was closed");
    s.close(1, 2, 7);
    assert!(s.found.is_empty(), "judged before its response");
    // The portal read the document, then refused it: still a read, with its status.
    s.respond(1, 2, 5, 403);
    assert_eq!(s.found.len(), 1);
    let got = s.finish();
    assert_eq!(got[0].request.as_ref().unwrap().status, Some(403));

    // No response at all: judged when the connection goes, without a status.
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/a")
        .open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7)
        .sock_close(1, 2, 5);
    assert_eq!(s.found.len(), 1);
    assert_eq!(s.finish()[0].request.as_ref().unwrap().status, None);
}

#[test]
fn keep_alive_connection_with_two_users_in_turn() {
    let mut s = Scenario::new();
    s.accept(1, 1, 5);
    s.get_as(1, 2, 5, "alice", "/a")
        .open(1, 2, 7, "/srv/users/alice/a")
        .read(1, 2, 7, 10)
        .close(1, 2, 7)
        .respond(1, 2, 5, 200);
    s.get_as(1, 2, 5, "bob", "/b")
        .open(1, 2, 7, "/srv/users/alice/a")
        .read(1, 2, 7, 10)
        .close(1, 2, 7)
        .respond(1, 2, 5, 200);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Thread]
            ),
            (
                u("bob"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
}

#[test]
fn pool_thread_serves_what_another_thread_accepted() {
    let mut s = Scenario::new();
    s.accept(1, 10, 5).accept(1, 10, 6);
    // Worker 11 serves fd 5 (alice), worker 12 serves fd 6 (carol), interleaved.
    s.get_as(1, 11, 5, "alice", "/x")
        .get_as(1, 12, 6, "carol", "/y");
    s.open(1, 12, 8, "/srv/users/carol/c")
        .open(1, 11, 7, "/srv/users/bob/b");
    s.read(1, 11, 7, 5)
        .read(1, 12, 8, 6)
        .close(1, 11, 7)
        .close(1, 12, 8);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/bob/b".into(),
                vec![Evidence::Thread]
            ),
            (
                u("carol"),
                "/srv/users/carol/c".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
}

#[test]
fn prefork_child_inherits_documents_and_sendfile_is_flow_evidence() {
    let mut s = Scenario::new();
    // The master opened bob's document before forking (a file cache warmed at start-up).
    s.open(100, 100, 9, "/srv/users/bob/b");
    s.ev(100, 100, EventKind::ProcessFork { child_pid: 200 });
    s.accept(200, 200, 4)
        .get_as(200, 200, 4, "alice", "/docs/bob/b");
    s.ev(
        200,
        200,
        EventKind::SendFile {
            out_fd: 4,
            in_fd: 9,
            bytes: 4096,
        },
    );
    s.sock_close(200, 200, 4);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/b".into(),
            vec![Evidence::Sendfile]
        )]
    );
    assert_eq!((got[0].pid, got[0].bytes), (200, 4096));
}

#[test]
fn cached_fd_reused_across_users_is_one_access_per_request() {
    let mut s = Scenario::new();
    // Opened before Vigie started: found in /proc.
    s.ev(
        1,
        1,
        EventKind::FdFound {
            fd: 3,
            found: FoundFd::Document {
                path: "/srv/users/bob/h.pdf".into(),
            },
        },
    );
    s.get_as(1, 2, 5, "bob", "/h")
        .read(1, 2, 3, 10)
        .read(1, 2, 3, 10)
        .respond(1, 2, 5, 200);
    s.get_as(1, 2, 5, "alice", "/h")
        .read(1, 2, 3, 10)
        .respond(1, 2, 5, 200);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("bob"),
                "/srv/users/bob/h.pdf".into(),
                vec![Evidence::Thread]
            ),
            (
                u("alice"),
                "/srv/users/bob/h.pdf".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
    assert_eq!(got[0].bytes, 20);
    assert_eq!(got[0].request.as_ref().unwrap().status, Some(200));
}

#[test]
fn idle_cached_fd_is_judged_on_tick() {
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::FdFound {
            fd: 3,
            found: FoundFd::Document {
                path: "/srv/users/bob/h".into(),
            },
        },
    );
    s.get_as(1, 2, 5, "alice", "/h").read(1, 2, 3, 10);
    s.tick(100_000_000);
    assert!(s.found.is_empty());
    s.tick(600_000_000);
    assert_eq!(s.found.len(), 1);
}

#[test]
fn dotdot_and_relative_paths_are_normalized() {
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/docs/alice/../bob/x");
    s.open(1, 2, 7, "/srv/users/alice/../bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    // Relative to base "/srv".
    s.open(1, 2, 8, "users/./carol//y")
        .read(1, 2, 8, 1)
        .close(1, 2, 8);
    let docs: Vec<String> = s.finish().into_iter().map(|a| a.document).collect();
    assert_eq!(docs, ["/srv/users/bob/x", "/srv/users/carol/y"]);
}

#[test]
fn files_outside_the_roots_are_ignored() {
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.open(1, 2, 7, "/srv/portal.db")
        .read(1, 2, 7, 4096)
        .close(1, 2, 7);
    s.open(1, 2, 7, "/srv/users/../portal.db")
        .read(1, 2, 7, 4096)
        .close(1, 2, 7);
    s.open(1, 2, 7, "/srv/users2/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    assert!(s.finish().is_empty());
}

#[test]
fn read_with_no_request_is_unattributed_when_its_thread_moves_on() {
    let mut s = Scenario::new();
    s.open(1, 2, 7, "/srv/users/bob/x").read(1, 2, 7, 5);
    s.close(1, 2, 7);
    let got = s.finish();
    assert_eq!(summary(&got), [(None, "/srv/users/bob/x".into(), vec![])]);
    assert!(got[0].request.is_none());

    // Read on a thread with no scope (its request head was lost), then written to a
    // connection with a request by the same thread.
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.ev(
        1,
        2,
        EventKind::Lost {
            reason: "ringbuf_full".into(),
            count: 1,
        },
    );
    s.ev(
        1,
        2,
        EventKind::FileRead {
            fd: 7,
            bytes: 1,
            fp: None,
            size: None,
        },
    ); // unknown fd: ignored
    s.open(1, 2, 7, "/srv/users/bob/x").read(1, 2, 7, 5);
    s.get_as(1, 2, 6, "carol", "/y");
    s.open(1, 2, 8, "/srv/users/bob/y").read(1, 2, 8, 5);
    s.respond(1, 2, 6, 200);
    let got = s.finish();
    let accesses: Vec<_> = summary(&got);
    assert_eq!(
        accesses,
        [
            (None, "/srv/users/bob/x".into(), vec![]),
            (
                u("carol"),
                "/srv/users/bob/y".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
}

#[test]
fn a_response_from_another_thread_than_the_head_reader_ends_thread_scope_and_flow() {
    // Thread 2 reads alice's head; thread 3 reads a document and writes her response: the
    // request's events come from two threads (M:N scheduling: thread 3 may have been running
    // another request's task). No flow: only content can name the request.
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.open(1, 3, 7, "/srv/users/bob/x").read(1, 3, 7, 5);
    s.respond(1, 3, 5, 200);
    assert_eq!(s.c.distrust(1), Some(Distrust::SplitRequest));
    let got = s.finish();
    assert_eq!(summary(&got), [(None, "/srv/users/bob/x".into(), vec![])]);

    // With a fingerprint, the body names it, from any thread of the process.
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.open(1, 3, 7, "/srv/users/bob/x")
        .read_fp(1, 3, 7, 100, 0xb);
    s.respond_fp(1, 3, 5, 200, None);
    s.respond_fp(1, 3, 5, 200, Some(0xb));
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Fingerprint]
        )]
    );
    // Other processes keep thread scope.
    assert_eq!(s.c.distrust(2), None);
}

#[test]
fn garbage_on_the_socket_ends_the_scope_and_resyncs() {
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/a").respond(1, 2, 5, 200);
    s.request(1, 2, 5, "\x16\x03\x01garbage\r\n\r\n");
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    s.get_as(1, 2, 5, "carol", "/c")
        .open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (None, "/srv/users/bob/x".into(), vec![]),
            (
                u("carol"),
                "/srv/users/bob/x".into(),
                vec![Evidence::Thread]
            )
        ]
    );
    assert_eq!(s.c.stats().invalid_heads, 1);
}

#[test]
fn head_split_over_reads_and_body_skipped() {
    let mut s = Scenario::new();
    s.request(1, 2, 5, "POST /upload HTTP/1.1\r\nX-Remote-");
    s.request(1, 2, 5, "User: alice\r\nContent-Length: 10\r\n\r\n0123");
    s.request(
        1,
        2,
        5,
        "456789GET /next HTTP/1.1\r\nX-Remote-User: bob\r\n\r\n",
    );
    // Pipelined: the upload is answered first, and what is read before its response is its.
    s.open(1, 2, 7, "/srv/users/carol/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    s.respond(1, 2, 5, 200).body(1, 2, 5, 3);
    s.open(1, 2, 7, "/srv/users/carol/y")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/carol/x".into(),
                vec![Evidence::Thread]
            ),
            (
                u("bob"),
                "/srv/users/carol/y".into(),
                vec![Evidence::Thread]
            )
        ]
    );
    assert_eq!(s.c.stats().requests, 2);
}

#[test]
fn head_larger_than_the_capture_is_a_desync_not_a_guess() {
    let mut s = Scenario::new();
    let head = format!(
        "GET /docs/bob/x HTTP/1.1\r\nCookie: {}\r\nX-Remote-User: alice\r\n\r\n",
        "a".repeat(5000)
    );
    // The kernel captured the first 2048 bytes of a read that returned more.
    let data = head.as_bytes()[..2048].to_vec();
    s.ev(
        1,
        2,
        EventKind::SockRead {
            fd: 5,
            bytes: head.len() as u64,
            data: Payload(data),
        },
    );
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    let got = s.finish();
    assert!(got[0].request.is_none());
    assert_eq!(got[0].unattributed, Some(Desync::Uncaptured));
    assert_eq!(s.c.stats().desyncs.get(&Desync::Uncaptured), Some(&1));
}

#[test]
fn invalid_basic_is_a_request_without_identity() {
    let mut s = Scenario::new();
    s.request(
        1,
        2,
        5,
        "GET /x HTTP/1.1\r\nAuthorization: Basic !!!notbase64\r\n\r\n",
    );
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    let got = s.finish();
    let req = got[0].request.as_ref().unwrap();
    assert_eq!(
        (req.identity.as_ref(), req.identity_problem),
        (None, Some(IdentityProblem::InvalidBasic))
    );
}

#[test]
fn same_document_twice_in_one_request_is_one_access() {
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bytes, 2);
}

#[test]
fn lost_events_clear_scopes_and_report_a_gap() {
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.ev(
        0,
        0,
        EventKind::Lost {
            reason: "ringbuf_full".into(),
            count: 3,
        },
    );
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    s.c.flush(&mut s.found);
    assert!(matches!(&s.found[0], Finding::Gap { count: 3, .. }));
    assert!(matches!(&s.found[1], Finding::Access(a) if a.request.is_none()));
}

#[test]
fn process_exit_judges_and_forgets() {
    let mut s = Scenario::new();
    s.get_as(7, 7, 5, "alice", "/x")
        .open(7, 7, 9, "/srv/users/bob/x")
        .read(7, 7, 9, 1);
    s.ev(7, 7, EventKind::ProcessExit);
    assert_eq!(s.found.len(), 1);
    assert!(s.c.documents_of(7).is_empty());
    assert!(s.c.requests.is_empty() && s.c.conns.is_empty() && s.c.threads.is_empty());
}

#[test]
fn state_is_released_when_connections_close() {
    let mut s = Scenario::new();
    for i in 0..100 {
        s.accept(1, 1, 5)
            .get_as(1, 2, 5, "alice", "/x")
            .open(1, 2, 7, "/srv/users/alice/x");
        s.read(1, 2, 7, 1)
            .close(1, 2, 7)
            .respond(1, 2, 5, 200)
            .sock_close(1, 2, 5);
        assert!(s.c.conns.is_empty(), "iteration {i}");
    }
    s.tick(1);
    assert!(s.c.requests.len() <= 1 && s.c.open.is_empty() && s.c.index.is_empty());
    assert_eq!(s.finish().len(), 100);
}

#[test]
fn thread_per_connection_state_is_released_when_threads_exit() {
    let mut s = Scenario::new();
    // A new thread per connection, as the `thread` model and many servers do: each thread's
    // scope must go with the thread, or requests and scopes pile up forever.
    for i in 0..1000 {
        let tid = 100 + i;
        s.accept(1, 1, 5)
            .get_as(1, tid, 5, "alice", "/x")
            .open(1, tid, 7, "/srv/users/alice/x");
        s.read(1, tid, 7, 1)
            .close(1, tid, 7)
            .respond(1, tid, 5, 200)
            .sock_close(1, tid, 5);
        s.ev(1, tid, EventKind::ThreadExit);
    }
    assert_eq!(s.c.tracked(), Tracked::default());
    assert_eq!(s.finish().len(), 1000);
}

#[test]
fn thread_exit_judges_its_unattributed_reads_and_keeps_the_connection() {
    let mut s = Scenario::new();
    s.accept(1, 1, 5).get_as(1, 2, 5, "alice", "/x");
    // Thread 3 reads a document with no request in scope and exits without writing anything.
    s.open(1, 3, 8, "/srv/users/bob/y").read(1, 3, 8, 4);
    s.ev(1, 3, EventKind::ThreadExit);
    assert_eq!(s.found.len(), 1, "judged at the thread's exit");
    assert!(matches!(&s.found[0], Finding::Access(a) if a.request.is_none() && a.tid == 3));
    // Thread 2's request is still current on its connection: its reads are still its own.
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 1)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got[1..]),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Thread]
        )]
    );
    // Another thread exiting with the same tid in another process changes nothing here.
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/x");
    s.ev(9, 2, EventKind::ThreadExit);
    assert_eq!(s.c.tracked().threads, 1);
}

#[test]
fn same_stream_same_findings() {
    let run = || {
        let mut s = Scenario::new();
        for (i, user) in ["alice", "bob", "carol", "alice"].iter().enumerate() {
            let tid = 10 + i as u32;
            s.get_as(1, tid, 20 + i as i32, user, "/x").open(
                1,
                tid,
                30 + i as i32,
                "/srv/users/bob/x",
            );
        }
        for i in 0..4 {
            s.read(1, 10 + i, 30 + i as i32, 1);
        }
        s.tick(10_000_000_000);
        s.finish()
    };
    let a = run();
    assert_eq!(a.len(), 4);
    assert_eq!(a, run());
}

#[test]
fn bearer_token_expiry_is_judged_at_the_event_time() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    const EXP: i64 = 1_800_000_000;
    let token = format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"HS256"}"#),
        b64(&format!(r#"{{"sub":"alice","exp":{EXP}}}"#))
    );
    // The same events under three wall clocks: an hour before `exp`, an hour after, unknown.
    let run = |offset_ns: Option<i64>| {
        let mut s = Scenario::new();
        let cfg = CorrelatorConfig {
            roots: vec![ROOT.into()],
            identity: IdentityConfig {
                sources: vec![IdentitySource::Jwt],
                ..IdentityConfig::default()
            },
            max_head: 4096,
            idle_flush_ns: 500_000_000,
            realtime_offset_ns: offset_ns,
            proxies: Default::default(),
        };
        s.c = Correlator::new(cfg);
        s.request(
            1,
            2,
            5,
            &format!("GET /d HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"),
        )
        .open(1, 2, 7, "/srv/users/alice/x")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
        let got = s.finish();
        let req = got[0].request.clone().unwrap();
        (
            req.identity.map(|i| i.user),
            req.identity_problem,
            s.c.stats().expired_tokens,
        )
    };
    // Events are stamped a few microseconds after boot in this scenario.
    let at = |unix: i64| Some(unix * 1_000_000_000);
    assert_eq!(run(at(EXP - 3600)), (u("alice"), None, 0));
    assert_eq!(
        run(at(EXP + 3600)),
        (None, Some(IdentityProblem::JwtExpired), 1)
    );
    assert_eq!(run(None), (u("alice"), None, 0));
}

#[test]
fn blocking_pool_reads_are_attributed_by_fingerprint() {
    // An async runtime: worker 2 reads both heads; pool threads 20 and 21 read the documents
    // (open, read, close) and worker 3 writes the responses, in the other order.
    let mut s = Scenario::new();
    s.accept(1, 2, 5).accept(1, 2, 6);
    s.get_as(1, 2, 5, "alice", "/api/a")
        .get_as(1, 2, 6, "bob", "/api/b");
    s.open(1, 20, 7, "/srv/users/bob/x")
        .read_fp(1, 20, 7, 900, 0xb0b)
        .close(1, 20, 7);
    s.open(1, 21, 8, "/srv/users/bob/y")
        .read_fp(1, 21, 8, 700, 0xb0b2)
        .close(1, 21, 8);
    assert!(s.found.is_empty(), "judged before its response was seen");
    s.respond_fp(1, 3, 6, 200, Some(0xb0b2))
        .respond_fp(1, 3, 5, 200, Some(0xb0b));
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/bob/x".into(),
                vec![Evidence::Fingerprint]
            ),
            (
                u("bob"),
                "/srv/users/bob/y".into(),
                vec![Evidence::Fingerprint]
            ),
        ]
    );
    assert_eq!(got[0].tid, 20, "the access names the thread that read");
    assert_eq!(got[0].request.as_ref().unwrap().status, Some(200));
}

#[test]
fn event_loop_serving_two_connections_does_not_use_thread_scope() {
    // One thread, two connections: heads of alice then bob are read before either response;
    // alice's document is read after bob's head (thread scope would say bob).
    let mut s = Scenario::new();
    s.accept(1, 2, 5).accept(1, 2, 6);
    s.get_as(1, 2, 5, "alice", "/a");
    s.get_as(1, 2, 6, "bob", "/b");
    s.open(1, 2, 7, "/srv/users/alice/a")
        .read_fp(1, 2, 7, 100, 0xa)
        .close(1, 2, 7);
    s.open(1, 2, 8, "/srv/users/alice/b")
        .read_fp(1, 2, 8, 100, 0xb)
        .close(1, 2, 8);
    // A third request on the loop must not judge the waiting reads.
    s.accept(1, 2, 9).get_as(1, 2, 9, "carol", "/c");
    // The response head alone (no body yet) attributes nothing on an event loop.
    s.respond_fp(1, 2, 6, 200, None);
    s.respond_fp(1, 2, 6, 200, Some(0xb));
    s.respond_fp(1, 2, 5, 200, Some(0xa));
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Fingerprint]
            ),
            (
                u("bob"),
                "/srv/users/alice/b".into(),
                vec![Evidence::Fingerprint]
            ),
        ]
    );
    assert_eq!(s.c.distrust(1), Some(Distrust::Interleaved));
}

#[test]
fn event_loop_detection_keeps_earlier_thread_scope_and_sequential_servers_alone() {
    // Sequential keep-alive on one thread: a response before each next head, no multiplexing.
    let mut s = Scenario::new();
    s.accept(1, 2, 5).accept(1, 2, 6);
    s.get_as(1, 2, 5, "alice", "/a")
        .respond(1, 2, 5, 200)
        .get_as(1, 2, 6, "bob", "/b")
        .open(1, 2, 7, "/srv/users/alice/a")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("bob"),
            "/srv/users/alice/a".into(),
            vec![Evidence::Thread]
        )]
    );
    assert!(s.c.multiplexed.is_empty());
}

#[test]
fn unmatched_fingerprint_reads_are_unattributed_at_the_horizon() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5).get_as(1, 2, 5, "alice", "/a");
    s.open(1, 20, 7, "/srv/users/bob/x")
        .read_fp(1, 20, 7, 900, 0x1)
        .close(1, 20, 7);
    s.respond_fp(1, 2, 5, 200, Some(0x2));
    assert!(s.found.is_empty());
    s.tick(600_000_000);
    let got = s.finish();
    assert_eq!(summary(&got), [(None, "/srv/users/bob/x".into(), vec![])]);
}

#[test]
fn same_document_read_twice_by_a_pool_goes_once_to_each_response() {
    // Two requests for the same document, read by the same pool thread before either response:
    // two accesses, each claimed by one response.
    let mut s = Scenario::new();
    s.accept(1, 2, 5).accept(1, 2, 6);
    s.get_as(1, 2, 5, "alice", "/a")
        .get_as(1, 2, 6, "bob", "/b");
    for fd in [7, 8] {
        s.open(1, 20, fd, "/srv/users/carol/x")
            .read_fp(1, 20, fd, 900, 0xc)
            .close(1, 20, fd);
    }
    s.respond_fp(1, 3, 6, 200, Some(0xc))
        .respond_fp(1, 3, 5, 403, Some(0xc));
    let got = s.finish();
    let mut who: Vec<(Option<String>, Option<u16>)> = got
        .iter()
        .map(|a| {
            let r = a.request.as_ref().unwrap();
            (r.identity.as_ref().map(|i| i.user.clone()), r.status)
        })
        .collect();
    who.sort();
    assert_eq!(who, [(u("alice"), Some(403)), (u("bob"), Some(200))]);
}

fn sessions() -> Scenario {
    Scenario::with_identity(IdentityConfig {
        sources: vec![IdentitySource::Session, IdentitySource::TrustedHeader],
        session: Some(identity::SessionConfig {
            cookie: "sid".into(),
            login_path: "/login".into(),
            user_field: "user".into(),
            logout_path: Some("/logout".into()),
            idle_timeout_seconds: 60,
            max_sessions: 100,
            store: None,
        }),
        ..IdentityConfig::default()
    })
}

impl Scenario {
    /// POST /login for `user` (form body in the same read), answered `status` with a session
    /// cookie `sid` (as hashed by the redactor).
    fn login(
        &mut self,
        pid: u32,
        tid: u32,
        fd: i32,
        user: &str,
        status: u16,
        sid: &str,
    ) -> &mut Self {
        let body = format!("user={user}&password=********");
        self.request(
            pid,
            tid,
            fd,
            &format!(
                "POST /login HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        self.set_cookie(
            pid,
            tid,
            fd,
            status,
            &format!("sid={sid}; Path=/; HttpOnly"),
        )
    }

    fn set_cookie(&mut self, pid: u32, tid: u32, fd: i32, status: u16, cookie: &str) -> &mut Self {
        let data =
            format!("HTTP/1.1 {status} X\r\nSet-Cookie: {cookie}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes();
        self.ev(
            pid,
            tid,
            EventKind::SockWrite {
                fd,
                bytes: data.len() as u64,
                data: Payload(data),
                body_fp: None,
                at: None,
            },
        )
    }

    fn get_with_session(
        &mut self,
        pid: u32,
        tid: u32,
        fd: i32,
        sid: &str,
        target: &str,
    ) -> &mut Self {
        self.request(
            pid,
            tid,
            fd,
            &format!("GET {target} HTTP/1.1\r\nCookie: theme=x; sid={sid}\r\n\r\n"),
        )
    }

    fn read_doc(&mut self, pid: u32, tid: u32, path: &str) -> &mut Self {
        self.open(pid, tid, 40, path)
            .read(pid, tid, 40, 10)
            .close(pid, tid, 40)
    }
}

#[test]
fn sessions_learned_in_one_worker_serve_another() {
    let mut s = sessions();
    // Worker 1 logs alice and bob in; worker 2 serves their reads.
    s.accept(1, 1, 5).login(1, 1, 5, "alice", 302, "aaaa");
    s.accept(1, 1, 6).login(1, 1, 6, "bob", 200, "bbbb");
    // A failed login binds nothing, even with a cookie.
    s.accept(1, 1, 7).login(1, 1, 7, "mallory", 401, "mmmm");
    s.accept(2, 2, 5)
        .get_with_session(2, 2, 5, "aaaa", "/d/bob")
        .read_doc(2, 2, "/srv/users/bob/x")
        .respond(2, 2, 5, 200);
    s.get_with_session(2, 2, 5, "bbbb", "/d/bob")
        .read_doc(2, 2, "/srv/users/bob/x")
        .respond(2, 2, 5, 200);
    s.get_with_session(2, 2, 5, "mmmm", "/d/bob")
        .read_doc(2, 2, "/srv/users/bob/x")
        .respond(2, 2, 5, 200);
    let got = s.finish();
    let who: Vec<(
        Option<String>,
        Option<IdentitySource>,
        Option<IdentityProblem>,
    )> = got
        .iter()
        .map(|a| {
            let r = a.request.as_ref().unwrap();
            (
                r.identity.as_ref().map(|i| i.user.clone()),
                r.identity.as_ref().map(|i| i.source),
                r.identity_problem,
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            (u("alice"), Some(IdentitySource::Session), None),
            (u("bob"), Some(IdentitySource::Session), None),
            (None, None, Some(IdentityProblem::UnknownSession)),
        ]
    );
}

#[test]
fn logout_expiry_and_cleared_cookies_unbind_sessions() {
    let mut s = sessions();
    s.accept(1, 1, 5).login(1, 1, 5, "alice", 302, "aaaa");
    // Logout is still made as alice; afterwards the cookie names nobody.
    s.get_with_session(1, 1, 5, "aaaa", "/logout")
        .read_doc(1, 1, "/srv/users/alice/x")
        .respond(1, 1, 5, 200);
    s.get_with_session(1, 1, 5, "aaaa", "/d")
        .read_doc(1, 1, "/srv/users/alice/x")
        .respond(1, 1, 5, 200);
    // A response clearing the cookie ends the session it was sent for.
    s.login(1, 1, 5, "bob", 302, "bbbb");
    s.get_with_session(1, 1, 5, "bbbb", "/d")
        .read_doc(1, 1, "/srv/users/bob/x")
        .set_cookie(1, 1, 5, 200, "sid=; Max-Age=0");
    s.get_with_session(1, 1, 5, "bbbb", "/d")
        .read_doc(1, 1, "/srv/users/bob/x")
        .respond(1, 1, 5, 200);
    // Idle past the timeout (60 s).
    s.login(1, 1, 5, "carol", 302, "cccc");
    s.tick(61_000_000_000);
    s.get_with_session(1, 1, 5, "cccc", "/d")
        .read_doc(1, 1, "/srv/users/carol/x")
        .respond(1, 1, 5, 200);
    let got = s.finish();
    let users: Vec<Option<String>> = got
        .iter()
        .map(|a| {
            a.request
                .as_ref()
                .unwrap()
                .identity
                .as_ref()
                .map(|i| i.user.clone())
        })
        .collect();
    assert_eq!(users, [u("alice"), None, u("bob"), None, None]);
}

#[test]
fn renewed_session_ids_follow_their_user() {
    let mut s = sessions();
    s.accept(1, 1, 5).login(1, 1, 5, "alice", 302, "aaaa");
    // The portal rotates the id on the next request.
    s.get_with_session(1, 1, 5, "aaaa", "/home")
        .set_cookie(1, 1, 5, 200, "sid=a2a2; Path=/");
    s.get_with_session(1, 1, 5, "a2a2", "/d")
        .read_doc(1, 1, "/srv/users/bob/x")
        .respond(1, 1, 5, 200);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Thread]
        )]
    );
}

#[test]
fn a_connection_threads_unscoped_read_is_never_claimed_by_another_connections_response() {
    // Thread 2 serves a connection whose head Vigie never saw whole (it started mid-request):
    // its read has no scope. Thread 3 answers alice with the same document at the same time.
    let mut s = Scenario::new();
    s.accept(1, 1, 5).accept(1, 1, 6);
    s.request(1, 2, 5, "X-Remote-User: carol\r\n\r\n");
    s.open(1, 2, 7, "/srv/users/alice/n")
        .read_fp(1, 2, 7, 900, 0xa1)
        .close(1, 2, 7);
    s.get_as(1, 3, 6, "bob", "/docs/alice/n")
        .open(1, 3, 8, "/srv/users/alice/n")
        .read_fp(1, 3, 8, 900, 0xa1)
        .close(1, 3, 8)
        .respond_fp(1, 3, 6, 200, Some(0xa1));
    let got = s.finish();
    let mut who: Vec<(Option<String>, u32)> = got
        .iter()
        .map(|a| {
            (
                a.request
                    .as_ref()
                    .and_then(|r| r.identity.as_ref())
                    .map(|i| i.user.clone()),
                a.tid,
            )
        })
        .collect();
    who.sort();
    assert_eq!(who, [(None, 2), (u("bob"), 3)]);
}

/// An event loop (nginx) serving an HTTP/1.1 request, then reads of an HTTP/2 connection Vigie
/// cannot parse, then another HTTP/1.1 user: documents read after the unreadable bytes are never
/// given the HTTP/1.1 users (thread scope is no evidence on that thread any more), while a
/// fingerprint still names the request whose response carried the document.
#[test]
fn reads_after_an_unreadable_connection_on_the_thread_are_never_presumed() {
    let mut s = Scenario::new();
    s.accept(1, 1, 5)
        .get_as(1, 1, 5, "alice", "/docs/alice/a.txt")
        .open(1, 1, 7, "/srv/users/alice/a.txt")
        .read(1, 1, 7, 10)
        .close(1, 1, 7)
        .respond(1, 1, 5, 200);
    // An HTTP/2 connection on the same thread: its request is out of sight.
    s.accept(1, 1, 6).ev(
        1,
        1,
        EventKind::Unreadable {
            fd: 6,
            bytes: 120,
            why: crate::events::Unreadable::Http2,
        },
    );
    s.open(1, 1, 8, "/srv/users/carol/c.txt")
        .read(1, 1, 8, 10)
        .close(1, 1, 8);
    // Bob's request on a third connection, then a read the HTTP/2 stream may have made.
    s.accept(1, 1, 9)
        .get_as(1, 1, 9, "bob", "/docs/bob/b.txt")
        .open(1, 1, 10, "/srv/users/dave/d.txt")
        .read(1, 1, 10, 10)
        .close(1, 1, 10)
        // Bob's own document, proved by the fingerprint in his response.
        .open(1, 1, 11, "/srv/users/bob/b.txt")
        .read_fp(1, 1, 11, 10, 0xb0b)
        .close(1, 1, 11)
        .respond_fp(1, 1, 9, 200, Some(0xb0b));
    let got = s.finish();
    let mut got = summary(&got);
    got.sort();
    assert_eq!(
        got,
        [
            (None, "/srv/users/carol/c.txt".into(), vec![]),
            (None, "/srv/users/dave/d.txt".into(), vec![]),
            (
                u("alice"),
                "/srv/users/alice/a.txt".into(),
                vec![Evidence::Thread]
            ),
            (
                u("bob"),
                "/srv/users/bob/b.txt".into(),
                vec![Evidence::Flow, Evidence::Fingerprint]
            ),
        ]
    );
}

#[test]
fn requests_carry_the_peer_of_their_connection_and_the_client_behind_a_trusted_proxy() {
    let mut s = Scenario::new();
    s.c.cfg.proxies = crate::client::TrustedProxies::parse(&crate::client::ClientConfig {
        trusted_proxies: vec!["10.0.0.1".into()],
    })
    .unwrap();
    let peer = |ip: &str, port| crate::client::Endpoint::Ipv4 {
        ip: ip.parse().unwrap(),
        port,
    };
    // A direct client, then the proxy's kept connection serving two clients in turn: each
    // request is named by its own header, never by the connection's previous one.
    s.ev(
        1,
        1,
        EventKind::SockAccept {
            fd: 5,
            peer: Some(peer("192.0.2.1", 4000)),
        },
    );
    s.ev(
        1,
        1,
        EventKind::SockAccept {
            fd: 6,
            peer: Some(peer("10.0.0.1", 5000)),
        },
    );
    s.request(
        1,
        2,
        5,
        "GET /a HTTP/1.1\r\nX-Remote-User: alice\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n",
    )
    .open(1, 2, 7, "/srv/users/bob/a")
    .read(1, 2, 7, 10)
    .close(1, 2, 7)
    .respond(1, 2, 5, 200);
    for (user, client) in [("bob", "198.51.100.2"), ("carol", "198.51.100.3")] {
        s.request(
            1,
            3,
            6,
            &format!(
                "GET /b HTTP/1.1\r\nX-Remote-User: {user}\r\nX-Forwarded-For: {client}\r\n\r\n"
            ),
        )
        .open(1, 3, 8, "/srv/users/alice/b")
        .read(1, 3, 8, 10)
        .close(1, 3, 8)
        .respond(1, 3, 6, 200);
    }
    let got = s.finish();
    let clients: Vec<(String, String, crate::client::ClientSource, bool)> = got
        .iter()
        .map(|a| {
            let r = a.request.as_ref().unwrap();
            let c = r.client.as_ref().unwrap();
            (
                r.identity.as_ref().unwrap().user.clone(),
                c.ip.unwrap().to_string(),
                c.source,
                c.forwarded_ignored,
            )
        })
        .collect();
    use crate::client::ClientSource::{Peer, XForwardedFor};
    assert_eq!(
        clients,
        [
            ("alice".into(), "192.0.2.1".into(), Peer, true),
            ("bob".into(), "198.51.100.2".into(), XForwardedFor, false),
            ("carol".into(), "198.51.100.3".into(), XForwardedFor, false),
        ]
    );
    assert_eq!(
        got[0].request.as_ref().unwrap().peer,
        Some(peer("192.0.2.1", 4000))
    );
}

#[test]
fn a_runtime_found_at_exec_ends_thread_scope_for_its_process_only() {
    // A Go program: the thread that read alice's head reads bob's document, for a goroutine of
    // another request for all Vigie knows. Thread scope would name alice.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Go,
        },
    );
    s.get_as(1, 2, 5, "alice", "/x");
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read(1, 2, 7, 5)
        .close(1, 2, 7);
    s.respond(1, 2, 5, 200);
    // The same syscalls in another process (no runtime found) keep thread scope.
    s.get_as(2, 2, 5, "carol", "/x");
    s.open(2, 2, 7, "/srv/users/bob/x")
        .read(2, 2, 7, 5)
        .close(2, 2, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (None, "/srv/users/bob/x".into(), vec![]),
            (
                u("carol"),
                "/srv/users/bob/x".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
    assert_eq!(
        s.c.distrust(1),
        Some(Distrust::Runtime(crate::events::Runtime::Go))
    );
    // A new program starts trusted again; a forked child inherits its parent's state.
    s.ev(1, 1, EventKind::ProcessFork { child_pid: 3 });
    assert!(s.c.distrust(3).is_some());
    s.ev(1, 1, EventKind::ProcessExec);
    assert_eq!(s.c.distrust(1), None);
}

#[test]
fn losing_trust_takes_back_what_only_thread_scope_attributed() {
    // Thread 2 reads alice's head and a document (thread scope says alice); then the same
    // thread reads bob's head before alice's response: an event loop. The open read goes back
    // to waiting for content, and its fingerprint in bob's response names bob.
    let mut s = Scenario::new();
    s.accept(1, 2, 5).accept(1, 2, 6);
    s.get_as(1, 2, 5, "alice", "/a");
    s.open(1, 2, 7, "/srv/users/carol/a")
        .read_fp(1, 2, 7, 100, 0xc);
    s.get_as(1, 2, 6, "bob", "/b");
    s.close(1, 2, 7);
    s.respond_fp(1, 2, 5, 200, None);
    s.respond_fp(1, 2, 6, 200, Some(0xc));
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("bob"),
            "/srv/users/carol/a".into(),
            vec![Evidence::Fingerprint]
        )]
    );
}

#[test]
fn chunks_read_by_other_pool_threads_join_the_first_chunks_access() {
    // Node.js streams: the event loop (thread 1) reads heads; pool threads 10, 11, 12 read one
    // open document in chunks; only the first chunk's fingerprint opens the body.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Node,
        },
    );
    s.accept(1, 1, 5);
    s.get_as(1, 1, 5, "alice", "/docs/bob/x");
    s.open(1, 10, 7, "/srv/users/bob/x")
        .read_fp(1, 10, 7, 4096, 0xa1)
        .read_fp(1, 11, 7, 4096, 0xa2);
    s.respond_fp(1, 1, 5, 200, Some(0xa1));
    s.read_fp(1, 12, 7, 100, 0xa3).close(1, 10, 7);
    s.respond_fp(1, 1, 5, 200, None);
    s.get_as(1, 1, 5, "alice", "/docs/alice/y");
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Fingerprint]
        )]
    );
    assert_eq!(got[0].bytes, 4096 * 2 + 100);
}

#[test]
fn a_fingerprint_shared_by_two_documents_names_neither() {
    // Two documents with the same first bytes (two PDFs with one header), read at once by
    // pool threads for two requests: a body with that fingerprint could be either.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Node,
        },
    );
    s.accept(1, 1, 5).accept(1, 1, 6);
    s.get_as(1, 1, 5, "alice", "/docs/alice/a");
    s.get_as(1, 1, 6, "bob", "/docs/alice/b");
    s.open(1, 10, 7, "/srv/users/alice/a")
        .read_fp(1, 10, 7, 100, 0xf);
    s.open(1, 11, 8, "/srv/users/alice/b")
        .read_fp(1, 11, 8, 100, 0xf);
    s.respond_fp(1, 1, 5, 200, Some(0xf));
    s.respond_fp(1, 1, 6, 200, Some(0xf));
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (None, "/srv/users/alice/a".into(), vec![]),
            (None, "/srv/users/alice/b".into(), vec![]),
        ]
    );
    assert_eq!(s.c.stats().ambiguous_fingerprints, 2);

    // The same document read twice for two requests is no ambiguity: each response takes one.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Node,
        },
    );
    s.accept(1, 1, 5).accept(1, 1, 6);
    s.get_as(1, 1, 5, "alice", "/docs/alice/a");
    s.get_as(1, 1, 6, "bob", "/docs/alice/a");
    s.open(1, 10, 7, "/srv/users/alice/a")
        .read_fp(1, 10, 7, 100, 0xf);
    s.open(1, 11, 8, "/srv/users/alice/a")
        .read_fp(1, 11, 8, 100, 0xf);
    s.respond_fp(1, 1, 6, 200, Some(0xf));
    s.respond_fp(1, 1, 5, 200, Some(0xf));
    let got = s.finish();
    let mut users: Vec<_> = summary(&got).into_iter().map(|r| r.0).collect();
    users.sort();
    assert_eq!(users, [u("alice"), u("bob")]);
}

#[test]
fn a_mapping_outliving_its_fd_is_no_sign_of_mn_scheduling() {
    // Thread per connection: thread 2 maps a document on fd 7 and closes it (the mapping lives
    // on); thread 3 opens another document on fd 7, reads and closes it. Two threads closed
    // "fd 7", each its own file: thread scope stays.
    let mut s = Scenario::new();
    s.get_as(1, 2, 5, "alice", "/a");
    s.open(1, 2, 7, "/srv/users/alice/a");
    s.ev(1, 2, EventKind::FileMap { fd: 7, bytes: 100 });
    s.close(1, 2, 7);
    s.get_as(1, 3, 6, "bob", "/b");
    s.open(1, 3, 7, "/srv/users/bob/b")
        .read(1, 3, 7, 5)
        .close(1, 3, 7);
    assert_eq!(s.c.distrust(1), None);
    s.respond(1, 2, 5, 200).respond(1, 3, 6, 200);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (u("bob"), "/srv/users/bob/b".into(), vec![Evidence::Thread]),
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Thread]
            ),
        ]
    );
}

#[test]
fn documents_sharing_their_first_bytes_are_told_apart_by_their_length() {
    // Two PDFs with one header (same first 64 bytes), of different sizes, read at once by pool
    // threads: each response's Content-Length names its document.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Node,
        },
    );
    s.accept(1, 1, 5).accept(1, 1, 6);
    s.get_as(1, 1, 5, "alice", "/docs/alice/a");
    s.get_as(1, 1, 6, "bob", "/docs/alice/b");
    for (tid, fd, doc, size) in [(10, 7, "a", 3), (11, 8, "b", 4)] {
        s.open(1, tid, fd, &format!("/srv/users/alice/{doc}"));
        s.ev(
            1,
            tid,
            EventKind::FileRead {
                fd,
                bytes: size,
                fp: Some(0xf),
                size: Some(size),
            },
        );
    }
    // `respond_fp` writes `Content-Length: 3`: alice's document only.
    s.respond_fp(1, 1, 5, 200, Some(0xf));
    s.respond_fp(1, 1, 6, 200, None);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Fingerprint]
            ),
            (None, "/srv/users/alice/b".into(), vec![]),
        ]
    );
    assert_eq!(s.c.stats().ambiguous_fingerprints, 0);
}

/// Go's net/http: each connection's goroutine reads its request head, calls a session service
/// (and blocks), and resumes on whichever thread is free. Thread 3 read bob's head last, but
/// the read it makes next is for alice's request, whose goroutine now runs there.
#[test]
fn a_go_request_follows_its_goroutine_across_threads() {
    let mut s = Scenario::new();
    s.on_g(Some(10))
        .accept(1, 2, 5)
        .get_as(1, 2, 5, "alice", "/docs/bob/x.pdf");
    s.on_g(Some(11))
        .accept(1, 3, 6)
        .get_as(1, 3, 6, "bob", "/docs/carol/y.pdf");
    // Goroutine 10 moved to thread 3, goroutine 11 to thread 2.
    s.on_g(Some(10))
        .open(1, 3, 7, "/srv/users/bob/x.pdf")
        .read(1, 3, 7, 100);
    s.on_g(Some(11))
        .open(1, 2, 8, "/srv/users/carol/y.pdf")
        .read(1, 2, 8, 100)
        .close(1, 2, 8)
        .respond(1, 4, 6, 200);
    s.on_g(Some(10)).close(1, 4, 7).respond(1, 2, 5, 200);
    let found = s.finish();
    assert_eq!(
        summary(&found),
        vec![
            (
                u("bob"),
                "/srv/users/carol/y.pdf".into(),
                vec![Evidence::Goroutine]
            ),
            (
                u("alice"),
                "/srv/users/bob/x.pdf".into(),
                vec![Evidence::Goroutine]
            ),
        ]
    );
    // The request names the thread that read its head.
    assert_eq!(found[1].request.as_ref().map(|r| r.tid), Some(2));
}

/// In a Go target, a thread on the runtime's own stack (goroutine 0) or on an unknown goroutine
/// scopes nothing: its reads are unattributed even though the thread read a head, and its read
/// does not flow into the next write of that thread (another goroutine's).
#[test]
fn a_go_thread_on_no_known_goroutine_scopes_nothing() {
    let mut s = Scenario::new();
    s.on_g(Some(10))
        .accept(1, 2, 5)
        .get_as(1, 2, 5, "alice", "/docs/bob/x.pdf");
    s.on_g(Some(0))
        .open(1, 2, 7, "/srv/users/bob/x.pdf")
        .read(1, 2, 7, 100)
        .close(1, 2, 7);
    s.on_g(None)
        .open(1, 2, 8, "/srv/users/carol/y.pdf")
        .read(1, 2, 8, 100);
    s.on_g(Some(10)).respond(1, 2, 5, 200).close(1, 2, 8);
    let found = s.finish();
    assert_eq!(
        summary(&found),
        vec![
            (None, "/srv/users/bob/x.pdf".into(), vec![]),
            (None, "/srv/users/carol/y.pdf".into(), vec![]),
        ]
    );
    assert!(found.iter().all(|a| a.request.is_none()));
}

/// A goroutine ends with its connection, and no event says so: the connection's close ends its
/// scope, so nothing is kept per connection once it is gone. The goroutine's next head, after
/// its response, is a new request as usual (without one, it would wait behind the first as a
/// pipelined request).
#[test]
fn a_closed_connection_ends_its_goroutine_scope() {
    let mut s = Scenario::new();
    s.on_g(Some(10))
        .accept(1, 2, 5)
        .get_as(1, 2, 5, "alice", "/docs/alice/a.pdf")
        .respond(1, 2, 5, 200)
        .get_as(1, 3, 5, "alice", "/docs/alice/b.pdf");
    assert_eq!(s.c.tracked().threads, 1);
    assert_eq!(s.c.tracked().requests, 1);
    s.sock_close(1, 2, 5);
    assert_eq!(s.c.tracked().threads, 0);
    assert_eq!(s.c.tracked().requests, 0);
    // A later read by that goroutine (it cannot happen in net/http) has no request.
    s.open(1, 2, 7, "/srv/users/alice/a.pdf")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let found = s.finish();
    assert_eq!(
        summary(&found),
        vec![(None, "/srv/users/alice/a.pdf".into(), vec![])]
    );
}

mod http2;
mod pipelining;

/// Reads of a 2 MiB document in 8 KiB chunks.
const CHUNKS: u64 = 256;
const CHUNK: u64 = 8192;

/// The events the probes send for `s`'s stream, counting reads and body writes (see
/// [`counted_as_the_kernel_does`]); every scenario's `Drop` checks their findings are the same.
fn sent(s: &Scenario) -> Vec<Event> {
    counted_as_the_kernel_does(&s.log, &s.c.cfg).0
}

fn reads_of(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::FileRead { .. } | EventKind::FileReadMore { .. }
            )
        })
        .count()
}

#[test]
fn threads_reading_documents_in_chunks_at_once_send_a_read_and_a_count_each() {
    // Two thread-per-request workers serve alice and bob at once, reading 2 MiB each in 8 KiB
    // chunks, their reads interleaved; each thread's reads form one run.
    let mut s = Scenario::new();
    s.accept(1, 1, 5).accept(1, 1, 6);
    s.get_as(1, 2, 5, "alice", "/docs/bob/x");
    s.get_as(1, 3, 6, "bob", "/docs/bob/y");
    s.open(1, 2, 7, "/srv/users/bob/x")
        .open(1, 3, 8, "/srv/users/bob/y");
    for i in 0..CHUNKS {
        s.read_fp(1, 2, 7, CHUNK, 0x10 + i).read(1, 3, 8, CHUNK);
    }
    s.close(1, 2, 7).respond(1, 2, 5, 200);
    s.close(1, 3, 8).respond(1, 3, 6, 200);
    // 255 counted reads per run: in three parts.
    assert_eq!(reads_of(&sent(&s)), 2 * 4, "{:#?}", sent(&s));
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/bob/x".into(),
                vec![Evidence::Thread]
            ),
            (u("bob"), "/srv/users/bob/y".into(), vec![Evidence::Thread]),
        ]
    );
    assert!(got.iter().all(|a| a.bytes == CHUNKS * CHUNK));
}

#[test]
fn a_pool_thread_reading_in_chunks_is_attributed_by_the_first_chunks_fingerprint() {
    // An M:N runtime: a pool thread reads the document, the loop thread writes it; the count
    // carries no fingerprint, the first read does.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Node,
        },
    );
    s.accept(1, 1, 5).get_as(1, 1, 5, "alice", "/docs/bob/x");
    s.open(1, 10, 7, "/srv/users/bob/x");
    for i in 0..CHUNKS {
        s.read_fp(1, 10, 7, CHUNK, 0xb0 + i);
    }
    // Closed by another pool thread: the run's count goes first.
    s.close(1, 11, 7);
    s.respond_fp(1, 1, 5, 200, Some(0xb0));
    assert_eq!(reads_of(&sent(&s)), 4);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Fingerprint]
        )]
    );
    assert_eq!(got[0].bytes, CHUNKS * CHUNK);
}

#[test]
fn a_run_of_reads_ends_at_each_write_and_at_a_loss() {
    // A server that writes each chunk as it reads it sends every read (its writes end the
    // runs), as before; reads with no request in scope go by flow to the write that follows.
    let mut s = Scenario::new();
    s.accept(1, 1, 5).get_as(1, 2, 5, "alice", "/docs/bob/x");
    s.respond(1, 2, 5, 200);
    s.accept(1, 1, 6);
    s.open(1, 3, 7, "/srv/users/bob/y");
    for _ in 0..4 {
        s.read(1, 3, 7, CHUNK)
            .read(1, 3, 7, CHUNK)
            .body(1, 3, 6, 2 * CHUNK);
    }
    assert_eq!(reads_of(&sent(&s)), 8);
    // A loss between two reads of a run: the read after it is sent in full.
    s.open(1, 2, 8, "/srv/users/bob/x").read(1, 2, 8, CHUNK);
    s.ev(
        0,
        0,
        EventKind::Lost {
            reason: "ringbuf_full".into(),
            count: 1,
        },
    );
    s.read(1, 2, 8, CHUNK).read(1, 2, 8, CHUNK).close(1, 2, 8);
    assert_eq!(reads_of(&sent(&s)), 8 + 3);
    let got = s.finish();
    let bytes: Vec<u64> = got.iter().map(|a| a.bytes).collect();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/bob/x".into(),
                vec![Evidence::Thread]
            ),
            (None, "/srv/users/bob/x".into(), vec![]),
            (None, "/srv/users/bob/y".into(), vec![]),
        ]
    );
    assert_eq!(bytes, [CHUNK, 2 * CHUNK, 8 * CHUNK]);
    assert_eq!(got[1].unattributed, Some(Desync::EventsLost));
}

impl Scenario {
    /// A write of `bytes` bytes on connection `fd` whose captured data (as the capture stage
    /// passes it on: a head, or nothing of a body) is `data`.
    fn write(&mut self, pid: u32, tid: u32, fd: i32, data: &[u8], bytes: u64) -> &mut Self {
        self.ev(
            pid,
            tid,
            EventKind::SockWrite {
                fd,
                bytes,
                data: Payload(data.to_vec()),
                body_fp: None,
                at: None,
            },
        )
    }
}

/// A response head with a body of `length` bytes.
fn head(status: u16, length: u64) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Length: {length}\r\n\r\n").into_bytes()
}

/// Writes counted by the model of the probes for `s`, and the events it sends.
fn counted_writes(s: &Scenario) -> (u64, usize) {
    let (sent, counted) = counted_as_the_kernel_does(&s.log, &s.c.cfg);
    (counted, sent.len())
}

#[test]
fn a_body_written_chunk_by_chunk_as_it_is_read_is_counted_with_the_same_findings() {
    // gunicorn's loop: read 8 KiB of the document, write them, again; the head goes first.
    // Every write past the body's first one is counted, and so is every read past the first
    // one after it: a few events per request, whatever the document's size, and the findings
    // of the stream with every call sent (`Drop` compares them).
    let mut s = Scenario::new();
    s.accept(1, 1, 5).get_as(1, 2, 5, "alice", "/docs/bob/x");
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read_fp(1, 2, 7, CHUNK, 0xab);
    s.write(
        1,
        2,
        5,
        &head(200, CHUNKS * CHUNK),
        head(200, 0).len() as u64 + 4,
    );
    s.write(1, 2, 5, &[], CHUNK);
    for _ in 1..CHUNKS {
        s.read(1, 2, 7, CHUNK).write(1, 2, 5, &[], CHUNK);
    }
    s.close(1, 2, 7);
    let (counted, sent) = counted_writes(&s);
    // The first body write is sent (its fingerprint), the others counted.
    assert_eq!(counted, CHUNKS - 1);
    assert!(
        sent <= 16,
        "{sent} events sent: {:#?}",
        super::tests::sent(&s)
    );
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Thread]
        )]
    );
    assert_eq!(got[0].bytes, CHUNKS * CHUNK);
    assert_eq!(got[0].request.as_ref().unwrap().status, Some(200));
}

#[test]
fn keep_alive_responses_back_to_back_with_the_next_head_in_the_write_that_ends_a_body() {
    // Two pipelined requests of two users on one connection: the last write of alice's body
    // also holds the head of bob's response, so it crosses the body's end and is sent; bob's
    // body is counted in turn. Then a third request, after both, on the same connection.
    let len = 4 * CHUNK;
    let mut s = Scenario::new();
    s.accept(1, 1, 5)
        .get_as(1, 2, 5, "alice", "/docs/alice/a")
        .get_as(1, 2, 5, "bob", "/docs/alice/b");
    s.open(1, 2, 7, "/srv/users/alice/a")
        .read_fp(1, 2, 7, CHUNK, 0xa1);
    s.write(1, 2, 5, &head(200, len), head(200, len).len() as u64);
    s.write(1, 2, 5, &[], CHUNK);
    for _ in 0..2 {
        s.read(1, 2, 7, CHUNK).write(1, 2, 5, &[], CHUNK);
    }
    s.read(1, 2, 7, CHUNK).close(1, 2, 7);
    // The write that ends alice's body and starts bob's response (the server buffers its
    // output), then bob's document.
    let second = head(200, len);
    let mut crossing = vec![b'x'; 16];
    crossing.extend_from_slice(&second);
    s.write(1, 2, 5, &crossing, CHUNK + second.len() as u64);
    s.open(1, 2, 8, "/srv/users/alice/b")
        .read_fp(1, 2, 8, CHUNK, 0xb1);
    s.write(1, 2, 5, &[], CHUNK);
    for _ in 0..2 {
        s.read(1, 2, 8, CHUNK).write(1, 2, 5, &[], CHUNK);
    }
    s.read(1, 2, 8, CHUNK).close(1, 2, 8);
    s.get_as(1, 2, 5, "carol", "/docs/carol/c");
    s.open(1, 2, 9, "/srv/users/carol/c")
        .read_fp(1, 2, 9, CHUNK, 0xc1);
    s.write(1, 2, 5, &head(200, len), head(200, len).len() as u64);
    for _ in 0..4 {
        s.write(1, 2, 5, &[], CHUNK).read(1, 2, 9, CHUNK);
    }
    s.close(1, 2, 9);
    let (counted, _) = counted_writes(&s);
    // Alice's body: 2 of its 4 writes (the first is sent, the last crosses); bob's: none (his
    // head came in a write the correlator did not see start a response, so no span); carol's:
    // 3 of 4.
    assert!(counted >= 5, "{counted} writes counted");
    let got = s.finish();
    let statuses: Vec<Option<u16>> = got
        .iter()
        .map(|a| a.request.as_ref().and_then(|r| r.status))
        .collect();
    assert_eq!(
        summary(&got),
        [
            (
                u("alice"),
                "/srv/users/alice/a".into(),
                vec![Evidence::Thread]
            ),
            (
                u("bob"),
                "/srv/users/alice/b".into(),
                vec![Evidence::Thread]
            ),
            (
                u("carol"),
                "/srv/users/carol/c".into(),
                vec![Evidence::Thread]
            ),
        ],
        "{got:#?}"
    );
    assert_eq!(statuses[0], Some(200));
    assert_eq!(statuses[2], Some(200));
}

#[test]
fn a_span_of_a_former_connection_counts_nothing_on_the_next_one() {
    // Alice's download is cut short (the client went away): the span given for her body
    // reaches past what was written. The next connection on the same fd writes its response
    // within those offsets: each of its writes is sent.
    let mut s = Scenario::new();
    s.accept(1, 1, 5).get_as(1, 2, 5, "alice", "/docs/alice/a");
    s.open(1, 2, 7, "/srv/users/alice/a")
        .read_fp(1, 2, 7, CHUNK, 0xa1);
    s.write(
        1,
        2,
        5,
        &head(200, 100 * CHUNK),
        head(200, 0).len() as u64 + 2,
    );
    s.write(1, 2, 5, &[], CHUNK).read(1, 2, 7, CHUNK);
    s.close(1, 2, 7).sock_close(1, 2, 5);
    let before = counted_writes(&s).0;
    s.accept(1, 1, 5).get_as(1, 2, 5, "bob", "/docs/bob/b");
    s.write(1, 2, 5, b"HTTP/1.1 404 X\r\n", 16);
    s.write(1, 2, 5, b"Content-Length: 0\r\n\r\n", 21);
    assert_eq!(counted_writes(&s).0, before);
    s.finish();
}

#[test]
fn the_first_body_write_is_sent_with_its_fingerprint_the_rest_counted() {
    // An M:N runtime: a pool thread reads the document, the loop thread writes the head, then
    // the body in chunks. Only the first body write's fingerprint names the document's
    // request: it is sent, the writes after it counted.
    let mut s = Scenario::new();
    s.ev(
        1,
        1,
        EventKind::RuntimeFound {
            runtime: crate::events::Runtime::Node,
        },
    );
    s.accept(1, 1, 5).get_as(1, 1, 5, "alice", "/docs/bob/x");
    s.open(1, 10, 7, "/srv/users/bob/x");
    for i in 0..8 {
        s.read_fp(1, 10, 7, CHUNK, 0xb0 + i);
    }
    s.close(1, 10, 7);
    s.write(
        1,
        1,
        5,
        &head(200, 8 * CHUNK),
        head(200, 8 * CHUNK).len() as u64,
    );
    s.ev(
        1,
        1,
        EventKind::SockWrite {
            fd: 5,
            bytes: CHUNK,
            data: Payload(Vec::new()),
            body_fp: Some(0xb0),
            at: None,
        },
    );
    for _ in 1..8 {
        s.write(1, 1, 5, &[], CHUNK);
    }
    assert_eq!(counted_writes(&s).0, 7);
    let got = s.finish();
    assert_eq!(
        summary(&got),
        [(
            u("alice"),
            "/srv/users/bob/x".into(),
            vec![Evidence::Fingerprint]
        )]
    );
}
