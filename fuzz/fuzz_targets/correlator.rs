//! The correlator as a state machine: arbitrary event sequences (small pid/tid/fd domains so that
//! events meet, request heads and paths drawn from realistic shapes or arbitrary bytes), then a
//! flush. Checks that nothing panics, that every access is to a normalized document under the
//! configured root, that access ids are unique, and that the same events give the same findings
//! (replay is byte-identical by construction only if the correlator is deterministic).
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use monitor_core::{
    correlate::{Correlator, CorrelatorConfig, Finding},
    events::{Event, EventKind, FoundFd, Payload},
    fastcgi,
    identity::{IdentityConfig, IdentitySource, SessionConfig},
    paths,
};

const ROOT: &str = "/srv/portal/users";

#[derive(Debug, Arbitrary)]
enum PathShape {
    /// `ROOT/<user>/<doc>`.
    Doc(u8, u8),
    /// Relative to a base directory.
    Relative(u8, bool),
    /// `..`, `//`, `.` games around the root.
    Tricky(u8),
    Raw(String),
}

const USERS: [&str; 3] = ["alice", "bob", "carol"];

impl PathShape {
    fn render(&self) -> (String, Option<String>) {
        match self {
            Self::Doc(u, d) => (
                format!("{ROOT}/{}/doc{}.pdf", USERS[*u as usize % 3], d % 4),
                None,
            ),
            Self::Relative(d, in_root) => (
                format!("doc{}.pdf", d % 4),
                Some(if *in_root {
                    format!("{ROOT}/bob")
                } else {
                    "/tmp".to_owned()
                }),
            ),
            Self::Tricky(t) => (
                match t % 6 {
                    0 => format!("{ROOT}/../users/alice/doc0.pdf"),
                    1 => format!("{ROOT}/alice/../../users2/x"),
                    2 => format!("/srv//portal/./users/bob/doc1.pdf"),
                    3 => format!("{ROOT}"),
                    4 => format!("{ROOT}2/alice/doc0.pdf"),
                    _ => format!("{ROOT}/alice/../../../../etc/passwd"),
                },
                None,
            ),
            Self::Raw(s) => (s.clone(), None),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum HeadShape {
    /// A valid GET with an identity of one kind.
    Get {
        doc: u8,
        user: u8,
        auth: u8,
        keep_alive: bool,
    },
    /// A POST with a body length, the body maybe in the same read.
    Post {
        len: u8,
        with_body: bool,
    },
    /// A head cut in two reads, this is the first or second half.
    Half {
        second: bool,
    },
    Response(u16),
    /// FastCGI from a front server: a request (records cut every `split` bytes of params) with
    /// `REMOTE_USER`, or the part of it starting at byte `from` (a read cut anywhere).
    FastCgi {
        id: u8,
        doc: u8,
        user: u8,
        split: u8,
        from: u8,
    },
    /// FastCGI from the application: STDOUT with a status, and END_REQUEST.
    FastCgiResponse {
        id: u8,
        code: u16,
    },
    Raw(Vec<u8>),
}

impl HeadShape {
    fn render(&self) -> Vec<u8> {
        match self {
            Self::Get {
                doc,
                user,
                auth,
                keep_alive,
            } => {
                let user = USERS[*user as usize % 3];
                let auth = match auth % 4 {
                    0 => format!("X-Remote-User: {user}\r\n"),
                    // alice:secret / bob:secret / carol:secret
                    1 => format!(
                        "Authorization: Basic {}\r\n",
                        ["YWxpY2U6c2VjcmV0", "Ym9iOnNlY3JldA==", "Y2Fyb2w6c2VjcmV0"]
                            [*doc as usize % 3]
                    ),
                    // {"alg":"none"}.{"sub":"bob"}.
                    2 => "Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ.\r\n"
                        .to_owned(),
                    _ => String::new(),
                };
                let conn = if *keep_alive { "keep-alive" } else { "close" };
                format!(
                    "GET /docs/{user}/doc{}.pdf HTTP/1.1\r\nHost: portal\r\n{auth}Connection: {conn}\r\n\r\n",
                    doc % 4
                )
                .into_bytes()
            }
            Self::Post { len, with_body } => {
                let mut v = format!(
                    "POST /upload HTTP/1.1\r\nX-Remote-User: carol\r\nContent-Length: {len}\r\n\r\n"
                )
                .into_bytes();
                if *with_body {
                    v.extend(std::iter::repeat_n(b'x', *len as usize));
                }
                v
            }
            Self::Half { second } => {
                let whole = b"GET /docs/bob/doc1.pdf HTTP/1.1\r\nX-Remote-User: alice\r\n\r\n";
                let (a, b) = whole.split_at(20);
                if *second { b.to_vec() } else { a.to_vec() }
            }
            Self::Response(code) => {
                format!("HTTP/1.1 {} X\r\nContent-Length: 10\r\n\r\n", code % 700).into_bytes()
            }
            Self::FastCgi {
                id,
                doc,
                user,
                split,
                from,
            } => {
                let uri = format!("/docs/{}/doc{}.pdf", USERS[*doc as usize % 3], doc % 4);
                let bytes = fastcgi::build::request(
                    u16::from(id % 3),
                    &[
                        ("REQUEST_METHOD", "GET"),
                        ("REQUEST_URI", &uri),
                        ("REMOTE_USER", USERS[*user as usize % 3]),
                    ],
                    usize::from(*split),
                );
                let from = usize::from(*from) % 4 * 8;
                bytes[from.min(bytes.len())..].to_vec()
            }
            Self::FastCgiResponse { id, code } => fastcgi::build::response(
                u16::from(id % 3),
                format!("Status: {} X\r\n\r\nbody", code % 700).as_bytes(),
            ),
            Self::Raw(bytes) => bytes.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Kind {
    ProcessExec,
    ProcessFork(u8),
    ProcessExit,
    FdFoundDocument(u8, PathShape),
    FdFoundSocket(u8),
    FileOpen {
        fd: u8,
        path: PathShape,
        truncated: bool,
        full: bool,
    },
    FileRead(u8, u32),
    FileMap(u8, u32),
    SendFile(u8, u8, u32),
    FileClose(u8),
    SockAccept(u8),
    SockRead(u8, u16, HeadShape),
    SockWrite(u8, u32, HeadShape),
    SockClose(u8),
    Lost(u8),
    ThreadExit,
    Tick,
    /// Byte counts near the top of `u64` (a hostile trace).
    HugeRead(u8, u64),
}

#[derive(Debug, Arbitrary)]
struct Ev {
    /// Time moves forward by this (most events), or jumps (a hostile trace).
    dt: u16,
    jump: Option<u64>,
    pid: u8,
    tid: u8,
    /// A Go target's goroutine (0: the runtime's own stack).
    goid: Option<u8>,
    kind: Kind,
}

#[derive(Debug, Arbitrary)]
struct Input {
    realtime: bool,
    idle_flush_ms: u8,
    max_head: u16,
    events: Vec<Ev>,
}

fn fd(f: u8) -> i32 {
    // A few fds, and the odd negative one (failed syscalls, AT_FDCWD).
    match f % 16 {
        15 => -100,
        14 => -1,
        n => i32::from(n),
    }
}

fn events(input: &Input) -> Vec<Event> {
    let mut ts: u64 = 1_000_000_000;
    input
        .events
        .iter()
        .map(|e| {
            ts = match e.jump {
                Some(j) => j,
                None => ts.saturating_add(u64::from(e.dt) * 1_000),
            };
            let pid = 100 + u32::from(e.pid % 3);
            let tid = pid * 10 + u32::from(e.tid % 4);
            let kind = match &e.kind {
                Kind::ProcessExec => EventKind::ProcessExec,
                Kind::ProcessFork(c) => EventKind::ProcessFork {
                    child_pid: 100 + u32::from(c % 4),
                },
                Kind::ProcessExit => EventKind::ProcessExit,
                Kind::FdFoundDocument(f, p) => EventKind::FdFound {
                    fd: fd(*f),
                    found: FoundFd::Document { path: p.render().0 },
                },
                Kind::FdFoundSocket(f) => EventKind::FdFound {
                    fd: fd(*f),
                    found: FoundFd::Socket,
                },
                Kind::FileOpen {
                    fd: f,
                    path,
                    truncated,
                    full,
                } => {
                    let (path, base) = path.render();
                    EventKind::FileOpen {
                        fd: fd(*f),
                        full_path: full.then(|| format!("{path}/full")),
                        path,
                        dirfd: -100,
                        truncated: *truncated,
                        base,
                        flags: 0,
                        exact: false,
                    }
                }
                // A handful of fingerprint values, so that matches and collisions happen.
                Kind::FileRead(f, n) => EventKind::FileRead {
                    fd: fd(*f),
                    bytes: u64::from(*n),
                    fp: (*n % 5 != 0).then_some(u64::from(*n % 4)),
                    // Sizes that match the fuzzed responses' lengths now and then.
                    size: (*n % 3 != 0).then_some(u64::from(*n % 7)),
                },
                Kind::FileMap(f, n) => EventKind::FileMap {
                    fd: fd(*f),
                    bytes: u64::from(*n),
                },
                Kind::HugeRead(f, n) => EventKind::FileRead {
                    fd: fd(*f),
                    bytes: *n,
                    fp: None,
                    size: None,
                },
                Kind::SendFile(o, i, n) => EventKind::SendFile {
                    out_fd: fd(*o),
                    in_fd: fd(*i),
                    bytes: u64::from(*n),
                },
                Kind::FileClose(f) => EventKind::FileClose { fd: fd(*f) },
                Kind::SockAccept(f) => EventKind::SockAccept {
                    fd: fd(*f),
                    peer: None,
                },
                Kind::SockRead(f, extra, h) => {
                    let data = h.render();
                    EventKind::SockRead {
                        fd: fd(*f),
                        bytes: data.len() as u64 + u64::from(*extra % 64),
                        data: Payload(data),
                    }
                }
                Kind::SockWrite(f, n, h) => EventKind::SockWrite {
                    fd: fd(*f),
                    bytes: u64::from(*n),
                    data: Payload(h.render()),
                    body_fp: (*n % 3 != 0).then_some(u64::from(*n % 4)),
                    at: None,
                },
                Kind::SockClose(f) => EventKind::SockClose { fd: fd(*f) },
                Kind::Lost(n) => EventKind::Lost {
                    reason: "ringbuf_full".into(),
                    count: u64::from(*n),
                },
                Kind::Tick => EventKind::Tick,
                Kind::ThreadExit => EventKind::ThreadExit,
            };
            Event {
                ts_ns: ts,
                pid,
                tid,
                comm: "portal".into(),
                goid: e.goid.map(u64::from),
                kind,
            }
        })
        .collect()
}

fn run(cfg: &CorrelatorConfig, events: &[Event]) -> Vec<Finding> {
    let mut correlator = Correlator::new(cfg.clone());
    let mut out = Vec::new();
    for ev in events {
        correlator.handle(ev, &mut out);
    }
    correlator.flush(&mut out);
    let _ = correlator.stats();
    out
}

fuzz_target!(|input: Input| {
    let mut cfg = CorrelatorConfig {
        roots: vec![ROOT.to_owned()],
        identity: IdentityConfig {
            sources: vec![
                IdentitySource::TrustedHeader,
                IdentitySource::Basic,
                IdentitySource::Jwt,
                IdentitySource::RemoteUser,
                IdentitySource::Session,
            ],
            session: Some(SessionConfig {
                cookie: "sid".to_owned(),
                login_path: "/login".to_owned(),
                user_field: "user".to_owned(),
                logout_path: Some("/logout".to_owned()),
                idle_timeout_seconds: 60,
                max_sessions: 8,
                store: None,
            }),
            ..IdentityConfig::default()
        },
        max_head: usize::from(input.max_head).max(16),
        idle_flush_ns: u64::from(input.idle_flush_ms) * 1_000_000,
        realtime_offset_ns: None,
        proxies: Default::default(),
    };
    if input.realtime {
        cfg = cfg.with_realtime_offset_ns(1_700_000_000_000_000_000);
    }
    let events = events(&input);
    let findings = run(&cfg, &events);

    let mut ids = HashSet::new();
    for finding in &findings {
        let Finding::Access(access) = finding else {
            continue;
        };
        assert!(
            ids.insert(access.id),
            "access id {} reported twice",
            access.id
        );
        assert!(
            paths::is_under(&access.document, ROOT),
            "access to {:?}, outside {ROOT}",
            access.document
        );
        assert_eq!(
            paths::normalize(&access.document).as_deref(),
            Some(access.document.as_str()),
            "document path not normalized"
        );
        assert!(
            access.evidence.windows(2).all(|w| w[0] < w[1]),
            "evidence not sorted and unique: {:?}",
            access.evidence
        );
        if access.request.is_none() {
            assert!(access.evidence.is_empty(), "evidence without a request");
        }
    }
    assert_eq!(
        run(&cfg, &events),
        findings,
        "the same events gave other findings"
    );
});
