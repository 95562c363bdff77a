//! FastCGI scenarios: what an application behind nginx reads and writes, syscall by syscall.
use crate::{
    correlate::{Access, Correlator, CorrelatorConfig, Evidence, Finding},
    events::{Event, EventKind, Payload},
    fastcgi::{HEADER_LEN, Header, build::*, kind},
    identity::{IdentityConfig, IdentitySource},
};

const ROOT: &str = "/srv/users";

struct App {
    c: Correlator,
    ts: u64,
    found: Vec<Finding>,
}

impl App {
    fn new(sources: Vec<IdentitySource>) -> Self {
        Self {
            c: Correlator::new(CorrelatorConfig {
                roots: vec![ROOT.into()],
                identity: IdentityConfig {
                    sources,
                    ..IdentityConfig::default()
                },
                max_head: 4096,
                idle_flush_ns: 500_000_000,
                realtime_offset_ns: None,
                proxies: Default::default(),
            }),
            ts: 1_000,
            found: Vec::new(),
        }
    }

    fn ev(&mut self, tid: u32, kind: EventKind) -> &mut Self {
        self.ts += 1_000;
        let ev = Event {
            ts_ns: self.ts,
            pid: 1,
            tid,
            comm: "app".into(),
            goid: None,
            kind,
        };
        self.c.handle(&ev, &mut self.found);
        self
    }

    /// `bytes` read from `fd` as php-fpm reads: each header, then each content and padding.
    fn read_records(&mut self, tid: u32, fd: i32, mut bytes: &[u8]) -> &mut Self {
        while bytes.len() >= HEADER_LEN {
            let h = Header::parse(bytes.first_chunk().unwrap()).unwrap();
            let n = usize::from(h.content_len) + usize::from(h.padding_len);
            self.sock_read(tid, fd, &bytes[..HEADER_LEN]);
            if n > 0 {
                self.sock_read(tid, fd, &bytes[HEADER_LEN..HEADER_LEN + n]);
            }
            bytes = &bytes[HEADER_LEN + n..];
        }
        self
    }

    fn sock_read(&mut self, tid: u32, fd: i32, data: &[u8]) -> &mut Self {
        self.ev(
            tid,
            EventKind::SockRead {
                fd,
                bytes: data.len() as u64,
                data: Payload(data.to_vec()),
            },
        )
    }

    /// A write of `total` bytes whose first `data` were captured.
    fn sock_write(&mut self, tid: u32, fd: i32, data: &[u8], total: u64) -> &mut Self {
        self.ev(
            tid,
            EventKind::SockWrite {
                fd,
                bytes: total,
                data: Payload(data.to_vec()),
                body_fp: None,
                at: None,
            },
        )
    }

    fn request(&mut self, tid: u32, fd: i32, id: u16, params: &[(&str, &str)]) -> &mut Self {
        let bytes = request(id, params, 4000);
        self.read_records(tid, fd, &bytes)
    }

    /// The response as a FastCGI application writes it: the CGI head in one record, the body
    /// in one record (header captured, content not), then the end.
    fn respond(&mut self, tid: u32, fd: i32, id: u16, head: &str, body_len: u16) -> &mut Self {
        let head = record(kind::STDOUT, id, head.as_bytes(), 0);
        self.sock_write(tid, fd, &head, head.len() as u64);
        let hdr = Header {
            kind: kind::STDOUT,
            request_id: id,
            content_len: body_len,
            padding_len: 0,
        }
        .to_bytes();
        self.sock_write(tid, fd, &hdr, HEADER_LEN as u64 + u64::from(body_len));
        let mut end = record(kind::STDOUT, id, &[], 0);
        end.extend(record(kind::END_REQUEST, id, &[0; 8], 0));
        self.sock_write(tid, fd, &end, end.len() as u64)
    }

    fn open(&mut self, tid: u32, fd: i32, path: &str) -> &mut Self {
        self.ev(
            tid,
            EventKind::FileOpen {
                fd,
                path: path.into(),
                dirfd: -100,
                truncated: false,
                base: None,
                full_path: None,
                flags: 0,
                exact: false,
            },
        )
    }

    fn read(&mut self, tid: u32, fd: i32, bytes: u64) -> &mut Self {
        self.ev(
            tid,
            EventKind::FileRead {
                fd,
                bytes,
                fp: None,
                size: None,
            },
        )
    }

    fn map(&mut self, tid: u32, fd: i32, bytes: u64) -> &mut Self {
        self.ev(tid, EventKind::FileMap { fd, bytes })
    }

    fn close(&mut self, tid: u32, fd: i32) -> &mut Self {
        self.ev(tid, EventKind::FileClose { fd })
    }

