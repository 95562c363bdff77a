//! HTTP/2 streams (issue 15): several users' requests interleaved on one connection and one
//! event-loop thread, attributed by their response bodies' content only, never by thread.
use super::*;
use crate::http2::{Item, Lost};

fn h2(s: &mut Scenario, tid: u32, fd: i32, item: Item) {
    s.ev(1, tid, EventKind::Http2 { fd, item });
}

fn get(s: &mut Scenario, tid: u32, fd: i32, stream: u32, user: &str, target: &str) {
    let head = format!("GET {target} HTTP/1.1\r\nhost: x\r\nx-remote-user: {user}\r\n\r\n");
    h2(
        s,
        tid,
        fd,
        Item::Request {
            stream,
            head: Payload(head.into_bytes()),
        },
    );
}

fn respond(s: &mut Scenario, tid: u32, fd: i32, stream: u32, status: u16, fp: Option<u64>) {
    let head = format!("HTTP/1.1 {status} \r\ncontent-length: 100\r\n\r\n");
    h2(
        s,
        tid,
        fd,
        Item::Response {
            stream,
            head: Payload(head.into_bytes()),
        },
    );
    h2(
        s,
        tid,
        fd,
        Item::Data {
            stream,
            bytes: 100,
            body_fp: fp,
        },
    );
    h2(s, tid, fd, Item::End { stream });
}

#[test]
fn interleaved_streams_are_attributed_by_content_only() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5);
    // One connection, one thread: alice and bob's streams (a proxy's connection pool).
    get(&mut s, 2, 5, 1, "alice", "/docs/bob/x");
    get(&mut s, 2, 5, 3, "bob", "/docs/bob/y");
    get(&mut s, 2, 5, 5, "alice", "/docs/alice/z");
    s.open(1, 2, 7, "/srv/users/bob/y")
        .read_fp(1, 2, 7, 100, 0xb0b);
    s.open(1, 2, 8, "/srv/users/bob/x")
        .read_fp(1, 2, 8, 100, 0xb0);
    s.open(1, 2, 9, "/srv/users/alice/z").read(1, 2, 9, 100);
    s.close(1, 2, 7).close(1, 2, 8).close(1, 2, 9);
    respond(&mut s, 2, 5, 3, 200, Some(0xb0b));
    respond(&mut s, 2, 5, 1, 200, Some(0xb0));
    // Stream 5's body had no fingerprint (a short capture): its read is nobody's.
    respond(&mut s, 2, 5, 5, 200, None);
    let got = s.finish();
    let mut sum = summary(&got);
    sum.sort();
    assert_eq!(
        sum,
        [
            (None, "/srv/users/alice/z".into(), vec![]),
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
    let x = got.iter().find(|a| a.document.ends_with('x')).unwrap();
    let req = x.request.as_ref().unwrap();
    assert_eq!(
        (req.target.as_str(), req.status),
        ("/docs/bob/x", Some(200))
    );
    assert_eq!(s.c.tracked().requests, 0, "ended streams are forgotten");
}

#[test]
fn a_thread_that_speaks_http2_loses_its_http1_scope() {
    let mut s = Scenario::new();
    // An HTTP/1 request on one connection, then an HTTP/2 stream on another, same thread.
    s.accept(1, 2, 5).get_as(1, 2, 5, "alice", "/docs/alice/a");
    s.accept(1, 2, 6);
    get(&mut s, 2, 6, 1, "bob", "/docs/alice/a");
    // Whose read is this? Either request's: nobody's.
    s.open(1, 2, 7, "/srv/users/alice/a")
        .read(1, 2, 7, 10)
        .close(1, 2, 7);
    let got = s.finish();
    assert_eq!(summary(&got), [(None, "/srv/users/alice/a".into(), vec![])]);
}

#[test]
fn the_same_content_in_two_documents_names_neither() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5);
    get(&mut s, 2, 5, 1, "alice", "/docs/bob/x");
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read_fp(1, 2, 7, 100, 0xf);
    s.open(1, 2, 8, "/srv/users/carol/x")
        .read_fp(1, 2, 8, 100, 0xf);
    s.close(1, 2, 7).close(1, 2, 8);
    respond(&mut s, 2, 5, 1, 200, Some(0xf));
    let got = s.finish();
    assert!(got.iter().all(|a| a.request.is_none()), "{got:?}");
    assert_eq!(got.len(), 2);
}

#[test]
fn a_lost_connection_ends_its_streams_and_says_why() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5);
    get(&mut s, 2, 5, 1, "alice", "/docs/bob/x");
    h2(&mut s, 2, 5, Item::Lost { why: Lost::Hpack });
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read_fp(1, 2, 7, 100, 0xb0);
    s.close(1, 2, 7);
    // A response of the lost connection's stream can no longer claim it.
    respond(&mut s, 2, 5, 1, 200, Some(0xb0));
    let got = s.finish();
    assert_eq!(summary(&got), [(None, "/srv/users/bob/x".into(), vec![])]);
    assert_eq!(got[0].unattributed, Some(Desync::Http2));
    assert_eq!(s.c.stats().desyncs.get(&Desync::Http2), Some(&1));
    assert_eq!(s.c.tracked().requests, 0);
}

