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