    fn accesses(&mut self) -> Vec<Access> {
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

/// (user, source, document, evidence, status) of each access.
type Row = (
    Option<String>,
    Option<IdentitySource>,
    String,
    Vec<Evidence>,
    Option<u16>,
);

fn rows(accesses: &[Access]) -> Vec<Row> {
    accesses
        .iter()
        .map(|a| {
            let r = a.request.as_ref();
            let id = r.and_then(|r| r.identity.as_ref());
            (
                id.map(|i| i.user.clone()),
                id.map(|i| i.source),
                a.document.clone(),
                a.evidence.clone(),
                r.and_then(|r| r.status),
            )
        })
        .collect()
}

fn row(
    user: Option<&str>,
    source: Option<IdentitySource>,
    doc: &str,
    evidence: &[Evidence],
    status: Option<u16>,
) -> Row {
    (
        user.map(Into::into),
        source,
        doc.into(),
        evidence.to_vec(),
        status,
    )
}

fn params<'a>(uri: &'a str, user: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", uri),
        ("REMOTE_USER", user),
        ("HTTP_HOST", "portal"),
    ]
}

#[test]
fn kept_connection_two_users_in_turn_with_remote_user() {
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    app.request(2, 5, 1, &params("/docs/bob/a.pdf", "alice"))
        .open(2, 7, "/srv/users/bob/a.pdf")
        .read(2, 7, 100)
        .close(2, 7)
        .respond(2, 5, 1, "Content-Type: application/pdf\r\n\r\n", 100);
    // Same connection, same request id, another user.
    app.request(2, 5, 1, &params("/docs/bob/a.pdf", "bob"))
        .open(2, 7, "/srv/users/bob/a.pdf")
        .read(2, 7, 100)
        .close(2, 7)
        .respond(2, 5, 1, "Status: 403 Forbidden\r\n\r\n", 9);
    // After END_REQUEST the thread is out of scope: a read is nobody's.
    app.open(2, 7, "/srv/users/carol/c.pdf")
        .read(2, 7, 1)
        .close(2, 7);
    let got = app.accesses();
    let src = Some(IdentitySource::RemoteUser);
    assert_eq!(
        rows(&got),
        [
            // Closed before the response, each read waited for its status.
            row(
                Some("alice"),
                src,
                "/srv/users/bob/a.pdf",
                &[Evidence::Thread],
                Some(200)
            ),
            row(
                Some("bob"),
                src,
                "/srv/users/bob/a.pdf",
                &[Evidence::Thread],
                Some(403)
            ),
            row(None, None, "/srv/users/carol/c.pdf", &[], None),
        ]
    );
    let req = got[0].request.as_ref().unwrap();
    assert_eq!(
        (req.method.as_str(), req.target.as_str(), req.fd),
        ("GET", "/docs/bob/a.pdf", 5)
    );
    assert_eq!(app.c.stats().requests, 2);
}

#[test]
fn status_is_known_when_the_read_is_judged_at_the_end_of_the_request() {
    // The document fd stays open (a cache): the access is judged at END_REQUEST, after the
    // response head, so it carries the status.
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    app.open(2, 9, "/srv/users/bob/a.pdf");
    app.request(2, 5, 1, &params("/docs/bob/a.pdf?deny=1", "alice"))
        .read(2, 9, 100)
        .respond(
            2,
            5,
            1,
            "Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\n",
            9,
        );
    assert_eq!(app.found.len(), 1, "judged at END_REQUEST, not later");
    let got = app.accesses();
    assert_eq!(
        rows(&got),
        [row(
            Some("alice"),
            Some(IdentitySource::RemoteUser),
            "/srv/users/bob/a.pdf",
            &[Evidence::Thread],
            Some(403)
        )]
    );
}