#[test]
fn events_lost_end_every_stream() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5);
    get(&mut s, 2, 5, 1, "alice", "/docs/bob/x");
    s.ev(
        0,
        0,
        EventKind::Lost {
            reason: "ringbuf_full".into(),
            count: 1,
        },
    );
    assert_eq!(s.c.tracked().requests, 0);
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read_fp(1, 2, 7, 100, 0xb0);
    s.close(1, 2, 7);
    respond(&mut s, 2, 5, 1, 200, Some(0xb0));
    let got = s.finish();
    assert!(got[0].request.is_none());
}

#[test]
fn an_http2_login_form_binds_its_session_and_a_missing_form_binds_none() {
    let mut s = super::sessions();
    s.accept(1, 2, 5);
    let head = |text: &str| Payload(text.as_bytes().to_vec());
    // alice logs in on stream 1: her form (the redactor masked the password), then the cookie.
    let login = "POST /login HTTP/1.1\r\nhost: x\r\n\r\n";
    h2(
        &mut s,
        2,
        5,
        Item::Request {
            stream: 1,
            head: head(login),
        },
    );
    let form = head("user=alice&password=********");
    h2(&mut s, 2, 5, Item::LoginForm { stream: 1, form });
    let set = |sid: &str| {
        head(&format!(
            "HTTP/1.1 303 \r\nset-cookie: sid={sid}; HttpOnly\r\n\r\n"
        ))
    };
    h2(
        &mut s,
        2,
        5,
        Item::Response {
            stream: 1,
            head: set("aaaa"),
        },
    );
    h2(&mut s, 2, 5, Item::End { stream: 1 });
    // bob's login on stream 3 came with no form (cut by the capture): its cookie binds nobody.
    h2(
        &mut s,
        2,
        5,
        Item::Request {
            stream: 3,
            head: head(login),
        },
    );
    h2(
        &mut s,
        2,
        5,
        Item::Response {
            stream: 3,
            head: set("bbbb"),
        },
    );
    h2(&mut s, 2, 5, Item::End { stream: 3 });
    // Each cookie reads bob's document.
    for (stream, sid, fp) in [(5, "aaaa", 0xa), (7, "bbbb", 0xb)] {
        let get = format!("GET /d/bob HTTP/1.1\r\nhost: x\r\ncookie: sid={sid}\r\n\r\n");
        h2(
            &mut s,
            2,
            5,
            Item::Request {
                stream,
                head: head(&get),
            },
        );
        s.open(1, 2, 7, "/srv/users/bob/x")
            .read_fp(1, 2, 7, 100, fp)
            .close(1, 2, 7);
        respond(&mut s, 2, 5, stream, 200, Some(fp));
    }
    let got = s.finish();
    let who: Vec<(Option<String>, Option<IdentityProblem>)> = got
        .iter()
        .map(|a| {
            let r = a.request.as_ref().unwrap();
            (
                r.identity.as_ref().map(|i| i.user.clone()),
                r.identity_problem,
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            (u("alice"), None),
            (None, Some(IdentityProblem::UnknownSession))
        ]
    );
}

#[test]
fn the_rest_of_a_claimed_document_joins_its_access_a_read_from_its_start_does_not() {
    let mut s = Scenario::new();
    s.accept(1, 2, 5);
    get(&mut s, 2, 5, 1, "alice", "/docs/bob/x");
    get(&mut s, 2, 5, 3, "carol", "/docs/bob/x");
    // A large document, read a buffer at a time as stream 1's DATA go out.
    s.open(1, 2, 7, "/srv/users/bob/x")
        .read_fp(1, 2, 7, 32768, 0xb0);
    let data = |stream, fp| Item::Data {
        stream,
        bytes: 16384,
        body_fp: fp,
    };
    let head = Payload(b"HTTP/1.1 200 \r\n\r\n".to_vec());
    h2(
        &mut s,
        2,
        5,
        Item::Response {
            stream: 1,
            head: head.clone(),
        },
    );
    h2(&mut s, 2, 5, data(1, Some(0xb0)));
    s.read_fp(1, 2, 7, 18000, 0x2d);
    h2(&mut s, 2, 5, data(1, None));
    // Stream 3 reads the same open file (a cache's fd) from its start: its own access.
    s.read_fp(1, 2, 7, 32768, 0xb0);
    h2(&mut s, 2, 5, Item::Response { stream: 3, head });
    h2(&mut s, 2, 5, data(3, Some(0xb0)));
    h2(&mut s, 2, 5, Item::End { stream: 1 });
    h2(&mut s, 2, 5, Item::End { stream: 3 });
    s.close(1, 2, 7);
    let got = s.finish();
    let mut who: Vec<(Option<String>, u64)> = got
        .iter()
        .map(|a| {
            let user = a.request.as_ref().and_then(|r| r.identity.as_ref());
            (user.map(|i| i.user.clone()), a.bytes)
        })
        .collect();
    who.sort();
    assert_eq!(who, [(u("alice"), 32768 + 18000), (u("carol"), 32768)]);
}