#[test]
fn basic_in_http_authorization_and_a_trusted_http_x_header() {
    let mut app = App::new(vec![IdentitySource::TrustedHeader, IdentitySource::Basic]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    // `carol:pw`, as the redactor leaves it (`carol:**`).
    app.request(
        2,
        5,
        1,
        &[
            ("REQUEST_URI", "/docs/bob/x"),
            ("HTTP_AUTHORIZATION", "Basic Y2Fyb2w6Kio="),
        ],
    )
    .open(2, 7, "/srv/users/bob/x")
    .read(2, 7, 1)
    .close(2, 7)
    .respond(2, 5, 1, "\r\n", 1);
    app.request(
        2,
        5,
        1,
        &[
            ("REQUEST_URI", "/docs/bob/y"),
            ("HTTP_X_REMOTE_USER", "dana"),
        ],
    )
    .open(2, 7, "/srv/users/bob/y")
    .read(2, 7, 1)
    .close(2, 7);
    let got = rows(&app.accesses());
    assert_eq!(got[0].0.as_deref(), Some("carol"));
    assert_eq!(got[0].1, Some(IdentitySource::Basic));
    assert_eq!(got[1].0.as_deref(), Some("dana"));
    assert_eq!(got[1].1, Some(IdentitySource::TrustedHeader));
}

#[test]
fn a_read_with_no_scope_goes_out_with_the_stdout_that_follows() {
    // A helper thread reads, then the same thread writes STDOUT for request 1: flow.
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    app.request(2, 5, 1, &params("/docs/bob/a", "alice"));
    app.open(3, 7, "/srv/users/bob/a").read(3, 7, 10);
    app.respond(3, 5, 1, "\r\n", 10).close(3, 7);
    let got = app.accesses();
    assert_eq!(
        rows(&got),
        [row(
            Some("alice"),
            Some(IdentitySource::RemoteUser),
            "/srv/users/bob/a",
            &[Evidence::Flow],
            Some(200)
        )]
    );
}

#[test]
fn multiplexed_requests_read_by_two_threads() {
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    app.request(2, 5, 1, &params("/a", "alice"))
        .request(3, 5, 2, &params("/b", "bob"));
    app.open(3, 8, "/srv/users/carol/b")
        .open(2, 7, "/srv/users/carol/a");
    app.read(2, 7, 1).read(3, 8, 1).close(2, 7).close(3, 8);
    app.respond(3, 5, 2, "Status: 404\r\n\r\n", 1)
        .respond(2, 5, 1, "\r\n", 1);
    let mut got = rows(&app.accesses());
    got.sort_by(|a, b| a.2.cmp(&b.2));
    let src = Some(IdentitySource::RemoteUser);
    assert_eq!(
        got,
        [
            row(
                Some("alice"),
                src,
                "/srv/users/carol/a",
                &[Evidence::Thread],
                None
            ),
            // bob's request took the connection over: alice's read was judged at its close,
            // without a status; bob's waited for its own.
            row(
                Some("bob"),
                src,
                "/srv/users/carol/b",
                &[Evidence::Thread],
                Some(404)
            ),
        ]
    );
}

#[test]
fn a_lost_stream_makes_no_request_until_it_resumes() {
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    let first = request(1, &params("/a", "alice"), 4000);
    // The whole request in one read, of which only 10 bytes were captured.
    app.ev(
        2,
        EventKind::SockRead {
            fd: 5,
            bytes: first.len() as u64 + 100,
            data: Payload(first[..10].to_vec()),
        },
    );
    assert_eq!(app.c.stats().requests, 0);
    assert_eq!(app.c.stats().fastcgi_desyncs, 1);
    app.open(2, 7, "/srv/users/bob/x").read(2, 7, 1).close(2, 7);
    // The next request resumes the stream.
    app.request(2, 5, 1, &params("/b", "carol"))
        .open(2, 7, "/srv/users/bob/x")
        .read(2, 7, 1)
        .close(2, 7);
    let got = rows(&app.accesses());
    assert_eq!(got[0].0, None, "nobody's: no request was seen");
    assert_eq!(got[1].0.as_deref(), Some("carol"));
}

#[test]
fn http_connections_are_unchanged_and_garbage_is_not_fastcgi() {
    let mut app = App::new(vec![IdentitySource::TrustedHeader]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    app.sock_read(2, 5, b"GET /x HTTP/1.1\r\nX-Remote-User: alice\r\n\r\n");
    // A FastCGI record on an HTTP connection is garbage there, not a request.
    let bytes = request(1, &params("/y", "agent"), 4000);
    app.sock_read(2, 5, &bytes);
    assert_eq!(app.c.stats().requests, 1);
    assert_eq!(app.c.stats().invalid_heads, 1);
}

#[test]
fn hostile_streams_do_not_panic() {
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    let mut junk = record(kind::BEGIN_REQUEST, 1, &[0, 1, 1, 0, 0, 0, 0, 0], 0);
    junk.extend(record(kind::PARAMS, 1, &[0xff; 40], 255));
    junk.extend(record(kind::PARAMS, 1, &[], 0));
    junk.extend([1, 6, 0, 1, 0xff, 0xff, 0xff]);
    for size in [1, 2, 8, 13, 64] {
        app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
        for chunk in junk.chunks(size) {
            app.sock_read(2, 5, chunk);
            app.sock_write(2, 5, chunk, chunk.len() as u64 * 3);
        }
    }
    app.accesses();
}

/// The `mmap` serving style: open, map, close at once, then write from the mapping.
mod mapped {
    use super::*;

    #[test]
    fn fastcgi_mapped_then_closed_is_judged_at_the_end_with_its_status() {
        let mut app = App::new(vec![IdentitySource::RemoteUser]);
        app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
        app.request(2, 5, 1, &params("/docs/bob/a.pdf?deny=1", "alice"))
            .open(2, 7, "/srv/users/bob/a.pdf")
            .map(2, 7, 9500)
            .close(2, 7);
        assert!(app.found.is_empty(), "the mapping outlives the close");
        app.respond(2, 5, 1, "Status: 403 Forbidden\r\n\r\n", 9);
        assert_eq!(app.found.len(), 1, "judged at END_REQUEST");
        let got = app.accesses();
        assert_eq!(
            rows(&got),
            [row(
                Some("alice"),
                Some(IdentitySource::RemoteUser),
                "/srv/users/bob/a.pdf",
                &[Evidence::Thread],
                Some(403)
            )]
        );
        assert_eq!(got[0].bytes, 9500);
    }

    #[test]
    fn http_mapped_document_counts_once_per_request() {
        let mut app = App::new(vec![IdentitySource::TrustedHeader]);
        app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
        for user in ["alice", "bob"] {
            app.sock_read(
                2,
                5,
                format!("GET /docs/bob/a HTTP/1.1\r\nX-Remote-User: {user}\r\n\r\n").as_bytes(),
            )
            .open(2, 7, "/srv/users/bob/a")
            .map(2, 7, 100)
            // Mapped twice, and read too: still one access of this request and document.
            .map(2, 7, 100)
            .read(2, 7, 10)
            .close(2, 7)
            .sock_write(2, 5, b"HTTP/1.1 200 OK\r\n\r\n", 119);
        }
        app.ev(2, EventKind::SockClose { fd: 5 });
        let got = app.accesses();
        let users: Vec<_> = rows(&got).into_iter().map(|r| (r.0, r.4)).collect();
        assert_eq!(
            users,
            [
                (Some("alice".into()), Some(200)),
                (Some("bob".into()), Some(200))
            ]
        );
        assert_eq!(got[0].bytes, 210);
    }

    #[test]
    fn a_mapping_sent_by_another_thread_than_the_head_reader_is_unattributed() {
        let mut app = App::new(vec![IdentitySource::TrustedHeader]);
        app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
        // Thread 2 reads the request; thread 3 maps, closes, then writes the response: the
        // request's events come from two threads, so the process has no thread scope or flow
        // any more (M:N scheduling, where thread 3 may have been serving another request), and
        // a mapping has no fingerprint.
        app.sock_read(2, 5, b"GET /x HTTP/1.1\r\nX-Remote-User: carol\r\n\r\n");
        app.open(3, 7, "/srv/users/bob/a")
            .map(3, 7, 100)
            .close(3, 7)
            .sock_write(3, 5, b"HTTP/1.1 200 OK\r\n\r\n", 119);
        app.ev(2, EventKind::SockClose { fd: 5 });
        let got = app.accesses();
        assert_eq!(rows(&got), [row(None, None, "/srv/users/bob/a", &[], None)]);
    }

    #[test]
    fn a_mapping_nobody_sends_is_unattributed_after_the_idle_delay() {
        let mut app = App::new(vec![IdentitySource::TrustedHeader]);
        app.open(3, 7, "/srv/users/bob/a")
            .map(3, 7, 100)
            .close(3, 7);
        assert!(app.found.is_empty());
        app.ts += 600_000_000;
        app.ev(0, EventKind::Tick);
        assert_eq!(
            rows(&app.accesses()),
            [row(None, None, "/srv/users/bob/a", &[], None)]
        );
    }

    #[test]
    fn mapping_a_non_document_is_nothing() {
        let mut app = App::new(vec![IdentitySource::TrustedHeader]);
        app.open(3, 7, "/etc/passwd")
            .map(3, 7, 100)
            .map(3, 99, 5)
            .close(3, 7);
        assert!(app.accesses().is_empty());
    }
}

/// Found by fuzzing: after lost events released a request, a STDOUT record resuming the stream
/// gave a read to the released request (evidence, no request).
#[test]
fn output_after_a_loss_does_not_revive_a_released_request() {
    let mut app = App::new(vec![IdentitySource::RemoteUser]);
    app.ev(1, EventKind::SockAccept { fd: 5, peer: None });
    app.request(2, 5, 1, &params("/a", "alice"));
    app.open(3, 7, "/srv/users/bob/a").read(3, 7, 1);
    app.ev(
        0,
        EventKind::Lost {
            reason: "ringbuf_full".into(),
            count: 1,
        },
    );
    app.respond(3, 5, 1, "\r\n", 1).close(3, 7);
    let got = app.accesses();
    assert_eq!(rows(&got), [row(None, None, "/srv/users/bob/a", &[], None)]);
}
